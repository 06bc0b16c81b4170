// gpu_layer_activations.h: the dimensions of a batch and the bytes of the kept table.
#include "backend/gpu_layer_activations.h"

#include <algorithm>
#include <cstdlib>
#include <string>

#include "backend/attention_workspace.h"
#include "backend/context_parallel_plan.h"  // global_floats
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

titans::TntShape gpu_tnt_shape(const model::ModelConfig& cfg, int64_t S, int64_t N) {
  const model::BranchSpec branch = model::branch_spec(cfg);
  titans::TntShape s;
  s.B = S * cfg.n_mem_heads;
  s.T = N;
  s.d = cfg.head_dim_mem();
  s.set_layout(branch.layout);  // "titans": the global memory alone (chunk C, never reset)
  for (const model::MemorySpec& mem : branch.memories) s.dh.push_back(mem.config.dh);
  return s;
}

GpuSplitShapes gpu_split_shapes(const model::ModelConfig& cfg, int64_t S, int64_t N, int rank, int ranks,
                                bool pass_state) {
  const titans::TntShape base = gpu_tnt_shape(cfg, S, N);
  GpuSplitShapes out;
  titans::TntShape global = base;  // the global memory alone (chunk C_G, never reset), over the prefix or the span
  global.T = pass_state ? N : int64_t(rank + 1) * N;
  global.local_chunks.clear();
  global.dh = {base.dh.at(0)};
  out.global = global.memory(0);
  out.global.continues = pass_state && rank + 1 < ranks;
  out.has_local = base.num_memories() > 1;
  if (out.has_local) {
    out.local = base;  // the local memories alone, over the span
    out.local.use_global = false;
    out.local.dh.erase(out.local.dh.begin());
  }
  return out;
}

int64_t gpu_global_state_floats(const model::ModelConfig& cfg, int64_t S) {
  const model::MemorySpec global = model::branch_spec(cfg).memories.at(0);
  const int64_t P2 = 2 * global.config.d * global.config.dh;
  return S * cfg.n_mem_heads * P2 * (global.config.momentum ? 2 : 1);
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

bool gpu_lact_keeps_products(bool backward) {
  const char* e = std::getenv("TTT_LACT_KEEP");
  return backward && !(e && std::string(e) == "0");
}

GpuLayerDims gpu_batch_dims(const model::ModelConfig& cfg, int64_t S, int64_t N, bool bf16_products,
                            bool bf16_activations, const GpuSpan& span) {
  GpuLayerDims s = gpu_layer_dims(cfg, S, N, bf16_activations);
  if (span.split()) {  // context parallel: the attention's halo rows and the global memory's prefix
    s.halo = S * span.halo;
    s.xrows = span.halo_in > 0 ? S * (span.halo_in + N) : 0;
    s.arows = span.halo_in > 0 ? s.xrows : s.rows;
    if (cfg.use_global && span.pass_state) {  // the span's global input gradients, the state, its output over the span
      s.U = global_floats(S * s.H, N, s.d, 1);
      s.P = 1;
      s.prefix = s.BHN * s.d;
      s.state = gpu_global_state_floats(cfg, S);
    } else if (cfg.use_global) {
      s.Ncp = span.ranks;
      s.U = global_floats(S * s.H, N, s.d, 1);
      s.P = span.rank + 1;
      s.prefix = s.P * s.BHN * s.d;  // the global memory's output over the prefix
    }
  }
  // The bf16 attention kernels on bf16 operands (not with a split: the halo's rows are fp32).
  const bool bf16_attention = attention_on_bf16_operands(cfg, bf16_products) && !span.split();
  const int64_t attention_rows = span.halo_in + N;
  const size_t work = bf16_attention ? swa_backward_bf16_workspace_bytes(S, attention_rows, s.Ha, cfg.head_dim_attn())
                                     : swa_backward_workspace_bytes(S, attention_rows, s.Ha);
  s.attn_work = int64_t(work / sizeof(float)) + 1;
  return s;
}

// The dimensions as doubles under their table names, then the sum of a table's entries.
#define TTT_TABLE_BYTES(function, TABLE)                                                                        \
  double function(const GpuLayerDims& x) {                                                                      \
    [[maybe_unused]] const double rows = double(x.rows), arows = double(x.arows), D = double(x.D),              \
                                  H = double(x.H), d = double(x.d), dh = double(x.dh), Ha = double(x.Ha),       \
                                  F = double(x.F), V = double(x.V), M = double(x.M), BHN = double(x.BHN),       \
                                  W = double(x.W), G = double(x.G), attn_work = double(x.attn_work),            \
                                  act16 = double(x.act16), act32 = double(x.act32), qk32 = double(x.qk32),      \
                                  k32 = double(x.k32), xrows = double(x.xrows), halo = double(x.halo),          \
                                  U = double(x.U), Ncp = double(x.Ncp), P = double(x.P),                        \
                                  prefix = double(x.prefix), state = double(x.state);                           \
    double bytes = 0;                                                                                           \
    TABLE(TTT_ADD_BYTES)                                                                                        \
    return bytes;                                                                                               \
  }
#define TTT_ADD_BYTES(name, type, elements) bytes += double(elements) * double(sizeof(type));
TTT_TABLE_BYTES(gpu_kept_layer_bytes, TTT_GPU_LAYER_KEPT)
TTT_TABLE_BYTES(gpu_layer_scratch_bytes, TTT_GPU_LAYER_SCRATCH)
TTT_TABLE_BYTES(gpu_layer_gradient_bytes, TTT_GPU_LAYER_GRADIENTS)
TTT_TABLE_BYTES(gpu_context_buffer_bytes, TTT_GPU_CONTEXT_BUFFERS)
TTT_TABLE_BYTES(gpu_head_buffer_bytes, TTT_GPU_HEAD_BUFFERS)
#undef TTT_ADD_BYTES
#undef TTT_TABLE_BYTES

}  // namespace ttt::backend
