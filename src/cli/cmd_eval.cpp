// ttt eval: a checkpoint's evaluations (docs/EVALUATION.md).
//   default        validation loss, bits per byte and loss per position bucket over fixed windows; JSON on stdout,
//                  the buckets as CSV
//   --full         the whole validation split with a sliding stride; JSON on stdout
//   --task mqar    multi-query associative recall, generated from --seed; a summary on stdout
//   --task niah    needle in a haystack over --depths x --lengths; a table on stdout, --heatmap PNG
// Every mode also writes its JSON to --json OUT.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <omp.h>

#include "backend/registry.h"
#include "backend/streamer.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/device_flags.h"
#include "cli/run_tokenizer.h"
#include "core/error.h"
#include "core/file_io.h"
#include "core/png.h"
#include "core/progress.h"
#include "data/prepare.h"
#include "data/tokens.h"
#include "train/checkpoint.h"
#include "train/evaluate.h"
#include "train/memory_budget.h"
#include "train/recall_tasks.h"

namespace ttt::cli {

namespace {

enum class Mode { Windows, Full, Mqar, Niah };

const char* mode_name(Mode m) {
  switch (m) {
    case Mode::Windows: return "the default evaluation";
    case Mode::Full: return "--full";
    case Mode::Mqar: return "--task mqar";
    case Mode::Niah: return "--task niah";
  }
  return "?";
}

// Flags of some modes only: given in another, they are refused rather than silently ignored.
struct ScopedFlag {
  const char* name;
  std::vector<Mode> modes;
};
const std::vector<ScopedFlag>& scoped_flags() {
  static const std::vector<ScopedFlag> flags = {
      {"batches", {Mode::Windows}},
      {"buckets", {Mode::Windows}},
      {"csv", {Mode::Windows}},
      {"batch", {Mode::Windows, Mode::Full}},
      {"precision", {Mode::Windows, Mode::Full}},
      {"activations", {Mode::Windows, Mode::Full}},
      {"stride", {Mode::Full}},
      {"context", {Mode::Windows, Mode::Full, Mode::Mqar}},
      {"data", {Mode::Windows, Mode::Full, Mode::Niah}},
      {"pairs", {Mode::Mqar}},
      {"key-len", {Mode::Mqar}},
      {"value-len", {Mode::Mqar}},
      {"examples", {Mode::Mqar, Mode::Niah}},
      {"seed", {Mode::Mqar, Mode::Niah}},
      {"depths", {Mode::Niah}},
      {"lengths", {Mode::Niah}},
      {"key-digits", {Mode::Niah}},
      {"heatmap", {Mode::Niah}},
  };
  return flags;
}

Mode mode_flags(const Args& a) {
  Mode mode = Mode::Windows;
  if (a.has("task")) {
    TTT_CHECK(!a.on("full"), "ttt eval: --full and --task are separate evaluations; give one");
    const std::string task = a.str("task");
    if (task == "mqar") mode = Mode::Mqar;
    else if (task == "niah") mode = Mode::Niah;
    else TTT_FAIL("ttt eval: --task must be mqar or niah, got '" << task << "'");
  } else if (a.on("full")) {
    mode = Mode::Full;
  }
  for (const ScopedFlag& f : scoped_flags()) {
    if (!a.has(f.name) || std::find(f.modes.begin(), f.modes.end(), mode) != f.modes.end()) continue;
    std::string where;
    for (Mode m : f.modes) where += (where.empty() ? "" : ", ") + std::string(mode_name(m));
    TTT_FAIL("ttt eval: --" << f.name << " applies to " << where << ", not to " << mode_name(mode));
  }
  return mode;
}

// Output files are written at the end: a directory that does not exist is refused before the evaluation runs.
void check_output_dirs(const Args& a) {
  for (const char* flag : {"json", "heatmap", "csv"}) {
    if (!a.has(flag)) continue;
    const std::filesystem::path dir = std::filesystem::path(a.str(flag)).parent_path();
    TTT_CHECK(dir.empty() || std::filesystem::is_directory(dir),
              "ttt eval: --" << flag << " " << a.str(flag) << ": the directory '" << dir.string() << "' does not exist");
  }
}

int64_t positive_flag(const Args& a, const std::string& name) {
  const int64_t v = a.i64(name);
  TTT_CHECK(v > 0, "ttt eval: --" << name << " must be > 0, got " << v);
  return v;
}

// The checkpoint and where its evaluation runs, shared by every mode.
struct EvalSetup {
  std::string device, ck_arg, data_dir;
  std::vector<std::string> val_files;  // the validation split's token files (data/loader.h)
  backend::EngineOptions engine_options;
  train::LoadedCheckpoint ck;
};

void require_eval_memory(EvalSetup& s, double windows, int64_t context, int64_t batch, const std::string& flags) {
  // Before loading and allocating: absurd --batch/--batches/--context or a model too large end here, named.
  train::MemoryRequest mr;
  mr.device = s.device;
  mr.bf16 = s.engine_options.precision == backend::Precision::BF16;
  mr.bf16_activations = s.engine_options.bf16_activations();
  mr.threads = omp_get_max_threads();
  mr.eval_windows = windows;
  mr.eval_context = context;
  mr.eval_batch = batch;
  mr.eval_flags = flags;
  train::require_memory("ttt eval", train::estimate_memory(s.ck.cfg, mr));
  if (s.device != "cpu") {
    train::MemoryRequest host;
    train::require_memory("ttt eval", train::estimate_memory(s.ck.cfg, host));
  }
}

// The validation split, memory-mapped and verified once, and what its dataset records (the byte table).
struct ValSplit {
  data::TokenSplit tokens;
  data::DatasetInfo info;
};
ValSplit load_val(EvalSetup& s) {
  ValSplit v;
  v.tokens = data::TokenSplit::open(s.val_files);
  TTT_CHECK(int64_t(v.tokens.vocab()) <= s.ck.cfg.vocab_size,
            "ttt eval: the validation split of '" << s.data_dir << "' has vocabulary " << v.tokens.vocab()
                                                  << ", larger than the model's " << s.ck.cfg.vocab_size);
  v.info = data::read_dataset_info(s.data_dir, v.tokens.vocab(), v.tokens.separator());
  return v;
}

nlohmann::json header_json(EvalSetup& s) {
  nlohmann::json j;
  j["checkpoint"] = s.ck.dir;
  if (s.ck.has_state) j["step"] = s.ck.state.step;
  j["trained_seq_len"] = s.ck.cfg.seq_len;
  j["device"] = s.device;
  return j;
}

void emit_json(const Args& a, const nlohmann::json& j) {
  if (a.has("json")) write_file_atomic(a.str("json"), j.dump(2) + "\n");
}

int eval_windows(const Args& a, EvalSetup& s) {
  train::EvalOptions eo;
  eo.batches = positive_flag(a, "batches");
  eo.batch = positive_flag(a, "batch");
  eo.buckets = positive_flag(a, "buckets");
  eo.context = a.has("context") ? positive_flag(a, "context") : s.ck.cfg.seq_len;
  require_eval_memory(s, double(eo.batches) * double(eo.batch), eo.context, eo.batch,
                      "--batches " + std::to_string(eo.batches) + " x --batch " + std::to_string(eo.batch));
  const ValSplit val = load_val(s);
  eo.token_bytes = val.info.token_bytes;
  const std::unique_ptr<backend::StepEngine> engine = backend::make_step_engine(s.device, s.ck.cfg, s.engine_options);
  engine->attach(s.ck.params, nullptr);
  const train::EvalResult r = train::evaluate(*engine, val.tokens, eo);
  TTT_CHECK(std::isfinite(r.loss), "ttt eval: the validation loss of checkpoint '" << s.ck.dir << "' is non-finite ("
                                       << r.loss << "): its weights overflow on this data");

  const std::string csv =
      a.has("csv") ? a.str("csv") : (std::filesystem::path(s.ck_arg) / "eval_buckets.csv").string();
  write_file_atomic(csv, train::buckets_csv(r));

  nlohmann::json j = header_json(s);
  j["data"] = s.data_dir;
  j["context"] = r.context;
  j["windows"] = r.windows;
  j["tokens"] = r.tokens;
  j["val_loss"] = r.loss;  // nats per token
  j["val_ppl"] = r.perplexity;
  j["val_bits_per_token"] = r.bits_per_token;
  if (r.has_bpb()) {
    j["val_bpb"] = r.bpb;  // bits per byte of the text the scored tokens cover
    j["bytes"] = r.bytes;
  } else {
    j["val_bpb_note"] = "no token byte table in the dataset's meta.json: bits per byte unknown";
  }
  // Unigram entropy of the training tokens, bits per token (meta.json of the data directory), for comparison.
  if (val.info.unigram_entropy_bits >= 0) j["unigram_entropy_bits"] = val.info.unigram_entropy_bits;
  nlohmann::json bs = nlohmann::json::array();
  for (const auto& b : r.buckets)
    bs.push_back({{"start", b.start}, {"end", b.end}, {"loss", b.loss}, {"bpb", b.bpb}, {"tokens", b.tokens}});
  j["buckets"] = bs;
  j["csv"] = csv;
  emit_json(a, j);
  std::cout << j.dump(2) << std::endl;
  return 0;
}

int eval_full(const Args& a, EvalSetup& s) {
  train::FullEvalOptions fo;
  fo.context = a.has("context") ? positive_flag(a, "context") : s.ck.cfg.seq_len;
  fo.stride = a.has("stride") ? positive_flag(a, "stride") : 0;  // 0: evaluate_full's default, context / 2
  fo.batch = positive_flag(a, "batch");
  TTT_CHECK(fo.stride <= fo.context, "ttt eval: --stride " << fo.stride << " exceeds the context " << fo.context
                                                           << " (tokens would go unscored); give 1 .. " << fo.context);
  const int64_t per_call = s.device == "cpu" ? train::cpu_windows_per_call(fo.batch) : fo.batch;
  require_eval_memory(s, double(per_call), fo.context, fo.batch, "--batch " + std::to_string(fo.batch));
  const ValSplit val = load_val(s);
  // Bits per byte needs the bytes each token covers: the dataset's byte table (data/loader.h), when it has one.
  fo.token_bytes = val.info.token_bytes;
  const std::unique_ptr<backend::StepEngine> engine = backend::make_step_engine(s.device, s.ck.cfg, s.engine_options);
  engine->attach(s.ck.params, nullptr);
  ProgressLine progress(std::cerr, "eval --full", "tokens");
  const train::FullEvalResult r = train::evaluate_full(
      *engine, val.tokens, fo, [&](int64_t done, int64_t total) { progress.update(done, total); });
  TTT_CHECK(std::isfinite(r.loss), "ttt eval --full: the loss of checkpoint '" << s.ck.dir << "' is non-finite ("
                                       << r.loss << "): its weights overflow on this data");
  nlohmann::json j = header_json(s);
  j["mode"] = "full";
  j["data"] = s.data_dir;
  j["context"] = r.context;
  j["stride"] = r.stride;
  j["windows"] = r.windows;
  j["tokens_scored"] = r.tokens;
  j["loss_per_token"] = r.loss;
  j["bits_per_token"] = r.bits_per_token;
  j["perplexity_per_token"] = r.perplexity;
  if (r.has_bpb()) {
    j["bytes_scored"] = r.bytes;
    j["bits_per_byte"] = r.bits_per_byte;
    j["bits_per_byte_note"] = "bits per byte of the text the scored tokens cover (the dataset's token byte table; "
                              "document separators count 0 bytes)";
  } else {
    j["bits_per_byte"] = nullptr;
    j["bits_per_byte_note"] = "not computed: the dataset records no token byte table";
  }
  emit_json(a, j);
  std::cout << j.dump(2) << std::endl;
  return 0;
}

// Recall tasks run through the device's streamer, one fresh streamer per example; on the CPU examples run side by
// side on the threads.
train::StreamerPredictor make_predictor(EvalSetup& s) {
  return train::StreamerPredictor([&s] { return backend::make_streamer(s.device, s.ck.cfg, s.ck.params); },
                                  /*concurrent=*/s.device == "cpu");
}

// Host memory of a recall task, checked before its examples are made: the model, the haystack text (NIAH: the
// validation split's tokens in memory) and the examples' tokens and scores, all held until the end.
void require_task_memory(const EvalSetup& s, double examples, double example_tokens, const std::string& drivers,
                         double haystack_tokens = 0) {
  train::MemoryRequest host;
  train::MemoryEstimate e = train::estimate_memory(s.ck.cfg, host);
  if (haystack_tokens > 0)
    e.resident.push_back({"the haystack text (the validation split)", s.data_dir,
                          haystack_tokens * double(sizeof(int32_t))});
  e.resident.push_back({"the examples' tokens and scores", drivers,
                        example_tokens * double(sizeof(int32_t)) +
                            examples * double(sizeof(train::RecallExample) + sizeof(train::RecallScore))});
  train::require_memory("ttt eval", e);
}

// The tokenizer of the recall tasks' text: the run's (cli/run_tokenizer.h), the one the model was trained with.
std::shared_ptr<const data::Tokenizer> task_tokenizer(const EvalSetup& s, const char* task) {
  return run_tokenizer(s.ck.run_dir, s.ck.has_state ? s.ck.state.train.data_dir : "", /*override_path=*/"",
                       s.ck.cfg.vocab_size, std::string("ttt eval --task ") + task);
}
train::Encode task_encoder(std::shared_ptr<const data::Tokenizer> tok) {
  return [tok](std::string_view text) { return tok->encode(text, /*parse_special=*/false); };
}

nlohmann::json score_json(const train::RecallScore& r) {
  return {{"accuracy", r.accuracy()},   {"token_accuracy", r.token_accuracy()}, {"answers", r.answers},
          {"answers_correct", r.answers_correct}, {"answer_tokens", r.tokens}, {"answer_tokens_correct", r.tokens_correct}};
}

int eval_mqar(const Args& a, EvalSetup& s) {
  train::MqarOptions mo;
  mo.pairs = a.i64("pairs");
  mo.context = a.has("context") ? a.i64("context") : s.ck.cfg.seq_len;
  mo.examples = a.has("examples") ? a.i64("examples") : mo.examples;
  mo.key_len = a.i64("key-len");
  mo.value_len = a.i64("value-len");
  mo.seed = uint64_t(a.i64("seed"));
  const std::shared_ptr<const data::Tokenizer> tok = task_tokenizer(s, "mqar");
  const train::Encode encode = task_encoder(tok);
  try {
    train::validate_mqar(mo, encode);
  } catch (const Error& e) {
    TTT_FAIL("ttt eval --task mqar: " << e.what());
  }
  require_task_memory(s, double(mo.examples), double(mo.examples) * double(mo.context),
                      "--examples " + std::to_string(mo.examples) + " x --context " + std::to_string(mo.context));
  const std::vector<train::RecallExample> examples = train::make_mqar(mo, encode);
  train::StreamerPredictor model = make_predictor(s);
  ProgressLine progress(std::cerr, "eval --task mqar", "examples");
  const train::RecallScore r = train::sum_scores(train::score_examples(
      model, examples, [&](size_t done, size_t total) { progress.update(int64_t(done), int64_t(total)); }));
  nlohmann::json j = header_json(s);
  j["mode"] = "mqar";
  j["pairs"] = mo.pairs;
  j["context"] = mo.context;
  j["examples"] = mo.examples;
  j["key_len"] = mo.key_len;
  j["value_len"] = mo.value_len;
  j["seed"] = mo.seed;
  j["result"] = score_json(r);
  // Chance is 1/10 per value token when every token is one digit (bytes); another tokenizer may merge digits.
  const bool digit_tokens = tok->kind() == "bytes";
  j["tokenizer"] = tok->kind();
  j["chance_token_accuracy"] = digit_tokens ? nlohmann::json(train::kMqarChanceTokenAccuracy) : nlohmann::json(nullptr);
  emit_json(a, j);
  std::printf("MQAR: %lld pairs, context %lld, %lld examples (seed %llu)\n", (long long)mo.pairs, (long long)mo.context,
              (long long)mo.examples, (unsigned long long)mo.seed);
  std::printf("value-token accuracy %.4f (%lld/%lld; %s)\n", r.token_accuracy(), (long long)r.tokens_correct,
              (long long)r.tokens,
              digit_tokens ? "chance 0.1 per digit"
                           : ("chance not computed: the " + tok->kind() + " tokenizer's value tokens may hold several digits").c_str());
  std::printf("query accuracy       %.4f (%lld/%lld whole values right)\n", r.accuracy(), (long long)r.answers_correct,
              (long long)r.answers);
  return 0;
}

int eval_niah(const Args& a, EvalSetup& s) {
  train::NiahOptions no;
  no.depths = a.f64_list("depths");
  no.lengths = a.has("lengths") ? a.i64_list("lengths")
                                : std::vector<int64_t>{s.ck.cfg.seq_len, 4 * s.ck.cfg.seq_len};
  no.examples = a.has("examples") ? a.i64("examples") : no.examples;
  no.key_digits = a.i64("key-digits");
  no.seed = uint64_t(a.i64("seed"));
  const std::shared_ptr<const data::Tokenizer> tok = task_tokenizer(s, "niah");
  const train::Encode encode = task_encoder(tok);
  const ValSplit val = load_val(s);
  TTT_CHECK(val.tokens.vocab() == tok->vocab_size() && val.tokens.separator() == tok->eot_id(),
            "ttt eval --task niah: the validation split of '"
                << s.data_dir << "' has vocabulary " << val.tokens.vocab() << " and separator " << val.tokens.separator()
                << "; the haystack must be in the needle's tokenizer (" << tok->kind() << ", vocabulary "
                << tok->vocab_size() << ", separator " << tok->eot_id() << ")");
  const std::vector<int32_t> haystack = train::haystack_text(val.tokens.to_vector(), val.tokens.separator());
  try {
    train::validate_niah(no, encode, int64_t(haystack.size()));
  } catch (const Error& e) {
    TTT_FAIL("ttt eval --task niah: " << e.what() << " (haystack: the validation split of '" << s.data_dir << "')");
  }
  double grid_tokens = 0;
  for (int64_t len : no.lengths) grid_tokens += double(len);
  const double n_examples = double(no.examples) * double(no.depths.size()) * double(no.lengths.size());
  require_task_memory(s, n_examples, grid_tokens * double(no.examples) * double(no.depths.size()),
                      "--examples " + std::to_string(no.examples) + " x " + std::to_string(no.depths.size()) +
                          " depths x --lengths (" + std::to_string(int64_t(grid_tokens)) + " tokens)",
                      double(haystack.size()));
  // Every example of the grid, cell by cell (depth-major), then scored together.
  std::vector<train::RecallExample> examples;
  for (double depth : no.depths)
    for (int64_t len : no.lengths)
      for (int64_t e = 0; e < no.examples; ++e)
        examples.push_back(train::make_niah_example(no, encode, haystack, depth, len, e));
  train::StreamerPredictor model = make_predictor(s);
  ProgressLine progress(std::cerr, "eval --task niah", "examples");
  const std::vector<train::RecallScore> scores = train::score_examples(
      model, examples, [&](size_t done, size_t total) { progress.update(int64_t(done), int64_t(total)); });
  std::vector<std::vector<train::RecallScore>> cells(no.depths.size(), std::vector<train::RecallScore>(no.lengths.size()));
  for (size_t k = 0; k < scores.size(); ++k) {
    const size_t cell = k / size_t(no.examples);
    cells[cell / no.lengths.size()][cell % no.lengths.size()].add(scores[k]);
  }

  nlohmann::json j = header_json(s);
  j["mode"] = "niah";
  j["data"] = s.data_dir;
  j["depths"] = no.depths;
  j["lengths"] = no.lengths;
  j["examples_per_cell"] = no.examples;
  j["key_digits"] = no.key_digits;
  j["seed"] = no.seed;
  nlohmann::json grid = nlohmann::json::array();
  std::vector<std::vector<double>> accuracy(no.depths.size());
  for (size_t i = 0; i < no.depths.size(); ++i)
    for (size_t k = 0; k < no.lengths.size(); ++k) {
      nlohmann::json c = score_json(cells[i][k]);
      c["depth"] = no.depths[i];
      c["length"] = no.lengths[k];
      grid.push_back(c);
      accuracy[i].push_back(cells[i][k].accuracy());
    }
  j["cells"] = grid;
  if (a.has("heatmap")) {
    const train::RgbImage img = train::accuracy_heatmap(accuracy);
    write_file_atomic(a.str("heatmap"), encode_png_rgb(img.width, img.height, img.pixels));
    j["heatmap"] = a.str("heatmap");
  }
  emit_json(a, j);
  std::cout << train::niah_table(no, cells);
  return 0;
}

}  // namespace

int cmd_eval(const Argv& argv) {
  Args a(argv, "eval");
  a.value("checkpoint", "run directory or its checkpoint/ subdirectory (required)")
      .value("data", "data directory whose val.bin is evaluated (default: the run's, else data/linux-doc)")
      .value("context", "tokens per window (default: the model's seq_len; may exceed it); --task mqar: tokens per example")
      .value("batches", "forward passes", "8")
      .value("batch", "windows per forward pass", "8")
      .value("buckets", "position buckets over the context", "8")
      .value("csv", "where to write the buckets (default: <checkpoint>/eval_buckets.csv)")
      .flag("full", "score the whole validation split once, with a sliding window (--context, --stride)")
      .value("stride", "--full: window step; each token keeps >= context - stride tokens of left context (default: context / 2)")
      .value("task", "a synthetic recall task: mqar | niah (docs/EVALUATION.md)")
      .value("pairs", "--task mqar: key-value pairs per example", "16")
      .value("key-len", "--task mqar: letters per key", "3")
      .value("value-len", "--task mqar: digits per value", "2")
      .value("examples", "--task mqar: examples (default 64); --task niah: examples per depth x length cell (default 4)")
      .value("seed", "--task mqar|niah: the examples' seed", "0")
      .value("depths", "--task niah: needle depths in [0, 1]", "0,0.25,0.5,0.75,1")
      .value("lengths", "--task niah: tokens per example (default: seq_len and 4 x seq_len)")
      .value("key-digits", "--task niah: digits of the key", "6")
      .value("heatmap", "--task niah: write the accuracy grid as a PNG heat map")
      .value("json", "also write the results as JSON to this file");
  declare_device_flag(a, "cuda: one NVIDIA GPU, every arch (lact, titans, tnt)");
  declare_precision_flags(a);
  a.parse();
  if (a.help_requested()) {
    std::fprintf(stdout, "%s", a.usage().c_str());
    return 0;
  }
  TTT_CHECK(a.has("checkpoint"), "ttt eval: --checkpoint DIR is required\n" << a.usage());
  const Mode mode = mode_flags(a);
  check_output_dirs(a);
  EvalSetup s;
  s.device = device_flag(a, "ttt eval");
  s.engine_options = engine_options_flags(a, "ttt eval", s.device);
  s.ck_arg = a.str("checkpoint");
  s.ck = train::load_checkpoint(s.ck_arg, /*require_state=*/false);
  if (mode != Mode::Mqar) {  // MQAR is generated; the others read the validation split
    s.data_dir = "data/linux-doc";
    if (a.has("data")) s.data_dir = a.str("data");
    else if (s.ck.has_state) s.data_dir = s.ck.state.train.data_dir;
    try {
      s.val_files = data::split_files(s.data_dir, "val");
    } catch (const Error& e) {
      TTT_FAIL("ttt eval: no validation tokens: " << e.what() << " (give --data DIR)");
    }
  }
  switch (mode) {
    case Mode::Windows: return eval_windows(a, s);
    case Mode::Full: return eval_full(a, s);
    case Mode::Mqar: return eval_mqar(a, s);
    case Mode::Niah: return eval_niah(a, s);
  }
  return 1;
}

}  // namespace ttt::cli
