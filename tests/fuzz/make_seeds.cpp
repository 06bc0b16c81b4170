// Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/) with the library's own writers:
// small valid files of every kind each reader accepts. Usage: fuzz_make_seeds tests/fuzz/corpus
#include <cstdio>
#include <filesystem>
#include <string>

#include "core/file_io.h"
#include "core/safetensors.h"
#include "data/tokens.h"
#include "model/config.h"
#include "train/checkpoint.h"
#include "train/train_config.h"

using namespace ttt;
namespace fs = std::filesystem;

namespace {

void put(const fs::path& dir, const std::string& name, const std::string& bytes) {
  fs::create_directories(dir);
  write_file_atomic((dir / name).string(), bytes);
}

Tensor ramp(const Shape& shape, DType dtype) {
  Tensor t = Tensor::zeros(shape, dtype);
  for (int64_t i = 0; i < t.numel(); ++i) t.set(i, 0.25 * double(i) - 1.0);
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  const fs::path root = argv[1];

  const fs::path st_dir = root / "fuzz_safetensors";
  {
    SafeTensors st;
    st.add("w", ramp({2, 3}, DType::F32));
    put(st_dir, "f32.safetensors", safetensors_serialize(st));
  }
  {
    SafeTensors st;
    st.metadata["step"] = "12";
    st.add("a", ramp({3}, DType::F64));
    st.add("b", ramp({1, 2, 2}, DType::BF16));
    st.add("empty", ramp({2, 0}, DType::F32));
    put(st_dir, "mixed.safetensors", safetensors_serialize(st));
  }
  {
    SafeTensors st;
    for (const char* n : {"w0", "w1", "w2", "q", "k", "v"}) st.add(n, ramp({1, 2, 2}, DType::F32));
    for (const char* n : {"lr0", "lr1", "lr2"}) st.add(n, ramp({1, 2}, DType::F32));
    put(st_dir, "lact_inputs.safetensors", safetensors_serialize(st));
  }

  const fs::path tok_dir = root / "fuzz_tokens";
  put(tok_dir, "bytes.bin", data::serialize_byte_tokens(std::string("ab\0cd\0", 6), 2));
  put(tok_dir, "vocab32000.bin", data::serialize_tokens({32000, 1, {31999, 7, 0, 256}}));
  put(tok_dir, "vocab100000.bin", data::serialize_tokens({100000, 2, {0, 99999, 65536, 0}}));

  // Text for the BPE encoder: contractions, digits, whitespace runs, Unicode, a special token, invalid UTF-8.
  const fs::path bpe_dir = root / "fuzz_bpe_encode";
  put(bpe_dir, "english.txt", "It's the cat's mat, isn't it? They'LL see 12345 cats.\n");
  put(bpe_dir, "spaces.txt", "  a\t\t b   \r\n\r\n  c   ");
  put(bpe_dir, "unicode.txt", "caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80 \xd9\xa3\xd9\xa4 e\xcc\x81");
  put(bpe_dir, "special.txt", "the end<|endoftext|>the start<|endoftext");
  put(bpe_dir, "invalid.txt", std::string("ok \xff\xfe \xc3( \xe2\x82 end", 15));

  const fs::path cfg_dir = root / "fuzz_model_config";
  for (const std::string& name : model::preset_names())
    put(cfg_dir, name + ".json", model::config_to_json(model::preset(name)).dump(2));
  {
    model::ModelConfig c = model::preset("tiny");
    c.low_rank_init = true;
    c.low_rank_rank = 8;
    c.muon = true;
    put(cfg_dir, "tiny_low_rank.json", model::config_to_json(c).dump());
  }
  put(cfg_dir, "partial.json", R"({"dim": 64, "n_layers": 2, "arch": "tnt", "memory": "mlp", "local_chunks": [4]})");

  const fs::path state_dir = root / "fuzz_train_state";
  {
    train::RunState s;
    s.step = 500;
    s.tokens_seen = 512000;
    s.elapsed_seconds = 81.5;
    s.data_rng = {1, 2, 3, 0xffffffffffffffffull, 5, 6};
    put(state_dir, "state.json", train::run_state_to_json(s).dump(2));
    s.train.stage = 2;
    s.train.stage1_run = "runs/tnt";
    s.train.device = "cuda";
    put(state_dir, "state_stage2.json", train::run_state_to_json(s).dump());
    put(state_dir, "train_config.json", train::train_config_to_json(s.train).dump());
  }
  std::printf("wrote seed corpora under %s\n", root.string().c_str());
  return 0;
}
