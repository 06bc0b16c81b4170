// A small byte-level BPE tokenizer.json written by tests (no Python needed).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace ttt::test {

// GPT-2's byte -> character map, as UTF-8 (what byte-level vocabularies are written in).
inline std::string byte_char(int b) {
  uint32_t cp = uint32_t(b);
  const bool printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  if (!printable) {
    uint32_t n = 0;
    for (int k = 0; k < b; ++k)
      if (!((k >= '!' && k <= '~') || (k >= 0xa1 && k <= 0xac) || (k >= 0xae && k <= 0xff))) ++n;
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) s.push_back(char(cp));
  else {
    s.push_back(char(0xc0 | (cp >> 6)));
    s.push_back(char(0x80 | (cp & 0x3f)));
  }
  return s;
}

// A byte-level BPE tokenizer.json: the 256 bytes (ids 0..255), <|endoftext|> = 256, merges "t h" -> 257,
// "th e" -> 258, "Ġ the" -> 259 (Ġ is the space). Pre-tokenizer: GPT-2's ByteLevel, or with `llama3` the Llama-3
// split pattern then ByteLevel without a regex.
inline constexpr const char* kLlama3SplitPattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
inline std::string tiny_bpe_json(bool llama3 = false) {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_char(b)] = b;
  vocab["<|endoftext|>"] = 256;
  vocab["th"] = 257;
  vocab["the"] = 258;
  vocab[byte_char(' ') + "the"] = 259;
  nlohmann::json j = {
      {"version", "1.0"},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       llama3 ? nlohmann::json{{"type", "Sequence"},
                               {"pretokenizers",
                                {{{"type", "Split"},
                                  {"pattern", {{"Regex", kLlama3SplitPattern}}},
                                  {"behavior", "Isolated"},
                                  {"invert", false}},
                                 {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}}
              : nlohmann::json{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"added_tokens",
       {{{"id", 256}, {"content", "<|endoftext|>"}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
         {"normalized", false}, {"special", true}}}},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"vocab", vocab},
        {"merges", {"t h", "th e", byte_char(' ') + " the"}}}}};
  return j.dump();
}

}  // namespace ttt::test
