// The GPU model's memory (src/backend/cuda/model_cuda.h, GpuModelOptions): bf16 activations halve the stored
// activations by exactly the bytes they should; every --recompute level (full, save-attention, none) and the LaCT
// runner's kept products give the loss and every gradient with the same bits, for the device memory that each costs
// and the memory estimate (train::estimate_memory) predicts; the estimate bounds the step engine's tracked peak.
// Every test skips, saying why, without CUDA or a device.
#include <gtest/gtest.h>

#include "cuda_model_test_util.h"
#include "cuda_test_util.h"
#include "memory_request_util.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "backend/gpu_layer_activations.h"
#include "backend/registry.h"
#include "model/model.h"
#include "train/memory_budget.h"
#include "train/optimizer.h"

#ifdef TTT_HAVE_CUDA
#include "backend/cuda/model_cuda.h"
#endif

using namespace ttt;
using namespace ttt::cuda_model_test;

#ifdef TTT_HAVE_CUDA  // without the toolkit test_cuda_model.cpp's CudaModel.SkippedWithoutCuda says so

// bf16 activations store the kept residual stream ((L + 1) rows x D) and the product-operand activations h, h2, the
// final norm's output hf (rows x D), the SwiGLU output and its inputs (gate, up) and d(mm) (rows x F) in 2 bytes instead of 4; they add a bf16 copy of the branch sum
// (rows x D; its fp32 array stays, as element-wise work space) and two fp32 rows x D arrays (the widened layer
// input and the layer output). The device memory of a training step differs by exactly that.
TEST(CudaModel, Bf16ActivationsHalveTheStoredActivations) {
  REQUIRE_CUDA();
  model::ModelConfig cfg = small_config();
  cfg.n_layers = 6;
  const uint64_t seed = fresh_seed();
  const model::Params<float> p = random_params(cfg, seed);
  const model::Batch b = random_batch(cfg, 2, cfg.seq_len, seed + 1, false);
  auto step = [&](bool act16) {
    cuda::GpuModelOptions o;
    o.math = cuda::MathMode::BF16;
    o.bf16_activations = act16;
    return run_on_fresh_model(cfg, o, p, {b});
  };
  const TrainingOutcome fp32 = step(false), bf16 = step(true);
  const double loss32 = fp32.losses[0], loss16 = bf16.losses[0];
  const int64_t with_fp32 = fp32.bytes, with_bf16 = bf16.bytes;
  const int64_t R = 2 * cfg.seq_len, D = cfg.dim, F = cfg.mlp_hidden_dim(), L = cfg.n_layers;
  // The residual stream and h, h2, sum, mm, hf in bf16 (the bf16 copy of sum and the fp32 xin/xout are extra); in
  // the backward SwiGLU's input gradients in bf16, plus the gradient operands' bf16 copy (rows x 3D bf16); the
  // MLP's gate and up products and d(mm) written in bf16 by their products (rows x F each).
  const int64_t expected = (L + 1) * R * D * 2 + (3 * D + F) * R * 2 - R * D * 2 - 2 * R * D * 4 + 2 * R * F * 2 -
                           3 * R * D * 2 + 3 * R * F * 2;
  EXPECT_EQ(with_fp32 - with_bf16, expected) << "device bytes: fp32 activations " << with_fp32 << ", bf16 " << with_bf16;
  // Both are the same model: the losses agree to bf16 rounding, and differ (the residual stream is rounded).
  EXPECT_LT(std::fabs(loss16 - loss32) / loss32, 1e-2);
  EXPECT_NE(loss16, loss32);
  std::printf("[ GPU model ] bf16 activations: %lld of %lld device bytes saved (6 layers, %lld rows)\n",
              (long long)(with_fp32 - with_bf16), (long long)with_fp32, (long long)R);
}

// --recompute save-attention (GpuModelOptions::recompute) keeps each layer's attention output and
// log-sum-exp from the forward instead of recomputing them in the backward: the attention forward is
// deterministic, so the loss and every gradient are the same bits as with the full recomputation, in fp32 and
// with bf16 products; the cost is exactly L x rows x (dim + attention heads) fp32 of device memory.
TEST(CudaModel, SavedAttentionGivesTheBitsOfTheFullRecompute) {
  REQUIRE_CUDA();
  model::ModelConfig cfg = small_config();
  cfg.n_layers = 3;
  const uint64_t seed = fresh_seed();
  const model::Params<float> p = random_params(cfg, seed);
  const model::Batch b = random_batch(cfg, 2, cfg.seq_len, seed + 3, false);
  for (const cuda::MathMode math : {cuda::MathMode::FP32, cuda::MathMode::BF16}) {
    SCOPED_TRACE(std::string(cuda::math_mode_name(math)) + " (seed " + std::to_string(seed) + ")");
    auto run = [&](bool save) {
      cuda::GpuModelOptions o;
      o.math = math;
      o.recompute = save ? backend::Recompute::SaveAttention : backend::Recompute::Full;
      o.poison = true;
      return run_on_fresh_model(cfg, o, p, {b});
    };
    const TrainingOutcome full = run(false), saved = run(true);
    expect_same_bits(full, saved, p.names);
    const int64_t rows = 2 * cfg.seq_len;
    EXPECT_EQ(saved.bytes - full.bytes, cfg.n_layers * rows * (cfg.dim + cfg.n_attn_heads) * 4);
  }
}

// With bf16 products a training batch rounds the product weights into bf16 copies once (weight_copies in
// model_cuda_impl.h; TTT_WEIGHT_COPIES=0 turns them off, and Blas rounds each weight before each product): the same
// bf16 values in the same products, so the loss and every gradient are the same bits with and without, for LaCT and
// Titans (whose decay gate is a product weight too), with bf16 or fp32 activations, at every --recompute level, over
// two micro-batches. The copies follow the parameters: after new parameters are uploaded, a training batch and a
// forward-only batch on the same model give the bits of a model that never had copies.
TEST(CudaModel, WeightCopiesGiveTheBitsOfRoundingPerProduct) {
  REQUIRE_CUDA();
  model::ModelConfig lact = small_config();
  lact.n_layers = 3;
  model::ModelConfig titans = with_titans_memory(lact);
  titans.momentum = titans.decay = true;
  const std::pair<const char*, model::ModelConfig> configs[] = {{"lact", lact}, {"titans", titans}};
  int compared = 0;
  for (const auto& [name, cfg] : configs)
    for (const bool act16 : {false, true})
      for (const backend::Recompute level :
           {backend::Recompute::Full, backend::Recompute::SaveAttention, backend::Recompute::None}) {
        const uint64_t seed = fresh_seed();
        SCOPED_TRACE(std::string(name) + (act16 ? " bf16" : " fp32") + " activations --recompute " +
                     backend::recompute_name(level) + " (seed " + std::to_string(seed) + ")");
        const model::Params<float> p = random_params(cfg, seed), p2 = random_params(cfg, seed + 9);
        const std::vector<model::Batch> micro = {random_batch(cfg, 2, cfg.seq_len, seed + 3, false),
                                                 random_batch(cfg, 2, cfg.seq_len, seed + 4, true)};
        cuda::GpuModelOptions o;
        o.math = cuda::MathMode::BF16;
        o.bf16_activations = act16;
        o.recompute = level;
        o.poison = true;
        ::setenv("TTT_WEIGHT_COPIES", "0", 1);
        const TrainingOutcome per_product = run_on_fresh_model(cfg, o, p, micro, 0.5);
        const TrainingOutcome per_product2 = run_on_fresh_model(cfg, o, p2, micro, 0.5);
        double eval_per_product = 0;
        {
          cuda::GpuModel gm(cfg, o);
          gm.upload(p2);
          eval_per_product = gm.forward(micro[0], false).loss;
        }
        ::unsetenv("TTT_WEIGHT_COPIES");
        cuda::GpuModel gm(cfg, o);
        gm.upload(p);
        const TrainingOutcome copies = run_training_batches(gm, micro, 0.5);
        expect_same_bits(per_product, copies, p.names);
        gm.upload(p2);
        const TrainingOutcome copies2 = run_training_batches(gm, micro, 0.5);
        expect_same_bits(per_product2, copies2, p.names);
        const double eval_copies = gm.forward(micro[0], false).loss;
        EXPECT_EQ(0, std::memcmp(&eval_per_product, &eval_copies, sizeof(double)))
            << "forward-only loss " << eval_per_product << " vs " << eval_copies;
        ++compared;
      }
  std::printf("[ GPU model ] weight copies: %d configurations, the bits of rounding per product\n", compared);
}

// The shared LaCT runner of a training batch keeps each chunk's products for the backward
// (backend::gpu_lact_keeps_products; TTT_LACT_KEEP=0 turns it off): the backward reads the very values it would
// recompute, so the loss and every gradient are the same bits with and without, at every --recompute level (none:
// the last layer's, on the shared runner; its per-layer records never keep), in fp32 and with bf16 products (bf16
// operands), with momentum and post norm or neither and pre norm, over two micro-batches. The memory it costs is
// exactly what the estimate adds for it: the kept [g|h] of q and k and V W1 (B T 5 dh product outputs: fp32, or
// bf16 alone with bf16 product outputs) less the chunk buffers that keeping replaces (B C 5 dh of the same).
TEST(CudaModel, KeptLactProductsGiveTheSameBits) {
  REQUIRE_CUDA();
  model::ModelConfig plain = small_config();
  plain.n_layers = 3;
  model::ModelConfig pre = plain;
  pre.momentum = false;
  pre.weight_norm = engine::WeightNorm::Pre;
  const std::pair<const char*, model::ModelConfig> configs[] = {{"momentum post", plain}, {"pre", pre}};
  int compared = 0;
  for (const auto& [name, cfg] : configs)
    for (const cuda::MathMode math : {cuda::MathMode::FP32, cuda::MathMode::BF16})
      for (const backend::Recompute level :
           {backend::Recompute::Full, backend::Recompute::SaveAttention, backend::Recompute::None}) {
        const uint64_t seed = fresh_seed();
        SCOPED_TRACE(std::string(name) + " " + cuda::math_mode_name(math) + " --recompute " +
                     backend::recompute_name(level) + " (seed " + std::to_string(seed) + ")");
        const model::Params<float> p = random_params(cfg, seed);
        const std::vector<model::Batch> micro = {random_batch(cfg, 2, cfg.seq_len, seed + 3, false),
                                                 random_batch(cfg, 2, cfg.seq_len, seed + 4, true)};
        TrainingOutcome outcome[2];  // recomputing, keeping
        int64_t bytes[2] = {};
        double estimated[2] = {};
        for (int keep = 0; keep < 2; ++keep) {
          if (!keep) ::setenv("TTT_LACT_KEEP", "0", 1);
          EXPECT_EQ(backend::gpu_lact_keeps_products(true), keep == 1);
          estimated[keep] =
              train::estimate_memory(cfg, test_util::gpu_training(2, cfg.seq_len, math == cuda::MathMode::BF16, level))
                  .peak();
          cuda::GpuModelOptions o;
          o.math = math;
          o.recompute = level;
          o.poison = true;
          outcome[keep] = run_on_fresh_model(cfg, o, p, micro, 0.5);
          bytes[keep] = outcome[keep].bytes;
          ::unsetenv("TTT_LACT_KEEP");
        }
        expect_same_bits(outcome[0], outcome[1], p.names);
        const lact::Shape s = backend::gpu_lact_shape(cfg, 2, cfg.seq_len);
        const int64_t C = std::min(s.chunk, s.T);
        const bool bf16_operands = math == cuda::MathMode::BF16;  // the small config has no Muon
        // Per token: [g|h] of q and k and V W1 (5 dh, product outputs: bf16 alone with bf16 product outputs).
        const int64_t out_bytes = bf16_operands && lact::bf16_outputs_from_env() ? 2 : 4;
        const int64_t per_token = 5 * s.dh * out_bytes;
        const int64_t kept = s.B * s.T * per_token, replaced = s.B * C * per_token;
        std::printf("%s %s --recompute %s: keeping the LaCT products holds %lld bytes more (by hand %lld; the "
                    "estimate %.0f)\n",
                    name, cuda::math_mode_name(math), backend::recompute_name(level),
                    (long long)(bytes[1] - bytes[0]), (long long)(kept - replaced), estimated[1] - estimated[0]);
        EXPECT_EQ(bytes[1] - bytes[0], kept - replaced);
        EXPECT_DOUBLE_EQ(estimated[1] - estimated[0], double(kept - replaced));
        ++compared;
      }
  EXPECT_EQ(compared, 12);
}

// --recompute none keeps every layer's activations and its memory operator's forward state (LaCT: a forward record
// per layer in one runner; Titans / TNT: a runner per layer),
// so the backward recomputes nothing: the same kernels on the same inputs as the full recomputation and as
// save-attention, hence the loss and every gradient the same bits at all three levels, for each memory kind (LaCT,
// Titans, TNT with local memories and shards) in fp32 and with bf16 products. Two micro-batches on one model show
// that the kept state is rewritten, not reused stale, by the next batch. Memory: level none holds at least the
// kept table (backend/gpu_layer_activations.h) for every layer but the last beyond what full holds, and the memory
// estimate's two terms of none (kept activations and the layers' runners or records) are that difference to 1%.
TEST(CudaModel, EveryRecomputeLevelGivesTheSameBits) {
  REQUIRE_CUDA();
  model::ModelConfig lact = small_config();
  lact.n_layers = 3;
  const model::ModelConfig titans = with_titans_memory(lact), tnt = with_small_tnt(lact);
  const std::pair<const char*, model::ModelConfig> archs[] = {{"lact", lact}, {"titans", titans}, {"tnt", tnt}};
  const backend::Recompute levels[] = {backend::Recompute::Full, backend::Recompute::SaveAttention,
                                       backend::Recompute::None};
  for (const auto& [arch, cfg] : archs)
    for (const cuda::MathMode math : {cuda::MathMode::FP32, cuda::MathMode::BF16}) {
      const uint64_t seed = fresh_seed();
      SCOPED_TRACE(std::string(arch) + " " + cuda::math_mode_name(math) + " (seed " + std::to_string(seed) + ")");
      const model::Params<float> p = random_params(cfg, seed);
      const std::vector<model::Batch> micro = {random_batch(cfg, 2, cfg.seq_len, seed + 3, false),
                                               random_batch(cfg, 2, cfg.seq_len, seed + 4, true)};
      TrainingOutcome outcome[3];
      int64_t bytes[3] = {};
      for (int i = 0; i < 3; ++i) {
        cuda::GpuModelOptions o;
        o.math = math;
        o.recompute = levels[i];
        o.poison = true;
        outcome[i] = run_on_fresh_model(cfg, o, p, micro, 0.5);
        bytes[i] = outcome[i].bytes;
      }
      for (int i = 1; i < 3; ++i) {
        SCOPED_TRACE(std::string("--recompute ") + backend::recompute_name(levels[i]) + " against full");
        expect_same_bits(outcome[0], outcome[i], p.names);
      }
      const bool act16 = math == cuda::MathMode::BF16;
      const double kept = backend::gpu_kept_layer_bytes(backend::gpu_layer_dims(cfg, 2, cfg.seq_len, act16));
      EXPECT_GE(double(bytes[2] - bytes[0]), double(cfg.n_layers - 1) * kept);
      train::MemoryRequest r = test_util::gpu_training(2, cfg.seq_len, act16);
      const double estimated_full = train::estimate_memory(cfg, r).peak();
      r.recompute = backend::Recompute::None;
      const double estimated_extra = train::estimate_memory(cfg, r).peak() - estimated_full;
      std::printf("%s %s: none holds %lld bytes more than full; the estimate says %.0f\n", arch,
                  cuda::math_mode_name(math), (long long)(bytes[2] - bytes[0]), estimated_extra);
      EXPECT_NEAR(double(bytes[2] - bytes[0]), estimated_extra, 0.01 * estimated_extra);
      std::printf("%s %s: device bytes full %lld, save-attention %lld, none %lld (kept activations %.0f per layer)\n",
                  arch, cuda::math_mode_name(math), (long long)bytes[0], (long long)bytes[1], (long long)bytes[2],
                  kept);
    }
}

// The memory estimate of a training step (train::estimate_memory) against the tracked peak of the step engine that
// `ttt bench step` times: at least the peak, and within 5% of it but for its allowance for untracked scratch; for
// each memory kind and Titans path (persistent at chunk 8, batched at 64; TNT's local memories the same, its global
// memory batched) at every --recompute level, fp32 and bf16.
TEST(CudaModel, MemoryEstimateBoundsTheTrackedPeak) {
  REQUIRE_CUDA();
  model::ModelConfig base = small_config();
  base.dim = 256;
  base.n_attn_heads = base.n_mem_heads = 4;  // memory heads of width 64, as the 87M configs
  base.mlp_hidden = 512;
  base.window = 64;
  base.seq_len = 2048;
  base.chunk = 64;
  std::vector<std::pair<std::string, model::ModelConfig>> configs = {{"lact", base}};
  for (int64_t chunk : {8, 64}) {
    model::ModelConfig titans = with_titans_memory(base);
    titans.momentum = titans.decay = true;
    titans.chunk = chunk;
    configs.push_back({"titans chunk " + std::to_string(chunk), titans});
    model::ModelConfig tnt = titans;
    tnt.arch = model::Arch::Tnt;
    tnt.global_chunk = 512;
    tnt.local_chunks = {chunk};
    tnt.shard = 512;
    tnt.qk_proj = tnt.use_global = true;
    configs.push_back({"tnt local " + std::to_string(chunk), tnt});
  }
  for (const auto& [name, cfg] : configs)
    for (const backend::Precision precision : {backend::Precision::FP32, backend::Precision::BF16})
      for (const backend::Recompute level :
           {backend::Recompute::Full, backend::Recompute::SaveAttention, backend::Recompute::None}) {
        SCOPED_TRACE(name + " " + backend::precision_name(precision) + " --recompute " + backend::recompute_name(level));
        backend::EngineOptions options;
        options.precision = precision;
        options.recompute = level;
        train::MemoryRequest r = test_util::gpu_training(2, cfg.seq_len, precision == backend::Precision::BF16, level);
        r.bf16_activations = options.bf16_activations();
        const train::MemoryEstimate e = train::estimate_memory(cfg, r);
        double untracked = 0;
        for (const train::MemoryTerm& t : e.peak_terms())
          if (t.what.find("untracked") != std::string::npos) untracked += t.bytes;
        const size_t before = cuda::tracked_bytes();
        double peak = 0;
        {
          const std::unique_ptr<backend::StepEngine> engine = backend::make_step_engine("cuda", cfg, options);
          model::Params<float> p = random_params(cfg, 7);
          train::AdamW adam(p.names, parameter_sizes(p), {});
          engine->attach(p, &adam);
          const std::vector<model::Batch> micro = {random_batch(cfg, 2, cfg.seq_len, 11, false)};
          engine->train_step(micro, 1e-4, 1.0);
          peak = double(cuda::tracked_peak_bytes() - before);
        }
        std::printf("%s %s %s: tracked peak %.0f, estimate %.0f (%.0f untracked allowance)\n", name.c_str(),
                    backend::precision_name(precision), backend::recompute_name(level), peak, e.peak(), untracked);
        EXPECT_GE(e.peak(), peak);
        EXPECT_LE(e.peak() - untracked, 1.05 * peak);
      }
}

#endif
