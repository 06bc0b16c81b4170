// The layout kernels (layout_kernels.h), pure data movement and float <-> bf16, bit for bit against the host: the
// kept bf16 residual stream's round-store and widening, the backend's one float -> bf16 conversion on each of its
// walks, block copies and the head / batch layouts. Conventions: cuda_kernels_test_util.h.
#include <gtest/gtest.h>

#include "cuda_kernels_test_util.h"

#ifdef TTT_HAVE_CUDA
#include <array>
#include <cmath>
#include <cstring>
#include <iterator>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

using namespace ttt;
using namespace ttt::cuda_kernels_test;

// ---- the kept bf16 residual stream (mk::round_store_bf16, mk::from_bf16) ---------------------------------------
// The kept bf16 residual stream's two passes: round_store_bf16 (x rounded in place and its bf16 copy stored) and
// from_bf16 (widened back), against the host's rounding bit for bit, at sizes around the elements per trip.
TEST(CudaKernels, RoundStoreAndWidenBf16MatchHost) {
  REQUIRE_CUDA();
  for (const int64_t n : {int64_t(1), int64_t(7), int64_t(4096) + 5, (int64_t(1) << 22) + 1}) {
    const uint64_t seed = fresh_seed();
    Rng r(seed);
    const std::vector<float> x = normal(r, n, 3.0);
    cuda::DeviceBuffer xd = up(x), hd = nan_buf(size_t(n) * 2), wd = nan_buf(size_t(n) * 4);
    cuda::mk::round_store_bf16(xd.as<float>(), hd.as<bf16>(), n);
    cuda::mk::from_bf16(hd.as<bf16>(), wd.as<float>(), n);
    const auto rounded = down<float>(xd, size_t(n)), widened = down<float>(wd, size_t(n));
    const auto h = down<bf16>(hd, size_t(n));
    for (int64_t i = 0; i < n; ++i) {
      const bf16 want = float_to_bf16(x[size_t(i)]);
      const float back = bf16_to_float(want);
      ASSERT_EQ(want.bits, h[size_t(i)].bits) << "n " << n << " (seed " << seed << "): bf16 copy at " << i;
      ASSERT_EQ(0, std::memcmp(&back, &rounded[size_t(i)], 4)) << "n " << n << ": x rounded in place at " << i;
      ASSERT_EQ(0, std::memcmp(&back, &widened[size_t(i)], 4)) << "n " << n << ": widened at " << i;
    }
  }
}

// ---- float -> bf16 (mk::to_bf16: the backend's one conversion) ---------------------------------------------------
// Every walk of the one conversion kernel (contiguous with 16-byte loads, contiguous from an unaligned address,
// one block with leading dimensions, strided batches into packed or strided destinations) gives the host's
// round-to-nearest-even (core/dtype.h) bit for bit, ties and infinities included, and writes nothing outside the
// elements it converts (the destination starts as all-ones bits).
TEST(CudaKernels, ToBf16MatchesHostRounding) {
  REQUIRE_CUDA();
  const uint64_t seed = fresh_seed();
  Rng r(seed);
  struct Case {
    const char* name;
    int64_t src_offset, lds, src_stride, ldd, dst_stride, rows, cols, batch;
  };
  const Case cases[] = {
      {"contiguous aligned", 0, 1027, 1027, 1027, 1027, 1, 1027, 1},
      {"contiguous unaligned", 1, 1027, 1027, 1027, 1027, 1, 1027, 1},
      {"contiguous batch", 0, 12, 60, 12, 60, 5, 12, 3},
      {"block", 0, 9, 63, 6, 42, 7, 5, 1},
      {"batch, packed destination", 0, 6, 20, 4, 12, 3, 4, 5},
      {"batch, strided destination", 3, 7, 40, 5, 30, 4, 5, 2},
      {"block, 16-byte walk", 0, 12, 72, 8, 48, 6, 8, 1},
      {"batch, 16-byte walk", 0, 8, 48, 4, 24, 6, 4, 3},
      {"batch, 16-byte widths at an unaligned source", 1, 8, 48, 4, 24, 6, 4, 3},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.name) + " (seed " + std::to_string(seed) + ")");
    const int64_t src_n = c.src_offset + (c.batch - 1) * c.src_stride + (c.rows - 1) * c.lds + c.cols;
    const int64_t dst_n = (c.batch - 1) * c.dst_stride + (c.rows - 1) * c.ldd + c.cols;
    std::vector<float> src = normal(r, src_n, 3.0);
    // (source, destination) index of every converted element.
    std::vector<std::pair<size_t, size_t>> converted;
    for (int64_t b = 0; b < c.batch; ++b)
      for (int64_t i = 0; i < c.rows; ++i)
        for (int64_t j = 0; j < c.cols; ++j)
          converted.emplace_back(size_t(c.src_offset + b * c.src_stride + i * c.lds + j),
                                 size_t(b * c.dst_stride + i * c.ldd + j));
    // Halfway cases (round to even, down and up), large values and infinities among the converted elements.
    const float special[] = {1.0f + 1.0f / 256, 1.0f + 3.0f / 256, -(1.0f + 1.0f / 256), 3.3e38f, -1e-30f,
                             INFINITY, -INFINITY};
    for (size_t i = 0; i < std::size(special); ++i) src[converted[i].first] = special[i];
    cuda::DeviceBuffer sd = up(src), dd = nan_buf(size_t(dst_n) * sizeof(bf16));
    cuda::mk::to_bf16(sd.as<float>() + c.src_offset, c.lds, c.src_stride, dd.as<bf16>(), c.ldd, c.dst_stride, c.rows,
                      c.cols, c.batch);
    const std::vector<bf16> got = down<bf16>(dd, size_t(dst_n));
    std::vector<uint16_t> want(size_t(dst_n), 0xFFFF);
    for (const auto& [from, to] : converted) want[to] = float_to_bf16(src[from]).bits;
    int64_t wrong = 0;
    for (int64_t e = 0; e < dst_n; ++e) wrong += got[size_t(e)].bits != want[size_t(e)];
    EXPECT_EQ(wrong, 0) << "of " << dst_n << " destination elements";
  }
}

// ---- block copies and head layouts (mk::copy2d, heads_to_batch, batch_to_heads) ------------------------------
// Pure data movement, so bit for bit against the host loop; with accumulate, the one float addition per element.
// The shapes take both walks of the segment copy (16-byte accesses: widths and strides multiples of 4; one
// element per thread otherwise, or from an unaligned address), and elements outside the copied ones keep their
// NaN fill.
TEST(CudaKernels, LayoutCopiesMatchHost) {
  REQUIRE_CUDA();
  const uint64_t seed = fresh_seed();
  Rng r(seed);
  // copy2d: rows x cols with leading dimensions, from an offset into the source.
  for (const auto& [rows, cols, lds, ldd, off, acc] :
       std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, bool>>{
           {7, 8, 12, 16, 0, false}, {7, 8, 12, 16, 0, true}, {5, 3, 7, 5, 0, false}, {6, 8, 8, 8, 2, true},
           {1, 1027, 1027, 1027, 0, false}}) {
    SCOPED_TRACE("copy2d " + std::to_string(rows) + "x" + std::to_string(cols) + " lds " + std::to_string(lds) +
                 " ldd " + std::to_string(ldd) + " offset " + std::to_string(off) + (acc ? " accumulate" : "") +
                 " (seed " + std::to_string(seed) + ")");
    const std::vector<float> src = normal(r, off + rows * lds, 1.0);
    std::vector<float> dst0 = normal(r, rows * ldd, 1.0);
    if (!acc)
      for (auto& e : dst0) e = NAN;
    std::vector<float> want = dst0;
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) {
        const float v = src[size_t(off + i * lds + j)];
        float& o = want[size_t(i * ldd + j)];
        o = acc ? o + v : v;
      }
    cuda::DeviceBuffer sd = up(src), dd = up(dst0);
    cuda::mk::copy2d(sd.as<float>() + off, lds, dd.as<float>(), ldd, rows, cols, acc);
    expect_same_bits(down<float>(dd, want.size()), want, "copy2d");
  }
  // [S*N, ld] (head h = columns h*d ..) <-> [S*H, N, d], and back with accumulation.
  for (const auto& [S, N, H, d, ld] : std::vector<std::array<int64_t, 5>>{{2, 5, 3, 4, 12}, {2, 5, 3, 4, 20},
                                                                           {1, 7, 2, 3, 6}, {3, 4, 4, 8, 40}}) {
    SCOPED_TRACE("heads S" + std::to_string(S) + " N" + std::to_string(N) + " H" + std::to_string(H) + " d" +
                 std::to_string(d) + " ld" + std::to_string(ld) + " (seed " + std::to_string(seed) + ")");
    const std::vector<float> x = normal(r, S * N * ld, 1.0);
    std::vector<float> y_want(size_t(S * H * N * d), NAN);
    for (int64_t s = 0; s < S; ++s)
      for (int64_t i = 0; i < N; ++i)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t j = 0; j < d; ++j) y_want[size_t(((s * H + h) * N + i) * d + j)] = x[size_t((s * N + i) * ld + h * d + j)];
    cuda::DeviceBuffer xd = up(x), yd = nan_buf(y_want.size() * sizeof(float));
    cuda::mk::heads_to_batch(xd.as<float>(), ld, yd.as<float>(), S, N, H, d);
    expect_same_bits(down<float>(yd, y_want.size()), y_want, "heads_to_batch");
    // batch_to_heads accumulating y into x: every head column gets x + y; the columns beyond H*d stay.
    std::vector<float> x_want = x;
    for (int64_t s = 0; s < S; ++s)
      for (int64_t i = 0; i < N; ++i)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t j = 0; j < d; ++j)
            x_want[size_t((s * N + i) * ld + h * d + j)] += y_want[size_t(((s * H + h) * N + i) * d + j)];
    cuda::mk::batch_to_heads(yd.as<float>(), xd.as<float>(), ld, S, N, H, d, /*accumulate=*/true);
    expect_same_bits(down<float>(xd, x_want.size()), x_want, "batch_to_heads, accumulate");
    // The same two passes with the multi-head side rounded to bf16 in [S*N, ld16] as well (the GPU model's v and
    // dv operands): the fp32 results the same bits, the copy the host's rounding of x (of x + y, accumulating),
    // its other elements untouched; ld16 a multiple of 4 (16-byte walk where d and ld allow) or not.
    for (const int64_t ld16 : {H * d + 4, H * d + 1}) {
      SCOPED_TRACE("bf16 copy, ld16 " + std::to_string(ld16));
      const size_t n16 = size_t(S * N * ld16);
      auto copy_want = [&](const std::vector<float>& heads) {
        std::vector<uint16_t> want(n16, 0xFFFF);  // nan_buf's fill
        for (int64_t t = 0; t < S * N; ++t)
          for (int64_t c = 0; c < H * d; ++c) want[size_t(t * ld16 + c)] = float_to_bf16(heads[size_t(t * ld + c)]).bits;
        return want;
      };
      auto copy_got = [&](const cuda::DeviceBuffer& b) {
        const std::vector<bf16> got = down<bf16>(b, n16);
        std::vector<uint16_t> bits(n16);
        for (size_t e = 0; e < n16; ++e) bits[e] = got[e].bits;
        return bits;
      };
      cuda::DeviceBuffer xc = up(x), yc = nan_buf(y_want.size() * sizeof(float)), x16 = nan_buf(n16 * sizeof(bf16));
      cuda::mk::heads_to_batch(xc.as<float>(), ld, yc.as<float>(), S, N, H, d, x16.as<bf16>(), ld16);
      expect_same_bits(down<float>(yc, y_want.size()), y_want, "heads_to_batch with the bf16 copy");
      EXPECT_TRUE(copy_got(x16) == copy_want(x)) << "heads_to_batch's bf16 copy";
      cuda::DeviceBuffer s16 = nan_buf(n16 * sizeof(bf16));
      cuda::mk::batch_to_heads(yc.as<float>(), xc.as<float>(), ld, S, N, H, d, /*accumulate=*/true, s16.as<bf16>(),
                               ld16);
      expect_same_bits(down<float>(xc, x_want.size()), x_want, "batch_to_heads, accumulate, with the bf16 copy");
      EXPECT_TRUE(copy_got(s16) == copy_want(x_want)) << "batch_to_heads's bf16 copy of the sums";
    }
  }
}

#endif  // TTT_HAVE_CUDA
