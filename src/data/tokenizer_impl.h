// Internal: the factories of the tokenizer kinds (data/tokenizer.h is the interface).
#pragma once
#include <memory>
#include <string>

#include "data/tokenizer.h"

namespace ttt::data::detail {

// A Hugging Face tokenizer.json already parsed (`j`), read from `path` (tokenizer_bpe.cpp).
std::unique_ptr<Tokenizer> make_hf_bpe_tokenizer(const nlohmann::json& j, const std::string& path, int64_t eot_override);

// A SentencePiece model file (tokenizer_sentencepiece.cpp); throws naming the file when it is not one, or when
// the build has no SentencePiece.
std::unique_ptr<Tokenizer> make_sentencepiece_tokenizer(const std::string& path, int64_t eot_override);
bool sentencepiece_available();

}  // namespace ttt::data::detail
