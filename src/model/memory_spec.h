// The memory spec: what a model config's memory branch is made of, derived once from the ModelConfig
// (docs/ALGORITHMS.md §5, §6). Per memory: its role, its engine configuration (family, inner loss, widths, momentum,
// Muon, decay, weight norm, rate columns), chunk, reset period, Q-K projection, gate columns, parameter names and
// program; for the branch: the gate projections and the rule that makes the rates.
//
// Every consumer reads it instead of mapping the config itself: the parameter layout (config.cpp), the tape model
// (memory_branch.cpp), the streaming model (infer/stream.cpp), the GPU model (cuda/model_cuda_layer.cpp), GPU
// generation (cuda/generate_cuda.cpp) and the memory estimates (train/memory_budget.cpp).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/scalar_math.h"
#include "model/config.h"
#include "ttt/branch_layout.h"
#include "ttt/memory.h"
#include "ttt/program.h"

namespace ttt::model {

enum class MemoryRole {
  Lact,       // arch "lact": the SwiGLU memory, dot-product loss, chunk `chunk`
  Titans,     // arch "titans": one Titans memory (family `memory`, MSE loss), chunk `chunk`, never reset
  TntGlobal,  // arch "tnt": the global memory, chunk `global_chunk`, never reset
  TntLocal,   // arch "tnt": local memory i, chunk local_chunks[i], reset every `shard` tokens
};
const char* memory_role_name(MemoryRole r);

// One weight matrix of a memory: its parameter name (without "layers.<l>."), its per-head shape [rows, cols]
// (the tensor is [H, rows, cols]), and whether the parameter is stored as low-rank factors name.a [H, rows, r] and
// name.b [H, r, cols] with W = A B + 0.5 I (LaCT w0 / w2 with low_rank_init).
struct MemoryWeightSpec {
  std::string name;
  int64_t rows = 0, cols = 0;
  bool low_rank = false;
};

// One memory: its place in the branch (engine::BranchMemory: chunk, shard = reset period (0: never), qk_proj,
// local index) and what the model builds around it.
struct MemorySpec : engine::BranchMemory {
  int64_t index = 0;  // m: outputs are summed in this order
  MemoryRole role = MemoryRole::Lact;
  engine::MemoryConfig config;  // d, dh, family, loss, momentum, Muon, decay, weight norm, residual, rate columns R
  int64_t rate_col0 = 0;  // its rates: columns rate_col0 + r*H + h of ttt.lr (r < R, head h)
  int64_t gate_col0 = 0;  // its η / α: columns gate_col0 + h of ttt.momentum / ttt.decay
  std::string prefix;     // parameter-name prefix: "ttt." | "ttt.global." | "ttt.local.<i>."
  std::vector<MemoryWeightSpec> weights;  // in config.weight_names() order

  engine::Program program(int64_t n) const;  // over n tokens: causal_program(n, chunk, shard)
};

// The memory branch of a layer: its memories and its gate projections ttt.lr (rates), ttt.momentum (η) and
// ttt.decay (α).
struct BranchSpec {
  std::vector<MemorySpec> memories;
  engine::BranchLayout layout;  // the memories' places as the operators take them (TntOptions, TntShape)
  math::GateRule rate;          // rates from ttt.lr: softplus(z + softplus⁻¹(lr_init)) | base · sigmoid(z)
  math::GateRule gate;          // η and α from ttt.momentum / ttt.decay: sigmoid(z)
  int64_t rate_columns = 0;     // columns of ttt.lr: R·H per memory
  int64_t gate_columns = 0;     // columns of ttt.momentum / ttt.decay: H per memory
  bool momentum = false;        // ttt.momentum exists
  bool decay = false;           // ttt.decay exists
};

// None of these validates cfg (validate() calls them through the parameter layout); callers pass valid configs.
// The memories' places: "tnt" as configured; "lact" and "titans" one memory with chunk `chunk`, never reset.
engine::BranchLayout branch_layout(const ModelConfig& cfg);
BranchSpec branch_spec(const ModelConfig& cfg);
std::vector<MemorySpec> memory_specs(const ModelConfig& cfg);  // branch_spec(cfg).memories

}  // namespace ttt::model
