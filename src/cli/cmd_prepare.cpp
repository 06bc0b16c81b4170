// ttt prepare: text or jsonl -> train/validation token files with a tokenizer (data/prepare.h, data/tokenizer.h), or
// existing token shards (llm.c, nanoGPT, .npy) -> TTTTOK shards without re-tokenizing (data/import_shards.h).
#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "cli/args.h"
#include "cli/commands.h"
#include "core/error.h"
#include "core/progress.h"
#include "data/import_shards.h"
#include "data/prepare.h"

namespace ttt::cli {

namespace {

// "memory:     21.7 MB peak resident" (the bounded-memory promise, checked by the tests), or nothing.
std::string peak_memory_line() {
  const int64_t b = peak_resident_bytes();
  if (b < 0) return "";
  char buf[64];
  std::snprintf(buf, sizeof buf, "memory:     %.1f MB peak resident\n", double(b) / 1e6);
  return buf;
}

}  // namespace

int cmd_prepare(const Argv& argv) {
  Args a(argv, "prepare");
  a.value("input", "text file, or directory tree of text files (.gz decompressed; binary files skipped), or .jsonl; or "
                   "token shards: a .bin/.npy file or a directory of them")
      .value("format", "text (each file one document), jsonl (each line one document), or token shards: llmc (llm.c "
                       ".bin), nanogpt (raw uint16 .bin), npy (uint16/uint32 .npy); default: detected from the extension "
                       "and header (.npy, .bin with the llm.c magic, other .bin; *.jsonl and *.jsonl.gz; else text)")
      .value("text-field", "jsonl: the string field that holds the document", "text")
      .value("tokenizer", "tokenizer file: a Hugging Face tokenizer.json (byte-level BPE) or a SentencePiece .model; "
                          "copied into the output (default: bytes, vocabulary 256). Token shards: their tokenizer "
                          "(optional; gives the byte table for bits per byte)")
      .value("eot-token", "id of the end-of-text token that separates documents (default: the tokenizer's: bytes 0, "
                          "<|endoftext|>-like special token, SentencePiece </s>); token shards without --tokenizer: "
                          "required, e.g. 50256 for GPT-2 shards")
      .value("vocab", "token shards: the vocabulary size (default: the tokenizer's, or the largest id + 1, found by "
                      "one extra pass)")
      .value("out", "output directory (default: data/<basename of input>)")
      .value("val-fraction", "fraction of documents that go to validation, in (0, 1) (token shards: the end of the "
                             "stream, unless some shards are named *val*)", "0.05")
      .value("seed", "seed of the deterministic train/validation split", "1234")
      .value("max-bytes", "stop after this many text bytes (0: no limit)", "0");
  a.parse();
  if (a.help_requested()) {
    std::fprintf(stdout, "%s", a.usage().c_str());
    return 0;
  }
  TTT_CHECK(a.has("input"), "ttt prepare: --input is required\n" << a.usage());
  const std::string input = a.str("input");
  const std::string format = a.str("format");
  const bool text_format = format == "text" || format == "jsonl";
  TTT_CHECK(!a.has("format") || text_format || format == "llmc" || format == "nanogpt" || format == "npy",
            "ttt prepare: --format " << format << " is not one of text, jsonl, llmc, nanogpt, npy");
  int64_t eot_token = -1;
  if (a.has("eot-token")) {
    eot_token = a.i64("eot-token");
    TTT_CHECK(eot_token >= 0, "ttt prepare: --eot-token must be >= 0, got " << eot_token);
  }
  const bool shards = a.has("format") ? !text_format : data::looks_like_token_shards(input);
  if (shards) {
    for (const char* f : {"seed", "max-bytes", "text-field"})
      TTT_CHECK(!a.has(f), "ttt prepare: --" << f << " applies to text input, not to token shards");
    data::ImportOptions opt;
    opt.input = input;
    opt.out_dir = a.str("out");
    if (a.has("format")) {
      opt.format = data::parse_shard_format(format);
      opt.format_given = true;
    }
    opt.eot_token = eot_token;
    opt.tokenizer = a.str("tokenizer");
    opt.vocab = a.has("vocab") ? a.i64("vocab") : 0;
    TTT_CHECK(!a.has("vocab") || opt.vocab > 0, "ttt prepare: --vocab must be > 0, got " << opt.vocab);
    opt.val_fraction = a.f64("val-fraction");
    opt.progress = &std::cerr;
    opt.progress_terminal = ::isatty(2) != 0;
    const data::ImportResult r = data::import_token_shards(opt);
    std::cout << data::import_summary(r) << peak_memory_line() << std::flush;
    return 0;
  }
  TTT_CHECK(!a.has("vocab"), "ttt prepare: --vocab applies to token shards (--format llmc|nanogpt|npy), not to text "
                             "(the vocabulary is the tokenizer's)");
  data::PrepareOptions opt;
  opt.input = input;
  opt.out_dir = a.str("out");
  opt.val_fraction = a.f64("val-fraction");
  const int64_t seed = a.i64("seed");
  TTT_CHECK(seed >= 0, "ttt prepare: --seed must be >= 0, got " << seed);
  opt.seed = uint64_t(seed);
  opt.max_bytes = a.i64("max-bytes");
  opt.format = format;
  opt.text_field = a.str("text-field");
  opt.tokenizer = a.str("tokenizer");
  opt.eot_token = eot_token;
  opt.log = &std::cerr;
  data::PrepareResult r = data::prepare_corpus(opt);
  std::cout << data::prepare_summary(r) << peak_memory_line() << std::flush;
  return 0;
}

}  // namespace ttt::cli
