// The TNT branch on the GPU: one TitansRunner per memory, each on its own stream (the memories run
// concurrently), joined with events on a main stream where the outputs and the q/k/v gradients are summed in
// memory order. Also the host-array entry point, the runner behind engine::tnt_cuda_backend(), and the bench.
#include "backend/cuda/tnt_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <functional>
#include <cmath>
#include <exception>
#include <thread>

#include "backend/cuda/check.cuh"
#include "backend/cuda/device.h"  // DeviceBuffer, device_description, tracked bytes
#include "backend/cuda/kernel_util.cuh"  // kThreads, grid_for

namespace ttt::cuda {

namespace {

// dst = a + b (in this order; dst may alias a).
template <class T>
__global__ void k_add2(T* dst, const T* a, const T* b, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = a[i] + b[i];
}


}  // namespace

template <class T>
struct TntRunner<T>::Impl {
  titans::TntShape s;
  bool with_grad;
  cudaStream_t main = nullptr;
  cudaEvent_t start = nullptr;
  std::vector<cudaEvent_t> done;
  std::vector<std::unique_ptr<TitansRunner<T>>> mems;
  // Per-memory outputs and q/k/v gradients (more than one memory only).
  std::vector<DeviceBuffer> o, gq, gk, gv;
  size_t bytes = 0;

  Impl(const titans::TntShape& shape, bool wg, const TitansOptions& opt) : s(shape), with_grad(wg) {
    s.validate();
    TTT_CUDA_CHECK(cudaStreamCreate(&main));
    TTT_CUDA_CHECK(cudaEventCreateWithFlags(&start, cudaEventDisableTiming));
    const size_t M = size_t(s.num_memories()), BTd = size_t(s.B * s.T * s.d);
    for (size_t m = 0; m < M; ++m) {
      mems.push_back(std::make_unique<TitansRunner<T>>(s.memory(m), with_grad, opt));
      bytes += mems.back()->workspace_bytes();
      cudaEvent_t e;
      TTT_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
      done.push_back(e);
      // Its output, then its q/k/v gradients (titans::tnt_branch_buffers: none for a single memory).
      const int64_t parts = titans::tnt_branch_buffers(s, with_grad);
      if (parts >= 1) o.emplace_back(BTd * sizeof(T));
      if (parts >= 4) {
        gq.emplace_back(BTd * sizeof(T));
        gk.emplace_back(BTd * sizeof(T));
        gv.emplace_back(BTd * sizeof(T));
      }
      bytes += BTd * sizeof(T) * size_t(parts);
    }
  }
  ~Impl() {
    if (main) cudaStreamSynchronize(main);  // the runners' own destructors wait for their streams
    for (cudaEvent_t e : done) cudaEventDestroy(e);
    if (start) cudaEventDestroy(start);
    if (main) cudaStreamDestroy(main);
  }
  cudaStream_t stream_of(size_t m) const { return static_cast<cudaStream_t>(mems[m]->stream()); }
  // The memories' streams wait for the work enqueued so far on main.
  void fork() {
    TTT_CUDA_CHECK(cudaEventRecord(start, main));
    for (size_t m = 0; m < mems.size(); ++m) TTT_CUDA_CHECK(cudaStreamWaitEvent(stream_of(m), start, 0));
  }
  // body(m) for every memory, each from its own host thread (the launches of small chunks are host-bound, so
  // one enqueuing thread would serialize the memories' streams); exceptions are rethrown here.
  template <class F>
  void each_memory(F body) {
    const size_t M = mems.size();
    if (M == 1) {
      body(size_t(0));
      return;
    }
    int dev = 0;
    TTT_CUDA_CHECK(cudaGetDevice(&dev));
    std::vector<std::exception_ptr> err(M);
    std::vector<std::thread> threads;
    for (size_t m = 1; m < M; ++m)
      threads.emplace_back([&, m] {
        try {
          TTT_CUDA_CHECK(cudaSetDevice(dev));
          body(m);
        } catch (...) {
          err[m] = std::current_exception();
        }
      });
    try {
      body(size_t(0));
    } catch (...) {
      err[0] = std::current_exception();
    }
    for (auto& t : threads) t.join();
    for (auto& e : err)
      if (e) std::rethrow_exception(e);
  }
  // dst = sum over memories of parts[m] (memory order), on main.
  void sum(T* dst, const std::vector<DeviceBuffer>& parts) {
    const int64_t n = s.B * s.T * s.d;
    k_add2<T><<<grid_for(n), kThreads, 0, main>>>(dst, parts[0].as<T>(), parts[1].as<T>(), n);
    TTT_LAUNCH_CHECK("tnt sum");
    for (size_t m = 2; m < parts.size(); ++m) {
      k_add2<T><<<grid_for(n), kThreads, 0, main>>>(dst, dst, parts[m].as<T>(), n);
      TTT_LAUNCH_CHECK("tnt sum");
    }
  }
};

template <class T>
TntRunner<T>::TntRunner(const titans::TntShape& s, bool with_grad, const TitansOptions& opt)
    : impl_(std::make_unique<Impl>(s, with_grad, opt)) {}
template <class T>
TntRunner<T>::~TntRunner() = default;

template <class T>
void TntRunner<T>::forward(const titans::TntInputs<T>& in, T* o) {
  Impl& x = *impl_;
  const size_t M = x.mems.size();
  TTT_CHECK(in.mems.size() == M, "tnt cuda: parameters of " << in.mems.size() << " memories for " << M);
  x.fork();
  x.each_memory([&](size_t m) {
    x.mems[m]->forward(titans::memory_inputs(in, m), M == 1 ? o : x.o[m].template as<T>());
    TTT_CUDA_CHECK(cudaEventRecord(x.done[m], x.stream_of(m)));
  });
  for (size_t m = 0; m < M; ++m) TTT_CUDA_CHECK(cudaStreamWaitEvent(x.main, x.done[m], 0));
  if (M > 1) x.sum(o, x.o);
}

template <class T>
void TntRunner<T>::backward(const T* grad_o, const titans::TntGrads<T>& g) {
  Impl& x = *impl_;
  const size_t M = x.mems.size();
  TTT_CHECK(x.with_grad, "tnt cuda: backward() needs a runner built with gradients");
  TTT_CHECK(g.mems.size() == M, "tnt cuda: gradients of " << g.mems.size() << " memories for " << M);
  x.fork();
  x.each_memory([&](size_t m) {
    const titans::TntMemoryGrads<T>& p = g.mems[m];
    titans::MemoryGrads<T> mg{M == 1 ? g.q : x.gq[m].template as<T>(), M == 1 ? g.k : x.gk[m].template as<T>(),
                              M == 1 ? g.v : x.gv[m].template as<T>(), p.w1, p.w2, p.theta, p.eta, p.alpha};
    x.mems[m]->backward(grad_o, mg);
    TTT_CUDA_CHECK(cudaEventRecord(x.done[m], x.stream_of(m)));
  });
  for (size_t m = 0; m < M; ++m) TTT_CUDA_CHECK(cudaStreamWaitEvent(x.main, x.done[m], 0));
  if (M > 1) {
    x.sum(g.q, x.gq);
    x.sum(g.k, x.gk);
    x.sum(g.v, x.gv);
  }
}

template <class T>
void TntRunner<T>::synchronize() {
  TTT_CUDA_CHECK(cudaStreamSynchronize(impl_->main));
  for (auto& m : impl_->mems) m->synchronize();
  TTT_CUDA_CHECK(cudaGetLastError());
}
template <class T>
size_t TntRunner<T>::workspace_bytes() const {
  return impl_->bytes;
}
template <class T>
void* TntRunner<T>::stream() const {
  return impl_->main;
}
template <class T>
std::string TntRunner<T>::path() const {
  std::string out;
  for (size_t m = 0; m < impl_->mems.size(); ++m) out += (m ? "; " : "") + impl_->mems[m]->path();
  return out;
}

template <class T>
void tnt_host(const titans::TntShape& s, const titans::TntInputs<T>& in, T* o, const T* grad_o,
              const titans::TntGrads<T>* g, const TitansOptions& opt, int runs) {
  s.validate();
  const bool grad = grad_o != nullptr;
  TTT_CHECK(!grad || g, "tnt_host: grad_o given without gradient outputs");
  const size_t M = size_t(s.num_memories()), BT = size_t(s.B * s.T), BTD = BT * size_t(s.d);
  TTT_CHECK(in.mems.size() == M && (!grad || g->mems.size() == M),
            "tnt_host: parameters of " << in.mems.size() << " memories for " << M);
  std::vector<DeviceBuffer> keep;  // every device buffer of the call
  auto up = [&](const T* h, size_t n) {
    keep.emplace_back(n * sizeof(T));
    keep.back().upload(h, n * sizeof(T));
    return keep.back().as<T>();
  };
  std::vector<size_t> outs;  // indices in keep of the outputs
  auto out = [&](size_t n) {
    keep.emplace_back(n * sizeof(T));
    keep.back().fill_nan();
    outs.push_back(keep.size() - 1);
    return keep.back().as<T>();
  };
  titans::TntInputs<T> din{up(in.q, BTD), up(in.k, BTD), up(in.v, BTD), {}};
  titans::TntGrads<T> dg;
  T* od = out(BTD);
  T* go = grad ? up(grad_o, BTD) : nullptr;
  if (grad) {
    dg.q = out(BTD);
    dg.k = out(BTD);
    dg.v = out(BTD);
  }
  for (size_t m = 0; m < M; ++m) {
    const size_t W = size_t(s.B * s.d * s.dh[m]);
    const titans::TntMemoryParams<T>& p = in.mems[m];
    din.mems.push_back({up(p.w1, W), up(p.w2, W), up(p.theta, BT), up(p.eta, BT), up(p.alpha, BT)});
    if (grad) dg.mems.push_back({out(W), out(W), out(BT), out(BT), out(BT)});
  }
  TTT_CHECK(runs >= 1, "tnt_host: runs must be >= 1");
  {
    TntRunner<T> r(s, grad, opt);
    for (int i = 0; i < runs; ++i) {
      if (i > 0)
        for (size_t j : outs) keep[j].fill_nan();
      r.forward(din, od);
      if (grad) r.backward(go, dg);
      r.synchronize();
    }
  }
  auto down = [](const T* d, T* h, size_t n) {
    TTT_CUDA_CHECK(cudaMemcpy(h, d, n * sizeof(T), cudaMemcpyDeviceToHost));
  };
  down(od, o, BTD);
  if (!grad) return;
  down(dg.q, g->q, BTD);
  down(dg.k, g->k, BTD);
  down(dg.v, g->v, BTD);
  for (size_t m = 0; m < M; ++m) {
    const size_t W = size_t(s.B * s.d * s.dh[m]);
    down(dg.mems[m].w1, g->mems[m].w1, W);
    down(dg.mems[m].w2, g->mems[m].w2, W);
    down(dg.mems[m].theta, g->mems[m].theta, BT);
    down(dg.mems[m].eta, g->mems[m].eta, BT);
    down(dg.mems[m].alpha, g->mems[m].alpha, BT);
  }
}

void TntGpuRunner::run(const titans::TntShape& s, const titans::TntInputs<double>& in, double* o, const double* go,
                       const titans::TntGrads<double>* g) {
  tnt_host<double>(s, in, o, go, g, opt_, runs_);
}
void TntGpuRunner::run(const titans::TntShape& s, const titans::TntInputs<float>& in, float* o, const float* go,
                       const titans::TntGrads<float>* g) {
  tnt_host<float>(s, in, o, go, g, opt_, runs_);
}

titans::TntHostRunner& tnt_gpu_runner() {
  static TntGpuRunner r;
  return r;
}

TntBenchResult bench_tnt(const titans::TntShape& s, int repeats, int warmup, bool graphs, titans::KernelChoice kernel,
                         backend::Precision precision) {
  using T = float;
  s.validate();
  TTT_CHECK(repeats > 0 && warmup >= 0, "bench_tnt: repeats must be positive");
  TTT_CHECK(!graphs || warmup > 0, "bench_tnt: CUDA graphs need a warm-up run (it captures them)");
  std::string why;
  TTT_CHECK(device_count(&why) > 0, "ttt bench tnt --device cuda: no usable CUDA device (" << why << ")");
  TntBenchResult res;
  res.device = device_description();
  reset_tracked_peak();
  const size_t M = size_t(s.num_memories());
  const int64_t BT = s.B * s.T, BTD = BT * s.d;
  std::vector<DeviceBuffer> keep;
  keep.reserve(8 + 10 * M);
  auto buf = [&](int64_t n) {
    keep.emplace_back(size_t(n) * sizeof(T));
    return &keep.back();
  };
  uint64_t seed = 100;
  // The CPU bench's distributions (cmd_bench.cpp): q/k/v N(0, 1/d), grad_o N(0, 1), w1 N(0, 1/d), w2 N(0, 1/dh),
  // theta U(0.01, 0.1), eta U(0.5, 0.9), alpha U(0.001, 0.01).
  auto normal = [&](int64_t n, double sd) {
    DeviceBuffer* b = buf(n);
    b->fill_random<T>(n, seed++, 0, sd, true);
    return b->as<T>();
  };
  auto uniform = [&](int64_t n, double lo, double hi) {
    DeviceBuffer* b = buf(n);
    b->fill_random<T>(n, seed++, lo, hi, false);
    return b->as<T>();
  };
  auto empty = [&](int64_t n) { return buf(n)->as<T>(); };
  const double sd = 1.0 / std::sqrt(double(s.d));
  titans::TntInputs<T> in{normal(BTD, sd), normal(BTD, sd), normal(BTD, sd), {}};
  T* go = normal(BTD, 1.0);
  T* o = empty(BTD);
  titans::TntGrads<T> g{empty(BTD), empty(BTD), empty(BTD), {}};
  for (size_t m = 0; m < M; ++m) {
    const int64_t W = s.B * s.d * s.dh[m];
    in.mems.push_back({normal(W, sd), normal(W, 1.0 / std::sqrt(double(s.dh[m]))), uniform(BT, 0.01, 0.1),
                       uniform(BT, 0.5, 0.9), uniform(BT, 0.001, 0.01)});
    g.mems.push_back({empty(W), empty(W), empty(BT), empty(BT), empty(BT)});
  }
  // CUDA events on the runner's stream around the enqueued work (device.h's elapsed_ms).
  auto timed = [&](TntRunner<T>& r, const std::function<void()>& body) { return elapsed_ms(body, r.stream()); };
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  {
    TitansOptions opt = titans_options_for(precision);
    opt.graphs = graphs;
    opt.kernel = kernel;
    TntRunner<T> rf(s, false, opt);
    for (int i = 0; i < warmup; ++i) timed(rf, [&] { rf.forward(in, o); });
    for (int i = 0; i < repeats; ++i) res.fwd_ms.push_back(timed(rf, [&] { rf.forward(in, o); }));
    res.fwd_ms_median = median(res.fwd_ms);
    res.workspace_bytes = rf.workspace_bytes();
    res.kernel_path = rf.path();
  }
  {
    TitansOptions opt = titans_options_for(precision);
    opt.graphs = graphs;
    opt.kernel = kernel;
    TntRunner<T> rb(s, true, opt);
    res.workspace_bytes += rb.workspace_bytes();
    auto run = [&] {
      rb.forward(in, o);
      rb.backward(go, g);
    };
    for (int i = 0; i < warmup; ++i) timed(rb, run);
    for (int i = 0; i < repeats; ++i) res.fwdbwd_ms.push_back(timed(rb, run));
    res.fwdbwd_ms_median = median(res.fwdbwd_ms);
    device_memory(&res.device_used_bytes, &res.device_total_bytes);
    cudaStream_t st = static_cast<cudaStream_t>(rb.stream());
    size_t bad = count_nonfinite(o, BTD, st);
    for (T* p : {g.q, g.k, g.v}) bad += count_nonfinite(p, BTD, st);
    for (size_t m = 0; m < M; ++m) {
      const int64_t W = s.B * s.d * s.dh[m];
      bad += count_nonfinite(g.mems[m].w1, W, st) + count_nonfinite(g.mems[m].w2, W, st);
      for (T* p : {g.mems[m].theta, g.mems[m].eta, g.mems[m].alpha}) bad += count_nonfinite(p, BT, st);
    }
    res.output_finite = bad == 0;
  }
  res.tracked_peak_bytes = tracked_peak_bytes();
  return res;
}

template class TntRunner<float>;
template class TntRunner<double>;
template void tnt_host<float>(const titans::TntShape&, const titans::TntInputs<float>&, float*, const float*,
                              const titans::TntGrads<float>*, const TitansOptions&, int);
template void tnt_host<double>(const titans::TntShape&, const titans::TntInputs<double>&, double*, const double*,
                               const titans::TntGrads<double>*, const TitansOptions&, int);

}  // namespace ttt::cuda
