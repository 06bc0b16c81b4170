// The CUDA layer kernels (src/backend/cuda/kernels.h) against their CPU references (src/nn/layers.cpp on the autograd
// tape in float64, src/train/optimizer.cpp) on fresh random inputs: fp32 on the GPU within 1e-4 relative
// (||gpu - cpu|| / ||cpu|| per output, in double) of float64 on the CPU, AdamW within 1e-6 relative of the CPU
// optimizer after 3 steps, the float -> bf16 conversion bit for bit with the host's rounding (core/dtype.h).
// Device outputs are filled with NaN before every run, so an element no kernel writes
// shows as NaN (which never passes). Reductions must be bit-reproducible: each backward runs twice and the
// results are compared bitwise. Every test skips, saying why, without CUDA in the build or a usable device.
#include <gtest/gtest.h>

#include "cuda_test_util.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "autograd/tape.h"
#include "core/rng.h"
#include "nn/layers.h"
#include "train/optimizer.h"
#ifdef TTT_HAVE_CUDA
#include "backend/cuda/kernels.h"
#include "backend/cuda/lact_cuda.h"
#endif

using namespace ttt;

#ifndef TTT_HAVE_CUDA

TEST(CudaKernels, SkippedWithoutCuda) { GTEST_SKIP() << "built without the CUDA toolkit (TTT_HAVE_CUDA unset)"; }

#else

namespace {

constexpr double kTol = 1e-4;
constexpr double kAdamTol = 1e-6;

std::vector<float> normal(Rng& r, int64_t n, double s) {
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& e : x) e = float(r.normal() * s);
  return x;
}
std::vector<float> uniform(Rng& r, int64_t n, double lo, double hi) {
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& e : x) e = float(r.uniform(lo, hi));
  return x;
}
ag::Mat<double> mat(const std::vector<float>& v, int64_t rows, int64_t cols) {
  ag::Mat<double> m(rows, cols);
  for (size_t i = 0; i < v.size(); ++i) m.data[i] = double(v[i]);
  return m;
}

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

// Device buffer helpers: upload a host vector; an output buffer filled with NaN.
template <class T>
cuda::DeviceBuffer up(const std::vector<T>& v) {
  cuda::DeviceBuffer b(std::max<size_t>(1, v.size() * sizeof(T)));
  if (!v.empty()) b.upload(v.data(), v.size() * sizeof(T));
  return b;
}
cuda::DeviceBuffer nan_buf(size_t bytes) {
  cuda::DeviceBuffer b(std::max<size_t>(1, bytes));
  b.fill_nan();
  return b;
}
template <class T>
std::vector<T> down(const cuda::DeviceBuffer& b, size_t n) {
  cuda::stream_synchronize();
  std::vector<T> v(n);
  if (n) b.download(v.data(), n * sizeof(T));
  return v;
}

struct Worst {
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

#define CHECK_ERR(worst, e, bound, label)                                                       \
  do {                                                                                          \
    const double e_ = (e);                                                                      \
    EXPECT_LE(e_, bound) << label << " (seed " << seed << "): relative error " << e_;           \
    worst.see(e_, label);                                                                       \
  } while (0)

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
  EXPECT_EQ(0, std::memcmp(dx.data(), dx2.data(), ND * 4)) << name << ": dx not bit-reproducible";
  EXPECT_EQ(0, std::memcmp(dw.data(), dw2.data(), size_t(D) * 4)) << name << ": dw not bit-reproducible";
  // Whole rows with the copy of x (the GPU model's residual): the same y and rinv bits, and x copied exactly.
  if (!per_head) {
    cuda::DeviceBuffer yc = nan_buf(ND * 4), rc = nan_buf(NG * 4), xc = nan_buf(ND * 4), yc16 = nan_buf(ND * 2),
                       y16 = nan_buf(ND * 2);
    cuda::rms_norm_forward_copy(xd.as<float>(), wd.as<float>(), yc.as<float>(), rc.as<float>(), xc.as<float>(), N, D,
                                eps);
    EXPECT_EQ(0, std::memcmp(y.data(), down<float>(yc, ND).data(), ND * 4)) << name << ": y with the copy differs";
    EXPECT_EQ(0, std::memcmp(rinv.data(), down<float>(rc, NG).data(), NG * 4))
        << name << ": rinv with the copy differs";
    EXPECT_EQ(0, std::memcmp(x.data(), down<float>(xc, ND).data(), ND * 4)) << name << ": the copy of x differs";
    cuda::rms_norm_forward(xd.as<float>(), wd.as<float>(), y16.as<bf16>(), rd.as<float>(), N, D, D, eps);
    cuda::rms_norm_forward_copy(xd.as<float>(), wd.as<float>(), yc16.as<bf16>(), rc.as<float>(), xc.as<float>(), N, D,
                                eps);
    const auto a16 = down<bf16>(y16, ND), b16 = down<bf16>(yc16, ND);
    for (size_t i = 0; i < ND; ++i) ASSERT_EQ(a16[i].bits, b16[i].bits) << name << ": bf16 y with the copy at " << i;
    EXPECT_EQ(0, std::memcmp(x.data(), down<float>(xc, ND).data(), ND * 4)) << name << ": the copy of x (bf16 y)";
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
      EXPECT_EQ(0, std::memcmp(y.data(), down<float>(yb, ND).data(), ND * 4)) << lay << ": y differs";
      EXPECT_EQ(0, std::memcmp(rinv.data(), down<float>(rb, NG).data(), NG * 4)) << lay << ": rinv differs";
      EXPECT_EQ(0, std::memcmp(dx.data(), down<float>(dxb, ND).data(), ND * 4)) << lay << ": dx differs";
      EXPECT_EQ(0, std::memcmp(dw.data(), down<float>(dwb, size_t(D)).data(), size_t(D) * 4)) << lay << ": dw differs";
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
  EXPECT_EQ(0, std::memcmp(dw.data(), down<float>(dwa, size_t(D)).data(), size_t(D) * 4)) << name << ": dw differs";
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

// ---- RoPE -------------------------------------------------------------------------------------------------------
TEST(CudaKernels, RopeMatchesCpu) {
  REQUIRE_CUDA();
  Worst worst{"rope"};
  struct C {
    int64_t N, heads, hd;
    double theta;
    int64_t max_pos;
  };
  for (const C c : std::vector<C>{{7, 2, 8, 1e4, 16}, {100, 4, 64, 1e4, 8192}, {64, 3, 130, 1e4, 100000},
                                  {256, 8, 128, 5e5, 32768}, {9, 1, 2, 10.0, 50}}) {
    const uint64_t seed = fresh_seed();
    Rng r(seed);
    const int64_t D = c.heads * c.hd;
    const std::string name = "rope N" + std::to_string(c.N) + " H" + std::to_string(c.heads) + " hd" +
                             std::to_string(c.hd) + " theta" + std::to_string(c.theta);
    const std::vector<float> x = normal(r, c.N * D, 1.0), dy = normal(r, c.N * D, 1.0);
    std::vector<int64_t> pos(size_t(c.N));
    for (auto& p : pos) p = int64_t(r.below(uint64_t(c.max_pos)));
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
    const auto yi = down<float>(xd, ND);
    EXPECT_EQ(0, std::memcmp(y.data(), yi.data(), ND * 4)) << name << ": in-place result differs";
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
      EXPECT_EQ(0, std::memcmp(y.data(), down<float>(ys, ND).data(), ND * 4)) << name << ": strided source differs";
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
      cuda::stream_synchronize();
      std::vector<bf16> got16(static_cast<size_t>(ND));
      y16.download(got16.data(), size_t(ND) * 2);
      for (int64_t e = 0; e < ND; ++e)
        ASSERT_EQ(float_to_bf16(y[size_t(e)]).bits, got16[size_t(e)].bits) << name << ": bf16 output at " << e;
    }
    ++worst.cases;
  }
}

// ---- memory q/k preparation (mk::qk_prep_forward / _backward) -------------------------------------------
// Against the formula in float64 on the host: z = x * scale + offset, a = silu(z), y = a / (||a|| + eps) per
// (row, head); the backward from dy: da = dy / (n + eps) - a <dy, a> / (n (n + eps)^2), dz = da silu'(z),
// dzx = dz x, dx += dz scale. Head widths on both walks of the kernels (cached in registers up to 512
// channels in the forward, recomputed beyond), a strided input (the q of [rows, 3D] qkv) and dx accumulated into a strided
// array.
TEST(CudaKernels, QkPrepMatchesFloat64) {
  REQUIRE_CUDA();
  Worst worst{"qk_prep"};
  for (const auto& [rows, H, d] : std::vector<std::array<int64_t, 3>>{{37, 3, 64}, {16, 2, 384}, {9, 2, 600}, {5, 1, 45}}) {
    const uint64_t seed = fresh_seed();
    Rng r(seed);
    const int64_t D = H * d, ld = 3 * D;
    const double eps = 1e-5;
    const std::string name = "qk_prep rows" + std::to_string(rows) + " H" + std::to_string(H) + " d" + std::to_string(d);
    const std::vector<float> x = normal(r, rows * ld, 1.0), scale = uniform(r, D, 0.5, 1.5),
                             offset = normal(r, D, 0.3), dy = normal(r, rows * D, 1.0), dx0 = normal(r, rows * ld, 1.0);
    std::vector<double> y_ref(size_t(rows * D)), n_ref(size_t(rows * H)), dz_ref(size_t(rows * D)),
        dzx_ref(size_t(rows * D));
    std::vector<double> dx_ref(dx0.begin(), dx0.end());
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t h = 0; h < H; ++h) {
        std::vector<double> z(static_cast<size_t>(d)), a(static_cast<size_t>(d));
        double ss = 0, dot = 0;
        for (int64_t j = 0; j < d; ++j) {
          const int64_t c = h * d + j;
          z[size_t(j)] = double(x[size_t(i * ld + c)]) * scale[size_t(c)] + offset[size_t(c)];
          a[size_t(j)] = z[size_t(j)] / (1 + std::exp(-z[size_t(j)]));
          ss += a[size_t(j)] * a[size_t(j)];
          dot += double(dy[size_t(i * D + c)]) * a[size_t(j)];
        }
        const double n = std::sqrt(ss);
        n_ref[size_t(i * H + h)] = n;
        for (int64_t j = 0; j < d; ++j) {
          const int64_t c = h * d + j;
          y_ref[size_t(i * D + c)] = a[size_t(j)] / (n + eps);
          const double da = dy[size_t(i * D + c)] / (n + eps) - a[size_t(j)] * dot / (n * (n + eps) * (n + eps));
          const double sg = 1 / (1 + std::exp(-z[size_t(j)]));
          const double dz = da * (sg + z[size_t(j)] * sg * (1 - sg));
          dz_ref[size_t(i * D + c)] = dz;
          dzx_ref[size_t(i * D + c)] = dz * x[size_t(i * ld + c)];
          dx_ref[size_t(i * ld + c)] += dz * scale[size_t(c)];
        }
      }
    cuda::DeviceBuffer xd = up(x), sd = up(scale), od = up(offset), dyd = up(dy), dxd = up(dx0);
    cuda::DeviceBuffer yd = nan_buf(size_t(rows * D) * 4), nd = nan_buf(size_t(rows * H) * 4),
                       dzd = nan_buf(size_t(rows * D) * 4), dzxd = nan_buf(size_t(rows * D) * 4);
    cuda::mk::qk_prep_forward(xd.as<float>(), ld, sd.as<float>(), od.as<float>(), yd.as<float>(), nd.as<float>(), rows,
                              H, d, eps);
    cuda::mk::qk_prep_backward(xd.as<float>(), ld, sd.as<float>(), od.as<float>(), nd.as<float>(), dyd.as<float>(),
                               dxd.as<float>(), ld, dzd.as<float>(), dzxd.as<float>(), rows, H, d, eps);
    CHECK_ERR(worst, rel_err(down<float>(yd, size_t(rows * D)), y_ref), kTol, name + " y");
    CHECK_ERR(worst, rel_err(down<float>(nd, size_t(rows * H)), n_ref), kTol, name + " norm");
    CHECK_ERR(worst, rel_err(down<float>(dzd, size_t(rows * D)), dz_ref), kTol, name + " dz");
    CHECK_ERR(worst, rel_err(down<float>(dzxd, size_t(rows * D)), dzx_ref), kTol, name + " dzx");
    CHECK_ERR(worst, rel_err(down<float>(dxd, size_t(rows * ld)), dx_ref), kTol, name + " dx");
    ++worst.cases;
  }
}

// ---- the fused q/k preparation (mk::qk_prep_forward_fused / _backward_fused) ----------------------------------
// Against the CPU model's ops on a float64 tape (src/model/memory_branch.cpp: silu(x * scale + offset), l2norm per
// head, RoPE over heads of `width` channels) in the memory operators' layout [S*H, N, d]; and bit for bit against
// the three GPU passes it replaces (qk_prep_forward, rope_forward in place, heads_to_batch; batch_to_heads,
// rope_backward in place, qk_prep_backward), which the GPU model ran before. Cases: RoPE per memory head (the 760m
// preset's 4 x 384 and the 87M configs' 12 x 64 in small), per narrower heads (ttt_rope_attn_heads), no RoPE, the
// register walk and the recomputing one (d > 512), odd d, several sequences; the fused kernels' team walk
// (mk::qk_prep_fused_team_lanes: teams of 8, 16 and 32 lanes, with and without prefetch) and their row-group walk.
TEST(CudaKernels, QkPrepFusedMatchesCpuAndUnfusedBits) {
  REQUIRE_CUDA();
  Worst worst{"qk_prep_fused"};
  struct C {
    int64_t S, N, H, d, width;
  };
  for (const C c : std::vector<C>{{1, 33, 4, 384, 384}, {2, 17, 4, 384, 64}, {3, 5, 3, 64, 0}, {2, 9, 2, 600, 600},
                                  {1, 7, 3, 46, 138}, {2, 11, 1, 30, 10}, {2, 13, 12, 64, 64}, {1, 9, 3, 128, 128},
                                  {2, 5, 2, 128, 64}, {1, 5, 1, 256, 0}, {1, 6, 2, 768, 128}}) {
    const uint64_t seed = fresh_seed();
    Rng r(seed);
    const int64_t rows = c.S * c.N, D = c.H * c.d, ld = 3 * D;
    const double eps = 1e-5, theta = 1e6;
    const std::string name = "qk_prep_fused S" + std::to_string(c.S) + " N" + std::to_string(c.N) + " H" +
                             std::to_string(c.H) + " d" + std::to_string(c.d) + " rope width" + std::to_string(c.width);
    const std::vector<float> x = normal(r, rows * ld, 1.0), scale = uniform(r, D, 0.5, 1.5),
                             offset = normal(r, D, 0.3), dyT = normal(r, rows * D, 1.0),
                             dx0 = normal(r, rows * ld, 1.0);
    std::vector<int64_t> pos(static_cast<size_t>(rows));
    for (auto& p : pos) p = int64_t(r.below(32768));
    // [rows, D] (row s*N + n, column h*d + j) <-> [S*H, N, d].
    auto batch_at = [&](int64_t row, int64_t col) {
      const int64_t s = row / c.N, n = row % c.N, h = col / c.d;
      return size_t(((s * c.H + h) * c.N + n) * c.d + col % c.d);
    };
    // The CPU reference on a float64 tape.
    std::vector<float> xq(size_t(rows * D));
    for (int64_t i = 0; i < rows; ++i) std::copy_n(x.begin() + i * ld, D, xq.begin() + i * D);
    ag::Tape<double> t;
    ag::Var xv = t.leaf(mat(xq, rows, D), true), sv = t.leaf(mat(scale, 1, D), true),
            ov = t.leaf(mat(offset, 1, D), true);
    ag::Var yv = nn::l2norm_heads(t, ag::silu(t, ag::add_row(t, ag::col_scale(t, xv, sv), ov)), c.H, eps);
    if (c.width > 0) yv = nn::rope(t, yv, D / c.width, pos, theta);
    std::vector<double> y_ref(size_t(rows * D)), dy(size_t(rows * D));
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < D; ++j) {
        y_ref[batch_at(i, j)] = t.val(yv).data[size_t(i * D + j)];
        dy[size_t(i * D + j)] = dyT[batch_at(i, j)];
      }
    t.grad(yv) = ag::Mat<double>(rows, D);
    t.grad(yv).data = dy;
    t.backward();
    std::vector<double> dx_ref(dx0.begin(), dx0.end());
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < D; ++j) dx_ref[size_t(i * ld + j)] += t.grad(xv).data[size_t(i * D + j)];
    // The GPU: fused, then the unfused passes.
    cuda::DeviceBuffer xd = up(x), sd = up(scale), od = up(offset), dyTd = up(dyT), pd = up(pos);
    const size_t ND = size_t(rows * D);
    cuda::DeviceBuffer yTd = nan_buf(ND * 4), nd = nan_buf(size_t(rows * c.H) * 4), dxd = up(dx0),
                       dzd = nan_buf(ND * 4), dzxd = nan_buf(ND * 4), dx16d = nan_buf(size_t(rows * ld) * 2);
    auto run_fused = [&] {
      cuda::mk::qk_prep_forward_fused(xd.as<float>(), ld, sd.as<float>(), od.as<float>(), pd.as<int64_t>(), theta,
                                      c.width, yTd.as<float>(), nd.as<float>(), c.S, c.N, c.H, c.d, eps);
      cuda::mk::qk_prep_backward_fused(xd.as<float>(), ld, sd.as<float>(), od.as<float>(), nd.as<float>(),
                                       pd.as<int64_t>(), theta, c.width, dyTd.as<float>(), dxd.as<float>(), ld,
                                       dx16d.as<bf16>(), dzd.as<float>(), dzxd.as<float>(), c.S, c.N, c.H, c.d, eps);
    };
    run_fused();
    const auto yT = down<float>(yTd, ND), norm = down<float>(nd, size_t(rows * c.H)),
               dx = down<float>(dxd, size_t(rows * ld)), dz = down<float>(dzd, ND), dzx = down<float>(dzxd, ND);
    CHECK_ERR(worst, rel_err(yT, y_ref), kTol, name + " y");
    CHECK_ERR(worst, rel_err(dx, dx_ref), kTol, name + " dx");
    // The bf16 copy of the updated dx (the GPU model's dqkv operand): the host's rounding of dx, bit for bit.
    {
      const auto dx16 = down<bf16>(dx16d, size_t(rows * ld));
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < D; ++j)
          ASSERT_EQ(float_to_bf16(dx[size_t(i * ld + j)]).bits, dx16[size_t(i * ld + j)].bits)
              << name << ": bf16 dx at row " << i << " column " << j;
    }
    // dz and dz * x are the offset's and the scale's gradients per row: their column sums.
    std::vector<double> doffset(size_t(D), 0.0), dscale(size_t(D), 0.0);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < D; ++j) {
        doffset[size_t(j)] += dz[size_t(i * D + j)];
        dscale[size_t(j)] += dzx[size_t(i * D + j)];
      }
    std::vector<float> doffset32(doffset.begin(), doffset.end()), dscale32(dscale.begin(), dscale.end());
    CHECK_ERR(worst, rel_err(doffset32, t.grad(ov).data), kTol, name + " d offset");
    CHECK_ERR(worst, rel_err(dscale32, t.grad(sv).data), kTol, name + " d scale");
    // Run to run: the same bits.
    dxd.upload(dx0.data(), size_t(rows * ld) * 4);
    run_fused();
    EXPECT_EQ(0, std::memcmp(yT.data(), down<float>(yTd, ND).data(), ND * 4)) << name << ": y differs run to run";
    EXPECT_EQ(0, std::memcmp(dx.data(), down<float>(dxd, size_t(rows * ld)).data(), size_t(rows * ld) * 4))
        << name << ": dx differs run to run";
    // The unfused passes give the same bits.
    cuda::DeviceBuffer yh = nan_buf(ND * 4), y2 = nan_buf(ND * 4), n2 = nan_buf(size_t(rows * c.H) * 4),
                       dyh = nan_buf(ND * 4), dx2 = up(dx0), dz2 = nan_buf(ND * 4), dzx2 = nan_buf(ND * 4);
    cuda::mk::qk_prep_forward(xd.as<float>(), ld, sd.as<float>(), od.as<float>(), yh.as<float>(), n2.as<float>(), rows,
                              c.H, c.d, eps);
    if (c.width > 0)
      cuda::rope_forward(yh.as<float>(), yh.as<float>(), pd.as<int64_t>(), rows, D / c.width, c.width, theta);
    cuda::mk::heads_to_batch(yh.as<float>(), D, y2.as<float>(), c.S, c.N, c.H, c.d);
    cuda::mk::batch_to_heads(dyTd.as<float>(), dyh.as<float>(), D, c.S, c.N, c.H, c.d, false);
    if (c.width > 0)
      cuda::rope_backward(dyh.as<float>(), dyh.as<float>(), pd.as<int64_t>(), rows, D / c.width, c.width, theta);
    cuda::mk::qk_prep_backward(xd.as<float>(), ld, sd.as<float>(), od.as<float>(), n2.as<float>(), dyh.as<float>(),
                               dx2.as<float>(), ld, dz2.as<float>(), dzx2.as<float>(), rows, c.H, c.d, eps);
    auto same = [&](const std::vector<float>& a, const cuda::DeviceBuffer& b, const char* what) {
      const auto v = down<float>(b, a.size());
      size_t first = a.size();
      for (size_t i = 0; i < a.size() && first == a.size(); ++i)
        if (std::memcmp(&a[i], &v[i], 4) != 0) first = i;
      EXPECT_EQ(first, a.size()) << name << ": " << what << " differs from the unfused passes, first at " << first
                                 << " (fused " << (first < a.size() ? a[first] : 0.f) << ", unfused "
                                 << (first < a.size() ? v[first] : 0.f) << ")";
    };
    same(yT, y2, "y");
    same(norm, n2, "norm");
    same(dx, dx2, "dx");
    same(dz, dz2, "dz");
    same(dzx, dzx2, "dzx");
    ++worst.cases;
  }
}

// Which walk the fused q/k kernels take (host logic, no GPU needed): the team walk at every preset's memory heads
// (64: tiny, titans, tnt and the 87M configs; 384: 760m; 768: 3b) with their own RoPE, the public model's RoPE
// over 64- or 128-wide attention heads, and none; the row-group walk elsewhere.
TEST(CudaKernels, QkPrepFusedTakesTheTeamWalkAtTheModelShapes) {
  EXPECT_EQ(cuda::mk::qk_prep_fused_team_lanes(64, 64), 8);
  EXPECT_EQ(cuda::mk::qk_prep_fused_team_lanes(64, 0), 8);
  EXPECT_EQ(cuda::mk::qk_prep_fused_team_lanes(128, 128), 16);
  EXPECT_EQ(cuda::mk::qk_prep_fused_team_lanes(128, 64), 16);
  EXPECT_EQ(cuda::mk::qk_prep_fused_team_lanes(256, 0), 32);
  EXPECT_EQ(cuda::mk::qk_prep_fused_team_lanes(384, 384), 32);
  EXPECT_EQ(cuda::mk::qk_prep_fused_team_lanes(384, 64), 32);
  EXPECT_EQ(cuda::mk::qk_prep_fused_team_lanes(768, 768), 32);
  EXPECT_EQ(cuda::mk::qk_prep_fused_team_lanes(768, 128), 32);
  // RoPE heads wider than a memory head, of other widths, or heads of other widths: the row groups.
  EXPECT_EQ(cuda::mk::qk_prep_fused_team_lanes(64, 128), 0);
  EXPECT_EQ(cuda::mk::qk_prep_fused_team_lanes(384, 96), 0);
  EXPECT_EQ(cuda::mk::qk_prep_fused_team_lanes(384, 192), 0);
  EXPECT_EQ(cuda::mk::qk_prep_fused_team_lanes(46, 138), 0);
  EXPECT_EQ(cuda::mk::qk_prep_fused_team_lanes(600, 600), 0);
  EXPECT_EQ(cuda::mk::qk_prep_fused_team_lanes(2400, 2400), 0);
  EXPECT_EQ(cuda::mk::qk_prep_fused_team_lanes(32, 0), 0);
}

// The fused kernels walk row groups (2 rows of 4 x 384 per 256-thread block, 1 row when H exceeds the block's 8
// warps, 5 rows of 2400) with as many blocks as are resident, and take RoPE's frequencies from a table of at most
// 1024 pairs. Shapes with more groups than an H200 holds blocks (132 SMs x 8), a partial last group, more heads
// than warps, no table (1200 pairs), no RoPE: every bit of y, norm, dx, its bf16 copy, dz and dz * x against the
// unfused passes (themselves checked against the CPU above), and run to run. The model's shapes take the team walk
// (a team of lanes per row, its heads in turn, the next item's loads in flight): the 87M configs' 12 x 64 with more
// rows than an H200's resident teams hold (several rows per team, a partial last warp), the 760m preset's 4 x 384
// with its own RoPE and the public model's 64-wide one, the 3b preset's 768 (no prefetch).
TEST(CudaKernels, QkPrepFusedRowGroupWalkKeepsTheUnfusedBits) {
  REQUIRE_CUDA();
  struct C {
    int64_t S, N, H, d, width;
  };
  for (const C c : std::vector<C>{{1, 3001, 4, 384, 384}, {2, 700, 12, 64, 128}, {1, 5303, 1, 2400, 2400},
                                  {3, 1201, 3, 64, 0}, {1, 20011, 12, 64, 64}, {2, 4001, 4, 384, 384},
                                  {1, 3001, 4, 384, 64}, {1, 2999, 2, 768, 768}}) {
    const uint64_t seed = fresh_seed();
    Rng r(seed);
    const int64_t rows = c.S * c.N, D = c.H * c.d, ld = 3 * D;
    const size_t ND = size_t(rows * D), NX = size_t(rows * ld);
    const double eps = 1e-5, theta = 1e6;
    const std::string name = "qk_prep_fused walk S" + std::to_string(c.S) + " N" + std::to_string(c.N) + " H" +
                             std::to_string(c.H) + " d" + std::to_string(c.d) + " rope width" +
                             std::to_string(c.width) + " seed " + std::to_string(seed);
    const std::vector<float> x = normal(r, rows * ld, 1.0), scale = uniform(r, D, 0.5, 1.5),
                             offset = normal(r, D, 0.3), dyT = normal(r, rows * D, 1.0),
                             dx0 = normal(r, rows * ld, 1.0);
    std::vector<int64_t> pos(static_cast<size_t>(rows));
    for (auto& p : pos) p = int64_t(r.below(32768));
    cuda::DeviceBuffer xd = up(x), sd = up(scale), od = up(offset), dyTd = up(dyT), pd = up(pos);
    cuda::DeviceBuffer yTd = nan_buf(ND * 4), nd = nan_buf(size_t(rows * c.H) * 4), dxd = up(dx0),
                       dzd = nan_buf(ND * 4), dzxd = nan_buf(ND * 4), dx16d = nan_buf(NX * 2);
    auto run_fused = [&] {
      dxd.upload(dx0.data(), NX * 4);
      cuda::mk::qk_prep_forward_fused(xd.as<float>(), ld, sd.as<float>(), od.as<float>(), pd.as<int64_t>(), theta,
                                      c.width, yTd.as<float>(), nd.as<float>(), c.S, c.N, c.H, c.d, eps);
      cuda::mk::qk_prep_backward_fused(xd.as<float>(), ld, sd.as<float>(), od.as<float>(), nd.as<float>(),
                                       pd.as<int64_t>(), theta, c.width, dyTd.as<float>(), dxd.as<float>(), ld,
                                       dx16d.as<bf16>(), dzd.as<float>(), dzxd.as<float>(), c.S, c.N, c.H, c.d, eps);
    };
    run_fused();
    const auto yT = down<float>(yTd, ND), norm = down<float>(nd, size_t(rows * c.H)), dx = down<float>(dxd, NX),
               dz = down<float>(dzd, ND), dzx = down<float>(dzxd, ND);
    const auto dx16 = down<bf16>(dx16d, NX);
    size_t bf16_wrong = 0, first_bf16_wrong = NX;
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < D; ++j) {
        const size_t at = size_t(i * ld + j);
        if (float_to_bf16(dx[at]).bits != dx16[at].bits && bf16_wrong++ == 0) first_bf16_wrong = at;
      }
    EXPECT_EQ(bf16_wrong, 0u) << name << ": bf16 dx differs from the rounding of dx, first at " << first_bf16_wrong;
    cuda::DeviceBuffer yh = nan_buf(ND * 4), y2 = nan_buf(ND * 4), n2 = nan_buf(size_t(rows * c.H) * 4),
                       dyh = nan_buf(ND * 4), dx2 = up(dx0), dz2 = nan_buf(ND * 4), dzx2 = nan_buf(ND * 4);
    cuda::mk::qk_prep_forward(xd.as<float>(), ld, sd.as<float>(), od.as<float>(), yh.as<float>(), n2.as<float>(), rows,
                              c.H, c.d, eps);
    if (c.width > 0)
      cuda::rope_forward(yh.as<float>(), yh.as<float>(), pd.as<int64_t>(), rows, D / c.width, c.width, theta);
    cuda::mk::heads_to_batch(yh.as<float>(), D, y2.as<float>(), c.S, c.N, c.H, c.d);
    cuda::mk::batch_to_heads(dyTd.as<float>(), dyh.as<float>(), D, c.S, c.N, c.H, c.d, false);
    if (c.width > 0)
      cuda::rope_backward(dyh.as<float>(), dyh.as<float>(), pd.as<int64_t>(), rows, D / c.width, c.width, theta);
    cuda::mk::qk_prep_backward(xd.as<float>(), ld, sd.as<float>(), od.as<float>(), n2.as<float>(), dyh.as<float>(),
                               dx2.as<float>(), ld, dz2.as<float>(), dzx2.as<float>(), rows, c.H, c.d, eps);
    // Every differing element counted, the first one printed.
    auto same = [&](const std::vector<float>& a, const std::vector<float>& v, const char* what) {
      size_t wrong = 0, first = a.size();
      for (size_t i = 0; i < a.size(); ++i)
        if (std::memcmp(&a[i], &v[i], 4) != 0 && wrong++ == 0) first = i;
      EXPECT_EQ(wrong, 0u) << name << ": " << what << " differs in " << wrong << " of " << a.size()
                           << " elements, first at " << first << " (this " << (first < a.size() ? a[first] : 0.f)
                           << ", want " << (first < a.size() ? v[first] : 0.f) << ")";
    };
    same(yT, down<float>(y2, ND), "y (fused against unfused)");
    same(norm, down<float>(n2, size_t(rows * c.H)), "norm (fused against unfused)");
    same(dx, down<float>(dx2, NX), "dx (fused against unfused)");
    same(dz, down<float>(dz2, ND), "dz (fused against unfused)");
    same(dzx, down<float>(dzx2, ND), "dzx (fused against unfused)");
    run_fused();
    same(yT, down<float>(yTd, ND), "y (run to run)");
    same(dx, down<float>(dxd, NX), "dx (run to run)");
    same(dz, down<float>(dzd, ND), "dz (run to run)");
    const int64_t lanes = cuda::mk::qk_prep_fused_team_lanes(c.d, c.width);
    std::printf("[qk_prep_fused walk] %s: %lld rows, %s, bits equal to the unfused passes: %s\n", name.c_str(),
                (long long)rows, lanes > 0 ? ("teams of " + std::to_string(lanes) + " lanes").c_str() : "row groups",
                ::testing::Test::HasFailure() ? "NO" : "yes");
  }
}

// ---- the branch sum (mk::gate_heads_add_forward) ---------------------------------------------------------------
// out = x * gate (per row and head) + addend: against float64 on the host, bit for bit against the two passes it
// replaces (gate_heads_forward, axpy), and its bf16 form bit for bit against the host's rounding of the fp32 one.
TEST(CudaKernels, GateHeadsAddMatchesFloat64AndTwoPassBits) {
  REQUIRE_CUDA();
  Worst worst{"gate_heads_add"};
  for (const auto& [rows, H, d] : std::vector<std::array<int64_t, 3>>{{37, 4, 384}, {5, 3, 7}, {1, 1, 1}}) {
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
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(0, std::memcmp(&got[size_t(i)], &want[size_t(i)], 4))
          << name << ": differs from gate_heads_forward + axpy at " << i << " (" << got[size_t(i)] << " vs "
          << want[size_t(i)] << ")";
      ASSERT_EQ(float_to_bf16(got[size_t(i)]).bits, got16[size_t(i)].bits) << name << ": bf16 output at " << i;
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

// ---- cross-entropy --------------------------------------------------------------------------------------------
TEST(CudaKernels, CrossEntropyMatchesCpu) {
  REQUIRE_CUDA();
  Worst worst{"cross_entropy"};
  struct C {
    int64_t N, V;
    double ignore_frac, scale;
  };
  for (const C c : std::vector<C>{{1, 5, 0.0, 1.0},
                                  {37, 1000, 0.2, 3.0},
                                  {128, 32000, 0.1, 5.0},
                                  {300, 257, 0.5, 10.0},
                                  {16, 100, 1.0, 1.0},  // every target ignored
                                  {2048, 50, 0.05, 2.0}}) {
    const uint64_t seed = fresh_seed();
    Rng r(seed);
    const std::string name = "cross_entropy N" + std::to_string(c.N) + " V" + std::to_string(c.V);
    const std::vector<float> logits = normal(r, c.N * c.V, c.scale);
    std::vector<int32_t> targets(size_t(c.N));
    for (auto& y : targets) y = r.uniform() < c.ignore_frac ? -1 - int32_t(r.below(3)) : int32_t(r.below(uint64_t(c.V)));
    const float dloss = float(r.uniform(0.2, 2.0));
    ag::Tape<double> t;
    ag::Var lv = t.leaf(mat(logits, c.N, c.V), true);
    std::vector<double> per_row;
    ag::Var loss = nn::cross_entropy(t, lv, targets, &per_row);
    t.grad(loss).data[0] = double(dloss);
    t.backward();
    std::vector<double> dref = t.has_grad(lv) ? t.grad(lv).data : std::vector<double>(size_t(c.N * c.V), 0.0);
    int32_t count = 0;
    for (int32_t y : targets) count += y >= 0;

    cuda::DeviceBuffer ld = up(logits), td = up(targets), dd = up(std::vector<float>{dloss});
    const size_t NV = size_t(c.N * c.V);
    cuda::DeviceBuffer lse = nan_buf(size_t(c.N) * 4), rl = nan_buf(size_t(c.N) * 4), lossd = nan_buf(4),
                       valid = nan_buf(4), dl = nan_buf(NV * 4);
    cuda::cross_entropy_forward(ld.as<float>(), td.as<int32_t>(), lse.as<float>(), rl.as<float>(), lossd.as<float>(),
                                valid.as<int32_t>(), c.N, c.V);
    cuda::cross_entropy_backward(ld.as<float>(), td.as<int32_t>(), lse.as<float>(), valid.as<int32_t>(),
                                 dd.as<float>(), dl.as<float>(), c.N, c.V);
    const auto lg = down<float>(lossd, 1), rows = down<float>(rl, size_t(c.N)), dlg = down<float>(dl, NV);
    const auto vg = down<int32_t>(valid, 1);
    EXPECT_EQ(vg[0], count) << name << ": valid rows";
    CHECK_ERR(worst, rel_err(lg, t.val(loss).data), kTol, name + " loss");
    CHECK_ERR(worst, rel_err(rows, per_row), kTol, name + " row_loss");
    CHECK_ERR(worst, rel_err(dlg, dref), kTol, name + " dlogits");
    // Bit-reproducible forward loss.
    cuda::DeviceBuffer loss2 = nan_buf(4);
    cuda::cross_entropy_forward(ld.as<float>(), td.as<int32_t>(), lse.as<float>(), nullptr, loss2.as<float>(),
                                valid.as<int32_t>(), c.N, c.V);
    const auto lg2 = down<float>(loss2, 1);
    EXPECT_EQ(0, std::memcmp(lg.data(), lg2.data(), 4)) << name << ": loss not bit-reproducible";
    // In place (dlogits = logits, as the GPU model runs it): the same bits as into a separate array.
    cuda::cross_entropy_backward(ld.as<float>(), td.as<int32_t>(), lse.as<float>(), valid.as<int32_t>(),
                                 dd.as<float>(), ld.as<float>(), c.N, c.V);
    const auto dlg_inplace = down<float>(ld, NV);
    EXPECT_EQ(0, std::memcmp(dlg.data(), dlg_inplace.data(), sizeof(float) * NV)) << name << ": in-place dlogits";
    // The bf16 gradient in place over the logits (bf16 products): row r's values at the start of its fp32 row, each
    // the fp32 gradient rounded to nearest even, bit for bit.
    ld.upload(logits.data(), NV * 4);
    cuda::cross_entropy_backward_bf16(ld.as<float>(), td.as<int32_t>(), lse.as<float>(), valid.as<int32_t>(),
                                      dd.as<float>(), c.N, c.V);
    const auto dl16 = down<bf16>(ld, 2 * NV);
    for (int64_t i = 0; i < c.N; ++i)
      for (int64_t j = 0; j < c.V; ++j)
        ASSERT_EQ(float_to_bf16(dlg[size_t(i * c.V + j)]).bits, dl16[size_t(i * 2 * c.V + j)].bits)
            << name << ": bf16 dlogits at row " << i << " column " << j;
    ++worst.cases;
  }
}

// ---- AdamW ------------------------------------------------------------------------------------------------------
TEST(CudaKernels, AdamWMatchesCpu) {
  REQUIRE_CUDA();
  Worst worst{"adamw"};
  int64_t bit_diffs = 0, compared = 0;
  for (int variant = 0; variant < 4; ++variant) {
    const bool decay = variant & 1, masked = variant & 2;
    const uint64_t seed = fresh_seed();
    Rng r(seed);
    const int64_t n = 1000 + int64_t(r.below(300000));
    const std::string name = std::string("adamw n") + std::to_string(n) + (decay ? " decay" : " no-decay") +
                             (masked ? " masked" : "");
    train::AdamWConfig cfg;
    cfg.beta1 = r.uniform(0.8, 0.95);
    cfg.beta2 = r.uniform(0.9, 0.999);
    cfg.eps = 1e-8;
    cfg.weight_decay = r.uniform(0.01, 0.2);
    const std::string pname = decay ? "lm_head.weight" : "blocks.0.attn_norm.weight";
    train::AdamW opt({pname}, {n}, cfg);
    ASSERT_EQ(opt.decayed(0), decay);
    std::vector<uint8_t> mask;
    if (masked) {
      mask.resize(size_t(n));
      for (auto& b : mask) b = r.uniform() < 0.7;
      opt.set_trainable({mask});
    }
    std::vector<ag::Mat<float>> params(1, ag::Mat<float>(1, n));
    const auto p0 = normal(r, n, 0.5);
    params[0].data = p0;
    cuda::DeviceBuffer pd = up(p0), md = up(std::vector<float>(size_t(n), 0.f)), vd = up(std::vector<float>(size_t(n), 0.f));
    cuda::DeviceBuffer maskd = up(mask);
    for (int step = 1; step <= 3; ++step) {
      const double lr = r.uniform(1e-4, 3e-2);
      std::vector<ag::Mat<float>> grads(1, ag::Mat<float>(1, n));
      grads[0].data = normal(r, n, r.uniform(0.01, 2.0));
      opt.step(params, grads, lr);
      cuda::DeviceBuffer gd = up(grads[0].data);
      cuda::AdamWParams a;
      a.lr = lr;
      a.beta1 = cfg.beta1;
      a.beta2 = cfg.beta2;
      a.eps = cfg.eps;
      a.weight_decay = cfg.weight_decay;
      a.step = step;
      a.decay = decay;
      cuda::adamw_step(pd.as<float>(), gd.as<float>(), md.as<float>(), vd.as<float>(),
                       masked ? maskd.as<uint8_t>() : nullptr, n, a);
    }
    const auto p = down<float>(pd, size_t(n)), m = down<float>(md, size_t(n)), v = down<float>(vd, size_t(n));
    CHECK_ERR(worst, rel_err(p, params[0].data), kAdamTol, name + " p");
    CHECK_ERR(worst, rel_err(m, opt.m()[0]), kAdamTol, name + " m");
    CHECK_ERR(worst, rel_err(v, opt.v()[0]), kAdamTol, name + " v");
    for (int64_t j = 0; j < n; ++j) {
      bit_diffs += std::memcmp(&p[size_t(j)], &params[0].data[size_t(j)], 4) != 0;
      if (masked && !mask[size_t(j)])
        EXPECT_EQ(0, std::memcmp(&p[size_t(j)], &p0[size_t(j)], 4)) << name << ": frozen element " << j << " moved";
    }
    compared += n;
    ++worst.cases;
  }
  std::printf("[kernel summary] adamw           %lld of %lld parameters differ bitwise from the CPU after 3 steps\n",
              (long long)bit_diffs, (long long)compared);
}

// ---- float -> bf16 (mk::to_bf16: the backend's one conversion) ---------------------------------------------------
// Every walk of the one conversion kernel (contiguous with 16-byte loads, contiguous from an unaligned address,
// one block with leading dimensions, strided batches into packed or strided destinations) gives the host's
// round-to-nearest-even (core/dtype.h) bit for bit, ties and infinities included, and writes nothing outside the
// elements it converts (the destination starts as all-ones bits).
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
  auto bits_equal = [](const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
  };
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
    EXPECT_TRUE(bits_equal(down<float>(dd, want.size()), want));
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
    const std::vector<float> y = down<float>(yd, y_want.size());
    EXPECT_TRUE(bits_equal(y, y_want)) << "heads_to_batch";
    // batch_to_heads accumulating y into x: every head column gets x + y; the columns beyond H*d stay.
    std::vector<float> x_want = x;
    for (int64_t s = 0; s < S; ++s)
      for (int64_t i = 0; i < N; ++i)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t j = 0; j < d; ++j)
            x_want[size_t((s * N + i) * ld + h * d + j)] += y_want[size_t(((s * H + h) * N + i) * d + j)];
    cuda::mk::batch_to_heads(yd.as<float>(), xd.as<float>(), ld, S, N, H, d, /*accumulate=*/true);
    EXPECT_TRUE(bits_equal(down<float>(xd, x_want.size()), x_want)) << "batch_to_heads, accumulate";
  }
}

// ---- the fused q/k preparation at a model's shape: times (nothing asserted on them) ------------------------------
// T rows of H memory heads of d channels (RoPE per memory head, positions 0..T-1, theta 1e6): each fused call against
// the passes it replaced in the GPU model, median of 5 CUDA-event timings, with its compulsory bytes (forward: x in,
// y out, 8 bytes per element; backward: x, d(y), dx in, dx, its bf16 copy, dz, dz x out, 26) at that time.
static void time_qk_prep_fused(const char* shape, int64_t T, int64_t H, int64_t d, uint64_t seed) {
  const int64_t D = H * d, TD = T * D;
  auto median_ms = [](const std::function<void()>& f) {
    f();
    std::vector<double> t;
    for (int i = 0; i < 5; ++i) t.push_back(cuda::elapsed_ms(f));
    std::sort(t.begin(), t.end());
    return t[2];
  };
  auto report = [&](const char* what, double fused_ms, double fused_bytes, double old_ms) {
    std::printf("[fused %s] %-34s fused %7.3f ms (%5.2f TB/s of %6.3f GB)  replaced passes %7.3f ms  saved %7.3f ms\n",
                shape, what, fused_ms, fused_bytes / fused_ms * 1e-9, fused_bytes * 1e-9, old_ms, old_ms - fused_ms);
  };
  std::printf("[fused %s] q/k preparation: %lld rows, %lld heads of %lld, %s\n", shape, (long long)T, (long long)H,
              (long long)d,
              cuda::mk::qk_prep_fused_team_lanes(d, d) > 0
                  ? ("teams of " + std::to_string(cuda::mk::qk_prep_fused_team_lanes(d, d)) + " lanes").c_str()
                  : "row groups");
  cuda::DeviceBuffer qkv(size_t(T * 3 * D) * 4), dqkv(size_t(T * 3 * D) * 4), sc(size_t(D) * 4), of(size_t(D) * 4),
      yT(size_t(TD) * 4), yh(size_t(TD) * 4), nrm(size_t(T * H) * 4), dz(size_t(TD) * 4), dzx(size_t(TD) * 4),
      g16(size_t(T * 3 * D) * 2), posd(size_t(T) * 8);
  qkv.fill_random<float>(T * 3 * D, seed, 0, 1.0, true);
  dqkv.fill_random<float>(T * 3 * D, seed + 1, 0, 1.0, true);
  sc.fill_random<float>(D, seed + 2, 0.5, 1.5, false);
  of.fill_random<float>(D, seed + 3, 0, 0.3, true);
  yT.fill_random<float>(TD, seed + 4, 0, 1.0, true);
  std::vector<int64_t> pos(static_cast<size_t>(T));
  for (int64_t i = 0; i < T; ++i) pos[size_t(i)] = i;
  posd.upload(pos.data(), pos.size() * 8);
  const float* q = qkv.as<float>();
  const int64_t* p = posd.as<int64_t>();
  {  // q/k preparation forward: one fused pass against prep, RoPE in place, heads_to_batch.
    const double fused = median_ms([&] {
      cuda::mk::qk_prep_forward_fused(q, 3 * D, sc.as<float>(), of.as<float>(), p, 1e6, d, yT.as<float>(),
                                      nrm.as<float>(), 1, T, H, d, 1e-5);
    });
    const double old = median_ms([&] {
      cuda::mk::qk_prep_forward(q, 3 * D, sc.as<float>(), of.as<float>(), yh.as<float>(), nrm.as<float>(), T, H, d,
                                1e-5);
      cuda::rope_forward(yh.as<float>(), yh.as<float>(), p, T, H, d, 1e6);
      cuda::mk::heads_to_batch(yh.as<float>(), D, yT.as<float>(), 1, T, H, d);
    });
    report("q/k preparation forward", fused, 8.0 * TD, old);
  }
  {  // Its backward: one fused pass against batch_to_heads, RoPE's adjoint in place, the prep's adjoint.
    const double fused = median_ms([&] {
      cuda::mk::qk_prep_backward_fused(q, 3 * D, sc.as<float>(), of.as<float>(), nrm.as<float>(), p, 1e6, d,
                                       yT.as<float>(), dqkv.as<float>(), 3 * D, g16.as<bf16>(), dz.as<float>(),
                                       dzx.as<float>(), 1, T, H, d, 1e-5);
    });
    const double old = median_ms([&] {
      cuda::mk::batch_to_heads(yT.as<float>(), yh.as<float>(), D, 1, T, H, d, false);
      cuda::rope_backward(yh.as<float>(), yh.as<float>(), p, T, H, d, 1e6);
      cuda::mk::qk_prep_backward(q, 3 * D, sc.as<float>(), of.as<float>(), nrm.as<float>(), yh.as<float>(),
                                 dqkv.as<float>(), 3 * D, dz.as<float>(), dzx.as<float>(), T, H, d, 1e-5);
    });
    report("q/k preparation backward", fused, 26.0 * TD, old);
  }
}

// The 87M configs' memory branch (D 768, 12 memory heads of 64, RoPE per head; batch 4 x 8192 = 32768 rows).
TEST(CudaKernels, FusedQkPrepShape87mTimes) {
  REQUIRE_CUDA();
  time_qk_prep_fused("87M", 32768, 12, 64, fresh_seed());
}

// ---- issue 12's fused passes at the 760m shape: times (nothing asserted on them) --------------------------------
// T = 32768 rows, D = 1536, memory heads 4 x 384 (RoPE per memory head), F = 4608, V = 32000. Each fused call against
// the passes it replaced in the GPU model, median of 5 CUDA-event timings, with the bytes each moves at that time.
// Their bits are checked by the tests above; this one prints what one call costs.
TEST(CudaKernels, FusedPassesShape760mTimes) {
  REQUIRE_CUDA();
  const int64_t T = 32768, D = 1536, H = 4, d = 384, V = 32000, TD = T * D;
  const uint64_t seed = fresh_seed();
  auto median_ms = [](const std::function<void()>& f) {
    f();
    std::vector<double> t;
    for (int i = 0; i < 5; ++i) t.push_back(cuda::elapsed_ms(f));
    std::sort(t.begin(), t.end());
    return t[2];
  };
  auto report = [](const char* what, double fused_ms, double fused_bytes, double old_ms) {
    std::printf("[fused 760m] %-34s fused %7.3f ms (%5.2f TB/s of %6.3f GB)  replaced passes %7.3f ms  saved %7.3f ms\n",
                what, fused_ms, fused_bytes / fused_ms * 1e-9, fused_bytes * 1e-9, old_ms, old_ms - fused_ms);
  };
  time_qk_prep_fused("760m", T, H, d, seed);  // the q/k preparation forward and backward
  cuda::DeviceBuffer yh(size_t(TD) * 4), g16(size_t(T * 3 * D) * 2);
  yh.fill_random<float>(TD, seed + 13, 0, 1.0, true);
  {  // The branch sum in bf16: one pass against gate, axpy, conversion.
    cuda::DeviceBuffer gate(size_t(T * H) * 4), attn(size_t(TD) * 4), sum(size_t(TD) * 4), sum16(size_t(TD) * 2);
    gate.fill_random<float>(T * H, seed + 5, 0, 1.0, true);
    attn.fill_random<float>(TD, seed + 6, 0, 1.0, true);
    const double fused = median_ms([&] {
      cuda::mk::gate_heads_add_forward(yh.as<float>(), gate.as<float>(), attn.as<float>(), sum16.as<bf16>(), T, H, d);
    });
    const double old = median_ms([&] {
      cuda::mk::gate_heads_forward(yh.as<float>(), gate.as<float>(), sum.as<float>(), T, H, d);
      cuda::mk::axpy(sum.as<float>(), attn.as<float>(), 1.0f, TD);
      cuda::mk::to_bf16(sum.as<float>(), D, sum16.as<bf16>(), D, T, D);
    });
    report("branch sum (bf16)", fused, 10.0 * TD, old);
  }
  {  // The RMSNorm backward adding the residual with its bf16 copy, against norm, copy, axpy, conversion.
    cuda::DeviceBuffer x(size_t(TD) * 4), w(size_t(D) * 4), rinv(size_t(T) * 4), dy(size_t(TD) * 4),
        res(size_t(TD) * 4), dx(size_t(TD) * 4), tmp(size_t(TD) * 4), dw(size_t(D) * 4),
        work(cuda::rms_norm_backward_workspace(T, D));
    x.fill_random<float>(TD, seed + 7, 0, 1.0, true);
    w.fill_random<float>(D, seed + 8, 0.5, 1.5, false);
    dy.fill_random<float>(TD, seed + 9, 0, 1.0, true);
    res.fill_random<float>(TD, seed + 10, 0, 1.0, true);
    cuda::rms_norm_forward(x.as<float>(), w.as<float>(), yh.as<float>(), rinv.as<float>(), T, D, D, 1e-6);
    const double fused = median_ms([&] {
      cuda::rms_norm_backward_add(x.as<float>(), w.as<float>(), rinv.as<float>(), dy.as<float>(), res.as<float>(),
                                  dx.as<float>(), g16.as<bf16>(), dw.as<float>(), work.as<void>(), T, D, D);
    });
    const double old = median_ms([&] {
      cuda::rms_norm_backward(x.as<float>(), w.as<float>(), rinv.as<float>(), dy.as<float>(), tmp.as<float>(),
                              dw.as<float>(), work.as<void>(), T, D, D);
      cuda::mk::copy2d(res.as<float>(), D, dx.as<float>(), D, T, D);
      cuda::mk::axpy(dx.as<float>(), tmp.as<float>(), 1.0f, TD);
      cuda::mk::to_bf16(dx.as<float>(), g16.as<bf16>(), TD);
    });
    report("RMSNorm backward + residual + bf16", fused, 26.0 * TD, old);
  }
  {  // The LM head's gradient: the bf16 one in place, against the fp32 one and Blas's two conversions of it.
    const size_t TV = size_t(T * V);
    cuda::DeviceBuffer logits(TV * 4), lse(size_t(T) * 4), loss(4), valid(4), tgt(size_t(T) * 4), g16v(TV * 2);
    std::vector<int32_t> targets(static_cast<size_t>(T));
    Rng r(seed + 11);
    for (auto& y : targets) y = int32_t(r.below(uint64_t(V)));
    tgt.upload(targets.data(), targets.size() * 4);
    auto refill = [&] { logits.fill_random<float>(int64_t(TV), seed + 12, 0, 2.0, true); };
    refill();
    const double fwd = median_ms([&] {
      cuda::cross_entropy_forward(logits.as<float>(), tgt.as<int32_t>(), lse.as<float>(), nullptr, loss.as<float>(),
                                  valid.as<int32_t>(), T, V);
    });
    std::printf("[fused 760m] %-34s %7.3f ms (%5.2f TB/s for two reads of %.3f GB)\n", "cross-entropy forward", fwd,
                2.0 * 4 * double(TV) / fwd * 1e-9, 4 * double(TV) * 1e-9);
    // Each timed call overwrites the logits: time one call per fresh fill, fill outside the timing.
    std::vector<double> tf, to;
    for (int i = 0; i < 3; ++i) {
      refill();
      tf.push_back(cuda::elapsed_ms([&] {
        cuda::cross_entropy_backward_bf16(logits.as<float>(), tgt.as<int32_t>(), lse.as<float>(), valid.as<int32_t>(),
                                          nullptr, T, V);
      }));
      refill();
      to.push_back(cuda::elapsed_ms([&] {
        cuda::cross_entropy_backward(logits.as<float>(), tgt.as<int32_t>(), lse.as<float>(), valid.as<int32_t>(),
                                     nullptr, logits.as<float>(), T, V);
        for (int k = 0; k < 2; ++k) cuda::mk::to_bf16(logits.as<float>(), g16v.as<bf16>(), int64_t(TV));
      }));
    }
    std::sort(tf.begin(), tf.end());
    std::sort(to.begin(), to.end());
    report("cross-entropy backward (bf16)", tf[1], 6.0 * double(TV), to[1]);
  }
  {  // AdamW over the embedding's 49M parameters (one of the step's launches), and the clipping's scale.
    const int64_t n = V * D;
    cuda::DeviceBuffer pp(size_t(n) * 4), gg(size_t(n) * 4), mm(size_t(n) * 4), vv(size_t(n) * 4);
    pp.fill_random<float>(n, seed + 13, 0, 1.0, true);
    gg.fill_random<float>(n, seed + 14, 0, 1.0, true);
    mm.fill_zero();
    vv.fill_zero();
    cuda::AdamWParams a;
    a.lr = 1e-4;
    a.beta1 = 0.9;
    a.beta2 = 0.95;
    a.eps = 1e-8;
    a.weight_decay = 0.1;
    a.step = 1;
    a.decay = true;
    const double adam = median_ms([&] {
      cuda::adamw_step(pp.as<float>(), gg.as<float>(), mm.as<float>(), vv.as<float>(), nullptr, n, a);
    });
    const double scale = median_ms([&] { cuda::mk::scale(gg.as<float>(), 0.999f, n); });
    std::printf("[fused 760m] %-34s %7.3f ms (%5.2f TB/s of %.3f GB); scale %.3f ms (%5.2f TB/s)\n",
                "AdamW, 49M parameters", adam, 28.0 * double(n) / adam * 1e-9, 28.0 * double(n) * 1e-9, scale,
                8.0 * double(n) / scale * 1e-9);
  }
}

#endif  // TTT_HAVE_CUDA
