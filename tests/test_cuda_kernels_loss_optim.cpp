// The loss and the optimizer: softmax cross-entropy (loss_kernels.h) against nn::cross_entropy on a float64 tape, its
// in-place and bf16 gradients bit for bit against the plain one; AdamW (optimizer_kernels.h) against the CPU optimizer
// (src/train/optimizer.cpp) after 3 steps, within kAdamTol relative. Conventions: cuda_kernels_test_util.h.
#include <gtest/gtest.h>

#include "cuda_kernels_test_util.h"

#ifdef TTT_HAVE_CUDA
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "nn/layers.h"
#include "train/optimizer.h"

using namespace ttt;
using namespace ttt::cuda_kernels_test;

namespace {
constexpr double kAdamTol = 1e-6;
}  // namespace

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
    expect_same_bits(down<float>(loss2, 1), lg, name + ": loss run again (not bit-reproducible)");
    // In place (dlogits = logits, as the GPU model runs it): the same bits as into a separate array.
    cuda::cross_entropy_backward(ld.as<float>(), td.as<int32_t>(), lse.as<float>(), valid.as<int32_t>(),
                                 dd.as<float>(), ld.as<float>(), c.N, c.V);
    expect_same_bits(down<float>(ld, NV), dlg, name + ": in-place dlogits");
    // The bf16 gradient in place over the logits (bf16 products): row r's values at the start of its fp32 row, each
    // the fp32 gradient rounded to nearest even, bit for bit.
    ld.upload(logits.data(), NV * 4);
    cuda::cross_entropy_backward_bf16(ld.as<float>(), td.as<int32_t>(), lse.as<float>(), valid.as<int32_t>(),
                                      dd.as<float>(), c.N, c.V);
    const BitDiff diff16 = bf16_rounding_diff(dlg, c.V, down<bf16>(ld, 2 * NV), 2 * c.V, c.N, c.V);
    ASSERT_EQ(diff16.count, 0u) << name << ": bf16 dlogits differ from the rounding of the fp32 ones in "
                                << diff16.count << " elements, first at row " << diff16.first / size_t(c.V)
                                << " column " << diff16.first % size_t(c.V);
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
      if (masked && !mask[size_t(j)]) {
        EXPECT_EQ(0, std::memcmp(&p[size_t(j)], &p0[size_t(j)], 4)) << name << ": frozen element " << j << " moved";
      }
    }
    compared += n;
    ++worst.cases;
  }
  std::printf("[kernel summary] adamw           %lld of %lld parameters differ bitwise from the CPU after 3 steps\n",
              (long long)bit_diffs, (long long)compared);
}

#endif  // TTT_HAVE_CUDA
