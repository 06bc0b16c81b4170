// The persistent kernels' instantiations, each family in its own translation unit (titans_persistent_inst_*.cu):
// each is minutes of nvcc, and one file per family lets a parallel build compile them side by side (one file
// holding all of them was the longest single step of the build). titans_persistent.cu picks among them.
#pragma once
#include "backend/cuda/kernel_util.cuh"  // warp_sum, which the kernels use
#include "backend/cuda/titans_persistent_kernels.cuh"  // Args

namespace ttt::cuda::persistent {

template <class T>
using Kernel = void (*)(Args<T>);
template <class T>
struct KernelPair {
  Kernel<T> forward, backward;
};

KernelPair<float> kernels_f32_v1();
KernelPair<float> kernels_f32_v2();
KernelPair<float> kernels_f32_v2_bf16();          // v2, products on tensor cores in bf16
KernelPair<float> kernels_f32_v2_bf16_on_chip();  // the same when every buffer is in shared memory
KernelPair<double> kernels_f64_v1();
KernelPair<double> kernels_f64_v2();

}  // namespace ttt::cuda::persistent
