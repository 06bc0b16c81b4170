// Element-wise kernels of the GPU model and generation (fp32; SwiGLU can store bf16): fills, axpy, scaling, the
// gradient mask, bias + activation (gates and rates) and their adjoints, strided SiLU, SwiGLU. Each computes what
// the CPU layer of src/nn, src/autograd or src/model computes (tests/test_cuda_model.cpp checks them through the
// whole model). Device pointers; the legacy default stream; launches checked (failures throw ttt::Error).
// This header needs no CUDA headers.
#pragma once
#include <cstdint>

#include "core/dtype.h"
#include "core/scalar_math.h"

namespace ttt::cuda::mk {

void fill(float* p, float value, int64_t n);
void axpy(float* y, const float* x, float a, int64_t n);  // y += a x
void scale(float* p, float a, int64_t n);
void zero_where_masked(float* p, const uint8_t* mask, int64_t n);  // p[i] = 0 where mask[i] == 0

// z [rows, cols] += bias (per column; bias may be null), then y = act(z + shift).
void bias_act_forward(float* z, const float* bias, float* y, int64_t rows, int64_t cols, double shift,
                      math::Activation act);
// dz = dy * act'(z + shift).
void act_backward(const float* z, const float* dy, float* dz, int64_t n, double shift, math::Activation act);
// A rate or gate by its rule (math::GateRule) from its projection z [rows, cols]: z += bias (bias may be null), then
// y = act(z + shift), then y *= scale (when not 1).
void gate_forward(float* z, const float* bias, float* y, int64_t rows, int64_t cols, const math::GateRule& rule);
// Its adjoint: dy *= scale (in place, when not 1), then dz = dy * act'(z + shift).
void gate_backward(const float* z, float* dy, float* dz, int64_t n, const math::GateRule& rule);
// y [rows, cols] = silu(x) (x with leading dimension ldx) / dx (+)= dy * silu'(x).
void silu_strided_forward(const float* x, int64_t ldx, float* y, int64_t rows, int64_t cols);
void silu_strided_backward(const float* x, int64_t ldx, const float* dy, float* dx, int64_t lddx, int64_t rows,
                           int64_t cols);

// m = silu(a) * u; backward da = dm * u * silu'(a), du = dm * silu(a).
void swiglu_forward(const float* a, const float* u, float* m, int64_t n);
void swiglu_forward(const float* a, const float* u, bf16* m, int64_t n);  // m stored in bf16
void swiglu_backward(const float* a, const float* u, const float* dm, float* da, float* du, int64_t n);
// da, du stored in bf16 (the GPU model's bf16 activations: they are product operands only).
void swiglu_backward(const float* a, const float* u, const float* dm, bf16* da, bf16* du, int64_t n);
// Every array in bf16 (the GPU model's bf16 activations: ga, up and d(m) stored in bf16 by their products), fp32
// math per element (lact::swiglu_elem, swiglu_elem_bwd), each output rounded to nearest even.
void swiglu_forward(const bf16* a, const bf16* u, bf16* m, int64_t n);
void swiglu_backward(const bf16* a, const bf16* u, const bf16* dm, bf16* da, bf16* du, int64_t n);

}  // namespace ttt::cuda::mk
