// ttt bench step: one training step of a model (forward, backward, gradient clipping, AdamW) on random tokens,
// timed after warm-up; prints one JSON line: median and every repetition, tokens/s, parameter count, peak memory.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <omp.h>

#include "cli/args.h"
#include "cli/commands.h"
#include "core/error.h"
#include "core/rng.h"
#include "model/config.h"
#include "model/model.h"
#include "train/memory_budget.h"
#include "train/optimizer.h"
#include "train/trainer.h"
#ifdef TTT_HAVE_CUDA
#include "cuda/device.h"
#include "cuda/model_cuda.h"
#endif

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
      .value("device", "cpu | cuda", "cpu")
      .value("precision", "cuda: matrix products fp32 | tf32 | bf16", "fp32")
      .value("activations", "cuda, --precision bf16: store activations in bf16 (halves the kept residual stream) | fp32", "bf16")
      .value("repeats", "timed steps", "3")
      .value("warmup", "untimed steps first", "1")
      .flag("profile", "cuda: one extra step, synchronized around products / attention / LaCT, timed by phase");
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
  const std::string device = a.str("device");
  TTT_CHECK(device == "cpu" || device == "cuda", "ttt bench step: --device must be cpu or cuda");

  // The same estimate as `ttt train` (one micro-batch, no evaluation), checked before anything is allocated and
  // printed beside the measured peak so that the estimate's calibration stays visible.
  train::MemoryRequest mr;
  mr.device = device;
  mr.bf16 = a.str("precision") == "bf16";
  mr.bf16_activations = mr.bf16 && a.str("activations") == "bf16";
  mr.threads = omp_get_max_threads();
  mr.train_steps = true;
  mr.batch = S;
  mr.seq_len = N;
  const train::MemoryEstimate estimate = train::estimate_memory(cfg, mr);
  train::require_memory("ttt bench step", estimate);

  Rng rng(1234);
  std::fprintf(stderr, "bench step: initializing %lld parameters...\n", (long long)model::parameter_count(cfg));
  model::Params<float> p = model::make_params<float>(cfg);
  model::init_params(cfg, p, 1);
  std::vector<int64_t> sizes;
  for (auto& m : p.values) sizes.push_back(m.size());
  train::AdamW adam(p.names, sizes, {});
  const model::Batch batch = random_batch(S, N, cfg.vocab_size, rng);

  nlohmann::json j{{"bench", "train_step"}, {"arch", cfg.arch}, {"dim", cfg.dim}, {"layers", cfg.n_layers},
                   {"params", model::parameter_count(cfg)}, {"seq_len", N}, {"batch", S}, {"tokens", S * N},
                   {"device", device}, {"repeats", repeats}, {"warmup", warmup},
                   {"memory_estimate_bytes", estimate.peak()}};
  if (a.has("preset") || !a.has("config")) j["preset"] = a.str("preset");
  std::vector<double> ms;
  double loss = 0, gnorm = 0;
  if (device == "cuda") {
#ifdef TTT_HAVE_CUDA
    cuda::GpuModelOptions go;
    go.math = cuda::parse_math_mode(a.str("precision"));
    go.bf16_activations = cuda::parse_activations(a.str("activations"));
    TTT_CHECK(a.str("precision") == "bf16" || !a.has("activations"),
              "ttt bench step: --activations applies to --precision bf16");
    cuda::reset_tracked_peak();
    cuda::GpuModel gm(cfg, go);
    gm.upload(p);
    gm.upload_optimizer(adam);
    auto step = [&] {
      gm.zero_grad();
      loss = gm.forward(batch, true, 1.0).loss;
      gnorm = gm.clip_grad_norm(1.0);
      gm.adamw_step(adam, 1e-4);
    };
    for (int i = 0; i < warmup + repeats; ++i) {
      const double t = cuda::elapsed_ms(step);
      std::fprintf(stderr, "bench step: %s step %d: %.1f ms, loss %.4f\n", i < warmup ? "warm-up" : "timed", i + 1, t,
                   loss);
      if (i >= warmup) ms.push_back(t);
    }
    if (a.on("profile")) {
      gm.set_profiling(true);
      const auto t0 = std::chrono::steady_clock::now();
      step();
      const double all = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      nlohmann::json ph;
      double sum = 0;
      for (auto& [k, v] : gm.phase_ms()) ph[k] = v, sum += v;
      ph["other"] = all - sum;
      ph["total"] = all;
      j["phases_ms"] = ph;
      gm.set_profiling(false);
    }
    size_t used = 0, total = 0;
    cuda::device_memory(&used, &total);
    j["gpu"] = cuda::device_description();
    j["precision"] = a.str("precision");
    if (a.str("precision") == "bf16") j["activations"] = a.str("activations");
    j["timer"] = "cuda events";
    j["tracked_peak_bytes"] = cuda::tracked_peak_bytes();
    j["device_used_bytes"] = used;
    j["device_total_bytes"] = total;
#else
    TTT_FAIL("ttt bench step: --device cuda: this build has no CUDA backend");
#endif
  } else {
    TTT_CHECK(!a.has("precision") && !a.has("activations"),
              "ttt bench step: --precision and --activations apply to --device cuda");
    std::vector<model::Batch> micro = {batch};
    std::vector<ag::Mat<float>> grads;
    for (int i = 0; i < warmup + repeats; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      loss = train::accumulate_gradients(cfg, p, micro, grads);
      gnorm = train::clip_grad_norm(grads, 1.0);
      adam.step(p.values, grads, 1e-4);
      const double t = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      if (i >= warmup) ms.push_back(t);
    }
    j["timer"] = "steady_clock";
  }
  const double med = median(ms);
  j["step_ms"] = ms;
  j["step_ms_median"] = med;
  j["tokens_per_s"] = med > 0 ? double(S * N) / (med / 1000.0) : 0.0;
  j["loss"] = loss;
  j["grad_norm"] = gnorm;
  j["finite"] = std::isfinite(loss) && std::isfinite(gnorm);
  std::printf("%s\n", j.dump().c_str());
  return 0;
}

}  // namespace ttt::cli
