#include "ttt/memory_op.h"

#include <memory>

namespace ttt::engine {

using ag::Mat;
using ag::Tape;
using ag::Var;

namespace {

template <class T>
Mat<T> block(const Mat<T>& m, int64_t r0, int64_t nr, int64_t c0, int64_t nc) {
  Mat<T> o(nr, nc);
  for (int64_t i = 0; i < nr; ++i) std::copy(m.row(r0 + i) + c0, m.row(r0 + i) + c0 + nc, o.row(i));
  return o;
}
template <class T>
void add_block(Mat<T>& m, int64_t r0, int64_t c0, const Mat<T>& b) {
  for (int64_t i = 0; i < b.rows; ++i) {
    T* dst = m.row(r0 + i) + c0;
    const T* src = b.row(i);
    for (int64_t j = 0; j < b.cols; ++j) dst[j] += src[j];
  }
}
// Columns {r*H + h : r < R} of m, rows [r0, r0+nr).
template <class T>
Mat<T> strided_cols(const Mat<T>& m, int64_t r0, int64_t nr, int64_t h, int64_t H, int64_t R) {
  Mat<T> o(nr, R);
  for (int64_t i = 0; i < nr; ++i)
    for (int64_t r = 0; r < R; ++r) o(i, r) = m(r0 + i, r * H + h);
  return o;
}

template <class T>
struct MemoryOpState {
  std::vector<SequenceInputs<T>> inputs;  // per (sequence, head): s*H + h
  std::vector<SavedStates<T>> saved;
};

}  // namespace

int64_t state_values(const MemoryConfig& cfg) {
  int64_t n = 0;
  for (auto [r, c] : cfg.weight_shapes()) n += r * c;
  return cfg.momentum ? 2 * n : n;
}

template <class T>
std::vector<T> pack_states(const MemoryConfig& cfg, const std::vector<MemoryState<T>>& states) {
  std::vector<T> flat;
  flat.reserve(size_t(state_values(cfg)) * states.size());
  for (const MemoryState<T>& s : states) {
    TTT_CHECK(int64_t(s.weights.size()) == cfg.num_weights() && s.momentum.size() == (cfg.momentum ? s.weights.size() : 0),
              "pack_states: a state of " << s.weights.size() << " weights and " << s.momentum.size() << " momentum");
    for (const auto& w : s.weights) flat.insert(flat.end(), w.data.begin(), w.data.end());
    for (const auto& m : s.momentum) flat.insert(flat.end(), m.data.begin(), m.data.end());
  }
  return flat;
}

template <class T>
std::vector<MemoryState<T>> unpack_states(const MemoryConfig& cfg, const std::vector<T>& flat, int64_t items) {
  TTT_CHECK(int64_t(flat.size()) == items * state_values(cfg),
            "memory states: " << flat.size() << " values for " << items << " states of " << state_values(cfg));
  std::vector<MemoryState<T>> out(static_cast<size_t>(items));
  size_t at = 0;
  auto take = [&](int64_t r, int64_t c) {
    Mat<T> m(r, c);
    std::copy_n(flat.begin() + int64_t(at), r * c, m.data.begin());
    at += size_t(r * c);
    return m;
  };
  for (auto& s : out) {
    for (auto [r, c] : cfg.weight_shapes()) s.weights.push_back(take(r, c));
    if (cfg.momentum)
      for (auto [r, c] : cfg.weight_shapes()) s.momentum.push_back(take(r, c));
    s.updated = true;  // mid-chain (read only with a pre-norm, which a passed state excludes)
  }
  return out;
}

template <class T>
Var memory_op(Tape<T>& t, const MemoryConfig& cfg, const Program& prog, int64_t S, int64_t H, Var q, Var k, Var v,
              Var rates, Var momentum_gate, Var decay_gate, const std::vector<Var>& w0, const BatchOptions& batch,
              const StateLink<T>* link) {
  const int64_t N = prog.num_tokens, d = cfg.d, R = cfg.rate_columns;
  const Mat<T>& Q = t.val(q);
  TTT_CHECK(Q.rows == S * N && Q.cols == H * d,
            "memory_op: q is " << Q.shape() << ", expected [" << S * N << "," << H * d << "]");
  TTT_CHECK(t.val(k).same_shape(Q) && t.val(v).same_shape(Q),
            "memory_op: q, k, v shapes differ: " << Q.shape() << " " << t.val(k).shape() << " " << t.val(v).shape());
  TTT_CHECK(t.val(rates).rows == S * N && t.val(rates).cols == R * H,
            "memory_op: rates is " << t.val(rates).shape() << ", expected [" << S * N << "," << R * H << "]");
  TTT_CHECK(int64_t(w0.size()) == cfg.num_weights(), "memory_op: expected " << cfg.num_weights() << " weights");
  auto shapes = cfg.weight_shapes();
  for (size_t i = 0; i < w0.size(); ++i)
    TTT_CHECK(t.val(w0[i]).rows == H * shapes[i].first && t.val(w0[i]).cols == shapes[i].second,
              "memory_op: weight " << i << " is " << t.val(w0[i]).shape() << ", expected [" << H * shapes[i].first
                                   << "," << shapes[i].second << "]");

  auto st = std::make_shared<MemoryOpState<T>>();
  st->inputs.resize(size_t(S * H));
  for (int64_t s = 0; s < S; ++s)
    for (int64_t h = 0; h < H; ++h) {
      SequenceInputs<T>& in = st->inputs[size_t(s * H + h)];
      for (size_t i = 0; i < w0.size(); ++i)
        in.w0.push_back(block(t.val(w0[i]), h * shapes[i].first, shapes[i].first, 0, shapes[i].second));
      in.q = block(Q, s * N, N, h * d, d);
      in.k = block(t.val(k), s * N, N, h * d, d);
      in.v = block(t.val(v), s * N, N, h * d, d);
      in.rates = strided_cols(t.val(rates), s * N, N, h, H, R);
      if (cfg.momentum) in.momentum_gate = block(t.val(momentum_gate), s * N, N, h, 1);
      if (cfg.decay) in.decay_gate = block(t.val(decay_gate), s * N, N, h, 1);
    }
  const bool need_grad = [&] {
    for (Var x : {q, k, v, rates}) if (t.requires_grad(x)) return true;
    for (Var w : w0) if (t.requires_grad(w)) return true;
    return (cfg.momentum && t.requires_grad(momentum_gate)) || (cfg.decay && t.requires_grad(decay_gate));
  }();
  if (link) {
    check_chain_entry(cfg, prog);
    if (link->has_entry) {  // each sequence-head's chain continues from its received state
      std::vector<MemoryState<T>> entry =
          unpack_states(cfg, link->receive_entry(S * H * state_values(cfg)), S * H);
      for (int64_t i = 0; i < S * H; ++i) {
        st->inputs[size_t(i)].w0 = std::move(entry[size_t(i)].weights);
        st->inputs[size_t(i)].momentum0 = std::move(entry[size_t(i)].momentum);
      }
    }
  }
  std::vector<Mat<T>> outs =
      run_forward_batch(cfg, prog, st->inputs, need_grad || link ? &st->saved : nullptr, batch);
  if (link) {
    std::vector<MemoryState<T>> exit;
    for (const SavedStates<T>& sv : st->saved) exit.push_back(exit_state(sv));
    link->send_exit(pack_states(cfg, exit));
    if (!need_grad) st->saved.clear();
  }
  Mat<T> o(S * N, H * d);
  for (int64_t s = 0; s < S; ++s)
    for (int64_t h = 0; h < H; ++h) add_block(o, s * N, h * d, outs[size_t(s * H + h)]);

  std::vector<Var> inputs = {q, k, v, rates};
  if (cfg.momentum) inputs.push_back(momentum_gate);
  if (cfg.decay) inputs.push_back(decay_gate);
  for (Var w : w0) inputs.push_back(w);
  std::shared_ptr<const StateLink<T>> kept_link = link ? std::make_shared<StateLink<T>>(*link) : nullptr;
  Var out = t.make(std::move(o), inputs,
                [cfg, prog, S, H, q, k, v, rates, momentum_gate, decay_gate, w0, st, batch, kept_link](Tape<T>& t, const Mat<T>& g) {
                  const int64_t N = prog.num_tokens, d = cfg.d, R = cfg.rate_columns;
                  std::vector<Mat<T>> go(static_cast<size_t>(S * H));
                  for (int64_t s = 0; s < S; ++s)
                    for (int64_t h = 0; h < H; ++h) go[size_t(s * H + h)] = block(g, s * N, N, h * d, d);
                  std::vector<MemoryState<T>> exit_adjoint;
                  if (kept_link && kept_link->has_exit)
                    exit_adjoint = unpack_states(cfg, kept_link->receive_exit_adjoint(S * H * state_values(cfg)), S * H);
                  std::vector<SequenceGrads<T>> gr = run_backward_batch(
                      cfg, prog, st->inputs, st->saved, go, batch, exit_adjoint.empty() ? nullptr : &exit_adjoint);
                  // A received entry state is another rank's: its adjoint goes back there, not into w0's gradient.
                  const bool w0_is_entry = !kept_link || !kept_link->has_entry;
                  if (kept_link) {
                    std::vector<MemoryState<T>> entry_adjoint(size_t(S * H));
                    for (int64_t i = 0; i < S * H; ++i) {
                      entry_adjoint[size_t(i)].weights = gr[size_t(i)].w0;
                      entry_adjoint[size_t(i)].momentum = gr[size_t(i)].momentum0;
                    }
                    kept_link->send_entry_adjoint(pack_states(cfg, entry_adjoint));
                  }
                  auto shapes = cfg.weight_shapes();
                  // Sequential, fixed-order accumulation: results do not depend on thread scheduling.
                  for (int64_t s = 0; s < S; ++s)
                    for (int64_t h = 0; h < H; ++h) {
                      const SequenceGrads<T>& x = gr[size_t(s * H + h)];
                      if (t.requires_grad(q)) add_block(t.grad(q), s * N, h * d, x.q);
                      if (t.requires_grad(k)) add_block(t.grad(k), s * N, h * d, x.k);
                      if (t.requires_grad(v)) add_block(t.grad(v), s * N, h * d, x.v);
                      if (t.requires_grad(rates)) {
                        Mat<T>& gr_ = t.grad(rates);
                        for (int64_t i = 0; i < N; ++i)
                          for (int64_t r = 0; r < R; ++r) gr_(s * N + i, r * H + h) += x.rates(i, r);
                      }
                      if (cfg.momentum && t.requires_grad(momentum_gate))
                        add_block(t.grad(momentum_gate), s * N, h, x.momentum_gate);
                      if (cfg.decay && t.requires_grad(decay_gate)) add_block(t.grad(decay_gate), s * N, h, x.decay_gate);
                      for (size_t i = 0; i < w0.size() && w0_is_entry; ++i)
                        if (t.requires_grad(w0[i])) add_block(t.grad(w0[i]), h * shapes[i].first, 0, x.w0[i]);
                    }
                });
  // The link's exchanges are collectives: the backward must run on every rank (allocating the output's gradient
  // makes the tape run it).
  if (link && t.requires_grad(out)) t.grad(out);
  return out;
}

#define TTT_INSTANTIATE(T)                                                                                         \
  template Var memory_op<T>(Tape<T>&, const MemoryConfig&, const Program&, int64_t, int64_t, Var, Var, Var, Var, Var, \
                            Var, const std::vector<Var>&, const BatchOptions&, const StateLink<T>*);                \
  template std::vector<T> pack_states<T>(const MemoryConfig&, const std::vector<MemoryState<T>>&);                 \
  template std::vector<MemoryState<T>> unpack_states<T>(const MemoryConfig&, const std::vector<T>&, int64_t);
TTT_INSTANTIATE(float)
TTT_INSTANTIATE(double)
#undef TTT_INSTANTIATE

}  // namespace ttt::engine
