#include "ttt/memory.h"

namespace ttt::engine {

using ag::Tape;
using ag::Var;

int64_t MemoryConfig::num_weights() const {
  switch (family) {
    case Family::SwiGLU: return 3;
    case Family::MLP: return 2;
    case Family::Linear: return 1;
  }
  return 0;
}

std::vector<std::pair<int64_t, int64_t>> MemoryConfig::weight_shapes() const {
  switch (family) {
    case Family::SwiGLU: return {{dh, d}, {d, dh}, {dh, d}};
    case Family::MLP: return {{dh, d}, {d, dh}};
    case Family::Linear: return {{d, d}};
  }
  return {};
}

std::vector<std::string> MemoryConfig::weight_names() const {
  switch (family) {
    case Family::SwiGLU: return {"w0", "w1", "w2"};
    case Family::MLP: return {"w1", "w2"};
    case Family::Linear: return {"w"};
  }
  return {};
}

void MemoryConfig::validate() const {
  TTT_CHECK(d > 0, "memory width d must be positive, got " << d);
  TTT_CHECK(family == Family::Linear || dh > 0, "memory hidden width dh must be positive, got " << dh);
  TTT_CHECK(rate_columns == 1 || rate_columns == num_weights(),
            "a " << family_name(family) << " memory takes 1 or " << num_weights() << " rate columns, got "
                 << rate_columns);
}

namespace {

// Column r of the rates, or the single shared column.
template <class T>
Var rate_for(Tape<T>& t, const MemoryConfig& cfg, Var rates, int64_t i) {
  return cfg.rate_columns == 1 ? rates : ag::slice_cols(t, rates, i, i + 1);
}

// Rows of W rescaled to the row norms of W0: W[i,:] / (||W[i,:]|| + 1e-5) * ||W0[i,:]||.
template <class T>
Var weight_normalize(Tape<T>& t, Var w, Var w0) {
  Var target = ag::row_norm(t, w0);
  Var denom = ag::add_const(t, ag::row_norm(t, w), 1e-5);
  return ag::row_scale(t, w, ag::div(t, target, denom));
}

}  // namespace

template <class T>
std::vector<Var> effective_weights(Tape<T>& t, const MemoryConfig& cfg, const StateVars& s,
                                   const std::vector<Var>& w_init) {
  if (cfg.weight_norm != WeightNorm::Pre || !s.updated) return s.weights;
  std::vector<Var> out;
  for (size_t i = 0; i < s.weights.size(); ++i) out.push_back(weight_normalize(t, s.weights[i], w_init[i]));
  return out;
}

template <class T>
Var record_apply(Tape<T>& t, const MemoryConfig& cfg, const std::vector<Var>& w, Var q) {
  switch (cfg.family) {
    case Family::SwiGLU: {
      Var g = ag::matmul(t, q, w[0], false, true);  // [n,dh]
      Var h = ag::matmul(t, q, w[2], false, true);
      Var a = ag::mul(t, ag::silu(t, g), h);
      return ag::matmul(t, a, w[1], false, true);  // [n,d]
    }
    case Family::MLP: {
      Var z = ag::matmul(t, q, w[0], false, true);
      Var y = ag::matmul(t, ag::silu(t, z), w[1], false, true);
      return cfg.mlp_residual ? ag::add(t, q, y) : y;
    }
    case Family::Linear: return ag::matmul(t, q, w[0], false, true);
  }
  TTT_FAIL("unreachable");
}

// For a token's output y = f(k) and loss l, E = dl/dy: dot: l = -<y,v> -> E = -v; mse: l = ||y-v||^2 -> E = 2(y-v).
// The descent direction of each matrix is -sum_t rate_t * (the matrix gradient contribution of token t),
// i.e. the per-token rows of one factor of each outer product are scaled by the rate.
template <class T>
std::vector<Var> record_inner_step(Tape<T>& t, const MemoryConfig& cfg, const std::vector<Var>& w,
                                   const UpdateVars& in) {
  auto output_grad = [&](Var y) {
    return cfg.loss == Loss::Dot ? ag::scale(t, in.v, -1.0) : ag::scale(t, ag::sub(t, y, in.v), 2.0);
  };
  switch (cfg.family) {
    case Family::SwiGLU: {
      Var g = ag::matmul(t, in.k, w[0], false, true);  // [n,dh]
      Var h = ag::matmul(t, in.k, w[2], false, true);
      Var sg = ag::silu(t, g);
      Var a = ag::mul(t, sg, h);
      Var e = cfg.loss == Loss::Dot ? output_grad(Var{}) : output_grad(ag::matmul(t, a, w[1], false, true));
      Var da = ag::matmul(t, e, w[1]);                                  // [n,dh]
      Var dg = ag::mul(t, ag::mul(t, da, h), ag::dsilu(t, g));
      Var dh = ag::mul(t, da, sg);
      Var dw0 = ag::matmul(t, ag::row_scale(t, dg, rate_for(t, cfg, in.rates, 0)), in.k, true, false);  // [dh,d]
      Var dw1 = ag::matmul(t, ag::row_scale(t, e, rate_for(t, cfg, in.rates, 1)), a, true, false);      // [d,dh]
      Var dw2 = ag::matmul(t, ag::row_scale(t, dh, rate_for(t, cfg, in.rates, 2)), in.k, true, false);  // [dh,d]
      return {ag::scale(t, dw0, -1.0), ag::scale(t, dw1, -1.0), ag::scale(t, dw2, -1.0)};
    }
    case Family::MLP: {
      Var z = ag::matmul(t, in.k, w[0], false, true);  // [n,dh]
      Var s = ag::silu(t, z);
      Var e;
      if (cfg.loss == Loss::Dot) {
        e = output_grad(Var{});
      } else {
        Var y = ag::matmul(t, s, w[1], false, true);
        if (cfg.mlp_residual) y = ag::add(t, in.k, y);
        e = output_grad(y);
      }
      Var ds = ag::matmul(t, e, w[1]);  // [n,dh]
      Var dz = ag::mul(t, ds, ag::dsilu(t, z));
      Var dw1 = ag::matmul(t, ag::row_scale(t, dz, rate_for(t, cfg, in.rates, 0)), in.k, true, false);  // [dh,d]
      Var dw2 = ag::matmul(t, ag::row_scale(t, e, rate_for(t, cfg, in.rates, 1)), s, true, false);      // [d,dh]
      return {ag::scale(t, dw1, -1.0), ag::scale(t, dw2, -1.0)};
    }
    case Family::Linear: {
      Var e = cfg.loss == Loss::Dot ? output_grad(Var{}) : output_grad(ag::matmul(t, in.k, w[0], false, true));
      Var dw = ag::matmul(t, ag::row_scale(t, e, rate_for(t, cfg, in.rates, 0)), in.k, true, false);
      return {ag::scale(t, dw, -1.0)};
    }
  }
  TTT_FAIL("unreachable");
}

template <class T>
Var record_ns5(Tape<T>& t, Var m) {
  static constexpr double kCoef[5][3] = {{4.0848, -6.8946, 2.9270},
                                         {3.9505, -6.3029, 2.6377},
                                         {3.7418, -5.5913, 2.3037},
                                         {2.8769, -3.1427, 1.2046},
                                         {2.8366, -3.0525, 1.2012}};
  const bool transposed = t.val(m).rows > t.val(m).cols;
  Var x = transposed ? ag::transpose(t, m) : m;
  x = ag::mul_scalar(t, x, ag::reciprocal(t, ag::add_const(t, ag::frob_norm(t, x), 1e-7)));
  for (const auto& c : kCoef) {
    Var a = ag::matmul(t, x, x, false, true);
    Var b = ag::add(t, ag::scale(t, a, c[1]), ag::scale(t, ag::matmul(t, a, a), c[2]));
    x = ag::add(t, ag::scale(t, x, c[0]), ag::matmul(t, b, x));
  }
  return transposed ? ag::transpose(t, x) : x;
}

template <class T>
StateVars record_update(Tape<T>& t, const MemoryConfig& cfg, const StateVars& s, const std::vector<Var>& w_init,
                        const UpdateVars& in) {
  std::vector<Var> w_eff = effective_weights(t, cfg, s, w_init);
  std::vector<Var> delta = record_inner_step(t, cfg, w_eff, in);
  StateVars out;
  out.updated = true;
  if (cfg.momentum) {
    Var mbar = ag::mean(t, in.momentum_gate);
    for (size_t i = 0; i < delta.size(); ++i) {
      delta[i] = ag::add(t, delta[i], ag::mul_scalar(t, s.momentum[i], mbar));
      out.momentum.push_back(delta[i]);
    }
  }
  if (cfg.muon)
    for (auto& dlt : delta) dlt = record_ns5(t, dlt);
  Var keep;  // 1 - mean(alpha)
  if (cfg.decay) keep = ag::add_const(t, ag::scale(t, ag::mean(t, in.decay_gate), -1.0), 1.0);
  for (size_t i = 0; i < delta.size(); ++i) {
    Var w = cfg.decay ? ag::mul_scalar(t, s.weights[i], keep) : s.weights[i];
    w = ag::add(t, w, delta[i]);
    if (cfg.weight_norm == WeightNorm::Post) w = weight_normalize(t, w, w_init[i]);
    out.weights.push_back(w);
  }
  return out;
}

#define TTT_INSTANTIATE(T)                                                                                       \
  template std::vector<Var> effective_weights<T>(Tape<T>&, const MemoryConfig&, const StateVars&,                 \
                                                 const std::vector<Var>&);                                        \
  template Var record_apply<T>(Tape<T>&, const MemoryConfig&, const std::vector<Var>&, Var);                     \
  template std::vector<Var> record_inner_step<T>(Tape<T>&, const MemoryConfig&, const std::vector<Var>&,          \
                                                 const UpdateVars&);                                              \
  template Var record_ns5<T>(Tape<T>&, Var);                                                                      \
  template StateVars record_update<T>(Tape<T>&, const MemoryConfig&, const StateVars&, const std::vector<Var>&,   \
                                      const UpdateVars&);
TTT_INSTANTIATE(float)
TTT_INSTANTIATE(double)
#undef TTT_INSTANTIATE

}  // namespace ttt::engine
