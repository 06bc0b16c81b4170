// Tokenizers (data/tokenizer.h): the byte tokenizer; our byte-level BPE against Hugging Face's `tokenizers`
// (Python, tests only) on tokenizers trained here from a slice of the default corpus (GPT-2 and Llama-3 styles);
// SentencePiece against its own command-line encoder on a model trained here with spm_train; the records in
// data and run directories; bad files. Tests that need a missing tool skip and say which.
#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <ctime>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/file_io.h"
#include "data/bpe_tables.h"
#include "data/prepare.h"
#include "data/tokenizer.h"
#include "data/tokens.h"
#include "expect_error.h"
#include "temp_dir.h"
#include "tiny_tokenizer.h"

using namespace ttt;
using namespace ttt::data;
namespace fs = std::filesystem;
using test::expect_error;
using test::TempDir;

namespace {

const std::string kRefTool = std::string(TTT_SOURCE_DIR) + "/tests/tools/tokenizer_ref.py";

int shell(const std::string& cmd) {
  const int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

std::string gunzip(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) return "";
  std::string out;
  char buf[1 << 15];
  int n;
  while ((n = gzread(f, buf, sizeof buf)) > 0) out.append(buf, size_t(n));
  gzclose(f);
  return out;
}

// About `bytes` bytes of the default corpus (the Linux documentation that scripts/setup.sh prepares), its
// files in sorted order; empty when it is not installed.
std::string corpus_slice(size_t bytes) {
  std::vector<fs::path> dirs;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/usr/share/doc", ec))
    if (e.path().filename().string().rfind("linux-doc-", 0) == 0) dirs.push_back(e.path() / "Documentation");
  std::sort(dirs.begin(), dirs.end());
  if (dirs.empty()) return "";
  std::vector<fs::path> files;
  for (const auto& e : fs::recursive_directory_iterator(dirs.back(), ec))
    if (e.path().extension() == ".gz") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  std::string out;
  for (const auto& f : files) {
    if (out.size() >= bytes) break;
    out += gunzip(f.string());
  }
  if (out.size() > bytes) out.resize(bytes);
  // Keep whole UTF-8 characters.
  while (!out.empty() && (static_cast<unsigned char>(out.back()) & 0x80)) out.pop_back();
  return out;
}

// The hard cases: Unicode letters, marks, digits of other scripts, emoji, whitespace runs of every kind,
// \r\n, digits, contractions in both cases, punctuation runs, special tokens (also glued to words), invalid
// placement of apostrophes.
std::vector<std::string> hard_texts(const std::string& eot, const std::string& other_special) {
  return {
      "Hello world! It's a test: don't, won't, I'LL, we've, she'd, they're, I'm.",
      "caf\xc3\xa9 na\xc3\xafve \xe4\xb8\xad\xe6\x96\x87\xe5\xad\x97 \xf0\x9f\x98\x80\xf0\x9f\x9a\x80 "
      "\xd8\xa7\xd9\x84\xd8\xb9\xd8\xb1\xd8\xa8\xd9\x8a\xd8\xa9 \xd9\xa3\xd9\xa4 e\xcc\x81 \xce\xa9mega",
      "   leading spaces, trailing   \t\t  \n\n\n  mixed\r\n\r\nwindows\u2003em\u00a0nbsp   ",
      "numbers 1 12 123 1234 12345678901 3.14159 0x1F2e -42 \xe2\x85\xa7 \xc2\xbd",
      "a" + eot + "b " + eot + " c" + other_special + "\n" + eot + eot,
      "''s '' 's 'S 'Ll 've''d x'y '''' you'll we'll it'd he's they've I'm",
      "int main(void) {\n\treturn a->b[0] != 0 && !x; // comment\n}\n",
      "====  ----  ****  ...!!!???  <tag attr=\"v\">&amp;</tag>",
      "",
      " ",
      "\n",
      "x",
  };
}

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

nlohmann::json read_json(const std::string& path) { return nlohmann::json::parse(read_file(path)); }

void write_json(const std::string& path, const nlohmann::json& j) { write_file_atomic(path, j.dump()); }

// Trains a BPE tokenizer.json with Hugging Face's tokenizers; false (and a skip message) when it is missing.
bool train_hf(const TempDir& dir, const std::string& style, int vocab, const std::string& corpus, std::string& out,
              std::string& skip_why) {
  const std::string corpus_path = dir / "corpus.txt";
  write_file_atomic(corpus_path, corpus);
  out = dir / (style + ".json");
  const int rc = shell("python3 " + kRefTool + " hf-train " + style + " " + std::to_string(vocab) + " " + corpus_path +
                       " " + out);
  if (rc == 3 || rc == 127) {
    skip_why = "the Python package tokenizers is not installed (scripts/setup.sh installs it)";
    return false;
  }
  EXPECT_EQ(rc, 0) << "training the reference tokenizer failed";
  return rc == 0;
}

std::string training_corpus() {
  std::string c = corpus_slice(400000);
  // Without the documentation, a corpus of the hard cases repeated (less realistic merges, same code paths).
  if (c.empty())
    for (int i = 0; i < 300; ++i)
      for (const auto& t : hard_texts("", "")) c += t + " " + std::to_string(i) + "\n";
  return c;
}

void compare_with_hf(const std::string& style) {
  TempDir dir("tok_" + style);
  std::string path, why;
  const std::string corpus = training_corpus();
  if (!train_hf(dir, style, 1500, corpus, path, why)) GTEST_SKIP() << why;
  const auto tok = load_tokenizer(path);
  EXPECT_EQ(tok->kind(), "hf-bpe");
  EXPECT_EQ(tok->vocab_size(), 1500u);
  const std::string eot = style == "gpt2" ? "<|endoftext|>" : "<|end_of_text|>";
  const std::string other = style == "gpt2" ? "<|pad|>" : "<|begin_of_text|>";
  EXPECT_EQ(tok->token_bytes(tok->eot_id()), eot);

  std::vector<std::string> texts = hard_texts(eot, other);
  // Slices of the corpus itself, cut at arbitrary places (whole characters).
  for (size_t start = 0; start + 5000 < corpus.size() && texts.size() < 40; start += corpus.size() / 25) {
    size_t s = start;
    while (s < corpus.size() && (static_cast<unsigned char>(corpus[s]) & 0xc0) == 0x80) ++s;
    std::string t = corpus.substr(s, 3000);
    while (!t.empty() && (static_cast<unsigned char>(t.back()) & 0x80)) t.pop_back();
    texts.push_back(t);
  }
  write_json(dir / "texts.json", texts);
  ASSERT_EQ(shell("python3 " + kRefTool + " hf-encode " + path + " " + (dir / "texts.json") + " " + (dir / "ids.json")), 0);
  const nlohmann::json ref = read_json(dir / "ids.json");
  ASSERT_EQ(ref.size(), texts.size());
  size_t total = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    SCOPED_TRACE("text " + std::to_string(i) + ": " + texts[i].substr(0, 80));
    const std::vector<int32_t> ids = tok->encode(texts[i], /*parse_special=*/true);
    EXPECT_EQ(ids, ref[i].get<std::vector<int32_t>>());
    EXPECT_EQ(tok->decode(ids), texts[i]);
    total += ids.size();
  }
  EXPECT_GT(total, 1000u);
  // Without parse_special a special token's text is ordinary text: no special id comes out, and it decodes back.
  const std::string with_eot = "x" + eot + "y";
  const auto plain = tok->encode(with_eot, false);
  for (int32_t id : plain) EXPECT_FALSE(tok->is_special(id)) << id;
  EXPECT_EQ(tok->decode(plain), with_eot);
  // The byte lengths of the tokens of a text add up to its length; special tokens count 0.
  const auto lengths = tok->token_byte_lengths();
  ASSERT_EQ(lengths.size(), tok->vocab_size());
  EXPECT_EQ(lengths[size_t(tok->eot_id())], 0u);
  size_t sum = 0;
  for (int32_t id : tok->encode(texts[0], false)) sum += lengths[size_t(id)];
  EXPECT_EQ(sum, texts[0].size());
  EXPECT_EQ(tok->decode(tok->encode(with_eot, true), /*skip_special=*/true), "xy");
}

}  // namespace

TEST(Tokenizer, ByteKind) {
  const auto tok = make_byte_tokenizer();
  EXPECT_EQ(tok->kind(), "bytes");
  EXPECT_EQ(tok->vocab_size(), 256u);
  EXPECT_EQ(tok->eot_id(), 0);
  const std::string text = "caf\xc3\xa9\n";
  const auto ids = tok->encode(text);
  EXPECT_EQ(ids.size(), text.size());
  EXPECT_EQ(tok->decode(ids), text);
  const auto lengths = tok->token_byte_lengths();
  EXPECT_EQ(lengths[0], 0u);
  EXPECT_EQ(lengths[1], 1u);
  EXPECT_EQ(lengths[255], 1u);
  expect_error([&] { tok->decode({65, 256}); }, {"token 256", "position 1", "[0, 256)"});
}

TEST(Tokenizer, StreamDecoderHoldsIncompleteCharacters) {
  const auto tok = make_byte_tokenizer();
  Tokenizer::StreamDecoder d(*tok);
  // "é" = C3 A9, "😀" = F0 9F 98 80: nothing is printed until a character is complete.
  EXPECT_EQ(d.push('a'), "a");
  EXPECT_EQ(d.push(0xc3), "");
  EXPECT_EQ(d.push(0xa9), "\xc3\xa9");
  EXPECT_EQ(d.push(0xf0), "");
  EXPECT_EQ(d.push(0x9f), "");
  EXPECT_EQ(d.push(0x98), "");
  EXPECT_EQ(d.push(0x80), "\xf0\x9f\x98\x80");
  EXPECT_EQ(d.push(0xe4), "");
  EXPECT_EQ(d.finish(), "\xe4");
  EXPECT_EQ(d.push(0xff), "\xff");  // never a character: printed as it is
}

// Any bytes (invalid UTF-8, NUL, lone continuation bytes, special-token fragments) encode and decode back exactly,
// with both pre-tokenizers; no Python needed (a small tokenizer written by the test).
TEST(Tokenizer, HfBpeRoundTripsArbitraryBytes) {
  TempDir dir("tok_rt");
  for (bool llama3 : {false, true}) {
    write_file_atomic(dir / "t.json", test::tiny_bpe_json(llama3));
    const auto tok = load_tokenizer(dir / "t.json");
    uint64_t state = 42;
    const std::string alphabet[] = {"a", "T", "h", "e", " ", "  ", "\t", "\n", "\r\n", "'", "'s", "'LL", "1", "23",
                                    "\xc3\xa9", "\xe4\xb8\xad", "\xf0\x9f\x98\x80", "\xff", "\x80", "\xc3", std::string(1, '\0'),
                                    "<|endoftext|>", "<|endo", "!", "...", "\xe2\x80\x83", "\xc2\xa0", "the"};
    for (int round = 0; round < 2000; ++round) {
      std::string text;
      const int n = int(state % 24);
      for (int i = 0; i < n; ++i) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        text += alphabet[(state >> 33) % std::size(alphabet)];
      }
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      for (bool special : {false, true}) {
        const auto ids = tok->encode(text, special);
        ASSERT_EQ(tok->decode(ids), text) << (llama3 ? "llama3" : "gpt2") << " special " << special;
      }
    }
  }
}

// The encoder's flat tables: every key found with its own ids (short keys compared in the slot, long ones in
// the arena; one id held in the slot, several in the arena), strings that differ only where the packed head
// does not look kept apart, growth keeping every entry, a full cache emptied and refilled.
TEST(BpeTables, PieceCacheFindsWhatWasInserted) {
  using ttt::data::detail::PieceCache;
  using ttt::data::detail::hash_bytes;
  using ttt::data::detail::pack_head;
  PieceCache cache(5000, 256);
  std::vector<std::string> keys;
  for (int i = 0; i < 3000; ++i) {
    std::string k = std::to_string(i * 7919);
    k = std::string(size_t(i % 23), 'x') + k;  // lengths 1..30: both sides of the 8-byte head
    keys.push_back(k);
  }
  // Same length and same packed bytes positions differ: "abcXe" vs "abcYe" (n = 5 packs bytes 0-3 and 1-4).
  keys.push_back("abcXe");
  keys.push_back("abcYe");
  keys.push_back("aXc");
  keys.push_back("aYc");
  keys.push_back("0123456789abcdefQ");
  keys.push_back("0123456789abcdefR");
  auto ids_of = [](const std::string& k, size_t j) {
    std::vector<int32_t> ids;
    for (size_t c = 0; c <= j % 4; ++c) ids.push_back(int32_t(j * 10 + c));
    (void)k;
    return ids;
  };
  auto insert = [&](size_t j) {
    const std::string& k = keys[j];
    const auto ids = ids_of(k, j);
    cache.insert(k, pack_head(k), hash_bytes(k), ids.data(), ids.size());
  };
  auto expect_found = [&](size_t j) {
    const std::string& k = keys[j];
    size_t count = 0;
    const int32_t* got = cache.find(k, pack_head(k), hash_bytes(k), count);
    ASSERT_NE(got, nullptr) << "key '" << k << "'";
    EXPECT_EQ(std::vector<int32_t>(got, got + count), ids_of(k, j)) << "key '" << k << "'";
  };
  for (size_t j = 0; j < keys.size(); ++j) {
    size_t count = 0;
    EXPECT_EQ(cache.find(keys[j], pack_head(keys[j]), hash_bytes(keys[j]), count), nullptr) << keys[j];
    insert(j);
  }
  EXPECT_EQ(cache.size(), keys.size());
  EXPECT_GE(cache.capacity(), 2 * keys.size());  // grew, at most half full
  for (size_t j = 0; j < keys.size(); ++j) expect_found(j);
  // Too long for the cache: not stored.
  const std::string long_key(300, 'z');
  const int32_t one = 7;
  cache.insert(long_key, pack_head(long_key), hash_bytes(long_key), &one, 1);
  size_t count = 0;
  EXPECT_EQ(cache.find(long_key, pack_head(long_key), hash_bytes(long_key), count), nullptr);
  // A full cache starts over: the 5001st insertion empties it first.
  for (int i = 0; cache.size() < 5000; ++i) {
    const std::string k = "fill" + std::to_string(i);
    cache.insert(k, pack_head(k), hash_bytes(k), &one, 1);
  }
  const std::string last = "the last one";
  cache.insert(last, pack_head(last), hash_bytes(last), &one, 1);
  EXPECT_EQ(cache.size(), 1u);
  EXPECT_EQ(cache.find(keys[0], pack_head(keys[0]), hash_bytes(keys[0]), count), nullptr);
  ASSERT_NE(cache.find(last, pack_head(last), hash_bytes(last), count), nullptr);
  EXPECT_EQ(count, 1u);
}

TEST(BpeTables, PairRankTableKeepsTheFirstMergeOfAPair) {
  ttt::data::detail::PairRankTable t;
  EXPECT_EQ(t.find(1, 2), nullptr);  // empty, never sized
  t.reserve(4);
  for (int32_t i = 0; i < 20000; ++i) t.insert(i % 997, i / 997, {i, 100000 + i});  // grows past its reserve
  t.insert(5, 0, {99999, 1});                                                      // a later duplicate: ignored
  EXPECT_EQ(t.size(), 20000u);
  for (int32_t i = 0; i < 20000; ++i) {
    const auto* m = t.find(i % 997, i / 997);
    ASSERT_NE(m, nullptr) << i;
    EXPECT_EQ(m->rank, i);
    EXPECT_EQ(m->id, 100000 + i);
  }
  EXPECT_EQ(t.find(0, 21), nullptr);
  EXPECT_EQ(t.find(-1, 0), nullptr);
}

TEST(Tokenizer, HfBpeGpt2MatchesReference) { compare_with_hf("gpt2"); }
TEST(Tokenizer, HfBpeLlama3MatchesReference) { compare_with_hf("llama3"); }

// Encoding speed on one core, on text the tokenizer has not seen (its cache cold at the start). The time is the
// thread's CPU time, so that other processes sharing the machine do not count.
TEST(Tokenizer, HfBpeEncodesAtLeast20MBPerSecond) {
  TempDir dir("tok_speed");
  std::string path, why;
  if (!train_hf(dir, "gpt2", 8000, training_corpus(), path, why)) GTEST_SKIP() << why;
  std::string text = corpus_slice(4000000);
  if (text.size() < 1000000) GTEST_SKIP() << "the default corpus (linux-doc) is not installed";
  double best = 0;
  for (int round = 0; round < 3; ++round) {
    const auto tok = load_tokenizer(path);
    const double t0 = thread_cpu_seconds();
    const auto ids = tok->encode(text);
    const double s = thread_cpu_seconds() - t0;
    best = std::max(best, double(text.size()) / 1e6 / s);
    ASSERT_GT(ids.size(), text.size() / 10);
  }
  std::printf("hf-bpe encoding: %.1f MB/s (thread CPU time; %zu bytes, vocabulary 8000, best of 3)\n", best, text.size());
  RecordProperty("encode_mb_per_s", std::to_string(best));
#if defined(__SANITIZE_ADDRESS__) || !defined(NDEBUG)
  GTEST_SKIP() << "speed is checked in an optimized build without sanitizers (measured " << best << " MB/s)";
#else
  EXPECT_GE(best, 20.0);
#endif
}

TEST(Tokenizer, SentencePieceMatchesItsOwnEncoder) {
  std::string why;
  if (!tokenizer_kind_available("sentencepiece", &why)) GTEST_SKIP() << why;
  if (shell("command -v spm_train >/dev/null && command -v spm_encode >/dev/null") != 0)
    GTEST_SKIP() << "spm_train/spm_encode (Debian package sentencepiece) are not installed";
  TempDir dir("tok_spm");
  write_file_atomic(dir / "corpus.txt", training_corpus());
  ASSERT_EQ(shell("spm_train --input=" + (dir / "corpus.txt") + " --model_prefix=" + (dir / "m") +
                  " --vocab_size=700 --model_type=bpe --byte_fallback=true --minloglevel=2 >/dev/null 2>&1"),
            0);
  const auto tok = load_tokenizer(dir / "m.model");
  EXPECT_EQ(tok->kind(), "sentencepiece");
  EXPECT_EQ(tok->vocab_size(), 700u);
  EXPECT_EQ(tok->eot_id(), 2);  // </s> of spm_train's defaults
  // spm_encode reads one text per line.
  std::vector<std::string> texts;
  for (const auto& t : hard_texts("</s>", "<s>"))
    if (!t.empty() && t.find_first_of("\r\n") == std::string::npos) texts.push_back(t);
  std::string lines;
  for (const auto& t : texts) lines += t + "\n";
  write_file_atomic(dir / "texts.txt", lines);
  ASSERT_EQ(shell("spm_encode --model=" + (dir / "m.model") + " --output_format=id < " + (dir / "texts.txt") + " > " +
                  (dir / "ids.txt")),
            0);
  std::istringstream ref(read_file(dir / "ids.txt"));
  std::string line;
  std::vector<std::string> decoded;
  for (const auto& t : texts) {
    SCOPED_TRACE(t);
    ASSERT_TRUE(std::getline(ref, line));
    std::vector<int32_t> expect;
    std::istringstream ls(line);
    for (int32_t id; ls >> id;) expect.push_back(id);
    const auto ids = tok->encode(t);
    EXPECT_EQ(ids, expect);
    decoded.push_back(tok->decode(ids));
  }
  // Decoding agrees with spm_decode (SentencePiece normalizes: runs of spaces collapse, so not always the text).
  std::string id_lines;
  for (const auto& t : texts) {
    for (int32_t id : tok->encode(t)) id_lines += std::to_string(id) + " ";
    id_lines += "\n";
  }
  write_file_atomic(dir / "ids2.txt", id_lines);
  ASSERT_EQ(shell("spm_decode --model=" + (dir / "m.model") + " --input_format=id < " + (dir / "ids2.txt") + " > " +
                  (dir / "dec.txt")),
            0);
  std::istringstream dec(read_file(dir / "dec.txt"));
  for (const auto& d : decoded) {
    ASSERT_TRUE(std::getline(dec, line));
    EXPECT_EQ(d, line);
  }
  const auto lengths = tok->token_byte_lengths();
  EXPECT_EQ(lengths[size_t(tok->eot_id())], 0u);
  expect_error([&] { tok->decode({5, 700}); }, {"token 700", "position 1"});
  // `ttt prepare` with the model: recorded as sentencepiece, separated by </s>, decoding back to the documents.
  fs::create_directories(dir / "in");
  write_file_atomic(dir / "in/a.txt", "The kernel has a scheduler.");
  write_file_atomic(dir / "in/b.txt", "Patches go to the mailing list.");
  PrepareOptions po;
  po.input = dir / "in";
  po.out_dir = dir / "data";
  po.tokenizer = dir / "m.model";
  const PrepareResult pr = prepare_corpus(po);
  EXPECT_EQ(pr.tokenizer_kind, "sentencepiece");
  EXPECT_EQ(pr.separator, 2);
  const TokenFile tf = load_tokens(pr.train_path);
  EXPECT_EQ(tf.separator, 2);
  EXPECT_EQ(tf.vocab, 700u);
  EXPECT_EQ(load_tokenizer_of_dir(pr.out_dir)->kind(), "sentencepiece");
  EXPECT_EQ(nlohmann::json::parse(read_file(pr.meta_path))["tokenizer"]["file"], "tokenizer.model");
  expect_error([&] { load_tokenizer(dir / "m.model", 700); }, {"--eot-token 700", "m.model"});
}

TEST(Tokenizer, FindInvalidUtf8) {
  EXPECT_EQ(find_invalid_utf8("plain ascii"), std::string_view::npos);
  EXPECT_EQ(find_invalid_utf8("caf\xc3\xa9 \xf0\x9f\x98\x80"), std::string_view::npos);
  EXPECT_EQ(find_invalid_utf8("ab\xff"), 2u);              // never a lead byte
  EXPECT_EQ(find_invalid_utf8("a\x80"), 1u);               // lone continuation
  EXPECT_EQ(find_invalid_utf8("a\xc3"), 1u);               // truncated at the end
  EXPECT_EQ(find_invalid_utf8("a\xc0\xaf"), 1u);          // overlong '/'
  EXPECT_EQ(find_invalid_utf8("\xed\xa0\x80"), 0u);      // a surrogate
  EXPECT_EQ(find_invalid_utf8("x\xf4\x90\x80\x80"), 1u);  // above U+10FFFF
}

// A build without SentencePiece refuses .model files saying why (the kind is reported unavailable).
TEST(Tokenizer, SentencePieceAbsentIsRefusedClearly) {
  std::string why;
  if (tokenizer_kind_available("sentencepiece", &why))
    GTEST_SKIP() << "this build has SentencePiece (configure with -DTTT_WITH_SENTENCEPIECE=OFF to run this test)";
  EXPECT_NE(why.find("libsentencepiece-dev"), std::string::npos) << why;
  TempDir dir("tok_nospm");
  write_file_atomic(dir / "m.model", std::string("\x0a\x05\x0a\x01a", 7));
  expect_error([&] { load_tokenizer(dir / "m.model"); }, {"m.model", "no SentencePiece", "libsentencepiece-dev"});
}

TEST(Tokenizer, BadFilesNameTheFile) {
  TempDir dir("tok_bad");
  expect_error([&] { load_tokenizer(dir / "missing.json"); }, {"missing.json", "does not exist"});
  write_file_atomic(dir / "junk.bin", "this is neither JSON nor a protobuf");
  expect_error([&] { load_tokenizer(dir / "junk.bin"); }, {"junk.bin"});
  write_file_atomic(dir / "bad.json", "{\"model\": ");
  expect_error([&] { load_tokenizer(dir / "bad.json"); }, {"bad.json", "not valid JSON"});
  write_file_atomic(dir / "wp.json", R"({"model": {"type": "WordPiece", "vocab": {}}})");
  expect_error([&] { load_tokenizer(dir / "wp.json"); }, {"wp.json", "WordPiece", "not supported"});
  // A byte-level vocabulary must hold all 256 bytes; merges must name vocabulary entries.
  write_file_atomic(dir / "small.json",
                    R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "ByteLevel"}})");
  expect_error([&] { load_tokenizer(dir / "small.json"); }, {"small.json", "has no token"});
  write_file_atomic(dir / "regex.json", R"({"model": {"type": "BPE", "vocab": {}, "merges": []},
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "\\w+"},
    "behavior": "Isolated", "invert": false}, {"type": "ByteLevel", "use_regex": false}]}})");
  expect_error([&] { load_tokenizer(dir / "regex.json"); }, {"regex.json", "\\w+", "not supported"});
}

TEST(Tokenizer, RecordsInDataAndRunDirectories) {
  TempDir dir("tok_rec");
  std::string path, why;
  if (!train_hf(dir, "gpt2", 600, training_corpus(), path, why)) GTEST_SKIP() << why;
  const auto tok = load_tokenizer(path);
  fs::create_directories(dir / "data");
  const TokenizerRecord r = install_tokenizer(*tok, path, dir / "data");
  EXPECT_EQ(r.kind, "hf-bpe");
  EXPECT_EQ(r.file, "tokenizer.json");
  EXPECT_EQ(r.vocab, 600u);
  write_file_atomic(dir / "data/meta.json", nlohmann::json{{"tokenizer", r.to_json()}}.dump());
  fs::create_directories(dir / "run");
  copy_tokenizer_to_run(dir / "data", dir / "run");
  const auto again = load_tokenizer_of_dir(dir / "run");
  EXPECT_EQ(again->vocab_size(), 600u);
  EXPECT_EQ(again->encode("Hello, world"), tok->encode("Hello, world"));
  // A directory without a record is the byte tokenizer; a replaced tokenizer file is refused.
  EXPECT_EQ(load_tokenizer_of_dir(dir.path.string())->kind(), "bytes");
  write_file_atomic(dir / "run/tokenizer.json", read_file(dir / "run/tokenizer.json") + " ");
  expect_error([&] { load_tokenizer_of_dir(dir / "run"); }, {"tokenizer.json", "hash"});
}
