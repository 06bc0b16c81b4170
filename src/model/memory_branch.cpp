#include "model/memory_branch.h"

#include "autograd/ops.h"
#include "nn/layers.h"
#include "ttt/memory_op.h"
#include "ttt/tnt.h"

namespace ttt::model {

using ag::Mat;
using ag::Tape;
using ag::Var;

template <class T>
MemoryInputVars prepare_memory_inputs(Tape<T>& t, const ModelConfig& cfg, const LayerParams& L, Var x, Var q, Var k,
                                      Var v, const std::vector<int64_t>& positions) {
  const int64_t H = cfg.n_mem_heads;
  MemoryInputVars in;
  Var qh = ag::add_row(t, ag::col_scale(t, q, L.get("ttt.q_scale")), L.get("ttt.q_offset"));
  Var kh = ag::add_row(t, ag::col_scale(t, k, L.get("ttt.k_scale")), L.get("ttt.k_offset"));
  qh = nn::l2norm_heads(t, ag::silu(t, qh), H);
  kh = nn::l2norm_heads(t, ag::silu(t, kh), H);
  if (cfg.ttt_rope) {
    qh = nn::rope(t, qh, cfg.mem_rope_heads(), positions, cfg.rope_theta);
    kh = nn::rope(t, kh, cfg.mem_rope_heads(), positions, cfg.rope_theta);
  }
  in.q = qh;
  in.k = kh;
  in.v = cfg.v_silu ? ag::silu(t, v) : v;
  // Rates and gates by the branch's rules (LaCT: softplus(x W + b + softplus^-1(lr_init)); Titans [choice]:
  // theta = base * sigmoid(x W + b); eta, alpha = sigmoid(x W + b)).
  const BranchSpec branch = branch_spec(cfg);
  in.rates = ag::gate(t, nn::linear_bias(t, x, L.get("ttt.lr.weight"), L.get("ttt.lr.bias")), branch.rate);
  if (branch.momentum)
    in.momentum =
        ag::gate(t, nn::linear_bias(t, x, L.get("ttt.momentum.weight"), L.get("ttt.momentum.bias")), branch.gate);
  if (branch.decay)
    in.decay = ag::gate(t, nn::linear_bias(t, x, L.get("ttt.decay.weight"), L.get("ttt.decay.bias")), branch.gate);
  return in;
}

template <class T>
std::vector<Var> memory_weights(Tape<T>& t, const ModelConfig& cfg, const LayerParams& L, const MemorySpec& spec) {
  std::vector<Var> out;
  const int64_t H = cfg.n_mem_heads, r = cfg.low_rank_rank;
  for (const MemoryWeightSpec& w : spec.weights) {
    if (!w.low_rank) {
      out.push_back(L.get(w.name));
      continue;
    }
    // W = A B + 0.5 I per head (A [rows,r], B [r,cols]; I the [rows,cols] rectangular identity).
    const int64_t rows = w.rows, cols = w.cols;
    Var A = L.get(w.name + ".a"), B = L.get(w.name + ".b");
    Mat<T> eye(rows, cols);
    for (int64_t i = 0; i < std::min(rows, cols); ++i) eye(i, i) = T(0.5);
    Var half_eye = t.constant(eye);
    std::vector<Var> heads;
    for (int64_t h = 0; h < H; ++h)
      heads.push_back(ag::add(t, ag::matmul(t, ag::slice_rows(t, A, h * rows, (h + 1) * rows),
                                            ag::slice_rows(t, B, h * r, (h + 1) * r)),
                              half_eye));
    out.push_back(H == 1 ? heads[0] : ag::concat_rows(t, heads));
  }
  return out;
}

template <class T>
Var finish_memory_output(Tape<T>& t, const ModelConfig& cfg, const LayerParams& L, Var x, Var o) {
  const int64_t H = cfg.n_mem_heads, d = cfg.head_dim_mem();
  Var weight = L.get("ttt.o_norm.weight");
  if (cfg.ttt_norm_shared) {  // one [d] weight for every head: tiled to [D] (its gradient sums over the heads)
    Mat<T> tile(d, H * d);
    for (int64_t h = 0; h < H; ++h)
      for (int64_t j = 0; j < d; ++j) tile(j, h * d + j) = T(1);
    weight = ag::matmul(t, weight, t.constant(tile));
  }
  Var normed = nn::rms_norm_heads(t, o, weight, H, cfg.mem_norm_eps());
  Var gate = ag::silu(t, nn::linear_bias(t, x, L.get("ttt.scale.weight"), L.get("ttt.scale.bias")));  // [n,H]
  Mat<T> expand(H, H * d);  // broadcast each head's gate over its d channels
  for (int64_t h = 0; h < H; ++h)
    for (int64_t j = 0; j < d; ++j) expand(h, h * d + j) = T(1);
  return ag::mul(t, normed, ag::matmul(t, gate, t.constant(expand)));
}

template <class T>
Var record_memory_branch(Tape<T>& t, const ModelConfig& cfg, const LayerParams& L, Var x, Var q, Var k, Var v,
                         const std::vector<int64_t>& positions, int64_t S, const ContextSpan* cp) {
  MemoryInputVars in = prepare_memory_inputs(t, cfg, L, x, q, k, v, positions);
  const int64_t H = cfg.n_mem_heads;
  // Columns [c0, c0 + n) of a gate matrix; the matrix itself when that is all of it (one memory).
  auto columns = [&](Var m, int64_t c0, int64_t n) {
    if (!m.valid() || (c0 == 0 && n == t.val(m).cols)) return m;
    return ag::slice_cols(t, m, c0, c0 + n);
  };
  const std::vector<MemorySpec> specs = memory_specs(cfg);
  std::vector<engine::TntMemoryVars> mems;
  for (const MemorySpec& spec : specs) {
    engine::TntMemoryVars mv;
    mv.cfg = spec.config;
    mv.w0 = memory_weights(t, cfg, L, spec);
    mv.rates = columns(in.rates, spec.rate_col0, spec.config.rate_columns * H);
    mv.momentum_gate = columns(in.momentum, spec.gate_col0, H);
    mv.decay_gate = columns(in.decay, spec.gate_col0, H);
    mems.push_back(mv);
  }
  const std::vector<engine::BranchMemory> places(specs.begin(), specs.end());
  if (!cp || cp->ranks == 1)
    return finish_memory_output(t, cfg, L, x, engine::branch_sum(t, S, H, in.q, in.k, in.v, places, mems));
  // Context parallel: memory by memory, in the branch's order (the same sum as branch_sum's).
  Var o, prefix_q, prefix_k, prefix_v;
  auto gathered = [&](Var m) { return m.valid() ? gather_prefix(t, m, S, *cp) : m; };
  for (size_t m = 0; m < mems.size(); ++m) {
    const bool on_span = places[m].shard > 0 && cp->span % places[m].shard == 0;
    Var om;
    if (on_span) {
      om = engine::branch_sum(t, S, H, in.q, in.k, in.v, {places[m]}, {mems[m]});
    } else if (cp->global == CpGlobal::State) {
      // The chain over this span from the state the previous rank hands over (state_link).
      TTT_CHECK(!places[m].qk_proj, "--cp-global state: a chained memory read with Q-K projected queries would need "
                                    "the projection's sums passed too; use --cp-global gather");
      const engine::StateLink<T> link = state_link<T>(*cp);
      const engine::TntMemoryVars& mv = mems[m];
      om = engine::memory_op(t, mv.cfg, engine::chain_span_program(cp->span, places[m].chunk, link.has_exit), S, H, in.q, in.k, in.v,
                             mv.rates, mv.momentum_gate, mv.decay_gate, mv.w0, {}, &link);
    } else {
      if (!prefix_q.valid()) {  // shared by every chained memory
        prefix_q = gathered(in.q);
        prefix_k = gathered(in.k);
        prefix_v = gathered(in.v);
      }
      engine::TntMemoryVars mv = mems[m];
      mv.rates = gathered(mv.rates);
      mv.momentum_gate = gathered(mv.momentum_gate);
      mv.decay_gate = gathered(mv.decay_gate);
      om = own_rows(t, engine::branch_sum(t, S, H, prefix_q, prefix_k, prefix_v, {places[m]}, {mv}), S, *cp);
    }
    o = o.valid() ? ag::add(t, o, om) : om;
  }
  return finish_memory_output(t, cfg, L, x, o);
}

#define TTT_INSTANTIATE(T)                                                                                        \
  template MemoryInputVars prepare_memory_inputs<T>(Tape<T>&, const ModelConfig&, const LayerParams&, Var, Var,  \
                                                    Var, Var, const std::vector<int64_t>&);                      \
  template std::vector<Var> memory_weights<T>(Tape<T>&, const ModelConfig&, const LayerParams&,                 \
                                              const MemorySpec&);                                                \
  template Var finish_memory_output<T>(Tape<T>&, const ModelConfig&, const LayerParams&, Var, Var);              \
  template Var record_memory_branch<T>(Tape<T>&, const ModelConfig&, const LayerParams&, Var, Var, Var, Var,     \
                                       const std::vector<int64_t>&, int64_t, const ContextSpan*);
TTT_INSTANTIATE(float)
TTT_INSTANTIATE(double)
#undef TTT_INSTANTIATE

}  // namespace ttt::model
