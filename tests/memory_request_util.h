// Memory requests the memory-budget tests (test_limits.cpp, test_memory_budget_gpu.cpp, test_cuda_model_memory.cpp)
// ask the estimate about.
#pragma once
#include <cstdint>

#include "backend/options.h"
#include "train/memory_budget.h"

namespace ttt::test_util {

// A GPU training step of `batch` x `seq_len`, with bf16 products and activations (bf16) or in fp32, at the
// --recompute level `level`.
inline train::MemoryRequest gpu_training(int64_t batch, int64_t seq_len, bool bf16,
                                         backend::Recompute level = backend::Recompute::Full) {
  train::MemoryRequest r;
  r.device = "cuda";
  r.bf16 = r.bf16_activations = bf16;
  r.recompute = level;
  r.train_steps = true;
  r.batch = batch;
  r.seq_len = seq_len;
  return r;
}
// The same with bf16 products and activations.
inline train::MemoryRequest gpu_bf16_training(int64_t batch, int64_t seq_len,
                                              backend::Recompute level = backend::Recompute::Full) {
  return gpu_training(batch, seq_len, true, level);
}

}  // namespace ttt::test_util
