// Validation: mean cross-entropy over a fixed, deterministic set of windows of a token stream, with the
// loss per position bucket (does the model use long context? later positions should have lower loss).
//
// Windows: n_windows = batches * batch windows of context + 1 tokens, window i starting at offset
// floor(i * (n_tokens - context - 1) / max(1, n_windows - 1)) (evenly spaced over the whole stream, the
// same every time). Each window gives `context` (input, target) pairs. Windows are evaluated one per
// forward pass, in parallel over threads; the sums run in window order (thread-count independent).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/model.h"

namespace ttt::train {

struct EvalOptions {
  int64_t batches = 8;   // batches of `batch` windows (n_windows = batches * batch)
  int64_t batch = 8;
  int64_t context = 0;   // tokens per window (0: cfg.seq_len)
  int64_t buckets = 8;   // position buckets over [0, context)
};

struct EvalBucket {
  int64_t start = 0, end = 0;  // positions [start, end)
  double loss = 0, bpb = 0;
  int64_t tokens = 0;
};

struct EvalResult {
  double loss = 0;  // mean cross-entropy, nats per token
  double bpb = 0;   // loss / ln 2 (bits per byte for byte tokens)
  int64_t tokens = 0, windows = 0, context = 0;
  std::vector<EvalBucket> buckets;
};

// Window start offsets (see the header comment). Throws if the stream is shorter than context + 1.
std::vector<int64_t> eval_offsets(int64_t n_tokens, int64_t n_windows, int64_t context);

EvalResult evaluate(const model::ModelConfig& cfg, const model::Params<float>& params, const std::vector<int32_t>& tokens,
                    const EvalOptions& opt);

// The same windows and sums with the per-token losses computed by `losses` (e.g. the GPU model), called on
// batches of up to opt.batch windows; it returns the losses sequence-major (window by window).
using BatchTokenLosses = std::function<std::vector<double>(const model::Batch&)>;
EvalResult evaluate_with(const BatchTokenLosses& losses, int64_t vocab, int64_t seq_len,
                         const std::vector<int32_t>& tokens, const EvalOptions& opt);

// CSV with header bucket_start,bucket_end,loss,bpb,tokens.
std::string buckets_csv(const EvalResult& r);

}  // namespace ttt::train
