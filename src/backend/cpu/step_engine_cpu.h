// The CPU's step engine (backend/engine.h): the autograd model of src/model, sequences in parallel over the
// OpenMP threads, computing on the attached host weights and optimizer in place. Made by backend::make_step_engine.
#pragma once
#include <memory>

#include "backend/engine.h"

namespace ttt::backend {

std::unique_ptr<StepEngine> make_cpu_step_engine(const model::ModelConfig& cfg, const EngineOptions& options);

}  // namespace ttt::backend
