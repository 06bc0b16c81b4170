#include "dist/data_parallel.h"

#include <algorithm>
#include <string>

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

std::vector<model::Batch> span_micro_batches(const std::vector<model::Batch>& micro, int rank, int ranks) {
  TTT_CHECK(ranks > 0 && 0 <= rank && rank < ranks, "span_micro_batches: rank " << rank << " of " << ranks);
  std::vector<model::Batch> out;
  for (const auto& mb : micro) {
    const int64_t span = mb.len / ranks;
    TTT_CHECK(span * ranks == mb.len, "context parallel: sequences of " << mb.len << " tokens do not split over "
                                                                        << ranks << " ranks");
    model::Batch part;
    part.sequences = mb.sequences;
    part.len = span;
    for (int64_t s = 0; s < mb.sequences; ++s) {
      const int64_t begin = s * mb.len + rank * span;
      part.inputs.insert(part.inputs.end(), mb.inputs.begin() + begin, mb.inputs.begin() + begin + span);
      part.targets.insert(part.targets.end(), mb.targets.begin() + begin, mb.targets.begin() + begin + span);
    }
    out.push_back(std::move(part));
  }
  return out;
}

std::vector<double> join_spans(const std::vector<double>& by_rank, int64_t sequences, int64_t span, int ranks) {
  TTT_CHECK(int64_t(by_rank.size()) == int64_t(ranks) * sequences * span,
            "join_spans: " << by_rank.size() << " values for " << ranks << " ranks x " << sequences << " sequences x "
                           << span << " tokens");
  std::vector<double> out(by_rank.size());
  for (int r = 0; r < ranks; ++r)
    for (int64_t s = 0; s < sequences; ++s)
      std::copy_n(by_rank.begin() + (int64_t(r) * sequences + s) * span, span,
                  out.begin() + s * ranks * span + int64_t(r) * span);
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

std::vector<int> backward_stages(const std::vector<std::string>& names, int64_t n_layers) {
  std::vector<int> stages;
  const std::string layer = "layers.";
  for (const std::string& name : names) {
    if (name.rfind("embed.", 0) == 0) {
      stages.push_back(int(n_layers) + 1);
    } else if (name.rfind(layer, 0) == 0) {
      const int64_t l = std::stoll(name.substr(layer.size()));
      TTT_CHECK(l >= 0 && l < n_layers, "parameter '" << name << "' names layer " << l << " of " << n_layers);
      stages.push_back(int(1 + (n_layers - 1 - l)));
    } else {
      stages.push_back(0);  // the head: final_norm, lm_head
    }
  }
  return stages;
}

std::vector<GradientBucket> plan_gradient_buckets(const std::vector<int64_t>& tensor_sizes, const std::vector<int>& stages,
                                                  int64_t bucket_bytes) {
  TTT_CHECK(tensor_sizes.size() == stages.size(),
            "gradient buckets: " << tensor_sizes.size() << " tensors and " << stages.size() << " stages");
  std::vector<int64_t> starts(1, 0);
  for (int64_t s : tensor_sizes) starts.push_back(starts.back() + s);
  std::vector<GradientBucket> buckets;
  const size_t n = tensor_sizes.size();
  if (n == 0) return buckets;
  if (bucket_bytes <= 0) {
    buckets.push_back({0, n, 0, starts.back(), *std::max_element(stages.begin(), stages.end())});
    return buckets;
  }
  size_t last = n;  // the open bucket is tensors [i, last)
  for (size_t i = n; i-- > 0;) {
    const int64_t bytes = (starts[last] - starts[i]) * int64_t(sizeof(float));
    const bool boundary = i == 0 || stages[i - 1] != stages[i];
    if (i == 0 || (bytes >= bucket_bytes && boundary)) {
      const int ready = *std::max_element(stages.begin() + std::ptrdiff_t(i), stages.begin() + std::ptrdiff_t(last));
      buckets.push_back({i, last, starts[i], starts[last] - starts[i], ready});
      last = i;
    }
  }
  std::stable_sort(buckets.begin(), buckets.end(),
                   [](const GradientBucket& a, const GradientBucket& b) { return a.ready < b.ready; });
  return buckets;
}

int64_t FlatShards::begin(int rank) const { return int64_t(rank) * per_rank; }
int64_t FlatShards::end(int rank, int64_t total) const {
  return std::max(begin(rank), std::min(int64_t(rank + 1) * per_rank, total));  // empty past the end
}

FlatShards flat_shards(int64_t total, int ranks) {
  TTT_CHECK(ranks > 0 && total >= 0, "flat_shards: " << total << " elements over " << ranks << " ranks");
  FlatShards s;
  s.per_rank = (total + ranks - 1) / ranks;
  s.padded = s.per_rank * ranks;
  return s;
}

}  // namespace ttt::dist
