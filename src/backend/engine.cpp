#include "backend/engine.h"

#include <chrono>

#include "core/error.h"
#include "dist/communicator.h"

namespace ttt::backend {

double StepEngine::time_ms(const std::function<void()>& work) {
  const auto t0 = std::chrono::steady_clock::now();
  work();
  synchronize();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

nlohmann::json StepEngine::report() const { return {{"timer", "steady_clock"}}; }

void StepEngine::set_data_parallel(dist::Communicator& ranks, bool shard_optimizer) {
  TTT_CHECK(ranks.size() == 1, "--device " << device() << " trains in one process only, but this is "
                                           << ranks.describe() << "; run it without mpirun, or on a device with data "
                                           << "parallelism (cpu)");
  (void)shard_optimizer;  // one rank: its shard is the whole optimizer
}

void StepEngine::set_context_parallel(int cp, model::CpGlobal global) {
  TTT_CHECK(global != model::CpGlobal::Auto, "set_context_parallel: resolve --cp-global auto first (resolve_cp_global)");
  TTT_CHECK(cp == 1, "--context-parallel " << cp << " is not implemented on --device " << device()
                                           << "; TNT context parallelism runs on --device cpu");
}

void StepEngine::set_profiling(bool on) {
  TTT_CHECK(!on, "phase profiling is not available on device " << device());
}

}  // namespace ttt::backend
