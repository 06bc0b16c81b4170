// Memory requests the memory-budget tests (test_limits.cpp, test_memory_budget_gpu.cpp) ask the estimate about.
#pragma once
#include <cstdint>

#include "backend/options.h"
#include "train/memory_budget.h"

namespace ttt::test_util {

// A GPU training step of `batch` x `seq_len` with bf16 products and activations, at the --recompute level `level`.
inline train::MemoryRequest gpu_bf16_training(int64_t batch, int64_t seq_len,
                                              backend::Recompute level = backend::Recompute::Full) {
  train::MemoryRequest r;
  r.device = "cuda";
  r.bf16 = r.bf16_activations = true;
  r.recompute = level;
  r.train_steps = true;
  r.batch = batch;
  r.seq_len = seq_len;
  return r;
}

}  // namespace ttt::test_util
