// Element-wise, layout and small reduction kernels of the GPU model (src/cuda/model_cuda.*): what the
// model's layers need besides matrix products (blas_cuda.h), RMSNorm / RoPE / cross-entropy / AdamW
// (kernels.h), the LaCT operator (lact_cuda.h) and attention (attention.h). fp32 everywhere; each one
// computes what the CPU layer of src/nn, src/autograd or src/model computes (tests/test_cuda_model.cpp
// checks them through the whole model). Device pointers; the legacy default stream; launches checked.
// This header needs no CUDA headers.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace ttt::cuda::mk {

enum class Act { Identity, Silu, Sigmoid, Softplus };

// dst[r, c] (+)= src[r, c] for a rows x cols block with leading dimensions.
void copy2d(const float* src, int64_t lds, float* dst, int64_t ldd, int64_t rows, int64_t cols, bool accumulate = false);
void fill(float* p, float value, int64_t n);
void axpy(float* y, const float* x, float a, int64_t n);  // y += a x
void scale(float* p, float a, int64_t n);
void zero_where_masked(float* p, const uint8_t* mask, int64_t n);  // p[i] = 0 where mask[i] == 0

// ---- bf16 storage (the GPU model's bf16 activations; rounding to nearest even, as __float2bfloat16) ----------
// dst[r, c] = bf16(src[r, c]) for a rows x cols block with leading dimensions.
void to_bf16(const float* src, int64_t lds, bf16* dst, int64_t ldd, int64_t rows, int64_t cols);
// dst = float(src), n elements.
void from_bf16(const bf16* src, float* dst, int64_t n);
// dst = bf16(x) and x = float(dst): x keeps exactly the value stored (n elements).
void round_store_bf16(float* x, bf16* dst, int64_t n);

// out[i, :] = table[ids[i], :] (ids on the device, checked on the host beforehand).
void embedding_forward(const float* table, const int32_t* ids, float* out, int64_t n, int64_t D);
// dtable[uniq[u], :] += sum over p in order[starts[u] .. starts[u+1]) of dout[p, :], in that order
// (a host-built CSR of the positions of each distinct id: deterministic, no atomics).
void embedding_backward(const float* dout, const int32_t* order, const int32_t* starts, const int32_t* uniq,
                        int64_t n_uniq, float* dtable, int64_t D);

// Multi-head activations [S*N, ld] (head h = columns [h*d, (h+1)*d)) <-> per sequence-head [S*H, N, d].
void heads_to_batch(const float* x, int64_t ldx, float* y, int64_t S, int64_t N, int64_t H, int64_t d);
void batch_to_heads(const float* y, float* x, int64_t ldx, int64_t S, int64_t N, int64_t H, int64_t d,
                    bool accumulate);
// Per-head columns col0 + h of [S*N, ldx] <-> [S*H, N].
void cols_to_batch(const float* x, int64_t ldx, int64_t col0, float* y, int64_t S, int64_t N, int64_t H);
void batch_to_cols(const float* y, float* x, int64_t ldx, int64_t col0, int64_t S, int64_t N, int64_t H);

// Memory-branch query/key preparation per (row, head): z = x * scale + offset (per channel), a = silu(z),
// y = a / (||a|| + eps) (||.|| over the head's d channels, summed in double); norm[row, h] = ||a||.
void qk_prep_forward(const float* x, int64_t ldx, const float* scale, const float* offset, float* y, float* norm,
                     int64_t rows, int64_t H, int64_t d, double eps);
// From dy: dx (+)= dz * scale (accumulated into dx, leading dimension lddx); dz [rows, H*d] and dzx = dz * x
// [rows, H*d] written (their column sums are the offset and scale gradients).
void qk_prep_backward(const float* x, int64_t ldx, const float* scale, const float* offset, const float* norm,
                      const float* dy, float* dx, int64_t lddx, float* dz, float* dzx, int64_t rows, int64_t H,
                      int64_t d, double eps);

// z [rows, cols] += bias (per column; bias may be null), then y = act(z + shift).
void bias_act_forward(float* z, const float* bias, float* y, int64_t rows, int64_t cols, double shift, Act act);
// dz = dy * act'(z + shift).
void act_backward(const float* z, const float* dy, float* dz, int64_t n, double shift, Act act);
// y [rows, cols] = silu(x) (x with leading dimension ldx) / dx (+)= dy * silu'(x).
void silu_strided_forward(const float* x, int64_t ldx, float* y, int64_t rows, int64_t cols);
void silu_strided_backward(const float* x, int64_t ldx, const float* dy, float* dx, int64_t lddx, int64_t rows,
                           int64_t cols);

// out[r, h*d + j] = x[r, h*d + j] * gate[r, h].  Backward: dx = dout * gate, dgate[r, h] = sum_j dout * x.
void gate_heads_forward(const float* x, const float* gate, float* out, int64_t rows, int64_t H, int64_t d);
void gate_heads_backward(const float* x, const float* gate, const float* dout, float* dx, float* dgate,
                         int64_t rows, int64_t H, int64_t d);

// m = silu(a) * u; backward da = dm * u * silu'(a), du = dm * silu(a).
void swiglu_forward(const float* a, const float* u, float* m, int64_t n);
void swiglu_forward(const float* a, const float* u, bf16* m, int64_t n);  // m stored in bf16
void swiglu_backward(const float* a, const float* u, const float* dm, float* da, float* du, int64_t n);

// W[h][i][i] += value for each of `batch` [rows, cols] matrices, i < min(rows, cols).
void add_diagonal(float* W, int64_t batch, int64_t rows, int64_t cols, float value);

// One query against n cached keys/values (generation): for each head h, o[h*hd + c] = sum_j softmax_j(q_h . K[j]_h
// / sqrt(hd)) V[j][h*hd + c] over the rows j < n of K, V [n, ld] (any order: a ring buffer). n <= 8192, hd <= 128.
void attend_one(const float* q, const float* K, const float* V, int64_t n, int64_t heads, int64_t hd, int64_t ld,
                float* o);

// ---- Titans memory streaming (generation), per head h < H ---------------------------------------------------
// out_h = (KK_h q_h) / ksq[h] when ksq[h] > 0, else q_h (the Q-K projection; KK [H,d,d], q/out [H*d]).
void qk_project_one(const float* q, const float* KK, const double* ksq, float* out, int64_t H, int64_t d);
// out[r, :] = scale[r] * (Y[r, :] - V[r, :]) for rows r < rows of width d.
void scaled_error(const float* Y, const float* V, const float* scale, float* out, int64_t rows, int64_t d);
// out = factor * M * silu'(Z), element-wise over n.
void dsilu_mul(const float* M, const float* Z, float* out, int64_t n, float factor);
// out[r] = mean of row r of x [rows, cols].
void row_mean(const float* x, int64_t rows, int64_t cols, float* out);
// Per head h (P elements each): S = D + ebar[h] S; W = (1 - abar[h]) W + S (momentum, decay, step).
void titans_step(float* W, float* S, const float* D, const float* ebar, const float* abar, int64_t H, int64_t P);
// acc[h] += sum of squares of x[h*per .. (h+1)*per) (in double).
void add_row_sumsq(const float* x, int64_t H, int64_t per, double* acc);

// Sum of squares of x in double (deterministic two-pass reduction); waits for the result.
double sum_squares(const float* x, int64_t n);
// True iff every element is finite; waits.
bool all_finite(const float* x, int64_t n);

}  // namespace ttt::cuda::mk
