// How a model runs on a device, as typed options: the precision of the matrix products and how stored
// activations are kept. Text ("bf16", "fp32") becomes these enums once, where it enters (the CLI's flags);
// everything below carries the enums (a device engine maps them to its own modes, e.g. the CUDA backend's
// MathMode).
#pragma once
#include <string>

namespace ttt::backend {

// Matrix products: exact fp32; TF32 tensor-core products; bf16 operands. Accumulation, state, master weights
// and optimizer moments stay fp32 in every mode. The CPU computes in fp32 only.
enum class Precision { FP32, TF32, BF16 };

// With bf16 products, activations kept for the backward (the residual stream) and those feeding products are
// stored in bf16 (half the memory) or in fp32. Ignored in the other precisions.
enum class ActivationStorage { BF16, FP32 };

// What the GPU backward recomputes of each layer's forward (the CPU keeps every activation on its tape): the
// whole layer from its kept input (Full: the least memory), or all of it except the window attention, whose
// output and log-sum-exp every layer keeps from the forward (SaveAttention, the default: rows x (dim + heads)
// fp32 per layer more, and no second attention forward), or nothing (None: every layer keeps every activation
// its backward reads, and its memory operator keeps its forward state; the most memory, no second forward).
// All three give the same bits.
enum class Recompute { Full, SaveAttention, None };

struct EngineOptions {
  Precision precision = Precision::FP32;
  ActivationStorage activations = ActivationStorage::BF16;
  Recompute recompute = Recompute::SaveAttention;
  bool bf16_activations() const { return precision == Precision::BF16 && activations == ActivationStorage::BF16; }
};

// "fp32" | "tf32" | "bf16"; anything else throws a ttt::Error "<what> must be fp32, tf32 or bf16, got '<text>'".
Precision parse_precision(const std::string& text, const std::string& what);
const char* precision_name(Precision p);
// "bf16" | "fp32"; anything else throws as parse_precision does.
ActivationStorage parse_activation_storage(const std::string& text, const std::string& what);
const char* activation_storage_name(ActivationStorage a);
// "full" | "save-attention" | "none"; anything else throws as parse_precision does.
Recompute parse_recompute(const std::string& text, const std::string& what);
const char* recompute_name(Recompute r);

}  // namespace ttt::backend
