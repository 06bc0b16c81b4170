// Element-wise kernels: the memory branch's sum (memory_kernels.h: mk::gate_heads_add_forward, against float64 and
// bit for bit against the two passes it replaces), SwiGLU's forward (its two kernels bit for bit), SwiGLU on bf16
// inputs (forward and backward: against float64 and the fp32-input kernels' bits), the products' bf16 outputs
// (cuda::Blas, against float64) and the gradient clipping's scale (elementwise_kernels.h: mk::scale, bit for bit
// against the host). Conventions: cuda_kernels_test_util.h.
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

#include "backend/cuda/blas_cuda.h"
#include "core/error.h"

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

// ---- SwiGLU on bf16 inputs (mk::swiglu_forward / swiglu_backward, every array bf16) -----------------------------
// The GPU model's bf16 activations: ga, up and d(m) stored in bf16 by their products. On bf16-rounded inputs, against
// float64 on the host (each output rounded once to bf16: within 2^-8 relative, norm-wise), and bit for bit against
// the fp32-input kernels (bf16 outputs) on the same values widened: the same fp32 math per element. n a multiple of
// 8 takes the eight-wide kernel at element 0 (16-byte aligned) and the element-wise one at element 1 of one-longer
// buffers (not aligned): both must give the same bits; n = 1001 is element-wise at both.
TEST(CudaKernels, SwigluBf16InputsMatchFloat64AndTheFp32InputBits) {
  REQUIRE_CUDA();
  Worst worst{"swiglu bf16 in"};
  const double kBf16Output = std::ldexp(1.0, -8);  // one rounding to bf16, relative
  for (const int64_t n : {int64_t(8), int64_t(1001), int64_t(4096) * 37, (int64_t(1) << 22) + 8}) {
    const uint64_t seed = fresh_seed();
    Rng r(seed);
    const std::string name = "swiglu bf16 n" + std::to_string(n);
    auto rounded = [&](double scale) {
      std::vector<float> v = normal(r, n, scale);
      for (float& e : v) e = round_to_bf16(e);
      return v;
    };
    const std::vector<float> a = rounded(3.0), u = rounded(1.0), dm = rounded(1.0);
    auto to16 = [](const std::vector<float>& v, size_t offset) {
      std::vector<bf16> h(v.size() + offset);
      for (size_t i = 0; i < v.size(); ++i) h[i + offset] = float_to_bf16(v[i]);
      return h;
    };
    std::vector<double> m_ref(static_cast<size_t>(n)), da_ref(m_ref.size()), du_ref(m_ref.size());
    for (size_t i = 0; i < size_t(n); ++i) {
      const double g = a[i], s = 1.0 / (1.0 + std::exp(-g));
      m_ref[i] = g * s * u[i];
      da_ref[i] = double(dm[i]) * u[i] * s * (1.0 + g * (1.0 - s));
      du_ref[i] = double(dm[i]) * g * s;
    }
    // Aligned (element 0) and unaligned (element 1) copies of the bf16 inputs; the fp32-input kernels' inputs.
    cuda::DeviceBuffer a16 = up(to16(a, 0)), u16 = up(to16(u, 0)), d16 = up(to16(dm, 0));
    cuda::DeviceBuffer a16b = up(to16(a, 1)), u16b = up(to16(u, 1)), d16b = up(to16(dm, 1));
    cuda::DeviceBuffer a32 = up(a), u32 = up(u), d32 = up(dm);
    const size_t bytes = size_t(n) * 2, bytes1 = size_t(n + 1) * 2;
    cuda::DeviceBuffer m = nan_buf(bytes), m1 = nan_buf(bytes1), mf = nan_buf(bytes);
    cuda::DeviceBuffer ga = nan_buf(bytes), gu = nan_buf(bytes), ga1 = nan_buf(bytes1), gu1 = nan_buf(bytes1),
                       gaf = nan_buf(bytes), guf = nan_buf(bytes);
    cuda::mk::swiglu_forward(a16.as<bf16>(), u16.as<bf16>(), m.as<bf16>(), n);
    cuda::mk::swiglu_forward(a16b.as<bf16>() + 1, u16b.as<bf16>() + 1, m1.as<bf16>() + 1, n);
    cuda::mk::swiglu_forward(a32.as<float>(), u32.as<float>(), mf.as<bf16>(), n);
    cuda::mk::swiglu_backward(a16.as<bf16>(), u16.as<bf16>(), d16.as<bf16>(), ga.as<bf16>(), gu.as<bf16>(), n);
    cuda::mk::swiglu_backward(a16b.as<bf16>() + 1, u16b.as<bf16>() + 1, d16b.as<bf16>() + 1, ga1.as<bf16>() + 1,
                              gu1.as<bf16>() + 1, n);
    cuda::mk::swiglu_backward(a32.as<float>(), u32.as<float>(), d32.as<float>(), gaf.as<bf16>(), guf.as<bf16>(), n);
    const std::vector<std::pair<const char*, std::vector<double>*>> outputs{
        {"m", &m_ref}, {"da", &da_ref}, {"du", &du_ref}};
    const cuda::DeviceBuffer* aligned[3] = {&m, &ga, &gu};
    const cuda::DeviceBuffer* unaligned[3] = {&m1, &ga1, &gu1};
    const cuda::DeviceBuffer* fp32_input[3] = {&mf, &gaf, &guf};
    for (int o = 0; o < 3; ++o) {
      const std::string what = name + " " + outputs[size_t(o)].first;
      const auto got = down<bf16>(*aligned[o], size_t(n)), got1 = down<bf16>(*unaligned[o], size_t(n) + 1),
                 want = down<bf16>(*fp32_input[o], size_t(n));
      std::vector<float> widened(static_cast<size_t>(n));
      for (size_t i = 0; i < size_t(n); ++i) widened[i] = bf16_to_float(got[i]);
      CHECK_ERR(worst, rel_err(widened, *outputs[size_t(o)].second), kBf16Output, what);
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_EQ(got[size_t(i)].bits, got1[size_t(i) + 1].bits) << what << ": aligned and unaligned kernels at " << i
                                                                  << " (seed " << seed << ")";
        ASSERT_EQ(got[size_t(i)].bits, want[size_t(i)].bits) << what << ": the fp32-input kernel at " << i
                                                              << " (seed " << seed << ")";
      }
    }
    ++worst.cases;
  }
}

// ---- bf16 product outputs (cuda::Blas with an Output of bf16: ga, up, d(mm) of the GPU model) ------------------
// C = A B (and two strided batches) stored in bf16 by cuBLAS: against float64 on the host on the same bf16 operands
// (fp32 accumulation, then one rounding: within 2^-8 relative, norm-wise), and within one bf16 rounding of the same
// product's fp32 output; ldc wider than n (the padding keeps its NaN); k = 0 zero-fills the bf16 block alone; a bf16
// output outside MathMode::BF16 is refused.
TEST(CudaKernels, BlasBf16OutputIsTheFp32AccumulationRounded) {
  REQUIRE_CUDA();
  Worst worst{"gemm bf16 out"};
  const uint64_t seed = fresh_seed();
  Rng r(seed);
  const int64_t m = 37, n = 64, k = 96, ldc = 72, batch = 2;
  auto rounded = [&](int64_t count) {
    std::vector<float> v = normal(r, count, 1.0);
    for (float& e : v) e = round_to_bf16(e);
    return v;
  };
  const std::vector<float> a = rounded(batch * m * k), b = rounded(batch * k * n);
  std::vector<bf16> a16(a.size()), b16(b.size());
  for (size_t i = 0; i < a.size(); ++i) a16[i] = float_to_bf16(a[i]);
  for (size_t i = 0; i < b.size(); ++i) b16[i] = float_to_bf16(b[i]);
  cuda::DeviceBuffer ad = up(a16), bd = up(b16);
  cuda::DeviceBuffer c16 = nan_buf(size_t(batch * m * ldc) * 2), c32 = nan_buf(size_t(batch * m * ldc) * 4);
  cuda::Blas blas(cuda::MathMode::BF16);
  const bf16* A = ad.as<bf16>();
  const bf16* B = bd.as<bf16>();
  cuda::DeviceBuffer one16 = nan_buf(size_t(m * ldc) * 2);
  blas.gemm_batched(false, false, m, n, k, 1.0f, A, k, m * k, B, n, k * n, 0.0f, c16.as<bf16>(), ldc, m * ldc,
                    batch);
  blas.gemm_batched(false, false, m, n, k, 1.0f, A, k, m * k, B, n, k * n, 0.0f, c32.as<float>(), ldc, m * ldc,
                    batch);
  blas.gemm(false, false, m, n, k, 1.0f, A, k, B, n, 0.0f, one16.as<bf16>(), ldc);  // batch 0 alone (not batched)
  const auto got16 = down<bf16>(c16, size_t(batch * m * ldc));
  const auto single = down<bf16>(one16, size_t(m * ldc));
  std::vector<float> single_widened;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) single_widened.push_back(bf16_to_float(single[size_t(i * ldc + j)]));
  const auto got32 = down<float>(c32, size_t(batch * m * ldc));
  std::vector<float> widened, fp32_out;
  std::vector<double> ref;
  for (int64_t p = 0; p < batch; ++p)
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        double sum = 0;
        for (int64_t q = 0; q < k; ++q)
          sum += double(a[size_t(p * m * k + i * k + q)]) * double(b[size_t(p * k * n + q * n + j)]);
        ref.push_back(sum);
        widened.push_back(bf16_to_float(got16[size_t(p * m * ldc + i * ldc + j)]));
        fp32_out.push_back(got32[size_t(p * m * ldc + i * ldc + j)]);
      }
      for (int64_t j = n; j < ldc; ++j)
        ASSERT_EQ(got16[size_t(p * m * ldc + i * ldc + j)].bits, 0xffff) << "padding written at " << i << ", " << j;
    }
  const double one_rounding = std::ldexp(1.0, -8);
  CHECK_ERR(worst, rel_err(widened, ref), one_rounding, "bf16 output against float64");
  CHECK_ERR(worst, rel_err(single_widened, std::vector<double>(ref.begin(), ref.begin() + m * n)), one_rounding,
            "bf16 output of one product against float64");
  CHECK_ERR(worst, rel_err(widened, fp32_out), one_rounding, "bf16 output against the fp32 output");
  EXPECT_LT(rel_err(fp32_out, ref), 1e-5) << "the fp32 output itself";
  ++worst.cases;
  // k = 0 with beta 0: C = 0 over [m, n] of the bf16 block, the padding untouched.
  cuda::DeviceBuffer z = nan_buf(size_t(m * ldc) * 2);
  blas.gemm(false, false, m, n, 0, 1.0f, A, 1, B, n, 0.0f, z.as<bf16>(), ldc);
  const auto zeros = down<bf16>(z, size_t(m * ldc));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < ldc; ++j)
      ASSERT_EQ(zeros[size_t(i * ldc + j)].bits, j < n ? 0 : 0xffff) << "k = 0 at " << i << ", " << j;
  cuda::Blas fp32(cuda::MathMode::FP32);
  EXPECT_THROW(fp32.gemm(false, false, m, n, k, 1.0f, c32.as<float>(), k, c32.as<float>(), n, 0.0f, z.as<bf16>(), ldc),
               Error);
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
