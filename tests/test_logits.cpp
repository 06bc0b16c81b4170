// `ttt logits`: its file holds the byte tokens of the input (a run with another tokenizer: test_generate_text.cpp) and the logits of the full-sequence forward (also
// past seq_len, where the input is fed in blocks); bad inputs end in clear errors. Also the checkpoint's
// safetensors metadata: "format" "pt" written, the "ttt-model" of earlier versions read, any other refused.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "cli_test_util.h"
#include "expect_error.h"
#include "core/file_io.h"
#include "core/safetensors.h"
#include "model/model.h"
#include "train/checkpoint.h"
#include "train_test_util.h"

using namespace ttt;
namespace fs = std::filesystem;
using test::expect_clean_failure;
using test::run_cli;

namespace {

std::string q(const std::string& p) { return "'" + p + "'"; }

// A run directory with an initialized (untrained) checkpoint of `cfg`.
std::string write_checkpoint(const std::string& dir, const model::ModelConfig& cfg) {
  const std::string run = dir + "/run";
  test_util::write_initial_checkpoint(run, cfg, dir, /*seed=*/3);
  return run;
}

// ||a - b|| / ||b||.
double rel_error(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    num += std::pow(double(a[i]) - double(b[i]), 2);
    den += std::pow(double(b[i]), 2);
  }
  return std::sqrt(num / den);
}

}  // namespace

TEST(Logits, FileHoldsTokensAndTheFullForwardLogits) {
  const std::string dir = test_util::temp_dir("logits_ok");
  model::ModelConfig cfg = test_util::small_lact_config();  // seq_len 16: the 41-byte input spans three blocks
  cfg.lr_init = 0.05;  // visible memory updates
  const std::string run = write_checkpoint(dir, cfg);
  const std::string text = "The kernel maps the page; the task sleeps.";
  write_file_atomic(dir + "/in.txt", text);
  const test::RunResult r = run_cli("logits --checkpoint " + q(run) + " --input " + q(dir + "/in.txt") + " --out " +
                                    q(dir + "/out.safetensors"));
  ASSERT_EQ(r.status, 0) << r.output;
  const SafeTensors st = safetensors_load(dir + "/out.safetensors");
  EXPECT_EQ(st.metadata.at("format"), "pt");
  const Tensor& tokens = st.get("tokens");
  const Tensor& logits = st.get("logits");
  const int64_t T = int64_t(text.size());
  ASSERT_EQ(tokens.dtype(), DType::I64);
  ASSERT_EQ(tokens.shape(), (Shape{T}));
  ASSERT_EQ(logits.dtype(), DType::F32);
  ASSERT_EQ(logits.shape(), (Shape{T, cfg.vocab_size}));
  for (int64_t i = 0; i < T; ++i) EXPECT_EQ(tokens.data<int64_t>()[i], int64_t(static_cast<unsigned char>(text[size_t(i)])));

  const train::LoadedCheckpoint ck = train::load_checkpoint(run, false);
  model::Batch b;
  b.sequences = 1;
  b.len = T;
  for (unsigned char c : text) b.inputs.push_back(int32_t(c));
  b.targets.assign(size_t(T), -1);
  const ag::Mat<float> full = model::forward<float>(ck.cfg, ck.params, b, nullptr, false, true).logits;
  EXPECT_LE(rel_error(logits.data<float>(), full.data.data(), T * cfg.vocab_size), 1e-5);
}

TEST(Logits, BadInputsEndInClearErrors) {
  const std::string dir = test_util::temp_dir("logits_bad");
  const std::string run = write_checkpoint(dir, test_util::small_lact_config());
  write_file_atomic(dir + "/empty.txt", "");
  write_file_atomic(dir + "/in.txt", "some text");
  const std::string out = " --out " + q(dir + "/o.safetensors");
  expect_clean_failure("logits --checkpoint " + q(run) + " --input " + q(dir + "/empty.txt") + out, "is empty");
  expect_clean_failure("logits --checkpoint " + q(run) + " --input " + q(dir + "/missing.txt") + out, "missing.txt");
  expect_clean_failure("logits --checkpoint " + q(dir + "/no-run") + " --input " + q(dir + "/in.txt") + out, "no-run");
  expect_clean_failure("logits --input " + q(dir + "/in.txt") + out, "--checkpoint");
  expect_clean_failure("logits --checkpoint " + q(run) + " --input " + q(dir + "/in.txt"), "--out");
  expect_clean_failure("logits --checkpoint " + q(run) + " --input " + q(dir + "/in.txt") + out + " --device tpu",
                       "tpu");
  // A run without a recorded tokenizer reads bytes: a model of vocabulary 200 cannot take them.
  model::ModelConfig small = test_util::small_lact_config();
  small.vocab_size = 200;
  const std::string run200 = write_checkpoint(dir + "/v200", small);
  expect_clean_failure("logits --checkpoint " + q(run200) + " --input " + q(dir + "/in.txt") + out,
                       "larger than the model's 200");
  // Logits that cannot fit the memory available are refused before allocation, naming the input's length
  // (200,000 tokens: 0.4 GB of logits and their file, over a limit of 100M).
  write_file_atomic(dir + "/long.txt", std::string(200000, 'a'));
  ::setenv("TTT_MEMORY_LIMIT", "100M", 1);
  expect_clean_failure("logits --checkpoint " + q(run) + " --input " + q(dir + "/long.txt") + out,
                       "--input of 200000 tokens");
  ::unsetenv("TTT_MEMORY_LIMIT");
  EXPECT_FALSE(fs::exists(dir + "/o.safetensors"));
}

TEST(CheckpointFormat, WritesPtReadsTheEarlierTttModelAndRefusesOthers) {
  const std::string dir = test_util::temp_dir("ckpt_format");
  const model::ModelConfig cfg = test_util::small_lact_config();
  const std::string run = write_checkpoint(dir, cfg);
  const std::string model_path = train::find_checkpoint(run).dir + "/model.safetensors";
  SafeTensors st = safetensors_load(model_path);
  EXPECT_EQ(st.metadata.at("format"), "pt");
  const train::LoadedCheckpoint a = train::load_checkpoint(run, true);

  st.metadata["format"] = "ttt-model";  // what earlier versions wrote
  write_file_atomic(model_path, safetensors_serialize(st));
  const train::LoadedCheckpoint b = train::load_checkpoint(run, true);
  EXPECT_EQ(a.params.values[0].data, b.params.values[0].data);

  st.metadata["format"] = "tf";
  write_file_atomic(model_path, safetensors_serialize(st));
  test::expect_error([&] { train::load_checkpoint(run, true); }, {"model.safetensors", "\"format\" is \"tf\""});

  // An integer tensor in place of a parameter names it.
  st.metadata["format"] = "pt";
  SafeTensors bad;
  bad.metadata = st.metadata;
  for (auto& [name, t] : st.tensors) bad.add(name, name == "layers.0.wo" ? t.to(DType::I64) : t);
  write_file_atomic(model_path, safetensors_serialize(bad));
  test::expect_error([&] { train::load_checkpoint(run, true); }, "parameter 'layers.0.wo' is I64");
}
