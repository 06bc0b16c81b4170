#include "train/checkpoint.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <vector>

#include "core/error.h"
#include "core/file_io.h"
#include "core/safetensors.h"

namespace ttt::train {

using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

std::string hex64(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%016llx", static_cast<unsigned long long>(v));
  return buf;
}

uint64_t parse_hex64(const json& v, const std::string& origin) {
  TTT_CHECK(v.is_string(), origin << ": data_rng entries must be hex strings, got " << v.dump());
  const std::string s = v.get<std::string>();
  TTT_CHECK(s.size() > 2 && s.size() <= 18 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X'),
            origin << ": bad data_rng word '" << s << "'");
  uint64_t r = 0;
  for (size_t i = 2; i < s.size(); ++i) {
    const char c = s[i];
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    TTT_CHECK(d >= 0, origin << ": bad data_rng word '" << s << "'");
    r = (r << 4) | uint64_t(d);
  }
  return r;
}

int64_t metadata_step(const SafeTensors& st, const std::string& origin) {
  auto it = st.metadata.find("step");
  TTT_CHECK(it != st.metadata.end(), origin << ": metadata has no 'step'");
  try {
    size_t pos = 0;
    const long long v = std::stoll(it->second, &pos);
    TTT_CHECK(pos == it->second.size() && v >= 0, "");
    return v;
  } catch (...) {
    TTT_FAIL(origin << ": metadata 'step' is not a non-negative integer: '" << it->second << "'");
  }
}

}  // namespace

json run_state_to_json(const RunState& s) {
  json rng = json::array();
  for (uint64_t w : s.data_rng) rng.push_back(hex64(w));
  json j{{"format", "ttt-train-state"}, {"version", 1},           {"step", s.step},
         {"tokens_seen", s.tokens_seen},   {"elapsed_seconds", s.elapsed_seconds}, {"data_rng", rng},
         {"train", train_config_to_json(s.train)}};
  if (!s.data_fingerprint.is_null()) j["data_fingerprint"] = s.data_fingerprint;
  return j;
}

RunState run_state_from_json(const json& j, const std::string& origin) {
  TTT_CHECK(j.is_object(), origin << ": expected a JSON object");
  // Compared as JSON values: a "format" of another type is a mismatch, not a JSON type_error.
  TTT_CHECK(j.contains("format") && j["format"] == "ttt-train-state",
            origin << ": not a training state (format is not \"ttt-train-state\")");
  TTT_CHECK(j.contains("version") && j["version"] == 1, origin << ": unsupported state version " << j.value("version", json()).dump());
  RunState s;
  auto integer = [&](const char* key) -> int64_t {
    TTT_CHECK(j.contains(key) && j[key].is_number_integer() && j[key].get<int64_t>() >= 0,
              origin << ": \"" << key << "\" must be a non-negative integer");
    return j[key].get<int64_t>();
  };
  s.step = integer("step");
  s.tokens_seen = integer("tokens_seen");
  if (j.contains("elapsed_seconds") && j["elapsed_seconds"].is_number()) s.elapsed_seconds = j["elapsed_seconds"].get<double>();
  TTT_CHECK(j.contains("data_rng") && j["data_rng"].is_array() && j["data_rng"].size() == 6,
            origin << ": \"data_rng\" must be an array of 6 hex strings");
  for (size_t i = 0; i < 6; ++i) s.data_rng[i] = parse_hex64(j["data_rng"][i], origin);
  if (j.contains("data_fingerprint")) {
    TTT_CHECK(j["data_fingerprint"].is_object(), origin << ": \"data_fingerprint\" must be an object");
    s.data_fingerprint = j["data_fingerprint"];
  }
  TTT_CHECK(j.contains("train"), origin << ": missing \"train\" (the training config)");
  try {
    s.train = train_config_from_json(j["train"]);
  } catch (const Error& e) {
    TTT_FAIL(origin << ": " << e.what());
  }
  return s;
}

namespace {

constexpr const char* kLinkName = "checkpoint";    // RUN/checkpoint: the link to the newest checkpoint
constexpr const char* kStepsDir = "checkpoints";   // RUN/checkpoints/step-<N>/
constexpr const char* kStepPrefix = "step-";
// model.safetensors' metadata "format": "pt" (what Hugging Face loaders accept; since 2026-11-30), or the
// "ttt-model" of earlier versions, still read; no "format" is read too (bare weights).
constexpr const char* kModelFormat = "pt";
constexpr const char* kOldModelFormat = "ttt-model";
constexpr const char* kCheckpointFiles[] = {"model.safetensors", "config.json", "optimizer.safetensors", "state.json"};

std::string step_dir_name(int64_t step) { return kStepPrefix + std::to_string(step); }

// N for a directory name "step-<N>", else -1 (temp names included).
int64_t step_of_dir_name(const std::string& name) {
  const size_t n = std::char_traits<char>::length(kStepPrefix);
  if (name.size() <= n || name.compare(0, n, kStepPrefix) != 0 || name.size() - n > 18) return -1;
  const std::string digits = name.substr(n);
  if (digits.find_first_not_of("0123456789") != std::string::npos) return -1;
  return std::stoll(digits);
}

bool holds_checkpoint_files(const fs::path& d) {
  std::error_code ec;
  return fs::is_regular_file(d / "model.safetensors", ec) || fs::is_regular_file(d / "state.json", ec);
}

// "a/b/" -> "a/b" (a trailing separator would make "checkpoint" the parent's name, not the path's).
fs::path without_trailing_separator(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return fs::path(p);
}

fs::path or_dot(const fs::path& p) { return p.empty() ? fs::path(".") : p; }

RunState read_run_state(const std::string& state_path) {
  json j;
  try {
    j = json::parse(read_file(state_path));
  } catch (const json::exception& e) {
    TTT_FAIL(state_path << ": invalid JSON: " << e.what());
  }
  return run_state_from_json(j, state_path);
}

// The step of checkpoint directory `d` if it is complete (all four files, and the steps recorded in them
// agree), else -1. Reads the safetensors headers only.
int64_t complete_step(const fs::path& d) {
  std::error_code ec;
  for (const char* f : kCheckpointFiles)
    if (!fs::is_regular_file(d / f, ec)) return -1;
  try {
    const int64_t step = read_run_state((d / "state.json").string()).step;
    const auto model_meta = safetensors_load_metadata((d / "model.safetensors").string());
    const auto opt_meta = safetensors_load_metadata((d / "optimizer.safetensors").string());
    auto agrees = [&](const std::map<std::string, std::string>& meta, const char* key) {
      auto it = meta.find(key);  // absent in files of early versions, as load_checkpoint/load_optimizer accept
      return it == meta.end() || it->second == std::to_string(step);
    };
    return agrees(model_meta, "step") && agrees(opt_meta, "run_step") ? step : -1;
  } catch (const Error&) {
    return -1;
  }
}

// The step-<N> directories of RUN/checkpoints, highest N first.
std::vector<std::pair<int64_t, fs::path>> step_dirs(const fs::path& run) {
  std::vector<std::pair<int64_t, fs::path>> dirs;
  std::error_code ec;
  const fs::path all = run / kStepsDir;
  if (!fs::is_directory(all, ec)) return dirs;
  for (const auto& e : fs::directory_iterator(all, ec)) {
    const int64_t step = step_of_dir_name(e.path().filename().string());
    if (step >= 0 && e.is_directory(ec)) dirs.emplace_back(step, e.path());
  }
  std::sort(dirs.begin(), dirs.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  return dirs;
}

// The complete step-<N> directory of RUN with the highest N, or empty.
fs::path newest_complete(const fs::path& run) {
  for (const auto& [step, dir] : step_dirs(run))
    if (complete_step(dir) == step) return dir;
  return {};
}

// Removes the temp entries of killed saves: in RUN, RUN/checkpoints, each checkpoint directory, and an
// earlier version's RUN/checkpoint/.
void remove_stale_temps(const fs::path& run) {
  std::error_code ec;
  std::vector<fs::path> dirs = {run, run / kStepsDir};
  for (const auto& sd : step_dirs(run)) dirs.push_back(sd.second);
  if (fs::is_directory(fs::symlink_status(run / kLinkName, ec))) dirs.push_back(run / kLinkName);
  for (const fs::path& d : dirs) {
    if (!fs::is_directory(d, ec)) continue;
    std::vector<fs::path> stale;
    for (const auto& e : fs::directory_iterator(d, ec))
      if (is_stale_temp(e.path().filename().string())) stale.push_back(e.path());
    for (const fs::path& p : stale) remove_tree(p.string());
  }
}

// Keeps the newest `keep` checkpoints with a step up to `current`; removes the older ones, and with
// `remove_later` those with a higher step too (each renamed to a temp name first, so that a half-removed one is
// never taken for a checkpoint).
void prune_checkpoints(const fs::path& run, int64_t current, int64_t keep, bool remove_later) {
  int64_t kept = 0;
  for (const auto& [step, dir] : step_dirs(run)) {
    if (step > current && !remove_later) continue;
    if (step <= current && kept < keep) {
      ++kept;
      continue;
    }
    const std::string doomed = temp_path(dir.string());
    rename_path(dir.string(), doomed);
    remove_tree(doomed);
  }
}

void create_steps_dir(const fs::path& run) {
  std::error_code ec;
  if (fs::is_directory(run / kStepsDir, ec)) return;
  make_directory((run / kStepsDir).string());
  sync_directory(run.string());
}

// The first parameter holding a non-finite value, as "'<name>' holds <n> non-finite values"; empty if none.
std::string describe_nonfinite(const model::Params<float>& params) {
  for (size_t i = 0; i < params.values.size(); ++i) {
    const auto& d = params.values[i].data;
    const int64_t bad = std::count_if(d.begin(), d.end(), [](float x) { return !std::isfinite(x); });
    if (bad > 0) return "'" + params.names[i] + "' holds " + std::to_string(bad) + " non-finite values";
  }
  return "";
}

}  // namespace

CheckpointLocation find_checkpoint(const std::string& path) {
  TTT_CHECK(!path.empty(), "checkpoint path is empty");
  const fs::path p = without_trailing_separator(path);
  std::error_code ec;
  const bool is_link = fs::is_symlink(fs::symlink_status(p, ec));
  const bool exists = is_link || fs::exists(p, ec);
  if (p.filename() == kLinkName) {
    const fs::path run = or_dot(p.parent_path());
    if (fs::is_directory(p, ec) && holds_checkpoint_files(p)) {
      if (!is_link) return {p.string(), run.string()};  // an earlier version's checkpoint directory
      const fs::path target = fs::read_symlink(p, ec);
      return {(target.is_absolute() ? target : run / target).lexically_normal().string(), run.string()};
    }
    if (is_link || !exists) {
      // Missing or dangling: a save was killed before it made its first link, or a checkpoint was deleted.
      const fs::path newest = newest_complete(run);
      if (!newest.empty()) return {newest.string(), run.string()};
      TTT_CHECK(!exists, "no checkpoint at '" << path << "': it links to '" << fs::read_symlink(p, ec).string()
                                              << "', which holds none, and '" << (run / kStepsDir).string()
                                              << "' has no complete checkpoint");
    }
  }
  TTT_CHECK(exists, "checkpoint '" << path << "' does not exist");
  TTT_CHECK(fs::is_directory(p, ec),
            "checkpoint '" << path << "' is not a directory (give the run directory or its checkpoint/ subdirectory)");
  // A run directory: its newest checkpoint.
  const fs::path link = p / kLinkName;
  if (fs::is_directory(link, ec) && holds_checkpoint_files(link)) return find_checkpoint(link.string());
  const fs::path newest = newest_complete(p);
  if (!newest.empty()) return {newest.string(), p.string()};
  // A checkpoint directory itself: RUN/checkpoints/step-<N>, or any directory holding the files.
  if (holds_checkpoint_files(p)) {
    const fs::path parent = p.parent_path();
    const bool step_dir = parent.filename() == kStepsDir && step_of_dir_name(p.filename().string()) >= 0;
    return {p.string(), step_dir ? or_dot(parent.parent_path()).string() : p.string()};
  }
  TTT_FAIL("no checkpoint in '" << path << "': expected " << link.string() << "/model.safetensors (or a complete "
                                << (p / kStepsDir).string() << "/step-<N>/), or " << path << "/model.safetensors");
}

bool run_has_checkpoint(const std::string& run_dir) {
  const fs::path run(run_dir), link = run / kLinkName;
  return complete_step(link) >= 0 || !newest_complete(run).empty();
}

void prepare_run_dir(const std::string& run_dir) {
  const fs::path run(run_dir), link = run / kLinkName;
  remove_stale_temps(run);
  std::error_code ec;
  if (!fs::is_directory(fs::symlink_status(link, ec))) return;  // the link (or nothing yet): this version's layout
  // An earlier version's plain checkpoint directory: becomes checkpoints/step-<N>/ behind the link.
  const int64_t step = complete_step(link);
  TTT_CHECK(step >= 0, "'" << link.string() << "' is an incomplete checkpoint written by an earlier version of ttt (its save "
                           << "was interrupted, or it holds bare weights); move it away or choose another run directory");
  const fs::path target = run / kStepsDir / step_dir_name(step);
  TTT_CHECK(!fs::exists(fs::symlink_status(target, ec)),
            "cannot move the earlier version's checkpoint '" << link.string() << "' to '" << target.string()
                                                             << "': that already exists; move one of them away");
  create_steps_dir(run);
  rename_path(link.string(), target.string());
  sync_directory((run / kStepsDir).string());
  replace_symlink(link.string(), (fs::path(kStepsDir) / step_dir_name(step)).string());
}

std::string save_run_checkpoint(const std::string& run_dir, const model::ModelConfig& cfg,
                                const model::Params<float>& params, const AdamW& opt, const RunState& state,
                                int64_t keep) {
  TTT_CHECK(keep >= 1, "save_run_checkpoint: keep must be >= 1, got " << keep);
  // Weights that overflowed would make every later use of the checkpoint fail: refuse them here.
  const std::string bad = describe_nonfinite(params);
  TTT_CHECK(bad.empty(), "not saving the checkpoint of step " << state.step << ": parameter " << bad
                                                              << " (the training diverged; try a lower --lr)");
  for (size_t i = 0; i < opt.m().size(); ++i)
    for (const auto* moment : {&opt.m()[i], &opt.v()[i]})
      TTT_CHECK(std::all_of(moment->begin(), moment->end(), [](float x) { return std::isfinite(x); }),
                "not saving the checkpoint of step " << state.step << ": the AdamW moments of '" << opt.names()[i]
                                                     << "' hold non-finite values (the training diverged; try a lower --lr)");
  const fs::path run(run_dir);
  const fs::path final_dir = run / kStepsDir / step_dir_name(state.step);
  SafeTensors w = model::params_to_safetensors(params);
  w.metadata["step"] = std::to_string(state.step);
  w.metadata["format"] = kModelFormat;
  SafeTensors o = opt.to_safetensors(params.shapes);
  o.metadata["run_step"] = std::to_string(state.step);
  try {
    std::error_code ec;
    fs::create_directories(run, ec);
    TTT_CHECK(!ec, "cannot create the run directory: " << ec.message());
    prepare_run_dir(run_dir);
    create_steps_dir(run);
    const std::string tmp = temp_path(final_dir.string());
    try {
      make_directory(tmp);
      write_file_synced(tmp + "/model.safetensors", safetensors_serialize(w));
      write_file_synced(tmp + "/config.json", model::config_to_json(cfg).dump(2) + "\n");
      write_file_synced(tmp + "/optimizer.safetensors", safetensors_serialize(o));
      write_file_synced(tmp + "/state.json", run_state_to_json(state).dump(2) + "\n");
      sync_directory(tmp);
      // A checkpoint of this step from an abandoned continuation (the run was resumed from an older one).
      if (fs::exists(fs::symlink_status(final_dir, ec)))
        rename_path(final_dir.string(), temp_path(final_dir.string() + ".old"));
      rename_path(tmp, final_dir.string());
    } catch (...) {
      fs::remove_all(tmp, ec);  // frees the space at once (a full disk); a killed process's goes at the next start
      throw;
    }
    sync_directory((run / kStepsDir).string());
    replace_symlink((run / kLinkName).string(), (fs::path(kStepsDir) / step_dir_name(state.step)).string());
    prune_checkpoints(run, state.step, keep, /*remove_later=*/true);
    remove_stale_temps(run);
  } catch (const Error& e) {
    TTT_FAIL("cannot save the checkpoint of step " << state.step << " in '" << run_dir << "': " << e.what()
                                                   << " (the run's complete checkpoints are intact)");
  }
  return final_dir.string();
}

void remove_old_checkpoints(const std::string& run_dir, int64_t step, int64_t keep) {
  TTT_CHECK(keep >= 1, "remove_old_checkpoints: keep must be >= 1, got " << keep);
  prune_checkpoints(fs::path(run_dir), step, keep, /*remove_later=*/false);
}

LoadedCheckpoint load_checkpoint(const std::string& path, bool require_state) {
  LoadedCheckpoint c;
  const CheckpointLocation loc = find_checkpoint(path);
  c.dir = loc.dir;
  c.run_dir = loc.run_dir;
  const fs::path d(c.dir);
  const std::string cfg_path = (d / "config.json").string(), model_path = (d / "model.safetensors").string(),
                    state_path = (d / "state.json").string();
  TTT_CHECK(file_exists(cfg_path), "checkpoint '" << c.dir << "' has no config.json");
  c.cfg = model::load_config(cfg_path);
  TTT_CHECK(file_exists(model_path), "checkpoint '" << c.dir << "' has no model.safetensors");
  SafeTensors st = safetensors_load(model_path);
  if (auto f = st.metadata.find("format"); f != st.metadata.end())
    TTT_CHECK(f->second == kModelFormat || f->second == kOldModelFormat,
              model_path << ": metadata \"format\" is \"" << f->second << "\"; ttt reads \"" << kModelFormat
                         << "\" (or the \"" << kOldModelFormat << "\" of earlier versions)");
  model::params_from_safetensors(c.cfg, c.params, st, model_path);
  c.has_state = file_exists(state_path);
  TTT_CHECK(c.has_state || !require_state, "checkpoint '" << c.dir << "' has no state.json (the save was interrupted, "
                                                          << "or these are bare weights that cannot be resumed)");
  if (c.has_state) {
    c.state = read_run_state(state_path);
    if (st.metadata.count("step")) {
      const int64_t ws = metadata_step(st, model_path);
      TTT_CHECK(ws == c.state.step, "checkpoint '" << c.dir << "' is inconsistent: model.safetensors is from step " << ws
                                                   << " but state.json from step " << c.state.step
                                                   << " (a save was interrupted)");
    }
    TTT_CHECK(c.state.train.seq_len == c.cfg.seq_len, state_path << ": train seq_len " << c.state.train.seq_len
                                                                  << " differs from the model config's " << c.cfg.seq_len);
  }
  return c;
}

void load_optimizer(const std::string& dir, const model::Params<float>& params, const RunState& state, AdamW& opt) {
  const std::string path = (fs::path(dir) / "optimizer.safetensors").string();
  TTT_CHECK(file_exists(path), "checkpoint '" << dir << "' has no optimizer.safetensors; it cannot be resumed");
  SafeTensors st = safetensors_load(path);
  opt.load_safetensors(st, params.shapes, path);
  auto it = st.metadata.find("run_step");
  if (it != st.metadata.end())
    TTT_CHECK(it->second == std::to_string(state.step), "checkpoint '" << dir << "' is inconsistent: optimizer.safetensors is from step "
                                                                        << it->second << " but state.json from step "
                                                                        << state.step << " (a save was interrupted)");
}

}  // namespace ttt::train
