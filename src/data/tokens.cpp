#include "data/tokens.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
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

std::string make_header(uint32_t vocab, uint32_t width, int32_t separator, uint64_t n_tokens, uint64_t n_documents,
                        uint64_t checksum) {
  std::string h(kTokenMagic, sizeof(kTokenMagic));
  put_u32(h, kTokenFormatVersion);
  put_u32(h, vocab);
  put_u32(h, width);
  put_u32(h, uint32_t(separator));
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

void check_separator(int64_t separator, uint32_t vocab, const std::string& where) {
  TTT_CHECK(separator >= 0 && separator < int64_t(vocab), where << ": separator (end-of-document) id " << separator
                                                                << " is outside the vocabulary [0, " << vocab << ")");
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
  check_separator(tf.separator, tf.vocab, "token file");
  TTT_CHECK(!tf.tokens.empty(), "token file: refusing to write zero tokens");
  const uint32_t width = token_width_for_vocab(tf.vocab);
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
  return make_header(tf.vocab, width, tf.separator, tf.tokens.size(), tf.n_documents, sum) + payload;
}

std::string serialize_byte_tokens(std::string_view payload, uint64_t n_documents) {
  TTT_CHECK(!payload.empty(), "token file: refusing to write zero tokens");
  const uint64_t seps = count_separators_bytes(payload);
  TTT_CHECK(seps == n_documents, "token file: n_documents is " << n_documents << " but the tokens hold " << seps
                                                                << " separator (0) tokens");
  const uint64_t sum = fnv1a64(payload.data(), payload.size());
  std::string out = make_header(kByteVocab, 1, kDocSeparator, payload.size(), n_documents, sum);
  out.append(payload);
  return out;
}

TokenFileHeader parse_token_header(const unsigned char* p, uint64_t file_bytes, const std::string& where) {
  TTT_CHECK(file_bytes >= kTokenHeaderBytes, where << ": truncated header (" << file_bytes << " bytes, the header is "
                                                   << kTokenHeaderBytes << ")");
  TTT_CHECK(std::memcmp(p, kTokenMagic, sizeof(kTokenMagic)) == 0,
            where << ": bad magic (not a TTTTOK token file; expected the bytes \"TTTTOK\\0\\0\")");
  TokenFileHeader h;
  h.version = get_u32(p + 8);
  TTT_CHECK(h.version == 1 || h.version == 2,
            where << ": unsupported version " << h.version << " (this build reads versions 1 and 2)");
  h.vocab = get_u32(p + 12);
  h.token_width = get_u32(p + 16);
  const uint32_t separator_field = get_u32(p + 20);
  h.n_tokens = get_u64(p + 24);
  h.n_documents = get_u64(p + 32);
  h.checksum = get_u64(p + 40);
  check_vocab(h.vocab, where);
  TTT_CHECK(h.token_width == token_width_for_vocab(h.vocab),
            where << ": token width " << h.token_width << " does not match vocabulary " << h.vocab << " (expected "
                  << token_width_for_vocab(h.vocab) << ")");
  if (h.version == 1) {
    TTT_CHECK(separator_field == 0, where << ": reserved header field is " << separator_field << ", expected 0 (version 1)");
    h.separator = kDocSeparator;
  } else {
    check_separator(int64_t(separator_field), h.vocab, where);
    h.separator = int32_t(separator_field);
  }
  TTT_CHECK(h.n_tokens > 0, where << ": holds zero tokens");
  const uint64_t avail = file_bytes - kTokenHeaderBytes, width = h.token_width;
  TTT_CHECK(h.n_tokens <= avail / width && h.n_tokens * width == avail,
            where << ": payload size mismatch (header says " << h.n_tokens << " tokens x " << width << " bytes = "
                  << (h.n_tokens <= avail / width ? std::to_string(h.n_tokens * width) : std::string("more than the file"))
                  << " bytes, file has " << avail << " payload bytes; truncated or corrupt)");
  return h;
}

void verify_token_payload(const TokenFileHeader& h, const unsigned char* payload, const std::string& where) {
  const uint64_t bytes = h.n_tokens * h.token_width;
  const uint64_t actual = fnv1a64(payload, bytes);
  TTT_CHECK(actual == h.checksum, where << ": checksum mismatch (header 0x" << std::hex << h.checksum << ", payload 0x"
                                        << actual << std::dec << "); the file is corrupt");
  uint64_t seps = 0;
  const uint32_t sep = uint32_t(h.separator);
  if (h.token_width == 1 && h.vocab == 256) {
    for (uint64_t i = 0; i < bytes; ++i) seps += payload[i] == sep;  // every byte is in the vocabulary
  } else {
    for (uint64_t i = 0; i < h.n_tokens; ++i) {
      const uint32_t u = token_at(payload, h.token_width, i);
      TTT_CHECK(u < h.vocab, where << ": token " << u << " at position " << i << " (byte offset "
                                   << kTokenHeaderBytes + i * h.token_width << ") is outside the vocabulary [0, "
                                   << h.vocab << ")");
      seps += u == sep;
    }
  }
  TTT_CHECK(seps == h.n_documents, where << ": header says " << h.n_documents << " documents but the payload holds "
                                         << seps << " separator (" << h.separator << ") tokens");
}

TokenFile parse_tokens(std::string_view bytes, const std::string& origin) {
  const std::string where = "token file '" + origin + "'";
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const TokenFileHeader h = parse_token_header(p, bytes.size(), where);
  const unsigned char* payload = p + kTokenHeaderBytes;
  verify_token_payload(h, payload, where);
  TokenFile tf;
  tf.vocab = h.vocab;
  tf.n_documents = h.n_documents;
  tf.checksum = h.checksum;
  tf.separator = h.separator;
  tf.tokens.resize(h.n_tokens);
  for (uint64_t i = 0; i < h.n_tokens; ++i) tf.tokens[i] = int32_t(token_at(payload, h.token_width, i));
  return tf;
}

TokenFile load_tokens(const std::string& path) {
  TTT_CHECK(file_exists(path), "token file '" << path << "' does not exist (run `ttt prepare --input <text>` first)");
  return parse_tokens(read_file(path), path);
}

TokenFileHeader read_token_header(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  TTT_CHECK(in.good(), "token file '" << path << "' cannot be opened");
  const uint64_t size = uint64_t(in.tellg());
  in.seekg(0);
  unsigned char h[kTokenHeaderBytes] = {};
  in.read(reinterpret_cast<char*>(h), sizeof h);
  return parse_token_header(h, size, "token file '" + path + "'");
}

void save_tokens(const std::string& path, const TokenFile& tf) { write_file_atomic(path, serialize_tokens(tf)); }

void save_byte_tokens(const std::string& path, std::string_view payload, uint64_t n_documents) {
  write_file_atomic(path, serialize_byte_tokens(payload, n_documents));
}

TokenFileWriter::TokenFileWriter(std::string path, uint32_t vocab, int32_t separator)
    : path_(std::move(path)), temp_(temp_path(path_)), vocab_(vocab), width_(token_width_for_vocab(vocab)),
      separator_(separator), checksum_(kFnvOffset) {
  const std::string where = "token file '" + path_ + "'";
  check_vocab(vocab, where);
  check_separator(separator, vocab, where);
  fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  TTT_CHECK(fd_ >= 0, "cannot create '" << temp_ << "': " << std::strerror(errno));
  buffer_.assign(kTokenHeaderBytes, '\0');  // the header is written by finish()
}

TokenFileWriter::~TokenFileWriter() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(temp_.c_str());
  }
}

namespace {
void write_all(int fd, const char* data, size_t n, const std::string& path) {
  while (n > 0) {
    const ssize_t w = ::write(fd, data, n);
    if (w < 0 && errno == EINTR) continue;
    TTT_CHECK(w > 0, "cannot write '" << path << "': " << std::strerror(errno));
    data += w;
    n -= size_t(w);
  }
}
}  // namespace

void TokenFileWriter::append(const uint32_t* ids, size_t n) {
  TTT_CHECK(fd_ >= 0, "token file '" << path_ << "': append after finish");
  constexpr size_t kFlushBytes = size_t(1) << 22;
  const size_t start = buffer_.size();
  buffer_.resize(start + n * width_);
  unsigned char* out = reinterpret_cast<unsigned char*>(buffer_.data()) + start;
  for (size_t i = 0; i < n; ++i) {
    const uint32_t u = ids[i];
    TTT_CHECK(u < vocab_, "token file '" << path_ << "': token " << u << " at position " << n_tokens_ + i
                                         << " is outside the vocabulary [0, " << vocab_ << ")");
    n_documents_ += u == uint32_t(separator_);
    for (uint32_t b = 0; b < width_; ++b) out[i * width_ + b] = (unsigned char)((u >> (8 * b)) & 0xff);
  }
  checksum_ = fnv1a64(out, n * width_, checksum_);
  n_tokens_ += n;
  if (buffer_.size() >= kFlushBytes) {
    write_all(fd_, buffer_.data(), buffer_.size(), temp_);
    buffer_.clear();
  }
}

void TokenFileWriter::finish() {
  TTT_CHECK(fd_ >= 0, "token file '" << path_ << "': finished twice");
  TTT_CHECK(n_tokens_ > 0, "token file '" << path_ << "': refusing to write zero tokens");
  write_all(fd_, buffer_.data(), buffer_.size(), temp_);
  std::string().swap(buffer_);
  const std::string header = make_header(vocab_, width_, separator_, n_tokens_, n_documents_, checksum_);
  TTT_CHECK(::pwrite(fd_, header.data(), header.size(), 0) == ssize_t(header.size()),
            "cannot write '" << temp_ << "': " << std::strerror(errno));
  TTT_CHECK(::fsync(fd_) == 0, "cannot fsync '" << temp_ << "': " << std::strerror(errno));
  const int fd = fd_;
  fd_ = -1;
  try {
    TTT_CHECK(::close(fd) == 0, "cannot close '" << temp_ << "': " << std::strerror(errno));
    rename_path(temp_, path_);
  } catch (...) {
    ::unlink(temp_.c_str());
    throw;
  }
  const std::string dir = std::filesystem::path(path_).parent_path().string();
  sync_directory(dir.empty() ? "." : dir);
}

}  // namespace ttt::data
