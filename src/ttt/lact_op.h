// The LaCT memory operator on named tensors (what `ttt op lact` runs), behind a backend
// interface so that every device implements the same contract and is tested against the CPU's.
#pragma once
#include <string>

#include "core/safetensors.h"
#include "ttt/memory.h"

namespace ttt::engine {

struct LactOpOptions {
  int64_t chunk = 64;
  std::string program = "causal";  // causal | bidirectional
  WeightNorm weight_norm = WeightNorm::Post;
  bool muon = false;
  // Matrix products of the CUDA backend on F32 inputs: fp32 | tf32 | bf16 (bf16 inputs, fp32 accumulation and
  // state), the text of a backend::Precision (the CLI writes it from the parsed flag; the CUDA backend reads it
  // with backend::parse_precision). The CPU backend computes in the inputs' dtype and accepts fp32 only.
  std::string precision = "fp32";
};

// The LaCT memory (spec of docs/ALGORITHMS.md §5): SwiGLU fast weights, dot-product inner loss, one rate per
// weight matrix; the one place that says so for the operator, its benchmark and the model's memory spec.
MemoryConfig lact_memory_config(int64_t d, int64_t dh, bool momentum, bool muon, WeightNorm weight_norm);

// Inputs: w0 [B,dh,d], w1 [B,d,dh], w2 [B,dh,d], q/k/v [B,T,d], lr0/lr1/lr2 [B,T],
// optional momentum [B,T] (turns momentum on) and grad_o [B,T,d]; all F64 or all F32.
// Outputs: o [B,T,d] and, with grad_o, grad_<name> for every input.
class OpBackend {
 public:
  virtual ~OpBackend() = default;
  virtual const char* name() const = 0;
  virtual SafeTensors lact(const SafeTensors& inputs, const LactOpOptions& opt) = 0;
};

OpBackend& cpu_backend();

// The shapes every backend sees after validation of the contract above.
struct LactShapes {
  int64_t B = 0, T = 0, d = 0, dh = 0;
  DType dtype = DType::F32;
  bool momentum = false, grad = false;
};
// Validates names, shapes, dtypes (all F64 or all F32), finiteness and options; throws a ttt::Error naming
// the offending tensor. Every backend calls this first.
LactShapes validate_lact_inputs(const SafeTensors& inputs, const LactOpOptions& opt);
// Other devices' backends: backend::operator_backends(device) (backend/registry.h).

}  // namespace ttt::engine
