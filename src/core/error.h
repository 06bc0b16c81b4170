// Errors: one exception type whose message names the offending shapes and dtypes.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace ttt {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
[[noreturn]] inline void throw_error(const char* file, int line, const std::string& msg) {
  (void)file; (void)line;
  throw Error(msg);
}
}  // namespace detail

}  // namespace ttt

// TTT_CHECK(cond, "message " << value): throws ttt::Error with the streamed message.
#define TTT_CHECK(cond, msg)                                   \
  do {                                                         \
    if (!(cond)) {                                             \
      std::ostringstream ttt_check_os_;                        \
      ttt_check_os_ << msg;                                    \
      ::ttt::detail::throw_error(__FILE__, __LINE__, ttt_check_os_.str()); \
    }                                                          \
  } while (0)

#define TTT_FAIL(msg) TTT_CHECK(false, msg)
