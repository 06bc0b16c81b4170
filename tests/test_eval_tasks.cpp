// The evaluations of `ttt eval` beyond the default windows: --full (the whole split with a sliding stride),
// the recall tasks --task mqar|niah (generation, scoring, the streamer predictor) and the NIAH heat map PNG.
#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>

#include "backend/registry.h"
#include "backend/engine.h"
#include "cli_test_util.h"
#include "core/file_io.h"
#include "core/png.h"
#include "core/progress.h"
#include "core/rng.h"
#include "data/tokens.h"
#include "infer/stream.h"
#include "model/model.h"
#include "train/checkpoint.h"
#include "train/evaluate.h"
#include "train/optimizer.h"
#include "train/recall_tasks.h"
#include "train_test_util.h"

using namespace ttt;
using ttt::test::expect_clean_failure;
using ttt::test::run_cli;

namespace {

std::vector<int32_t> random_tokens(int64_t n, int64_t vocab, uint64_t seed) {
  Rng r(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = int32_t(r.below(uint64_t(vocab)));
  return t;
}

model::Params<float> init_model(const model::ModelConfig& cfg, uint64_t seed) {
  model::Params<float> p = model::make_params<float>(cfg);
  model::init_params(cfg, p, seed);
  return p;
}

}  // namespace

// ---- --full: sliding windows ----

// Every target 1 .. n-1 is scored exactly once; windows start at multiples of the stride (the first at 0); every
// target of a later window has at least context - stride + 1 tokens before it in its window.
TEST(FullEval, SlidingWindowsScoreEveryTargetOnceWithLeftContext) {
  for (int64_t n : {2, 3, 17, 100, 101, 257}) {
    for (int64_t C : {1, 4, 16, 40, 300}) {
      for (int64_t S : {int64_t(1), std::max<int64_t>(1, C / 3), C / 2 > 0 ? C / 2 : 1, C}) {
        SCOPED_TRACE("n " + std::to_string(n) + " C " + std::to_string(C) + " S " + std::to_string(S));
        const auto ws = train::sliding_windows(n, C, S);
        std::vector<int> scored(size_t(n), 0);
        for (size_t k = 0; k < ws.size(); ++k) {
          const auto& w = ws[k];
          EXPECT_EQ(w.start, int64_t(k) * S);
          EXPECT_GE(w.len, 1);
          EXPECT_LE(w.len, C);
          EXPECT_LE(w.start + w.len, n - 1);
          EXPECT_GE(w.first_scored, 0);
          EXPECT_LT(w.first_scored, w.len);
          for (int64_t i = w.first_scored; i < w.len; ++i) {
            scored[size_t(w.start + i + 1)] += 1;
            if (k > 0) EXPECT_GE(i + 1, C - S + 1) << "target " << w.start + i + 1;  // tokens before the target
          }
        }
        EXPECT_EQ(scored[0], 0);
        for (int64_t t = 1; t < n; ++t) EXPECT_EQ(scored[size_t(t)], 1) << "target " << t;
      }
    }
  }
}

TEST(FullEval, StrideEqualToContextGivesDisjointWindows) {
  const int64_t n = 1000, C = 64;
  const auto ws = train::sliding_windows(n, C, C);
  ASSERT_EQ(int64_t(ws.size()), (n - 1 + C - 1) / C);
  int64_t next = 0;
  for (const auto& w : ws) {
    EXPECT_EQ(w.start, next);  // each window begins where the previous ended: no overlap, no gap
    EXPECT_EQ(w.first_scored, 0);
    next = w.start + w.len;
  }
  EXPECT_EQ(next, n - 1);
  EXPECT_EQ(ws.back().len, (n - 1) % C);
}

TEST(FullEval, RejectsBadStrideAndTooFewTokens) {
  EXPECT_THROW(train::sliding_windows(100, 16, 0), Error);
  EXPECT_THROW(train::sliding_windows(100, 16, 17), Error);
  EXPECT_THROW(train::sliding_windows(1, 16, 8), Error);
  EXPECT_THROW(train::sliding_windows(100, 0, 1), Error);
}

// The full evaluation equals a brute force: for each target, the model's forward on the earliest window (start a
// multiple of the stride, context tokens or up to the end) that contains it, summed in target order. Exactly.
TEST(FullEval, EqualsBruteForceForwardExactly) {
  const model::ModelConfig cfg = test_util::small_lact_config();
  const model::Params<float> p = init_model(cfg, 3);
  std::vector<int32_t> tokens = random_tokens(203, cfg.vocab_size, 5);
  for (size_t i = 0; i < tokens.size(); i += 37) tokens[i] = data::kDocSeparator;  // separators cover 0 bytes
  const int64_t C = 24, S = 10, n = int64_t(tokens.size());

  std::map<int64_t, std::vector<double>> window_losses;  // by window start
  double sum = 0;
  int64_t bytes = 0;
  for (int64_t t = 1; t < n; ++t) {
    int64_t b = 0;
    while (b + std::min(C, n - 1 - b) < t) b += S;
    const int64_t len = std::min(C, n - 1 - b);
    if (!window_losses.count(b)) {
      model::Batch one;
      one.sequences = 1;
      one.len = len;
      one.inputs.assign(tokens.begin() + b, tokens.begin() + b + len);
      one.targets.assign(tokens.begin() + b + 1, tokens.begin() + b + len + 1);
      window_losses[b] = model::forward<float>(cfg, p, one, nullptr, true, false).token_loss;
    }
    sum += window_losses[b][size_t(t - b - 1)];
    bytes += tokens[size_t(t)] != data::kDocSeparator;
  }

  train::FullEvalOptions fo;
  fo.context = C;
  fo.stride = S;
  fo.batch = 3;
  fo.token_bytes.assign(size_t(cfg.vocab_size), 1);  // byte-like tokens: 1 byte each, the separator none
  fo.token_bytes[size_t(data::kDocSeparator)] = 0;
  const data::TokenSplit split = data::TokenSplit::view(tokens, uint32_t(cfg.vocab_size));
  for (int64_t per_call : {1, 3, 8}) {
    const train::FullEvalResult r = train::evaluate_full_with(
        [&](const model::Batch& b) { return train::cpu_token_losses(cfg, p, b); }, cfg.vocab_size, cfg.seq_len, split,
        fo, per_call);
    EXPECT_EQ(r.tokens, n - 1);
    EXPECT_EQ(r.loss_sum, sum) << "windows per call " << per_call;
    EXPECT_EQ(r.loss, sum / double(n - 1));
    EXPECT_EQ(r.bytes, uint64_t(bytes));
    EXPECT_DOUBLE_EQ(r.bits_per_byte, sum / std::log(2.0) / double(bytes));
    EXPECT_DOUBLE_EQ(r.perplexity, std::exp(sum / double(n - 1)));
  }
  // Without a byte table: the same loss, no bits per byte (NaN, never a per-token figure under its name).
  train::FullEvalOptions no_table = fo;
  no_table.token_bytes.clear();
  const train::FullEvalResult u = train::evaluate_full_with(
      [&](const model::Batch& b) { return train::cpu_token_losses(cfg, p, b); }, cfg.vocab_size, cfg.seq_len, split,
      no_table, 3);
  EXPECT_EQ(u.loss_sum, sum);
  EXPECT_FALSE(u.has_bpb());
  EXPECT_EQ(u.bytes, 0u);
  // Through the CPU step engine (the path of `ttt eval --full`): the same sums.
  model::Params<float> q = p;
  auto engine = backend::make_step_engine("cpu", cfg);
  engine->attach(q, nullptr);
  std::vector<int64_t> progress;
  const train::FullEvalResult e = train::evaluate_full(*engine, split, fo,
                                                       [&](int64_t done, int64_t total) {
                                                         EXPECT_EQ(total, n - 1);
                                                         progress.push_back(done);
                                                       });
  EXPECT_EQ(e.loss_sum, sum);
  ASSERT_FALSE(progress.empty());
  EXPECT_EQ(progress.back(), n - 1);
  EXPECT_TRUE(std::is_sorted(progress.begin(), progress.end()));
}

// ---- Recall tasks ----

namespace {

std::string text_of(const std::vector<int32_t>& tokens, int64_t begin, int64_t end) {
  return data::decode_bytes(std::vector<int32_t>(tokens.begin() + begin, tokens.begin() + end));
}

const train::Encode kBytes = data::encode_bytes;

// A perfect recaller that reads only the past: after position p it predicts the token that followed the longest
// earlier match of the text ending at p (an induction head with unbounded memory).
class InductionOracle final : public train::NextTokenPredictor {
 public:
  std::vector<int32_t> predict(const std::vector<int32_t>& tokens, const std::vector<int64_t>& positions) override {
    std::vector<int32_t> out;
    for (int64_t p : positions) {
      int64_t best_len = 0;
      int32_t best = 0;
      for (int64_t j = 0; j < p; ++j) {  // an earlier occurrence ending at j, followed by tokens[j + 1]
        int64_t len = 0;
        while (len <= j && tokens[size_t(j - len)] == tokens[size_t(p - len)]) ++len;
        if (len >= best_len) {
          best_len = len;
          best = tokens[size_t(j + 1)];
        }
      }
      out.push_back(best);
    }
    return out;
  }
};

// Guesses a random digit: it knows the answers are digits, nothing more.
class UniformDigits final : public train::NextTokenPredictor {
 public:
  std::vector<int32_t> predict(const std::vector<int32_t>&, const std::vector<int64_t>& positions) override {
    std::vector<int32_t> out;
    for (size_t i = 0; i < positions.size(); ++i) out.push_back(int32_t('0' + rng_.below(10)));
    return out;
  }

 private:
  Rng rng_{42};
};

// Val-like text: sentences of words, no digits (so a digit in an example comes from the task).
std::vector<int32_t> haystack_tokens(int64_t n) {
  const char* words[] = {"the ", "kernel ", "maps ", "a ", "page ", "and ", "frees ", "buffer. "};
  Rng r(9);
  std::string s;
  while (int64_t(s.size()) < n) s += words[r.below(8)];
  return data::encode_bytes(s.substr(0, size_t(n)));
}

}  // namespace

TEST(RecallTasks, MqarIsDeterministicAndWellFormed) {
  train::MqarOptions mo;
  mo.pairs = 12;
  mo.context = 200;
  mo.examples = 6;
  mo.seed = 7;
  const auto a = train::make_mqar(mo, kBytes);
  const auto b = train::make_mqar(mo, kBytes);
  ASSERT_EQ(a.size(), 6u);
  for (size_t e = 0; e < a.size(); ++e) {
    EXPECT_EQ(a[e].tokens, b[e].tokens);
    ASSERT_EQ(int64_t(a[e].tokens.size()), mo.context);
    ASSERT_EQ(int64_t(a[e].answers.size()), mo.pairs);
    // The bindings: "key:value " x pairs at the start, keys distinct, 3 letters, values 2 digits.
    std::map<std::string, std::string> binding;
    for (int64_t i = 0; i < mo.pairs; ++i) {
      const std::string bind = text_of(a[e].tokens, i * 7, (i + 1) * 7);
      ASSERT_EQ(bind.size(), 7u);
      EXPECT_TRUE(std::all_of(bind.begin(), bind.begin() + 3, [](char c) { return c >= 'a' && c <= 'z'; })) << bind;
      EXPECT_EQ(bind.substr(3, 1), ":");
      EXPECT_TRUE(std::isdigit(bind[4]) && std::isdigit(bind[5])) << bind;
      EXPECT_EQ(bind[6], ' ');
      EXPECT_TRUE(binding.emplace(bind.substr(0, 3), bind.substr(4, 2)).second) << "duplicate key " << bind;
    }
    // Each answer: the value bound to the key just before its ':'; every key queried once.
    std::set<std::string> queried;
    for (const auto& s : a[e].answers) {
      ASSERT_EQ(s.end - s.begin, 2);
      const std::string key = text_of(a[e].tokens, s.begin - 4, s.begin - 1);
      EXPECT_EQ(text_of(a[e].tokens, s.begin - 1, s.begin), ":");
      ASSERT_TRUE(binding.count(key)) << key;
      EXPECT_EQ(text_of(a[e].tokens, s.begin, s.end), binding[key]);
      queried.insert(key);
    }
    EXPECT_EQ(int64_t(queried.size()), mo.pairs);
    EXPECT_EQ(a[e].answers.back().end + 1, mo.context);  // the queries end the example (its trailing space)
  }
  EXPECT_NE(a[0].tokens, a[1].tokens);
  // An example depends on the seed and its index only.
  train::MqarOptions more = mo;
  more.examples = 9;
  EXPECT_EQ(train::make_mqar(more, kBytes)[5].tokens, a[5].tokens);
  train::MqarOptions other = mo;
  other.seed = 8;
  EXPECT_NE(train::make_mqar(other, kBytes)[0].tokens, a[0].tokens);
}

TEST(RecallTasks, NiahIsDeterministicAndWellFormed) {
  train::NiahOptions no;
  no.depths = {0, 0.3, 1};
  no.lengths = {300, 900};
  no.examples = 3;
  no.seed = 11;
  const std::vector<int32_t> hay = haystack_tokens(2000);
  train::validate_niah(no, kBytes, int64_t(hay.size()));
  const int64_t fixed = train::niah_fixed_tokens(no.key_digits, kBytes);
  EXPECT_EQ(fixed, 19 + 6 + 15 + 43 + 6);
  for (int64_t len : no.lengths)
    for (int64_t e = 0; e < no.examples; ++e) {
      std::string key;
      for (double d : no.depths) {
        const auto ex = train::make_niah_example(no, kBytes, hay, d, len, e);
        EXPECT_EQ(ex.tokens, train::make_niah_example(no, kBytes, hay, d, len, e).tokens);
        ASSERT_EQ(int64_t(ex.tokens.size()), len);
        ASSERT_EQ(ex.answers.size(), 1u);
        EXPECT_EQ(ex.answers[0].end, len);
        const std::string answer = text_of(ex.tokens, ex.answers[0].begin, ex.answers[0].end);
        ASSERT_EQ(answer.size(), 6u);
        EXPECT_TRUE(std::all_of(answer.begin(), answer.end(), [](char c) { return std::isdigit(c); }));
        if (key.empty()) key = answer;
        EXPECT_EQ(answer, key) << "the key depends on (seed, length, example), not on the depth";
        const std::string text = text_of(ex.tokens, 0, len);
        const std::string needle = "\nThe secret key is " + key + ". Remember it.\n";
        const size_t at = text.find(needle);
        ASSERT_NE(at, std::string::npos);
        const int64_t hay_len = len - fixed;
        EXPECT_EQ(int64_t(at), std::llround(d * double(hay_len))) << "depth " << d;
        EXPECT_EQ(text.substr(size_t(len) - 6 - 43, 43), "\nWhat is the secret key? The secret key is ");
      }
    }
  EXPECT_NE(train::make_niah_example(no, kBytes, hay, 0.3, 300, 0).tokens,
            train::make_niah_example(no, kBytes, hay, 0.3, 300, 1).tokens);
}

TEST(RecallTasks, OracleScoresEverythingUniformGuesserScoresChance) {
  train::MqarOptions mo;
  mo.pairs = 16;
  mo.context = 256;
  mo.examples = 40;
  const auto mqar = train::make_mqar(mo, kBytes);
  InductionOracle oracle;
  const train::RecallScore o = train::sum_scores(train::score_examples(oracle, mqar));
  EXPECT_EQ(o.answers, 16 * 40);
  EXPECT_EQ(o.tokens, 2 * 16 * 40);
  EXPECT_EQ(o.accuracy(), 1.0);
  EXPECT_EQ(o.token_accuracy(), 1.0);
  UniformDigits guesser;
  const train::RecallScore g = train::sum_scores(train::score_examples(guesser, mqar));
  // 1280 value tokens at chance 0.1: mean 128, standard deviation ~10.7; 4 sigma either side.
  EXPECT_NEAR(g.token_accuracy(), train::kMqarChanceTokenAccuracy, 4 * std::sqrt(0.1 * 0.9 / 1280.0));
  EXPECT_NEAR(g.accuracy(), 0.01, 4 * std::sqrt(0.01 * 0.99 / 640.0));

  train::NiahOptions no;
  no.lengths = {400};
  no.examples = 60;
  const std::vector<int32_t> hay = haystack_tokens(3000);
  train::RecallScore on, gn;
  for (double d : no.depths)
    for (int64_t e = 0; e < no.examples; ++e) {
      const auto ex = train::make_niah_example(no, kBytes, hay, d, 400, e);
      on.add(train::score_example(oracle, ex));
      gn.add(train::score_example(guesser, ex));
    }
  EXPECT_EQ(on.accuracy(), 1.0);
  EXPECT_EQ(gn.tokens, 5 * 60 * 6);
  EXPECT_NEAR(gn.token_accuracy(), 0.1, 4 * std::sqrt(0.1 * 0.9 / 1800.0));
  EXPECT_EQ(gn.answers_correct, 0);  // chance of a whole 6-digit key: 1e-6 per example
}

TEST(RecallTasks, ValidationNamesTheFlag) {
  auto mqar_error = [](train::MqarOptions mo) {
    try {
      train::validate_mqar(mo, kBytes);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  train::MqarOptions mo;
  mo.context = 64;
  mo.pairs = 5;  // 2 x 5 x 7 = 70 tokens > 64
  EXPECT_NE(mqar_error(mo).find("--pairs 5 needs 70 tokens"), std::string::npos) << mqar_error(mo);
  mo.pairs = 4;
  EXPECT_EQ(mqar_error(mo), "no error");
  mo.key_len = 1;
  mo.pairs = 27;
  mo.context = 10000;
  EXPECT_NE(mqar_error(mo).find("26 distinct keys"), std::string::npos) << mqar_error(mo);
  mo.key_len = 9;
  EXPECT_NE(mqar_error(mo).find("--key-len"), std::string::npos);
  mo.key_len = 3;
  mo.examples = 0;
  EXPECT_NE(mqar_error(mo).find("--examples"), std::string::npos);

  auto niah_error = [](train::NiahOptions no, int64_t hay) {
    try {
      train::validate_niah(no, kBytes, hay);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  train::NiahOptions no;
  no.lengths = {200};
  EXPECT_EQ(niah_error(no, 1000), "no error");
  no.depths = {0, 1.5};
  EXPECT_NE(niah_error(no, 1000).find("depth 1.5 is outside [0, 1]"), std::string::npos);
  no.depths = {-0.1};
  EXPECT_NE(niah_error(no, 1000).find("outside [0, 1]"), std::string::npos);
  no.depths = {0.5};
  no.lengths = {80};
  EXPECT_NE(niah_error(no, 1000).find("leaves no room"), std::string::npos);
  no.lengths = {5000};
  EXPECT_NE(niah_error(no, 1000).find("needs 4911 haystack tokens, the validation text has 1000"), std::string::npos)
      << niah_error(no, 1000);
}

// The streamer predictor (blocks of 7 tokens, a fresh streamer per sequence) predicts the argmax of the model's
// forward logits: wherever the forward's best token leads the runner-up clearly (streaming and the whole-sequence
// forward agree to float rounding, not bit for bit).
TEST(RecallTasks, StreamerPredictorIsTheArgmaxOfTheForward) {
  const model::ModelConfig cfg = test_util::small_lact_config();
  model::Params<float> p = init_model(cfg, 4);
  for (auto& m : p.values)
    for (auto& x : m.data) x *= 8;  // larger logits: clear winners
  const std::vector<int32_t> tokens = random_tokens(60, cfg.vocab_size, 6);
  model::Batch one;
  one.sequences = 1;
  one.len = int64_t(tokens.size()) - 1;
  one.inputs.assign(tokens.begin(), tokens.end() - 1);
  one.targets.assign(tokens.begin() + 1, tokens.end());
  const auto fwd = model::forward<float>(cfg, p, one, nullptr, false, true);
  std::vector<int64_t> positions;
  for (int64_t i = 0; i < one.len; i += 3) positions.push_back(i);
  train::StreamerPredictor predictor([&] { return backend::make_streamer("cpu", cfg, p); }, /*concurrent=*/false,
                                     /*block=*/7);
  const std::vector<int32_t> got = predictor.predict(tokens, positions);
  ASSERT_EQ(got.size(), positions.size());
  int compared = 0;
  for (size_t k = 0; k < positions.size(); ++k) {
    const float* row = fwd.logits.ptr() + positions[k] * fwd.logits.cols;
    std::vector<float> sorted(row, row + fwd.logits.cols);
    std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
    if (sorted[0] - sorted[1] < 1e-3f) continue;
    ++compared;
    EXPECT_EQ(got[k], int32_t(std::max_element(row, row + fwd.logits.cols) - row)) << "position " << positions[k];
  }
  EXPECT_GE(compared, int(positions.size()) / 2);
  // Asked twice, the same: each sequence starts from a fresh state.
  EXPECT_EQ(predictor.predict(tokens, positions), got);
  EXPECT_THROW(predictor.predict(tokens, {5, 3}), Error);
  EXPECT_THROW(predictor.predict(tokens, {int64_t(tokens.size())}), Error);
}

// Examples scored side by side on the threads (a concurrent streamer predictor) score as they do one at a time;
// an error in one example reaches the caller.
TEST(RecallTasks, ConcurrentScoringEqualsSerial) {
  const model::ModelConfig cfg = test_util::small_lact_config();
  model::Params<float> p = init_model(cfg, 8);
  for (auto& m : p.values)
    for (auto& x : m.data) x *= 8;
  train::MqarOptions mo;
  mo.pairs = 4;
  mo.context = 64;
  mo.examples = 6;
  const auto examples = train::make_mqar(mo, kBytes);
  auto make = [&] { return backend::make_streamer("cpu", cfg, p); };
  train::StreamerPredictor serial(make, false), parallel(make, true);
  const auto a = train::score_examples(serial, examples);
  size_t calls = 0, last = 0;
  const auto b = train::score_examples(parallel, examples, [&](size_t done, size_t total) {
    ++calls;
    last = done;
    EXPECT_EQ(total, examples.size());
  });
  ASSERT_EQ(a.size(), examples.size());
  ASSERT_EQ(b.size(), examples.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].tokens, 8);
    EXPECT_EQ(a[i].tokens_correct, b[i].tokens_correct) << "example " << i;
    EXPECT_EQ(a[i].answers_correct, b[i].answers_correct) << "example " << i;
  }
  EXPECT_EQ(calls, examples.size());
  EXPECT_EQ(last, examples.size());
  std::vector<train::RecallExample> bad = examples;
  bad[3].tokens[0] = int32_t(cfg.vocab_size);  // outside the vocabulary: the streamer refuses it
  EXPECT_THROW(train::score_examples(parallel, bad), Error);
}

// ---- The heat map PNG decodes ----

namespace {

uint32_t be32(const std::string& s, size_t at) {
  return uint32_t(uint8_t(s[at])) << 24 | uint32_t(uint8_t(s[at + 1])) << 16 | uint32_t(uint8_t(s[at + 2])) << 8 |
         uint32_t(uint8_t(s[at + 3]));
}

struct DecodedPng {
  uint32_t width = 0, height = 0;
  std::string raw;  // the inflated scanlines
};

// Signature, IHDR (8-bit RGB), every chunk's CRC, IDAT inflated.
DecodedPng decode_png(const std::string& png) {
  DecodedPng d;
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  std::string idat;
  size_t at = 8;
  std::vector<std::string> types;
  while (at + 12 <= png.size()) {
    const uint32_t len = be32(png, at);
    const std::string type = png.substr(at + 4, 4), data = png.substr(at + 8, len);
    const uint32_t crc = be32(png, at + 8 + len);
    EXPECT_EQ(crc, uint32_t(crc32(0, reinterpret_cast<const Bytef*>(png.data() + at + 4), uInt(4 + len)))) << type;
    types.push_back(type);
    if (type == "IHDR") {
      EXPECT_EQ(len, 13u);
      d.width = be32(data, 0);
      d.height = be32(data, 4);
      EXPECT_EQ(data.substr(8), std::string("\x08\x02\x00\x00\x00", 5));
    } else if (type == "IDAT") {
      idat += data;
    }
    at += 12 + len;
  }
  EXPECT_EQ(at, png.size());
  EXPECT_EQ(types, (std::vector<std::string>{"IHDR", "IDAT", "IEND"}));
  uLongf size = uLongf(d.height) * (1 + 3 * uLongf(d.width));
  d.raw.assign(size + 16, '\0');  // room beyond the expected size: a longer stream shows as a size mismatch
  uLongf got = uLongf(d.raw.size());
  EXPECT_EQ(uncompress(reinterpret_cast<Bytef*>(d.raw.data()), &got, reinterpret_cast<const Bytef*>(idat.data()),
                       uLong(idat.size())),
            Z_OK);
  EXPECT_EQ(got, size);
  d.raw.resize(got);
  return d;
}

}  // namespace

TEST(Heatmap, PngDecodesToTheAccuracyColours) {
  const std::vector<std::vector<double>> acc = {{0.0, 1.0, 0.5}, {1.0, 0.25, 0.0}};
  const int64_t cell = 5;
  const train::RgbImage img = train::accuracy_heatmap(acc, cell);
  EXPECT_EQ(img.width, 3 * (cell + 1) + 1);
  EXPECT_EQ(img.height, 2 * (cell + 1) + 1);
  const DecodedPng d = decode_png(encode_png_rgb(img.width, img.height, img.pixels));
  ASSERT_EQ(int64_t(d.width), img.width);
  ASSERT_EQ(int64_t(d.height), img.height);
  ASSERT_EQ(d.raw.size(), size_t(img.height * (1 + 3 * img.width)));
  auto pixel = [&](int64_t x, int64_t y) {
    const size_t at = size_t(y * (1 + 3 * img.width) + 1 + 3 * x);
    EXPECT_EQ(d.raw[size_t(y * (1 + 3 * img.width))], 0) << "filter byte of row " << y;
    return std::vector<int>{uint8_t(d.raw[at]), uint8_t(d.raw[at + 1]), uint8_t(d.raw[at + 2])};
  };
  auto centre = [&](int r, int c) { return pixel(c * (cell + 1) + 1 + cell / 2, r * (cell + 1) + 1 + cell / 2); };
  EXPECT_EQ(centre(0, 0), (std::vector<int>{215, 48, 39}));   // 0: red
  EXPECT_EQ(centre(0, 1), (std::vector<int>{26, 152, 80}));   // 1: green
  EXPECT_EQ(centre(0, 2), (std::vector<int>{254, 224, 84}));  // 0.5: yellow
  EXPECT_EQ(centre(1, 0), (std::vector<int>{26, 152, 80}));
  EXPECT_EQ(centre(1, 2), (std::vector<int>{215, 48, 39}));
  EXPECT_EQ(pixel(0, 0), (std::vector<int>{32, 32, 32}));  // grid line
  EXPECT_THROW(encode_png_rgb(2, 2, std::vector<uint8_t>(11)), Error);
  EXPECT_THROW(encode_png_rgb(0, 2, {}), Error);
}

// ---- Progress lines ----

TEST(Progress, FormatsAndThrottles) {
  EXPECT_EQ(format_hms(59.4), "0:59");
  EXPECT_EQ(format_hms(3725), "1:02:05");
  EXPECT_EQ(format_hms(-1), "?");
  EXPECT_EQ(format_count(950), "950");
  EXPECT_EQ(format_count(12345), "12.3k");
  EXPECT_EQ(format_count(4.56e6), "4.56M");
  std::ostringstream every, quiet;
  ProgressLine now(every, "eval --full", "tokens", 0.0), later(quiet, "eval --full", "tokens", 3600.0);
  now.update(5, 10);
  later.update(5, 10);
  EXPECT_EQ(every.str().rfind("eval --full: 5/10 tokens (50.0%) | ", 0), 0u) << every.str();
  EXPECT_NE(every.str().find("elapsed | ETA "), std::string::npos) << every.str();
  EXPECT_EQ(quiet.str(), "");  // a short run prints nothing
}

// ---- The command ----

namespace {

struct EvalRun {
  std::string dir, run, data;
};

// A small LaCT checkpoint (vocabulary `vocab`) in DIR/run and the synthetic corpus of train_test_util.h.
EvalRun make_eval_run(const std::string& tag, int64_t vocab = 256) {
  EvalRun f;
  f.data = test_util::make_corpus(tag + "_data");
  f.dir = test_util::temp_dir(tag);
  f.run = f.dir + "/run";
  model::ModelConfig cfg = test_util::small_lact_config();
  cfg.vocab_size = vocab;
  model::Params<float> p = init_model(cfg, 1);
  std::vector<int64_t> sizes;
  for (auto& m : p.values) sizes.push_back(m.size());
  train::AdamW opt(p.names, sizes, train::AdamWConfig{});
  train::RunState st;
  st.train.seq_len = cfg.seq_len;
  st.train.data_dir = f.data;
  train::save_run_checkpoint(f.run, cfg, p, opt, st, /*keep=*/1);
  return f;
}

}  // namespace

TEST(EvalCli, FullMqarAndNiahRunAndWriteTheirOutputs) {
  const EvalRun f = make_eval_run("eval_cli");
  const int64_t n = int64_t(data::load_tokens(f.data + "/val.bin").tokens.size());

  auto r = run_cli("eval --checkpoint '" + f.run + "' --full --context 32 --stride 8 --json '" + f.dir + "/full.json'");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto full = nlohmann::json::parse(read_file(f.dir + "/full.json"));
  EXPECT_EQ(full["tokens_scored"], n - 1);
  EXPECT_EQ(full["stride"], 8);
  EXPECT_EQ(full["windows"], int64_t(train::sliding_windows(n, 32, 8).size()));
  EXPECT_GT(full["bits_per_byte"].get<double>(), 0.0);
  EXPECT_NEAR(full["perplexity_per_token"].get<double>(), std::exp(full["loss_per_token"].get<double>()), 1e-9);
  EXPECT_NE(r.output.find("\"bits_per_byte_note\""), std::string::npos) << r.output;

  r = run_cli("eval --checkpoint '" + f.run + "' --task mqar --pairs 4 --context 64 --examples 3 --json '" + f.dir +
              "/mqar.json'");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("value-token accuracy"), std::string::npos) << r.output;
  const auto mqar = nlohmann::json::parse(read_file(f.dir + "/mqar.json"));
  EXPECT_EQ(mqar["result"]["answers"], 12);
  EXPECT_EQ(mqar["result"]["answer_tokens"], 24);

  r = run_cli("eval --checkpoint '" + f.run + "' --task niah --depths 0,0.5,1 --lengths 100,300 --examples 2 --heatmap '" +
              f.dir + "/niah.png' --json '" + f.dir + "/niah.json'");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("depth \\ length"), std::string::npos) << r.output;
  const auto niah = nlohmann::json::parse(read_file(f.dir + "/niah.json"));
  ASSERT_EQ(niah["cells"].size(), 6u);
  for (const auto& c : niah["cells"]) EXPECT_EQ(c["answers"], 2);
  const DecodedPng png = decode_png(read_file(f.dir + "/niah.png"));
  EXPECT_EQ(png.width, 2u * 33 + 1);
  EXPECT_EQ(png.height, 3u * 33 + 1);
  std::filesystem::remove_all(f.dir);
  std::filesystem::remove_all(f.data);
}

TEST(EvalCli, BadFlagsFailClearly) {
  const EvalRun f = make_eval_run("eval_cli_bad");
  const std::string ck = "eval --checkpoint '" + f.run + "' ";
  expect_clean_failure(ck + "--task mqar --pairs 100 --context 64", "--pairs 100 needs 1400 tokens");
  expect_clean_failure(ck + "--task mqar --pairs 0", "--pairs must be >= 1");
  expect_clean_failure(ck + "--task niah --depths 0,1.5", "depth 1.5 is outside [0, 1]");
  expect_clean_failure(ck + "--task niah --depths 0,x", "--depths expects a comma-separated list of numbers");
  expect_clean_failure(ck + "--task niah --lengths 50", "leaves no room");
  expect_clean_failure(ck + "--task niah --lengths 100,1000000", "needs 999911 haystack tokens");
  expect_clean_failure(ck + "--task niah --lengths 100,", "--lengths expects a comma-separated list of integers");
  expect_clean_failure(ck + "--task squad", "--task must be mqar or niah");
  expect_clean_failure(ck + "--full --task mqar", "give one");
  expect_clean_failure(ck + "--full --stride 0", "--stride must be > 0");
  expect_clean_failure(ck + "--full --context 16 --stride 17", "--stride 17 exceeds the context 16");
  expect_clean_failure(ck + "--full --pairs 3", "--pairs applies to --task mqar, not to --full");
  expect_clean_failure(ck + "--task mqar --stride 3", "--stride applies to --full");
  expect_clean_failure(ck + "--task niah --context 64", "--context applies to");
  expect_clean_failure(ck + "--heatmap x.png", "--heatmap applies to --task niah");
  expect_clean_failure(ck + "--task niah --heatmap /nonexistent/dir/n.png", "the directory '/nonexistent/dir' does not exist");
  expect_clean_failure(ck + "--full --json /nonexistent/f.json", "--json /nonexistent/f.json");
  // Absurd example counts end in the memory check, before anything is made.
  expect_clean_failure(ck + "--task mqar --pairs 2 --context 64 --examples 1000000000000", "the examples' tokens and scores");
  expect_clean_failure(ck + "--task niah --lengths 100 --examples 1000000000000", "not enough host memory");
  std::filesystem::remove_all(f.dir);
  std::filesystem::remove_all(f.data);
  // The tasks' text is encoded with the run's tokenizer (here the data's: bytes): a model whose vocabulary cannot
  // hold its ids is refused, not fed them. (A BPE run: GenerateText.CliTrainAndGenerateWithTokenizer.)
  const EvalRun narrow = make_eval_run("eval_cli_vocab", 200);
  for (const char* task : {"mqar", "niah"})
    expect_clean_failure("eval --checkpoint '" + narrow.run + "' --task " + task, "larger than the model's 200");
  std::filesystem::remove_all(narrow.dir);
  std::filesystem::remove_all(narrow.data);
}
