// libFuzzer target: the byte-level BPE encoder (data/tokenizer_bpe.cpp) on arbitrary bytes, with both
// pre-tokenizers (GPT-2, Llama-3) and with special tokens parsed or not. Properties: it terminates, every id is in
// the vocabulary, and decoding gives back the input byte for byte (valid UTF-8 or not).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <unistd.h>

#include "../tiny_tokenizer.h"
#include "core/file_io.h"
#include "data/tokenizer.h"
#include "fuzz_common.h"

using namespace ttt;

namespace {

std::unique_ptr<data::Tokenizer> make(bool llama3) {
  const std::string path = "/tmp/ttt_fuzz_bpe_" + std::to_string(::getpid()) + (llama3 ? "_l3" : "_g2") + ".json";
  write_file_atomic(path, test::tiny_bpe_json(llama3));
  auto tok = data::load_tokenizer(path);
  std::remove(path.c_str());
  return tok;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::unique_ptr<data::Tokenizer> gpt2 = make(false), llama3 = make(true);
  const std::string text(reinterpret_cast<const char*>(data), size);
  for (const data::Tokenizer* tok : {gpt2.get(), llama3.get()})
    for (bool special : {false, true}) {
      const std::vector<int32_t> ids = tok->encode(text, special);
      for (int32_t id : ids) fuzz::require(id >= 0 && uint32_t(id) < tok->vocab_size(), "ids are in the vocabulary");
      fuzz::require(tok->decode(ids) == text, "decode(encode(text)) == text");
    }
  return 0;
}
