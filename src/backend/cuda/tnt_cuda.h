// The TNT memory branch (docs/ALGORITHMS.md §6) on an NVIDIA GPU: one TitansRunner per memory (the global one and each
// local one with its resets and Q-K projection), each on its own stream so that the memories run
// concurrently, joined with events; outputs and the q/k/v gradients summed in memory order on the main stream
// (deterministic). The CPU twin is titans::tnt_cpu (ttt/titans_fused.h).
//
// This header needs no CUDA headers.
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "backend/cuda/device.h"       // OpBenchResult
#include "backend/cuda/op_backends.h"  // engine::tnt_cuda_backend()
#include "backend/cuda/titans_cuda.h"

namespace ttt::cuda {

template <class T>
class TntRunner {
 public:
  TntRunner(const titans::TntShape& s, bool with_grad, const TitansOptions& opt = {});
  ~TntRunner();
  TntRunner(const TntRunner&) = delete;
  TntRunner& operator=(const TntRunner&) = delete;
  void forward(const titans::TntInputs<T>& in, T* o);
  void backward(const T* grad_o, const titans::TntGrads<T>& g);  // after forward() on the same inputs
  void synchronize();
  size_t workspace_bytes() const;
  void* stream() const;  // the main stream (cudaStream_t): work enqueued after forward()/backward() on it
                         // sees their results
  std::string path() const;  // every memory's TitansRunner::path(), in memory order, "; "-separated

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Host arrays in, host arrays out (device outputs filled with NaN first). runs > 1: the same runner runs
// forward (+ backward) that many times on the same device buffers, the outputs refilled with NaN before each
// run (with graphs: the first run captures, the others replay); the last run's results come back.
template <class T>
void tnt_host(const titans::TntShape& s, const titans::TntInputs<T>& in, T* o, const T* grad_o,
              const titans::TntGrads<T>* g, const TitansOptions& opt = {}, int runs = 1);

// tnt_host as the runner of titans::tnt_op (what engine::tnt_cuda_backend() runs).
class TntGpuRunner final : public titans::TntHostRunner {
 public:
  explicit TntGpuRunner(const TitansOptions& opt = {}, int runs = 1) : opt_(opt), runs_(runs) {}
  void run(const titans::TntShape& s, const titans::TntInputs<double>& in, double* o, const double* go,
           const titans::TntGrads<double>* g) override;
  void run(const titans::TntShape& s, const titans::TntInputs<float>& in, float* o, const float* go,
           const titans::TntGrads<float>* g) override;

 private:
  TitansOptions opt_;
  int runs_;
};
titans::TntHostRunner& tnt_gpu_runner();  // default options

// Timing of the branch (or of one memory: a TntShape with the global memory only) with CUDA events on
// device-resident random inputs (the CPU bench's distributions).
using TntBenchResult = OpBenchResult;
// Times the forward alone (no states kept) and forward+backward, each `repeats` times after `warmup` untimed
// runs; medians. float. graphs: TitansOptions::graphs (the warm-up captures, the timed runs replay).
// kernel: TitansOptions::kernel of every memory (the result's kernel_path says what ran); precision: the products'
// (titans_options_for).
TntBenchResult bench_tnt(const titans::TntShape& s, int repeats, int warmup, bool graphs = false,
                         titans::KernelChoice kernel = titans::KernelChoice::Automatic,
                         backend::Precision precision = backend::Precision::FP32);

}  // namespace ttt::cuda
