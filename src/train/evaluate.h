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

namespace ttt::backend {
class StepEngine;
}
namespace ttt::dist {
class Communicator;
}

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

// Every evaluation runs the same way: the windows above in groups, the per-token losses of each group from a
// function of a batch, then the sums in window order (evaluate_with). The overloads differ only in that function.

// On any device: the step engine's token_losses, on groups of engine.eval_windows_per_call windows.
// With `ranks` of more than one process (data-parallel training), each rank computes a contiguous share of the
// windows (dist::even_counts) and the token losses are all-gathered: every rank gets the same result, equal to
// one process's.
EvalResult evaluate(backend::StepEngine& engine, const std::vector<int32_t>& tokens, const EvalOptions& opt,
                    dist::Communicator* ranks = nullptr);

// On the CPU, the model's own forward (cpu_token_losses) on `params`.
EvalResult evaluate(const model::ModelConfig& cfg, const model::Params<float>& params, const std::vector<int32_t>& tokens,
                    const EvalOptions& opt);

// Per-token losses of every window of `batch` (sequence-major): one window per forward pass, windows in parallel
// over the OpenMP threads (the model runs single-threaded inside each). What the CPU engine evaluates with.
std::vector<double> cpu_token_losses(const model::ModelConfig& cfg, const model::Params<float>& params,
                                     const model::Batch& batch);
// Windows per cpu_token_losses call when `batch` are asked per forward pass: at least one per thread.
int64_t cpu_windows_per_call(int64_t batch);

// The windows with the per-token losses computed by `losses`, called on batches of up to windows_per_call
// windows (0: opt.batch); it returns the losses sequence-major (window by window).
using BatchTokenLosses = std::function<std::vector<double>(const model::Batch&)>;
EvalResult evaluate_with(const BatchTokenLosses& losses, int64_t vocab, int64_t seq_len,
                         const std::vector<int32_t>& tokens, const EvalOptions& opt, int64_t windows_per_call = 0,
                         dist::Communicator* ranks = nullptr);

// CSV with header bucket_start,bucket_end,loss,bpb,tokens.
std::string buckets_csv(const EvalResult& r);

}  // namespace ttt::train
