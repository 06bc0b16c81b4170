// `ttt prepare --format llmc|nanogpt|npy`: existing token shards -> TTTTOK shards, without re-tokenizing.
//
// Source formats (all little-endian):
//   llmc     llm.c's .bin shards: a header of 256 int32 (header[0] = magic 20240520, header[1] = version 1,
//            header[2] = token count), then that many uint16 tokens; the file size must match exactly.
//   nanogpt  nanoGPT's raw .bin: uint16 tokens, no header (the size must be even).
//   npy      NumPy .npy (format versions 1.0, 2.0, 3.0): the header's dict is parsed ('descr' '<u2' or '<u4' (or
//            '|u1'), 'fortran_order', 'shape' one-dimensional (N,)), then N tokens.
// Detection (no --format): ".npy" -> npy; ".bin" starting with the llm.c magic -> llmc; other ".bin" -> nanogpt.
//
// Input: one shard file, or a directory whose regular files ending in .bin/.npy are the shards, in sorted order of
// their names. Files whose name contains "val" (llm.c's fineweb_val_000000.bin, nanoGPT's val.bin) form the
// validation split, the others the training split; with no such file, validation takes the last val_fraction of
// the training stream (at least one token; the cut may fall inside a document).
//
// Output DIR: one TTTTOK shard per source shard and split (train-00000.bin, ..., val-00000.bin, ...; a source
// shard that the val_fraction cut divides gives one of each), and meta.json with "shards" listing them
// (data/loader.h), the counts, the source. With --tokenizer (the shards' tokenizer file: its vocabulary and
// end-of-text id are the defaults of --vocab and --eot-token), the tokenizer is copied and recorded as `ttt prepare`
// does for text, with "token_bytes", "train_text_bytes" and "val_text_bytes"; without it there is no token byte
// table (the ids' text is unknown: bits per byte is then not reported).
//
// Memory: the shards are streamed in pieces of kImportPieceTokens tokens (the output writer buffers ~4 MB); nothing
// holds a whole shard, whatever the input size. Without --vocab, a first pass reads every shard to find the largest
// id (vocab = largest id + 1, at least eot + 1); with it, one pass. A progress line with rate and ETA goes to
// `progress`.
//
// Errors name the file and the byte offset: a header field that does not match (magic, version, dtype, shape),
// a truncated or oversized file, an id >= vocab, an --eot-token outside the vocabulary, no training shard.
#pragma once
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

namespace ttt::data {

enum class ShardFormat { llmc, nanogpt, npy };
inline constexpr uint32_t kLlmcMagic = 20240520;
inline constexpr uint32_t kLlmcVersion = 1;
inline constexpr uint64_t kLlmcHeaderBytes = 256 * 4;
inline constexpr uint64_t kImportPieceTokens = uint64_t(1) << 20;

const char* shard_format_name(ShardFormat f);
// "llmc" | "nanogpt" | "npy"; throws naming the value otherwise.
ShardFormat parse_shard_format(const std::string& name);
// True when `path` is a shard file (.bin/.npy) or a directory holding at least one and no other regular files.
bool looks_like_token_shards(const std::string& path);

// One source shard, its header checked: where its tokens start, how many, how wide.
struct SourceShard {
  std::string path, name;
  ShardFormat format = ShardFormat::nanogpt;
  uint64_t data_offset = 0, n_tokens = 0;
  uint32_t width = 2;  // bytes per token: 1, 2 or 4
  bool validation = false;
};
// Reads and checks the header of `path` (format: detected when `forced` is null).
SourceShard inspect_shard(const std::string& path, const ShardFormat* forced);

struct ImportOptions {
  std::string input;        // a shard file or a directory of shards
  std::string out_dir;      // empty: default_out_dir(input)
  bool format_given = false;
  ShardFormat format = ShardFormat::llmc;
  int64_t eot_token = -1;   // the document separator id (>= 0; required without a tokenizer)
  std::string tokenizer;    // the shards' tokenizer file (data/tokenizer.h); empty: none (no byte table)
  int64_t vocab = 0;        // 0: inferred (largest id + 1, at least eot + 1)
  double val_fraction = 0.05;  // used when no shard is named "val"
  std::ostream* progress = nullptr;
  bool progress_terminal = false;  // redraw the progress line in place
};

struct ImportResult {
  std::string out_dir, meta_path, format;
  std::vector<std::string> train_shards, val_shards;  // file names in out_dir
  uint32_t vocab = 0;
  int32_t separator = 0;
  uint64_t source_files = 0, source_bytes = 0;
  uint64_t train_tokens = 0, val_tokens = 0, train_documents = 0, val_documents = 0;
  bool vocab_inferred = false, val_from_tail = false;
  std::string tokenizer_kind;                          // empty: imported without a tokenizer
  uint64_t train_text_bytes = 0, val_text_bytes = 0;  // with a tokenizer: text bytes the tokens stand for
  double unigram_entropy_bits = -1;  // of the train tokens, bits per token (< 0: vocabulary too large to count)
  double seconds = 0;
};

ImportResult import_token_shards(const ImportOptions& opt);
std::string import_summary(const ImportResult& r);

}  // namespace ttt::data
