// Bad input to the `ttt` binary: a clear message and a non-zero exit, never a crash (signal) or a hang.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "cli_test_util.h"
#include "core/file_io.h"
#include "core/safetensors.h"
#include "data/tokens.h"
#include "model/model.h"
#include "train/checkpoint.h"
#include "crafted_files.h"

using namespace ttt;
using ttt::test::expect_clean_failure;
using ttt::test::run_cli;
using ttt::test::RunResult;
namespace fs = std::filesystem;

namespace {

struct Fixture {
  fs::path dir;
  model::ModelConfig cfg;
};

std::string q(const fs::path& p) { return "'" + p.string() + "'"; }

// A temp dir with a small valid checkpoint in run/ (run/checkpoint links to it) and a valid byte corpus in data/.
Fixture make_fixture(const std::string& tag) {
  Fixture f;
  f.dir = fs::temp_directory_path() / ("ttt_test_cli_" + tag + "_" + std::to_string(::getpid()));
  fs::remove_all(f.dir);
  fs::create_directories(f.dir);
  f.cfg = model::preset("tiny");
  f.cfg.dim = 16;
  f.cfg.n_layers = 1;
  f.cfg.n_attn_heads = 2;
  f.cfg.n_mem_heads = 2;
  f.cfg.chunk = 8;
  f.cfg.window = 8;
  f.cfg.seq_len = 16;
  f.cfg.mlp_hidden = 32;
  model::Params<float> p = model::make_params<float>(f.cfg);
  model::init_params(f.cfg, p, 1);
  std::vector<int64_t> sizes;
  for (auto& m : p.values) sizes.push_back(m.size());
  train::AdamW opt(p.names, sizes, train::AdamWConfig{});
  train::RunState st;
  st.train.seq_len = f.cfg.seq_len;
  st.train.data_dir = (f.dir / "data").string();
  train::save_run_checkpoint((f.dir / "run").string(), f.cfg, p, opt, st, /*keep=*/1);
  std::string text;
  for (int i = 0; i < 40; ++i) text += "some text of a document number " + std::to_string(i) + '\0';
  fs::create_directories(f.dir / "data");
  data::save_byte_tokens((f.dir / "data/train.bin").string(), text, 40);
  data::save_byte_tokens((f.dir / "data/val.bin").string(), text, 40);
  return f;
}

void truncate_file(const fs::path& p, double keep) {
  std::string b = read_file(p.string());
  write_file_atomic(p.string(), b.substr(0, size_t(double(b.size()) * keep)));
}

}  // namespace

TEST(CliErrors, ValidFixtureWorks) {
  Fixture f = make_fixture("ok");
  RunResult r = run_cli("eval --checkpoint " + q(f.dir / "run") + " --data " + q(f.dir / "data") +
                        " --batches 1 --batch 2 --csv " + q(f.dir / "b.csv"));
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("val_bpb"), std::string::npos) << r.output;
  EXPECT_TRUE(file_exists((f.dir / "b.csv").string()));
  fs::remove_all(f.dir);
}

TEST(CliErrors, UnknownFlagForEveryCommand) {
  for (const char* c : {"train", "eval", "generate", "logits", "prepare", "op lact", "op tnt", "bench op"})
    expect_clean_failure(std::string(c) + " --no-such-flag 1", "unknown flag");
  expect_clean_failure("bench --no-such-flag 1", "subcommand");  // `bench` alone only names its subcommands
  expect_clean_failure("frobnicate", "unknown command");
  expect_clean_failure("train --steps abc", "integer");
  expect_clean_failure("train --device tpu", "cpu or cuda");
  expect_clean_failure("eval --checkpoint x --device tpu", "cpu or cuda");
  expect_clean_failure("train --precision bf16", "--device cuda");
  expect_clean_failure("train --activations fp32", "--precision bf16");
  expect_clean_failure("eval --checkpoint x --activations fp32", "--precision bf16");
  expect_clean_failure("bench step --activations fp32", "--device cuda");
}

TEST(CliErrors, MissingCheckpoint) {
  Fixture f = make_fixture("missing");
  expect_clean_failure("eval --checkpoint " + q(f.dir / "nope"), "does not exist");
  expect_clean_failure("eval --checkpoint " + q(f.dir / "data"), "no checkpoint");
  expect_clean_failure("train --resume " + q(f.dir / "nope"), "does not exist");
  expect_clean_failure("eval", "--checkpoint");
  fs::remove_all(f.dir);
}

TEST(CliErrors, TruncatedOrCorruptCheckpoint) {
  Fixture f = make_fixture("trunc");
  const fs::path ck = f.dir / "run/checkpoint";
  const std::string good_model = read_file((ck / "model.safetensors").string());
  truncate_file(ck / "model.safetensors", 0.5);
  expect_clean_failure("eval --checkpoint " + q(f.dir / "run") + " --data " + q(f.dir / "data"), "truncated");
  expect_clean_failure("train --resume " + q(f.dir / "run"), "truncated");
  write_file_atomic((ck / "model.safetensors").string(), "xyz");
  expect_clean_failure("eval --checkpoint " + q(f.dir / "run") + " --data " + q(f.dir / "data"), "safetensors");
  write_file_atomic((ck / "model.safetensors").string(), good_model);

  const std::string good_opt = read_file((ck / "optimizer.safetensors").string());
  truncate_file(ck / "optimizer.safetensors", 0.7);
  expect_clean_failure("train --resume " + q(f.dir / "run"), "optimizer.safetensors");
  write_file_atomic((ck / "optimizer.safetensors").string(), good_opt);

  const std::string good_state = read_file((ck / "state.json").string());
  write_file_atomic((ck / "state.json").string(), "{\"step\": ");
  expect_clean_failure("train --resume " + q(f.dir / "run"), "state.json");
  write_file_atomic((ck / "state.json").string(), good_state);

  const std::string good_cfg = read_file((ck / "config.json").string());
  write_file_atomic((ck / "config.json").string(), "this is not json {{{");
  expect_clean_failure("eval --checkpoint " + q(f.dir / "run") + " --data " + q(f.dir / "data"), "invalid JSON");
  // A config that parses but does not fit the weights.
  model::ModelConfig other = f.cfg;
  other.dim = 32;
  model::save_config((ck / "config.json").string(), other);
  expect_clean_failure("eval --checkpoint " + q(f.dir / "run") + " --data " + q(f.dir / "data"), "config expects");
  write_file_atomic((ck / "config.json").string(), good_cfg);
  fs::remove((ck / "model.safetensors"));
  expect_clean_failure("eval --checkpoint " + q(ck) + " --data " + q(f.dir / "data"), "model.safetensors");
  fs::remove_all(f.dir);
}

TEST(CliErrors, InconsistentModelConfig) {
  Fixture f = make_fixture("cfg");
  write_file_atomic((f.dir / "heads.json").string(), "{\"dim\": 30, \"n_attn_heads\": 4}");
  expect_clean_failure("train --config " + q(f.dir / "heads.json") + " --data " + q(f.dir / "data") + " --out " +
                           q(f.dir / "r1"),
                       "divisible");
  write_file_atomic((f.dir / "garbage.json").string(), "\x01\x02 garbage");
  expect_clean_failure("train --config " + q(f.dir / "garbage.json") + " --data " + q(f.dir / "data") + " --out " +
                           q(f.dir / "r2"),
                       "invalid JSON");
  write_file_atomic((f.dir / "unknown.json").string(), "{\"dimension\": 64}");
  expect_clean_failure("train --config " + q(f.dir / "unknown.json") + " --data " + q(f.dir / "data"), "unknown key");
  expect_clean_failure("train --config " + q(f.dir / "absent.json"), "does not exist");
  expect_clean_failure("train --preset nosuch --data " + q(f.dir / "data"), "preset");
  fs::remove_all(f.dir);
}

TEST(CliErrors, BadTokenFiles) {
  Fixture f = make_fixture("tok");
  const fs::path val = f.dir / "data/val.bin", train = f.dir / "data/train.bin";
  const std::string good = read_file(val.string());
  std::string flipped = good;
  flipped[40] = char(flipped[40] ^ 0x01);  // a bit of the stored checksum
  write_file_atomic(val.string(), flipped);
  const std::string small = " --steps 1 --batch 1 --seq-len 8 --sample-tokens 0 --data " + q(f.dir / "data");
  expect_clean_failure("train" + small + " --out " + q(f.dir / "r1"), "checksum");
  expect_clean_failure("eval --checkpoint " + q(f.dir / "run") + " --data " + q(f.dir / "data"), "checksum");
  write_file_atomic(val.string(), good);
  truncate_file(train, 0.6);
  expect_clean_failure("train" + small + " --out " + q(f.dir / "r2"), "truncated");
  fs::remove(train);
  expect_clean_failure("train" + small + " --out " + q(f.dir / "r3"), "train.bin");
  write_file_atomic(train.string(), "");
  expect_clean_failure("train" + small + " --out " + q(f.dir / "r4"), "train.bin");
  // A corpus shorter than one training window.
  data::save_byte_tokens(train.string(), std::string("ab\0", 3), 1);
  expect_clean_failure("train" + small + " --out " + q(f.dir / "r5"), "fewer");
  expect_clean_failure("train --steps 1 --data " + q(f.dir / "nodata") + " --out " + q(f.dir / "r6"), "does not exist");
  fs::remove_all(f.dir);
}

TEST(CliErrors, EmptyCorpusForPrepare) {
  Fixture f = make_fixture("prep");
  fs::create_directories(f.dir / "empty");
  expect_clean_failure("prepare --input " + q(f.dir / "empty") + " --out " + q(f.dir / "out"), "empty");
  expect_clean_failure("prepare --input " + q(f.dir / "absent") + " --out " + q(f.dir / "out"), "does not exist");
  fs::remove_all(f.dir);
}

TEST(CliErrors, GenerateBadInput) {
  Fixture f = make_fixture("generate");
  const std::string run = q(f.dir / "run");
  // A valid checkpoint generates.
  RunResult ok = run_cli("generate --checkpoint " + run + " --prompt Hi --max-new-tokens 5 --seed 3");
  EXPECT_TRUE(WIFEXITED(ok.status) && WEXITSTATUS(ok.status) == 0) << ok.output;
  expect_clean_failure("generate --prompt Hi", "--checkpoint");
  expect_clean_failure("generate --checkpoint " + q(f.dir / "nope"), "does not exist");
  expect_clean_failure("generate --checkpoint " + run + " --max-new-tokens -3", "max_new_tokens");
  expect_clean_failure("generate --checkpoint " + run + " --top-p 1.5", "top_p");
  expect_clean_failure("generate --checkpoint " + run + " --temperature -1", "temperature");
  expect_clean_failure("generate --checkpoint " + run + " --max-new-tokens many", "integer");
  const fs::path ck = f.dir / "run/checkpoint";
  truncate_file(ck / "model.safetensors", 0.5);
  expect_clean_failure("generate --checkpoint " + run, "truncated");
  write_file_atomic((ck / "config.json").string(), "{\"dim\": 30, \"n_attn_heads\": 4}");
  expect_clean_failure("generate --checkpoint " + run, "dim");
  fs::remove_all(f.dir);
}

namespace {
// The fixture's small model as a config file, and the flags of a short training run on its corpus.
std::string small_train_flags(const Fixture& f) {
  model::save_config((f.dir / "small.json").string(), f.cfg);
  return " --config " + q(f.dir / "small.json") + " --data " + q(f.dir / "data") +
         " --batch 2 --eval-batches 1 --sample-tokens 0";
}
}  // namespace

TEST(CliErrors, DivergedTrainingFailsAndSavesNoCheckpoint) {
  Fixture f = make_fixture("diverge");
  // The first AdamW step with this LR overflows the weights; the final validation would be NaN.
  expect_clean_failure("train" + small_train_flags(f) + " --steps 1 --warmup 0 --lr 3e38 --weight-decay 0 --out " +
                           q(f.dir / "r1"),
                       "non-finite");
  EXPECT_THROW(train::load_checkpoint((f.dir / "r1").string(), false), Error) << "a checkpoint of non-finite weights was written";
  fs::remove_all(f.dir);
}

// Finite weights so large that the model's activations overflow (what a diverged run used to save): eval and
// generate fail instead of printing a null loss or sampling from NaN logits.
TEST(CliErrors, CheckpointWhoseOutputsOverflow) {
  Fixture f = make_fixture("overflow");
  const fs::path weights = f.dir / "run/checkpoint/model.safetensors";
  SafeTensors st = safetensors_load(weights.string());
  for (auto& [name, t] : st.tensors)
    for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = 3e38f;
  safetensors_save(weights.string(), st);
  expect_clean_failure("eval --checkpoint " + q(f.dir / "run") + " --data " + q(f.dir / "data") + " --batches 1 --batch 2",
                       "non-finite");
  expect_clean_failure("generate --checkpoint " + q(f.dir / "run") + " --max-new-tokens 3", "non-finite");
  fs::remove_all(f.dir);
}

TEST(CliErrors, BadTrainingFlags) {
  Fixture f = make_fixture("flags");
  expect_clean_failure("train" + small_train_flags(f) + " --steps 1 --clip -1 --out " + q(f.dir / "r1"), "clip");
  expect_clean_failure("train" + small_train_flags(f) + " --steps 1 --keep-checkpoints 0 --out " + q(f.dir / "r2"),
                       "--keep-checkpoints must be >= 1");
  for (const char* bad : {"-1", "nan", "2e6"})
    expect_clean_failure("train" + small_train_flags(f) + " --steps 1 --grad-bucket-mb " + bad + " --out " + q(f.dir / "r3"),
                         std::string("--grad-bucket-mb must be between 0 and 1000000 megabytes, got ") + bad);
  fs::remove_all(f.dir);
}

TEST(CliErrors, ResumeWithAnotherDataset) {
  Fixture f = make_fixture("resume_data");
  const RunResult first = run_cli("train" + small_train_flags(f) + " --steps 1 --out " + q(f.dir / "r"));
  ASSERT_TRUE(WIFEXITED(first.status) && WEXITSTATUS(first.status) == 0) << first.output;
  // Another corpus: same vocabulary, different text.
  std::string text;
  for (int i = 0; i < 40; ++i) text += "other words in another document " + std::to_string(i) + '\0';
  fs::create_directories(f.dir / "other");
  data::save_byte_tokens((f.dir / "other/train.bin").string(), text, 40);
  data::save_byte_tokens((f.dir / "other/val.bin").string(), text, 40);
  expect_clean_failure("train --resume " + q(f.dir / "r") + " --steps 2 --data " + q(f.dir / "other"), "fingerprint");
  fs::remove_all(f.dir);
}

// Issue 10 items 1, 6 and 7: the crafted files of the issue end with a clear error, never a signal.
TEST(CliErrors, CraftedSizesFromIssue10) {
  Fixture f = make_fixture("crafted");
  write_file_atomic((f.dir / "x.st").string(), test::wrapping_lact_safetensors());
  expect_clean_failure("op lact --in " + q(f.dir / "x.st") + " --out " + q(f.dir / "o.st"), "overflows");
  write_file_atomic((f.dir / "huge.json").string(), "{\"dim\": 4611686018427387904}");
  expect_clean_failure("train --config " + q(f.dir / "huge.json") + " --data " + q(f.dir / "data") + " --out " +
                           q(f.dir / "r"),
                       "overflows");
  write_file_atomic((f.dir / "data/val.bin").string(), test::huge_vocab_token_file());
  expect_clean_failure("eval --checkpoint " + q(f.dir / "run") + " --data " + q(f.dir / "data"), "2147483647");
  fs::remove_all(f.dir);
}

// Issue 11: every command that takes --device checks it in one place (backend/registry.h), with the same message.
TEST(CliErrors, DeviceFlagOfEveryCommand) {
  for (const char* c : {"train", "eval --checkpoint x", "generate --checkpoint x", "bench step", "bench op",
                        "bench tnt", "op lact --in x --out y", "op tnt --in x --out y"})
    expect_clean_failure(std::string(c) + " --device tpu", "--device tpu: unknown device 'tpu' (choose cpu or cuda)");
  expect_clean_failure("bench op --precision fp16", "--precision must be fp32, tf32 or bf16, got 'fp16'");
  expect_clean_failure("bench step --precision fp16", "--device cuda");
  expect_clean_failure("train --precision fp32", "--precision applies to --device cuda");
  expect_clean_failure("bench step --recompute full", "--recompute applies to --device cuda");
  expect_clean_failure("train --recompute some", "--recompute applies to --device cuda");
  expect_clean_failure("bench step --recompute none", "--recompute applies to --device cuda");
}

// Issue 11: the --device help of the commands that run the model says what runs on the GPU: every arch, not
// "arch lact" alone (as it did).
TEST(CliErrors, DeviceHelpNamesEveryArchOnTheGpu) {
  for (const char* c : {"train", "eval", "generate", "bench step"}) {
    SCOPED_TRACE(c);
    const RunResult r = run_cli(std::string(c) + " --help");
    ASSERT_TRUE(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0) << r.output;
    const size_t at = r.output.find("--device");
    ASSERT_NE(at, std::string::npos) << r.output;
    const std::string line = r.output.substr(at, r.output.find("\n  --", at) - at);  // up to the next flag
    EXPECT_EQ(line.find("arch lact"), std::string::npos) << line;
    EXPECT_NE(line.find("lact, titans, tnt"), std::string::npos) << line;
  }
}

// ttt export --to lact-hf / ttt import --from lact-hf: what they refuse, and that an imported run is accepted by
// logits, eval and train --resume (fine-tuning). Logit parity: tests/reference/check_lact_hf.py.
TEST(CliErrors, LactHfExportImport) {
  Fixture f = make_fixture("lacthf");
  const std::string run = q(f.dir / "run");
  // The fixture's model lacks the public model's switches: refused naming the field.
  expect_clean_failure("export --to lact-hf --checkpoint " + run + " --out " + q(f.dir / "x"), "ttt_norm_shared");
  expect_clean_failure("export --to onnx --checkpoint " + run + " --out " + q(f.dir / "x"), "lact-hf");
  expect_clean_failure("export --to lact-hf --checkpoint " + run + " --out " + q(f.dir / "data"), "not an empty directory");

  // A run with the switches exports; its export imports.
  model::ModelConfig cfg = f.cfg;
  cfg.ttt_rope_attn_heads = true;
  cfg.ttt_norm_shared = true;
  cfg.ttt_norm_eps = 1e-5;
  model::Params<float> p = model::make_params<float>(cfg);
  model::init_params(cfg, p, 2);
  std::vector<int64_t> sizes;
  for (auto& m : p.values) sizes.push_back(m.size());
  train::RunState st;
  st.train.seq_len = cfg.seq_len;
  st.train.data_dir = (f.dir / "data").string();
  train::save_run_checkpoint((f.dir / "pub").string(), cfg, p, train::AdamW(p.names, sizes, train::AdamWConfig{}), st, 1);
  RunResult r = run_cli("export --to lact-hf --checkpoint " + q(f.dir / "pub") + " --out " + q(f.dir / "hf"));
  ASSERT_EQ(r.status, 0) << r.output;
  r = run_cli("import --from lact-hf " + q(f.dir / "hf") + " --out " + q(f.dir / "imported") + " --data " +
              q(f.dir / "data"));
  ASSERT_EQ(r.status, 0) << r.output;
  write_file_atomic((f.dir / "in.txt").string(), "some text of a document");
  r = run_cli("logits --checkpoint " + q(f.dir / "imported") + " --input " + q(f.dir / "in.txt") + " --out " +
              q(f.dir / "l.safetensors"));
  EXPECT_EQ(r.status, 0) << r.output;
  r = run_cli("train --resume " + q(f.dir / "imported") + " --steps 1 --sample-tokens 0");
  EXPECT_EQ(r.status, 0) << r.output;
  expect_clean_failure("import --from lact-hf " + q(f.dir / "hf") + " --out " + q(f.dir / "imported"),
                       "not an empty directory");
  expect_clean_failure("import --from lact-hf --out " + q(f.dir / "y"), "expected one directory");
  expect_clean_failure("import --from gguf " + q(f.dir / "hf") + " --out " + q(f.dir / "y"), "lact-hf");
  expect_clean_failure("import --from lact-hf " + q(f.dir / "data") + " --out " + q(f.dir / "y"), "config.json");

  // Damaged copies of the exported directory: each refused naming the field or tensor.
  auto damaged = [&](const std::string& tag, const std::function<void(nlohmann::json&, SafeTensors&)>& damage) {
    const fs::path d = f.dir / ("bad_" + tag);
    fs::create_directories(d);
    nlohmann::json j = nlohmann::json::parse(read_file((f.dir / "hf/config.json").string()));
    SafeTensors w = safetensors_load((f.dir / "hf/model.safetensors").string());
    damage(j, w);
    write_file_atomic((d / "config.json").string(), j.dump());
    safetensors_save((d / "model.safetensors").string(), w);
    return "import --from lact-hf " + q(d) + " --out " + q(f.dir / ("out_" + tag));
  };
  expect_clean_failure(damaged("qkvbias", [](nlohmann::json& j, SafeTensors&) { j["qkv_bias"] = true; }), "qkv_bias");
  expect_clean_failure(damaged("qknorm", [](nlohmann::json& j, SafeTensors&) { j["attn_qk_norm"] = true; }),
                       "attn_qk_norm");
  expect_clean_failure(damaged("missing",
                               [](nlohmann::json&, SafeTensors& w) {
                                 SafeTensors kept;
                                 for (auto& [n, t] : w.tensors)
                                   if (n != "model.layers.0.attn.w0") kept.add(n, t);
                                 w = kept;
                               }),
                       "missing tensor 'model.layers.0.attn.w0'");
  expect_clean_failure(damaged("shape",
                               [](nlohmann::json&, SafeTensors& w) {
                                 for (auto& [n, t] : w.tensors)
                                   if (n == "model.norm.weight") t = Tensor::zeros({3}, DType::F32);
                               }),
                       "'model.norm.weight'");
  fs::remove_all(f.dir);
}
