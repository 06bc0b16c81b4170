// GpuStreamer (generate_cuda.h): one token at a time through the layers of model::forward, the memory branch
// through a streaming LactRunner per layer. Each step names the CPU op it mirrors (src/infer/stream.cpp).
#include "cuda/generate_cuda.h"

#include <cuda_runtime.h>

#include <cmath>
#include <map>

#include "cuda/blas_cuda.h"
#include "cuda/check.cuh"
#include "cuda/kernels.h"  // every kernel header, by concern
#include "cuda/lact_cuda.h"
#include "cuda/model_cuda.h"  // gpu_supports
#include "model/memory_branch.h"

namespace ttt::cuda {

using model::ModelConfig;

bool gpu_streaming_supports(const ModelConfig& cfg, std::string* why) {
  // What the GPU model runs (model_cuda.h), with a window the single-query attention kernel holds.
  if (!gpu_supports(cfg, why)) return false;
  if (cfg.window > 8192) {
    if (why) *why = "window " + std::to_string(cfg.window) + " > 8192";
    return false;
  }
  return true;
}

namespace {

lact::Norm lact_norm(const std::string& s) {
  if (s == "post") return lact::Norm::Post;
  if (s == "pre") return lact::Norm::Pre;
  return lact::Norm::None;
}

}  // namespace

struct GpuStreamer::Impl {
  ModelConfig cfg;
  Blas blas{MathMode::FP32};
  int64_t D = 0, H = 0, d = 0, dh = 0, Ha = 0, hd = 0, F = 0, V = 0, L = 0, C = 0, W = 0, pos = 0;
  std::map<std::string, DeviceBuffer> params;  // by name
  // One Titans memory of a layer (arch "titans": one; "tnt": global + locals), as the CPU StreamingModel keeps it.
  struct TitansMem {
    int64_t chunk = 0, shard = 0, col0 = 0, pend = 0;  // shard 0: never reset; col0: its gate columns m*H
    bool qk = false;
    DeviceBuffer w1, w2, s1, s2, w10, w20;            // weights [H,dh,d] / [H,d,dh], momentum, initial weights
    DeviceBuffer pk, pv, pth, pet, pal;               // the unfinished chunk: [H, chunk, d], [H, chunk]
    DeviceBuffer kk, ksq;                             // Q-K projection: sum k k^T [H,d,d], sum ||k||^2 [H] (double)
  };
  struct Layer {
    DeviceBuffer ring_k, ring_v;                            // [W, D]
    DeviceBuffer pq, pk, pv, plr, pmom, po;                 // the unfinished chunk: [H, C, d], [3][H, C], [H, C]
    std::unique_ptr<LactRunner<float>> lact;
    std::vector<TitansMem> mems;
  };
  std::vector<Layer> layers;
  // One-token work buffers.
  std::map<std::string, DeviceBuffer> work;
  DeviceBuffer id_dev, pos_dev, rope_pos;
  size_t state = 0, workspace = 0;

  float* P(const std::string& n) const { return params.at(n).as<float>(); }
  float* B(const char* n) { return work.at(n).as<float>(); }

  lact::Inputs<float> chunk_inputs(Layer& ly) const {
    lact::Inputs<float> in;
    in.q = ly.pq.as<float>(), in.k = ly.pk.as<float>(), in.v = ly.pv.as<float>();
    in.lr0 = ly.plr.as<float>(), in.lr1 = ly.plr.as<float>() + H * C, in.lr2 = ly.plr.as<float>() + 2 * H * C;
    in.mom = cfg.momentum ? ly.pmom.as<float>() : nullptr;
    return in;
  }

  // LaCT memory for the token at row i of the unfinished chunk: gates, pending rows, apply -> B("o").
  void lact_token(Layer& ly, int64_t l, const float* vm, int64_t i) {
    const std::string pre = "layers." + std::to_string(l) + ".";
    auto Pl = [&](const char* n) { return P(pre + n); };
      blas.gemm(false, false, 1, 3 * H, D, 1.0f, B("h"), D, Pl("ttt.lr.weight"), 3 * H, 0.0f, B("zlr"), 3 * H);
      mk::bias_act_forward(B("zlr"), Pl("ttt.lr.bias"), B("rates"), 1, 3 * H, std::log(std::expm1(cfg.lr_init)),
                           mk::Act::Softplus);
      // Head h's d values go to row i of [H, C, d]: H rows of d, destination stride C*d.
      mk::copy2d(B("qh"), d, ly.pq.as<float>() + i * d, C * d, H, d);
      mk::copy2d(B("kh"), d, ly.pk.as<float>() + i * d, C * d, H, d);
      mk::copy2d(vm, d, ly.pv.as<float>() + i * d, C * d, H, d);
      for (int r = 0; r < 3; ++r) mk::copy2d(B("rates") + r * H, 1, ly.plr.as<float>() + r * H * C + i, C, H, 1);
      if (cfg.momentum) {
        blas.gemm(false, false, 1, H, D, 1.0f, B("h"), D, Pl("ttt.momentum.weight"), H, 0.0f, B("zm"), H);
        mk::bias_act_forward(B("zm"), Pl("ttt.momentum.bias"), B("mom"), 1, H, 0.0, mk::Act::Sigmoid);
        mk::copy2d(B("mom"), 1, ly.pmom.as<float>() + i, C, H, 1);
      }
      const lact::Inputs<float> in = chunk_inputs(ly);
      ly.lact->stream_apply(in, i, 1, ly.po.as<float>());
      mk::copy2d(ly.po.as<float>() + i * d, C * d, B("o"), d, H, d);  // [H, d] rows = the token's [1, D]
  }

  // Titans / TNT memories for the token at position pos (stream.cpp's memory loop): every memory applies with
  // its current weights (local ones read Q-K projected queries), then takes the token into its unfinished chunk,
  // resets at the end of its shard, or updates at the end of its chunk. Output summed into B("o").
  void titans_token(Layer& ly, int64_t l, const float* vm) {
    const std::string pre = "layers." + std::to_string(l) + ".";
    auto Pl = [&](const char* n) { return P(pre + n); };
    const int64_t M = int64_t(ly.mems.size()), MH = M * H;
    const char* gates[3][3] = {{"ttt.lr.weight", "ttt.lr.bias", "th"},
                               {"ttt.momentum.weight", "ttt.momentum.bias", "et"},
                               {"ttt.decay.weight", "ttt.decay.bias", "al"}};
    for (int gi = 0; gi < 3; ++gi) {
      blas.gemm(false, false, 1, MH, D, 1.0f, B("h"), D, Pl(gates[gi][0]), MH, 0.0f, B("zg"), MH);
      mk::bias_act_forward(B("zg"), Pl(gates[gi][1]), B(gates[gi][2]), 1, MH, 0.0, mk::Act::Sigmoid);
    }
    mk::scale(B("th"), float(cfg.titans_base_lr), MH);
    TTT_CUDA_CHECK(cudaMemsetAsync(B("o"), 0, sizeof(float) * size_t(D), nullptr));
    const int64_t P = d * dh;
    for (TitansMem& m : ly.mems) {
      const float* read = B("qh");
      if (m.qk) {
        mk::qk_project_one(B("qh"), m.kk.as<float>(), m.ksq.as<double>(), B("qp"), H, d);
        read = B("qp");
      }
      // o += read + W2 silu(W1 read), per head.
      blas.gemm_batched(false, true, 1, dh, d, 1.0f, read, d, d, m.w1.as<float>(), d, P, 0.0f, B("tz"), dh, dh, H);
      mk::silu_strided_forward(B("tz"), H * dh, B("ts"), 1, H * dh);
      mk::axpy(B("o"), read, 1.0f, D);
      blas.gemm_batched(false, true, 1, d, dh, 1.0f, B("ts"), dh, dh, m.w2.as<float>(), dh, P, 1.0f, B("o"), d, d, H);
      // The token joins the unfinished chunk (row m.pend of [H, chunk, .]).
      const int64_t Cm = m.chunk, r = m.pend;
      mk::copy2d(B("kh"), d, m.pk.as<float>() + r * d, Cm * d, H, d);
      mk::copy2d(vm, d, m.pv.as<float>() + r * d, Cm * d, H, d);
      mk::copy2d(B("th") + m.col0, 1, m.pth.as<float>() + r, Cm, H, 1);
      mk::copy2d(B("et") + m.col0, 1, m.pet.as<float>() + r, Cm, H, 1);
      mk::copy2d(B("al") + m.col0, 1, m.pal.as<float>() + r, Cm, H, 1);
      ++m.pend;
      if (m.shard > 0 && (pos + 1) % m.shard == 0) {  // shard finished: back to W0 (its last chunk never updates)
        TTT_CUDA_CHECK(cudaMemcpyAsync(m.w1.as<void>(), m.w10.as<void>(), m.w1.bytes(), cudaMemcpyDeviceToDevice, nullptr));
        TTT_CUDA_CHECK(cudaMemcpyAsync(m.w2.as<void>(), m.w20.as<void>(), m.w2.bytes(), cudaMemcpyDeviceToDevice, nullptr));
        TTT_CUDA_CHECK(cudaMemsetAsync(m.s1.as<void>(), 0, m.s1.bytes(), nullptr));
        TTT_CUDA_CHECK(cudaMemsetAsync(m.s2.as<void>(), 0, m.s2.bytes(), nullptr));
        TTT_CUDA_CHECK(cudaMemsetAsync(m.kk.as<void>(), 0, m.kk.bytes(), nullptr));
        TTT_CUDA_CHECK(cudaMemsetAsync(m.ksq.as<void>(), 0, m.ksq.bytes(), nullptr));
        m.pend = 0;
      } else if (m.pend == Cm) {
        titans_update(m);
        m.pend = 0;
      }
    }
  }

  // One chunk update of a Titans memory (engine record_update: MLP + MSE, momentum, decay), batched over heads:
  // Z = K W1^T, s = silu(Z), Y = K + s W2^T, E = theta (Y - V); dW2 = -2 E^T s, dW1 = -(2 (E W2) silu'(Z))^T K;
  // S = dW + mean(eta) S, W = (1 - mean(alpha)) W + S. Then the Q-K sums take the chunk's keys.
  void titans_update(TitansMem& m) {
    const int64_t Cm = m.chunk, P = d * dh;
    float* Z = B("uz");
    float* Sg = B("us");
    float* Y = B("uy");
    float* E = B("ue");
    float* Mm = B("um");
    const float* K = m.pk.as<float>();
    blas.gemm_batched(false, true, Cm, dh, d, 1.0f, K, d, Cm * d, m.w1.as<float>(), d, P, 0.0f, Z, dh, Cm * dh, H);
    mk::silu_strided_forward(Z, H * Cm * dh, Sg, 1, H * Cm * dh);
    mk::copy2d(K, H * Cm * d, Y, H * Cm * d, 1, H * Cm * d);
    blas.gemm_batched(false, true, Cm, d, dh, 1.0f, Sg, dh, Cm * dh, m.w2.as<float>(), dh, P, 1.0f, Y, d, Cm * d, H);
    mk::scaled_error(Y, m.pv.as<float>(), m.pth.as<float>(), E, H * Cm, d);
    blas.gemm_batched(true, false, d, dh, Cm, -2.0f, E, d, Cm * d, Sg, dh, Cm * dh, 0.0f, B("ud2"), dh, P, H);
    blas.gemm_batched(false, false, Cm, dh, d, 1.0f, E, d, Cm * d, m.w2.as<float>(), dh, P, 0.0f, Mm, dh, Cm * dh, H);
    mk::dsilu_mul(Mm, Z, Mm, H * Cm * dh, 2.0f);
    blas.gemm_batched(true, false, dh, d, Cm, -1.0f, Mm, dh, Cm * dh, K, d, Cm * d, 0.0f, B("ud1"), d, P, H);
    mk::row_mean(m.pet.as<float>(), H, Cm, B("ebar"));
    mk::row_mean(m.pal.as<float>(), H, Cm, B("abar"));
    mk::titans_step(m.w1.as<float>(), m.s1.as<float>(), B("ud1"), B("ebar"), B("abar"), H, P);
    mk::titans_step(m.w2.as<float>(), m.s2.as<float>(), B("ud2"), B("ebar"), B("abar"), H, P);
    if (m.qk) {
      blas.gemm_batched(true, false, d, d, Cm, 1.0f, K, d, Cm * d, K, d, Cm * d, 1.0f, m.kk.as<float>(), d, d * d, H);
      mk::add_row_sumsq(K, H, Cm * d, m.ksq.as<double>());
    }
  }
  // Token `id` at position `pos`: writes its logits into `logits` (host, V floats).
  void step(int32_t id, float* logits) {
    const int64_t i = pos % C;  // row of this token in the unfinished chunk
    TTT_CUDA_CHECK(cudaMemcpy(id_dev.as<int32_t>(), &id, sizeof(int32_t), cudaMemcpyHostToDevice));
    TTT_CUDA_CHECK(cudaMemcpy(pos_dev.as<int64_t>(), &pos, sizeof(int64_t), cudaMemcpyHostToDevice));
    const int64_t* p = pos_dev.as<int64_t>();
    float* x = B("x");
    mk::embedding_forward(P("embed.weight"), id_dev.as<int32_t>(), x, 1, D);
    for (int64_t l = 0; l < L; ++l) {
      Layer& ly = layers[size_t(l)];
      const std::string pre = "layers." + std::to_string(l) + ".";
      auto Pl = [&](const char* n) { return P(pre + n); };
      rms_norm_forward(x, Pl("attn_norm.weight"), B("h"), B("rinv"), 1, D, D, cfg.norm_eps);
      blas.gemm(false, false, 1, 3 * D, D, 1.0f, B("h"), D, Pl("wqkv"), 3 * D, 0.0f, B("qkv"), 3 * D);
      const float* q = B("qkv");
      const float* k = B("qkv") + D;
      const float* v = B("qkv") + 2 * D;
      // Attention: RoPE'd key and the value into the ring at pos % W, then the query against the last min(pos+1, W).
      float* kslot = ly.ring_k.as<float>() + (pos % W) * D;
      mk::copy2d(k, D, kslot, D, 1, D);
      rope_forward(kslot, kslot, p, 1, Ha, hd, cfg.rope_theta);
      mk::copy2d(v, D, ly.ring_v.as<float>() + (pos % W) * D, D, 1, D);
      mk::copy2d(q, D, B("qa"), D, 1, D);
      rope_forward(B("qa"), B("qa"), p, 1, Ha, hd, cfg.rope_theta);
      mk::attend_one(B("qa"), ly.ring_k.as<float>(), ly.ring_v.as<float>(), std::min(pos + 1, W), Ha, hd, D, B("attn"));
      // Memory inputs (prepare_memory_inputs) into row i of the unfinished chunk.
      mk::qk_prep_forward(q, 3 * D, Pl("ttt.q_scale"), Pl("ttt.q_offset"), B("qh"), B("norm"), 1, H, d, 1e-5);
      mk::qk_prep_forward(k, 3 * D, Pl("ttt.k_scale"), Pl("ttt.k_offset"), B("kh"), B("norm"), 1, H, d, 1e-5);
      if (cfg.ttt_rope) {
        rope_forward(B("qh"), B("qh"), p, 1, H, d, cfg.rope_theta);
        rope_forward(B("kh"), B("kh"), p, 1, H, d, cfg.rope_theta);
      }
      const float* vm = v;
      if (cfg.v_silu) {
        mk::silu_strided_forward(v, D, B("vm"), 1, D);
        vm = B("vm");
      }
      if (cfg.arch == "lact") lact_token(ly, l, vm, i);
      else titans_token(ly, l, vm);
      // finish_memory_output, then x + (attn + mem) Wo and the MLP.
      rms_norm_heads_forward(B("o"), Pl("ttt.o_norm.weight"), B("normed"), B("rinvo"), 1, D, H, cfg.norm_eps);
      blas.gemm(false, false, 1, H, D, 1.0f, B("h"), D, Pl("ttt.scale.weight"), H, 0.0f, B("zs"), H);
      mk::bias_act_forward(B("zs"), Pl("ttt.scale.bias"), B("gate"), 1, H, 0.0, mk::Act::Silu);
      mk::gate_heads_forward(B("normed"), B("gate"), B("sum"), 1, H, d);
      mk::axpy(B("sum"), B("attn"), 1.0f, D);
      blas.gemm(false, false, 1, D, D, 1.0f, B("sum"), D, Pl("wo"), D, 1.0f, x, D);
      rms_norm_forward(x, Pl("mlp_norm.weight"), B("h2"), B("rinv"), 1, D, D, cfg.norm_eps);
      blas.gemm(false, false, 1, F, D, 1.0f, B("h2"), D, Pl("mlp.w_gate"), F, 0.0f, B("ga"), F);
      blas.gemm(false, false, 1, F, D, 1.0f, B("h2"), D, Pl("mlp.w_up"), F, 0.0f, B("up"), F);
      mk::swiglu_forward(B("ga"), B("up"), B("mm"), F);
      blas.gemm(false, false, 1, D, F, 1.0f, B("mm"), F, Pl("mlp.w_down"), D, 1.0f, x, D);
      // LaCT: the chunk is complete: update the fast weights (the causal program's update after chunk c).
      if (cfg.arch == "lact" && i == C - 1) ly.lact->stream_update(chunk_inputs(ly), C);
    }
    rms_norm_forward(x, P("final_norm.weight"), B("h"), B("rinv"), 1, D, D, cfg.norm_eps);
    blas.gemm(false, false, 1, V, D, 1.0f, B("h"), D, P("lm_head.weight"), V, 0.0f, B("logits"), V);
    TTT_CUDA_CHECK(cudaMemcpy(logits, B("logits"), sizeof(float) * size_t(V), cudaMemcpyDeviceToHost));
    ++pos;
  }
};

GpuStreamer::GpuStreamer(const ModelConfig& cfg, const model::Params<float>& params) {
  model::validate(cfg);
  std::string why;
  TTT_CHECK(gpu_streaming_supports(cfg, &why), "GPU generation: " << why);
  TTT_CHECK(device_count(&why) > 0, "GPU generation: no CUDA device (" << why << ")");
  impl_ = std::make_unique<Impl>();  // after the device check: Impl opens a cuBLAS handle
  Impl& m = *impl_;
  m.cfg = cfg;
  m.D = cfg.dim, m.H = cfg.n_mem_heads, m.d = cfg.head_dim_mem(), m.dh = cfg.mem_hidden_dim();
  m.Ha = cfg.n_attn_heads, m.hd = cfg.head_dim_attn(), m.F = cfg.mlp_hidden_dim(), m.V = cfg.vocab_size;
  m.L = cfg.n_layers, m.C = cfg.chunk, m.W = cfg.window;
  TTT_CHECK(params.names == model::make_params<float>(cfg).names, "GPU generation: the parameters do not match the config");
  for (size_t i = 0; i < params.names.size(); ++i) {
    const auto& v = params.values[i];
    DeviceBuffer b(sizeof(float) * size_t(std::max<int64_t>(v.size(), 1)));
    b.upload(v.data.data(), sizeof(float) * v.data.size());
    m.params.emplace(params.names[i], std::move(b));
  }
  auto buf = [&](int64_t n) {
    DeviceBuffer b(sizeof(float) * size_t(std::max<int64_t>(n, 1)));
    TTT_CUDA_CHECK(cudaMemset(b.as<void>(), 0, b.bytes()));
    return b;
  };
  const int64_t D = m.D, H = m.H, d = m.d, C = m.C;
  for (const auto& [name, n] : std::vector<std::pair<const char*, int64_t>>{
           {"x", D}, {"h", D}, {"rinv", H + 1}, {"qkv", 3 * D}, {"qa", D}, {"attn", D}, {"qh", D}, {"kh", D},
           {"norm", H}, {"vm", D}, {"zlr", 3 * H}, {"rates", 3 * H}, {"zm", H}, {"mom", H}, {"o", D},
           {"normed", D}, {"rinvo", H}, {"zs", H}, {"gate", H}, {"sum", D}, {"h2", D}, {"ga", m.F}, {"up", m.F},
           {"mm", m.F}, {"logits", m.V}})
    m.work.emplace(name, buf(n));
  // Titans / TNT memories: their chunk sizes and the work buffers of their token step and chunk update.
  struct MemSpec {
    int64_t chunk, shard;
    bool qk;
  };
  std::vector<MemSpec> specs;
  if (cfg.arch == "titans") specs.push_back({cfg.chunk, 0, false});
  if (cfg.arch == "tnt") {
    if (cfg.use_global) specs.push_back({cfg.global_chunk, 0, false});
    for (int64_t c : cfg.local_chunks) specs.push_back({c, cfg.shard, cfg.qk_proj});
  }
  if (!specs.empty()) {
    const int64_t MH = int64_t(specs.size()) * H, dh = m.dh;
    int64_t cmax = 1;
    for (auto& sp : specs) cmax = std::max(cmax, sp.chunk);
    for (const auto& [name, n] : std::vector<std::pair<const char*, int64_t>>{
             {"zg", MH}, {"th", MH}, {"et", MH}, {"al", MH}, {"qp", D}, {"tz", H * dh}, {"ts", H * dh},
             {"uz", H * cmax * dh}, {"us", H * cmax * dh}, {"um", H * cmax * dh}, {"uy", H * cmax * d},
             {"ue", H * cmax * d}, {"ud1", H * d * dh}, {"ud2", H * d * dh}, {"ebar", H}, {"abar", H}})
      m.work.emplace(name, buf(n));
  }
  m.id_dev = DeviceBuffer(sizeof(int32_t));
  m.pos_dev = DeviceBuffer(sizeof(int64_t));
  lact::Shape s;
  s.B = H;
  s.T = C;
  s.d = d;
  s.dh = m.dh;
  s.chunk = C;
  s.causal = true;
  s.momentum = cfg.momentum;
  s.muon = cfg.muon;
  s.norm = lact_norm(cfg.weight_norm);
  for (int64_t l = 0; l < m.L; ++l) {
    Impl::Layer ly;
    ly.ring_k = buf(m.W * D);
    ly.ring_v = buf(m.W * D);
    const std::string pre = "layers." + std::to_string(l) + ".";
    if (cfg.arch != "lact") {
      const int64_t P = d * m.dh;
      for (size_t mi = 0; mi < specs.size(); ++mi) {
        Impl::TitansMem tm;
        tm.chunk = specs[mi].chunk, tm.shard = specs[mi].shard, tm.qk = specs[mi].qk, tm.col0 = int64_t(mi) * H;
        const auto names = model::memory_weight_names(cfg, int64_t(mi));
        tm.w1 = buf(H * P), tm.w2 = buf(H * P), tm.s1 = buf(H * P), tm.s2 = buf(H * P);
        tm.w10 = buf(H * P), tm.w20 = buf(H * P);
        tm.w10.upload(params.at(pre + names[0]).data.data(), sizeof(float) * size_t(H * P));
        tm.w20.upload(params.at(pre + names[1]).data.data(), sizeof(float) * size_t(H * P));
        TTT_CUDA_CHECK(cudaMemcpy(tm.w1.as<void>(), tm.w10.as<void>(), tm.w1.bytes(), cudaMemcpyDeviceToDevice));
        TTT_CUDA_CHECK(cudaMemcpy(tm.w2.as<void>(), tm.w20.as<void>(), tm.w2.bytes(), cudaMemcpyDeviceToDevice));
        tm.pk = buf(H * tm.chunk * d), tm.pv = buf(H * tm.chunk * d);
        tm.pth = buf(H * tm.chunk), tm.pet = buf(H * tm.chunk), tm.pal = buf(H * tm.chunk);
        tm.kk = buf(tm.qk ? H * d * d : 1);
        tm.ksq = DeviceBuffer(sizeof(double) * size_t(H));
        TTT_CUDA_CHECK(cudaMemset(tm.ksq.as<void>(), 0, tm.ksq.bytes()));
        m.state += tm.w1.bytes() * 4 + tm.pk.bytes() * 2 + tm.pth.bytes() * 3 + (tm.qk ? tm.kk.bytes() : 0) +
                   tm.ksq.bytes();
        m.workspace += tm.w10.bytes() * 2;  // the initial weights (reset targets)
        ly.mems.push_back(std::move(tm));
      }
      m.state += ly.ring_k.bytes() + ly.ring_v.bytes();
      m.layers.push_back(std::move(ly));
      continue;
    }
    ly.pq = buf(H * C * d), ly.pk = buf(H * C * d), ly.pv = buf(H * C * d), ly.po = buf(H * C * d);
    ly.plr = buf(3 * H * C), ly.pmom = buf(H * C);
    ly.lact = std::make_unique<LactRunner<float>>(s, /*with_grad=*/false);
    // Initial fast weights: model::memory_weights evaluated once on the host (the parameter, or with low rank
    // the reference's A B + 0.5 I), then uploaded.
    std::vector<DeviceBuffer> resolved;
    const float* w0 = nullptr;
    const float* w2 = nullptr;
    if (!cfg.low_rank_init) {
      w0 = m.P(pre + "ttt.w0");
      w2 = m.P(pre + "ttt.w2");
    } else {
      ag::Tape<float> t;
      model::LayerParams lp{[&](const std::string& n) { return t.constant(params.at(pre + n)); }};
      const std::vector<ag::Var> w = model::memory_weights(t, cfg, lp, 0);  // w0, w1, w2
      for (size_t i : {size_t(0), size_t(2)}) {
        const ag::Mat<float>& v = t.val(w[i]);
        resolved.emplace_back(sizeof(float) * v.data.size());
        resolved.back().upload(v.data.data(), sizeof(float) * v.data.size());
      }
      w0 = resolved[0].as<float>();
      w2 = resolved[1].as<float>();
    }
    ly.lact->stream_init(w0, m.P(pre + "ttt.w1"), w2);
    TTT_CUDA_CHECK(cudaDeviceSynchronize());  // the resolved copies go out of scope
    // The recurrent state: ring buffers, the unfinished chunk, fast weights (+ momentum, + weight-norm targets).
    const size_t fast = sizeof(float) * size_t(H * 3 * d * m.dh) * (cfg.momentum ? 2 : 1) +
                        (s.norm != lact::Norm::None ? sizeof(float) * size_t(H * (2 * m.dh + d)) : 0);
    m.state += ly.ring_k.bytes() + ly.ring_v.bytes() + ly.pq.bytes() * 3 + ly.plr.bytes() +
               (cfg.momentum ? ly.pmom.bytes() : 0) + fast;
    m.workspace += ly.po.bytes() + ly.lact->workspace_bytes();
    m.layers.push_back(std::move(ly));
  }
}

GpuStreamer::~GpuStreamer() = default;

ag::Mat<float> GpuStreamer::feed(const std::vector<int32_t>& tokens) {
  Impl& m = *impl_;
  ag::Mat<float> out(int64_t(tokens.size()), m.V);
  for (size_t t = 0; t < tokens.size(); ++t) {
    TTT_CHECK(tokens[t] >= 0 && tokens[t] < m.V, "GPU generation: token " << tokens[t] << " outside the vocabulary ("
                                                                          << m.V << ")");
    m.step(tokens[t], out.row(int64_t(t)));
  }
  return out;
}

int64_t GpuStreamer::position() const { return impl_->pos; }
size_t GpuStreamer::state_bytes() const { return impl_->state; }
size_t GpuStreamer::workspace_bytes() const { return impl_->workspace; }

}  // namespace ttt::cuda
