// Host drivers of the LaCT CUDA runner (lact_cuda.h): lact_host (host arrays in and out, for the op backend and
// tests) and bench_lact (CUDA-event timing on device-resident random inputs).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "backend/cuda/check.cuh"
#include "backend/cuda/device.h"
#include "backend/cuda/lact_cuda.h"

namespace ttt::cuda {

template <class T>
void lact_host(const lact::Shape& s, const lact::Inputs<T>& in, T* o, const T* grad_o, const lact::Grads<T>* g,
               const LactOptions& opt) {
  s.validate();
  const bool grad = grad_o != nullptr;
  TTT_CHECK(!grad || g, "lact_host: grad_o given without gradient outputs");
  TTT_CHECK(!s.momentum || in.mom, "lact_host: momentum on but no momentum gate");
  const size_t P = size_t(s.d * s.dh), BT = size_t(s.B * s.T), BTD = BT * size_t(s.d), W = size_t(s.B) * P;
  auto up = [](const T* h, size_t n) {
    DeviceBuffer b(n * sizeof(T));
    b.upload(h, n * sizeof(T));
    return b;
  };
  DeviceBuffer w0 = up(in.w0, W), w1 = up(in.w1, W), w2 = up(in.w2, W);
  DeviceBuffer q = up(in.q, BTD), k = up(in.k, BTD), v = up(in.v, BTD);
  DeviceBuffer l0 = up(in.lr0, BT), l1 = up(in.lr1, BT), l2 = up(in.lr2, BT);
  DeviceBuffer mom = s.momentum ? up(in.mom, BT) : DeviceBuffer();
  DeviceBuffer go = grad ? up(grad_o, BTD) : DeviceBuffer();
  auto out = [](size_t n) {
    DeviceBuffer b(n * sizeof(T));
    b.fill_nan();
    return b;
  };
  DeviceBuffer od = out(BTD);
  DeviceBuffer gw0, gw1, gw2, gq, gk, gv, gl0, gl1, gl2, gm;
  lact::Grads<T> gd;
  if (grad) {
    gw0 = out(W), gw1 = out(W), gw2 = out(W), gq = out(BTD), gk = out(BTD), gv = out(BTD);
    gl0 = out(BT), gl1 = out(BT), gl2 = out(BT);
    if (s.momentum) gm = out(BT);
    gd = {gw0.as<T>(), gw1.as<T>(), gw2.as<T>(), gq.as<T>(), gk.as<T>(), gv.as<T>(),
          gl0.as<T>(), gl1.as<T>(), gl2.as<T>(), s.momentum ? gm.as<T>() : nullptr};
  }
  lact::Inputs<T> din{w0.as<T>(), w1.as<T>(), w2.as<T>(), q.as<T>(), k.as<T>(), v.as<T>(),
                      l0.as<T>(), l1.as<T>(), l2.as<T>(), s.momentum ? mom.as<T>() : nullptr};
  {
    LactRunner<T> r(s, grad, opt);
    r.forward(din, od.as<T>());
    if (grad) r.backward(go.as<T>(), gd);
    r.synchronize();
  }
  od.download(o, BTD * sizeof(T));
  if (grad) {
    gw0.download(g->w0, W * sizeof(T));
    gw1.download(g->w1, W * sizeof(T));
    gw2.download(g->w2, W * sizeof(T));
    gq.download(g->q, BTD * sizeof(T));
    gk.download(g->k, BTD * sizeof(T));
    gv.download(g->v, BTD * sizeof(T));
    gl0.download(g->lr0, BT * sizeof(T));
    gl1.download(g->lr1, BT * sizeof(T));
    gl2.download(g->lr2, BT * sizeof(T));
    if (s.momentum) gm.download(g->mom, BT * sizeof(T));
  }
}

LactBenchResult bench_lact(const lact::Shape& s, int repeats, int warmup, const LactOptions& opt, bool skip_forward) {
  using T = float;
  s.validate();
  TTT_CHECK(repeats > 0 && warmup >= 0, "bench_lact: repeats must be positive");
  LactBenchResult res;
  res.device = device_description();
  reset_tracked_peak();
  const int64_t P = s.d * s.dh, BT = s.B * s.T, BTD = BT * s.d, W = s.B * P;
  auto buf = [](int64_t n) { return DeviceBuffer(size_t(n) * sizeof(T)); };
  DeviceBuffer w0 = buf(W), w1 = buf(W), w2 = buf(W), q = buf(BTD), k = buf(BTD), v = buf(BTD);
  DeviceBuffer l0 = buf(BT), l1 = buf(BT), l2 = buf(BT), mom = s.momentum ? buf(BT) : DeviceBuffer(), go = buf(BTD);
  // The CPU bench's distributions: weights N(0, 1/cols), q/k/v N(0, 1/d), rates U(0.001, 0.01), gate U(0.5, 0.95).
  w0.fill_random<T>(W, 11, 0, 1.0 / std::sqrt(double(s.d)), true);
  w1.fill_random<T>(W, 12, 0, 1.0 / std::sqrt(double(s.dh)), true);
  w2.fill_random<T>(W, 13, 0, 1.0 / std::sqrt(double(s.d)), true);
  q.fill_random<T>(BTD, 14, 0, 1.0 / std::sqrt(double(s.d)), true);
  k.fill_random<T>(BTD, 15, 0, 1.0 / std::sqrt(double(s.d)), true);
  v.fill_random<T>(BTD, 16, 0, 1.0 / std::sqrt(double(s.d)), true);
  l0.fill_random<T>(BT, 17, 0.001, 0.01, false);
  l1.fill_random<T>(BT, 18, 0.001, 0.01, false);
  l2.fill_random<T>(BT, 19, 0.001, 0.01, false);
  if (s.momentum) mom.fill_random<T>(BT, 20, 0.5, 0.95, false);
  go.fill_random<T>(BTD, 21, 0, 1.0, true);
  DeviceBuffer o = buf(BTD), gw0 = buf(W), gw1 = buf(W), gw2 = buf(W), gq = buf(BTD), gk = buf(BTD), gv = buf(BTD);
  DeviceBuffer gl0 = buf(BT), gl1 = buf(BT), gl2 = buf(BT), gm = s.momentum ? buf(BT) : DeviceBuffer();
  lact::Inputs<T> in{w0.as<T>(), w1.as<T>(), w2.as<T>(), q.as<T>(), k.as<T>(), v.as<T>(),
                     l0.as<T>(), l1.as<T>(), l2.as<T>(), s.momentum ? mom.as<T>() : nullptr};
  lact::Grads<T> g{gw0.as<T>(), gw1.as<T>(), gw2.as<T>(), gq.as<T>(), gk.as<T>(), gv.as<T>(),
                   gl0.as<T>(), gl1.as<T>(), gl2.as<T>(), s.momentum ? gm.as<T>() : nullptr};

  // CUDA events on the runner's stream around the enqueued work (device.h's elapsed_ms).
  auto timed = [&](LactRunner<T>& r, const std::function<void()>& body) { return elapsed_ms(body, r.stream()); };
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  if (!skip_forward) {
    LactRunner<T> rf(s, false, opt);
    for (int i = 0; i < warmup; ++i) timed(rf, [&] { rf.forward(in, o.as<T>()); });
    for (int i = 0; i < repeats; ++i) res.fwd_ms.push_back(timed(rf, [&] { rf.forward(in, o.as<T>()); }));
    res.fwd_ms_median = median(res.fwd_ms);
  }
  {
    LactRunner<T> rb(s, true, opt);
    res.workspace_bytes = rb.workspace_bytes();
    auto run = [&] {
      rb.forward(in, o.as<T>());
      rb.backward(go.as<T>(), g);
    };
    for (int i = 0; i < warmup; ++i) timed(rb, run);
    for (int i = 0; i < repeats; ++i) res.fwdbwd_ms.push_back(timed(rb, run));
    res.fwdbwd_ms_median = median(res.fwdbwd_ms);
    device_memory(&res.device_used_bytes, &res.device_total_bytes);
    cudaStream_t st = static_cast<cudaStream_t>(rb.stream());
    size_t bad = count_nonfinite(o.as<T>(), BTD, st);
    for (const DeviceBuffer* b : {&gw0, &gw1, &gw2}) bad += count_nonfinite(b->as<T>(), W, st);
    for (const DeviceBuffer* b : {&gq, &gk, &gv}) bad += count_nonfinite(b->as<T>(), BTD, st);
    for (const DeviceBuffer* b : {&gl0, &gl1, &gl2}) bad += count_nonfinite(b->as<T>(), BT, st);
    if (s.momentum) bad += count_nonfinite(gm.as<T>(), BT, st);
    res.output_finite = bad == 0;
  }
  // TTT_LACT_CHECK_GRAPH=1: the outputs of the last (graph-replayed) run against a runner without graphs on
  // the same inputs, printed to stderr (bitwise identical expected: same kernels, same products).
  const char* chk = std::getenv("TTT_LACT_CHECK_GRAPH");
  if (chk && std::string(chk) == "1") {
    std::vector<const DeviceBuffer*> outs = {&o, &gw0, &gw1, &gw2, &gq, &gk, &gv, &gl0, &gl1, &gl2};
    if (s.momentum) outs.push_back(&gm);
    auto grab = [&] {
      std::vector<std::vector<T>> h;
      for (const DeviceBuffer* b : outs) {
        h.emplace_back(b->bytes() / sizeof(T));
        b->download(h.back().data(), b->bytes());
      }
      return h;
    };
    const auto replayed = grab();
    {
      LactOptions eager_opt = opt;
      eager_opt.graphs = false;
      LactRunner<T> re(s, true, eager_opt);
      re.forward(in, o.as<T>());
      re.backward(go.as<T>(), g);
      re.synchronize();
    }
    const auto eager = grab();
    double worst = 0;
    size_t differ = 0;
    for (size_t i = 0; i < eager.size(); ++i)
      for (size_t j = 0; j < eager[i].size(); ++j) {
        const double a = replayed[i][j], b = eager[i][j];
        if (a != b) ++differ;
        if (std::isfinite(a) && std::isfinite(b)) worst = std::max(worst, std::fabs(a - b) / (std::fabs(b) + 1e-30));
      }
    std::fprintf(stderr, "lact graph replay vs eager (%s): %zu of the output elements differ, worst relative %.3g\n",
                 precision_name(opt), differ, worst);
  }
  res.tracked_peak_bytes = tracked_peak_bytes();
  return res;
}

template void lact_host<float>(const lact::Shape&, const lact::Inputs<float>&, float*, const float*,
                               const lact::Grads<float>*, const LactOptions&);
template void lact_host<double>(const lact::Shape&, const lact::Inputs<double>&, double*, const double*,
                                const lact::Grads<double>*, const LactOptions&);

}  // namespace ttt::cuda
