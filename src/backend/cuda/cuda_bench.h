// JSON result of `ttt bench op --device cuda` (see cuda_bench.cpp).
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "backend/options.h"
#include "backend/cuda/device.h"
#include "ttt/lact_fused.h"

namespace ttt::cuda {

// Fields: those of the CPU bench (op, device, dtype, threads, bh, T, d, dh, chunk, momentum, muon,
// weight_norm, repeats, fwd_s, fwd_tokens_per_s, fwd_gflops, fwdbwd_s, fwdbwd_tokens_per_s, fwdbwd_gflops)
// plus gpu, math, program, warmup, fwd_ms_all, fwdbwd_ms_all, peak_gpu_bytes (this library's allocations),
// workspace_bytes, gpu_used_bytes / gpu_total_bytes (cudaMemGetInfo) and outputs_finite.
// precision: the "math" field (bf16 = bf16 matrix inputs, fp32 accumulation and state). Typed, not text: a
// `bool tf32` overload once caught a `const char*` "bf16" by pointer-to-bool conversion and timed tf32.
// The device's fields of a benchmark line: fwd_ms_all, fwdbwd_ms_all, peak_gpu_bytes, workspace_bytes,
// gpu_used_bytes, gpu_total_bytes, outputs_finite.
nlohmann::json bench_json_fields(const OpBenchResult& r);

nlohmann::json bench_lact_json(const lact::Shape& s, int repeats, int warmup, backend::Precision precision);

}  // namespace ttt::cuda
