// Running the `ttt` binary from tests: captured output and exit status, and the check that bad input ends in a
// clear message and a non-zero exit (never a signal, a hang or exit 0).
#pragma once
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

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

// A TCP port for this test process (the ranks of one job share it; offsets tell a process's jobs apart).
inline int test_port(int offset) { return 20000 + int((int64_t(::getpid()) * 8 + offset) % 40000); }

// `ttt ARGS` on `np` ranks started torchrun-style in directory `dir`: ranks 1..np-1 in the background and rank 0 in
// the foreground, with the torchrun variables; the output is rank 0's, then each other rank's log and exit status
// ("rank R exit N"). The status is rank 0's.
inline RunResult run_torchrun(const std::string& dir, int np, int port, const std::string& args,
                              const std::string& env = "", int timeout_s = 120) {
  std::string cmd = "cd '" + dir + "' && export OMP_NUM_THREADS=1 WORLD_SIZE=" + std::to_string(np) +
                    " MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) + " " + env + "; ";
  const std::string ttt = "timeout -k 2 " + std::to_string(timeout_s) + " " + std::string(TTT_CLI_PATH) + " " + args;
  for (int r = 1; r < np; ++r)
    cmd += "RANK=" + std::to_string(r) + " LOCAL_RANK=" + std::to_string(r) + " " + ttt + " > rank" + std::to_string(r) +
           ".log 2>&1 & p" + std::to_string(r) + "=$!; ";
  cmd += "RANK=0 LOCAL_RANK=0 " + ttt + " 2>&1; rc=$?; ";
  for (int r = 1; r < np; ++r)
    cmd += "wait $p" + std::to_string(r) + "; echo \"rank " + std::to_string(r) + " exit $?\"; cat rank" +
           std::to_string(r) + ".log; ";
  cmd += "exit $rc";
  return run_shell(cmd + " 2>&1");
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
