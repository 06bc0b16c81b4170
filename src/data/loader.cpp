#include "data/loader.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "core/file_io.h"
#include "data/tokenizer.h"

namespace fs = std::filesystem;

namespace ttt::data {

using json = nlohmann::json;

// A read-only mapping of a whole file, unmapped when the last shard that uses it goes.
struct TokenSplit::Mapping {
  const unsigned char* bytes = nullptr;
  uint64_t size = 0;
  explicit Mapping(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    TTT_CHECK(fd >= 0, "token file '" << path << "' cannot be opened: " << std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      TTT_FAIL("token file '" << path << "' cannot be read: " << std::strerror(err));
    }
    size = uint64_t(st.st_size);
    if (size > 0) {
      void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
      const int err = errno;
      ::close(fd);
      TTT_CHECK(p != MAP_FAILED, "token file '" << path << "' cannot be mapped: " << std::strerror(err));
      bytes = static_cast<const unsigned char*>(p);
    } else {
      ::close(fd);
    }
  }
  ~Mapping() {
    if (bytes) ::munmap(const_cast<unsigned char*>(bytes), size);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
};

TokenSplit TokenSplit::open(const std::vector<std::string>& paths) {
  TTT_CHECK(!paths.empty(), "a token split needs at least one file");
  TokenSplit split;
  for (const std::string& path : paths) {
    const std::string where = "token file '" + path + "'";
    TTT_CHECK(file_exists(path), where << " does not exist (run `ttt prepare --input <text>` first)");
    auto mapping = std::make_shared<const Mapping>(path);
    // A header that is too short reads as zeros past the end (parse_token_header names the truncation).
    unsigned char header[kTokenHeaderBytes] = {};
    if (mapping->size > 0)  // an empty file is not mapped (bytes is null)
      std::memcpy(header, mapping->bytes, std::min<uint64_t>(mapping->size, kTokenHeaderBytes));
    Shard s;
    s.header = parse_token_header(header, mapping->size, where);
    s.payload = mapping->bytes + kTokenHeaderBytes;
    verify_token_payload(s.header, s.payload, where);
    if (!split.shards_.empty()) {
      TTT_CHECK(s.header.vocab == split.vocab_ && s.header.separator == split.separator_,
                where << " has vocabulary " << s.header.vocab << " and separator " << s.header.separator << ", but '"
                      << paths.front() << "' has vocabulary " << split.vocab_ << " and separator " << split.separator_
                      << "; every shard of a split must agree");
    }
    split.vocab_ = s.header.vocab;
    split.separator_ = s.header.separator;
    s.mapping = std::move(mapping);
    s.width = s.header.token_width;
    s.start = split.size_;
    s.count = int64_t(s.header.n_tokens);
    s.name = fs::path(path).filename().string();
    split.size_ += s.count;
    split.documents_ += s.header.n_documents;
    split.shards_.push_back(std::move(s));
  }
  return split;
}

TokenSplit TokenSplit::view(const std::vector<int32_t>& tokens, uint32_t vocab, int32_t separator) {
  static_assert(std::endian::native == std::endian::little, "a view reads int32 tokens as 4-byte little-endian ids");
  TTT_CHECK(!tokens.empty(), "a token split needs at least one token");
  TokenSplit split;
  Shard s;
  s.payload = reinterpret_cast<const unsigned char*>(tokens.data());
  s.width = 4;
  s.count = int64_t(tokens.size());
  s.name = "memory";
  s.header.vocab = vocab;
  s.header.token_width = 4;
  s.header.separator = separator;
  s.header.n_tokens = tokens.size();
  for (size_t i = 0; i < tokens.size(); ++i) {
    TTT_CHECK(tokens[i] >= 0 && uint32_t(tokens[i]) < vocab,
              "token " << tokens[i] << " at position " << i << " is outside the vocabulary [0, " << vocab << ")");
    s.header.n_documents += tokens[i] == separator;
  }
  split.size_ = s.count;
  split.vocab_ = vocab;
  split.separator_ = separator;
  split.documents_ = s.header.n_documents;
  split.shards_.push_back(std::move(s));
  return split;
}

const TokenSplit::Shard& TokenSplit::shard_of(int64_t i) const {
  TTT_CHECK(i >= 0 && i < size_, "token " << i << " is outside the split of " << size_ << " tokens");
  // The last shard whose start is <= i.
  auto it = std::upper_bound(shards_.begin(), shards_.end(), i, [](int64_t v, const Shard& s) { return v < s.start; });
  return *(it - 1);
}

int32_t TokenSplit::at(int64_t i) const {
  const Shard& s = shard_of(i);
  return int32_t(token_at(s.payload, s.width, uint64_t(i - s.start)));
}

void TokenSplit::read(int64_t pos, int64_t n, int32_t* out) const {
  TTT_CHECK(n >= 0 && pos >= 0 && pos <= size_ - n, "tokens [" << pos << ", " << pos + n << ") are outside the split of "
                                                               << size_ << " tokens");
  while (n > 0) {
    const Shard& s = shard_of(pos);
    const int64_t take = std::min(n, s.start + s.count - pos);
    const uint64_t first = uint64_t(pos - s.start);
    for (int64_t k = 0; k < take; ++k) out[k] = int32_t(token_at(s.payload, s.width, first + uint64_t(k)));
    out += take;
    pos += take;
    n -= take;
  }
}

std::vector<int32_t> TokenSplit::to_vector() const {
  std::vector<int32_t> out(size_t(size_), 0);
  read(0, size_, out.data());
  return out;
}

json TokenSplit::fingerprint() const {
  json f = json::object();
  for (const Shard& s : shards_)
    f[s.name] = json{{"tokens", s.header.n_tokens},
                     {"documents", s.header.n_documents},
                     {"vocab", s.header.vocab},
                     {"checksum", s.header.checksum}};
  return f;
}

namespace {

// meta.json of a dataset directory, or null when there is none.
json read_meta(const std::string& dir) {
  const std::string path = (fs::path(dir) / "meta.json").string();
  if (!file_exists(path)) return nullptr;
  try {
    json m = json::parse(read_file(path));
    TTT_CHECK(m.is_object(), "'" << path << "' is not a JSON object");
    return m;
  } catch (const json::exception& e) {
    TTT_FAIL("'" << path << "' is not valid JSON: " << e.what());
  }
}

bool is_byte_tokenizer(const json& meta) {
  if (!meta.contains("tokenizer")) return false;
  const json& t = meta["tokenizer"];
  if (t.is_string()) return t.get<std::string>() == "bytes";
  return t.is_object() && t.contains("kind") && t["kind"].is_string() && t["kind"].get<std::string>() == "bytes";
}

}  // namespace

std::vector<std::string> split_files(const std::string& dir, const std::string& split) {
  std::error_code ec;
  TTT_CHECK(fs::is_directory(dir, ec), "data directory '" << dir << "' does not exist (prepare one with `ttt prepare --input "
                                                          << "TEXT --out " << dir << "`)");
  const json meta = read_meta(dir);
  const std::string meta_path = (fs::path(dir) / "meta.json").string();
  std::vector<std::string> files;
  if (!meta.is_null() && meta.contains("shards")) {
    const json& shards = meta["shards"];
    TTT_CHECK(shards.is_object() && shards.contains(split) && shards[split].is_array() && !shards[split].empty(),
              "'" << meta_path << "': \"shards\" must map \"" << split << "\" to a non-empty list of file names");
    for (const json& name : shards[split]) {
      TTT_CHECK(name.is_string() && !name.get<std::string>().empty() &&
                    fs::path(name.get<std::string>()).filename() == fs::path(name.get<std::string>()),
                "'" << meta_path << "': shards." << split << " holds " << name.dump()
                    << "; expected plain file names inside the data directory");
      files.push_back((fs::path(dir) / name.get<std::string>()).string());
    }
  } else {
    files.push_back((fs::path(dir) / (split + ".bin")).string());
  }
  for (const std::string& f : files)
    TTT_CHECK(file_exists(f), "data directory '" << dir << "' has no " << fs::path(f).filename().string()
                                                 << " (the " << split << " split)");
  return files;
}

TokenSplit open_split(const std::string& dir, const std::string& split) { return TokenSplit::open(split_files(dir, split)); }

DatasetInfo read_dataset_info(const std::string& dir, uint32_t vocab, int32_t separator) {
  DatasetInfo info;
  const json meta = read_meta(dir);
  const std::string meta_path = (fs::path(dir) / "meta.json").string();
  if (meta.is_null()) {
    // Directories written by hand or by tests before meta.json existed: byte tokens.
    if (vocab == kByteVocab && separator == kDocSeparator) info.token_bytes = make_byte_tokenizer()->token_byte_lengths();
    return info;
  }
  if (meta.contains("token_bytes")) {
    const json& tb = meta["token_bytes"];
    TTT_CHECK(tb.is_array() && tb.size() == vocab,
              "'" << meta_path << "': \"token_bytes\" must list the text bytes of each of the " << vocab
                  << " token ids, got " << (tb.is_array() ? std::to_string(tb.size()) + " entries" : tb.dump()));
    for (size_t i = 0; i < tb.size(); ++i) {
      TTT_CHECK(tb[i].is_number_unsigned() || (tb[i].is_number_integer() && tb[i].get<int64_t>() >= 0),
                "'" << meta_path << "': token_bytes[" << i << "] is " << tb[i].dump() << "; expected a byte count >= 0");
      info.token_bytes.push_back(tb[i].get<uint32_t>());
    }
  } else if (is_byte_tokenizer(meta) && vocab == kByteVocab && separator == kDocSeparator) {
    info.token_bytes = make_byte_tokenizer()->token_byte_lengths();
  }
  if (meta.contains("unigram_entropy_bits") && meta["unigram_entropy_bits"].is_number())
    info.unigram_entropy_bits = meta["unigram_entropy_bits"].get<double>();
  if (meta.contains("train_text_bytes") && meta["train_text_bytes"].is_number_unsigned())
    info.train_text_bytes = meta["train_text_bytes"].get<int64_t>();
  return info;
}

uint64_t covered_bytes(const TokenSplit& split, const std::vector<uint32_t>& token_bytes, int64_t pos, int64_t n) {
  TTT_CHECK(token_bytes.size() >= split.vocab(), "the token byte table has " << token_bytes.size()
                                                                              << " entries, the vocabulary " << split.vocab());
  constexpr int64_t kPiece = int64_t(1) << 16;  // bounded memory whatever n is
  std::vector<int32_t> ids(size_t(std::min(std::max<int64_t>(n, 0), kPiece)));
  uint64_t bytes = 0;
  for (int64_t done = 0; done < n; done += kPiece) {
    const int64_t take = std::min(kPiece, n - done);
    split.read(pos + done, take, ids.data());
    for (int64_t k = 0; k < take; ++k) bytes += token_bytes[size_t(ids[size_t(k)])];
  }
  return bytes;
}

}  // namespace ttt::data
