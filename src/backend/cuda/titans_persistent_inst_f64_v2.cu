// One family of the persistent kernels (see titans_persistent_instances.cuh).
#include "backend/cuda/titans_persistent_instances.cuh"
#include "backend/cuda/titans_persistent_kernels_v2.cuh"

namespace ttt::cuda::persistent {

KernelPair<double> kernels_f64_v2() { return {k_titans_persistent_fwd_v2<double>, k_titans_persistent_bwd_v2<double>}; }

}  // namespace ttt::cuda::persistent
