// Reductions of the GPU model (fp32 inputs, double accumulators, fixed order: deterministic): the gradient
// norm's sum of squares. Device pointers; the legacy default stream; launches checked (failures throw
// ttt::Error). Non-finite counts of the benches: count_nonfinite (device.h). This header needs no CUDA headers.
#pragma once
#include <cstdint>

namespace ttt::cuda::mk {

// Sum of squares of x in double (deterministic two-pass reduction); waits for the result.
double sum_squares(const float* x, int64_t n);

}  // namespace ttt::cuda::mk
