// ttt logits: the model's logits over a text file, for checks from outside (ttt_torch's parity test, other
// frameworks). Writes OUT.safetensors with `tokens` [T] (I64) and `logits` [T, V] (F32), metadata format "pt".
// The text is encoded with the run's tokenizer (cli/run_tokenizer.h: the one `ttt train` copied into the run, else
// its data directory's, else bytes; special tokens written in the text are parsed, as in generate's prompt).
//
// The whole input is one sequence (positions 0 .. T-1, no document split), run through the device's streamer
// (backend::make_streamer: the CPU's infer::StreamingModel or the GPU's) in blocks of the model's seq_len. The
// streamer computes exactly the causal forward of training (tests: Stream.*), so T is not limited by seq_len;
// only the memory for the tokens and logits bounds it, checked before anything large is allocated.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "backend/registry.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/device_flags.h"
#include "cli/run_tokenizer.h"
#include "core/error.h"
#include "core/file_io.h"
#include "core/safetensors.h"
#include "train/checkpoint.h"
#include "train/memory_budget.h"

namespace ttt::cli {

int cmd_logits(const Argv& argv) {
  Args a(argv, "logits");
  a.value("checkpoint", "run directory or its checkpoint/ subdirectory (required)")
      .value("input", "text file to tokenize with the checkpoint's tokenizer and run (required)")
      .value("out", "output safetensors file: tokens [T] I64 and logits [T, V] F32 (required)");
  declare_device_flag(a, "cuda: one NVIDIA GPU, every arch (the streamer of `ttt generate --device cuda`, fp32)");
  a.parse();
  if (a.help_requested()) {
    std::fprintf(stdout, "%s", a.usage().c_str());
    return 0;
  }
  for (const char* f : {"checkpoint", "input", "out"})
    TTT_CHECK(a.has(f), "ttt logits: --" << f << " is required\n" << a.usage());
  const std::string device = device_flag(a, "ttt logits");
  const std::string input = a.str("input"), out = a.str("out");
  TTT_CHECK(file_exists(input), "ttt logits: --input '" << input << "' does not exist");
  train::LoadedCheckpoint ck = train::load_checkpoint(a.str("checkpoint"), /*require_state=*/false);
  const std::string text = read_file(input);
  TTT_CHECK(!text.empty(), "ttt logits: --input '" << input << "' is empty; the model needs at least one token");
  // The run's tokenizer (ttt train copied it there; else its data directory's; else bytes), as generate uses.
  const std::unique_ptr<data::Tokenizer> tokenizer =
      run_tokenizer(ck.run_dir, ck.has_state ? ck.state.train.data_dir : "", /*override_path=*/"", ck.cfg.vocab_size,
                    "ttt logits");
  const std::vector<int32_t> tokens = tokenizer->encode(text, /*parse_special=*/true);
  TTT_CHECK(!tokens.empty(), "ttt logits: --input '" << input << "' encodes to no tokens");
  const int64_t T = int64_t(tokens.size()), V = ck.cfg.vocab_size;
  {
    // The tokens and logits live on the host, twice (the result and its serialized file): checked before any
    // of them is allocated, beside the model's own resident memory.
    train::MemoryRequest host;
    train::MemoryEstimate e = train::estimate_memory(ck.cfg, host);
    e.resident.push_back({"logits [T, V] F32 and tokens [T] I64, each also serialized",
                          "--input of " + std::to_string(T) + " tokens, vocab_size " + std::to_string(V),
                          2.0 * (double(T) * double(V) * 4.0 + double(T) * 12.0)});
    train::require_memory("ttt logits", e);
  }

  const std::unique_ptr<backend::Streamer> streamer = backend::make_streamer(device, ck.cfg, ck.params);
  Tensor tok = Tensor::empty({T}, DType::I64);
  Tensor logits = Tensor::empty({T, V}, DType::F32);
  const int64_t block = std::max<int64_t>(1, ck.cfg.seq_len);
  for (int64_t t0 = 0; t0 < T; t0 += block) {
    const int64_t t1 = std::min(T, t0 + block);
    const std::vector<int32_t> part(tokens.begin() + t0, tokens.begin() + t1);
    const ag::Mat<float> lg = streamer->feed(part);
    TTT_CHECK(lg.rows == t1 - t0 && lg.cols == V, "ttt logits: the " << device << " streamer returned logits "
                                                                     << lg.shape() << " for " << (t1 - t0) << " tokens");
    TTT_CHECK(std::all_of(lg.data.begin(), lg.data.end(), [](float x) { return std::isfinite(x); }),
              "ttt logits: the logits of tokens " << t0 << ".." << t1 - 1 << " are non-finite: the weights of '"
                                                  << ck.dir << "' overflow on this input");
    std::copy(lg.data.begin(), lg.data.end(), logits.data<float>() + t0 * V);
  }
  for (int64_t i = 0; i < T; ++i) tok.data<int64_t>()[i] = tokens[size_t(i)];

  SafeTensors st;
  st.metadata["format"] = "pt";
  st.add("tokens", tok);
  st.add("logits", logits);
  write_file_atomic(out, safetensors_serialize(st));
  nlohmann::json j = {{"checkpoint", ck.dir}, {"input", input}, {"out", out},
                      {"tokens", T},          {"vocab_size", V}, {"device", device}};
  std::cout << j.dump() << std::endl;
  return 0;
}

}  // namespace ttt::cli
