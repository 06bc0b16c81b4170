// ttt train: train a model (src/train/trainer.h). With no flags: the tiny preset on data/linux-doc for a few
// minutes on a CPU, then a generated sample. SIGINT/SIGTERM: the first finishes the step, saves a checkpoint
// and exits with 128 + the signal number, saying how to resume; a second exits at once.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>

#include "cli/args.h"
#include "cli/commands.h"
#include "cli/device_flags.h"
#include "cli/run_tokenizer.h"
#include "core/error.h"
#include "core/file_io.h"
#include "data/tokenizer.h"
#include "data/tokens.h"
#include "dist/communicator.h"
#include "infer/generate.h"
#include "model/config.h"
#include "train/trainer.h"
#include "ttt/tnt.h"

namespace ttt::cli {

namespace {

std::string num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

// A GPU step of the tiny model is bound by kernel launches, not arithmetic: 16 sequences cost about what 4 do,
// so on cuda the default micro-batch is 16 (4x the tokens per step of the CPU default, same steps and LR).
constexpr int64_t kCudaDefaultBatch = 16;

// The first SIGINT/SIGTERM received, read by the training loop (lock-free, so safe to set in a signal handler
// that may run on any thread).
std::atomic<int> g_stop_signal{0};
static_assert(std::atomic<int>::is_always_lock_free);

// Only async-signal-safe calls here (write, _exit).
extern "C" void on_stop_signal(int sig) {
  auto say = [](const char* s) { [[maybe_unused]] const ssize_t n = ::write(2, s, std::strlen(s)); };
  if (g_stop_signal.load() != 0) {
    say("\nsecond interrupt: exiting at once, without a checkpoint of the current step\n");
    ::_exit(128 + sig);
  }
  g_stop_signal.store(sig);
  say("\ninterrupt: finishing the current step, then saving a checkpoint (signal again to exit at once)\n");
}

// Routes SIGINT and SIGTERM to on_stop_signal while training; restores the previous handlers after.
class StopSignalScope {
 public:
  StopSignalScope() {
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;  // file I/O in progress is not cut short by EINTR
    ::sigaction(SIGINT, &sa, &old_int_);
    ::sigaction(SIGTERM, &sa, &old_term_);
  }
  ~StopSignalScope() {
    ::sigaction(SIGINT, &old_int_, nullptr);
    ::sigaction(SIGTERM, &old_term_, nullptr);
  }
  StopSignalScope(const StopSignalScope&) = delete;
  StopSignalScope& operator=(const StopSignalScope&) = delete;

 private:
  struct sigaction old_int_ {}, old_term_ {};
};

// The failure tests' hook (TTT_TEST_RANK_FAULT=RANK:STEP:exit|hang|term, see TrainOptions::fault_rank).
void set_fault_hook(train::TrainOptions& opt) {
  const char* v = std::getenv("TTT_TEST_RANK_FAULT");
  if (!v || !*v) return;
  int rank = -1;
  long long step = 0;
  char kind[8] = {0};
  const std::string k = std::sscanf(v, "%d:%lld:%7s", &rank, &step, kind) == 3 ? kind : "";
  TTT_CHECK(k == "exit" || k == "hang" || k == "term",
            "TTT_TEST_RANK_FAULT='" << v << "' must be RANK:STEP:exit, RANK:STEP:hang or RANK:STEP:term");
  opt.fault_rank = rank;
  opt.fault_step = step;
  opt.fault = kind;
}

}  // namespace

int cmd_train(const Argv& argv) {
  const train::TrainConfig d;
  Args a(argv, "train");
  a.value("preset", "model preset (" + [] {
    std::string s;
    for (auto& n : model::preset_names()) s += (s.empty() ? "" : ", ") + n;
    return s;
  }() + ")", d.preset)
      .value("config", "JSON model config file (overrides --preset)")
      .value("data", "data directory with train.bin, val.bin (meta.json); made by `ttt prepare`; with --resume: where "
                     "the run's dataset is now (its fingerprint must match)", d.data_dir)
      .value("out", "run directory (default: runs/<preset>-<timestamp>)")
      .value("steps", "optimizer steps (on --resume: a new total)", std::to_string(d.steps))
      .value("batch", "sequences per micro-batch (default " + std::to_string(d.batch) + " on cpu, " +
                          std::to_string(kCudaDefaultBatch) + " on cuda)")
      .value("seq-len", "tokens per training sequence (default: the config's seq_len)")
      .value("accum", "micro-batches per optimizer step (gradient accumulation)", std::to_string(d.accum))
      .value("lr", "maximum learning rate", num(d.lr))
      .value("min-lr-ratio", "final learning rate as a fraction of --lr (cosine decay)", num(d.min_lr_ratio))
      .value("warmup", "linear warmup steps", std::to_string(d.warmup))
      .value("weight-decay", "AdamW weight decay (projection matrices only)", num(d.weight_decay))
      .value("beta1", "AdamW beta1", num(d.beta1))
      .value("beta2", "AdamW beta2", num(d.beta2))
      .value("clip", "gradient clipping: maximum global L2 norm (0: off)", num(d.clip))
      .value("eval-every", "validate every N steps (0: only at the end)", std::to_string(d.eval_every))
      .value("eval-batches", "validation batches (of --batch windows each)", std::to_string(d.eval_batches))
      .value("ckpt-every", "checkpoint every N steps (0: only at the end)", std::to_string(d.ckpt_every))
      .value("keep-checkpoints", "complete checkpoints kept in RUN/checkpoints/ (besides the one being written)",
             std::to_string(d.keep_checkpoints))
      .value("log-every", "progress line every N steps", std::to_string(d.log_every))
      .value("seed", "seed of the initialization and the batch sampler", std::to_string(d.seed))
      .flag("cross-documents", "let training windows run across document separators (default: the targets after a "
                               "window's first separator are ignored)")
      .value("resume", "continue the run in this run (or checkpoint) directory exactly where it stopped")
      .value("sample-tokens", "tokens of the sample generated at the end (0: no sample)", "200")
      .value("prompt", "prompt of the final sample (default: none, the start of a new document)", "");
  declare_device_flag(a, "cuda: one NVIDIA GPU, every arch (lact, titans, tnt); checkpoints are the same files on both");
  declare_precision_flags(a);
  a.value("stage", "1, or 2: TNT stage 2 (fine-tune only the local memories of --from with --local-chunks)", "1")
      .value("from", "stage 2: the stage-1 run directory")
      .value("local-chunks", "stage 2: the new local chunk sizes, e.g. 1,2 (one per local memory)")
      .value("stage2-fraction", "stage 2: steps as a fraction of the stage-1 run's steps (unless --steps)", "0.05")
      .value("time-budget", "stop (validate, checkpoint) after this many seconds; 0: no limit", "0")
      .value("context-parallel", "TNT under mpirun: split each sequence over this many ranks (spans of whole shards "
                                 "and global chunks); ranks = data parallel x this", "1")
      .value("cp-global", "with --context-parallel: auto (state where the global memory allows it, else gather), "
                          "gather (all-gather the global memory's inputs; each rank runs its chain over the prefix) "
                          "or state (pass its state from rank to rank)",
             model::kDefaultCpGlobal);
  declare_data_parallel_flags(a);
  a.parse();
  if (a.help_requested()) {
    std::fprintf(stdout, "%s", a.usage().c_str());
    return 0;
  }
  const std::string device = device_flag(a, "ttt train");

  train::TrainOptions opt;
  opt.device = device;
  opt.engine = engine_options_flags(a, "ttt train", device);
  opt.log = &std::cerr;
  opt.time_budget_s = a.f64("time-budget");
  TTT_CHECK(std::isfinite(opt.time_budget_s) && opt.time_budget_s >= 0, "ttt train: --time-budget must be >= 0 seconds");
  opt.grad_bucket_bytes = grad_bucket_bytes_flag(a, "ttt train");
  const int64_t sample_tokens = a.i64("sample-tokens");
  TTT_CHECK(sample_tokens >= 0, "ttt train: --sample-tokens must be >= 0, got " << sample_tokens);
  const int64_t keep_checkpoints = a.i64("keep-checkpoints");
  TTT_CHECK(keep_checkpoints >= 1, "ttt train: --keep-checkpoints must be >= 1, got " << keep_checkpoints);

  const int64_t stage = a.i64("stage");
  TTT_CHECK(stage == 1 || stage == 2, "ttt train: --stage must be 1 or 2, got " << stage);
  if (stage == 1)
    for (const char* f : {"from", "local-chunks", "stage2-fraction"})
      TTT_CHECK(!a.has(f), "ttt train: --" << f << " belongs to --stage 2");
  if (stage == 2) {
    TTT_CHECK(!a.has("resume"), "ttt train: to continue a stage-2 run use --resume alone (without --stage)");
    TTT_CHECK(a.has("from") && a.has("local-chunks"),
              "ttt train: --stage 2 needs --from STAGE1_RUN_DIR and --local-chunks N[,M...]");
    for (const char* f : {"preset", "config", "seq-len"})
      TTT_CHECK(!a.has(f), "ttt train: --" << f << " cannot be combined with --stage 2 (the model comes from --from)");
  }

  if (a.has("resume")) {
    // The run continues with its stored model and training config; only these may change.
    for (const char* f : {"preset", "config", "out", "batch", "seq-len", "accum", "lr", "min-lr-ratio", "warmup",
                          "weight-decay", "beta1", "beta2", "clip", "eval-every", "eval-batches", "ckpt-every",
                          "log-every", "seed", "cross-documents"})
      TTT_CHECK(!a.has(f), "ttt train: --" << f << " cannot be combined with --resume (the run continues with the "
                                           << "settings stored in its checkpoint; only --steps, --keep-checkpoints, "
                                           << "--data (the same dataset), --time-budget, --sample-tokens, --prompt and "
                                           << "--device may be given)");
    opt.resume = a.str("resume");
    if (a.has("data")) opt.data_dir_override = a.str("data");
    if (a.has("keep-checkpoints")) opt.keep_checkpoints_override = keep_checkpoints;
    if (a.has("steps")) {
      opt.steps_override = a.i64("steps");
      TTT_CHECK(opt.steps_override > 0, "ttt train: --steps must be > 0, got " << opt.steps_override);
    }
  } else if (stage == 2) {
    train::TrainConfig tc;
    tc.preset = "stage2";
    tc.data_dir = a.has("data") ? a.str("data") : "";
    tc.device = device;
    tc.steps = a.has("steps") ? a.i64("steps") : 0;
    tc.batch = a.has("batch") ? a.i64("batch") : device == "cuda" ? kCudaDefaultBatch : d.batch;
    tc.accum = a.i64("accum");
    tc.lr = a.f64("lr");
    tc.min_lr_ratio = a.f64("min-lr-ratio");
    tc.warmup = a.i64("warmup");
    tc.weight_decay = a.f64("weight-decay");
    tc.beta1 = a.f64("beta1");
    tc.beta2 = a.f64("beta2");
    tc.clip = a.f64("clip");
    tc.eval_every = a.i64("eval-every");
    tc.eval_batches = a.i64("eval-batches");
    tc.ckpt_every = a.i64("ckpt-every");
    tc.keep_checkpoints = keep_checkpoints;
    tc.log_every = a.i64("log-every");
    tc.seed = uint64_t(a.i64("seed"));
    tc.cross_documents = a.on("cross-documents");
    opt.train = tc;
    opt.stage2_from = a.str("from");
    opt.stage2_local_chunks = engine::parse_chunk_list(a.str("local-chunks"), "--local-chunks");
    opt.stage2_fraction = a.f64("stage2-fraction");
    opt.out_dir = a.has("out") ? a.str("out") : train::default_run_dir("stage2");
  } else {
    model::ModelConfig cfg;
    std::string name = a.str("preset");
    if (a.has("config")) {
      cfg = model::load_config(a.str("config"));
      name = std::filesystem::path(a.str("config")).stem().string();
    } else {
      cfg = model::preset(name);
      // A preset's vocabulary follows the data's tokenizer (a config file states its own).
      const data::TokenizerRecord tr = data::tokenizer_record_of_dir(a.str("data"));
      if (tr.kind != "bytes" && int64_t(tr.vocab) != cfg.vocab_size) {
        std::fprintf(stderr, "train: vocab_size %u (the %s tokenizer of %s) instead of the preset's %lld\n", tr.vocab,
                     tr.kind.c_str(), a.str("data").c_str(), (long long)cfg.vocab_size);
        cfg.vocab_size = tr.vocab;
      }
    }
    train::TrainConfig tc;
    tc.preset = name;
    tc.data_dir = a.str("data");
    tc.device = device;
    tc.steps = a.i64("steps");
    tc.batch = a.has("batch") ? a.i64("batch") : device == "cuda" ? kCudaDefaultBatch : d.batch;
    tc.seq_len = a.has("seq-len") ? a.i64("seq-len") : cfg.seq_len;
    tc.accum = a.i64("accum");
    tc.lr = a.f64("lr");
    tc.min_lr_ratio = a.f64("min-lr-ratio");
    tc.warmup = a.i64("warmup");
    tc.weight_decay = a.f64("weight-decay");
    tc.beta1 = a.f64("beta1");
    tc.beta2 = a.f64("beta2");
    tc.clip = a.f64("clip");
    tc.eval_every = a.i64("eval-every");
    tc.eval_batches = a.i64("eval-batches");
    tc.ckpt_every = a.i64("ckpt-every");
    tc.keep_checkpoints = keep_checkpoints;
    tc.log_every = a.i64("log-every");
    const int64_t seed = a.i64("seed");
    TTT_CHECK(seed >= 0, "ttt train: --seed must be >= 0, got " << seed);
    tc.seed = uint64_t(seed);
    tc.cross_documents = a.on("cross-documents");
    train::validate(tc);
    cfg.seq_len = tc.seq_len;
    model::validate(cfg);
    opt.model = cfg;
    opt.train = tc;
    opt.out_dir = a.has("out") ? a.str("out") : train::default_run_dir(name);
  }

  // Under mpirun: one rank per process, data parallel (dist/communicator.h); rank 0 alone prints.
  dist::Communicator& ranks = dist::world();
  opt.ranks = &ranks;
  opt.shard_optimizer = a.on("shard-optimizer");
  const int64_t context_parallel = a.i64("context-parallel");
  TTT_CHECK(context_parallel >= 1 && context_parallel <= 4096,
            "--context-parallel must be a rank count from 1 to 4096, got " << context_parallel);
  opt.context_parallel = int(context_parallel);
  opt.cp_global = model::parse_cp_global(a.str("cp-global"));
  set_fault_hook(opt);
  const bool writer = ranks.rank() == 0;

  g_stop_signal = 0;
  train::TrainResult r;
  {
    const StopSignalScope signals;
    opt.stop_signal = &g_stop_signal;
    r = train::train(opt);
  }

  if (!writer) return r.stop_signal != 0 ? 128 + r.stop_signal : 0;
  // The run keeps the tokenizer of its data (generate and eval find it there).
  {
    const nlohmann::json state =
        nlohmann::json::parse(read_file((std::filesystem::path(r.checkpoint_dir) / "state.json").string()));
    data::copy_tokenizer_to_run(state.at("train").at("data_dir").get<std::string>(), r.run_dir);
  }
  std::printf("trained %lld steps (%lld this run) on %s tokens in %.1f s, %.0f tokens/s; %lld parameters\n",
              (long long)r.step, (long long)r.steps_this_run, std::to_string(r.tokens_seen).c_str(), r.seconds,
              r.tokens_per_s, (long long)r.n_params);
  std::fflush(stdout);
  if (r.stop_signal != 0) {
    std::fprintf(stderr, "interrupted at step %lld; continue with: ttt train --resume %s\n", (long long)r.step,
                 r.run_dir.c_str());
    return 128 + r.stop_signal;
  }
  std::printf("final: train loss %.4f nats/token | val_loss %.4f nats/token | val_ppl %.3f | ", r.last_loss, r.val_loss,
              std::exp(r.val_loss));
  if (r.val_bpb == r.val_bpb)
    std::printf("val_bpb %.4f bits/byte (unigram entropy of the corpus: %.4f bits/token, %.4f bits/byte)\n", r.val_bpb,
                r.unigram_entropy_bits, r.unigram_entropy_bits_per_byte);
  else
    std::printf("%.4f bits/token; no token byte table, so no bits per byte (unigram entropy of the corpus: %.4f "
                "bits/token)\n",
                r.val_loss / std::log(2.0), r.unigram_entropy_bits);
  std::printf("saved run to %s (config.json, metrics.jsonl, checkpoint/ -> checkpoints/step-%lld/)\n", r.run_dir.c_str(),
              (long long)r.step);
  if (r.stopped_by_budget) std::printf("stopped by --time-budget; continue with: ttt train --resume %s\n", r.run_dir.c_str());
  if (r.loss_spikes > 0)
    std::printf("warning: %lld loss spikes in this run (marked LOSS SPIKE on the progress lines); repeated spikes mean "
                "the learning rate is too high\n",
                (long long)r.loss_spikes);
  std::fflush(stdout);

  if (sample_tokens > 0) {
    model::ModelConfig cfg = r.model;
    // The trained weights are in the checkpoint just written.
    SafeTensors st = safetensors_load((std::filesystem::path(r.checkpoint_dir) / "model.safetensors").string());
    model::Params<float> params;
    model::params_from_safetensors(cfg, params, st, r.checkpoint_dir);
    infer::SampleOptions so;
    so.temperature = 0.8;
    so.seed = 1;
    const std::unique_ptr<data::Tokenizer> tok = run_tokenizer(r.run_dir, "", "", cfg.vocab_size, "ttt train");
    const std::string prompt = a.str("prompt");
    const std::vector<int32_t> prompt_tokens = encode_prompt(*tok, prompt, "ttt train");
    std::printf("\n--- sample (up to %lld tokens, temperature %.1f, %s tokenizer) ---\n%s", (long long)sample_tokens,
                so.temperature, tok->kind().c_str(), prompt.c_str());
    std::fflush(stdout);
    generate_text(
        [&](const infer::SampleOptions& o, const std::function<void(int32_t)>& on_token) {
          return infer::generate(cfg, params, prompt_tokens, sample_tokens, o, on_token);
        },
        *tok, so, /*past_eot=*/false);
    std::printf("\n---\n");
  }
  return 0;
}

}  // namespace ttt::cli
