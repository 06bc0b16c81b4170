// Element-wise kernels (elementwise_kernels.h): grid-stride loops, one thread per element (SwiGLU's forward four
// where the arrays allow, its bf16-input forms eight); the per-element math is core/scalar_math.h's (SwiGLU's:
// ttt/lact_fused.h's swiglu_elem / swiglu_elem_bwd, the LaCT memory's, on top of it), as on the CPU. Naming and
// launch conventions: kernel_util.cuh.
#include "backend/cuda/elementwise_kernels.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "backend/cuda/check.cuh"
#include "backend/cuda/kernel_util.cuh"
#include "ttt/lact_fused.h"  // lact::swiglu_elem / swiglu_elem_bwd: the SwiGLU's per-element math, host and device

namespace ttt::cuda::mk {

namespace {

__global__ void k_fill(float* p, float v, int64_t n) { GRID_STRIDE(i, n) p[i] = v; }
__global__ void k_axpy(float* __restrict__ y, const float* __restrict__ x, float a, int64_t n) {
  const float* in[2] = {x, y};
  ilp_for_each(n, in, [&](int64_t i, const float(&v)[2]) { y[i] = v[1] + a * v[0]; });
}
__global__ void k_scale(float* p, float a, int64_t n) {
  const float* in[1] = {p};
  ilp_for_each(n, in, [&](int64_t i, const float(&v)[1]) { p[i] = v[0] * a; });
}
__global__ void k_zero_where_masked(float* p, const uint8_t* mask, int64_t n) {
  GRID_STRIDE(i, n) if (!mask[i]) p[i] = 0.0f;
}

__global__ void k_bias_act_fwd(float* z, const float* bias, float* y, int64_t rows, int64_t cols, float shift,
                               math::Activation a) {
  GRID_STRIDE(i, rows * cols) {
    float v = z[i];
    if (bias) v += bias[i % cols];
    z[i] = v;
    y[i] = math::activate(a, v + shift);
  }
}
__global__ void k_act_bwd(const float* z, const float* dy, float* dz, int64_t n, float shift, math::Activation a) {
  GRID_STRIDE(i, n) dz[i] = dy[i] * math::activation_grad(a, z[i] + shift);
}
__global__ void k_silu_strided_fwd(const float* x, int64_t ldx, float* y, int64_t rows, int64_t cols) {
  GRID_STRIDE(i, rows * cols) y[i] = math::silu(x[(i / cols) * ldx + i % cols]);
}
__global__ void k_silu_strided_bwd(const float* x, int64_t ldx, const float* dy, float* dx, int64_t lddx, int64_t rows,
                                   int64_t cols) {
  GRID_STRIDE(i, rows * cols) {
    const int64_t r = i / cols, c = i % cols;
    dx[r * lddx + c] += dy[i] * math::dsilu(x[r * ldx + c]);
  }
}

template <class Out>
__global__ void k_swiglu_fwd(const float* __restrict__ a, const float* __restrict__ u, Out* __restrict__ m,
                             int64_t n) {
  const float* in[2] = {a, u};
  ilp_for_each(n, in, [&](int64_t i, const float(&v)[2]) { store_as(m + i, lact::swiglu_elem(v[0], v[1])); });
}
// k_swiglu_fwd four consecutive elements a lane (16-byte aligned arrays): 16-byte loads, one 16- or 8-byte store,
// kIlp groups of four a trip (the element-wise kernel's 2-byte bf16 stores and 4-byte loads: ncu, H200, 760m step,
// ~355 µs a call for 1.34 GB, 3.8 TB/s). The same operations per element: the same bits.
template <class Out>
__global__ void k_swiglu_fwd_vec4(const float4* __restrict__ a, const float4* __restrict__ u, Out* __restrict__ m,
                                  int64_t n4) {
  ILP_STRIDE(base, n4) {
    float4 av[kIlp], uv[kIlp];
#pragma unroll
    for (int t = 0; t < kIlp; ++t) {
      const int64_t i = ILP_INDEX(base, t);
      if (i < n4) av[t] = a[i], uv[t] = u[i];
    }
#pragma unroll
    for (int t = 0; t < kIlp; ++t) {
      const int64_t i = ILP_INDEX(base, t);
      if (i >= n4) continue;
      const float4 o = make_float4(lact::swiglu_elem(av[t].x, uv[t].x), lact::swiglu_elem(av[t].y, uv[t].y),
                                   lact::swiglu_elem(av[t].z, uv[t].z), lact::swiglu_elem(av[t].w, uv[t].w));
      store4(m + 4 * i, o);
    }
  }
}
template <class Out>
__global__ void k_swiglu_bwd(const float* __restrict__ a, const float* __restrict__ u, const float* __restrict__ dm,
                             Out* __restrict__ da, Out* __restrict__ du, int64_t n) {
  const float* in[3] = {a, u, dm};
  ilp_for_each(n, in, [&](int64_t i, const float(&v)[3]) {
    float m, dai, dui;
    lact::swiglu_elem_bwd(v[0], v[1], v[2], m, dai, dui);  // m unused (not computed)
    store_as(da + i, dai);
    store_as(du + i, dui);
  });
}

// SwiGLU on bf16 inputs (the GPU model's bf16 activations: ga and up stored in bf16 by their products, d(mm) by its
// own), fp32 math (lact::swiglu_elem, swiglu_elem_bwd), bf16 outputs rounded to nearest even. Eight consecutive
// elements a lane (16-byte aligned arrays, n a multiple of 8): 16-byte loads and stores, kIlp groups of eight a
// trip, held as raw bf16 until they are used (a third of the registers of widened floats); the element-wise kernels
// below take the other arrays, with the same operations per element: the same bits.
__device__ __forceinline__ void widen8(const uint4& raw, float (&v)[8]) {
  const auto* pairs = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const float2 f = __bfloat1622float2(pairs[k]);
    v[2 * k] = f.x, v[2 * k + 1] = f.y;
  }
}
__device__ __forceinline__ uint4 narrow8(const float (&v)[8]) {
  uint4 raw;
  auto* pairs = reinterpret_cast<__nv_bfloat162*>(&raw);
#pragma unroll
  for (int k = 0; k < 4; ++k) pairs[k] = __floats2bfloat162_rn(v[2 * k], v[2 * k + 1]);
  return raw;
}
__global__ void k_swiglu_fwd_bf16x8(const uint4* __restrict__ a, const uint4* __restrict__ u, uint4* __restrict__ m,
                                    int64_t n8) {
  ILP_STRIDE(base, n8) {
    uint4 ar[kIlp], ur[kIlp];
#pragma unroll
    for (int t = 0; t < kIlp; ++t) {
      const int64_t i = ILP_INDEX(base, t);
      if (i < n8) ar[t] = a[i], ur[t] = u[i];
    }
#pragma unroll
    for (int t = 0; t < kIlp; ++t) {
      const int64_t i = ILP_INDEX(base, t);
      if (i >= n8) continue;
      float av[8], uv[8], mv[8];
      widen8(ar[t], av);
      widen8(ur[t], uv);
#pragma unroll
      for (int e = 0; e < 8; ++e) mv[e] = lact::swiglu_elem(av[e], uv[e]);
      m[i] = narrow8(mv);
    }
  }
}
__global__ void k_swiglu_bwd_bf16x8(const uint4* __restrict__ a, const uint4* __restrict__ u,
                                    const uint4* __restrict__ dm, uint4* __restrict__ da, uint4* __restrict__ du,
                                    int64_t n8) {
  ILP_STRIDE(base, n8) {
    uint4 ar[kIlp], ur[kIlp], dr[kIlp];
#pragma unroll
    for (int t = 0; t < kIlp; ++t) {
      const int64_t i = ILP_INDEX(base, t);
      if (i < n8) ar[t] = a[i], ur[t] = u[i], dr[t] = dm[i];
    }
#pragma unroll
    for (int t = 0; t < kIlp; ++t) {
      const int64_t i = ILP_INDEX(base, t);
      if (i >= n8) continue;
      float av[8], uv[8], dv[8], mv[8], dav[8], duv[8];
      widen8(ar[t], av);
      widen8(ur[t], uv);
      widen8(dr[t], dv);
#pragma unroll
      for (int e = 0; e < 8; ++e) lact::swiglu_elem_bwd(av[e], uv[e], dv[e], mv[e], dav[e], duv[e]);
      da[i] = narrow8(dav);
      du[i] = narrow8(duv);
    }
  }
}
__global__ void k_swiglu_fwd_bf16(const __nv_bfloat16* __restrict__ a, const __nv_bfloat16* __restrict__ u,
                                  __nv_bfloat16* __restrict__ m, int64_t n) {
  GRID_STRIDE(i, n) m[i] = __float2bfloat16(lact::swiglu_elem(__bfloat162float(a[i]), __bfloat162float(u[i])));
}
__global__ void k_swiglu_bwd_bf16(const __nv_bfloat16* __restrict__ a, const __nv_bfloat16* __restrict__ u,
                                  const __nv_bfloat16* __restrict__ dm, __nv_bfloat16* __restrict__ da,
                                  __nv_bfloat16* __restrict__ du, int64_t n) {
  GRID_STRIDE(i, n) {
    float mi, dai, dui;
    lact::swiglu_elem_bwd(__bfloat162float(a[i]), __bfloat162float(u[i]), __bfloat162float(dm[i]), mi, dai, dui);
    da[i] = __float2bfloat16(dai);
    du[i] = __float2bfloat16(dui);
  }
}

}  // namespace

void fill(float* p, float value, int64_t n) {
  if (n <= 0) return;
  k_fill<<<grid_for(n), kThreads>>>(p, value, n);
  TTT_LAUNCH_CHECK("fill");
}
void axpy(float* y, const float* x, float a, int64_t n) {
  if (n <= 0) return;
  k_axpy<<<grid_ilp(n), kThreads>>>(y, x, a, n);
  TTT_LAUNCH_CHECK("axpy");
}
void scale(float* p, float a, int64_t n) {
  if (n <= 0) return;
  k_scale<<<grid_ilp(n), kThreads>>>(p, a, n);
  TTT_LAUNCH_CHECK("scale");
}
void zero_where_masked(float* p, const uint8_t* mask, int64_t n) {
  if (n <= 0) return;
  k_zero_where_masked<<<grid_for(n), kThreads>>>(p, mask, n);
  TTT_LAUNCH_CHECK("zero_where_masked");
}
void bias_act_forward(float* z, const float* bias, float* y, int64_t rows, int64_t cols, double shift,
                      math::Activation act) {
  k_bias_act_fwd<<<grid_for(rows * cols), kThreads>>>(z, bias, y, rows, cols, float(shift), act);
  TTT_LAUNCH_CHECK("bias_act_forward");
}
void act_backward(const float* z, const float* dy, float* dz, int64_t n, double shift, math::Activation act) {
  k_act_bwd<<<grid_for(n), kThreads>>>(z, dy, dz, n, float(shift), act);
  TTT_LAUNCH_CHECK("act_backward");
}
void gate_forward(float* z, const float* bias, float* y, int64_t rows, int64_t cols, const math::GateRule& rule) {
  bias_act_forward(z, bias, y, rows, cols, rule.shift, rule.act);
  if (rule.scale != 1) scale(y, float(rule.scale), rows * cols);
}
void gate_backward(const float* z, float* dy, float* dz, int64_t n, const math::GateRule& rule) {
  if (rule.scale != 1) scale(dy, float(rule.scale), n);
  act_backward(z, dy, dz, n, rule.shift, rule.act);
}
void silu_strided_forward(const float* x, int64_t ldx, float* y, int64_t rows, int64_t cols) {
  k_silu_strided_fwd<<<grid_for(rows * cols), kThreads>>>(x, ldx, y, rows, cols);
  TTT_LAUNCH_CHECK("silu_strided_forward");
}
void silu_strided_backward(const float* x, int64_t ldx, const float* dy, float* dx, int64_t lddx, int64_t rows,
                           int64_t cols) {
  k_silu_strided_bwd<<<grid_for(rows * cols), kThreads>>>(x, ldx, dy, dx, lddx, rows, cols);
  TTT_LAUNCH_CHECK("silu_strided_backward");
}
namespace {
// The four-wide kernel where every array is 16-byte aligned (n a multiple of 4), else the element-wise one.
template <class Out>
void swiglu_forward_launch(const float* a, const float* u, Out* m, int64_t n) {
  if (n <= 0) return;
  if (n % 4 == 0 && aligned16(a) && aligned16(u) && aligned16(m))
    k_swiglu_fwd_vec4<<<grid_ilp(n / 4), kThreads>>>(reinterpret_cast<const float4*>(a),
                                                      reinterpret_cast<const float4*>(u), m, n / 4);
  else
    k_swiglu_fwd<<<grid_ilp(n), kThreads>>>(a, u, m, n);
  TTT_LAUNCH_CHECK("swiglu_forward");
}
}  // namespace

void swiglu_forward(const float* a, const float* u, float* m, int64_t n) { swiglu_forward_launch(a, u, m, n); }
void swiglu_forward(const float* a, const float* u, bf16* m, int64_t n) {
  swiglu_forward_launch(a, u, reinterpret_cast<__nv_bfloat16*>(m), n);
}
void swiglu_backward(const float* a, const float* u, const float* dm, float* da, float* du, int64_t n) {
  k_swiglu_bwd<<<grid_ilp(n), kThreads>>>(a, u, dm, da, du, n);
  TTT_LAUNCH_CHECK("swiglu_backward");
}
void swiglu_backward(const float* a, const float* u, const float* dm, bf16* da, bf16* du, int64_t n) {
  k_swiglu_bwd<<<grid_ilp(n), kThreads>>>(a, u, dm, reinterpret_cast<__nv_bfloat16*>(da),
                                          reinterpret_cast<__nv_bfloat16*>(du), n);
  TTT_LAUNCH_CHECK("swiglu_backward bf16");
}

namespace {
const __nv_bfloat16* device_bf16(const bf16* p) { return reinterpret_cast<const __nv_bfloat16*>(p); }
__nv_bfloat16* device_bf16(bf16* p) { return reinterpret_cast<__nv_bfloat16*>(p); }
const uint4* as_uint4(const bf16* p) { return reinterpret_cast<const uint4*>(p); }
uint4* as_uint4(bf16* p) { return reinterpret_cast<uint4*>(p); }
}  // namespace

void swiglu_forward(const bf16* a, const bf16* u, bf16* m, int64_t n) {
  if (n <= 0) return;
  if (n % 8 == 0 && aligned16(a) && aligned16(u) && aligned16(m))
    k_swiglu_fwd_bf16x8<<<grid_ilp(n / 8), kThreads>>>(as_uint4(a), as_uint4(u), as_uint4(m), n / 8);
  else
    k_swiglu_fwd_bf16<<<grid_for(n), kThreads>>>(device_bf16(a), device_bf16(u), device_bf16(m), n);
  TTT_LAUNCH_CHECK("swiglu_forward bf16 inputs");
}
void swiglu_backward(const bf16* a, const bf16* u, const bf16* dm, bf16* da, bf16* du, int64_t n) {
  if (n <= 0) return;
  if (n % 8 == 0 && aligned16(a) && aligned16(u) && aligned16(dm) && aligned16(da) && aligned16(du))
    k_swiglu_bwd_bf16x8<<<grid_ilp(n / 8), kThreads>>>(as_uint4(a), as_uint4(u), as_uint4(dm), as_uint4(da),
                                                        as_uint4(du), n / 8);
  else
    k_swiglu_bwd_bf16<<<grid_for(n), kThreads>>>(device_bf16(a), device_bf16(u), device_bf16(dm), device_bf16(da),
                                                  device_bf16(du), n);
  TTT_LAUNCH_CHECK("swiglu_backward bf16 inputs");
}

}  // namespace ttt::cuda::mk
