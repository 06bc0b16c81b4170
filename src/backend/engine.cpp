#include "backend/engine.h"

#include <chrono>

#include "core/error.h"

namespace ttt::backend {

double StepEngine::time_ms(const std::function<void()>& work) {
  const auto t0 = std::chrono::steady_clock::now();
  work();
  synchronize();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

nlohmann::json StepEngine::report() const { return {{"timer", "steady_clock"}}; }

void StepEngine::set_profiling(bool on) {
  TTT_CHECK(!on, "phase profiling is not available on device " << device());
}

}  // namespace ttt::backend
