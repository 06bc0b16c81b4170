// The TTT engine as one differentiable op on the autograd tape, for multi-head activations of a
// batch of sequences: the forward runs the program per (sequence, head) and keeps only the states at
// update points; the backward runs the engine's reverse pass (runner.h).
#pragma once
#include "ttt/runner.h"

namespace ttt::engine {

// q, k, v: [S*N, H*d] (S sequences of N rows each; head h = columns [h*d, (h+1)*d)).
// rates: [S*N, R*H] with column r*H + h the rate of weight matrix r for head h (R = cfg.rate_columns).
// momentum_gate, decay_gate: [S*N, H] (valid iff cfg.momentum / cfg.decay).
// w0: one Var per weight matrix, [H*rows, cols] (head h = rows [h*rows, (h+1)*rows)), shared by all sequences.
// Returns o [S*N, H*d]. A program with resets runs its shards as independent (sequence, head, shard)
// items in parallel unless batch.split_shards is off (runner.h, BatchOptions).
template <class T>
ag::Var memory_op(ag::Tape<T>& t, const MemoryConfig& cfg, const Program& prog, int64_t sequences, int64_t heads,
                  ag::Var q, ag::Var k, ag::Var v, ag::Var rates, ag::Var momentum_gate, ag::Var decay_gate,
                  const std::vector<ag::Var>& w0, const BatchOptions& batch = {});

}  // namespace ttt::engine
