// CUDA graphs for the operator runners (lact_cuda.cu, titans_cuda.cu): one call's enqueued work (hundreds of
// cuBLAS calls and small launches) captured once and replayed while the call is made on the same pointers, which
// removes the host's enqueue cost and the gaps between small kernels. Correct only for work whose sequence depends
// on the shape and the pointers alone (the runners' forward/backward: the key is the pointers). A cache holds up
// to `capacity` graphs, one per key (the GPU model calls one shared runner per layer, each layer on its own
// pointers: a graph per layer), dropping the least recently used one when full.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include <functional>
#include <string>
#include <vector>

namespace ttt::cuda {

// True while `st` is being captured by a caller (work must then be recorded into the caller's capture).
bool stream_is_capturing(cudaStream_t st);

class CachedGraph {
 public:
  explicit CachedGraph(size_t capacity = 1) : capacity_(capacity < 1 ? 1 : capacity) {}
  ~CachedGraph();
  CachedGraph(const CachedGraph&) = delete;
  CachedGraph& operator=(const CachedGraph&) = delete;

  // Launches the graph on `st` if one was captured for `key`; false (nothing launched) otherwise.
  bool replay(cudaStream_t st, const std::vector<const void*>& key);
  // Captures body() on `st` for `key` (dropping the graph held for it, and the least recently used one when the
  // cache is full), then launches it. On failure (a CUDA error, or body threw during the capture) nothing was
  // launched, the capture's error is cleared, no graph is held for `key`, *why says what happened, and it returns
  // false: the caller runs body() eagerly (where a real error throws again).
  bool capture_and_launch(cudaStream_t st, const std::vector<const void*>& key, const std::function<void()>& body,
                          std::string* why);
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    std::vector<const void*> key;
    cudaGraphExec_t exec = nullptr;  // destroying one in flight is safe: CUDA frees it when it completes
    uint64_t used = 0;               // the use counter's value at its last launch
  };
  void drop(size_t i);
  size_t capacity_;
  uint64_t uses_ = 0;
  std::vector<Entry> entries_;
};

}  // namespace ttt::cuda
