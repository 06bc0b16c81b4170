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
  // FLOPs as the LaCT code counts them (spec §5): forward 18*d*dh*T per head; training 3x.
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

}  // namespace

int cmd_bench_op(const Argv& argv) {
  Args a(argv, "bench op");
  a.value("bh", "sequence-heads (b*H)", "4")
      .value("T", "tokens per sequence", "4096")
      .value("d", "head width d", "64")
      .value("dh", "hidden width dh", "64")
      .value("chunk", "chunk sizes, comma-separated", "64,512,2048")
      .flag("muon", "Muon (NS5) on the updates")
      .flag("no-momentum", "turn momentum off")
      .value("weight-norm", "post | pre | none", "post")
      .value("dtype", "f32 | f64", "f32")
      .value("repeats", "timed repetitions (median reported)", "3")
      .value("warmup", "untimed warm-up runs", "1")
      .value("device", "cpu", "cpu");
  a.parse();
  if (a.help_requested()) {
    std::printf("%s", a.usage().c_str());
    return 0;
  }
  TTT_CHECK(a.str("device") == "cpu", "ttt bench op: device '" << a.str("device") << "' is not available in this build");
  const int64_t B = a.i64("bh"), n = a.i64("T"), d = a.i64("d"), dh = a.i64("dh");
  TTT_CHECK(B > 0 && n > 0 && d > 0 && dh > 0, "ttt bench op: sizes must be positive");
  const int repeats = int(a.i64("repeats")), warmup = int(a.i64("warmup"));
  TTT_CHECK(repeats > 0 && warmup >= 0, "ttt bench op: --repeats must be positive");
  auto wn = engine::parse_weight_norm(a.str("weight-norm"));
  for (int64_t c : parse_list(a.str("chunk"))) {
    TTT_CHECK(c > 0, "chunk sizes must be positive");
    std::fprintf(stderr, "bench op: chunk %lld ...\n", (long long)c);
    nlohmann::json j;
    if (a.str("dtype") == "f32")
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

int cmd_bench(const Argv& argv) {
  TTT_FAIL("ttt bench: use a subcommand: 'ttt bench op' (the LaCT operator)");
}

}  // namespace ttt::cli
