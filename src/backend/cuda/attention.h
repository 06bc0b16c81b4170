// Causal sliding-window softmax attention on the GPU, forward and backward, fp32, flash style: scores exist
// only as [64 queries x 64 keys] tiles in shared memory, never as a T x T matrix. The twin of the CPU reference
// nn::sliding_window_attention (src/nn/layers.cpp), which tests/test_cuda_attention.cpp checks it against.
//
// Semantics (those of the CPU reference): token i of a sequence attends to the keys j of the SAME sequence with
//   i - window < j <= i
// (window = 1: only itself; window >= N: full causal attention), with scores (q_i . k_j) / sqrt(hd) and
//   o_i = sum_j softmax_j(scores) v_j,   lse_i = log sum_j exp(scores_ij)   (per row and head).
//
// Layouts: S sequences of N rows each; row r = s*N + i. Head h uses columns [h*hd, (h+1)*hd) of each row. q, k,
// v, o, dO, dq, dk, dv are row-major with their own leading dimensions (elements between rows, >= heads*hd), so
// q/k/v may point into a fused [rows, 3D] qkv buffer (ld = 3D) and dq/dk/dv into its gradient. lse is
// [S*N, heads], contiguous. Every pointer is a DEVICE pointer; calls enqueue on `stream` (a cudaStream_t, null:
// the default stream) and return; launches are checked and failures throw ttt::Error.
//
// Head widths: any 1 <= hd <= 128 (tiles are specialised for 32, 64 and 128 columns; other widths run in the
// next larger one with zero-padded columns). hd > 128, window < 1 or bad leading dimensions throw ttt::Error
// before anything is enqueued.
//
// Determinism: no atomics. The backward runs one pass over key tiles (each block owns the dk/dv rows of its 64
// keys and walks the query tiles that see them) and one over query tiles (each block owns its dq rows), every
// sum in a fixed order, so repeated runs are bit-identical.
//
// This header needs no CUDA headers: host code (tests, model) includes it freely.
#pragma once
#include <cstddef>
#include <cstdint>

#include "backend/cuda/device.h"  // elapsed_ms (was declared here)
#include "core/dtype.h"           // bf16

namespace ttt::cuda {

struct AttentionShape {
  int64_t S, N, heads, hd, window;
};

// o = attention(q, k, v); lse [S*N, heads] = log-sum-exp of the scaled scores of each (row, head), saved for the
// backward.
void swa_forward(const AttentionShape& s, const float* q, int64_t ldq, const float* k, int64_t ldk, const float* v,
                 int64_t ldv, float* o, int64_t ldo, float* lse, void* stream = nullptr);

// Bytes of the work buffer swa_backward needs (delta = rowsum(dO * O) per (row, head): S*N*heads floats).
size_t swa_backward_workspace(const AttentionShape& s);

// dq, dk, dv from dO, given the forward's o and lse. OVERWRITES dq, dk, dv (any of them may be null = not
// wanted). work: swa_backward_workspace(s) bytes (may be null when that is 0).
void swa_backward(const AttentionShape& s, const float* q, int64_t ldq, const float* k, int64_t ldk, const float* v,
                  int64_t ldv, const float* o, int64_t ldo, const float* lse, const float* dO, int64_t lddo,
                  float* dq, int64_t lddq, float* dk, int64_t lddk, float* dv, int64_t lddv, void* work,
                  void* stream = nullptr);

// The same contract with bf16 tensor-core products (fp32 accumulation, statistics and outputs): q, k, v, dO and
// the probability / dS tiles are rounded to bf16 as they enter an mma.sync m16n8k16 (flash-attention-2 style,
// fragments in registers, src/backend/cuda/attention_bf16.cu); softmax statistics, lse, delta and every accumulator stay
// fp32. Inputs and outputs are the fp32 arrays of swa_forward / swa_backward with the same layouts, checks, head
// widths (specialised for 32, 64, 128; others zero-padded), determinism (no atomics, bit-reproducible) and
// workspace (swa_backward_workspace). Accuracy: relative L2 error of order 1e-3..1e-2 against float64 (bf16's 8
// mantissa bits), not the 1e-4 of the fp32 kernels. The backward expects the o and lse of swa_forward_bf16.
void swa_forward_bf16(const AttentionShape& s, const float* q, int64_t ldq, const float* k, int64_t ldk,
                      const float* v, int64_t ldv, float* o, int64_t ldo, float* lse, void* stream = nullptr);
void swa_backward_bf16(const AttentionShape& s, const float* q, int64_t ldq, const float* k, int64_t ldk,
                       const float* v, int64_t ldv, const float* o, int64_t ldo, const float* lse, const float* dO,
                       int64_t lddo, float* dq, int64_t lddq, float* dk, int64_t lddk, float* dv, int64_t lddv,
                       void* work, void* stream = nullptr);

// The same kernels on bf16 operands (q, k, v as bf16 bits, e.g. written by the layer that produces them): the
// values the fp32-input calls above round to on the way into the tiles, copied straight into shared memory
// (cp.async), so that for the same bf16 values both give bit-identical o, lse, dq, dk, dv (except where they run
// the Hopper wgmma kernels below: equal up to fp32 rounding, not bits). The backward rounds
// dO into its workspace (swa_backward_bf16_workspace bytes, 16-byte aligned) next to delta. bf16 operands need
// hd % 8 == 0, leading dimensions % 8 == 0 and 16-byte aligned pointers (checked; ttt::Error otherwise).
void swa_forward_bf16(const AttentionShape& s, const bf16* q, int64_t ldq, const bf16* k, int64_t ldk, const bf16* v,
                      int64_t ldv, float* o, int64_t ldo, float* lse, void* stream = nullptr);
// On Hopper the bf16-operand forward with hd = 64 runs a warpgroup (wgmma, sm_90a) kernel instead of the
// mma.sync one: same contract, outputs and lse (the backward consumes them unchanged), not bit-identical to the
// mma.sync kernel (fp32 sums inside the tensor cores run in another order). swa_forward_bf16_uses_wgmma says
// which one a call with shape s runs on the current device: 0 the mma.sync kernel, 2 or 3 the wgmma kernel with
// that many warpgroups (64 query rows each) per block. The wgmma kernel runs when the build has sm_90a code, the
// device is cc 9.0 and hd == 64, with 2 warpgroups unless the environment sets TTT_ATTN_WGMMA=3 (3 warpgroups) or
// TTT_ATTN_WGMMA=0 (off; read once).
// With TTT_ATTN_CUDNN=1 (off by default) the bf16-operand forward first tries cuDNN's fused attention where the
// build has it and it can run the shape (attention_cudnn.h: same contract, o rounded to bf16 by cuDNN).
int swa_forward_bf16_uses_wgmma(const AttentionShape& s);
// Tests and benchmarks: the warpgroups the wgmma forward may use in this process (0: never, 2 or 3), or -1 for
// the environment's choice (the default). Returns the setting it replaced (so that a scope can restore it).
int swa_forward_bf16_set_wgmma(int warpgroups);
size_t swa_backward_bf16_workspace(const AttentionShape& s);
// On Hopper the bf16-operand backward with hd = 64 runs warpgroup (wgmma, sm_90a) kernels after its delta kernel:
// same contract, outputs, determinism (no atomics, bit-reproducible) and workspace (on an H200 they gave the
// mma.sync kernels' bits on every shape tested: the same products summed in the same order; not a guarantee).
// swa_backward_bf16_uses_wgmma says which a call with shape s runs on the current device: 0 the mma.sync kernels,
// 1 wgmma dk/dv with the mma.sync dq, 2 wgmma dk/dv and dq, 3 as 2 with the dk/dv kernel's K, V in registers,
// 4 as 2 with both kernels' resident operands in registers (K, V; Q, dO), 5 and 6 as 3 and 4 with the dk/dv kernel
// software-pipelined across query tiles (all modes: the same products in the same order). The wgmma kernels run
// when the build has sm_90a code, the device is cc 9.0, hd == 64 and the mode is not 0: the environment's
// TTT_ATTN_WGMMA_BWD (0..6; read once), else the default, 6 (measured fastest).
int swa_backward_bf16_uses_wgmma(const AttentionShape& s);
// Tests and benchmarks: the mode (0..6 as above) the wgmma backward may use in this process, or -1 for the
// environment's choice (the default). Returns the setting it replaced.
int swa_backward_bf16_set_wgmma(int mode);
void swa_backward_bf16(const AttentionShape& s, const bf16* q, int64_t ldq, const bf16* k, int64_t ldk,
                       const bf16* v, int64_t ldv, const float* o, int64_t ldo, const float* lse, const float* dO,
                       int64_t lddo, float* dq, int64_t lddq, float* dk, int64_t lddk, float* dv, int64_t lddv,
                       void* work, void* stream = nullptr);

namespace mk {
// One query against n cached keys/values (generation; attention_one.cu): for each head h, o[h*hd + c] =
// sum_j softmax_j(q_h . K[j]_h / sqrt(hd)) V[j][h*hd + c] over the rows j < n of K, V [n, ld] (any order: a ring
// buffer). n <= 8192, hd <= 128. fp32; the legacy default stream.
void attend_one(const float* q, const float* K, const float* V, int64_t n, int64_t heads, int64_t hd, int64_t ld,
                float* o);
}  // namespace mk

}  // namespace ttt::cuda
