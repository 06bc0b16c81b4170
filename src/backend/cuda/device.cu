// device.h: device discovery, tracked allocations, DeviceBuffer, memory figures, CUDA-event timing.
#include "backend/cuda/device.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <sstream>
#include <vector>

#include "backend/cuda/check.cuh"
#include "backend/cuda/kernel_util.cuh"  // kThreads, grid_for, GRID_STRIDE

namespace ttt::cuda {

namespace {

std::atomic<size_t> g_bytes{0};
std::atomic<size_t> g_peak{0};

__device__ __forceinline__ uint64_t splitmix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
template <class T>
__global__ void k_random(T* p, int64_t n, uint64_t seed, double lo, double hi, bool normal) {
  GRID_STRIDE(i, n) {
    const uint64_t h1 = splitmix(seed ^ splitmix(uint64_t(i) * 2 + 1));
    const double u1 = (double(h1 >> 11) + 0.5) * 0x1.0p-53;
    if (normal) {
      const uint64_t h2 = splitmix(h1 + 0x632BE59BD9B4E019ull);
      const double u2 = double(h2 >> 11) * 0x1.0p-53;
      p[i] = T(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2) * hi);
    } else {
      p[i] = T(lo + (hi - lo) * u1);
    }
  }
}

}  // namespace

void* device_malloc(size_t bytes) {
  void* p = nullptr;
  if (bytes == 0) bytes = 1;
  cudaError_t e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free allocation error
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    TTT_FAIL("cudaMalloc of " << bytes << " bytes failed: " << cudaGetErrorString(e) << " (this library holds "
                              << g_bytes.load() << " bytes; device free " << free_b << " of " << total_b << ")");
  }
  const size_t now = (g_bytes += bytes);
  size_t peak = g_peak.load();
  while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {
  }
  return p;
}
void device_free(void* p, size_t bytes) {
  if (!p) return;
  cudaFree(p);  // never throws from destructors; a failure here leaves nothing to recover
  g_bytes -= bytes == 0 ? 1 : bytes;
}


int device_count(std::string* why) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    if (why) *why = std::string("cudaGetDeviceCount failed: ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
    return 0;
  }
  if (n == 0 && why) *why = "cudaGetDeviceCount reports no CUDA device";
  return n;
}

namespace {
// An empty kernel: whether the runtime can load it says whether this build has machine code for the device.
__global__ void k_probe_build_targets() {}
}  // namespace

void select_device(int index) {
  std::string why;
  const int count = device_count(&why);
  TTT_CHECK(count > 0, "no usable CUDA device (" << why << ")");
  TTT_CHECK(index >= 0 && index < count,
            "CUDA device " << index << " does not exist: this process sees " << count << " GPU(s), 0.." << count - 1);
  const cudaError_t e = cudaSetDevice(index);
  TTT_CHECK(e == cudaSuccess, "cudaSetDevice(" << index << ") failed: " << cudaGetErrorString(e));
  // Once per device and process: the C ABI selects the device on every operator call.
  static std::mutex probed_mutex;
  static std::vector<char> probed;
  std::lock_guard<std::mutex> lock(probed_mutex);
  if (probed.size() <= size_t(index)) probed.resize(size_t(index) + 1, 0);
  if (probed[size_t(index)]) return;
  cudaFuncAttributes attributes{};
  const cudaError_t k = cudaFuncGetAttributes(&attributes, k_probe_build_targets);
  if (k != cudaSuccess) {
    cudaGetLastError();
    cudaDeviceProp p{};
    TTT_CUDA_CHECK(cudaGetDeviceProperties(&p, index));
    const std::string sm = std::to_string(p.major) + std::to_string(p.minor) + (p.major == 9 && p.minor == 0 ? "a" : "");
    TTT_FAIL("this build of ttt has no machine code for CUDA device " << index << " (" << p.name << ", compute capability "
             << p.major << "." << p.minor << "; " << cudaGetErrorString(k) << "): rebuild on a machine with this GPU "
             << "(CMake targets the GPUs it sees) or configure with -DTTT_CUDA_GENCODE=\"-gencode=arch=compute_" << sm
             << ",code=sm_" << sm << "\"");
  }
  probed[size_t(index)] = 1;
}

std::string device_description() {
  int dev = 0;
  TTT_CUDA_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp p{};
  TTT_CUDA_CHECK(cudaGetDeviceProperties(&p, dev));
  std::ostringstream os;
  os << p.name << " (sm_" << p.major << p.minor << ", " << p.multiProcessorCount << " SMs, "
     << double(p.totalGlobalMem) / double(1ull << 30) << " GiB)";
  return os.str();
}

size_t tracked_bytes() { return g_bytes.load(); }
size_t tracked_peak_bytes() { return g_peak.load(); }
void reset_tracked_peak() { g_peak.store(g_bytes.load()); }
void device_memory(size_t* used, size_t* total) {
  size_t f = 0, t = 0;
  TTT_CUDA_CHECK(cudaMemGetInfo(&f, &t));
  if (used) *used = t - f;
  if (total) *total = t;
}

DeviceBuffer::DeviceBuffer(size_t bytes) : p_(device_malloc(bytes)), bytes_(bytes) {}
DeviceBuffer::~DeviceBuffer() { device_free(p_, bytes_); }
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    device_free(p_, bytes_);
    p_ = o.p_;
    bytes_ = o.bytes_;
    o.p_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}
void DeviceBuffer::upload(const void* host, size_t bytes) {
  TTT_CHECK(bytes <= bytes_, "DeviceBuffer::upload: " << bytes << " bytes into a buffer of " << bytes_);
  TTT_CUDA_CHECK(cudaMemcpy(p_, host, bytes, cudaMemcpyHostToDevice));
}
void DeviceBuffer::download(void* host, size_t bytes) const {
  TTT_CHECK(bytes <= bytes_, "DeviceBuffer::download: " << bytes << " bytes from a buffer of " << bytes_);
  TTT_CUDA_CHECK(cudaMemcpy(host, p_, bytes, cudaMemcpyDeviceToHost));
}
void DeviceBuffer::fill_nan() {
  TTT_CUDA_CHECK(cudaMemset(p_, 0xFF, bytes_));
  TTT_CUDA_CHECK(cudaDeviceSynchronize());
}
void DeviceBuffer::fill_zero() { TTT_CUDA_CHECK(cudaMemset(p_, 0, bytes_)); }
template <class T>
void DeviceBuffer::fill_random(int64_t n, uint64_t seed, double lo, double hi, bool normal) {
  TTT_CHECK(size_t(n) * sizeof(T) <= bytes_, "DeviceBuffer::fill_random: " << n << " elements do not fit");
  k_random<T><<<grid_for(n), kThreads>>>(as<T>(), n, seed, lo, hi, normal);
  TTT_LAUNCH_CHECK("random");
  TTT_CUDA_CHECK(cudaDeviceSynchronize());
}
template void DeviceBuffer::fill_random<float>(int64_t, uint64_t, double, double, bool);
template void DeviceBuffer::fill_random<double>(int64_t, uint64_t, double, double, bool);

void stream_synchronize(void* stream) { TTT_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream))); }

double elapsed_ms(const std::function<void()>& enqueue, void* stream) {
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  cudaEvent_t a, b;
  TTT_CUDA_CHECK(cudaEventCreate(&a));
  TTT_CUDA_CHECK(cudaEventCreate(&b));
  float ms = 0;
  try {
    TTT_CUDA_CHECK(cudaEventRecord(a, st));
    enqueue();
    TTT_CUDA_CHECK(cudaEventRecord(b, st));
    TTT_CUDA_CHECK(cudaEventSynchronize(b));
    TTT_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
  } catch (...) {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    throw;
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return double(ms);
}

namespace {
template <class T>
__global__ void k_count_nonfinite(const T* x, int64_t n, unsigned long long* count) {
  unsigned long long c = 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    c += isfinite(double(x[i])) ? 0ull : 1ull;
  for (int o = 16; o > 0; o >>= 1) c += __shfl_xor_sync(0xffffffffu, c, o);
  if ((threadIdx.x & 31) == 0 && c) atomicAdd(count, c);
}
}  // namespace

template <class T>
size_t count_nonfinite(const T* p, int64_t n, void* stream) {
  if (n <= 0) return 0;
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  DeviceBuffer c(sizeof(unsigned long long));
  TTT_CUDA_CHECK(cudaMemsetAsync(c.as<void>(), 0, sizeof(unsigned long long), st));
  const int blocks = int(std::max<int64_t>(1, std::min<int64_t>((n + 255) / 256, 1 << 16)));
  k_count_nonfinite<<<blocks, 256, 0, st>>>(p, n, c.as<unsigned long long>());
  TTT_LAUNCH_CHECK("count_nonfinite");
  unsigned long long h = 0;
  TTT_CUDA_CHECK(cudaMemcpyAsync(&h, c.as<void>(), sizeof(h), cudaMemcpyDeviceToHost, st));
  TTT_CUDA_CHECK(cudaStreamSynchronize(st));
  return size_t(h);
}
template size_t count_nonfinite<float>(const float*, int64_t, void*);
template size_t count_nonfinite<double>(const double*, int64_t, void*);

}  // namespace ttt::cuda
