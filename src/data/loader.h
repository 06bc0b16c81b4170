// The data loader: a dataset directory's splits as memory-mapped token files, read in place.
//
// A split is one token file (DIR/train.bin, DIR/val.bin) or many shards listed in DIR/meta.json:
//
//   "shards": {"train": ["train-00000.bin", "train-00001.bin", ...], "val": ["val-00000.bin"]}
//
// (file names relative to DIR, in stream order). The split is the concatenation of its shards: token i of the
// split is token i - start(s) of the shard s that holds it. Each shard is mapped read-only (mmap) and its 1-, 2-
// or 4-byte ids are read where they lie: no copy of the corpus, no expansion to int32 in memory; the kernel pages
// the file in and out as the sampler touches it.
//
// Verification: every shard is checked once, when it is opened (header, exact size, FNV-1a checksum, every id
// < vocab, document count): one sequential read of the whole split (FNV-1a runs byte by byte: 0.40 GB/s, i.e.
// ~2.5 s per GB, measured on data/linux-doc's 39.5 MB train.bin on the 2-core CI machine, 2026-11-30).
// Every shard of a split, and both splits, must agree on the vocabulary and the separator id.
//
// The rest of meta.json that the loader reads (absent keys are fine):
//   "token_bytes": [n0, n1, ...]  text bytes of each token id (vocab entries): what bits per byte divides by.
//                                 Without it, a byte-tokenizer dataset ("tokenizer": "bytes" or {"kind": "bytes"},
//                                 or a directory without meta.json whose vocabulary is 256 with separator 0)
//                                 gets the byte table (1 byte per id, 0 for the separator); any other dataset has
//                                 no table, and bits per byte is not reported for it.
//   "unigram_entropy_bits"        Shannon entropy of the train tokens' unigram distribution, bits per token.
//   "train_text_bytes"            the text bytes the train tokens cover (spares a pass over the split).
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/tokens.h"

namespace ttt::data {

class TokenSplit {
 public:
  TokenSplit() = default;
  // Maps and verifies each file (see the header comment); `paths` in stream order, at least one.
  static TokenSplit open(const std::vector<std::string>& paths);
  // A view of tokens held in memory (not owned: `tokens` must outlive the split), e.g. by tests; every id must be
  // in [0, vocab).
  static TokenSplit view(const std::vector<int32_t>& tokens, uint32_t vocab, int32_t separator = kDocSeparator);

  int64_t size() const { return size_; }
  uint32_t vocab() const { return vocab_; }
  int32_t separator() const { return separator_; }
  uint64_t documents() const { return documents_; }
  size_t shard_count() const { return shards_.size(); }

  int32_t at(int64_t i) const;
  // Tokens [pos, pos + n) of the split (they may span shards) into out[0, n).
  void read(int64_t pos, int64_t n, int32_t* out) const;
  std::vector<int32_t> to_vector() const;  // a copy of the whole split

  // Identifies the split's files wherever they lie: {file name: {"tokens", "documents", "vocab", "checksum"}}
  // per shard, from the headers (checksum: the payload's FNV-1a). A split of one train.bin has the fingerprint of
  // earlier versions.
  nlohmann::json fingerprint() const;

 private:
  struct Mapping;
  struct Shard {
    std::shared_ptr<const Mapping> mapping;  // null for a view
    const unsigned char* payload = nullptr;
    uint32_t width = 0;
    int64_t start = 0, count = 0;  // its tokens are [start, start + count) of the split
    std::string name;
    TokenFileHeader header;
  };
  const Shard& shard_of(int64_t i) const;
  std::vector<Shard> shards_;
  int64_t size_ = 0;
  uint32_t vocab_ = 0;
  int32_t separator_ = kDocSeparator;
  uint64_t documents_ = 0;
};

// The shard files of split `split` ("train" or "val") of a dataset directory: meta.json's "shards" list when it
// has one for the split, else DIR/<split>.bin. Throws, naming the directory and the file, when one is missing or
// meta.json is malformed.
std::vector<std::string> split_files(const std::string& dir, const std::string& split);
TokenSplit open_split(const std::string& dir, const std::string& split);

// What a dataset's meta.json says about its tokens (see the header comment).
struct DatasetInfo {
  std::vector<uint32_t> token_bytes;  // text bytes of each id; empty: unknown (no bits per byte)
  double unigram_entropy_bits = -1;   // bits per token of the train tokens; < 0: not recorded
  int64_t train_text_bytes = -1;      // < 0: not recorded
};
// `vocab` and `separator`: the dataset's (from its token files), to check and to infer the byte table.
DatasetInfo read_dataset_info(const std::string& dir, uint32_t vocab, int32_t separator);

// Text bytes covered by tokens [pos, pos + n) of a split (token_bytes must cover its vocabulary).
uint64_t covered_bytes(const TokenSplit& split, const std::vector<uint32_t>& token_bytes, int64_t pos, int64_t n);

}  // namespace ttt::data
