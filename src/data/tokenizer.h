// Tokenizers: text <-> token ids, one interface for every kind (docs/TOKENIZERS.md describes the files).
//
//   bytes          vocabulary 256, token = byte value; the separator (end of text) is 0, the NUL byte.
//   sentencepiece  a SentencePiece `.model` file (protobuf), through Debian's libsentencepiece; available when the
//                  build found the library (tokenizer_kind_available says why not otherwise). End of text: the
//                  model's </s> id unless --eot-token names another.
//   hf-bpe         a Hugging Face `tokenizer.json` with a byte-level BPE model (GPT-2, Llama-3 and similar):
//                  our own encoder and decoder. Pre-tokenizers: ByteLevel (with its GPT-2 regex, or without a
//                  regex) alone or after Split with the GPT-2 or the Llama-3 pattern (matched by hand-written
//                  code, not a regex engine); decoder ByteLevel; merges as "a b" strings or [a, b] pairs;
//                  added tokens matched exactly (lstrip/rstrip/single_word/normalized are refused); BPE
//                  options ignore_merges and byte_fallback=false. Normalizers other than none are refused.
//                  End of text: the first special added token among <|endoftext|>, <|end_of_text|>, </s>,
//                  <|eot_id|> unless --eot-token names another.
//
// The kind of a file is detected from its contents: JSON with a "model" of type "BPE" is hf-bpe; a file that
// SentencePiece loads is sentencepiece; anything else is refused naming the file.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace ttt::data {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::string kind() const = 0;  // "bytes", "sentencepiece", "hf-bpe"
  virtual uint32_t vocab_size() const = 0;
  // The end-of-text id: the document separator of token files made with this tokenizer.
  virtual int32_t eot_id() const = 0;
  // Text -> ids. With parse_special, the text of a special/added token becomes its id (as the reference
  // libraries do); without it (what `ttt prepare` uses: documents may contain such strings), it is plain text.
  // No BOS/EOS is added.
  virtual std::vector<int32_t> encode(std::string_view text, bool parse_special = false) const = 0;
  // The bytes of one id (special tokens: their text). Throws for an id outside the vocabulary.
  virtual std::string token_bytes(int32_t id) const = 0;
  // Whether `id` is a special (control/added) token: it stands for no text of the corpus.
  virtual bool is_special(int32_t id) const = 0;
  // The ids of the special tokens and their text.
  virtual std::vector<std::pair<int32_t, std::string>> special_tokens() const = 0;

  // Ids -> bytes. Ids outside the vocabulary throw naming the position; with skip_special, special tokens
  // (the separator too) produce nothing.
  // SentencePiece decodes through its library (which drops the leading space its encoder adds).
  virtual std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const;
  // Bytes of text each id stands for (index = id): its byte length, 0 for special tokens and the separator.
  // Bits per byte of a token stream = its summed loss / ln 2 / the sum of these over its tokens.
  std::vector<uint32_t> token_byte_lengths() const;
  // A decoder for a stream of ids (generation): returns the bytes that are complete UTF-8 characters so far and
  // keeps an incomplete tail for the next call (no half characters are printed).
  class StreamDecoder {
   public:
    explicit StreamDecoder(const Tokenizer& tok) : tok_(tok) {}
    std::string push(int32_t id);
    std::string finish();  // whatever is held back (an incomplete character at the end)

   private:
    const Tokenizer& tok_;
    std::string pending_;
  };
};

// The byte tokenizer (vocabulary 256, separator 0).
std::unique_ptr<Tokenizer> make_byte_tokenizer();

// Loads a tokenizer file (kind detected; see above). eot_override >= 0 replaces the default end-of-text id
// (it must be < the vocabulary). Errors name the file.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path, int64_t eot_override = -1);

// Whether this build can load `kind` ("bytes", "sentencepiece", "hf-bpe"); `why` says why not.
bool tokenizer_kind_available(const std::string& kind, std::string* why = nullptr);

// The record of the tokenizer of a data or run directory: in DIR/meta.json's "tokenizer" (a data directory
// made by `ttt prepare`) or DIR/tokenizer_info.json (a run directory, written by `ttt train`):
//   {"kind": "hf-bpe", "file": "tokenizer.json", "vocab": 1000, "eot_id": 0, "fnv1a64": "0x..."}
// `file` is relative to DIR; fnv1a64 is the FNV-1a 64 hash of the file (data/tokens.h). The byte tokenizer:
// {"kind": "bytes", "vocab": 256, "eot_id": 0} (no file). Older data directories (meta.json "tokenizer":
// "bytes", or no meta.json) are the byte tokenizer.
struct TokenizerRecord {
  std::string kind = "bytes";
  std::string file;  // relative to the directory; empty for bytes
  uint32_t vocab = 256;
  int32_t eot_id = 0;
  std::string fnv1a64;  // "0x" + 16 hex digits; empty for bytes
  nlohmann::json to_json() const;
};
inline constexpr const char* kTokenizerInfoFile = "tokenizer_info.json";

// Copies `tokenizer_path` into `dir` (as tokenizer.json or tokenizer.model) and returns its record.
TokenizerRecord install_tokenizer(const Tokenizer& tok, const std::string& tokenizer_path, const std::string& dir);
// The record of directory `dir` (see above).
TokenizerRecord tokenizer_record_of_dir(const std::string& dir);
// Loads the tokenizer a record names (checking the file's hash).
std::unique_ptr<Tokenizer> load_tokenizer_of_dir(const std::string& dir);
// Copies the tokenizer of data directory `data_dir` into run directory `run_dir` (its file and
// tokenizer_info.json); nothing for the byte tokenizer.
void copy_tokenizer_to_run(const std::string& data_dir, const std::string& run_dir);

}  // namespace ttt::data
