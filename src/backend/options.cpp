#include "backend/options.h"

#include "core/error.h"

namespace ttt::backend {

Precision parse_precision(const std::string& text, const std::string& what) {
  if (text == "fp32") return Precision::FP32;
  if (text == "tf32") return Precision::TF32;
  if (text == "bf16") return Precision::BF16;
  TTT_FAIL(what << " must be fp32, tf32 or bf16, got '" << text << "'");
}

const char* precision_name(Precision p) {
  switch (p) {
    case Precision::FP32: return "fp32";
    case Precision::TF32: return "tf32";
    case Precision::BF16: return "bf16";
  }
  return "?";
}

ActivationStorage parse_activation_storage(const std::string& text, const std::string& what) {
  if (text == "bf16") return ActivationStorage::BF16;
  if (text == "fp32") return ActivationStorage::FP32;
  TTT_FAIL(what << " must be bf16 or fp32, got '" << text << "'");
}

const char* activation_storage_name(ActivationStorage a) { return a == ActivationStorage::BF16 ? "bf16" : "fp32"; }

Recompute parse_recompute(const std::string& text, const std::string& what) {
  if (text == "full") return Recompute::Full;
  if (text == "save-attention") return Recompute::SaveAttention;
  if (text == "none") return Recompute::None;
  TTT_FAIL(what << " must be full, save-attention or none, got '" << text << "'");
}

const char* recompute_name(Recompute r) {
  switch (r) {
    case Recompute::Full: return "full";
    case Recompute::SaveAttention: return "save-attention";
    case Recompute::None: return "none";
  }
  return "?";
}

}  // namespace ttt::backend
