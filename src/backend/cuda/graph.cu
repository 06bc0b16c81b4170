#include "backend/cuda/graph.cuh"

#include <exception>

#include "backend/cuda/check.cuh"

namespace ttt::cuda {

bool stream_is_capturing(cudaStream_t st) {
  cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
  TTT_CUDA_CHECK(cudaStreamIsCapturing(st, &cs));
  return cs != cudaStreamCaptureStatusNone;
}

CachedGraph::~CachedGraph() {
  for (Entry& e : entries_) cudaGraphExecDestroy(e.exec);
}

void CachedGraph::drop(size_t i) {
  cudaGraphExecDestroy(entries_[i].exec);
  entries_.erase(entries_.begin() + std::ptrdiff_t(i));
}

bool CachedGraph::replay(cudaStream_t st, const std::vector<const void*>& key) {
  for (Entry& e : entries_)
    if (e.key == key) {
      TTT_CUDA_CHECK(cudaGraphLaunch(e.exec, st));
      e.used = ++uses_;
      return true;
    }
  return false;
}

bool CachedGraph::capture_and_launch(cudaStream_t st, const std::vector<const void*>& key,
                                     const std::function<void()>& body, std::string* why) {
  for (size_t i = 0; i < entries_.size(); ++i)
    if (entries_[i].key == key) {
      drop(i);
      break;
    }
  if (entries_.size() >= capacity_) {
    size_t lru = 0;
    for (size_t i = 1; i < entries_.size(); ++i)
      if (entries_[i].used < entries_[lru].used) lru = i;
    drop(lru);
  }
  cudaGraphExec_t exec = nullptr;
  cudaError_t e = cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal);
  std::string threw;
  cudaGraph_t graph = nullptr;
  if (e == cudaSuccess) {
    try {
      body();
    } catch (const std::exception& x) {
      threw = x.what();
    } catch (...) {
      threw = "unknown exception";
    }
    e = cudaStreamEndCapture(st, &graph);  // ends the capture in every case
  }
  if (threw.empty() && e == cudaSuccess && graph) e = cudaGraphInstantiate(&exec, graph, 0);
  if (graph) cudaGraphDestroy(graph);
  if (!threw.empty() || e != cudaSuccess || !exec) {
    cudaGetLastError();  // clear the failed capture's (non-sticky) error
    if (exec) cudaGraphExecDestroy(exec);
    if (why) *why = !threw.empty() ? "a step threw during the capture: " + threw : std::string(cudaGetErrorString(e));
    return false;
  }
  entries_.push_back({key, exec, ++uses_});
  TTT_CUDA_CHECK(cudaGraphLaunch(exec, st));
  return true;
}

}  // namespace ttt::cuda
