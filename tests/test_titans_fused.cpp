// The explicit (tape-free) Titans memory and TNT branch, src/ttt/titans_fused.h, against the tape engine in
// float64: the memory against engine::run_forward / run_backward (titans_memory_config, causal_program(T, C, S))
// over shapes, chunk sizes (1, 3, 8, not dividing T, >= T), reset periods (none, dividing T, not dividing T,
// not a multiple of C), momentum / decay / residual on and off; the whole branch (global + locals + Q-K
// projection) against tnt_cpu_backend() on named tensors; segment recomputation bit-identical to keeping every
// state; outputs and every gradient to <= 1e-11 relative.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "titans_test_util.h"
#include "backend/titans_persistent_plan.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "ttt/runner.h"
#include "ttt/titans_fused.h"
#include "ttt/tnt.h"

using namespace ttt;

namespace {

using MemCase = test::TitansCase;

// Inputs and results in the operator's layouts; results in the order of kNames.
const char* kNames[9] = {"o", "grad_q", "grad_k", "grad_v", "grad_w1", "grad_w2", "grad_theta", "grad_eta",
                         "grad_alpha"};
struct Data {
  std::vector<double> q, k, v, w1, w2, theta, eta, alpha, go;
};
using Results = std::vector<std::vector<double>>;

Data make_data(const MemCase& c, uint64_t seed) {
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
  const int64_t BTd = c.B * c.T * c.d, P = c.d * c.dh;
  x.q = normal(BTd, 1.0 / std::sqrt(double(c.d)));
  x.k = normal(BTd, 1.0 / std::sqrt(double(c.d)));
  x.v = normal(BTd, 1.0 / std::sqrt(double(c.d)));
  x.w1 = normal(c.B * P, 1.0 / std::sqrt(double(c.d)));
  x.w2 = normal(c.B * P, 1.0 / std::sqrt(double(c.dh)));
  x.theta = uniform(c.B * c.T, 0.01, 0.1);  // larger rates make some configs diverge (values ~1e100)
  x.eta = uniform(c.B * c.T, 0.3, 0.9);
  x.alpha = uniform(c.B * c.T, 0.01, 0.1);
  x.go = normal(BTd, 1.0);
  return x;
}

Results empty_results(const MemCase& c) {
  const int64_t BTd = c.B * c.T * c.d, P = c.d * c.dh, BT = c.B * c.T;
  Results r(9);
  for (int i : {0, 1, 2, 3}) r[size_t(i)].assign(size_t(BTd), std::nan(""));
  for (int i : {4, 5}) r[size_t(i)].assign(size_t(c.B * P), std::nan(""));
  for (int i : {6, 7, 8}) r[size_t(i)].assign(size_t(BT), std::nan(""));
  return r;
}

Results engine_results(const MemCase& c, const Data& x) {
  engine::MemoryConfig cfg = engine::titans_memory_config(c.d, c.dh);
  cfg.momentum = c.momentum;
  cfg.decay = c.decay;
  cfg.mlp_residual = c.residual;
  const engine::Program prog = engine::causal_program(c.T, c.chunk, c.period);
  const int64_t P = c.d * c.dh, TD = c.T * c.d;
  auto mat = [](const std::vector<double>& v, int64_t off, int64_t rows, int64_t cols) {
    ag::Mat<double> m(rows, cols);
    std::copy(v.begin() + off, v.begin() + off + rows * cols, m.data.begin());
    return m;
  };
  Results out = empty_results(c);
  for (int64_t b = 0; b < c.B; ++b) {
    engine::SequenceInputs<double> in;
    in.w0 = {mat(x.w1, b * P, c.dh, c.d), mat(x.w2, b * P, c.d, c.dh)};
    in.q = mat(x.q, b * TD, c.T, c.d);
    in.k = mat(x.k, b * TD, c.T, c.d);
    in.v = mat(x.v, b * TD, c.T, c.d);
    in.rates = mat(x.theta, b * c.T, c.T, 1);
    if (c.momentum) in.momentum_gate = mat(x.eta, b * c.T, c.T, 1);
    if (c.decay) in.decay_gate = mat(x.alpha, b * c.T, c.T, 1);
    engine::SavedStates<double> saved;
    ag::Mat<double> o = engine::run_forward(cfg, prog, in, &saved);
    engine::SequenceGrads<double> g = engine::run_backward(cfg, prog, in, saved, mat(x.go, b * TD, c.T, c.d));
    auto put = [&](int i, const ag::Mat<double>& m, int64_t off) {
      std::copy(m.data.begin(), m.data.end(), out[size_t(i)].begin() + off);
    };
    put(0, o, b * TD);
    put(1, g.q, b * TD);
    put(2, g.k, b * TD);
    put(3, g.v, b * TD);
    put(4, g.w0[0], b * P);
    put(5, g.w0[1], b * P);
    put(6, g.rates, b * c.T);
    if (c.momentum) put(7, g.momentum_gate, b * c.T);
    else std::fill(out[7].begin() + b * c.T, out[7].begin() + (b + 1) * c.T, 0.0);
    if (c.decay) put(8, g.decay_gate, b * c.T);
    else std::fill(out[8].begin() + b * c.T, out[8].begin() + (b + 1) * c.T, 0.0);
  }
  return out;
}

Results twin_results(const MemCase& c, const Data& x) {
  Results out = empty_results(c);
  titans::MemoryInputs<double> in{x.q.data(),     x.k.data(),   x.v.data(),  x.w1.data(), x.w2.data(),
                                  x.theta.data(), x.eta.data(), x.alpha.data()};
  titans::MemoryGrads<double> g{out[1].data(), out[2].data(), out[3].data(), out[4].data(), out[5].data(),
                                out[6].data(), out[7].data(), out[8].data()};
  titans::memory_cpu<double>(c.shape(), in, out[0].data(), x.go.data(), &g);
  return out;
}

double rel_err(const std::vector<double>& a, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += (a[i] - ref[i]) * (a[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

std::vector<MemCase> memory_cases() {
  std::vector<MemCase> cases;
  int i = 0;
  for (int64_t chunk : {1, 3, 8, 7, 64})
    for (int64_t period : {0, 16, 13})
      for (int flags = 0; flags < 4; ++flags) {
        const bool swap = (i++ % 2) == 1;  // d < dh and d > dh in turn
        const int64_t B = (i % 3 == 0) ? 1 : 3, T = (i % 2 == 0) ? 32 : 37;
        cases.push_back({B, T, swap ? 7 : 5, swap ? 4 : 9, chunk, period, (flags & 1) != 0, (flags & 2) != 0,
                         i % 5 != 0});
      }
  return cases;
}

}  // namespace

TEST(TitansFused, GroupsCoverEveryTokenOnce) {
  for (int64_t B : {1, 3})
    for (int64_t T : {1, 7, 16, 37})
      for (int64_t period : {0, 1, 4, 5, 16, 40}) {
        std::vector<int> seen(size_t(B * T), 0);
        for (const titans::Group& g : titans::make_groups(B, T, period)) {
          ASSERT_EQ(g.items % g.per_b, 0);
          for (int64_t i = 0; i < g.items; ++i)
            for (int64_t t = 0; t < g.len; ++t) {
              const int64_t tok = g.tok(i, t), b = g.b_of(i);
              ASSERT_GE(tok, b * T);
              ASSERT_LT(tok, (b + 1) * T);
              // the item starts at a shard boundary of its sequence-head
              if (period > 0) ASSERT_EQ((g.tok(i, 0) - b * T) % period, 0);
              ++seen[size_t(tok)];
            }
        }
        for (int s : seen) ASSERT_EQ(s, 1) << "B " << B << " T " << T << " period " << period;
      }
}

TEST(TitansFused, MemoryMatchesEngineFloat64) {
  double worst = 0;
  std::string what;
  int n = 0;
  for (const MemCase& c : memory_cases()) {
    const Data x = make_data(c, 100 + uint64_t(n++));
    const Results ref = engine_results(c, x), got = twin_results(c, x);
    double omax = 0;
    for (double v : ref[0]) omax = std::max(omax, std::abs(v));
    EXPECT_LT(omax, 100.0) << c.name() << ": the inputs should keep the memory tame";
    for (int i = 0; i < 9; ++i) {
      const double e = rel_err(got[size_t(i)], ref[size_t(i)]);
      EXPECT_LE(e, 1e-11) << c.name() << ": " << kNames[i];
      if (e > worst) worst = e, what = c.name() + " " + kNames[i];
    }
  }
  std::printf("titans twin vs engine (float64): %d configs, worst relative error %.3g (%s)\n", n, worst, what.c_str());
}

// Keeping every K-th state and recomputing the rest runs the very same steps: bit-identical.
TEST(TitansFused, SegmentRecomputationIsBitIdentical) {
  for (int64_t period : {0, 24}) {
    MemCase c{2, 50, 5, 6, 3, period, true, true, true};
    const Data x = make_data(c, 7);
    const Results all = twin_results(c, x);
    for (int64_t seg : {1, 2, 3, 4, 5, 16, 17}) {
      MemCase cs = c;
      cs.segment = seg;
      const Results got = twin_results(cs, x);
      for (int i = 0; i < 9; ++i) EXPECT_EQ(got[size_t(i)], all[size_t(i)]) << cs.name() << " " << kNames[i];
    }
  }
  // The budget picks K ~ sqrt(chunks) when the states do not fit.
  titans::MemoryShape s = MemCase{2, 50, 5, 6, 3, 0, true, true, true}.shape();
  s.state_budget_bytes = 1000;
  EXPECT_EQ(titans::segment_length(s, titans::make_groups(2, 50, 0)[0], sizeof(double)), 5);
}

namespace {

SafeTensors tnt_inputs(int64_t B, int64_t T, int64_t d, const std::vector<int64_t>& dh, const engine::TntOptions& opt,
                       uint64_t seed) {
  Rng r(seed);
  auto add = [&](SafeTensors& st, const std::string& name, const Shape& shape, double lo, double hi, bool normal) {
    Tensor t = Tensor::empty(shape, DType::F64);
    double* p = t.data<double>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = normal ? r.normal() * hi : r.uniform(lo, hi);
    st.add(name, t);
  };
  SafeTensors st;
  for (const char* nm : {"q", "k", "v"}) add(st, nm, {B, T, d}, 0, 1.0 / std::sqrt(double(d)), true);
  for (size_t m = 0; m < size_t(opt.num_memories()); ++m) {
    const std::string p = engine::tnt_input_prefix(opt, m);
    add(st, p + "w1", {B, dh[m], d}, 0, 1.0 / std::sqrt(double(d)), true);
    add(st, p + "w2", {B, d, dh[m]}, 0, 1.0 / std::sqrt(double(dh[m])), true);
    add(st, p + "theta", {B, T}, 0.01, 0.1, false);
    add(st, p + "eta", {B, T}, 0.3, 0.9, false);
    add(st, p + "alpha", {B, T}, 0.01, 0.1, false);
  }
  add(st, "grad_o", {B, T, d}, 0, 1.0, true);
  return st;
}

double tensor_rel_err(const Tensor& a, const Tensor& ref) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) {
    const double x = a.get(i), y = ref.get(i);
    if (!std::isfinite(x)) return INFINITY;
    num += (x - y) * (x - y);
    den += y * y;
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

// Branches: global memory on / off, local chunks dividing the shard or not, longer than it, Q-K on / off.
struct BranchCase {
  engine::TntOptions opt;
  int64_t T;
  std::vector<int64_t> hidden() const {  // dh of every memory
    std::vector<int64_t> dh = {6, 4, 7};
    dh.resize(size_t(opt.num_memories()));
    return dh;
  }
};
engine::TntOptions branch(bool global, int64_t global_chunk, std::vector<int64_t> locals, int64_t shard, bool qk) {
  return {.use_global = global, .global_chunk = global_chunk, .local_chunks = locals, .shard = shard, .qk_proj = qk};
}
const std::vector<BranchCase> kBranchCases = {
    {branch(true, 16, {8, 16}, 16, true), 40},   {branch(true, 7, {3, 4}, 12, true), 37},
    {branch(true, 64, {2}, 13, true), 37},       {branch(false, 2048, {3}, 10, true), 32},
    {branch(true, 5, {1, 3}, 8, false), 30},     {branch(true, 9, {}, 0, true), 33},
    {branch(false, 2048, {4, 6}, 0, true), 29},  {branch(true, 8, {8}, 7, true), 31},
    {branch(false, 2048, {5}, 64, true), 27},
};

}  // namespace

TEST(TitansFused, TntBranchMatchesCpuBackendFloat64) {
  double worst = 0;
  std::string what;
  int n = 0;
  for (const BranchCase& bc : kBranchCases) {
    const engine::TntOptions& opt = bc.opt;
    const std::vector<int64_t> dh = bc.hidden();
    const SafeTensors st = tnt_inputs(2, bc.T, 5, dh, opt, 500 + uint64_t(n++));
    const SafeTensors ref = engine::tnt_cpu_backend().tnt(st, opt);
    const SafeTensors got = titans::tnt_op(st, opt, titans::tnt_twin_runner());
    ASSERT_EQ(got.tensors.size(), ref.tensors.size());
    double omax = 0;
    for (int64_t i = 0; i < ref.get("o").numel(); ++i) omax = std::max(omax, std::abs(ref.get("o").get(i)));
    EXPECT_LT(omax, 100.0) << "case " << n - 1;
    for (size_t i = 0; i < ref.tensors.size(); ++i) {
      const auto& [name, r] = ref.tensors[i];
      ASSERT_EQ(got.tensors[i].first, name);
      ASSERT_EQ(got.tensors[i].second.shape(), r.shape()) << name;
      const double e = tensor_rel_err(got.tensors[i].second, r);
      const std::string tag = "case " + std::to_string(n - 1) + " T" + std::to_string(bc.T) + " " + name;
      EXPECT_LE(e, 1e-11) << tag;
      if (e > worst) worst = e, what = tag;
    }
  }
  std::printf("tnt twin vs tape engine (float64): %d configs, worst relative error %.3g (%s)\n", n, worst,
              what.c_str());
}

TEST(TitansFused, Float32TwinTracksFloat64) {
  MemCase c{2, 40, 8, 12, 8, 16, true, true, true};
  const Data x = make_data(c, 9);
  const Results ref = twin_results(c, x);
  auto f = [](const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); };
  std::vector<float> q = f(x.q), k = f(x.k), v = f(x.v), w1 = f(x.w1), w2 = f(x.w2), th = f(x.theta), et = f(x.eta),
                     al = f(x.alpha), go = f(x.go);
  std::vector<std::vector<float>> out(9);
  for (int i = 0; i < 9; ++i) out[size_t(i)].assign(ref[size_t(i)].size(), NAN);
  titans::MemoryInputs<float> in{q.data(), k.data(), v.data(), w1.data(), w2.data(), th.data(), et.data(), al.data()};
  titans::MemoryGrads<float> g{out[1].data(), out[2].data(), out[3].data(), out[4].data(), out[5].data(),
                               out[6].data(), out[7].data(), out[8].data()};
  titans::memory_cpu<float>(c.shape(), in, out[0].data(), go.data(), &g);
  for (int i = 0; i < 9; ++i)
    EXPECT_LE(rel_err(std::vector<double>(out[size_t(i)].begin(), out[size_t(i)].end()), ref[size_t(i)]), 1e-4)
        << kNames[i];
}

// The streaming API (generation: token by token, one chunk update at a time, a reset at every shard start)
// gives the forward: every memory case with and without Q-K projected queries, and whole TNT branches (the
// global memory, local memories with resets and Q-K projection).
TEST(TitansFused, StreamingMatchesForward) {
  double worst = 0;
  std::string what;
  int n = 0;
  for (const MemCase& c : memory_cases())
    for (bool qk : {false, true}) {
      const Data x = make_data(c, 300 + uint64_t(n++));
      titans::MemoryShape s = c.shape();
      s.qk = qk;
      const titans::MemoryInputs<double> in{x.q.data(),     x.k.data(),   x.v.data(),  x.w1.data(), x.w2.data(),
                                            x.theta.data(), x.eta.data(), x.alpha.data()};
      std::vector<double> ref(x.q.size(), std::nan("")), got(ref.size(), std::nan(""));
      titans::memory_cpu<double>(s, in, ref.data());
      titans::stream_memory_cpu<double>(s, in, got.data());
      const double e = rel_err(got, ref);
      const std::string tag = c.name() + (qk ? "_qk" : "");
      EXPECT_LE(e, 1e-13) << tag;
      if (e > worst) worst = e, what = tag;
    }
  for (const BranchCase& bc : kBranchCases) {
    const std::vector<int64_t> dh = bc.hidden();
    titans::TntShape s;
    s.B = 2;
    s.T = bc.T;
    s.d = 5;
    s.set_layout(bc.opt.layout());
    s.dh = dh;
    const SafeTensors st = tnt_inputs(s.B, s.T, s.d, dh, bc.opt, 700 + uint64_t(n++));
    titans::TntInputs<double> in{st.get("q").data<double>(), st.get("k").data<double>(), st.get("v").data<double>(),
                                 {}};
    for (size_t m = 0; m < size_t(s.num_memories()); ++m) {
      const std::string pre = engine::tnt_input_prefix(bc.opt, m);
      in.mems.push_back({st.get(pre + "w1").data<double>(), st.get(pre + "w2").data<double>(),
                         st.get(pre + "theta").data<double>(), st.get(pre + "eta").data<double>(),
                         st.get(pre + "alpha").data<double>()});
    }
    std::vector<double> ref(size_t(s.B * s.T * s.d), std::nan("")), got(ref.size(), std::nan(""));
    titans::tnt_cpu<double>(s, in, ref.data());
    titans::stream_tnt_cpu<double>(s, in, got.data());
    const double e = rel_err(got, ref);
    const std::string tag = "branch T" + std::to_string(bc.T) + " shard " + std::to_string(bc.opt.shard);
    EXPECT_LE(e, 1e-13) << tag;
    if (e > worst) worst = e, what = tag;
  }
  std::printf("titans streaming vs forward (float64): %d configs, worst relative error %.3g (%s)\n", n, worst,
              what.c_str());
}

// The chain passed between two spans (context parallelism's --cp-global state): the first part with
// MemoryShape::continues hands its exit state (weights and momentum) to the second, whose entry adjoint comes back
// as the first part's exit adjoint. Equal to the whole chain in float64: outputs and every gradient; cuts after
// 1, 3 and 5 chunks of 6, the first part keeping every state or recomputing segments of 2 (the exit state then
// in a checkpoint slot or a segment slot).
TEST(TitansFused, ChainInTwoPartsEqualsTheWholeChainFloat64) {
  const test::ChainData x = test::make_chain_data(17);
  const test::MemoryRun twin = [](const titans::MemoryShape& s, const titans::MemoryInputs<double>& in, double* o,
                                  const double* go, const titans::MemoryGrads<double>* g) {
    titans::memory_cpu<double>(s, in, o, go, g);
  };
  const test::ChainSplit whole = test::run_whole_chain(twin, x);
  for (int64_t cut : {4, 12, 20})
    for (int64_t segment : {0, 2}) {
      const test::ChainSplit two = test::run_chain_in_two(twin, x, cut, segment);
      std::string what;
      const double err = test::chain_split_error(two, whole, &what);
      std::printf("  cut %2lld, segment %lld: worst %.2e (%s)\n", (long long)cut, (long long)segment, err, what.c_str());
      EXPECT_LT(err, 1e-12) << "cut " << cut << ", segment " << segment << ": " << what;
      double moved = 0;  // the state that crossed is not the initial one (the test would be idle otherwise)
      for (double e : two.exit_S) moved = std::max(moved, std::abs(e));
      EXPECT_GT(moved, 1e-3);
    }
}

// The persistent kernels' plan never takes a chain that hands its state on.
TEST(TitansFused, ChainThatContinuesIsPlannedOnTheBatchedPath) {
  titans::MemoryShape s = test::make_chain_data(1).shape(16, true);
  const titans::PersistentPlan p =
      titans::plan_persistent(s, sizeof(float), 227 * 1024, titans::KernelChoice::Persistent, titans::kDefaultPersistentVariant);
  EXPECT_FALSE(p.persistent) << p.reason;
  EXPECT_NE(p.reason.find("hands its state on"), std::string::npos) << p.reason;
}
