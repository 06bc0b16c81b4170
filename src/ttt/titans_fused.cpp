// The CPU twin of the CUDA Titans memory / TNT branch: the backend of titans_fused.h on host memory. Matrix
// products go through ttt::gemm (OpenBLAS) one item at a time, in the same shapes as the GPU's strided-batched
// products; element steps run the shared functors in a loop.
#include "ttt/titans_fused.h"

#include <cctype>
#include <limits>
#include <string>

#include "core/blas.h"
#include "core/safetensors.h"
#include "ttt/tnt.h"

namespace ttt::titans {

namespace {

template <class T>
class CpuOps {
 public:
  using value_type = T;

  // Storage starts as NaN, so that a step reading what no step wrote shows in the results.
  T* alloc(int64_t n) {
    store_.emplace_back(new T[size_t(std::max<int64_t>(n, 1))]);
    std::fill(store_.back().get(), store_.back().get() + std::max<int64_t>(n, 1), std::numeric_limits<T>::quiet_NaN());
    return store_.back().get();
  }
  void zero(T* p, int64_t n) { std::fill(p, p + n, T(0)); }
  void copy(T* dst, const T* src, int64_t n) { std::copy(src, src + n, dst); }
  void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t lda, int64_t sA,
            const T* B, int64_t ldb, int64_t sB, T beta, T* C, int64_t ldc, int64_t sC, int64_t batch) {
    for (int64_t i = 0; i < batch; ++i)
      ttt::gemm<T>(ta, tb, m, n, k, alpha, A + i * sA, lda, B + i * sB, ldb, beta, C + i * sC, ldc);
  }
  void batched_dot(const T* x, const T* y, int64_t per, int64_t stride, int64_t batch, T* out) {
    for (int64_t b = 0; b < batch; ++b) {
      T acc = 0;
      for (int64_t i = 0; i < per; ++i) acc += x[b * stride + i] * y[b * stride + i];
      out[b] = acc;
    }
  }
  template <class F>
  void each(int64_t n, const F& f) {
    for (int64_t i = 0; i < n; ++i) f(i);
  }
  template <class F1, class F2>
  void each2(int64_t n1, const F1& f1, int64_t n2, const F2& f2) {
    each(n1, f1);
    each(n2, f2);
  }

 private:
  std::vector<std::unique_ptr<T[]>> store_;
};

// dst = parts[0] + parts[1] + ... (in memory order, as the GPU sums the memories of a branch).
template <class T>
void sum_in_memory_order(T* dst, const std::vector<std::vector<T>>& parts) {
  std::copy(parts[0].begin(), parts[0].end(), dst);
  for (size_t m = 1; m < parts.size(); ++m)
    for (size_t i = 0; i < parts[m].size(); ++i) dst[i] += parts[m][i];
}

}  // namespace

template <class T>
void memory_cpu(const MemoryShape& s, const MemoryInputs<T>& in, T* o, const T* grad_o, const MemoryGrads<T>* g) {
  s.validate();
  const bool grad = grad_o != nullptr;
  TTT_CHECK(!grad || g, "titans memory_cpu: grad_o given without gradient outputs");
  CpuOps<T> ops;
  Memory<CpuOps<T>> m(ops, s, grad);
  m.forward(in, o);
  if (grad) m.backward(grad_o, *g);
}

template <class T>
void tnt_cpu(const TntShape& s, const TntInputs<T>& in, T* o, const T* grad_o, const TntGrads<T>* g) {
  s.validate();
  const bool grad = grad_o != nullptr;
  TTT_CHECK(!grad || g, "titans tnt_cpu: grad_o given without gradient outputs");
  TTT_CHECK(int64_t(in.mems.size()) == s.num_memories() && (!grad || int64_t(g->mems.size()) == s.num_memories()),
            "titans tnt_cpu: parameters of " << in.mems.size() << " memories for " << s.num_memories());
  const size_t BTd = size_t(s.B * s.T * s.d);
  const size_t M = size_t(s.num_memories());
  // Every memory into its own buffers, then sums in memory order (as the GPU does).
  std::vector<std::vector<T>> om(M, std::vector<T>(BTd)), gq(M), gk(M), gv(M);
  for (size_t m = 0; m < M; ++m) {
    MemoryGrads<T> mg;
    if (grad) {
      gq[m].resize(BTd);
      gk[m].resize(BTd);
      gv[m].resize(BTd);
      const TntMemoryGrads<T>& p = g->mems[m];
      mg = {gq[m].data(), gk[m].data(), gv[m].data(), p.w1, p.w2, p.theta, p.eta, p.alpha};
    }
    memory_cpu<T>(s.memory(m), memory_inputs(in, m), om[m].data(), grad_o, grad ? &mg : nullptr);
  }
  sum_in_memory_order(o, om);
  if (!grad) return;
  sum_in_memory_order(g->q, gq);
  sum_in_memory_order(g->k, gk);
  sum_in_memory_order(g->v, gv);
}

template <class T>
void stream_memory_cpu(const MemoryShape& s, const MemoryInputs<T>& in, T* o) {
  s.validate();
  const MemoryShape ss = stream_shape(s);
  const int64_t B = s.B, T_ = s.T, d = s.d, C = ss.chunk;
  CpuOps<T> ops;
  Memory<CpuOps<T>> mem(ops, ss, /*with_grad=*/false);
  // The recurrent state, outside the memory as generation keeps it.
  const StreamStateSizes n = stream_state_sizes(ss);
  std::vector<T> W(size_t(n.W)), S(size_t(n.S)), M(size_t(n.M)), z(size_t(n.z));
  const StreamState<T> st{W.data(), n.S ? S.data() : nullptr, n.M ? M.data() : nullptr, n.z ? z.data() : nullptr};
  // The unfinished chunk's buffers [B, C, d] / [B, C], filled token by token; one token's query and output.
  std::vector<T> k(size_t(B * C * d)), v(k.size()), th(size_t(B * C)), et(th.size()), al(th.size());
  std::vector<T> q1(size_t(B * d)), o1(q1.size());
  const MemoryInputs<T> chunk{nullptr, k.data(), v.data(), nullptr, nullptr, th.data(),
                              s.momentum ? et.data() : nullptr, s.decay ? al.data() : nullptr};
  mem.stream_init(st, in.w1, in.w2);
  int64_t pending = 0;
  for (int64_t t = 0; t < T_; ++t) {
    for (int64_t b = 0; b < B; ++b) {
      const int64_t src = b * T_ + t, dst = b * C + pending;
      std::copy(in.q + src * d, in.q + (src + 1) * d, q1.begin() + b * d);
      std::copy(in.k + src * d, in.k + (src + 1) * d, k.begin() + dst * d);
      std::copy(in.v + src * d, in.v + (src + 1) * d, v.begin() + dst * d);
      th[size_t(dst)] = in.theta[src];
      if (s.momentum) et[size_t(dst)] = in.eta[src];
      if (s.decay) al[size_t(dst)] = in.alpha[src];
    }
    mem.stream_apply(st, q1.data(), 1, o1.data());
    for (int64_t b = 0; b < B; ++b) std::copy(o1.begin() + b * d, o1.begin() + (b + 1) * d, o + (b * T_ + t) * d);
    ++pending;
    if (s.period > 0 && (t + 1) % s.period == 0) {  // shard finished: back to W0 (its last chunk never updates)
      mem.stream_init(st, in.w1, in.w2);
      pending = 0;
    } else if (pending == C) {  // chunk finished: one update
      mem.stream_update(st, chunk, C);
      pending = 0;
    }
  }
}

template <class T>
void stream_tnt_cpu(const TntShape& s, const TntInputs<T>& in, T* o) {
  s.validate();
  TTT_CHECK(int64_t(in.mems.size()) == s.num_memories(),
            "titans stream_tnt_cpu: parameters of " << in.mems.size() << " memories for " << s.num_memories());
  std::vector<std::vector<T>> om(size_t(s.num_memories()), std::vector<T>(size_t(s.B * s.T * s.d)));
  for (size_t m = 0; m < om.size(); ++m) stream_memory_cpu<T>(s.memory(m), memory_inputs(in, m), om[m].data());
  sum_in_memory_order(o, om);
}

FlopCount memory_flops(const MemoryShape& s) {
  s.validate();
  FlopCount f;
  const double dd = double(s.d) * double(s.dh), d2 = double(s.d) * double(s.d);
  for (const Group& g : make_groups(s.B, s.T, s.period)) {
    const int64_t N = num_chunks(g.len, s.chunk);
    const double applied = double(g.items) * double(g.len);
    const double updated = double(g.items) * double(std::min(g.len, (N - 1) * s.chunk));
    const double projected = double(g.items) * double(g.len - std::min(g.len, s.chunk));  // chunks c > 0
    // forward: apply 2 products, update 5 (Z, Y, DS, D1, D2); backward: apply 5, update 5 recomputed + 10.
    f.fwd += 2 * dd * (2 * applied + 5 * updated);
    f.fwdbwd += 2 * dd * (2 * applied + 5 * updated + 5 * applied + 15 * updated);
    if (s.qk) {
      // forward: q M, the Gram update; backward: g M, the Gram update, k P, two products into P.
      f.fwd += 2 * d2 * (projected + updated);
      f.fwdbwd += 2 * d2 * (projected + updated + projected + updated + applied + 2 * projected);
    }
  }
  return f;
}

FlopCount tnt_flops(const TntShape& s) {
  FlopCount f;
  for (size_t m = 0; m < size_t(s.num_memories()); ++m) {
    const FlopCount x = memory_flops(s.memory(m));
    f.fwd += x.fwd;
    f.fwdbwd += x.fwdbwd;
  }
  return f;
}

namespace {

class TwinRunner final : public TntHostRunner {
 public:
  void run(const TntShape& s, const TntInputs<double>& in, double* o, const double* go,
           const TntGrads<double>* g) override {
    tnt_cpu<double>(s, in, o, go, g);
  }
  void run(const TntShape& s, const TntInputs<float>& in, float* o, const float* go,
           const TntGrads<float>* g) override {
    tnt_cpu<float>(s, in, o, go, g);
  }
};

std::string prefix_of(const engine::TntOptions& opt, size_t m) { return engine::tnt_input_prefix(opt, m); }

template <class T>
SafeTensors run_op(const SafeTensors& st, const engine::TntOptions& opt, TntHostRunner& runner) {
  const Tensor& qt = st.get("q");
  const int64_t B = qt.size(0), n = qt.size(1), d = qt.size(2);
  const bool want_grad = st.has("grad_o");
  const DType dt = dtype_of<T>::value;
  TntShape s;
  s.B = B;
  s.T = n;
  s.d = d;
  s.set_layout(opt.layout());
  auto ptr = [&](const std::string& name) { return st.get(name).data<T>(); };
  TntInputs<T> in{ptr("q"), ptr("k"), ptr("v"), {}};
  const size_t M = size_t(opt.num_memories());
  for (size_t m = 0; m < M; ++m) {
    const std::string p = prefix_of(opt, m);
    s.dh.push_back(st.get(p + "w1").size(1));
    in.mems.push_back({ptr(p + "w1"), ptr(p + "w2"), ptr(p + "theta"), ptr(p + "eta"), ptr(p + "alpha")});
  }
  SafeTensors out;
  Tensor o = Tensor::empty({B, n, d}, dt);
  if (!want_grad) {
    runner.run(s, in, o.data<T>(), nullptr, nullptr);
    out.add("o", o);
    return out;
  }
  // Gradient tensors in input order.
  std::vector<std::pair<std::string, Tensor>> grads;
  auto grad_of = [&](const std::string& name) {
    grads.push_back({"grad_" + name, Tensor::empty(st.get(name).shape(), dt)});
    return grads.back().second.data<T>();
  };
  TntGrads<T> g;
  g.q = grad_of("q");
  g.k = grad_of("k");
  g.v = grad_of("v");
  for (size_t m = 0; m < M; ++m) {
    const std::string p = prefix_of(opt, m);
    TntMemoryGrads<T> mg;
    mg.w1 = grad_of(p + "w1");
    mg.w2 = grad_of(p + "w2");
    mg.theta = grad_of(p + "theta");
    mg.eta = grad_of(p + "eta");
    mg.alpha = grad_of(p + "alpha");
    g.mems.push_back(mg);
  }
  runner.run(s, in, o.data<T>(), ptr("grad_o"), &g);
  out.add("o", o);
  for (auto& [name, x] : grads) out.add(name, x);
  out.add("grad_grad_o", o.clone());
  return out;
}

}  // namespace

TntHostRunner& tnt_twin_runner() {
  static TwinRunner r;
  return r;
}

SafeTensors tnt_op(const SafeTensors& inputs, const engine::TntOptions& opt, TntHostRunner& runner) {
  engine::validate_tnt_inputs(inputs, opt);
  SafeTensors c;  // contiguous copies: the runners read plain row-major arrays
  for (auto& [name, t] : inputs.tensors) c.add(name, t.contiguous());
  return c.get("q").dtype() == DType::F64 ? run_op<double>(c, opt, runner) : run_op<float>(c, opt, runner);
}

namespace {
// Counts what Memory's constructors allocate (nothing is run).
struct CountOps {
  using value_type = float;
  int64_t elems = 0;
  float* alloc(int64_t n) {
    elems += std::max<int64_t>(n, 1);
    return nullptr;
  }
};
}  // namespace

int64_t memory_workspace_elements(const MemoryShape& s, bool with_grad) {
  s.validate();
  CountOps ops;
  Memory<CountOps> m(ops, s, with_grad);
  return ops.elems;
}

template void memory_cpu<float>(const MemoryShape&, const MemoryInputs<float>&, float*, const float*,
                                const MemoryGrads<float>*);
template void memory_cpu<double>(const MemoryShape&, const MemoryInputs<double>&, double*, const double*,
                                 const MemoryGrads<double>*);
template void tnt_cpu<float>(const TntShape&, const TntInputs<float>&, float*, const float*, const TntGrads<float>*);
template void tnt_cpu<double>(const TntShape&, const TntInputs<double>&, double*, const double*,
                              const TntGrads<double>*);
template void stream_memory_cpu<float>(const MemoryShape&, const MemoryInputs<float>&, float*);
template void stream_memory_cpu<double>(const MemoryShape&, const MemoryInputs<double>&, double*);
template void stream_tnt_cpu<float>(const TntShape&, const TntInputs<float>&, float*);
template void stream_tnt_cpu<double>(const TntShape&, const TntInputs<double>&, double*);

}  // namespace ttt::titans
