// `ttt op tnt` against the independent PyTorch reference (tests/reference/check_op_tnt.py,
// bench/tnt_torch.py): outputs and every gradient in float64 (and float32) across local chunk sizes,
// shards on and off chunk boundaries, Q-K projection on/off, no global memory; plus error behaviour.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cstdlib>
#include <string>

namespace {

int exit_status(int raw) {
  if (raw == -1) return -1;
  if (WIFEXITED(raw)) return WEXITSTATUS(raw);
  return 128 + (WIFSIGNALED(raw) ? WTERMSIG(raw) : 0);
}

}  // namespace

TEST(OpTntReference, MatchesIndependentTorchFloat64) {
  const std::string python = "/usr/bin/python3";
  const int probe = exit_status(std::system((python + " -c 'import torch' >/dev/null 2>&1").c_str()));
  if (probe != 0) {
    GTEST_SKIP() << python << " cannot `import torch` (exit " << probe
                 << "): the PyTorch reference is unavailable, install python3-torch to run this check";
  }
  const std::string cmd = python + " '" + TTT_SOURCE_DIR + "/tests/reference/check_op_tnt.py' --ttt '" +
                          TTT_CLI_PATH + "'";
  const int rc = exit_status(std::system(cmd.c_str()));
  EXPECT_EQ(rc, 0) << "reference check failed (its output above names the configs and tensors): " << cmd;
}
