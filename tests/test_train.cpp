// Training: AdamW, LR schedule, clipping, gradient accumulation, checkpoints, exact resume, loss falling.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstring>

#include <cmath>
#include <filesystem>
#include <limits>
#include <sstream>
#include <omp.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/file_io.h"
#include "core/rng.h"
#include "data/tokenizer.h"
#include "data/tokens.h"
#include "model/model.h"
#include "train/checkpoint.h"
#include "train/evaluate.h"
#include "train/optimizer.h"
#include "train/schedule.h"
#include "train/trainer.h"
#include "train_test_util.h"

using namespace ttt;
namespace fs = std::filesystem;
using nlohmann::json;
using test_util::make_corpus;
using test_util::read_metrics;

namespace {
// Scratch directories of this file: ttt_test_train_<tag>_<pid>.
std::string temp_dir(const std::string& tag) { return test_util::temp_dir("train_" + tag); }
}  // namespace

namespace {

// A small model: dim 32, 2 layers, seq_len 32.
model::ModelConfig small_cfg() {
  model::ModelConfig c = model::preset("tiny");
  c.dim = 32;
  c.n_layers = 2;
  c.n_attn_heads = 2;
  c.n_mem_heads = 2;
  c.chunk = 16;
  c.window = 16;
  c.seq_len = 32;
  c.mlp_hidden = 64;
  return c;
}

// An AdamW with default settings for the parameters `p`.
train::AdamW default_adamw(const model::Params<float>& p) {
  std::vector<int64_t> sizes;
  for (auto& m : p.values) sizes.push_back(m.size());
  return train::AdamW(p.names, sizes, train::AdamWConfig{});
}

// A short run of the small LaCT model: 4 steps, checkpoints at 2 and 4, validation at the end only; fast
// enough to repeat in each of the many processes of the fault-injection test.
train::TrainOptions short_run_options(const std::string& data) {
  train::TrainOptions o;
  o.model = test_util::small_lact_config();
  o.train.data_dir = data;
  o.train.steps = 4;
  o.train.batch = 2;
  o.train.seq_len = o.model.seq_len;
  o.train.warmup = 1;
  o.train.eval_every = 0;
  o.train.eval_batches = 1;
  o.train.ckpt_every = 2;
  o.train.log_every = 100;
  return o;
}

}  // namespace

TEST(Train, AdamWMatchesHandComputedSteps) {
  // Two 1-element tensors: "lm_head.weight" (decayed) and "embed.weight" (not decayed).
  train::AdamWConfig c;
  c.beta1 = 0.9;
  c.beta2 = 0.999;
  c.eps = 1e-8;
  c.weight_decay = 0.1;
  train::AdamW opt({"lm_head.weight", "embed.weight"}, {1, 1}, c);
  std::vector<ag::Mat<double>> p = {ag::Mat<double>(1, 1, 1.0), ag::Mat<double>(1, 1, -2.0)};
  std::vector<ag::Mat<double>> g = {ag::Mat<double>(1, 1, 0.5), ag::Mat<double>(1, 1, -1.0)};
  const double lr = 0.1;
  opt.step(p, g, lr);
  // Step 1: m = 0.1 g, v = 0.001 g^2, bias-corrected m/(1-0.9) = g, v/(1-0.999) = g^2, so the update is
  // g / (|g| + eps): 0.5 / 0.50000001 and -1 / 1.00000001.
  // p0 = 1 * (1 - 0.1 * 0.1) - 0.1 * 0.5 / 0.50000001 = 0.99 - 0.099999998 = 0.890000002
  EXPECT_NEAR(p[0].data[0], 0.890000002, 1e-9);
  // p1 (no decay) = -2 - 0.1 * (-1 / 1.00000001) = -1.900000001
  EXPECT_NEAR(p[1].data[0], -1.900000001, 1e-9);
  EXPECT_NEAR(opt.m()[0][0], 0.05, 1e-9);
  EXPECT_NEAR(opt.v()[0][0], 0.00025, 1e-10);
  // Step 2 with g = (0.1, 0.2):
  //   p0: m = 0.9*0.05 + 0.1*0.1 = 0.055, v = 0.999*0.00025 + 0.001*0.01 = 0.00025975
  //       m_hat = 0.055 / 0.19 = 0.28947368, v_hat = 0.00025975 / 0.001999 = 0.12993997,
  //       update = 0.28947368 / (0.36047187 + 1e-8) = 0.80304206
  //       p0 = 0.890000002 * 0.99 - 0.1 * 0.80304206 = 0.88110000 - 0.08030421 = 0.80079579
  //   p1: m = 0.9*(-0.1) + 0.1*0.2 = -0.07, v = 0.999*0.001 + 0.001*0.04 = 0.001039
  //       m_hat = -0.07 / 0.19 = -0.36842105, v_hat = 0.001039 / 0.001999 = 0.51975988,
  //       update = -0.36842105 / 0.72094374 = -0.51102726, p1 = -1.900000001 + 0.051102726 = -1.84889728
  g = {ag::Mat<double>(1, 1, 0.1), ag::Mat<double>(1, 1, 0.2)};
  opt.step(p, g, lr);
  EXPECT_NEAR(p[0].data[0], 0.80079579, 2e-7);
  EXPECT_NEAR(p[1].data[0], -1.84889728, 2e-7);
  EXPECT_EQ(opt.steps(), 2);
}

TEST(Train, WeightDecayChoice) {
  for (const char* n : {"layers.0.wqkv", "layers.1.wo", "layers.0.mlp.w_gate", "layers.0.mlp.w_up", "layers.0.mlp.w_down",
                        "layers.0.ttt.lr.weight", "layers.0.ttt.momentum.weight", "layers.0.ttt.scale.weight",
                        "lm_head.weight"})
    EXPECT_TRUE(train::decays(n)) << n;
  for (const char* n : {"embed.weight", "layers.0.attn_norm.weight", "layers.0.mlp_norm.weight", "final_norm.weight",
                        "layers.0.ttt.lr.bias", "layers.0.ttt.q_scale", "layers.0.ttt.k_offset", "layers.0.ttt.w0",
                        "layers.0.ttt.w1", "layers.0.ttt.w2", "layers.0.ttt.o_norm.weight", "layers.0.ttt.scale.bias"})
    EXPECT_FALSE(train::decays(n)) << n;
}

TEST(Train, LrScheduleWarmupPeakEnd) {
  train::LrSchedule s{1e-3, 0.1, 10, 100};
  EXPECT_DOUBLE_EQ(s.at(0), 1e-4);      // first warmup step
  EXPECT_DOUBLE_EQ(s.at(4), 5e-4);
  EXPECT_DOUBLE_EQ(s.at(9), 1e-3);      // end of warmup: peak
  EXPECT_DOUBLE_EQ(s.at(10), 1e-3);     // cosine starts at the peak
  EXPECT_NEAR(s.at(99), 1e-4, 1e-15);   // last step: 10% of the peak
  EXPECT_NEAR(s.at(500), 1e-4, 1e-15);  // and stays there
  // Half way through the cosine: the mean of peak and floor.
  train::LrSchedule h{1e-3, 0.1, 0, 101};
  EXPECT_NEAR(h.at(50), 0.55e-3, 1e-15);
  for (int64_t i = 10; i < 99; ++i) EXPECT_GT(s.at(i), s.at(i + 1));
}

TEST(Train, GradientClippingByGlobalNorm) {
  std::vector<ag::Mat<float>> g = {ag::Mat<float>(1, 2), ag::Mat<float>(1, 1)};
  g[0].data = {3.0f, 0.0f};
  g[1].data = {4.0f};
  auto g2 = g;
  EXPECT_DOUBLE_EQ(train::clip_grad_norm(g2, 10.0), 5.0);  // below the limit: unchanged
  EXPECT_EQ(g2[0].data, g[0].data);
  EXPECT_DOUBLE_EQ(train::clip_grad_norm(g2, 0.0), 5.0);   // 0: off
  EXPECT_EQ(g2[1].data, g[1].data);
  EXPECT_DOUBLE_EQ(train::clip_grad_norm(g2, 1.0), 5.0);
  EXPECT_FLOAT_EQ(g2[0].data[0], 0.6f);
  EXPECT_FLOAT_EQ(g2[0].data[1], 0.0f);
  EXPECT_FLOAT_EQ(g2[1].data[0], 0.8f);
  EXPECT_NEAR(train::clip_grad_norm(g2, 0.0), 1.0, 1e-6);
}

TEST(Train, AccumulatingTwoMicroBatchesEqualsOneDoubleBatch) {
  model::ModelConfig c = small_cfg();
  c.n_layers = 1;
  model::Params<double> p = model::make_params<double>(c);
  model::init_params(c, p, 5);
  std::vector<int32_t> toks(500);
  Rng r(3);
  for (auto& t : toks) t = int32_t(r.below(256));
  Rng s1(7);
  model::Batch big = train::sample_batch(data::TokenSplit::view(toks, 256), 4, c.seq_len, s1);
  model::Batch a, b;
  for (model::Batch* m : {&a, &b}) {
    m->sequences = 2;
    m->len = c.seq_len;
  }
  const size_t half = size_t(2 * c.seq_len);
  a.inputs.assign(big.inputs.begin(), big.inputs.begin() + long(half));
  a.targets.assign(big.targets.begin(), big.targets.begin() + long(half));
  b.inputs.assign(big.inputs.begin() + long(half), big.inputs.end());
  b.targets.assign(big.targets.begin() + long(half), big.targets.end());
  std::vector<ag::Mat<double>> g_big, g_acc;
  const double l_big = train::accumulate_gradients(c, p, {big}, g_big);
  const double l_acc = train::accumulate_gradients(c, p, {a, b}, g_acc);
  // The reference: the model's own forward/backward over the whole batch of 4 in one pass.
  std::vector<ag::Mat<double>> g_ref;
  const double l_ref = model::forward<double>(c, p, big, &g_ref).loss;
  EXPECT_NEAR(l_big, l_ref, 1e-12);
  EXPECT_NEAR(l_acc, l_ref, 1e-12);
  ASSERT_EQ(g_ref.size(), g_acc.size());
  ASSERT_EQ(g_ref.size(), g_big.size());
  double worst = 0, worst_big = 0;
  for (size_t i = 0; i < g_ref.size(); ++i)
    for (size_t j = 0; j < g_ref[i].data.size(); ++j) {
      const double x = g_ref[i].data[j];
      worst = std::max(worst, std::abs(x - g_acc[i].data[j]) / (1e-8 + std::abs(x)));
      worst_big = std::max(worst_big, std::abs(x - g_big[i].data[j]) / (1e-8 + std::abs(x)));
    }
  EXPECT_LT(worst, 1e-7);
  EXPECT_LT(worst_big, 1e-7);
}

TEST(Train, GradientsDoNotDependOnTheThreadCount) {
  model::ModelConfig c = small_cfg();
  c.n_layers = 1;
  model::Params<float> p = model::make_params<float>(c);
  model::init_params(c, p, 8);
  std::vector<int32_t> toks(400);
  Rng r(4);
  for (auto& t : toks) t = int32_t(r.below(256));
  Rng s(2);
  const data::TokenSplit split = data::TokenSplit::view(toks, 256);
  std::vector<model::Batch> micro = {train::sample_batch(split, 3, c.seq_len, s), train::sample_batch(split, 3, c.seq_len, s)};
  const int saved = omp_get_max_threads();
  std::vector<ag::Mat<float>> g1, g2;
  omp_set_num_threads(1);
  const double l1 = train::accumulate_gradients(c, p, micro, g1);
  omp_set_num_threads(2);
  const double l2 = train::accumulate_gradients(c, p, micro, g2);
  omp_set_num_threads(saved);
  EXPECT_EQ(l1, l2);
  ASSERT_EQ(g1.size(), g2.size());
  for (size_t i = 0; i < g1.size(); ++i) EXPECT_EQ(g1[i].data, g2[i].data) << p.names[i];
}

TEST(Train, EvalOffsetsAreEvenlySpacedAndBucketsCoverTheContext) {
  auto off = train::eval_offsets(1001, 5, 100);
  EXPECT_EQ(off, (std::vector<int64_t>{0, 225, 450, 675, 900}));
  EXPECT_THROW(train::eval_offsets(50, 2, 100), Error);
  model::ModelConfig c = small_cfg();
  model::Params<float> p = model::make_params<float>(c);
  model::init_params(c, p, 1);
  std::vector<int32_t> toks(400);
  for (size_t i = 0; i < toks.size(); ++i) toks[i] = int32_t(i % 97);
  train::EvalOptions eo;
  eo.batches = 2;
  eo.batch = 2;
  eo.buckets = 8;
  eo.context = 40;  // longer than the trained seq_len
  auto r = train::evaluate(c, p, toks, eo);
  ASSERT_EQ(r.buckets.size(), 8u);
  int64_t n = 0;
  double s = 0;
  EXPECT_EQ(r.buckets.front().start, 0);
  EXPECT_EQ(r.buckets.back().end, 40);
  for (const auto& b : r.buckets) {
    n += b.tokens;
    s += b.loss * double(b.tokens);
  }
  EXPECT_EQ(n, 4 * 40);
  EXPECT_NEAR(s / double(n), r.loss, 1e-9);
  EXPECT_NEAR(r.bits_per_token, r.loss / std::log(2.0), 1e-12);
  EXPECT_NEAR(r.perplexity, std::exp(r.loss), 1e-9);
  EXPECT_TRUE(std::isnan(r.bpb)) << "no token byte table: bits per byte is not reported";
  auto r2 = train::evaluate(c, p, toks, eo);
  EXPECT_EQ(r.loss, r2.loss);  // deterministic
  EXPECT_NE(train::buckets_csv(r).find("bucket_start,bucket_end,loss,bpb,tokens\n0,5,"), std::string::npos);
}

// Bits per byte divides the scored targets' loss by the text bytes those targets cover (the byte table gives 0 to
// the separator), not by the number of tokens.
TEST(Train, BitsPerByteCountsTheBytesTheScoredTokensCover) {
  model::ModelConfig c = small_cfg();
  model::Params<float> p = model::make_params<float>(c);
  model::init_params(c, p, 1);
  std::vector<int32_t> toks(400);
  for (size_t i = 0; i < toks.size(); ++i) toks[i] = int32_t(i % 13);  // a separator (0) every 13 tokens
  train::EvalOptions eo;
  eo.batches = 2;
  eo.batch = 2;
  eo.context = 40;
  eo.token_bytes = data::make_byte_tokenizer()->token_byte_lengths();
  const train::EvalResult r = train::evaluate(c, p, toks, eo);
  uint64_t bytes = 0;
  for (int64_t o : train::eval_offsets(400, 4, 40))
    for (int64_t i = 1; i <= 40; ++i) bytes += toks[size_t(o + i)] != 0;
  ASSERT_LT(bytes, 160u);  // some targets are separators
  EXPECT_EQ(r.bytes, bytes);
  EXPECT_NEAR(r.bpb, r.loss * double(r.tokens) / std::log(2.0) / double(bytes), 1e-12);
  EXPECT_GT(r.bpb, r.bits_per_token);  // fewer bytes than tokens
  // Every id 3 bytes long: a third of the bits per token.
  eo.token_bytes.assign(256, 3);
  const train::EvalResult r3 = train::evaluate(c, p, toks, eo);
  EXPECT_NEAR(r3.bpb, r3.bits_per_token / 3, 1e-12);
  EXPECT_EQ(r3.bytes, 3u * 160u);
}

TEST(Train, CheckpointRoundTrip) {
  const std::string dir = temp_dir("ckpt");
  model::ModelConfig c = small_cfg();
  model::Params<float> p = model::make_params<float>(c);
  model::init_params(c, p, 11);
  train::AdamW opt = default_adamw(p);
  std::vector<ag::Mat<float>> g = p.values;  // any gradient
  opt.step(p.values, g, 1e-3);
  opt.step(p.values, g, 1e-3);
  train::RunState st;
  st.step = 2;
  st.tokens_seen = 1234;
  Rng r(99);
  r.normal();  // leaves a spare value in the state
  st.data_rng = r.save();
  st.train.steps = 10;
  st.train.seq_len = c.seq_len;
  st.train.lr = 1.5e-3;
  EXPECT_EQ(train::save_run_checkpoint(dir, c, p, opt, st, /*keep=*/1), dir + "/checkpoints/step-2");
  EXPECT_TRUE(file_exists(dir + "/checkpoint/state.json"));  // through the link

  auto ck = train::load_checkpoint(dir, true);  // the run directory resolves to its newest checkpoint
  EXPECT_EQ(ck.dir, dir + "/checkpoints/step-2");
  EXPECT_EQ(ck.run_dir, dir);
  EXPECT_EQ(train::load_checkpoint(dir + "/checkpoint/", true).dir, ck.dir);
  EXPECT_EQ(ck.cfg, c);
  ASSERT_TRUE(ck.has_state);
  EXPECT_EQ(ck.state.step, 2);
  EXPECT_EQ(ck.state.tokens_seen, 1234);
  EXPECT_EQ(ck.state.data_rng, st.data_rng);
  EXPECT_EQ(ck.state.train, st.train);
  for (size_t i = 0; i < p.values.size(); ++i) EXPECT_EQ(ck.params.values[i].data, p.values[i].data) << p.names[i];
  train::AdamW opt2 = default_adamw(p);
  train::load_optimizer(ck.dir, ck.params, ck.state, opt2);
  EXPECT_EQ(opt2.steps(), 2);
  EXPECT_EQ(opt2.m(), opt.m());
  EXPECT_EQ(opt2.v(), opt.v());

  // A config whose shapes disagree with the weights is reported by name.
  model::ModelConfig wrong = c;
  wrong.dim = 64;
  model::save_config(dir + "/checkpoint/config.json", wrong);
  try {
    train::load_checkpoint(dir, false);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("config expects"), std::string::npos) << e.what();
  }
  model::save_config(dir + "/checkpoint/config.json", c);
  // A state.json from another step than the weights (an interrupted save) is reported.
  st.step = 3;
  write_file_atomic(dir + "/checkpoint/state.json", train::run_state_to_json(st).dump());
  try {
    train::load_checkpoint(dir, true);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("inconsistent"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

TEST(Train, ResumeIsBitIdentical) {
  const std::string data = make_corpus("resume_data");
  const std::string base = temp_dir("resume");
  train::TrainOptions o;
  o.model = small_cfg();
  o.train.data_dir = data;
  o.train.steps = 6;
  o.train.batch = 2;
  o.train.seq_len = 32;
  o.train.lr = 3e-3;
  o.train.warmup = 2;
  o.train.eval_every = 2;
  o.train.eval_batches = 1;
  o.train.ckpt_every = 3;
  o.train.log_every = 1;
  o.train.seed = 5;

  // Uninterrupted.
  o.out_dir = base + "/full";
  auto full = train::train(o);
  EXPECT_EQ(full.step, 6);
  // Killed after step 4 (its last checkpoint is from step 3), then resumed.
  o.out_dir = base + "/split";
  o.interrupt_after = 4;
  auto part = train::train(o);
  EXPECT_TRUE(part.interrupted);
  EXPECT_EQ(part.step, 4);
  EXPECT_EQ(read_metrics(base + "/split").size(), 4u);
  train::TrainOptions r;
  r.resume = base + "/split";
  auto resumed = train::train(r);
  EXPECT_EQ(resumed.step, 6);
  EXPECT_EQ(resumed.steps_this_run, 3);

  auto a = read_metrics(base + "/full"), b = read_metrics(base + "/split");
  ASSERT_EQ(a.size(), 6u);
  ASSERT_EQ(b.size(), 6u);
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(a[i]["step"], int64_t(i + 1));
    EXPECT_EQ(b[i]["step"], int64_t(i + 1));
    EXPECT_EQ(a[i]["loss"].get<double>(), b[i]["loss"].get<double>()) << "step " << i + 1;
    EXPECT_EQ(a[i]["lr"].get<double>(), b[i]["lr"].get<double>());
    EXPECT_EQ(a[i].contains("val_loss"), b[i].contains("val_loss"));
    if (a[i].contains("val_loss")) EXPECT_EQ(a[i]["val_loss"].get<double>(), b[i]["val_loss"].get<double>());
  }
  EXPECT_TRUE(a[5].contains("val_bpb"));
  EXPECT_EQ(full.val_loss, resumed.val_loss);
  EXPECT_EQ(read_file(base + "/full/checkpoint/model.safetensors"), read_file(base + "/split/checkpoint/model.safetensors"));
  EXPECT_EQ(read_file(base + "/full/checkpoint/optimizer.safetensors"),
            read_file(base + "/split/checkpoint/optimizer.safetensors"));
  auto sa = json::parse(read_file(base + "/full/checkpoint/state.json"));
  auto sb = json::parse(read_file(base + "/split/checkpoint/state.json"));
  EXPECT_EQ(sa["data_rng"], sb["data_rng"]);
  EXPECT_EQ(sa["tokens_seen"], sb["tokens_seen"]);
  // The run directory has the model + train config.
  auto rc = json::parse(read_file(base + "/full/config.json"));
  EXPECT_TRUE(rc.contains("model") && rc.contains("train"));
  // Starting a new run over an existing one is refused.
  o.out_dir = base + "/full";
  o.interrupt_after = 0;
  EXPECT_THROW(train::train(o), Error);
  fs::remove_all(base);
  fs::remove_all(data);
}

TEST(Train, LossFallsOnASyntheticCorpus) {
  const std::string data = make_corpus("fall_data");
  const std::string out = temp_dir("fall");
  train::TrainOptions o;
  o.model = small_cfg();
  o.model.n_layers = 1;
  o.train.data_dir = data;
  o.train.steps = 40;
  o.train.batch = 4;
  o.train.seq_len = 32;
  o.train.lr = 1e-2;
  o.train.warmup = 4;
  o.train.eval_every = 0;
  o.train.eval_batches = 2;
  o.train.ckpt_every = 0;
  o.out_dir = out + "/run";
  auto res = train::train(o);
  auto m = read_metrics(out + "/run");
  ASSERT_EQ(m.size(), 40u);
  const double first = (m[0]["loss"].get<double>() + m[1]["loss"].get<double>()) / 2;
  const double last = (m[38]["loss"].get<double>() + m[39]["loss"].get<double>()) / 2;
  EXPECT_GT(first, 5.0);  // ~ln 256 at init
  EXPECT_LT(last, first - 2.0) << "first " << first << " last " << last;
  EXPECT_LT(res.val_bpb, 4.0);
  EXPECT_TRUE(m[39].contains("val_bpb"));
  fs::remove_all(out);
  fs::remove_all(data);
}

// TNT stage 2: a stage-1 run, then a fine-tune with smaller local chunks that trains only the local
// memories' own parameters; every frozen element is bit-identical afterwards.
TEST(Train, Stage2FreezesAllButTheLocalMemories) {
  const std::string data = make_corpus("stage2_data");
  const std::string base = temp_dir("stage2");
  model::ModelConfig cfg = test_util::small_tnt_config();
  train::TrainOptions o;
  o.model = cfg;
  o.train.data_dir = data;
  o.train.steps = 40;
  o.train.batch = 2;
  o.train.seq_len = 32;
  o.train.eval_every = 0;
  o.train.eval_batches = 1;
  o.train.ckpt_every = 0;
  o.train.log_every = 100;
  o.out_dir = base + "/stage1";
  auto s1 = train::train(o);
  ASSERT_EQ(s1.step, 40);

  train::TrainOptions o2;
  o2.train = o.train;
  o2.train.steps = 0;  // default budget: 5% of stage 1 = 2 steps
  o2.train.data_dir = "";
  o2.stage2_from = base + "/stage1";
  o2.stage2_local_chunks = {1, 2};
  o2.out_dir = base + "/stage2";
  auto s2 = train::train(o2);
  EXPECT_EQ(s2.step, 2);
  EXPECT_EQ(s2.model.local_chunks, (std::vector<int64_t>{1, 2}));

  auto before = train::load_checkpoint(base + "/stage1", true);
  auto after = train::load_checkpoint(base + "/stage2", true);
  EXPECT_EQ(after.state.train.stage, 2);
  EXPECT_EQ(after.cfg.local_chunks, (std::vector<int64_t>{1, 2}));
  auto mask = train::trainable_mask(after.cfg, after.params, 2);
  ASSERT_EQ(mask.size(), before.params.values.size());
  int64_t frozen = 0, trainable = 0, changed = 0;
  for (size_t i = 0; i < mask.size(); ++i)
    for (size_t j = 0; j < mask[i].size(); ++j) {
      const float a = before.params.values[i].data[j], b = after.params.values[i].data[j];
      if (!mask[i][j]) {
        ++frozen;
        EXPECT_EQ(std::memcmp(&a, &b, sizeof(float)), 0) << before.params.names[i] << "[" << j << "] changed";
      } else {
        ++trainable;
        changed += a != b;
      }
    }
  EXPECT_GT(frozen, 0);
  EXPECT_GT(trainable, 0);
  EXPECT_GT(changed, trainable / 2) << "stage 2 should move the local memories' parameters";
  // The trainable set is exactly the local memories' weights and their gate columns.
  for (size_t i = 0; i < mask.size(); ++i) {
    const std::string& n = before.params.names[i];
    const bool any = std::count(mask[i].begin(), mask[i].end(), 1) > 0;
    const bool expect_any = n.find("ttt.local.") != std::string::npos || n.find("ttt.lr.") != std::string::npos ||
                            n.find("ttt.momentum.") != std::string::npos || n.find("ttt.decay.") != std::string::npos;
    EXPECT_EQ(any, expect_any) << n;
  }
  // A chunk list that does not match the number of local memories is refused.
  train::TrainOptions bad = o2;
  bad.out_dir = base + "/bad";
  bad.stage2_local_chunks = {1};
  EXPECT_THROW(train::train(bad), Error);  // wrong number of local chunk sizes
  fs::remove_all(base);
}

TEST(Train, ClipMustNotBeNegative) {
  train::TrainConfig c;
  c.clip = 0;  // off
  EXPECT_NO_THROW(train::validate(c));
  c.clip = -1;
  EXPECT_THROW(train::validate(c), Error);
}

// A run whose weights overflow fails with a clear error and writes no checkpoint of non-finite weights.
TEST(Train, DivergenceIsAnErrorWithoutACheckpoint) {
  const std::string data = make_corpus("diverge_data");
  const std::string base = temp_dir("diverge");
  train::TrainOptions o = short_run_options(data);
  o.train.lr = 3e38;  // the first AdamW step moves every weight by ~lr
  o.train.warmup = 0;
  o.train.weight_decay = 0;
  // A run of one step, validated at its end; a longer one validated and saved at every step.
  for (int64_t ckpt_every : {0, 1}) {
    o.train.steps = ckpt_every == 0 ? 1 : 3;
    o.train.ckpt_every = ckpt_every;
    o.train.eval_every = ckpt_every;
    o.out_dir = base + "/run" + std::to_string(ckpt_every);
    try {
      train::train(o);
      ADD_FAILURE() << "a diverged run succeeded (ckpt_every " << ckpt_every << ")";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("non-finite"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("--lr"), std::string::npos) << e.what();
    }
    EXPECT_THROW(train::load_checkpoint(o.out_dir, false), Error) << "a checkpoint was written (ckpt_every " << ckpt_every << ")";
  }
  fs::remove_all(base);
  fs::remove_all(data);
}

namespace {

// Every file and directory name under `dir` (recursively) that contains ".tmp.".
std::vector<std::string> temp_entries(const std::string& dir) {
  std::vector<std::string> found;
  for (auto it = fs::recursive_directory_iterator(dir); it != fs::recursive_directory_iterator(); ++it)
    if (it->path().filename().string().find(".tmp.") != std::string::npos) found.push_back(it->path().string());
  return found;
}

// Runs `o` in a child process whose `point`-th I/O point gets `fault`; returns the child's exit code.
int train_with_fault(const train::TrainOptions& o, int64_t point, IoFault fault) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::alarm(120);            // a hang fails the test instead of blocking it
    omp_set_num_threads(1);  // the parent's OpenMP threads do not exist in the child
    inject_io_fault(point, fault);
    try {
      train::train(o);
    } catch (const Error&) {
      ::_exit(1);
    } catch (...) {
      ::_exit(2);
    }
    ::_exit(0);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace

// A checkpoint is written as one unit: a run killed (or out of disk space) at any I/O point keeps its newest
// complete checkpoint, loses at most the steps since it, resumes bit-identically, and the next save leaves no
// temp files.
TEST(Train, CheckpointSurvivesAFaultAtEveryIoPoint) {
  const std::string data = make_corpus("fault_data");
  const std::string base = temp_dir("fault");
  train::TrainOptions o = short_run_options(data);

  // The I/O points of a run up to its first checkpoint (step 2), then of the whole run (checkpoints at 2 and 4).
  o.train.steps = 2;
  o.out_dir = base + "/first";
  inject_io_fault(0, IoFault::none);
  train::train(o);
  const int64_t first_save_points = io_points_counted();
  o.train.steps = 4;
  o.out_dir = base + "/full";
  inject_io_fault(0, IoFault::none);
  train::train(o);
  const int64_t run_points = io_points_counted();
  ASSERT_GT(run_points, first_save_points);
  std::printf("I/O points: %lld up to the first checkpoint, %lld in the run\n", (long long)first_save_points,
              (long long)run_points);
  const std::string weights_at_2 = read_file(base + "/first/checkpoint/model.safetensors");
  const std::string weights_at_4 = read_file(base + "/full/checkpoint/model.safetensors");

  for (IoFault fault : {IoFault::die, IoFault::enospc}) {
    int64_t last_step = -1;
    for (int64_t point = 1; point <= run_points; ++point) {
      const std::string tag = (fault == IoFault::die ? "die at point " : "ENOSPC at point ") + std::to_string(point);
      SCOPED_TRACE(tag);
      o.out_dir = base + "/faulty";
      const int code = train_with_fault(o, point, fault);
      ASSERT_EQ(code, fault == IoFault::die ? kIoFaultExitCode : 1);

      // The newest complete checkpoint (if any) is consistent, and no older than the last save that finished.
      int64_t step = 0;
      try {
        const train::LoadedCheckpoint ck = train::load_checkpoint(o.out_dir, /*require_state=*/true);
        step = ck.state.step;
        ASSERT_TRUE(step == 2 || step == 4) << step;
        EXPECT_EQ(read_file(ck.dir + "/model.safetensors"), step == 2 ? weights_at_2 : weights_at_4);
        train::AdamW opt = default_adamw(ck.params);
        train::load_optimizer(ck.dir, ck.params, ck.state, opt);
      } catch (const Error& e) {
        ASSERT_LE(point, first_save_points) << "no usable checkpoint after the first save completed: " << e.what();
      }
      EXPECT_GE(step, last_step) << "a later fault left an older checkpoint";
      last_step = step;

      // Continuing (or, without a checkpoint, starting over) ends bit-identical to the uninterrupted run.
      train::TrainOptions again = o;
      if (step > 0) {
        again = train::TrainOptions{};
        again.resume = o.out_dir;
      }
      const train::TrainResult r = train::train(again);
      EXPECT_EQ(r.step, 4);
      EXPECT_EQ(read_file(o.out_dir + "/checkpoint/model.safetensors"), weights_at_4);
      EXPECT_EQ(temp_entries(o.out_dir), std::vector<std::string>{});
      EXPECT_EQ(std::distance(fs::directory_iterator(o.out_dir + "/checkpoints"), fs::directory_iterator()), 1);
      fs::remove_all(o.out_dir);
    }
  }
  fs::remove_all(base);
  fs::remove_all(data);
}

// Non-finite weights are never saved, and the previous checkpoint stays.
TEST(Train, CheckpointOfNonFiniteWeightsIsRefused) {
  const std::string dir = temp_dir("nonfinite");
  model::ModelConfig c = small_cfg();
  model::Params<float> p = model::make_params<float>(c);
  model::init_params(c, p, 3);
  train::AdamW opt = default_adamw(p);
  train::RunState st;
  st.train.seq_len = c.seq_len;
  st.step = 1;
  train::save_run_checkpoint(dir, c, p, opt, st, 1);
  p.values[1].data[0] = std::numeric_limits<float>::infinity();
  st.step = 2;
  try {
    train::save_run_checkpoint(dir, c, p, opt, st, 1);
    ADD_FAILURE() << "non-finite weights were saved";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("non-finite"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(p.names[1]), std::string::npos) << e.what();
  }
  EXPECT_EQ(train::load_checkpoint(dir, true).state.step, 1);
  EXPECT_FALSE(fs::exists(dir + "/checkpoints/step-2"));
  fs::remove_all(dir);
}

// --keep-checkpoints: the newest K complete checkpoints stay (K stored with the run, changeable on resume); the
// link names the newest; an older one can be given explicitly; without the link the newest is still found.
TEST(Train, KeepsTheNewestCheckpoints) {
  const std::string data = make_corpus("keep_data");
  const std::string base = temp_dir("keep");
  train::TrainOptions o = short_run_options(data);
  o.train.steps = 5;
  o.train.ckpt_every = 1;
  o.train.keep_checkpoints = 2;
  o.out_dir = base + "/run";
  train::train(o);
  auto names = [&] {
    std::vector<std::string> n;
    for (const auto& e : fs::directory_iterator(base + "/run/checkpoints")) n.push_back(e.path().filename().string());
    std::sort(n.begin(), n.end());
    return n;
  };
  EXPECT_EQ(names(), (std::vector<std::string>{"step-4", "step-5"}));
  EXPECT_TRUE(fs::is_symlink(base + "/run/checkpoint"));
  EXPECT_EQ(fs::read_symlink(base + "/run/checkpoint").string(), "checkpoints/step-5");
  EXPECT_EQ(train::load_checkpoint(base + "/run", true).state.step, 5);
  const train::LoadedCheckpoint older = train::load_checkpoint(base + "/run/checkpoints/step-4", true);
  EXPECT_EQ(older.state.step, 4);
  EXPECT_EQ(older.run_dir, base + "/run");

  train::TrainOptions r;
  r.resume = base + "/run";
  r.steps_override = 8;
  r.keep_checkpoints_override = 3;
  train::train(r);
  EXPECT_EQ(names(), (std::vector<std::string>{"step-6", "step-7", "step-8"}));
  EXPECT_EQ(train::load_checkpoint(base + "/run", true).state.train.keep_checkpoints, 3);

  // The link lost (a save killed before its first link, or deleted): the newest complete directory is used.
  fs::remove(base + "/run/checkpoint");
  EXPECT_EQ(train::load_checkpoint(base + "/run", true).state.step, 8);
  EXPECT_EQ(train::load_checkpoint(base + "/run/checkpoint", true).state.step, 8);  // names the missing link
  fs::remove_all(base);
  fs::remove_all(data);
}

// A run saved by the previous version (a plain RUN/checkpoint/ directory, with a temp file a killed save left)
// loads, and resumes bit-identically into the current layout.
TEST(Train, EarlierVersionCheckpointDirectoryLoadsAndResumes) {
  const std::string data = make_corpus("legacy_data");
  const std::string base = temp_dir("legacy");
  train::TrainOptions o = short_run_options(data);
  o.out_dir = base + "/full";
  train::train(o);
  o.out_dir = base + "/old";
  o.interrupt_after = 3;  // its last checkpoint is step 2
  train::train(o);
  // The previous layout: the checkpoint files right in RUN/checkpoint/.
  const std::string run = base + "/old";
  fs::remove(run + "/checkpoint");
  fs::rename(run + "/checkpoints/step-2", run + "/checkpoint");
  fs::remove(run + "/checkpoints");
  write_file_atomic(run + "/checkpoint/optimizer.safetensors.tmp.999999999", "left by a killed save");

  const train::LoadedCheckpoint ck = train::load_checkpoint(run, true);
  EXPECT_EQ(ck.dir, run + "/checkpoint");
  EXPECT_EQ(ck.run_dir, run);
  EXPECT_EQ(ck.state.step, 2);
  train::TrainOptions r;
  r.resume = run;
  EXPECT_EQ(train::train(r).step, 4);
  EXPECT_EQ(read_file(run + "/checkpoint/model.safetensors"), read_file(base + "/full/checkpoint/model.safetensors"));
  EXPECT_TRUE(fs::is_symlink(run + "/checkpoint"));
  EXPECT_EQ(train::load_checkpoint(run, true).dir, run + "/checkpoints/step-4");
  EXPECT_FALSE(fs::exists(run + "/checkpoints/step-2"));  // kept: the newest 1
  EXPECT_EQ(temp_entries(run), std::vector<std::string>{});
  fs::remove_all(base);
  fs::remove_all(data);
}

TEST(Train, LossSpikeDetector) {
  train::LossSpikeDetector d;
  EXPECT_EQ(d.observe(5.0), 0.0);  // nothing to compare with yet
  for (double l : {5.2, 4.9, 4.6, 4.8}) EXPECT_EQ(d.observe(l), 0.0);
  const double avg = d.average();
  EXPECT_EQ(d.observe(avg * 1.4), 0.0);  // batch noise
  const double before = d.average();
  EXPECT_NEAR(d.observe(before * 2.0), 2.0, 1e-12);
  // The average follows the losses (decay 0.9).
  EXPECT_NEAR(d.average(), 0.9 * before + 0.1 * before * 2.0, 1e-12);
}

// A loss spike is marked on the progress line (a run at a learning rate far too high).
TEST(Train, LossSpikeIsReported) {
  const std::string data = make_corpus("spike_data");
  const std::string base = temp_dir("spike");
  train::TrainOptions o = short_run_options(data);
  o.train.steps = 40;
  o.train.ckpt_every = 0;
  o.train.lr = 1;
  o.train.warmup = 0;
  o.train.log_every = 1000;
  o.out_dir = base + "/run";
  std::ostringstream log;
  o.log = &log;
  const train::TrainResult r = train::train(o);
  EXPECT_GT(r.loss_spikes, 0) << log.str();
  EXPECT_NE(log.str().find("warning: loss spike at step"), std::string::npos) << log.str();
  EXPECT_NE(log.str().find("LOSS SPIKE"), std::string::npos) << log.str();
  fs::remove_all(base);
  fs::remove_all(data);
}

// A stop request (what the CLI's SIGINT/SIGTERM handler sets) finishes the step, saves a checkpoint even with
// ckpt_every 0, skips the validation, and the run then continues bit-identically.
TEST(Train, StopRequestSavesTheStepAndResumes) {
  const std::string data = make_corpus("stop_data");
  const std::string base = temp_dir("stop");
  train::TrainOptions o = short_run_options(data);
  o.train.ckpt_every = 0;
  o.out_dir = base + "/full";
  train::train(o);
  std::atomic<int> stop{SIGTERM};  // already set: the first step is the last
  o.out_dir = base + "/stopped";
  o.stop_signal = &stop;
  const train::TrainResult r = train::train(o);
  EXPECT_EQ(r.stop_signal, SIGTERM);
  EXPECT_EQ(r.step, 1);
  EXPECT_TRUE(std::isnan(r.val_loss));
  EXPECT_EQ(train::load_checkpoint(o.out_dir, true).state.step, 1);
  train::TrainOptions again;
  again.resume = o.out_dir;
  EXPECT_EQ(train::train(again).step, 4);
  EXPECT_EQ(read_file(o.out_dir + "/checkpoint/model.safetensors"), read_file(base + "/full/checkpoint/model.safetensors"));
  fs::remove_all(base);
  fs::remove_all(data);
}

// Issue 10 item 7: a train config whose tokens per step (batch * accum * seq_len) overflow is refused.
TEST(Train, ConfigTokensPerStepIsOverflowChecked) {
  const nlohmann::json j = {{"batch", int64_t(1) << 40}, {"accum", int64_t(1) << 20}, {"seq_len", 1 << 10}};
  try {
    train::train_config_from_json(j);
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokens per step"), std::string::npos) << e.what();
  }
  EXPECT_EQ(train::train_config_from_json({{"batch", 1 << 20}, {"accum", 1 << 20}, {"seq_len", 1 << 20}}).tokens_per_step(),
            int64_t(1) << 60);
}

// Found by fuzz_train_state: a state.json whose "format" is not a string escaped as a JSON type_error
// instead of a ttt::Error naming the file.
TEST(Train, StateWithWrongFormatTypeFailsNamingTheFile) {
  for (const char* text : {R"({"format": 5})", R"({"format": null, "version": 1})", R"({"format": ["ttt-train-state"]})"}) {
    SCOPED_TRACE(text);
    try {
      train::run_state_from_json(nlohmann::json::parse(text), "run/checkpoint/state.json");
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("run/checkpoint/state.json"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("format"), std::string::npos) << e.what();
    }
  }
}
