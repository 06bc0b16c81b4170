// TNT (docs/ALGORITHMS.md §6): the Q-K projection op and the whole memory branch against float64 central finite
// differences (every input), shards on and off chunk boundaries, S_L not a multiple of C_L, Q-K projection
// on/off, no global memory; the sharded (parallel) run against the unsplit sequential run; `op tnt` errors.
#include <gtest/gtest.h>

#include <cmath>

#include "core/rng.h"
#include "gradcheck.h"
#include "ttt/qk_projection.h"
#include "ttt/runner.h"
#include "ttt/tnt.h"

using namespace ttt;
using namespace ttt::engine;
using ag::Mat;
using ag::Tape;
using ag::Var;

namespace {

Mat<double> randn(Rng& r, int64_t rows, int64_t cols, double scale) {
  Mat<double> m(rows, cols);
  for (auto& x : m.data) x = r.normal() * scale;
  return m;
}
Mat<double> randu(Rng& r, int64_t rows, int64_t cols, double lo, double hi) {
  Mat<double> m(rows, cols);
  for (auto& x : m.data) x = r.uniform(lo, hi);
  return m;
}

// q̃ of one sequence-head by explicit per-token sums (docs/ALGORITHMS.md §6.2 as written).
Mat<double> qk_naive(const Mat<double>& q, const Mat<double>& k, int64_t chunk, int64_t shard) {
  const int64_t n = q.rows, d = q.cols, S = shard > 0 ? shard : n;
  Mat<double> out(n, d);
  for (int64_t t = 0; t < n; ++t) {
    const int64_t s0 = t / S * S, c0 = s0 + (t - s0) / chunk * chunk;
    double z = 0;
    std::vector<double> acc(size_t(d), 0.0);
    for (int64_t tau = s0; tau < c0; ++tau) {
      double kq = 0;
      for (int64_t j = 0; j < d; ++j) kq += k(tau, j) * q(t, j), z += k(tau, j) * k(tau, j);
      for (int64_t j = 0; j < d; ++j) acc[size_t(j)] += k(tau, j) * kq;
    }
    for (int64_t j = 0; j < d; ++j) out(t, j) = z > 0 ? acc[size_t(j)] / z : q(t, j);
  }
  return out;
}

struct QkCase {
  int64_t chunk, shard;
};

}  // namespace

TEST(TntQkProject, ForwardMatchesPerTokenSums) {
  Rng r(3);
  const int64_t S = 2, H = 3, N = 13, d = 4;
  Mat<double> q = randn(r, S * N, H * d, 1.0), k = randn(r, S * N, H * d, 1.0);
  for (QkCase c : std::vector<QkCase>{{3, 7}, {2, 8}, {1, 5}, {4, 0}, {6, 4}, {5, 40}, {13, 0}}) {
    Tape<double> t;
    Var out = qk_project(t, t.leaf(q), t.leaf(k), S, H, c.chunk, c.shard);
    double worst = 0;
    for (int64_t s = 0; s < S; ++s)
      for (int64_t h = 0; h < H; ++h) {
        Mat<double> qs(N, d), ks(N, d);
        for (int64_t i = 0; i < N; ++i)
          for (int64_t j = 0; j < d; ++j) qs(i, j) = q(s * N + i, h * d + j), ks(i, j) = k(s * N + i, h * d + j);
        Mat<double> ref = qk_naive(qs, ks, c.chunk, c.shard);
        Mat<double> one = qk_project_forward(qs, ks, c.chunk, c.shard);
        for (int64_t i = 0; i < N; ++i)
          for (int64_t j = 0; j < d; ++j) {
            worst = std::max(worst, std::abs(t.val(out)(s * N + i, h * d + j) - ref(i, j)));
            worst = std::max(worst, std::abs(one(i, j) - ref(i, j)));
          }
      }
    EXPECT_LE(worst, 1e-13) << "chunk " << c.chunk << " shard " << c.shard;
    // The first chunk of every shard reads the query itself.
    EXPECT_EQ(t.val(out)(0, 0), q(0, 0));
  }
}

TEST(TntQkProject, GradientsMatchFiniteDifferences) {
  // shard not a multiple of chunk, N a multiple of neither; chunk > shard; no shard; chunk 1.
  for (QkCase c : std::vector<QkCase>{{3, 7}, {2, 8}, {4, 0}, {1, 5}, {5, 3}, {3, 6}}) {
    Rng r(11 + uint64_t(c.chunk * 7 + c.shard));
    const int64_t S = 2, H = 2, N = 11, d = 3;
    auto rep = gradcheck::expect_gradients_match(
        {randn(r, S * N, H * d, 1.0), randn(r, S * N, H * d, 1.0)},
        [&](Tape<double>& t, const std::vector<Var>& x) { return qk_project(t, x[0], x[1], S, H, c.chunk, c.shard); },
        1e-6);
    EXPECT_LE(rep.worst, 1e-6) << "chunk " << c.chunk << " shard " << c.shard;
  }
  // q and k the same variable (both paths accumulate).
  Rng r(5);
  gradcheck::expect_gradients_match({randn(r, 10, 4, 1.0)}, [](Tape<double>& t, const std::vector<Var>& x) {
    return qk_project(t, x[0], x[0], 1, 2, 3, 7);
  });
}

TEST(TntQkProject, ZeroKeysReadTheQueryAndBadShapesThrow) {
  Tape<double> t;
  Rng r(1);
  Mat<double> q = randn(r, 6, 2, 1.0), k(6, 2);  // all keys zero: the sum stays empty in effect
  Var o = qk_project(t, t.leaf(q), t.leaf(k), 1, 1, 2, 0);
  EXPECT_EQ(t.val(o).data, q.data);
  EXPECT_THROW(qk_project(t, t.leaf(Mat<double>(6, 2)), t.leaf(Mat<double>(5, 2)), 1, 1, 2, 0), Error);
  EXPECT_THROW(qk_project(t, t.leaf(Mat<double>(6, 2)), t.leaf(Mat<double>(6, 2)), 4, 1, 2, 0), Error);
  EXPECT_THROW(qk_project(t, t.leaf(Mat<double>(6, 2)), t.leaf(Mat<double>(6, 2)), 1, 1, 0, 0), Error);
}

namespace {

struct BranchCase {
  std::string name;
  bool use_global;
  int64_t global_chunk;
  std::vector<int64_t> local_chunks;
  int64_t shard;
  bool qk_proj;
};

void PrintTo(const BranchCase& c, std::ostream* os) { *os << c.name; }

// Inputs of the branch as a flat list: q, k, v, then per memory w1, w2, theta, eta, alpha.
std::vector<Mat<double>> branch_inputs(const BranchCase& c, int64_t S, int64_t H, int64_t N, int64_t d,
                                       int64_t dh, uint64_t seed) {
  Rng r(seed);
  std::vector<Mat<double>> x;
  for (int i = 0; i < 3; ++i) x.push_back(randn(r, S * N, H * d, 0.6));
  const size_t mems = (c.use_global ? 1 : 0) + c.local_chunks.size();
  for (size_t m = 0; m < mems; ++m) {
    const int64_t h = dh + int64_t(m);  // every memory its own hidden width
    x.push_back(randn(r, H * h, d, 1.0 / std::sqrt(double(d))));
    x.push_back(randn(r, H * d, h, 1.0 / std::sqrt(double(h))));
    x.push_back(randu(r, S * N, H, 0.05, 0.3));
    x.push_back(randu(r, S * N, H, 0.3, 0.9));
    x.push_back(randu(r, S * N, H, 0.02, 0.2));
  }
  return x;
}

TntOptions options_of(const BranchCase& c, bool split = true) {
  TntOptions o;
  o.use_global = c.use_global;
  o.global_chunk = c.global_chunk;
  o.local_chunks = c.local_chunks;
  o.shard = c.shard;
  o.qk_proj = c.qk_proj;
  o.batch.split_shards = split;
  return o;
}

Var record_branch(Tape<double>& t, const BranchCase& c, const std::vector<Var>& x, int64_t S, int64_t H, int64_t d,
                  int64_t dh, bool split = true) {
  std::vector<TntMemoryVars> mems;
  const size_t n = (c.use_global ? 1 : 0) + c.local_chunks.size();
  for (size_t m = 0; m < n; ++m) {
    TntMemoryVars mv;
    mv.cfg = titans_memory_config(d, dh + int64_t(m));
    const size_t b = 3 + 5 * m;
    mv.w0 = {x[b], x[b + 1]};
    mv.rates = x[b + 2];
    mv.momentum_gate = x[b + 3];
    mv.decay_gate = x[b + 4];
    mems.push_back(mv);
  }
  return tnt_branch(t, options_of(c, split), S, H, x[0], x[1], x[2], mems);
}

std::vector<BranchCase> branch_cases() {
  return {
      // S_L = 5: not a multiple of C_L 2 or 3; N = 9 a multiple of nothing; resets off chunk boundaries
      {"global4_locals2and3_shard5_qk", true, 4, {2, 3}, 5, true},
      {"global4_locals2and3_shard5_noqk", true, 4, {2, 3}, 5, false},
      // resets on chunk boundaries
      {"global3_locals1and2_shard4_qk", true, 3, {1, 2}, 4, true},
      {"noglobal_local2_shard4_qk", false, 0, {2}, 4, true},
      {"noglobal_local3_shard4_noqk", false, 0, {3}, 4, false},
      // local chunk > shard (every shard a single apply-only chunk), global chunk >= N
      {"global16_local5_shard3_qk", true, 16, {5}, 3, true},
      // never reset
      {"global2_local3_noshard_qk", true, 2, {3}, 0, true},
  };
}

}  // namespace

class TntBranchGradCheck : public ::testing::TestWithParam<BranchCase> {};

TEST_P(TntBranchGradCheck, AllInputsMatchFiniteDifferences) {
  const BranchCase c = GetParam();
  const int64_t S = 2, H = 2, N = 9, d = 2, dh = 3;
  auto x = branch_inputs(c, S, H, N, d, dh, 17);
  gradcheck::Report rep = gradcheck::expect_gradients_match(
      x, [&](Tape<double>& t, const std::vector<Var>& v) { return record_branch(t, c, v, S, H, d, dh); }, 1e-6);
  EXPECT_LE(rep.worst, 1e-6) << c.name << ": worst input " << rep.worst_input;
}

INSTANTIATE_TEST_SUITE_P(Configs, TntBranchGradCheck, ::testing::ValuesIn(branch_cases()),
                         [](const auto& info) { return info.param.name; });

TEST(TntBranch, QkProjectionChangesOnlyTheLocalReadsAndNotTheFirstChunk) {
  // With the global memory off and one local memory, q̃ = q on the first chunk of every shard, so the
  // outputs with and without the projection agree exactly there and differ elsewhere.
  BranchCase on{"", false, 0, {3}, 5, true}, off{"", false, 0, {3}, 5, false};
  const int64_t S = 1, H = 1, N = 11, d = 3, dh = 4;
  auto x = branch_inputs(on, S, H, N, d, dh, 4);
  Tape<double> t;
  std::vector<Var> v;
  for (auto& m : x) v.push_back(t.leaf(m));
  const Mat<double>& a = t.val(record_branch(t, on, v, S, H, d, dh));
  const Mat<double>& b = t.val(record_branch(t, off, v, S, H, d, dh));
  for (int64_t i = 0; i < N; ++i) {
    const bool first_chunk = (i % 5) < 3;
    for (int64_t j = 0; j < d; ++j) {
      if (first_chunk) EXPECT_EQ(a(i, j), b(i, j)) << "token " << i;
    }
    if (!first_chunk) EXPECT_NE(a(i, 0), b(i, 0)) << "token " << i;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Shard parallelism: split runs equal the unsplit sequential run.

TEST(TntShards, SplitShardsStructure) {
  auto sh = split_shards(causal_program(10, 3, 4));
  ASSERT_EQ(sh.size(), 3u);
  EXPECT_EQ(sh[0].begin, 0);
  EXPECT_EQ(sh[0].end, 4);
  EXPECT_EQ(sh[1].begin, 4);
  EXPECT_EQ(sh[1].end, 8);
  EXPECT_EQ(sh[2].begin, 8);
  EXPECT_EQ(sh[2].end, 10);
  EXPECT_EQ(sh[1].program.to_string(), "apply 0 3; update 0 3; apply 3 4");
  EXPECT_EQ(sh[0].first_version, 0);
  EXPECT_EQ(sh[0].num_versions, 2);
  EXPECT_EQ(sh[1].first_version, 2);
  EXPECT_EQ(sh[2].first_version, 4);
  EXPECT_EQ(sh[2].num_versions, 1);
  EXPECT_TRUE(split_shards(causal_program(10, 3)).empty());     // no reset
  EXPECT_TRUE(split_shards(causal_program(10, 3, 10)).empty());  // reset interval >= T
  // Shards that touch the same tokens stay one piece.
  EXPECT_TRUE(split_shards(parse_program("update 0 5; apply 5 9; reset; update 2 4; apply 0 3", 9)).empty());
  // A leading reset makes an empty first shard that still owns a saved version.
  auto lead = split_shards(parse_program("reset; apply 0 2; update 0 2; reset; apply 2 4", 4));
  ASSERT_EQ(lead.size(), 3u);
  EXPECT_TRUE(lead[0].program.ops.empty());
  EXPECT_EQ(lead[1].first_version, 1);
  EXPECT_EQ(lead[2].first_version, 3);
}

namespace {

std::vector<SequenceInputs<double>> batch_inputs(const MemoryConfig& cfg, int64_t nb, int64_t n, uint64_t seed) {
  Rng r(seed);
  std::vector<SequenceInputs<double>> in(static_cast<size_t>(nb));
  for (auto& x : in) {
    for (auto [rows, cols] : cfg.weight_shapes()) x.w0.push_back(randn(r, rows, cols, 1.0 / std::sqrt(double(cols))));
    x.q = randn(r, n, cfg.d, 0.6);
    x.k = randn(r, n, cfg.d, 0.6);
    x.v = randn(r, n, cfg.d, 0.6);
    x.rates = randu(r, n, cfg.rate_columns, 0.05, 0.3);
    if (cfg.momentum) x.momentum_gate = randu(r, n, 1, 0.3, 0.9);
    if (cfg.decay) x.decay_gate = randu(r, n, 1, 0.02, 0.2);
  }
  return in;
}

double max_abs_diff(const Mat<double>& a, const Mat<double>& b) {
  EXPECT_TRUE(a.same_shape(b));
  double m = 0;
  for (size_t i = 0; i < a.data.size(); ++i) m = std::max(m, std::abs(a.data[i] - b.data[i]));
  return m;
}

void compare_split(const MemoryConfig& cfg, const Program& p, int64_t nb, double tol) {
  ASSERT_FALSE(split_shards(p).empty()) << p.to_string();
  auto in = batch_inputs(cfg, nb, p.num_tokens, 42);
  Rng r(8);
  std::vector<Mat<double>> go;
  for (int64_t b = 0; b < nb; ++b) go.push_back(randn(r, p.num_tokens, cfg.d, 1.0));
  std::vector<SavedStates<double>> s_split, s_seq;
  auto o_split = run_forward_batch(cfg, p, in, &s_split, BatchOptions{true});
  auto o_seq = run_forward_batch(cfg, p, in, &s_seq, BatchOptions{false});
  auto g_split = run_backward_batch(cfg, p, in, s_split, go, BatchOptions{true});
  auto g_seq = run_backward_batch(cfg, p, in, s_seq, go, BatchOptions{false});
  for (int64_t b = 0; b < nb; ++b) {
    // the unsplit sequential run of one sequence-head, without the batch runner
    SavedStates<double> s1;
    Mat<double> o1 = run_forward(cfg, p, in[size_t(b)], &s1);
    EXPECT_EQ(o_split[size_t(b)].data, o1.data) << "forward, sequence-head " << b;
    EXPECT_EQ(o_seq[size_t(b)].data, o1.data);
    ASSERT_EQ(s_split[size_t(b)].versions.size(), s1.versions.size());
    for (size_t v = 0; v < s1.versions.size(); ++v)
      for (size_t w = 0; w < s1.versions[v].weights.size(); ++w)
        EXPECT_EQ(s_split[size_t(b)].versions[v].weights[w].data, s1.versions[v].weights[w].data) << "version " << v;
    SequenceGrads<double> g1 = run_backward(cfg, p, in[size_t(b)], s1, go[size_t(b)]);
    const SequenceGrads<double>& gs = g_split[size_t(b)];
    double worst = 0;
    for (size_t w = 0; w < g1.w0.size(); ++w) worst = std::max(worst, max_abs_diff(gs.w0[w], g1.w0[w]));
    worst = std::max({worst, max_abs_diff(gs.q, g1.q), max_abs_diff(gs.k, g1.k), max_abs_diff(gs.v, g1.v),
                      max_abs_diff(gs.rates, g1.rates)});
    if (cfg.momentum) worst = std::max(worst, max_abs_diff(gs.momentum_gate, g1.momentum_gate));
    if (cfg.decay) worst = std::max(worst, max_abs_diff(gs.decay_gate, g1.decay_gate));
    EXPECT_LE(worst, tol) << "backward, sequence-head " << b;
    EXPECT_EQ(g_seq[size_t(b)].q.data, g1.q.data);
    for (size_t w = 0; w < g1.w0.size(); ++w) EXPECT_EQ(g_seq[size_t(b)].w0[w].data, g1.w0[w].data);
    // Split run applied twice: deterministic.
  }
  auto g_again = run_backward_batch(cfg, p, in, s_split, go, BatchOptions{true});
  for (int64_t b = 0; b < nb; ++b)
    for (size_t w = 0; w < g_again[size_t(b)].w0.size(); ++w)
      EXPECT_EQ(g_again[size_t(b)].w0[w].data, g_split[size_t(b)].w0[w].data);
}

}  // namespace

TEST(TntShards, SplitRunEqualsSequentialTitans) {
  // Titans memory, no weight norm: forward and backward bit-identical.
  MemoryConfig cfg = titans_memory_config(4, 5);
  compare_split(cfg, causal_program(23, 3, 7), 3, 0.0);  // S_L not a multiple of C_L
  compare_split(cfg, causal_program(24, 2, 8), 2, 0.0);  // on chunk boundaries
  compare_split(cfg, causal_program(10, 4, 3), 1, 0.0);  // chunk > shard
  // Large enough for the runner to use threads over the (sequence-head, shard) items.
  compare_split(titans_memory_config(16, 16), causal_program(130, 8, 40), 2, 0.0);
}

TEST(TntShards, SplitRunEqualsSequentialWithWeightNorm) {
  // Weight norm adds W⁰ gradient terms inside every shard: equal to <= 1e-12 (summation order).
  MemoryConfig cfg;
  cfg.family = Family::SwiGLU;
  cfg.loss = Loss::Dot;
  cfg.d = 4;
  cfg.dh = 6;
  cfg.momentum = true;
  cfg.muon = true;
  cfg.weight_norm = WeightNorm::Post;
  cfg.rate_columns = 3;
  compare_split(cfg, causal_program(22, 3, 5), 2, 1e-12);
  cfg.weight_norm = WeightNorm::Pre;
  compare_split(cfg, causal_program(17, 2, 6), 2, 1e-12);
}

TEST(TntShards, BranchSplitEqualsSequentialOnTheTape) {
  for (const BranchCase& c : branch_cases()) {
    const int64_t S = 2, H = 2, N = 13, d = 3, dh = 4;
    auto x = branch_inputs(c, S, H, N, d, dh, 23);
    std::vector<std::vector<Mat<double>>> grads(2);
    std::vector<Mat<double>> outs(2);
    for (int split = 0; split < 2; ++split) {
      Tape<double> t;
      std::vector<Var> v;
      for (auto& m : x) v.push_back(t.leaf(m, true));
      Var o = record_branch(t, c, v, S, H, d, dh, split == 1);
      outs[size_t(split)] = t.val(o);
      Rng r(2);
      t.grad(o) = randn(r, S * N, H * d, 1.0);
      t.backward();
      for (Var leaf : v) grads[size_t(split)].push_back(t.grad(leaf));
    }
    EXPECT_EQ(outs[0].data, outs[1].data) << c.name;
    double worst = 0;
    for (size_t i = 0; i < x.size(); ++i) worst = std::max(worst, max_abs_diff(grads[0][i], grads[1][i]));
    EXPECT_LE(worst, 1e-12) << c.name;
  }
}

// ---------------------------------------------------------------------------------------------------------
// The named-tensor op (what `ttt op tnt` runs).

namespace {

Tensor tensor_of(const Shape& shape, Rng& r, double lo, double hi) {
  Tensor t = Tensor::empty(shape, DType::F64);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<double>()[i] = r.uniform(lo, hi);
  return t;
}

SafeTensors op_inputs(int64_t B, int64_t T, int64_t d, int64_t dh, int locals, bool global) {
  Rng r(9);
  SafeTensors st;
  for (const char* n : {"q", "k", "v"}) st.add(n, tensor_of({B, T, d}, r, -0.8, 0.8));
  std::vector<std::string> prefixes;
  if (global) prefixes.push_back("g_");
  for (int i = 0; i < locals; ++i) prefixes.push_back("l" + std::to_string(i) + "_");
  for (auto& p : prefixes) {
    st.add(p + "w1", tensor_of({B, dh, d}, r, -0.5, 0.5));
    st.add(p + "w2", tensor_of({B, d, dh}, r, -0.5, 0.5));
    st.add(p + "theta", tensor_of({B, T}, r, 0.05, 0.3));
    st.add(p + "eta", tensor_of({B, T}, r, 0.3, 0.9));
    st.add(p + "alpha", tensor_of({B, T}, r, 0.02, 0.2));
  }
  st.add("grad_o", tensor_of({B, T, d}, r, -1, 1));
  return st;
}

std::string error_of(const SafeTensors& st, const TntOptions& opt) {
  try {
    tnt_cpu_backend().tnt(st, opt);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(TntOp, OutputsEveryGradientAndSequentialAgrees) {
  TntOptions opt;
  opt.global_chunk = 4;
  opt.local_chunks = {2, 3};
  opt.shard = 5;
  SafeTensors st = op_inputs(2, 11, 3, 4, 2, true);
  SafeTensors a = tnt_cpu_backend().tnt(st, opt);
  opt.batch.split_shards = false;
  SafeTensors b = tnt_cpu_backend().tnt(st, opt);
  for (auto& [name, x] : st.tensors) {
    ASSERT_TRUE(a.has("grad_" + name)) << name;
    EXPECT_EQ(a.get("grad_" + name).shape(), x.shape()) << name;
  }
  ASSERT_TRUE(a.has("o"));
  for (auto& [name, x] : a.tensors) {
    const double* p = x.data<double>();
    const double* q = b.get(name).data<double>();
    double worst = 0;
    for (int64_t i = 0; i < x.numel(); ++i) worst = std::max(worst, std::abs(p[i] - q[i]));
    EXPECT_LE(worst, 1e-12) << name;
  }
}

TEST(TntOp, BadInputsNameTheTensorOrFlag) {
  TntOptions opt;
  opt.global_chunk = 4;
  opt.local_chunks = {2, 3};
  opt.shard = 5;
  SafeTensors st = op_inputs(2, 7, 3, 4, 2, true);
  EXPECT_NE(error_of(st, [&] { auto o = opt; o.local_chunks = {2}; return o; }()).find("--local-chunks"),
            std::string::npos);
  EXPECT_NE(error_of(st, [&] { auto o = opt; o.use_global = false; return o; }()).find("'g_"), std::string::npos);
  SafeTensors bad = op_inputs(2, 7, 3, 4, 2, true);
  for (auto& [name, x] : bad.tensors)
    if (name == "l1_eta") x = Tensor::zeros({2, 6}, DType::F64);
  EXPECT_NE(error_of(bad, opt).find("'l1_eta'"), std::string::npos) << error_of(bad, opt);
  SafeTensors f32 = op_inputs(2, 7, 3, 4, 2, true);
  for (auto& [name, x] : f32.tensors)
    if (name == "g_w2") x = Tensor::zeros({2, 3, 4}, DType::F32);
  EXPECT_NE(error_of(f32, opt).find("'g_w2'"), std::string::npos) << error_of(f32, opt);
}
