// The CUDA Titans memory and TNT branch (src/backend/cuda/titans_cuda.*, tnt_cuda.*) against the CPU twin
// (titans_fused.h, itself checked against the tape engine to ~1e-15 in test_titans_fused.cpp) and against the
// tape engine directly, on fresh random inputs: fp64 on the GPU to <= 1e-10 relative (the same algorithm),
// fp32 on the GPU against float64 on the CPU to <= 1e-4 (max abs difference / max abs reference); every output
// and gradient. Device outputs are filled with NaN before every run and work buffers start as NaN, so an
// element nothing writes (or a read of one) shows. Every test skips, saying why, when the build has no CUDA or
// the machine no usable device.
#include <gtest/gtest.h>

#include "titans_test_util.h"
#include "cuda_test_util.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/safetensors.h"
#include "ttt/titans_fused.h"
#include "ttt/tnt.h"
#ifdef TTT_HAVE_CUDA
#include "backend/cuda/lact_cuda.h"
#include "backend/cuda/titans_persistent.h"  // persistent_smem_limit
#include "backend/cuda/tnt_cuda.h"
#endif

using namespace ttt;

#ifndef TTT_HAVE_CUDA

TEST(CudaTnt, SkippedWithoutCuda) { GTEST_SKIP() << "built without the CUDA toolkit (TTT_HAVE_CUDA unset)"; }

#else

namespace {

titans::TntHostRunner& gpu() {
  static cuda::TntGpuRunner r([] {
    cuda::TitansOptions o;
    o.poison_workspace = true;
    return o;
  }());
  return r;
}

// Named inputs of `op tnt` (F64; rounded to float values when round_to_float).
SafeTensors tnt_inputs(int64_t B, int64_t T, int64_t d, const std::vector<int64_t>& dh, const engine::TntOptions& opt,
                       uint64_t seed, bool round_to_float) {
  Rng r(seed);
  auto add = [&](SafeTensors& st, const std::string& name, const Shape& shape, double lo, double hi, bool normal) {
    Tensor t = Tensor::empty(shape, DType::F64);
    double* p = t.data<double>();
    for (int64_t i = 0; i < t.numel(); ++i) {
      const double x = normal ? r.normal() * hi : r.uniform(lo, hi);
      p[i] = round_to_float ? double(float(x)) : x;
    }
    st.add(name, t);
  };
  SafeTensors st;
  for (const char* nm : {"q", "k", "v"}) add(st, nm, {B, T, d}, 0, 1.0 / std::sqrt(double(d)), true);
  for (size_t m = 0; m < size_t(opt.num_memories()); ++m) {
    const std::string p = opt.use_global && m == 0 ? "g_" : "l" + std::to_string(opt.use_global ? m - 1 : m) + "_";
    add(st, p + "w1", {B, dh[m], d}, 0, 1.0 / std::sqrt(double(d)), true);
    add(st, p + "w2", {B, d, dh[m]}, 0, 1.0 / std::sqrt(double(dh[m])), true);
    add(st, p + "theta", {B, T}, 0.01, 0.1, false);
    add(st, p + "eta", {B, T}, 0.3, 0.9, false);
    add(st, p + "alpha", {B, T}, 0.01, 0.1, false);
  }
  add(st, "grad_o", {B, T, d}, 0, 1.0, true);
  return st;
}
SafeTensors to_f32(const SafeTensors& st) {
  SafeTensors out;
  for (auto& [name, t] : st.tensors) out.add(name, t.to(DType::F32));
  return out;
}

struct Err {
  double rel2 = 0;    // ||a - ref|| / ||ref||
  double relmax = 0;  // max |a - ref| / max |ref|
  bool finite = true;
};
Err compare(const Tensor& a, const Tensor& ref) {
  Err e;
  double num = 0, den = 0, mx = 0, mref = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) {
    const double x = a.get(i), y = ref.get(i);
    if (!std::isfinite(x)) e.finite = false;
    num += (x - y) * (x - y);
    den += y * y;
    mx = std::max(mx, std::abs(x - y));
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
  int configs = 0;
  void see(double e, const std::string& w) {
    if (e > err || std::isnan(e)) err = e, what = w;
  }
};

// Every tensor of got against ref (same names, order and shapes); rel2 (fp64) or relmax (fp32) <= tol.
void check_all(const SafeTensors& got, const SafeTensors& ref, double tol, bool use_max, const std::string& tag,
               Worst& worst) {
  ASSERT_EQ(got.tensors.size(), ref.tensors.size()) << tag;
  // The inputs keep the inner dynamics tame (no divergent memory): the outputs are O(1).
  double omax = 0;
  for (int64_t i = 0; i < ref.get("o").numel(); ++i) omax = std::max(omax, std::abs(ref.get("o").get(i)));
  EXPECT_LT(omax, 100.0) << tag << ": reference output of size " << omax;
  for (size_t i = 0; i < ref.tensors.size(); ++i) {
    const auto& [name, r] = ref.tensors[i];
    ASSERT_EQ(got.tensors[i].first, name) << tag;
    ASSERT_EQ(got.tensors[i].second.shape(), r.shape()) << tag << " " << name;
    const Err e = compare(got.tensors[i].second, r);
    EXPECT_TRUE(e.finite) << tag << " " << name << " holds NaN/Inf";
    const double x = use_max ? e.relmax : e.rel2;
    EXPECT_LE(x, tol) << tag << " " << name;
    worst.see(x, tag + " " + name);
  }
  ++worst.configs;
}

struct BranchCase {
  int64_t B, T, d;
  bool global;
  int64_t global_chunk;
  std::vector<int64_t> locals;
  int64_t shard;
  bool qk;
  std::vector<int64_t> dh;
  engine::TntOptions options() const {
    engine::TntOptions o;
    o.use_global = global;
    o.global_chunk = global ? global_chunk : 2048;
    o.local_chunks = locals;
    o.shard = shard;
    o.qk_proj = qk;
    return o;
  }
  std::string name() const {
    std::string s = "B" + std::to_string(B) + "_T" + std::to_string(T) + "_d" + std::to_string(d) +
                    (global ? "_G" + std::to_string(global_chunk) : "_noG") + "_L";
    for (int64_t c : locals) s += std::to_string(c) + ",";
    return s + "_S" + std::to_string(shard) + (qk ? "_qk" : "");
  }
};

std::vector<BranchCase> branch_cases() {
  return {
      {2, 40, 5, true, 16, {8, 16}, 16, true, {6, 4, 7}},   // the default structure, small
      {2, 37, 6, true, 7, {3, 4}, 12, true, {5, 8, 3}},     // chunks and shard not dividing T
      {3, 37, 4, true, 64, {2}, 13, true, {6, 5}},          // C_G >= T; shard not a multiple of C_L
      {1, 32, 5, false, 0, {3}, 10, true, {7}},             // locals only
      {2, 30, 5, true, 5, {1, 3}, 8, false, {4, 6, 5}},     // C_L = 1, no Q-K projection
      {2, 33, 6, true, 9, {}, 0, true, {6}},                // one memory, never reset (Titans)
      {2, 29, 4, false, 0, {4, 6}, 0, true, {5, 3}},        // locals never reset
      {2, 31, 5, true, 8, {8}, 7, true, {6, 4}},            // shard < chunk
      {3, 96, 16, true, 32, {8, 16}, 32, true, {24, 16, 20}},  // larger widths
  };
}

}  // namespace

TEST(CudaTnt, Device) {
  REQUIRE_CUDA();
  std::printf("cuda device: %s\n", cuda::device_description().c_str());
}

// fp64 on the GPU runs the same algorithm as the CPU twin: agreement to rounding.
TEST(CudaTnt, Float64MatchesCpuTwin) {
  REQUIRE_CUDA();
  const uint64_t seed0 = fresh_seed();
  Worst worst;
  int n = 0;
  for (const BranchCase& c : branch_cases()) {
    const uint64_t seed = seed0 + uint64_t(n++);
    const engine::TntOptions opt = c.options();
    const SafeTensors st = tnt_inputs(c.B, c.T, c.d, c.dh, opt, seed, false);
    const SafeTensors ref = titans::tnt_op(st, opt, titans::tnt_twin_runner());
    const SafeTensors got = titans::tnt_op(st, opt, gpu());
    check_all(got, ref, 1e-10, false, c.name() + " (seed " + std::to_string(seed) + ")", worst);
  }
  std::printf("cuda tnt parity fp64 (GPU vs CPU twin): %d configs, worst relative error %.3g (%s)\n", worst.configs,
              worst.err, worst.what.c_str());
}

// The GPU TitansRunner's chain ends (context parallelism's --cp-global state: entry state in, exit state out, and
// their adjoints) against the CPU twin's, in fp64 on the batched path: a chain cut in two parts with the state
// passed, every output, gradient, exit state and entry adjoint to <= 1e-10 relative; and the parts' results equal
// the whole chain's on the GPU.
TEST(CudaTnt, ChainStateAndAdjointsMatchCpuTwinFloat64) {
  REQUIRE_CUDA();
  const test::ChainData x = test::make_chain_data(fresh_seed());
  const test::MemoryRun twin = [](const titans::MemoryShape& s, const titans::MemoryInputs<double>& in, double* o,
                                  const double* go, const titans::MemoryGrads<double>* g) {
    titans::memory_cpu<double>(s, in, o, go, g);
  };
  const test::MemoryRun gpu_run = [](const titans::MemoryShape& s, const titans::MemoryInputs<double>& in, double* o,
                                     const double* go, const titans::MemoryGrads<double>* g) {
    cuda::TitansOptions opt;
    opt.poison_workspace = true;
    opt.kernel = titans::KernelChoice::Batched;
    cuda::titans_host<double>(s, in, o, go, g, opt);
  };
  const test::ChainSplit whole = test::run_whole_chain(gpu_run, x);
  for (int64_t cut : {4, 12, 20})
    for (int64_t segment : {0, 2}) {
      const test::ChainSplit ref = test::run_chain_in_two(twin, x, cut, segment);
      const test::ChainSplit got = test::run_chain_in_two(gpu_run, x, cut, segment);
      std::string what, what_whole;
      const double err = test::chain_split_error(got, ref, &what, /*crossing=*/true);
      const double err_whole = test::chain_split_error(got, whole, &what_whole);
      std::printf("cuda titans chain in two (cut %lld, segment %lld): GPU vs CPU twin %.3g (%s), GPU parts vs GPU "
                  "whole %.3g (%s)\n",
                  (long long)cut, (long long)segment, err, what.c_str(), err_whole, what_whole.c_str());
      EXPECT_LE(err, 1e-10) << "cut " << cut << ", segment " << segment << ": " << what;
      EXPECT_LE(err_whole, 1e-10) << "cut " << cut << ", segment " << segment << ": " << what_whole;
    }
}

// fp64 on the GPU against the tape engine itself (tnt_cpu_backend).
TEST(CudaTnt, Float64MatchesTapeEngine) {
  REQUIRE_CUDA();
  const uint64_t seed0 = fresh_seed();
  Worst worst;
  int n = 0;
  for (const BranchCase& c : branch_cases()) {
    if (n++ % 3 != 0) continue;
    const uint64_t seed = seed0 + uint64_t(n);
    const engine::TntOptions opt = c.options();
    const SafeTensors st = tnt_inputs(c.B, c.T, c.d, c.dh, opt, seed, false);
    const SafeTensors ref = engine::tnt_cpu_backend().tnt(st, opt);
    const SafeTensors got = engine::tnt_cuda_backend().tnt(st, opt);
    check_all(got, ref, 1e-10, false, c.name() + " (seed " + std::to_string(seed) + ")", worst);
  }
  std::printf("cuda tnt parity fp64 (GPU vs tape engine): %d configs, worst relative error %.3g (%s)\n",
              worst.configs, worst.err, worst.what.c_str());
}

// fp32 on the GPU against float64 on the CPU on the same (fp32-representable) inputs.
TEST(CudaTnt, Float32MatchesCpuReference) {
  REQUIRE_CUDA();
  const uint64_t seed0 = fresh_seed();
  Worst worst;
  int n = 0;
  for (const BranchCase& c : branch_cases()) {
    const uint64_t seed = seed0 + uint64_t(n++);
    const engine::TntOptions opt = c.options();
    const SafeTensors st = tnt_inputs(c.B, c.T, c.d, c.dh, opt, seed, true);
    const SafeTensors ref = titans::tnt_op(st, opt, titans::tnt_twin_runner());
    const SafeTensors got = titans::tnt_op(to_f32(st), opt, gpu());
    for (auto& [name, t] : got.tensors) ASSERT_EQ(t.dtype(), DType::F32) << name;
    check_all(got, ref, 1e-4, true, c.name() + " (seed " + std::to_string(seed) + ")", worst);
  }
  std::printf("cuda tnt parity fp32 (GPU fp32 vs CPU float64; max abs diff / max abs ref): %d configs, worst %.3g "
              "(%s)\n",
              worst.configs, worst.err, worst.what.c_str());
}

namespace {

using MemCase = test::TitansCase;

// o, grad_q, grad_k, grad_v, grad_w1, grad_w2, grad_theta, grad_eta, grad_alpha
template <class T>
std::vector<std::vector<T>> run_memory(const MemCase& c, const std::vector<std::vector<double>>& x, bool on_gpu) {
  auto cast = [](const std::vector<double>& v) { return std::vector<T>(v.begin(), v.end()); };
  std::vector<std::vector<T>> in;
  for (const auto& v : x) in.push_back(cast(v));
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
  if (on_gpu) {
    cuda::TitansOptions o;
    o.poison_workspace = true;
    cuda::titans_host<T>(c.shape(), mi, out[0].data(), in[8].data(), &mg, o);
  } else {
    titans::memory_cpu<T>(c.shape(), mi, out[0].data(), in[8].data(), &mg);
  }
  return out;
}

template <class T>
Err compare_vec(const std::vector<T>& a, const std::vector<double>& ref) {
  Tensor ta = Tensor::empty({int64_t(a.size())}, DType::F64), tr = Tensor::empty({int64_t(ref.size())}, DType::F64);
  for (size_t i = 0; i < a.size(); ++i) ta.data<double>()[i] = double(a[i]);
  std::copy(ref.begin(), ref.end(), tr.data<double>());
  return compare(ta, tr);
}

}  // namespace

// One memory with every option the twin has (momentum / decay / residual off, forced segment recomputation,
// C = 1, shards not dividing T, Q-K projection), GPU fp64 and fp32 against the float64 twin.
TEST(CudaTnt, TitansMemoryVariantsMatchTwin) {
  REQUIRE_CUDA();
  const uint64_t seed0 = fresh_seed();
  const std::vector<MemCase> cases = {
      {2, 37, 5, 7, 3, 0, true, true, true, false, 0},    {2, 37, 5, 7, 3, 0, false, false, true, false, 0},
      {3, 40, 6, 4, 1, 16, true, false, true, false, 0},  {3, 40, 6, 4, 8, 13, false, true, false, true, 0},
      {2, 50, 5, 6, 3, 0, true, true, true, false, 4},    {2, 50, 5, 6, 3, 24, true, true, true, true, 2},
      {1, 64, 32, 48, 16, 0, true, true, true, false, 0}, {4, 64, 32, 32, 8, 32, true, true, true, true, 3},
  };
  Worst w64, w32;
  const char* names[9] = {"o", "grad_q", "grad_k", "grad_v", "grad_w1", "grad_w2", "grad_theta", "grad_eta", "grad_alpha"};
  int n = 0;
  for (const MemCase& c : cases) {
    const uint64_t seed = seed0 + uint64_t(n++);
    Rng r(seed);
    const int64_t BTd = c.B * c.T * c.d, P = c.B * c.d * c.dh, BT = c.B * c.T;
    auto normal = [&](int64_t k, double s) {
      std::vector<double> v(static_cast<size_t>(k));
      for (auto& e : v) e = double(float(r.normal() * s));
      return v;
    };
    auto uniform = [&](int64_t k, double lo, double hi) {
      std::vector<double> v(static_cast<size_t>(k));
      for (auto& e : v) e = double(float(r.uniform(lo, hi)));
      return v;
    };
    const double sd = 1.0 / std::sqrt(double(c.d));
    std::vector<std::vector<double>> x = {normal(BTd, sd),       normal(BTd, sd),       normal(BTd, sd),
                                          normal(P, sd),         normal(P, 1.0 / std::sqrt(double(c.dh))),
                                          uniform(BT, 0.01, 0.1), uniform(BT, 0.3, 0.9), uniform(BT, 0.01, 0.1),
                                          normal(BTd, 1.0)};
    const auto ref = run_memory<double>(c, x, false);
    const auto g64 = run_memory<double>(c, x, true);
    const auto g32 = run_memory<float>(c, x, true);
    const std::string tag = c.name() + " (seed " + std::to_string(seed) + ")";
    for (int i = 0; i < 9; ++i) {
      const Err e64 = compare_vec(g64[size_t(i)], ref[size_t(i)]), e32 = compare_vec(g32[size_t(i)], ref[size_t(i)]);
      EXPECT_TRUE(e64.finite && e32.finite) << tag << " " << names[i];
      EXPECT_LE(e64.rel2, 1e-10) << tag << " " << names[i] << " (fp64)";
      EXPECT_LE(e32.relmax, 1e-4) << tag << " " << names[i] << " (fp32)";
      w64.see(e64.rel2, tag + " " + names[i]);
      w32.see(e32.relmax, tag + " " + names[i]);
    }
  }
  std::printf("cuda titans memory variants: %zu configs, worst fp64 relative error %.3g (%s); worst fp32 max-abs "
              "relative error %.3g (%s)\n",
              cases.size(), w64.err, w64.what.c_str(), w32.err, w32.what.c_str());
}

// A bench-like structure at reduced size (d = dh = 64, C_G = 128, C_L = 8, 16, S_L = 128, T = 512), GPU fp32
// against the float64 twin, with the states of the local memories kept every 3rd chunk (segment recomputation).
TEST(CudaTnt, BenchStructureFloat32) {
  REQUIRE_CUDA();
  const uint64_t seed = fresh_seed();
  titans::TntShape s;
  s.B = 2;
  s.T = 512;
  s.d = 64;
  s.global_chunk = 128;
  s.local_chunks = {8, 16};
  s.shard = 128;
  s.dh = {64, 64, 64};
  engine::TntOptions opt;
  opt.global_chunk = 128;
  opt.local_chunks = {8, 16};
  opt.shard = 128;
  const SafeTensors st = tnt_inputs(s.B, s.T, s.d, s.dh, opt, seed, true);
  const SafeTensors ref = titans::tnt_op(st, opt, titans::tnt_twin_runner());
  // GPU fp32 with segments of 3 chunks, through tnt_host directly.
  const SafeTensors st32 = to_f32(st);
  auto p = [&](const std::string& name) { return st32.get(name).data<float>(); };
  titans::TntInputs<float> in{p("q"), p("k"), p("v"), {}};
  const char* pre[3] = {"g_", "l0_", "l1_"};
  for (const char* x : pre)
    in.mems.push_back({p(std::string(x) + "w1"), p(std::string(x) + "w2"), p(std::string(x) + "theta"),
                       p(std::string(x) + "eta"), p(std::string(x) + "alpha")});
  SafeTensors got;
  std::vector<std::pair<std::string, Tensor>> outs;
  for (auto& [name, t] : ref.tensors) outs.push_back({name, Tensor::empty(t.shape(), DType::F32)});
  auto o = [&](const std::string& name) {
    for (auto& [n2, t] : outs)
      if (n2 == name) return t.data<float>();
    return static_cast<float*>(nullptr);
  };
  titans::TntGrads<float> g{o("grad_q"), o("grad_k"), o("grad_v"), {}};
  for (const char* x : pre)
    g.mems.push_back({o(std::string("grad_") + x + "w1"), o(std::string("grad_") + x + "w2"),
                      o(std::string("grad_") + x + "theta"), o(std::string("grad_") + x + "eta"),
                      o(std::string("grad_") + x + "alpha")});
  s.segment = 3;
  cuda::TitansOptions copt;
  copt.poison_workspace = true;
  cuda::tnt_host<float>(s, in, o("o"), p("grad_o"), &g, copt);
  std::copy(o("o"), o("o") + st32.get("q").numel(), o("grad_grad_o"));
  for (auto& [name, t] : outs) got.add(name, t);
  Worst worst;
  check_all(got, ref, 1e-4, true, "bench structure (seed " + std::to_string(seed) + ")", worst);
  std::printf("cuda tnt fp32 at d = dh = 64, T = 512 (segments of 3): worst max-abs relative error %.3g (%s)\n",
              worst.err, worst.what.c_str());
}

// CUDA graphs: the first run captures, later runs on the same pointers replay; the results equal the eager
// path's (the same kernels and products), outputs refilled with NaN before each run.
TEST(CudaTnt, GraphReplayMatchesEager) {
  REQUIRE_CUDA();
  const uint64_t seed = fresh_seed();
  for (const BranchCase& c : {branch_cases()[0], branch_cases()[1], branch_cases()[8]}) {
    const engine::TntOptions opt = c.options();
    const SafeTensors st = tnt_inputs(c.B, c.T, c.d, c.dh, opt, seed, false);
    const SafeTensors ref = titans::tnt_op(st, opt, gpu());
    cuda::TitansOptions o;
    o.poison_workspace = true;
    o.graphs = true;
    cuda::TntGpuRunner graphs(o, 3);
    const SafeTensors got = titans::tnt_op(st, opt, graphs);
    Worst worst;
    check_all(got, ref, 1e-13, false, c.name() + " graphs (seed " + std::to_string(seed) + ")", worst);
    std::printf("cuda tnt graph replay vs eager (fp64) %s: worst relative difference %.3g\n", c.name().c_str(),
                worst.err);
  }
}

// `ttt op tnt --device cuda` end to end (TTT_CLI overrides the binary's path).
TEST(CudaTnt, CliOpTnt) {
  REQUIRE_CUDA();
  namespace fs = std::filesystem;
  const char* env = std::getenv("TTT_CLI");
  const std::string cli = env && *env ? env : TTT_CLI_PATH;
  if (!fs::exists(cli)) GTEST_SKIP() << "no ttt binary at " << cli << " (set TTT_CLI)";
  const fs::path dir = fs::temp_directory_path() / ("ttt_cuda_tnt_cli_" + std::to_string(fresh_seed() % 1000000));
  fs::create_directories(dir);
  engine::TntOptions opt;
  opt.global_chunk = 8;
  opt.local_chunks = {2, 4};
  opt.shard = 12;
  const SafeTensors st = tnt_inputs(2, 30, 6, {5, 4, 6}, opt, fresh_seed(), true);
  safetensors_save((dir / "in.safetensors").string(), to_f32(st));
  const std::string cmd = cli + " op tnt --device cuda --global-chunk 8 --local-chunks 2,4 --shard 12 --in " +
                          (dir / "in.safetensors").string() + " --out " + (dir / "out.safetensors").string() + " 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const SafeTensors got = safetensors_load((dir / "out.safetensors").string());
  const SafeTensors ref = engine::tnt_cpu_backend().tnt(st, opt);
  Worst worst;
  check_all(got, ref, 1e-4, true, "cli", worst);
  fs::remove_all(dir);
}

// A runner allocates exactly the bytes the host computes for it (titans::tnt_runner_bytes, which the memory estimate
// sums): the persistent path (local chunk 8), the batched one (global chunk 512, local chunk 64), one memory and
// several, with and without gradients.
TEST(CudaTnt, RunnerAllocatesWhatTheHostPlans) {
  REQUIRE_CUDA();
  for (const std::vector<int64_t>& locals : {std::vector<int64_t>{8}, std::vector<int64_t>{64}, std::vector<int64_t>{8, 64},
                                             std::vector<int64_t>{}})
    for (bool with_grad : {true, false}) {
      titans::TntShape s;
      s.B = 8;
      s.T = 4096;
      s.d = 64;
      s.global_chunk = 512;
      s.local_chunks = locals;
      s.shard = 1024;
      s.dh.assign(size_t(s.num_memories()), 64);
      SCOPED_TRACE("locals " + std::to_string(locals.size()) + (with_grad ? ", with gradients" : ""));
      const size_t before = cuda::tracked_bytes();
      cuda::TntRunner<float> runner(s, with_grad);
      const size_t planned = titans::tnt_runner_bytes(s, with_grad, sizeof(float), cuda::persistent_smem_limit(),
                                                      titans::KernelChoice::Automatic);
      EXPECT_EQ(cuda::tracked_bytes() - before, planned) << runner.path();
      EXPECT_EQ(runner.workspace_bytes(), planned);
    }
}

#endif  // TTT_HAVE_CUDA
