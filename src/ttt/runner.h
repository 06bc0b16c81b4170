// Runs a TTT program on one memory per (sequence, head): forward, backward and streaming.
//
// Forward keeps only the memory states at update/reset points ("versions"). Backward walks the
// program in reverse; for each operation it records that one operation on a fresh tape from the
// saved state, seeds the output cotangents (dO of the applied tokens; dW, dS of the state after
// an update) and runs the tape backward, which yields the cotangents of the state before it and
// of the operation's inputs. The tape differentiates the inner gradient itself, so the pass is
// second order and exact.
#pragma once
#include <vector>

#include "ttt/memory.h"
#include "ttt/program.h"

namespace ttt::engine {

// Inputs of one sequence-head. Rows are tokens.
template <class T>
struct SequenceInputs {
  std::vector<ag::Mat<T>> w0;   // initial weights, MemoryConfig::weight_shapes() order
  ag::Mat<T> q, k, v;           // [T,d]
  ag::Mat<T> rates;             // [T,rate_columns]
  ag::Mat<T> momentum_gate;     // [T,1] when cfg.momentum
  ag::Mat<T> decay_gate;        // [T,1] when cfg.decay
  // The chain's entry momentum (MemoryConfig::weight_shapes() order) when it starts mid-sequence (context
  // parallelism: the state passed from the previous span, whose weights are w0); empty: zero momentum. Needs a
  // program without resets and no weight norm (then w0 enters the chain only as its entry weights).
  std::vector<ag::Mat<T>> momentum0;
};
// Gradients have the same layout as the inputs; momentum0 is the entry momentum's adjoint when cfg.momentum, and
// w0's gradient is the entry weights' adjoint.
template <class T>
using SequenceGrads = SequenceInputs<T>;

// The recurrent state of one memory.
template <class T>
struct MemoryState {
  std::vector<ag::Mat<T>> weights;   // with pre-norm: the unnormalized accumulator
  std::vector<ag::Mat<T>> momentum;  // empty when momentum is off
  bool updated = false;              // an update happened since W⁰ (pre-norm applies W⁰ itself until then)
};

template <class T>
struct SavedStates {
  std::vector<MemoryState<T>> versions;  // versions[0] = initial; one more per update or reset
};

// A chain that starts from a passed state (SequenceInputs::momentum0, run_backward's grad_exit) needs a program
// without resets and a memory without weight norm; throws naming which.
void check_chain_entry(const MemoryConfig& cfg, const Program& prog);

template <class T>
void check_inputs(const MemoryConfig& cfg, const Program& prog, const SequenceInputs<T>& in);

template <class T>
MemoryState<T> initial_state(const MemoryConfig& cfg, const std::vector<ag::Mat<T>>& w0);
// The state the chain starts from: w0 and momentum0 (zero when empty).
template <class T>
MemoryState<T> entry_state(const MemoryConfig& cfg, const SequenceInputs<T>& in);
// The state after the program's last operation (its exit state: what a chain continuing on the next span starts
// from), from the states the forward saved.
template <class T>
const MemoryState<T>& exit_state(const SavedStates<T>& saved);

// Streaming primitives; the program runner is built from exactly these.
template <class T>
ag::Mat<T> state_apply(const MemoryConfig& cfg, const MemoryState<T>& s, const std::vector<ag::Mat<T>>& w0,
                       const ag::Mat<T>& q);
template <class T>
void state_update(const MemoryConfig& cfg, MemoryState<T>& s, const std::vector<ag::Mat<T>>& w0, const ag::Mat<T>& k,
                  const ag::Mat<T>& v, const ag::Mat<T>& rates, const ag::Mat<T>& momentum_gate,
                  const ag::Mat<T>& decay_gate);

// o [T,d]; tokens no apply covers are 0; a token applied twice keeps its last output.
template <class T>
ag::Mat<T> run_forward(const MemoryConfig& cfg, const Program& prog, const SequenceInputs<T>& in,
                       SavedStates<T>* saved = nullptr);
// grad_exit: the adjoint of the exit state (the loss's gradient with respect to it, from the chain's continuation
// on the next span); nullptr: zero.
template <class T>
SequenceGrads<T> run_backward(const MemoryConfig& cfg, const Program& prog, const SequenceInputs<T>& in,
                              const SavedStates<T>& saved, const ag::Mat<T>& grad_o,
                              const MemoryState<T>* grad_exit = nullptr);

// One shard of a program: the operations between two resets, over the tokens [begin, end) they touch,
// rebased so that `program` covers end - begin tokens. A shard starts from the initial state (W⁰, zero
// momentum), so shards share nothing and can run in parallel (docs/ALGORITHMS.md §4.3).
struct ProgramShard {
  int64_t begin = 0, end = 0;  // token hull of the shard's operations; begin == end: no operations
  Program program;             // rebased to [0, end - begin); empty ops when the shard has no operations
  int64_t first_version = 0;   // index of the shard's initial state in the unsplit SavedStates::versions
  int64_t num_versions = 1;    // 1 + the shard's updates
};

// Splits a program at its resets. Returns the shards (in program order, empty ones included) when there
// are at least two non-empty shards and their token hulls are pairwise disjoint (e.g. causal_program with
// reset_every < num_tokens); otherwise returns nothing and the program must run as one piece.
std::vector<ProgramShard> split_shards(const Program& prog);

struct BatchOptions {
  // Run the shards of a program with resets as independent items: threads over (sequence-head, shard).
  // Off: each sequence-head is one sequential item. Forward outputs and saved states are identical
  // either way; gradients are identical up to the order of the W⁰ sums (summed over shards in a fixed
  // order, last shard first, as the sequential backward adds them; bit-identical without weight norm).
  bool split_shards = true;
};

// Batched over sequence x head (x shard), threads over the items (OpenMP). Saved states have the
// unsplit layout either way, so run_backward and run_backward_batch accept both.
template <class T>
std::vector<ag::Mat<T>> run_forward_batch(const MemoryConfig& cfg, const Program& prog,
                                          const std::vector<SequenceInputs<T>>& in,
                                          std::vector<SavedStates<T>>* saved = nullptr,
                                          const BatchOptions& opt = {});
template <class T>
std::vector<SequenceGrads<T>> run_backward_batch(const MemoryConfig& cfg, const Program& prog,
                                                 const std::vector<SequenceInputs<T>>& in,
                                                 const std::vector<SavedStates<T>>& saved,
                                                 const std::vector<ag::Mat<T>>& grad_o,
                                                 const BatchOptions& opt = {},
                                                 const std::vector<MemoryState<T>>* grad_exit = nullptr);

}  // namespace ttt::engine
