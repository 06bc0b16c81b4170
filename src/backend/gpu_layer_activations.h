// The GPU model's training buffers as tables in device-neutral code (the per-layer activations its backward reads,
// the forward's scratch, the gradients, the context-parallel exchanges, the head), with the dimensions of a batch and
// the shapes of its memory operators' runners: the CUDA model's buffers are made from them
// (backend/cuda/model_buffers.h), and the memory estimate sizes the same tables (train/memory_budget.cpp), so the
// two cannot disagree.
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
#include "ttt/titans_fused.h"

namespace ttt::backend {

struct GpuLayerDims {
  int64_t rows = 0, D = 0, H = 0, d = 0, dh = 0, Ha = 0, F = 0, V = 0, M = 0, BHN = 0, W = 0, G = 0;
  int64_t attn_work = 0, act16 = 0, act32 = 0, qk32 = 1, k32 = 1;
  int64_t arows = 0;  // rows of the attention's operands and output: rows, or with a context-parallel halo more
  // Context parallelism (TTT_GPU_CONTEXT_BUFFERS below; all 0 without it).
  int64_t xrows = 0, halo = 0, U = 0, Ncp = 0, P = 0, prefix = 0;
  int64_t state = 0;  // --cp-global state: floats of the global memory's chain state (S*H x [W1 | W2] and momentum)
};

// A rank's place in a context-parallel split of the batch (none: the defaults): `ranks` in the group, this rank's
// index, the window - 1 tail rows a rank sends the next (halo) and the rows it receives in front of its own
// (halo_in, 0 on the first rank), both per sequence (backend::HaloPlan).
struct GpuSpan {
  int ranks = 1, rank = 0;
  int64_t halo = 0, halo_in = 0;
  bool pass_state = false;  // the global memory's state passed from rank to rank (--cp-global state), not gathered
  bool split() const { return ranks > 1; }
};

// The dimensions of the work buffers for a batch of S sequences of N tokens of `cfg` (attn_work left 0: the CUDA
// model sets it).
GpuLayerDims gpu_layer_dims(const model::ModelConfig& cfg, int64_t S, int64_t N, bool bf16_activations);
// The same for a layer's own kept copy (--recompute none), with bf16 products or not.
GpuLayerDims gpu_own_layer_dims(const model::ModelConfig& cfg, int64_t S, int64_t N, bool bf16_products,
                                bool bf16_activations);

// The dimensions of the GPU model's work buffers for a training or evaluation batch (model_cuda_buffers.cpp:
// ensure_rows): gpu_layer_dims, the span's halo rows and global-memory prefix, and the attention backward's workspace.
GpuLayerDims gpu_batch_dims(const model::ModelConfig& cfg, int64_t S, int64_t N, bool bf16_products,
                            bool bf16_activations, const GpuSpan& span = {});

// With bf16 products, whether the window attention runs on bf16 operands (16-byte rows: head dim % 8 == 0).
bool attention_on_bf16_operands(const model::ModelConfig& cfg, bool bf16_products);
// With bf16 products, whether the LaCT operator takes bf16 product operands (LactOptions::bf16; with Muon it runs
// tf32): then its backward reads q and k only through the bf16 copies its forward made.
bool lact_on_bf16_operands(const model::ModelConfig& cfg, bool bf16_products);
// The Titans / TNT branch's shape for a batch of S sequences of N tokens (arch "titans" / "tnt"): every memory of the
// spec (global first) over [S * n_mem_heads, N, d].
titans::TntShape gpu_tnt_shape(const model::ModelConfig& cfg, int64_t S, int64_t N);
// TNT context parallelism (use_global) on rank `rank` of a split of S sequences into spans of N tokens: the global
// memory runs over the prefix of spans 0..rank (T = (rank + 1) N), the local memories (if any) over the span.
struct GpuSplitShapes {
  titans::MemoryShape global;
  bool has_local = false;
  titans::TntShape local;
};
// With `pass_state` (--cp-global state) the global memory runs over the span alone, from the previous rank's state,
// its last chunk updating too unless this is the last of `ranks` ranks (MemoryShape::continues).
GpuSplitShapes gpu_split_shapes(const model::ModelConfig& cfg, int64_t S, int64_t N, int rank, int ranks = 1,
                                bool pass_state = false);
// Floats of the global memory's chain state for S sequences ([W1 | W2] per sequence-head, and the momentum).
int64_t gpu_global_state_floats(const model::ModelConfig& cfg, int64_t S);
// The LaCT operator's shape for a batch of S sequences of N tokens (arch "lact").
lact::Shape gpu_lact_shape(const model::ModelConfig& cfg, int64_t S, int64_t N);
// Whether the GPU model's shared LaCT runner of a batch (the one every layer's forward and backward use with
// --recompute full and save-attention, the last layer's with none) keeps each chunk's products for the backward
// (lact::Fused's keep_products: the same bits, the backward does not recompute them): for a training batch
// (`backward`), unless TTT_LACT_KEEP=0. The per-layer records of --recompute none never keep them (one set per
// layer would cost L x the kept bytes). The model and its memory estimate both ask this.
bool gpu_lact_keeps_products(bool backward);

// What a layer's backward reads of its forward (layer_backward and the memory operators' backward in
// model_cuda_layer.cpp). The full and save-attention levels hold one layer of these (recomputed per layer); level none
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
  X(oT, float, rows * D)              /* memory operator output [S*H, N, d] (its norm reads it in that layout) */ \
  X(normed, float, rows * D)          /* per-head RMSNorm of o */                                                 \
  X(rinvo, float, rows * H)                                                                                       \
  X(zs, float, rows * H)              /* output gate pre-activation */                                            \
  X(gate, float, rows * H)                                                                                        \
  X(xmid, float, rows * D)            /* x + sum Wo */                                                            \
  X(rinv2, float, rows)               /* 1/rms of the MLP norm */                                                 \
  X(ga, float, act32 * rows * F)      /* h2 W_gate: the SwiGLU's inputs, fp32 or (bf16 activations) stored in */  \
  X(ga_bf16, bf16, act16 * rows * F)  /* bf16 by their products */                                                \
  X(up, float, act32 * rows * F)      /* h2 W_up */                                                               \
  X(up_bf16, bf16, act16 * rows * F)                                                                              \
  X(h, float, act32 * rows * D)       /* the product operands: fp32, or bf16 with bf16 activations */             \
  X(h_bf16, bf16, act16 * rows * D)   /* RMSNorm(x) */                                                            \
  X(h2, float, act32 * rows * D)                                                                                  \
  X(h2_bf16, bf16, act16 * rows * D)  /* RMSNorm(xmid) */                                                         \
  X(sum, float, act32 * rows * D)     /* attn + gated memory output */                                            \
  X(sum_bf16, bf16, act16 * rows * D)                                                                             \
  X(mm, float, act32 * rows * F)                                                                                  \
  X(mm_bf16, bf16, act16 * rows * F)  /* silu(ga) up */

// The other tables of the GPU model's training buffers (cuda/model_buffers.h makes the buffers from them; the
// dimensions are those above, and cuda/model_buffers.h says what the names mean). A layer's activations are the
// entries its backward reads (TTT_GPU_LAYER_KEPT: with --recompute none every layer but the last keeps its own) and
// the forward's scratch; then its gradients, the context-parallel exchanges' buffers and the head's.
#define TTT_GPU_LAYER_SCRATCH(X)                                                                                   \
  X(vm, float, rows * D)              /* silu(v) (v_silu) */                                                      \
  X(rates, float, rows * G)           /* the gates' activations, before their per sequence-head copies */         \
  X(mom, float, rows * G)                                                                                         \
  X(dec, float, rows * G)                                                                                         \
  X(w0b, float, W)                    /* LaCT initial weights broadcast per sequence (the runner packs them) */   \
  X(w1b, float, W)                                                                                                \
  X(w2b, float, W)                                                                                                \
  X(w0f, float, H * dh * d)           /* low-rank w0 resolved (A B + 0.5 I) */                                    \
  X(w2f, float, H * dh * d)                                                                                       \
  X(sum_work, float, act16 * rows * D) /* bf16 activations: the fp32 sum before its bf16 copy */                  \
  X(xin, float, act16 * rows * D)     /* the layer input widened from the kept bf16 residual stream */            \
  X(xout, float, act16 * rows * D)    /* the layer output before it is rounded into the kept stream */

#define TTT_GPU_LAYER_GRADIENTS(X)                                                                                 \
  X(dx, float, rows * D)              /* d(layer output) in, d(layer input) out */                                \
  X(dxm, float, rows * D)             /* d xmid */                                                                \
  X(dmm, float, act32 * rows * F)     /* d(silu(ga) up): fp32, or stored in bf16 by its product */                \
  X(dmm_bf16, bf16, act16 * rows * F)                                                                             \
  X(dga, float, act32 * rows * F)     /* SwiGLU's input gradients: product operands only, so in bf16 with */      \
  X(dup, float, act32 * rows * F)     /* bf16 activations */                                                      \
  X(dga_bf16, bf16, act16 * rows * F)                                                                             \
  X(dup_bf16, bf16, act16 * rows * F)                                                                             \
  X(gop16, bf16, act16 * rows * 3 * D) /* dx, dxm or dqkv rounded: their kernels write it, two products read it */\
  X(dh2, float, rows * D)                                                                                         \
  X(dsum, float, rows * D)                                                                                        \
  X(dnormed, float, arows * D)                                                                                    \
  X(dO, float, arows * D)             /* context parallel: the attention's dq over the halo rows */               \
  X(doT, float, rows * D)                                                                                         \
  X(dgate, float, rows * H)                                                                                       \
  X(dzs, float, rows * H)                                                                                         \
  X(gw0b, float, W)                   /* LaCT operator gradients */                                               \
  X(gw1b, float, W)                                                                                               \
  X(gw2b, float, W)                                                                                               \
  X(gqT, float, rows * D)                                                                                         \
  X(gkT, float, rows * D)                                                                                         \
  X(gvT, float, rows * D)                                                                                         \
  X(glrT, float, 3 * BHN)                                                                                         \
  X(gmomT, float, BHN)                                                                                            \
  X(gthT, float, M * BHN)             /* Titans / TNT operator gradients */                                       \
  X(getT, float, M * BHN)                                                                                         \
  X(galT, float, M * BHN)                                                                                         \
  X(gtw1b, float, M * W)                                                                                          \
  X(gtw2b, float, M * W)                                                                                          \
  X(dvm, float, rows * D)                                                                                         \
  X(drates, float, rows * G)                                                                                      \
  X(dzlr, float, rows * G)            /* d of a gate's pre-activation (each gate in turn) */                      \
  X(dmom, float, rows * H)                                                                                        \
  X(dzm, float, rows * H)                                                                                         \
  X(dqkv, float, rows * 3 * D)                                                                                    \
  X(dqa, float, rows * D)                                                                                         \
  X(dka, float, rows * D)                                                                                         \
  X(dh, float, rows * D)                                                                                          \
  X(dz, float, arows * D)             /* q/k preparation: d z and d z * x (context parallel: the attention's */   \
  X(dzx, float, arows * D)            /* dk, dv over the halo rows first, as dnormed and dO its d(out) and dq) */ \
  X(dwD, float, D)                    /* a per-channel weight's gradient */                                       \
  X(gwf, float, H * dh * d)           /* low-rank: d of the resolved weight, summed over sequences */             \
  X(attn_work, float, attn_work)      /* attention backward workspace */

// TNT context parallelism (docs/CONTEXT_PARALLEL.md; sizes 0, nothing allocated, without it). A rank with a halo
// (the previous rank's window - 1 rows of keys and values in front of each sequence) runs the attention over
// arows = S*(halo + N) rows: qa, ka, attn, lse above, and in the backward dnormed, dO, dz, dzx, are sized for them
// (model_cuda_context_parallel.cpp: attention_rope; model_cuda_layer.cpp: layer_backward). xrows = arows with a
// halo (0 without); halo = S*h rows a rank sends (h = window - 1); U floats of one span's global-memory inputs
// packed [q | k | v | theta | eta | alpha] (each [S*H, N, .]: 3*rows*D + 3*BHN), Ncp ranks, P = cp_rank + 1 spans
// of the prefix the global memory runs over (prefix = P*rows*D). The prefix's inputs [S*H, P*N, .] live in gsend
// once it has been sent (same six parts, P*U floats) and their gradients in gstage once it has been unpacked
// (global_split_forward / backward). Passing the state instead (--cp-global state, GpuSpan::pass_state:
// global_state_forward / backward): no prefix (P = 1, Ncp = 0; po holds the global memory's output over the span
// alone, prefix = rows*D, before it is added to the locals'), gsend holds the span's global-memory input gradients
// (U), and `state` floats of the chain's state (the global memory's [W1 | W2] per sequence-head, and its momentum)
// are sent and received; every layer keeps the entry state it received (model_cuda_impl.h: state_kept, L x state)
// for the backward's recomputation.
#define TTT_GPU_CONTEXT_BUFFERS(X)                                                                                 \
  X(xv, float, xrows * D)             /* attention v: the received halo's values, then this rank's */             \
  X(halo_send, float, 2 * halo * D)   /* [k | v] of the tail rows (forward), of the halo rows (backward) */       \
  X(halo_recv, float, 2 * halo * D)   /* the next rank's halo gradient (backward) */                              \
  X(gsend, float, P * U)              /* this rank's packed span; then the prefix inputs; the spans' gradients */ \
  X(gstage, float, Ncp * U)           /* every rank's packed span; then the prefix's input gradients; received */ \
  X(po, float, prefix)                /* global output over the prefix; in the backward its gradient */          \
  X(state_send, float, state)         /* --cp-global state: the exit state sent on; the entry adjoint sent back */ \
  X(state_recv, float, state)         /* --cp-global state: the exit state's adjoint from the next rank */

#define TTT_GPU_HEAD_BUFFERS(X)                                                                                    \
  X(logits, float, rows * V)          /* and, in place, their gradient (fp32, or bf16 with bf16 products) */      \
  X(hf, float, act32 * rows * D)      /* final RMSNorm: a product operand, fp32 or bf16 like the layers' */       \
  X(hf_bf16, bf16, act16 * rows * D)                                                                              \
  X(rinvf, float, rows)                                                                                           \
  X(row_loss, float, rows)                                                                                        \
  X(lse_ce, float, rows)              /* cross-entropy log-sum-exp */

// Bytes of the entries of a table (of one layer for the layer tables) at `dims`, in doubles (an estimate of an absurd
// config stays finite instead of wrapping).
double gpu_kept_layer_bytes(const GpuLayerDims& dims);
double gpu_layer_scratch_bytes(const GpuLayerDims& dims);
double gpu_layer_gradient_bytes(const GpuLayerDims& dims);
double gpu_context_buffer_bytes(const GpuLayerDims& dims);
double gpu_head_buffer_bytes(const GpuLayerDims& dims);

}  // namespace ttt::backend
