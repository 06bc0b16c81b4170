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

__global__ void k_qk_prep_fwd(const float* x, int64_t ldx, const float* scale, const float* offset, float* y,
                              float* norm, int64_t rows, int64_t H, int64_t d, float eps) {
  const int lane = threadIdx.x % 32;
  WARP_STRIDE(item, rows * H) {
    const int64_t r = item / H, h = item % H, D = H * d;
    double ss = 0;
    for (int64_t j = lane; j < d; j += 32) {
      const int64_t c = h * d + j;
      const float a = math::silu(x[r * ldx + c] * scale[c] + offset[c]);
      ss += double(a) * double(a);
    }
    ss = warp_sum(ss);
    const float nrm = float(sqrt(ss));
    const float inv = 1.0f / (nrm + eps);
    for (int64_t j = lane; j < d; j += 32) {
      const int64_t c = h * d + j;
      const float a = math::silu(x[r * ldx + c] * scale[c] + offset[c]);
      y[r * D + c] = a * inv;
    }
    if (lane == 0) norm[r * H + h] = nrm;
  }
}
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

__global__ void k_gate_heads_fwd(const float* x, const float* gate, float* out, int64_t rows, int64_t H, int64_t d) {
  GRID_STRIDE(i, rows * H * d) {
    const int64_t r = i / (H * d), h = (i / d) % H;
    out[i] = x[i] * gate[r * H + h];
  }
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
  k_qk_prep_fwd<<<warp_grid(rows * H), kThreads>>>(x, ldx, scale, offset, y, norm, rows, H, d, float(eps));
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
  k_gate_heads_fwd<<<grid_for(rows * H * d), kThreads>>>(x, gate, out, rows, H, d);
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
