// The persistent Titans kernels (src/backend/cuda/titans_persistent.*, run by TitansRunner when the plan picks
// them or TitansOptions::kernel forces them) against the CPU twin (titans::memory_cpu / tnt_cpu, titans_fused.h):
// the float64 instantiation to <= 1e-12 relative (||got - ref|| / ||ref||), the float32 one against float64 on the
// CPU to <= 1e-4 (max abs difference / max abs reference, the bound of test_cuda_tnt.cpp), and the persistent
// against the batched path on the same inputs; every output and gradient (o, grad_q, grad_k, grad_v, grad_w1,
// grad_w2, grad_theta, grad_eta, grad_alpha). Shapes: head width 64 (and 128 forced, its state spilling to global
// scratch), chunk sizes 3 / 8 / 16 / 64, momentum and decay on and off, residual off, Q-K projected queries,
// resets (TNT local memories: several shards per sequence, shards not dividing T), T not a multiple of C nor of
// the segment length, forced segment lengths. Device outputs start as NaN and work buffers are poisoned with NaN,
// so an element no kernel writes, or a read of one nothing wrote, shows. Fresh random inputs on every run, the
// seed printed with every failure. Every test skips, saying why, without CUDA or without a usable device. Both
// kernel variants (titans::PersistentVariant v1, v2: the V2* tests, and V2MatchesV1) are checked, whatever
// TTT_PERSISTENT_VARIANT says. v2's bf16 kernels (TitansOptions::bf16_products: the chunk products on tensor
// cores, bf16 operands, fp32 accumulation and state; `--precision bf16`) are held to the suite's bf16 bound,
// 2e-2 relative (L2) to float64 on the CPU (test_cuda_lact.cpp's), fwd and bwd, Titans and TNT; so is the batched
// path with its cuBLAS products on tensor cores (bf16 or tf32 operands: BatchedTensorCores*).
#include <gtest/gtest.h>

#include "titans_test_util.h"
#include "cuda_test_util.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/blas.h"  // BF16OperandsEmulation
#include "core/rng.h"
#include "core/safetensors.h"
#include "ttt/titans_fused.h"
#include "ttt/tnt.h"
#ifdef TTT_HAVE_CUDA
#include "backend/cuda/titans_cuda.h"
#include "backend/cuda/tnt_cuda.h"
#endif

using namespace ttt;

#ifndef TTT_HAVE_CUDA

TEST(CudaTitansPersistent, SkippedWithoutCuda) { GTEST_SKIP() << "built without the CUDA toolkit (TTT_HAVE_CUDA unset)"; }

#else

namespace {

using Case = test::TitansCase;

// Cases at width 64 (the heads) and small odd shapes that exercise the generic paths (shared with the CPU
// emulation, which runs them at v2's block size).
std::vector<Case> cases() { return test::persistent_gpu_cases(); }

// o, grad_q, grad_k, grad_v, grad_w1, grad_w2, grad_theta, grad_eta, grad_alpha
const char* kNames[9] = {"o", "grad_q", "grad_k", "grad_v", "grad_w1", "grad_w2", "grad_theta", "grad_eta",
                         "grad_alpha"};

std::vector<std::vector<double>> make_inputs(const Case& c, uint64_t seed) {
  Rng r(seed);
  const int64_t BTd = c.B * c.T * c.d, P = c.B * c.d * c.dh, BT = c.B * c.T;
  auto normal = [&](int64_t k, double s) {
    std::vector<double> v(static_cast<size_t>(k));
    for (auto& e : v) e = double(float(r.normal() * s));  // float-representable: the fp32 runs see the same values
    return v;
  };
  auto uniform = [&](int64_t k, double lo, double hi) {
    std::vector<double> v(static_cast<size_t>(k));
    for (auto& e : v) e = double(float(r.uniform(lo, hi)));
    return v;
  };
  const double sd = 1.0 / std::sqrt(double(c.d));
  return {normal(BTd, sd), normal(BTd, sd), normal(BTd, sd), normal(P, sd), normal(P, 1.0 / std::sqrt(double(c.dh))),
          uniform(BT, 0.01, 0.1), uniform(BT, 0.3, 0.9), uniform(BT, 0.01, 0.1), normal(BTd, 1.0)};
}

enum class Where { Cpu, Persistent, Batched };

// The persistent kernels the tests run (each test sets it; TitansOptions::variant overrides the environment).
titans::PersistentVariant tested_variant = titans::PersistentVariant::V1;
bool tested_bf16 = false;  // float runs with bf16 tensor-core products (v2; the batched path's cuBLAS products)
bool tested_tf32 = false;  // float runs with tf32 tensor-core products (the batched path's)
void set_options(cuda::TitansOptions& o) {
  o.variant_set = true;
  o.variant = tested_variant;
  o.bf16_products = tested_bf16;
  o.tf32_products = tested_tf32;
}
const char* kBf16Path = "bf16 tensor-core products";  // what the path of a bf16 plan says

template <class T>
std::vector<std::vector<T>> run(const Case& c, const std::vector<std::vector<double>>& x, Where where) {
  std::vector<std::vector<T>> in;
  for (const auto& v : x) in.emplace_back(v.begin(), v.end());
  const size_t BTd = size_t(c.B * c.T * c.d), P = size_t(c.B * c.d * c.dh), BT = size_t(c.B * c.T);
  std::vector<std::vector<T>> out(9);
  const T nan = T(std::nan(""));
  for (int i : {0, 1, 2, 3}) out[size_t(i)].assign(BTd, nan);
  for (int i : {4, 5}) out[size_t(i)].assign(P, nan);
  for (int i : {6, 7, 8}) out[size_t(i)].assign(BT, nan);
  titans::MemoryInputs<T> mi{in[0].data(), in[1].data(), in[2].data(), in[3].data(),
                             in[4].data(), in[5].data(), in[6].data(), in[7].data()};
  titans::MemoryGrads<T> mg{out[1].data(), out[2].data(), out[3].data(), out[4].data(), out[5].data(),
                            out[6].data(), out[7].data(), out[8].data()};
  if (where == Where::Cpu) {
    titans::memory_cpu<T>(c.shape(), mi, out[0].data(), in[8].data(), &mg);
    return out;
  }
  cuda::TitansOptions o;
  o.poison_workspace = true;
  o.kernel = where == Where::Persistent ? titans::KernelChoice::Persistent : titans::KernelChoice::Batched;
  set_options(o);
  {
    cuda::TitansRunner<T> probe(c.shape(), true, o);
    EXPECT_EQ(probe.persistent(), where == Where::Persistent) << c.name() << ": " << probe.path();
    if (where == Where::Persistent)
      EXPECT_NE(probe.path().find(titans::persistent_variant_name(tested_variant)), std::string::npos) << probe.path();
    if (where == Where::Persistent && tested_bf16 && sizeof(T) == 4)
      EXPECT_NE(probe.path().find(kBf16Path), std::string::npos) << probe.path();
    if (where == Where::Batched && sizeof(T) == 4)
      EXPECT_NE(probe.path().find(tested_bf16   ? kBf16Path
                                  : tested_tf32 ? "tf32 tensor-core products"
                                                : "fp32 products"),
                std::string::npos)
          << probe.path();
  }
  cuda::titans_host<T>(c.shape(), mi, out[0].data(), in[8].data(), &mg, o);
  return out;
}

struct Err {
  double rel2 = 0, relmax = 0;
  bool finite = true;
  size_t worst_at = 0;  // index of the largest difference
};
template <class A, class B>
Err compare(const std::vector<A>& a, const std::vector<B>& ref) {
  Err e;
  double num = 0, den = 0, mx = 0, mref = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double x = double(a[i]), y = double(ref[i]);
    if (!std::isfinite(x)) {
      if (e.finite) e.worst_at = i;
      e.finite = false;
    }
    num += (x - y) * (x - y);
    den += y * y;
    if (std::abs(x - y) > mx) mx = std::abs(x - y), e.worst_at = e.finite ? i : e.worst_at;
    mref = std::max(mref, std::abs(y));
  }
  e.rel2 = den == 0 ? std::sqrt(num) : std::sqrt(num / den);
  e.relmax = mref == 0 ? mx : mx / mref;
  if (!e.finite) e.rel2 = e.relmax = INFINITY;
  return e;
}

struct Worst {
  double err = 0;
  std::string what;
  void see(double e, const std::string& w) {
    if (e > err || std::isnan(e)) err = e, what = w;
  }
};

// Every output of got against ref: rel2 (use_max false) or relmax <= tol; the message names the tensor, the first
// bad element and both values. With a yardstick (the CPU twin in float with every product operand rounded to bf16,
// BF16OperandsEmulation: the bf16 tests' conditioning, as test_cuda_lact.cpp's), an output is held to
// max(tol, 2 x the yardstick's own error); *by_yardstick counts the outputs over tol that it admitted.
template <class A, class B>
void check(const std::vector<std::vector<A>>& got, const std::vector<std::vector<B>>& ref, double tol, bool use_max,
           const std::string& tag, Worst& worst, const std::vector<std::vector<float>>* yardstick = nullptr,
           int* by_yardstick = nullptr) {
  for (int i = 0; i < 9; ++i) {
    const Err e = compare(got[size_t(i)], ref[size_t(i)]);
    const double x = use_max ? e.relmax : e.rel2;
    const size_t at = e.worst_at;
    double bound = tol, y = 0;
    if (yardstick) {
      const Err ye = compare((*yardstick)[size_t(i)], ref[size_t(i)]);
      y = use_max ? ye.relmax : ye.rel2;
      bound = std::max(tol, 2 * y);
      if (by_yardstick && x > tol && x <= bound) ++*by_yardstick;
    }
    EXPECT_TRUE(e.finite) << tag << " " << kNames[i] << " holds NaN/Inf (first at element " << at << ")";
    EXPECT_LE(x, bound) << tag << " " << kNames[i] << ": largest difference at element " << at << " (got "
                        << double(got[size_t(i)][at]) << ", reference " << double(ref[size_t(i)][at]) << ")"
                        << (yardstick ? ", CPU bf16-operand twin's error " + std::to_string(y) : std::string());
    worst.see(x, tag + " " + kNames[i]);
  }
}

// The float64 instantiation runs the twin's algorithm: agreement to rounding.
void float64_matches_twin() {
  const uint64_t seed0 = fresh_seed();
  Worst worst;
  int n = 0;
  for (const Case& c : cases()) {
    const uint64_t seed = seed0 + uint64_t(n++);
    const auto x = make_inputs(c, seed);
    const auto ref = run<double>(c, x, Where::Cpu);
    const auto got = run<double>(c, x, Where::Persistent);
    check(got, ref, 1e-12, false, c.name() + " fp64 (seed " + std::to_string(seed) + ")", worst);
  }
  std::printf("titans persistent %s fp64 vs CPU twin: %d configs, worst relative error %.3g (%s)\n",
              titans::persistent_variant_name(tested_variant), n, worst.err, worst.what.c_str());
}

// The float32 instantiation against float64 on the CPU, with the bound of the batched path's tests.
void float32_matches_reference() {
  const uint64_t seed0 = fresh_seed();
  Worst worst;
  int n = 0;
  for (const Case& c : cases()) {
    const uint64_t seed = seed0 + uint64_t(n++);
    const auto x = make_inputs(c, seed);
    const auto ref = run<double>(c, x, Where::Cpu);
    const auto got = run<float>(c, x, Where::Persistent);
    check(got, ref, 1e-4, true, c.name() + " fp32 (seed " + std::to_string(seed) + ")", worst);
  }
  std::printf("titans persistent %s fp32 vs CPU float64 (max abs diff / max abs ref): %d configs, worst %.3g (%s)\n",
              titans::persistent_variant_name(tested_variant), n, worst.err, worst.what.c_str());
}

// Persistent and batched paths on the same inputs, on the device: float64 to rounding, float32 within the fp32
// bound (different summation orders).
void matches_batched() {
  const uint64_t seed0 = fresh_seed();
  Worst w64, w32;
  int n = 0;
  for (const Case& c : cases()) {
    const uint64_t seed = seed0 + uint64_t(n++);
    const auto x = make_inputs(c, seed);
    const std::string tag = c.name() + " (seed " + std::to_string(seed) + ")";
    check(run<double>(c, x, Where::Persistent), run<double>(c, x, Where::Batched), 1e-12, false, tag + " fp64", w64);
    check(run<float>(c, x, Where::Persistent), run<float>(c, x, Where::Batched), 1e-4, true, tag + " fp32", w32);
  }
  std::printf("titans persistent %s vs batched: %d configs, worst fp64 %.3g (%s), worst fp32 %.3g (%s)\n",
              titans::persistent_variant_name(tested_variant), n, w64.err, w64.what.c_str(), w32.err, w32.what.c_str());
}

// Width 128 (forced: the fp32 state does not fit one SM, so W / S / dW spill to the item's global scratch) and the
// longest chunk at width 64 with a long sequence (many segments).
void width128_and_long() {
  const uint64_t seed0 = fresh_seed();
  const std::vector<Case> big = {
      {1, 40, 128, 128, 8, 0, true, true, true, false, 0},
      {2, 60, 128, 128, 16, 24, true, true, true, true, 0},
      {1, 1000, 64, 64, 8, 0, true, true, true, false, 0},  // 125 chunks, segments of 12
  };
  Worst w64, w32;
  int n = 0;
  for (const Case& c : big) {
    const uint64_t seed = seed0 + uint64_t(n++);
    const auto x = make_inputs(c, seed);
    const auto ref = run<double>(c, x, Where::Cpu);
    const std::string tag = c.name() + " (seed " + std::to_string(seed) + ")";
    check(run<double>(c, x, Where::Persistent), ref, 1e-12, false, tag + " fp64", w64);
    check(run<float>(c, x, Where::Persistent), ref, 1e-4, true, tag + " fp32", w32);
  }
  std::printf("titans persistent %s width 128 / long: worst fp64 %.3g (%s), worst fp32 %.3g (%s)\n",
              titans::persistent_variant_name(tested_variant), w64.err, w64.what.c_str(), w32.err, w32.what.c_str());
}

// bf16 products (v2) against float64 on the CPU, ||got - ref|| / ||ref|| <= 2e-2 for every output, or 2x the
// error of the CPU twin with bf16-rounded product operands where that is larger (the gate gradients are sums of
// cancelling terms: the emulated kernels measured 1.1e-2 on grad_eta, fixed seeds), on the cases, the width-128
// ones and the long sequence (125 chunks: rounding carried through the state); the fp32 kernels' error on the
// same inputs printed beside it. The rounding must show (over 1e-4 somewhere; fp32 stays < 1e-6), so that a path
// silently running fp32 products fails.
void bf16_matches_reference() {
  const uint64_t seed0 = fresh_seed();
  std::vector<Case> all = cases();
  all.push_back({1, 40, 128, 128, 8, 0, true, true, true, false, 0});
  all.push_back({2, 60, 128, 128, 16, 24, true, true, true, true, 0});
  all.push_back({1, 1000, 64, 64, 8, 0, true, true, true, false, 0});
  Worst w16, w32;
  int n = 0, by_yardstick = 0;
  for (const Case& c : all) {
    const uint64_t seed = seed0 + uint64_t(n++);
    const auto x = make_inputs(c, seed);
    const auto ref = run<double>(c, x, Where::Cpu);
    const std::string tag = c.name() + " (seed " + std::to_string(seed) + ")";
    std::vector<std::vector<float>> yardstick;
    {
      BF16OperandsEmulation emulate;
      yardstick = run<float>(c, x, Where::Cpu);
    }
    tested_bf16 = true;
    check(run<float>(c, x, Where::Persistent), ref, 2e-2, false, tag + " bf16", w16, &yardstick, &by_yardstick);
    tested_bf16 = false;
    check(run<float>(c, x, Where::Persistent), ref, 1e-4, false, tag + " fp32", w32);
  }
  EXPECT_GT(w16.err, 1e-4) << "no bf16 rounding visible: did the tensor-core products run?";
  std::printf("titans persistent %s bf16 products vs CPU float64 (relative L2, bound 2e-2): %d configs, worst %.3g "
              "(%s), %d outputs over 2e-2 held to 2x the CPU bf16-operand twin's error; fp32 products on the same "
              "inputs: worst %.3g (%s)\n",
              titans::persistent_variant_name(tested_variant), n, w16.err, w16.what.c_str(), by_yardstick, w32.err,
              w32.what.c_str());
}

// The batched path (cuBLAS products, element kernels) with its products on tensor cores, against float64 on the
// CPU: bf16 operands (CUBLAS_COMPUTE_32F_FAST_16BF) held as the persistent bf16 kernels are (2e-2 relative L2, or
// 2x the CPU bf16-operand twin's error where larger), tf32 operands (CUBLAS_COMPUTE_32F_FAST_TF32) to 2e-2 alone;
// on the cases, the chunk sizes of the 87M configs (C = 64, TNT local 64 with shards and Q-K projection, and a long
// chunk as TNT's global memory) and a long sequence. The rounding must show (fp32 products stay < 1e-6).
void batched_tensor_cores_match_reference() {
  const uint64_t seed0 = fresh_seed();
  std::vector<Case> all = cases();
  //              B   T    d   dh  C    S    mom   decay res   qk    seg
  all.push_back({2, 640, 64, 64, 64, 0, true, true, true, false, 0});     // Titans C = 64, 10 chunks
  all.push_back({2, 600, 64, 64, 64, 256, true, true, true, true, 0});    // TNT local 64: shards of 256, Q-K
  all.push_back({2, 600, 64, 64, 256, 0, true, true, true, false, 0});    // a long chunk (TNT global)
  all.push_back({1, 2000, 64, 64, 16, 0, true, true, true, false, 0});    // 125 chunks
  Worst w16, wtf, w32;
  int n = 0, by_yardstick = 0;
  for (const Case& c : all) {
    const uint64_t seed = seed0 + uint64_t(n++);
    const auto x = make_inputs(c, seed);
    const auto ref = run<double>(c, x, Where::Cpu);
    const std::string tag = c.name() + " (seed " + std::to_string(seed) + ")";
    std::vector<std::vector<float>> yardstick;
    {
      BF16OperandsEmulation emulate;
      yardstick = run<float>(c, x, Where::Cpu);
    }
    tested_bf16 = true;
    check(run<float>(c, x, Where::Batched), ref, 2e-2, false, tag + " batched bf16", w16, &yardstick, &by_yardstick);
    tested_bf16 = false;
    tested_tf32 = true;
    check(run<float>(c, x, Where::Batched), ref, 2e-2, false, tag + " batched tf32", wtf);
    tested_tf32 = false;
    check(run<float>(c, x, Where::Batched), ref, 1e-4, false, tag + " batched fp32", w32);
  }
  EXPECT_GT(w16.err, 1e-4) << "no bf16 rounding visible: did the tensor-core products run?";
  EXPECT_GT(wtf.err, 1e-6) << "no tf32 rounding visible: did the tensor-core products run?";
  EXPECT_LT(w32.err, 1e-5);
  std::printf("titans batched path vs CPU float64 (relative L2, bound 2e-2): %d configs; bf16 products worst %.3g (%s), "
              "%d outputs over 2e-2 held to 2x the CPU bf16-operand twin's error; tf32 products worst %.3g (%s); fp32 "
              "products worst %.3g (%s)\n",
              n, w16.err, w16.what.c_str(), by_yardstick, wtf.err, wtf.what.c_str(), w32.err, w32.what.c_str());
}

// Runs body with tested_variant = v (restored after).
template <class F>
void with_variant(titans::PersistentVariant v, F body) {
  tested_variant = v;
  body();
  tested_variant = titans::PersistentVariant::V1;
  tested_bf16 = false;
  tested_tf32 = false;
}

}  // namespace

TEST(CudaTitansPersistent, Float64MatchesCpuTwin) {
  REQUIRE_CUDA();
  with_variant(titans::PersistentVariant::V1, float64_matches_twin);
}
TEST(CudaTitansPersistent, Float32MatchesCpuReference) {
  REQUIRE_CUDA();
  with_variant(titans::PersistentVariant::V1, float32_matches_reference);
}
TEST(CudaTitansPersistent, MatchesBatchedPath) {
  REQUIRE_CUDA();
  with_variant(titans::PersistentVariant::V1, matches_batched);
}
TEST(CudaTitansPersistent, Width128AndLongSequence) {
  REQUIRE_CUDA();
  with_variant(titans::PersistentVariant::V1, width128_and_long);
}
TEST(CudaTitansPersistent, V2Float64MatchesCpuTwin) {
  REQUIRE_CUDA();
  with_variant(titans::PersistentVariant::V2, float64_matches_twin);
}
TEST(CudaTitansPersistent, V2Float32MatchesCpuReference) {
  REQUIRE_CUDA();
  with_variant(titans::PersistentVariant::V2, float32_matches_reference);
}
TEST(CudaTitansPersistent, V2MatchesBatchedPath) {
  REQUIRE_CUDA();
  with_variant(titans::PersistentVariant::V2, matches_batched);
}
TEST(CudaTitansPersistent, V2Width128AndLongSequence) {
  REQUIRE_CUDA();
  with_variant(titans::PersistentVariant::V2, width128_and_long);
}

TEST(CudaTitansPersistent, V2Bf16MatchesCpuReference) {
  REQUIRE_CUDA();
  with_variant(titans::PersistentVariant::V2, bf16_matches_reference);
}
TEST(CudaTitansPersistent, BatchedTensorCoresMatchCpuReference) {
  REQUIRE_CUDA();
  with_variant(titans::PersistentVariant::V2, batched_tensor_cores_match_reference);
}

// The bf16 request where the kernels have no tensor-core products: v1 and float64 keep their exact products and
// say so in the path; v2 float takes them.
TEST(CudaTitansPersistent, Bf16ProductsOnlyWhereImplemented) {
  REQUIRE_CUDA();
  const Case c{2, 64, 64, 64, 8, 0, true, true, true, false, 0};
  cuda::TitansOptions o;
  o.kernel = titans::KernelChoice::Persistent;
  o.bf16_products = true;
  o.variant_set = true;
  o.variant = titans::PersistentVariant::V2;
  EXPECT_NE(cuda::TitansRunner<float>(c.shape(), true, o).path().find(kBf16Path), std::string::npos);
  EXPECT_EQ(cuda::TitansRunner<double>(c.shape(), true, o).path().find(kBf16Path), std::string::npos);
  o.variant = titans::PersistentVariant::V1;
  const std::string v1 = cuda::TitansRunner<float>(c.shape(), true, o).path();
  EXPECT_NE(v1.find("fp32 products (bf16 products need v2)"), std::string::npos) << v1;
}

// v2 against v1 on the same inputs on the device: float64 to rounding, float32 within the fp32 bound.
TEST(CudaTitansPersistent, V2MatchesV1) {
  REQUIRE_CUDA();
  const uint64_t seed0 = fresh_seed();
  Worst w64, w32;
  int n = 0;
  for (const Case& c : cases()) {
    const uint64_t seed = seed0 + uint64_t(n++);
    const auto x = make_inputs(c, seed);
    const std::string tag = c.name() + " (seed " + std::to_string(seed) + ")";
    std::vector<std::vector<double>> v1_64, v2_64;
    std::vector<std::vector<float>> v1_32, v2_32;
    with_variant(titans::PersistentVariant::V1, [&] {
      v1_64 = run<double>(c, x, Where::Persistent);
      v1_32 = run<float>(c, x, Where::Persistent);
    });
    with_variant(titans::PersistentVariant::V2, [&] {
      v2_64 = run<double>(c, x, Where::Persistent);
      v2_32 = run<float>(c, x, Where::Persistent);
    });
    check(v2_64, v1_64, 1e-12, false, tag + " fp64", w64);
    check(v2_32, v1_32, 1e-4, true, tag + " fp32", w32);
  }
  std::printf("titans persistent v2 vs v1: %d configs, worst fp64 %.3g (%s), worst fp32 %.3g (%s)\n", n, w64.err,
              w64.what.c_str(), w32.err, w32.what.c_str());
}

// The automatic choice: width 64 in fp32 runs persistent (the memories), width 384 batched.
TEST(CudaTitansPersistent, AutomaticChoice) {
  REQUIRE_CUDA();
  if (std::getenv("TTT_TITANS_KERNEL")) GTEST_SKIP() << "TTT_TITANS_KERNEL is set: the automatic choice is forced";
  Case c{4, 256, 64, 64, 8, 64, true, true, true, true, 0};
  cuda::TitansRunner<float> small(c.shape(), true);
  EXPECT_TRUE(small.persistent()) << small.path();
  std::printf("d = dh = 64, C = 8, fp32: %s\n", small.path().c_str());
  c.d = c.dh = 384;
  cuda::TitansRunner<float> wide(c.shape(), true);
  EXPECT_FALSE(wide.persistent()) << wide.path();
  std::printf("d = dh = 384: %s\n", wide.path().c_str());
}

namespace {

// The TNT branch (global + local memories with resets and Q-K projection, every memory forced persistent, running
// concurrently on their streams) against the twin on named tensors, in float64; and CUDA graph replay. With
// tested_bf16: float tensors, bf16 products, within 2e-2 (relative L2) of the float64 twin, or 2x the error of the
// twin in float with bf16-rounded product operands where that is larger (as check's yardstick).
titans::KernelChoice tnt_kernel = titans::KernelChoice::Persistent;  // every memory's (restored by the tests)
void tnt_branch_matches_twin() {
  const uint64_t seed = fresh_seed();
  engine::TntOptions opt;
  opt.global_chunk = 32;
  opt.local_chunks = {8, 16};
  opt.shard = 48;
  const int64_t B = 2, T = 150, d = 64;
  const std::vector<int64_t> dh = {64, 64, 32};
  Rng r(seed);
  SafeTensors st;
  auto add = [&](const std::string& name, const Shape& shape, double lo, double hi, bool normal) {
    Tensor t = Tensor::empty(shape, DType::F64);
    for (int64_t i = 0; i < t.numel(); ++i) t.data<double>()[i] = normal ? r.normal() * hi : r.uniform(lo, hi);
    st.add(name, t);
  };
  for (const char* nm : {"q", "k", "v"}) add(nm, {B, T, d}, 0, 1.0 / std::sqrt(double(d)), true);
  for (size_t m = 0; m < 3; ++m) {
    const std::string p = m == 0 ? "g_" : "l" + std::to_string(m - 1) + "_";
    add(p + "w1", {B, dh[m], d}, 0, 1.0 / std::sqrt(double(d)), true);
    add(p + "w2", {B, d, dh[m]}, 0, 1.0 / std::sqrt(double(dh[m])), true);
    add(p + "theta", {B, T}, 0.01, 0.1, false);
    add(p + "eta", {B, T}, 0.3, 0.9, false);
    add(p + "alpha", {B, T}, 0.01, 0.1, false);
  }
  add("grad_o", {B, T, d}, 0, 1.0, true);
  const SafeTensors ref = titans::tnt_op(st, opt, titans::tnt_twin_runner());
  SafeTensors in = st;
  if (tested_bf16 || tested_tf32)
    for (auto& [name, t] : in.tensors) t = t.to(DType::F32);
  const double tol = tested_bf16 || tested_tf32 ? 2e-2 : 1e-12;
  SafeTensors yardstick;  // bf16: the twin in float with bf16-rounded product operands (see check)
  if (tested_bf16) {
    BF16OperandsEmulation emulate;
    yardstick = titans::tnt_op(in, opt, titans::tnt_twin_runner());
  }
  double worst = 0;
  for (bool graphs : {false, true}) {
    cuda::TitansOptions o;
    o.poison_workspace = true;
    o.kernel = tnt_kernel;
    set_options(o);
    o.graphs = graphs;
    cuda::TntGpuRunner runner(o, graphs ? 3 : 1);
    const SafeTensors got = titans::tnt_op(in, opt, runner);
    ASSERT_EQ(got.tensors.size(), ref.tensors.size());
    for (size_t i = 0; i < ref.tensors.size(); ++i) {
      const auto& [name, t] = ref.tensors[i];
      std::vector<double> a(size_t(t.numel())), b(size_t(t.numel()));
      for (int64_t j = 0; j < t.numel(); ++j) a[size_t(j)] = got.tensors[i].second.get(j), b[size_t(j)] = t.get(j);
      const Err e = compare(a, b);
      double bound = tol;
      if (tested_bf16) {
        std::vector<double> y(size_t(t.numel()));
        for (int64_t j = 0; j < t.numel(); ++j) y[size_t(j)] = yardstick.tensors[i].second.get(j);
        bound = std::max(tol, 2 * compare(y, b).rel2);
      }
      EXPECT_TRUE(e.finite) << name << (graphs ? " (graphs)" : "") << " seed " << seed;
      EXPECT_LE(e.rel2, bound) << name << (graphs ? " (graphs)" : "") << " seed " << seed << ", worst element "
                               << e.worst_at;
      worst = std::max(worst, e.rel2);
    }
  }
  if (tested_bf16) EXPECT_GT(worst, 1e-4) << "no bf16 rounding visible: did the tensor-core products run?";
  if (tested_tf32) EXPECT_GT(worst, 1e-6) << "no tf32 rounding visible: did the tensor-core products run?";
  std::printf("tnt branch (%s %s%s) vs twin float64: worst relative error %.3g (bound %.0e)\n",
              titans::kernel_choice_name(tnt_kernel), titans::persistent_variant_name(tested_variant),
              tested_bf16 ? ", bf16 products" : tested_tf32 ? ", tf32 products" : "", worst, tol);
}

}  // namespace

TEST(CudaTitansPersistent, TntBranchMatchesTwin) {
  REQUIRE_CUDA();
  with_variant(titans::PersistentVariant::V1, tnt_branch_matches_twin);
}
TEST(CudaTitansPersistent, V2TntBranchMatchesTwin) {
  REQUIRE_CUDA();
  with_variant(titans::PersistentVariant::V2, tnt_branch_matches_twin);
}
TEST(CudaTitansPersistent, V2Bf16TntBranchMatchesTwin) {
  REQUIRE_CUDA();
  with_variant(titans::PersistentVariant::V2, [] {
    tested_bf16 = true;
    tnt_branch_matches_twin();
  });
}
// Every memory of the branch on the batched path with its products on tensor cores (bf16, then tf32 operands).
TEST(CudaTitansPersistent, BatchedTensorCoresTntBranchMatchesTwin) {
  REQUIRE_CUDA();
  tnt_kernel = titans::KernelChoice::Batched;
  with_variant(titans::PersistentVariant::V2, [] {
    tested_bf16 = true;
    tnt_branch_matches_twin();
  });
  with_variant(titans::PersistentVariant::V2, [] {
    tested_tf32 = true;
    tnt_branch_matches_twin();
  });
  tnt_kernel = titans::KernelChoice::Persistent;
}

#endif  // TTT_HAVE_CUDA
