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
// The Hopper backward's fused mode (7): one turn counter (uint32) per (sequence, head, 64-query tile), the order in
// which the key tiles add their dq contributions (cuda/attention_wgmma_bwd.cu).
inline size_t swa_backward_dq_turns_bytes(int64_t S, int64_t N, int64_t heads) {
  return size_t(std::max<int64_t>(0, S) * ((std::max<int64_t>(0, N) + 63) / 64) * std::max<int64_t>(0, heads)) *
         sizeof(uint32_t);
}
// The bf16 kernels on bf16 operands: delta, then bf16(dO) [S*N, heads*hd] on a 16-byte boundary, then the dq turns
// (right behind bf16(dO), whose bytes are a multiple of 16 for the hd % 8 == 0 that bf16 operands need).
inline size_t swa_backward_bf16_workspace_bytes(int64_t S, int64_t N, int64_t heads, int64_t hd) {
  const size_t delta = (swa_backward_workspace_bytes(S, N, heads) + 15) / 16 * 16;
  return delta + size_t(S * N * heads * hd) * 2 + swa_backward_dq_turns_bytes(S, N, heads);
}

}  // namespace ttt::backend
