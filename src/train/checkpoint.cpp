#include "train/checkpoint.h"

#include <cstdio>
#include <filesystem>

#include "core/error.h"
#include "core/file_io.h"

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
  return json{{"format", "ttt-train-state"}, {"version", 1},           {"step", s.step},
              {"tokens_seen", s.tokens_seen},   {"elapsed_seconds", s.elapsed_seconds}, {"data_rng", rng},
              {"train", train_config_to_json(s.train)}};
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
  TTT_CHECK(j.contains("train"), origin << ": missing \"train\" (the training config)");
  try {
    s.train = train_config_from_json(j["train"]);
  } catch (const Error& e) {
    TTT_FAIL(origin << ": " << e.what());
  }
  return s;
}

std::string find_checkpoint_dir(const std::string& path) {
  TTT_CHECK(!path.empty(), "checkpoint path is empty");
  auto holds = [](const fs::path& d) {
    return fs::is_regular_file(d / "model.safetensors") || fs::is_regular_file(d / "state.json");
  };
  std::error_code ec;
  TTT_CHECK(fs::exists(path, ec), "checkpoint '" << path << "' does not exist");
  TTT_CHECK(fs::is_directory(path, ec), "checkpoint '" << path << "' is not a directory (give the run directory or its checkpoint/ subdirectory)");
  if (holds(path)) return path;
  if (holds(fs::path(path) / "checkpoint")) return (fs::path(path) / "checkpoint").string();
  TTT_FAIL("no checkpoint in '" << path << "': expected " << path << "/checkpoint/model.safetensors or "
                                << path << "/model.safetensors");
}

void save_checkpoint(const std::string& dir, const model::ModelConfig& cfg, const model::Params<float>& params,
                     const AdamW& opt, const RunState& state) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  TTT_CHECK(!ec, "cannot create checkpoint directory '" << dir << "': " << ec.message());
  const fs::path d(dir);
  SafeTensors w = model::params_to_safetensors(params);
  w.metadata["step"] = std::to_string(state.step);
  w.metadata["format"] = "ttt-model";
  safetensors_save((d / "model.safetensors").string(), w);
  model::save_config((d / "config.json").string(), cfg);
  SafeTensors o = opt.to_safetensors(params.shapes);
  o.metadata["run_step"] = std::to_string(state.step);
  safetensors_save((d / "optimizer.safetensors").string(), o);
  write_file_atomic((d / "state.json").string(), run_state_to_json(state).dump(2) + "\n");
}

LoadedCheckpoint load_checkpoint(const std::string& path, bool require_state) {
  LoadedCheckpoint c;
  c.dir = find_checkpoint_dir(path);
  const fs::path d(c.dir);
  const std::string cfg_path = (d / "config.json").string(), model_path = (d / "model.safetensors").string(),
                    state_path = (d / "state.json").string();
  TTT_CHECK(file_exists(cfg_path), "checkpoint '" << c.dir << "' has no config.json");
  c.cfg = model::load_config(cfg_path);
  TTT_CHECK(file_exists(model_path), "checkpoint '" << c.dir << "' has no model.safetensors");
  SafeTensors st = safetensors_load(model_path);
  model::params_from_safetensors(c.cfg, c.params, st, model_path);
  c.has_state = file_exists(state_path);
  TTT_CHECK(c.has_state || !require_state, "checkpoint '" << c.dir << "' has no state.json (the save was interrupted, "
                                                          << "or these are bare weights that cannot be resumed)");
  if (c.has_state) {
    json j;
    try {
      j = json::parse(read_file(state_path));
    } catch (const json::exception& e) {
      TTT_FAIL(state_path << ": invalid JSON: " << e.what());
    }
    c.state = run_state_from_json(j, state_path);
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
