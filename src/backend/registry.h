// Devices by name. The registry makes each device's implementation of the execution interface — the step engine
// (engine.h), the streamer (streamer.h), the operator backends (operators.h) — and answers what a device is and
// whether this build and machine have it. It is the one place outside src/backend/cuda that knows which backends exist:
// registry.cpp is the only file there with #ifdef TTT_HAVE_CUDA. A new backend adds its name to device_names()
// and one branch to each function of registry.cpp (docs/ARCHITECTURE.md, "Devices: the seam").
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "backend/engine.h"
#include "backend/operators.h"
#include "backend/streamer.h"

namespace ttt::backend {

// Every device this program knows, built into this binary or not: "cpu", "cuda".
const std::vector<std::string>& device_names();
// "cpu or cuda", for messages.
std::string device_choices();
bool is_device_name(const std::string& device);
// Whether `device` can run here; if not, why: not a device name, not built into this binary (no CUDA toolkit at
// configure time), or no such device on this machine.
bool device_available(const std::string& device, std::string* why = nullptr);
// Throws a ttt::Error "<what>: <why>" unless device_available(device).
void require_device(const std::string& device, const std::string& what);
// "NVIDIA H200 (sm_90, 132 SMs, 139.8 GiB)", "the host CPU (16 OpenMP threads)".
std::string device_description(const std::string& device);
// Free memory of a device that is not the host (bytes; `source` says where the figure comes from), or < 0 when
// it cannot be measured (no such device here). The host's memory is train::available_memory's business.
double device_free_memory(const std::string& device, std::string* source);
// The opt-in shared memory per thread block of a GPU device (bytes: what the Titans kernels' plan is made with), or 0
// when it cannot be known here (no such device, the host).
size_t device_shared_memory_per_block(const std::string& device);

// The step engine of `device` for `cfg` (checks the device, then that it runs `cfg` and `options`), before
// any weights: attach them next.
// Data parallelism: the device of a rank, chosen by its rank on the node (cuda: GPU `local_rank`; a rank without
// a GPU of its own is an error naming both); before anything is allocated on the device.
void select_device_of_rank(const std::string& device, int local_rank, int rank);

// Makes unit `index` of `device` current for this thread (cuda: the GPU of that number; cpu: index 0 only).
void select_device(const std::string& device, int index);

std::unique_ptr<StepEngine> make_step_engine(const std::string& device, const model::ModelConfig& cfg,
                                             const EngineOptions& options = {});
// A streamer of `device` over `params` (which must outlive it on the CPU, whose streamer reads them in place).
std::unique_ptr<Streamer> make_streamer(const std::string& device, const model::ModelConfig& cfg,
                                        const model::Params<float>& params);
// The operator backends and benchmarks of `device`.
OperatorBackends operator_backends(const std::string& device);
// The LaCT operator on the device's own memory (operators.h: LactDeviceCall), writing o; with_grad keeps what
// its backward needs. Devices whose memory is the host's have no such path (their operators take host tensors:
// operator_backends) and refuse, saying so.
std::unique_ptr<LactDeviceRun> start_lact_on_device(const std::string& device, const LactDeviceCall& call, void* o,
                                                    bool with_grad);

}  // namespace ttt::backend
