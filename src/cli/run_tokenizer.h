// The tokenizer of a run, for the commands that turn tokens into text and back (train's sample, generate).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "infer/generate.h"

namespace ttt::cli {

// The tokenizer recorded in run directory `run_dir` (copied there by `ttt train`), else the one of `data_dir`
// (its meta.json; skipped when empty or missing), else the byte tokenizer; `override_path` (a tokenizer file)
// replaces them all. Refuses a tokenizer whose vocabulary exceeds the model's (`command` names the caller).
std::unique_ptr<data::Tokenizer> run_tokenizer(const std::string& run_dir, const std::string& data_dir,
                                               const std::string& override_path, int64_t model_vocab,
                                               const std::string& command);

// Encodes a prompt (special tokens in it are parsed); the byte tokenizer refuses a NUL byte (its separator).
std::vector<int32_t> encode_prompt(const data::Tokenizer& tok, const std::string& prompt, const std::string& command);

// Samples after `prompt` with `opt` (its separator and stop set from `tok`), writing the text to stdout as it
// comes (whole UTF-8 characters); stops at the end-of-text token unless `past_eot` (then it prints a newline
// for it). Returns the new tokens.
std::vector<int32_t> generate_text(const std::function<std::vector<int32_t>(const infer::SampleOptions&,
                                                                            const std::function<void(int32_t)>&)>& run,
                                   const data::Tokenizer& tok, infer::SampleOptions opt, bool past_eot);

}  // namespace ttt::cli
