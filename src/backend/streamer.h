// The streaming half of the execution interface (backend/engine.h has the training half): a model fed token by
// token with a recurrent state of constant size. infer::StreamingModel (CPU) and cuda::GpuStreamer implement it;
// backend::make_streamer (registry.h) picks one by device name, and sampling (infer/generate.h) runs on top of
// any of them.
//
// This header needs no CUDA headers and nothing beyond autograd/mat.h, so that every backend can include it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "autograd/mat.h"

namespace ttt::backend {

class Streamer {
 public:
  virtual ~Streamer() = default;
  // Feeds tokens in order (a prompt: the pre-fill; then each sampled token); returns their logits [n, V].
  virtual ag::Mat<float> feed(const std::vector<int32_t>& tokens) = 0;
  virtual int64_t position() const = 0;  // tokens fed so far
  // Bytes of the recurrent state (ring buffers, fast weights, the unfinished chunk): constant, whatever the
  // length generated.
  virtual size_t state_bytes() const = 0;
  // Scratch beside the state (a device's work buffers), also allocated once; 0 where there is none.
  virtual size_t workspace_bytes() const { return 0; }
};

}  // namespace ttt::backend
