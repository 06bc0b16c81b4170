// Streaming inference with a recurrent state of constant size.
//
// Per layer the state is: a ring buffer of the last `window` attention keys/values (after RoPE),
// the fast weights (and momentum) of each memory head, the keys/values/rates/gates of the tokens of
// the current, unfinished chunk (at most `chunk` rows), and the position. Tokens are fed in blocks
// that never cross a chunk boundary: the memory applies with the weights of the chunk start and
// updates once the chunk is complete, which is exactly the causal chunked program of training.
#pragma once
#include <vector>

#include "model/model.h"
#include "ttt/runner.h"

namespace ttt::infer {

class StreamingModel {
 public:
  StreamingModel(const model::ModelConfig& cfg, const model::Params<float>& params);

  // Feeds tokens (any number: split internally at chunk boundaries); returns logits [n, V].
  ag::Mat<float> feed(const std::vector<int32_t>& tokens);
  int64_t position() const { return pos_; }
  // Bytes held by the recurrent state (constant once the ring buffers are full).
  size_t state_bytes() const;
  void reset();

 private:
  ag::Mat<float> feed_block(const std::vector<int32_t>& tokens);
  struct MemoryHeadState {
    engine::MemoryState<float> state;
    std::vector<ag::Mat<float>> w0;  // the initial weights of this head (for resets and weight-norm targets)
  };
  struct LayerState {
    ag::Mat<float> ring_k, ring_v;  // [window, D], row = position % window
    std::vector<MemoryHeadState> heads;
    ag::Mat<float> pend_k, pend_v, pend_rates, pend_mom, pend_decay;  // [chunk, ...], rows used: pend_n
    int64_t pend_n = 0;
  };
  const model::ModelConfig cfg_;
  const model::Params<float>& p_;
  engine::MemoryConfig mem_cfg_;
  std::vector<LayerState> layers_;
  int64_t pos_ = 0;
};

}  // namespace ttt::infer
