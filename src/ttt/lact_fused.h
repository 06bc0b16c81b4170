// The LaCT operator (docs/ALGORITHMS.md §3, §5.2, §7.2) written out explicitly, with no tape: forward and a
// hand-derived backward, batched over B sequence-heads, as a sequence of batched matrix products and small fused
// element-wise / reduction steps.
//
// The algorithm is one template, `Fused<Ops>`, over a backend `Ops` that supplies storage, a row-major
// strided-batched GEMM and the element-wise kernels. The CPU twin (`CpuOps`, lact_fused.cpp, BLAS through
// ttt::gemm) is the specification; the CUDA backend (src/backend/cuda/lact_cuda.cu: cuBLAS + kernels) runs the very
// same sequence of steps on the GPU. This header is plain C++17 so that nvcc compiles it too.
//
// Per sequence-head b: SwiGLU memory W0 [dh,d], W1 [d,dh], W2 [dh,d], f_W(x) = W1 (silu(W0 x) * (W2 x)),
// dot-product inner loss, per-token rates lr0/lr1/lr2, optional momentum (chunk-mean gate), optional Muon
// (NS5), weight norm post / pre / none (pre as the public prenorm LaCT operator: W⁰ itself until the first update,
// the row-normalized accumulator after it). Programs: causal (per chunk apply then update, the last chunk
// apply-only) and bidirectional (per chunk update then apply).
//
// Layouts. Inputs w0 [B,dh,d], w1 [B,d,dh], w2 [B,dh,d], q/k/v/grad_o [B,T,d], lr0/lr1/lr2/momentum [B,T]
// (row-major). Inside, a state (weights, momentum, their cotangents) is [B][3][P], P = d*dh, slots in the order
// W0, W2, W1: per head the first 2*dh rows (of length d) are [W0;W2], so one product X [W0;W2]^T gives
// [g | h] for a chunk X; then W1 as d rows of length dh. Row-wise quantities (weight-norm targets) are
// [B][2*dh + d] in the same row order. Chunk work buffers are dense [B][n][cols] for the current chunk
// length n. Muon works on "NS layout": every update matrix as [p,q], p = min(d,dh), q = max(d,dh), i.e.
// transposed where rows > cols (docs/ALGORITHMS.md §3.2), so the 3B matrices are one strided batch.
//
// Forward keeps only the states at chunk boundaries (memory linear in T/C); backward walks the program in
// reverse, recomputes each chunk's intermediates from its saved state and applies the adjoint of every step.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/scalar_math.h"
#include "ttt/memory_kinds.h"

namespace ttt::lact {

using engine::WeightNorm;

struct Shape {
  int64_t B = 0, T = 0, d = 0, dh = 0, chunk = 0;
  bool causal = true;  // false: bidirectional
  bool momentum = false;
  bool muon = false;
  WeightNorm norm = WeightNorm::Post;

  int64_t P() const { return d * dh; }
  int64_t state_rows() const { return 2 * dh + d; }  // rows of one head's state
  int64_t num_chunks() const { return (T + chunk - 1) / chunk; }
  // States kept by a forward with gradients: causal N (the last chunk does not update), bidirectional N + 1.
  int64_t num_versions() const { return causal ? num_chunks() : num_chunks() + 1; }
  void validate() const {
    TTT_CHECK(B > 0 && T > 0 && d > 0 && dh > 0,
              "lact: sizes must be positive (B=" << B << ", T=" << T << ", d=" << d << ", dh=" << dh << ")");
    TTT_CHECK(chunk > 0, "lact: chunk size must be positive, got " << chunk);
  }
};

// Pointers in the backend's memory space. mom / g_mom only with momentum.
template <class T>
struct Inputs {
  const T *w0 = nullptr, *w1 = nullptr, *w2 = nullptr;
  const T *q = nullptr, *k = nullptr, *v = nullptr;
  const T *lr0 = nullptr, *lr1 = nullptr, *lr2 = nullptr, *mom = nullptr;
};
template <class T>
struct Grads {
  T *w0 = nullptr, *w1 = nullptr, *w2 = nullptr;
  T *q = nullptr, *k = nullptr, *v = nullptr;
  T *lr0 = nullptr, *lr1 = nullptr, *lr2 = nullptr, *mom = nullptr;
};

// Newton-Schulz coefficients (docs/ALGORITHMS.md §3.2) and the epsilons of §3.2 and §3.3.
inline constexpr double kNs5[5][3] = {{4.0848, -6.8946, 2.9270},
                                      {3.9505, -6.3029, 2.6377},
                                      {3.7418, -5.5913, 2.3037},
                                      {2.8769, -3.1427, 1.2046},
                                      {2.8366, -3.0525, 1.2012}};
inline constexpr double kRowEps = 1e-5;
inline constexpr double kNsEps = 1e-7;

// ---- per-element math shared by the CPU twin and the CUDA kernels (scalar functions: core/scalar_math.h) -------
// The inner gradient of one (token, hidden unit), docs/ALGORITHMS.md §3.1 with the minus signs of e = -v and of the
// step cancelled: from g = (W0 k)_j, h = (W2 k)_j, u = (W1^T v)_j:
//   a = silu(g) h (the applied activation), r0 = lr0 u h silu'(g), r2 = lr2 u silu(g),
// so that dW0 = sum_t r0 k^T, dW2 = sum_t r2 k^T, dW1 = sum_t lr1 v a^T.
template <class T>
TTT_HOST_DEVICE void update_elem(T g, T h, T u, T lr0, T lr2, T& a, T& r0, T& r2) {
  const T s = math::sigmoid(g), sl = math::silu_from(g, s), ds = math::dsilu_from(g, s);
  a = sl * h;
  r0 = lr0 * u * h * ds;
  r2 = lr2 * u * sl;
}
// Its adjoint: given dr0, dr2 (cotangents of r0, r2) and da (of a), the cotangents of g, h, u, and the terms
// whose sums over the hidden units are dL/dlr0 and dL/dlr2.
template <class T>
TTT_HOST_DEVICE void update_elem_bwd(T g, T h, T u, T lr0, T lr2, T dr0, T dr2, T da, T& dg, T& dh, T& du, T& t0,
                                     T& t2) {
  const T s = math::sigmoid(g), sl = math::silu_from(g, s), ds = math::dsilu_from(g, s);
  const T d2s = math::d2silu_from(g, s);
  const T p0 = u * h * ds, p2 = u * sl;  // r0 = lr0 p0, r2 = lr2 p2
  t0 = p0 * dr0;
  t2 = p2 * dr2;
  const T dp0 = lr0 * dr0, dp2 = lr2 * dr2;
  du = dp0 * h * ds + dp2 * sl;
  dh = dp0 * u * ds + da * sl;
  const T dsl = dp2 * u + da * h;  // cotangent of silu(g)
  const T dds = dp0 * u * h;       // cotangent of silu'(g)
  dg = dsl * ds + dds * d2s;
}
// Apply: a = silu(g) h; backward from da.
template <class T>
TTT_HOST_DEVICE T swiglu_elem(T g, T h) { return math::silu_from(g, math::sigmoid(g)) * h; }
template <class T>
TTT_HOST_DEVICE void swiglu_elem_bwd(T g, T h, T da, T& a, T& dg, T& dh) {
  const T s = math::sigmoid(g), sl = math::silu_from(g, s);
  a = sl * h;
  dg = da * h * math::dsilu_from(g, s);
  dh = da * sl;
}

// x rounded to the nearest bfloat16 (ties to even), returned as a float: the value __float2bfloat16 gives,
// without CUDA. NaN stays NaN (quiet), +-Inf stays, overflow rounds to +-Inf. Host only: the CPU twin's
// emulation of the CUDA backend's bf16 matrix operands (fused_cpu's Bf16Emulation).
inline float round_bf16(float x) { return ttt::round_to_bf16(x); }

// The least power of two >= x, for x > 0 and finite; 1 otherwise, and where it would leave T's normal range (the
// adjoint's scale of Fused::ns5_backward: dividing by it and multiplying back are exact).
TTT_HOST_DEVICE float pow2_at_least(float x) {
  if (!(x > 0.0f) || !(x <= 3.40282346638528859812e38f)) return 1.0f;
  int e = 0;
  const float m = ::frexpf(x, &e);  // x = m 2^e, m in [0.5, 1)
  if (m == 0.5f) --e;               // x is a power of two itself
  return e > 126 || e < -126 ? 1.0f : ::ldexpf(1.0f, e);
}
TTT_HOST_DEVICE double pow2_at_least(double x) {
  if (!(x > 0.0) || !(x <= 1.7976931348623157e308)) return 1.0;
  int e = 0;
  const double m = ::frexp(x, &e);
  if (m == 0.5) --e;
  return e > 1022 || e < -1022 ? 1.0 : ::ldexp(1.0, e);
}

// Geometry the element-wise kernels need.
struct Geom {
  int64_t B = 0, T = 0, d = 0, dh = 0;
  TTT_HOST_DEVICE int64_t P() const { return d * dh; }
  TTT_HOST_DEVICE int64_t rows() const { return 2 * dh + d; }
  TTT_HOST_DEVICE int64_t p() const { return d < dh ? d : dh; }  // NS layout [p,q]
  TTT_HOST_DEVICE int64_t q() const { return d < dh ? dh : d; }
  // Slot s of the state is [rows_s, cols_s]; transposed into NS layout when rows_s > cols_s.
  TTT_HOST_DEVICE int64_t slot_rows(int s) const { return s < 2 ? dh : d; }
  TTT_HOST_DEVICE int64_t slot_cols(int s) const { return s < 2 ? d : dh; }
  TTT_HOST_DEVICE bool slot_transposed(int s) const { return slot_rows(s) > slot_cols(s); }
  // Row r (< rows()) of a head's state: offset in the head's 3P block, length, slot, row within the slot.
  TTT_HOST_DEVICE int64_t row_off(int64_t r) const { return r < 2 * dh ? r * d : 2 * P() + (r - 2 * dh) * dh; }
  TTT_HOST_DEVICE int64_t row_len(int64_t r) const { return r < 2 * dh ? d : dh; }
  TTT_HOST_DEVICE int row_slot(int64_t r) const { return r < dh ? 0 : r < 2 * dh ? 1 : 2; }
  TTT_HOST_DEVICE int64_t row_in_slot(int64_t r) const { return r < dh ? r : r < 2 * dh ? r - dh : r - 2 * dh; }
  // Element (i,j) of NS-layout matrix of slot s sits at this offset of the slot in state layout.
  TTT_HOST_DEVICE int64_t ns_to_state(int s, int64_t i, int64_t j) const {
    return slot_transposed(s) ? j * slot_cols(s) + i : i * slot_cols(s) + j;
  }
  // Element (row, col) of slot s (state layout) sits at this offset of the NS-layout matrix.
  TTT_HOST_DEVICE int64_t state_to_ns(int s, int64_t row, int64_t col) const {
    return slot_transposed(s) ? col * q() + row : row * slot_cols(s) + col;
  }
};

// What a buffer Fused allocates is for. Operand: anything else, possibly a matrix product's operand (a backend
// with bf16 operands keeps a bf16 shadow of it). ProductOutput: written only as the output C of matrix products
// (beta 0) and read only by element-wise steps ([g|h] of q and k, V W1, dR, V dD1, dO W1), never a product's
// operand: a backend may store it in bf16 (the CUDA backend's LactOptions::bf16_outputs; the CPU twin emulates
// that by rounding those outputs), and the pointer Fused holds is then a key the backend maps to that storage:
// Fused only hands it (and offsets into it) to the backend's gemm as C and to its element-wise steps.
// Ns5: Newton-Schulz's iterates X_0..X_4, A_i, B_i and their adjoints, a closed world: written and read only by
// gemm (every operand and C of the NS5 products is one, except X_5 = the update, an Operand), copy, to_ns (as dst),
// batched_dot and ns_norm_bwd. Their magnitudes are bounded (X_0 = P / ||P||, singular values <= 1.3 after; the
// adjoint is scaled to unit norm, ns5_backward), so a backend may store them in fp16 (the CUDA backend's
// LactOptions::ns5_fp16), the pointer Fused holds then a key to that storage as for ProductOutput.
enum class Buffer { Operand, ProductOutput, Ns5 };

// The backend contract. CpuOps (lact_fused.cpp) is its reference implementation, with each step's exact
// semantics written out; CudaOps (src/backend/cuda/lact_cuda.cu) implements the same with cuBLAS and kernels.
//
//   using value_type = T;   Geom geom() const;
//   T* alloc(int64_t n, Buffer kind = Buffer::Operand)   storage owned by the backend until it is destroyed; the
//                            kind says who reads it (Buffer above): a backend may then skip what it keeps for
//                            operands, or store a product's output in a narrower type
//   zero(p, n); copy(dst, src, n); add(dst, src, n) (dst += src); sqrt_inplace(x, n)
//   zero_rows(p, cols, r0, nr)                    rows [r0,r0+nr) of every head of a [B,T,cols] tensor
//   gemm(ta, tb, m, n, k, alpha, A, lda, sA, B, ldb, sB, beta, C, ldc, sC, batch)
//        row-major C[m,n] = alpha op(A) op(B) + beta C for each of `batch` matrices (strides sA, sB, sC)
//   batched_dot(x, y|null, per, stride, batch, scale, out)   out[b] = scale sum_i x[b stride+i] y[b stride+i]
//   axpy_batched(dst, D, S, s, per)   dst[b] = D[b] + s[b] S[b] (dst may be D)
//   momentum_bwd(dM, dS, S, mbar, dP, dmbar)   per head b, over its 3P elements: dP = dM + dS (dP may be dM),
//        dmbar[b] = sum dP S (a batched_dot of dP and S), then dS = mbar[b] dP
//   fill_chunk(g, val, scale, c0, n)               g[b, c0+i] = val[b] scale for a [B,T] tensor
//   chunk_means(x, chunk, out)   out[c B + b] = (1/n_c) sum_i x[b, c chunk + i] over every chunk c of a [B,T] tensor
//        (n_c its length): batched_dot(x + c chunk, null, n_c, T, B, 1/n_c, out + c B) for every c at once
//   pack_state(w0, w1, w2, A); unpack_grad(dA, tau|null, dtau, A0, g_w0, g_w1, g_w2)
//   row_norms(A, tau); weight_norm(A, tau, E); weight_norm_bwd(A, tau, dE, dA (+=), dtau (+=))
//   swiglu(GH, a, n); swiglu_bwd(GH, da, n, dGH, a)
//   update_terms(GH, U, lr0, lr1, lr2, c0, n, Al, R)   Al = lr1 silu(g) h, R = [lr0 u h silu'(g) | lr2 u silu(g)]
//   update_terms_bwd(GH, U, lr0, lr1, lr2, c0, n, dR, Y, RdGH, AldU, g_lr0, g_lr1, g_lr2)   Y: the cotangent of Al;
//        writes per token row RdGH [R | dGH] (4 dh) and AldU [Al | dU] (2 dh): R and Al as update_terms computes
//        them, beside the cotangents, so that dK and dV are one product each (the inner dimension concatenated)
//   stack_bwd_operands(dD, E, DW)   per head b, DW[b] (6P) = [dD02; E02] ([4dh, d]), then [dD1 | E1] ([d, 2dh]):
//        the right operands of those two products
//   to_ns(src, dst, nrm|null, exact = false)   dst = src / (nrm[m] + eps) in NS layout (src itself without nrm);
//        exact: dst = src / nrm[m] (nrm holds powers of two: exact)
//   round_up_pow2(x, n)   x[i] = the least power of two >= x[i] (1 where x[i] is 0, not finite or out of range)
//   ns_norm_bwd(dX0, Pm, nrm, dot, scale|null, dP)   dP = s (r dX0 - r dot P / ||P||), r = 1 / (nrm[m] + eps), s =
//        scale[m] (the adjoint's power of two that to_ns divided out) or 1
//   step(A, M, M_in_ns_layout, tau|null, A_next)
//   momentum_step(A, D, S, mbar, P, tau|null, A_next)   P = axpy_batched(D, S, mbar), then step(A, P, false, tau, A_next)
//   step_bwd(A, M, M_in_ns_layout, tau, dA (in/out), dA_add|null, dtau (+=))   dA := the adjoint of dA + dA_add
//   step_momentum_bwd(A, M, tau, dA, dA_add|null, dtau, dS, S, mbar, DW, dmbar)   post norm with momentum, M in state
//        layout: step_bwd(A, M, false, tau, dA, dA_add, dtau), then momentum_bwd(dA, dS, S, mbar, dP, dmbar) and
//        stack_bwd_operands(dP, A, DW) in one pass (dP itself is not kept: only DW's products read it)
template <class Ops>
class Fused {
 public:
  using T = typename Ops::value_type;

  // with_grad: keep every chunk-boundary state for backward(); otherwise two ping-pong states. records (with
  // gradients): how many forwards are kept at once, each in a record of its own (its chunk-boundary states,
  // weight-norm targets and inputs: everything backward() reads of its forward) until its backward, while the
  // work buffers are shared; use_record picks the one forward() and backward() act on (record 0 at first).
  // keep_products (with gradients): each record also keeps what the forward computes of every chunk anyway --
  // [g|h] of q and of k and V W1 -- so that the backward reads them instead of recomputing them (the same steps on
  // the same operands: the same bits); costs B T 5 dh elements per record (Buffer::ProductOutput: bf16 alone with
  // a backend's bf16 product outputs). The update's token terms lr1 a and R are not kept: the backward's
  // update_terms_bwd recomputes them from [g|h] and V W1 beside the cotangents it writes (see update_bwd).
  Fused(Ops& ops, const Shape& s, bool with_grad, int64_t records = 1, bool keep_products = false)
      : ops_(ops), s_(s), with_grad_(with_grad), keep_(with_grad && keep_products) {
    s_.validate();
    TTT_CHECK(records >= 1 && (records == 1 || with_grad_),
              "lact: " << records << " forward records (several need gradients on)");
    g_ = ops_.geom();
    const int64_t B = s_.B, P = s_.P(), C = std::min(s_.chunk, s_.T);
    const int64_t dh = s_.dh;
    nver_ = with_grad_ ? s_.num_versions() : 2;
    records_.resize(size_t(records));
    for (Record& r : records_) {
      r.states = ops_.alloc(nver_ * B * 3 * P);
      // With momentum the momentum states are the updates P_c (S_{c+1} = P_c); without it, backward still
      // wants P_c (it spares recomputing the update's two weight-shaped products), so keep them alike.
      if (s_.momentum || with_grad_) r.mstates = ops_.alloc(nver_ * B * 3 * P);
      if (s_.norm != WeightNorm::None) r.tau = ops_.alloc(B * s_.state_rows());
      if (keep_) {
        r.ghq = ops_.alloc(B * s_.T * 2 * dh, Buffer::ProductOutput);
        r.ghk = ops_.alloc(B * s_.T * 2 * dh, Buffer::ProductOutput);
        r.u = ops_.alloc(B * s_.T * dh, Buffer::ProductOutput);
      }
    }
    states_ = records_[0].states, mstates_ = records_[0].mstates, tau_ = records_[0].tau;
    ghq_ = records_[0].ghq, ghk_ = records_[0].ghk, ukept_ = records_[0].u;
    if (s_.norm == WeightNorm::Pre) ebuf_ = ops_.alloc(B * 3 * P);
    D_ = ops_.alloc(B * 3 * P);
    if (s_.momentum) {
      mbar_ = ops_.alloc(B);
      mbar_all_ = ops_.alloc(B * s_.num_chunks());
    }
    if (!keep_) {
      GH_ = ops_.alloc(B * C * 2 * dh, Buffer::ProductOutput);
      U_ = ops_.alloc(B * C * dh, Buffer::ProductOutput);
    }
    Ak_ = ops_.alloc(B * C * dh);
    // The forward's update terms (the backward recomputes its own: update_terms_bwd).
    R_ = ops_.alloc(B * C * 2 * dh);
    Au_ = ops_.alloc(B * C * dh);
    // The apply's [g|h] and the update's a apart from the update's [g|h] and the apply's a: a chunk's apply and
    // update share no buffer, so a backend may run them at the same time.
    if (!keep_) GHq_ = ops_.alloc(B * C * 2 * dh, Buffer::ProductOutput);
    if (s_.muon) {
      const int64_t p = g_.p();
      nrm_ = ops_.alloc(3 * B);
      for (int i = 0; i < 5; ++i) X_[i] = ops_.alloc(3 * B * P, Buffer::Ns5);
      X_[5] = ops_.alloc(3 * B * P);  // the update the step reads
      for (int i = 0; i < 5; ++i) Am_[i] = ops_.alloc(3 * B * p * p, Buffer::Ns5);
      for (int i = 0; i < 5; ++i) Bm_[i] = ops_.alloc(3 * B * p * p, Buffer::Ns5);
    }
    if (with_grad_) {
      dA_ = ops_.alloc(B * 3 * P);
      dEv_[0] = ops_.alloc(B * 3 * P);
      dEv_[1] = ops_.alloc(B * 3 * P);
      if (s_.muon || (s_.momentum && !state_bwd_in_one_pass())) dP_ = ops_.alloc(B * 3 * P);
      if (s_.momentum) {
        dS_ = ops_.alloc(B * 3 * P);
        dmbar_ = ops_.alloc(B);
      }
      if (s_.norm != WeightNorm::None) dtau_ = ops_.alloc(B * s_.state_rows());
      // [R | dGH] and [lr1 a | dU] per token row, and [dD02; E02], [dD1 | E1] per head: dK and dV one product each.
      RdGH_ = ops_.alloc(B * C * 4 * dh);
      dR_ = ops_.alloc(B * C * 2 * dh, Buffer::ProductOutput);
      AldU_ = ops_.alloc(B * C * 2 * dh);
      DW_ = ops_.alloc(B * 6 * P);
      da_ = ops_.alloc(B * C * dh, Buffer::ProductOutput);
      // The apply adjoint's own da and dGH (apart from the update adjoint's: see GHq_).
      dGHq_ = ops_.alloc(B * C * 2 * dh);
      daq_ = ops_.alloc(B * C * dh, Buffer::ProductOutput);
      if (s_.muon) {
        const int64_t p = g_.p();
        dXa_ = ops_.alloc(3 * B * P, Buffer::Ns5);
        dXb_ = ops_.alloc(3 * B * P, Buffer::Ns5);
        dBm_ = ops_.alloc(3 * B * p * p, Buffer::Ns5);
        dAm_ = ops_.alloc(3 * B * p * p, Buffer::Ns5);
        nsdot_ = ops_.alloc(3 * B);
        adjn_ = ops_.alloc(3 * B);
      }
    }
  }

  // The record forward() and backward() act on from now on (see the constructor).
  void use_record(int64_t r) {
    TTT_CHECK(r >= 0 && r < int64_t(records_.size()), "lact: forward record " << r << " of " << records_.size());
    Record& from = records_[size_t(record_)];
    from.in = in_, from.forward_done = forward_done_;
    const Record& to = records_[size_t(r)];
    states_ = to.states, mstates_ = to.mstates, tau_ = to.tau, in_ = to.in, forward_done_ = to.forward_done;
    ghq_ = to.ghq, ghk_ = to.ghk, ukept_ = to.u;
    record_ = r;
    cached_e_ = -1;
  }

  // o [B,T,d]. With gradients on, keeps the states for backward().
  void forward(const Inputs<T>& in, T* o) {
    in_ = in;
    cached_e_ = -1;
    const int64_t N = s_.num_chunks();
    ops_.pack_state(in.w0, in.w1, in.w2, state(0));
    if (s_.norm != WeightNorm::None) ops_.row_norms(state(0), tau_);
    if (s_.momentum) ops_.zero(mstate(0), s_.B * 3 * s_.P());
    means_ready_ = s_.momentum;
    if (s_.momentum) ops_.chunk_means(in.mom, s_.chunk, mbar_all_);
    for (int64_t c = 0; c < N; ++c) {
      const int64_t c0 = c * s_.chunk, n = std::min(s_.chunk, s_.T - c0);
      const int64_t v = slot(c), vn = slot(c + 1);
      if (s_.causal) {
        const T* E = effective(v, c);
        apply_fwd(E, c0, n, o);
        if (c + 1 < N) update_fwd(v, vn, E, c0, n);
      } else {
        update_fwd(v, vn, effective(v, c), c0, n);
        apply_fwd(effective(vn, c + 1), c0, n, o);
      }
    }
    forward_done_ = true;
  }

  // ---- streaming (generation): the causal program one chunk at a time, state kept inside ---------------
  // Build with a Shape whose T is the chunk (s.T == s.chunk, causal) and with_grad off; the Inputs tensors
  // are then [B, chunk, d] / [B, chunk] buffers holding the unfinished chunk's tokens in rows 0..n-1.
  // stream_init packs the initial weights (and their weight-norm targets) and zeroes the momentum (called
  // again, it is a reset: the state is "not updated" again);
  // stream_apply writes o rows [r0, r0+n) = f_E(q rows [r0, r0+n)) with the weights of the current chunk
  // start; stream_update takes the chunk's n tokens (rows 0..n-1) and advances the state to the next chunk,
  // exactly as forward() does between two chunks.
  void stream_init(const T* w0, const T* w1, const T* w2) {
    TTT_CHECK(!with_grad_ && s_.causal && s_.T == s_.chunk, "lact: streaming needs T == chunk, causal, no gradients");
    ops_.pack_state(w0, w1, w2, state(0));
    if (s_.norm != WeightNorm::None) ops_.row_norms(state(0), tau_);
    if (s_.momentum) ops_.zero(mstate(0), s_.B * 3 * s_.P());
    stream_slot_ = 0;
    stream_version_ = 0;
    cached_e_ = -1;
  }
  void stream_apply(const Inputs<T>& in, int64_t r0, int64_t n, T* o) {
    TTT_CHECK(r0 >= 0 && n > 0 && r0 + n <= s_.chunk, "lact: stream_apply rows " << r0 << ".." << r0 + n
                                                                                  << " outside the chunk");
    in_ = in;
    apply_fwd(effective(stream_slot_, stream_version_), r0, n, o);
  }
  void stream_update(const Inputs<T>& in, int64_t n) {
    TTT_CHECK(n > 0 && n <= s_.chunk, "lact: stream_update of " << n << " rows (chunk " << s_.chunk << ")");
    in_ = in;
    means_ready_ = false;  // the unfinished chunk's n rows: its own mean
    const int64_t next = 1 - stream_slot_;
    update_fwd(stream_slot_, next, effective(stream_slot_, stream_version_), 0, n);
    stream_slot_ = next;
    ++stream_version_;
  }

  // Gradients of L = sum(o * grad_o) with respect to every input, after forward() on the same inputs.
  void backward(const T* grad_o, const Grads<T>& g) {
    TTT_CHECK(with_grad_ && forward_done_, "lact: backward() needs a forward() with gradients on first");
    const int64_t N = s_.num_chunks(), B = s_.B, P = s_.P();
    go_ = grad_o;
    ops_.zero(dA_, B * 3 * P);
    if (s_.momentum) ops_.zero(dS_, B * 3 * P);
    if (dtau_) ops_.zero(dtau_, B * s_.state_rows());
    cached_e_ = -1;
    means_ready_ = s_.momentum;
    if (s_.momentum) ops_.chunk_means(in_.mom, s_.chunk, mbar_all_);
    // Tokens of the causal last chunk take part in no update.
    if (s_.causal) {
      const int64_t c0 = (N - 1) * s_.chunk, n = s_.T - c0;
      ops_.zero_rows(g.k, s_.d, c0, n);
      ops_.zero_rows(g.v, s_.d, c0, n);
      ops_.zero_rows(g.lr0, 1, c0, n);
      ops_.zero_rows(g.lr1, 1, c0, n);
      ops_.zero_rows(g.lr2, 1, c0, n);
      if (s_.momentum) ops_.zero_rows(g.mom, 1, c0, n);
    }
    // dE_of(v) collects the cotangent of the effective weights of version v (pre-norm after an update: of N(A_v));
    // flush() moves it into dA_, the cotangent of A_v. Causal: the apply adjoint of chunk c comes first (it
    // depends on nothing the update adjoints compute, so a backend may run it beside them) and its products write
    // version c's dE with beta 0; the update adjoint's add to them (the same sums: a + b = b + a).
    dE_started_[0] = dE_started_[1] = false;
    for (int64_t c = N - 1; c >= 0; --c) {
      const int64_t c0 = c * s_.chunk, n = std::min(s_.chunk, s_.T - c0);
      if (s_.causal) {
        apply_bwd(effective(c, c), c, c0, n, g);
        if (c + 1 < N) {
          if (!flush_in_step()) flush(c + 1);  // version c+1 complete
          update_bwd(c, c0, n, g);
        }
      } else {
        apply_bwd(effective(c + 1, c + 1), c + 1, c0, n, g);
        if (!flush_in_step()) flush(c + 1);
        update_bwd(c, c0, n, g);
      }
    }
    flush(0);
    ops_.unpack_grad(dA_, s_.norm != WeightNorm::None ? tau_ : nullptr, dtau_, state(0), g.w0, g.w1, g.w2);
  }

 private:
  Ops& ops_;
  Shape s_;
  Geom g_;
  bool with_grad_;
  bool keep_;  // keep_products (see the constructor)
  bool forward_done_ = false;
  Inputs<T> in_;
  const T* go_ = nullptr;
  int64_t nver_ = 0;
  int64_t cached_e_ = -1;  // version whose N(A) ebuf_ holds (pre-norm, backward)
  int64_t stream_slot_ = 0, stream_version_ = 0;  // streaming: the current state's slot and chunk number
  // A kept forward (use_record): the current one's live in states_, mstates_, tau_, in_ and forward_done_.
  struct Record {
    T *states = nullptr, *mstates = nullptr, *tau = nullptr;
    T *ghq = nullptr, *ghk = nullptr, *u = nullptr;  // keep_products: every chunk's [g|h] of q, of k, V W1
    Inputs<T> in;
    bool forward_done = false;
  };
  std::vector<Record> records_;
  int64_t record_ = 0;
  T *states_ = nullptr, *mstates_ = nullptr, *tau_ = nullptr, *ebuf_ = nullptr, *D_ = nullptr, *mbar_ = nullptr;
  T* mbar_all_ = nullptr;     // every chunk's momentum gate mean [N][B] (chunk_means), once per forward / backward
  bool means_ready_ = false;  // mbar_all_ holds this call's means (not while streaming)
  T *GH_ = nullptr, *U_ = nullptr, *Ak_ = nullptr, *R_ = nullptr, *GHq_ = nullptr, *Au_ = nullptr;
  T *ghq_ = nullptr, *ghk_ = nullptr, *ukept_ = nullptr;  // the current record's (keep_products)
  T *nrm_ = nullptr, *X_[6] = {}, *Am_[5] = {}, *Bm_[5] = {};
  T *dA_ = nullptr, *dP_ = nullptr, *dS_ = nullptr, *dmbar_ = nullptr, *dtau_ = nullptr;
  T* dEv_[2] = {};              // dE_of(v): version v's in dEv_[v % 2]
  bool dE_started_[2] = {};     // whether its version has a contribution yet
  T *RdGH_ = nullptr, *dR_ = nullptr, *AldU_ = nullptr, *da_ = nullptr, *DW_ = nullptr;
  T *dGHq_ = nullptr, *daq_ = nullptr;
  T *dXa_ = nullptr, *dXb_ = nullptr, *dBm_ = nullptr, *dAm_ = nullptr, *nsdot_ = nullptr, *adjn_ = nullptr;

  int64_t slot(int64_t version) const { return with_grad_ ? version : version % 2; }
  T* state(int64_t slot_index) const { return states_ + slot_index * s_.B * 3 * s_.P(); }
  T* mstate(int64_t slot_index) const { return mstates_ + slot_index * s_.B * 3 * s_.P(); }

  // Pre-norm as the public prenorm LaCT operator: version 0 (W⁰, no update yet) is used as it is, every later
  // version as its row-normalized copy N(A).
  bool normalized(int64_t version) const { return s_.norm == WeightNorm::Pre && version > 0; }

  // The weights the memory applies with (and takes the inner gradient at): A, or N(A) (see normalized()).
  const T* effective(int64_t slot_index, int64_t version) {
    if (!normalized(version)) return state(slot_index);
    if (cached_e_ != version) {
      ops_.weight_norm(state(slot_index), tau_, ebuf_);
      cached_e_ = version;
    }
    return ebuf_;
  }

  // ---- forward pieces -------------------------------------------------------------------------------
  // Row-major GEMM over the B heads. Ld/stride helpers: a chunk of an input tensor [B,T,d] starting at c0.
  void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t lda, int64_t sA,
            const T* Bp, int64_t ldb, int64_t sB, T beta, T* C, int64_t ldc, int64_t sC, int64_t batch) {
    ops_.gemm(ta, tb, m, n, k, alpha, A, lda, sA, Bp, ldb, sB, beta, C, ldc, sC, batch);
  }
  const T* rows_of(const T* x, int64_t c0) const { return x + c0 * s_.d; }
  T* rows_of(T* x, int64_t c0) const { return x + c0 * s_.d; }
  int64_t seq_stride() const { return s_.T * s_.d; }
  int64_t wstride() const { return 3 * s_.P(); }
  static const T* w02(const T* E) { return E; }
  const T* w1(const T* E) const { return E + 2 * s_.P(); }
  T* w1(T* E) const { return E + 2 * s_.P(); }
  // The chunk from row c0's [g|h] of q / of k ([B][n][2dh]) and V W1 ([B][n][dh]): a record's kept slot (the
  // chunks lie one after another, B c0 rows in) or the shared work buffer.
  T* gh_q(int64_t c0) const { return keep_ ? ghq_ + s_.B * c0 * 2 * s_.dh : GHq_; }
  T* gh_k(int64_t c0) const { return keep_ ? ghk_ + s_.B * c0 * 2 * s_.dh : GH_; }
  T* vw1(int64_t c0) const { return keep_ ? ukept_ + s_.B * c0 * s_.dh : U_; }

  // [g|h] = X [W0;W2]^T for the chunk rows X of x: GH [B][n][2dh].
  void gh(const T* E, const T* x, int64_t c0, int64_t n, T* GH) {
    const int64_t d = s_.d, dh = s_.dh;
    gemm(false, true, n, 2 * dh, d, T(1), rows_of(x, c0), d, seq_stride(), w02(E), d, wstride(), T(0), GH, 2 * dh,
         n * 2 * dh, s_.B);
  }

  void apply_fwd(const T* E, int64_t c0, int64_t n, T* o) {
    const int64_t d = s_.d, dh = s_.dh;
    T* GH = gh_q(c0);
    gh(E, in_.q, c0, n, GH);
    ops_.swiglu(GH, Ak_, n);  // a = silu(g) * h
    gemm(false, true, n, d, dh, T(1), Ak_, dh, n * dh, w1(E), dh, wstride(), T(0), rows_of(o, c0), d, seq_stride(),
         s_.B);  // o = a W1^T
  }

  // The chunk's token-side terms of the inner gradient: GH = K [W0;W2]^T, U = V W1 (gh_k, vw1), then (forward)
  // lr1 a = lr1 silu(g) h, R = [lr0 u h silu'(g) | lr2 u silu(g)] (Au_, R_). The rate lr1 goes with a rather
  // than with v: dW1 = (lr1 V)^T a = V^T (lr1 a), so no pass scales the values. The backward wants GH and U only
  // (update_terms_bwd computes lr1 a and R itself), and with kept products reads the forward's.
  void update_terms(const T* E, int64_t c0, int64_t n, bool in_backward) {
    if (keep_ && in_backward) return;
    const int64_t d = s_.d, dh = s_.dh, B = s_.B;
    T *GH = gh_k(c0), *U = vw1(c0);
    gh(E, in_.k, c0, n, GH);
    gemm(false, false, n, dh, d, T(1), rows_of(in_.v, c0), d, seq_stride(), w1(E), dh, wstride(), T(0), U, dh, n * dh,
         B);  // u = V W1
    if (!in_backward) ops_.update_terms(GH, U, in_.lr0, in_.lr1, in_.lr2, c0, n, Au_, R_);
  }

  // The momentum gate's mean over the chunk's n tokens from c0: from this call's chunk_means, or (streaming)
  // computed into mbar_.
  const T* mbar_for(int64_t c0, int64_t n) {
    if (means_ready_) return mbar_all_ + (c0 / s_.chunk) * s_.B;
    ops_.batched_dot(in_.mom + c0, nullptr, n, s_.T, s_.B, T(1) / T(n), mbar_);
    return mbar_;
  }

  // The update of chunk c from its start state: Pn := the inner step mixed with momentum (P_c), mbar, and
  // with Muon the NS5 iterates. Pn is where P_c is kept (the next momentum state, or D_ when nothing keeps it):
  // the inner step's products write it directly unless momentum mixes it first (then they write D_). Returns
  // what the step adds (Pn or X_[5]). mix false (momentum without Muon): the mix is left to the step's pass
  // (momentum_step), D_ and mbar_ hold its operands.
  const T* update_direction(int64_t v, const T* E, int64_t c0, int64_t n, T* Pn, bool mix = true) {
    const int64_t d = s_.d, dh = s_.dh, B = s_.B, P = s_.P();
    update_terms(E, c0, n, /*in_backward=*/false);
    T* dW = s_.momentum ? D_ : Pn;
    gemm(true, false, 2 * dh, d, n, T(1), R_, 2 * dh, n * 2 * dh, rows_of(in_.k, c0), d, seq_stride(), T(0), dW, d,
         wstride(), B);  // [dW0; dW2] = R^T K
    gemm(true, false, d, dh, n, T(1), rows_of(in_.v, c0), d, seq_stride(), Au_, dh, n * dh, T(0), w1(dW), dh,
         wstride(), B);  // dW1 = V^T (lr1 a)
    if (s_.momentum && mix) ops_.axpy_batched(Pn, D_, mstate(v), mbar_for(c0, n), 3 * P);  // P = dW + mbar S
    if (!s_.muon) return Pn;
    ns5_forward(Pn);
    return X_[5];
  }

  void ns5_forward(const T* Pm) {
    const int64_t P = s_.P(), p = g_.p(), q = g_.q(), nb = 3 * s_.B;
    ops_.batched_dot(Pm, Pm, P, P, nb, T(1), nrm_);
    ops_.sqrt_inplace(nrm_, nb);
    ops_.to_ns(Pm, X_[0], nrm_);  // X0 = P / (||P|| + eps), NS layout
    for (int i = 0; i < 5; ++i) {
      const T a = T(kNs5[i][0]), b = T(kNs5[i][1]), c = T(kNs5[i][2]);
      gemm(false, true, p, p, q, T(1), X_[i], q, P, X_[i], q, P, T(0), Am_[i], p, p * p, nb);  // A = X X^T
      ops_.copy(Bm_[i], Am_[i], nb * p * p);
      gemm(false, false, p, p, p, c, Am_[i], p, p * p, Am_[i], p, p * p, b, Bm_[i], p, p * p, nb);  // b A + c A A
      ops_.copy(X_[i + 1], X_[i], nb * P);
      gemm(false, false, p, q, p, T(1), Bm_[i], p, p * p, X_[i], q, P, a, X_[i + 1], q, P, nb);  // a X + B X
    }
  }

  void update_fwd(int64_t v, int64_t vn, const T* E, int64_t c0, int64_t n) {
    T* Pn = mstates_ ? mstate(vn) : D_;
    const T* tau = s_.norm == WeightNorm::Post ? tau_ : nullptr;
    if (s_.momentum && !s_.muon) {  // P = dW + mbar S and the step in one pass
      update_direction(v, E, c0, n, Pn, /*mix=*/false);
      ops_.momentum_step(state(v), D_, mstate(v), mbar_for(c0, n), Pn, tau, state(vn));
      return;
    }
    const T* M = update_direction(v, E, c0, n, Pn);
    ops_.step(state(v), M, s_.muon, tau, state(vn));
  }

  // ---- backward pieces ------------------------------------------------------------------------------
  // With post weight norm the flush before an update adjoint is its step adjoint's first step (dA + dE read
  // in the same pass: the same sum, one pass less).
  bool flush_in_step() const { return s_.norm == WeightNorm::Post; }
  // Post norm with momentum and no Muon: the step's and the momentum's adjoints are one pass (step_momentum_bwd).
  bool state_bwd_in_one_pass() const { return s_.norm == WeightNorm::Post && s_.momentum && !s_.muon; }
  // Version v's dE buffer, and the beta of the products of a contribution to it: 0 for the first (the buffer
  // holds version v - 2's, already moved into dA_), 1 after.
  T* dE_of(int64_t v) const { return dEv_[v & 1]; }
  T dE_begin(int64_t v) {
    const T beta = dE_started_[v & 1] ? T(1) : T(0);
    dE_started_[v & 1] = true;
    return beta;
  }
  // Version v's dE, complete, for the step that moves it into dA_ (zeros if nothing contributed); its buffer is
  // then free for version v - 2.
  const T* dE_take(int64_t v) {
    if (!dE_started_[v & 1]) ops_.zero(dE_of(v), s_.B * 3 * s_.P());
    dE_started_[v & 1] = false;
    return dE_of(v);
  }
  // Moves version v's dE into dA_.
  void flush(int64_t version) {
    const int64_t n = s_.B * 3 * s_.P();
    const T* dE = dE_take(version);
    if (normalized(version)) ops_.weight_norm_bwd(state(version), tau_, dE, dA_, dtau_);
    else ops_.add(dA_, dE, n);
  }

  // Cotangents through apply(c) with the weights E of version v (into dE_of(v)), grad_q rows written.
  void apply_bwd(const T* E, int64_t v, int64_t c0, int64_t n, const Grads<T>& g) {
    const int64_t d = s_.d, dh = s_.dh, B = s_.B;
    T* GH = gh_q(c0);
    if (!keep_) gh(E, in_.q, c0, n, GH);
    gemm(false, false, n, dh, d, T(1), rows_of(go_, c0), d, seq_stride(), w1(E), dh, wstride(), T(0), daq_, dh,
         n * dh, B);                          // da = dO W1
    ops_.swiglu_bwd(GH, daq_, n, dGHq_, Ak_);  // dGH = [da h silu'(g) | da silu(g)], a = silu(g) h
    gemm(false, false, n, d, 2 * dh, T(1), dGHq_, 2 * dh, n * 2 * dh, w02(E), d, wstride(), T(0), rows_of(g.q, c0), d,
         seq_stride(), B);  // dQ = dGH [W0;W2]
    T* dE = dE_of(v);
    const T beta = dE_begin(v);
    gemm(true, false, d, dh, n, T(1), rows_of(go_, c0), d, seq_stride(), Ak_, dh, n * dh, beta, w1(dE), dh, wstride(),
         B);  // dW1 (+)= dO^T a
    gemm(true, false, 2 * dh, d, n, T(1), dGHq_, 2 * dh, n * 2 * dh, rows_of(in_.q, c0), d, seq_stride(), beta, dE, d,
         wstride(), B);  // d[W0;W2] (+)= dGH^T Q
  }

  // Update of chunk c (version c -> c+1): dA_ holds dL/dA_{c+1} on entry and dL/dA_c (the direct path; the
  // path through the effective weights goes to dE_of(c)) on exit; dS_ likewise for the momentum state.
  void update_bwd(int64_t c, int64_t c0, int64_t n, const Grads<T>& g) {
    const T* E = effective(c, c);
    // Recompute the token-side terms (from the kept products, if kept); the update P_c itself was kept by
    // forward (as the state c+1 momentum).
    update_terms(E, c0, n, /*in_backward=*/true);
    const T* Pc = mstate(c + 1);
    if (s_.muon) ns5_forward(Pc);
    const T* M = s_.muon ? X_[5] : Pc;
    if (state_bwd_in_one_pass()) {
      // The step's and the momentum's adjoints below and the stacking of dD = dP with E = A_c (post norm: the
      // effective weights are the state) in one pass over the state: dA_ := dZ, dS_ := mbar dP,
      // DW_ := [dP02; A02], [dP1 | A1].
      ops_.step_momentum_bwd(state(c), Pc, tau_, dA_, dE_take(c + 1), dtau_, dS_, mstate(c), mbar_for(c0, n), DW_,
                             dmbar_);
      ops_.fill_chunk(g.mom, dmbar_, T(1) / T(n), c0, n);
      update_bwd_products(c, c0, n, g);
      return;
    }
    // Step (and post weight norm): Z = A + M; A' = N(Z). dA_ + dE (version c+1's flush: flush_in_step) becomes
    // dZ = dL/dA_c (direct) = dL/dM in dA_.
    if (s_.norm == WeightNorm::Post) ops_.step_bwd(state(c), M, s_.muon, tau_, dA_, dE_take(c + 1), dtau_);
    // Muon: dP from dM through NS5 (into dP_); without Muon dM is dA_ itself.
    if (s_.muon) ns5_backward(Pc);
    const T* dM = s_.muon ? dP_ : dA_;
    // Momentum: P = D + mbar S_c is also the next momentum state: dP = dM + dS, dmbar = <dP, S_c>,
    // dS_c = mbar dP (one pass). Without momentum dD is dM as it is.
    const T* dD = dM;
    if (s_.momentum) {
      ops_.momentum_bwd(dM, dS_, mstate(c), mbar_for(c0, n), dP_, dmbar_);
      ops_.fill_chunk(g.mom, dmbar_, T(1) / T(n), c0, n);
      dD = dP_;
    }
    ops_.stack_bwd_operands(dD, E, DW_);
    update_bwd_products(c, c0, n, g);
  }

  // The inner gradient: D02 = R^T K, D1 = V^T (lr1 a), with cotangent dD. Its products read dD and E from DW_,
  // where [dD02; E02] and [dD1 | E1] lie side by side, so that dK = [R | dGH] [dD02; E02] and
  // dV = [lr1 a | dU] [dD1 | E1]^T are one product each (no second product accumulating into dK, dV).
  void update_bwd_products(int64_t c, int64_t c0, int64_t n, const Grads<T>& g) {
    const int64_t d = s_.d, dh = s_.dh, B = s_.B, P = s_.P(), sW = 6 * P;
    const T* DW02 = DW_;         // [4dh, d]: dD02 rows, then E02 rows
    const T* DW1 = DW_ + 4 * P;  // [d, 2dh]: row i = [dD1 row i | E1 row i]
    gemm(false, true, n, 2 * dh, d, T(1), rows_of(in_.k, c0), d, seq_stride(), DW02, d, sW, T(0), dR_, 2 * dh,
         n * 2 * dh, B);  // dR = K dD02^T
    gemm(false, false, n, dh, d, T(1), rows_of(in_.v, c0), d, seq_stride(), DW1, 2 * dh, sW, T(0), da_, dh, n * dh,
         B);  // Y = V dD1 (the cotangent of lr1 a)
    ops_.update_terms_bwd(gh_k(c0), vw1(c0), in_.lr0, in_.lr1, in_.lr2, c0, n, dR_, da_, RdGH_, AldU_, g.lr0, g.lr1,
                          g.lr2);
    gemm(false, true, n, d, 2 * dh, T(1), AldU_, 2 * dh, n * 2 * dh, DW1, 2 * dh, sW, T(0), rows_of(g.v, c0), d,
         seq_stride(), B);  // dV = (lr1 a) dD1^T + dU W1^T
    gemm(false, false, n, d, 4 * dh, T(1), RdGH_, 4 * dh, n * 4 * dh, DW02, d, sW, T(0), rows_of(g.k, c0), d,
         seq_stride(), B);  // dK = R dD02 + dGH [W0;W2]
    // Version c's contributions through the update (beta 1 after the causal apply adjoint's).
    T* dE = dE_of(c);
    const T beta = dE_begin(c);
    gemm(true, false, 2 * dh, d, n, T(1), RdGH_ + 2 * dh, 4 * dh, n * 4 * dh, rows_of(in_.k, c0), d, seq_stride(),
         beta, dE, d, wstride(), B);  // d[W0;W2] (+)= dGH^T K
    gemm(true, false, d, dh, n, T(1), rows_of(in_.v, c0), d, seq_stride(), AldU_ + dh, 2 * dh, n * 2 * dh, beta,
         w1(dE), dh, wstride(), B);  // dW1 (+)= V^T dU
  }

  // dM (= dA_, state layout) -> dP_ (state layout) through the five NS steps and the Frobenius scaling.
  void ns5_backward(const T* Pc) {
    const int64_t P = s_.P(), p = g_.p(), q = g_.q(), nb = 3 * s_.B;
    T* dX = dXa_;   // dL/dX_{i+1}
    T* dXn = dXb_;  // dL/dX_i
    // The adjoint is linear in dM: it runs on dM / s, s the least power of two >= ||dM|| (exact: the same bits in
    // float and double), and ns_norm_bwd multiplies s back, so that its magnitude does not follow the loss's
    // (Buffer::Ns5 may be fp16, whose range is 6e-8 .. 65504).
    ops_.batched_dot(dA_, dA_, P, P, nb, T(1), adjn_);
    ops_.sqrt_inplace(adjn_, nb);
    ops_.round_up_pow2(adjn_, nb);
    ops_.to_ns(dA_, dX, adjn_, /*exact=*/true);
    for (int i = 4; i >= 0; --i) {
      const T a = T(kNs5[i][0]), b = T(kNs5[i][1]), c = T(kNs5[i][2]);
      // X' = a X + Bm X
      gemm(false, true, p, p, q, T(1), dX, q, P, X_[i], q, P, T(0), dBm_, p, p * p, nb);  // dBm = dX' X^T
      ops_.copy(dXn, dX, nb * P);
      gemm(true, false, p, q, p, T(1), Bm_[i], p, p * p, dX, q, P, a, dXn, q, P, nb);  // dX = a dX' + Bm^T dX'
      // Bm = b Am + c Am Am
      ops_.copy(dAm_, dBm_, nb * p * p);
      gemm(false, true, p, p, p, c, dBm_, p, p * p, Am_[i], p, p * p, b, dAm_, p, p * p, nb);  // b dBm + c dBm Am^T
      gemm(true, false, p, p, p, c, Am_[i], p, p * p, dBm_, p, p * p, T(1), dAm_, p, p * p, nb);  // + c Am^T dBm
      // Am = X X^T
      gemm(false, false, p, q, p, T(1), dAm_, p, p * p, X_[i], q, P, T(1), dXn, q, P, nb);  // dX += dAm X
      gemm(true, false, p, q, p, T(1), dAm_, p, p * p, X_[i], q, P, T(1), dXn, q, P, nb);   // dX += dAm^T X
      std::swap(dX, dXn);
    }
    // X0 = P r, r = 1/(||P|| + eps): dP = r dX0 - r <dX0, X0> P / ||P||
    ops_.batched_dot(dX, X_[0], P, P, nb, T(1), nsdot_);
    ops_.ns_norm_bwd(dX, Pc, nrm_, nsdot_, adjn_, dP_);
  }
};

// Elements that Fused allocates for a shape (states and work buffers; not the inputs and outputs), e.g. to
// check that memory stays linear in T/C; with `records` forwards kept at once. The CUDA backend adds a small
// reduction buffer.
int64_t workspace_elements(const Shape& s, bool with_grad, int64_t records = 1, bool keep_products = false);
// Of those, the elements of the buffers Fused allocates as Buffer::Operand: a backend with bf16 operands keeps a
// bf16 shadow of each.
int64_t workspace_operand_elements(const Shape& s, bool with_grad, int64_t records = 1, bool keep_products = false);
// The rest, the elements of its Buffer::ProductOutput buffers: a backend with bf16 product outputs stores them in
// bf16 alone (2 bytes an element instead of 4).
int64_t workspace_product_output_elements(const Shape& s, bool with_grad, int64_t records = 1,
                                          bool keep_products = false);
// Of those, the elements of its Buffer::Ns5 buffers (counted with neither above): a backend with fp16 NS5 storage
// stores them in 2 bytes an element.
int64_t workspace_ns5_elements(const Shape& s, bool with_grad, int64_t records = 1);
// The CUDA runner's fixed buffers beside them (src/backend/cuda/lact_cuda.cu), shared with the memory estimate: the
// first stage of its batched reductions (runner_partial_doubles) and cuBLAS workspaces of its own (bytes:
// one of kRunnerStreamWorkspace per stream of its kRunnerStreams, together kRunnerCublasWorkspace).
inline constexpr int64_t kDotSlices = 128;
// Doubles of that first stage: kDotSlices per row of 3 B, or one per state row of every head (step_momentum_bwd's
// per-row sums of the gate's gradient), whichever is more.
inline int64_t runner_partial_doubles(int64_t B, int64_t d, int64_t dh) {
  return std::max<int64_t>(3 * B * kDotSlices, B * (2 * dh + d));
}
inline constexpr int kRunnerStreams = 6;
inline constexpr size_t kRunnerStreamWorkspace = size_t(8) << 20;
inline constexpr size_t kRunnerCublasWorkspace = kRunnerStreamWorkspace * size_t(kRunnerStreams);

// The causal forward through the streaming API (Fused::stream_*), token by token as generation runs it: o must
// equal fused_cpu's o. The reference usage of the streaming API (and its test). reset_every > 0: back to the
// initial weights (stream_init) at every multiple of it, chunks restarting there -- the program
// causal_program(T, chunk, reset_every) of the engine.
template <class T>
void stream_cpu(const Shape& s, const Inputs<T>& in, T* o, int64_t reset_every = 0);

// The CPU twin's emulation of the CUDA backend's bf16 mode (LactOptions::bf16, bf16_outputs). operands: every
// element of op(A) and op(B) of every matrix product is first rounded to bf16 (round_bf16 of its float value), the
// products still accumulate in T. outputs (with operands): the products' outputs into Buffer::ProductOutput
// buffers are rounded to bf16 as well (the fp32 sum rounded once, as cuBLAS writes a bf16 C), so the element-wise
// steps read bf16 values and compute in T. Everything else is unchanged.
// ns5_fp16 (not bf16: the CUDA backend's LactOptions::ns5_fp16): every value written into a Buffer::Ns5 buffer is
// rounded to fp16 (round_to_fp16), as that backend stores them; independent of the two above. ns5_tf32 (the
// yardstick for it: the CUDA tf32 mode's NS5): the operands of the NS5 products rounded to tf32 (round_to_tf32),
// their outputs kept in T.
struct Bf16Emulation {
  bool operands = false;
  bool outputs = false;
  bool ns5_fp16 = false;
  bool ns5_tf32 = false;
};
// The bf16 mode's product outputs in bf16 (the CUDA backend's LactOptions::bf16_outputs, the memory estimate's
// count of them) unless the environment says TTT_LACT_B16_OUTPUTS=0.
bool bf16_outputs_from_env();
// NS5 on fp16 where the CUDA backend's products are tf32 (LactOptions::ns5_fp16) unless the environment says
// TTT_LACT_NS5=tf32 (anything else but empty is refused: a typo must not time the wrong mode).
bool ns5_fp16_from_env();

// The CPU twin: Fused<CpuOps<T>> on host arrays (T = float or double). Forward only when grad_o is null.
// bf16: the emulation above, e.g. as a yardstick for the CUDA bf16 mode's error.
// keep_products: Fused's keep_products (the backward reads the forward's chunk products and terms: the same bits).
template <class T>
void fused_cpu(const Shape& s, const Inputs<T>& in, T* o, const T* grad_o = nullptr, const Grads<T>* g = nullptr,
               Bf16Emulation bf16 = {}, bool keep_products = false);

// The CPU twin of several forwards kept at once (Fused's records), in the order the GPU model's --recompute none
// runs its layers: every forward (input i into record i), then every backward in reverse order. Each run's o and
// gradients must be what fused_cpu gives it alone.
template <class T>
void fused_cpu_records(const Shape& s, const std::vector<Inputs<T>>& in, const std::vector<T*>& o,
                       const std::vector<const T*>& grad_o, const std::vector<Grads<T>>& g);

}  // namespace ttt::lact
