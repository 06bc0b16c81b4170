// The Titans memory of TNT on an NVIDIA GPU: the algorithm of ttt/titans_fused.h (the CPU twin is its
// specification) run by a CUDA backend: fp32 (or fp64) state and math, cuBLAS strided-batched GEMMs over the
// items (sequence-head x shard) of each group (fp32 / fp64, or tensor cores with `--precision tf32 | bf16`), the
// shared element functors of titans_fused.h as grid-stride kernels, deterministic batched dot products (one launch
// each), one stream per runner. Every buffer is allocated once
// per runner (cudaMalloc through DeviceBuffer, tracked); device memory beyond the inputs and outputs is linear in
// the number of kept chunk-boundary states (all of them, or every K-th with segment recomputation). Every CUDA
// and cuBLAS call is checked; failures throw ttt::Error naming the call. Small chunks run instead on the persistent
// kernels of titans_persistent.h (one block per item, the state on chip across the chunk loop) when the plan
// (backend/titans_persistent_plan.h) fits: TitansOptions::kernel.
//
// This header needs no CUDA headers: host code (CLI, tests) includes it freely.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "backend/options.h"                  // backend::Precision
#include "backend/titans_persistent_plan.h"  // titans::KernelChoice
#include "ttt/titans_fused.h"

namespace ttt::cuda {

struct TitansOptions {
  // Fill every work buffer with NaN when allocated (tests: catches reads of what nothing wrote).
  bool poison_workspace = false;
  // Capture each forward() / backward() as a CUDA graph on first use and replay it while the pointers are the
  // same (cuts the launch overhead of the many small steps of small chunks; a call with other pointers
  // captures anew). The graph runs exactly the kernels and products of the eager path.
  bool graphs = false;
  // How many graphs per direction are kept, one per distinct set of pointers (the least recently used is
  // dropped): the GPU model keeps one per layer (its runner is shared by the layers).
  int graph_cache = 1;
  // Which implementation runs forward() / backward() (backend/titans_persistent_plan.h): Automatic takes the
  // environment's TTT_TITANS_KERNEL when set, else the persistent kernels (titans_persistent.h) when the plan
  // fits the device, else the batched path. Streaming (stream_*) always runs the batched path.
  titans::KernelChoice kernel = titans::KernelChoice::Automatic;
  // Which persistent kernels (titans::PersistentVariant); unset: the environment's TTT_PERSISTENT_VARIANT, else
  // titans::kDefaultPersistentVariant.
  bool variant_set = false;
  titans::PersistentVariant variant = titans::kDefaultPersistentVariant;
  // `--precision bf16`: the chunk products on tensor cores with bf16 operands and fp32 accumulation, state and
  // element steps (float only): the persistent kernels' (titans::use_bf16_products: v2) and the batched path's
  // cuBLAS products (CUBLAS_COMPUTE_32F_FAST_16BF: fp32 buffers, rounded to bf16 as the tensor cores load them, no
  // conversion pass).
  bool bf16_products = false;
  // `--precision tf32`: the batched path's products on tensor cores with tf32 operands and fp32 accumulation
  // (CUBLAS_COMPUTE_32F_FAST_TF32; float only); the persistent kernels keep fp32 products. bf16_products wins
  // when both are set. Neither: the batched path's products are exact fp32 (CUBLAS_COMPUTE_32F), as before.
  bool tf32_products = false;
};
// The options of a `--precision` (bf16_products / tf32_products; the rest default).
inline TitansOptions titans_options_for(backend::Precision p) {
  TitansOptions o;
  o.bf16_products = p == backend::Precision::BF16;
  o.tf32_products = p == backend::Precision::TF32;
  return o;
}

// One Titans memory (optional resets and Q-K projected queries) on device pointers (layouts of
// titans_fused.h). Construction allocates everything a run needs; forward() / backward() enqueue the work on
// the runner's stream and return (synchronize() waits).
template <class T>
class TitansRunner {
 public:
  TitansRunner(const titans::MemoryShape& s, bool with_grad, const TitansOptions& opt = {});
  ~TitansRunner();
  TitansRunner(const TitansRunner&) = delete;
  TitansRunner& operator=(const TitansRunner&) = delete;
  void forward(const titans::MemoryInputs<T>& in, T* o);
  void backward(const T* grad_o, const titans::MemoryGrads<T>& g);  // after forward() on the same inputs
  // Streaming (generation), as titans::Memory::stream_*: build with titans::stream_shape(...) and with_grad
  // false. The state (titans::StreamState: device pointers) is the caller's, so one runner (its work buffers)
  // serves that memory in every layer; q / o are [B, n, d], the chunk inputs [B, chunk, .]. Runs eagerly.
  void stream_init(const titans::StreamState<T>& st, const T* w1, const T* w2);
  void stream_apply(const titans::StreamState<T>& st, const T* q, int64_t n, T* o);
  void stream_update(const titans::StreamState<T>& st, const titans::MemoryInputs<T>& chunk, int64_t n);
  void synchronize();
  size_t workspace_bytes() const;
  void* stream() const;  // cudaStream_t
  bool persistent() const;          // forward() / backward() run the persistent kernels
  const std::string& path() const;  // the plan's reason: which path and why (titans::PersistentPlan::reason)

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Host arrays in, host arrays out (device outputs filled with NaN first, so an element no kernel writes comes
// back as NaN). Forward only when grad_o is null. The chain's ends (MemoryInputs::entry_* / exit_*, MemoryGrads::
// exit_d* / entry_d*) are host arrays too: the given inputs are uploaded, the given outputs written back.
template <class T>
void titans_host(const titans::MemoryShape& s, const titans::MemoryInputs<T>& in, T* o, const T* grad_o,
                 const titans::MemoryGrads<T>* g, const TitansOptions& opt = {});

}  // namespace ttt::cuda
