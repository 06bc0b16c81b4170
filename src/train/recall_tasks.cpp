#include "train/recall_tasks.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <iomanip>
#include <set>
#include <sstream>

#include "backend/streamer.h"
#include "core/error.h"
#include "core/rng.h"
#include "data/tokens.h"

namespace ttt::train {

namespace {

constexpr int64_t kMaxKeyLen = 8;       // 26^8 keys: the key space fits an int64
constexpr int64_t kMaxValueLen = 16;
constexpr int64_t kMaxKeyDigits = 32;
constexpr const char* kNeedleHead = "\nThe secret key is ";
constexpr const char* kNeedleTail = ". Remember it.\n";
constexpr const char* kQuestion = "\nWhat is the secret key? The secret key is ";

// An example's random stream: a function of the seed, the task and the example's coordinates only, so an example
// does not change when others are added (more --examples, more --lengths).
Rng example_rng(uint64_t seed, uint64_t task, uint64_t a, uint64_t b) {
  const uint64_t words[4] = {seed, task, a, b};
  return Rng(data::fnv1a64(words, sizeof words));
}

std::string random_string(Rng& rng, int64_t len, char first, int64_t alphabet) {
  std::string s(size_t(len), first);
  for (auto& c : s) c = char(first + int64_t(rng.below(uint64_t(alphabet))));
  return s;
}

void append(std::vector<int32_t>& out, const std::vector<int32_t>& piece) { out.insert(out.end(), piece.begin(), piece.end()); }

int64_t key_space(int64_t key_len) {
  int64_t n = 1;
  for (int64_t i = 0; i < key_len; ++i) n *= 26;
  return n;
}

// Tokens of one binding "key:value " (also one query with its answer).
int64_t binding_tokens(const std::string& key, const std::string& value, const Encode& encode) {
  return int64_t(encode(key).size() + encode(":").size() + encode(value).size() + encode(" ").size());
}

std::string mqar_context_error(const MqarOptions& opt, int64_t needed) {
  std::ostringstream os;
  os << "--pairs " << opt.pairs << " needs " << needed << " tokens (" << opt.pairs << " key-value bindings and "
     << opt.pairs << " queries), more than --context " << opt.context << "; use fewer pairs or a longer context";
  return os.str();
}

}  // namespace

void validate_mqar(const MqarOptions& opt, const Encode& encode) {
  TTT_CHECK(opt.key_len >= 1 && opt.key_len <= kMaxKeyLen,
            "--key-len must be in [1, " << kMaxKeyLen << "], got " << opt.key_len);
  TTT_CHECK(opt.value_len >= 1 && opt.value_len <= kMaxValueLen,
            "--value-len must be in [1, " << kMaxValueLen << "], got " << opt.value_len);
  TTT_CHECK(opt.examples >= 1, "--examples must be >= 1, got " << opt.examples);
  TTT_CHECK(opt.pairs >= 1, "--pairs must be >= 1, got " << opt.pairs);
  TTT_CHECK(opt.pairs <= key_space(opt.key_len), "--pairs " << opt.pairs << " exceeds the " << key_space(opt.key_len)
                                                            << " distinct keys of --key-len " << opt.key_len);
  TTT_CHECK(opt.context >= 1, "--context must be >= 1, got " << opt.context);
  const int64_t per_binding =
      binding_tokens(std::string(size_t(opt.key_len), 'a'), std::string(size_t(opt.value_len), '0'), encode);
  // Bindings and queries: 2 * pairs * per_binding, checked without overflow.
  TTT_CHECK(opt.pairs <= opt.context / (2 * per_binding), mqar_context_error(opt, 2 * opt.pairs * per_binding));
}

std::vector<RecallExample> make_mqar(const MqarOptions& opt, const Encode& encode) {
  validate_mqar(opt, encode);
  const std::vector<int32_t> colon = encode(":"), space = encode(" ");
  TTT_CHECK(!space.empty(), "MQAR: the tokenizer encodes a space as no token");
  std::vector<RecallExample> out;
  for (int64_t e = 0; e < opt.examples; ++e) {
    Rng rng = example_rng(opt.seed, /*task=*/1, uint64_t(e), 0);
    std::vector<std::string> keys, values;
    std::set<std::string> seen;
    while (int64_t(keys.size()) < opt.pairs) {
      std::string k = random_string(rng, opt.key_len, 'a', 26);
      if (seen.insert(k).second) keys.push_back(std::move(k));
    }
    for (int64_t i = 0; i < opt.pairs; ++i) values.push_back(random_string(rng, opt.value_len, '0', 10));
    std::vector<int64_t> order(size_t(opt.pairs));
    for (int64_t i = 0; i < opt.pairs; ++i) order[size_t(i)] = i;
    for (int64_t i = opt.pairs - 1; i > 0; --i) std::swap(order[size_t(i)], order[rng.below(uint64_t(i + 1))]);

    RecallExample ex;
    for (int64_t i = 0; i < opt.pairs; ++i) {
      append(ex.tokens, encode(keys[size_t(i)]));
      append(ex.tokens, colon);
      append(ex.tokens, encode(values[size_t(i)]));
      append(ex.tokens, space);
    }
    std::vector<int32_t> queries;
    std::vector<AnswerSpan> spans;  // relative to the start of the queries
    for (int64_t i : order) {
      append(queries, encode(keys[size_t(i)]));
      append(queries, colon);
      AnswerSpan a;
      a.begin = int64_t(queries.size());
      append(queries, encode(values[size_t(i)]));
      a.end = int64_t(queries.size());
      spans.push_back(a);
      append(queries, space);
    }
    const int64_t used = int64_t(ex.tokens.size() + queries.size());
    TTT_CHECK(used <= opt.context, mqar_context_error(opt, used));
    for (int64_t i = 0; used + i < opt.context; ++i) ex.tokens.push_back(space[size_t(i) % space.size()]);
    const int64_t query_start = int64_t(ex.tokens.size());
    append(ex.tokens, queries);
    for (AnswerSpan a : spans) ex.answers.push_back({query_start + a.begin, query_start + a.end});
    out.push_back(std::move(ex));
  }
  return out;
}

int64_t niah_fixed_tokens(int64_t key_digits, const Encode& encode) {
  const std::string key(size_t(key_digits), '0');
  return int64_t(encode(kNeedleHead).size() + 2 * encode(key).size() + encode(kNeedleTail).size() +
                 encode(kQuestion).size());
}

void validate_niah(const NiahOptions& opt, const Encode& encode, int64_t haystack_tokens) {
  TTT_CHECK(opt.examples >= 1, "--examples must be >= 1, got " << opt.examples);
  TTT_CHECK(opt.key_digits >= 1 && opt.key_digits <= kMaxKeyDigits,
            "--key-digits must be in [1, " << kMaxKeyDigits << "], got " << opt.key_digits);
  TTT_CHECK(!opt.depths.empty(), "--depths: give at least one depth in [0, 1]");
  TTT_CHECK(!opt.lengths.empty(), "--lengths: give at least one length in tokens");
  for (double d : opt.depths)
    TTT_CHECK(std::isfinite(d) && d >= 0 && d <= 1, "--depths: depth " << d << " is outside [0, 1]");
  const int64_t fixed = niah_fixed_tokens(opt.key_digits, encode);
  for (int64_t len : opt.lengths) {
    TTT_CHECK(len > fixed, "--lengths: length " << len << " leaves no room for a haystack: the needle, question and "
                                                << "answer take " << fixed << " tokens (give more than " << fixed << ")");
    TTT_CHECK(len - fixed <= haystack_tokens, "--lengths: length " << len << " needs " << len - fixed
                                                                   << " haystack tokens, the validation text has "
                                                                   << haystack_tokens);
  }
}

RecallExample make_niah_example(const NiahOptions& opt, const Encode& encode, const std::vector<int32_t>& haystack,
                                double depth, int64_t length, int64_t example) {
  Rng rng = example_rng(opt.seed, /*task=*/2, uint64_t(length), uint64_t(example));
  const std::string key = random_string(rng, opt.key_digits, '0', 10);
  std::vector<int32_t> needle = encode(kNeedleHead);
  append(needle, encode(key));
  append(needle, encode(kNeedleTail));
  const std::vector<int32_t> question = encode(kQuestion), answer = encode(key);
  const int64_t hay = length - int64_t(needle.size() + question.size() + answer.size());
  TTT_CHECK(hay >= 1 && hay <= int64_t(haystack.size()),
            "NIAH: length " << length << " leaves " << hay << " haystack tokens (1 .. " << haystack.size() << " allowed)");
  TTT_CHECK(depth >= 0 && depth <= 1, "NIAH: depth " << depth << " is outside [0, 1]");
  const int64_t offset = int64_t(rng.below(uint64_t(int64_t(haystack.size()) - hay + 1)));
  const int64_t at = std::llround(depth * double(hay));
  const auto h = haystack.begin() + offset;
  RecallExample ex;
  ex.tokens.assign(h, h + at);
  append(ex.tokens, needle);
  ex.tokens.insert(ex.tokens.end(), h + at, h + hay);
  append(ex.tokens, question);
  ex.answers.push_back({int64_t(ex.tokens.size()), int64_t(ex.tokens.size() + answer.size())});
  append(ex.tokens, answer);
  return ex;
}

std::vector<int32_t> haystack_text(const std::vector<int32_t>& tokens, int32_t separator) {
  std::vector<int32_t> out;
  out.reserve(tokens.size());
  for (int32_t t : tokens)
    if (t != separator) out.push_back(t);
  return out;
}

std::vector<int32_t> StreamerPredictor::predict(const std::vector<int32_t>& tokens, const std::vector<int64_t>& positions) {
  std::vector<int32_t> out;
  if (positions.empty()) return out;
  for (size_t i = 0; i < positions.size(); ++i)
    TTT_CHECK(positions[i] >= 0 && positions[i] < int64_t(tokens.size()) && (i == 0 || positions[i] > positions[i - 1]),
              "predict: position " << positions[i] << " is not ascending within the " << tokens.size() << " tokens");
  const std::unique_ptr<backend::Streamer> streamer = make_();
  const int64_t needed = positions.back() + 1;
  size_t next = 0;
  for (int64_t start = 0; start < needed; start += block_) {
    const int64_t n = std::min(block_, needed - start);
    const ag::Mat<float> logits = streamer->feed(std::vector<int32_t>(tokens.begin() + start, tokens.begin() + start + n));
    TTT_CHECK(logits.rows == n, "predict: the streamer returned " << logits.rows << " rows of logits for " << n << " tokens");
    for (; next < positions.size() && positions[next] < start + n; ++next) {
      const float* row = logits.ptr() + (positions[next] - start) * logits.cols;
      for (int64_t v = 0; v < logits.cols; ++v)
        TTT_CHECK(std::isfinite(row[v]), "predict: non-finite logit at position " << positions[next] << ", token " << v);
      out.push_back(int32_t(std::max_element(row, row + logits.cols) - row));  // the first maximum: lowest id
    }
  }
  return out;
}

void RecallScore::add(const RecallScore& o) {
  answers += o.answers;
  answers_correct += o.answers_correct;
  tokens += o.tokens;
  tokens_correct += o.tokens_correct;
}

RecallScore score_example(NextTokenPredictor& model, const RecallExample& ex) {
  std::vector<int64_t> positions;  // answer token t is predicted after position t - 1
  for (const AnswerSpan& a : ex.answers) {
    TTT_CHECK(a.begin >= 1 && a.begin < a.end && a.end <= int64_t(ex.tokens.size()),
              "recall example: answer span [" << a.begin << ", " << a.end << ") outside its " << ex.tokens.size() << " tokens");
    for (int64_t t = a.begin; t < a.end; ++t) positions.push_back(t - 1);
  }
  const std::vector<int32_t> predicted = model.predict(ex.tokens, positions);
  TTT_CHECK(predicted.size() == positions.size(),
            "recall scoring: " << predicted.size() << " predictions for " << positions.size() << " answer tokens");
  RecallScore s;
  size_t i = 0;
  for (const AnswerSpan& a : ex.answers) {
    bool all = true;
    for (int64_t t = a.begin; t < a.end; ++t, ++i) {
      const bool right = predicted[i] == ex.tokens[size_t(t)];
      s.tokens_correct += right;
      all = all && right;
    }
    s.tokens += a.end - a.begin;
    s.answers += 1;
    s.answers_correct += all;
  }
  return s;
}

std::vector<RecallScore> score_examples(NextTokenPredictor& model, const std::vector<RecallExample>& examples,
                                        const std::function<void(size_t, size_t)>& progress) {
  const int64_t n = int64_t(examples.size());
  std::vector<RecallScore> scores(examples.size());
  size_t done = 0;
  std::exception_ptr err;
#pragma omp parallel for schedule(dynamic, 1) if (model.concurrent())
  for (int64_t i = 0; i < n; ++i) {
    try {
      scores[size_t(i)] = score_example(model, examples[size_t(i)]);
#pragma omp critical(ttt_recall_progress)
      if (progress) progress(++done, examples.size());
    } catch (...) {
#pragma omp critical(ttt_recall_error)
      if (!err) err = std::current_exception();
    }
  }
  if (err) std::rethrow_exception(err);
  return scores;
}

RecallScore sum_scores(const std::vector<RecallScore>& scores) {
  RecallScore total;
  for (const RecallScore& s : scores) total.add(s);
  return total;
}

std::string niah_table(const NiahOptions& opt, const std::vector<std::vector<RecallScore>>& cells) {
  std::ostringstream os;
  os << "NIAH accuracy (whole key right; " << opt.examples << " example(s) per cell)\n";
  os << std::left << std::setw(16) << "depth \\ length" << std::right;
  for (int64_t len : opt.lengths) os << std::setw(9) << len;
  os << "\n";
  for (size_t i = 0; i < opt.depths.size(); ++i) {
    std::ostringstream depth;
    depth << opt.depths[i];
    os << std::left << std::setw(16) << depth.str() << std::right << std::fixed << std::setprecision(2);
    for (size_t j = 0; j < opt.lengths.size(); ++j) os << std::setw(9) << cells[i][j].accuracy();
    os << "\n" << std::defaultfloat;
  }
  return os.str();
}

RgbImage accuracy_heatmap(const std::vector<std::vector<double>>& accuracy, int64_t cell_px) {
  TTT_CHECK(!accuracy.empty() && !accuracy[0].empty() && cell_px >= 1, "heat map: an empty grid");
  const int64_t rows = int64_t(accuracy.size()), cols = int64_t(accuracy[0].size());
  RgbImage img;
  img.width = cols * (cell_px + 1) + 1;
  img.height = rows * (cell_px + 1) + 1;
  img.pixels.assign(size_t(img.width * img.height * 3), 32);  // the dark grid lines
  for (int64_t r = 0; r < rows; ++r) {
    TTT_CHECK(int64_t(accuracy[size_t(r)].size()) == cols, "heat map: rows of different lengths");
    for (int64_t c = 0; c < cols; ++c) {
      const double a = std::clamp(accuracy[size_t(r)][size_t(c)], 0.0, 1.0);
      // Red (0) -> yellow (0.5) -> green (1).
      const double red[3] = {215, 48, 39}, yellow[3] = {254, 224, 84}, green[3] = {26, 152, 80};
      const double* lo = a < 0.5 ? red : yellow;
      const double* hi = a < 0.5 ? yellow : green;
      const double t = a < 0.5 ? a / 0.5 : (a - 0.5) / 0.5;
      uint8_t rgb[3];
      for (int k = 0; k < 3; ++k) rgb[k] = uint8_t(std::lround(lo[k] + t * (hi[k] - lo[k])));
      for (int64_t y = r * (cell_px + 1) + 1; y < (r + 1) * (cell_px + 1); ++y)
        for (int64_t x = c * (cell_px + 1) + 1; x < (c + 1) * (cell_px + 1); ++x)
          std::copy(rgb, rgb + 3, img.pixels.begin() + (y * img.width + x) * 3);
    }
  }
  return img;
}

}  // namespace ttt::train
