// The GPU model (model_cuda_impl.h): one layer's forward and its hand-written adjoint, with the memory branch of
// each arch (LaCT through LactRunner, Titans / TNT through TntRunner). Each step names the CPU op it mirrors
// (src/model/model.cpp, src/model/memory_branch.cpp).
#include "backend/cuda/model_cuda_impl.h"

#include "backend/cuda/elementwise_kernels.h"
#include "backend/cuda/layout_kernels.h"
#include "backend/cuda/memory_kernels.h"
#include "backend/cuda/norm_kernels.h"
#include "backend/cuda/rope_kernels.h"

namespace ttt::cuda {

// The weight [D] of the memory output's per-head RMSNorm: the layer's own, or with ttt_norm_shared (one [d]
// weight for every head, as the public LaCT model has) that weight tiled over the heads; the backward sums its
// gradient back over the heads (layer_backward).
const float* GpuModel::Impl::memory_norm_weight(const LayerTensors& lw) {
  if (!cfg.ttt_norm_shared) return lw.o_norm;
  o_norm_tiled.ensure(D, /*poison=*/false);
  mk::tile_row(lw.o_norm, o_norm_tiled.p(), H, d);
  return o_norm_tiled.p();
}

// Forward of layer l from x (rows x D) into out; every activation the backward needs stays in the buffers.
// `recompute`: the backward's second forward of the layer, which skips the attention when its output was kept and
// stops at the MLP's SwiGLU (out unused: may be null). x may be out itself: only the first RMSNorm reads x, before
// anything writes out.
void GpuModel::Impl::layer_forward(int64_t l, const float* x, float* out, int64_t S, int64_t N, bool recompute) {
  const int64_t rows = S * N;
  select_layer(l);
  const LayerTensors& lw = P.layers[size_t(l)];
  const int64_t* pos = pos_dev.as<int64_t>();
  // h = RMSNorm(x), and xmid = x (the residual the Wo product accumulates into below); qkv = h Wqkv
  if (act16) rms_norm_forward_copy(x, lw.attn_norm, act.h_bf16, act.rinv1, act.xmid, rows, D, cfg.norm_eps);
  else rms_norm_forward_copy(x, lw.attn_norm, act.h, act.rinv1, act.xmid, rows, D, cfg.norm_eps);
  gemm(false, false, rows, 3 * D, D, 1.0f, operand(act.h, act.h_bf16), D, weight(lw.wqkv), 3 * D, 0.0f, act.qkv, 3 * D);
  const float* q = act.qkv;
  const float* k = act.qkv + D;
  const float* v = act.qkv + 2 * D;
  // Attention branch: RoPE from the strided q, k of qkv into qa, ka; flash sliding-window attention (context
  // parallel: over the previous rank's halo rows and this rank's, attention_inputs).
  const AttentionShape ashape{S, halo_in + N, Ha, hd, cfg.window};
  // Without v_silu the memory branch's v is v itself: its per sequence-head layout and the bf16 attention's v operand
  // in one pass (heads_to_batch with the bf16 copy), before the attention.
  const bool v_layout_with_operand = attention_bf16() && !cfg.v_silu;
  if (attention_bf16()) {
    // The tensor-core attention on bf16 operands written by RoPE (and one conversion of v): the bits its
    // fp32-input form would round to, without the conversion work inside the attention kernels (on Hopper with
    // hd 64 the forward is the wgmma kernel instead: equal to fp32 rounding, not bits; attention.h).
    const AttentionBf16 a = attention_operands(rows);
    rope_forward(q, 3 * D, a.q, D, pos, rows, Ha, hd, cfg.rope_theta);
    rope_forward(k, 3 * D, a.k, D, pos, rows, Ha, hd, cfg.rope_theta);
    if (v_layout_with_operand) mk::heads_to_batch(v, 3 * D, act.vT, S, N, H, d, a.v, D);
    else mk::to_bf16(v, 3 * D, a.v, D, rows, D);
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
  // Per sequence-head layout of the memory operators (v's: above, with its bf16 operand, where it could).
  if (!v_layout_with_operand) mk::heads_to_batch(vm, ldvm, act.vT, S, N, H, d);
  if (titans_like) titans_forward(l, S, N, recompute);
  else lact_forward(l, S, N);
  // finish_memory_output: per-head RMSNorm, times silu(h W_s + b_s) per head.
  rms_norm_heads_forward_batch(act.oT, memory_norm_weight(lw), act.normed, act.rinvo, S, N, D, H,
                               cfg.mem_norm_eps());
  gemm(false, false, rows, H, D, 1.0f, operand(act.h, act.h_bf16), D, weight(lw.scale_weight), H, 0.0f, act.zs, H);
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
  gemm(false, false, rows, D, D, 1.0f, operand(sum, act.sum_bf16), D, weight(lw.wo), D, 1.0f, act.xmid, D);
  // MLP: h2 = RMSNorm(xmid), and out = xmid (the residual the W_down product accumulates into). The backward's
  // recomputation stops at the SwiGLU: the layer's backward reads h2, its gate and up values and their product, not
  // the layer's output (kept already as the next layer's input), so the W_down product and the copy are skipped.
  float* residual_out = recompute ? nullptr : out;
  TTT_CHECK(recompute || out, "layer_forward: no output buffer");
  if (act16) rms_norm_forward_copy(act.xmid, lw.mlp_norm, act.h2_bf16, act.rinv2, residual_out, rows, D, cfg.norm_eps);
  else rms_norm_forward_copy(act.xmid, lw.mlp_norm, act.h2, act.rinv2, residual_out, rows, D, cfg.norm_eps);
  // ga = h2 W_gate, up = h2 W_up: with bf16 activations stored in bf16 by the products themselves (the SwiGLU
  // kernels are their only readers; half the bytes written here and read there and in the backward).
  gemm(false, false, rows, F, D, 1.0f, operand(act.h2, act.h2_bf16), D, weight(lw.w_gate), F, 0.0f,
       stored(act.ga, act.ga_bf16), F);
  gemm(false, false, rows, F, D, 1.0f, operand(act.h2, act.h2_bf16), D, weight(lw.w_up), F, 0.0f,
       stored(act.up, act.up_bf16), F);
  if (act16) mk::swiglu_forward(act.ga_bf16, act.up_bf16, act.mm_bf16, rows * F);
  else mk::swiglu_forward(act.ga, act.up, act.mm, rows * F);
  if (!recompute) gemm(false, false, rows, D, F, 1.0f, operand(act.mm, act.mm_bf16), F, weight(lw.w_down), D, 1.0f, out, D);
}

// ttt.w0 / ttt.w2 of a layer: the parameter itself, or (low rank) A B + 0.5 I per head into buffer `tmp`.
const float* GpuModel::Impl::resolve_weight(const MemoryWeight& w, float* tmp) {
  if (!cfg.low_rank_init) return w.full;
  const int64_t r = cfg.low_rank_rank;
  gemm_batched(false, false, dh, d, r, 1.0f, w.a, r, dh * r, w.b, d, r * d, 0.0f, tmp, d, dh * d, H);
  mk::add_diagonal(tmp, H, dh, d, 0.5f);
  return tmp;
}
// Gradient of ttt.w0 / ttt.w2 (w: the parameter, gw: its gradient) from dW [S][H, dh, d] (the broadcast copies):
// summed over sequences in order.
void GpuModel::Impl::weight_grad(const MemoryWeight& w, const MemoryWeight& gw, const float* gb, int64_t S) {
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
void GpuModel::Impl::lact_forward(int64_t l, int64_t S, int64_t N) {
  const int64_t rows = S * N;
  const LayerTensors& lw = P.layers[size_t(l)];
  gemm(false, false, rows, 3 * H, D, 1.0f, operand(act.h, act.h_bf16), D, weight(lw.lr_weight), 3 * H, 0.0f, act.zlr,
       3 * H);
  mk::gate_forward(act.zlr, lw.lr_bias, act.rates, rows, 3 * H, branch.rate);
  if (cfg.momentum) {
    gemm(false, false, rows, H, D, 1.0f, operand(act.h, act.h_bf16), D, weight(lw.momentum_weight), H, 0.0f, act.zm, H);
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
void GpuModel::Impl::lact_backward(int64_t l, int64_t S, int64_t N) {
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
  gemm(false, true, rows, D, 3 * H, 1.0f, grad.dzlr, 3 * H, weight(lw.lr_weight), 3 * H, 1.0f, grad.dh, D);
  if (cfg.momentum) {
    mk::batch_to_cols(grad.gmomT, grad.dmom, H, 0, S, N, H);
    mk::gate_backward(act.zm, grad.dmom, grad.dzm, rows * H, branch.gate);
    gemm(true, false, D, H, rows, 1.0f, operand(act.h, act.h_bf16), D, grad.dzm, H, 1.0f, lg.momentum_weight, H);
    col_sum(grad.dzm, rows, H, H, lg.momentum_bias, true);
    gemm(false, true, rows, D, H, 1.0f, grad.dzm, H, weight(lw.momentum_weight), H, 1.0f, grad.dh, D);
  }
}

// Titans / TNT: M memories (global first), each MLP + MSE with momentum and decay; gates by the branch's rules
// (theta = titans_base_lr * sigmoid(h W_lr + b), eta = sigmoid(h W_m + b), alpha = sigmoid(h W_d + b)), in the
// memory spec's columns (m*H + h for memory m, head h); the branch through TntRunner (tnt_cuda.h), which sums
// the memories.
void GpuModel::Impl::titans_forward(int64_t l, int64_t S, int64_t N, bool recompute) {
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
    gemm(false, false, rows, MH, D, 1.0f, operand(act.h, act.h_bf16), D, weight(gate_weight[gi]), MH, 0.0f,
         gate_z[gi], MH);
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
void GpuModel::Impl::titans_backward(int64_t l, int64_t S, int64_t N) {
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
    gemm(false, true, rows, D, MH, 1.0f, grad.dzlr, MH, weight(gate_weight[gi]), MH, 1.0f, grad.dh, D);
  }
}

// Backward of layer l (after layer_forward(l) on the same input x): dx holds d/d(out) on entry and
// d/d(x) on return. Parameter gradients are accumulated.
void GpuModel::Impl::layer_backward(int64_t l, const float* x, int64_t S, int64_t N) {
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
  // d(mm) = dx W_down^T: with bf16 activations stored in bf16 by its product, like ga and up (the SwiGLU's inputs).
  gemm(false, true, rows, F, D, 1.0f, dx_op, D, weight(lw.w_down), D, 0.0f, stored(grad.dmm, grad.dmm_bf16), F);
  if (act16) mk::swiglu_backward(act.ga_bf16, act.up_bf16, grad.dmm_bf16, grad.dga_bf16, grad.dup_bf16, rows * F);
  else mk::swiglu_backward(act.ga, act.up, grad.dmm, grad.dga, grad.dup, rows * F);
  const Operand dga = operand(grad.dga, grad.dga_bf16), dup = operand(grad.dup, grad.dup_bf16);
  gemm(true, false, D, F, rows, 1.0f, operand(act.h2, act.h2_bf16), D, dga, F, 1.0f, lg.w_gate, F);
  gemm(true, false, D, F, rows, 1.0f, operand(act.h2, act.h2_bf16), D, dup, F, 1.0f, lg.w_up, F);
  gemm(false, true, rows, D, F, 1.0f, dga, F, weight(lw.w_gate), F, 0.0f, grad.dh2, D);
  gemm(false, true, rows, D, F, 1.0f, dup, F, weight(lw.w_up), F, 1.0f, grad.dh2, D);
  // dxm = dx + the norm's dx, with its bf16 copy in gop16 (dx's there is read by the products above already).
  float* dxm = grad.dxm;
  rms_norm_backward_add(act.xmid, lw.mlp_norm, act.rinv2, grad.dh2, dx, dxm, act16 ? grad.gop16 : nullptr, grad.dwD,
                        norm_work_for(rows, D), rows, D, D);
  mk::axpy(lg.mlp_norm, grad.dwD, 1.0f, D);
  // ---- xmid = x + sum Wo
  const Operand dxm_op = gradient_operand(dxm);
  gemm(true, false, D, D, rows, 1.0f, operand(act.sum, act.sum_bf16), D, dxm_op, D, 1.0f, lg.wo, D);
  gemm(false, true, rows, D, D, 1.0f, dxm_op, D, weight(lw.wo), D, 0.0f, grad.dsum, D);
  // ---- memory output: sum = attn + normed * gate
  mk::gate_heads_backward(act.normed, act.gate, grad.dsum, grad.dnormed, grad.dgate, rows, H, d);
  mk::act_backward(act.zs, grad.dgate, grad.dzs, rows * H, 0.0, math::Activation::Silu);
  gemm(true, false, D, H, rows, 1.0f, operand(act.h, act.h_bf16), D, grad.dzs, H, 1.0f, lg.scale_weight, H);
  col_sum(grad.dzs, rows, H, H, lg.scale_bias, true);
  gemm(false, true, rows, D, H, 1.0f, grad.dzs, H, weight(lw.scale_weight), H, 0.0f, grad.dh, D);
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
  // dv += the operator's d(v) (through silu with v_silu), added from its layout; without v_silu the same pass writes
  // the v part's bf16 operand copy.
  if (cfg.v_silu) {
    mk::batch_to_heads(grad.gvT, grad.dvm, D, S, N, H, d, false);
    mk::silu_strided_backward(v, 3 * D, grad.dvm, dqkv + 2 * D, 3 * D, rows, D);
    if (act16) mk::to_bf16(dqkv + 2 * D, 3 * D, dqkv16 + 2 * D, 3 * D, rows, D);
  } else {
    mk::batch_to_heads(grad.gvT, dqkv + 2 * D, 3 * D, S, N, H, d, /*accumulate=*/true,
                       act16 ? dqkv16 + 2 * D : nullptr, 3 * D);
  }
  // ---- qkv = h Wqkv; h = RMSNorm(x)
  const Operand dqkv_op = gradient_operand(dqkv);
  gemm(true, false, D, 3 * D, rows, 1.0f, operand(act.h, act.h_bf16), D, dqkv_op, 3 * D, 1.0f, lg.wqkv, 3 * D);
  gemm(false, true, rows, D, 3 * D, 1.0f, dqkv_op, 3 * D, weight(lw.wqkv), 3 * D, 1.0f, grad.dh, D);
  // dx = dxm + the norm's dx, with its bf16 copy in gop16 for the layer below (dqkv's there is read already).
  rms_norm_backward_add(x, lw.attn_norm, act.rinv1, grad.dh, dxm, dx, act16 ? grad.gop16 : nullptr, grad.dwD,
                        norm_work_for(rows, D), rows, D, D);
  mk::axpy(lg.attn_norm, grad.dwD, 1.0f, D);
}

}  // namespace ttt::cuda
