// Row-major products through cuBLAS (column-major): C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T.
#include "backend/cuda/blas_cuda.h"

#include <cuda_runtime.h>

#include "backend/cuda/check.cuh"
#include "backend/cuda/elementwise_kernels.h"  // fill (the ones vector of col_sum)
#include "backend/cuda/layout_kernels.h"       // to_bf16 (fp32 operands of bf16 products)

namespace ttt::cuda {

namespace {

// A device buffer that grows (stream-ordered reuse is safe: everything runs on one stream).
struct Scratch {
  void* p = nullptr;
  size_t bytes = 0;
  void* get(size_t want) {
    if (want > bytes) {
      if (p) TTT_CUDA_CHECK(cudaFree(p));  // cudaFree synchronizes the device: no use in flight remains
      p = nullptr;
      TTT_CUDA_CHECK(cudaMalloc(&p, want));
      bytes = want;
    }
    return p;
  }
  ~Scratch() {
    if (p) cudaFree(p);
  }
};

}  // namespace

struct Blas::Impl {
  cublasHandle_t handle = nullptr;
  Scratch a, b, ones;
  int64_t ones_n = 0;
};

Blas::Blas(MathMode mode) : impl_(std::make_unique<Impl>()), mode_(mode) {
  TTT_CUBLAS_CHECK(cublasCreate(&impl_->handle));
  TTT_CUBLAS_CHECK(cublasSetStream(impl_->handle, nullptr));
  TTT_CUBLAS_CHECK(cublasSetPointerMode(impl_->handle, CUBLAS_POINTER_MODE_HOST));
}
Blas::~Blas() {
  if (impl_ && impl_->handle) cublasDestroy(impl_->handle);
}

void Blas::gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, Operand A, int64_t lda, Operand B,
                int64_t ldb, float beta, Output C, int64_t ldc) {
  gemm_batched(ta, tb, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

void Blas::gemm_batched(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, Operand A, int64_t lda,
                        int64_t sA, Operand B, int64_t ldb, int64_t sB, float beta, Output C, int64_t ldc, int64_t sC,
                        int64_t batch) {
  if (m <= 0 || n <= 0 || batch <= 0) return;
  TTT_CHECK(k >= 0, "gemm: negative inner size " << k);
  TTT_CHECK(mode_ == MathMode::BF16 || !C.is_bf16,
            "gemm: a bf16 output in " << math_mode_name(mode_) << " mode (bf16 outputs need MathMode::BF16)");
  const size_t c_bytes = C.is_bf16 ? sizeof(bf16) : sizeof(float);  // of one element of C
  if (k == 0) {  // C = beta C
    TTT_CHECK(beta == 0.0f || beta == 1.0f, "gemm: k = 0 with beta " << beta);
    if (beta == 0.0f)
      for (int64_t b = 0; b < batch; ++b)
        TTT_CUDA_CHECK(cudaMemset2DAsync(static_cast<char*>(C.p) + size_t(b * sC) * c_bytes, size_t(ldc) * c_bytes,
                                         0, size_t(n) * c_bytes, size_t(m), nullptr));
    return;
  }
  TTT_CHECK(mode_ == MathMode::BF16 || (!A.is_bf16 && !B.is_bf16),
            "gemm: a bf16 operand in " << math_mode_name(mode_) << " mode (bf16 operands need MathMode::BF16)");
  const cudaDataType_t c_type = C.is_bf16 ? CUDA_R_16BF : CUDA_R_32F;
  const cublasOperation_t opA = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opB = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  const void* pa = A.p;
  const void* pb = B.p;
  cudaDataType_t type = CUDA_R_32F;
  cublasComputeType_t compute = mode_ == MathMode::TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  int64_t la = lda, lb = ldb, sa = sA, sb = sB;
  if (mode_ == MathMode::BF16) {
    // fp32 operands are rounded into packed scratch; stored shapes: A is [m,k] (or [k,m] when ta), B is [k,n]
    // (or [n,k] when tb). bf16 operands are used in place with their own leading dimension and stride.
    const int64_t ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
    if (!A.is_bf16) {
      auto* a16 = static_cast<bf16*>(impl_->a.get(sizeof(bf16) * size_t(ar * ac * batch)));
      mk::to_bf16(static_cast<const float*>(A.p), lda, sA, a16, ac, ar * ac, ar, ac, batch);
      pa = a16, la = ac, sa = ar * ac;
    }
    if (!B.is_bf16) {
      auto* b16 = static_cast<bf16*>(impl_->b.get(sizeof(bf16) * size_t(br * bc * batch)));
      mk::to_bf16(static_cast<const float*>(B.p), ldb, sB, b16, bc, br * bc, br, bc, batch);
      pb = b16, lb = bc, sb = br * bc;
    }
    type = CUDA_R_16BF;
    compute = CUBLAS_COMPUTE_32F;
  }
  if (batch == 1) {
    TTT_CUBLAS_CHECK(cublasGemmEx(impl_->handle, opB, opA, int(n), int(m), int(k), &alpha, pb, type, int(lb), pa, type,
                                  int(la), &beta, C.p, c_type, int(ldc), compute, CUBLAS_GEMM_DEFAULT));
  } else {
    TTT_CUBLAS_CHECK(cublasGemmStridedBatchedEx(impl_->handle, opB, opA, int(n), int(m), int(k), &alpha, pb, type,
                                                int(lb), sb, pa, type, int(la), sa, &beta, C.p, c_type, int(ldc), sC,
                                                int(batch), compute, CUBLAS_GEMM_DEFAULT));
  }
}

void Blas::col_sum(const float* X, int64_t rows, int64_t cols, int64_t ldx, float* y, bool accumulate) {
  if (cols <= 0) return;
  if (rows > impl_->ones_n) {
    float* ones = static_cast<float*>(impl_->ones.get(sizeof(float) * size_t(rows)));
    mk::fill(ones, 1.0f, rows);
    impl_->ones_n = rows;
  }
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  if (rows == 0) {
    if (!accumulate) TTT_CUDA_CHECK(cudaMemsetAsync(y, 0, sizeof(float) * size_t(cols), nullptr));
    return;
  }
  // Row-major X [rows, cols] is column-major [cols, rows]: y = X^T ones is a plain gemv on it.
  TTT_CUBLAS_CHECK(cublasSgemv(impl_->handle, CUBLAS_OP_N, int(cols), int(rows), &alpha, X, int(ldx),
                               static_cast<const float*>(impl_->ones.p), 1, &beta, y, 1));
}

}  // namespace ttt::cuda
