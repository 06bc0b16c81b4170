// The CUDA sliding-window attention (src/backend/cuda/attention.h) against its CPU reference nn::sliding_window_attention
// run in float64 on the autograd tape (backward through the tape with a random dO), one sequence at a time, on
// fresh random inputs. o, lse, dq, dk and dv must be within 1e-4 relative (max |gpu - ref| / max |ref| per output)
// of float64; lse is checked against a direct float64 log-sum-exp. Where the exact gradient is zero (window 1, or a
// single token: every row attends only to itself, so dS = P (dO.v - dO.o) = 0 and dq = dk = 0) a relative error
// means nothing; there the fp32 result, the rounding left over from that cancellation, is divided by the size of
// the cancelling terms instead (scale * max|dO| * max|v| * max|q, k|, norms per row and head). Device outputs are filled with NaN before
// every run, so an element no kernel writes shows as NaN (which never passes); columns of a wider leading
// dimension that belong to nothing must stay NaN (nothing writes outside its rows/heads). The backward must be
// bit-reproducible, and each gradient must come out bit-identical when asked for alone. The bf16 tensor-core kernels
// (swa_forward_bf16 / swa_backward_bf16) go through the same cases and checks with relative L2 error
// ||gpu - ref|| / ||ref|| <= 2e-2 per output instead (their worst max-abs relative error is printed, not checked; lse errors are taken relative to at least the
// typical score size, scale |q| |k| / sqrt(hd), since a one-token lse is a single, possibly cancelling, dot product). A 760m-shape test times
// forward and backward (CUDA events, median of 5) and spot-checks sampled rows against float64. On Hopper the
// bf16-operand forward with hd 64 is the wgmma kernel: checked against float64 on its own shapes, against the
// mma.sync forward (close, not bits) and timed beside it at the 760m shape; so is its wgmma backward (dk/dv, and dq),
// which must also be bit-reproducible. Every test skips,
// saying why, without CUDA in the build or a usable device.
#include "cuda_attention_test_util.h"

using namespace ttt;

#ifndef TTT_HAVE_CUDA

TEST(CudaAttention, SkippedWithoutCuda) { GTEST_SKIP() << "built without the CUDA toolkit (TTT_HAVE_CUDA unset)"; }

#else

using namespace ttt::cuda_attention_test;

const std::vector<Case>& cases() {
  static const std::vector<Case> all{
      {1, 100, 2, 32, 64, false, 0},    // N not a multiple of the 64-row tile
      {2, 256, 4, 32, 64, true, 0},     // the tiny preset's attention, fused qkv, two sequences
      {1, 130, 3, 64, 200, false, 0},   // window > N: full causal
      {2, 77, 2, 48, 1, false, 3},      // window 1, odd head width, ld not a multiple of 4
      {1, 300, 2, 64, 100, false, 1},   // window not a multiple of the tile
      {2, 150, 3, 64, 40, true, 0},     // fused, window < tile
      {1, 700, 2, 64, 300, false, 0},   // many key tiles per query tile
      {1, 65, 1, 128, 64, false, 4},    // widest head
      {3, 33, 2, 7, 2048, false, 0},    // tiny odd head width, window >> N
      {1, 1, 1, 16, 5, false, 0},       // a single token
      {2, 129, 5, 96, 65, true, 0}};    // hd between 64 and 128
  return all;
}

TEST(CudaAttention, MatchesCpu) {
  REQUIRE_CUDA();
  Worst worst;
  for (const Case& c : cases()) attention_case(kFp32, worst, c);
}

// The bf16 tensor-core kernels on the same cases: relative L2 error <= 2e-2 per output, the same NaN poisoning,
// padding, reproducibility and gradient-alone checks.
TEST(CudaAttention, Bf16MatchesCpu) {
  REQUIRE_CUDA();
  Worst worst;
  worst.kind = "relative L2 error (bf16)";
  for (const Case& c : cases()) attention_case(kBf16, worst, c);
}

// The bf16 kernels fed bf16 operands, on every case whose head width is a multiple of 8 (the others are refused,
// below): the bf16 error bounds, and the bits of the fp32-input bf16 kernels.
TEST(CudaAttention, Bf16InputsMatchCpuAndFp32Inputs) {
  REQUIRE_CUDA();
  Worst worst;
  worst.kind = "relative L2 error (bf16 inputs)";
  int run = 0;
  for (const Case& c : cases())
    if (c.hd % 8 == 0) attention_case(kBf16Inputs, worst, c), ++run;
  EXPECT_GE(run, 8) << "too few cases with hd % 8 == 0";
}

// Shapes for the Hopper wgmma forward (bf16 operands, hd 64; 128 query rows and 128 keys per tile): sequence
// lengths that are not multiples of the tile, windows 1, 37, 512 and >= N, 1..4 heads, fused qkv views (ld 3D)
// and padded leading dimensions.
const std::vector<Case>& wgmma_cases() {
  static const std::vector<Case> all{
      {1, 1000, 2, 64, 512, true, 0},  // several key tiles, fused, N % 128 != 0
      {2, 333, 3, 64, 37, false, 8},   // window inside one tile, two sequences, padded rows
      {1, 200, 1, 64, 1, false, 0},    // window 1: each row only itself
      {2, 190, 4, 64, 4096, true, 0},  // window >= N: full causal
      {1, 129, 4, 64, 128, false, 16}, // one row past the tile, window = the tile
      {1, 700, 2, 64, 300, true, 0},   // window edge crossing tiles
      {1, 1, 1, 64, 5, false, 0}};     // a single token
  return all;
}

// Every wgmma shape through every check of the bf16-input kernels, once per variant: `Setting(v)` selects variant
// v for its scope, `uses(shape)` says which variant a call of that shape runs (skipped where none runs here).
template <class Setting, class Uses>
void wgmma_variants(std::initializer_list<int> variants, Uses uses, const std::string& what) {
  for (const int v : variants) {
    const Setting setting(v);
    if (uses(cuda::AttentionShape{1, 128, 1, 64, 128}) != v)
      GTEST_SKIP() << "the wgmma " << what << " does not run here (needs an sm_90a build and a cc 9.0 device)";
    Worst worst;
    worst.kind = "relative L2 error (bf16 inputs, wgmma " + what + " " + std::to_string(v) + ")";
    for (const Case& c : wgmma_cases()) {
      ASSERT_EQ(uses(cuda::AttentionShape{c.S, c.N, c.heads, c.hd, c.window}), v) << c.name();
      attention_case(kBf16Inputs, worst, c);
    }
  }
}

// The wgmma forward (where it runs: an sm_90a build on a cc 9.0 device), with 2 and with 3 warpgroups per block,
// on those shapes through every check of the bf16-input kernels: o and lse against float64, the backward fed by
// its o and lse against float64, closeness to the mma.sync forward, padding untouched.
TEST(CudaAttention, Bf16InputsWgmmaForwardMatchesCpu) {
  REQUIRE_CUDA();
  wgmma_variants<WgmmaSetting>({2, 3}, cuda::swa_forward_bf16_uses_wgmma, "forward x");
}

// The wgmma backward (where it runs: an sm_90a build on a cc 9.0 device), dk/dv only (mode 1, dq by the mma.sync
// kernel), dk/dv and dq (mode 2) and those with register A operands (modes 3, 4; 5, 6 with the pipelined dk/dv
// kernel), on the wgmma shapes through every check of the bf16-input kernels: dq, dk, dv against float64, against
// the mma.sync backward (relative L2 <= kTolWgmmaVsMma), bit-reproducible, each gradient alone equal to the one
// computed with the others, padding untouched.
TEST(CudaAttention, Bf16InputsWgmmaBackwardMatchesCpu) {
  REQUIRE_CUDA();
  wgmma_variants<WgmmaBwdSetting>({1, 2, 3, 4, 5, 6}, cuda::swa_backward_bf16_uses_wgmma, "backward mode");
}

// While alive, swa_forward_bf16 tries cuDNN (1) or never does (0); then the setting it replaced.
using CudnnSetting = ScopedWgmma<cuda::swa_forward_bf16_set_cudnn>;

// Why cuDNN's attention cannot run here ("" where it can): not built in, libcudnn.so.9 not loadable, or no engine
// for a small hd-64 banded shape.
std::string cudnn_missing() {
  std::string why;
  if (cuda::cudnn_runtime_version(&why) == 0) return why;
  const cuda::AttentionShape s{1, 128, 1, 64, 37};
  cuda::DeviceBuffer qkv32(size_t(s.N * 3 * s.hd) * 4), o = nan_buf(size_t(s.N * s.hd)), lse = nan_buf(size_t(s.N));
  qkv32.fill_random<float>(s.N * 3 * s.hd, fresh_seed(), 0, 1.0, true);
  const Bf16Twin qkv = bf16_twin(qkv32.as<float>(), 3 * s.hd, s.N, 3 * s.hd);
  const bf16* q = qkv.p();
  if (!cuda::swa_forward_cudnn(s, q, 3 * s.hd, q + s.hd, 3 * s.hd, q + 2 * s.hd, 3 * s.hd, o.as<float>(), s.hd,
                               lse.as<float>(), nullptr, &why))
    return why;
  cuda::stream_synchronize();
  return "";
}

// Skips the test where cuDNN's attention cannot run, saying why; fails instead where TTT_REQUIRE_CUDNN=1 is set
// (the H200 runs, where it must).
#define REQUIRE_CUDNN()                                                                     \
  do {                                                                                      \
    const std::string why_ = cudnn_missing();                                               \
    if (!why_.empty()) {                                                                    \
      const char* req_ = std::getenv("TTT_REQUIRE_CUDNN");                                  \
      if (req_ && std::string(req_) == "1") FAIL() << "TTT_REQUIRE_CUDNN=1: " << why_;      \
      GTEST_SKIP() << "cuDNN attention unavailable: " << why_;                              \
    }                                                                                       \
  } while (0)

// cuDNN's fused attention forward on the wgmma shapes (hd 64; windows 1, 37, 128, 300, 512 and >= N; N not a
// multiple of any tile; fused qkv views and padded leading dimensions; a single token) through every check of
// attention_case: o and lse against float64 (relative L2 <= kTolBf16, as the wgmma forward), our backward fed its
// o and lse against float64, o's padding columns untouched. Then swa_forward_bf16 with cuDNN switched on gives the
// direct call's bits (the switch reaches it), and the direct call is bit-reproducible.
TEST(CudaAttention, CudnnForwardMatchesCpu) {
  REQUIRE_CUDA();
  REQUIRE_CUDNN();
  std::printf("[attention cudnn] cuDNN runtime version %d\n", cuda::cudnn_runtime_version());
  {
    Worst worst;
    worst.kind = "relative L2 error (cuDNN forward)";
    for (const Case& c : wgmma_cases())  // one query with a causal mask: cuDNN 9.9 and older decline (fallback)
      if (c.N > 1 || cuda::cudnn_runtime_version() > 90900) attention_case(kCudnn, worst, c);
  }
  const cuda::AttentionShape s{2, 333, 3, 64, 37};
  const int64_t D = s.heads * s.hd, rows = s.S * s.N, ld = 3 * D;
  cuda::DeviceBuffer qkv(size_t(rows * ld) * 4);
  qkv.fill_random<float>(rows * ld, fresh_seed(), 0, 1.0, true);
  const Bf16Twin t = bf16_twin(qkv.as<float>(), ld, rows, ld);
  const auto run = [&](bool direct) {
    cuda::DeviceBuffer o = nan_buf(size_t(rows * D)), lse = nan_buf(size_t(rows * s.heads));
    if (direct) {
      EXPECT_TRUE(cuda::swa_forward_cudnn(s, t.p(), t.ld, t.p() + D, t.ld, t.p() + 2 * D, t.ld, o.as<float>(), D,
                                          lse.as<float>(), nullptr));
    } else {
      const CudnnSetting on(1);
      EXPECT_TRUE(cuda::swa_forward_bf16_uses_cudnn_setting());
      cuda::swa_forward_bf16(s, t.p(), t.ld, t.p() + D, t.ld, t.p() + 2 * D, t.ld, o.as<float>(), D, lse.as<float>(),
                             nullptr);
    }
    std::vector<float> out = down(o, size_t(rows * D)), l = down(lse, size_t(rows * s.heads));
    out.insert(out.end(), l.begin(), l.end());
    return out;
  };
  const std::vector<float> first = run(true), again = run(true), switched = run(false);
  ASSERT_EQ(first.size(), switched.size());
  EXPECT_EQ(0, std::memcmp(first.data(), again.data(), first.size() * 4)) << "cuDNN forward not bit-reproducible";
  EXPECT_EQ(0, std::memcmp(first.data(), switched.data(), first.size() * 4))
      << "swa_forward_bf16 with cuDNN switched on differs from the direct cuDNN call";
  {
    const CudnnSetting off(0);
    EXPECT_FALSE(cuda::swa_forward_bf16_uses_cudnn_setting());
  }
}

TEST(CudaAttention, Bf16InputsRejectUnalignedOperands) {
  REQUIRE_CUDA();
  cuda::DeviceBuffer b(1 << 16);
  const bf16* p = b.as<bf16>();
  float* f = b.as<float>();
  EXPECT_THROW(cuda::swa_forward_bf16({1, 8, 1, 12, 4}, p, 12, p, 12, p, 12, f, 12, f), Error);   // hd % 8
  EXPECT_THROW(cuda::swa_forward_bf16({1, 8, 1, 16, 4}, p, 20, p, 16, p, 16, f, 16, f), Error);   // ld % 8
  EXPECT_THROW(cuda::swa_forward_bf16({1, 8, 1, 16, 4}, p + 1, 16, p, 16, p, 16, f, 16, f), Error);  // alignment
  EXPECT_THROW(cuda::swa_backward_bf16({1, 8, 1, 16, 4}, p, 16, p, 16, p, 16, f, 16, f, f, 16, f, 16, f, 16, f, 16,
                                       nullptr),
               Error);  // no workspace
}

// Three backwards of impl on random inputs of shape s (fused qkv and gradients) per wgmma backward mode in `modes`
// (-1: the process's setting; the bf16-input kernels only): every run must give the first one's bits, run to run
// and from one mode to the next (modes that claim the same products summed in the same order).
void backward_bit_identical(const Impl& impl, const cuda::AttentionShape& s = {2, 1000, 3, 64, 333},
                            std::initializer_list<int> modes = {-1}) {
  const uint64_t seed = fresh_seed();
  Rng r(seed);
  const int64_t D = s.heads * s.hd, rows = s.S * s.N, ld = 3 * D;
  cuda::DeviceBuffer qkv = up(normal(r, size_t(rows * ld), 1.0)), dO = up(normal(r, size_t(rows * D), 1.0));
  cuda::DeviceBuffer o = nan_buf(size_t(rows * D)), lse = nan_buf(size_t(rows * s.heads));
  cuda::DeviceBuffer work = nan_buf(cuda::swa_backward_workspace(s) / 4);
  const float* q = qkv.as<float>();
  impl.fwd(s, q, ld, q + D, ld, q + 2 * D, ld, o.as<float>(), D, lse.as<float>(), nullptr);
  std::vector<float> first;
  for (const int mode : modes) {
    const WgmmaBwdSetting setting(mode);
    for (int run = 0; run < 3; ++run) {
      cuda::DeviceBuffer g = nan_buf(size_t(rows * ld));
      float* gp = g.as<float>();
      impl.bwd(s, q, ld, q + D, ld, q + 2 * D, ld, o.as<float>(), D, lse.as<float>(), dO.as<float>(), D, gp, ld,
               gp + D, ld, gp + 2 * D, ld, work.as<void>(), nullptr);
      const auto got = down(g, size_t(rows * ld));
      for (float x : got) ASSERT_TRUE(std::isfinite(x)) << impl.name() << " seed " << seed << ": unwritten or non-finite gradient";
      if (first.empty()) first = got;
      else EXPECT_EQ(0, std::memcmp(first.data(), got.data(), got.size() * 4))
          << impl.name() << " (S " << s.S << ", N " << s.N << ", heads " << s.heads << ", window " << s.window
          << ") wgmma backward mode " << mode << " run " << run << " differs from the first run (mode "
          << *modes.begin() << ")";
    }
  }
}

TEST(CudaAttention, BackwardBitIdentical) {
  REQUIRE_CUDA();
  backward_bit_identical(kFp32);
}

TEST(CudaAttention, Bf16BackwardBitIdentical) {
  REQUIRE_CUDA();
  backward_bit_identical(kBf16);
}

// The bf16-operand backward, with the wgmma dk/dv and dq kernels where they run (hd 64): three runs each of modes
// 2 to 6, the same bits.
TEST(CudaAttention, Bf16InputsBackwardBitIdentical) {
  REQUIRE_CUDA();
  backward_bit_identical(kBf16Inputs, {2, 1000, 3, 64, 333}, {2, 3, 4, 5, 6});
}

// The register-operand and pipelined wgmma backward (modes 3 to 6: K, V / Q, dO as register A fragments instead of
// shared-memory descriptors; the dk/dv kernel pipelined across query tiles) gives the bits of mode 2 on every wgmma
// shape (tile edges, windows 1..>= N, one token) and on one long enough for many tiles a block: the same bf16
// products, in the same order.
TEST(CudaAttention, Bf16InputsWgmmaBackwardRegisterOperandsSameBits) {
  REQUIRE_CUDA();
  {
    const WgmmaBwdSetting setting(6);
    if (cuda::swa_backward_bf16_uses_wgmma(cuda::AttentionShape{1, 128, 1, 64, 128}) != 6)
      GTEST_SKIP() << "the wgmma backward does not run here (needs an sm_90a build and a cc 9.0 device)";
  }
  for (const Case& c : wgmma_cases())
    backward_bit_identical(kBf16Inputs, cuda::AttentionShape{c.S, c.N, c.heads, c.hd, c.window}, {2, 3, 4, 5, 6});
  backward_bit_identical(kBf16Inputs, cuda::AttentionShape{1, 3000, 2, 64, 1000}, {2, 3, 4, 5, 6});
}

TEST(CudaAttention, RejectsBadInput) {
  // Shape checks come before anything touches the device, so this runs without a GPU too.
  float dummy = 0;
  float* p = &dummy;
  const auto fwd = [&](cuda::AttentionShape s, int64_t ld) {
    cuda::swa_forward(s, p, ld, p, ld, p, ld, p, ld, p);
  };
  const auto bwd = [&](cuda::AttentionShape s, int64_t ld) {
    cuda::swa_backward(s, p, ld, p, ld, p, ld, p, ld, p, p, ld, p, ld, p, ld, p, ld, p);
  };
  EXPECT_THROW(fwd({1, 8, 1, 129, 4}, 129), Error);   // hd > 128
  EXPECT_THROW(bwd({1, 8, 1, 256, 4}, 256), Error);
  EXPECT_THROW(fwd({1, 8, 2, 32, 0}, 64), Error);     // window < 1
  EXPECT_THROW(bwd({1, 8, 2, 32, -3}, 64), Error);
  EXPECT_THROW(fwd({1, 8, 2, 32, 4}, 63), Error);     // ld < heads * hd
  EXPECT_THROW(fwd({1, 8, 0, 32, 4}, 64), Error);     // no heads
  EXPECT_THROW(bwd({1, 8, 2, 0, 4}, 64), Error);      // hd 0
  EXPECT_THROW(cuda::swa_forward({1, 8, 1, 32, 4}, nullptr, 32, p, 32, p, 32, p, 32, p), Error);
  EXPECT_THROW(cuda::swa_forward_bf16({1, 8, 1, 129, 4}, p, 129, p, 129, p, 129, p, 129, p), Error);
  EXPECT_THROW(cuda::swa_forward_bf16({1, 8, 2, 32, 0}, p, 64, p, 64, p, 64, p, 64, p), Error);
  EXPECT_THROW(cuda::swa_backward_bf16({1, 8, 2, 32, 4}, p, 63, p, 63, p, 63, p, 63, p, p, 63, p, 63, p, 63, p, 63,
                                       p),
               Error);
  EXPECT_THROW(cuda::swa_backward_bf16({1, 8, 1, 32, 4}, p, 32, p, 32, p, 32, p, 32, p, p, 32, p, 32, p, 32, p, 32,
                                       nullptr),
               Error);
  EXPECT_THROW(cuda::swa_backward({1, 8, 1, 32, 4}, p, 32, p, 32, p, 32, p, 32, p, p, 32, p, 32, p, 32, p, 32,
                                  nullptr),
               Error);  // no workspace
}

#endif  // TTT_HAVE_CUDA
