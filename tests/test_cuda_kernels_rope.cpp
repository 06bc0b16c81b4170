// The RoPE kernels (rope_kernels.h) against nn::rope on a float64 tape; in place, strided and with bf16 output bit
// for bit against the plain calls. Conventions: cuda_kernels_test_util.h.
#include <gtest/gtest.h>

#include "cuda_kernels_test_util.h"

#ifdef TTT_HAVE_CUDA
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "nn/layers.h"

using namespace ttt;
using namespace ttt::cuda_kernels_test;

TEST(CudaKernels, RopeMatchesCpu) {
  REQUIRE_CUDA();
  Worst worst{"rope"};
  struct C {
    int64_t N, heads, hd;
    double theta;
    int64_t max_pos;
  };
  for (const C c : std::vector<C>{{7, 2, 8, 1e4, 16}, {100, 4, 64, 1e4, 8192}, {64, 3, 130, 1e4, 100000},
                                  {256, 8, 128, 5e5, 32768}, {9, 1, 2, 10.0, 50},
                                  // more heads than one group of loads, and a partial last group (760m: 24 x 64)
                                  {40, 24, 64, 1e4, 32768}, {33, 11, 16, 1e4, 4096}}) {
    const uint64_t seed = fresh_seed();
    Rng r(seed);
    const int64_t D = c.heads * c.hd;
    const std::string name = "rope N" + std::to_string(c.N) + " H" + std::to_string(c.heads) + " hd" +
                             std::to_string(c.hd) + " theta" + std::to_string(c.theta);
    const std::vector<float> x = normal(r, c.N * D, 1.0), dy = normal(r, c.N * D, 1.0);
    const std::vector<int64_t> pos = random_positions(r, c.N, uint64_t(c.max_pos));
    ag::Tape<double> t;
    ag::Var xv = t.leaf(mat(x, c.N, D), true);
    ag::Var yv = nn::rope(t, xv, c.heads, pos, c.theta);
    t.grad(yv) = mat(dy, c.N, D);
    t.backward();
    cuda::DeviceBuffer xd = up(x), dyd = up(dy), pd = up(pos);
    const size_t ND = size_t(c.N * D);
    cuda::DeviceBuffer yd = nan_buf(ND * 4), dxd = nan_buf(ND * 4);
    cuda::rope_forward(xd.as<float>(), yd.as<float>(), pd.as<int64_t>(), c.N, c.heads, c.hd, c.theta);
    cuda::rope_backward(dyd.as<float>(), dxd.as<float>(), pd.as<int64_t>(), c.N, c.heads, c.hd, c.theta);
    const auto y = down<float>(yd, ND), dx = down<float>(dxd, ND);
    CHECK_ERR(worst, rel_err(y, t.val(yv).data), kTol, name + " y");
    CHECK_ERR(worst, rel_err(dx, t.grad(xv).data), kTol, name + " dx");
    // In place: forward over x itself gives the same bits.
    cuda::rope_forward(xd.as<float>(), xd.as<float>(), pd.as<int64_t>(), c.N, c.heads, c.hd, c.theta);
    expect_same_bits(down<float>(xd, ND), y, name + ": in-place result");
    // Strided: from columns [D, 2D) of a [N, 3D] array into a [N, D] one, and the backward into columns [D, 2D)
    // of a [N, 3D] array: the same bits as the contiguous calls, nothing written outside those columns.
    {
      std::vector<float> wide(size_t(3 * ND), 7.0f);
      for (int64_t i = 0; i < c.N; ++i)
        std::copy(x.begin() + i * D, x.begin() + (i + 1) * D, wide.begin() + i * 3 * D + D);
      cuda::DeviceBuffer wd = up(wide), ys = nan_buf(ND * 4), dxw = up(std::vector<float>(size_t(3 * ND), 7.0f));
      cuda::rope_forward(wd.as<float>() + D, 3 * D, ys.as<float>(), D, pd.as<int64_t>(), c.N, c.heads, c.hd, c.theta);
      cuda::rope_backward(dyd.as<float>(), D, dxw.as<float>() + D, 3 * D, pd.as<int64_t>(), c.N, c.heads, c.hd,
                          c.theta);
      expect_same_bits(down<float>(ys, ND), y, name + ": strided source");
      const auto dxs = down<float>(dxw, 3 * ND);
      for (int64_t i = 0; i < c.N; ++i)
        for (int64_t j = 0; j < 3 * D; ++j) {
          const float got = dxs[size_t(i * 3 * D + j)];
          const float want = j >= D && j < 2 * D ? dx[size_t(i * D + j - D)] : 7.0f;
          ASSERT_EQ(0, std::memcmp(&got, &want, 4)) << name << ": strided backward at row " << i << " column " << j;
        }
      // bf16 output (the bf16 attention's q, k): the fp32 result rounded to nearest even, bit for bit.
      cuda::DeviceBuffer y16(size_t(ND) * 2 + 2);
      cuda::rope_forward(wd.as<float>() + D, 3 * D, y16.as<bf16>(), D, pd.as<int64_t>(), c.N, c.heads, c.hd, c.theta);
      const BitDiff diff16 = bf16_rounding_diff(y, D, down<bf16>(y16, ND), D, c.N, D);
      ASSERT_EQ(diff16.count, 0u) << name << ": bf16 output differs from the rounding of y in " << diff16.count
                                  << " elements, first at " << diff16.first;
    }
    ++worst.cases;
  }
}

#endif  // TTT_HAVE_CUDA
