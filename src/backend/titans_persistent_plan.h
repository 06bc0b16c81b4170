// Host-side planning of the persistent Titans kernels (src/backend/cuda/titans_persistent.cu): whether a memory
// runs there or on the batched path (cuBLAS products + one launch per element step, titans_cuda.cu), the shared
// memory of its forward and backward blocks, where each on-chip buffer lives, and the segment length of the
// backward's recomputation. Plain host code, compiled in every build, so that the CPU tests check the planning;
// the kernels only read the plan.
//
// One thread block per item (sequence-head x shard, titans::Group) keeps the item's state on chip for the whole
// chunk loop. Its buffers, in placement priority (the first ones are touched by every phase of a chunk step):
//   forward:  W [2P], S [2P] (momentum), M [d][d] (Q-K projection), then the chunk buffers Z, Sg, DS, A, DZ [C', dh] and E, Bm [C', d]
//   backward: W [2P], dW [2P], dS [2P] (momentum; else a cotangent buffer G [2P]), M [d][d], then the chunk buffers of the
//             forward plus dA, dSg [C', dh] and dB [C', d] (dDS, dZ and dE alias dA, DS and dB: their values
//             are consumed element by element where they are produced)
// with P = d * dh and C' = min(C, the longest item). The second variant (v2, PersistentVariant) adds, after the
// states: the backward's second state buffer W' (the next state, prefetched while the current one is in use) and
// its momentum S (the segment's recomputation runs on it, then each step's S_c is copied in ahead), two
// staging buffers of the chunk rows (q, k, v, dO [C'][d] and θ, η, α [C'], copied asynchronously one chunk ahead),
// and the chunk buffers of its merged phases (the queries' Zq, Sgq, dZq and the projected q̃ rows apart from the
// keys', and dE, dDS, dZ apart from the buffers they alias in v1). A state buffer on chip is padded: W1 [dh][d+1], W2
// [d][dh+1] (padded_state_elements), so that the products X W1ᵀ and X W2ᵀ, whose threads walk a column of W,
// read distinct banks; checkpoints in global memory are unpadded [2P]. Buffers are placed in shared memory in that order while they
// fit; the rest spill to a per-item global scratch (the kernels address both through generic pointers). The
// backward reads the momentum states from global memory (the recomputed segment), so S is never on chip there.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ttt/titans_fused.h"

namespace ttt::titans {

// Which implementation runs a Titans memory on the GPU.
enum class KernelChoice { Automatic, Persistent, Batched };
// "auto" | "persistent" | "batched"; anything else is an error naming `what` (the flag or variable).
KernelChoice parse_kernel_choice(const std::string& text, const std::string& what);
const char* kernel_choice_name(KernelChoice k);
// The choice of the environment variable TTT_TITANS_KERNEL (unset or empty: Automatic): how `ttt train` and
// `ttt bench step` are forced onto either path for A/B timing.
KernelChoice kernel_choice_from_env();

// Which persistent kernels: v1, the first version (512 threads, a block barrier between any two phases: 6 per
// forward chunk step, ~22 per backward step), or v2 (256 threads, the chunk's rows staged in shared memory one
// chunk ahead by asynchronous copies, independent products merged into one phase: 4 per forward step, 10 per
// backward step including the recomputation; docs/PERF.md). Both compute the same math in the same precision.
enum class PersistentVariant { V1, V2 };
// "v1" | "v2"; anything else is an error naming `what`.
PersistentVariant parse_persistent_variant(const std::string& text, const std::string& what);
const char* persistent_variant_name(PersistentVariant v);
// v2: measured on an H200 (docs/PERF.md) 1.50x v1 on the titans87m_c8 step and 1.34x on tnt87m_l8, with the same
// parity (fp64 vs the twin 3.8e-15; v2 vs v1 fp32 2.2e-7).
inline constexpr PersistentVariant kDefaultPersistentVariant = PersistentVariant::V2;
// The environment's TTT_PERSISTENT_VARIANT (unset or empty: kDefaultPersistentVariant): A/B timing of the two.
PersistentVariant persistent_variant_from_env();

// The on-chip buffers of one block (see the header comment).
// kGradW / kGradS: the adjoints dW, dS; kCot: the cotangent G of the step (without momentum only: with it, G
// lives in dS's buffer); kQk: the Q-K projection's running sums M = Σ k kᵀ [d][d] (with Q-K projected queries;
// the backward's reverse sweep reuses it for its own sums); kDS: E W2 of the inner gradient; kGradA / kGradSg /
// kGradB: dA, dSg, dBm.
enum PersistentBuffer : int {
  kW, kS, kGradW, kGradS, kCot, kQk, kZ, kSg, kE, kBm, kDS, kA, kDZ, kGradA, kGradSg, kGradB,
  // v2 only: the staged chunk rows (two buffers, stage_elements each), the backward's next state, the queries'
  // Zq, Sgq, dZq [C', dh], dE [C', d], dDS, dZ [C', dh], and the forward's projected queries q̃ [C', d].
  kStage0, kStage1, kWnext, kZq, kSgq, kGradZq, kGradE, kGradDS, kGradZ, kQt,
  kNumBuffers
};
const char* persistent_buffer_name(int b);

struct BufferPlace {
  bool used = false;
  bool shared = false;     // in shared memory, else in the item's global scratch
  int64_t offset = 0;      // elements from the start of its region (after the scalars in shared memory)
  int64_t elements = 0;
};
struct BlockLayout {
  std::array<BufferPlace, kNumBuffers> buf{};
  // Always shared, at the start: 2 * warps doubles (block reductions), then T values: the gate means η̄, ᾱ, the
  // two block dots, the Q-K normalizer and a chunk's key squares, v2's pending momentum gate and one spare, and
  // the two row dots of every chunk row (8 + 2 C').
  size_t scalar_bytes = 0;
  size_t shared_bytes = 0;     // dynamic shared memory of the launch
  int64_t scratch_elements = 0;  // per item, global
  bool state_on_chip = false;  // every state buffer (W, S / W, dW, dS or G) in shared memory
  bool all_on_chip = false;
};

struct PersistentPlan {
  bool persistent = false;
  PersistentVariant variant = PersistentVariant::V1;
  std::string reason;       // why this path (one line; the benches and tests print it)
  int threads = 0;          // per block
  int64_t chunk_rows = 0;   // C'
  int64_t segment = 0;      // K: the backward keeps every K-th state and recomputes the others (1: none)
  BlockLayout fwd, bwd;
  // The chunk products on tensor cores: bf16 operands (rounded as they are loaded), fp32 accumulation, fp32
  // state and element steps (v2, float only; the runner sets it for `--precision bf16`); else fp32 / fp64 FMA.
  bool bf16_products = false;
};

// Elements of a padded state buffer (W1 [dh][d+1] then W2 [d][dh+1]).
inline int64_t padded_state_elements(const MemoryShape& s) { return s.dh * (s.d + 1) + s.d * (s.dh + 1); }

// The widest head (d and dh) the persistent kernels take: larger widths run the batched path.
inline constexpr int64_t kPersistentMaxWidth = 128;
// The longest chunk the automatic choice runs persistent: one block per item does the products of a chunk step on
// one SM with FMA loops, which pays only while chunk steps are latency-bound. Measured on an H200 (docs/PERF.md,
// 87M configs, d = dh = 64, bf16 steps): C = 8 persistent 2.7x the batched path (titans) and 1.6x (tnt local 8);
// C = 64 1.1x (titans) but 0.87x (tnt local 64); at the operator level with CUDA graphs C = 16 0.83x, C = 64 0.55x
// with v1. With v2 (2026-11-30, `ttt bench tnt --bh 48 --d 64 --dh 64 --T 8192`, fwd+bwd): C = 16 persistent
// 60.7 ms fp32 / 54.4 ms bf16 against the batched path's 81.2 / 80.8 ms, so C <= 16 runs persistent; C = 64 stays
// batched (persistent 41.1 ms against 21.2 ms with the batched path's tensor cores).
inline constexpr int64_t kPersistentMaxAutoChunk = 16;
// Threads per block of the persistent kernels: v1 512, v2 256 (fewer warps to wait for at each barrier; the
// products' tiles still give 128 or more threads work).
inline constexpr int kPersistentThreads = 512;
inline constexpr int kPersistentThreadsV2 = 256;
inline int persistent_threads(PersistentVariant v) {
  return v == PersistentVariant::V2 ? kPersistentThreadsV2 : kPersistentThreads;
}
// Elements of one v2 staging buffer: the rows of q, k, v, dO [C'][d], then θ, η, α [C'].
inline int64_t stage_elements(int64_t chunk_rows, int64_t d) { return 4 * chunk_rows * d + 3 * chunk_rows; }

// The backward's segment length K: s.segment when set; else 1 (the forward keeps every chunk's state, the backward
// recomputes none) when those states fit in s.persistent_state_budget_bytes (persistent_kept_state_bytes, all
// groups), else ceil(sqrt(chunks of the longest item)) (K - 1 of every K states recomputed: about one more forward).
// TTT_TITANS_SEGMENT (a positive K; unset, empty or 0: automatic) forces K where s.segment does not: A/B timing
// of kept states against segments (`ttt bench tnt`, `ttt bench step`); anything else is an error.
double persistent_kept_state_bytes(const MemoryShape& s, size_t elem_bytes);
int64_t segment_from_env();
int64_t persistent_segment(const MemoryShape& s, size_t elem_bytes);
// The plan of memory s with elements of elem_bytes (4: float, 8: double) on a device with smem_limit bytes of
// opt-in shared memory per block. Automatic picks the persistent kernels when the widths are supported, C <=
// kPersistentMaxAutoChunk, the forward block fits on chip and so does the backward's state (its chunk buffers
// may spill); Persistent forces them whenever the widths are supported (tests, A/B timing: buffers spill as
// needed); Batched never. The segment length: persistent_segment.
// variant: which kernels (the plan's layout and threads are theirs).
PersistentPlan plan_persistent(const MemoryShape& s, size_t elem_bytes, size_t smem_limit, KernelChoice choice,
                               PersistentVariant variant = kDefaultPersistentVariant);
// `--precision bf16`: a persistent plan's chunk products on tensor cores where its kernels have them (v2, 4-byte
// elements), said in the reason; elsewhere the products stay fp32 / float64 (the reason says so too). A plan
// for the batched path is left as it is (the runner puts its cuBLAS products on tensor cores itself and appends
// what ran to the reason: TitansOptions in backend/cuda/titans_cuda.h).
void use_bf16_products(PersistentPlan& plan, size_t elem_bytes);
// The global-memory buffers of the persistent path (titans_persistent.cu allocates exactly these), in elements; 0:
// not allocated. Per group of items (titans::Group): the forward's saved states (every K-th chunk boundary:
// `checkpoints` of them, W and, with momentum, S), the backward's segment slots (K states), the items' weight
// gradients, the spilled chunk buffers (plan.fwd / plan.bwd scratch per item) and the Q-K normalizers of every
// chunk (z, and its gradient); for the memory, q̃ and its gradient [B,T,d] (Q-K projected queries).
struct PersistentGroupBuffers {
  Group g;
  int64_t K = 0, checkpoints = 0;
  int64_t ckW = 0, ckS = 0, slotW = 0, slotS = 0, dW = 0, scratch_fwd = 0, scratch_bwd = 0, qk_z = 0, qk_dz = 0;
};
struct PersistentBuffers {
  std::vector<PersistentGroupBuffers> groups;
  int64_t qt = 0, dqt = 0;
  int64_t elements() const;  // their sum
};
PersistentBuffers persistent_buffers(const MemoryShape& s, const PersistentPlan& plan, bool with_grad);

// ---- a TitansRunner's device bytes (src/backend/cuda/titans_cuda.cu), on the host ---------------------------------
// Its fixed buffers: the first stage of the batched dot products (kDotSlices doubles per batch item, batch up to
// max_dot_batch(s) with gradients, else 1) and a cuBLAS workspace of its own; then the path's buffers: the batched
// Memory's (memory_workspace_elements) or the persistent kernels' (persistent_buffers).
inline constexpr int64_t kDotSlices = 128;                           // blocks per item of a batched dot's first stage
inline constexpr size_t kRunnerCublasWorkspace = size_t(32) << 20;  // bytes
// The opt-in shared memory per block that an estimate made without the device assumes: sm_90's (H100, H200).
inline constexpr size_t kDefaultSharedMemoryPerBlock = 227 * 1024;
size_t titans_runner_bytes(const MemoryShape& s, bool with_grad, size_t elem_bytes, const PersistentPlan& plan);
// A TntRunner's (src/backend/cuda/tnt_cuda.cu): one TitansRunner per memory, each planned with smem_limit and
// `choice` as the runner plans it, and with several memories each memory's output and q/k/v gradients [B,T,d]
// (tnt_branch_buffers of them), summed on the main stream.
int64_t tnt_branch_buffers(const TntShape& s, bool with_grad);  // [B,T,d] buffers per memory
// The persistent kernels' variant is the runner's default, persistent_variant_from_env().
size_t tnt_runner_bytes(const TntShape& s, bool with_grad, size_t elem_bytes, size_t smem_limit, KernelChoice choice);

// The layout alone (both directions), for the tests.
BlockLayout persistent_layout(const MemoryShape& s, size_t elem_bytes, size_t smem_limit, bool backward,
                              int threads, PersistentVariant variant = PersistentVariant::V1);

}  // namespace ttt::titans
