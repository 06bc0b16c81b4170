// Synthetic recall tasks of `ttt eval --task mqar|niah` (docs/EVALUATION.md): examples generated offline,
// deterministic from a seed, and scored by the model's greedy next-token predictions on their answer tokens.
//
// An example is a token sequence with answer spans. Each answer token is scored by the model's most likely next
// token (argmax of the logits) after every token before it, the earlier answer tokens included (teacher
// forcing): all tokens of a span are right exactly when greedy decoding from the span's start writes the span.
//
// Text is turned into tokens only through an `Encode` function, one piece at a time (a key, a separator, a
// value), and the pieces' tokens are concatenated: the tasks know nothing of the tokenizer beyond it.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace ttt::backend {
class Streamer;
}

namespace ttt::train {

using Encode = std::function<std::vector<int32_t>(std::string_view)>;

struct AnswerSpan {
  int64_t begin = 0, end = 0;  // answer tokens tokens[begin, end); begin >= 1
};

struct RecallExample {
  std::vector<int32_t> tokens;
  std::vector<AnswerSpan> answers;
};

// ---- MQAR: multi-query associative recall ----
// `pairs` bindings "key:value " (keys: distinct strings of key_len lowercase letters; values: value_len random
// digits), then filler (the space's tokens, repeated) up to the point where the queries fit, then every key
// once more in a random order, each followed by ":" and its value: the answer. `context` tokens in all.
struct MqarOptions {
  int64_t pairs = 16;
  int64_t context = 256;
  int64_t examples = 64;
  int64_t key_len = 3;
  int64_t value_len = 2;
  uint64_t seed = 0;
};
// Per value token, the accuracy of a model that knows values are digits but not which: 1/10.
inline constexpr double kMqarChanceTokenAccuracy = 0.1;
// Throws, naming the flag, when the options are out of range (pairs beyond the distinct keys or the context).
void validate_mqar(const MqarOptions& opt, const Encode& encode);
std::vector<RecallExample> make_mqar(const MqarOptions& opt, const Encode& encode);

// ---- NIAH: needle in a haystack ----
// Per length L and depth d: haystack text from `haystack` (the validation tokens with the separators taken out),
// the needle "\nThe secret key is KEY. Remember it.\n" inserted at round(d * haystack tokens), then the question
// "\nWhat is the secret key? The secret key is " and the key's digits: the answer; L tokens in all. The key
// (key_digits random digits) and the haystack's offset depend on (seed, L, example) only, so the cells of one
// length differ only in the needle's depth.
struct NiahOptions {
  std::vector<double> depths = {0, 0.25, 0.5, 0.75, 1};
  std::vector<int64_t> lengths;  // tokens per example
  int64_t examples = 4;          // per cell
  int64_t key_digits = 6;
  uint64_t seed = 0;
};
// Tokens of an example besides the haystack (needle, question, answer) at `key_digits`.
int64_t niah_fixed_tokens(int64_t key_digits, const Encode& encode);
// Throws, naming the flag, when a depth is outside [0, 1], a length leaves no room for a haystack or needs more
// haystack text than `haystack_tokens`, or examples / key_digits are out of range.
void validate_niah(const NiahOptions& opt, const Encode& encode, int64_t haystack_tokens);
// Example `example` (0-based) of the cell (depth, length): `length` tokens.
RecallExample make_niah_example(const NiahOptions& opt, const Encode& encode, const std::vector<int32_t>& haystack,
                                double depth, int64_t length, int64_t example);
// The haystack text of a token stream: the tokens without the document separators (id `separator`).
std::vector<int32_t> haystack_text(const std::vector<int32_t>& tokens, int32_t separator);

// ---- Scoring ----
// The model as seen by the tasks: its greedy next-token predictions.
class NextTokenPredictor {
 public:
  virtual ~NextTokenPredictor() = default;
  // For each p of `positions` (ascending, each < tokens.size()): the most likely token after tokens[0..p]
  // (argmax of the logits; ties to the lowest id). Reads nothing beyond the last position asked.
  virtual std::vector<int32_t> predict(const std::vector<int32_t>& tokens, const std::vector<int64_t>& positions) = 0;
  // Whether predict may run on several threads at once (calls independent of each other).
  virtual bool concurrent() const { return false; }
};

// A predictor over a device's streamer (backend/streamer.h): a fresh streamer per sequence, fed in blocks.
// `concurrent`: make_streamer may be called from several threads and the streamers run side by side (the CPU's).
class StreamerPredictor final : public NextTokenPredictor {
 public:
  using MakeStreamer = std::function<std::unique_ptr<backend::Streamer>()>;
  StreamerPredictor(MakeStreamer make, bool concurrent, int64_t block = 512)
      : make_(std::move(make)), concurrent_(concurrent), block_(block) {}
  std::vector<int32_t> predict(const std::vector<int32_t>& tokens, const std::vector<int64_t>& positions) override;
  bool concurrent() const override { return concurrent_; }

 private:
  MakeStreamer make_;
  bool concurrent_;
  int64_t block_;
};

struct RecallScore {
  int64_t answers = 0, answers_correct = 0;  // spans, and spans with every token right
  int64_t tokens = 0, tokens_correct = 0;    // answer tokens
  double accuracy() const { return answers ? double(answers_correct) / double(answers) : 0.0; }
  double token_accuracy() const { return tokens ? double(tokens_correct) / double(tokens) : 0.0; }
  void add(const RecallScore& o);
};
RecallScore score_example(NextTokenPredictor& model, const RecallExample& ex);
// The score of each example. With a concurrent model the examples run on the OpenMP threads, one example per
// thread at a time (a streamer's many small steps scale better so than threaded inside); the scores are the
// same either way. `progress(done, total)` after each example.
std::vector<RecallScore> score_examples(NextTokenPredictor& model, const std::vector<RecallExample>& examples,
                                        const std::function<void(size_t, size_t)>& progress = {});
RecallScore sum_scores(const std::vector<RecallScore>& scores);

// ---- Report ----
// NIAH accuracy (whole keys) per depth (rows) x length (columns), as a text table.
std::string niah_table(const NiahOptions& opt, const std::vector<std::vector<RecallScore>>& cells);
// The same grid as an RGB image: one cell_px square per cell (depth 0 at the top, lengths ascending to the right),
// red (0) through yellow to green (1), cells parted by 1-pixel dark lines. Pixels row-major, 3 bytes each.
struct RgbImage {
  int64_t width = 0, height = 0;
  std::vector<uint8_t> pixels;
};
RgbImage accuracy_heatmap(const std::vector<std::vector<double>>& accuracy, int64_t cell_px = 32);

}  // namespace ttt::train
