// Whole-model gradient checks (float64 central differences over every parameter) on tiny models.
#include <gtest/gtest.h>

#include <cmath>

#include "core/blas.h"
#include "core/rng.h"
#include "model/model.h"

using namespace ttt;
using namespace ttt::model;

namespace {

ModelConfig micro(const std::string& arch) {
  ModelConfig c = preset(arch == "lact" ? "tiny" : arch);
  c.vocab_size = 11;
  c.dim = 8;
  c.n_layers = 2;
  c.n_attn_heads = 2;
  c.n_mem_heads = 2;
  c.chunk = 3;
  c.window = 4;
  c.seq_len = 7;
  c.mlp_hidden = 12;
  c.low_rank_rank = 2;
  // Large inner rates so that the memory's gradients (momentum gates included) are far above the
  // finite-difference noise floor; at the default 0.001 they are too small to check meaningfully.
  c.lr_init = 0.3;
  c.titans_base_lr = 0.5;
  return c;
}

Batch random_batch(const ModelConfig& c, int64_t S, int64_t N, uint64_t seed) {
  Rng r(seed);
  Batch b;
  b.sequences = S;
  b.len = N;
  for (int64_t i = 0; i < S * N; ++i) {
    b.inputs.push_back(int32_t(r.below(uint64_t(c.vocab_size))));
    b.targets.push_back(int32_t(r.below(uint64_t(c.vocab_size))));
  }
  b.targets[1] = -1;  // an ignored target
  return b;
}

// Largest per-tensor relative error of the analytic gradient against central differences.
double model_grad_error(const ModelConfig& c, std::string* worst) {
  Params<double> p = make_params<double>(c);
  init_params(c, p, 3);
  // Perturb every parameter a little so that no symmetric init hides a wrong gradient.
  Rng r(9);
  for (auto& m : p.values)
    for (auto& x : m.data) x += 0.05 * r.normal();
  Batch b = random_batch(c, 2, c.seq_len, 4);
  std::vector<ag::Mat<double>> g;
  forward(c, p, b, &g);
  double worst_err = 0;
  const double h = getenv("FD_H") ? atof(getenv("FD_H")) : 1e-5;
  for (size_t i = 0; i < p.values.size(); ++i) {
    double num = 0, den = 0;
    for (size_t j = 0; j < p.values[i].data.size(); ++j) {
      double& x = p.values[i].data[j];
      const double x0 = x;
      auto at = [&](double xv) {
        x = xv;
        return forward<double>(c, p, b, nullptr).loss;
      };
      // Fourth-order central difference: truncation O(h^4), so h can be large enough that
      // round-off stays far below the smallest gradients checked here.
      const double fd = (-at(x0 + 2 * h) + 8 * at(x0 + h) - 8 * at(x0 - h) + at(x0 - 2 * h)) / (12 * h);
      x = x0;
      num += std::pow(g[i].data[j] - fd, 2);
      den += fd * fd;
    }
    // The loss is O(1); a few tensors (e.g. rate biases, whose effect passes through the scale-invariant
    // RMSNorm of the memory output) have gradients near 1e-6, where the difference quotient's round-off
    // (~1e-11) dominates. Their error is taken relative to 1e-3 instead, i.e. absolute at 1e-9.
    const double rel = std::sqrt(num) / std::max(std::sqrt(den), 1e-3);
    if (getenv("FD_H")) printf("%-32s |g|=%.3e rel=%.3e\n", p.names[i].c_str(), std::sqrt(den), rel);
    if (rel > worst_err) worst_err = rel, *worst = p.names[i];
  }
  return worst_err;
}

}  // namespace

TEST(ModelGrad, LactWholeModel) {
  std::string worst;
  EXPECT_LE(model_grad_error(micro("lact"), &worst), 1e-6) << worst;
}

TEST(ModelGrad, LactMuonPreNormLowRankVSilu) {
  ModelConfig c = micro("lact");
  c.muon = true;
  c.weight_norm = engine::WeightNorm::Pre;
  c.low_rank_init = true;
  c.v_silu = true;
  c.n_layers = 1;
  std::string worst;
  EXPECT_LE(model_grad_error(c, &worst), 1e-6) << worst;
}

TEST(ModelGrad, TitansWholeModel) {
  ModelConfig c = micro("titans");
  c.n_layers = 1;
  std::string worst;
  EXPECT_LE(model_grad_error(c, &worst), 1e-6) << worst;
}

TEST(Model, ParamCountMatchesLayoutAndLossIsNearUniformAtInit) {
  ModelConfig c = preset("tiny");
  Params<float> p = make_params<float>(c);
  EXPECT_EQ(p.count(), parameter_count(c));
  init_params(c, p, 1);
  Batch b = random_batch(c, 2, 32, 5);
  double loss = forward<float>(c, p, b, nullptr).loss;
  EXPECT_NEAR(loss, std::log(256.0), 0.3);
}

// The CPU emulation of the GPU's bf16 residual stream (BF16ActivationsEmulation): off by default and after its
// scope; on, the loss moves by bf16-rounding size (not zero, not more) and the gradient is the straight-through
// one, close to the unrounded gradient.
TEST(Model, Bf16ActivationsEmulationRoundsTheResidualStream) {
  ModelConfig c = preset("tiny");
  c.n_layers = 2;
  c.seq_len = 24;
  Params<float> p = make_params<float>(c);
  init_params(c, p, 11);
  Rng r(12);
  for (auto& m : p.values)
    for (auto& x : m.data) x += 0.02f * float(r.normal());
  const Batch b = random_batch(c, 2, c.seq_len, 13);
  std::vector<ag::Mat<float>> g_plain, g_emu;
  EXPECT_FALSE(emulate_bf16_activations());
  const double plain = forward<float>(c, p, b, &g_plain).loss;
  double emu = 0;
  {
    BF16ActivationsEmulation on;
    EXPECT_TRUE(emulate_bf16_activations());
    emu = forward<float>(c, p, b, &g_emu).loss;
  }
  EXPECT_FALSE(emulate_bf16_activations());
  EXPECT_EQ(plain, forward<float>(c, p, b, nullptr).loss);  // off again: exactly the plain model
  const double dl = std::fabs(emu - plain) / std::fabs(plain);
  EXPECT_GT(dl, 1e-7) << "the emulation changed nothing";
  EXPECT_LT(dl, 1e-2);
  double num = 0, den = 0;
  for (size_t i = 0; i < g_plain.size(); ++i)
    for (size_t j = 0; j < g_plain[i].data.size(); ++j) {
      const double e = double(g_emu[i].data[j]) - g_plain[i].data[j];
      num += e * e;
      den += double(g_plain[i].data[j]) * g_plain[i].data[j];
    }
  EXPECT_GT(den, 0.0);
  EXPECT_LT(std::sqrt(num / den), 5e-2) << "straight-through gradient far from the unrounded one";
  EXPECT_GT(num, 0.0);
}

TEST(ModelGrad, TntWholeModel) {
  ModelConfig c = micro("tnt");
  c.n_layers = 1;
  c.global_chunk = 4;
  c.local_chunks = {2, 3};
  c.shard = 5;
  std::string worst;
  EXPECT_LE(model_grad_error(c, &worst), 1e-6) << worst;
}
