// `ttt bench op --device cuda`: the CUDA LaCT operator timed on device-resident random inputs (CUDA events,
// median of the repetitions after warm-up), as one JSON object with the CPU bench's fields plus the GPU's.
#include "backend/cuda/cuda_bench.h"

#include "backend/cuda/lact_cuda.h"

namespace ttt::cuda {

nlohmann::json bench_json_fields(const OpBenchResult& r) {
  return {{"fwd_ms_all", r.fwd_ms},
          {"fwdbwd_ms_all", r.fwdbwd_ms},
          {"peak_gpu_bytes", r.tracked_peak_bytes},
          {"workspace_bytes", r.workspace_bytes},
          {"gpu_used_bytes", r.device_used_bytes},
          {"gpu_total_bytes", r.device_total_bytes},
          {"outputs_finite", r.output_finite}};
}

nlohmann::json bench_lact_json(const lact::Shape& s, int repeats, int warmup, backend::Precision precision) {
  std::string why;
  TTT_CHECK(device_count(&why) > 0, "ttt bench op --device cuda: no usable CUDA device (" << why << ")");
  const LactOptions opt = with_kept_products_if_room(s, precision_options(precision));  // as `ttt op lact` runs
  LactBenchResult r = bench_lact(s, repeats, warmup, opt);
  const double fwd = r.fwd_ms_median / 1e3, fwdbwd = r.fwdbwd_ms_median / 1e3;
  // FLOPs as the LaCT code counts them (docs/ALGORITHMS.md §5.5): forward 18*d*dh*T per head; training 3x.
  const double flops_fwd = 18.0 * double(s.d) * double(s.dh) * double(s.T) * double(s.B);
  const double tokens = double(s.B) * double(s.T);
  nlohmann::json j{{"op", "lact"},
                   {"device", "cuda"},
                   {"gpu", r.device},
                   {"dtype", "f32"},
                   {"math", precision_name(opt)},
                   {"threads", 1},
                   {"bh", s.B},
                   {"T", s.T},
                   {"d", s.d},
                   {"dh", s.dh},
                   {"chunk", s.chunk},
                   {"program", s.causal ? "causal" : "bidirectional"},
                   {"momentum", s.momentum},
                   {"muon", s.muon},
                   // Muon's NS5 on fp16 (LactOptions::ns5_fp16) or in the products' own precision.
                   {"ns5", !s.muon ? "none" : ns5_fp16_of(opt) ? "fp16" : precision_name(opt)},
                   {"weight_norm", engine::weight_norm_name(s.norm)},
                   {"repeats", repeats},
                   {"warmup", warmup},
                   {"fwd_s", fwd},
                   {"fwd_tokens_per_s", tokens / fwd},
                   {"fwd_gflops", flops_fwd / fwd / 1e9},
                   {"fwdbwd_s", fwdbwd},
                   {"fwdbwd_tokens_per_s", tokens / fwdbwd},
                   {"fwdbwd_gflops", 3 * flops_fwd / fwdbwd / 1e9}};
  j.update(bench_json_fields(r));
  return j;
}

}  // namespace ttt::cuda
