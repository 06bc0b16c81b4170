// ttt bench step: one training step of a model (forward, backward, gradient clipping, AdamW) on random tokens,
// timed after warm-up; prints one JSON line: median and every repetition, tokens/s, parameter count, peak memory.
// Under mpirun the step of a data-parallel `ttt train`: --batch is the global batch, split over the ranks; rank 0
// prints, adding the rank count and the communication the backward did not hide (comm_wait_ms).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <omp.h>

#include "backend/registry.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/device_flags.h"
#include "core/error.h"
#include "core/rng.h"
#include "dist/communicator.h"
#include "model/config.h"
#include "model/model.h"
#include "train/memory_budget.h"
#include "train/optimizer.h"

namespace ttt::cli {

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

model::Batch random_batch(int64_t S, int64_t N, int64_t vocab, Rng& r) {
  model::Batch b;
  b.sequences = S;
  b.len = N;
  for (int64_t i = 0; i < S * N; ++i) {
    b.inputs.push_back(int32_t(r.below(uint64_t(vocab))));
    b.targets.push_back(int32_t(r.below(uint64_t(vocab))));
  }
  return b;
}

}  // namespace

int cmd_bench_step(const Argv& argv) {
  Args a(argv, "bench step");
  a.value("preset", "model preset", "tiny")
      .value("config", "JSON model config file (overrides --preset)")
      .value("seq-len", "tokens per sequence (default: the config's seq_len)")
      .value("batch", "sequences per step", "1")
      .value("repeats", "timed steps", "3")
      .value("warmup", "untimed steps first", "1")
      .value("context-parallel", "under mpirun, arch tnt: each sequence split over groups of this many ranks "
                                 "(docs/CONTEXT_PARALLEL.md); ranks = data parallel x context parallel", "1")
      .value("cp-global", "with --context-parallel: auto (state where the global memory allows it, else gather), "
                          "gather (all-gather the global memory's inputs) or state (pass its state from rank to rank)", model::kDefaultCpGlobal)
      .flag("profile", "cuda: one extra step, synchronized around products / attention / LaCT, timed by phase")
      .flag("estimate-only", "the memory check alone: print the estimate and whether it fits this device, allocate "
                             "nothing, run nothing (exit 1 with the refusal when it does not fit)");
  declare_device_flag(a, "cuda: one NVIDIA GPU, every arch (lact, titans, tnt)");
  declare_precision_flags(a);
  declare_data_parallel_flags(a);
  a.parse();
  if (a.help_requested()) {
    std::fprintf(stdout, "%s", a.usage().c_str());
    return 0;
  }
  model::ModelConfig cfg = a.has("config") ? model::load_config(a.str("config")) : model::preset(a.str("preset"));
  if (a.has("seq-len")) cfg.seq_len = a.i64("seq-len");
  model::validate(cfg);
  const int64_t S = a.i64("batch"), N = cfg.seq_len;
  const int repeats = int(a.i64("repeats")), warmup = int(a.i64("warmup"));
  TTT_CHECK(S > 0, "ttt bench step: --batch must be > 0");
  TTT_CHECK(repeats > 0 && warmup >= 0, "ttt bench step: --repeats must be > 0 and --warmup >= 0");
  const std::string device = device_flag(a, "ttt bench step");
  const backend::EngineOptions engine_options = engine_options_flags(a, "ttt bench step", device);
  const int64_t bucket_bytes = grad_bucket_bytes_flag(a, "ttt bench step");
  // Under mpirun: one GPU per rank, chosen before anything is allocated; rank 0 alone reports.
  dist::Communicator& ranks = dist::world();
  const bool several = ranks.size() > 1, reporter = ranks.rank() == 0;
  const int64_t cp = a.i64("context-parallel");
  TTT_CHECK(cp >= 1 && cp <= 4096, "ttt bench step: --context-parallel must be a rank count from 1 to 4096, got " << cp);
  model::check_context_parallel(cfg, int(cp), ranks.size());
  const model::CpGlobal cp_global = model::resolve_cp_global(model::parse_cp_global(a.str("cp-global")), cfg);
  const int dp_groups = ranks.size() / int(cp);  // the data-parallel groups share the global batch
  if (several) {
    TTT_CHECK(S % dp_groups == 0, "ttt bench step: --batch " << S << " (the global batch) cannot be split evenly over "
                                                             << dp_groups
                                                             << (cp > 1 ? " data-parallel groups (ranks / --context-parallel)"
                                                                        : " ranks")
                                                             << ": give a multiple of " << dp_groups);
    backend::select_device_of_rank(device, ranks.local_rank(), ranks.rank());
  }

  // The same estimate as `ttt train` (one micro-batch, no evaluation), checked before anything is allocated and
  // printed beside the measured peak so that the estimate's calibration stays visible.
  train::MemoryRequest mr;
  mr.device = device;
  mr.bf16 = engine_options.precision == backend::Precision::BF16;
  mr.bf16_activations = engine_options.bf16_activations();
  mr.recompute = engine_options.recompute;
  mr.threads = omp_get_max_threads();
  mr.train_steps = true;
  mr.batch = S;  // the global batch, as `ttt train` sizes it (conservative under data parallelism)
  mr.seq_len = N;
  mr.context_parallel = cp;
  mr.cp_pass_state = cp_global == model::CpGlobal::State;
  const train::MemoryEstimate estimate = train::estimate_memory(cfg, mr);
  train::require_memory("ttt bench step", estimate);
  if (a.on("estimate-only")) {  // passed the check: the length fits (bench/cp_scaling.sh searches the limit with it)
    if (reporter)
      std::printf("%s\n", nlohmann::json{{"seq_len", N}, {"batch", S}, {"context_parallel", cp},
                                         {"cp_global", model::cp_global_name(cp_global)},
                                         {"memory_estimate_bytes", estimate.peak()}, {"fits", true}}
                              .dump()
                              .c_str());
    return 0;
  }

  // The step of `ttt train`: the device's step engine, its train_step timed (clip 1, lr 1e-4).
  const std::unique_ptr<backend::StepEngine> engine = backend::make_step_engine(device, cfg, engine_options);
  TTT_CHECK(!a.on("profile") || engine->profiles_phases(),
            "ttt bench step: --profile: device " << device << " has no phase profiling (--device cuda has)");
  if (several) {
    engine->set_gradient_buckets(bucket_bytes);
    engine->set_data_parallel(ranks, a.on("shard-optimizer"));
  }
  if (cp > 1) engine->set_context_parallel(int(cp), cp_global);
  Rng rng(1234);  // every rank: the same weights and the same global batch
  if (reporter) std::fprintf(stderr, "bench step: initializing %lld parameters...\n", (long long)model::parameter_count(cfg));
  model::Params<float> p = model::make_params<float>(cfg);
  model::init_params(cfg, p, 1);
  std::vector<int64_t> sizes;
  for (auto& m : p.values) sizes.push_back(m.size());
  train::AdamW adam(p.names, sizes, {});
  engine->attach(p, &adam);
  const std::vector<model::Batch> micro = {random_batch(S, N, cfg.vocab_size, rng)};

  nlohmann::json j{{"bench", "train_step"}, {"arch", cfg.arch}, {"dim", cfg.dim}, {"layers", cfg.n_layers},
                   {"params", model::parameter_count(cfg)}, {"seq_len", N}, {"batch", S}, {"tokens", S * N},
                   {"device", device}, {"repeats", repeats}, {"warmup", warmup},
                   {"memory_estimate_bytes", estimate.peak()}};
  if (a.has("preset") || !a.has("config")) j["preset"] = a.str("preset");
  std::vector<double> ms, comm_ms;
  backend::StepResult step;
  auto run_step = [&] { step = engine->train_step(micro, 1e-4, 1.0); };
  for (int i = 0; i < warmup + repeats; ++i) {
    const double t = engine->time_ms(run_step);
    if (reporter)
      std::fprintf(stderr, "bench step: %s step %d: %.1f ms, loss %.4f\n", i < warmup ? "warm-up" : "timed", i + 1, t,
                   step.loss);
    if (i >= warmup) ms.push_back(t), comm_ms.push_back(step.comm_wait_ms);
  }
  if (a.on("profile")) {
    engine->set_profiling(true);
    const auto t0 = std::chrono::steady_clock::now();
    run_step();
    const double all = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    nlohmann::json ph;
    double sum = 0;
    for (auto& [k, v] : engine->phase_ms()) ph[k] = v, sum += v;
    ph["other"] = all - sum;
    ph["total"] = all;
    j["phases_ms"] = ph;
    engine->set_profiling(false);
  }
  j.update(engine->report());
  const double med = median(ms);
  j["step_ms"] = ms;
  j["step_ms_median"] = med;
  j["tokens_per_s"] = med > 0 ? double(S * N) / (med / 1000.0) : 0.0;
  j["loss"] = step.loss;
  j["grad_norm"] = step.grad_norm;
  j["finite"] = std::isfinite(step.loss) && std::isfinite(step.grad_norm);
  if (several) {
    j["ranks"] = ranks.size();
    j["context_parallel"] = cp;
    j["cp_global"] = model::cp_global_name(cp_global);
    j["shard_optimizer"] = a.on("shard-optimizer");
    j["grad_bucket_bytes"] = bucket_bytes;
    j["comm_wait_ms"] = comm_ms;  // rank 0's, per timed step
    j["comm_wait_ms_median"] = median(comm_ms);
  }
  if (reporter) std::printf("%s\n", j.dump().c_str());
  return 0;
}

}  // namespace ttt::cli
