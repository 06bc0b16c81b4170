// Rotary position embedding ("rotate_half" per head) on the GPU, forward and backward (fp32), as the CPU's
// nn::rope (src/nn/layers.cpp); tests/test_cuda_kernels_rope.cpp checks it. Every pointer is a DEVICE pointer; every
// call enqueues on the given stream (a cudaStream_t, null: the default stream) and returns; launches are checked
// and failures throw ttt::Error. This header needs no CUDA headers.
#pragma once
#include <cstdint>

#include "core/dtype.h"  // bf16

namespace ttt::cuda {

// x, y [N, heads*hd], hd even; channel i < hd/2 pairs with i + hd/2, angle pos[r] * theta^(-2i/hd) (angles,
// cos and sin in double). pos: N int64 positions on the device. In place (x == y) is allowed.
void rope_forward(const float* x, float* y, const int64_t* pos, int64_t N, int64_t heads, int64_t hd,
                  double theta, void* stream = nullptr);
// dx = inverse rotation of dy.
void rope_backward(const float* dy, float* dx, const int64_t* pos, int64_t N, int64_t heads, int64_t hd,
                   double theta, void* stream = nullptr);
// The same with leading dimensions (row r of x at x + r * ldx): a strided source or destination without a copy.
void rope_forward(const float* x, int64_t ldx, float* y, int64_t ldy, const int64_t* pos, int64_t N, int64_t heads,
                  int64_t hd, double theta, void* stream = nullptr);
void rope_backward(const float* dy, int64_t lddy, float* dx, int64_t lddx, const int64_t* pos, int64_t N,
                   int64_t heads, int64_t hd, double theta, void* stream = nullptr);
// The forward rotation stored in bf16 (the fp32 result rounded to nearest even): the bf16 attention's q and k.
void rope_forward(const float* x, int64_t ldx, bf16* y, int64_t ldy, const int64_t* pos, int64_t N, int64_t heads,
                  int64_t hd, double theta, void* stream = nullptr);

}  // namespace ttt::cuda
