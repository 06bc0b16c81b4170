#include "data/tokens.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/file_io.h"

namespace ttt::data {

namespace {

void put_u32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(char((v >> (8 * i)) & 0xff));
}
void put_u64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(char((v >> (8 * i)) & 0xff));
}
uint32_t get_u32(const unsigned char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= uint32_t(p[i]) << (8 * i);
  return v;
}
uint64_t get_u64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t(p[i]) << (8 * i);
  return v;
}

std::string make_header(uint32_t vocab, uint32_t width, uint64_t n_tokens, uint64_t n_documents, uint64_t checksum,
                        uint32_t separator = uint32_t(kDocSeparator)) {
  std::string h(kTokenMagic, sizeof(kTokenMagic));
  put_u32(h, kTokenFormatVersion);
  put_u32(h, vocab);
  put_u32(h, width);
  put_u32(h, separator);
  put_u64(h, n_tokens);
  put_u64(h, n_documents);
  put_u64(h, checksum);
  return h;
}

uint64_t count_separators_bytes(std::string_view payload) {
  uint64_t n = 0;
  for (char c : payload) n += c == char(kDocSeparator);
  return n;
}

// The vocabulary check shared by the writer and the reader (`where` names the file).
void check_vocab(uint32_t vocab, const std::string& where) {
  TTT_CHECK(vocab > 0, where << ": vocabulary size is 0");
  TTT_CHECK(vocab <= kMaxTokenVocab, where << ": vocabulary " << vocab << " exceeds " << kMaxTokenVocab
                                           << " (2^31 - 1; token ids are 32-bit signed integers)");
}

}  // namespace

uint64_t fnv1a64(const void* data, size_t n, uint64_t h) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= kFnvPrime;
  }
  return h;
}

uint32_t token_width_for_vocab(uint32_t vocab) {
  if (vocab <= 256u) return 1;
  if (vocab <= 65536u) return 2;
  return 4;
}

std::vector<int32_t> encode_bytes(std::string_view text) {
  std::vector<int32_t> out(text.size());
  for (size_t i = 0; i < text.size(); ++i) out[i] = int32_t(static_cast<unsigned char>(text[i]));
  return out;
}

std::string decode_bytes(const std::vector<int32_t>& tokens) {
  std::string out(tokens.size(), '\0');
  for (size_t i = 0; i < tokens.size(); ++i) {
    TTT_CHECK(tokens[i] >= 0 && tokens[i] < 256, "decode_bytes: token " << tokens[i] << " at position " << i
                                                     << " is not a byte (byte-level vocabulary is 0..255)");
    out[i] = char(static_cast<unsigned char>(tokens[i]));
  }
  return out;
}

std::string serialize_tokens(const TokenFile& tf) {
  check_vocab(tf.vocab, "token file");
  TTT_CHECK(!tf.tokens.empty(), "token file: refusing to write zero tokens");
  const uint32_t width = token_width_for_vocab(tf.vocab);
  TTT_CHECK(tf.separator >= 0 && uint64_t(tf.separator) < tf.vocab,
            "token file: separator " << tf.separator << " is outside the vocabulary [0, " << tf.vocab << ")");
  std::string payload;
  payload.resize(tf.tokens.size() * width);
  uint64_t seps = 0;
  for (size_t i = 0; i < tf.tokens.size(); ++i) {
    const int32_t t = tf.tokens[i];
    TTT_CHECK(t >= 0 && uint64_t(t) < tf.vocab,
              "token file: token " << t << " at position " << i << " is outside the vocabulary [0, " << tf.vocab << ")");
    seps += t == tf.separator;
    const uint32_t u = uint32_t(t);
    for (uint32_t b = 0; b < width; ++b) payload[i * width + b] = char((u >> (8 * b)) & 0xff);
  }
  TTT_CHECK(seps == tf.n_documents, "token file: n_documents is " << tf.n_documents << " but the tokens hold " << seps
                                                                   << " separator (" << tf.separator << ") tokens");
  const uint64_t sum = fnv1a64(payload.data(), payload.size());
  return make_header(tf.vocab, width, tf.tokens.size(), tf.n_documents, sum, uint32_t(tf.separator)) + payload;
}

std::string serialize_byte_tokens(std::string_view payload, uint64_t n_documents) {
  TTT_CHECK(!payload.empty(), "token file: refusing to write zero tokens");
  const uint64_t seps = count_separators_bytes(payload);
  TTT_CHECK(seps == n_documents, "token file: n_documents is " << n_documents << " but the tokens hold " << seps
                                                                << " separator (0) tokens");
  const uint64_t sum = fnv1a64(payload.data(), payload.size());
  std::string out = make_header(kByteVocab, 1, payload.size(), n_documents, sum);
  out.append(payload);
  return out;
}

TokenFile parse_tokens(std::string_view bytes, const std::string& origin) {
  const std::string where = "token file '" + origin + "'";
  TTT_CHECK(bytes.size() >= kTokenHeaderBytes, where << ": truncated header (" << bytes.size() << " bytes, the header is "
                                                     << kTokenHeaderBytes << ")");
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  TTT_CHECK(std::memcmp(p, kTokenMagic, sizeof(kTokenMagic)) == 0,
            where << ": bad magic (not a TTTTOK token file; expected the bytes \"TTTTOK\\0\\0\")");
  const uint32_t version = get_u32(p + 8);
  TTT_CHECK(version == 1 || version == kTokenFormatVersion,
            where << ": unsupported version " << version << " (this build reads versions 1 and " << kTokenFormatVersion
                  << ")");
  const uint32_t vocab = get_u32(p + 12);
  const uint32_t width = get_u32(p + 16);
  const uint32_t reserved = get_u32(p + 20);
  const uint64_t n_tokens = get_u64(p + 24);
  const uint64_t n_docs = get_u64(p + 32);
  const uint64_t checksum = get_u64(p + 40);
  check_vocab(vocab, where);
  TTT_CHECK(width == token_width_for_vocab(vocab), where << ": token width " << width << " does not match vocabulary "
                                                         << vocab << " (expected " << token_width_for_vocab(vocab) << ")");
  // Version 1: the field is reserved (0) and the separator is 0; version 2: it is the separator id.
  TTT_CHECK(version != 1 || reserved == 0, where << ": reserved header field is " << reserved << ", expected 0");
  const uint32_t separator = reserved;
  TTT_CHECK(separator < vocab, where << ": separator " << separator << " is outside the vocabulary [0, " << vocab << ")");
  TTT_CHECK(n_tokens > 0, where << ": holds zero tokens");
  const uint64_t avail = bytes.size() - kTokenHeaderBytes;
  TTT_CHECK(n_tokens <= avail / width && n_tokens * width == avail,
            where << ": payload size mismatch (header says " << n_tokens << " tokens x " << width << " bytes = "
                  << (n_tokens <= avail / width ? std::to_string(n_tokens * width) : std::string("more than the file"))
                  << " bytes, file has " << avail << " payload bytes; truncated or corrupt)");
  const unsigned char* payload = p + kTokenHeaderBytes;
  const uint64_t actual = fnv1a64(payload, avail);
  TTT_CHECK(actual == checksum, where << ": checksum mismatch (header 0x" << std::hex << checksum << ", payload 0x"
                                      << actual << std::dec << "); the file is corrupt");
  TokenFile tf;
  tf.vocab = vocab;
  tf.n_documents = n_docs;
  tf.checksum = checksum;
  tf.separator = int32_t(separator);
  tf.tokens.resize(n_tokens);
  uint64_t seps = 0;
  for (uint64_t i = 0; i < n_tokens; ++i) {
    uint32_t u = 0;
    for (uint32_t b = 0; b < width; ++b) u |= uint32_t(payload[i * width + b]) << (8 * b);
    TTT_CHECK(u < vocab, where << ": token " << u << " at position " << i << " is outside the vocabulary [0, " << vocab << ")");
    tf.tokens[i] = int32_t(u);
    seps += u == separator;
  }
  TTT_CHECK(seps == n_docs, where << ": header says " << n_docs << " documents but the payload holds " << seps
                                  << " separator (" << separator << ") tokens");
  return tf;
}

TokenFile load_tokens(const std::string& path) {
  TTT_CHECK(file_exists(path), "token file '" << path << "' does not exist (run `ttt prepare --input <text>` first)");
  return parse_tokens(read_file(path), path);
}

TokenFileHeader read_token_header(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TTT_CHECK(in.good(), "token file '" << path << "' cannot be opened");
  unsigned char h[kTokenHeaderBytes];
  in.read(reinterpret_cast<char*>(h), sizeof h);
  TTT_CHECK(in.gcount() == std::streamsize(sizeof h), "token file '" << path << "': truncated header");
  TTT_CHECK(std::memcmp(h, kTokenMagic, sizeof(kTokenMagic)) == 0, "token file '" << path << "': bad magic (not a TTTTOK token file)");
  TokenFileHeader r;
  r.vocab = get_u32(h + 12);
  r.token_width = get_u32(h + 16);
  r.separator = get_u32(h + 20);  // 0 in version 1 files
  r.n_tokens = get_u64(h + 24);
  r.n_documents = get_u64(h + 32);
  return r;
}

void save_tokens(const std::string& path, const TokenFile& tf) { write_file_atomic(path, serialize_tokens(tf)); }

void save_byte_tokens(const std::string& path, std::string_view payload, uint64_t n_documents) {
  write_file_atomic(path, serialize_byte_tokens(payload, n_documents));
}

TokenFileWriter::TokenFileWriter(std::string path, uint32_t vocab, int32_t separator)
    : path_(std::move(path)), temp_(temp_path(path_)), vocab_(vocab), width_(token_width_for_vocab(vocab)),
      separator_(separator) {
  check_vocab(vocab, "token file '" + path_ + "'");
  TTT_CHECK(separator >= 0 && uint64_t(separator) < vocab,
            "token file '" << path_ << "': separator " << separator << " is outside the vocabulary [0, " << vocab << ")");
  f_ = std::fopen(temp_.c_str(), "wb");
  TTT_CHECK(f_ != nullptr, "cannot create '" << temp_ << "': " << std::strerror(errno));
  buffer_.assign(kTokenHeaderBytes, '\0');  // the header's place; finish() writes it
}

TokenFileWriter::~TokenFileWriter() {
  if (f_) {
    std::fclose(f_);
    std::remove(temp_.c_str());
  }
}

void TokenFileWriter::flush() {
  TTT_CHECK(std::fwrite(buffer_.data(), 1, buffer_.size(), f_) == buffer_.size(),
            "cannot write '" << temp_ << "': " << std::strerror(errno) << " (disk full?)");
  buffer_.clear();
}

void TokenFileWriter::append(const uint32_t* ids, size_t n) {
  TTT_CHECK(f_ != nullptr, "token file '" << path_ << "': append after finish");
  const size_t start = buffer_.size();
  buffer_.resize(start + n * width_);
  auto* out = reinterpret_cast<unsigned char*>(buffer_.data() + start);
  for (size_t i = 0; i < n; ++i) {
    const uint32_t u = ids[i];
    TTT_CHECK(u < vocab_, "token file '" << path_ << "': token " << u << " at position " << n_tokens_ + i
                                         << " is outside the vocabulary [0, " << vocab_ << ")");
    n_documents_ += u == uint32_t(separator_);
    for (uint32_t b = 0; b < width_; ++b) out[i * width_ + b] = (unsigned char)((u >> (8 * b)) & 0xff);
  }
  checksum_ = fnv1a64(out, n * width_, checksum_);
  n_tokens_ += n;
  if (buffer_.size() >= (size_t(1) << 20)) flush();
}

void TokenFileWriter::finish() {
  TTT_CHECK(f_ != nullptr, "token file '" << path_ << "': finished twice");
  TTT_CHECK(n_tokens_ > 0, "token file '" << path_ << "': refusing to write zero tokens");
  flush();
  const std::string header = make_header(vocab_, width_, n_tokens_, n_documents_, checksum_, uint32_t(separator_));
  const bool ok = std::fseek(f_, 0, SEEK_SET) == 0 && std::fwrite(header.data(), 1, header.size(), f_) == header.size() &&
                  std::fflush(f_) == 0 && ::fsync(fileno(f_)) == 0;
  const int err = errno;
  const bool closed = std::fclose(f_) == 0;
  f_ = nullptr;
  if (!ok || !closed) {
    std::remove(temp_.c_str());
    TTT_FAIL("cannot write '" << temp_ << "': " << std::strerror(ok ? errno : err) << " (disk full?)");
  }
  rename_path(temp_, path_);
  const std::string dir = std::filesystem::path(path_).parent_path().string();
  sync_directory(dir.empty() ? "." : dir);
}

}  // namespace ttt::data
