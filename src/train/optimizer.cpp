#include "train/optimizer.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace ttt::train {

namespace {
bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}
}  // namespace

bool decays(const std::string& n) {
  static const char* kDecayed[] = {".wqkv",           ".wo",                 ".mlp.w_gate",       ".mlp.w_up",
                                   ".mlp.w_down",     ".ttt.lr.weight",      ".ttt.momentum.weight",
                                   ".ttt.decay.weight", ".ttt.scale.weight"};
  if (n == "lm_head.weight") return true;
  for (const char* s : kDecayed)
    if (ends_with(n, s)) return true;
  return false;
}

AdamW::AdamW(const std::vector<std::string>& names, const std::vector<int64_t>& sizes, const AdamWConfig& cfg)
    : cfg_(cfg), names_(names) {
  TTT_CHECK(names.size() == sizes.size(), "AdamW: " << names.size() << " names but " << sizes.size() << " sizes");
  TTT_CHECK(cfg.beta1 >= 0 && cfg.beta1 < 1, "AdamW: beta1 must be in [0, 1), got " << cfg.beta1);
  TTT_CHECK(cfg.beta2 >= 0 && cfg.beta2 < 1, "AdamW: beta2 must be in [0, 1), got " << cfg.beta2);
  TTT_CHECK(cfg.eps > 0, "AdamW: eps must be > 0, got " << cfg.eps);
  TTT_CHECK(cfg.weight_decay >= 0, "AdamW: weight decay must be >= 0, got " << cfg.weight_decay);
  for (size_t i = 0; i < names.size(); ++i) {
    decay_.push_back(decays(names[i]));
    m_.emplace_back(size_t(sizes[i]), 0.0f);
    v_.emplace_back(size_t(sizes[i]), 0.0f);
  }
}

template <class T>
void AdamW::step(std::vector<ag::Mat<T>>& params, const std::vector<ag::Mat<T>>& grads, double lr, size_t first,
                 size_t last) {
  TTT_CHECK(params.size() == m_.size() && grads.size() == m_.size(),
            "AdamW: " << m_.size() << " tensors, got " << params.size() << " parameters and " << grads.size()
                      << " gradients");
  last = std::min(last, params.size());
  TTT_CHECK(first <= last, "AdamW: tensors [" << first << ", " << last << ")");
  ++t_;
  const double b1 = cfg_.beta1, b2 = cfg_.beta2, eps = cfg_.eps;
  const double c1 = 1.0 - std::pow(b1, double(t_)), c2 = 1.0 - std::pow(b2, double(t_));
  for (size_t i = first; i < last; ++i) {
    auto& p = params[i].data;
    const auto& g = grads[i].data;
    TTT_CHECK(p.size() == m_[i].size() && g.size() == m_[i].size(),
              "AdamW: tensor '" << names_[i] << "' has " << p.size() << " elements and gradient " << g.size()
                                << ", expected " << m_[i].size());
    const double shrink = decay_[i] ? 1.0 - lr * cfg_.weight_decay : 1.0;
    float* m = m_[i].data();
    float* v = v_[i].data();
    const uint8_t* mask = i < trainable_.size() && !trainable_[i].empty() ? trainable_[i].data() : nullptr;
    for (size_t j = 0; j < p.size(); ++j) {
      if (mask && !mask[j]) continue;
      const double gj = double(g[j]);
      const double mj = b1 * double(m[j]) + (1.0 - b1) * gj;
      const double vj = b2 * double(v[j]) + (1.0 - b2) * gj * gj;
      m[j] = float(mj);
      v[j] = float(vj);
      const double upd = (mj / c1) / (std::sqrt(vj / c2) + eps);
      p[j] = T(double(p[j]) * shrink - lr * upd);
    }
  }
}

void AdamW::set_trainable(std::vector<std::vector<uint8_t>> mask) {
  TTT_CHECK(mask.empty() || mask.size() == m_.size(), "AdamW: trainable mask for " << mask.size() << " tensors, expected "
                                                                                   << m_.size());
  for (size_t i = 0; i < mask.size(); ++i)
    TTT_CHECK(mask[i].empty() || mask[i].size() == m_[i].size(),
              "AdamW: trainable mask of '" << names_[i] << "' has " << mask[i].size() << " elements, expected "
                                           << m_[i].size());
  trainable_ = std::move(mask);
}

template void AdamW::step<float>(std::vector<ag::Mat<float>>&, const std::vector<ag::Mat<float>>&, double, size_t,
                                 size_t);
template void AdamW::step<double>(std::vector<ag::Mat<double>>&, const std::vector<ag::Mat<double>>&, double, size_t,
                                  size_t);

SafeTensors AdamW::to_safetensors(const std::vector<Shape>& shapes) const {
  TTT_CHECK(shapes.size() == m_.size(), "AdamW: " << shapes.size() << " shapes for " << m_.size() << " tensors");
  SafeTensors st;
  for (int pass = 0; pass < 2; ++pass) {
    const auto& src = pass == 0 ? m_ : v_;
    for (size_t i = 0; i < src.size(); ++i) {
      TTT_CHECK(shape_numel(shapes[i]) == int64_t(src[i].size()), "AdamW: shape " << shape_str(shapes[i])
                                                                                  << " does not match " << names_[i]);
      Tensor t = Tensor::empty(shapes[i], DType::F32);
      std::copy(src[i].begin(), src[i].end(), t.data<float>());
      st.add((pass == 0 ? "m." : "v.") + names_[i], t);
    }
  }
  st.metadata["step"] = std::to_string(t_);
  return st;
}

void AdamW::load_safetensors(const SafeTensors& st, const std::vector<Shape>& shapes, const std::string& origin) {
  TTT_CHECK(shapes.size() == m_.size(), "AdamW: " << shapes.size() << " shapes for " << m_.size() << " tensors");
  for (int pass = 0; pass < 2; ++pass) {
    auto& dst = pass == 0 ? m_ : v_;
    for (size_t i = 0; i < dst.size(); ++i) {
      const std::string name = (pass == 0 ? "m." : "v.") + names_[i];
      const Tensor* t = st.find(name);
      TTT_CHECK(t, origin << ": missing optimizer tensor '" << name << "'; the optimizer state does not match the config");
      TTT_CHECK(t->shape() == shapes[i], origin << ": optimizer tensor '" << name << "' is " << t->describe()
                                                << ", the config expects " << shape_str(shapes[i]));
      Tensor c = t->to(DType::F32);
      TTT_CHECK(c.all_finite(), origin << ": optimizer tensor '" << name << "' contains NaN or Inf");
      std::copy(c.data<float>(), c.data<float>() + c.numel(), dst[i].begin());
    }
  }
  TTT_CHECK(st.tensors.size() == 2 * m_.size(),
            origin << ": " << st.tensors.size() << " optimizer tensors, expected " << 2 * m_.size());
  auto it = st.metadata.find("step");
  TTT_CHECK(it != st.metadata.end(), origin << ": optimizer metadata has no 'step'");
  try {
    size_t pos = 0;
    t_ = std::stoll(it->second, &pos);
    TTT_CHECK(pos == it->second.size() && t_ >= 0, "");
  } catch (...) {
    TTT_FAIL(origin << ": optimizer metadata 'step' is not a non-negative integer: '" << it->second << "'");
  }
}

}  // namespace ttt::train
