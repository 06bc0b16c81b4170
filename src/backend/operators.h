// The memory operators on their own, per device: the LaCT operator and the TNT branch on named tensors
// (`ttt op lact|tnt`: engine::OpBackend, engine::TntBackend) and their benchmarks (`ttt bench op|tnt`:
// OperatorBench). backend::operator_backends (registry.h) returns the three of a device in one lookup.
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <vector>

#include "backend/options.h"
#include "backend/titans_persistent_plan.h"  // titans::KernelChoice
#include "core/dtype.h"
#include "ttt/lact_fused.h"
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
  // cuda: the memories' matrix products (`--precision`): FP32 exact; BF16 on tensor cores with bf16 operands (the
  // persistent kernels' v2 and the batched path's cuBLAS products); TF32 the batched path's on tensor cores with
  // tf32 operands (the persistent kernels stay fp32). Accumulation and state stay fp32 (TitansOptions).
  Precision precision = Precision::FP32;
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

// The LaCT operator on memory of the device itself (the C ABI's path for tensors already on a GPU: no copies,
// the caller's stream; registry.h's start_lact_on_device). Pointers are contiguous arrays in the layouts of
// ttt/lact_fused.h: w0, w1, w2, q, k, v, lr0, lr1, lr2 and momentum (nullptr: no momentum; rates [B,T]).
struct LactDeviceCall {
  lact::Shape shape;  // shape.momentum must say whether inputs[9] is given
  DType dtype = DType::F32;  // F32 | F64
  Precision precision = Precision::FP32;
  void* stream = nullptr;  // the caller's stream (cudaStream_t); the work is ordered after what it holds, and it
                           // waits for the work's end (nullptr: the legacy default stream)
  std::array<const void*, 10> inputs{};
};
// One forward, enqueued by start_lact_on_device; its backward may follow, once, on the same inputs (which must stay
// alive and unchanged until then). Destroying it releases its work space.
class LactDeviceRun {
 public:
  virtual ~LactDeviceRun() = default;
  // Enqueues the gradients of sum(o * grad_o) with respect to every input into grads (same order and layouts as
  // the inputs; grads[9] only with momentum). Only for a run started with gradients.
  virtual void backward(const void* grad_o, const std::array<void*, 10>& grads) = 0;
};

}  // namespace ttt::backend
