// CUDA backend of the Titans memory: TitansCudaOps implements the backend contract of ttt/titans_fused.h with
// cuBLAS strided-batched GEMMs (exact fp32 / fp64, or on tensor cores with tf32 or bf16 operands: TitansOptions), a
// grid-stride kernel per element functor (or per pair of independent ones: each2) and deterministic one-launch
// batched dot products, so that titans::Memory<TitansCudaOps<T>> runs on the GPU exactly the sequence of steps
// that the CPU twin (titans_fused.cpp) specifies.
#include "backend/cuda/titans_cuda.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "backend/cuda/check.cuh"
#include "backend/cuda/graph.cuh"
#include "backend/cuda/device.h"  // DeviceBuffer (tracked allocations)
#include "backend/cuda/kernel_util.cuh"  // kThreads, grid_for, warp_sum
#include "backend/cuda/titans_persistent.h"

namespace ttt::cuda {

namespace {

using Acc = double;  // accumulator of the batched dot products
constexpr int kMaxSlices = int(titans::kDotSlices);  // blocks per batch item in the first stage of a batched dot

template <class F>
__global__ void k_each(F f, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) f(i);
}

// The batched dot products, one launch each, deterministic (a fixed summation order, whatever the scheduling),
// accumulated in double. Short items (per <= kDotWarpMax, e.g. the dθ row dots of d or dh elements): one warp per
// item, lane l summing elements l, l + 32, ... in order, then the warp's xor tree. Long items (the state dots of
// 2P elements, the Q-K chunk dots): `slices` blocks per item each sum a strided share (block tree), store it in the
// item's row of partial, and the item's last block to finish (a counter per item, reset by that block, so that
// graph replays find it zero) sums the slices in slice order.
constexpr int64_t kDotWarpMax = 4 * kThreads;
// Row b of partial holds slices <= kMaxSlices - 1 partial sums; its last double is the item's counter.
constexpr int kDotSlicesUsed = kMaxSlices - 1;

template <class T>
__global__ void k_dot_warp(const T* x, const T* y, int64_t per, int64_t stride, int64_t batch, T* out) {
  const int lane = threadIdx.x & 31;
  WARP_STRIDE(b, batch) {
    const T* xb = x + b * stride;
    const T* yb = y + b * stride;
    Acc acc = 0;
    for (int64_t i = lane; i < per; i += 32) acc += Acc(xb[i]) * Acc(yb[i]);
    acc = warp_sum(acc);
    if (lane == 0) out[b] = T(acc);
  }
}
template <class T>
__global__ void k_dot_blocks(const T* x, const T* y, int64_t per, int64_t stride, Acc* partial, T* out) {
  const int64_t b = blockIdx.y;
  const int slices = gridDim.x;
  const T* xb = x + b * stride;
  const T* yb = y + b * stride;
  Acc* row = partial + b * kMaxSlices;
  unsigned* count = reinterpret_cast<unsigned*>(row + kDotSlicesUsed);
  Acc acc = 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < per; i += int64_t(slices) * blockDim.x)
    acc += Acc(xb[i]) * Acc(yb[i]);
  __shared__ bool last;
  block_sum(acc, [&](Acc sum) {
    row[blockIdx.x] = sum;
    __threadfence();  // the partial is visible device-wide before the count says so
    last = atomicAdd(count, 1u) == unsigned(slices - 1);
  });
  __syncthreads();
  if (last && threadIdx.x < 32) {
    __threadfence();
    acc = 0;
    for (int i = threadIdx.x; i < slices; i += 32) acc += __ldcg(row + i);  // past L1: other SMs wrote them
    acc = warp_sum(acc);
    if (threadIdx.x == 0) {
      out[b] = T(acc);
      *count = 0;
    }
  }
}

// Two independent element steps in one launch: f1(i) for i < n1 and f2(i) for i < n2 (they touch disjoint outputs
// and neither reads what the other writes, so the order between them is free).
template <class F1, class F2>
__global__ void k_each2(F1 f1, int64_t n1, F2 f2, int64_t n2) {
  const int64_t n = n1 > n2 ? n1 : n2;
  GRID_STRIDE(i, n) {
    if (i < n1) f1(i);
    if (i < n2) f2(i);
  }
}

template <class T>
struct CublasType;
template <>
struct CublasType<float> {
  static constexpr cudaDataType_t data = CUDA_R_32F;
  static constexpr cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
};
template <>
struct CublasType<double> {
  static constexpr cudaDataType_t data = CUDA_R_64F;
  static constexpr cublasComputeType_t compute = CUBLAS_COMPUTE_64F;
};

// The batched path's products: exact (fp32 / fp64 FMA, CUBLAS_COMPUTE_32F / 64F), or, for float, tensor cores on
// fp32 buffers with tf32 or bf16 operands rounded as they are loaded, fp32 accumulation (TitansOptions).
enum class ProductMath { Exact, Tf32, Bf16 };
template <class T>
ProductMath product_math(const TitansOptions& o) {
  if (sizeof(T) != 4) return ProductMath::Exact;
  return o.bf16_products ? ProductMath::Bf16 : o.tf32_products ? ProductMath::Tf32 : ProductMath::Exact;
}
template <class T>
cublasComputeType_t compute_type(ProductMath m) {
  switch (m) {
    case ProductMath::Tf32: return CUBLAS_COMPUTE_32F_FAST_TF32;
    case ProductMath::Bf16: return CUBLAS_COMPUTE_32F_FAST_16BF;
    default: return CublasType<T>::compute;
  }
}
// What the path string says of the batched products.
template <class T>
const char* product_math_name(ProductMath m) {
  switch (m) {
    case ProductMath::Tf32: return "tf32 tensor-core products";
    case ProductMath::Bf16: return "bf16 tensor-core products";
    default: return sizeof(T) == 4 ? "fp32 products" : "float64 products";
  }
}

template <class T>
class TitansCudaOps {
 public:
  using value_type = T;
  TitansCudaOps(int64_t max_batch, const TitansOptions& opt)
      : opt_(opt), max_batch_(max_batch), math_(product_math<T>(opt)), compute_(compute_type<T>(math_)) {
    TTT_CUDA_CHECK(cudaStreamCreate(&stream_));
    TTT_CUBLAS_CHECK(cublasCreate(&handle_));
    TTT_CUBLAS_CHECK(cublasSetStream(handle_, stream_));
    TTT_CUBLAS_CHECK(cublasSetPointerMode(handle_, CUBLAS_POINTER_MODE_HOST));
    // An explicit cuBLAS workspace, so that no product allocates (CUDA graph capture forbids it).
    cublas_ws_ = DeviceBuffer(kCublasWorkspace);
    TTT_CUBLAS_CHECK(cublasSetWorkspace(handle_, cublas_ws_.as<void>(), kCublasWorkspace));
    partial_ = DeviceBuffer(sizeof(Acc) * size_t(max_batch_ * kMaxSlices));
    // The block dots' counters (the last double of each row) start at zero and are left at zero.
    TTT_CUDA_CHECK(cudaMemsetAsync(partial_.as<void>(), 0, partial_.bytes(), stream_));
    workspace_bytes_ += partial_.bytes() + kCublasWorkspace;
  }
  ~TitansCudaOps() {
    if (stream_) cudaStreamSynchronize(stream_);
    bufs_.clear();
    partial_ = DeviceBuffer();
    if (handle_) cublasDestroy(handle_);
    cublas_ws_ = DeviceBuffer();
    if (stream_) cudaStreamDestroy(stream_);
  }
  TitansCudaOps(const TitansCudaOps&) = delete;
  TitansCudaOps& operator=(const TitansCudaOps&) = delete;

  cudaStream_t stream() const { return stream_; }
  size_t workspace_bytes() const { return workspace_bytes_; }

  T* alloc(int64_t n) {
    const size_t bytes = sizeof(T) * size_t(std::max<int64_t>(n, 1));
    bufs_.emplace_back(bytes);
    workspace_bytes_ += bytes;
    if (opt_.poison_workspace) TTT_CUDA_CHECK(cudaMemsetAsync(bufs_.back().as<void>(), 0xFF, bytes, stream_));
    return bufs_.back().as<T>();
  }
  void zero(T* p, int64_t n) {
    if (n > 0) TTT_CUDA_CHECK(cudaMemsetAsync(p, 0, sizeof(T) * size_t(n), stream_));
  }
  void copy(T* dst, const T* src, int64_t n) {
    if (n > 0)
      TTT_CUDA_CHECK(cudaMemcpyAsync(dst, src, sizeof(T) * size_t(n), cudaMemcpyDeviceToDevice, stream_));
  }
  // Row-major C = alpha op(A) op(B) + beta C is column-major C^T = alpha op(B)^T op(A)^T + beta C^T.
  void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t lda, int64_t sA,
            const T* B, int64_t ldb, int64_t sB, T beta, T* C, int64_t ldc, int64_t sC, int64_t batch) {
    if (m <= 0 || n <= 0 || batch <= 0) return;
    const cudaDataType_t dt = CublasType<T>::data;
    TTT_CUBLAS_CHECK(cublasGemmStridedBatchedEx(handle_, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                                                int(n), int(m), int(k), &alpha, B, dt, int(ldb), (long long)sB, A, dt,
                                                int(lda), (long long)sA, &beta, C, dt, int(ldc), (long long)sC,
                                                int(batch), compute_, CUBLAS_GEMM_DEFAULT));
  }
  void batched_dot(const T* x, const T* y, int64_t per, int64_t stride, int64_t batch, T* out) {
    TTT_CHECK(batch <= max_batch_, "titans cuda: batched_dot of " << batch << " items exceeds " << max_batch_);
    if (batch <= 0) return;
    if (per <= kDotWarpMax) {
      k_dot_warp<T><<<warp_grid(batch), kThreads, 0, stream_>>>(x, y, per, stride, batch, out);
      TTT_LAUNCH_CHECK("titans dot (warps)");
      return;
    }
    const int slices =
        int(std::max<int64_t>(1, std::min<int64_t>(kDotSlicesUsed, (per + 4 * kThreads - 1) / (4 * kThreads))));
    for (int64_t b0 = 0; b0 < batch; b0 += 65535) {  // the grid's y extent
      const int64_t nb = std::min<int64_t>(65535, batch - b0);
      k_dot_blocks<T><<<dim3(unsigned(slices), unsigned(nb)), kThreads, 0, stream_>>>(
          x + b0 * stride, y + b0 * stride, per, stride, partial_.as<Acc>(), out + b0);
      TTT_LAUNCH_CHECK("titans dot (blocks)");
    }
  }
  template <class F>
  void each(int64_t n, const F& f) {
    if (n <= 0) return;
    k_each<F><<<grid_for(n), kThreads, 0, stream_>>>(f, n);
    TTT_LAUNCH_CHECK("titans element step");
  }
  // f1 over n1 and f2 over n2 in one launch (titans_fused.h: each2).
  template <class F1, class F2>
  void each2(int64_t n1, const F1& f1, int64_t n2, const F2& f2) {
    const int64_t n = std::max(n1, n2);
    if (n <= 0) return;
    k_each2<F1, F2><<<grid_for(n), kThreads, 0, stream_>>>(f1, std::max<int64_t>(n1, 0), f2, std::max<int64_t>(n2, 0));
    TTT_LAUNCH_CHECK("titans element steps");
  }
  const char* products() const { return product_math_name<T>(math_); }

 private:
  TitansOptions opt_;
  int64_t max_batch_;
  ProductMath math_;
  cublasComputeType_t compute_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t handle_ = nullptr;
  std::vector<DeviceBuffer> bufs_;
  DeviceBuffer partial_, cublas_ws_;
  size_t workspace_bytes_ = 0;
  static constexpr size_t kCublasWorkspace = titans::kRunnerCublasWorkspace;
};

}  // namespace

// The runner's state: the batched path's titans::Memory (made on first use: the persistent path needs it for
// streaming only), or the persistent kernels.
template <class T>
struct TitansRunner<T>::Impl {
  titans::MemoryShape s;
  bool with_grad;
  TitansCudaOps<T> ops;
  std::unique_ptr<titans::Memory<TitansCudaOps<T>>> mem;
  titans::PersistentPlan plan;
  std::unique_ptr<PersistentMemory<T>> fused;
  bool graphs;
  CachedGraph fwd, bwd;
  std::vector<const void*> fkey;  // pointers of the last forward()
  // Only backward() takes batched dot products.
  Impl(const titans::MemoryShape& shape, bool wg, const TitansOptions& o)
      : s(shape), with_grad(wg), ops(wg ? titans::max_dot_batch(shape) : 1, o), graphs(o.graphs),
        fwd(size_t(std::max(1, o.graph_cache))), bwd(size_t(std::max(1, o.graph_cache))) {
    const titans::KernelChoice choice =
        o.kernel == titans::KernelChoice::Automatic ? titans::kernel_choice_from_env() : o.kernel;
    const titans::PersistentVariant variant = o.variant_set ? o.variant : titans::persistent_variant_from_env();
    plan = titans::plan_persistent(s, sizeof(T), persistent_smem_limit(), choice, variant);
    if (o.bf16_products) titans::use_bf16_products(plan, sizeof(T));
    else if (o.tf32_products && plan.persistent) plan.reason += ", fp32 products (tf32 products are the batched path's)";
    if (!plan.persistent) {
      plan.reason += std::string(", ") + ops.products();
      memory();
      return;
    }
    fused = std::make_unique<PersistentMemory<T>>(s, wg, plan, ops.stream(), o.poison_workspace);
  }
  titans::Memory<TitansCudaOps<T>>& memory() {
    if (!mem) {
      // The persistent path streams only (a runner of titans::stream_shape, no gradients).
      mem = std::make_unique<titans::Memory<TitansCudaOps<T>>>(ops, s, fused ? false : with_grad);
    }
    return *mem;
  }
  void forward(const titans::MemoryInputs<T>& in, T* o) {
    TTT_CHECK(!fused || !(in.entry_W || in.entry_S || in.exit_W || in.exit_S),
              "titans cuda: the persistent kernels take no passed chain state (" << plan.reason
                                                                                 << "); run the batched path");
    if (fused) fused->forward(in, o);
    else memory().forward(in, o);
  }
  void backward(const T* go, const titans::MemoryGrads<T>& g) {
    TTT_CHECK(!fused || !(g.exit_dW || g.exit_dS || g.entry_dW || g.entry_dS),
              "titans cuda: the persistent kernels take no passed chain state (" << plan.reason
                                                                                 << "); run the batched path");
    if (fused) fused->backward(go, g);
    else memory().backward(go, g);
  }

  // Runs body() eagerly, or (graphs) replays the graph captured for this key, capturing it first.
  template <class F>
  void run(CachedGraph& graph, const std::vector<const void*>& key, F body) {
    cudaStream_t st = ops.stream();
    if (!graphs || stream_is_capturing(st)) {
      body();
      return;
    }
    if (graph.replay(st, key)) return;
    std::string why;
    if (!graph.capture_and_launch(st, key, body, &why)) {
      std::fprintf(stderr, "titans cuda: CUDA graph capture failed (%s); running without graphs\n", why.c_str());
      graphs = false;
      body();
    }
  }
};

template <class T>
TitansRunner<T>::TitansRunner(const titans::MemoryShape& s, bool with_grad, const TitansOptions& opt) {
  s.validate();
  impl_ = std::make_unique<Impl>(s, with_grad, opt);
  TTT_CUDA_CHECK(cudaStreamSynchronize(impl_->ops.stream()));
}
template <class T>
TitansRunner<T>::~TitansRunner() = default;
template <class T>
void TitansRunner<T>::forward(const titans::MemoryInputs<T>& in, T* o) {
  impl_->fkey = {in.q, in.k, in.v, in.w1, in.w2, in.theta, in.eta, in.alpha, o, in.entry_W, in.entry_S, in.exit_W, in.exit_S};
  impl_->run(impl_->fwd, impl_->fkey, [&] { impl_->forward(in, o); });
}
template <class T>
void TitansRunner<T>::backward(const T* grad_o, const titans::MemoryGrads<T>& g) {
  // The backward graph also bakes in the forward's inputs: key on the last forward's pointers too.
  std::vector<const void*> key = impl_->fkey;
  for (const void* p : {static_cast<const void*>(grad_o), static_cast<const void*>(g.q), static_cast<const void*>(g.k),
                        static_cast<const void*>(g.v), static_cast<const void*>(g.w1), static_cast<const void*>(g.w2),
                        static_cast<const void*>(g.theta), static_cast<const void*>(g.eta),
                        static_cast<const void*>(g.alpha), static_cast<const void*>(g.exit_dW),
                        static_cast<const void*>(g.exit_dS), static_cast<const void*>(g.entry_dW),
                        static_cast<const void*>(g.entry_dS)})
    key.push_back(p);
  impl_->run(impl_->bwd, key, [&] { impl_->backward(grad_o, g); });
}
template <class T>
void TitansRunner<T>::stream_init(const titans::StreamState<T>& st, const T* w1, const T* w2) {
  impl_->memory().stream_init(st, w1, w2);
}
template <class T>
void TitansRunner<T>::stream_apply(const titans::StreamState<T>& st, const T* q, int64_t n, T* o) {
  impl_->memory().stream_apply(st, q, n, o);
}
template <class T>
void TitansRunner<T>::stream_update(const titans::StreamState<T>& st, const titans::MemoryInputs<T>& chunk,
                                    int64_t n) {
  impl_->memory().stream_update(st, chunk, n);
}
template <class T>
void TitansRunner<T>::synchronize() {
  TTT_CUDA_CHECK(cudaStreamSynchronize(impl_->ops.stream()));
  TTT_CUDA_CHECK(cudaGetLastError());
}
template <class T>
size_t TitansRunner<T>::workspace_bytes() const {
  return impl_->ops.workspace_bytes() + (impl_->fused ? impl_->fused->workspace_bytes() : 0);
}
template <class T>
bool TitansRunner<T>::persistent() const {
  return impl_->fused != nullptr;
}
template <class T>
const std::string& TitansRunner<T>::path() const {
  return impl_->plan.reason;
}
template <class T>
void* TitansRunner<T>::stream() const {
  return impl_->ops.stream();
}

template <class T>
void titans_host(const titans::MemoryShape& s, const titans::MemoryInputs<T>& in, T* o, const T* grad_o,
                 const titans::MemoryGrads<T>* g, const TitansOptions& opt) {
  s.validate();
  const bool grad = grad_o != nullptr;
  TTT_CHECK(!grad || g, "titans_host: grad_o given without gradient outputs");
  const size_t BT = size_t(s.B * s.T), BTD = BT * size_t(s.d), W = size_t(s.B * s.P());
  auto up = [](const T* h, size_t n) {
    DeviceBuffer b(n * sizeof(T));
    if (h) b.upload(h, n * sizeof(T));
    return b;
  };
  auto out = [](size_t n) {
    DeviceBuffer b(n * sizeof(T));
    b.fill_nan();
    return b;
  };
  DeviceBuffer q = up(in.q, BTD), k = up(in.k, BTD), v = up(in.v, BTD), w1 = up(in.w1, W), w2 = up(in.w2, W);
  DeviceBuffer th = up(in.theta, BT), et = s.momentum ? up(in.eta, BT) : DeviceBuffer(),
               al = s.decay ? up(in.alpha, BT) : DeviceBuffer();
  DeviceBuffer go = grad ? up(grad_o, BTD) : DeviceBuffer();
  DeviceBuffer od = out(BTD);
  DeviceBuffer gq, gk, gv, gw1, gw2, gth, get, gal;
  titans::MemoryGrads<T> gd;
  if (grad) {
    gq = out(BTD), gk = out(BTD), gv = out(BTD), gw1 = out(W), gw2 = out(W), gth = out(BT);
    if (g->eta) get = out(BT);
    if (g->alpha) gal = out(BT);
    gd = {gq.as<T>(),  gk.as<T>(),  gv.as<T>(),  gw1.as<T>(), gw2.as<T>(), gth.as<T>(),
          g->eta ? get.as<T>() : nullptr, g->alpha ? gal.as<T>() : nullptr};
  }
  titans::MemoryInputs<T> din{q.as<T>(),  k.as<T>(),  v.as<T>(), w1.as<T>(), w2.as<T>(), th.as<T>(),
                              s.momentum ? et.as<T>() : nullptr, s.decay ? al.as<T>() : nullptr};
  // The chain's ends (state layout [B][2P]): given host arrays travel, outputs come back.
  const size_t SW = 2 * W;
  DeviceBuffer eW, eS, xW, xS, xdW, xdS, edW, edS;
  if (in.entry_W) eW = up(in.entry_W, SW), din.entry_W = eW.as<T>();
  if (in.entry_S) eS = up(in.entry_S, SW), din.entry_S = eS.as<T>();
  if (in.exit_W) xW = out(SW), din.exit_W = xW.as<T>();
  if (in.exit_S) xS = out(SW), din.exit_S = xS.as<T>();
  if (grad) {
    if (g->exit_dW) xdW = up(g->exit_dW, SW), gd.exit_dW = xdW.as<T>();
    if (g->exit_dS) xdS = up(g->exit_dS, SW), gd.exit_dS = xdS.as<T>();
    if (g->entry_dW) edW = out(SW), gd.entry_dW = edW.as<T>();
    if (g->entry_dS) edS = out(SW), gd.entry_dS = edS.as<T>();
  }
  {
    TitansRunner<T> r(s, grad, opt);
    r.forward(din, od.as<T>());
    if (grad) r.backward(go.as<T>(), gd);
    r.synchronize();
  }
  od.download(o, BTD * sizeof(T));
  if (in.exit_W) xW.download(in.exit_W, SW * sizeof(T));
  if (in.exit_S) xS.download(in.exit_S, SW * sizeof(T));
  if (!grad) return;
  if (g->entry_dW) edW.download(g->entry_dW, SW * sizeof(T));
  if (g->entry_dS) edS.download(g->entry_dS, SW * sizeof(T));
  gq.download(g->q, BTD * sizeof(T));
  gk.download(g->k, BTD * sizeof(T));
  gv.download(g->v, BTD * sizeof(T));
  gw1.download(g->w1, W * sizeof(T));
  gw2.download(g->w2, W * sizeof(T));
  gth.download(g->theta, BT * sizeof(T));
  if (g->eta) get.download(g->eta, BT * sizeof(T));
  if (g->alpha) gal.download(g->alpha, BT * sizeof(T));
}

template class TitansRunner<float>;
template class TitansRunner<double>;
template void titans_host<float>(const titans::MemoryShape&, const titans::MemoryInputs<float>&, float*, const float*,
                                 const titans::MemoryGrads<float>*, const TitansOptions&);
template void titans_host<double>(const titans::MemoryShape&, const titans::MemoryInputs<double>&, double*,
                                  const double*, const titans::MemoryGrads<double>*, const TitansOptions&);

}  // namespace ttt::cuda
