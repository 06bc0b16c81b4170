// Internal to the GPU model (model_cuda.h), not for other code: GpuModel::Impl, the state of one model on the device,
// and the steps its source files share. The files by concern: model_cuda.cpp (the public calls: parameters, a batch's
// forward and backward over the layers, the optimizer), model_cuda_layer.cpp (one layer's forward and its adjoint,
// with the LaCT and Titans / TNT memory branches), model_cuda_context_parallel.cpp (TNT context parallelism: the
// attention's halo and the global memory across the ranks), model_cuda_buffers.cpp (what a batch holds on the device:
// work buffers grown to it, what each --recompute level keeps, the memory operators' runners per batch shape).
// Each step names the CPU op it mirrors (src/model/model.cpp, src/model/memory_branch.cpp). Work buffers and
// parameters are named fields (model_buffers.h): act.* (a layer's activations), grad.* (its gradients), head.*
// (final norm, LM head, loss), P / G (typed views of the parameters and of their gradients).
// The steps are declared below by file; the comment of each is at its definition.
#pragma once
#include <cuda_runtime.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "backend/context_parallel_plan.h"
#include "backend/cuda/attention.h"
#include "backend/cuda/check.cuh"
#include "backend/cuda/lact_cuda.h"
#include "backend/cuda/model_buffers.h"
#include "backend/cuda/model_cuda.h"
#include "backend/cuda/tnt_cuda.h"
#include "model/memory_spec.h"

namespace ttt::cuda {

struct GpuModel::Impl {
  model::ModelConfig cfg;
  model::BranchSpec branch;  // the memory branch: memories, gate columns, rate rule (model/memory_spec.h)
  GpuModelOptions opt;
  Blas blas;
  // Parameter layout: one flat array in the order of model::parameter_shapes.
  model::Params<float> layout;  // names, shapes, index (values unused beyond sizes)
  std::vector<int64_t> offset;
  int64_t total = 0;
  DeviceArray<float> params, grads, adam_m, adam_v;
  ModelTensors P, G;            // typed views of params and grads (rebuilt only by pad_flat_arrays, before upload)
  int64_t flat = 0;             // elements of params and grads: total, or more (pad_flat_arrays)
  int64_t opt_begin = 0, opt_end = 0;  // the optimizer's range of the flat arrays (adam_m/adam_v hold it)
  std::function<void(int)> gradient_hook;  // set_gradient_hook
  DeviceBuffer masks;           // per-element trainable mask (bytes, flat like the parameters), when set
  bool have_masks = false;
  std::vector<int64_t> mask_offsets;
  DeviceBuffer dloss;           // device scalar: the CE backward's upstream gradient
  DeviceBuffer norm_work;       // rms_norm_backward's work buffer
  size_t norm_work_bytes = 0;
  DeviceArray<float> o_norm_tiled;  // ttt_norm_shared: a layer's [d] memory-norm weight tiled to [D] (memory_norm_weight)

  // Sizes.
  int64_t D = 0, H = 0, d = 0, dh = 0, Ha = 0, hd = 0, F = 0, V = 0, L = 0;

  // bf16 activations (GpuModelOptions::bf16_activations with bf16 products): the residual stream kept for the
  // backward and the activations that are matrix-product operands (h, h2, sum, mm) are stored in bf16 (the
  // *_bf16 fields), and so are the MLP's gate and up products and d(mm), which their products write in bf16 and only
  // the SwiGLU kernels read; other element-wise work reads and writes fp32.
  const bool act16;
  bool titans_like;  // arch "titans" / "tnt": the memory branch runs through TntRunner

  // Work buffers, sized by the tables of model_buffers.h for the largest batch so far (capacity in rows).
  int64_t cap_rows = 0;
  LayerActivationArrays act_arrays;
  LayerGradientArrays grad_arrays;
  HeadArrays head_arrays;
  ModelDims dims;          // the dimensions of the current batch (ensure_rows; the arrays fit the largest so far)
  ModelDims own_dims;      // the same for a layer's own kept copy (--recompute none)
  LayerActivations work;   // the work buffers of a layer's activations, shared by the layers
  LayerActivations act;    // the layer being run: `work`, with the kept fields of that layer where it keeps its own
  LayerGradients grad;
  HeadBuffers head;
  std::map<std::pair<int64_t, int64_t>, std::unique_ptr<LactRunner<float>>> lact;
  std::map<std::pair<int64_t, int64_t>, std::unique_ptr<TntRunner<float>>> tnt;
  DeviceBuffer ids_dev, tgt_dev, pos_dev, emb_order, emb_starts, emb_uniq;
  DeviceBuffer loss_dev, valid_dev;
  // With --recompute save-attention, while a batch runs forward and backward: each layer's attention output [rows, D]
  // and log-sum-exp [rows, Ha], kept from the forward so that the backward's recomputation skips the attention;
  // the layer's act.attn / act.lse point here (select_layer). Allocated on the first training batch.
  std::vector<DeviceArray<float>> attn_kept, lse_kept;
  bool attention_kept = false;  // this batch keeps them (training with --recompute save-attention)
  // With --recompute none, while a batch runs forward and backward: every layer but the last keeps its own copy of
  // what its backward reads (kept_layers: the TTT_GPU_LAYER_KEPT table) and its memory operator's forward state
  // (chunk-boundary states, bf16 operand copies) until its backward: LaCT in forward record l of one runner
  // (layer_lact: the records share its work buffers), Titans / TNT on a runner of its own (layer_tnt); so the
  // backward recomputes nothing. The last layer's activations are still in the work buffers and its state in the
  // shared runner when the backward starts. Grown on the first training batch (runners: made for the training
  // batch shape, remade only when it changes), then reused.
  std::vector<LayerKeptArrays> kept_layers;
  std::unique_ptr<LactRunner<float>> layer_lact;
  std::vector<std::unique_ptr<TntRunner<float>>> layer_tnt;
  std::pair<int64_t, int64_t> layer_runner_shape{0, 0};
  bool layers_kept = false;  // this batch keeps them (training with --recompute none)
  bool batch_backward = false;  // the batch being run has a backward (a training batch)
  // Residual stream at the layer inputs, [L+1] arrays of rows x D: fp32 (xs), or bf16 (xs16) with bf16 activations.
  std::vector<DeviceArray<float>> xs;
  std::vector<DeviceArray<bf16>> xs16;

  // TNT context parallelism (set_context_parallel; docs/CONTEXT_PARALLEL.md). split: the batch being run is this
  // rank's span of every sequence (a training batch with a group of several ranks). hp: the batch's attention rows
  // (backend/context_parallel_plan.h); halo: the window - 1 tail rows a rank sends the next one; halo_in: the rows it
  // receives in front of its own (0 on CP rank 0; both 0 without a split). halo_kept[l]:
  // layer l's received keys and values [k | v] x [S, halo, D] from the forward, which the backward's recomputation
  // reuses (no second exchange). The global memory runs over the prefix of spans 0..cp_rank (SplitRunners::global:
  // T = (cp_rank + 1) N), the local memories over the span (SplitRunners::local; none when the branch has no local
  // memory); one set per batch shape, at most two kept (training and validation shapes).
  NcclGroup* cp_group = nullptr;
  int cp_rank = 0, cp_ranks = 1;
  bool split = false;
  backend::HaloPlan hp{0, 0, 0, 1, 0};
  int64_t halo = 0, halo_in = 0;
  ContextArrays cp_arrays;
  ContextBuffers cpb;
  std::vector<DeviceArray<float>> halo_kept;
  // --cp-global state (pass_state): the global memory runs over the span from the previous rank's exit state
  // instead of over the prefix (global_state_forward / backward); state_kept[l]: the entry state layer l received in
  // the forward ([W1 | W2] per sequence-head, then the momentum: dims.state floats), reused by the recomputation.
  bool pass_state = false;
  std::vector<DeviceArray<float>> state_kept;
  struct SplitRunners {
    std::unique_ptr<TitansRunner<float>> global;
    std::unique_ptr<TntRunner<float>> local;
  };
  std::map<std::pair<int64_t, int64_t>, std::unique_ptr<SplitRunners>> split_cache;
  bool global_split() const { return split && cfg.use_global; }

  Impl(const model::ModelConfig& c, const GpuModelOptions& o)
      : cfg(c), branch(model::branch_spec(c)), opt(o), blas(o.math),
        act16(o.math == MathMode::BF16 && o.bf16_activations), titans_like(c.arch != model::Arch::Lact) {}

  // The operator runner of a batch shape (S sequences of N tokens) from `cache`, made by make() on first use; one
  // per shape, at most two kept (training and evaluation shapes).
  template <class Runner, class Make>
  Runner& cached_runner(std::map<std::pair<int64_t, int64_t>, std::unique_ptr<Runner>>& cache, int64_t S, int64_t N,
                        Make make) {
    const auto key = std::make_pair(S, N);
    auto it = cache.find(key);
    if (it != cache.end()) return *it->second;
    if (cache.size() >= 2) cache.erase(cache.begin());
    std::unique_ptr<Runner> made = make();
    Runner& runner = *made;
    cache[key] = std::move(made);
    return runner;
  }

  // bf16 copies of the product weights (the layers' matrices and the LM head) for one training batch with bf16
  // products: rounded once as the batch starts (round_product_weights), read by the forward, the recomputed forward
  // and the backward, where Blas rounded each weight into its scratch before each of its products (2 or 3 times a
  // step). The same bf16 values in 256-byte aligned slots, as Blas's scratch: the same products, bit for bit.
  // Valid only during that batch's forward() call (the parameters cannot change within it). Untracked, like Blas's
  // scratch: the memory estimate's allowance for bf16 rounding scratch (2 bytes a parameter) covers them.
  // TTT_WEIGHT_COPIES=0 turns them off (Blas rounds per product).
  struct WeightCopies {
    bool enabled = true;
    bool valid = false;
    void* base = nullptr;  // one cudaMalloc of `bytes`, grown never (the layout is fixed)
    size_t bytes = 0;
    std::map<const float*, const bf16*> of;
    WeightCopies() = default;
    WeightCopies(const WeightCopies&) = delete;
    WeightCopies& operator=(const WeightCopies&) = delete;
    ~WeightCopies() {
      if (base) cudaFree(base);
    }
  } weight_copies;

  // ---- what a batch holds on the device (model_cuda_buffers.cpp) ----------------------------------------------

  // Whether layer l keeps its own activations and operator state (--recompute none, every layer but the last).
  bool keeps_layer(int64_t l) const { return layers_kept && l < L - 1; }
  // Layer l's forward record in its LaCT runner (lact_runner_of): l where it keeps its own, else 0.
  int64_t lact_record_of(int64_t l) const { return keeps_layer(l) ? l : 0; }
  TntRunner<float>& tnt_runner(int64_t S, int64_t N);
  TntRunner<float>& tnt_runner_of(int64_t l, int64_t S, int64_t N);
  LactRunner<float>& lact_runner_of(int64_t l, int64_t S, int64_t N);
  std::unique_ptr<TntRunner<float>> make_tnt_runner(int64_t S, int64_t N);
  TitansOptions titans_options() const;
  void* norm_work_for(int64_t rows, int64_t cols);
  void round_product_weights();
  LactRunner<float>& lact_runner(int64_t S, int64_t N);
  std::unique_ptr<LactRunner<float>> make_lact_runner(int64_t S, int64_t N, int64_t records = 1,
                                                      bool keep_products = false);
  void ensure_rows(int64_t rows, int64_t S, int64_t N);
  void ensure_kept_attention(int64_t rows);
  void ensure_kept_layers(int64_t S, int64_t N);
  void select_layer(int64_t l);
  const float* layer_input(int64_t l, int64_t rows);
  float* layer_output(int64_t l);
  void keep_output(int64_t l, int64_t rows);

  // Phase timing (set_profiling): the device is synchronized around each timed call, so the phases add up to
  // wall time; off by default (no synchronization at all then).
  bool profile = false;
  std::map<std::string, double> phase_ms;
  template <class F>
  void timed(const char* phase, F&& f) {
    if (!profile) {
      f();
      return;
    }
    TTT_CUDA_CHECK(cudaDeviceSynchronize());
    const auto t0 = std::chrono::steady_clock::now();
    f();
    TTT_CUDA_CHECK(cudaDeviceSynchronize());
    phase_ms[phase] += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  }
  template <class... A>
  void gemm(A&&... a) {
    timed("products", [&] { blas.gemm(std::forward<A>(a)...); });
  }
  template <class... A>
  void gemm_batched(A&&... a) {
    timed("products", [&] { blas.gemm_batched(std::forward<A>(a)...); });
  }
  template <class... A>
  void col_sum(A&&... a) {
    timed("products", [&] { blas.col_sum(std::forward<A>(a)...); });
  }

  // A product-operand activation: its bf16 copy with bf16 activations, else the fp32 buffer.
  Operand operand(const float* f32, const bf16* b16) const { return act16 ? Operand(b16) : Operand(f32); }
  // A product's output that is stored in bf16 with bf16 activations (cuBLAS rounds its fp32 accumulation as it
  // stores it), else in the fp32 buffer.
  Output stored(float* f32, bf16* b16) const { return act16 ? Output(b16) : Output(f32); }
  // A product's weight (a matrix of the parameters): its bf16 copy while a training batch has them (weight_copies),
  // else the fp32 parameter, which Blas rounds into its scratch for that product.
  Operand weight(const float* w) const {
    if (!weight_copies.valid) return Operand(w);
    const auto it = weight_copies.of.find(w);
    return it == weight_copies.of.end() ? Operand(w) : Operand(it->second);
  }
  // A gradient that is the operand of two products (dx, dxm, dqkv): with bf16 activations its bf16 copy in
  // grad.gop16, which the kernel that finishes the gradient writes beside it (the bits Blas would round it to in each
  // product), else the fp32 gradient.
  Operand gradient_operand(const float* g) const {
    return act16 ? Operand(static_cast<const bf16*>(grad.gop16)) : Operand(g);
  }

  // The width of the memory q/k's RoPE heads (per memory head, or with ttt_rope_attn_heads per attention head);
  // 0 without ttt_rope.
  int64_t memory_rope_width() const { return cfg.ttt_rope ? D / cfg.mem_rope_heads() : 0; }

  // The attention backward on fp32 operands: fp32 kernels, or the bf16 tensor-core ones converting as they load.
  using AttentionBackward = void (*)(const AttentionShape&, const float*, int64_t, const float*, int64_t, const float*,
                                     int64_t, const float*, int64_t, const float*, const float*, int64_t, float*,
                                     int64_t, float*, int64_t, float*, int64_t, void*, void*);
  static constexpr AttentionBackward fp32_backward = &swa_backward;
  static constexpr AttentionBackward fp32_input_bf16_backward = &swa_backward_bf16;
  // The bf16 attention reads bf16 operands (16-byte rows: hd % 8 == 0); other head widths use its fp32-input form.
  // Context parallel batches use the fp32-input form (the same bits, except where the bf16-operand forward is the
  // Hopper wgmma kernel: then equal to fp32 rounding), whose operands the halo rows extend.
  bool attention_bf16() const {
    return backend::attention_on_bf16_operands(cfg, opt.math == MathMode::BF16) && !split;
  }
  // Where they live: q and v in the two halves of the fp32 qa buffer, k in the first half of ka (both unused as
  // fp32 in this mode), so the bf16 operands cost no memory.
  struct AttentionBf16 {
    bf16 *q, *k, *v;
  };
  AttentionBf16 attention_operands(int64_t rows) {
    auto* qa16 = reinterpret_cast<bf16*>(act.qa);
    return {qa16, reinterpret_cast<bf16*>(act.ka), qa16 + rows * D};
  }

  // ---- context parallelism (model_cuda_context_parallel.cpp) --------------------------------------------------

  static void run_copies(const std::vector<backend::BlockCopy>& copies, const float* src, float* dst,
                         bool accumulate = false);
  static std::vector<backend::BlockCopy> rows_to(const backend::RowBlock& from, const backend::RowBlock& to);
  void attention_rope(int64_t l, const float* q, const float* k, const float* v, const int64_t* pos, int64_t S,
                      int64_t N, bool recompute);
  std::pair<const float*, int64_t> attention_values(int64_t l, const float* v);
  void exchange_halo(int64_t l, const float* v);
  void return_halo_gradient(float* dqkv);
  SplitRunners& split_runners(int64_t S, int64_t N);
  std::unique_ptr<SplitRunners> make_split_runners(int64_t S, int64_t N);
  std::array<float*, 6> global_parts(float* base, int64_t spans, int64_t S, int64_t N) const;
  void global_split_forward(const titans::TntInputs<float>& in, int64_t S, int64_t N);
  void global_split_backward(const titans::TntGrads<float>& og, int64_t S, int64_t N);
  void global_state_forward(int64_t l, const titans::TntInputs<float>& in, int64_t S, int64_t N, bool recompute);
  void global_state_backward(const titans::TntGrads<float>& og, int64_t S, int64_t N);

  // ---- one layer (model_cuda_layer.cpp) ----------------------------------------------------------------------

  const float* memory_norm_weight(const LayerTensors& lw);
  void layer_forward(int64_t l, const float* x, float* out, int64_t S, int64_t N, bool recompute);
  const float* resolve_weight(const MemoryWeight& w, float* tmp);
  void weight_grad(const MemoryWeight& w, const MemoryWeight& gw, const float* gb, int64_t S);
  void lact_forward(int64_t l, int64_t S, int64_t N);
  void lact_backward(int64_t l, int64_t S, int64_t N);
  void titans_forward(int64_t l, int64_t S, int64_t N, bool recompute);
  void titans_backward(int64_t l, int64_t S, int64_t N);
  void layer_backward(int64_t l, const float* x, int64_t S, int64_t N);
};

}  // namespace ttt::cuda
