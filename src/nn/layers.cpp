#include "nn/layers.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>

#include "core/blas.h"
#include "core/dtype.h"

namespace ttt::nn {

using ag::Mat;
using ag::Tape;

// ---------------------------------------------------------------------------------------------
// embedding

template <class T>
Var embedding(Tape<T>& t, Var table, const std::vector<int32_t>& ids) {
  const Mat<T>& W = t.val(table);
  const int64_t n = int64_t(ids.size()), d = W.cols;
  Mat<T> o(n, d);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t id = ids[size_t(i)];
    TTT_CHECK(id >= 0 && id < W.rows, "embedding: id " << id << " at position " << i << " out of range for table "
                                                       << W.shape());
    std::copy(W.row(id), W.row(id) + d, o.row(i));
  }
  return t.make(std::move(o), {table}, [table, ids](Tape<T>& t, const Mat<T>& g) {
    Mat<T>& gw = t.grad(table);
    const int64_t d = g.cols;
    for (size_t i = 0; i < ids.size(); ++i) {
      T* dst = gw.row(ids[i]);
      const T* src = g.row(int64_t(i));
      for (int64_t j = 0; j < d; ++j) dst[j] += src[j];
    }
  });
}

// ---------------------------------------------------------------------------------------------
// RMSNorm over groups of `gs` consecutive columns (gs = D: plain RMSNorm; gs = hd: per head).

namespace {

template <class T>
Var rms_norm_groups(Tape<T>& t, Var x, Var weight, int64_t gs, double eps) {
  const Mat<T>& X = t.val(x);
  const int64_t n = X.rows, d = X.cols, ng = d / gs;
  Mat<T> o(n, d);
  Mat<T> rinv(n, ng);  // 1 / sqrt(mean(x^2) + eps) per (row, group)
  const Mat<T>& W = t.val(weight);
  for (int64_t i = 0; i < n; ++i) {
    const T* xr = X.row(i);
    T* orow = o.row(i);
    for (int64_t gi = 0; gi < ng; ++gi) {
      const int64_t c0 = gi * gs;
      double ss = 0;
      for (int64_t j = 0; j < gs; ++j) ss += double(xr[c0 + j]) * double(xr[c0 + j]);
      const T r = T(1.0 / std::sqrt(ss / double(gs) + eps));
      rinv(i, gi) = r;
      for (int64_t j = 0; j < gs; ++j) orow[c0 + j] = xr[c0 + j] * r * W.data[size_t(c0 + j)];
    }
  }
  return t.make(std::move(o), {x, weight}, [x, weight, gs, rinv = std::move(rinv)](Tape<T>& t, const Mat<T>& g) {
    const Mat<T>& X = t.val(x);
    const Mat<T>& W = t.val(weight);
    const int64_t n = X.rows, d = X.cols, ng = d / gs;
    const bool gx = t.requires_grad(x), gw = t.requires_grad(weight);
    Mat<T>* GX = gx ? &t.grad(x) : nullptr;
    Mat<T>* GW = gw ? &t.grad(weight) : nullptr;
    for (int64_t i = 0; i < n; ++i) {
      const T* xr = X.row(i);
      const T* gr = g.row(i);
      for (int64_t gi = 0; gi < ng; ++gi) {
        const int64_t c0 = gi * gs;
        const T r = rinv(i, gi);
        if (gw)
          for (int64_t j = 0; j < gs; ++j) GW->data[size_t(c0 + j)] += gr[c0 + j] * xr[c0 + j] * r;
        if (gx) {
          // dx = r * (a - x * r^2 * <a, x> / gs),  a = g ⊙ w
          T dot = 0;
          for (int64_t j = 0; j < gs; ++j) dot += gr[c0 + j] * W.data[size_t(c0 + j)] * xr[c0 + j];
          const T c = r * r * dot / T(gs);
          T* dst = GX->row(i);
          for (int64_t j = 0; j < gs; ++j) dst[c0 + j] += r * (gr[c0 + j] * W.data[size_t(c0 + j)] - xr[c0 + j] * c);
        }
      }
    }
  });
}

void check_heads(const char* op, int64_t cols, int64_t heads, const std::string& shape) {
  TTT_CHECK(heads >= 1 && cols % heads == 0, op << ": " << shape << " has " << cols << " columns, not divisible into "
                                                << heads << " heads");
}

}  // namespace

template <class T>
Var rms_norm(Tape<T>& t, Var x, Var weight, double eps) {
  const Mat<T>& X = t.val(x);
  const Mat<T>& W = t.val(weight);
  TTT_CHECK(W.rows == 1 && W.cols == X.cols, "rms_norm: x " << X.shape() << " needs weight [1," << X.cols << "], got "
                                                            << W.shape());
  TTT_CHECK(X.cols > 0, "rms_norm: x " << X.shape() << " has no columns");
  return rms_norm_groups(t, x, weight, X.cols, eps);
}

template <class T>
Var rms_norm_heads(Tape<T>& t, Var x, Var weight, int64_t heads, double eps) {
  const Mat<T>& X = t.val(x);
  const Mat<T>& W = t.val(weight);
  check_heads("rms_norm_heads", X.cols, heads, X.shape());
  TTT_CHECK(W.rows == 1 && W.cols == X.cols, "rms_norm_heads: x " << X.shape() << " needs weight [1," << X.cols
                                                                  << "], got " << W.shape());
  TTT_CHECK(X.cols > 0, "rms_norm_heads: x " << X.shape() << " has no columns");
  return rms_norm_groups(t, x, weight, X.cols / heads, eps);
}

// ---------------------------------------------------------------------------------------------
// l2norm per head

template <class T>
Var l2norm_heads(Tape<T>& t, Var x, int64_t heads, double eps) {
  const Mat<T>& X = t.val(x);
  check_heads("l2norm_heads", X.cols, heads, X.shape());
  const int64_t n = X.rows, hd = X.cols / heads;
  Mat<T> o(n, X.cols);
  Mat<T> norms(n, heads);
  for (int64_t i = 0; i < n; ++i) {
    const T* xr = X.row(i);
    T* orow = o.row(i);
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t c0 = h * hd;
      double ss = 0;
      for (int64_t j = 0; j < hd; ++j) ss += double(xr[c0 + j]) * double(xr[c0 + j]);
      const T nrm = T(std::sqrt(ss));
      norms(i, h) = nrm;
      const T inv = T(1) / (nrm + T(eps));
      for (int64_t j = 0; j < hd; ++j) orow[c0 + j] = xr[c0 + j] * inv;
    }
  }
  return t.make(std::move(o), {x}, [x, heads, eps, norms = std::move(norms)](Tape<T>& t, const Mat<T>& g) {
    const Mat<T>& X = t.val(x);
    Mat<T>& gx = t.grad(x);
    const int64_t n = X.rows, hd = X.cols / heads;
    for (int64_t i = 0; i < n; ++i) {
      const T* xr = X.row(i);
      const T* gr = g.row(i);
      T* dst = gx.row(i);
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t c0 = h * hd;
        const T nrm = norms(i, h);
        const T inv = T(1) / (nrm + T(eps));
        // dx = (g - x <g,x> / (n (n+eps))) / (n+eps); the second term is 0 at x = 0.
        T c = 0;
        if (nrm > T(0)) {
          T dot = 0;
          for (int64_t j = 0; j < hd; ++j) dot += gr[c0 + j] * xr[c0 + j];
          c = dot * inv / nrm;
        }
        for (int64_t j = 0; j < hd; ++j) dst[c0 + j] += (gr[c0 + j] - xr[c0 + j] * c) * inv;
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// RoPE

template <class T>
Var rope(Tape<T>& t, Var x, int64_t heads, const std::vector<int64_t>& positions, double theta) {
  const Mat<T>& X = t.val(x);
  check_heads("rope", X.cols, heads, X.shape());
  const int64_t n = X.rows, hd = X.cols / heads, half = hd / 2;
  TTT_CHECK(hd % 2 == 0, "rope: head width " << hd << " of x " << X.shape() << " with " << heads
                                             << " heads must be even");
  TTT_CHECK(int64_t(positions.size()) == n, "rope: " << positions.size() << " positions for x " << X.shape());
  TTT_CHECK(theta > 0, "rope: theta must be positive, got " << theta);
  // cos/sin tables [n, half], angles computed in double.
  Mat<T> cs(n, half), sn(n, half);
  std::vector<double> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) inv_freq[size_t(i)] = std::pow(theta, -2.0 * double(i) / double(hd));
  for (int64_t r = 0; r < n; ++r)
    for (int64_t i = 0; i < half; ++i) {
      const double a = double(positions[size_t(r)]) * inv_freq[size_t(i)];
      cs(r, i) = T(std::cos(a));
      sn(r, i) = T(std::sin(a));
    }
  Mat<T> o(n, X.cols);
  for (int64_t r = 0; r < n; ++r) {
    const T* xr = X.row(r);
    T* orow = o.row(r);
    const T* c = cs.row(r);
    const T* s = sn.row(r);
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t c0 = h * hd;
      for (int64_t i = 0; i < half; ++i) {
        const T x1 = xr[c0 + i], x2 = xr[c0 + half + i];
        orow[c0 + i] = x1 * c[i] - x2 * s[i];
        orow[c0 + half + i] = x2 * c[i] + x1 * s[i];
      }
    }
  }
  return t.make(std::move(o), {x},
                [x, heads, cs = std::move(cs), sn = std::move(sn)](Tape<T>& t, const Mat<T>& g) {
                  Mat<T>& gx = t.grad(x);
                  const int64_t hd = g.cols / heads, half = hd / 2;
                  for (int64_t r = 0; r < g.rows; ++r) {
                    const T* gr = g.row(r);
                    T* dst = gx.row(r);
                    const T* c = cs.row(r);
                    const T* s = sn.row(r);
                    for (int64_t h = 0; h < heads; ++h) {
                      const int64_t c0 = h * hd;
                      for (int64_t i = 0; i < half; ++i) {  // inverse rotation
                        const T g1 = gr[c0 + i], g2 = gr[c0 + half + i];
                        dst[c0 + i] += g1 * c[i] + g2 * s[i];
                        dst[c0 + half + i] += g2 * c[i] - g1 * s[i];
                      }
                    }
                  }
                });
}

// ---------------------------------------------------------------------------------------------
// Sliding-window attention

KeyRange attention_key_range(int64_t tq, int64_t k0, int64_t k1, int64_t window) {
  // Clamped to the tile: a tile wholly before the window gives the empty range at its end, one wholly
  // after the query the empty range at its start.
  const int64_t lo = std::clamp(tq - window + 1, k0, k1);
  const int64_t hi = std::clamp(tq + 1, lo, k1);
  return {lo - k0, hi - k0};
}

namespace {

struct AttnGeom {
  int64_t n, d, heads, hd, window, qb, kb, nqb;
};


// Forward of one (head, query block): writes out rows and lse.
template <class T>
void attn_forward_block(const AttnGeom& g, int64_t h, int64_t b, T scale, const T* Q, const T* K, const T* V, T* O,
                        T* lse, std::vector<T>& S, std::vector<T>& acc, std::vector<T>& m, std::vector<T>& l) {
  const int64_t q0 = b * g.qb, q1 = std::min(g.n, q0 + g.qb), nb = q1 - q0;
  const int64_t k_lo = std::max<int64_t>(0, q0 - g.window + 1), k_hi = q1;
  const T ninf = -std::numeric_limits<T>::infinity();
  std::fill(m.begin(), m.begin() + nb, ninf);
  std::fill(l.begin(), l.begin() + nb, T(0));
  std::fill(acc.begin(), acc.begin() + nb * g.hd, T(0));
  const int64_t hc = h * g.hd;
  for (int64_t k0 = k_lo; k0 < k_hi; k0 += g.kb) {
    const int64_t k1 = std::min(k_hi, k0 + g.kb), nk = k1 - k0;
    gemm<T>(false, true, nb, nk, g.hd, scale, Q + q0 * g.d + hc, g.d, K + k0 * g.d + hc, g.d, T(0), S.data(), nk);
    for (int64_t i = 0; i < nb; ++i) {
      T* srow = S.data() + i * nk;
      const auto [jlo, jhi] = attention_key_range(q0 + i, k0, k1, g.window);
      if (jlo >= jhi) {
        std::fill(srow, srow + nk, T(0));
        continue;
      }
      T mx = srow[jlo];
      for (int64_t j = jlo + 1; j < jhi; ++j) mx = std::max(mx, srow[j]);
      const T m_new = std::max(m[size_t(i)], mx);
      const T alpha = std::exp(m[size_t(i)] - m_new);
      T sum = 0;
      for (int64_t j = 0; j < jlo; ++j) srow[j] = T(0);
      for (int64_t j = jlo; j < jhi; ++j) {
        const T p = std::exp(srow[j] - m_new);
        srow[j] = p;
        sum += p;
      }
      for (int64_t j = jhi; j < nk; ++j) srow[j] = T(0);
      l[size_t(i)] = l[size_t(i)] * alpha + sum;
      m[size_t(i)] = m_new;
      if (alpha != T(1)) {
        T* arow = acc.data() + i * g.hd;
        for (int64_t c = 0; c < g.hd; ++c) arow[c] *= alpha;
      }
    }
    gemm<T>(false, false, nb, g.hd, nk, T(1), S.data(), nk, V + k0 * g.d + hc, g.d, T(1), acc.data(), g.hd);
  }
  for (int64_t i = 0; i < nb; ++i) {
    const T inv = T(1) / l[size_t(i)];
    const T* arow = acc.data() + i * g.hd;
    T* orow = O + (q0 + i) * g.d + hc;
    for (int64_t c = 0; c < g.hd; ++c) orow[c] = arow[c] * inv;
    lse[(q0 + i) * g.heads + h] = m[size_t(i)] + std::log(l[size_t(i)]);
  }
}

// Backward of one head (query blocks in order; dK/dV rows of a head are shared by its query blocks).
template <class T>
void attn_backward_head(const AttnGeom& g, int64_t h, T scale, const T* Q, const T* K, const T* V, const T* dO,
                        const T* lse, const T* delta, T* dQ, T* dK, T* dV, std::vector<T>& P, std::vector<T>& dP) {
  const int64_t hc = h * g.hd;
  for (int64_t b = 0; b < g.nqb; ++b) {
    const int64_t q0 = b * g.qb, q1 = std::min(g.n, q0 + g.qb), nb = q1 - q0;
    const int64_t k_lo = std::max<int64_t>(0, q0 - g.window + 1), k_hi = q1;
    for (int64_t k0 = k_lo; k0 < k_hi; k0 += g.kb) {
      const int64_t k1 = std::min(k_hi, k0 + g.kb), nk = k1 - k0;
      // P = exp(scale Q K^T - lse), masked
      gemm<T>(false, true, nb, nk, g.hd, scale, Q + q0 * g.d + hc, g.d, K + k0 * g.d + hc, g.d, T(0), P.data(), nk);
      for (int64_t i = 0; i < nb; ++i) {
        T* prow = P.data() + i * nk;
        const auto [jlo, jhi] = attention_key_range(q0 + i, k0, k1, g.window);
        const T ls = lse[(q0 + i) * g.heads + h];
        for (int64_t j = 0; j < jlo; ++j) prow[j] = T(0);
        for (int64_t j = jlo; j < jhi; ++j) prow[j] = std::exp(prow[j] - ls);
        for (int64_t j = jhi; j < nk; ++j) prow[j] = T(0);
      }
      if (dV)  // dV += P^T dO
        gemm<T>(true, false, nk, g.hd, nb, T(1), P.data(), nk, dO + q0 * g.d + hc, g.d, T(1), dV + k0 * g.d + hc, g.d);
      if (!dQ && !dK) continue;
      // dP = dO V^T;  dS = P ⊙ (dP - delta)
      gemm<T>(false, true, nb, nk, g.hd, T(1), dO + q0 * g.d + hc, g.d, V + k0 * g.d + hc, g.d, T(0), dP.data(), nk);
      for (int64_t i = 0; i < nb; ++i) {
        const T* prow = P.data() + i * nk;
        T* drow = dP.data() + i * nk;
        const T dl = delta[(q0 + i) * g.heads + h];
        for (int64_t j = 0; j < nk; ++j) drow[j] = prow[j] * (drow[j] - dl);
      }
      if (dQ)  // dQ += scale dS K
        gemm<T>(false, false, nb, g.hd, nk, scale, dP.data(), nk, K + k0 * g.d + hc, g.d, T(1), dQ + q0 * g.d + hc, g.d);
      if (dK)  // dK += scale dS^T Q
        gemm<T>(true, false, nk, g.hd, nb, scale, dP.data(), nk, Q + q0 * g.d + hc, g.d, T(1), dK + k0 * g.d + hc, g.d);
    }
  }
}

}  // namespace

template <class T>
Var sliding_window_attention(Tape<T>& t, Var q, Var k, Var v, int64_t heads, int64_t window, AttentionBlocks blocks) {
  const Mat<T>& Q = t.val(q);
  const Mat<T>& K = t.val(k);
  const Mat<T>& V = t.val(v);
  TTT_CHECK(Q.same_shape(K) && Q.same_shape(V), "sliding_window_attention: q " << Q.shape() << ", k " << K.shape()
                                                                             << ", v " << V.shape()
                                                                             << " must have equal shapes");
  check_heads("sliding_window_attention", Q.cols, heads, Q.shape());
  TTT_CHECK(window >= 1, "sliding_window_attention: window must be >= 1, got " << window);
  TTT_CHECK(blocks.query >= 1 && blocks.key >= 1,
            "sliding_window_attention: block sizes must be >= 1, got " << blocks.query << "x" << blocks.key);
  AttnGeom g;
  g.n = Q.rows;
  g.d = Q.cols;
  g.heads = heads;
  g.hd = Q.cols / heads;
  g.window = std::min(window, std::max<int64_t>(g.n, 1));
  g.qb = blocks.query;
  g.kb = blocks.key;
  g.nqb = (g.n + g.qb - 1) / g.qb;
  const T scale = T(1.0 / std::sqrt(double(g.hd)));
  Mat<T> out(g.n, g.d);
  Mat<T> lse(g.n, heads);
  if (g.n > 0 && g.hd > 0) {
    const int64_t tasks = heads * g.nqb;
    const bool par = tasks > 1 && g.n * std::min(g.n, g.window) * g.d > 32768;
#pragma omp parallel if (par)
    {
      std::vector<T> S(size_t(g.qb * g.kb)), acc(size_t(g.qb * g.hd)), m(size_t(g.qb)), l(size_t(g.qb));
#pragma omp for schedule(dynamic)
      for (int64_t task = 0; task < tasks; ++task)
        attn_forward_block<T>(g, task / g.nqb, task % g.nqb, scale, Q.ptr(), K.ptr(), V.ptr(), out.ptr(), lse.ptr(), S,
                              acc, m, l);
    }
  }
  auto self = std::make_shared<Var>();
  Var res = t.make(std::move(out), {q, k, v}, [q, k, v, g, scale, self, lse = std::move(lse)](Tape<T>& t, const Mat<T>& dO) {
    if (g.n == 0 || g.hd == 0) return;
    const Mat<T>& Q = t.val(q);
    const Mat<T>& K = t.val(k);
    const Mat<T>& V = t.val(v);
    const Mat<T>& O = t.val(*self);
    // delta[i,h] = <dO_i, O_i> within head h
    Mat<T> delta(g.n, g.heads);
    for (int64_t i = 0; i < g.n; ++i)
      for (int64_t h = 0; h < g.heads; ++h) {
        T acc = 0;
        const T* a = dO.row(i) + h * g.hd;
        const T* o = O.row(i) + h * g.hd;
        for (int64_t c = 0; c < g.hd; ++c) acc += a[c] * o[c];
        delta(i, h) = acc;
      }
    const bool gq = t.requires_grad(q), gk = t.requires_grad(k), gv = t.requires_grad(v);
    Mat<T> dQ(gq ? g.n : 0, gq ? g.d : 0), dK(gk ? g.n : 0, gk ? g.d : 0), dV(gv ? g.n : 0, gv ? g.d : 0);
    const bool par = g.heads > 1 && g.n * std::min(g.n, g.window) * g.d > 32768;
#pragma omp parallel if (par)
    {
      std::vector<T> P(size_t(g.qb * g.kb)), dP(size_t(g.qb * g.kb));
#pragma omp for schedule(dynamic)
      for (int64_t h = 0; h < g.heads; ++h)
        attn_backward_head<T>(g, h, scale, Q.ptr(), K.ptr(), V.ptr(), dO.ptr(), lse.ptr(), delta.ptr(),
                              gq ? dQ.ptr() : nullptr, gk ? dK.ptr() : nullptr, gv ? dV.ptr() : nullptr, P, dP);
    }
    if (gq) t.accumulate(q, dQ);
    if (gk) t.accumulate(k, dK);
    if (gv) t.accumulate(v, dV);
  });
  *self = res;
  return res;
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

template <class T>
Var cross_entropy(Tape<T>& t, Var logits, const std::vector<int32_t>& targets, std::vector<double>* per_token_loss) {
  const Mat<T>& L = t.val(logits);
  const int64_t n = L.rows, vocab = L.cols;
  TTT_CHECK(int64_t(targets.size()) == n, "cross_entropy: " << targets.size() << " targets for logits " << L.shape());
  TTT_CHECK(vocab > 0, "cross_entropy: logits " << L.shape() << " have no classes");
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t y = targets[size_t(i)];
    if (y < 0) continue;
    TTT_CHECK(y < vocab, "cross_entropy: target " << y << " at row " << i << " out of range for logits " << L.shape());
    ++count;
  }
  std::vector<T> lse(size_t(n), T(0));
  std::vector<double> row_loss(size_t(n), 0.0);
#pragma omp parallel for schedule(static) if (n * vocab > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const int32_t y = targets[size_t(i)];
    if (y < 0) continue;
    const T* r = L.row(i);
    T mx = r[0];
    for (int64_t j = 1; j < vocab; ++j) mx = std::max(mx, r[j]);
    double s = 0;  // exp in T precision, summed in double
    for (int64_t j = 0; j < vocab; ++j) s += double(std::exp(r[j] - mx));
    const double ls = double(mx) + std::log(s);
    lse[size_t(i)] = T(ls);
    row_loss[size_t(i)] = ls - double(r[y]);
  }
  double total = 0;
  for (double li : row_loss) total += li;
  if (per_token_loss) *per_token_loss = std::move(row_loss);
  const double mean = count > 0 ? total / double(count) : 0.0;
  return t.make(Mat<T>::scalar(T(mean)), {logits},
                [logits, targets, count, lse = std::move(lse)](Tape<T>& t, const Mat<T>& g) {
                  if (count == 0) return;
                  const Mat<T>& L = t.val(logits);
                  Mat<T>& gl = t.grad(logits);
                  const T c = g.data[0] / T(count);
#pragma omp parallel for schedule(static) if (L.rows * L.cols > 65536)
                  for (int64_t i = 0; i < L.rows; ++i) {
                    const int32_t y = targets[size_t(i)];
                    if (y < 0) continue;
                    const T* r = L.row(i);
                    T* dst = gl.row(i);
                    const T ls = lse[size_t(i)];
                    for (int64_t j = 0; j < L.cols; ++j) dst[j] += c * std::exp(r[j] - ls);
                    dst[y] -= c;
                  }
                });
}

// ---------------------------------------------------------------------------------------------
// Linear layers and the SwiGLU MLP

template <class T>
Var linear(Tape<T>& t, Var x, Var w) {
  const Mat<T>& X = t.val(x);
  const Mat<T>& W = t.val(w);
  TTT_CHECK(X.cols == W.rows, "linear: x " << X.shape() << " @ w " << W.shape() << " (w is [in,out])");
  return ag::matmul(t, x, w);
}

template <class T>
Var linear_bias(Tape<T>& t, Var x, Var w, Var b) {
  const Mat<T>& W = t.val(w);
  const Mat<T>& B = t.val(b);
  TTT_CHECK(B.rows == 1 && B.cols == W.cols, "linear_bias: w " << W.shape() << " needs bias [1," << W.cols << "], got "
                                                                << B.shape());
  return ag::add_row(t, linear(t, x, w), b);
}

template <class T>
Var bf16_stored_value(Tape<T>& t, Var x) {
  Mat<T> delta = t.val(x);
  for (auto& e : delta.data) e = T(round_to_bf16(float(e))) - e;
  return ag::add(t, x, t.leaf(std::move(delta)));
}

template <class T>
Var bf16_stored_gradient(Tape<T>& t, Var x) {
  return t.make(t.val(x), {x}, [x](Tape<T>& t, const Mat<T>& g) {
    Mat<T>& gx = t.grad(x);
    for (size_t i = 0; i < g.data.size(); ++i) gx.data[i] += T(round_to_bf16(float(g.data[i])));
  });
}

template <class T>
Var swiglu_mlp(Tape<T>& t, Var x, Var w_gate, Var w_up, Var w_down, bool bf16_stored) {
  const Mat<T>& X = t.val(x);
  const Mat<T>& G = t.val(w_gate);
  const Mat<T>& U = t.val(w_up);
  const Mat<T>& Dn = t.val(w_down);
  TTT_CHECK(G.rows == X.cols && U.same_shape(G) && Dn.rows == G.cols && Dn.cols == X.cols,
            "swiglu_mlp: x " << X.shape() << ", w_gate " << G.shape() << ", w_up " << U.shape() << ", w_down "
                             << Dn.shape() << " (need [D,F], [D,F], [F,D])");
  Var a = ag::matmul(t, x, w_gate);
  Var u = ag::matmul(t, x, w_up);
  if (bf16_stored) a = bf16_stored_value(t, a), u = bf16_stored_value(t, u);
  Var h = ag::mul(t, ag::silu(t, a), u);
  if (bf16_stored) h = bf16_stored_gradient(t, h);
  return ag::matmul(t, h, w_down);
}

// ---------------------------------------------------------------------------------------------

#define TTT_NN_INSTANTIATE(T)                                                                                   \
  template Var embedding<T>(Tape<T>&, Var, const std::vector<int32_t>&);                                        \
  template Var rms_norm<T>(Tape<T>&, Var, Var, double);                                                         \
  template Var rms_norm_heads<T>(Tape<T>&, Var, Var, int64_t, double);                                          \
  template Var l2norm_heads<T>(Tape<T>&, Var, int64_t, double);                                                 \
  template Var rope<T>(Tape<T>&, Var, int64_t, const std::vector<int64_t>&, double);                            \
  template Var sliding_window_attention<T>(Tape<T>&, Var, Var, Var, int64_t, int64_t, AttentionBlocks);         \
  template Var cross_entropy<T>(Tape<T>&, Var, const std::vector<int32_t>&, std::vector<double>*);              \
  template Var swiglu_mlp<T>(Tape<T>&, Var, Var, Var, Var, bool);                                               \
  template Var bf16_stored_value<T>(Tape<T>&, Var);                                                             \
  template Var bf16_stored_gradient<T>(Tape<T>&, Var);                                                          \
  template Var linear<T>(Tape<T>&, Var, Var);                                                                   \
  template Var linear_bias<T>(Tape<T>&, Var, Var, Var);

TTT_NN_INSTANTIATE(float)
TTT_NN_INSTANTIATE(double)

#undef TTT_NN_INSTANTIATE

}  // namespace ttt::nn
