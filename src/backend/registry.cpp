// The only file outside src/backend/cuda that names the CUDA backend: each function below has one branch per device.
#include "backend/registry.h"

#include <omp.h>

#include <algorithm>

#include "backend/cpu/step_engine_cpu.h"
#include "core/error.h"
#include "infer/stream.h"
#ifdef TTT_HAVE_CUDA
#include "backend/cuda/device.h"
#include "backend/cuda/engine_cuda.h"
#include "backend/cuda/nccl_communicator.h"
#include "backend/cuda/titans_persistent.h"  // persistent_smem_limit
#endif

namespace ttt::backend {

namespace {

constexpr const char* kCpu = "cpu";
constexpr const char* kCuda = "cuda";

}  // namespace

const std::vector<std::string>& device_names() {
  static const std::vector<std::string> names = {kCpu, kCuda};
  return names;
}

std::string device_choices() {
  std::string s;
  const auto& names = device_names();
  for (size_t i = 0; i < names.size(); ++i) s += (i == 0 ? "" : i + 1 == names.size() ? " or " : ", ") + names[i];
  return s;
}

bool is_device_name(const std::string& device) {
  const auto& names = device_names();
  return std::find(names.begin(), names.end(), device) != names.end();
}

bool device_available(const std::string& device, std::string* why) {
  std::string reason;
  bool ok = false;
  if (device == kCpu) {
    ok = true;
  } else if (device == kCuda) {
#ifdef TTT_HAVE_CUDA
    std::string driver;
    ok = cuda::device_count(&driver) > 0;
    if (!ok) reason = "no CUDA device (" + driver + ")";
#else
    reason = "this build has no CUDA backend (the CUDA toolkit was not found when it was configured); rebuild on a "
             "machine with the toolkit, or use --device cpu";
#endif
  } else {
    reason = "unknown device '" + device + "' (choose " + device_choices() + ")";
  }
  if (!ok && why) *why = reason;
  return ok;
}

void require_device(const std::string& device, const std::string& what) {
  std::string why;
  TTT_CHECK(device_available(device, &why), what << ": " << why);
}

std::string device_description(const std::string& device) {
  require_device(device, "device_description");
#ifdef TTT_HAVE_CUDA
  if (device == kCuda) return cuda::device_description();
#endif
  return "the host CPU (" + std::to_string(omp_get_max_threads()) + " OpenMP threads)";
}

double device_free_memory(const std::string& device, std::string* source) {
#ifdef TTT_HAVE_CUDA
  if (device == kCuda) {
    if (cuda::device_count() == 0) return -1;  // the device check of the command reports that
    size_t used = 0, total = 0;
    cuda::device_memory(&used, &total);
    if (source) *source = "free memory of the CUDA device";
    return double(total - used);
  }
#endif
  return -1;
}

size_t device_shared_memory_per_block(const std::string& device) {
#ifdef TTT_HAVE_CUDA
  if (device == kCuda && cuda::device_count() > 0) return cuda::persistent_smem_limit();
#endif
  (void)device;
  return 0;
}

void select_device_of_rank(const std::string& device, int local_rank, int rank) {
  require_device(device, "--device " + device);
#ifdef TTT_HAVE_CUDA
  if (device == kCuda) cuda::select_device_of_rank(local_rank, rank);
#endif
  (void)local_rank, (void)rank;  // the CPU: every rank shares the host
}

void select_device(const std::string& device, int index) {
  require_device(device, "device " + device);
#ifdef TTT_HAVE_CUDA
  if (device == kCuda) return cuda::select_device(index);
#endif
  TTT_CHECK(index == 0, "device " << device << " has one unit, 0; got index " << index);
}

std::unique_ptr<StepEngine> make_step_engine(const std::string& device, const model::ModelConfig& cfg,
                                             const EngineOptions& options) {
  require_device(device, "--device " + device);
#ifdef TTT_HAVE_CUDA
  if (device == kCuda) return cuda::make_step_engine(cfg, options);
#endif
  return make_cpu_step_engine(cfg, options);
}

std::unique_ptr<Streamer> make_streamer(const std::string& device, const model::ModelConfig& cfg,
                                        const model::Params<float>& params) {
  require_device(device, "--device " + device);
#ifdef TTT_HAVE_CUDA
  if (device == kCuda) return cuda::make_streamer(cfg, params);
#endif
  return std::make_unique<infer::StreamingModel>(cfg, params);
}

OperatorBackends operator_backends(const std::string& device) {
  require_device(device, "--device " + device);
#ifdef TTT_HAVE_CUDA
  if (device == kCuda) return cuda::operator_backends();
#endif
  return {engine::cpu_backend(), engine::tnt_cpu_backend(), cpu_operator_bench()};
}

std::unique_ptr<LactDeviceRun> start_lact_on_device(const std::string& device, const LactDeviceCall& call, void* o,
                                                    bool with_grad) {
  require_device(device, "device " + device);
#ifdef TTT_HAVE_CUDA
  if (device == kCuda) return cuda::start_lact_on_device(call, o, with_grad);
#endif
  (void)call, (void)o, (void)with_grad;
  TTT_FAIL("device " << device << ": its LaCT operator takes host tensors (operator_backends), not device pointers");
}

}  // namespace ttt::backend
