// ttt bench op | tnt: time the LaCT operator / the TNT branch (forward, forward+backward) on the device's
// OperatorBench (backend/operators.h) and print JSON lines.
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

#include "backend/registry.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/device_flags.h"
#include "backend/titans_persistent_plan.h"
#include "ttt/tnt.h"

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

DType parse_dtype(const std::string& s, const std::string& command) {
  if (s == "f32") return DType::F32;
  if (s == "f64") return DType::F64;
  TTT_FAIL(command << ": --dtype must be f32 or f64, got '" << s << "'");
}

void print_line(const nlohmann::json& j) {
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
}

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
      .value("warmup", "untimed warm-up runs", "1");
  declare_device_flag(a, "cuda defaults: --bh 4 --d 384 --dh 384 --shard 2048 --T 2048,...,32768");
  a.value("graphs", "cuda: on | off: replay each forward / backward as a captured CUDA graph", "on")
      .value("kernel",
             "cuda: auto | persistent | batched: the Titans memories' kernels (auto: persistent for chunks <= " +
                 std::to_string(titans::kPersistentMaxAutoChunk) +
                 " and d, dh <= 128 when they fit on chip; the JSON's titans_path says what ran)",
             "auto")
      .value("precision",
             "cuda: fp32 | tf32 | bf16: the memories' matrix products exact fp32, or on tensor cores with tf32 "
             "operands (the batched path's; the persistent kernels stay fp32) or bf16 operands (both paths); fp32 "
             "accumulation and state either way (the JSON's titans_path says what ran)",
             "fp32");
  a.parse();
  if (a.help_requested()) {
    std::printf("%s", a.usage().c_str());
    std::printf("\nPrints one JSON line per T for the TNT branch (forward and forward+backward, the local shards "
                "run in parallel and as one sequential pass per sequence: *_shard_speedup) and one per Titans "
                "chunk size (tnt_fwdbwd_speedup: Titans time / sharded TNT time).\n");
    return 0;
  }
  const std::string device = device_flag(a, "ttt bench tnt");
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
  backend::TntBenchSpec spec;
  spec.bh = S;
  spec.d = d;
  spec.dh = dh;
  spec.tnt = tnt;
  spec.titans_chunks = titans;
  spec.dtype = parse_dtype(a.str("dtype"), "ttt bench tnt");
  spec.repeats = repeats;
  spec.warmup = warmup;
  spec.graphs = a.str("graphs") == "on";
  spec.kernel = titans::parse_kernel_choice(a.str("kernel"), "ttt bench tnt: --kernel");
  TTT_CHECK(gpu || spec.kernel == titans::KernelChoice::Automatic,
            "ttt bench tnt: --kernel " << a.str("kernel") << " needs --device cuda (the CPU has one path)");
  spec.precision = backend::parse_precision(a.str("precision"), "ttt bench tnt: --precision");
  TTT_CHECK(gpu || spec.precision == backend::Precision::FP32,
            "ttt bench tnt: --precision " << a.str("precision") << " needs --device cuda (the CPU times fp32 / f64)");
  backend::OperatorBench& bench = backend::operator_backends(device).bench;
  for (int64_t n : parse_list(Ts)) {
    TTT_CHECK(n > 0, "--T values must be positive");
    std::fprintf(stderr, "bench tnt: T %lld ...\n", (long long)n);
    spec.T = n;
    bench.tnt(spec, print_line);
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
      .value("warmup", "untimed warm-up runs", "1");
  declare_device_flag(a, "cuda: builds with the CUDA toolkit, on an NVIDIA GPU");
  a.flag("tf32", "cuda: TF32 tensor-core matrix products (default exact fp32); same as --precision tf32")
      .value("precision", "cuda: matrix products in fp32 | tf32 | bf16 (bf16 inputs, fp32 accumulation and state)",
             "fp32");
  a.parse();
  if (a.help_requested()) {
    std::printf("%s", a.usage().c_str());
    return 0;
  }
  const std::string device = device_flag(a, "ttt bench op");
  const bool gpu = device == "cuda";
  TTT_CHECK(gpu || !a.on("tf32"), "ttt bench op: --tf32 needs --device cuda");
  backend::Precision precision = backend::parse_precision(a.str("precision"), "ttt bench op: --precision");
  TTT_CHECK(gpu || precision == backend::Precision::FP32, "ttt bench op: --precision other than fp32 needs --device cuda");
  TTT_CHECK(!a.on("tf32") || precision == backend::Precision::FP32 || precision == backend::Precision::TF32,
            "ttt bench op: --tf32 contradicts --precision " << a.str("precision"));
  if (a.on("tf32")) precision = backend::Precision::TF32;
  TTT_CHECK(!(precision == backend::Precision::BF16 && a.on("muon")),
            "ttt bench op: --precision bf16 with --muon is not supported (NS5 amplifies bf16 rounding beyond the "
            "2e-2 parity bound; see docs/PERF.md); use --precision tf32 or fp32");
  // The CUDA bench defaults to the memory of the 760M LaCT layer (docs/ALGORITHMS.md §5.5):
  // T 32768, d = dh = 384, C 2048.
  auto pick = [&](const char* name, int64_t gpu_default) { return gpu && !a.has(name) ? gpu_default : a.i64(name); };
  backend::LactBenchSpec spec;
  spec.bh = a.i64("bh");
  spec.T = pick("T", 32768);
  spec.d = pick("d", 384);
  spec.dh = pick("dh", 384);
  const std::string chunks = gpu && !a.has("chunk") ? std::string("2048") : a.str("chunk");
  TTT_CHECK(spec.bh > 0 && spec.T > 0 && spec.d > 0 && spec.dh > 0, "ttt bench op: sizes must be positive");
  spec.repeats = int(a.i64("repeats"));
  spec.warmup = int(a.i64("warmup"));
  TTT_CHECK(spec.repeats > 0 && spec.warmup >= 0, "ttt bench op: --repeats must be positive");
  spec.weight_norm = engine::parse_weight_norm(a.str("weight-norm"));
  spec.muon = a.on("muon");
  spec.momentum = !a.on("no-momentum");
  spec.dtype = parse_dtype(a.str("dtype"), "ttt bench op");
  spec.precision = precision;
  backend::OperatorBench& bench = backend::operator_backends(device).bench;
  for (int64_t c : parse_list(chunks)) {
    TTT_CHECK(c > 0, "chunk sizes must be positive");
    std::fprintf(stderr, "bench op: chunk %lld ...\n", (long long)c);
    spec.chunk = c;
    print_line(bench.lact(spec));
  }
  return 0;
}

}  // namespace ttt::cli
