// Layout and conversion kernels of the GPU model and generation (fp32, bf16 storage): block copies, the
// multi-head <-> per sequence-head layouts of the memory operators, the embedding gather and its adjoint, and
// the backend's one float -> bf16 conversion. Device pointers; the legacy default stream unless a call takes a
// stream; launches checked (failures throw ttt::Error). This header needs no CUDA headers.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace ttt::cuda::mk {

// dst[r, c] (+)= src[r, c] for a rows x cols block with leading dimensions.
void copy2d(const float* src, int64_t lds, float* dst, int64_t ldd, int64_t rows, int64_t cols, bool accumulate = false);
// out [copies, n] = `copies` copies of row [n] (a weight shared by heads, spread over the heads' columns).
void tile_row(const float* row, float* out, int64_t copies, int64_t n);

// Multi-head activations [S*N, ld] (head h = columns [h*d, (h+1)*d)) <-> per sequence-head [S*H, N, d].
// x16 (may be null): the multi-head side's values (heads_to_batch: x; batch_to_heads: x as stored, after the
// accumulation) rounded to bf16 into x16 [S*N, ld16] in the same pass: the bits of a to_bf16 of them after it.
void heads_to_batch(const float* x, int64_t ldx, float* y, int64_t S, int64_t N, int64_t H, int64_t d,
                    bf16* x16 = nullptr, int64_t ld16 = 0);
void batch_to_heads(const float* y, float* x, int64_t ldx, int64_t S, int64_t N, int64_t H, int64_t d,
                    bool accumulate, bf16* x16 = nullptr, int64_t ld16 = 0);
// Per-head columns col0 + h of [S*N, ldx] <-> [S*H, N].
void cols_to_batch(const float* x, int64_t ldx, int64_t col0, float* y, int64_t S, int64_t N, int64_t H);
void batch_to_cols(const float* y, float* x, int64_t ldx, int64_t col0, int64_t S, int64_t N, int64_t H);

// out[i, :] = table[ids[i], :] (ids on the device, checked on the host beforehand).
void embedding_forward(const float* table, const int32_t* ids, float* out, int64_t n, int64_t D);
// dtable[uniq[u], :] += sum over p in order[starts[u] .. starts[u+1]) of dout[p, :], in that order
// (a host-built CSR of the positions of each distinct id: deterministic, no atomics).
void embedding_backward(const float* dout, const int32_t* order, const int32_t* starts, const int32_t* uniq,
                        int64_t n_uniq, float* dtable, int64_t D);

// ---- bf16 storage (rounding to nearest even, as __float2bfloat16) -------------------------------------------
// dst[b][r][c] = bf16(src[b][r][c]) for `batch` rows x cols matrices; src element (b, r, c) at
// b*src_stride + r*lds + c, dst element at b*dst_stride + r*ldd + c. Contiguous data (both sides) converts four
// elements per thread where the pointers allow it. The backend's one float -> bf16 conversion: the GPU model's
// bf16 activations, Blas's bf16 operands (blas_cuda.cu) and the LaCT operator's bf16 shadows (lact_cuda.cu).
void to_bf16(const float* src, int64_t lds, int64_t src_stride, bf16* dst, int64_t ldd, int64_t dst_stride,
             int64_t rows, int64_t cols, int64_t batch, void* stream = nullptr);
// One rows x cols block with leading dimensions.
inline void to_bf16(const float* src, int64_t lds, bf16* dst, int64_t ldd, int64_t rows, int64_t cols) {
  to_bf16(src, lds, rows * lds, dst, ldd, rows * ldd, rows, cols, 1);
}
// n contiguous elements.
inline void to_bf16(const float* src, bf16* dst, int64_t n, void* stream = nullptr) {
  to_bf16(src, n, n, dst, n, n, 1, n, 1, stream);
}
// dst = float(src), n elements.
void from_bf16(const bf16* src, float* dst, int64_t n);
// dst = bf16(x) and x = float(dst): x keeps exactly the value stored (n elements).
void round_store_bf16(float* x, bf16* dst, int64_t n);

}  // namespace ttt::cuda::mk
