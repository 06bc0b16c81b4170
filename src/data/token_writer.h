// Writes a TTTTOK file (data/tokens.h) document by document without holding its tokens: the payload goes to a
// temp file as it comes, the header (counts, checksum) is written last, then the file is fsynced and renamed
// into place. A writer destroyed before finish() removes its temp file.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace ttt::data {

class TokenFileWriter {
 public:
  // Token ids must be < vocab; `separator` ends every document.
  TokenFileWriter(std::string path, uint32_t vocab, int32_t separator);
  ~TokenFileWriter();
  TokenFileWriter(const TokenFileWriter&) = delete;
  TokenFileWriter& operator=(const TokenFileWriter&) = delete;

  // Where a document lies in the payload (in tokens, its separator excluded).
  struct Span {
    uint64_t first = 0, count = 0;
  };
  // Appends the document's tokens and a separator; `origin` names the document in errors (an id out of the
  // vocabulary, or the separator inside the document).
  Span append_document(const std::vector<int32_t>& ids, const std::string& origin);
  // Reads back the tokens of one document and removes it (and its separator) from the file (rewrites the payload:
  // for the rare case where a split must move a document to the other side).
  std::vector<int32_t> take_document(Span span);
  // Writes the header and renames the file into place. Throws when the file holds no tokens.
  void finish();

  uint64_t tokens() const { return n_tokens_; }  // separators included
  uint64_t documents() const { return n_documents_; }
  // How often each id occurs (separators included), for the unigram entropy.
  const std::vector<uint64_t>& counts() const { return counts_; }

 private:
  void write_raw(const void* data, size_t n);
  void flush_buffer();
  std::string path_, temp_;
  uint32_t vocab_, width_;
  int32_t separator_;
  std::FILE* f_ = nullptr;
  std::string buffer_;
  uint64_t n_tokens_ = 0, n_documents_ = 0, checksum_;
  std::vector<uint64_t> counts_;
};

}  // namespace ttt::data
