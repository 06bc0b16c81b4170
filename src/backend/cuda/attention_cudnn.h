// cuDNN's fused flash attention as an optional path of the bf16-operand attention forward (swa_forward_bf16 with
// bf16 q, k, v; attention.h), issue 12. The contract is swa_forward_bf16's: same semantics (token i sees the keys
// i - window < j <= i of its own sequence, scores scaled by 1/sqrt(hd)), layouts, fp32 o and natural-log lse
// (what swa_backward_bf16 consumes). Built only where CMake finds cuDNN (TTT_WITH_CUDNN, src/backend/cuda/
// attention_cudnn.cpp); libcudnn.so.9 is loaded at first use (dlopen), so the same binary runs without it.
//
// The cuDNN graph (backend API, one execution plan per shape and device, cached with its workspace): S = Q K^T
// (fp32), S * scale, the causal band (row >= col) and the window's left edge (col + window > row) as
// GEN_INDEX / compare / BINARY_SELECT(-inf), softmax (max, sub, exp, sum, div) with the statistics
// max + log(sum) = lse, P (bf16) V. cuDNN writes o in bf16 and the statistics as [S, heads, N] into buffers of the
// plan; a small kernel widens o into the caller's fp32 o (ldo) and transposes the statistics into lse
// [S*N, heads]. So cuDNN's o is rounded to bf16 (8 bits) where our kernels keep fp32: within the bf16 error bounds
// of the tests (relative L2 ~1e-2 against float64), not the bits of our kernels.
//
// Calls of one shape share the plan's o/statistics buffers: enqueue them on one stream (as the model does).
// This header needs no CUDA or cuDNN headers.
#pragma once
#include <cstdint>
#include <string>

#include "backend/cuda/attention.h"

namespace ttt::cuda {

// The cuDNN version loaded at run time (e.g. 91000 for 9.10.0), or 0 when the build has no cuDNN or
// libcudnn.so.9 cannot be loaded (then *why, if given, says why). The first call prints the version it loaded.
int cudnn_runtime_version(std::string* why = nullptr);

// Whether swa_forward_bf16 (bf16 operands) tries cuDNN first: the environment's TTT_ATTN_CUDNN=1 (read once;
// default off), or what swa_forward_bf16_set_cudnn set. Where cuDNN cannot run a shape, swa_forward_bf16 runs our
// kernels (one warning per process, to stderr).
bool swa_forward_bf16_uses_cudnn_setting();
// Tests and benchmarks: 1 try cuDNN, 0 never, -1 the environment's choice (the default). Returns the setting it
// replaced.
int swa_forward_bf16_set_cudnn(int on);

// The forward through cuDNN, with the contract and checks of swa_forward_bf16 for bf16 operands (the caller has
// checked shape, leading dimensions and alignment). Returns true when it enqueued the work on `stream`; false,
// having enqueued nothing, when cuDNN is not built in, not loadable, or has no engine for this shape (or the plan
// would have to be built while `stream` is being captured): *why, if given, says which. Never throws for those.
bool swa_forward_cudnn(const AttentionShape& s, const bf16* q, int64_t ldq, const bf16* k, int64_t ldk, const bf16* v,
                       int64_t ldv, float* o, int64_t ldo, float* lse, void* stream, std::string* why = nullptr);

// attention_cudnn_outputs.cu: o[r, c] (ld ldo, fp32) = o16[r, c] (bf16, rows of heads*hd), and lse[r, h] =
// stats[(seq*heads + h)*N + i] for r = seq*N + i. Enqueued on `stream`.
void cudnn_attention_outputs(const AttentionShape& s, const bf16* o16, const float* stats, float* o, int64_t ldo,
                             float* lse, void* stream);

}  // namespace ttt::cuda
