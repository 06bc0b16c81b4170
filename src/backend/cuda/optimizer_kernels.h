// The AdamW step on the GPU (src/train/optimizer.h's arithmetic); tests/test_cuda_kernels_loss_optim.cpp checks it against
// the CPU optimizer. Every pointer is a DEVICE pointer; the call enqueues on the given stream (a cudaStream_t,
// null: the default stream) and returns; the launch is checked and failures throw ttt::Error. The GPU model's
// other optimizer pieces are the gradient mask (mk::zero_where_masked, elementwise_kernels.h) and clipping
// (mk::sum_squares, reduction_kernels.h; mk::scale). This header needs no CUDA headers.
#pragma once
#include <cstdint>

namespace ttt::cuda {

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

}  // namespace ttt::cuda
