// What the CUDA kernel files (*_kernels.cu, attention_one.cu, the LaCT and Titans operators) share: launch
// geometry, the grid-stride and warp-per-item loops, the warp and block reductions (the per-element math:
// core/scalar_math.h). Included only by .cu files.
//
// Naming convention of every kernel file: a host launcher is named for what it computes (`op`, or `op_forward`
// / `op_backward` for a layer and its adjoint) and checks its arguments, then launches kernels named `k_op`
// (`k_op_fwd` / `k_op_bwd`, plus `_stage` when one call runs several kernels). Launches use kThreads-thread
// blocks and grid_for (grid-stride loops) or warp_grid (one warp per item) unless the file says otherwise;
// every launch is followed by TTT_LAUNCH_CHECK with the launcher's name.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "core/scalar_math.h"  // the per-element math shared with the CPU (silu, sigmoid, activations)

namespace ttt::cuda {

inline constexpr int kThreads = 256;
inline constexpr int kWarpsPerBlock = kThreads / 32;

inline cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Blocks of a grid-stride loop over n elements (at most 2^20 blocks).
inline int grid_for(int64_t n) {
  return int(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(1) << 20)));
}
// Blocks of a warp-per-item loop over `items` (kWarpsPerBlock items per block, at most 2^20 blocks).
inline int warp_grid(int64_t items) {
  return int(std::max<int64_t>(1, std::min<int64_t>((items + kWarpsPerBlock - 1) / kWarpsPerBlock, 1 << 20)));
}

#define GRID_STRIDE(i, n) \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)
// Element-wise loops that give each thread kIlp elements per trip (base, base + stride, ...), loaded into
// registers before any is computed: with one element per thread an H200 has too few bytes in flight and the
// big element-wise passes ran at about half the memory bandwidth (ncu, 2026-11-30). Launch with grid_ilp(n).
inline constexpr int kIlp = 4;
inline int grid_ilp(int64_t n) { return grid_for((n + kIlp - 1) / kIlp); }
#define ILP_STRIDE(base, n)                                                                           \
  for (int64_t base = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, ilp_stride_ = int64_t(gridDim.x) * blockDim.x; \
       base < (n); base += kIlp * ilp_stride_)
#define ILP_INDEX(base, t) ((base) + int64_t(t) * ilp_stride_)
// The element-wise loop of kIlp elements per trip over n elements: loads element i of each of the K inputs into
// v[0..K), for every i of the trip first, then calls f(i, v) for each of them.
template <int K, class F>
__device__ __forceinline__ void ilp_for_each(int64_t n, const float* const (&in)[K], F&& f) {
  ILP_STRIDE(base, n) {
    float v[kIlp][K];
#pragma unroll
    for (int t = 0; t < kIlp; ++t) {
      const int64_t i = ILP_INDEX(base, t);
#pragma unroll
      for (int k = 0; k < K; ++k) v[t][k] = i < n ? in[k][i] : 0.f;
    }
#pragma unroll
    for (int t = 0; t < kIlp; ++t)
      if (ILP_INDEX(base, t) < n) f(ILP_INDEX(base, t), v[t]);
  }
}
// One warp per item: kWarpsPerBlock warps per block.
#define WARP_STRIDE(item, n)                                                                   \
  for (int64_t item = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32; item < (n);      \
       item += int64_t(gridDim.x) * blockDim.x / 32)

// Sum over the 32 lanes of a warp along a fixed xor tree: every lane gets the same bits.
__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// The sum of every thread's v over a kThreads-thread block in a fixed order (each warp's xor tree, then warp 0
// sums the warp sums in warp order), handed to at_thread0(sum) in thread 0. Every thread of the block must call it.
template <class F>
__device__ __forceinline__ void block_sum(double v, F&& at_thread0) {
  __shared__ double warp_sums[kWarpsPerBlock];
  v = warp_sum(v);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < kWarpsPerBlock ? warp_sums[threadIdx.x] : 0.0;
    v = warp_sum(v);
    if (threadIdx.x == 0) at_thread0(v);
  }
}

// Stores a float result: as it is, or rounded to bf16 (nearest even) for the GPU model's bf16 activations.
__device__ __forceinline__ void store_as(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_as(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }
// Four results stored with one instruction (p 16-byte aligned for fp32, 8-byte for bf16): 16 bytes of fp32, or 8
// of bf16, each rounded to nearest even (store_as's rounding).
__device__ __forceinline__ void store4(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }
__device__ __forceinline__ void store4(__nv_bfloat16* p, float4 v) {
  const __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
  uint2 u;
  u.x = *reinterpret_cast<const uint32_t*>(&lo);
  u.y = *reinterpret_cast<const uint32_t*>(&hi);
  *reinterpret_cast<uint2*>(p) = u;
}

}  // namespace ttt::cuda
