// The sliding-window attention forward on Hopper (sm_90a): warpgroup products (wgmma) for bf16 operands with
// hd = 64, launched by swa_forward_bf16 (attention_bf16.cu) where swa_forward_bf16_uses_wgmma says so; its contract
// is that of swa_forward_bf16 (attention.h). The shared tile machinery is in attention_bf16_tiles.cuh, the
// warpgroup machinery (shared with the wgmma backward, attention_wgmma_bwd.cu) in attention_wgmma.cuh.
#include "backend/cuda/attention_wgmma.cuh"

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
// The layouts, descriptors and fences it relies on: attention_wgmma.cuh.
namespace wg {
constexpr int kKeys = 128;             // keys per streamed tile
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

template <int WGS>
__global__ void __launch_bounds__(wg::Shape<WGS>::kThreads, wg::Shape<WGS>::kBlocksPerSm)
    k_swa_fwd_wgmma(Geo g, const __nv_bfloat16* __restrict__ q, int64_t ldq, const __nv_bfloat16* __restrict__ k,
                    int64_t ldk, const __nv_bfloat16* __restrict__ v, int64_t ldv, float* __restrict__ o, int64_t ldo,
                    float* __restrict__ lse) {
#ifdef TTT_ATTN_WGMMA_DEVICE
  using wg::kKeys, wg::kHd, wg::kRowB, wg::kTileB;
  constexpr int kRows = wg::Shape<WGS>::kRows, kThreadsB = wg::Shape<WGS>::kThreads;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + smem_pad_to_1024(smem_raw);
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
  wg_zero(acc);
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
        wg_wait<0>();
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
        for (int kk = 0; kk < kKeys / 16; ++kk) wgmma_n64_rs(acc, p[kk], v_desc + desc_rows(16 * kk));
        wg_commit();
        wg_wait<0>();
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

// The wgmma kernels (forward and backward) can run where their sm_90a code exists: a cc 9.0 device whose loaded
// image has it (k_wgmma_built; every file of the library is compiled for the same targets). Checked once per
// device (cudaFuncGetAttributes enqueues nothing: safe while a stream is being captured).
bool swa_wgmma_device_ok() {
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
  return warpgroups != 0 && s.hd == wg::kHd && swa_wgmma_device_ok() ? warpgroups : 0;
}

int swa_forward_bf16_set_wgmma(int warpgroups) {
  TTT_CHECK(warpgroups == -1 || warpgroups == 0 || warpgroups == 2 || warpgroups == 3,
            "swa_forward_bf16_set_wgmma: warpgroups must be -1, 0, 2 or 3, got " << warpgroups);
  return g_wgmma_warpgroups.exchange(warpgroups, std::memory_order_relaxed);
}

}  // namespace ttt::cuda
