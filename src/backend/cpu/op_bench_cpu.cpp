// The CPU operator benchmarks behind backend::OperatorBench (`ttt bench op|tnt`, device cpu): the tape engine's
// batch runner on random inputs, host wall clock, median of the repetitions after warm-up.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>
#include <omp.h>

#include "backend/operators.h"
#include "core/error.h"
#include "core/rng.h"
#include "ttt/lact_op.h"
#include "ttt/runner.h"
#include "ttt/tnt.h"

namespace ttt::backend {

namespace {

template <class F>
double median_seconds(int repeats, F f) {
  std::vector<double> t;
  for (int i = 0; i < repeats; ++i) {
    auto a = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

template <class T>
nlohmann::json bench_lact(int64_t B, int64_t n, int64_t d, int64_t dh, int64_t chunk, bool muon, bool momentum,
                          engine::WeightNorm wn, int repeats, int warmup) {
  using namespace engine;
  const MemoryConfig cfg = lact_memory_config(d, dh, momentum, muon, wn);
  Program prog = causal_program(n, chunk);
  Rng r(1);
  std::vector<SequenceInputs<T>> in(static_cast<size_t>(B));
  std::vector<ag::Mat<T>> go(static_cast<size_t>(B));
  auto fill = [&](ag::Mat<T>& m, int64_t rows, int64_t cols, double lo, double hi, bool normal) {
    m = ag::Mat<T>(rows, cols);
    for (auto& x : m.data) x = T(normal ? r.normal() * hi : r.uniform(lo, hi));
  };
  for (auto& x : in) {
    for (auto [rr, cc] : cfg.weight_shapes()) {
      x.w0.emplace_back();
      fill(x.w0.back(), rr, cc, 0, 1.0 / std::sqrt(double(cc)), true);
    }
    fill(x.q, n, d, 0, 1.0 / std::sqrt(double(d)), true);
    fill(x.k, n, d, 0, 1.0 / std::sqrt(double(d)), true);
    fill(x.v, n, d, 0, 1.0 / std::sqrt(double(d)), true);
    fill(x.rates, n, 3, 0.001, 0.01, false);
    if (momentum) fill(x.momentum_gate, n, 1, 0.5, 0.95, false);
  }
  for (auto& g : go) fill(g, n, d, 0, 1.0, true);
  for (int i = 0; i < warmup; ++i) run_forward_batch(cfg, prog, in);
  const double fwd = median_seconds(repeats, [&] { run_forward_batch(cfg, prog, in); });
  const double fwdbwd = median_seconds(repeats, [&] {
    std::vector<SavedStates<T>> saved;
    run_forward_batch(cfg, prog, in, &saved);
    run_backward_batch(cfg, prog, in, saved, go);
  });
  // FLOPs as the LaCT code counts them (docs/ALGORITHMS.md §5.5): forward 18*d*dh*T per head; training 3x.
  const double flops_fwd = 18.0 * double(d) * double(dh) * double(n) * double(B);
  const double tokens = double(B) * double(n);
  return {{"op", "lact"},
          {"device", "cpu"},
          {"dtype", sizeof(T) == 4 ? "f32" : "f64"},
          {"threads", omp_get_max_threads()},
          {"bh", B},
          {"T", n},
          {"d", d},
          {"dh", dh},
          {"chunk", chunk},
          {"momentum", momentum},
          {"muon", muon},
          {"weight_norm", weight_norm_name(wn)},
          {"repeats", repeats},
          {"fwd_s", fwd},
          {"fwd_tokens_per_s", tokens / fwd},
          {"fwd_gflops", flops_fwd / fwd / 1e9},
          {"fwdbwd_s", fwdbwd},
          {"fwdbwd_tokens_per_s", tokens / fwdbwd},
          {"fwdbwd_gflops", 3 * flops_fwd / fwdbwd / 1e9}};
}

// ---- ttt bench tnt -------------------------------------------------------------------------------------

// Random inputs of a TNT branch (or a single Titans memory) on a tape: S sequences of n tokens, 1 head.
template <class T>
struct TntBenchInputs {
  ag::Mat<T> q, k, v, go;
  struct Memory {
    std::vector<ag::Mat<T>> w0;
    ag::Mat<T> theta, eta, alpha;
  };
  std::vector<Memory> mems;
};

template <class T>
TntBenchInputs<T> tnt_bench_inputs(int64_t S, int64_t n, int64_t d, int64_t dh, int64_t memories, uint64_t seed) {
  Rng r(seed);
  auto normal = [&](int64_t rows, int64_t cols, double scale) {
    ag::Mat<T> m(rows, cols);
    for (auto& x : m.data) x = T(r.normal() * scale);
    return m;
  };
  auto uniform = [&](int64_t rows, int64_t cols, double lo, double hi) {
    ag::Mat<T> m(rows, cols);
    for (auto& x : m.data) x = T(r.uniform(lo, hi));
    return m;
  };
  TntBenchInputs<T> in;
  // keys and queries of unit scale per token, as after the l2 normalization of the model
  in.q = normal(S * n, d, 1.0 / std::sqrt(double(d)));
  in.k = normal(S * n, d, 1.0 / std::sqrt(double(d)));
  in.v = normal(S * n, d, 1.0 / std::sqrt(double(d)));
  in.go = normal(S * n, d, 1.0);
  for (int64_t m = 0; m < memories; ++m) {
    typename TntBenchInputs<T>::Memory mem;
    mem.w0 = {normal(dh, d, 1.0 / std::sqrt(double(d))), normal(d, dh, 1.0 / std::sqrt(double(dh)))};
    mem.theta = uniform(S * n, 1, 0.01, 0.1);
    mem.eta = uniform(S * n, 1, 0.5, 0.9);
    mem.alpha = uniform(S * n, 1, 0.001, 0.01);
    in.mems.push_back(std::move(mem));
  }
  return in;
}

// Forward (no gradients kept) or forward + backward of the branch / memory on a fresh tape.
template <class T>
void tnt_bench_run(const TntBenchInputs<T>& in, const engine::TntOptions& opt, int64_t S, int64_t d, int64_t dh,
                   bool backward) {
  ag::Tape<T> t;
  ag::Var q = t.leaf(in.q, backward), k = t.leaf(in.k, backward), v = t.leaf(in.v, backward);
  std::vector<engine::TntMemoryVars> mems;
  for (const auto& m : in.mems) {
    engine::TntMemoryVars mv;
    mv.cfg = engine::titans_memory_config(d, dh);
    for (const auto& w : m.w0) mv.w0.push_back(t.leaf(w, backward));
    mv.rates = t.leaf(m.theta, backward);
    mv.momentum_gate = t.leaf(m.eta, backward);
    mv.decay_gate = t.leaf(m.alpha, backward);
    mems.push_back(mv);
  }
  ag::Var o = engine::tnt_branch(t, opt, S, 1, q, k, v, mems);
  if (!backward) return;
  t.grad(o) = in.go;
  t.backward();
}

template <class T>
void bench_tnt_at(int64_t S, int64_t n, int64_t d, int64_t dh, const engine::TntOptions& tnt,
                  const std::vector<int64_t>& titans_chunks, int repeats, int warmup,
                  const std::function<void(const nlohmann::json&)>& emit) {
  const char* dtype = sizeof(T) == 4 ? "f32" : "f64";
  auto base = [&](const char* op) {
    return nlohmann::json{{"op", op}, {"device", "cpu"}, {"dtype", dtype}, {"threads", omp_get_max_threads()},
                          {"bh", S}, {"T", n}, {"d", d}, {"dh", dh}, {"repeats", repeats}};
  };
  auto time_it = [&](const TntBenchInputs<T>& in, const engine::TntOptions& opt, bool backward) {
    for (int i = 0; i < warmup; ++i) tnt_bench_run(in, opt, S, d, dh, backward);
    return median_seconds(repeats, [&] { tnt_bench_run(in, opt, S, d, dh, backward); });
  };
  // The TNT branch, its local shards in parallel (threads over sequence x shard) and as one sequential
  // pass per sequence.
  const TntBenchInputs<T> in = tnt_bench_inputs<T>(S, n, d, dh, tnt.num_memories(), 1);
  engine::TntOptions seq = tnt;
  seq.batch.split_shards = false;
  engine::TntOptions par = tnt;
  par.batch.split_shards = true;
  // Sequential and sharded runs alternate, so that a change in the machine's load hits both alike.
  auto time_pair = [&](bool backward) {
    for (int i = 0; i < warmup; ++i) {
      tnt_bench_run(in, seq, S, d, dh, backward);
      tnt_bench_run(in, par, S, d, dh, backward);
    }
    std::vector<double> ts, tp;
    for (int i = 0; i < repeats; ++i) {
      ts.push_back(median_seconds(1, [&] { tnt_bench_run(in, seq, S, d, dh, backward); }));
      tp.push_back(median_seconds(1, [&] { tnt_bench_run(in, par, S, d, dh, backward); }));
    }
    std::sort(ts.begin(), ts.end());
    std::sort(tp.begin(), tp.end());
    return std::make_pair(ts[ts.size() / 2], tp[tp.size() / 2]);
  };
  const auto [fwdbwd_seq, fwdbwd_par] = time_pair(true);
  const auto [fwd_seq, fwd_par] = time_pair(false);
  const double tokens = double(S) * double(n);
  nlohmann::json j = base("tnt");
  j["global"] = tnt.use_global;
  j["global_chunk"] = tnt.global_chunk;
  j["local_chunks"] = tnt.local_chunks;
  j["shard"] = tnt.shard;
  j["shards_per_sequence"] = tnt.shard > 0 ? (n + tnt.shard - 1) / tnt.shard : 1;
  j["qk_proj"] = tnt.qk_proj;
  j["fwd_s"] = fwd_par;
  j["fwd_sequential_s"] = fwd_seq;
  j["fwdbwd_s"] = fwdbwd_par;
  j["fwdbwd_sequential_s"] = fwdbwd_seq;
  j["fwd_shard_speedup"] = fwd_seq / fwd_par;
  j["fwdbwd_shard_speedup"] = fwdbwd_seq / fwdbwd_par;
  j["fwdbwd_tokens_per_s"] = tokens / fwdbwd_par;
  emit(j);
  // Titans: one memory, no reset, the same Titans MLP memory, at each chunk size.
  for (int64_t c : titans_chunks) {
    engine::TntOptions one;
    one.use_global = true;
    one.global_chunk = c;
    one.local_chunks.clear();
    one.shard = 0;
    const TntBenchInputs<T> tin = tnt_bench_inputs<T>(S, n, d, dh, 1, 2);
    const double fb = time_it(tin, one, true), f = time_it(tin, one, false);
    nlohmann::json jt = base("titans");
    jt["chunk"] = c;
    jt["fwd_s"] = f;
    jt["fwdbwd_s"] = fb;
    jt["fwdbwd_tokens_per_s"] = tokens / fb;
    jt["tnt_fwdbwd_speedup"] = fb / fwdbwd_par;  // > 1: the (sharded) TNT branch is faster
    emit(jt);
  }
}

class CpuOperatorBench final : public OperatorBench {
 public:
  nlohmann::json lact(const LactBenchSpec& s) override {
    TTT_CHECK(s.precision == Precision::FP32, "ttt bench op: --precision " << precision_name(s.precision)
                                                                         << " needs a GPU device (--device cuda)");
    if (s.dtype == DType::F64)
      return bench_lact<double>(s.bh, s.T, s.d, s.dh, s.chunk, s.muon, s.momentum, s.weight_norm, s.repeats, s.warmup);
    return bench_lact<float>(s.bh, s.T, s.d, s.dh, s.chunk, s.muon, s.momentum, s.weight_norm, s.repeats, s.warmup);
  }
  void tnt(const TntBenchSpec& s, const std::function<void(const nlohmann::json&)>& emit) override {
    if (s.dtype == DType::F64)
      bench_tnt_at<double>(s.bh, s.T, s.d, s.dh, s.tnt, s.titans_chunks, s.repeats, s.warmup, emit);
    else
      bench_tnt_at<float>(s.bh, s.T, s.d, s.dh, s.tnt, s.titans_chunks, s.repeats, s.warmup, emit);
  }
};

}  // namespace

OperatorBench& cpu_operator_bench() {
  static CpuOperatorBench bench;
  return bench;
}

}  // namespace ttt::backend
