// The CUDA sliding-window attention at the 760m preset's shape (T 32768, 24 heads of 64, window 2048): each kernel
// timed (CUDA events, median of 5) beside the others, with float64 spot checks of sampled rows and the same checks
// of agreement and bits as test_cuda_attention.cpp (whose top comment says what they are). Asserts nothing on time;
// without CUDA in the build this file holds no test (test_cuda_attention.cpp says why they skip).
#include "cuda_attention_test_util.h"

using namespace ttt;

#ifdef TTT_HAVE_CUDA

using namespace ttt::cuda_attention_test;

// The 760m preset's attention (one sequence of 32768 tokens, 24 heads of 64, window 2048) on a fused qkv buffer:
// median time of 5 forward and 5 backward runs, and float64 spot checks of o, lse and dq on sampled rows and of
// dk, dv on two keys.
// fp32 timings of the last shape760m(kFp32) run, printed beside the bf16 ones.
double g_fp32_fwd_ms = 0, g_fp32_bwd_ms = 0, g_bf16_fwd_ms = 0, g_bf16_bwd_ms = 0;

void shape760m(const Impl& impl) {
  Inputs760m in;
  const cuda::AttentionShape& s = in.s;
  const int64_t D = in.D, rows = in.rows, ld = in.ld;
  const uint64_t seed = in.seed;
  cuda::DeviceBuffer &qkv = in.qkv, &dO = in.dO;
  cuda::DeviceBuffer o = nan_buf(size_t(rows * D)), lse = nan_buf(size_t(rows * s.heads)),
                     g = nan_buf(size_t(rows * ld)), work = nan_buf(cuda::swa_backward_workspace(s) / 4);
  const float* q = qkv.as<float>();
  float* gp = g.as<float>();
  // bf16 inputs: converted once, outside the timed calls (the model's RoPE writes them).
  Bf16Twin qkv16;
  cuda::DeviceBuffer work16;
  if (impl.bf16_inputs) {
    qkv16 = bf16_twin(q, ld, rows, ld);
    work16 = cuda::DeviceBuffer(cuda::swa_backward_bf16_workspace(s));
  }
  const bf16* q16 = qkv16.p();
  const auto fwd = [&] {
    if (impl.bf16_inputs)
      cuda::swa_forward_bf16(s, q16, ld, q16 + D, ld, q16 + 2 * D, ld, o.as<float>(), D, lse.as<float>(), nullptr);
    else
      impl.fwd(s, q, ld, q + D, ld, q + 2 * D, ld, o.as<float>(), D, lse.as<float>(), nullptr);
  };
  const auto bwd = [&] {
    if (impl.bf16_inputs)
      cuda::swa_backward_bf16(s, q16, ld, q16 + D, ld, q16 + 2 * D, ld, o.as<float>(), D, lse.as<float>(),
                              dO.as<float>(), D, gp, ld, gp + D, ld, gp + 2 * D, ld, work16.as<void>(), nullptr);
    else
      impl.bwd(s, q, ld, q + D, ld, q + 2 * D, ld, o.as<float>(), D, lse.as<float>(), dO.as<float>(), D, gp, ld,
               gp + D, ld, gp + 2 * D, ld, work.as<void>(), nullptr);
  };
  fwd();
  bwd();
  const FiveRuns tf = time_five(fwd), tb = time_five(bwd);
  std::printf("[attention 760m %s] S1 N32768 H24 hd64 W2048 on %s: forward %.2f ms, backward %.2f ms (median of "
              "5; forward min %.2f max %.2f, backward min %.2f max %.2f)\n",
              impl.name(), cuda::device_description().c_str(), tf.median, tb.median, tf.min, tf.max, tb.min, tb.max);
  if (impl.bf16_inputs) {
    if (g_bf16_fwd_ms > 0)
      std::printf("[attention 760m] bf16 inputs vs fp32 inputs (bf16 kernels): forward %.2f vs %.2f ms (x%.2f), "
                  "backward %.2f vs %.2f ms (x%.2f)\n",
                  tf.median, g_bf16_fwd_ms, g_bf16_fwd_ms / tf.median, tb.median, g_bf16_bwd_ms, g_bf16_bwd_ms / tb.median);
  } else if (impl.bf16) {
    g_bf16_fwd_ms = tf.median, g_bf16_bwd_ms = tb.median;
    if (g_fp32_fwd_ms > 0)
      std::printf("[attention 760m] bf16 vs fp32: forward %.2f vs %.2f ms (x%.2f), backward %.2f vs %.2f ms (x%.2f)\n",
                  tf.median, g_fp32_fwd_ms, g_fp32_fwd_ms / tf.median, tb.median, g_fp32_bwd_ms, g_fp32_bwd_ms / tb.median);
  } else {
    g_fp32_fwd_ms = tf.median, g_fp32_bwd_ms = tb.median;
  }

  // Spot checks in float64.
  const auto X = down(qkv, size_t(rows * ld)), dOh = down(dO, size_t(rows * D)), Oh = down(o, size_t(rows * D)),
             Lh = down(lse, size_t(rows * s.heads)), G = down(g, size_t(rows * ld));
  const double scale = 1.0 / std::sqrt(double(s.hd));
  const auto at = [&](int64_t row, int64_t part, int64_t h, int64_t c) {
    return double(X[size_t(row * ld + part * D + h * s.hd + c)]);
  };
  // Row i, head h: probabilities over its window, o, lse, delta.
  struct RowRef {
    int64_t j0;
    std::vector<double> p, o;
    double lse, delta;
  };
  const auto row_ref = [&](int64_t i, int64_t h) {
    RowRef rr;
    rr.j0 = std::max<int64_t>(0, i - s.window + 1);
    double mx = -INFINITY;
    for (int64_t j = rr.j0; j <= i; ++j) {
      double d = 0;
      for (int64_t c = 0; c < s.hd; ++c) d += at(i, 0, h, c) * at(j, 1, h, c);
      rr.p.push_back(d * scale);
      mx = std::max(mx, d * scale);
    }
    double sum = 0;
    for (double& x : rr.p) sum += (x = std::exp(x - mx));
    for (double& x : rr.p) x /= sum;
    rr.lse = mx + std::log(sum);
    rr.o.assign(size_t(s.hd), 0.0);
    for (int64_t j = rr.j0; j <= i; ++j)
      for (int64_t c = 0; c < s.hd; ++c) rr.o[size_t(c)] += rr.p[size_t(j - rr.j0)] * at(j, 2, h, c);
    rr.delta = 0;
    for (int64_t c = 0; c < s.hd; ++c) rr.delta += rr.o[size_t(c)] * dOh[size_t(i * D + h * s.hd + c)];
    return rr;
  };
  const auto dp = [&](int64_t i, int64_t j, int64_t h) {
    double d = 0;
    for (int64_t c = 0; c < s.hd; ++c) d += dOh[size_t(i * D + h * s.hd + c)] * at(j, 2, h, c);
    return d;
  };
  std::vector<float> o_got, lse_got, dq_got, dk_got, dv_got;
  std::vector<double> o_want, lse_want, dq_want, dk_want, dv_want;
  Rng r(seed);
  for (int t = 0; t < 12; ++t) {
    const int64_t i = t == 0 ? 0 : t == 1 ? rows - 1 : int64_t(r.below(uint64_t(rows)));
    const int64_t h = int64_t(r.below(uint64_t(s.heads)));
    const RowRef rr = row_ref(i, h);
    lse_got.push_back(Lh[size_t(i * s.heads + h)]), lse_want.push_back(rr.lse);
    std::vector<double> dq(size_t(s.hd), 0.0);
    for (int64_t j = rr.j0; j <= i; ++j) {
      const double ds = rr.p[size_t(j - rr.j0)] * (dp(i, j, h) - rr.delta);
      for (int64_t c = 0; c < s.hd; ++c) dq[size_t(c)] += scale * ds * at(j, 1, h, c);
    }
    for (int64_t c = 0; c < s.hd; ++c) {
      o_got.push_back(Oh[size_t(i * D + h * s.hd + c)]), o_want.push_back(rr.o[size_t(c)]);
      dq_got.push_back(G[size_t(i * ld + h * s.hd + c)]), dq_want.push_back(dq[size_t(c)]);
    }
  }
  for (const int64_t j : {int64_t(5), rows - 3000}) {
    const int64_t h = int64_t(r.below(uint64_t(s.heads)));
    std::vector<double> dk(size_t(s.hd), 0.0), dv(size_t(s.hd), 0.0);
    for (int64_t i = j; i < std::min(rows, j + s.window); ++i) {
      const RowRef rr = row_ref(i, h);
      const double p = rr.p[size_t(j - rr.j0)], ds = p * (dp(i, j, h) - rr.delta);
      for (int64_t c = 0; c < s.hd; ++c) {
        dv[size_t(c)] += p * dOh[size_t(i * D + h * s.hd + c)];
        dk[size_t(c)] += scale * ds * at(i, 0, h, c);
      }
    }
    for (int64_t c = 0; c < s.hd; ++c) {
      dk_got.push_back(G[size_t(j * ld + D + h * s.hd + c)]), dk_want.push_back(dk[size_t(c)]);
      dv_got.push_back(G[size_t(j * ld + 2 * D + h * s.hd + c)]), dv_want.push_back(dv[size_t(c)]);
    }
  }
  Worst worst;
  if (impl.bf16) worst.kind = "relative L2 error (bf16)";
  const std::string tag = std::string("760m ") + impl.name();
  CHECK_IMPL(impl, worst, o_got, o_want, 1.0, tag + " o");
  CHECK_IMPL(impl, worst, lse_got, lse_want, 1.0, tag + " lse");
  CHECK_IMPL(impl, worst, dq_got, dq_want, 1.0, tag + " dq");
  CHECK_IMPL(impl, worst, dk_got, dk_want, 1.0, tag + " dk");
  CHECK_IMPL(impl, worst, dv_got, dv_want, 1.0, tag + " dv");
  worst.cases = 1;
  for (float x : G) ASSERT_TRUE(std::isfinite(x)) << "unwritten or non-finite gradient";
  for (float x : Oh) ASSERT_TRUE(std::isfinite(x)) << "unwritten or non-finite output";
}

// The bf16-input forwards at the 760m shape (fused bf16 qkv, 24 heads of 64, window 2048): the wgmma one with 2
// and with 3 warpgroups per block (where it runs) and the mma.sync one, median of 5 each, with TFLOP/s at the
// nominal 4 N W hd H flops; their o and lse agree (relative L2 <= kTolWgmmaVsMma). cuDNN's fused attention too,
// where it runs (relative L2 to the mma.sync kernel <= kTolBf16: its o is rounded to bf16). Asserts nothing on time.
TEST(CudaAttention, Bf16InputsWgmmaForward760mTiming) {
  REQUIRE_CUDA();
  Inputs760m in;
  const cuda::AttentionShape& s = in.s;
  const int64_t D = in.D, rows = in.rows, ld = in.ld;
  const cuda::DeviceBuffer& qkv = in.qkv;
  const Bf16Twin qkv16 = bf16_twin(qkv.as<float>(), ld, rows, ld);
  const bf16* q16 = qkv16.p();
  const double gflop = 4.0 * double(s.N) * double(s.window) * double(s.hd) * double(s.heads) * 1e-9;
  const auto run = [&](int warpgroups, std::vector<float>& o_out, std::vector<float>& lse_out) {
    const WgmmaSetting setting(warpgroups);
    cuda::DeviceBuffer o = nan_buf(size_t(rows * D)), lse = nan_buf(size_t(rows * s.heads));
    const auto fwd = [&] {
      cuda::swa_forward_bf16(s, q16, qkv16.ld, q16 + D, qkv16.ld, q16 + 2 * D, qkv16.ld, o.as<float>(), D,
                             lse.as<float>(), nullptr);
    };
    const int wgmma = cuda::swa_forward_bf16_uses_wgmma(s);
    fwd();
    const FiveRuns t = time_five(fwd);
    std::printf("[attention 760m forward] %s kernel: %.3f ms median of 5 (min %.3f, max %.3f), %.0f TFLOP/s\n",
                wgmma == 3 ? "wgmma x3" : wgmma == 2 ? "wgmma x2" : "mma.sync", t.median, t.min, t.max,
                gflop / t.median);
    o_out = down(o, size_t(rows * D)), lse_out = down(lse, size_t(rows * s.heads));
    return wgmma;
  };
  std::vector<float> o_old, lse_old;
  run(0, o_old, lse_old);
  const std::vector<double> o_ref = as_double(o_old), lse_ref = as_double(lse_old);
  // cuDNN's fused attention beside our kernels, where it runs (its o is bf16 widened to fp32 by a small kernel,
  // timed with it): time, TFLOP/s, and closeness to the mma.sync kernel (the bf16 bound: cuDNN rounds o to bf16).
  {
    cuda::DeviceBuffer o = nan_buf(size_t(rows * D)), lse = nan_buf(size_t(rows * s.heads));
    std::string why;
    bool ran = true;
    const auto fwd = [&] {
      ran = cuda::swa_forward_cudnn(s, q16, qkv16.ld, q16 + D, qkv16.ld, q16 + 2 * D, qkv16.ld, o.as<float>(), D,
                                    lse.as<float>(), nullptr, &why) &&
            ran;
    };
    fwd();
    if (ran) {
      const FiveRuns t = time_five(fwd);
      std::printf("[attention 760m forward] cuDNN %d: %.3f ms median of 5 (min %.3f, max %.3f), %.0f TFLOP/s\n",
                  cuda::cudnn_runtime_version(), t.median, t.min, t.max, gflop / t.median);
      const std::vector<float> o_cudnn = down(o, size_t(rows * D)), lse_cudnn = down(lse, size_t(rows * s.heads));
      const double e_o = rel_l2(o_cudnn, o_ref), e_lse = rel_l2(lse_cudnn, lse_ref);
      std::printf("[attention 760m forward] cuDNN vs mma.sync: relative L2 o %.2e, lse %.2e\n", e_o, e_lse);
      EXPECT_LE(e_o, kTolBf16) << "cuDNN o";
      EXPECT_LE(e_lse, kTolBf16) << "cuDNN lse";
    } else {
      std::printf("[attention 760m forward] cuDNN: not run (%s)\n", why.c_str());
    }
  }
  for (const int warpgroups : {2, 3}) {
    std::vector<float> o_new, lse_new;
    if (run(warpgroups, o_new, lse_new) != warpgroups)
      GTEST_SKIP() << "the wgmma forward does not run here: timed the mma.sync kernel only";
    for (float x : o_new) ASSERT_TRUE(std::isfinite(x)) << "unwritten or non-finite output";
    const double e_o = rel_l2(o_new, o_ref), e_lse = rel_l2(lse_new, lse_ref);
    std::printf("[attention 760m forward] wgmma x%d vs mma.sync: relative L2 o %.2e, lse %.2e\n", warpgroups, e_o,
                e_lse);
    EXPECT_LE(e_o, kTolWgmmaVsMma) << "wgmma x" << warpgroups;
    EXPECT_LE(e_lse, kTolWgmmaVsMma) << "wgmma x" << warpgroups;
  }
}

// The bf16-input backward at the 760m shape (fused bf16 qkv and gradients, 24 heads of 64, window 2048), fed the
// forward's o and lse: the mma.sync kernels, wgmma dk/dv with the mma.sync dq (mode 1), wgmma dk/dv and dq (mode
// 2), those with register A operands (3: dk/dv's, 4: both kernels') and with the pipelined dk/dv kernel (5, 6),
// median of 5 each (delta kernel included), with TFLOP/s at the nominal 2.5 x 4 N W hd H flops (five products per
// visible score); the wgmma gradients agree with the mma.sync ones (relative L2 <= kTolWgmmaVsMma), and modes 3 to
// 6 give mode 2's bits. Asserts nothing on time.
TEST(CudaAttention, Bf16InputsWgmmaBackward760mTiming) {
  REQUIRE_CUDA();
  Inputs760m in;
  const cuda::AttentionShape& s = in.s;
  const int64_t D = in.D, rows = in.rows, ld = in.ld;
  const cuda::DeviceBuffer &qkv = in.qkv, &dO = in.dO;
  const Bf16Twin qkv16 = bf16_twin(qkv.as<float>(), ld, rows, ld);
  const bf16* q16 = qkv16.p();
  cuda::DeviceBuffer o = nan_buf(size_t(rows * D)), lse = nan_buf(size_t(rows * s.heads));
  cuda::DeviceBuffer work(cuda::swa_backward_bf16_workspace(s));
  cuda::swa_forward_bf16(s, q16, qkv16.ld, q16 + D, qkv16.ld, q16 + 2 * D, qkv16.ld, o.as<float>(), D,
                         lse.as<float>(), nullptr);
  const double gflop = 2.5 * 4.0 * double(s.N) * double(s.window) * double(s.hd) * double(s.heads) * 1e-9;
  const auto run = [&](int mode, std::vector<float>& g_out) {
    const WgmmaBwdSetting setting(mode);
    cuda::DeviceBuffer g = nan_buf(size_t(rows * ld));
    float* gp = g.as<float>();
    const auto bwd = [&] {
      cuda::swa_backward_bf16(s, q16, qkv16.ld, q16 + D, qkv16.ld, q16 + 2 * D, qkv16.ld, o.as<float>(), D,
                              lse.as<float>(), dO.as<float>(), D, gp, ld, gp + D, ld, gp + 2 * D, ld,
                              work.as<void>(), nullptr);
    };
    const int used = cuda::swa_backward_bf16_uses_wgmma(s);
    bwd();
    const FiveRuns t = time_five(bwd);
    const char* mode_names[7] = {"mma.sync", "wgmma dk/dv + mma.sync dq", "wgmma dk/dv + wgmma dq",
                                 "wgmma dk/dv (K, V in registers) + wgmma dq",
                                 "wgmma dk/dv (K, V in registers) + wgmma dq (Q, dO in registers)",
                                 "pipelined wgmma dk/dv (K, V in registers) + wgmma dq",
                                 "pipelined wgmma dk/dv (K, V in registers) + wgmma dq (Q, dO in registers)"};
    std::printf("[attention 760m backward] mode %d, %s: %.3f ms median of 5 (min %.3f, max %.3f), %.0f TFLOP/s "
                "nominal\n",
                used, mode_names[used], t.median, t.min, t.max, gflop / t.median);
    g_out = down(g, size_t(rows * ld));
    return used;
  };
  std::vector<float> g_old;
  run(0, g_old);
  const Strided parts[3] = {{rows, ld, 0, D}, {rows, ld, D, D}, {rows, ld, 2 * D, D}};
  const char* names[3] = {"dq", "dk", "dv"};
  std::vector<float> g_mode2;
  for (const int mode : {1, 2, 3, 4, 5, 6}) {
    std::vector<float> g_new;
    if (run(mode, g_new) != mode) GTEST_SKIP() << "the wgmma backward does not run here: timed the mma.sync kernels";
    for (float x : g_new) ASSERT_TRUE(std::isfinite(x)) << "unwritten or non-finite gradient";
    for (int p = 0; p < 3; ++p) {
      const double e = rel_l2(parts[p].gather(g_new), as_double(parts[p].gather(g_old)));
      std::printf("[attention 760m backward] mode %d vs mma.sync: relative L2 %s %.2e\n", mode, names[p], e);
      EXPECT_LE(e, kTolWgmmaVsMma) << "mode " << mode << " " << names[p];
    }
    if (mode == 2) g_mode2 = g_new;
    if (mode > 2) {
      const bool same = std::memcmp(g_new.data(), g_mode2.data(), g_new.size() * 4) == 0;
      std::printf("[attention 760m backward] mode %d vs mode 2: %s\n", mode, same ? "bit-identical" : "bits differ");
      EXPECT_TRUE(same) << "mode " << mode << " (register operands) differs from mode 2";
    }
  }
}

TEST(CudaAttention, Shape760mTimingAndSpotCheck) {
  REQUIRE_CUDA();
  shape760m(kFp32);
}

// The bf16 kernels at the 760m shape, timed beside the fp32 ones (run just before when both are selected).
TEST(CudaAttention, Bf16Shape760mTimingAndSpotCheck) {
  REQUIRE_CUDA();
  shape760m(kBf16);
}

// The bf16 kernels on bf16 operands at the 760m shape (the model's path), timed beside the fp32-input ones.
TEST(CudaAttention, Bf16InputsShape760mTimingAndSpotCheck) {
  REQUIRE_CUDA();
  shape760m(kBf16Inputs);
}

#endif  // TTT_HAVE_CUDA
