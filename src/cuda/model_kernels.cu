// Kernels of model_kernels.h. Element-wise work is grid-stride; per-(row, head) reductions use one warp
// each and accumulate in double along a fixed shuffle tree, so results are deterministic.
#include "cuda/model_kernels.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cuda/check.cuh"
#include "ttt/lact_fused.h"  // sigmoid_, silu_s, dsilu_s: the per-element math shared with the CPU twin

namespace ttt::cuda::mk {

namespace {

constexpr int kThreads = 256;
int grid_for(int64_t n) { return int(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, 1 << 20))); }
int warp_grid(int64_t items) { return int(std::max<int64_t>(1, std::min<int64_t>((items + 7) / 8, 1 << 20))); }

#define GRID_STRIDE(i, n) \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)
// One warp per item: 8 warps per 256-thread block.
#define WARP_STRIDE(item, n)                                                                   \
  for (int64_t item = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32; item < (n);      \
       item += int64_t(gridDim.x) * blockDim.x / 32)

__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

using lact::dsilu_s;
using lact::sigmoid_;
using lact::silu_s;

__device__ __forceinline__ float silu_f(float z) { return silu_s(z, sigmoid_(z)); }
__device__ __forceinline__ float dsilu_f(float z) { return dsilu_s(z, sigmoid_(z)); }
__device__ __forceinline__ float softplus_f(float z) { return z > 20.0f ? z : log1pf(expf(z)); }

__device__ __forceinline__ float act_f(Act a, float z) {
  switch (a) {
    case Act::Identity: return z;
    case Act::Silu: return silu_f(z);
    case Act::Sigmoid: return sigmoid_(z);
    case Act::Softplus: return softplus_f(z);
  }
  return z;
}
__device__ __forceinline__ float dact_f(Act a, float z) {
  switch (a) {
    case Act::Identity: return 1.0f;
    case Act::Silu: return dsilu_f(z);
    case Act::Sigmoid: {
      const float s = sigmoid_(z);
      return s * (1.0f - s);
    }
    case Act::Softplus: return sigmoid_(z);
  }
  return 1.0f;
}

__global__ void copy2d_k(const float* __restrict__ src, int64_t lds, float* __restrict__ dst, int64_t ldd, int64_t rows,
                         int64_t cols, bool acc) {
  GRID_STRIDE(i, rows * cols) {
    const int64_t r = i / cols, c = i % cols;
    const float v = src[r * lds + c];
    dst[r * ldd + c] = acc ? dst[r * ldd + c] + v : v;
  }
}
__global__ void fill_k(float* p, float v, int64_t n) { GRID_STRIDE(i, n) p[i] = v; }
__global__ void axpy_k(float* y, const float* x, float a, int64_t n) { GRID_STRIDE(i, n) y[i] += a * x[i]; }
__global__ void scale_k(float* p, float a, int64_t n) { GRID_STRIDE(i, n) p[i] *= a; }

__global__ void embedding_fwd_k(const float* table, const int32_t* ids, float* out, int64_t n, int64_t D) {
  GRID_STRIDE(i, n * D) {
    const int64_t r = i / D, c = i % D;
    out[i] = table[int64_t(ids[r]) * D + c];
  }
}
__global__ void embedding_bwd_k(const float* dout, const int32_t* order, const int32_t* starts, const int32_t* uniq,
                                int64_t n_uniq, float* dtable, int64_t D) {
  GRID_STRIDE(i, n_uniq * D) {
    const int64_t u = i / D, c = i % D;
    float acc = dtable[int64_t(uniq[u]) * D + c];
    for (int32_t p = starts[u]; p < starts[u + 1]; ++p) acc += dout[int64_t(order[p]) * D + c];
    dtable[int64_t(uniq[u]) * D + c] = acc;
  }
}

// y[(s*H + h)*N + i][j] = x[(s*N + i)*ldx + h*d + j]
__global__ void heads_to_batch_k(const float* x, int64_t ldx, float* y, int64_t S, int64_t N, int64_t H, int64_t d) {
  GRID_STRIDE(e, S * N * H * d) {
    const int64_t j = e % d, h = (e / d) % H, i = (e / (d * H)) % N, s = e / (d * H * N);
    y[((s * H + h) * N + i) * d + j] = x[(s * N + i) * ldx + h * d + j];
  }
}
__global__ void batch_to_heads_k(const float* y, float* x, int64_t ldx, int64_t S, int64_t N, int64_t H, int64_t d,
                                 bool acc) {
  GRID_STRIDE(e, S * N * H * d) {
    const int64_t j = e % d, h = (e / d) % H, i = (e / (d * H)) % N, s = e / (d * H * N);
    const float v = y[((s * H + h) * N + i) * d + j];
    float& dst = x[(s * N + i) * ldx + h * d + j];
    dst = acc ? dst + v : v;
  }
}
__global__ void cols_to_batch_k(const float* x, int64_t ldx, int64_t col0, float* y, int64_t S, int64_t N, int64_t H) {
  GRID_STRIDE(e, S * N * H) {
    const int64_t h = e % H, i = (e / H) % N, s = e / (H * N);
    y[(s * H + h) * N + i] = x[(s * N + i) * ldx + col0 + h];
  }
}
__global__ void batch_to_cols_k(const float* y, float* x, int64_t ldx, int64_t col0, int64_t S, int64_t N, int64_t H) {
  GRID_STRIDE(e, S * N * H) {
    const int64_t h = e % H, i = (e / H) % N, s = e / (H * N);
    x[(s * N + i) * ldx + col0 + h] = y[(s * H + h) * N + i];
  }
}

__global__ void qk_prep_fwd_k(const float* x, int64_t ldx, const float* scale, const float* offset, float* y,
                              float* norm, int64_t rows, int64_t H, int64_t d, float eps) {
  const int lane = threadIdx.x % 32;
  WARP_STRIDE(item, rows * H) {
    const int64_t r = item / H, h = item % H, D = H * d;
    double ss = 0;
    for (int64_t j = lane; j < d; j += 32) {
      const int64_t c = h * d + j;
      const float a = silu_f(x[r * ldx + c] * scale[c] + offset[c]);
      ss += double(a) * double(a);
    }
    ss = warp_sum(ss);
    const float nrm = float(sqrt(ss));
    const float inv = 1.0f / (nrm + eps);
    for (int64_t j = lane; j < d; j += 32) {
      const int64_t c = h * d + j;
      const float a = silu_f(x[r * ldx + c] * scale[c] + offset[c]);
      y[r * D + c] = a * inv;
    }
    if (lane == 0) norm[r * H + h] = nrm;
  }
}
__global__ void qk_prep_bwd_k(const float* x, int64_t ldx, const float* scale, const float* offset, const float* norm,
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
      const float a = silu_f(x[r * ldx + c] * scale[c] + offset[c]);
      dot += double(dy[r * D + c]) * double(a);
    }
    dot = warp_sum(dot);
    // da = (dy - a <dy, a> / (n (n + eps))) / (n + eps); the second term is 0 at a = 0.
    const float cf = nrm > 0.0f ? float(dot) * inv / nrm : 0.0f;
    for (int64_t j = lane; j < d; j += 32) {
      const int64_t c = h * d + j;
      const float xv = x[r * ldx + c];
      const float z = xv * scale[c] + offset[c];
      const float a = silu_f(z);
      const float da = (dy[r * D + c] - a * cf) * inv;
      const float g = da * dsilu_f(z);
      dz[r * D + c] = g;
      dzx[r * D + c] = g * xv;
      dx[r * lddx + c] += g * scale[c];
    }
  }
}

__global__ void bias_act_fwd_k(float* z, const float* bias, float* y, int64_t rows, int64_t cols, float shift, Act a) {
  GRID_STRIDE(i, rows * cols) {
    float v = z[i];
    if (bias) v += bias[i % cols];
    z[i] = v;
    y[i] = act_f(a, v + shift);
  }
}
__global__ void act_bwd_k(const float* z, const float* dy, float* dz, int64_t n, float shift, Act a) {
  GRID_STRIDE(i, n) dz[i] = dy[i] * dact_f(a, z[i] + shift);
}
__global__ void silu_strided_fwd_k(const float* x, int64_t ldx, float* y, int64_t rows, int64_t cols) {
  GRID_STRIDE(i, rows * cols) y[i] = silu_f(x[(i / cols) * ldx + i % cols]);
}
__global__ void silu_strided_bwd_k(const float* x, int64_t ldx, const float* dy, float* dx, int64_t lddx, int64_t rows,
                                   int64_t cols) {
  GRID_STRIDE(i, rows * cols) {
    const int64_t r = i / cols, c = i % cols;
    dx[r * lddx + c] += dy[i] * dsilu_f(x[r * ldx + c]);
  }
}

__global__ void gate_fwd_k(const float* x, const float* gate, float* out, int64_t rows, int64_t H, int64_t d) {
  GRID_STRIDE(i, rows * H * d) {
    const int64_t r = i / (H * d), h = (i / d) % H;
    out[i] = x[i] * gate[r * H + h];
  }
}
__global__ void gate_bwd_k(const float* x, const float* gate, const float* dout, float* dx, float* dgate, int64_t rows,
                           int64_t H, int64_t d) {
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

__device__ __forceinline__ void store_as(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_as(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }

template <class Out>
__global__ void swiglu_fwd_k(const float* a, const float* u, Out* m, int64_t n) {
  GRID_STRIDE(i, n) store_as(m + i, silu_f(a[i]) * u[i]);
}
__global__ void to_bf16_k(const float* src, int64_t lds, __nv_bfloat16* dst, int64_t ldd, int64_t rows, int64_t cols) {
  GRID_STRIDE(i, rows * cols) {
    const int64_t r = i / cols, c = i % cols;
    dst[r * ldd + c] = __float2bfloat16(src[r * lds + c]);
  }
}
__global__ void zero_masked_k(float* p, const uint8_t* mask, int64_t n) {
  GRID_STRIDE(i, n) if (!mask[i]) p[i] = 0.0f;
}
__global__ void from_bf16_k(const __nv_bfloat16* src, float* dst, int64_t n) {
  GRID_STRIDE(i, n) dst[i] = __bfloat162float(src[i]);
}
__global__ void round_store_bf16_k(float* x, __nv_bfloat16* dst, int64_t n) {
  GRID_STRIDE(i, n) {
    const __nv_bfloat16 h = __float2bfloat16(x[i]);
    dst[i] = h;
    x[i] = __bfloat162float(h);
  }
}
__global__ void swiglu_bwd_k(const float* a, const float* u, const float* dm, float* da, float* du, int64_t n) {
  GRID_STRIDE(i, n) {
    const float s = sigmoid_(a[i]);
    const float g = dm[i];
    da[i] = g * u[i] * dsilu_s(a[i], s);
    du[i] = g * silu_s(a[i], s);
  }
}
__global__ void add_diag_k(float* W, int64_t batch, int64_t rows, int64_t cols, float v) {
  const int64_t m = rows < cols ? rows : cols;
  GRID_STRIDE(i, batch * m) {
    const int64_t b = i / m, j = i % m;
    W[b * rows * cols + j * cols + j] += v;
  }
}

constexpr int kAttendThreads = 128;
constexpr int64_t kAttendMaxKeys = 8192;
// One block per head: scores in shared memory, block max and sum (fixed tree), then each thread owns channels.
__global__ void attend_one_k(const float* q, const float* K, const float* V, int n, int hd, int ld, float scale,
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

__global__ void qk_project_one_k(const float* q, const float* KK, const double* ksq, float* out, int64_t H, int64_t d) {
  GRID_STRIDE(e, H * d) {
    const int64_t h = e / d, a = e % d;
    if (ksq[h] > 0) {
      double acc = 0;
      for (int64_t b = 0; b < d; ++b) acc += double(KK[(h * d + a) * d + b]) * double(q[h * d + b]);
      out[e] = float(acc / ksq[h]);
    } else {
      out[e] = q[e];
    }
  }
}
__global__ void scaled_error_k(const float* Y, const float* V, const float* scale, float* out, int64_t rows, int64_t d) {
  GRID_STRIDE(e, rows * d) out[e] = scale[e / d] * (Y[e] - V[e]);
}
__global__ void dsilu_mul_k(const float* M, const float* Z, float* out, int64_t n, float factor) {
  GRID_STRIDE(e, n) out[e] = factor * M[e] * dsilu_f(Z[e]);
}
__global__ void row_mean_k(const float* x, int64_t rows, int64_t cols, float* out) {
  GRID_STRIDE(r, rows) {
    double acc = 0;
    for (int64_t c = 0; c < cols; ++c) acc += x[r * cols + c];
    out[r] = float(acc / double(cols));
  }
}
__global__ void titans_step_k(float* W, float* S, const float* D, const float* ebar, const float* abar, int64_t H,
                              int64_t P) {
  GRID_STRIDE(e, H * P) {
    const int64_t h = e / P;
    const float s = D[e] + ebar[h] * S[e];
    S[e] = s;
    W[e] = (1.0f - abar[h]) * W[e] + s;
  }
}
__global__ void add_row_sumsq_k(const float* x, int64_t H, int64_t per, double* acc) {
  __shared__ double sh[kThreads / 32];
  const int64_t h = blockIdx.x;
  double a = 0;
  for (int64_t i = threadIdx.x; i < per; i += blockDim.x) a += double(x[h * per + i]) * double(x[h * per + i]);
  a = warp_sum(a);
  if (threadIdx.x % 32 == 0) sh[threadIdx.x / 32] = a;
  __syncthreads();
  if (threadIdx.x == 0) {
    double s = 0;
    for (int w = 0; w < kThreads / 32; ++w) s += sh[w];
    acc[h] += s;
  }
}

constexpr int kPartials = 1024;
__global__ void sumsq_partial_k(const float* x, int64_t n, double* part) {
  __shared__ double sh[kThreads / 32];
  double acc = 0;
  GRID_STRIDE(i, n) acc += double(x[i]) * double(x[i]);
  acc = warp_sum(acc);
  if (threadIdx.x % 32 == 0) sh[threadIdx.x / 32] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double s = 0;
    for (int w = 0; w < kThreads / 32; ++w) s += sh[w];
    part[blockIdx.x] = s;
  }
}
__global__ void nonfinite_k(const float* x, int64_t n, int* flag) {
  GRID_STRIDE(i, n) if (!isfinite(x[i])) *flag = 1;
}

}  // namespace

void copy2d(const float* src, int64_t lds, float* dst, int64_t ldd, int64_t rows, int64_t cols, bool accumulate) {
  if (rows <= 0 || cols <= 0) return;
  copy2d_k<<<grid_for(rows * cols), kThreads>>>(src, lds, dst, ldd, rows, cols, accumulate);
  TTT_LAUNCH_CHECK("copy2d");
}
void fill(float* p, float value, int64_t n) {
  if (n <= 0) return;
  fill_k<<<grid_for(n), kThreads>>>(p, value, n);
  TTT_LAUNCH_CHECK("fill");
}
void axpy(float* y, const float* x, float a, int64_t n) {
  if (n <= 0) return;
  axpy_k<<<grid_for(n), kThreads>>>(y, x, a, n);
  TTT_LAUNCH_CHECK("axpy");
}
void scale(float* p, float a, int64_t n) {
  if (n <= 0) return;
  scale_k<<<grid_for(n), kThreads>>>(p, a, n);
  TTT_LAUNCH_CHECK("scale");
}
void embedding_forward(const float* table, const int32_t* ids, float* out, int64_t n, int64_t D) {
  if (n <= 0) return;
  embedding_fwd_k<<<grid_for(n * D), kThreads>>>(table, ids, out, n, D);
  TTT_LAUNCH_CHECK("embedding_forward");
}
void embedding_backward(const float* dout, const int32_t* order, const int32_t* starts, const int32_t* uniq,
                        int64_t n_uniq, float* dtable, int64_t D) {
  if (n_uniq <= 0) return;
  embedding_bwd_k<<<grid_for(n_uniq * D), kThreads>>>(dout, order, starts, uniq, n_uniq, dtable, D);
  TTT_LAUNCH_CHECK("embedding_backward");
}
void heads_to_batch(const float* x, int64_t ldx, float* y, int64_t S, int64_t N, int64_t H, int64_t d) {
  heads_to_batch_k<<<grid_for(S * N * H * d), kThreads>>>(x, ldx, y, S, N, H, d);
  TTT_LAUNCH_CHECK("heads_to_batch");
}
void batch_to_heads(const float* y, float* x, int64_t ldx, int64_t S, int64_t N, int64_t H, int64_t d, bool accumulate) {
  batch_to_heads_k<<<grid_for(S * N * H * d), kThreads>>>(y, x, ldx, S, N, H, d, accumulate);
  TTT_LAUNCH_CHECK("batch_to_heads");
}
void cols_to_batch(const float* x, int64_t ldx, int64_t col0, float* y, int64_t S, int64_t N, int64_t H) {
  cols_to_batch_k<<<grid_for(S * N * H), kThreads>>>(x, ldx, col0, y, S, N, H);
  TTT_LAUNCH_CHECK("cols_to_batch");
}
void batch_to_cols(const float* y, float* x, int64_t ldx, int64_t col0, int64_t S, int64_t N, int64_t H) {
  batch_to_cols_k<<<grid_for(S * N * H), kThreads>>>(y, x, ldx, col0, S, N, H);
  TTT_LAUNCH_CHECK("batch_to_cols");
}
void qk_prep_forward(const float* x, int64_t ldx, const float* scale, const float* offset, float* y, float* norm,
                     int64_t rows, int64_t H, int64_t d, double eps) {
  qk_prep_fwd_k<<<warp_grid(rows * H), kThreads>>>(x, ldx, scale, offset, y, norm, rows, H, d, float(eps));
  TTT_LAUNCH_CHECK("qk_prep_forward");
}
void qk_prep_backward(const float* x, int64_t ldx, const float* scale, const float* offset, const float* norm,
                      const float* dy, float* dx, int64_t lddx, float* dz, float* dzx, int64_t rows, int64_t H,
                      int64_t d, double eps) {
  qk_prep_bwd_k<<<warp_grid(rows * H), kThreads>>>(x, ldx, scale, offset, norm, dy, dx, lddx, dz, dzx, rows, H, d,
                                                   float(eps));
  TTT_LAUNCH_CHECK("qk_prep_backward");
}
void bias_act_forward(float* z, const float* bias, float* y, int64_t rows, int64_t cols, double shift, Act act) {
  bias_act_fwd_k<<<grid_for(rows * cols), kThreads>>>(z, bias, y, rows, cols, float(shift), act);
  TTT_LAUNCH_CHECK("bias_act_forward");
}
void act_backward(const float* z, const float* dy, float* dz, int64_t n, double shift, Act act) {
  act_bwd_k<<<grid_for(n), kThreads>>>(z, dy, dz, n, float(shift), act);
  TTT_LAUNCH_CHECK("act_backward");
}
void silu_strided_forward(const float* x, int64_t ldx, float* y, int64_t rows, int64_t cols) {
  silu_strided_fwd_k<<<grid_for(rows * cols), kThreads>>>(x, ldx, y, rows, cols);
  TTT_LAUNCH_CHECK("silu_strided_forward");
}
void silu_strided_backward(const float* x, int64_t ldx, const float* dy, float* dx, int64_t lddx, int64_t rows,
                           int64_t cols) {
  silu_strided_bwd_k<<<grid_for(rows * cols), kThreads>>>(x, ldx, dy, dx, lddx, rows, cols);
  TTT_LAUNCH_CHECK("silu_strided_backward");
}
void gate_heads_forward(const float* x, const float* gate, float* out, int64_t rows, int64_t H, int64_t d) {
  gate_fwd_k<<<grid_for(rows * H * d), kThreads>>>(x, gate, out, rows, H, d);
  TTT_LAUNCH_CHECK("gate_heads_forward");
}
void gate_heads_backward(const float* x, const float* gate, const float* dout, float* dx, float* dgate, int64_t rows,
                         int64_t H, int64_t d) {
  gate_bwd_k<<<warp_grid(rows * H), kThreads>>>(x, gate, dout, dx, dgate, rows, H, d);
  TTT_LAUNCH_CHECK("gate_heads_backward");
}
void swiglu_forward(const float* a, const float* u, float* m, int64_t n) {
  swiglu_fwd_k<<<grid_for(n), kThreads>>>(a, u, m, n);
  TTT_LAUNCH_CHECK("swiglu_forward");
}
void swiglu_forward(const float* a, const float* u, bf16* m, int64_t n) {
  swiglu_fwd_k<<<grid_for(n), kThreads>>>(a, u, reinterpret_cast<__nv_bfloat16*>(m), n);
  TTT_LAUNCH_CHECK("swiglu_forward bf16");
}
void to_bf16(const float* src, int64_t lds, bf16* dst, int64_t ldd, int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0) return;
  to_bf16_k<<<grid_for(rows * cols), kThreads>>>(src, lds, reinterpret_cast<__nv_bfloat16*>(dst), ldd, rows, cols);
  TTT_LAUNCH_CHECK("to_bf16");
}
void zero_where_masked(float* p, const uint8_t* mask, int64_t n) {
  if (n <= 0) return;
  zero_masked_k<<<grid_for(n), kThreads>>>(p, mask, n);
  TTT_LAUNCH_CHECK("zero_where_masked");
}
void from_bf16(const bf16* src, float* dst, int64_t n) {
  if (n <= 0) return;
  from_bf16_k<<<grid_for(n), kThreads>>>(reinterpret_cast<const __nv_bfloat16*>(src), dst, n);
  TTT_LAUNCH_CHECK("from_bf16");
}
void round_store_bf16(float* x, bf16* dst, int64_t n) {
  if (n <= 0) return;
  round_store_bf16_k<<<grid_for(n), kThreads>>>(x, reinterpret_cast<__nv_bfloat16*>(dst), n);
  TTT_LAUNCH_CHECK("round_store_bf16");
}
void swiglu_backward(const float* a, const float* u, const float* dm, float* da, float* du, int64_t n) {
  swiglu_bwd_k<<<grid_for(n), kThreads>>>(a, u, dm, da, du, n);
  TTT_LAUNCH_CHECK("swiglu_backward");
}
void add_diagonal(float* W, int64_t batch, int64_t rows, int64_t cols, float value) {
  add_diag_k<<<grid_for(batch * std::min(rows, cols)), kThreads>>>(W, batch, rows, cols, value);
  TTT_LAUNCH_CHECK("add_diagonal");
}

void attend_one(const float* q, const float* K, const float* V, int64_t n, int64_t heads, int64_t hd, int64_t ld,
                float* o) {
  TTT_CHECK(n >= 1 && n <= kAttendMaxKeys && hd >= 1 && hd <= 128,
            "attend_one: " << n << " keys of width " << hd << " (at most " << kAttendMaxKeys << " keys, width 128)");
  const size_t smem = sizeof(float) * size_t(n + kAttendThreads / 32);
  if (smem > 48 * 1024)
    TTT_CUDA_CHECK(cudaFuncSetAttribute(attend_one_k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  attend_one_k<<<int(heads), kAttendThreads, smem>>>(q, K, V, int(n), int(hd), int(ld),
                                                    float(1.0 / std::sqrt(double(hd))), o);
  TTT_LAUNCH_CHECK("attend_one");
}

void qk_project_one(const float* q, const float* KK, const double* ksq, float* out, int64_t H, int64_t d) {
  qk_project_one_k<<<grid_for(H * d), kThreads>>>(q, KK, ksq, out, H, d);
  TTT_LAUNCH_CHECK("qk_project_one");
}
void scaled_error(const float* Y, const float* V, const float* scale, float* out, int64_t rows, int64_t d) {
  scaled_error_k<<<grid_for(rows * d), kThreads>>>(Y, V, scale, out, rows, d);
  TTT_LAUNCH_CHECK("scaled_error");
}
void dsilu_mul(const float* M, const float* Z, float* out, int64_t n, float factor) {
  dsilu_mul_k<<<grid_for(n), kThreads>>>(M, Z, out, n, factor);
  TTT_LAUNCH_CHECK("dsilu_mul");
}
void row_mean(const float* x, int64_t rows, int64_t cols, float* out) {
  row_mean_k<<<grid_for(rows), kThreads>>>(x, rows, cols, out);
  TTT_LAUNCH_CHECK("row_mean");
}
void titans_step(float* W, float* S, const float* D, const float* ebar, const float* abar, int64_t H, int64_t P) {
  titans_step_k<<<grid_for(H * P), kThreads>>>(W, S, D, ebar, abar, H, P);
  TTT_LAUNCH_CHECK("titans_step");
}
void add_row_sumsq(const float* x, int64_t H, int64_t per, double* acc) {
  add_row_sumsq_k<<<int(H), kThreads>>>(x, H, per, acc);
  TTT_LAUNCH_CHECK("add_row_sumsq");
}

double sum_squares(const float* x, int64_t n) {
  if (n <= 0) return 0.0;
  double* part = nullptr;
  TTT_CUDA_CHECK(cudaMalloc(&part, sizeof(double) * kPartials));
  const int blocks = int(std::min<int64_t>(kPartials, (n + kThreads - 1) / kThreads));
  sumsq_partial_k<<<blocks, kThreads>>>(x, n, part);
  cudaError_t launch = cudaGetLastError();
  std::vector<double> host(size_t(blocks), 0.0);
  cudaError_t copy = cudaMemcpy(host.data(), part, sizeof(double) * size_t(blocks), cudaMemcpyDeviceToHost);
  cudaFree(part);
  TTT_CHECK(launch == cudaSuccess && copy == cudaSuccess,
            "sum_squares: " << cudaGetErrorString(launch != cudaSuccess ? launch : copy));
  double s = 0;
  for (double v : host) s += v;  // fixed order: deterministic
  return s;
}

bool all_finite(const float* x, int64_t n) {
  if (n <= 0) return true;
  int* flag = nullptr;
  TTT_CUDA_CHECK(cudaMalloc(&flag, sizeof(int)));
  TTT_CUDA_CHECK(cudaMemset(flag, 0, sizeof(int)));
  nonfinite_k<<<grid_for(n), kThreads>>>(x, n, flag);
  cudaError_t launch = cudaGetLastError();
  int host = 0;
  cudaError_t copy = cudaMemcpy(&host, flag, sizeof(int), cudaMemcpyDeviceToHost);
  cudaFree(flag);
  TTT_CHECK(launch == cudaSuccess && copy == cudaSuccess,
            "all_finite: " << cudaGetErrorString(launch != cudaSuccess ? launch : copy));
  return host == 0;
}

}  // namespace ttt::cuda::mk
