// The TTT engine as one differentiable op on the autograd tape, for multi-head activations of a
// batch of sequences: the forward runs the program per (sequence, head) and keeps only the states at
// update points; the backward runs the engine's reverse pass (runner.h).
#pragma once
#include <functional>

#include "ttt/runner.h"

namespace ttt::engine {

// A chain whose ends cross to other ranks (TNT context parallelism passing the global memory's state,
// model/context_parallel.h). States travel flat: per sequence-head (s*H + h) its weights, then its momentum
// (MemoryConfig::weight_shapes() order, row-major). Every function is called on every rank (they may be collectives).
template <class T>
struct StateLink {
  bool has_entry = false;  // false: the chain starts here, from w0 and zero momentum (its first span)
  bool has_exit = false;   // false: the chain ends here (its last span): the exit state's adjoint is zero
  // Forward: the entry states (`count` values; called before the span's chain), then the exit states (after it).
  std::function<std::vector<T>(int64_t count)> receive_entry;
  std::function<void(const std::vector<T>&)> send_exit;
  // Backward: the exit states' adjoint (before the span's reverse pass), then the entry states' adjoint (after it).
  std::function<std::vector<T>(int64_t count)> receive_exit_adjoint;
  std::function<void(const std::vector<T>&)> send_entry_adjoint;
};

// q, k, v: [S*N, H*d] (S sequences of N rows each; head h = columns [h*d, (h+1)*d)).
// rates: [S*N, R*H] with column r*H + h the rate of weight matrix r for head h (R = cfg.rate_columns).
// momentum_gate, decay_gate: [S*N, H] (valid iff cfg.momentum / cfg.decay).
// w0: one Var per weight matrix, [H*rows, cols] (head h = rows [h*rows, (h+1)*rows)), shared by all sequences.
// Returns o [S*N, H*d]. A program with resets runs its shards as independent (sequence, head, shard)
// items in parallel unless batch.split_shards is off (runner.h, BatchOptions).
// With `link` the chain starts from the entry states it receives (where has_entry; w0 then gets no gradient: the
// entry weights' adjoint goes back through the link instead) and hands on its exit states; its backward always runs
// (the link's exchanges are collectives). Needs a program without resets and no weight norm (check_chain_entry).
template <class T>
ag::Var memory_op(ag::Tape<T>& t, const MemoryConfig& cfg, const Program& prog, int64_t sequences, int64_t heads,
                  ag::Var q, ag::Var k, ag::Var v, ag::Var rates, ag::Var momentum_gate, ag::Var decay_gate,
                  const std::vector<ag::Var>& w0, const BatchOptions& batch = {},
                  const StateLink<T>* link = nullptr);

// The flat layout of StateLink: values of one item's state, and packing / unpacking of every item's.
int64_t state_values(const MemoryConfig& cfg);
template <class T>
std::vector<T> pack_states(const MemoryConfig& cfg, const std::vector<MemoryState<T>>& states);
template <class T>
std::vector<MemoryState<T>> unpack_states(const MemoryConfig& cfg, const std::vector<T>& flat, int64_t items);

}  // namespace ttt::engine
