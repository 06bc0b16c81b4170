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

inline uint64_t fresh_seed() {
  std::random_device rd;
  return (uint64_t(rd()) << 32) ^ rd();
}
