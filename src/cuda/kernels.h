// Forward and backward CUDA kernels of the model's small layers (fp32): RMSNorm (whole rows or per head),
// RoPE, softmax cross-entropy, and the AdamW step. Each one computes what its CPU reference computes
// (src/nn/layers.cpp, src/train/optimizer.cpp); tests/test_cuda_kernels.cpp checks them on fresh random
// inputs. Every pointer is a DEVICE pointer; every call enqueues on the given stream (a cudaStream_t, null:
// the default stream) and returns; launches are checked and failures throw ttt::Error.
//
// Determinism: every reduction (row sums, the weight gradient of RMSNorm, the cross-entropy mean) is a fixed
// tree accumulating in double, with no atomics, so repeated runs give bit-identical results.
//
// Backward kernels OVERWRITE their gradient outputs (they do not accumulate into them).
//
// This header needs no CUDA headers: host code (tests, trainer) includes it freely.
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
// Bytes of the work buffer rms_norm_backward needs for dw (deterministic two-pass reduction).
size_t rms_norm_backward_workspace(int64_t N, int64_t D);
// dy [N,D] -> dx [N,D] (skipped when null) and dw [D] (skipped when null; then work may be null too).
void rms_norm_backward(const float* x, const float* w, const float* rinv, const float* dy, float* dx, float* dw,
                       void* work, int64_t N, int64_t D, int64_t group, void* stream = nullptr);
// The same per head: group = D / heads.
void rms_norm_heads_forward(const float* x, const float* w, float* y, float* rinv, int64_t N, int64_t D,
                            int64_t heads, double eps, void* stream = nullptr);
void rms_norm_heads_backward(const float* x, const float* w, const float* rinv, const float* dy, float* dx,
                             float* dw, void* work, int64_t N, int64_t D, int64_t heads, void* stream = nullptr);

// ---- RoPE, "rotate_half" per head -------------------------------------------------------------------------
// x, y [N, heads*hd], hd even; channel i < hd/2 pairs with i + hd/2, angle pos[r] * theta^(-2i/hd) (angles,
// cos and sin in double). pos: N int64 positions on the device. In place (x == y) is allowed.
void rope_forward(const float* x, float* y, const int64_t* pos, int64_t N, int64_t heads, int64_t hd,
                  double theta, void* stream = nullptr);
// dx = inverse rotation of dy.
void rope_backward(const float* dy, float* dx, const int64_t* pos, int64_t N, int64_t heads, int64_t hd,
                   double theta, void* stream = nullptr);

// ---- softmax cross-entropy ---------------------------------------------------------------------------------
// logits [N,V], targets [N] int32 (< 0: ignored; otherwise must be < V). Outputs: lse [N] (log-sum-exp per row,
// 0 for ignored rows; saved for the backward), row_loss [N] (0 for ignored rows; may be null), loss [1] = mean
// over the valid rows (0 when none), valid [1] = number of valid rows. Exp in float, sums in double.
void cross_entropy_forward(const float* logits, const int32_t* targets, float* lse, float* row_loss, float* loss,
                           int32_t* valid, int64_t N, int64_t V, void* stream = nullptr);
// dlogits [N,V] = (softmax - onehot) * dloss / valid (zero rows for ignored targets; all zero when valid = 0).
// dlogits may be logits itself (in place: the GPU model keeps one [N,V] array for both).
// dloss: device scalar (the upstream gradient of the loss), or null for 1.
void cross_entropy_backward(const float* logits, const int32_t* targets, const float* lse, const int32_t* valid,
                            const float* dloss, float* dlogits, int64_t N, int64_t V, void* stream = nullptr);

// ---- AdamW (src/train/optimizer.h) -------------------------------------------------------------------------
// One step over a flat parameter array, `step` = the step number t after incrementing (1, 2, ...). Per element,
// in double with the CPU's operation order (no fused multiply-adds): p *= 1 - lr*wd when decay, m, v updated
// and stored as float, p -= lr * (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps). mask (n bytes, may be null): elements
// with mask 0 are left untouched (p, m and v).
struct AdamWParams {
  double lr = 0, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
  int64_t step = 1;
  bool decay = false;
};
void adamw_step(float* p, const float* g, float* m, float* v, const uint8_t* mask, int64_t n, const AdamWParams& a,
                void* stream = nullptr);

// Waits for the stream (tests).
void stream_synchronize(void* stream = nullptr);

}  // namespace ttt::cuda
