// Data parallelism's bookkeeping, device-neutral: which sequences of a step's global batch a rank computes, and
// which parameter tensors a rank's optimizer shard owns (ZeRO-1). The reduction order and the exchanges are
// train::accumulate_gradient_range (trainer.h) and dist::Communicator (communicator.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
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

// TNT context parallelism: every sequence of every micro-batch cut to the span of `rank` of `ranks` (a context-parallel
// group): tokens [rank * len / ranks, (rank + 1) * len / ranks) of each, inputs and targets alike. The ranks must
// divide len (an error says so).
std::vector<model::Batch> span_micro_batches(const std::vector<model::Batch>& micro, int rank, int ranks);
// Its inverse for per-token values: `by_rank` holds each rank's spans in rank order ([rank][sequence][span tokens],
// as an all-gather of span_micro_batches' values gives them); returns [sequence][ranks * span tokens].
std::vector<double> join_spans(const std::vector<double>& by_rank, int64_t sequences, int64_t span, int ranks);

// ---- gradient buckets (the GPU engine's all-reduce overlapped with the backward) ----
//
// The backward of the language model runs in stages, and a parameter's gradient is final after its stage: stage 0
// the head (lm_head, final_norm), stage 1 + (L - 1 - l) layer l (last layer first), stage L + 1 the embedding.
// backward_stages gives each tensor of the parameter layout (model::parameter_shapes' names) its stage.
std::vector<int> backward_stages(const std::vector<std::string>& names, int64_t n_layers);

// A bucket: tensors [first, last) of the layout, elements [offset, offset + count) of the flat gradient (the tensors
// laid out in order), all-reduced as one collective once the backward has finished stage `ready` (the latest stage
// of its tensors).
struct GradientBucket {
  size_t first = 0, last = 0;
  int64_t offset = 0, count = 0;
  int ready = 0;
};
// Buckets of about `bucket_bytes` (fp32 elements): tensors are taken from the last to the first (the order the
// backward finishes them), and a bucket closes at a stage boundary once it holds at least bucket_bytes, so a layer's
// tensors are never split over two collectives. bucket_bytes <= 0: one bucket of everything, ready after the last
// stage (one all-reduce after the backward). The buckets are listed in launch order (by `ready`, then from the end of
// the layout); together they cover every tensor, and so every element, exactly once. Every rank computes the same
// plan, so the ranks launch the same collectives in the same order.
std::vector<GradientBucket> plan_gradient_buckets(const std::vector<int64_t>& tensor_sizes, const std::vector<int>& stages,
                                                  int64_t bucket_bytes);

// ---- the flat shards of the GPU's sharded optimizer (ZeRO-1 with NCCL) ----
//
// NCCL's reduce-scatter and all-gather move equal counts per rank, so the GPU shards the flat parameter array by
// elements (not whole tensors as the CPU does): rank r owns [r * per_rank, min((r + 1) * per_rank, total)) (empty when
// that starts past the end), and the flat arrays are padded to ranks * per_rank elements (the padding's gradient is
// zero and it is never updated).
struct FlatShards {
  int64_t per_rank = 0, padded = 0;
  int64_t begin(int rank) const;
  int64_t end(int rank, int64_t total) const;
};
FlatShards flat_shards(int64_t total, int ranks);

}  // namespace ttt::dist
