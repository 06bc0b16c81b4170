// The GPU model's per-layer activations that its backward reads, as one table in device-neutral code: the CUDA
// model's buffers are made from it (backend/cuda/model_buffers.h), and the memory estimate sizes what
// `--recompute none` keeps per layer from the same table (train/memory_budget.cpp), so the two cannot disagree.
//
// A table entry is X(name, element type, elements), the size written in terms of the members of GpuLayerDims:
// rows = S*N tokens of the batch, D model width, H memory heads, d memory head width, dh memory hidden width,
// Ha attention heads, F MLP hidden width, V vocabulary, M memories of the branch, BHN = S*H*N rows of the per
// sequence-head layout, W = S*H*dh*d (one fast-weight matrix per sequence-head), G = max(3, M)*H gate columns,
// attn_work floats of the attention backward's workspace, act16 / act32 = 1 when activations are stored in
// bf16 / fp32 (else 0: the buffer is not allocated), arows the attention's rows (rows; more with a context-parallel
// halo). Names ending in T are in the per sequence-head layout
// [S*H, N, .] of the memory operators. Two more are 1 for the work buffers and may be 0 for a layer's own kept copy
// (gpu_own_layer_dims): qk32, the memory operator's fp32 q and k inputs (its backward may read them only through
// the bf16 copies its forward made), and k32, the attention's k after RoPE in fp32 (the bf16 attention reads
// only its bf16 copy, which fills half of ka). An entry of size 0 in a layer's own copy is not kept: the layer
// uses the work buffer there.
#pragma once
#include <cstdint>

#include "core/dtype.h"
#include "model/config.h"
#include "ttt/lact_fused.h"

namespace ttt::backend {

struct GpuLayerDims {
  int64_t rows = 0, D = 0, H = 0, d = 0, dh = 0, Ha = 0, F = 0, V = 0, M = 0, BHN = 0, W = 0, G = 0;
  int64_t attn_work = 0, act16 = 0, act32 = 0, qk32 = 1, k32 = 1;
  int64_t arows = 0;  // rows of the attention's operands and output: rows, or with a context-parallel halo more
};

// The dimensions of the work buffers for a batch of S sequences of N tokens of `cfg` (attn_work left 0: the CUDA
// model sets it).
GpuLayerDims gpu_layer_dims(const model::ModelConfig& cfg, int64_t S, int64_t N, bool bf16_activations);
// The same for a layer's own kept copy (--recompute none), with bf16 products or not.
GpuLayerDims gpu_own_layer_dims(const model::ModelConfig& cfg, int64_t S, int64_t N, bool bf16_products,
                                bool bf16_activations);

// With bf16 products, whether the window attention runs on bf16 operands (16-byte rows: head dim % 8 == 0).
bool attention_on_bf16_operands(const model::ModelConfig& cfg, bool bf16_products);
// With bf16 products, whether the LaCT operator takes bf16 product operands (LactOptions::bf16; with Muon it runs
// tf32): then its backward reads q and k only through the bf16 copies its forward made.
bool lact_on_bf16_operands(const model::ModelConfig& cfg, bool bf16_products);
// The LaCT operator's shape for a batch of S sequences of N tokens (arch "lact").
lact::Shape gpu_lact_shape(const model::ModelConfig& cfg, int64_t S, int64_t N);

// What a layer's backward reads of its forward (layer_backward and the memory operators' backward in
// model_cuda.cpp). The full and save-attention levels hold one layer of these (recomputed per layer); level none
// holds one per layer.
#define TTT_GPU_LAYER_KEPT(X)                                                                                      \
  X(rinv1, float, rows)               /* 1/rms of the attention norm */                                           \
  X(qkv, float, rows * 3 * D)         /* h Wqkv: q | k | v */                                                     \
  X(qa, float, arows * D)             /* attention q after RoPE (bf16 attention: bf16 q and v) */                 \
  X(ka, float, (1 + k32) * arows * D / 2) /* attention k after RoPE (bf16 attention: bf16 k) */                  \
  X(attn, float, arows * D)           /* attention output (context parallel: with the halo's placeholder rows) */ \
  X(lse, float, arows * Ha)           /* attention log-sum-exp */                                                 \
  X(qnorm, float, rows * H)           /* per-head norms of the q preparation */                                   \
  X(knorm, float, rows * H)                                                                                       \
  X(zlr, float, rows * G)             /* rate / theta gate pre-activation */                                      \
  X(zm, float, rows * G)              /* momentum / eta gate */                                                   \
  X(zd, float, rows * G)              /* decay / alpha gate (titans, tnt) */                                      \
  X(thT, float, M * BHN)              /* theta, eta, alpha per memory (titans, tnt) */                            \
  X(etT, float, M * BHN)                                                                                          \
  X(alT, float, M * BHN)                                                                                          \
  X(tw1b, float, M * W)               /* Titans initial weights broadcast per sequence, per memory */             \
  X(tw2b, float, M * W)                                                                                           \
  X(qT, float, qk32 * rows * D)       /* memory operator inputs */                                                \
  X(kT, float, qk32 * rows * D)                                                                                   \
  X(vT, float, rows * D)                                                                                          \
  X(lrT, float, 3 * BHN)              /* LaCT rates, one [S*H, N] block per matrix */                             \
  X(momT, float, BHN)                                                                                             \
  X(o, float, rows * D)               /* memory output */                                                         \
  X(normed, float, rows * D)          /* per-head RMSNorm of o */                                                 \
  X(rinvo, float, rows * H)                                                                                       \
  X(zs, float, rows * H)              /* output gate pre-activation */                                            \
  X(gate, float, rows * H)                                                                                        \
  X(xmid, float, rows * D)            /* x + sum Wo */                                                            \
  X(rinv2, float, rows)               /* 1/rms of the MLP norm */                                                 \
  X(ga, float, rows * F)              /* h2 W_gate */                                                             \
  X(up, float, rows * F)              /* h2 W_up */                                                               \
  X(h, float, act32 * rows * D)       /* the product operands: fp32, or bf16 with bf16 activations */             \
  X(h_bf16, bf16, act16 * rows * D)   /* RMSNorm(x) */                                                            \
  X(h2, float, act32 * rows * D)                                                                                  \
  X(h2_bf16, bf16, act16 * rows * D)  /* RMSNorm(xmid) */                                                         \
  X(sum, float, act32 * rows * D)     /* attn + gated memory output */                                            \
  X(sum_bf16, bf16, act16 * rows * D)                                                                             \
  X(mm, float, act32 * rows * F)                                                                                  \
  X(mm_bf16, bf16, act16 * rows * F)  /* silu(ga) up */

// Bytes of one layer's entries of TTT_GPU_LAYER_KEPT.
double gpu_kept_layer_bytes(const GpuLayerDims& dims);

}  // namespace ttt::backend
