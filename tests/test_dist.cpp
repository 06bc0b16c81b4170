// Multi-process training (src/dist): the fixed reduction order and the shard bookkeeping in one process, then
// `mpirun -np N ttt train` against one process (bit for bit), the sharded optimizer, resuming on another rank
// count and the bad setups; the gradient bucket plan; on two GPUs (skipped, saying why, without them) the bucketed
// all-reduce against one all-reduce and ZeRO-1 against the unsharded run. The mpirun tests skip, saying why, when
// the build has no MPI or mpirun is missing.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <filesystem>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cli_test_util.h"
#include "cuda_test_util.h"
#include "backend/registry.h"
#include "core/file_io.h"
#include "dist/communicator.h"
#include "dist/data_parallel.h"
#include "expect_error.h"
#include "model/config.h"
#include "model/model.h"
#include "train/checkpoint.h"
#include "train/trainer.h"
#include "train_test_util.h"

using namespace ttt;
namespace fs = std::filesystem;

namespace {

// ---- In one process ----

TEST(Dist, TreeSumIsThePairwiseTreeOverRanks) {
  // Values whose groupings round differently: (1 + 2^-24) + 2^-24 = 1, 1 + (2^-24 + 2^-24) = 1 + 2^-23.
  const float a = 1.0f, b = std::ldexp(1.0f, -24), c = std::ldexp(1.0f, -24);
  ASSERT_NE((a + b) + c, a + (b + c));
  float out = 0;
  // Three ranks: [0, 1) + [1, 3), the left operand first.
  dist::tree_sum({&a, &b, &c}, &out, 1);
  EXPECT_EQ(out, a + (b + c));
  // Four: ([0, 2) + [2, 4)).
  const float d = std::ldexp(1.0f, -24);
  ASSERT_NE((a + b) + (c + d), ((a + b) + c) + d);
  dist::tree_sum({&a, &b, &c, &d}, &out, 1);
  EXPECT_EQ(out, (a + b) + (c + d));
}

TEST(Dist, EvenCountsAndRankSequences) {
  EXPECT_EQ(dist::even_counts(7, 3), (std::vector<int64_t>{3, 2, 2}));
  EXPECT_EQ(dist::even_counts(2, 4), (std::vector<int64_t>{1, 1, 0, 0}));
  const dist::SequenceRange r = dist::rank_sequences(8, 1, 2);
  EXPECT_EQ(r.first, 4);
  EXPECT_EQ(r.last, 8);
  test::expect_error([] { dist::rank_sequences(6, 0, 4); }, "multiple of 4");
}

TEST(Dist, RankMicroBatchesArePartsOfTheStep) {
  std::vector<model::Batch> micro(2);
  for (int i = 0; i < 2; ++i) {
    micro[size_t(i)].sequences = 3;
    micro[size_t(i)].len = 1;
    micro[size_t(i)].inputs = {10 * i, 10 * i + 1, 10 * i + 2};
    micro[size_t(i)].targets = micro[size_t(i)].inputs;
  }
  // 6 sequences over 3 ranks: rank 1 holds sequences 2 and 3, the last of micro-batch 0 and the first of 1.
  const std::vector<model::Batch> mine = dist::rank_micro_batches(micro, 1, 3);
  ASSERT_EQ(mine.size(), 2u);
  EXPECT_EQ(mine[0].inputs, (std::vector<int32_t>{2}));
  EXPECT_EQ(mine[1].inputs, (std::vector<int32_t>{10}));
  EXPECT_EQ(dist::rank_micro_batches(micro, 0, 2)[0].inputs, (std::vector<int32_t>{0, 1, 2}));
}

// Context parallelism's spans: every sequence of every micro-batch cut to the rank's part, inputs and targets alike.
TEST(Dist, SpanMicroBatchesCutEverySequence) {
  model::Batch b;
  b.sequences = 2;
  b.len = 6;
  for (int32_t i = 0; i < 12; ++i) b.inputs.push_back(i), b.targets.push_back(100 + i);
  const std::vector<model::Batch> micro = {b, b};
  const std::vector<model::Batch> last = dist::span_micro_batches(micro, 2, 3);
  ASSERT_EQ(last.size(), 2u);
  for (const model::Batch& part : last) {
    EXPECT_EQ(part.sequences, 2);
    EXPECT_EQ(part.len, 2);
    EXPECT_EQ(part.inputs, (std::vector<int32_t>{4, 5, 10, 11}));
    EXPECT_EQ(part.targets, (std::vector<int32_t>{104, 105, 110, 111}));
  }
  EXPECT_EQ(dist::span_micro_batches(micro, 0, 2)[1].inputs, (std::vector<int32_t>{0, 1, 2, 6, 7, 8}));
  // One rank: the batch itself.
  EXPECT_EQ(dist::span_micro_batches(micro, 0, 1)[0].inputs, b.inputs);
  test::expect_error([&] { dist::span_micro_batches(micro, 0, 4); }, "sequences of 6 tokens do not split over 4 ranks");
  test::expect_error([&] { dist::span_micro_batches(micro, 3, 3); }, "rank 3 of 3");
}

// join_spans puts every rank's span values back into whole sequences: the inverse of span_micro_batches.
TEST(Dist, JoinSpansInvertsSpanMicroBatches) {
  model::Batch b;
  b.sequences = 2;
  b.len = 6;
  for (int32_t i = 0; i < 12; ++i) b.inputs.push_back(i), b.targets.push_back(i);
  std::vector<double> by_rank;  // what an all-gather of every rank's span values gives
  for (int r = 0; r < 3; ++r) {
    const std::vector<model::Batch> span = dist::span_micro_batches({b}, r, 3);
    for (int32_t x : span[0].inputs) by_rank.push_back(double(x));
  }
  EXPECT_EQ(by_rank, (std::vector<double>{0, 1, 6, 7, 2, 3, 8, 9, 4, 5, 10, 11}));
  const std::vector<double> whole = dist::join_spans(by_rank, 2, 2, 3);
  EXPECT_EQ(whole, std::vector<double>(b.inputs.begin(), b.inputs.end()));
  test::expect_error([&] { dist::join_spans(by_rank, 2, 3, 3); }, "join_spans: 12 values for 3 ranks");
}

TEST(Dist, TensorShardsAreContiguousAndBalanced) {
  const std::vector<int64_t> sizes = {10, 10, 10, 10, 40, 20};
  // Half of the 100 elements is 50: tensor 4 starts at 40 (10 away), tensor 5 at 80 (30 away).
  EXPECT_EQ(dist::tensor_shards(sizes, 2), (std::vector<size_t>{0, 4, 6}));
  const std::vector<size_t> three = dist::tensor_shards(sizes, 3);
  ASSERT_EQ(three.size(), 4u);
  EXPECT_EQ(three.front(), 0u);
  EXPECT_EQ(three.back(), sizes.size());
  for (size_t i = 0; i + 1 < three.size(); ++i) EXPECT_LE(three[i], three[i + 1]);
  // More ranks than tensors: some ranks own none, every tensor has one owner.
  const std::vector<size_t> four = dist::tensor_shards({5, 5}, 4);
  ASSERT_EQ(four.size(), 5u);
  EXPECT_EQ(four.front(), 0u);
  EXPECT_EQ(four.back(), 2u);
  for (size_t i = 0; i + 1 < four.size(); ++i) EXPECT_LE(four[i], four[i + 1]);
}

// The backward's stages: the head first, then the layers from the last, the embedding last.
TEST(Dist, BackwardStagesFollowTheBackward) {
  const model::ModelConfig cfg = test_util::small_lact_config();
  std::vector<std::string> names;
  for (const auto& [name, shape] : model::parameter_shapes(cfg)) names.push_back(name);
  const std::vector<int> stages = dist::backward_stages(names, cfg.n_layers);
  ASSERT_EQ(stages.size(), names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    SCOPED_TRACE(names[i]);
    if (names[i] == "embed.weight") EXPECT_EQ(stages[i], cfg.n_layers + 1);
    else if (names[i].rfind("layers.0.", 0) == 0) EXPECT_EQ(stages[i], cfg.n_layers);
    else if (names[i].rfind("layers." + std::to_string(cfg.n_layers - 1) + ".", 0) == 0) EXPECT_EQ(stages[i], 1);
    else if (names[i] == "final_norm.weight" || names[i] == "lm_head.weight") EXPECT_EQ(stages[i], 0);
  }
  // The layout runs opposite to the backward: stages never increase along it.
  for (size_t i = 1; i < stages.size(); ++i) EXPECT_LE(stages[i], stages[i - 1]) << names[i];
}

// Every gradient element is in exactly one bucket, and a bucket is launched only once all its tensors are final.
void expect_buckets_cover_once(const std::vector<int64_t>& sizes, const std::vector<int>& stages,
                               const std::vector<dist::GradientBucket>& buckets) {
  int64_t total = 0;
  for (int64_t s : sizes) total += s;
  std::vector<int> tensor_hits(sizes.size(), 0), element_hits(size_t(total), 0);
  int previous_ready = -1;
  for (const dist::GradientBucket& b : buckets) {
    EXPECT_GE(b.ready, previous_ready) << "buckets out of launch order";
    previous_ready = b.ready;
    int64_t offset = 0;
    for (size_t i = 0; i < b.first; ++i) offset += sizes[i];
    EXPECT_EQ(b.offset, offset);
    int64_t count = 0;
    for (size_t i = b.first; i < b.last; ++i) {
      ++tensor_hits[i];
      count += sizes[i];
      EXPECT_LE(stages[i], b.ready) << "tensor " << i << " is final after stage " << stages[i];
    }
    EXPECT_EQ(b.count, count);
    for (int64_t e = b.offset; e < b.offset + b.count; ++e) ++element_hits[size_t(e)];
  }
  for (size_t i = 0; i < sizes.size(); ++i) EXPECT_EQ(tensor_hits[i], 1) << "tensor " << i;
  for (size_t e = 0; e < element_hits.size(); ++e) ASSERT_EQ(element_hits[e], 1) << "element " << e;
}

TEST(Dist, GradientBucketsCoverEveryGradientOnce) {
  // The small model's layout, with buckets from one tensor's worth to everything.
  const model::ModelConfig cfg = test_util::small_lact_config();
  std::vector<std::string> names;
  std::vector<int64_t> sizes;
  for (const auto& [name, shape] : model::parameter_shapes(cfg)) names.push_back(name), sizes.push_back(shape_numel(shape));
  const std::vector<int> stages = dist::backward_stages(names, cfg.n_layers);
  for (int64_t bytes : {int64_t(0), int64_t(1), int64_t(4096), int64_t(64) << 10, int64_t(25) << 20}) {
    SCOPED_TRACE(std::to_string(bytes) + " bytes per bucket");
    const std::vector<dist::GradientBucket> buckets = dist::plan_gradient_buckets(sizes, stages, bytes);
    expect_buckets_cover_once(sizes, stages, buckets);
    if (bytes == 0) {  // one all-reduce after the backward
      ASSERT_EQ(buckets.size(), 1u);
      EXPECT_EQ(buckets[0].ready, cfg.n_layers + 1);
    }
    if (bytes == 1) {  // one bucket per stage: head, each layer, embedding
      EXPECT_EQ(int64_t(buckets.size()), cfg.n_layers + 2);
      for (size_t k = 0; k < buckets.size(); ++k) EXPECT_EQ(buckets[k].ready, int(k));
    }
  }
  // Stages out of layout order still cover once (a bucket waits for its latest tensor).
  const std::vector<int64_t> odd_sizes = {3, 1, 4, 1, 5, 9, 2, 6};
  const std::vector<int> odd_stages = {2, 0, 3, 1, 1, 0, 2, 0};
  for (int64_t bytes : {int64_t(0), int64_t(1), int64_t(8), int64_t(20), int64_t(1000)})
    expect_buckets_cover_once(odd_sizes, odd_stages, dist::plan_gradient_buckets(odd_sizes, odd_stages, bytes));
}

TEST(Dist, FlatShardsPadToEqualCounts) {
  const dist::FlatShards s = dist::flat_shards(10, 4);  // 3 per rank, padded to 12
  EXPECT_EQ(s.per_rank, 3);
  EXPECT_EQ(s.padded, 12);
  std::vector<int> hits(10, 0);
  for (int r = 0; r < 4; ++r)
    for (int64_t e = s.begin(r); e < s.end(r, 10); ++e) ++hits[size_t(e)];
  EXPECT_EQ(hits, std::vector<int>(10, 1));
  EXPECT_EQ(s.end(3, 10), 10);
  const dist::FlatShards few = dist::flat_shards(5, 4);  // 2 per rank: rank 3 starts past the end and owns nothing
  EXPECT_EQ(few.begin(3), 6);
  EXPECT_EQ(few.end(3, 5), few.begin(3));
}

// Every collective of the TCP backend on 3 ranks (threads of this process): uneven segments, roots other than 0,
// and the fixed tree order of the sums (3 ranks: r0 + (r1 + r2)).
TEST(Dist, TcpCollectivesOnThreeRanks) {
  constexpr int kRanks = 3;
  const int port = test::test_port(5);
  std::vector<std::string> errors(kRanks);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < kRanks; ++rank)
    threads.emplace_back([&, rank] {
      try {
        auto c = dist::make_tcp_communicator(rank, kRanks, rank, "127.0.0.1", port);
        EXPECT_EQ(c->rank(), rank);
        EXPECT_STREQ(c->backend(), "tcp");
        // Rank r contributes 1, 2^-24, 2^-24 (r = 0, 1, 2) to every element: the tree's order shows in the result.
        const float mine = rank == 0 ? 1.0f : std::ldexp(1.0f, -24);
        std::vector<float> data(7, mine);
        c->all_reduce_sum(data.data(), int64_t(data.size()));
        for (float x : data) EXPECT_EQ(x, 1.0f + std::ldexp(1.0f, -23));
        // Reduce-scatter with uneven counts: rank r gets segment r.
        const std::vector<int64_t> counts = {3, 0, 2};
        std::vector<float> in(5), out(size_t(counts[size_t(rank)]));
        for (size_t e = 0; e < in.size(); ++e) in[e] = float(10 * rank + int(e));
        c->reduce_scatter_sum(in.data(), out.data(), counts);
        const int64_t first = rank == 0 ? 0 : rank == 1 ? 3 : 3;
        for (int64_t e = 0; e < counts[size_t(rank)]; ++e) EXPECT_EQ(out[size_t(e)], float(30 + 3 * (first + e)));
        // Gather to rank 2, broadcast from rank 1, max, barrier.
        std::vector<float> piece(size_t(rank + 1), float(rank)), all(6, -1.0f);
        c->gather(piece.data(), all.data(), {1, 2, 3}, 2);
        if (rank == 2) EXPECT_EQ(all, (std::vector<float>{0, 1, 1, 2, 2, 2}));
        int64_t value = rank == 1 ? 42 : 0;
        c->broadcast(&value, sizeof value, 1);
        EXPECT_EQ(value, 42);
        EXPECT_EQ(c->max_over_ranks(rank * 5), 10);
        c->barrier();
      } catch (const std::exception& e) {
        errors[size_t(rank)] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (int rank = 0; rank < kRanks; ++rank) EXPECT_EQ(errors[size_t(rank)], "") << "rank " << rank;
}

// Random micro-batches of a small model: the steps whose gradient the ranks split.
std::vector<model::Batch> random_micro(const model::ModelConfig& cfg, int64_t batches, int64_t batch, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> tokens(4096);
  for (auto& t : tokens) t = int32_t(rng.below(uint64_t(cfg.vocab_size)));
  std::vector<model::Batch> micro;
  const data::TokenSplit split = data::TokenSplit::view(tokens, uint32_t(cfg.vocab_size));
  for (int64_t i = 0; i < batches; ++i) micro.push_back(train::sample_batch(split, batch, cfg.seq_len, rng));
  return micro;
}

// The ranks' ranges combined as the communicator combines them equal the one-process gradient bit for bit, for
// every power-of-two rank count dividing the step (the reduction order of trainer.h).
TEST(Dist, RankRangesCombineToTheOneProcessGradientBitForBit) {
  const model::ModelConfig cfg = test_util::small_lact_config();
  model::Params<float> p = model::make_params<float>(cfg);
  model::init_params(cfg, p, 7);
  const std::vector<model::Batch> micro = random_micro(cfg, 2, 4, 11);  // 8 sequences
  std::vector<ag::Mat<float>> whole;
  const double loss = train::accumulate_gradients(cfg, p, micro, whole);
  for (int ranks : {2, 4, 8}) {
    SCOPED_TRACE(std::to_string(ranks) + " ranks");
    std::vector<std::vector<ag::Mat<float>>> parts(static_cast<size_t>(ranks));
    std::vector<double> terms;
    for (int r = 0; r < ranks; ++r) {
      const dist::SequenceRange s = dist::rank_sequences(8, r, ranks);
      const std::vector<double> t = train::accumulate_gradient_range(cfg, p, micro, s.first, s.last, parts[size_t(r)]);
      terms.insert(terms.end(), t.begin(), t.end());
    }
    EXPECT_EQ(train::sum_loss_terms(terms), loss);
    for (size_t i = 0; i < whole.size(); ++i) {
      std::vector<const float*> ptrs;
      for (int r = 0; r < ranks; ++r) ptrs.push_back(parts[size_t(r)][i].data.data());
      std::vector<float> sum(whole[i].data.size());
      dist::tree_sum(ptrs, sum.data(), int64_t(sum.size()));
      ASSERT_EQ(0, std::memcmp(sum.data(), whole[i].data.data(), sum.size() * sizeof(float))) << p.names[i];
    }
  }
}

// The sharded optimizer's norm (per-tensor sums on their owners, then summed in tensor order) is clip_grad_norm's.
TEST(Dist, ShardedNormPiecesEqualClipGradNorm) {
  Rng rng(3);
  std::vector<ag::Mat<float>> g;
  for (int64_t n : {5, 17, 3, 40}) {
    g.emplace_back(1, n);
    for (auto& x : g.back().data) x = float(rng.normal()) * 1e3f;
  }
  std::vector<ag::Mat<float>> whole = g, pieces = g;
  const double norm = train::clip_grad_norm(whole, 1.0);
  std::vector<double> ss = train::grad_sum_squares(pieces, 0, 2);
  const std::vector<double> rest = train::grad_sum_squares(pieces, 2, 4);
  ss.insert(ss.end(), rest.begin(), rest.end());
  const double sharded = train::global_norm(ss);
  EXPECT_EQ(sharded, norm);
  train::clip_to_norm(pieces, 0, 2, sharded, 1.0);
  train::clip_to_norm(pieces, 2, 4, sharded, 1.0);
  for (size_t i = 0; i < g.size(); ++i) EXPECT_EQ(pieces[i].data, whole[i].data);
}

// ---- mpirun ----

#define SKIP_WITHOUT_MPIRUN()                                         \
  do {                                                                \
    const std::string why = test_util::mpirun_missing();              \
    if (!why.empty()) GTEST_SKIP() << "skipped: " << why;             \
  } while (0)

// A scratch directory with the synthetic corpus in data/ and the small LaCT model in small.json.
struct Workspace {
  fs::path dir;
  explicit Workspace(const std::string& tag) {
    dir = test_util::temp_dir("dist_" + tag);
    fs::rename(test_util::make_corpus("dist_" + tag + "_corpus"), dir / "data");
    model::save_config((dir / "small.json").string(), test_util::small_lact_config());
  }
  ~Workspace() { fs::remove_all(dir); }
};

// Runs `ttt ARGS` in `w` with `np` ranks (np = 0: one plain process, no mpirun). Root in a container needs
// --allow-run-as-root; two cores need --oversubscribe. OMP_NUM_THREADS=1: two ranks share the cores.
test::RunResult run_ranks(const Workspace& w, int np, const std::string& args, const std::string& env = "",
                          int timeout_s = 180) {
  std::string cmd = "cd '" + w.dir.string() + "' && env OMP_NUM_THREADS=1 " + env + " timeout -k 2 " + std::to_string(timeout_s) + " ";
  if (np > 0) cmd += "mpirun -np " + std::to_string(np) + " --allow-run-as-root --oversubscribe --bind-to none ";
  cmd += std::string(TTT_CLI_PATH) + " " + args + " 2>&1";
  return test::run_shell(cmd);
}

int exit_code(const test::RunResult& r) { return WIFEXITED(r.status) ? WEXITSTATUS(r.status) : -1; }

// A short run: 4 sequences per step (2 micro-batches of 2), clipping active, validation at steps 2 and 3.
std::string train_args(const std::string& out, int steps, const std::string& extra = "",
                       const std::string& batch = "--batch 2 --accum 2") {
  return "train --config small.json --data data --out " + out + " --steps " + std::to_string(steps) + " " + batch +
         " --clip 0.05 --eval-every 2 --eval-batches 3 --ckpt-every 0 --log-every 1 "
         "--sample-tokens 0 " + extra;
}

// Losses, gradient norms and validation losses of every step, and the checkpoint's bytes, are the same (the gradient
// norms to `norm_rel` relative, when that is not 0).
void expect_same_run(const fs::path& a, const fs::path& b, double norm_rel = 0) {
  const auto ma = test_util::read_metrics(a.string()), mb = test_util::read_metrics(b.string());
  ASSERT_EQ(ma.size(), mb.size());
  for (size_t i = 0; i < ma.size(); ++i) {
    EXPECT_EQ(ma[i]["step"], mb[i]["step"]);
    EXPECT_EQ(ma[i]["loss"].get<double>(), mb[i]["loss"].get<double>()) << "step " << ma[i]["step"];
    const double na = ma[i]["grad_norm"].get<double>(), nb = mb[i]["grad_norm"].get<double>();
    if (norm_rel == 0) EXPECT_EQ(na, nb) << "step " << ma[i]["step"];
    else EXPECT_NEAR(na, nb, norm_rel * std::abs(na)) << "step " << ma[i]["step"];
    EXPECT_EQ(ma[i].contains("val_loss"), mb[i].contains("val_loss"));
    if (ma[i].contains("val_loss")) EXPECT_EQ(ma[i]["val_loss"].get<double>(), mb[i]["val_loss"].get<double>());
  }
  for (const char* f : {"model.safetensors", "optimizer.safetensors"})
    EXPECT_TRUE(read_file((a / "checkpoint" / f).string()) == read_file((b / "checkpoint" / f).string()))
        << f << " differs between " << a << " and " << b;
}

// Trains `steps` steps in one process (run "one") and on `np` ranks (run "ranks"), and checks that the two runs are
// the same; returns the ranks' output.
std::string expect_ranks_equal_one_process(const Workspace& w, int np, int steps) {
  const auto one = run_ranks(w, 0, train_args("one", steps));
  EXPECT_EQ(exit_code(one), 0) << one.output;
  const auto ranks = run_ranks(w, np, train_args("ranks", steps));
  EXPECT_EQ(exit_code(ranks), 0) << ranks.output;
  EXPECT_NE(ranks.output.find("data parallel over " + std::to_string(np) + " ranks (mpi)"), std::string::npos)
      << ranks.output;
  expect_same_run(w.dir / "one", w.dir / "ranks");
  return ranks.output;
}

TEST(DistMpi, TwoRanksEqualOneProcessBitForBit) {
  SKIP_WITHOUT_MPIRUN();
  Workspace w("dp2");
  const std::string out = expect_ranks_equal_one_process(w, 2, 3);
  // Rank 0 alone prints: one progress line per step.
  size_t lines = 0;
  for (size_t at = out.find("step 3/3 | loss"); at != std::string::npos; at = out.find("step 3/3 | loss", at + 1)) ++lines;
  EXPECT_EQ(lines, 1u) << out;
  // The communication the computation did not hide: on the progress lines and in the metrics of several ranks only.
  EXPECT_NE(out.find("| comm wait "), std::string::npos) << out;
  for (const auto& m : test_util::read_metrics((w.dir / "ranks").string())) {
    ASSERT_TRUE(m.contains("comm_wait_ms")) << m.dump();
    EXPECT_GE(m["comm_wait_ms"].get<double>(), 0.0);
  }
  for (const auto& m : test_util::read_metrics((w.dir / "one").string())) EXPECT_FALSE(m.contains("comm_wait_ms"));
}

TEST(DistMpi, FourRanksEqualOneProcessBitForBit) {
  SKIP_WITHOUT_MPIRUN();
  Workspace w("dp4");
  expect_ranks_equal_one_process(w, 4, 2);
}

TEST(DistMpi, ShardedOptimizerEqualsUnsharded) {
  SKIP_WITHOUT_MPIRUN();
  Workspace w("zero");
  const auto plain = run_ranks(w, 2, train_args("plain", 3));
  ASSERT_EQ(exit_code(plain), 0) << plain.output;
  const auto sharded = run_ranks(w, 2, train_args("sharded", 3, "--shard-optimizer"));
  ASSERT_EQ(exit_code(sharded), 0) << sharded.output;
  EXPECT_NE(sharded.output.find("optimizer sharded (ZeRO-1)"), std::string::npos) << sharded.output;
  // The checkpoint holds the whole state (every moment), the same bytes as without sharding.
  expect_same_run(w.dir / "plain", w.dir / "sharded");
  // A sharded run resumes sharded, and on one process.
  const auto more = run_ranks(w, 2, "train --resume sharded --steps 4 --sample-tokens 0 --shard-optimizer");
  ASSERT_EQ(exit_code(more), 0) << more.output;
  const auto more_plain = run_ranks(w, 0, "train --resume plain --steps 4 --sample-tokens 0");
  ASSERT_EQ(exit_code(more_plain), 0) << more_plain.output;
  expect_same_run(w.dir / "plain", w.dir / "sharded");
}

TEST(DistMpi, ResumeOnAnotherRankCount) {
  SKIP_WITHOUT_MPIRUN();
  Workspace w("resume");
  // Reference: one process for 2 steps, then resumed to 4 (the same schedule as the runs below).
  ASSERT_EQ(exit_code(run_ranks(w, 0, train_args("ref", 2))), 0);
  ASSERT_EQ(exit_code(run_ranks(w, 0, "train --resume ref --steps 4 --sample-tokens 0")), 0);
  // 2 ranks, then 1 process.
  const auto a = run_ranks(w, 2, train_args("two_one", 2));
  ASSERT_EQ(exit_code(a), 0) << a.output;
  const auto a2 = run_ranks(w, 0, "train --resume two_one --steps 4 --sample-tokens 0");
  ASSERT_EQ(exit_code(a2), 0) << a2.output;
  expect_same_run(w.dir / "ref", w.dir / "two_one");
  // 1 process, then 2 ranks.
  ASSERT_EQ(exit_code(run_ranks(w, 0, train_args("one_two", 2))), 0);
  const auto b2 = run_ranks(w, 2, "train --resume one_two --steps 4 --sample-tokens 0");
  ASSERT_EQ(exit_code(b2), 0) << b2.output;
  expect_same_run(w.dir / "ref", w.dir / "one_two");
}

// A signal to one rank stops every rank after the same step; rank 0 saves that step's checkpoint (the others wait
// for it before they exit) and the run resumes from it.
TEST(DistMpi, ASignalToOneRankStopsEveryRankWithACheckpoint) {
  SKIP_WITHOUT_MPIRUN();
  Workspace w("signal");
  const auto r = run_ranks(w, 2, train_args("run", 6), "TTT_TEST_RANK_FAULT=1:3:term");
  EXPECT_EQ(exit_code(r), 128 + SIGTERM) << r.output;
  EXPECT_NE(r.output.find("interrupted at step 4; continue with: ttt train --resume run"), std::string::npos) << r.output;
  EXPECT_EQ(train::load_checkpoint((w.dir / "run").string(), /*require_state=*/true).state.step, 4);
  const auto resumed = run_ranks(w, 2, "train --resume run --sample-tokens 0");
  ASSERT_EQ(exit_code(resumed), 0) << resumed.output;
  EXPECT_EQ(train::load_checkpoint((w.dir / "run").string(), true).state.step, 6);
}

// `ttt bench step` under mpirun times the data-parallel step (--batch: the global batch); rank 0 alone prints its
// JSON line, with the rank count and the communication time per timed step.
TEST(DistMpi, BenchStepRunsDataParallel) {
  SKIP_WITHOUT_MPIRUN();
  Workspace w("bench");
  const auto r = run_ranks(w, 2, "bench step --config small.json --batch 2 --repeats 2 --warmup 0");
  ASSERT_EQ(exit_code(r), 0) << r.output;
  std::vector<nlohmann::json> lines;
  std::istringstream in(r.output);
  for (std::string line; std::getline(in, line);)
    if (!line.empty() && line[0] == '{') lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), 1u) << r.output;
  const nlohmann::json& j = lines[0];
  EXPECT_EQ(j["ranks"], 2);
  EXPECT_EQ(j["batch"], 2);
  EXPECT_EQ(j["shard_optimizer"], false);
  ASSERT_EQ(j["comm_wait_ms"].size(), 2u) << j.dump();
  for (const auto& ms : j["comm_wait_ms"]) EXPECT_GE(ms.get<double>(), 0.0);
  EXPECT_TRUE(j["finite"].get<bool>()) << j.dump();
  // One process: no data-parallel fields.
  const auto one = run_ranks(w, 0, "bench step --config small.json --batch 2 --repeats 1 --warmup 0");
  ASSERT_EQ(exit_code(one), 0) << one.output;
  EXPECT_EQ(one.output.find("comm_wait_ms"), std::string::npos) << one.output;
  // A global batch the ranks cannot split fails on every rank.
  const auto bad = run_ranks(w, 2, "bench step --config small.json --batch 3 --repeats 1 --warmup 0", "", 60);
  EXPECT_NE(exit_code(bad), 0) << bad.output;
  EXPECT_NE(bad.output.find("--batch 3 (the global batch) cannot be split evenly over 2 ranks"), std::string::npos)
      << bad.output;
}

// Skips a two-GPU test, saying why, where two GPUs are not visible (gpus_missing). They launch with mpirun where it
// exists, else torchrun-style: run_gpu_ranks.
#define SKIP_WITHOUT_TWO_GPUS()                           \
  do {                                                    \
    const std::string why = gpus_missing(2);              \
    if (!why.empty()) GTEST_SKIP() << "skipped: " << why; \
  } while (0)

// `np` ranks of `ttt ARGS` in `w`: under mpirun, or without it started torchrun-style (RANK, WORLD_SIZE, LOCAL_RANK,
// MASTER_ADDR/PORT: the TCP bootstrap), each launch on its own port. np = 0: one plain process.
test::RunResult run_gpu_ranks(const Workspace& w, int np, const std::string& args, const std::string& env,
                              int timeout_s = 180) {
  if (np == 0 || test_util::mpirun_missing().empty()) return run_ranks(w, np, args, env, timeout_s);
  static int launches = 0;
  return test::run_torchrun(w.dir.string(), np, test::test_port(100 + launches++), args, env, timeout_s);
}

// NVLink multicast stays off on the machines these tests run on (NCCL_NVLS_ENABLE=0).
const std::string kGpuFlags = "--device cuda --precision fp32";
const std::string kNcclEnv = "NCCL_NVLS_ENABLE=0";

// Two GPUs (NCCL) train what one GPU trains: the same batches, the gradient summed in NCCL's order instead of one
// GPU's, so equal to rounding (fp32 products). Needs a CUDA build, mpirun and two GPUs; skipped otherwise.
TEST(DistMpi, TwoGpusMatchOneGpu) {
  SKIP_WITHOUT_TWO_GPUS();
  Workspace w("gpu2");
  const auto one = run_gpu_ranks(w, 0, train_args("one", 3, kGpuFlags), kNcclEnv);
  ASSERT_EQ(exit_code(one), 0) << one.output;
  const auto two = run_gpu_ranks(w, 2, train_args("two", 3, kGpuFlags), kNcclEnv);
  ASSERT_EQ(exit_code(two), 0) << two.output;
  const auto ma = test_util::read_metrics((w.dir / "one").string()), mb = test_util::read_metrics((w.dir / "two").string());
  ASSERT_EQ(ma.size(), mb.size());
  for (size_t i = 0; i < ma.size(); ++i)
    for (const char* key : {"loss", "grad_norm", "val_loss"})
      if (ma[i].contains(key))
        EXPECT_NEAR(mb[i][key].get<double>(), ma[i][key].get<double>(), 1e-4 * std::abs(ma[i][key].get<double>()))
            << key << " at step " << ma[i]["step"];
}

// The gradient all-reduced in small buckets during the last micro-batch's backward (one per stage: head, each layer,
// embedding) gives the bits of one all-reduce after the backward: with two ranks each sum is one commutative addition,
// so only a bucket missed, summed twice or read before its gradient was final would differ.
TEST(DistMpi, TwoGpusBucketedAllReduceEqualsOneShot) {
  SKIP_WITHOUT_TWO_GPUS();
  Workspace w("gpu_buckets");
  const auto one_shot = run_gpu_ranks(w, 2, train_args("one_shot", 3, kGpuFlags + " --grad-bucket-mb 0"), kNcclEnv);
  ASSERT_EQ(exit_code(one_shot), 0) << one_shot.output;
  const auto bucketed = run_gpu_ranks(w, 2, train_args("bucketed", 3, kGpuFlags + " --grad-bucket-mb 0.001"), kNcclEnv);
  ASSERT_EQ(exit_code(bucketed), 0) << bucketed.output;
  expect_same_run(w.dir / "one_shot", w.dir / "bucketed");
  EXPECT_NE(bucketed.output.find("| comm wait "), std::string::npos) << bucketed.output;
  for (const auto& m : test_util::read_metrics((w.dir / "bucketed").string())) EXPECT_TRUE(m.contains("comm_wait_ms"));
}

// ZeRO-1 on the GPUs equals the unsharded GPUs: the gradient reduce-scattered instead of all-reduced (the same sums
// with two ranks), each rank's slice updated, the weights all-gathered. The gradient norm is the sum of the ranks'
// slices' sums of squares, so equal to double rounding rather than in its bits; the clipping factor is rounded to
// float, so the weights and moments are the same bits. Checkpoints hold the whole state, and resume on 2 ranks
// (sharded again) and on one GPU.
TEST(DistMpi, TwoGpusShardedOptimizerEqualsUnsharded) {
  SKIP_WITHOUT_TWO_GPUS();
  Workspace w("gpu_zero");
  const auto plain = run_gpu_ranks(w, 2, train_args("plain", 3, kGpuFlags), kNcclEnv);
  ASSERT_EQ(exit_code(plain), 0) << plain.output;
  const auto sharded = run_gpu_ranks(w, 2, train_args("sharded", 3, kGpuFlags + " --shard-optimizer"), kNcclEnv);
  ASSERT_EQ(exit_code(sharded), 0) << sharded.output;
  EXPECT_NE(sharded.output.find("optimizer sharded (ZeRO-1)"), std::string::npos) << sharded.output;
  expect_same_run(w.dir / "plain", w.dir / "sharded", 1e-12);
  // One GPU resumes either checkpoint alike (they are the same files).
  // (copy_symlinks: the run's `checkpoint` link is relative, and stays a link.)
  const auto copy = fs::copy_options::recursive | fs::copy_options::copy_symlinks;
  fs::copy(w.dir / "plain", w.dir / "plain_one", copy);
  fs::copy(w.dir / "sharded", w.dir / "sharded_one", copy);
  for (const char* run : {"plain_one", "sharded_one"}) {
    const auto r = run_gpu_ranks(w, 0, std::string("train --resume ") + run + " --steps 4 --sample-tokens 0", kNcclEnv);
    ASSERT_EQ(exit_code(r), 0) << r.output;
  }
  expect_same_run(w.dir / "plain_one", w.dir / "sharded_one", 1e-12);
  // Two ranks resume sharded from the whole state (re-sliced), as the unsharded run resumes.
  const auto more = run_gpu_ranks(w, 2, "train --resume sharded --steps 4 --sample-tokens 0 --shard-optimizer", kNcclEnv);
  ASSERT_EQ(exit_code(more), 0) << more.output;
  const auto more_plain = run_gpu_ranks(w, 2, "train --resume plain --steps 4 --sample-tokens 0", kNcclEnv);
  ASSERT_EQ(exit_code(more_plain), 0) << more_plain.output;
  expect_same_run(w.dir / "plain", w.dir / "sharded", 1e-12);
}

// A bad setup ends every rank: mpirun exits non-zero with the message, without a hang.
void expect_job_fails(const test::RunResult& r, const std::string& word, double seconds, double limit_s) {
  ASSERT_NE(r.status, -1);
  ASSERT_TRUE(WIFEXITED(r.status)) << r.output;
  EXPECT_NE(exit_code(r), 0) << r.output;
  EXPECT_NE(exit_code(r), 124) << "timed out (hang)\n" << r.output;
  EXPECT_NE(r.output.find(word), std::string::npos) << "message lacks '" << word << "':\n" << r.output;
  EXPECT_LT(seconds, limit_s) << r.output;
}

double timed(const std::function<test::RunResult()>& f, test::RunResult& out) {
  const auto t0 = std::chrono::steady_clock::now();
  out = f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

TEST(DistMpi, RanksNotDividingTheBatchFailCleanly) {
  SKIP_WITHOUT_MPIRUN();
  Workspace w("divide");
  test::RunResult r;
  const double s = timed([&] { return run_ranks(w, 2, train_args("run", 2, "", "--batch 3 --accum 1"), "", 60); }, r);
  expect_job_fails(r, "3 sequences per step cannot be split evenly over 2 ranks", s, 50);
  EXPECT_FALSE(fs::exists(w.dir / "run" / "checkpoint"));
}

TEST(DistMpi, AMissingGpuEndsEveryRank) {
  SKIP_WITHOUT_MPIRUN();
  // --device cuda without a CUDA build or without a GPU (this test's machines): every rank ends with a message.
  if (backend::device_available("cuda")) GTEST_SKIP() << "skipped: this machine has a GPU";
  Workspace w("device");
  test::RunResult r;
  const double s = timed([&] { return run_ranks(w, 2, train_args("run", 2, "--device cuda"), "", 60); }, r);
  expect_job_fails(r, "--device cuda", s, 50);
}

TEST(DistMpi, ARankDyingEndsEveryRank) {
  SKIP_WITHOUT_MPIRUN();
  Workspace w("die");
  test::RunResult r;
  const double s = timed([&] { return run_ranks(w, 2, train_args("run", 4), "TTT_TEST_RANK_FAULT=1:2:exit", 90); }, r);
  ASSERT_TRUE(WIFEXITED(r.status)) << r.output;
  EXPECT_NE(exit_code(r), 0) << r.output;
  EXPECT_NE(exit_code(r), 124) << "timed out (hang)\n" << r.output;
  EXPECT_LT(s, 80) << r.output;
  // mpirun says that a process exited (and names it).
  EXPECT_NE(r.output.find("exited"), std::string::npos) << r.output;
}

TEST(DistMpi, AStuckRankTimesOutWithAMessage) {
  SKIP_WITHOUT_MPIRUN();
  Workspace w("hang");
  test::RunResult r;
  const double s =
      timed([&] { return run_ranks(w, 2, train_args("run", 4), "TTT_DIST_TIMEOUT=3 TTT_TEST_RANK_FAULT=1:1:hang", 90); }, r);
  expect_job_fails(r, "timed out", s, 80);
  EXPECT_NE(r.output.find("rank 0 of 2 (mpi)"), std::string::npos) << r.output;
}

// A GPU rank that stops responding while the other's buckets are in flight: every rank ends with a message.
TEST(DistMpi, AStuckGpuRankTimesOutWithAMessage) {
  SKIP_WITHOUT_TWO_GPUS();
  Workspace w("gpu_hang");
  test::RunResult r;
  const double s = timed([&] {
    // 60 s: without mpirun (torchrun-style) the stuck rank itself is ended by `timeout`, as a launcher would.
    return run_gpu_ranks(w, 2, train_args("run", 4, kGpuFlags + " --grad-bucket-mb 0.001"),
                         kNcclEnv + " TTT_DIST_TIMEOUT=5 TTT_TEST_RANK_FAULT=1:1:hang", 60);
  }, r);
  expect_job_fails(r, "timed out", s, 70);
}

TEST(DistMpi, BadTimeoutIsAnError) {
  SKIP_WITHOUT_MPIRUN();
  Workspace w("badtimeout");
  test::RunResult r;
  const double s = timed([&] { return run_ranks(w, 2, train_args("run", 2), "TTT_DIST_TIMEOUT=soon", 60); }, r);
  expect_job_fails(r, "TTT_DIST_TIMEOUT='soon'", s, 50);
}

// ---- torchrun-style environment (TCP through rank 0; no MPI needed) ----

TEST(DistTcp, TwoRanksEqualOneProcessBitForBit) {
  Workspace w("tcp2");
  const auto one = run_ranks(w, 0, train_args("one", 3));
  ASSERT_EQ(exit_code(one), 0) << one.output;
  const auto two = test::run_torchrun(w.dir.string(), 2, test::test_port(1), train_args("two", 3, "--shard-optimizer"));
  ASSERT_EQ(exit_code(two), 0) << two.output;
  EXPECT_NE(two.output.find("data parallel over 2 ranks (tcp)"), std::string::npos) << two.output;
  EXPECT_NE(two.output.find("rank 1 exit 0"), std::string::npos) << two.output;
  expect_same_run(w.dir / "one", w.dir / "two");
}

// A fault on rank 1 of 2 (`env`: TTT_TEST_RANK_FAULT, ...) ends rank 0 in time, with `word` in its message.
test::RunResult expect_tcp_fault_ends_job(const std::string& tag, int port_offset, const std::string& env,
                                          int timeout_s, const std::string& word) {
  Workspace w(tag);
  test::RunResult r;
  const double s = timed([&] { return test::run_torchrun(w.dir.string(), 2, test::test_port(port_offset), train_args("run", 4), env, timeout_s); }, r);
  expect_job_fails(r, word, s, 80);
  EXPECT_NE(r.output.find("rank 0 of 2 (tcp)"), std::string::npos) << r.output;
  return r;
}

TEST(DistTcp, ARankDyingEndsEveryRank) {
  const auto r = expect_tcp_fault_ends_job("tcpdie", 2, "TTT_TEST_RANK_FAULT=1:2:exit", 90,
                                           "the connection closed: the rank ended");
  EXPECT_NE(r.output.find("rank 1 exit 3"), std::string::npos) << r.output;
}

TEST(DistTcp, AStuckRankTimesOutWithAMessage) {
  // The stuck rank never returns (a launcher would end it; here `timeout` does: SIGTERM after 15 s, which the
  // training loop only notes, then SIGKILL).
  expect_tcp_fault_ends_job("tcphang", 3, "TTT_DIST_TIMEOUT=3 TTT_TEST_RANK_FAULT=1:1:hang", 15, "TTT_DIST_TIMEOUT");
}

TEST(DistTcp, AMissingRankTimesOutWithAMessage) {
  Workspace w("tcpalone");
  test::RunResult r;
  // Rank 0 of 2 alone: nobody connects.
  const double s = timed([&] {
    return run_ranks(w, 0, train_args("run", 2),
                     "TTT_DIST_TIMEOUT=2 RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(test::test_port(4)),
                     60);
  }, r);
  expect_job_fails(r, "waiting for the other ranks to connect", s, 50);
}

TEST(DistTcp, IncompleteEnvironmentIsRefused) {
  Workspace w("tcpenv");
  const auto r = run_ranks(w, 0, train_args("run", 2), "RANK=1 WORLD_SIZE=2 LOCAL_RANK=1", 60);
  ASSERT_TRUE(WIFEXITED(r.status)) << r.output;
  EXPECT_EQ(exit_code(r), 1) << r.output;
  EXPECT_NE(r.output.find("MASTER_ADDR=unset MASTER_PORT=unset"), std::string::npos) << r.output;
  const auto bad_rank = run_ranks(w, 0, train_args("run", 2), "RANK=2 WORLD_SIZE=2 MASTER_ADDR=x MASTER_PORT=1", 60);
  EXPECT_EQ(exit_code(bad_rank), 1) << bad_rank.output;
  EXPECT_NE(bad_rank.output.find("WORLD_SIZE=2 but RANK=2"), std::string::npos) << bad_rank.output;
}

}  // namespace
