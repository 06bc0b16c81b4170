// The memory operators on their own, per device: the LaCT operator and the TNT branch on named tensors
// (`ttt op lact|tnt`: engine::OpBackend, engine::TntBackend) and their benchmarks (`ttt bench op|tnt`:
// OperatorBench). backend::operator_backends (registry.h) returns the three of a device in one lookup.
#pragma once
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <vector>

#include "backend/options.h"
#include "backend/titans_persistent_plan.h"  // titans::KernelChoice
#include "core/dtype.h"
#include "ttt/lact_op.h"
#include "ttt/tnt.h"

namespace ttt::backend {

// `ttt bench op`: the causal LaCT operator (SwiGLU memory, dot-product loss, three rate columns) over `bh`
// sequence-heads of T tokens on random inputs.
struct LactBenchSpec {
  int64_t bh = 4, T = 4096, d = 64, dh = 64, chunk = 64;
  bool momentum = true, muon = false;
  engine::WeightNorm weight_norm = engine::WeightNorm::Post;
  DType dtype = DType::F32;  // F32 | F64
  Precision precision = Precision::FP32;
  int repeats = 3, warmup = 1;
};

// `ttt bench tnt`: the TNT branch of `tnt` over `bh` sequences of T tokens (one head), then the single-memory
// Titans baseline at each of titans_chunks.
struct TntBenchSpec {
  int64_t bh = 1, T = 2048, d = 32, dh = 32;
  engine::TntOptions tnt;
  std::vector<int64_t> titans_chunks;
  DType dtype = DType::F32;
  int repeats = 3, warmup = 1;
  bool graphs = true;  // devices that can: replay each forward / backward as a captured graph
  // cuda: the Titans memories' kernels (auto: persistent where the plan fits, backend/titans_persistent_plan.h).
  titans::KernelChoice kernel = titans::KernelChoice::Automatic;
};

class OperatorBench {
 public:
  virtual ~OperatorBench() = default;
  // Forward and forward + backward, median of `repeats` after `warmup`: one JSON object (op, device, dtype,
  // shapes, fwd_s, fwdbwd_s, tokens/s, GFLOP/s, and what the device adds).
  virtual nlohmann::json lact(const LactBenchSpec& spec) = 0;
  // One JSON object for the branch, then one per Titans chunk size, each handed to `emit` once measured.
  virtual void tnt(const TntBenchSpec& spec, const std::function<void(const nlohmann::json&)>& emit) = 0;
};

struct OperatorBackends {
  engine::OpBackend& lact;
  engine::TntBackend& tnt;
  OperatorBench& bench;
};

// The CPU's (backend/cpu/op_bench_cpu.cpp).
OperatorBench& cpu_operator_bench();

}  // namespace ttt::backend
