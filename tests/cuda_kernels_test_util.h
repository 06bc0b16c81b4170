// Shared by the tests of the CUDA layer kernels (src/backend/cuda/kernels.h; suite CudaKernels, one file per kernel
// family: tests/test_cuda_kernels_*.cpp). Each kernel runs on fresh random inputs (the seed is printed on failure)
// against its CPU reference (src/nn/layers.cpp on the autograd tape in float64, src/train/optimizer.cpp, or the
// formula in float64 on the host): fp32 on the GPU within kTol relative (||gpu - cpu|| / ||cpu|| per output, in
// double) of float64 on the CPU; where a kernel claims the bits of another path or of the host's float -> bf16
// rounding (core/dtype.h), bit for bit. Device outputs are filled with NaN before every run, so an element no kernel
// writes shows as NaN (which never passes). Reductions must be bit-reproducible: backwards run twice and the results
// are compared bitwise. Every test skips, saying why, without CUDA in the build or a usable device.
#pragma once
#include <gtest/gtest.h>

#include "cuda_test_util.h"

#ifdef TTT_HAVE_CUDA
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "autograd/tape.h"
#include "backend/cuda/kernels.h"
#include "core/dtype.h"
#include "core/rng.h"

namespace ttt::cuda_kernels_test {

constexpr double kTol = 1e-4;

// ---- random inputs ------------------------------------------------------------------------------------------------
inline std::vector<float> normal(Rng& r, int64_t n, double s) {
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& e : x) e = float(r.normal() * s);
  return x;
}
inline std::vector<float> uniform(Rng& r, int64_t n, double lo, double hi) {
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& e : x) e = float(r.uniform(lo, hi));
  return x;
}
// n token positions, each below `below`.
inline std::vector<int64_t> random_positions(Rng& r, int64_t n, uint64_t below) {
  std::vector<int64_t> pos(static_cast<size_t>(n));
  for (auto& p : pos) p = int64_t(r.below(below));
  return pos;
}
// v as a rows x cols float64 matrix (a leaf of the CPU reference's tape).
inline ag::Mat<double> mat(const std::vector<float>& v, int64_t rows, int64_t cols) {
  ag::Mat<double> m(rows, cols);
  for (size_t i = 0; i < v.size(); ++i) m.data[i] = double(v[i]);
  return m;
}

// ---- device buffers -----------------------------------------------------------------------------------------------
// A host vector uploaded.
template <class T>
cuda::DeviceBuffer up(const std::vector<T>& v) {
  cuda::DeviceBuffer b(std::max<size_t>(1, v.size() * sizeof(T)));
  if (!v.empty()) b.upload(v.data(), v.size() * sizeof(T));
  return b;
}
// An output buffer filled with NaN.
inline cuda::DeviceBuffer nan_buf(size_t bytes) {
  cuda::DeviceBuffer b(std::max<size_t>(1, bytes));
  b.fill_nan();
  return b;
}
// The first n elements of b, after the stream's work.
template <class T>
std::vector<T> down(const cuda::DeviceBuffer& b, size_t n) {
  cuda::stream_synchronize();
  std::vector<T> v(n);
  if (n) b.download(v.data(), n * sizeof(T));
  return v;
}

// ---- comparisons --------------------------------------------------------------------------------------------------
// ||a - ref|| / ||ref|| in double; infinite when a holds a NaN or an Inf.
template <class R>
double rel_err(const std::vector<float>& a, const std::vector<R>& ref) {
  EXPECT_EQ(a.size(), ref.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(double(a[i]))) return INFINITY;
    const double d = double(a[i]) - double(ref[i]);
    num += d * d;
    den += double(ref[i]) * double(ref[i]);
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

// The worst relative error of one kernel's cases, printed when the test ends.
struct Worst {
  explicit Worst(std::string kernel_name) : kernel(std::move(kernel_name)) {}
  std::string kernel;
  double err = 0;
  std::string what;
  int cases = 0;
  void see(double e, const std::string& w) {
    if (e > err || std::isnan(e)) err = e, what = w;
  }
  ~Worst() {
    std::printf("[kernel summary] %-15s worst relative error %.3e (%s) over %d cases\n", kernel.c_str(), err,
                what.c_str(), cases);
  }
};

// Expects relative error e within bound (`seed` names the case's inputs) and records it in worst.
#define CHECK_ERR(worst, e, bound, label)                                                       \
  do {                                                                                          \
    const double e_ = (e);                                                                      \
    EXPECT_LE(e_, bound) << label << " (seed " << seed << "): relative error " << e_;           \
    worst.see(e_, label);                                                                       \
  } while (0)

// Where two arrays differ bitwise: how many elements, and the first (count 0: first is a's size).
struct BitDiff {
  size_t count = 0, first = 0;
};
template <class T>
BitDiff bit_diff(const std::vector<T>& a, const std::vector<T>& b) {
  BitDiff diff{0, a.size()};
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(T)) != 0 && diff.count++ == 0) diff.first = i;
  return diff;
}

// Expects got to hold want's bits, element for element; on failure says how many differ and the first.
inline void expect_same_bits(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  EXPECT_EQ(got.size(), want.size()) << what << ": sizes";
  const BitDiff diff = bit_diff(got, want);
  EXPECT_EQ(diff.count, 0u) << what << " differs in " << diff.count << " of " << got.size()
                            << " elements, first at " << diff.first << " (this "
                            << (diff.count ? got[diff.first] : 0.f) << ", want "
                            << (diff.count ? want[diff.first] : 0.f) << ")";
}

// Where got16 differs from the host's rounding (core/dtype.h) of fp32, over rows x cols elements of each (at leading
// dimensions ld32 and ld16): how many, and the first as row * cols + column.
inline BitDiff bf16_rounding_diff(const std::vector<float>& fp32, int64_t ld32, const std::vector<bf16>& got16,
                                  int64_t ld16, int64_t rows, int64_t cols) {
  BitDiff diff{0, size_t(rows * cols)};
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j)
      if (float_to_bf16(fp32[size_t(i * ld32 + j)]).bits != got16[size_t(i * ld16 + j)].bits && diff.count++ == 0)
        diff.first = size_t(i * cols + j);
  return diff;
}

// ---- the q/k preparation's unfused passes -------------------------------------------------------------------------
// What the fused q/k preparation (mk::qk_prep_forward_fused / _backward_fused, same arguments) replaced in the GPU
// model, the yardstick of its bits and times: the forward as qk_prep_forward into y_heads [S*N, H*d], RoPE in place
// over heads of rope_width channels (0: none), heads_to_batch into yT [S*H, N, d]; the backward as batch_to_heads
// of dyT into dy_heads [S*N, H*d], RoPE's adjoint in place, qk_prep_backward (dx accumulated).
inline void qk_prep_unfused_forward(const float* x, int64_t ldx, const float* scale, const float* offset,
                                    const int64_t* pos, double theta, int64_t rope_width, float* y_heads, float* yT,
                                    float* norm, int64_t S, int64_t N, int64_t H, int64_t d, double eps) {
  const int64_t rows = S * N, D = H * d;
  cuda::mk::qk_prep_forward(x, ldx, scale, offset, y_heads, norm, rows, H, d, eps);
  if (rope_width > 0) cuda::rope_forward(y_heads, y_heads, pos, rows, D / rope_width, rope_width, theta);
  cuda::mk::heads_to_batch(y_heads, D, yT, S, N, H, d);
}
inline void qk_prep_unfused_backward(const float* x, int64_t ldx, const float* scale, const float* offset,
                                     const float* norm, const int64_t* pos, double theta, int64_t rope_width,
                                     const float* dyT, float* dy_heads, float* dx, int64_t lddx, float* dz, float* dzx,
                                     int64_t S, int64_t N, int64_t H, int64_t d, double eps) {
  const int64_t rows = S * N, D = H * d;
  cuda::mk::batch_to_heads(dyT, dy_heads, D, S, N, H, d, false);
  if (rope_width > 0) cuda::rope_backward(dy_heads, dy_heads, pos, rows, D / rope_width, rope_width, theta);
  cuda::mk::qk_prep_backward(x, ldx, scale, offset, norm, dy_heads, dx, lddx, dz, dzx, rows, H, d, eps);
}

}  // namespace ttt::cuda_kernels_test

#endif  // TTT_HAVE_CUDA
