// expect_error(fn, needles): fn() must throw ttt::Error whose message contains every needle.
#pragma once
#include <gtest/gtest.h>

#include <initializer_list>
#include <string>
#include <string_view>

#include "core/error.h"

namespace ttt::test {

template <class F>
void expect_error(F&& fn, std::initializer_list<std::string_view> needles) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one mentioning '" << *needles.begin() << "'";
  } catch (const Error& e) {
    for (std::string_view n : needles)
      EXPECT_NE(std::string_view(e.what()).find(n), std::string_view::npos) << "lacks '" << n << "': " << e.what();
  }
}
template <class F>
void expect_error(F&& fn, std::string_view needle) {
  expect_error(std::forward<F>(fn), {needle});
}

}  // namespace ttt::test
