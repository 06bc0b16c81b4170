// Reductions of the GPU model and generation (fp32 inputs, double accumulators, fixed order: deterministic): the
// gradient norm's sum of squares, row means and per-head sums of squares of a streaming Titans memory. Device
// pointers; the legacy default stream; launches checked (failures throw ttt::Error). Non-finite counts of the
// benches: count_nonfinite (device.h). This header needs no CUDA headers.
#pragma once
#include <cstdint>

namespace ttt::cuda::mk {

// Sum of squares of x in double (deterministic two-pass reduction); waits for the result.
double sum_squares(const float* x, int64_t n);
// out[r] = mean of row r of x [rows, cols].
void row_mean(const float* x, int64_t rows, int64_t cols, float* out);
// acc[h] += sum of squares of x[h*per .. (h+1)*per) (in double).
void add_row_sumsq(const float* x, int64_t H, int64_t per, double* acc);

}  // namespace ttt::cuda::mk
