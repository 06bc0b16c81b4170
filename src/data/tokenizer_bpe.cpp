// Hugging Face byte-level BPE (tokenizer.json): our own encoder and decoder (see data/tokenizer.h for what is
// supported). Encoding: split on added tokens (when asked), pre-tokenize each section with the GPT-2 or Llama-3
// pattern (hand-written matchers below, Unicode classes from ICU), map each piece's bytes to their initial ids and
// apply the merges lowest rank first (leftmost on ties), as the reference does; pieces seen before come from a
// cache.
#include <unicode/uchar.h>

#include <algorithm>
#include <array>
#include <span>
#include <unordered_map>

#include "core/error.h"
#include "data/bpe_tables.h"
#include "data/tokenizer_impl.h"

namespace ttt::data::detail {

namespace {

// The two pre-tokenizer patterns we implement, spelled as tokenizer.json spells them.
constexpr const char* kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
constexpr const char* kLlama3Pattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+";

enum class Pattern { none, gpt2, llama3 };

// Character classes of the patterns: letter (\p{L}), number (\p{N}), white space (\s), other.
enum CharClass : uint8_t { kOther = 0, kLetter = 1, kNumber = 2, kSpace = 3 };

CharClass classify_codepoint(uint32_t cp) {
  if (u_isUWhiteSpace(UChar32(cp))) return kSpace;
  switch (u_charType(UChar32(cp))) {
    case U_UPPERCASE_LETTER:
    case U_LOWERCASE_LETTER:
    case U_TITLECASE_LETTER:
    case U_MODIFIER_LETTER:
    case U_OTHER_LETTER:
      return kLetter;
    case U_DECIMAL_DIGIT_NUMBER:
    case U_LETTER_NUMBER:
    case U_OTHER_NUMBER:
      return kNumber;
    default:
      return kOther;
  }
}

const std::array<CharClass, 128>& ascii_classes() {
  static const std::array<CharClass, 128> table = [] {
    std::array<CharClass, 128> t{};
    for (uint32_t c = 0; c < 128; ++c) t[c] = classify_codepoint(c);
    return t;
  }();
  return table;
}

// One decoded character of the text: its byte offset, byte length, class, and the code point (for the few
// characters the patterns name: ' \r \n and the contraction letters).
struct Char {
  uint32_t offset;
  uint8_t len;
  CharClass cls;
  uint32_t cp;
};

// Decodes UTF-8 into `out` (grown as needed, never shrunk: the buffer is reused across calls) and returns the
// characters; an invalid byte becomes a one-byte character of class "other" (the reference refuses non-UTF-8
// text; we keep every byte so that encoding never loses one).
std::span<const Char> decode_chars(std::string_view s, std::vector<Char>& out) {
  const auto& ascii = ascii_classes();
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  if (out.size() < n) out.resize(n);
  Char* o = out.data();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = p[i];
    if (c < 0x80) {
      *o++ = {uint32_t(i), 1, ascii[c], c};
      ++i;
      continue;
    }
    size_t len = (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
    uint32_t cp = len == 2 ? c & 0x1f : len == 3 ? c & 0x0f : c & 0x07;
    bool ok = len > 0 && i + len <= n;
    for (size_t k = 1; ok && k < len; ++k) {
      ok = (p[i + k] & 0xc0) == 0x80;
      cp = (cp << 6) | (p[i + k] & 0x3f);
    }
    if (ok && (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
               (len == 2 && cp < 0x80)))
      ok = false;
    if (!ok) {
      *o++ = {uint32_t(i), 1, kOther, 0xfffd};
      ++i;
      continue;
    }
    *o++ = {uint32_t(i), uint8_t(len), classify_codepoint(cp), cp};
    i += len;
  }
  return {out.data(), size_t(o - out.data())};
}

bool is_cr_lf(const Char& c) { return c.cp == '\r' || c.cp == '\n'; }

// Length (in characters) of the contraction at chars[i] ('s 't 're 've 'm 'll 'd), or 0.
size_t contraction(std::span<const Char> ch, size_t i, bool ignore_case) {
  const size_t n = ch.size();
  if (ch[i].cp != '\'' || i + 1 >= n) return 0;
  auto low = [&](size_t k) -> uint32_t {
    uint32_t c = ch[k].cp;
    return ignore_case && c >= 'A' && c <= 'Z' ? c + 32 : c;
  };
  const uint32_t a = low(i + 1);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (i + 2 < n) {
    const uint32_t b = low(i + 2);
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  }
  return 0;
}

size_t run_of(std::span<const Char> ch, size_t i, CharClass cls) {
  size_t j = i;
  while (j < ch.size() && ch[j].cls == cls) ++j;
  return j;
}

// \s+(?!\S) then \s+ : the whitespace run, less its last character when a non-space follows and the run is longer
// than one.
size_t whitespace_piece(std::span<const Char> ch, size_t i) {
  const size_t j = run_of(ch, i, kSpace);
  if (j == ch.size() || j - i == 1) return j;
  return j - 1;
}

// End (character index) of the piece that starts at chars[i] under the GPT-2 pattern.
size_t gpt2_piece(std::span<const Char> ch, size_t i) {
  const size_t n = ch.size();
  if (size_t c = contraction(ch, i, false)) return i + c;
  const size_t s = ch[i].cp == ' ' && i + 1 < n && ch[i + 1].cls != kSpace ? i + 1 : i;
  const CharClass cls = ch[s].cls;
  if (cls != kSpace) return run_of(ch, s, cls);  // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+'
  return whitespace_piece(ch, i);
}

// End of the piece that starts at chars[i] under the Llama-3 pattern.
size_t llama3_piece(std::span<const Char> ch, size_t i) {
  const size_t n = ch.size();
  if (size_t c = contraction(ch, i, true)) return i + c;
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (ch[i].cls == kLetter) return run_of(ch, i, kLetter);
  if (ch[i].cls != kNumber && !is_cr_lf(ch[i]) && i + 1 < n && ch[i + 1].cls == kLetter) return run_of(ch, i + 1, kLetter);
  // \p{N}{1,3}
  if (ch[i].cls == kNumber) return std::min(run_of(ch, i, kNumber), i + 3);
  // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
  const size_t s = ch[i].cp == ' ' && i + 1 < n && ch[i + 1].cls == kOther ? i + 1 : i;
  if (ch[s].cls == kOther) {
    size_t j = run_of(ch, s, kOther);
    while (j < n && is_cr_lf(ch[j])) ++j;
    return j;
  }
  // \s*[\r\n]+ : up to the last \r or \n of the whitespace run
  const size_t j = run_of(ch, i, kSpace);
  for (size_t k = j; k > i; --k)
    if (is_cr_lf(ch[k - 1])) return k;
  return whitespace_piece(ch, i);
}

// GPT-2's map of bytes to printable characters (the alphabet of byte-level vocabularies): the printable
// Latin-1 bytes map to themselves, the others to 256, 257, ... in byte order.
std::array<uint32_t, 256> byte_to_codepoint() {
  std::array<uint32_t, 256> m{};
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    m[b] = printable ? b : next++;
  }
  return m;
}

struct SvHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

class HfBpeTokenizer final : public Tokenizer {
 public:
  HfBpeTokenizer(const nlohmann::json& j, const std::string& path, int64_t eot_override) : path_(path) {
    const std::string where = "tokenizer file '" + path + "'";
    try {
      load(j, where);
    } catch (const nlohmann::json::exception& e) {
      TTT_FAIL(where << ": unexpected JSON content: " << e.what());
    }
    if (eot_override >= 0) {
      TTT_CHECK(uint64_t(eot_override) < vocab_, where << ": --eot-token " << eot_override
                                                       << " is outside the vocabulary [0, " << vocab_ << ")");
      eot_ = int32_t(eot_override);
    } else {
      for (const char* name : {"<|endoftext|>", "<|end_of_text|>", "</s>", "<|eot_id|>"})
        for (const auto& a : added_)
          if (eot_ < 0 && a.special && a.content == name) eot_ = a.id;
      TTT_CHECK(eot_ >= 0, where << ": no end-of-text token (none of <|endoftext|>, <|end_of_text|>, </s>, <|eot_id|> "
                                 << "is a special added token); give --eot-token ID");
    }
  }

  std::string kind() const override { return "hf-bpe"; }
  uint32_t vocab_size() const override { return vocab_; }
  int32_t eot_id() const override { return eot_; }
  std::string token_bytes(int32_t id) const override {
    TTT_CHECK(id >= 0 && uint64_t(id) < vocab_,
              "token id " << id << " is outside the vocabulary [0, " << vocab_ << ") of '" << path_ << "'");
    return id_bytes_[size_t(id)];
  }
  bool is_special(int32_t id) const override { return id == eot_ || (id >= 0 && size_t(id) < special_.size() && special_[size_t(id)]); }
  std::vector<std::pair<int32_t, std::string>> special_tokens() const override {
    std::vector<std::pair<int32_t, std::string>> out;
    for (const auto& a : added_)
      if (a.special) out.emplace_back(a.id, a.content);
    return out;
  }

  std::vector<int32_t> encode(std::string_view text, bool parse_special) const override {
    std::vector<int32_t> out;
    out.reserve(text.size() / 3 + 1);
    std::vector<Char>& chars = scratch_chars_;
    size_t start = 0;
    if (parse_special && !added_.empty()) {
      for (size_t i = 0; i < text.size();) {
        const AddedToken* best = nullptr;
        if (added_first_byte_[static_cast<unsigned char>(text[i])])
          for (const auto& a : added_)
            if ((!best || a.content.size() > best->content.size()) && text.compare(i, a.content.size(), a.content) == 0)
              best = &a;
        if (!best) {
          ++i;
          continue;
        }
        encode_section(text.substr(start, i - start), chars, out);
        out.push_back(best->id);
        i += best->content.size();
        start = i;
      }
    }
    encode_section(text.substr(start), chars, out);
    return out;
  }

 private:
  struct AddedToken {
    int32_t id;
    std::string content;
    bool special;
  };

  void load(const nlohmann::json& j, const std::string& where) {
    TTT_CHECK(!j.contains("normalizer") || j["normalizer"].is_null(),
              where << ": normalizer " << j["normalizer"].value("type", std::string("?"))
                    << " is not supported (byte-level BPE tokenizers without a normalizer are)");
    parse_pre_tokenizer(j.contains("pre_tokenizer") ? j["pre_tokenizer"] : nlohmann::json(), where);
    if (j.contains("decoder") && !j["decoder"].is_null()) {
      const std::string d = j["decoder"].value("type", std::string());
      TTT_CHECK(d == "ByteLevel", where << ": decoder " << d << " is not supported (ByteLevel is)");
    }
    const nlohmann::json& m = j.at("model");
    TTT_CHECK(!m.value("byte_fallback", false), where << ": BPE byte_fallback is not supported (byte-level BPE is)");
    for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
      TTT_CHECK(!m.contains(k) || m[k].is_null() || m[k].get<std::string>().empty(),
                where << ": BPE " << k << " is not supported");
    TTT_CHECK(!m.contains("dropout") || m["dropout"].is_null(), where << ": BPE dropout is not supported");
    ignore_merges_ = m.value("ignore_merges", false);

    // Vocabulary: strings in the byte-level alphabet -> raw bytes.
    std::unordered_map<uint32_t, unsigned char> cp_to_byte;
    const auto b2c = byte_to_codepoint();
    for (uint32_t b = 0; b < 256; ++b) cp_to_byte[b2c[b]] = (unsigned char)b;
    std::vector<Char> chars;
    const nlohmann::json& vocab = m.at("vocab");
    TTT_CHECK(vocab.is_object(), where << ": model.vocab must be an object");
    int64_t max_id = -1;
    for (const auto& [piece, idj] : vocab.items()) max_id = std::max<int64_t>(max_id, idj.get<int64_t>());
    const nlohmann::json added = j.contains("added_tokens") && j["added_tokens"].is_array() ? j["added_tokens"]
                                                                                          : nlohmann::json::array();
    for (const auto& a : added) max_id = std::max<int64_t>(max_id, a.at("id").get<int64_t>());
    TTT_CHECK(max_id >= 0 && max_id < int64_t(1) << 31, where << ": empty or oversized vocabulary");
    vocab_ = uint32_t(max_id + 1);
    id_bytes_.assign(vocab_, std::string());
    special_.assign(vocab_, 0);
    byte_id_.fill(-1);
    for (const auto& [piece, idj] : vocab.items()) {
      const int64_t id = idj.get<int64_t>();
      TTT_CHECK(id >= 0, where << ": vocabulary entry '" << piece << "' has a negative id " << id);
      std::string bytes;
      for (const Char& c : decode_chars(piece, chars)) {
        auto it = cp_to_byte.find(c.cp);
        TTT_CHECK(it != cp_to_byte.end(),
                  where << ": vocabulary entry '" << piece << "' (id " << id << ") is not in the byte-level alphabet");
        bytes.push_back(char(it->second));
      }
      if (bytes.size() == 1) byte_id_[static_cast<unsigned char>(bytes[0])] = int32_t(id);
      id_bytes_[size_t(id)] = bytes;
      piece_id_.emplace(std::move(bytes), int32_t(id));
    }
    for (int b = 0; b < 256; ++b)
      TTT_CHECK(byte_id_[size_t(b)] >= 0, where << ": byte " << b << " has no token (a byte-level vocabulary holds all 256)");

    const nlohmann::json& merges = m.at("merges");
    TTT_CHECK(merges.is_array(), where << ": model.merges must be an array");
    merges_.reserve(merges.size());
    int32_t rank = 0;
    for (const auto& mj : merges) {
      std::string a, b;
      if (mj.is_string()) {
        const std::string s = mj.get<std::string>();
        const size_t sp = s.find(' ');
        TTT_CHECK(sp != std::string::npos && sp > 0 && sp + 1 < s.size(),
                  where << ": merge " << rank << " '" << s << "' is not \"left right\"");
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else {
        TTT_CHECK(mj.is_array() && mj.size() == 2, where << ": merge " << rank << " is neither \"a b\" nor [a, b]");
        a = mj[0].get<std::string>();
        b = mj[1].get<std::string>();
      }
      const int32_t ia = vocab_id(vocab, a, where, rank), ib = vocab_id(vocab, b, where, rank);
      const int32_t im = vocab_id(vocab, a + b, where, rank);
      merges_.insert(ia, ib, {rank, im});
      ++rank;
    }

    for (const auto& a : added) {
      AddedToken t{a.at("id").get<int32_t>(), a.at("content").get<std::string>(), a.value("special", false)};
      for (const char* flag : {"lstrip", "rstrip", "single_word"})
        TTT_CHECK(!a.value(flag, false), where << ": added token '" << t.content << "' sets " << flag
                                               << ", which is not supported");
      TTT_CHECK(!t.content.empty(), where << ": added token " << t.id << " is empty");
      id_bytes_[size_t(t.id)] = t.content;
      special_[size_t(t.id)] = t.special;
      added_first_byte_[static_cast<unsigned char>(t.content[0])] = true;
      added_.push_back(std::move(t));
    }
  }

  static int32_t vocab_id(const nlohmann::json& vocab, const std::string& piece, const std::string& where, int32_t rank) {
    auto it = vocab.find(piece);
    TTT_CHECK(it != vocab.end(), where << ": merge " << rank << " names '" << piece << "', which is not in the vocabulary");
    return it->get<int32_t>();
  }

  void parse_pre_tokenizer(const nlohmann::json& p, const std::string& where) {
    TTT_CHECK(p.is_object(), where << ": no pre_tokenizer (byte-level BPE needs ByteLevel)");
    const std::string type = p.value("type", std::string());
    if (type == "ByteLevel") {
      parse_byte_level(p, where);
      return;
    }
    TTT_CHECK(type == "Sequence", where << ": pre_tokenizer " << type << " is not supported (ByteLevel, or Split then "
                                        << "ByteLevel)");
    const auto& seq = p.at("pretokenizers");
    TTT_CHECK(seq.is_array() && seq.size() == 2 && seq[0].value("type", std::string()) == "Split" &&
                  seq[1].value("type", std::string()) == "ByteLevel",
              where << ": pre_tokenizer Sequence must be [Split, ByteLevel]");
    const auto& split = seq[0];
    const std::string pattern = split.at("pattern").value("Regex", std::string());
    TTT_CHECK(split.value("behavior", std::string()) == "Isolated" && !split.value("invert", false),
              where << ": Split must have behavior Isolated and invert false");
    if (pattern == kGpt2Pattern) pattern_ = Pattern::gpt2;
    else if (pattern == kLlama3Pattern) pattern_ = Pattern::llama3;
    else TTT_FAIL(where << ": Split pattern '" << pattern << "' is not supported (the GPT-2 and Llama-3 patterns are)");
    parse_byte_level(seq[1], where);
    TTT_CHECK(pattern_ != Pattern::none, where << ": Split then ByteLevel with its own regex is not supported");
  }

  void parse_byte_level(const nlohmann::json& p, const std::string& where) {
    add_prefix_space_ = p.value("add_prefix_space", false);
    if (p.value("use_regex", true)) {
      TTT_CHECK(pattern_ == Pattern::none, where << ": two pre-tokenizer patterns (Split and ByteLevel use_regex)");
      pattern_ = Pattern::gpt2;
    }
  }

  void encode_section(std::string_view text, std::vector<Char>& chars, std::vector<int32_t>& out) const {
    if (text.empty()) return;
    std::string prefixed;
    if (add_prefix_space_ && text[0] != ' ') {
      prefixed = " " + std::string(text);
      text = prefixed;
    }
    if (pattern_ == Pattern::none) {
      encode_piece(text, out);
      return;
    }
    const std::span<const Char> ch = decode_chars(text, chars);
    const size_t n = ch.size();
    for (size_t i = 0; i < n;) {
      const size_t e = pattern_ == Pattern::gpt2 ? gpt2_piece(ch, i) : llama3_piece(ch, i);
      const size_t b0 = ch[i].offset, b1 = e < n ? ch[e].offset : text.size();
      encode_piece(text.substr(b0, b1 - b0), out);
      i = e;
    }
  }

  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
    const uint64_t head = pack_head(piece), h = hash_bytes(piece, head);
    size_t count = 0;
    if (const int32_t* cached = cache_.find(piece, head, h, count)) {
      if (count == 1)
        out.push_back(*cached);
      else
        out.insert(out.end(), cached, cached + count);
      return;
    }
    std::vector<int32_t>& ids = scratch_ids_;
    ids.clear();
    auto direct = ignore_merges_ ? piece_id_.find(piece) : piece_id_.end();
    if (direct != piece_id_.end()) {
      ids.push_back(direct->second);
    } else {
      for (char c : piece) ids.push_back(byte_id_[static_cast<unsigned char>(c)]);
      merge(ids);
    }
    out.insert(out.end(), ids.begin(), ids.end());
    cache_.insert(piece, head, h, ids.data(), ids.size());
  }

  // Applies the merges: the pair of lowest rank first, the leftmost of equal ones. The rank of each adjacent
  // pair is looked up once and again only for the two pairs a merge changes.
  void merge(std::vector<int32_t>& ids) const {
    constexpr int32_t kNone = INT32_MAX;
    auto lookup = [&](size_t i) {
      const PairRankTable::Merge* m = merges_.find(ids[i], ids[i + 1]);
      return m ? m->rank : kNone;
    };
    std::vector<int32_t>& rank = scratch_ranks_;
    rank.resize(ids.size() > 1 ? ids.size() - 1 : 0);
    for (size_t i = 0; i < rank.size(); ++i) rank[i] = lookup(i);
    while (!rank.empty()) {
      const size_t pos = size_t(std::min_element(rank.begin(), rank.end()) - rank.begin());
      if (rank[pos] == kNone) return;
      ids[pos] = merges_.find(ids[pos], ids[pos + 1])->id;
      ids.erase(ids.begin() + std::ptrdiff_t(pos) + 1);
      rank.erase(rank.begin() + std::ptrdiff_t(pos));
      if (pos < rank.size()) rank[pos] = lookup(pos);
      if (pos > 0) rank[pos - 1] = lookup(pos - 1);
    }
  }

  static constexpr size_t kCacheEntries = 1 << 18;
  static constexpr size_t kCachedPieceBytes = 256;

  std::string path_;
  uint32_t vocab_ = 0;
  int32_t eot_ = -1;
  Pattern pattern_ = Pattern::none;
  bool add_prefix_space_ = false;
  bool ignore_merges_ = false;
  std::vector<std::string> id_bytes_;
  std::vector<char> special_;
  std::array<int32_t, 256> byte_id_{};
  std::unordered_map<std::string, int32_t, SvHash, std::equal_to<>> piece_id_;
  PairRankTable merges_;
  std::vector<AddedToken> added_;
  std::array<bool, 256> added_first_byte_{};
  // Pieces already encoded, and scratch of the merges (an encoder object is used by one thread at a time).
  mutable PieceCache cache_{kCacheEntries, kCachedPieceBytes};
  mutable std::vector<int32_t> scratch_ids_, scratch_ranks_;
  mutable std::vector<Char> scratch_chars_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_hf_bpe_tokenizer(const nlohmann::json& j, const std::string& path, int64_t eot_override) {
  return std::make_unique<HfBpeTokenizer>(j, path, eot_override);
}

}  // namespace ttt::data::detail
