// Size limits before allocating (the memory estimate and its refusals), and the CLI's answers to input that is
// well-formed but unusable: groups of commands without a subcommand, a directory where a file belongs, finite
// operator inputs whose arithmetic overflows, a GPU asked for where none exists.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "cli_test_util.h"
#include "core/file_io.h"
#include "core/safetensors.h"
#include "data/tokens.h"
#include "model/config.h"
#include "model/memory_spec.h"
#include "model/model.h"
#include "train/checkpoint.h"
#include "train/memory_budget.h"
#include "memory_request_util.h"
#include "train_test_util.h"
#ifdef TTT_HAVE_CUDA
#include "backend/cuda/device.h"
#endif

using namespace ttt;
using ttt::test::expect_clean_failure;
using ttt::test::run_cli;
using ttt::test::RunResult;
namespace fs = std::filesystem;

namespace {

std::string q(const std::string& p) { return "'" + p + "'"; }

// Sets an environment variable for the scope of a test (children started by run_cli inherit it).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (const char* old = std::getenv(name)) had_ = true, old_ = old;
    ::setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() { had_ ? (void)::setenv(name_, old_.c_str(), 1) : (void)::unsetenv(name_); }

 private:
  const char* name_;
  bool had_ = false;
  std::string old_;
};

double sum_bytes(const std::vector<train::MemoryTerm>& terms) {
  double s = 0;
  for (const auto& t : terms) s += t.bytes;
  return s;
}

train::MemoryRequest cpu_training(int64_t batch, int64_t seq_len) {
  train::MemoryRequest r;
  r.threads = 1;
  r.train_steps = true;
  r.batch = batch;
  r.seq_len = seq_len;
  r.eval_windows = 4;
  r.eval_context = seq_len;
  r.eval_batch = batch;
  r.eval_flags = "--eval-batches 4 x --batch 1";
  return r;
}

using test_util::gpu_bf16_training;

// The 87M TNT config of bench/configs/tnt87m_l8.json (seq_len left to the test).
model::ModelConfig tnt87m_config() {
  model::ModelConfig cfg = model::preset("tnt");
  cfg.vocab_size = 256;
  cfg.dim = 768;
  cfg.n_layers = 12;
  cfg.n_attn_heads = cfg.n_mem_heads = 12;
  cfg.window = 512;
  cfg.global_chunk = cfg.shard = 2048;
  cfg.local_chunks = {8};
  return cfg;
}

// A run directory with a checkpoint of the small lact model of train_test_util.h whose data is `data_dir`.
void write_small_checkpoint(const std::string& run_dir, const std::string& data_dir) {
  test_util::write_initial_checkpoint(run_dir, test_util::small_lact_config(), data_dir);
}

}  // namespace

TEST(MemoryBudget, TermsGrowWithTheirFields) {
  model::ModelConfig cfg = model::preset("tiny");
  const train::MemoryEstimate base = train::estimate_memory(cfg, cpu_training(1, 256));
  // The model state term is exactly 16 bytes per parameter (weights, gradients, two AdamW moments).
  ASSERT_FALSE(base.resident.empty());
  EXPECT_DOUBLE_EQ(base.resident[0].bytes, 16.0 * double(model::parameter_count(cfg)));
  EXPECT_NE(base.resident[0].drivers.find("n_layers 4"), std::string::npos) << base.resident[0].drivers;
  // The peak is the resident terms plus the larger phase, not the sum of the phases.
  ASSERT_EQ(base.phases.size(), 2u);
  EXPECT_DOUBLE_EQ(base.peak(), sum_bytes(base.resident) + std::max(sum_bytes(base.phases[0]), sum_bytes(base.phases[1])));

  model::ModelConfig deep = cfg;
  deep.n_layers = 40;
  EXPECT_GT(train::estimate_memory(deep, cpu_training(1, 256)).peak(), 5 * base.peak() / 2);
  EXPECT_GT(train::estimate_memory(cfg, cpu_training(1, 4096)).peak(), base.peak() + 400e6);  // ~200 kB per token

  // Evaluation keeps one double per (window, position).
  train::MemoryRequest ev;
  ev.eval_windows = 1e6;
  ev.eval_context = 1000;
  ev.eval_flags = "--batches 1000 x --batch 1000";
  const train::MemoryEstimate e = train::estimate_memory(cfg, ev);
  ASSERT_EQ(e.phases.size(), 1u);
  EXPECT_DOUBLE_EQ(e.phases[0][0].bytes, 8e9);
  EXPECT_NE(e.phases[0][0].drivers.find("--batch 1000"), std::string::npos) << e.phases[0][0].drivers;

  // The estimate is computed in doubles: terms far beyond 64 bits of bytes stay finite and do not wrap.
  model::ModelConfig huge = cfg;
  huge.n_layers = int64_t(1) << 40;
  const double peak = train::estimate_memory(huge, cpu_training(1, 256)).peak();
  EXPECT_GT(peak, 1e19);  // more bytes than a signed 64-bit integer holds (9.2e18)
  EXPECT_TRUE(std::isfinite(peak));
  // A parameter count that does not fit 64 bits is refused by the config's validation, naming the field.
  huge.n_layers = int64_t(1) << 60;
  try {
    train::estimate_memory(huge, cpu_training(1, 256));
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("n_layers"), std::string::npos) << e.what();
  }
}

// On the GPU, --recompute save-attention adds one term to the step: every layer's attention output and
// log-sum-exp in fp32, L x rows x (dim + attention heads) x 4 bytes.
TEST(MemoryBudget, SavedAttentionIsOneTermOfTheStep) {
  const model::ModelConfig cfg = model::preset("760m");
  train::MemoryRequest r = gpu_bf16_training(2, 4096);
  const train::MemoryEstimate full = train::estimate_memory(cfg, r);
  r.recompute = backend::Recompute::SaveAttention;
  const train::MemoryEstimate saved = train::estimate_memory(cfg, r);
  ASSERT_EQ(saved.phases.size(), full.phases.size());
  ASSERT_EQ(saved.phases[0].size(), full.phases[0].size() + 1);
  EXPECT_DOUBLE_EQ(saved.phases[0].back().bytes, 24.0 * 2 * 4096 * (1536 + 24) * 4);
  EXPECT_NE(saved.phases[0].back().what.find("--recompute"), std::string::npos) << saved.phases[0].back().what;
  EXPECT_DOUBLE_EQ(saved.peak() - full.peak(), saved.phases[0].back().bytes);
}

// A GPU training step's shared LaCT runner keeps each chunk's products for the backward (backend::
// gpu_lact_keeps_products; TTT_LACT_KEEP=0 turns it off), and its term of the estimate counts them: for the 760m
// preset with bf16 products (bf16 operands), one sequence of 32768 tokens (B = 4 sequence-heads, d = dh = 384, chunk
// 2048), the kept [g|h] of q and k and V W1 in bf16 (the bf16 product outputs, B T 5 dh) less the chunk buffers they
// replace (B C, the same per token): 0.47 GB, at every --recompute level (none: the last layer's on the shared runner;
// the per-layer records do not keep). lr1 a and R are not kept (the backward recomputes them beside their
// cotangents). With TTT_LACT_B16_OUTPUTS=0 the [g|h] and V W1 are fp32: 0.94 GB. A forward-only batch (the
// evaluation phase) does not keep them.
TEST(MemoryBudget, KeptLactProductsAreCountedInTheStepsRunner) {
  const model::ModelConfig cfg = model::preset("760m");
  const double B = 4, T = 32768, dh = 384, C = 2048;
  const double kept = B * (T - C) * 5 * dh * 2;
  const double kept_fp32_outputs = B * (T - C) * 5 * dh * 4;
  EXPECT_DOUBLE_EQ(kept, 471859200.0);
  EXPECT_DOUBLE_EQ(kept_fp32_outputs, 943718400.0);
  auto runner_term = [](const train::MemoryEstimate& e, size_t phase) {
    for (const train::MemoryTerm& t : e.phases.at(phase))
      if (t.what.find("memory operator runner") != std::string::npos) return t.bytes;
    ADD_FAILURE() << "no runner term";
    return 0.0;
  };
  for (const backend::Recompute level :
       {backend::Recompute::Full, backend::Recompute::SaveAttention, backend::Recompute::None}) {
    SCOPED_TRACE(backend::recompute_name(level));
    train::MemoryRequest r = gpu_bf16_training(1, 32768, level);
    r.eval_windows = 1;
    r.eval_context = 32768;
    r.eval_batch = 1;
    const train::MemoryEstimate keeping = train::estimate_memory(cfg, r);
    ::setenv("TTT_LACT_KEEP", "0", 1);
    const train::MemoryEstimate recomputing = train::estimate_memory(cfg, r);
    ::unsetenv("TTT_LACT_KEEP");
    ASSERT_EQ(keeping.phases.size(), 2u);  // the step, the evaluation
    EXPECT_DOUBLE_EQ(runner_term(keeping, 0) - runner_term(recomputing, 0), kept);
    EXPECT_DOUBLE_EQ(keeping.peak() - recomputing.peak(), kept);
    EXPECT_DOUBLE_EQ(runner_term(keeping, 1), runner_term(recomputing, 1));
    ::setenv("TTT_LACT_B16_OUTPUTS", "0", 1);
    const train::MemoryEstimate keeping32 = train::estimate_memory(cfg, r);
    ::setenv("TTT_LACT_KEEP", "0", 1);
    const train::MemoryEstimate recomputing32 = train::estimate_memory(cfg, r);
    ::unsetenv("TTT_LACT_KEEP");
    ::unsetenv("TTT_LACT_B16_OUTPUTS");
    EXPECT_DOUBLE_EQ(runner_term(keeping32, 0) - runner_term(recomputing32, 0), kept_fp32_outputs);
    std::printf("760m bf16, 1 x 32768, --recompute %s: step estimate %s keeping the LaCT products, %s recomputing\n",
                backend::recompute_name(level), train::format_bytes(keeping.peak()).c_str(),
                train::format_bytes(recomputing.peak()).c_str());
  }
}

// --recompute none adds two terms to the step: every layer but the last keeps what its backward reads (the kept
// table of backend/gpu_layer_activations.h, sized here by hand for the 760m preset with bf16 products and
// activations) and its own memory operator runner.
TEST(MemoryBudget, KeptLayersAreTermsOfTheStep) {
  const model::ModelConfig cfg = model::preset("760m");
  train::MemoryRequest r = gpu_bf16_training(2, 4096);
  const train::MemoryEstimate full = train::estimate_memory(cfg, r);
  r.recompute = backend::Recompute::None;
  const train::MemoryEstimate none = train::estimate_memory(cfg, r);
  ASSERT_EQ(none.phases[0].size(), full.phases[0].size() + 2);
  const train::MemoryTerm& kept = none.phases[0][none.phases[0].size() - 2];
  const train::MemoryTerm& runners = none.phases[0].back();
  // Per token of a layer, D 1536, F 4096, 4 memory heads, 24 attention heads, 12 gate columns, one memory:
  // fp32 9.5 D (qkv 3, qa 1 (bf16 q and v), ka 0.5 (bf16 k), attn, vT, o, normed, xmid: the LaCT operator with bf16
  // operands reads q and k only as its own bf16 copies) + 24 (lse) + 3 x 12 (three gate pre-activations) + 12 x 4
  // (qnorm, knorm, theta/eta/alpha, 3 rates, momentum, rinvo, zs, gate) + 2 (the two norms' 1/rms); bf16 3 D (h, h2,
  // sum) + 3 F (ga, up: stored in bf16 by their products; mm). Per sequence: the Titans weight copies, 2 x 4 x 384 x
  // 384 fp32.
  const double per_token = 4.0 * (9.5 * 1536 + 24 + 3 * 12 + 12 * 4 + 2) + 2.0 * (3 * 1536 + 3 * 4096);
  const double per_sequence = 4096 * per_token + 4.0 * 2 * 4 * 384 * 384;
  EXPECT_DOUBLE_EQ(kept.bytes, 23 * 2 * per_sequence);
  EXPECT_NE(kept.what.find("--recompute none"), std::string::npos) << kept.what;
  EXPECT_NE(runners.what.find("--recompute none"), std::string::npos) << runners.what;
  // At least, per layer, the fast-weight states of every chunk boundary (2 chunks of 2048: 2 versions, weights and
  // momentum, 3 matrices of 384 x 384 per head) with their bf16 shadows and the bf16 copies of q, k, v (rows x D
  // bf16 each); and one bf16 copy of grad_o. At most twice that (the shared work buffers are far smaller).
  const double states = 2.0 * 2 * 2 * 4 * 3 * 384 * 384 * (4 + 2), copy = 2 * 4096.0 * 1536 * 2;
  EXPECT_GT(runners.bytes, 23 * (states + 3 * copy) + copy);
  EXPECT_LT(runners.bytes, 2 * (23 * (states + 3 * copy) + copy));
  EXPECT_DOUBLE_EQ(none.peak() - full.peak(), kept.bytes + runners.bytes);
  // Every estimate of a GPU training run carries the peak of each level, its own among them.
  ASSERT_EQ(none.recompute_peaks.size(), 3u);
  EXPECT_DOUBLE_EQ(none.recompute_peaks[0].peak, full.peak());
  EXPECT_DOUBLE_EQ(none.recompute_peaks[2].peak, none.peak());
  EXPECT_LT(none.recompute_peaks[1].peak, none.peak());
  r.device = "cpu";
  EXPECT_TRUE(train::estimate_memory(cfg, r).recompute_peaks.empty());
}

// A GPU training run that does not fit is refused naming --recompute and the levels that would fit (or that none
// does).
TEST(MemoryBudget, RefusalNamesTheRecomputeLevelsThatFit) {
  const model::ModelConfig cfg = model::preset("760m");
  train::MemoryRequest r = gpu_bf16_training(1, 8192, backend::Recompute::None);
  const train::MemoryEstimate e = train::estimate_memory(cfg, r);
  const double full = e.recompute_peaks[0].peak, saved = e.recompute_peaks[1].peak;
  ASSERT_LT(saved, e.peak());
  auto refusal = [&](double limit) {
    ::setenv("TTT_MEMORY_LIMIT", std::to_string(int64_t(limit)).c_str(), 1);
    std::string message;
    try {
      train::require_memory("ttt bench step", e);
    } catch (const Error& err) {
      message = err.what();
    }
    ::unsetenv("TTT_MEMORY_LIMIT");
    return message;
  };
  const std::string between = refusal((saved + e.peak()) / 2);
  EXPECT_NE(between.find("--recompute none needs about " + train::format_bytes(e.peak())), std::string::npos)
      << between;
  EXPECT_NE(between.find("the --recompute levels that fit: full (about " + train::format_bytes(full) +
                         "), save-attention (about " + train::format_bytes(saved) + ")."),
            std::string::npos)
      << between;
  const std::string below = refusal(full / 2);
  EXPECT_NE(below.find("no --recompute level fits (full, the least memory, needs about " + train::format_bytes(full)),
            std::string::npos)
      << below;
  EXPECT_EQ(refusal(e.peak() + 1), "");  // it fits: no refusal
}

// Context parallel on the GPU (--context-parallel N): a rank holds the activations of one span (seq_len / N tokens)
// plus what crosses spans (the attention's halo, the global memory's inputs over the sequence), so a sequence twice
// as long as one GPU's is sized at about one GPU's, not twice it. The 87M TNT config of bench/configs/tnt87m_l8.json.
TEST(MemoryBudget, ContextParallelSizesOneSpanAndItsExchanges) {
  model::ModelConfig cfg = tnt87m_config();
  cfg.seq_len = 131072;
  train::MemoryRequest r = gpu_bf16_training(1, 131072, backend::Recompute::SaveAttention);
  const train::MemoryEstimate one = train::estimate_memory(cfg, r);  // the length one GPU holds
  r.seq_len = 2 * 131072;
  cfg.seq_len = r.seq_len;
  const train::MemoryEstimate whole = train::estimate_memory(cfg, r);
  r.context_parallel = 2;
  const train::MemoryEstimate split = train::estimate_memory(cfg, r);
  ASSERT_EQ(split.phases.size(), 1u);
  ASSERT_EQ(split.phases[0].size(), one.phases[0].size() + 1);
  // The span's residual stream is that of one GPU's sequence; the attention's rows (work buffers and kept outputs)
  // add the halo's. Terms: residual stream, work buffers, runner, kept attention, (context parallel) exchanges.
  ASSERT_EQ(split.phases[0].size(), 5u);
  EXPECT_DOUBLE_EQ(split.phases[0][0].bytes, one.phases[0][0].bytes);
  EXPECT_NE(split.phases[0][0].drivers.find("seq_len 262144 / --context-parallel 2"), std::string::npos)
      << split.phases[0][0].drivers;
  const double rows = 131072, halo = 511, D = 768, H = 12;
  // Work buffers (backend/gpu_layer_activations.h): the halo's rows of qa, ka, attn, dnormed, dO, dz, dzx and lse;
  // the attention backward's workspace, fp32 kernels with a halo (delta over the halo and the span) against the bf16
  // ones of one GPU (delta and bf16(dO): 12 + 12 x 64 / 2 floats per row).
  EXPECT_DOUBLE_EQ(split.phases[0][1].bytes - one.phases[0][1].bytes,
                   4 * (7 * halo * D + halo * 12 + (rows + halo) * 12 - rows * (12 + 384)));
  EXPECT_DOUBLE_EQ(split.phases[0][3].bytes - one.phases[0][3].bytes, 12.0 * 511 * (768 + 12) * 4);
  // The exchanges' buffers (TTT_GPU_CONTEXT_BUFFERS): the values over the halo and the span, the halo sent and
  // received, the global memory's inputs over 2 spans sent and gathered and its output; the halo kept per layer.
  const double exchanges = (rows + halo) * D + 4 * halo * D + 2 * 2 * 3 * rows * (D + H) + 2 * rows * D +
                           2 * 12 * halo * D;
  const train::MemoryTerm& extra = split.phases[0].back();
  EXPECT_DOUBLE_EQ(extra.bytes, exchanges * 4);
  EXPECT_NE(extra.what.find("context parallel"), std::string::npos) << extra.what;
  EXPECT_NE(extra.drivers.find("window 512"), std::string::npos) << extra.drivers;
  // Twice the tokens on two GPUs: far below the whole sequence on one, within a tenth of one GPU's own sequence.
  EXPECT_LT(split.peak(), 0.7 * whole.peak());
  EXPECT_LT(split.peak(), 1.1 * one.peak());  // 1.073: the global memory's prefix (docs/CONTEXT_PARALLEL.md)
  // So with memory for 1.2 times one GPU's sequence, the doubled sequence is refused on one GPU and accepted on two.
  ScopedEnv env("TTT_MEMORY_LIMIT", std::to_string(int64_t(1.2 * one.peak())));
  EXPECT_THROW(train::require_memory("ttt train", whole), Error);
  EXPECT_NO_THROW(train::require_memory("ttt train", split));
  // Validation on the GPU evaluates a span of each window per rank too.
  r.train_steps = false;
  r.eval_windows = 4;
  r.eval_batch = 1;
  r.eval_context = 262144;
  const train::MemoryEstimate eval_split = train::estimate_memory(cfg, r);
  r.context_parallel = 1;
  r.eval_context = 131072;
  const train::MemoryEstimate eval_one = train::estimate_memory(cfg, r);
  ASSERT_EQ(eval_split.phases.size(), 1u);
  ASSERT_EQ(eval_split.phases[0].size(), eval_one.phases[0].size() + 1);
  EXPECT_DOUBLE_EQ(eval_split.phases[0][1].bytes, eval_one.phases[0][1].bytes);  // the activations
  EXPECT_NE(eval_split.phases[0][1].drivers.find("context 262144 / --context-parallel 2"), std::string::npos)
      << eval_split.phases[0][1].drivers;
  EXPECT_LT(eval_split.peak(), 1.1 * eval_one.peak());  // 1.086: no kept attention outputs to dilute the exchanges
  // The CPU sizes whole sequences (its tape holds the prefix's global branch): unchanged by the flag.
  r.train_steps = true;
  r.eval_windows = 0;
  r.context_parallel = 2;
  r.device = "cpu";
  const double cpu_split = train::estimate_memory(cfg, r).peak();
  r.context_parallel = 1;
  EXPECT_DOUBLE_EQ(cpu_split, train::estimate_memory(cfg, r).peak());
}

// --cp-global state on the GPU: no prefix of the global memory's inputs and output, its runner over the span (from
// the passed state, the last chunk updating too), plus the state sent and received and every layer's kept entry
// state. Against the all-gather at 2 x 131072 tokens on two GPUs of the 87M TNT config: exactly those differences.
TEST(MemoryBudget, ContextParallelPassingTheStateKeepsNoPrefix) {
  model::ModelConfig cfg = tnt87m_config();
  cfg.seq_len = 2 * 131072;
  train::MemoryRequest r = gpu_bf16_training(1, 131072, backend::Recompute::SaveAttention);
  const train::MemoryEstimate one = train::estimate_memory(cfg, r);  // 131072 tokens on one GPU
  r.seq_len = cfg.seq_len;
  r.context_parallel = 2;
  const train::MemoryEstimate gather = train::estimate_memory(cfg, r);
  r.cp_pass_state = true;
  const train::MemoryEstimate state = train::estimate_memory(cfg, r);
  ASSERT_EQ(state.phases.size(), 1u);
  ASSERT_EQ(state.phases[0].size(), gather.phases[0].size());
  ASSERT_EQ(state.phases[0].size(), 5u);  // residual stream, work buffers, runner, kept attention, exchanges
  for (size_t i : {0, 1, 3}) EXPECT_DOUBLE_EQ(state.phases[0][i].bytes, gather.phases[0][i].bytes) << i;
  // The exchanges: the values over the halo and the span, the halo sent and received, the span's global-memory
  // input gradients (q, k, v, theta, eta, alpha) and its output over the span; the state ([W1 | W2] and the
  // momentum of 12 sequence-heads) sent and received; per layer the halo and the entry state kept.
  const double rows = 131072, halo = 511, D = 768, H = 12, L = 12;
  const engine::MemoryConfig global = model::branch_spec(cfg).memories.at(0).config;
  ASSERT_TRUE(global.momentum);
  const double chain_state = H * 2 * double(global.d * global.dh) * 2;
  const double exchanges = (rows + halo) * D + 4 * halo * D + 3 * rows * (D + H) + rows * D + 2 * chain_state +
                           2 * L * halo * D + L * chain_state;
  const train::MemoryTerm& extra = state.phases[0].back();
  EXPECT_DOUBLE_EQ(extra.bytes, exchanges * 4);
  EXPECT_NE(extra.what.find("state passed"), std::string::npos) << extra.what;
  // The all-gather's prefix (inputs over 2 spans sent and gathered, output over 2 spans) against the span's.
  EXPECT_DOUBLE_EQ(gather.phases[0].back().bytes - extra.bytes,
                   4 * (3 * 3 * rows * (D + H) + rows * D - 2 * chain_state - L * chain_state));
  // The global memory's runner over one span instead of two.
  EXPECT_LT(state.phases[0][2].bytes, gather.phases[0][2].bytes);
  std::printf("  87M TNT, bf16, 262144 tokens on two GPUs: per rank %.2f GB passing the state, %.2f GB gathering; "
              "131072 on one GPU %.2f GB\n",
              state.peak() / 1e9, gather.peak() / 1e9, one.peak() / 1e9);
  EXPECT_LT(state.peak(), gather.peak());
  EXPECT_LT(state.peak(), one.peak());  // a span and its exchanges: less than one GPU's own sequence
}

// Peak resident bytes (ru_maxrss) of `sh -c cmd` and what it runs. A child starts resident with this process's
// pages until it execs, and the kernel counts that in its peak: so a run's peak reads at least this process's
// resident size, which matters when earlier tests (the GPU ones) grew it.
double peak_bytes_of(const std::string& cmd) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int status = 0;
  struct rusage ru {};
  if (pid < 0 || ::wait4(pid, &status, 0, &ru) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    ADD_FAILURE() << "failed: " << cmd;
    return 0;
  }
  return double(ru.ru_maxrss) * 1024.0;
}
// Peak resident bytes of `ttt train` (one thread, one step of one sequence of seq_len T, one validation window).
double measured_peak_bytes(const std::string& data, const std::string& out, int64_t T) {
  return peak_bytes_of("OMP_NUM_THREADS=1 " + std::string(TTT_CLI_PATH) + " train --steps 1 --batch 1 --seq-len " +
                       std::to_string(T) + " --eval-batches 1 --eval-every 0 --sample-tokens 0 --data " + q(data) +
                       " --out " + q(out) + " > /dev/null 2>&1");
}

// The estimate against the peak resident memory of real training runs. The activations (what grows with the
// flags) are checked by the difference between seq_len 4096 and 1024, which cancels the program's fixed
// footprint; the whole estimate at 4096 must be within a factor 1.5 either way, or the refusals would be wrong.
TEST(MemoryBudget, EstimateMatchesMeasuredRuns) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer's redzones and quarantine change the memory a run takes";
#endif
  const std::string data = test_util::temp_dir("membudget_data");
  std::string text;
  for (int i = 0; i < 4000; ++i) text += "line " + std::to_string(i) + " of a document about memory estimates\n";
  text.push_back('\0');
  data::save_byte_tokens(data + "/train.bin", text, 1);
  data::save_byte_tokens(data + "/val.bin", text, 1);
  const double resident = peak_bytes_of("true");  // this process's resident size, as a child reads it
  const double m1024 = measured_peak_bytes(data, data + "/run1024", 1024);
  const double m4096 = measured_peak_bytes(data, data + "/run4096", 4096);
  if (m1024 < 1.1 * resident) {
    fs::remove_all(data);
    GTEST_SKIP() << "this test process is resident with " << resident / 1e6 << " MB, as much as the seq_len 1024 run's "
                 << m1024 / 1e6 << " MB peak reads: the runs cannot be measured from here (run the test alone)";
  }
  auto estimate = [&](int64_t T) {
    train::MemoryRequest r = cpu_training(1, T);
    r.eval_windows = 1;
    return train::estimate_memory(model::preset("tiny"), r).peak();
  };
  const double e1024 = estimate(1024), e4096 = estimate(4096);
  std::printf("seq_len 1024: estimate %.1f MB, measured peak %.1f MB; seq_len 4096: estimate %.1f MB, measured %.1f MB\n",
              e1024 / 1e6, m1024 / 1e6, e4096 / 1e6, m4096 / 1e6);
  const double de = e4096 - e1024, dm = m4096 - m1024;
  EXPECT_GT(de, dm / 1.25) << "activation estimate " << de << " measured " << dm;
  EXPECT_LT(de, dm * 1.25) << "activation estimate " << de << " measured " << dm;
  EXPECT_GT(e4096, m4096 / 1.5);
  EXPECT_LT(e4096, m4096 * 1.5);
  fs::remove_all(data);
}

TEST(MemoryBudget, AvailableMemoryAndItsOverride) {
  {
    ScopedEnv env("TTT_MEMORY_LIMIT", "1.5G");
    std::string source;
    EXPECT_DOUBLE_EQ(train::available_memory("cpu", &source), 1.5e9);
    EXPECT_NE(source.find("TTT_MEMORY_LIMIT"), std::string::npos);
  }
  {
    ScopedEnv env("TTT_MEMORY_LIMIT", "off");
    EXPECT_LT(train::available_memory("cpu", nullptr), 0);
    // Off: even an absurd estimate passes.
    model::ModelConfig huge = model::preset("tiny");
    huge.n_layers = 1000000;
    EXPECT_NO_THROW(train::require_memory("test", train::estimate_memory(huge, cpu_training(1, 256))));
  }
  {
    ScopedEnv env("TTT_MEMORY_LIMIT", "lots");
    EXPECT_THROW(train::available_memory("cpu", nullptr), Error);
  }
  ::unsetenv("TTT_MEMORY_LIMIT");
  std::string source;
  const double host = train::available_memory("cpu", &source);
  EXPECT_GT(host, 0) << source;
  EXPECT_LT(host, 1e16) << source;
}

TEST(MemoryBudget, RefusalNamesFieldsEstimateAndAvailable) {
  ScopedEnv env("TTT_MEMORY_LIMIT", "2G");
  model::ModelConfig cfg = model::preset("tiny");
  cfg.n_layers = 100000;
  try {
    train::require_memory("ttt train", train::estimate_memory(cfg, cpu_training(4, 256)));
    FAIL() << "no refusal";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("ttt train: not enough host memory"), std::string::npos) << m;
    EXPECT_NE(m.find("n_layers 100000"), std::string::npos) << m;
    EXPECT_NE(m.find("2.00 GB is available (TTT_MEMORY_LIMIT=2G)"), std::string::npos) << m;
    EXPECT_NE(m.find("TB"), std::string::npos) << m;  // the estimate, in its unit
  }
  // The tiny preset fits in 2 GB.
  EXPECT_NO_THROW(train::require_memory("ttt train", train::estimate_memory(model::preset("tiny"), cpu_training(4, 256))));
}

// The reproducers of the issue, through the CLI: each a clear refusal naming the field, before allocating.
TEST(MemoryBudget, CliRefusesWhatCannotFit) {
  const std::string data = test_util::make_corpus("membudget_cli");
  ScopedEnv env("TTT_MEMORY_LIMIT", "8G");  // the same answer on every machine
  write_file_atomic(data + "/deep.json", "{\"n_layers\": 100000}");
  expect_clean_failure("train --config " + q(data + "/deep.json") + " --data " + q(data) + " --out " + q(data + "/r1"),
                       "n_layers 100000");
  EXPECT_FALSE(fs::exists(data + "/r1")) << "nothing may be written before the refusal";
  expect_clean_failure("train --batch 1000000 --data " + q(data) + " --out " + q(data + "/r2"), "--batch 1000000");
  // eval: a valid checkpoint, then an absurd batch.
  write_small_checkpoint(data + "/run", data);
  expect_clean_failure("eval --checkpoint " + q(data + "/run") + " --batch 100000000", "--batch 100000000");
  expect_clean_failure("eval --checkpoint " + q(data + "/run") + " --context 1000000000 --batch 1 --batches 1",
                       "context 1000000000");
  {
    ScopedEnv bad("TTT_MEMORY_LIMIT", "12 apples");
    expect_clean_failure("eval --checkpoint " + q(data + "/run") + " --batch 1 --batches 1", "TTT_MEMORY_LIMIT");
  }
  fs::remove_all(data);
}

TEST(CliGroups, HelpListsSubcommands) {
  for (const char* group : {"bench", "op"}) {
    SCOPED_TRACE(group);
    RunResult r = run_cli(std::string(group) + " --help");
    ASSERT_TRUE(WIFEXITED(r.status));
    EXPECT_EQ(WEXITSTATUS(r.status), 0) << r.output;
    EXPECT_NE(r.output.find("subcommands"), std::string::npos) << r.output;
  }
  RunResult b = run_cli("bench -h");
  for (const char* sub : {"bench op", "bench tnt", "bench step"}) EXPECT_NE(b.output.find(sub), std::string::npos) << b.output;
  RunResult o = run_cli("op --help");
  for (const char* sub : {"op lact", "op tnt"}) EXPECT_NE(o.output.find(sub), std::string::npos) << o.output;
  // Without a subcommand, or with an unknown one: a usage error that lists them.
  expect_clean_failure("bench", "bench step");
  expect_clean_failure("op", "a subcommand is required");
  expect_clean_failure("op lactx --in a", "unknown subcommand 'op lactx'");
}

TEST(CliInputs, DirectoryWhereAFileBelongs) {
  const std::string dir = test_util::temp_dir("dir_as_file");
  write_small_checkpoint(dir + "/run", dir);
  const std::string model_file = train::find_checkpoint(dir + "/run").dir + "/model.safetensors";
  fs::remove(model_file);
  fs::create_directories(model_file);
  expect_clean_failure("eval --checkpoint " + q(dir + "/run"), "is a directory");
  expect_clean_failure("generate --checkpoint " + q(dir + "/run"), "is a directory");
  expect_clean_failure("op lact --in " + q(dir) + " --out " + q(dir + "/o.st"), "is a directory");
  EXPECT_THROW(read_file(dir), Error);
  fs::remove_all(dir);
}

// Finite but huge operator inputs: the outputs overflow; the command must say so and write nothing.
TEST(CliInputs, OperatorOutputsThatOverflowAreRefused) {
  const std::string dir = test_util::temp_dir("op_overflow");
  const int64_t B = 1, T = 4, d = 2, dh = 2;
  auto filled = [](const Shape& s, double v) {
    Tensor t = Tensor::empty(s, DType::F32);
    for (int64_t i = 0; i < t.numel(); ++i) t.set(i, v);
    return t;
  };
  SafeTensors in;
  in.add("w0", filled({B, dh, d}, 1e30));
  in.add("w1", filled({B, d, dh}, 1e30));
  in.add("w2", filled({B, dh, d}, 1e30));
  for (const char* n : {"q", "k", "v"}) in.add(n, filled({B, T, d}, 1e30));
  for (const char* n : {"lr0", "lr1", "lr2"}) in.add(n, filled({B, T}, 1.0));
  safetensors_save(dir + "/in.st", in);
  expect_clean_failure("op lact --chunk 2 --weight-norm none --in " + q(dir + "/in.st") + " --out " + q(dir + "/o.st"),
                       "NaN/Inf");
  EXPECT_FALSE(fs::exists(dir + "/o.st"));
  // Moderate inputs still run.
  SafeTensors ok;
  for (const auto& [name, t] : in.tensors) ok.add(name, filled(t.shape(), 0.5));
  safetensors_save(dir + "/ok.st", ok);
  RunResult r = run_cli("op lact --chunk 2 --in " + q(dir + "/ok.st") + " --out " + q(dir + "/o.st"));
  EXPECT_TRUE(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0) << r.output;
  fs::remove_all(dir);
}

TEST(CliInputs, GenerateOnCudaWithoutAGpu) {
#ifdef TTT_HAVE_CUDA
  std::string why;
  if (cuda::device_count(&why) > 0) GTEST_SKIP() << "a CUDA device is present: this checks the machine without one";
  const char* expected = "no CUDA device";
#else
  const char* expected = "no CUDA backend";
#endif
  const std::string dir = test_util::temp_dir("gen_nogpu");
  write_small_checkpoint(dir + "/run", dir);
  expect_clean_failure("generate --device cuda --checkpoint " + q(dir + "/run") + " --prompt Hi --max-new-tokens 2",
                       expected);
  RunResult r = run_cli("generate --device cuda --checkpoint " + q(dir + "/run") + " --prompt Hi --max-new-tokens 2");
  EXPECT_EQ(r.output.find("CUBLAS"), std::string::npos) << r.output;
  fs::remove_all(dir);
}
