// Running the `ttt` binary from tests: captured output and exit status, and the check that bad input ends in a
// clear message and a non-zero exit (never a signal, a hang or exit 0).
#pragma once
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <string>

namespace ttt::test {

struct RunResult {
  int status = 0;      // raw wait status
  std::string output;  // stdout + stderr
};

// Runs a shell command line, capturing its output (stdout; redirect stderr into it in `cmd`).
inline RunResult run_shell(const std::string& cmd) {
  RunResult r;
  FILE* f = popen(cmd.c_str(), "r");
  if (!f) {
    r.status = -1;
    return r;
  }
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) r.output.append(buf, n);
  r.status = pclose(f);
  return r;
}

// Runs `ttt <args>` (under a 60 s timeout) and captures its output.
inline RunResult run_cli(const std::string& args) {
  return run_shell("timeout 60 " + std::string(TTT_CLI_PATH) + " " + args + " 2>&1");
}

// Non-zero exit with a message containing `word`, no signal, no timeout.
inline void expect_clean_failure(const std::string& args, const std::string& word) {
  SCOPED_TRACE("ttt " + args);
  RunResult r = run_cli(args);
  ASSERT_NE(r.status, -1) << "could not run the binary";
  ASSERT_FALSE(WIFSIGNALED(r.status)) << "killed by signal " << WTERMSIG(r.status) << "\n" << r.output;
  ASSERT_TRUE(WIFEXITED(r.status));
  const int code = WEXITSTATUS(r.status);
  EXPECT_NE(code, 0) << r.output;
  EXPECT_NE(code, 124) << "timed out (hang)\n" << r.output;
  EXPECT_LT(code, 124) << "crashed (exit " << code << ", a signal through the shell)\n" << r.output;
  EXPECT_NE(r.output.find(word), std::string::npos) << "message lacks '" << word << "':\n" << r.output;
  EXPECT_EQ(r.output.find("terminate called"), std::string::npos) << r.output;
}

}  // namespace ttt::test
