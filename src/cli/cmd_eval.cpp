// ttt eval: validation loss, bits per byte and loss per position bucket of a checkpoint; prints JSON and
// writes the buckets as CSV.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <omp.h>

#include "backend/registry.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/device_flags.h"
#include "core/error.h"
#include "core/file_io.h"
#include "data/prepare.h"
#include "data/tokens.h"
#include "train/checkpoint.h"
#include "train/evaluate.h"
#include "train/memory_budget.h"

namespace ttt::cli {

int cmd_eval(const Argv& argv) {
  Args a(argv, "eval");
  a.value("checkpoint", "run directory or its checkpoint/ subdirectory (required)")
      .value("data", "data directory whose val.bin is evaluated (default: the run's, else data/linux-doc)")
      .value("context", "tokens per evaluation window (default: the model's seq_len); may exceed it")
      .value("batches", "forward passes", "8")
      .value("batch", "windows per forward pass", "8")
      .value("buckets", "position buckets over the context", "8")
      .value("csv", "where to write the buckets (default: <checkpoint>/eval_buckets.csv)");
  declare_device_flag(a, "cuda: one NVIDIA GPU, every arch (lact, titans, tnt)");
  declare_precision_flags(a);
  a.parse();
  if (a.help_requested()) {
    std::fprintf(stdout, "%s", a.usage().c_str());
    return 0;
  }
  TTT_CHECK(a.has("checkpoint"), "ttt eval: --checkpoint DIR is required\n" << a.usage());
  const std::string device = device_flag(a, "ttt eval");
  const backend::EngineOptions engine_options = engine_options_flags(a, "ttt eval", device);
  const std::string ck_arg = a.str("checkpoint");
  train::LoadedCheckpoint ck = train::load_checkpoint(ck_arg, /*require_state=*/false);

  std::string data_dir = "data/linux-doc";
  if (a.has("data")) data_dir = a.str("data");
  else if (ck.has_state) data_dir = ck.state.train.data_dir;
  std::vector<std::string> val_files;
  try {
    val_files = data::split_files(data_dir, "val");
  } catch (const Error& e) {
    TTT_FAIL("ttt eval: no validation tokens: " << e.what() << " (give --data DIR)");
  }
  train::EvalOptions eo;
  eo.batches = a.i64("batches");
  eo.batch = a.i64("batch");
  eo.buckets = a.i64("buckets");
  eo.context = a.has("context") ? a.i64("context") : ck.cfg.seq_len;
  TTT_CHECK(eo.batches > 0, "ttt eval: --batches must be > 0, got " << eo.batches);
  TTT_CHECK(eo.batch > 0, "ttt eval: --batch must be > 0, got " << eo.batch);
  TTT_CHECK(eo.buckets > 0, "ttt eval: --buckets must be > 0, got " << eo.buckets);
  TTT_CHECK(eo.context > 0, "ttt eval: --context must be > 0, got " << eo.context);
  {
    // Before loading and allocating: absurd --batch/--batches/--context or a model too large end here, named.
    train::MemoryRequest mr;
    mr.device = device;
    mr.bf16 = engine_options.precision == backend::Precision::BF16;
    mr.bf16_activations = engine_options.bf16_activations();
    mr.threads = omp_get_max_threads();
    mr.eval_windows = double(eo.batches) * double(eo.batch);
    mr.eval_context = eo.context;
    mr.eval_batch = eo.batch;
    mr.eval_flags = "--batches " + std::to_string(eo.batches) + " x --batch " + std::to_string(eo.batch);
    train::require_memory("ttt eval", train::estimate_memory(ck.cfg, mr));
    if (device != "cpu") {
      train::MemoryRequest host;
      train::require_memory("ttt eval", train::estimate_memory(ck.cfg, host));
    }
  }
  const data::TokenSplit val = data::TokenSplit::open(val_files);  // memory-mapped, verified once
  TTT_CHECK(int64_t(val.vocab()) <= ck.cfg.vocab_size, "ttt eval: the validation split of '" << data_dir << "' has vocabulary "
                                                           << val.vocab() << ", larger than the model's " << ck.cfg.vocab_size);
  const data::DatasetInfo info = data::read_dataset_info(data_dir, val.vocab(), val.separator());
  eo.token_bytes = info.token_bytes;
  const std::unique_ptr<backend::StepEngine> engine = backend::make_step_engine(device, ck.cfg, engine_options);
  engine->attach(ck.params, nullptr);
  const train::EvalResult r = train::evaluate(*engine, val, eo);
  TTT_CHECK(std::isfinite(r.loss), "ttt eval: the validation loss of checkpoint '" << ck.dir << "' is non-finite ("
                                       << r.loss << "): its weights overflow on this data");

  const std::string csv = a.has("csv") ? a.str("csv") : (std::filesystem::path(ck_arg) / "eval_buckets.csv").string();
  write_file_atomic(csv, train::buckets_csv(r));

  nlohmann::json j;
  j["checkpoint"] = ck.dir;
  if (ck.has_state) j["step"] = ck.state.step;
  j["data"] = data_dir;
  j["context"] = r.context;
  j["trained_seq_len"] = ck.cfg.seq_len;
  j["windows"] = r.windows;
  j["tokens"] = r.tokens;
  j["val_loss"] = r.loss;  // nats per token
  j["val_ppl"] = r.perplexity;
  j["val_bits_per_token"] = r.bits_per_token;
  if (r.has_bpb()) {
    j["val_bpb"] = r.bpb;  // bits per byte of the text the scored tokens cover
    j["bytes"] = r.bytes;
  } else {
    j["val_bpb_note"] = "no token byte table in the dataset's meta.json: bits per byte unknown";
  }
  j["device"] = device;
  // Unigram entropy of the training tokens, bits per token (meta.json of the data directory), for comparison.
  if (info.unigram_entropy_bits >= 0) j["unigram_entropy_bits"] = info.unigram_entropy_bits;
  nlohmann::json bs = nlohmann::json::array();
  for (const auto& b : r.buckets)
    bs.push_back({{"start", b.start}, {"end", b.end}, {"loss", b.loss}, {"bpb", b.bpb}, {"tokens", b.tokens}});
  j["buckets"] = bs;
  j["csv"] = csv;
  std::cout << j.dump(2) << std::endl;
  return 0;
}

}  // namespace ttt::cli
