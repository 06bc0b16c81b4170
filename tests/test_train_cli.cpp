// `ttt train` as a process: an interrupt (SIGINT/SIGTERM) finishes the step, saves a checkpoint and exits
// non-zero saying how to resume, a second one exits at once; a run resumes from any working directory, and
// with --data naming the same dataset.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "model/config.h"
#include "train/checkpoint.h"
#include "train_test_util.h"

using namespace ttt;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// A running `ttt` process whose stdout and stderr go to one pipe.
struct CliProcess {
  pid_t pid = -1;
  int out_fd = -1;
  std::string output;
};

// Starts `ttt args...` in working directory `cwd` (no shell: arguments are passed as they are).
CliProcess start_cli(const std::vector<std::string>& args, const std::string& cwd) {
  int fds[2];
  if (::pipe(fds) != 0) return {};
  CliProcess p;
  p.pid = ::fork();
  if (p.pid == 0) {
    ::dup2(fds[1], 1);
    ::dup2(fds[1], 2);
    ::close(fds[0]);
    ::close(fds[1]);
    if (::chdir(cwd.c_str()) != 0) ::_exit(127);
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(TTT_CLI_PATH));
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(TTT_CLI_PATH, argv.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  p.out_fd = fds[0];
  return p;
}

// Appends what the process has written within `timeout_s`; false once its output is closed.
bool read_some(CliProcess& p, double timeout_s) {
  pollfd pfd{p.out_fd, POLLIN, 0};
  if (::poll(&pfd, 1, int(timeout_s * 1000)) <= 0) return true;
  char buf[4096];
  const ssize_t n = ::read(p.out_fd, buf, sizeof buf);
  if (n <= 0) return false;
  p.output.append(buf, size_t(n));
  return true;
}

// Reads until `text` appears in the output (true), or the output closes or `timeout_s` passes (false).
bool read_until(CliProcess& p, const std::string& text, double timeout_s) {
  const auto t0 = Clock::now();
  while (p.output.find(text) == std::string::npos) {
    const double left = timeout_s - std::chrono::duration<double>(Clock::now() - t0).count();
    if (left <= 0 || !read_some(p, std::min(left, 1.0))) return p.output.find(text) != std::string::npos;
  }
  return true;
}

// Reads the rest of the output and reaps the process (killed after `timeout_s`); returns the wait status.
int finish(CliProcess& p, double timeout_s) {
  const auto t0 = Clock::now();
  auto left = [&] { return timeout_s - std::chrono::duration<double>(Clock::now() - t0).count(); };
  while (left() > 0 && read_some(p, 0.5)) {
  }
  ::close(p.out_fd);
  int status = 0;
  while (::waitpid(p.pid, &status, WNOHANG) == 0) {
    if (left() <= 0) {
      ::kill(p.pid, SIGKILL);
      ::waitpid(p.pid, &status, 0);
      p.output += "\n[killed by the test after " + std::to_string(timeout_s) + " s]";
      break;
    }
    ::usleep(10000);
  }
  return status;
}

int exit_code(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status); }

// A scratch directory with the synthetic corpus in data/ and a small model config in small.json.
struct Workspace {
  fs::path dir;
  Workspace(const std::string& tag) {
    dir = test_util::temp_dir("train_cli_" + tag);
    const std::string corpus = test_util::make_corpus("train_cli_" + tag + "_corpus");
    fs::rename(corpus, dir / "data");
    model::save_config((dir / "small.json").string(), test_util::small_lact_config());
  }
  ~Workspace() { fs::remove_all(dir); }
};

// Sends `sig` once the run has logged step 3, and checks the exit: code `expected_code`, the resume hint, and
// a checkpoint of the step it names.
void interrupt_run(int sig, int expected_code) {
  Workspace w("sig" + std::to_string(sig));
  const std::string run = (w.dir / "run").string();
  CliProcess p = start_cli({"train", "--config", "small.json", "--data", "data", "--out", run, "--steps", "100000",
                            "--ckpt-every", "0", "--eval-every", "0", "--eval-batches", "1", "--batch", "2",
                            "--log-every", "1", "--sample-tokens", "0"},
                           w.dir.string());
  ASSERT_GT(p.pid, 0);
  const bool stepping = read_until(p, "step 3/", 60);
  ::kill(p.pid, sig);
  const int status = finish(p, 60);
  ASSERT_TRUE(stepping) << p.output;
  ASSERT_EQ(exit_code(status), expected_code) << p.output;
  const std::string marker = "interrupted at step ";
  const size_t at = p.output.find(marker);
  ASSERT_NE(at, std::string::npos) << p.output;
  const int64_t step = std::stoll(p.output.substr(at + marker.size()));
  EXPECT_GE(step, 3);
  EXPECT_NE(p.output.find("continue with: ttt train --resume " + run), std::string::npos) << p.output;
  const train::LoadedCheckpoint ck = train::load_checkpoint(run, /*require_state=*/true);
  EXPECT_EQ(ck.state.step, step);

  // The run continues from there.
  CliProcess r = start_cli({"train", "--resume", run, "--steps", std::to_string(step + 2), "--sample-tokens", "0"},
                           w.dir.string());
  const int rs = finish(r, 60);
  ASSERT_EQ(exit_code(rs), 0) << r.output;
  EXPECT_EQ(train::load_checkpoint(run, true).state.step, step + 2);
}

}  // namespace

TEST(TrainCli, SigintSavesACheckpointAndExitsNonZero) { interrupt_run(SIGINT, 130); }

TEST(TrainCli, SigtermSavesACheckpointAndExitsNonZero) { interrupt_run(SIGTERM, 143); }

TEST(TrainCli, SecondSignalExitsAtOnce) {
  Workspace w("sig2");
  const std::string run = (w.dir / "run").string();
  // Steps of a few hundred milliseconds, so the second signal arrives while the step is still running.
  CliProcess p = start_cli({"train", "--preset", "tiny", "--seq-len", "256", "--batch", "32", "--data", "data", "--out",
                            run, "--steps", "1000", "--ckpt-every", "0", "--eval-every", "0", "--eval-batches", "1",
                            "--log-every", "1", "--sample-tokens", "0"},
                           w.dir.string());
  ASSERT_GT(p.pid, 0);
  const bool stepping = read_until(p, "step 1/", 120);
  ::kill(p.pid, SIGINT);
  const bool acknowledged = read_until(p, "signal again to exit at once", 30);
  const auto t_second = Clock::now();
  ::kill(p.pid, SIGINT);
  const int status = finish(p, 60);
  const double exit_s = std::chrono::duration<double>(Clock::now() - t_second).count();
  ASSERT_TRUE(stepping) << p.output;
  ASSERT_TRUE(acknowledged) << p.output;
  EXPECT_EQ(exit_code(status), 130) << p.output;
  EXPECT_NE(p.output.find("exiting at once"), std::string::npos) << p.output;
  EXPECT_EQ(p.output.find("interrupted at step"), std::string::npos) << "the step finished first:\n" << p.output;
  EXPECT_LT(exit_s, 5.0);
}

TEST(TrainCli, ResumeFromAnotherWorkingDirectory) {
  Workspace w("cwd");
  // Started with relative paths...
  CliProcess p = start_cli({"train", "--config", "small.json", "--data", "data", "--out", "run", "--steps", "2",
                            "--batch", "2", "--eval-batches", "1", "--sample-tokens", "0"},
                           w.dir.string());
  const int s1 = finish(p, 60);
  ASSERT_EQ(exit_code(s1), 0) << p.output;
  // ...continued from elsewhere.
  fs::create_directories(w.dir / "elsewhere");
  const std::string run = (w.dir / "run").string();
  CliProcess r = start_cli({"train", "--resume", run, "--steps", "3", "--sample-tokens", "0"}, (w.dir / "elsewhere").string());
  const int s2 = finish(r, 60);
  ASSERT_EQ(exit_code(s2), 0) << r.output;
  EXPECT_EQ(train::load_checkpoint(run, true).state.step, 3);
  // --data naming the same dataset (by another path) is accepted on resume.
  CliProcess d = start_cli({"train", "--resume", "../run", "--steps", "4", "--data", "../data/.", "--sample-tokens", "0"},
                           (w.dir / "elsewhere").string());
  const int s3 = finish(d, 60);
  ASSERT_EQ(exit_code(s3), 0) << d.output;
  EXPECT_EQ(train::load_checkpoint(run, true).state.step, 4);
}

// A real full disk: a tmpfs with room for one checkpoint and a half (mounting needs root; the test is skipped,
// saying so, where it cannot mount). The second save does not fit: a clear error, the first checkpoint stays
// and resumes once there is room, and the failed save leaves no temp files.
TEST(TrainCli, FullDiskKeepsThePreviousCheckpoint) {
  Workspace w("fulldisk");
  const std::vector<std::string> flags = {"--preset", "tiny", "--seq-len", "16", "--batch", "2", "--data",
                                          (w.dir / "data").string(), "--eval-batches", "1", "--ckpt-every", "1",
                                          "--sample-tokens", "0"};
  auto train_args = [&](std::vector<std::string> args) {
    args.insert(args.begin(), "train");
    args.insert(args.end(), flags.begin(), flags.end());
    return args;
  };
  // The size of one checkpoint, in tmpfs pages.
  CliProcess ref = start_cli(train_args({"--out", "ref", "--steps", "1"}), w.dir.string());
  ASSERT_EQ(exit_code(finish(ref, 120)), 0) << ref.output;
  uintmax_t checkpoint_bytes = 0;
  for (const auto& e : fs::directory_iterator(w.dir / "ref/checkpoint")) checkpoint_bytes += (e.file_size() + 4095) / 4096 * 4096;

  const fs::path mnt = w.dir / "mnt";
  fs::create_directories(mnt);
  auto mount = [&](const std::string& options) {
    return std::system(("mount -t tmpfs -o " + options + " tmpfs '" + mnt.string() + "' 2>/dev/null").c_str()) == 0;
  };
  if (!mount("size=" + std::to_string(checkpoint_bytes * 3 / 2 + 65536)))
    GTEST_SKIP() << "cannot mount a tmpfs at " << mnt << " (needs root); the injected-ENOSPC test covers this";
  struct Unmount {
    fs::path at;
    ~Unmount() { [[maybe_unused]] const int rc = std::system(("umount '" + at.string() + "'").c_str()); }
  } unmount{mnt};

  const std::string run = (mnt / "run").string();
  CliProcess full = start_cli(train_args({"--out", run, "--steps", "3"}), w.dir.string());
  const int status = finish(full, 120);
  EXPECT_EQ(exit_code(status), 1) << full.output;
  EXPECT_NE(full.output.find("No space left on device"), std::string::npos) << full.output;
  EXPECT_EQ(train::load_checkpoint(run, true).state.step, 1);
  for (const auto& e : fs::recursive_directory_iterator(run))
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();

  ASSERT_TRUE(mount("remount,size=" + std::to_string(checkpoint_bytes * 3 + 65536)));
  CliProcess resumed = start_cli({"train", "--resume", run, "--steps", "3", "--sample-tokens", "0"}, w.dir.string());
  ASSERT_EQ(exit_code(finish(resumed, 120)), 0) << resumed.output;
  EXPECT_EQ(train::load_checkpoint(run, true).state.step, 3);
}
