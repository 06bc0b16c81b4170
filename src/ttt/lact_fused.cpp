// The CPU twin of the CUDA LaCT operator: the backend of lact_fused.h on host memory. Every step is written
// out here as plain loops; matrix products go through ttt::gemm (OpenBLAS) one head at a time, in the same
// shapes as the GPU's strided-batched products.
#include "ttt/lact_fused.h"

#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "core/blas.h"

namespace ttt::lact {

namespace {

template <class T>
class CpuOps {
 public:
  using value_type = T;
  // bf16: gemm rounds every element of op(A) and op(B) to bf16 first, and with outputs its result into a
  // Buffer::ProductOutput buffer too (see Bf16Emulation).
  // ns5_fp16: every value written into a Buffer::Ns5 buffer is rounded to fp16 (Bf16Emulation::ns5_fp16).
  explicit CpuOps(const Geom& g, Bf16Emulation bf16 = {})
      : g_(g),
        round_bf16_(bf16.operands),
        round_outputs_bf16_(bf16.operands && bf16.outputs),
        round_ns5_fp16_(bf16.ns5_fp16),
        round_ns5_tf32_(bf16.ns5_tf32) {}
  Geom geom() const { return g_; }

  // Storage starts as NaN, so that a step reading what no step wrote shows in the results.
  T* alloc(int64_t n, Buffer kind = Buffer::Operand) {
    const int64_t len = std::max<int64_t>(n, 1);
    store_.emplace_back(new T[size_t(len)]);
    std::fill(store_.back().get(), store_.back().get() + n, std::numeric_limits<T>::quiet_NaN());
    if (kind == Buffer::ProductOutput) product_outputs_.push_back({store_.back().get(), len});
    if (kind == Buffer::Ns5) ns5_.push_back({store_.back().get(), len});
    return store_.back().get();
  }
  void zero(T* p, int64_t n) { std::fill(p, p + n, T(0)); }
  void copy(T* dst, const T* src, int64_t n) {
    std::copy(src, src + n, dst);
    round_if_ns5(dst, n);
  }
  void add(T* dst, const T* src, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
  }
  void sqrt_inplace(T* x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) x[i] = std::sqrt(x[i]);
  }
  void round_up_pow2(T* x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) x[i] = pow2_at_least(x[i]);
  }
  // Rows [r0, r0+nr) of every head of a [B,T,cols] tensor.
  void zero_rows(T* p, int64_t cols, int64_t r0, int64_t nr) {
    for (int64_t b = 0; b < g_.B; ++b) std::fill(p + (b * g_.T + r0) * cols, p + (b * g_.T + r0 + nr) * cols, T(0));
  }

  void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t lda, int64_t sA,
            const T* B, int64_t ldb, int64_t sB, T beta, T* C, int64_t ldc, int64_t sC, int64_t batch) {
    const bool tf32 = round_ns5_tf32_ && in_ns5(A);
    if (!round_bf16_ && !tf32) {
      for (int64_t i = 0; i < batch; ++i) {
        ttt::gemm<T>(ta, tb, m, n, k, alpha, A + i * sA, lda, B + i * sB, ldb, beta, C + i * sC, ldc);
        if (round_ns5_fp16_ && in_ns5(C))
          for (int64_t r = 0; r < m; ++r) round_if_ns5(C + i * sC + r * ldc, n);
      }
      return;
    }
    // bf16 operands: dense rounded copies of the stored matrices (A is [m,k], or [k,m] when transposed).
    const int64_t ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
    std::vector<T> a16(size_t(std::max<int64_t>(ar * ac, 1))), b16(size_t(std::max<int64_t>(br * bc, 1)));
    auto rounded = [tf32](const T* src, int64_t rows, int64_t cols, int64_t ld, std::vector<T>& dst) {
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) {
          const float x = float(src[r * ld + c]);
          dst[size_t(r * cols + c)] = T(tf32 ? round_to_tf32(x) : round_bf16(x));
        }
    };
    const bool round_out = round_outputs_bf16_ && is_product_output(C);
    TTT_CHECK(!round_out || beta == T(0), "lact cpu: a bf16 product output accumulated into (beta " << beta << ")");
    for (int64_t i = 0; i < batch; ++i) {
      rounded(A + i * sA, ar, ac, lda, a16);
      rounded(B + i * sB, br, bc, ldb, b16);
      T* Ci = C + i * sC;
      ttt::gemm<T>(ta, tb, m, n, k, alpha, a16.data(), std::max<int64_t>(ac, 1), b16.data(),
                   std::max<int64_t>(bc, 1), beta, Ci, ldc);
      if (round_out)
        for (int64_t r = 0; r < m; ++r)
          for (int64_t c = 0; c < n; ++c) Ci[r * ldc + c] = T(round_bf16(float(Ci[r * ldc + c])));
    }
  }

  // out[b] = scale * sum_i x[b*stride + i] * (y ? y[b*stride + i] : 1), i < per.
  void batched_dot(const T* x, const T* y, int64_t per, int64_t stride, int64_t batch, T scale, T* out) {
    for (int64_t b = 0; b < batch; ++b) {
      T acc = 0;
      const T* xb = x + b * stride;
      if (y) {
        const T* yb = y + b * stride;
        for (int64_t i = 0; i < per; ++i) acc += xb[i] * yb[i];
      } else {
        for (int64_t i = 0; i < per; ++i) acc += xb[i];
      }
      out[b] = scale * acc;
    }
  }
  // out[c B + b] = the mean of x[b, c chunk ..] over chunk c's tokens, for every chunk of a [B,T] tensor.
  void chunk_means(const T* x, int64_t chunk, T* out) {
    for (int64_t c0 = 0, c = 0; c0 < g_.T; c0 += chunk, ++c) {
      const int64_t n = std::min(chunk, g_.T - c0);
      batched_dot(x + c0, nullptr, n, g_.T, g_.B, T(1) / T(n), out + c * g_.B);
    }
  }
  // dst[b] = D[b] + s[b] * S[b] (per elements a head; dst may be D).
  void axpy_batched(T* dst, const T* D, const T* S, const T* s, int64_t per) {
    for (int64_t b = 0; b < g_.B; ++b)
      for (int64_t i = 0; i < per; ++i) dst[b * per + i] = D[b * per + i] + s[b] * S[b * per + i];
  }
  // The momentum mix's adjoint over a state [B][3P]: dP = dM + dS (dP may be dM); dmbar[b] = <dP[b], S[b]>
  // (batched_dot's sum); dS = mbar[b] dP.
  void momentum_bwd(const T* dM, T* dS, const T* S, const T* mbar, T* dP, T* dmbar) {
    const int64_t per = 3 * g_.P(), n = g_.B * per;
    for (int64_t i = 0; i < n; ++i) dP[i] = dM[i] + dS[i];
    batched_dot(dP, S, per, per, g_.B, T(1), dmbar);
    scale_batched(dS, dP, mbar, per);
  }
  // dst[b] = s[b] * src[b].
  void scale_batched(T* dst, const T* src, const T* s, int64_t per) {
    for (int64_t b = 0; b < g_.B; ++b)
      for (int64_t i = 0; i < per; ++i) dst[b * per + i] = s[b] * src[b * per + i];
  }
  // g[b, c0 + i] = val[b] * scale for i < n of a [B,T] tensor.
  void fill_chunk(T* g, const T* val, T scale, int64_t c0, int64_t n) {
    for (int64_t b = 0; b < g_.B; ++b) std::fill(g + b * g_.T + c0, g + b * g_.T + c0 + n, val[b] * scale);
  }

  // State layout [B][3][P], slots W0, W2, W1.
  void pack_state(const T* w0, const T* w1, const T* w2, T* A) {
    const int64_t P = g_.P();
    for (int64_t b = 0; b < g_.B; ++b) {
      copy(A + b * 3 * P, w0 + b * P, P);
      copy(A + b * 3 * P + P, w2 + b * P, P);
      copy(A + b * 3 * P + 2 * P, w1 + b * P, P);
    }
  }
  // g_w = dA (slot) + dtau[r] * W0[r,:] / ||W0[r,:]|| (the targets are the row norms of the initial weights).
  void unpack_grad(const T* dA, const T* tau, const T* dtau, const T* A0, T* gw0, T* gw1, T* gw2) {
    const int64_t P = g_.P();
    T* dst[3] = {gw0, gw2, gw1};
    for (int64_t b = 0; b < g_.B; ++b)
      for (int s = 0; s < 3; ++s) copy(dst[s] + b * P, dA + b * 3 * P + s * P, P);
    if (!tau) return;
    for (int64_t b = 0; b < g_.B; ++b)
      for (int64_t r = 0; r < g_.rows(); ++r) {
        const T nrm = tau[b * g_.rows() + r];
        if (nrm == T(0)) continue;
        const T f = dtau[b * g_.rows() + r] / nrm;
        const int s = g_.row_slot(r);
        const int64_t len = row_len(r), off = row_off(r) - s * P;
        const T* a0 = A0 + b * 3 * P + row_off(r);
        T* out = dst[s] + b * P + off;
        for (int64_t j = 0; j < len; ++j) out[j] += f * a0[j];
      }
  }

  // Row r of a head's state: offset and length (rows of [W0;W2] have d entries, rows of W1 dh).
  int64_t row_off(int64_t r) const { return g_.row_off(r); }
  int64_t row_len(int64_t r) const { return g_.row_len(r); }
  static T norm_of(const T* x, int64_t n) {
    T acc = 0;
    for (int64_t j = 0; j < n; ++j) acc += x[j] * x[j];
    return std::sqrt(acc);
  }

  void row_norms(const T* A, T* tau) {
    for (int64_t b = 0; b < g_.B; ++b)
      for (int64_t r = 0; r < g_.rows(); ++r)
        tau[b * g_.rows() + r] = norm_of(A + b * 3 * g_.P() + row_off(r), row_len(r));
  }
  // E[r,:] = A[r,:] * tau[r] / (||A[r,:]|| + 1e-5).
  void weight_norm(const T* A, const T* tau, T* E) {
    for (int64_t b = 0; b < g_.B; ++b)
      for (int64_t r = 0; r < g_.rows(); ++r) {
        const T* x = A + b * 3 * g_.P() + row_off(r);
        T* y = E + b * 3 * g_.P() + row_off(r);
        const int64_t len = row_len(r);
        const T f = tau[b * g_.rows() + r] / (norm_of(x, len) + T(kRowEps));
        for (int64_t j = 0; j < len; ++j) y[j] = x[j] * f;
      }
  }
  // Adjoint of y = x tau / (n + eps), n = ||x||, for one row: dx += dy tau/(n+eps) - (dy.x) tau/(n+eps)^2 x/n,
  // dtau += (dy.x)/(n+eps). (n = 0: the norm's subgradient 0, as the tape's row_norm.)
  static void row_norm_bwd(const T* x, int64_t len, T tau, const T* dy, T* dx, T& dtau) {
    const T n = norm_of(x, len), den = n + T(kRowEps);
    T dot = 0;
    for (int64_t j = 0; j < len; ++j) dot += dy[j] * x[j];
    const T f = tau / den;
    const T h = n == T(0) ? T(0) : dot * tau / (den * den) / n;
    for (int64_t j = 0; j < len; ++j) dx[j] += f * dy[j] - h * x[j];
    dtau += dot / den;
  }
  void weight_norm_bwd(const T* A, const T* tau, const T* dE, T* dA, T* dtau) {
    for (int64_t b = 0; b < g_.B; ++b)
      for (int64_t r = 0; r < g_.rows(); ++r) {
        const int64_t o = b * 3 * g_.P() + row_off(r);
        row_norm_bwd(A + o, row_len(r), tau[b * g_.rows() + r], dE + o, dA + o, dtau[b * g_.rows() + r]);
      }
  }

  // Chunk buffers: GH [B][n][2dh] = [g | h]; a, lr1 a, U [B][n][dh]; R [B][n][2dh].
  void swiglu(const T* GH, T* a, int64_t n) {
    const int64_t dh = g_.dh;
    for (int64_t r = 0; r < g_.B * n; ++r)
      for (int64_t j = 0; j < dh; ++j) a[r * dh + j] = swiglu_elem(GH[r * 2 * dh + j], GH[r * 2 * dh + dh + j]);
  }
  void swiglu_bwd(const T* GH, const T* da, int64_t n, T* dGH, T* a) {
    const int64_t dh = g_.dh;
    for (int64_t r = 0; r < g_.B * n; ++r)
      for (int64_t j = 0; j < dh; ++j)
        swiglu_elem_bwd(GH[r * 2 * dh + j], GH[r * 2 * dh + dh + j], da[r * dh + j], a[r * dh + j],
                        dGH[r * 2 * dh + j], dGH[r * 2 * dh + dh + j]);
  }
  // Al = lr1 silu(g) h; R = [lr0 u h silu'(g) | lr2 u silu(g)], for the chunk's tokens c0 + i.
  void update_terms(const T* GH, const T* U, const T* lr0, const T* lr1, const T* lr2, int64_t c0, int64_t n, T* Al,
                    T* R) {
    const int64_t dh = g_.dh;
    for (int64_t r = 0; r < g_.B * n; ++r) {
      const int64_t b = r / n, t = c0 + r % n, tok = b * g_.T + t;
      for (int64_t j = 0; j < dh; ++j) {
        T a;
        update_elem(GH[r * 2 * dh + j], GH[r * 2 * dh + dh + j], U[r * dh + j], lr0[tok], lr2[tok], a,
                    R[r * 2 * dh + j], R[r * 2 * dh + dh + j]);
        Al[r * dh + j] = lr1[tok] * a;
      }
    }
  }
  // Adjoint of update_terms, given Y (the cotangent of Al) and dR: per token row RdGH = [R | dGH] (4 dh) and
  // AldU = [Al | dU] (2 dh), R and Al as update_terms computes them (the operands of dK and dV beside the
  // cotangents); g_lr0, g_lr1 = <a, Y> and g_lr2 of the chunk's tokens are written (a = silu(g) h).
  void update_terms_bwd(const T* GH, const T* U, const T* lr0, const T* lr1, const T* lr2, int64_t c0, int64_t n,
                        const T* dR, const T* Y, T* RdGH, T* AldU, T* glr0, T* glr1, T* glr2) {
    const int64_t dh = g_.dh;
    for (int64_t r = 0; r < g_.B * n; ++r) {
      const int64_t b = r / n, t = c0 + r % n, tok = b * g_.T + t;
      T* rdgh = RdGH + r * 4 * dh;
      T* aldu = AldU + r * 2 * dh;
      T s0 = 0, s1 = 0, s2 = 0;
      for (int64_t j = 0; j < dh; ++j) {
        const T g = GH[r * 2 * dh + j], h = GH[r * 2 * dh + dh + j], u = U[r * dh + j], y = Y[r * dh + j];
        T a, t0, t2;
        update_elem(g, h, u, lr0[tok], lr2[tok], a, rdgh[j], rdgh[dh + j]);
        aldu[j] = lr1[tok] * a;
        update_elem_bwd(g, h, u, lr0[tok], lr2[tok], dR[r * 2 * dh + j], dR[r * 2 * dh + dh + j], lr1[tok] * y,
                        rdgh[2 * dh + j], rdgh[3 * dh + j], aldu[dh + j], t0, t2);
        s0 += t0;
        s1 += swiglu_elem(g, h) * y;
        s2 += t2;
      }
      glr0[tok] = s0;
      glr1[tok] = s1;
      glr2[tok] = s2;
    }
  }
  // Per head: DW = [dD02; E02] ([4dh, d]: the first 2dh rows of dD, then of E), then [dD1 | E1] ([d, 2dh]: row i
  // is dD1's row i, then E1's).
  void stack_bwd_operands(const T* dD, const T* E, T* DW) {
    const int64_t P = g_.P(), d = g_.d, dh = g_.dh;
    for (int64_t b = 0; b < g_.B; ++b) {
      const T *dDb = dD + b * 3 * P, *Eb = E + b * 3 * P;
      T* W = DW + b * 6 * P;
      copy(W, dDb, 2 * P);
      copy(W + 2 * P, Eb, 2 * P);
      for (int64_t i = 0; i < d; ++i) {
        copy(W + 4 * P + i * 2 * dh, dDb + 2 * P + i * dh, dh);
        copy(W + 4 * P + i * 2 * dh + dh, Eb + 2 * P + i * dh, dh);
      }
    }
  }

  // NS layout: matrix m = (b, slot s) as [p,q]; element (i,j) is state (j,i) where the slot is transposed.
  int64_t ns_to_state(int s, int64_t i, int64_t j) const { return g_.ns_to_state(s, i, j); }
  // dst (NS layout) = src (state layout), times 1/(nrm[m] + 1e-7) when nrm is given (exact: 1/nrm[m], a power
  // of two).
  void to_ns(const T* src, T* dst, const T* nrm, bool exact = false) {
    const int64_t P = g_.P(), p = g_.p(), q = g_.q();
    for (int64_t m = 0; m < 3 * g_.B; ++m) {
      const int s = int(m % 3);
      const T f = nrm ? T(1) / (exact ? nrm[m] : nrm[m] + T(kNsEps)) : T(1);
      for (int64_t i = 0; i < p; ++i)
        for (int64_t j = 0; j < q; ++j) dst[m * P + i * q + j] = src[m * P + ns_to_state(s, i, j)] * f;
    }
    round_if_ns5(dst, 3 * g_.B * P);
  }
  // X0 = Pm r, r = 1/(||Pm|| + eps): dPm = r dX0 - r dot Pm / ||Pm|| with dot = <dX0, X0> (NS layout in,
  // state layout out), times scale[m] when the adjoint ran scaled by 1 / scale[m] (ns5_backward).
  void ns_norm_bwd(const T* dX0, const T* Pm, const T* nrm, const T* dot, const T* scale, T* dP) {
    const int64_t P = g_.P(), p = g_.p(), q = g_.q();
    for (int64_t m = 0; m < 3 * g_.B; ++m) {
      const int s = int(m % 3);
      const T r = T(1) / (nrm[m] + T(kNsEps));
      const T h = nrm[m] == T(0) ? T(0) : r * dot[m] / nrm[m];
      const T f = scale ? scale[m] : T(1);
      for (int64_t i = 0; i < p; ++i)
        for (int64_t j = 0; j < q; ++j) {
          const int64_t e = m * P + ns_to_state(s, i, j);
          dP[e] = (r * dX0[m * P + i * q + j] - h * Pm[e]) * f;
        }
    }
  }
  // The value of M at state position e of matrix m (M in state or NS layout).
  T m_at(const T* M, bool ns, int64_t m, int64_t row, int64_t col) const {
    const int s = int(m % 3);
    return M[m * g_.P() + (ns ? g_.state_to_ns(s, row, col) : row * g_.slot_cols(s) + col)];
  }
  // A_next = A + M, then (tau given: post-norm) each row rescaled to tau.
  void step(const T* A, const T* M, bool ns, const T* tau, T* An) {
    std::vector<T> z;
    for (int64_t b = 0; b < g_.B; ++b)
      for (int64_t r = 0; r < g_.rows(); ++r) {
        const int64_t len = row_len(r), o = b * 3 * g_.P() + row_off(r);
        row_sum(A, M, ns, b, r, z);
        T f = 1;
        if (tau) f = tau[b * g_.rows() + r] / (norm_of(z.data(), len) + T(kRowEps));
        for (int64_t j = 0; j < len; ++j) An[o + j] = z[size_t(j)] * f;
      }
  }
  // P = D + mbar S (axpy_batched), then step(A, P, state layout, tau, An).
  void momentum_step(const T* A, const T* D, const T* S, const T* mbar, T* P, const T* tau, T* An) {
    axpy_batched(P, D, S, mbar, 3 * g_.P());
    step(A, P, false, tau, An);
  }
  // Post-norm step adjoint: dA (in: dL/dA_next, out: dL/dZ), dtau += .
  // dA_add (or null) is added to dA first: dA := the adjoint of dA + dA_add.
  void step_bwd(const T* A, const T* M, bool ns, const T* tau, T* dA, const T* dA_add, T* dtau) {
    std::vector<T> z, dz;
    for (int64_t b = 0; b < g_.B; ++b)
      for (int64_t r = 0; r < g_.rows(); ++r) {
        const int64_t len = row_len(r), o = b * 3 * g_.P() + row_off(r);
        row_sum(A, M, ns, b, r, z);
        dz.assign(size_t(len), T(0));
        if (dA_add)
          for (int64_t j = 0; j < len; ++j) dA[o + j] += dA_add[o + j];
        row_norm_bwd(z.data(), len, tau[b * g_.rows() + r], dA + o, dz.data(), dtau[b * g_.rows() + r]);
        std::copy(dz.begin(), dz.end(), dA + o);
      }
  }

  // Post norm with momentum: the step's adjoint, the momentum's and the stacking of dP with A (the effective weights)
  // for the update's products, as the three steps (the CUDA backend does them in one pass).
  void step_momentum_bwd(const T* A, const T* M, const T* tau, T* dA, const T* dA_add, T* dtau, T* dS, const T* S,
                         const T* mbar, T* DW, T* dmbar) {
    step_bwd(A, M, false, tau, dA, dA_add, dtau);
    std::vector<T> dP(size_t(g_.B * 3 * g_.P()));
    momentum_bwd(dA, dS, S, mbar, dP.data(), dmbar);
    stack_bwd_operands(dP.data(), A, DW);
  }

 private:
  Geom g_;
  bool round_bf16_ = false;
  bool round_outputs_bf16_ = false;
  bool round_ns5_fp16_ = false;
  bool round_ns5_tf32_ = false;
  std::vector<std::unique_ptr<T[]>> store_;
  struct Range {
    const T* base;
    int64_t n;
  };
  std::vector<Range> product_outputs_;  // the Buffer::ProductOutput allocations
  std::vector<Range> ns5_;              // the Buffer::Ns5 allocations

  bool in_ns5(const T* p) const {
    for (const Range& r : ns5_)
      if (p >= r.base && p < r.base + r.n) return true;
    return false;
  }
  // [p, p+n) rounded to fp16 where it lies in a Buffer::Ns5 buffer and the emulation is on.
  void round_if_ns5(T* p, int64_t n) const {
    if (!round_ns5_fp16_ || !in_ns5(p)) return;
    for (int64_t i = 0; i < n; ++i) p[i] = T(round_to_fp16(float(p[i])));
  }

  bool is_product_output(const T* p) const {
    for (const Range& r : product_outputs_)
      if (p >= r.base && p < r.base + r.n) return true;
    return false;
  }

  // z = A[row] + M[row] for state row r of head b.
  void row_sum(const T* A, const T* M, bool ns, int64_t b, int64_t r, std::vector<T>& z) const {
    const int64_t len = row_len(r), o = b * 3 * g_.P() + row_off(r);
    const int s = g_.row_slot(r);
    const int64_t row = g_.row_in_slot(r);
    z.resize(size_t(len));
    for (int64_t j = 0; j < len; ++j) z[size_t(j)] = A[o + j] + m_at(M, ns, b * 3 + s, row, j);
  }
};

}  // namespace

namespace {
// Counts what Fused's constructor allocates.
struct CountOps {
  using value_type = float;
  Geom g;
  int64_t elems = 0;
  int64_t operand_elems = 0;         // of those, in Buffer::Operand buffers
  int64_t product_output_elems = 0;  // and in Buffer::ProductOutput buffers
  int64_t ns5_elems = 0;             // and in Buffer::Ns5 buffers
  Geom geom() const { return g; }
  float* alloc(int64_t n, Buffer kind = Buffer::Operand) {
    const int64_t len = std::max<int64_t>(n, 1);
    elems += len;
    (kind == Buffer::Operand ? operand_elems : kind == Buffer::ProductOutput ? product_output_elems : ns5_elems) +=
        len;
    return nullptr;
  }
};
CountOps count_allocations(const Shape& s, bool with_grad, int64_t records, bool keep_products) {
  s.validate();
  CountOps ops{Geom{s.B, s.T, s.d, s.dh}};
  Fused<CountOps> f(ops, s, with_grad, records, keep_products);
  return ops;
}
}  // namespace

bool bf16_outputs_from_env() {
  const char* e = std::getenv("TTT_LACT_B16_OUTPUTS");
  return !(e && std::string(e) == "0");
}

bool ns5_fp16_from_env() {
  const char* e = std::getenv("TTT_LACT_NS5");
  if (!e || !*e) return true;
  const std::string v(e);
  TTT_CHECK(v == "fp16" || v == "tf32", "TTT_LACT_NS5=" << v << ": expected fp16 or tf32");
  return v == "fp16";
}

int64_t workspace_elements(const Shape& s, bool with_grad, int64_t records, bool keep_products) {
  return count_allocations(s, with_grad, records, keep_products).elems;
}
int64_t workspace_operand_elements(const Shape& s, bool with_grad, int64_t records, bool keep_products) {
  return count_allocations(s, with_grad, records, keep_products).operand_elems;
}
int64_t workspace_product_output_elements(const Shape& s, bool with_grad, int64_t records, bool keep_products) {
  return count_allocations(s, with_grad, records, keep_products).product_output_elems;
}
int64_t workspace_ns5_elements(const Shape& s, bool with_grad, int64_t records) {
  return count_allocations(s, with_grad, records, false).ns5_elems;
}

template <class T>
void fused_cpu(const Shape& s, const Inputs<T>& in, T* o, const T* grad_o, const Grads<T>* g,
               Bf16Emulation bf16, bool keep_products) {
  s.validate();
  Geom geom{s.B, s.T, s.d, s.dh};
  CpuOps<T> ops(geom, bf16);
  const bool grad = grad_o != nullptr;
  TTT_CHECK(!grad || g, "fused_cpu: grad_o given without gradient outputs");
  Fused<CpuOps<T>> f(ops, s, grad, /*records=*/1, keep_products);
  f.forward(in, o);
  if (grad) f.backward(grad_o, *g);
}

template <class T>
void fused_cpu_records(const Shape& s, const std::vector<Inputs<T>>& in, const std::vector<T*>& o,
                       const std::vector<const T*>& grad_o, const std::vector<Grads<T>>& g) {
  s.validate();
  const int64_t n = int64_t(in.size());
  TTT_CHECK(n >= 1 && int64_t(o.size()) == n && int64_t(grad_o.size()) == n && int64_t(g.size()) == n,
            "fused_cpu_records: " << n << " inputs, " << o.size() << " outputs, " << grad_o.size()
                                  << " output gradients, " << g.size() << " gradient sets");
  CpuOps<T> ops(Geom{s.B, s.T, s.d, s.dh});
  Fused<CpuOps<T>> f(ops, s, /*with_grad=*/true, n);
  for (int64_t i = 0; i < n; ++i) {
    f.use_record(i);
    f.forward(in[size_t(i)], o[size_t(i)]);
  }
  for (int64_t i = n - 1; i >= 0; --i) {
    f.use_record(i);
    f.backward(grad_o[size_t(i)], g[size_t(i)]);
  }
}

template <class T>
void stream_cpu(const Shape& s, const Inputs<T>& in, T* o, int64_t reset_every) {
  s.validate();
  TTT_CHECK(s.causal, "stream_cpu: streaming runs the causal program");
  const int64_t B = s.B, T_ = s.T, d = s.d, C = s.chunk;
  Shape cs = s;
  cs.T = C;
  CpuOps<T> ops(Geom{B, C, d, s.dh});
  Fused<CpuOps<T>> f(ops, cs, /*with_grad=*/false);
  f.stream_init(in.w0, in.w1, in.w2);
  // The unfinished chunk's buffers [B, C, d] / [B, C], filled token by token as generation would.
  std::vector<T> q(size_t(B * C * d)), k(q.size()), v(q.size()), out(q.size());
  std::vector<T> l0(size_t(B * C)), l1(l0.size()), l2(l0.size()), m(l0.size());
  Inputs<T> ci{in.w0, in.w1, in.w2, q.data(), k.data(), v.data(), l0.data(), l1.data(), l2.data(),
               s.momentum ? m.data() : nullptr};
  int64_t pending = 0;
  for (int64_t t = 0; t < T_; ++t) {
    if (reset_every > 0 && t > 0 && t % reset_every == 0) {  // a shard start: back to W0, chunks restart
      f.stream_init(in.w0, in.w1, in.w2);
      pending = 0;
    }
    for (int64_t b = 0; b < B; ++b) {
      const int64_t src = b * T_ + t, dst = b * C + pending;
      std::copy(in.q + src * d, in.q + (src + 1) * d, q.begin() + dst * d);
      std::copy(in.k + src * d, in.k + (src + 1) * d, k.begin() + dst * d);
      std::copy(in.v + src * d, in.v + (src + 1) * d, v.begin() + dst * d);
      l0[size_t(dst)] = in.lr0[src], l1[size_t(dst)] = in.lr1[src], l2[size_t(dst)] = in.lr2[src];
      if (s.momentum) m[size_t(dst)] = in.mom[src];
    }
    f.stream_apply(ci, pending, 1, out.data());
    for (int64_t b = 0; b < B; ++b)
      std::copy(out.begin() + (b * C + pending) * d, out.begin() + (b * C + pending + 1) * d, o + (b * T_ + t) * d);
    if (++pending == C) {
      f.stream_update(ci, C);
      pending = 0;
    }
  }
}

template void stream_cpu<float>(const Shape&, const Inputs<float>&, float*, int64_t);
template void stream_cpu<double>(const Shape&, const Inputs<double>&, double*, int64_t);

template void fused_cpu<float>(const Shape&, const Inputs<float>&, float*, const float*, const Grads<float>*,
                               Bf16Emulation, bool);
template void fused_cpu<double>(const Shape&, const Inputs<double>&, double*, const double*, const Grads<double>*,
                                Bf16Emulation, bool);
template void fused_cpu_records<double>(const Shape&, const std::vector<Inputs<double>>&, const std::vector<double*>&,
                                        const std::vector<const double*>&, const std::vector<Grads<double>>&);

}  // namespace ttt::lact
