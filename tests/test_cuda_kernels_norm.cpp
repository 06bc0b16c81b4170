// The RMSNorm kernels (norm_kernels.h), whole rows and per head, against nn::rms_norm / rms_norm_heads on a float64
// tape; their variants (the forward copying its input, bf16 output, the memory operators' layout, the backward adding
// the residual) bit for bit against the plain calls. Conventions: cuda_kernels_test_util.h.
#include <gtest/gtest.h>

#include "cuda_kernels_test_util.h"

#ifdef TTT_HAVE_CUDA
#include <array>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "nn/layers.h"

using namespace ttt;
using namespace ttt::cuda_kernels_test;

namespace {

// ---- RMSNorm (group = D) and per head ------------------------------------------------------------------------
void rms_case(Worst& worst, int64_t N, int64_t D, int64_t heads, bool per_head) {
  const uint64_t seed = fresh_seed();
  Rng r(seed);
  const double eps = 1e-6;
  const int64_t group = per_head ? D / heads : D;
  const std::string name = std::string(per_head ? "rms_norm_heads" : "rms_norm") + " N" + std::to_string(N) + " D" +
                           std::to_string(D) + " group" + std::to_string(group);
  const std::vector<float> x = normal(r, N * D, r.uniform(0.1, 3.0)), w = uniform(r, D, 0.5, 1.5),
                           dy = normal(r, N * D, 1.0);
  // CPU reference in float64.
  ag::Tape<double> t;
  ag::Var xv = t.leaf(mat(x, N, D), true), wv = t.leaf(mat(w, 1, D), true);
  ag::Var yv = per_head ? nn::rms_norm_heads(t, xv, wv, heads, eps) : nn::rms_norm(t, xv, wv, eps);
  t.grad(yv) = mat(dy, N, D);
  t.backward();
  // GPU.
  cuda::DeviceBuffer xd = up(x), wd = up(w), dyd = up(dy);
  const size_t ND = size_t(N * D), NG = size_t(N * (D / group));
  cuda::DeviceBuffer yd = nan_buf(ND * 4), rd = nan_buf(NG * 4), dxd = nan_buf(ND * 4), dwd = nan_buf(size_t(D) * 4);
  cuda::DeviceBuffer work = nan_buf(cuda::rms_norm_backward_workspace(N, D));
  if (per_head) {
    cuda::rms_norm_heads_forward(xd.as<float>(), wd.as<float>(), yd.as<float>(), rd.as<float>(), N, D, heads, eps);
    cuda::rms_norm_heads_backward(xd.as<float>(), wd.as<float>(), rd.as<float>(), dyd.as<float>(), dxd.as<float>(),
                                  dwd.as<float>(), work.as<void>(), N, D, heads);
  } else {
    cuda::rms_norm_forward(xd.as<float>(), wd.as<float>(), yd.as<float>(), rd.as<float>(), N, D, group, eps);
    cuda::rms_norm_backward(xd.as<float>(), wd.as<float>(), rd.as<float>(), dyd.as<float>(), dxd.as<float>(),
                            dwd.as<float>(), work.as<void>(), N, D, group);
  }
  const auto y = down<float>(yd, ND), dx = down<float>(dxd, ND), dw = down<float>(dwd, size_t(D));
  const auto rinv = down<float>(rd, NG);
  CHECK_ERR(worst, rel_err(y, t.val(yv).data), kTol, name + " y");
  CHECK_ERR(worst, rel_err(dx, t.grad(xv).data), kTol, name + " dx");
  CHECK_ERR(worst, rel_err(dw, t.grad(wv).data), kTol, name + " dw");
  // rinv itself, against float64.
  std::vector<double> rref(NG);
  for (size_t s = 0; s < NG; ++s) {
    double ss = 0;
    for (int64_t j = 0; j < group; ++j) ss += double(x[s * size_t(group) + size_t(j)]) * x[s * size_t(group) + size_t(j)];
    rref[s] = 1.0 / std::sqrt(ss / double(group) + eps);
  }
  CHECK_ERR(worst, rel_err(rinv, rref), kTol, name + " rinv");
  // Bit-reproducible backward: again into fresh NaN buffers.
  cuda::DeviceBuffer dxd2 = nan_buf(ND * 4), dwd2 = nan_buf(size_t(D) * 4);
  cuda::rms_norm_backward(xd.as<float>(), wd.as<float>(), rd.as<float>(), dyd.as<float>(), dxd2.as<float>(),
                          dwd2.as<float>(), work.as<void>(), N, D, group);
  const auto dx2 = down<float>(dxd2, ND), dw2 = down<float>(dwd2, size_t(D));
  expect_same_bits(dx2, dx, name + ": dx run again (not bit-reproducible)");
  expect_same_bits(dw2, dw, name + ": dw run again (not bit-reproducible)");
  // dw's second pass: the work buffer's per-slice partials [slices, D] added in slice order in double, then rounded
  // to float, bit for bit (the host's additions are the kernel's: plain double adds in the same order).
  if (N > 0) {
    const size_t slices = cuda::rms_norm_backward_workspace(N, D) / (size_t(D) * sizeof(double));
    const auto partial = down<double>(work, slices * size_t(D));
    std::vector<float> dw_want(static_cast<size_t>(D));
    for (int64_t c = 0; c < D; ++c) {
      double acc = 0;
      for (size_t sl = 0; sl < slices; ++sl) acc += partial[sl * size_t(D) + size_t(c)];
      dw_want[size_t(c)] = float(acc);
    }
    expect_same_bits(dw2, dw_want, name + ": dw against the in-order sum of the partials");
  }
  // Whole rows with the copy of x (the GPU model's residual): the same y and rinv bits, and x copied exactly.
  if (!per_head) {
    cuda::DeviceBuffer yc = nan_buf(ND * 4), rc = nan_buf(NG * 4), xc = nan_buf(ND * 4), yc16 = nan_buf(ND * 2),
                       y16 = nan_buf(ND * 2);
    cuda::rms_norm_forward_copy(xd.as<float>(), wd.as<float>(), yc.as<float>(), rc.as<float>(), xc.as<float>(), N, D,
                                eps);
    expect_same_bits(down<float>(yc, ND), y, name + ": y with the copy");
    expect_same_bits(down<float>(rc, NG), rinv, name + ": rinv with the copy");
    expect_same_bits(down<float>(xc, ND), x, name + ": the copy of x");
    cuda::rms_norm_forward(xd.as<float>(), wd.as<float>(), y16.as<bf16>(), rd.as<float>(), N, D, D, eps);
    cuda::rms_norm_forward_copy(xd.as<float>(), wd.as<float>(), yc16.as<bf16>(), rc.as<float>(), xc.as<float>(), N, D,
                                eps);
    const auto a16 = down<bf16>(y16, ND), b16 = down<bf16>(yc16, ND);
    for (size_t i = 0; i < ND; ++i) ASSERT_EQ(a16[i].bits, b16[i].bits) << name << ": bf16 y with the copy at " << i;
    expect_same_bits(down<float>(xc, ND), x, name + ": the copy of x (bf16 y)");
  }
  // Per head with x and dx in the memory operators' layout [S*heads, rows/S, group] (the GPU model's memory-output
  // norm): the bits of the row-major calls, laid out.
  if (per_head)
    for (const int64_t S : {int64_t(1), N % 2 == 0 ? int64_t(2) : int64_t(1)}) {
      const int64_t L = N / S;
      cuda::DeviceBuffer xT = nan_buf(ND * 4), yb = nan_buf(ND * 4), rb = nan_buf(NG * 4), dxT = nan_buf(ND * 4),
                         dxb = nan_buf(ND * 4), dwb = nan_buf(size_t(D) * 4);
      cuda::mk::heads_to_batch(xd.as<float>(), D, xT.as<float>(), S, L, heads, group);
      cuda::rms_norm_heads_forward_batch(xT.as<float>(), wd.as<float>(), yb.as<float>(), rb.as<float>(), S, L, D, heads,
                                         eps);
      cuda::rms_norm_heads_backward_batch(xT.as<float>(), wd.as<float>(), rb.as<float>(), dyd.as<float>(),
                                          dxT.as<float>(), dwb.as<float>(), work.as<void>(), S, L, D, heads);
      cuda::mk::batch_to_heads(dxT.as<float>(), dxb.as<float>(), D, S, L, heads, group, false);
      const std::string lay = name + " in the layout of " + std::to_string(S) + " sequences";
      expect_same_bits(down<float>(yb, ND), y, lay + ": y");
      expect_same_bits(down<float>(rb, NG), rinv, lay + ": rinv");
      expect_same_bits(down<float>(dxb, ND), dx, lay + ": dx");
      expect_same_bits(down<float>(dwb, size_t(D)), dw, lay + ": dw");
    }
  // With a residual (the GPU model's residual-stream gradient): dx = residual + the norm's dx, each element the
  // float sum of the two (as a separate add), and its bf16 copy the host's rounding of it, bit for bit.
  const std::vector<float> residual = normal(r, N * D, 1.0);
  cuda::DeviceBuffer resd = up(residual), dxa = nan_buf(ND * 4), dx16 = nan_buf(ND * 2), dwa = nan_buf(size_t(D) * 4);
  cuda::rms_norm_backward_add(xd.as<float>(), wd.as<float>(), rd.as<float>(), dyd.as<float>(), resd.as<float>(),
                              dxa.as<float>(), dx16.as<bf16>(), dwa.as<float>(), work.as<void>(), N, D, group);
  const auto sum = down<float>(dxa, ND);
  const auto sum16 = down<bf16>(dx16, ND);
  for (size_t i = 0; i < ND; ++i) {
    const float want = residual[i] + dx[i];
    ASSERT_EQ(0, std::memcmp(&want, &sum[i], 4)) << name << ": residual + dx at " << i << ": " << sum[i] << " vs "
                                                 << want;
    ASSERT_EQ(float_to_bf16(want).bits, sum16[i].bits) << name << ": bf16 copy of residual + dx at " << i;
  }
  expect_same_bits(down<float>(dwa, size_t(D)), dw, name + ": dw with the residual");
  ++worst.cases;
}

}  // namespace

TEST(CudaKernels, RmsNormMatchesCpu) {
  REQUIRE_CUDA();
  Worst worst{"rms_norm"};
  for (auto [N, D] : std::vector<std::pair<int64_t, int64_t>>{
           {1, 8}, {3, 2}, {37, 96}, {33, 250}, {256, 1024}, {100, 4100}, {4097, 64}, {2, 12288}})
    rms_case(worst, N, D, 1, false);
}

TEST(CudaKernels, RmsNormHeadsMatchesCpu) {
  REQUIRE_CUDA();
  Worst worst{"rms_norm_heads"};
  for (auto [N, heads, hd] : std::vector<std::array<int64_t, 3>>{
           {5, 4, 16}, {64, 8, 64}, {33, 3, 50}, {128, 12, 128}, {7, 5, 6}, {1000, 16, 32}})
    rms_case(worst, N, heads * hd, heads, true);
}

// The forward's exact arithmetic on the host, for groups that are a multiple of 4 in 16-byte aligned rows (the
// register kernel up to 1536 columns, the loop above it): lane l of a segment's warp adds the squares of its
// four-column slices l, l + 32, ... in order (ss + fma(x3, x3, fma(x2, x2, fma(x0, x0, x1 * x1)))), the 32 lane sums
// meet along the xor tree, rinv = 1 / sqrt(ss / group + eps) in double rounded to float, y = x * r * w in float.
// Every y (fp32 and bf16) and rinv bit for bit: the bits of the loop kernel, whatever path the launcher takes.
TEST(CudaKernels, RmsNormForwardMatchesHostBits) {
  REQUIRE_CUDA();
  for (auto [N, D, heads] : std::vector<std::array<int64_t, 3>>{{300, 1536, 1},
                                                                {300, 1536, 4},
                                                                {64, 768, 1},
                                                                {9, 48, 4},
                                                                {5, 1532, 1},
                                                                {17, 1540, 1},
                                                                {33, 2048, 1},
                                                                {7, 3072, 4},
                                                                {3, 3072, 1}}) {
    const uint64_t seed = fresh_seed();
    Rng r(seed);
    const double eps = 1e-6;
    const int64_t group = D / heads, segs = N * heads;
    const std::string name = "rms_norm forward N" + std::to_string(N) + " D" + std::to_string(D) + " group" +
                             std::to_string(group) + " (seed " + std::to_string(seed) + ")";
    const std::vector<float> x = normal(r, N * D, r.uniform(0.1, 3.0)), w = uniform(r, D, 0.5, 1.5);
    std::vector<float> y_want(size_t(N * D)), rinv_want(static_cast<size_t>(segs));
    for (int64_t seg = 0; seg < segs; ++seg) {
      const float* xs = x.data() + seg * group;
      std::array<double, 32> lane{};
      for (int l = 0; l < 32; ++l)
        for (int64_t j = l; j < group / 4; j += 32) {
          const double x0 = xs[4 * j], x1 = xs[4 * j + 1], x2 = xs[4 * j + 2], x3 = xs[4 * j + 3];
          lane[size_t(l)] = lane[size_t(l)] + std::fma(x3, x3, std::fma(x2, x2, std::fma(x0, x0, x1 * x1)));
        }
      for (int o = 16; o > 0; o >>= 1) {
        std::array<double, 32> next{};
        for (int l = 0; l < 32; ++l) next[size_t(l)] = lane[size_t(l)] + lane[size_t(l ^ o)];
        lane = next;
      }
      const float rs = float(1.0 / std::sqrt(lane[0] / double(group) + eps));
      rinv_want[size_t(seg)] = rs;
      const int64_t c0 = (seg * group) % D;
      for (int64_t j = 0; j < group; ++j) y_want[size_t(seg * group + j)] = xs[j] * rs * w[size_t(c0 + j)];
    }
    const size_t ND = size_t(N * D);
    cuda::DeviceBuffer xd = up(x), wd = up(w), yd = nan_buf(ND * 4), y16 = nan_buf(ND * 2),
                       rd = nan_buf(size_t(segs) * 4), r16 = nan_buf(size_t(segs) * 4);
    cuda::rms_norm_forward(xd.as<float>(), wd.as<float>(), yd.as<float>(), rd.as<float>(), N, D, group, eps);
    cuda::rms_norm_forward(xd.as<float>(), wd.as<float>(), y16.as<bf16>(), r16.as<float>(), N, D, group, eps);
    expect_same_bits(down<float>(yd, ND), y_want, name + ": y");
    expect_same_bits(down<float>(rd, size_t(segs)), rinv_want, name + ": rinv");
    expect_same_bits(down<float>(r16, size_t(segs)), rinv_want, name + ": rinv (bf16 y)");
    const auto got16 = down<bf16>(y16, ND);
    for (size_t i = 0; i < ND; ++i)
      ASSERT_EQ(float_to_bf16(y_want[i]).bits, got16[i].bits) << name << ": bf16 y at " << i;
  }
}

// The backward's dx by the same exact arithmetic on the host (groups a multiple of 4, aligned rows: the register
// kernel up to 1536 columns, the loop above it): lane l's dot over its four-column slices l, l + 32, ... (the
// products dy w in double, column 1's times x, then fma of columns 0, 2, 3, added to the lane's sum), the xor tree,
// c = r² dot / group in double rounded to float, dx = r (dy w - x c) as fma(dy, w, -(x c)) times r, plus the
// residual (rounded after) and its bf16 copy: bit for bit, as the loop kernel computed them before.
TEST(CudaKernels, RmsNormBackwardDxMatchesHostBits) {
  REQUIRE_CUDA();
  for (auto [N, D, heads] : std::vector<std::array<int64_t, 3>>{
           {300, 1536, 1}, {300, 1536, 4}, {64, 768, 1}, {9, 48, 4}, {5, 1532, 1}, {17, 1540, 1}, {7, 3072, 4}}) {
    const uint64_t seed = fresh_seed();
    Rng r(seed);
    const int64_t group = D / heads, segs = N * heads;
    const std::string name = "rms_norm backward N" + std::to_string(N) + " D" + std::to_string(D) + " group" +
                             std::to_string(group) + " (seed " + std::to_string(seed) + ")";
    const std::vector<float> x = normal(r, N * D, 1.0), w = uniform(r, D, 0.5, 1.5), dy = normal(r, N * D, 1.0),
                             rinv = uniform(r, segs, 0.3, 3.0), residual = normal(r, N * D, 1.0);
    std::vector<float> dx_want(size_t(N * D)), sum_want(size_t(N * D));
    for (int64_t seg = 0; seg < segs; ++seg) {
      const size_t o = size_t(seg * group), c0 = size_t((seg * group) % D);
      std::array<double, 32> lane{};
      for (int l = 0; l < 32; ++l)
        for (int64_t j = l; j < group / 4; j += 32) {
          double p[4];
          for (int k = 0; k < 4; ++k) p[k] = double(dy[o + size_t(4 * j + k)]) * double(w[c0 + size_t(4 * j + k)]);
          auto xa = [&](int k) { return double(x[o + size_t(4 * j + k)]); };
          lane[size_t(l)] =
              lane[size_t(l)] + std::fma(p[3], xa(3), std::fma(p[2], xa(2), std::fma(p[0], xa(0), p[1] * xa(1))));
        }
      for (int o2 = 16; o2 > 0; o2 >>= 1) {
        std::array<double, 32> next{};
        for (int l = 0; l < 32; ++l) next[size_t(l)] = lane[size_t(l)] + lane[size_t(l ^ o2)];
        lane = next;
      }
      const float rs = rinv[size_t(seg)];
      const float c = float(double(rs) * double(rs) * lane[0] / double(group));
      for (int64_t j = 0; j < group; ++j) {
        const size_t i = o + size_t(j);
        const float d = rs * std::fmaf(dy[i], w[c0 + size_t(j)], -(x[i] * c));
        dx_want[i] = d;
        sum_want[i] = residual[i] + d;
      }
    }
    const size_t ND = size_t(N * D);
    cuda::DeviceBuffer xd = up(x), wd = up(w), dyd = up(dy), rd = up(rinv), resd = up(residual), dxd = nan_buf(ND * 4),
                       sumd = nan_buf(ND * 4), sum16 = nan_buf(ND * 2);
    cuda::rms_norm_backward(xd.as<float>(), wd.as<float>(), rd.as<float>(), dyd.as<float>(), dxd.as<float>(), nullptr,
                            nullptr, N, D, group);
    cuda::rms_norm_backward_add(xd.as<float>(), wd.as<float>(), rd.as<float>(), dyd.as<float>(), resd.as<float>(),
                                sumd.as<float>(), sum16.as<bf16>(), nullptr, nullptr, N, D, group);
    expect_same_bits(down<float>(dxd, ND), dx_want, name + ": dx");
    expect_same_bits(down<float>(sumd, ND), sum_want, name + ": residual + dx");
    const auto got16 = down<bf16>(sum16, ND);
    for (size_t i = 0; i < ND; ++i)
      ASSERT_EQ(float_to_bf16(sum_want[i]).bits, got16[i].bits) << name << ": bf16 residual + dx at " << i;
  }
}

#endif  // TTT_HAVE_CUDA
