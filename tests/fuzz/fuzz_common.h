// Shared by the libFuzzer targets of tests/fuzz: what counts as an expected outcome of a parser.
//
// A parser may refuse its input with ttt::Error (and, in the JSON targets, the JSON text may fail to parse);
// anything else — a crash, a sanitizer report, another exception escaping, an allocation above
// -malloc_limit_mb, a round trip that changes the data — is a bug in the library.
#pragma once
#include <cstdio>
#include <cstdlib>

#include "core/error.h"

namespace ttt::fuzz {

// Runs f; a ttt::Error is an expected refusal. Returns whether f succeeded. Other exceptions propagate and
// libFuzzer reports them (uncaught exception -> abort).
template <class F>
bool accepts(F&& f) {
  try {
    f();
    return true;
  } catch (const Error&) {
    return false;
  }
}

// A property of an accepted input that does not hold: a bug, reported as a crash.
inline void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz property violated: %s\n", what);
    std::abort();
  }
}

}  // namespace ttt::fuzz
