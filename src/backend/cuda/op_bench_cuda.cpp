// The CUDA operator benchmarks behind backend::OperatorBench (`ttt bench op|tnt --device cuda`): CUDA events,
// median of the repetitions after warm-up, on device-resident random inputs (cuda_bench.h, tnt_cuda.h).
#include "backend/operators.h"
#include "core/error.h"
#include "backend/cuda/cuda_bench.h"
#include "backend/cuda/engine_cuda.h"
#include "backend/cuda/tnt_cuda.h"

namespace ttt::cuda {

namespace {

class CudaOperatorBench final : public backend::OperatorBench {
 public:
  nlohmann::json lact(const backend::LactBenchSpec& spec) override {
    TTT_CHECK(spec.dtype == DType::F32, "ttt bench op: --device cuda times f32 only");
    lact::Shape s;
    s.B = spec.bh;
    s.T = spec.T;
    s.d = spec.d;
    s.dh = spec.dh;
    s.chunk = spec.chunk;
    s.causal = true;
    s.momentum = spec.momentum;
    s.muon = spec.muon;
    s.norm = spec.weight_norm;
    return bench_lact_json(s, spec.repeats, spec.warmup, spec.precision);
  }

  // The branch and the Titans baseline (cuda::bench_tnt), one JSON line each, with the FLOP floor of the
  // algorithm's matrix products (titans::tnt_flops) and the rate it reaches.
  void tnt(const backend::TntBenchSpec& spec, const std::function<void(const nlohmann::json&)>& emit) override {
    TTT_CHECK(spec.dtype == DType::F32, "ttt bench tnt: --device cuda times f32 only");
    auto shape_of = [&](const engine::TntOptions& o) {
      titans::TntShape s;
      s.B = spec.bh;
      s.T = spec.T;
      s.d = spec.d;
      s.use_global = o.use_global;
      s.global_chunk = o.global_chunk;
      s.local_chunks = o.local_chunks;
      s.shard = o.shard;
      s.qk_proj = o.qk_proj;
      s.dh.assign(size_t(o.num_memories()), spec.dh);
      return s;
    };
    const double tokens = double(spec.bh) * double(spec.T);
    auto run = [&](const char* op, const titans::TntShape& s) {
      const TntBenchResult r = bench_tnt(s, spec.repeats, spec.warmup, spec.graphs, spec.kernel, spec.precision);
      const titans::FlopCount f = titans::tnt_flops(s);
      const double fwd = r.fwd_ms_median / 1e3, fwdbwd = r.fwdbwd_ms_median / 1e3;
      nlohmann::json j{{"op", op},
                       {"device", "cuda"},
                       {"gpu", r.device},
                       {"dtype", "f32"},
                       {"math", backend::precision_name(spec.precision)},
                       {"cuda_graphs", spec.graphs},
                       {"titans_kernel", titans::kernel_choice_name(spec.kernel)},
                       {"titans_path", r.kernel_path},
                       {"bh", spec.bh},
                       {"T", spec.T},
                       {"d", spec.d},
                       {"dh", spec.dh},
                       {"repeats", spec.repeats},
                       {"warmup", spec.warmup},
                       {"fwd_s", fwd},
                       {"fwdbwd_s", fwdbwd},
                       {"fwd_tokens_per_s", tokens / fwd},
                       {"fwdbwd_tokens_per_s", tokens / fwdbwd},
                       {"flops_fwd", f.fwd},
                       {"flops_fwdbwd", f.fwdbwd},
                       {"fwd_tflops", f.fwd / fwd / 1e12},
                       {"fwdbwd_tflops", f.fwdbwd / fwdbwd / 1e12}};
      j.update(bench_json_fields(r));
      return std::make_pair(j, fwdbwd);
    };
    const engine::TntOptions& tnt = spec.tnt;
    auto [j, tnt_fwdbwd] = run("tnt", shape_of(tnt));
    j["global"] = tnt.use_global;
    j["global_chunk"] = tnt.global_chunk;
    j["local_chunks"] = tnt.local_chunks;
    j["shard"] = tnt.shard;
    j["shards_per_sequence"] = tnt.shard > 0 ? (spec.T + tnt.shard - 1) / tnt.shard : 1;
    j["qk_proj"] = tnt.qk_proj;
    emit(j);
    for (int64_t c : spec.titans_chunks) {
      engine::TntOptions one;
      one.use_global = true;
      one.global_chunk = c;
      one.local_chunks.clear();
      one.shard = 0;
      auto [jt, fb] = run("titans", shape_of(one));
      jt["chunk"] = c;
      jt["tnt_fwdbwd_speedup"] = fb / tnt_fwdbwd;  // > 1: the TNT branch is faster
      emit(jt);
    }
  }
};

}  // namespace

backend::OperatorBench& operator_bench() {
  static CudaOperatorBench bench;
  return bench;
}

}  // namespace ttt::cuda
