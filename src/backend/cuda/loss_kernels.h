// Softmax cross-entropy on the GPU, forward and backward (fp32 logits, sums in double; the gradient in fp32 or
// bf16), as the CPU's nn::cross_entropy (src/nn/layers.cpp); tests/test_cuda_kernels_loss_optim.cpp checks it. Every pointer is
// a DEVICE pointer; every call enqueues on the given stream (a cudaStream_t, null: the default stream) and returns;
// launches are checked and failures throw ttt::Error.
//
// Determinism: the row sums and the mean are fixed trees accumulating in double, with no atomics.
//
// This header needs no CUDA headers.
#pragma once
#include <cstdint>

namespace ttt::cuda {

// logits [N,V], targets [N] int32 (< 0: ignored; otherwise must be < V). Outputs: lse [N] (log-sum-exp per row,
// 0 for ignored rows; saved for the backward), row_loss [N] (0 for ignored rows; may be null), loss [1] = mean
// over the valid rows (0 when none), valid [1] = number of valid rows. Exp in float, sums in double.
void cross_entropy_forward(const float* logits, const int32_t* targets, float* lse, float* row_loss, float* loss,
                           int32_t* valid, int64_t N, int64_t V, void* stream = nullptr);
// dlogits [N,V] = (softmax - onehot) * dloss / valid (zero rows for ignored targets; all zero when valid = 0).
// OVERWRITES dlogits, which may be logits itself (in place: the GPU model keeps one [N,V] array for both).
// dloss: device scalar (the upstream gradient of the loss), or null for 1.
void cross_entropy_backward(const float* logits, const int32_t* targets, const float* lse, const int32_t* valid,
                            const float* dloss, float* dlogits, int64_t N, int64_t V, void* stream = nullptr);
// The same gradient rounded to bf16 (nearest even: the bits Blas would round the fp32 gradient to), written in
// place over the logits: row r's V bf16 values at the start of its own fp32 row, so the gradient is the bf16
// matrix at (const bf16*)logits with leading dimension 2V (the bf16 products' operand, no conversion pass).
void cross_entropy_backward_bf16(float* logits, const int32_t* targets, const float* lse, const int32_t* valid,
                                 const float* dloss, int64_t N, int64_t V, void* stream = nullptr);

}  // namespace ttt::cuda
