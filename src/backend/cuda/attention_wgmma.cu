// The sliding-window attention forward on Hopper (sm_90a): warpgroup products (wgmma) for bf16 operands with
// hd = 64, launched by swa_forward_bf16 (attention_bf16.cu) where swa_forward_bf16_uses_wgmma says so; its contract
// is that of swa_forward_bf16 (attention.h). The shared tile machinery is in attention_bf16_tiles.cuh.
#include "backend/cuda/attention_bf16_tiles.cuh"

namespace ttt::cuda {

namespace {

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

}  // namespace

// The wgmma forward with `warpgroups` (2 or 3) warpgroups per block: swa_forward_bf16's launch for bf16 operands.
void swa_forward_bf16_wgmma(int warpgroups, const AttentionShape& s, const __nv_bfloat16* q, int64_t ldq,
                            const __nv_bfloat16* k, int64_t ldk, const __nv_bfloat16* v, int64_t ldv, float* o,
                            int64_t ldo, float* lse, cudaStream_t stream) {
  if (warpgroups == 3)
    fwd_wgmma_launch<3>(s, make_geo(s), q, ldq, k, ldk, v, ldv, o, ldo, lse, stream);
  else
    fwd_wgmma_launch<2>(s, make_geo(s), q, ldq, k, ldk, v, ldv, o, ldo, lse, stream);
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

}  // namespace ttt::cuda
