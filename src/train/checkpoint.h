// Training checkpoints: everything needed to continue a run bit-identically.
//
// Layout of a checkpoint directory (a run's DIR/checkpoint):
//   model.safetensors      the parameters (F32), metadata {"step": "<step>"}
//   config.json            the model config (model::save_config; readable by model::load_config)
//   optimizer.safetensors  AdamW moments "m.<param>" and "v.<param>" (F32), metadata {"step": "<adam t>"}
//   state.json             {"format": "ttt-train-state", "version": 1, "step", "tokens_seen",
//                           "elapsed_seconds", "data_rng": [6 words as "0x..." hex strings], "train": {...}}
// Every file is written atomically (temp file + rename), state.json last: a checkpoint whose state.json is
// present is complete. Loading cross-checks the step recorded in each file, so a directory mixing files of
// two different saves (a save interrupted half-way) is reported instead of silently resumed.
#pragma once
#include <array>
#include <cstdint>
#include <string>

#include "model/model.h"
#include "train/optimizer.h"
#include "train/train_config.h"

namespace ttt::train {

struct RunState {
  int64_t step = 0;          // optimizer steps completed
  int64_t tokens_seen = 0;   // training tokens consumed
  double elapsed_seconds = 0;  // wall time spent training so far (informational)
  std::array<uint64_t, 6> data_rng{};  // ttt::Rng::save() of the batch sampler
  TrainConfig train;
};

nlohmann::json run_state_to_json(const RunState& s);
RunState run_state_from_json(const nlohmann::json& j, const std::string& origin);

// The checkpoint directory for `path`: `path` itself if it holds model.safetensors or state.json,
// else path/checkpoint if that does. Throws a clear error otherwise.
std::string find_checkpoint_dir(const std::string& path);

// Writes the four files (state.json last). Creates `dir` if needed.
void save_checkpoint(const std::string& dir, const model::ModelConfig& cfg, const model::Params<float>& params,
                     const AdamW& opt, const RunState& state);

struct LoadedCheckpoint {
  std::string dir;
  model::ModelConfig cfg;
  model::Params<float> params;
  bool has_state = false;  // state.json present
  RunState state;
};

// Loads config.json and model.safetensors (shapes validated against the config), and state.json when
// present (required iff require_state). Every problem gives a ttt::Error naming the file.
LoadedCheckpoint load_checkpoint(const std::string& path, bool require_state);

// Loads optimizer.safetensors of checkpoint `dir` into `opt` (constructed for the same parameters) and
// checks that its step matches `state`.
void load_optimizer(const std::string& dir, const model::Params<float>& params, const RunState& state, AdamW& opt);

}  // namespace ttt::train
