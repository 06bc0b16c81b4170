// The persistent Titans kernels' device code (src/backend/cuda/titans_persistent_kernels.cuh) run on the CPU by
// the block emulation of tests/block_emulation.h (a std::thread per CUDA thread, barriers for __syncthreads, a
// per-warp exchange for warp_sum, shared memory and every work buffer filled with NaN first), driven as
// PersistentMemory drives it (the plan's layout, checkpoints every K chunks, segment slots, the items' dW summed by
// fn::ReduceItems), against the CPU twin titans::memory_cpu: float64 to <= 1e-12 relative, float32 against
// float64 to <= 1e-4 (max abs difference / max abs reference), every output and gradient. This checks the
// kernels' logic (indexing, phase order, aliasing, resets, segments, spilled buffers) on every build, without a
// GPU; the GPU tests (test_cuda_titans_persistent.cpp) check the compiled kernels. Some memories read Q-K
// projected queries (TNT's local memories), projected inside the kernels. Both kernel variants (v1, v2) run; the
// emulation makes v2's asynchronous copies at the issuing thread's wait, so a read before the wait shows, and
// counts threads that end with copies never waited for (must be none). v2's bf16 kernels (products on tensor
// cores, mma_bf16's CPU twin in the emulation) are held to the suite's bf16 bound, 2e-2 relative (L2) to the
// float64 twin, and their product (gemm_mma_bf16) to a direct sum of bf16-rounded products, bit for bit.
#include <gtest/gtest.h>

#include "titans_test_util.h"
#include "block_emulation.h"  // first: the surface the device code is written against

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cuda/titans_persistent_kernels.cuh"
#include "backend/cuda/titans_persistent_kernels_v2.cuh"
#include "core/blas.h"  // BF16OperandsEmulation
#include "core/rng.h"
#include "ttt/titans_fused.h"

using namespace ttt;

namespace {

// Two warps: the warp-per-row loops wrap at small row counts (FullBlock runs the device's 512).
unsigned emulated_threads = 64;

struct Case {
  test::TitansCase m;
  size_t smem;  // shared memory the plan may use (small: buffers spill to the global scratch)
  std::string name() const { return m.name() + "_smem" + std::to_string(smem); }
  titans::MemoryShape shape() const { return m.shape(); }
};

// The persistent path of one memory on host arrays, as PersistentMemory::forward / backward run it.
titans::PersistentVariant emulated_variant = titans::PersistentVariant::V1;
bool emulated_bf16 = false;  // v2's float kernels with bf16 tensor-core products

// The forward or backward kernel of the emulated variant (titans_persistent.cu's choice; on_chip: the block
// layout's all_on_chip).
template <class T>
void (*emulated_kernel(bool backward, bool on_chip))(cuda::persistent::Args<T>) {
  using namespace cuda::persistent;
  if (emulated_variant == titans::PersistentVariant::V1)
    return backward ? k_titans_persistent_bwd<T> : k_titans_persistent_fwd<T>;
  if constexpr (sizeof(T) == 4)
    if (emulated_bf16) {
      if (on_chip)
        return backward ? k_titans_persistent_bwd_v2<T, true, true> : k_titans_persistent_fwd_v2<T, true, true>;
      return backward ? k_titans_persistent_bwd_v2<T, true> : k_titans_persistent_fwd_v2<T, true>;
    }
  return backward ? k_titans_persistent_bwd_v2<T> : k_titans_persistent_fwd_v2<T>;
}

template <class T>
void emulate(const titans::MemoryShape& s, const titans::MemoryInputs<T>& in, T* o, const T* go,
             const titans::MemoryGrads<T>& g, size_t smem) {
  const titans::PersistentPlan plan =
      titans::plan_persistent(s, sizeof(T), smem, titans::KernelChoice::Persistent, emulated_variant);
  ASSERT_TRUE(plan.persistent) << plan.reason;
  const int unwaited_before = block_emulation::unwaited_copies.load();
  const int64_t P = s.P(), P2 = 2 * P;
  const T nan = T(std::nan(""));
  struct PerGroup {
    titans::Group g;
    int64_t K, checkpoints;
    std::vector<T> ckW, ckS, slotW, slotS, dW, scratch_fwd, scratch_bwd, qk_z, qk_dz;
  };
  std::vector<T> qt(size_t(s.B * s.T * s.d), nan), dqt(size_t(s.B * s.T * s.d), nan);  // q̃ and its gradient
  std::vector<PerGroup> groups;
  for (const titans::Group& gr : titans::make_groups(s.B, s.T, s.period)) {
    PerGroup pg;
    pg.g = gr;
    const int64_t N = titans::num_chunks(gr.len, s.chunk);
    pg.K = std::min(plan.segment, N);
    pg.checkpoints = titans::num_chunks(N, pg.K);
    auto buf = [&](int64_t n) { return std::vector<T>(size_t(std::max<int64_t>(n, 1)), nan); };
    pg.ckW = buf(gr.items * pg.checkpoints * P2);
    pg.ckS = buf(s.momentum ? gr.items * pg.checkpoints * P2 : 0);
    pg.slotW = buf(gr.items * pg.K * P2);
    pg.slotS = buf(s.momentum ? gr.items * pg.K * P2 : 0);
    pg.dW = buf(gr.items * P2);
    pg.scratch_fwd = buf(gr.items * plan.fwd.scratch_elements);
    pg.scratch_bwd = buf(gr.items * plan.bwd.scratch_elements);
    pg.qk_z = buf(gr.items * N);
    pg.qk_dz = buf(gr.items * N);
    groups.push_back(std::move(pg));
  }
  auto args = [&](PerGroup& pg, const titans::BlockLayout& L, std::vector<T>& scratch) {
    cuda::persistent::Args<T> a{};
    a.g = pg.g;
    a.d = int(s.d);
    a.dh = int(s.dh);
    a.C = int(s.chunk);
    a.K = int(pg.K);
    a.momentum = s.momentum;
    a.decay = s.decay;
    a.residual = s.residual;
    a.save = true;
    a.qk = s.qk;
    a.q = s.qk ? qt.data() : in.q;
    a.q_in = in.q;
    a.qt = qt.data();
    a.qk_z = pg.qk_z.data();
    a.qk_dz = pg.qk_dz.data();
    a.k = in.k;
    a.v = in.v;
    a.w1 = in.w1;
    a.w2 = in.w2;
    a.theta = in.theta;
    a.eta = in.eta;
    a.alpha = in.alpha;
    a.checkpoints = pg.checkpoints;
    a.ckW = pg.ckW.data();
    a.ckS = s.momentum ? pg.ckS.data() : nullptr;
    a.slotW = pg.slotW.data();
    a.slotS = s.momentum ? pg.slotS.data() : nullptr;
    a.dW_items = pg.dW.data();
    a.scratch = scratch.data();
    a.scratch_per_item = L.scratch_elements;
    for (int i = 0; i < titans::kNumBuffers; ++i) {
      a.offset[i] = L.buf[size_t(i)].offset;
      a.shared[i] = L.buf[size_t(i)].shared;
    }
    a.scalar_bytes = int(L.scalar_bytes);
    a.chunk_rows = int(plan.chunk_rows);
    return a;
  };
  for (PerGroup& pg : groups) {
    cuda::persistent::Args<T> a = args(pg, plan.fwd, pg.scratch_fwd);
    a.o = o;
    block_emulation::launch(emulated_kernel<T>(false, plan.fwd.all_on_chip), unsigned(pg.g.items), emulated_threads,
                            plan.fwd.shared_bytes, a);
  }
  std::fill(g.w1, g.w1 + s.B * P, T(0));
  std::fill(g.w2, g.w2 + s.B * P, T(0));
  for (PerGroup& pg : groups) {
    cuda::persistent::Args<T> a = args(pg, plan.bwd, pg.scratch_bwd);
    a.go = go;
    a.gq = s.qk ? dqt.data() : g.q;
    a.gq_final = g.q;
    a.gk = g.k;
    a.gv = g.v;
    a.gtheta = g.theta;
    a.geta = g.eta;
    a.galpha = g.alpha;
    block_emulation::launch(emulated_kernel<T>(true, plan.bwd.all_on_chip), unsigned(pg.g.items), emulated_threads,
                            plan.bwd.shared_bytes, a);
    const titans::fn::ReduceItems<T> reduce{pg.dW.data(), g.w1, g.w2, pg.g, P};
    for (int64_t i = 0; i < (pg.g.items / pg.g.per_b) * P2; ++i) reduce(i);
  }
  EXPECT_EQ(block_emulation::unwaited_copies.load(), unwaited_before) << "threads ended with copies not waited for";
}

const char* kNames[9] = {"o", "grad_q", "grad_k", "grad_v", "grad_w1", "grad_w2", "grad_theta", "grad_eta",
                         "grad_alpha"};

template <class T>
std::vector<std::vector<T>> run(const Case& c, const std::vector<std::vector<double>>& x, bool emulated) {
  std::vector<std::vector<T>> in;
  for (const auto& v : x) in.emplace_back(v.begin(), v.end());
  const size_t BTd = size_t(c.m.B * c.m.T * c.m.d), P = size_t(c.m.B * c.m.d * c.m.dh), BT = size_t(c.m.B * c.m.T);
  std::vector<std::vector<T>> out(9);
  const T nan = T(std::nan(""));
  for (int i : {0, 1, 2, 3}) out[size_t(i)].assign(BTd, nan);
  for (int i : {4, 5}) out[size_t(i)].assign(P, nan);
  for (int i : {6, 7, 8}) out[size_t(i)].assign(BT, nan);
  titans::MemoryInputs<T> mi{in[0].data(), in[1].data(), in[2].data(), in[3].data(),
                             in[4].data(), in[5].data(), in[6].data(), in[7].data()};
  titans::MemoryGrads<T> mg{out[1].data(), out[2].data(), out[3].data(), out[4].data(), out[5].data(),
                            out[6].data(), out[7].data(), out[8].data()};
  if (emulated)
    emulate<T>(c.shape(), mi, out[0].data(), in[8].data(), mg, c.smem);
  else
    titans::memory_cpu<T>(c.shape(), mi, out[0].data(), in[8].data(), &mg);
  return out;
}

template <class A>
void check(const std::vector<std::vector<A>>& got, const std::vector<std::vector<double>>& ref, double tol,
           bool use_max, const std::string& tag, double& worst, std::string& worst_what) {
  for (int t = 0; t < 9; ++t) {
    const auto& a = got[size_t(t)];
    const auto& r = ref[size_t(t)];
    double num = 0, den = 0, mx = 0, mref = 0;
    size_t at = 0, bad = 0;
    bool finite = true;
    for (size_t i = 0; i < r.size(); ++i) {
      const double x = double(a[i]), y = r[i];
      if (!std::isfinite(x)) {
        if (finite) bad = i;
        finite = false;
        continue;
      }
      num += (x - y) * (x - y);
      den += y * y;
      if (std::abs(x - y) >= mx) mx = std::abs(x - y), at = i;
      mref = std::max(mref, std::abs(y));
    }
    EXPECT_TRUE(finite) << tag << " " << kNames[t] << ": NaN/Inf, first at element " << bad;
    if (!finite) continue;
    const double e = use_max ? (mref == 0 ? mx : mx / mref) : (den == 0 ? std::sqrt(num) : std::sqrt(num / den));
    EXPECT_LE(e, tol) << tag << " " << kNames[t] << ": largest difference at element " << at << " (got "
                      << double(a[at]) << ", reference " << r[at] << ")";
    if (e > worst) worst = e, worst_what = tag + " " + kNames[t];
  }
}

std::vector<std::vector<double>> inputs(const Case& c, uint64_t seed) {
  Rng r(seed);
  const int64_t BTd = c.m.B * c.m.T * c.m.d, P = c.m.B * c.m.d * c.m.dh, BT = c.m.B * c.m.T;
  auto normal = [&](int64_t k, double sd) {
    std::vector<double> v(static_cast<size_t>(k));
    for (auto& e : v) e = double(float(r.normal() * sd));
    return v;
  };
  auto uniform = [&](int64_t k, double lo, double hi) {
    std::vector<double> v(static_cast<size_t>(k));
    for (auto& e : v) e = double(float(r.uniform(lo, hi)));
    return v;
  };
  const double sd = 1.0 / std::sqrt(double(c.m.d));
  return {normal(BTd, sd), normal(BTd, sd), normal(BTd, sd), normal(P, sd), normal(P, 1.0 / std::sqrt(double(c.m.dh))),
          uniform(BT, 0.01, 0.1), uniform(BT, 0.3, 0.9), uniform(BT, 0.01, 0.1), normal(BTd, 1.0)};
}

constexpr size_t kBig = 232448;  // an H200's opt-in shared memory per block

// The cases of both variants: every feature, odd widths, spilled buffers, widths 64 and 128.
std::vector<Case> twin_cases() {
  return {
      // B  T   d   dh  C   S   mom    decay  res    qk     seg smem
      {{2, 37, 5, 7, 3, 0, true, true, true, false, 0}, kBig},      // odd widths, T % C != 0
      {{2, 40, 6, 4, 8, 13, false, true, false, true, 2}, kBig},    // shards of 13 (tail), Q-K, no momentum, segments of 2
      {{3, 40, 6, 6, 4, 16, true, false, true, true, 3}, kBig},     // shards dividing T, Q-K, no decay
      {{2, 30, 5, 6, 3, 0, false, false, true, false, 1}, kBig},    // no gates; every state recomputed from itself
      {{1, 50, 8, 12, 4, 0, true, true, true, true, 4}, 3000},      // buffers spill to the global scratch; Q-K, no reset
      {{2, 36, 64, 64, 8, 18, true, true, true, true, 0}, kBig},    // width 64 (the heads), shards of 18, Q-K
      {{1, 24, 64, 64, 8, 0, true, true, true, false, 0}, kBig},    // width 64 without Q-K
      {{1, 20, 128, 128, 8, 12, true, true, false, true, 0}, kBig}, // width 128 (its state spills), shards, Q-K
  };
}

// Every case of twin_cases on the emulated kernels of `variant`, float64 and float32, against the CPU twin.
void match_twin(titans::PersistentVariant variant) {
  emulated_variant = variant;
  const std::vector<Case> cases = twin_cases();
  double w64 = 0, w32 = 0;
  std::string what64, what32;
  uint64_t seed = 1234;
  for (const Case& c : cases) {
    const auto x = inputs(c, ++seed);
    const auto ref = run<double>(c, x, false);
    const std::string tag = c.name() + " (seed " + std::to_string(seed) + ")";
    check(run<double>(c, x, true), ref, 1e-12, false, tag + " fp64", w64, what64);
    check(run<float>(c, x, true), ref, 1e-4, true, tag + " fp32", w32, what32);
  }
  emulated_variant = titans::PersistentVariant::V1;
  std::printf("persistent kernels %s emulated on the CPU vs CPU twin: %zu configs, worst fp64 relative error %.3g "
              "(%s), worst fp32 max-abs relative error %.3g (%s)\n",
              titans::persistent_variant_name(variant), cases.size(), w64, what64.c_str(), w32, what32.c_str());
}

// One small case with every feature on the device's block size of `variant`.
void full_block(titans::PersistentVariant variant) {
  const Case c{1, 20, 12, 10, 4, 9, true, true, true, true, 2, kBig};
  emulated_variant = variant;
  emulated_threads = unsigned(titans::persistent_threads(variant));
  const auto x = inputs(c, 99);
  const auto ref = run<double>(c, x, false);
  double worst = 0;
  std::string what;
  check(run<double>(c, x, true), ref, 1e-12, false,
        c.name() + " fp64, " + std::to_string(emulated_threads) + " threads", worst, what);
  std::printf("persistent kernels %s emulated with %u threads: worst fp64 relative error %.3g (%s)\n",
              titans::persistent_variant_name(variant), emulated_threads, worst, what.c_str());
  emulated_threads = 64;
  emulated_variant = titans::PersistentVariant::V1;
}

}  // namespace

TEST(TitansPersistentEmulated, MatchesCpuTwin) { match_twin(titans::PersistentVariant::V1); }

// v2 (merged phases, staged rows, asynchronous copies, deferred momentum adjoint): the same cases and bounds.
TEST(TitansPersistentEmulated, V2MatchesCpuTwin) { match_twin(titans::PersistentVariant::V2); }

// The backward's two ways to its states: every state kept by the forward (K = 1, the default when they fit in
// MemoryShape::persistent_state_budget_bytes: one walk, no recomputation) and segments (every K-th kept, the
// others recomputed from it). The recomputation runs the forward's own step on the same values, so both give the
// same bits, in fp32 and with bf16 products, both variants; a segmented run must differ from nothing else.
TEST(TitansPersistentEmulated, KeptStatesGiveTheSegmentsBits) {
  const std::vector<test::TitansCase> shapes = {
      {2, 40, 6, 5, 4, 0, true, true, true, false},  // momentum: S walks back too
      {2, 36, 8, 8, 3, 18, false, true, true, true},  // no momentum, shards, Q-K projection
  };
  int compared = 0;
  for (const auto variant : {titans::PersistentVariant::V1, titans::PersistentVariant::V2}) {
    for (const bool bf16 : {false, true}) {
      if (bf16 && variant == titans::PersistentVariant::V1) continue;
      emulated_variant = variant;
      emulated_bf16 = bf16;
      for (const test::TitansCase& m : shapes) {
        Case kept{m, kBig}, segments{m, kBig};
        kept.m.segment = 1;
        segments.m.segment = 3;
        Case automatic{m, kBig};  // tiny states: under the default budget, so every state is kept
        ASSERT_EQ(titans::plan_persistent(automatic.shape(), 4, kBig, titans::KernelChoice::Persistent, variant).segment, 1);
        const auto x = inputs(kept, 77);
        const auto a = run<float>(kept, x, true), b = run<float>(segments, x, true), c = run<float>(automatic, x, true);
        const std::string tag = kept.name() + " " + titans::persistent_variant_name(variant) + (bf16 ? " bf16" : " fp32");
        for (int t = 0; t < 9; ++t) {
          ASSERT_EQ(a[size_t(t)].size(), b[size_t(t)].size());
          for (size_t i = 0; i < a[size_t(t)].size(); ++i) ASSERT_TRUE(std::isfinite(a[size_t(t)][i])) << tag;
          EXPECT_EQ(0, std::memcmp(a[size_t(t)].data(), b[size_t(t)].data(), a[size_t(t)].size() * sizeof(float)))
              << tag << " " << kNames[t] << ": kept states and segments of 3 differ";
          EXPECT_EQ(0, std::memcmp(a[size_t(t)].data(), c[size_t(t)].data(), a[size_t(t)].size() * sizeof(float)))
              << tag << " " << kNames[t] << ": the default plan and K = 1 differ";
        }
        ++compared;
      }
    }
  }
  emulated_variant = titans::PersistentVariant::V1;
  emulated_bf16 = false;
  std::printf("persistent kernels emulated: kept states vs segments of 3, %d cases bit for bit\n", compared);
}

// The device's block sizes (v1: 512 threads, 16 warps; v2: 256, 8 warps).
TEST(TitansPersistentEmulated, FullBlock) { full_block(titans::PersistentVariant::V1); }
TEST(TitansPersistentEmulated, V2FullBlock) { full_block(titans::PersistentVariant::V2); }

namespace {

// gemm_mma_bf16 on one emulated block of `threads`: out (m x n, NaN first) and how often each element was stored.
struct MmaProduct {
  std::vector<float> out;
  std::vector<int> stores;
};
template <bool TA, bool TB>
MmaProduct mma_product(int m, int n, int k, const std::vector<float>& A, int lda, const std::vector<float>& B, int ldb,
                       unsigned threads, int start) {
  MmaProduct r{std::vector<float>(size_t(m) * n, std::nanf("")), std::vector<int>(size_t(m) * n, 0)};
  std::vector<std::atomic<int>> stores(size_t(m) * n);
  const auto kernel = [&](int) {
    cuda::persistent::gemm_mma_bf16(m, n, k, cuda::persistent::mat<TA>(A.data(), lda),
                                    cuda::persistent::mat<TB>(B.data(), ldb),
                                    [&](int i, int j, float v) {
                                      r.out[size_t(i) * n + j] = v;
                                      ++stores[size_t(i) * n + j];
                                    },
                                    start);
  };
  block_emulation::launch(kernel, 1, threads, 0, 0);
  for (size_t e = 0; e < stores.size(); ++e) r.stores[e] = stores[e].load();
  return r;
}

}  // namespace

// The tensor-core product's fragments (layout, padding of m, n, k to the tiles, the transposed tile for a chunk's
// rows, transposed operands, vector and scalar loads, the start of its work): every element stored once, equal bit
// for bit to the sum of round_to_bf16(op(A)[i, l]) * round_to_bf16(op(B)[l, j]) in float in the fragments' order
// (the products are exact in float and mma_bf16's twin sums them slot by slot, the padding adding zeros). The
// shapes of the chunk steps at d = dh = 64 with C = 8 and 16 take mma_full_tiles (no bounds tests; k = 8 zeroes the
// upper half of its k16 step), the others the tested path.
TEST(TitansPersistentEmulated, MmaProductMatchesBf16Sum) {
  Rng rng(7);
  struct Shape {
    int m, n, k;
  };
  int checked = 0;
  for (const Shape sh : {Shape{8, 64, 64}, Shape{5, 7, 9}, Shape{64, 64, 8}, Shape{3, 64, 12}, Shape{64, 8, 64},
                         Shape{17, 33, 40}, Shape{1, 1, 1}, Shape{8, 12, 10}, Shape{16, 64, 64}, Shape{64, 64, 16}})
    for (const bool ta : {false, true})
      for (const bool tb : {false, true})
        for (const int start : {0, 32}) {
          // Strides of 4k + 1 (scalar loads) and 4k on 16-byte aligned rows (vector loads where the rows run along
          // the reduction), alternating with start.
          const int pad = start ? 0 : 1;
          const int lda = ((ta ? sh.m : sh.k) + 3) / 4 * 4 + pad, ldb = ((tb ? sh.k : sh.n) + 3) / 4 * 4 + pad * 3;
          std::vector<float> A(size_t((ta ? sh.k : sh.m) * lda)), B(size_t((tb ? sh.n : sh.k) * ldb));
          for (float& x : A) x = float(rng.normal());
          for (float& x : B) x = float(rng.normal());
          auto opA = [&](int i, int l) { return ta ? A[size_t(l * lda + i)] : A[size_t(i * lda + l)]; };
          auto opB = [&](int l, int j) { return tb ? B[size_t(j * ldb + l)] : B[size_t(l * ldb + j)]; };
          MmaProduct got;
          if (ta && tb) got = mma_product<true, true>(sh.m, sh.n, sh.k, A, lda, B, ldb, 64, start);
          if (ta && !tb) got = mma_product<true, false>(sh.m, sh.n, sh.k, A, lda, B, ldb, 64, start);
          if (!ta && tb) got = mma_product<false, true>(sh.m, sh.n, sh.k, A, lda, B, ldb, 64, start);
          if (!ta && !tb) got = mma_product<false, false>(sh.m, sh.n, sh.k, A, lda, B, ldb, 64, start);
          for (int i = 0; i < sh.m; ++i)
            for (int j = 0; j < sh.n; ++j) {
              float want = 0.f;  // in the fragments' order: k16 steps, then slots (mma_slot_k)
              for (int l0 = 0; l0 < sh.k; l0 += 16)
                for (int slot = 0; slot < 16; ++slot) {
                  const int l = l0 + cuda::persistent::mma_slot_k(slot);
                  if (l < sh.k) want += round_to_bf16(opA(i, l)) * round_to_bf16(opB(l, j));
                }
              const size_t e = size_t(i) * sh.n + j;
              ASSERT_EQ(got.stores[e], 1) << sh.m << "x" << sh.n << "x" << sh.k << " element " << i << "," << j;
              ASSERT_EQ(got.out[e], want) << sh.m << "x" << sh.n << "x" << sh.k << " ta " << ta << " tb " << tb
                                          << " element " << i << "," << j;
            }
          ++checked;
        }
  EXPECT_EQ(checked, 80);
}

// v2 with bf16 tensor-core products (the kernels `--precision bf16` runs): every case of twin_cases against the
// float64 twin within the suite's bf16 bound (2e-2 relative, L2), at 64 threads and at the device's 256; and the
// error shows the rounding (over 1e-4 somewhere: the fp32 kernels stay under 1e-6), so the bf16 path did run.
TEST(TitansPersistentEmulated, V2Bf16MatchesCpuTwin) {
  emulated_variant = titans::PersistentVariant::V2;
  emulated_bf16 = true;
  double worst = 0, twin_worst = 0;
  std::string what, twin_what;
  uint64_t seed = 4321;
  std::vector<Case> cases = twin_cases();
  cases.push_back({{1, 20, 12, 10, 4, 9, true, true, true, true, 2}, kBig});  // full block below
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    emulated_threads = i + 1 == cases.size() ? unsigned(titans::kPersistentThreadsV2) : 64u;
    const auto x = inputs(c, ++seed);
    const auto ref = run<double>(c, x, false);
    check(run<float>(c, x, true), ref, 2e-2, false,
          c.name() + " (seed " + std::to_string(seed) + ", " + std::to_string(emulated_threads) + " threads) bf16",
          worst, what);
    BF16OperandsEmulation emulate;  // the CPU twin with bf16-rounded product operands: the conditioning, printed
    check(run<float>(c, x, false), ref, 1.0, false, c.name() + " CPU twin, bf16 operands", twin_worst, twin_what);
  }
  emulated_threads = 64;
  emulated_bf16 = false;
  emulated_variant = titans::PersistentVariant::V1;
  EXPECT_GT(worst, 1e-4) << "no bf16 rounding visible: did the tensor-core products run?";
  std::printf("persistent kernels v2 with bf16 tensor-core products emulated on the CPU vs the float64 twin: %zu "
              "configs, worst relative (L2) error %.3g (%s); bound 2e-2; the CPU twin with bf16-rounded product "
              "operands: worst %.3g (%s)\n",
              cases.size(), worst, what.c_str(), twin_worst, twin_what.c_str());
}

// The GPU suite's float64 parity cases (test::persistent_gpu_cases: chunks of 16 and 64, forced segments, plans
// whose chunk buffers spill to the global scratch at d = dh = 64) on v2 at the device's block size (256 threads,
// the compile-time v2_threads() of the device code) and the H200's shared memory, against the float64 twin. The
// device crashed on these (CudaTitansPersistent.V2Float64MatchesCpuTwin, cudaErrorIllegalAddress, branch
// h-pers-wip); this shows the kernels' indexing at that block size in range and correct on the CPU.
TEST(TitansPersistentEmulated, V2GpuCasesAtFullBlock) {
  emulated_variant = titans::PersistentVariant::V2;
  emulated_threads = unsigned(titans::kPersistentThreadsV2);
  double worst = 0;
  std::string what;
  uint64_t seed = 777;
  for (const test::TitansCase& m : test::persistent_gpu_cases()) {
    const Case c{m, kBig};
    const auto x = inputs(c, ++seed);
    check(run<double>(c, x, true), run<double>(c, x, false), 1e-12, false,
          c.name() + " (seed " + std::to_string(seed) + ") fp64, 256 threads", worst, what);
  }
  emulated_threads = 64;
  emulated_variant = titans::PersistentVariant::V1;
  std::printf("persistent kernels v2 emulated with 256 threads on the GPU suite's cases: worst fp64 relative error "
              "%.3g (%s)\n", worst, what.c_str());
}
