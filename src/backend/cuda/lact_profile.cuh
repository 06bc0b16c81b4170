// The LaCT backend's optional per-step profile (lact_cuda.cu, its only includer).
#pragma once
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "backend/cuda/check.cuh"

namespace ttt::cuda {
namespace {

// ---- optional profile (env TTT_LACT_PROFILE=1): CUDA events around every backend step --------------------
// Each step of the backend (every GEMM by shape, every kernel, every conversion) is bracketed by two events on
// the runner's stream; the sums per step name and phase (F forward, B backward) are printed to stderr when the
// runner is destroyed, with the GPU time of whole forward / backward calls and the host time spent enqueueing
// them. Off (the default) it costs one branch per step. The events add ~1-2 us per step, so profile timings
// are for attribution, not for the bench.
class Prof {
 public:
  explicit Prof(cudaStream_t st) : st_(st) {
    const char* e = std::getenv("TTT_LACT_PROFILE");
    on_ = e && *e && std::string(e) != "0";
  }
  ~Prof() {
    if (!on_) return;
    try {
      flush();
      dump();
    } catch (...) {
    }
    for (cudaEvent_t e : pool_) cudaEventDestroy(e);
  }
  bool on() const { return on_; }
  struct Scope {
    Prof* p = nullptr;
    size_t idx = 0;
    ~Scope() {
      if (p) p->end(idx);
    }
  };
  Scope scope(const char* name) { return on_ ? begin(std::string(name)) : Scope{}; }
  Scope scope_str(const std::string& name) { return on_ ? begin(name) : Scope{}; }
  // Whole forward / backward calls: GPU time between two events and host enqueue time.
  void call_begin(char phase) {
    if (!on_) return;
    phase_ = phase;
    flush();
    call_a_ = event();
    call_b_ = event();
    cudaEventRecord(call_a_, st_);
    host_t0_ = std::chrono::steady_clock::now();
  }
  void call_end() {
    if (!on_) return;
    const double host = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - host_t0_).count();
    cudaEventRecord(call_b_, st_);
    cudaEventSynchronize(call_b_);
    float ms = 0;
    cudaEventElapsedTime(&ms, call_a_, call_b_);
    auto& c = calls_[phase_];
    c.n += 1, c.gpu += ms, c.host += host;
    pool_.push_back(call_a_);
    pool_.push_back(call_b_);
    flush();
  }

 private:
  struct Rec {
    std::string name;
    cudaEvent_t a, b;
  };
  struct Acc2 {
    double ms = 0;
    int64_t n = 0;
  };
  struct Call {
    int64_t n = 0;
    double gpu = 0, host = 0;
  };
  cudaStream_t st_;
  bool on_ = false;
  char phase_ = 'F';
  std::vector<Rec> pending_;
  std::vector<cudaEvent_t> pool_;
  std::map<std::string, Acc2> acc_;
  std::map<char, Call> calls_;
  cudaEvent_t call_a_ = nullptr, call_b_ = nullptr;
  std::chrono::steady_clock::time_point host_t0_;

  cudaEvent_t event() {
    if (pool_.empty()) {
      cudaEvent_t e;
      TTT_CUDA_CHECK(cudaEventCreate(&e));
      return e;
    }
    cudaEvent_t e = pool_.back();
    pool_.pop_back();
    return e;
  }
  Scope begin(std::string name) {
    if (pending_.size() >= 4096) flush();
    Rec r{std::string(1, phase_) + " " + name, event(), event()};
    cudaEventRecord(r.a, st_);
    pending_.push_back(r);
    return Scope{this, pending_.size() - 1};
  }
  void end(size_t idx) { cudaEventRecord(pending_[idx].b, st_); }
  void flush() {
    if (pending_.empty()) return;
    cudaStreamSynchronize(st_);
    for (Rec& r : pending_) {
      float ms = 0;
      cudaEventElapsedTime(&ms, r.a, r.b);
      auto& a = acc_[r.name];
      a.ms += ms, a.n += 1;
      pool_.push_back(r.a);
      pool_.push_back(r.b);
    }
    pending_.clear();
  }
  void dump() const {
    std::vector<std::pair<std::string, Acc2>> v(acc_.begin(), acc_.end());
    std::sort(v.begin(), v.end(), [](const auto& x, const auto& y) { return x.second.ms > y.second.ms; });
    std::fprintf(stderr, "lact profile (TTT_LACT_PROFILE): per call of forward (F) / backward (B)\n");
    for (const auto& [p, c] : calls_)
      std::fprintf(stderr, "  %c calls %lld: GPU %.3f ms/call, host enqueue %.3f ms/call\n", p, (long long)c.n,
                   c.gpu / double(std::max<int64_t>(c.n, 1)), c.host / double(std::max<int64_t>(c.n, 1)));
    double tot[2] = {0, 0};
    for (const auto& [name, a] : v) {
      const char p = name[0];
      const auto it = calls_.find(p);
      const double nc = it == calls_.end() ? 1.0 : double(std::max<int64_t>(it->second.n, 1));
      tot[p == 'B'] += a.ms / nc;
      std::fprintf(stderr, "  %-44s %9.3f ms/call  %7.1f launches/call  %8.2f us each\n", name.c_str(), a.ms / nc,
                   double(a.n) / nc, 1e3 * a.ms / double(std::max<int64_t>(a.n, 1)));
    }
    std::fprintf(stderr, "  sum of steps: F %.3f ms/call, B %.3f ms/call\n", tot[0], tot[1]);
  }
};

}  // namespace
}  // namespace ttt::cuda
