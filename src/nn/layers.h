// Layers of the LaCT language model (docs/ALGORITHMS.md §5) as differentiable ops
// on the autograd tape, each with a hand-written backward.
//
// Activations are 2D matrices with one row per token (row-major). Multi-head tensors
// keep the heads as contiguous column blocks: columns [h*hd, (h+1)*hd) are head h.
// Every op is checked against float64 finite differences in tests/test_nn.cpp.
#pragma once
#include <cstdint>
#include <vector>

#include "autograd/ops.h"

namespace ttt::nn {

using ag::Var;

// Rows of `table` [V,D] picked by `ids` (length N) -> [N,D]. Backward scatter-adds into the table.
template <class T>
Var embedding(ag::Tape<T>& t, Var table, const std::vector<int32_t>& ids);

// x / sqrt(mean(x^2) + eps) * weight, per row. x [N,D], weight [1,D].
template <class T>
Var rms_norm(ag::Tape<T>& t, Var x, Var weight, double eps = 1e-6);

// RMSNorm applied separately within each head's column block; weight [1,H*hd] is per channel.
template <class T>
Var rms_norm_heads(ag::Tape<T>& t, Var x, Var weight, int64_t heads, double eps = 1e-6);

// Within each head block: x / (||x|| + eps) (l2n of docs/ALGORITHMS.md §1, eps = 1e-5).
template <class T>
Var l2norm_heads(ag::Tape<T>& t, Var x, int64_t heads, double eps = 1e-5);

// Rotary embedding per head, "rotate_half" convention: channel i pairs with i + hd/2, angle
// positions[r] * theta^(-2i/hd). x [N,H*hd], positions has length N (absolute positions), hd even.
template <class T>
Var rope(ag::Tape<T>& t, Var x, int64_t heads, const std::vector<int64_t>& positions, double theta);

// Tile sizes of the blockwise attention (queries per block, keys per score tile).
struct AttentionBlocks {
  int64_t query = 64;
  int64_t key = 256;
};

// Key columns [lo, hi) of a score tile over keys [k0, k1) that query tq attends to (tq - window < key <= tq);
// 0 <= lo <= hi <= k1 - k0 for every tile, also one wholly outside the window (then lo == hi).
struct KeyRange {
  int64_t lo, hi;
};
KeyRange attention_key_range(int64_t tq, int64_t k0, int64_t k1, int64_t window);

// Causal sliding-window softmax attention over ONE sequence of N tokens: q, k, v [N,H*hd] -> [N,H*hd].
// Token t attends to s with t - window < s <= t; scores scaled by 1/sqrt(hd). Flash-style: scores
// exist only as [query block x key tile] tiles; the backward recomputes them from the saved per-row
// logsumexp ([N,H] extra memory). window >= N gives full causal attention.
template <class T>
Var sliding_window_attention(ag::Tape<T>& t, Var q, Var k, Var v, int64_t heads, int64_t window,
                             AttentionBlocks blocks = {});

// Mean token cross-entropy of logits [N,V] against targets (length N) -> 1x1. Targets < 0 are ignored
// (excluded from the mean; the loss is 0 when every target is ignored). per_token_loss, if given,
// receives each row's loss (0 for ignored rows).
template <class T>
Var cross_entropy(ag::Tape<T>& t, Var logits, const std::vector<int32_t>& targets,
                  std::vector<double>* per_token_loss = nullptr);

// (silu(x Wg) ⊙ (x Wu)) Wd with x [N,D], w_gate/w_up [D,F], w_down [F,D]. bf16_stored: the CPU emulation of the
// GPU model's bf16 activations (emulate_bf16_activations), which stores x Wg and x Wu in bf16 (bf16_stored_value)
// and d(silu(x Wg) ⊙ (x Wu)) too (bf16_stored_gradient).
template <class T>
Var swiglu_mlp(ag::Tape<T>& t, Var x, Var w_gate, Var w_up, Var w_down, bool bf16_stored = false);

// x rounded to bf16 (nearest even) with a straight-through gradient: x + (round(x) - x), the difference a
// constant (a GPU activation stored in bf16, its gradient flowing on unrounded).
template <class T>
Var bf16_stored_value(ag::Tape<T>& t, Var x);
// x itself, its gradient rounded to bf16 on the way back (a GPU gradient stored in bf16).
template <class T>
Var bf16_stored_gradient(ag::Tape<T>& t, Var x);

// x @ w with x [N,in], w [in,out].
template <class T>
Var linear(ag::Tape<T>& t, Var x, Var w);

// x @ w + b with b [1,out].
template <class T>
Var linear_bias(ag::Tape<T>& t, Var x, Var w, Var b);

}  // namespace ttt::nn
