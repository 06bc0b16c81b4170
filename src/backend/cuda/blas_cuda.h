// Row-major matrix products on the GPU for the model (cuBLAS underneath), in one of three precisions:
//   fp32  exact fp32 products (CUBLAS_COMPUTE_32F), the parity mode;
//   tf32  tensor-core TF32 products with fp32 accumulation;
//   bf16  bf16 operands, fp32 accumulation and fp32 outputs: issue 5's "bf16 matrix inputs with fp32
//         accumulation". An operand already stored in bf16 (Operand from a bf16 pointer: the GPU model's bf16
//         activations) is used as it is; an fp32 operand is rounded into a scratch buffer right before the product.
//         The output may be stored in bf16 too (Output from a bf16 pointer: the fp32 accumulation rounded to
//         nearest even by cuBLAS as it stores it), for products whose result is itself only stored in bf16.
// Every pointer is a device pointer; work is enqueued on the legacy default stream (which orders it with
// every blocking stream, e.g. the LaCT runner's). This header needs no CUDA headers.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "backend/options.h"
#include "core/dtype.h"

namespace ttt::cuda {

// One matrix operand of a product: fp32, or bf16 (ttt::bf16 has the bits of the device's __nv_bfloat16). A bf16
// operand is accepted in MathMode::BF16 only (other modes would have to widen it; no caller needs that).
struct Operand {
  const void* p = nullptr;
  bool is_bf16 = false;
  Operand(const float* f) : p(f) {}                        // NOLINT: implicit, so fp32 call sites read as before
  Operand(const bf16* h) : p(h), is_bf16(true) {}          // NOLINT
};

// The output C of a product: fp32, or bf16 (MathMode::BF16 only: fp32 accumulation, rounded as it is stored;
// with beta != 0 the bf16 C is read back widened).
struct Output {
  void* p = nullptr;
  bool is_bf16 = false;
  Output(float* f) : p(f) {}                               // NOLINT: implicit, so fp32 call sites read as before
  Output(bf16* h) : p(h), is_bf16(true) {}                 // NOLINT
};

// The products' precision: backend::Precision (fp32 | tf32 | bf16), the one enum of the whole program.
using MathMode = backend::Precision;
inline const char* math_mode_name(MathMode m) { return backend::precision_name(m); }

class Blas {
 public:
  explicit Blas(MathMode mode = MathMode::FP32);
  ~Blas();
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;
  MathMode mode() const { return mode_; }

  // C[m,n] = alpha op(A) op(B) + beta C, row-major with leading dimensions; op(A) is [m,k] (A [m,k], or A [k,m]
  // when ta), op(B) is [k,n].
  void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, Operand A, int64_t lda, Operand B,
            int64_t ldb, float beta, Output C, int64_t ldc);
  // The same for `batch` matrices at element strides sA, sB, sC.
  void gemm_batched(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, Operand A, int64_t lda,
                    int64_t sA, Operand B, int64_t ldb, int64_t sB, float beta, Output C, int64_t ldc, int64_t sC,
                    int64_t batch);
  // y[cols] (+)= sum over rows of X[rows, cols] (ld ldx): a product with a ones vector, always exact fp32.
  void col_sum(const float* X, int64_t rows, int64_t cols, int64_t ldx, float* y, bool accumulate);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  MathMode mode_;
};

}  // namespace ttt::cuda
