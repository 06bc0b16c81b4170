// The Titans memory of TNT (docs/ALGORITHMS.md §6.3, §7.3) written out explicitly, with no tape: forward and a
// hand-derived backward (second order through every update), batched over independent *items*, plus the Q-K
// projection of TNT's local memories and the whole TNT branch composed from them.
//
// Memory (engine::titans_memory_config): per sequence-head b, W1 [dh,d], W2 [d,dh], f_W(x) = x + W2 silu(W1 x)
// (residual optional), MSE inner loss, one per-token rate θ, momentum with the chunk mean of η, decay with the
// chunk mean of α; program: causal chunked ("apply then update" per chunk, the last chunk of a shard apply-only)
// with chunk C and an optional reset period S (reset to W⁰ and zero momentum at every multiple of S, chunks
// aligned to each shard start, exactly engine::causal_program(T, C, S)).
//
// Items. A reset period cuts every sequence-head into independent shards; an *item* is one (sequence-head,
// shard), and items of equal length form a *group* whose token rows sit at a constant stride, so that every
// chunk step of a group is one strided-batched matrix product over its items (Group, make_groups). Without a
// period an item is a whole sequence-head.
//
// The algorithm is written once as templates over a backend `Ops` (as lact_fused.h): storage, a row-major
// strided-batched GEMM, a deterministic batched dot product, and `each(n, f)`, which runs the element functor
// f(i) for i < n (a loop on the CPU, a grid-stride kernel on the GPU). Every element-wise / per-row step is one
// functor struct of titans_elementwise.h (TTT_HOST_DEVICE code shared by the CPU twin and the CUDA kernels). The CPU twin (`CpuOps`,
// titans_fused.cpp) is the specification; src/backend/cuda/titans_cuda.cu runs the same templates with cuBLAS.
//
// Streaming (generation): Memory::stream_init / stream_apply / stream_update run the causal program one token
// and one chunk update at a time on a state the caller keeps (StreamState), with the same chunk update function
// (MemoryGroup::update) and Q-K projection steps (QkGroup::project / absorb) as forward(); stream_memory_cpu /
// stream_tnt_cpu are the CPU drivers, GPU generation (src/backend/cuda/generate_cuda.cpp) the CUDA one.
//
// Memory use: forward keeps the state (W, and the momentum S) at chunk boundaries; when all of them would
// exceed MemoryShape::state_budget_bytes, only every K-th one (K ~ sqrt(chunks), "segments") and backward
// recomputes a segment's states from its first one before walking it in reverse (docs/ALGORITHMS.md §7.3).
//
// Layouts. Inputs w1 [B,dh,d], w2 [B,d,dh], q/k/v/grad_o [B,T,d], theta/eta/alpha [B,T], row-major. A state is
// [items][2P] (P = d*dh): W1 at offset 0, W2 at offset P. Chunk work buffers are [items][n][cols] for the
// current chunk length n; per-chunk values of the items (gate means, Q-K normalizers) are [chunks][items].
//
// This header is plain C++17 so that nvcc compiles it too.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include "core/error.h"
#include "core/scalar_math.h"  // TTT_HOST_DEVICE
#include "ttt/branch_layout.h"
#include "ttt/titans_elementwise.h"  // Group, make_groups, the per-element functors fn::

namespace ttt {
struct SafeTensors;
namespace engine {
struct TntOptions;
}
}  // namespace ttt

namespace ttt::titans {

// ---- shapes and pointers --------------------------------------------------------------------------------
struct MemoryShape {
  int64_t B = 0, T = 0, d = 0, dh = 0;
  int64_t chunk = 0;   // C
  int64_t period = 0;  // S: reset every S tokens; 0: never
  bool momentum = true, decay = true, residual = true;
  bool qk = false;     // read with Q-K projected queries (chunk granularity C, reset with the period)
  // The chain goes on after these T tokens (context parallelism's global memory on a span that is not the
  // sequence's last): the last chunk updates the state too, so that the exit state (MemoryInputs::exit_W) is the
  // state the next span starts from (engine::chain_span_program). Needs no period and no qk.
  bool continues = false;
  // Backward keeps every state when they fit in this many bytes (per group), else every K-th, K ~ sqrt(chunks).
  double state_budget_bytes = double(int64_t(2) << 30);
  // The persistent kernels' backward (backend/titans_persistent_plan.h) keeps every chunk's state, saved by the
  // forward, when they fit in this many bytes (all groups): no segment recomputation; else every K-th one.
  double persistent_state_budget_bytes = double(int64_t(4) << 30);
  int64_t segment = 0;  // > 0: force K (tests)

  int64_t P() const { return d * dh; }
  void validate() const {
    TTT_CHECK(B > 0 && T > 0 && d > 0 && dh > 0,
              "titans: sizes must be positive (B=" << B << ", T=" << T << ", d=" << d << ", dh=" << dh << ")");
    TTT_CHECK(chunk > 0, "titans: chunk size must be positive, got " << chunk);
    TTT_CHECK(period >= 0, "titans: reset period must be >= 0, got " << period);
    TTT_CHECK(!continues || (period == 0 && !qk), "titans: a chain that continues past its tokens needs no reset "
                                                  "period and no Q-K projection");
  }
};

// Pointers in the backend's memory space. eta / alpha only with momentum / decay.
//
// A chain passed between spans (context parallelism's --cp-global state; no period, no qk), in the state layout
// [B][2P] (W1 at offset 0, W2 at offset P; the momentum likewise): entry_W / entry_S, when given, are the state
// the chain starts from instead of (w1, w2) and zero momentum; exit_W / exit_S, when given, receive the state
// after the last update (with MemoryShape::continues: after every chunk).
template <class T>
struct MemoryInputs {
  const T *q = nullptr, *k = nullptr, *v = nullptr;
  const T *w1 = nullptr, *w2 = nullptr;
  const T *theta = nullptr, *eta = nullptr, *alpha = nullptr;
  const T *entry_W = nullptr, *entry_S = nullptr;
  T *exit_W = nullptr, *exit_S = nullptr;
};
// Gradients of L = sum(o * grad_o) [+ <exit state, exit adjoint>], every one written in full (eta / alpha: zeros
// when the gate is off, if given). w1 / w2: the gradient of the initial weights, which are the entry state's when
// the forward had entry_W. The chain's ends, in the state layout: exit_dW / exit_dS (inputs, null: zero) the
// adjoint of the exit state; entry_dW / entry_dS (outputs, if given) the adjoint of the entry state.
template <class T>
struct MemoryGrads {
  T *q = nullptr, *k = nullptr, *v = nullptr;
  T *w1 = nullptr, *w2 = nullptr;
  T *theta = nullptr, *eta = nullptr, *alpha = nullptr;
  const T *exit_dW = nullptr, *exit_dS = nullptr;
  T *entry_dW = nullptr, *entry_dS = nullptr;
};

// ---- streaming (generation) -------------------------------------------------------------------------------
// Memory::stream_* run the causal program one token (or a few) and one chunk update at a time, with the chunk
// update of forward(). The memory is built with stream_shape(s): T = chunk (its inputs are the unfinished
// chunk's [B, chunk, .] buffers), no period (a shard start is the caller's stream_init), no gradients. The
// recurrent state is the caller's storage, so that one Memory (its work buffers) serves any number of streams of
// its shape, e.g. the same memory of every layer of a model:
//   W [B][2P]    the fast weights (W1 at offset 0, W2 at offset P, as forward()'s states)
//   S [B][2P]    the momentum (with momentum; else null)
//   M [B][d][d]  Σ k kᵀ and z [B] Σ ||k||² over the finished chunks since the last reset (with qk; else null)
template <class T>
struct StreamState {
  T *W = nullptr, *S = nullptr, *M = nullptr, *z = nullptr;
};
struct StreamStateSizes {
  int64_t W = 0, S = 0, M = 0, z = 0;  // elements; 0: not part of the state
};
inline StreamStateSizes stream_state_sizes(const MemoryShape& s) {
  return {s.B * 2 * s.P(), s.momentum ? s.B * 2 * s.P() : 0, s.qk ? s.B * s.d * s.d : 0, s.qk ? s.B : 0};
}
// The streaming shape of a memory: one chunk of T = C tokens (C capped at the reset period: a shard's chunks
// never span more), no period.
inline MemoryShape stream_shape(const MemoryShape& s) {
  MemoryShape out = s;
  out.chunk = s.period > 0 ? std::min(s.chunk, s.period) : s.chunk;
  out.T = out.chunk;
  out.period = 0;
  return out;
}


// ---- the backend contract -------------------------------------------------------------------------------
//   using value_type = T;
//   T* alloc(int64_t n)                      storage owned by the backend until it is destroyed
//   zero(p, n); copy(dst, src, n)
//   gemm(ta, tb, m, n, k, alpha, A, lda, sA, B, ldb, sB, beta, C, ldc, sC, batch)
//        row-major C[m,n] = alpha op(A) op(B) + beta C for each of `batch` matrices (strides sA, sB, sC)
//   batched_dot(x, y, per, stride, batch, out)   out[b] = sum_i x[b stride + i] y[b stride + i], i < per
//        (batch up to max_dot_batch(shape): the items, or the token rows of a chunk)
//   each(n, f)                               f(i) for every i < n (f: a functor of namespace fn)
//   each2(n1, f1, n2, f2)                    each(n1, f1) and each(n2, f2), in one launch on the GPU: only for two
//                                            steps that write disjoint outputs and read none of each other's

// Chunks of one item of length len with chunk C.
TTT_HOST_DEVICE int64_t num_chunks(int64_t len, int64_t C) { return (len + C - 1) / C; }

// Backward keeps the state of every K-th chunk boundary (K = chunks: all of them): all when they fit in
// s.state_budget_bytes, else K = ceil(sqrt(chunks)); s.segment > 0 forces K.
inline int64_t segment_length(const MemoryShape& s, const Group& g, size_t elem_bytes) {
  const int64_t N = num_chunks(g.len, s.chunk) + (s.continues ? 1 : 0);  // states kept: one per chunk (+ the exit)
  if (s.segment > 0) return std::min(s.segment, N);
  const double per_version = double(g.items) * double(2 * s.P()) * (s.momentum ? 2.0 : 1.0) * double(elem_bytes);
  if (per_version * double(N) <= s.state_budget_bytes) return N;
  return std::max<int64_t>(1, int64_t(std::ceil(std::sqrt(double(N)))));
}

// The largest batch a Memory passes to batched_dot: items, or items x chunk rows (the dθ row dots).
inline int64_t max_dot_batch(const MemoryShape& s) {
  int64_t m = 1;
  for (const Group& g : make_groups(s.B, s.T, s.period)) m = std::max(m, g.items * std::min(s.chunk, g.len));
  return m;
}

// The Q-K projection of one group (docs/ALGORITHMS.md §6.2, as engine::qk_project): q̃_t = (Σ k kᵀ) q_t / Σ ||k||²
// over the item's tokens before the chunk of t; q̃ = q while that sum is zero. The sums M = Σ k kᵀ [items][d][d]
// and z = Σ ||k||² [items] are the projection's state: project() reads them, absorb() adds a chunk's keys;
// forward() runs them over the group's chunks, and streaming (Memory::stream_*) over the caller's state.
template <class Ops>
class QkGroup {
 public:
  using T = typename Ops::value_type;
  QkGroup(Ops& ops, const Group& g, int64_t d, int64_t chunk, bool with_grad)
      : ops_(ops), g_(g), d_(d), C_(chunk), N_(num_chunks(g.len, chunk)) {
    const int64_t nI = g_.items, Cn = std::min(C_, g_.len);
    M_ = ops_.alloc(nI * d * d);
    z_ = ops_.alloc(N_ * nI);
    cs_ = ops_.alloc(N_ * nI);
    rs_ = ops_.alloc(nI * g_.len);
    acc_ = ops_.alloc(nI * Cn * d);
    if (with_grad) {
      dz_ = ops_.alloc(N_ * nI);
      dot_ = ops_.alloc(nI);
    }
  }

  // out rows c0..c0+n of layout g (the items of this group, any token layout; n <= chunk) = q̃ of q with the
  // sums M, z. nonzero_sums false: M is known to be zero (no chunk absorbed yet), so q̃ = q without the product.
  void project(const Group& g, const T* q, int64_t c0, int64_t n, const T* M, const T* z, bool nonzero_sums, T* out) {
    const int64_t d = d_;
    if (nonzero_sums)
      ops_.gemm(false, false, n, d, d, T(1), q + g.tok(0, c0) * d, d, g.stride * d, M, d, d * d, T(0), acc_, d,
                n * d, g_.items);
    ops_.each(g_.items * n * d, fn::QkFinalize<T>{acc_, q, z, out, g, c0, n, d});
  }
  // The keys of rows c0..c0+n of this group join the sums: M += Kᵀ K, z_to = z_from + Σ ||k||² (z_to may be
  // z_from).
  void absorb(const T* k, int64_t c0, int64_t n, T* M, const T* z_from, T* z_to) {
    add_gram(k, c0, n, M);
    ops_.each(g_.items, fn::AddKeySquares<T>{k, z_from, z_to, g_, c0, n, d_});
  }

  // out rows (the group's tokens of a [B,T,d] tensor) = q̃. Keeps z of every chunk (column c: the sum before
  // chunk c) for backward().
  // The normalizers of all chunks come first, in two launches (a launch per chunk would cost more than the
  // arithmetic at small chunks); the Gram sums M grow chunk by chunk as in absorb().
  void forward(const T* q, const T* k, T* out) {
    const int64_t nI = g_.items;
    ops_.each(nI * g_.len, fn::RowSquares<T>{k, rs_, g_, d_});
    ops_.each(nI * N_, fn::ChunkKeySquares<T>{rs_, cs_, g_, C_});
    ops_.each(nI, fn::ExclusivePrefix<T>{cs_, z_, N_, nI});
    ops_.zero(M_, nI * d_ * d_);
    for (int64_t c = 0; c < N_; ++c) {
      const int64_t c0 = c * C_, n = std::min(C_, g_.len - c0);
      project(g_, q, c0, n, M_, z(c), c > 0, out);
      if (c + 1 < N_) add_gram(k, c0, n, M_);
    }
  }

  // G: cotangent of q̃ (the group's rows); writes gq and gk rows (assigned). After forward() on q, k.
  //   dq_t = M_c G_t / z_c;  dz_c = -Σ_t dq_t·q_t / z_c;
  //   dk_τ = P k_τ with P = Σ over later chunks c of (Ĝ_cᵀ Q_c + Q_cᵀ Ĝ_c + 2 dz_c I), Ĝ = G / z.
  void backward(const T* q, const T* k, const T* G, T* gq, T* gk) {
    const int64_t nI = g_.items, d = d_;
    ops_.zero(M_, nI * d * d);
    for (int64_t c = 0; c < N_; ++c) {
      const int64_t c0 = c * C_, n = std::min(C_, g_.len - c0);
      project(g_, G, c0, n, M_, z(c), c > 0, gq);  // dq = M G / z: the projection of G
      if (c > 0) {
        ops_.batched_dot(rows(gq, c0), rows(q, c0), n * d, sx(), nI, dot_);
        ops_.each(nI, fn::QkDz<T>{dot_, z(c), dz_ + c * nI});
      }
      if (c + 1 < N_) add_gram(k, c0, n, M_);
    }
    T* P = M_;
    ops_.zero(P, nI * d * d);
    for (int64_t c = N_ - 1; c >= 0; --c) {
      const int64_t c0 = c * C_, n = std::min(C_, g_.len - c0);
      ops_.gemm(false, false, n, d, d, T(1), rows(k, c0), d, sx(), P, d, d * d, T(0), rows(gk, c0), d, sx(), nI);
      if (c > 0) {
        T* Gh = acc_;
        ops_.each(nI * n * d, fn::QkGhat<T>{G, z(c), Gh, g_, c0, n, d});
        ops_.gemm(true, false, d, d, n, T(1), Gh, d, n * d, rows(q, c0), d, sx(), T(1), P, d, d * d, nI);
        ops_.gemm(true, false, d, d, n, T(1), rows(q, c0), d, sx(), Gh, d, n * d, T(1), P, d, d * d, nI);
        ops_.each(nI * d, fn::AddDiag<T>{P, dz_ + c * nI, d});
      }
    }
  }

 private:
  Ops& ops_;
  Group g_;
  int64_t d_, C_, N_;
  T *M_ = nullptr, *z_ = nullptr, *cs_ = nullptr, *rs_ = nullptr, *acc_ = nullptr, *dz_ = nullptr, *dot_ = nullptr;
  T* z(int64_t c) const { return z_ + c * g_.items; }  // [N][items]: z before chunk c
  const T* rows(const T* x, int64_t c0) const { return x + g_.tok(0, c0) * d_; }
  T* rows(T* x, int64_t c0) const { return x + g_.tok(0, c0) * d_; }
  int64_t sx() const { return g_.stride * d_; }
  // M += Kᵀ K over rows c0..c0+n.
  void add_gram(const T* k, int64_t c0, int64_t n, T* M) {
    ops_.gemm(true, false, d_, d_, n, T(1), rows(k, c0), d_, sx(), rows(k, c0), d_, sx(), T(1), M, d_, d_ * d_,
              g_.items);
  }
};

// The memory over one group: the causal chunked program of every item, forward and backward.
template <class Ops>
class MemoryGroup {
 public:
  using T = typename Ops::value_type;

  MemoryGroup(Ops& ops, const MemoryShape& s, const Group& g, bool with_grad)
      : ops_(ops), s_(s), g_(g), with_grad_(with_grad) {
    const int64_t nI = g_.items, d = s_.d, dh = s_.dh;
    C_ = s_.chunk;
    N_ = num_chunks(g_.len, C_);
    P_ = s_.P();
    P2_ = 2 * P_;
    U_ = s_.continues ? N_ : N_ - 1;
    K_ = with_grad_ ? segment_length(s_, g_, sizeof(T)) : U_ + 1;
    const int64_t Cn = std::min(C_, g_.len);
    if (with_grad_) {
      const int64_t nck = num_chunks(U_ + 1, K_);  // states 0 .. U_
      ckW_ = ops_.alloc(nck * nI * P2_);
      if (s_.momentum) ckS_ = ops_.alloc(nck * nI * P2_);
      if (K_ > 1) {
        segW_ = ops_.alloc(K_ * nI * P2_);
        if (s_.momentum) segS_ = ops_.alloc(K_ * nI * P2_);
      }
    } else {  // ping-pong (one state when there is no update)
      const int64_t slots = std::min<int64_t>(U_ + 1, 2);
      segW_ = ops_.alloc(slots * nI * P2_);
      if (s_.momentum) segS_ = ops_.alloc(slots * nI * P2_);
    }
    if (s_.momentum) ebar_ = ops_.alloc(N_ * nI);
    if (s_.decay) abar_ = ops_.alloc(N_ * nI);
    nb_ = fn::mean_blocks(std::min(C_, g_.len));
    if (s_.momentum || s_.decay) part_ = ops_.alloc(2 * N_ * nI * nb_);
    Z_ = ops_.alloc(nI * Cn * dh);
    Sg_ = ops_.alloc(nI * Cn * dh);
    DS_ = ops_.alloc(nI * Cn * dh);
    A_ = ops_.alloc(nI * Cn * dh);
    DZ_ = ops_.alloc(nI * Cn * dh);
    E_ = ops_.alloc(nI * Cn * d);
    Bm_ = ops_.alloc(nI * Cn * d);
    D_ = ops_.alloc(nI * P2_);
    if (with_grad_) {
      dW_ = ops_.alloc(nI * P2_);
      if (s_.momentum) dS_ = ops_.alloc(nI * P2_);
      G_ = ops_.alloc(nI * P2_);
      dA_ = ops_.alloc(nI * Cn * dh);
      dSg_ = ops_.alloc(nI * Cn * dh);
      dDS_ = ops_.alloc(nI * Cn * dh);
      dZ_ = ops_.alloc(nI * Cn * dh);
      dB_ = ops_.alloc(nI * Cn * d);
      dE_ = ops_.alloc(nI * Cn * d);
      keepdot_ = ops_.alloc(nI);
      etadot_ = ops_.alloc(nI);
      rd1_ = ops_.alloc(nI * Cn);
      rd2_ = ops_.alloc(nI * Cn);
    }
  }

  int64_t segment() const { return K_; }

  // o rows of the group's tokens = f_W(query) per the causal program. in: k, v, w1, w2, gates.
  void forward(const T* query, const MemoryInputs<T>& in, T* o) {
    q_ = query;
    in_ = in;
    const int64_t nI = g_.items;
    TTT_CHECK(!(in.entry_W || in.entry_S || in.exit_W || in.exit_S) || (s_.period == 0 && !s_.qk),
              "titans: a passed chain state needs a memory without resets and without Q-K projection");
    TTT_CHECK(!(in.exit_W || in.exit_S) || s_.continues,
              "titans: the exit state needs MemoryShape::continues (the last chunk's update)");
    if (in.entry_W) ops_.copy(W(0), in.entry_W, nI * P2_);  // no period: items are the sequence-heads
    else ops_.each(nI * P2_, fn::InitState<T>{in.w1, in.w2, W(0), g_, P_});
    if (s_.momentum) {
      if (in.entry_S) ops_.copy(S(0), in.entry_S, nI * P2_);
      else ops_.zero(S(0), nI * P2_);
    }
    chunk_means(g_, N_, in.eta, in.alpha);
    for (int64_t c = 0; c < N_; ++c) {
      apply_fwd(c, o);
      if (c < U_) update_fwd(c);
    }
    if (in.exit_W) ops_.copy(in.exit_W, W(U_), nI * P2_);
    if (in.exit_S && s_.momentum) ops_.copy(in.exit_S, S(U_), nI * P2_);
    forward_done_ = true;
  }

  // ---- streaming (Memory::stream_*): the state is the caller's -----------------------------------------------
  // W [items][2P] = [W1⁰; W2⁰] of each item's sequence-head; S (momentum) = 0.
  void stream_init(T* W, T* S, const T* w1, const T* w2) {
    ops_.each(g_.items * P2_, fn::InitState<T>{w1, w2, W, g_, P_});
    if (S) ops_.zero(S, g_.items * P2_);
  }
  // The update of the chunk in rows 0..n of the group's [items, chunk, .] inputs, in place on (W, S): the gate
  // means, then the update that forward() runs between two chunks.
  void stream_update(T* W, T* S, const MemoryInputs<T>& chunk, int64_t n) {
    in_ = chunk;
    Group rows = g_;
    rows.len = n;  // one chunk of n tokens
    chunk_means(rows, 1, chunk.eta, chunk.alpha);
    update(W, S, W, S, 0, n, ebar_, abar_);
  }

  // o rows c0..c0+n of layout g (this group's items, any token layout) = [q +] silu(q W1ᵀ) W2ᵀ with the weights
  // Wc [items][2P].
  void apply_rows(const Group& g, const T* Wc, const T* q, int64_t c0, int64_t n, T* o) {
    const int64_t d = s_.d, dh = s_.dh, nI = g_.items, sq = g.stride * d;
    gemm(false, true, n, dh, d, T(1), q + g.tok(0, c0) * d, d, sq, Wc, d, P2_, T(0), Z_, dh, n * dh);
    // o rows := q [residual] or 0, beside Sg = silu(Z); then o += Sg W2ᵀ.
    ops_.each2(nI * n * dh, fn::Silu<T>{Z_, Sg_}, nI * n * d, fn::CopyRows<T>{o, s_.residual ? q : nullptr, g, c0, n, d});
    gemm(false, true, n, d, dh, T(1), Sg_, dh, n * dh, Wc + P_, dh, P2_, T(1), o + g.tok(0, c0) * d, d, sq);
  }

  // gquery: gradient of the query rows (assigned); g.k, g.v, g.theta, g.eta, g.alpha rows assigned;
  // g.w1 / g.w2 += this group's contribution.
  void backward(const T* go, T* gquery, const MemoryGrads<T>& g) {
    TTT_CHECK(with_grad_ && forward_done_, "titans: backward() needs a forward() with gradients on first");
    go_ = go;
    const int64_t nI = g_.items;
    // Tokens of each item's last chunk take part in no update (unless the chain continues: then update_bwd
    // assigns them below).
    const int64_t cl0 = (N_ - 1) * C_, nl = g_.len - cl0;
    ops_.each(nI * nl * s_.d, fn::CopyRows<T>{g.k, nullptr, g_, cl0, nl, s_.d});
    ops_.each(nI * nl * s_.d, fn::CopyRows<T>{g.v, nullptr, g_, cl0, nl, s_.d});
    ops_.each(nI * nl, fn::CopyRows<T>{g.theta, nullptr, g_, cl0, nl, 1});
    if (g.eta) ops_.each(nI * (s_.momentum ? nl : g_.len), fn::CopyRows<T>{g.eta, nullptr, g_, s_.momentum ? cl0 : 0,
                                                                           s_.momentum ? nl : g_.len, 1});
    if (g.alpha) ops_.each(nI * (s_.decay ? nl : g_.len), fn::CopyRows<T>{g.alpha, nullptr, g_, s_.decay ? cl0 : 0,
                                                                           s_.decay ? nl : g_.len, 1});
    TTT_CHECK(!(g.exit_dW || g.exit_dS || g.entry_dW || g.entry_dS) || (s_.period == 0 && !s_.qk),
              "titans: a passed chain state needs a memory without resets and without Q-K projection");
    TTT_CHECK(!(g.exit_dW || g.exit_dS) || s_.continues, "titans: an exit adjoint needs MemoryShape::continues");
    if (g.exit_dW) ops_.copy(dW_, g.exit_dW, nI * P2_);
    else ops_.zero(dW_, nI * P2_);
    if (s_.momentum) {
      if (g.exit_dS) ops_.copy(dS_, g.exit_dS, nI * P2_);
      else ops_.zero(dS_, nI * P2_);
    }
    // Segments of K chunks; chunk c's state W(c) is kept (c % K == 0) or recomputed from its segment's first.
    const int64_t nseg = num_chunks(N_, K_);
    for (int64_t j = nseg - 1; j >= 0; --j) {
      const int64_t lo = j * K_, hi = std::min(N_, lo + K_);
      // The last segment's states are still in place from forward(); recompute the others'.
      if (j < nseg - 1)
        for (int64_t c = lo; c + 1 < hi; ++c) update_fwd(c);
      for (int64_t c = hi - 1; c >= lo; --c) {
        if (c < U_) update_bwd(c, g);
        apply_bwd(c, gquery);
      }
    }
    if (g.entry_dW) ops_.copy(g.entry_dW, dW_, nI * P2_);
    if (g.entry_dS && s_.momentum) ops_.copy(g.entry_dS, dS_, nI * P2_);
    ops_.each((nI / g_.per_b) * P2_, fn::ReduceItems<T>{dW_, g.w1, g.w2, g_, P_});
  }

 private:
  Ops& ops_;
  MemoryShape s_;
  Group g_;
  bool with_grad_;
  bool forward_done_ = false;
  int64_t C_ = 0, N_ = 0, P_ = 0, P2_ = 0, K_ = 0;
  int64_t U_ = 0;  // chunk updates: N_ - 1, or N_ when the chain continues
  const T* q_ = nullptr;
  const T* go_ = nullptr;
  MemoryInputs<T> in_;
  T *ckW_ = nullptr, *ckS_ = nullptr, *segW_ = nullptr, *segS_ = nullptr, *ebar_ = nullptr, *abar_ = nullptr;
  T* part_ = nullptr;  // the gate means' block sums: [2][N][items][nb_] (η, then α)
  int64_t nb_ = 0;
  T *Z_ = nullptr, *Sg_ = nullptr, *DS_ = nullptr, *A_ = nullptr, *DZ_ = nullptr, *E_ = nullptr, *Bm_ = nullptr;
  T *D_ = nullptr, *rd1_ = nullptr, *rd2_ = nullptr;
  T *dW_ = nullptr, *dS_ = nullptr, *G_ = nullptr, *dA_ = nullptr, *dSg_ = nullptr, *dDS_ = nullptr, *dZ_ = nullptr;
  T *dB_ = nullptr, *dE_ = nullptr, *keepdot_ = nullptr, *etadot_ = nullptr;

  // The state of version c (before chunk c's update): checkpoint c/K when c % K == 0, else segment slot c % K;
  // without gradients two ping-pong slots.
  T* W(int64_t c) const {
    const int64_t n = g_.items * P2_;
    if (!with_grad_) return segW_ + (c % 2) * n;
    return c % K_ == 0 ? ckW_ + (c / K_) * n : segW_ + (c % K_) * n;
  }
  T* S(int64_t c) const {
    if (!s_.momentum) return nullptr;
    const int64_t n = g_.items * P2_;
    if (!with_grad_) return segS_ + (c % 2) * n;
    return c % K_ == 0 ? ckS_ + (c / K_) * n : segS_ + (c % K_) * n;
  }
  const T* rows(const T* x, int64_t c0) const { return x + g_.tok(0, c0) * s_.d; }
  T* rows(T* x, int64_t c0) const { return x + g_.tok(0, c0) * s_.d; }
  int64_t sx() const { return g_.stride * s_.d; }
  int64_t chunk_len(int64_t c) const { return std::min(C_, g_.len - c * C_); }

  // ebar_ / abar_ [N][items] = the means of eta (with momentum) / alpha (with decay) over the N chunks of layout g
  // (this group's items; N chunks of C_ tokens, the last one up to g.len): block sums, then their sums.
  void chunk_means(const Group& g, int64_t N, const T* eta, const T* alpha) {
    if (!s_.momentum && !s_.decay) return;
    const int64_t nI = g_.items, nb = fn::mean_blocks(std::min(C_, g.len)), half = N_ * nI * nb_;
    const int64_t ne = s_.momentum ? N * nI : 0, na = s_.decay ? N * nI : 0;
    ops_.each2(ne * nb, fn::ChunkBlockSums<T>{eta, part_, g, C_, nb}, na * nb,
               fn::ChunkBlockSums<T>{alpha, part_ + half, g, C_, nb});
    ops_.each2(ne, fn::ChunkMeanOfBlocks<T>{part_, ebar_, g, C_, nb}, na,
               fn::ChunkMeanOfBlocks<T>{part_ + half, abar_, g, C_, nb});
  }

  void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t lda, int64_t sA,
            const T* B, int64_t ldb, int64_t sB, T beta, T* C, int64_t ldc, int64_t sC) {
    ops_.gemm(ta, tb, m, n, k, alpha, A, lda, sA, B, ldb, sB, beta, C, ldc, sC, g_.items);
  }

  // The gate means of chunk c (per item), null without momentum / decay.
  const T* eta_bar(int64_t c) const { return ebar_ ? ebar_ + c * g_.items : nullptr; }
  const T* alpha_bar(int64_t c) const { return abar_ ? abar_ + c * g_.items : nullptr; }

  // o = [q +] silu(q W1ᵀ) W2ᵀ for chunk c with W_c.
  void apply_fwd(int64_t c, T* o) { apply_rows(g_, W(c), q_, c * C_, chunk_len(c), o); }

  // Token-side terms of the inner gradient at Wc of the chunk in rows c0..c0+n: Z = K W1ᵀ, Sg = silu(Z),
  // E = 2(K + Sg W2ᵀ - V), Bm = θ E, DS = E W2, A = θ DS silu'(Z).
  void update_terms(const T* Wc, int64_t c0, int64_t n) {
    const int64_t d = s_.d, dh = s_.dh, nI = g_.items;
    gemm(false, true, n, dh, d, T(1), rows(in_.k, c0), d, sx(), Wc, d, P2_, T(0), Z_, dh, n * dh);
    ops_.each(nI * n * dh, fn::Silu<T>{Z_, Sg_});
    gemm(false, true, n, d, dh, T(1), Sg_, dh, n * dh, Wc + P_, dh, P2_, T(0), E_, d, n * d);
    ops_.each(nI * n * d, fn::MseErr<T>{E_, Bm_, in_.k, in_.v, in_.theta, g_, c0, n, d, s_.residual});
    gemm(false, false, n, dh, d, T(1), E_, d, n * d, Wc + P_, dh, P2_, T(0), DS_, dh, n * dh);
    ops_.each(nI * n * dh, fn::InnerA<T>{DS_, Z_, in_.theta, A_, DZ_, g_, c0, n, dh});
  }

  // The chunk update (training and streaming): (Wc, Sc) -> (Wn, Sn) by the chunk in rows c0..c0+n with gate
  // means ebar / abar per item: D = -[Aᵀ K; Bmᵀ Sg], then momentum, decay, step. Wn / Sn may be Wc / Sc.
  void update(const T* Wc, const T* Sc, T* Wn, T* Sn, int64_t c0, int64_t n, const T* ebar, const T* abar) {
    const int64_t d = s_.d, dh = s_.dh, nI = g_.items;
    update_terms(Wc, c0, n);
    gemm(true, false, dh, d, n, T(-1), A_, dh, n * dh, rows(in_.k, c0), d, sx(), T(0), D_, d, P2_);
    gemm(true, false, d, dh, n, T(-1), Bm_, d, n * d, Sg_, dh, n * dh, T(0), D_ + P_, dh, P2_);
    ops_.each(nI * P2_, fn::Step<T>{Wc, Sc, D_, ebar, abar, Wn, Sn, P2_});
  }
  // Version c -> c + 1.
  void update_fwd(int64_t c) { update(W(c), S(c), W(c + 1), S(c + 1), c * C_, chunk_len(c), eta_bar(c), alpha_bar(c)); }

  // dW_ / dS_ hold dL/dW_{c+1}, dL/dS_{c+1} on entry and (the update's share of) dL/dW_c, dL/dS_c on exit.
  void update_bwd(int64_t c, const MemoryGrads<T>& g) {
    const int64_t d = s_.d, dh = s_.dh, c0 = c * C_, n = chunk_len(c), nI = g_.items;
    const T* Wc = W(c);
    update_terms(Wc, c0, n);
    ops_.each(nI * P2_, fn::StepBwdPre<T>{dW_, dS_, G_});
    if (s_.decay) ops_.batched_dot(dW_, Wc, P2_, P2_, nI, keepdot_);
    if (s_.momentum) ops_.batched_dot(G_, S(c), P2_, P2_, nI, etadot_);
    ops_.each2(nI * P2_, fn::StepBwdPost<T>{dW_, dS_, G_, eta_bar(c), alpha_bar(c), P2_},
               s_.momentum || s_.decay ? nI * n : 0,
               fn::FillGates<T>{s_.momentum ? g.eta : nullptr, s_.decay ? g.alpha : nullptr, etadot_, keepdot_, g_, c0,
                                n});
    // The inner gradient D1 = -Aᵀ K, D2 = -Bmᵀ Sg with cotangents G1 = G_, G2 = G_ + P.
    const T* K = rows(in_.k, c0);
    const T* G1 = G_;
    const T* G2 = G_ + P_;
    gemm(false, true, n, dh, d, T(-1), K, d, sx(), G1, d, P2_, T(0), dA_, dh, n * dh);        // dA = -K G1ᵀ
    gemm(false, true, n, d, dh, T(-1), Sg_, dh, n * dh, G2, dh, P2_, T(0), dB_, d, n * d);    // dBm = -Sg G2ᵀ
    gemm(false, false, n, dh, d, T(-1), Bm_, d, n * d, G2, dh, P2_, T(0), dSg_, dh, n * dh);  // dSg = -Bm G2
    ops_.batched_dot(DZ_, dA_, dh, dh, nI * n, rd1_);  // dθ: row dots
    ops_.batched_dot(E_, dB_, d, d, nI * n, rd2_);
    ops_.each2(nI * n * dh, fn::InnerBwdH<T>{Z_, DS_, dA_, in_.theta, dDS_, dZ_, g_, c0, n, dh}, nI * n * d,
               fn::Both<fn::InnerBwdD<T>, fn::FillTheta<T>>{{dB_, in_.theta, dE_, g_, c0, n, d},
                                                            {rd1_, rd2_, g.theta, g_, c0, n}, nI * n});
    gemm(false, true, n, d, dh, T(1), dDS_, dh, n * dh, Wc + P_, dh, P2_, T(1), dE_, d, n * d);    // dE += dDS W2ᵀ
    gemm(true, false, d, dh, n, T(1), E_, d, n * d, dDS_, dh, n * dh, T(1), dW_ + P_, dh, P2_);    // dW2 += Eᵀ dDS
    ops_.each(nI * n * d, fn::InnerBwd2<T>{dE_, g.k, g.v, g_, c0, n, d, s_.residual});             // dY; dv; dk
    gemm(false, false, n, dh, d, T(1), dE_, d, n * d, Wc + P_, dh, P2_, T(1), dSg_, dh, n * dh);   // dSg += dY W2
    gemm(true, false, d, dh, n, T(1), dE_, d, n * d, Sg_, dh, n * dh, T(1), dW_ + P_, dh, P2_);    // dW2 += dYᵀ Sg
    ops_.each(nI * n * dh, fn::DsiluMul<T>{dSg_, Z_, dZ_, true});                                  // dZ += dSg silu'
    gemm(false, false, n, d, dh, T(-1), A_, dh, n * dh, G1, d, P2_, T(1), rows(g.k, c0), d, sx());  // dK -= A G1
    gemm(false, false, n, d, dh, T(1), dZ_, dh, n * dh, Wc, d, P2_, T(1), rows(g.k, c0), d, sx());  // dK += dZ W1
    gemm(true, false, dh, d, n, T(1), dZ_, dh, n * dh, K, d, sx(), T(1), dW_, d, P2_);              // dW1 += dZᵀ K
  }

  // Apply of chunk c with W_c: dW_ += its share, gquery rows assigned.
  void apply_bwd(int64_t c, T* gquery) {
    const int64_t d = s_.d, dh = s_.dh, c0 = c * C_, n = chunk_len(c), nI = g_.items;
    const T* Wc = W(c);
    const T* Q = rows(q_, c0);
    const T* dO = rows(go_, c0);
    gemm(false, true, n, dh, d, T(1), Q, d, sx(), Wc, d, P2_, T(0), Z_, dh, n * dh);
    ops_.each(nI * n * dh, fn::Silu<T>{Z_, Sg_});
    gemm(false, false, n, dh, d, T(1), dO, d, sx(), Wc + P_, dh, P2_, T(0), dSg_, dh, n * dh);   // dSg = dO W2
    gemm(true, false, d, dh, n, T(1), dO, d, sx(), Sg_, dh, n * dh, T(1), dW_ + P_, dh, P2_);    // dW2 += dOᵀ Sg
    ops_.each2(nI * n * dh, fn::DsiluMul<T>{dSg_, Z_, dZ_, false},                               // dZ = dSg silu'
               nI * n * d, fn::CopyRows<T>{gquery, s_.residual ? go_ : nullptr, g_, c0, n, d});  // dQ = dO [residual]
    gemm(true, false, dh, d, n, T(1), dZ_, dh, n * dh, Q, d, sx(), T(1), dW_, d, P2_);           // dW1 += dZᵀ Q
    gemm(false, false, n, d, dh, T(1), dZ_, dh, n * dh, Wc, d, P2_, T(1), rows(gquery, c0), d, sx());  // dQ += dZ W1
  }
};

// One memory over all its groups, with the optional Q-K projection of its queries.
template <class Ops>
class Memory {
 public:
  using T = typename Ops::value_type;
  Memory(Ops& ops, const MemoryShape& s, bool with_grad) : ops_(ops), s_(s), with_grad_(with_grad) {
    s_.validate();
    groups_ = make_groups(s_.B, s_.T, s_.period);
    for (const Group& g : groups_) {
      mem_.push_back(std::make_unique<MemoryGroup<Ops>>(ops_, s_, g, with_grad_));
      if (s_.qk) qk_.push_back(std::make_unique<QkGroup<Ops>>(ops_, g, s_.d, s_.chunk, with_grad_));
    }
    const int64_t BTd = s_.B * s_.T * s_.d;
    if (s_.qk) {
      qt_ = ops_.alloc(BTd);
      if (with_grad_) {
        dqt_ = ops_.alloc(BTd);
        dk_ = ops_.alloc(BTd);
      }
    }
  }
  const std::vector<Group>& groups() const { return groups_; }
  int64_t segment(size_t group) const { return mem_[group]->segment(); }

  void forward(const MemoryInputs<T>& in, T* o) {
    in_ = in;
    const T* query = in.q;
    if (s_.qk) {
      for (auto& x : qk_) x->forward(in.q, in.k, qt_);
      query = qt_;
    }
    for (auto& m : mem_) m->forward(query, in, o);
  }
  // Streaming (see StreamState). stream_init: W := W⁰ (w1 [B,dh,d], w2 [B,d,dh]), S := 0, the Q-K sums := 0;
  // called again it is a reset (a shard start).
  void stream_init(const StreamState<T>& st, const T* w1, const T* w2) {
    check_stream(st);
    mem_[0]->stream_init(st.W, st.S, w1, w2);
    if (s_.qk) {
      ops_.zero(st.M, s_.B * s_.d * s_.d);
      ops_.zero(st.z, s_.B);
    }
  }
  // o = f_W(q̃) of n tokens (q, o: [B, n, d], n <= chunk) with the current weights, q̃ the Q-K projection of q
  // with qk, else q.
  void stream_apply(const StreamState<T>& st, const T* q, int64_t n, T* o) {
    check_stream(st);
    TTT_CHECK(n > 0 && n <= s_.chunk, "titans: stream_apply of " << n << " tokens (chunk " << s_.chunk << ")");
    const Group tokens{s_.B, 0, 1, 0, n, n};  // [B, n, d]
    const T* query = q;
    if (s_.qk) {
      qk_[0]->project(tokens, q, 0, n, st.M, st.z, /*nonzero_sums=*/true, qt_);
      query = qt_;
    }
    mem_[0]->apply_rows(tokens, st.W, query, 0, n, o);
  }
  // The finished chunk in rows 0..n of chunk.k, v, theta, eta, alpha ([B, chunk, .]) updates the state as
  // forward() does between two chunks; its keys join the Q-K sums.
  void stream_update(const StreamState<T>& st, const MemoryInputs<T>& chunk, int64_t n) {
    check_stream(st);
    TTT_CHECK(n > 0 && n <= s_.chunk, "titans: stream_update of " << n << " tokens (chunk " << s_.chunk << ")");
    mem_[0]->stream_update(st.W, st.S, chunk, n);
    if (s_.qk) qk_[0]->absorb(chunk.k, 0, n, st.M, st.z, st.z);
  }

  void backward(const T* go, const MemoryGrads<T>& g) {
    const int64_t BP = s_.B * s_.P();
    ops_.zero(g.w1, BP);
    ops_.zero(g.w2, BP);
    for (auto& m : mem_) m->backward(go, s_.qk ? dqt_ : g.q, g);
    if (s_.qk) {
      for (auto& x : qk_) x->backward(in_.q, in_.k, dqt_, g.q, dk_);
      const int64_t BTd = s_.B * s_.T * s_.d;
      ops_.each(BTd, fn::Add<T>{g.k, dk_});
    }
  }

 private:
  Ops& ops_;
  MemoryShape s_;
  bool with_grad_;
  std::vector<Group> groups_;
  std::vector<std::unique_ptr<MemoryGroup<Ops>>> mem_;
  std::vector<std::unique_ptr<QkGroup<Ops>>> qk_;
  T *qt_ = nullptr, *dqt_ = nullptr, *dk_ = nullptr;
  MemoryInputs<T> in_;

  void check_stream(const StreamState<T>& st) const {
    TTT_CHECK(!with_grad_ && s_.period == 0 && s_.T == s_.chunk,
              "titans: streaming needs a memory built with stream_shape() and no gradients");
    TTT_CHECK(st.W && (st.S || !s_.momentum) && ((st.M && st.z) || !s_.qk),
              "titans: stream state without " << (!st.W ? "weights" : !st.S && s_.momentum ? "momentum" : "Q-K sums"));
  }
};

// ---- the TNT branch (docs/ALGORITHMS.md §6) --------------------------------------------------------------
// o = M_G(q) + Σ_i M_L⁽ⁱ⁾(q̃⁽ⁱ⁾): the global memory (chunk global_chunk, never reset) when use_global, then one
// local memory per local chunk size (reset every `shard` tokens, Q-K projected queries when qk_proj); memory m's
// place is layout().memory(m) (engine::BranchLayout, the mapping the tape branch and the model spec use too).
struct TntShape {
  int64_t B = 0, T = 0, d = 0;
  bool use_global = true;
  int64_t global_chunk = 2048;
  std::vector<int64_t> local_chunks;
  int64_t shard = 2048;
  bool qk_proj = true;
  std::vector<int64_t> dh;  // hidden width of every memory (global first)
  double state_budget_bytes = double(int64_t(2) << 30);
  double persistent_state_budget_bytes = double(int64_t(4) << 30);  // MemoryShape's, per memory
  int64_t segment = 0;

  engine::BranchLayout layout() const { return {use_global, global_chunk, local_chunks, shard, qk_proj}; }
  void set_layout(const engine::BranchLayout& l) {
    use_global = l.use_global;
    global_chunk = l.global_chunk;
    local_chunks = l.local_chunks;
    shard = l.shard;
    qk_proj = l.qk_proj;
  }
  int64_t num_memories() const { return layout().num_memories(); }
  MemoryShape memory(size_t m) const {
    const engine::BranchMemory place = layout().memory(m);
    MemoryShape s;
    s.B = B;
    s.T = T;
    s.d = d;
    s.dh = dh.at(m);
    s.chunk = place.chunk;
    s.period = place.shard;
    s.qk = place.qk_proj;
    s.momentum = s.decay = s.residual = true;
    s.state_budget_bytes = state_budget_bytes;
    s.persistent_state_budget_bytes = persistent_state_budget_bytes;
    s.segment = segment;
    return s;
  }
  void validate() const {
    TTT_CHECK(num_memories() > 0, "tnt: no memory (the global memory is off and no local chunk sizes)");
    TTT_CHECK(int64_t(dh.size()) == num_memories(),
              "tnt: " << dh.size() << " hidden widths for " << num_memories() << " memories");
    for (size_t m = 0; m < size_t(num_memories()); ++m) memory(m).validate();
  }
};

template <class T>
struct TntMemoryParams {
  const T *w1 = nullptr, *w2 = nullptr, *theta = nullptr, *eta = nullptr, *alpha = nullptr;
};
template <class T>
struct TntMemoryGrads {
  T *w1 = nullptr, *w2 = nullptr, *theta = nullptr, *eta = nullptr, *alpha = nullptr;
};
template <class T>
struct TntInputs {
  const T *q = nullptr, *k = nullptr, *v = nullptr;
  std::vector<TntMemoryParams<T>> mems;
};
template <class T>
struct TntGrads {
  T *q = nullptr, *k = nullptr, *v = nullptr;
  std::vector<TntMemoryGrads<T>> mems;
};
template <class T>
MemoryInputs<T> memory_inputs(const TntInputs<T>& in, size_t m) {
  const TntMemoryParams<T>& p = in.mems.at(m);
  return {in.q, in.k, in.v, p.w1, p.w2, p.theta, p.eta, p.alpha};
}

// The CPU twins on host arrays (T = float or double). Forward only when grad_o is null.
template <class T>
void memory_cpu(const MemoryShape& s, const MemoryInputs<T>& in, T* o, const T* grad_o = nullptr,
                const MemoryGrads<T>* g = nullptr);
template <class T>
void tnt_cpu(const TntShape& s, const TntInputs<T>& in, T* o, const T* grad_o = nullptr, const TntGrads<T>* g = nullptr);
// The causal forward through the streaming API (Memory::stream_*), token by token as generation runs it, with
// a reset (stream_init) at every multiple of the period: o must equal memory_cpu's / tnt_cpu's o. The reference
// usage of the streaming API (and its test).
template <class T>
void stream_memory_cpu(const MemoryShape& s, const MemoryInputs<T>& in, T* o);
template <class T>
void stream_tnt_cpu(const TntShape& s, const TntInputs<T>& in, T* o);

// The TntBackend contract (ttt/tnt.h) on named tensors, run by a host-array runner: inputs validated as the
// CPU backend validates them, outputs o and, with grad_o, grad_<name> of every input (grad_grad_o = o).
class TntHostRunner {
 public:
  virtual ~TntHostRunner() = default;
  virtual void run(const TntShape& s, const TntInputs<double>& in, double* o, const double* go,
                   const TntGrads<double>* g) = 0;
  virtual void run(const TntShape& s, const TntInputs<float>& in, float* o, const float* go,
                   const TntGrads<float>* g) = 0;
};
TntHostRunner& tnt_twin_runner();  // tnt_cpu
SafeTensors tnt_op(const SafeTensors& inputs, const engine::TntOptions& opt, TntHostRunner& runner);

// Elements a Memory allocates for a shape (states, chunk work buffers, Q-K buffers; not the inputs and outputs), as
// its constructors request them from the backend (each request at least one element); with_grad as the Memory.
// The CUDA runner's device bytes are this times the element size plus its own fixed buffers
// (backend/titans_persistent_plan.h: titans_runner_bytes).
int64_t memory_workspace_elements(const MemoryShape& s, bool with_grad);

// FLOPs of the algorithm's matrix products (multiply-add = 2), forward and forward+backward, for a memory
// (without the segment recomputation) and the whole branch: the "FLOP floor" of the benches.
struct FlopCount {
  double fwd = 0, fwdbwd = 0;
};
FlopCount memory_flops(const MemoryShape& s);
FlopCount tnt_flops(const TntShape& s);

}  // namespace ttt::titans
