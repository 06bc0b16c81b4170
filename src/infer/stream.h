// Streaming inference with a recurrent state of constant size.
//
// Per layer the state is: a ring buffer of the last `window` attention keys/values (after RoPE),
// the fast weights (and momentum) of each memory head, the keys/values/rates/gates of the tokens of
// the current, unfinished chunk (at most `chunk` rows), and the position. Tokens are fed in blocks
// that never cross a chunk boundary: the memory applies with the weights of the chunk start and
// updates once the chunk is complete, which is exactly the causal chunked program of training.
#pragma once
#include <vector>

#include "backend/streamer.h"
#include "model/memory_spec.h"
#include "model/model.h"
#include "ttt/runner.h"

namespace ttt::infer {

// The CPU's backend::Streamer. It reads `params` in place: they must outlive it.
class StreamingModel final : public backend::Streamer {
 public:
  StreamingModel(const model::ModelConfig& cfg, const model::Params<float>& params);

  // Feeds tokens (any number: split internally at every memory's chunk and shard boundaries);
  // returns logits [n, V].
  ag::Mat<float> feed(const std::vector<int32_t>& tokens) override;
  int64_t position() const override { return pos_; }
  // Bytes held by the recurrent state (constant: every buffer is allocated at its final size).
  size_t state_bytes() const override;
  void reset();

 private:
  ag::Mat<float> feed_block(const std::vector<int32_t>& tokens);
  int64_t room() const;  // tokens until the next chunk or shard boundary of any memory
  struct MemoryHeadState {
    engine::MemoryState<float> state;
    std::vector<ag::Mat<float>> w0;  // the initial weights of this head (resets, weight-norm targets)
    ag::Mat<float> kk;               // Q-K projection: sum of k k^T over the shard's finished chunks [d,d]
    double ksq = 0;                  // and the sum of ||k||^2
  };
  // One memory of a layer (LaCT / Titans: one; TNT: global + locals).
  struct MemoryStream {
    model::MemorySpec spec;  // chunk, shard (0: never reset), Q-K projection, engine config, gate columns
    std::vector<MemoryHeadState> heads;
    ag::Mat<float> pend_k, pend_v, pend_rates, pend_mom, pend_decay;  // the unfinished chunk, pend_n rows
    int64_t pend_n = 0;
  };
  struct LayerState {
    ag::Mat<float> ring_k, ring_v;  // [window, D], row = position % window
    std::vector<MemoryStream> memories;
  };
  const model::ModelConfig cfg_;
  const model::Params<float>& p_;
  std::vector<LayerState> layers_;
  int64_t pos_ = 0;
};

}  // namespace ttt::infer
