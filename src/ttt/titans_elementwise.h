// The Titans memory's items and its per-element steps, split from titans_fused.h: the layout of the independent
// items a chunk step batches over (Group, make_groups) and every element-wise / per-row step of the algorithm as
// one functor (namespace fn), TTT_HOST_DEVICE code run by the CPU twin's loop and by the CUDA grid-stride
// kernels alike. titans_fused.h composes them; see its header comment for the algorithm and the layouts.
//
// This header is plain C++17 so that nvcc compiles it too.
#pragma once
#include <cstdint>
#include <vector>

#include "core/scalar_math.h"  // TTT_HOST_DEVICE, silu, sigmoid

namespace ttt::titans {

// ---- items --------------------------------------------------------------------------------------------
// Items i < items of one length `len`; item i belongs to sequence-head b0 + i / per_b and its token t
// (t < len) is the flat token index base + i * stride + t of the [B,T] tensors (row base + ... of [B,T,d]).
struct Group {
  int64_t items = 0, b0 = 0, per_b = 1, base = 0, stride = 0, len = 0;
  TTT_HOST_DEVICE int64_t b_of(int64_t i) const { return b0 + i / per_b; }
  TTT_HOST_DEVICE int64_t tok(int64_t i, int64_t t) const { return base + i * stride + t; }
};

// The groups of B sequence-heads of T tokens cut at every multiple of `period` (0 or >= T: no cut). When the
// period divides T: one group of B*T/period items; otherwise one group of full shards per sequence-head
// plus one group of the B tail shards.
inline std::vector<Group> make_groups(int64_t B, int64_t T, int64_t period) {
  const int64_t L = period > 0 && period < T ? period : T;
  const int64_t nfull = T / L, rem = T % L;
  std::vector<Group> out;
  if (rem == 0) {
    out.push_back({B * nfull, 0, nfull, 0, L, L});
    return out;
  }
  if (nfull > 0) {
    if (B == 1) out.push_back({nfull, 0, nfull, 0, L, L});
    else
      for (int64_t b = 0; b < B; ++b) out.push_back({nfull, b, nfull, b * T, L, L});
  }
  out.push_back({B, 0, 1, nfull * L, T, rem});
  return out;
}

// ---- per-element math (one source of truth for the CPU twin and the CUDA kernels) ------------------------
namespace fn {

// The scalar cores of the element steps below: each functor maps its flat index to operands and calls its core;
// the persistent kernels' fused epilogues (backend/cuda/titans_persistent_kernels.cuh), which already know the
// row and column of an element, call the cores directly.
// MseErr: e = 2 (y - v) with y = Y [+ k], bm = θ e.
template <class T>
TTT_HOST_DEVICE void mse_err_core(T y, T v, T theta, T& e, T& bm) {
  e = T(2) * (y - v);
  bm = theta * e;
}
// InnerA: dz = ds silu'(z), a = θ dz.
template <class T>
TTT_HOST_DEVICE void inner_a_core(T ds, T z, T theta, T& dz, T& a) {
  dz = ds * math::dsilu(z);
  a = theta * dz;
}
// Step: p = D + η̄ s (momentum), w' = (1 - ᾱ) w + p (decay); returns w', p in *p_out.
template <class T>
TTT_HOST_DEVICE T step_core(T w, const T* s, T D, T eta_bar, const T* alpha_bar, T* p_out) {
  const T p = D + (s ? eta_bar * *s : T(0));
  const T wd = alpha_bar ? (T(1) - *alpha_bar) * w : w;
  *p_out = p;
  return wd + p;
}
// InnerBwdH: dDS = θ dA silu'(z), dZ = θ dA DS silu''(z).
template <class T>
TTT_HOST_DEVICE void inner_bwd_h_core(T z, T ds, T da, T theta, T& dds, T& dz) {
  const T s = math::sigmoid(z), d1 = math::dsilu_from(z, s), d2 = math::d2silu_from(z, s);
  dds = theta * da * d1;
  dz = theta * da * ds * d2;
}
// InnerBwd2: dY = 2 dE; dv = -dY; dk = dY (residual) or 0. Returns dY.
template <class T>
TTT_HOST_DEVICE T inner_bwd2_core(T de, bool residual, T& gv, T& gk) {
  const T y = T(2) * de;
  gv = -y;
  gk = residual ? y : T(0);
  return y;
}
// QkFinalize: the projected row element acc / z (z > 0), else x (identity before any key).
template <class T>
TTT_HOST_DEVICE T qk_finalize_core(T acc, T x, T z) {
  return z > T(0) ? acc / z : x;
}

// W[i] = [W1⁰; W2⁰] of item i's sequence-head.                                        n = items * 2P
template <class T>
struct InitState {
  const T *w1, *w2;
  T* W;
  Group g;
  int64_t P;
  TTT_HOST_DEVICE void operator()(int64_t idx) const {
    const int64_t i = idx / (2 * P), e = idx % (2 * P), b = g.b_of(i);
    W[idx] = e < P ? w1[b * P + e] : w2[b * P + e - P];
  }
};
// out[c, i] = mean of x over chunk c of item i (one value per token). out is [N][items], so that the gate
// means of one chunk are a column of `items` values.                                 n = N * items
template <class T>
struct ChunkMean {
  const T* x;
  T* out;
  Group g;
  int64_t C;
  TTT_HOST_DEVICE void operator()(int64_t idx) const {
    const int64_t c = idx / g.items, i = idx % g.items, c0 = c * C;
    const int64_t n = g.len - c0 < C ? g.len - c0 : C;
    T acc = 0;
    for (int64_t t = 0; t < n; ++t) acc += x[g.tok(i, c0 + t)];
    out[idx] = acc / T(n);
  }
};
// The batched engine's chunk means, in two steps so that the GPU sums a long chunk with many threads: sums of
// blocks of kMeanBlock tokens (ChunkBlockSums), then the blocks' sums in order over the chunk's length
// (ChunkMeanOfBlocks). The persistent kernels take fn::ChunkMean (one running sum) instead: the same mean, in
// another order.
inline constexpr int64_t kMeanBlock = 32;
TTT_HOST_DEVICE int64_t mean_blocks(int64_t C) { return (C + kMeanBlock - 1) / kMeanBlock; }
// part[(c * items + i) * nb + b] = sum of x over tokens b kMeanBlock .. (b + 1) kMeanBlock of chunk c of item i
// (0 past the chunk's end); nb = mean_blocks(min(C, g.len)).                            n = N * items * nb
template <class T>
struct ChunkBlockSums {
  const T* x;
  T* part;
  Group g;
  int64_t C, nb;
  TTT_HOST_DEVICE void operator()(int64_t idx) const {
    const int64_t b = idx % nb, ci = idx / nb, c = ci / g.items, i = ci % g.items, c0 = c * C;
    const int64_t n = g.len - c0 < C ? g.len - c0 : C;
    const int64_t t0 = b * kMeanBlock, t1 = t0 + kMeanBlock < n ? t0 + kMeanBlock : n;
    T acc = 0;
    for (int64_t t = t0; t < t1; ++t) acc += x[g.tok(i, c0 + t)];
    part[idx] = acc;
  }
};
// out[c * items + i] = the mean of x over chunk c of item i from ChunkBlockSums' part (its blocks in order).
//                                                                                       n = N * items
template <class T>
struct ChunkMeanOfBlocks {
  const T* part;
  T* out;
  Group g;
  int64_t C, nb;
  TTT_HOST_DEVICE void operator()(int64_t idx) const {
    const int64_t c0 = (idx / g.items) * C, n = g.len - c0 < C ? g.len - c0 : C;
    T acc = 0;
    for (int64_t b = 0; b < mean_blocks(n); ++b) acc += part[idx * nb + b];
    out[idx] = acc / T(n);
  }
};
// ||row||² of one key row (d elements, in order).
template <class T>
TTT_HOST_DEVICE T row_squares(const T* row, int64_t d) {
  T acc = 0;
  for (int64_t j = 0; j < d; ++j) acc += row[j] * row[j];
  return acc;
}
// Sum of ||k_t||² over rows c0..c0+n of item i (the Q-K normalizer's share of one chunk): the rows' row_squares
// added in row order (training computes the rows' in parallel first: RowSquares, ChunkKeySquares).
template <class T>
TTT_HOST_DEVICE T key_squares(const T* k, const Group& g, int64_t i, int64_t c0, int64_t n, int64_t d) {
  T acc = 0;
  for (int64_t t = 0; t < n; ++t) acc += row_squares(k + g.tok(i, c0 + t) * d, d);
  return acc;
}
// The Q-K normalizer after one chunk (streaming): z_to[i] = z_from[i] + key_squares of the chunk. z_to may be
// z_from.                                                                                 n = items
template <class T>
struct AddKeySquares {
  const T* k;
  const T* z_from;
  T* z_to;
  Group g;
  int64_t c0, n, d;
  TTT_HOST_DEVICE void operator()(int64_t i) const { z_to[i] = z_from[i] + key_squares(k, g, i, c0, n, d); }
};
// rs[i * len + t] = row_squares of row t of item i (training's first step of key_squares).  n = items * len
template <class T>
struct RowSquares {
  const T* k;
  T* rs;
  Group g;
  int64_t d;
  TTT_HOST_DEVICE void operator()(int64_t idx) const {
    rs[idx] = row_squares(k + g.tok(idx / g.len, idx % g.len) * d, d);
  }
};
// Every chunk's key_squares at once (training) from RowSquares' rs, the same additions in the same order:
// cs[c * items + i].                                                                      n = items * N
template <class T>
struct ChunkKeySquares {
  const T* rs;
  T* cs;
  Group g;
  int64_t C;
  TTT_HOST_DEVICE void operator()(int64_t idx) const {
    const int64_t c = idx / g.items, i = idx % g.items, c0 = c * C;
    const int64_t n = g.len - c0 < C ? g.len - c0 : C;
    T acc = 0;
    for (int64_t t = 0; t < n; ++t) acc += rs[i * g.len + c0 + t];
    cs[idx] = acc;
  }
};
// z[c * items + i] = the sum of cs over the chunks before c, added in chunk order (the same additions as
// AddKeySquares chunk after chunk, so training and streaming agree bit for bit).           n = items
template <class T>
struct ExclusivePrefix {
  const T* cs;
  T* z;
  int64_t N, items;
  TTT_HOST_DEVICE void operator()(int64_t i) const {
    T acc = 0;
    for (int64_t c = 0; c < N; ++c) {
      z[c * items + i] = acc;
      acc += cs[c * items + i];
    }
  }
};
// Rows c0..c0+n of every item of a [B,T,cols] tensor: dst = src (src null: 0).        n = items * n * cols
template <class T>
struct CopyRows {
  T* dst;
  const T* src;
  Group g;
  int64_t c0, n, cols;
  TTT_HOST_DEVICE void operator()(int64_t idx) const {
    const int64_t i = idx / (n * cols), r = (idx / cols) % n, j = idx % cols;
    const int64_t off = g.tok(i, c0 + r) * cols + j;
    dst[off] = src ? src[off] : T(0);
  }
};
// S = silu(Z).
template <class T>
struct Silu {
  const T* Z;
  T* S;
  TTT_HOST_DEVICE void operator()(int64_t i) const { S[i] = math::silu(Z[i]); }
};
// E holds Y = silu(K W1ᵀ) W2ᵀ on entry: E = 2 (Y [+ k] - v) (the MSE output gradient), Bm = θ E.
//                                                                                      n = items * n * d
template <class T>
struct MseErr {
  T* E;
  T* Bm;
  const T *k, *v, *theta;
  Group g;
  int64_t c0, n, d;
  bool residual;
  TTT_HOST_DEVICE void operator()(int64_t idx) const {
    const int64_t i = idx / (n * d), r = (idx / d) % n, j = idx % d;
    const int64_t tok = g.tok(i, c0 + r);
    const T y = E[idx] + (residual ? k[tok * d + j] : T(0));
    mse_err_core(y, v[tok * d + j], theta[tok], E[idx], Bm[idx]);
  }
};
// DZ = DS silu'(Z), A = θ DZ, DS = E W2.                                               n = items * n * dh
template <class T>
struct InnerA {
  const T *DS, *Z, *theta;
  T *A, *DZ;
  Group g;
  int64_t c0, n, dh;
  TTT_HOST_DEVICE void operator()(int64_t idx) const {
    const int64_t i = idx / (n * dh), r = (idx / dh) % n;
    inner_a_core(DS[idx], Z[idx], theta[g.tok(i, c0 + r)], DZ[idx], A[idx]);
  }
};
// The update of one chunk: P = D + η̄ S (momentum), W' = (1 - ᾱ) W + P (decay), S' = P. eta_bar / alpha_bar
// hold the chunk's gate means per item. Element-wise, so W' / S' may be W / S (an update in place).
//                                                                                      n = items * 2P
template <class T>
struct Step {
  const T *W, *S, *D, *eta_bar, *alpha_bar;  // S / eta_bar null: no momentum; alpha_bar null: no decay
  T *Wn, *Sn;
  int64_t P2;
  TTT_HOST_DEVICE void operator()(int64_t idx) const {
    const int64_t i = idx / P2;
    T p;
    const T w = step_core(W[idx], S ? S + idx : nullptr, D[idx], S ? eta_bar[i] : T(0),
                          alpha_bar ? alpha_bar + i : nullptr, &p);
    Wn[idx] = w;
    if (Sn) Sn[idx] = p;
  }
};
// Adjoint of Step, first half: G = dW' + dS' (the cotangent of P).
template <class T>
struct StepBwdPre {
  const T *dW, *dS;
  T* G;
  TTT_HOST_DEVICE void operator()(int64_t i) const { G[i] = dS ? dW[i] + dS[i] : dW[i]; }
};
// Second half (after the dots): dW = (1 - ᾱ) dW', dS = η̄ G.
template <class T>
struct StepBwdPost {
  T *dW, *dS;
  const T *G, *eta_bar, *alpha_bar;
  int64_t P2;
  TTT_HOST_DEVICE void operator()(int64_t idx) const {
    const int64_t i = idx / P2;
    if (alpha_bar) dW[idx] *= T(1) - alpha_bar[i];
    if (dS) dS[idx] = eta_bar[i] * G[idx];
  }
};
// Gate gradients of the chunk's tokens: dη_t = <G, S>/n, dα_t = -<dW', W>/n.            n = items * n
template <class T>
struct FillGates {
  T *geta, *galpha;
  const T *etadot, *keepdot;
  Group g;
  int64_t c0, n;
  TTT_HOST_DEVICE void operator()(int64_t idx) const {
    const int64_t i = idx / n, r = idx % n, tok = g.tok(i, c0 + r);
    if (geta) geta[tok] = etadot[i] / T(n);
    if (galpha) galpha[tok] = -keepdot[i] / T(n);
  }
};
// Adjoint of A = θ DS silu'(Z) (the hidden side): dDS = θ dA silu'(Z), dZ = θ dA DS silu''(Z).
//                                                                                      n = items * n * dh
template <class T>
struct InnerBwdH {
  const T *Z, *DS, *dA, *theta;
  T *dDS, *dZ;
  Group g;
  int64_t c0, n, dh;
  TTT_HOST_DEVICE void operator()(int64_t idx) const {
    const int64_t i = idx / (n * dh), r = (idx / dh) % n;
    T dds, dz;
    inner_bwd_h_core(Z[idx], DS[idx], dA[idx], theta[g.tok(i, c0 + r)], dds, dz);
    dDS[idx] = dds;
    dZ[idx] = dz;
  }
};
// Adjoint of Bm = θ E (the output side): dE = θ dBm.                                     n = items * n * d
template <class T>
struct InnerBwdD {
  const T *dB, *theta;
  T* dE;
  Group g;
  int64_t c0, n, d;
  TTT_HOST_DEVICE void operator()(int64_t idx) const {
    const int64_t i = idx / (n * d), r = (idx / d) % n;
    dE[idx] = theta[g.tok(i, c0 + r)] * dB[idx];
  }
};
// dθ_t = <DZ_t, dA_t> + <E_t, dBm_t> (the two row dots, computed by batched_dot).         n = items * n
template <class T>
struct FillTheta {
  const T *r1, *r2;
  T* gtheta;
  Group g;
  int64_t c0, n;
  TTT_HOST_DEVICE void operator()(int64_t row) const { gtheta[g.tok(row / n, c0 + row % n)] = r1[row] + r2[row]; }
};
// dE -> dY = 2 dE (in place); dv = -dY; dk = dY (residual) or 0 (the GEMMs add the rest).  n = items * n * d
template <class T>
struct InnerBwd2 {
  T *dE, *gk, *gv;
  Group g;
  int64_t c0, n, d;
  bool residual;
  TTT_HOST_DEVICE void operator()(int64_t idx) const {
    const int64_t i = idx / (n * d), r = (idx / d) % n, j = idx % d;
    const int64_t off = g.tok(i, c0 + r) * d + j;
    dE[idx] = inner_bwd2_core(dE[idx], residual, gv[off], gk[off]);
  }
};
// dZ (+)= dS silu'(Z).
template <class T>
struct DsiluMul {
  const T *dS, *Z;
  T* dZ;
  bool accumulate;
  TTT_HOST_DEVICE void operator()(int64_t i) const {
    dZ[i] = (accumulate ? dZ[i] : T(0)) + dS[i] * math::dsilu(Z[i]);
  }
};
// g_w{1,2}[b] += sum over b's items of dW (items in reverse order).                     n = items/per_b * 2P
template <class T>
struct ReduceItems {
  const T* dW;
  T *gw1, *gw2;
  Group g;
  int64_t P;
  TTT_HOST_DEVICE void operator()(int64_t idx) const {
    const int64_t bl = idx / (2 * P), e = idx % (2 * P), b = g.b0 + bl;
    T acc = 0;
    for (int64_t s = g.per_b - 1; s >= 0; --s) acc += dW[(bl * g.per_b + s) * 2 * P + e];
    if (e < P) gw1[b * P + e] += acc;
    else gw2[b * P + e - P] += acc;
  }
};
// Q-K projection: out rows = acc / z (z > 0) or x rows (z = 0: identity); z per item.   n = items * n * d
template <class T>
struct QkFinalize {
  const T *acc, *x, *z;
  T* out;
  Group g;
  int64_t c0, n, d;
  TTT_HOST_DEVICE void operator()(int64_t idx) const {
    const int64_t i = idx / (n * d), r = (idx / d) % n, j = idx % d;
    const int64_t off = g.tok(i, c0 + r) * d + j;
    out[off] = qk_finalize_core(acc[idx], x[off], z[i]);
  }
};
// dz[i] = -dot[i] / z[i] (z > 0) else 0.                                                 n = items
template <class T>
struct QkDz {
  const T *dot, *z;
  T* dz;
  TTT_HOST_DEVICE void operator()(int64_t i) const { dz[i] = z[i] > T(0) ? -dot[i] / z[i] : T(0); }
};
// Gh = G rows / z (z > 0) else 0.                                                        n = items * n * d
template <class T>
struct QkGhat {
  const T *G, *z;
  T* Gh;
  Group g;
  int64_t c0, n, d;
  TTT_HOST_DEVICE void operator()(int64_t idx) const {
    const int64_t i = idx / (n * d), r = (idx / d) % n, j = idx % d;
    Gh[idx] = z[i] > T(0) ? G[g.tok(i, c0 + r) * d + j] / z[i] : T(0);
  }
};
// P[i] += 2 dz[i] I.                                                                     n = items * d
template <class T>
struct AddDiag {
  T* P;
  const T* dz;
  int64_t d;
  TTT_HOST_DEVICE void operator()(int64_t idx) const {
    const int64_t i = idx / d, j = idx % d;
    P[i * d * d + j * d + j] += T(2) * dz[i];
  }
};
// Two independent steps as one functor: f1(i) for every i, f2(i) for i < n2 (n2 <= the functor's n); they write
// disjoint outputs and read none of each other's, so running them element by element equals running them one after
// the other.
template <class F1, class F2>
struct Both {
  F1 f1;
  F2 f2;
  int64_t n2;
  TTT_HOST_DEVICE void operator()(int64_t i) const {
    f1(i);
    if (i < n2) f2(i);
  }
};
template <class T>
struct Add {
  T* dst;
  const T* src;
  TTT_HOST_DEVICE void operator()(int64_t i) const { dst[i] += src[i]; }
};

}  // namespace fn

}  // namespace ttt::titans
