// Training hyper-parameters (everything `ttt train` needs besides the model config), with JSON I/O.
// Stored in the run directory's config.json (under "train") and in the checkpoint's state.json, so that
// `--resume` continues with exactly the same settings.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace ttt::train {

// Defaults: tuned so that `ttt train` with no flags (tiny preset, data/linux-doc) runs ~4-6 minutes on
// 2 CPU cores and ends near 2.5 validation bits per byte (1500 steps x 4 x 256 tokens = 1.5M tokens).
struct TrainConfig {
  std::string preset = "tiny";              // name of the model preset (or config file) the run started from
  std::string data_dir = "data/linux-doc";  // train.bin, val.bin, meta.json (made absolute when a run starts)
  std::string device = "cpu";
  int64_t steps = 1500;       // optimizer steps (the LR schedule spans them)
  int64_t batch = 4;          // sequences per micro-batch
  int64_t seq_len = 256;      // tokens per sequence (the model's seq_len)
  int64_t accum = 1;          // micro-batches per optimizer step
  double lr = 3e-3;           // max learning rate
  double min_lr_ratio = 0.1;  // final LR = min_lr_ratio * lr (cosine)
  int64_t warmup = 30;        // linear warmup steps
  double weight_decay = 0.1;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double clip = 1.0;          // global gradient-norm clip (0: off)
  int64_t eval_every = 250;   // validation every N steps and at the end (0: only at the end)
  int64_t eval_batches = 32;  // validation batches of `batch` windows each (128 windows by default)
  int64_t ckpt_every = 500;   // checkpoint every N steps and at the end (0: only at the end)
  int64_t keep_checkpoints = 1;  // complete checkpoints kept (besides the one being written)
  int64_t log_every = 10;     // progress line every N steps
  uint64_t seed = 1;          // model init seed; the data RNG is seeded from it too
  // Training windows stop at a document separator: the targets after the first separator past a window's first
  // token are ignored (see sample_batch). true: windows run across documents (the separator is then an ordinary
  // token in the middle of the context).
  bool cross_documents = false;
  // TNT two-stage training (docs/ALGORITHMS.md §6.4): stage 2 starts from a stage-1 run, with new local chunk sizes,
  // and trains only the local memories' own parameters.
  int64_t stage = 1;          // 1 or 2
  std::string stage1_run;     // stage 2: the stage-1 run directory it started from

  int64_t tokens_per_step() const { return batch * accum * seq_len; }  // fits int64 after validate()
  bool operator==(const TrainConfig&) const = default;
};

// Throws ttt::Error naming the offending field.
void validate(const TrainConfig& c);
nlohmann::json train_config_to_json(const TrainConfig& c);
// Unknown keys and wrong types throw naming the key; missing keys keep the defaults. Validates.
TrainConfig train_config_from_json(const nlohmann::json& j);

}  // namespace ttt::train
