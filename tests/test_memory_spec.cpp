// The memory spec (model/memory_spec.h): one mapping from a ModelConfig to its memories (roles, chunks, resets,
// Q-K projection, gate columns, parameter names, programs) that the parameter layout, the models and the
// operators all read; and the scalar math (core/scalar_math.h) every device computes with.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "autograd/ops.h"
#include "core/scalar_math.h"
#include "model/config.h"
#include "model/memory_spec.h"
#include "ttt/program.h"
#include "ttt/titans_fused.h"
#include "ttt/tnt.h"

using namespace ttt;
using namespace ttt::model;

namespace {

ModelConfig tnt_config(bool use_global, std::vector<int64_t> locals, bool qk_proj) {
  ModelConfig c = preset("tnt");
  c.use_global = use_global;
  c.local_chunks = std::move(locals);
  c.qk_proj = qk_proj;
  return c;
}

// Every config shape the spec distinguishes.
std::map<std::string, ModelConfig> configs() {
  std::map<std::string, ModelConfig> out;
  out["tiny"] = preset("tiny");
  ModelConfig low_rank = preset("tiny");
  low_rank.low_rank_init = true;
  low_rank.low_rank_rank = 8;
  low_rank.inter_multi = 2;
  out["tiny low rank"] = low_rank;
  out["titans"] = preset("titans");
  ModelConfig titans_linear = preset("titans");
  titans_linear.memory = engine::Family::Linear;
  titans_linear.decay = false;
  out["titans linear"] = titans_linear;
  out["tnt"] = preset("tnt");
  out["tnt no global"] = tnt_config(false, {4, 8, 16}, true);
  out["tnt no qk"] = tnt_config(true, {8}, false);
  out["tnt global only"] = tnt_config(true, {}, true);
  return out;
}

}  // namespace

TEST(MemorySpec, MapsEveryMemoryOfEveryArch) {
  const int64_t H = 2;  // every preset above
  {
    const BranchSpec b = branch_spec(preset("tiny"));
    ASSERT_EQ(b.memories.size(), 1u);
    const MemorySpec& m = b.memories[0];
    EXPECT_EQ(m.role, MemoryRole::Lact);
    EXPECT_EQ(m.chunk, 64);
    EXPECT_EQ(m.shard, 0);
    EXPECT_FALSE(m.qk_proj);
    EXPECT_EQ(m.config.family, engine::Family::SwiGLU);
    EXPECT_EQ(m.config.loss, engine::Loss::Dot);
    EXPECT_EQ(m.config.weight_norm, engine::WeightNorm::Post);
    EXPECT_EQ(m.config.rate_columns, 3);
    EXPECT_EQ(m.prefix, "ttt.");
    EXPECT_EQ(b.rate_columns, 3 * H);
    EXPECT_EQ(b.gate_columns, H);
    EXPECT_TRUE(b.momentum);
    EXPECT_FALSE(b.decay);
    std::vector<std::string> names;
    for (auto& w : m.weights) names.push_back(w.name);
    EXPECT_EQ(names, (std::vector<std::string>{"ttt.w0", "ttt.w1", "ttt.w2"}));
  }
  {
    const BranchSpec b = branch_spec(preset("titans"));
    ASSERT_EQ(b.memories.size(), 1u);
    const MemorySpec& m = b.memories[0];
    EXPECT_EQ(m.role, MemoryRole::Titans);
    EXPECT_EQ(m.chunk, 16);
    EXPECT_EQ(m.shard, 0);
    EXPECT_FALSE(m.qk_proj);
    EXPECT_EQ(m.config.family, engine::Family::MLP);
    EXPECT_EQ(m.config.loss, engine::Loss::MSE);
    EXPECT_TRUE(m.config.decay);
    EXPECT_EQ(m.prefix, "ttt.");
    EXPECT_EQ(b.rate_columns, H);
    EXPECT_TRUE(b.decay);
  }
  {
    const ModelConfig c = preset("tnt");  // global 64, locals {8, 16}, shard 128, qk_proj
    const BranchSpec b = branch_spec(c);
    ASSERT_EQ(b.memories.size(), 3u);
    const std::vector<MemoryRole> roles = {MemoryRole::TntGlobal, MemoryRole::TntLocal, MemoryRole::TntLocal};
    const std::vector<int64_t> chunks = {64, 8, 16}, shards = {0, 128, 128}, locals = {-1, 0, 1};
    const std::vector<std::string> prefixes = {"ttt.global.", "ttt.local.0.", "ttt.local.1."};
    for (size_t m = 0; m < 3; ++m) {
      SCOPED_TRACE(m);
      const MemorySpec& s = b.memories[m];
      EXPECT_EQ(s.index, int64_t(m));
      EXPECT_EQ(s.role, roles[m]);
      EXPECT_EQ(s.local, locals[m]);
      EXPECT_EQ(s.chunk, chunks[m]);
      EXPECT_EQ(s.shard, shards[m]);
      EXPECT_EQ(s.qk_proj, m > 0);
      EXPECT_EQ(s.rate_col0, int64_t(m) * H);
      EXPECT_EQ(s.gate_col0, int64_t(m) * H);
      EXPECT_EQ(s.prefix, prefixes[m]);
      ASSERT_EQ(s.weights.size(), 2u);
      EXPECT_EQ(s.weights[0].name, prefixes[m] + "w1");
      EXPECT_EQ(s.weights[1].name, prefixes[m] + "w2");
    }
    EXPECT_EQ(b.rate_columns, 3 * H);
    EXPECT_EQ(b.gate_columns, 3 * H);
    EXPECT_EQ(c.n_memories(), 3);
  }
  {
    const BranchSpec b = branch_spec(tnt_config(false, {4, 8, 16}, true));
    ASSERT_EQ(b.memories.size(), 3u);
    EXPECT_EQ(b.memories[0].role, MemoryRole::TntLocal);
    EXPECT_EQ(b.memories[0].local, 0);
    EXPECT_EQ(b.memories[0].prefix, "ttt.local.0.");
    EXPECT_EQ(b.memories[2].chunk, 16);
    EXPECT_EQ(b.memories[2].gate_col0, 2 * H);
  }
  {
    const BranchSpec b = branch_spec(tnt_config(true, {8}, false));
    ASSERT_EQ(b.memories.size(), 2u);
    EXPECT_FALSE(b.memories[1].qk_proj);
    EXPECT_EQ(b.memories[1].shard, 128);
  }
}

// The spec's rate rules are the §5.2 / §6.3 rules with the config's constants.
TEST(MemorySpec, RateAndGateRules) {
  ModelConfig lact = preset("tiny");
  lact.lr_init = 0.0123;
  const BranchSpec b = branch_spec(lact);
  EXPECT_EQ(b.rate.act, math::Activation::Softplus);
  EXPECT_EQ(b.rate.shift, std::log(std::expm1(0.0123)));
  EXPECT_EQ(b.rate.scale, 1.0);
  EXPECT_NEAR(math::softplus(0.0 + b.rate.shift), 0.0123, 1e-15);  // the rate is lr_init at z = 0
  EXPECT_EQ(b.gate.act, math::Activation::Sigmoid);
  EXPECT_EQ(b.gate.shift, 0.0);
  EXPECT_EQ(b.gate.scale, 1.0);
  ModelConfig titans = preset("titans");
  titans.titans_base_lr = 0.004;
  const BranchSpec t = branch_spec(titans);
  EXPECT_EQ(t.rate.act, math::Activation::Sigmoid);
  EXPECT_EQ(t.rate.shift, 0.0);
  EXPECT_EQ(t.rate.scale, 0.004);
}

// Every memory parameter of the layout is one weight of one memory of the spec (low-rank factors included), with
// the spec's shape, and the gate projections have the spec's columns.
TEST(MemorySpec, WeightsAreExactlyTheLayoutsMemoryParameters) {
  const std::set<std::string> not_memory_weights = {
      "ttt.q_scale",      "ttt.q_offset",    "ttt.k_scale",         "ttt.k_offset",      "ttt.lr.weight",
      "ttt.lr.bias",      "ttt.momentum.weight", "ttt.momentum.bias", "ttt.decay.weight", "ttt.decay.bias",
      "ttt.o_norm.weight", "ttt.scale.weight", "ttt.scale.bias"};
  for (const auto& [label, c] : configs()) {
    SCOPED_TRACE(label);
    const BranchSpec b = branch_spec(c);
    const int64_t H = c.n_mem_heads, D = c.dim, r = c.low_rank_rank;
    std::map<std::string, Shape> layer0;
    for (const auto& [name, shape] : parameter_shapes(c))
      if (name.rfind("layers.0.", 0) == 0) layer0[name.substr(9)] = shape;
    std::map<std::string, Shape> expected;
    for (const MemorySpec& m : b.memories)
      for (const MemoryWeightSpec& w : m.weights) {
        EXPECT_EQ(w.name.rfind(m.prefix, 0), 0u) << w.name;
        if (w.low_rank) {
          expected[w.name + ".a"] = Shape{H, w.rows, r};
          expected[w.name + ".b"] = Shape{H, r, w.cols};
        } else {
          expected[w.name] = Shape{H, w.rows, w.cols};
        }
      }
    std::map<std::string, Shape> actual;
    for (const auto& [name, shape] : layer0)
      if (name.rfind("ttt.", 0) == 0 && !not_memory_weights.count(name)) actual[name] = shape;
    EXPECT_EQ(actual, expected);
    EXPECT_EQ(layer0.at("ttt.lr.weight"), (Shape{D, b.rate_columns}));
    EXPECT_EQ(layer0.count("ttt.momentum.weight"), b.momentum ? 1u : 0u);
    EXPECT_EQ(layer0.count("ttt.decay.weight"), b.decay ? 1u : 0u);
    if (b.momentum) EXPECT_EQ(layer0.at("ttt.momentum.weight"), (Shape{D, b.gate_columns}));
    if (b.decay) EXPECT_EQ(layer0.at("ttt.decay.weight"), (Shape{D, b.gate_columns}));
    EXPECT_EQ(b.gate_columns, int64_t(b.memories.size()) * H);
  }
  // Low rank covers exactly LaCT's W0 and W2.
  const BranchSpec lr = branch_spec(configs().at("tiny low rank"));
  std::vector<bool> low;
  for (auto& w : lr.memories[0].weights) low.push_back(w.low_rank);
  EXPECT_EQ(low, (std::vector<bool>{true, false, true}));
}

// Each memory runs the causal chunked program with its chunk and reset period (§4).
TEST(MemorySpec, ProgramsAreTheCausalChunkedPrograms) {
  ModelConfig c = tnt_config(true, {3}, true);
  c.global_chunk = 4;
  c.shard = 5;
  const std::vector<MemorySpec> specs = memory_specs(c);
  ASSERT_EQ(specs.size(), 2u);
  EXPECT_EQ(specs[0].program(12).to_string(), engine::causal_program(12, 4).to_string());
  EXPECT_EQ(specs[1].program(12).to_string(),
            "apply 0 3; update 0 3; apply 3 5; reset; apply 5 8; update 5 8; apply 8 10; reset; apply 10 12");
  EXPECT_EQ(memory_specs(preset("titans"))[0].program(40).to_string(), engine::causal_program(40, 16).to_string());
}

// The operators (TntOptions on the tape, TntShape for the explicit twin and the GPU) and the model place their
// memories through the same BranchLayout.
TEST(MemorySpec, OperatorsAndModelShareTheBranchLayout) {
  engine::TntOptions opt;
  opt.use_global = true;
  opt.global_chunk = 32;
  opt.local_chunks = {4, 8};
  opt.shard = 16;
  opt.qk_proj = true;
  titans::TntShape shape;
  shape.B = 1, shape.T = 64, shape.d = 4, shape.dh = {4, 4, 4};
  shape.set_layout(opt.layout());
  ASSERT_EQ(shape.num_memories(), 3);
  for (size_t m = 0; m < 3; ++m) {
    SCOPED_TRACE(m);
    const engine::BranchMemory place = opt.layout().memory(m);
    const titans::MemoryShape ms = shape.memory(m);
    EXPECT_EQ(ms.chunk, place.chunk);
    EXPECT_EQ(ms.period, place.shard);
    EXPECT_EQ(ms.qk, place.qk_proj);
  }
  EXPECT_EQ(shape.memory(0).chunk, 32);
  EXPECT_EQ(shape.memory(0).period, 0);
  EXPECT_FALSE(shape.memory(0).qk);
  EXPECT_EQ(shape.memory(2).chunk, 8);
  EXPECT_EQ(shape.memory(2).period, 16);
  EXPECT_TRUE(shape.memory(2).qk);
  EXPECT_EQ(engine::tnt_input_prefix(opt, 0), "g_");
  EXPECT_EQ(engine::tnt_input_prefix(opt, 2), "l1_");
  opt.use_global = false;
  EXPECT_EQ(engine::tnt_input_prefix(opt, 0), "l0_");
  // The model's layouts: "tnt" as configured; "titans" the global memory alone with chunk `chunk`.
  const engine::BranchLayout tnt = branch_layout(preset("tnt"));
  EXPECT_TRUE(tnt.use_global);
  EXPECT_EQ(tnt.global_chunk, 64);
  EXPECT_EQ(tnt.local_chunks, (std::vector<int64_t>{8, 16}));
  EXPECT_EQ(tnt.shard, 128);
  const engine::BranchLayout titans_layout = branch_layout(preset("titans"));
  EXPECT_EQ(titans_layout.num_memories(), 1);
  EXPECT_EQ(titans_layout.memory(0).chunk, 16);
  EXPECT_EQ(titans_layout.memory(0).shard, 0);
  EXPECT_THROW(titans_layout.memory(1), Error);
}

// The scalar functions are the formulas as written in core/scalar_math.h, bit for bit in float and double: every
// device and every CPU op evaluates them so (a change of a formula changes results everywhere and fails here).
template <class T>
void expect_scalar_formulas() {
  std::vector<T> zs = {T(0), T(-0.0), T(1e-30), T(0.3), T(-0.7), T(2.5), T(-3), T(19.9), T(20), T(20.5), T(-40),
                       T(88), T(-100), T(700)};
  for (T z : zs) {
    SCOPED_TRACE(double(z));
    const T s = z >= 0 ? T(1) / (T(1) + std::exp(-z)) : std::exp(z) / (T(1) + std::exp(z));
    EXPECT_EQ(math::sigmoid(z), s);
    EXPECT_EQ(math::silu(z), z * s);
    EXPECT_EQ(math::dsilu(z), s * (T(1) + z * (T(1) - s)));
    EXPECT_EQ(math::d2silu(z), s * (T(1) - s) * (T(2) + z * (T(1) - T(2) * s)));
    const T sp = z > T(20) ? z : std::log1p(std::exp(z));
    EXPECT_EQ(math::softplus(z), sp);
    EXPECT_EQ(math::activate(math::Activation::Identity, z), z);
    EXPECT_EQ(math::activate(math::Activation::Silu, z), z * s);
    EXPECT_EQ(math::activate(math::Activation::Sigmoid, z), s);
    EXPECT_EQ(math::activate(math::Activation::Softplus, z), sp);
    EXPECT_EQ(math::activation_grad(math::Activation::Identity, z), T(1));
    EXPECT_EQ(math::activation_grad(math::Activation::Silu, z), math::dsilu(z));
    EXPECT_EQ(math::activation_grad(math::Activation::Sigmoid, z), s * (T(1) - s));
    EXPECT_EQ(math::activation_grad(math::Activation::Softplus, z), s);
  }
}

TEST(ScalarMath, FormulasAsWrittenFloatAndDouble) {
  expect_scalar_formulas<float>();
  expect_scalar_formulas<double>();
  EXPECT_EQ(math::softplus_inverse(0.001), std::log(std::expm1(0.001)));
}

// math::sigmoid takes e^-|z| and chooses the numerator (no branch, one exp and one division): the bits of the
// two-branch form `z >= 0 ? 1 / (1 + exp(-z)) : exp(z) / (1 + exp(z))` it replaced, and so silu's and silu''s, over
// every 1021st float (both signs, subnormals, infinities; NaN stays NaN) and a million random doubles of either sign
// up to 800 in magnitude.
template <class T>
void expect_two_branch_sigmoid_bits(T z, size_t& differ, size_t& checked) {
  const T s = z >= 0 ? T(1) / (T(1) + std::exp(-z)) : std::exp(z) / (T(1) + std::exp(z));
  const T got = math::sigmoid(z), silu = math::silu(z), dsilu = math::dsilu(z);
  const T want_silu = z * s, want_dsilu = s * (T(1) + z * (T(1) - s));
  ++checked;
  if (std::isnan(z)) {
    differ += !std::isnan(got);
    return;
  }
  if (std::memcmp(&got, &s, sizeof(T)) != 0 || std::memcmp(&silu, &want_silu, sizeof(T)) != 0 ||
      std::memcmp(&dsilu, &want_dsilu, sizeof(T)) != 0) {
    if (differ++ == 0) ADD_FAILURE() << "sigmoid differs from the two-branch form first at z = " << double(z);
  }
}
TEST(ScalarMath, SigmoidBranchFreeKeepsTheTwoBranchBits) {
  size_t differ = 0, checked = 0;
  for (uint64_t bits = 0; bits <= 0xffffffffull; bits += 1021) {
    const uint32_t b = uint32_t(bits);
    float z;
    std::memcpy(&z, &b, 4);
    expect_two_branch_sigmoid_bits(z, differ, checked);
  }
  for (const float z : {0.0f, -0.0f, std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                        std::numeric_limits<float>::denorm_min(), -std::numeric_limits<float>::denorm_min()})
    expect_two_branch_sigmoid_bits(z, differ, checked);
  std::mt19937_64 gen(20261130);
  std::uniform_real_distribution<double> u(-800.0, 800.0);
  for (int i = 0; i < 1000000; ++i) expect_two_branch_sigmoid_bits(u(gen) * (i % 2 ? 1e-3 : 1.0), differ, checked);
  EXPECT_EQ(differ, 0u) << "of " << checked;
}

// ag::gate records a rule as its steps (shift, activation, scale): the same values and gradients as those ops
// recorded one by one, bit for bit, for the LaCT and Titans rate rules and the sigmoid gate.
TEST(ScalarMath, TapeGateIsTheRuleStepByStep) {
  ag::Mat<float> z(3, 4);
  for (int64_t i = 0; i < z.size(); ++i) z.data[size_t(i)] = float(i) * 0.7f - 4.1f;
  ag::Mat<float> g(3, 4);
  for (int64_t i = 0; i < g.size(); ++i) g.data[size_t(i)] = 1.0f / float(i + 2);
  auto run = [&](auto record) {
    ag::Tape<float> t;
    ag::Var x = t.leaf(z, true);
    ag::Var y = record(t, x);
    t.grad(y) = g;
    t.backward();
    return std::make_pair(t.val(y).data, t.grad(x).data);
  };
  const math::GateRule lact = math::lact_rate_rule(0.001), titans = math::titans_rate_rule(0.003);
  EXPECT_EQ(run([&](ag::Tape<float>& t, ag::Var x) { return ag::gate(t, x, lact); }),
            run([&](ag::Tape<float>& t, ag::Var x) { return ag::softplus(t, ag::add_const(t, x, lact.shift)); }));
  EXPECT_EQ(run([&](ag::Tape<float>& t, ag::Var x) { return ag::gate(t, x, titans); }),
            run([&](ag::Tape<float>& t, ag::Var x) { return ag::scale(t, ag::sigmoid(t, x), 0.003); }));
  EXPECT_EQ(run([&](ag::Tape<float>& t, ag::Var x) { return ag::gate(t, x, math::sigmoid_gate_rule()); }),
            run([&](ag::Tape<float>& t, ag::Var x) { return ag::sigmoid(t, x); }));
}
