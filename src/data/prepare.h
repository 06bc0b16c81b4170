// `ttt prepare`: a text corpus -> train/validation token files (data/tokens.h), with a tokenizer (data/tokenizer.h).
//
// Input formats (--format; when omitted, "jsonl" for a file ending in .jsonl or .jsonl.gz, else "text"):
//   text   one text file, or a directory tree whose regular files are taken recursively in sorted order of their
//          path relative to the input (byte-wise comparison of the '/'-separated path). Each file is one document.
//          Files ending in ".gz" are decompressed with zlib; other files are read as-is. A file whose
//          (decompressed) first 4 KB contain a NUL byte is treated as binary and skipped; NUL bytes further into a
//          text file are dropped (the byte tokenizer's separator is 0). Empty files are skipped.
//   jsonl  one JSON object per line, its string field --text-field (default "text") one document; a file, or a
//          directory tree of such files (sorted as above); ".gz" decompressed. Blank lines are skipped; a line that
//          is not valid JSON (strings must be valid UTF-8), not an object, or lacks the field (or holds a non-string)
//          is an error naming the file and the line. A document's path for the split is "<relative path>:<line>".
// With a tokenizer other than bytes, text must be valid UTF-8 (an error names the file and line otherwise).
//
// Memory: documents are streamed; each is tokenized and its tokens appended to train.bin or val.bin as it comes
// (data::TokenFileWriter), so memory holds one document (a text file is read whole), not the corpus. A progress
// line with the rate and an ETA (from the input bytes read, compressed size for .gz) goes to the log.
//
// Split: a document goes to validation iff split_unit(seed, its path) < val_fraction, where split_unit hashes
// (seed as 8 little-endian bytes, then the path bytes) with FNV-1a 64, mixes the result with the splitmix64
// finalizer and maps the top 53 bits to [0, 1). The assignment of a document thus depends only on the seed and its
// own path (not on the other files, nor on their order). With >= 2 documents both sides get at least one: if
// validation came out empty, the training document with the smallest split_unit moves to validation; if training
// came out empty, the validation document with the largest one moves to training. Documents are never split across
// the two files. A single-document input is split inside the document instead: validation takes the last
// round(val_fraction * n) of its n tokens (at least 1, and at least 1 stays in training); with the byte tokenizer
// the cut moves back to the start of a UTF-8 character where possible.
//
// --max-bytes N (N > 0) stops reading once N text bytes have been collected (the document that crosses the limit
// is truncated to fit); documents after that are not read.
//
// Output DIR (default data/<basename of the input>, without a ".gz" suffix): train.bin and val.bin (each document
// followed by the tokenizer's separator, documents in input order), the tokenizer file (tokenizer.json or
// tokenizer.model) unless bytes, and meta.json with the counts below, the options, "tokenizer" (the record of
// data/tokenizer.h), "token_bytes" (the text bytes of each id: Tokenizer::token_byte_lengths, 0 for special tokens
// and the separator; what bits per byte divides by), "train_text_bytes"/"val_text_bytes" (the text bytes of each
// split) and "unigram_entropy_bits": the Shannon entropy, in bits per token, of the unigram distribution of the
// train tokens, separators included. Token shards (llm.c, nanoGPT, .npy) go through data/import_shards.h instead.
//
// A split that came out empty, or a single document, is fixed by a second pass over the input (documents are not
// held in memory): it routes the one document that moves, or splits the only one.
#pragma once
#include <cstdint>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "data/loader.h"

namespace ttt::data {

struct PrepareOptions {
  std::string input;
  std::string out_dir;          // empty: default_out_dir(input)
  double val_fraction = 0.05;   // in (0, 1)
  uint64_t seed = 1234;
  int64_t max_bytes = 0;        // 0: no limit
  std::string tokenizer;        // tokenizer file (data/tokenizer.h); empty: the byte tokenizer
  int64_t eot_token = -1;       // >= 0: the end-of-text (separator) id instead of the tokenizer's
  std::string format;           // "text", "jsonl"; empty: from the input's name
  std::string text_field = "text";  // jsonl: the field that holds a document
  std::ostream* log = nullptr;  // notes on skipped files (first few named) and progress lines, or nothing
  double progress_every_s = 2;  // seconds between progress lines on `log` (0: after every document)
};

struct PrepareResult {
  std::string out_dir, train_path, val_path, meta_path;
  uint64_t files_seen = 0;         // regular files found (and read, unless max_bytes stopped early)
  uint64_t skipped_binary = 0;     // files with NUL in their first 4 KB
  uint64_t skipped_empty = 0;      // files with no bytes (after decompression)
  uint64_t nul_bytes_dropped = 0;  // stray NUL bytes removed from text files
  uint64_t documents = 0;          // documents kept
  uint64_t bytes = 0;              // text bytes kept (the tokens minus the separators)
  bool truncated = false;          // max_bytes reached
  bool single_document_split = false;
  uint64_t train_documents = 0, val_documents = 0;
  uint64_t train_tokens = 0, val_tokens = 0;  // separators included
  uint64_t train_text_bytes = 0, val_text_bytes = 0;  // text bytes the tokens stand for (separators: 0)
  double unigram_entropy_bits = 0;            // of the train tokens
  double seconds = 0;
  std::string format;                         // "text" or "jsonl"
  std::string tokenizer_kind = "bytes";
  uint32_t vocab = 256;
  int32_t separator = 0;
  uint64_t blank_lines = 0;                   // jsonl: blank lines skipped
};

std::string default_out_dir(const std::string& input);
// Deterministic value in [0, 1) for a document (see the header comment).
double split_unit(uint64_t seed, std::string_view relative_path);
// Shannon entropy (bits/token) of the unigram distribution of byte tokens / of int32 tokens.
double unigram_entropy_bits(std::string_view byte_tokens);
double unigram_entropy_bits(const std::vector<int32_t>& tokens);
double unigram_entropy_bits(const TokenSplit& tokens);  // one pass over the split, in bounded memory
// Shannon entropy (bits) of the distribution counts[i] / total.
double entropy_from_counts(const std::vector<uint64_t>& counts, uint64_t total);

// The format of an input when --format is not given: "jsonl" for *.jsonl and *.jsonl.gz, else "text".
std::string detect_format(const std::string& input);
// The byte offset of the first byte that is not part of valid UTF-8 in `s`, or npos.
size_t find_invalid_utf8(std::string_view s);

// Reads the corpus, writes DIR/train.bin, DIR/val.bin, DIR/meta.json. Throws ttt::Error when the input is
// missing, the corpus holds no text bytes, the options are invalid or the output cannot be written.
PrepareResult prepare_corpus(const PrepareOptions& opt);

// Multi-line human-readable summary of a result.
std::string prepare_summary(const PrepareResult& r);

}  // namespace ttt::data
