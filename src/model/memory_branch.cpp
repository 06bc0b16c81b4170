#include "model/memory_branch.h"

#include <cmath>

#include "autograd/ops.h"
#include "nn/layers.h"
#include "ttt/memory_op.h"
#include "ttt/tnt.h"

namespace ttt::model {

using ag::Mat;
using ag::Tape;
using ag::Var;

engine::MemoryConfig memory_config(const ModelConfig& cfg, int64_t m) {
  engine::MemoryConfig mc;
  mc.d = cfg.head_dim_mem();
  mc.dh = cfg.mem_hidden_dim();
  mc.momentum = cfg.momentum;
  mc.muon = cfg.muon;
  if (cfg.arch == "lact") {
    mc.family = engine::Family::SwiGLU;
    mc.loss = engine::Loss::Dot;
    mc.weight_norm = engine::parse_weight_norm(cfg.weight_norm);
    mc.rate_columns = 3;
  } else {
    mc.family = engine::parse_family(cfg.memory);
    mc.loss = engine::Loss::MSE;
    mc.decay = cfg.decay;
    mc.mlp_residual = cfg.mem_residual;
    mc.rate_columns = 1;
  }
  (void)m;
  return mc;
}

std::vector<std::string> memory_weight_names(const ModelConfig& cfg, int64_t m) {
  std::string prefix = "ttt.";
  if (cfg.arch == "tnt") {
    const int64_t local = cfg.use_global ? m - 1 : m;
    prefix = local < 0 ? "ttt.global." : "ttt.local." + std::to_string(local) + ".";
  }
  std::vector<std::string> out;
  for (auto& n : memory_config(cfg, m).weight_names()) out.push_back(prefix + n);
  return out;
}

engine::Program memory_program(const ModelConfig& cfg, int64_t m, int64_t n) {
  if (cfg.arch != "tnt") return engine::causal_program(n, cfg.chunk);
  const int64_t local = cfg.use_global ? m - 1 : m;
  if (local < 0) return engine::causal_program(n, cfg.global_chunk);
  return engine::causal_program(n, cfg.local_chunks[size_t(local)], cfg.shard);
}

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
    qh = nn::rope(t, qh, H, positions, cfg.rope_theta);
    kh = nn::rope(t, kh, H, positions, cfg.rope_theta);
  }
  in.q = qh;
  in.k = kh;
  in.v = cfg.v_silu ? ag::silu(t, v) : v;
  Var z = nn::linear_bias(t, x, L.get("ttt.lr.weight"), L.get("ttt.lr.bias"));
  if (cfg.arch == "lact") {
    // LaCT rates: softplus(x W + b + softplus^-1(lr_init)).
    const double shift = std::log(std::expm1(cfg.lr_init));
    in.rates = ag::softplus(t, ag::add_const(t, z, shift));
  } else {
    // Titans rates: theta = base * sigmoid(x W + b)   [choice]
    in.rates = ag::scale(t, ag::sigmoid(t, z), cfg.titans_base_lr);
  }
  if (cfg.momentum)
    in.momentum = ag::sigmoid(t, nn::linear_bias(t, x, L.get("ttt.momentum.weight"), L.get("ttt.momentum.bias")));
  if (cfg.arch != "lact" && cfg.decay)
    in.decay = ag::sigmoid(t, nn::linear_bias(t, x, L.get("ttt.decay.weight"), L.get("ttt.decay.bias")));
  return in;
}

template <class T>
std::vector<Var> memory_weights(Tape<T>& t, const ModelConfig& cfg, const LayerParams& L, int64_t m) {
  std::vector<Var> out;
  const int64_t H = cfg.n_mem_heads, d = cfg.head_dim_mem(), dh = cfg.mem_hidden_dim(), r = cfg.low_rank_rank;
  for (auto& name : memory_weight_names(cfg, m)) {
    const bool low_rank = cfg.arch == "lact" && cfg.low_rank_init && (name == "ttt.w0" || name == "ttt.w2");
    if (!low_rank) {
      out.push_back(L.get(name));
      continue;
    }
    // W = A B + 0.5 I per head (A [dh,r], B [r,d]; I the [dh,d] rectangular identity).
    Var A = L.get(name + ".a"), B = L.get(name + ".b");
    Mat<T> eye(dh, d);
    for (int64_t i = 0; i < std::min(dh, d); ++i) eye(i, i) = T(0.5);
    Var half_eye = t.constant(eye);
    std::vector<Var> heads;
    for (int64_t h = 0; h < H; ++h)
      heads.push_back(ag::add(t, ag::matmul(t, ag::slice_rows(t, A, h * dh, (h + 1) * dh),
                                            ag::slice_rows(t, B, h * r, (h + 1) * r)),
                              half_eye));
    out.push_back(H == 1 ? heads[0] : ag::concat_rows(t, heads));
  }
  return out;
}

template <class T>
Var finish_memory_output(Tape<T>& t, const ModelConfig& cfg, const LayerParams& L, Var x, Var o) {
  const int64_t H = cfg.n_mem_heads, d = cfg.head_dim_mem();
  Var normed = nn::rms_norm_heads(t, o, L.get("ttt.o_norm.weight"), H, cfg.norm_eps);
  Var gate = ag::silu(t, nn::linear_bias(t, x, L.get("ttt.scale.weight"), L.get("ttt.scale.bias")));  // [n,H]
  Mat<T> expand(H, H * d);  // broadcast each head's gate over its d channels
  for (int64_t h = 0; h < H; ++h)
    for (int64_t j = 0; j < d; ++j) expand(h, h * d + j) = T(1);
  return ag::mul(t, normed, ag::matmul(t, gate, t.constant(expand)));
}

engine::TntOptions tnt_options(const ModelConfig& cfg) {
  engine::TntOptions o;
  o.use_global = cfg.use_global;
  o.global_chunk = cfg.global_chunk;
  o.local_chunks = cfg.local_chunks;
  o.shard = cfg.shard;
  o.qk_proj = cfg.qk_proj;
  return o;
}

template <class T>
Var record_memory_branch(Tape<T>& t, const ModelConfig& cfg, const LayerParams& L, Var x, Var q, Var k, Var v,
                         const std::vector<int64_t>& positions, int64_t S, int64_t N) {
  MemoryInputVars in = prepare_memory_inputs(t, cfg, L, x, q, k, v, positions);
  const int64_t H = cfg.n_mem_heads;
  Var o;
  if (cfg.arch == "tnt") {
    // Gates of memory m are columns [m*H, (m+1)*H) of the gate projections.
    std::vector<engine::TntMemoryVars> mems;
    for (int64_t m = 0; m < cfg.n_memories(); ++m) {
      engine::TntMemoryVars mv;
      mv.cfg = memory_config(cfg, m);
      mv.w0 = memory_weights(t, cfg, L, m);
      mv.rates = ag::slice_cols(t, in.rates, m * H, (m + 1) * H);
      if (in.momentum.valid()) mv.momentum_gate = ag::slice_cols(t, in.momentum, m * H, (m + 1) * H);
      if (in.decay.valid()) mv.decay_gate = ag::slice_cols(t, in.decay, m * H, (m + 1) * H);
      mems.push_back(mv);
    }
    o = engine::tnt_branch(t, tnt_options(cfg), S, H, in.q, in.k, in.v, mems);
  } else {
    o = engine::memory_op(t, memory_config(cfg, 0), memory_program(cfg, 0, N), S, H, in.q, in.k, in.v, in.rates,
                          in.momentum, in.decay, memory_weights(t, cfg, L, 0));
  }
  return finish_memory_output(t, cfg, L, x, o);
}

#define TTT_INSTANTIATE(T)                                                                                        \
  template MemoryInputVars prepare_memory_inputs<T>(Tape<T>&, const ModelConfig&, const LayerParams&, Var, Var,  \
                                                    Var, Var, const std::vector<int64_t>&);                      \
  template std::vector<Var> memory_weights<T>(Tape<T>&, const ModelConfig&, const LayerParams&, int64_t);        \
  template Var finish_memory_output<T>(Tape<T>&, const ModelConfig&, const LayerParams&, Var, Var);              \
  template Var record_memory_branch<T>(Tape<T>&, const ModelConfig&, const LayerParams&, Var, Var, Var, Var,     \
                                       const std::vector<int64_t>&, int64_t, int64_t);
TTT_INSTANTIATE(float)
TTT_INSTANTIATE(double)
#undef TTT_INSTANTIATE

}  // namespace ttt::model
