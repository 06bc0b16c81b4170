// The GPU model (model_cuda.h): its public calls. Construction and the parameters' flat arrays, a batch's forward
// and backward over the layers (embedding, each layer, final norm, LM head and loss; model_cuda_layer.cpp runs a
// layer), the gradient hook of data parallelism, and the optimizer on the device (AdamW, clipping, masks, ranges).
// GpuModel::Impl, the state the model's files share, and their split: model_cuda_impl.h.
#include "backend/cuda/model_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <cmath>
#include <map>
#include <numeric>

#include "backend/cuda/check.cuh"
#include "backend/cuda/elementwise_kernels.h"
#include "backend/cuda/layout_kernels.h"
#include "backend/cuda/loss_kernels.h"
#include "backend/cuda/model_cuda_impl.h"
#include "backend/cuda/nccl_communicator.h"
#include "backend/cuda/norm_kernels.h"
#include "backend/cuda/optimizer_kernels.h"
#include "backend/cuda/reduction_kernels.h"

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

GpuModel::GpuModel(const ModelConfig& cfg, const GpuModelOptions& opt) {
  model::validate(cfg);
  std::string why;
  TTT_CHECK(gpu_supports(cfg, &why), "GPU model: " << why);
  TTT_CHECK(device_count(&why) > 0, "GPU model: no CUDA device (" << why << ")");
  impl_ = std::make_unique<Impl>(cfg, opt);
  Impl& m = *impl_;
  if (const char* e = std::getenv("TTT_MEMORY_GRAPHS"); e && std::string(e) == "0") m.opt.memory_graphs = false;
  if (const char* e = std::getenv("TTT_WEIGHT_COPIES"); e && std::string(e) == "0") m.weight_copies.enabled = false;
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
  // A training batch's products read bf16 copies of the weights, rounded here once; they are stale once forward()
  // returns (the optimizer steps after it).
  struct WeightCopiesOfThisBatch {
    GpuModel::Impl& m;
    ~WeightCopiesOfThisBatch() { m.weight_copies.valid = false; }
  } weight_copies_scope{m};
  if (backward) m.round_product_weights();
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
  m.gemm(false, false, rows, V, D, 1.0f, hf, D, m.weight(m.P.lm_head), V, 0.0f, m.head.logits, V);
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
  m.gemm(false, true, rows, D, V, 1.0f, dlogits, ld_dlogits, m.weight(m.P.lm_head), V, 0.0f, m.grad.dh, D);
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
    // unless every layer kept its own (--recompute none). The recomputation has no output: the layer's output is
    // the next layer's kept input, and its backward needs only the activations up to the MLP's SwiGLU.
    const float* x = m.layer_input(l, rows);
    if (l != m.L - 1 && !m.layers_kept) m.layer_forward(l, x, /*out=*/nullptr, S, N, /*recompute=*/true);
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
