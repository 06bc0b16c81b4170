#include "ttt/tnt.h"

#include <cctype>
#include <map>
#include <sstream>

#include "ttt/qk_projection.h"

namespace ttt::engine {

using ag::Mat;
using ag::Tape;
using ag::Var;

MemoryConfig titans_memory_config(int64_t d, int64_t dh) {
  MemoryConfig c;
  c.family = Family::MLP;
  c.loss = Loss::MSE;
  c.d = d;
  c.dh = dh;
  c.mlp_residual = true;
  c.momentum = true;
  c.decay = true;
  c.muon = false;
  c.weight_norm = WeightNorm::None;
  c.rate_columns = 1;
  return c;
}

void TntOptions::validate() const {
  TTT_CHECK(num_memories() > 0, "TNT branch without memories: the global memory is off and no local chunk sizes "
                                "are given");
  if (use_global) TTT_CHECK(global_chunk > 0, "global chunk must be positive, got " << global_chunk);
  for (size_t i = 0; i < local_chunks.size(); ++i)
    TTT_CHECK(local_chunks[i] > 0, "local chunk " << i << " must be positive, got " << local_chunks[i]);
  TTT_CHECK(shard >= 0, "shard size S_L must be positive (or 0: never reset), got " << shard);
}

template <class T>
Var tnt_branch(Tape<T>& t, const TntOptions& opt, int64_t S, int64_t H, Var q, Var k, Var v,
               const std::vector<TntMemoryVars>& mems) {
  opt.validate();
  TTT_CHECK(int64_t(mems.size()) == opt.num_memories(),
            "TNT branch: " << mems.size() << " memories given, the options describe " << opt.num_memories() << " ("
                           << (opt.use_global ? "global + " : "") << opt.local_chunks.size() << " local)");
  return branch_sum(t, S, H, q, k, v, opt.layout().memories(), mems, opt.batch);
}

template <class T>
Var branch_sum(Tape<T>& t, int64_t S, int64_t H, Var q, Var k, Var v, const std::vector<BranchMemory>& places,
               const std::vector<TntMemoryVars>& mems, const BatchOptions& batch) {
  TTT_CHECK(places.size() == mems.size() && !mems.empty(),
            "memory branch: " << mems.size() << " memories for " << places.size() << " places");
  TTT_CHECK(S > 0 && t.val(q).rows % S == 0, "TNT branch: q has " << t.val(q).rows << " rows, not a multiple of "
                                                                  << S << " sequences");
  const int64_t N = t.val(q).rows / S;
  Var o;
  for (size_t m = 0; m < mems.size(); ++m) {
    const TntMemoryVars& mv = mems[m];
    const BranchMemory& place = places[m];
    Var qm = place.qk_proj ? qk_project(t, q, k, S, H, place.chunk, place.shard) : q;
    Var om = memory_op(t, mv.cfg, causal_program(N, place.chunk, place.shard), S, H, qm, k, v, mv.rates,
                       mv.momentum_gate, mv.decay_gate, mv.w0, batch);
    o = o.valid() ? ag::add(t, o, om) : om;
  }
  return o;
}

#define TTT_INSTANTIATE(T)                                                                                          \
  template Var tnt_branch<T>(Tape<T>&, const TntOptions&, int64_t, int64_t, Var, Var, Var,                          \
                             const std::vector<TntMemoryVars>&);                                                    \
  template Var branch_sum<T>(Tape<T>&, int64_t, int64_t, Var, Var, Var, const std::vector<BranchMemory>&,           \
                             const std::vector<TntMemoryVars>&, const BatchOptions&);
TTT_INSTANTIATE(float)
TTT_INSTANTIATE(double)
#undef TTT_INSTANTIATE

std::vector<int64_t> parse_chunk_list(const std::string& s, const std::string& flag) {
  std::vector<int64_t> out;
  if (s.empty() || s == "none") return out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t pos = 0;
    int64_t v = 0;
    try {
      v = std::stoll(item, &pos);
    } catch (...) {
      pos = 0;
    }
    TTT_CHECK(pos == item.size() && !item.empty() && v > 0,
              flag << " expects a comma-separated list of positive integers, got '" << s << "'");
    out.push_back(v);
  }
  return out;
}

namespace {

const char* const kFields[] = {"w1", "w2", "theta", "eta", "alpha"};

bool is_field(const std::string& f) {
  for (const char* x : kFields)
    if (f == x) return true;
  return false;
}

// "l<i>_<field>" -> i (no leading zeros), or -1.
int64_t local_index(const std::string& name) {
  if (name.size() < 3 || name[0] != 'l' || !std::isdigit(static_cast<unsigned char>(name[1]))) return -1;
  size_t p = 1;
  while (p < name.size() && std::isdigit(static_cast<unsigned char>(name[p]))) ++p;
  if (p >= name.size() || name[p] != '_' || (name[1] == '0' && p > 2) || p > 8) return -1;
  if (!is_field(name.substr(p + 1))) return -1;
  return std::stoll(name.substr(1, p - 1));
}

std::string prefix_of(const TntOptions& opt, size_t m) {
  const BranchMemory place = opt.layout().memory(m);
  return place.global() ? "g_" : "l" + std::to_string(place.local) + "_";
}

// [B,T,d] -> [T, B*d] (sequence-head b = column block b); [B,T] -> [T, B]; and back.
template <class T>
Mat<T> tokens_to_mat(const Tensor& x, int64_t B, int64_t n, int64_t d) {
  Mat<T> all = ag::mat_from<T>(x, B * n, d);
  Mat<T> m(n, B * d);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < n; ++t) std::copy(all.row(b * n + t), all.row(b * n + t) + d, m.row(t) + b * d);
  return m;
}
template <class T>
Tensor mat_to_tokens(const Mat<T>& m, int64_t B, int64_t n, int64_t d, bool gate) {
  Tensor x = Tensor::empty(gate ? Shape{B, n} : Shape{B, n, d}, dtype_of<T>::value);
  T* p = x.data<T>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < n; ++t) std::copy(m.row(t) + b * d, m.row(t) + (b + 1) * d, p + (b * n + t) * d);
  return x;
}
template <class T>
Tensor mat_to_tensor(const Mat<T>& m, const Shape& shape) {
  Tensor x = Tensor::empty(shape, dtype_of<T>::value);
  std::copy(m.data.begin(), m.data.end(), x.data<T>());
  return x;
}

template <class T>
SafeTensors run_tnt(const SafeTensors& st, const TntOptions& opt) {
  const Tensor& qt = st.get("q");
  const int64_t B = qt.size(0), n = qt.size(1), d = qt.size(2);
  const bool want_grad = st.has("grad_o");
  Tape<T> t;
  std::map<std::string, Var> leaf;
  auto add_tokens = [&](const std::string& name) { leaf[name] = t.leaf(tokens_to_mat<T>(st.get(name), B, n, d), want_grad); };
  auto add_gate = [&](const std::string& name) { leaf[name] = t.leaf(tokens_to_mat<T>(st.get(name), B, n, 1), want_grad); };
  for (const char* x : {"q", "k", "v"}) add_tokens(x);
  std::vector<TntMemoryVars> mems;
  for (size_t m = 0; m < size_t(opt.num_memories()); ++m) {
    const std::string p = prefix_of(opt, m);
    const Tensor& w1 = st.get(p + "w1");
    const int64_t dh = w1.size(1);
    TntMemoryVars mv;
    mv.cfg = titans_memory_config(d, dh);
    leaf[p + "w1"] = t.leaf(ag::mat_from<T>(w1, B * dh, d), want_grad);
    leaf[p + "w2"] = t.leaf(ag::mat_from<T>(st.get(p + "w2"), B * d, dh), want_grad);
    for (const char* g : {"theta", "eta", "alpha"}) add_gate(p + g);
    mv.w0 = {leaf[p + "w1"], leaf[p + "w2"]};
    mv.rates = leaf[p + "theta"];
    mv.momentum_gate = leaf[p + "eta"];
    mv.decay_gate = leaf[p + "alpha"];
    mems.push_back(mv);
  }
  // Each sequence-head is one "head" of a single sequence: its own W⁰, as memory_op gives every head.
  Var o = tnt_branch(t, opt, 1, B, leaf["q"], leaf["k"], leaf["v"], mems);
  SafeTensors out;
  out.add("o", mat_to_tokens(t.val(o), B, n, d, false));
  if (!want_grad) return out;
  t.grad(o) = tokens_to_mat<T>(st.get("grad_o"), B, n, d);
  t.backward();
  auto grad_of = [&](const std::string& name) {
    Var v = leaf.at(name);
    return t.has_grad(v) ? t.grad(v) : Mat<T>(t.val(v).rows, t.val(v).cols);
  };
  for (const char* x : {"q", "k", "v"}) out.add(std::string("grad_") + x, mat_to_tokens(grad_of(x), B, n, d, false));
  for (size_t m = 0; m < size_t(opt.num_memories()); ++m) {
    const std::string p = prefix_of(opt, m);
    const int64_t dh = mems[m].cfg.dh;
    out.add("grad_" + p + "w1", mat_to_tensor(grad_of(p + "w1"), {B, dh, d}));
    out.add("grad_" + p + "w2", mat_to_tensor(grad_of(p + "w2"), {B, d, dh}));
    for (const char* g : {"theta", "eta", "alpha"})
      out.add("grad_" + p + g, mat_to_tokens(grad_of(p + g), B, n, 1, true));
  }
  out.add("grad_grad_o", out.get("o").clone());
  return out;
}

class CpuTntBackend final : public TntBackend {
 public:
  const char* name() const override { return "cpu"; }
  SafeTensors tnt(const SafeTensors& st, const TntOptions& opt) override {
    const DType dt = validate_tnt_inputs(st, opt);
    return dt == DType::F64 ? run_tnt<double>(st, opt) : run_tnt<float>(st, opt);
  }
};

}  // namespace

DType validate_tnt_inputs(const SafeTensors& st, const TntOptions& opt) {
  opt.validate();
  // Names: q, k, v, grad_o, g_<field>, l<i>_<field>.
  int64_t locals = 0;
  for (auto& [name, x] : st.tensors) {
    if (name == "q" || name == "k" || name == "v" || name == "grad_o") continue;
    if (name.rfind("g_", 0) == 0 && is_field(name.substr(2))) {
      TTT_CHECK(opt.use_global, "unexpected input tensor '" << name << "' (" << x.describe()
                                                            << "): the global memory is off (--no-global)");
      continue;
    }
    const int64_t i = local_index(name);
    TTT_CHECK(i >= 0, "unexpected input tensor '"
                          << name << "' (" << x.describe()
                          << "); expected q, k, v, g_{w1,w2,theta,eta,alpha}, l<i>_{w1,w2,theta,eta,alpha} and "
                             "optional grad_o");
    locals = std::max(locals, i + 1);
  }
  for (const char* nm : {"q", "k", "v"}) TTT_CHECK(st.has(nm), "missing input tensor '" << nm << "'");
  if (opt.use_global)
    for (const char* f : kFields)
      TTT_CHECK(st.has(std::string("g_") + f),
                "missing input tensor 'g_" << f << "' of the global memory (or run with --no-global)");
  for (int64_t i = 0; i < locals; ++i)
    for (const char* f : kFields) {
      const std::string nm = "l" + std::to_string(i) + "_" + f;
      TTT_CHECK(st.has(nm), "missing input tensor '" << nm << "' of local memory " << i << " (the inputs have l"
                                                     << locals - 1 << "_* tensors, so locals 0.." << locals - 1
                                                     << " need all of w1, w2, theta, eta, alpha)");
    }
  TTT_CHECK(locals == int64_t(opt.local_chunks.size()),
            "the inputs hold " << locals << " local memor" << (locals == 1 ? "y" : "ies")
                               << " (l<i>_* tensors) but --local-chunks gives " << opt.local_chunks.size()
                               << " chunk size" << (opt.local_chunks.size() == 1 ? "" : "s"));

  const Tensor& q = st.get("q");
  TTT_CHECK(q.dim() == 3, "tensor 'q' must be [B,T,d], got " << q.describe());
  const int64_t B = q.size(0), n = q.size(1), d = q.size(2);
  TTT_CHECK(B > 0 && n > 0 && d > 0, "tensor 'q' has an empty dimension: " << q.describe());
  const DType dt = q.dtype();
  TTT_CHECK(dt == DType::F64 || dt == DType::F32,
            "inputs must be F64 or F32; q is " << q.describe() << " (BF16 is for a CUDA backend)");
  check_shape(st.get("k"), {B, n, d}, "k");
  check_shape(st.get("v"), {B, n, d}, "v");
  if (st.has("grad_o")) check_shape(st.get("grad_o"), {B, n, d}, "grad_o");
  for (size_t m = 0; m < size_t(opt.num_memories()); ++m) {
    const std::string p = prefix_of(opt, m);
    const Tensor& w1 = st.get(p + "w1");
    TTT_CHECK(w1.dim() == 3 && w1.size(1) > 0,
              "tensor '" << p << "w1' must be [B,dh,d] = [" << B << ",dh," << d << "], got " << w1.describe());
    const int64_t dh = w1.size(1);
    check_shape(w1, {B, dh, d}, p + "w1");
    check_shape(st.get(p + "w2"), {B, d, dh}, p + "w2");
    for (const char* g : {"theta", "eta", "alpha"}) check_shape(st.get(p + g), {B, n}, p + g);
  }
  for (auto& [name, x] : st.tensors) {
    TTT_CHECK(x.dtype() == dt, "all inputs must share one dtype: q is " << dtype_name(dt) << " but '" << name
                                                                       << "' is " << x.describe());
    TTT_CHECK(x.all_finite(), "input '" << name << "' contains NaN or Inf");
  }
  return dt;
}

std::string tnt_input_prefix(const TntOptions& opt, size_t m) { return prefix_of(opt, m); }

TntBackend& tnt_cpu_backend() {
  static CpuTntBackend backend;
  return backend;
}

}  // namespace ttt::engine
