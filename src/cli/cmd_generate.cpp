// ttt generate: streaming decode from a checkpoint with a constant-size recurrent state.
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/args.h"
#include "cli/commands.h"
#include "infer/generate.h"
#ifdef TTT_HAVE_CUDA
#include "cuda/generate_cuda.h"
#endif
#include "infer/stream.h"
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
      .flag("stats", "print a JSON line with timing and state size to stderr at the end")
      .value("device", "cpu | cuda (cuda: arch lact, token by token in fp32; checkpoints are the same files)", "cpu");
  a.parse();
  if (a.help_requested()) {
    std::printf("%s", a.usage().c_str());
    return 0;
  }
  TTT_CHECK(a.has("checkpoint"), "ttt generate: --checkpoint DIR is required\n" << a.usage());
  const std::string device = a.str("device");
  TTT_CHECK(device == "cpu" || device == "cuda", "ttt generate: --device must be cpu or cuda, got '" << device << "'");
#ifndef TTT_HAVE_CUDA
  TTT_CHECK(device == "cpu", "ttt generate: --device cuda: this build has no CUDA backend (the CUDA toolkit was not "
                             "found when it was configured)");
#endif
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
  std::vector<int32_t> out;
  size_t state_bytes = 0, workspace_bytes = 0;
#ifdef TTT_HAVE_CUDA
  if (device == "cuda") {
    cuda::GpuStreamer gs(ck.cfg, ck.params);
    state_bytes = gs.state_bytes();
    workspace_bytes = gs.workspace_bytes();
    out = infer::generate_with([&](const std::vector<int32_t>& t) { return gs.feed(t); }, ck.cfg.vocab_size, tokens,
                               n, opt, print);
  } else
#endif
  {
    out = infer::generate(ck.cfg, ck.params, tokens, n, opt, print);
    state_bytes = infer::StreamingModel(ck.cfg, ck.params).state_bytes();
  }
  std::printf("\n");
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (a.on("stats")) {
    nlohmann::json j = {{"device", device},
                        {"prompt_tokens", tokens.size()},
                        {"new_tokens", out.size()},
                        {"seconds", secs},
                        {"tokens_per_s", double(tokens.size() + out.size()) / secs},
                        {"state_bytes", state_bytes}};
    if (device == "cuda") j["workspace_bytes"] = workspace_bytes;
    std::fprintf(stderr, "%s\n", j.dump().c_str());
  }
  return 0;
}

}  // namespace ttt::cli
