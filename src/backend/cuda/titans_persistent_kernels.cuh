// The device code of the persistent Titans kernels (titans_persistent.h): the block-level pieces and the two
// kernels. Written against a small surface (threadIdx / blockIdx / blockDim, __syncthreads, warp_sum, dynamic
// shared memory through TTT_DYNAMIC_SMEM) so that the same source runs in two places: compiled by nvcc in
// titans_persistent.cu (after kernel_util.cuh), and on the CPU by tests/test_titans_persistent_emulated.cpp, which
// provides that surface with one std::thread per CUDA thread and barriers (tests/block_emulation.h) and checks
// the kernels' logic against the CPU twin on every build.
//
// The block-level pieces: an FMA matrix product over operands in shared or global memory (generic pointers),
// with an element epilogue run by the thread that wrote the element (so a functor of titans_elementwise.h can
// follow its product without a barrier), block and row dot products accumulated in double (the batched path's
// batched_dot), and the item's chunk step, forward and backward, phase by phase as MemoryGroup::update /
// update_bwd / apply_bwd order them.
#pragma once
#include <cstdint>

#include "backend/titans_persistent_plan.h"
#include "ttt/titans_fused.h"

#ifndef TTT_DYNAMIC_SMEM
#define TTT_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace ttt::cuda::persistent {

using titans::Group;
namespace fn = titans::fn;

// Element (i, l) of op(X): X[i ld + l], or X[l ld + i] transposed.
template <class T, bool Trans>
struct Operand {
  const T* p;
  int ld;
  __device__ __forceinline__ T operator()(int i, int l) const { return Trans ? p[l * ld + i] : p[i * ld + l]; }
};
template <bool Trans, class T>
__device__ __forceinline__ Operand<T, Trans> mat(const T* p, int ld) {
  return {p, ld};
}
struct NoEpilogue {
  __device__ void operator()(int, int) const {}
};

// store(i, j, Σ_l op(A)[i, l] op(B)[l, j]) for every element of the m x n product, each thread owning a tile of
// TM rows x TN columns (columns 32 apart, so that a warp's lanes take consecutive columns: A's element is a
// broadcast and B's row is read contiguously, transposed B being a padded state, see the plan). Per reduction
// step a thread loads TM + TN operands for TM * TN multiply-adds: the products are bound by these loads (shared
// memory serves one 32-lane access per clock), so larger tiles are faster while enough threads stay busy.
// Sums run in l order from zero. No barrier: the caller separates phases. Work item w (a multiple of 32 per warp's
// worth) goes to thread (w + start) mod blockDim (start a multiple of 32), so that products run one after another
// in one phase can begin where the previous one's work ended; returns the number of work items. Unroll: reduction
// steps whose loads are issued together (v2's 8 warps have fewer other warps to hide a load's latency behind).
template <int TM, int TN, int Unroll, class T, bool TA, bool TB, class Store>
__device__ __forceinline__ int gemm_tiles(int m, int n, int k, Operand<T, TA> A, Operand<T, TB> B,
                                          const Store& store, int start) {
  const int row_tiles = (m + TM - 1) / TM, col_groups = (n + 32 * TN - 1) / (32 * TN);
  const int work = row_tiles * col_groups * 32;
  // (start 0, v1's calls: the thread's own index, as before the offset existed)
  const int first = start == 0 ? int(threadIdx.x) : (int(threadIdx.x) + int(blockDim.x) - start) % int(blockDim.x);
  for (int idx = first; idx < work; idx += blockDim.x) {
    const int lane = idx % 32, group = idx / 32, cg = group % col_groups, rt = group / col_groups;
    const int i0 = rt * TM, j0 = cg * 32 * TN + lane;
    T acc[TM][TN];
#pragma unroll
    for (int s = 0; s < TM; ++s)
#pragma unroll
      for (int t = 0; t < TN; ++t) acc[s][t] = T(0);
#pragma unroll Unroll
    for (int l = 0; l < k; ++l) {
      T b[TN];
#pragma unroll
      for (int t = 0; t < TN; ++t) b[t] = j0 + 32 * t < n ? B(l, j0 + 32 * t) : T(0);
#pragma unroll
      for (int s = 0; s < TM; ++s) {
        const T a = i0 + s < m ? A(i0 + s, l) : T(0);
#pragma unroll
        for (int t = 0; t < TN; ++t) acc[s][t] += a * b[t];
      }
    }
#pragma unroll
    for (int s = 0; s < TM; ++s)
#pragma unroll
      for (int t = 0; t < TN; ++t)
        if (i0 + s < m && j0 + 32 * t < n) store(i0 + s, j0 + 32 * t, acc[s][t]);
  }
  return work;
}

// The tile for an m x n product: the largest of 4x2, 2x2, 1x2, 1x1 that still gives every one of at least
// 128 threads (a warp per scheduler) a tile.
// start, Unroll: see gemm_tiles; returns the number of work items.
template <int Unroll = 2, class T, bool TA, bool TB, class Store>
__device__ int block_products(int m, int n, int k, Operand<T, TA> A, Operand<T, TB> B, const Store& store,
                              int start = 0) {
  const int outputs = m * n;
  if (outputs >= 8 * 128 && m >= 4) return gemm_tiles<4, 2, Unroll>(m, n, k, A, B, store, start);
  if (outputs >= 4 * 128 && m >= 2) return gemm_tiles<2, 2, Unroll>(m, n, k, A, B, store, start);
  if (outputs >= 2 * 128 && n > 32) return gemm_tiles<1, 2, Unroll>(m, n, k, A, B, store, start);
  return gemm_tiles<1, 1, Unroll>(m, n, k, A, B, store, start);
}

// C[m, n] (row stride ldc) = alpha op(A) op(B) + beta C (beta 0: C is not read), then epi(i, j) by the thread
// that wrote C[i, j] (so an element functor can follow its product without a barrier).
template <class T, bool TA, bool TB, class Epi = NoEpilogue>
__device__ void block_gemm(int m, int n, int k, T alpha, Operand<T, TA> A, Operand<T, TB> B, T beta, T* C, int ldc,
                           Epi epi = {}) {
  block_products(m, n, k, A, B, [&](int i, int j, T acc) {
    T* c = C + int64_t(i) * ldc + j;
    *c = beta == T(0) ? alpha * acc : alpha * acc + beta * *c;
    epi(i, j);
  });
}

// The padded state layout in a block (W1 [dh][d+1], W2 [d][dh+1]) and the unpadded one of global checkpoints.
struct StateLayout {
  int d, dh;
  bool padded;
  __device__ __forceinline__ int ld1() const { return padded ? d + 1 : d; }
  __device__ __forceinline__ int ld2() const { return padded ? dh + 1 : dh; }
  __device__ __forceinline__ int64_t off2() const { return int64_t(dh) * ld1(); }
  // Where element (row, col) of W1 [dh][d] (second false) or W2 [d][dh] (second true) lives (32-bit index math: a
  // state has at most 2 (kPersistentMaxWidth + 1)² elements).
  __device__ __forceinline__ int at_rc(bool second, int row, int col) const {
    return second ? dh * ld1() + row * ld2() + col : row * ld1() + col;
  }
  // Where element e of the unpadded [2P] state lives.
  __device__ __forceinline__ int64_t at(int64_t e) const {
    if (!padded) return e;
    const int64_t P = int64_t(d) * dh;
    if (e < P) return (e / d) * (d + 1) + e % d;
    const int64_t f = e - P;
    return off2() + (f / dh) * (dh + 1) + f % dh;
  }
};

template <class T>
struct Args {
  Group g;
  int d, dh, C, K;
  bool momentum, decay, residual, save;  // save: the forward keeps every K-th state (for a backward)
  bool qk;            // Q-K projected queries: q is q̃ (the forward writes it, from q_in), gq is its gradient
  const T *q, *k, *v, *w1, *w2, *theta, *eta, *alpha;
  const T* q_in;      // qk: the queries before the projection
  T* qt;              // qk, forward: q̃ [B,T,d] (the same array as q)
  T *qk_z, *qk_dz;    // qk: per item and chunk [items][chunks] the normalizer z before the chunk, and dz
  T* gq_final;        // qk, backward: the gradient of q_in (gq holds that of q̃)
  T* o;
  const T* go;
  T *gq, *gk, *gv, *gtheta, *geta, *galpha;
  T* dW_items;        // [items][2P]
  T *ckW, *ckS;       // [items][checkpoints][2P]
  T *slotW, *slotS;   // [items][K][2P]
  int64_t checkpoints;
  T* scratch;         // [items][scratch_per_item]
  int64_t scratch_per_item;
  int64_t offset[titans::kNumBuffers];
  bool shared[titans::kNumBuffers];
  int scalar_bytes, chunk_rows;
};

// The block's buffers and scalars (plan: titans::BlockLayout).
template <class T>
struct Block {
  T* buf[titans::kNumBuffers];
  double* red;  // [2 * warps]
  T *ebar, *abar, *keepdot, *etadot, *qz, *qcs, *eta_pending, *rd1, *rd2;
};
// OnChip: the plan put every buffer in shared memory (BlockLayout::all_on_chip), so each pointer is derived from
// the shared array alone and the compiler can address the buffers as shared memory (ld.shared, no generic
// address-space tests) where it sees that derivation.
template <bool OnChip = false, class T>
__device__ __forceinline__ Block<T> make_block(const Args<T>& a, unsigned char* smem) {
  Block<T> b;
  const int warps = blockDim.x / 32;
  b.red = reinterpret_cast<double*>(smem);
  T* tv = reinterpret_cast<T*>(b.red + 2 * warps);
  b.ebar = tv;
  b.abar = tv + 1;
  b.keepdot = tv + 2;
  b.etadot = tv + 3;
  b.qz = tv + 4;
  b.qcs = tv + 5;
  b.eta_pending = tv + 6;
  b.rd1 = tv + 8;
  b.rd2 = tv + 8 + a.chunk_rows;
  T* base = reinterpret_cast<T*>(smem + a.scalar_bytes);
  T* scr = a.scratch ? a.scratch + int64_t(blockIdx.x) * a.scratch_per_item : nullptr;
  for (int i = 0; i < titans::kNumBuffers; ++i)
    b.buf[i] = OnChip || a.shared[i] ? base + a.offset[i] : scr + a.offset[i];
  return b;
}

// Item blockIdx.x of the group as a group of one item (the functors' indexing: item 0, token t at base + t).
__device__ __forceinline__ Group item_group(const Group& g) {
  const int64_t i = blockIdx.x;
  return Group{1, g.b_of(i), 1, g.tok(i, 0), 0, g.len};
}
__device__ __forceinline__ int64_t imin(int64_t x, int64_t y) { return x < y ? x : y; }
template <class F>
__device__ __forceinline__ void block_each(int64_t n, const F& f) {
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) f(i);
}

// out[0] = T(Σ over the block of x1), out[1] = T(Σ of x2): fixed order (warp shuffles, then warps in order).
template <class T>
__device__ void block_sum2(double x1, double x2, double* red, T* out1, T* out2) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  x1 = warp_sum(x1);
  x2 = warp_sum(x2);
  if (lane == 0) red[2 * warp] = x1, red[2 * warp + 1] = x2;
  __syncthreads();
  if (threadIdx.x == 0) {
    double s1 = 0, s2 = 0;
    for (int w = 0; w < warps; ++w) s1 += red[2 * w], s2 += red[2 * w + 1];
    *out1 = T(s1);
    *out2 = T(s2);
  }
  __syncthreads();
}

// The gate means of chunk c (thread 0: η̄, thread 1: ᾱ), fn::ChunkMean on the item (its output index is c).
template <class T>
__device__ void gate_means(const Args<T>& a, const Block<T>& b, const Group& g1, int64_t c) {
  if (threadIdx.x == 0 && a.momentum) fn::ChunkMean<T>{a.eta, b.ebar - c, g1, a.C}(c);
  if (threadIdx.x == 1 && a.decay) fn::ChunkMean<T>{a.alpha, b.abar - c, g1, a.C}(c);
}

// Token-side terms of the inner gradient at W (on chip, padded) for rows c0..c0+n: Z = K W1ᵀ, Sg = silu(Z),
// E = 2(K + Sg W2ᵀ - V), Bm = θE, DS = E W2, A = θ DS silu'(Z), DZ (MemoryGroup::update_terms). Ends with a barrier.
template <class T>
__device__ void update_terms(const Args<T>& a, const Block<T>& b, const Group& g1, const T* W, int64_t c0, int n) {
  const int d = a.d, dh = a.dh;
  const StateLayout L{d, dh, true};
  const T* Kr = a.k + g1.tok(0, c0) * d;
  T *Z = b.buf[titans::kZ], *Sg = b.buf[titans::kSg], *E = b.buf[titans::kE], *Bm = b.buf[titans::kBm];
  T *DS = b.buf[titans::kDS], *A = b.buf[titans::kA], *DZ = b.buf[titans::kDZ];
  block_gemm(n, dh, d, T(1), mat<false>(Kr, d), mat<true>(W, L.ld1()), T(0), Z, dh,
             [&](int i, int j) { fn::Silu<T>{Z, Sg}(int64_t(i) * dh + j); });
  __syncthreads();
  block_gemm(n, d, dh, T(1), mat<false>(Sg, dh), mat<true>(W + L.off2(), L.ld2()), T(0), E, d, [&](int i, int j) {
    fn::MseErr<T>{E, Bm, a.k, a.v, a.theta, g1, c0, n, d, a.residual}(int64_t(i) * d + j);
  });
  __syncthreads();
  block_gemm(n, dh, d, T(1), mat<false>(E, d), mat<false>(W + L.off2(), L.ld2()), T(0), DS, dh, [&](int i, int j) {
    fn::InnerA<T>{DS, Z, a.theta, A, DZ, g1, c0, n, dh}(int64_t(i) * dh + j);
  });
  __syncthreads();
}

// Rows c0..c0+n of out = the Q-K projection of x's rows with the sums M and z (fn::QkFinalize: (x M) / z, x
// while z = 0; QkGroup::project). nonzero_sums false: M is known to be zero (no chunk absorbed yet). The product
// passes through the chunk buffer E. No barrier.
template <class T>
__device__ void project_rows(const Args<T>& a, const Block<T>& b, const Group& g1, const T* x, const T* M,
                             const T* z, T* out, int64_t c0, int n, bool nonzero_sums) {
  const int d = a.d;
  T* acc = b.buf[titans::kE];
  const fn::QkFinalize<T> finalize{acc, x, z, out, g1, c0, n, d};
  if (nonzero_sums)
    block_products(n, d, d, mat<false>(x + g1.tok(0, c0) * d, d), mat<false>(M, d), [&](int r, int j, T v) {
      acc[r * d + j] = v;
      finalize(int64_t(r) * d + j);
    });
  else
    block_each(int64_t(n) * d, finalize);
}

// The chunk's keys (rows Kr) join the Q-K sums: M += Kᵀ K, z += Σ ||k||² (QkGroup::absorb; the square sum in a
// fixed-order block reduction). Called by every thread; ends with a barrier.
template <class T>
__device__ void absorb_keys(const Args<T>& a, const Block<T>& b, const T* Kr, T* M, int n) {
  const int d = a.d;
  block_products(d, d, n, mat<true>(Kr, d), mat<false>(Kr, d),
                 [&](int i, int j, T v) { M[i * d + j] = v + M[i * d + j]; });
  double squares = 0;
  for (int64_t e = threadIdx.x; e < int64_t(n) * d; e += blockDim.x) squares += double(Kr[e]) * double(Kr[e]);
  block_sum2(squares, 0.0, b.red, b.qcs, b.keepdot);
  if (threadIdx.x == 0) *b.qz = *b.qz + *b.qcs;
  __syncthreads();
}

// The chunk update (MemoryGroup::update) in place on W (on chip): D = -[Aᵀ K; Bmᵀ Sg] element by element, then
// fn::Step with the chunk's gate means (gate_means before the call). S: the momentum in layout SL (Sc read, Sn
// written; may be the same). keepW / keepS (unpadded, may be null): copies of the new state. Ends with a barrier.
template <class T>
__device__ void chunk_update(const Args<T>& a, const Block<T>& b, const Group& g1, T* W, const T* Sc, T* Sn,
                             const StateLayout& SL, T* keepW, T* keepS, int64_t c0, int n) {
  update_terms(a, b, g1, W, c0, n);
  const int d = a.d, dh = a.dh;
  const int64_t P = int64_t(d) * dh, P2 = 2 * P;
  const StateLayout L{d, dh, true};
  const T* Kr = a.k + g1.tok(0, c0) * d;
  const T *A = b.buf[titans::kA], *Bm = b.buf[titans::kBm], *Sg = b.buf[titans::kSg];
  // Element e of D = -[Aᵀ K; Bmᵀ Sg] (unpadded index) meets fn::Step where its product lands.
  auto step = [&](int64_t e, T acc) {
    const T D = -acc;
    const int64_t w = L.at(e), s = SL.at(e);
    fn::Step<T>{W + w, Sc ? Sc + s : nullptr, &D, b.ebar, a.decay ? b.abar : nullptr, W + w, Sn ? Sn + s : nullptr,
                P2}(0);
    if (keepW) keepW[e] = W[w];
    if (keepS) keepS[e] = Sn[s];
  };
  block_products(dh, d, n, mat<true>(A, dh), mat<false>(Kr, d),
                 [&](int h, int j, T acc) { step(int64_t(h) * d + j, acc); });  // D1 = -Aᵀ K [dh, d]
  block_products(d, dh, n, mat<true>(Bm, d), mat<false>(Sg, dh),
                 [&](int j, int h, T acc) { step(P + int64_t(j) * dh + h, acc); });  // D2 = -Bmᵀ Sg [d, dh]
  __syncthreads();
}

template <class T>
__global__ void __launch_bounds__(titans::kPersistentThreads, 1) k_titans_persistent_fwd(Args<T> a) {
  TTT_DYNAMIC_SMEM(smem);
  const Block<T> b = make_block(a, smem);
  const Group g1 = item_group(a.g);
  const int d = a.d, dh = a.dh;
  const int64_t P = int64_t(d) * dh, P2 = 2 * P, N = titans::num_chunks(g1.len, a.C);
  const StateLayout L{d, dh, true};
  T* W = b.buf[titans::kW];
  T* S = a.momentum ? b.buf[titans::kS] : nullptr;
  T* ckW = a.save ? a.ckW + int64_t(blockIdx.x) * a.checkpoints * P2 : nullptr;
  T* ckS = a.save && a.momentum ? a.ckS + int64_t(blockIdx.x) * a.checkpoints * P2 : nullptr;
  // W := [W1⁰; W2⁰] of the item's sequence-head (fn::InitState's layout), S := 0; the Q-K sums := 0.
  for (int64_t e = threadIdx.x; e < P2; e += blockDim.x) {
    const T w = e < P ? a.w1[g1.b0 * P + e] : a.w2[g1.b0 * P + e - P];
    W[L.at(e)] = w;
    if (S) S[L.at(e)] = T(0);
    if (ckW) ckW[e] = w;
    if (ckS) ckS[e] = T(0);
  }
  T* M = a.qk ? b.buf[titans::kQk] : nullptr;
  if (M)
    for (int64_t e = threadIdx.x; e < int64_t(d) * d; e += blockDim.x) M[e] = T(0);
  if (threadIdx.x == 0) *b.qz = T(0);
  __syncthreads();
  T *Z = b.buf[titans::kZ], *Sg = b.buf[titans::kSg];
  for (int64_t c = 0; c < N; ++c) {
    const int64_t c0 = c * a.C;
    const int n = int(imin(a.C, g1.len - c0));
    const T* Kr = a.k + g1.tok(0, c0) * d;
    if (M) {  // the chunk's queries through the Q-K projection (QkGroup::project) into q̃ = a.qt rows
      if (threadIdx.x == 0) a.qk_z[int64_t(blockIdx.x) * N + c] = *b.qz;
      project_rows(a, b, g1, a.q_in, M, b.qz, a.qt, c0, n, c > 0);
      __syncthreads();
    }
    // Apply with W_c: o = [q +] silu(q W1ᵀ) W2ᵀ (MemoryGroup::apply_rows).
    const T* Q = a.q + g1.tok(0, c0) * d;
    block_each(int64_t(n) * d, fn::CopyRows<T>{a.o, a.residual ? a.q : nullptr, g1, c0, n, d});
    block_gemm(n, dh, d, T(1), mat<false>(Q, d), mat<true>(W, L.ld1()), T(0), Z, dh,
               [&](int i, int j) { fn::Silu<T>{Z, Sg}(int64_t(i) * dh + j); });
    __syncthreads();
    block_gemm(n, d, dh, T(1), mat<false>(Sg, dh), mat<true>(W + L.off2(), L.ld2()), T(1), a.o + g1.tok(0, c0) * d,
               d);
    if (c + 1 < N) gate_means(a, b, g1, c);
    if (M && c + 1 < N) absorb_keys(a, b, Kr, M, n);  // the chunk's keys join the Q-K sums (ends with a barrier)
    __syncthreads();
    if (c + 1 < N) {
      const bool keep = ckW && (c + 1) % a.K == 0;
      chunk_update(a, b, g1, W, S, S, L, keep ? ckW + ((c + 1) / a.K) * P2 : nullptr,
                   keep && ckS ? ckS + ((c + 1) / a.K) * P2 : nullptr, c0, n);
    }
  }
}

// The adjoint of chunk c's update (MemoryGroup::update_bwd) with W_c on chip and S_c (unpadded, global) at Sc:
// dW, dS hold dL/dW_{c+1}, dL/dS_{c+1} on entry and the update's share of dL/dW_c, dL/dS_c on exit.
template <class T>
__device__ void update_bwd(const Args<T>& a, const Block<T>& b, const Group& g1, const T* W, const T* Sc, int64_t c0,
                           int64_t c, int n) {
  using namespace titans;
  const int d = a.d, dh = a.dh;
  const int64_t P = int64_t(d) * dh, P2 = 2 * P;
  const StateLayout L{d, dh, true};
  gate_means(a, b, g1, c);
  update_terms(a, b, g1, W, c0, n);
  T* dW = b.buf[kGradW];
  T* dS = a.momentum ? b.buf[kGradS] : nullptr;
  T* G = a.momentum ? dS : b.buf[kCot];  // G = dW' + dS' takes dS's place (dS = η̄ G is written last)
  double keep = 0, eta = 0;
  for (int64_t e = threadIdx.x; e < P2; e += blockDim.x) {
    const int64_t x = L.at(e);
    fn::StepBwdPre<T>{dW + x, dS ? dS + x : nullptr, G + x}(0);
    if (a.decay) keep += double(dW[x]) * double(W[x]);
    if (a.momentum) eta += double(G[x]) * double(Sc[e]);
  }
  block_sum2(keep, eta, b.red, b.keepdot, b.etadot);
  // dW = (1 - ᾱ) dW'; the gates' gradients; the inner gradient's cotangents dA, dBm, dSg.
  for (int64_t e = threadIdx.x; e < P2; e += blockDim.x) {
    const int64_t x = L.at(e);
    fn::StepBwdPost<T>{dW + x, nullptr, G + x, b.ebar, a.decay ? b.abar : nullptr, P2}(0);
  }
  if (a.momentum || a.decay)
    block_each(n, fn::FillGates<T>{a.momentum ? a.geta : nullptr, a.decay ? a.galpha : nullptr, b.etadot, b.keepdot,
                                   g1, c0, n});
  const T* Kr = a.k + g1.tok(0, c0) * d;
  const T *G1 = G, *G2 = G + L.off2();
  T *Z = b.buf[kZ], *Sg = b.buf[kSg], *E = b.buf[kE], *Bm = b.buf[kBm], *DS = b.buf[kDS], *A = b.buf[kA],
    *DZ = b.buf[kDZ], *dA = b.buf[kGradA], *dSg = b.buf[kGradSg], *dB = b.buf[kGradB];
  block_gemm(n, dh, d, T(-1), mat<false>(Kr, d), mat<true>(G1, L.ld1()), T(0), dA, dh);    // dA = -K G1ᵀ
  block_gemm(n, d, dh, T(-1), mat<false>(Sg, dh), mat<true>(G2, L.ld2()), T(0), dB, d);    // dBm = -Sg G2ᵀ
  block_gemm(n, dh, d, T(-1), mat<false>(Bm, d), mat<false>(G2, L.ld2()), T(0), dSg, dh);  // dSg = -Bm G2
  __syncthreads();
  // dθ: the row dots <DZ_r, dA_r> + <E_r, dBm_r> (a warp per row).
  {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    for (int r = warp; r < n; r += warps) {
      double s1 = 0, s2 = 0;
      for (int h = lane; h < dh; h += 32) s1 += double(DZ[r * dh + h]) * double(dA[r * dh + h]);
      for (int j = lane; j < d; j += 32) s2 += double(E[r * d + j]) * double(dB[r * d + j]);
      s1 = warp_sum(s1);
      s2 = warp_sum(s2);
      if (lane == 0) {
        b.rd1[r] = T(s1);
        b.rd2[r] = T(s2);
        fn::FillTheta<T>{b.rd1, b.rd2, a.gtheta, g1, c0, n}(r);
      }
    }
  }
  __syncthreads();
  // dDS (in dA's place), dZ (in DS's place), dE (in dBm's place): element by element where they are read.
  T *dDS = dA, *dZ = DS, *dE = dB;
  block_each(int64_t(n) * dh, fn::InnerBwdH<T>{Z, DS, dA, a.theta, dDS, dZ, g1, c0, n, dh});
  block_each(int64_t(n) * d, fn::InnerBwdD<T>{dB, a.theta, dE, g1, c0, n, d});
  __syncthreads();
  block_gemm(n, d, dh, T(1), mat<false>(dDS, dh), mat<true>(W + L.off2(), L.ld2()), T(1), dE, d);   // dE += dDS W2ᵀ
  block_gemm(d, dh, n, T(1), mat<true>(E, d), mat<false>(dDS, dh), T(1), dW + L.off2(), L.ld2());   // dW2 += Eᵀ dDS
  __syncthreads();
  block_each(int64_t(n) * d, fn::InnerBwd2<T>{dE, a.gk, a.gv, g1, c0, n, d, a.residual});  // dY; dv; dk
  __syncthreads();
  const T* dY = dE;
  block_gemm(n, dh, d, T(1), mat<false>(dY, d), mat<false>(W + L.off2(), L.ld2()), T(1), dSg, dh,  // dSg += dY W2
             [&](int i, int j) { fn::DsiluMul<T>{dSg, Z, dZ, true}(int64_t(i) * dh + j); });         // dZ += dSg silu'
  block_gemm(d, dh, n, T(1), mat<true>(dY, d), mat<false>(Sg, dh), T(1), dW + L.off2(), L.ld2());   // dW2 += dYᵀ Sg
  __syncthreads();
  T* gk = a.gk + g1.tok(0, c0) * d;
  block_gemm(n, d, dh, T(-1), mat<false>(A, dh), mat<false>(G1, L.ld1()), T(1), gk, d);  // dK -= A G1
  block_gemm(dh, d, n, T(1), mat<true>(dZ, dh), mat<false>(Kr, d), T(1), dW, L.ld1());   // dW1 += dZᵀ K
  __syncthreads();
  block_gemm(n, d, dh, T(1), mat<false>(dZ, dh), mat<false>(W, L.ld1()), T(1), gk, d);   // dK += dZ W1
  if (dS)  // dS = η̄ G (G is read no more)
    for (int64_t e = threadIdx.x; e < P2; e += blockDim.x) {
      const int64_t x = L.at(e);
      fn::StepBwdPost<T>{dW + x, dS + x, G + x, b.ebar, nullptr, P2}(0);
    }
  __syncthreads();
}

// The adjoint of chunk c's apply with W_c on chip (MemoryGroup::apply_bwd): dW += its share, gq rows assigned.
template <class T>
__device__ void apply_bwd(const Args<T>& a, const Block<T>& b, const Group& g1, const T* W, int64_t c0, int n) {
  using namespace titans;
  const int d = a.d, dh = a.dh;
  const StateLayout L{d, dh, true};
  const T* Q = a.q + g1.tok(0, c0) * d;
  const T* dO = a.go + g1.tok(0, c0) * d;
  T *Z = b.buf[kZ], *Sg = b.buf[kSg], *dSg = b.buf[kGradSg], *dZ = b.buf[kDS], *dW = b.buf[kGradW];
  block_gemm(n, dh, d, T(1), mat<false>(Q, d), mat<true>(W, L.ld1()), T(0), Z, dh,
             [&](int i, int j) { fn::Silu<T>{Z, Sg}(int64_t(i) * dh + j); });
  block_each(int64_t(n) * d, fn::CopyRows<T>{a.gq, a.residual ? a.go : nullptr, g1, c0, n, d});
  __syncthreads();
  block_gemm(n, dh, d, T(1), mat<false>(dO, d), mat<false>(W + L.off2(), L.ld2()), T(0), dSg, dh,  // dSg = dO W2
             [&](int i, int j) { fn::DsiluMul<T>{dSg, Z, dZ, false}(int64_t(i) * dh + j); });       // dZ = dSg silu'
  block_gemm(d, dh, n, T(1), mat<true>(dO, d), mat<false>(Sg, dh), T(1), dW + L.off2(), L.ld2());   // dW2 += dOᵀ Sg
  __syncthreads();
  block_gemm(dh, d, n, T(1), mat<true>(dZ, dh), mat<false>(Q, d), T(1), dW, L.ld1());                // dW1 += dZᵀ Q
  block_gemm(n, d, dh, T(1), mat<false>(dZ, dh), mat<false>(W, L.ld1()), T(1), a.gq + g1.tok(0, c0) * d, d);  // dQ
  __syncthreads();
}

// The Q-K projection's backward for the item (QkGroup::backward), after the memory's: a.gq holds dL/dq̃ (G);
// writes gq_final = dL/dq rows and adds dL/dk's projection share to gk rows.
//   dq_t = M_c G_t / z_c;  dz_c = -Σ_t dq_t·q_t / z_c;
//   dk_τ = P k_τ with P = Σ over later chunks c of (Ĝ_cᵀ Q_c + Q_cᵀ Ĝ_c + 2 dz_c I), Ĝ = G / z.
template <class T>
__device__ void qk_backward(const Args<T>& a, const Block<T>& b, const Group& g1, int64_t N) {
  const int d = a.d;
  const int64_t dd = int64_t(d) * d;
  const T* z = a.qk_z + int64_t(blockIdx.x) * N;
  T* dz = a.qk_dz + int64_t(blockIdx.x) * N;
  T* M = b.buf[titans::kQk];
  T* acc = b.buf[titans::kE];
  __syncthreads();
  for (int64_t e = threadIdx.x; e < dd; e += blockDim.x) M[e] = T(0);
  __syncthreads();
  for (int64_t c = 0; c < N; ++c) {  // forward sweep: the sums M grow as in the forward
    const int64_t c0 = c * a.C;
    const int n = int(imin(a.C, g1.len - c0));
    project_rows(a, b, g1, a.gq, M, z + c, a.gq_final, c0, n, c > 0);  // dq = M G / z
    __syncthreads();
    if (c > 0) {
      const T* dq = a.gq_final + g1.tok(0, c0) * d;
      const T* q = a.q_in + g1.tok(0, c0) * d;
      double dot = 0;
      for (int64_t e = threadIdx.x; e < int64_t(n) * d; e += blockDim.x) dot += double(dq[e]) * double(q[e]);
      block_sum2(dot, 0.0, b.red, b.keepdot, b.etadot);
      if (threadIdx.x == 0) fn::QkDz<T>{b.keepdot, z + c, dz + c}(0);
    }
    if (c + 1 < N) {
      const T* Kr = a.k + g1.tok(0, c0) * d;
      block_products(d, d, n, mat<true>(Kr, d), mat<false>(Kr, d),
                     [&](int i, int j, T v) { M[i * d + j] = v + M[i * d + j]; });
    }
    __syncthreads();
  }
  T* Pm = M;  // reverse sweep: P over the later chunks
  for (int64_t e = threadIdx.x; e < dd; e += blockDim.x) Pm[e] = T(0);
  __syncthreads();
  for (int64_t c = N - 1; c >= 0; --c) {
    const int64_t c0 = c * a.C;
    const int n = int(imin(a.C, g1.len - c0));
    const T* Kr = a.k + g1.tok(0, c0) * d;
    T* gk = a.gk + g1.tok(0, c0) * d;
    block_products(n, d, d, mat<false>(Kr, d), mat<false>(Pm, d),
                   [&](int r, int j, T v) { gk[r * d + j] = gk[r * d + j] + v; });  // dk = K P, added
    if (c > 0) block_each(int64_t(n) * d, fn::QkGhat<T>{a.gq, z + c, acc, g1, c0, n, d});
    __syncthreads();
    if (c > 0) {
      const T* q = a.q_in + g1.tok(0, c0) * d;
      block_products(d, d, n, mat<true>(acc, d), mat<false>(q, d),
                     [&](int i, int j, T v) { Pm[i * d + j] = v + Pm[i * d + j]; });  // P += Ĝᵀ Q
      __syncthreads();
      block_products(d, d, n, mat<true>(q, d), mat<false>(acc, d),
                     [&](int i, int j, T v) { Pm[i * d + j] = v + Pm[i * d + j]; });  // P += Qᵀ Ĝ
      __syncthreads();
      block_each(d, fn::AddDiag<T>{Pm, dz + c, d});  // P += 2 dz I
      __syncthreads();
    }
  }
}

template <class T>
__global__ void __launch_bounds__(titans::kPersistentThreads, 1) k_titans_persistent_bwd(Args<T> a) {
  using namespace titans;
  TTT_DYNAMIC_SMEM(smem);
  const Block<T> b = make_block(a, smem);
  const Group g1 = item_group(a.g);
  const int d = a.d, dh = a.dh;
  const int64_t P = int64_t(d) * dh, P2 = 2 * P, N = num_chunks(g1.len, a.C), item = blockIdx.x;
  const StateLayout L{d, dh, true}, flat{d, dh, false};
  // Tokens of the last chunk take part in no update (MemoryGroup::backward).
  const int64_t cl0 = (N - 1) * a.C, nl = g1.len - cl0;
  block_each(nl * d, fn::CopyRows<T>{a.gk, nullptr, g1, cl0, nl, d});
  block_each(nl * d, fn::CopyRows<T>{a.gv, nullptr, g1, cl0, nl, d});
  block_each(nl, fn::CopyRows<T>{a.gtheta, nullptr, g1, cl0, nl, 1});
  if (a.geta)
    block_each(a.momentum ? nl : g1.len,
               fn::CopyRows<T>{a.geta, nullptr, g1, a.momentum ? cl0 : 0, a.momentum ? nl : g1.len, 1});
  if (a.galpha)
    block_each(a.decay ? nl : g1.len,
               fn::CopyRows<T>{a.galpha, nullptr, g1, a.decay ? cl0 : 0, a.decay ? nl : g1.len, 1});
  T* W = b.buf[kW];
  T* dW = b.buf[kGradW];
  T* dS = a.momentum ? b.buf[kGradS] : b.buf[kCot];
  const int64_t padded = L.off2() + int64_t(d) * L.ld2();
  for (int64_t e = threadIdx.x; e < padded; e += blockDim.x) dW[e] = dS[e] = T(0);
  const T* ckW = a.ckW + item * a.checkpoints * P2;
  const T* ckS = a.momentum ? a.ckS + item * a.checkpoints * P2 : nullptr;
  T* slotW = a.slotW + item * a.K * P2;
  T* slotS = a.momentum ? a.slotS + item * a.K * P2 : nullptr;
  // The state of version c in segment j (lo = j K): the checkpoint at c = lo, else slot c - lo.
  auto stateW = [&](int64_t j, int64_t lo, int64_t c) -> const T* { return c == lo ? ckW + j * P2 : slotW + (c - lo) * P2; };
  auto stateS = [&](int64_t j, int64_t lo, int64_t c) -> T* {
    if (!a.momentum) return nullptr;
    return c == lo ? const_cast<T*>(ckS) + j * P2 : slotS + (c - lo) * P2;
  };
  const int64_t nseg = num_chunks(N, a.K);
  for (int64_t j = nseg - 1; j >= 0; --j) {
    const int64_t lo = j * a.K, hi = imin(N, lo + a.K);
    for (int64_t e = threadIdx.x; e < P2; e += blockDim.x) W[L.at(e)] = ckW[j * P2 + e];
    __syncthreads();
    // Recompute the segment's states (W on chip, in place; copies in the slots).
    for (int64_t c = lo; c + 1 < hi; ++c) {
      gate_means(a, b, g1, c);
      const int n = int(imin(a.C, g1.len - c * a.C));
      chunk_update(a, b, g1, W, stateS(j, lo, c), stateS(j, lo, c + 1), flat, slotW + (c + 1 - lo) * P2,
                   static_cast<T*>(nullptr), c * a.C, n);
    }
    // W holds version hi - 1; walk the segment back.
    for (int64_t c = hi - 1; c >= lo; --c) {
      if (c < hi - 1) {
        const T* src = stateW(j, lo, c);
        for (int64_t e = threadIdx.x; e < P2; e += blockDim.x) W[L.at(e)] = src[e];
        __syncthreads();
      }
      const int64_t c0 = c * a.C;
      const int n = int(imin(a.C, g1.len - c0));
      if (c + 1 < N) update_bwd(a, b, g1, W, stateS(j, lo, c), c0, c, n);
      apply_bwd(a, b, g1, W, c0, n);
    }
  }
  T* out = a.dW_items + item * P2;
  for (int64_t e = threadIdx.x; e < P2; e += blockDim.x) out[e] = dW[L.at(e)];
  if (a.qk) qk_backward(a, b, g1, N);
}

}  // namespace ttt::cuda::persistent
