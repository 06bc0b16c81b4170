// Streaming decode: teacher-forced logits equal the full-sequence forward across chunk boundaries,
// and the recurrent state does not grow.
#include <gtest/gtest.h>

#include <cmath>

#include "core/rng.h"
#include "infer/generate.h"
#include "infer/stream.h"

using namespace ttt;
using namespace ttt::model;

namespace {

ModelConfig small(const std::string& arch) {
  ModelConfig c = preset(arch == "lact" ? "tiny" : arch);
  c.dim = 16;
  c.n_layers = 2;
  c.n_attn_heads = 2;
  c.n_mem_heads = 2;
  c.chunk = 8;
  c.window = 6;
  c.seq_len = 37;  // four full chunks and a partial one
  c.mlp_hidden = 32;
  c.lr_init = 0.05;  // visible memory updates
  return c;
}

double parity_error(const ModelConfig& c, const std::vector<size_t>& block_sizes) {
  Params<float> p = make_params<float>(c);
  init_params(c, p, 11);
  Rng r(2);
  const int64_t N = c.seq_len;
  Batch b;
  b.sequences = 1;
  b.len = N;
  for (int64_t i = 0; i < N; ++i) {
    b.inputs.push_back(int32_t(r.below(256)));
    b.targets.push_back(0);
  }
  ag::Mat<float> full = forward<float>(c, p, b, nullptr, false, true).logits;
  infer::StreamingModel sm(c, p);
  ag::Mat<float> streamed(N, c.vocab_size);
  size_t pos = 0, bi = 0;
  while (pos < size_t(N)) {
    size_t n = std::min(block_sizes[bi++ % block_sizes.size()], size_t(N) - pos);
    ag::Mat<float> lg = sm.feed(std::vector<int32_t>(b.inputs.begin() + int64_t(pos), b.inputs.begin() + int64_t(pos + n)));
    std::copy(lg.data.begin(), lg.data.end(), streamed.row(int64_t(pos)));
    pos += n;
  }
  double num = 0, den = 0;
  for (size_t i = 0; i < full.data.size(); ++i) {
    num += std::pow(double(full.data[i]) - streamed.data[i], 2);
    den += std::pow(double(full.data[i]), 2);
  }
  return std::sqrt(num / den);
}

}  // namespace

TEST(Streaming, TokenByTokenMatchesFullForward) {
  EXPECT_LE(parity_error(small("lact"), {1}), 1e-4);
}

TEST(Streaming, ChunkedPrefillMatchesFullForward) {
  EXPECT_LE(parity_error(small("lact"), {5, 13, 1, 8}), 1e-4);
}

TEST(Streaming, MuonPreNormLowRankMatchesFullForward) {
  ModelConfig c = small("lact");
  c.muon = true;
  c.weight_norm = engine::WeightNorm::Pre;
  c.low_rank_init = true;
  c.low_rank_rank = 4;
  EXPECT_LE(parity_error(c, {3}), 1e-4);
}

TEST(Streaming, TitansMatchesFullForward) {
  ModelConfig c = small("titans");
  c.chunk = 4;
  EXPECT_LE(parity_error(c, {1, 6}), 1e-4);
}

TEST(Streaming, StateSizeIsConstant) {
  ModelConfig c = small("lact");
  Params<float> p = make_params<float>(c);
  init_params(c, p, 1);
  infer::StreamingModel sm(c, p);
  sm.feed(std::vector<int32_t>(10, 65));
  const size_t bytes = sm.state_bytes();
  for (int i = 0; i < 50; ++i) sm.feed({66});
  EXPECT_EQ(sm.state_bytes(), bytes);
  EXPECT_EQ(sm.position(), 60);
}

TEST(Generate, DeterministicGivenSeedAndGreedyIsArgmax) {
  ModelConfig c = small("lact");
  Params<float> p = make_params<float>(c);
  init_params(c, p, 1);
  infer::SampleOptions o;
  o.seed = 5;
  o.top_k = 20;
  o.top_p = 0.9;
  auto a = infer::generate(c, p, {72, 105}, 20, o);
  auto b = infer::generate(c, p, {72, 105}, 20, o);
  EXPECT_EQ(a, b);
  EXPECT_EQ(a.size(), 20u);
  o.temperature = 0;
  auto g = infer::generate(c, p, {72, 105}, 3, o);
  infer::StreamingModel sm(c, p);
  ag::Mat<float> lg = sm.feed({72, 105});
  const float* last = lg.row(1);
  EXPECT_EQ(g[0], int32_t(std::max_element(last, last + c.vocab_size) - last));
  EXPECT_THROW(infer::generate(c, p, {72}, 5, infer::SampleOptions{1.0, 0, 1.5, 0}), Error);
}

TEST(Streaming, TntAcrossChunkAndShardBoundaries) {
  ModelConfig c = small("tnt");
  c.global_chunk = 8;
  c.local_chunks = {2, 3};
  c.shard = 10;  // not a multiple of 3: the last local chunk of each shard is short
  c.titans_base_lr = 0.3;
  EXPECT_LE(parity_error(c, {1}), 1e-4);
  EXPECT_LE(parity_error(c, {7, 4, 1}), 1e-4);
}

TEST(Streaming, TntWithoutGlobalOrQkProjection) {
  ModelConfig c = small("tnt");
  c.global_chunk = 8;
  c.local_chunks = {4};
  c.shard = 12;
  c.use_global = false;
  EXPECT_LE(parity_error(c, {1}), 1e-4);
  c.use_global = true;
  c.qk_proj = false;
  EXPECT_LE(parity_error(c, {5}), 1e-4);
}
