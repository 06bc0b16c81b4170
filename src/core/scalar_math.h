// The scalar math of the models, written once for host and device code: silu, sigmoid, softplus and their
// derivatives, the activations of the gate projections, and the rules that turn a gate projection into a rate or a
// gate (docs/ALGORITHMS.md §5.2, §6.3). The CPU tape ops (autograd/ops.h), the explicit operators
// (ttt/lact_fused.h, ttt/titans_fused.h) and the CUDA kernels all call these functions, so every device evaluates
// a value with the same formula (the same operations in the same order; nvcc's FMA contraction aside).
//
// Plain C++ that nvcc compiles too: under nvcc every function is __host__ __device__ (TTT_HOST_DEVICE).
#pragma once
#include <cmath>

#ifdef __CUDACC__
#define TTT_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define TTT_HOST_DEVICE inline
#endif

namespace ttt::math {

// exp, log1p, sqrt for float (the single-precision functions) and double.
TTT_HOST_DEVICE float exp(float x) { return ::expf(x); }
TTT_HOST_DEVICE double exp(double x) { return ::exp(x); }
TTT_HOST_DEVICE float log1p(float x) { return ::log1pf(x); }
TTT_HOST_DEVICE double log1p(double x) { return ::log1p(x); }
TTT_HOST_DEVICE float sqrt(float x) { return ::sqrtf(x); }
TTT_HOST_DEVICE double sqrt(double x) { return ::sqrt(x); }

// sigmoid(z) = 1 / (1 + e^-z), without overflow for either sign of z: with t = e^-|z| (e^-z for z >= 0, e^z
// below), 1 / (1 + t) or t / (1 + t). Written without a branch: the numerator is chosen, then one division. The
// same bits as the two-branch form `z >= 0 ? 1 / (1 + exp(-z)) : exp(z) / (1 + exp(z))` (-|z| is -z or z exactly,
// exp is a function of its argument, and each form ends in one correctly rounded division of the same operands);
// in a CUDA warp whose lanes hold z of both signs the branch ran both paths, each with its own exp and division
// (host test: SigmoidBranchFreeKeepsTheTwoBranchBits; on an H200 the 760m step's loss kept its bits).
template <class T>
TTT_HOST_DEVICE T sigmoid(T z) {
  const T t = exp(-std::fabs(z));
  return (z >= T(0) ? T(1) : t) / (T(1) + t);
}
// silu, silu' and silu'' at z from s = sigmoid(z) (callers that need several of them compute s once).
template <class T>
TTT_HOST_DEVICE T silu_from(T z, T s) { return z * s; }
template <class T>
TTT_HOST_DEVICE T dsilu_from(T z, T s) { return s * (T(1) + z * (T(1) - s)); }
template <class T>
TTT_HOST_DEVICE T d2silu_from(T z, T s) { return s * (T(1) - s) * (T(2) + z * (T(1) - T(2) * s)); }
template <class T>
TTT_HOST_DEVICE T silu(T z) { return silu_from(z, sigmoid(z)); }
template <class T>
TTT_HOST_DEVICE T dsilu(T z) { return dsilu_from(z, sigmoid(z)); }
template <class T>
TTT_HOST_DEVICE T d2silu(T z) { return d2silu_from(z, sigmoid(z)); }
// softplus(z) = log(1 + e^z); z itself above 20, where the two agree to rounding.
template <class T>
TTT_HOST_DEVICE T softplus(T z) { return z > T(20) ? z : log1p(exp(z)); }
// softplus⁻¹(y) = log(e^y - 1), y > 0: the shift that makes softplus(0 + shift) = y.
TTT_HOST_DEVICE double softplus_inverse(double y) { return ::log(::expm1(y)); }

// The activation of a gate projection and its derivative.
enum class Activation { Identity, Silu, Sigmoid, Softplus };
template <class T>
TTT_HOST_DEVICE T activate(Activation a, T z) {
  switch (a) {
    case Activation::Identity: return z;
    case Activation::Silu: return silu(z);
    case Activation::Sigmoid: return sigmoid(z);
    case Activation::Softplus: return softplus(z);
  }
  return z;
}
template <class T>
TTT_HOST_DEVICE T activation_grad(Activation a, T z) {
  switch (a) {
    case Activation::Identity: return T(1);
    case Activation::Silu: return dsilu(z);
    case Activation::Sigmoid: {
      const T s = sigmoid(z);
      return s * (T(1) - s);
    }
    case Activation::Softplus: return sigmoid(z);
  }
  return T(1);
}

// How a rate or gate is made from its projection z = x W + b: value = scale · act(z + shift). Every device
// applies it in this order: shift, activation, then the scale as its own multiplication (and, backward, the
// upstream gradient times the scale, then times act'(z + shift)).
struct GateRule {
  Activation act = Activation::Sigmoid;
  double shift = 0;
  double scale = 1;
};
// LaCT rates (§5.2): softplus(z + softplus⁻¹(lr_init)), lr_init at z = 0.
inline GateRule lact_rate_rule(double lr_init) { return {Activation::Softplus, softplus_inverse(lr_init), 1.0}; }
// Titans rates (§6.3) [choice]: θ = base · sigmoid(z).
inline GateRule titans_rate_rule(double base) { return {Activation::Sigmoid, 0.0, base}; }
// Momentum η and decay α gates: sigmoid(z).
inline GateRule sigmoid_gate_rule() { return {Activation::Sigmoid, 0.0, 1.0}; }

}  // namespace ttt::math
