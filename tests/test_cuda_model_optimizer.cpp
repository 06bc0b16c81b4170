// The GPU model's gradients and optimizer on the device (src/backend/cuda/model_cuda.h): bit-reproducible gradients;
// the pieces of data parallelism on one GPU (the backward's stage hook, the sharded optimizer's ranges); the
// gradient mask of frozen elements. Every test skips, saying why, without CUDA or a device.
#include <gtest/gtest.h>

#include "cuda_model_test_util.h"
#include "cuda_test_util.h"

#include <algorithm>
#include <cstring>
#include <iterator>
#include <numeric>
#include <string>
#include <vector>

#include "core/rng.h"
#include "dist/data_parallel.h"
#include "model/model.h"
#include "train/optimizer.h"

#ifdef TTT_HAVE_CUDA
#include "backend/cuda/model_cuda.h"
#endif

using namespace ttt;
using namespace ttt::cuda_model_test;

#ifdef TTT_HAVE_CUDA  // without the toolkit test_cuda_model.cpp's CudaModel.SkippedWithoutCuda says so

TEST(CudaModel, GradientsAreBitReproducible) {
  REQUIRE_CUDA();
  const model::ModelConfig cfg = small_config();
  const uint64_t seed = fresh_seed();
  model::Params<float> p = random_params(cfg, seed);
  const model::Batch b = random_batch(cfg, 3, cfg.seq_len, seed + 7, false);
  cuda::GpuModel gm(cfg);
  gm.upload(p);
  const TrainingOutcome first = run_training_batches(gm, {b});
  expect_same_bits(first, run_training_batches(gm, {b}), p.names);
}

// GpuModelOptions::memory_graphs: every layer's memory operator replayed from CUDA graphs (captured on the first
// batch, one per layer and direction of the shared runner) gives the eager bits, batch after batch (the later ones
// replay). LaCT, Titans on the batched path (chunk 32 > the persistent kernels' automatic 16), Titans on the
// persistent kernels, TNT; fp32 and bf16 products; three layers, so that the graph cache holds several keys.
TEST(CudaModel, MemoryGraphsGiveTheEagerBits) {
  REQUIRE_CUDA();
  model::ModelConfig lact = small_config();
  lact.n_layers = 3;
  model::ModelConfig batched = with_titans_memory(lact);
  batched.chunk = 32;
  batched.seq_len = 70;
  const model::ModelConfig persistent = with_titans_memory(lact), tnt = with_small_tnt(lact);
  const std::pair<const char*, model::ModelConfig> archs[] = {
      {"lact", lact}, {"titans batched", batched}, {"titans persistent", persistent}, {"tnt", tnt}};
  for (const auto& [arch, cfg] : archs)
    for (const cuda::MathMode math : {cuda::MathMode::FP32, cuda::MathMode::BF16}) {
      const uint64_t seed = fresh_seed();
      SCOPED_TRACE(std::string(arch) + " " + cuda::math_mode_name(math) + " (seed " + std::to_string(seed) + ")");
      const model::Params<float> p = random_params(cfg, seed);
      const std::vector<std::vector<model::Batch>> rounds = {
          {random_batch(cfg, 2, cfg.seq_len, seed + 3, false), random_batch(cfg, 2, cfg.seq_len, seed + 4, true)},
          {random_batch(cfg, 2, cfg.seq_len, seed + 5, false)},
          {random_batch(cfg, 2, cfg.seq_len, seed + 6, true)}};
      cuda::GpuModelOptions eager_opt, graph_opt;
      eager_opt.math = graph_opt.math = math;
      eager_opt.memory_graphs = false;
      graph_opt.memory_graphs = true;
      cuda::GpuModel eager(cfg, eager_opt), graphed(cfg, graph_opt);
      eager.upload(p);
      graphed.upload(p);
      for (size_t r = 0; r < std::size(rounds); ++r) {
        SCOPED_TRACE("round " + std::to_string(r));
        const TrainingOutcome want = run_training_batches(eager, rounds[r]);
        // A capture that fails falls back to the eager path with a message: then nothing here tested the graphs.
        testing::internal::CaptureStderr();
        const TrainingOutcome got = run_training_batches(graphed, rounds[r]);
        const std::string said = testing::internal::GetCapturedStderr();
        EXPECT_EQ(said.find("graph capture failed"), std::string::npos) << said;
        expect_same_bits(want, got, p.names);
      }
    }
}

// Data parallelism's hook (GpuModel::set_gradient_hook): called once per backward stage in order (the head, the
// layers from the last, the embedding), and when stage s is reported every tensor that dist::backward_stages puts at
// a stage <= s already holds its final gradient (what the bucketed all-reduce relies on); the hook changes no bit.
TEST(CudaModel, GradientHookSeesEachStageFinal) {
  REQUIRE_CUDA();
  model::ModelConfig cfg = small_config();
  cfg.n_layers = 3;
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const model::Params<float> p = random_params(cfg, seed);
  const model::Batch b = random_batch(cfg, 2, cfg.seq_len, seed + 1, false);
  const std::vector<int> stages = dist::backward_stages(p.names, cfg.n_layers);
  cuda::GpuModelOptions opt;
  opt.poison = true;
  cuda::GpuModel plain(cfg, opt), hooked(cfg, opt);
  plain.upload(p);
  hooked.upload(p);
  std::vector<int> seen;
  std::vector<std::vector<ag::Mat<float>>> snapshots;
  hooked.set_gradient_hook([&](int stage) {
    seen.push_back(stage);
    snapshots.emplace_back();
    hooked.download_grads(snapshots.back());  // waits for the default stream's work so far
  });
  plain.zero_grad();
  hooked.zero_grad();
  const double loss_plain = plain.forward(b, true).loss, loss_hooked = hooked.forward(b, true).loss;
  EXPECT_EQ(loss_plain, loss_hooked);
  std::vector<ag::Mat<float>> final_plain, final_hooked;
  plain.download_grads(final_plain);
  hooked.download_grads(final_hooked);
  std::vector<int> want(size_t(cfg.n_layers + 2));
  for (size_t s = 0; s < want.size(); ++s) want[s] = int(s);
  ASSERT_EQ(seen, want);
  for (size_t i = 0; i < p.names.size(); ++i) {
    ASSERT_EQ(0, std::memcmp(final_plain[i].data.data(), final_hooked[i].data.data(), sizeof(float) * final_plain[i].size()))
        << p.names[i];
    for (int s = stages[i]; s <= cfg.n_layers + 1; ++s)
      ASSERT_EQ(0, std::memcmp(snapshots[size_t(s)][i].data.data(), final_hooked[i].data.data(),
                               sizeof(float) * final_hooked[i].size()))
          << p.names[i] << " (stage " << stages[i] << ") is not final when stage " << s << " is reported";
  }
  // The snapshots can tell: the embedding's gradient is still zero when the head is reported.
  const size_t embed = size_t(std::find(p.names.begin(), p.names.end(), "embed.weight") - p.names.begin());
  ASSERT_LT(embed, p.names.size());
  EXPECT_NE(0, std::memcmp(snapshots[0][embed].data.data(), final_hooked[embed].data.data(),
                           sizeof(float) * final_hooked[embed].size()));
}

// The pieces of the GPU's sharded optimizer on one GPU: two models owning [0, k) and [k, total) of the flat arrays
// (k inside a tensor; one with its arrays padded) compose, bit for bit, the whole model's masked AdamW steps, and
// their slices' sums of squares add up to the whole gradient's.
TEST(CudaModel, OptimizerRangesComposeTheWholeStep) {
  REQUIRE_CUDA();
  const model::ModelConfig cfg = small_config();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const model::Params<float> p = random_params(cfg, seed);
  const std::vector<int64_t> sizes = parameter_sizes(p);
  const int64_t total = std::accumulate(sizes.begin(), sizes.end(), int64_t(0));
  const int64_t k = sizes[0] + sizes[1] + sizes[2] / 2;  // inside tensor 2
  cuda::GpuModel whole(cfg), first(cfg), second(cfg);
  first.pad_flat_arrays(total + 7);
  first.set_optimizer_range(0, k);
  second.set_optimizer_range(k, total);
  std::vector<train::AdamW> adams;
  for (int i = 0; i < 3; ++i) adams.emplace_back(p.names, sizes, train::AdamWConfig{});
  std::vector<std::vector<uint8_t>> mask(p.values.size());
  mask[2].assign(size_t(sizes[2]), 1);
  for (size_t j = 0; j < mask[2].size(); j += 3) mask[2][j] = 0;  // frozen elements on both sides of k
  for (auto& a : adams) a.set_trainable(mask);
  cuda::GpuModel* models[3] = {&whole, &first, &second};
  for (int i = 0; i < 3; ++i) {
    models[i]->upload(p);
    models[i]->upload_optimizer(adams[size_t(i)]);
  }
  for (int step = 0; step < 2; ++step) {
    const model::Batch b = random_batch(cfg, 2, cfg.seq_len, seed + 10 + uint64_t(step), false);
    double sums[3] = {0, 0, 0};
    for (int i = 0; i < 3; ++i) {
      models[i]->zero_grad();
      models[i]->forward(b, true);
      models[i]->apply_grad_mask();
      sums[i] = i == 0 ? models[i]->grad_sum_squares(0, total) : models[i]->grad_sum_squares(i == 1 ? 0 : k, i == 1 ? k : total);
      models[i]->adamw_step(adams[size_t(i)], 1e-2);
    }
    EXPECT_NEAR(sums[1] + sums[2], sums[0], 1e-12 * sums[0]) << "step " << step;
    // The all-gather of ZeRO-1: each half gets the other's updated slice before the next step's forward.
    model::Params<float> a, b2;
    first.download(a);
    second.download(b2);
    int64_t base = 0;
    for (size_t t = 0; t < a.values.size(); ++t) {
      for (int64_t j = 0; j < a.values[t].size(); ++j)
        if (base + j >= k) a.values[t].data[size_t(j)] = b2.values[t].data[size_t(j)];
      base += a.values[t].size();
    }
    first.upload(a);
    second.upload(a);
  }
  // Flat views of the weights and moments.
  auto flat = [](const std::vector<ag::Mat<float>>& m) {
    std::vector<float> out;
    for (const auto& t : m) out.insert(out.end(), t.data.begin(), t.data.end());
    return out;
  };
  auto flat_moments = [](const std::vector<std::vector<float>>& m) {
    std::vector<float> out;
    for (const auto& t : m) out.insert(out.end(), t.begin(), t.end());
    return out;
  };
  std::vector<std::vector<float>> weights, ms, vs;
  for (int i = 0; i < 3; ++i) {
    model::Params<float> q;
    models[i]->download(q);
    weights.push_back(flat(q.values));
    models[i]->download_optimizer(adams[size_t(i)]);
    ms.push_back(flat_moments(adams[size_t(i)].m()));
    vs.push_back(flat_moments(adams[size_t(i)].v()));
  }
  for (int64_t e = 0; e < total; ++e) {
    const size_t owner = e < k ? 1 : 2, at = size_t(e);
    ASSERT_EQ(0, std::memcmp(&weights[0][at], &weights[owner][at], sizeof(float))) << "weight " << e;
    ASSERT_EQ(0, std::memcmp(&ms[0][at], &ms[owner][at], sizeof(float))) << "first moment " << e;
    ASSERT_EQ(0, std::memcmp(&vs[0][at], &vs[owner][at], sizeof(float))) << "second moment " << e;
  }
  // The steps moved the weights (a comparison of unchanged weights would prove nothing).
  const std::vector<float> initial = flat(p.values);
  EXPECT_NE(0, std::memcmp(initial.data(), weights[0].data(), sizeof(float) * size_t(total)));
}

// apply_grad_mask on the device: exactly the gradient with frozen elements zeroed (a fresh random mask; some tensors
// without a mask), and a second call with a changed mask uses the new one.
TEST(CudaModel, GradientMaskZeroesExactlyTheFrozenElements) {
  REQUIRE_CUDA();
  const model::ModelConfig cfg = small_config();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const model::Params<float> p = random_params(cfg, seed);
  const model::Batch b = random_batch(cfg, 2, cfg.seq_len, seed + 1, false);
  cuda::GpuModel gm(cfg);
  gm.upload(p);
  Rng r(seed + 2);
  for (int round = 0; round < 2; ++round) {
    std::vector<std::vector<uint8_t>> mask(p.values.size());
    for (size_t i = 0; i < mask.size(); ++i) {
      if (r.below(3) == 0) continue;  // no mask: all trainable
      mask[i].resize(p.values[i].data.size());
      for (auto& m : mask[i]) m = uint8_t(r.below(2));
    }
    gm.zero_grad();
    gm.forward(b, true);
    std::vector<ag::Mat<float>> before, after;
    gm.download_grads(before);
    gm.set_trainable(mask);
    gm.apply_grad_mask();
    gm.download_grads(after);
    int64_t zeroed = 0, kept = 0;
    for (size_t i = 0; i < before.size(); ++i)
      for (size_t j = 0; j < before[i].data.size(); ++j) {
        const bool frozen = !mask[i].empty() && !mask[i][j];
        const float want = frozen ? 0.0f : before[i].data[j];
        ASSERT_EQ(0, std::memcmp(&want, &after[i].data[j], sizeof(float))) << p.names[i] << "[" << j << "]";
        zeroed += frozen && before[i].data[j] != 0.0f;
        kept += !frozen && before[i].data[j] != 0.0f;
      }
    EXPECT_GT(zeroed, 0);
    EXPECT_GT(kept, 0);
  }
  std::vector<std::vector<uint8_t>> wrong(p.values.size());
  wrong[0].assign(3, 1);
  EXPECT_THROW(gm.set_trainable(wrong), Error);
}

#endif
