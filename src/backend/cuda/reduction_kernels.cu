// Reduction kernels (reduction_kernels.h): a first pass of at most kPartials blocks for the whole-array sum, each
// a warp-shuffle tree and then the block's warps in order, then the partial sums in order on the host (double
// accumulators, no atomics: deterministic). Naming and launch conventions: kernel_util.cuh.
#include "backend/cuda/reduction_kernels.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <vector>

#include "core/error.h"
#include "backend/cuda/check.cuh"
#include "backend/cuda/kernel_util.cuh"

namespace ttt::cuda::mk {

namespace {

constexpr int kPartials = 1024;  // blocks of sum_squares' first pass

__global__ void k_sum_squares_partial(const float* x, int64_t n, double* part) {
  __shared__ double sh[kThreads / 32];
  double acc = 0;
  GRID_STRIDE(i, n) acc += double(x[i]) * double(x[i]);
  acc = warp_sum(acc);
  if (threadIdx.x % 32 == 0) sh[threadIdx.x / 32] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double s = 0;
    for (int w = 0; w < kThreads / 32; ++w) s += sh[w];
    part[blockIdx.x] = s;
  }
}
// The first pass's partial sums: one buffer per device, allocated on first use and kept (a cudaFree per call
// would wait for the whole device every step; ZeRO-1's clipping calls sum_squares every step). Calls hold
// partials_lock() while they use it, so host threads never share a buffer at the same time.
std::mutex& partials_lock() {
  static std::mutex lock;
  return lock;
}
double* partials_buffer() {  // with partials_lock() held
  static std::map<int, double*>* by_device = new std::map<int, double*>;  // never freed: ends with the process
  int device = 0;
  TTT_CUDA_CHECK(cudaGetDevice(&device));
  double*& part = (*by_device)[device];
  if (!part) TTT_CUDA_CHECK(cudaMalloc(&part, sizeof(double) * kPartials));
  return part;
}
}  // namespace

double sum_squares(const float* x, int64_t n) {
  if (n <= 0) return 0.0;
  std::lock_guard<std::mutex> hold(partials_lock());
  double* part = partials_buffer();
  const int blocks = int(std::min<int64_t>(kPartials, (n + kThreads - 1) / kThreads));
  k_sum_squares_partial<<<blocks, kThreads>>>(x, n, part);
  cudaError_t launch = cudaGetLastError();
  std::vector<double> host(size_t(blocks), 0.0);
  cudaError_t copy = cudaMemcpy(host.data(), part, sizeof(double) * size_t(blocks), cudaMemcpyDeviceToHost);
  TTT_CHECK(launch == cudaSuccess && copy == cudaSuccess,
            "sum_squares: " << cudaGetErrorString(launch != cudaSuccess ? launch : copy));
  double s = 0;
  for (double v : host) s += v;  // fixed order: deterministic
  return s;
}

}  // namespace ttt::cuda::mk
