// Error checks shared by the CUDA sources: every CUDA/cuBLAS call and every kernel launch throws a
// ttt::Error naming the call (or kernel) and the CUDA error.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "core/error.h"

#define TTT_CUDA_CHECK(call)                                                                                 \
  do {                                                                                                       \
    cudaError_t ttt_e_ = (call);                                                                             \
    if (ttt_e_ != cudaSuccess)                                                                               \
      TTT_FAIL("CUDA error " << cudaGetErrorName(ttt_e_) << " (" << cudaGetErrorString(ttt_e_) << ") in "    \
                             << #call << " at " << __FILE__ << ":" << __LINE__);                             \
  } while (0)

#define TTT_CUBLAS_CHECK(call)                                                                               \
  do {                                                                                                       \
    cublasStatus_t ttt_s_ = (call);                                                                          \
    if (ttt_s_ != CUBLAS_STATUS_SUCCESS)                                                                     \
      TTT_FAIL("cuBLAS error " << cublasGetStatusName(ttt_s_) << " (" << cublasGetStatusString(ttt_s_)       \
                               << ") in " << #call << " at " << __FILE__ << ":" << __LINE__);                \
  } while (0)

// After every kernel launch: launch-configuration errors and earlier asynchronous faults.
#define TTT_LAUNCH_CHECK(name)                                                                               \
  do {                                                                                                       \
    cudaError_t ttt_e_ = cudaGetLastError();                                                                 \
    if (ttt_e_ != cudaSuccess)                                                                               \
      TTT_FAIL("CUDA error " << cudaGetErrorName(ttt_e_) << " (" << cudaGetErrorString(ttt_e_)               \
                             << ") launching kernel " << name);                                              \
  } while (0)
