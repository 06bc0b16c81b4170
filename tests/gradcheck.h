// Float64 gradient check by central finite differences, shared by the autograd and nn tests.
//
//   expect_gradients_match(inputs, [](Tape<double>& t, const std::vector<Var>& x) { return op(t, x[0], ...); });
//
// The harness records build() on a fresh tape with every input as a leaf that requires grad,
// takes the loss L = sum(out ⊙ R) for a fixed random R of out's shape (so every output element
// matters), seeds dL/dout = R and runs tape.backward(). Each input element is then perturbed by
// ±h and (L(x+h) - L(x-h)) / 2h is compared with the analytic gradient by the relative error
// ||g - fd|| / max(||fd||, 1e-12) per input tensor.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "autograd/tape.h"
#include "core/rng.h"

namespace ttt::gradcheck {

struct Report {
  std::vector<double> rel_err;  // per input tensor: ||g - fd|| / max(||fd||, 1e-12)
  std::vector<double> abs_err;  // per input tensor: ||g - fd||
  double worst = 0;             // max of rel_err
  int worst_input = -1;
  int64_t worst_element = -1;  // element of the worst input with the largest |g - fd|
  double analytic = 0, numeric = 0;
};

// Matrix with entries uniform in [lo, hi).
inline ag::Mat<double> random_mat(int64_t rows, int64_t cols, Rng& rng, double lo = -1.0, double hi = 1.0) {
  ag::Mat<double> m(rows, cols);
  for (auto& x : m.data) x = rng.uniform(lo, hi);
  return m;
}

// Computes the relative gradient error of every input; makes no assertion.
template <class Build>
Report gradient_errors(std::vector<ag::Mat<double>> inputs, Build build, double h = 1e-6, uint64_t seed = 0x9e3779b9) {
  ag::Mat<double> R;
  auto loss = [&](const std::vector<ag::Mat<double>>& xs, std::vector<ag::Mat<double>>* grads) -> double {
    ag::Tape<double> tape;
    std::vector<ag::Var> leaves;
    leaves.reserve(xs.size());
    for (const auto& x : xs) leaves.push_back(tape.leaf(x, true));
    const ag::Var out = build(tape, leaves);
    const ag::Mat<double>& O = tape.val(out);
    if (R.empty() && O.size() > 0) {
      Rng rng(seed);
      R = ag::Mat<double>(O.rows, O.cols);
      for (auto& r : R.data) r = rng.normal();
    }
    EXPECT_TRUE(O.same_shape(R) || O.size() == 0) << "build() output shape changed: " << O.shape();
    double L = 0;
    for (size_t i = 0; i < O.data.size(); ++i) L += O.data[i] * R.data[i];
    if (grads) {
      if (O.size() > 0 && tape.requires_grad(out)) {
        tape.accumulate(out, R);
        tape.backward();
      }
      grads->clear();
      for (size_t i = 0; i < xs.size(); ++i)
        grads->push_back(tape.has_grad(leaves[i]) ? tape.grad(leaves[i]) : ag::Mat<double>(xs[i].rows, xs[i].cols));
    }
    return L;
  };

  std::vector<ag::Mat<double>> grads;
  loss(inputs, &grads);
  Report rep;
  for (size_t k = 0; k < inputs.size(); ++k) {
    double num2 = 0, den2 = 0, max_diff = -1;
    int64_t max_el = -1;
    double max_a = 0, max_n = 0;
    for (size_t j = 0; j < inputs[k].data.size(); ++j) {
      const double x0 = inputs[k].data[j];
      inputs[k].data[j] = x0 + h;
      const double lp = loss(inputs, nullptr);
      inputs[k].data[j] = x0 - h;
      const double lm = loss(inputs, nullptr);
      inputs[k].data[j] = x0;
      const double fd = (lp - lm) / (2 * h);
      const double an = grads[k].data[j];
      const double d = an - fd;
      num2 += d * d;
      den2 += fd * fd;
      if (std::abs(d) > max_diff) {
        max_diff = std::abs(d);
        max_el = int64_t(j);
        max_a = an;
        max_n = fd;
      }
    }
    const double rel = std::sqrt(num2) / std::max(std::sqrt(den2), 1e-12);
    rep.rel_err.push_back(rel);
    rep.abs_err.push_back(std::sqrt(num2));
    if (rep.worst_input < 0 || rel > rep.worst) {
      rep.worst = rel;
      rep.worst_input = int(k);
      rep.worst_element = max_el;
      rep.analytic = max_a;
      rep.numeric = max_n;
    }
  }
  return rep;
}

// Adds a non-fatal failure ("gradient mismatch ...") for every input whose relative error exceeds tol.
template <class Build>
Report expect_gradients_match(std::vector<ag::Mat<double>> inputs, Build build, double tol = 1e-6, double h = 1e-6) {
  std::vector<int64_t> cols;
  for (const auto& m : inputs) cols.push_back(m.cols);
  Report rep = gradient_errors(std::move(inputs), build, h);
  for (size_t k = 0; k < rep.rel_err.size(); ++k) {
    std::ostringstream worst;
    if (int(k) == rep.worst_input && cols[k] > 0 && rep.worst_element >= 0)
      worst << " (worst element [" << rep.worst_element / cols[k] << "," << rep.worst_element % cols[k]
            << "]: analytic " << rep.analytic << " vs numeric " << rep.numeric << ")";
    EXPECT_LE(rep.rel_err[k], tol) << "gradient mismatch for input " << k << ": relative error " << rep.rel_err[k]
                                   << ", absolute " << rep.abs_err[k] << worst.str();
  }
  return rep;
}

}  // namespace ttt::gradcheck
