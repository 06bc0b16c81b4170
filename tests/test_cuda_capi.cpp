// The C ABI's direct GPU path (ttt_lact_device_forward / _backward: device pointers, a stream, pooled runners)
// against the CPU operator backend in float64, on a GPU; skipped without one.
#include <gtest/gtest.h>

#include "cuda_test_util.h"

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "capi/ttt_capi.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "ttt/lact_op.h"

using namespace ttt;

#ifndef TTT_HAVE_CUDA

TEST(CudaCApi, SkippedWithoutCuda) { GTEST_SKIP() << "built without the CUDA toolkit (TTT_HAVE_CUDA unset)"; }

#else

namespace {

const char* kInputs[10] = {"w0", "w1", "w2", "q", "k", "v", "lr0", "lr1", "lr2", "momentum"};

SafeTensors random_lact(uint64_t seed, int64_t B, int64_t T, int64_t d, int64_t dh, bool momentum) {
  Rng r(seed);
  auto t = [&](Shape shape, double lo, double hi) {
    Tensor x = Tensor::empty(shape, DType::F64);
    for (int64_t i = 0; i < x.numel(); ++i) x.data<double>()[i] = r.uniform(lo, hi);
    return x;
  };
  SafeTensors st;
  st.add("w0", t({B, dh, d}, -0.6, 0.6));
  st.add("w1", t({B, d, dh}, -0.6, 0.6));
  st.add("w2", t({B, dh, d}, -0.6, 0.6));
  for (const char* n : {"q", "k", "v"}) st.add(n, t({B, T, d}, -1, 1));
  for (const char* n : {"lr0", "lr1", "lr2"}) st.add(n, t({B, T}, 0.01, 0.1));
  if (momentum) st.add("momentum", t({B, T}, 0.5, 0.9));
  st.add("grad_o", t({B, T, d}, -1, 1));
  return st;
}

double rel(const std::vector<double>& a, const Tensor& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double r = ref.data<double>()[i];
    num += (a[i] - r) * (a[i] - r), den += r * r;
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

TEST(CudaCApi, DirectLactEqualsCpuBackendFloat64) {
  REQUIRE_CUDA();
  struct Case {
    int64_t B, T, d, dh, chunk;
    bool momentum, muon;
    const char* norm;
  };
  for (const Case& c : {Case{3, 13, 6, 10, 4, true, false, "post"}, Case{2, 12, 8, 6, 3, false, true, "pre"},
                        Case{2, 9, 5, 5, 20, true, true, "none"}}) {
    SCOPED_TRACE(std::string(c.norm) + (c.muon ? " muon" : "") + (c.momentum ? " momentum" : ""));
    const SafeTensors in = random_lact(11, c.B, c.T, c.d, c.dh, c.momentum);
    engine::LactOpOptions opt;
    opt.chunk = c.chunk;
    opt.weight_norm = engine::parse_weight_norm(c.norm);
    opt.muon = c.muon;
    const SafeTensors ref = engine::cpu_backend().lact(in, opt);
    // Device copies of the inputs and room for the outputs.
    std::vector<cuda::DeviceBuffer> dev_in, dev_grad;
    ttt_lact_device_call call{};
    call.B = c.B, call.T = c.T, call.d = c.d, call.dh = c.dh, call.chunk = c.chunk;
    call.dtype = TTT_F64;
    call.muon = c.muon;
    call.weight_norm = c.norm;
    call.precision = "fp32";
    call.device = "cuda";
    void* grads[10] = {};
    for (int i = 0; i < 10; ++i) {
      if (!in.has(kInputs[i])) continue;
      const Tensor& t = in.get(kInputs[i]);
      dev_in.emplace_back(t.nbytes());
      dev_in.back().upload(t.raw(), t.nbytes());
      call.inputs[i] = dev_in.back().as<void>();
      dev_grad.emplace_back(t.nbytes());
      dev_grad.back().fill_nan();
      grads[i] = dev_grad.back().as<void>();
    }
    const Tensor& go = in.get("grad_o");
    cuda::DeviceBuffer o(go.nbytes()), grad_o(go.nbytes());
    grad_o.upload(go.raw(), go.nbytes());
    // Twice: the second run borrows the first one's runner from the pool.
    for (int round = 0; round < 2; ++round) {
      o.fill_nan();
      ttt_lact_run* run = nullptr;
      const char* err = ttt_lact_device_forward(&call, o.as<void>(), 1, &run);
      ASSERT_EQ(err, nullptr) << err;
      err = ttt_lact_device_backward(run, grad_o.as<void>(), grads);
      ASSERT_EQ(err, nullptr) << err;
      err = ttt_lact_device_backward(run, grad_o.as<void>(), grads);
      ASSERT_NE(err, nullptr);
      EXPECT_NE(std::string(err).find("once"), std::string::npos) << err;
      ttt_lact_run_free(run);
      cuda::stream_synchronize(nullptr);
      std::vector<double> host(size_t(go.numel()));
      o.download(host.data(), go.nbytes());
      EXPECT_LT(rel(host, ref.get("o")), 1e-9) << "o, round " << round;
      for (int i = 0, j = 0; i < 10; ++i) {
        if (!in.has(kInputs[i])) continue;
        const Tensor& want = ref.get(std::string("grad_") + kInputs[i]);
        std::vector<double> g(size_t(want.numel()));
        dev_grad[size_t(j++)].download(g.data(), want.nbytes());
        EXPECT_LT(rel(g, want), 1e-9) << "grad_" << kInputs[i] << ", round " << round;
      }
    }
    // A forward without gradients has no backward.
    ttt_lact_run* run = nullptr;
    ASSERT_EQ(ttt_lact_device_forward(&call, o.as<void>(), 0, &run), nullptr);
    const char* err = ttt_lact_device_backward(run, grad_o.as<void>(), grads);
    ASSERT_NE(err, nullptr);
    EXPECT_NE(std::string(err).find("without gradients"), std::string::npos) << err;
    ttt_lact_run_free(run);
  }
}

TEST(CudaCApi, DirectLactRefusals) {
  REQUIRE_CUDA();
  ttt_lact_device_call call{};
  call.B = 1, call.T = 4, call.d = 2, call.dh = 3, call.chunk = 2;
  call.dtype = TTT_F64;
  call.weight_norm = "post";
  call.precision = "tf32";
  call.device = "cuda";
  cuda::DeviceBuffer buf(1024);
  for (int i = 0; i < 9; ++i) call.inputs[i] = buf.as<void>();
  ttt_lact_run* run = nullptr;
  std::string err = ttt_lact_device_forward(&call, buf.as<void>(), 1, &run);
  EXPECT_NE(err.find("tf32 needs F32"), std::string::npos) << err;
  call.dtype = TTT_F32;
  call.precision = "bf16";
  call.muon = 1;
  err = ttt_lact_device_forward(&call, buf.as<void>(), 1, &run);
  EXPECT_NE(err.find("Muon"), std::string::npos) << err;
  call.muon = 0;
  call.precision = "fp32";
  call.device_index = 1 << 20;
  err = ttt_lact_device_forward(&call, buf.as<void>(), 1, &run);
  EXPECT_NE(err.find("does not exist"), std::string::npos) << err;
  call.device_index = 0;
  call.inputs[4] = nullptr;
  err = ttt_lact_device_forward(&call, buf.as<void>(), 1, &run);
  EXPECT_NE(err.find("input 4 is null"), std::string::npos) << err;
  EXPECT_EQ(run, nullptr);
}

}  // namespace

#endif
