// Peak resident memory of `ttt prepare`, from the "memory: X MB peak resident" line it prints (its own
// /proc high-water mark: the wait4/getrusage peak of a child also counts the test process's memory it was
// forked or spawned from, which in a CUDA-enabled build is ~200 MB and hid what the child itself used).
#pragma once
#include <cstdio>
#include <string>

#include <gtest/gtest.h>

#include "cli_test_util.h"

namespace ttt::test_util {

// Runs `ttt <args>` (which must succeed) and returns the peak resident MB it reported, or -1 (a failure recorded).
inline double prepare_peak_mb(const std::string& args) {
  const test::RunResult r = test::run_cli(args);
  if (r.status != 0) {
    ADD_FAILURE() << "ttt " << args << " failed:\n" << r.output;
    return -1;
  }
  const size_t at = r.output.find("memory:");
  double mb = -1;
  if (at == std::string::npos || std::sscanf(r.output.c_str() + at, "memory: %lf MB peak resident", &mb) != 1)
    ADD_FAILURE() << "no 'memory: ... MB peak resident' line in:\n" << r.output;
  return mb;
}

}  // namespace ttt::test_util
