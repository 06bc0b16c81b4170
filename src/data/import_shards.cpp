#include "data/import_shards.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/file_io.h"
#include "data/prepare.h"
#include "data/progress.h"
#include "data/tokenizer.h"
#include "data/tokens.h"

namespace fs = std::filesystem;

namespace ttt::data {

namespace {

uint64_t le(const unsigned char* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t(p[i]) << (8 * i);
  return v;
}

bool has_extension(const fs::path& p, const char* ext) { return p.extension() == ext; }

// Reads exactly n bytes at `offset` of an open stream; false when the file ends first.
bool read_at(std::ifstream& in, uint64_t offset, unsigned char* out, uint64_t n) {
  in.clear();
  in.seekg(std::streamoff(offset));
  in.read(reinterpret_cast<char*>(out), std::streamsize(n));
  return uint64_t(in.gcount()) == n;
}

// The dict of a .npy header: {'descr': '<u2', 'fortran_order': False, 'shape': (N,), } (Python literal syntax).
struct NpyHeader {
  std::string descr;
  bool fortran_order = false, have_descr = false, have_order = false, have_shape = false;
  std::vector<uint64_t> shape;
};

NpyHeader parse_npy_dict(const std::string& text, const std::string& where, uint64_t base) {
  size_t i = 0;
  auto fail = [&](const std::string& what) {
    TTT_FAIL(where << ": malformed .npy header at byte offset " << base + i << ": " << what << " (header: " << text << ")");
  };
  auto skip = [&] {
    while (i < text.size() && (text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r')) ++i;
  };
  auto expect = [&](char c) {
    skip();
    if (i >= text.size() || text[i] != c) fail(std::string("expected '") + c + "'");
    ++i;
  };
  auto quoted = [&] {
    skip();
    if (i >= text.size() || (text[i] != '\'' && text[i] != '"')) fail("expected a quoted string");
    const char q = text[i++];
    const size_t end = text.find(q, i);
    if (end == std::string::npos) fail("unterminated string");
    std::string s = text.substr(i, end - i);
    i = end + 1;
    return s;
  };
  NpyHeader h;
  expect('{');
  for (;;) {
    skip();
    if (i < text.size() && text[i] == '}') {
      ++i;
      break;
    }
    const std::string key = quoted();
    expect(':');
    skip();
    if (key == "descr") {
      h.descr = quoted();
      h.have_descr = true;
    } else if (key == "fortran_order") {
      if (text.compare(i, 4, "True") == 0) h.fortran_order = true, i += 4;
      else if (text.compare(i, 5, "False") == 0) h.fortran_order = false, i += 5;
      else fail("fortran_order must be True or False");
      h.have_order = true;
    } else if (key == "shape") {
      expect('(');
      for (;;) {
        skip();
        if (i < text.size() && text[i] == ')') {
          ++i;
          break;
        }
        if (i >= text.size() || text[i] < '0' || text[i] > '9') fail("shape must be a tuple of non-negative integers");
        uint64_t v = 0;
        while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
          if (v > (UINT64_MAX - 9) / 10) fail("shape entry too large");
          v = v * 10 + uint64_t(text[i++] - '0');
        }
        h.shape.push_back(v);
        skip();
        if (i < text.size() && text[i] == ',') ++i;
      }
      h.have_shape = true;
    } else {
      fail("unknown key '" + key + "' (a .npy header has descr, fortran_order, shape)");
    }
    skip();
    if (i < text.size() && text[i] == ',') ++i;
  }
  if (!h.have_descr || !h.have_order || !h.have_shape) fail("descr, fortran_order and shape are all required");
  return h;
}

// The source's token count from its size, checked: `what` describes the layout for the message.
uint64_t tokens_in(const std::string& where, uint64_t file_bytes, uint64_t data_offset, uint32_t width) {
  TTT_CHECK(file_bytes >= data_offset, where << ": truncated: " << file_bytes << " bytes, the header alone is " << data_offset);
  const uint64_t payload = file_bytes - data_offset;
  TTT_CHECK(payload % width == 0, where << ": truncated: the " << payload << " bytes after the header (byte offset " << data_offset
                                        << ") are not a whole number of " << width << "-byte tokens; the last token "
                                        << "starts at byte offset " << data_offset + payload / width * width);
  return payload / width;
}

std::string shard_name(const char* split, size_t index) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%s-%05zu.bin", split, index);
  return buf;
}

// Streams the tokens of a source shard in pieces: fn(ids, n, index of ids[0] in the shard).
template <class Fn>
void for_each_piece(const SourceShard& s, Fn&& fn) {
  std::ifstream in(s.path, std::ios::binary);
  TTT_CHECK(in.good(), "cannot open '" << s.path << "'");
  std::vector<unsigned char> raw(size_t(kImportPieceTokens * s.width));
  std::vector<uint32_t> ids(static_cast<size_t>(kImportPieceTokens), 0);
  for (uint64_t first = 0; first < s.n_tokens; first += kImportPieceTokens) {
    const uint64_t n = std::min<uint64_t>(kImportPieceTokens, s.n_tokens - first);
    TTT_CHECK(read_at(in, s.data_offset + first * s.width, raw.data(), n * s.width),
              "'" << s.path << "': truncated while reading (byte offset " << s.data_offset + first * s.width
                  << "); did the file change during the import?");
    for (uint64_t k = 0; k < n; ++k) ids[size_t(k)] = uint32_t(le(raw.data() + k * s.width, int(s.width)));
    fn(ids.data(), size_t(n), first);
  }
}

}  // namespace

const char* shard_format_name(ShardFormat f) {
  switch (f) {
    case ShardFormat::llmc: return "llmc";
    case ShardFormat::nanogpt: return "nanogpt";
    case ShardFormat::npy: return "npy";
  }
  return "?";
}

ShardFormat parse_shard_format(const std::string& name) {
  if (name == "llmc") return ShardFormat::llmc;
  if (name == "nanogpt") return ShardFormat::nanogpt;
  if (name == "npy") return ShardFormat::npy;
  TTT_FAIL("--format " << name << " is not a token-shard format (llmc, nanogpt, npy)");
}

bool looks_like_token_shards(const std::string& path) {
  std::error_code ec;
  auto is_shard = [](const fs::path& p) { return has_extension(p, ".bin") || has_extension(p, ".npy"); };
  if (fs::is_regular_file(path, ec)) return is_shard(path);
  if (!fs::is_directory(path, ec)) return false;
  bool any = false;
  for (const auto& e : fs::directory_iterator(path, ec)) {
    if (!e.is_regular_file(ec)) continue;
    if (!is_shard(e.path())) return false;
    any = true;
  }
  return any;
}

SourceShard inspect_shard(const std::string& path, const ShardFormat* forced) {
  const std::string where = "'" + path + "'";
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  TTT_CHECK(in.good(), "cannot open " << where);
  const uint64_t size = uint64_t(in.tellg());
  SourceShard s;
  s.path = path;
  s.name = fs::path(path).filename().string();
  s.validation = s.name.find("val") != std::string::npos;
  unsigned char head[12] = {};
  const bool have_head = read_at(in, 0, head, sizeof head);
  if (forced) {
    s.format = *forced;
  } else if (has_extension(path, ".npy")) {
    s.format = ShardFormat::npy;
  } else {
    TTT_CHECK(!(have_head && std::memcmp(head, kTokenMagic, 6) == 0),
              where << " is already a TTTTOK token file (ttt's own format); give its directory to `ttt train --data`");
    TTT_CHECK(has_extension(path, ".bin"), where << ": cannot tell the shard format from the name (expected .bin or .npy); "
                                                 << "give --format llmc|nanogpt|npy");
    s.format = have_head && le(head, 4) == kLlmcMagic ? ShardFormat::llmc : ShardFormat::nanogpt;
  }
  switch (s.format) {
    case ShardFormat::llmc: {
      unsigned char h[kLlmcHeaderBytes];
      TTT_CHECK(read_at(in, 0, h, kLlmcHeaderBytes), where << ": truncated llm.c header (" << size << " bytes; the header is "
                                                         << kLlmcHeaderBytes << " bytes)");
      const uint64_t magic = le(h, 4), version = le(h + 4, 4), count = le(h + 8, 4);
      TTT_CHECK(magic == kLlmcMagic, where << ": llm.c header magic at byte offset 0 is " << magic << ", expected "
                                           << kLlmcMagic << " (not an llm.c token shard)");
      TTT_CHECK(version == kLlmcVersion, where << ": llm.c header version at byte offset 4 is " << version
                                               << "; this build reads version " << kLlmcVersion << " (uint16 tokens)");
      s.width = 2;
      s.data_offset = kLlmcHeaderBytes;
      const uint64_t in_file = tokens_in(where, size, s.data_offset, s.width);
      TTT_CHECK(count == in_file, where << ": the llm.c header's token count at byte offset 8 is " << count << " but the file holds "
                                        << in_file << " tokens after the " << kLlmcHeaderBytes << "-byte header ("
                                        << (in_file < count ? "truncated" : "oversized") << ")");
      s.n_tokens = count;
      break;
    }
    case ShardFormat::nanogpt:
      s.width = 2;
      s.data_offset = 0;
      s.n_tokens = tokens_in(where, size, 0, 2);
      break;
    case ShardFormat::npy: {
      static const unsigned char magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
      TTT_CHECK(have_head && std::memcmp(head, magic, 6) == 0,
                where << ": not a .npy file (the first 6 bytes at byte offset 0 are not \\x93NUMPY)");
      const unsigned major = head[6];
      TTT_CHECK(major >= 1 && major <= 3, where << ": .npy format version " << major << "." << unsigned(head[7])
                                               << " at byte offset 6 is not 1.0, 2.0 or 3.0");
      const uint64_t len_bytes = major == 1 ? 2 : 4, text_offset = 8 + len_bytes;
      const uint64_t header_len = le(head + 8, int(len_bytes));
      TTT_CHECK(header_len <= 1u << 20 && text_offset + header_len <= size,
                where << ": .npy header length " << header_len << " at byte offset 8 runs past the end of the " << size
                      << "-byte file");
      std::string text(size_t(header_len), '\0');
      read_at(in, text_offset, reinterpret_cast<unsigned char*>(text.data()), header_len);
      const NpyHeader h = parse_npy_dict(text, where, text_offset);
      if (h.descr == "<u2") s.width = 2;
      else if (h.descr == "<u4") s.width = 4;
      else if (h.descr == "|u1" || h.descr == "<u1") s.width = 1;
      else
        TTT_FAIL(where << ": .npy dtype '" << h.descr << "' (header at byte offset " << text_offset
                       << ") is not a token type: expected '<u2' (uint16), '<u4' (uint32) or '|u1', little-endian");
      TTT_CHECK(h.shape.size() == 1, where << ": .npy shape has " << h.shape.size() << " dimensions (header at byte offset "
                                           << text_offset << "); token shards are one-dimensional (N,)");
      s.data_offset = text_offset + header_len;
      const uint64_t in_file = tokens_in(where, size, s.data_offset, s.width);
      TTT_CHECK(h.shape[0] == in_file, where << ": the .npy shape says " << h.shape[0] << " tokens but the file holds " << in_file
                                             << " after the header (data at byte offset " << s.data_offset << "; "
                                             << (in_file < h.shape[0] ? "truncated" : "oversized") << ")");
      s.n_tokens = in_file;
      break;
    }
  }
  return s;
}

ImportResult import_token_shards(const ImportOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  // The shards' tokenizer, when given: its end-of-text id and vocabulary are the defaults, its byte table is recorded.
  std::unique_ptr<Tokenizer> tok;
  if (!opt.tokenizer.empty()) tok = load_tokenizer(opt.tokenizer, opt.eot_token);
  const int64_t eot_token = tok ? int64_t(tok->eot_id()) : opt.eot_token;
  TTT_CHECK(eot_token >= 0, "ttt prepare: importing token shards needs --eot-token ID, the document separator id of "
                            "their tokenizer (50256 for GPT-2 shards such as llm.c's and nanoGPT's), or --tokenizer");
  TTT_CHECK(!tok || opt.vocab == 0 || uint64_t(opt.vocab) == tok->vocab_size(),
            "ttt prepare: --vocab " << opt.vocab << " differs from the vocabulary " << tok->vocab_size() << " of --tokenizer '"
                                    << opt.tokenizer << "'");
  TTT_CHECK(opt.vocab >= 0 && opt.vocab <= int64_t(kMaxTokenVocab),
            "ttt prepare: --vocab must be in [1, " << kMaxTokenVocab << "] (0: inferred), got " << opt.vocab);
  TTT_CHECK(opt.vocab == 0 || eot_token < opt.vocab,
            "ttt prepare: --eot-token " << eot_token << " is outside the vocabulary [0, " << opt.vocab << ") of --vocab");
  TTT_CHECK(opt.val_fraction > 0 && opt.val_fraction < 1, "ttt prepare: --val-fraction must be in (0, 1), got " << opt.val_fraction);
  std::error_code ec;
  TTT_CHECK(fs::exists(opt.input, ec), "ttt prepare: input '" << opt.input << "' does not exist");

  // The source shards, sorted by name, every header checked before anything is written.
  std::vector<std::string> paths;
  if (fs::is_directory(opt.input, ec)) {
    for (const auto& e : fs::directory_iterator(opt.input, ec))
      if (e.is_regular_file(ec) && (has_extension(e.path(), ".bin") || has_extension(e.path(), ".npy")))
        paths.push_back(e.path().string());
    std::sort(paths.begin(), paths.end());
    TTT_CHECK(!paths.empty(), "ttt prepare: directory '" << opt.input << "' holds no .bin or .npy token shards");
  } else {
    paths.push_back(opt.input);
  }
  std::vector<SourceShard> shards;
  ImportResult r;
  for (const std::string& p : paths) {
    shards.push_back(inspect_shard(p, opt.format_given ? &opt.format : nullptr));
    TTT_CHECK(shards.front().format == shards.back().format,
              "ttt prepare: '" << p << "' is a " << shard_format_name(shards.back().format) << " shard but '" << paths.front()
                               << "' is " << shard_format_name(shards.front().format) << "; give --format to read them all alike");
    r.source_bytes += fs::file_size(p);
  }
  r.source_files = shards.size();
  r.format = shard_format_name(shards.front().format);
  const bool named_val = std::any_of(shards.begin(), shards.end(), [](const SourceShard& s) { return s.validation; });
  // One source shard named "val" with nothing else: it cannot be both splits.
  if (named_val && shards.size() == 1) shards[0].validation = false;
  uint64_t train_total = 0;
  for (const SourceShard& s : shards) train_total += s.validation ? 0 : s.n_tokens;
  TTT_CHECK(train_total >= 2 || (named_val && train_total >= 1),
            "ttt prepare: the training shards hold " << train_total << " tokens; nothing to train on (shards whose name "
                                                     << "contains \"val\" are the validation split)");
  r.val_from_tail = !named_val || shards.size() == 1;
  // Without validation shards, tokens [cut, train_total) of the training stream are the validation split.
  const uint64_t cut =
      r.val_from_tail ? std::clamp<uint64_t>(uint64_t(double(train_total) * (1.0 - opt.val_fraction)), 1, train_total - 1)
                      : train_total;

  const uint64_t total_bytes = [&] {
    uint64_t b = 0;
    for (const SourceShard& s : shards) b += s.n_tokens * s.width;
    return b;
  }();
  uint64_t vocab = tok ? tok->vocab_size() : uint64_t(opt.vocab);
  if (vocab == 0) {
    uint64_t largest = uint64_t(eot_token), done = 0;
    ProgressLine scan(opt.progress, "prepare: finding the vocabulary (largest id)", total_bytes, opt.progress_terminal);
    for (const SourceShard& s : shards) {
      for_each_piece(s, [&](const uint32_t* ids, size_t n, uint64_t) {
        for (size_t k = 0; k < n; ++k) largest = std::max<uint64_t>(largest, ids[k]);
        done += n * s.width;
        scan.update(done);
      });
    }
    scan.finish();
    TTT_CHECK(largest < kMaxTokenVocab, "ttt prepare: the largest token id " << largest << " does not fit the vocabulary limit "
                                                                             << kMaxTokenVocab);
    vocab = largest + 1;
    r.vocab_inferred = true;
  }
  r.vocab = uint32_t(vocab);
  r.separator = int32_t(eot_token);
  if (tok) r.tokenizer_kind = tok->kind();

  r.out_dir = opt.out_dir.empty() ? default_out_dir(opt.input) : opt.out_dir;
  TTT_CHECK(!fs::is_directory(opt.input, ec) || !fs::equivalent(opt.input, r.out_dir, ec),
            "ttt prepare: the output directory '" << r.out_dir << "' is the input directory; give --out another one");
  fs::create_directories(r.out_dir, ec);
  TTT_CHECK(!ec && fs::is_directory(r.out_dir), "ttt prepare: cannot create output directory '" << r.out_dir << "'");
  TTT_CHECK(::access(r.out_dir.c_str(), W_OK) == 0, "ttt prepare: output directory '" << r.out_dir << "' is not writable");

  // Unigram counts of the train tokens, when the vocabulary is small enough to count (8 bytes per id).
  constexpr uint64_t kMaxCountedVocab = uint64_t(1) << 24;
  std::vector<uint64_t> counts(vocab <= kMaxCountedVocab ? size_t(vocab) : 0, 0);
  const std::vector<uint32_t> token_bytes = tok ? tok->token_byte_lengths() : std::vector<uint32_t>{};
  auto add_text_bytes = [&](const uint32_t* ids, size_t n, uint64_t& text_bytes) {
    for (size_t k = 0; k < n && !token_bytes.empty(); ++k) text_bytes += token_bytes[ids[k]];
  };
  uint64_t train_seen = 0, done = 0;
  ProgressLine progress(opt.progress, "prepare: importing " + std::to_string(shards.size()) + " " + r.format + " shard(s)",
                        total_bytes, opt.progress_terminal);
  for (const SourceShard& s : shards) {
    std::unique_ptr<TokenFileWriter> train_out, val_out;
    auto writer = [&](bool validation) -> TokenFileWriter& {
      std::unique_ptr<TokenFileWriter>& w = validation ? val_out : train_out;
      if (!w) {
        std::vector<std::string>& names = validation ? r.val_shards : r.train_shards;
        names.push_back(shard_name(validation ? "val" : "train", names.size()));
        w = std::make_unique<TokenFileWriter>((fs::path(r.out_dir) / names.back()).string(), uint32_t(vocab),
                                              int32_t(eot_token));
      }
      return *w;
    };
    for_each_piece(s, [&](const uint32_t* ids, size_t n, uint64_t first) {
      for (size_t k = 0; k < n; ++k)
        TTT_CHECK(ids[k] < vocab, "'" << s.path << "': token " << ids[k] << " at token index " << first + k << " (byte offset "
                                      << s.data_offset + (first + k) * s.width << ") is outside the vocabulary [0, " << vocab
                                      << ")" << (r.vocab_inferred ? "" : " of --vocab"));
      size_t n_train = 0;
      if (!s.validation) n_train = size_t(std::min<uint64_t>(n, cut > train_seen ? cut - train_seen : 0));
      if (n_train > 0) {
        writer(false).append(ids, n_train);
        add_text_bytes(ids, n_train, r.train_text_bytes);
        if (!counts.empty())
          for (size_t k = 0; k < n_train; ++k) ++counts[ids[k]];
      }
      if (n_train < n) {
        writer(true).append(ids + n_train, n - n_train);
        add_text_bytes(ids + n_train, n - n_train, r.val_text_bytes);
      }
      if (!s.validation) train_seen += n;
      done += n * s.width;
      progress.update(done);
    });
    for (auto* w : {&train_out, &val_out})
      if (*w) {
        const bool validation = w == &val_out;
        (validation ? r.val_tokens : r.train_tokens) += (*w)->tokens();
        (validation ? r.val_documents : r.train_documents) += (*w)->documents();
        (*w)->finish();
      }
  }
  progress.finish();
  if (!counts.empty()) r.unigram_entropy_bits = entropy_from_counts(counts, r.train_tokens);
  TTT_CHECK(!r.val_shards.empty(), "ttt prepare: no validation tokens (the shards named \"val\" are empty)");

  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.meta_path = (fs::path(r.out_dir) / "meta.json").string();
  nlohmann::json meta = {
      {"format", "TTTTOK"},
      {"format_version", kTokenFormatVersion},
      {"tokenizer", tok ? install_tokenizer(*tok, opt.tokenizer, r.out_dir).to_json() : nlohmann::json(nullptr)},
      {"source_format", r.format},
      {"input", opt.input},
      {"source_files", r.source_files},
      {"vocab_size", r.vocab},
      {"vocab_inferred", r.vocab_inferred},
      {"separator_token", r.separator},
      {"shards", {{"train", r.train_shards}, {"val", r.val_shards}}},
      {"split", r.val_from_tail ? "tail_of_stream" : "named_shards"},
      {"val_fraction", opt.val_fraction},
      {"train_tokens", r.train_tokens},
      {"val_tokens", r.val_tokens},
      {"train_documents", r.train_documents},
      {"val_documents", r.val_documents},
      {"seconds", r.seconds},
  };
  if (r.unigram_entropy_bits >= 0) meta["unigram_entropy_bits"] = r.unigram_entropy_bits;
  if (tok) {
    meta["token_bytes"] = token_bytes;
    meta["train_text_bytes"] = r.train_text_bytes;
    meta["val_text_bytes"] = r.val_text_bytes;
  }
  write_file_atomic(r.meta_path, meta.dump(2) + "\n");
  return r;
}

std::string import_summary(const ImportResult& r) {
  std::ostringstream os;
  os << "source:     " << r.source_files << " " << r.format << " shard(s), " << format_byte_size(r.source_bytes) << "\n";
  os << "vocabulary: " << r.vocab << (r.vocab_inferred ? " (inferred: largest id + 1)" : "") << ", separator (EOT) id "
     << r.separator << "\n";
  os << "tokens:     " << r.train_tokens << " train in " << r.train_shards.size() << " shard(s), " << r.val_tokens
     << " validation in " << r.val_shards.size() << (r.val_from_tail ? " (the end of the stream)" : " (the shards named val)")
     << "\n";
  os << "documents:  " << r.train_documents << " train, " << r.val_documents << " validation (separators)\n";
  if (r.unigram_entropy_bits >= 0)
    os << "entropy:    " << r.unigram_entropy_bits << " bits/token (unigram, train tokens)\n";
  if (r.tokenizer_kind.empty())
    os << "bytes:      no token byte table (imported ids without --tokenizer): bits per byte will not be reported\n";
  else
    os << "bytes:      " << r.train_text_bytes << " train, " << r.val_text_bytes << " validation (text bytes of the "
       << r.tokenizer_kind << " tokenizer's table)\n";
  os << "wrote:      " << r.out_dir << " (meta.json lists the shards)\n";
  os << "time:       " << r.seconds << " s\n";
  return os.str();
}

}  // namespace ttt::data
