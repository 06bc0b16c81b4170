// CUDA graphs for the operator runners (lact_cuda.cu, titans_cuda.cu): one call's enqueued work (hundreds of
// cuBLAS calls and small launches) captured once and replayed while the call is made on the same pointers, which
// removes the host's enqueue cost and the gaps between small kernels. Correct only for work whose sequence depends
// on the shape and the pointers alone (the runners' forward/backward: the key is the pointers).
#pragma once
#include <cuda_runtime.h>

#include <functional>
#include <string>
#include <vector>

namespace ttt::cuda {

// True while `st` is being captured by a caller (work must then be recorded into the caller's capture).
bool stream_is_capturing(cudaStream_t st);

class CachedGraph {
 public:
  CachedGraph() = default;
  ~CachedGraph();
  CachedGraph(const CachedGraph&) = delete;
  CachedGraph& operator=(const CachedGraph&) = delete;

  // Launches the graph on `st` if it was captured for `key`; false (nothing launched) otherwise.
  bool replay(cudaStream_t st, const std::vector<const void*>& key);
  // Captures body() on `st` for `key` (dropping any graph held), then launches it. On failure (a CUDA error, or
  // body threw during the capture) nothing was launched, the capture's error is cleared, no graph is held, *why
  // says what happened, and it returns false: the caller runs body() eagerly (where a real error throws again).
  bool capture_and_launch(cudaStream_t st, const std::vector<const void*>& key, const std::function<void()>& body,
                          std::string* why);

 private:
  cudaGraphExec_t exec_ = nullptr;  // destroying one in flight is safe: CUDA frees it when it completes
  std::vector<const void*> key_;
};

}  // namespace ttt::cuda
