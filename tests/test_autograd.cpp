// Float64 finite-difference gradient checks of every op in src/autograd/ops.h, and a check
// that the harness itself detects a wrong backward.
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include "autograd/ops.h"
#include "gradcheck.h"

using namespace ttt;
using ag::Mat;
using ag::Tape;
using ag::Var;
using gradcheck::expect_gradients_match;
using gradcheck::random_mat;
using Leaves = std::vector<Var>;

namespace {

constexpr double kTol = 1e-6;

// Gradient check with the op's name in any failure message.
template <class Build>
void check(const char* name, std::vector<Mat<double>> inputs, Build build) {
  SCOPED_TRACE(name);
  expect_gradients_match(std::move(inputs), build, kTol);
}

// x^2 with a deliberately wrong backward (missing the factor 2).
Var wrong_square(Tape<double>& t, Var a) {
  Mat<double> o = t.val(a);
  for (auto& x : o.data) x *= x;
  return t.make(std::move(o), {a}, [a](Tape<double>& t, const Mat<double>& g) {
    const Mat<double>& A = t.val(a);
    Mat<double>& ga = t.grad(a);
    for (size_t i = 0; i < g.data.size(); ++i) ga.data[i] += g.data[i] * A.data[i];
  });
}

void check_wrong_square() {
  Rng rng(1);
  expect_gradients_match({random_mat(3, 4, rng)}, [](Tape<double>& t, const Leaves& x) { return wrong_square(t, x[0]); });
}

}  // namespace

TEST(GradCheckHarness, DetectsWrongBackward) {
  Rng rng(1);
  auto rep = gradcheck::gradient_errors({random_mat(3, 4, rng)},
                                        [](Tape<double>& t, const Leaves& x) { return wrong_square(t, x[0]); });
  EXPECT_GT(rep.worst, 0.1);
  EXPECT_NONFATAL_FAILURE(check_wrong_square(), "gradient mismatch");
  // ... and accepts the correct op.
  auto ok = gradcheck::gradient_errors({random_mat(3, 4, rng)},
                                       [](Tape<double>& t, const Leaves& x) { return ag::square(t, x[0]); });
  EXPECT_LT(ok.worst, kTol);
}

TEST(GradCheckHarness, UnusedInputHasZeroGradient) {
  Rng rng(2);
  auto rep = expect_gradients_match({random_mat(2, 3, rng), random_mat(2, 3, rng)},
                                    [](Tape<double>& t, const Leaves& x) { return ag::square(t, x[0]); });
  EXPECT_EQ(rep.rel_err.size(), 2u);
  EXPECT_EQ(rep.rel_err[1], 0.0);
}

TEST(AutogradGrad, MatmulAllTransposes) {
  Rng rng(3);
  const int64_t m = 3, k = 4, n = 5;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      SCOPED_TRACE("ta=" + std::to_string(ta) + " tb=" + std::to_string(tb));
      Mat<double> a = ta ? random_mat(k, m, rng) : random_mat(m, k, rng);
      Mat<double> b = tb ? random_mat(n, k, rng) : random_mat(k, n, rng);
      check("matmul", {a, b}, [ta, tb](Tape<double>& t, const Leaves& x) {
        return ag::matmul(t, x[0], x[1], ta != 0, tb != 0);
      });
    }
}

TEST(AutogradGrad, MatmulSameOperandTwice) {
  Rng rng(4);
  check("matmul", {random_mat(4, 3, rng)},
                         [](Tape<double>& t, const Leaves& x) { return ag::matmul(t, x[0], x[0], true, false); });
}

TEST(AutogradGrad, AddSubMulDiv) {
  Rng rng(5);
  Mat<double> a = random_mat(4, 5, rng), b = random_mat(4, 5, rng), pos = random_mat(4, 5, rng, 0.5, 2.0);
  check("add", {a, b}, [](Tape<double>& t, const Leaves& x) { return ag::add(t, x[0], x[1]); });
  check("sub", {a, b}, [](Tape<double>& t, const Leaves& x) { return ag::sub(t, x[0], x[1]); });
  check("mul", {a, b}, [](Tape<double>& t, const Leaves& x) { return ag::mul(t, x[0], x[1]); });
  check("div", {a, pos}, [](Tape<double>& t, const Leaves& x) { return ag::div(t, x[0], x[1]); });
  check("mul(x,x)", {a}, [](Tape<double>& t, const Leaves& x) { return ag::mul(t, x[0], x[0]); });
}

TEST(AutogradGrad, ScaleAddConstMulScalar) {
  Rng rng(6);
  Mat<double> a = random_mat(3, 4, rng), s = random_mat(1, 1, rng);
  check("scale", {a}, [](Tape<double>& t, const Leaves& x) { return ag::scale(t, x[0], -1.7); });
  check("add_const", {a}, [](Tape<double>& t, const Leaves& x) { return ag::add_const(t, x[0], 0.3); });
  check("mul_scalar", {a, s}, [](Tape<double>& t, const Leaves& x) { return ag::mul_scalar(t, x[0], x[1]); });
}

TEST(AutogradGrad, RowColScaleAddRow) {
  Rng rng(7);
  Mat<double> a = random_mat(4, 5, rng);
  check("row_scale", {a, random_mat(4, 1, rng)},
                         [](Tape<double>& t, const Leaves& x) { return ag::row_scale(t, x[0], x[1]); });
  check("col_scale", {a, random_mat(1, 5, rng)},
                         [](Tape<double>& t, const Leaves& x) { return ag::col_scale(t, x[0], x[1]); });
  check("add_row", {a, random_mat(1, 5, rng)},
                         [](Tape<double>& t, const Leaves& x) { return ag::add_row(t, x[0], x[1]); });
}

TEST(AutogradGrad, ElementwiseUnary) {
  Rng rng(8);
  Mat<double> a = random_mat(4, 6, rng, -3.0, 3.0);
  Mat<double> pos = random_mat(4, 6, rng, 0.3, 2.5);
  Mat<double> wide = random_mat(4, 6, rng, -25.0, 25.0);  // both softplus/sigmoid branches
  check("silu", {a}, [](Tape<double>& t, const Leaves& x) { return ag::silu(t, x[0]); });
  check("dsilu", {a}, [](Tape<double>& t, const Leaves& x) { return ag::dsilu(t, x[0]); });
  check("sigmoid", {a}, [](Tape<double>& t, const Leaves& x) { return ag::sigmoid(t, x[0]); });
  check("sigmoid (wide range)", {wide}, [](Tape<double>& t, const Leaves& x) { return ag::sigmoid(t, x[0]); });
  check("softplus", {a}, [](Tape<double>& t, const Leaves& x) { return ag::softplus(t, x[0]); });
  check("softplus (wide range)", {wide}, [](Tape<double>& t, const Leaves& x) { return ag::softplus(t, x[0]); });
  check("square", {a}, [](Tape<double>& t, const Leaves& x) { return ag::square(t, x[0]); });
  check("sqrt_", {pos}, [](Tape<double>& t, const Leaves& x) { return ag::sqrt_(t, x[0]); });
  check("reciprocal", {pos}, [](Tape<double>& t, const Leaves& x) { return ag::reciprocal(t, x[0]); });
}

TEST(AutogradGrad, Reductions) {
  Rng rng(9);
  Mat<double> a = random_mat(4, 5, rng);
  check("sum", {a}, [](Tape<double>& t, const Leaves& x) { return ag::sum(t, x[0]); });
  check("mean", {a}, [](Tape<double>& t, const Leaves& x) { return ag::mean(t, x[0]); });
  check("frob_norm", {a}, [](Tape<double>& t, const Leaves& x) { return ag::frob_norm(t, x[0]); });
  check("row_norm", {a}, [](Tape<double>& t, const Leaves& x) { return ag::row_norm(t, x[0]); });
}

TEST(AutogradGrad, ShapeOps) {
  Rng rng(10);
  Mat<double> a = random_mat(5, 6, rng);
  check("transpose", {a}, [](Tape<double>& t, const Leaves& x) { return ag::transpose(t, x[0]); });
  check("slice_rows", {a}, [](Tape<double>& t, const Leaves& x) { return ag::slice_rows(t, x[0], 1, 4); });
  check("slice_cols", {a}, [](Tape<double>& t, const Leaves& x) { return ag::slice_cols(t, x[0], 2, 5); });
  check("concat_rows", {random_mat(2, 3, rng), random_mat(4, 3, rng), random_mat(1, 3, rng)},
                         [](Tape<double>& t, const Leaves& x) { return ag::concat_rows(t, {x[0], x[1], x[2]}); });
  // Overlapping slices of one input, re-joined: gradients accumulate.
  check("concat_rows of overlapping slices", {a}, [](Tape<double>& t, const Leaves& x) {
    return ag::concat_rows(t, {ag::slice_rows(t, x[0], 0, 3), ag::slice_rows(t, x[0], 2, 5)});
  });
}

TEST(AutogradGrad, ComposedExpression) {
  // A small chain mixing several ops, as the TTT layers use them.
  Rng rng(11);
  check("composed", {random_mat(4, 3, rng), random_mat(3, 5, rng), random_mat(1, 5, rng)},
                         [](Tape<double>& t, const Leaves& x) {
                           Var h = ag::add_row(t, ag::matmul(t, x[0], x[1]), x[2]);
                           Var n = ag::add_const(t, ag::row_norm(t, h), 1e-3);
                           Var y = ag::row_scale(t, ag::silu(t, h), ag::reciprocal(t, n));
                           return ag::mul_scalar(t, y, ag::frob_norm(t, h));
                         });
}
