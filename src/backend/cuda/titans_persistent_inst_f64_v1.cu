// One family of the persistent kernels (see titans_persistent_instances.cuh).
#include "backend/cuda/titans_persistent_instances.cuh"
#include "backend/cuda/titans_persistent_kernels.cuh"

namespace ttt::cuda::persistent {

KernelPair<double> kernels_f64_v1() { return {k_titans_persistent_fwd<double>, k_titans_persistent_bwd<double>}; }

}  // namespace ttt::cuda::persistent
