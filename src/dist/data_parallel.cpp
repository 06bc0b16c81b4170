#include "dist/data_parallel.h"

#include <algorithm>

#include "core/error.h"

namespace ttt::dist {

SequenceRange rank_sequences(int64_t sequences, int rank, int ranks) {
  TTT_CHECK(ranks > 0 && rank >= 0 && rank < ranks, "rank " << rank << " of " << ranks);
  TTT_CHECK(sequences % ranks == 0,
            "a step's " << sequences << " sequences (--batch x --accum) cannot be split evenly over " << ranks
                        << " ranks: choose --batch and --accum so that their product is a multiple of " << ranks);
  const int64_t per = sequences / ranks;
  return {rank * per, (rank + 1) * per};
}

std::vector<model::Batch> rank_micro_batches(const std::vector<model::Batch>& micro, int rank, int ranks) {
  int64_t total = 0;
  for (const auto& mb : micro) total += mb.sequences;
  const SequenceRange mine = rank_sequences(total, rank, ranks);
  std::vector<model::Batch> out;
  int64_t at = 0;  // the first sequence of the micro-batch
  for (const auto& mb : micro) {
    const int64_t s0 = std::max(mine.first, at) - at, s1 = std::min(mine.last, at + mb.sequences) - at;
    at += mb.sequences;
    if (s0 >= s1) continue;
    model::Batch part;
    part.sequences = s1 - s0;
    part.len = mb.len;
    part.inputs.assign(mb.inputs.begin() + s0 * mb.len, mb.inputs.begin() + s1 * mb.len);
    part.targets.assign(mb.targets.begin() + s0 * mb.len, mb.targets.begin() + s1 * mb.len);
    out.push_back(std::move(part));
  }
  return out;
}

std::vector<size_t> tensor_shards(const std::vector<int64_t>& tensor_sizes, int ranks) {
  TTT_CHECK(ranks > 0, "tensor_shards: " << ranks << " ranks");
  // starts[i]: the first element of tensor i (starts[n]: the total).
  std::vector<int64_t> starts(1, 0);
  for (int64_t s : tensor_sizes) starts.push_back(starts.back() + s);
  const int64_t total = starts.back();
  std::vector<size_t> bounds(size_t(ranks) + 1, tensor_sizes.size());
  bounds[0] = 0;
  size_t i = 0;
  for (int r = 1; r < ranks; ++r) {
    // The tensor start nearest to r / ranks of the elements (the earlier one on a tie), never before the last bound.
    const int64_t target = int64_t((__int128)r * total / ranks);
    while (i < tensor_sizes.size() && starts[i + 1] <= target) ++i;
    if (i < tensor_sizes.size() && starts[i + 1] - target < target - starts[i]) ++i;
    bounds[size_t(r)] = i;
  }
  return bounds;
}

}  // namespace ttt::dist
