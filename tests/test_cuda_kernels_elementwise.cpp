// Element-wise kernels: the memory branch's sum (memory_kernels.h: mk::gate_heads_add_forward, against float64 and
// bit for bit against the two passes it replaces), SwiGLU's forward (its two kernels bit for bit) and the gradient
// clipping's scale (elementwise_kernels.h: mk::scale, bit for bit against the host). Conventions:
// cuda_kernels_test_util.h.
#include <gtest/gtest.h>

#include "cuda_kernels_test_util.h"

#ifndef TTT_HAVE_CUDA

// The suite's one entry in a build without CUDA (held by this file alone: every test of CudaKernels needs CUDA).
TEST(CudaKernels, SkippedWithoutCuda) { GTEST_SKIP() << "built without the CUDA toolkit (TTT_HAVE_CUDA unset)"; }

#else

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

using namespace ttt;
using namespace ttt::cuda_kernels_test;

// ---- the branch sum (mk::gate_heads_add_forward) ---------------------------------------------------------------
// out = x * gate (per row and head) + addend: against float64 on the host, bit for bit against the two passes it
// replaces (gate_heads_forward, axpy), and its bf16 form bit for bit against the host's rounding of the fp32 one.
// d a multiple of 4 takes the four-wide kernel (also at 4099 x 4 x 384, the 760m heads), the others the
// element-wise one.
TEST(CudaKernels, GateHeadsAddMatchesFloat64AndTwoPassBits) {
  REQUIRE_CUDA();
  Worst worst{"gate_heads_add"};
  for (const auto& [rows, H, d] : std::vector<std::array<int64_t, 3>>{
           {37, 4, 384}, {5, 3, 7}, {1, 1, 1}, {4099, 4, 384}, {9, 2, 4}, {3, 5, 12}}) {
    const uint64_t seed = fresh_seed();
    Rng r(seed);
    const int64_t n = rows * H * d;
    const std::string name = "gate_heads_add rows" + std::to_string(rows) + " H" + std::to_string(H) + " d" +
                             std::to_string(d);
    const std::vector<float> x = normal(r, n, 1.0), gate = normal(r, rows * H, 1.0), addend = normal(r, n, 1.0);
    std::vector<double> ref(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) ref[size_t(i)] = double(x[size_t(i)]) * gate[size_t(i / d)] + addend[size_t(i)];
    cuda::DeviceBuffer xd = up(x), gd = up(gate), ad = up(addend), out = nan_buf(size_t(n) * 4),
                       out16 = nan_buf(size_t(n) * 2), two = nan_buf(size_t(n) * 4);
    cuda::mk::gate_heads_add_forward(xd.as<float>(), gd.as<float>(), ad.as<float>(), out.as<float>(), rows, H, d);
    cuda::mk::gate_heads_add_forward(xd.as<float>(), gd.as<float>(), ad.as<float>(), out16.as<bf16>(), rows, H, d);
    cuda::mk::gate_heads_forward(xd.as<float>(), gd.as<float>(), two.as<float>(), rows, H, d);
    cuda::mk::axpy(two.as<float>(), ad.as<float>(), 1.0f, n);
    const auto got = down<float>(out, size_t(n)), want = down<float>(two, size_t(n));
    const auto got16 = down<bf16>(out16, size_t(n));
    CHECK_ERR(worst, rel_err(got, ref), kTol, name);
    const BitDiff diff = bit_diff(got, want), diff16 = bf16_rounding_diff(got, n, got16, n, 1, n);
    ASSERT_EQ(diff.count, 0u) << name << ": differs from gate_heads_forward + axpy in " << diff.count
                              << " elements, first at " << diff.first;
    ASSERT_EQ(diff16.count, 0u) << name << ": bf16 output differs from the rounding of the fp32 one in "
                                << diff16.count << " elements, first at " << diff16.first;
    ++worst.cases;
  }
}

// ---- SwiGLU's forward (mk::swiglu_forward) ----------------------------------------------------------------------
// m = silu(a) * u: against float64 on the host, and the four-wide kernel (16-byte aligned arrays, n a multiple of 4)
// bit for bit against the element-wise one (the same data one float further on, so not 16-byte aligned), in fp32
// and in bf16.
TEST(CudaKernels, SwigluForwardFourWideKeepsTheElementwiseBits) {
  REQUIRE_CUDA();
  Worst worst{"swiglu_forward"};
  for (const int64_t n : {int64_t(4), int64_t(4096) * 37, (int64_t(1) << 22) + 8}) {
    const uint64_t seed = fresh_seed();
    Rng r(seed);
    const std::string name = "swiglu_forward n" + std::to_string(n) + " (seed " + std::to_string(seed) + ")";
    const std::vector<float> a = normal(r, n, 3.0), u = normal(r, n, 1.0);
    std::vector<double> ref(static_cast<size_t>(n));
    for (size_t i = 0; i < ref.size(); ++i) ref[i] = double(a[i]) / (1.0 + std::exp(-double(a[i]))) * u[i];
    // The same values at element 0 (aligned) and at element 1 (not) of one-longer buffers.
    std::vector<float> a1(size_t(n) + 1, 0.f), u1(size_t(n) + 1, 0.f);
    std::copy(a.begin(), a.end(), a1.begin() + 1);
    std::copy(u.begin(), u.end(), u1.begin() + 1);
    cuda::DeviceBuffer ad = up(a), ud = up(u), ad1 = up(a1), ud1 = up(u1), m = nan_buf(size_t(n) * 4),
                       m1 = nan_buf(size_t(n + 1) * 4), m16 = nan_buf(size_t(n) * 2), m16b = nan_buf(size_t(n + 1) * 2);
    cuda::mk::swiglu_forward(ad.as<float>(), ud.as<float>(), m.as<float>(), n);
    cuda::mk::swiglu_forward(ad1.as<float>() + 1, ud1.as<float>() + 1, m1.as<float>() + 1, n);
    cuda::mk::swiglu_forward(ad.as<float>(), ud.as<float>(), m16.as<bf16>(), n);
    cuda::mk::swiglu_forward(ad1.as<float>() + 1, ud1.as<float>() + 1, m16b.as<bf16>() + 1, n);
    const auto got = down<float>(m, size_t(n)), wide1 = down<float>(m1, size_t(n) + 1);
    const std::vector<float> elementwise(wide1.begin() + 1, wide1.end());
    CHECK_ERR(worst, rel_err(got, ref), kTol, name);
    const BitDiff diff = bit_diff(got, elementwise);
    ASSERT_EQ(diff.count, 0u) << name << ": the four-wide kernel differs from the element-wise one in " << diff.count
                              << " elements, first at " << diff.first;
    const auto got16 = down<bf16>(m16, size_t(n)), b16 = down<bf16>(m16b, size_t(n) + 1);
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(got16[size_t(i)].bits, b16[size_t(i) + 1].bits) << name << ": bf16, the two kernels at " << i;
      ASSERT_EQ(got16[size_t(i)].bits, float_to_bf16(got[size_t(i)]).bits) << name << ": bf16 rounding at " << i;
    }
    ++worst.cases;
  }
}

// ---- gradient scaling (mk::scale, the clipping's pass) -----------------------------------------------------------
// p *= a: each element the host's float product, bit for bit, at sizes around the kernel's elements per trip.
TEST(CudaKernels, ScaleMatchesHostBits) {
  REQUIRE_CUDA();
  for (const int64_t n : {int64_t(1), int64_t(5), int64_t(1023), int64_t(1) << 20, (int64_t(1) << 22) + 3}) {
    const uint64_t seed = fresh_seed();
    Rng r(seed);
    const std::vector<float> x = normal(r, n, 2.0);
    const float a = float(r.uniform(0.1, 0.9));
    cuda::DeviceBuffer xd = up(x);
    cuda::mk::scale(xd.as<float>(), a, n);
    const auto got = down<float>(xd, size_t(n));
    for (int64_t i = 0; i < n; ++i) {
      const float want = x[size_t(i)] * a;
      ASSERT_EQ(0, std::memcmp(&want, &got[size_t(i)], 4))
          << "scale n " << n << " (seed " << seed << ") at " << i << ": " << got[size_t(i)] << " vs " << want;
    }
  }
}

#endif  // TTT_HAVE_CUDA
