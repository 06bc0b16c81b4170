// Memory estimates made before anything large is allocated, so that a config or flags that cannot fit
// (n_layers 100000, --batch 1000000, eval --batch 100000000) end in a clear error
// naming the fields, the estimate and the memory available, instead of std::bad_alloc, a CUDA out-of-memory
// error half-way through, or minutes of swapping.
//
// The estimate is the sum of the large allocations of a run, each a term naming the fields that drive it:
// model state (parameters, gradients, AdamW moments), per-thread gradient buffers and activations, batch
// tokens, the per-token losses of an evaluation. Runs have phases that do not overlap
// (a training step, a validation pass); the peak is the resident terms plus the largest phase.
//
// On the CPU the activation sizes are calibrated, not derived: the autograd tape keeps about 4 (70 D + 11 F) bytes
// per token and layer plus 8 V + 2600 bytes per token (measured on the tiny preset and variants of D, L and V,
// 2026-11-29: within 5%), a forward without gradients about half of that. On the GPU they are counted: the CUDA
// model's buffers come from the tables of backend/gpu_layer_activations.h and its memory operators' runners from
// host-side size functions (titans::tnt_runner_bytes, lact::workspace_elements), which the estimate sums for the
// batch shape, so it is the device memory the model tracks (DeviceBuffer) plus an allowance for the bf16 products'
// untracked rounding scratch. They are estimates for the check: it refuses only when the estimate exceeds what is
// available, and TTT_MEMORY_LIMIT overrides what is available ("off" disables the check; "8G", "512M", ... caps it).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "backend/options.h"
#include "model/config.h"

namespace ttt::train {

struct MemoryTerm {
  std::string what;     // "parameters, gradients and AdamW moments"
  std::string drivers;  // the fields it grows with and their values: "n_layers 4, dim 128 (1.02M parameters)"
  double bytes = 0;
};

struct MemoryEstimate {
  std::string device;                           // "cpu" (host memory) | "cuda" (device memory)
  std::vector<MemoryTerm> resident;             // held for the whole run
  std::vector<std::vector<MemoryTerm>> phases;  // alternatives that never coexist (a step, a validation pass)
  // cuda training: the peak of the same run at each --recompute level (require_memory's message names the levels
  // that fit); empty otherwise.
  struct LevelPeak {
    backend::Recompute level;
    double peak = 0;
  };
  std::vector<LevelPeak> recompute_peaks;
  backend::Recompute recompute = backend::Recompute::Full;  // the level of this estimate
  double peak() const;                          // resident + the largest phase
  std::vector<MemoryTerm> peak_terms() const;   // resident + the terms of the largest phase
};

// What a run needs to size its memory.
struct MemoryRequest {
  std::string device = "cpu";      // "cpu" | "cuda"
  bool bf16 = false;               // cuda: bf16 products (bf16 weight copies)
  bool bf16_activations = false;   // cuda: activations stored in bf16
  // cuda, training (--recompute): what every layer keeps for the backward beyond its input: nothing (Full), its
  // attention output (SaveAttention), everything its backward reads and its memory operator's state (None).
  backend::Recompute recompute = backend::Recompute::Full;
  int64_t threads = 1;             // cpu: OpenMP threads (sequences in flight at once)
  // Training (train_steps): micro-batch `batch` sequences of `seq_len`, `accum` micro-batches per step.
  bool train_steps = false;
  int64_t batch = 0, accum = 1, seq_len = 0;
  // TNT context parallelism (--context-parallel): on cuda each rank holds the activations of one span (seq_len /
  // context_parallel tokens) of each sequence, in training and in evaluation, plus what crosses a span (the
  // attention's halo rows, the global memory's inputs over the spans up to the last rank's); the CPU sizes whole
  // sequences (its tape holds the prefix's global branch).
  int64_t context_parallel = 1;
  // --cp-global state: the global memory's state is passed between the ranks instead of its inputs gathered (cuda:
  // no prefix buffers, the kept entry states instead).
  bool cp_pass_state = false;
  // Evaluation: `eval_windows` windows of `eval_context` tokens, `eval_batch` per forward pass on cuda
  // (a double: the product of two flags, which may be absurd).
  double eval_windows = 0;
  int64_t eval_context = 0, eval_batch = 0;
  std::string eval_flags;  // how the command's flags set eval_windows, for the message ("--batches 8 x --batch 8")
};

MemoryEstimate estimate_memory(const model::ModelConfig& cfg, const MemoryRequest& req);

// Bytes available for `device`: the host's MemAvailable, bounded by the cgroup's memory limit; on another device
// its free memory (backend::device_free_memory). `source` says where the number comes from. Returns < 0 when the check is off
// (TTT_MEMORY_LIMIT=off) or nothing can be measured (no device).
double available_memory(const std::string& device, std::string* source);

// Throws a ttt::Error when the estimate exceeds the available memory: the estimate, the terms of the peak
// (largest first, each with its fields) and the memory available. `command` prefixes the message.
void require_memory(const std::string& command, const MemoryEstimate& e);

// "1.50 GB" (decimal units, as the progress lines use).
std::string format_bytes(double bytes);

}  // namespace ttt::train
