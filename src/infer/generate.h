// Sampling on top of any backend::Streamer (the CPU's StreamingModel of stream.h, or a device's: see
// backend::make_streamer), with a recurrent state of constant size.
#pragma once
#include <functional>
#include <vector>

#include "backend/streamer.h"
#include "model/model.h"

namespace ttt::infer {

struct SampleOptions {
  double temperature = 0.8;  // 0: greedy
  int64_t top_k = 0;         // 0: off
  double top_p = 1.0;        // 1: off
  uint64_t seed = 0;
  // > 1 discourages repeats: the logit of every token already in the context (prompt and generated) is divided by
  // it when positive and multiplied by it when negative (CTRL, Keskar et al. 2019); 1: off.
  double repetition_penalty = 1.0;
  int32_t separator = 0;           // the end-of-text id of the tokenizer (data/tokenizer.h)
  bool stop_at_separator = false;  // end the generation when the separator is sampled (it is not returned)
};

// Pre-fills the prompt (an empty one: the document separator, opt.separator) through `model`, then samples up to
// max_new_tokens tokens one at a time, feeding each back (fewer when stop_at_separator and the separator comes);
// on_token (may be empty) sees each new token as soon as it is sampled. Returns the new tokens.
std::vector<int32_t> generate(backend::Streamer& model, const std::vector<int32_t>& prompt, int64_t max_new_tokens,
                              const SampleOptions& opt, const std::function<void(int32_t)>& on_token = {});

// The same on the CPU's StreamingModel over `params`.
std::vector<int32_t> generate(const model::ModelConfig& cfg, const model::Params<float>& params,
                              const std::vector<int32_t>& prompt, int64_t max_new_tokens, const SampleOptions& opt,
                              const std::function<void(int32_t)>& on_token = {});

}  // namespace ttt::infer
