// Streaming generation on the GPU with a recurrent state of constant size: the GPU twin of
// infer::StreamingModel (src/infer/stream.h), both implementations of backend::Streamer, for every arch. Per layer
// the device holds a ring buffer of the last `window` attention keys (after RoPE) and values, the fast weights and
// momentum of every memory head (LaCT: inside a streaming LactRunner, lact::Fused::stream_*; Titans / TNT: per
// memory, driven by a TitansRunner, titans::Memory::stream_*, with the Q-K sums of Q-K projected memories), and
// the unfinished chunk's inputs (queries, keys, values, rates and gates); tokens go through one at a time (fp32),
// and each chunk updates the fast weights once it is complete with the training forward's chunk update, exactly
// the causal chunked program of training (resets at shard starts). tests/test_cuda_model.cpp holds its logits to
// the CPU StreamingModel's.
//
// This header needs no CUDA headers.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "backend/streamer.h"
#include "model/model.h"

namespace ttt::cuda {

// Whether `cfg` can generate on the GPU; if not, why.
bool gpu_streaming_supports(const model::ModelConfig& cfg, std::string* why = nullptr);

class GpuStreamer final : public backend::Streamer {
 public:
  GpuStreamer(const model::ModelConfig& cfg, const model::Params<float>& params);
  ~GpuStreamer() override;
  GpuStreamer(const GpuStreamer&) = delete;
  GpuStreamer& operator=(const GpuStreamer&) = delete;

  // Feeds tokens in order; returns their logits [n, V].
  ag::Mat<float> feed(const std::vector<int32_t>& tokens) override;
  int64_t position() const override;
  // The recurrent state on the device: ring buffers, the unfinished chunk, fast weights, momentum, weight-norm
  // targets and Q-K sums (what the CPU StreamingModel's state_bytes counts); constant after construction.
  size_t state_bytes() const override;
  // Scratch beside it (the operators' chunk work buffers and cuBLAS workspaces), also allocated once.
  size_t workspace_bytes() const override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ttt::cuda
