#include "core/blas.h"

#include <cblas.h>

#include <atomic>
#include <vector>

#include "core/dtype.h"

namespace ttt {

namespace {
std::atomic<bool> g_bf16_operands{false};
std::atomic<bool> g_bf16_activations{false};

// The rows x cols block of a row-major matrix with leading dimension ld, each element rounded to bf16.
std::vector<float> rounded(const float* p, int64_t rows, int64_t cols, int64_t ld) {
  std::vector<float> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[size_t(r * cols + c)] = round_to_bf16(p[r * ld + c]);
  return out;
}
}  // namespace

void set_emulate_bf16_operands(bool on) { g_bf16_operands.store(on); }
bool emulate_bf16_operands() { return g_bf16_operands.load(); }
void set_emulate_bf16_activations(bool on) { g_bf16_activations.store(on); }
bool emulate_bf16_activations() { return g_bf16_activations.load(); }

template <>
void gemm<float>(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                 const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k > 0 && g_bf16_operands.load()) {
    const int64_t ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
    const std::vector<float> a16 = rounded(a, ar, ac, lda), b16 = rounded(b, br, bc, ldb);
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(m), int(n), int(k),
                alpha, a16.data(), int(ac), b16.data(), int(bc), beta, c, int(ldc));
    return;
  }
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(m), int(n), int(k),
              alpha, a, int(lda), b, int(ldb), beta, c, int(ldc));
}

template <>
void gemm<double>(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a, int64_t lda,
                  const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(m), int(n), int(k),
              alpha, a, int(lda), b, int(ldb), beta, c, int(ldc));
}

}  // namespace ttt
