// The training loop as a library function (`ttt train` is a thin front end over train()).
//
// Each optimizer step draws `accum` micro-batches of `batch` random windows of seq_len + 1 training tokens
// (window start uniform over the split, from a ttt::Rng whose state is the "data position"; the split is read in
// place from its memory-mapped shards, data/loader.h, so the batches depend on the seed and the tokens, not on how
// they are sharded; targets past a document separator are ignored unless cross_documents), averages the
// gradients over all their tokens (= the gradient of one batch `accum` times larger), clips them to a global L2
// norm, and takes one AdamW step with the LR of the warmup + cosine schedule: one StepEngine::train_step of the
// device's engine (backend/registry.h; on the CPU accumulate_gradients, clip_grad_norm and AdamW::step below).
// Every step appends one JSON line to DIR/metrics.jsonl; validation steps add val_loss (nats per token), val_ppl
// (per-token perplexity), val_bits_per_token and, when the dataset has a token byte table, val_bpb (bits per
// byte of the text the scored tokens cover; absent otherwise, never a per-token figure). Checkpoints go
// to DIR/checkpoints/step-<N>/, DIR/checkpoint links to the newest (see checkpoint.h).
//
// Divergence: a non-finite training loss, gradient norm or validation loss, or non-finite weights at a
// checkpoint, is a ttt::Error naming the step (no checkpoint of such weights is written). A loss spike
// (LossSpikeDetector) is marked on the progress line, with a warning the first time.
//
// Interrupts: when *stop_signal becomes non-zero (a signal handler sets it), the step in progress finishes,
// a checkpoint is saved and train() returns with TrainResult::stop_signal set.
//
// Determinism: the model, the optimizer and the sampler are deterministic, and a checkpoint holds the step,
// the AdamW moments and step count, the sampler's RNG state and the training config; a resumed run
// therefore reproduces the losses and the final weights of an uninterrupted one bit for bit.
#pragma once
#include <atomic>
#include <cstdint>
#include <limits>
#include <ostream>
#include <string>
#include <vector>

#include "backend/options.h"
#include "core/rng.h"
#include "data/loader.h"
#include "model/model.h"
#include "train/train_config.h"

namespace ttt::dist {
class Communicator;
}

namespace ttt::train {

struct TrainOptions {
  model::ModelConfig model;   // ignored on resume (the checkpoint's config is used); seq_len := train.seq_len
  TrainConfig train;          // ignored on resume (the checkpoint's state.json is used)
  std::string out_dir;        // run directory of a new run (required unless resuming)
  std::string resume;         // run directory or checkpoint directory to continue
  int64_t steps_override = 0; // on resume, > 0: change the total step count (the cosine schedule follows it)
  int64_t keep_checkpoints_override = 0;  // on resume, > 0: change train.keep_checkpoints
  // On resume: the data directory, when it is not (any more) where the run recorded it; its dataset must have
  // the run's fingerprint (Corpus::fingerprint).
  std::string data_dir_override;
  const std::atomic<int>* stop_signal = nullptr;  // see "Interrupts" above
  double time_budget_s = 0;   // > 0: stop (validate, checkpoint) once this invocation has run this long
  int64_t interrupt_after = 0;  // test hook: return after this many steps of this invocation without the
                                // final validation/checkpoint, as if the process had been killed
  std::ostream* log = nullptr;  // progress lines (flushed), or nothing
  // Where the steps run: a device of backend/registry.h ("cpu": the autograd model, OpenMP over sequences;
  // "cuda": parameters, gradients and AdamW moments on the GPU); checkpoints are the same files on every device.
  std::string device = "cpu";
  backend::EngineOptions engine;  // the device's precision and activation storage (the CPU: fp32 only)
  // TNT stage 2 (a new run; opt.model is ignored): start from the stage-1 run `stage2_from` with local
  // chunk sizes `stage2_local_chunks` (one per local memory); train.steps <= 0 means stage2_fraction of
  // the stage-1 run's steps; an empty train.data_dir means the stage-1 run's data.
  std::string stage2_from;
  std::vector<int64_t> stage2_local_chunks;
  double stage2_fraction = 0.05;
  // Data parallelism (`mpirun -np N ttt train`): the ranks of the job, or null for one process. Every rank samples
  // the same global batch (--batch x --accum sequences, which the ranks must divide) and computes its share
  // (StepEngine::set_data_parallel); loss, gradient norm, clipping and validation are global; rank 0 alone logs
  // and writes the run directory (metrics, config, checkpoints of the full state). The result does not depend on
  // the rank count (bit for bit when it is a power of two; see accumulate_gradients), so a run may resume on
  // another number of ranks.
  dist::Communicator* ranks = nullptr;
  bool shard_optimizer = false;  // ZeRO-1: each rank keeps the AdamW moments of its own tensors only
  // Bytes of gradients per all-reduce where a device overlaps them with the backward (StepEngine::
  // set_gradient_buckets; 0: one all-reduce after the backward).
  int64_t grad_bucket_bytes = int64_t(25) << 20;
  // TNT context parallelism (model/context_parallel.h): each sequence split over groups of this many consecutive
  // ranks (ranks = data parallel x context parallel); validation stays data parallel over all ranks, whole windows.
  int context_parallel = 1;
  model::CpGlobal cp_global = model::CpGlobal::Gather;  // how the global memory's chain crosses the spans
  // Test hook of the failure tests: rank `fault_rank` exits (fault "exit", status 3, without a word), stops
  // responding (fault "hang") or receives SIGTERM (fault "term") when it is about to run step `fault_step` + 1.
  int fault_rank = -1;
  int64_t fault_step = 0;
  std::string fault;
};

// Which elements of each parameter train in `stage`: stage 1 everything (empty masks); stage 2 (TNT) only
// the local memories' own parameters: their initial weights (ttt.local.<i>.*) and their columns of the
// gate projections (ttt.lr / ttt.momentum / ttt.decay weight and bias, columns m*H .. (m+1)*H - 1).
std::vector<std::vector<uint8_t>> trainable_mask(const model::ModelConfig& cfg, const model::Params<float>& p,
                                                 int64_t stage);

struct TrainResult {
  std::string run_dir, checkpoint_dir;
  int64_t step = 0, total_steps = 0, tokens_seen = 0, n_params = 0;
  int64_t steps_this_run = 0;
  double last_loss = std::numeric_limits<double>::quiet_NaN();
  double val_loss = std::numeric_limits<double>::quiet_NaN();  // nats per token
  double val_bpb = std::numeric_limits<double>::quiet_NaN();   // bits per byte; NaN without a token byte table
  double seconds = 0;            // wall time of this invocation
  double tokens_per_s = 0;       // training tokens per second in this invocation
  double unigram_entropy_bits = std::numeric_limits<double>::quiet_NaN();  // of the training corpus, bits per token
  double unigram_entropy_bits_per_byte = std::numeric_limits<double>::quiet_NaN();  // NaN without a byte table
  bool stopped_by_budget = false, interrupted = false;
  int stop_signal = 0;      // the signal that stopped the run (a checkpoint of `step` was saved), or 0
  int64_t loss_spikes = 0;  // steps of this invocation whose loss LossSpikeDetector flagged
  model::ModelConfig model;
};

TrainResult train(const TrainOptions& opt);

// ---- Pieces of the loop, exposed for tests. ----

struct Corpus {
  data::TokenSplit train, val;  // memory-mapped (data/loader.h)
  uint32_t vocab = 256;
  std::vector<uint32_t> token_bytes;  // text bytes of each id (data::DatasetInfo); empty: no bits per byte
  double unigram_entropy_bits = 0;  // bits per token: from meta.json, or computed from the train tokens
  double unigram_entropy_bits_per_byte = std::numeric_limits<double>::quiet_NaN();  // NaN without token_bytes
  // Identifies the dataset wherever it lies: {"train.bin": {"tokens", "documents", "vocab", "checksum"},
  // "val.bin": {...}} from the token files' headers (one entry per shard file; checksum: the payload's FNV-1a).
  nlohmann::json fingerprint;
};
// Opens DIR's train and val splits (data/loader.h: train.bin/val.bin or the shards meta.json lists) and
// DIR/meta.json; checks that both hold at least one window of min_window tokens and fit the vocabulary.
Corpus load_corpus(const std::string& dir, int64_t min_window, int64_t vocab_size);

// Flags a training loss far above its recent level: a loss above kFactor times the exponential moving average
// (decay kDecay, started at the first loss) of the earlier ones is a spike. On data/linux-doc, a healthy run of
// the tiny preset stays below 1.41x (batch noise); one diverging at --lr 1 reaches 1.5x-2.2x. The average
// starts afresh in each invocation (a resumed run starts it again).
class LossSpikeDetector {
 public:
  static constexpr int64_t kWarmupSteps = 1;  // losses seen before any can be a spike
  static constexpr double kFactor = 1.5, kDecay = 0.9;
  // Feeds one step's loss; returns loss / average when it is a spike, else 0.
  double observe(double loss);
  double average() const { return average_; }  // of the losses observed so far

 private:
  double average_ = 0;
  int64_t seen_ = 0;
};

// `sequences` random windows of len + 1 tokens: inputs = window[0..len), targets = window[1..len]; window start
// uniform over [0, size - len] of the split (one rng.below per window). Unless cross_documents, a window does not
// cross a document separator: once an input at position i >= 1 is the separator, targets i.. (the next document)
// are -1 (ignored by the loss). The separator as a target (the end of a document) and as the first input (the
// start of the next) stay.
model::Batch sample_batch(const data::TokenSplit& tokens, int64_t sequences, int64_t len, Rng& rng,
                          bool cross_documents = false);

// Valid targets (>= 0) of a batch.
int64_t valid_targets(const model::Batch& b);
// The weights of gradient accumulation, on every device: part i's share valid[i] / sum(valid) of the step's valid
// targets (parts: micro-batches, or their sequences). Throws when there is no valid target at all.
std::vector<double> target_shares(const std::vector<int64_t>& valid);

// Loss and gradient of one optimizer step over the micro-batches: the mean cross-entropy over all their
// valid targets (= the mean of the micro-batch losses when, as in training, every target is valid) and its
// gradient (one matrix per parameter). Computed one sequence per forward pass, sequences in parallel over
// the OpenMP threads (the model then runs single-threaded inside each).
//
// The reduction order (fixed, so the result is deterministic and independent of the thread count): the leaves
// are the step's sequences k = 0..n-1 in order (micro-batch by micro-batch), leaf k = share_k * g_k (share_k:
// target_shares of the step's sequences, rounded to T; g_k the sequence's gradient), combined by the pairwise
// tree of recursive halving ([lo, hi) = [lo, mid) + [mid, hi), mid = lo + (hi - lo) / 2, left operand first).
// The loss is the sum of the terms share_k * loss_k in sequence order (in double).
//
// Data parallelism splits the step into contiguous ranges of sequences, one per rank: accumulate_gradient_range
// computes a range's tree (the tree of its leaves) and returns its loss terms; the ranks' trees are then summed
// by the same pairwise tree over ranks (dist::Communicator). When the rank count is a power of two, each rank's
// range is a subtree of the one-process tree and the sum is the one-process gradient bit for bit.
template <class T>
double accumulate_gradients(const model::ModelConfig& cfg, const model::Params<T>& params,
                            const std::vector<model::Batch>& micro, std::vector<ag::Mat<T>>& grads);
// Sequences [first, last) of the step's micro-batches (numbered as above): grads := their tree; returns their
// loss terms share_k * loss_k (0 for a sequence without valid targets), share_k taken over the whole step.
// Context parallel (`cp`, model/context_parallel.h): the same over this rank's span of each sequence, one sequence
// at a time (the forward exchanges rows with the other ranks of the group); share_k is then the span's share of the
// step's valid targets and loss_k the span's mean loss, and the sum over the group's ranks is the group's result.
template <class T>
std::vector<double> accumulate_gradient_range(const model::ModelConfig& cfg, const model::Params<T>& params,
                                              const std::vector<model::Batch>& micro, int64_t first, int64_t last,
                                              std::vector<ag::Mat<T>>& grads, const model::ContextSpan* cp = nullptr);
// The sequences of a step's micro-batches (each checked for consistent sizes).
int64_t step_sequences(const std::vector<model::Batch>& micro);
// The step's loss from all of its loss terms, summed in sequence order.
double sum_loss_terms(const std::vector<double>& terms);

// Global L2 norm of all gradients (computed in double: per tensor, then the tensors' sums in tensor order); if
// max_norm > 0 and the norm exceeds it, every gradient is scaled by max_norm / norm. Returns the norm before
// clipping. Its pieces serve a sharded optimizer, where each rank holds some tensors: the sums of squares of
// tensors [first, last), the norm from every tensor's sum, and the clipping of tensors [first, last).
template <class T>
double clip_grad_norm(std::vector<ag::Mat<T>>& grads, double max_norm);
template <class T>
std::vector<double> grad_sum_squares(const std::vector<ag::Mat<T>>& grads, size_t first, size_t last);
double global_norm(const std::vector<double>& sum_squares);
template <class T>
void clip_to_norm(std::vector<ag::Mat<T>>& grads, size_t first, size_t last, double norm, double max_norm);

// "runs/<preset>-YYYYmmdd-HHMMSS" (local time; "-2", "-3", ... appended if that directory exists).
std::string default_run_dir(const std::string& preset);

}  // namespace ttt::train
