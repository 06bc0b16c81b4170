// The host-side planning of the persistent Titans kernels (backend/titans_persistent_plan.h): which path a memory
// takes, the shared memory of its blocks, where every on-chip buffer lives (no overlap, inside the launch's shared
// memory or the item's scratch, the priority order kept), the segment length, the kernel switch's parsing and
// `ttt bench tnt`'s flags for it. Plain host code: runs on every build.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "backend/titans_persistent_plan.h"
#include "cli_test_util.h"
#include "expect_error.h"

using namespace ttt;
using titans::KernelChoice;

namespace {

constexpr size_t kH200Smem = 232448;  // opt-in shared memory per block of an H100 / H200 (227 KB)
// The tests written for v1's layout ask for it by name (v2 is the default: its own tests follow them).
constexpr titans::PersistentVariant kV1 = titans::PersistentVariant::V1;

titans::MemoryShape shape(int64_t d, int64_t dh, int64_t C, int64_t T = 8192, int64_t period = 0, bool momentum = true) {
  titans::MemoryShape s;
  s.B = 48;
  s.T = T;
  s.d = d;
  s.dh = dh;
  s.chunk = C;
  s.period = period;
  s.momentum = momentum;
  return s;
}

// Every used buffer has its size; the shared ones lie inside the launch's shared memory after the scalars and do
// not overlap, the spilled ones inside the scratch and do not overlap; once one spills, every later one does.
void check_layout(const titans::BlockLayout& L, const titans::MemoryShape& s, size_t elem, bool backward,
                  size_t limit, const std::string& tag,
                  titans::PersistentVariant variant = titans::PersistentVariant::V1) {
  const bool v2 = variant == titans::PersistentVariant::V2;
  const int64_t longest = s.period > 0 && s.period < s.T ? s.period : s.T;
  const int64_t Cr = std::min(s.chunk, longest), state = titans::padded_state_elements(s);
  std::vector<std::pair<int64_t, int64_t>> shared, global;
  for (int b = 0; b < titans::kNumBuffers; ++b) {
    const titans::BufferPlace& p = L.buf[size_t(b)];
    const std::string what = tag + " buffer " + titans::persistent_buffer_name(b);
    if (!p.used) continue;
    const bool is_state = b == titans::kW || b == titans::kS || b == titans::kGradW || b == titans::kGradS ||
                          b == titans::kCot || b == titans::kWnext;
    const bool rows_d = b == titans::kE || b == titans::kBm || b == titans::kGradB || b == titans::kGradE ||
                        b == titans::kQt;
    const bool stage = b == titans::kStage0 || b == titans::kStage1;
    EXPECT_EQ(p.elements, b == titans::kQk ? s.d * s.d
                          : is_state       ? state
                          : stage          ? titans::stage_elements(Cr, s.d)
                                           : Cr * (rows_d ? s.d : s.dh))
        << what;
    (p.shared ? shared : global).push_back({p.offset, p.offset + p.elements});
    if (p.shared)
      EXPECT_LE(L.scalar_bytes + size_t(p.offset + p.elements) * elem, L.shared_bytes) << what;
    else
      EXPECT_LE(p.offset + p.elements, L.scratch_elements) << what;
  }
  for (auto* v : {&shared, &global}) {
    std::sort(v->begin(), v->end());
    for (size_t i = 1; i < v->size(); ++i) EXPECT_LE((*v)[i - 1].second, (*v)[i].first) << tag << ": buffers overlap";
  }
  EXPECT_LE(L.shared_bytes, limit) << tag;
  EXPECT_EQ(L.all_on_chip, global.empty()) << tag;
  // The buffers each direction needs.
  EXPECT_TRUE(L.buf[titans::kW].used && L.buf[titans::kZ].used && L.buf[titans::kA].used) << tag;
  EXPECT_EQ(L.buf[titans::kGradW].used, backward) << tag;
  EXPECT_EQ(L.buf[titans::kGradA].used, backward) << tag;
  // v1's backward reads S from global memory; v2's keeps S_c on chip.
  EXPECT_EQ(L.buf[titans::kS].used, (v2 || !backward) && s.momentum) << tag;
  EXPECT_EQ(L.buf[titans::kWnext].used, v2 && backward) << tag;
  EXPECT_EQ(L.buf[titans::kStage0].used && L.buf[titans::kStage1].used, v2) << tag;
  EXPECT_EQ(L.buf[titans::kGradE].used, v2 && backward) << tag;
  EXPECT_EQ(L.buf[titans::kQt].used, v2 && !backward && s.qk) << tag;
  EXPECT_EQ(L.buf[titans::kDS].used, !v2) << tag;  // v2 consumes DS in its product's epilogue
  EXPECT_EQ(L.buf[titans::kGradS].used, backward && s.momentum) << tag;
  EXPECT_EQ(L.buf[titans::kCot].used, backward && !s.momentum) << tag;
  EXPECT_EQ(L.buf[titans::kQk].used, s.qk) << tag;
}

}  // namespace

// The memory (d = dh = 64, MLP, momentum) fits on chip in fp32 at C = 8 and 16, its state at C = 64; the
// automatic choice takes it only up to kPersistentMaxAutoChunk (where it measured faster than the batched path).
TEST(TitansPersistentPlan, Width64Float32RunsPersistent) {
  for (int64_t C : {8, 16, 64}) {
    titans::MemoryShape s = shape(64, 64, C);
    s.qk = C == 16;  // a TNT local memory's Q-K sums fit too
    const titans::PersistentPlan automatic =
        titans::plan_persistent(s, 4, kH200Smem, KernelChoice::Automatic, kV1);
    EXPECT_EQ(automatic.persistent, C <= titans::kPersistentMaxAutoChunk) << automatic.reason;
    const titans::PersistentPlan p =
        titans::plan_persistent(s, 4, kH200Smem, KernelChoice::Persistent, kV1);
    const std::string tag = "C " + std::to_string(C) + ": " + p.reason;
    EXPECT_TRUE(p.persistent) << tag;
    EXPECT_NE(p.reason.find("persistent"), std::string::npos) << tag;
    EXPECT_EQ(p.threads, titans::kPersistentThreads);
    EXPECT_EQ(p.chunk_rows, C);
    // 48 items x 8192 / C chunks x (W, S) of 32 KB: 3.2 GB at C = 8, under the 4 GiB default: every state kept.
    EXPECT_EQ(p.segment, 1) << tag;
    EXPECT_NE(p.reason.find("every state kept"), std::string::npos) << tag;
    const int64_t N = (8192 + C - 1) / C;
    EXPECT_DOUBLE_EQ(titans::persistent_kept_state_bytes(s, 4), 48.0 * double(N) * 2 * 64 * 64 * 2 * 4) << tag;
    titans::MemoryShape tight = s;  // a budget of 1 GB: C = 8 and 16 recompute segments of sqrt(chunks)
    tight.persistent_state_budget_bytes = 1e9;
    EXPECT_EQ(titans::plan_persistent(tight, 4, kH200Smem, KernelChoice::Persistent, kV1).segment,
              C <= 16 ? int64_t(std::ceil(std::sqrt(double(N)))) : 1)
        << tag;
    EXPECT_TRUE(p.fwd.all_on_chip && p.bwd.state_on_chip) << tag;
    if (C <= 16) EXPECT_TRUE(p.fwd.all_on_chip && p.bwd.all_on_chip) << tag;
    check_layout(p.fwd, s, 4, false, kH200Smem, "fwd " + tag);
    check_layout(p.bwd, s, 4, true, kH200Smem, "bwd " + tag);
  }
}

// v2 at the shapes (d = dh = 64, fp32, C = 8, momentum, with and without the Q-K sums): 256 threads, and
// every buffer of both blocks on chip (the backward's five states, the staging buffers, the chunk buffers), so
// the automatic choice takes it; at C = 16 its state stays on chip.
TEST(TitansPersistentPlan, V2Width64Float32OnChip) {
  const titans::PersistentVariant v2 = titans::PersistentVariant::V2;
  for (int64_t C : {8, 16})
    for (bool qk : {false, true}) {
      titans::MemoryShape s = shape(64, 64, C, 8192, qk ? 2048 : 0);
      s.qk = qk;
      const titans::PersistentPlan p = titans::plan_persistent(s, 4, kH200Smem, KernelChoice::Persistent, v2);
      const std::string tag = "C " + std::to_string(C) + (qk ? " qk: " : ": ") + p.reason;
      EXPECT_TRUE(p.persistent) << tag;
      EXPECT_EQ(p.variant, v2);
      EXPECT_EQ(p.threads, titans::kPersistentThreadsV2);
      EXPECT_NE(p.reason.find("v2"), std::string::npos) << tag;
      EXPECT_TRUE(p.fwd.all_on_chip && p.bwd.state_on_chip) << tag;
      if (C == 8) EXPECT_TRUE(p.bwd.all_on_chip) << tag;
      EXPECT_EQ(titans::plan_persistent(s, 4, kH200Smem, KernelChoice::Automatic, v2).persistent, C <= titans::kPersistentMaxAutoChunk) << tag;
      check_layout(p.fwd, s, 4, false, kH200Smem, "fwd " + tag, v2);
      check_layout(p.bwd, s, 4, true, kH200Smem, "bwd " + tag, v2);
    }
  // Spilled (a small limit, width 128): every buffer still placed, without overlap.
  titans::MemoryShape s = shape(128, 128, 8, 64, 32);
  s.qk = true;
  const titans::PersistentPlan f = titans::plan_persistent(s, 4, kH200Smem, KernelChoice::Persistent, v2);
  EXPECT_TRUE(f.persistent) << f.reason;
  EXPECT_FALSE(f.bwd.state_on_chip);
  check_layout(f.fwd, s, 4, false, kH200Smem, "v2 width 128 fwd", v2);
  check_layout(f.bwd, s, 4, true, kH200Smem, "v2 width 128 bwd", v2);
}

// The variant switch: its parsing and the environment's TTT_PERSISTENT_VARIANT.
TEST(TitansPersistentPlan, VariantParsing) {
  EXPECT_EQ(titans::parse_persistent_variant("v1", "x"), titans::PersistentVariant::V1);
  EXPECT_EQ(titans::parse_persistent_variant("v2", "x"), titans::PersistentVariant::V2);
  for (titans::PersistentVariant v : {titans::PersistentVariant::V1, titans::PersistentVariant::V2})
    EXPECT_EQ(titans::parse_persistent_variant(titans::persistent_variant_name(v), "x"), v);
  test::expect_error([] { titans::parse_persistent_variant("v3", "TTT_PERSISTENT_VARIANT"); },
                     {"TTT_PERSISTENT_VARIANT", "v3", "v1 | v2"});
  const char* old = std::getenv("TTT_PERSISTENT_VARIANT");
  const std::string saved = old ? old : "";
  setenv("TTT_PERSISTENT_VARIANT", "v2", 1);
  EXPECT_EQ(titans::persistent_variant_from_env(), titans::PersistentVariant::V2);
  setenv("TTT_PERSISTENT_VARIANT", "", 1);
  EXPECT_EQ(titans::persistent_variant_from_env(), titans::kDefaultPersistentVariant);
  setenv("TTT_PERSISTENT_VARIANT", "fast", 1);
  test::expect_error([] { titans::persistent_variant_from_env(); }, {"TTT_PERSISTENT_VARIANT", "fast"});
  if (old) setenv("TTT_PERSISTENT_VARIANT", saved.c_str(), 1);
  else unsetenv("TTT_PERSISTENT_VARIANT");
}

// float64 at d = 64 (the parity tests' instantiation) keeps its state on chip too, with v1 (v2's larger backward
// block spills it there: the parity tests force the persistent path).
TEST(TitansPersistentPlan, Width64Float64StateOnChip) {
  const titans::MemoryShape s = shape(64, 64, 8, 256, 64);
  const titans::PersistentPlan p =
      titans::plan_persistent(s, 8, kH200Smem, KernelChoice::Automatic, kV1);
  EXPECT_TRUE(p.persistent) << p.reason;
  EXPECT_TRUE(p.fwd.state_on_chip && p.bwd.state_on_chip) << p.reason;
  check_layout(p.fwd, s, 8, false, kH200Smem, "fwd");
  check_layout(p.bwd, s, 8, true, kH200Smem, "bwd");
}

// Width 128: the fp32 state (W and S: 2 x 129 KB) does not fit one SM; automatic falls back, forcing spills.
TEST(TitansPersistentPlan, Width128FallsBackUnlessForced) {
  const titans::MemoryShape s = shape(128, 128, 8);
  const titans::PersistentPlan a = titans::plan_persistent(s, 4, kH200Smem, KernelChoice::Automatic, kV1);
  EXPECT_FALSE(a.persistent) << a.reason;
  EXPECT_NE(a.reason.find("shared memory"), std::string::npos) << a.reason;
  const titans::PersistentPlan f = titans::plan_persistent(s, 4, kH200Smem, KernelChoice::Persistent, kV1);
  EXPECT_TRUE(f.persistent) << f.reason;
  EXPECT_FALSE(f.bwd.state_on_chip);
  EXPECT_GT(f.bwd.scratch_elements, 0);
  check_layout(f.fwd, s, 4, false, kH200Smem, "forced fwd");
  check_layout(f.bwd, s, 4, true, kH200Smem, "forced bwd");
}

// Long chunks are enough work for the batched products: automatic leaves them there (forcing still works).
TEST(TitansPersistentPlan, LongChunksRunBatched) {
  const titans::PersistentPlan a = titans::plan_persistent(shape(64, 64, 128), 4, kH200Smem, KernelChoice::Automatic, kV1);
  EXPECT_FALSE(a.persistent) << a.reason;
  EXPECT_NE(a.reason.find("chunks of 128"), std::string::npos) << a.reason;
  const titans::PersistentPlan f = titans::plan_persistent(shape(64, 64, 2048), 4, kH200Smem, KernelChoice::Persistent, kV1);
  EXPECT_TRUE(f.persistent) << f.reason;
  EXPECT_FALSE(f.fwd.all_on_chip);
}

TEST(TitansPersistentPlan, WideHeadsAndForcedBatchedRunBatched) {
  const titans::PersistentPlan wide = titans::plan_persistent(shape(384, 384, 8), 4, kH200Smem, KernelChoice::Persistent, kV1);
  EXPECT_FALSE(wide.persistent);
  EXPECT_NE(wide.reason.find("exceed"), std::string::npos) << wide.reason;
  const titans::PersistentPlan forced = titans::plan_persistent(shape(64, 64, 8), 4, kH200Smem, KernelChoice::Batched, kV1);
  EXPECT_FALSE(forced.persistent);
  EXPECT_EQ(forced.reason, "batched (forced)");
  // A device with too little shared memory for the block's scalars.
  const titans::PersistentPlan tiny = titans::plan_persistent(shape(64, 64, 8), 4, 64, KernelChoice::Persistent, kV1);
  EXPECT_FALSE(tiny.persistent) << tiny.reason;
}

// Without momentum: no S forward, the cotangent buffer G backward; the segment length forced by the shape; chunks
// capped by the item length (shards shorter than C).
// `--precision bf16` (titans::use_bf16_products): v2's float plans take the tensor-core products, with the same
// buffers and shared memory; v1, float64 and batched plans keep their products, and the reason says which ran.
TEST(TitansPersistentPlan, Bf16ProductsWhereTheKernelsHaveThem) {
  const titans::MemoryShape s = shape(64, 64, 8, 8192, 2048);
  const titans::PersistentPlan fp32 = titans::plan_persistent(s, 4, kH200Smem, KernelChoice::Automatic, titans::PersistentVariant::V2);
  titans::PersistentPlan bf16 = fp32;
  titans::use_bf16_products(bf16, 4);
  EXPECT_TRUE(bf16.bf16_products);
  EXPECT_FALSE(fp32.bf16_products);
  EXPECT_EQ(bf16.reason, fp32.reason + ", bf16 tensor-core products");
  EXPECT_EQ(bf16.fwd.shared_bytes, fp32.fwd.shared_bytes);
  EXPECT_EQ(bf16.bwd.shared_bytes, fp32.bwd.shared_bytes);
  titans::PersistentPlan v1 = titans::plan_persistent(s, 4, kH200Smem, KernelChoice::Automatic, kV1);
  titans::use_bf16_products(v1, 4);
  EXPECT_FALSE(v1.bf16_products);
  EXPECT_NE(v1.reason.find("fp32 products (bf16 products need v2)"), std::string::npos) << v1.reason;
  titans::PersistentPlan f64 = titans::plan_persistent(s, 8, kH200Smem, KernelChoice::Persistent, titans::PersistentVariant::V2);
  titans::use_bf16_products(f64, 8);
  EXPECT_FALSE(f64.bf16_products);
  EXPECT_NE(f64.reason.find("float64 products"), std::string::npos) << f64.reason;
  titans::PersistentPlan batched = titans::plan_persistent(s, 4, kH200Smem, KernelChoice::Batched, titans::PersistentVariant::V2);
  const std::string why = batched.reason;
  titans::use_bf16_products(batched, 4);
  EXPECT_FALSE(batched.bf16_products);
  EXPECT_EQ(batched.reason, why);
}

TEST(TitansPersistentPlan, LayoutVariants) {
  titans::MemoryShape s = shape(32, 48, 16, 100, 0, false);
  s.segment = 3;
  titans::PersistentPlan p = titans::plan_persistent(s, 8, kH200Smem, KernelChoice::Persistent, kV1);
  EXPECT_TRUE(p.persistent) << p.reason;
  EXPECT_EQ(p.segment, 3);
  check_layout(p.fwd, s, 8, false, kH200Smem, "no momentum fwd");
  check_layout(p.bwd, s, 8, true, kH200Smem, "no momentum bwd");
  titans::MemoryShape t = shape(16, 16, 64, 40, 12, true);
  t.qk = true;  // a local memory: Q-K projected queries, their sums on chip
  p = titans::plan_persistent(t, 4, kH200Smem, KernelChoice::Persistent, kV1);
  check_layout(p.fwd, t, 4, false, kH200Smem, "qk fwd");
  check_layout(p.bwd, t, 4, true, kH200Smem, "qk bwd");
  EXPECT_EQ(p.chunk_rows, 12);  // shards of 12 tokens
  EXPECT_EQ(p.segment, 1);
  // A limit that holds the states but not every chunk buffer: they spill in priority order.
  const titans::MemoryShape u = shape(64, 64, 64);
  const titans::BlockLayout L = titans::persistent_layout(u, 4, 150000, true, titans::kPersistentThreads);
  EXPECT_TRUE(L.state_on_chip);
  EXPECT_FALSE(L.all_on_chip);
  check_layout(L, u, 4, true, 150000, "spilling bwd");
}

TEST(TitansPersistentPlan, KernelChoiceParsing) {
  EXPECT_EQ(titans::parse_kernel_choice("auto", "x"), KernelChoice::Automatic);
  EXPECT_EQ(titans::parse_kernel_choice("persistent", "x"), KernelChoice::Persistent);
  EXPECT_EQ(titans::parse_kernel_choice("batched", "x"), KernelChoice::Batched);
  for (KernelChoice k : {KernelChoice::Automatic, KernelChoice::Persistent, KernelChoice::Batched})
    EXPECT_EQ(titans::parse_kernel_choice(titans::kernel_choice_name(k), "x"), k);
  test::expect_error([] { titans::parse_kernel_choice("fused", "--kernel"); }, {"--kernel", "fused", "auto"});
  const char* old = std::getenv("TTT_TITANS_KERNEL");
  const std::string saved = old ? old : "";
  setenv("TTT_TITANS_KERNEL", "batched", 1);
  EXPECT_EQ(titans::kernel_choice_from_env(), KernelChoice::Batched);
  setenv("TTT_TITANS_KERNEL", "nope", 1);
  test::expect_error([] { titans::kernel_choice_from_env(); }, {"TTT_TITANS_KERNEL", "nope"});
  unsetenv("TTT_TITANS_KERNEL");
  EXPECT_EQ(titans::kernel_choice_from_env(), KernelChoice::Automatic);
  if (old) setenv("TTT_TITANS_KERNEL", saved.c_str(), 1);
}

// TTT_TITANS_SEGMENT forces the persistent backward's segment length K; anything but a non-negative integer is refused,
// naming the variable and the value.
TEST(TitansPersistentPlan, SegmentFromEnvironment) {
  const char* old = std::getenv("TTT_TITANS_SEGMENT");
  const std::string saved = old ? old : "";
  unsetenv("TTT_TITANS_SEGMENT");
  EXPECT_EQ(titans::segment_from_env(), 0);
  setenv("TTT_TITANS_SEGMENT", "32", 1);
  EXPECT_EQ(titans::segment_from_env(), 32);
  setenv("TTT_TITANS_SEGMENT", "0", 1);
  EXPECT_EQ(titans::segment_from_env(), 0);
  for (const char* bad : {"-3", "12abc", "eight", " ", "99999999999999999999999"}) {
    setenv("TTT_TITANS_SEGMENT", bad, 1);
    test::expect_error([] { titans::segment_from_env(); }, {"TTT_TITANS_SEGMENT", bad});
  }
  if (old)
    setenv("TTT_TITANS_SEGMENT", saved.c_str(), 1);
  else
    unsetenv("TTT_TITANS_SEGMENT");
}

// `ttt bench tnt`'s kernel and precision flags: a clear message and a non-zero exit for what it cannot do.
TEST(TitansPersistentPlan, BenchTntFlags) {
  using ttt::test::expect_clean_failure;
  expect_clean_failure("bench tnt --T 16 --kernel fused", "--kernel: 'fused' is not a Titans kernel");
  expect_clean_failure("bench tnt --T 16 --kernel persistent", "needs --device cuda");
  expect_clean_failure("bench tnt --T 16 --precision fp16", "--precision must be fp32, tf32 or bf16");
  expect_clean_failure("bench tnt --T 16 --precision bf16", "--precision bf16 needs --device cuda");
  expect_clean_failure("bench tnt --T 16 --precision tf32", "--precision tf32 needs --device cuda");
}
