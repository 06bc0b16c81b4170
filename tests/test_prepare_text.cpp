// `ttt prepare`'s text path: jsonl (plain and .gz, --text-field, bad lines named by file and line), a tokenizer
// (a small byte-level BPE tokenizer.json written here: no Python needed), the separator id, invalid UTF-8, the
// progress line, the CLI flags.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <zlib.h>

#include <cstdio>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli_test_util.h"
#include "core/error.h"
#include "core/file_io.h"
#include "data/prepare.h"
#include "data/tokenizer.h"
#include "data/tokens.h"
#include "expect_error.h"
#include "temp_dir.h"
#include "tiny_tokenizer.h"
#include "peak_rss.h"

using namespace ttt;
using namespace ttt::data;
namespace fs = std::filesystem;
using test::expect_error;
using test::TempDir;
using test::tiny_bpe_json;

namespace {

void write_gz(const std::string& path, const std::string& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, bytes.data(), unsigned(bytes.size())), int(bytes.size()));
  ASSERT_EQ(gzclose(f), Z_OK);
}

// The documents of a token file, decoded.
std::vector<std::string> documents(const TokenFile& tf, const Tokenizer& tok) {
  std::vector<std::string> docs;
  std::vector<int32_t> cur;
  for (int32_t t : tf.tokens) {
    if (t == tf.separator) {
      docs.push_back(tok.decode(cur));
      cur.clear();
    } else {
      cur.push_back(t);
    }
  }
  return docs;
}

std::string jsonl_of(const std::vector<std::string>& texts, const std::string& field) {
  std::string out;
  for (const auto& t : texts) out += nlohmann::json{{"id", 1}, {field, t}}.dump() + "\n";
  return out;
}

}  // namespace

// The streaming writer: pieces appended, the header written last; ids checked; no file without finish().
TEST(PrepareText, TokenFileWriterStreams) {
  TempDir dir("tok_writer");
  {
    TokenFileWriter w(dir / "a.bin", 70000, 69999);
    const uint32_t first[] = {1, 2, 69999};
    const uint32_t second[] = {65536, 69999};
    w.append(first, 3);
    w.append(second, 2);
    EXPECT_EQ(w.tokens(), 5u);
    EXPECT_EQ(w.documents(), 2u);
    EXPECT_FALSE(fs::exists(dir / "a.bin"));
    w.finish();
  }
  const TokenFile tf = load_tokens(dir / "a.bin");
  EXPECT_EQ(tf.tokens, (std::vector<int32_t>{1, 2, 69999, 65536, 69999}));
  EXPECT_EQ(tf.separator, 69999);
  EXPECT_EQ(read_token_header(dir / "a.bin").token_width, 4u);
  {
    TokenFileWriter w(dir / "b.bin", 256, 0);
    const uint32_t bad[] = {5, 256};
    expect_error([&] { w.append(bad, 2); }, {"b.bin", "token 256 at position 1", "[0, 256)"});
  }
  for (const auto& e : fs::directory_iterator(dir.path)) EXPECT_EQ(e.path().filename(), "a.bin");  // no temp left
  {
    TokenFileWriter w(dir / "c.bin", 256, 0);
    expect_error([&] { w.finish(); }, "zero tokens");
  }
  expect_error([&] { TokenFileWriter(dir / "d.bin", 256, 256); }, "separator (end-of-document) id 256 is outside");
}

TEST(PrepareText, JsonlDocumentsInOrderPlainAndGz) {
  TempDir dir("prep_jsonl");
  std::vector<std::string> texts;
  for (int i = 0; i < 30; ++i) texts.push_back("document " + std::to_string(i) + ": caf\xc3\xa9 \xe4\xb8\xad\n\tend");
  std::string body = jsonl_of(texts, "body");
  body.insert(body.find('\n') + 1, "\n   \r\n");  // blank lines are skipped
  write_file_atomic(dir / "c.jsonl", body);
  write_gz(dir / "c.jsonl.gz", body);
  EXPECT_EQ(detect_format(dir / "c.jsonl"), "jsonl");
  EXPECT_EQ(detect_format(dir / "c.jsonl.gz"), "jsonl");
  EXPECT_EQ(detect_format(dir / "c.txt"), "text");
  for (const char* name : {"c.jsonl", "c.jsonl.gz"}) {
    PrepareOptions opt;
    opt.input = dir / name;
    opt.out_dir = dir / (std::string("out_") + name);
    opt.text_field = "body";
    opt.val_fraction = 0.2;
    const PrepareResult r = prepare_corpus(opt);
    EXPECT_EQ(r.format, "jsonl");
    EXPECT_EQ(r.documents, 30u);
    EXPECT_EQ(r.blank_lines, 2u);
    const auto tok = make_byte_tokenizer();
    const TokenFile train = load_tokens(r.train_path), val = load_tokens(r.val_path);
    auto td = documents(train, *tok), vd = documents(val, *tok);
    EXPECT_EQ(td.size() + vd.size(), 30u);
    // Each side keeps input order; a document's side depends on "<file>:<line>" only.
    size_t ti = 0, vi = 0;
    for (size_t i = 0; i < texts.size(); ++i) {
      const uint64_t line = i == 0 ? 1 : i + 3;  // two blank lines after the first
      const bool to_val = split_unit(opt.seed, std::string(name) + ":" + std::to_string(line)) < opt.val_fraction;
      ASSERT_LT(to_val ? vi : ti, (to_val ? vd : td).size());
      EXPECT_EQ((to_val ? vd[vi++] : td[ti++]), texts[i]) << i;
    }
    const auto meta = nlohmann::json::parse(read_file(r.meta_path));
    EXPECT_EQ(meta["input_format"], "jsonl");
    EXPECT_EQ(meta["text_field"], "body");
    EXPECT_EQ(meta["tokenizer"]["kind"], "bytes");
    EXPECT_EQ(meta["train_text_bytes"].get<uint64_t>() + meta["val_text_bytes"].get<uint64_t>(), r.bytes);
  }
}

// Two documents and an extreme fraction: a second pass moves one so that each side gets one; one document is split
// inside (by tokens).
TEST(PrepareText, SecondPassGivesEachSideADocument) {
  TempDir dir("prep_jsonl_pass2");
  write_file_atomic(dir / "tok.json", tiny_bpe_json());
  write_file_atomic(dir / "two.jsonl", jsonl_of({"the first document", "the second document"}, "text"));
  write_file_atomic(dir / "one.jsonl", jsonl_of({"the only document, long enough to split in two"}, "text"));
  const auto tok = load_tokenizer(dir / "tok.json");
  for (double f : {0.001, 0.999}) {
    PrepareOptions opt;
    opt.input = dir / "two.jsonl";
    opt.out_dir = dir / "out";
    opt.val_fraction = f;
    opt.tokenizer = dir / "tok.json";
    const PrepareResult r = prepare_corpus(opt);
    EXPECT_EQ(r.train_documents, 1u) << f;
    EXPECT_EQ(r.val_documents, 1u) << f;
    EXPECT_EQ(r.documents, 2u) << f;  // counted once, not once per pass
    auto td = documents(load_tokens(r.train_path), *tok), vd = documents(load_tokens(r.val_path), *tok);
    ASSERT_EQ(td.size() + vd.size(), 2u);
    EXPECT_NE(td[0], vd[0]);
  }
  PrepareOptions opt;
  opt.input = dir / "one.jsonl";
  opt.out_dir = dir / "out1";
  opt.val_fraction = 0.25;
  opt.tokenizer = dir / "tok.json";
  const PrepareResult r = prepare_corpus(opt);
  EXPECT_TRUE(r.single_document_split);
  const auto td = documents(load_tokens(r.train_path), *tok), vd = documents(load_tokens(r.val_path), *tok);
  ASSERT_EQ(td.size(), 1u);
  ASSERT_EQ(vd.size(), 1u);
  EXPECT_EQ(td[0] + vd[0], "the only document, long enough to split in two");
  const uint64_t n = r.train_tokens + r.val_tokens - 2;
  EXPECT_EQ(r.val_tokens - 1, uint64_t(std::llround(0.25 * double(n))));
}

TEST(PrepareText, JsonlBadLinesNameFileAndLine) {
  TempDir dir("prep_jsonl_bad");
  auto prepare = [&](const std::string& body, const std::string& field = "text") {
    write_file_atomic(dir / "bad.jsonl", body);
    PrepareOptions opt;
    opt.input = dir / "bad.jsonl";
    opt.out_dir = dir / "out";
    opt.text_field = field;
    prepare_corpus(opt);
  };
  const std::string good = "{\"text\": \"fine\"}\n{\"text\": \"also fine\"}\n";
  expect_error([&] { prepare(good + "{\"txt\": \"x\"}\n"); }, {"bad.jsonl:3", "no field \"text\"", "--text-field"});
  expect_error([&] { prepare(good + "{\"text\": \"x\"\n"); }, {"bad.jsonl:3", "invalid JSON"});
  expect_error([&] { prepare(good + "{\"text\": \"\xff\xfe\"}\n"); }, {"bad.jsonl:3", "UTF-8"});
  expect_error([&] { prepare(good + "{\"text\": 42}\n"); }, {"bad.jsonl:3", "not a string"});
  expect_error([&] { prepare(good + "[1, 2]\n"); }, {"bad.jsonl:3", "not a JSON object"});
  expect_error([&] { prepare(good, "body"); }, {"bad.jsonl:1", "no field \"body\""});
  PrepareOptions opt;
  opt.input = dir / "bad.jsonl";
  opt.format = "xml";
  expect_error([&] { prepare_corpus(opt); }, {"--format", "xml", "text or jsonl"});
}

TEST(PrepareText, WithTokenizerRecordsItAndUsesItsSeparator) {
  TempDir dir("prep_tok");
  write_file_atomic(dir / "tok.json", tiny_bpe_json());
  const auto tok = load_tokenizer(dir / "tok.json");
  ASSERT_EQ(tok->vocab_size(), 260u);
  ASSERT_EQ(tok->eot_id(), 256);
  EXPECT_EQ(tok->encode("the the"), (std::vector<int32_t>{258, 259}));
  // Documents, one of them holding the separator's text (plain text in a corpus: never the separator).
  std::vector<std::string> texts = {"the cat sat on the mat", "<|endoftext|> is just text here", "\xc3\xa9t\xc3\xa9 the end"};
  for (int i = 0; i < 20; ++i) texts.push_back("another document number " + std::to_string(i) + " with the words");
  fs::create_directories(dir / "in");
  for (size_t i = 0; i < texts.size(); ++i) write_file_atomic(dir / ("in/d" + std::to_string(100 + i) + ".txt"), texts[i]);
  PrepareOptions opt;
  opt.input = dir / "in";
  opt.out_dir = dir / "out";
  opt.tokenizer = dir / "tok.json";
  opt.val_fraction = 0.3;
  const PrepareResult r = prepare_corpus(opt);
  EXPECT_EQ(r.tokenizer_kind, "hf-bpe");
  const TokenFile train = load_tokens(r.train_path), val = load_tokens(r.val_path);
  EXPECT_EQ(train.vocab, 260u);
  EXPECT_EQ(train.separator, 256);
  EXPECT_EQ(read_token_header(r.train_path).token_width, 2u);
  auto td = documents(train, *tok), vd = documents(val, *tok);
  td.insert(td.end(), vd.begin(), vd.end());
  std::sort(td.begin(), td.end());
  std::sort(texts.begin(), texts.end());
  EXPECT_EQ(td, texts);
  // The tokenizer is copied and recorded; the data directory loads it back.
  const auto meta = nlohmann::json::parse(read_file(r.meta_path));
  EXPECT_EQ(meta["tokenizer"]["kind"], "hf-bpe");
  EXPECT_EQ(meta["tokenizer"]["file"], "tokenizer.json");
  EXPECT_EQ(meta["tokenizer"]["eot_id"], 256);
  EXPECT_EQ(meta["tokenizer"]["vocab"], 260);
  EXPECT_EQ(read_file(r.out_dir + "/tokenizer.json"), tiny_bpe_json());
  EXPECT_EQ(meta["train_text_bytes"].get<uint64_t>() + meta["val_text_bytes"].get<uint64_t>(), r.bytes);
  EXPECT_LT(r.train_tokens + r.val_tokens, r.bytes);  // merges happened
  EXPECT_EQ(meta["token_bytes"].get<std::vector<uint32_t>>(), tok->token_byte_lengths());
  EXPECT_EQ(load_tokenizer_of_dir(r.out_dir)->eot_id(), 256);

  // --eot-token naming an ordinary token that the text produces is refused, naming the document.
  opt.eot_token = 'h';
  opt.out_dir = dir / "out2";
  expect_error([&] { prepare_corpus(opt); }, {"encodes to the separator id 104", ".txt"});
  opt.eot_token = 999;
  expect_error([&] { prepare_corpus(opt); }, {"--eot-token 999", "outside the vocabulary"});
  // Invalid UTF-8 in a text file: the file and line are named.
  opt.eot_token = -1;
  write_file_atomic(dir / "in/d999.txt", "fine line\nbad \xc3( line\n");
  expect_error([&] { prepare_corpus(opt); }, {"d999.txt:2", "invalid UTF-8"});
}

TEST(PrepareText, ProgressLineWithEta) {
  TempDir dir("prep_progress");
  write_file_atomic(dir / "c.jsonl", jsonl_of({"one", "two", "three", "four"}, "text"));
  std::ostringstream log;
  PrepareOptions opt;
  opt.input = dir / "c.jsonl";
  opt.out_dir = dir / "out";
  opt.log = &log;
  opt.progress_every_s = 0;
  prepare_corpus(opt);
  EXPECT_NE(log.str().find("ETA"), std::string::npos) << log.str();
  EXPECT_NE(log.str().find("4 documents"), std::string::npos) << log.str();
}

// Memory is bounded by a document, not the corpus: `ttt prepare` on 64 MB of jsonl stays far below 64 MB of
// resident memory (the peak of the child process, from wait4).
TEST(PrepareText, BoundedMemoryOnALargeCorpus) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer's shadow memory and quarantine make resident memory meaningless here";
#endif
  TempDir dir("prep_big");
  {
    std::FILE* f = std::fopen((dir / "big.jsonl").c_str(), "wb");
    ASSERT_NE(f, nullptr);
    std::string line;
    for (int i = 0; i < 64 * 1024; ++i) {
      line = "{\"text\": \"document " + std::to_string(i) + " " + std::string(1000, char('a' + i % 26)) + "\"}\n";
      std::fwrite(line.data(), 1, line.size(), f);
    }
    std::fclose(f);
  }
  // A 2-document file first: the difference of the two peaks is what the 64 MB cost.
  write_file_atomic(dir / "small.jsonl", "{\"text\": \"a small document\"}\n{\"text\": \"another one\"}\n");
  const std::string out = dir / "out";
  const double small_mb =
      test_util::prepare_peak_mb("prepare --input " + (dir / "small.jsonl") + " --out " + (dir / "small_out"));
  const double big_mb = test_util::prepare_peak_mb("prepare --input " + (dir / "big.jsonl") + " --out " + out);
  ASSERT_GT(small_mb, 0);
  ASSERT_GT(big_mb, 0);
  const auto meta = nlohmann::json::parse(read_file(out + "/meta.json"));
  EXPECT_GT(meta["bytes"].get<uint64_t>(), uint64_t(60) << 20);
  // Holding the text would add > 64 MB.
  EXPECT_LT(big_mb - small_mb, 32.0) << "peak resident memory " << big_mb << " MB, " << small_mb
                                     << " MB for a 2-document file";
}

TEST(PrepareText, CliFlags) {
  TempDir dir("prep_cli");
  write_file_atomic(dir / "tok.json", tiny_bpe_json());
  write_file_atomic(dir / "c.jsonl", jsonl_of({"the first", "the second", "the third"}, "content"));
  const auto r = test::run_cli("prepare --input " + (dir / "c.jsonl") + " --out " + (dir / "out") + " --tokenizer " +
                               (dir / "tok.json") + " --text-field content");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("hf-bpe tokenizer, vocabulary 260, separator 256"), std::string::npos) << r.output;
  test::expect_clean_failure("prepare --input " + (dir / "c.jsonl") + " --out " + (dir / "o2"),
                             "no field \"text\"");
  test::expect_clean_failure("prepare --input " + (dir / "c.jsonl") + " --out " + (dir / "o3") + " --tokenizer " +
                                 (dir / "missing.json"),
                             "missing.json");
  test::expect_clean_failure("prepare --input " + (dir / "c.jsonl") + " --format csv",
                             "--format csv is not one of text, jsonl, llmc, nanogpt, npy");
  test::expect_clean_failure("prepare --input " + (dir / "c.jsonl") + " --eot-token 5", "byte tokenizer's separator is 0");
}
