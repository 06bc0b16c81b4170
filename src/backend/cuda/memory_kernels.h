// Memory-branch kernels of the GPU model and generation (fp32): the q/k preparation per head, the per-head output
// gate and the low-rank initial weights' diagonal. Each computes what src/model/memory_branch.cpp computes on the
// CPU (tests/test_cuda_model.cpp checks them through the whole model and generation). Device pointers; the legacy
// default stream; launches checked (failures throw ttt::Error). The memory operators themselves are LactRunner
// (lact_cuda.h), TitansRunner (titans_cuda.h) and TntRunner (tnt_cuda.h). This header needs no CUDA headers.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace ttt::cuda::mk {

// Memory-branch query/key preparation per (row, head): z = x * scale + offset (per channel), a = silu(z),
// y = a / (||a|| + eps) (||.|| over the head's d channels, summed in double); norm[row, h] = ||a||.
void qk_prep_forward(const float* x, int64_t ldx, const float* scale, const float* offset, float* y, float* norm,
                     int64_t rows, int64_t H, int64_t d, double eps);
// From dy: dx (+)= dz * scale (accumulated into dx, leading dimension lddx); dz [rows, H*d] and dzx = dz * x
// [rows, H*d] written (their column sums are the offset and scale gradients).
void qk_prep_backward(const float* x, int64_t ldx, const float* scale, const float* offset, const float* norm,
                      const float* dy, float* dx, int64_t lddx, float* dz, float* dzx, int64_t rows, int64_t H,
                      int64_t d, double eps);
// The two above fused with what the GPU model does next, for rows of S sequences of N tokens (rows = S*N): the
// forward's y gets RoPE (rope_width > 0: at positions pos[row], over heads of rope_width channels of the row's
// H*d; 0: none) and is written in the memory operators' per sequence-head layout yT [S*H, N, d] (heads_to_batch);
// the backward reads d(yT) in that layout and undoes RoPE before the adjoint, and (dx16 not null) writes the updated
// dx rounded to bf16 at the same place of dx16 (leading dimension lddx too). Same bits as qk_prep_forward,
// rope_forward, heads_to_batch (and batch_to_heads, rope_backward, qk_prep_backward) in turn, in one pass over
// the rows. Needs rope_width even and dividing H*d, and H*d <= 12288.
void qk_prep_forward_fused(const float* x, int64_t ldx, const float* scale, const float* offset, const int64_t* pos,
                           double theta, int64_t rope_width, float* yT, float* norm, int64_t S, int64_t N, int64_t H,
                           int64_t d, double eps);
void qk_prep_backward_fused(const float* x, int64_t ldx, const float* scale, const float* offset, const float* norm,
                            const int64_t* pos, double theta, int64_t rope_width, const float* dyT, float* dx,
                            int64_t lddx, bf16* dx16, float* dz, float* dzx, int64_t S, int64_t N, int64_t H,
                            int64_t d, double eps);

// The lanes per row of the fused kernels' register walk at head width d with that RoPE width: 8 (d = 64), 16
// (d = 128) or 32 (d = 256, 384, 512, 768), or 0 where they take the general walk (row groups staged in shared
// memory). The register walk needs d = 64, 128, 256, 384, 512 or 768 and a RoPE width of 0, d, 64 or 128 that
// divides d (and vector-aligned pointers: the GPU model's always are); both walks give the same bits.
int64_t qk_prep_fused_team_lanes(int64_t d, int64_t rope_width);

// out[r, h*d + j] = x[r, h*d + j] * gate[r, h].  Backward: dx = dout * gate, dgate[r, h] = sum_j dout * x.
void gate_heads_forward(const float* x, const float* gate, float* out, int64_t rows, int64_t H, int64_t d);
// out[r, h*d + j] = x[r, h*d + j] * gate[r, h] + addend[r, h*d + j] (the product rounded first: the bits of
// gate_heads_forward then axpy), stored in fp32 or rounded to bf16 (nearest even): one pass for the GPU model's
// branch sum and its bf16 product operand.
void gate_heads_add_forward(const float* x, const float* gate, const float* addend, float* out, int64_t rows,
                            int64_t H, int64_t d);
void gate_heads_add_forward(const float* x, const float* gate, const float* addend, bf16* out, int64_t rows,
                            int64_t H, int64_t d);
void gate_heads_backward(const float* x, const float* gate, const float* dout, float* dx, float* dgate,
                         int64_t rows, int64_t H, int64_t d);

// W[h][i][i] += value for each of `batch` [rows, cols] matrices, i < min(rows, cols).
void add_diagonal(float* W, int64_t batch, int64_t rows, int64_t cols, float value);

}  // namespace ttt::cuda::mk
