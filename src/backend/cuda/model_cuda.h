// The language model of src/model (arch "lact": docs/ALGORITHMS.md §5) on one GPU: forward, backward and the optimizer
// step with parameters, gradients and AdamW moments resident on the device.
//
// What runs where: matrix products through Blas (blas_cuda.h: fp32, tf32 or bf16 operands with fp32
// accumulation); causal sliding-window attention through attention.h (flash style); the LaCT operator through
// LactRunner (lact_cuda.h), the Titans / TNT memories through TntRunner (tnt_cuda.h); everything else through the
// kernel headers by concern listed in kernels.h (norm, RoPE, loss, optimizer, memory branch, layout and bf16
// conversion, element-wise, reductions). Work buffers and parameter views: model_buffers.h. The backward is written
// out layer by layer (no tape); it is the adjoint of exactly the forward that src/model/model.cpp records on
// the CPU tape, and tests/test_cuda_model.cpp holds the two to each other (fp32 <= 1e-4 relative).
//
// Memory: the residual stream at every layer input is kept ([L+1] x rows x D); by default (GpuModelOptions::recompute
// Full or SaveAttention) a layer's other activations are recomputed from its input during the backward (one layer's
// worth of work buffers, reused by all layers), so activation memory is ~ (L + 1) rows D + one layer, not L layers;
// with None every layer keeps what its backward reads (and its memory operator's forward state), and nothing is
// recomputed. Every level gives the same bits. The logits' gradient overwrites the logits.
//
// Precision: `math` sets the products (fp32 | tf32 | bf16 operands, always fp32 accumulation); parameters,
// gradients, optimizer moments and fast-weight state are fp32. With bf16 products, bf16_activations (the
// default) also STORES activations in bf16: the residual stream kept across the step (half the memory) and the
// activations that feed products (the normed inputs h and h2, the branch sum, the SwiGLU output), which the
// products then read without a conversion pass; element-wise math runs in fp32 on values read from them, and
// gradients flow in fp32 (a straight-through rounding, as CPU emulation BF16ActivationsEmulation reproduces).
//
// This header needs no CUDA headers.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backend/cuda/blas_cuda.h"
#include "backend/options.h"
#include "model/model.h"
#include "train/optimizer.h"

namespace ttt::cuda {

class NcclGroup;

struct GpuModelOptions {
  MathMode math = MathMode::FP32;  // the model's matrix products and the LaCT operator's (bf16 + Muon: tf32 there)
  bool bf16_activations = true;    // with math BF16: store activations in bf16 (see above); ignored otherwise
  // Training: what the backward recomputes (backend::Recompute): the whole layer from its kept input (Full); all
  // but the attention, whose output and log-sum-exp every layer keeps (SaveAttention); nothing (None: every layer
  // but the last keeps every activation its backward reads and its memory operator's forward state: a forward
  // record of one LaCT runner, or a Titans / TNT runner of its own). The same bits at every level.
  backend::Recompute recompute = backend::Recompute::SaveAttention;
  bool poison = false;             // fill every work buffer with NaN when allocated (tests)
  // Replay each layer's memory operator (LaCT, Titans / TNT) as CUDA graphs captured on the first step, one per
  // layer and direction (its launches enqueued once, not per step; the batched Titans path launches tens of
  // kernels per chunk step). Off (or TTT_MEMORY_GRAPHS=0): every call enqueued eagerly (the same bits).
  // Context-parallel batches run eagerly.
  bool memory_graphs = true;
};

// Whether `cfg` can run on the GPU; if not, why (e.g. arch "tnt" / "titans", not on the GPU yet).
bool gpu_supports(const model::ModelConfig& cfg, std::string* why = nullptr);

class GpuModel {
 public:
  explicit GpuModel(const model::ModelConfig& cfg, const GpuModelOptions& opt = {});
  ~GpuModel();
  GpuModel(const GpuModel&) = delete;
  GpuModel& operator=(const GpuModel&) = delete;

  const model::ModelConfig& config() const;
  void upload(const model::Params<float>& p);     // host -> device parameters
  void download(model::Params<float>& p) const;   // device -> host (p gets the config's layout)

  struct Result {
    double loss = 0;                  // mean cross-entropy over the batch's valid targets
    int64_t valid = 0;                // number of valid targets
    std::vector<double> token_loss;   // per position, when asked (0 at ignored targets)
    std::vector<float> logits;        // [rows, V], when asked
  };
  // Forward of a batch; with backward, adds grad_scale * d(loss)/d(parameters) into the gradient buffers
  // (zero_grad() first). Training with accumulation passes grad_scale = valid_of_this_batch / valid_total.
  // span: the batch is this rank's span of every sequence of its context-parallel group (set_context_parallel),
  // every rank of the group running the same call.
  Result forward(const model::Batch& b, bool backward, double grad_scale = 1.0, bool want_token_loss = false,
                 bool want_logits = false, bool span = false);
  void zero_grad();
  void download_grads(std::vector<ag::Mat<float>>& g) const;  // one matrix per parameter
  // Every parameter's gradient as one device array (layout order) and its length: what data parallelism sums over
  // the ranks between the backward and apply_grad_mask.
  float* gradient_data();
  int64_t gradient_size() const;
  // Data parallelism's overlap (engine_cuda.cpp): `hook(stage)` is called on the host each time the backward has
  // enqueued the last kernel that writes the gradients of a stage (dist::backward_stages: 0 the head, 1 + (L-1-l)
  // layer l, L + 1 the embedding), while the rest of the backward is still to come. With a hook, forward() ends by
  // waiting for the default stream only (not the whole device: what the hook put on other streams is its owner's to
  // wait for, with a timeout). Null (the default): no hook, and forward() waits for the device as before.
  void set_gradient_hook(std::function<void(int stage)> hook);
  // TNT context parallelism (docs/CONTEXT_PARALLEL.md): `group` is this rank's context-parallel group (null or one
  // rank: off). A forward with `span` then takes this rank's span of every sequence (len = seq_len / group size,
  // positions from rank * len): it exchanges the attention's halo keys and values with the neighbouring ranks (NCCL
  // send / receive; in the backward their gradients go back), all-gathers the global memory's inputs to run its
  // chain from the sequence's start, and returns their gradients to their owners (with pass_state: receives the
  // global memory's state from the previous rank and sends its exit state to the next; their adjoints the other way). Every rank of the group must run
  // the same batch shapes in the same order; a span without valid targets still runs its backward.
  // pass_state: the global memory's state is passed from rank to rank (--cp-global state) instead of its inputs
  // all-gathered.
  void set_context_parallel(NcclGroup* group, bool pass_state = false);
  // The sharded optimizer (ZeRO-1). pad_flat_arrays: the flat parameter and gradient arrays grow to `padded` (>= the
  // parameter count) elements, the padding's gradient zero (NCCL moves equal counts per rank); call before upload
  // (the weights are not kept). set_optimizer_range: the optimizer owns elements [begin, end) of the flat arrays
  // (default: all): the AdamW moments hold that range only, upload_optimizer / download_optimizer copy its part of
  // the host moments (the rest of the host moments is not touched), apply_grad_mask and adamw_step act on it only.
  // Call before upload_optimizer.
  void pad_flat_arrays(int64_t padded);
  void set_optimizer_range(int64_t begin, int64_t end);
  float* parameter_data();
  // Sum of squares (double, deterministic) of gradient elements [begin, end), and their scaling by `factor`.
  double grad_sum_squares(int64_t begin, int64_t end);
  void scale_grads(float factor, int64_t begin, int64_t end);
  // The trainable elements (mask as train::trainable_mask: one per parameter, each empty or of the parameter's
  // size; empty list: all trainable), uploaded once; upload_optimizer sets it from the optimizer's. Frozen
  // elements keep their gradient zeroed by apply_grad_mask and are left untouched by adamw_step.
  void set_trainable(const std::vector<std::vector<uint8_t>>& mask);
  void apply_grad_mask();  // zeroes the gradient of frozen elements on the device (nothing without a mask)
  // Global L2 norm of the gradients (double); scales them by max_norm / norm when above max_norm > 0.
  double clip_grad_norm(double max_norm);
  // One AdamW step on the device: the arithmetic of train::AdamW::step (its config, decay flags and trainable
  // mask), with the moments kept on the device; `opt` counts the step. upload_optimizer copies opt's moments to
  // the device (at the start and after a resume); download_optimizer copies them back (checkpoints).
  void upload_optimizer(const train::AdamW& opt);
  void adamw_step(train::AdamW& opt, double lr);
  void download_optimizer(train::AdamW& opt) const;

  size_t device_bytes() const;  // everything this model holds on the device now

  // Phase timing for benchmarks: with profiling on, the device is synchronized around the matrix products,
  // the attention and the LaCT operator, and their wall times accumulate under "products", "attention" and
  // "lact" (milliseconds, since set_profiling was last called). Off by default: no synchronization.
  void set_profiling(bool on);
  std::map<std::string, double> phase_ms() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ttt::cuda
