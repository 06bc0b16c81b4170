#include "data/prepare.h"

#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <sstream>
#include <system_error>

#include "core/error.h"
#include "core/file_io.h"
#include "data/progress.h"
#include "data/tokens.h"

namespace fs = std::filesystem;

namespace ttt::data {

namespace {

constexpr size_t kBinaryProbeBytes = 4096;
constexpr int kMaxNamedSkips = 5;

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string read_gz(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  TTT_CHECK(f != nullptr, "cannot open '" << path << "': " << std::strerror(errno));
  gzbuffer(f, 1 << 17);
  std::string out;
  std::array<char, 1 << 16> buf;
  for (;;) {
    int n = gzread(f, buf.data(), unsigned(buf.size()));
    if (n < 0) {
      int code = 0;
      std::string msg = gzerror(f, &code);
      gzclose(f);
      TTT_FAIL("cannot decompress '" << path << "': " << msg);
    }
    if (n == 0) break;
    out.append(buf.data(), size_t(n));
  }
  gzclose(f);
  return out;
}

struct Doc {
  std::string rel;   // path relative to the input (for a single file: its file name)
  std::string text;  // bytes, no NUL
  double unit = 0;   // split_unit(seed, rel)
};

uint64_t splitmix_final(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

std::string default_out_dir(const std::string& input) {
  std::string s = input;
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  std::string base = fs::path(s).filename().string();
  if (ends_with(base, ".gz") && base.size() > 3) base.resize(base.size() - 3);
  if (base.empty() || base == "." || base == ".." || base == "/") base = "corpus";
  return "data/" + base;
}

double entropy_from_counts(const std::vector<uint64_t>& counts, uint64_t total) {
  if (total == 0) return 0;
  double h = 0;
  for (uint64_t c : counts) {
    if (!c) continue;
    const double p = double(c) / double(total);
    h -= p * std::log2(p);
  }
  return h;
}

double split_unit(uint64_t seed, std::string_view relative_path) {
  unsigned char sb[8];
  for (int i = 0; i < 8; ++i) sb[i] = (unsigned char)((seed >> (8 * i)) & 0xff);
  uint64_t h = fnv1a64(sb, 8);
  h = fnv1a64(relative_path.data(), relative_path.size(), h);
  return double(splitmix_final(h) >> 11) * 0x1.0p-53;
}

double unigram_entropy_bits(std::string_view byte_tokens) {
  std::vector<uint64_t> counts(256, 0);
  for (char c : byte_tokens) ++counts[static_cast<unsigned char>(c)];
  return entropy_from_counts(counts, byte_tokens.size());
}

double unigram_entropy_bits(const std::vector<int32_t>& tokens) {
  int32_t mx = 0;
  for (int32_t t : tokens) {
    TTT_CHECK(t >= 0, "unigram_entropy_bits: negative token " << t);
    mx = std::max(mx, t);
  }
  std::vector<uint64_t> counts(size_t(mx) + 1, 0);
  for (int32_t t : tokens) ++counts[size_t(t)];
  return entropy_from_counts(counts, tokens.size());
}

double unigram_entropy_bits(const TokenSplit& tokens) {
  std::vector<uint64_t> counts(tokens.vocab(), 0);
  constexpr int64_t kPiece = int64_t(1) << 16;
  std::vector<int32_t> piece(size_t(std::min(kPiece, tokens.size())));
  for (int64_t pos = 0; pos < tokens.size(); pos += kPiece) {
    const int64_t n = std::min(kPiece, tokens.size() - pos);
    tokens.read(pos, n, piece.data());
    for (int64_t i = 0; i < n; ++i) ++counts[size_t(piece[size_t(i)])];
  }
  return entropy_from_counts(counts, uint64_t(tokens.size()));
}

PrepareResult prepare_corpus(const PrepareOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  TTT_CHECK(!opt.input.empty(), "ttt prepare: --input is required (a text file or a directory of text files)");
  TTT_CHECK(opt.val_fraction > 0 && opt.val_fraction < 1,
            "ttt prepare: --val-fraction must be in (0, 1), got " << opt.val_fraction);
  TTT_CHECK(opt.max_bytes >= 0, "ttt prepare: --max-bytes must be >= 0 (0 = no limit), got " << opt.max_bytes);

  std::error_code ec;
  const fs::path input(opt.input);
  const auto st = fs::status(input, ec);
  TTT_CHECK(!ec && fs::exists(st), "ttt prepare: input '" << opt.input << "' does not exist");
  TTT_CHECK(fs::is_directory(st) || fs::is_regular_file(st),
            "ttt prepare: input '" << opt.input << "' is neither a regular file nor a directory");

  PrepareResult r;
  r.out_dir = opt.out_dir.empty() ? default_out_dir(opt.input) : opt.out_dir;
  // Check the output first, so a bad --out fails before the corpus is read.
  fs::create_directories(r.out_dir, ec);
  TTT_CHECK(!ec, "ttt prepare: cannot create output directory '" << r.out_dir << "': " << ec.message());
  TTT_CHECK(fs::is_directory(r.out_dir), "ttt prepare: output '" << r.out_dir << "' is not a directory");
  TTT_CHECK(::access(r.out_dir.c_str(), W_OK) == 0,
            "ttt prepare: output directory '" << r.out_dir << "' is not writable: " << std::strerror(errno));
  r.train_path = (fs::path(r.out_dir) / "train.bin").string();
  r.val_path = (fs::path(r.out_dir) / "val.bin").string();
  r.meta_path = (fs::path(r.out_dir) / "meta.json").string();

  // List the files: (relative path, absolute path), sorted by relative path.
  std::vector<std::pair<std::string, std::string>> files;
  if (fs::is_directory(st)) {
    fs::recursive_directory_iterator it(input, fs::directory_options::skip_permission_denied, ec), end;
    TTT_CHECK(!ec, "ttt prepare: cannot read directory '" << opt.input << "': " << ec.message());
    for (; it != end; it.increment(ec)) {
      TTT_CHECK(!ec, "ttt prepare: error walking '" << opt.input << "': " << ec.message());
      std::error_code fec;
      if (!it->is_regular_file(fec)) continue;  // directories, broken links, devices
      files.emplace_back(it->path().lexically_relative(input).generic_string(), it->path().string());
    }
    std::sort(files.begin(), files.end());
  } else {
    files.emplace_back(input.filename().generic_string(), input.string());
  }

  // Read the documents.
  std::vector<Doc> docs;
  int named_skips = 0;
  for (const auto& [rel, abs] : files) {
    if (opt.max_bytes > 0 && r.bytes >= uint64_t(opt.max_bytes)) {
      r.truncated = true;
      break;
    }
    ++r.files_seen;
    std::string text = ends_with(abs, ".gz") ? read_gz(abs) : read_file(abs);
    if (text.empty()) {
      ++r.skipped_empty;
      continue;
    }
    if (std::memchr(text.data(), 0, std::min(text.size(), kBinaryProbeBytes)) != nullptr) {
      ++r.skipped_binary;
      if (opt.log && named_skips++ < kMaxNamedSkips) *opt.log << "prepare: skipping binary file " << rel << "\n";
      continue;
    }
    const size_t before = text.size();
    text.erase(std::remove(text.begin(), text.end(), '\0'), text.end());
    r.nul_bytes_dropped += before - text.size();
    if (text.empty()) {
      ++r.skipped_empty;
      continue;
    }
    if (opt.max_bytes > 0 && r.bytes + text.size() > uint64_t(opt.max_bytes)) {
      text.resize(size_t(uint64_t(opt.max_bytes) - r.bytes));
      r.truncated = true;
    }
    r.bytes += text.size();
    docs.push_back(Doc{rel, std::move(text), split_unit(opt.seed, rel)});
  }
  if (opt.log && r.skipped_binary > uint64_t(kMaxNamedSkips))
    *opt.log << "prepare: ... and " << (r.skipped_binary - kMaxNamedSkips) << " more binary files skipped\n";
  r.documents = docs.size();
  TTT_CHECK(r.bytes > 0, "ttt prepare: empty corpus: no text bytes in '"
                             << opt.input << "' (" << r.files_seen << " files, " << r.skipped_binary << " binary, "
                             << r.skipped_empty << " empty)");

  std::string train, val;
  if (docs.size() == 1) {
    const std::string& t = docs[0].text;
    TTT_CHECK(t.size() >= 2, "ttt prepare: corpus too small to split: a single document of " << t.size() << " byte");
    const size_t n = t.size();
    size_t n_val = size_t(std::llround(opt.val_fraction * double(n)));
    n_val = std::clamp<size_t>(n_val, 1, n - 1);
    size_t cut = n - n_val;
    // Move the cut back to a UTF-8 character start (continuation bytes are 10xxxxxx), if that keeps
    // training non-empty.
    size_t c = cut;
    while (c > 1 && (static_cast<unsigned char>(t[c]) & 0xc0) == 0x80 && cut - c < 4) --c;
    if ((static_cast<unsigned char>(t[c]) & 0xc0) != 0x80) cut = c;
    train.assign(t, 0, cut);
    train.push_back(char(kDocSeparator));
    val.assign(t, cut, std::string::npos);
    val.push_back(char(kDocSeparator));
    r.single_document_split = true;
    r.train_documents = r.val_documents = 1;
  } else {
    std::vector<char> to_val(docs.size());
    size_t n_val = 0;
    for (size_t i = 0; i < docs.size(); ++i) n_val += (to_val[i] = docs[i].unit < opt.val_fraction);
    if (n_val == 0) {
      size_t best = 0;
      for (size_t i = 1; i < docs.size(); ++i)
        if (docs[i].unit < docs[best].unit) best = i;
      to_val[best] = 1;
      n_val = 1;
    } else if (n_val == docs.size()) {
      size_t best = 0;
      for (size_t i = 1; i < docs.size(); ++i)
        if (docs[i].unit > docs[best].unit) best = i;
      to_val[best] = 0;
      --n_val;
    }
    size_t train_bytes = 0, val_bytes = 0;
    for (size_t i = 0; i < docs.size(); ++i) (to_val[i] ? val_bytes : train_bytes) += docs[i].text.size() + 1;
    train.reserve(train_bytes);
    val.reserve(val_bytes);
    for (size_t i = 0; i < docs.size(); ++i) {
      std::string& dst = to_val[i] ? val : train;
      dst += docs[i].text;
      dst.push_back(char(kDocSeparator));
      std::string().swap(docs[i].text);  // free as we go
    }
    r.val_documents = n_val;
    r.train_documents = docs.size() - n_val;
  }
  r.train_tokens = train.size();
  r.val_tokens = val.size();
  r.unigram_entropy_bits = unigram_entropy_bits(train);

  auto write = [&](const std::string& path, auto&& fn) {
    try {
      fn();
    } catch (const Error& e) {
      TTT_FAIL("ttt prepare: cannot write '" << path << "' (output not writable?): " << e.what());
    }
  };
  write(r.train_path, [&] { save_byte_tokens(r.train_path, train, r.train_documents); });
  write(r.val_path, [&] { save_byte_tokens(r.val_path, val, r.val_documents); });

  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  nlohmann::json meta = {
      {"format", "TTTTOK"},
      {"format_version", kTokenFormatVersion},
      {"tokenizer", "bytes"},
      {"vocab_size", kByteVocab},
      {"separator_token", kDocSeparator},
      {"token_bytes", byte_token_lengths()},
      {"input", opt.input},
      {"seed", opt.seed},
      {"val_fraction", opt.val_fraction},
      {"max_bytes", opt.max_bytes},
      {"files_seen", r.files_seen},
      {"skipped_binary", r.skipped_binary},
      {"skipped_empty", r.skipped_empty},
      {"nul_bytes_dropped", r.nul_bytes_dropped},
      {"documents", r.documents},
      {"bytes", r.bytes},
      {"truncated", r.truncated},
      {"split", r.single_document_split ? "single_document_bytes" : "documents"},
      {"train_documents", r.train_documents},
      {"val_documents", r.val_documents},
      {"train_tokens", r.train_tokens},
      {"val_tokens", r.val_tokens},
      {"train_text_bytes", r.train_tokens - r.train_documents},  // every token but the separators is one byte
      {"val_text_bytes", r.val_tokens - r.val_documents},
      {"unigram_entropy_bits", r.unigram_entropy_bits},
      {"seconds", r.seconds},
  };
  write(r.meta_path, [&] { write_file_atomic(r.meta_path, meta.dump(2) + "\n"); });
  return r;
}

std::string prepare_summary(const PrepareResult& r) {
  std::ostringstream os;
  os << "files:      " << r.files_seen << " read, " << r.skipped_binary << " skipped as binary, " << r.skipped_empty
     << " empty" << (r.truncated ? " (stopped at --max-bytes)" : "") << "\n";
  os << "documents:  " << r.documents << " (" << r.train_documents << " train, " << r.val_documents << " validation"
     << (r.single_document_split ? "; one document split at a byte boundary" : "") << ")\n";
  os << "bytes:      " << r.bytes << " (" << format_byte_size(r.bytes) << ")"
     << (r.nul_bytes_dropped ? ", " + std::to_string(r.nul_bytes_dropped) + " stray NUL bytes dropped" : "") << "\n";
  os << "tokens:     " << r.train_tokens << " train, " << r.val_tokens << " validation (byte-level, separators included)\n";
  const uint64_t train_text_bytes = r.train_tokens - r.train_documents;  // separators are tokens without text
  os << "entropy:    " << std::fixed << std::setprecision(4) << r.unigram_entropy_bits << " bits/token, "
     << r.unigram_entropy_bits * double(r.train_tokens) / double(std::max<uint64_t>(train_text_bytes, 1))
     << " bits/byte (unigram, train tokens)\n";
  os << "wrote:      " << r.train_path << ", " << r.val_path << ", " << r.meta_path << "\n";
  os << "time:       " << std::setprecision(2) << r.seconds << " s\n";
  return os.str();
}

}  // namespace ttt::data
