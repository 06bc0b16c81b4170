// The RoPE rotation of one channel pair, written once for the RoPE kernels (rope_kernels.cu) and the q/k
// preparation fused with RoPE (memory_kernels.cu), so that both give the same bits: the angle pos * theta^(-2i/w)
// (w: the rotated head's width), its cos and sin in double, rounded to float; the rotation in float (the
// contraction k_rope always had, written out so that every kernel inlining it gets the same bits: rope_rotate).
// Included only by .cu files.
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
// (x1, x2) = channels i and i + w/2 of a head -> the rotated pair (x1 c - x2 s, x2 c + x1 s), with the FMA
// contraction written out: in both outputs the x2 product is rounded first and the x1 product fused with it.
// Written as plain float expressions, the choice of which product to fuse was the compiler's, and it depended on
// the kernel the function was inlined into: for the second output NVVM emitted fma(x1, s, x2 c) in k_rope but
// fma(x2, c, x1 s) in the fused q/k team walk (k_qk_prep_fwd_teams / _bwd_teams: 1-3 ulp apart in a fraction of
// those outputs, and so in what the backward computes from them); the first output was a mul/sub pair that
// ptxas contracted. The _rn intrinsics cannot be contracted or reordered, and they are the operations k_rope's
// SASS already had (CUDA 13, sm_90a: per pair FMUL x2 s, FMUL x2 c, FFMA x1 c - ., FFMA x1 s + .), so k_rope's
// bits are unchanged and every kernel that rotates gets them.
__device__ __forceinline__ float2 rope_rotate(float x1, float x2, RopeRotation r) {
  return {__fmaf_rn(x1, r.c, -__fmul_rn(x2, r.s)), __fmaf_rn(x1, r.s, __fmul_rn(x2, r.c))};
}

}  // namespace ttt::cuda
