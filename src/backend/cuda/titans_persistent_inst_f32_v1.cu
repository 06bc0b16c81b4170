// One family of the persistent kernels (see titans_persistent_instances.cuh).
#include "backend/cuda/titans_persistent_instances.cuh"
#include "backend/cuda/titans_persistent_kernels.cuh"

namespace ttt::cuda::persistent {

KernelPair<float> kernels_f32_v1() { return {k_titans_persistent_fwd<float>, k_titans_persistent_bwd<float>}; }

}  // namespace ttt::cuda::persistent
