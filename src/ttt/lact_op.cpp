#include "ttt/lact_op.h"

#include <set>

#include "ttt/runner.h"

namespace ttt::engine {

MemoryConfig lact_memory_config(int64_t d, int64_t dh, bool momentum, bool muon, WeightNorm weight_norm) {
  MemoryConfig cfg;
  cfg.family = Family::SwiGLU;
  cfg.loss = Loss::Dot;
  cfg.d = d;
  cfg.dh = dh;
  cfg.momentum = momentum;
  cfg.muon = muon;
  cfg.weight_norm = weight_norm;
  cfg.rate_columns = 3;
  return cfg;
}

namespace {

const std::set<std::string> kKnown = {"w0", "w1", "w2", "q", "k", "v", "lr0", "lr1", "lr2", "momentum", "grad_o"};

template <class T>
SafeTensors run_lact(const SafeTensors& st, const LactOpOptions& opt) {
  const Tensor& q = st.get("q");
  const int64_t B = q.size(0), T_ = q.size(1), d = q.size(2);
  const int64_t dh = st.get("w0").size(1);
  const bool momentum = st.has("momentum");
  const bool want_grad = st.has("grad_o");

  const MemoryConfig cfg = lact_memory_config(d, dh, momentum, opt.muon, opt.weight_norm);
  Program prog;
  if (opt.program == "causal") prog = causal_program(T_, opt.chunk);
  else if (opt.program == "bidirectional") prog = bidirectional_program(T_, opt.chunk);
  else TTT_FAIL("unknown program '" << opt.program << "' (expected causal or bidirectional)");

  std::vector<SequenceInputs<T>> in(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    auto& x = in[size_t(b)];
    x.w0 = {ag::mat_from<T>(st.get("w0"), dh, d, b * dh * d), ag::mat_from<T>(st.get("w1"), d, dh, b * d * dh),
            ag::mat_from<T>(st.get("w2"), dh, d, b * dh * d)};
    x.q = ag::mat_from<T>(q, T_, d, b * T_ * d);
    x.k = ag::mat_from<T>(st.get("k"), T_, d, b * T_ * d);
    x.v = ag::mat_from<T>(st.get("v"), T_, d, b * T_ * d);
    x.rates = ag::Mat<T>(T_, 3);
    const char* names[3] = {"lr0", "lr1", "lr2"};
    for (int j = 0; j < 3; ++j) {
      ag::Mat<T> r = ag::mat_from<T>(st.get(names[j]), T_, 1, b * T_);
      for (int64_t t = 0; t < T_; ++t) x.rates(t, j) = r.data[size_t(t)];
    }
    if (momentum) x.momentum_gate = ag::mat_from<T>(st.get("momentum"), T_, 1, b * T_);
  }
  std::vector<SavedStates<T>> saved;
  std::vector<ag::Mat<T>> o = run_forward_batch(cfg, prog, in, want_grad ? &saved : nullptr);

  const DType dt = dtype_of<T>::value;
  auto pack = [&](auto get, Shape shape) {
    Tensor t = Tensor::empty(shape, dt);
    T* p = t.data<T>();
    const int64_t per = shape_numel(shape) / B;
    for (int64_t b = 0; b < B; ++b) {
      const ag::Mat<T>& m = get(b);
      std::copy(m.data.begin(), m.data.end(), p + b * per);
    }
    return t;
  };
  SafeTensors out;
  out.add("o", pack([&](int64_t b) -> const ag::Mat<T>& { return o[size_t(b)]; }, {B, T_, d}));
  if (!want_grad) return out;

  std::vector<ag::Mat<T>> go(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) go[size_t(b)] = ag::mat_from<T>(st.get("grad_o"), T_, d, b * T_ * d);
  std::vector<SequenceGrads<T>> g = run_backward_batch(cfg, prog, in, saved, go);
  out.add("grad_w0", pack([&](int64_t b) -> const ag::Mat<T>& { return g[size_t(b)].w0[0]; }, {B, dh, d}));
  out.add("grad_w1", pack([&](int64_t b) -> const ag::Mat<T>& { return g[size_t(b)].w0[1]; }, {B, d, dh}));
  out.add("grad_w2", pack([&](int64_t b) -> const ag::Mat<T>& { return g[size_t(b)].w0[2]; }, {B, dh, d}));
  out.add("grad_q", pack([&](int64_t b) -> const ag::Mat<T>& { return g[size_t(b)].q; }, {B, T_, d}));
  out.add("grad_k", pack([&](int64_t b) -> const ag::Mat<T>& { return g[size_t(b)].k; }, {B, T_, d}));
  out.add("grad_v", pack([&](int64_t b) -> const ag::Mat<T>& { return g[size_t(b)].v; }, {B, T_, d}));
  for (int j = 0; j < 3; ++j) {
    std::vector<ag::Mat<T>> col(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) {
      col[size_t(b)] = ag::Mat<T>(T_, 1);
      for (int64_t t = 0; t < T_; ++t) col[size_t(b)].data[size_t(t)] = g[size_t(b)].rates(t, j);
    }
    out.add("grad_lr" + std::to_string(j), pack([&](int64_t b) -> const ag::Mat<T>& { return col[size_t(b)]; }, {B, T_}));
  }
  if (momentum)
    out.add("grad_momentum", pack([&](int64_t b) -> const ag::Mat<T>& { return g[size_t(b)].momentum_gate; }, {B, T_}));
  // Every input gets a gradient of L = sum(o * grad_o); for grad_o itself that is o.
  out.add("grad_grad_o", out.get("o").clone());
  return out;
}

class CpuBackend final : public OpBackend {
 public:
  const char* name() const override { return "cpu"; }
  SafeTensors lact(const SafeTensors& st, const LactOpOptions& opt) override {
    const LactShapes sh = validate_lact_inputs(st, opt);
    return sh.dtype == DType::F64 ? run_lact<double>(st, opt) : run_lact<float>(st, opt);
  }
};

}  // namespace

LactShapes validate_lact_inputs(const SafeTensors& st, const LactOpOptions& opt) {
  for (auto& [name, t] : st.tensors)
    TTT_CHECK(kKnown.count(name), "unexpected input tensor '" << name << "' (" << t.describe()
                                                              << "); expected w0, w1, w2, q, k, v, lr0, lr1, lr2, "
                                                                 "optional momentum and grad_o");
  for (const char* n : {"w0", "w1", "w2", "q", "k", "v", "lr0", "lr1", "lr2"})
    TTT_CHECK(st.has(n), "missing input tensor '" << n << "'");
  const Tensor& q = st.get("q");
  TTT_CHECK(q.dim() == 3, "q must be [B,T,d], got " << q.describe());
  LactShapes sh;
  sh.B = q.size(0), sh.T = q.size(1), sh.d = q.size(2);
  TTT_CHECK(sh.B > 0 && sh.T > 0 && sh.d > 0, "q has an empty dimension: " << q.describe());
  const Tensor& w0 = st.get("w0");
  TTT_CHECK(w0.dim() == 3, "w0 must be [B,dh,d], got " << w0.describe());
  sh.dh = w0.size(1);
  TTT_CHECK(sh.dh > 0, "w0 has an empty dimension: " << w0.describe());
  check_shape(w0, {sh.B, sh.dh, sh.d}, "w0");
  check_shape(st.get("w1"), {sh.B, sh.d, sh.dh}, "w1");
  check_shape(st.get("w2"), {sh.B, sh.dh, sh.d}, "w2");
  check_shape(st.get("k"), {sh.B, sh.T, sh.d}, "k");
  check_shape(st.get("v"), {sh.B, sh.T, sh.d}, "v");
  for (const char* n : {"lr0", "lr1", "lr2"}) check_shape(st.get(n), {sh.B, sh.T}, n);
  sh.momentum = st.has("momentum");
  sh.grad = st.has("grad_o");
  if (sh.momentum) check_shape(st.get("momentum"), {sh.B, sh.T}, "momentum");
  if (sh.grad) check_shape(st.get("grad_o"), {sh.B, sh.T, sh.d}, "grad_o");
  sh.dtype = q.dtype();
  TTT_CHECK(sh.dtype == DType::F64 || sh.dtype == DType::F32,
            "inputs must be F64 or F32; q is " << q.describe());
  for (auto& [name, t] : st.tensors) {
    TTT_CHECK(t.dtype() == sh.dtype, "all inputs must share one dtype: q is " << dtype_name(sh.dtype) << " but '"
                                                                            << name << "' is " << t.describe());
    TTT_CHECK(t.all_finite(), "input '" << name << "' contains NaN or Inf");
  }
  TTT_CHECK(opt.chunk > 0, "--chunk must be positive, got " << opt.chunk);
  TTT_CHECK(opt.program == "causal" || opt.program == "bidirectional",
            "unknown program '" << opt.program << "' (expected causal or bidirectional)");
  return sh;
}

OpBackend& cpu_backend() {
  static CpuBackend backend;
  return backend;
}

}  // namespace ttt::engine
