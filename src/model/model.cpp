#include "model/model.h"

#include <cmath>

#include "autograd/ops.h"
#include "core/blas.h"
#include "core/dtype.h"
#include "core/rng.h"
#include "model/memory_branch.h"
#include "nn/layers.h"

namespace ttt::model {

using ag::Mat;
using ag::Tape;
using ag::Var;

template <class T>
const Mat<T>& Params<T>::at(const std::string& name) const {
  auto it = index.find(name);
  TTT_CHECK(it != index.end(), "model has no parameter '" << name << "'");
  return values[it->second];
}
template <class T>
Mat<T>& Params<T>::at(const std::string& name) {
  auto it = index.find(name);
  TTT_CHECK(it != index.end(), "model has no parameter '" << name << "'");
  return values[it->second];
}
template <class T>
int64_t Params<T>::count() const {
  int64_t n = 0;
  for (auto& v : values) n += v.size();
  return n;
}

static std::pair<int64_t, int64_t> mat_dims(const Shape& s) {
  if (s.size() == 1) return {1, s[0]};
  if (s.size() == 2) return {s[0], s[1]};
  TTT_CHECK(s.size() == 3, "parameter of rank " << s.size() << " is not supported");
  return {s[0] * s[1], s[2]};
}

template <class T>
Params<T> make_params(const ModelConfig& cfg) {
  Params<T> p;
  for (auto& [name, shape] : parameter_shapes(cfg)) {
    auto [r, c] = mat_dims(shape);
    p.index[name] = p.names.size();
    p.names.push_back(name);
    p.shapes.push_back(shape);
    p.values.emplace_back(r, c);
  }
  return p;
}

static bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

template <class T>
void init_params(const ModelConfig& cfg, Params<T>& p, uint64_t seed) {
  Rng rng(seed);
  const double out_std = cfg.init_std / std::sqrt(2.0 * double(cfg.n_layers));
  const int64_t d = cfg.head_dim_mem();
  for (size_t i = 0; i < p.names.size(); ++i) {
    const std::string& n = p.names[i];
    Mat<T>& m = p.values[i];
    auto normal = [&](double std) {
      for (auto& x : m.data) x = T(rng.normal() * std);
    };
    auto fill = [&](double v) { std::fill(m.data.begin(), m.data.end(), T(v)); };
    if (ends_with(n, "norm.weight") || ends_with(n, "_scale")) fill(1.0);
    else if (ends_with(n, "_offset") || ends_with(n, ".bias")) fill(0.0);
    else if (ends_with(n, "wo") || ends_with(n, "mlp.w_down")) normal(out_std);
    else if (ends_with(n, ".a")) normal(cfg.low_rank_gain / std::sqrt(double(cfg.low_rank_rank)));  // low-rank A
    else if (ends_with(n, ".b")) normal(cfg.low_rank_gain / std::sqrt(double(d)));                  // low-rank B
    else if (n.find("ttt.") != std::string::npos && (ends_with(n, ".w0") || ends_with(n, ".w1") || ends_with(n, ".w2") || ends_with(n, ".w")))
      normal(1.0 / std::sqrt(double(m.cols)));  // fast-weight initial state: unit-scale rows
    else normal(cfg.init_std);
    // The output gate of the memory branch starts open: silu(1) ~ 0.73 rather than silu(0) = 0.
    if (ends_with(n, "ttt.scale.bias")) fill(1.0);
  }
}

template <class T>
ForwardResult<T> forward(const ModelConfig& cfg, const Params<T>& p, const Batch& batch, std::vector<Mat<T>>* grads,
                         bool want_token_loss, bool want_logits, const ContextSpan* cp) {
  const int64_t S = batch.sequences, N = batch.len, D = cfg.dim;
  if (cp && cp->ranks == 1) cp = nullptr;
  TTT_CHECK(!cp || N == cp->span, "context-parallel forward: the batch has " << N << " tokens per sequence, the span is "
                                                                              << (cp ? cp->span : 0));
  TTT_CHECK(S > 0 && N > 0, "empty batch");
  TTT_CHECK(int64_t(batch.inputs.size()) == S * N && int64_t(batch.targets.size()) == S * N,
            "batch has " << batch.inputs.size() << " inputs and " << batch.targets.size() << " targets, expected "
                         << S * N);
  Tape<T> t;
  const bool rg = grads != nullptr;
  std::vector<Var> pv;
  pv.reserve(p.values.size());
  for (auto& v : p.values) pv.push_back(t.leaf(v, rg));
  auto P = [&](const std::string& name) { return pv[p.index.at(name)]; };

  std::vector<int64_t> positions(size_t(S * N));
  for (int64_t s = 0; s < S; ++s)
    for (int64_t i = 0; i < N; ++i) positions[size_t(s * N + i)] = (cp ? cp->offset() : 0) + i;

  // emulate_bf16_activations: the GPU stores the residual stream in bf16 (its backward flows in fp32), and the MLP's
  // gate and up products and d(silu(gate) up) (swiglu_mlp's bf16_stored).
  const bool bf16_residual = emulate_bf16_activations();
  Var x = nn::embedding(t, P("embed.weight"), batch.inputs);
  if (bf16_residual) x = nn::bf16_stored_value(t, x);
  for (int64_t l = 0; l < cfg.n_layers; ++l) {
    const std::string pre = "layers." + std::to_string(l) + ".";
    auto L = [&](const std::string& name) { return P(pre + name); };
    Var h = nn::rms_norm(t, x, L("attn_norm.weight"), cfg.norm_eps);
    Var qkv = nn::linear(t, h, L("wqkv"));
    Var q = ag::slice_cols(t, qkv, 0, D), k = ag::slice_cols(t, qkv, D, 2 * D), v = ag::slice_cols(t, qkv, 2 * D, 3 * D);
    // Window attention branch, one sequence at a time. Context parallel: the keys and values of each sequence are
    // preceded by the previous span's last window - 1 (the halo), and so are its queries (rows whose outputs are
    // dropped: they only keep the two row counts equal).
    Var qa = nn::rope(t, q, cfg.n_attn_heads, positions, cfg.rope_theta);
    Var ka = nn::rope(t, k, cfg.n_attn_heads, positions, cfg.rope_theta);
    Var va = v;
    int64_t halo = 0;
    if (cp && cfg.window > 1) {  // window 1: a token sees itself only
      const int64_t h = std::min(cfg.window - 1, N);
      halo = halo_rows(h, *cp);
      ka = with_halo(t, ka, S, h, *cp);
      va = with_halo(t, va, S, h, *cp);
    }
    std::vector<Var> att;
    for (int64_t s = 0; s < S; ++s) {
      Var qs = ag::slice_rows(t, qa, s * N, (s + 1) * N);
      if (halo > 0) qs = ag::concat_rows(t, {t.constant(Mat<T>(halo, D)), qs});
      Var os = nn::sliding_window_attention(t, qs, ag::slice_rows(t, ka, s * (halo + N), (s + 1) * (halo + N)),
                                            ag::slice_rows(t, va, s * (halo + N), (s + 1) * (halo + N)),
                                            cfg.n_attn_heads, cfg.window);
      att.push_back(halo > 0 ? ag::slice_rows(t, os, halo, halo + N) : os);
    }
    Var o_attn = S == 1 ? att[0] : ag::concat_rows(t, att);
    LayerParams lp{[&](const std::string& n) { return L(n); }};
    Var o_mem = record_memory_branch(t, cfg, lp, h, q, k, v, positions, S, cp);
    x = ag::add(t, x, nn::linear(t, ag::add(t, o_attn, o_mem), L("wo")));
    Var h2 = nn::rms_norm(t, x, L("mlp_norm.weight"), cfg.norm_eps);
    x = ag::add(t, x, nn::swiglu_mlp(t, h2, L("mlp.w_gate"), L("mlp.w_up"), L("mlp.w_down"), bf16_residual));
    if (bf16_residual) x = nn::bf16_stored_value(t, x);
  }
  Var hf = nn::rms_norm(t, x, P("final_norm.weight"), cfg.norm_eps);
  Var logits = nn::linear(t, hf, P("lm_head.weight"));
  ForwardResult<T> res;
  Var loss = nn::cross_entropy(t, logits, batch.targets, want_token_loss ? &res.token_loss : nullptr);
  res.loss = double(t.val(loss).data[0]);
  if (want_logits) res.logits = t.val(logits);
  if (rg) {
    t.grad(loss).data[0] = T(cp ? cp->loss_weight : 1.0);
    t.backward();
    grads->resize(pv.size());
    for (size_t i = 0; i < pv.size(); ++i)
      (*grads)[i] = t.has_grad(pv[i]) ? t.grad(pv[i]) : Mat<T>(p.values[i].rows, p.values[i].cols);
  }
  return res;
}

template <class T>
SafeTensors params_to_safetensors(const Params<T>& p) {
  SafeTensors st;
  for (size_t i = 0; i < p.names.size(); ++i) {
    Tensor t = Tensor::empty(p.shapes[i], dtype_of<T>::value);
    std::copy(p.values[i].data.begin(), p.values[i].data.end(), t.data<T>());
    st.add(p.names[i], t);
  }
  return st;
}

template <class T>
void params_from_safetensors(const ModelConfig& cfg, Params<T>& p, const SafeTensors& st, const std::string& origin) {
  p = make_params<T>(cfg);
  for (size_t i = 0; i < p.names.size(); ++i) {
    const Tensor* t = st.find(p.names[i]);
    TTT_CHECK(t, origin << ": missing parameter '" << p.names[i] << "' (" << shape_str(p.shapes[i])
                        << "); the weights do not match the config");
    TTT_CHECK(t->shape() == p.shapes[i], origin << ": parameter '" << p.names[i] << "' is " << t->describe()
                                                << ", the config expects " << shape_str(p.shapes[i]));
    TTT_CHECK(t->dtype() != DType::I64, origin << ": parameter '" << p.names[i] << "' is " << t->describe()
                                               << "; parameters are floating point (F32, F64 or BF16)");
    Tensor c = t->to(dtype_of<T>::value);
    std::copy(c.data<T>(), c.data<T>() + c.numel(), p.values[i].data.begin());
    TTT_CHECK(t->all_finite(), origin << ": parameter '" << p.names[i] << "' contains NaN or Inf");
  }
  for (auto& [name, t] : st.tensors)
    TTT_CHECK(p.has(name), origin << ": unexpected tensor '" << name << "' " << t.describe()
                                  << " (not a parameter of this config)");
}

#define TTT_INSTANTIATE(T)                                                                                        \
  template struct Params<T>;                                                                                      \
  template Params<T> make_params<T>(const ModelConfig&);                                                          \
  template void init_params<T>(const ModelConfig&, Params<T>&, uint64_t);                                         \
  template ForwardResult<T> forward<T>(const ModelConfig&, const Params<T>&, const Batch&, std::vector<Mat<T>>*, \
                                       bool, bool, const ContextSpan*);                                           \
  template SafeTensors params_to_safetensors<T>(const Params<T>&);                                                \
  template void params_from_safetensors<T>(const ModelConfig&, Params<T>&, const SafeTensors&, const std::string&);
TTT_INSTANTIATE(float)
TTT_INSTANTIATE(double)
#undef TTT_INSTANTIATE

}  // namespace ttt::model
