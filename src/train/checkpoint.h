// Training checkpoints: everything needed to continue a run bit-identically, saved as one unit.
//
// A checkpoint is a directory of four files:
//   model.safetensors      the parameters (F32), metadata {"step": "<step>", "format": "pt"} (earlier versions
//                          wrote "ttt-model", still read; any other "format" is refused naming it); names, shapes
//                          and layouts: docs/CHECKPOINT_FORMAT.md
//   config.json            the model config (model::save_config; readable by model::load_config)
//   optimizer.safetensors  AdamW moments "m.<param>" and "v.<param>" (F32), metadata {"step": "<adam t>",
//                          "run_step": "<step>"}
//   state.json             {"format": "ttt-train-state", "version": 1, "step", "tokens_seen", "elapsed_seconds",
//                           "data_rng": [6 words as "0x..." hex strings], "train": {...},
//                           "data_fingerprint": {...} (see Corpus::fingerprint; absent in older checkpoints)}
// It is complete when all four are present and their steps agree.
//
// Layout of a run directory RUN:
//   RUN/checkpoints/step-<N>/   complete checkpoints (the last train.keep_checkpoints of them)
//   RUN/checkpoint              a relative symbolic link to the newest, "checkpoints/step-<N>"
// so RUN/checkpoint/model.safetensors etc. are where they always were. A save writes and fsyncs every file in
// RUN/checkpoints/step-<N>.tmp.<pid>/, fsyncs that directory, renames it to step-<N> (fsyncing checkpoints/),
// switches the link (a temp link renamed over it; RUN fsynced), then removes the checkpoints beyond the last K
// (renamed to a temp name first, so a half-removed one is never taken for a checkpoint) and any temp entries
// that killed saves left ("*.tmp.<pid>" of this process or of processes no longer running). A process killed
// at any point therefore leaves the previous complete checkpoint, or the new one, never a mix. Checkpoints of an
// earlier version (a plain RUN/checkpoint/ directory) load as they are and are moved to
// RUN/checkpoints/step-<N>/ (and linked) when the run continues.
#pragma once
#include <array>
#include <cstdint>
#include <nlohmann/json.hpp>
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
  nlohmann::json data_fingerprint;  // the dataset trained on (Corpus::fingerprint); null if not recorded
};

nlohmann::json run_state_to_json(const RunState& s);
RunState run_state_from_json(const nlohmann::json& j, const std::string& origin);

struct CheckpointLocation {
  std::string dir;      // the checkpoint directory (the link resolved: RUN/checkpoints/step-<N>)
  std::string run_dir;  // the run it belongs to
};

// The checkpoint that `path` names: a run directory (its newest complete checkpoint: the one RUN/checkpoint
// links to, or, if that link is missing or dangling, the complete RUN/checkpoints/step-<N> of the highest N),
// RUN/checkpoint, or a checkpoint directory itself (RUN/checkpoints/step-<N>, an older version's
// RUN/checkpoint/, or any directory holding the files; its run directory is then the directory itself).
// Throws a clear error when there is none.
CheckpointLocation find_checkpoint(const std::string& path);

// Whether RUN holds a complete checkpoint (a new run refuses such a directory).
bool run_has_checkpoint(const std::string& run_dir);

// Housekeeping before a run writes into `run_dir` (done again by every save): removes stale temp entries and
// moves an earlier version's complete RUN/checkpoint/ directory into RUN/checkpoints/step-<N>/ behind the link.
// An incomplete one of those (an interrupted save of that version) is an error naming it.
void prepare_run_dir(const std::string& run_dir);

// Saves a complete checkpoint of `state.step` into run directory `run_dir` (created if needed), makes it the
// newest and keeps the newest `keep` (>= 1) of those with a step up to this one; checkpoints with a higher step
// (left by a run continued from an older checkpoint) are removed. Refuses non-finite weights or moments.
// Returns the checkpoint directory.
std::string save_run_checkpoint(const std::string& run_dir, const model::ModelConfig& cfg,
                                const model::Params<float>& params, const AdamW& opt, const RunState& state,
                                int64_t keep);

// Keeps the checkpoint of `step` and the newest keep - 1 older ones; removes the older rest (a resumed run, at
// its start: what a killed save did not get to remove). Checkpoints with a higher step are left to the next save.
void remove_old_checkpoints(const std::string& run_dir, int64_t step, int64_t keep);

struct LoadedCheckpoint {
  std::string dir, run_dir;  // see CheckpointLocation
  model::ModelConfig cfg;
  model::Params<float> params;
  bool has_state = false;  // state.json present
  RunState state;
};

// Loads config.json and model.safetensors (shapes validated against the config; every value must be finite),
// and state.json when present (required iff require_state). Every problem gives a ttt::Error naming the file.
LoadedCheckpoint load_checkpoint(const std::string& path, bool require_state);

// Loads optimizer.safetensors of checkpoint `dir` into `opt` (constructed for the same parameters) and
// checks that its step matches `state`.
void load_optimizer(const std::string& dir, const model::Params<float>& params, const RunState& state, AdamW& opt);

}  // namespace ttt::train
