// Products with a small output and a long reduction (the LaCT operator's weight-shaped products R^T K, V^T dU, ...:
// [384 x 384] per head over 2048 tokens) fill few of the GPU's SMs with whole-K output tiles. SplitKGemm runs such a
// bf16 strided-batched product through cuBLASLt with its reduction split into parts: each part's fp32 partial
// product goes to the workspace and a separate step sums the parts (CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE: fp32, a
// fixed order, no atomics), so the result is bit-reproducible run to run. How many parts is a fixed rule of the shape
// and the SM count (split_k_parts), and the algorithm the first of cuBLASLt's heuristic list (for that shape and
// device) that accepts that split: no timing decides anything.
//
// This header needs no CUDA headers.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

namespace ttt::cuda {

// Parts of the reduction for a row-major [m x n] output per batch item, k long, on a GPU of `sms` SMs: 1 (no split)
// unless the output tiles (nominal 128 x 128) of all items fill less than half of the SMs and k is long (>= 1024);
// then as many parts as keep every part's tiles within one wave (at most 4, each part >= 512 long).
int split_k_parts(int64_t m, int64_t n, int64_t k, int64_t batch, int sms);

class SplitKGemm {
 public:
  // stream: the cudaStream_t the products run on; workspace: device memory of ws_bytes for the partial products
  // (stream-ordered: may be shared with other work of that stream).
  SplitKGemm(void* stream, void* workspace, size_t ws_bytes);
  ~SplitKGemm();
  SplitKGemm(const SplitKGemm&) = delete;
  SplitKGemm& operator=(const SplitKGemm&) = delete;

  // Row-major C[m,n] = alpha op(A) op(B) + beta C for `batch` items at element strides sA, sB, sC; A and B bf16 (the
  // bits of __nv_bfloat16), C fp32, fp32 accumulation; the reduction in `parts` parts (>= 2). Returns false, having
  // enqueued nothing, when cuBLASLt offers no algorithm for that split within the workspace (the caller then runs
  // its plain product); the answer depends on the shape and the device only and is remembered per shape.
  bool gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const void* A, int64_t lda, int64_t sA,
            const void* B, int64_t ldb, int64_t sB, float beta, float* C, int64_t ldc, int64_t sC, int64_t batch,
            int parts);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ttt::cuda
