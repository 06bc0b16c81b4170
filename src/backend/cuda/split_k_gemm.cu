// Split-K products through cuBLASLt (split_k_gemm.h). Row-major C = op(A) op(B) is column-major
// C^T = op(B)^T op(A)^T: cuBLASLt's "A" is our B and its "B" our A, its m our n.
#include "backend/cuda/split_k_gemm.h"

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <map>
#include <utility>

#include "backend/cuda/check.cuh"

namespace ttt::cuda {

int split_k_parts(int64_t m, int64_t n, int64_t k, int64_t batch, int sms) {
  constexpr int64_t kTile = 128, kMaxParts = 4, kMinPart = 512;
  const int64_t tiles = batch * ((m + kTile - 1) / kTile) * ((n + kTile - 1) / kTile);
  if (sms <= 0 || k < 2 * kMinPart || 2 * tiles > sms) return 1;
  return int(std::max<int64_t>(1, std::min({kMaxParts, sms / tiles, k / kMinPart})));
}

namespace {

// The largest power of two (<= 256) that divides the address: what cuBLASLt's algorithms require of a pointer.
uint32_t alignment_of(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && (a % al) != 0) al /= 2;
  return al;
}

// One shape's descriptors and the algorithm chosen for it (usable false: none accepts the split).
struct Plan {
  bool usable = false;
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulAlgo_t algo{};
  void release() {
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

using Key = std::array<int64_t, 17>;

}  // namespace

struct SplitKGemm::Impl {
  cublasLtHandle_t lt = nullptr;
  cudaStream_t stream = nullptr;
  void* ws = nullptr;
  size_t ws_bytes = 0;
  std::map<Key, Plan> plans;

  // A layout of a column-major [rows x cols] matrix (ld) in `batch` items at element stride `stride`.
  static cublasLtMatrixLayout_t layout(cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld, int64_t stride,
                                       int64_t batch) {
    cublasLtMatrixLayout_t l = nullptr;
    TTT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l, type, uint64_t(rows), uint64_t(cols), ld));
    const int32_t count = int32_t(batch);
    TTT_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count));
    TTT_CUBLAS_CHECK(
        cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride));
    return l;
  }

  Plan make_plan(bool ta, bool tb, int64_t m, int64_t n, int64_t k, int64_t lda, int64_t sA, int64_t ldb, int64_t sB,
                 int64_t ldc, int64_t sC, int64_t batch, int parts, const std::array<uint32_t, 3>& align) {
    Plan p;
    TTT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t opa = tb ? CUBLAS_OP_T : CUBLAS_OP_N, opb = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    TTT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    TTT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    // Stored shapes, column-major: our B is [n,k] (or [k,n] when tb) row-major, i.e. [k,n] / [n,k] column-major.
    p.la = layout(CUDA_R_16BF, tb ? k : n, tb ? n : k, ldb, sB, batch);
    p.lb = layout(CUDA_R_16BF, ta ? m : k, ta ? k : m, lda, sA, batch);
    p.lc = layout(CUDA_R_32F, n, m, ldc, sC, batch);

    cublasLtMatmulPreference_t pref = nullptr;
    TTT_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t ws = ws_bytes;
    TTT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    // cuBLASLt's A is our B: the alignments of the pointers this shape runs on.
    const uint32_t al_a = align[1], al_b = align[0], al_c = align[2];
    const std::array<std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t>, 4> aligns{
        {{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, al_a},
         {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, al_b},
         {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, al_c},
         {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, al_c}}};
    for (const auto& [attr, bytes] : aligns)
      TTT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &bytes, sizeof bytes));
    constexpr int kAsk = 16;
    cublasLtMatmulHeuristicResult_t found[kAsk] = {};
    int got = 0;
    const cublasStatus_t hs =
        cublasLtMatmulAlgoGetHeuristic(lt, p.op, p.la, p.lb, p.lc, p.lc, pref, kAsk, found, &got);
    cublasLtMatmulPreferenceDestroy(pref);
    if (hs != CUBLAS_STATUS_SUCCESS) got = 0;
    // The first algorithm of the list (its order: a function of the shape and the device) that takes the split
    // with the fp32 out-of-place reduction.
    for (int i = 0; i < got && !p.usable; ++i) {
      if (found[i].state != CUBLAS_STATUS_SUCCESS) continue;
      cublasLtMatmulAlgo_t algo = found[i].algo;
      int32_t splits_ok = 0;
      uint32_t schemes = 0;
      size_t w = 0;
      if (cublasLtMatmulAlgoCapGetAttribute(&algo, CUBLASLT_ALGO_CAP_SPLITK_SUPPORT, &splits_ok, sizeof splits_ok,
                                            &w) != CUBLAS_STATUS_SUCCESS ||
          !splits_ok)
        continue;
      if (cublasLtMatmulAlgoCapGetAttribute(&algo, CUBLASLT_ALGO_CAP_REDUCTION_SCHEME_MASK, &schemes, sizeof schemes,
                                            &w) != CUBLAS_STATUS_SUCCESS ||
          !(schemes & CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE))
        continue;
      const int32_t split = parts;
      const uint32_t scheme = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
      if (cublasLtMatmulAlgoConfigSetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &split, sizeof split) !=
              CUBLAS_STATUS_SUCCESS ||
          cublasLtMatmulAlgoConfigSetAttribute(&algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &scheme, sizeof scheme) !=
              CUBLAS_STATUS_SUCCESS)
        continue;
      cublasLtMatmulHeuristicResult_t check{};
      if (cublasLtMatmulAlgoCheck(lt, p.op, p.la, p.lb, p.lc, p.lc, &algo, &check) != CUBLAS_STATUS_SUCCESS ||
          check.state != CUBLAS_STATUS_SUCCESS || check.workspaceSize > ws_bytes)
        continue;
      p.algo = algo;
      p.usable = true;
    }
    return p;
  }
};

SplitKGemm::SplitKGemm(void* stream, void* workspace, size_t ws_bytes) : impl_(std::make_unique<Impl>()) {
  impl_->stream = static_cast<cudaStream_t>(stream);
  impl_->ws = workspace;
  impl_->ws_bytes = ws_bytes;
  TTT_CUBLAS_CHECK(cublasLtCreate(&impl_->lt));
}

SplitKGemm::~SplitKGemm() {
  if (!impl_) return;
  for (auto& [key, plan] : impl_->plans) plan.release();
  if (impl_->lt) cublasLtDestroy(impl_->lt);
}

bool SplitKGemm::gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const void* A, int64_t lda,
                      int64_t sA, const void* B, int64_t ldb, int64_t sB, float beta, float* C, int64_t ldc,
                      int64_t sC, int64_t batch, int parts) {
  if (parts < 2 || m <= 0 || n <= 0 || k <= 0 || batch <= 0) return false;
  const std::array<uint32_t, 3> align{alignment_of(A), alignment_of(B), alignment_of(C)};
  const Key key{int64_t(ta), int64_t(tb), m, n, k, lda, sA, ldb, sB, ldc, sC, batch, parts,
                int64_t(align[0]), int64_t(align[1]), int64_t(align[2]), int64_t(beta != 0.0f)};
  auto it = impl_->plans.find(key);
  if (it == impl_->plans.end())
    it = impl_->plans.emplace(key, impl_->make_plan(ta, tb, m, n, k, lda, sA, ldb, sB, ldc, sC, batch, parts, align))
             .first;
  const Plan& p = it->second;
  if (!p.usable) return false;
  TTT_CUBLAS_CHECK(cublasLtMatmul(impl_->lt, p.op, &alpha, B, p.la, A, p.lb, &beta, C, p.lc, C, p.lc, &p.algo, impl_->ws,
                              impl_->ws_bytes, impl_->stream));
  return true;
}

}  // namespace ttt::cuda
