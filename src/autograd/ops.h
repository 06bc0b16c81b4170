// Differentiable matrix ops on the tape. Each op: forward value, then the backward
// closure next to it. All are checked against float64 finite differences in
// tests/test_autograd.cpp.
#pragma once
#include <cmath>
#include <vector>

#include "autograd/tape.h"
#include "core/blas.h"
#include "core/scalar_math.h"

namespace ttt::ag {

namespace detail {
// C (+)= op(A) op(B) with shapes checked.
template <class T>
Mat<T> mm(const Mat<T>& a, const Mat<T>& b, bool ta, bool tb) {
  const int64_t m = ta ? a.cols : a.rows, k = ta ? a.rows : a.cols;
  const int64_t kb = tb ? b.cols : b.rows, n = tb ? b.rows : b.cols;
  TTT_CHECK(k == kb, "matmul shape mismatch: " << a.shape() << (ta ? "^T" : "") << " x " << b.shape() << (tb ? "^T" : ""));
  Mat<T> c(m, n);
  if (k == 0) return c;
  gemm<T>(ta, tb, m, n, k, T(1), a.ptr(), a.cols, b.ptr(), b.cols, T(0), c.ptr(), n);
  return c;
}
template <class T>
void mm_acc(Mat<T>& c, const Mat<T>& a, const Mat<T>& b, bool ta, bool tb) {
  const int64_t m = ta ? a.cols : a.rows, k = ta ? a.rows : a.cols;
  const int64_t n = tb ? b.rows : b.cols;
  TTT_CHECK(c.rows == m && c.cols == n, "matmul accumulate shape mismatch");
  if (k == 0) return;
  gemm<T>(ta, tb, m, n, k, T(1), a.ptr(), a.cols, b.ptr(), b.cols, T(1), c.ptr(), n);
}
template <class T, class F>
Mat<T> map(const Mat<T>& a, F f) {
  Mat<T> o(a.rows, a.cols);
  for (size_t i = 0; i < a.data.size(); ++i) o.data[i] = f(a.data[i]);
  return o;
}
}  // namespace detail

// op(a) @ op(b)
template <class T>
Var matmul(Tape<T>& t, Var a, Var b, bool ta = false, bool tb = false) {
  Mat<T> out = detail::mm(t.val(a), t.val(b), ta, tb);
  return t.make(std::move(out), {a, b}, [a, b, ta, tb](Tape<T>& t, const Mat<T>& g) {
    // C = op(A) op(B):  dop(A) = G op(B)^T,  dop(B) = op(A)^T G
    if (t.requires_grad(a)) {
      if (!ta) detail::mm_acc(t.grad(a), g, t.val(b), false, !tb);   // dA = G op(B)^T
      else detail::mm_acc(t.grad(a), t.val(b), g, tb, true);         // dA = op(B) G^T
    }
    if (t.requires_grad(b)) {
      if (!tb) detail::mm_acc(t.grad(b), t.val(a), g, !ta, false);   // dB = op(A)^T G
      else detail::mm_acc(t.grad(b), g, t.val(a), true, ta);         // dB = G^T op(A)
    }
  });
}

template <class T>
Var add(Tape<T>& t, Var a, Var b) {
  const Mat<T>& A = t.val(a);
  const Mat<T>& B = t.val(b);
  TTT_CHECK(A.same_shape(B), "add shape mismatch " << A.shape() << " vs " << B.shape());
  Mat<T> o = A;
  for (size_t i = 0; i < o.data.size(); ++i) o.data[i] += B.data[i];
  return t.make(std::move(o), {a, b}, [a, b](Tape<T>& t, const Mat<T>& g) {
    t.accumulate(a, g);
    t.accumulate(b, g);
  });
}

template <class T>
Var sub(Tape<T>& t, Var a, Var b) {
  const Mat<T>& A = t.val(a);
  const Mat<T>& B = t.val(b);
  TTT_CHECK(A.same_shape(B), "sub shape mismatch " << A.shape() << " vs " << B.shape());
  Mat<T> o = A;
  for (size_t i = 0; i < o.data.size(); ++i) o.data[i] -= B.data[i];
  return t.make(std::move(o), {a, b}, [a, b](Tape<T>& t, const Mat<T>& g) {
    t.accumulate(a, g);
    if (t.requires_grad(b)) {
      Mat<T>& gb = t.grad(b);
      for (size_t i = 0; i < g.data.size(); ++i) gb.data[i] -= g.data[i];
    }
  });
}

// Element-wise product.
template <class T>
Var mul(Tape<T>& t, Var a, Var b) {
  const Mat<T>& A = t.val(a);
  const Mat<T>& B = t.val(b);
  TTT_CHECK(A.same_shape(B), "mul shape mismatch " << A.shape() << " vs " << B.shape());
  Mat<T> o(A.rows, A.cols);
  for (size_t i = 0; i < o.data.size(); ++i) o.data[i] = A.data[i] * B.data[i];
  return t.make(std::move(o), {a, b}, [a, b](Tape<T>& t, const Mat<T>& g) {
    const Mat<T>& A = t.val(a);
    const Mat<T>& B = t.val(b);
    if (t.requires_grad(a)) {
      Mat<T>& ga = t.grad(a);
      for (size_t i = 0; i < g.data.size(); ++i) ga.data[i] += g.data[i] * B.data[i];
    }
    if (t.requires_grad(b)) {
      Mat<T>& gb = t.grad(b);
      for (size_t i = 0; i < g.data.size(); ++i) gb.data[i] += g.data[i] * A.data[i];
    }
  });
}

// Element-wise quotient a / b.
template <class T>
Var div(Tape<T>& t, Var a, Var b) {
  const Mat<T>& A = t.val(a);
  const Mat<T>& B = t.val(b);
  TTT_CHECK(A.same_shape(B), "div shape mismatch " << A.shape() << " vs " << B.shape());
  Mat<T> o(A.rows, A.cols);
  for (size_t i = 0; i < o.data.size(); ++i) o.data[i] = A.data[i] / B.data[i];
  return t.make(std::move(o), {a, b}, [a, b](Tape<T>& t, const Mat<T>& g) {
    const Mat<T>& A = t.val(a);
    const Mat<T>& B = t.val(b);
    if (t.requires_grad(a)) {
      Mat<T>& ga = t.grad(a);
      for (size_t i = 0; i < g.data.size(); ++i) ga.data[i] += g.data[i] / B.data[i];
    }
    if (t.requires_grad(b)) {
      Mat<T>& gb = t.grad(b);
      for (size_t i = 0; i < g.data.size(); ++i) gb.data[i] -= g.data[i] * A.data[i] / (B.data[i] * B.data[i]);
    }
  });
}

// c * a for a constant c.
template <class T>
Var scale(Tape<T>& t, Var a, double c) {
  Mat<T> o = detail::map(t.val(a), [c](T x) { return T(c) * x; });
  return t.make(std::move(o), {a}, [a, c](Tape<T>& t, const Mat<T>& g) {
    Mat<T>& ga = t.grad(a);
    for (size_t i = 0; i < g.data.size(); ++i) ga.data[i] += T(c) * g.data[i];
  });
}

// a + c for a constant c.
template <class T>
Var add_const(Tape<T>& t, Var a, double c) {
  Mat<T> o = detail::map(t.val(a), [c](T x) { return x + T(c); });
  return t.make(std::move(o), {a}, [a](Tape<T>& t, const Mat<T>& g) { t.accumulate(a, g); });
}

// a * s where s is a 1x1 variable.
template <class T>
Var mul_scalar(Tape<T>& t, Var a, Var s) {
  TTT_CHECK(t.val(s).size() == 1, "mul_scalar needs a 1x1 scalar, got " << t.val(s).shape());
  const T sv = t.val(s).data[0];
  Mat<T> o = detail::map(t.val(a), [sv](T x) { return x * sv; });
  return t.make(std::move(o), {a, s}, [a, s](Tape<T>& t, const Mat<T>& g) {
    const T sv = t.val(s).data[0];
    if (t.requires_grad(a)) {
      Mat<T>& ga = t.grad(a);
      for (size_t i = 0; i < g.data.size(); ++i) ga.data[i] += g.data[i] * sv;
    }
    if (t.requires_grad(s)) {
      const Mat<T>& A = t.val(a);
      T acc = 0;
      for (size_t i = 0; i < g.data.size(); ++i) acc += g.data[i] * A.data[i];
      t.grad(s).data[0] += acc;
    }
  });
}

// a[i,j] * v[i] for v of shape [rows,1].
template <class T>
Var row_scale(Tape<T>& t, Var a, Var v) {
  const Mat<T>& A = t.val(a);
  const Mat<T>& V = t.val(v);
  TTT_CHECK(V.rows == A.rows && V.cols == 1, "row_scale: " << A.shape() << " by " << V.shape());
  Mat<T> o(A.rows, A.cols);
  for (int64_t i = 0; i < A.rows; ++i)
    for (int64_t j = 0; j < A.cols; ++j) o(i, j) = A(i, j) * V.data[size_t(i)];
  return t.make(std::move(o), {a, v}, [a, v](Tape<T>& t, const Mat<T>& g) {
    const Mat<T>& A = t.val(a);
    const Mat<T>& V = t.val(v);
    if (t.requires_grad(a)) {
      Mat<T>& ga = t.grad(a);
      for (int64_t i = 0; i < A.rows; ++i)
        for (int64_t j = 0; j < A.cols; ++j) ga(i, j) += g(i, j) * V.data[size_t(i)];
    }
    if (t.requires_grad(v)) {
      Mat<T>& gv = t.grad(v);
      for (int64_t i = 0; i < A.rows; ++i) {
        T acc = 0;
        for (int64_t j = 0; j < A.cols; ++j) acc += g(i, j) * A(i, j);
        gv.data[size_t(i)] += acc;
      }
    }
  });
}

// a[i,j] * v[j] for v of shape [1,cols].
template <class T>
Var col_scale(Tape<T>& t, Var a, Var v) {
  const Mat<T>& A = t.val(a);
  const Mat<T>& V = t.val(v);
  TTT_CHECK(V.rows == 1 && V.cols == A.cols, "col_scale: " << A.shape() << " by " << V.shape());
  Mat<T> o(A.rows, A.cols);
  for (int64_t i = 0; i < A.rows; ++i)
    for (int64_t j = 0; j < A.cols; ++j) o(i, j) = A(i, j) * V.data[size_t(j)];
  return t.make(std::move(o), {a, v}, [a, v](Tape<T>& t, const Mat<T>& g) {
    const Mat<T>& A = t.val(a);
    const Mat<T>& V = t.val(v);
    if (t.requires_grad(a)) {
      Mat<T>& ga = t.grad(a);
      for (int64_t i = 0; i < A.rows; ++i)
        for (int64_t j = 0; j < A.cols; ++j) ga(i, j) += g(i, j) * V.data[size_t(j)];
    }
    if (t.requires_grad(v)) {
      Mat<T>& gv = t.grad(v);
      for (int64_t i = 0; i < A.rows; ++i)
        for (int64_t j = 0; j < A.cols; ++j) gv.data[size_t(j)] += g(i, j) * A(i, j);
    }
  });
}

// a[i,j] + b[j] for b of shape [1,cols] (bias broadcast over rows).
template <class T>
Var add_row(Tape<T>& t, Var a, Var b) {
  const Mat<T>& A = t.val(a);
  const Mat<T>& B = t.val(b);
  TTT_CHECK(B.rows == 1 && B.cols == A.cols, "add_row: " << A.shape() << " + " << B.shape());
  Mat<T> o = A;
  for (int64_t i = 0; i < A.rows; ++i)
    for (int64_t j = 0; j < A.cols; ++j) o(i, j) += B.data[size_t(j)];
  return t.make(std::move(o), {a, b}, [a, b](Tape<T>& t, const Mat<T>& g) {
    t.accumulate(a, g);
    if (t.requires_grad(b)) {
      Mat<T>& gb = t.grad(b);
      for (int64_t i = 0; i < g.rows; ++i)
        for (int64_t j = 0; j < g.cols; ++j) gb.data[size_t(j)] += g(i, j);
    }
  });
}

// Generic element-wise unary op with derivative df.
template <class T, class F, class DF>
Var unary(Tape<T>& t, Var a, F f, DF df) {
  Mat<T> o = detail::map(t.val(a), f);
  return t.make(std::move(o), {a}, [a, df](Tape<T>& t, const Mat<T>& g) {
    const Mat<T>& A = t.val(a);
    Mat<T>& ga = t.grad(a);
    for (size_t i = 0; i < g.data.size(); ++i) ga.data[i] += g.data[i] * df(A.data[i]);
  });
}

// act(a) element-wise, act' in the backward (math::activate, math::activation_grad).
template <math::Activation A, class T>
Var activation(Tape<T>& t, Var a) {
  return unary(t, a, [](T z) { return math::activate(A, z); }, [](T z) { return math::activation_grad(A, z); });
}
template <class T>
Var silu(Tape<T>& t, Var a) {
  return activation<math::Activation::Silu>(t, a);
}
// silu'(a): needed to write the inner-loss gradient on the tape (second order).
template <class T>
Var dsilu(Tape<T>& t, Var a) {
  return unary(t, a, [](T z) { return math::dsilu(z); }, [](T z) { return math::d2silu(z); });
}
template <class T>
Var sigmoid(Tape<T>& t, Var a) {
  return activation<math::Activation::Sigmoid>(t, a);
}
template <class T>
Var softplus(Tape<T>& t, Var a) {
  return activation<math::Activation::Softplus>(t, a);
}
// A rate or gate from its projection z (math::GateRule): scale · act(z + shift), each step its own op (the shift
// and the scale only when they change something).
template <class T>
Var gate(Tape<T>& t, Var z, const math::GateRule& rule) {
  Var u = rule.shift != 0 ? add_const(t, z, rule.shift) : z;
  Var y;
  switch (rule.act) {
    case math::Activation::Identity: y = u; break;
    case math::Activation::Silu: y = silu(t, u); break;
    case math::Activation::Sigmoid: y = sigmoid(t, u); break;
    case math::Activation::Softplus: y = softplus(t, u); break;
  }
  return rule.scale != 1 ? scale(t, y, rule.scale) : y;
}
template <class T>
Var square(Tape<T>& t, Var a) {
  return unary(t, a, [](T z) { return z * z; }, [](T z) { return T(2) * z; });
}
template <class T>
Var sqrt_(Tape<T>& t, Var a) {
  return unary(t, a, [](T z) { return std::sqrt(z); }, [](T z) { return T(0.5) / std::sqrt(z); });
}
template <class T>
Var reciprocal(Tape<T>& t, Var a) {
  return unary(t, a, [](T z) { return T(1) / z; }, [](T z) { return -T(1) / (z * z); });
}

// Sum of all elements -> 1x1.
template <class T>
Var sum(Tape<T>& t, Var a) {
  T acc = 0;
  for (T x : t.val(a).data) acc += x;
  return t.make(Mat<T>::scalar(acc), {a}, [a](Tape<T>& t, const Mat<T>& g) {
    Mat<T>& ga = t.grad(a);
    for (auto& x : ga.data) x += g.data[0];
  });
}
// Mean of all elements -> 1x1.
template <class T>
Var mean(Tape<T>& t, Var a) {
  const int64_t n = t.val(a).size();
  TTT_CHECK(n > 0, "mean of an empty matrix");
  return scale(t, sum(t, a), 1.0 / double(n));
}

// Frobenius norm -> 1x1.
template <class T>
Var frob_norm(Tape<T>& t, Var a) {
  T acc = 0;
  for (T x : t.val(a).data) acc += x * x;
  const T nrm = std::sqrt(acc);
  return t.make(Mat<T>::scalar(nrm), {a}, [a, nrm](Tape<T>& t, const Mat<T>& g) {
    if (nrm == T(0)) return;  // subgradient 0 at the origin
    const Mat<T>& A = t.val(a);
    Mat<T>& ga = t.grad(a);
    for (size_t i = 0; i < A.data.size(); ++i) ga.data[i] += g.data[0] * A.data[i] / nrm;
  });
}

// Euclidean norm of each row -> [rows,1].
template <class T>
Var row_norm(Tape<T>& t, Var a) {
  const Mat<T>& A = t.val(a);
  Mat<T> o(A.rows, 1);
  for (int64_t i = 0; i < A.rows; ++i) {
    T acc = 0;
    for (int64_t j = 0; j < A.cols; ++j) acc += A(i, j) * A(i, j);
    o.data[size_t(i)] = std::sqrt(acc);
  }
  Mat<T> norms = o;
  return t.make(std::move(o), {a}, [a, norms = std::move(norms)](Tape<T>& t, const Mat<T>& g) {
    const Mat<T>& A = t.val(a);
    Mat<T>& ga = t.grad(a);
    for (int64_t i = 0; i < A.rows; ++i) {
      const T n = norms.data[size_t(i)];
      if (n == T(0)) continue;
      for (int64_t j = 0; j < A.cols; ++j) ga(i, j) += g.data[size_t(i)] * A(i, j) / n;
    }
  });
}

template <class T>
Var transpose(Tape<T>& t, Var a) {
  const Mat<T>& A = t.val(a);
  Mat<T> o(A.cols, A.rows);
  for (int64_t i = 0; i < A.rows; ++i)
    for (int64_t j = 0; j < A.cols; ++j) o(j, i) = A(i, j);
  return t.make(std::move(o), {a}, [a](Tape<T>& t, const Mat<T>& g) {
    Mat<T>& ga = t.grad(a);
    for (int64_t i = 0; i < ga.rows; ++i)
      for (int64_t j = 0; j < ga.cols; ++j) ga(i, j) += g(j, i);
  });
}

// Rows [r0, r1).
template <class T>
Var slice_rows(Tape<T>& t, Var a, int64_t r0, int64_t r1) {
  const Mat<T>& A = t.val(a);
  TTT_CHECK(0 <= r0 && r0 <= r1 && r1 <= A.rows, "slice_rows [" << r0 << "," << r1 << ") of " << A.shape());
  Mat<T> o(r1 - r0, A.cols);
  std::copy(A.row(r0), A.row(r0) + (r1 - r0) * A.cols, o.data.begin());
  return t.make(std::move(o), {a}, [a, r0](Tape<T>& t, const Mat<T>& g) {
    Mat<T>& ga = t.grad(a);
    T* dst = ga.row(r0);
    for (size_t i = 0; i < g.data.size(); ++i) dst[i] += g.data[i];
  });
}

// Columns [c0, c1).
template <class T>
Var slice_cols(Tape<T>& t, Var a, int64_t c0, int64_t c1) {
  const Mat<T>& A = t.val(a);
  TTT_CHECK(0 <= c0 && c0 <= c1 && c1 <= A.cols, "slice_cols [" << c0 << "," << c1 << ") of " << A.shape());
  Mat<T> o(A.rows, c1 - c0);
  for (int64_t i = 0; i < A.rows; ++i)
    for (int64_t j = c0; j < c1; ++j) o(i, j - c0) = A(i, j);
  return t.make(std::move(o), {a}, [a, c0](Tape<T>& t, const Mat<T>& g) {
    Mat<T>& ga = t.grad(a);
    for (int64_t i = 0; i < g.rows; ++i)
      for (int64_t j = 0; j < g.cols; ++j) ga(i, j + c0) += g(i, j);
  });
}

// Vertical concatenation of matrices with equal column counts.
template <class T>
Var concat_rows(Tape<T>& t, const std::vector<Var>& parts) {
  TTT_CHECK(!parts.empty(), "concat_rows of nothing");
  const int64_t cols = t.val(parts[0]).cols;
  int64_t rows = 0;
  for (Var p : parts) {
    TTT_CHECK(t.val(p).cols == cols, "concat_rows column mismatch " << t.val(p).shape() << " vs cols " << cols);
    rows += t.val(p).rows;
  }
  Mat<T> o(rows, cols);
  int64_t r = 0;
  for (Var p : parts) {
    const Mat<T>& P = t.val(p);
    std::copy(P.data.begin(), P.data.end(), o.data.begin() + r * cols);
    r += P.rows;
  }
  return t.make(std::move(o), parts, [parts](Tape<T>& t, const Mat<T>& g) {
    int64_t r = 0;
    for (Var p : parts) {
      const int64_t pr = t.val(p).rows;
      if (t.requires_grad(p)) {
        Mat<T>& gp = t.grad(p);
        const T* src = g.row(r);
        for (size_t i = 0; i < gp.data.size(); ++i) gp.data[i] += src[i];
      }
      r += pr;
    }
  });
}

}  // namespace ttt::ag
