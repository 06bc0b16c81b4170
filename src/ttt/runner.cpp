#include "ttt/runner.h"

#include <omp.h>

namespace ttt::engine {

using ag::Mat;
using ag::Tape;
using ag::Var;

namespace {

template <class T>
Mat<T> rows(const Mat<T>& m, int64_t b, int64_t e) {
  Mat<T> out(e - b, m.cols);
  std::copy(m.row(b), m.row(b) + (e - b) * m.cols, out.data.begin());
  return out;
}

template <class T>
void add_rows(Mat<T>& dst, int64_t b, const Mat<T>& src) {
  T* p = dst.row(b);
  for (size_t i = 0; i < src.data.size(); ++i) p[i] += src.data[i];
}

template <class T>
void add_into(Mat<T>& dst, const Mat<T>& src) {
  for (size_t i = 0; i < src.data.size(); ++i) dst.data[i] += src.data[i];
}

template <class T>
Mat<T> grad_or_zero(Tape<T>& t, Var v) {
  if (t.has_grad(v)) return t.grad(v);
  return Mat<T>(t.val(v).rows, t.val(v).cols);
}

// Leaves of a state (and of the initial weights) on a tape.
template <class T>
StateVars state_leaves(Tape<T>& t, const MemoryState<T>& s, bool rg) {
  StateVars sv;
  for (auto& w : s.weights) sv.weights.push_back(t.leaf(w, rg));
  for (auto& m : s.momentum) sv.momentum.push_back(t.leaf(m, rg));
  return sv;
}
template <class T>
std::vector<Var> init_leaves(Tape<T>& t, const MemoryConfig& cfg, const std::vector<Mat<T>>& w0, bool rg) {
  std::vector<Var> out;
  if (cfg.weight_norm == WeightNorm::None) return out;  // W0 enters an update only through the norm targets
  for (auto& w : w0) out.push_back(t.leaf(w, rg));
  return out;
}

template <class T>
UpdateVars update_leaves(Tape<T>& t, const MemoryConfig& cfg, const Mat<T>& k, const Mat<T>& v, const Mat<T>& rates,
                         const Mat<T>& mg, const Mat<T>& dg, bool rg) {
  UpdateVars u;
  u.k = t.leaf(k, rg);
  u.v = t.leaf(v, rg);
  u.rates = t.leaf(rates, rg);
  if (cfg.momentum) u.momentum_gate = t.leaf(mg, rg);
  if (cfg.decay) u.decay_gate = t.leaf(dg, rg);
  return u;
}

}  // namespace

template <class T>
void check_inputs(const MemoryConfig& cfg, const Program& prog, const SequenceInputs<T>& in) {
  cfg.validate();
  prog.validate();
  const int64_t n = prog.num_tokens;
  auto shapes = cfg.weight_shapes();
  auto names = cfg.weight_names();
  TTT_CHECK(in.w0.size() == shapes.size(), "memory " << family_name(cfg.family) << " needs " << shapes.size()
                                                      << " initial weights, got " << in.w0.size());
  for (size_t i = 0; i < shapes.size(); ++i)
    TTT_CHECK(in.w0[i].rows == shapes[i].first && in.w0[i].cols == shapes[i].second,
              "initial weight " << names[i] << " is " << in.w0[i].shape() << ", expected [" << shapes[i].first << ","
                                << shapes[i].second << "]");
  auto check = [&](const Mat<T>& m, int64_t c, const char* name) {
    TTT_CHECK(m.rows == n && m.cols == c, name << " is " << m.shape() << ", expected [" << n << "," << c << "]");
  };
  check(in.q, cfg.d, "q");
  check(in.k, cfg.d, "k");
  check(in.v, cfg.d, "v");
  check(in.rates, cfg.rate_columns, "rates");
  if (cfg.momentum) check(in.momentum_gate, 1, "momentum gate");
  if (cfg.decay) check(in.decay_gate, 1, "decay gate");
}

template <class T>
MemoryState<T> initial_state(const MemoryConfig& cfg, const std::vector<Mat<T>>& w0) {
  MemoryState<T> s;
  s.weights = w0;
  if (cfg.momentum)
    for (auto& w : w0) s.momentum.emplace_back(w.rows, w.cols);
  return s;
}

template <class T>
Mat<T> state_apply(const MemoryConfig& cfg, const MemoryState<T>& s, const std::vector<Mat<T>>& w0, const Mat<T>& q) {
  Tape<T> t;
  StateVars sv = state_leaves(t, s, false);
  std::vector<Var> wi = init_leaves(t, cfg, w0, false);
  Var o = record_apply(t, cfg, effective_weights(t, cfg, sv, wi), t.leaf(q));
  return t.val(o);
}

template <class T>
void state_update(const MemoryConfig& cfg, MemoryState<T>& s, const std::vector<Mat<T>>& w0, const Mat<T>& k,
                  const Mat<T>& v, const Mat<T>& rates, const Mat<T>& mg, const Mat<T>& dg) {
  Tape<T> t;
  StateVars sv = state_leaves(t, s, false);
  std::vector<Var> wi = init_leaves(t, cfg, w0, false);
  StateVars out = record_update(t, cfg, sv, wi, update_leaves(t, cfg, k, v, rates, mg, dg, false));
  for (size_t i = 0; i < out.weights.size(); ++i) s.weights[i] = t.val(out.weights[i]);
  for (size_t i = 0; i < out.momentum.size(); ++i) s.momentum[i] = t.val(out.momentum[i]);
}

template <class T>
Mat<T> run_forward(const MemoryConfig& cfg, const Program& prog, const SequenceInputs<T>& in, SavedStates<T>* saved) {
  check_inputs(cfg, prog, in);
  Mat<T> o(prog.num_tokens, cfg.d);
  MemoryState<T> s = initial_state(cfg, in.w0);
  if (saved) saved->versions = {s};
  for (const auto& op : prog.ops) {
    switch (op.kind) {
      case OpKind::Apply: {
        Mat<T> y = state_apply(cfg, s, in.w0, rows(in.q, op.begin, op.end));
        std::copy(y.data.begin(), y.data.end(), o.row(op.begin));
        break;
      }
      case OpKind::Update:
        state_update(cfg, s, in.w0, rows(in.k, op.begin, op.end), rows(in.v, op.begin, op.end),
                     rows(in.rates, op.begin, op.end),
                     cfg.momentum ? rows(in.momentum_gate, op.begin, op.end) : Mat<T>(),
                     cfg.decay ? rows(in.decay_gate, op.begin, op.end) : Mat<T>());
        if (saved) saved->versions.push_back(s);
        break;
      case OpKind::Reset:
        s = initial_state(cfg, in.w0);
        if (saved) saved->versions.push_back(s);
        break;
    }
  }
  return o;
}

template <class T>
SequenceGrads<T> run_backward(const MemoryConfig& cfg, const Program& prog, const SequenceInputs<T>& in,
                              const SavedStates<T>& saved, const Mat<T>& grad_o) {
  check_inputs(cfg, prog, in);
  TTT_CHECK(grad_o.rows == prog.num_tokens && grad_o.cols == cfg.d,
            "grad_o is " << grad_o.shape() << ", expected [" << prog.num_tokens << "," << cfg.d << "]");
  TTT_CHECK(int64_t(saved.versions.size()) == prog.num_updates() + 1,
            "saved states do not match the program (run the forward with saving on)");
  const int64_t n = prog.num_tokens;
  SequenceGrads<T> g;
  for (auto& w : in.w0) g.w0.emplace_back(w.rows, w.cols);
  g.q = Mat<T>(n, cfg.d);
  g.k = Mat<T>(n, cfg.d);
  g.v = Mat<T>(n, cfg.d);
  g.rates = Mat<T>(n, cfg.rate_columns);
  if (cfg.momentum) g.momentum_gate = Mat<T>(n, 1);
  if (cfg.decay) g.decay_gate = Mat<T>(n, 1);

  // The state version each op starts from.
  std::vector<int64_t> version(prog.ops.size());
  int64_t ver = 0;
  for (size_t i = 0; i < prog.ops.size(); ++i) {
    version[i] = ver;
    if (prog.ops[i].kind != OpKind::Apply) ++ver;
  }

  // Cotangents of the current state (after the op being processed).
  MemoryState<T> ds = initial_state(cfg, in.w0);
  for (auto& w : ds.weights) std::fill(w.data.begin(), w.data.end(), T(0));
  std::vector<char> claimed(size_t(n), 0);  // a later apply already owns this token's output

  for (int64_t i = int64_t(prog.ops.size()) - 1; i >= 0; --i) {
    const ProgramOp& op = prog.ops[size_t(i)];
    const MemoryState<T>& s = saved.versions[size_t(version[size_t(i)])];
    if (op.kind == OpKind::Reset) {
      for (size_t j = 0; j < ds.weights.size(); ++j) {
        add_into(g.w0[j], ds.weights[j]);
        std::fill(ds.weights[j].data.begin(), ds.weights[j].data.end(), T(0));
      }
      for (auto& m : ds.momentum) std::fill(m.data.begin(), m.data.end(), T(0));
      continue;
    }
    Tape<T> t;
    StateVars sv = state_leaves(t, s, true);
    std::vector<Var> wi = init_leaves(t, cfg, in.w0, true);
    if (op.kind == OpKind::Apply) {
      Mat<T> go = rows(grad_o, op.begin, op.end);
      bool any = false;
      for (int64_t r = op.begin; r < op.end; ++r) {
        if (claimed[size_t(r)]) std::fill(go.row(r - op.begin), go.row(r - op.begin) + cfg.d, T(0));
        else any = true;
        claimed[size_t(r)] = 1;
      }
      if (!any) continue;
      Var q = t.leaf(rows(in.q, op.begin, op.end), true);
      Var o = record_apply(t, cfg, effective_weights(t, cfg, sv, wi), q);
      t.grad(o) = go;
      t.backward();
      for (size_t j = 0; j < sv.weights.size(); ++j) add_into(ds.weights[j], grad_or_zero(t, sv.weights[j]));
      add_rows(g.q, op.begin, grad_or_zero(t, q));
    } else {  // Update
      UpdateVars u = update_leaves(t, cfg, rows(in.k, op.begin, op.end), rows(in.v, op.begin, op.end),
                                   rows(in.rates, op.begin, op.end),
                                   cfg.momentum ? rows(in.momentum_gate, op.begin, op.end) : Mat<T>(),
                                   cfg.decay ? rows(in.decay_gate, op.begin, op.end) : Mat<T>(), true);
      StateVars out = record_update(t, cfg, sv, wi, u);
      for (size_t j = 0; j < out.weights.size(); ++j) t.grad(out.weights[j]) = ds.weights[j];
      for (size_t j = 0; j < out.momentum.size(); ++j) add_into(t.grad(out.momentum[j]), ds.momentum[j]);
      t.backward();
      for (size_t j = 0; j < sv.weights.size(); ++j) ds.weights[j] = grad_or_zero(t, sv.weights[j]);
      for (size_t j = 0; j < sv.momentum.size(); ++j) ds.momentum[j] = grad_or_zero(t, sv.momentum[j]);
      add_rows(g.k, op.begin, grad_or_zero(t, u.k));
      add_rows(g.v, op.begin, grad_or_zero(t, u.v));
      add_rows(g.rates, op.begin, grad_or_zero(t, u.rates));
      if (cfg.momentum) add_rows(g.momentum_gate, op.begin, grad_or_zero(t, u.momentum_gate));
      if (cfg.decay) add_rows(g.decay_gate, op.begin, grad_or_zero(t, u.decay_gate));
    }
    for (size_t j = 0; j < wi.size(); ++j) add_into(g.w0[j], grad_or_zero(t, wi[j]));
  }
  // The initial state is W0 itself.
  for (size_t j = 0; j < ds.weights.size(); ++j) add_into(g.w0[j], ds.weights[j]);
  return g;
}

template <class T>
std::vector<Mat<T>> run_forward_batch(const MemoryConfig& cfg, const Program& prog,
                                      const std::vector<SequenceInputs<T>>& in, std::vector<SavedStates<T>>* saved) {
  const int64_t nb = int64_t(in.size());
  std::vector<Mat<T>> out(static_cast<size_t>(nb));
  if (saved) saved->assign(size_t(nb), SavedStates<T>());
  std::vector<std::string> errors(static_cast<size_t>(nb));
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t b = 0; b < nb; ++b) {
    try {
      out[size_t(b)] = run_forward(cfg, prog, in[size_t(b)], saved ? &(*saved)[size_t(b)] : nullptr);
    } catch (const std::exception& e) {
      errors[size_t(b)] = e.what();
    }
  }
  for (int64_t b = 0; b < nb; ++b)
    TTT_CHECK(errors[size_t(b)].empty(), "sequence-head " << b << ": " << errors[size_t(b)]);
  return out;
}

template <class T>
std::vector<SequenceGrads<T>> run_backward_batch(const MemoryConfig& cfg, const Program& prog,
                                                 const std::vector<SequenceInputs<T>>& in,
                                                 const std::vector<SavedStates<T>>& saved,
                                                 const std::vector<Mat<T>>& grad_o) {
  const int64_t nb = int64_t(in.size());
  TTT_CHECK(saved.size() == in.size() && grad_o.size() == in.size(), "batched backward: batch sizes differ");
  std::vector<SequenceGrads<T>> out(static_cast<size_t>(nb));
  std::vector<std::string> errors(static_cast<size_t>(nb));
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t b = 0; b < nb; ++b) {
    try {
      out[size_t(b)] = run_backward(cfg, prog, in[size_t(b)], saved[size_t(b)], grad_o[size_t(b)]);
    } catch (const std::exception& e) {
      errors[size_t(b)] = e.what();
    }
  }
  for (int64_t b = 0; b < nb; ++b)
    TTT_CHECK(errors[size_t(b)].empty(), "sequence-head " << b << ": " << errors[size_t(b)]);
  return out;
}

#define TTT_INSTANTIATE(T)                                                                                         \
  template void check_inputs<T>(const MemoryConfig&, const Program&, const SequenceInputs<T>&);                    \
  template MemoryState<T> initial_state<T>(const MemoryConfig&, const std::vector<Mat<T>>&);                       \
  template Mat<T> state_apply<T>(const MemoryConfig&, const MemoryState<T>&, const std::vector<Mat<T>>&,          \
                                 const Mat<T>&);                                                                   \
  template void state_update<T>(const MemoryConfig&, MemoryState<T>&, const std::vector<Mat<T>>&, const Mat<T>&,  \
                                const Mat<T>&, const Mat<T>&, const Mat<T>&, const Mat<T>&);                       \
  template Mat<T> run_forward<T>(const MemoryConfig&, const Program&, const SequenceInputs<T>&, SavedStates<T>*);  \
  template SequenceGrads<T> run_backward<T>(const MemoryConfig&, const Program&, const SequenceInputs<T>&,         \
                                            const SavedStates<T>&, const Mat<T>&);                                 \
  template std::vector<Mat<T>> run_forward_batch<T>(const MemoryConfig&, const Program&,                           \
                                                    const std::vector<SequenceInputs<T>>&,                         \
                                                    std::vector<SavedStates<T>>*);                                 \
  template std::vector<SequenceGrads<T>> run_backward_batch<T>(                                                    \
      const MemoryConfig&, const Program&, const std::vector<SequenceInputs<T>>&,                                  \
      const std::vector<SavedStates<T>>&, const std::vector<Mat<T>>&);
TTT_INSTANTIATE(float)
TTT_INSTANTIATE(double)
#undef TTT_INSTANTIATE

}  // namespace ttt::engine
