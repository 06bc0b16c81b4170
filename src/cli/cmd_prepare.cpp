// ttt prepare: text or jsonl -> train/validation token files with a tokenizer (see data/prepare.h, data/tokenizer.h).
#include <cstdio>
#include <iostream>

#include "cli/args.h"
#include "cli/commands.h"
#include "core/error.h"
#include "data/prepare.h"

namespace ttt::cli {

int cmd_prepare(const Argv& argv) {
  Args a(argv, "prepare");
  a.value("input", "text file, or directory tree of text files (.gz decompressed; binary files skipped), or .jsonl")
      .value("format", "text (each file one document) or jsonl (each line one document); default: jsonl for "
                       "*.jsonl and *.jsonl.gz, else text")
      .value("text-field", "jsonl: the string field that holds the document", "text")
      .value("tokenizer", "tokenizer file: a Hugging Face tokenizer.json (byte-level BPE) or a SentencePiece .model; "
                          "copied into the output (default: bytes, vocabulary 256)")
      .value("eot-token", "id of the end-of-text token that separates documents (default: the tokenizer's: bytes 0, "
                          "<|endoftext|>-like special token, SentencePiece </s>)")
      .value("out", "output directory (default: data/<basename of input>)")
      .value("val-fraction", "fraction of documents that go to validation, in (0, 1)", "0.05")
      .value("seed", "seed of the deterministic train/validation split", "1234")
      .value("max-bytes", "stop after this many text bytes (0: no limit)", "0");
  a.parse();
  if (a.help_requested()) {
    std::fprintf(stdout, "%s", a.usage().c_str());
    return 0;
  }
  TTT_CHECK(a.has("input"), "ttt prepare: --input is required\n" << a.usage());
  data::PrepareOptions opt;
  opt.input = a.str("input");
  opt.out_dir = a.str("out");
  opt.val_fraction = a.f64("val-fraction");
  const int64_t seed = a.i64("seed");
  TTT_CHECK(seed >= 0, "ttt prepare: --seed must be >= 0, got " << seed);
  opt.seed = uint64_t(seed);
  opt.max_bytes = a.i64("max-bytes");
  opt.format = a.str("format");
  opt.text_field = a.str("text-field");
  opt.tokenizer = a.str("tokenizer");
  if (a.has("eot-token")) {
    opt.eot_token = a.i64("eot-token");
    TTT_CHECK(opt.eot_token >= 0, "ttt prepare: --eot-token must be >= 0, got " << opt.eot_token);
  }
  opt.log = &std::cerr;
  data::PrepareResult r = data::prepare_corpus(opt);
  std::cout << data::prepare_summary(r) << std::flush;
  return 0;
}

}  // namespace ttt::cli
