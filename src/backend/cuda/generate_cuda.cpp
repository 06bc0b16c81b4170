// GpuStreamer (generate_cuda.h): one token at a time through the layers of model::forward, the memory branch
// through the memory operators' streaming APIs: a LactRunner per layer (LaCT), a TitansRunner per memory of the
// branch shared by the layers (Titans / TNT), each running the chunk update of its training forward. Each step
// names the CPU op it mirrors (src/infer/stream.cpp). Work buffers and parameters are named fields
// (model_buffers.h): tok.* (one token's buffers), ttok.* (the Titans memories' token buffers), P (typed views of
// the parameters).
#include "backend/cuda/generate_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "backend/cuda/attention.h"
#include "backend/cuda/blas_cuda.h"
#include "backend/cuda/check.cuh"
#include "backend/cuda/elementwise_kernels.h"
#include "backend/cuda/lact_cuda.h"
#include "backend/cuda/layout_kernels.h"
#include "backend/cuda/memory_kernels.h"
#include "backend/cuda/model_buffers.h"
#include "backend/cuda/model_cuda.h"  // gpu_supports
#include "backend/cuda/norm_kernels.h"
#include "backend/cuda/rope_kernels.h"
#include "backend/cuda/titans_cuda.h"
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

struct GpuStreamer::Impl {
  ModelConfig cfg;
  model::BranchSpec branch;  // the memory branch: memories, gate columns, rate rule (model/memory_spec.h)
  Blas blas{MathMode::FP32};
  int64_t D = 0, H = 0, d = 0, dh = 0, Ha = 0, hd = 0, F = 0, V = 0, L = 0, C = 0, W = 0, pos = 0;
  std::vector<DeviceBuffer> tensors;  // the parameters, one allocation each, in model::parameter_shapes order
  ModelTensors P;                     // typed views of them, built once
  // ttt_norm_shared: each layer's [d] memory-norm weight tiled to [D] once (P's o_norm points there).
  std::vector<DeviceBuffer> o_norm_tiled;
  // One Titans memory of a layer (arch "titans": one; "tnt": global + locals), as the CPU StreamingModel keeps it:
  // its recurrent state (what titans::StreamState points at) and its unfinished chunk. The chunk update and the
  // apply are its memory's TitansRunner's (titans[m]).
  struct TitansMem {
    int64_t chunk = 0, shard = 0, pend = 0;  // chunk (of titans::stream_shape), reset period (0: never)
    int64_t rate_col0 = 0, gate_col0 = 0;    // its theta / eta, alpha columns (MemorySpec)
    const float* w1_init = nullptr;          // initial weights W1⁰ [H,dh,d], W2⁰ [H,d,dh]: the parameters
    const float* w2_init = nullptr;
    DeviceBuffer w, s;                       // fast weights and momentum, per head [W1 (dh x d); W2 (d x dh)]
    DeviceBuffer kk, ksq;                    // Q-K projected memories: sum k k^T [H,d,d], sum ||k||^2 [H] over
                                             // the shard's finished chunks (else empty)
    DeviceBuffer pk, pv, pth, pet, pal;      // the unfinished chunk: [H, chunk, d], [H, chunk]
    titans::StreamState<float> state() const {
      return {w.as<float>(), s.as<float>(), kk.as<float>(), ksq.as<float>()};
    }
    titans::MemoryInputs<float> chunk_inputs() const {
      titans::MemoryInputs<float> in;
      in.k = pk.as<float>(), in.v = pv.as<float>();
      in.theta = pth.as<float>(), in.eta = pet.as<float>(), in.alpha = pal.as<float>();
      return in;
    }
  };
  struct Layer {
    DeviceBuffer ring_k, ring_v;                            // [W, D]
    DeviceBuffer pq, pk, pv, plr, pmom, po;                 // the unfinished chunk: [H, C, d], [3][H, C], [H, C]
    std::unique_ptr<LactRunner<float>> lact;
    std::vector<TitansMem> mems;
  };
  std::vector<Layer> layers;
  // Titans / TNT: per memory of the branch, its streaming runner (work buffers), shared by the layers.
  std::vector<std::unique_ptr<TitansRunner<float>>> titans;
  // One-token work buffers (model_buffers.h); the Titans ones for arch "titans" / "tnt" only.
  TokenArrays tok_arrays;
  TitansTokenArrays ttok_arrays;
  TokenBuffers tok;
  TitansTokenBuffers ttok;
  DeviceBuffer id_dev, pos_dev, rope_pos;
  size_t state = 0, workspace = 0;

  lact::Inputs<float> chunk_inputs(Layer& ly) const {
    lact::Inputs<float> in;
    in.q = ly.pq.as<float>(), in.k = ly.pk.as<float>(), in.v = ly.pv.as<float>();
    in.lr0 = ly.plr.as<float>(), in.lr1 = ly.plr.as<float>() + H * C, in.lr2 = ly.plr.as<float>() + 2 * H * C;
    in.mom = cfg.momentum ? ly.pmom.as<float>() : nullptr;
    return in;
  }

  // LaCT memory for the token at row i of the unfinished chunk: gates, pending rows, apply -> tok.o.
  void lact_token(Layer& ly, int64_t l, const float* vm, int64_t i) {
    const LayerTensors& lw = P.layers[size_t(l)];
    blas.gemm(false, false, 1, 3 * H, D, 1.0f, tok.h, D, lw.lr_weight, 3 * H, 0.0f, tok.zlr, 3 * H);
    mk::gate_forward(tok.zlr, lw.lr_bias, tok.rates, 1, 3 * H, branch.rate);
    // Head h's d values go to row i of [H, C, d]: H rows of d, destination stride C*d.
    mk::copy2d(tok.qh, d, ly.pq.as<float>() + i * d, C * d, H, d);
    mk::copy2d(tok.kh, d, ly.pk.as<float>() + i * d, C * d, H, d);
    mk::copy2d(vm, d, ly.pv.as<float>() + i * d, C * d, H, d);
    for (int r = 0; r < 3; ++r) mk::copy2d(tok.rates + r * H, 1, ly.plr.as<float>() + r * H * C + i, C, H, 1);
    if (cfg.momentum) {
      blas.gemm(false, false, 1, H, D, 1.0f, tok.h, D, lw.momentum_weight, H, 0.0f, tok.zm, H);
      mk::gate_forward(tok.zm, lw.momentum_bias, tok.mom, 1, H, branch.gate);
      mk::copy2d(tok.mom, 1, ly.pmom.as<float>() + i, C, H, 1);
    }
    const lact::Inputs<float> in = chunk_inputs(ly);
    ly.lact->stream_apply(in, i, 1, ly.po.as<float>());
    mk::copy2d(ly.po.as<float>() + i * d, C * d, tok.o, d, H, d);  // [H, d] rows = the token's [1, D]
  }

  // Titans / TNT memories for the token at position pos (stream.cpp's memory loop): every memory applies with
  // its current weights (local ones read Q-K projected queries), then takes the token into its unfinished chunk,
  // resets at the end of its shard, or updates at the end of its chunk. Output summed into tok.o.
  void titans_token(Layer& ly, int64_t l, const float* vm) {
    const LayerTensors& lw = P.layers[size_t(l)];
    const int64_t M = int64_t(ly.mems.size()), MH = M * H;
    // Per gate (theta, eta, alpha): weight, bias, activation, by the branch's rules.
    const float* gate_weight[3] = {lw.lr_weight, lw.momentum_weight, lw.decay_weight};
    const float* gate_bias[3] = {lw.lr_bias, lw.momentum_bias, lw.decay_bias};
    float* gate_y[3] = {ttok.th, ttok.et, ttok.al};
    for (int gi = 0; gi < 3; ++gi) {
      blas.gemm(false, false, 1, MH, D, 1.0f, tok.h, D, gate_weight[gi], MH, 0.0f, ttok.zg, MH);
      mk::gate_forward(ttok.zg, gate_bias[gi], gate_y[gi], 1, MH, gi == 0 ? branch.rate : branch.gate);
    }
    TTT_CUDA_CHECK(cudaMemsetAsync(tok.o, 0, sizeof(float) * size_t(D), nullptr));
    for (size_t mi = 0; mi < ly.mems.size(); ++mi) {
      TitansMem& m = ly.mems[mi];
      TitansRunner<float>& memory = *titans[mi];
      // o += f_W(q) per head (local memories read the Q-K projected query).
      memory.stream_apply(m.state(), tok.qh, 1, ttok.mo);
      mk::axpy(tok.o, ttok.mo, 1.0f, D);
      // The token joins the unfinished chunk (row m.pend of [H, chunk, .]).
      const int64_t Cm = m.chunk, r = m.pend;
      mk::copy2d(tok.kh, d, m.pk.as<float>() + r * d, Cm * d, H, d);
      mk::copy2d(vm, d, m.pv.as<float>() + r * d, Cm * d, H, d);
      mk::copy2d(ttok.th + m.rate_col0, 1, m.pth.as<float>() + r, Cm, H, 1);
      mk::copy2d(ttok.et + m.gate_col0, 1, m.pet.as<float>() + r, Cm, H, 1);
      mk::copy2d(ttok.al + m.gate_col0, 1, m.pal.as<float>() + r, Cm, H, 1);
      ++m.pend;
      if (m.shard > 0 && (pos + 1) % m.shard == 0) {  // shard finished: back to W0 (its last chunk never updates)
        memory.stream_init(m.state(), m.w1_init, m.w2_init);
        m.pend = 0;
      } else if (m.pend == Cm) {  // chunk finished: the training forward's chunk update
        memory.stream_update(m.state(), m.chunk_inputs(), Cm);
        m.pend = 0;
      }
    }
  }

  // Token `id` at position `pos`: writes its logits into `logits` (host, V floats).
  void step(int32_t id, float* logits) {
    const int64_t i = pos % C;  // row of this token in the unfinished chunk
    TTT_CUDA_CHECK(cudaMemcpy(id_dev.as<int32_t>(), &id, sizeof(int32_t), cudaMemcpyHostToDevice));
    TTT_CUDA_CHECK(cudaMemcpy(pos_dev.as<int64_t>(), &pos, sizeof(int64_t), cudaMemcpyHostToDevice));
    const int64_t* p = pos_dev.as<int64_t>();
    float* x = tok.x;
    mk::embedding_forward(P.embed, id_dev.as<int32_t>(), x, 1, D);
    for (int64_t l = 0; l < L; ++l) {
      Layer& ly = layers[size_t(l)];
      const LayerTensors& lw = P.layers[size_t(l)];
      rms_norm_forward(x, lw.attn_norm, tok.h, tok.rinv, 1, D, D, cfg.norm_eps);
      blas.gemm(false, false, 1, 3 * D, D, 1.0f, tok.h, D, lw.wqkv, 3 * D, 0.0f, tok.qkv, 3 * D);
      const float* q = tok.qkv;
      const float* k = tok.qkv + D;
      const float* v = tok.qkv + 2 * D;
      // Attention: RoPE'd key and the value into the ring at pos % W, then the query against the last min(pos+1, W).
      float* kslot = ly.ring_k.as<float>() + (pos % W) * D;
      mk::copy2d(k, D, kslot, D, 1, D);
      rope_forward(kslot, kslot, p, 1, Ha, hd, cfg.rope_theta);
      mk::copy2d(v, D, ly.ring_v.as<float>() + (pos % W) * D, D, 1, D);
      mk::copy2d(q, D, tok.qa, D, 1, D);
      rope_forward(tok.qa, tok.qa, p, 1, Ha, hd, cfg.rope_theta);
      mk::attend_one(tok.qa, ly.ring_k.as<float>(), ly.ring_v.as<float>(), std::min(pos + 1, W), Ha, hd, D, tok.attn);
      // Memory inputs (prepare_memory_inputs) into row i of the unfinished chunk.
      mk::qk_prep_forward(q, 3 * D, lw.q_scale, lw.q_offset, tok.qh, tok.norm, 1, H, d, 1e-5);
      mk::qk_prep_forward(k, 3 * D, lw.k_scale, lw.k_offset, tok.kh, tok.norm, 1, H, d, 1e-5);
      if (cfg.ttt_rope) {  // per memory head, or (ttt_rope_attn_heads) per attention head
        const int64_t rh = cfg.mem_rope_heads();
        rope_forward(tok.qh, tok.qh, p, 1, rh, D / rh, cfg.rope_theta);
        rope_forward(tok.kh, tok.kh, p, 1, rh, D / rh, cfg.rope_theta);
      }
      const float* vm = v;
      if (cfg.v_silu) {
        mk::silu_strided_forward(v, D, tok.vm, 1, D);
        vm = tok.vm;
      }
      if (cfg.arch == model::Arch::Lact) lact_token(ly, l, vm, i);
      else titans_token(ly, l, vm);
      // finish_memory_output, then x + (attn + mem) Wo and the MLP.
      rms_norm_heads_forward(tok.o, lw.o_norm, tok.normed, tok.rinvo, 1, D, H, cfg.mem_norm_eps());
      blas.gemm(false, false, 1, H, D, 1.0f, tok.h, D, lw.scale_weight, H, 0.0f, tok.zs, H);
      mk::bias_act_forward(tok.zs, lw.scale_bias, tok.gate, 1, H, 0.0, math::Activation::Silu);
      mk::gate_heads_forward(tok.normed, tok.gate, tok.sum, 1, H, d);
      mk::axpy(tok.sum, tok.attn, 1.0f, D);
      blas.gemm(false, false, 1, D, D, 1.0f, tok.sum, D, lw.wo, D, 1.0f, x, D);
      rms_norm_forward(x, lw.mlp_norm, tok.h2, tok.rinv, 1, D, D, cfg.norm_eps);
      blas.gemm(false, false, 1, F, D, 1.0f, tok.h2, D, lw.w_gate, F, 0.0f, tok.ga, F);
      blas.gemm(false, false, 1, F, D, 1.0f, tok.h2, D, lw.w_up, F, 0.0f, tok.up, F);
      mk::swiglu_forward(tok.ga, tok.up, tok.mm, F);
      blas.gemm(false, false, 1, D, F, 1.0f, tok.mm, F, lw.w_down, D, 1.0f, x, D);
      // LaCT: the chunk is complete: update the fast weights (the causal program's update after chunk c).
      if (cfg.arch == model::Arch::Lact && i == C - 1) ly.lact->stream_update(chunk_inputs(ly), C);
    }
    rms_norm_forward(x, P.final_norm, tok.h, tok.rinv, 1, D, D, cfg.norm_eps);
    blas.gemm(false, false, 1, V, D, 1.0f, tok.h, D, P.lm_head, V, 0.0f, tok.logits, V);
    TTT_CUDA_CHECK(cudaMemcpy(logits, tok.logits, sizeof(float) * size_t(V), cudaMemcpyDeviceToHost));
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
  m.branch = model::branch_spec(cfg);
  const bool lact = cfg.arch == model::Arch::Lact;
  const model::MemorySpec& first = m.branch.memories[0];  // LaCT: the memory
  m.D = cfg.dim, m.H = cfg.n_mem_heads, m.d = cfg.head_dim_mem(), m.dh = cfg.mem_hidden_dim();
  m.Ha = cfg.n_attn_heads, m.hd = cfg.head_dim_attn(), m.F = cfg.mlp_hidden_dim(), m.V = cfg.vocab_size;
  m.L = cfg.n_layers, m.C = first.chunk, m.W = cfg.window;
  TTT_CHECK(params.names == model::make_params<float>(cfg).names, "GPU generation: the parameters do not match the config");
  for (size_t i = 0; i < params.names.size(); ++i) {
    const auto& v = params.values[i];
    DeviceBuffer b(sizeof(float) * size_t(std::max<int64_t>(v.size(), 1)));
    b.upload(v.data.data(), sizeof(float) * v.data.size());
    m.tensors.push_back(std::move(b));
  }
  m.P = model_tensors(cfg, params.names, [&](size_t i) { return m.tensors[i].as<float>(); });
  if (cfg.ttt_norm_shared)
    for (LayerTensors& lw : m.P.layers) {
      m.o_norm_tiled.emplace_back(sizeof(float) * size_t(cfg.dim));
      mk::tile_row(lw.o_norm, m.o_norm_tiled.back().as<float>(), cfg.n_mem_heads, cfg.head_dim_mem());
      lw.o_norm = m.o_norm_tiled.back().as<float>();
    }
  auto buf = [&](int64_t n) {
    DeviceBuffer b(sizeof(float) * size_t(std::max<int64_t>(n, 1)));
    TTT_CUDA_CHECK(cudaMemset(b.as<void>(), 0, b.bytes()));
    return b;
  };
  const int64_t D = m.D, H = m.H, d = m.d, C = m.C;
  StreamDims dims;
  dims.D = D, dims.H = H, dims.d = d, dims.dh = m.dh, dims.F = m.F, dims.V = m.V;
  m.tok = dims.allocate(m.tok_arrays);
  // Titans / TNT: the token buffers, and per memory its streaming runner. The memories are those GPU training
  // runs (TntRunner over titans::TntShape::memory(m), in MemorySpec order), here for one sequence (H items).
  std::vector<titans::MemoryShape> titans_shapes;  // per memory, before stream_shape (its reset period)
  if (!lact) {
    dims.MH = m.branch.gate_columns;
    m.ttok = dims.allocate(m.ttok_arrays);
    titans::TntShape ts;
    ts.B = H;
    ts.T = 1;  // any: streaming works on one chunk
    ts.d = d;
    ts.set_layout(m.branch.layout);
    for (const model::MemorySpec& mem : m.branch.memories) ts.dh.push_back(mem.config.dh);
    for (size_t mi = 0; mi < m.branch.memories.size(); ++mi) {
      titans_shapes.push_back(ts.memory(mi));
      m.titans.push_back(
          std::make_unique<TitansRunner<float>>(titans::stream_shape(titans_shapes.back()), /*with_grad=*/false));
      m.workspace += m.titans.back()->workspace_bytes();
    }
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
  s.momentum = first.config.momentum;
  s.muon = first.config.muon;
  s.norm = first.config.weight_norm;
  for (int64_t l = 0; l < m.L; ++l) {
    Impl::Layer ly;
    ly.ring_k = buf(m.W * D);
    ly.ring_v = buf(m.W * D);
    const std::string pre = "layers." + std::to_string(l) + ".";
    if (!lact) {
      for (size_t mi = 0; mi < m.branch.memories.size(); ++mi) {
        const model::MemorySpec& mem = m.branch.memories[mi];
        const titans::MemoryShape stream = titans::stream_shape(titans_shapes[mi]);
        const titans::StreamStateSizes n = titans::stream_state_sizes(stream);
        Impl::TitansMem tm;
        tm.chunk = stream.chunk, tm.shard = titans_shapes[mi].period;
        tm.rate_col0 = mem.rate_col0, tm.gate_col0 = mem.gate_col0;
        const std::vector<MemoryWeight>& w0 = m.P.layers[size_t(l)].memories[mi];  // w1, w2
        tm.w1_init = w0[0].full, tm.w2_init = w0[1].full;
        tm.w = buf(n.W);
        if (n.S > 0) tm.s = buf(n.S);
        if (n.M > 0) tm.kk = buf(n.M), tm.ksq = buf(n.z);
        tm.pk = buf(H * tm.chunk * d), tm.pv = buf(H * tm.chunk * d);
        tm.pth = buf(H * tm.chunk), tm.pet = buf(H * tm.chunk), tm.pal = buf(H * tm.chunk);
        m.titans[mi]->stream_init(tm.state(), tm.w1_init, tm.w2_init);
        m.state += tm.w.bytes() + tm.s.bytes() + tm.kk.bytes() + tm.ksq.bytes() + tm.pk.bytes() * 2 +
                   tm.pth.bytes() * 3;
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
    const std::vector<MemoryWeight>& fw = m.P.layers[size_t(l)].memories[0];  // w0, w1, w2
    if (!cfg.low_rank_init) {
      w0 = fw[0].full;
      w2 = fw[2].full;
    } else {
      ag::Tape<float> t;
      model::LayerParams lp{[&](const std::string& n) { return t.constant(params.at(pre + n)); }};
      const std::vector<ag::Var> w = model::memory_weights(t, cfg, lp, first);  // w0, w1, w2
      for (size_t i : {size_t(0), size_t(2)}) {
        const ag::Mat<float>& v = t.val(w[i]);
        resolved.emplace_back(sizeof(float) * v.data.size());
        resolved.back().upload(v.data.data(), sizeof(float) * v.data.size());
      }
      w0 = resolved[0].as<float>();
      w2 = resolved[1].as<float>();
    }
    ly.lact->stream_init(w0, fw[1].full, w2);
    TTT_CUDA_CHECK(cudaDeviceSynchronize());  // the resolved copies go out of scope
    // The recurrent state: ring buffers, the unfinished chunk, fast weights (+ momentum, + weight-norm targets).
    const size_t fast = sizeof(float) * size_t(H * 3 * d * m.dh) * (cfg.momentum ? 2 : 1) +
                        (s.norm != engine::WeightNorm::None ? sizeof(float) * size_t(H * (2 * m.dh + d)) : 0);
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
