// Overflow-checked integer arithmetic for sizes computed from untrusted input (file headers, shapes,
// configs): a product or sum that does not fit its type is an error, never a wrapped value or signed
// overflow (undefined behaviour). The only place such arithmetic is written.
#pragma once
#include <optional>
#include <string_view>
#include <type_traits>

#include "core/error.h"

namespace ttt {

namespace detail {
// The exact result of `op` (a __builtin_*_overflow wrapper) when it fits T; nullopt otherwise.
template <class T, class Op>
std::optional<T> if_fits(T a, T b, Op op) {
  static_assert(std::is_integral_v<T>);
  T r;
  if (op(a, b, &r)) return std::nullopt;
  return r;
}
// *r, or a ttt::Error "<what>: a <sign> b overflows a 64-bit integer".
template <class T>
T value_or_fail(std::optional<T> r, T a, const char* sign, T b, std::string_view what) {
  TTT_CHECK(r, what << ": " << a << sign << b << " overflows a " << 8 * sizeof(T) << "-bit integer");
  return *r;
}
}  // namespace detail

// a * b (a + b) when the exact result fits T; nullopt otherwise. For callers that build their own message.
template <class T>
std::optional<T> mul_if_fits(T a, T b) {
  return detail::if_fits(a, b, [](T x, T y, T* r) { return __builtin_mul_overflow(x, y, r); });
}
template <class T>
std::optional<T> add_if_fits(T a, T b) {
  return detail::if_fits(a, b, [](T x, T y, T* r) { return __builtin_add_overflow(x, y, r); });
}

// a * b (a + b); throws ttt::Error "<what>: a * b overflows a 64-bit integer" when it does not fit T.
template <class T>
T checked_mul(T a, T b, std::string_view what) {
  return detail::value_or_fail(mul_if_fits(a, b), a, " * ", b, what);
}
template <class T>
T checked_add(T a, T b, std::string_view what) {
  return detail::value_or_fail(add_if_fits(a, b), a, " + ", b, what);
}

}  // namespace ttt
