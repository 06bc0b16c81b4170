// ttt import --from lact-hf DIR --out RUN: a directory of the public LaCT model (config.json, model.safetensors or
// model.safetensors.index.json with its shards, optionally tokenizer.json / tokenizer.model) as a ttt run
// directory: a complete checkpoint at step 0 (zero AdamW moments; the data directory --data, else ttt's default; no
// dataset fingerprint) that `ttt logits`, `ttt generate`, `ttt eval` read and `ttt train --resume RUN --steps N`
// fine-tunes (on the data directory recorded at import). The config gets
// the compatibility switches of the public model (model/lact_hf.h).
#include <filesystem>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "cli/args.h"
#include "cli/commands.h"
#include "core/error.h"
#include "core/file_io.h"
#include "data/tokenizer.h"
#include "model/lact_hf.h"
#include "train/checkpoint.h"

namespace fs = std::filesystem;

namespace ttt::cli {

namespace {

nlohmann::json read_json(const std::string& path) {
  try {
    return nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    TTT_FAIL("ttt import: '" << path << "' is not valid JSON: " << e.what());
  }
}

// The public weights: model.safetensors, or the shards model.safetensors.index.json lists (its "weight_map").
SafeTensors load_public_weights(const std::string& dir, std::string* origin) {
  const std::string single = (fs::path(dir) / "model.safetensors").string();
  const std::string index = (fs::path(dir) / "model.safetensors.index.json").string();
  if (file_exists(single)) {
    *origin = single;
    return safetensors_load(single);
  }
  TTT_CHECK(file_exists(index), "ttt import: '" << dir << "' has neither model.safetensors nor "
                                                << "model.safetensors.index.json (only safetensors weights are read)");
  *origin = index;
  const nlohmann::json j = read_json(index);
  TTT_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(),
            "ttt import: '" << index << "' has no \"weight_map\" object");
  std::map<std::string, std::set<std::string>> names_of_file;
  for (const auto& [name, file] : j["weight_map"].items()) {
    TTT_CHECK(file.is_string() && file.get<std::string>().find('/') == std::string::npos,
              "ttt import: '" << index << "': weight_map[\"" << name << "\"] must be a file name in the directory, got "
                              << file.dump());
    names_of_file[file.get<std::string>()].insert(name);
  }
  SafeTensors all;
  for (const auto& [file, names] : names_of_file) {
    const std::string path = (fs::path(dir) / file).string();
    TTT_CHECK(file_exists(path), "ttt import: the shard '" << path << "' listed in '" << index << "' is missing");
    SafeTensors shard = safetensors_load(path);
    for (auto& [name, t] : shard.tensors) {
      TTT_CHECK(names.count(name), "ttt import: shard '" << path << "' holds tensor '" << name << "', which '" << index
                                                         << "' does not place there");
      all.add(name, std::move(t));
    }
  }
  return all;
}

}  // namespace

int cmd_import(const Argv& argv) {
  // The public directory is the one positional argument (`--from lact-hf DIR`); the rest are flags.
  Argv flags;
  std::vector<std::string> positional;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& s = argv[i];
    if ((s == "--from" || s == "--out" || s == "--data") && i + 1 < argv.size()) {
      flags.push_back(s);
      flags.push_back(argv[++i]);
    } else if (s.rfind("-", 0) == 0) {
      flags.push_back(s);
    } else {
      positional.push_back(s);
    }
  }
  Args a(flags, "import");
  a.value("from", "source format: lact-hf, followed by the directory (`--from lact-hf DIR`) (required)")
      .value("out", "run directory to create (must not exist or be empty) (required)")
      .value("data", "data directory the run fine-tunes on (`ttt train --resume RUN --steps N`; default: "
                     "ttt's data/linux-doc)")
      .flag("no-tokenizer", "import the weights only, even if DIR has a tokenizer file");
  a.parse();
  if (a.help_requested()) {
    std::fprintf(stdout, "usage: ttt import --from lact-hf DIR --out RUN [--data DATA] [--no-tokenizer]\n%s", a.usage().c_str());
    return 0;
  }
  for (const char* f : {"from", "out"})
    TTT_CHECK(a.has(f), "ttt import: --" << f << " is required (usage: ttt import --from lact-hf DIR --out RUN)");
  TTT_CHECK(a.str("from") == "lact-hf",
            "ttt import: --from '" << a.str("from") << "' is not a known format (allowed: lact-hf)");
  TTT_CHECK(positional.size() == 1, "ttt import: expected one directory after --from lact-hf, got "
                                        << positional.size() << " (usage: ttt import --from lact-hf DIR --out RUN)");
  const std::string dir = positional[0], out = a.str("out");
  std::error_code ec;
  TTT_CHECK(fs::is_directory(dir, ec), "ttt import: '" << dir << "' is not a directory");
  TTT_CHECK(!fs::exists(out, ec) || (fs::is_directory(out, ec) && fs::is_empty(out, ec)),
            "ttt import: --out '" << out << "' exists and is not an empty directory (refusing to overwrite)");

  const std::string config_path = (fs::path(dir) / "config.json").string();
  TTT_CHECK(file_exists(config_path), "ttt import: '" << dir << "' has no config.json");
  const nlohmann::json public_config = read_json(config_path);
  const model::ModelConfig cfg = model::lact_hf::import_config(public_config, config_path);
  std::string weights_origin;
  const SafeTensors weights = load_public_weights(dir, &weights_origin);
  const model::Params<float> params = model::lact_hf::import_weights(
      cfg, weights, model::lact_hf::ties_word_embeddings(public_config), weights_origin);

  // The tokenizer file, when there is one ttt reads (checked before anything is written).
  std::unique_ptr<data::Tokenizer> tokenizer;
  std::string tokenizer_path;
  if (!a.on("no-tokenizer"))
    for (const char* name : {"tokenizer.json", "tokenizer.model"}) {
      const std::string path = (fs::path(dir) / name).string();
      if (!file_exists(path)) continue;
      try {
        tokenizer = data::load_tokenizer(path);
      } catch (const Error& e) {
        TTT_FAIL("ttt import: " << e.what() << " (give --no-tokenizer to import the weights alone)");
      }
      TTT_CHECK(int64_t(tokenizer->vocab_size()) <= cfg.vocab_size,
                "ttt import: the tokenizer '" << path << "' has vocabulary " << tokenizer->vocab_size()
                                              << ", larger than the model's vocab_size " << cfg.vocab_size);
      tokenizer_path = path;
      break;
    }

  // Step 0 and the default training settings (as ttt_torch.save writes a new model), training on --data.
  train::RunState state;
  state.train.preset = "import lact-hf";
  if (a.has("data")) {
    TTT_CHECK(fs::is_directory(a.str("data"), ec), "ttt import: --data '" << a.str("data") << "' is not a directory");
    state.train.data_dir = fs::absolute(a.str("data")).string();
  }
  state.train.seq_len = cfg.seq_len;
  train::AdamWConfig acfg;
  acfg.beta1 = state.train.beta1;
  acfg.beta2 = state.train.beta2;
  acfg.eps = state.train.eps;
  acfg.weight_decay = state.train.weight_decay;
  std::vector<int64_t> sizes;
  for (const auto& m : params.values) sizes.push_back(m.size());
  const train::AdamW adam(params.names, sizes, acfg);
  fs::create_directories(out, ec);
  TTT_CHECK(!ec, "ttt import: cannot create --out '" << out << "': " << ec.message());
  if (tokenizer) {
    const data::TokenizerRecord r = data::install_tokenizer(*tokenizer, tokenizer_path, out);
    write_file_atomic((fs::path(out) / data::kTokenizerInfoFile).string(), r.to_json().dump(2) + "\n");
  }
  const std::string ckpt = train::save_run_checkpoint(out, cfg, params, adam, state, /*keep=*/1);
  nlohmann::json j = {{"from", dir},
                      {"out", out},
                      {"checkpoint", ckpt},
                      {"parameters", params.count()},
                      {"tokenizer", tokenizer ? nlohmann::json(tokenizer->kind()) : nlohmann::json(nullptr)}};
  std::cout << j.dump() << std::endl;
  return 0;
}

}  // namespace ttt::cli
