// The sliding-window attention backward on Hopper (sm_90a): warpgroup products (wgmma) for bf16 operands with
// hd = 64, launched by swa_backward_bf16 (attention_bf16.cu, after its delta kernel) where
// swa_backward_bf16_uses_wgmma says so; its contract is that of swa_backward_bf16 (attention.h). The warpgroup
// machinery (swizzled tiles, descriptors, wgmma wrappers, fences) is attention_wgmma.cuh, shared with the forward.
//
//   dk/dv  block = (128 keys, head, sequence) = 2 warpgroups of 64 keys (variant: 1 warpgroup, 2 blocks per SM);
//          K and V stay in shared memory, the 64-query tiles of Q, dO (and their lse, delta) that see those keys
//          stream through double-buffered shared memory by cp.async. Per tile and warpgroup: S^T [64 keys x 64
//          queries] = K Q^T and dP^T = V dO^T (8 x m64n64k16, operands by descriptor), P^T = exp2(S^T scale log2e -
//          lse log2e) and dS^T = P^T (dP^T - delta) in registers (lse and delta belong to the column: the query),
//          then dV += P^T dO and dK += dS^T Q (8 x m64n64k16, P^T / dS^T from registers, dO / Q by transposed
//          descriptors).
//   dq     block = (128 queries, head, sequence) = 2 warpgroups of 64 queries (variant: 1 warpgroup, 4 blocks per
//          SM); Q and dO stay, 64-key K/V tiles stream: S = Q K^T, dP = dO V^T (8 x m64n64k16), P and dS in
//          registers (lse, delta per row), dQ += dS K (4 x m64n64k16, dS from registers, K by a transposed
//          descriptor).
// REG_A (modes 3, 4): the owned rows that are the A operand (K, V of S^T, dP^T; Q, dO of S, dP) stay in registers
// as A fragments, read once from global memory, instead of in shared memory (wgb::Shape).
// k_swa_bwd_dkdv_wgmma_pipelined (modes 5, 6): dk/dv REG_A with one warpgroup of 64 keys a block, the next query
// tile's S^T and dP^T issued among this tile's dV and dK (three query buffers), so that the tensor cores work while
// the warpgroup computes P^T and dS^T.
// The same products as the mma.sync kernels (attention_bf16.cu: bf16 operands, P and dS rounded to bf16, fp32
// accumulation), the fp32 sums inside the tensor cores in another order: close to them, not bit-identical. Every
// output row belongs to one warp and is summed in a fixed order: no atomics, repeated runs are bit-identical.
#include "backend/cuda/attention_wgmma.cuh"

namespace ttt::cuda {

namespace {

namespace wgb {
constexpr int kStream = 64;                    // rows of a streamed tile (queries: dk/dv; keys: dq)
constexpr int kStreamB = kStream * wg::kRowB;  // bytes of a streamed tile
constexpr int kPipeStages = 3;                 // query buffers of the pipelined dk/dv kernel (tiles it-1.. it+1)
// shared memory of the pipelined dk/dv kernel: alignment slack, Q and dO tiles, lse and delta of each buffer
constexpr size_t kSmemDkdvPipelined = 1024 + kPipeStages * (2 * size_t(kStreamB) + 2 * kStream * sizeof(float));
// WGS warpgroups of 64 owned rows (keys: dk/dv; queries: dq) per block: 1 (the default: twice the blocks per SM,
// independent of each other) or 2 (each streamed tile serves 128 rows: half the streamed tile reads).
// REG_A: the owned rows (K, V: dk/dv; Q, dO: dq) are the A operand of the products that read them, so they can
// stay in registers as A fragments (16 registers a thread each) instead of in shared memory, which every wgmma
// with A by descriptor reads again (2 KB an m64n64k16, as much as its B): half the shared-memory reads of those
// products.
template <int WGS, bool REG_A = false>
struct Shape {
  static constexpr int kThreads = 128 * WGS;
  static constexpr int kOwn = 64 * WGS;             // rows a block owns
  static constexpr int kOwnB = kOwn * wg::kRowB;    // bytes of an owned tile (a multiple of 1024)
  static constexpr size_t kOwnSmem = REG_A ? 0 : 2 * size_t(kOwnB);  // the two owned tiles (REG_A: in registers)
  // slack for the 1024-byte alignment, the owned tiles, two double-buffered streamed tiles (+ lse, delta [2][64])
  static constexpr size_t kSmemDkdv = 1024 + kOwnSmem + 4 * size_t(kStreamB) + 4 * kStream * sizeof(float);
  static constexpr size_t kSmemDq = 1024 + kOwnSmem + 4 * size_t(kStreamB);
  // dk/dv needs ~200 registers a thread (REG_A: ~235): 256 threads per SM; dq half its accumulators: 512 (<= 128
  // registers), REG_A 384 (<= 168: its 32 registers of fragments).
  static constexpr int kDkdvBlocksPerSm = 2 / WGS;
  static constexpr int kDqBlocksPerSm = (REG_A ? 3 : 4) / WGS;
};
}  // namespace wgb

#ifdef TTT_ATTN_WGMMA_DEVICE
// The streamed operands of a dk/dv block (its head and sequence): Q, dO rows and lse, delta per query.
struct DkdvStream {
  const __nv_bfloat16* q;
  int64_t ldq;
  const __nv_bfloat16* dO;
  int64_t lddo;
  const float* lse;    // of the head: query i at lse[i * heads]
  const float* delta;  // likewise
  int heads, N;
};
// Q, dO (128-byte-swizzled tiles at Qs, dOs), lse and delta (at Ls, Ds) of the 64 queries q0.. (zero past N), by
// the block's THREADS threads, then commits them as one cp.async group with whatever was issued before.
template <int THREADS>
__device__ __forceinline__ void dkdv_issue_queries(const DkdvStream& in, int q0, unsigned char* Qs,
                                                   unsigned char* dOs, float* Ls, float* Ds) {
  const int rows = min(wgb::kStream, in.N - q0);
  wg_load_tile<wgb::kStream, THREADS>(Qs, in.q, in.ldq, q0, rows);
  wg_load_tile<wgb::kStream, THREADS>(dOs, in.dO, in.lddo, q0, rows);
  if (threadIdx.x < wgb::kStream) {
    const int t = threadIdx.x;
    const int64_t at = int64_t(t < rows ? q0 + t : 0) * in.heads;
    cp_async4(Ls + t, in.lse + at, t < rows);
    cp_async4(Ds + t, in.delta + at, t < rows);
  }
  cp_async_commit();
}
// The element-wise steps of a dk/dv tile (the warp's 16 keys jw.. as rows, the 64 queries q0.. as columns, in the
// accumulator layout), shared by both dk/dv kernels. P^T = exp2(S^T scale log2e - lse log2e) in place of S^T (lse of
// the columns at lb), zero where MASKED and the query does not see the key.
template <bool MASKED>
__device__ __forceinline__ void dkdv_probabilities(float (&st)[wgb::kStream / 8][4], const float* lb, int q0, int jw,
                                                   const Geo& g) {
  const int lane = threadIdx.x % 32, g4 = lane / 4, t4 = lane % 4;
#pragma unroll
  for (int n = 0; n < wgb::kStream / 8; ++n) {
    const float2 lc = *reinterpret_cast<const float2*>(lb + n * 8 + 2 * t4);
    const float l2[2] = {lc.x * kLog2e, lc.y * kLog2e};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float p = ex2(fmaf(st[n][e], g.scale_log2, -l2[e % 2]));
      if constexpr (MASKED) {
        if (!visible(q0 + n * 8 + 2 * t4 + (e % 2), jw + g4 + (e / 2) * 8, g)) p = 0.f;
      }
      st[n][e] = p;
    }
  }
}
// dS^T = P^T (dP^T - delta) in place of dP^T (delta of the columns at db).
__device__ __forceinline__ void dkdv_score_grads(const float (&pt)[wgb::kStream / 8][4],
                                                 float (&dpt)[wgb::kStream / 8][4], const float* db) {
  const int t4 = threadIdx.x % 4;
#pragma unroll
  for (int n = 0; n < wgb::kStream / 8; ++n) {
    const float2 dc = *reinterpret_cast<const float2*>(db + n * 8 + 2 * t4);
    const float dl[2] = {dc.x, dc.y};
#pragma unroll
    for (int e = 0; e < 4; ++e) dpt[n][e] = pt[n][e] * (dpt[n][e] - dl[e % 2]);
  }
}
#endif

// dk, dv of 64 WGS keys (warpgroup: 64 keys); streams the 64-query tiles that see them. REG_A: K, V as register
// A fragments (wgb::Shape), the same products.
template <int WGS, bool REG_A>
__global__ void __launch_bounds__(wgb::Shape<WGS, REG_A>::kThreads, wgb::Shape<WGS, REG_A>::kDkdvBlocksPerSm)
    k_swa_bwd_dkdv_wgmma(Geo g, const __nv_bfloat16* __restrict__ q, int64_t ldq, const __nv_bfloat16* __restrict__ k,
                         int64_t ldk, const __nv_bfloat16* __restrict__ v, int64_t ldv,
                         const __nv_bfloat16* __restrict__ dO, int64_t lddo, const float* __restrict__ lse,
                         const float* __restrict__ delta, float* __restrict__ dk, int64_t lddk,
                         float* __restrict__ dv, int64_t lddv) {
#ifdef TTT_ATTN_WGMMA_DEVICE
  using wg::kHd, wg::kRowB, wgb::kStream, wgb::kStreamB;
  using Sh = wgb::Shape<WGS, REG_A>;
  constexpr int kOwn = Sh::kOwn, kOwnB = Sh::kOwnB, kThreads = Sh::kThreads;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + smem_pad_to_1024(smem_raw);
  unsigned char* Ks = smem;                      // kOwn rows (REG_A: none)
  unsigned char* Vs = Ks + (REG_A ? 0 : kOwnB);  // kOwn rows (REG_A: none)
  unsigned char* Qs = Vs + (REG_A ? 0 : kOwnB);  // [2] x kStream rows
  unsigned char* dOs = Qs + 2 * kStreamB;        // [2]
  float* Ls = reinterpret_cast<float*>(dOs + 2 * kStreamB);  // [2][kStream] lse of the tile's queries
  float* Ds = Ls + 2 * kStream;                              // [2][kStream] delta
  const int warpgroup = threadIdx.x / 128, warp = (threadIdx.x % 128) / 32;
  const int k0 = blockIdx.x * kOwn, h = blockIdx.y;
  const int64_t base = int64_t(blockIdx.z) * g.N, col = int64_t(h) * kHd;
  const DkdvStream in{q + base * ldq + col, ldq, dO + base * lddo + col, lddo, lse + base * g.heads + h,
                      delta + base * g.heads + h, g.heads, g.N};
  // Q, dO, lse and delta of the queries q0.. into buffer buf, one cp.async group with whatever was issued before.
  const auto issue_queries = [&](int q0, int buf) {
    dkdv_issue_queries<kThreads>(in, q0, Qs + buf * kStreamB, dOs + buf * kStreamB, Ls + buf * kStream,
                                 Ds + buf * kStream);
  };
  if constexpr (!REG_A) {
    wg_load_tile<kOwn, kThreads>(Ks, k + base * ldk + col, ldk, k0, min(kOwn, g.N - k0));
    wg_load_tile<kOwn, kThreads>(Vs, v + base * ldv + col, ldv, k0, min(kOwn, g.N - k0));
  }
  issue_queries(k0, 0);  // the first query tile that can see a key of the block starts at its first key
  const int64_t q_lim = int64_t(k0) + kOwn - 1 + g.window;
  const int q_end = q_lim < g.N ? int(q_lim) : g.N;
  const int ntiles = (q_end - k0 + kStream - 1) / kStream;

  const int j0 = k0 + warpgroup * 64;  // the warpgroup's first key
  const int jw = j0 + warp * 16;       // the warp's
  const uint64_t k_desc = sw128_desc(smem_u32(Ks + warpgroup * 64 * kRowB));  // (REG_A: unused)
  const uint64_t v_desc = sw128_desc(smem_u32(Vs + warpgroup * 64 * kRowB));
  uint32_t ka[kHd / 16][4], va[kHd / 16][4];  // REG_A: the warp's 16 keys of K, V as A fragments
  if constexpr (REG_A) {
    wg_load_a_fragments(ka, k + base * ldk + col, ldk, jw, g.N);
    wg_load_a_fragments(va, v + base * ldv + col, ldv, jw, g.N);
  }
  float adk[kHd / 8][4], adv[kHd / 8][4];
  wg_zero(adk), wg_zero(adv);

  for (int it = 0; it < ntiles; ++it) {
    const int q0 = k0 + it * kStream, buf = it & 1;
    if (it + 1 < ntiles) {  // the next tile into the other buffer (free: the last iteration ended in a barrier)
      issue_queries(q0 + kStream, buf ^ 1);
      cp_async_wait_group<1>();  // this tile's group (and K's, V's) has landed, the next one may still fly
    } else {
      cp_async_wait_group<0>();
    }
    fence_proxy_async();
    __syncthreads();
    // Warpgroup-uniform: wgmma needs all 128 threads of the warpgroup.
    const bool active = j0 < g.N && q0 + kStream - 1 >= j0 && q0 <= j0 + 63 + g.window - 1;
    if (active) {
      const auto tile = [&](auto masked) {
        const uint64_t q_desc = sw128_desc(smem_u32(Qs + buf * kStreamB));
        const uint64_t do_desc = sw128_desc(smem_u32(dOs + buf * kStreamB));
        float st[kStream / 8][4], dpt[kStream / 8][4];  // S^T, dP^T: rows keys, columns queries
        // Four batches, each overlapping the register work that follows it: S^T | dP^T while P^T is formed, dV
        // while dS^T is, then dK.
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < kHd / 16; ++kk) {  // B (and A by descriptor): +32 bytes a k16 step
          if constexpr (REG_A) wgmma_n64_rs_kmajor(st, ka[kk], q_desc + 2 * kk, kk);
          else wgmma_n64_ss(st, k_desc + 2 * kk, q_desc + 2 * kk, kk);
        }
        wg_commit();
#pragma unroll
        for (int kk = 0; kk < kHd / 16; ++kk) {
          if constexpr (REG_A) wgmma_n64_rs_kmajor(dpt, va[kk], do_desc + 2 * kk, kk);
          else wgmma_n64_ss(dpt, v_desc + 2 * kk, do_desc + 2 * kk, kk);
        }
        wg_commit();
        wg_wait<1>();  // S^T has landed
        wg_pin(st);
        dkdv_probabilities<decltype(masked)::value>(st, Ls + buf * kStream, q0, jw, g);
        uint32_t pa[kStream / 16][4], dsa[kStream / 16][4];  // P^T, dS^T as A fragments (k: the queries)
#pragma unroll
        for (int kk = 0; kk < kStream / 16; ++kk) p_fragment(st, kk, pa[kk]);
        wg_pin(adv);  // the packing happens before the fence
        wg_pin(pa);
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < kStream / 16; ++kk) wgmma_n64_rs(adv, pa[kk], do_desc + desc_rows(16 * kk));
        wg_commit();
        wg_wait<1>();  // dP^T has landed (dV may still run)
        wg_pin(dpt);
        dkdv_score_grads(st, dpt, Ds + buf * kStream);
#pragma unroll
        for (int kk = 0; kk < kStream / 16; ++kk) p_fragment(dpt, kk, dsa[kk]);
        wg_pin(adk);
        wg_pin(dsa);
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < kStream / 16; ++kk) wgmma_n64_rs(adk, dsa[kk], q_desc + desc_rows(16 * kk));
        wg_commit();
        wg_wait<0>();
        wg_pin(adv);
        wg_pin(adk);
        wg_pin(pa);
        wg_pin(dsa);
        if constexpr (REG_A) wg_pin(ka), wg_pin(va);  // read by the products until here
      };
      // Tiles whose 64 queries all see all 64 keys (below the diagonal, inside the window and the sequence) need no
      // element mask.
      masked_if(!(q0 >= j0 + 63 && q0 + kStream - 1 < j0 + g.window && q0 + kStream - 1 < g.N), tile);
    }
    __syncthreads();  // every warpgroup is done with this buffer before the next iteration refills it
  }
  if (dv) store_rows<kHd>(dv + base * lddv + col, lddv, jw, g, adv, 1.f, 1.f);
  if (dk) store_rows<kHd>(dk + base * lddk + col, lddk, jw, g, adk, g.scale, g.scale);
#elif defined(__CUDA_ARCH__)
  __trap();  // never launched: swa_wgmma_device_ok tells the host this image has no wgmma code
#endif
}

// dk, dv of 64 keys (one warpgroup, K and V as register A fragments), software-pipelined across query tiles: the
// next tile's S^T is issued before this tile's dK, and a tile's dP^T behind the previous tile's dK, so that the
// tensor cores run S^T(it+1) and dV(it) while the warpgroup finishes dS^T(it) and waits for its loads, and dK(it),
// dP^T(it+1) while it computes P^T(it+1). The wgmma batches in commit order:
//   S^T(0) dP^T(0) | dV(0) S^T(1) dK(0) | dP^T(1) dV(1) S^T(2) dK(1) | ... | dP^T(n-1) dV(n-1) dK(n-1)
// Tile it starts with S^T(it) landed and dK(it-1) running: dP^T(it), P^T(it), dV(it); waits for dP^T(it) (and
// dK(it-1): dS^T's registers are free); dS^T(it); S^T(it+1), dK(it); waits for S^T(it+1) (dK(it) runs on).
// S^T(it+1) reads tile it+1 while dV(it), dK(it) still read tile it: three query buffers, tile it+2 loaded into
// the one of tile it-1 once dK(it-1) is done. The same products, in the same order, and the same element-wise
// steps as k_swa_bwd_dkdv_wgmma<1, true> (its bits); as many registers live at once (ptxas: 234, no spills).
__global__ void __launch_bounds__(128, 2)
    k_swa_bwd_dkdv_wgmma_pipelined(Geo g, const __nv_bfloat16* __restrict__ q, int64_t ldq,
                                   const __nv_bfloat16* __restrict__ k, int64_t ldk,
                                   const __nv_bfloat16* __restrict__ v, int64_t ldv,
                                   const __nv_bfloat16* __restrict__ dO, int64_t lddo, const float* __restrict__ lse,
                                   const float* __restrict__ delta, float* __restrict__ dk, int64_t lddk,
                                   float* __restrict__ dv, int64_t lddv) {
#ifdef TTT_ATTN_WGMMA_DEVICE
  using wg::kHd, wgb::kStream, wgb::kStreamB, wgb::kPipeStages;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + smem_pad_to_1024(smem_raw);
  unsigned char* Qs = smem;                                            // [kPipeStages] x kStream rows
  unsigned char* dOs = Qs + kPipeStages * kStreamB;                    // [kPipeStages]
  float* Ls = reinterpret_cast<float*>(dOs + kPipeStages * kStreamB);  // [kPipeStages][kStream] lse
  float* Ds = Ls + kPipeStages * kStream;                              // [kPipeStages][kStream] delta
  const int warp = threadIdx.x / 32;
  const int k0 = blockIdx.x * 64, h = blockIdx.y;
  const int jw = k0 + warp * 16;  // the warp's first key
  const int64_t base = int64_t(blockIdx.z) * g.N, col = int64_t(h) * kHd;
  const DkdvStream in{q + base * ldq + col, ldq, dO + base * lddo + col, lddo, lse + base * g.heads + h,
                      delta + base * g.heads + h, g.heads, g.N};
  const auto issue_queries = [&](int it) {  // query tile it into buffer it % kPipeStages
    const int buf = it % kPipeStages;
    dkdv_issue_queries<128>(in, k0 + it * kStream, Qs + buf * kStreamB, dOs + buf * kStreamB, Ls + buf * kStream,
                            Ds + buf * kStream);
  };
  // Every query tile from the block's first key on sees one of its keys, up to the last key's window (all are
  // "active" in the unpipelined kernel's sense: one warpgroup of 64 keys).
  const int64_t q_lim = int64_t(k0) + 63 + g.window;
  const int q_end = q_lim < g.N ? int(q_lim) : g.N;
  const int ntiles = (q_end - k0 + kStream - 1) / kStream;
  issue_queries(0);
  if (ntiles > 1) issue_queries(1);
  else cp_async_commit();  // an empty group: the group counts below stay those of two tiles in flight

  uint32_t ka[kHd / 16][4], va[kHd / 16][4];  // the warp's 16 keys of K, V as A fragments
  wg_load_a_fragments(ka, k + base * ldk + col, ldk, jw, g.N);
  wg_load_a_fragments(va, v + base * ldv + col, ldv, jw, g.N);
  float adk[kHd / 8][4], adv[kHd / 8][4];
  wg_zero(adk), wg_zero(adv);
  float st[kStream / 8][4], dpt[kStream / 8][4];     // S^T / P^T, dP^T / dS^T: rows keys, columns queries
  uint32_t pa[kStream / 16][4], dsa[kStream / 16][4];  // P^T, dS^T as A fragments (k: the queries)
  const auto tile_desc = [&](const unsigned char* tiles, int it) {
    return sw128_desc(smem_u32(tiles + (it % kPipeStages) * kStreamB));
  };
  const auto issue_st = [&](int it) {  // S^T(it) = K Q(it)^T into st, one batch
    const uint64_t q_desc = tile_desc(Qs, it);
#pragma unroll
    for (int kk = 0; kk < kHd / 16; ++kk) wgmma_n64_rs_kmajor(st, ka[kk], q_desc + 2 * kk, kk);
    wg_commit();
  };
  const auto issue_dpt = [&](int it) {  // dP^T(it) = V dO(it)^T into dpt, one batch
    const uint64_t do_desc = tile_desc(dOs, it);
#pragma unroll
    for (int kk = 0; kk < kHd / 16; ++kk) wgmma_n64_rs_kmajor(dpt, va[kk], do_desc + 2 * kk, kk);
    wg_commit();
  };

  wg_pin(adk);  // zeroed before the first batch (ptxas serializes every wgmma where an accumulator is written by
  wg_pin(adv);  // other instructions while batches are in flight)
  cp_async_wait_group<1>();  // tile 0 has landed (tile 1 may still fly)
  fence_proxy_async();
  __syncthreads();
  wg_fence();
  issue_st(0);
  issue_dpt(0);
  wg_wait<1>();  // S^T(0) has landed
  wg_pin(st);
  // Tile it, entered with S^T(it) landed and dK(it-1) in flight. FIRST: it == 0 (dP^T(0) is in flight already);
  // HAS_NEXT: it + 1 < ntiles. Compile-time branches, and no wgmma batch still writing registers that the next
  // tile's element-wise code reads when a tile ends (where the calls join, or the loop turns): else ptxas
  // serializes every wgmma of the kernel.
  const auto tile = [&](int it, auto first, auto has_next) {
    constexpr bool kFirst = decltype(first)::value, kHasNext = decltype(has_next)::value;
    const int q0 = k0 + it * kStream, buf = it % kPipeStages;
    const bool masked = !(q0 >= k0 + 63 && q0 + kStream - 1 < k0 + g.window && q0 + kStream - 1 < g.N);
    if constexpr (!kFirst) {
      wg_pin(dpt);
      wg_fence();
      issue_dpt(it);
    }
    masked_if(masked, [&](auto m) { dkdv_probabilities<decltype(m)::value>(st, Ls + buf * kStream, q0, jw, g); });
#pragma unroll
    for (int kk = 0; kk < kStream / 16; ++kk) p_fragment(st, kk, pa[kk]);
    wg_pin(pa);
    wg_fence();
    const uint64_t do_desc = tile_desc(dOs, it);
#pragma unroll
    for (int kk = 0; kk < kStream / 16; ++kk) wgmma_n64_rs(adv, pa[kk], do_desc + desc_rows(16 * kk));
    wg_commit();
    // dP^T(it) has landed, and dK(it-1) is done (dsa, adk free); dV(it) may run on.
    wg_wait<1>();
    wg_pin(dpt);
    wg_pin(dsa);
    wg_pin(adk);
    dkdv_score_grads(st, dpt, Ds + buf * kStream);
#pragma unroll
    for (int kk = 0; kk < kStream / 16; ++kk) p_fragment(dpt, kk, dsa[kk]);
    // Tile it+1 into view; tile it+2 into the buffer of tile it-1, whose last reader, dK(it-1), every warp has
    // waited for (the barrier).
    __syncthreads();
    if (it + 2 < ntiles) issue_queries(it + 2);
    else cp_async_commit();  // empty: keeps one group in flight behind tile it+1's
    cp_async_wait_group<1>();
    fence_proxy_async();
    __syncthreads();
    wg_pin(st);
    wg_pin(dpt);
    wg_pin(dsa);
    wg_fence();
    if constexpr (kHasNext) issue_st(it + 1);
    const uint64_t q_desc = tile_desc(Qs, it);
#pragma unroll
    for (int kk = 0; kk < kStream / 16; ++kk) wgmma_n64_rs(adk, dsa[kk], q_desc + desc_rows(16 * kk));
    wg_commit();
    if constexpr (kHasNext) {
      wg_wait<1>();  // S^T(it+1) has landed, and dV(it) before it (pa, adv free); dK(it) may run on
      wg_pin(st);
      wg_pin(pa);
      wg_pin(adv);
    } else {  // the last tile
      wg_wait<0>();
      wg_pin(adv);
      wg_pin(adk);
      wg_pin(pa);
      wg_pin(dsa);
      wg_pin(ka);
      wg_pin(va);
    }
  };
  if (ntiles == 1) {
    tile(0, std::true_type{}, std::false_type{});
  } else {
    tile(0, std::true_type{}, std::true_type{});
    for (int it = 1; it + 1 < ntiles; ++it) tile(it, std::false_type{}, std::true_type{});
    tile(ntiles - 1, std::false_type{}, std::false_type{});
  }
  if (dv) store_rows<kHd>(dv + base * lddv + col, lddv, jw, g, adv, 1.f, 1.f);
  if (dk) store_rows<kHd>(dk + base * lddk + col, lddk, jw, g, adk, g.scale, g.scale);
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

// dq of 64 WGS queries (warpgroup: 64 queries); streams the 64-key tiles of their windows. REG_A: Q, dO as register
// A fragments (wgb::Shape), the same products.
template <int WGS, bool REG_A>
__global__ void __launch_bounds__(wgb::Shape<WGS, REG_A>::kThreads, wgb::Shape<WGS, REG_A>::kDqBlocksPerSm)
    k_swa_bwd_dq_wgmma(Geo g, const __nv_bfloat16* __restrict__ q, int64_t ldq, const __nv_bfloat16* __restrict__ k,
                       int64_t ldk, const __nv_bfloat16* __restrict__ v, int64_t ldv,
                       const __nv_bfloat16* __restrict__ dO, int64_t lddo, const float* __restrict__ lse,
                       const float* __restrict__ delta, float* __restrict__ dq, int64_t lddq) {
#ifdef TTT_ATTN_WGMMA_DEVICE
  using wg::kHd, wg::kRowB, wgb::kStream, wgb::kStreamB;
  using Sh = wgb::Shape<WGS, REG_A>;
  constexpr int kOwn = Sh::kOwn, kOwnB = Sh::kOwnB, kThreads = Sh::kThreads;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + smem_pad_to_1024(smem_raw);
  unsigned char* Qs = smem;                       // kOwn rows (REG_A: none)
  unsigned char* dOs = Qs + (REG_A ? 0 : kOwnB);  // kOwn rows (REG_A: none)
  unsigned char* Ks = dOs + (REG_A ? 0 : kOwnB);  // [2] x kStream rows
  unsigned char* Vs = Ks + 2 * kStreamB;          // [2]
  const int warpgroup = threadIdx.x / 128, warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32;
  const int g4 = lane / 4, t4 = lane % 4;
  const int q0 = blockIdx.x * kOwn, h = blockIdx.y;
  const int64_t base = int64_t(blockIdx.z) * g.N, col = int64_t(h) * kHd;
  const __nv_bfloat16* kg = k + base * ldk + col;
  const __nv_bfloat16* vg = v + base * ldv + col;
  const auto issue_keys = [&](int k0, int buf) {
    wg_load_tile<kStream, kThreads>(Ks + buf * kStreamB, kg, ldk, k0, min(kStream, g.N - k0));
    wg_load_tile<kStream, kThreads>(Vs + buf * kStreamB, vg, ldv, k0, min(kStream, g.N - k0));
    cp_async_commit();
  };
  if constexpr (!REG_A) {
    wg_load_tile<kOwn, kThreads>(Qs, q + base * ldq + col, ldq, q0, min(kOwn, g.N - q0));
    wg_load_tile<kOwn, kThreads>(dOs, dO + base * lddo + col, lddo, q0, min(kOwn, g.N - q0));
  }
  const int k_begin = max(0, q0 - g.window + 1), k_end = min(g.N, q0 + kOwn);
  const int ntiles = (k_end - k_begin + kStream - 1) / kStream;
  issue_keys(k_begin, 0);

  const int r0 = q0 + warpgroup * 64;  // the warpgroup's first query
  const int rw = r0 + warp * 16;       // the warp's
  float rl[2], rd[2];                  // lse log2e, delta of the rows rw + g4, rw + g4 + 8
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = rw + g4 + 8 * r;
    rl[r] = i < g.N ? lse[(base + i) * g.heads + h] * kLog2e : 0.f;
    rd[r] = i < g.N ? delta[(base + i) * g.heads + h] : 0.f;
  }
  const uint64_t q_desc = sw128_desc(smem_u32(Qs + warpgroup * 64 * kRowB));  // (REG_A: unused)
  const uint64_t do_desc = sw128_desc(smem_u32(dOs + warpgroup * 64 * kRowB));
  uint32_t qa[kHd / 16][4], doa[kHd / 16][4];  // REG_A: the warp's 16 queries of Q, dO as A fragments
  if constexpr (REG_A) {
    wg_load_a_fragments(qa, q + base * ldq + col, ldq, rw, g.N);
    wg_load_a_fragments(doa, dO + base * lddo + col, lddo, rw, g.N);
  }
  float adq[kHd / 8][4];
  wg_zero(adq);

  for (int it = 0; it < ntiles; ++it) {
    const int k0 = k_begin + it * kStream, buf = it & 1;
    if (it + 1 < ntiles) {
      issue_keys(k0 + kStream, buf ^ 1);
      cp_async_wait_group<1>();
    } else {
      cp_async_wait_group<0>();
    }
    fence_proxy_async();
    __syncthreads();
    const bool active = r0 < g.N && k0 <= r0 + 63 && k0 + kStream - 1 > r0 - g.window;
    if (active) {
      const auto tile = [&](auto masked) {
        const uint64_t k_desc = sw128_desc(smem_u32(Ks + buf * kStreamB));
        const uint64_t v_desc = sw128_desc(smem_u32(Vs + buf * kStreamB));
        float s[kStream / 8][4], dp[kStream / 8][4];  // rows queries, columns keys
        // S | dP: P is formed while dP runs.
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < kHd / 16; ++kk) {
          if constexpr (REG_A) wgmma_n64_rs_kmajor(s, qa[kk], k_desc + 2 * kk, kk);
          else wgmma_n64_ss(s, q_desc + 2 * kk, k_desc + 2 * kk, kk);
        }
        wg_commit();
#pragma unroll
        for (int kk = 0; kk < kHd / 16; ++kk) {
          if constexpr (REG_A) wgmma_n64_rs_kmajor(dp, doa[kk], v_desc + 2 * kk, kk);
          else wgmma_n64_ss(dp, do_desc + 2 * kk, v_desc + 2 * kk, kk);
        }
        wg_commit();
        wg_wait<1>();  // S has landed
        wg_pin(s);
#pragma unroll
        for (int n = 0; n < kStream / 8; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float p = ex2(fmaf(s[n][e], g.scale_log2, -rl[e / 2]));
            if constexpr (decltype(masked)::value) {
              if (!visible(rw + g4 + (e / 2) * 8, k0 + n * 8 + 2 * t4 + (e % 2), g)) p = 0.f;
            }
            s[n][e] = p;
          }
        wg_wait<0>();
        wg_pin(dp);
#pragma unroll
        for (int n = 0; n < kStream / 8; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) dp[n][e] = s[n][e] * (dp[n][e] - rd[e / 2]);
        uint32_t dsa[kStream / 16][4];
#pragma unroll
        for (int kk = 0; kk < kStream / 16; ++kk) p_fragment(dp, kk, dsa[kk]);
        wg_pin(adq);
        wg_pin(dsa);
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < kStream / 16; ++kk) wgmma_n64_rs(adq, dsa[kk], k_desc + desc_rows(16 * kk));
        wg_commit();
        wg_wait<0>();
        wg_pin(adq);
        wg_pin(dsa);
        if constexpr (REG_A) wg_pin(qa), wg_pin(doa);  // read by the products until here
      };
      masked_if(!(k0 + kStream - 1 <= r0 && k0 > r0 + 63 - g.window && r0 + 63 < g.N), tile);
    }
    __syncthreads();
  }
  store_rows<kHd>(dq + base * lddq + col, lddq, rw, g, adq, g.scale, g.scale);
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

// The mode where neither swa_backward_bf16_set_wgmma nor TTT_ATTN_WGMMA_BWD says: the pipelined dk/dv kernel and the
// register-operand dq (measured on an H200: the bits of the mma.sync backward at 1.5x its speed, 3.5% faster than
// mode 2; docs/PERF.md "The Hopper backward: register operands and a pipelined dk/dv").
constexpr int kBwdWgmmaDefaultMode = 6;

// swa_backward_bf16_set_wgmma; -1: not set, TTT_ATTN_WGMMA_BWD decides (0: off, 1: dk/dv only, 2: both, 3: both
// with K, V of dk/dv as register A fragments, 4: both with those of both kernels, 5 and 6: 3 and 4 with the
// pipelined dk/dv kernel; bwd_wgmma_launch).
std::atomic<int> g_bwd_wgmma_mode{-1};
constexpr int kBwdWgmmaModes = 7;

int bwd_wgmma_mode() {
  static const int from_env = [] {
    const char* e = std::getenv("TTT_ATTN_WGMMA_BWD");
    const std::string v = e ? e : "";
    return v.size() == 1 && v[0] >= '0' && v[0] < '0' + kBwdWgmmaModes ? v[0] - '0' : kBwdWgmmaDefaultMode;
  }();
  const int set = g_bwd_wgmma_mode.load(std::memory_order_relaxed);
  return set >= 0 ? set : from_env;
}

// Warpgroups per block of both kernels: 1 (two blocks per SM for dk/dv, four for dq: 3.70 against 3.90 ms for 2 at
// the 760m shape on an H200), or TTT_ATTN_WGMMA_BWD_WGS=2 (read once; a measurement knob).
int bwd_warpgroups() {
  static const int wgs = [] {
    const char* e = std::getenv("TTT_ATTN_WGMMA_BWD_WGS");
    return e && std::string(e) == "2" ? 2 : 1;
  }();
  return wgs;
}

// Mode 1: the dk/dv kernel; 2: and the dq kernel; 3: the dk/dv kernel with K, V as register A fragments (REG_A)
// and mode 2's dq kernel; 4: both kernels REG_A; 5: the pipelined dk/dv kernel (REG_A, one warpgroup a block
// whatever WGS) and mode 2's dq kernel; 6: the pipelined dk/dv kernel and the REG_A dq kernel.
template <int WGS>
void bwd_wgmma_launch(int mode, const AttentionShape& s, const __nv_bfloat16* q, int64_t ldq, const __nv_bfloat16* k,
                      int64_t ldk, const __nv_bfloat16* v, int64_t ldv, const __nv_bfloat16* dO, int64_t lddo,
                      const float* lse, const float* delta, float* dq, int64_t lddq, float* dk, int64_t lddk,
                      float* dv, int64_t lddv, cudaStream_t st) {
  const Geo g = make_geo(s);
  const dim3 grid(unsigned((s.N + 64 * WGS - 1) / (64 * WGS)), unsigned(s.heads), unsigned(s.S));
  const auto dkdv = [&](auto reg_a) {
    constexpr bool kRegA = decltype(reg_a)::value;
    using Sh = wgb::Shape<WGS, kRegA>;
    set_smem(k_swa_bwd_dkdv_wgmma<WGS, kRegA>, Sh::kSmemDkdv);
    k_swa_bwd_dkdv_wgmma<WGS, kRegA><<<grid, Sh::kThreads, Sh::kSmemDkdv, st>>>(g, q, ldq, k, ldk, v, ldv, dO, lddo,
                                                                                lse, delta, dk, lddk, dv, lddv);
    TTT_LAUNCH_CHECK("k_swa_bwd_dkdv_wgmma");
  };
  const auto dq_kernel = [&](auto reg_a) {
    constexpr bool kRegA = decltype(reg_a)::value;
    using Sh = wgb::Shape<WGS, kRegA>;
    set_smem(k_swa_bwd_dq_wgmma<WGS, kRegA>, Sh::kSmemDq);
    k_swa_bwd_dq_wgmma<WGS, kRegA><<<grid, Sh::kThreads, Sh::kSmemDq, st>>>(g, q, ldq, k, ldk, v, ldv, dO, lddo, lse,
                                                                            delta, dq, lddq);
    TTT_LAUNCH_CHECK("k_swa_bwd_dq_wgmma");
  };
  if ((dk || dv) && mode >= 5) {
    const dim3 grid64(unsigned((s.N + 63) / 64), unsigned(s.heads), unsigned(s.S));
    set_smem(k_swa_bwd_dkdv_wgmma_pipelined, wgb::kSmemDkdvPipelined);
    k_swa_bwd_dkdv_wgmma_pipelined<<<grid64, 128, wgb::kSmemDkdvPipelined, st>>>(g, q, ldq, k, ldk, v, ldv, dO, lddo,
                                                                                 lse, delta, dk, lddk, dv, lddv);
    TTT_LAUNCH_CHECK("k_swa_bwd_dkdv_wgmma_pipelined");
  } else if (dk || dv) {
    if (mode >= 3) dkdv(std::true_type{});
    else dkdv(std::false_type{});
  }
  if (dq && mode >= 2) {
    if (mode == 4 || mode == 6) dq_kernel(std::true_type{});
    else dq_kernel(std::false_type{});
  }
}

}  // namespace

// The wgmma backward kernels of mode (1: dk/dv; 2: dk/dv and dq; 3..6: those with register A operands and
// pipelined, see bwd_wgmma_launch) for swa_backward_bf16, after its delta kernel
// (delta and bf16(dO) in its workspace). Null gradients are not wanted.
void swa_backward_bf16_wgmma(int mode, const AttentionShape& s, const __nv_bfloat16* q, int64_t ldq,
                             const __nv_bfloat16* k, int64_t ldk, const __nv_bfloat16* v, int64_t ldv,
                             const __nv_bfloat16* dO, int64_t lddo, const float* lse, const float* delta, float* dq,
                             int64_t lddq, float* dk, int64_t lddk, float* dv, int64_t lddv, cudaStream_t st) {
  if (bwd_warpgroups() == 1)
    bwd_wgmma_launch<1>(mode, s, q, ldq, k, ldk, v, ldv, dO, lddo, lse, delta, dq, lddq, dk, lddk, dv, lddv, st);
  else
    bwd_wgmma_launch<2>(mode, s, q, ldq, k, ldk, v, ldv, dO, lddo, lse, delta, dq, lddq, dk, lddk, dv, lddv, st);
}

int swa_backward_bf16_uses_wgmma(const AttentionShape& s) {
  const int mode = bwd_wgmma_mode();
  return mode != 0 && s.hd == wg::kHd && swa_wgmma_device_ok() ? mode : 0;
}

int swa_backward_bf16_set_wgmma(int mode) {
  TTT_CHECK(mode >= -1 && mode < kBwdWgmmaModes,
            "swa_backward_bf16_set_wgmma: mode must be -1 or 0.." << kBwdWgmmaModes - 1 << ", got " << mode);
  return g_bwd_wgmma_mode.exchange(mode, std::memory_order_relaxed);
}

}  // namespace ttt::cuda
