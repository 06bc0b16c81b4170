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

// The rotations read from a table (cuda::rope_rotations) give the bits of the rotations computed from the positions,
// in the strided fp32 forward and backward and the bf16 forward: head widths 2 .. 384 (the attention's 64, the 760m
// memory heads' 384), random positions, a context-parallel rank's (rank * N + i) and large ones (up to 2^24), and a
// part of the table from row s N on with the positions from there (the GPU model's per-sequence calls with a halo).
TEST(CudaKernels, RopeTableKeepsTheComputedBits) {
  REQUIRE_CUDA();
  struct C {
    int64_t N, heads, hd;
    double theta;
  };
  for (const C c : std::vector<C>{{301, 24, 64, 1e6}, {97, 4, 384, 1e6}, {64, 3, 130, 1e4}, {33, 11, 16, 1e4},
                                  {9, 1, 2, 10.0}, {200, 8, 128, 5e5}}) {
    for (const int kind : {0, 1, 2}) {
      const uint64_t seed = fresh_seed();
      Rng r(seed);
      const int64_t D = c.heads * c.hd, ND = c.N * D, half = c.hd / 2;
      const char* kinds[] = {"random positions", "rank 5 positions", "positions up to 2^24"};
      const std::string name = "rope table N" + std::to_string(c.N) + " H" + std::to_string(c.heads) + " hd" +
                               std::to_string(c.hd) + ", " + kinds[kind] + " seed " + std::to_string(seed);
      std::vector<int64_t> pos = random_positions(r, c.N, kind == 2 ? (uint64_t(1) << 24) : 32768);
      if (kind == 1)
        for (int64_t i = 0; i < c.N; ++i) pos[size_t(i)] = 5 * c.N + i;
      const std::vector<float> x = normal(r, 3 * ND, 1.0), dy = normal(r, ND, 1.0);
      cuda::DeviceBuffer xd = up(x), dyd = up(dy), pd = up(pos);
      cuda::DeviceBuffer table(size_t(c.N * half) * sizeof(cuda::RopeRotation));
      cuda::rope_rotations(pd.as<int64_t>(), c.N, c.hd, c.theta, table.as<cuda::RopeRotation>());
      const cuda::RopeRotation* rot = table.as<cuda::RopeRotation>();
      // The model's calls: q from columns [D, 2D) of [N, 3D] into [N, D]; the backward into columns [D, 2D).
      cuda::DeviceBuffer y1 = nan_buf(size_t(ND) * 4), y2 = nan_buf(size_t(ND) * 4);
      cuda::rope_forward(xd.as<float>() + D, 3 * D, y1.as<float>(), D, pd.as<int64_t>(), c.N, c.heads, c.hd, c.theta);
      cuda::rope_forward(xd.as<float>() + D, 3 * D, y2.as<float>(), D, rot, c.N, c.heads, c.hd);
      expect_same_bits(down<float>(y2, size_t(ND)), down<float>(y1, size_t(ND)), name + ": forward");
      cuda::DeviceBuffer dx1 = up(x), dx2 = up(x);
      cuda::rope_backward(dyd.as<float>(), D, dx1.as<float>() + D, 3 * D, pd.as<int64_t>(), c.N, c.heads, c.hd,
                          c.theta);
      cuda::rope_backward(dyd.as<float>(), D, dx2.as<float>() + D, 3 * D, rot, c.N, c.heads, c.hd);
      expect_same_bits(down<float>(dx2, size_t(3 * ND)), down<float>(dx1, size_t(3 * ND)), name + ": backward");
      cuda::DeviceBuffer h1(size_t(ND) * 2), h2(size_t(ND) * 2);
      cuda::rope_forward(xd.as<float>(), 3 * D, h1.as<bf16>(), D, pd.as<int64_t>(), c.N, c.heads, c.hd, c.theta);
      cuda::rope_forward(xd.as<float>(), 3 * D, h2.as<bf16>(), D, rot, c.N, c.heads, c.hd);
      const BitDiff d16 = bit_diff(down<bf16>(h2, size_t(ND)), down<bf16>(h1, size_t(ND)));
      EXPECT_EQ(d16.count, 0u) << name << ": bf16 forward differs in " << d16.count << " elements, first at "
                               << d16.first;
      // Rows [s, N) alone, from the table's row s and the positions from there.
      const int64_t s = c.N / 3, rest = c.N - s;
      cuda::DeviceBuffer p1 = nan_buf(size_t(rest * D) * 4), p2 = nan_buf(size_t(rest * D) * 4);
      cuda::rope_forward(xd.as<float>() + s * 3 * D, 3 * D, p1.as<float>(), D, pd.as<int64_t>() + s, rest, c.heads,
                         c.hd, c.theta);
      cuda::rope_forward(xd.as<float>() + s * 3 * D, 3 * D, p2.as<float>(), D, rot + s * half, rest, c.heads, c.hd);
      expect_same_bits(down<float>(p2, size_t(rest * D)), down<float>(p1, size_t(rest * D)), name + ": rows from s");
    }
  }
}

#endif  // TTT_HAVE_CUDA
