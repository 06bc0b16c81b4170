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

// The forward fused with what follows it in the GPU model: one warp per row does every head's item into shared
// memory, then RoPE (width > 0: heads of `width` channels over the row; one angle per pair index, as k_rope) and
// the store in the memory operators' layout [S*H, N, d]. One pass over the row instead of three (q/k preparation,
// RoPE in place, heads_to_batch).
template <bool kCached>
__global__ void k_qk_prep_fwd_fused(const float* __restrict__ x, int64_t ldx, const float* __restrict__ scale,
                                    const float* __restrict__ offset, const int64_t* __restrict__ pos, double theta,
                                    int width, float* __restrict__ yT, float* __restrict__ norm, int64_t S, int64_t N,
                                    int64_t H, int d, float eps) {
  extern __shared__ float stage[];  // a row of D channels per warp
  const int lane = threadIdx.x % 32, D = int(H) * d;
  float* ys = stage + (threadIdx.x / 32) * D;
  for (int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32; r < S * N;
       r += int64_t(gridDim.x) * blockDim.x / 32) {
    for (int64_t h = 0; h < H; ++h) {
      const float nrm =
          qk_prep_fwd_item<kCached>(x + r * ldx + h * d, scale + h * d, offset + h * d, ys + h * d, d, eps, lane);
      if (lane == 0) norm[r * H + h] = nrm;
    }
    __syncwarp();
    const int64_t s = r / N, n = r % N;
    if (width == 0) {
      for (int c = lane; c < D; c += 32) yT[batch_index(s, n, c, N, H, d)] = ys[c];
    } else {
      const int half = width / 2;
      for (int i = lane; i < half; i += 32) {
        const RopeRotation rot = rope_rotation(pos[r], i, width, theta, 1.f);
        for (int c0 = 0; c0 < D; c0 += width) {
          const float2 out = rope_rotate(ys[c0 + i], ys[c0 + half + i], rot);
          yT[batch_index(s, n, c0 + i, N, H, d)] = out.x;
          yT[batch_index(s, n, c0 + half + i, N, H, d)] = out.y;
        }
      }
    }
    __syncwarp();  // the row's stage is read before the next row overwrites it
  }
}

// The backward of one (row, head) item by one warp, from dy (dyr) and the forward's norm nrm: dz, dzx written,
// dx accumulated. One copy of the math for the plain and the fused kernels (same bits). One pass over a lane's
// channels per reduction, as written first: a version keeping x and dy in registers (like the forward) measured
// 45% slower on the H200 (0.93 vs 0.64 ms per call at 32768 x 4 x 384, ncu, 2026-11-30), so the backward
// recomputes silu instead.
// dxr16 (may be null): the updated dx rounded to bf16 there too.
__device__ __forceinline__ void qk_prep_bwd_item(const float* xr, const float* sc, const float* of, float nrm,
                                                 const float* dyr, float* dxr, __nv_bfloat16* dxr16, float* dzr,
                                                 float* dzxr, int64_t d, float eps, int lane) {
  const float inv = 1.0f / (nrm + eps);
  double dot = 0;
  for (int64_t j = lane; j < d; j += 32) {
    const float a = math::silu(xr[j] * sc[j] + of[j]);
    dot += double(dyr[j]) * double(a);
  }
  dot = warp_sum(dot);
  // da = (dy - a <dy, a> / (n (n + eps))) / (n + eps); the second term is 0 at a = 0.
  const float cf = nrm > 0.0f ? float(dot) * inv / nrm : 0.0f;
  for (int64_t j = lane; j < d; j += 32) {
    const float xv = xr[j];
    const float z = xv * sc[j] + of[j];
    const float a = math::silu(z);
    const float da = (dyr[j] - a * cf) * inv;
    const float g = da * math::dsilu(z);
    dzr[j] = g;
    dzxr[j] = g * xv;
    const float dxj = dxr[j] + g * sc[j];
    dxr[j] = dxj;
    if (dxr16) dxr16[j] = __float2bfloat16_rn(dxj);
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
// The adjoint of k_qk_prep_fwd_fused: one warp per row gathers d(output) from the layout [S*H, N, d] into shared
// memory, undoes RoPE there (the inverse rotation, as rope_backward) and runs every head's item.
__global__ void k_qk_prep_bwd_fused(const float* x, int64_t ldx, const float* scale, const float* offset,
                                    const float* norm, const int64_t* __restrict__ pos, double theta, int width,
                                    const float* __restrict__ dyT, float* dx, int64_t lddx,
                                    __nv_bfloat16* __restrict__ dx16, float* dz, float* dzx, int64_t S, int64_t N,
                                    int64_t H, int d, float eps) {
  extern __shared__ float stage[];  // a row of D channels per warp
  const int lane = threadIdx.x % 32, D = int(H) * d;
  float* dys = stage + (threadIdx.x / 32) * D;
  for (int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32; r < S * N;
       r += int64_t(gridDim.x) * blockDim.x / 32) {
    const int64_t s = r / N, n = r % N;
    if (width == 0) {
      for (int c = lane; c < D; c += 32) dys[c] = dyT[batch_index(s, n, c, N, H, d)];
    } else {
      const int half = width / 2;
      for (int i = lane; i < half; i += 32) {
        const RopeRotation rot = rope_rotation(pos[r], i, width, theta, -1.f);
        for (int c0 = 0; c0 < D; c0 += width) {
          const float2 g = rope_rotate(dyT[batch_index(s, n, c0 + i, N, H, d)],
                                       dyT[batch_index(s, n, c0 + half + i, N, H, d)], rot);
          dys[c0 + i] = g.x;
          dys[c0 + half + i] = g.y;
        }
      }
    }
    __syncwarp();
    for (int64_t h = 0; h < H; ++h) {
      const int64_t c = h * d;
      qk_prep_bwd_item(x + r * ldx + c, scale + c, offset + c, norm[r * H + h], dys + c, dx + r * lddx + c,
                       dx16 ? dx16 + r * lddx + c : nullptr, dz + r * D + c, dzx + r * D + c, d, eps, lane);
    }
    __syncwarp();  // the row's stage is read before the next row overwrites it
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
// Warps per block of the fused kernels: a row of D floats of shared memory each, within the default 48 KiB.
constexpr size_t kFusedStageBytes = 48 * 1024;
static int fused_warps(int64_t D) {
  return int(std::min<int64_t>(kWarpsPerBlock, int64_t(kFusedStageBytes) / (4 * D)));
}
static void check_fused(int64_t S, int64_t N, int64_t H, int64_t d, int64_t width, const char* name) {
  const int64_t D = H * d;
  TTT_CHECK(S >= 0 && N >= 0 && H >= 1 && d >= 1 && fused_warps(D) >= 1,
            name << ": " << H << " heads of " << d << " (a row of at most " << kFusedStageBytes / 4 << " channels)");
  TTT_CHECK(width == 0 || (width >= 2 && width % 2 == 0 && D % width == 0),
            name << ": RoPE width " << width << " must be even and divide the row's " << D << " channels");
}
void qk_prep_forward_fused(const float* x, int64_t ldx, const float* scale, const float* offset, const int64_t* pos,
                           double theta, int64_t rope_width, float* yT, float* norm, int64_t S, int64_t N, int64_t H,
                           int64_t d, double eps) {
  check_fused(S, N, H, d, rope_width, "qk_prep_forward_fused");
  if (S * N == 0) return;
  const int warps = fused_warps(H * d);
  const int blocks = int(std::min<int64_t>((S * N + warps - 1) / warps, 1 << 20));
  const size_t smem = sizeof(float) * size_t(warps * H * d);
  if (d <= 32 * kPerLane)
    k_qk_prep_fwd_fused<true><<<blocks, 32 * warps, smem>>>(x, ldx, scale, offset, pos, theta, int(rope_width), yT,
                                                            norm, S, N, H, int(d), float(eps));
  else
    k_qk_prep_fwd_fused<false><<<blocks, 32 * warps, smem>>>(x, ldx, scale, offset, pos, theta, int(rope_width), yT,
                                                             norm, S, N, H, int(d), float(eps));
  TTT_LAUNCH_CHECK("qk_prep_forward_fused");
}
void qk_prep_backward_fused(const float* x, int64_t ldx, const float* scale, const float* offset, const float* norm,
                            const int64_t* pos, double theta, int64_t rope_width, const float* dyT, float* dx,
                            int64_t lddx, bf16* dx16, float* dz, float* dzx, int64_t S, int64_t N, int64_t H,
                            int64_t d, double eps) {
  check_fused(S, N, H, d, rope_width, "qk_prep_backward_fused");
  if (S * N == 0) return;
  const int warps = fused_warps(H * d);
  const int blocks = int(std::min<int64_t>((S * N + warps - 1) / warps, 1 << 20));
  const size_t smem = sizeof(float) * size_t(warps * H * d);
  k_qk_prep_bwd_fused<<<blocks, 32 * warps, smem>>>(x, ldx, scale, offset, norm, pos, theta, int(rope_width), dyT, dx,
                                                    lddx, reinterpret_cast<__nv_bfloat16*>(dx16), dz, dzx, S, N, H,
                                                    int(d), float(eps));
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
