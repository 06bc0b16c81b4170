// The operators' C ABI (src/capi/ttt_capi.h): the same results as the operator backends it calls, and every
// misuse answered with a message (never an exception through C, never a crash).
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "backend/registry.h"
#include "capi/ttt_capi.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "ttt/lact_op.h"
#include "ttt/tnt.h"

namespace {

using ttt::DType;
using ttt::SafeTensors;
using ttt::Tensor;

Tensor random_tensor(ttt::Rng& r, const ttt::Shape& shape, double lo, double hi) {
  Tensor t = Tensor::empty(shape, DType::F64);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<double>()[i] = r.uniform(lo, hi);
  return t;
}

SafeTensors lact_inputs(bool grad) {
  ttt::Rng r(7);
  const int64_t B = 2, T = 9, d = 3, dh = 5;
  SafeTensors st;
  st.add("w0", random_tensor(r, {B, dh, d}, -0.5, 0.5));
  st.add("w1", random_tensor(r, {B, d, dh}, -0.5, 0.5));
  st.add("w2", random_tensor(r, {B, dh, d}, -0.5, 0.5));
  for (const char* n : {"q", "k", "v"}) st.add(n, random_tensor(r, {B, T, d}, -1, 1));
  for (const char* n : {"lr0", "lr1", "lr2"}) st.add(n, random_tensor(r, {B, T}, 0.01, 0.1));
  st.add("momentum", random_tensor(r, {B, T}, 0.5, 0.9));
  if (grad) st.add("grad_o", random_tensor(r, {B, T, d}, -1, 1));
  return st;
}

// ttt_tensor views of `st` (which must outlive them).
std::vector<ttt_tensor> views(const SafeTensors& st) {
  std::vector<ttt_tensor> v;
  for (const auto& [name, t] : st.tensors)
    v.push_back({name.c_str(), t.dtype() == DType::F64 ? TTT_F64 : TTT_F32, int32_t(t.dim()), t.shape().data(),
                 t.raw()});
  return v;
}

// Runs the C ABI; returns its error text ("" on success) and fills `out`.
std::string run(const char* op, const char* options, const SafeTensors& in, SafeTensors* out,
                const char* device = "cpu", int index = 0) {
  std::vector<ttt_tensor> v = views(in);
  ttt_outputs* h = nullptr;
  const char* err = ttt_op_run(op, options, device, index, v.data(), int32_t(v.size()), &h);
  if (err) {
    EXPECT_EQ(h, nullptr);
    return err;
  }
  for (int32_t i = 0; i < ttt_outputs_count(h); ++i) {
    ttt_tensor view{};
    EXPECT_EQ(ttt_outputs_get(h, i, &view), nullptr);
    Tensor t = Tensor::empty(ttt::Shape(view.shape, view.shape + view.ndim),
                             view.dtype == TTT_F64 ? DType::F64 : DType::F32);
    std::memcpy(t.raw(), view.data, t.nbytes());
    out->add(view.name, t);
  }
  ttt_outputs_free(h);
  return "";
}

void expect_same(const SafeTensors& a, const SafeTensors& b) {
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (const auto& [name, t] : a.tensors) {
    ASSERT_TRUE(b.has(name)) << name;
    const Tensor& u = b.get(name);
    ASSERT_EQ(t.shape(), u.shape()) << name;
    EXPECT_EQ(std::memcmp(t.raw(), u.raw(), t.nbytes()), 0) << name;
  }
}

TEST(CApi, VersionAndDevices) {
  EXPECT_EQ(ttt_capi_version(), TTT_CAPI_VERSION);
  const std::string devices = ttt_capi_devices();
  EXPECT_EQ(devices.rfind("cpu", 0), 0u) << devices;
  EXPECT_EQ(devices.find("cuda") != std::string::npos, ttt::backend::device_available("cuda")) << devices;
}

TEST(CApi, LactEqualsTheCpuBackendBitForBit) {
  for (bool grad : {false, true}) {
    const SafeTensors in = lact_inputs(grad);
    SafeTensors got;
    ASSERT_EQ(run("lact", R"({"chunk": 4, "weight_norm": "pre", "muon": true})", in, &got), "");
    ttt::engine::LactOpOptions opt;
    opt.chunk = 4;
    opt.weight_norm = ttt::engine::WeightNorm::Pre;
    opt.muon = true;
    expect_same(got, ttt::engine::cpu_backend().lact(in, opt));
    EXPECT_EQ(got.has("grad_w0"), grad);
  }
}

TEST(CApi, TntEqualsTheCpuBackendBitForBit) {
  ttt::Rng r(3);
  const int64_t B = 1, T = 10, d = 3, dh = 4;
  SafeTensors in;
  for (const char* n : {"q", "k", "v", "grad_o"}) in.add(n, random_tensor(r, {B, T, d}, -1, 1));
  for (const std::string p : {"g_", "l0_"}) {
    in.add(p + "w1", random_tensor(r, {B, dh, d}, -0.5, 0.5));
    in.add(p + "w2", random_tensor(r, {B, d, dh}, -0.5, 0.5));
    for (const char* g : {"theta", "eta", "alpha"}) in.add(p + g, random_tensor(r, {B, T}, 0.05, 0.5));
  }
  SafeTensors got;
  ASSERT_EQ(run("tnt", R"({"global_chunk": 4, "local_chunks": [3], "shard": 6})", in, &got), "");
  ttt::engine::TntOptions opt;
  opt.global_chunk = 4;
  opt.local_chunks = {3};
  opt.shard = 6;
  expect_same(got, ttt::engine::tnt_cpu_backend().tnt(in, opt));
}

TEST(CApi, MisuseIsAMessage) {
  const SafeTensors in = lact_inputs(false);
  SafeTensors out;
  auto expect_error = [&](const std::string& err, std::vector<std::string> needles) {
    ASSERT_FALSE(err.empty());
    for (const auto& n : needles) EXPECT_NE(err.find(n), std::string::npos) << "'" << n << "' not in: " << err;
  };
  expect_error(run("conv", "{}", in, &out), {"unknown operator 'conv'", "lact or tnt"});
  expect_error(run("lact", R"({"chunk_size": 4})", in, &out), {"unknown option 'chunk_size'", "chunk"});
  expect_error(run("lact", R"({"chunk": "four"})", in, &out), {"option 'chunk'", "\"four\"", "wrong type"});
  expect_error(run("lact", "{chunk", in, &out), {"invalid JSON"});
  expect_error(run("lact", "[1]", in, &out), {"expected a JSON object"});
  expect_error(run("lact", R"({"weight_norm": "mid"})", in, &out), {"mid"});
  expect_error(run("lact", R"({"chunk": 0})", in, &out), {"chunk", "0"});
  expect_error(run("lact", R"({"precision": "tf32"})", in, &out), {"precision tf32", "CUDA"});
  expect_error(run("lact", "{}", in, &out, "tpu"), {"tpu"});
  expect_error(run("lact", "{}", in, &out, "cpu", 1), {"index 1"});
  expect_error(run("tnt", R"({"local_chunks": 8})", in, &out), {"local_chunks", "wrong type"});
  // the engine's own validation (names the tensor)
  SafeTensors missing = lact_inputs(false);
  missing.tensors.erase(missing.tensors.begin() + 1);  // w1
  expect_error(run("lact", "{}", missing, &out), {"missing input tensor 'w1'"});
  // malformed views
  std::vector<ttt_tensor> v = views(in);
  ttt_outputs* h = nullptr;
  v[3].dtype = 7;
  expect_error(ttt_op_run("lact", "{}", "cpu", 0, v.data(), int32_t(v.size()), &h), {"'q'", "dtype code 7"});
  v = views(in);
  v[4].ndim = 0;
  expect_error(ttt_op_run("lact", "{}", "cpu", 0, v.data(), int32_t(v.size()), &h), {"'k'", "ndim 0"});
  v = views(in);
  v[5].name = "q";
  expect_error(ttt_op_run("lact", "{}", "cpu", 0, v.data(), int32_t(v.size()), &h), {"'q' is given twice"});
  v = views(in);
  v[0].data = nullptr;
  expect_error(ttt_op_run("lact", "{}", "cpu", 0, v.data(), int32_t(v.size()), &h), {"'w0'", "no data"});
  expect_error(ttt_op_run("lact", "{}", "cpu", 0, v.data(), int32_t(v.size()), nullptr), {"out is NULL"});
  EXPECT_EQ(h, nullptr);
  ttt_tensor view{};
  expect_error(ttt_outputs_get(nullptr, 0, &view), {"required"});
  EXPECT_EQ(ttt_outputs_count(nullptr), 0);
  ttt_outputs_free(nullptr);
}

TEST(CApi, DevicePathMisuseIsAMessage) {
  ttt_lact_device_call call{};
  call.B = 1, call.T = 4, call.d = 2, call.dh = 3, call.chunk = 2;
  call.dtype = TTT_F32;
  call.weight_norm = "post";
  call.precision = "fp32";
  call.device = "cpu";
  ttt_lact_run* run = nullptr;
  std::string err = ttt_lact_device_forward(&call, nullptr, 1, &run);
  EXPECT_NE(err.find("host tensors"), std::string::npos) << err;  // the CPU's operator takes host memory
  EXPECT_EQ(run, nullptr);
  call.weight_norm = "mid";
  err = ttt_lact_device_forward(&call, nullptr, 1, &run);
  EXPECT_NE(err.find("mid"), std::string::npos) << err;
  call.weight_norm = "post";
  call.precision = "fp8";
  err = ttt_lact_device_forward(&call, nullptr, 1, &run);
  EXPECT_NE(err.find("fp8"), std::string::npos) << err;
  call.precision = "fp32";
  call.device = "tpu";
  err = ttt_lact_device_forward(&call, nullptr, 1, &run);
  EXPECT_NE(err.find("tpu"), std::string::npos) << err;
  err = ttt_lact_device_forward(nullptr, nullptr, 1, &run);
  EXPECT_NE(err.find("required"), std::string::npos) << err;
  err = ttt_lact_device_forward(&call, nullptr, 1, nullptr);
  EXPECT_NE(err.find("run is NULL"), std::string::npos) << err;
  void* grads[10] = {};
  err = ttt_lact_device_backward(nullptr, nullptr, grads);
  EXPECT_NE(err.find("required"), std::string::npos) << err;
  ttt_lact_run_free(nullptr);
}

}  // namespace
