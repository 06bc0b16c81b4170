// The TNT memory branch (docs/ALGORITHMS.md §6): one global memory, causal chunked with a large chunk C_G over the
// whole sequence (never reset), plus N local memories, each causal chunked with its own chunk C_L⁽ⁱ⁾ and
// reset to its own learned W⁰ at every multiple of S_L (chunks aligned to the shard start), read with
// Q-K projected queries (qk_projection.h). Output o_t = M_G(q_t) + Σ_i M_L⁽ⁱ⁾(q̃⁽ⁱ⁾_t).
//
// Two levels:
//   * tnt_branch: the branch on the autograd tape over multi-head activations [S*N, H*d], built from
//     memory_op (one per memory; the local shards run as parallel items) and qk_project. Gradients of
//     every input, second order through every update.
//   * TntBackend::tnt: the branch on named tensors (what `ttt op tnt` runs), behind a backend interface
//     like lact_op.h so that another backend can implement the same contract and be tested against it.
#pragma once
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "ttt/branch_layout.h"
#include "ttt/memory_op.h"

namespace ttt::engine {

// The Titans memory of TNT: MLP f(x) = x + W2 silu(W1 x), MSE loss, momentum (chunk mean of η), decay
// (chunk mean of α), one rate column (θ); no Muon, no weight norm.
MemoryConfig titans_memory_config(int64_t d, int64_t dh);

struct TntOptions {
  bool use_global = true;
  int64_t global_chunk = 2048;              // C_G
  std::vector<int64_t> local_chunks = {8, 16};  // C_L⁽ⁱ⁾, one per local memory
  int64_t shard = 2048;                     // S_L; 0: the local memories are never reset
  bool qk_proj = true;                      // read the local memories with Q-K projected queries
  BatchOptions batch;                       // batch.split_shards: local shards as parallel items
  void validate() const;
  BranchLayout layout() const { return {use_global, global_chunk, local_chunks, shard, qk_proj}; }
  int64_t num_memories() const { return layout().num_memories(); }
};

// One memory of the branch on a tape, in memory_op's layout (memory_op.h): w0 one Var per weight
// matrix [H*rows, cols]; rates [S*N, H] (θ), momentum_gate [S*N, H] (η), decay_gate [S*N, H] (α),
// the gates valid iff cfg.momentum / cfg.decay.
struct TntMemoryVars {
  MemoryConfig cfg;
  std::vector<ag::Var> w0;
  ag::Var rates, momentum_gate, decay_gate;
};

// q, k, v: [S*N, H*d], shared by all memories. mems: the global memory first iff opt.use_global, then
// the local memories in the order of opt.local_chunks. Returns o [S*N, H*d].
template <class T>
ag::Var tnt_branch(ag::Tape<T>& t, const TntOptions& opt, int64_t sequences, int64_t heads, ag::Var q, ag::Var k,
                   ag::Var v, const std::vector<TntMemoryVars>& mems);
// The same for memories at any places (branch_layout.h; the model passes its memory spec's): memory m runs
// causal_program(N, chunk, shard) on queries Q-K projected iff qk_proj; outputs summed in order.
template <class T>
ag::Var branch_sum(ag::Tape<T>& t, int64_t sequences, int64_t heads, ag::Var q, ag::Var k, ag::Var v,
                   const std::vector<BranchMemory>& places, const std::vector<TntMemoryVars>& mems,
                   const BatchOptions& batch = {});

// Named tensors (B sequence-heads, each with its own initial weights):
//   q, k, v [B,T,d];  global memory: g_w1 [B,dh,d], g_w2 [B,d,dh], g_theta, g_eta, g_alpha [B,T]
//   (absent with use_global off); local memory i: the same with prefix l<i>_; optional grad_o [B,T,d].
//   Every memory may have its own dh. All F64 or all F32.
// Outputs: o [B,T,d] and, with grad_o, grad_<name> for every input (grad_grad_o = o, the gradient of
// sum(o * grad_o) with respect to grad_o).
class TntBackend {
 public:
  virtual ~TntBackend() = default;
  virtual const char* name() const = 0;
  virtual SafeTensors tnt(const SafeTensors& inputs, const TntOptions& opt) = 0;
};

TntBackend& tnt_cpu_backend();

// The contract's checks, shared by every backend: names, shapes, one dtype (F64 or F32), finite values;
// throws a ttt::Error naming the offending tensor. Returns the dtype.
DType validate_tnt_inputs(const SafeTensors& inputs, const TntOptions& opt);
// The name prefix of memory m's tensors: "g_" (the global memory) or "l<i>_".
std::string tnt_input_prefix(const TntOptions& opt, size_t m);
// Other devices' backends: backend::operator_backends(device) (backend/registry.h).

// Parses "8,16" (also "none" or "" for no local memory).
std::vector<int64_t> parse_chunk_list(const std::string& s, const std::string& flag);

}  // namespace ttt::engine
