// Persistent kernels of the Titans memory (see titans_persistent.h): the host side (buffers, launches, the sum of
// the items' weight gradients); the device code is titans_persistent_kernels.cuh.
#include "backend/cuda/titans_persistent.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include "backend/cuda/check.cuh"
#include "backend/cuda/device.h"         // DeviceBuffer
#include "backend/cuda/kernel_util.cuh"  // kThreads, grid_for, warp_sum
#include "backend/cuda/titans_persistent_instances.cuh"

namespace ttt::cuda {

size_t persistent_smem_limit() {
  int dev = 0, bytes = 0;
  TTT_CUDA_CHECK(cudaGetDevice(&dev));
  TTT_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return size_t(bytes);
}

namespace {

using titans::Group;
namespace fn = titans::fn;
using persistent::Args;
using persistent::Kernel;
using persistent::KernelPair;

// The kernels of a plan: v1, v2, or v2 with its products on tensor cores in bf16 (float only), whose on-chip
// instantiation addresses every buffer as shared memory (`on_chip`: the forward's or the backward's own layout).
KernelPair<float> kernels(const titans::PersistentPlan& p, bool on_chip, float) {
  if (p.variant == titans::PersistentVariant::V1) return persistent::kernels_f32_v1();
  if (p.bf16_products) return on_chip ? persistent::kernels_f32_v2_bf16_on_chip() : persistent::kernels_f32_v2_bf16();
  return persistent::kernels_f32_v2();
}
KernelPair<double> kernels(const titans::PersistentPlan& p, bool, double) {
  return p.variant == titans::PersistentVariant::V1 ? persistent::kernels_f64_v1() : persistent::kernels_f64_v2();
}
template <class T>
Kernel<T> forward_kernel(const titans::PersistentPlan& p) {
  return kernels(p, p.fwd.all_on_chip, T()).forward;
}
template <class T>
Kernel<T> backward_kernel(const titans::PersistentPlan& p) {
  return kernels(p, p.bwd.all_on_chip, T()).backward;
}

template <class F>
__global__ void k_each(F f, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) f(i);
}

}  // namespace

template <class T>
struct PersistentMemory<T>::Impl {
  titans::MemoryShape s;
  bool with_grad;
  titans::PersistentPlan plan;
  cudaStream_t stream;
  bool poison;
  struct PerGroup {
    Group g;
    int64_t checkpoints = 0, K = 0;
    DeviceBuffer ckW, ckS, slotW, slotS, dW, scratch_fwd, scratch_bwd, qk_z, qk_dz;
  };
  DeviceBuffer qt, dqt;  // qk: q̃ and its gradient [B,T,d]
  std::vector<PerGroup> groups;
  size_t bytes = 0;
  // The last forward's inputs: the backward reads them again.
  bool forward_done = false;
  titans::MemoryInputs<T> in;

  Impl(const titans::MemoryShape& shape, bool wg, const titans::PersistentPlan& p, cudaStream_t st, bool poi)
      : s(shape), with_grad(wg), plan(p), stream(st), poison(poi) {
    TTT_CHECK(plan.persistent, "titans persistent: a plan for the batched path (" << plan.reason << ")");
    TTT_CHECK(plan.threads == titans::persistent_threads(plan.variant),
              "titans persistent: plan of " << plan.threads << " threads for "
                                            << titans::persistent_variant_name(plan.variant));
    // The sizes are the host's (titans::persistent_buffers), which the memory estimate sums too.
    const titans::PersistentBuffers sizes = titans::persistent_buffers(s, plan, with_grad);
    for (const titans::PersistentGroupBuffers& b : sizes.groups) {
      PerGroup pg;
      pg.g = b.g;
      pg.K = b.K;
      pg.checkpoints = b.checkpoints;
      pg.scratch_fwd = alloc(b.scratch_fwd);
      pg.qk_z = alloc(b.qk_z);
      pg.qk_dz = alloc(b.qk_dz);
      pg.ckW = alloc(b.ckW);
      pg.slotW = alloc(b.slotW);
      pg.ckS = alloc(b.ckS);
      pg.slotS = alloc(b.slotS);
      pg.dW = alloc(b.dW);
      pg.scratch_bwd = alloc(b.scratch_bwd);
      groups.push_back(std::move(pg));
    }
    qt = alloc(sizes.qt);
    dqt = alloc(sizes.dqt);
    // The attribute is a ceiling shared by every launch of the kernel, and runners of different sizes (TNT's
    // memories, each enqueued from its own host thread) use it concurrently: set it to the device's limit, never
    // to one runner's size (a smaller runner built later would refuse a larger one's launches).
    int device = 0, optin = 0;
    TTT_CUDA_CHECK(cudaGetDevice(&device));
    TTT_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    TTT_CHECK(plan.fwd.shared_bytes <= size_t(optin) && plan.bwd.shared_bytes <= size_t(optin),
              "titans persistent: the plan needs " << plan.fwd.shared_bytes << " / " << plan.bwd.shared_bytes
                                                   << " bytes of shared memory per block, the device allows " << optin);
    TTT_CHECK(!plan.bf16_products || (sizeof(T) == 4 && plan.variant == titans::PersistentVariant::V2),
              "titans persistent: bf16 products need the float kernels of v2");
    TTT_CUDA_CHECK(cudaFuncSetAttribute(forward_kernel<T>(plan), cudaFuncAttributeMaxDynamicSharedMemorySize, optin));
    TTT_CUDA_CHECK(cudaFuncSetAttribute(backward_kernel<T>(plan), cudaFuncAttributeMaxDynamicSharedMemorySize, optin));
  }
  // n elements; none (an empty buffer, null pointer) for n = 0.
  DeviceBuffer alloc(int64_t n) {
    if (n <= 0) return DeviceBuffer();
    DeviceBuffer b(sizeof(T) * size_t(n));
    if (poison) TTT_CUDA_CHECK(cudaMemsetAsync(b.template as<void>(), 0xFF, b.bytes(), stream));
    bytes += b.bytes();
    return b;
  }
  Args<T> args(const PerGroup& pg, const titans::BlockLayout& layout, T* scratch) const {
    Args<T> a{};
    a.g = pg.g;
    a.d = int(s.d);
    a.dh = int(s.dh);
    a.C = int(s.chunk);
    a.K = int(pg.K);
    a.momentum = s.momentum;
    a.decay = s.decay;
    a.residual = s.residual;
    a.save = with_grad;
    a.qk = s.qk;
    a.qk_z = pg.qk_z.template as<T>();
    a.qk_dz = pg.qk_dz.template as<T>();
    a.checkpoints = pg.checkpoints;
    a.ckW = pg.ckW.template as<T>();
    a.ckS = pg.ckS.template as<T>();
    a.slotW = pg.slotW.template as<T>();
    a.slotS = pg.slotS.template as<T>();
    a.dW_items = pg.dW.template as<T>();
    a.scratch = scratch;
    a.scratch_per_item = layout.scratch_elements;
    for (int i = 0; i < titans::kNumBuffers; ++i) {
      a.offset[i] = layout.buf[size_t(i)].offset;
      a.shared[i] = layout.buf[size_t(i)].shared;
    }
    a.scalar_bytes = int(layout.scalar_bytes);
    a.chunk_rows = int(plan.chunk_rows);
    return a;
  }
};

template <class T>
PersistentMemory<T>::PersistentMemory(const titans::MemoryShape& s, bool with_grad, const titans::PersistentPlan& plan,
                                      void* stream, bool poison)
    : impl_(std::make_unique<Impl>(s, with_grad, plan, static_cast<cudaStream_t>(stream), poison)) {}
template <class T>
PersistentMemory<T>::~PersistentMemory() {
  if (impl_) cudaStreamSynchronize(impl_->stream);
}

template <class T>
void PersistentMemory<T>::forward(const titans::MemoryInputs<T>& in, T* o) {
  Impl& x = *impl_;
  x.in = in;
  x.forward_done = true;
  for (auto& pg : x.groups) {
    Args<T> a = x.args(pg, x.plan.fwd, pg.scratch_fwd.template as<T>());
    a.q = x.s.qk ? x.qt.template as<T>() : in.q;
    a.q_in = in.q;
    a.qt = x.qt.template as<T>();
    a.k = in.k;
    a.v = in.v;
    a.w1 = in.w1;
    a.w2 = in.w2;
    a.theta = in.theta;
    a.eta = in.eta;
    a.alpha = in.alpha;
    a.o = o;
    forward_kernel<T>(x.plan)<<<unsigned(pg.g.items), x.plan.threads, x.plan.fwd.shared_bytes, x.stream>>>(a);
    TTT_LAUNCH_CHECK("titans persistent forward");
  }
}

template <class T>
void PersistentMemory<T>::backward(const T* go, const titans::MemoryGrads<T>& g) {
  Impl& x = *impl_;
  TTT_CHECK(x.with_grad, "titans persistent: backward() needs a memory built with gradients");
  TTT_CHECK(x.forward_done, "titans persistent: backward() needs a forward() first");
  const int64_t BP = x.s.B * x.s.P();
  TTT_CUDA_CHECK(cudaMemsetAsync(g.w1, 0, sizeof(T) * size_t(BP), x.stream));
  TTT_CUDA_CHECK(cudaMemsetAsync(g.w2, 0, sizeof(T) * size_t(BP), x.stream));
  for (auto& pg : x.groups) {
    Args<T> a = x.args(pg, x.plan.bwd, pg.scratch_bwd.template as<T>());
    a.q = x.s.qk ? x.qt.template as<T>() : x.in.q;
    a.q_in = x.in.q;
    a.k = x.in.k;
    a.v = x.in.v;
    a.theta = x.in.theta;
    a.eta = x.in.eta;
    a.alpha = x.in.alpha;
    a.go = go;
    a.gq = x.s.qk ? x.dqt.template as<T>() : g.q;
    a.gq_final = g.q;
    a.gk = g.k;
    a.gv = g.v;
    a.gtheta = g.theta;
    a.geta = g.eta;
    a.galpha = g.alpha;
    backward_kernel<T>(x.plan)<<<unsigned(pg.g.items), x.plan.threads, x.plan.bwd.shared_bytes, x.stream>>>(a);
    TTT_LAUNCH_CHECK("titans persistent backward");
    const int64_t n = (pg.g.items / pg.g.per_b) * 2 * x.s.P();
    const fn::ReduceItems<T> reduce{pg.dW.template as<T>(), g.w1, g.w2, pg.g, x.s.P()};
    k_each<<<grid_for(n), kThreads, 0, x.stream>>>(reduce, n);
    TTT_LAUNCH_CHECK("titans persistent reduce items");
  }
}

template <class T>
size_t PersistentMemory<T>::workspace_bytes() const {
  return impl_->bytes;
}

template class PersistentMemory<float>;
template class PersistentMemory<double>;

}  // namespace ttt::cuda
