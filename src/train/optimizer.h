// AdamW (decoupled weight decay, Loshchilov & Hutter) over the model's parameter matrices.
//
// Per parameter element, at step t = 1, 2, ... with learning rate lr:
//   p <- p * (1 - lr * wd)                    (only for tensors that decay, see decays())
//   m <- b1 m + (1 - b1) g
//   v <- b2 v + (1 - b2) g^2
//   p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
// The arithmetic is done in double per element and rounded to the parameter type once; m and v are stored
// in float. The update is sequential and deterministic.
//
// Weight decay (a documented choice): decayed are the 2-D projection matrices — wqkv, wo, mlp.w_gate,
// mlp.w_up, mlp.w_down, the gate/scale projections ttt.lr.weight, ttt.momentum.weight, ttt.decay.weight,
// ttt.scale.weight, and lm_head.weight. Not decayed: the embedding, every norm weight, every bias, the
// memory's per-channel q/k scale and offset, and the fast-weight initial weights (ttt.w0/w1/w2/w, their
// low-rank factors, and the TNT/Titans memories' weights).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "autograd/mat.h"
#include "core/safetensors.h"

namespace ttt::train {

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

// Whether the parameter named `name` gets weight decay (see the header comment).
bool decays(const std::string& name);

class AdamW {
 public:
  AdamW() = default;
  // names/sizes: one entry per parameter tensor (sizes in elements).
  AdamW(const std::vector<std::string>& names, const std::vector<int64_t>& sizes, const AdamWConfig& cfg);

  // One update of every parameter with its gradient (same order and sizes as at construction). A sharded
  // optimizer (ZeRO-1) updates only its tensors [first, last) and may have released the other tensors' moments.
  template <class T>
  void step(std::vector<ag::Mat<T>>& params, const std::vector<ag::Mat<T>>& grads, double lr, size_t first = 0,
            size_t last = size_t(-1));

  int64_t steps() const { return t_; }
  // Counts one step whose arithmetic ran elsewhere (the GPU model's AdamW kernel, with these moments kept on
  // the device); returns the new step number t.
  int64_t advance_step() { return ++t_; }
  const AdamWConfig& config() const { return cfg_; }
  const std::vector<std::string>& names() const { return names_; }
  std::vector<std::vector<float>>& m() { return m_; }
  std::vector<std::vector<float>>& v() { return v_; }
  const std::vector<std::vector<float>>& m() const { return m_; }
  const std::vector<std::vector<float>>& v() const { return v_; }
  bool decayed(size_t i) const { return decay_[i]; }
  // Per-element trainable mask (one vector per parameter, 1 = trainable; an empty vector: all trainable).
  // Frozen elements are left exactly as they are: no update, no weight decay, moments untouched.
  void set_trainable(std::vector<std::vector<uint8_t>> mask);
  const std::vector<std::vector<uint8_t>>& trainable() const { return trainable_; }

  // Moments as safetensors: "m.<param>" and "v.<param>" (F32, the parameter's `shapes`), metadata "step".
  SafeTensors to_safetensors(const std::vector<Shape>& shapes) const;
  // Loads the moments; every tensor must be present with the given shape (errors name `origin`).
  void load_safetensors(const SafeTensors& st, const std::vector<Shape>& shapes, const std::string& origin);

 private:
  AdamWConfig cfg_;
  std::vector<std::string> names_;
  std::vector<bool> decay_;
  std::vector<std::vector<float>> m_, v_;
  std::vector<std::vector<uint8_t>> trainable_;
  int64_t t_ = 0;
};

}  // namespace ttt::train
