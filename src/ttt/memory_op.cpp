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

template <class T>
Var memory_op(Tape<T>& t, const MemoryConfig& cfg, const Program& prog, int64_t S, int64_t H, Var q, Var k, Var v,
              Var rates, Var momentum_gate, Var decay_gate, const std::vector<Var>& w0, const BatchOptions& batch) {
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
  std::vector<Mat<T>> outs = run_forward_batch(cfg, prog, st->inputs, need_grad ? &st->saved : nullptr, batch);
  Mat<T> o(S * N, H * d);
  for (int64_t s = 0; s < S; ++s)
    for (int64_t h = 0; h < H; ++h) add_block(o, s * N, h * d, outs[size_t(s * H + h)]);

  std::vector<Var> inputs = {q, k, v, rates};
  if (cfg.momentum) inputs.push_back(momentum_gate);
  if (cfg.decay) inputs.push_back(decay_gate);
  for (Var w : w0) inputs.push_back(w);
  return t.make(std::move(o), inputs,
                [cfg, prog, S, H, q, k, v, rates, momentum_gate, decay_gate, w0, st, batch](Tape<T>& t, const Mat<T>& g) {
                  const int64_t N = prog.num_tokens, d = cfg.d, R = cfg.rate_columns;
                  std::vector<Mat<T>> go(static_cast<size_t>(S * H));
                  for (int64_t s = 0; s < S; ++s)
                    for (int64_t h = 0; h < H; ++h) go[size_t(s * H + h)] = block(g, s * N, N, h * d, d);
                  std::vector<SequenceGrads<T>> gr = run_backward_batch(cfg, prog, st->inputs, st->saved, go, batch);
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
                      for (size_t i = 0; i < w0.size(); ++i)
                        if (t.requires_grad(w0[i])) add_block(t.grad(w0[i]), h * shapes[i].first, 0, x.w0[i]);
                    }
                });
}

template Var memory_op<float>(Tape<float>&, const MemoryConfig&, const Program&, int64_t, int64_t, Var, Var, Var, Var,
                              Var, Var, const std::vector<Var>&, const BatchOptions&);
template Var memory_op<double>(Tape<double>&, const MemoryConfig&, const Program&, int64_t, int64_t, Var, Var, Var,
                               Var, Var, Var, const std::vector<Var>&, const BatchOptions&);

}  // namespace ttt::engine
