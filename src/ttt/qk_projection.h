// The Q-K projection of TNT's local memories (docs/ALGORITHMS.md §6.2): a memory trained on keys is read with queries
// projected onto the span of the keys seen so far in the shard,
//
//   q̃_t = (Σ_τ k_τ k_τᵀ) q_t / (Σ_τ ||k_τ||²),
//
// the sums over the shard's tokens strictly before the chunk of t (chunk granularity; chunks aligned to
// the shard start, as in causal_program(N, chunk, shard)); q̃_t = q_t when the sum is empty (the first
// chunk of every shard) [choice]. The sums restart at every shard. Also q̃_t = q_t when the keys seen so
// far are all exactly zero (Σ ||k||² = 0), so the op is defined everywhere.
#pragma once
#include "autograd/tape.h"

namespace ttt::engine {

// Differentiable op with a hand-written backward. q, k: [S*N, H*d] (S sequences of N rows each; head h =
// columns [h*d, (h+1)*d)). chunk > 0; shard > 0 resets the sums at every multiple of it (shard <= 0: one
// shard per sequence). Returns q̃ [S*N, H*d]. Threads over (sequence, head, shard).
template <class T>
ag::Var qk_project(ag::Tape<T>& t, ag::Var q, ag::Var k, int64_t sequences, int64_t heads, int64_t chunk,
                   int64_t shard);

// The same forward on plain matrices of one sequence-head: q, k [N,d] -> q̃ [N,d].
template <class T>
ag::Mat<T> qk_project_forward(const ag::Mat<T>& q, const ag::Mat<T>& k, int64_t chunk, int64_t shard);

}  // namespace ttt::engine
