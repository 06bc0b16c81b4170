// The memory estimate of a GPU training step (train::estimate_memory, device "cuda") against the allocations the CUDA
// model makes: listed here allocation site by allocation site as backend/cuda/model_cuda.cpp, model_cuda_buffers.cpp,
// tnt_cuda.cu, titans_cuda.cu and titans_persistent.cu make them, from the host functions their sizes come from. The
// estimate is the check that refuses a run before anything is allocated, so it must be at least what the model
// allocates, and close to it (the measured case: the 87M TNT config at 131072 tokens held 41.3 GB of tracked device
// memory on an H200, which an earlier estimate put at 35.9 GB). CPU only: nothing here touches a device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "backend/context_parallel_plan.h"
#include "backend/gpu_layer_activations.h"
#include "backend/registry.h"
#include "backend/titans_persistent_plan.h"
#include "memory_request_util.h"
#include "model/config.h"
#include "train/memory_budget.h"
#include "ttt/lact_fused.h"
#include "ttt/titans_fused.h"

using namespace ttt;

namespace {

model::ModelConfig bench_config(const std::string& name) {
  return model::load_config(std::string(TTT_SOURCE_DIR) + "/bench/configs/" + name + ".json");
}

size_t smem_limit() {  // what the runners plan with: this machine's GPU, else sm_90's
  const size_t device = backend::device_shared_memory_per_block("cuda");
  return device > 0 ? device : titans::kDefaultSharedMemoryPerBlock;
}

// One TitansRunner<float> with gradients (titans_cuda.cu): its batched-dot partials and cuBLAS workspace, then the
// buffers of the path its plan picks, each an allocation of its own.
double planned_titans_runner(const titans::MemoryShape& s, bool* persistent = nullptr) {
  const titans::PersistentPlan plan = titans::plan_persistent(s, sizeof(float), smem_limit(), titans::KernelChoice::Automatic);
  if (persistent) *persistent = plan.persistent;
  double bytes = 8.0 * double(titans::max_dot_batch(s)) * double(titans::kDotSlices) +
                 double(titans::kRunnerCublasWorkspace);
  if (!plan.persistent) return bytes + 4.0 * double(titans::memory_workspace_elements(s, true));
  const titans::PersistentBuffers b = titans::persistent_buffers(s, plan, true);
  for (const titans::PersistentGroupBuffers& g : b.groups)
    for (int64_t n : {g.ckW, g.ckS, g.slotW, g.slotS, g.dW, g.scratch_fwd, g.scratch_bwd, g.qk_z, g.qk_dz})
      bytes += 4.0 * double(n);
  return bytes + 4.0 * double(b.qt + b.dqt);
}

// One TntRunner<float> with gradients (tnt_cuda.cu): a TitansRunner per memory and, with several memories, each one's
// output and q, k, v gradients [B, T, d].
double planned_tnt_runner(const titans::TntShape& s) {
  double bytes = 0;
  for (size_t m = 0; m < size_t(s.num_memories()); ++m) {
    bytes += planned_titans_runner(s.memory(m));
    if (s.num_memories() > 1) bytes += 4 * 4.0 * double(s.B * s.T * s.d);
  }
  return bytes;
}

// Everything GpuModel allocates for training steps of `batch` sequences of T tokens (bf16 products and activations),
// but the RMSNorm backward's work buffer and a few scalars (under 1 MB).
double planned_step(const model::ModelConfig& cfg, int64_t batch, int64_t T, backend::Recompute level) {
  const double P = double(model::parameter_count(cfg)), L = double(cfg.n_layers), D = double(cfg.dim);
  const double rows = double(batch) * double(T);
  const backend::GpuLayerDims dims = backend::gpu_batch_dims(cfg, batch, T, true, true);
  double bytes = 4 * 4.0 * P;                 // parameters, gradients, AdamW moments
  bytes += (L + 1) * rows * D * 2;            // xs16
  bytes += backend::gpu_kept_layer_bytes(dims) + backend::gpu_layer_scratch_bytes(dims);  // act_arrays
  bytes += backend::gpu_layer_gradient_bytes(dims) + backend::gpu_head_buffer_bytes(dims);
  bytes += rows * (4 + 4 + 8) + 3 * (rows + 1) * 4;  // ids, targets, positions; the embedding's index arrays
  const double runner = planned_tnt_runner(backend::gpu_tnt_shape(cfg, batch, T));
  bytes += runner;                            // the shared runner of the batch shape
  if (level == backend::Recompute::SaveAttention) bytes += L * rows * (D + double(cfg.n_attn_heads)) * 4;
  if (level == backend::Recompute::None)
    bytes += (L - 1) * (backend::gpu_kept_layer_bytes(backend::gpu_own_layer_dims(cfg, batch, T, true, true)) + runner);
  return bytes;
}

// The estimate's allowance for what DeviceBuffer does not track (the bf16 products' rounding scratch).
double untracked(const train::MemoryEstimate& e) {
  double bytes = 0;
  for (const train::MemoryTerm& t : e.peak_terms())
    if (t.what.find("untracked") != std::string::npos) bytes += t.bytes;
  return bytes;
}


}  // namespace

// The estimate is at least the planned allocations and, but for its allowance for untracked scratch, within 5% of
// them, for Titans (chunk 8: persistent kernels;
// 64: batched) and TNT (local chunk 8 and 64, global 2048), batch 1 and 4, 8192 and 131072 tokens, at every
// --recompute level.
TEST(MemoryBudgetGpu, EstimateBoundsThePlannedAllocations) {
  for (const char* name : {"titans87m_c8", "titans87m_c64", "tnt87m_l8", "tnt87m_l64"})
    for (int64_t batch : {1, 4})
      for (int64_t T : {8192, 131072})
        for (backend::Recompute level :
             {backend::Recompute::Full, backend::Recompute::SaveAttention, backend::Recompute::None}) {
          SCOPED_TRACE(std::string(name) + " batch " + std::to_string(batch) + " T " + std::to_string(T) +
                       " --recompute " + backend::recompute_name(level));
          model::ModelConfig cfg = bench_config(name);
          cfg.seq_len = T;
          const double planned = planned_step(cfg, batch, T, level);
          const train::MemoryEstimate e = train::estimate_memory(cfg, test_util::gpu_bf16_training(batch, T, level));
          EXPECT_GE(e.peak(), planned);
          EXPECT_LE(e.peak() - untracked(e), 1.05 * planned);
        }
}

// The runners' sizes by hand for the measured case (tnt87m_l8, batch 1, 131072 tokens: B = 12 sequence-heads, d = dh
// = 64, P = 4096), so that the counting functions are pinned to the algorithm, not only to each other.
TEST(MemoryBudgetGpu, TntRunnerOfTheMeasuredCaseByHand) {
  model::ModelConfig cfg = bench_config("tnt87m_l8");
  cfg.seq_len = 131072;
  const titans::TntShape s = backend::gpu_tnt_shape(cfg, 1, 131072);
  ASSERT_EQ(s.num_memories(), 2);
  const double B = 12, T = 131072, d = 64, P2 = 2 * 64 * 64, BTd = B * T * d;
  // The local memory (chunk 8, reset every 2048): 12 x 64 = 768 items of 256 chunks, on the persistent kernels,
  // segments of 16 chunks: 16 checkpoints and 16 slots of W and S per item, the items' dW, the Q-K normalizers and
  // their gradients (a value per chunk and item), q̃ and its gradient; nothing spills at C = 8.
  bool persistent = false;
  const titans::MemoryShape local = s.memory(1);
  const double local_bytes = planned_titans_runner(local, &persistent);
  EXPECT_TRUE(persistent);
  const double items = 768, dots = items * 8;  // the dθ row dots: items x chunk rows
  EXPECT_DOUBLE_EQ(local_bytes, 8 * dots * 128 + 32.0 * (1 << 20) +
                                    4 * (4 * items * 16 * P2 + items * P2 + 2 * items * 256 + 2 * BTd));
  // The global memory (chunk 2048, never reset): 12 items of 64 chunks on the batched path, every state kept (64
  // versions of W and S fit the 2 GiB budget): one checkpoint and 64 slots of each, the gate means and their block
  // sums (η and α: 2048 / 32 = 64 blocks per chunk and item), the chunk buffers (7 + 6 of [2048, 64] per item: Z,
  // Sg, DS, A, DZ, E, Bm and the backward's dA, dSg, dDS, dZ, dB, dE), the step's D, dW, dS, G and the row dots.
  const titans::MemoryShape global = s.memory(0);
  const double global_bytes = planned_titans_runner(global, &persistent);
  EXPECT_FALSE(persistent);
  const double chunk = B * 2048 * 64;
  EXPECT_DOUBLE_EQ(global_bytes, 8 * (B * 2048) * 128 + 32.0 * (1 << 20) +
                                     4 * (2 * (1 + 64) * B * P2 + 2 * 64 * B + 2 * 64 * B * 64 + 13 * chunk +
                                          4 * B * P2 + 2 * B + 2 * B * 2048));
  // The branch: both runners and, per memory, its output and q, k, v gradients.
  EXPECT_DOUBLE_EQ(double(titans::tnt_runner_bytes(s, true, 4, smem_limit(), titans::KernelChoice::Automatic)),
                   local_bytes + global_bytes + 2 * 4 * 4 * BTd);
}

// Tracked bytes the GPU model stopped allocating after the measurements below were taken (issue 12: the q/k
// preparation fused with RoPE and the layout, the RMSNorm backward adding the residual, the memory output's norm
// in the operator's layout): the work buffers qh, kh, dqh, dkh, tmpD and o (4 bytes x rows x D each), and with bf16
// activations the head's hf stored in bf16 (2 bytes fewer per element); and (issue 12, the MLP's products stored in
// bf16) with bf16 activations 2 bytes fewer per element of the work buffers' ga, up and dmm (rows x F each) and of
// ga and up in each of `kept_layers` layers' own copies (--recompute none: every layer but the last). They were
// allocated for the whole step, so the tracked peak falls by exactly these bytes; the next measurement replaces the
// constants and this correction.
static double dropped_since_measured(int64_t rows, int64_t D, bool bf16_activations, int64_t F = 0,
                                     int64_t kept_layers = 0) {
  const double mlp_products = 2.0 * double(rows) * double(F) * double(3 + 2 * kept_layers);
  return 6.0 * 4 * double(rows) * double(D) +
         (bf16_activations ? 2.0 * double(rows) * double(D) + mlp_products : 0.0);
}

// The measured case: `ttt bench step --device cuda --config bench/configs/tnt87m_l8.json --seq-len 131072 --batch 1`
// (its defaults: fp32 products and activations, --recompute save-attention) held a tracked peak of 41.3 GB on an
// H200; the estimate must be above it and close. The estimates of the other cases (bf16; two context-parallel
// ranks at 131072 and 786432 tokens) are printed for the record.
TEST(MemoryBudgetGpu, MeasuredTntCaseIsBounded) {
  model::ModelConfig cfg = bench_config("tnt87m_l8");
  for (int64_t T : {131072, 786432})
    for (int64_t cp : {1, 2})
      for (bool bf16 : {false, true}) {
        if (T == 786432 && cp == 1) continue;
        cfg.seq_len = T;
        train::MemoryRequest r = test_util::gpu_bf16_training(1, T, backend::Recompute::SaveAttention);
        r.bf16 = r.bf16_activations = bf16;
        r.context_parallel = cp;
        const train::MemoryEstimate e = train::estimate_memory(cfg, r);
        std::printf("tnt87m_l8 T %lld, --context-parallel %lld, %s: estimate %.4f GB\n", (long long)T, (long long)cp,
                    bf16 ? "bf16" : "fp32", e.peak() / 1e9);
        for (const train::MemoryTerm& t : e.peak_terms()) std::printf("  %8.3f GB  %s\n", t.bytes / 1e9, t.what.c_str());
        if (T == 131072 && cp == 1 && !bf16) {  // 41.3 GB as reported: between 41.25 and 41.35
          const double dropped = dropped_since_measured(T, cfg.dim, false);
          EXPECT_GE(e.peak(), 41.25e9 - dropped);
          EXPECT_LE(e.peak(), 1.05 * (41.35e9 - dropped));
        }
      }
}

// LaCT, measured on an H200 (docs/PERF.md, the 760m preset, bench step --precision bf16, batch 1 of 32768): tracked
// peaks 37.49 GB with --recompute save-attention and 130.04 GB with none, when the model's shared LaCT runner did
// not keep the chunks' products yet: those runs are estimated with TTT_LACT_KEEP=0, and the default estimate (the
// runner keeping them) is that plus one record's kept products, from the sizes lact::Fused allocates.
TEST(MemoryBudgetGpu, MeasuredLactCasesAreBounded) {
  const model::ModelConfig cfg = model::preset("760m");
  const lact::Shape s = backend::gpu_lact_shape(cfg, 1, cfg.seq_len);
  const double kept =
      4.0 * double(lact::workspace_elements(s, true, 1, true) - lact::workspace_elements(s, true, 1, false)) +
      2.0 * double(lact::workspace_operand_elements(s, true, 1, true) -
                   lact::workspace_operand_elements(s, true, 1, false)) -  // bf16 shadows of the operands
      2.0 * double(lact::workspace_product_output_elements(s, true, 1, true) -
                   lact::workspace_product_output_elements(s, true, 1, false));  // bf16 product outputs
  // 0.47 GB: B T 5 dh bf16 ([g|h] of q and k, V W1) less the chunk buffers B C 5 dh (lr1 a and R are not kept: the
  // backward recomputes them beside their cotangents)
  EXPECT_DOUBLE_EQ(kept, 2.0 * double(s.B * (s.T - std::min(s.chunk, s.T)) * 5 * s.dh));
  EXPECT_GT(kept, 0.45e9);
  for (const auto& [level, measured] : {std::pair{backend::Recompute::SaveAttention, 37.49e9},
                                        std::pair{backend::Recompute::None, 130.04e9}}) {
    const double keeping = train::estimate_memory(cfg, test_util::gpu_bf16_training(1, cfg.seq_len, level)).peak();
    ::setenv("TTT_LACT_KEEP", "0", 1);
    const double estimate = train::estimate_memory(cfg, test_util::gpu_bf16_training(1, cfg.seq_len, level)).peak();
    ::unsetenv("TTT_LACT_KEEP");
    const int64_t kept_layers = level == backend::Recompute::None ? cfg.n_layers - 1 : 0;
    const double now = measured - dropped_since_measured(cfg.seq_len, cfg.dim, true, cfg.mlp_hidden_dim(), kept_layers);
    std::printf("760m --recompute %s: estimate %.3f GB (%.3f GB keeping the LaCT products), measured %.2f GB (%.3f GB "
                "with the buffers dropped since)\n",
                backend::recompute_name(level), estimate / 1e9, keeping / 1e9, measured / 1e9, now / 1e9);
    EXPECT_GE(estimate, now - 0.005e9);
    EXPECT_LE(estimate, 1.05 * now);
    EXPECT_DOUBLE_EQ(keeping - estimate, kept);
  }
}

// An absurd GPU batch is sized in doubles without wrapping: petabytes, refused, never a small number.
TEST(MemoryBudgetGpu, AbsurdBatchIsRefusedNotWrapped) {
  model::ModelConfig cfg = bench_config("tnt87m_l8");
  cfg.seq_len = 131072;
  const train::MemoryEstimate e =
      train::estimate_memory(cfg, test_util::gpu_bf16_training(int64_t(1) << 40, 131072, backend::Recompute::None));
  EXPECT_TRUE(std::isfinite(e.peak()));
  EXPECT_GT(e.peak(), 1e18);
}
