// Overflow-checked integer arithmetic for sizes computed from untrusted input (file headers, shapes,
// configs): a product or sum that does not fit its type is an error, never a wrapped value or signed
// overflow (undefined behaviour). The only place such arithmetic is written.
#pragma once
#include <optional>
#include <string_view>
#include <type_traits>

#include "core/error.h"

namespace ttt {

// a * b (a + b) when the exact result fits T; nullopt otherwise. For callers that build their own message.
template <class T>
std::optional<T> mul_if_fits(T a, T b) {
  static_assert(std::is_integral_v<T>);
  T r;
  if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
  return r;
}
template <class T>
std::optional<T> add_if_fits(T a, T b) {
  static_assert(std::is_integral_v<T>);
  T r;
  if (__builtin_add_overflow(a, b, &r)) return std::nullopt;
  return r;
}

// a * b (a + b); throws ttt::Error "<what>: a * b overflows a 64-bit integer" when it does not fit T.
template <class T>
T checked_mul(T a, T b, std::string_view what) {
  const std::optional<T> r = mul_if_fits(a, b);
  TTT_CHECK(r, what << ": " << a << " * " << b << " overflows a " << 8 * sizeof(T) << "-bit integer");
  return *r;
}
template <class T>
T checked_add(T a, T b, std::string_view what) {
  const std::optional<T> r = add_if_fits(a, b);
  TTT_CHECK(r, what << ": " << a << " + " << b << " overflows a " << 8 * sizeof(T) << "-bit integer");
  return *r;
}

}  // namespace ttt
