// Sliding-window attention with bf16 tensor-core products (see attention.h, swa_forward_bf16 /
// swa_backward_bf16): the semantics, layouts and checks of the fp32 kernels in attention.cu, with every tile
// product an mma.sync m16n8k16 (bf16 operands, fp32 accumulation), flash-attention-2 style; on Hopper the
// bf16-operand forward with hd = 64 is k_swa_fwd_wgmma instead (warpgroup products, attention_wgmma.cu), and its
// backward k_swa_bwd_dkdv_wgmma / k_swa_bwd_dq_wgmma (attention_wgmma_bwd.cu, after the delta kernel here); the tile
// machinery all use is attention_bf16_tiles.cuh.
//
//   forward   block = (128 queries, head, sequence), 8 warps of 16 query rows each. The Q tile is converted to
//             bf16 once and kept in registers as A fragments (hd <= 64; wider heads re-read it from shared
//             memory); 64-key K/V tiles stream through double-buffered shared memory (fp32 global -> registers ->
//             bf16 shared, the next tile's loads in flight while the current one is multiplied). S = Q K^T lands
//             in accumulator fragments, the online softmax (base 2) runs on them, and P is re-packed to bf16 in
//             registers as the A operand of P V (the C layout of two n8 tiles is the A layout of one k16 step).
//   backward  delta = rowsum(bf16(dO) * O) (fp32) into the workspace; then
//             dk/dv: block = 128 keys (warp: 16 keys, K and V fragments in registers), streams 64-query tiles of
//                    Q, dO, lse, delta: S^T = K Q^T, dP^T = V dO^T, P^T, dS^T in registers, dV += P^T dO,
//                    dK += dS^T Q (B operands by ldmatrix.trans).
//             dq:    block = 128 queries (Q and dO fragments in registers), streams 64-key tiles of K and V:
//                    S = Q K^T, dP = dO V^T, dS; dQ += dS K.
//             Every output row belongs to one warp and is accumulated in a fixed order: no atomics, repeated
//             runs are bit-identical.
// Inputs: fp32 (converted to bf16 as each tile is stored in shared memory, through registers) or bf16 (the same
// bits, copied by cp.async straight into shared memory: no conversion work and no staging registers). Both run
// the same kernel templates (TileRows below), so the two give bit-identical results for the same bf16 values.
// Tiles that need no element mask (inside the window, below the diagonal, inside the sequence) run a copy of the
// tile body without the per-element visibility test. exp2 is the hardware ex2.approx.ftz (results below 2^-126
// flush to zero; they are under every accumulated sum's rounding).
// Speed (H100, the 760m shape S=1 N=32768 heads=24 hd=64 window=2048): forward 3.55 ms, backward 11.7 ms
// including delta (fp32 kernels: 12.9 / 44.3 ms). Error against float64: relative L2 <= ~1e-2 per output.
// Warps skip key (query) tiles that their 16 rows cannot see; only tiles crossing the causal diagonal, the
// window edge or the sequence end are masked element by element. Shared tiles are bf16 [rows x HD] with a row
// stride of HD + 8 elements (16 bytes of padding: ldmatrix's 8 row reads hit 8 different bank quads).
#include "backend/cuda/attention_bf16_tiles.cuh"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "backend/attention_workspace.h"
#include "backend/cuda/attention_cudnn.h"
#include "core/error.h"

namespace ttt::cuda {

// attention_wgmma.cu: the Hopper forward (launched where swa_forward_bf16_uses_wgmma says).
void swa_forward_bf16_wgmma(int warpgroups, const AttentionShape& s, const __nv_bfloat16* q, int64_t ldq,
                            const __nv_bfloat16* k, int64_t ldk, const __nv_bfloat16* v, int64_t ldv, float* o,
                            int64_t ldo, float* lse, cudaStream_t stream);
// attention_wgmma_bwd.cu: the Hopper backward kernels (launched where swa_backward_bf16_uses_wgmma says).
void swa_backward_bf16_wgmma(int mode, const AttentionShape& s, const __nv_bfloat16* q, int64_t ldq,
                             const __nv_bfloat16* k, int64_t ldk, const __nv_bfloat16* v, int64_t ldv,
                             const __nv_bfloat16* dO, int64_t lddo, const float* lse, const float* delta, float* dq,
                             int64_t lddq, float* dk, int64_t lddk, float* dv, int64_t lddv, cudaStream_t st);

namespace {

// ---- forward ---------------------------------------------------------------------------------------------
// Blocks per SM the kernels are compiled for (register budget 65536 / (256 threads x blocks)).
// bf16 inputs need no staging registers: two blocks (16 warps) per SM fit in 128 registers per thread.
template <class T, int HD>
constexpr int kFwdBlocks = kAsyncRows<T> && HD <= 64 ? 2 : 1;

template <int HD, class T>
__global__ void __launch_bounds__(kThreads, kFwdBlocks<T, HD>)
    k_swa_fwd_bf16(Geo g, const T* __restrict__ q, int64_t ldq, const T* __restrict__ k, int64_t ldk,
                   const T* __restrict__ v, int64_t ldv, float* __restrict__ o, int64_t ldo,
                   float* __restrict__ lse, int vec) {
  using C = Cfg<HD>;
  constexpr int SP = C::SP;
  extern __shared__ __align__(16) unsigned char smem[];
  __nv_bfloat16* Qs = reinterpret_cast<__nv_bfloat16*>(smem);
  __nv_bfloat16* Ks = reinterpret_cast<__nv_bfloat16*>(smem + C::kBlkB);  // [2] tiles
  __nv_bfloat16* Vs = reinterpret_cast<__nv_bfloat16*>(smem + C::kBlkB + 2 * C::kTileB);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int q0 = blockIdx.x * kBlk, h = blockIdx.y;
  const int64_t base = int64_t(blockIdx.z) * g.N, col = int64_t(h) * g.hd;
  {
    TileRows<T, HD, kBlk> lq{q + base * ldq + col, ldq, g.hd, bool(vec & kVecQ)};
    lq.issue(q0, min(kBlk, g.N - q0), Qs);
    lq.land(Qs);
  }
  const int k_begin = max(0, q0 - g.window + 1), k_end = min(g.N, q0 + kBlk);
  const int ntiles = (k_end - k_begin + kT - 1) / kT;
  constexpr bool kEarly = kAsyncRows<T> || C::kPrefetch;  // next tile's reads in flight during the math
  KvStream<T, HD> kv{{k + base * ldk + col, ldk, g.hd, bool(vec & kVecK)},
                     {v + base * ldv + col, ldv, g.hd, bool(vec & kVecV)}, g.N};
  kv.issue(k_begin, Ks, Vs);
  kv.land(Ks, Vs);
  wait_rows<T>();
  __syncthreads();

  const int r0 = q0 + warp * 16;  // the warp's first query row
  const uint32_t qa = smem_u32(Qs) + (warp * 16 * SP + a_off<SP>(lane)) * 2;
  uint32_t qf[C::kRes ? C::KS : 1][4];
  if constexpr (C::kRes) {
#pragma unroll
    for (int kk = 0; kk < C::KS; ++kk) ldsm_x4(qf[kk], qa + kk * 32);
  }
  float acc[C::NT][4];
#pragma unroll
  for (int n = 0; n < C::NT; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
  // m: running maximum of the raw scores q.k (the scale is applied inside the exponent: one FFMA per element);
  // l: running sum of the probabilities of the rows r0 + g4 and r0 + g4 + 8, this lane's columns only.
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

  for (int it = 0; it < ntiles; ++it) {
    const int k0 = k_begin + it * kT, buf = it & 1;
    const bool has_next = it + 1 < ntiles;
    __nv_bfloat16* Kn = Ks + (buf ^ 1) * kT * SP;
    __nv_bfloat16* Vn = Vs + (buf ^ 1) * kT * SP;
    if (kEarly && has_next) kv.issue(k0 + kT, Kn, Vn);
    const bool active = r0 < g.N && k0 <= r0 + 15 && k0 + kT - 1 > r0 - g.window;
    const auto tile = [&](auto masked) {
      float s[8][4];
#pragma unroll
      for (int n = 0; n < 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
      mm_abt<HD>(s, qf, qa, smem_u32(Ks + buf * kT * SP) + b_off<SP>(lane) * 2);
      float alpha[2];
      softmax_step<8, decltype(masked)::value>(s, m, l, alpha, r0, k0, g);
      scale_rows<C::NT>(acc, alpha);
      mm_pb<HD>(acc, s, smem_u32(Vs + buf * kT * SP) + bt_off<SP>(lane) * 2);
    };
    // Tiles inside the window, below the diagonal and inside the sequence need no element mask.
    if (active) masked_if(!(k0 + kT - 1 <= r0 && k0 > r0 + 15 - g.window && r0 + 15 < g.N), tile);
    if (has_next) {
      if (!kEarly) kv.issue(k0 + kT, Kn, Vn);
      kv.land(Kn, Vn);
    }
    wait_rows<T>();
    __syncthreads();
  }
  finish_rows<HD>(o + base * ldo + col, ldo, lse + base * g.heads + h, r0, g, acc, m, l);
}


// ---- backward --------------------------------------------------------------------------------------------
// delta[row, h] = <bf16(dO), O> over the head's columns (fp32 products and sum). dO rounded as in the tile
// products dP = bf16(dO) bf16(V)^T, so that delta = sum_j P_j dP_j holds up to the V and P rounding and
// dS = P (dP - delta) carries no systematic dO-rounding offset (which would bias dq = sum_j dS_j k_j).
// dO16 (optional, [rows, heads*hd] with leading dimension ld16): bf16(dO), the backward kernels' input.
__global__ void k_swa_delta_bf16(const float* __restrict__ o, int64_t ldo, const float* __restrict__ dO,
                                 int64_t lddo, float* __restrict__ delta, __nv_bfloat16* __restrict__ dO16,
                                 int64_t ld16, int64_t rows, int heads, int hd) {
  const int64_t idx = int64_t(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (idx >= rows * heads) return;
  const int64_t r = idx / heads, c0 = (idx % heads) * hd;
  const float* a = o + r * ldo + c0;
  const float* b = dO + r * lddo + c0;
  float acc = 0.f;
  for (int c = lane; c < hd; c += 32) {
    const __nv_bfloat16 d16 = __float2bfloat16_rn(b[c]);
    if (dO16) dO16[r * ld16 + c0 + c] = d16;
    acc = fmaf(a[c], __bfloat162float(d16), acc);
  }
  for (int s = 16; s > 0; s >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, s);
  if (lane == 0) delta[idx] = acc;
}

// dq fits two blocks per SM with bf16 inputs (a few bytes spilled).
template <class T, int HD>
constexpr int kDqBlocks = kAsyncRows<T> && HD <= 64 ? 2 : 1;

// dk/dv keeps twice dq's accumulators: two blocks per SM (bf16 inputs) only with its K and V fragments re-read
// from shared memory for every tile instead of held in registers.
template <class T, int HD>
constexpr int kDkdvBlocks = 1;
template <class T, int HD>
constexpr bool kDkdvResident = Cfg<HD>::kRes && kDkdvBlocks<T, HD> == 1;

// dk, dv of 128 keys (warp: 16 keys); streams the 64-query tiles that see them.
template <int HD, class T>
__global__ void __launch_bounds__(kThreads, kDkdvBlocks<T, HD>)
    k_swa_bwd_dkdv_bf16(Geo g, const T* __restrict__ q, int64_t ldq, const T* __restrict__ k, int64_t ldk,
                        const T* __restrict__ v, int64_t ldv, const T* __restrict__ dO, int64_t lddo,
                        const float* __restrict__ lse, const float* __restrict__ delta, float* __restrict__ dk,
                        int64_t lddk, float* __restrict__ dv, int64_t lddv, int vec) {
  using C = Cfg<HD>;
  constexpr int SP = C::SP;
  extern __shared__ __align__(16) unsigned char smem[];
  __nv_bfloat16* Ks = reinterpret_cast<__nv_bfloat16*>(smem);
  __nv_bfloat16* Vs = reinterpret_cast<__nv_bfloat16*>(smem + C::kBlkB);
  __nv_bfloat16* Qs = reinterpret_cast<__nv_bfloat16*>(smem + 2 * C::kBlkB);                  // [2]
  __nv_bfloat16* dOs = reinterpret_cast<__nv_bfloat16*>(smem + 2 * C::kBlkB + 2 * C::kTileB);  // [2]
  float* lse2 = reinterpret_cast<float*>(smem + 2 * C::kBlkB + 4 * C::kTileB);                 // [2][64]
  float* dls = lse2 + 2 * kT;                                                                 // [2][64]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g4 = lane / 4, t4 = lane % 4;
  const int k0 = blockIdx.x * kBlk, h = blockIdx.y;
  const int64_t base = int64_t(blockIdx.z) * g.N, col = int64_t(h) * g.hd;
  const bool want_dk = dk != nullptr;
  {
    TileRows<T, HD, kBlk> lk{k + base * ldk + col, ldk, g.hd, bool(vec & kVecK)};
    TileRows<T, HD, kBlk> lv{v + base * ldv + col, ldv, g.hd, bool(vec & kVecV)};
    lk.issue(k0, min(kBlk, g.N - k0), Ks);
    lk.land(Ks);
    lv.issue(k0, min(kBlk, g.N - k0), Vs);
    lv.land(Vs);
  }
  const int64_t q_lim = int64_t(k0) + kBlk - 1 + g.window;
  const int q_end = q_lim < g.N ? int(q_lim) : g.N;
  const int ntiles = (q_end - k0 + kT - 1) / kT;
  using Rows = TileRows<T, HD, kT>;
  constexpr bool kEarly = kAsyncRows<T> || C::kPrefetch;
  Rows lq{q + base * ldq + col, ldq, g.hd, bool(vec & kVecQ)}, ld{dO + base * lddo + col, lddo, g.hd,
                                                                  bool(vec & kVecDO)};
  float pl = 0.f, pd = 0.f;  // lse2 / delta of query q0 + threadIdx.x (threads < 64)
  const auto issue_q = [&](int q0, int buf) {
    const int rows = min(kT, g.N - q0);
    lq.issue(q0, rows, Qs + buf * kT * SP);
    ld.issue(q0, rows, dOs + buf * kT * SP);
    if (threadIdx.x < kT) {
      const int t = threadIdx.x;
      pl = t < rows ? lse[(base + q0 + t) * g.heads + h] * kLog2e : 0.f;
      pd = t < rows ? delta[(base + q0 + t) * g.heads + h] : 0.f;
    }
  };
  const auto land_q = [&](int buf) {
    lq.land(Qs + buf * kT * SP);
    ld.land(dOs + buf * kT * SP);
    if (threadIdx.x < kT) lse2[buf * kT + threadIdx.x] = pl, dls[buf * kT + threadIdx.x] = pd;
  };
  issue_q(k0, 0);
  land_q(0);
  wait_rows<T>();
  __syncthreads();

  const int j0 = k0 + warp * 16;  // the warp's first key
  const uint32_t ka = smem_u32(Ks) + (warp * 16 * SP + a_off<SP>(lane)) * 2;
  const uint32_t va = smem_u32(Vs) + (warp * 16 * SP + a_off<SP>(lane)) * 2;
  constexpr bool kRes = kDkdvResident<T, HD>;
  uint32_t kf[kRes ? C::KS : 1][4], vf[kRes ? C::KS : 1][4];
  if constexpr (kRes) {
#pragma unroll
    for (int kk = 0; kk < C::KS; ++kk) ldsm_x4(kf[kk], ka + kk * 32), ldsm_x4(vf[kk], va + kk * 32);
  }
  float adk[C::NT][4], adv[C::NT][4];
#pragma unroll
  for (int n = 0; n < C::NT; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) adk[n][e] = 0.f, adv[n][e] = 0.f;

  for (int it = 0; it < ntiles; ++it) {
    const int q0 = k0 + it * kT, buf = it & 1;
    const bool has_next = it + 1 < ntiles;
    if (kEarly && has_next) issue_q(q0 + kT, buf ^ 1);
    const bool active = j0 < g.N && q0 + kT - 1 >= j0 && q0 <= j0 + 15 + g.window - 1;
    const auto tile = [&](auto masked) {
      const uint32_t qt = smem_u32(Qs + buf * kT * SP), dt = smem_u32(dOs + buf * kT * SP);
      const float* l2 = lse2 + buf * kT;
      const float* dl = dls + buf * kT;
      float p[8][4];
#pragma unroll
      for (int n = 0; n < 8; ++n) p[n][0] = p[n][1] = p[n][2] = p[n][3] = 0.f;
      mm_abt<HD, kRes>(p, kf, ka, qt + b_off<SP>(lane) * 2);  // rows: keys, columns: queries
#pragma unroll
      for (int n = 0; n < 8; ++n) {
        const float2 lc = *reinterpret_cast<const float2*>(l2 + n * 8 + 2 * t4);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float x = ex2(fmaf(p[n][e], g.scale_log2, -((e % 2) ? lc.y : lc.x)));
          if constexpr (decltype(masked)::value) {
            const int ic = n * 8 + 2 * t4 + (e % 2);
            p[n][e] = visible(q0 + ic, j0 + g4 + (e / 2) * 8, g) ? x : 0.f;
          } else {
            p[n][e] = x;
          }
        }
      }
      mm_pb<HD>(adv, p, dt + bt_off<SP>(lane) * 2);  // dV += P^T dO
      if (want_dk) {
        float dp[8][4];
#pragma unroll
        for (int n = 0; n < 8; ++n) dp[n][0] = dp[n][1] = dp[n][2] = dp[n][3] = 0.f;
        mm_abt<HD, kRes>(dp, vf, va, dt + b_off<SP>(lane) * 2);  // dP^T = V dO^T
#pragma unroll
        for (int n = 0; n < 8; ++n) {
          const float2 dc = *reinterpret_cast<const float2*>(dl + n * 8 + 2 * t4);
#pragma unroll
          for (int e = 0; e < 4; ++e) dp[n][e] = p[n][e] * (dp[n][e] - ((e % 2) ? dc.y : dc.x));
        }
        mm_pb<HD>(adk, dp, qt + bt_off<SP>(lane) * 2);  // dK += dS^T Q
      }
    };
    if (active) masked_if(!(q0 >= j0 + 15 && q0 + kT - 1 < j0 + g.window && q0 + kT - 1 < g.N), tile);
    if (has_next) {
      if (!kEarly) issue_q(q0 + kT, buf ^ 1);
      land_q(buf ^ 1);
    }
    wait_rows<T>();
    __syncthreads();
  }
  if (dv) store_rows<HD>(dv + base * lddv + col, lddv, j0, g, adv, 1.f, 1.f);
  if (dk) store_rows<HD>(dk + base * lddk + col, lddk, j0, g, adk, g.scale, g.scale);
}

// dq of 128 queries (warp: 16 queries); streams the 64-key tiles of their windows.
template <int HD, class T>
__global__ void __launch_bounds__(kThreads, kDqBlocks<T, HD>)
    k_swa_bwd_dq_bf16(Geo g, const T* __restrict__ q, int64_t ldq, const T* __restrict__ k, int64_t ldk,
                      const T* __restrict__ v, int64_t ldv, const T* __restrict__ dO, int64_t lddo,
                      const float* __restrict__ lse, const float* __restrict__ delta, float* __restrict__ dq,
                      int64_t lddq, int vec) {
  using C = Cfg<HD>;
  constexpr int SP = C::SP;
  extern __shared__ __align__(16) unsigned char smem[];
  __nv_bfloat16* Qs = reinterpret_cast<__nv_bfloat16*>(smem);
  __nv_bfloat16* dOs = reinterpret_cast<__nv_bfloat16*>(smem + C::kBlkB);
  __nv_bfloat16* Ks = reinterpret_cast<__nv_bfloat16*>(smem + 2 * C::kBlkB);                  // [2]
  __nv_bfloat16* Vs = reinterpret_cast<__nv_bfloat16*>(smem + 2 * C::kBlkB + 2 * C::kTileB);   // [2]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g4 = lane / 4, t4 = lane % 4;
  const int q0 = blockIdx.x * kBlk, h = blockIdx.y;
  const int64_t base = int64_t(blockIdx.z) * g.N, col = int64_t(h) * g.hd;
  {
    TileRows<T, HD, kBlk> lq{q + base * ldq + col, ldq, g.hd, bool(vec & kVecQ)};
    TileRows<T, HD, kBlk> ld{dO + base * lddo + col, lddo, g.hd, bool(vec & kVecDO)};
    lq.issue(q0, min(kBlk, g.N - q0), Qs);
    lq.land(Qs);
    ld.issue(q0, min(kBlk, g.N - q0), dOs);
    ld.land(dOs);
  }
  const int k_begin = max(0, q0 - g.window + 1), k_end = min(g.N, q0 + kBlk);
  const int ntiles = (k_end - k_begin + kT - 1) / kT;
  constexpr bool kEarly = kAsyncRows<T> || C::kPrefetch;  // next tile's reads in flight during the math
  KvStream<T, HD> kv{{k + base * ldk + col, ldk, g.hd, bool(vec & kVecK)},
                     {v + base * ldv + col, ldv, g.hd, bool(vec & kVecV)}, g.N};
  kv.issue(k_begin, Ks, Vs);
  kv.land(Ks, Vs);
  wait_rows<T>();
  __syncthreads();

  const int r0 = q0 + warp * 16;
  float rl[2], rd[2];  // lse2, delta of rows r0 + g4, r0 + g4 + 8
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = r0 + g4 + 8 * r;
    rl[r] = i < g.N ? lse[(base + i) * g.heads + h] * kLog2e : 0.f;
    rd[r] = i < g.N ? delta[(base + i) * g.heads + h] : 0.f;
  }
  const uint32_t qa = smem_u32(Qs) + (warp * 16 * SP + a_off<SP>(lane)) * 2;
  const uint32_t da = smem_u32(dOs) + (warp * 16 * SP + a_off<SP>(lane)) * 2;
  uint32_t qf[C::kRes ? C::KS : 1][4], df[C::kRes ? C::KS : 1][4];
  if constexpr (C::kRes) {
#pragma unroll
    for (int kk = 0; kk < C::KS; ++kk) ldsm_x4(qf[kk], qa + kk * 32), ldsm_x4(df[kk], da + kk * 32);
  }
  float adq[C::NT][4];
#pragma unroll
  for (int n = 0; n < C::NT; ++n) adq[n][0] = adq[n][1] = adq[n][2] = adq[n][3] = 0.f;

  for (int it = 0; it < ntiles; ++it) {
    const int k0 = k_begin + it * kT, buf = it & 1;
    const bool has_next = it + 1 < ntiles;
    __nv_bfloat16* Kn = Ks + (buf ^ 1) * kT * SP;
    __nv_bfloat16* Vn = Vs + (buf ^ 1) * kT * SP;
    if (kEarly && has_next) kv.issue(k0 + kT, Kn, Vn);
    const bool active = r0 < g.N && k0 <= r0 + 15 && k0 + kT - 1 > r0 - g.window;
    const auto tile = [&](auto masked) {
      const uint32_t kt = smem_u32(Ks + buf * kT * SP), vt = smem_u32(Vs + buf * kT * SP);
      float p[8][4], dp[8][4];
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) p[n][e] = 0.f, dp[n][e] = 0.f;
      mm_abt<HD>(p, qf, qa, kt + b_off<SP>(lane) * 2);
      mm_abt<HD>(dp, df, da, vt + b_off<SP>(lane) * 2);
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float pr = ex2(fmaf(p[n][e], g.scale_log2, -rl[e / 2]));
          if constexpr (decltype(masked)::value) {
            if (!visible(r0 + g4 + (e / 2) * 8, k0 + n * 8 + 2 * t4 + (e % 2), g)) pr = 0.f;
          }
          dp[n][e] = pr * (dp[n][e] - rd[e / 2]);
        }
      mm_pb<HD>(adq, dp, kt + bt_off<SP>(lane) * 2);  // dQ += dS K
    };
    // Tiles inside the window, below the diagonal and inside the sequence need no element mask.
    if (active) masked_if(!(k0 + kT - 1 <= r0 && k0 > r0 + 15 - g.window && r0 + 15 < g.N), tile);
    if (has_next) {
      if (!kEarly) kv.issue(k0 + kT, Kn, Vn);
      kv.land(Kn, Vn);
    }
    wait_rows<T>();
    __syncthreads();
  }
  store_rows<HD>(dq + base * lddq + col, lddq, r0, g, adq, g.scale, g.scale);
}

// ---- host side -------------------------------------------------------------------------------------------

template <int HD>
constexpr size_t fwd_smem() { return size_t(Cfg<HD>::kBlkB) + 4 * size_t(Cfg<HD>::kTileB); }
template <int HD>
constexpr size_t dkdv_smem() { return 2 * size_t(Cfg<HD>::kBlkB) + 4 * size_t(Cfg<HD>::kTileB) + 4 * kT * sizeof(float); }
template <int HD>
constexpr size_t dq_smem() { return 2 * size_t(Cfg<HD>::kBlkB) + 4 * size_t(Cfg<HD>::kTileB); }

dim3 grid_of(const AttentionShape& s) {
  return dim3(unsigned((s.N + kBlk - 1) / kBlk), unsigned(s.heads), unsigned(s.S));
}

// The operands of one call in the kernels' input type T (float or __nv_bfloat16).
template <class T>
struct Operands {
  const T *q, *k, *v, *dO;
  int64_t ldq, ldk, ldv, lddo;
};

template <int HD, class T>
void fwd_launch(const AttentionShape& s, const Geo& g, const Operands<T>& x, float* o, int64_t ldo, float* lse,
                int vec, cudaStream_t st) {
  set_smem(k_swa_fwd_bf16<HD, T>, fwd_smem<HD>());
  k_swa_fwd_bf16<HD, T><<<grid_of(s), kThreads, fwd_smem<HD>(), st>>>(g, x.q, x.ldq, x.k, x.ldk, x.v, x.ldv, o, ldo,
                                                                       lse, vec);
  TTT_LAUNCH_CHECK("k_swa_fwd_bf16");
}

template <int HD, class T>
void bwd_launch(const AttentionShape& s, const Geo& g, const Operands<T>& x, const float* lse, const float* delta,
                float* dq, int64_t lddq, float* dk, int64_t lddk, float* dv, int64_t lddv, int vec, cudaStream_t st) {
  if (dk || dv) {
    set_smem(k_swa_bwd_dkdv_bf16<HD, T>, dkdv_smem<HD>());
    k_swa_bwd_dkdv_bf16<HD, T><<<grid_of(s), kThreads, dkdv_smem<HD>(), st>>>(
        g, x.q, x.ldq, x.k, x.ldk, x.v, x.ldv, x.dO, x.lddo, lse, delta, dk, lddk, dv, lddv, vec);
    TTT_LAUNCH_CHECK("k_swa_bwd_dkdv_bf16");
  }
  if (dq) {
    set_smem(k_swa_bwd_dq_bf16<HD, T>, dq_smem<HD>());
    k_swa_bwd_dq_bf16<HD, T><<<grid_of(s), kThreads, dq_smem<HD>(), st>>>(
        g, x.q, x.ldq, x.k, x.ldk, x.v, x.ldv, x.dO, x.lddo, lse, delta, dq, lddq, vec);
    TTT_LAUNCH_CHECK("k_swa_bwd_dq_bf16");
  }
}

template <class T>
void forward(const AttentionShape& s, const Operands<T>& x, float* o, int64_t ldo, float* lse, int vec, void* stream) {
  const Geo g = make_geo(s);
  const cudaStream_t st = as_stream(stream);
  if (s.hd <= 32) fwd_launch<32>(s, g, x, o, ldo, lse, vec, st);
  else if (s.hd <= 64) fwd_launch<64>(s, g, x, o, ldo, lse, vec, st);
  else fwd_launch<128>(s, g, x, o, ldo, lse, vec, st);
}

// delta (and, for bf16 inputs, bf16(dO) into dO16) then the dk/dv and dq kernels.
template <class T>
void backward(const AttentionShape& s, Operands<T> x, const float* o, int64_t ldo, const float* lse, const float* dO,
              int64_t lddo, float* dq, int64_t lddq, float* dk, int64_t lddk, float* dv, int64_t lddv, float* delta,
              __nv_bfloat16* dO16, int vec, void* stream) {
  const Geo g = make_geo(s);
  const cudaStream_t st = as_stream(stream);
  const int64_t rows = s.S * s.N, D = s.heads * s.hd;
  const int64_t warps = rows * s.heads, per_block = kThreads / 32;
  k_swa_delta_bf16<<<unsigned((warps + per_block - 1) / per_block), kThreads, 0, st>>>(
      o, ldo, dO, lddo, delta, dO16, D, rows, int(s.heads), int(s.hd));
  TTT_LAUNCH_CHECK("k_swa_delta_bf16");
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    x.dO = dO16, x.lddo = D;
    if (const int mode = swa_backward_bf16_uses_wgmma(s)) {  // Hopper, hd 64: dk/dv (mode 1) and dq (modes 2-6)
      swa_backward_bf16_wgmma(mode, s, x.q, x.ldq, x.k, x.ldk, x.v, x.ldv, x.dO, x.lddo, lse, delta, dq, lddq, dk,
                              lddk, dv, lddv, st);
      if (mode >= 2 || !dq) return;
      dk = dv = nullptr;  // mode 1: dq by the mma.sync kernel below
    }
  }
  if (s.hd <= 32) bwd_launch<32>(s, g, x, lse, delta, dq, lddq, dk, lddk, dv, lddv, vec, st);
  else if (s.hd <= 64) bwd_launch<64>(s, g, x, lse, delta, dq, lddq, dk, lddk, dv, lddv, vec, st);
  else bwd_launch<128>(s, g, x, lse, delta, dq, lddq, dk, lddk, dv, lddv, vec, st);
}

// bf16 operands are copied 16 bytes at a time: every row and head must start on a 16-byte boundary.
void check_bf16_operand(const char* op, const char* name, const bf16* p, int64_t ld, const AttentionShape& s) {
  TTT_CHECK(s.hd % 8 == 0 && ld % 8 == 0 && aligned16(p),
            op << ": bf16 operand " << name << " needs a head width and a leading dimension that are multiples of 8"
               << " and a 16-byte aligned pointer (hd " << s.hd << ", ld " << ld << ")");
}

void check_bf16_operands(const char* op, const AttentionShape& s, const bf16* q, int64_t ldq, const bf16* k, int64_t ldk,
                         const bf16* v, int64_t ldv) {
  check_bf16_operand(op, "q", q, ldq, s);
  check_bf16_operand(op, "k", k, ldk, s);
  check_bf16_operand(op, "v", v, ldv, s);
}

const __nv_bfloat16* as_nv(const bf16* p) { return reinterpret_cast<const __nv_bfloat16*>(p); }

}  // namespace

void swa_forward_bf16(const AttentionShape& s, const float* q, int64_t ldq, const float* k, int64_t ldk,
                      const float* v, int64_t ldv, float* o, int64_t ldo, float* lse, void* stream) {
  if (!check_forward("swa_forward_bf16", s, q, ldq, k, ldk, v, ldv, o, ldo, lse)) return;
  forward<float>(s, {q, k, v, nullptr, ldq, ldk, ldv, 0}, o, ldo, lse, vec_flags(s, q, ldq, k, ldk, v, ldv), stream);
}

void swa_forward_bf16(const AttentionShape& s, const bf16* q, int64_t ldq, const bf16* k, int64_t ldk, const bf16* v,
                      int64_t ldv, float* o, int64_t ldo, float* lse, void* stream) {
  if (!check_forward("swa_forward_bf16", s, q, ldq, k, ldk, v, ldv, o, ldo, lse)) return;
  check_bf16_operands("swa_forward_bf16", s, q, ldq, k, ldk, v, ldv);
  // cuDNN's fused attention where selected (TTT_ATTN_CUDNN=1) and able to run this shape; else our kernels.
  if (swa_forward_bf16_uses_cudnn_setting() && swa_forward_cudnn(s, q, ldq, k, ldk, v, ldv, o, ldo, lse, stream))
    return;
  if (const int warpgroups = swa_forward_bf16_uses_wgmma(s))
    swa_forward_bf16_wgmma(warpgroups, s, as_nv(q), ldq, as_nv(k), ldk, as_nv(v), ldv, o, ldo, lse, as_stream(stream));
  else
    forward<__nv_bfloat16>(s, {as_nv(q), as_nv(k), as_nv(v), nullptr, ldq, ldk, ldv, 0}, o, ldo, lse, 0, stream);
}


void swa_backward_bf16(const AttentionShape& s, const float* q, int64_t ldq, const float* k, int64_t ldk,
                       const float* v, int64_t ldv, const float* o, int64_t ldo, const float* lse, const float* dO,
                       int64_t lddo, float* dq, int64_t lddq, float* dk, int64_t lddk, float* dv, int64_t lddv,
                       void* work, void* stream) {
  if (!check_backward("swa_backward_bf16", s, q, ldq, k, ldk, v, ldv, o, ldo, lse, dO, lddo, dq, lddq, dk, lddk, dv,
                      lddv, work, swa_backward_workspace(s)))
    return;
  backward<float>(s, {q, k, v, dO, ldq, ldk, ldv, lddo}, o, ldo, lse, dO, lddo, dq, lddq, dk, lddk, dv, lddv,
                  static_cast<float*>(work), nullptr, vec_flags(s, q, ldq, k, ldk, v, ldv, dO, lddo), stream);
}

size_t swa_backward_bf16_workspace(const AttentionShape& s) {
  return backend::swa_backward_bf16_workspace_bytes(s.S, s.N, s.heads, s.hd);  // the memory estimate's size too
}

void swa_backward_bf16(const AttentionShape& s, const bf16* q, int64_t ldq, const bf16* k, int64_t ldk,
                       const bf16* v, int64_t ldv, const float* o, int64_t ldo, const float* lse, const float* dO,
                       int64_t lddo, float* dq, int64_t lddq, float* dk, int64_t lddk, float* dv, int64_t lddv,
                       void* work, void* stream) {
  if (!check_backward("swa_backward_bf16", s, q, ldq, k, ldk, v, ldv, o, ldo, lse, dO, lddo, dq, lddq, dk, lddk, dv,
                      lddv, work, swa_backward_bf16_workspace(s)))
    return;
  check_bf16_operands("swa_backward_bf16", s, q, ldq, k, ldk, v, ldv);
  TTT_CHECK(aligned16(work), "swa_backward_bf16: work must be 16-byte aligned");
  auto* bytes = static_cast<unsigned char*>(work);
  auto* dO16 = reinterpret_cast<__nv_bfloat16*>(bytes + (swa_backward_workspace(s) + 15) / 16 * 16);
  backward<__nv_bfloat16>(s, {as_nv(q), as_nv(k), as_nv(v), nullptr, ldq, ldk, ldv, 0}, o, ldo, lse, dO, lddo, dq,
                          lddq, dk, lddk, dv, lddv, static_cast<float*>(work), dO16, 0, stream);
}

}  // namespace ttt::cuda
