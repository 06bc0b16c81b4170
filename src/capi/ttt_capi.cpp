// The C ABI of the operators (ttt_capi.h): named host tensors in, the device's operator backend
// (backend::operator_backends, the very code `ttt op lact|tnt` runs), named host tensors out. Every exception
// becomes the returned message; nothing throws across the C boundary.
#include "capi/ttt_capi.h"

#include <cstring>
#include <array>
#include <exception>
#include <memory>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "backend/registry.h"
#include "core/error.h"
#include "core/safetensors.h"
#include "ttt/lact_op.h"
#include "ttt/tnt.h"

struct ttt_outputs {
  ttt::SafeTensors tensors;
};

struct ttt_lact_run {
  std::unique_ptr<ttt::backend::LactDeviceRun> run;
  std::string device;  // the backward may come from another thread (torch's autograd worker): select it again
  int32_t device_index = 0;
};

namespace {

thread_local std::string last_error;

// Runs `body`; returns NULL, or the message of what it threw (kept in last_error).
template <class F>
const char* guarded(F&& body) {
  try {
    body();
    return nullptr;
  } catch (const std::exception& e) {
    last_error = e.what();
  } catch (...) {
    last_error = "unknown C++ exception";
  }
  return last_error.c_str();
}

ttt::DType to_dtype(int32_t code, const std::string& name) {
  if (code == TTT_F32) return ttt::DType::F32;
  if (code == TTT_F64) return ttt::DType::F64;
  TTT_FAIL("tensor '" << name << "': dtype code " << code << " is not TTT_F32 (0) or TTT_F64 (1)");
}

int32_t to_code(ttt::DType dtype) {
  TTT_CHECK(dtype == ttt::DType::F32 || dtype == ttt::DType::F64,
            "an output has dtype " << ttt::dtype_name(dtype) << ", which this ABI cannot describe");
  return dtype == ttt::DType::F32 ? TTT_F32 : TTT_F64;
}

ttt::SafeTensors to_safetensors(const ttt_tensor* inputs, int32_t n) {
  TTT_CHECK(n >= 0 && (n == 0 || inputs), "ttt_op_run: " << n << " inputs at " << inputs);
  ttt::SafeTensors st;
  for (int32_t i = 0; i < n; ++i) {
    const ttt_tensor& in = inputs[i];
    TTT_CHECK(in.name && *in.name, "ttt_op_run: input " << i << " has no name");
    const std::string name = in.name;
    TTT_CHECK(!st.has(name), "input tensor '" << name << "' is given twice");
    TTT_CHECK(in.ndim >= 1 && in.ndim <= 8 && in.shape,
              "tensor '" << name << "': ndim " << in.ndim << " (allowed 1..8, with its shape)");
    ttt::Shape shape(in.shape, in.shape + in.ndim);
    for (int64_t s : shape) TTT_CHECK(s >= 0, "tensor '" << name << "': negative size " << s);
    ttt::Tensor t = ttt::Tensor::empty(shape, to_dtype(in.dtype, name));
    if (t.nbytes() > 0) {
      TTT_CHECK(in.data, "tensor '" << name << "': no data pointer");
      std::memcpy(t.raw(), in.data, t.nbytes());
    }
    st.add(name, std::move(t));
  }
  return st;
}

// Reads the fields of an options object, refusing any field it does not know.
class Fields {
 public:
  Fields(const char* text, const std::string& op) : op_(op) {
    const std::string s = text && *text ? text : "{}";
    try {
      j_ = nlohmann::json::parse(s);
    } catch (const nlohmann::json::exception& e) {
      TTT_FAIL(op_ << " options: invalid JSON: " << e.what());
    }
    TTT_CHECK(j_.is_object(), op_ << " options: expected a JSON object, got " << s);
  }
  template <class T>
  void read(const char* key, T& value) {
    seen_.insert(key);
    if (!j_.contains(key)) return;
    try {
      value = j_.at(key).get<T>();
    } catch (const nlohmann::json::exception&) {
      TTT_FAIL(op_ << " option '" << key << "': " << j_.at(key).dump() << " has the wrong type");
    }
  }
  void finish() const {
    for (auto it = j_.begin(); it != j_.end(); ++it) {
      std::string known;
      for (const auto& k : seen_) known += (known.empty() ? "" : ", ") + k;
      TTT_CHECK(seen_.count(it.key()), op_ << ": unknown option '" << it.key() << "' (known: " << known << ")");
    }
  }

 private:
  std::string op_;
  nlohmann::json j_;
  std::set<std::string> seen_;
};

ttt::SafeTensors run(const std::string& op, const char* options, const std::string& device,
                     const ttt::SafeTensors& in) {
  const ttt::backend::OperatorBackends backends = ttt::backend::operator_backends(device);
  if (op == "lact") {
    ttt::engine::LactOpOptions opt;
    std::string weight_norm = "post";
    Fields f(options, "lact");
    f.read("chunk", opt.chunk);
    f.read("program", opt.program);
    f.read("weight_norm", weight_norm);
    f.read("muon", opt.muon);
    f.read("precision", opt.precision);
    f.finish();
    opt.weight_norm = ttt::engine::parse_weight_norm(weight_norm);
    TTT_CHECK(opt.precision == "fp32" || device != "cpu",
              "lact: precision " << opt.precision << " needs the CUDA device (the CPU computes in the tensors' dtype)");
    return backends.lact.lact(in, opt);
  }
  if (op == "tnt") {
    ttt::engine::TntOptions opt;
    Fields f(options, "tnt");
    f.read("use_global", opt.use_global);
    f.read("global_chunk", opt.global_chunk);
    f.read("local_chunks", opt.local_chunks);
    f.read("shard", opt.shard);
    f.read("qk_proj", opt.qk_proj);
    f.finish();
    TTT_CHECK(!opt.use_global || opt.global_chunk > 0, "tnt: global_chunk must be positive, got " << opt.global_chunk);
    TTT_CHECK(opt.shard >= 0, "tnt: shard must be positive (or 0: never reset), got " << opt.shard);
    return backends.tnt.tnt(in, opt);
  }
  TTT_FAIL("unknown operator '" << op << "' (expected lact or tnt)");
}

}  // namespace

extern "C" {

int32_t ttt_capi_version(void) { return TTT_CAPI_VERSION; }

const char* ttt_capi_devices(void) {
  static const std::string devices = [] {
    std::string s;
    for (const std::string& d : ttt::backend::device_names())
      if (ttt::backend::device_available(d)) s += (s.empty() ? "" : ",") + d;
    return s;
  }();
  return devices.c_str();
}

const char* ttt_op_run(const char* op, const char* options_json, const char* device, int32_t device_index,
                       const ttt_tensor* inputs, int32_t n_inputs, ttt_outputs** out) {
  return guarded([&] {
    TTT_CHECK(out, "ttt_op_run: no place for the outputs (out is NULL)");
    *out = nullptr;
    TTT_CHECK(op && device, "ttt_op_run: op and device are required");
    ttt::backend::select_device(device, device_index);
    ttt::SafeTensors in = to_safetensors(inputs, n_inputs);
    auto result = std::make_unique<ttt_outputs>();
    result->tensors = run(op, options_json, device, in);
    *out = result.release();
  });
}

const char* ttt_lact_device_forward(const ttt_lact_device_call* call, void* o, int32_t with_grad, ttt_lact_run** run) {
  return guarded([&] {
    TTT_CHECK(run, "ttt_lact_device_forward: no place for the run (run is NULL)");
    *run = nullptr;
    TTT_CHECK(call && call->device && call->weight_norm && call->precision,
              "ttt_lact_device_forward: a call with its device, weight_norm and precision is required");
    ttt::backend::LactDeviceCall c;
    c.shape.B = call->B, c.shape.T = call->T, c.shape.d = call->d, c.shape.dh = call->dh, c.shape.chunk = call->chunk;
    c.shape.causal = true;
    c.shape.muon = call->muon != 0;
    c.shape.momentum = call->inputs[9] != nullptr;
    c.shape.norm = ttt::engine::parse_weight_norm(call->weight_norm);
    c.dtype = to_dtype(call->dtype, "w0");
    c.precision = ttt::backend::parse_precision(call->precision, "lact: precision");
    c.stream = call->stream;
    for (size_t i = 0; i < 10; ++i) c.inputs[i] = call->inputs[i];
    ttt::backend::select_device(call->device, call->device_index);
    auto result = std::make_unique<ttt_lact_run>();
    result->device = call->device;
    result->device_index = call->device_index;
    result->run = ttt::backend::start_lact_on_device(call->device, c, o, with_grad != 0);
    *run = result.release();
  });
}

const char* ttt_lact_device_backward(ttt_lact_run* run, const void* grad_o, void* const grads[10]) {
  return guarded([&] {
    TTT_CHECK(run && run->run && grads, "ttt_lact_device_backward: a run and its gradient outputs are required");
    std::array<void*, 10> g;
    for (size_t i = 0; i < 10; ++i) g[i] = grads[i];
    ttt::backend::select_device(run->device, run->device_index);
    run->run->backward(grad_o, g);
  });
}

void ttt_lact_run_free(ttt_lact_run* run) { delete run; }

int32_t ttt_outputs_count(const ttt_outputs* outputs) {
  return outputs ? static_cast<int32_t>(outputs->tensors.tensors.size()) : 0;
}

const char* ttt_outputs_get(const ttt_outputs* outputs, int32_t i, ttt_tensor* view) {
  return guarded([&] {
    TTT_CHECK(outputs && view, "ttt_outputs_get: outputs and view are required");
    TTT_CHECK(i >= 0 && i < ttt_outputs_count(outputs),
              "ttt_outputs_get: index " << i << " outside 0.." << ttt_outputs_count(outputs) - 1);
    const auto& [name, t] = outputs->tensors.tensors[size_t(i)];
    TTT_CHECK(t.is_contiguous(), "output '" << name << "' is not contiguous");
    view->name = name.c_str();
    view->dtype = to_code(t.dtype());
    view->ndim = static_cast<int32_t>(t.dim());
    view->shape = t.shape().data();
    view->data = t.raw();
  });
}

void ttt_outputs_free(ttt_outputs* outputs) { delete outputs; }

}  // extern "C"
