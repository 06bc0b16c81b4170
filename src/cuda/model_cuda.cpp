// The GPU model (model_cuda.h): host orchestration of one layer's forward and its hand-written adjoint.
// Each step names the CPU op it mirrors (src/model/model.cpp, src/model/memory_branch.cpp).
#include "cuda/model_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <numeric>

#include "cuda/attention.h"
#include "cuda/check.cuh"
#include "cuda/kernels.h"  // every kernel header, by concern
#include "cuda/lact_cuda.h"
#include "cuda/tnt_cuda.h"
#include "model/memory_branch.h"

namespace ttt::cuda {

using model::ModelConfig;

bool parse_activations(const std::string& s) {
  if (s == "bf16") return true;
  if (s == "fp32") return false;
  TTT_FAIL("unknown activation storage '" << s << "' (choose bf16 or fp32)");
}

bool gpu_supports(const ModelConfig& cfg, std::string* why) {
  auto no = [&](const std::string& s) {
    if (why) *why = s;
    return false;
  };
  if (cfg.head_dim_attn() > 128) return no("attention head dim " + std::to_string(cfg.head_dim_attn()) + " > 128");
  if (cfg.arch == "lact") {
    if (cfg.memory != "swiglu") return no("LaCT needs memory \"swiglu\"");
    return true;
  }
  // Titans / TNT: the GPU memory (titans_cuda.h) is the MLP memory with residual, momentum and decay, no Muon.
  if (cfg.memory != "mlp" || !cfg.mem_residual || !cfg.momentum || !cfg.decay || cfg.muon)
    return no("arch \"" + cfg.arch + "\" on the GPU needs memory \"mlp\" with mem_residual, momentum and decay on and "
              "muon off (the Titans memory of spec section 6); this config runs on the CPU");
  return true;
}

namespace {

lact::Norm lact_norm(const std::string& s) {
  if (s == "post") return lact::Norm::Post;
  if (s == "pre") return lact::Norm::Pre;
  return lact::Norm::None;
}

// A device array of T owned here, grown on demand; poisoned with NaN (all bits set: NaN in fp32 and in bf16) on
// allocation when asked.
template <class T>
struct DeviceArray {
  DeviceBuffer b;
  int64_t n = 0;
  T* p() const { return b.as<T>(); }
  void ensure(int64_t want, bool poison) {
    if (want <= n) return;
    b = DeviceBuffer(sizeof(T) * size_t(std::max<int64_t>(want, 1)));
    n = want;
    if (poison) b.fill_nan();
  }
};
using Buf = DeviceArray<float>;
using Buf16 = DeviceArray<bf16>;

}  // namespace

struct GpuModel::Impl {
  ModelConfig cfg;
  GpuModelOptions opt;
  Blas blas;
  // Parameter layout: one flat array in the order of model::parameter_shapes.
  model::Params<float> layout;  // names, shapes, index (values unused beyond sizes)
  std::vector<int64_t> offset;
  int64_t total = 0;
  Buf params, grads, adam_m, adam_v;
  DeviceBuffer masks;           // per-element trainable mask (bytes, flat like the parameters), when set
  bool have_masks = false;
  std::vector<int64_t> mask_offsets;
  DeviceBuffer dloss;           // device scalar: the CE backward's upstream gradient
  DeviceBuffer norm_work;       // rms_norm_backward's work buffer
  size_t norm_work_bytes = 0;

  // Sizes.
  int64_t D = 0, H = 0, d = 0, dh = 0, Ha = 0, hd = 0, F = 0, V = 0, L = 0;

  // Work buffers (capacity in rows).
  int64_t cap_rows = 0;
  std::map<std::string, Buf> bufs;
  std::map<std::pair<int64_t, int64_t>, std::unique_ptr<LactRunner<float>>> lact;
  DeviceBuffer ids_dev, tgt_dev, pos_dev, emb_order, emb_starts, emb_uniq;
  DeviceBuffer loss_dev, valid_dev;
  // Residual stream at the layer inputs, [L+1]: fp32 (xs), or bf16 (xs16) with bf16 activations.
  std::vector<Buf> xs;
  std::vector<Buf16> xs16;
  // bf16 activations (GpuModelOptions::bf16_activations with bf16 products): the residual stream kept for the
  // backward and the activations that are matrix-product operands (h, h2, sum, mm) are stored in bf16, in
  // bufs16 under the fp32 buffer's name; element-wise work reads and writes fp32.
  const bool act16;
  std::map<std::string, Buf16> bufs16;

  Impl(const ModelConfig& c, const GpuModelOptions& o)
      : cfg(c), opt(o), blas(o.math), act16(o.math == MathMode::BF16 && o.bf16_activations),
        titans_like(c.arch != "lact") {}
  bool titans_like;  // arch "titans" / "tnt": the memory branch runs through TntRunner
  std::map<std::pair<int64_t, int64_t>, std::unique_ptr<TntRunner<float>>> tnt;

  TntRunner<float>& tnt_runner(int64_t S, int64_t N) {
    auto key = std::make_pair(S, N);
    auto it = tnt.find(key);
    if (it != tnt.end()) return *it->second;
    titans::TntShape s;
    s.B = S * H;
    s.T = N;
    s.d = d;
    if (cfg.arch == "titans") {  // one memory, chunk C, never reset
      s.use_global = true;
      s.global_chunk = cfg.chunk;
      s.local_chunks.clear();
      s.qk_proj = false;
    } else {
      s.use_global = cfg.use_global;
      s.global_chunk = cfg.global_chunk;
      s.local_chunks = cfg.local_chunks;
      s.shard = cfg.shard;
      s.qk_proj = cfg.qk_proj;
    }
    s.dh.assign(size_t(s.num_memories()), dh);
    TitansOptions to;
    to.poison_workspace = opt.poison;
    if (tnt.size() >= 2) tnt.erase(tnt.begin());
    auto r = std::make_unique<TntRunner<float>>(s, /*with_grad=*/true, to);
    auto& ref = *r;
    tnt[key] = std::move(r);
    return ref;
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

  float* P(const std::string& name) const { return params.p() + offset[layout.index.at(name)]; }
  float* G(const std::string& name) const { return grads.p() + offset[layout.index.at(name)]; }
  float* B(const std::string& name) { return bufs.at(name).p(); }
  bf16* B16(const std::string& name) { return bufs16.at(name).p(); }
  // A product-operand activation: its bf16 copy with bf16 activations, else the fp32 buffer.
  Operand X(const std::string& name) { return act16 ? Operand(B16(name)) : Operand(B(name)); }

  void need(const std::string& name, int64_t n) { bufs[name].ensure(n, opt.poison); }
  void* norm_work_for(int64_t rows, int64_t cols) {
    const size_t want = rms_norm_backward_workspace(rows, cols);
    if (want > norm_work_bytes) {
      norm_work = DeviceBuffer(want);
      norm_work_bytes = want;
    }
    return norm_work.as<void>();
  }

  LactRunner<float>& lact_runner(int64_t S, int64_t N) {
    auto key = std::make_pair(S, N);
    auto it = lact.find(key);
    if (it != lact.end()) return *it->second;
    lact::Shape s;
    s.B = S * H;
    s.T = N;
    s.d = d;
    s.dh = dh;
    s.chunk = cfg.chunk;
    s.causal = true;
    s.momentum = cfg.momentum;
    s.muon = cfg.muon;
    s.norm = lact_norm(cfg.weight_norm);
    LactOptions lo;
    if (opt.math == MathMode::TF32 || (opt.math == MathMode::BF16 && cfg.muon)) lo.tf32 = true;
    else if (opt.math == MathMode::BF16) lo.bf16 = true;
    lo.poison_workspace = opt.poison;
    // One runner per shape; keep at most two (training and evaluation shapes).
    if (lact.size() >= 2) lact.erase(lact.begin());
    auto r = std::make_unique<LactRunner<float>>(s, /*with_grad=*/true, lo);
    auto& ref = *r;
    lact[key] = std::move(r);
    return ref;
  }

  void ensure_rows(int64_t rows, int64_t S, int64_t N) {
    const int64_t BHN = S * H * N;  // = rows * H
    const int64_t W = S * H * dh * d;  // one broadcast weight matrix over all sequence-heads
    const int64_t M = cfg.n_memories(), gate_cols = std::max<int64_t>(3, M) * H;
    const std::pair<const char*, int64_t> sizes[] = {
        {"rinv1", rows},        {"qkv", rows * 3 * D},  {"qa", rows * D},
        {"ka", rows * D},       {"attn", rows * D},     {"lse", rows * Ha},     {"qh", rows * D},
        {"kh", rows * D},       {"qnorm", rows * H},    {"knorm", rows * H},    {"vm", rows * D},
        {"zlr", rows * gate_cols},      {"rates", rows * gate_cols},    {"zm", rows * gate_cols},       {"mom", rows * gate_cols},
        {"zd", rows * gate_cols},       {"dec", rows * gate_cols},      {"thT", M * BHN},       {"etT", M * BHN},
        {"alT", M * BHN},       {"gthT", M * BHN},      {"getT", M * BHN},      {"galT", M * BHN},
        {"tw1b", M * W},        {"tw2b", M * W},        {"gtw1b", M * W},       {"gtw2b", M * W},
        {"qT", rows * D},       {"kT", rows * D},       {"vT", rows * D},       {"lrT", 3 * BHN},
        {"momT", BHN},          {"w0b", W},             {"w1b", W},             {"w2b", W},
        {"w0f", H * dh * d},    {"w2f", H * dh * d},    {"oT", rows * D},       {"o", rows * D},
        {"normed", rows * D},   {"rinvo", rows * H},    {"zs", rows * H},       {"gate", rows * H},
        {"sum", rows * D},      {"xmid", rows * D},     {"rinv2", rows},
        {"ga", rows * F},       {"up", rows * F},
        // backward
        {"dx", rows * D},       {"dxm", rows * D},      {"tmpD", rows * D},     {"dmm", rows * F},
        {"dga", rows * F},      {"dup", rows * F},      {"dh2", rows * D},      {"dsum", rows * D},
        {"dnormed", rows * D},  {"do", rows * D},       {"doT", rows * D},      {"dgate", rows * H},
        {"dzs", rows * H},      {"gw0b", W},            {"gw1b", W},            {"gw2b", W},
        {"gqT", rows * D},      {"gkT", rows * D},      {"gvT", rows * D},      {"glrT", 3 * BHN},
        {"gmomT", BHN},         {"dqh", rows * D},      {"dkh", rows * D},      {"dvm", rows * D},
        {"drates", rows * gate_cols},   {"dzlr", rows * gate_cols},     {"dmom", rows * H},     {"dzm", rows * H},
        {"dqkv", rows * 3 * D}, {"dqa", rows * D},      {"dka", rows * D},      {"dh", rows * D},
        {"dz", rows * D},       {"dzx", rows * D},      {"dwD", D},             {"gwf", H * dh * d},
        {"attn_work", int64_t(swa_backward_workspace(AttentionShape{S, N, Ha, hd, cfg.window}) / sizeof(float)) + 1},
    };
    for (auto& [name, n] : sizes) need(name, n);
    const std::pair<const char*, int64_t> operands[] = {{"h", rows * D}, {"h2", rows * D}, {"sum", rows * D},
                                                         {"mm", rows * F}};
    for (auto& [name, n] : operands) {
      if (act16) bufs16[name].ensure(n, opt.poison);
      else need(name, n);
    }
    if (act16) {
      need("xin", rows * D);
      need("xout", rows * D);
    }
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
  }

  // The residual stream at layer l's input (l = L: the final norm's input) as fp32: the kept array, or (bf16
  // activations) its bf16 copy widened into `xin`.
  const float* layer_input(int64_t l, int64_t rows) {
    if (!act16) return xs[size_t(l)].p();
    mk::from_bf16(xs16[size_t(l)].p(), B("xin"), rows * D);
    return B("xin");
  }
  // Where layer l writes its output (the embedding: l = -1), and keeping it: with bf16 activations the output is
  // rounded into xs16[l + 1] and `xout` keeps the rounded values, so what follows sees exactly what the backward's
  // recomputation will read.
  float* layer_output(int64_t l) { return act16 ? B("xout") : xs[size_t(l + 1)].p(); }
  void keep_output(int64_t l, int64_t rows) {
    if (act16) mk::round_store_bf16(B("xout"), xs16[size_t(l + 1)].p(), rows * D);
  }

  // ---- one layer ---------------------------------------------------------------------------------------
  std::string lp(int64_t l) const { return "layers." + std::to_string(l) + "."; }

  // Forward of layer l from x (rows x D) into out; every activation the backward needs stays in the buffers.
  void layer_forward(int64_t l, const float* x, float* out, int64_t S, int64_t N) {
    const int64_t rows = S * N;
    const std::string pre = lp(l);
    auto Pl = [&](const char* n) { return P(pre + n); };
    const int64_t* pos = pos_dev.as<int64_t>();
    // h = RMSNorm(x); qkv = h Wqkv
    if (act16) rms_norm_forward(x, Pl("attn_norm.weight"), B16("h"), B("rinv1"), rows, D, D, cfg.norm_eps);
    else rms_norm_forward(x, Pl("attn_norm.weight"), B("h"), B("rinv1"), rows, D, D, cfg.norm_eps);
    gemm(false, false, rows, 3 * D, D, 1.0f, X("h"), D, Pl("wqkv"), 3 * D, 0.0f, B("qkv"), 3 * D);
    const float* q = B("qkv");
    const float* k = B("qkv") + D;
    const float* v = B("qkv") + 2 * D;
    // Attention branch: RoPE on copies of q, k; flash sliding-window attention.
    mk::copy2d(q, 3 * D, B("qa"), D, rows, D);
    mk::copy2d(k, 3 * D, B("ka"), D, rows, D);
    rope_forward(B("qa"), B("qa"), pos, rows, Ha, hd, cfg.rope_theta);
    rope_forward(B("ka"), B("ka"), pos, rows, Ha, hd, cfg.rope_theta);
    // bf16 products: the tensor-core attention (same contract, bf16 operands, fp32 statistics and outputs).
    timed("attention", [&] {
      (opt.math == MathMode::BF16 ? swa_forward_bf16 : swa_forward)(AttentionShape{S, N, Ha, hd, cfg.window}, B("qa"),
                                                                    D, B("ka"), D, v, 3 * D, B("attn"), D, B("lse"),
                                                                    nullptr);
    });
    // Memory branch inputs (prepare_memory_inputs).
    mk::qk_prep_forward(q, 3 * D, Pl("ttt.q_scale"), Pl("ttt.q_offset"), B("qh"), B("qnorm"), rows, H, d, 1e-5);
    mk::qk_prep_forward(k, 3 * D, Pl("ttt.k_scale"), Pl("ttt.k_offset"), B("kh"), B("knorm"), rows, H, d, 1e-5);
    if (cfg.ttt_rope) {
      rope_forward(B("qh"), B("qh"), pos, rows, H, d, cfg.rope_theta);
      rope_forward(B("kh"), B("kh"), pos, rows, H, d, cfg.rope_theta);
    }
    const float* vm = v;
    int64_t ldvm = 3 * D;
    if (cfg.v_silu) {
      mk::silu_strided_forward(v, 3 * D, B("vm"), rows, D);
      vm = B("vm");
      ldvm = D;
    }
    // Per sequence-head layout of the memory operators.
    mk::heads_to_batch(B("qh"), D, B("qT"), S, N, H, d);
    mk::heads_to_batch(B("kh"), D, B("kT"), S, N, H, d);
    mk::heads_to_batch(vm, ldvm, B("vT"), S, N, H, d);
    if (titans_like) titans_forward(pre, S, N);
    else lact_forward(pre, S, N);
    mk::batch_to_heads(B("oT"), B("o"), D, S, N, H, d, false);
    // finish_memory_output: per-head RMSNorm, times silu(h W_s + b_s) per head.
    rms_norm_heads_forward(B("o"), Pl("ttt.o_norm.weight"), B("normed"), B("rinvo"), rows, D, H, cfg.norm_eps);
    gemm(false, false, rows, H, D, 1.0f, X("h"), D, Pl("ttt.scale.weight"), H, 0.0f, B("zs"), H);
    mk::bias_act_forward(B("zs"), Pl("ttt.scale.bias"), B("gate"), rows, H, 0.0, mk::Act::Silu);
    mk::gate_heads_forward(B("normed"), B("gate"), B("sum"), rows, H, d);
    // x + (attn + mem) Wo
    mk::axpy(B("sum"), B("attn"), 1.0f, rows * D);
    if (act16) mk::to_bf16(B("sum"), D, B16("sum"), D, rows, D);
    mk::copy2d(x, D, B("xmid"), D, rows, D);
    gemm(false, false, rows, D, D, 1.0f, X("sum"), D, Pl("wo"), D, 1.0f, B("xmid"), D);
    // MLP
    if (act16) rms_norm_forward(B("xmid"), Pl("mlp_norm.weight"), B16("h2"), B("rinv2"), rows, D, D, cfg.norm_eps);
    else rms_norm_forward(B("xmid"), Pl("mlp_norm.weight"), B("h2"), B("rinv2"), rows, D, D, cfg.norm_eps);
    gemm(false, false, rows, F, D, 1.0f, X("h2"), D, Pl("mlp.w_gate"), F, 0.0f, B("ga"), F);
    gemm(false, false, rows, F, D, 1.0f, X("h2"), D, Pl("mlp.w_up"), F, 0.0f, B("up"), F);
    if (act16) mk::swiglu_forward(B("ga"), B("up"), B16("mm"), rows * F);
    else mk::swiglu_forward(B("ga"), B("up"), B("mm"), rows * F);
    mk::copy2d(B("xmid"), D, out, D, rows, D);
    gemm(false, false, rows, D, F, 1.0f, X("mm"), F, Pl("mlp.w_down"), D, 1.0f, out, D);
  }

  // ttt.w0 / ttt.w2 of a layer: the parameter itself, or (low rank) A B + 0.5 I per head into buffer `tmp`.
  const float* resolve_weight(const std::string& pre, const std::string& name, const char* tmp) {
    if (!cfg.low_rank_init) return P(pre + name);
    const int64_t r = cfg.low_rank_rank;
    gemm_batched(false, false, dh, d, r, 1.0f, P(pre + name + ".a"), r, dh * r, P(pre + name + ".b"), d, r * d,
                      0.0f, B(tmp), d, dh * d, H);
    mk::add_diagonal(B(tmp), H, dh, d, 0.5f);
    return B(tmp);
  }
  // Gradient of ttt.w0 / ttt.w2 from dW [S][H, dh, d] (the broadcast copies): summed over sequences in order.
  void weight_grad(const std::string& pre, const std::string& name, const float* gb, int64_t S) {
    const int64_t per = H * dh * d;
    float* g = cfg.low_rank_init ? B("gwf") : G(pre + name);
    if (cfg.low_rank_init) TTT_CUDA_CHECK(cudaMemsetAsync(g, 0, sizeof(float) * per, nullptr));
    for (int64_t s = 0; s < S; ++s) mk::axpy(g, gb + s * per, 1.0f, per);
    if (!cfg.low_rank_init) return;
    const int64_t r = cfg.low_rank_rank;
    // W = A B: dA += dW B^T, dB += A^T dW (per head).
    gemm_batched(false, true, dh, r, d, 1.0f, g, d, dh * d, P(pre + name + ".b"), d, r * d, 1.0f,
                      G(pre + name + ".a"), r, dh * r, H);
    gemm_batched(true, false, r, d, dh, 1.0f, P(pre + name + ".a"), r, dh * r, g, d, dh * d, 1.0f,
                      G(pre + name + ".b"), d, r * d, H);
  }

  // LaCT (arch "lact"): rates softplus(h W_lr + b + softplus^-1(lr_init)) per matrix, momentum gate, the
  // initial fast weights broadcast to every sequence, the operator (memory_branch.cpp, record_memory_branch).
  void lact_forward(const std::string& pre, int64_t S, int64_t N) {
    const int64_t rows = S * N;
    auto Pl = [&](const char* n) { return P(pre + n); };
    gemm(false, false, rows, 3 * H, D, 1.0f, X("h"), D, Pl("ttt.lr.weight"), 3 * H, 0.0f, B("zlr"), 3 * H);
    mk::bias_act_forward(B("zlr"), Pl("ttt.lr.bias"), B("rates"), rows, 3 * H, std::log(std::expm1(cfg.lr_init)),
                         mk::Act::Softplus);
    if (cfg.momentum) {
      gemm(false, false, rows, H, D, 1.0f, X("h"), D, Pl("ttt.momentum.weight"), H, 0.0f, B("zm"), H);
      mk::bias_act_forward(B("zm"), Pl("ttt.momentum.bias"), B("mom"), rows, H, 0.0, mk::Act::Sigmoid);
    }
    for (int r = 0; r < 3; ++r) mk::cols_to_batch(B("rates"), 3 * H, r * H, B("lrT") + r * S * H * N, S, N, H);
    if (cfg.momentum) mk::cols_to_batch(B("mom"), H, 0, B("momT"), S, N, H);
    // Initial fast weights, broadcast to every sequence (memory_weights; low rank: A B + 0.5 I).
    const float* w0 = resolve_weight(pre, "ttt.w0", "w0f");
    const float* w2 = resolve_weight(pre, "ttt.w2", "w2f");
    const int64_t per = H * dh * d;
    for (int64_t s = 0; s < S; ++s) {
      TTT_CUDA_CHECK(cudaMemcpyAsync(B("w0b") + s * per, w0, sizeof(float) * per, cudaMemcpyDeviceToDevice, nullptr));
      TTT_CUDA_CHECK(cudaMemcpyAsync(B("w1b") + s * per, Pl("ttt.w1"), sizeof(float) * per, cudaMemcpyDeviceToDevice,
                                     nullptr));
      TTT_CUDA_CHECK(cudaMemcpyAsync(B("w2b") + s * per, w2, sizeof(float) * per, cudaMemcpyDeviceToDevice, nullptr));
    }
    lact::Inputs<float> in;
    in.w0 = B("w0b"), in.w1 = B("w1b"), in.w2 = B("w2b");
    in.q = B("qT"), in.k = B("kT"), in.v = B("vT");
    in.lr0 = B("lrT"), in.lr1 = B("lrT") + S * H * N, in.lr2 = B("lrT") + 2 * S * H * N;
    in.mom = cfg.momentum ? B("momT") : nullptr;
    timed("lact", [&] { lact_runner(S, N).forward(in, B("oT")); });
  }
  void lact_backward(const std::string& pre, int64_t S, int64_t N) {
    const int64_t rows = S * N;
    auto Pl = [&](const char* n) { return P(pre + n); };
    auto Gl = [&](const char* n) { return G(pre + n); };
    lact::Grads<float> g;
    g.w0 = B("gw0b"), g.w1 = B("gw1b"), g.w2 = B("gw2b");
    g.q = B("gqT"), g.k = B("gkT"), g.v = B("gvT");
    g.lr0 = B("glrT"), g.lr1 = B("glrT") + S * H * N, g.lr2 = B("glrT") + 2 * S * H * N;
    g.mom = cfg.momentum ? B("gmomT") : nullptr;
    timed("lact", [&] { lact_runner(S, N).backward(B("doT"), g); });
    weight_grad(pre, "ttt.w0", B("gw0b"), S);
    weight_grad(pre, "ttt.w2", B("gw2b"), S);
    {
      const int64_t per = H * dh * d;
      for (int64_t s = 0; s < S; ++s) mk::axpy(Gl("ttt.w1"), B("gw1b") + s * per, 1.0f, per);
    }
    // rates = softplus(h Wlr + b + shift)
    for (int r = 0; r < 3; ++r) mk::batch_to_cols(B("glrT") + r * S * H * N, B("drates"), 3 * H, r * H, S, N, H);
    mk::act_backward(B("zlr"), B("drates"), B("dzlr"), rows * 3 * H, std::log(std::expm1(cfg.lr_init)),
                     mk::Act::Softplus);
    gemm(true, false, D, 3 * H, rows, 1.0f, X("h"), D, B("dzlr"), 3 * H, 1.0f, Gl("ttt.lr.weight"), 3 * H);
    col_sum(B("dzlr"), rows, 3 * H, 3 * H, Gl("ttt.lr.bias"), true);
    gemm(false, true, rows, D, 3 * H, 1.0f, B("dzlr"), 3 * H, Pl("ttt.lr.weight"), 3 * H, 1.0f, B("dh"), D);
    if (cfg.momentum) {
      mk::batch_to_cols(B("gmomT"), B("dmom"), H, 0, S, N, H);
      mk::act_backward(B("zm"), B("dmom"), B("dzm"), rows * H, 0.0, mk::Act::Sigmoid);
      gemm(true, false, D, H, rows, 1.0f, X("h"), D, B("dzm"), H, 1.0f, Gl("ttt.momentum.weight"), H);
      col_sum(B("dzm"), rows, H, H, Gl("ttt.momentum.bias"), true);
      gemm(false, true, rows, D, H, 1.0f, B("dzm"), H, Pl("ttt.momentum.weight"), H, 1.0f, B("dh"), D);
    }
  }

  // Titans / TNT: M memories (global first), each MLP + MSE with momentum and decay; gates theta =
  // titans_base_lr * sigmoid(h W_lr + b), eta = sigmoid(h W_m + b), alpha = sigmoid(h W_d + b), column
  // m*H + h for memory m, head h; the branch through TntRunner (tnt_cuda.h), which sums the memories.
  void titans_forward(const std::string& pre, int64_t S, int64_t N) {
    const int64_t rows = S * N, M = cfg.n_memories(), MH = M * H, BHN = S * H * N, W = S * H * dh * d;
    auto Pl = [&](const char* n) { return P(pre + n); };
    const char* gates[3][4] = {{"ttt.lr.weight", "ttt.lr.bias", "zlr", "rates"},
                               {"ttt.momentum.weight", "ttt.momentum.bias", "zm", "mom"},
                               {"ttt.decay.weight", "ttt.decay.bias", "zd", "dec"}};
    const char* per_batch[3] = {"thT", "etT", "alT"};
    for (int gi = 0; gi < 3; ++gi) {
      gemm(false, false, rows, MH, D, 1.0f, X("h"), D, Pl(gates[gi][0]), MH, 0.0f, B(gates[gi][2]), MH);
      mk::bias_act_forward(B(gates[gi][2]), Pl(gates[gi][1]), B(gates[gi][3]), rows, MH, 0.0, mk::Act::Sigmoid);
      if (gi == 0) mk::scale(B("rates"), float(cfg.titans_base_lr), rows * MH);
      for (int64_t m = 0; m < M; ++m) mk::cols_to_batch(B(gates[gi][3]), MH, m * H, B(per_batch[gi]) + m * BHN, S, N, H);
    }
    titans::TntInputs<float> in;
    in.q = B("qT"), in.k = B("kT"), in.v = B("vT");
    const int64_t per = H * dh * d;
    for (int64_t m = 0; m < M; ++m) {
      const auto names = model::memory_weight_names(cfg, m);  // prefix + "w1", "w2"
      for (int64_t s = 0; s < S; ++s) {
        TTT_CUDA_CHECK(cudaMemcpyAsync(B("tw1b") + m * W + s * per, P(pre + names[0]), sizeof(float) * per,
                                       cudaMemcpyDeviceToDevice, nullptr));
        TTT_CUDA_CHECK(cudaMemcpyAsync(B("tw2b") + m * W + s * per, P(pre + names[1]), sizeof(float) * per,
                                       cudaMemcpyDeviceToDevice, nullptr));
      }
      in.mems.push_back({B("tw1b") + m * W, B("tw2b") + m * W, B("thT") + m * BHN, B("etT") + m * BHN,
                         B("alT") + m * BHN});
    }
    timed("tnt", [&] { tnt_runner(S, N).forward(in, B("oT")); });
  }
  void titans_backward(const std::string& pre, int64_t S, int64_t N) {
    const int64_t rows = S * N, M = cfg.n_memories(), MH = M * H, BHN = S * H * N, W = S * H * dh * d;
    auto Pl = [&](const char* n) { return P(pre + n); };
    auto Gl = [&](const char* n) { return G(pre + n); };
    titans::TntGrads<float> g;
    g.q = B("gqT"), g.k = B("gkT"), g.v = B("gvT");
    for (int64_t m = 0; m < M; ++m)
      g.mems.push_back({B("gtw1b") + m * W, B("gtw2b") + m * W, B("gthT") + m * BHN, B("getT") + m * BHN,
                        B("galT") + m * BHN});
    timed("tnt", [&] { tnt_runner(S, N).backward(B("doT"), g); });
    const int64_t per = H * dh * d;
    for (int64_t m = 0; m < M; ++m) {
      const auto names = model::memory_weight_names(cfg, m);
      for (int64_t s = 0; s < S; ++s) {
        mk::axpy(G(pre + names[0]), B("gtw1b") + m * W + s * per, 1.0f, per);
        mk::axpy(G(pre + names[1]), B("gtw2b") + m * W + s * per, 1.0f, per);
      }
    }
    const char* gates[3][3] = {{"ttt.lr.weight", "ttt.lr.bias", "zlr"},
                               {"ttt.momentum.weight", "ttt.momentum.bias", "zm"},
                               {"ttt.decay.weight", "ttt.decay.bias", "zd"}};
    const char* per_batch[3] = {"gthT", "getT", "galT"};
    for (int gi = 0; gi < 3; ++gi) {
      for (int64_t m = 0; m < M; ++m) mk::batch_to_cols(B(per_batch[gi]) + m * BHN, B("drates"), MH, m * H, S, N, H);
      if (gi == 0) mk::scale(B("drates"), float(cfg.titans_base_lr), rows * MH);
      mk::act_backward(B(gates[gi][2]), B("drates"), B("dzlr"), rows * MH, 0.0, mk::Act::Sigmoid);
      gemm(true, false, D, MH, rows, 1.0f, X("h"), D, B("dzlr"), MH, 1.0f, Gl(gates[gi][0]), MH);
      col_sum(B("dzlr"), rows, MH, MH, Gl(gates[gi][1]), true);
      gemm(false, true, rows, D, MH, 1.0f, B("dzlr"), MH, Pl(gates[gi][0]), MH, 1.0f, B("dh"), D);
    }
  }

  // Backward of layer l (after layer_forward(l) on the same input x): dx holds d/d(out) on entry and
  // d/d(x) on return. Parameter gradients are accumulated.
  void layer_backward(int64_t l, const float* x, int64_t S, int64_t N) {
    const int64_t rows = S * N;
    const std::string pre = lp(l);
    auto Pl = [&](const char* n) { return P(pre + n); };
    auto Gl = [&](const char* n) { return G(pre + n); };
    const int64_t* pos = pos_dev.as<int64_t>();
    float* dx = B("dx");
    // ---- MLP: out = xmid + swiglu(h2) Wd
    gemm(true, false, F, D, rows, 1.0f, X("mm"), F, dx, D, 1.0f, Gl("mlp.w_down"), D);
    gemm(false, true, rows, F, D, 1.0f, dx, D, Pl("mlp.w_down"), D, 0.0f, B("dmm"), F);
    mk::swiglu_backward(B("ga"), B("up"), B("dmm"), B("dga"), B("dup"), rows * F);
    gemm(true, false, D, F, rows, 1.0f, X("h2"), D, B("dga"), F, 1.0f, Gl("mlp.w_gate"), F);
    gemm(true, false, D, F, rows, 1.0f, X("h2"), D, B("dup"), F, 1.0f, Gl("mlp.w_up"), F);
    gemm(false, true, rows, D, F, 1.0f, B("dga"), F, Pl("mlp.w_gate"), F, 0.0f, B("dh2"), D);
    gemm(false, true, rows, D, F, 1.0f, B("dup"), F, Pl("mlp.w_up"), F, 1.0f, B("dh2"), D);
    rms_norm_backward(B("xmid"), Pl("mlp_norm.weight"), B("rinv2"), B("dh2"), B("tmpD"), B("dwD"),
                      norm_work_for(rows, D), rows, D, D);
    mk::axpy(Gl("mlp_norm.weight"), B("dwD"), 1.0f, D);
    float* dxm = B("dxm");
    mk::copy2d(dx, D, dxm, D, rows, D);
    mk::axpy(dxm, B("tmpD"), 1.0f, rows * D);
    // ---- xmid = x + sum Wo
    gemm(true, false, D, D, rows, 1.0f, X("sum"), D, dxm, D, 1.0f, Gl("wo"), D);
    gemm(false, true, rows, D, D, 1.0f, dxm, D, Pl("wo"), D, 0.0f, B("dsum"), D);
    // ---- memory output: sum = attn + normed * gate
    mk::gate_heads_backward(B("normed"), B("gate"), B("dsum"), B("dnormed"), B("dgate"), rows, H, d);
    mk::act_backward(B("zs"), B("dgate"), B("dzs"), rows * H, 0.0, mk::Act::Silu);
    gemm(true, false, D, H, rows, 1.0f, X("h"), D, B("dzs"), H, 1.0f, Gl("ttt.scale.weight"), H);
    col_sum(B("dzs"), rows, H, H, Gl("ttt.scale.bias"), true);
    gemm(false, true, rows, D, H, 1.0f, B("dzs"), H, Pl("ttt.scale.weight"), H, 0.0f, B("dh"), D);
    rms_norm_heads_backward(B("o"), Pl("ttt.o_norm.weight"), B("rinvo"), B("dnormed"), B("do"), B("dwD"),
                            norm_work_for(rows, D), rows, D, H);
    mk::axpy(Gl("ttt.o_norm.weight"), B("dwD"), 1.0f, D);
    // ---- the memory operator
    mk::heads_to_batch(B("do"), D, B("doT"), S, N, H, d);
    if (titans_like) titans_backward(pre, S, N);
    else lact_backward(pre, S, N);
    mk::batch_to_heads(B("gqT"), B("dqh"), D, S, N, H, d, false);
    mk::batch_to_heads(B("gkT"), B("dkh"), D, S, N, H, d, false);
    mk::batch_to_heads(B("gvT"), B("dvm"), D, S, N, H, d, false);
    // ---- attention: overwrites dq, dk (via RoPE's adjoint) and dv of dqkv
    const float* q = B("qkv");
    const float* k = B("qkv") + D;
    const float* v = B("qkv") + 2 * D;
    float* dqkv = B("dqkv");
    timed("attention", [&] {
      (opt.math == MathMode::BF16 ? swa_backward_bf16 : swa_backward)(
          AttentionShape{S, N, Ha, hd, cfg.window}, B("qa"), D, B("ka"), D, v, 3 * D, B("attn"), D, B("lse"), B("dsum"),
          D, B("dqa"), D, B("dka"), D, dqkv + 2 * D, 3 * D, B("attn_work"), nullptr);
    });
    rope_backward(B("dqa"), B("dqa"), pos, rows, Ha, hd, cfg.rope_theta);
    rope_backward(B("dka"), B("dka"), pos, rows, Ha, hd, cfg.rope_theta);
    mk::copy2d(B("dqa"), D, dqkv, 3 * D, rows, D);
    mk::copy2d(B("dka"), D, dqkv + D, 3 * D, rows, D);
    // ---- memory q/k/v preparation
    if (cfg.ttt_rope) {
      rope_backward(B("dqh"), B("dqh"), pos, rows, H, d, cfg.rope_theta);
      rope_backward(B("dkh"), B("dkh"), pos, rows, H, d, cfg.rope_theta);
    }
    mk::qk_prep_backward(q, 3 * D, Pl("ttt.q_scale"), Pl("ttt.q_offset"), B("qnorm"), B("dqh"), dqkv, 3 * D, B("dz"),
                         B("dzx"), rows, H, d, 1e-5);
    col_sum(B("dzx"), rows, D, D, Gl("ttt.q_scale"), true);
    col_sum(B("dz"), rows, D, D, Gl("ttt.q_offset"), true);
    mk::qk_prep_backward(k, 3 * D, Pl("ttt.k_scale"), Pl("ttt.k_offset"), B("knorm"), B("dkh"), dqkv + D, 3 * D,
                         B("dz"), B("dzx"), rows, H, d, 1e-5);
    col_sum(B("dzx"), rows, D, D, Gl("ttt.k_scale"), true);
    col_sum(B("dz"), rows, D, D, Gl("ttt.k_offset"), true);
    if (cfg.v_silu) mk::silu_strided_backward(v, 3 * D, B("dvm"), dqkv + 2 * D, 3 * D, rows, D);
    else mk::copy2d(B("dvm"), D, dqkv + 2 * D, 3 * D, rows, D, /*accumulate=*/true);
    // ---- qkv = h Wqkv; h = RMSNorm(x)
    gemm(true, false, D, 3 * D, rows, 1.0f, X("h"), D, dqkv, 3 * D, 1.0f, Gl("wqkv"), 3 * D);
    gemm(false, true, rows, D, 3 * D, 1.0f, dqkv, 3 * D, Pl("wqkv"), 3 * D, 1.0f, B("dh"), D);
    rms_norm_backward(x, Pl("attn_norm.weight"), B("rinv1"), B("dh"), B("tmpD"), B("dwD"), norm_work_for(rows, D),
                      rows, D, D);
    mk::axpy(Gl("attn_norm.weight"), B("dwD"), 1.0f, D);
    mk::copy2d(dxm, D, dx, D, rows, D);
    mk::axpy(dx, B("tmpD"), 1.0f, rows * D);
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
  m.params.ensure(m.total, false);
  m.grads.ensure(m.total, false);
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
  TTT_CUDA_CHECK(cudaMemsetAsync(impl_->grads.p(), 0, sizeof(float) * size_t(impl_->total), nullptr));
}

void GpuModel::download_grads(std::vector<ag::Mat<float>>& g) const {
  const Impl& m = *impl_;
  model::Params<float> shape = model::make_params<float>(m.cfg);
  g = std::move(shape.values);
  for (size_t i = 0; i < g.size(); ++i)
    TTT_CUDA_CHECK(cudaMemcpy(g[i].data.data(), m.grads.p() + m.offset[i], sizeof(float) * g[i].size(),
                              cudaMemcpyDeviceToHost));
}

GpuModel::Result GpuModel::forward(const model::Batch& b, bool backward, double grad_scale, bool want_token_loss,
                                   bool want_logits) {
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
  m.ensure_rows(rows, S, N);
  m.need("logits", rows * V);  // and, in place, their gradient
  m.need("hf", rows * D);
  m.need("rinvf", rows);
  m.need("row_loss", rows);
  m.need("lse_ce", rows);
  // Token ids, targets, positions.
  auto upload = [](DeviceBuffer& dst, const void* src, size_t bytes) {
    if (dst.bytes() < bytes) dst = DeviceBuffer(std::max<size_t>(bytes, 8));
    TTT_CUDA_CHECK(cudaMemcpy(dst.as<void>(), src, bytes, cudaMemcpyHostToDevice));
  };
  upload(m.ids_dev, b.inputs.data(), sizeof(int32_t) * size_t(rows));
  upload(m.tgt_dev, b.targets.data(), sizeof(int32_t) * size_t(rows));
  std::vector<int64_t> pos(static_cast<size_t>(rows));
  for (int64_t s = 0; s < S; ++s)
    for (int64_t i = 0; i < N; ++i) pos[size_t(s * N + i)] = i;
  upload(m.pos_dev, pos.data(), sizeof(int64_t) * size_t(rows));

  mk::embedding_forward(m.P("embed.weight"), m.ids_dev.as<int32_t>(), m.layer_output(-1), rows, D);
  m.keep_output(-1, rows);
  for (int64_t l = 0; l < m.L; ++l) {
    m.layer_forward(l, m.layer_input(l, rows), m.layer_output(l), S, N);
    m.keep_output(l, rows);
  }
  // The final norm's input: the last layer's output as kept (rounded in place with bf16 activations).
  const float* x_final = m.layer_output(m.L - 1);
  rms_norm_forward(x_final, m.P("final_norm.weight"), m.B("hf"), m.B("rinvf"), rows, D, D, m.cfg.norm_eps);
  m.gemm(false, false, rows, V, D, 1.0f, m.B("hf"), D, m.P("lm_head.weight"), V, 0.0f, m.B("logits"), V);
  cross_entropy_forward(m.B("logits"), m.tgt_dev.as<int32_t>(), m.B("lse_ce"), m.B("row_loss"), m.loss_dev.as<float>(),
                        m.valid_dev.as<int32_t>(), rows, V);
  float loss = 0;
  TTT_CUDA_CHECK(cudaMemcpy(&loss, m.loss_dev.as<float>(), sizeof(float), cudaMemcpyDeviceToHost));
  res.loss = double(loss);
  if (want_token_loss) {
    std::vector<float> rl(static_cast<size_t>(rows));
    TTT_CUDA_CHECK(cudaMemcpy(rl.data(), m.B("row_loss"), sizeof(float) * size_t(rows), cudaMemcpyDeviceToHost));
    res.token_loss.assign(rl.begin(), rl.end());
  }
  if (want_logits) {
    res.logits.resize(size_t(rows * V));
    TTT_CUDA_CHECK(cudaMemcpy(res.logits.data(), m.B("logits"), sizeof(float) * size_t(rows * V), cudaMemcpyDeviceToHost));
  }
  if (!backward || res.valid == 0) return res;

  // ---- backward
  const float ds = float(grad_scale);
  TTT_CUDA_CHECK(cudaMemcpy(m.dloss.as<float>(), &ds, sizeof(float), cudaMemcpyHostToDevice));
  float* dlogits = m.B("logits");  // in place: the logits are not needed after this
  cross_entropy_backward(m.B("logits"), m.tgt_dev.as<int32_t>(), m.B("lse_ce"), m.valid_dev.as<int32_t>(),
                         m.dloss.as<float>(), dlogits, rows, V);
  m.gemm(true, false, D, V, rows, 1.0f, m.B("hf"), D, dlogits, V, 1.0f, m.G("lm_head.weight"), V);
  m.gemm(false, true, rows, D, V, 1.0f, dlogits, V, m.P("lm_head.weight"), V, 0.0f, m.B("dh"), D);
  rms_norm_backward(x_final, m.P("final_norm.weight"), m.B("rinvf"), m.B("dh"), m.B("dx"), m.B("dwD"),
                    m.norm_work_for(rows, D), rows, D, D);
  mk::axpy(m.G("final_norm.weight"), m.B("dwD"), 1.0f, D);
  for (int64_t l = m.L - 1; l >= 0; --l) {
    // The work buffers hold the last layer's activations already; the others are recomputed from their input.
    // The recomputation's output (layer_output) is not kept again: it equals what the forward kept.
    const float* x = m.layer_input(l, rows);
    if (l != m.L - 1) m.layer_forward(l, x, m.layer_output(l), S, N);
    m.layer_backward(l, x, S, N);
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
  mk::embedding_backward(m.B("dx"), m.emb_order.as<int32_t>(), m.emb_starts.as<int32_t>(), m.emb_uniq.as<int32_t>(),
                         int64_t(uniq.size()), m.G("embed.weight"), D);
  TTT_CUDA_CHECK(cudaDeviceSynchronize());
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
  if (m.have_masks) mk::zero_where_masked(m.grads.p(), m.masks.as<uint8_t>(), m.total);
}

double GpuModel::clip_grad_norm(double max_norm) {
  Impl& m = *impl_;
  const double norm = std::sqrt(mk::sum_squares(m.grads.p(), m.total));
  if (max_norm > 0 && norm > max_norm && std::isfinite(norm)) mk::scale(m.grads.p(), float(max_norm / norm), m.total);
  return norm;
}

void GpuModel::upload_optimizer(const train::AdamW& opt) {
  Impl& m = *impl_;
  TTT_CHECK(opt.names() == m.layout.names, "GPU model: the optimizer's tensors do not match the parameters");
  m.adam_m.ensure(m.total, false);
  m.adam_v.ensure(m.total, false);
  for (size_t i = 0; i < m.offset.size(); ++i) {
    TTT_CUDA_CHECK(cudaMemcpy(m.adam_m.p() + m.offset[i], opt.m()[i].data(), sizeof(float) * opt.m()[i].size(),
                              cudaMemcpyHostToDevice));
    TTT_CUDA_CHECK(cudaMemcpy(m.adam_v.p() + m.offset[i], opt.v()[i].data(), sizeof(float) * opt.v()[i].size(),
                              cudaMemcpyHostToDevice));
  }
  set_trainable(opt.trainable());
}

void GpuModel::adamw_step(train::AdamW& opt, double lr) {
  Impl& m = *impl_;
  TTT_CHECK(m.adam_m.n >= m.total, "GPU model: upload_optimizer() before adamw_step()");
  const int64_t t = opt.advance_step();
  for (size_t i = 0; i < m.offset.size(); ++i) {
    const int64_t n = (i + 1 < m.offset.size() ? m.offset[i + 1] : m.total) - m.offset[i];
    AdamWParams a;
    a.lr = lr;
    a.beta1 = opt.config().beta1;
    a.beta2 = opt.config().beta2;
    a.eps = opt.config().eps;
    a.weight_decay = opt.config().weight_decay;
    a.step = t;
    a.decay = opt.decayed(i);
    const uint8_t* mask = m.have_masks ? m.masks.as<uint8_t>() + m.offset[i] : nullptr;
    cuda::adamw_step(m.params.p() + m.offset[i], m.grads.p() + m.offset[i], m.adam_m.p() + m.offset[i],
               m.adam_v.p() + m.offset[i], mask, n, a);
  }
}

void GpuModel::download_optimizer(train::AdamW& opt) const {
  const Impl& m = *impl_;
  TTT_CHECK(m.adam_m.n >= m.total, "GPU model: no optimizer state on the device");
  for (size_t i = 0; i < m.offset.size(); ++i) {
    TTT_CUDA_CHECK(cudaMemcpy(opt.m()[i].data(), m.adam_m.p() + m.offset[i], sizeof(float) * opt.m()[i].size(),
                              cudaMemcpyDeviceToHost));
    TTT_CUDA_CHECK(cudaMemcpy(opt.v()[i].data(), m.adam_v.p() + m.offset[i], sizeof(float) * opt.v()[i].size(),
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
