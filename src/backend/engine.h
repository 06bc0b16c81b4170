// The training half of the execution interface: a StepEngine runs the language model of src/model on one
// device — the optimizer step of `ttt train` and `ttt bench step`, the per-token losses of `ttt eval` and of a
// run's validation — with the weights (and optimizer state) it was attached to. Each device implements it once
// (backend/cpu/step_engine_cpu.*; cuda/engine_cuda.*); backend::make_step_engine (registry.h) picks one by device
// name. The streaming half (generation) is backend/streamer.h.
//
// This header needs no CUDA headers.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "backend/options.h"
#include "model/model.h"

namespace ttt::train {
class AdamW;
}
namespace ttt::dist {
class Communicator;
}

namespace ttt::backend {

struct StepResult {
  double loss = 0;       // mean cross-entropy over the valid targets of the step's micro-batches
  double grad_norm = 0;  // global L2 norm of the gradient (frozen elements zeroed) before clipping; NaN if not reached
  bool applied = false;  // the optimizer step ran (loss and gradient norm were finite)
  // Several ranks: milliseconds of this step's gradient communication that the computation did not hide (the GPU: how
  // long the communication stream ran past the end of the backward; the CPU, which does not overlap: the time of its
  // gradient and weight exchanges). Negative: not measured (one process).
  double comm_wait_ms = -1;
};

class StepEngine {
 public:
  virtual ~StepEngine() = default;
  virtual const char* device() const = 0;  // the registry's name: "cpu", "cuda"
  virtual const model::ModelConfig& config() const = 0;
  // What runs where, for logs: "the host CPU (2 OpenMP threads), fp32 products", "NVIDIA H200 (...), bf16 products, ...".
  virtual std::string description() const = 0;

  // The host state the engine computes with: the weights and, to train, the optimizer (its config, decay flags,
  // trainable mask, moments and step count). Both must outlive the engine. The CPU engine works on them in
  // place; a device engine copies them to the device here and back in sync_host (attach again after changing
  // them on the host).
  virtual void attach(model::Params<float>& params, train::AdamW* optimizer) = 0;
  // Brings the attached host copies up to date: the weights, and with with_optimizer the AdamW moments (the
  // optimizer's step count is always current). Needed before a checkpoint; evaluation needs none.
  virtual void sync_host(bool with_optimizer) = 0;

  // One optimizer step over the micro-batches: the gradient of the mean cross-entropy over all their valid
  // targets (micro-batches, or their sequences, weighted by their share of them: train::target_shares), the
  // elements the optimizer's trainable mask freezes zeroed, clipped to global L2 norm `clip` (0: off), then one
  // AdamW step at learning rate `lr`. A non-finite loss ends the step before the gradient norm, a non-finite
  // norm before AdamW: the weights then stay as they were (applied = false) and the caller reports the
  // divergence.
  virtual StepResult train_step(const std::vector<model::Batch>& micro, double lr, double clip) = 0;

  // Data parallelism (src/dist; `ttt train` started by mpirun): from then on every rank's train_step is handed the
  // step's whole global batch, computes the gradient of this rank's sequences (dist::rank_sequences) and sums the
  // ranks' gradients in the communicator's fixed order before the mask, the clipping and AdamW, so that every rank
  // holds the same weights after the step; the loss and the gradient norm are the global ones. With
  // `shard_optimizer` (ZeRO-1) each rank keeps the AdamW moments of its own share only (the CPU: whole tensors,
  // dist::tensor_shards; the GPU: a slice of the flat arrays, dist::flat_shards), updates that share and all-gathers
  // the weights; sync_host(true) then gathers the whole optimizer state on
  // rank 0 (a collective: every rank calls it) for its checkpoint. Call before attach. The default accepts a
  // single rank only (a device without data parallelism says so).
  virtual void set_data_parallel(dist::Communicator& ranks, bool shard_optimizer);
  // The size of the gradient buckets that a device overlapping its all-reduce with the backward sums as one
  // collective each (dist::plan_gradient_buckets; 0: one all-reduce after the backward). Call before
  // set_data_parallel. The default ignores it (the CPU reduces the whole gradient in its fixed tree order).
  virtual void set_gradient_buckets(int64_t bytes) { (void)bytes; }
  // TNT context parallelism (`--context-parallel cp`, model/context_parallel.h; after set_data_parallel, before
  // attach): the ranks form groups of cp consecutive ranks; each group computes the sequences data parallelism gives
  // it (dist::rank_sequences over ranks / cp groups), each of its ranks one span of every sequence. The default
  // accepts cp = 1 only (a device without context parallelism says so). `global`: how the global memory's chain
  // crosses the spans (`--cp-global`, model::CpGlobal).
  virtual void set_context_parallel(int cp, model::CpGlobal global = model::CpGlobal::Gather);

  // Per-token losses of a batch of windows without gradients (sequence-major; 0 at ignored targets): evaluation.
  virtual std::vector<double> token_losses(const model::Batch& batch) = 0;
  // How many windows an evaluation hands token_losses at once when `batch` are asked per forward pass: a device
  // takes `batch` (its memory was sized for that); the CPU at least one per thread (one window per forward).
  virtual int64_t eval_windows_per_call(int64_t batch) const { return batch; }
  // How many consecutive ranks evaluate the same windows together: 1, or with context parallelism on a device that
  // also splits evaluation (cuda) the group's size, each rank then computing one span of every window; its
  // token_losses calls are then collectives of the group (train::evaluate gives the group's ranks the same windows).
  virtual int eval_group() const { return 1; }

  // Benchmarks. time_ms: milliseconds of `work` on the engine's clock (the default: the host's steady clock, with
  // synchronize() after the work); report(): device facts and memory figures to add to a benchmark's JSON (at
  // least "timer"); phase profiling (products, attention, memory operator) where the device offers it.
  virtual void synchronize() {}
  virtual double time_ms(const std::function<void()>& work);
  virtual nlohmann::json report() const;
  virtual bool profiles_phases() const { return false; }
  virtual void set_profiling(bool on);
  virtual std::map<std::string, double> phase_ms() const { return {}; }
};

}  // namespace ttt::backend
