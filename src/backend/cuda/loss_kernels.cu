// Cross-entropy kernels (loss_kernels.h): one block per row for the log-sum-exp (two passes over the row), one block
// for the mean, a grid-stride pass (fp32) or a block per row (bf16 in place) for the gradient. Sums accumulate in
// double along fixed trees (warp shuffles, then shared memory), so results are deterministic. Naming and launch
// conventions: kernel_util.cuh.
#include "backend/cuda/loss_kernels.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/error.h"
#include "backend/cuda/check.cuh"
#include "backend/cuda/kernel_util.cuh"

namespace ttt::cuda {

namespace {

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide sum / max (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ double block_sum(double v) {
  __shared__ double sh[32];
  const int w = threadIdx.x / 32, l = threadIdx.x % 32, nw = blockDim.x / 32;
  v = warp_sum(v);
  __syncthreads();
  if (l == 0) sh[w] = v;
  __syncthreads();
  if (w == 0) {
    double u = l < nw ? sh[l] : 0.0;
    u = warp_sum(u);
    if (l == 0) sh[0] = u;
  }
  __syncthreads();
  const double r = sh[0];
  __syncthreads();
  return r;
}
__device__ float block_max(float v) {
  __shared__ float sh[32];
  const int w = threadIdx.x / 32, l = threadIdx.x % 32, nw = blockDim.x / 32;
  v = warp_max(v);
  __syncthreads();
  if (l == 0) sh[w] = v;
  __syncthreads();
  if (w == 0) {
    float u = l < nw ? sh[l] : -INFINITY;
    u = warp_max(u);
    if (l == 0) sh[0] = u;
  }
  __syncthreads();
  const float r = sh[0];
  __syncthreads();
  return r;
}

// Block per row: lse = max + log(sum exp(x - max)) (exp in float, sum in double).
__global__ void k_cross_entropy_fwd_rows(const float* __restrict__ logits, const int32_t* __restrict__ targets,
                                         float* __restrict__ lse, float* __restrict__ row_loss, int64_t V) {
  const int64_t r = blockIdx.x;
  const int32_t t = targets[r];
  const float* x = logits + r * V;
  if (t < 0) {
    if (threadIdx.x == 0) {
      lse[r] = 0.f;
      if (row_loss) row_loss[r] = 0.f;
    }
    return;
  }
  // Each thread's columns j = threadIdx.x + k blockDim.x in order, kRowIlp loaded before any is used (more bytes in
  // flight; the sum's order, hence its bits, is that of the one-at-a-time loop).
  constexpr int kRowIlp = 8;
  const int64_t step = blockDim.x;
  float mx = -INFINITY;
  for (int64_t j0 = threadIdx.x; j0 < V; j0 += kRowIlp * step) {
    float v[kRowIlp];
#pragma unroll
    for (int u = 0; u < kRowIlp; ++u) v[u] = j0 + u * step < V ? x[j0 + u * step] : -INFINITY;
#pragma unroll
    for (int u = 0; u < kRowIlp; ++u) mx = fmaxf(mx, v[u]);
  }
  mx = block_max(mx);
  double s = 0;
  for (int64_t j0 = threadIdx.x; j0 < V; j0 += kRowIlp * step) {
    float v[kRowIlp];
#pragma unroll
    for (int u = 0; u < kRowIlp; ++u) v[u] = j0 + u * step < V ? x[j0 + u * step] : 0.f;
#pragma unroll
    for (int u = 0; u < kRowIlp; ++u)
      if (j0 + u * step < V) s += double(expf(v[u] - mx));
  }
  s = block_sum(s);
  if (threadIdx.x == 0) {
    const double ls = double(mx) + log(s);
    lse[r] = float(ls);
    if (row_loss) row_loss[r] = float(ls - double(x[t]));
  }
}
// One block: mean over the valid rows of lse - x[target], fixed order.
__global__ void k_cross_entropy_fwd_mean(const float* __restrict__ logits, const int32_t* __restrict__ targets,
                                         const float* __restrict__ lse, float* __restrict__ loss,
                                         int32_t* __restrict__ valid, int64_t N, int64_t V) {
  double acc = 0, cnt = 0;
  for (int64_t r = threadIdx.x; r < N; r += blockDim.x) {
    const int32_t t = targets[r];
    if (t < 0) continue;
    acc += double(lse[r]) - double(logits[r * V + t]);
    cnt += 1;
  }
  acc = block_sum(acc);
  cnt = block_sum(cnt);
  if (threadIdx.x == 0) {
    *loss = cnt > 0 ? float(acc / cnt) : 0.f;
    *valid = int32_t(cnt);
  }
}
// The gradient of logit x in column j of a row with target t and log-sum-exp l, c = dloss / valid: written once for
// both backward kernels (the expression the fp32 kernel always had, inlined the same way into each), so the bf16
// gradient is the fp32 one rounded.
__device__ __forceinline__ float cross_entropy_grad(float x, int64_t j, int32_t t, float l, float c, int32_t cnt) {
  float g = 0.f;
  if (t >= 0 && cnt > 0) {
    g = c * expf(x - l);
    if (j == t) g -= c;
  }
  return g;
}
// logits and dlogits may be the same array (each element is read, then written, by one thread): no __restrict__.
__global__ void k_cross_entropy_bwd(const float* logits, const int32_t* __restrict__ targets,
                                    const float* __restrict__ lse, const int32_t* __restrict__ valid,
                                    const float* __restrict__ dloss, float* dlogits, int64_t N, int64_t V) {
  const int32_t cnt = *valid;
  const float c = cnt > 0 ? (dloss ? *dloss : 1.f) / float(cnt) : 0.f;
  GRID_STRIDE(e, N * V) {
    const int64_t r = e / V, j = e % V;
    dlogits[e] = cross_entropy_grad(logits[e], j, targets[r], lse[r], c, cnt);
  }
}
// Block per row, in chunks of blockDim.x * kIlp columns: a chunk is read (fp32), then, after the block's barrier,
// its gradient is written in bf16 over the row's own first bytes (bf16 column j at byte 2j of the row). What a
// chunk writes covers only fp32 columns of it and of the chunks before (byte 2j < 4j'), all read already, so the
// gradient replaces the logits in place: [N, V] bf16 with leading dimension 2V.
__global__ void k_cross_entropy_bwd_bf16(float* logits, const int32_t* __restrict__ targets,
                                         const float* __restrict__ lse, const int32_t* __restrict__ valid,
                                         const float* __restrict__ dloss, int64_t V) {
  const int32_t cnt = *valid;
  const float c = cnt > 0 ? (dloss ? *dloss : 1.f) / float(cnt) : 0.f;
  const int64_t r = blockIdx.x;
  const int32_t t = targets[r];
  const float l = lse[r];
  float* row = logits + r * V;
  __nv_bfloat16* out = reinterpret_cast<__nv_bfloat16*>(row);
  for (int64_t base = threadIdx.x; base - threadIdx.x < V; base += int64_t(kIlp) * blockDim.x) {
    float x[kIlp];
#pragma unroll
    for (int u = 0; u < kIlp; ++u) {
      const int64_t j = base + int64_t(u) * blockDim.x;
      x[u] = j < V ? row[j] : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int u = 0; u < kIlp; ++u) {
      const int64_t j = base + int64_t(u) * blockDim.x;
      if (j < V) out[j] = __float2bfloat16_rn(cross_entropy_grad(x[u], j, t, l, c, cnt));
    }
  }
}

}  // namespace

void cross_entropy_forward(const float* logits, const int32_t* targets, float* lse, float* row_loss, float* loss,
                           int32_t* valid, int64_t N, int64_t V, void* stream) {
  TTT_CHECK(N >= 0 && V > 0, "cross_entropy_forward: logits [" << N << "," << V << "]");
  const cudaStream_t st = as_stream(stream);
  if (N > 0) {
    TTT_CHECK(N < (int64_t(1) << 31), "cross_entropy_forward: " << N << " rows");
    // One block per row, two reads of the row (max, then the sum; the second mostly from L2). A variant that held
    // the row in registers (one read, one 256-thread block per SM) measured slower on the H200: 2.87 against
    // 1.88 ms at the 760m shape (docs/PERF.md "Memory-bound passes of the 760m step").
    k_cross_entropy_fwd_rows<<<unsigned(N), kThreads, 0, st>>>(logits, targets, lse, row_loss, V);
    TTT_LAUNCH_CHECK("cross_entropy_forward rows");
  }
  k_cross_entropy_fwd_mean<<<1, 1024, 0, st>>>(logits, targets, lse, loss, valid, N, V);
  TTT_LAUNCH_CHECK("cross_entropy_forward mean");
}

void cross_entropy_backward(const float* logits, const int32_t* targets, const float* lse, const int32_t* valid,
                            const float* dloss, float* dlogits, int64_t N, int64_t V, void* stream) {
  TTT_CHECK(N >= 0 && V > 0, "cross_entropy_backward: logits [" << N << "," << V << "]");
  if (N == 0) return;
  k_cross_entropy_bwd<<<grid_for(N * V), kThreads, 0, as_stream(stream)>>>(logits, targets, lse, valid, dloss,
                                                                           dlogits, N, V);
  TTT_LAUNCH_CHECK("cross_entropy_backward");
}

}  // namespace ttt::cuda

namespace ttt::cuda {

void cross_entropy_backward_bf16(float* logits, const int32_t* targets, const float* lse, const int32_t* valid,
                                 const float* dloss, int64_t N, int64_t V, void* stream) {
  TTT_CHECK(N >= 0 && V > 0, "cross_entropy_backward_bf16: logits [" << N << "," << V << "]");
  if (N == 0) return;
  TTT_CHECK(N < (int64_t(1) << 31), "cross_entropy_backward_bf16: " << N << " rows");
  k_cross_entropy_bwd_bf16<<<unsigned(N), kThreads, 0, as_stream(stream)>>>(logits, targets, lse, valid, dloss, V);
  TTT_LAUNCH_CHECK("cross_entropy_backward_bf16");
}

}  // namespace ttt::cuda
