// The layout step after cuDNN's attention forward (attention_cudnn.h, cudnn_attention_outputs): cuDNN writes o in
// bf16 (packed rows of heads*hd) and its softmax statistics as [S, heads, N]; our contract is fp32 o with the
// caller's leading dimension and lse as [S*N, heads]. One grid-stride kernel does both (memory-bound: 2 bytes
// read and 4 written per element of o).
#include "backend/cuda/attention_cudnn.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "backend/cuda/check.cuh"
#include "backend/cuda/kernel_util.cuh"
#include "core/error.h"

namespace ttt::cuda {

namespace {

// Each thread widens 8 consecutive bf16 of o16 (one 16-byte load: heads*hd % 8 == 0 and the buffer is
// 16-byte aligned), then the threads move lse.
__global__ void k_cudnn_attention_outputs(const uint4* o16, int64_t octets, int64_t D, float* o, int64_t ldo,
                                          const float* stats, int64_t N, int64_t heads, int64_t rows, float* lse) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < octets; t += stride) {
    const uint4 packed = o16[t];
    const int64_t e = t * 8, r = e / D, c = e % D;  // 8 | D: the octet lies in one row
    const __nv_bfloat162* pairs = reinterpret_cast<const __nv_bfloat162*>(&packed);
    float* dst = o + r * ldo + c;
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      const float2 f = __bfloat1622float2(pairs[p]);
      dst[2 * p] = f.x;
      dst[2 * p + 1] = f.y;
    }
  }
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < rows * heads; t += stride) {
    const int64_t r = t / heads, h = t % heads, seq = r / N, i = r % N;
    lse[t] = stats[(seq * heads + h) * N + i];
  }
}

}  // namespace

void cudnn_attention_outputs(const AttentionShape& s, const bf16* o16, const float* stats, float* o, int64_t ldo,
                             float* lse, void* stream) {
  const int64_t D = s.heads * s.hd, rows = s.S * s.N, octets = rows * D / 8;
  TTT_CHECK(D % 8 == 0, "cudnn_attention_outputs: heads*hd must be a multiple of 8");
  if (rows == 0) return;
  const int64_t blocks = std::min<int64_t>((std::max(octets, rows * s.heads) + kThreads - 1) / kThreads, 65536);
  k_cudnn_attention_outputs<<<unsigned(blocks), kThreads, 0, as_stream(stream)>>>(
      reinterpret_cast<const uint4*>(o16), octets, D, o, ldo, stats, s.N, s.heads, rows, lse);
  TTT_LAUNCH_CHECK("k_cudnn_attention_outputs");
}

}  // namespace ttt::cuda
