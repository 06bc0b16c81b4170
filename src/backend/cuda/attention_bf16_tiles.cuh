// The machinery the bf16 attention kernels share (attention_bf16.cu: the mma.sync forward and backward;
// attention_wgmma.cu / attention_wgmma_bwd.cu: the Hopper forward and backward, through attention_wgmma.cuh): tile
// shapes, fragment loads, the operand streams, the online softmax step and the output/lse write, and the host's
// shared-memory opt-in. Internal to those files (everything is in an anonymous namespace: each includes its own
// copy).
#pragma once
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
template <class Kernel>
void set_smem(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    TTT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

}  // namespace
}  // namespace ttt::cuda
