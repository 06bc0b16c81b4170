// TNT context parallelism (model/context_parallel.h): ranks as threads of this process over the TCP communicator,
// in float64, against one rank (the loss, every per-token loss and every gradient to 1e-10); then `ttt train
// --context-parallel` under mpirun against one process, and the setups it refuses; then the GPU engine's (two or four
// GPUs, skipped without them) against one GPU and against the CPU's.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdlib>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cuda_test_util.h"
#include "backend/context_parallel_plan.h"
#include "backend/registry.h"
#include "cli_test_util.h"
#include "core/rng.h"
#include "dist/communicator.h"
#include "dist/data_parallel.h"
#include "expect_error.h"
#include "model/context_parallel.h"
#include "model/model.h"
#include "train/checkpoint.h"
#include "train/evaluate.h"
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
// gradients and loss terms summed equal one rank's. Returns the summed gradients.
std::vector<ag::Mat<double>> expect_context_parallel_equals_one_rank(int ranks, int cp, int port_offset,
                                                                     model::CpGlobal global = model::CpGlobal::Gather) {
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
    model::ContextSpan span = model::context_span(*group, cfg.seq_len);
    span.global = global;
    const dist::SequenceRange mine = dist::rank_sequences(4, c.rank() / cp, ranks / cp);
    terms[size_t(c.rank())] =
        train::accumulate_gradient_range(cfg, p, micro, mine.first, mine.last, parts[size_t(c.rank())], &span);
  });
  for (int r = 0; r < ranks; ++r) EXPECT_EQ(errors[size_t(r)], "") << "rank " << r;
  if (!errors[0].empty()) return {};
  double cp_loss = 0;
  for (const auto& t : terms) cp_loss += train::sum_loss_terms(t);
  EXPECT_NEAR(cp_loss, loss, 1e-10 * loss);
  std::vector<ag::Mat<double>> sums;
  for (size_t i = 0; i < whole.size(); ++i) {
    ag::Mat<double> sum = parts[0][i];
    for (int r = 1; r < ranks; ++r)
      for (size_t e = 0; e < sum.data.size(); ++e) sum.data[e] += parts[size_t(r)][i].data[e];
    expect_near_all(sum, whole[i], p.names[i]);
    sums.push_back(std::move(sum));
  }
  return sums;
}

TEST(ContextParallel, TwoRanksEqualOneRankInFloat64) { expect_context_parallel_equals_one_rank(2, 2, 1); }

TEST(ContextParallel, DataTimesContextParallelTwoByTwoEqualsOneRank) { expect_context_parallel_equals_one_rank(4, 2, 2); }

// --cp-global state: the global memory's state passed from rank to rank (and its adjoint back) instead of its
// inputs gathered; the same loss and gradients as one rank, and as the all-gather.
TEST(ContextParallel, PassingTheGlobalStateTwoRanksEqualOneRankAndTheGather) {
  const auto state = expect_context_parallel_equals_one_rank(2, 2, 5, model::CpGlobal::State);
  const auto gather = expect_context_parallel_equals_one_rank(2, 2, 6, model::CpGlobal::Gather);
  ASSERT_EQ(state.size(), gather.size());
  for (size_t i = 0; i < state.size(); ++i) expect_near_all(state[i], gather[i], "state vs gather, tensor " + std::to_string(i));
}

TEST(ContextParallel, PassingTheGlobalStateDataTimesContextParallelTwoByTwoEqualsOneRank) {
  expect_context_parallel_equals_one_rank(4, 2, 7, model::CpGlobal::State);
}

// Four spans of 16 tokens (one global chunk each): the state crosses three boundaries, rank 3's entry state having
// passed through ranks 1 and 2, and the adjoint back the same way.
TEST(ContextParallel, PassingTheGlobalStateOverFourRanksEqualsOneRank) {
  expect_context_parallel_equals_one_rank(4, 4, 8, model::CpGlobal::State);
}

// Every output of the span: each token's loss on its rank is the one-rank forward's at the same position, with
// either way of crossing the global memory's chain.
void expect_per_token_losses_equal_one_rank(model::CpGlobal global, int port_offset) {
  const model::ModelConfig cfg = cp_config();
  model::Params<double> p = model::make_params<double>(cfg);
  model::init_params(cfg, p, 3);
  const model::Batch batch = test_util::random_micro_batches(cfg, 2, 2, 4)[1];
  const auto ref = model::forward<double>(cfg, p, batch, nullptr, true, false);
  std::vector<std::vector<double>> token_loss(2);
  const std::vector<std::string> errors = on_ranks(2, port_offset, [&](dist::Communicator& c) {
    model::ContextSpan span = model::context_span(c, cfg.seq_len);
    span.global = global;
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

TEST(ContextParallel, PerTokenLossesOfEverySpanEqualOneRank) { expect_per_token_losses_equal_one_rank(model::CpGlobal::Gather, 3); }

// --cp-global auto (the default) passes the global memory's state (a TNT global memory has no weight norm, so its
// chain can start from a passed state) and gathers where there is no global memory to pass.
TEST(ContextParallel, AutoPassesTheStateWhereTheGlobalMemoryAllowsIt) {
  model::ModelConfig cfg = model::preset("tnt");
  ASSERT_EQ(model::parse_cp_global(model::kDefaultCpGlobal), model::CpGlobal::Auto);
  EXPECT_EQ(model::resolve_cp_global(model::CpGlobal::Auto, cfg), model::CpGlobal::State);
  EXPECT_EQ(model::resolve_cp_global(model::CpGlobal::Gather, cfg), model::CpGlobal::Gather);
  EXPECT_EQ(model::resolve_cp_global(model::CpGlobal::State, cfg), model::CpGlobal::State);
  cfg.use_global = false;
  EXPECT_EQ(model::resolve_cp_global(model::CpGlobal::Auto, cfg), model::CpGlobal::Gather);
  EXPECT_THROW(model::parse_cp_global("both"), Error);
}

TEST(ContextParallel, PerTokenLossesOfEverySpanEqualOneRankPassingTheGlobalState) {
  expect_per_token_losses_equal_one_rank(model::CpGlobal::State, 9);
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

// Evaluation in groups (a context-parallel engine's eval_group): 4 ranks in 2 groups of 2 get their group's windows,
// the same on both ranks, in the same calls, and every rank ends with the one-process result.
TEST(ContextParallel, EvaluationGroupsShareTheirWindows) {
  std::vector<int32_t> tokens(3000);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = int32_t((i * 37 + i / 7) % 250 + 1);
  const data::TokenSplit split = data::TokenSplit::view(tokens, 256);
  train::EvalOptions eo;
  eo.batches = 3;
  eo.batch = 3;  // 9 windows: 5 and 4 over the two groups, in calls of 2
  // Per-token "losses" from the window's tokens, so that a window evaluated anywhere gives the same values.
  auto losses = [](const model::Batch& b) {
    std::vector<double> out;
    for (size_t i = 0; i < b.inputs.size(); ++i) out.push_back(0.01 * double(b.inputs[i] % 13) + 1e-3 * double(i % 5));
    return out;
  };
  const int64_t seq_len = 64;
  const train::EvalResult one = train::evaluate_with(losses, 256, seq_len, split, eo, 2);
  std::vector<std::vector<std::vector<int32_t>>> calls(4);  // every rank's calls: the first token of each window
  std::vector<double> loss(4);
  const std::vector<std::string> errors = on_ranks(4, 7, [&](dist::Communicator& c) {
    const train::EvalResult r = train::evaluate_with(
        [&](const model::Batch& b) {
          std::vector<int32_t> firsts;
          for (int64_t s = 0; s < b.sequences; ++s) firsts.push_back(b.inputs[size_t(s * b.len)]);
          calls[size_t(c.rank())].push_back(firsts);
          return losses(b);
        },
        256, seq_len, split, eo, 2, &c, 2);
    loss[size_t(c.rank())] = r.loss;
  });
  for (const std::string& e : errors) EXPECT_EQ(e, "");
  for (int r = 0; r < 4; ++r) EXPECT_EQ(loss[size_t(r)], one.loss) << "rank " << r;
  EXPECT_EQ(calls[0], calls[1]);
  EXPECT_EQ(calls[2], calls[3]);
  ASSERT_EQ(calls[0].size(), 3u);  // windows 0-4 in calls of 2, 2, 1
  ASSERT_EQ(calls[2].size(), 2u);  // windows 5-8
  EXPECT_NE(calls[0][0], calls[2][0]);
  test::expect_error([&] { train::evaluate_with(losses, 256, seq_len, split, eo, 2, nullptr, 0); }, "groups of 0 ranks");
}

// ---- the GPU's layout plans (backend/context_parallel_plan.h), on host arrays ----

// copy_rows moves every row of the source block to the same row of the destination block, nothing else.
TEST(ContextParallelPlan, CopyRowsMovesEveryRowOnce) {
  const std::vector<std::pair<backend::RowBlock, backend::RowBlock>> cases = {
      {{2, 5, 1, 3, 4, 4, 0}, {2, 7, 4, 3, 4, 4, 10}},  // dense on both sides: one copy
      {{2, 5, 2, 3, 4, 12, 8}, {2, 3, 0, 3, 4, 4, 0}},  // a strided source (leading dimension 12, from element 8)
      {{3, 4, 0, 4, 2, 2, 0}, {3, 6, 2, 4, 2, 6, 4}},   // a strided destination
  };
  for (const auto& [from, to] : cases) {
    std::vector<float> src(200), dst(200, -1.0f), want(200, -1.0f);
    for (size_t i = 0; i < src.size(); ++i) src[i] = float(i);
    for (int64_t s = 0; s < from.sequences; ++s)
      for (int64_t i = 0; i < from.count; ++i)
        for (int64_t c = 0; c < from.width; ++c)
          want[size_t(to.base + (s * to.stride + to.first + i) * to.ld + c)] =
              src[size_t(from.base + (s * from.stride + from.first + i) * from.ld + c)];
    const std::vector<backend::BlockCopy> copies = backend::copy_rows(from, to);
    EXPECT_EQ(copies.size(), from.ld == from.width && to.ld == to.width ? 1u : size_t(from.sequences));
    backend::apply_on_host(copies, src.data(), dst.data());
    EXPECT_EQ(dst, want);
  }
  test::expect_error([] { backend::copy_rows({2, 5, 0, 3, 4, 4, 0}, {2, 5, 0, 2, 4, 4, 0}); }, "copy_rows");
  test::expect_error([] { backend::copy_rows({2, 5, 3, 3, 4, 4, 0}, {2, 5, 0, 3, 4, 4, 0}); }, "rows [3, 6)");
}

// The halo on 3 ranks (2 sequences of 6 tokens each, window 4: 3 rows): the forward's copies give every rank the
// keys and values of the whole sequence's rows its queries see, in the attention's extended layout; the backward's
// copies give every row's owner the sum of its gradients on both ranks that hold it.
TEST(ContextParallelPlan, HaloGivesEveryRankTheWindowAndReturnsItsGradient) {
  const int R = 3;
  const int64_t S = 2, N = 6, D = 2, window = 4, T = R * N;
  auto whole = [&](int64_t s, int64_t t, int64_t c, int part) { return float(1000 * part + 100 * s + 2 * t + c); };
  std::vector<backend::HaloPlan> plan;
  for (int r = 0; r < R; ++r) plan.emplace_back(S, N, D, window, r);
  EXPECT_EQ(plan[0].halo_in, 0);
  EXPECT_EQ(plan[1].halo_in, 3);
  // Each rank's keys in the extended layout (RoPE writes its own rows there) and values in qkv (leading dimension
  // 3 D, from element 2 D).
  std::vector<std::vector<float>> ka(R), qkv(R), send(R);
  for (int r = 0; r < R; ++r) {
    const backend::HaloPlan& p = plan[size_t(r)];
    ka[size_t(r)].assign(size_t(S * p.X() * D), -1.0f);
    qkv[size_t(r)].assign(size_t(S * N * 3 * D), -1.0f);
    for (int64_t s = 0; s < S; ++s)
      for (int64_t i = 0; i < N; ++i)
        for (int64_t c = 0; c < D; ++c) {
          ka[size_t(r)][size_t((s * p.X() + p.halo_in + i) * D + c)] = whole(s, r * N + i, c, 1);
          qkv[size_t(r)][size_t((s * N + i) * 3 * D + 2 * D + c)] = whole(s, r * N + i, c, 2);
        }
    send[size_t(r)].assign(size_t(p.buffer_floats()), -1.0f);
    backend::apply_on_host(backend::copy_rows(p.extended_tail(), p.buffer(p.halo)), ka[size_t(r)].data(),
                           send[size_t(r)].data());
    backend::apply_on_host(backend::copy_rows(p.plain_tail(3 * D, 2 * D), p.buffer(p.halo, S * p.halo * D)),
                           qkv[size_t(r)].data(), send[size_t(r)].data());
  }
  for (int r = 1; r < R; ++r) {  // rank r receives rank r - 1's tails
    const backend::HaloPlan& p = plan[size_t(r)];
    const std::vector<float>& kept = send[size_t(r - 1)];
    std::vector<float> xv(size_t(S * p.X() * D), -1.0f);
    backend::apply_on_host(backend::copy_rows(p.buffer(p.halo_in), p.extended_halo()), kept.data(), ka[size_t(r)].data());
    backend::apply_on_host(backend::copy_rows(p.buffer(p.halo_in, S * p.halo_in * D), p.extended_halo()), kept.data(),
                           xv.data());
    backend::apply_on_host(backend::copy_rows(p.plain(3 * D, 2 * D), p.extended()), qkv[size_t(r)].data(), xv.data());
    for (int64_t s = 0; s < S; ++s)
      for (int64_t e = 0; e < p.X(); ++e)
        for (int64_t c = 0; c < D; ++c) {
          const int64_t t = r * N - p.halo_in + e;  // the extended row's position in the whole sequence
          EXPECT_EQ(ka[size_t(r)][size_t((s * p.X() + e) * D + c)], whole(s, t, c, 1)) << r << " " << s << " " << e;
          EXPECT_EQ(xv[size_t((s * p.X() + e) * D + c)], whole(s, t, c, 2)) << r << " " << s << " " << e;
        }
  }
  // Backward: every rank's gradient over its extended rows (integers: the sums are exact).
  std::vector<std::vector<float>> dk_ext(R), dka(R), back(R);
  std::vector<double> want(size_t(S * T * D), 0.0);
  for (int r = 0; r < R; ++r) {
    const backend::HaloPlan& p = plan[size_t(r)];
    dk_ext[size_t(r)].resize(size_t(S * p.X() * D));
    for (size_t i = 0; i < dk_ext[size_t(r)].size(); ++i) dk_ext[size_t(r)][i] = float((7 * i + 3 * size_t(r)) % 11);
    for (int64_t s = 0; s < S; ++s)
      for (int64_t e = 0; e < p.X(); ++e)
        for (int64_t c = 0; c < D; ++c)
          want[size_t((s * T + r * N - p.halo_in + e) * D + c)] += dk_ext[size_t(r)][size_t((s * p.X() + e) * D + c)];
    dka[size_t(r)].assign(size_t(S * N * D), -1.0f);
    backend::apply_on_host(backend::copy_rows(p.extended(), p.plain(D)), dk_ext[size_t(r)].data(), dka[size_t(r)].data());
    back[size_t(r)].assign(size_t(p.buffer_floats()), 0.0f);
    if (p.halo_in > 0)
      backend::apply_on_host(backend::copy_rows(p.extended_halo(), p.buffer(p.halo)), dk_ext[size_t(r)].data(),
                             back[size_t(r)].data());
  }
  for (int r = 0; r + 1 < R; ++r) {  // rank r adds what rank r + 1 sends back to its tail
    const backend::HaloPlan& p = plan[size_t(r)];
    backend::apply_on_host(backend::copy_rows(p.buffer(p.halo), p.plain_tail(D)), back[size_t(r + 1)].data(),
                           dka[size_t(r)].data(), /*accumulate=*/true);
  }
  for (int r = 0; r < R; ++r)
    for (int64_t s = 0; s < S; ++s)
      for (int64_t i = 0; i < N; ++i)
        for (int64_t c = 0; c < D; ++c)
          EXPECT_EQ(dka[size_t(r)][size_t((s * N + i) * D + c)], want[size_t((s * T + r * N + i) * D + c)])
              << r << " " << s << " " << i;
}

// The global memory on 3 ranks (3 sequence-heads of 4 tokens each, width 2): the all-gathered packed spans, unpacked,
// are the prefix of the whole sequence on every rank; the prefix's gradients packed per span and summed by their
// owners in rank order are the sums of every rank's gradient of those rows.
TEST(ContextParallelPlan, GlobalSpansGatherThePrefixAndReturnItsGradient) {
  const int R = 3;
  const int64_t B = 3, N = 4, d = 2, U = backend::global_floats(B, N, d, 1);
  EXPECT_EQ(U, 3 * B * N * d + 3 * B * N);
  auto whole = [&](int part, int64_t b, int64_t t, int64_t c) { return float(1000 * part + 100 * b + 3 * t + c); };
  auto width = [&](int part) { return part < 3 ? d : int64_t(1); };
  std::vector<float> gathered(size_t(R * U));  // every rank's packed span, in rank order
  for (int r = 0; r < R; ++r) {
    const std::array<int64_t, 6> at = backend::global_part_offsets(B, N, d, 1);
    for (int part = 0; part < 6; ++part)
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < N; ++t)
          for (int64_t c = 0; c < width(part); ++c)
            gathered[size_t(r * U + at[size_t(part)] + (b * N + t) * width(part) + c)] = whole(part, b, r * N + t, c);
  }
  std::vector<std::vector<float>> grads(R);
  for (int r = 0; r < R; ++r) {
    const int64_t P = r + 1;
    std::vector<float> prefix(size_t(backend::global_floats(B, N, d, P)), -1.0f);
    for (int64_t j = 0; j < P; ++j)
      backend::apply_on_host(backend::global_span_copies(B, N, d, P, j, true), gathered.data() + j * U, prefix.data());
    const std::array<int64_t, 6> at = backend::global_part_offsets(B, N, d, P);
    for (int part = 0; part < 6; ++part)
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < P * N; ++t)
          for (int64_t c = 0; c < width(part); ++c)
            EXPECT_EQ(prefix[size_t(at[size_t(part)] + (b * P * N + t) * width(part) + c)], whole(part, b, t, c))
                << "rank " << r << " part " << part << " item " << b << " token " << t;
    grads[size_t(r)].resize(prefix.size());
    for (size_t i = 0; i < prefix.size(); ++i) grads[size_t(r)][i] = float((5 * i + size_t(r)) % 13);
  }
  // Backward: rank i packs span j of its prefix gradient for rank j (j <= i); owner j sums its own, then ranks j+1..
  std::vector<std::vector<float>> packed(R, std::vector<float>(size_t(R * U), 0.0f));
  for (int i = 0; i < R; ++i)
    for (int64_t j = 0; j <= i; ++j)
      backend::apply_on_host(backend::global_span_copies(B, N, d, i + 1, j, false), grads[size_t(i)].data(),
                             packed[size_t(i)].data() + j * U);
  for (int j = 0; j < R; ++j) {
    std::vector<float> sum(packed[size_t(j)].begin() + j * U, packed[size_t(j)].begin() + (j + 1) * U);
    for (int i = j + 1; i < R; ++i)
      for (int64_t e = 0; e < U; ++e) sum[size_t(e)] += packed[size_t(i)][size_t(j * U + e)];
    const std::array<int64_t, 6> mine = backend::global_part_offsets(B, N, d, 1);
    for (int part = 0; part < 6; ++part)
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < N; ++t)
          for (int64_t c = 0; c < width(part); ++c) {
            float want = 0;
            for (int i = j; i < R; ++i) {
              const std::array<int64_t, 6> at = backend::global_part_offsets(B, N, d, i + 1);
              want += grads[size_t(i)][size_t(at[size_t(part)] + (b * (i + 1) * N + j * N + t) * width(part) + c)];
            }
            EXPECT_EQ(sum[size_t(mine[size_t(part)] + (b * N + t) * width(part) + c)], want)
                << "owner " << j << " part " << part << " item " << b << " token " << t;
          }
  }
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
    model::save_config((dir / "tnt2.json").string(), cp_config());  // two layers: the GPU recomputes the first
    model::save_config((dir / "lact.json").string(), test_util::small_lact_config());
    cfg.decay = false;  // a Titans memory the GPU does not run
    model::save_config((dir / "tnt_no_decay.json").string(), cfg);
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
// another order): losses and validation losses to `loss_abs`, gradient norms to `norm_rel` relative.
void expect_close_runs(const fs::path& a, const fs::path& b, double loss_abs = 1e-5, double norm_rel = 1e-4) {
  const auto ma = test_util::read_metrics(a.string()), mb = test_util::read_metrics(b.string());
  ASSERT_EQ(ma.size(), mb.size());
  ASSERT_FALSE(ma.empty());
  double loss_diff = 0, norm_diff = 0;  // printed: the measured agreement, beside the bounds
  for (size_t i = 0; i < ma.size(); ++i) {
    loss_diff = std::max(loss_diff, std::abs(ma[i]["loss"].get<double>() - mb[i]["loss"].get<double>()));
    norm_diff = std::max(norm_diff, std::abs(ma[i]["grad_norm"].get<double>() - mb[i]["grad_norm"].get<double>()) /
                                        mb[i]["grad_norm"].get<double>());
    EXPECT_NEAR(ma[i]["loss"].get<double>(), mb[i]["loss"].get<double>(), loss_abs) << "step " << ma[i]["step"];
    EXPECT_NEAR(ma[i]["grad_norm"].get<double>(), mb[i]["grad_norm"].get<double>(),
                norm_rel * mb[i]["grad_norm"].get<double>())
        << "step " << ma[i]["step"];
    // Validation (the GPU splits it too).
    EXPECT_EQ(ma[i].contains("val_loss"), mb[i].contains("val_loss")) << "step " << ma[i]["step"];
    if (ma[i].contains("val_loss") && mb[i].contains("val_loss"))
      EXPECT_NEAR(ma[i]["val_loss"].get<double>(), mb[i]["val_loss"].get<double>(), loss_abs) << "step " << ma[i]["step"];
  }
  std::printf("  %s vs %s: %zu steps, loss differs by at most %.3g (bound %.3g), gradient norm by %.3g relative (bound "
              "%.3g)\n",
              a.filename().string().c_str(), b.filename().string().c_str(), ma.size(), loss_diff, loss_abs, norm_diff,
              norm_rel);
}

// Every weight of the two runs' final checkpoints agrees with run b's to 1e-4 of its tensor's largest weight (the
// gradients differ by float32 rounding, and a few AdamW steps carry that into the weights). An element whose AdamW
// first moment is nonzero but ~0 (below 1e-3 of its tensor's largest) has a gradient of the size of that rounding,
// which AdamW may turn into a step either way: it may differ by up to 2 x the sum of the steps' learning rates (AdamW
// moves an element by about lr per step at most), and such elements must be a small part of the weights.
void expect_close_weights(const fs::path& a, const fs::path& b) {
  const train::LoadedCheckpoint ca = train::load_checkpoint((a / "checkpoint").string(), true);
  const train::LoadedCheckpoint cb = train::load_checkpoint((b / "checkpoint").string(), true);
  ASSERT_EQ(ca.params.names, cb.params.names);
  std::vector<int64_t> sizes;
  for (const auto& m : cb.params.values) sizes.push_back(m.size());
  train::AdamW opt(cb.params.names, sizes, {});
  train::load_optimizer(cb.dir, cb.params, cb.state, opt);
  double lr_sum = 0;
  for (const auto& m : test_util::read_metrics(b.string())) lr_sum += m["lr"].get<double>();
  int64_t sensitive = 0, elements = 0;
  for (size_t i = 0; i < ca.params.values.size(); ++i) {
    const std::vector<float>& x = ca.params.values[i].data;
    const std::vector<float>& y = cb.params.values[i].data;
    const std::vector<float>& m = opt.m()[i];
    ASSERT_EQ(x.size(), y.size()) << ca.params.names[i];
    ASSERT_EQ(m.size(), y.size()) << ca.params.names[i];
    double pmax = 0, mmax = 0;
    for (size_t j = 0; j < y.size(); ++j) {
      pmax = std::max(pmax, double(std::abs(y[j])));
      mmax = std::max(mmax, double(std::abs(m[j])));
    }
    double worst = 0;  // the largest excess over the tolerance
    size_t at = 0;
    for (size_t j = 0; j < y.size(); ++j) {
      const bool tiny = m[j] != 0 && std::abs(m[j]) < 1e-3 * mmax;
      sensitive += tiny;
      ++elements;
      const double excess = std::abs(double(x[j]) - double(y[j])) - (1e-4 * pmax + (tiny ? 2 * lr_sum : 0.0));
      if (excess > worst) worst = excess, at = j;
    }
    EXPECT_EQ(worst, 0.0) << ca.params.names[i] << "[" << at << "]: " << x[at] << " vs " << y[at];
  }
  EXPECT_LT(sensitive, elements / 10) << "too many near-zero gradients for the weights' comparison to mean much";
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
  expect_close_weights(w.dir / "two", w.dir / "one");
  const auto four = run_in(w, 4, train_args("tnt.json", "four", "--context-parallel 2 --shard-optimizer"));
  ASSERT_EQ(exit_code(four), 0) << four.output;
  EXPECT_NE(four.output.find("data parallel over 2 groups"), std::string::npos) << four.output;
  expect_close_runs(w.dir / "four", w.dir / "one");
  expect_close_weights(w.dir / "four", w.dir / "one");
  // Passing the global memory's state instead of all-gathering its inputs.
  const auto state = run_in(w, 2, train_args("tnt.json", "state", "--context-parallel 2 --cp-global state"));
  ASSERT_EQ(exit_code(state), 0) << state.output;
  EXPECT_NE(state.output.find("global memory by state passing"), std::string::npos) << state.output;
  expect_close_runs(w.dir / "state", w.dir / "one");
  expect_close_weights(w.dir / "state", w.dir / "one");
  const auto bad = run_in(w, 2, train_args("tnt.json", "bad", "--context-parallel 2 --cp-global scatter"));
  EXPECT_NE(exit_code(bad), 0) << bad.output;
  EXPECT_NE(bad.output.find("--cp-global must be auto"), std::string::npos) << bad.output;
}

// `ttt bench step --context-parallel 2` (the step of `ttt train`, timed): its loss and gradient norm are one process's.
TEST(ContextParallelMpi, BenchStepSplitsTheSequence) {
  const std::string why = test_util::mpirun_missing();
  if (!why.empty()) GTEST_SKIP() << "skipped: " << why;
  CpWorkspace w("bench");
  const std::string bench = "bench step --config tnt2.json --batch 2 --repeats 1 --warmup 1";
  auto json_of = [](const test::RunResult& r) {
    const size_t at = r.output.find("{\"arch\"");
    EXPECT_NE(at, std::string::npos) << r.output;
    return nlohmann::json::parse(r.output.substr(at, r.output.find('\n', at) - at));
  };
  const auto one = run_in(w, 0, bench);
  ASSERT_EQ(exit_code(one), 0) << one.output;
  const auto two = run_in(w, 2, bench + " --context-parallel 2");
  ASSERT_EQ(exit_code(two), 0) << two.output;
  const nlohmann::json a = json_of(one), b = json_of(two);
  EXPECT_EQ(b["context_parallel"], 2);
  EXPECT_TRUE(b["finite"].get<bool>());
  EXPECT_NEAR(b["loss"].get<double>(), a["loss"].get<double>(), 1e-5);
  EXPECT_NEAR(b["grad_norm"].get<double>(), a["grad_norm"].get<double>(), 1e-4 * a["grad_norm"].get<double>());
  const auto lact = run_in(w, 2, "bench step --config lact.json --repeats 1 --warmup 0 --context-parallel 2");
  EXPECT_NE(exit_code(lact), 0) << lact.output;
  EXPECT_NE(lact.output.find("needs a TNT model"), std::string::npos) << lact.output;
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
  // On --device cuda without two GPUs: the missing device is the message (with one GPU, the second rank's missing
  // GPU is found first). With two, the GPU refusals are ContextParallelGpu.RefusalsNameTheReason's.
  const bool two_gpus = std::system("test \"$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')\" -ge 2") == 0;
  if (!two_gpus)
    expect_refused(w, 2, train_args("tnt.json", "f", "--context-parallel 2 --device cuda"),
                   !backend::device_available("cuda") ? "--device cuda" : "start at most 1 ranks per node");
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

// ---- the GPU engine (docs/CONTEXT_PARALLEL.md, "The GPU"): skipped, saying why, without enough GPUs ----

// Skips, saying why, where `n` GPUs are not visible (gpus_missing, cuda_test_util.h).
#define SKIP_WITHOUT_GPUS(n)                              \
  do {                                                    \
    const std::string why = gpus_missing(n);              \
    if (!why.empty()) GTEST_SKIP() << "skipped: " << why; \
  } while (0)

// `np` ranks of `ttt ARGS` in `w`: under mpirun where it exists, else started torchrun-style (the TCP bootstrap; the
// GPU machines have no mpirun), each launch on its own port. np = 0: one plain process.
// timeout_s: torchrun-style, how long a stuck rank may run before `timeout` ends it (as a launcher would).
test::RunResult run_ranks(const CpWorkspace& w, int np, const std::string& args, const std::string& env = "",
                          int timeout_s = 120) {
  if (np == 0 || test_util::mpirun_missing().empty()) return run_in(w, np, args, env);
  static int launches = 0;
  return test::run_torchrun(w.dir.string(), np, test::test_port(60 + launches++), args, env, timeout_s);
}

const std::string kGpuFp32 = "--device cuda --precision fp32";
const std::string kNcclEnv = "NCCL_NVLS_ENABLE=0";  // NVLink multicast stays off on the test machines

// Two GPUs, each one span of every sequence (the halo over NCCL send / receive, the global memory's inputs
// all-gathered, or with --cp-global state its state passed), train what one GPU trains: losses to 1e-5, gradient
// norms to 1e-4 relative, weights after 3 steps. Two layers (the first is recomputed in the backward), 2 sequences
// per micro-batch; with the attention outputs kept (the default) and recomputed (--recompute full), both ways of
// crossing the global memory's chain.
TEST(ContextParallelGpu, TwoGpusEqualOneGpu) {
  SKIP_WITHOUT_GPUS(2);
  CpWorkspace w("gpu2");
  const auto one = run_ranks(w, 0, train_args("tnt2.json", "one", kGpuFp32), kNcclEnv);
  ASSERT_EQ(exit_code(one), 0) << one.output;
  const auto two = run_ranks(w, 2, train_args("tnt2.json", "two", kGpuFp32 + " --context-parallel 2"), kNcclEnv);
  ASSERT_EQ(exit_code(two), 0) << two.output;
  EXPECT_NE(two.output.find("context parallel over 2 ranks x data parallel over 1 groups"), std::string::npos)
      << two.output;
  expect_close_runs(w.dir / "two", w.dir / "one");
  expect_close_weights(w.dir / "two", w.dir / "one");
  const auto full = run_ranks(w, 2, train_args("tnt2.json", "full", kGpuFp32 + " --context-parallel 2 --recompute full"),
                              kNcclEnv);
  ASSERT_EQ(exit_code(full), 0) << full.output;
  expect_close_runs(w.dir / "full", w.dir / "one");
  expect_close_weights(w.dir / "full", w.dir / "one");
  for (const std::string recompute : {"save-attention", "full"}) {
    const std::string name = "state_" + recompute;
    const auto state = run_ranks(
        w, 2, train_args("tnt2.json", name, kGpuFp32 + " --context-parallel 2 --cp-global state --recompute " + recompute),
        kNcclEnv);
    ASSERT_EQ(exit_code(state), 0) << state.output;
    EXPECT_NE(state.output.find("global memory by state passing"), std::string::npos) << state.output;
    std::printf("--cp-global state, --recompute %s: two GPUs against one\n", recompute.c_str());
    expect_close_runs(w.dir / name, w.dir / "one");
    expect_close_weights(w.dir / name, w.dir / "one");
  }
}

// The GPU's context parallelism equals the CPU's (the reference implementation of the same split): two GPUs against
// two CPU ranks, both --context-parallel 2, to the GPU model's fp32 parity with the CPU (1e-4 relative: the kernels'
// float32 sums round in other orders than the CPU's).
TEST(ContextParallelGpu, TwoGpusEqualTwoCpuRanks) {
  SKIP_WITHOUT_GPUS(2);
  CpWorkspace w("gpu_cpu");
  const auto cpu = run_ranks(w, 2, train_args("tnt2.json", "cpu", "--context-parallel 2"));
  ASSERT_EQ(exit_code(cpu), 0) << cpu.output;
  const auto gpu = run_ranks(w, 2, train_args("tnt2.json", "gpu", kGpuFp32 + " --context-parallel 2"), kNcclEnv);
  ASSERT_EQ(exit_code(gpu), 0) << gpu.output;
  const double loss = test_util::read_metrics((w.dir / "cpu").string()).front()["loss"].get<double>();
  expect_close_runs(w.dir / "gpu", w.dir / "cpu", 1e-4 * loss, 1e-4);
  expect_close_weights(w.dir / "gpu", w.dir / "cpu");
  // Passing the global memory's state: the GPU's against the CPU's.
  const auto cpu_state = run_ranks(w, 2, train_args("tnt2.json", "cpu_state", "--context-parallel 2 --cp-global state"));
  ASSERT_EQ(exit_code(cpu_state), 0) << cpu_state.output;
  const auto gpu_state = run_ranks(
      w, 2, train_args("tnt2.json", "gpu_state", kGpuFp32 + " --context-parallel 2 --cp-global state"), kNcclEnv);
  ASSERT_EQ(exit_code(gpu_state), 0) << gpu_state.output;
  expect_close_runs(w.dir / "gpu_state", w.dir / "cpu_state", 1e-4 * loss, 1e-4);
  expect_close_weights(w.dir / "gpu_state", w.dir / "cpu_state");
}

// Data x context parallel on four GPUs (world rank k: CP rank k % 2 of DP group k / 2), with the sharded optimizer;
// both ways of crossing the global memory's chain.
TEST(ContextParallelGpu, FourGpusDataTimesContextParallelEqualOneGpu) {
  SKIP_WITHOUT_GPUS(4);
  CpWorkspace w("gpu4");
  const auto one = run_ranks(w, 0, train_args("tnt2.json", "one", kGpuFp32), kNcclEnv);
  ASSERT_EQ(exit_code(one), 0) << one.output;
  const auto four = run_ranks(w, 4, train_args("tnt2.json", "four", kGpuFp32 + " --context-parallel 2 --shard-optimizer"),
                              kNcclEnv);
  ASSERT_EQ(exit_code(four), 0) << four.output;
  EXPECT_NE(four.output.find("data parallel over 2 groups"), std::string::npos) << four.output;
  expect_close_runs(w.dir / "four", w.dir / "one");
  expect_close_weights(w.dir / "four", w.dir / "one");
  const auto state = run_ranks(
      w, 4, train_args("tnt2.json", "four_state", kGpuFp32 + " --context-parallel 2 --shard-optimizer --cp-global state"),
      kNcclEnv);
  ASSERT_EQ(exit_code(state), 0) << state.output;
  expect_close_runs(w.dir / "four_state", w.dir / "one");
  expect_close_weights(w.dir / "four_state", w.dir / "one");
}

// `ttt bench step --context-parallel 2` on two GPUs with the default precision (bf16 products and activations):
// finite, and its loss (the same weights and batch) that of one GPU to bf16's accuracy; with --cp-global gather (the
// default) and state.
TEST(ContextParallelGpu, BenchStepOnTwoGpus) {
  SKIP_WITHOUT_GPUS(2);
  CpWorkspace w("gpu_bench");
  const std::string bench = "bench step --config tnt2.json --device cuda --batch 2 --repeats 2 --warmup 1";
  const auto one = run_ranks(w, 0, bench, kNcclEnv);
  ASSERT_EQ(exit_code(one), 0) << one.output;
  const auto two = run_ranks(w, 2, bench + " --context-parallel 2", kNcclEnv);
  ASSERT_EQ(exit_code(two), 0) << two.output;
  auto json_of = [](const std::string& out) {
    const size_t at = out.find("{\"arch\"");
    EXPECT_NE(at, std::string::npos) << out;
    return nlohmann::json::parse(out.substr(at, out.find('\n', at) - at));
  };
  const nlohmann::json a = json_of(one.output), b = json_of(two.output);
  EXPECT_TRUE(b["finite"].get<bool>()) << two.output;
  EXPECT_EQ(b["context_parallel"], 2);
  EXPECT_NEAR(b["loss"].get<double>(), a["loss"].get<double>(), 2e-2 * a["loss"].get<double>());
  EXPECT_NEAR(b["grad_norm"].get<double>(), a["grad_norm"].get<double>(), 5e-2 * a["grad_norm"].get<double>());
  const auto state = run_ranks(w, 2, bench + " --context-parallel 2 --cp-global state", kNcclEnv);
  ASSERT_EQ(exit_code(state), 0) << state.output;
  const nlohmann::json c = json_of(state.output);
  EXPECT_TRUE(c["finite"].get<bool>()) << state.output;
  EXPECT_EQ(c["cp_global"], "state");
  std::printf("  bench step bf16: loss one GPU %.6f, two gather %.6f, two state %.6f\n", a["loss"].get<double>(),
              b["loss"].get<double>(), c["loss"].get<double>());
  EXPECT_NEAR(c["loss"].get<double>(), a["loss"].get<double>(), 2e-2 * a["loss"].get<double>());
  EXPECT_NEAR(c["grad_norm"].get<double>(), a["grad_norm"].get<double>(), 5e-2 * a["grad_norm"].get<double>());
}

// What the GPU cannot split ends every rank with the reason: a model other than TNT, a Titans memory the GPU does not
// run; a rank that stops responding mid-step ends its partner through the exchange's timeout.
TEST(ContextParallelGpu, RefusalsNameTheReason) {
  SKIP_WITHOUT_GPUS(2);
  CpWorkspace w("gpu_bad");
  for (const auto& [config, words] :
       std::vector<std::pair<std::string, std::string>>{{"lact.json", "needs a TNT model (arch tnt"},
                                                        {"tnt_no_decay.json", "this config runs on the CPU"}}) {
    const auto r = run_ranks(w, 2, train_args(config, "bad", kGpuFp32 + " --context-parallel 2"), kNcclEnv);
    ASSERT_TRUE(WIFEXITED(r.status)) << r.output;
    EXPECT_NE(exit_code(r), 0) << r.output;
    EXPECT_NE(exit_code(r), 124) << "timed out (hang)\n" << r.output;
    EXPECT_NE(r.output.find(words), std::string::npos) << "message lacks '" << words << "':\n" << r.output;
  }
  // --recompute none keeps per-layer operator runners; the split global memory has one: refused together.
  const auto none = run_ranks(w, 2, train_args("tnt2.json", "none", kGpuFp32 + " --context-parallel 2 --recompute none"),
                              kNcclEnv);
  EXPECT_NE(exit_code(none), 0) << none.output;
  EXPECT_NE(none.output.find("--recompute none is not implemented with --context-parallel"), std::string::npos)
      << none.output;
  const auto hang = run_ranks(w, 2, train_args("tnt2.json", "hang", kGpuFp32 + " --context-parallel 2", 4),
                              kNcclEnv + " TTT_DIST_TIMEOUT=5 TTT_TEST_RANK_FAULT=1:1:hang", 60);
  ASSERT_TRUE(WIFEXITED(hang.status)) << hang.output;
  EXPECT_NE(exit_code(hang), 0) << hang.output;
  EXPECT_NE(hang.output.find("timed out"), std::string::npos) << hang.output;
}

}  // namespace
