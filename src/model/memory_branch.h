// The memory (TTT) branch of a block, shared by training (whole sequences through the program
// runner) and streaming inference (blocks of tokens through the same preparation and output code).
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "autograd/tape.h"
#include "model/config.h"
#include "ttt/memory.h"
#include "ttt/program.h"
#include "ttt/tnt.h"

namespace ttt::model {

// Parameter lookup of one layer, by name without the "layers.<i>." prefix.
struct LayerParams {
  std::function<ag::Var(const std::string&)> get;
};

// Per-token inputs of the memories of a layer, for rows = tokens.
struct MemoryInputVars {
  ag::Var q, k, v;       // [n, D]: per head l2n(silu(.)) and RoPE applied to q and k
  ag::Var rates;         // [n, R*H*M] (column (m*R + r)*H + h: memory m, matrix r, head h)
  ag::Var momentum;      // [n, H*M] or invalid
  ag::Var decay;         // [n, H*M] or invalid
};

// The engine configuration of memory m of the branch (LaCT: SwiGLU + dot loss; Titans: family + MSE).
engine::MemoryConfig memory_config(const ModelConfig& cfg, int64_t m);
// Weight-parameter names of memory m (e.g. "ttt.w0", "ttt.global.w1").
std::vector<std::string> memory_weight_names(const ModelConfig& cfg, int64_t m);
// The program that memory m runs over a sequence of n tokens.
engine::Program memory_program(const ModelConfig& cfg, int64_t m, int64_t n);

// The TNT options (chunks, shard, Q-K projection, global memory) of an arch "tnt" config.
engine::TntOptions tnt_options(const ModelConfig& cfg);

// x: the block's normed input [rows, D]; q, k, v: the shared projections [rows, D].
template <class T>
MemoryInputVars prepare_memory_inputs(ag::Tape<T>& t, const ModelConfig& cfg, const LayerParams& L, ag::Var x,
                                      ag::Var q, ag::Var k, ag::Var v, const std::vector<int64_t>& positions);
// The memory weights of memory m as [H*rows, cols] Vars (low-rank parameterization resolved).
template <class T>
std::vector<ag::Var> memory_weights(ag::Tape<T>& t, const ModelConfig& cfg, const LayerParams& L, int64_t m);
// Memory output o [rows, D] -> per-head RMSNorm, times the learnable scale silu(x W_s + b_s).
template <class T>
ag::Var finish_memory_output(ag::Tape<T>& t, const ModelConfig& cfg, const LayerParams& L, ag::Var x, ag::Var o);

// The whole branch over S sequences of N tokens (training / full-sequence forward).
template <class T>
ag::Var record_memory_branch(ag::Tape<T>& t, const ModelConfig& cfg, const LayerParams& L, ag::Var x, ag::Var q,
                             ag::Var k, ag::Var v, const std::vector<int64_t>& positions, int64_t S, int64_t N);

}  // namespace ttt::model
