// RMSNorm on the GPU, forward and backward (fp32; the forward can store its output in bf16): whole rows or per
// head. Each computes what its CPU reference computes (nn::rms_norm / nn::rms_norm_heads, src/nn/layers.cpp);
// tests/test_cuda_kernels_norm.cpp checks them on fresh random inputs. Every pointer is a DEVICE pointer; every call
// enqueues on the given stream (a cudaStream_t, null: the default stream) and returns; launches are checked and
// failures throw ttt::Error.
//
// Determinism: the row sums and the weight gradient are fixed trees accumulating in double, with no atomics, so
// repeated runs give bit-identical results. Backward kernels OVERWRITE their outputs (they do not accumulate).
//
// This header needs no CUDA headers.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace ttt::cuda {

// ---- RMSNorm over groups of `group` consecutive columns (group = D: plain RMSNorm; group = hd: per head) --
// x, y [N,D] row-major, w [D] (per channel), rinv [N, D/group] = 1/sqrt(mean(x^2) + eps) per (row, group),
// saved for the backward. D % group == 0.
void rms_norm_forward(const float* x, const float* w, float* y, float* rinv, int64_t N, int64_t D, int64_t group,
                      double eps, void* stream = nullptr);
// The same with y stored in bf16 (the float result rounded to nearest even): the GPU model's bf16 activations.
void rms_norm_forward(const float* x, const float* w, bf16* y, float* rinv, int64_t N, int64_t D, int64_t group,
                      double eps, void* stream = nullptr);
// Whole rows (group = D) with x also copied into x_copy [N, D] (not x itself) in the same pass: the GPU model's
// residual x + (...) W, which the product then accumulates into, without a separate copy pass.
void rms_norm_forward_copy(const float* x, const float* w, float* y, float* rinv, float* x_copy, int64_t N,
                           int64_t D, double eps);
void rms_norm_forward_copy(const float* x, const float* w, bf16* y, float* rinv, float* x_copy, int64_t N,
                           int64_t D, double eps);
// Bytes of the work buffer rms_norm_backward needs for dw (deterministic two-pass reduction).
size_t rms_norm_backward_workspace(int64_t N, int64_t D);
// dy [N,D] -> dx [N,D] (skipped when null) and dw [D] (skipped when null; then work may be null too).
void rms_norm_backward(const float* x, const float* w, const float* rinv, const float* dy, float* dx, float* dw,
                       void* work, int64_t N, int64_t D, int64_t group, void* stream = nullptr);
// The same with dx = residual + the norm's dx (residual [N,D] may be null: none; it must not be dx itself) and, when
// dx16 is not null, dx rounded to bf16 (nearest even) beside it: the GPU model's residual-stream gradient and its
// bf16 product operand in the pass that computes the norm's dx. The sum is rounded as a separate add would round it.
void rms_norm_backward_add(const float* x, const float* w, const float* rinv, const float* dy, const float* residual,
                           float* dx, bf16* dx16, float* dw, void* work, int64_t N, int64_t D, int64_t group,
                           void* stream = nullptr);
// The same per head: group = D / heads.
void rms_norm_heads_forward(const float* x, const float* w, float* y, float* rinv, int64_t N, int64_t D,
                            int64_t heads, double eps, void* stream = nullptr);
void rms_norm_heads_backward(const float* x, const float* w, const float* rinv, const float* dy, float* dx,
                             float* dw, void* work, int64_t N, int64_t D, int64_t heads, void* stream = nullptr);
// The same per head with x (and the backward's dx) in the memory operators' per sequence-head layout
// [S*heads, N, D/heads] (rows S*N; y, rinv and dy [S*N, D] as above): the GPU model's memory-output norm reads the
// operator's output and writes its gradient in the operator's layout, without the two layout passes. Same bits.
void rms_norm_heads_forward_batch(const float* xT, const float* w, float* y, float* rinv, int64_t S, int64_t N,
                                  int64_t D, int64_t heads, double eps);
void rms_norm_heads_backward_batch(const float* xT, const float* w, const float* rinv, const float* dy, float* dxT,
                                   float* dw, void* work, int64_t S, int64_t N, int64_t D, int64_t heads);

}  // namespace ttt::cuda
