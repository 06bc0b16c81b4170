// RoPE kernel (rope_kernels.h): one thread per (row, pair index), looping over the heads; the rotation of a pair:
// rope_math.cuh. Naming and launch conventions: kernel_util.cuh.
#include "backend/cuda/rope_kernels.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/error.h"
#include "backend/cuda/check.cuh"
#include "backend/cuda/kernel_util.cuh"
#include "backend/cuda/rope_math.cuh"

namespace ttt::cuda {

namespace {

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// sign = +1: rotation, -1: inverse rotation. Y: float, or bf16 (the fp32 result rounded to nearest even).
template <class Y>
__global__ void k_rope(const float* x, int64_t ldx, Y* y, int64_t ldy, const int64_t* __restrict__ pos, int64_t N,
                       int64_t heads, int64_t hd, double theta, float sign) {
  const int64_t half = hd / 2;
  GRID_STRIDE(e, N * half) {
    const int64_t r = e / half, i = e % half;
    const RopeRotation rot = rope_rotation(pos[r], i, hd, theta, sign);
    const float* xr = x + r * ldx;
    Y* yr = y + r * ldy;
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t c0 = h * hd;
      const float2 out = rope_rotate(xr[c0 + i], xr[c0 + half + i], rot);
      store(yr + c0 + i, out.x);
      store(yr + c0 + half + i, out.y);
    }
  }
}

template <class Y>
void rope_launch(const float* x, int64_t ldx, Y* y, int64_t ldy, const int64_t* pos, int64_t N, int64_t heads,
                 int64_t hd, double theta, float sign, void* stream, const char* name) {
  TTT_CHECK(N >= 0 && heads >= 1 && hd >= 2 && hd % 2 == 0, name << ": head width " << hd << " must be even and > 0, "
                                                                 << heads << " heads");
  TTT_CHECK(theta > 0, name << ": theta must be positive, got " << theta);
  TTT_CHECK(ldx >= heads * hd && ldy >= heads * hd && (static_cast<const void*>(x) != y || ldx == ldy),
            name << ": leading dimensions " << ldx << ", " << ldy << " for " << heads << " heads of " << hd
                 << " (in place needs equal ones)");
  if (N == 0) return;
  k_rope<<<grid_for(N * (hd / 2)), kThreads, 0, as_stream(stream)>>>(x, ldx, y, ldy, pos, N, heads, hd, theta, sign);
  TTT_LAUNCH_CHECK(name);
}

}  // namespace

void rope_forward(const float* x, float* y, const int64_t* pos, int64_t N, int64_t heads, int64_t hd, double theta,
                  void* stream) {
  rope_launch(x, heads * hd, y, heads * hd, pos, N, heads, hd, theta, 1.f, stream, "rope_forward");
}
void rope_backward(const float* dy, float* dx, const int64_t* pos, int64_t N, int64_t heads, int64_t hd,
                   double theta, void* stream) {
  rope_launch(dy, heads * hd, dx, heads * hd, pos, N, heads, hd, theta, -1.f, stream, "rope_backward");
}
void rope_forward(const float* x, int64_t ldx, float* y, int64_t ldy, const int64_t* pos, int64_t N, int64_t heads,
                  int64_t hd, double theta, void* stream) {
  rope_launch(x, ldx, y, ldy, pos, N, heads, hd, theta, 1.f, stream, "rope_forward");
}
void rope_backward(const float* dy, int64_t lddy, float* dx, int64_t lddx, const int64_t* pos, int64_t N,
                   int64_t heads, int64_t hd, double theta, void* stream) {
  rope_launch(dy, lddy, dx, lddx, pos, N, heads, hd, theta, -1.f, stream, "rope_backward");
}

void rope_forward(const float* x, int64_t ldx, bf16* y, int64_t ldy, const int64_t* pos, int64_t N, int64_t heads,
                  int64_t hd, double theta, void* stream) {
  rope_launch(x, ldx, reinterpret_cast<__nv_bfloat16*>(y), ldy, pos, N, heads, hd, theta, 1.f, stream, "rope_forward");
}

}  // namespace ttt::cuda
