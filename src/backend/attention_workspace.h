// Bytes of the sliding-window attention backward's work buffer (cuda/attention.h), as host code with no other
// dependency: the CUDA kernels size their workspace with it and so does the memory estimate
// (backend/gpu_layer_activations.h), which nvcc cannot compile (C++20 headers).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace ttt::backend {

// delta = rowsum(dO * O) per (row, head): S*N*heads floats.
inline size_t swa_backward_workspace_bytes(int64_t S, int64_t N, int64_t heads) {
  return size_t(std::max<int64_t>(0, S) * std::max<int64_t>(0, N) * std::max<int64_t>(0, heads)) * sizeof(float);
}
// The bf16 kernels on bf16 operands: delta, then bf16(dO) [S*N, heads*hd] on a 16-byte boundary.
inline size_t swa_backward_bf16_workspace_bytes(int64_t S, int64_t N, int64_t heads, int64_t hd) {
  const size_t delta = (swa_backward_workspace_bytes(S, N, heads) + 15) / 16 * 16;
  return delta + size_t(S * N * heads * hd) * 2;
}

}  // namespace ttt::backend
