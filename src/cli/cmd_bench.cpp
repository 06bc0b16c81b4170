// ttt bench op: times the LaCT operator (forward, forward+backward) and prints JSON.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <omp.h>
#include <sstream>

#include "cli/args.h"
#include "cli/commands.h"
#include "core/rng.h"
#include "ttt/runner.h"
#ifdef TTT_HAVE_CUDA
#include "cuda/cuda_bench.h"
#endif
#include "ttt/tnt.h"
#ifdef TTT_HAVE_CUDA
#include "cuda/tnt_cuda.h"
#endif

namespace ttt::cli {

namespace {

std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      out.push_back(std::stoll(item));
    } catch (...) {
      TTT_FAIL("expected a comma-separated list of integers, got '" << s << "'");
    }
  }
  TTT_CHECK(!out.empty(), "empty list '" << s << "'");
  return out;
}

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
  MemoryConfig cfg;
  cfg.family = Family::SwiGLU;
  cfg.loss = Loss::Dot;
  cfg.d = d;
  cfg.dh = dh;
  cfg.momentum = momentum;
  cfg.muon = muon;
  cfg.weight_norm = wn;
  cfg.rate_columns = 3;
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
                  const std::vector<int64_t>& titans_chunks, int repeats, int warmup) {
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
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
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
    std::printf("%s\n", jt.dump().c_str());
    std::fflush(stdout);
  }
}

#ifdef TTT_HAVE_CUDA
// `ttt bench tnt --device cuda`: the branch and the Titans baseline on the GPU (cuda::bench_tnt: CUDA events,
// median of the repetitions after warm-up), one JSON line each, with the FLOP floor of the algorithm's matrix
// products (titans::tnt_flops) and the rate it reaches.
void bench_tnt_gpu(int64_t B, int64_t n, int64_t d, int64_t dh, const engine::TntOptions& tnt,
                   const std::vector<int64_t>& titans_chunks, int repeats, int warmup, bool graphs) {
  auto shape_of = [&](const engine::TntOptions& o) {
    titans::TntShape s;
    s.B = B;
    s.T = n;
    s.d = d;
    s.use_global = o.use_global;
    s.global_chunk = o.global_chunk;
    s.local_chunks = o.local_chunks;
    s.shard = o.shard;
    s.qk_proj = o.qk_proj;
    s.dh.assign(size_t(o.num_memories()), dh);
    return s;
  };
  const double tokens = double(B) * double(n);
  auto run = [&](const char* op, const titans::TntShape& s) {
    const cuda::TntBenchResult r = cuda::bench_tnt(s, repeats, warmup, graphs);
    const titans::FlopCount f = titans::tnt_flops(s);
    const double fwd = r.fwd_ms_median / 1e3, fwdbwd = r.fwdbwd_ms_median / 1e3;
    nlohmann::json j{{"op", op},
                     {"device", "cuda"},
                     {"gpu", r.device},
                     {"dtype", "f32"},
                     {"math", "fp32"},
                     {"cuda_graphs", graphs},
                     {"bh", B},
                     {"T", n},
                     {"d", d},
                     {"dh", dh},
                     {"repeats", repeats},
                     {"warmup", warmup},
                     {"fwd_s", fwd},
                     {"fwdbwd_s", fwdbwd},
                     {"fwd_tokens_per_s", tokens / fwd},
                     {"fwdbwd_tokens_per_s", tokens / fwdbwd},
                     {"flops_fwd", f.fwd},
                     {"flops_fwdbwd", f.fwdbwd},
                     {"fwd_tflops", f.fwd / fwd / 1e12},
                     {"fwdbwd_tflops", f.fwdbwd / fwdbwd / 1e12},
                     {"fwd_ms_all", r.fwd_ms},
                     {"fwdbwd_ms_all", r.fwdbwd_ms},
                     {"peak_gpu_bytes", r.tracked_peak_bytes},
                     {"workspace_bytes", r.workspace_bytes},
                     {"gpu_used_bytes", r.device_used_bytes},
                     {"gpu_total_bytes", r.device_total_bytes},
                     {"outputs_finite", r.output_finite}};
    return std::make_pair(j, fwdbwd);
  };
  auto [j, tnt_fwdbwd] = run("tnt", shape_of(tnt));
  j["global"] = tnt.use_global;
  j["global_chunk"] = tnt.global_chunk;
  j["local_chunks"] = tnt.local_chunks;
  j["shard"] = tnt.shard;
  j["shards_per_sequence"] = tnt.shard > 0 ? (n + tnt.shard - 1) / tnt.shard : 1;
  j["qk_proj"] = tnt.qk_proj;
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
  for (int64_t c : titans_chunks) {
    engine::TntOptions one;
    one.use_global = true;
    one.global_chunk = c;
    one.local_chunks.clear();
    one.shard = 0;
    auto [jt, fb] = run("titans", shape_of(one));
    jt["chunk"] = c;
    jt["tnt_fwdbwd_speedup"] = fb / tnt_fwdbwd;  // > 1: the TNT branch is faster
    std::printf("%s\n", jt.dump().c_str());
    std::fflush(stdout);
  }
}
#endif

}  // namespace

int cmd_bench_tnt(const Argv& argv) {
  Args a(argv, "bench tnt");
  a.value("bh", "sequences (sequence-heads)", "1")
      .value("T", "tokens per sequence, comma-separated", "2048,4096,8192")
      .value("d", "head width d", "32")
      .value("dh", "hidden width dh of every memory", "32")
      .value("global-chunk", "chunk size C_G of the global memory", "2048")
      .value("local-chunks", "chunk sizes of the local memories (\"none\": no local memory)", "8,16")
      .value("shard", "S_L: the local memories reset at every multiple of it", "512")
      .value("qk-proj", "on | off", "on")
      .flag("no-global", "no global memory")
      .value("titans-chunks", "chunk sizes of the single-memory Titans baseline (\"none\": skip it)",
             "8,16,64,128")
      .value("dtype", "f32 | f64", "f32")
      .value("repeats", "timed repetitions (median reported)", "3")
      .value("warmup", "untimed warm-up runs", "1")
      .value("device", "cpu | cuda (cuda defaults: --bh 4 --d 384 --dh 384 --shard 2048 --T 2048,...,32768)", "cpu")
      .value("graphs", "cuda: on | off: replay each forward / backward as a captured CUDA graph", "on");
  a.parse();
  if (a.help_requested()) {
    std::printf("%s", a.usage().c_str());
    std::printf("\nPrints one JSON line per T for the TNT branch (forward and forward+backward, the local shards "
                "run in parallel and as one sequential pass per sequence: *_shard_speedup) and one per Titans "
                "chunk size (tnt_fwdbwd_speedup: Titans time / sharded TNT time).\n");
    return 0;
  }
  const std::string device = a.str("device");
  bool device_ok = device == "cpu";
#ifdef TTT_HAVE_CUDA
  device_ok = device_ok || device == "cuda";
#endif
  TTT_CHECK(device_ok, "ttt bench tnt: device '" << device << "' is not available in this build");
  const bool gpu = device == "cuda";
  // The CUDA bench defaults to the memory size of the LaCT bench (b*H 4, d = dh = 384) and S_L = 2048.
  auto pick = [&](const char* name, int64_t gpu_default) { return gpu && !a.has(name) ? gpu_default : a.i64(name); };
  const int64_t S = pick("bh", 4), d = pick("d", 384), dh = pick("dh", 384);
  TTT_CHECK(S > 0 && d > 0 && dh > 0, "ttt bench tnt: --bh, --d and --dh must be positive");
  const int repeats = int(a.i64("repeats")), warmup = int(a.i64("warmup"));
  TTT_CHECK(repeats > 0 && warmup >= 0, "ttt bench tnt: --repeats must be positive and --warmup non-negative");
  engine::TntOptions tnt;
  tnt.use_global = !a.on("no-global");
  tnt.global_chunk = a.i64("global-chunk");
  tnt.local_chunks = engine::parse_chunk_list(a.str("local-chunks"), "--local-chunks");
  tnt.shard = pick("shard", 2048);
  TTT_CHECK(a.str("qk-proj") == "on" || a.str("qk-proj") == "off", "--qk-proj must be on or off");
  tnt.qk_proj = a.str("qk-proj") == "on";
  tnt.validate();
  const std::vector<int64_t> titans = engine::parse_chunk_list(a.str("titans-chunks"), "--titans-chunks");
  const std::string Ts = gpu && !a.has("T") ? std::string("2048,4096,8192,16384,32768") : a.str("T");
  TTT_CHECK(!gpu || a.str("dtype") == "f32", "ttt bench tnt: --device cuda times f32 only");
  TTT_CHECK(a.str("graphs") == "on" || a.str("graphs") == "off", "ttt bench tnt: --graphs must be on or off");
  TTT_CHECK(!gpu || a.str("graphs") == "off" || warmup > 0, "ttt bench tnt: --graphs on needs --warmup >= 1");
  for (int64_t n : parse_list(Ts)) {
    TTT_CHECK(n > 0, "--T values must be positive");
    std::fprintf(stderr, "bench tnt: T %lld ...\n", (long long)n);
    if (gpu) {
#ifdef TTT_HAVE_CUDA
      bench_tnt_gpu(S, n, d, dh, tnt, titans, repeats, warmup, a.str("graphs") == "on");
#endif
    } else if (a.str("dtype") == "f32") bench_tnt_at<float>(S, n, d, dh, tnt, titans, repeats, warmup);
    else if (a.str("dtype") == "f64") bench_tnt_at<double>(S, n, d, dh, tnt, titans, repeats, warmup);
    else TTT_FAIL("ttt bench tnt: --dtype must be f32 or f64");
  }
  return 0;
}

int cmd_bench_op(const Argv& argv) {
  Args a(argv, "bench op");
  a.value("bh", "sequence-heads (b*H)", "4")
      .value("T", "tokens per sequence (cuda default 32768)", "4096")
      .value("d", "head width d (cuda default 384)", "64")
      .value("dh", "hidden width dh (cuda default 384)", "64")
      .value("chunk", "chunk sizes, comma-separated (cuda default 2048)", "64,512,2048")
      .flag("muon", "Muon (NS5) on the updates")
      .flag("no-momentum", "turn momentum off")
      .value("weight-norm", "post | pre | none", "post")
      .value("dtype", "f32 | f64", "f32")
      .value("repeats", "timed repetitions (median reported)", "3")
      .value("warmup", "untimed warm-up runs", "1")
      .value("device", "cpu | cuda (builds with the CUDA toolkit, on an NVIDIA GPU)", "cpu")
      .flag("tf32", "cuda: TF32 tensor-core matrix products (default exact fp32); same as --precision tf32")
      .value("precision", "cuda: matrix products in fp32 | tf32 | bf16 (bf16 inputs, fp32 accumulation and state)",
             "fp32");
  a.parse();
  if (a.help_requested()) {
    std::printf("%s", a.usage().c_str());
    return 0;
  }
  const std::string device = a.str("device");
  bool device_ok = device == "cpu";
#ifdef TTT_HAVE_CUDA
  device_ok = device_ok || device == "cuda";
#endif
  TTT_CHECK(device_ok, "ttt bench op: device '" << device << "' is not available in this build");
  const bool gpu = device == "cuda";
  TTT_CHECK(gpu || !a.on("tf32"), "ttt bench op: --tf32 needs --device cuda");
  TTT_CHECK(gpu || a.str("precision") == "fp32", "ttt bench op: --precision other than fp32 needs --device cuda");
  TTT_CHECK(!a.on("tf32") || a.str("precision") == "fp32" || a.str("precision") == "tf32",
            "ttt bench op: --tf32 contradicts --precision " << a.str("precision"));
  const std::string precision = a.on("tf32") ? std::string("tf32") : a.str("precision");
  TTT_CHECK(!(precision == "bf16" && a.on("muon")),
            "ttt bench op: --precision bf16 with --muon is not supported (NS5 amplifies bf16 rounding beyond the "
            "2e-2 parity bound; see docs/PERF.md); use --precision tf32 or fp32");
  // The CUDA bench defaults to the memory of the 760M LaCT layer (docs/ALGORITHMS.md §5.5):
  // T 32768, d = dh = 384, C 2048.
  auto pick = [&](const char* name, int64_t gpu_default) { return gpu && !a.has(name) ? gpu_default : a.i64(name); };
  const int64_t B = a.i64("bh"), n = pick("T", 32768), d = pick("d", 384), dh = pick("dh", 384);
  const std::string chunks = gpu && !a.has("chunk") ? std::string("2048") : a.str("chunk");
  TTT_CHECK(B > 0 && n > 0 && d > 0 && dh > 0, "ttt bench op: sizes must be positive");
  const int repeats = int(a.i64("repeats")), warmup = int(a.i64("warmup"));
  TTT_CHECK(repeats > 0 && warmup >= 0, "ttt bench op: --repeats must be positive");
  auto wn = engine::parse_weight_norm(a.str("weight-norm"));
  for (int64_t c : parse_list(chunks)) {
    TTT_CHECK(c > 0, "chunk sizes must be positive");
    std::fprintf(stderr, "bench op: chunk %lld ...\n", (long long)c);
    nlohmann::json j;
    if (gpu) {
#ifdef TTT_HAVE_CUDA
      TTT_CHECK(a.str("dtype") == "f32", "ttt bench op: --device cuda times f32 only");
      lact::Shape s;
      s.B = B;
      s.T = n;
      s.d = d;
      s.dh = dh;
      s.chunk = c;
      s.causal = true;
      s.momentum = !a.on("no-momentum");
      s.muon = a.on("muon");
      s.norm = wn;
      j = cuda::bench_lact_json(s, repeats, warmup, precision);
#endif
    } else if (a.str("dtype") == "f32")
      j = bench_lact<float>(B, n, d, dh, c, a.on("muon"), !a.on("no-momentum"), wn, repeats, warmup);
    else if (a.str("dtype") == "f64")
      j = bench_lact<double>(B, n, d, dh, c, a.on("muon"), !a.on("no-momentum"), wn, repeats, warmup);
    else
      TTT_FAIL("ttt bench op: --dtype must be f32 or f64");
    std::printf("%s\n", j.dump().c_str());
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace ttt::cli
