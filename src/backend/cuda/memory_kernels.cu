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

namespace ttt::cuda::mk {

namespace {

// A lane's elements j = lane, lane + 32, ... of one (row, head) item stay in registers between the passes when
// d <= 32 * kPerLane (loaded and activated once); wider heads recompute them in the second pass. Both walks add
// in the same order, so the results do not depend on which one runs.
constexpr int kPerLane = 16;
template <bool kCached>
__global__ void k_qk_prep_fwd(const float* __restrict__ x, int64_t ldx, const float* __restrict__ scale,
                              const float* __restrict__ offset, float* __restrict__ y, float* __restrict__ norm,
                              int64_t rows, int64_t H, int64_t d, float eps) {
  const int lane = threadIdx.x % 32;
  WARP_STRIDE(item, rows * H) {
    const int64_t r = item / H, h = item % H, D = H * d;
    const float* xr = x + r * ldx + h * d;
    const float* sc = scale + h * d;
    const float* of = offset + h * d;
    float* yr = y + r * D + h * d;
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
    if (lane == 0) norm[r * H + h] = nrm;
  }
}
// One pass over a lane's channels per reduction, as written first: a version keeping x and dy in registers
// (like the forward) measured 45% slower on the H200 (0.93 vs 0.64 ms per call at 32768 x 4 x 384, ncu,
// 2026-11-30), so the backward recomputes silu instead.
__global__ void k_qk_prep_bwd(const float* x, int64_t ldx, const float* scale, const float* offset, const float* norm,
                              const float* dy, float* dx, int64_t lddx, float* dz, float* dzx, int64_t rows, int64_t H,
                              int64_t d, float eps) {
  const int lane = threadIdx.x % 32;
  WARP_STRIDE(item, rows * H) {
    const int64_t r = item / H, h = item % H, D = H * d;
    const float nrm = norm[r * H + h];
    const float inv = 1.0f / (nrm + eps);
    double dot = 0;
    for (int64_t j = lane; j < d; j += 32) {
      const int64_t c = h * d + j;
      const float a = math::silu(x[r * ldx + c] * scale[c] + offset[c]);
      dot += double(dy[r * D + c]) * double(a);
    }
    dot = warp_sum(dot);
    // da = (dy - a <dy, a> / (n (n + eps))) / (n + eps); the second term is 0 at a = 0.
    const float cf = nrm > 0.0f ? float(dot) * inv / nrm : 0.0f;
    for (int64_t j = lane; j < d; j += 32) {
      const int64_t c = h * d + j;
      const float xv = x[r * ldx + c];
      const float z = xv * scale[c] + offset[c];
      const float a = math::silu(z);
      const float da = (dy[r * D + c] - a * cf) * inv;
      const float g = da * math::dsilu(z);
      dz[r * D + c] = g;
      dzx[r * D + c] = g * xv;
      dx[r * lddx + c] += g * scale[c];
    }
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
void gate_heads_forward(const float* x, const float* gate, float* out, int64_t rows, int64_t H, int64_t d) {
  k_gate_heads_fwd<<<grid_ilp(rows * H * d), kThreads>>>(x, gate, out, rows * H * d, d);
  TTT_LAUNCH_CHECK("gate_heads_forward");
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
