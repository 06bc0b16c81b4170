// Kernels of the LaCT operator's CUDA backend (lact_cuda.cu, its only includer): element-wise steps (the shared
// TTT_HOST_DEVICE per-element math of ttt/lact_fused.h and core/scalar_math.h), row-wise passes over a state, the
// Newton-Schulz layout, and batched reductions in two fixed stages (double accumulators: deterministic).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "backend/cuda/kernel_util.cuh"  // kThreads, grid_for, GRID_STRIDE, warp_sum, block_sum
#include "ttt/lact_fused.h"

namespace ttt::cuda {
namespace {

using Acc = double;  // accumulator of every reduction (kernel_util.cuh's warp_sum)
constexpr int kMaxSlices = int(lact::kDotSlices);  // blocks per batch item in the first stage of a batched reduction

// Blocks for one warp per row, every row its own warp (the row kernels index rows by warp, with no stride loop:
// unlike kernel_util.cuh's warp_grid, no cap on the block count).
int row_warp_grid(int64_t rows) { return int((rows * 32 + kThreads - 1) / kThreads); }

// Values of fp16 storage (LactOptions::ns5_fp16) in the kernels' arithmetic, and back (round to nearest even).
__device__ __forceinline__ float ld_val(__half x) { return __half2float(x); }
__device__ __forceinline__ float ld_val(float x) { return x; }
__device__ __forceinline__ double ld_val(double x) { return x; }
template <class D>
__device__ __forceinline__ D st_val(float x) {
  if constexpr (std::is_same<D, __half>::value) return __float2half_rn(x);
  else return D(x);
}
template <class D>
__device__ __forceinline__ D st_val(double x) {
  if constexpr (std::is_same<D, __half>::value) return __float2half_rn(float(x));
  else return D(x);
}

// ---- element-wise kernels -----------------------------------------------------------------------------
// dst = src converted (fp16 storage <-> float).
template <class S, class D>
__global__ void k_convert(const S* src, D* dst, int64_t n) {
  GRID_STRIDE(i, n) dst[i] = st_val<D>(ld_val(src[i]));
}
template <class T>
__global__ void k_add(T* dst, const T* src, int64_t n) {
  GRID_STRIDE(i, n) dst[i] += src[i];
}
template <class T>
__global__ void k_sqrt(T* x, int64_t n) {
  GRID_STRIDE(i, n) x[i] = math::sqrt(x[i]);
}
template <class T>
__global__ void k_round_up_pow2(T* x, int64_t n) {
  GRID_STRIDE(i, n) x[i] = lact::pow2_at_least(x[i]);
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
// 4-wide access (v4 in the kernels below: float data, row lengths and offsets multiples of 4, 16-byte aligned fp32
// rows): four consecutive elements a thread, one 16-byte load per fp32 operand and one 16-byte (fp32) or 8-byte
// (bf16) store per output, the same per-element math.
__device__ __forceinline__ float4 ld4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ void st4(float* p, const float (&v)[4]) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void st4(__nv_bfloat16* p, const float (&v)[4]) {
  const __nv_bfloat162 lo = __floats2bfloat162_rn(v[0], v[1]), hi = __floats2bfloat162_rn(v[2], v[3]);
  uint2 u;
  u.x = *reinterpret_cast<const uint32_t*>(&lo);
  u.y = *reinterpret_cast<const uint32_t*>(&hi);
  *reinterpret_cast<uint2*>(p) = u;
}
__device__ __forceinline__ void to_arr(float4 v, float (&x)[4]) { x[0] = v.x, x[1] = v.y, x[2] = v.z, x[3] = v.w; }
template <class T>
constexpr bool kIsFloat = std::is_same<T, float>::value;
// The products' outputs the chunk kernels read ([g|h], V W1, dR, Y, da) are I: the compute type T, or bf16 where the
// products write bf16 (LactOptions::bf16_outputs); the kernels compute in T from the loaded values.
template <class T, class I>
__device__ __forceinline__ T ld_(const I* p) {
  if constexpr (std::is_same<I, __nv_bfloat16>::value) return T(__bfloat162float(*p));
  else return T(*p);
}
__device__ __forceinline__ void load4(const float* p, float (&x)[4]) { to_arr(ld4(p), x); }
__device__ __forceinline__ void load4(const __nv_bfloat16* p, float (&x)[4]) {  // one 8-byte load
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
  const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
  x[0] = lo.x, x[1] = lo.y, x[2] = hi.x, x[3] = hi.y;
}

template <class T, class I, class O>
__global__ void k_swiglu_rows(const I* __restrict__ GH, O* __restrict__ a, int dh, bool v4) {
  const int64_t r = blockIdx.x;
  const I* gh = GH + r * 2 * dh;
  if constexpr (kIsFloat<T>) {
    if (v4) {
      for (int j = 4 * threadIdx.x; j < dh; j += 4 * blockDim.x) {
        float g[4], h[4], y[4];
        load4(gh + j, g);
        load4(gh + dh + j, h);
        for (int e = 0; e < 4; ++e) y[e] = lact::swiglu_elem(g[e], h[e]);
        st4(a + r * dh + j, y);
      }
      return;
    }
  }
  for (int j = threadIdx.x; j < dh; j += blockDim.x)
    st_(a + r * dh + j, lact::swiglu_elem(ld_<T>(gh + j), ld_<T>(gh + dh + j)));
}
template <class T, class I, class O>
__global__ void k_swiglu_bwd_rows(const I* __restrict__ GH, const I* __restrict__ da, O* __restrict__ dGH,
                                  O* __restrict__ a, int dh, bool v4) {
  const int64_t r = blockIdx.x;
  const I* gh = GH + r * 2 * dh;
  if constexpr (kIsFloat<T>) {
    if (v4) {
      for (int j = 4 * threadIdx.x; j < dh; j += 4 * blockDim.x) {
        float g[4], h[4], d[4], av[4], dg[4], dhv[4];
        load4(gh + j, g);
        load4(gh + dh + j, h);
        load4(da + r * dh + j, d);
        for (int e = 0; e < 4; ++e) lact::swiglu_elem_bwd(g[e], h[e], d[e], av[e], dg[e], dhv[e]);
        st4(a + r * dh + j, av);
        st4(dGH + r * 2 * dh + j, dg);
        st4(dGH + r * 2 * dh + dh + j, dhv);
      }
      return;
    }
  }
  for (int j = threadIdx.x; j < dh; j += blockDim.x) {
    T av, dg, dhv;
    lact::swiglu_elem_bwd(ld_<T>(gh + j), ld_<T>(gh + dh + j), ld_<T>(da + r * dh + j), av, dg, dhv);
    st_(a + r * dh + j, av);
    st_(dGH + r * 2 * dh + j, dg);
    st_(dGH + r * 2 * dh + dh + j, dhv);
  }
}
// The update's token terms in one pass: Al = lr1 a, R = [r0 | r2].
template <class T, class I, class O>
__global__ void k_update_terms_rows(const I* __restrict__ GH, const I* __restrict__ U, const T* __restrict__ lr0,
                                    const T* __restrict__ lr1, const T* __restrict__ lr2, int64_t c0, int len,
                                    int64_t T_, int dh, O* __restrict__ Al, O* __restrict__ R, bool v4) {
  const int64_t r = blockIdx.x, tok = (r / len) * T_ + c0 + r % len;
  const T l0 = lr0[tok], l1 = lr1[tok], l2 = lr2[tok];
  const I* gh = GH + r * 2 * dh;
  if constexpr (kIsFloat<T>) {
    if (v4) {
      for (int j = 4 * threadIdx.x; j < dh; j += 4 * blockDim.x) {
        float g[4], h[4], u[4], al[4], r0[4], r2[4];
        load4(gh + j, g);
        load4(gh + dh + j, h);
        load4(U + r * dh + j, u);
        for (int e = 0; e < 4; ++e) {
          float av;
          lact::update_elem(g[e], h[e], u[e], l0, l2, av, r0[e], r2[e]);
          al[e] = l1 * av;
        }
        st4(Al + r * dh + j, al);
        st4(R + r * 2 * dh + j, r0);
        st4(R + r * 2 * dh + dh + j, r2);
      }
      return;
    }
  }
  for (int j = threadIdx.x; j < dh; j += blockDim.x) {
    T av, r0, r2;
    lact::update_elem(ld_<T>(gh + j), ld_<T>(gh + dh + j), ld_<T>(U + r * dh + j), l0, l2, av, r0, r2);
    st_(Al + r * dh + j, l1 * av);
    st_(R + r * 2 * dh + j, r0);
    st_(R + r * 2 * dh + dh + j, r2);
  }
}
// Its adjoint from Y (the cotangent of Al) and dR: per token row RdGH = [R | dGH] (4 dh) and AldU = [Al | dU]
// (2 dh), R and Al recomputed as k_update_terms_rows computes them (the same bits: the operands of the one-product
// dK and dV), and the rate gradients (g_lr1 = <a, Y>), one warp per token row of the chunk (the rate gradients are
// warp sums, accumulated in double).
template <class T, class I, class O>
__global__ void k_update_terms_bwd_rows(const I* GH, const I* U, const T* lr0, const T* lr1, const T* lr2, int64_t c0,
                                        int64_t len, int64_t T_, int dh, const I* dR, const I* Y, O* RdGH, O* AldU,
                                        T* glr0, T* glr1, T* glr2, int64_t rows, bool v4) {
  const int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  const int64_t tok = (r / len) * T_ + c0 + r % len;
  const T l0 = lr0[tok], l1 = lr1[tok], l2 = lr2[tok];
  const I *gh = GH + r * 2 * dh, *dr = dR + r * 2 * dh;
  O *rdgh = RdGH + r * 4 * dh, *aldu = AldU + r * 2 * dh;
  Acc s0 = 0, s1 = 0, s2 = 0;
  bool done = false;
  if constexpr (kIsFloat<T>) {
    if (v4) {  // lane: elements 4 lane .. 4 lane + 3, then 128 further on
      for (int j = 4 * lane; j < dh; j += 128) {
        float g[4], h[4], u[4], d0[4], d2[4], y[4], dg[4], dhv[4], du[4], al[4], r0[4], r2[4];
        load4(gh + j, g);
        load4(gh + dh + j, h);
        load4(U + r * dh + j, u);
        load4(dr + j, d0);
        load4(dr + dh + j, d2);
        load4(Y + r * dh + j, y);
        for (int e = 0; e < 4; ++e) {
          float av, t0, t2;
          lact::update_elem(g[e], h[e], u[e], l0, l2, av, r0[e], r2[e]);
          al[e] = l1 * av;
          lact::update_elem_bwd(g[e], h[e], u[e], l0, l2, d0[e], d2[e], l1 * y[e], dg[e], dhv[e], du[e], t0, t2);
          s0 += t0;
          s1 += Acc(lact::swiglu_elem(g[e], h[e])) * y[e];
          s2 += t2;
        }
        st4(rdgh + j, r0);
        st4(rdgh + dh + j, r2);
        st4(rdgh + 2 * dh + j, dg);
        st4(rdgh + 3 * dh + j, dhv);
        st4(aldu + j, al);
        st4(aldu + dh + j, du);
      }
      done = true;
    }
  }
  for (int j = lane; j < dh && !done; j += 32) {
    const T g = ld_<T>(gh + j), h = ld_<T>(gh + dh + j), u = ld_<T>(U + r * dh + j), y = ld_<T>(Y + r * dh + j);
    T av, r0, r2, t0, t2, dg, dhv, du;
    lact::update_elem(g, h, u, l0, l2, av, r0, r2);
    lact::update_elem_bwd(g, h, u, l0, l2, ld_<T>(dr + j), ld_<T>(dr + dh + j), l1 * y, dg, dhv, du, t0, t2);
    st_(rdgh + j, r0);
    st_(rdgh + dh + j, r2);
    st_(rdgh + 2 * dh + j, dg);
    st_(rdgh + 3 * dh + j, dhv);
    st_(aldu + j, l1 * av);
    st_(aldu + dh + j, du);
    s0 += t0;
    s1 += Acc(lact::swiglu_elem(g, h)) * y;
    s2 += t2;
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
// The right operands of the backward's one-product dK and dV (CpuOps::stack_bwd_operands): per head, DW (6P) =
// [dD02; E02] ([4dh, d]) then [dD1 | E1] ([d, 2dh]), from dD and E in state layout ([B][3P]). V: the element type
// (T, or bf16 copying the operands' bf16 shadows); one thread per destination element.
template <class V>
__global__ void k_stack_bwd_operands(const V* dD, const V* E, V* DW, lact::Geom g, int64_t n) {
  const int64_t P = g.P(), dh = g.dh;
  GRID_STRIDE(i, n) {
    const int64_t b = i / (6 * P), e = i % (6 * P);
    const V* src;
    if (e < 4 * P) {
      src = e < 2 * P ? dD + b * 3 * P + e : E + b * 3 * P + (e - 2 * P);
    } else {
      const int64_t f = e - 4 * P, row = f / (2 * dh), col = f % (2 * dh);
      src = (col < dh ? dD : E) + b * 3 * P + 2 * P + row * dh + (col < dh ? col : col - dh);
    }
    DW[i] = *src;
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
// The momentum mix and the step in one pass: P = D + mbar S (k_axpy_batched's arithmetic, written: the next
// momentum state), then k_step's with M = P in state layout.
template <class T>
__global__ void k_momentum_step(const T* A, const T* D, const T* S, const T* mbar, T* P, const T* tau, T* An,
                                __nv_bfloat16* An16, lact::Geom g, bool v4) {
  RowRef rr;
  int lane;
  if (!row_ref(g, rr, lane)) return;
  const T m = mbar[rr.b];
  const int64_t o = rr.off;
  if constexpr (kIsFloat<T>) {
    if (v4) {  // lane: elements 4 lane .. 4 lane + 3, then 128 further on
      float f = 1.0f;
      if (tau) {
        Acc ss = 0;
        for (int64_t j = 4 * lane; j < rr.len; j += 128) {
          float a[4], d[4], sv[4];
          to_arr(ld4(A + o + j), a);
          to_arr(ld4(D + o + j), d);
          to_arr(ld4(S + o + j), sv);
          for (int e = 0; e < 4; ++e) {
            const float p = d[e] + m * sv[e];
            const float z = a[e] + p;
            ss += Acc(z) * z;
          }
        }
        ss = warp_sum(ss);
        f = tau[rr.b * g.rows() + rr.r] / (float(sqrt(ss)) + float(lact::kRowEps));
      }
      for (int64_t j = 4 * lane; j < rr.len; j += 128) {
        float a[4], d[4], sv[4], p[4], y[4];
        to_arr(ld4(A + o + j), a);
        to_arr(ld4(D + o + j), d);
        to_arr(ld4(S + o + j), sv);
        for (int e = 0; e < 4; ++e) {
          p[e] = d[e] + m * sv[e];
          y[e] = (a[e] + p[e]) * f;
        }
        st4(P + o + j, p);
        st4(An + o + j, y);
        if (An16) st4(An16 + o + j, y);
      }
      return;
    }
  }
  T f = T(1);
  if (tau) {
    Acc ss = 0;
    for (int64_t j = lane; j < rr.len; j += 32) {
      const T p = D[o + j] + m * S[o + j];
      const T z = A[o + j] + p;
      ss += Acc(z) * z;
    }
    ss = warp_sum(ss);
    f = tau[rr.b * g.rows() + rr.r] / (T(sqrt(ss)) + T(lact::kRowEps));
  }
  for (int64_t j = lane; j < rr.len; j += 32) {
    const T p = D[o + j] + m * S[o + j];
    P[o + j] = p;
    const T y = (A[o + j] + p) * f;
    An[o + j] = y;
    if (An16) An16[o + j] = __float2bfloat16_rn(float(y));
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
// The step's adjoint (k_step_bwd's, M in state layout), then the momentum's (k_momentum_bwd's arithmetic) and the
// stacking of dP and A into DW (k_stack_bwd_operands' layout), one warp per state row: O is T, or bf16 where DW
// is a bf16 operand alone. row_dot[b rows + r] = <dP, S> over row r of head b (k_dot_final sums a head's rows).
template <class T, class O>
__global__ void k_step_momentum_bwd(const T* A, const T* M, const T* tau, T* dA, const T* dA_add, T* dtau, T* dS,
                                    const T* S, const T* mbar, O* DW, Acc* row_dot, lact::Geom g) {
  RowRef rr;
  int lane;
  if (!row_ref(g, rr, lane)) return;
  const int64_t o = rr.off;
  const T *a = A + o, *mm = M + o;
  auto z = [a, mm](int64_t j) { return a[j] + mm[j]; };
  const T* dy = dA + o;
  const T* add = dA_add ? dA_add + o : nullptr;
  row_norm_bwd_warp<T>(z, rr.len, lane, tau[rr.b * g.rows() + rr.r],
                       [dy, add](int64_t j) { return add ? dy[j] + add[j] : dy[j]; }, dA + o, true,
                       dtau + rr.b * g.rows() + rr.r);
  // Each lane reads back the columns it wrote (lane, lane + 32, ...): no exchange between lanes.
  const int64_t P = g.P(), head = rr.b * 6 * P;
  O *dwD, *dwE;  // this row's dP and A in DW
  if (rr.r < 2 * g.dh) {
    dwD = DW + head + rr.r * g.d;
    dwE = dwD + 2 * P;
  } else {
    dwD = DW + head + 4 * P + (rr.r - 2 * g.dh) * 2 * g.dh;
    dwE = dwD + g.dh;
  }
  const T m = mbar[rr.b];
  Acc dot = 0;
  for (int64_t j = lane; j < rr.len; j += 32) {
    const T p = dA[o + j] + dS[o + j];
    dS[o + j] = m * p;
    dot += Acc(p) * S[o + j];
    st_(dwD + j, p);
    st_(dwE + j, a[j]);
  }
  dot = warp_sum(dot);
  if (lane == 0) row_dot[rr.b * g.rows() + rr.r] = dot;
}

// ---- Newton-Schulz layout ------------------------------------------------------------------------------
// D: T, or __half for fp16 NS5 storage (LactOptions::ns5_fp16).
template <class T, class D>
__global__ void k_to_ns(const T* src, D* dst, const T* nrm, bool exact, lact::Geom g, int64_t n) {
  const int64_t P = g.P(), q = g.q();
  GRID_STRIDE(i, n) {
    const int64_t m = i / P, e = i % P;
    const int s = int(m % 3);
    const T f = nrm ? T(1) / (exact ? nrm[m] : nrm[m] + T(lact::kNsEps)) : T(1);
    dst[i] = st_val<D>(src[m * P + g.ns_to_state(s, e / q, e % q)] * f);
  }
}
// X: T, or __half (fp16 NS5 storage). scale: the adjoint's scale that to_ns divided out (lact_fused.h's contract).
template <class T, class X>
__global__ void k_ns_norm_bwd(const X* dX0, const T* Pm, const T* nrm, const T* dot, const T* scale, T* dP,
                              lact::Geom g, int64_t n) {
  const int64_t P = g.P();
  GRID_STRIDE(i, n) {
    const int64_t m = i / P, e = i % P;
    const int s = int(m % 3);
    const int64_t cols = g.slot_cols(s);
    const T r = T(1) / (nrm[m] + T(lact::kNsEps));
    const T h = nrm[m] == T(0) ? T(0) : r * dot[m] / nrm[m];
    const T f = scale ? scale[m] : T(1);
    dP[i] = (r * T(ld_val(dX0[m * P + g.state_to_ns(s, e / cols, e % cols)])) - h * Pm[i]) * f;
  }
}

// ---- batched reductions (two fixed stages: deterministic) ----------------------------------------------
// The block's sum of every thread's `acc` (warps first, then the warp sums in warp order: a fixed order) into *out.
__device__ __forceinline__ void store_block_partial(Acc acc, Acc* out) {
  block_sum(acc, [out](Acc sum) { *out = sum; });
}
// T: float, double, or __half (fp16 NS5 storage).
template <class T>
__global__ void k_dot_partial(const T* x, const T* y, int64_t per, int64_t stride, Acc* partial) {
  const int64_t b = blockIdx.y;
  const int slices = gridDim.x;
  const T* xb = x + b * stride;
  const T* yb = y ? y + b * stride : nullptr;
  Acc acc = 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < per; i += int64_t(slices) * blockDim.x)
    acc += yb ? Acc(ld_val(xb[i])) * Acc(ld_val(yb[i])) : Acc(ld_val(xb[i]));
  store_block_partial(acc, partial + b * slices + blockIdx.x);
}
// The momentum mix's adjoint (CpuOps::momentum_bwd), grid (slices, B) as k_dot_partial, whose partial sums of
// <dP, S> it writes in the same order: dP = dM + dS (fp32, and/or its bf16 operand copy dP16 when only
// products read it), dS = mbar dP.
template <class T>
__global__ void k_momentum_bwd(const T* dM, T* dS, const T* S, const T* mbar, T* dP, __nv_bfloat16* dP16,
                               int64_t per, Acc* partial, bool v4) {
  const int64_t b = blockIdx.y, off = b * per;
  const int slices = gridDim.x;
  const T m = mbar[b];
  Acc acc = 0;
  if constexpr (kIsFloat<T>) {
    if (v4) {  // a thread: 4 consecutive elements, then slices * blockDim * 4 further on
      for (int64_t i = 4 * (int64_t(blockIdx.x) * blockDim.x + threadIdx.x); i < per;
           i += 4 * int64_t(slices) * blockDim.x) {
        float dm[4], ds[4], sv[4], p[4], dsn[4];
        to_arr(ld4(dM + off + i), dm);
        to_arr(ld4(dS + off + i), ds);
        to_arr(ld4(S + off + i), sv);
        for (int e = 0; e < 4; ++e) {
          p[e] = dm[e] + ds[e];
          dsn[e] = m * p[e];
          acc += Acc(p[e]) * sv[e];
        }
        if (dP) st4(dP + off + i, p);
        if (dP16) st4(dP16 + off + i, p);
        st4(dS + off + i, dsn);
      }
      store_block_partial(acc, partial + b * slices + blockIdx.x);
      return;
    }
  }
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < per; i += int64_t(slices) * blockDim.x) {
    const T p = dM[off + i] + dS[off + i];
    if (dP) dP[off + i] = p;
    if (dP16) dP16[off + i] = __float2bfloat16(float(p));
    dS[off + i] = m * p;
    acc += Acc(p) * S[off + i];
  }
  store_block_partial(acc, partial + b * slices + blockIdx.x);
}
// Every chunk's mean of a [B,T] tensor: block (c, b) sums chunk c of head b (double, fixed order) into out[c B + b].
template <class T>
__global__ void k_chunk_means(const T* x, int64_t T_, int64_t chunk, T* out) {
  const int64_t c = blockIdx.x, b = blockIdx.y, c0 = c * chunk, n = T_ - c0 < chunk ? T_ - c0 : chunk;
  const T* xb = x + b * T_ + c0;
  Acc acc = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) acc += Acc(xb[i]);
  __shared__ Acc total;
  store_block_partial(acc, &total);
  if (threadIdx.x == 0) out[c * gridDim.y + b] = T(Acc(T(1) / T(n)) * total);
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
