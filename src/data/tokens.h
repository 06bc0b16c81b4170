// Token files ("TTTTOK") and the byte-level tokenizer.
//
// Tokenizer: byte level, vocabulary 256, token = byte value (0..255). Token 0 is reserved as the
// END-OF-DOCUMENT SEPARATOR: every document in a token stream is followed by one 0 token. NUL never
// occurs in text, so no text byte is lost by this choice; `ttt prepare` skips files that contain NUL in
// their first 4 KB (binary files) and drops stray NUL bytes found later in a text file, so that 0 appears
// in a stream only as the separator. Other tokenizers (data/tokenizer.h) have their own end-of-text id: version 2
// of the format records the separator id in the header (version 1 files: separator 0). The reader checks that
// n_documents equals the number of separator tokens.
//
// Binary layout of a TTTTOK file (all integers little-endian, header 48 bytes, no padding):
//
//   offset size  field
//   0      8     magic        the bytes "TTTTOK\0\0"
//   8      4     version      u32, 1 or 2 (the writer writes 2)
//   12     4     vocab        u32, vocabulary size, 1 .. 2^31 - 1 (token ids are int32); every token is < vocab
//   16     4     token_width  u32, bytes per token: 1 if vocab <= 256, 2 if vocab <= 65536, else 4
//                             (exactly this width; the reader rejects any other)
//   20     4     separator    u32, the end-of-document token id (< vocab); version 1: "reserved", must be 0
//                             (so version 1 files have separator 0)
//   24     8     n_tokens     u64, number of tokens (> 0)
//   32     8     n_documents  u64, number of documents = number of separator tokens
//   40     8     checksum     u64, FNV-1a 64 (offset basis 0xcbf29ce484222325, prime 0x100000001b3)
//                             of the payload bytes exactly as stored
//   48     ...   payload      n_tokens * token_width bytes; each token an unsigned little-endian
//                             integer of token_width bytes
//
// The file size must be exactly 48 + n_tokens * token_width.
// Writes are atomic (temp file + fsync + rename). Every malformed file gives a ttt::Error that names the
// path and the problem (missing file, bad magic, unsupported version, bad width, truncated or oversized
// payload, checksum mismatch, zero tokens, vocabulary above kMaxTokenVocab, token out of range, document count
// mismatch); the writer refuses what the reader would refuse.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

namespace ttt::data {

inline constexpr char kTokenMagic[8] = {'T', 'T', 'T', 'T', 'O', 'K', '\0', '\0'};
inline constexpr uint32_t kTokenFormatVersion = 2;
inline constexpr size_t kTokenHeaderBytes = 48;
inline constexpr uint32_t kByteVocab = 256;       // byte-level tokenizer vocabulary
inline constexpr uint32_t kMaxTokenVocab = 2147483647u;  // 2^31 - 1: every id < vocab fits the int32 tokens
inline constexpr int32_t kDocSeparator = 0;       // end-of-document token of the byte tokenizer (NUL byte)

struct TokenFile {
  uint32_t vocab = kByteVocab;
  uint64_t n_documents = 0;  // number of `separator` tokens in `tokens`
  std::vector<int32_t> tokens;
  uint64_t checksum = 0;  // load/parse: the header's (verified) payload checksum; ignored when writing
  int32_t separator = kDocSeparator;  // the end-of-document id (header field of version 2)
};

// FNV-1a 64-bit hash; `h` lets a hash continue over several buffers.
inline constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ull;
inline constexpr uint64_t kFnvPrime = 0x100000001b3ull;
uint64_t fnv1a64(const void* data, size_t n, uint64_t h = kFnvOffset);

// Bytes per token for a vocabulary size (1, 2 or 4).
uint32_t token_width_for_vocab(uint32_t vocab);

// Byte-level tokenizer. encode maps each byte to its value (no separator is added); decode maps tokens
// back to bytes (tokens must be in 0..255; the separator decodes to a NUL byte).
std::vector<int32_t> encode_bytes(std::string_view text);
std::string decode_bytes(const std::vector<int32_t>& tokens);

// In-memory (de)serialization; `origin` names the source in error messages.
std::string serialize_tokens(const TokenFile& tf);
TokenFile parse_tokens(std::string_view bytes, const std::string& origin);
// Byte-level fast path: `payload` holds one byte per token (vocab 256); avoids a 4-byte-per-token copy.
std::string serialize_byte_tokens(std::string_view payload, uint64_t n_documents);

TokenFile load_tokens(const std::string& path);
// The header fields of a token file, read without its payload (checks the magic; the payload is not checked).
struct TokenFileHeader {
  uint32_t vocab = 0, token_width = 0, separator = 0;
  uint64_t n_tokens = 0, n_documents = 0;
};
TokenFileHeader read_token_header(const std::string& path);
void save_tokens(const std::string& path, const TokenFile& tf);                             // atomic
void save_byte_tokens(const std::string& path, std::string_view payload, uint64_t n_documents);  // atomic

// Writes a token file of any size in bounded memory: ids are appended to the temp file temp_path(path) as they
// come (checked against the vocabulary; documents = separator ids); finish() writes the header (counts,
// checksum), fsyncs and renames the file into place. A writer destroyed without finish() removes its temp file.
class TokenFileWriter {
 public:
  TokenFileWriter(std::string path, uint32_t vocab, int32_t separator);
  ~TokenFileWriter();
  TokenFileWriter(const TokenFileWriter&) = delete;
  TokenFileWriter& operator=(const TokenFileWriter&) = delete;
  void append(const uint32_t* ids, size_t n);
  uint64_t tokens() const { return n_tokens_; }
  uint64_t documents() const { return n_documents_; }
  void finish();  // refuses a file of zero tokens

 private:
  void flush();
  std::string path_, temp_;
  uint32_t vocab_, width_;
  int32_t separator_;
  std::FILE* f_ = nullptr;
  std::string buffer_;
  uint64_t n_tokens_ = 0, n_documents_ = 0, checksum_ = kFnvOffset;
};

}  // namespace ttt::data
