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
};

// Pre-fills the prompt (an empty one: a document separator, token 0) through `model`, then samples
// max_new_tokens tokens one at a time, feeding each back; on_token (may be empty) sees each new token as soon as
// it is sampled. Returns the new tokens.
std::vector<int32_t> generate(backend::Streamer& model, const std::vector<int32_t>& prompt, int64_t max_new_tokens,
                              const SampleOptions& opt, const std::function<void(int32_t)>& on_token = {});

// The same on the CPU's StreamingModel over `params`.
std::vector<int32_t> generate(const model::ModelConfig& cfg, const model::Params<float>& params,
                              const std::vector<int32_t>& prompt, int64_t max_new_tokens, const SampleOptions& opt,
                              const std::function<void(int32_t)>& on_token = {});

}  // namespace ttt::infer
