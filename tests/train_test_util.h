// Shared by the training tests (CPU and GPU): scratch directories, a synthetic byte corpus, a run's metrics, a
// small LaCT model, the small TNT model of the stage-2 tests, random micro-batches, and why mpirun cannot run.
#pragma once
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/file_io.h"
#include "core/rng.h"
#include "data/tokens.h"
#include "dist/communicator.h"
#include "model/config.h"
#include "model/model.h"
#include "train/checkpoint.h"

namespace ttt::test_util {

// A fresh empty directory under the system temp dir, unique to this process.
inline std::string temp_dir(const std::string& tag) {
  namespace fs = std::filesystem;
  fs::path p = fs::temp_directory_path() / ("ttt_test_" + tag + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

// A synthetic byte corpus in a fresh directory (train.bin: 40 documents, val.bin: 6): short repetitive "documents"
// of 12 lines each, so a small model learns something in a few steps.
inline std::string make_corpus(const std::string& tag) {
  const std::string dir = temp_dir(tag);
  const char* lines[] = {"the kernel maps the page. ", "the driver frees the buffer. ", "a task sleeps on the queue. ",
                         "the lock protects the list. "};
  auto build = [&](int docs, uint64_t seed) {
    Rng r(seed);
    std::string s;
    for (int d = 0; d < docs; ++d) {
      for (int i = 0; i < 12; ++i) s += lines[r.below(4)];
      s.push_back('\0');
    }
    return s;
  };
  data::save_byte_tokens(dir + "/train.bin", build(40, 1), 40);
  data::save_byte_tokens(dir + "/val.bin", build(6, 2), 6);
  return dir;
}

// The lines of a run's metrics.jsonl.
inline std::vector<nlohmann::json> read_metrics(const std::string& run_dir) {
  std::istringstream in(read_file(run_dir + "/metrics.jsonl"));
  std::vector<nlohmann::json> out;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}

// A small LaCT model (one layer, width 16, chunk 8, window 8, seq_len 16) that trains a step in milliseconds.
inline model::ModelConfig small_lact_config() {
  model::ModelConfig cfg = model::preset("tiny");
  cfg.dim = 16;
  cfg.n_layers = 1;
  cfg.n_attn_heads = 2;
  cfg.n_mem_heads = 2;
  cfg.chunk = 8;
  cfg.window = 8;
  cfg.seq_len = 16;
  cfg.mlp_hidden = 32;
  return cfg;
}

// A small TNT model (one layer, width 16, global chunk 16, locals 8 and 4, shard 16) for stage-2 runs.
inline model::ModelConfig small_tnt_config() {
  model::ModelConfig cfg = model::preset("tnt");
  cfg.dim = 16;
  cfg.n_layers = 1;
  cfg.n_attn_heads = 2;
  cfg.n_mem_heads = 2;
  cfg.window = 8;
  cfg.global_chunk = 16;
  cfg.local_chunks = {8, 4};
  cfg.shard = 16;
  cfg.mlp_hidden = 32;
  return cfg;
}

// A run directory with a complete checkpoint of `cfg` at step 0: weights initialized with `seed`, zero AdamW
// moments, the run's data directory `data_dir`.
inline void write_initial_checkpoint(const std::string& run_dir, const model::ModelConfig& cfg,
                                     const std::string& data_dir, uint64_t seed = 1) {
  model::Params<float> p = model::make_params<float>(cfg);
  model::init_params(cfg, p, seed);
  std::vector<int64_t> sizes;
  for (auto& m : p.values) sizes.push_back(m.size());
  train::RunState st;
  st.train.seq_len = cfg.seq_len;
  st.train.data_dir = data_dir;
  train::save_run_checkpoint(run_dir, cfg, p, train::AdamW(p.names, sizes, train::AdamWConfig{}), st, 1);
}

// Random micro-batches of `sequences` windows; the second one has some ignored (negative) targets, so the
// micro-batches' token weights differ.
inline std::vector<model::Batch> random_micro_batches(const model::ModelConfig& cfg, int64_t count, int64_t sequences,
                                                      uint64_t seed) {
  Rng r(seed);
  std::vector<model::Batch> out;
  for (int64_t m = 0; m < count; ++m) {
    model::Batch b;
    b.sequences = sequences;
    b.len = cfg.seq_len;
    for (int64_t i = 0; i < sequences * cfg.seq_len; ++i) {
      b.inputs.push_back(int32_t(r.below(uint64_t(cfg.vocab_size))));
      b.targets.push_back(m == 1 && r.below(3) == 0 ? -1 : int32_t(r.below(uint64_t(cfg.vocab_size))));
    }
    out.push_back(std::move(b));
  }
  return out;
}

// Why the mpirun tests cannot run here, or "".
inline std::string mpirun_missing() {
  if (!dist::mpi_built()) return "this build has no MPI (install libopenmpi-dev and configure again)";
  if (std::system("command -v mpirun > /dev/null 2>&1") != 0) return "mpirun is not on PATH (install openmpi-bin)";
  return "";
}

}  // namespace ttt::test_util
