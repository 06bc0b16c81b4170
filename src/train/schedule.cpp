#include "train/schedule.h"

#include <algorithm>
#include <cmath>

namespace ttt::train {

double LrSchedule::at(int64_t step) const {
  if (step < warmup) return max_lr * double(step + 1) / double(warmup);
  const double min_lr = min_ratio * max_lr;
  const int64_t span = std::max<int64_t>(1, total - 1 - warmup);
  const double p = std::clamp(double(step - warmup) / double(span), 0.0, 1.0);
  return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + std::cos(M_PI * p));
}

}  // namespace ttt::train
