// Token files ("TTTTOK") and the byte-level tokenizer.
//
// Tokenizer: byte level, vocabulary 256, token = byte value (0..255). Token 0 is reserved as the
// END-OF-DOCUMENT SEPARATOR: every document in a token stream is followed by one 0 token. NUL never
// occurs in text, so no text byte is lost by this choice; `ttt prepare` skips files that contain NUL in
// their first 4 KB (binary files) and drops stray NUL bytes found later in a text file, so that 0 appears
// in a stream only as the separator.
//
// Every TTTTOK file names its separator (end-of-text) id: version 2 stores it in the header (other
// tokenizers have their own EOT id, e.g. 50256 for GPT-2); a version 1 file has separator 0. The reader
// checks it: n_documents must equal the number of separator tokens.
//
// Binary layout of a TTTTOK file (all integers little-endian, header 48 bytes, no padding):
//
//   offset size  field
//   0      8     magic        the bytes "TTTTOK\0\0"
//   8      4     version      u32, 2 (this writer) or 1 (still read)
//   12     4     vocab        u32, vocabulary size, 1 .. 2^31 - 1 (token ids are int32); every token is < vocab
//   16     4     token_width  u32, bytes per token: 1 if vocab <= 256, 2 if vocab <= 65536, else 4
//                             (exactly this width; the reader rejects any other)
//   20     4     separator    u32, version 2: the end-of-document (EOT) id, < vocab;
//                             version 1: a reserved field that must be 0 (the separator is 0)
//   24     8     n_tokens     u64, number of tokens (> 0)
//   32     8     n_documents  u64, number of documents = number of separator tokens
//   40     8     checksum     u64, FNV-1a 64 (offset basis 0xcbf29ce484222325, prime 0x100000001b3)
//                             of the payload bytes exactly as stored
//   48     ...   payload      n_tokens * token_width bytes; each token an unsigned little-endian
//                             integer of token_width bytes
//
// The file size must be exactly 48 + n_tokens * token_width.
// Writes are atomic (temp file + fsync + rename; TokenFileWriter streams a file of any size the same way). Every malformed file gives a ttt::Error that names the
// path and the problem (missing file, bad magic, unsupported version, bad width, truncated or oversized
// payload, checksum mismatch, zero tokens, vocabulary above kMaxTokenVocab, separator outside the vocabulary, token
// out of range, document count mismatch); the writer refuses what the reader would refuse.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace ttt::data {

inline constexpr char kTokenMagic[8] = {'T', 'T', 'T', 'T', 'O', 'K', '\0', '\0'};
inline constexpr uint32_t kTokenFormatVersion = 2;  // written; versions 1 and 2 are read
inline constexpr size_t kTokenHeaderBytes = 48;
inline constexpr uint32_t kByteVocab = 256;       // byte-level tokenizer vocabulary
inline constexpr uint32_t kMaxTokenVocab = 2147483647u;  // 2^31 - 1: every id < vocab fits the int32 tokens
inline constexpr int32_t kDocSeparator = 0;       // the byte tokenizer's end-of-document token (NUL byte), and
                                                  // the separator of every version 1 file

struct TokenFile {
  uint32_t vocab = kByteVocab;
  uint64_t n_documents = 0;  // number of `separator` tokens in `tokens`
  std::vector<int32_t> tokens;
  uint64_t checksum = 0;  // load/parse: the header's (verified) payload checksum; ignored when writing
  int32_t separator = kDocSeparator;  // end-of-document id, in [0, vocab)
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
// The text bytes each id stands for (what bits per byte divides by): Tokenizer::token_byte_lengths() (data/tokenizer.h).
// In-memory (de)serialization; `origin` names the source in error messages.
std::string serialize_tokens(const TokenFile& tf);
TokenFile parse_tokens(std::string_view bytes, const std::string& origin);
// Byte-level fast path: `payload` holds one byte per token (vocab 256); avoids a 4-byte-per-token copy.
std::string serialize_byte_tokens(std::string_view payload, uint64_t n_documents);

TokenFile load_tokens(const std::string& path);

// The header of a token file. parse_token_header checks every field that can be checked without the payload
// (magic, version, vocabulary, width, separator, non-zero count) and that `file_bytes` is exactly the size the
// header announces; `where` names the file in the messages.
struct TokenFileHeader {
  uint32_t version = kTokenFormatVersion;
  uint32_t vocab = 0, token_width = 0;
  int32_t separator = kDocSeparator;
  uint64_t n_tokens = 0, n_documents = 0, checksum = 0;
};
TokenFileHeader parse_token_header(const unsigned char* header, uint64_t file_bytes, const std::string& where);
// The header fields of a token file, read without its payload (checks the magic; the payload is not checked).
TokenFileHeader read_token_header(const std::string& path);
// The payload checks of a file with header `h` (checksum, every id < vocab, n_documents = separator count):
// one sequential pass over the payload; `where` names the file, a bad id is named with its token offset.
void verify_token_payload(const TokenFileHeader& h, const unsigned char* payload, const std::string& where);
// Token i of a payload of `width`-byte little-endian ids.
inline uint32_t token_at(const unsigned char* payload, uint32_t width, uint64_t i) {
  const unsigned char* p = payload + i * width;
  if (width == 1) return p[0];
  if (width == 2) return uint32_t(p[0]) | uint32_t(p[1]) << 8;
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

void save_tokens(const std::string& path, const TokenFile& tf);                             // atomic
void save_byte_tokens(const std::string& path, std::string_view payload, uint64_t n_documents);  // atomic

// Writes a token file of any size in bounded memory: tokens are appended in pieces to the temp file
// temp_path(path); finish() writes the header (counts, checksum), fsyncs and renames it into place. A writer
// destroyed without finish() removes its temp file. Ids are checked against the vocabulary as they come.
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
  std::string path_, temp_;
  uint32_t vocab_, width_;
  int32_t separator_;
  int fd_ = -1;
  uint64_t n_tokens_ = 0, n_documents_ = 0, checksum_;
  std::string buffer_;
};

}  // namespace ttt::data
