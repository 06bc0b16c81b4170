// Sliding-window attention kernels (see attention.h). fp32 SIMT tiles, flash style:
//
//   forward   block = (64 queries, head, sequence); Q tile stays in shared memory, the key/value tiles inside
//             the window stream through it; online softmax in base 2 (scores pre-multiplied by log2(e)/sqrt(hd)).
//   backward  delta = rowsum(dO * O) per (row, head) into the workspace; then
//             dk/dv: block = (64 keys, head, sequence), walks the query tiles that see its keys;
//             dq:    block = (64 queries, head, sequence), walks the key tiles of its window.
//             Each output row is owned by one block and accumulated in a fixed order: no atomics.
//
// Every block has 256 threads as a 16 x 16 grid (ty, tx). In a score tile [64 rows x 64 cols] thread (ty, tx)
// holds rows ty*4 + r and columns tx + 16*c (r, c < 4); in an output tile [64 rows x HD] it holds rows ty*4 + r
// and columns tx*CPT + n (CPT = HD/16). The 16 threads of a row are 16 consecutive lanes of one warp, so row
// reductions are 4 xor-shuffles (whose result is the same in every lane, bit for bit).
//
// Shared tiles [64 x HD] have row stride HD + 4 (== 4 mod 32 words): the float4 reads of 16 different rows at
// the same column by 8 lanes of a quarter-warp hit 32 different banks. Tiles are zero-padded (rows past the
// sequence end, columns past hd), so padded columns add nothing to the dot products; masked scores are -inf
// (forward) or probabilities exactly 0 (backward).
//
// Speed (H100, the 760m shape S=1 N=32768 heads=24 hd=64 window=2048): forward 12.9 ms (~34 TFLOP/s of fp32
// FMA counting the visited tiles), backward 44.2 ms including delta. A TF32 tensor-core variant of the four tile
// products (wmma m16n16k8 on the same shared tiles) measured 13.1 / 45.2 ms: the FMA work is not what bounds
// these kernels (tile loads, the softmax and the synchronisations are), so it was dropped; a faster tensor-core
// version would need register-resident fragments (mma.sync with ldmatrix, as flash-attention 2 does).
#include "backend/cuda/attention.h"
#include "backend/cuda/attention_host.cuh"
#include "backend/cuda/check.cuh"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "backend/attention_workspace.h"
#include "core/error.h"

namespace ttt::cuda {

namespace {

using namespace attn;

constexpr int kThreads = 256;
constexpr int kTile = 64;        // queries per query tile = keys per key tile
constexpr int kPS = kTile + 4;   // row stride of the [64 x 64] score tiles in shared memory



template <int HD>
struct Tiles {
  static constexpr int SP = HD + 4;        // row stride of a [64 x HD] tile
  static constexpr int CPT = HD / 16;      // output columns per thread
  static constexpr int kTileFloats = kTile * SP;
  static constexpr int kScoreFloats = kTile * kPS;
};

__device__ __forceinline__ float comp(const float4& v, int i) { return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w; }

__device__ __forceinline__ float row_max16(float v) {
  for (int o = 8; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float row_sum16(float v) {
  for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Tile [64 x HD] of rows row0.. of a sequence (g: row 0, first column of the head) into shared memory;
// rows >= rows_valid and columns >= hd are zero. vec: hd, ld and g allow float4 loads.
template <int HD>
__device__ __forceinline__ void load_tile(float* __restrict__ sm, const float* __restrict__ g, int64_t ld, int row0,
                                          int rows_valid, int hd, bool vec) {
  constexpr int SP = Tiles<HD>::SP;
  if (vec) {
    constexpr int C4 = HD / 4;
    for (int e = threadIdx.x; e < kTile * C4; e += kThreads) {
      const int r = e / C4, c = (e % C4) * 4;
      float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
      if (r < rows_valid && c < hd) x = __ldg(reinterpret_cast<const float4*>(g + int64_t(row0 + r) * ld + c));
      *reinterpret_cast<float4*>(sm + r * SP + c) = x;
    }
  } else {
    for (int e = threadIdx.x; e < kTile * HD; e += kThreads) {
      const int r = e / HD, c = e % HD;
      sm[r * SP + c] = (r < rows_valid && c < hd) ? __ldg(g + int64_t(row0 + r) * ld + c) : 0.f;
    }
  }
}

// A row segment of CPT floats (CPT = 2, 4 or 8) from shared memory.
template <int CPT>
__device__ __forceinline__ void load_seg(const float* p, float (&v)[CPT]) {
  if constexpr (CPT == 2) {
    const float2 a = *reinterpret_cast<const float2*>(p);
    v[0] = a.x, v[1] = a.y;
  } else {
#pragma unroll
    for (int n = 0; n < CPT; n += 4) {
      const float4 a = *reinterpret_cast<const float4*>(p + n);
      v[n] = a.x, v[n + 1] = a.y, v[n + 2] = a.z, v[n + 3] = a.w;
    }
  }
}

// acc[r][c] += sum_d A[ty*4 + r][d] * B[tx + 16c][d]   (A, B: [64 x HD] tiles; a score tile A B^T)
template <int HD>
__device__ __forceinline__ void mm_abt(const float* __restrict__ A, const float* __restrict__ B, float (&acc)[4][4],
                                       int ty, int tx) {
  constexpr int SP = Tiles<HD>::SP;
#pragma unroll 4
  for (int d = 0; d < HD; d += 4) {
    float4 a[4], b[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) a[r] = *reinterpret_cast<const float4*>(A + (ty * 4 + r) * SP + d);
#pragma unroll
    for (int c = 0; c < 4; ++c) b[c] = *reinterpret_cast<const float4*>(B + (tx + 16 * c) * SP + d);
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        float s = acc[r][c];
        s = fmaf(a[r].x, b[c].x, s);
        s = fmaf(a[r].y, b[c].y, s);
        s = fmaf(a[r].z, b[c].z, s);
        s = fmaf(a[r].w, b[c].w, s);
        acc[r][c] = s;
      }
  }
}

// acc[r][n] += sum_j P[ty*4 + r][j] * V[j][tx*CPT + n]   (P: [64 x 64] score tile, V: [64 x HD] tile)
template <int HD>
__device__ __forceinline__ void mm_pv(const float* __restrict__ P, const float* __restrict__ V,
                                      float (&acc)[4][Tiles<HD>::CPT], int ty, int tx) {
  constexpr int SP = Tiles<HD>::SP, CPT = Tiles<HD>::CPT;
#pragma unroll 2
  for (int j = 0; j < kTile; j += 4) {
    float4 p[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) p[r] = *reinterpret_cast<const float4*>(P + (ty * 4 + r) * kPS + j);
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) {
      float v[CPT];
      load_seg<CPT>(V + (j + jj) * SP + tx * CPT, v);
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const float pr = comp(p[r], jj);
#pragma unroll
        for (int n = 0; n < CPT; ++n) acc[r][n] = fmaf(pr, v[n], acc[r][n]);
      }
    }
  }
}

// Key j sees query i (positions inside one sequence): i - window < j <= i, i < N.
__device__ __forceinline__ bool visible(int i, int j, const Geo& g) { return i < g.N && j <= i && j > i - g.window; }

// Output tile rows ty*4 + r of positions row0 + ..., columns tx*CPT + n < hd, times `mul`.
template <int HD>
__device__ __forceinline__ void store_tile(float* __restrict__ g, int64_t ld, int row0, const Geo& geo,
                                           const float (&acc)[4][Tiles<HD>::CPT], float mul, int ty, int tx) {
  constexpr int CPT = Tiles<HD>::CPT;
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int i = row0 + ty * 4 + r;
    if (i >= geo.N) continue;
    float* dst = g + int64_t(i) * ld;
#pragma unroll
    for (int n = 0; n < CPT; ++n)
      if (tx * CPT + n < geo.hd) dst[tx * CPT + n] = acc[r][n] * mul;
  }
}

// Bits of the `vec` argument of the kernels: which inputs allow float4 tile loads.

// ---- forward ---------------------------------------------------------------------------------------------
template <int HD>
__global__ void __launch_bounds__(kThreads) k_swa_fwd(Geo g, const float* __restrict__ q, int64_t ldq,
                                                      const float* __restrict__ k, int64_t ldk,
                                                      const float* __restrict__ v, int64_t ldv, float* __restrict__ o,
                                                      int64_t ldo, float* __restrict__ lse, int vec) {
  using T = Tiles<HD>;
  constexpr int CPT = T::CPT;
  extern __shared__ float4 smem4[];
  float* Qs = reinterpret_cast<float*>(smem4);
  float* Ks = Qs + T::kTileFloats;
  float* Vs = Ks + T::kTileFloats;
  float* Ps = Vs + T::kTileFloats;
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  const int q0 = blockIdx.x * kTile, h = blockIdx.y;
  const int64_t base = int64_t(blockIdx.z) * g.N, col = int64_t(h) * g.hd;
  const float* kb = k + base * ldk + col;
  const float* vb = v + base * ldv + col;
  load_tile<HD>(Qs, q + base * ldq + col, ldq, q0, min(kTile, g.N - q0), g.hd, vec & kVecQ);

  float m[4], l[4], acc[4][CPT];
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    m[r] = -INFINITY, l[r] = 0.f;
#pragma unroll
    for (int n = 0; n < CPT; ++n) acc[r][n] = 0.f;
  }
  const int k_begin = max(0, q0 - g.window + 1), k_end = min(g.N, q0 + kTile);
  for (int k0 = k_begin; k0 < k_end; k0 += kTile) {
    __syncthreads();  // the previous tile's K, V and P are no longer read
    load_tile<HD>(Ks, kb, ldk, k0, min(kTile, g.N - k0), g.hd, vec & kVecK);
    load_tile<HD>(Vs, vb, ldv, k0, min(kTile, g.N - k0), g.hd, vec & kVecV);
    __syncthreads();
    float s[4][4] = {};
    mm_abt<HD>(Qs, Ks, s, ty, tx);
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int i = q0 + ty * 4 + r;
      float mx = -INFINITY;
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        s[r][c] = visible(i, k0 + tx + 16 * c, g) ? s[r][c] * g.scale_log2 : -INFINITY;
        mx = fmaxf(mx, s[r][c]);
      }
      mx = row_max16(mx);
      const float m_new = fmaxf(m[r], mx);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;  // a row with nothing visible yet stays at zero
      const float alpha = exp2f(m[r] - m_use);
      float sum = 0.f;
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const float p = exp2f(s[r][c] - m_use);
        sum += p;
        Ps[(ty * 4 + r) * kPS + tx + 16 * c] = p;
      }
      l[r] = l[r] * alpha + sum;
      m[r] = m_new;
#pragma unroll
      for (int n = 0; n < CPT; ++n) acc[r][n] *= alpha;
    }
    __syncthreads();
    mm_pv<HD>(Ps, Vs, acc, ty, tx);
  }
  float* ob = o + base * ldo + col;
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int i = q0 + ty * 4 + r;
    const float L = row_sum16(l[r]);
    if (i >= g.N) continue;
    const float inv = 1.f / L;
    float* dst = ob + int64_t(i) * ldo;
#pragma unroll
    for (int n = 0; n < CPT; ++n)
      if (tx * CPT + n < g.hd) dst[tx * CPT + n] = acc[r][n] * inv;
    if (tx == 0) lse[(base + i) * g.heads + h] = (m[r] + log2f(L)) * kLn2;
  }
}

// ---- backward --------------------------------------------------------------------------------------------
// delta[row, h] = <dO, O> over the head's columns: one warp per (row, head), fixed shuffle tree.
__global__ void k_swa_delta(const float* __restrict__ o, int64_t ldo, const float* __restrict__ dO, int64_t lddo,
                            float* __restrict__ delta, int64_t rows, int heads, int hd) {
  const int64_t idx = int64_t(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (idx >= rows * heads) return;  // whole warps leave together
  const int64_t r = idx / heads, c0 = (idx % heads) * hd;
  const float* a = o + r * ldo + c0;
  const float* b = dO + r * lddo + c0;
  float acc = 0.f;
  for (int c = lane; c < hd; c += 32) acc = fmaf(a[c], b[c], acc);
  for (int s = 16; s > 0; s >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, s);
  if (lane == 0) delta[idx] = acc;
}

// dk, dv of 64 keys: for every query tile that sees them, P^T = exp(scale K Q^T - lse) (masked),
// dP^T = V dO^T, dS^T = P^T (dP^T - delta); dv += P^T dO, dk += scale dS^T Q.
template <int HD>
__global__ void __launch_bounds__(kThreads) k_swa_bwd_dkdv(Geo g, const float* __restrict__ q, int64_t ldq,
                                                           const float* __restrict__ k, int64_t ldk,
                                                           const float* __restrict__ v, int64_t ldv,
                                                           const float* __restrict__ dO, int64_t lddo,
                                                           const float* __restrict__ lse,
                                                           const float* __restrict__ delta, float* __restrict__ dk,
                                                           int64_t lddk, float* __restrict__ dv, int64_t lddv, int vec) {
  using T = Tiles<HD>;
  constexpr int CPT = T::CPT;
  extern __shared__ float4 smem4[];
  float* Ks = reinterpret_cast<float*>(smem4);
  float* Vs = Ks + T::kTileFloats;
  float* Qs = Vs + T::kTileFloats;
  float* dOs = Qs + T::kTileFloats;
  float* Ps = dOs + T::kTileFloats;
  float* dSs = Ps + T::kScoreFloats;
  float* lse2 = dSs + T::kScoreFloats;  // [64] lse * log2(e) of the query tile
  float* dl = lse2 + kTile;             // [64] delta of the query tile
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  const int k0 = blockIdx.x * kTile, h = blockIdx.y;
  const int64_t base = int64_t(blockIdx.z) * g.N, col = int64_t(h) * g.hd;
  const bool want_dk = dk != nullptr;
  const float* qb = q + base * ldq + col;
  const float* db = dO + base * lddo + col;
  load_tile<HD>(Ks, k + base * ldk + col, ldk, k0, min(kTile, g.N - k0), g.hd, vec & kVecK);
  load_tile<HD>(Vs, v + base * ldv + col, ldv, k0, min(kTile, g.N - k0), g.hd, vec & kVecV);

  float adk[4][CPT], adv[4][CPT];
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int n = 0; n < CPT; ++n) adk[r][n] = 0.f, adv[r][n] = 0.f;
  // Queries i with j <= i < j + window for some key j of the tile.
  const int64_t q_lim = int64_t(k0) + kTile - 1 + g.window;
  const int q_end = q_lim < g.N ? int(q_lim) : g.N;
  for (int q0 = k0; q0 < q_end; q0 += kTile) {
    __syncthreads();  // the previous query tile is no longer read
    const int rows = min(kTile, g.N - q0);
    load_tile<HD>(Qs, qb, ldq, q0, rows, g.hd, vec & kVecQ);
    load_tile<HD>(dOs, db, lddo, q0, rows, g.hd, vec & kVecDO);
    if (threadIdx.x < kTile) {
      const int t = threadIdx.x;
      lse2[t] = t < rows ? lse[(base + q0 + t) * g.heads + h] * kLog2e : 0.f;
      dl[t] = t < rows ? delta[(base + q0 + t) * g.heads + h] : 0.f;
    }
    __syncthreads();
    float p[4][4] = {}, dp[4][4] = {};
    mm_abt<HD>(Ks, Qs, p, ty, tx);  // rows: keys, columns: queries
    if (want_dk) mm_abt<HD>(Vs, dOs, dp, ty, tx);
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int j = k0 + ty * 4 + r;
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int ic = tx + 16 * c;
        const float pr = visible(q0 + ic, j, g) ? exp2f(p[r][c] * g.scale_log2 - lse2[ic]) : 0.f;
        Ps[(ty * 4 + r) * kPS + ic] = pr;
        dSs[(ty * 4 + r) * kPS + ic] = pr * (dp[r][c] - dl[ic]);
      }
    }
    __syncthreads();
    mm_pv<HD>(Ps, dOs, adv, ty, tx);
    if (want_dk) mm_pv<HD>(dSs, Qs, adk, ty, tx);
  }
  if (dv) store_tile<HD>(dv + base * lddv + col, lddv, k0, g, adv, 1.f, ty, tx);
  if (dk) store_tile<HD>(dk + base * lddk + col, lddk, k0, g, adk, g.scale, ty, tx);
}

// dq of 64 queries: for every key tile of their windows, P = exp(scale Q K^T - lse) (masked), dP = dO V^T,
// dS = P (dP - delta); dq += scale dS K.
template <int HD>
__global__ void __launch_bounds__(kThreads) k_swa_bwd_dq(Geo g, const float* __restrict__ q, int64_t ldq,
                                                         const float* __restrict__ k, int64_t ldk,
                                                         const float* __restrict__ v, int64_t ldv,
                                                         const float* __restrict__ dO, int64_t lddo,
                                                         const float* __restrict__ lse,
                                                         const float* __restrict__ delta, float* __restrict__ dq,
                                                         int64_t lddq, int vec) {
  using T = Tiles<HD>;
  constexpr int CPT = T::CPT;
  extern __shared__ float4 smem4[];
  float* Qs = reinterpret_cast<float*>(smem4);
  float* dOs = Qs + T::kTileFloats;
  float* Ks = dOs + T::kTileFloats;
  float* Vs = Ks + T::kTileFloats;
  float* dSs = Vs + T::kTileFloats;
  float* lse2 = dSs + T::kScoreFloats;
  float* dl = lse2 + kTile;
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  const int q0 = blockIdx.x * kTile, h = blockIdx.y;
  const int64_t base = int64_t(blockIdx.z) * g.N, col = int64_t(h) * g.hd;
  const float* kb = k + base * ldk + col;
  const float* vb = v + base * ldv + col;
  const int rows = min(kTile, g.N - q0);
  load_tile<HD>(Qs, q + base * ldq + col, ldq, q0, rows, g.hd, vec & kVecQ);
  load_tile<HD>(dOs, dO + base * lddo + col, lddo, q0, rows, g.hd, vec & kVecDO);
  if (threadIdx.x < kTile) {
    const int t = threadIdx.x;
    lse2[t] = t < rows ? lse[(base + q0 + t) * g.heads + h] * kLog2e : 0.f;
    dl[t] = t < rows ? delta[(base + q0 + t) * g.heads + h] : 0.f;
  }
  float adq[4][CPT];
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int n = 0; n < CPT; ++n) adq[r][n] = 0.f;
  const int k_begin = max(0, q0 - g.window + 1), k_end = min(g.N, q0 + kTile);
  for (int k0 = k_begin; k0 < k_end; k0 += kTile) {
    __syncthreads();
    load_tile<HD>(Ks, kb, ldk, k0, min(kTile, g.N - k0), g.hd, vec & kVecK);
    load_tile<HD>(Vs, vb, ldv, k0, min(kTile, g.N - k0), g.hd, vec & kVecV);
    __syncthreads();
    float p[4][4] = {}, dp[4][4] = {};
    mm_abt<HD>(Qs, Ks, p, ty, tx);
    mm_abt<HD>(dOs, Vs, dp, ty, tx);
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int ir = ty * 4 + r;
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const float pr = visible(q0 + ir, k0 + tx + 16 * c, g) ? exp2f(p[r][c] * g.scale_log2 - lse2[ir]) : 0.f;
        dSs[ir * kPS + tx + 16 * c] = pr * (dp[r][c] - dl[ir]);
      }
    }
    __syncthreads();
    mm_pv<HD>(dSs, Ks, adq, ty, tx);
  }
  store_tile<HD>(dq + base * lddq + col, lddq, q0, g, adq, g.scale, ty, tx);
}

// ---- host side -------------------------------------------------------------------------------------------

// Dynamic shared memory of each kernel.
template <int HD>
constexpr size_t fwd_smem() { return sizeof(float) * (3 * Tiles<HD>::kTileFloats + Tiles<HD>::kScoreFloats); }
template <int HD>
constexpr size_t dkdv_smem() {
  return sizeof(float) * (4 * Tiles<HD>::kTileFloats + 2 * Tiles<HD>::kScoreFloats + 2 * kTile);
}
template <int HD>
constexpr size_t dq_smem() {
  return sizeof(float) * (4 * Tiles<HD>::kTileFloats + Tiles<HD>::kScoreFloats + 2 * kTile);
}

template <class Kernel>
void set_smem(Kernel kernel, size_t bytes, const char* name) {
  if (bytes > 48 * 1024)
    TTT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  (void)name;
}

template <int HD>
void fwd_launch(const AttentionShape& s, const Geo& g, const float* q, int64_t ldq, const float* k, int64_t ldk,
                const float* v, int64_t ldv, float* o, int64_t ldo, float* lse, int vec, cudaStream_t st) {
  const dim3 grid(unsigned((s.N + kTile - 1) / kTile), unsigned(s.heads), unsigned(s.S));
  constexpr size_t smem = fwd_smem<HD>();
  set_smem(k_swa_fwd<HD>, smem, "k_swa_fwd");
  k_swa_fwd<HD><<<grid, kThreads, smem, st>>>(g, q, ldq, k, ldk, v, ldv, o, ldo, lse, vec);
  TTT_LAUNCH_CHECK("k_swa_fwd");
}

template <int HD>
void bwd_launch(const AttentionShape& s, const Geo& g, const float* q, int64_t ldq, const float* k, int64_t ldk,
                const float* v, int64_t ldv, const float* dO, int64_t lddo, const float* lse, const float* delta,
                float* dq, int64_t lddq, float* dk, int64_t lddk, float* dv, int64_t lddv, int vec, cudaStream_t st) {
  const dim3 grid(unsigned((s.N + kTile - 1) / kTile), unsigned(s.heads), unsigned(s.S));
  if (dk || dv) {
    set_smem(k_swa_bwd_dkdv<HD>, dkdv_smem<HD>(), "k_swa_bwd_dkdv");
    k_swa_bwd_dkdv<HD><<<grid, kThreads, dkdv_smem<HD>(), st>>>(g, q, ldq, k, ldk, v, ldv, dO, lddo, lse, delta, dk,
                                                                 lddk, dv, lddv, vec);
    TTT_LAUNCH_CHECK("k_swa_bwd_dkdv");
  }
  if (dq) {
    set_smem(k_swa_bwd_dq<HD>, dq_smem<HD>(), "k_swa_bwd_dq");
    k_swa_bwd_dq<HD><<<grid, kThreads, dq_smem<HD>(), st>>>(g, q, ldq, k, ldk, v, ldv, dO, lddo, lse, delta, dq, lddq,
                                                             vec);
    TTT_LAUNCH_CHECK("k_swa_bwd_dq");
  }
}

}  // namespace

void swa_forward(const AttentionShape& s, const float* q, int64_t ldq, const float* k, int64_t ldk, const float* v,
                 int64_t ldv, float* o, int64_t ldo, float* lse, void* stream) {
  if (!check_forward("swa_forward", s, q, ldq, k, ldk, v, ldv, o, ldo, lse)) return;
  const Geo g = make_geo(s);
  const int vec = vec_flags(s, q, ldq, k, ldk, v, ldv);
  const cudaStream_t st = as_stream(stream);
  if (s.hd <= 32)
    fwd_launch<32>(s, g, q, ldq, k, ldk, v, ldv, o, ldo, lse, vec, st);
  else if (s.hd <= 64)
    fwd_launch<64>(s, g, q, ldq, k, ldk, v, ldv, o, ldo, lse, vec, st);
  else
    fwd_launch<128>(s, g, q, ldq, k, ldk, v, ldv, o, ldo, lse, vec, st);
}

size_t swa_backward_workspace(const AttentionShape& s) {
  return backend::swa_backward_workspace_bytes(s.S, s.N, s.heads);  // the memory estimate's size too
}

void swa_backward(const AttentionShape& s, const float* q, int64_t ldq, const float* k, int64_t ldk, const float* v,
                  int64_t ldv, const float* o, int64_t ldo, const float* lse, const float* dO, int64_t lddo,
                  float* dq, int64_t lddq, float* dk, int64_t lddk, float* dv, int64_t lddv, void* work,
                  void* stream) {
  if (!check_backward("swa_backward", s, q, ldq, k, ldk, v, ldv, o, ldo, lse, dO, lddo, dq, lddq, dk, lddk, dv,
                      lddv, work, swa_backward_workspace(s)))
    return;
  const Geo g = make_geo(s);
  const cudaStream_t st = as_stream(stream);
  float* delta = static_cast<float*>(work);
  const int64_t rows = s.S * s.N;
  const int64_t warps = rows * s.heads, per_block = kThreads / 32;
  k_swa_delta<<<unsigned((warps + per_block - 1) / per_block), kThreads, 0, st>>>(o, ldo, dO, lddo, delta, rows,
                                                                                   int(s.heads), int(s.hd));
  TTT_LAUNCH_CHECK("k_swa_delta");
  const int vec = vec_flags(s, q, ldq, k, ldk, v, ldv, dO, lddo);
  if (s.hd <= 32)
    bwd_launch<32>(s, g, q, ldq, k, ldk, v, ldv, dO, lddo, lse, delta, dq, lddq, dk, lddk, dv, lddv, vec, st);
  else if (s.hd <= 64)
    bwd_launch<64>(s, g, q, ldq, k, ldk, v, ldv, dO, lddo, lse, delta, dq, lddq, dk, lddk, dv, lddv, vec, st);
  else
    bwd_launch<128>(s, g, q, ldq, k, ldk, v, ldv, dO, lddo, lse, delta, dq, lddq, dk, lddk, dv, lddv, vec, st);
}

}  // namespace ttt::cuda
