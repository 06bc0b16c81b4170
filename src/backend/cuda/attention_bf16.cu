// Sliding-window attention with bf16 tensor-core products (see attention.h, swa_forward_bf16 /
// swa_backward_bf16): the semantics, layouts and checks of the fp32 kernels in attention.cu, with every tile
// product an mma.sync m16n8k16 (bf16 operands, fp32 accumulation), flash-attention-2 style; on Hopper the
// bf16-operand forward with hd = 64 is k_swa_fwd_wgmma instead (warpgroup products, see "forward on Hopper").
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
#include "backend/cuda/attention.h"
#include "backend/cuda/attention_host.cuh"
#include "backend/cuda/check.cuh"
#include "backend/cuda/mma_bf16.cuh"  // pack_bf16, mma_bf16

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "backend/attention_workspace.h"
#include "core/error.h"

namespace ttt::cuda {

namespace {

using namespace attn;

constexpr int kThreads = 256;  // 8 warps
constexpr int kBlk = 128;      // rows owned by a block (queries: forward, dq; keys: dk/dv)
constexpr int kT = 64;         // rows of a streamed tile (keys: forward, dq; queries: dk/dv)



template <int HD>
struct Cfg {
  static constexpr int SP = HD + 8;              // bf16 row stride of shared tiles
  static constexpr int KS = HD / 16;             // k16 steps over the head width
  static constexpr int NT = HD / 8;              // n8 tiles over the head width
  static constexpr bool kRes = HD <= 64;         // resident A fragments (else re-read from shared memory)
  static constexpr bool kPrefetch = HD <= 64;    // next tile's global loads overlap the current tile's math
  static constexpr int kTileB = kT * SP * 2;     // bytes of a streamed bf16 tile
  static constexpr int kBlkB = kBlk * SP * 2;    // bytes of a block-owned bf16 tile
};

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
__device__ __forceinline__ uint32_t smem_u32(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
// 16 bytes global -> shared, asynchronously; src_bytes 0 fills the 16 bytes with zeros (nothing is read).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

// Lane offsets (bf16 elements, in a tile of row stride SP) of the ldmatrix.x4 addresses:
//  a_off:  A fragment of rows 0..15, k 0..15 (matrices: rows 0-7|8-15 x k 0-7|8-15)
//  b_off:  B fragments of two n8 tiles (rows n 0..15 of a [n][k] tile), k 0..15, non-transposed
//  bt_off: B fragments of two n8 tiles (columns n 0..15 of a [k][n] tile), k 0..15, transposed
template <int SP>
__device__ __forceinline__ int a_off(int lane) { return (lane % 16) * SP + (lane / 16) * 8; }
template <int SP>
__device__ __forceinline__ int b_off(int lane) { return ((lane % 8) + (lane / 16) * 8) * SP + ((lane / 8) % 2) * 8; }
template <int SP>
__device__ __forceinline__ int bt_off(int lane) { return ((lane % 8) + ((lane / 8) % 2) * 8) * SP + (lane / 16) * 8; }

// The A fragment (16 rows x k16) of k step kk of a probability tile p held in accumulator layout, rounded to
// bf16: the C layout of the two n8 blocks 2kk, 2kk + 1 is the A layout of one k16 step (mma.sync m16n8k16 and,
// per warp, wgmma m64nNk16 with A in registers).
template <int NB>
__device__ __forceinline__ void p_fragment(const float (&p)[NB][4], int kk, uint32_t (&a)[4]) {
  a[0] = pack_bf16(p[2 * kk][0], p[2 * kk][1]);
  a[1] = pack_bf16(p[2 * kk][2], p[2 * kk][3]);
  a[2] = pack_bf16(p[2 * kk + 1][0], p[2 * kk + 1][1]);
  a[3] = pack_bf16(p[2 * kk + 1][2], p[2 * kk + 1][3]);
}

// acc rows g4 (elements 0, 1) and g4 + 8 (elements 2, 3) times alpha[0], alpha[1].
template <int NT>
__device__ __forceinline__ void scale_rows(float (&acc)[NT][4], const float (&alpha)[2]) {
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    acc[n][0] *= alpha[0], acc[n][1] *= alpha[0];
    acc[n][2] *= alpha[1], acc[n][3] *= alpha[1];
  }
}

// acc[nt] (16 rows x 64 columns) += A (16 rows x HD, fragments a[kk] or from shared a_addr) * B^T where B is a
// [64 x HD] shared tile at b_addr (row n = output column).
template <int HD, bool RES = Cfg<HD>::kRes>
__device__ __forceinline__ void mm_abt(float (&acc)[8][4], const uint32_t (&a_reg)[RES ? HD / 16 : 1][4],
                                       uint32_t a_addr, uint32_t b_addr) {
  constexpr int SP = Cfg<HD>::SP;
#pragma unroll
  for (int kk = 0; kk < HD / 16; ++kk) {
    uint32_t a[4];
    if constexpr (RES) {
#pragma unroll
      for (int u = 0; u < 4; ++u) a[u] = a_reg[kk][u];
    } else {
      ldsm_x4(a, a_addr + kk * 32);
    }
#pragma unroll
    for (int np = 0; np < 4; ++np) {
      uint32_t b[4];
      ldsm_x4(b, b_addr + (np * 16 * SP + kk * 16) * 2);
      mma_bf16(acc[2 * np], a, b[0], b[1]);
      mma_bf16(acc[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// acc[nt] (16 rows x HD) += P (16 rows x 64, fp32 accumulator fragments rounded to bf16) * B where B is a
// [64 x HD] shared tile at bt_addr (row k).
template <int HD>
__device__ __forceinline__ void mm_pb(float (&acc)[HD / 8][4], const float (&p)[8][4], uint32_t bt_addr) {
  constexpr int SP = Cfg<HD>::SP;
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    uint32_t a[4];
    p_fragment(p, kk, a);
#pragma unroll
    for (int dp = 0; dp < HD / 16; ++dp) {
      uint32_t b[4];
      ldsm_x4_t(b, bt_addr + (kk * 16 * SP + dp * 16) * 2);
      mma_bf16(acc[2 * dp], a, b[0], b[1]);
      mma_bf16(acc[2 * dp + 1], a, b[2], b[3]);
    }
  }
}

// A tile [ROWS x HD] of fp32 rows row0.. (g: row 0, first column of the head) held in registers (zero past
// rows_valid and hd), then written to shared memory as bf16.
template <int HD, int ROWS>
struct TileLoader {
  static constexpr int C4 = HD / 4;
  static constexpr int PER = ROWS * C4 / kThreads;
  float4 v[PER];
  __device__ __forceinline__ void load(const float* __restrict__ g, int64_t ld, int row0, int rows_valid, int hd,
                                       bool vec) {
#pragma unroll
    for (int i = 0; i < PER; ++i) {
      const int e = threadIdx.x + i * kThreads, r = e / C4, c = (e % C4) * 4;
      float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
      if (r < rows_valid) {
        const float* p = g + int64_t(row0 + r) * ld + c;
        if (vec) {
          if (c < hd) x = __ldg(reinterpret_cast<const float4*>(p));
        } else {
          if (c < hd) x.x = __ldg(p);
          if (c + 1 < hd) x.y = __ldg(p + 1);
          if (c + 2 < hd) x.z = __ldg(p + 2);
          if (c + 3 < hd) x.w = __ldg(p + 3);
        }
      }
      v[i] = x;
    }
  }
  __device__ __forceinline__ void store(__nv_bfloat16* sm) const {
#pragma unroll
    for (int i = 0; i < PER; ++i) {
      const int e = threadIdx.x + i * kThreads, r = e / C4, c = (e % C4) * 4;
      *reinterpret_cast<uint2*>(sm + r * Cfg<HD>::SP + c) = make_uint2(pack_bf16(v[i].x, v[i].y), pack_bf16(v[i].z, v[i].w));
    }
  }
};

// Where a kernel's tiles come from, one interface for both input types:
//   issue(row0, rows_valid, dst)  start reading rows row0.. (zero past rows_valid and past the head width) for the
//                                 shared tile dst;
//   land(dst)                     finish writing dst (fp32: round the registers to bf16 and store them);
//   kAsyncRows<T>                 the copy is in flight until wait_rows<T>() (bf16: cp.async).
template <class T, int HD, int ROWS>
struct TileRows;
template <class T>
constexpr bool kAsyncRows = std::is_same_v<T, __nv_bfloat16>;

template <int HD, int ROWS>
struct TileRows<float, HD, ROWS> {
  const float* g;
  int64_t ld;
  int hd;
  bool vec;
  TileLoader<HD, ROWS> regs;
  __device__ __forceinline__ void issue(int row0, int rows_valid, __nv_bfloat16*) {
    regs.load(g, ld, row0, rows_valid, hd, vec);
  }
  __device__ __forceinline__ void land(__nv_bfloat16* dst) const { regs.store(dst); }
};

template <int HD, int ROWS>
struct TileRows<__nv_bfloat16, HD, ROWS> {
  static constexpr int C8 = HD / 8;  // 16-byte chunks per row
  static constexpr int PER = (ROWS * C8 + kThreads - 1) / kThreads;
  const __nv_bfloat16* g;
  int64_t ld;
  int hd;  // a multiple of 8 (checked by the host)
  bool vec;
  __device__ __forceinline__ void issue(int row0, int rows_valid, __nv_bfloat16* dst) const {
#pragma unroll
    for (int i = 0; i < PER; ++i) {
      const int e = threadIdx.x + i * kThreads, r = e / C8, c = (e % C8) * 8;
      if (ROWS * C8 % kThreads != 0 && e >= ROWS * C8) break;
      const bool ok = r < rows_valid && c < hd;
      cp_async16(dst + r * Cfg<HD>::SP + c, ok ? g + int64_t(row0 + r) * ld + c : g, ok ? 16 : 0);
    }
  }
  __device__ __forceinline__ void land(__nv_bfloat16*) const {}
};

template <class T>
__device__ __forceinline__ void wait_rows() {
  if constexpr (kAsyncRows<T>) cp_async_wait_all();
}

// The K and V tiles a query block streams (forward, dq): rows row0 .. row0 + kT of both into a pair of buffers.
template <class T, int HD>
struct KvStream {
  TileRows<T, HD, kT> k, v;
  int N;
  __device__ __forceinline__ void issue(int row0, __nv_bfloat16* Kd, __nv_bfloat16* Vd) {
    k.issue(row0, min(kT, N - row0), Kd);
    v.issue(row0, min(kT, N - row0), Vd);
  }
  __device__ __forceinline__ void land(__nv_bfloat16* Kd, __nv_bfloat16* Vd) const {
    k.land(Kd);
    v.land(Vd);
  }
};

// A tile body instantiated with and without the per-element visibility test.
template <class Tile>
__device__ __forceinline__ void masked_if(bool needs_mask, Tile&& tile) {
  if (needs_mask) tile(std::true_type{});
  else tile(std::false_type{});
}

__device__ __forceinline__ bool visible(int i, int j, const Geo& g) { return i < g.N && j <= i && j > i - g.window; }

// One online-softmax step (the one copy both forward kernels run) over a score tile s in accumulator layout:
// NB n8 column blocks, element e of block n at row row0 + g4 + 8 (e / 2), key k0 + 8 n + 2 t4 + e % 2 (the
// C layout of mma.sync m16n8k16 and, per warp, of wgmma m64nNk16). Masks invisible elements when MASKED, turns s
// into the probabilities exp2(s scale_log2 - mu) of the new running maximum m, adds their sum (this lane's
// columns) to l after scaling l by alpha, and returns alpha, the factor the output accumulator must be scaled by.
// m: running maximum of the raw scores q.k (the scale is applied inside the exponent: one FFMA per element).
template <int NB, bool MASKED>
__device__ __forceinline__ void softmax_step(float (&s)[NB][4], float (&m)[2], float (&l)[2], float (&alpha)[2],
                                             int row0, int k0, const Geo& g) {
  const int lane = threadIdx.x % 32, g4 = lane / 4, t4 = lane % 4;
  float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int n = 0; n < NB; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if constexpr (MASKED) {
        if (!visible(row0 + g4 + (e / 2) * 8, k0 + n * 8 + 2 * t4 + (e % 2), g)) s[n][e] = -INFINITY;
      }
      mx[e / 2] = fmaxf(mx[e / 2], s[n][e]);
    }
  float mu[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
    const float m_new = fmaxf(m[r], mx[r]);
    mu[r] = m_new == -INFINITY ? 0.f : m_new * g.scale_log2;  // nothing visible yet: stays at zero
    alpha[r] = ex2(m[r] * g.scale_log2 - mu[r]);
    m[r] = m_new;
  }
  float sum[2] = {0.f, 0.f};
#pragma unroll
  for (int n = 0; n < NB; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float p = ex2(fmaf(s[n][e], g.scale_log2, -mu[e / 2]));
      s[n][e] = p;
      sum[e / 2] += p;
    }
#pragma unroll
  for (int r = 0; r < 2; ++r) l[r] = l[r] * alpha[r] + sum[r];
}


// Output rows (16 per warp: r0 + g, r0 + g + 8) of accumulator fragments acc[nt], times mul.
template <int HD>
__device__ __forceinline__ void store_rows(float* __restrict__ dst, int64_t ld, int r0, const Geo& geo,
                                           const float (&acc)[HD / 8][4], float mul0, float mul1) {
  const int lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
#pragma unroll
  for (int h2 = 0; h2 < 2; ++h2) {
    const int i = r0 + g + 8 * h2;
    if (i >= geo.N) continue;
    const float mul = h2 ? mul1 : mul0;
    float* row = dst + int64_t(i) * ld;
#pragma unroll
    for (int nt = 0; nt < HD / 8; ++nt) {
      const int c = nt * 8 + 2 * t4;
      if (c < geo.hd) row[c] = acc[nt][2 * h2] * mul;
      if (c + 1 < geo.hd) row[c + 1] = acc[nt][2 * h2 + 1] * mul;
    }
  }
}

// The forward's outputs of one warp's 16 rows (r0 + g4, r0 + g4 + 8): o = acc / l (l summed over the 4 lanes of a
// row) and lse = ln sum_j exp(scale q.k_j) at lse_h[i * heads] (lse_h: the head's column of the sequence's rows).
template <int HD>
__device__ __forceinline__ void finish_rows(float* __restrict__ o, int64_t ldo, float* __restrict__ lse_h, int r0,
                                            const Geo& g, const float (&acc)[HD / 8][4], const float (&m)[2],
                                            float (&l)[2]) {
  const int lane = threadIdx.x % 32, g4 = lane / 4, t4 = lane % 4;
  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    inv[r] = 1.f / l[r];
  }
  store_rows<HD>(o, ldo, r0, g, acc, inv[0], inv[1]);
  if (t4 == 0) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int i = r0 + g4 + 8 * r;
      if (i < g.N) lse_h[int64_t(i) * g.heads] = (m[r] * g.scale_log2 + log2f(l[r])) * kLn2;
    }
  }
}

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

// ---- forward on Hopper: wgmma (sm_90a) --------------------------------------------------------------------
// The bf16-input forward for hd = 64 as warpgroup products (wgmma.mma_async, FlashAttention-3's instruction):
// block = (64 WGS queries, head, sequence), WGS = 2 or 3 warpgroups of 64 query rows; 128-key K/V tiles stream
// through double-buffered shared memory by cp.async (the next tile's copy in flight during the current tile's
// math). WGS = 2 (the default): two blocks share an SM (81 KB of shared memory, <= 128 registers a thread), so one
// block's softmax overlaps the other's products; WGS = 3: one block per SM (<= 168 registers), each K/V tile
// serves 192 queries. Per tile and warpgroup: S [64 x 128] = Q K^T (4 x m64n128k16, both operands in shared
// memory), the online softmax of the mma.sync kernel (softmax_step) on S in registers, O [64 x 64] += P V
// (8 x m64n64k16, P from registers). Same semantics, masks, outputs and lse as k_swa_fwd_bf16, same products up to
// the order of the fp32 sums inside the tensor cores (not bit-identical).
//
// Layouts relied on (PTX ISA, "Asynchronous Warpgroup Level Matrix ..." sections):
//  * Shared tiles: rows of 64 bf16 = 128 bytes, row r at r * 128, the 16-byte chunk c of a row stored at chunk
//    c ^ (r % 8) (the 128-byte swizzle: address bits [4,7) ^= bits [7,10)); every tile starts 1024-byte aligned.
//  * Matrix descriptor (64 bits): [0,14) start address >> 4, [16,30) leading-dimension byte offset >> 4,
//    [32,46) stride-dimension byte offset >> 4, [49,52) base offset (0: tiles 1024-aligned), [62,64) swizzle
//    (1 = 128-byte).
//  * Q (A) and K (B) are K-major (the reduction index, hd, runs along the 128-byte rows): stride byte offset =
//    1024 (from one 8-row group to the next), leading byte offset unused with the 128-byte swizzle (1 by
//    convention); the k16 step kk starts kk * 32 bytes into the rows (the hardware applies the swizzle to the
//    address it forms, so the start moves by plain bytes).
//  * V (B of P V) is [keys, hd] row-major: MN-major (the output index runs along the rows), instruction flag
//    tnsp-b = 1; a 128-byte swizzle atom spans 64 hd columns x 8 keys, stride byte offset = 1024 (from one 8-key
//    group to the next), leading byte offset (the next 64 columns) unused for n = 64; the k16 step kk starts at
//    key row 16 kk (kk * 2048 bytes).
//  * Accumulator of m64nNk16 (f32): warp w of the warpgroup owns rows 16w..16w+15; its n8 block j is
//    d[4j..4j+3] = (row g, col 8j + 2t, +1), (row g + 8, col 8j + 2t, +1) with g = lane / 4, t = lane % 4: per warp
//    the C layout of mma.sync m16n8k16, so softmax_step, scale_rows and finish_rows apply unchanged.
//  * A from registers (m64k16, bf16): per warp a[0] = (g, 2t..2t+1), a[1] = (g+8, 2t..), a[2] = (g, 2t+8..),
//    a[3] = (g+8, 2t+8..): the A layout of mma.sync, so p_fragment maps two n8 blocks of S onto one k16 step.
// Ordering: cp.async writes are generic-proxy writes that wgmma (async proxy) reads: every thread waits for its
// copies, fences (fence.proxy.async.shared::cta), then the block barrier. wgmma.fence precedes each batch
// (its accumulator / A registers were written by ordinary instructions), commit + wait 0 ends it, and
// wg_pin keeps the compiler from touching those registers across the asynchronous window.
namespace wg {
constexpr int kKeys = 128;             // keys per streamed tile
constexpr int kHd = 64;                // head width (one 128-byte row)
constexpr int kRowB = kHd * 2;         // bytes of a tile row
constexpr int kTileB = kKeys * kRowB;  // bytes of a K or V tile
// WGS warpgroups (64 query rows each) per block: 2 (two blocks per SM, <= 128 registers) or 3 (one block per SM,
// <= 168 registers, 1.5x fewer K/V tile reads per query).
template <int WGS>
struct Shape {
  static constexpr int kThreads = 128 * WGS;
  static constexpr int kRows = 64 * WGS;  // queries per block
  static constexpr int kBlocksPerSm = WGS == 2 ? 2 : 1;
  static constexpr size_t kSmem = 1024 + size_t(kRows) * kRowB + 4 * size_t(kTileB);  // slack, Q, K[2], V[2]
};
}  // namespace wg

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define TTT_ATTN_WGMMA_DEVICE 1

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait_group() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
template <int NB>
__device__ __forceinline__ void wg_pin(float (&d)[NB][4]) {
#pragma unroll
  for (int n = 0; n < NB; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[n][e])::"memory");
}
template <int KS>
__device__ __forceinline__ void wg_pin(uint32_t (&a)[KS][4]) {
#pragma unroll
  for (int k = 0; k < KS; ++k)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(a[k][e])::"memory");
}

// Descriptor of a 128-byte-swizzled tile at shared address addr (1024-aligned; see the layout notes above).
__device__ __forceinline__ uint64_t sw128_desc(uint32_t addr) {
  constexpr uint64_t kLbo = 1, kSbo = 1024 >> 4, kSwizzle128 = 1;
  return uint64_t((addr >> 4) & 0x3FFF) | (kLbo << 16) | (kSbo << 32) | (kSwizzle128 << 62);
}

// d [64 x 128] = (accumulate ? d : 0) + A (desc a, K-major) x B (desc b, K-major), one k16 step.
__device__ __forceinline__ void wgmma_n128_ss(float (&d)[16][4], uint64_t a, uint64_t b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,"
      "%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,"
      "%56,%57,%58,%59,%60,%61,%62,%63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]),
        "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]),
        "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]),
        "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]),
        "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]),
        "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]),
        "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]),
        "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]),
        "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]),
        "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
      : "l"(a), "l"(b), "r"(accumulate));
}

// d [64 x 64] += A (registers, one k16 step) x B (desc b, MN-major: tnsp-b = 1).
__device__ __forceinline__ void wgmma_n64_rs(float (&d)[8][4], const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,"
      "%29,%30,%31}, {%32,%33,%34,%35}, %36, p, 1, 1, 1;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]),
        "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]),
        "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]),
        "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]),
        "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}

// cp.async of ROWS rows x 64 bf16 (rows row0.., zero past rows_valid) of g (leading dimension ld, 16-byte aligned
// rows) into the 128-byte-swizzled tile at dst, by the block's THREADS threads.
template <int ROWS, int THREADS>
__device__ __forceinline__ void wg_load_tile(unsigned char* dst, const __nv_bfloat16* __restrict__ g, int64_t ld,
                                             int row0, int rows_valid) {
  constexpr int kChunks = ROWS * (wg::kRowB / 16);
#pragma unroll
  for (int i = 0; i < (kChunks + THREADS - 1) / THREADS; ++i) {
    const int e = threadIdx.x + i * THREADS, r = e / 8, c = e % 8;
    if (kChunks % THREADS != 0 && e >= kChunks) break;
    const bool ok = r < rows_valid;
    cp_async16(dst + r * wg::kRowB + ((c ^ (r % 8)) * 16), ok ? g + int64_t(row0 + r) * ld + c * 8 : g, ok ? 16 : 0);
  }
}
#endif

template <int WGS>
__global__ void __launch_bounds__(wg::Shape<WGS>::kThreads, wg::Shape<WGS>::kBlocksPerSm)
    k_swa_fwd_wgmma(Geo g, const __nv_bfloat16* __restrict__ q, int64_t ldq, const __nv_bfloat16* __restrict__ k,
                    int64_t ldk, const __nv_bfloat16* __restrict__ v, int64_t ldv, float* __restrict__ o, int64_t ldo,
                    float* __restrict__ lse) {
#ifdef TTT_ATTN_WGMMA_DEVICE
  using wg::kKeys, wg::kHd, wg::kRowB, wg::kTileB;
  constexpr int kRows = wg::Shape<WGS>::kRows, kThreadsB = wg::Shape<WGS>::kThreads;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
  unsigned char* Qs = smem;                   // kRows rows
  unsigned char* Ks = Qs + kRows * kRowB;     // [2] (kRows * 128 bytes: a multiple of 8 KB, 1024-aligned)
  unsigned char* Vs = Ks + 2 * kTileB;        // [2]
  const int warpgroup = threadIdx.x / 128, warp = (threadIdx.x % 128) / 32;
  const int q0 = blockIdx.x * kRows, h = blockIdx.y;
  const int64_t base = int64_t(blockIdx.z) * g.N, col = int64_t(h) * kHd;
  const __nv_bfloat16* kg = k + base * ldk + col;
  const __nv_bfloat16* vg = v + base * ldv + col;
  const int k_begin = max(0, q0 - g.window + 1), k_end = min(g.N, q0 + kRows);
  const int ntiles = (k_end - k_begin + kKeys - 1) / kKeys;
  wg_load_tile<kRows, kThreadsB>(Qs, q + base * ldq + col, ldq, q0, min(kRows, g.N - q0));
  wg_load_tile<kKeys, kThreadsB>(Ks, kg, ldk, k_begin, min(kKeys, g.N - k_begin));
  wg_load_tile<kKeys, kThreadsB>(Vs, vg, ldv, k_begin, min(kKeys, g.N - k_begin));
  cp_async_commit();

  const int r0 = q0 + warpgroup * 64;  // the warpgroup's first query row
  const int rw = r0 + warp * 16;       // the warp's
  const uint64_t q_desc = sw128_desc(smem_u32(Qs + warpgroup * 64 * kRowB));
  float acc[kHd / 8][4];
#pragma unroll
  for (int n = 0; n < kHd / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // as in k_swa_fwd_bf16

  for (int it = 0; it < ntiles; ++it) {
    const int k0 = k_begin + it * kKeys, buf = it & 1;
    if (it + 1 < ntiles) {  // the next tile into the other buffer (free: the last iteration ended in a barrier)
      const int k1 = k0 + kKeys;
      wg_load_tile<kKeys, kThreadsB>(Ks + (buf ^ 1) * kTileB, kg, ldk, k1, min(kKeys, g.N - k1));
      wg_load_tile<kKeys, kThreadsB>(Vs + (buf ^ 1) * kTileB, vg, ldv, k1, min(kKeys, g.N - k1));
      cp_async_commit();
      cp_async_wait_group<1>();  // this tile's group (and Q's) has landed, the next one may still fly
    } else {
      cp_async_wait_group<0>();
    }
    fence_proxy_async();
    __syncthreads();
    // Warpgroup-uniform: wgmma needs all 128 threads of the warpgroup.
    const bool active = r0 < g.N && k0 <= r0 + 63 && k0 + kKeys - 1 > r0 - g.window;
    if (active) {
      const auto tile = [&](auto masked) {
        float s[kKeys / 8][4];
        const uint64_t k_desc = sw128_desc(smem_u32(Ks + buf * kTileB));
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < kHd / 16; ++kk) wgmma_n128_ss(s, q_desc + 2 * kk, k_desc + 2 * kk, kk);  // +32 B
        wg_commit();
        wg_wait0();
        wg_pin(s);
        float alpha[2];
        softmax_step<kKeys / 8, decltype(masked)::value>(s, m, l, alpha, rw, k0, g);
        scale_rows<kHd / 8>(acc, alpha);
        uint32_t p[kKeys / 16][4];
#pragma unroll
        for (int kk = 0; kk < kKeys / 16; ++kk) p_fragment(s, kk, p[kk]);
        const uint64_t v_desc = sw128_desc(smem_u32(Vs + buf * kTileB));
        wg_pin(acc);  // the rescale and the P packing happen before the fence
        wg_pin(p);
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < kKeys / 16; ++kk) wgmma_n64_rs(acc, p[kk], v_desc + kk * (16 * kRowB >> 4));
        wg_commit();
        wg_wait0();
        wg_pin(acc);
        wg_pin(p);
      };
      // Tiles inside the window, below the diagonal and inside the sequence (for all 64 rows) need no mask.
      masked_if(!(k0 + kKeys - 1 <= r0 && k0 > r0 + 63 - g.window && r0 + 63 < g.N), tile);
    }
    __syncthreads();  // every warpgroup is done with this buffer before the next iteration refills it
  }
  finish_rows<kHd>(o + base * ldo + col, ldo, lse + base * g.heads + h, rw, g, acc, m, l);
#elif defined(__CUDA_ARCH__)
  __trap();  // never launched: k_wgmma_built tells the host this image has no wgmma code
#endif
}

// Its static shared memory (host-visible through cudaFuncGetAttributes, nothing launched) says whether the image
// the device loads has the sm_90a code of k_swa_fwd_wgmma: 16 bytes in an sm_90a image, none in one from other
// targets (a compute_80 PTX JIT-compiled for the device, a plain sm_90 cubin).
__global__ void k_wgmma_built() {
#ifdef TTT_ATTN_WGMMA_DEVICE
  __shared__ int marker[4];
  asm volatile("st.shared.u32 [%0], 0;\n" ::"r"(smem_u32(marker + threadIdx.x % 4)) : "memory");
#endif
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

template <class Kernel>
void set_smem(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    TTT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

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
  if constexpr (std::is_same_v<T, __nv_bfloat16>) x.dO = dO16, x.lddo = D;
  if (s.hd <= 32) bwd_launch<32>(s, g, x, lse, delta, dq, lddq, dk, lddk, dv, lddv, vec, st);
  else if (s.hd <= 64) bwd_launch<64>(s, g, x, lse, delta, dq, lddq, dk, lddk, dv, lddv, vec, st);
  else bwd_launch<128>(s, g, x, lse, delta, dq, lddq, dk, lddk, dv, lddv, vec, st);
}

// swa_forward_bf16_set_wgmma; -1: not set, TTT_ATTN_WGMMA decides (0: off, 3: 3 warpgroups, else 2).
std::atomic<int> g_wgmma_warpgroups{-1};

int wgmma_warpgroups() {
  static const int from_env = [] {
    const char* e = std::getenv("TTT_ATTN_WGMMA");
    return e && std::string(e) == "0" ? 0 : e && std::string(e) == "3" ? 3 : 2;
  }();
  const int set = g_wgmma_warpgroups.load(std::memory_order_relaxed);
  return set >= 0 ? set : from_env;
}

// The wgmma forward can run where its sm_90a code exists: a cc 9.0 device whose loaded image has it
// (k_wgmma_built). Checked once per device (cudaFuncGetAttributes enqueues nothing: safe while a stream is being
// captured).
bool wgmma_device_ok() {
  constexpr int kMaxDevices = 64;
  static std::atomic<signed char> known[kMaxDevices] = {};  // 0 unknown, 1 yes, -1 no
  int dev = 0;
  TTT_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < kMaxDevices && known[dev].load(std::memory_order_relaxed) != 0) return known[dev] > 0;
  int major = 0, minor = 0;
  TTT_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  TTT_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  cudaFuncAttributes attr{};
  bool ok = false;
  if (major == 9 && minor == 0) {
    const cudaError_t e = cudaFuncGetAttributes(&attr, k_wgmma_built);
    if (e != cudaSuccess) (void)cudaGetLastError();  // no loadable image: not this kernel's error to report later
    ok = e == cudaSuccess && attr.sharedSizeBytes >= 4 * sizeof(int);
  }
  if (dev < kMaxDevices) known[dev].store(ok ? 1 : -1, std::memory_order_relaxed);
  return ok;
}

template <int WGS>
void fwd_wgmma_launch(const AttentionShape& s, const Geo& g, const __nv_bfloat16* q, int64_t ldq,
                      const __nv_bfloat16* k, int64_t ldk, const __nv_bfloat16* v, int64_t ldv, float* o, int64_t ldo,
                      float* lse, cudaStream_t st) {
  using Sh = wg::Shape<WGS>;
  set_smem(k_swa_fwd_wgmma<WGS>, Sh::kSmem);
  const dim3 grid(unsigned((s.N + Sh::kRows - 1) / Sh::kRows), unsigned(s.heads), unsigned(s.S));
  k_swa_fwd_wgmma<WGS><<<grid, Sh::kThreads, Sh::kSmem, st>>>(g, q, ldq, k, ldk, v, ldv, o, ldo, lse);
  TTT_LAUNCH_CHECK("k_swa_fwd_wgmma");
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
  const int warpgroups = swa_forward_bf16_uses_wgmma(s);
  if (warpgroups == 3)
    fwd_wgmma_launch<3>(s, make_geo(s), as_nv(q), ldq, as_nv(k), ldk, as_nv(v), ldv, o, ldo, lse, as_stream(stream));
  else if (warpgroups == 2)
    fwd_wgmma_launch<2>(s, make_geo(s), as_nv(q), ldq, as_nv(k), ldk, as_nv(v), ldv, o, ldo, lse, as_stream(stream));
  else
    forward<__nv_bfloat16>(s, {as_nv(q), as_nv(k), as_nv(v), nullptr, ldq, ldk, ldv, 0}, o, ldo, lse, 0, stream);
}

int swa_forward_bf16_uses_wgmma(const AttentionShape& s) {
  const int warpgroups = wgmma_warpgroups();
  return warpgroups != 0 && s.hd == wg::kHd && wgmma_device_ok() ? warpgroups : 0;
}

int swa_forward_bf16_set_wgmma(int warpgroups) {
  TTT_CHECK(warpgroups == -1 || warpgroups == 0 || warpgroups == 2 || warpgroups == 3,
            "swa_forward_bf16_set_wgmma: warpgroups must be -1, 0, 2 or 3, got " << warpgroups);
  return g_wgmma_warpgroups.exchange(warpgroups, std::memory_order_relaxed);
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
