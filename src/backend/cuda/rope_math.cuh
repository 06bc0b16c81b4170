// The RoPE rotation of one channel pair, written once for the RoPE kernels (rope_kernels.cu) and the q/k
// preparation fused with RoPE (memory_kernels.cu), so that both give the same bits: the angle pos * theta^(-2i/w)
// (w: the rotated head's width), its cos and sin in double, rounded to float; the rotation in float (the
// expression k_rope always had, so its bits are unchanged; inlined the same way into each kernel). Included only by
// .cu files.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace ttt::cuda {

struct RopeRotation {
  float c, s;  // cos, and sin times the direction (+1 rotation, -1 its inverse)
};
// The pair's frequency theta^(-2i/w): a function of i alone, so the fused q/k kernels compute it once per block
// (a double pow costs more than the rest of a rotation) and rotate every row with the same bits.
__device__ __forceinline__ double rope_inv_freq(int64_t i, int64_t width, double theta) {
  return pow(theta, -2.0 * double(i) / double(width));
}
__device__ __forceinline__ RopeRotation rope_rotation_at(int64_t pos, double inv_freq, float sign) {
  const double a = double(pos) * inv_freq;
  double sd, cd;
  sincos(a, &sd, &cd);
  return {float(cd), sign * float(sd)};
}
__device__ __forceinline__ RopeRotation rope_rotation(int64_t pos, int64_t i, int64_t width, double theta,
                                                      float sign) {
  return rope_rotation_at(pos, rope_inv_freq(i, width, theta), sign);
}
// (x1, x2) = channels i and i + w/2 of a head -> the rotated pair.
__device__ __forceinline__ float2 rope_rotate(float x1, float x2, RopeRotation r) {
  return {x1 * r.c - x2 * r.s, x2 * r.c + x1 * r.s};
}

}  // namespace ttt::cuda
