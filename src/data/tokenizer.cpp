#include "data/tokenizer.h"

#include <cstdio>
#include <filesystem>

#include "core/error.h"
#include "core/file_io.h"
#include "data/tokenizer_impl.h"
#include "data/tokens.h"

namespace fs = std::filesystem;

namespace ttt::data {

namespace {

// Bytes of a UTF-8 sequence that starts with `lead` (0 for a continuation byte or an invalid lead byte).
size_t utf8_sequence_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead & 0xe0) == 0xc0) return 2;
  if ((lead & 0xf0) == 0xe0) return 3;
  if ((lead & 0xf8) == 0xf0) return 4;
  return 0;
}

class ByteTokenizer final : public Tokenizer {
 public:
  std::string kind() const override { return "bytes"; }
  uint32_t vocab_size() const override { return kByteVocab; }
  int32_t eot_id() const override { return kDocSeparator; }
  std::vector<int32_t> encode(std::string_view text, bool) const override { return encode_bytes(text); }
  std::string token_bytes(int32_t id) const override {
    TTT_CHECK(id >= 0 && id < int32_t(kByteVocab), "token id " << id << " is outside the byte vocabulary [0, 256)");
    return std::string(1, char(static_cast<unsigned char>(id)));
  }
  bool is_special(int32_t id) const override { return id == kDocSeparator; }
  std::vector<std::pair<int32_t, std::string>> special_tokens() const override {
    return {{kDocSeparator, std::string(1, '\0')}};
  }
};

std::string hex64(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%016llx", (unsigned long long)v);
  return buf;
}

std::string file_fnv(const std::string& path) {
  const std::string bytes = read_file(path);
  return hex64(fnv1a64(bytes.data(), bytes.size()));
}

}  // namespace

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) {
    TTT_CHECK(ids[i] >= 0 && uint64_t(ids[i]) < vocab_size(),
              "decode: token " << ids[i] << " at position " << i << " is outside the " << kind() << " vocabulary [0, "
                               << vocab_size() << ")");
    if (skip_special && is_special(ids[i])) continue;
    out += token_bytes(ids[i]);
  }
  return out;
}

std::vector<uint32_t> Tokenizer::token_byte_lengths() const {
  std::vector<uint32_t> lengths(vocab_size(), 0);
  for (uint32_t id = 0; id < vocab_size(); ++id)
    if (!is_special(int32_t(id)) && int32_t(id) != eot_id()) lengths[id] = uint32_t(token_bytes(int32_t(id)).size());
  return lengths;
}

std::string Tokenizer::StreamDecoder::push(int32_t id) {
  TTT_CHECK(id >= 0 && uint64_t(id) < tok_.vocab_size(),
            "decode: token " << id << " is outside the " << tok_.kind() << " vocabulary [0, " << tok_.vocab_size() << ")");
  pending_ += tok_.token_bytes(id);
  // Emit everything up to the last character that is complete; a sequence that can never complete (an invalid
  // lead byte, or a lead byte followed by a non-continuation) is emitted as it is.
  size_t cut = pending_.size();
  for (size_t back = 1; back <= 4 && back <= pending_.size(); ++back) {
    const unsigned char c = static_cast<unsigned char>(pending_[pending_.size() - back]);
    if ((c & 0xc0) == 0x80) continue;  // continuation: look further back for the lead byte
    const size_t need = utf8_sequence_length(c);
    if (need > back) cut = pending_.size() - back;  // incomplete: hold it back
    break;
  }
  std::string out = pending_.substr(0, cut);
  pending_.erase(0, cut);
  return out;
}

std::string Tokenizer::StreamDecoder::finish() {
  std::string out;
  out.swap(pending_);
  return out;
}

std::unique_ptr<Tokenizer> make_byte_tokenizer() { return std::make_unique<ByteTokenizer>(); }

bool tokenizer_kind_available(const std::string& kind, std::string* why) {
  if (kind == "bytes" || kind == "hf-bpe") return true;
  if (kind == "sentencepiece") {
    if (detail::sentencepiece_available()) return true;
    if (why) *why = "this build has no SentencePiece (install libsentencepiece-dev, e.g. scripts/setup.sh, and rebuild)";
    return false;
  }
  if (why) *why = "unknown tokenizer kind '" + kind + "' (known: bytes, sentencepiece, hf-bpe)";
  return false;
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path, int64_t eot_override) {
  TTT_CHECK(file_exists(path), "tokenizer file '" << path << "' does not exist");
  const std::string bytes = read_file(path);
  size_t first = bytes.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && bytes[first] == '{') {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(bytes);
    } catch (const nlohmann::json::exception& e) {
      TTT_FAIL("tokenizer file '" << path << "' is not valid JSON: " << e.what());
    }
    TTT_CHECK(j.is_object() && j.contains("model") && j["model"].is_object(),
              "tokenizer file '" << path << "': JSON without a \"model\" object (not a Hugging Face tokenizer.json)");
    const std::string type = j["model"].value("type", std::string());
    TTT_CHECK(type == "BPE", "tokenizer file '" << path << "': model type '" << type
                                                << "' is not supported (supported: BPE, byte-level)");
    return detail::make_hf_bpe_tokenizer(j, path, eot_override);
  }
  TTT_CHECK(detail::sentencepiece_available(),
            "tokenizer file '" << path << "' is not a Hugging Face tokenizer.json; if it is a SentencePiece .model, this "
                               << "build cannot read it: it has no SentencePiece (install libsentencepiece-dev and rebuild)");
  return detail::make_sentencepiece_tokenizer(path, eot_override);
}

nlohmann::json TokenizerRecord::to_json() const {
  nlohmann::json j = {{"kind", kind}, {"vocab", vocab}, {"eot_id", eot_id}};
  if (!file.empty()) {
    j["file"] = file;
    j["fnv1a64"] = fnv1a64;
  }
  return j;
}

TokenizerRecord install_tokenizer(const Tokenizer& tok, const std::string& tokenizer_path, const std::string& dir) {
  TokenizerRecord r;
  r.kind = tok.kind();
  r.vocab = tok.vocab_size();
  r.eot_id = tok.eot_id();
  if (r.kind == "bytes") return r;
  r.file = r.kind == "hf-bpe" ? "tokenizer.json" : "tokenizer.model";
  const std::string bytes = read_file(tokenizer_path);
  r.fnv1a64 = hex64(fnv1a64(bytes.data(), bytes.size()));
  const std::string dest = (fs::path(dir) / r.file).string();
  std::error_code ec;
  if (!fs::equivalent(tokenizer_path, dest, ec)) write_file_atomic(dest, bytes);
  return r;
}

namespace {

nlohmann::json parse_json_file(const std::string& path) {
  try {
    return nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    TTT_FAIL("'" << path << "' is not valid JSON: " << e.what());
  }
}

TokenizerRecord record_from_json(const nlohmann::json& j, const std::string& origin) {
  TokenizerRecord r;
  if (j.is_string()) {
    TTT_CHECK(j.get<std::string>() == "bytes", origin << ": \"tokenizer\" is '" << j.get<std::string>()
                                                      << "'; a string may only be \"bytes\" (others are objects)");
    return r;
  }
  TTT_CHECK(j.is_object(), origin << ": \"tokenizer\" must be an object {kind, file, vocab, eot_id, fnv1a64}");
  try {
    r.kind = j.at("kind").get<std::string>();
    r.vocab = j.at("vocab").get<uint32_t>();
    r.eot_id = j.at("eot_id").get<int32_t>();
    if (r.kind != "bytes") {
      r.file = j.at("file").get<std::string>();
      r.fnv1a64 = j.at("fnv1a64").get<std::string>();
    }
  } catch (const nlohmann::json::exception& e) {
    TTT_FAIL(origin << ": bad \"tokenizer\" record: " << e.what());
  }
  TTT_CHECK(r.file.find('/') == std::string::npos && r.file != "..",
            origin << ": tokenizer file '" << r.file << "' must be a plain file name in the directory");
  return r;
}

}  // namespace

TokenizerRecord tokenizer_record_of_dir(const std::string& dir) {
  const std::string info = (fs::path(dir) / kTokenizerInfoFile).string();
  if (file_exists(info)) return record_from_json(parse_json_file(info), "'" + info + "'");
  const std::string meta = (fs::path(dir) / "meta.json").string();
  if (file_exists(meta)) {
    const nlohmann::json j = parse_json_file(meta);
    if (j.is_object() && j.contains("tokenizer")) return record_from_json(j["tokenizer"], "'" + meta + "'");
  }
  return TokenizerRecord{};
}

std::unique_ptr<Tokenizer> load_tokenizer_of_dir(const std::string& dir) {
  const TokenizerRecord r = tokenizer_record_of_dir(dir);
  if (r.kind == "bytes") return make_byte_tokenizer();
  std::string why;
  TTT_CHECK(tokenizer_kind_available(r.kind, &why), "'" << dir << "' was made with a " << r.kind << " tokenizer: " << why);
  const std::string path = (fs::path(dir) / r.file).string();
  TTT_CHECK(file_exists(path), "the tokenizer file '" << path << "' recorded for '" << dir << "' is missing");
  const std::string actual = file_fnv(path);
  TTT_CHECK(actual == r.fnv1a64, "the tokenizer file '" << path << "' has hash " << actual << " but '" << dir
                                                        << "' recorded " << r.fnv1a64 << " (replaced or corrupt)");
  std::unique_ptr<Tokenizer> tok = load_tokenizer(path, r.eot_id);
  TTT_CHECK(tok->kind() == r.kind && tok->vocab_size() == r.vocab,
            "the tokenizer file '" << path << "' is a " << tok->kind() << " tokenizer of vocabulary " << tok->vocab_size()
                                   << " but '" << dir << "' recorded " << r.kind << " of " << r.vocab);
  return tok;
}

void copy_tokenizer_to_run(const std::string& data_dir, const std::string& run_dir) {
  const TokenizerRecord r = tokenizer_record_of_dir(data_dir);
  if (r.kind == "bytes") return;
  const std::string src = (fs::path(data_dir) / r.file).string();
  TTT_CHECK(file_exists(src), "the tokenizer file '" << src << "' recorded in '" << data_dir << "' is missing");
  const std::string bytes = read_file(src);
  TTT_CHECK(hex64(fnv1a64(bytes.data(), bytes.size())) == r.fnv1a64,
            "the tokenizer file '" << src << "' does not match the hash recorded in '" << data_dir << "'");
  write_file_atomic((fs::path(run_dir) / r.file).string(), bytes);
  write_file_atomic((fs::path(run_dir) / kTokenizerInfoFile).string(), r.to_json().dump(2) + "\n");
}

}  // namespace ttt::data
