// Layers of the LaCT language model (src/nn/layers.h): float64 finite-difference gradient
// checks w.r.t. every differentiable input, reference values, and float32/float64 agreement.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/dtype.h"
#include "core/scalar_math.h"
#include "gradcheck.h"
#include "nn/layers.h"

using namespace ttt;
using ag::Mat;
using ag::Tape;
using ag::Var;
using gradcheck::expect_gradients_match;
using gradcheck::random_mat;
using Leaves = std::vector<Var>;

namespace {

constexpr double kTol = 1e-6;

std::vector<int64_t> iota_positions(int64_t n, int64_t start = 0) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[size_t(i)] = start + i;
  return p;
}

double max_abs_diff(const Mat<double>& a, const Mat<double>& b) {
  EXPECT_TRUE(a.same_shape(b)) << a.shape() << " vs " << b.shape();
  double m = 0;
  for (size_t i = 0; i < a.data.size(); ++i) m = std::max(m, std::abs(a.data[i] - b.data[i]));
  return m;
}

template <class T>
Mat<T> cast(const Mat<double>& m) {
  Mat<T> o(m.rows, m.cols);
  for (size_t i = 0; i < m.data.size(); ++i) o.data[i] = T(m.data[i]);
  return o;
}

// Naive O(T^2) causal sliding-window attention in double.
Mat<double> naive_attention(const Mat<double>& q, const Mat<double>& k, const Mat<double>& v, int64_t heads,
                            int64_t window) {
  const int64_t n = q.rows, d = q.cols, hd = d / heads;
  Mat<double> o(n, d);
  const double scale = 1.0 / std::sqrt(double(hd));
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t t = 0; t < n; ++t) {
      std::vector<double> s(size_t(n), -std::numeric_limits<double>::infinity());
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j <= t; ++j) {
        if (j <= t - window) continue;
        double acc = 0;
        for (int64_t c = 0; c < hd; ++c) acc += q(t, h * hd + c) * k(j, h * hd + c);
        s[size_t(j)] = acc * scale;
        mx = std::max(mx, s[size_t(j)]);
      }
      double z = 0;
      for (int64_t j = 0; j < n; ++j) z += std::exp(s[size_t(j)] - mx);
      for (int64_t j = 0; j < n; ++j) {
        const double p = std::exp(s[size_t(j)] - mx) / z;
        if (p == 0) continue;
        for (int64_t c = 0; c < hd; ++c) o(t, h * hd + c) += p * v(j, h * hd + c);
      }
    }
  return o;
}

struct AttnCase {
  int64_t n, heads, hd, window;
  nn::AttentionBlocks blocks;
};

std::string describe(const AttnCase& c) {
  return "T=" + std::to_string(c.n) + " H=" + std::to_string(c.heads) + " hd=" + std::to_string(c.hd) +
         " W=" + std::to_string(c.window) + " blocks=" + std::to_string(c.blocks.query) + "x" +
         std::to_string(c.blocks.key);
}

}  // namespace

// ---------------------------------------------------------------------------------------------

TEST(NnLayers, EmbeddingGradientAndValues) {
  Rng rng(20);
  const std::vector<int32_t> ids = {3, 0, 7, 3, 10, 3, 1, 0, 9};  // repeats: scatter-add
  Mat<double> table = random_mat(11, 8, rng);
  expect_gradients_match({table}, [ids](Tape<double>& t, const Leaves& x) { return nn::embedding(t, x[0], ids); });
  Tape<double> t;
  Var tab = t.leaf(table);
  const Mat<double>& e = t.val(nn::embedding(t, tab, ids));
  ASSERT_EQ(e.rows, 9);
  for (int64_t i = 0; i < 9; ++i)
    for (int64_t j = 0; j < 8; ++j) EXPECT_EQ(e(i, j), table(ids[size_t(i)], j));
  EXPECT_THROW(nn::embedding(t, tab, {11}), Error);
  EXPECT_THROW(nn::embedding(t, tab, {-1}), Error);
}

TEST(NnLayers, RmsNormGradientAndValues) {
  Rng rng(21);
  Mat<double> x = random_mat(9, 8, rng), w = random_mat(1, 8, rng, 0.5, 1.5);
  expect_gradients_match({x, w}, [](Tape<double>& t, const Leaves& v) { return nn::rms_norm(t, v[0], v[1]); });
  Tape<double> t;
  const Mat<double>& y = t.val(nn::rms_norm(t, t.leaf(x), t.leaf(w), 1e-6));
  for (int64_t i = 0; i < 9; ++i) {
    double ms = 0;
    for (int64_t j = 0; j < 8; ++j) ms += x(i, j) * x(i, j) / 8;
    for (int64_t j = 0; j < 8; ++j) EXPECT_NEAR(y(i, j), x(i, j) / std::sqrt(ms + 1e-6) * w(0, j), 1e-13);
  }
  EXPECT_THROW(nn::rms_norm(t, t.leaf(x), t.leaf(random_mat(1, 7, rng))), Error);
}

TEST(NnLayers, RmsNormHeadsGradientAndValues) {
  Rng rng(22);
  Mat<double> x = random_mat(7, 8, rng), w = random_mat(1, 8, rng, 0.5, 1.5);
  expect_gradients_match({x, w}, [](Tape<double>& t, const Leaves& v) { return nn::rms_norm_heads(t, v[0], v[1], 2); });
  // Equals plain RMSNorm of each head block.
  Tape<double> t;
  Var xv = t.leaf(x), wv = t.leaf(w);
  const Mat<double>& y = t.val(nn::rms_norm_heads(t, xv, wv, 2));
  for (int64_t h = 0; h < 2; ++h) {
    const Mat<double>& yh =
        t.val(nn::rms_norm(t, ag::slice_cols(t, xv, h * 4, h * 4 + 4), ag::slice_cols(t, wv, h * 4, h * 4 + 4)));
    for (int64_t i = 0; i < 7; ++i)
      for (int64_t j = 0; j < 4; ++j) EXPECT_NEAR(y(i, h * 4 + j), yh(i, j), 1e-14);
  }
  EXPECT_THROW(nn::rms_norm_heads(t, xv, wv, 3), Error);
}

TEST(NnLayers, L2NormHeadsGradientAndValues) {
  Rng rng(23);
  Mat<double> x = random_mat(8, 8, rng);
  expect_gradients_match({x}, [](Tape<double>& t, const Leaves& v) { return nn::l2norm_heads(t, v[0], 2); });
  Tape<double> t;
  const Mat<double>& y = t.val(nn::l2norm_heads(t, t.leaf(x), 2));
  for (int64_t i = 0; i < 8; ++i)
    for (int64_t h = 0; h < 2; ++h) {
      double nx = 0, ny = 0;
      for (int64_t j = 0; j < 4; ++j) {
        nx += x(i, h * 4 + j) * x(i, h * 4 + j);
        ny += y(i, h * 4 + j) * y(i, h * 4 + j);
      }
      EXPECT_NEAR(std::sqrt(ny), std::sqrt(nx) / (std::sqrt(nx) + 1e-5), 1e-14);
    }
}

TEST(NnLayers, RopeGradient) {
  Rng rng(24);
  Mat<double> x = random_mat(9, 8, rng);
  const auto pos = iota_positions(9, 3);
  expect_gradients_match({x}, [pos](Tape<double>& t, const Leaves& v) { return nn::rope(t, v[0], 2, pos, 100.0); });
}

TEST(NnLayers, RopeOffsetPositionsAndRelativeProperty) {
  Rng rng(25);
  const int64_t n = 12, heads = 2, hd = 8;
  Mat<double> x = random_mat(n, heads * hd, rng);
  Tape<double> t;
  Var xv = t.leaf(x);
  const Mat<double>& full = t.val(nn::rope(t, xv, heads, iota_positions(n), 1e4));
  // Rows 5.. rotated with positions starting at 5 equal the same rows of the full sequence.
  const Mat<double>& part = t.val(nn::rope(t, ag::slice_rows(t, xv, 5, n), heads, iota_positions(n - 5, 5), 1e4));
  for (int64_t i = 0; i < n - 5; ++i)
    for (int64_t j = 0; j < heads * hd; ++j) EXPECT_NEAR(part(i, j), full(i + 5, j), 1e-14);
  // Position 0 is the identity.
  for (int64_t j = 0; j < heads * hd; ++j) EXPECT_DOUBLE_EQ(full(0, j), x(0, j));
  // rotate_half pairing: <rope(a, m), rope(b, m')> depends only on m - m' within a head.
  Mat<double> a = random_mat(1, hd, rng), b = random_mat(1, hd, rng);
  auto dot_at = [&](int64_t m, int64_t mp) {
    Tape<double> tt;
    const Mat<double>& ra = tt.val(nn::rope(tt, tt.leaf(a), 1, {m}, 1e4));
    const Mat<double>& rb = tt.val(nn::rope(tt, tt.leaf(b), 1, {mp}, 1e4));
    double s = 0;
    for (int64_t j = 0; j < hd; ++j) s += ra(0, j) * rb(0, j);
    return s;
  };
  EXPECT_NEAR(dot_at(7, 3), dot_at(104, 100), 1e-12);
  // Channel i pairs with i + hd/2: rotating a vector with only channel 0 set at position 1 gives (cos 1, sin 1).
  Mat<double> e(1, hd);
  e(0, 0) = 1;
  Tape<double> te;
  const Mat<double>& re = te.val(nn::rope(te, te.leaf(e), 1, {1}, 1e4));
  EXPECT_NEAR(re(0, 0), std::cos(1.0), 1e-15);
  EXPECT_NEAR(re(0, hd / 2), std::sin(1.0), 1e-15);
  // Odd head width and wrong position count are errors.
  EXPECT_THROW(nn::rope(t, t.leaf(random_mat(3, 6, rng)), 2, iota_positions(3), 1e4), Error);
  EXPECT_THROW(nn::rope(t, xv, heads, iota_positions(n - 1), 1e4), Error);
}

// ---------------------------------------------------------------------------------------------

TEST(NnAttention, MatchesNaiveReference) {
  const std::vector<AttnCase> cases = {
      {70, 2, 4, 16, {}},         // T not a multiple of the block, W < T
      {13, 2, 4, 5, {4, 3}},      // many query blocks and key tiles
      {13, 2, 4, 1, {4, 3}},      // W = 1: output = v
      {13, 2, 4, 13, {4, 3}},     // W = T
      {13, 2, 4, 40, {4, 3}},     // W > T: full causal
      {150, 3, 8, 200, {}},       // several blocks, full causal
      {200, 2, 8, 50, {64, 32}},  // key tiles smaller than the window
      {1, 2, 4, 3, {}},
  };
  Rng rng(30);
  for (const auto& c : cases) {
    SCOPED_TRACE(describe(c));
    const int64_t d = c.heads * c.hd;
    Mat<double> q = random_mat(c.n, d, rng, -2, 2), k = random_mat(c.n, d, rng, -2, 2), v = random_mat(c.n, d, rng);
    Tape<double> t;
    const Mat<double>& o =
        t.val(nn::sliding_window_attention(t, t.leaf(q), t.leaf(k), t.leaf(v), c.heads, c.window, c.blocks));
    EXPECT_LE(max_abs_diff(o, naive_attention(q, k, v, c.heads, c.window)), 1e-12);
    if (c.window == 1) {
      EXPECT_LE(max_abs_diff(o, v), 1e-15);
    }
  }
}

TEST(NnAttention, GradientCheck) {
  const std::vector<AttnCase> cases = {
      {13, 2, 4, 5, {4, 3}},
      {13, 2, 4, 40, {4, 3}},
      {11, 2, 4, 4, {64, 256}},
      {70, 2, 4, 9, {}},
  };
  Rng rng(31);
  for (const auto& c : cases) {
    SCOPED_TRACE(describe(c));
    const int64_t d = c.heads * c.hd;
    expect_gradients_match({random_mat(c.n, d, rng, -2, 2), random_mat(c.n, d, rng, -2, 2), random_mat(c.n, d, rng)},
                           [c](Tape<double>& t, const Leaves& x) {
                             return nn::sliding_window_attention(t, x[0], x[1], x[2], c.heads, c.window, c.blocks);
                           });
  }
  // W = 1: the output is v, so dq = dk = 0 exactly (a relative error against a zero finite
  // difference is meaningless; check the absolute error instead).
  {
    auto rep = gradcheck::gradient_errors(
        {random_mat(13, 8, rng, -2, 2), random_mat(13, 8, rng, -2, 2), random_mat(13, 8, rng)},
        [](Tape<double>& t, const Leaves& x) { return nn::sliding_window_attention(t, x[0], x[1], x[2], 2, 1, {4, 3}); });
    EXPECT_LE(rep.abs_err[0], 1e-9);
    EXPECT_LE(rep.abs_err[1], 1e-9);
    EXPECT_LE(rep.rel_err[2], kTol);
  }
  // q = k = v as one variable: the three gradients accumulate.
  expect_gradients_match({random_mat(10, 8, rng)}, [](Tape<double>& t, const Leaves& x) {
    return nn::sliding_window_attention(t, x[0], x[0], x[0], 2, 3, {4, 2});
  });
}

// Issue 10 item 3: the columns a query attends to lie inside the tile, also for a key tile wholly before
// the query's window (the backward zeroed columns [0, lo) of such a row, writing past it).
TEST(NnAttention, KeyRangeStaysInTile) {
  for (int64_t window = 1; window <= 6; ++window)
    for (int64_t tq = 0; tq < 16; ++tq)
      for (int64_t k0 = 0; k0 <= tq + 3; ++k0)
        for (int64_t k1 = k0 + 1; k1 <= k0 + 5; ++k1) {
          SCOPED_TRACE("window " + std::to_string(window) + " query " + std::to_string(tq) + " tile [" +
                       std::to_string(k0) + "," + std::to_string(k1) + ")");
          const nn::KeyRange r = nn::attention_key_range(tq, k0, k1, window);
          ASSERT_LE(0, r.lo);
          ASSERT_LE(r.lo, r.hi);
          ASSERT_LE(r.hi, k1 - k0);
          for (int64_t j = 0; j < k1 - k0; ++j)
            EXPECT_EQ(r.lo <= j && j < r.hi, tq - window < k0 + j && k0 + j <= tq) << "column " << j;
        }
}

TEST(NnAttention, Float32AgreesWithFloat64) {
  Rng rng(32);
  const int64_t n = 150, heads = 2, hd = 16, d = heads * hd, window = 40;
  Mat<double> q = random_mat(n, d, rng, -1, 1), k = random_mat(n, d, rng, -1, 1), v = random_mat(n, d, rng);
  Mat<double> g = random_mat(n, d, rng);
  std::vector<Mat<double>> res64, res32;
  {
    Tape<double> t;
    Var qv = t.leaf(q, true), kv = t.leaf(k, true), vv = t.leaf(v, true);
    Var o = nn::sliding_window_attention(t, qv, kv, vv, heads, window);
    t.accumulate(o, g);
    t.backward();
    res64 = {t.val(o), t.grad(qv), t.grad(kv), t.grad(vv)};
  }
  {
    Tape<float> t;
    Var qv = t.leaf(cast<float>(q), true), kv = t.leaf(cast<float>(k), true), vv = t.leaf(cast<float>(v), true);
    Var o = nn::sliding_window_attention(t, qv, kv, vv, heads, window);
    t.accumulate(o, cast<float>(g));
    t.backward();
    for (const Mat<float>* m : std::vector<const Mat<float>*>{&t.val(o), &t.grad(qv), &t.grad(kv), &t.grad(vv)}) {
      Mat<double> md(m->rows, m->cols);
      for (size_t i = 0; i < m->data.size(); ++i) md.data[i] = double(m->data[i]);
      res32.push_back(md);
    }
  }
  const char* names[] = {"output", "dq", "dk", "dv"};
  for (size_t i = 0; i < 4; ++i) {
    double num = 0, den = 0;
    for (size_t j = 0; j < res64[i].data.size(); ++j) {
      num += std::pow(res32[i].data[j] - res64[i].data[j], 2);
      den += std::pow(res64[i].data[j], 2);
    }
    EXPECT_LE(std::sqrt(num / den), 1e-4) << names[i];
  }
}

TEST(NnAttention, ShapeErrors) {
  Rng rng(33);
  Tape<double> t;
  Var a = t.leaf(random_mat(5, 8, rng)), b = t.leaf(random_mat(6, 8, rng));
  EXPECT_THROW(nn::sliding_window_attention(t, a, b, a, 2, 4), Error);
  EXPECT_THROW(nn::sliding_window_attention(t, a, a, a, 3, 4), Error);
  EXPECT_THROW(nn::sliding_window_attention(t, a, a, a, 2, 0), Error);
}

// ---------------------------------------------------------------------------------------------

TEST(NnLayers, CrossEntropyGradientAndIgnoredTargets) {
  Rng rng(40);
  Mat<double> logits = random_mat(9, 6, rng, -3, 3);
  const std::vector<int32_t> targets = {2, -1, 0, 5, -100, 3, 3, -1, 1};
  expect_gradients_match({logits}, [targets](Tape<double>& t, const Leaves& x) {
    return nn::cross_entropy(t, x[0], targets);
  });
  Tape<double> t;
  Var lv = t.leaf(logits, true);
  std::vector<double> per_token;
  Var loss = nn::cross_entropy(t, lv, targets, &per_token);
  ASSERT_EQ(per_token.size(), 9u);
  double total = 0;
  int count = 0;
  for (int64_t i = 0; i < 9; ++i) {
    if (targets[size_t(i)] < 0) {
      EXPECT_EQ(per_token[size_t(i)], 0.0);
      continue;
    }
    double z = 0;
    for (int64_t j = 0; j < 6; ++j) z += std::exp(logits(i, j));
    const double li = std::log(z) - logits(i, targets[size_t(i)]);
    EXPECT_NEAR(per_token[size_t(i)], li, 1e-13);
    total += li;
    ++count;
  }
  EXPECT_NEAR(t.val(loss).data[0], total / count, 1e-13);
  t.grad(loss).data[0] = 1;
  t.backward();
  for (int64_t j = 0; j < 6; ++j) EXPECT_EQ(t.grad(lv)(1, j), 0.0);  // ignored rows get no gradient
  // Stable for large logits.
  Mat<double> big(1, 3);
  big(0, 0) = 1000;
  big(0, 1) = 999;
  Tape<double> tb;
  const double lb = tb.val(nn::cross_entropy(tb, tb.leaf(big), {1})).data[0];
  EXPECT_NEAR(lb, 1.0 + std::log(1 + std::exp(-1.0) + std::exp(-1000.0)), 1e-12);
  // All ignored: loss 0.
  Tape<double> ti;
  EXPECT_EQ(ti.val(nn::cross_entropy(ti, ti.leaf(big), {-1})).data[0], 0.0);
  EXPECT_THROW(nn::cross_entropy(ti, ti.leaf(big), {3}), Error);
  EXPECT_THROW(nn::cross_entropy(ti, ti.leaf(big), {0, 1}), Error);
}

TEST(NnLayers, SwigluMlpGradient) {
  Rng rng(41);
  const int64_t n = 7, d = 8, f = 12;
  Mat<double> x = random_mat(n, d, rng), wg = random_mat(d, f, rng), wu = random_mat(d, f, rng),
              wd = random_mat(f, d, rng);
  expect_gradients_match({x, wg, wu, wd},
                         [](Tape<double>& t, const Leaves& v) { return nn::swiglu_mlp(t, v[0], v[1], v[2], v[3]); });
  Tape<double> t;
  EXPECT_THROW(nn::swiglu_mlp(t, t.leaf(x), t.leaf(wg), t.leaf(wu), t.leaf(random_mat(f, d + 1, rng))), Error);
}

// swiglu_mlp's bf16_stored (the CPU emulation of the GPU model's bf16 activations): x Wg and x Wu rounded to bf16
// in the forward (straight-through: their gradients unrounded), d(silu(x Wg) (x Wu)) rounded to bf16 in the
// backward; against those formulas written out, and away from the unrounded layer (the roundings are there).
TEST(NnLayers, SwigluMlpBf16StoredRoundsGateUpAndTheirGradient) {
  Rng rng(43);
  const int64_t n = 9, d = 16, f = 24;
  const Mat<double> x = random_mat(n, d, rng), wg = random_mat(d, f, rng), wu = random_mat(d, f, rng),
                    wd = random_mat(f, d, rng), g = random_mat(n, d, rng);
  auto run = [&](bool bf16_stored) {
    Tape<double> t;
    std::vector<Var> v{t.leaf(x, true), t.leaf(wg, true), t.leaf(wu, true), t.leaf(wd, true)};
    const Var y = nn::swiglu_mlp(t, v[0], v[1], v[2], v[3], bf16_stored);
    t.grad(y) = g;
    t.backward();
    std::vector<Mat<double>> out{t.val(y)};
    for (const Var& leaf : v) out.push_back(t.grad(leaf));
    return out;  // y, dx, dwg, dwu, dwd
  };
  auto round = [](Mat<double> m) {
    for (double& e : m.data) e = double(round_to_bf16(float(e)));
    return m;
  };
  using ag::detail::mm;
  const Mat<double> a = round(mm(x, wg, false, false)), u = round(mm(x, wu, false, false));
  Mat<double> h(n, f), da(n, f), du(n, f);
  for (size_t i = 0; i < h.data.size(); ++i) h.data[i] = math::silu(a.data[i]) * u.data[i];
  const Mat<double> dh = round(mm(g, wd, false, true));
  for (size_t i = 0; i < h.data.size(); ++i) {
    da.data[i] = dh.data[i] * u.data[i] * math::dsilu(a.data[i]);
    du.data[i] = dh.data[i] * math::silu(a.data[i]);
  }
  Mat<double> dx = mm(da, wg, false, true);
  const Mat<double> dx_up = mm(du, wu, false, true);
  for (size_t i = 0; i < dx.data.size(); ++i) dx.data[i] += dx_up.data[i];
  const std::vector<Mat<double>> want{mm(h, wd, false, false), dx, mm(x, da, true, false), mm(x, du, true, false),
                                      mm(h, g, true, false)};
  const char* names[] = {"y", "dx", "dw_gate", "dw_up", "dw_down"};
  const std::vector<Mat<double>> got = run(true), unrounded = run(false);
  double unrounded_err = 0;
  for (size_t k = 0; k < want.size(); ++k) {
    double scale = 0;
    for (double e : want[k].data) scale = std::max(scale, std::abs(e));
    EXPECT_LE(max_abs_diff(got[k], want[k]), 1e-12 * scale) << names[k];
    unrounded_err = std::max(unrounded_err, max_abs_diff(unrounded[k], want[k]) / scale);
  }
  EXPECT_GT(unrounded_err, 1e-4) << "the roundings changed nothing";
}

TEST(NnLayers, LinearGradient) {
  Rng rng(42);
  Mat<double> x = random_mat(9, 8, rng), w = random_mat(8, 5, rng), b = random_mat(1, 5, rng);
  expect_gradients_match({x, w}, [](Tape<double>& t, const Leaves& v) { return nn::linear(t, v[0], v[1]); });
  expect_gradients_match({x, w, b},
                         [](Tape<double>& t, const Leaves& v) { return nn::linear_bias(t, v[0], v[1], v[2]); });
  Tape<double> t;
  EXPECT_THROW(nn::linear(t, t.leaf(x), t.leaf(random_mat(7, 5, rng))), Error);
  EXPECT_THROW(nn::linear_bias(t, t.leaf(x), t.leaf(w), t.leaf(random_mat(1, 4, rng))), Error);
}

TEST(NnLayers, BlockCompositionGradient) {
  // One pre-norm attention + MLP block in miniature: every op chained on one tape.
  Rng rng(43);
  const int64_t n = 9, d = 8, heads = 2;
  const auto pos = iota_positions(n);
  expect_gradients_match(
      {random_mat(n, d, rng), random_mat(1, d, rng, 0.5, 1.5), random_mat(d, 3 * d, rng), random_mat(d, d, rng)},
      [pos](Tape<double>& t, const Leaves& v) {
        Var h = nn::rms_norm(t, v[0], v[1]);
        Var qkv = nn::linear(t, h, v[2]);
        Var q = nn::rope(t, nn::l2norm_heads(t, ag::slice_cols(t, qkv, 0, d), heads), heads, pos, 1e4);
        Var k = nn::rope(t, ag::slice_cols(t, qkv, d, 2 * d), heads, pos, 1e4);
        Var a = nn::sliding_window_attention(t, q, k, ag::slice_cols(t, qkv, 2 * d, 3 * d), heads, 4, {4, 3});
        return ag::add(t, v[0], nn::linear(t, a, v[3]));
      });
}
