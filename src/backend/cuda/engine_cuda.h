// The CUDA backend's side of the execution interface (backend/engine.h, backend/streamer.h, backend/operators.h):
// the step engine over GpuModel (model_cuda.h), the streamer GpuStreamer (generate_cuda.h), the operator backends
// and their benchmarks. backend/registry.cpp is their only caller outside this folder.
//
// This header needs no CUDA headers.
#pragma once
#include <memory>

#include "backend/engine.h"
#include "backend/operators.h"
#include "backend/streamer.h"

namespace ttt::cuda {

// GpuModel behind StepEngine: parameters, gradients and AdamW moments on the device; the step exactly as
// `ttt train` ran it on the GPU before the engine existed (zero_grad, one forward + backward per micro-batch with
// its share of the valid targets, apply_grad_mask, clip_grad_norm, adamw_step); the host copies are written
// only by sync_host. Several ranks: the gradient all-reduced by NCCL in buckets overlapped with the backward, or
// reduce-scattered for the sharded optimizer (docs/ARCHITECTURE.md, "Several processes"). Benchmarks: CUDA-event
// timing, phase profiling, tracked memory since construction.
std::unique_ptr<backend::StepEngine> make_step_engine(const model::ModelConfig& cfg, const backend::EngineOptions& options);
std::unique_ptr<backend::Streamer> make_streamer(const model::ModelConfig& cfg, const model::Params<float>& params);
backend::OperatorBackends operator_backends();
backend::OperatorBench& operator_bench();  // the benchmarks of operator_backends() (op_bench_cuda.cpp)
// The LaCT operator on device pointers (backend::start_lact_on_device; lact_device_run.cpp).
std::unique_ptr<backend::LactDeviceRun> start_lact_on_device(const backend::LactDeviceCall& call, void* o,
                                                             bool with_grad);

}  // namespace ttt::cuda
