// Element types and devices of a Tensor, and bfloat16 conversion.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

namespace ttt {

enum class DType { F32, F64, BF16, I64 };  // I64: token ids (ttt logits writes `tokens`)
enum class Device { CPU, CUDA };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F64: return "F64";
    case DType::BF16: return "BF16";
    case DType::I64: return "I64";
  }
  return "?";
}
inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F64: return 8;
    case DType::BF16: return 2;
    case DType::I64: return 8;
  }
  return 0;
}
inline const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

// bfloat16 as raw bits; conversion rounds to nearest even (NaN stays NaN).
struct bf16 {
  uint16_t bits = 0;
};
inline float bf16_to_float(bf16 h) {
  uint32_t u = uint32_t(h.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline bf16 float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40)};  // quiet NaN
  uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return bf16{uint16_t((u + rounding) >> 16)};
}

// The nearest bf16 value of f as a float (CPU emulations of the GPU's bf16 matrix inputs).
inline float round_to_bf16(float f) { return bf16_to_float(float_to_bf16(f)); }

// The nearest IEEE binary16 (fp16) value of f as a float, ties to even, as CUDA's __float2half_rn: 11 significant
// bits, subnormals down to 2^-24, |f| >= 65520 to +-Inf, NaN stays NaN (CPU emulation of fp16 storage on the GPU).
// Exact: x / quantum is a scaling by a power of two, rounded once by nearbyint (the default mode rounds to even).
float round_to_fp16(float f);
// The nearest TF32 value of f (10 fraction bits, float's exponent range; ties away from zero, as cvt.rna.tf32.f32,
// the conversion of tensor-core tf32 operands), as a float.
float round_to_tf32(float f);

template <class T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::F32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::F64; };
template <> struct dtype_of<bf16> { static constexpr DType value = DType::BF16; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::I64; };

}  // namespace ttt
