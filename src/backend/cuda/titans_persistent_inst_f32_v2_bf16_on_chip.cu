// One family of the persistent kernels (see titans_persistent_instances.cuh).
#include "backend/cuda/titans_persistent_instances.cuh"
#include "backend/cuda/titans_persistent_kernels_v2.cuh"

namespace ttt::cuda::persistent {

KernelPair<float> kernels_f32_v2_bf16_on_chip() { return {k_titans_persistent_fwd_v2<float, true, true>, k_titans_persistent_bwd_v2<float, true, true>}; }

}  // namespace ttt::cuda::persistent
