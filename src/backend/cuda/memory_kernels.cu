// Memory-branch kernels (memory_kernels.h): per-(row, head) reductions use one warp each and accumulate in double
// along a fixed shuffle tree (deterministic); element-wise work is grid-stride. Naming and launch conventions:
// kernel_util.cuh.
#include "backend/cuda/memory_kernels.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "backend/cuda/check.cuh"
#include "backend/cuda/kernel_util.cuh"
#include "backend/cuda/rope_math.cuh"

namespace ttt::cuda::mk {

namespace {

// A lane's elements j = lane, lane + 32, ... of one (row, head) item stay in registers between the passes when
// d <= 32 * kPerLane (loaded and activated once); wider heads recompute them in the second pass. Both walks add
// in the same order, so the results do not depend on which one runs.
constexpr int kPerLane = 16;

// The forward of one (row, head) item by one warp, from its channels xr (scale sc, offset of): y = a / (||a|| +
// eps) into yr[0, d); returns ||a||. One copy of the math for the plain and the fused kernels (same bits).
template <bool kCached>
__device__ __forceinline__ float qk_prep_fwd_item(const float* __restrict__ xr, const float* __restrict__ sc,
                                                  const float* __restrict__ of, float* __restrict__ yr, int64_t d,
                                                  float eps, int lane) {
  float a_reg[kCached ? kPerLane : 1];
  double ss = 0;
#pragma unroll
  for (int t = 0; t < (kCached ? kPerLane : 1); ++t) a_reg[t] = 0.f;
  if constexpr (kCached) {
#pragma unroll
    for (int t = 0; t < kPerLane; ++t) {
      const int j = lane + 32 * t;
      if (j < d) a_reg[t] = math::silu(xr[j] * sc[j] + of[j]);
    }
#pragma unroll
    for (int t = 0; t < kPerLane; ++t)
      if (lane + 32 * t < d) ss += double(a_reg[t]) * double(a_reg[t]);
  } else {
    for (int j = lane; j < d; j += 32) {
      const float a = math::silu(xr[j] * sc[j] + of[j]);
      ss += double(a) * double(a);
    }
  }
  ss = warp_sum(ss);
  const float nrm = float(sqrt(ss));
  const float inv = 1.0f / (nrm + eps);
  if constexpr (kCached) {
#pragma unroll
    for (int t = 0; t < kPerLane; ++t) {
      const int j = lane + 32 * t;
      if (j < d) yr[j] = a_reg[t] * inv;
    }
  } else {
    for (int j = lane; j < d; j += 32) yr[j] = math::silu(xr[j] * sc[j] + of[j]) * inv;
  }
  return nrm;
}
template <bool kCached>
__global__ void k_qk_prep_fwd(const float* __restrict__ x, int64_t ldx, const float* __restrict__ scale,
                              const float* __restrict__ offset, float* __restrict__ y, float* __restrict__ norm,
                              int64_t rows, int64_t H, int64_t d, float eps) {
  const int lane = threadIdx.x % 32;
  WARP_STRIDE(item, rows * H) {
    const int64_t r = item / H, h = item % H, D = H * d;
    const float nrm = qk_prep_fwd_item<kCached>(x + r * ldx + h * d, scale + h * d, offset + h * d, y + r * D + h * d,
                                                d, eps, lane);
    if (lane == 0) norm[r * H + h] = nrm;
  }
}

// Where channel c of row (s, n) of a multi-head [S*N, H*d] array lives in the per sequence-head layout [S*H, N, d].
__device__ __forceinline__ int64_t batch_index(int64_t s, int64_t n, int c, int64_t N, int64_t H, int d) {
  const int h = c / d;
  return ((s * H + h) * N + n) * d + (c - h * d);
}

// Resident blocks per SM the fused kernels are compiled for, so more rows' loads are in flight: the forward in 40
// registers, no spills (48 warps per SM, against 32 at its natural 58); the backward, whose batched loads need more
// registers, in 62 (5 blocks spill; ptxas -v, CUDA 13).
constexpr int kFusedMinBlocksPerSm = 6;
constexpr int kFusedBwdMinBlocksPerSm = 4;

// The fused kernels' shared memory: the RoPE frequency table inv_freq[i] (freq_entries doubles: the pair count
// w/2, or 0 where the pow is left inline), then `rows_per_group` rows of D channels. The frequencies are filled
// once per block; the grid is sized to stay resident (fused_launch), so each block walks many row groups and the
// double pow, which cost more than the rest of a rotation, is no longer paid per row.
__device__ __forceinline__ float* fused_stage(double* smem, int freq_entries) {
  return reinterpret_cast<float*>(smem + freq_entries);
}
__device__ __forceinline__ void fill_inv_freq(double* inv_freq, int freq_entries, int width, double theta) {
  for (int i = threadIdx.x; i < freq_entries; i += blockDim.x) inv_freq[i] = rope_inv_freq(i, width, theta);
  __syncthreads();
}
// The same rotation as rope_rotation(pos, i, width, theta, sign), from the table where there is one.
__device__ __forceinline__ RopeRotation fused_rotation(const double* inv_freq, int freq_entries, int64_t pos, int i,
                                                       int width, double theta, float sign) {
  return i < freq_entries ? rope_rotation_at(pos, inv_freq[i], sign) : rope_rotation(pos, i, width, theta, sign);
}

// The forward fused with what follows it in the GPU model, over groups of rows_per_group rows per block: each warp
// runs (row, head) items into shared memory (the heads of a row in parallel, not in turn), then the whole block
// does RoPE (width > 0: heads of `width` channels over the row; one angle per (row, pair index), as k_rope) and
// the store in the memory operators' layout [S*H, N, d]. One pass over the rows instead of three (q/k preparation,
// RoPE in place, heads_to_batch); every output element sees the arithmetic of those passes.
template <bool kCached>
__global__ void __launch_bounds__(kThreads, kFusedMinBlocksPerSm)
    k_qk_prep_fwd_fused(const float* __restrict__ x, int64_t ldx, const float* __restrict__ scale,
                        const float* __restrict__ offset, const int64_t* __restrict__ pos, double theta, int width,
                        float* __restrict__ yT, float* __restrict__ norm, int64_t S, int64_t N, int64_t H, int d,
                        float eps, int rows_per_group, int freq_entries) {
  extern __shared__ double fused_smem[];
  float* stage = fused_stage(fused_smem, freq_entries);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int D = int(H) * d, half = width / 2, heads = int(H);
  fill_inv_freq(fused_smem, freq_entries, width, theta);
  const int64_t rows = S * N;
  for (int64_t r0 = int64_t(blockIdx.x) * rows_per_group; r0 < rows; r0 += int64_t(gridDim.x) * rows_per_group) {
    const int here = rows - r0 < rows_per_group ? int(rows - r0) : rows_per_group;
    for (int item = warp; item < here * heads; item += warps) {
      const int row = item / heads, h = item % heads;
      const int64_t r = r0 + row;
      const float nrm = qk_prep_fwd_item<kCached>(x + r * ldx + h * d, scale + h * d, offset + h * d,
                                                  stage + row * D + h * d, d, eps, lane);
      if (lane == 0) norm[r * H + h] = nrm;
    }
    __syncthreads();
    if (width == 0) {
      for (int e = threadIdx.x; e < here * D; e += blockDim.x) {
        const int64_t r = r0 + e / D;
        yT[batch_index(r / N, r % N, e % D, N, H, d)] = stage[e];
      }
    } else {
      for (int e = threadIdx.x; e < here * half; e += blockDim.x) {
        const int row = e / half, i = e % half;
        const int64_t r = r0 + row, s = r / N, n = r % N;
        const RopeRotation rot = fused_rotation(fused_smem, freq_entries, pos[r], i, width, theta, 1.f);
        const float* ys = stage + row * D;
        for (int c0 = 0; c0 < D; c0 += width) {
          const float2 out = rope_rotate(ys[c0 + i], ys[c0 + half + i], rot);
          yT[batch_index(s, n, c0 + i, N, H, d)] = out.x;
          yT[batch_index(s, n, c0 + half + i, N, H, d)] = out.y;
        }
      }
    }
    __syncthreads();  // the group's stage is read before the next group overwrites it
  }
}

// The backward of one (row, head) item by one warp, from dy (dyr) and the forward's norm nrm: dz, dzx written,
// dx accumulated. One copy of the math for the plain and the fused kernels (same bits). One pass over a lane's
// channels per reduction: a version keeping x and dy in registers for the whole item (like the forward) measured
// 45% slower on the H200 (0.93 vs 0.64 ms per call at 32768 x 4 x 384, ncu, 2026-11-30), so the backward
// recomputes silu instead. Each pass loads kBwdBatch of a lane's channels before using any (the loop as written
// had one load of x in flight per lane); the sum still adds j = lane, lane + 32, ... in turn, and each channel's
// arithmetic is unchanged, so the bits are those of the channel-at-a-time loop. x, dy must not alias dx, dz, dzx.
// dxr16 (may be null): the updated dx rounded to bf16 there too.
constexpr int kBwdBatch = 4;
__device__ __forceinline__ void qk_prep_bwd_item(const float* xr, const float* sc, const float* of, float nrm,
                                                 const float* dyr, float* dxr, __nv_bfloat16* dxr16, float* dzr,
                                                 float* dzxr, int64_t d, float eps, int lane) {
  const float inv = 1.0f / (nrm + eps);
  const int n = int(d);  // a head's channels: d <= 12288
  double dot = 0;
  // The streams that miss the cache (x, dy; then dx) are batched; scale and offset are a few KiB shared by all rows.
  for (int j0 = lane; j0 < n; j0 += 32 * kBwdBatch) {
    float xv[kBwdBatch], dyv[kBwdBatch];
#pragma unroll
    for (int t = 0; t < kBwdBatch; ++t)
      if (j0 + 32 * t < n) xv[t] = xr[j0 + 32 * t], dyv[t] = dyr[j0 + 32 * t];
#pragma unroll
    for (int t = 0; t < kBwdBatch; ++t) {
      const int j = j0 + 32 * t;
      if (j < n) {
        const float a = math::silu(xv[t] * sc[j] + of[j]);
        dot += double(dyv[t]) * double(a);
      }
    }
  }
  dot = warp_sum(dot);
  // da = (dy - a <dy, a> / (n (n + eps))) / (n + eps); the second term is 0 at a = 0.
  const float cf = nrm > 0.0f ? float(dot) * inv / nrm : 0.0f;
  for (int j0 = lane; j0 < n; j0 += 32 * kBwdBatch) {
    float xv[kBwdBatch], dxv[kBwdBatch];
#pragma unroll
    for (int t = 0; t < kBwdBatch; ++t)
      if (j0 + 32 * t < n) xv[t] = xr[j0 + 32 * t], dxv[t] = dxr[j0 + 32 * t];
#pragma unroll
    for (int t = 0; t < kBwdBatch; ++t) {
      const int j = j0 + 32 * t;
      if (j < n) {
        const float z = xv[t] * sc[j] + of[j];
        const float a = math::silu(z);
        const float da = (dyr[j] - a * cf) * inv;
        const float g = da * math::dsilu(z);
        dzr[j] = g;
        dzxr[j] = g * xv[t];
        const float dxj = dxv[t] + g * sc[j];
        dxr[j] = dxj;
        if (dxr16) dxr16[j] = __float2bfloat16_rn(dxj);
      }
    }
  }
}
__global__ void k_qk_prep_bwd(const float* x, int64_t ldx, const float* scale, const float* offset, const float* norm,
                              const float* dy, float* dx, int64_t lddx, float* dz, float* dzx, int64_t rows, int64_t H,
                              int64_t d, float eps) {
  const int lane = threadIdx.x % 32;
  WARP_STRIDE(item, rows * H) {
    const int64_t r = item / H, h = item % H, D = H * d, c = h * d;
    qk_prep_bwd_item(x + r * ldx + c, scale + c, offset + c, norm[r * H + h], dy + r * D + c, dx + r * lddx + c,
                     nullptr, dz + r * D + c, dzx + r * D + c, d, eps, lane);
  }
}
// The adjoint of k_qk_prep_fwd_fused, over the same row groups: the whole block gathers d(output) from the layout
// [S*H, N, d] into shared memory and undoes RoPE there (the inverse rotation, as rope_backward), then each warp
// runs (row, head) items.
__global__ void __launch_bounds__(kThreads, kFusedBwdMinBlocksPerSm)
    k_qk_prep_bwd_fused(const float* x, int64_t ldx, const float* scale, const float* offset, const float* norm,
                        const int64_t* __restrict__ pos, double theta, int width, const float* __restrict__ dyT,
                        float* dx, int64_t lddx, __nv_bfloat16* __restrict__ dx16, float* dz, float* dzx, int64_t S,
                        int64_t N, int64_t H, int d, float eps, int rows_per_group, int freq_entries) {
  extern __shared__ double fused_smem[];
  float* stage = fused_stage(fused_smem, freq_entries);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int D = int(H) * d, half = width / 2, heads = int(H);
  fill_inv_freq(fused_smem, freq_entries, width, theta);
  const int64_t rows = S * N;
  for (int64_t r0 = int64_t(blockIdx.x) * rows_per_group; r0 < rows; r0 += int64_t(gridDim.x) * rows_per_group) {
    const int here = rows - r0 < rows_per_group ? int(rows - r0) : rows_per_group;
    if (width == 0) {
      for (int e = threadIdx.x; e < here * D; e += blockDim.x) {
        const int64_t r = r0 + e / D;
        stage[e] = dyT[batch_index(r / N, r % N, e % D, N, H, d)];
      }
    } else {
      for (int e = threadIdx.x; e < here * half; e += blockDim.x) {
        const int row = e / half, i = e % half;
        const int64_t r = r0 + row, s = r / N, n = r % N;
        const RopeRotation rot = fused_rotation(fused_smem, freq_entries, pos[r], i, width, theta, -1.f);
        float* dys = stage + row * D;
        for (int c0 = 0; c0 < D; c0 += width) {
          const float2 g = rope_rotate(dyT[batch_index(s, n, c0 + i, N, H, d)],
                                       dyT[batch_index(s, n, c0 + half + i, N, H, d)], rot);
          dys[c0 + i] = g.x;
          dys[c0 + half + i] = g.y;
        }
      }
    }
    __syncthreads();
    for (int item = warp; item < here * heads; item += warps) {
      const int row = item / heads, h = item % heads;
      const int64_t r = r0 + row, c = int64_t(h) * d;
      qk_prep_bwd_item(x + r * ldx + c, scale + c, offset + c, norm[r * H + h], stage + row * D + c,
                       dx + r * lddx + c, dx16 ? dx16 + r * lddx + c : nullptr, dz + r * D + c, dzx + r * D + c, d,
                       eps, lane);
    }
    __syncthreads();  // the group's stage is read before the next group overwrites it
  }
}

// out[(r, h, j)] = x[...] * gate[r * H + h]: the gate index is element / d.
__global__ void k_gate_heads_fwd(const float* __restrict__ x, const float* __restrict__ gate, float* __restrict__ out,
                                 int64_t n, int64_t d) {
  const float* in[1] = {x};
  const bool narrow = n < (int64_t(1) << 32);
  ilp_for_each(n, in, [&](int64_t i, const float(&v)[1]) {
    out[i] = v[0] * gate[narrow ? int64_t(uint32_t(i) / uint32_t(d)) : i / d];
  });
}
// out[i] = x[i] * gate[i / d] + addend[i], stored as Out (float, or bf16 rounded to nearest even). The product is
// rounded before the sum (explicit _rn operations, no FMA): the bits of k_gate_heads_fwd then axpy.
template <class Out>
__global__ void k_gate_heads_add_fwd(const float* __restrict__ x, const float* __restrict__ gate,
                                     const float* __restrict__ addend, Out* __restrict__ out, int64_t n, int64_t d) {
  const float* in[2] = {x, addend};
  const bool narrow = n < (int64_t(1) << 32);
  ilp_for_each(n, in, [&](int64_t i, const float(&v)[2]) {
    const float g = gate[narrow ? int64_t(uint32_t(i) / uint32_t(d)) : i / d];
    store_as(out + i, __fadd_rn(__fmul_rn(v[0], g), v[1]));
  });
}
__global__ void k_gate_heads_bwd(const float* x, const float* gate, const float* dout, float* dx, float* dgate,
                                 int64_t rows, int64_t H, int64_t d) {
  const int lane = threadIdx.x % 32;
  WARP_STRIDE(item, rows * H) {
    const int64_t r = item / H, h = item % H;
    const float g = gate[item];
    double acc = 0;
    for (int64_t j = lane; j < d; j += 32) {
      const int64_t c = (r * H + h) * d + j;
      acc += double(dout[c]) * double(x[c]);
      dx[c] = dout[c] * g;
    }
    acc = warp_sum(acc);
    if (lane == 0) dgate[item] = float(acc);
  }
}

__global__ void k_add_diagonal(float* W, int64_t batch, int64_t rows, int64_t cols, float v) {
  const int64_t m = rows < cols ? rows : cols;
  GRID_STRIDE(i, batch * m) {
    const int64_t b = i / m, j = i % m;
    W[b * rows * cols + j * cols + j] += v;
  }
}

}  // namespace

void qk_prep_forward(const float* x, int64_t ldx, const float* scale, const float* offset, float* y, float* norm,
                     int64_t rows, int64_t H, int64_t d, double eps) {
  if (d <= 32 * kPerLane)
    k_qk_prep_fwd<true><<<warp_grid(rows * H), kThreads>>>(x, ldx, scale, offset, y, norm, rows, H, d, float(eps));
  else
    k_qk_prep_fwd<false><<<warp_grid(rows * H), kThreads>>>(x, ldx, scale, offset, y, norm, rows, H, d, float(eps));
  TTT_LAUNCH_CHECK("qk_prep_forward");
}
void qk_prep_backward(const float* x, int64_t ldx, const float* scale, const float* offset, const float* norm,
                      const float* dy, float* dx, int64_t lddx, float* dz, float* dzx, int64_t rows, int64_t H,
                      int64_t d, double eps) {
  k_qk_prep_bwd<<<warp_grid(rows * H), kThreads>>>(x, ldx, scale, offset, norm, dy, dx, lddx, dz, dzx, rows, H, d,
                                                   float(eps));
  TTT_LAUNCH_CHECK("qk_prep_backward");
}
// The fused kernels' launch: 256-thread blocks of rows_per_group rows (enough (row, head) items for the block's
// warps, within the default 48 KiB of shared memory with the frequency table), as many blocks as are resident at
// once (each walks row groups: the table is filled once per block; no block waits for a second wave).
constexpr int64_t kFusedSmemBytes = 48 * 1024;
constexpr int64_t kFusedFreqTableMax = 1024;  // pairs of a RoPE head tabulated (8 KiB); wider ones use the inline pow
struct FusedLaunch {
  int blocks, rows_per_group, freq_entries;
  size_t smem;
};
template <class Kernel>
static FusedLaunch fused_launch(Kernel kernel, int64_t rows, int64_t H, int64_t d, int64_t width) {
  const int64_t D = H * d, half = width / 2;
  const bool table = half > 0 && half <= kFusedFreqTableMax && 4 * D + 8 * half <= kFusedSmemBytes;
  const int64_t freq = table ? half : 0;
  const int64_t fit = (kFusedSmemBytes - 8 * freq) / (4 * D);
  const int64_t group = std::max<int64_t>(1, std::min<int64_t>((kWarpsPerBlock + H - 1) / H, fit));
  int device = 0, sms = 0;
  TTT_CUDA_CHECK(cudaGetDevice(&device));
  TTT_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const size_t smem = size_t(8 * freq + 4 * group * D);
  int resident = 0;
  TTT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, kThreads, smem));
  const int64_t groups = (rows + group - 1) / group;
  const int64_t all_resident = int64_t(sms) * std::max(resident, 1);
  return {int(std::max<int64_t>(1, std::min(groups, all_resident))), int(group), int(freq), smem};
}
static void check_fused(int64_t S, int64_t N, int64_t H, int64_t d, int64_t width, const char* name) {
  const int64_t D = H * d;
  TTT_CHECK(S >= 0 && N >= 0 && H >= 1 && d >= 1 && 4 * D <= kFusedSmemBytes,
            name << ": " << H << " heads of " << d << " (a row of at most " << kFusedSmemBytes / 4 << " channels)");
  TTT_CHECK(width == 0 || (width >= 2 && width % 2 == 0 && D % width == 0),
            name << ": RoPE width " << width << " must be even and divide the row's " << D << " channels");
}
void qk_prep_forward_fused(const float* x, int64_t ldx, const float* scale, const float* offset, const int64_t* pos,
                           double theta, int64_t rope_width, float* yT, float* norm, int64_t S, int64_t N, int64_t H,
                           int64_t d, double eps) {
  check_fused(S, N, H, d, rope_width, "qk_prep_forward_fused");
  if (S * N == 0) return;
  const auto kernel = d <= 32 * kPerLane ? k_qk_prep_fwd_fused<true> : k_qk_prep_fwd_fused<false>;
  const FusedLaunch l = fused_launch(kernel, S * N, H, d, rope_width);
  kernel<<<l.blocks, kThreads, l.smem>>>(x, ldx, scale, offset, pos, theta, int(rope_width), yT, norm, S, N, H, int(d),
                                         float(eps), l.rows_per_group, l.freq_entries);
  TTT_LAUNCH_CHECK("qk_prep_forward_fused");
}
void qk_prep_backward_fused(const float* x, int64_t ldx, const float* scale, const float* offset, const float* norm,
                            const int64_t* pos, double theta, int64_t rope_width, const float* dyT, float* dx,
                            int64_t lddx, bf16* dx16, float* dz, float* dzx, int64_t S, int64_t N, int64_t H,
                            int64_t d, double eps) {
  check_fused(S, N, H, d, rope_width, "qk_prep_backward_fused");
  if (S * N == 0) return;
  const FusedLaunch l = fused_launch(k_qk_prep_bwd_fused, S * N, H, d, rope_width);
  k_qk_prep_bwd_fused<<<l.blocks, kThreads, l.smem>>>(x, ldx, scale, offset, norm, pos, theta, int(rope_width), dyT,
                                                      dx, lddx, reinterpret_cast<__nv_bfloat16*>(dx16), dz, dzx, S, N,
                                                      H, int(d), float(eps), l.rows_per_group, l.freq_entries);
  TTT_LAUNCH_CHECK("qk_prep_backward_fused");
}
void gate_heads_forward(const float* x, const float* gate, float* out, int64_t rows, int64_t H, int64_t d) {
  k_gate_heads_fwd<<<grid_ilp(rows * H * d), kThreads>>>(x, gate, out, rows * H * d, d);
  TTT_LAUNCH_CHECK("gate_heads_forward");
}
void gate_heads_add_forward(const float* x, const float* gate, const float* addend, float* out, int64_t rows,
                            int64_t H, int64_t d) {
  k_gate_heads_add_fwd<<<grid_ilp(rows * H * d), kThreads>>>(x, gate, addend, out, rows * H * d, d);
  TTT_LAUNCH_CHECK("gate_heads_add_forward");
}
void gate_heads_add_forward(const float* x, const float* gate, const float* addend, bf16* out, int64_t rows,
                            int64_t H, int64_t d) {
  k_gate_heads_add_fwd<<<grid_ilp(rows * H * d), kThreads>>>(x, gate, addend, reinterpret_cast<__nv_bfloat16*>(out),
                                                             rows * H * d, d);
  TTT_LAUNCH_CHECK("gate_heads_add_forward");
}
void gate_heads_backward(const float* x, const float* gate, const float* dout, float* dx, float* dgate, int64_t rows,
                         int64_t H, int64_t d) {
  k_gate_heads_bwd<<<warp_grid(rows * H), kThreads>>>(x, gate, dout, dx, dgate, rows, H, d);
  TTT_LAUNCH_CHECK("gate_heads_backward");
}
void add_diagonal(float* W, int64_t batch, int64_t rows, int64_t cols, float value) {
  k_add_diagonal<<<grid_for(batch * std::min(rows, cols)), kThreads>>>(W, batch, rows, cols, value);
  TTT_LAUNCH_CHECK("add_diagonal");
}

}  // namespace ttt::cuda::mk
