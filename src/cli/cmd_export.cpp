// ttt export --to lact-hf --checkpoint RUN --out DIR: a directory the public LaCT model loads
// (`LaCTForCausalLM.from_pretrained(DIR)`): config.json (model_type "lact_swiglu", the public field names),
// model.safetensors (the public tensor names and nn.Linear layouts, F32, metadata format "pt") and the run's
// tokenizer file (tokenizer.json or tokenizer.model) when the run has one. The mapping: model/lact_hf.h.
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

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

// The tokenizer record of a checkpoint: its run's (copied there by `ttt train` or `ttt import`), else its data
// directory's; the byte tokenizer when neither has one.
data::TokenizerRecord checkpoint_tokenizer(const train::LoadedCheckpoint& ck, std::string* dir) {
  *dir = ck.run_dir;
  if (file_exists((fs::path(ck.run_dir) / data::kTokenizerInfoFile).string()))
    return data::tokenizer_record_of_dir(ck.run_dir);
  std::error_code ec;
  if (ck.has_state && !ck.state.train.data_dir.empty() && fs::is_directory(ck.state.train.data_dir, ec)) {
    *dir = ck.state.train.data_dir;
    return data::tokenizer_record_of_dir(*dir);
  }
  return data::TokenizerRecord{};
}

}  // namespace

int cmd_export(const Argv& argv) {
  Args a(argv, "export");
  a.value("to", "target format: lact-hf (the public LaCT model, LaCTForCausalLM.from_pretrained) (required)")
      .value("checkpoint", "run directory or checkpoint directory to export (required)")
      .value("out", "output directory (created; must not exist or be empty) (required)");
  a.parse();
  if (a.help_requested()) {
    std::fprintf(stdout, "%s", a.usage().c_str());
    return 0;
  }
  for (const char* f : {"to", "checkpoint", "out"})
    TTT_CHECK(a.has(f), "ttt export: --" << f << " is required\n" << a.usage());
  TTT_CHECK(a.str("to") == "lact-hf", "ttt export: --to '" << a.str("to") << "' is not a known format (allowed: lact-hf)");
  const std::string out = a.str("out");
  std::error_code ec;
  TTT_CHECK(!fs::exists(out, ec) || (fs::is_directory(out, ec) && fs::is_empty(out, ec)),
            "ttt export: --out '" << out << "' exists and is not an empty directory (refusing to overwrite)");

  const train::LoadedCheckpoint ck = train::load_checkpoint(a.str("checkpoint"), /*require_state=*/false);
  nlohmann::json config;
  SafeTensors weights;
  try {
    config = model::lact_hf::export_config(ck.cfg);
    weights = model::lact_hf::export_weights(ck.cfg, ck.params);
  } catch (const Error& e) {
    TTT_FAIL("ttt export: checkpoint '" << ck.dir << "': " << e.what());
  }
  std::string tokenizer_dir;
  const data::TokenizerRecord tok = checkpoint_tokenizer(ck, &tokenizer_dir);
  if (tok.kind != "bytes") data::load_tokenizer_of_dir(tokenizer_dir);  // checks the file and its recorded hash
  config["eos_token_id"] = tok.eot_id;  // the run's end-of-text token: where Hugging Face generation stops

  fs::create_directories(out, ec);
  TTT_CHECK(!ec, "ttt export: cannot create --out '" << out << "': " << ec.message());
  if (tok.kind != "bytes")
    write_file_atomic((fs::path(out) / tok.file).string(), read_file((fs::path(tokenizer_dir) / tok.file).string()));
  safetensors_save((fs::path(out) / "model.safetensors").string(), weights);
  write_file_atomic((fs::path(out) / "config.json").string(), config.dump(2) + "\n");
  nlohmann::json j = {{"checkpoint", ck.dir},
                      {"out", out},
                      {"format", "lact-hf"},
                      {"tensors", weights.tensors.size()},
                      {"tokenizer", tok.kind == "bytes" ? nlohmann::json(nullptr) : nlohmann::json(tok.file)}};
  std::cout << j.dump() << std::endl;
  return 0;
}

}  // namespace ttt::cli
