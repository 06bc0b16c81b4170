// The Titans memory cases shared by the memory's tests (CPU twin, GPU batched and persistent kernels, their CPU
// emulation): sizes, gates, the reset period, the Q-K projection and a forced segment length, with a name for
// failure messages and the engine's MemoryShape.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/rng.h"
#include "ttt/titans_fused.h"

namespace ttt::test {

struct TitansCase {
  int64_t B, T, d, dh, chunk, period;
  bool momentum, decay, residual, qk = false;
  int64_t segment = 0;  // 0: the engine's default segment length
  std::string name() const {
    return "B" + std::to_string(B) + "_T" + std::to_string(T) + "_d" + std::to_string(d) + "_dh" +
           std::to_string(dh) + "_C" + std::to_string(chunk) + "_S" + std::to_string(period) +
           (momentum ? "_mom" : "") + (decay ? "_decay" : "") + (residual ? "_res" : "") + (qk ? "_qk" : "") +
           (segment ? "_seg" + std::to_string(segment) : "");
  }
  titans::MemoryShape shape() const {
    titans::MemoryShape s;
    s.B = B;
    s.T = T;
    s.d = d;
    s.dh = dh;
    s.chunk = chunk;
    s.period = period;
    s.momentum = momentum;
    s.decay = decay;
    s.residual = residual;
    s.qk = qk;
    s.segment = segment;
    return s;
  }
};

// A memory run on host arrays (the CPU twin titans::memory_cpu, or the GPU's cuda::titans_host).
using MemoryRun = std::function<void(const titans::MemoryShape&, const titans::MemoryInputs<double>&, double*,
                                     const double*, const titans::MemoryGrads<double>*)>;

// One chain of B sequence-heads over T tokens cut at `cut` (a multiple of the chunk): the part before the cut with
// MemoryShape::continues, handing its exit state (W and momentum, state layout) to the part after it, whose entry
// adjoint goes back as the first part's exit adjoint (context parallelism's --cp-global state on two spans).
// Every result in the whole chain's layout, plus the values that crossed the cut.
struct ChainSplit {
  std::vector<double> o, gq, gk, gv, gtheta, geta, galpha, gw1, gw2;  // [B,T,.] / [B,P]: the whole chain's layouts
  std::vector<double> exit_W, exit_S, entry_dW, entry_dS;             // [B][2P]: what crossed the cut
};
struct ChainData {
  int64_t B = 3, T = 24, d = 4, dh = 6, chunk = 4;
  std::vector<double> q, k, v, w1, w2, theta, eta, alpha, go;
  titans::MemoryShape shape(int64_t tokens, bool continues, int64_t segment = 0) const {
    titans::MemoryShape s;
    s.B = B, s.T = tokens, s.d = d, s.dh = dh, s.chunk = chunk, s.continues = continues, s.segment = segment;
    return s;
  }
};
inline ChainData make_chain_data(uint64_t seed) {
  ChainData x;
  Rng r(seed);
  auto normal = [&](int64_t n, double sc) {
    std::vector<double> v(static_cast<size_t>(n));
    for (auto& e : v) e = r.normal() * sc;
    return v;
  };
  auto uniform = [&](int64_t n, double lo, double hi) {
    std::vector<double> v(static_cast<size_t>(n));
    for (auto& e : v) e = r.uniform(lo, hi);
    return v;
  };
  const int64_t BTd = x.B * x.T * x.d, P = x.d * x.dh, BT = x.B * x.T;
  x.q = normal(BTd, 0.5), x.k = normal(BTd, 0.5), x.v = normal(BTd, 0.5);
  x.w1 = normal(x.B * P, 0.5), x.w2 = normal(x.B * P, 0.4);
  x.theta = uniform(BT, 0.01, 0.1), x.eta = uniform(BT, 0.3, 0.9), x.alpha = uniform(BT, 0.01, 0.1);
  x.go = normal(BTd, 1.0);
  return x;
}
// Zero results in the whole chain's layouts.
inline ChainSplit zero_chain_results(const ChainData& x) {
  const int64_t BTd = x.B * x.T * x.d, BT = x.B * x.T, BP = x.B * x.d * x.dh;
  ChainSplit r;
  r.o.assign(size_t(BTd), 0), r.gq = r.gk = r.gv = r.o;
  r.gtheta.assign(size_t(BT), 0), r.geta = r.galpha = r.gtheta;
  r.gw1.assign(size_t(BP), 0), r.gw2 = r.gw1;
  r.exit_W.assign(size_t(2 * BP), 0), r.exit_S = r.entry_dW = r.entry_dS = r.exit_W;
  return r;
}
// The whole chain in one run (the reference).
inline ChainSplit run_whole_chain(const MemoryRun& run, const ChainData& x) {
  ChainSplit r = zero_chain_results(x);
  titans::MemoryInputs<double> in{x.q.data(), x.k.data(), x.v.data(), x.w1.data(), x.w2.data(),
                                  x.theta.data(), x.eta.data(), x.alpha.data()};
  titans::MemoryGrads<double> g{r.gq.data(), r.gk.data(), r.gv.data(), r.gw1.data(), r.gw2.data(),
                                r.gtheta.data(), r.geta.data(), r.galpha.data()};
  run(x.shape(x.T, false), in, r.o.data(), x.go.data(), &g);
  return r;
}
// The two parts with the state passed; `segment` > 0 forces the first part's segment length (its recomputation
// and the exit state's checkpoint slot).
inline ChainSplit run_chain_in_two(const MemoryRun& run, const ChainData& x, int64_t cut, int64_t segment = 0) {
  const int64_t BP = x.B * x.d * x.dh;
  ChainSplit r = zero_chain_results(x);
  // Rows [t0, t1) of every sequence-head of a [B,T,c] array, and back.
  auto part = [&](const std::vector<double>& a, int64_t c, int64_t t0, int64_t t1) {
    std::vector<double> o;
    for (int64_t b = 0; b < x.B; ++b) o.insert(o.end(), a.begin() + (b * x.T + t0) * c, a.begin() + (b * x.T + t1) * c);
    return o;
  };
  auto put = [&](std::vector<double>& a, const std::vector<double>& p, int64_t c, int64_t t0, int64_t t1) {
    for (int64_t b = 0; b < x.B; ++b)
      std::copy_n(p.begin() + b * (t1 - t0) * c, (t1 - t0) * c, a.begin() + (b * x.T + t0) * c);
  };
  struct Part {
    std::vector<double> q, k, v, th, et, al, go, o, gq, gk, gv, gth, get, gal, gw1, gw2;
  };
  auto make_part = [&](int64_t t0, int64_t t1) {
    Part p;
    p.q = part(x.q, x.d, t0, t1), p.k = part(x.k, x.d, t0, t1), p.v = part(x.v, x.d, t0, t1);
    p.th = part(x.theta, 1, t0, t1), p.et = part(x.eta, 1, t0, t1), p.al = part(x.alpha, 1, t0, t1);
    p.go = part(x.go, x.d, t0, t1);
    p.o.assign(p.q.size(), 0), p.gq = p.gk = p.gv = p.o;
    p.gth.assign(p.th.size(), 0), p.get = p.gal = p.gth;
    p.gw1.assign(size_t(BP), 0), p.gw2 = p.gw1;
    return p;
  };
  Part a = make_part(0, cut), b = make_part(cut, x.T);
  // Forward of the first part; the second from its exit state. Each run does its own backward right away (the
  // runs are independent calls), so the second part runs first in full, then the first with its exit adjoint:
  // the forward of the first part is recomputed by its call, as a GPU layer's recomputation does.
  {
    titans::MemoryInputs<double> in{a.q.data(), a.k.data(), a.v.data(), x.w1.data(), x.w2.data(),
                                    a.th.data(), a.et.data(), a.al.data()};
    in.exit_W = r.exit_W.data(), in.exit_S = r.exit_S.data();
    run(x.shape(cut, true, segment), in, a.o.data(), nullptr, nullptr);
  }
  {
    titans::MemoryInputs<double> in{b.q.data(), b.k.data(), b.v.data(), x.w1.data(), x.w2.data(),
                                    b.th.data(), b.et.data(), b.al.data()};
    in.entry_W = r.exit_W.data(), in.entry_S = r.exit_S.data();
    titans::MemoryGrads<double> g{b.gq.data(), b.gk.data(), b.gv.data(), b.gw1.data(), b.gw2.data(),
                                  b.gth.data(), b.get.data(), b.gal.data()};
    g.entry_dW = r.entry_dW.data(), g.entry_dS = r.entry_dS.data();
    run(x.shape(x.T - cut, false), in, b.o.data(), b.go.data(), &g);
  }
  {
    titans::MemoryInputs<double> in{a.q.data(), a.k.data(), a.v.data(), x.w1.data(), x.w2.data(),
                                    a.th.data(), a.et.data(), a.al.data()};
    titans::MemoryGrads<double> g{a.gq.data(), a.gk.data(), a.gv.data(), r.gw1.data(), r.gw2.data(),
                                  a.gth.data(), a.get.data(), a.gal.data()};
    g.exit_dW = r.entry_dW.data(), g.exit_dS = r.entry_dS.data();
    run(x.shape(cut, true, segment), in, a.o.data(), a.go.data(), &g);
  }
  for (Part* p : {&a, &b}) {
    const int64_t t0 = p == &a ? 0 : cut, t1 = p == &a ? cut : x.T;
    put(r.o, p->o, x.d, t0, t1), put(r.gq, p->gq, x.d, t0, t1), put(r.gk, p->gk, x.d, t0, t1);
    put(r.gv, p->gv, x.d, t0, t1), put(r.gtheta, p->gth, 1, t0, t1), put(r.geta, p->get, 1, t0, t1);
    put(r.galpha, p->gal, 1, t0, t1);
  }
  return r;
}
// The largest |a - b| / max(1, |b|) over every result; `what` names the worst.
inline double chain_split_error(const ChainSplit& a, const ChainSplit& b, std::string* what, bool crossing = false) {
  double worst = 0;
  auto cmp = [&](const std::vector<double>& x, const std::vector<double>& y, const char* name) {
    if (x.size() != y.size()) {
      worst = INFINITY, *what = std::string(name) + ": sizes differ";
      return;
    }
    for (size_t i = 0; i < x.size(); ++i) {
      const double e = std::abs(x[i] - y[i]) / std::max(1.0, std::abs(y[i]));
      if (!(e <= worst)) worst = e, *what = name;
    }
  };
  cmp(a.o, b.o, "o"), cmp(a.gq, b.gq, "grad_q"), cmp(a.gk, b.gk, "grad_k"), cmp(a.gv, b.gv, "grad_v");
  cmp(a.gtheta, b.gtheta, "grad_theta"), cmp(a.geta, b.geta, "grad_eta"), cmp(a.galpha, b.galpha, "grad_alpha");
  cmp(a.gw1, b.gw1, "grad_w1"), cmp(a.gw2, b.gw2, "grad_w2");
  if (crossing) {
    cmp(a.exit_W, b.exit_W, "exit_W"), cmp(a.exit_S, b.exit_S, "exit_S");
    cmp(a.entry_dW, b.entry_dW, "entry_dW"), cmp(a.entry_dS, b.entry_dS, "entry_dS");
  }
  return worst;
}

// The persistent kernels' GPU parity cases (test_cuda_titans_persistent.cpp), which the CPU emulation runs at the
// device's block size too: width 64 (the heads) and small odd shapes that exercise the generic paths.
inline std::vector<TitansCase> persistent_gpu_cases() {
  return {
      // B   T   d   dh  C   S   mom    decay  res    qk     seg
      {2, 100, 64, 64, 8, 0, true, true, true, false, 0},     // Titans C = 8; T % C != 0; 13 chunks, K = 4
      {2, 150, 64, 64, 16, 0, false, true, true, false, 0},   // no momentum
      {2, 200, 64, 64, 64, 0, true, false, true, false, 0},   // C = 64, no decay
      {2, 150, 64, 64, 8, 48, true, true, true, true, 0},     // TNT local: shards of 48 (tail of 6), Q-K
      {3, 96, 64, 64, 16, 32, true, true, true, true, 0},     // shards dividing T, Q-K
      {2, 130, 64, 64, 8, 64, true, true, false, false, 3},   // residual off; forced segments of 3 (8 chunks)
      {2, 90, 64, 64, 8, 0, false, false, true, false, 5},    // no gates at all; 12 chunks, segments of 5
      {2, 37, 5, 7, 3, 0, true, true, true, false, 0},        // odd widths
      {3, 40, 6, 4, 8, 13, false, true, false, true, 2},      // shard not a multiple of C, Q-K, segments of 2
      {2, 50, 32, 48, 3, 24, true, true, true, true, 1},      // d != dh; every state recomputed from itself
  };
}

}  // namespace ttt::test
