// Training on the GPU end to end (src/backend/cuda/model_cuda.h through the trainer and the CUDA engine): `ttt train
// --device cuda` follows the CPU run and resumes across devices; TNT stage 2 freezes all but the local memories; the
// step engine and evaluation through it equal the GpuModel calls they replaced, bit for bit. Every test skips,
// saying why, without CUDA or a device.
#include <gtest/gtest.h>

#include "cuda_model_test_util.h"
#include "cuda_test_util.h"

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "backend/registry.h"
#include "core/file_io.h"
#include "core/rng.h"
#include "data/tokens.h"
#include "model/model.h"
#include "train/checkpoint.h"
#include "train/evaluate.h"
#include "train/optimizer.h"
#include "train/trainer.h"
#include "train_test_util.h"

#ifdef TTT_HAVE_CUDA
#include "backend/cuda/generate_cuda.h"
#include "backend/cuda/model_cuda.h"
#endif

using namespace ttt;
using namespace ttt::cuda_model_test;

#ifdef TTT_HAVE_CUDA  // without the toolkit test_cuda_model.cpp's CudaModel.SkippedWithoutCuda says so

namespace {
std::string temp_dir(const std::string& tag) { return test_util::temp_dir("cuda_model_" + tag); }
using test_util::read_metrics;
}  // namespace

// `ttt train --device cuda` end to end on a small corpus: the GPU run follows the CPU run step by step, an
// interrupted GPU run resumed on the GPU is bit-identical to an uninterrupted one, and a GPU checkpoint
// resumes on the CPU (and the CPU's on the GPU).
TEST(CudaModel, TrainsOnGpuAndResumesAcrossDevices) {
  REQUIRE_CUDA();
  const std::string data = test_util::make_corpus("cuda_model_data"), base = temp_dir("runs");
  train::TrainOptions o;
  o.model = small_config();
  o.model.vocab_size = 256;  // byte tokens
  o.model.seq_len = 32;
  o.train.data_dir = data;
  o.train.steps = 6;
  o.train.batch = 2;
  o.train.seq_len = 32;
  o.train.warmup = 2;
  o.train.eval_every = 3;
  o.train.eval_batches = 1;
  o.train.ckpt_every = 3;
  o.out_dir = base + "/cpu";
  const auto cpu = train::train(o);
  o.device = "cuda";
  o.out_dir = base + "/gpu";
  const auto gpu = train::train(o);
  ASSERT_EQ(gpu.step, 6);
  const auto mc = read_metrics(base + "/cpu"), mg = read_metrics(base + "/gpu");
  ASSERT_EQ(mc.size(), 6u);
  ASSERT_EQ(mg.size(), 6u);
  for (size_t i = 0; i < 6; ++i)  // AdamW's first steps move by ~lr sign(g): fp32 rounding shows after a few steps
    EXPECT_NEAR(mg[i]["loss"].get<double>(), mc[i]["loss"].get<double>(), 1e-3 * mc[i]["loss"].get<double>())
        << "step " << i + 1;
  EXPECT_NEAR(gpu.val_loss, cpu.val_loss, 1e-3 * cpu.val_loss);

  // Interrupted after step 4 (checkpoint of step 3), resumed on the GPU: bit-identical to the full GPU run.
  o.out_dir = base + "/gpu_split";
  o.interrupt_after = 4;
  EXPECT_TRUE(train::train(o).interrupted);
  train::TrainOptions r;
  r.resume = base + "/gpu_split";
  r.device = "cuda";
  const auto resumed = train::train(r);
  EXPECT_EQ(resumed.step, 6);
  const auto ms = read_metrics(base + "/gpu_split");
  ASSERT_EQ(ms.size(), 6u);
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(ms[i]["loss"].get<double>(), mg[i]["loss"].get<double>()) << "step " << i + 1;
  EXPECT_EQ(read_file(base + "/gpu/checkpoint/model.safetensors"),
            read_file(base + "/gpu_split/checkpoint/model.safetensors"));
  EXPECT_EQ(read_file(base + "/gpu/checkpoint/optimizer.safetensors"),
            read_file(base + "/gpu_split/checkpoint/optimizer.safetensors"));

  // Across devices: the GPU checkpoint of step 3 continues on the CPU, the CPU's on the GPU.
  for (const char* dev : {"cpu", "cuda"}) {
    const std::string run = base + "/cross_" + dev;
    o.out_dir = run;
    o.device = std::string(dev) == "cpu" ? "cuda" : "cpu";
    EXPECT_TRUE(train::train(o).interrupted);
    train::TrainOptions x;
    x.resume = run;
    x.device = dev;
    const auto done = train::train(x);
    EXPECT_EQ(done.step, 6);
    EXPECT_NEAR(done.val_loss, cpu.val_loss, 1e-3 * cpu.val_loss) << "finished on " << dev;
  }
  std::filesystem::remove_all(base);
  std::filesystem::remove_all(data);
}

// TNT stage 2 on the GPU: from a CPU stage-1 run, the GPU fine-tune keeps every frozen element bit-identical,
// moves the local memories, and follows the CPU's stage 2 (the same steps on the CPU) in loss.
TEST(CudaModel, Stage2OnGpuFreezesAllButTheLocalMemories) {
  REQUIRE_CUDA();
  const std::string data = test_util::make_corpus("cuda_model_s2data"), base = temp_dir("s2runs");
  model::ModelConfig cfg = test_util::small_tnt_config();
  cfg.vocab_size = 256;
  cfg.seq_len = 32;
  train::TrainOptions o;
  o.model = cfg;
  o.train.data_dir = data;
  o.train.steps = 20;
  o.train.batch = 2;
  o.train.seq_len = 32;
  o.train.eval_every = 0;
  o.train.eval_batches = 1;
  o.train.ckpt_every = 0;
  o.out_dir = base + "/stage1";
  ASSERT_EQ(train::train(o).step, 20);
  train::TrainOptions o2;
  o2.train = o.train;
  o2.train.steps = 4;
  o2.train.data_dir = "";
  o2.stage2_from = base + "/stage1";
  o2.stage2_local_chunks = {1, 2};
  o2.out_dir = base + "/stage2_cpu";
  const auto cpu = train::train(o2);
  o2.device = "cuda";
  o2.out_dir = base + "/stage2_gpu";
  const auto gpu = train::train(o2);
  ASSERT_EQ(gpu.step, 4);
  const auto mc = read_metrics(base + "/stage2_cpu"), mg = read_metrics(base + "/stage2_gpu");
  ASSERT_EQ(mc.size(), 4u);
  ASSERT_EQ(mg.size(), 4u);
  for (size_t i = 0; i < 4; ++i)
    EXPECT_NEAR(mg[i]["loss"].get<double>(), mc[i]["loss"].get<double>(), 1e-3 * mc[i]["loss"].get<double>())
        << "step " << i + 1;
  EXPECT_NEAR(gpu.val_loss, cpu.val_loss, 1e-3 * cpu.val_loss);
  const auto before = train::load_checkpoint(base + "/stage1", true);
  const auto after = train::load_checkpoint(base + "/stage2_gpu", true);
  const auto mask = train::trainable_mask(after.cfg, after.params, 2);
  int64_t frozen = 0, trainable = 0, changed = 0;
  for (size_t i = 0; i < mask.size(); ++i)
    for (size_t j = 0; j < mask[i].size(); ++j) {
      const float x = before.params.values[i].data[j], y = after.params.values[i].data[j];
      if (!mask[i][j]) {
        ++frozen;
        EXPECT_EQ(0, std::memcmp(&x, &y, sizeof(float))) << before.params.names[i] << "[" << j << "] changed";
      } else {
        ++trainable;
        changed += x != y;
      }
    }
  EXPECT_GT(frozen, 0);
  EXPECT_GT(changed, trainable / 2);
  std::filesystem::remove_all(base);
  std::filesystem::remove_all(data);
}

// Issue 11: the CUDA step engine (cuda/engine_cuda.cpp) takes exactly the step the trainer's GPU branch took
// before the engine existed -- zero_grad, one forward + backward per micro-batch with its share of the valid
// targets, apply_grad_mask, clip_grad_norm, adamw_step -- bit for bit, for a LaCT model and a TNT stage-2 mask,
// in fp32 and with bf16 products.
TEST(CudaModel, StepEngineEqualsTheGpuModelSequence) {
  REQUIRE_CUDA();
  struct Case {
    const char* name;
    model::ModelConfig cfg;
    int64_t stage;
    backend::Precision precision;
  };
  model::ModelConfig tnt = test_util::small_tnt_config();
  tnt.vocab_size = 37;
  tnt.seq_len = 40;  // past the shard (16) and global chunk (16) boundaries
  const Case cases[] = {{"lact fp32", small_config(), 1, backend::Precision::FP32},
                        {"lact bf16", small_config(), 1, backend::Precision::BF16},
                        {"tnt stage 2 fp32", tnt, 2, backend::Precision::FP32}};
  for (const Case& c : cases) {
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE(std::string(c.name) + " seed " + std::to_string(seed));
    const model::Params<float> start = random_params(c.cfg, seed);
    const auto mask = train::trainable_mask(c.cfg, start, c.stage);
    const std::vector<int64_t> sizes = parameter_sizes(start);
    model::Params<float> pe = start, pr = start;
    train::AdamW ae(start.names, sizes, {}), ar(start.names, sizes, {});
    ae.set_trainable(mask);
    ar.set_trainable(mask);
    backend::EngineOptions eo;
    eo.precision = c.precision;
    auto engine = backend::make_step_engine("cuda", c.cfg, eo);
    engine->attach(pe, &ae);
    cuda::GpuModelOptions go;
    go.math = c.precision;
    cuda::GpuModel gm(c.cfg, go);
    gm.upload(pr);
    gm.upload_optimizer(ar);
    for (int step = 0; step < 2; ++step) {
      const std::vector<model::Batch> micro = {random_batch(c.cfg, 2, c.cfg.seq_len, seed + 10 * step + 1, true),
                                               random_batch(c.cfg, 3, c.cfg.seq_len, seed + 10 * step + 2, false)};
      const double lr = 1e-3, clip = 0.5;
      const backend::StepResult r = engine->train_step(micro, lr, clip);
      // The trainer's GPU branch before the step engine.
      int64_t total = 0;
      std::vector<int64_t> valid;
      for (auto& b : micro) {
        valid.push_back(train::valid_targets(b));
        total += valid.back();
      }
      gm.zero_grad();
      double loss = 0;
      for (size_t i = 0; i < micro.size(); ++i) {
        const double w = double(valid[i]) / double(total);
        loss += w * gm.forward(micro[i], true, w).loss;
      }
      gm.apply_grad_mask();
      const double gnorm = gm.clip_grad_norm(clip);
      gm.adamw_step(ar, lr);
      EXPECT_TRUE(r.applied);
      EXPECT_EQ(0, std::memcmp(&r.loss, &loss, sizeof loss)) << r.loss << " vs " << loss;
      EXPECT_EQ(0, std::memcmp(&r.grad_norm, &gnorm, sizeof gnorm)) << r.grad_norm << " vs " << gnorm;
    }
    engine->sync_host(true);
    gm.download(pr);
    gm.download_optimizer(ar);
    EXPECT_EQ(ae.steps(), ar.steps());
    for (size_t i = 0; i < pr.values.size(); ++i) {
      EXPECT_EQ(0, std::memcmp(pe.values[i].data.data(), pr.values[i].data.data(), sizeof(float) * pr.values[i].data.size()))
          << pr.names[i];
      EXPECT_EQ(0, std::memcmp(ae.m()[i].data(), ar.m()[i].data(), sizeof(float) * ar.m()[i].size())) << "m." << pr.names[i];
      EXPECT_EQ(0, std::memcmp(ae.v()[i].data(), ar.v()[i].data(), sizeof(float) * ar.v()[i].size())) << "v." << pr.names[i];
    }
  }
}

// Evaluation through the CUDA engine equals the evaluation the trainer and `ttt eval` ran on the GPU before
// (evaluate_with over GpuModel::forward's token losses), bit for bit; the registry's streamer is GpuStreamer.
TEST(CudaModel, EngineEvaluationAndStreamerEqualTheGpuClasses) {
  REQUIRE_CUDA();
  const model::ModelConfig cfg = small_config();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  model::Params<float> p = random_params(cfg, seed);
  std::vector<int32_t> tokens;
  Rng r(seed + 1);
  for (int i = 0; i < 300; ++i) tokens.push_back(int32_t(r.below(uint64_t(cfg.vocab_size))));
  train::EvalOptions eo;
  eo.batches = 2;
  eo.batch = 3;
  auto engine = backend::make_step_engine("cuda", cfg);
  engine->attach(p, nullptr);
  const data::TokenSplit split = data::TokenSplit::view(tokens, uint32_t(cfg.vocab_size));
  const train::EvalResult a = train::evaluate(*engine, split, eo);
  cuda::GpuModel gm(cfg);
  gm.upload(p);
  const train::EvalResult b = train::evaluate_with(
      [&](const model::Batch& batch) { return gm.forward(batch, false, 1.0, true).token_loss; }, cfg.vocab_size,
      cfg.seq_len, split, eo);
  EXPECT_EQ(0, std::memcmp(&a.loss, &b.loss, sizeof a.loss)) << a.loss << " vs " << b.loss;

  const std::vector<int32_t> prompt(tokens.begin(), tokens.begin() + 17);
  auto streamer = backend::make_streamer("cuda", cfg, p);
  cuda::GpuStreamer direct(cfg, p);
  const ag::Mat<float> ls = streamer->feed(prompt), ld = direct.feed(prompt);
  ASSERT_EQ(ls.data.size(), ld.data.size());
  EXPECT_EQ(0, std::memcmp(ls.data.data(), ld.data.data(), sizeof(float) * ld.data.size()));
  EXPECT_EQ(streamer->state_bytes(), direct.state_bytes());
  EXPECT_GT(streamer->workspace_bytes(), 0u);
  std::string why;
  EXPECT_TRUE(backend::device_available("cuda", &why)) << why;
  EXPECT_GT(backend::device_free_memory("cuda", nullptr), 0);
}

#endif
