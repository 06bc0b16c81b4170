// The TTT engine: every input's gradient against float64 central finite differences across
// memory families, losses, update rules and programs; C = 1 against an independent online loop;
// float32 against float64.
#include <gtest/gtest.h>

#include <cmath>

#include "core/rng.h"
#include "expect_error.h"
#include "ttt/runner.h"
#include "ttt/tnt.h"

using namespace ttt;
using namespace ttt::engine;
using ag::Mat;

namespace {

template <class T>
Mat<T> randn(Rng& r, int64_t rows, int64_t cols, double scale) {
  Mat<T> m(rows, cols);
  for (auto& x : m.data) x = T(r.normal() * scale);
  return m;
}
template <class T>
Mat<T> randu(Rng& r, int64_t rows, int64_t cols, double lo, double hi) {
  Mat<T> m(rows, cols);
  for (auto& x : m.data) x = T(r.uniform(lo, hi));
  return m;
}

// One random matrix per weight of the memory (normal, times scale).
std::vector<Mat<double>> random_weights(const MemoryConfig& cfg, Rng& r, double scale) {
  std::vector<Mat<double>> w;
  for (auto [rows, cols] : cfg.weight_shapes()) w.push_back(randn<double>(r, rows, cols, scale));
  return w;
}

SequenceInputs<double> make_inputs(const MemoryConfig& cfg, int64_t n, uint64_t seed) {
  Rng r(seed);
  SequenceInputs<double> in;
  for (auto [rows, cols] : cfg.weight_shapes()) in.w0.push_back(randn<double>(r, rows, cols, 1.0 / std::sqrt(double(cols))));
  in.q = randn<double>(r, n, cfg.d, 0.6);
  in.k = randn<double>(r, n, cfg.d, 0.6);
  in.v = randn<double>(r, n, cfg.d, 0.6);
  in.rates = randu<double>(r, n, cfg.rate_columns, 0.05, 0.3);
  if (cfg.momentum) in.momentum_gate = randu<double>(r, n, 1, 0.3, 0.9);
  if (cfg.decay) in.decay_gate = randu<double>(r, n, 1, 0.02, 0.2);
  return in;
}

// SiLU and its derivative, written out for the online references (independent of the engine's scalar math).
double reference_silu(double z) { return z / (1 + std::exp(-z)); }
double reference_dsilu(double z) {
  double s = 1 / (1 + std::exp(-z));
  return s * (1 + z * (1 - s));
}

// All input matrices of a sequence, in a fixed order, for perturbation.
std::vector<std::pair<std::string, Mat<double>*>> fields(SequenceInputs<double>& in) {
  std::vector<std::pair<std::string, Mat<double>*>> f;
  for (size_t i = 0; i < in.w0.size(); ++i) f.push_back({"w0[" + std::to_string(i) + "]", &in.w0[i]});
  f.push_back({"q", &in.q});
  f.push_back({"k", &in.k});
  f.push_back({"v", &in.v});
  f.push_back({"rates", &in.rates});
  if (!in.momentum_gate.empty()) f.push_back({"momentum_gate", &in.momentum_gate});
  if (!in.decay_gate.empty()) f.push_back({"decay_gate", &in.decay_gate});
  return f;
}

double loss(const MemoryConfig& cfg, const Program& p, const SequenceInputs<double>& in, const Mat<double>& r) {
  Mat<double> o = run_forward(cfg, p, in);
  double l = 0;
  for (size_t i = 0; i < o.data.size(); ++i) l += o.data[i] * r.data[i];
  return l;
}

// ||analytic - fd|| / ||fd|| over the elements of x, fd the float64 central differences (step 1e-6) of loss() as each
// element of x moves; fd_norm2 (if given) receives ||fd||^2 (0: the loss does not depend on x).
template <class LossFn>
double central_difference_error(Mat<double>& x, const Mat<double>& analytic, LossFn&& loss,
                                double* fd_norm2 = nullptr) {
  const double h = 1e-6;
  double num = 0, den = 0;
  for (size_t i = 0; i < x.data.size(); ++i) {
    const double x0 = x.data[i];
    x.data[i] = x0 + h;
    const double lp = loss();
    x.data[i] = x0 - h;
    const double lm = loss();
    x.data[i] = x0;
    const double fd = (lp - lm) / (2 * h), an = analytic.data[i];
    num += (an - fd) * (an - fd);
    den += fd * fd;
  }
  if (fd_norm2) *fd_norm2 = den;
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-12);
}

// Worst relative error ||g - fd|| / ||fd|| over the input tensors.
double gradient_error(const MemoryConfig& cfg, const Program& p, uint64_t seed, std::string* worst_name = nullptr) {
  const int64_t n = p.num_tokens;
  SequenceInputs<double> in = make_inputs(cfg, n, seed);
  Rng r(seed + 99);
  Mat<double> go = randn<double>(r, n, cfg.d, 1.0);
  SavedStates<double> saved;
  run_forward(cfg, p, in, &saved);
  SequenceGrads<double> g = run_backward(cfg, p, in, saved, go);
  auto gf = fields(g);
  auto inf = fields(in);
  double worst = 0;
  for (size_t f = 0; f < inf.size(); ++f) {
    const double rel =
        central_difference_error(*inf[f].second, *gf[f].second, [&] { return loss(cfg, p, in, go); });
    if (rel > worst) {
      worst = rel;
      if (worst_name) *worst_name = inf[f].first;
    }
  }
  return worst;
}

struct Case {
  std::string name;
  Family family;
  Loss loss;
  bool momentum, muon, decay;
  WeightNorm wn;
  int rate_cols;  // 0: one per matrix
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

MemoryConfig config_of(const Case& c) {
  MemoryConfig cfg;
  cfg.family = c.family;
  cfg.loss = c.loss;
  cfg.d = 4;
  cfg.dh = c.family == Family::Linear ? 0 : 6;
  cfg.momentum = c.momentum;
  cfg.muon = c.muon;
  cfg.decay = c.decay;
  cfg.weight_norm = c.wn;
  cfg.rate_columns = c.rate_cols ? c.rate_cols : cfg.num_weights();
  return cfg;
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  const Family fams[] = {Family::SwiGLU, Family::MLP, Family::Linear};
  const Loss losses[] = {Loss::Dot, Loss::MSE};
  for (Family f : fams)
    for (Loss l : losses) {
      std::string base = std::string(family_name(f)) + "_" + loss_name(l);
      cases.push_back({base + "_plain", f, l, false, false, false, WeightNorm::None, 0});
      cases.push_back({base + "_momentum", f, l, true, false, false, WeightNorm::None, 0});
      cases.push_back({base + "_muon", f, l, false, true, false, WeightNorm::None, 0});
      cases.push_back({base + "_decay", f, l, false, false, true, WeightNorm::None, 1});
      cases.push_back({base + "_postnorm", f, l, false, false, false, WeightNorm::Post, 0});
      cases.push_back({base + "_prenorm", f, l, false, false, false, WeightNorm::Pre, 0});
      cases.push_back({base + "_all_post", f, l, true, true, true, WeightNorm::Post, 0});
      cases.push_back({base + "_all_pre", f, l, true, true, true, WeightNorm::Pre, 1});
    }
  return cases;
}

}  // namespace

class EngineGradCheck : public ::testing::TestWithParam<Case> {};

TEST_P(EngineGradCheck, CausalChunked) {
  const MemoryConfig cfg = config_of(GetParam());
  for (int64_t chunk : {3, 4}) {  // 3 does not divide 10, 5 does not either; 4 leaves a short last chunk
    std::string worst;
    double err = gradient_error(cfg, causal_program(10, chunk), 7 + uint64_t(chunk), &worst);
    EXPECT_LE(err, 1e-6) << GetParam().name << " chunk " << chunk << " worst input " << worst;
  }
}

INSTANTIATE_TEST_SUITE_P(AllFamilies, EngineGradCheck, ::testing::ValuesIn(all_cases()),
                         [](const auto& info) { return info.param.name; });

TEST(EngineGrad, ChunkSizesOneAndAtLeastT) {
  MemoryConfig cfg = config_of({"", Family::SwiGLU, Loss::Dot, true, false, false, WeightNorm::Post, 0});
  for (int64_t chunk : {1, 2, 9, 10, 16}) {
    std::string worst;
    EXPECT_LE(gradient_error(cfg, causal_program(9, chunk), 3, &worst), 1e-6) << "chunk " << chunk << " " << worst;
  }
}

TEST(EngineGrad, ResetsOnAndOffChunkBoundaries) {
  // Pre-norm too: after each reset the memory applies W0 itself again until the shard's first update.
  for (WeightNorm wn : {WeightNorm::None, WeightNorm::Pre}) {
    MemoryConfig cfg = config_of({"", Family::MLP, Loss::MSE, true, false, true, wn, 1});
    // chunk 2 with reset every 4 (on boundaries); chunk 3 with reset every 4 (chunks realigned to each shard)
    for (auto [chunk, reset] : std::vector<std::pair<int64_t, int64_t>>{{2, 4}, {3, 4}, {4, 5}, {1, 3}}) {
      std::string worst;
      EXPECT_LE(gradient_error(cfg, causal_program(11, chunk, reset), 5, &worst), 1e-6)
          << weight_norm_name(wn) << " chunk " << chunk << " reset " << reset << " " << worst;
    }
  }
}

TEST(EngineGrad, BidirectionalAndCustomPrograms) {
  MemoryConfig cfg = config_of({"", Family::SwiGLU, Loss::Dot, true, true, false, WeightNorm::Pre, 0});
  std::string worst;
  EXPECT_LE(gradient_error(cfg, bidirectional_program(8, 3), 11, &worst), 1e-6) << worst;
  EXPECT_LE(gradient_error(cfg, bidirectional_program(8, 100), 12, &worst), 1e-6) << worst;
  // View-conditioned style: update on the first tokens, apply on the rest, a reset, and re-application.
  Program p = parse_program("update 0 5; apply 5 9; reset; update 2 4; apply 0 3; apply 7 9", 9);
  EXPECT_LE(gradient_error(cfg, p, 13, &worst), 1e-6) << worst;
}

TEST(EngineProgram, BuildersAndParser) {
  EXPECT_EQ(causal_program(10, 4).to_string(), "apply 0 4; update 0 4; apply 4 8; update 4 8; apply 8 10");
  EXPECT_EQ(causal_program(10, 3, 4).to_string(),
            "apply 0 3; update 0 3; apply 3 4; reset; apply 4 7; update 4 7; apply 7 8; reset; apply 8 10");
  EXPECT_EQ(bidirectional_program(5, 3).to_string(), "update 0 3; apply 0 3; update 3 5; apply 3 5");
  EXPECT_THROW(parse_program("apply 0 20", 10), Error);
  EXPECT_THROW(parse_program("jump 1 2", 10), Error);
  EXPECT_THROW(parse_program("", 10), Error);
  EXPECT_THROW(causal_program(10, 0), Error);
}

// Independent per-token online gradient descent for the SwiGLU memory with the dot-product loss,
// written from the formulas of docs/ALGORITHMS.md §3 with plain loops: it must equal the causal program with C = 1.
TEST(EngineOnline, ChunkOneEqualsPerTokenOnlineGD) {
  MemoryConfig cfg = config_of({"", Family::SwiGLU, Loss::Dot, false, false, false, WeightNorm::None, 0});
  const int64_t n = 12, d = cfg.d, dh = cfg.dh;
  SequenceInputs<double> in = make_inputs(cfg, n, 21);
  Mat<double> o = run_forward(cfg, causal_program(n, 1), in);
  Mat<double> W0 = in.w0[0], W1 = in.w0[1], W2 = in.w0[2];
  double max_err = 0, max_ref = 0;
  for (int64_t t = 0; t < n; ++t) {
    // apply
    std::vector<double> g(dh), h(dh), a(dh);
    for (int64_t i = 0; i < dh; ++i) {
      g[i] = h[i] = 0;
      for (int64_t j = 0; j < d; ++j) g[i] += W0(i, j) * in.q(t, j), h[i] += W2(i, j) * in.q(t, j);
      a[i] = reference_silu(g[i]) * h[i];
    }
    for (int64_t j = 0; j < d; ++j) {
      double y = 0;
      for (int64_t i = 0; i < dh; ++i) y += W1(j, i) * a[i];
      max_err = std::max(max_err, std::abs(y - o(t, j)));
      max_ref = std::max(max_ref, std::abs(y));
    }
    // update with token t (gradients at the weights before the step)
    for (int64_t i = 0; i < dh; ++i) {
      g[i] = h[i] = 0;
      for (int64_t j = 0; j < d; ++j) g[i] += W0(i, j) * in.k(t, j), h[i] += W2(i, j) * in.k(t, j);
      a[i] = reference_silu(g[i]) * h[i];
    }
    std::vector<double> u(dh, 0);
    for (int64_t i = 0; i < dh; ++i)
      for (int64_t j = 0; j < d; ++j) u[i] += W1(j, i) * in.v(t, j);
    Mat<double> N0 = W0, N1 = W1, N2 = W2;
    for (int64_t i = 0; i < dh; ++i)
      for (int64_t j = 0; j < d; ++j) {
        N0(i, j) += in.rates(t, 0) * u[i] * h[i] * reference_dsilu(g[i]) * in.k(t, j);
        N2(i, j) += in.rates(t, 2) * u[i] * reference_silu(g[i]) * in.k(t, j);
        N1(j, i) += in.rates(t, 1) * in.v(t, j) * a[i];
      }
    W0 = N0, W1 = N1, W2 = N2;
  }
  EXPECT_LE(max_err, 1e-12 * std::max(1.0, max_ref));
}

TEST(EngineOnline, MSEMlpChunkOneEqualsPerTokenOnlineGD) {
  MemoryConfig cfg = config_of({"", Family::MLP, Loss::MSE, false, false, false, WeightNorm::None, 1});
  const int64_t n = 9, d = cfg.d, dh = cfg.dh;
  SequenceInputs<double> in = make_inputs(cfg, n, 5);
  Mat<double> o = run_forward(cfg, causal_program(n, 1), in);
  Mat<double> W1 = in.w0[0], W2 = in.w0[1];
  auto f = [&](const double* x, std::vector<double>& z, std::vector<double>& y) {
    z.assign(dh, 0);
    y.assign(d, 0);
    for (int64_t i = 0; i < dh; ++i)
      for (int64_t j = 0; j < d; ++j) z[i] += W1(i, j) * x[j];
    for (int64_t j = 0; j < d; ++j) {
      y[j] = x[j];
      for (int64_t i = 0; i < dh; ++i) y[j] += W2(j, i) * reference_silu(z[i]);
    }
  };
  double max_err = 0;
  for (int64_t t = 0; t < n; ++t) {
    std::vector<double> z, y;
    f(in.q.row(t), z, y);
    for (int64_t j = 0; j < d; ++j) max_err = std::max(max_err, std::abs(y[j] - o(t, j)));
    f(in.k.row(t), z, y);
    std::vector<double> e(d), ds(dh, 0);
    for (int64_t j = 0; j < d; ++j) e[j] = 2 * (y[j] - in.v(t, j));
    for (int64_t i = 0; i < dh; ++i)
      for (int64_t j = 0; j < d; ++j) ds[i] += W2(j, i) * e[j];
    const double th = in.rates(t, 0);
    for (int64_t j = 0; j < d; ++j)
      for (int64_t i = 0; i < dh; ++i) W2(j, i) -= th * e[j] * reference_silu(z[i]);
    for (int64_t i = 0; i < dh; ++i)
      for (int64_t j = 0; j < d; ++j) W1(i, j) -= th * ds[i] * reference_dsilu(z[i]) * in.k(t, j);
  }
  EXPECT_LE(max_err, 1e-12);
}

TEST(EnginePrecision, Float32AgreesWithFloat64) {
  MemoryConfig cfg = config_of({"", Family::SwiGLU, Loss::Dot, true, true, false, WeightNorm::Post, 0});
  cfg.d = 16;
  cfg.dh = 16;
  const int64_t n = 64;
  Program p = causal_program(n, 16);
  SequenceInputs<double> in = make_inputs(cfg, n, 77);
  for (auto& x : in.rates.data) x *= 0.1;  // well-conditioned
  auto to_f = [](const Mat<double>& m) {
    Mat<float> f(m.rows, m.cols);
    for (size_t i = 0; i < m.data.size(); ++i) f.data[i] = float(m.data[i]);
    return f;
  };
  SequenceInputs<float> inf;
  for (auto& w : in.w0) inf.w0.push_back(to_f(w));
  inf.q = to_f(in.q), inf.k = to_f(in.k), inf.v = to_f(in.v), inf.rates = to_f(in.rates);
  inf.momentum_gate = to_f(in.momentum_gate);
  SavedStates<double> sd;
  SavedStates<float> sf;
  Mat<double> od = run_forward(cfg, p, in, &sd);
  Mat<float> of = run_forward(cfg, p, inf, &sf);
  Rng r(5);
  Mat<double> go = randn<double>(r, n, cfg.d, 1.0);
  auto gd = run_backward(cfg, p, in, sd, go);
  auto gf = run_backward(cfg, p, inf, sf, to_f(go));
  auto rel = [](const Mat<float>& a, const Mat<double>& b) {
    double num = 0, den = 0;
    for (size_t i = 0; i < b.data.size(); ++i) num += std::pow(a.data[i] - b.data[i], 2), den += b.data[i] * b.data[i];
    return std::sqrt(num / den);
  };
  EXPECT_LE(rel(of, od), 1e-4);
  EXPECT_LE(rel(gf.q, gd.q), 1e-4);
  EXPECT_LE(rel(gf.k, gd.k), 1e-4);
  EXPECT_LE(rel(gf.v, gd.v), 1e-4);
  EXPECT_LE(rel(gf.rates, gd.rates), 1e-4);
  EXPECT_LE(rel(gf.momentum_gate, gd.momentum_gate), 1e-4);
  for (size_t i = 0; i < gd.w0.size(); ++i) EXPECT_LE(rel(gf.w0[i], gd.w0[i]), 1e-4);
}

TEST(EngineErrors, BadShapesAreNamed) {
  MemoryConfig cfg = config_of({"", Family::SwiGLU, Loss::Dot, true, false, false, WeightNorm::None, 0});
  SequenceInputs<double> in = make_inputs(cfg, 6, 1);
  in.k = Mat<double>(5, 4);
  test::expect_error([&] { run_forward(cfg, causal_program(6, 2), in); }, "k is [5,4]");
}

// A chain that starts from a passed state (context parallelism's --cp-global state): the entry state's adjoint
// (w0's gradient and momentum0's) with the exit state's adjoint seeded, against float64 central differences of
// L = sum(o * R) + <exit state, E> over the entry weights, the entry momentum and every per-token input.
TEST(EngineChainEnds, EntryStateAdjointMatchesFiniteDifferences) {
  const MemoryConfig cfg = titans_memory_config(4, 6);  // TNT's global memory: momentum and decay
  const Program p = chain_span_program(8, 2, /*continues=*/true);  // every chunk updates: the exit state has all
  SequenceInputs<double> in = make_inputs(cfg, 8, 31);
  Rng r(77);
  in.momentum0 = random_weights(cfg, r, 0.3);
  const Mat<double> go = randn<double>(r, 8, cfg.d, 1.0);
  MemoryState<double> exit_adjoint;
  exit_adjoint.weights = random_weights(cfg, r, 1.0);
  exit_adjoint.momentum = random_weights(cfg, r, 1.0);
  auto chain_loss = [&](const SequenceInputs<double>& x) {
    SavedStates<double> saved;
    double l = loss(cfg, p, x, go);
    run_forward(cfg, p, x, &saved);
    const MemoryState<double>& e = exit_state(saved);
    for (size_t j = 0; j < e.weights.size(); ++j)
      for (size_t i = 0; i < e.weights[j].data.size(); ++i)
        l += e.weights[j].data[i] * exit_adjoint.weights[j].data[i] + e.momentum[j].data[i] * exit_adjoint.momentum[j].data[i];
    return l;
  };
  SavedStates<double> saved;
  run_forward(cfg, p, in, &saved);
  SequenceGrads<double> g = run_backward(cfg, p, in, saved, go, &exit_adjoint);
  auto inf = fields(in);
  auto gf = fields(g);
  for (size_t j = 0; j < in.momentum0.size(); ++j) {
    inf.push_back({"momentum0[" + std::to_string(j) + "]", &in.momentum0[j]});
    gf.push_back({"momentum0[" + std::to_string(j) + "]", &g.momentum0[j]});
  }
  ASSERT_EQ(inf.size(), gf.size());
  for (size_t f = 0; f < inf.size(); ++f) {
    double den = 0;
    const double rel = central_difference_error(*inf[f].second, *gf[f].second, [&] { return chain_loss(in); }, &den);
    std::printf("  %-12s |analytic - fd| / |fd| = %.2e\n", inf[f].first.c_str(), rel);
    EXPECT_LT(rel, 1e-6) << inf[f].first;
    EXPECT_GT(den, 0.0) << inf[f].first << ": the loss does not depend on it";
  }
}

// The chain over 12 tokens equals the chain over the first 4 followed by the chain over the last 8 from its exit
// state: outputs and exit state in the forward; in the backward the second part's entry-state adjoint, fed to the
// first part as its exit adjoint, gives the whole chain's gradients.
TEST(EngineChainEnds, TwoPartsFromThePassedStateEqualTheWholeChain) {
  const MemoryConfig cfg = titans_memory_config(4, 6);
  const int64_t n = 12, cut = 4;
  const Program whole_p = causal_program(n, 2), second_p = causal_program(n - cut, 2);
  const Program first_p = chain_span_program(cut, 2, /*continues=*/true);  // its last chunk's update goes on
  const SequenceInputs<double> whole = make_inputs(cfg, n, 5);
  Rng r(6);
  const Mat<double> go = randn<double>(r, n, cfg.d, 1.0);
  auto part = [&](int64_t b, int64_t e) {
    SequenceInputs<double> x;
    x.w0 = whole.w0;
    x.q = Mat<double>(e - b, cfg.d);
    x.k = x.q;
    x.v = x.q;
    x.rates = Mat<double>(e - b, 1);
    x.momentum_gate = x.rates;
    x.decay_gate = x.rates;
    for (int64_t i = b; i < e; ++i) {
      std::copy_n(whole.q.row(i), cfg.d, x.q.row(i - b));
      std::copy_n(whole.k.row(i), cfg.d, x.k.row(i - b));
      std::copy_n(whole.v.row(i), cfg.d, x.v.row(i - b));
      x.rates(i - b, 0) = whole.rates(i, 0);
      x.momentum_gate(i - b, 0) = whole.momentum_gate(i, 0);
      x.decay_gate(i - b, 0) = whole.decay_gate(i, 0);
    }
    return x;
  };
  auto go_rows = [&](int64_t b, int64_t e) {
    Mat<double> m(e - b, cfg.d);
    std::copy(go.row(b), go.row(e), m.data.begin());
    return m;
  };
  SavedStates<double> sw, s1, s2;
  const Mat<double> ow = run_forward(cfg, whole_p, whole, &sw);
  SequenceInputs<double> first = part(0, cut), second = part(cut, n);
  const Mat<double> o1 = run_forward(cfg, first_p, first, &s1);
  second.w0 = exit_state(s1).weights;
  second.momentum0 = exit_state(s1).momentum;
  const Mat<double> o2 = run_forward(cfg, second_p, second, &s2);
  double worst = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < cfg.d; ++c)
      worst = std::max(worst, std::abs((i < cut ? o1(i, c) : o2(i - cut, c)) - ow(i, c)));
  for (size_t j = 0; j < 2; ++j)
    for (size_t e = 0; e < exit_state(sw).weights[j].data.size(); ++e)
      worst = std::max(worst, std::abs(exit_state(s2).weights[j].data[e] - exit_state(sw).weights[j].data[e]));
  EXPECT_LT(worst, 1e-13) << "forward";

  const SequenceGrads<double> gw = run_backward(cfg, whole_p, whole, sw, go);
  const SequenceGrads<double> g2 = run_backward(cfg, second_p, second, s2, go_rows(cut, n));
  MemoryState<double> handed;
  handed.weights = g2.w0;
  handed.momentum = g2.momentum0;
  const SequenceGrads<double> g1 = run_backward(cfg, first_p, first, s1, go_rows(0, cut), &handed);
  double gworst = 0;
  for (size_t j = 0; j < gw.w0.size(); ++j)
    for (size_t e = 0; e < gw.w0[j].data.size(); ++e) gworst = std::max(gworst, std::abs(g1.w0[j].data[e] - gw.w0[j].data[e]));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < cfg.d; ++c) {
      const SequenceGrads<double>& g = i < cut ? g1 : g2;
      const int64_t at = i < cut ? i : i - cut;
      gworst = std::max({gworst, std::abs(g.q(at, c) - gw.q(i, c)), std::abs(g.k(at, c) - gw.k(i, c)),
                         std::abs(g.v(at, c) - gw.v(i, c))});
    }
  for (int64_t i = 0; i < n; ++i) {
    const SequenceGrads<double>& g = i < cut ? g1 : g2;
    const int64_t at = i < cut ? i : i - cut;
    gworst = std::max({gworst, std::abs(g.rates(at, 0) - gw.rates(i, 0)),
                       std::abs(g.momentum_gate(at, 0) - gw.momentum_gate(i, 0)),
                       std::abs(g.decay_gate(at, 0) - gw.decay_gate(i, 0))});
  }
  std::printf("  two parts vs whole chain: outputs %.2e, gradients %.2e\n", worst, gworst);
  EXPECT_LT(gworst, 1e-12) << "backward";
}

// A passed state needs a chain without resets and without weight norm; both are refused naming why.
TEST(EngineChainEnds, ResetsAndWeightNormAreRefused) {
  MemoryConfig cfg = titans_memory_config(4, 6);
  SequenceInputs<double> in = make_inputs(cfg, 8, 3);
  for (auto [rows, cols] : cfg.weight_shapes()) in.momentum0.emplace_back(rows, cols);
  test::expect_error([&] { run_forward(cfg, causal_program(8, 2, 4), in); }, "cannot have resets");
  cfg.weight_norm = WeightNorm::Post;
  test::expect_error([&] { run_forward(cfg, causal_program(8, 2), in); }, "no weight norm");
}
