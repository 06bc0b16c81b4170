#include "cli/run_tokenizer.h"

#include <cstdio>
#include <filesystem>

#include "core/error.h"
#include "core/file_io.h"

namespace fs = std::filesystem;

namespace ttt::cli {

std::unique_ptr<data::Tokenizer> run_tokenizer(const std::string& run_dir, const std::string& data_dir,
                                               const std::string& override_path, int64_t model_vocab,
                                               const std::string& command) {
  std::unique_ptr<data::Tokenizer> tok;
  std::string from;
  std::error_code ec;
  if (!override_path.empty()) {
    tok = data::load_tokenizer(override_path);
    from = override_path;
  } else if (file_exists((fs::path(run_dir) / data::kTokenizerInfoFile).string())) {
    tok = data::load_tokenizer_of_dir(run_dir);
    from = run_dir;
  } else if (!data_dir.empty() && fs::is_directory(data_dir, ec)) {
    tok = data::load_tokenizer_of_dir(data_dir);
    from = data_dir;
  } else {
    tok = data::make_byte_tokenizer();
    from = "the default";
  }
  TTT_CHECK(int64_t(tok->vocab_size()) <= model_vocab,
            command << ": the " << tok->kind() << " tokenizer of " << from << " has vocabulary " << tok->vocab_size()
                    << ", larger than the model's " << model_vocab << " (give --tokenizer with the run's tokenizer)");
  return tok;
}

std::vector<int32_t> encode_prompt(const data::Tokenizer& tok, const std::string& prompt, const std::string& command) {
  if (tok.kind() == "bytes")
    TTT_CHECK(prompt.find('\0') == std::string::npos,
              command << ": the prompt contains a NUL byte (the byte tokenizer's document separator)");
  return tok.encode(prompt, /*parse_special=*/true);
}

std::vector<int32_t> generate_text(const std::function<std::vector<int32_t>(const infer::SampleOptions&,
                                                                            const std::function<void(int32_t)>&)>& run,
                                   const data::Tokenizer& tok, infer::SampleOptions opt, bool past_eot) {
  opt.separator = tok.eot_id();
  opt.stop_at_separator = !past_eot;
  data::Tokenizer::StreamDecoder decoder(tok);
  auto put = [](const std::string& s) {
    std::fwrite(s.data(), 1, s.size(), stdout);
    std::fflush(stdout);
  };
  std::vector<int32_t> out = run(opt, [&](int32_t t) {
    if (t == tok.eot_id()) {
      put(decoder.finish() + "\n");
      return;
    }
    put(decoder.push(t));
  });
  put(decoder.finish());
  return out;
}

}  // namespace ttt::cli
