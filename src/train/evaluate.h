// Validation: mean cross-entropy over a fixed, deterministic set of windows of a token stream, with the
// loss per position bucket (does the model use long context? later positions should have lower loss); and
// the whole stream with a sliding stride (`ttt eval --full`, evaluate_full below).
//
// Windows: n_windows = batches * batch windows of context + 1 tokens, window i starting at offset
// floor(i * (n_tokens - context - 1) / max(1, n_windows - 1)) (evenly spaced over the whole stream, the
// same every time). Each window gives `context` (input, target) pairs. Windows are evaluated one per
// forward pass, in parallel over threads; the sums run in window order (thread-count independent).
//
// Metrics, labelled by unit: loss in nats per token, bits per token (loss / ln 2), per-token perplexity exp(loss),
// and bits per byte = (sum of the scored tokens' losses / ln 2) / (text bytes those target tokens cover, from the
// dataset's token byte table, data/loader.h). Without a byte table, bits per byte is NaN and not reported.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/loader.h"
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
  std::vector<uint32_t> token_bytes;  // text bytes of each id (data::DatasetInfo); empty: no bits per byte
};

struct EvalBucket {
  int64_t start = 0, end = 0;  // positions [start, end)
  double loss = 0, bpb = 0;    // nats per token; bits per byte (NaN without a byte table)
  int64_t tokens = 0;
};

struct EvalResult {
  double loss = 0;            // mean cross-entropy, nats per token
  double bits_per_token = 0;  // loss / ln 2
  double perplexity = 0;      // exp(loss), per token
  double bpb = 0;             // bits per byte of the text the scored tokens cover; NaN without a byte table
  int64_t tokens = 0, windows = 0, context = 0;
  uint64_t bytes = 0;  // text bytes the scored tokens cover (0 without a byte table)
  std::vector<EvalBucket> buckets;
  bool has_bpb() const { return bpb == bpb; }  // not NaN
};

// "val_loss L nats/token | ppl P | val_bpb B bits/byte" (the last part only with a byte table).
std::string eval_summary(const EvalResult& r);

// Window start offsets (see the header comment). Throws if the stream is shorter than context + 1.
std::vector<int64_t> eval_offsets(int64_t n_tokens, int64_t n_windows, int64_t context);

// Every evaluation runs the same way: the windows above in groups, the per-token losses of each group from a
// function of a batch, then the sums in window order (evaluate_with). The overloads differ only in that function.

// On any device: the step engine's token_losses, on groups of engine.eval_windows_per_call windows.
// With `ranks` of more than one process (data-parallel training), each rank computes a contiguous share of the
// windows (dist::even_counts) and the token losses are all-gathered: every rank gets the same result, equal to
// one process's. An engine that evaluates context parallel (engine.eval_group() ranks together) gets the same windows
// on every rank of a group, whose token_losses calls are then collectives of the group.
EvalResult evaluate(backend::StepEngine& engine, const data::TokenSplit& tokens, const EvalOptions& opt,
                    dist::Communicator* ranks = nullptr);

// On the CPU, the model's own forward (cpu_token_losses) on `params`.
EvalResult evaluate(const model::ModelConfig& cfg, const model::Params<float>& params, const data::TokenSplit& tokens,
                    const EvalOptions& opt);
// Tokens held in memory, as a split of vocabulary cfg.vocab_size with separator 0.
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
// With `ranks`, groups of `group` consecutive ranks (1: each rank alone) share the windows: each group a contiguous
// share (dist::even_counts over ranks / group groups), every rank of a group the same windows, in the same calls.
using BatchTokenLosses = std::function<std::vector<double>(const model::Batch&)>;
EvalResult evaluate_with(const BatchTokenLosses& losses, int64_t vocab, int64_t seq_len, const data::TokenSplit& tokens,
                         const EvalOptions& opt, int64_t windows_per_call = 0, dist::Communicator* ranks = nullptr,
                         int group = 1);

// CSV with header bucket_start,bucket_end,loss,bpb,tokens (loss in nats per token; bpb in bits per byte, empty
// without a byte table).
std::string buckets_csv(const EvalResult& r);

// ---- The whole stream with a sliding stride (`ttt eval --full`) ----
//
// Every target (tokens 1 .. n-1, each predicted from the tokens before it) is scored exactly once. Window k
// reads tokens [k*stride, k*stride + len) with len = min(context, n - 1 - k*stride) and predicts the next token
// at each of its positions; it scores only the targets no earlier window reached: window 0 all of its own, window
// k >= 1 those after position context - stride (so each has at least context - stride + 1 tokens of left
// context). The last window may be shorter; with stride = context the windows do not overlap.
struct SlidingWindow {
  int64_t start = 0;         // first input token
  int64_t len = 0;           // inputs tokens[start, start+len), targets tokens[start+1, start+len]
  int64_t first_scored = 0;  // positions [first_scored, len) of the window are scored
};
std::vector<SlidingWindow> sliding_windows(int64_t n_tokens, int64_t context, int64_t stride);

struct FullEvalOptions {
  int64_t context = 0;  // tokens per window (0: the model's seq_len)
  int64_t stride = 0;   // window step (0: context / 2, at least 1)
  int64_t batch = 8;    // windows per forward pass (a device's batch; the CPU runs one per thread)
  std::vector<uint32_t> token_bytes;  // text bytes of each id (data::DatasetInfo); empty: no bits per byte
};

struct FullEvalResult {
  int64_t context = 0, stride = 0, windows = 0;
  int64_t tokens = 0;     // targets scored (n - 1)
  uint64_t bytes = 0;     // text bytes those targets cover (0 without a byte table)
  double loss_sum = 0;    // nats, summed in target order
  double loss = 0;        // mean cross-entropy per token (nats)
  double bits_per_token = 0;  // loss / ln 2
  double perplexity = 0;  // exp(loss), per token
  double bits_per_byte = 0;  // loss_sum / ln 2 / bytes; NaN without a byte table
  bool has_bpb() const { return bits_per_byte == bits_per_byte; }  // not NaN
};
// Called after each group of windows with the targets scored so far and the total.
using EvalProgress = std::function<void(int64_t scored, int64_t total)>;

// The windows in groups of up to windows_per_call of equal length, per-token losses from `losses`, sums in
// target order (the result does not depend on the grouping or the device's threads).
FullEvalResult evaluate_full_with(const BatchTokenLosses& losses, int64_t vocab, int64_t seq_len,
                                  const data::TokenSplit& tokens, const FullEvalOptions& opt,
                                  int64_t windows_per_call, const EvalProgress& progress = {});
// On any device: the step engine's token_losses.
FullEvalResult evaluate_full(backend::StepEngine& engine, const data::TokenSplit& tokens, const FullEvalOptions& opt,
                             const EvalProgress& progress = {});

}  // namespace ttt::train
