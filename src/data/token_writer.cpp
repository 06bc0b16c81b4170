#include "data/token_writer.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "core/file_io.h"
#include "data/tokens.h"

namespace ttt::data {

namespace {
constexpr size_t kBufferBytes = 1 << 20;
}

TokenFileWriter::TokenFileWriter(std::string path, uint32_t vocab, int32_t separator)
    : path_(std::move(path)), temp_(temp_path(path_)), vocab_(vocab), width_(token_width_for_vocab(vocab)),
      separator_(separator), checksum_(kFnvOffset), counts_(vocab, 0) {
  TTT_CHECK(separator >= 0 && uint64_t(separator) < vocab,
            "token file '" << path_ << "': separator " << separator << " is outside the vocabulary [0, " << vocab << ")");
  f_ = std::fopen(temp_.c_str(), "wb+");
  TTT_CHECK(f_ != nullptr, "cannot create '" << temp_ << "': " << std::strerror(errno));
  const std::string placeholder(kTokenHeaderBytes, '\0');  // the header is written by finish()
  if (std::fwrite(placeholder.data(), 1, placeholder.size(), f_) != placeholder.size()) {
    std::fclose(f_);
    f_ = nullptr;
    std::remove(temp_.c_str());
    TTT_FAIL("cannot write '" << temp_ << "': " << std::strerror(errno));
  }
  buffer_.reserve(kBufferBytes);
}

TokenFileWriter::~TokenFileWriter() {
  if (f_) {
    std::fclose(f_);
    std::remove(temp_.c_str());
  }
}

void TokenFileWriter::flush_buffer() {
  if (buffer_.empty()) return;
  checksum_ = fnv1a64(buffer_.data(), buffer_.size(), checksum_);
  TTT_CHECK(std::fwrite(buffer_.data(), 1, buffer_.size(), f_) == buffer_.size(),
            "cannot write '" << temp_ << "': " << std::strerror(errno) << " (disk full?)");
  buffer_.clear();
}

void TokenFileWriter::write_raw(const void* data, size_t n) {
  if (buffer_.size() + n > kBufferBytes) flush_buffer();
  buffer_.append(static_cast<const char*>(data), n);
}

TokenFileWriter::Span TokenFileWriter::append_document(const std::vector<int32_t>& ids, const std::string& origin) {
  TTT_CHECK(f_ != nullptr, "token file '" << path_ << "': already finished");
  Span span{n_tokens_, ids.size()};
  unsigned char enc[4];
  auto put = [&](int32_t t) {
    const uint32_t u = uint32_t(t);
    for (uint32_t b = 0; b < width_; ++b) enc[b] = (unsigned char)((u >> (8 * b)) & 0xff);
    write_raw(enc, width_);
    ++counts_[u];
  };
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t t = ids[i];
    TTT_CHECK(t >= 0 && uint64_t(t) < vocab_, origin << ": token " << t << " at position " << i
                                                     << " is outside the vocabulary [0, " << vocab_ << ")");
    TTT_CHECK(t != separator_, origin << ": the text encodes to the separator id " << separator_ << " at token " << i
                                      << " (the separator must be a special token that text never produces; see "
                                      << "--eot-token)");
    put(t);
  }
  put(separator_);
  n_tokens_ += ids.size() + 1;
  ++n_documents_;
  return span;
}

std::vector<int32_t> TokenFileWriter::take_document(Span span) {
  TTT_CHECK(f_ != nullptr, "token file '" << path_ << "': already finished");
  TTT_CHECK(span.first + span.count < n_tokens_, "token file '" << path_ << "': no document at token " << span.first);
  flush_buffer();
  // Copy the payload without the document into a second temp file, then put that in place of the first.
  const std::string other = temp_ + ".b";
  std::FILE* g = std::fopen(other.c_str(), "wb+");
  TTT_CHECK(g != nullptr, "cannot create '" << other << "': " << std::strerror(errno));
  std::vector<int32_t> taken;
  taken.reserve(span.count);
  uint64_t sum = kFnvOffset;
  std::string chunk(kBufferBytes - kBufferBytes % width_, '\0');
  const std::string header(kTokenHeaderBytes, '\0');
  bool ok = std::fwrite(header.data(), 1, header.size(), g) == header.size() &&
            std::fseek(f_, long(kTokenHeaderBytes), SEEK_SET) == 0;
  const uint64_t skip_begin = span.first, skip_end = span.first + span.count + 1;  // + its separator
  uint64_t token = 0;
  while (ok && token < n_tokens_) {
    const size_t want = size_t(std::min<uint64_t>(chunk.size() / width_, n_tokens_ - token));
    ok = std::fread(chunk.data(), width_, want, f_) == want;
    for (size_t i = 0; ok && i < want; ++i, ++token) {
      const unsigned char* p = reinterpret_cast<const unsigned char*>(chunk.data()) + i * width_;
      if (token < skip_begin || token >= skip_end) {
        sum = fnv1a64(p, width_, sum);
        ok = std::fwrite(p, 1, width_, g) == width_;
        continue;
      }
      uint32_t u = 0;
      for (uint32_t b = 0; b < width_; ++b) u |= uint32_t(p[b]) << (8 * b);
      --counts_[u];
      if (token + 1 < skip_end) taken.push_back(int32_t(u));
    }
  }
  if (!ok) {
    std::fclose(g);
    std::remove(other.c_str());
    TTT_FAIL("cannot rewrite '" << temp_ << "': " << std::strerror(errno));
  }
  std::fclose(f_);
  f_ = g;
  TTT_CHECK(std::rename(other.c_str(), temp_.c_str()) == 0, "cannot rename '" << other << "': " << std::strerror(errno));
  checksum_ = sum;
  n_tokens_ -= span.count + 1;
  --n_documents_;
  std::fseek(f_, 0, SEEK_END);
  return taken;
}

void TokenFileWriter::finish() {
  TTT_CHECK(f_ != nullptr, "token file '" << path_ << "': already finished");
  TTT_CHECK(n_tokens_ > 0, "token file '" << path_ << "': refusing to write zero tokens");
  flush_buffer();
  const std::string header = token_file_header(vocab_, n_tokens_, n_documents_, uint32_t(separator_), checksum_);
  const bool ok = std::fseek(f_, 0, SEEK_SET) == 0 && std::fwrite(header.data(), 1, header.size(), f_) == header.size() &&
                  std::fflush(f_) == 0 && ::fsync(fileno(f_)) == 0;
  const int err = errno;
  std::fclose(f_);
  f_ = nullptr;
  if (!ok) {
    std::remove(temp_.c_str());
    TTT_FAIL("cannot write '" << temp_ << "': " << std::strerror(err) << " (disk full?)");
  }
  rename_path(temp_, path_);
  sync_directory(std::filesystem::path(path_).parent_path().empty() ? "."
                                                                     : std::filesystem::path(path_).parent_path().string());
}

}  // namespace ttt::data
