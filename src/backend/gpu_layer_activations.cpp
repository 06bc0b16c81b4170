// gpu_layer_activations.h: the dimensions of a batch and the bytes of the kept table.
#include "backend/gpu_layer_activations.h"

#include <algorithm>

#include "model/memory_spec.h"

namespace ttt::backend {

GpuLayerDims gpu_layer_dims(const model::ModelConfig& cfg, int64_t S, int64_t N, bool bf16_activations) {
  GpuLayerDims s;
  s.rows = S * N;
  s.arows = s.rows;
  s.D = cfg.dim;
  s.H = cfg.n_mem_heads;
  s.d = cfg.head_dim_mem();
  s.dh = cfg.mem_hidden_dim();
  s.Ha = cfg.n_attn_heads;
  s.F = cfg.mlp_hidden_dim();
  s.V = cfg.vocab_size;
  s.M = int64_t(model::branch_spec(cfg).memories.size());
  s.BHN = S * s.H * N;  // = rows * H
  s.W = S * s.H * s.dh * s.d;
  s.G = std::max<int64_t>(3, s.M) * s.H;
  s.act16 = bf16_activations ? 1 : 0;
  s.act32 = bf16_activations ? 0 : 1;
  return s;
}

GpuLayerDims gpu_own_layer_dims(const model::ModelConfig& cfg, int64_t S, int64_t N, bool bf16_products,
                                bool bf16_activations) {
  GpuLayerDims s = gpu_layer_dims(cfg, S, N, bf16_activations);
  s.qk32 = lact_on_bf16_operands(cfg, bf16_products) ? 0 : 1;
  s.k32 = attention_on_bf16_operands(cfg, bf16_products) ? 0 : 1;
  return s;
}

bool attention_on_bf16_operands(const model::ModelConfig& cfg, bool bf16_products) {
  return bf16_products && cfg.head_dim_attn() % 8 == 0;
}

bool lact_on_bf16_operands(const model::ModelConfig& cfg, bool bf16_products) {
  return cfg.arch == model::Arch::Lact && bf16_products && !cfg.muon;
}

lact::Shape gpu_lact_shape(const model::ModelConfig& cfg, int64_t S, int64_t N) {
  const model::MemorySpec mem = model::branch_spec(cfg).memories.at(0);
  lact::Shape s;
  s.B = S * cfg.n_mem_heads;
  s.T = N;
  s.d = mem.config.d;
  s.dh = mem.config.dh;
  s.chunk = mem.chunk;
  s.causal = true;
  s.momentum = mem.config.momentum;
  s.muon = mem.config.muon;
  s.norm = mem.config.weight_norm;
  return s;
}

double gpu_kept_layer_bytes(const GpuLayerDims& dims) {
  // The entries' sizes in doubles: an estimate of an absurd config stays finite instead of wrapping.
  const double rows = double(dims.rows), arows = double(dims.arows), D = double(dims.D), H = double(dims.H),
               Ha = double(dims.Ha),
               F = double(dims.F), M = double(dims.M), BHN = double(dims.BHN), W = double(dims.W), G = double(dims.G),
               act16 = double(dims.act16), act32 = double(dims.act32), qk32 = double(dims.qk32),
               k32 = double(dims.k32);
  double bytes = 0;
#define TTT_ADD_BYTES(name, type, elements) bytes += double(elements) * double(sizeof(type));
  TTT_GPU_LAYER_KEPT(TTT_ADD_BYTES)
#undef TTT_ADD_BYTES
  return bytes;
}

}  // namespace ttt::backend
