// Single-query attention over a key/value cache (attention.h, mk::attend_one): GPU generation's attention, one
// token at a time. One block of kAttendThreads per head: the scores live in shared memory, the block's max and
// sum are fixed trees (deterministic), then each thread owns output channels. Naming and launch conventions:
// kernel_util.cuh.
#include "backend/cuda/attention.h"

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "core/error.h"
#include "backend/cuda/check.cuh"
#include "backend/cuda/kernel_util.cuh"

namespace ttt::cuda::mk {

namespace {

constexpr int kAttendThreads = 128;
constexpr int64_t kAttendMaxKeys = 8192;

__global__ void k_attend_one(const float* q, const float* K, const float* V, int n, int hd, int ld, float scale,
                             float* o) {
  extern __shared__ float sc[];  // n scores, then kAttendThreads/32 partials
  float* red = sc + n;
  const int h = blockIdx.x, tid = threadIdx.x, lane = tid % 32, warp = tid / 32, nw = blockDim.x / 32;
  const float* qh = q + h * hd;
  float mx = -INFINITY;
  for (int j = tid; j < n; j += blockDim.x) {
    const float* kj = K + int64_t(j) * ld + h * hd;
    float acc = 0;
    for (int c = 0; c < hd; ++c) acc += qh[c] * kj[c];
    sc[j] = acc * scale;
    mx = fmaxf(mx, sc[j]);
  }
  for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  if (lane == 0) red[warp] = mx;
  __syncthreads();
  mx = red[0];
  for (int w = 1; w < nw; ++w) mx = fmaxf(mx, red[w]);
  __syncthreads();
  double sum = 0;
  for (int j = tid; j < n; j += blockDim.x) {
    sc[j] = expf(sc[j] - mx);
    sum += sc[j];
  }
  sum = warp_sum(sum);
  if (lane == 0) red[warp] = float(sum);
  __syncthreads();
  double total = 0;
  for (int w = 0; w < nw; ++w) total += red[w];
  const float inv = float(1.0 / total);
  for (int c = tid; c < hd; c += blockDim.x) {
    float acc = 0;
    for (int j = 0; j < n; ++j) acc += sc[j] * V[int64_t(j) * ld + h * hd + c];
    o[h * hd + c] = acc * inv;
  }
}

}  // namespace

void attend_one(const float* q, const float* K, const float* V, int64_t n, int64_t heads, int64_t hd, int64_t ld,
                float* o) {
  TTT_CHECK(n >= 1 && n <= kAttendMaxKeys && hd >= 1 && hd <= 128,
            "attend_one: " << n << " keys of width " << hd << " (at most " << kAttendMaxKeys << " keys, width 128)");
  const size_t smem = sizeof(float) * size_t(n + kAttendThreads / 32);
  if (smem > 48 * 1024)
    TTT_CUDA_CHECK(cudaFuncSetAttribute(k_attend_one, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  k_attend_one<<<int(heads), kAttendThreads, smem>>>(q, K, V, int(n), int(hd), int(ld),
                                                     float(1.0 / std::sqrt(double(hd))), o);
  TTT_LAUNCH_CHECK("attend_one");
}

}  // namespace ttt::cuda::mk
