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
  if (exec_) cudaGraphExecDestroy(exec_);
}

bool CachedGraph::replay(cudaStream_t st, const std::vector<const void*>& key) {
  if (!exec_ || key != key_) return false;
  TTT_CUDA_CHECK(cudaGraphLaunch(exec_, st));
  return true;
}

bool CachedGraph::capture_and_launch(cudaStream_t st, const std::vector<const void*>& key,
                                     const std::function<void()>& body, std::string* why) {
  if (exec_) cudaGraphExecDestroy(exec_);
  exec_ = nullptr;
  key_.clear();
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
  if (threw.empty() && e == cudaSuccess && graph) e = cudaGraphInstantiate(&exec_, graph, 0);
  if (graph) cudaGraphDestroy(graph);
  if (!threw.empty() || e != cudaSuccess || !exec_) {
    cudaGetLastError();  // clear the failed capture's (non-sticky) error
    if (exec_) cudaGraphExecDestroy(exec_);
    exec_ = nullptr;
    if (why) *why = !threw.empty() ? "a step threw during the capture: " + threw : std::string(cudaGetErrorString(e));
    return false;
  }
  key_ = key;
  TTT_CUDA_CHECK(cudaGraphLaunch(exec_, st));
  return true;
}

}  // namespace ttt::cuda
