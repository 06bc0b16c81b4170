// RoPE kernel (rope_kernels.h): one thread per (row, pair index), looping over the heads (several loaded at once);
// the rotation of a pair: rope_math.cuh. Naming and launch conventions: kernel_util.cuh.
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
// A thread's heads in groups of kHeadsInFlight: the group's 2 * kHeadsInFlight loads are issued before any rotation
// or store (one head at a time kept 2 loads of 4 bytes in flight per thread: ncu, H200, 760m step: k_rope<bf16>
// ~105 µs a call for 302 MB, 2.9 TB/s). In place (x == y) stays safe: a thread reads exactly the elements it writes.
// Each element's arithmetic is unchanged (the same rotation, the same rounding on the store): the same bits.
constexpr int kHeadsInFlight = 8;
template <class Y>
__global__ void k_rope(const float* x, int64_t ldx, Y* y, int64_t ldy, const int64_t* __restrict__ pos, int64_t N,
                       int64_t heads, int64_t hd, double theta, float sign) {
  const int64_t half = hd / 2;
  GRID_STRIDE(e, N * half) {
    const int64_t r = e / half, i = e % half;
    const RopeRotation rot = rope_rotation(pos[r], i, hd, theta, sign);
    const float* xr = x + r * ldx + i;
    Y* yr = y + r * ldy + i;
    for (int64_t h0 = 0; h0 < heads; h0 += kHeadsInFlight) {
      float x1[kHeadsInFlight], x2[kHeadsInFlight];
#pragma unroll
      for (int u = 0; u < kHeadsInFlight; ++u) {
        const int64_t c0 = (h0 + u) * hd;
        x1[u] = h0 + u < heads ? xr[c0] : 0.f;
        x2[u] = h0 + u < heads ? xr[c0 + half] : 0.f;
      }
#pragma unroll
      for (int u = 0; u < kHeadsInFlight; ++u) {
        if (h0 + u >= heads) break;
        const int64_t c0 = (h0 + u) * hd;
        const float2 out = rope_rotate(x1[u], x2[u], rot);
        store(yr + c0, out.x);
        store(yr + c0 + half, out.y);
      }
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
