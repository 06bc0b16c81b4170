// The explicit (tape-free) LaCT operator, src/ttt/lact_fused.h, against the engine (per-op tape replay,
// itself checked against finite differences) in float64: outputs and every gradient to 1e-10 relative, over
// programs, weight norms, momentum, Muon and chunkings (dividing T or not, C = 1, C >= T).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/rng.h"
#include "ttt/lact_fused.h"
#include "ttt/runner.h"

using namespace ttt;

namespace {

struct Case {
  int64_t B, T, d, dh, chunk;
  bool causal, momentum, muon;
  engine::WeightNorm norm;
  std::string name() const {
    const char* nn = engine::weight_norm_name(norm);
    return std::string(causal ? "causal" : "bidir") + "_C" + std::to_string(chunk) + "_T" + std::to_string(T) +
           "_d" + std::to_string(d) + "_dh" + std::to_string(dh) + (momentum ? "_mom" : "") + (muon ? "_muon" : "") +
           "_" + nn;
  }
};

struct Data {
  std::vector<double> w0, w1, w2, q, k, v, lr0, lr1, lr2, mom, go;
};

Data make_data(const Case& c, uint64_t seed) {
  Rng r(seed);
  auto normal = [&](int64_t n, double s) {
    std::vector<double> x(static_cast<size_t>(n));
    for (auto& e : x) e = r.normal() * s;
    return x;
  };
  auto uniform = [&](int64_t n, double lo, double hi) {
    std::vector<double> x(static_cast<size_t>(n));
    for (auto& e : x) e = r.uniform(lo, hi);
    return x;
  };
  Data x;
  x.w0 = normal(c.B * c.dh * c.d, 1.0 / std::sqrt(double(c.d)));
  x.w1 = normal(c.B * c.d * c.dh, 1.0 / std::sqrt(double(c.dh)));
  x.w2 = normal(c.B * c.dh * c.d, 1.0 / std::sqrt(double(c.d)));
  x.q = normal(c.B * c.T * c.d, 0.6);
  x.k = normal(c.B * c.T * c.d, 0.6);
  x.v = normal(c.B * c.T * c.d, 0.6);
  x.lr0 = uniform(c.B * c.T, 0.05, 0.3);
  x.lr1 = uniform(c.B * c.T, 0.05, 0.3);
  x.lr2 = uniform(c.B * c.T, 0.05, 0.3);
  x.mom = uniform(c.B * c.T, 0.3, 0.9);
  x.go = normal(c.B * c.T * c.d, 1.0);
  return x;
}

double rel_err(const std::vector<double>& a, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i])) return INFINITY;
    num += (a[i] - ref[i]) * (a[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

double norm(const std::vector<double>& a) {
  double s = 0;
  for (double x : a) s += x * x;
  return std::sqrt(s);
}
double abs_err(const std::vector<double>& a, const std::vector<double>& ref) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += (a[i] - ref[i]) * (a[i] - ref[i]);
  return std::isnan(s) ? INFINITY : std::sqrt(s);
}

// The engine on every head; results in the operator's [B,...] layouts, in the order
// o, w0, w1, w2, q, k, v, lr0, lr1, lr2, mom.
engine::MemoryConfig engine_config(const Case& c) {
  engine::MemoryConfig cfg;
  cfg.family = engine::Family::SwiGLU;
  cfg.loss = engine::Loss::Dot;
  cfg.d = c.d;
  cfg.dh = c.dh;
  cfg.momentum = c.momentum;
  cfg.muon = c.muon;
  cfg.weight_norm = c.norm;
  cfg.rate_columns = 3;
  return cfg;
}

// Head b of the data as the engine's inputs.
engine::SequenceInputs<double> engine_inputs(const Case& c, const Data& x, int64_t b) {
  const int64_t P = c.d * c.dh, TD = c.T * c.d;
  auto mat = [](const std::vector<double>& v, int64_t off, int64_t rows, int64_t cols) {
    ag::Mat<double> m(rows, cols);
    std::copy(v.begin() + off, v.begin() + off + rows * cols, m.data.begin());
    return m;
  };
  engine::SequenceInputs<double> in;
  in.w0 = {mat(x.w0, b * P, c.dh, c.d), mat(x.w1, b * P, c.d, c.dh), mat(x.w2, b * P, c.dh, c.d)};
  in.q = mat(x.q, b * TD, c.T, c.d);
  in.k = mat(x.k, b * TD, c.T, c.d);
  in.v = mat(x.v, b * TD, c.T, c.d);
  in.rates = ag::Mat<double>(c.T, 3);
  for (int64_t t = 0; t < c.T; ++t) {
    in.rates(t, 0) = x.lr0[size_t(b * c.T + t)];
    in.rates(t, 1) = x.lr1[size_t(b * c.T + t)];
    in.rates(t, 2) = x.lr2[size_t(b * c.T + t)];
  }
  if (c.momentum) in.momentum_gate = mat(x.mom, b * c.T, c.T, 1);
  return in;
}

// The engine on every head (the case's program, or `program` when given); results in the operator's [B,...]
// layouts, in the order o, w0, w1, w2, q, k, v, lr0, lr1, lr2, mom.
std::vector<std::vector<double>> engine_reference(const Case& c, const Data& x,
                                                  const engine::Program* program = nullptr) {
  const engine::MemoryConfig cfg = engine_config(c);
  const engine::Program prog =
      program ? *program
              : c.causal ? engine::causal_program(c.T, c.chunk) : engine::bidirectional_program(c.T, c.chunk);
  const int64_t P = c.d * c.dh, TD = c.T * c.d;
  std::vector<std::vector<double>> out(11);
  for (int i : {0, 4, 5, 6}) out[size_t(i)].resize(size_t(c.B * TD));
  for (int i : {1, 2, 3}) out[size_t(i)].resize(size_t(c.B * P));
  for (int i : {7, 8, 9, 10}) out[size_t(i)].resize(size_t(c.B * c.T));
  for (int64_t b = 0; b < c.B; ++b) {
    const engine::SequenceInputs<double> in = engine_inputs(c, x, b);
    ag::Mat<double> go(c.T, c.d);
    std::copy(x.go.begin() + b * TD, x.go.begin() + (b + 1) * TD, go.data.begin());
    engine::SavedStates<double> saved;
    ag::Mat<double> o = engine::run_forward(cfg, prog, in, &saved);
    engine::SequenceGrads<double> g = engine::run_backward(cfg, prog, in, saved, go);
    auto put = [&](int i, const ag::Mat<double>& m, int64_t off) {
      std::copy(m.data.begin(), m.data.end(), out[size_t(i)].begin() + off);
    };
    put(0, o, b * TD);
    put(1, g.w0[0], b * P);
    put(2, g.w0[1], b * P);
    put(3, g.w0[2], b * P);
    put(4, g.q, b * TD);
    put(5, g.k, b * TD);
    put(6, g.v, b * TD);
    for (int64_t t = 0; t < c.T; ++t)
      for (int j = 0; j < 3; ++j) out[size_t(7 + j)][size_t(b * c.T + t)] = g.rates(t, j);
    if (c.momentum) put(10, g.momentum_gate, b * c.T);
  }
  return out;
}

lact::Shape shape_of(const Case& c) {
  lact::Shape s;
  s.B = c.B;
  s.T = c.T;
  s.d = c.d;
  s.dh = c.dh;
  s.chunk = c.chunk;
  s.causal = c.causal;
  s.momentum = c.momentum;
  s.muon = c.muon;
  s.norm = c.norm;
  return s;
}

lact::Inputs<double> inputs_of(const Case& c, const Data& x) {
  return {x.w0.data(), x.w1.data(), x.w2.data(),  x.q.data(),   x.k.data(),
          x.v.data(),  x.lr0.data(), x.lr1.data(), x.lr2.data(), c.momentum ? x.mom.data() : nullptr};
}

std::vector<std::vector<double>> fused_result(const Case& c, const Data& x, bool keep_products = false) {
  const lact::Shape s = shape_of(c);
  const lact::Inputs<double> in = inputs_of(c, x);
  const double nan = std::nan("");
  const int64_t P = c.d * c.dh, TD = c.T * c.d;
  std::vector<std::vector<double>> out(11);
  for (int i : {0, 4, 5, 6}) out[size_t(i)].assign(size_t(c.B * TD), nan);
  for (int i : {1, 2, 3}) out[size_t(i)].assign(size_t(c.B * P), nan);
  for (int i : {7, 8, 9, 10}) out[size_t(i)].assign(size_t(c.B * c.T), c.momentum || i < 10 ? nan : 0.0);
  lact::Grads<double> g;
  g.w0 = out[1].data();
  g.w1 = out[2].data();
  g.w2 = out[3].data();
  g.q = out[4].data();
  g.k = out[5].data();
  g.v = out[6].data();
  g.lr0 = out[7].data();
  g.lr1 = out[8].data();
  g.lr2 = out[9].data();
  if (c.momentum) g.mom = out[10].data();
  lact::fused_cpu<double>(s, in, out[0].data(), x.go.data(), &g, lact::Bf16Emulation{}, keep_products);
  return out;
}

const char* kNames[11] = {"o", "grad_w0", "grad_w1", "grad_w2", "grad_q", "grad_k",
                          "grad_v", "grad_lr0", "grad_lr1", "grad_lr2", "grad_momentum"};

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  int i = 0;
  for (bool causal : {true, false})
    for (engine::WeightNorm norm : {engine::WeightNorm::Post, engine::WeightNorm::Pre, engine::WeightNorm::None})
      for (bool momentum : {false, true})
        for (bool muon : {false, true})
          for (int64_t chunk : {4, 5, 1, 16}) {
            // d < dh and d > dh in turn, so that Muon's transposition is exercised both ways.
            const bool wide = (i++ % 2) == 0;
            cases.push_back({2, 12, wide ? 5 : 7, wide ? 7 : 5, chunk, causal, momentum, muon, norm});
          }
  return cases;
}

}  // namespace

TEST(LactFused, MatchesEngineFloat64) {
  int checked = 0;
  double worst = 0;
  std::string worst_what;
  for (const Case& c : all_cases()) {
    Data x = make_data(c, 1000 + uint64_t(checked));
    auto ref = engine_reference(c, x);
    auto got = fused_result(c, x);
    // With Muon, C = 1 and no momentum every update is lr times a rank-1 matrix, and NS5 is invariant to
    // its scale except through the 1e-7 of its normalization: dL/dlr is suppressed to O(1e-7 / ||dW||) and
    // comes out of the cancellation of O(1) terms in either implementation, so float64 rounding alone
    // leaves ~1e-8 of its own (tiny) norm. There the rates' gradients are measured against the norm of
    // dL/dv (and checked to be that small).
    const bool scale_invariant = c.muon && c.chunk == 1 && !c.momentum;
    const double gv_norm = norm(ref[6]);
    for (int i = 0; i < 11; ++i) {
      if (i == 10 && !c.momentum) continue;
      double e = rel_err(got[size_t(i)], ref[size_t(i)]);
      if (scale_invariant && i >= 7 && i <= 9) {
        EXPECT_LE(norm(ref[size_t(i)]), 1e-3 * gv_norm) << c.name() << ": " << kNames[i] << " not suppressed";
        e = abs_err(got[size_t(i)], ref[size_t(i)]) / gv_norm;
      }
      EXPECT_LE(e, 1e-10) << c.name() << ": " << kNames[i] << " relative error " << e;
      if (e > worst) {
        worst = e;
        worst_what = c.name() + " " + kNames[i];
      }
    }
    ++checked;
  }
  EXPECT_EQ(checked, 96);
  std::printf("lact fused vs engine (float64): %d configs, worst relative error %.3g (%s)\n", checked, worst,
              worst_what.c_str());
}

// Larger shapes with several chunks and equal widths (no transposition in NS5), all features on.
TEST(LactFused, MatchesEngineLongerSequence) {
  for (engine::WeightNorm norm : {engine::WeightNorm::Post, engine::WeightNorm::Pre})
    for (bool causal : {true, false}) {
      Case c{3, 40, 6, 6, 8, causal, true, true, norm};
      Data x = make_data(c, 7);
      auto ref = engine_reference(c, x);
      auto got = fused_result(c, x);
      for (int i = 0; i < 11; ++i) {
        const double e = rel_err(got[size_t(i)], ref[size_t(i)]);
        EXPECT_LE(e, 1e-10) << c.name() << ": " << kNames[i] << " relative error " << e;
      }
    }
}

// Forward without gradients (ping-pong states) gives the same output as with them.
TEST(LactFused, ForwardOnlyMatchesEngine) {
  for (bool causal : {true, false}) {
    Case c{2, 23, 5, 7, 4, causal, true, true, engine::WeightNorm::Pre};
    Data x = make_data(c, 3);
    auto ref = engine_reference(c, x);
    std::vector<double> o(size_t(c.B * c.T * c.d), std::nan(""));
    lact::fused_cpu<double>(shape_of(c), inputs_of(c, x), o.data());
    EXPECT_LE(rel_err(o, ref[0]), 1e-12) << c.name();
  }
}

// The streaming API (generation: token by token, one chunk update at a time) gives the causal forward exactly:
// every norm, with and without momentum and Muon, T not a multiple of the chunk.
TEST(LactFused, StreamingMatchesForward) {
  for (engine::WeightNorm norm : {engine::WeightNorm::Post, engine::WeightNorm::Pre, engine::WeightNorm::None})
    for (bool momentum : {true, false})
      for (bool muon : {false, true}) {
        Case c{2, 23, 5, 7, 4, true, momentum, muon, norm};
        Data x = make_data(c, 11);
        const lact::Shape s = shape_of(c);
        const lact::Inputs<double> in = inputs_of(c, x);
        std::vector<double> ref(size_t(c.B * c.T * c.d)), got(ref.size(), std::nan(""));
        lact::fused_cpu<double>(s, in, ref.data());
        lact::stream_cpu<double>(s, in, got.data());
        EXPECT_LE(rel_err(got, ref), 1e-13) << c.name();
      }
}

namespace {

// Token rows [t0, t1) of every head of a [B, T, width] tensor.
std::vector<double> head_rows(const Case& c, const std::vector<double>& v, int64_t width, int64_t t0, int64_t t1) {
  std::vector<double> out;
  for (int64_t b = 0; b < c.B; ++b)
    out.insert(out.end(), v.begin() + (b * c.T + t0) * width, v.begin() + (b * c.T + t1) * width);
  return out;
}

// Rows [r0, r1) of a matrix.
ag::Mat<double> mat_rows(const ag::Mat<double>& m, int64_t r0, int64_t r1) {
  ag::Mat<double> r(r1 - r0, m.cols);
  std::copy(m.row(r0), m.row(r0) + (r1 - r0) * m.cols, r.data.begin());
  return r;
}

// The data of tokens [t0, t1) (a shard): the per-token tensors cut, the initial weights as they are.
Data token_range(const Case& c, const Data& x, int64_t t0, int64_t t1) {
  Data y = x;
  for (auto [field, width] : {std::pair{&Data::q, c.d}, {&Data::k, c.d}, {&Data::v, c.d}, {&Data::go, c.d},
                              {&Data::lr0, int64_t(1)}, {&Data::lr1, int64_t(1)}, {&Data::lr2, int64_t(1)},
                              {&Data::mom, int64_t(1)}})
    y.*field = head_rows(c, x.*field, width, t0, t1);
  return y;
}

// o = W1 (silu(W0 q) * (W2 q)) with the initial weights, for the first n tokens of every head: plain loops.
std::vector<double> apply_initial_weights(const Case& c, const Data& x, int64_t n) {
  const int64_t d = c.d, dh = c.dh, P = d * dh;
  std::vector<double> o(size_t(c.B * n * d), 0.0);
  std::vector<double> a(static_cast<size_t>(dh));
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t t = 0; t < n; ++t) {
      const double* q = x.q.data() + (b * c.T + t) * d;
      for (int64_t i = 0; i < dh; ++i) {
        double g = 0, h = 0;
        for (int64_t j = 0; j < d; ++j) {
          g += x.w0[size_t(b * P + i * d + j)] * q[j];
          h += x.w2[size_t(b * P + i * d + j)] * q[j];
        }
        a[size_t(i)] = g / (1 + std::exp(-g)) * h;
      }
      for (int64_t j = 0; j < d; ++j)
        for (int64_t i = 0; i < dh; ++i)
          o[size_t((b * n + t) * d + j)] += x.w1[size_t(b * P + j * dh + i)] * a[size_t(i)];
    }
  return o;
}

}  // namespace

// Pre-norm as the public prenorm LaCT operator: the accumulator starts at W⁰ and, until the first update, the
// memory applies W⁰ itself, not its row-normalized copy (which differs by the 1e-5 of the normalization). So the
// first chunk's output is the plain apply with W⁰ -- bit for bit that of the same run without weight norm -- in
// the tape engine, the explicit operator (with and without gradients) and its streaming API; with C >= T no
// update happens and the whole output is that of no weight norm. The first inner gradient is taken at W⁰ too
// (what the bidirectional program's first chunk applies with depends on it): after one update the pre-norm
// accumulator is bit for bit the state of the same update without weight norm.
TEST(LactFused, PreNormUsesInitialWeightsUntilTheFirstUpdate) {
  double worst = 0;
  for (int64_t chunk : {1, 4, 5, 12, 16})  // T = 12
    for (bool muon : {false, true}) {
      const Case pre{2, 12, 5, 7, chunk, true, true, muon, engine::WeightNorm::Pre};
      Case none = pre;
      none.norm = engine::WeightNorm::None;
      const Data x = make_data(pre, 40 + uint64_t(chunk));
      const int64_t n = std::min(chunk, pre.T);
      auto forward_only = [&](const Case& c, bool streamed) {
        std::vector<double> o(size_t(c.B * c.T * c.d), std::nan(""));
        if (streamed) lact::stream_cpu<double>(shape_of(c), inputs_of(c, x), o.data());
        else lact::fused_cpu<double>(shape_of(c), inputs_of(c, x), o.data());
        return o;
      };
      const struct {
        const char* name;
        std::vector<double> pre, none;
      } runs[] = {{"engine", engine_reference(pre, x)[0], engine_reference(none, x)[0]},
                  {"fused", fused_result(pre, x)[0], fused_result(none, x)[0]},
                  {"fused forward only", forward_only(pre, false), forward_only(none, false)},
                  {"fused streaming", forward_only(pre, true), forward_only(none, true)}};
      const std::vector<double> plain = apply_initial_weights(pre, x, n);
      for (const auto& r : runs) {
        const std::vector<double> first = head_rows(pre, r.pre, pre.d, 0, n);
        EXPECT_TRUE(first == head_rows(pre, r.none, pre.d, 0, n)) << r.name << " " << pre.name();
        const double e = rel_err(first, plain);
        EXPECT_LE(e, 1e-15) << r.name << " " << pre.name();
        worst = std::max(worst, e);
        if (chunk >= pre.T) EXPECT_TRUE(r.pre == r.none) << r.name << " " << pre.name();
      }
      // The first update (inner gradient at W⁰) through the engine's streaming primitive.
      const engine::MemoryConfig cfg_pre = engine_config(pre), cfg_none = engine_config(none);
      const engine::SequenceInputs<double> in = engine_inputs(pre, x, 0);
      engine::MemoryState<double> s_pre = engine::initial_state(cfg_pre, in.w0);
      engine::MemoryState<double> s_none = engine::initial_state(cfg_none, in.w0);
      for (auto [cfg, st] : {std::pair{&cfg_pre, &s_pre}, {&cfg_none, &s_none}})
        engine::state_update(*cfg, *st, in.w0, mat_rows(in.k, 0, n), mat_rows(in.v, 0, n), mat_rows(in.rates, 0, n),
                             mat_rows(in.momentum_gate, 0, n), ag::Mat<double>());
      for (size_t i = 0; i < 3; ++i)
        EXPECT_TRUE(s_pre.weights[i].data == s_none.weights[i].data) << "weight " << i << " " << pre.name();
    }
  std::printf("pre-norm first chunk vs the plain apply with W0 (loops): worst relative error %.3g\n", worst);
}

// Programs with resets (back to W⁰, i.e. "not updated" again, so the chunk after a reset applies W⁰ itself): the
// tape engine on causal_program(T, C, S) (sequential and split into shards), the explicit operator on each shard
// (a shard is a fresh causal run from W⁰; W⁰'s gradient summed over the shards) and streaming -- Fused's stream
// API re-initialized at every shard start, and the engine's state primitives token by token as
// infer::StreamingModel runs them -- agree: outputs to 1e-13, gradients to 1e-10.
TEST(LactFused, PreNormWithResetsEngineFusedAndStreamingAgree) {
  double worst_o = 0, worst_grad = 0;
  const int64_t S = 10;  // shards [0,10), [10,20), [20,23): the last one is shorter than a chunk (no update)
  for (bool muon : {false, true}) {
    const Case c{2, 23, 5, 7, 4, true, true, muon, engine::WeightNorm::Pre};
    const Data x = make_data(c, 90 + uint64_t(muon));
    const engine::Program prog = engine::causal_program(c.T, c.chunk, S);
    const auto ref = engine_reference(c, x, &prog);

    // The explicit operator, shard by shard.
    std::vector<std::vector<double>> sharded(11);
    for (size_t i = 0; i < 11; ++i) sharded[i].assign(ref[i].size(), 0.0);
    for (int64_t t0 = 0; t0 < c.T; t0 += S) {
      const int64_t t1 = std::min(c.T, t0 + S);
      Case sc = c;
      sc.T = t1 - t0;
      const auto part = fused_result(sc, token_range(c, x, t0, t1));
      for (int i = 0; i < 11; ++i) {
        if (i >= 1 && i <= 3) {  // W⁰: summed over shards
          for (size_t j = 0; j < part[size_t(i)].size(); ++j) sharded[size_t(i)][j] += part[size_t(i)][j];
          continue;
        }
        const int64_t width = (i == 0 || (i >= 4 && i <= 6)) ? c.d : 1;
        for (int64_t b = 0; b < c.B; ++b)
          std::copy(part[size_t(i)].begin() + b * sc.T * width, part[size_t(i)].begin() + (b + 1) * sc.T * width,
                    sharded[size_t(i)].begin() + (b * c.T + t0) * width);
      }
    }
    for (int i = 0; i < 11; ++i) {
      const double e = rel_err(sharded[size_t(i)], ref[size_t(i)]);
      EXPECT_LE(e, i == 0 ? 1e-13 : 1e-10) << c.name() << ": fused by shard, " << kNames[i] << " relative error " << e;
      double& w = i == 0 ? worst_o : worst_grad;
      w = std::max(w, e);
    }

    // Fused's streaming API with a reset (stream_init) at every shard start.
    std::vector<double> streamed(ref[0].size(), std::nan(""));
    lact::stream_cpu<double>(shape_of(c), inputs_of(c, x), streamed.data(), S);
    EXPECT_LE(rel_err(streamed, ref[0]), 1e-13) << c.name() << ": fused streaming with resets";
    worst_o = std::max(worst_o, rel_err(streamed, ref[0]));

    // The engine: batched and split into shards (each from its own initial state) equals the sequential run, and
    // its streaming primitives token by token (reset at every shard end, update at every full chunk) too.
    const engine::MemoryConfig cfg = engine_config(c);
    std::vector<engine::SequenceInputs<double>> items;
    for (int64_t b = 0; b < c.B; ++b) items.push_back(engine_inputs(c, x, b));
    const auto split = engine::run_forward_batch<double>(cfg, prog, items, nullptr, {/*split_shards=*/true});
    for (int64_t b = 0; b < c.B; ++b) {
      const engine::SequenceInputs<double>& in = items[size_t(b)];
      const std::vector<double> head_ref(ref[0].begin() + b * c.T * c.d, ref[0].begin() + (b + 1) * c.T * c.d);
      EXPECT_TRUE(split[size_t(b)].data == head_ref) << c.name() << ": engine split into shards, head " << b;
      engine::MemoryState<double> st = engine::initial_state(cfg, in.w0);
      std::vector<double> o;
      int64_t pending = 0;
      for (int64_t t = 0; t < c.T; ++t) {
        const ag::Mat<double> y = engine::state_apply(cfg, st, in.w0, mat_rows(in.q, t, t + 1));
        o.insert(o.end(), y.data.begin(), y.data.end());
        ++pending;
        if ((t + 1) % S == 0) {
          st = engine::initial_state(cfg, in.w0);
          pending = 0;
        } else if (pending == c.chunk) {
          const int64_t r0 = t + 1 - pending, r1 = t + 1;
          engine::state_update(cfg, st, in.w0, mat_rows(in.k, r0, r1), mat_rows(in.v, r0, r1),
                               mat_rows(in.rates, r0, r1), mat_rows(in.momentum_gate, r0, r1), ag::Mat<double>());
          pending = 0;
        }
      }
      EXPECT_LE(rel_err(o, head_ref), 1e-13) << c.name() << ": engine streaming primitives, head " << b;
      worst_o = std::max(worst_o, rel_err(o, head_ref));
    }
  }
  std::printf("pre-norm with resets, against the tape engine: outputs worst relative error %.3g, gradients %.3g\n",
              worst_o, worst_grad);
}

// Memory stays linear in T/C: the saved states grow by one per chunk, the work buffers do not grow with T.
// At b*H = 4, d = dh = 384, C = 2048, T = 1M (fp32): 512 states of weights + momentum (7.25 GB) plus chunk
// buffers; with q, k, v, grad_o, o and their gradients (51.5 GB) that fits one 80 GB GPU.
TEST(LactFused, WorkspaceLinearInChunks) {
  lact::Shape s;
  s.B = 4;
  s.d = s.dh = 384;
  s.chunk = 2048;
  s.momentum = true;
  s.muon = true;
  s.T = int64_t(1) << 20;
  const int64_t w1m = lact::workspace_elements(s, true);
  s.T = int64_t(1) << 21;
  const int64_t w2m = lact::workspace_elements(s, true);
  const int64_t per_state = 2 * 4 * 3 * 384 * 384;  // weights + momentum, 4 heads
  EXPECT_EQ(w2m - w1m, 512 * (per_state + 4));  // and the 4 heads' momentum gate means of a chunk
  const double bytes_1m = double(w1m) * 4;
  std::printf("lact workspace at bh=4 d=dh=384 C=2048 T=1M, momentum+Muon, fwd+bwd: %.3f GB\n", bytes_1m / 1e9);
  EXPECT_LT(bytes_1m, 8.0e9);
  const double io = 8.0 * 4 * double(int64_t(1) << 20) * 384 * 4 + 9.0 * 4 * double(int64_t(1) << 20) * 4;
  EXPECT_LT(bytes_1m + io, 78.0 * double(1ull << 30));
  // Forward only: two states, independent of T, and the gate means (4 heads a chunk).
  s.T = int64_t(1) << 20;
  const int64_t f1m = lact::workspace_elements(s, false);
  s.T = int64_t(1) << 21;
  EXPECT_EQ(lact::workspace_elements(s, false), f1m + 512 * 4);
}

// Several forwards kept at once in records of one Fused (the GPU model's --recompute none: every layer's forward,
// then the backwards in reverse, on shared work buffers) give each run the very bits it gets alone, in every
// program, weight norm, momentum and Muon combination.
TEST(LactFused, RecordsKeepSeveralForwards) {
  int checked = 0;
  for (const Case& c : all_cases()) {
    SCOPED_TRACE("case " + std::to_string(checked));
    const lact::Shape s = shape_of(c);
    const int64_t P = c.d * c.dh, TD = c.T * c.d;
    std::vector<Data> xs;
    for (int r = 0; r < 3; ++r) xs.push_back(make_data(c, 5000 + uint64_t(10 * checked + r)));
    std::vector<std::vector<std::vector<double>>> kept(3);
    std::vector<lact::Inputs<double>> in;
    std::vector<double*> o;
    std::vector<const double*> go;
    std::vector<lact::Grads<double>> g(3);
    for (size_t r = 0; r < 3; ++r) {
      std::vector<std::vector<double>>& out = kept[r];
      out.resize(11);
      for (int i : {0, 4, 5, 6}) out[size_t(i)].assign(size_t(c.B * TD), std::nan(""));
      for (int i : {1, 2, 3}) out[size_t(i)].assign(size_t(c.B * P), std::nan(""));
      for (int i : {7, 8, 9, 10})
        out[size_t(i)].assign(size_t(c.B * c.T), c.momentum || i < 10 ? std::nan("") : 0.0);
      g[r] = {out[1].data(), out[2].data(), out[3].data(), out[4].data(), out[5].data(),
              out[6].data(), out[7].data(), out[8].data(), out[9].data(), c.momentum ? out[10].data() : nullptr};
      in.push_back(inputs_of(c, xs[r]));
      o.push_back(out[0].data());
      go.push_back(xs[r].go.data());
    }
    lact::fused_cpu_records<double>(s, in, o, go, g);
    for (size_t r = 0; r < 3; ++r) {
      const std::vector<std::vector<double>> alone = fused_result(c, xs[r]);
      for (int i = 0; i < 11; ++i) {
        if (i == 10 && !c.momentum) continue;
        ASSERT_EQ(alone[size_t(i)].size(), kept[r][size_t(i)].size());
        EXPECT_EQ(0, std::memcmp(alone[size_t(i)].data(), kept[r][size_t(i)].data(),
                                 sizeof(double) * alone[size_t(i)].size()))
            << "run " << r << ", " << kNames[i];
      }
    }
    ++checked;
  }
  EXPECT_EQ(checked, 96);
  // A record needs gradients (a forward without them keeps nothing for a backward).
  lact::Shape s = shape_of(all_cases().front());
  EXPECT_THROW(lact::workspace_elements(s, false, 2), Error);
  // Each record adds its states only: weights and updates at every chunk boundary, and the weight-norm targets.
  const int64_t one = lact::workspace_elements(s, true), two = lact::workspace_elements(s, true, 2);
  const int64_t per_record =
      2 * s.num_versions() * s.B * 3 * s.P() + (s.norm != engine::WeightNorm::None ? s.B * s.state_rows() : 0);
  EXPECT_EQ(two - one, per_record);
}

// Kept products (Fused's keep_products: the backward reads each chunk's [g|h] of q and k and V W1 from the
// forward; the update's lr1 a and R it recomputes beside their cotangents either way) give the bits of the
// recomputation, in every program, weight norm, momentum and Muon combination; they cost B T 5 dh elements and
// spare the chunk buffers of the apply's and the update's [g|h] and V W1.
TEST(LactFused, KeptProductsGiveTheRecomputedBits) {
  int checked = 0;
  for (const Case& c : all_cases()) {
    SCOPED_TRACE("case " + std::to_string(checked));
    const Data x = make_data(c, 7000 + uint64_t(checked));
    const std::vector<std::vector<double>> recomputed = fused_result(c, x), kept = fused_result(c, x, true);
    for (int i = 0; i < 11; ++i) {
      if (i == 10 && !c.momentum) continue;
      ASSERT_EQ(recomputed[size_t(i)].size(), kept[size_t(i)].size());
      EXPECT_EQ(0, std::memcmp(recomputed[size_t(i)].data(), kept[size_t(i)].data(),
                               sizeof(double) * kept[size_t(i)].size()))
          << kNames[i];
    }
    ++checked;
  }
  EXPECT_EQ(checked, 96);
  const lact::Shape s = shape_of(all_cases().front());
  const int64_t C = std::min(s.chunk, s.T);
  EXPECT_EQ(lact::workspace_elements(s, true, 1, true) - lact::workspace_elements(s, true),
            s.B * s.T * 5 * s.dh - s.B * C * 5 * s.dh);
  EXPECT_EQ(lact::workspace_elements(s, false, 1, true), lact::workspace_elements(s, false));  // nothing to keep
}

// round_bf16 (the twin's emulation of the CUDA backend's bf16 operands): round to nearest, ties to even, as
// __float2bfloat16. bf16 keeps 7 fraction bits, so the spacing at 1 is 2^-7.
TEST(LactFused, RoundBf16KnownValues) {
  const float u = std::ldexp(1.0f, -7);  // ulp of bf16 at 1
  EXPECT_EQ(lact::round_bf16(1.0f), 1.0f);
  EXPECT_EQ(lact::round_bf16(1.0f + std::ldexp(1.0f, -8)), 1.0f);                         // tie, to even (down)
  EXPECT_EQ(lact::round_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 1.0f + 2 * u);             // tie, to even (up)
  EXPECT_EQ(lact::round_bf16(1.0f + 3 * std::ldexp(1.0f, -9)), 1.0f + u);                 // above the tie
  EXPECT_EQ(lact::round_bf16(1.0f + std::ldexp(1.0f, -9)), 1.0f);                         // below the tie
  EXPECT_EQ(lact::round_bf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)), 1.0f + u);
  EXPECT_EQ(lact::round_bf16(-(1.0f + 3 * std::ldexp(1.0f, -9))), -(1.0f + u));           // symmetric
  EXPECT_EQ(lact::round_bf16(3.140625f), 3.140625f);                                      // representable
  EXPECT_EQ(lact::round_bf16(3.14159265f), 3.140625f);
  EXPECT_EQ(lact::round_bf16(0.0f), 0.0f);
  EXPECT_TRUE(std::signbit(lact::round_bf16(-0.0f)));
  EXPECT_EQ(lact::round_bf16(INFINITY), INFINITY);
  EXPECT_EQ(lact::round_bf16(-INFINITY), -INFINITY);
  EXPECT_EQ(lact::round_bf16(3.4028235e38f), INFINITY);  // FLT_MAX rounds past bf16's largest finite
  EXPECT_TRUE(std::isnan(lact::round_bf16(std::nanf(""))));
  EXPECT_EQ(lact::round_bf16(1e-45f), 0.0f);  // smallest subnormal: below half of bf16's
  // On random floats: idempotent, within half an ulp (2^-8 relative), and only 8 significant bits kept.
  Rng r(11);
  for (int i = 0; i < 100000; ++i) {
    const float x = float(r.normal() * std::exp(r.uniform(-20, 20)));
    const float y = lact::round_bf16(x);
    EXPECT_EQ(lact::round_bf16(y), y);
    EXPECT_LE(std::fabs(double(y) - double(x)), std::ldexp(std::fabs(double(x)), -8) * (1 + 1e-12));
    uint32_t bits;
    std::memcpy(&bits, &y, sizeof bits);
    EXPECT_EQ(bits & 0xffffu, 0u);
  }
}

namespace {
// The twin in T on the inputs x (rounded to T), results widened to double; bf16: with the bf16-operand emulation,
// and with outputs also the bf16 product outputs'. `explicit_flag` passes the emulation even when off (to compare
// with the default argument).
template <class T>
std::vector<std::vector<double>> twin(const Case& c, const Data& xd, bool bf16, bool explicit_flag,
                                      bool outputs = false, bool ns5_fp16 = false, bool ns5_tf32 = false) {
  auto f = [](const std::vector<double>& v) { return std::vector<T>(v.begin(), v.end()); };
  std::vector<T> w0 = f(xd.w0), w1 = f(xd.w1), w2 = f(xd.w2), q = f(xd.q), k = f(xd.k), v = f(xd.v),
                 lr0 = f(xd.lr0), lr1 = f(xd.lr1), lr2 = f(xd.lr2), mom = f(xd.mom), go = f(xd.go);
  const lact::Shape s = shape_of(c);
  lact::Inputs<T> in{w0.data(),  w1.data(),  w2.data(),  q.data(), k.data(), v.data(),
                     lr0.data(), lr1.data(), lr2.data(), c.momentum ? mom.data() : nullptr};
  const int64_t P = c.d * c.dh, TD = c.T * c.d;
  std::vector<std::vector<T>> out(11);
  for (int i : {0, 4, 5, 6}) out[size_t(i)].assign(size_t(c.B * TD), T(0));
  for (int i : {1, 2, 3}) out[size_t(i)].assign(size_t(c.B * P), T(0));
  for (int i : {7, 8, 9, 10}) out[size_t(i)].assign(size_t(c.B * c.T), T(0));
  lact::Grads<T> g{out[1].data(), out[2].data(), out[3].data(), out[4].data(), out[5].data(),
                   out[6].data(), out[7].data(), out[8].data(), out[9].data(),
                   c.momentum ? out[10].data() : nullptr};
  if (bf16 || explicit_flag || ns5_fp16 || ns5_tf32)
    lact::fused_cpu<T>(s, in, out[0].data(), go.data(), &g, lact::Bf16Emulation{bf16, outputs, ns5_fp16, ns5_tf32});
  else lact::fused_cpu<T>(s, in, out[0].data(), go.data(), &g);
  std::vector<std::vector<double>> r(11);
  for (size_t i = 0; i < 11; ++i) r[i].assign(out[i].begin(), out[i].end());
  return r;
}
}  // namespace

// Bf16Emulation::operands: off (explicitly) is bit for bit the default (the plain BLAS path); on, every output moves
// into the bf16 regime (relative error against float64 ~1e-3..2e-2, not float32's ~1e-6) and stays finite.
TEST(LactFused, Bf16OperandEmulation) {
  double worst_on = 0, best_on = INFINITY;
  for (bool causal : {true, false})
    for (bool muon : {false, true}) {
      Case c{2, 24, 12, 20, 8, causal, true, muon, engine::WeightNorm::Post};
      const Data x = make_data(c, 500 + uint64_t(causal) * 2 + uint64_t(muon));
      for (bool dbl : {false, true}) {
        const auto def = dbl ? twin<double>(c, x, false, false) : twin<float>(c, x, false, false);
        const auto off = dbl ? twin<double>(c, x, false, true) : twin<float>(c, x, false, true);
        for (int i = 0; i < 11; ++i)
          EXPECT_TRUE(def[size_t(i)] == off[size_t(i)]) << c.name() << " " << kNames[i] << " (option off differs)";
      }
      if (muon) continue;  // NS5 amplifies bf16 rounding (the CUDA backend refuses bf16 with Muon)
      const auto ref = twin<double>(c, x, false, false);
      const auto f32 = twin<float>(c, x, false, false);
      const auto on = twin<float>(c, x, true, true);
      const auto on64 = twin<double>(c, x, true, true);
      for (int i = 0; i < 11; ++i) {
        const double e32 = rel_err(f32[size_t(i)], ref[size_t(i)]), e = rel_err(on[size_t(i)], ref[size_t(i)]);
        const double e64 = rel_err(on64[size_t(i)], ref[size_t(i)]);
        EXPECT_LE(e32, 1e-4) << c.name() << " " << kNames[i];
        EXPECT_LE(e, 5e-2) << c.name() << " " << kNames[i] << " (bf16 emulation, float)";
        EXPECT_LE(e64, 5e-2) << c.name() << " " << kNames[i] << " (bf16 emulation, double)";
        EXPECT_GT(e, 10 * e32) << c.name() << " " << kNames[i] << " (bf16 emulation had no effect)";
        worst_on = std::max(worst_on, e);
        best_on = std::min(best_on, e);
      }
    }
  std::printf("lact twin with bf16 operands (float) vs float64: relative errors %.3g .. %.3g\n", best_on, worst_on);
}

// The bf16 product outputs (Bf16Emulation::outputs, the CUDA bf16 mode's default: [g|h], V W1, dR, V dD1 and dO W1
// stored in bf16), on the configurations and the data of the GPU's bf16 parity test (CudaLact.Bf16MatchesCpuReference:
// B 3, T 96, d 12, dh 20, C 48 / 60 / 1 / 128, every program, weight norm and momentum; keys and queries of norm about
// 1, inputs representable in float): every output within 2e-2 of float64 or within 2x the operand-only emulation's
// error (the known ill-conditioned grad_momentum of some momentum configs is over 2e-2 with the operands alone), and
// the rounding takes effect (the results differ from the operand-only ones). Each product output is rounded once, as
// an fp32 sum becomes a bf16 C in cuBLAS: one more bf16 rounding of values the operands' rounding already perturbs by
// as much. The worst errors and the worst ratio are printed.
TEST(LactFused, Bf16OutputsEmulation) {
  double worst_ops = 0, worst = 0, worst_ratio = 0;
  int configs = 0, differ = 0;
  for (bool causal : {true, false})
    for (engine::WeightNorm norm : {engine::WeightNorm::Post, engine::WeightNorm::Pre, engine::WeightNorm::None})
      for (bool momentum : {false, true})
        for (int64_t chunk : {48, 60, 1, 128}) {
          const Case c{3, 96, 12, 20, chunk, causal, momentum, false, norm};
          Rng r(9100 + uint64_t(configs));
          auto normal = [&](int64_t n, double sd) {
            std::vector<double> x(static_cast<size_t>(n));
            for (auto& e : x) e = double(float(r.normal() * sd));
            return x;
          };
          auto uniform = [&](int64_t n, double lo, double hi) {
            std::vector<double> x(static_cast<size_t>(n));
            for (auto& e : x) e = double(float(r.uniform(lo, hi)));
            return x;
          };
          const int64_t BT = c.B * c.T, P = c.d * c.dh;
          const double sd = 1.0 / std::sqrt(double(c.d)), sh = 1.0 / std::sqrt(double(c.dh));
          Data x;
          x.w0 = normal(c.B * P, sd);
          x.w1 = normal(c.B * P, sh);
          x.w2 = normal(c.B * P, sd);
          x.q = normal(BT * c.d, sd);
          x.k = normal(BT * c.d, sd);
          x.v = normal(BT * c.d, sd);
          x.lr0 = uniform(BT, 0.01, 0.1);
          x.lr1 = uniform(BT, 0.01, 0.1);
          x.lr2 = uniform(BT, 0.01, 0.1);
          x.mom = uniform(BT, 0.5, 0.95);
          x.go = normal(BT * c.d, 1.0);
          const auto ref = twin<double>(c, x, false, false);
          const auto ops = twin<float>(c, x, true, true);
          const auto out = twin<float>(c, x, true, true, /*outputs=*/true);
          bool changed = false;
          for (int i = 0; i < 11; ++i) {
            if (i == 10 && !c.momentum) continue;
            const double e_ops = rel_err(ops[size_t(i)], ref[size_t(i)]), e = rel_err(out[size_t(i)], ref[size_t(i)]);
            EXPECT_LE(e, std::max(2e-2, 2 * e_ops))
                << c.name() << " " << kNames[i] << " (operands only: " << e_ops << ")";
            changed = changed || ops[size_t(i)] != out[size_t(i)];
            worst_ops = std::max(worst_ops, e_ops);
            worst = std::max(worst, e);
            if (e_ops > 0) worst_ratio = std::max(worst_ratio, e / e_ops);
          }
          EXPECT_TRUE(changed) << c.name() << " (the bf16 outputs had no effect)";
          differ += changed;
          ++configs;
        }
  EXPECT_EQ(configs, 48);
  EXPECT_EQ(differ, configs);
  std::printf("lact twin, bf16 emulation vs float64 on the GPU parity test's configs: worst relative error %.3g with "
              "the operands rounded, %.3g with the product outputs too; worst ratio %.3g\n",
              worst_ops, worst, worst_ratio);
}

// TTT_LACT_B16_OUTPUTS=0 turns the bf16 product outputs off (for the CUDA runners and the memory estimate alike);
// unset or anything else leaves them on. Each buffer of Fused is counted once: an operand or a product output.
TEST(LactFused, Bf16OutputsSwitchAndCounts) {
  const char* was = std::getenv("TTT_LACT_B16_OUTPUTS");
  const std::string saved = was ? was : "";
  ::setenv("TTT_LACT_B16_OUTPUTS", "0", 1);
  EXPECT_FALSE(lact::bf16_outputs_from_env());
  ::setenv("TTT_LACT_B16_OUTPUTS", "1", 1);
  EXPECT_TRUE(lact::bf16_outputs_from_env());
  ::unsetenv("TTT_LACT_B16_OUTPUTS");
  EXPECT_TRUE(lact::bf16_outputs_from_env());
  if (was) ::setenv("TTT_LACT_B16_OUTPUTS", saved.c_str(), 1);
  const lact::Shape s = shape_of(all_cases().front());
  const int64_t C = std::min(s.chunk, s.T);
  for (const bool keep : {false, true}) {
    EXPECT_EQ(lact::workspace_operand_elements(s, true, 1, keep) +
                  lact::workspace_product_output_elements(s, true, 1, keep) + lact::workspace_ns5_elements(s, true),
              lact::workspace_elements(s, true, 1, keep));
  }
  // Muon's NS5 buffers (lact::Buffer::Ns5): X_0..X_4, A_0..A_4, B_0..B_4, and with gradients dX (two), dA, dB; X_5
  // (the update) is an operand.
  lact::Shape m = s;
  m.muon = true;
  const int64_t P = m.d * m.dh, p = std::min(m.d, m.dh);
  EXPECT_EQ(lact::workspace_ns5_elements(m, false), 3 * m.B * (5 * P + 10 * p * p));
  EXPECT_EQ(lact::workspace_ns5_elements(m, true), 3 * m.B * (7 * P + 12 * p * p));
  EXPECT_EQ(lact::workspace_operand_elements(m, true) + lact::workspace_product_output_elements(m, true) +
                lact::workspace_ns5_elements(m, true),
            lact::workspace_elements(m, true));
  // Recomputed: the apply's and the update's [g|h], V W1, dR, V dD1, dO W1 of a chunk; kept: [g|h] of q and k and
  // V W1 of every token instead of the first three.
  EXPECT_EQ(lact::workspace_product_output_elements(s, true), s.B * C * (2 + 2 + 1 + 2 + 1 + 1) * s.dh);
  EXPECT_EQ(lact::workspace_product_output_elements(s, true, 1, true), s.B * s.T * 5 * s.dh + s.B * C * 4 * s.dh);
  EXPECT_EQ(lact::workspace_product_output_elements(s, false), s.B * C * 5 * s.dh);
}


TEST(LactFused, RoundFp16KnownValues) {
  const float u = std::ldexp(1.0f, -10);  // ulp of fp16 at 1
  EXPECT_EQ(round_to_fp16(1.0f), 1.0f);
  EXPECT_EQ(round_to_fp16(1.0f + std::ldexp(1.0f, -11)), 1.0f);                // tie, to even (down)
  EXPECT_EQ(round_to_fp16(1.0f + 3 * std::ldexp(1.0f, -11)), 1.0f + 2 * u);    // tie, to even (up)
  EXPECT_EQ(round_to_fp16(1.0f + 3 * std::ldexp(1.0f, -12)), 1.0f + u);        // above the tie
  EXPECT_EQ(round_to_fp16(-(1.0f + 3 * std::ldexp(1.0f, -12))), -(1.0f + u));  // symmetric
  EXPECT_EQ(round_to_fp16(3.14159265f), 3.140625f);
  EXPECT_EQ(round_to_fp16(65504.0f), 65504.0f);  // the largest finite
  EXPECT_EQ(round_to_fp16(65519.0f), 65504.0f);  // below the midpoint to 2^16
  EXPECT_EQ(round_to_fp16(65520.0f), INFINITY);  // the midpoint: to even, which is 2^16, out of range
  EXPECT_EQ(round_to_fp16(-1e6f), -INFINITY);
  EXPECT_EQ(round_to_fp16(std::ldexp(1.0f, -14)), std::ldexp(1.0f, -14));  // the smallest normal
  EXPECT_EQ(round_to_fp16(std::ldexp(1.0f, -24)), std::ldexp(1.0f, -24));  // the smallest subnormal
  EXPECT_EQ(round_to_fp16(std::ldexp(1.0f, -25)), 0.0f);                    // a tie with 0: to even
  EXPECT_EQ(round_to_fp16(std::ldexp(3.0f, -26)), std::ldexp(1.0f, -24));  // above it
  EXPECT_EQ(round_to_fp16(std::ldexp(5.0f, -25)), std::ldexp(2.0f, -24));  // 2.5 quanta: to even
  EXPECT_EQ(round_to_fp16(0.0f), 0.0f);
  EXPECT_TRUE(std::signbit(round_to_fp16(-0.0f)));
  EXPECT_EQ(round_to_fp16(INFINITY), INFINITY);
  EXPECT_TRUE(std::isnan(round_to_fp16(std::nanf(""))));
  // On random floats: idempotent; normals within half an ulp (2^-11 relative) with 11 significant bits kept;
  // subnormals on the grid of 2^-24 within half of it.
  Rng r(13);
  for (int i = 0; i < 100000; ++i) {
    const float x = float(r.normal() * std::exp(r.uniform(-20, 10)));
    const float y = round_to_fp16(x);
    EXPECT_EQ(round_to_fp16(y), y);
    const double ax = std::fabs(double(x));
    if (ax >= std::ldexp(1.0, -14)) {
      EXPECT_LE(std::fabs(double(y) - double(x)), std::ldexp(ax, -11) * (1 + 1e-12)) << x;
      int e = 0;
      const double m = std::frexp(std::fabs(double(y)), &e);
      EXPECT_EQ(std::ldexp(m, 11), std::floor(std::ldexp(m, 11))) << x;
    } else {
      EXPECT_LE(std::fabs(double(y) - double(x)), std::ldexp(1.0, -25)) << x;
      EXPECT_EQ(std::ldexp(double(y), 24), std::floor(std::ldexp(double(y), 24))) << x;
    }
  }
}

// fp16 NS5 storage (Bf16Emulation::ns5_fp16, the CUDA backend's LactOptions::ns5_fp16 with tf32 products) against
// its yardstick, tf32 NS5 (Bf16Emulation::ns5_tf32: the NS5 products' operands rounded to tf32, as the CUDA tf32 mode
// ran them), with Muon on configs that are well-conditioned in float32 (C >= 4 min(d, dh)): every output within 3x
// the yardstick's error where that is over 1e-3 (fp16 keeps tf32's 11 significant bits and also rounds each stored
// iterate once, half an ulp; measured: at most 1.2x), within 5e-2 of float64 (at d = 12, dh = 20 NS5 in either mode
// lands 1e-3..2e-2 from float64 on the bidirectional configs), and moved by the rounding (more than 10x float32's
// error). The adjoint runs scaled by a power of two (Fused::ns5_backward), so a loss gradient 2^40
// times larger or smaller gives the same bits divided by 2^40: unscaled, 2^40 would overflow fp16's 65504 and 2^-40
// flush to zero.
TEST(LactFused, Ns5Fp16Emulation) {
  double worst = 0, worst_tf32 = 0, worst_ratio = 0;
  int configs = 0;
  for (bool causal : {true, false})
    for (bool momentum : {false, true})
      for (engine::WeightNorm norm : {engine::WeightNorm::Post, engine::WeightNorm::None}) {
        Case c{2, 96, 12, 20, 48, causal, momentum, true, norm};
        Data x = make_data(c, 700 + uint64_t(configs));
        const auto ref = twin<double>(c, x, false, false);
        const auto f32 = twin<float>(c, x, false, false);
        const auto on = twin<float>(c, x, false, false, false, /*ns5_fp16=*/true);
        const auto tf32 = twin<float>(c, x, false, false, false, false, /*ns5_tf32=*/true);
        for (int i = 0; i < 11; ++i) {
          if (i == 10 && !momentum) continue;
          const double e32 = rel_err(f32[size_t(i)], ref[size_t(i)]), e = rel_err(on[size_t(i)], ref[size_t(i)]);
          const double et = rel_err(tf32[size_t(i)], ref[size_t(i)]);
          EXPECT_LE(e32, 1e-4) << c.name() << " " << kNames[i];
          EXPECT_LE(e, 5e-2) << c.name() << " " << kNames[i] << " (fp16 NS5)";
          EXPECT_LE(e, std::max(1e-3, 3 * et)) << c.name() << " " << kNames[i] << " (fp16 NS5; tf32 NS5: " << et << ")";
          if (::norm(ref[size_t(i)]) > 0)  // (grad_lr2 of the causal momentum configs is exactly 0 here)
            EXPECT_GT(e, 10 * e32) << c.name() << " " << kNames[i] << " (no effect)";
          worst = std::max(worst, e);
          worst_tf32 = std::max(worst_tf32, et);
          if (et > 0) worst_ratio = std::max(worst_ratio, e / et);
        }
        for (const double scale : {std::ldexp(1.0, 40), std::ldexp(1.0, -40)}) {
          Data xs = x;
          for (double& g : xs.go) g *= scale;
          const auto s_on = twin<float>(c, xs, false, false, false, true);
          for (int i = 1; i < 11; ++i) {
            if (i == 10 && !momentum) continue;
            std::vector<double> unscaled = s_on[size_t(i)];
            for (double& g : unscaled) g /= scale;
            EXPECT_TRUE(unscaled == on[size_t(i)]) << c.name() << " " << kNames[i] << " (loss gradient x " << scale
                                                   << ": relative error " << rel_err(unscaled, ref[size_t(i)]) << ")";
          }
        }
        ++configs;
      }
  EXPECT_EQ(configs, 8);
  std::printf("lact twin, NS5 in fp16 storage (float) vs float64: worst relative error %.3g; with tf32 NS5 operands "
              "%.3g; worst ratio %.3g\n",
              worst, worst_tf32, worst_ratio);
}
