// The CUDA runtime pieces every part of the backend shares: device discovery, tracked device allocations
// (DeviceBuffer), memory figures and CUDA-event timing. This header needs no CUDA headers.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace ttt::cuda {

// Usable CUDA devices; 0 when the driver, the runtime or the device is missing (why, if given, says which).
int device_count(std::string* why = nullptr);
// Makes GPU `index` (CUDA's numbering in this process) the current device of this thread; an index that is
// not a device here is an error naming it and the count.
void select_device(int index);
// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.2 GiB)" of the current device.
std::string device_description();

// Bytes this library holds on the device now, and the most it held at once since the last reset.
size_t tracked_bytes();
size_t tracked_peak_bytes();
void reset_tracked_peak();
// Used device memory as the driver reports it (total - free), and the total.
void device_memory(size_t* used, size_t* total);

// A device allocation owned by host code.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_), bytes_(o.bytes_) { o.p_ = nullptr, o.bytes_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <class T>
  T* as() const { return static_cast<T*>(p_); }
  size_t bytes() const { return bytes_; }
  void upload(const void* host, size_t bytes);
  void download(void* host, size_t bytes) const;
  void fill_nan();
  void fill_zero();
  // Seeded device-side random fill: uniform in [lo, hi), or normal * hi when normal is set.
  template <class T>
  void fill_random(int64_t n, uint64_t seed, double lo, double hi, bool normal);

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

// Allocation through the tracker (tracked_bytes): throws a ttt::Error naming the size and the free memory on
// failure; device_free never throws.
void* device_malloc(size_t bytes);
void device_free(void* p, size_t bytes);

// Number of non-finite elements of a device array of float or double (waits for `stream`; benches' checks).
template <class T>
size_t count_nonfinite(const T* p, int64_t n, void* stream = nullptr);

// Waits for `stream` (a cudaStream_t; null: the default stream).
void stream_synchronize(void* stream = nullptr);

// What a benchmark of an operator on the device measured (bench_lact, bench_tnt; JSON fields by
// cuda::bench_json_fields).
struct OpBenchResult {
  std::string device;
  std::vector<double> fwd_ms, fwdbwd_ms;  // every timed repetition
  double fwd_ms_median = 0, fwdbwd_ms_median = 0;
  size_t tracked_peak_bytes = 0;  // this library's allocations: inputs, outputs, states, work buffers
  size_t device_used_bytes = 0;   // cudaMemGetInfo total - free after the runs (includes context, cuBLAS)
  size_t device_total_bytes = 0;
  size_t workspace_bytes = 0;     // the runner's own buffers
  bool output_finite = false;     // o and every gradient free of NaN/Inf after the last run
  std::string kernel_path;        // Titans / TNT: which kernels ran each memory, and why (TitansRunner::path)
};

// Benchmark helper: milliseconds between CUDA events recorded on `stream` before and after the work that
// `enqueue` puts on it (waits for the stream).
double elapsed_ms(const std::function<void()>& enqueue, void* stream = nullptr);

}  // namespace ttt::cuda
