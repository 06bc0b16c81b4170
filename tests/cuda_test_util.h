// Shared by the CUDA test files: the skip-without-a-device guard and fresh random seeds (every GPU parity test
// draws new inputs per run and prints the seed on failure).
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>

#ifdef TTT_HAVE_CUDA
#include "backend/cuda/device.h"  // ttt::cuda::device_count

// Skips the test, saying why, when no usable CUDA device is present.
#define REQUIRE_CUDA()                                                                           \
  do {                                                                                           \
    std::string why_;                                                                            \
    if (::ttt::cuda::device_count(&why_) == 0) GTEST_SKIP() << "no usable CUDA device: " << why_; \
  } while (0)
#endif

// Why a test that needs `n` GPUs cannot run here, or "": the CUDA runtime's count, which honours
// CUDA_VISIBLE_DEVICES as the ranks such a test starts will (nvidia-smi lists every GPU of the machine).
inline std::string gpus_missing(int n) {
#ifdef TTT_HAVE_CUDA
  std::string why;
  const int count = ::ttt::cuda::device_count(&why);
  if (count == 0) return "no usable CUDA device: " + why;
  if (count < n) return "fewer than " + std::to_string(n) + " GPUs visible (" + std::to_string(count) + ")";
  return "";
#else
  (void)n;
  return "built without the CUDA toolkit";
#endif
}

inline uint64_t fresh_seed() {
  std::random_device rd;
  return (uint64_t(rd()) << 32) ^ rd();
}
