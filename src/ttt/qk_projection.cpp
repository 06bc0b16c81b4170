#include "ttt/qk_projection.h"

#include <omp.h>

#include <algorithm>
#include <memory>
#include <string>

#include "core/blas.h"

namespace ttt::engine {

using ag::Mat;
using ag::Tape;
using ag::Var;

namespace {

// One (sequence, head, shard) item: rows [r0, r1) of the stacked activations, columns [c, c + d).
struct Item {
  int64_t r0, r1, c;
};

std::vector<Item> make_items(int64_t S, int64_t N, int64_t H, int64_t d, int64_t shard) {
  const int64_t len = shard > 0 ? shard : N;
  std::vector<Item> items;
  for (int64_t s = 0; s < S; ++s)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t a = 0; a < N; a += len) items.push_back({s * N + a, s * N + std::min(N, a + len), h * d});
  return items;
}

template <class T>
T sum_squares(const T* x, int64_t n, int64_t d, int64_t ld) {
  T acc = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < d; ++j) acc += x[i * ld + j] * x[i * ld + j];
  return acc;
}

// M (d x d, row-major) += K_cᵀ K_c for the n rows at k (leading dimension ld).
template <class T>
void add_gram(T* M, const T* k, int64_t n, int64_t d, int64_t ld) {
  gemm<T>(true, false, d, d, n, T(1), k, ld, k, ld, T(1), M, d);
}

// Forward of one item: out rows = q rows, or q M / z once the shard has seen keys.
template <class T>
void forward_item(const Item& it, const T* Q, const T* K, T* O, int64_t ld, int64_t d, int64_t chunk) {
  std::vector<T> M(size_t(d * d), T(0));
  T z = 0;
  for (int64_t c0 = it.r0; c0 < it.r1; c0 += chunk) {
    const int64_t c1 = std::min(it.r1, c0 + chunk), n = c1 - c0;
    const T* q = Q + c0 * ld + it.c;
    T* o = O + c0 * ld + it.c;
    if (z > T(0)) {
      gemm<T>(false, false, n, d, d, T(1) / z, q, ld, M.data(), d, T(0), o, ld);  // M is symmetric
    } else {
      for (int64_t i = 0; i < n; ++i) std::copy(q + i * ld, q + i * ld + d, o + i * ld);
    }
    if (c1 < it.r1) {
      const T* k = K + c0 * ld + it.c;
      add_gram(M.data(), k, n, d, ld);
      z += sum_squares(k, n, d, ld);
    }
  }
}

// Backward of one item. With q̃_t = M_c q_t / z_c for t in chunk c (M_c, z_c: sums over the earlier chunks):
//   dq_t = M_c g_t / z_c;   dM_c = Σ_t g_t q_tᵀ / z_c;   dz_c = -Σ_t g_t·q̃_t / z_c;
//   dk_τ = P_c k_τ,  P_c = Σ_{c' after c} (dM_c' + dM_c'ᵀ + 2 dz_c' I)   (τ in chunk c).
// A forward sweep rebuilds M_c (dq, dz_c); a reverse sweep accumulates P, so memory stays O(d² + chunks).
template <class T>
void backward_item(const Item& it, const T* Q, const T* K, const T* G, T* GQ, T* GK, int64_t ld, int64_t d,
                   int64_t chunk) {
  std::vector<T> M(size_t(d * d), T(0));
  std::vector<T> zs, dzs;
  std::vector<int64_t> starts;
  T z = 0;
  for (int64_t c0 = it.r0; c0 < it.r1; c0 += chunk) {
    const int64_t c1 = std::min(it.r1, c0 + chunk), n = c1 - c0;
    const T* q = Q + c0 * ld + it.c;
    const T* g = G + c0 * ld + it.c;
    T* gq = GQ + c0 * ld + it.c;
    starts.push_back(c0);
    zs.push_back(z);
    if (z > T(0)) {
      gemm<T>(false, false, n, d, d, T(1) / z, g, ld, M.data(), d, T(0), gq, ld);
      // Σ_t g_t·(M q_t) = Σ_t (M g_t)·q_t = z Σ_t gq_t·q_t
      T acc = 0;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < d; ++j) acc += gq[i * ld + j] * q[i * ld + j];
      dzs.push_back(-acc / z);
    } else {
      for (int64_t i = 0; i < n; ++i) std::copy(g + i * ld, g + i * ld + d, gq + i * ld);
      dzs.push_back(T(0));
    }
    if (c1 < it.r1) {
      const T* k = K + c0 * ld + it.c;
      add_gram(M.data(), k, n, d, ld);
      z += sum_squares(k, n, d, ld);
    }
  }
  std::vector<T>& P = M;  // reuse the buffer
  std::fill(P.begin(), P.end(), T(0));
  for (int64_t c = int64_t(starts.size()) - 1; c >= 0; --c) {
    const int64_t c0 = starts[size_t(c)], c1 = std::min(it.r1, c0 + chunk), n = c1 - c0;
    const T* k = K + c0 * ld + it.c;
    T* gk = GK + c0 * ld + it.c;
    gemm<T>(false, false, n, d, d, T(1), k, ld, P.data(), d, T(0), gk, ld);  // P is symmetric
    const T zc = zs[size_t(c)];
    if (zc > T(0)) {
      const T* q = Q + c0 * ld + it.c;
      const T* g = G + c0 * ld + it.c;
      gemm<T>(true, false, d, d, n, T(1) / zc, g, ld, q, ld, T(1), P.data(), d);
      gemm<T>(true, false, d, d, n, T(1) / zc, q, ld, g, ld, T(1), P.data(), d);
      for (int64_t j = 0; j < d; ++j) P[size_t(j * d + j)] += T(2) * dzs[size_t(c)];
    }
  }
}

// Threads over the items only when there is enough work (rows * d² multiply-adds) to pay for them.
template <class F>
void for_items(const std::vector<Item>& items, int64_t rows, int64_t d, F f) {
  std::vector<std::string> errors(items.size());
  const bool par = items.size() > 1 && rows * d * d >= (int64_t(1) << 15);
#pragma omp parallel for schedule(dynamic, 1) if (par)
  for (int64_t i = 0; i < int64_t(items.size()); ++i) {
    try {
      f(items[size_t(i)]);
    } catch (const std::exception& e) {
      errors[size_t(i)] = e.what();
    }
  }
  for (auto& e : errors) TTT_CHECK(e.empty(), "qk_project: " << e);
}

}  // namespace

template <class T>
Var qk_project(Tape<T>& t, Var q, Var k, int64_t S, int64_t H, int64_t chunk, int64_t shard) {
  const Mat<T>& Q = t.val(q);
  const Mat<T>& K = t.val(k);
  TTT_CHECK(S > 0 && H > 0, "qk_project: sequences and heads must be positive, got " << S << " and " << H);
  TTT_CHECK(chunk > 0, "qk_project: chunk must be positive, got " << chunk);
  TTT_CHECK(Q.same_shape(K), "qk_project: q is " << Q.shape() << " but k is " << K.shape());
  TTT_CHECK(Q.rows % S == 0 && Q.cols % H == 0 && Q.rows > 0 && Q.cols > 0,
            "qk_project: q is " << Q.shape() << ", not [S*N, H*d] for S = " << S << " sequences and H = " << H
                                << " heads");
  const int64_t N = Q.rows / S, d = Q.cols / H, ld = Q.cols;
  auto items = std::make_shared<std::vector<Item>>(make_items(S, N, H, d, shard));
  Mat<T> out(Q.rows, Q.cols);
  for_items(*items, Q.rows * H, d, [&](const Item& it) { forward_item(it, Q.ptr(), K.ptr(), out.ptr(), ld, d, chunk); });
  return t.make(std::move(out), {q, k}, [q, k, d, chunk, items](Tape<T>& t, const Mat<T>& g) {
    const Mat<T>& Q = t.val(q);
    const Mat<T>& K = t.val(k);
    Mat<T> gq(Q.rows, Q.cols), gk(K.rows, K.cols);  // items write disjoint blocks
    for_items(*items, Q.rows * (Q.cols / d), d, [&](const Item& it) {
      backward_item(it, Q.ptr(), K.ptr(), g.ptr(), gq.ptr(), gk.ptr(), Q.cols, d, chunk);
    });
    t.accumulate(q, gq);
    t.accumulate(k, gk);
  });
}

template <class T>
Mat<T> qk_project_forward(const Mat<T>& q, const Mat<T>& k, int64_t chunk, int64_t shard) {
  TTT_CHECK(chunk > 0, "qk_project: chunk must be positive, got " << chunk);
  TTT_CHECK(q.same_shape(k) && q.rows > 0 && q.cols > 0, "qk_project: q is " << q.shape() << ", k is " << k.shape());
  Mat<T> out(q.rows, q.cols);
  for (const Item& it : make_items(1, q.rows, 1, q.cols, shard))
    forward_item(it, q.ptr(), k.ptr(), out.ptr(), q.cols, q.cols, chunk);
  return out;
}

template Var qk_project<float>(Tape<float>&, Var, Var, int64_t, int64_t, int64_t, int64_t);
template Var qk_project<double>(Tape<double>&, Var, Var, int64_t, int64_t, int64_t, int64_t);
template Mat<float> qk_project_forward<float>(const Mat<float>&, const Mat<float>&, int64_t, int64_t);
template Mat<double> qk_project_forward<double>(const Mat<double>&, const Mat<double>&, int64_t, int64_t);

}  // namespace ttt::engine
