// AdamW kernel (optimizer_kernels.h): one grid-stride pass (kIlp elements per thread and trip), explicitly rounded
// double operations (no contraction into FMAs): the CPU's arithmetic, operation by operation. Naming and launch
// conventions: kernel_util.cuh.
#include "backend/cuda/optimizer_kernels.h"

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "core/error.h"
#include "backend/cuda/check.cuh"
#include "backend/cuda/kernel_util.cuh"

namespace ttt::cuda {

namespace {

// kIlp elements per thread and trip, all loaded before any is computed (kernel_util.cuh: one element per thread left
// too few bytes in flight; ncu measured this kernel at 1.7 TB/s so, 2026-11-30).
__global__ void k_adamw_step(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                             float* __restrict__ v, const uint8_t* __restrict__ mask, int64_t n, double b1,
                             double omb1, double b2, double omb2, double c1, double c2, double eps, double lr,
                             double shrink) {
  ILP_STRIDE(base, n) {
    bool on[kIlp];
    float pj[kIlp], gj[kIlp], mj[kIlp], vj[kIlp];
#pragma unroll
    for (int t = 0; t < kIlp; ++t) {
      const int64_t j = ILP_INDEX(base, t);
      on[t] = j < n && (!mask || mask[j]);
      if (on[t]) pj[t] = p[j], gj[t] = g[j], mj[t] = m[j], vj[t] = v[j];
    }
#pragma unroll
    for (int t = 0; t < kIlp; ++t) {
      if (!on[t]) continue;
      const int64_t j = ILP_INDEX(base, t);
      const double gd = double(gj[t]);
      const double md = __dadd_rn(__dmul_rn(b1, double(mj[t])), __dmul_rn(omb1, gd));
      const double vd = __dadd_rn(__dmul_rn(b2, double(vj[t])), __dmul_rn(__dmul_rn(omb2, gd), gd));
      m[j] = float(md);
      v[j] = float(vd);
      const double upd = __ddiv_rn(__ddiv_rn(md, c1), __dadd_rn(__dsqrt_rn(__ddiv_rn(vd, c2)), eps));
      p[j] = float(__dsub_rn(__dmul_rn(double(pj[t]), shrink), __dmul_rn(lr, upd)));
    }
  }
}

}  // namespace

void adamw_step(float* p, const float* g, float* m, float* v, const uint8_t* mask, int64_t n, const AdamWParams& a,
                void* stream) {
  TTT_CHECK(a.step >= 1, "adamw_step: step must be >= 1, got " << a.step);
  TTT_CHECK(a.beta1 >= 0 && a.beta1 < 1 && a.beta2 >= 0 && a.beta2 < 1 && a.eps > 0 && a.weight_decay >= 0,
            "adamw_step: invalid hyperparameters");
  if (n == 0) return;
  // Host-side constants exactly as AdamW::step computes them.
  const double c1 = 1.0 - std::pow(a.beta1, double(a.step)), c2 = 1.0 - std::pow(a.beta2, double(a.step));
  const double shrink = a.decay ? 1.0 - a.lr * a.weight_decay : 1.0;
  k_adamw_step<<<grid_ilp(n), kThreads, 0, as_stream(stream)>>>(p, g, m, v, mask, n, a.beta1, 1.0 - a.beta1, a.beta2,
                                                                1.0 - a.beta2, c1, c2, a.eps, a.lr, shrink);
  TTT_LAUNCH_CHECK("adamw_step");
}

}  // namespace ttt::cuda
