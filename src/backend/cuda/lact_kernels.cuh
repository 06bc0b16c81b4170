// Kernels of the LaCT operator's CUDA backend (lact_cuda.cu, its only includer): element-wise steps (the shared
// TTT_HOST_DEVICE per-element math of ttt/lact_fused.h and core/scalar_math.h), row-wise passes over a state, the
// Newton-Schulz layout, and batched reductions in two fixed stages (double accumulators: deterministic).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "ttt/lact_fused.h"

namespace ttt::cuda {
namespace {

using Acc = double;  // accumulator of every reduction
constexpr int kThreads = 256;
constexpr int kMaxSlices = int(lact::kDotSlices);  // blocks per batch item in the first stage of a batched reduction

int grid_for(int64_t n) { return int(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, 1 << 20))); }
int warp_grid(int64_t rows) { return int((rows * 32 + kThreads - 1) / kThreads); }

#define GRID_STRIDE(i, n) \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

__device__ __forceinline__ Acc warp_sum(Acc v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// ---- element-wise kernels -----------------------------------------------------------------------------
template <class T>
__global__ void k_add(T* dst, const T* src, int64_t n) {
  GRID_STRIDE(i, n) dst[i] += src[i];
}
template <class T>
__global__ void k_sqrt(T* x, int64_t n) {
  GRID_STRIDE(i, n) x[i] = math::sqrt(x[i]);
}
template <class T>
__global__ void k_axpy_batched(T* dst, const T* D, const T* S, const T* s, int64_t per, int64_t n) {
  GRID_STRIDE(i, n) dst[i] = D[i] + s[i / per] * S[i];
}
template <class T>
__global__ void k_fill_chunk(T* g, const T* val, T scale, int64_t c0, int64_t len, int64_t T_, int64_t n) {
  GRID_STRIDE(i, n) {
    const int64_t b = i / len, t = c0 + i % len;
    g[b * T_ + t] = val[b] * scale;
  }
}
template <class T>
__global__ void k_pack_state(const T* w0, const T* w1, const T* w2, T* A, int64_t P, int64_t n) {
  GRID_STRIDE(i, n) {
    const int64_t b = i / (3 * P), s = (i / P) % 3, e = i % P;
    const T* src = s == 0 ? w0 : s == 1 ? w2 : w1;
    A[i] = src[b * P + e];
  }
}
template <class T>
__global__ void k_unpack_grad(const T* dA, const T* tau, const T* dtau, const T* A0, T* gw0, T* gw1, T* gw2,
                              lact::Geom g, int64_t n) {
  const int64_t P = g.P();
  GRID_STRIDE(i, n) {
    const int64_t b = i / (3 * P), e = i % P;
    const int s = int((i / P) % 3);
    T val = dA[i];
    if (tau) {
      const int64_t r = s == 0 ? e / g.d : s == 1 ? g.dh + e / g.d : 2 * g.dh + e / g.dh;
      const T nrm = tau[b * g.rows() + r];
      if (nrm != T(0)) val += dtau[b * g.rows() + r] / nrm * A0[i];
    }
    T* dst = s == 0 ? gw0 : s == 1 ? gw2 : gw1;
    dst[b * P + e] = val;
  }
}
// Row-based chunk kernels (one block per token row of the chunk, no 64-bit divisions per element). The
// outputs that only feed matrix products are written as O: float/double, or bf16 in the bf16 mode (the bf16
// operand is then produced where the value is computed, instead of by a separate conversion pass).
template <class O, class T>
__device__ __forceinline__ void st_(O* p, T v) {
  if constexpr (std::is_same<O, __nv_bfloat16>::value) *p = __float2bfloat16_rn(float(v));
  else *p = O(v);
}
constexpr int kRowThreads = 128;
template <class T, class O>
__global__ void k_swiglu_rows(const T* __restrict__ GH, O* __restrict__ a, int dh) {
  const int64_t r = blockIdx.x;
  const T* gh = GH + r * 2 * dh;
  for (int j = threadIdx.x; j < dh; j += blockDim.x) st_(a + r * dh + j, lact::swiglu_elem(gh[j], gh[dh + j]));
}
template <class T, class O>
__global__ void k_swiglu_bwd_rows(const T* __restrict__ GH, const T* __restrict__ da, O* __restrict__ dGH,
                                  O* __restrict__ a, int dh) {
  const int64_t r = blockIdx.x;
  const T* gh = GH + r * 2 * dh;
  for (int j = threadIdx.x; j < dh; j += blockDim.x) {
    T av, dg, dhv;
    lact::swiglu_elem_bwd(gh[j], gh[dh + j], da[r * dh + j], av, dg, dhv);
    st_(a + r * dh + j, av);
    st_(dGH + r * 2 * dh + j, dg);
    st_(dGH + r * 2 * dh + dh + j, dhv);
  }
}
// update_terms and the lr1-scaled values in one pass: a, R = [r0 | r2], Vl = lr1 v.
template <class T, class O>
__global__ void k_update_terms_rows(const T* __restrict__ GH, const T* __restrict__ U, const T* __restrict__ v,
                                    const T* __restrict__ lr0, const T* __restrict__ lr1, const T* __restrict__ lr2,
                                    int64_t c0, int len, int64_t T_, int d, int dh, O* __restrict__ a,
                                    O* __restrict__ R, O* __restrict__ Vl) {
  const int64_t r = blockIdx.x, tok = (r / len) * T_ + c0 + r % len;
  const T l0 = lr0[tok], l1 = lr1[tok], l2 = lr2[tok];
  const T* gh = GH + r * 2 * dh;
  for (int j = threadIdx.x; j < dh; j += blockDim.x) {
    T av, r0, r2;
    lact::update_elem(gh[j], gh[dh + j], U[r * dh + j], l0, l2, av, r0, r2);
    st_(a + r * dh + j, av);
    st_(R + r * 2 * dh + j, r0);
    st_(R + r * 2 * dh + dh + j, r2);
  }
  for (int j = threadIdx.x; j < d; j += blockDim.x) st_(Vl + r * d + j, l1 * v[tok * d + j]);
}
// One warp per token row of the chunk (the three rate gradients are warp sums, accumulated in double).
template <class T, class O>
__global__ void k_update_terms_bwd_rows(const T* GH, const T* U, const T* v, const T* lr0, const T* lr1,
                                        const T* lr2, int64_t c0, int64_t len, int64_t T_, int d, int dh,
                                        const T* dR, const T* dVl, const T* da, O* dGH, O* dU, T* glr0, T* glr1,
                                        T* glr2, T* gv, int64_t rows) {
  const int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  const int64_t tok = (r / len) * T_ + c0 + r % len;
  const T l0 = lr0[tok], l1 = lr1[tok], l2 = lr2[tok];
  const T *gh = GH + r * 2 * dh, *dr = dR + r * 2 * dh;
  Acc s0 = 0, s1 = 0, s2 = 0;
  for (int j = lane; j < dh; j += 32) {
    T t0, t2, dg, dhv, du;
    lact::update_elem_bwd(gh[j], gh[dh + j], U[r * dh + j], l0, l2, dr[j], dr[dh + j], da[r * dh + j], dg, dhv, du,
                          t0, t2);
    st_(dGH + r * 2 * dh + j, dg);
    st_(dGH + r * 2 * dh + dh + j, dhv);
    st_(dU + r * dh + j, du);
    s0 += t0;
    s2 += t2;
  }
  for (int j = lane; j < d; j += 32) {
    const T dv = dVl[r * d + j];
    s1 += Acc(v[tok * d + j]) * dv;
    gv[tok * d + j] = l1 * dv;
  }
  s0 = warp_sum(s0);
  s1 = warp_sum(s1);
  s2 = warp_sum(s2);
  if (lane == 0) {
    glr0[tok] = T(s0);
    glr1[tok] = T(s1);
    glr2[tok] = T(s2);
  }
}

// ---- row-wise kernels over a state [B][3][P] (one warp per row) -------------------------------------------
template <class T>
__device__ __forceinline__ T m_at(const T* M, bool ns, const lact::Geom& g, int64_t m, int s, int64_t row,
                                  int64_t col) {
  return M[m * g.P() + (ns ? g.state_to_ns(s, row, col) : row * g.slot_cols(s) + col)];
}
struct RowRef {
  int64_t b, r, off, len, row;
  int s;
};
__device__ __forceinline__ bool row_ref(const lact::Geom& g, RowRef& rr, int& lane) {
  const int64_t w = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  lane = threadIdx.x & 31;
  if (w >= g.B * g.rows()) return false;
  rr.b = w / g.rows();
  rr.r = w % g.rows();
  rr.off = rr.b * 3 * g.P() + g.row_off(rr.r);
  rr.len = g.row_len(rr.r);
  rr.s = g.row_slot(rr.r);
  rr.row = g.row_in_slot(rr.r);
  return true;
}
template <class T>
__global__ void k_row_norms(const T* A, T* tau, lact::Geom g) {
  RowRef rr;
  int lane;
  if (!row_ref(g, rr, lane)) return;
  Acc ss = 0;
  for (int64_t j = lane; j < rr.len; j += 32) ss += Acc(A[rr.off + j]) * A[rr.off + j];
  ss = warp_sum(ss);
  if (lane == 0) tau[rr.b * g.rows() + rr.r] = T(sqrt(ss));
}
template <class T>
__global__ void k_weight_norm(const T* A, const T* tau, T* E, __nv_bfloat16* E16, lact::Geom g) {
  RowRef rr;
  int lane;
  if (!row_ref(g, rr, lane)) return;
  Acc ss = 0;
  for (int64_t j = lane; j < rr.len; j += 32) ss += Acc(A[rr.off + j]) * A[rr.off + j];
  ss = warp_sum(ss);
  const T f = tau[rr.b * g.rows() + rr.r] / (T(sqrt(ss)) + T(lact::kRowEps));
  for (int64_t j = lane; j < rr.len; j += 32) {
    const T y = A[rr.off + j] * f;
    E[rr.off + j] = y;
    if (E16) E16[rr.off + j] = __float2bfloat16_rn(float(y));
  }
}
// Row adjoint of y = x tau/(n+eps) (see CpuOps::row_norm_bwd); x and dy are given by functors of the column.
template <class T, class X, class DY>
__device__ __forceinline__ void row_norm_bwd_warp(X x, int64_t len, int lane, T tau, DY dy, T* dx, bool inplace,
                                                  T* dtau) {
  Acc ss = 0, dot = 0;
  for (int64_t j = lane; j < len; j += 32) {
    const T xj = x(j);
    ss += Acc(xj) * xj;
    dot += Acc(dy(j)) * xj;
  }
  ss = warp_sum(ss);
  dot = warp_sum(dot);
  const T n = T(sqrt(ss)), den = n + T(lact::kRowEps);
  const T f = tau / den;
  const T h = n == T(0) ? T(0) : T(dot) * tau / (den * den) / n;
  for (int64_t j = lane; j < len; j += 32) {
    const T v = f * dy(j) - h * x(j);
    if (inplace) dx[j] = v;
    else dx[j] += v;
  }
  if (lane == 0) *dtau += T(dot) / den;
}
template <class T>
__global__ void k_weight_norm_bwd(const T* A, const T* tau, const T* dE, T* dA, T* dtau, lact::Geom g) {
  RowRef rr;
  int lane;
  if (!row_ref(g, rr, lane)) return;
  const T* x = A + rr.off;
  const T* dy = dE + rr.off;
  row_norm_bwd_warp<T>([x](int64_t j) { return x[j]; }, rr.len, lane, tau[rr.b * g.rows() + rr.r],
                       [dy](int64_t j) { return dy[j]; }, dA + rr.off, false, dtau + rr.b * g.rows() + rr.r);
}
template <class T>
__global__ void k_step(const T* A, const T* M, bool ns, const T* tau, T* An, __nv_bfloat16* An16, lact::Geom g) {
  RowRef rr;
  int lane;
  if (!row_ref(g, rr, lane)) return;
  const int64_t m = rr.b * 3 + rr.s;
  T f = T(1);
  if (tau) {
    Acc ss = 0;
    for (int64_t j = lane; j < rr.len; j += 32) {
      const T z = A[rr.off + j] + m_at(M, ns, g, m, rr.s, rr.row, j);
      ss += Acc(z) * z;
    }
    ss = warp_sum(ss);
    f = tau[rr.b * g.rows() + rr.r] / (T(sqrt(ss)) + T(lact::kRowEps));
  }
  for (int64_t j = lane; j < rr.len; j += 32) {
    const T y = (A[rr.off + j] + m_at(M, ns, g, m, rr.s, rr.row, j)) * f;
    An[rr.off + j] = y;
    if (An16) An16[rr.off + j] = __float2bfloat16_rn(float(y));
  }
}
template <class T>
__global__ void k_step_bwd(const T* A, const T* M, bool ns, const T* tau, T* dA, const T* dA_add, T* dtau,
                           lact::Geom g) {
  RowRef rr;
  int lane;
  if (!row_ref(g, rr, lane)) return;
  const int64_t m = rr.b * 3 + rr.s;
  const T* a = A + rr.off;
  const lact::Geom gg = g;
  const RowRef r2 = rr;
  auto z = [a, M, ns, gg, m, r2](int64_t j) { return a[j] + m_at(M, ns, gg, m, r2.s, r2.row, j); };
  // dA (+ dA_add) holds dL/dA_next on entry, dA dL/dZ on exit (each lane reads its own columns before writing them).
  const T* dy = dA + rr.off;
  const T* add = dA_add ? dA_add + rr.off : nullptr;
  row_norm_bwd_warp<T>(z, rr.len, lane, tau[rr.b * g.rows() + rr.r],
                       [dy, add](int64_t j) { return add ? dy[j] + add[j] : dy[j]; }, dA + rr.off, true,
                       dtau + rr.b * g.rows() + rr.r);
}

// ---- Newton-Schulz layout ------------------------------------------------------------------------------
template <class T>
__global__ void k_to_ns(const T* src, T* dst, const T* nrm, lact::Geom g, int64_t n) {
  const int64_t P = g.P(), q = g.q();
  GRID_STRIDE(i, n) {
    const int64_t m = i / P, e = i % P;
    const int s = int(m % 3);
    const T f = nrm ? T(1) / (nrm[m] + T(lact::kNsEps)) : T(1);
    dst[i] = src[m * P + g.ns_to_state(s, e / q, e % q)] * f;
  }
}
template <class T>
__global__ void k_ns_norm_bwd(const T* dX0, const T* Pm, const T* nrm, const T* dot, T* dP, lact::Geom g, int64_t n) {
  const int64_t P = g.P();
  GRID_STRIDE(i, n) {
    const int64_t m = i / P, e = i % P;
    const int s = int(m % 3);
    const int64_t cols = g.slot_cols(s);
    const T r = T(1) / (nrm[m] + T(lact::kNsEps));
    const T h = nrm[m] == T(0) ? T(0) : r * dot[m] / nrm[m];
    dP[i] = r * dX0[m * P + g.state_to_ns(s, e / cols, e % cols)] - h * Pm[i];
  }
}

// ---- batched reductions (two fixed stages: deterministic) ----------------------------------------------
// The block's sum of every thread's `acc` (warps first, then the warp sums in warp order: a fixed order) into *out.
__device__ __forceinline__ void store_block_partial(Acc acc, Acc* out) {
  __shared__ Acc sh[kThreads / 32];
  acc = warp_sum(acc);
  if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = acc;
  __syncthreads();
  if (threadIdx.x < 32) {
    acc = threadIdx.x < kThreads / 32 ? sh[threadIdx.x] : Acc(0);
    acc = warp_sum(acc);
    if (threadIdx.x == 0) *out = acc;
  }
}
template <class T>
__global__ void k_dot_partial(const T* x, const T* y, int64_t per, int64_t stride, Acc* partial) {
  const int64_t b = blockIdx.y;
  const int slices = gridDim.x;
  const T* xb = x + b * stride;
  const T* yb = y ? y + b * stride : nullptr;
  Acc acc = 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < per; i += int64_t(slices) * blockDim.x)
    acc += yb ? Acc(xb[i]) * yb[i] : Acc(xb[i]);
  store_block_partial(acc, partial + b * slices + blockIdx.x);
}
// The momentum mix's adjoint (CpuOps::momentum_bwd), grid (slices, B) as k_dot_partial, whose partial sums of
// <dP, S> it writes in the same order: dP = dM + dS (fp32, and/or its bf16 operand copy dP16 when only
// products read it), dS = mbar dP.
template <class T>
__global__ void k_momentum_bwd(const T* dM, T* dS, const T* S, const T* mbar, T* dP, __nv_bfloat16* dP16,
                               int64_t per, Acc* partial) {
  const int64_t b = blockIdx.y, off = b * per;
  const int slices = gridDim.x;
  const T m = mbar[b];
  Acc acc = 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < per; i += int64_t(slices) * blockDim.x) {
    const T p = dM[off + i] + dS[off + i];
    if (dP) dP[off + i] = p;
    if (dP16) dP16[off + i] = __float2bfloat16(float(p));
    dS[off + i] = m * p;
    acc += Acc(p) * S[off + i];
  }
  store_block_partial(acc, partial + b * slices + blockIdx.x);
}
template <class T>
__global__ void k_dot_final(const Acc* partial, int slices, T scale, T* out) {
  const int64_t b = blockIdx.x;
  Acc acc = 0;
  for (int i = threadIdx.x; i < slices; i += 32) acc += partial[b * slices + i];
  acc = warp_sum(acc);
  if (threadIdx.x == 0) out[b] = T(Acc(scale) * acc);
}

}  // namespace
}  // namespace ttt::cuda
