// Streaming generation with a recurrent state of constant size (see stream.h).
#pragma once
#include <functional>
#include <vector>

#include "model/model.h"

namespace ttt::infer {

struct SampleOptions {
  double temperature = 0.8;  // 0: greedy
  int64_t top_k = 0;         // 0: off
  double top_p = 1.0;        // 1: off
  uint64_t seed = 0;
};

// Pre-fills the prompt chunk by chunk, then samples max_new_tokens tokens one at a time;
// on_token (may be empty) sees each new token as soon as it is sampled. Returns the new tokens.
std::vector<int32_t> generate(const model::ModelConfig& cfg, const model::Params<float>& params,
                              const std::vector<int32_t>& prompt, int64_t max_new_tokens, const SampleOptions& opt,
                              const std::function<void(int32_t)>& on_token = {});

// The same loop over any streaming model: feed(tokens) returns their logits [n, vocab] (the CPU StreamingModel
// above, or the GPU's cuda::GpuStreamer).
using FeedFn = std::function<ag::Mat<float>(const std::vector<int32_t>&)>;
std::vector<int32_t> generate_with(const FeedFn& feed, int64_t vocab, const std::vector<int32_t>& prompt,
                                   int64_t max_new_tokens, const SampleOptions& opt,
                                   const std::function<void(int32_t)>& on_token = {});

}  // namespace ttt::infer
