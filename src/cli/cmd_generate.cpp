// ttt generate: streaming decode from a checkpoint with a constant-size recurrent state.
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "backend/registry.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/device_flags.h"
#include "infer/generate.h"
#include "train/checkpoint.h"

namespace ttt::cli {

int cmd_generate(const Argv& argv) {
  Args a(argv, "generate");
  a.value("checkpoint", "run directory or its checkpoint/ folder")
      .value("prompt", "prompt text (bytes are tokens)", "")
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
  TTT_CHECK(ck.cfg.vocab_size == 256, "ttt generate: the model's vocabulary is " << ck.cfg.vocab_size
                                                                                 << "; text prompts need byte tokens (256)");
  infer::SampleOptions opt;
  opt.temperature = a.f64("temperature");
  opt.top_k = a.i64("top-k");
  opt.top_p = a.f64("top-p");
  opt.seed = uint64_t(a.i64("seed"));
  const int64_t n = a.i64("max-new-tokens");
  const std::string prompt = a.str("prompt");
  std::vector<int32_t> tokens;
  for (unsigned char c : prompt) {
    TTT_CHECK(c != 0, "ttt generate: the prompt contains a NUL byte (the document separator)");
    tokens.push_back(int32_t(c));
  }
  std::fwrite(prompt.data(), 1, prompt.size(), stdout);
  std::fflush(stdout);
  auto t0 = std::chrono::steady_clock::now();
  auto print = [](int32_t tok) {
    const char c = char(tok);
    std::fwrite(&c, 1, 1, stdout);
    std::fflush(stdout);
  };
  const std::unique_ptr<backend::Streamer> streamer = backend::make_streamer(device, ck.cfg, ck.params);
  const std::vector<int32_t> out = infer::generate(*streamer, tokens, n, opt, print);
  std::printf("\n");
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (a.on("stats")) {
    nlohmann::json j = {{"device", device},
                        {"prompt_tokens", tokens.size()},
                        {"new_tokens", out.size()},
                        {"seconds", secs},
                        {"tokens_per_s", double(tokens.size() + out.size()) / secs},
                        {"state_bytes", streamer->state_bytes()}};
    if (streamer->workspace_bytes() > 0) j["workspace_bytes"] = streamer->workspace_bytes();
    std::fprintf(stderr, "%s\n", j.dump().c_str());
  }
  return 0;
}

}  // namespace ttt::cli
