// The GPU model (model_cuda_impl.h): what a batch holds on the device. The work buffers (the tables of
// model_buffers.h) and the kept residual stream grown to the largest batch so far; what each --recompute level keeps
// beyond them (every layer's attention output, or every layer's activations and memory operator state); the memory
// operators' runners, one per batch shape (at most two kept), and the layer they serve.
#include "backend/cuda/model_cuda_impl.h"

#include <algorithm>

#include "backend/cuda/layout_kernels.h"
#include "backend/cuda/norm_kernels.h"

namespace ttt::cuda {

TntRunner<float>& GpuModel::Impl::tnt_runner(int64_t S, int64_t N) {
  return cached_runner(tnt, S, N, [&] { return make_tnt_runner(S, N); });
}

// The memory operator runner of layer l: its own (keeps_layer) or the shared one of the batch shape; LaCT: the
// runner of the layers' records (keeps_layer, record l) or the shared one (record 0).
TntRunner<float>& GpuModel::Impl::tnt_runner_of(int64_t l, int64_t S, int64_t N) {
  return keeps_layer(l) ? *layer_tnt[size_t(l)] : tnt_runner(S, N);
}
LactRunner<float>& GpuModel::Impl::lact_runner_of(int64_t l, int64_t S, int64_t N) {
  return keeps_layer(l) ? *layer_lact : lact_runner(S, N);
}

std::unique_ptr<TntRunner<float>> GpuModel::Impl::make_tnt_runner(int64_t S, int64_t N) {
  const titans::TntShape s = backend::gpu_tnt_shape(cfg, S, N);
  return std::make_unique<TntRunner<float>>(s, /*with_grad=*/true, titans_options());
}
// The Titans / TNT runners' options: with bf16 products the persistent kernels' chunk products run on tensor
// cores too (bf16 operands, fp32 accumulation and state).
TitansOptions GpuModel::Impl::titans_options() const {
  TitansOptions to;
  to.poison_workspace = opt.poison;
  to.bf16_products = opt.math == MathMode::BF16;
  to.tf32_products = opt.math == MathMode::TF32;
  to.graphs = opt.memory_graphs && !split;
  to.graph_cache = int(cfg.n_layers) + 1;  // the shared runner: a graph per layer
  return to;
}

void* GpuModel::Impl::norm_work_for(int64_t rows, int64_t cols) {
  const size_t want = rms_norm_backward_workspace(rows, cols);
  if (want > norm_work_bytes) {
    norm_work = DeviceBuffer(want);
    norm_work_bytes = want;
  }
  return norm_work.as<void>();
}

// The bf16 copies of the product weights for the training batch that starts (weight_copies): the slots are laid
// out and allocated on the first such batch (the layout is fixed; the pointers are looked up anew each batch, as
// pad_flat_arrays may move the parameters), then every weight is rounded into its slot, one pass over them.
void GpuModel::Impl::round_product_weights() {
  weight_copies.valid = false;
  weight_copies.of.clear();
  if (!weight_copies.enabled || opt.math != MathMode::BF16) return;
  std::vector<const float*> weights;
  for (const LayerTensors& lw : P.layers)
    for (const float* w : {lw.wqkv, lw.lr_weight, lw.momentum_weight, lw.decay_weight, lw.scale_weight, lw.wo,
                           lw.w_gate, lw.w_up, lw.w_down})
      if (w) weights.push_back(w);
  weights.push_back(P.lm_head);
  // Each weight's elements from the layout; its slot at a 256-byte boundary (as a fresh cudaMalloc of Blas's).
  auto elements = [&](const float* w) {
    const int64_t at = w - params.p();
    const auto it = std::find(offset.begin(), offset.end(), at);
    TTT_CHECK(it != offset.end(), "GPU model: a product weight that is no parameter tensor");
    const auto i = size_t(it - offset.begin());
    return (i + 1 < offset.size() ? offset[i + 1] : total) - at;
  };
  constexpr size_t kAlign = 256;
  std::vector<std::pair<size_t, int64_t>> slots;  // (byte offset, elements) of each weight
  size_t bytes = 0;
  for (const float* w : weights) {
    const int64_t n = elements(w);
    slots.push_back({bytes, n});
    bytes += (sizeof(bf16) * size_t(n) + kAlign - 1) / kAlign * kAlign;
  }
  if (bytes > weight_copies.bytes) {
    if (weight_copies.base) TTT_CUDA_CHECK(cudaFree(weight_copies.base));
    weight_copies.base = nullptr;
    TTT_CUDA_CHECK(cudaMalloc(&weight_copies.base, bytes));
    weight_copies.bytes = bytes;
  }
  for (size_t i = 0; i < weights.size(); ++i) {
    auto* slot = reinterpret_cast<bf16*>(static_cast<char*>(weight_copies.base) + slots[i].first);
    mk::to_bf16(weights[i], slot, slots[i].second);
    weight_copies.of[weights[i]] = slot;
  }
  weight_copies.valid = true;
}

// The shared runner of the batch shape. A training batch's keeps the chunks' products for the backward
// (gpu_lact_keeps_products); one made for a forward-only batch of that shape is then made anew (once), and a
// keeping one serves forward-only batches as it is (the same bits either way).
LactRunner<float>& GpuModel::Impl::lact_runner(int64_t S, int64_t N) {
  const bool keep = backend::gpu_lact_keeps_products(batch_backward);
  const auto it = lact.find(std::make_pair(S, N));
  if (it != lact.end() && keep && !it->second->keeps_products()) lact.erase(it);
  return cached_runner(lact, S, N, [&] { return make_lact_runner(S, N, 1, keep); });
}
std::unique_ptr<LactRunner<float>> GpuModel::Impl::make_lact_runner(int64_t S, int64_t N, int64_t records,
                                                                    bool keep_products) {
  const lact::Shape s = backend::gpu_lact_shape(cfg, S, N);
  LactOptions lo;
  lo.bf16 = backend::lact_on_bf16_operands(cfg, opt.math == MathMode::BF16);
  lo.tf32 = opt.math == MathMode::TF32 || (opt.math == MathMode::BF16 && !lo.bf16);  // bf16 with Muon: tf32
  lo.poison_workspace = opt.poison;
  lo.keep_products = keep_products;
  lo.graphs = opt.memory_graphs && !split;
  lo.graph_cache = records == 1 ? int(cfg.n_layers) + 1 : 1;  // the shared runner: a graph per layer
  return std::make_unique<LactRunner<float>>(s, /*with_grad=*/true, lo, records);
}

// Grows the work buffers (model_buffers.h) and the kept residual stream to a batch of S sequences of N tokens.
void GpuModel::Impl::ensure_rows(int64_t rows, int64_t S, int64_t N) {
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
void GpuModel::Impl::ensure_kept_attention(int64_t rows) {
  attn_kept.resize(size_t(L));
  lse_kept.resize(size_t(L));
  for (int64_t l = 0; l < L; ++l) {
    attn_kept[size_t(l)].ensure(rows * D, opt.poison);
    lse_kept[size_t(l)].ensure(rows * Ha, opt.poison);
  }
}
// Sizes every layer's own kept activations and runners but the last's for a training batch (--recompute none).
void GpuModel::Impl::ensure_kept_layers(int64_t S, int64_t N) {
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
void GpuModel::Impl::select_layer(int64_t l) {
  act = work;
  if (attention_kept) {
    act.attn = attn_kept[size_t(l)].p();
    act.lse = lse_kept[size_t(l)].p();
  }
  if (keeps_layer(l)) own_dims.grow(kept_layers[size_t(l)], opt.poison, act);  // sized already: sets the pointers
}

// The residual stream at layer l's input (l = L: the final norm's input) as fp32: the kept array, or (bf16
// activations) its bf16 copy widened into `xin`.
const float* GpuModel::Impl::layer_input(int64_t l, int64_t rows) {
  if (!act16) return xs[size_t(l)].p();
  mk::from_bf16(xs16[size_t(l)].p(), act.xin, rows * D);
  return act.xin;
}
// Where layer l writes its output (the embedding: l = -1), and keeping it: with bf16 activations the output is
// rounded into xs16[l + 1] and `xout` keeps the rounded values, so what follows sees exactly what the backward's
// recomputation will read.
float* GpuModel::Impl::layer_output(int64_t l) { return act16 ? act.xout : xs[size_t(l + 1)].p(); }
void GpuModel::Impl::keep_output(int64_t l, int64_t rows) {
  if (act16) mk::round_store_bf16(act.xout, xs16[size_t(l + 1)].p(), rows * D);
}

}  // namespace ttt::cuda
