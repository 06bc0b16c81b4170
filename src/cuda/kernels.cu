// CUDA kernels of the model's small layers (see kernels.h). Simple first: one warp per (row, group) for the
// norms, one block per row for the cross-entropy, grid-stride element-wise kernels elsewhere. Every reduction
// accumulates in double along a fixed tree (warp shuffles, then shared memory), so results are deterministic.
#include "cuda/kernels.h"
#include "cuda/check.cuh"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/error.h"

namespace ttt::cuda {


namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;
constexpr int kMaxSlices = 128;  // row slices of the first pass of RMSNorm's dw

cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

int grid_for(int64_t n) {
  return int(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(1) << 20)));
}

#define KGRID_STRIDE(i, n) \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
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

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// ---- RMSNorm -------------------------------------------------------------------------------------------
// One warp per segment (row, group) of `group` columns starting at seg * group. Out: float, or __nv_bfloat16
// (the GPU model's bf16 activations: the same float result, rounded once on the store).
__device__ __forceinline__ void store_out(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_out(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }

template <bool kVec, class Out>
__global__ void k_rms_fwd(const float* __restrict__ x, const float* __restrict__ w, Out* __restrict__ y,
                          float* __restrict__ rinv, int64_t segs, int64_t D, int64_t group, double eps) {
  const int64_t seg = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (seg >= segs) return;  // whole warps leave together
  const int64_t off = seg * group;
  const int64_t c0 = off % D;
  const float* xs = x + off;
  double ss = 0;
  if (kVec) {
    for (int64_t j = lane; j < group / 4; j += 32) {
      const float4 a = reinterpret_cast<const float4*>(xs)[j];
      ss += double(a.x) * a.x + double(a.y) * a.y + double(a.z) * a.z + double(a.w) * a.w;
    }
  } else {
    for (int64_t j = lane; j < group; j += 32) ss += double(xs[j]) * double(xs[j]);
  }
  ss = warp_sum(ss);
  const float r = float(1.0 / sqrt(ss / double(group) + eps));
  if (lane == 0) rinv[seg] = r;
  Out* ys = y + off;
  const float* ws = w + c0;
  if (kVec) {
    for (int64_t j = lane; j < group / 4; j += 32) {
      const float4 a = reinterpret_cast<const float4*>(xs)[j];
      const float4 b = reinterpret_cast<const float4*>(ws)[j];
      store_out(ys + 4 * j, a.x * r * b.x);
      store_out(ys + 4 * j + 1, a.y * r * b.y);
      store_out(ys + 4 * j + 2, a.z * r * b.z);
      store_out(ys + 4 * j + 3, a.w * r * b.w);
    }
  } else {
    for (int64_t j = lane; j < group; j += 32) store_out(ys + j, xs[j] * r * ws[j]);
  }
}

// dx = r * (a - x * r^2 <a, x> / group),  a = dy ⊙ w
__global__ void k_rms_bwd_dx(const float* __restrict__ x, const float* __restrict__ w,
                             const float* __restrict__ rinv, const float* __restrict__ dy, float* __restrict__ dx,
                             int64_t segs, int64_t D, int64_t group) {
  const int64_t seg = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (seg >= segs) return;
  const int64_t off = seg * group, c0 = off % D;
  const float* xs = x + off;
  const float* gs = dy + off;
  const float* ws = w + c0;
  double dot = 0;
  for (int64_t j = lane; j < group; j += 32) dot += double(gs[j]) * double(ws[j]) * double(xs[j]);
  dot = warp_sum(dot);
  const float r = rinv[seg];
  const float c = float(double(r) * double(r) * dot / double(group));
  float* ds = dx + off;
  for (int64_t j = lane; j < group; j += 32) ds[j] = r * (gs[j] * ws[j] - xs[j] * c);
}

// dw, pass 1: partial[s, c] = sum over the rows of slice s of dy * x * rinv (thread per column).
__global__ void k_rms_bwd_dw_partial(const float* __restrict__ x, const float* __restrict__ rinv,
                                     const float* __restrict__ dy, double* __restrict__ partial, int64_t N,
                                     int64_t D, int64_t group, int64_t rows_per_slice) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t s = blockIdx.y;
  if (c >= D) return;
  const int64_t r0 = s * rows_per_slice, r1 = r0 + rows_per_slice < N ? r0 + rows_per_slice : N;
  const int64_t ng = D / group, gi = c / group;
  double acc = 0;
  for (int64_t r = r0; r < r1; ++r) acc += double(dy[r * D + c]) * double(x[r * D + c]) * double(rinv[r * ng + gi]);
  partial[s * D + c] = acc;
}
// dw, pass 2: dw[c] = sum over slices in order.
__global__ void k_rms_bwd_dw_final(const double* __restrict__ partial, float* __restrict__ dw, int64_t D,
                                   int64_t slices) {
  KGRID_STRIDE(c, D) {
    double acc = 0;
    for (int64_t s = 0; s < slices; ++s) acc += partial[s * D + c];
    dw[c] = float(acc);
  }
}

int64_t dw_slices(int64_t N) { return std::max<int64_t>(1, std::min<int64_t>(kMaxSlices, (N + 31) / 32)); }

void check_group(const char* op, int64_t N, int64_t D, int64_t group) {
  TTT_CHECK(N >= 0 && D > 0 && group > 0 && D % group == 0,
            op << ": " << D << " columns are not divisible into groups of " << group << " (N = " << N << ")");
}

// ---- RoPE ------------------------------------------------------------------------------------------------
// Thread per (row, pair index i); loops over the heads. sign = +1: rotation, -1: inverse rotation.
__global__ void k_rope(const float* x, float* y, const int64_t* __restrict__ pos, int64_t N, int64_t heads,
                       int64_t hd, double theta, float sign) {
  const int64_t half = hd / 2, D = heads * hd;
  KGRID_STRIDE(e, N * half) {
    const int64_t r = e / half, i = e % half;
    const double inv_freq = pow(theta, -2.0 * double(i) / double(hd));
    const double a = double(pos[r]) * inv_freq;
    double sd, cd;
    sincos(a, &sd, &cd);
    const float c = float(cd), s = sign * float(sd);
    const float* xr = x + r * D;
    float* yr = y + r * D;
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t c0 = h * hd;
      const float x1 = xr[c0 + i], x2 = xr[c0 + half + i];
      yr[c0 + i] = x1 * c - x2 * s;
      yr[c0 + half + i] = x2 * c + x1 * s;
    }
  }
}

void rope_launch(const float* x, float* y, const int64_t* pos, int64_t N, int64_t heads, int64_t hd, double theta,
                 float sign, void* stream, const char* name) {
  TTT_CHECK(N >= 0 && heads >= 1 && hd >= 2 && hd % 2 == 0, name << ": head width " << hd << " must be even and > 0, "
                                                                 << heads << " heads");
  TTT_CHECK(theta > 0, name << ": theta must be positive, got " << theta);
  if (N == 0) return;
  k_rope<<<grid_for(N * (hd / 2)), kThreads, 0, as_stream(stream)>>>(x, y, pos, N, heads, hd, theta, sign);
  TTT_LAUNCH_CHECK(name);
}

// ---- cross-entropy ---------------------------------------------------------------------------------------
// Block per row: lse = max + log(sum exp(x - max)) (exp in float, sum in double).
__global__ void k_ce_fwd_rows(const float* __restrict__ logits, const int32_t* __restrict__ targets,
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
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, x[j]);
  mx = block_max(mx);
  double s = 0;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) s += double(expf(x[j] - mx));
  s = block_sum(s);
  if (threadIdx.x == 0) {
    const double ls = double(mx) + log(s);
    lse[r] = float(ls);
    if (row_loss) row_loss[r] = float(ls - double(x[t]));
  }
}
// One block: mean over the valid rows of lse - x[target], fixed order.
__global__ void k_ce_fwd_mean(const float* __restrict__ logits, const int32_t* __restrict__ targets,
                              const float* __restrict__ lse, float* __restrict__ loss, int32_t* __restrict__ valid,
                              int64_t N, int64_t V) {
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
// logits and dlogits may be the same array (each element is read, then written, by one thread): no __restrict__.
__global__ void k_ce_bwd(const float* logits, const int32_t* __restrict__ targets, const float* __restrict__ lse,
                         const int32_t* __restrict__ valid, const float* __restrict__ dloss, float* dlogits, int64_t N,
                         int64_t V) {
  const int32_t cnt = *valid;
  const float c = cnt > 0 ? (dloss ? *dloss : 1.f) / float(cnt) : 0.f;
  KGRID_STRIDE(e, N * V) {
    const int64_t r = e / V, j = e % V;
    const int32_t t = targets[r];
    float g = 0.f;
    if (t >= 0 && cnt > 0) {
      g = c * expf(logits[e] - lse[r]);
      if (j == t) g -= c;
    }
    dlogits[e] = g;
  }
}

// ---- AdamW -----------------------------------------------------------------------------------------------
// Explicitly rounded double operations (no contraction into FMAs): the CPU's arithmetic, operation by operation.
__global__ void k_adamw(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                        float* __restrict__ v, const uint8_t* __restrict__ mask, int64_t n, double b1, double omb1,
                        double b2, double omb2, double c1, double c2, double eps, double lr, double shrink) {
  KGRID_STRIDE(j, n) {
    if (mask && !mask[j]) continue;
    const double gj = double(g[j]);
    const double mj = __dadd_rn(__dmul_rn(b1, double(m[j])), __dmul_rn(omb1, gj));
    const double vj = __dadd_rn(__dmul_rn(b2, double(v[j])), __dmul_rn(__dmul_rn(omb2, gj), gj));
    m[j] = float(mj);
    v[j] = float(vj);
    const double upd = __ddiv_rn(__ddiv_rn(mj, c1), __dadd_rn(__dsqrt_rn(__ddiv_rn(vj, c2)), eps));
    p[j] = float(__dsub_rn(__dmul_rn(double(p[j]), shrink), __dmul_rn(lr, upd)));
  }
}

}  // namespace

// ---- public API ------------------------------------------------------------------------------------------
namespace {
template <class Out>
void rms_norm_launch(const float* x, const float* w, Out* y, float* rinv, int64_t N, int64_t D, int64_t group,
                     double eps, void* stream) {
  check_group("rms_norm_forward", N, D, group);
  const int64_t segs = N * (D / group);
  if (segs == 0) return;
  const int blocks = int((segs + kWarpsPerBlock - 1) / kWarpsPerBlock);
  const bool vec = group % 4 == 0 && aligned16(x) && aligned16(w) && aligned16(y);
  if (vec)
    k_rms_fwd<true><<<blocks, kThreads, 0, as_stream(stream)>>>(x, w, y, rinv, segs, D, group, eps);
  else
    k_rms_fwd<false><<<blocks, kThreads, 0, as_stream(stream)>>>(x, w, y, rinv, segs, D, group, eps);
  TTT_LAUNCH_CHECK("rms_norm_forward");
}
}  // namespace

void rms_norm_forward(const float* x, const float* w, float* y, float* rinv, int64_t N, int64_t D, int64_t group,
                      double eps, void* stream) {
  rms_norm_launch(x, w, y, rinv, N, D, group, eps, stream);
}
void rms_norm_forward(const float* x, const float* w, bf16* y, float* rinv, int64_t N, int64_t D, int64_t group,
                      double eps, void* stream) {
  rms_norm_launch(x, w, reinterpret_cast<__nv_bfloat16*>(y), rinv, N, D, group, eps, stream);
}

size_t rms_norm_backward_workspace(int64_t N, int64_t D) { return size_t(dw_slices(N)) * size_t(D) * sizeof(double); }

void rms_norm_backward(const float* x, const float* w, const float* rinv, const float* dy, float* dx, float* dw,
                       void* work, int64_t N, int64_t D, int64_t group, void* stream) {
  check_group("rms_norm_backward", N, D, group);
  const cudaStream_t st = as_stream(stream);
  const int64_t segs = N * (D / group);
  if (dx && segs > 0) {
    const int blocks = int((segs + kWarpsPerBlock - 1) / kWarpsPerBlock);
    k_rms_bwd_dx<<<blocks, kThreads, 0, st>>>(x, w, rinv, dy, dx, segs, D, group);
    TTT_LAUNCH_CHECK("rms_norm_backward dx");
  }
  if (dw) {
    TTT_CHECK(work, "rms_norm_backward: dw needs a work buffer of rms_norm_backward_workspace(N, D) bytes");
    if (N == 0) {
      TTT_CUDA_CHECK(cudaMemsetAsync(dw, 0, size_t(D) * sizeof(float), st));
      return;
    }
    const int64_t slices = dw_slices(N), rows = (N + slices - 1) / slices;
    const dim3 grid(unsigned((D + kThreads - 1) / kThreads), unsigned(slices));
    k_rms_bwd_dw_partial<<<grid, kThreads, 0, st>>>(x, rinv, dy, static_cast<double*>(work), N, D, group, rows);
    TTT_LAUNCH_CHECK("rms_norm_backward dw partial");
    k_rms_bwd_dw_final<<<grid_for(D), kThreads, 0, st>>>(static_cast<const double*>(work), dw, D, slices);
    TTT_LAUNCH_CHECK("rms_norm_backward dw final");
  }
}

void rms_norm_heads_forward(const float* x, const float* w, float* y, float* rinv, int64_t N, int64_t D,
                            int64_t heads, double eps, void* stream) {
  TTT_CHECK(heads >= 1 && D % heads == 0, "rms_norm_heads_forward: " << D << " columns, " << heads << " heads");
  rms_norm_forward(x, w, y, rinv, N, D, D / heads, eps, stream);
}
void rms_norm_heads_backward(const float* x, const float* w, const float* rinv, const float* dy, float* dx,
                             float* dw, void* work, int64_t N, int64_t D, int64_t heads, void* stream) {
  TTT_CHECK(heads >= 1 && D % heads == 0, "rms_norm_heads_backward: " << D << " columns, " << heads << " heads");
  rms_norm_backward(x, w, rinv, dy, dx, dw, work, N, D, D / heads, stream);
}

void rope_forward(const float* x, float* y, const int64_t* pos, int64_t N, int64_t heads, int64_t hd, double theta,
                  void* stream) {
  rope_launch(x, y, pos, N, heads, hd, theta, 1.f, stream, "rope_forward");
}
void rope_backward(const float* dy, float* dx, const int64_t* pos, int64_t N, int64_t heads, int64_t hd,
                   double theta, void* stream) {
  rope_launch(dy, dx, pos, N, heads, hd, theta, -1.f, stream, "rope_backward");
}

void cross_entropy_forward(const float* logits, const int32_t* targets, float* lse, float* row_loss, float* loss,
                           int32_t* valid, int64_t N, int64_t V, void* stream) {
  TTT_CHECK(N >= 0 && V > 0, "cross_entropy_forward: logits [" << N << "," << V << "]");
  const cudaStream_t st = as_stream(stream);
  if (N > 0) {
    TTT_CHECK(N < (int64_t(1) << 31), "cross_entropy_forward: " << N << " rows");
    k_ce_fwd_rows<<<unsigned(N), kThreads, 0, st>>>(logits, targets, lse, row_loss, V);
    TTT_LAUNCH_CHECK("cross_entropy_forward rows");
  }
  k_ce_fwd_mean<<<1, 1024, 0, st>>>(logits, targets, lse, loss, valid, N, V);
  TTT_LAUNCH_CHECK("cross_entropy_forward mean");
}

void cross_entropy_backward(const float* logits, const int32_t* targets, const float* lse, const int32_t* valid,
                            const float* dloss, float* dlogits, int64_t N, int64_t V, void* stream) {
  TTT_CHECK(N >= 0 && V > 0, "cross_entropy_backward: logits [" << N << "," << V << "]");
  if (N == 0) return;
  k_ce_bwd<<<grid_for(N * V), kThreads, 0, as_stream(stream)>>>(logits, targets, lse, valid, dloss, dlogits, N, V);
  TTT_LAUNCH_CHECK("cross_entropy_backward");
}

void adamw_step(float* p, const float* g, float* m, float* v, const uint8_t* mask, int64_t n, const AdamWParams& a,
                void* stream) {
  TTT_CHECK(a.step >= 1, "adamw_step: step must be >= 1, got " << a.step);
  TTT_CHECK(a.beta1 >= 0 && a.beta1 < 1 && a.beta2 >= 0 && a.beta2 < 1 && a.eps > 0 && a.weight_decay >= 0,
            "adamw_step: invalid hyperparameters");
  if (n == 0) return;
  // Host-side constants exactly as AdamW::step computes them.
  const double c1 = 1.0 - std::pow(a.beta1, double(a.step)), c2 = 1.0 - std::pow(a.beta2, double(a.step));
  const double shrink = a.decay ? 1.0 - a.lr * a.weight_decay : 1.0;
  k_adamw<<<grid_for(n), kThreads, 0, as_stream(stream)>>>(p, g, m, v, mask, n, a.beta1, 1.0 - a.beta1, a.beta2,
                                                           1.0 - a.beta2, c1, c2, a.eps, a.lr, shrink);
  TTT_LAUNCH_CHECK("adamw_step");
}

void stream_synchronize(void* stream) { TTT_CUDA_CHECK(cudaStreamSynchronize(as_stream(stream))); }

}  // namespace ttt::cuda
