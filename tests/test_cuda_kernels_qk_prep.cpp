// The memory branch's q/k preparation (memory_kernels.h: mk::qk_prep_forward / _backward against the formula in
// float64; the fused mk::qk_prep_forward_fused / _backward_fused against the CPU model's ops on a float64 tape and bit
// for bit against the unfused passes they replace, on both of their walks). Conventions: cuda_kernels_test_util.h.
#include <gtest/gtest.h>

#include "cuda_kernels_test_util.h"

#ifdef TTT_HAVE_CUDA
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "nn/layers.h"

using namespace ttt;
using namespace ttt::cuda_kernels_test;

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
namespace {

// S sequences of N rows, H heads of d channels, RoPE over heads of `width` channels (0: none).
struct QkShape {
  int64_t S, N, H, d, width;
};

// One case of the fused q/k preparation (theta 1e6, eps 1e-5) on fresh random inputs: q the columns [0, D) of x
// [rows, 3D] (the qkv), scale, offset, d(yT) in the operators' layout [S*H, N, d], dx0 [rows, 3D] (the gradient dx
// accumulates into), positions below 32768; on the device with NaN-filled outputs. Runs the fused kernels, or the
// unfused passes into buffers of their own.
struct QkPrepCase {
  static constexpr double kEps = 1e-5, kTheta = 1e6;
  // Every output of one run, downloaded.
  struct Outputs {
    std::vector<float> yT, norm, dx, dz, dzx;
  };

  QkShape c;
  int64_t rows, D, ld;
  size_t ND, NX;  // elements of y and of x
  std::vector<float> x, scale, offset, dyT, dx0;  // drawn in this order
  std::vector<int64_t> pos;
  cuda::DeviceBuffer xd, sd, od, dyTd, pd, yTd, nd, dxd, dzd, dzxd, dx16d;

  QkPrepCase(const QkShape& shape, Rng& r)
      : c(shape),
        rows(c.S * c.N),
        D(c.H * c.d),
        ld(3 * D),
        ND(size_t(rows * D)),
        NX(size_t(rows * ld)),
        x(normal(r, rows * ld, 1.0)),
        scale(uniform(r, D, 0.5, 1.5)),
        offset(normal(r, D, 0.3)),
        dyT(normal(r, rows * D, 1.0)),
        dx0(normal(r, rows * ld, 1.0)),
        pos(random_positions(r, rows, 32768)),
        xd(up(x)),
        sd(up(scale)),
        od(up(offset)),
        dyTd(up(dyT)),
        pd(up(pos)),
        yTd(nan_buf(ND * 4)),
        nd(nan_buf(size_t(rows * c.H) * 4)),
        dxd(up(dx0)),
        dzd(nan_buf(ND * 4)),
        dzxd(nan_buf(ND * 4)),
        dx16d(nan_buf(NX * 2)) {}

  // The fused forward and backward, dx accumulated from dx0.
  void run_fused() {
    dxd.upload(dx0.data(), NX * 4);
    cuda::mk::qk_prep_forward_fused(xd.as<float>(), ld, sd.as<float>(), od.as<float>(), pd.as<int64_t>(), kTheta,
                                    c.width, yTd.as<float>(), nd.as<float>(), c.S, c.N, c.H, c.d, kEps);
    cuda::mk::qk_prep_backward_fused(xd.as<float>(), ld, sd.as<float>(), od.as<float>(), nd.as<float>(),
                                     pd.as<int64_t>(), kTheta, c.width, dyTd.as<float>(), dxd.as<float>(), ld,
                                     dx16d.as<bf16>(), dzd.as<float>(), dzxd.as<float>(), c.S, c.N, c.H, c.d, kEps);
  }
  Outputs fused_outputs() const {
    return {down<float>(yTd, ND), down<float>(nd, size_t(rows * c.H)), down<float>(dxd, NX), down<float>(dzd, ND),
            down<float>(dzxd, ND)};
  }
  // The bf16 copy of the fused backward's dx.
  std::vector<bf16> fused_dx16() const { return down<bf16>(dx16d, NX); }

  // The unfused passes on the same inputs, dx accumulated from dx0.
  Outputs run_unfused() const {
    cuda::DeviceBuffer yh = nan_buf(ND * 4), y2 = nan_buf(ND * 4), n2 = nan_buf(size_t(rows * c.H) * 4),
                       dyh = nan_buf(ND * 4), dx2 = up(dx0), dz2 = nan_buf(ND * 4), dzx2 = nan_buf(ND * 4);
    qk_prep_unfused_forward(xd.as<float>(), ld, sd.as<float>(), od.as<float>(), pd.as<int64_t>(), kTheta, c.width,
                            yh.as<float>(), y2.as<float>(), n2.as<float>(), c.S, c.N, c.H, c.d, kEps);
    qk_prep_unfused_backward(xd.as<float>(), ld, sd.as<float>(), od.as<float>(), n2.as<float>(), pd.as<int64_t>(),
                             kTheta, c.width, dyTd.as<float>(), dyh.as<float>(), dx2.as<float>(), ld, dz2.as<float>(),
                             dzx2.as<float>(), c.S, c.N, c.H, c.d, kEps);
    return {down<float>(y2, ND), down<float>(n2, size_t(rows * c.H)), down<float>(dx2, NX), down<float>(dz2, ND),
            down<float>(dzx2, ND)};
  }
};

// Expects the bits of `want` in every output of `got`.
void expect_same_outputs(const QkPrepCase::Outputs& got, const QkPrepCase::Outputs& want, const std::string& what) {
  expect_same_bits(got.yT, want.yT, what + ", y");
  expect_same_bits(got.norm, want.norm, what + ", norm");
  expect_same_bits(got.dx, want.dx, what + ", dx");
  expect_same_bits(got.dz, want.dz, what + ", dz");
  expect_same_bits(got.dzx, want.dzx, what + ", dzx");
}

std::string shape_name(const char* what, const QkShape& c) {
  return std::string(what) + " S" + std::to_string(c.S) + " N" + std::to_string(c.N) + " H" + std::to_string(c.H) +
         " d" + std::to_string(c.d) + " rope width" + std::to_string(c.width);
}

}  // namespace

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
  for (const QkShape c : std::vector<QkShape>{{1, 33, 4, 384, 384}, {2, 17, 4, 384, 64}, {3, 5, 3, 64, 0},
                                              {2, 9, 2, 600, 600}, {1, 7, 3, 46, 138}, {2, 11, 1, 30, 10},
                                              {2, 13, 12, 64, 64}, {1, 9, 3, 128, 128}, {2, 5, 2, 128, 64},
                                              {1, 5, 1, 256, 0}, {1, 6, 2, 768, 128}}) {
    const uint64_t seed = fresh_seed();
    Rng r(seed);
    const std::string name = shape_name("qk_prep_fused", c);
    QkPrepCase q(c, r);
    const int64_t rows = q.rows, D = q.D, ld = q.ld;
    // [rows, D] (row s*N + n, column h*d + j) <-> [S*H, N, d].
    auto batch_at = [&](int64_t row, int64_t col) {
      const int64_t s = row / c.N, n = row % c.N, h = col / c.d;
      return size_t(((s * c.H + h) * c.N + n) * c.d + col % c.d);
    };
    // The CPU reference on a float64 tape.
    std::vector<float> xq(size_t(rows * D));
    for (int64_t i = 0; i < rows; ++i) std::copy_n(q.x.begin() + i * ld, D, xq.begin() + i * D);
    ag::Tape<double> t;
    ag::Var xv = t.leaf(mat(xq, rows, D), true), sv = t.leaf(mat(q.scale, 1, D), true),
            ov = t.leaf(mat(q.offset, 1, D), true);
    ag::Var yv = nn::l2norm_heads(t, ag::silu(t, ag::add_row(t, ag::col_scale(t, xv, sv), ov)), c.H, q.kEps);
    if (c.width > 0) yv = nn::rope(t, yv, D / c.width, q.pos, q.kTheta);
    std::vector<double> y_ref(size_t(rows * D)), dy(size_t(rows * D));
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < D; ++j) {
        y_ref[batch_at(i, j)] = t.val(yv).data[size_t(i * D + j)];
        dy[size_t(i * D + j)] = q.dyT[batch_at(i, j)];
      }
    t.grad(yv) = ag::Mat<double>(rows, D);
    t.grad(yv).data = dy;
    t.backward();
    std::vector<double> dx_ref(q.dx0.begin(), q.dx0.end());
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < D; ++j) dx_ref[size_t(i * ld + j)] += t.grad(xv).data[size_t(i * D + j)];
    // The GPU: fused, then the unfused passes.
    q.run_fused();
    const QkPrepCase::Outputs fused = q.fused_outputs();
    CHECK_ERR(worst, rel_err(fused.yT, y_ref), kTol, name + " y");
    CHECK_ERR(worst, rel_err(fused.dx, dx_ref), kTol, name + " dx");
    // The bf16 copy of the updated dx (the GPU model's dqkv operand): the host's rounding of dx, bit for bit.
    const BitDiff diff16 = bf16_rounding_diff(fused.dx, ld, q.fused_dx16(), ld, rows, D);
    ASSERT_EQ(diff16.count, 0u) << name << ": bf16 dx differs from the rounding of dx in " << diff16.count
                                << " elements, first at row " << diff16.first / size_t(D) << " column "
                                << diff16.first % size_t(D);
    // dz and dz * x are the offset's and the scale's gradients per row: their column sums.
    std::vector<double> doffset(size_t(D), 0.0), dscale(size_t(D), 0.0);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < D; ++j) {
        doffset[size_t(j)] += fused.dz[size_t(i * D + j)];
        dscale[size_t(j)] += fused.dzx[size_t(i * D + j)];
      }
    std::vector<float> doffset32(doffset.begin(), doffset.end()), dscale32(dscale.begin(), dscale.end());
    CHECK_ERR(worst, rel_err(doffset32, t.grad(ov).data), kTol, name + " d offset");
    CHECK_ERR(worst, rel_err(dscale32, t.grad(sv).data), kTol, name + " d scale");
    // Run to run: the same bits.
    q.run_fused();
    expect_same_bits(down<float>(q.yTd, q.ND), fused.yT, name + ": y run to run");
    expect_same_bits(down<float>(q.dxd, q.NX), fused.dx, name + ": dx run to run");
    // The unfused passes give the same bits.
    const QkPrepCase::Outputs unfused = q.run_unfused();
    expect_same_outputs(fused, unfused, name + ": fused against unfused");
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
  for (const QkShape c : std::vector<QkShape>{{1, 3001, 4, 384, 384}, {2, 700, 12, 64, 128}, {1, 5303, 1, 2400, 2400},
                                              {3, 1201, 3, 64, 0}, {1, 20011, 12, 64, 64}, {2, 4001, 4, 384, 384},
                                              {1, 3001, 4, 384, 64}, {1, 2999, 2, 768, 768}}) {
    const uint64_t seed = fresh_seed();
    Rng r(seed);
    const std::string name = shape_name("qk_prep_fused walk", c) + " seed " + std::to_string(seed);
    QkPrepCase q(c, r);
    q.run_fused();
    const QkPrepCase::Outputs fused = q.fused_outputs();
    const BitDiff diff16 = bf16_rounding_diff(fused.dx, q.ld, q.fused_dx16(), q.ld, q.rows, q.D);
    EXPECT_EQ(diff16.count, 0u) << name << ": bf16 dx differs from the rounding of dx in " << diff16.count
                                << " elements, first at row " << diff16.first / size_t(q.D) << " column "
                                << diff16.first % size_t(q.D);
    const QkPrepCase::Outputs unfused = q.run_unfused();
    expect_same_outputs(fused, unfused, name + ": fused against unfused");
    q.run_fused();
    const QkPrepCase::Outputs again = q.fused_outputs();
    expect_same_bits(again.yT, fused.yT, name + ": y (run to run)");
    expect_same_bits(again.dx, fused.dx, name + ": dx (run to run)");
    expect_same_bits(again.dz, fused.dz, name + ": dz (run to run)");
    const int64_t lanes = cuda::mk::qk_prep_fused_team_lanes(c.d, c.width);
    std::printf("[qk_prep_fused walk] %s: %lld rows, %s, bits equal to the unfused passes: %s\n", name.c_str(),
                (long long)q.rows, lanes > 0 ? ("teams of " + std::to_string(lanes) + " lanes").c_str() : "row groups",
                ::testing::Test::HasFailure() ? "NO" : "yes");
  }
}

#endif  // TTT_HAVE_CUDA
