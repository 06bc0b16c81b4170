#include "infer/stream.h"

#include <cmath>

#include "autograd/ops.h"
#include "model/memory_branch.h"
#include "nn/layers.h"

namespace ttt::infer {

using ag::Mat;
using ag::Tape;
using ag::Var;

namespace {

Mat<float> rows_cols(const Mat<float>& m, int64_t r0, int64_t nr, int64_t c0, int64_t nc) {
  Mat<float> o(nr, nc);
  for (int64_t i = 0; i < nr; ++i) std::copy(m.row(r0 + i) + c0, m.row(r0 + i) + c0 + nc, o.row(i));
  return o;
}

// Columns {r*H + h} of m (the rate layout of the memory branch).
Mat<float> strided(const Mat<float>& m, int64_t nr, int64_t h, int64_t H, int64_t R) {
  Mat<float> o(nr, R);
  for (int64_t i = 0; i < nr; ++i)
    for (int64_t r = 0; r < R; ++r) o(i, r) = m(i, r * H + h);
  return o;
}

}  // namespace

StreamingModel::StreamingModel(const model::ModelConfig& cfg, const model::Params<float>& params)
    : cfg_(cfg), p_(params) {
  TTT_CHECK(cfg.arch == "lact" || cfg.arch == "titans",
            "streaming inference for architecture '" << cfg.arch << "' is not available in this build");
  mem_cfg_ = model::memory_config(cfg, 0);
  reset();
}

void StreamingModel::reset() {
  pos_ = 0;
  layers_.assign(size_t(cfg_.n_layers), LayerState());
  const int64_t D = cfg_.dim, H = cfg_.n_mem_heads, C = cfg_.chunk;
  const int64_t R = mem_cfg_.rate_columns;
  auto shapes = mem_cfg_.weight_shapes();
  for (int64_t l = 0; l < cfg_.n_layers; ++l) {
    LayerState& ls = layers_[size_t(l)];
    ls.ring_k = Mat<float>(cfg_.window, D);
    ls.ring_v = Mat<float>(cfg_.window, D);
    ls.pend_k = Mat<float>(C, D);
    ls.pend_v = Mat<float>(C, D);
    ls.pend_rates = Mat<float>(C, R * H);
    ls.pend_mom = Mat<float>(C, H);
    ls.pend_decay = Mat<float>(C, H);
    // Resolve the memory's initial weights (low-rank parameterization included) once.
    Tape<float> t;
    const std::string pre = "layers." + std::to_string(l) + ".";
    model::LayerParams lp{[&](const std::string& n) { return t.constant(p_.at(pre + n)); }};
    std::vector<Var> w = model::memory_weights(t, cfg_, lp, 0);
    for (int64_t h = 0; h < H; ++h) {
      MemoryHeadState hs;
      for (size_t i = 0; i < w.size(); ++i)
        hs.w0.push_back(rows_cols(t.val(w[i]), h * shapes[i].first, shapes[i].first, 0, shapes[i].second));
      hs.state = engine::initial_state(mem_cfg_, hs.w0);
      ls.heads.push_back(std::move(hs));
    }
  }
}

size_t StreamingModel::state_bytes() const {
  size_t n = 0;
  auto add = [&](const Mat<float>& m) { n += m.data.size() * sizeof(float); };
  for (auto& ls : layers_) {
    add(ls.ring_k), add(ls.ring_v), add(ls.pend_k), add(ls.pend_v), add(ls.pend_rates), add(ls.pend_mom),
        add(ls.pend_decay);
    for (auto& h : ls.heads) {
      for (auto& w : h.state.weights) add(w);
      for (auto& m : h.state.momentum) add(m);
    }
  }
  return n;
}

Mat<float> StreamingModel::feed(const std::vector<int32_t>& tokens) {
  Mat<float> logits(int64_t(tokens.size()), cfg_.vocab_size);
  size_t i = 0;
  while (i < tokens.size()) {
    // Up to the next chunk boundary of the memory.
    const int64_t room = cfg_.chunk - pos_ % cfg_.chunk;
    const size_t n = std::min(tokens.size() - i, size_t(room));
    std::vector<int32_t> block(tokens.begin() + int64_t(i), tokens.begin() + int64_t(i + n));
    Mat<float> lg = feed_block(block);
    std::copy(lg.data.begin(), lg.data.end(), logits.row(int64_t(i)));
    i += n;
  }
  return logits;
}

Mat<float> StreamingModel::feed_block(const std::vector<int32_t>& tokens) {
  const int64_t n = int64_t(tokens.size()), D = cfg_.dim, W = cfg_.window, C = cfg_.chunk;
  const int64_t Ha = cfg_.n_attn_heads, hd = cfg_.head_dim_attn(), H = cfg_.n_mem_heads, d = cfg_.head_dim_mem();
  const int64_t R = mem_cfg_.rate_columns;
  for (int32_t tok : tokens)
    TTT_CHECK(tok >= 0 && tok < cfg_.vocab_size, "token " << tok << " outside the vocabulary of " << cfg_.vocab_size);
  std::vector<int64_t> positions(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) positions[size_t(i)] = pos_ + i;

  Tape<float> t;
  std::map<std::string, Var> cache;
  auto P = [&](const std::string& name) {
    auto it = cache.find(name);
    if (it != cache.end()) return it->second;
    Var v = t.constant(p_.at(name));
    cache[name] = v;
    return v;
  };
  Var x = nn::embedding(t, P("embed.weight"), tokens);
  for (int64_t l = 0; l < cfg_.n_layers; ++l) {
    LayerState& ls = layers_[size_t(l)];
    const std::string pre = "layers." + std::to_string(l) + ".";
    auto L = [&](const std::string& name) { return P(pre + name); };
    Var h = nn::rms_norm(t, x, L("attn_norm.weight"), cfg_.norm_eps);
    Var qkv = nn::linear(t, h, L("wqkv"));
    Var q = ag::slice_cols(t, qkv, 0, D), k = ag::slice_cols(t, qkv, D, 2 * D), v = ag::slice_cols(t, qkv, 2 * D, 3 * D);

    // Attention against the ring buffer: token p sees positions p-W+1 .. p.
    const Mat<float>& qa = t.val(nn::rope(t, q, Ha, positions, cfg_.rope_theta));
    const Mat<float>& ka = t.val(nn::rope(t, k, Ha, positions, cfg_.rope_theta));
    const Mat<float>& va = t.val(v);
    Mat<float> o_attn(n, D);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t p = pos_ + i;
      std::copy(ka.row(i), ka.row(i) + D, ls.ring_k.row(p % W));
      std::copy(va.row(i), va.row(i) + D, ls.ring_v.row(p % W));
      const int64_t first = std::max<int64_t>(0, p - W + 1);
      const float scale = 1.0f / std::sqrt(float(hd));
      std::vector<float> sc(static_cast<size_t>(p - first + 1));
      for (int64_t a = 0; a < Ha; ++a) {
        const float* qr = qa.row(i) + a * hd;
        float mx = -INFINITY;
        for (int64_t s = first; s <= p; ++s) {
          const float* kr = ls.ring_k.row(s % W) + a * hd;
          float dot = 0;
          for (int64_t j = 0; j < hd; ++j) dot += qr[j] * kr[j];
          sc[size_t(s - first)] = dot * scale;
          mx = std::max(mx, dot * scale);
        }
        float sum = 0;
        for (auto& e : sc) sum += (e = std::exp(e - mx));
        float* orow = o_attn.row(i) + a * hd;
        for (int64_t s = first; s <= p; ++s) {
          const float w = sc[size_t(s - first)] / sum;
          const float* vr = ls.ring_v.row(s % W) + a * hd;
          for (int64_t j = 0; j < hd; ++j) orow[j] += w * vr[j];
        }
      }
    }

    // Memory branch: apply with the chunk-start weights, then buffer the chunk's update inputs.
    model::LayerParams lp{[&](const std::string& name) { return L(name); }};
    model::MemoryInputVars mi = model::prepare_memory_inputs(t, cfg_, lp, h, q, k, v, positions);
    Mat<float> o(n, D);
    for (int64_t hh = 0; hh < H; ++hh) {
      MemoryHeadState& hs = ls.heads[size_t(hh)];
      Mat<float> oh = engine::state_apply(mem_cfg_, hs.state, hs.w0, rows_cols(t.val(mi.q), 0, n, hh * d, d));
      for (int64_t i = 0; i < n; ++i) std::copy(oh.row(i), oh.row(i) + d, o.row(i) + hh * d);
    }
    for (int64_t i = 0; i < n; ++i) {
      const int64_t r = ls.pend_n + i;
      std::copy(t.val(mi.k).row(i), t.val(mi.k).row(i) + D, ls.pend_k.row(r));
      std::copy(t.val(mi.v).row(i), t.val(mi.v).row(i) + D, ls.pend_v.row(r));
      std::copy(t.val(mi.rates).row(i), t.val(mi.rates).row(i) + R * H, ls.pend_rates.row(r));
      if (mi.momentum.valid()) std::copy(t.val(mi.momentum).row(i), t.val(mi.momentum).row(i) + H, ls.pend_mom.row(r));
      if (mi.decay.valid()) std::copy(t.val(mi.decay).row(i), t.val(mi.decay).row(i) + H, ls.pend_decay.row(r));
    }
    ls.pend_n += n;
    if (ls.pend_n == C) {  // chunk complete: one update per head
      for (int64_t hh = 0; hh < H; ++hh) {
        MemoryHeadState& hs = ls.heads[size_t(hh)];
        engine::state_update(mem_cfg_, hs.state, hs.w0, rows_cols(ls.pend_k, 0, C, hh * d, d),
                             rows_cols(ls.pend_v, 0, C, hh * d, d), strided(ls.pend_rates, C, hh, H, R),
                             mem_cfg_.momentum ? rows_cols(ls.pend_mom, 0, C, hh, 1) : Mat<float>(),
                             mem_cfg_.decay ? rows_cols(ls.pend_decay, 0, C, hh, 1) : Mat<float>());
      }
      ls.pend_n = 0;
    }
    Var o_mem = model::finish_memory_output(t, cfg_, lp, h, t.constant(o));
    x = ag::add(t, x, nn::linear(t, ag::add(t, t.constant(o_attn), o_mem), L("wo")));
    Var h2 = nn::rms_norm(t, x, L("mlp_norm.weight"), cfg_.norm_eps);
    x = ag::add(t, x, nn::swiglu_mlp(t, h2, L("mlp.w_gate"), L("mlp.w_up"), L("mlp.w_down")));
  }
  Var logits = nn::linear(t, nn::rms_norm(t, x, P("final_norm.weight"), cfg_.norm_eps), P("lm_head.weight"));
  pos_ += n;
  return t.val(logits);
}

}  // namespace ttt::infer
