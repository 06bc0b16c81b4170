// The GPU model (model_cuda.h): host orchestration of one layer's forward and its hand-written adjoint.
// Each step names the CPU op it mirrors (src/model/model.cpp, src/model/memory_branch.cpp). Work buffers and
// parameters are named fields (model_buffers.h): act.* (a layer's activations), grad.* (its gradients), head.*
// (final norm, LM head, loss), P / G (typed views of the parameters and of their gradients).
#include "backend/cuda/model_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <map>
#include <numeric>

#include "backend/context_parallel_plan.h"
#include "backend/cuda/attention.h"
#include "backend/cuda/check.cuh"
#include "backend/cuda/elementwise_kernels.h"
#include "backend/cuda/lact_cuda.h"
#include "backend/cuda/layout_kernels.h"
#include "backend/cuda/loss_kernels.h"
#include "backend/cuda/memory_kernels.h"
#include "backend/cuda/model_buffers.h"
#include "backend/cuda/nccl_communicator.h"
#include "backend/cuda/norm_kernels.h"
#include "backend/cuda/optimizer_kernels.h"
#include "backend/cuda/reduction_kernels.h"
#include "backend/cuda/rope_kernels.h"
#include "backend/cuda/tnt_cuda.h"
#include "model/memory_spec.h"

namespace ttt::cuda {

using model::ModelConfig;

bool gpu_supports(const ModelConfig& cfg, std::string* why) {
  auto no = [&](const std::string& s) {
    if (why) *why = s;
    return false;
  };
  if (cfg.head_dim_attn() > 128) return no("attention head dim " + std::to_string(cfg.head_dim_attn()) + " > 128");
  // The fused q/k preparation (mk::qk_prep_forward_fused) stages rows of D floats in 48 KiB of shared memory.
  if (cfg.dim > 12288) return no("dim " + std::to_string(cfg.dim) + " > 12288");
  if (cfg.arch == model::Arch::Lact) {
    if (cfg.memory != engine::Family::SwiGLU) return no("LaCT needs memory \"swiglu\"");
    return true;
  }
  // Titans / TNT: the GPU memory (titans_cuda.h) is the MLP memory with residual, momentum and decay, no Muon.
  if (cfg.memory != engine::Family::MLP || !cfg.mem_residual || !cfg.momentum || !cfg.decay || cfg.muon)
    return no(std::string("arch \"") + model::arch_name(cfg.arch) +
              "\" on the GPU needs memory \"mlp\" with mem_residual, momentum and decay on and "
              "muon off (the Titans memory of docs/ALGORITHMS.md section 6.3); this config runs on the CPU");
  return true;
}

struct GpuModel::Impl {
  ModelConfig cfg;
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
  // *_bf16 fields); element-wise work reads and writes fp32.
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

  Impl(const ModelConfig& c, const GpuModelOptions& o)
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

  TntRunner<float>& tnt_runner(int64_t S, int64_t N) {
    return cached_runner(tnt, S, N, [&] { return make_tnt_runner(S, N); });
  }
  // Whether layer l keeps its own activations and operator state (--recompute none, every layer but the last).
  bool keeps_layer(int64_t l) const { return layers_kept && l < L - 1; }
  // The memory operator runner of layer l: its own (keeps_layer) or the shared one of the batch shape; LaCT: the
  // runner of the layers' records (keeps_layer, record l) or the shared one (record 0).
  TntRunner<float>& tnt_runner_of(int64_t l, int64_t S, int64_t N) {
    return keeps_layer(l) ? *layer_tnt[size_t(l)] : tnt_runner(S, N);
  }
  LactRunner<float>& lact_runner_of(int64_t l, int64_t S, int64_t N) {
    return keeps_layer(l) ? *layer_lact : lact_runner(S, N);
  }
  int64_t lact_record_of(int64_t l) const { return keeps_layer(l) ? l : 0; }
  std::unique_ptr<TntRunner<float>> make_tnt_runner(int64_t S, int64_t N) {
    const titans::TntShape s = backend::gpu_tnt_shape(cfg, S, N);
    return std::make_unique<TntRunner<float>>(s, /*with_grad=*/true, titans_options());
  }
  // The Titans / TNT runners' options: with bf16 products the persistent kernels' chunk products run on tensor
  // cores too (bf16 operands, fp32 accumulation and state).
  TitansOptions titans_options() const {
    TitansOptions to;
    to.poison_workspace = opt.poison;
    to.bf16_products = opt.math == MathMode::BF16;
    to.tf32_products = opt.math == MathMode::TF32;
    return to;
  }

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
  // A gradient that is the operand of two products (dx, dxm, dqkv): with bf16 activations its bf16 copy in
  // grad.gop16, which the kernel that finishes the gradient writes beside it (the bits Blas would round it to in each
  // product), else the fp32 gradient.
  Operand gradient_operand(const float* g) const {
    return act16 ? Operand(static_cast<const bf16*>(grad.gop16)) : Operand(g);
  }

  // The weight [D] of the memory output's per-head RMSNorm: the layer's own, or with ttt_norm_shared (one [d]
  // weight for every head, as the public LaCT model has) that weight tiled over the heads; the backward sums its
  // gradient back over the heads (layer_backward).
  const float* memory_norm_weight(const LayerTensors& lw) {
    if (!cfg.ttt_norm_shared) return lw.o_norm;
    o_norm_tiled.ensure(D, /*poison=*/false);
    mk::tile_row(lw.o_norm, o_norm_tiled.p(), H, d);
    return o_norm_tiled.p();
  }

  // The width of the memory q/k's RoPE heads (per memory head, or with ttt_rope_attn_heads per attention head);
  // 0 without ttt_rope.
  int64_t memory_rope_width() const { return cfg.ttt_rope ? D / cfg.mem_rope_heads() : 0; }

  void* norm_work_for(int64_t rows, int64_t cols) {
    const size_t want = rms_norm_backward_workspace(rows, cols);
    if (want > norm_work_bytes) {
      norm_work = DeviceBuffer(want);
      norm_work_bytes = want;
    }
    return norm_work.as<void>();
  }

  // The shared runner of the batch shape. A training batch's keeps the chunks' products for the backward
  // (gpu_lact_keeps_products); one made for a forward-only batch of that shape is then made anew (once), and a
  // keeping one serves forward-only batches as it is (the same bits either way).
  LactRunner<float>& lact_runner(int64_t S, int64_t N) {
    const bool keep = backend::gpu_lact_keeps_products(batch_backward);
    const auto it = lact.find(std::make_pair(S, N));
    if (it != lact.end() && keep && !it->second->keeps_products()) lact.erase(it);
    return cached_runner(lact, S, N, [&] { return make_lact_runner(S, N, 1, keep); });
  }
  std::unique_ptr<LactRunner<float>> make_lact_runner(int64_t S, int64_t N, int64_t records = 1,
                                                      bool keep_products = false) {
    const lact::Shape s = backend::gpu_lact_shape(cfg, S, N);
    LactOptions lo;
    lo.bf16 = backend::lact_on_bf16_operands(cfg, opt.math == MathMode::BF16);
    lo.tf32 = opt.math == MathMode::TF32 || (opt.math == MathMode::BF16 && !lo.bf16);  // bf16 with Muon: tf32
    lo.poison_workspace = opt.poison;
    lo.keep_products = keep_products;
    return std::make_unique<LactRunner<float>>(s, /*with_grad=*/true, lo, records);
  }

  // Grows the work buffers (model_buffers.h) and the kept residual stream to a batch of S sequences of N tokens.
  void ensure_rows(int64_t rows, int64_t S, int64_t N) {
    ModelDims s;
    backend::GpuSpan span;
    if (split) span = {cp_ranks, cp_rank, halo, halo_in, pass_state && cfg.use_global};
    static_cast<backend::GpuLayerDims&>(s) =
        backend::gpu_batch_dims(cfg, S, N, opt.math == MathMode::BF16, act16, span);
    dims = s;
    static_cast<backend::GpuLayerDims&>(own_dims) =
        backend::gpu_own_layer_dims(cfg, S, N, opt.math == MathMode::BF16, act16);
    work = act = s.grow(act_arrays, opt.poison);
    grad = s.grow(grad_arrays, opt.poison);
    if (rows > cap_rows) {
      if (act16) {
        xs16.resize(size_t(L + 1));
        for (auto& x : xs16) x.ensure(rows * D, opt.poison);
      } else {
        xs.resize(size_t(L + 1));
        for (auto& x : xs) x.ensure(rows * D, opt.poison);
      }
      cap_rows = rows;
    }
    head = s.grow(head_arrays, opt.poison);
    cpb = s.grow(cp_arrays, opt.poison);
    if (split) {
      halo_kept.resize(size_t(L));
      for (auto& k : halo_kept) k.ensure(2 * S * halo * D, opt.poison);
    }
    if (split && s.state > 0) {
      state_kept.resize(size_t(L));
      for (auto& k : state_kept) k.ensure(s.state, opt.poison);
    }
  }

  // Sizes the per-layer attention outputs for a training batch of `rows` attention rows (--recompute
  // save-attention).
  void ensure_kept_attention(int64_t rows) {
    attn_kept.resize(size_t(L));
    lse_kept.resize(size_t(L));
    for (int64_t l = 0; l < L; ++l) {
      attn_kept[size_t(l)].ensure(rows * D, opt.poison);
      lse_kept[size_t(l)].ensure(rows * Ha, opt.poison);
    }
  }
  // Sizes every layer's own kept activations and runners but the last's for a training batch (--recompute none).
  void ensure_kept_layers(int64_t S, int64_t N) {
    kept_layers.resize(size_t(L - 1));
    LayerActivations unused;
    for (LayerKeptArrays& kept : kept_layers) own_dims.grow(kept, opt.poison, unused);
    const auto shape = std::make_pair(S, N);
    if (layer_runner_shape != shape) {  // another training batch shape: the old runners go first
      layer_lact.reset();
      layer_tnt.clear();
      layer_runner_shape = shape;
    }
    if (L < 2) return;
    if (!titans_like && !layer_lact) layer_lact = make_lact_runner(S, N, /*records=*/L - 1);
    if (!titans_like) return;
    for (int64_t l = int64_t(layer_tnt.size()); l + 1 < L; ++l) layer_tnt.push_back(make_tnt_runner(S, N));
  }
  // Points `act` at layer l's activations: the work buffers, with the fields the layer keeps of its own (its
  // attention output with save-attention, everything its backward reads with none) at its own arrays.
  void select_layer(int64_t l) {
    act = work;
    if (attention_kept) {
      act.attn = attn_kept[size_t(l)].p();
      act.lse = lse_kept[size_t(l)].p();
    }
    if (keeps_layer(l)) own_dims.grow(kept_layers[size_t(l)], opt.poison, act);  // sized already: sets the pointers
  }

  // The residual stream at layer l's input (l = L: the final norm's input) as fp32: the kept array, or (bf16
  // activations) its bf16 copy widened into `xin`.
  const float* layer_input(int64_t l, int64_t rows) {
    if (!act16) return xs[size_t(l)].p();
    mk::from_bf16(xs16[size_t(l)].p(), act.xin, rows * D);
    return act.xin;
  }
  // Where layer l writes its output (the embedding: l = -1), and keeping it: with bf16 activations the output is
  // rounded into xs16[l + 1] and `xout` keeps the rounded values, so what follows sees exactly what the backward's
  // recomputation will read.
  float* layer_output(int64_t l) { return act16 ? act.xout : xs[size_t(l + 1)].p(); }
  void keep_output(int64_t l, int64_t rows) {
    if (act16) mk::round_store_bf16(act.xout, xs16[size_t(l + 1)].p(), rows * D);
  }

  // The attention backward on fp32 operands: fp32 kernels, or the bf16 tensor-core ones converting as they load.
  using AttentionBackward = void (*)(const AttentionShape&, const float*, int64_t, const float*, int64_t, const float*,
                                     int64_t, const float*, int64_t, const float*, const float*, int64_t, float*,
                                     int64_t, float*, int64_t, float*, int64_t, void*, void*);
  static constexpr AttentionBackward fp32_backward = &swa_backward;
  static constexpr AttentionBackward fp32_input_bf16_backward = &swa_backward_bf16;
  // The bf16 attention reads bf16 operands (16-byte rows: hd % 8 == 0); other head widths use its fp32-input form.
  // Context parallel batches use the fp32-input form (the same bits), whose operands the halo rows extend.
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

  // ---- context parallelism: the attention's halo ------------------------------------------------------------

  // Host-planned block copies (backend/context_parallel_plan.h) on the device.
  static void run_copies(const std::vector<backend::BlockCopy>& copies, const float* src, float* dst,
                         bool accumulate = false) {
    for (const backend::BlockCopy& c : copies)
      mk::copy2d(src + c.src, c.lds, dst + c.dst, c.ldd, c.rows, c.cols, accumulate);
  }
  static std::vector<backend::BlockCopy> rows_to(const backend::RowBlock& from, const backend::RowBlock& to) {
    return backend::copy_rows(from, to);
  }

  // RoPE of the attention's q and k from qkv into qa, ka. With a halo (context parallel, halo_in > 0) each sequence
  // takes X = halo_in + N rows there (hp's extended layout): halo_in placeholder queries (zeros; their outputs are
  // never read) and the previous rank's keys in front of this rank's rows, so the unchanged attention kernel sees
  // every key a query's window reaches (attention_values does the same for v). A layer's first forward exchanges the
  // halo; the backward's recomputation reuses what it received (halo_kept).
  void attention_rope(int64_t l, const float* q, const float* k, const float* v, const int64_t* pos, int64_t S,
                      int64_t N, bool recompute) {
    const int64_t rows = S * N;
    if (halo_in == 0) {
      rope_forward(q, 3 * D, act.qa, D, pos, rows, Ha, hd, cfg.rope_theta);
      rope_forward(k, 3 * D, act.ka, D, pos, rows, Ha, hd, cfg.rope_theta);
    } else {
      const int64_t h = halo_in, X = hp.X();
      for (int64_t s = 0; s < S; ++s) {
        rope_forward(q + s * N * 3 * D, 3 * D, act.qa + (s * X + h) * D, D, pos + s * N, N, Ha, hd, cfg.rope_theta);
        rope_forward(k + s * N * 3 * D, 3 * D, act.ka + (s * X + h) * D, D, pos + s * N, N, Ha, hd, cfg.rope_theta);
      }
      TTT_CUDA_CHECK(cudaMemset2DAsync(act.qa, sizeof(float) * size_t(X * D), 0, sizeof(float) * size_t(h * D),
                                       size_t(S), nullptr));
    }
    if (split && !recompute) exchange_halo(l, v);
    if (halo_in > 0) run_copies(rows_to(hp.buffer(halo_in), hp.extended_halo()), halo_kept[size_t(l)].p(), act.ka);
  }
  // The attention's v: qkv's (leading dimension 3 D), or with a halo the received values then this rank's in xv.
  std::pair<const float*, int64_t> attention_values(int64_t l, const float* v) {
    if (halo_in == 0) return {v, 3 * D};
    const float* kept = halo_kept[size_t(l)].p();
    run_copies(rows_to(hp.buffer(halo_in, hp.S * halo_in * D), hp.extended_halo()), kept, cpb.xv);
    run_copies(rows_to(hp.plain(3 * D), hp.extended()), v, cpb.xv);
    return {cpb.xv, D};
  }
  // Sends the last `halo` keys (after RoPE: at their global positions) and values of every sequence to the next
  // CP rank and receives the previous rank's into halo_kept[l].
  void exchange_halo(int64_t l, const float* v) {
    const int64_t h = halo, n = hp.buffer_floats();
    if (h == 0) return;
    run_copies(rows_to(hp.extended_tail(), hp.buffer(h)), act.ka, cpb.halo_send);
    run_copies(rows_to(hp.plain_tail(3 * D), hp.buffer(h, hp.S * h * D)), v, cpb.halo_send);
    std::vector<NcclGroup::Transfer> sends, receives;
    if (cp_rank + 1 < cp_ranks) sends.push_back({cp_rank + 1, cpb.halo_send, n});
    if (cp_rank > 0) receives.push_back({cp_rank - 1, halo_kept[size_t(l)].p(), n});
    cp_group->exchange(sends, receives, "halo exchange of the attention's keys and values");
  }
  // The backward's half: the halo rows' dk, dv (in dz, dzx: layer_backward) go back to the previous rank; the next
  // rank's are added to this rank's tail rows of dk (after RoPE, before its adjoint) and dv.
  void return_halo_gradient(float* dqkv) {
    const int64_t h = halo, n = hp.buffer_floats();
    if (h == 0) return;
    if (halo_in > 0) {
      run_copies(rows_to(hp.extended_halo(), hp.buffer(h)), grad.dz, cpb.halo_send);
      run_copies(rows_to(hp.extended_halo(), hp.buffer(h, hp.S * h * D)), grad.dzx, cpb.halo_send);
    }
    const bool from_next = cp_rank + 1 < cp_ranks;
    std::vector<NcclGroup::Transfer> sends, receives;
    if (cp_rank > 0) sends.push_back({cp_rank - 1, cpb.halo_send, n});
    if (from_next) receives.push_back({cp_rank + 1, cpb.halo_recv, n});
    cp_group->exchange(sends, receives, "return of the halo's key and value gradients");
    if (!from_next) return;
    run_copies(rows_to(hp.buffer(h), hp.plain_tail(D)), cpb.halo_recv, grad.dka, /*accumulate=*/true);
    run_copies(rows_to(hp.buffer(h, hp.S * h * D), hp.plain_tail(3 * D)), cpb.halo_recv, dqkv + 2 * D,
               /*accumulate=*/true);
  }

  // ---- context parallelism: the global memory over the prefix -------------------------------------------------

  // The runners of a split batch of S spans of N tokens: the global memory over P = cp_rank + 1 spans, the local
  // memories (if any) over this span.
  SplitRunners& split_runners(int64_t S, int64_t N) {
    return cached_runner(split_cache, S, N, [&] { return make_split_runners(S, N); });
  }
  std::unique_ptr<SplitRunners> make_split_runners(int64_t S, int64_t N) {
    const TitansOptions to = titans_options();
    const backend::GpuSplitShapes shapes = backend::gpu_split_shapes(cfg, S, N, cp_rank, cp_ranks, pass_state);
    auto r = std::make_unique<SplitRunners>();
    TitansOptions global_options = to;
    if (pass_state) global_options.kernel = titans::KernelChoice::Batched;  // the persistent kernels take no state
    r->global = std::make_unique<TitansRunner<float>>(shapes.global, /*with_grad=*/true, global_options);
    if (shapes.has_local) r->local = std::make_unique<TntRunner<float>>(shapes.local, /*with_grad=*/true, to);
    return r;
  }
  // The six parts [q | k | v | theta | eta | alpha] of the global memory's quantities at `base`, a packed span
  // (spans = 1) or the prefix (spans = P): backend::global_part_offsets.
  std::array<float*, 6> global_parts(float* base, int64_t spans, int64_t S, int64_t N) const {
    const std::array<int64_t, 6> at = backend::global_part_offsets(S * H, N, d, spans);
    std::array<float*, 6> parts{};
    for (size_t i = 0; i < 6; ++i) parts[i] = base + at[i];
    return parts;
  }
  // The branch's forward with the global memory's chain over the whole sequence: every rank's span of its inputs
  // all-gathered, the chain run from the sequence's start through this span, its rows of the output kept and added
  // to the local memories' output.
  void global_split_forward(const titans::TntInputs<float>& in, int64_t S, int64_t N) {
    const int64_t B = S * H, BHN = B * N, RD = BHN * d, U = backend::global_floats(B, N, d, 1), P = cp_rank + 1;
    SplitRunners& run = split_runners(S, N);
    const std::array<const float*, 6> own = {in.q, in.k, in.v, in.mems[0].theta, in.mems[0].eta, in.mems[0].alpha};
    const std::array<float*, 6> packed = global_parts(cpb.gsend, 1, S, N);
    for (size_t i = 0; i < 6; ++i)
      TTT_CUDA_CHECK(cudaMemcpyAsync(packed[i], own[i], sizeof(float) * size_t(i < 3 ? RD : BHN),
                                     cudaMemcpyDeviceToDevice, nullptr));
    cp_group->all_gather_from(cpb.gsend, cpb.gstage, U, "all-gather of the global memory's inputs");
    // The prefix's inputs overwrite gsend (sent already), in place for the backward.
    for (int64_t j = 0; j < P; ++j) run_copies(backend::global_span_copies(B, N, d, P, j, true), cpb.gstage + j * U, cpb.gsend);
    const std::array<float*, 6> p = global_parts(cpb.gsend, P, S, N);
    titans::MemoryInputs<float> g{p[0], p[1], p[2], in.mems[0].w1, in.mems[0].w2, p[3], p[4], p[5]};
    run.global->forward(g, cpb.po);
    if (run.local) {
      titans::TntInputs<float> local{in.q, in.k, in.v, {in.mems.begin() + 1, in.mems.end()}};
      run.local->forward(local, act.oT);
    } else {
      TTT_CUDA_CHECK(cudaMemsetAsync(act.oT, 0, sizeof(float) * size_t(RD), nullptr));
    }
    // This rank's rows of the prefix's output: span P - 1 of the prefix [B, P N, d].
    run_copies(rows_to({B, P * N, (P - 1) * N, N, d, d, 0}, {B, N, 0, N, d, d, 0}), cpb.po, act.oT, /*accumulate=*/true);
  }
  // Its adjoint: d(output) over the prefix is zero but this rank's rows; the gradient of every span's inputs goes
  // to the span's owner, which sums what it receives in CP rank order (its own first: the ranks before it send
  // nothing) and adds it to the local memories' q, k, v gradients.
  void global_split_backward(const titans::TntGrads<float>& og, int64_t S, int64_t N) {
    const int64_t B = S * H, BHN = B * N, RD = BHN * d, U = backend::global_floats(B, N, d, 1), P = cp_rank + 1;
    SplitRunners& run = split_runners(S, N);
    TTT_CUDA_CHECK(cudaMemsetAsync(cpb.po, 0, sizeof(float) * size_t(P * RD), nullptr));
    run_copies(rows_to({B, N, 0, N, d, d, 0}, {B, P * N, (P - 1) * N, N, d, d, 0}), grad.doT, cpb.po);
    // The prefix's input gradients in gstage (free since the forward unpacked it); its inputs stay in gsend until
    // the runner's backward is done, then gsend takes each span's gradient, packed.
    const std::array<float*, 6> p = global_parts(cpb.gstage, P, S, N);
    titans::MemoryGrads<float> g{p[0], p[1], p[2], og.mems[0].w1, og.mems[0].w2, p[3], p[4], p[5]};
    run.global->backward(cpb.po, g);
    if (run.local) {
      titans::TntGrads<float> local{og.q, og.k, og.v, {og.mems.begin() + 1, og.mems.end()}};
      run.local->backward(grad.doT, local);
    } else {
      for (float* x : {og.q, og.k, og.v}) TTT_CUDA_CHECK(cudaMemsetAsync(x, 0, sizeof(float) * size_t(RD), nullptr));
    }
    for (int64_t j = 0; j < P; ++j) run_copies(backend::global_span_copies(B, N, d, P, j, false), cpb.gstage, cpb.gsend + j * U);
    std::vector<NcclGroup::Transfer> sends, receives;
    for (int j = 0; j < cp_rank; ++j) sends.push_back({j, cpb.gsend + j * U, U});
    for (int i = cp_rank + 1; i < cp_ranks; ++i) receives.push_back({i, cpb.gstage + i * U, U});
    cp_group->exchange(sends, receives, "return of the global memory's input gradients");
    float* mine = cpb.gsend + cp_rank * U;
    for (int i = cp_rank + 1; i < cp_ranks; ++i) mk::axpy(mine, cpb.gstage + i * U, 1.0f, U);
    const std::array<float*, 6> sum = global_parts(mine, 1, S, N);
    mk::axpy(og.q, sum[0], 1.0f, RD);
    mk::axpy(og.k, sum[1], 1.0f, RD);
    mk::axpy(og.v, sum[2], 1.0f, RD);
    const std::array<float*, 3> gates = {og.mems[0].theta, og.mems[0].eta, og.mems[0].alpha};
    for (size_t i = 0; i < 3; ++i)
      TTT_CUDA_CHECK(cudaMemcpyAsync(gates[i], sum[3 + i], sizeof(float) * size_t(BHN), cudaMemcpyDeviceToDevice, nullptr));
  }

  // ---- context parallelism: the global memory's state passed from rank to rank (--cp-global state) ---------------

  // The branch's forward with the global memory's chain over this span from the state rank cp_rank - 1 hands over
  // (rank 0: the learned W0 and zero momentum); its exit state goes to rank cp_rank + 1 at once. The chain orders
  // the ranks, so a rank that waits for a state runs its local memories first and one that sends runs its global
  // memory first. The recomputation starts from the kept entry state (state_kept[l]) and exchanges nothing.
  void global_state_forward(int64_t l, const titans::TntInputs<float>& in, int64_t S, int64_t N, bool recompute) {
    const int64_t RD = S * H * N * d, state = dims.state;
    const bool momentum = branch.memories[0].config.momentum;
    const int64_t weights = momentum ? state / 2 : state;  // [W1 | W2] per sequence-head, then the momentum
    SplitRunners& run = split_runners(S, N);
    const bool receives = cp_rank > 0, sends = cp_rank + 1 < cp_ranks;
    float* entry = receives ? state_kept[size_t(l)].p() : nullptr;
    cp_group->wait_sends();  // state_send may still be on its way (the previous layer's)
    bool locals_done = false;
    auto run_locals = [&] {
      if (run.local) {
        titans::TntInputs<float> local{in.q, in.k, in.v, {in.mems.begin() + 1, in.mems.end()}};
        run.local->forward(local, act.oT);
      } else {
        TTT_CUDA_CHECK(cudaMemsetAsync(act.oT, 0, sizeof(float) * size_t(RD), nullptr));
      }
      locals_done = true;
    };
    if (receives && !recompute) {
      run_locals();
      cp_group->exchange({}, {{cp_rank - 1, entry, state}}, "receive of the global memory's state from the previous rank");
    }
    titans::MemoryInputs<float> g{in.q, in.k, in.v, in.mems[0].w1, in.mems[0].w2, in.mems[0].theta, in.mems[0].eta,
                                  in.mems[0].alpha};
    if (receives) g.entry_W = entry, g.entry_S = momentum ? entry + weights : nullptr;
    if (sends) g.exit_W = cpb.state_send, g.exit_S = momentum ? cpb.state_send + weights : nullptr;
    run.global->forward(g, cpb.po);
    // Sent without holding this rank up: the next rank wants it after its own local memories.
    if (sends && !recompute) cp_group->send_async({cp_rank + 1, cpb.state_send, state}, "pass of the global memory's state to the next rank");
    if (!locals_done) run_locals();
    mk::axpy(act.oT, cpb.po, 1.0f, RD);
  }
  // Its adjoint, mirrored: the exit state's adjoint comes from rank cp_rank + 1 (zero on the last rank), the entry
  // state's goes to rank cp_rank - 1; on rank 0 it is the gradient of W0 (the runner's w1 / w2 gradient), which the
  // other ranks do not add to (their initial state is the received one). The input gradients go to the locals'.
  void global_state_backward(const titans::TntGrads<float>& og, int64_t S, int64_t N) {
    const int64_t B = S * H, BHN = B * N, RD = BHN * d, state = dims.state;
    const bool momentum = branch.memories[0].config.momentum;
    const int64_t weights = momentum ? state / 2 : state;
    SplitRunners& run = split_runners(S, N);
    const bool receives = cp_rank + 1 < cp_ranks, sends = cp_rank > 0;
    cp_group->wait_sends();
    bool locals_done = false;
    auto run_locals = [&] {
      if (run.local) {
        titans::TntGrads<float> local{og.q, og.k, og.v, {og.mems.begin() + 1, og.mems.end()}};
        run.local->backward(grad.doT, local);
      } else {
        for (float* x : {og.q, og.k, og.v}) TTT_CUDA_CHECK(cudaMemsetAsync(x, 0, sizeof(float) * size_t(RD), nullptr));
      }
      locals_done = true;
    };
    if (receives) {
      run_locals();
      cp_group->exchange({}, {{cp_rank + 1, cpb.state_recv, state}},
                         "receive of the global memory's state adjoint from the next rank");
    }
    const std::array<float*, 6> p = global_parts(cpb.gsend, 1, S, N);  // q, k, v gradients of the span
    titans::MemoryGrads<float> g{p[0], p[1], p[2], og.mems[0].w1, og.mems[0].w2, og.mems[0].theta, og.mems[0].eta,
                                 og.mems[0].alpha};
    if (receives) g.exit_dW = cpb.state_recv, g.exit_dS = momentum ? cpb.state_recv + weights : nullptr;
    if (sends) g.entry_dW = cpb.state_send, g.entry_dS = momentum ? cpb.state_send + weights : nullptr;
    run.global->backward(grad.doT, g);
    if (sends) {
      cp_group->send_async({cp_rank - 1, cpb.state_send, state},
                           "return of the global memory's state adjoint to the previous rank");
      // W0 entered this rank's chain only through the previous ranks: its gradient is theirs.
      const int64_t W = B * dh * d;
      TTT_CUDA_CHECK(cudaMemsetAsync(og.mems[0].w1, 0, sizeof(float) * size_t(W), nullptr));
      TTT_CUDA_CHECK(cudaMemsetAsync(og.mems[0].w2, 0, sizeof(float) * size_t(W), nullptr));
    }
    if (!locals_done) run_locals();
    mk::axpy(og.q, p[0], 1.0f, RD);
    mk::axpy(og.k, p[1], 1.0f, RD);
    mk::axpy(og.v, p[2], 1.0f, RD);
  }

  // ---- one layer ---------------------------------------------------------------------------------------

  // Forward of layer l from x (rows x D) into out; every activation the backward needs stays in the buffers.
  // `recompute`: the backward's second forward of the layer, which skips the attention when its output was kept.
  // x may be out itself: only the first RMSNorm reads x, before anything writes out.
  void layer_forward(int64_t l, const float* x, float* out, int64_t S, int64_t N, bool recompute) {
    const int64_t rows = S * N;
    select_layer(l);
    const LayerTensors& lw = P.layers[size_t(l)];
    const int64_t* pos = pos_dev.as<int64_t>();
    // h = RMSNorm(x), and xmid = x (the residual the Wo product accumulates into below); qkv = h Wqkv
    if (act16) rms_norm_forward_copy(x, lw.attn_norm, act.h_bf16, act.rinv1, act.xmid, rows, D, cfg.norm_eps);
    else rms_norm_forward_copy(x, lw.attn_norm, act.h, act.rinv1, act.xmid, rows, D, cfg.norm_eps);
    gemm(false, false, rows, 3 * D, D, 1.0f, operand(act.h, act.h_bf16), D, lw.wqkv, 3 * D, 0.0f, act.qkv, 3 * D);
    const float* q = act.qkv;
    const float* k = act.qkv + D;
    const float* v = act.qkv + 2 * D;
    // Attention branch: RoPE from the strided q, k of qkv into qa, ka; flash sliding-window attention (context
    // parallel: over the previous rank's halo rows and this rank's, attention_inputs).
    const AttentionShape ashape{S, halo_in + N, Ha, hd, cfg.window};
    if (attention_bf16()) {
      // The tensor-core attention on bf16 operands written by RoPE (and one conversion of v): the bits its
      // fp32-input form would round to, without the conversion work inside the attention kernels.
      const AttentionBf16 a = attention_operands(rows);
      rope_forward(q, 3 * D, a.q, D, pos, rows, Ha, hd, cfg.rope_theta);
      rope_forward(k, 3 * D, a.k, D, pos, rows, Ha, hd, cfg.rope_theta);
      mk::to_bf16(v, 3 * D, a.v, D, rows, D);
      if (!(recompute && attention_kept))
        timed("attention", [&] { swa_forward_bf16(ashape, a.q, D, a.k, D, a.v, D, act.attn, D, act.lse, nullptr); });
    } else {
      attention_rope(l, q, k, v, pos, S, N, recompute);
      const auto [av, ldv] = attention_values(l, v);
      if (!(recompute && attention_kept))
        timed("attention", [&] {
          if (opt.math == MathMode::BF16) swa_forward_bf16(ashape, act.qa, D, act.ka, D, av, ldv, act.attn, D, act.lse);
          else swa_forward(ashape, act.qa, D, act.ka, D, av, ldv, act.attn, D, act.lse);
        });
    }
    // Memory branch inputs (prepare_memory_inputs): q and k prepared, RoPE'd and laid out per sequence-head in one
    // pass each.
    mk::qk_prep_forward_fused(q, 3 * D, lw.q_scale, lw.q_offset, pos, cfg.rope_theta, memory_rope_width(), act.qT,
                              act.qnorm, S, N, H, d, 1e-5);
    mk::qk_prep_forward_fused(k, 3 * D, lw.k_scale, lw.k_offset, pos, cfg.rope_theta, memory_rope_width(), act.kT,
                              act.knorm, S, N, H, d, 1e-5);
    const float* vm = v;
    int64_t ldvm = 3 * D;
    if (cfg.v_silu) {
      mk::silu_strided_forward(v, 3 * D, act.vm, rows, D);
      vm = act.vm;
      ldvm = D;
    }
    // Per sequence-head layout of the memory operators.
    mk::heads_to_batch(vm, ldvm, act.vT, S, N, H, d);
    if (titans_like) titans_forward(l, S, N, recompute);
    else lact_forward(l, S, N);
    // finish_memory_output: per-head RMSNorm, times silu(h W_s + b_s) per head.
    rms_norm_heads_forward_batch(act.oT, memory_norm_weight(lw), act.normed, act.rinvo, S, N, D, H,
                                 cfg.mem_norm_eps());
    gemm(false, false, rows, H, D, 1.0f, operand(act.h, act.h_bf16), D, lw.scale_weight, H, 0.0f, act.zs, H);
    mk::bias_act_forward(act.zs, lw.scale_bias, act.gate, rows, H, 0.0, math::Activation::Silu);
    // x + (attn + mem) Wo: the sum in fp32, or with bf16 activations only its bf16 copy, in one pass; with a halo
    // (this rank's rows of the attention output) in fp32 first (sum_work), then rounded.
    float* sum = act16 ? act.sum_work : act.sum;
    if (halo_in == 0) {
      if (act16) mk::gate_heads_add_forward(act.normed, act.gate, act.attn, act.sum_bf16, rows, H, d);
      else mk::gate_heads_add_forward(act.normed, act.gate, act.attn, sum, rows, H, d);
    } else {
      mk::gate_heads_forward(act.normed, act.gate, sum, rows, H, d);
      run_copies(rows_to(hp.extended(), hp.plain(D)), act.attn, sum, /*accumulate=*/true);
      if (act16) mk::to_bf16(sum, D, act.sum_bf16, D, rows, D);
    }
    gemm(false, false, rows, D, D, 1.0f, operand(sum, act.sum_bf16), D, lw.wo, D, 1.0f, act.xmid, D);
    // MLP: h2 = RMSNorm(xmid), and out = xmid (the residual the W_down product accumulates into)
    if (act16) rms_norm_forward_copy(act.xmid, lw.mlp_norm, act.h2_bf16, act.rinv2, out, rows, D, cfg.norm_eps);
    else rms_norm_forward_copy(act.xmid, lw.mlp_norm, act.h2, act.rinv2, out, rows, D, cfg.norm_eps);
    gemm(false, false, rows, F, D, 1.0f, operand(act.h2, act.h2_bf16), D, lw.w_gate, F, 0.0f, act.ga, F);
    gemm(false, false, rows, F, D, 1.0f, operand(act.h2, act.h2_bf16), D, lw.w_up, F, 0.0f, act.up, F);
    if (act16) mk::swiglu_forward(act.ga, act.up, act.mm_bf16, rows * F);
    else mk::swiglu_forward(act.ga, act.up, act.mm, rows * F);
    gemm(false, false, rows, D, F, 1.0f, operand(act.mm, act.mm_bf16), F, lw.w_down, D, 1.0f, out, D);
  }

  // ttt.w0 / ttt.w2 of a layer: the parameter itself, or (low rank) A B + 0.5 I per head into buffer `tmp`.
  const float* resolve_weight(const MemoryWeight& w, float* tmp) {
    if (!cfg.low_rank_init) return w.full;
    const int64_t r = cfg.low_rank_rank;
    gemm_batched(false, false, dh, d, r, 1.0f, w.a, r, dh * r, w.b, d, r * d, 0.0f, tmp, d, dh * d, H);
    mk::add_diagonal(tmp, H, dh, d, 0.5f);
    return tmp;
  }
  // Gradient of ttt.w0 / ttt.w2 (w: the parameter, gw: its gradient) from dW [S][H, dh, d] (the broadcast copies):
  // summed over sequences in order.
  void weight_grad(const MemoryWeight& w, const MemoryWeight& gw, const float* gb, int64_t S) {
    const int64_t per = H * dh * d;
    float* g = cfg.low_rank_init ? grad.gwf : gw.full;
    if (cfg.low_rank_init) TTT_CUDA_CHECK(cudaMemsetAsync(g, 0, sizeof(float) * per, nullptr));
    for (int64_t s = 0; s < S; ++s) mk::axpy(g, gb + s * per, 1.0f, per);
    if (!cfg.low_rank_init) return;
    const int64_t r = cfg.low_rank_rank;
    // W = A B: dA += dW B^T, dB += A^T dW (per head).
    gemm_batched(false, true, dh, r, d, 1.0f, g, d, dh * d, w.b, d, r * d, 1.0f, gw.a, r, dh * r, H);
    gemm_batched(true, false, r, d, dh, 1.0f, w.a, r, dh * r, g, d, dh * d, 1.0f, gw.b, d, r * d, H);
  }

  // LaCT (arch "lact"): rates softplus(h W_lr + b + softplus^-1(lr_init)) per matrix, momentum gate, the
  // initial fast weights broadcast to every sequence, the operator (memory_branch.cpp, record_memory_branch).
  void lact_forward(int64_t l, int64_t S, int64_t N) {
    const int64_t rows = S * N;
    const LayerTensors& lw = P.layers[size_t(l)];
    gemm(false, false, rows, 3 * H, D, 1.0f, operand(act.h, act.h_bf16), D, lw.lr_weight, 3 * H, 0.0f, act.zlr, 3 * H);
    mk::gate_forward(act.zlr, lw.lr_bias, act.rates, rows, 3 * H, branch.rate);
    if (cfg.momentum) {
      gemm(false, false, rows, H, D, 1.0f, operand(act.h, act.h_bf16), D, lw.momentum_weight, H, 0.0f, act.zm, H);
      mk::gate_forward(act.zm, lw.momentum_bias, act.mom, rows, H, branch.gate);
    }
    for (int r = 0; r < 3; ++r) mk::cols_to_batch(act.rates, 3 * H, r * H, act.lrT + r * S * H * N, S, N, H);
    if (cfg.momentum) mk::cols_to_batch(act.mom, H, 0, act.momT, S, N, H);
    // Initial fast weights, broadcast to every sequence (memory_weights; low rank: A B + 0.5 I).
    const std::vector<MemoryWeight>& fw = lw.memories[0];  // w0, w1, w2
    const float* w0 = resolve_weight(fw[0], act.w0f);
    const float* w2 = resolve_weight(fw[2], act.w2f);
    const int64_t per = H * dh * d;
    for (int64_t s = 0; s < S; ++s) {
      TTT_CUDA_CHECK(cudaMemcpyAsync(act.w0b + s * per, w0, sizeof(float) * per, cudaMemcpyDeviceToDevice, nullptr));
      TTT_CUDA_CHECK(cudaMemcpyAsync(act.w1b + s * per, fw[1].full, sizeof(float) * per, cudaMemcpyDeviceToDevice,
                                     nullptr));
      TTT_CUDA_CHECK(cudaMemcpyAsync(act.w2b + s * per, w2, sizeof(float) * per, cudaMemcpyDeviceToDevice, nullptr));
    }
    lact::Inputs<float> in;
    in.w0 = act.w0b, in.w1 = act.w1b, in.w2 = act.w2b;
    in.q = act.qT, in.k = act.kT, in.v = act.vT;
    in.lr0 = act.lrT, in.lr1 = act.lrT + S * H * N, in.lr2 = act.lrT + 2 * S * H * N;
    in.mom = cfg.momentum ? act.momT : nullptr;
    timed("lact", [&] { lact_runner_of(l, S, N).forward(in, act.oT, lact_record_of(l)); });
  }
  void lact_backward(int64_t l, int64_t S, int64_t N) {
    const int64_t rows = S * N;
    const LayerTensors& lw = P.layers[size_t(l)];
    const LayerTensors& lg = G.layers[size_t(l)];
    lact::Grads<float> og;
    og.w0 = grad.gw0b, og.w1 = grad.gw1b, og.w2 = grad.gw2b;
    og.q = grad.gqT, og.k = grad.gkT, og.v = grad.gvT;
    og.lr0 = grad.glrT, og.lr1 = grad.glrT + S * H * N, og.lr2 = grad.glrT + 2 * S * H * N;
    og.mom = cfg.momentum ? grad.gmomT : nullptr;
    timed("lact", [&] { lact_runner_of(l, S, N).backward(grad.doT, og, lact_record_of(l)); });
    weight_grad(lw.memories[0][0], lg.memories[0][0], grad.gw0b, S);
    weight_grad(lw.memories[0][2], lg.memories[0][2], grad.gw2b, S);
    {
      const int64_t per = H * dh * d;
      for (int64_t s = 0; s < S; ++s) mk::axpy(lg.memories[0][1].full, grad.gw1b + s * per, 1.0f, per);
    }
    // rates = softplus(h Wlr + b + shift)
    for (int r = 0; r < 3; ++r) mk::batch_to_cols(grad.glrT + r * S * H * N, grad.drates, 3 * H, r * H, S, N, H);
    mk::gate_backward(act.zlr, grad.drates, grad.dzlr, rows * 3 * H, branch.rate);
    gemm(true, false, D, 3 * H, rows, 1.0f, operand(act.h, act.h_bf16), D, grad.dzlr, 3 * H, 1.0f, lg.lr_weight, 3 * H);
    col_sum(grad.dzlr, rows, 3 * H, 3 * H, lg.lr_bias, true);
    gemm(false, true, rows, D, 3 * H, 1.0f, grad.dzlr, 3 * H, lw.lr_weight, 3 * H, 1.0f, grad.dh, D);
    if (cfg.momentum) {
      mk::batch_to_cols(grad.gmomT, grad.dmom, H, 0, S, N, H);
      mk::gate_backward(act.zm, grad.dmom, grad.dzm, rows * H, branch.gate);
      gemm(true, false, D, H, rows, 1.0f, operand(act.h, act.h_bf16), D, grad.dzm, H, 1.0f, lg.momentum_weight, H);
      col_sum(grad.dzm, rows, H, H, lg.momentum_bias, true);
      gemm(false, true, rows, D, H, 1.0f, grad.dzm, H, lw.momentum_weight, H, 1.0f, grad.dh, D);
    }
  }

  // Titans / TNT: M memories (global first), each MLP + MSE with momentum and decay; gates by the branch's rules
  // (theta = titans_base_lr * sigmoid(h W_lr + b), eta = sigmoid(h W_m + b), alpha = sigmoid(h W_d + b)), in the
  // memory spec's columns (m*H + h for memory m, head h); the branch through TntRunner (tnt_cuda.h), which sums
  // the memories.
  void titans_forward(int64_t l, int64_t S, int64_t N, bool recompute) {
    const int64_t rows = S * N, M = int64_t(branch.memories.size()), MH = M * H, BHN = S * H * N;
    const int64_t W = S * H * dh * d;
    const LayerTensors& lw = P.layers[size_t(l)];
    // Per gate (theta, eta, alpha): weight, bias, pre-activation, activation, per sequence-head layout.
    const float* gate_weight[3] = {lw.lr_weight, lw.momentum_weight, lw.decay_weight};
    const float* gate_bias[3] = {lw.lr_bias, lw.momentum_bias, lw.decay_bias};
    float* gate_z[3] = {act.zlr, act.zm, act.zd};
    float* gate_y[3] = {act.rates, act.mom, act.dec};
    float* per_batch[3] = {act.thT, act.etT, act.alT};
    for (int gi = 0; gi < 3; ++gi) {
      gemm(false, false, rows, MH, D, 1.0f, operand(act.h, act.h_bf16), D, gate_weight[gi], MH, 0.0f, gate_z[gi], MH);
      mk::gate_forward(gate_z[gi], gate_bias[gi], gate_y[gi], rows, MH, gi == 0 ? branch.rate : branch.gate);
      for (const model::MemorySpec& mem : branch.memories)
        mk::cols_to_batch(gate_y[gi], MH, gi == 0 ? mem.rate_col0 : mem.gate_col0, per_batch[gi] + mem.index * BHN, S,
                          N, H);
    }
    titans::TntInputs<float> in;
    in.q = act.qT, in.k = act.kT, in.v = act.vT;
    const int64_t per = H * dh * d;
    for (int64_t m = 0; m < M; ++m) {
      const std::vector<MemoryWeight>& mw = lw.memories[size_t(m)];  // w1, w2
      for (int64_t s = 0; s < S; ++s) {
        TTT_CUDA_CHECK(cudaMemcpyAsync(act.tw1b + m * W + s * per, mw[0].full, sizeof(float) * per,
                                       cudaMemcpyDeviceToDevice, nullptr));
        TTT_CUDA_CHECK(cudaMemcpyAsync(act.tw2b + m * W + s * per, mw[1].full, sizeof(float) * per,
                                       cudaMemcpyDeviceToDevice, nullptr));
      }
      in.mems.push_back({act.tw1b + m * W, act.tw2b + m * W, act.thT + m * BHN, act.etT + m * BHN,
                         act.alT + m * BHN});
    }
    timed("tnt", [&] {
      if (global_split() && pass_state) global_state_forward(l, in, S, N, recompute);
      else if (global_split()) global_split_forward(in, S, N);
      else tnt_runner_of(l, S, N).forward(in, act.oT);
    });
  }
  void titans_backward(int64_t l, int64_t S, int64_t N) {
    const int64_t rows = S * N, M = int64_t(branch.memories.size()), MH = M * H, BHN = S * H * N;
    const int64_t W = S * H * dh * d;
    const LayerTensors& lw = P.layers[size_t(l)];
    const LayerTensors& lg = G.layers[size_t(l)];
    titans::TntGrads<float> og;
    og.q = grad.gqT, og.k = grad.gkT, og.v = grad.gvT;
    for (int64_t m = 0; m < M; ++m)
      og.mems.push_back({grad.gtw1b + m * W, grad.gtw2b + m * W, grad.gthT + m * BHN, grad.getT + m * BHN,
                         grad.galT + m * BHN});
    timed("tnt", [&] {
      if (global_split() && pass_state) global_state_backward(og, S, N);
      else if (global_split()) global_split_backward(og, S, N);
      else tnt_runner_of(l, S, N).backward(grad.doT, og);
    });
    const int64_t per = H * dh * d;
    for (int64_t m = 0; m < M; ++m) {
      const std::vector<MemoryWeight>& mg = lg.memories[size_t(m)];  // d w1, d w2
      for (int64_t s = 0; s < S; ++s) {
        mk::axpy(mg[0].full, grad.gtw1b + m * W + s * per, 1.0f, per);
        mk::axpy(mg[1].full, grad.gtw2b + m * W + s * per, 1.0f, per);
      }
    }
    // Per gate (theta, eta, alpha): weight, its gradient, bias gradient, pre-activation, per sequence-head gradient.
    const float* gate_weight[3] = {lw.lr_weight, lw.momentum_weight, lw.decay_weight};
    float* gate_weight_grad[3] = {lg.lr_weight, lg.momentum_weight, lg.decay_weight};
    float* gate_bias_grad[3] = {lg.lr_bias, lg.momentum_bias, lg.decay_bias};
    const float* gate_z[3] = {act.zlr, act.zm, act.zd};
    const float* per_batch[3] = {grad.gthT, grad.getT, grad.galT};
    for (int gi = 0; gi < 3; ++gi) {
      for (const model::MemorySpec& mem : branch.memories)
        mk::batch_to_cols(per_batch[gi] + mem.index * BHN, grad.drates, MH, gi == 0 ? mem.rate_col0 : mem.gate_col0, S,
                          N, H);
      mk::gate_backward(gate_z[gi], grad.drates, grad.dzlr, rows * MH, gi == 0 ? branch.rate : branch.gate);
      gemm(true, false, D, MH, rows, 1.0f, operand(act.h, act.h_bf16), D, grad.dzlr, MH, 1.0f, gate_weight_grad[gi],
           MH);
      col_sum(grad.dzlr, rows, MH, MH, gate_bias_grad[gi], true);
      gemm(false, true, rows, D, MH, 1.0f, grad.dzlr, MH, gate_weight[gi], MH, 1.0f, grad.dh, D);
    }
  }

  // Backward of layer l (after layer_forward(l) on the same input x): dx holds d/d(out) on entry and
  // d/d(x) on return. Parameter gradients are accumulated.
  void layer_backward(int64_t l, const float* x, int64_t S, int64_t N) {
    const int64_t rows = S * N;
    select_layer(l);
    const LayerTensors& lw = P.layers[size_t(l)];
    const LayerTensors& lg = G.layers[size_t(l)];
    const int64_t* pos = pos_dev.as<int64_t>();
    float* dx = grad.dx;
    // ---- MLP: out = xmid + swiglu(h2) Wd. With bf16 activations dx came with its bf16 copy in gop16 (written by
    // the RMSNorm backward that made dx: the head's or the layer above's), the operand of two products.
    const Operand dx_op = gradient_operand(dx);
    gemm(true, false, F, D, rows, 1.0f, operand(act.mm, act.mm_bf16), F, dx_op, D, 1.0f, lg.w_down, D);
    gemm(false, true, rows, F, D, 1.0f, dx_op, D, lw.w_down, D, 0.0f, grad.dmm, F);
    if (act16) mk::swiglu_backward(act.ga, act.up, grad.dmm, grad.dga_bf16, grad.dup_bf16, rows * F);
    else mk::swiglu_backward(act.ga, act.up, grad.dmm, grad.dga, grad.dup, rows * F);
    const Operand dga = operand(grad.dga, grad.dga_bf16), dup = operand(grad.dup, grad.dup_bf16);
    gemm(true, false, D, F, rows, 1.0f, operand(act.h2, act.h2_bf16), D, dga, F, 1.0f, lg.w_gate, F);
    gemm(true, false, D, F, rows, 1.0f, operand(act.h2, act.h2_bf16), D, dup, F, 1.0f, lg.w_up, F);
    gemm(false, true, rows, D, F, 1.0f, dga, F, lw.w_gate, F, 0.0f, grad.dh2, D);
    gemm(false, true, rows, D, F, 1.0f, dup, F, lw.w_up, F, 1.0f, grad.dh2, D);
    // dxm = dx + the norm's dx, with its bf16 copy in gop16 (dx's there is read by the products above already).
    float* dxm = grad.dxm;
    rms_norm_backward_add(act.xmid, lw.mlp_norm, act.rinv2, grad.dh2, dx, dxm, act16 ? grad.gop16 : nullptr, grad.dwD,
                          norm_work_for(rows, D), rows, D, D);
    mk::axpy(lg.mlp_norm, grad.dwD, 1.0f, D);
    // ---- xmid = x + sum Wo
    const Operand dxm_op = gradient_operand(dxm);
    gemm(true, false, D, D, rows, 1.0f, operand(act.sum, act.sum_bf16), D, dxm_op, D, 1.0f, lg.wo, D);
    gemm(false, true, rows, D, D, 1.0f, dxm_op, D, lw.wo, D, 0.0f, grad.dsum, D);
    // ---- memory output: sum = attn + normed * gate
    mk::gate_heads_backward(act.normed, act.gate, grad.dsum, grad.dnormed, grad.dgate, rows, H, d);
    mk::act_backward(act.zs, grad.dgate, grad.dzs, rows * H, 0.0, math::Activation::Silu);
    gemm(true, false, D, H, rows, 1.0f, operand(act.h, act.h_bf16), D, grad.dzs, H, 1.0f, lg.scale_weight, H);
    col_sum(grad.dzs, rows, H, H, lg.scale_bias, true);
    gemm(false, true, rows, D, H, 1.0f, grad.dzs, H, lw.scale_weight, H, 0.0f, grad.dh, D);
    // The norm's input and dx in the operator's layout: dx is the operator's d(output).
    rms_norm_heads_backward_batch(act.oT, memory_norm_weight(lw), act.rinvo, grad.dnormed, grad.doT, grad.dwD,
                                  norm_work_for(rows, D), S, N, D, H);
    if (cfg.ttt_norm_shared) col_sum(grad.dwD, H, d, d, lg.o_norm, true);  // the shared [d] weight: sum over heads
    else mk::axpy(lg.o_norm, grad.dwD, 1.0f, D);
    // ---- the memory operator
    if (titans_like) titans_backward(l, S, N);
    else lact_backward(l, S, N);
    // ---- attention: overwrites dq, dk (via RoPE's adjoint) and dv of dqkv
    const float* q = act.qkv;
    const float* k = act.qkv + D;
    const float* v = act.qkv + 2 * D;
    float* dqkv = grad.dqkv;
    timed("attention", [&] {
      const AttentionShape ashape{S, halo_in + N, Ha, hd, cfg.window};
      if (halo_in > 0) {
        // Over the extended rows, in buffers free until the q/k preparation's adjoint (sized for them): d(output)
        // in dnormed, zero on the placeholder rows (their queries then add nothing to dk, dv); dq, dk, dv in dO, dz,
        // dzx. This rank's rows go to dqa, dka and dv of dqkv; the halo rows' dk, dv to their owner (below).
        TTT_CUDA_CHECK(cudaMemsetAsync(grad.dnormed, 0, sizeof(float) * size_t(S * hp.X() * D), nullptr));
        run_copies(rows_to(hp.plain(D), hp.extended()), grad.dsum, grad.dnormed);
        (opt.math == MathMode::BF16 ? fp32_input_bf16_backward : fp32_backward)(
            ashape, act.qa, D, act.ka, D, cpb.xv, D, act.attn, D, act.lse, grad.dnormed, D, grad.dO, D, grad.dz, D,
            grad.dzx, D, grad.attn_work, nullptr);
        run_copies(rows_to(hp.extended(), hp.plain(D)), grad.dO, grad.dqa);
        run_copies(rows_to(hp.extended(), hp.plain(D)), grad.dz, grad.dka);
        run_copies(rows_to(hp.extended(), hp.plain(3 * D)), grad.dzx, dqkv + 2 * D);
      } else if (attention_bf16()) {
        const AttentionBf16 a = attention_operands(S * N);
        swa_backward_bf16(ashape, a.q, D, a.k, D, a.v, D, act.attn, D, act.lse, grad.dsum, D, grad.dqa, D, grad.dka,
                          D, dqkv + 2 * D, 3 * D, grad.attn_work, nullptr);
      } else {
        (opt.math == MathMode::BF16 ? fp32_input_bf16_backward : fp32_backward)(
            ashape, act.qa, D, act.ka, D, v, 3 * D, act.attn, D, act.lse, grad.dsum, D, grad.dqa, D, grad.dka, D,
            dqkv + 2 * D, 3 * D, grad.attn_work, nullptr);
      }
    });
    if (split) return_halo_gradient(dqkv);
    rope_backward(grad.dqa, D, dqkv, 3 * D, pos, rows, Ha, hd, cfg.rope_theta);
    rope_backward(grad.dka, D, dqkv + D, 3 * D, pos, rows, Ha, hd, cfg.rope_theta);
    // ---- memory q/k/v preparation (RoPE's adjoint and the layout fused in, from the operator's gradients). They
    // write dqkv's final q and k parts, and with bf16 activations its bf16 operand copy in gop16 (dxm's there is read
    // by the products above already); the v part's follows below.
    bf16* dqkv16 = act16 ? grad.gop16 : nullptr;
    mk::qk_prep_backward_fused(q, 3 * D, lw.q_scale, lw.q_offset, act.qnorm, pos, cfg.rope_theta, memory_rope_width(),
                               grad.gqT, dqkv, 3 * D, dqkv16, grad.dz, grad.dzx, S, N, H, d, 1e-5);
    col_sum(grad.dzx, rows, D, D, lg.q_scale, true);
    col_sum(grad.dz, rows, D, D, lg.q_offset, true);
    mk::qk_prep_backward_fused(k, 3 * D, lw.k_scale, lw.k_offset, act.knorm, pos, cfg.rope_theta, memory_rope_width(),
                               grad.gkT, dqkv + D, 3 * D, dqkv16 ? dqkv16 + D : nullptr, grad.dz, grad.dzx, S, N, H, d,
                               1e-5);
    col_sum(grad.dzx, rows, D, D, lg.k_scale, true);
    col_sum(grad.dz, rows, D, D, lg.k_offset, true);
    // dv += the operator's d(v) (through silu with v_silu), added from its layout.
    if (cfg.v_silu) {
      mk::batch_to_heads(grad.gvT, grad.dvm, D, S, N, H, d, false);
      mk::silu_strided_backward(v, 3 * D, grad.dvm, dqkv + 2 * D, 3 * D, rows, D);
    } else {
      mk::batch_to_heads(grad.gvT, dqkv + 2 * D, 3 * D, S, N, H, d, /*accumulate=*/true);
    }
    if (act16) mk::to_bf16(dqkv + 2 * D, 3 * D, dqkv16 + 2 * D, 3 * D, rows, D);
    // ---- qkv = h Wqkv; h = RMSNorm(x)
    const Operand dqkv_op = gradient_operand(dqkv);
    gemm(true, false, D, 3 * D, rows, 1.0f, operand(act.h, act.h_bf16), D, dqkv_op, 3 * D, 1.0f, lg.wqkv, 3 * D);
    gemm(false, true, rows, D, 3 * D, 1.0f, dqkv_op, 3 * D, lw.wqkv, 3 * D, 1.0f, grad.dh, D);
    // dx = dxm + the norm's dx, with its bf16 copy in gop16 for the layer below (dqkv's there is read already).
    rms_norm_backward_add(x, lw.attn_norm, act.rinv1, grad.dh, dxm, dx, act16 ? grad.gop16 : nullptr, grad.dwD,
                          norm_work_for(rows, D), rows, D, D);
    mk::axpy(lg.attn_norm, grad.dwD, 1.0f, D);
  }
};
GpuModel::GpuModel(const ModelConfig& cfg, const GpuModelOptions& opt) {
  model::validate(cfg);
  std::string why;
  TTT_CHECK(gpu_supports(cfg, &why), "GPU model: " << why);
  TTT_CHECK(device_count(&why) > 0, "GPU model: no CUDA device (" << why << ")");
  impl_ = std::make_unique<Impl>(cfg, opt);
  Impl& m = *impl_;
  m.layout = model::make_params<float>(cfg);
  for (auto& v : m.layout.values) {
    m.offset.push_back(m.total);
    m.total += v.size();
    v = ag::Mat<float>();  // sizes live in `shapes`; no host copy needed
  }
  m.D = cfg.dim, m.H = cfg.n_mem_heads, m.d = cfg.head_dim_mem(), m.dh = cfg.mem_hidden_dim();
  m.Ha = cfg.n_attn_heads, m.hd = cfg.head_dim_attn(), m.F = cfg.mlp_hidden_dim(), m.V = cfg.vocab_size;
  m.L = cfg.n_layers;
  pad_flat_arrays(m.total);
  m.opt_end = m.total;
  m.dloss = DeviceBuffer(sizeof(float));
  m.loss_dev = DeviceBuffer(sizeof(float));
  m.valid_dev = DeviceBuffer(sizeof(int32_t));
  zero_grad();
}
GpuModel::~GpuModel() = default;

const ModelConfig& GpuModel::config() const { return impl_->cfg; }

void GpuModel::upload(const model::Params<float>& p) {
  Impl& m = *impl_;
  TTT_CHECK(p.names == m.layout.names, "GPU model: the parameters do not match the config's layout");
  for (size_t i = 0; i < p.values.size(); ++i) {
    TTT_CHECK(p.values[i].size() == (i + 1 < m.offset.size() ? m.offset[i + 1] : m.total) - m.offset[i],
              "GPU model: parameter '" << p.names[i] << "' has the wrong size");
    TTT_CUDA_CHECK(cudaMemcpy(m.params.p() + m.offset[i], p.values[i].data.data(), sizeof(float) * p.values[i].size(),
                              cudaMemcpyHostToDevice));
  }
}

void GpuModel::download(model::Params<float>& p) const {
  const Impl& m = *impl_;
  p = model::make_params<float>(m.cfg);
  for (size_t i = 0; i < p.values.size(); ++i)
    TTT_CUDA_CHECK(cudaMemcpy(p.values[i].data.data(), m.params.p() + m.offset[i], sizeof(float) * p.values[i].size(),
                              cudaMemcpyDeviceToHost));
}

void GpuModel::zero_grad() {
  TTT_CUDA_CHECK(cudaMemsetAsync(impl_->grads.p(), 0, sizeof(float) * size_t(impl_->flat), nullptr));
}

void GpuModel::pad_flat_arrays(int64_t padded) {
  Impl& m = *impl_;
  TTT_CHECK(padded >= m.total, "GPU model: flat arrays of " << padded << " elements for " << m.total << " parameters");
  if (padded == m.flat) return;
  m.params = DeviceArray<float>();
  m.grads = DeviceArray<float>();
  m.params.ensure(padded, false);
  m.grads.ensure(padded, false);
  m.flat = padded;
  m.P = model_tensors(m.cfg, m.layout.names, [&](size_t i) { return m.params.p() + m.offset[i]; });
  m.G = model_tensors(m.cfg, m.layout.names, [&](size_t i) { return m.grads.p() + m.offset[i]; });
  zero_grad();
}

void GpuModel::set_optimizer_range(int64_t begin, int64_t end) {
  Impl& m = *impl_;
  TTT_CHECK(0 <= begin && begin <= end && end <= m.total,
            "GPU model: optimizer range [" << begin << ", " << end << ") of " << m.total << " parameters");
  m.opt_begin = begin;
  m.opt_end = end;
  m.adam_m = DeviceArray<float>();
  m.adam_v = DeviceArray<float>();
}

float* GpuModel::parameter_data() { return impl_->params.p(); }

double GpuModel::grad_sum_squares(int64_t begin, int64_t end) {
  return end > begin ? mk::sum_squares(impl_->grads.p() + begin, end - begin) : 0.0;
}

void GpuModel::scale_grads(float factor, int64_t begin, int64_t end) {
  if (end > begin) mk::scale(impl_->grads.p() + begin, factor, end - begin);
}

void GpuModel::set_gradient_hook(std::function<void(int stage)> hook) { impl_->gradient_hook = std::move(hook); }

void GpuModel::set_context_parallel(NcclGroup* group, bool pass_state) {
  Impl& m = *impl_;
  TTT_CHECK(!group || group->size() == 1 || m.cfg.arch == model::Arch::Tnt,
            "GPU model: context parallelism needs arch tnt, not " << model::arch_name(m.cfg.arch));
  m.cp_group = group;
  m.pass_state = pass_state;
  m.cp_rank = group ? group->rank() : 0;
  m.cp_ranks = group ? group->size() : 1;
  m.split_cache.clear();
}

float* GpuModel::gradient_data() { return impl_->grads.p(); }
int64_t GpuModel::gradient_size() const { return impl_->total; }

void GpuModel::download_grads(std::vector<ag::Mat<float>>& g) const {
  const Impl& m = *impl_;
  model::Params<float> shape = model::make_params<float>(m.cfg);
  g = std::move(shape.values);
  for (size_t i = 0; i < g.size(); ++i)
    TTT_CUDA_CHECK(cudaMemcpy(g[i].data.data(), m.grads.p() + m.offset[i], sizeof(float) * g[i].size(),
                              cudaMemcpyDeviceToHost));
}

GpuModel::Result GpuModel::forward(const model::Batch& b, bool backward, double grad_scale, bool want_token_loss,
                                   bool want_logits, bool span) {
  Impl& m = *impl_;
  const int64_t S = b.sequences, N = b.len, rows = S * N, D = m.D, V = m.V;
  TTT_CHECK(S > 0 && N > 0, "empty batch");
  TTT_CHECK(int64_t(b.inputs.size()) == rows && int64_t(b.targets.size()) == rows,
            "batch has " << b.inputs.size() << " inputs and " << b.targets.size() << " targets, expected " << rows);
  Result res;
  for (int64_t i = 0; i < rows; ++i) {
    const int32_t id = b.inputs[size_t(i)], y = b.targets[size_t(i)];
    TTT_CHECK(id >= 0 && id < V, "embedding: id " << id << " at position " << i << " out of range for vocabulary " << V);
    TTT_CHECK(y < V, "cross_entropy: target " << y << " at row " << i << " out of range for vocabulary " << V);
    res.valid += y >= 0;
  }
  // Context parallel: the batch is this rank's span of every sequence (positions from cp_rank * N).
  TTT_CHECK(!span || m.cp_group, "GPU model: a span without context parallelism (set_context_parallel)");
  m.split = span && m.cp_ranks > 1;
  m.hp = backend::HaloPlan(S, N, D, m.split ? m.cfg.window : 1, m.split ? m.cp_rank : 0);
  m.halo = m.hp.halo;
  m.halo_in = m.hp.halo_in;
  m.ensure_rows(rows, S, N);
  m.batch_backward = backward;
  m.attention_kept = backward && m.opt.recompute == backend::Recompute::SaveAttention;
  m.layers_kept = backward && m.opt.recompute == backend::Recompute::None;
  TTT_CHECK(!(m.layers_kept && m.split), "GPU model: --recompute none is not implemented with --context-parallel "
                                         "(use save-attention, the default, or full)");
  if (m.attention_kept) m.ensure_kept_attention(m.halo_in > 0 ? S * (m.halo_in + N) : rows);
  if (m.layers_kept) m.ensure_kept_layers(S, N);
  // Token ids, targets, positions.
  auto upload = [](DeviceBuffer& dst, const void* src, size_t bytes) {
    if (dst.bytes() < bytes) dst = DeviceBuffer(std::max<size_t>(bytes, 8));
    TTT_CUDA_CHECK(cudaMemcpy(dst.as<void>(), src, bytes, cudaMemcpyHostToDevice));
  };
  upload(m.ids_dev, b.inputs.data(), sizeof(int32_t) * size_t(rows));
  upload(m.tgt_dev, b.targets.data(), sizeof(int32_t) * size_t(rows));
  std::vector<int64_t> pos(static_cast<size_t>(rows));
  for (int64_t s = 0; s < S; ++s)
    for (int64_t i = 0; i < N; ++i) pos[size_t(s * N + i)] = (m.split ? int64_t(m.cp_rank) * N : 0) + i;
  upload(m.pos_dev, pos.data(), sizeof(int64_t) * size_t(rows));

  mk::embedding_forward(m.P.embed, m.ids_dev.as<int32_t>(), m.layer_output(-1), rows, D);
  m.keep_output(-1, rows);
  for (int64_t l = 0; l < m.L; ++l) {
    // The input is where the layer before left its output (in place: layer_forward): the kept array, or with bf16
    // activations xout, which keep_output rounded to the kept bf16 copy's values (no widening pass).
    m.layer_forward(l, m.layer_output(l - 1), m.layer_output(l), S, N, /*recompute=*/false);
    m.keep_output(l, rows);
  }
  // The final norm's input: the last layer's output as kept (rounded in place with bf16 activations).
  const float* x_final = m.layer_output(m.L - 1);
  if (m.act16) rms_norm_forward(x_final, m.P.final_norm, m.head.hf_bf16, m.head.rinvf, rows, D, D, m.cfg.norm_eps);
  else rms_norm_forward(x_final, m.P.final_norm, m.head.hf, m.head.rinvf, rows, D, D, m.cfg.norm_eps);
  const Operand hf = m.operand(m.head.hf, m.head.hf_bf16);
  m.gemm(false, false, rows, V, D, 1.0f, hf, D, m.P.lm_head, V, 0.0f, m.head.logits, V);
  cross_entropy_forward(m.head.logits, m.tgt_dev.as<int32_t>(), m.head.lse_ce, m.head.row_loss, m.loss_dev.as<float>(),
                        m.valid_dev.as<int32_t>(), rows, V);
  float loss = 0;
  TTT_CUDA_CHECK(cudaMemcpy(&loss, m.loss_dev.as<float>(), sizeof(float), cudaMemcpyDeviceToHost));
  res.loss = double(loss);
  if (want_token_loss) {
    std::vector<float> rl(static_cast<size_t>(rows));
    TTT_CUDA_CHECK(cudaMemcpy(rl.data(), m.head.row_loss, sizeof(float) * size_t(rows), cudaMemcpyDeviceToHost));
    res.token_loss.assign(rl.begin(), rl.end());
  }
  if (want_logits) {
    res.logits.resize(size_t(rows * V));
    TTT_CUDA_CHECK(cudaMemcpy(res.logits.data(), m.head.logits, sizeof(float) * size_t(rows * V), cudaMemcpyDeviceToHost));
  }
  // The last layer's state sent on (--cp-global state) is done before the batch is (its buffer is reused).
  if (!backward && m.split) m.cp_group->wait_sends();
  // A span without valid targets still runs its backward: the group's exchanges need every rank.
  if (!backward || (res.valid == 0 && !m.split)) return res;

  // ---- backward
  // The embedding's index arrays, sized for any batch of these rows before the backward starts: growing them later
  // would free the old ones, and cudaFree waits for the whole device, a gradient hook's collectives included (which
  // wait for the other ranks, without the timeout).
  for (DeviceBuffer* index : {&m.emb_order, &m.emb_starts, &m.emb_uniq})
    if (index->bytes() < sizeof(int32_t) * size_t(rows + 1)) *index = DeviceBuffer(sizeof(int32_t) * size_t(rows + 1));
  const float ds = float(grad_scale);
  TTT_CUDA_CHECK(cudaMemcpy(m.dloss.as<float>(), &ds, sizeof(float), cudaMemcpyHostToDevice));
  // The logits' gradient in place (the logits are not needed after this): with bf16 products the bf16 operand
  // itself, each row's at the start of its fp32 row (leading dimension 2V), so no pass rounds it for the products.
  const bool dlogits16 = m.opt.math == MathMode::BF16;
  if (dlogits16)
    cross_entropy_backward_bf16(m.head.logits, m.tgt_dev.as<int32_t>(), m.head.lse_ce, m.valid_dev.as<int32_t>(),
                                m.dloss.as<float>(), rows, V);
  else
    cross_entropy_backward(m.head.logits, m.tgt_dev.as<int32_t>(), m.head.lse_ce, m.valid_dev.as<int32_t>(),
                           m.dloss.as<float>(), m.head.logits, rows, V);
  const Operand dlogits = dlogits16 ? Operand(reinterpret_cast<const bf16*>(m.head.logits)) : Operand(m.head.logits);
  const int64_t ld_dlogits = dlogits16 ? 2 * V : V;
  m.gemm(true, false, D, V, rows, 1.0f, hf, D, dlogits, ld_dlogits, 1.0f, m.G.lm_head, V);
  m.gemm(false, true, rows, D, V, 1.0f, dlogits, ld_dlogits, m.P.lm_head, V, 0.0f, m.grad.dh, D);
  // d(last layer's output), with its bf16 copy for that layer's products (layer_backward).
  rms_norm_backward_add(x_final, m.P.final_norm, m.head.rinvf, m.grad.dh, nullptr, m.grad.dx,
                        m.act16 ? m.grad.gop16 : nullptr, m.grad.dwD, m.norm_work_for(rows, D), rows, D, D);
  mk::axpy(m.G.final_norm, m.grad.dwD, 1.0f, D);
  const auto stage_done = [&](int64_t stage) {
    if (m.gradient_hook) m.gradient_hook(int(stage));
  };
  stage_done(0);  // the head's gradients are final
  for (int64_t l = m.L - 1; l >= 0; --l) {
    // The work buffers hold the last layer's activations already; the others are recomputed from their input,
    // unless every layer kept its own (--recompute none). The recomputation's output (layer_output) is not kept
    // again: it equals what the forward kept.
    const float* x = m.layer_input(l, rows);
    if (l != m.L - 1 && !m.layers_kept) m.layer_forward(l, x, m.layer_output(l), S, N, /*recompute=*/true);
    m.layer_backward(l, x, S, N);
    stage_done(1 + (m.L - 1 - l));
  }
  // Embedding: rows of the table gathered per distinct id (host-built CSR; fixed order).
  std::vector<int32_t> order(static_cast<size_t>(rows));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t c) { return b.inputs[size_t(a)] < b.inputs[size_t(c)]; });
  std::vector<int32_t> starts, uniq;
  for (int64_t i = 0; i < rows; ++i) {
    const int32_t id = b.inputs[size_t(order[size_t(i)])];
    if (uniq.empty() || uniq.back() != id) {
      uniq.push_back(id);
      starts.push_back(int32_t(i));
    }
  }
  starts.push_back(int32_t(rows));
  upload(m.emb_order, order.data(), sizeof(int32_t) * order.size());
  upload(m.emb_starts, starts.data(), sizeof(int32_t) * starts.size());
  upload(m.emb_uniq, uniq.data(), sizeof(int32_t) * uniq.size());
  mk::embedding_backward(m.grad.dx, m.emb_order.as<int32_t>(), m.emb_starts.as<int32_t>(), m.emb_uniq.as<int32_t>(),
                         int64_t(uniq.size()), m.G.embed, D);
  stage_done(m.L + 1);
  if (m.split) m.cp_group->wait_sends();  // the first layer's state adjoint returned (--cp-global state)
  // With a hook, collectives may be running on another stream: wait for the model's own work only.
  TTT_CUDA_CHECK(m.gradient_hook ? cudaStreamSynchronize(nullptr) : cudaDeviceSynchronize());
  return res;
}

void GpuModel::set_trainable(const std::vector<std::vector<uint8_t>>& mask) {
  Impl& m = *impl_;
  m.have_masks = false;
  for (auto& t : mask) m.have_masks = m.have_masks || !t.empty();
  if (!m.have_masks) {
    m.masks = DeviceBuffer();
    return;
  }
  TTT_CHECK(mask.size() == m.offset.size(), "GPU model: a trainable mask of " << mask.size() << " tensors for "
                                                                               << m.offset.size() << " parameters");
  // One flat byte array like the parameters (all ones where a tensor has no mask), uploaded once.
  std::vector<uint8_t> flat(size_t(m.total), 1);
  for (size_t i = 0; i < mask.size(); ++i) {
    const int64_t n = (i + 1 < m.offset.size() ? m.offset[i + 1] : m.total) - m.offset[i];
    TTT_CHECK(mask[i].empty() || int64_t(mask[i].size()) == n,
              "GPU model: the mask of '" << m.layout.names[i] << "' has " << mask[i].size() << " elements, not " << n);
    std::copy(mask[i].begin(), mask[i].end(), flat.begin() + m.offset[i]);
  }
  m.masks = DeviceBuffer(flat.size());
  m.masks.upload(flat.data(), flat.size());
}

void GpuModel::apply_grad_mask() {
  Impl& m = *impl_;
  if (m.have_masks && m.opt_end > m.opt_begin)
    mk::zero_where_masked(m.grads.p() + m.opt_begin, m.masks.as<uint8_t>() + m.opt_begin, m.opt_end - m.opt_begin);
}

double GpuModel::clip_grad_norm(double max_norm) {
  Impl& m = *impl_;
  const double norm = std::sqrt(mk::sum_squares(m.grads.p(), m.total));
  if (max_norm > 0 && norm > max_norm && std::isfinite(norm)) mk::scale(m.grads.p(), float(max_norm / norm), m.total);
  return norm;
}

// The part of tensor i [offset, offset + n) in the optimizer's range: elements [from, to) of the flat arrays.
struct RangePart {
  int64_t from = 0, to = 0;
};
static RangePart range_part(int64_t offset, int64_t n, int64_t begin, int64_t end) {
  return {std::max(offset, begin), std::min(offset + n, end)};
}

void GpuModel::upload_optimizer(const train::AdamW& opt) {
  Impl& m = *impl_;
  TTT_CHECK(opt.names() == m.layout.names, "GPU model: the optimizer's tensors do not match the parameters");
  m.adam_m.ensure(m.opt_end - m.opt_begin, false);
  m.adam_v.ensure(m.opt_end - m.opt_begin, false);
  for (size_t i = 0; i < m.offset.size(); ++i) {
    const RangePart r = range_part(m.offset[i], int64_t(opt.m()[i].size()), m.opt_begin, m.opt_end);
    if (r.to <= r.from) continue;
    const size_t bytes = sizeof(float) * size_t(r.to - r.from);
    TTT_CUDA_CHECK(cudaMemcpy(m.adam_m.p() + (r.from - m.opt_begin), opt.m()[i].data() + (r.from - m.offset[i]), bytes,
                              cudaMemcpyHostToDevice));
    TTT_CUDA_CHECK(cudaMemcpy(m.adam_v.p() + (r.from - m.opt_begin), opt.v()[i].data() + (r.from - m.offset[i]), bytes,
                              cudaMemcpyHostToDevice));
  }
  set_trainable(opt.trainable());
}

void GpuModel::adamw_step(train::AdamW& opt, double lr) {
  Impl& m = *impl_;
  TTT_CHECK(m.adam_m.n >= m.opt_end - m.opt_begin, "GPU model: upload_optimizer() before adamw_step()");
  const int64_t t = opt.advance_step();
  for (size_t i = 0; i < m.offset.size(); ++i) {
    const int64_t n = (i + 1 < m.offset.size() ? m.offset[i + 1] : m.total) - m.offset[i];
    const RangePart r = range_part(m.offset[i], n, m.opt_begin, m.opt_end);
    if (r.to <= r.from) continue;
    AdamWParams a;
    a.lr = lr;
    a.beta1 = opt.config().beta1;
    a.beta2 = opt.config().beta2;
    a.eps = opt.config().eps;
    a.weight_decay = opt.config().weight_decay;
    a.step = t;
    a.decay = opt.decayed(i);
    const uint8_t* mask = m.have_masks ? m.masks.as<uint8_t>() + r.from : nullptr;
    cuda::adamw_step(m.params.p() + r.from, m.grads.p() + r.from, m.adam_m.p() + (r.from - m.opt_begin),
                     m.adam_v.p() + (r.from - m.opt_begin), mask, r.to - r.from, a);
  }
}

void GpuModel::download_optimizer(train::AdamW& opt) const {
  const Impl& m = *impl_;
  TTT_CHECK(m.adam_m.n >= m.opt_end - m.opt_begin, "GPU model: no optimizer state on the device");
  for (size_t i = 0; i < m.offset.size(); ++i) {
    const RangePart r = range_part(m.offset[i], int64_t(opt.m()[i].size()), m.opt_begin, m.opt_end);
    if (r.to <= r.from) continue;
    const size_t bytes = sizeof(float) * size_t(r.to - r.from);
    TTT_CUDA_CHECK(cudaMemcpy(opt.m()[i].data() + (r.from - m.offset[i]), m.adam_m.p() + (r.from - m.opt_begin), bytes,
                              cudaMemcpyDeviceToHost));
    TTT_CUDA_CHECK(cudaMemcpy(opt.v()[i].data() + (r.from - m.offset[i]), m.adam_v.p() + (r.from - m.opt_begin), bytes,
                              cudaMemcpyDeviceToHost));
  }
}

size_t GpuModel::device_bytes() const { return tracked_bytes(); }

void GpuModel::set_profiling(bool on) {
  impl_->profile = on;
  impl_->phase_ms.clear();
}
std::map<std::string, double> GpuModel::phase_ms() const { return impl_->phase_ms; }

}  // namespace ttt::cuda
