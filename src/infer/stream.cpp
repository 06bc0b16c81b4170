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
  model::validate(cfg);
  reset();
}

void StreamingModel::reset() {
  pos_ = 0;
  layers_.assign(size_t(cfg_.n_layers), LayerState());
  const int64_t D = cfg_.dim, H = cfg_.n_mem_heads, d = cfg_.head_dim_mem();
  const std::vector<model::MemorySpec> specs = model::memory_specs(cfg_);
  for (int64_t l = 0; l < cfg_.n_layers; ++l) {
    LayerState& ls = layers_[size_t(l)];
    ls.ring_k = Mat<float>(cfg_.window, D);
    ls.ring_v = Mat<float>(cfg_.window, D);
    Tape<float> t;
    const std::string pre = "layers." + std::to_string(l) + ".";
    model::LayerParams lp{[&](const std::string& n) { return t.constant(p_.at(pre + n)); }};
    for (const model::MemorySpec& spec : specs) {
      MemoryStream ms;
      ms.spec = spec;
      const int64_t R = spec.config.rate_columns;
      const int64_t rows = spec.shard > 0 ? std::min(spec.chunk, spec.shard) : spec.chunk;
      ms.pend_k = Mat<float>(rows, D);
      ms.pend_v = Mat<float>(rows, D);
      ms.pend_rates = Mat<float>(rows, R * H);
      ms.pend_mom = Mat<float>(rows, H);
      ms.pend_decay = Mat<float>(rows, H);
      // Resolve the memory's initial weights (low-rank parameterization included) once.
      std::vector<Var> w = model::memory_weights(t, cfg_, lp, spec);
      auto shapes = spec.config.weight_shapes();
      for (int64_t h = 0; h < H; ++h) {
        MemoryHeadState hs;
        for (size_t i = 0; i < w.size(); ++i)
          hs.w0.push_back(rows_cols(t.val(w[i]), h * shapes[i].first, shapes[i].first, 0, shapes[i].second));
        hs.state = engine::initial_state(spec.config, hs.w0);
        hs.kk = Mat<float>(spec.qk_proj ? d : 0, spec.qk_proj ? d : 0);
        ms.heads.push_back(std::move(hs));
      }
      ls.memories.push_back(std::move(ms));
    }
  }
}

size_t StreamingModel::state_bytes() const {
  size_t n = 0;
  auto add = [&](const Mat<float>& m) { n += m.data.size() * sizeof(float); };
  for (auto& ls : layers_) {
    add(ls.ring_k), add(ls.ring_v);
    for (auto& ms : ls.memories) {
      add(ms.pend_k), add(ms.pend_v), add(ms.pend_rates), add(ms.pend_mom), add(ms.pend_decay);
      for (auto& h : ms.heads) {
        for (auto& w : h.state.weights) add(w);
        for (auto& m : h.state.momentum) add(m);
        add(h.kk);
        n += sizeof(h.ksq);
      }
    }
  }
  return n;
}

int64_t StreamingModel::room() const {
  int64_t r = INT64_MAX;
  for (auto& ms : layers_[0].memories) {
    const model::MemorySpec& s = ms.spec;
    if (s.shard > 0) {
      const int64_t off = pos_ % s.shard;
      r = std::min({r, s.chunk - off % s.chunk, s.shard - off});
    } else {
      r = std::min(r, s.chunk - pos_ % s.chunk);
    }
  }
  return r;
}

Mat<float> StreamingModel::feed(const std::vector<int32_t>& tokens) {
  Mat<float> logits(int64_t(tokens.size()), cfg_.vocab_size);
  size_t i = 0;
  while (i < tokens.size()) {
    const size_t n = std::min(tokens.size() - i, size_t(room()));
    std::vector<int32_t> block(tokens.begin() + int64_t(i), tokens.begin() + int64_t(i + n));
    Mat<float> lg = feed_block(block);
    std::copy(lg.data.begin(), lg.data.end(), logits.row(int64_t(i)));
    i += n;
  }
  return logits;
}

Mat<float> StreamingModel::feed_block(const std::vector<int32_t>& tokens) {
  const int64_t n = int64_t(tokens.size()), D = cfg_.dim, W = cfg_.window;
  const int64_t Ha = cfg_.n_attn_heads, hd = cfg_.head_dim_attn(), H = cfg_.n_mem_heads, d = cfg_.head_dim_mem();
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

    // Memory branch: each memory applies with its chunk-start weights, then buffers the chunk's
    // update inputs; a finished chunk updates, a finished shard resets.
    model::LayerParams lp{[&](const std::string& name) { return L(name); }};
    model::MemoryInputVars mi = model::prepare_memory_inputs(t, cfg_, lp, h, q, k, v, positions);
    const Mat<float>& mq = t.val(mi.q);
    const Mat<float>& mk = t.val(mi.k);
    Mat<float> o(n, D);
    for (MemoryStream& ms : ls.memories) {
      const model::MemorySpec& spec = ms.spec;
      const int64_t R = spec.config.rate_columns;
      for (int64_t hh = 0; hh < H; ++hh) {
        MemoryHeadState& hs = ms.heads[size_t(hh)];
        Mat<float> qh = rows_cols(mq, 0, n, hh * d, d);
        if (spec.qk_proj && hs.ksq > 0) {  // q~ = (sum k k^T) q / sum ||k||^2; identity while empty
          Mat<float> qp(n, d);
          for (int64_t i = 0; i < n; ++i)
            for (int64_t a = 0; a < d; ++a) {
              double acc = 0;
              for (int64_t b2 = 0; b2 < d; ++b2) acc += double(hs.kk(a, b2)) * qh(i, b2);
              qp(i, a) = float(acc / hs.ksq);
            }
          qh = qp;
        }
        Mat<float> oh = engine::state_apply(spec.config, hs.state, hs.w0, qh);
        for (int64_t i = 0; i < n; ++i)
          for (int64_t j = 0; j < d; ++j) o(i, hh * d + j) += oh(i, j);
      }
      for (int64_t i = 0; i < n; ++i) {
        const int64_t r = ms.pend_n + i;
        std::copy(mk.row(i), mk.row(i) + D, ms.pend_k.row(r));
        std::copy(t.val(mi.v).row(i), t.val(mi.v).row(i) + D, ms.pend_v.row(r));
        const float* rr = t.val(mi.rates).row(i) + spec.rate_col0;
        std::copy(rr, rr + R * H, ms.pend_rates.row(r));
        if (mi.momentum.valid()) {
          const float* mr = t.val(mi.momentum).row(i) + spec.gate_col0;
          std::copy(mr, mr + H, ms.pend_mom.row(r));
        }
        if (mi.decay.valid()) {
          const float* dr = t.val(mi.decay).row(i) + spec.gate_col0;
          std::copy(dr, dr + H, ms.pend_decay.row(r));
        }
      }
      ms.pend_n += n;
      const int64_t after = pos_ + n;
      if (spec.shard > 0 && after % spec.shard == 0) {  // shard finished: back to W0 (its last chunk never updates)
        for (auto& hs : ms.heads) {
          hs.state = engine::initial_state(spec.config, hs.w0);
          std::fill(hs.kk.data.begin(), hs.kk.data.end(), 0.0f);
          hs.ksq = 0;
        }
        ms.pend_n = 0;
      } else if (ms.pend_n == spec.chunk) {  // chunk finished: one update per head
        const int64_t C = spec.chunk;
        for (int64_t hh = 0; hh < H; ++hh) {
          MemoryHeadState& hs = ms.heads[size_t(hh)];
          Mat<float> kh = rows_cols(ms.pend_k, 0, C, hh * d, d);
          engine::state_update(spec.config, hs.state, hs.w0, kh, rows_cols(ms.pend_v, 0, C, hh * d, d),
                               strided(ms.pend_rates, C, hh, H, R),
                               spec.config.momentum ? rows_cols(ms.pend_mom, 0, C, hh, 1) : Mat<float>(),
                               spec.config.decay ? rows_cols(ms.pend_decay, 0, C, hh, 1) : Mat<float>());
          if (spec.qk_proj)
            for (int64_t i = 0; i < C; ++i)
              for (int64_t a = 0; a < d; ++a) {
                hs.ksq += double(kh(i, a)) * kh(i, a);
                for (int64_t b2 = 0; b2 < d; ++b2) hs.kk(a, b2) += kh(i, a) * kh(i, b2);
              }
        }
        ms.pend_n = 0;
      }
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
