// The memory (TTT) branch of a block, shared by training (whole sequences through the program
// runner) and streaming inference (blocks of tokens through the same preparation and output code).
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "autograd/tape.h"
#include "model/config.h"
#include "model/context_parallel.h"
#include "model/memory_spec.h"

namespace ttt::model {

// Parameter lookup of one layer, by name without the "layers.<i>." prefix.
struct LayerParams {
  std::function<ag::Var(const std::string&)> get;
};

// Per-token inputs of the memories of a layer, for rows = tokens (columns: BranchSpec, MemorySpec).
struct MemoryInputVars {
  ag::Var q, k, v;       // [n, D]: per head l2n(silu(.)) and RoPE applied to q and k
  ag::Var rates;         // [n, rate_columns]: memory m's rate r of head h in column rate_col0 + r*H + h
  ag::Var momentum;      // [n, gate_columns] (memory m, head h: column gate_col0 + h) or invalid
  ag::Var decay;         // [n, gate_columns] or invalid
};

// x: the block's normed input [rows, D]; q, k, v: the shared projections [rows, D].
template <class T>
MemoryInputVars prepare_memory_inputs(ag::Tape<T>& t, const ModelConfig& cfg, const LayerParams& L, ag::Var x,
                                      ag::Var q, ag::Var k, ag::Var v, const std::vector<int64_t>& positions);
// The weights of one memory as [H*rows, cols] Vars (low-rank parameterization resolved).
template <class T>
std::vector<ag::Var> memory_weights(ag::Tape<T>& t, const ModelConfig& cfg, const LayerParams& L,
                                    const MemorySpec& spec);
// Memory output o [rows, D] -> per-head RMSNorm, times the learnable scale silu(x W_s + b_s).
template <class T>
ag::Var finish_memory_output(ag::Tape<T>& t, const ModelConfig& cfg, const LayerParams& L, ag::Var x, ag::Var o);

// The whole branch over S sequences of equal length (training / full-sequence forward): every memory of the
// spec through the engine (engine::branch_sum), outputs summed, then finish_memory_output. With `cp` (context
// parallelism, context_parallel.h) the rows are this rank's span of each sequence (positions: global): a memory
// that resets at span boundaries runs on the span; one that does not (the global memory) runs on the gathered
// inputs of the spans up to this one (gather_prefix) and keeps its outputs of this span, or with
// cp->global == CpGlobal::State on the span from the state the previous rank passes (state_link).
template <class T>
ag::Var record_memory_branch(ag::Tape<T>& t, const ModelConfig& cfg, const LayerParams& L, ag::Var x, ag::Var q,
                             ag::Var k, ag::Var v, const std::vector<int64_t>& positions, int64_t S,
                             const ContextSpan* cp = nullptr);

}  // namespace ttt::model
