// Peak resident memory of a child process: `ttt` run with the given arguments (stdout and stderr to /dev/null),
// waited for with wait4. Bounded-memory tests compare two runs of the same binary — a tiny input and a large one —
// so that the program's fixed footprint cancels: a CUDA-enabled build maps its GPU libraries (~200 MB resident
// at start-up) whatever the input.
#pragma once
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace ttt::test_util {

// Peak RSS in KiB (ru_maxrss), or -1 when the child did not exit with status 0 (a test failure is recorded).
inline long child_peak_rss_kib(const std::vector<std::string>& args) {
  const pid_t pid = fork();
  if (pid == 0) {
    std::vector<char*> argv{const_cast<char*>(TTT_CLI_PATH)};
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    if (!std::freopen("/dev/null", "w", stdout) || !std::freopen("/dev/null", "w", stderr)) _exit(126);
    execv(TTT_CLI_PATH, argv.data());
    _exit(127);
  }
  if (pid < 0) {
    ADD_FAILURE() << "fork failed";
    return -1;
  }
  int status = 0;
  struct rusage usage {};
  if (wait4(pid, &status, 0, &usage) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    ADD_FAILURE() << "ttt " << (args.empty() ? "" : args[0]) << " failed (status " << status << ")";
    return -1;
  }
  return usage.ru_maxrss;
}

}  // namespace ttt::test_util
