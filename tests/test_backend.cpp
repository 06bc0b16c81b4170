// The execution interface (src/backend): the CPU step engine computes exactly what the trainer's composition
// computed before it existed (accumulate_gradients, the trainable mask, clip_grad_norm, AdamW::step: bit for
// bit, stage 2 masks included); evaluation through an engine equals the CPU evaluate; the registry's streamer
// equals StreamingModel; the registry refuses unknown devices and devices missing from the build or the machine
// with a clear message; precision text is parsed once, naming the flag.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "backend/registry.h"
#include "core/rng.h"
#include "infer/generate.h"
#include "infer/stream.h"
#include "model/model.h"
#include "train/evaluate.h"
#include "train/optimizer.h"
#include "train/trainer.h"
#include "train_test_util.h"

using namespace ttt;

namespace {

train::AdamW adamw_for(const model::Params<float>& p, const std::vector<std::vector<uint8_t>>& mask) {
  std::vector<int64_t> sizes;
  for (auto& m : p.values) sizes.push_back(m.size());
  train::AdamWConfig c;
  c.weight_decay = 0.1;
  train::AdamW a(p.names, sizes, c);
  a.set_trainable(mask);
  return a;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), sizeof(float) * a.size()) == 0;
}

// Three steps through the engine and three through the composition the trainer ran before the engine existed,
// from the same weights and optimizer: every loss, norm, weight and moment bit-identical.
void expect_engine_equals_composition(const model::ModelConfig& cfg, int64_t stage, const model::Params<float>& start,
                                      double clip) {
  const std::vector<std::vector<uint8_t>> mask = train::trainable_mask(cfg, start, stage);
  model::Params<float> pe = start, pc = start;
  train::AdamW ae = adamw_for(start, mask), ac = adamw_for(start, mask);
  auto engine = backend::make_step_engine("cpu", cfg);
  engine->attach(pe, &ae);
  std::vector<ag::Mat<float>> grads;
  int clipped = 0;
  for (int step = 0; step < 3; ++step) {
    SCOPED_TRACE("step " + std::to_string(step + 1));
    const auto micro = test_util::random_micro_batches(cfg, 2, 2, 100 + uint64_t(step));
    const double lr = 1e-2 * (step + 1);
    const backend::StepResult r = engine->train_step(micro, lr, clip);
    // The trainer's CPU branch before the step engine, verbatim.
    const double loss = train::accumulate_gradients(cfg, pc, micro, grads);
    for (size_t i = 0; i < mask.size(); ++i)
      for (size_t j = 0; j < mask[i].size(); ++j)
        if (!mask[i][j]) grads[i].data[j] = 0.0f;
    const double gnorm = train::clip_grad_norm(grads, clip);
    ac.step(pc.values, grads, lr);
    clipped += gnorm > clip;
    EXPECT_TRUE(r.applied);
    EXPECT_EQ(std::memcmp(&r.loss, &loss, sizeof loss), 0) << r.loss << " vs " << loss;
    EXPECT_EQ(std::memcmp(&r.grad_norm, &gnorm, sizeof gnorm), 0) << r.grad_norm << " vs " << gnorm;
    EXPECT_EQ(ae.steps(), ac.steps());
    for (size_t i = 0; i < pc.values.size(); ++i) {
      ASSERT_TRUE(same_bits(pe.values[i].data, pc.values[i].data)) << pc.names[i];
      ASSERT_TRUE(same_bits(ae.m()[i], ac.m()[i])) << "m." << pc.names[i];
      ASSERT_TRUE(same_bits(ae.v()[i], ac.v()[i])) << "v." << pc.names[i];
    }
  }
  EXPECT_GT(clipped, 0) << "the clip never acted: the comparison did not cover it";
}

}  // namespace

TEST(Backend, CpuEngineStepEqualsTheTrainersComposition) {
  const model::ModelConfig cfg = test_util::small_lact_config();
  model::Params<float> p = model::make_params<float>(cfg);
  model::init_params(cfg, p, 3);
  expect_engine_equals_composition(cfg, 1, p, 0.05);
}

TEST(Backend, CpuEngineStepEqualsTheComposition_Stage2Mask) {
  const model::ModelConfig cfg = test_util::small_tnt_config();
  model::Params<float> p = model::make_params<float>(cfg);
  model::init_params(cfg, p, 4);
  expect_engine_equals_composition(cfg, 2, p, 1e-3);  // only the local memories' gradients: smaller
}

// A non-finite loss ends the step before the gradient norm and the optimizer: nothing changes.
TEST(Backend, NonFiniteLossLeavesTheStateUnchanged) {
  const model::ModelConfig cfg = test_util::small_lact_config();
  model::Params<float> p = model::make_params<float>(cfg);
  model::init_params(cfg, p, 5);
  p.values[0].data[0] = std::numeric_limits<float>::infinity();  // an embedding row the batch uses below
  const model::Params<float> before = p;
  train::AdamW adam = adamw_for(p, {});
  auto engine = backend::make_step_engine("cpu", cfg);
  engine->attach(p, &adam);
  auto micro = test_util::random_micro_batches(cfg, 1, 1, 7);
  std::fill(micro[0].inputs.begin(), micro[0].inputs.end(), 0);
  const backend::StepResult r = engine->train_step(micro, 1e-2, 1.0);
  EXPECT_FALSE(std::isfinite(r.loss));
  EXPECT_TRUE(std::isnan(r.grad_norm));
  EXPECT_FALSE(r.applied);
  EXPECT_EQ(adam.steps(), 0);
  for (size_t i = 0; i < p.values.size(); ++i) EXPECT_TRUE(same_bits(p.values[i].data, before.values[i].data)) << p.names[i];
}

TEST(Backend, TargetSharesWeighTheValidTargets) {
  const std::vector<double> s = train::target_shares({3, 0, 1});
  ASSERT_EQ(s.size(), 3u);
  EXPECT_EQ(s[0], 0.75);
  EXPECT_EQ(s[1], 0.0);
  EXPECT_EQ(s[2], 0.25);
  EXPECT_THROW(train::target_shares({0, 0}), Error);
  model::Batch b;
  b.targets = {1, -1, 0, -5, 7};
  EXPECT_EQ(train::valid_targets(b), 3);
}

// Evaluation through the engine (windows grouped per thread count) equals the CPU evaluate and the per-window
// reference (one window per call), bit for bit.
TEST(Backend, EvaluationThroughTheEngineEqualsTheCpuEvaluate) {
  const model::ModelConfig cfg = test_util::small_lact_config();
  model::Params<float> p = model::make_params<float>(cfg);
  model::init_params(cfg, p, 6);
  std::vector<int32_t> tokens(600);
  Rng r(9);
  for (auto& t : tokens) t = int32_t(r.below(256));
  train::EvalOptions eo;
  eo.batches = 3;
  eo.batch = 3;
  eo.context = cfg.seq_len;
  auto engine = backend::make_step_engine("cpu", cfg);
  engine->attach(p, nullptr);
  const data::TokenSplit split = data::TokenSplit::view(tokens, 256);
  const train::EvalResult a = train::evaluate(*engine, split, eo);
  const train::EvalResult b = train::evaluate(cfg, p, tokens, eo);
  const train::EvalResult one = train::evaluate_with(
      [&](const model::Batch& batch) { return train::cpu_token_losses(cfg, p, batch); }, cfg.vocab_size, cfg.seq_len,
      split, eo, 1);
  for (const train::EvalResult* x : {&b, &one}) {
    EXPECT_EQ(std::memcmp(&a.loss, &x->loss, sizeof a.loss), 0) << a.loss << " vs " << x->loss;
    ASSERT_EQ(a.buckets.size(), x->buckets.size());
    for (size_t k = 0; k < a.buckets.size(); ++k) EXPECT_EQ(a.buckets[k].loss, x->buckets[k].loss) << "bucket " << k;
  }
  EXPECT_EQ(a.windows, 9);
  EXPECT_TRUE(std::isfinite(a.loss));
}

// The registry's CPU streamer is StreamingModel: the same logits, and sampling on top of it gives the same tokens.
TEST(Backend, RegistryStreamerIsTheStreamingModel) {
  const model::ModelConfig cfg = test_util::small_tnt_config();
  model::Params<float> p = model::make_params<float>(cfg);
  model::init_params(cfg, p, 8);
  const std::vector<int32_t> prompt = {72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100};
  auto streamer = backend::make_streamer("cpu", cfg, p);
  infer::StreamingModel ref(cfg, p);
  EXPECT_EQ(streamer->feed(prompt).data, ref.feed(prompt).data);
  EXPECT_EQ(streamer->position(), int64_t(prompt.size()));
  EXPECT_EQ(streamer->state_bytes(), ref.state_bytes());
  EXPECT_EQ(streamer->workspace_bytes(), 0u);
  infer::SampleOptions so;
  so.seed = 3;
  auto fresh = backend::make_streamer("cpu", cfg, p);
  EXPECT_EQ(infer::generate(*fresh, prompt, 12, so), infer::generate(cfg, p, prompt, 12, so));
}

TEST(Backend, RegistryRefusesUnknownDevices) {
  const model::ModelConfig cfg = test_util::small_lact_config();
  const model::Params<float> p = model::make_params<float>(cfg);
  auto expect_refusal = [](const std::function<void()>& f, const std::vector<std::string>& words) {
    try {
      f();
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      for (const auto& w : words) EXPECT_NE(std::string(e.what()).find(w), std::string::npos) << e.what();
    }
  };
  const std::vector<std::string> words = {"--device tpu", "unknown device 'tpu'", "cpu or cuda"};
  expect_refusal([&] { backend::make_step_engine("tpu", cfg); }, words);
  expect_refusal([&] { backend::make_streamer("tpu", cfg, p); }, words);
  expect_refusal([&] { backend::operator_backends("tpu"); }, words);
  std::string why;
  EXPECT_FALSE(backend::device_available("tpu", &why));
  EXPECT_NE(why.find("cpu or cuda"), std::string::npos) << why;
  EXPECT_TRUE(backend::device_available("cpu"));
  EXPECT_TRUE(backend::is_device_name("cuda"));  // known to every build, available or not
  EXPECT_EQ(backend::device_choices(), "cpu or cuda");
  EXPECT_NE(backend::device_description("cpu").find("OpenMP threads"), std::string::npos);
  EXPECT_NE(backend::make_step_engine("cpu", cfg)->description().find(backend::device_description("cpu")),
            std::string::npos);
}

// A device this build or this machine lacks: every factory refuses it naming the reason.
TEST(Backend, RegistryRefusesAMissingDevice) {
  std::string why;
  if (backend::device_available("cuda", &why)) GTEST_SKIP() << "a CUDA device is present: this checks a machine without";
#ifdef TTT_HAVE_CUDA
  EXPECT_NE(why.find("no CUDA device"), std::string::npos) << why;
#else
  EXPECT_NE(why.find("this build has no CUDA backend"), std::string::npos) << why;
#endif
  const model::ModelConfig cfg = test_util::small_lact_config();
  const model::Params<float> p = model::make_params<float>(cfg);
  for (int which = 0; which < 3; ++which) {
    try {
      if (which == 0) backend::make_step_engine("cuda", cfg);
      if (which == 1) backend::make_streamer("cuda", cfg, p);
      if (which == 2) backend::operator_backends("cuda");
      ADD_FAILURE() << "factory " << which << " accepted a missing device";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--device cuda: " + why), std::string::npos) << e.what();
    }
  }
  EXPECT_LT(backend::device_free_memory("cuda", nullptr), 0);
}

TEST(Backend, CpuEngineRefusesReducedPrecision) {
  backend::EngineOptions o;
  o.precision = backend::Precision::BF16;
  try {
    backend::make_step_engine("cpu", test_util::small_lact_config(), o);
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--precision bf16"), std::string::npos) << e.what();
  }
}

TEST(Backend, PrecisionTextIsParsedOnce) {
  EXPECT_EQ(backend::parse_precision("fp32", "--precision"), backend::Precision::FP32);
  EXPECT_EQ(backend::parse_precision("tf32", "--precision"), backend::Precision::TF32);
  EXPECT_EQ(backend::parse_precision("bf16", "--precision"), backend::Precision::BF16);
  for (auto p : {backend::Precision::FP32, backend::Precision::TF32, backend::Precision::BF16})
    EXPECT_EQ(backend::parse_precision(backend::precision_name(p), "x"), p);
  EXPECT_EQ(backend::parse_activation_storage("fp32", "--activations"), backend::ActivationStorage::FP32);
  try {
    backend::parse_precision("fp16", "ttt train: --precision");
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "ttt train: --precision must be fp32, tf32 or bf16, got 'fp16'");
  }
  EXPECT_THROW(backend::parse_activation_storage("bf8", "--activations"), Error);
  backend::EngineOptions o;
  EXPECT_FALSE(o.bf16_activations());  // fp32 products: nothing stored in bf16
  o.precision = backend::Precision::BF16;
  EXPECT_TRUE(o.bf16_activations());
}

// --recompute's three levels, each name read back as its level; anything else is refused naming all three.
TEST(Backend, RecomputeLevelsAreParsedOnce) {
  for (auto r : {backend::Recompute::Full, backend::Recompute::SaveAttention, backend::Recompute::None})
    EXPECT_EQ(backend::parse_recompute(backend::recompute_name(r), "x"), r);
  EXPECT_EQ(backend::parse_recompute("none", "--recompute"), backend::Recompute::None);
  EXPECT_EQ(backend::EngineOptions{}.recompute, backend::Recompute::SaveAttention);
  try {
    backend::parse_recompute("some", "ttt train: --recompute");
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "ttt train: --recompute must be full, save-attention or none, got 'some'");
  }
}
