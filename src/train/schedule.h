// Learning-rate schedule: linear warmup, then cosine decay to min_ratio * max_lr.
//
// For the 0-based step s of a run of `total` steps:
//   s <  warmup:  lr = max_lr * (s + 1) / warmup                (reaches max_lr at s = warmup - 1)
//   s >= warmup:  p = (s - warmup) / max(1, total - 1 - warmup), clamped to [0, 1]
//                 lr = min_lr + (max_lr - min_lr) * (1 + cos(pi p)) / 2,  min_lr = min_ratio * max_lr
// so lr = max_lr at s = warmup and lr = min_lr at the last step s = total - 1 (and after it).
#pragma once
#include <cstdint>

namespace ttt::train {

struct LrSchedule {
  double max_lr = 3e-3;
  double min_ratio = 0.1;
  int64_t warmup = 0;
  int64_t total = 1;

  double at(int64_t step) const;
};

}  // namespace ttt::train
