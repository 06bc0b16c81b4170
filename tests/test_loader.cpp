// Data at scale (issue 15): TTTTOK version 2 (the separator in the header), the memory-mapped sharded loader and
// its sampler, the token-shard importers (llm.c, nanoGPT, .npy) and the honest metrics on imported data.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli_test_util.h"
#include "core/error.h"
#include "core/file_io.h"
#include "core/rng.h"
#include "data/import_shards.h"
#include "data/loader.h"
#include "data/prepare.h"
#include "data/tokenizer.h"
#include "data/tokens.h"
#include "expect_error.h"
#include "peak_rss.h"
#include "tiny_tokenizer.h"
#include "train/trainer.h"
#include "train_test_util.h"

using namespace ttt;
using namespace ttt::data;
namespace fs = std::filesystem;
using test::expect_error;
using test_util::temp_dir;

namespace {

void put(std::string& s, uint64_t v, int bytes) {
  for (int b = 0; b < bytes; ++b) s.push_back(char((v >> (8 * b)) & 0xff));
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f << bytes;
  ASSERT_TRUE(f.good()) << path;
}

// `n` ids in [0, vocab) with `eot` every ~50 tokens (deterministic).
std::vector<uint32_t> synthetic_ids(size_t n, uint32_t vocab, uint32_t eot, uint64_t seed) {
  Rng r(seed);
  std::vector<uint32_t> ids(n);
  for (size_t i = 0; i < n; ++i) {
    ids[i] = uint32_t(r.below(vocab));
    if (ids[i] == eot) ids[i] = (eot + 1) % vocab;
    if (r.below(50) == 0) ids[i] = eot;
  }
  return ids;
}

std::string u16_payload(const std::vector<uint32_t>& ids) {
  std::string s;
  for (uint32_t t : ids) put(s, t, 2);
  return s;
}

// An llm.c shard: 256 int32 of header (magic, version, count), then uint16 tokens.
std::string llmc_shard(const std::vector<uint32_t>& ids, uint32_t magic = kLlmcMagic, uint32_t version = kLlmcVersion) {
  std::string s;
  put(s, magic, 4);
  put(s, version, 4);
  put(s, ids.size(), 4);
  s.resize(kLlmcHeaderBytes, '\0');
  return s + u16_payload(ids);
}

// A .npy file (format 1.0 or 2.0) of one-dimensional `descr` data, written as NumPy does: the header padded with
// spaces to a multiple of 64 bytes and ended by a newline.
std::string npy_file(const std::vector<uint32_t>& ids, const std::string& descr, int major = 1,
                     const std::string& shape = "") {
  const int width = descr == "<u4" ? 4 : descr == "|u1" ? 1 : 2;
  std::string dict = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" +
                     (shape.empty() ? std::to_string(ids.size()) + "," : shape) + "), }";
  const size_t prefix = major == 1 ? 10 : 12;
  while ((prefix + dict.size() + 1) % 64 != 0) dict.push_back(' ');
  dict.push_back('\n');
  std::string s = "\x93NUMPY";
  s.push_back(char(major));
  s.push_back('\0');
  put(s, dict.size(), major == 1 ? 2 : 4);
  s += dict;
  for (uint32_t t : ids) put(s, t, width);
  return s;
}

std::vector<int32_t> as_int(const std::vector<uint32_t>& ids) { return std::vector<int32_t>(ids.begin(), ids.end()); }

// Writes `ids` as a TTTTOK dataset directory whose train split is cut into shards at `cuts` (token indices) and
// listed in meta.json (no cuts: a single train.bin, no shard list).
void write_dataset(const std::string& dir, const std::vector<uint32_t>& ids, const std::vector<uint32_t>& val,
                   uint32_t vocab, int32_t eot, const std::vector<size_t>& cuts) {
  fs::create_directories(dir);
  auto save = [&](const std::string& name, size_t a, size_t b, const std::vector<uint32_t>& src) {
    TokenFileWriter w(dir + "/" + name, vocab, eot);
    w.append(src.data() + a, b - a);
    w.finish();
  };
  save("val.bin", 0, val.size(), val);
  if (cuts.empty()) {
    save("train.bin", 0, ids.size(), ids);
    return;
  }
  std::vector<std::string> names;
  size_t start = 0;
  for (size_t k = 0; k <= cuts.size(); ++k) {
    const size_t end = k < cuts.size() ? cuts[k] : ids.size();
    names.push_back("train-" + std::to_string(k) + ".bin");
    save(names.back(), start, end, ids);
    start = end;
  }
  nlohmann::json meta = {{"shards", {{"train", names}, {"val", {"val.bin"}}}}, {"tokenizer", nullptr}};
  write_file_atomic(dir + "/meta.json", meta.dump());
}

}  // namespace

TEST(TokenFormat, Version2StoresTheSeparatorInTheHeader) {
  TokenFile tf;
  tf.vocab = 50257;
  tf.separator = 50256;
  tf.tokens = {5, 50256, 7, 0, 50256};
  tf.n_documents = 2;  // token 0 is an ordinary id here
  const std::string bytes = serialize_tokens(tf);
  EXPECT_EQ(bytes[8], 2);                                       // version 2
  EXPECT_EQ(uint8_t(bytes[20]) | uint8_t(bytes[21]) << 8, 50256);  // the separator field
  const TokenFile back = parse_tokens(bytes, "v2.bin");
  EXPECT_EQ(back.separator, 50256);
  EXPECT_EQ(back.n_documents, 2u);
  EXPECT_EQ(back.tokens, tf.tokens);
  // The writer counts the header's separator, not token 0.
  tf.n_documents = 1;
  expect_error([&] { serialize_tokens(tf); }, {"n_documents is 1", "separator (50256)"});
  tf.separator = 50257;
  expect_error([&] { serialize_tokens(tf); }, {"separator", "50257", "outside the vocabulary"});
  // A header whose separator lies outside the vocabulary is refused by the reader.
  std::string bad = bytes;
  bad[20] = char(0xff);
  bad[21] = char(0xff);
  expect_error([&] { parse_tokens(bad, "bad.bin"); }, {"bad.bin", "separator", "65535", "outside the vocabulary"});
}

TEST(TokenFormat, Version1FilesStillReadWithSeparatorZero) {
  const std::string v2 = serialize_byte_tokens(std::string("ab") + '\0' + "c" + '\0', 2);
  std::string v1 = v2;
  v1[8] = 1;  // version 1: the same bytes, the field at 20 reserved (0)
  const TokenFile back = parse_tokens(v1, "v1.bin");
  EXPECT_EQ(back.separator, 0);
  EXPECT_EQ(back.n_documents, 2u);
  std::string reserved = v1;
  reserved[20] = 1;
  expect_error([&] { parse_tokens(reserved, "r.bin"); }, {"r.bin", "reserved header field is 1"});
  // The prepared default corpus (version 1) opens unchanged, when this machine has it.
  const std::string corpus = std::string(TTT_SOURCE_DIR) + "/data/linux-doc";
  if (file_exists(corpus + "/val.bin") && read_token_header(corpus + "/val.bin").version == 1) {
    const TokenSplit val = open_split(corpus, "val");
    EXPECT_EQ(val.separator(), 0);
    EXPECT_EQ(val.vocab(), 256u);
  }
}

TEST(TokenFormat, StreamingWriterWritesWhatSerializeWrites) {
  const std::string dir = temp_dir("tokwriter");
  const std::vector<uint32_t> ids = synthetic_ids(3000, 70000, 69999, 3);
  TokenFile tf;
  tf.vocab = 70000;
  tf.separator = 69999;
  tf.tokens = as_int(ids);
  for (uint32_t t : ids) tf.n_documents += t == 69999;
  {
    TokenFileWriter w(dir + "/w.bin", 70000, 69999);
    w.append(ids.data(), 1000);
    w.append(ids.data() + 1000, 2000);
    w.finish();
  }
  EXPECT_EQ(read_file(dir + "/w.bin"), serialize_tokens(tf));
  {
    TokenFileWriter w(dir + "/bad.bin", 100, 0);
    const uint32_t big = 100;
    expect_error([&] { w.append(&big, 1); }, {"bad.bin", "token 100", "[0, 100)"});
  }
  EXPECT_FALSE(file_exists(dir + "/bad.bin"));  // an unfinished writer leaves nothing behind
  for (const auto& e : fs::directory_iterator(dir)) EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos);
  fs::remove_all(dir);
}

// The same tokens in one file or three shards: the same split, the same batches for the same seed.
TEST(Loader, ShardLayoutDoesNotChangeTheBatches) {
  const std::string root = temp_dir("shardlayout");
  const std::vector<uint32_t> ids = synthetic_ids(5000, 1000, 999, 1), val = synthetic_ids(300, 1000, 999, 2);
  write_dataset(root + "/one", ids, val, 1000, 999, {});
  write_dataset(root + "/three", ids, val, 1000, 999, {1234, 1250});
  const TokenSplit one = open_split(root + "/one", "train"), three = open_split(root + "/three", "train");
  EXPECT_EQ(one.shard_count(), 1u);
  EXPECT_EQ(three.shard_count(), 3u);
  ASSERT_EQ(three.size(), 5000);
  EXPECT_EQ(three.to_vector(), as_int(ids));
  EXPECT_EQ(three.documents(), one.documents());
  std::vector<int32_t> across(40);
  three.read(1230, 40, across.data());  // spans all three shards
  EXPECT_TRUE(std::equal(across.begin(), across.end(), ids.begin() + 1230));
  EXPECT_EQ(three.at(1250), int32_t(ids[1250]));
  for (bool cross : {false, true}) {
    Rng a(42), b(42);
    for (int k = 0; k < 20; ++k) {
      const model::Batch x = train::sample_batch(one, 4, 64, a, cross), y = train::sample_batch(three, 4, 64, b, cross);
      ASSERT_EQ(x.inputs, y.inputs);
      ASSERT_EQ(x.targets, y.targets);
    }
  }
  // The run's fingerprint names each shard file.
  EXPECT_TRUE(three.fingerprint().contains("train-1.bin"));
  EXPECT_EQ(one.fingerprint()["train.bin"]["tokens"], 5000);
  // load_corpus over the shards: the same dataset as the one file, no bits per byte (no byte table).
  const train::Corpus c1 = train::load_corpus(root + "/one", 65, 1000), c3 = train::load_corpus(root + "/three", 65, 1000);
  EXPECT_EQ(c1.train.to_vector(), c3.train.to_vector());
  EXPECT_TRUE(c3.token_bytes.empty());
  EXPECT_TRUE(std::isnan(c3.unigram_entropy_bits_per_byte));
  EXPECT_GT(c3.unigram_entropy_bits, 5.0);
  fs::remove_all(root);
}

TEST(Loader, BadShardsAreNamed) {
  const std::string root = temp_dir("badshards");
  const std::vector<uint32_t> ids = synthetic_ids(500, 1000, 999, 1);
  write_dataset(root + "/d", ids, ids, 1000, 999, {100, 200});
  {
    // A flipped payload bit in the middle shard: its name and the checksum.
    std::string b = read_file(root + "/d/train-1.bin");
    b[kTokenHeaderBytes + 3] ^= 0x01;
    write_bytes(root + "/d/train-1.bin", b);
    expect_error([&] { open_split(root + "/d", "train"); }, {"train-1.bin", "checksum mismatch"});
  }
  fs::remove(root + "/d/train-1.bin");
  expect_error([&] { open_split(root + "/d", "train"); }, {"has no train-1.bin", "train split"});
  // Shards that disagree on the separator.
  {
    TokenFileWriter w(root + "/d/train-1.bin", 1000, 5);
    w.append(ids.data() + 100, 100);
    w.finish();
  }
  expect_error([&] { open_split(root + "/d", "train"); }, {"train-1.bin", "separator 5", "every shard"});
  write_file_atomic(root + "/d/meta.json", R"({"shards": {"train": ["../x.bin"]}})");
  expect_error([&] { open_split(root + "/d", "train"); }, {"meta.json", "plain file names"});
  write_file_atomic(root + "/d/meta.json", R"({"shards": {"train": ["train-0.bin"]}, "token_bytes": [1, 2]})");
  expect_error([&] { read_dataset_info(root + "/d", 1000, 999); }, {"meta.json", "token_bytes", "1000", "2 entries"});
  fs::remove_all(root);
}

TEST(Loader, ByteTableComesFromMetaOrTheByteTokenizer) {
  const std::string dir = temp_dir("bytetable");
  EXPECT_EQ(read_dataset_info(dir, 256, 0).token_bytes, make_byte_tokenizer()->token_byte_lengths());  // no meta.json: byte tokens
  EXPECT_TRUE(read_dataset_info(dir, 1000, 999).token_bytes.empty());
  write_file_atomic(dir + "/meta.json", R"({"tokenizer": "bytes", "unigram_entropy_bits": 5.5})");  // version 1 meta
  const DatasetInfo old = read_dataset_info(dir, 256, 0);
  EXPECT_EQ(old.token_bytes, make_byte_tokenizer()->token_byte_lengths());
  EXPECT_EQ(old.unigram_entropy_bits, 5.5);
  write_file_atomic(dir + "/meta.json", R"({"tokenizer": null})");  // imported shards
  EXPECT_TRUE(read_dataset_info(dir, 256, 0).token_bytes.empty());
  write_file_atomic(dir + "/meta.json", R"({"tokenizer": {"kind": "bpe"}, "token_bytes": [0, 1, 4]})");
  EXPECT_EQ(read_dataset_info(dir, 3, 0).token_bytes, (std::vector<uint32_t>{0, 1, 4}));
  EXPECT_EQ(make_byte_tokenizer()->token_byte_lengths()[0], 0u);
  EXPECT_EQ(make_byte_tokenizer()->token_byte_lengths()[65], 1u);
  fs::remove_all(dir);
}

// `ttt prepare` on text records the byte table and each split's text bytes; the summary labels the entropy per token
// and per byte.
TEST(Loader, PrepareRecordsTheByteTableAndTextBytes) {
  const std::string dir = temp_dir("prepmeta");
  fs::create_directories(dir + "/in");
  for (int i = 0; i < 12; ++i) write_bytes(dir + "/in/doc" + std::to_string(i) + ".txt", std::string(50 + i, char('a' + i)));
  PrepareOptions o;
  o.input = dir + "/in";
  o.out_dir = dir + "/out";
  const PrepareResult r = prepare_corpus(o);
  const nlohmann::json meta = nlohmann::json::parse(read_file(r.meta_path));
  EXPECT_EQ(meta["token_bytes"].get<std::vector<uint32_t>>(), make_byte_tokenizer()->token_byte_lengths());
  EXPECT_EQ(meta["train_text_bytes"].get<uint64_t>() + meta["val_text_bytes"].get<uint64_t>(), r.bytes);
  EXPECT_EQ(meta["train_text_bytes"].get<uint64_t>(), r.train_tokens - r.train_documents);
  EXPECT_EQ(meta["format_version"], 2);
  const std::string summary = prepare_summary(r);
  EXPECT_NE(summary.find(" bits/token, "), std::string::npos) << summary;
  const train::Corpus c = train::load_corpus(o.out_dir, 2, 256);
  EXPECT_EQ(c.token_bytes, make_byte_tokenizer()->token_byte_lengths());
  EXPECT_NEAR(c.unigram_entropy_bits_per_byte,
              c.unigram_entropy_bits * double(r.train_tokens) / double(r.train_tokens - r.train_documents), 1e-12);
  fs::remove_all(dir);
}

// A window stops at a document separator: the targets after the first separator past the window's first input
// are ignored; with cross_documents they stay.
TEST(Loader, WindowsDoNotCrossADocumentSeparator) {
  std::vector<int32_t> toks;
  for (int d = 0; d < 200; ++d) {
    for (int i = 0; i < 1 + d % 23; ++i) toks.push_back(1 + (d + i) % 200);
    toks.push_back(0);
  }
  const TokenSplit split = TokenSplit::view(toks, 256);
  Rng a(5), b(5);
  int masked_windows = 0;
  for (int k = 0; k < 50; ++k) {
    const model::Batch m = train::sample_batch(split, 2, 16, a), c = train::sample_batch(split, 2, 16, b, true);
    ASSERT_EQ(m.inputs, c.inputs);
    for (int64_t s = 0; s < 2; ++s) {
      bool after = false;
      for (int64_t i = 0; i < 16; ++i) {
        const size_t at = size_t(s * 16 + i);
        if (i >= 1 && m.inputs[at] == 0) after = true;
        EXPECT_GE(c.targets[at], 0);
        EXPECT_EQ(m.targets[at], after ? -1 : c.targets[at]) << "window " << k << " sequence " << s << " position " << i;
      }
      masked_windows += after;
    }
  }
  EXPECT_GT(masked_windows, 10);  // the documents are shorter than the windows
}

TEST(Import, LlmcNanogptAndNpyGiveTheSameTokens) {
  const std::string root = temp_dir("import_formats");
  const std::vector<uint32_t> ids = synthetic_ids(20000, 50257, 50256, 7);
  write_bytes(root + "/shard.bin", llmc_shard(ids));
  write_bytes(root + "/raw.bin", u16_payload(ids));
  write_bytes(root + "/u2.npy", npy_file(ids, "<u2"));
  write_bytes(root + "/u4v2.npy", npy_file(ids, "<u4", 2));
  const std::vector<std::pair<std::string, std::string>> inputs = {
      {"shard.bin", "llmc"}, {"raw.bin", "nanogpt"}, {"u2.npy", "npy"}, {"u4v2.npy", "npy"}};
  for (const auto& [name, format] : inputs) {
    SCOPED_TRACE(name);
    EXPECT_EQ(shard_format_name(inspect_shard(root + "/" + name, nullptr).format), format);  // detected
    ImportOptions o;
    o.input = root + "/" + name;
    o.out_dir = root + "/out-" + name;
    o.eot_token = 50256;
    const ImportResult r = import_token_shards(o);
    EXPECT_EQ(r.format, format);
    EXPECT_EQ(r.vocab, 50257u);  // inferred: the largest id + 1
    EXPECT_TRUE(r.vocab_inferred);
    EXPECT_TRUE(r.val_from_tail);
    const TokenSplit train = open_split(o.out_dir, "train"), val = open_split(o.out_dir, "val");
    EXPECT_EQ(train.separator(), 50256);
    EXPECT_EQ(train.size() + val.size(), 20000);
    EXPECT_EQ(val.size(), 1000);  // val_fraction 0.05 of the stream's end
    std::vector<int32_t> all = train.to_vector(), tail = val.to_vector();
    all.insert(all.end(), tail.begin(), tail.end());
    EXPECT_EQ(all, as_int(ids));
    const DatasetInfo info = read_dataset_info(o.out_dir, train.vocab(), train.separator());
    EXPECT_TRUE(info.token_bytes.empty()) << "no tokenizer: no byte table";
    EXPECT_GT(info.unigram_entropy_bits, 10.0);
  }
  fs::remove_all(root);
}

// A directory of llm.c shards stays sharded; the shards named "val" are the validation split.
TEST(Import, DirectoryOfShardsKeepsItsShards) {
  const std::string root = temp_dir("import_dir");
  fs::create_directories(root + "/in");
  std::vector<uint32_t> train_all;
  for (int k = 1; k <= 3; ++k) {
    const std::vector<uint32_t> ids = synthetic_ids(3000 + 100 * size_t(k), 50257, 50256, uint64_t(10 + k));
    write_bytes(root + "/in/fineweb_train_00000" + std::to_string(k) + ".bin", llmc_shard(ids));
    train_all.insert(train_all.end(), ids.begin(), ids.end());
  }
  const std::vector<uint32_t> val = synthetic_ids(800, 50257, 50256, 20);
  write_bytes(root + "/in/fineweb_val_000000.bin", llmc_shard(val));
  ImportOptions o;
  o.input = root + "/in";
  o.out_dir = root + "/out";
  o.eot_token = 50256;
  o.vocab = 50304;  // given: no inference pass
  const ImportResult r = import_token_shards(o);
  EXPECT_FALSE(r.vocab_inferred);
  EXPECT_FALSE(r.val_from_tail);
  EXPECT_EQ(r.train_shards, (std::vector<std::string>{"train-00000.bin", "train-00001.bin", "train-00002.bin"}));
  EXPECT_EQ(r.val_shards, (std::vector<std::string>{"val-00000.bin"}));
  const TokenSplit train = open_split(o.out_dir, "train"), v = open_split(o.out_dir, "val");
  EXPECT_EQ(train.shard_count(), 3u);
  EXPECT_EQ(train.vocab(), 50304u);
  EXPECT_EQ(train.to_vector(), as_int(train_all));
  EXPECT_EQ(v.to_vector(), as_int(val));
  uint64_t docs = 0;
  for (uint32_t t : train_all) docs += t == 50256;
  EXPECT_EQ(train.documents(), docs);
  fs::remove_all(root);
}

TEST(Import, BadShardsGiveClearErrorsWithFileAndOffset) {
  const std::string root = temp_dir("import_bad");
  const std::vector<uint32_t> ids = synthetic_ids(1000, 50257, 50256, 3);
  auto expect_import_error = [&](const std::string& name, const std::string& bytes, std::vector<std::string> needles,
                                 int64_t vocab = 0, const ShardFormat* format = nullptr) {
    SCOPED_TRACE(name);
    write_bytes(root + "/" + name, bytes);
    ImportOptions o;
    o.input = root + "/" + name;
    o.out_dir = root + "/out";
    o.eot_token = 50256;
    o.vocab = vocab;
    if (format) {
      o.format = *format;
      o.format_given = true;
    }
    needles.push_back(name);
    try {
      import_token_shards(o);
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      for (const std::string& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << "lacks '" << n << "': " << e.what();
    }
  };
  std::string truncated = llmc_shard(ids);
  truncated.resize(truncated.size() - 10);
  expect_import_error("truncated.bin", truncated, {"token count at byte offset 8 is 1000", "995", "truncated"});
  std::string odd = llmc_shard(ids);
  odd.pop_back();
  expect_import_error("odd.bin", odd, {"not a whole number", "2-byte tokens"});
  const ShardFormat llmc = ShardFormat::llmc;
  expect_import_error("magic.bin", llmc_shard(ids, 12345), {"magic at byte offset 0 is 12345", "20240520"}, 0, &llmc);
  expect_import_error("version.bin", llmc_shard(ids, kLlmcMagic, 7), {"version at byte offset 4 is 7"});
  expect_import_error("f4.npy", npy_file(ids, "<f4"), {"dtype '<f4'", "'<u2'"});
  expect_import_error("shape.npy", npy_file(ids, "<u2", 1, "10, 100"), {"2 dimensions"});
  expect_import_error("short.npy", npy_file(ids, "<u2", 1, "1001,"), {"shape says 1001 tokens", "1000", "truncated"});
  std::string broken = npy_file(ids, "<u2");
  broken.replace(broken.find("'shape'"), 7, "'shapf'");
  expect_import_error("broken.npy", broken, {"malformed .npy header at byte offset", "unknown key 'shapf'"});
  // A token beyond the vocabulary names its byte offset in the source.
  std::vector<uint32_t> one_bad = ids;
  one_bad[600] = 60000;
  expect_import_error("id.bin", llmc_shard(one_bad), {"token 60000 at token index 600", "byte offset 2224"}, 50257);
  {
    // A TTTTOK file is not a source shard, and the input directory is not an output directory.
    fs::create_directories(root + "/tt");
    write_bytes(root + "/tt/x.bin", serialize_byte_tokens(std::string("ab") + '\0', 1));
    ImportOptions o;
    o.input = root + "/tt";
    o.eot_token = 0;
    o.out_dir = root + "/tt-out";
    expect_error([&] { import_token_shards(o); }, {"x.bin", "already a TTTTOK token file"});
    write_bytes(root + "/tt/x.bin", u16_payload(ids));
    o.out_dir = root + "/tt/";
    expect_error([&] { import_token_shards(o); }, {"is the input directory"});
  }
  ImportOptions no_eot;
  no_eot.input = root + "/id.bin";
  expect_error([&] { import_token_shards(no_eot); }, {"--eot-token", "50256 for GPT-2"});
  EXPECT_FALSE(fs::exists(root + "/out/train-00000.bin"));  // nothing half-written
  fs::remove_all(root);
}

// `ttt prepare` on shards: detected from the header, a progress line with ETA on stderr, and bounded memory: a
// 48 MB nanoGPT file imports in far less resident memory than its size.
TEST(Import, CliProgressAndBoundedMemory) {
  const std::string root = temp_dir("import_cli");
  write_bytes(root + "/shard.bin", llmc_shard(synthetic_ids(5000, 50257, 50256, 4)));
  const test::RunResult ok = test::run_cli("prepare --input " + root + "/shard.bin --out " + root + "/o1 --eot-token 50256");
  ASSERT_EQ(ok.status, 0) << ok.output;
  EXPECT_NE(ok.output.find("prepare: importing 1 llmc shard(s): 100.0%"), std::string::npos) << ok.output;
  EXPECT_NE(ok.output.find("ETA"), std::string::npos) << ok.output;
  EXPECT_NE(ok.output.find("bits per byte will not be reported"), std::string::npos) << ok.output;
  test::expect_clean_failure("prepare --input " + root + "/shard.bin --out " + root + "/o2", "--eot-token");
  test::expect_clean_failure("prepare --input " + root + "/shard.bin --format parquet --eot-token 1", "--format parquet");
  test::expect_clean_failure("prepare --input " + root + "/shard.bin --eot-token 50256 --vocab 100", "outside the vocabulary");

  const size_t n = size_t(24) << 20;  // 24M uint16 tokens = 48 MB
  {
    std::ofstream f(root + "/big.bin", std::ios::binary);
    std::vector<uint16_t> piece(1 << 20);
    for (size_t k = 0; k < n / piece.size(); ++k) {
      for (size_t i = 0; i < piece.size(); ++i) piece[i] = uint16_t((k * 7919 + i * 31) % 50000);
      f.write(reinterpret_cast<const char*>(piece.data()), std::streamsize(piece.size() * 2));
    }
  }
  // The same import of a 2 MB file first: the difference of the two peaks is what the 48 MB cost.
  {
    std::ofstream f(root + "/small.bin", std::ios::binary);
    std::vector<uint16_t> piece(1 << 20, 7);
    f.write(reinterpret_cast<const char*>(piece.data()), std::streamsize(piece.size() * 2));
  }
  const double small_mb = test_util::prepare_peak_mb("prepare --input " + root + "/small.bin --out " + root +
                                                     "/small --format nanogpt --eot-token 0");
  const double big_mb = test_util::prepare_peak_mb("prepare --input " + root + "/big.bin --out " + root +
                                                   "/big --format nanogpt --eot-token 0");
  ASSERT_GT(small_mb, 0);
  ASSERT_GT(big_mb, 0);
  std::printf("prepare of a 48 MB nanoGPT file: peak RSS %.1f MB, %.1f MB above a 2 MB file's\n", big_mb,
              big_mb - small_mb);
  EXPECT_LT(big_mb - small_mb, 24.0) << "the importer must stream, not hold the shard";
  const TokenSplit train = open_split(root + "/big", "train"), val = open_split(root + "/big", "val");
  EXPECT_EQ(train.size() + val.size(), int64_t(n));
  EXPECT_EQ(train.vocab(), 50000u);
  fs::remove_all(root);
}

// Shards imported with their tokenizer: its vocabulary and end-of-text id are the defaults, the file is copied and
// recorded, and meta.json gets the byte table and each split's text bytes (so bits per byte is reported).
TEST(Import, WithTheirTokenizerTheShardsGetAByteTable) {
  const std::string root = temp_dir("import_tok");
  write_file_atomic(root + "/tok.json", test::tiny_bpe_json());  // vocabulary 260, <|endoftext|> = 256
  const std::vector<uint32_t> ids = synthetic_ids(3000, 259, 256, 5);
  write_bytes(root + "/shard.bin", llmc_shard(ids));
  const test::RunResult ok = test::run_cli("prepare --input " + root + "/shard.bin --out " + root + "/o --tokenizer " +
                                           root + "/tok.json");
  ASSERT_EQ(ok.status, 0) << ok.output;
  EXPECT_NE(ok.output.find("hf-bpe tokenizer's table"), std::string::npos) << ok.output;
  const TokenSplit train = open_split(root + "/o", "train"), val = open_split(root + "/o", "val");
  EXPECT_EQ(train.vocab(), 260u);  // the tokenizer's, not the largest id + 1
  EXPECT_EQ(train.separator(), 256);
  EXPECT_TRUE(fs::exists(root + "/o/tokenizer.json"));
  const nlohmann::json meta = nlohmann::json::parse(read_file(root + "/o/meta.json"));
  EXPECT_EQ(meta["tokenizer"]["kind"], "hf-bpe");
  EXPECT_EQ(meta["tokenizer"]["eot_id"], 256);
  const DatasetInfo info = read_dataset_info(root + "/o", train.vocab(), train.separator());
  ASSERT_EQ(info.token_bytes.size(), 260u);
  EXPECT_EQ(info.token_bytes[256], 0u);  // the separator covers no text
  EXPECT_EQ(info.token_bytes[258], 3u);  // "the"
  EXPECT_EQ(meta["train_text_bytes"].get<uint64_t>(), covered_bytes(train, info.token_bytes, 0, train.size()));
  EXPECT_EQ(meta["val_text_bytes"].get<uint64_t>(), covered_bytes(val, info.token_bytes, 0, val.size()));
  test::expect_clean_failure("prepare --input " + root + "/shard.bin --out " + root + "/o2 --tokenizer " + root +
                                 "/tok.json --vocab 300",
                             "differs from the vocabulary 260");
  test::expect_clean_failure("prepare --input " + root + "/shard.bin --out " + root + "/o3 --tokenizer " + root +
                                 "/missing.json",
                             "missing.json");
  // One --format for both paths: the text flags are refused for shards, --vocab for text; --format text reads a
  // .bin as text.
  test::expect_clean_failure("prepare --input " + root + "/shard.bin --out " + root + "/o4 --eot-token 256 --text-field x",
                             "--text-field applies to text input, not to token shards");
  write_file_atomic(root + "/c.txt", "some text\n");
  test::expect_clean_failure("prepare --input " + root + "/c.txt --out " + root + "/o5 --vocab 300",
                             "--vocab applies to token shards");
  write_file_atomic(root + "/text.bin", "plain words in a .bin file\n");
  const test::RunResult as_text = test::run_cli("prepare --input " + root + "/text.bin --format text --out " + root + "/o6");
  ASSERT_EQ(as_text.status, 0) << as_text.output;
  EXPECT_NE(as_text.output.find("bytes tokenizer"), std::string::npos) << as_text.output;
  fs::remove_all(root);
}

// Training and evaluation on imported shards (no tokenizer): per-token metrics, and no bits per byte.
TEST(Import, TrainingOnImportedShardsReportsNoBitsPerByte) {
  const std::string root = temp_dir("import_train");
  write_bytes(root + "/tokens.npy", npy_file(synthetic_ids(6000, 300, 299, 9), "<u2"));
  ImportOptions io;
  io.input = root + "/tokens.npy";
  io.out_dir = root + "/data";
  io.eot_token = 299;
  import_token_shards(io);
  train::TrainOptions o;
  o.model = test_util::small_lact_config();
  o.model.vocab_size = 300;
  o.train.data_dir = root + "/data";
  o.train.steps = 3;
  o.train.batch = 2;
  o.train.seq_len = 16;
  o.train.eval_every = 0;
  o.train.eval_batches = 1;
  o.train.ckpt_every = 0;
  o.out_dir = root + "/run";
  const train::TrainResult r = train::train(o);
  EXPECT_TRUE(std::isnan(r.val_bpb));
  EXPECT_TRUE(std::isnan(r.unigram_entropy_bits_per_byte));
  const auto m = test_util::read_metrics(root + "/run");
  ASSERT_EQ(m.size(), 3u);
  EXPECT_FALSE(m[2].contains("val_bpb")) << m[2].dump();
  EXPECT_TRUE(m[2].contains("val_loss"));
  EXPECT_NEAR(m[2]["val_ppl"].get<double>(), std::exp(m[2]["val_loss"].get<double>()), 1e-9);
  EXPECT_NEAR(m[2]["val_bits_per_token"].get<double>(), m[2]["val_loss"].get<double>() / std::log(2.0), 1e-12);
  // `ttt eval` on the same data: per-token metrics, and a note instead of bits per byte.
  const test::RunResult ev = test::run_cli("eval --checkpoint " + root + "/run --data " + root + "/data");
  ASSERT_EQ(ev.status, 0) << ev.output;
  const nlohmann::json j = nlohmann::json::parse(ev.output.substr(ev.output.find('{')));
  EXPECT_FALSE(j.contains("val_bpb")) << ev.output;
  EXPECT_NE(j["val_bpb_note"].get<std::string>().find("no token byte table"), std::string::npos);
  EXPECT_NEAR(j["val_ppl"].get<double>(), std::exp(j["val_loss"].get<double>()), 1e-9);
  fs::remove_all(root);
}

// The window rule is part of the run's stored config: cross_documents round-trips and must be a boolean.
TEST(Loader, CrossDocumentsIsStoredWithTheRun) {
  train::TrainConfig c;
  EXPECT_FALSE(c.cross_documents);
  c.cross_documents = true;
  const nlohmann::json j = train::train_config_to_json(c);
  EXPECT_EQ(j["cross_documents"], true);
  EXPECT_TRUE(train::train_config_from_json(j).cross_documents);
  nlohmann::json bad = j;
  bad["cross_documents"] = 1;
  expect_error([&] { train::train_config_from_json(bad); }, {"cross_documents", "true or false"});
}
