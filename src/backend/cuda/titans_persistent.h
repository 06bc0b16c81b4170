// The Titans memory's chunk loop in persistent kernels: one thread block per item (sequence-head x shard,
// titans::Group) holds the item's fast weights W = [W1; W2] and momentum S in shared memory (fp32 or fp64) for the
// whole chunk loop, and runs every chunk step (apply to the queries, the inner MSE gradient on the chunk's keys
// and values, momentum, decay, the step) inside the block, phases separated by __syncthreads: one launch per
// group for the forward, one for the backward, instead of ~55 launches per chunk step (titans_cuda.cu's batched
// path). The math is titans_fused.h's, term for term: the products are the same (block-level FMA loops instead of
// cuBLAS), the element steps are the very functors of titans_elementwise.h.
//
// Backward: the forward keeps the state of every K-th chunk boundary (global memory); the backward walks the
// segments last to first, recomputes a segment's states from its first one (into global slots), then runs the
// explicit adjoints of MemoryGroup::update_bwd / apply_bwd chunk by chunk with dW, dS on chip. The per-item dW go
// to global memory and are summed per sequence-head by fn::ReduceItems, as the batched path does.
//
// Q-K projected queries (TNT's local memories) run in the same blocks: the forward projects each chunk's queries
// with the running sums M = Σ k kᵀ, z = Σ ||k||² (on chip) before applying the memory, and the backward ends with
// the projection's two sweeps (QkGroup::backward). Planning (which path, shared memory, segment length) is host
// code: backend/titans_persistent_plan.h.
//
// This header needs no CUDA headers.
#pragma once
#include <cstddef>
#include <memory>

#include "backend/titans_persistent_plan.h"
#include "ttt/titans_fused.h"

namespace ttt::cuda {

// Opt-in shared memory per block of the current device (bytes).
size_t persistent_smem_limit();

template <class T>
class PersistentMemory {
 public:
  // plan: titans::plan_persistent(s, sizeof(T), ...) with plan.persistent set. Work is enqueued on `stream`
  // (a cudaStream_t). poison: fill every work buffer with NaN when allocated.
  PersistentMemory(const titans::MemoryShape& s, bool with_grad, const titans::PersistentPlan& plan, void* stream,
                   bool poison);
  ~PersistentMemory();
  PersistentMemory(const PersistentMemory&) = delete;
  PersistentMemory& operator=(const PersistentMemory&) = delete;
  // o = f_W(q̃) by the causal program, q̃ the Q-K projection of in.q (qk) or in.q.
  void forward(const titans::MemoryInputs<T>& in, T* o);
  // After forward() on the same inputs: every gradient of g assigned (titans::Memory::backward's contract).
  void backward(const T* go, const titans::MemoryGrads<T>& g);
  size_t workspace_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ttt::cuda
