// ttt generate: streaming decode from a checkpoint with a constant-size recurrent state.
#include <chrono>
#include <cstdio>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "backend/registry.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/device_flags.h"
#include "cli/run_tokenizer.h"
#include "core/file_io.h"
#include "infer/generate.h"
#include "train/checkpoint.h"

namespace ttt::cli {

int cmd_generate(const Argv& argv) {
  Args a(argv, "generate");
  a.value("checkpoint", "run directory or its checkpoint/ folder")
      .value("prompt", "prompt text, encoded with the run's tokenizer (default: none, the start of a new document)")
      .value("prompt-file", "read the prompt from this file ('-': standard input)")
      .value("tokenizer", "tokenizer file to use instead of the run's (tokenizer.json or .model)")
      .value("repetition-penalty", "divide the positive logits (multiply the negative) of tokens already in the context "
                                   "by this (1: off)", "1.0")
      .flag("no-stop", "keep generating past the end-of-text token (printed as a newline) instead of stopping")
      .value("max-new-tokens", "tokens to generate", "256")
      .value("temperature", "sampling temperature (0: greedy)", "0.8")
      .value("top-k", "keep the k most likely tokens (0: off)", "0")
      .value("top-p", "nucleus sampling mass (1: off)", "1.0")
      .value("seed", "sampling seed", "0")
      .flag("stats", "print a JSON line with timing and state size to stderr at the end");
  declare_device_flag(a, "cuda: one NVIDIA GPU, every arch (lact, titans, tnt), token by token in fp32; checkpoints are "
                         "the same files on both");
  a.parse();
  if (a.help_requested()) {
    std::printf("%s", a.usage().c_str());
    return 0;
  }
  TTT_CHECK(a.has("checkpoint"), "ttt generate: --checkpoint DIR is required\n" << a.usage());
  const std::string device = device_flag(a, "ttt generate");
  train::LoadedCheckpoint ck = train::load_checkpoint(a.str("checkpoint"), false);
  const std::unique_ptr<data::Tokenizer> tok =
      run_tokenizer(ck.run_dir, ck.has_state ? ck.state.train.data_dir : "", a.str("tokenizer"), ck.cfg.vocab_size,
                    "ttt generate");
  infer::SampleOptions opt;
  opt.temperature = a.f64("temperature");
  opt.top_k = a.i64("top-k");
  opt.top_p = a.f64("top-p");
  opt.seed = uint64_t(a.i64("seed"));
  opt.repetition_penalty = a.f64("repetition-penalty");
  const int64_t n = a.i64("max-new-tokens");
  TTT_CHECK(!(a.has("prompt") && a.has("prompt-file")), "ttt generate: give --prompt or --prompt-file, not both");
  std::string prompt = a.str("prompt");
  if (a.has("prompt-file")) {
    const std::string path = a.str("prompt-file");
    if (path == "-") {
      prompt.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
    } else {
      TTT_CHECK(file_exists(path), "ttt generate: --prompt-file '" << path << "' does not exist");
      prompt = read_file(path);
    }
  }
  const std::vector<int32_t> tokens = encode_prompt(*tok, prompt, "ttt generate");
  std::fwrite(prompt.data(), 1, prompt.size(), stdout);
  std::fflush(stdout);
  auto t0 = std::chrono::steady_clock::now();
  const std::unique_ptr<backend::Streamer> streamer = backend::make_streamer(device, ck.cfg, ck.params);
  const std::vector<int32_t> out = generate_text(
      [&](const infer::SampleOptions& o, const std::function<void(int32_t)>& on_token) {
        return infer::generate(*streamer, tokens, n, o, on_token);
      },
      *tok, opt, a.on("no-stop"));
  std::printf("\n");
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (a.on("stats")) {
    nlohmann::json j = {{"device", device},
                        {"prompt_tokens", tokens.size()},
                        {"new_tokens", out.size()},
                        {"tokenizer", tok->kind()},
                        {"stopped_at_eot", !a.on("no-stop") && int64_t(out.size()) < n},
                        {"seconds", secs},
                        {"tokens_per_s", double(tokens.size() + out.size()) / secs},
                        {"state_bytes", streamer->state_bytes()}};
    if (streamer->workspace_bytes() > 0) j["workspace_bytes"] = streamer->workspace_bytes();
    std::fprintf(stderr, "%s\n", j.dump().c_str());
  }
  return 0;
}

}  // namespace ttt::cli
