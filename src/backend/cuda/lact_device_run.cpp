// cuda::start_lact_on_device (engine_cuda.h): the LaCT operator on the caller's device pointers, through
// LactRunner (lact_cuda.h), ordered after and before the caller's stream with events. Runners are kept in a pool
// keyed by shape and options, so that a training loop (the same shapes at every layer and step) allocates its
// work space once: a run borrows a runner for its forward and backward and gives it back when destroyed.
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <vector>

#include <cuda_runtime.h>

#include "backend/cuda/engine_cuda.h"
#include "backend/cuda/lact_cuda.h"
#include "core/error.h"

namespace ttt::cuda {

namespace {

void check(cudaError_t e, const char* what) {
  TTT_CHECK(e == cudaSuccess, "lact on cuda: " << what << " failed: " << cudaGetErrorString(e));
}

// `waiter` waits for everything enqueued on `signaller` so far.
void order_after(cudaStream_t signaller, cudaStream_t waiter) {
  if (signaller == waiter) return;
  cudaEvent_t ev = nullptr;
  check(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "cudaEventCreateWithFlags");
  const cudaError_t rec = cudaEventRecord(ev, signaller);
  const cudaError_t wait = rec == cudaSuccess ? cudaStreamWaitEvent(waiter, ev, 0) : rec;
  cudaEventDestroy(ev);  // released once the event completes
  check(rec, "cudaEventRecord");
  check(wait, "cudaStreamWaitEvent");
}

// Shape, options and device of a runner: runners with equal keys are interchangeable.
using Key = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, bool, bool, int, bool, int, bool>;

Key key_of(const backend::LactDeviceCall& c, bool with_grad) {
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  const lact::Shape& s = c.shape;
  return {device, s.B, s.T, s.d, s.dh, s.chunk, s.causal, s.momentum, int(s.norm), s.muon,
          int(c.precision) * 2 + (c.dtype == DType::F64), with_grad};
}

// Idle runners by key (void: LactRunner<float> or <double>, whose deleter the entry keeps).
class Pool {
 public:
  using Entry = std::shared_ptr<void>;
  Entry take(const Key& k) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = idle_.find(k);
    if (it == idle_.end() || it->second.empty()) return nullptr;
    Entry e = std::move(it->second.back());
    it->second.pop_back();
    return e;
  }
  void give_back(const Key& k, Entry e) {
    std::lock_guard<std::mutex> lock(mu_);
    idle_[k].push_back(std::move(e));
  }

 private:
  std::mutex mu_;
  std::map<Key, std::vector<Entry>> idle_;
};

Pool& pool() {
  static Pool* p = new Pool;  // never destroyed: runners outlive no CUDA context teardown at exit
  return *p;
}

template <class T>
class Run final : public backend::LactDeviceRun {
 public:
  Run(const backend::LactDeviceCall& call, void* o, bool with_grad)
      : call_(call), with_grad_(with_grad), key_(key_of(call, with_grad)) {
    call.shape.validate();
    TTT_CHECK(call.shape.momentum == (call.inputs[9] != nullptr),
              "lact on cuda: momentum " << (call.shape.momentum ? "on without its gate" : "gate given but off"));
    for (int i = 0; i < 9; ++i) TTT_CHECK(call.inputs[size_t(i)], "lact on cuda: input " << i << " is null");
    TTT_CHECK(o, "lact on cuda: no output pointer");
    entry_ = pool().take(key_);
    if (!entry_) {
      LactOptions opt = offered_precision_options("lact on cuda: precision", backend::precision_name(call.precision),
                                                  std::is_same<T, float>::value, call.shape.muon);
      opt.graphs = false;  // the caller's pointers change from call to call: no graph would be replayed
      entry_ = std::make_shared<LactRunner<T>>(call.shape, with_grad, opt);
    }
    const auto p = [&](int i) { return static_cast<const T*>(call.inputs[size_t(i)]); };
    const lact::Inputs<T> in{p(0), p(1), p(2), p(3), p(4), p(5), p(6), p(7), p(8), call.shape.momentum ? p(9) : nullptr};
    order_after(caller(), own());
    runner().forward(in, static_cast<T*>(o));  // the runner keeps `in` for the backward
    order_after(own(), caller());
  }
  ~Run() override {
    // The runner's stream may still be working for the caller: the next user of the runner enqueues after it.
    if (entry_) pool().give_back(key_, std::move(entry_));
  }
  void backward(const void* grad_o, const std::array<void*, 10>& grads) override {
    TTT_CHECK(with_grad_, "lact on cuda: backward of a run started without gradients");
    TTT_CHECK(!backward_done_, "lact on cuda: a run's backward can only be taken once");
    TTT_CHECK(grad_o, "lact on cuda: no grad_o");
    for (int i = 0; i < 9; ++i) TTT_CHECK(grads[size_t(i)], "lact on cuda: gradient output " << i << " is null");
    TTT_CHECK(!call_.shape.momentum || grads[9], "lact on cuda: momentum on but no place for its gradient");
    const auto p = [&](int i) { return static_cast<T*>(grads[size_t(i)]); };
    lact::Grads<T> g{p(0), p(1), p(2), p(3), p(4), p(5), p(6), p(7), p(8), call_.shape.momentum ? p(9) : nullptr};
    backward_done_ = true;
    order_after(caller(), own());
    runner().backward(static_cast<const T*>(grad_o), g);
    order_after(own(), caller());
  }

 private:
  LactRunner<T>& runner() { return *static_cast<LactRunner<T>*>(entry_.get()); }
  cudaStream_t own() { return static_cast<cudaStream_t>(runner().stream()); }
  cudaStream_t caller() const { return static_cast<cudaStream_t>(call_.stream); }

  backend::LactDeviceCall call_;
  bool with_grad_;
  Key key_;
  Pool::Entry entry_;
  bool backward_done_ = false;
};

}  // namespace

std::unique_ptr<backend::LactDeviceRun> start_lact_on_device(const backend::LactDeviceCall& call, void* o,
                                                             bool with_grad) {
  TTT_CHECK(call.dtype == DType::F32 || call.dtype == DType::F64,
            "lact on cuda: dtype " << dtype_name(call.dtype) << " (F32 or F64)");
  if (call.dtype == DType::F64) return std::make_unique<Run<double>>(call, o, with_grad);
  return std::make_unique<Run<float>>(call, o, with_grad);
}

}  // namespace ttt::cuda
