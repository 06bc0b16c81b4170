// Generation with a tokenizer: stop at the end-of-text token, the repetition penalty, the empty prompt's start
// token (infer::generate over a scripted streamer); and the CLI path: train on data prepared with a BPE tokenizer
// (the tokenizer goes into the run, the sample decodes with it), generate with --prompt-file (stdin), bad flags.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <filesystem>

#include "backend/streamer.h"
#include "cli_test_util.h"
#include "core/error.h"
#include "core/file_io.h"
#include "core/safetensors.h"
#include "data/prepare.h"
#include "data/tokenizer.h"
#include "expect_error.h"
#include "infer/generate.h"
#include "temp_dir.h"
#include "tiny_tokenizer.h"

using namespace ttt;
namespace fs = std::filesystem;
using test::expect_error;
using test::TempDir;

namespace {

// Logits that make `script[position]` the most likely token (then the last one forever); token 3 and 4 are next
// best with 2.0 and 1.9 unless `flat` (then 3 and 4 lead everywhere, for the repetition penalty).
class ScriptedStreamer final : public backend::Streamer {
 public:
  ScriptedStreamer(std::vector<int32_t> script, bool flat) : script_(std::move(script)), flat_(flat) {}
  ag::Mat<float> feed(const std::vector<int32_t>& tokens) override {
    fed.insert(fed.end(), tokens.begin(), tokens.end());
    ag::Mat<float> m(int64_t(tokens.size()), kVocab);
    for (int64_t r = 0; r < m.rows; ++r) {
      float* row = m.row(r);
      for (int64_t v = 0; v < kVocab; ++v) row[v] = -1.0f;
      row[3] = 2.0f;
      row[4] = 1.9f;
      if (!flat_) {
        const size_t step = std::min(generated_, script_.size() - 1);
        row[script_[step]] = 10.0f;
      }
    }
    position_ += int64_t(tokens.size());
    ++generated_;
    return m;
  }
  int64_t position() const override { return position_; }
  size_t state_bytes() const override { return 0; }
  std::vector<int32_t> fed;
  static constexpr int64_t kVocab = 12;

 private:
  std::vector<int32_t> script_;
  bool flat_;
  size_t generated_ = 0;
  int64_t position_ = 0;
};

}  // namespace

TEST(GenerateText, StopsAtTheSeparatorAndStartsFromIt) {
  infer::SampleOptions opt;
  opt.temperature = 0;
  opt.separator = 7;
  opt.stop_at_separator = true;
  ScriptedStreamer s({5, 6, 7, 9}, false);
  std::vector<int32_t> seen;
  const auto out = infer::generate(s, {}, 10, opt, [&](int32_t t) { seen.push_back(t); });
  EXPECT_EQ(out, (std::vector<int32_t>{5, 6}));
  EXPECT_EQ(seen, out);  // the separator is not handed out
  EXPECT_EQ(s.fed.front(), 7);  // the empty prompt starts a document
  // Without stopping, the separator is one more token.
  opt.stop_at_separator = false;
  ScriptedStreamer s2({5, 6, 7, 9}, false);
  EXPECT_EQ(infer::generate(s2, {1}, 5, opt), (std::vector<int32_t>{5, 6, 7, 9, 9}));
}

TEST(GenerateText, RepetitionPenalty) {
  infer::SampleOptions opt;
  opt.temperature = 0;
  ScriptedStreamer plain({0}, true);
  EXPECT_EQ(infer::generate(plain, {1}, 4, opt), (std::vector<int32_t>{3, 3, 3, 3}));
  // 2.0 / 1.2 = 1.67 < 1.9: once 3 is in the context, 4 wins; then both are penalized (1.67 > 1.58).
  opt.repetition_penalty = 1.2;
  ScriptedStreamer penalized({0}, true);
  EXPECT_EQ(infer::generate(penalized, {1}, 4, opt), (std::vector<int32_t>{3, 4, 3, 3}));
  // A prompt token counts as seen: 3 in the prompt makes 4 come first.
  ScriptedStreamer prompted({0}, true);
  EXPECT_EQ(infer::generate(prompted, {3}, 2, opt), (std::vector<int32_t>{4, 3}));
  opt.repetition_penalty = 0;
  ScriptedStreamer bad({0}, true);
  expect_error([&] { infer::generate(bad, {1}, 2, opt); }, "repetition penalty must be > 0");
}

// The whole path on a BPE vocabulary: prepare -> train (a preset takes the data's vocabulary) -> sample ->
// generate from stdin.
TEST(GenerateText, CliTrainAndGenerateWithTokenizer) {
  TempDir dir("gen_tok");
  write_file_atomic(dir / "tok.json", test::tiny_bpe_json());
  std::string jsonl;
  for (int i = 0; i < 60; ++i)
    jsonl += nlohmann::json{{"text", "the cat " + std::to_string(i) + " sat on the mat, caf\xc3\xa9 the end"}}.dump() + "\n";
  write_file_atomic(dir / "c.jsonl", jsonl);
  data::PrepareOptions po;
  po.input = dir / "c.jsonl";
  po.out_dir = dir / "data";
  po.tokenizer = dir / "tok.json";
  data::prepare_corpus(po);
  const std::string run = dir / "run";
  test::RunResult t = test::run_cli("train --preset tiny --seq-len 16 --batch 2 --steps 2 --eval-batches 1 --data " +
                                    (dir / "data") + " --out " + run + " --sample-tokens 12 --prompt 'the cat'");
  ASSERT_EQ(t.status, 0) << t.output;
  EXPECT_NE(t.output.find("vocab_size 260 (the hf-bpe tokenizer"), std::string::npos) << t.output;
  EXPECT_NE(t.output.find("hf-bpe tokenizer) ---\nthe cat"), std::string::npos) << t.output;
  EXPECT_TRUE(file_exists(run + "/tokenizer.json"));
  EXPECT_TRUE(file_exists(run + "/tokenizer_info.json"));
  write_file_atomic(dir / "prompt.txt", "the mat");
  test::RunResult g = test::run_cli("generate --checkpoint " + run + " --prompt-file - --max-new-tokens 8 --stats < " +
                                    (dir / "prompt.txt"));
  ASSERT_EQ(g.status, 0) << g.output;
  EXPECT_EQ(g.output.rfind("the mat", 0), 0u) << g.output;
  EXPECT_NE(g.output.find("\"tokenizer\":\"hf-bpe\""), std::string::npos) << g.output;
  EXPECT_NE(g.output.find("\"prompt_tokens\":5"), std::string::npos) << g.output;  // "the", " ", "m", "a", "t"
  // eval takes the run's vocabulary (260) as it is.
  test::RunResult e = test::run_cli("eval --checkpoint " + run + " --batches 1 --batch 1 --csv " + (dir / "b.csv"));
  EXPECT_EQ(e.status, 0) << e.output;
  // logits and the recall tasks encode with the run's tokenizer too (not bytes).
  test::RunResult l = test::run_cli("logits --checkpoint " + run + " --input " + (dir / "prompt.txt") + " --out " +
                                    (dir / "l.safetensors"));
  ASSERT_EQ(l.status, 0) << l.output;
  const SafeTensors logits_file = safetensors_load(dir / "l.safetensors");
  const Tensor& ids = logits_file.get("tokens");
  const std::vector<int32_t> want = data::load_tokenizer(dir / "tok.json")->encode("the mat", true);
  ASSERT_EQ(want.size(), 5u);  // "the" is one token: the BPE's, not the 7 bytes
  ASSERT_EQ(ids.shape(), (Shape{5}));
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(ids.data<int64_t>()[i], int64_t(want[i]));
  test::RunResult m = test::run_cli("eval --checkpoint " + run + " --task mqar --pairs 2 --context 32 --examples 2 "
                                    "--json " + (dir / "mqar.json"));
  ASSERT_EQ(m.status, 0) << m.output;
  const nlohmann::json mj = nlohmann::json::parse(read_file(dir / "mqar.json"));
  EXPECT_EQ(mj["tokenizer"], "hf-bpe");
  EXPECT_TRUE(mj["chance_token_accuracy"].is_null());  // BPE may merge digits: chance is not 0.1 per token
  test::RunResult f = test::run_cli("generate --checkpoint " + run + " --prompt-file " + (dir / "prompt.txt") +
                                    " --max-new-tokens 4 --repetition-penalty 1.5 --no-stop");
  EXPECT_EQ(f.status, 0) << f.output;
  test::expect_clean_failure("generate --checkpoint " + run + " --prompt x --prompt-file " + (dir / "prompt.txt"),
                             "not both");
  test::expect_clean_failure("generate --checkpoint " + run + " --prompt-file " + (dir / "none.txt"), "none.txt");
  test::expect_clean_failure("generate --checkpoint " + run + " --repetition-penalty -1", "repetition penalty");
  // A replaced tokenizer file in the run is refused by its hash.
  write_file_atomic(run + "/tokenizer.json", test::tiny_bpe_json() + "\n");
  test::expect_clean_failure("generate --checkpoint " + run + " --prompt x", "hash");
}

TEST(GenerateText, TokenizerLargerThanTheModelIsRefused) {
  TempDir dir("gen_big");
  write_file_atomic(dir / "tok.json", test::tiny_bpe_json());
  // A byte-vocabulary run (256) asked to use a 260-token tokenizer.
  const std::string data = dir / "data";
  write_file_atomic(dir / "in.txt", std::string(400, 'a') + "\n");
  data::PrepareOptions po;
  po.input = dir / "in.txt";
  po.out_dir = data;
  data::prepare_corpus(po);
  const std::string run = dir / "run";
  test::RunResult t = test::run_cli("train --preset tiny --seq-len 16 --batch 2 --steps 1 --eval-batches 1 --data " + data +
                                    " --out " + run + " --sample-tokens 0");
  ASSERT_EQ(t.status, 0) << t.output;
  test::expect_clean_failure("generate --checkpoint " + run + " --tokenizer " + (dir / "tok.json"),
                             "larger than the model's 256");
}
