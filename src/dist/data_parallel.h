// Data parallelism's bookkeeping, device-neutral: which sequences of a step's global batch a rank computes, and
// which parameter tensors a rank's optimizer shard owns (ZeRO-1). The reduction order and the exchanges are
// train::accumulate_gradient_range (trainer.h) and dist::Communicator (communicator.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "model/model.h"

namespace ttt::dist {

// Sequences [first, last) of a step's `sequences` (micro-batches flattened in order) that `rank` of `ranks`
// computes: contiguous blocks of sequences / ranks each. The ranks must divide the sequences (an error says so).
struct SequenceRange {
  int64_t first = 0, last = 0;
};
SequenceRange rank_sequences(int64_t sequences, int rank, int ranks);

// The optimizer shards of ZeRO-1: rank r owns whole tensors [bounds[r], bounds[r + 1]) (ranks + 1 bounds),
// contiguous and balanced by element count (rank r's first tensor is the one whose start is nearest to r / ranks
// of all elements). Whole tensors keep the gradient norm's per-tensor sums on one rank each.
std::vector<size_t> tensor_shards(const std::vector<int64_t>& tensor_sizes, int ranks);

// The sequences rank_sequences gives `rank`, as micro-batches: each micro-batch's part in the range (in order).
std::vector<model::Batch> rank_micro_batches(const std::vector<model::Batch>& micro, int rank, int ranks);

}  // namespace ttt::dist
