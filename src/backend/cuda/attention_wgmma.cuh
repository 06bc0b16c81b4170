// The Hopper (sm_90a) warpgroup machinery of the bf16 attention kernels with hd = 64: the wgmma forward
// (attention_wgmma.cu) and the wgmma backward (attention_wgmma_bwd.cu) share it: 128-byte-swizzled shared tiles
// filled by cp.async, their matrix descriptors, the wgmma wrappers and the fences that order them. Internal to those
// two files (anonymous namespace, like attention_bf16_tiles.cuh which it includes).
#pragma once
#include "backend/cuda/attention_bf16_tiles.cuh"

namespace ttt::cuda {

// Whether the wgmma kernels can run on the current device: cc 9.0 and the loaded image has their sm_90a code
// (attention_wgmma.cu; checked once per device, enqueues nothing).
bool swa_wgmma_device_ok();

namespace {

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
//    key row 16 kk (kk * 2048 bytes). The backward's transposed products take their operands the same way: K, V
//    (A of S^T = K Q^T, dP^T = V dO^T) and Q, dO (B) K-major; dO, Q as B of dV += P^T dO, dK += dS^T Q MN-major
//    like V (the reduction index, the query, runs down the rows); K as B of dQ += dS K MN-major likewise.
//  * Accumulator of m64nNk16 (f32): warp w of the warpgroup owns rows 16w..16w+15; its n8 block j is
//    d[4j..4j+3] = (row g, col 8j + 2t, +1), (row g + 8, col 8j + 2t, +1) with g = lane / 4, t = lane % 4: per warp
//    the C layout of mma.sync m16n8k16, so softmax_step, scale_rows and finish_rows apply unchanged.
//  * A from registers (m64k16, bf16): per warp a[0] = (g, 2t..2t+1), a[1] = (g+8, 2t..), a[2] = (g, 2t+8..),
//    a[3] = (g+8, 2t+8..): the A layout of mma.sync, so p_fragment maps two n8 blocks of S onto one k16 step.
// Ordering: cp.async writes are generic-proxy writes that wgmma (async proxy) reads: every thread waits for its
// copies, fences (fence.proxy.async.shared::cta), then the block barrier. wgmma.fence precedes each batch
// (its accumulator / A registers were written by ordinary instructions), commit + wait ends it, and wg_pin keeps
// the compiler from touching those registers across the asynchronous window. Batches may overlap: wg_wait<1> lets
// the newest committed batch run on while the registers of the older ones are used (the backward).
namespace wg {
constexpr int kHd = 64;         // head width (one 128-byte row)
constexpr int kRowB = kHd * 2;  // bytes of a tile row
}  // namespace wg

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define TTT_ATTN_WGMMA_DEVICE 1

// The bytes that round the dynamic shared memory up to 1024 (the 128-byte swizzle's tile alignment; the launch
// requests 1 KB more than the tiles use).
__device__ __forceinline__ uint32_t smem_pad_to_1024(const void* raw) { return (1024 - (smem_u32(raw) & 1023)) & 1023; }
// An accumulator's fragments set to zero (the first product of a tile loop adds into them).
template <int N>
__device__ __forceinline__ void wg_zero(float (&acc)[N][4]) {
#pragma unroll
  for (int n = 0; n < N; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait_group() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// 4 bytes global -> shared, asynchronously (zeros when !ok: nothing is read); in the group of the tile copies.
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool ok) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(ok ? 4 : 0)
               : "memory");
}
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Waits until at most N committed wgmma groups of the warpgroup are pending (groups complete in commit order).
template <int N>
__device__ __forceinline__ void wg_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
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

// The descriptor of a tile plus this is the descriptor of the same tile `rows` rows further down (the k16 step of an
// MN-major operand: 16 rows).
__device__ __forceinline__ uint64_t desc_rows(int rows) { return uint64_t(rows) * wg::kRowB >> 4; }

// The 32 fp32 accumulators d[0..7][0..3] of an m64n64 wgmma (a thread's share of the 64 x 64 tile) as in-out asm
// operands %0..%31, in the order the instruction's register list names them.
#define TTT_WGMMA_N64_ACCUMULATORS(d)                                                                                \
  "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]),            \
      "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]),        \
      "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]),        \
      "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]),        \
      "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])

// d [64 x 128] = (accumulate ? d : 0) + A (desc a, K-major) x B (desc b, K-major), one k16 step.
__device__ __forceinline__ void wgmma_n128_ss(float (&d)[16][4], uint64_t a, uint64_t b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,"
      "%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,"
      "%56,%57,%58,%59,%60,%61,%62,%63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : TTT_WGMMA_N64_ACCUMULATORS(d), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]),
        "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]),
        "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]),
        "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]),
        "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]),
        "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
      : "l"(a), "l"(b), "r"(accumulate));
}

// d [64 x 64] = (accumulate ? d : 0) + A (desc a, K-major) x B (desc b, K-major), one k16 step.
__device__ __forceinline__ void wgmma_n64_ss(float (&d)[8][4], uint64_t a, uint64_t b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,"
      "%29,%30,%31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : TTT_WGMMA_N64_ACCUMULATORS(d)
      : "l"(a), "l"(b), "r"(accumulate));
}

// d [64 x 64] += A (registers, one k16 step) x B (desc b, MN-major: tnsp-b = 1).
__device__ __forceinline__ void wgmma_n64_rs(float (&d)[8][4], const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,"
      "%29,%30,%31}, {%32,%33,%34,%35}, %36, p, 1, 1, 1;\n}\n"
      : TTT_WGMMA_N64_ACCUMULATORS(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}

// d [64 x 64] = (accumulate ? d : 0) + A (registers, one k16 step) x B (desc b, K-major: tnsp-b = 0): the products
// whose A operand stays for a whole block (the backward's K, V of dk/dv and Q, dO of dq), read once into registers
// instead of from shared memory by every instruction.
__device__ __forceinline__ void wgmma_n64_rs_kmajor(float (&d)[8][4], const uint32_t (&a)[4], uint64_t b,
                                                    int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,"
      "%29,%30,%31}, {%32,%33,%34,%35}, %36, p, 1, 1, 0;\n}\n"
      : TTT_WGMMA_N64_ACCUMULATORS(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate));
}

// The A fragments (m64k16 from registers, one per k16 step of hd; layout in the notes above) of the warp's 16 rows
// row0.. of a [rows, 64] bf16 head slice g (leading dimension ld, a multiple of 2; zero from row n on): the same
// bf16 values a 128-byte-swizzled tile of those rows would hold, read once straight from global memory.
__device__ __forceinline__ void wg_load_a_fragments(uint32_t (&a)[wg::kHd / 16][4],
                                                    const __nv_bfloat16* __restrict__ g, int64_t ld, int row0,
                                                    int n) {
  const int lane = threadIdx.x % 32, g4 = lane / 4, t4 = lane % 4;
#pragma unroll
  for (int r = 0; r < 2; ++r) {  // rows g4, g4 + 8 of the warp's 16
    const int row = row0 + g4 + 8 * r;
    const uint32_t* p = reinterpret_cast<const uint32_t*>(g + int64_t(row < n ? row : 0) * ld);
#pragma unroll
    for (int kk = 0; kk < wg::kHd / 16; ++kk) {
      a[kk][r] = row < n ? __ldg(p + (kk * 16 + 2 * t4) / 2) : 0u;          // columns 16 kk + 2 t4, +1
      a[kk][2 + r] = row < n ? __ldg(p + (kk * 16 + 2 * t4 + 8) / 2) : 0u;  // columns 16 kk + 2 t4 + 8, +9
    }
  }
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


}  // namespace
}  // namespace ttt::cuda
