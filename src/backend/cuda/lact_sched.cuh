// The LaCT backend's scheduler over several streams (lact_cuda.cu, its only includer).
//
// lact::Fused issues its steps one after another; many of them do not depend on each other (the apply of a chunk
// and its update, the update's two token products, the backward's apply adjoint and most of the update adjoint's
// weight and token products). Alone, most of those steps fill a part of the GPU: a [384 x 384] weight product is
// 36 tiles on 132 SMs, an element-wise pass waits on memory while the tensor cores idle. The scheduler runs every
// step of a call on one of several streams, after exactly the steps it depends on: each step names the memory it
// reads and writes (Span: blocks of bytes, strided over the heads), a step depends on every earlier step of the
// call whose memory overlaps its own where one of the two writes (read after write, write after read, write
// after write), and it waits on those steps' events (a CUDA graph capture turns these into the graph's edges).
// Vector clocks (per stream, the last step of that stream known to be done before) keep the waits to the ones
// that stream order does not already imply and choose a stream whose last step is already a dependency, so that
// no false dependency is added where one can be avoided. Every call forks from the runner's main stream and joins
// back into it: to the caller the call is ordered on the main stream as before. What runs is the same steps on
// the same data in a dependency-respecting order: the same bits as one stream (each step's own arithmetic and
// order are unchanged).
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include "backend/cuda/check.cuh"

namespace ttt::cuda {
namespace {

// `count` blocks of `len` bytes, `stride` bytes apart, from address `s`.
struct Span {
  uintptr_t s = 0;
  int64_t len = 0, stride = 0, count = 1;
  uintptr_t end() const { return s + uintptr_t((count - 1) * stride + len); }
};
inline int64_t floor_div(int64_t a, int64_t b) {  // b > 0
  int64_t q = a / b;
  if (a % b != 0 && a < 0) --q;
  return q;
}
inline int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }  // b > 0
// Whether two spans share a byte (exact for spans of one stride, or where one is a single block; otherwise
// whether their extents overlap).
inline bool spans_overlap(const Span& a, const Span& b) {
  if (a.len <= 0 || b.len <= 0) return false;
  if (a.s >= b.end() || b.s >= a.end()) return false;
  if (a.count == 1 && b.count == 1) return true;
  int64_t st;
  if (a.count == 1) st = b.stride;
  else if (b.count == 1 || a.stride == b.stride) st = a.stride;
  else return true;
  if (st <= 0) return true;
  // a's block i and b's block j overlap iff -b.len < delta + (j - i) st < a.len.
  const int64_t delta = int64_t(b.s - a.s);
  const int64_t kmin = std::max<int64_t>(floor_div(-b.len - delta, st) + 1, -(a.count - 1));
  const int64_t kmax = std::min<int64_t>(ceil_div(a.len - delta, st) - 1, b.count - 1);
  return kmin <= kmax;
}
// Whether every byte of r is in w.
inline bool span_covers(const Span& w, const Span& r) {
  if (r.len <= 0) return true;
  if (r.s < w.s || r.end() > w.end()) return false;
  if (w.count == 1 || w.len >= w.stride) return true;  // w is one contiguous range
  if (r.count > 1 && r.stride != w.stride) return false;
  const int64_t rel = int64_t(r.s - w.s), i = rel / w.stride, off = rel % w.stride;
  return off + r.len <= w.len && i + r.count <= w.count;
}

constexpr int kMaxStreams = 8;

class Sched {
 public:
  struct Use {
    Span sp;
    bool w = false;
  };
  Sched() = default;
  Sched(const Sched&) = delete;
  Sched& operator=(const Sched&) = delete;
  ~Sched() {
    for (size_t i = 1; i < st_.size(); ++i) cudaStreamDestroy(st_[i]);
    for (cudaEvent_t e : ev_) cudaEventDestroy(e);
    for (cudaEvent_t e : join_) cudaEventDestroy(e);
    if (fork_) cudaEventDestroy(fork_);
  }
  // Stream 0 is `main` (the caller's); n - 1 more are created.
  void init(cudaStream_t main, int n) {
    n = std::max(1, std::min(n, kMaxStreams));
    st_.assign(1, main);
    for (int i = 1; i < n; ++i) {
      cudaStream_t s;
      TTT_CUDA_CHECK(cudaStreamCreate(&s));  // blocking, as the main stream: ordered with the legacy default stream
      st_.push_back(s);
    }
    TTT_CUDA_CHECK(cudaEventCreateWithFlags(&fork_, cudaEventDisableTiming));
    join_.resize(size_t(n));
    for (cudaEvent_t& e : join_) TTT_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    grow_events(512);
  }
  int size() const { return int(st_.size()); }
  cudaStream_t stream(int i) const { return st_[size_t(i)]; }
  bool active() const { return active_; }

  // A call (forward or backward): its steps start after what the main stream holds and end before what follows.
  void begin_call() {
    if (st_.size() <= 1) return;
    active_ = true;
    recs_.clear();
    ops_.clear();
    for (auto& v : by_stream_) v.clear();
    by_stream_.resize(st_.size());
    nseq_.assign(st_.size(), 0);
    TTT_CUDA_CHECK(cudaEventRecord(fork_, st_[0]));
  }
  void end_call() {
    if (!active_) return;
    for (size_t s = 1; s < st_.size(); ++s) {
      if (nseq_[s] == 0) continue;
      TTT_CUDA_CHECK(cudaEventRecord(join_[s], st_[s]));
      TTT_CUDA_CHECK(cudaStreamWaitEvent(st_[0], join_[s], 0));
    }
    active_ = false;
    recs_.clear();
  }

  // The stream index the next step runs on (after the waits its dependencies need); end_op() after enqueueing it.
  int begin_op(const Use* u, int nu) {
    cur_ = 0;
    if (!active_) return 0;
    const int n = size(), id = int(ops_.size());
    Clock dep{};
    for (const Rec& r : recs_)
      for (int i = 0; i < nu; ++i)
        if ((r.w || u[i].w) && spans_overlap(r.sp, u[i].sp)) {
          const Clock& c = ops_[size_t(r.op)].vc;
          for (int s = 0; s < n; ++s) dep[s] = std::max(dep[s], c[s]);
          break;
        }
    // A stream whose last step is already a dependency (or that has none), the one with the latest such step
    // (a chain stays on its stream, idle streams stay free for independent work).
    int pick = -1, pick_last = -2;
    for (int s = 0; s < n; ++s) {
      if (nseq_[size_t(s)] > dep[s]) continue;
      const int last = nseq_[size_t(s)] ? by_stream_[size_t(s)].back() : -1;
      if (last > pick_last) pick = s, pick_last = last;
    }
    if (pick < 0) {  // every stream would add a false dependency: take the one whose last step is the oldest
      int oldest = -1;
      for (int s = 0; s < n; ++s) {
        const int last = by_stream_[size_t(s)].back();
        if (pick < 0 || last < oldest) pick = s, oldest = last;
      }
    }
    const size_t ps = size_t(pick);
    Clock vc{};
    if (nseq_[ps] > 0) vc = ops_[size_t(by_stream_[ps].back())].vc;
    else if (pick != 0) TTT_CUDA_CHECK(cudaStreamWaitEvent(st_[ps], fork_, 0));
    for (int s = 0; s < n; ++s)
      if (s != pick && dep[s] > vc[s]) {
        TTT_CUDA_CHECK(cudaStreamWaitEvent(st_[ps], ev_[size_t(by_stream_[size_t(s)][size_t(dep[s] - 1)])], 0));
        vc[s] = std::max(vc[s], dep[s]);
      }
    for (int s = 0; s < n; ++s) vc[s] = std::max(vc[s], dep[s]);
    vc[pick] = ++nseq_[ps];
    by_stream_[ps].push_back(id);
    ops_.push_back(Op{pick, vc});
    // What the step touches; a write makes every earlier record it covers redundant (anything that would depend
    // on those depends on this step, which depends on them).
    for (int i = 0; i < nu; ++i)
      if (u[i].w && u[i].sp.len > 0)
        recs_.erase(std::remove_if(recs_.begin(), recs_.end(), [&](const Rec& r) { return span_covers(u[i].sp, r.sp); }),
                    recs_.end());
    for (int i = 0; i < nu; ++i)
      if (u[i].sp.len > 0) recs_.push_back(Rec{u[i].sp, u[i].w, id});
    cur_ = pick;
    return pick;
  }
  // Records the step's completion (no throw: called from a scope's end; a failure shows at the next check).
  void end_op() noexcept {
    if (!active_) return;
    const size_t id = ops_.size() - 1;
    while (id >= ev_.size()) {
      cudaEvent_t e;
      if (cudaEventCreateWithFlags(&e, cudaEventDisableTiming) != cudaSuccess) return;
      ev_.push_back(e);
    }
    cudaEventRecord(ev_[id], st_[size_t(cur_)]);
  }

 private:
  using Clock = std::array<int, kMaxStreams>;  // per stream: steps of it known done (its sequence numbers 1..)
  struct Op {
    int stream;
    Clock vc;
  };
  struct Rec {
    Span sp;
    bool w;
    int op;
  };
  std::vector<cudaStream_t> st_;
  std::vector<cudaEvent_t> ev_;  // per step of the call
  std::vector<cudaEvent_t> join_;
  cudaEvent_t fork_ = nullptr;
  bool active_ = false;
  int cur_ = 0;
  std::vector<Rec> recs_;
  std::vector<Op> ops_;
  std::vector<std::vector<int>> by_stream_;  // step ids of each stream, in order
  std::vector<int> nseq_;
  void grow_events(size_t n) {
    while (ev_.size() < n) {
      cudaEvent_t e;
      TTT_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
      ev_.push_back(e);
    }
  }
};

}  // namespace
}  // namespace ttt::cuda
