// TNT context parallelism (model/context_parallel.h): ranks as threads of this process over the TCP communicator,
// in float64, against one rank (the loss, every per-token loss and every gradient to 1e-10); then `ttt train
// --context-parallel` under mpirun against one process, and the setups it refuses.
#include <gtest/gtest.h>

#include <cstdlib>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "backend/registry.h"
#include "cli_test_util.h"
#include "core/rng.h"
#include "dist/communicator.h"
#include "dist/data_parallel.h"
#include "expect_error.h"
#include "model/context_parallel.h"
#include "model/model.h"
#include "train/trainer.h"
#include "train_test_util.h"

using namespace ttt;
namespace fs = std::filesystem;

namespace {

// Two layers (the second layer's halo depends on the first's), window 8 (a halo of 7 rows), global chunk 16 and
// shard 16; 64 tokens: two spans of 32 (two global chunks each: the global chain crosses the span boundary).
model::ModelConfig cp_config() {
  model::ModelConfig cfg = test_util::small_tnt_config();
  cfg.n_layers = 2;
  cfg.seq_len = 64;
  return cfg;
}

// Runs `body(comm)` on `ranks` threads, each with its TCP communicator; returns each rank's error ("" when none).
std::vector<std::string> on_ranks(int ranks, int port_offset, const std::function<void(dist::Communicator&)>& body) {
  const int port = test::test_port(port_offset);
  std::vector<std::string> errors(static_cast<size_t>(ranks));
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r)
    threads.emplace_back([&, r] {
      try {
        auto c = dist::make_tcp_communicator(r, ranks, r, "127.0.0.1", port);
        body(*c);
      } catch (const std::exception& e) {
        errors[size_t(r)] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  return errors;
}

// Communicator::split over the TCP backend (the emulated group): 4 ranks in the groups {0, 2} and {1, 3}, every
// collective within each group.
TEST(ContextParallel, SplitGroupsRunTheirOwnCollectives) {
  const std::vector<std::string> errors = on_ranks(4, 4, [&](dist::Communicator& c) {
    const std::unique_ptr<dist::Communicator> g = c.split(c.rank() % 2);
    EXPECT_EQ(g->size(), 2);
    EXPECT_STREQ(g->backend(), "tcp group");
    EXPECT_EQ(g->rank(), c.rank() / 2);
    const double mine[2] = {double(c.rank()), double(10 * c.rank())};
    std::vector<double> all(4);
    g->all_gather(mine, all.data(), {2, 2});
    const double first = c.rank() % 2;  // the group's world ranks: first, first + 2
    EXPECT_EQ(all, (std::vector<double>{first, 10 * first, first + 2, 10 * (first + 2)}));
    // Reduce-scatter (all-to-all) with uneven counts: member r gets segment r of the sum.
    const std::vector<float> in = {float(c.rank()), 1.0f, 2.0f};
    std::vector<float> out(g->rank() == 0 ? 1 : 2);
    g->reduce_scatter_sum(in.data(), out.data(), {1, 2});
    if (g->rank() == 0) EXPECT_EQ(out, (std::vector<float>{float(2 * first + 2)}));
    else EXPECT_EQ(out, (std::vector<float>{2.0f, 4.0f}));
    int64_t value = g->rank() == 1 ? 100 + c.rank() : 0;
    g->broadcast(&value, sizeof value, 1);
    EXPECT_EQ(value, 100 + int64_t(first) + 2);
    EXPECT_EQ(g->max_over_ranks(c.rank()), int64_t(first) + 2);
    g->barrier();
  });
  for (int r = 0; r < 4; ++r) EXPECT_EQ(errors[size_t(r)], "") << "rank " << r;
}

void expect_near_all(const ag::Mat<double>& got, const ag::Mat<double>& want, const std::string& what) {
  ASSERT_TRUE(got.same_shape(want)) << what;
  double worst = 0;
  for (size_t i = 0; i < want.data.size(); ++i)
    worst = std::max(worst, std::abs(got.data[i] - want.data[i]) / std::max(1.0, std::abs(want.data[i])));
  EXPECT_LE(worst, 1e-10) << what;
}

// `ranks` ranks in groups of `cp` (data parallel over ranks / cp groups) compute a step of 4 sequences; their
// gradients and loss terms summed equal one rank's.
void expect_context_parallel_equals_one_rank(int ranks, int cp, int port_offset) {
  const model::ModelConfig cfg = cp_config();
  model::Params<double> p = model::make_params<double>(cfg);
  model::init_params(cfg, p, 5);
  const std::vector<model::Batch> micro = test_util::random_micro_batches(cfg, 2, 2, 9);
  std::vector<ag::Mat<double>> whole;
  const double loss = train::accumulate_gradients(cfg, p, micro, whole);

  std::vector<std::vector<ag::Mat<double>>> parts(static_cast<size_t>(ranks));
  std::vector<std::vector<double>> terms(static_cast<size_t>(ranks));
  const std::vector<std::string> errors = on_ranks(ranks, port_offset, [&](dist::Communicator& c) {
    const std::unique_ptr<dist::Communicator> group = c.split(c.rank() / cp);
    const model::ContextSpan span = model::context_span(*group, cfg.seq_len);
    const dist::SequenceRange mine = dist::rank_sequences(4, c.rank() / cp, ranks / cp);
    terms[size_t(c.rank())] =
        train::accumulate_gradient_range(cfg, p, micro, mine.first, mine.last, parts[size_t(c.rank())], &span);
  });
  for (int r = 0; r < ranks; ++r) ASSERT_EQ(errors[size_t(r)], "") << "rank " << r;
  double cp_loss = 0;
  for (const auto& t : terms) cp_loss += train::sum_loss_terms(t);
  EXPECT_NEAR(cp_loss, loss, 1e-10 * loss);
  for (size_t i = 0; i < whole.size(); ++i) {
    ag::Mat<double> sum = parts[0][i];
    for (int r = 1; r < ranks; ++r)
      for (size_t e = 0; e < sum.data.size(); ++e) sum.data[e] += parts[size_t(r)][i].data[e];
    expect_near_all(sum, whole[i], p.names[i]);
  }
}

TEST(ContextParallel, TwoRanksEqualOneRankInFloat64) { expect_context_parallel_equals_one_rank(2, 2, 1); }

TEST(ContextParallel, DataTimesContextParallelTwoByTwoEqualsOneRank) { expect_context_parallel_equals_one_rank(4, 2, 2); }

// Every output of the span: each token's loss on its rank is the one-rank forward's at the same position.
TEST(ContextParallel, PerTokenLossesOfEverySpanEqualOneRank) {
  const model::ModelConfig cfg = cp_config();
  model::Params<double> p = model::make_params<double>(cfg);
  model::init_params(cfg, p, 3);
  const model::Batch batch = test_util::random_micro_batches(cfg, 2, 2, 4)[1];
  const auto ref = model::forward<double>(cfg, p, batch, nullptr, true, false);
  std::vector<std::vector<double>> token_loss(2);
  const std::vector<std::string> errors = on_ranks(2, 3, [&](dist::Communicator& c) {
    const model::ContextSpan span = model::context_span(c, cfg.seq_len);
    model::Batch mine;
    mine.sequences = batch.sequences;
    mine.len = span.span;
    for (int64_t s = 0; s < batch.sequences; ++s) {
      const int64_t at = s * cfg.seq_len + span.offset();
      mine.inputs.insert(mine.inputs.end(), batch.inputs.begin() + at, batch.inputs.begin() + at + span.span);
      mine.targets.insert(mine.targets.end(), batch.targets.begin() + at, batch.targets.begin() + at + span.span);
    }
    token_loss[size_t(c.rank())] = model::forward<double>(cfg, p, mine, nullptr, true, false, &span).token_loss;
  });
  for (int r = 0; r < 2; ++r) ASSERT_EQ(errors[size_t(r)], "") << "rank " << r;
  const int64_t span = cfg.seq_len / 2;
  for (int64_t s = 0; s < batch.sequences; ++s)
    for (int r = 0; r < 2; ++r)
      for (int64_t i = 0; i < span; ++i)
        EXPECT_NEAR(token_loss[size_t(r)][size_t(s * span + i)], ref.token_loss[size_t(s * cfg.seq_len + r * span + i)],
                    1e-10)
            << "sequence " << s << ", rank " << r << ", token " << i;
}

TEST(ContextParallel, BadSetupsAreRefusedNamingTheFields) {
  const model::ModelConfig tnt = cp_config();
  model::check_context_parallel(tnt, 2, 2);
  model::check_context_parallel(tnt, 2, 4);
  model::check_context_parallel(test_util::small_lact_config(), 1, 3);  // 1: nothing to split
  test::expect_error([&] { model::check_context_parallel(test_util::small_lact_config(), 2, 2); },
                     "needs a TNT model (arch tnt");
  test::expect_error([&] { model::check_context_parallel(tnt, 2, 3); }, "does not divide the job's 3 rank(s)");
  test::expect_error([&] { model::check_context_parallel(tnt, 0, 2); }, "--context-parallel must be at least 1");
  // 64 tokens over 4 ranks: spans of 16 hold one shard and one global chunk; over 8, spans of 8 hold neither.
  model::check_context_parallel(tnt, 4, 4);
  test::expect_error([&] { model::check_context_parallel(tnt, 8, 8); }, "seq_len must be a multiple of 128");
  model::ModelConfig odd = tnt;
  odd.global_chunk = 32;  // spans of 16 tokens would cut a global chunk in two
  test::expect_error([&] { model::check_context_parallel(odd, 4, 4); }, "global_chunk 32");
  model::ModelConfig wide = tnt;
  wide.window = 40;  // a halo of 39 rows reaches past a span of 32
  test::expect_error([&] { model::check_context_parallel(wide, 2, 2); }, "window - 1 must be at most the span");
}

// ---- ttt train --context-parallel ----

struct CpWorkspace {
  fs::path dir;
  explicit CpWorkspace(const std::string& tag) {
    dir = test_util::temp_dir("cp_" + tag);
    fs::rename(test_util::make_corpus("cp_" + tag + "_corpus"), dir / "data");
    model::ModelConfig cfg = cp_config();
    cfg.n_layers = 1;
    model::save_config((dir / "tnt.json").string(), cfg);
    model::save_config((dir / "lact.json").string(), test_util::small_lact_config());
  }
  ~CpWorkspace() { fs::remove_all(dir); }
};

test::RunResult run_in(const CpWorkspace& w, int np, const std::string& args, const std::string& env = "") {
  std::string cmd = "cd '" + w.dir.string() + "' && env OMP_NUM_THREADS=1 " + env + " timeout -k 2 120 ";
  if (np > 0) cmd += "mpirun -np " + std::to_string(np) + " --allow-run-as-root --oversubscribe --bind-to none ";
  cmd += std::string(TTT_CLI_PATH) + " " + args + " 2>&1";
  return test::run_shell(cmd);
}

int exit_code(const test::RunResult& r) { return WIFEXITED(r.status) ? WEXITSTATUS(r.status) : -1; }

std::string train_args(const std::string& config, const std::string& out, const std::string& extra, int steps = 3) {
  return "train --config " + config + " --data data --out " + out + " --steps " + std::to_string(steps) +
         " --batch 2 --accum 2 --seq-len 64 "
         "--clip 0.05 --eval-every 0 --eval-batches 2 --ckpt-every 0 --log-every 1 --sample-tokens 0 " + extra;
}

// The losses and gradient norms of every step agree with the one-process run's (float32: the spans' sums round in
// another order).
void expect_close_runs(const fs::path& a, const fs::path& b) {
  const auto ma = test_util::read_metrics(a.string()), mb = test_util::read_metrics(b.string());
  ASSERT_EQ(ma.size(), mb.size());
  ASSERT_FALSE(ma.empty());
  for (size_t i = 0; i < ma.size(); ++i) {
    EXPECT_NEAR(ma[i]["loss"].get<double>(), mb[i]["loss"].get<double>(), 1e-5) << "step " << ma[i]["step"];
    EXPECT_NEAR(ma[i]["grad_norm"].get<double>(), mb[i]["grad_norm"].get<double>(),
                1e-4 * mb[i]["grad_norm"].get<double>())
        << "step " << ma[i]["step"];
  }
}

TEST(ContextParallelMpi, TrainOnTwoAndFourRanksEqualsOneProcess) {
  const std::string why = test_util::mpirun_missing();
  if (!why.empty()) GTEST_SKIP() << "skipped: " << why;
  CpWorkspace w("train");
  const auto one = run_in(w, 0, train_args("tnt.json", "one", ""));
  ASSERT_EQ(exit_code(one), 0) << one.output;
  const auto two = run_in(w, 2, train_args("tnt.json", "two", "--context-parallel 2"));
  ASSERT_EQ(exit_code(two), 0) << two.output;
  EXPECT_NE(two.output.find("context parallel over 2 ranks x data parallel over 1 groups (mpi): spans of 32 tokens"),
            std::string::npos)
      << two.output;
  expect_close_runs(w.dir / "two", w.dir / "one");
  const auto four = run_in(w, 4, train_args("tnt.json", "four", "--context-parallel 2 --shard-optimizer"));
  ASSERT_EQ(exit_code(four), 0) << four.output;
  EXPECT_NE(four.output.find("data parallel over 2 groups"), std::string::npos) << four.output;
  expect_close_runs(w.dir / "four", w.dir / "one");
}

// A context-parallel run resumes in one process and the other way round (checkpoints hold nothing of the split).
TEST(ContextParallelMpi, ResumeWithAndWithoutContextParallel) {
  const std::string why = test_util::mpirun_missing();
  if (!why.empty()) GTEST_SKIP() << "skipped: " << why;
  CpWorkspace w("resume");
  const std::string resume = " --steps 3 --sample-tokens 0";
  ASSERT_EQ(exit_code(run_in(w, 0, train_args("tnt.json", "ref", "", 2))), 0);
  ASSERT_EQ(exit_code(run_in(w, 0, "train --resume ref" + resume)), 0);
  const auto a = run_in(w, 2, train_args("tnt.json", "cp_one", "--context-parallel 2", 2));
  ASSERT_EQ(exit_code(a), 0) << a.output;
  const auto a2 = run_in(w, 0, "train --resume cp_one" + resume);
  ASSERT_EQ(exit_code(a2), 0) << a2.output;
  expect_close_runs(w.dir / "cp_one", w.dir / "ref");
  ASSERT_EQ(exit_code(run_in(w, 0, train_args("tnt.json", "one_cp", "", 2))), 0);
  const auto b2 = run_in(w, 2, "train --resume one_cp --context-parallel 2" + resume);
  ASSERT_EQ(exit_code(b2), 0) << b2.output;
  EXPECT_NE(b2.output.find("context parallel over 2 ranks"), std::string::npos) << b2.output;
  expect_close_runs(w.dir / "one_cp", w.dir / "ref");
}

// Torchrun-style ranks (TCP, the groups emulated over the job's collectives): 4 ranks, DP x CP = 2 x 2.
TEST(ContextParallelTcp, TrainOnFourRanksEqualsOneProcess) {
  CpWorkspace w("tcp");
  const auto one = run_in(w, 0, train_args("tnt.json", "one", ""));
  ASSERT_EQ(exit_code(one), 0) << one.output;
  const auto four = test::run_torchrun(w.dir.string(), 4, test::test_port(6), train_args("tnt.json", "four", "--context-parallel 2"));
  ASSERT_EQ(exit_code(four), 0) << four.output;
  EXPECT_NE(four.output.find("data parallel over 2 groups (tcp)"), std::string::npos) << four.output;
  for (int r = 1; r < 4; ++r)
    EXPECT_NE(four.output.find("rank " + std::to_string(r) + " exit 0"), std::string::npos) << four.output;
  expect_close_runs(w.dir / "four", w.dir / "one");
}

// Every rank ends with the message and status 1 (mpirun reports the first failure), no hang.
void expect_refused(const CpWorkspace& w, int np, const std::string& args, const std::string& words,
                    const std::string& env = "") {
  const auto r = run_in(w, np, args, env);
  ASSERT_TRUE(WIFEXITED(r.status)) << r.output;
  EXPECT_NE(exit_code(r), 0) << r.output;
  EXPECT_NE(exit_code(r), 124) << "timed out (hang)\n" << r.output;
  EXPECT_NE(r.output.find(words), std::string::npos) << "message lacks '" << words << "':\n" << r.output;
}

TEST(ContextParallelMpi, BadSetupsEndEveryRank) {
  // One process: no mpirun needed.
  CpWorkspace w("bad");
  expect_refused(w, 0, train_args("tnt.json", "a", "--context-parallel 2"), "does not divide the job's 1 rank(s)");
  expect_refused(w, 0, train_args("lact.json", "b", "--context-parallel 2"), "needs a TNT model (arch tnt");
  expect_refused(w, 0, train_args("tnt.json", "c", "--context-parallel 0"), "--context-parallel must be a rank count");
  const std::string why = test_util::mpirun_missing();
  if (!why.empty()) GTEST_SKIP() << "skipped (the mpirun cases): " << why;
  expect_refused(w, 2, train_args("tnt.json", "d", "--context-parallel 2 --seq-len 48"),
                 "seq_len 48 does not split over --context-parallel 2");
  expect_refused(w, 4, train_args("tnt.json", "e", "--context-parallel 2 --batch 3 --accum 1"),
                 "cannot be split evenly over 2 data-parallel groups");
  // The GPU engine has no context parallelism: it says so (without a GPU, the missing device is the message; with
  // one GPU, the second rank's missing GPU is found first).
  const bool two_gpus = std::system("test \"$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')\" -ge 2") == 0;
  expect_refused(w, 2, train_args("tnt.json", "f", "--context-parallel 2 --device cuda"),
                 !backend::device_available("cuda") ? "--device cuda"
                 : two_gpus                         ? "--context-parallel 2 is not implemented on --device cuda"
                                                    : "start at most 1 ranks per node");
}

// A rank of a context-parallel group that dies or hangs mid-run ends the other: mpirun reports the exit; a stuck
// rank's partner times out in the group's exchange (the sub-communicator's collectives have the timeout too).
TEST(ContextParallelMpi, ARankDyingOrHangingEndsTheGroup) {
  const std::string why = test_util::mpirun_missing();
  if (!why.empty()) GTEST_SKIP() << "skipped: " << why;
  CpWorkspace w("fault");
  expect_refused(w, 2, train_args("tnt.json", "die", "--context-parallel 2"), "exited", "TTT_TEST_RANK_FAULT=1:1:exit");
  expect_refused(w, 2, train_args("tnt.json", "hang", "--context-parallel 2"), "rank 0 of 2 (mpi group): the all-gather",
                 "TTT_DIST_TIMEOUT=3 TTT_TEST_RANK_FAULT=1:1:hang");
}

}  // namespace
