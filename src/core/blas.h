// Row-major GEMM through CBLAS (OpenBLAS): C = alpha * op(A) op(B) + beta * C.
#pragma once
#include <cstdint>

namespace ttt {

template <class T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

// CPU emulation of the GPU's bf16 matrix inputs, for tests: while on, gemm<float> rounds every element of op(A)
// and op(B) to bf16 (round_to_bf16) before multiplying, accumulating in float as usual. Process-wide (it must
// reach OpenMP worker threads); off by default. BF16OperandsEmulation turns it on for a scope.
void set_emulate_bf16_operands(bool on);
bool emulate_bf16_operands();
struct BF16OperandsEmulation {
  BF16OperandsEmulation() { set_emulate_bf16_operands(true); }
  ~BF16OperandsEmulation() { set_emulate_bf16_operands(false); }
  BF16OperandsEmulation(const BF16OperandsEmulation&) = delete;
  BF16OperandsEmulation& operator=(const BF16OperandsEmulation&) = delete;
};

// CPU emulation of the GPU model's bf16 stored activations (GpuModelOptions::bf16_activations): while on,
// model::forward<float> rounds the residual stream to bf16 where the GPU stores it (the embedding output and
// every layer output), with a straight-through gradient, as the GPU's fp32 backward does, and the MLP's gate and up
// products and d(silu(gate) up), which the GPU stores in bf16 too (nn::swiglu_mlp's bf16_stored). Off by default.
void set_emulate_bf16_activations(bool on);
bool emulate_bf16_activations();
struct BF16ActivationsEmulation {
  BF16ActivationsEmulation() { set_emulate_bf16_activations(true); }
  ~BF16ActivationsEmulation() { set_emulate_bf16_activations(false); }
  BF16ActivationsEmulation(const BF16ActivationsEmulation&) = delete;
  BF16ActivationsEmulation& operator=(const BF16ActivationsEmulation&) = delete;
};

}  // namespace ttt
