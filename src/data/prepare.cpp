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
#include "data/tokenizer.h"
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

uint64_t splitmix_final(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Reads a file (gzip or plain: zlib reads both) line by line, for jsonl.
class LineReader {
 public:
  explicit LineReader(const std::string& path) : path_(path) {
    f_ = gzopen(path.c_str(), "rb");
    TTT_CHECK(f_ != nullptr, "cannot open '" << path << "': " << std::strerror(errno));
    gzbuffer(f_, 1 << 17);
  }
  ~LineReader() { gzclose(f_); }
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;
  // The next line without its "\n" (and "\r"); false at the end.
  bool next(std::string& line) {
    line.clear();
    for (;;) {
      if (pos_ == len_) {
        const int n = gzread(f_, buf_.data(), unsigned(buf_.size()));
        if (n < 0) {
          int code = 0;
          TTT_FAIL("cannot decompress '" << path_ << "': " << gzerror(f_, &code));
        }
        if (n == 0) {
          if (line.empty() && !pending_) return false;
          pending_ = false;
          break;
        }
        len_ = size_t(n);
        pos_ = 0;
      }
      pending_ = true;
      const char* start = buf_.data() + pos_;
      const void* nl = std::memchr(start, '\n', len_ - pos_);
      if (!nl) {
        line.append(start, len_ - pos_);
        pos_ = len_;
        continue;
      }
      const size_t k = size_t(static_cast<const char*>(nl) - start);
      line.append(start, k);
      pos_ += k + 1;
      pending_ = false;
      break;
    }
    if (!line.empty() && line.back() == '\r') line.pop_back();
    return true;
  }
  uint64_t compressed_offset() const { return uint64_t(gzoffset(f_)); }

 private:
  std::string path_;
  gzFile f_;
  std::array<char, 1 << 16> buf_;
  size_t pos_ = 0, len_ = 0;
  bool pending_ = false;  // a line has started (so an unterminated last line counts)
};

// 1-based line number of byte `offset` of `text`.
uint64_t line_of(std::string_view text, size_t offset) {
  return 1 + uint64_t(std::count(text.begin(), text.begin() + std::ptrdiff_t(offset), '\n'));
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

std::string detect_format(const std::string& input) {
  return ends_with(input, ".jsonl") || ends_with(input, ".jsonl.gz") ? "jsonl" : "text";
}

size_t find_invalid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    const unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len = 0;
    uint32_t cp = 0;
    if ((c & 0xe0) == 0xc0) len = 2, cp = c & 0x1f;
    else if ((c & 0xf0) == 0xe0) len = 3, cp = c & 0x0f;
    else if ((c & 0xf8) == 0xf0) len = 4, cp = c & 0x07;
    else return i;
    if (i + len > n) return i;
    for (size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xc0) != 0x80) return i;
      cp = (cp << 6) | (p[i + k] & 0x3f);
    }
    const uint32_t min_cp = len == 2 ? 0x80 : len == 3 ? 0x800 : 0x10000;
    if (cp < min_cp || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
    i += len;
  }
  return std::string_view::npos;
}

PrepareResult prepare_corpus(const PrepareOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  TTT_CHECK(!opt.input.empty(), "ttt prepare: --input is required (a text file or a directory of text files)");
  TTT_CHECK(opt.val_fraction > 0 && opt.val_fraction < 1,
            "ttt prepare: --val-fraction must be in (0, 1), got " << opt.val_fraction);
  TTT_CHECK(opt.max_bytes >= 0, "ttt prepare: --max-bytes must be >= 0 (0 = no limit), got " << opt.max_bytes);
  PrepareResult r;
  r.format = opt.format.empty() ? detect_format(opt.input) : opt.format;
  TTT_CHECK(r.format == "text" || r.format == "jsonl",
            "ttt prepare: --format must be text or jsonl, got '" << r.format << "'");
  TTT_CHECK(r.format == "jsonl" || opt.text_field == "text", "ttt prepare: --text-field applies to --format jsonl");
  TTT_CHECK(!opt.text_field.empty(), "ttt prepare: --text-field must not be empty");

  std::error_code ec;
  const fs::path input(opt.input);
  const auto st = fs::status(input, ec);
  TTT_CHECK(!ec && fs::exists(st), "ttt prepare: input '" << opt.input << "' does not exist");
  TTT_CHECK(fs::is_directory(st) || fs::is_regular_file(st),
            "ttt prepare: input '" << opt.input << "' is neither a regular file nor a directory");

  // The tokenizer, before anything is written.
  std::unique_ptr<Tokenizer> tok;
  if (opt.tokenizer.empty()) {
    TTT_CHECK(opt.eot_token < 0 || opt.eot_token == kDocSeparator,
              "ttt prepare: --eot-token " << opt.eot_token << ": the byte tokenizer's separator is 0 (give --tokenizer)");
    tok = make_byte_tokenizer();
  } else {
    tok = load_tokenizer(opt.tokenizer, opt.eot_token);
  }
  const bool bytes_kind = tok->kind() == "bytes";
  r.tokenizer_kind = tok->kind();
  r.vocab = tok->vocab_size();
  r.separator = tok->eot_id();

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

  // List the files: (relative path, absolute path), sorted by relative path; and their total size (progress).
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
  uint64_t total_input = 0;
  for (const auto& f : files) total_input += uint64_t(fs::file_size(f.second, ec));

  const TokenizerRecord record = install_tokenizer(*tok, opt.tokenizer, r.out_dir);
  const std::vector<uint32_t> byte_lengths = tok->token_byte_lengths();
  // One side of the split: its writer, unigram counts, text bytes, and the document that would move to the other
  // side if that one stayed empty (train: the smallest split unit; validation: the largest).
  struct Side {
    std::unique_ptr<TokenFileWriter> writer;
    std::vector<uint64_t> counts;
    uint64_t text_bytes = 0;
    std::string candidate;
    double candidate_unit = 0;
  };
  Side train, val;
  auto open_sides = [&] {
    train.writer.reset();  // first: a new writer reuses the temp name
    val.writer.reset();
    train = Side{};
    val = Side{};
    train.writer = std::make_unique<TokenFileWriter>(r.train_path, r.vocab, r.separator);
    val.writer = std::make_unique<TokenFileWriter>(r.val_path, r.vocab, r.separator);
    train.counts.assign(r.vocab, 0);
    val.counts.assign(r.vocab, 0);
  };
  std::vector<uint32_t> buffer;
  auto append_to = [&](Side& side, const int32_t* ids, size_t n, const std::string& origin) {
    buffer.assign(ids, ids + n);
    for (size_t i = 0; i < n; ++i)
      TTT_CHECK(ids[i] != r.separator, "ttt prepare: " << origin << ": the text encodes to the separator id "
                                                       << r.separator << " at token " << i
                                                       << " (the separator must be a special token that text never "
                                                       << "produces; see --eot-token)");
    buffer.push_back(uint32_t(r.separator));
    side.writer->append(buffer.data(), buffer.size());
    for (uint32_t t : buffer) {
      ++side.counts[t];
      side.text_bytes += byte_lengths[t];
    }
  };
  // Pass 2 (rare: a side came out empty, or there is one document): what changes.
  std::string move_rel;       // this document goes to the other side
  bool split_single = false;  // the only document is split inside

  uint64_t input_done = 0;
  ProgressLine progress(opt.log, "prepare", total_input, /*terminal=*/false, opt.progress_every_s);
  auto progress_detail = [&] {
    return std::to_string(r.documents) + " documents, " +
           std::to_string(train.writer->tokens() + val.writer->tokens()) + " tokens";
  };
  // One document: tokenize, then append to its side.
  auto add_document = [&](std::string& text, const std::string& rel, const std::string& origin) {
    const size_t before = text.size();
    text.erase(std::remove(text.begin(), text.end(), '\0'), text.end());
    r.nul_bytes_dropped += before - text.size();
    if (text.empty()) {
      ++r.skipped_empty;
      return;
    }
    if (opt.max_bytes > 0 && r.bytes + text.size() > uint64_t(opt.max_bytes)) {
      size_t keep = size_t(uint64_t(opt.max_bytes) - r.bytes);
      // Keep whole characters for tokenizers that need valid UTF-8.
      if (!bytes_kind)
        while (keep > 0 && (static_cast<unsigned char>(text[keep]) & 0xc0) == 0x80) --keep;
      text.resize(keep);
      r.truncated = true;
      if (text.empty()) return;
    }
    if (!bytes_kind) {
      const size_t bad = find_invalid_utf8(text);
      TTT_CHECK(bad == std::string_view::npos,
                "ttt prepare: " << origin << (r.format == "text" ? ":" + std::to_string(line_of(text, bad)) : "")
                                << ": invalid UTF-8 (byte 0x" << std::hex << int(static_cast<unsigned char>(text[bad]))
                                << std::dec << " at byte " << bad << " of the document); the " << tok->kind()
                                << " tokenizer needs UTF-8 text");
    }
    r.bytes += text.size();
    ++r.documents;
    const std::vector<int32_t> ids = tok->encode(text, /*parse_special=*/false);
    if (split_single) {
      // Validation takes the last round(val_fraction * n) tokens (at least 1; at least 1 stays in training).
      const size_t n = ids.size();
      TTT_CHECK(n >= 2, "ttt prepare: corpus too small to split: a single document of " << n
                                                                                        << (bytes_kind ? " byte" : " token"));
      const size_t n_val = std::clamp<size_t>(size_t(std::llround(opt.val_fraction * double(n))), 1, n - 1);
      size_t cut = n - n_val;
      if (bytes_kind) {
        // Move the cut back to a UTF-8 character start (continuation bytes are 10xxxxxx), if that keeps training
        // non-empty.
        size_t c = cut;
        while (c > 1 && (ids[c] & 0xc0) == 0x80 && cut - c < 4) --c;
        if ((ids[c] & 0xc0) != 0x80) cut = c;
      }
      append_to(train, ids.data(), cut, origin);
      append_to(val, ids.data() + cut, n - cut, origin);
      return;
    }
    const double unit = split_unit(opt.seed, rel);
    const bool to_val = (unit < opt.val_fraction) != (rel == move_rel);
    Side& side = to_val ? val : train;
    const bool first = side.writer->documents() == 0;
    append_to(side, ids.data(), ids.size(), origin);
    if (first || (to_val ? unit > side.candidate_unit : unit < side.candidate_unit)) {
      side.candidate = rel;
      side.candidate_unit = unit;
    }
    progress.update(input_done, progress_detail());
  };

  // One pass over the corpus.
  auto read_corpus = [&] {
    r.files_seen = r.skipped_binary = r.skipped_empty = r.nul_bytes_dropped = r.documents = r.bytes = r.blank_lines = 0;
    r.truncated = false;
    input_done = 0;
    open_sides();
    int named_skips = 0;
    std::string text, line;
    for (const auto& [rel, abs] : files) {
      if (opt.max_bytes > 0 && r.bytes >= uint64_t(opt.max_bytes)) {
        r.truncated = true;
        break;
      }
      ++r.files_seen;
      const uint64_t file_bytes = uint64_t(fs::file_size(abs, ec));
      if (r.format == "text") {
        text = ends_with(abs, ".gz") ? read_gz(abs) : read_file(abs);
        input_done += file_bytes;
        if (text.empty()) {
          ++r.skipped_empty;
        } else if (std::memchr(text.data(), 0, std::min(text.size(), kBinaryProbeBytes)) != nullptr) {
          ++r.skipped_binary;
          if (opt.log && named_skips++ < kMaxNamedSkips && !split_single && move_rel.empty())
            *opt.log << "prepare: skipping binary file " << rel << "\n";
        } else {
          add_document(text, rel, abs);
        }
        continue;
      }
      LineReader lines(abs);
      const uint64_t base = input_done;
      for (uint64_t line_no = 1; lines.next(line); ++line_no) {
        if (opt.max_bytes > 0 && r.bytes >= uint64_t(opt.max_bytes)) {
          r.truncated = true;
          break;
        }
        if (line.find_first_not_of(" \t") == std::string::npos) {
          ++r.blank_lines;
          continue;
        }
        const std::string where = abs + ":" + std::to_string(line_no);
        nlohmann::json j;
        try {
          j = nlohmann::json::parse(line);
        } catch (const nlohmann::json::exception& e) {
          TTT_FAIL("ttt prepare: " << where << ": invalid JSON (or invalid UTF-8 in a string): " << e.what());
        }
        TTT_CHECK(j.is_object(), "ttt prepare: " << where << ": the line is not a JSON object");
        auto field = j.find(opt.text_field);
        TTT_CHECK(field != j.end(), "ttt prepare: " << where << ": no field \"" << opt.text_field
                                                    << "\" (give the field that holds the text with --text-field)");
        TTT_CHECK(field->is_string(), "ttt prepare: " << where << ": field \"" << opt.text_field << "\" is a "
                                                      << field->type_name() << ", not a string");
        text = field->get<std::string>();
        input_done = base + lines.compressed_offset();
        add_document(text, rel + ":" + std::to_string(line_no), where);
      }
      input_done = base + file_bytes;
    }
    if (opt.log && r.skipped_binary > uint64_t(kMaxNamedSkips) && !split_single && move_rel.empty())
      *opt.log << "prepare: ... and " << (r.skipped_binary - kMaxNamedSkips) << " more binary files skipped\n";
    TTT_CHECK(r.bytes > 0, "ttt prepare: empty corpus: no text bytes in '"
                               << opt.input << "' (" << r.files_seen << " files, " << r.skipped_binary << " binary, "
                               << r.skipped_empty << " empty)");
  };

  read_corpus();
  // Both sides get a document: when one stayed empty (or there is one document), a second pass routes it.
  if (r.documents == 1) split_single = true;
  else if (val.writer->documents() == 0) move_rel = train.candidate;
  else if (train.writer->documents() == 0) move_rel = val.candidate;
  if (split_single || !move_rel.empty()) {
    if (opt.log) *opt.log << "prepare: a second pass, so that validation and training each get a document\n";
    read_corpus();
  }
  r.single_document_split = split_single;
  r.train_documents = train.writer->documents();
  r.val_documents = val.writer->documents();
  r.train_tokens = train.writer->tokens();
  r.val_tokens = val.writer->tokens();
  r.unigram_entropy_bits = entropy_from_counts(train.counts, r.train_tokens);
  r.train_text_bytes = train.text_bytes;
  r.val_text_bytes = val.text_bytes;
  if (progress.drawn()) progress.finish(progress_detail());  // short runs stay quiet

  auto write = [&](const std::string& path, auto&& fn) {
    try {
      fn();
    } catch (const Error& e) {
      TTT_FAIL("ttt prepare: cannot write '" << path << "' (output not writable?): " << e.what());
    }
  };
  write(r.train_path, [&] { train.writer->finish(); });
  write(r.val_path, [&] { val.writer->finish(); });

  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  nlohmann::json meta = {
      {"format", "TTTTOK"},
      {"format_version", kTokenFormatVersion},
      {"tokenizer", record.to_json()},
      {"vocab_size", r.vocab},
      {"separator_token", r.separator},
      {"input", opt.input},
      {"input_format", r.format},
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
      {"split", r.single_document_split ? "single_document_tokens" : "documents"},
      {"train_documents", r.train_documents},
      {"val_documents", r.val_documents},
      {"train_tokens", r.train_tokens},
      {"val_tokens", r.val_tokens},
      {"token_bytes", byte_lengths},
      {"train_text_bytes", r.train_text_bytes},
      {"val_text_bytes", r.val_text_bytes},
      {"unigram_entropy_bits", r.unigram_entropy_bits},
      {"seconds", r.seconds},
  };
  if (r.format == "jsonl") {
    meta["text_field"] = opt.text_field;
    meta["blank_lines"] = r.blank_lines;
  }
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
  os << "tokens:     " << r.train_tokens << " train, " << r.val_tokens << " validation (" << r.tokenizer_kind
     << " tokenizer, vocabulary " << r.vocab << ", separator " << r.separator << " included)\n";
  os << "entropy:    " << std::fixed << std::setprecision(4) << r.unigram_entropy_bits << " bits/token, "
     << r.unigram_entropy_bits * double(r.train_tokens) / double(std::max<uint64_t>(r.train_text_bytes, 1))
     << " bits/byte (unigram, train tokens)\n";
  os << "wrote:      " << r.train_path << ", " << r.val_path << ", " << r.meta_path << "\n";
  os << "time:       " << std::setprecision(2) << r.seconds << " s\n";
  return os.str();
}

}  // namespace ttt::data
