// Fast-weight memories (docs/ALGORITHMS.md §2), inner losses and the chunk update (§3),
// written as recordings on the autograd tape so that forward and backward share one code path.
#pragma once
#include <string>
#include <vector>

#include "autograd/ops.h"
#include "ttt/memory_kinds.h"

namespace ttt::engine {

struct MemoryConfig {
  Family family = Family::SwiGLU;
  Loss loss = Loss::Dot;
  int64_t d = 0;   // key/query/value width
  int64_t dh = 0;  // hidden width (SwiGLU, MLP)
  bool mlp_residual = true;  // MLP: f(x) = x + W2 silu(W1 x)   [choice, on by default]
  bool momentum = false;     // S_c = dW_c + mean(m) S_{c-1}
  bool muon = false;         // dW <- NS5(dW)
  bool decay = false;        // W <- (1 - mean(alpha)) W
  WeightNorm weight_norm = WeightNorm::None;
  // Number of per-token rate columns: 1 (one rate shared by every matrix) or num_weights() (one per matrix).
  int64_t rate_columns = 1;

  int64_t num_weights() const;
  // Shapes of the weight matrices, in family order:
  //   SwiGLU: W0 [dh,d], W1 [d,dh], W2 [dh,d];  MLP: W1 [dh,d], W2 [d,dh];  Linear: W [d,d].
  std::vector<std::pair<int64_t, int64_t>> weight_shapes() const;
  std::vector<std::string> weight_names() const;  // "w0","w1","w2" / "w1","w2" / "w"
  void validate() const;
};

// Variables of a memory state on a tape: the weights and (with momentum) the momentum buffers.
// With pre-norm, `weights` is the unnormalized accumulator, which starts at W⁰.
struct StateVars {
  std::vector<ag::Var> weights;
  std::vector<ag::Var> momentum;  // empty when momentum is off
  bool updated = false;           // an update happened since W⁰ (initial state or reset)
};

// Per-chunk update inputs on a tape (rows are the chunk's tokens).
struct UpdateVars {
  ag::Var k, v;         // [n,d]
  ag::Var rates;        // [n,rate_columns]
  ag::Var momentum_gate;  // [n,1] or invalid
  ag::Var decay_gate;     // [n,1] or invalid
};

// The weights the memory applies with and takes the inner gradient at: the state itself; with pre-norm, as the
// public prenorm LaCT operator, W⁰ itself (the state, unnormalized) until the first update and the state's
// row-normalized copy after it.
template <class T>
std::vector<ag::Var> effective_weights(ag::Tape<T>& t, const MemoryConfig& cfg, const StateVars& s,
                                       const std::vector<ag::Var>& w_init);

// o = f_W(q) for q [n,d].
template <class T>
ag::Var record_apply(ag::Tape<T>& t, const MemoryConfig& cfg, const std::vector<ag::Var>& w, ag::Var q);

// The descent direction -sum_t rate_t grad_W loss_t at weights w, one matrix per weight (§3.1).
template <class T>
std::vector<ag::Var> record_inner_step(ag::Tape<T>& t, const MemoryConfig& cfg, const std::vector<ag::Var>& w,
                                       const UpdateVars& in);

// Newton-Schulz orthogonalization (five steps, docs/ALGORITHMS.md §3.2).
template <class T>
ag::Var record_ns5(ag::Tape<T>& t, ag::Var m);

// One chunk update of docs/ALGORITHMS.md §3.3: inner step, momentum, Muon, decay, step, weight norm. Returns the new
// state (marked updated).
template <class T>
StateVars record_update(ag::Tape<T>& t, const MemoryConfig& cfg, const StateVars& s, const std::vector<ag::Var>& w_init,
                        const UpdateVars& in);

}  // namespace ttt::engine
