#include "ttt/runner.h"

#include <omp.h>

#include <algorithm>
#include <string>

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
  sv.updated = s.updated;
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
  if (in.momentum0.empty()) return;
  TTT_CHECK(cfg.momentum, "an entry momentum was given to a memory without momentum");
  TTT_CHECK(in.momentum0.size() == shapes.size(), "entry momentum: " << in.momentum0.size() << " matrices, expected "
                                                                    << shapes.size());
  for (size_t i = 0; i < shapes.size(); ++i)
    TTT_CHECK(in.momentum0[i].rows == shapes[i].first && in.momentum0[i].cols == shapes[i].second,
              "entry momentum " << names[i] << " is " << in.momentum0[i].shape() << ", expected [" << shapes[i].first
                                << "," << shapes[i].second << "]");
  check_chain_entry(cfg, prog);
}

void check_chain_entry(const MemoryConfig& cfg, const Program& prog) {
  // A reset returns to W0 and zero momentum, and a weight norm reads W0 in every update: either would need the
  // learned W0 besides the entry state.
  TTT_CHECK(cfg.weight_norm == WeightNorm::None, "a memory chain that starts from a passed state needs no weight norm");
  for (const auto& op : prog.ops)
    TTT_CHECK(op.kind != OpKind::Reset, "a memory chain that starts from a passed state cannot have resets");
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
MemoryState<T> entry_state(const MemoryConfig& cfg, const SequenceInputs<T>& in) {
  MemoryState<T> s = initial_state(cfg, in.w0);
  if (!in.momentum0.empty()) s.momentum = in.momentum0;
  return s;
}

template <class T>
const MemoryState<T>& exit_state(const SavedStates<T>& saved) {
  TTT_CHECK(!saved.versions.empty(), "exit state: the forward saved no states");
  return saved.versions.back();
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
  s.updated = out.updated;
}

template <class T>
Mat<T> run_forward(const MemoryConfig& cfg, const Program& prog, const SequenceInputs<T>& in, SavedStates<T>* saved) {
  check_inputs(cfg, prog, in);
  Mat<T> o(prog.num_tokens, cfg.d);
  MemoryState<T> s = entry_state(cfg, in);
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

namespace {

// The reverse pass over the saved states versions[0 .. prog.num_updates()] (a range of a SavedStates).
template <class T>
SequenceGrads<T> backward_impl(const MemoryConfig& cfg, const Program& prog, const SequenceInputs<T>& in,
                               const MemoryState<T>* versions, int64_t num_versions, const Mat<T>& grad_o,
                               const MemoryState<T>* grad_exit) {
  check_inputs(cfg, prog, in);
  TTT_CHECK(grad_o.rows == prog.num_tokens && grad_o.cols == cfg.d,
            "grad_o is " << grad_o.shape() << ", expected [" << prog.num_tokens << "," << cfg.d << "]");
  TTT_CHECK(num_versions == prog.num_updates() + 1,
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
  if (grad_exit) {
    check_chain_entry(cfg, prog);
    TTT_CHECK(grad_exit->weights.size() == ds.weights.size() && grad_exit->momentum.size() == ds.momentum.size(),
              "exit state adjoint: " << grad_exit->weights.size() << " weights and " << grad_exit->momentum.size()
                                     << " momentum matrices, expected " << ds.weights.size() << " and "
                                     << ds.momentum.size());
    for (size_t j = 0; j < ds.weights.size(); ++j) {
      TTT_CHECK(grad_exit->weights[j].same_shape(ds.weights[j]), "exit state adjoint: weight " << j << " is "
                                                                     << grad_exit->weights[j].shape());
      ds.weights[j] = grad_exit->weights[j];
    }
    for (size_t j = 0; j < ds.momentum.size(); ++j) {
      TTT_CHECK(grad_exit->momentum[j].same_shape(ds.momentum[j]), "exit state adjoint: momentum " << j << " is "
                                                                       << grad_exit->momentum[j].shape());
      ds.momentum[j] = grad_exit->momentum[j];
    }
  }
  std::vector<char> claimed(size_t(n), 0);  // a later apply already owns this token's output

  for (int64_t i = int64_t(prog.ops.size()) - 1; i >= 0; --i) {
    const ProgramOp& op = prog.ops[size_t(i)];
    const MemoryState<T>& s = versions[version[size_t(i)]];
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
  // The initial state is W0 itself (the entry weights), with the entry momentum.
  for (size_t j = 0; j < ds.weights.size(); ++j) add_into(g.w0[j], ds.weights[j]);
  g.momentum0 = std::move(ds.momentum);
  return g;
}

// Rows [b, e) of every per-token input of one sequence-head.
template <class T>
SequenceInputs<T> slice_inputs(const MemoryConfig& cfg, const SequenceInputs<T>& in, int64_t b, int64_t e) {
  SequenceInputs<T> out;
  out.w0 = in.w0;
  out.q = rows(in.q, b, e);
  out.k = rows(in.k, b, e);
  out.v = rows(in.v, b, e);
  out.rates = rows(in.rates, b, e);
  if (cfg.momentum) out.momentum_gate = rows(in.momentum_gate, b, e);
  if (cfg.decay) out.decay_gate = rows(in.decay_gate, b, e);
  return out;
}

template <class T>
void copy_rows(Mat<T>& dst, int64_t b, const Mat<T>& src) {
  std::copy(src.data.begin(), src.data.end(), dst.row(b));
}

// Threads only pay off above a few tens of thousands of multiply-adds per batch; below that (tests,
// finite differences) the items run on the calling thread, which is also immune to oversubscribed cores.
bool worth_threads(const MemoryConfig& cfg, int64_t items, int64_t tokens) {
  return items > 1 && tokens * cfg.d * std::max(cfg.d, cfg.dh) >= (int64_t(1) << 15);
}

void raise_errors(const std::vector<std::string>& errors, int64_t per_item, int64_t shards) {
  for (size_t i = 0; i < errors.size(); ++i) {
    if (errors[i].empty()) continue;
    const int64_t b = int64_t(i) / per_item;
    if (shards > 1) TTT_FAIL("sequence-head " << b << ", shard " << int64_t(i) % per_item << ": " << errors[i]);
    TTT_FAIL("sequence-head " << b << ": " << errors[i]);
  }
}

}  // namespace

template <class T>
SequenceGrads<T> run_backward(const MemoryConfig& cfg, const Program& prog, const SequenceInputs<T>& in,
                              const SavedStates<T>& saved, const Mat<T>& grad_o, const MemoryState<T>* grad_exit) {
  return backward_impl(cfg, prog, in, saved.versions.data(), int64_t(saved.versions.size()), grad_o, grad_exit);
}

std::vector<ProgramShard> split_shards(const Program& prog) {
  std::vector<ProgramShard> shards(1);
  int64_t version = 0;
  for (const auto& op : prog.ops) {
    if (op.kind == OpKind::Reset) {
      ++version;
      shards.emplace_back();
      shards.back().first_version = version;
      continue;
    }
    ProgramShard& sh = shards.back();
    if (sh.program.ops.empty()) {
      sh.begin = op.begin;
      sh.end = op.end;
    } else {
      sh.begin = std::min(sh.begin, op.begin);
      sh.end = std::max(sh.end, op.end);
    }
    sh.program.ops.push_back(op);
    if (op.kind == OpKind::Update) {
      ++version;
      ++sh.num_versions;
    }
  }
  // Splittable iff at least two shards do something and their token hulls do not overlap.
  std::vector<std::pair<int64_t, int64_t>> hulls;
  for (const auto& sh : shards)
    if (!sh.program.ops.empty()) hulls.push_back({sh.begin, sh.end});
  if (hulls.size() < 2) return {};
  std::sort(hulls.begin(), hulls.end());
  for (size_t i = 1; i < hulls.size(); ++i)
    if (hulls[i].first < hulls[i - 1].second) return {};
  for (auto& sh : shards) {
    sh.program.num_tokens = sh.end - sh.begin;
    for (auto& op : sh.program.ops) {
      op.begin -= sh.begin;
      op.end -= sh.begin;
    }
  }
  return shards;
}

template <class T>
std::vector<Mat<T>> run_forward_batch(const MemoryConfig& cfg, const Program& prog,
                                      const std::vector<SequenceInputs<T>>& in, std::vector<SavedStates<T>>* saved,
                                      const BatchOptions& opt) {
  const int64_t nb = int64_t(in.size());
  std::vector<Mat<T>> out(static_cast<size_t>(nb));
  if (saved) saved->assign(size_t(nb), SavedStates<T>());
  const std::vector<ProgramShard> shards = opt.split_shards ? split_shards(prog) : std::vector<ProgramShard>();
  if (shards.empty()) {
    std::vector<std::string> errors(static_cast<size_t>(nb));
    const bool par = worth_threads(cfg, nb, nb * prog.num_tokens);
#pragma omp parallel for schedule(dynamic, 1) if (par)
    for (int64_t b = 0; b < nb; ++b) {
      try {
        out[size_t(b)] = run_forward(cfg, prog, in[size_t(b)], saved ? &(*saved)[size_t(b)] : nullptr);
      } catch (const std::exception& e) {
        errors[size_t(b)] = e.what();
      }
    }
    raise_errors(errors, 1, 1);
    return out;
  }
  // Items (sequence-head b, shard j), b-major; shards without operations are skipped.
  const int64_t ns = int64_t(shards.size());
  {
    std::vector<std::string> errors(static_cast<size_t>(nb));
    for (int64_t b = 0; b < nb; ++b) {
      try {
        check_inputs(cfg, prog, in[size_t(b)]);
      } catch (const std::exception& e) {
        errors[size_t(b)] = e.what();
      }
    }
    raise_errors(errors, 1, 1);
  }
  std::vector<Mat<T>> part(static_cast<size_t>(nb * ns));
  std::vector<SavedStates<T>> part_saved(saved ? static_cast<size_t>(nb * ns) : 0);
  std::vector<std::string> errors(static_cast<size_t>(nb * ns));
  const bool par = worth_threads(cfg, nb * ns, nb * prog.num_tokens);
#pragma omp parallel for schedule(dynamic, 1) if (par)
  for (int64_t i = 0; i < nb * ns; ++i) {
    const ProgramShard& sh = shards[size_t(i % ns)];
    if (sh.program.ops.empty()) continue;
    try {
      part[size_t(i)] = run_forward(cfg, sh.program, slice_inputs(cfg, in[size_t(i / ns)], sh.begin, sh.end),
                                    saved ? &part_saved[size_t(i)] : nullptr);
    } catch (const std::exception& e) {
      errors[size_t(i)] = e.what();
    }
  }
  raise_errors(errors, ns, ns);
  for (int64_t b = 0; b < nb; ++b) {
    out[size_t(b)] = Mat<T>(prog.num_tokens, cfg.d);
    if (saved) (*saved)[size_t(b)].versions.reserve(size_t(prog.num_updates() + 1));
    for (int64_t j = 0; j < ns; ++j) {
      const ProgramShard& sh = shards[size_t(j)];
      const size_t i = size_t(b * ns + j);
      if (!sh.program.ops.empty()) copy_rows(out[size_t(b)], sh.begin, part[i]);
      if (!saved) continue;
      auto& versions = (*saved)[size_t(b)].versions;
      if (sh.program.ops.empty()) {
        versions.push_back(initial_state(cfg, in[size_t(b)].w0));
      } else {
        for (auto& s : part_saved[i].versions) versions.push_back(std::move(s));
      }
    }
  }
  return out;
}

template <class T>
std::vector<SequenceGrads<T>> run_backward_batch(const MemoryConfig& cfg, const Program& prog,
                                                 const std::vector<SequenceInputs<T>>& in,
                                                 const std::vector<SavedStates<T>>& saved,
                                                 const std::vector<Mat<T>>& grad_o, const BatchOptions& opt,
                                                 const std::vector<MemoryState<T>>* grad_exit) {
  const int64_t nb = int64_t(in.size());
  TTT_CHECK(saved.size() == in.size() && grad_o.size() == in.size() && (!grad_exit || grad_exit->size() == in.size()),
            "batched backward: batch sizes differ");
  std::vector<SequenceGrads<T>> out(static_cast<size_t>(nb));
  const std::vector<ProgramShard> shards = opt.split_shards ? split_shards(prog) : std::vector<ProgramShard>();
  if (shards.empty()) {
    std::vector<std::string> errors(static_cast<size_t>(nb));
    const bool par = worth_threads(cfg, nb, nb * prog.num_tokens);
#pragma omp parallel for schedule(dynamic, 1) if (par)
    for (int64_t b = 0; b < nb; ++b) {
      try {
        out[size_t(b)] = run_backward(cfg, prog, in[size_t(b)], saved[size_t(b)], grad_o[size_t(b)],
                                      grad_exit ? &(*grad_exit)[size_t(b)] : nullptr);
      } catch (const std::exception& e) {
        errors[size_t(b)] = e.what();
      }
    }
    raise_errors(errors, 1, 1);
    return out;
  }
  const int64_t ns = int64_t(shards.size());
  if (grad_exit) check_chain_entry(cfg, prog);  // shards come from resets, which a passed state excludes
  {
    std::vector<std::string> errors(static_cast<size_t>(nb));
    for (int64_t b = 0; b < nb; ++b) {
      try {
        check_inputs(cfg, prog, in[size_t(b)]);
        const Mat<T>& go = grad_o[size_t(b)];
        TTT_CHECK(go.rows == prog.num_tokens && go.cols == cfg.d,
                  "grad_o is " << go.shape() << ", expected [" << prog.num_tokens << "," << cfg.d << "]");
        TTT_CHECK(int64_t(saved[size_t(b)].versions.size()) == prog.num_updates() + 1,
                  "saved states do not match the program (run the forward with saving on)");
      } catch (const std::exception& e) {
        errors[size_t(b)] = e.what();
      }
    }
    raise_errors(errors, 1, 1);
  }
  std::vector<SequenceGrads<T>> part(static_cast<size_t>(nb * ns));
  std::vector<std::string> errors(static_cast<size_t>(nb * ns));
  const bool par = worth_threads(cfg, nb * ns, nb * prog.num_tokens);
#pragma omp parallel for schedule(dynamic, 1) if (par)
  for (int64_t i = 0; i < nb * ns; ++i) {
    const ProgramShard& sh = shards[size_t(i % ns)];
    if (sh.program.ops.empty()) continue;
    const int64_t b = i / ns;
    try {
      part[size_t(i)] = backward_impl(cfg, sh.program, slice_inputs(cfg, in[size_t(b)], sh.begin, sh.end),
                                      saved[size_t(b)].versions.data() + sh.first_version, sh.num_versions,
                                      rows(grad_o[size_t(b)], sh.begin, sh.end), static_cast<const MemoryState<T>*>(nullptr));
    } catch (const std::exception& e) {
      errors[size_t(i)] = e.what();
    }
  }
  raise_errors(errors, ns, ns);
  // Fixed-order assembly. Token rows: each shard owns its hull. W0: summed over the shards from the last
  // to the first, the order in which the sequential backward meets them.
  const int64_t n = prog.num_tokens;
  for (int64_t b = 0; b < nb; ++b) {
    SequenceGrads<T>& g = out[size_t(b)];
    for (auto& w : in[size_t(b)].w0) g.w0.emplace_back(w.rows, w.cols);
    g.q = Mat<T>(n, cfg.d);
    g.k = Mat<T>(n, cfg.d);
    g.v = Mat<T>(n, cfg.d);
    g.rates = Mat<T>(n, cfg.rate_columns);
    if (cfg.momentum) g.momentum_gate = Mat<T>(n, 1);
    if (cfg.decay) g.decay_gate = Mat<T>(n, 1);
    for (int64_t j = ns - 1; j >= 0; --j) {
      const ProgramShard& sh = shards[size_t(j)];
      if (sh.program.ops.empty()) continue;
      const SequenceGrads<T>& x = part[size_t(b * ns + j)];
      for (size_t w = 0; w < g.w0.size(); ++w) add_into(g.w0[w], x.w0[w]);
      copy_rows(g.q, sh.begin, x.q);
      copy_rows(g.k, sh.begin, x.k);
      copy_rows(g.v, sh.begin, x.v);
      copy_rows(g.rates, sh.begin, x.rates);
      if (cfg.momentum) copy_rows(g.momentum_gate, sh.begin, x.momentum_gate);
      if (cfg.decay) copy_rows(g.decay_gate, sh.begin, x.decay_gate);
    }
  }
  return out;
}

#define TTT_INSTANTIATE(T)                                                                                         \
  template void check_inputs<T>(const MemoryConfig&, const Program&, const SequenceInputs<T>&);                    \
  template MemoryState<T> initial_state<T>(const MemoryConfig&, const std::vector<Mat<T>>&);                       \
  template MemoryState<T> entry_state<T>(const MemoryConfig&, const SequenceInputs<T>&);                           \
  template const MemoryState<T>& exit_state<T>(const SavedStates<T>&);                                             \
  template Mat<T> state_apply<T>(const MemoryConfig&, const MemoryState<T>&, const std::vector<Mat<T>>&,          \
                                 const Mat<T>&);                                                                   \
  template void state_update<T>(const MemoryConfig&, MemoryState<T>&, const std::vector<Mat<T>>&, const Mat<T>&,  \
                                const Mat<T>&, const Mat<T>&, const Mat<T>&, const Mat<T>&);                       \
  template Mat<T> run_forward<T>(const MemoryConfig&, const Program&, const SequenceInputs<T>&, SavedStates<T>*);  \
  template SequenceGrads<T> run_backward<T>(const MemoryConfig&, const Program&, const SequenceInputs<T>&,         \
                                            const SavedStates<T>&, const Mat<T>&, const MemoryState<T>*);          \
  template std::vector<Mat<T>> run_forward_batch<T>(const MemoryConfig&, const Program&,                           \
                                                    const std::vector<SequenceInputs<T>>&,                         \
                                                    std::vector<SavedStates<T>>*, const BatchOptions&);            \
  template std::vector<SequenceGrads<T>> run_backward_batch<T>(                                                    \
      const MemoryConfig&, const Program&, const std::vector<SequenceInputs<T>>&,                                  \
      const std::vector<SavedStates<T>>&, const std::vector<Mat<T>>&, const BatchOptions&,                        \
      const std::vector<MemoryState<T>>*);
TTT_INSTANTIATE(float)
TTT_INSTANTIATE(double)
#undef TTT_INSTANTIATE

}  // namespace ttt::engine
