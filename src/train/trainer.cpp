#include "train/trainer.h"

#include <chrono>
#include <csignal>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <exception>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <unistd.h>

#include <omp.h>

#include "backend/registry.h"
#include "core/error.h"
#include "core/file_io.h"
#include "core/progress.h"
#include "data/prepare.h"
#include "data/progress.h"
#include "data/tokens.h"
#include "dist/communicator.h"
#include "train/checkpoint.h"
#include "train/evaluate.h"
#include "train/memory_budget.h"
#include "train/optimizer.h"
#include "train/schedule.h"

namespace ttt::train {

using json = nlohmann::json;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

constexpr uint64_t kDataSeedMix = 0xda7a5eed0b5e55edull;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

void say(std::ostream* log, const std::string& s) {
  if (!log) return;
  *log << s << '\n';
  log->flush();
}

// Keeps the metrics lines of steps <= `step` (a resumed run redoes the later ones).
void truncate_metrics(const std::string& path, int64_t step) {
  if (!file_exists(path)) return;
  std::istringstream in(read_file(path));
  std::string line, kept;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception&) {
      break;  // a torn last line from a killed process
    }
    if (!j.is_object() || !j.contains("step") || !j["step"].is_number_integer()) break;
    if (j["step"].get<int64_t>() > step) break;
    kept += line + "\n";
  }
  write_file_atomic(path, kept);
}

// `dir` as an absolute, normalized path without a trailing separator: what a run records, so that it can be
// continued from any working directory.
std::string absolute_dir(const std::string& dir) {
  fs::path p = fs::absolute(dir).lexically_normal();
  if (!p.has_filename() && p.has_parent_path() && p != p.root_path()) p = p.parent_path();
  return p.string();
}

json run_config_json(const model::ModelConfig& cfg, const TrainConfig& tc) {
  return json{{"model", model::config_to_json(cfg)},
              {"train", train_config_to_json(tc)},
              {"parameter_count", model::parameter_count(cfg)}};
}

}  // namespace

Corpus load_corpus(const std::string& dir, int64_t min_window, int64_t vocab_size) {
  std::error_code ec;
  TTT_CHECK(fs::is_directory(dir, ec), "data directory '" << dir << "' does not exist (prepare one with `ttt prepare --input TEXT --out "
                                                          << dir << "`; the default corpus comes from scripts/setup.sh)");
  Corpus c;
  c.train = data::open_split(dir, "train");
  c.val = data::open_split(dir, "val");
  TTT_CHECK(c.train.vocab() == c.val.vocab() && c.train.separator() == c.val.separator(),
            "data directory '" << dir << "': the train split has vocabulary " << c.train.vocab() << " and separator "
                               << c.train.separator() << " but the val split has " << c.val.vocab() << " and "
                               << c.val.separator());
  TTT_CHECK(int64_t(c.train.vocab()) <= vocab_size, "the corpus vocabulary (" << c.train.vocab()
                                                     << ") is larger than the model's vocab_size (" << vocab_size << ")");
  for (const auto& [split, name] : {std::pair{&c.train, "training"}, std::pair{&c.val, "validation"}})
    TTT_CHECK(split->size() >= min_window, "data directory '" << dir << "': the " << name << " split holds " << split->size()
                                                              << " tokens, fewer than one " << name << " window of "
                                                              << min_window << " (seq_len + 1); use a shorter --seq-len or more data");
  c.vocab = c.train.vocab();
  c.fingerprint = c.train.fingerprint();
  c.fingerprint.update(c.val.fingerprint());
  const data::DatasetInfo info = data::read_dataset_info(dir, c.vocab, c.train.separator());
  c.token_bytes = info.token_bytes;
  c.unigram_entropy_bits = info.unigram_entropy_bits >= 0 ? info.unigram_entropy_bits : data::unigram_entropy_bits(c.train);
  if (!c.token_bytes.empty()) {
    const uint64_t text_bytes = info.train_text_bytes >= 0 ? uint64_t(info.train_text_bytes)
                                                           : data::covered_bytes(c.train, c.token_bytes, 0, c.train.size());
    if (text_bytes > 0)
      c.unigram_entropy_bits_per_byte = c.unigram_entropy_bits * double(c.train.size()) / double(text_bytes);
  }
  return c;
}

model::Batch sample_batch(const data::TokenSplit& tokens, int64_t sequences, int64_t len, Rng& rng, bool cross_documents) {
  const int64_t n = tokens.size();
  TTT_CHECK(n >= len + 1, "token stream of " << n << " tokens is shorter than one window of " << len + 1);
  model::Batch b;
  b.sequences = sequences;
  b.len = len;
  b.inputs.resize(size_t(sequences * len));
  b.targets.resize(size_t(sequences * len));
  std::vector<int32_t> window(size_t(len + 1));
  const int32_t separator = tokens.separator();
  for (int64_t s = 0; s < sequences; ++s) {
    const int64_t o = int64_t(rng.below(uint64_t(n - len)));  // window [o, o + len] inclusive
    tokens.read(o, len + 1, window.data());
    std::copy(window.begin(), window.begin() + len, b.inputs.begin() + s * len);
    std::copy(window.begin() + 1, window.end(), b.targets.begin() + s * len);
    if (cross_documents) continue;
    for (int64_t i = 1; i < len; ++i)
      if (window[size_t(i)] == separator) {
        std::fill(b.targets.begin() + s * len + i, b.targets.begin() + (s + 1) * len, -1);
        break;
      }
  }
  return b;
}

int64_t valid_targets(const model::Batch& b) {
  int64_t valid = 0;
  for (int32_t t : b.targets) valid += t >= 0;
  return valid;
}

std::vector<double> target_shares(const std::vector<int64_t>& valid) {
  int64_t total = 0;
  for (int64_t v : valid) total += v;
  TTT_CHECK(total > 0, "the batch has no valid targets (every target is negative)");
  std::vector<double> shares;
  for (int64_t v : valid) shares.push_back(double(v) / double(total));
  return shares;
}

namespace {

// The post-order of the pairwise tree over leaves [lo, hi) (see accumulate_gradient_range): a leaf index, or -1 for
// "add the top of the stack into the entry below it".
void tree_program(int64_t lo, int64_t hi, std::vector<int64_t>& ops) {
  if (hi - lo == 1) {
    ops.push_back(lo);
    return;
  }
  const int64_t mid = lo + (hi - lo) / 2;
  tree_program(lo, mid, ops);
  tree_program(mid, hi, ops);
  ops.push_back(-1);
}

}  // namespace

int64_t step_sequences(const std::vector<model::Batch>& micro) {
  int64_t n = 0;
  for (const auto& mb : micro) {
    TTT_CHECK(mb.sequences > 0 && mb.len > 0 && int64_t(mb.inputs.size()) == mb.sequences * mb.len &&
                  int64_t(mb.targets.size()) == mb.sequences * mb.len,
              "accumulate_gradients: malformed micro-batch");
    n += mb.sequences;
  }
  return n;
}

template <class T>
std::vector<double> accumulate_gradient_range(const model::ModelConfig& cfg, const model::Params<T>& params,
                                              const std::vector<model::Batch>& micro, int64_t first, int64_t last,
                                              std::vector<ag::Mat<T>>& grads, const model::ContextSpan* cp) {
  TTT_CHECK(!micro.empty(), "accumulate_gradients: no micro-batches");
  const int64_t n_all = step_sequences(micro);
  TTT_CHECK(0 <= first && first < last && last <= n_all,
            "accumulate_gradients: sequences [" << first << ", " << last << ") of a step of " << n_all);
  if (cp && cp->ranks == 1) cp = nullptr;
  // Every sequence of the step, its share of the step's valid targets, and the batches of [first, last) (context
  // parallel: their spans on this rank, and the share of each span's valid targets).
  std::vector<int64_t> valid_counts, span_valid;
  std::vector<model::Batch> shards;
  for (const auto& mb : micro)
    for (int64_t s = 0; s < mb.sequences; ++s) {
      int64_t valid = 0;
      for (int64_t i = s * mb.len; i < (s + 1) * mb.len; ++i) valid += mb.targets[size_t(i)] >= 0;
      const int64_t k = int64_t(valid_counts.size());
      valid_counts.push_back(valid);
      if (k < first || k >= last) continue;
      const int64_t begin = s * mb.len + (cp ? cp->offset() : 0), len = cp ? cp->span : mb.len;
      TTT_CHECK(!cp || mb.len == cp->span * cp->ranks,
                "context parallel: sequences of " << mb.len << " tokens, spans of " << cp->span << " on " << cp->ranks
                                                  << " ranks");
      model::Batch sh;
      sh.sequences = 1;
      sh.len = len;
      sh.inputs.assign(mb.inputs.begin() + begin, mb.inputs.begin() + begin + len);
      sh.targets.assign(mb.targets.begin() + begin, mb.targets.begin() + begin + len);
      span_valid.push_back(valid_targets(sh));
      shards.push_back(std::move(sh));
    }
  const std::vector<double> shares = target_shares(valid_counts);
  int64_t total_valid = 0;
  for (int64_t v : valid_counts) total_valid += v;

  // Leaves are computed in waves in parallel (one thread per sequence; the model runs single-threaded inside), and
  // consumed in order by the tree: the result does not depend on the thread count or on timing. Context parallel:
  // one sequence after the other (every forward exchanges rows with the group, in the same order on every rank), the
  // share applied as the backward's seed (model::forward).
  const int64_t n = last - first;
  const int64_t param_bytes = std::max<int64_t>(1, params.count() * int64_t(sizeof(T)));
  const int64_t wave = std::max<int64_t>(omp_get_max_threads(), std::min<int64_t>(n, (int64_t(256) << 20) / param_bytes));
  std::vector<std::vector<ag::Mat<T>>> leaves(size_t(std::min(wave, n)));
  std::vector<double> terms(size_t(n), 0.0);
  int64_t wave_begin = first, wave_end = first;
  auto compute_wave = [&](int64_t w0) {
    const int64_t w1 = std::min(last, w0 + wave);
    std::exception_ptr err;
#pragma omp parallel for schedule(dynamic, 1) if (cp == nullptr)
    for (int64_t k = w0; k < w1; ++k) {
      if (valid_counts[size_t(k)] == 0) continue;  // the same on every rank of a context-parallel group
      try {
        const model::Batch& b = shards[size_t(k - first)];
        if (cp) {
          model::ContextSpan span = *cp;
          span.loss_weight = double(span_valid[size_t(k - first)]) / double(total_valid);
          const double loss = model::forward<T>(cfg, params, b, &leaves[size_t(k - w0)], false, false, &span).loss;
          terms[size_t(k - first)] = span.loss_weight * loss;
        } else {
          const double loss = model::forward<T>(cfg, params, b, &leaves[size_t(k - w0)]).loss;
          terms[size_t(k - first)] = shares[size_t(k)] * loss;
        }
      } catch (...) {
#pragma omp critical(ttt_train_error)
        if (!err) err = std::current_exception();
      }
    }
    if (err) std::rethrow_exception(err);
    wave_begin = w0;
    wave_end = w1;
  };
  std::vector<int64_t> program;
  tree_program(first, last, program);
  std::vector<std::vector<ag::Mat<T>>> stack;
  for (int64_t op : program) {
    if (op >= 0) {
      if (op >= wave_end) compute_wave(op);
      std::vector<ag::Mat<T>> leaf = std::move(leaves[size_t(op - wave_begin)]);
      if (valid_counts[size_t(op)] == 0) {  // no valid target: a zero leaf
        leaf.clear();
        for (const auto& p : params.values) leaf.emplace_back(p.rows, p.cols);
      } else if (!cp) {
        const T w = T(shares[size_t(op)]);
        for (auto& m : leaf)
          for (auto& x : m.data) x = w * x;
      }
      stack.push_back(std::move(leaf));
    } else {
      std::vector<ag::Mat<T>> right = std::move(stack.back());
      stack.pop_back();
      auto& left = stack.back();
      for (size_t i = 0; i < left.size(); ++i) {
        T* a = left[i].data.data();
        const T* b = right[i].data.data();
        for (size_t j = 0; j < left[i].data.size(); ++j) a[j] = a[j] + b[j];
      }
    }
  }
  grads = std::move(stack.back());
  return terms;
}

double sum_loss_terms(const std::vector<double>& terms) {
  double loss = 0;
  for (double t : terms) loss += t;
  return loss;
}

template <class T>
double accumulate_gradients(const model::ModelConfig& cfg, const model::Params<T>& params,
                            const std::vector<model::Batch>& micro, std::vector<ag::Mat<T>>& grads) {
  TTT_CHECK(!micro.empty(), "accumulate_gradients: no micro-batches");
  return sum_loss_terms(accumulate_gradient_range(cfg, params, micro, 0, step_sequences(micro), grads, nullptr));
}

template <class T>
std::vector<double> grad_sum_squares(const std::vector<ag::Mat<T>>& grads, size_t first, size_t last) {
  std::vector<double> ss;
  for (size_t i = first; i < last; ++i) {
    double s = 0;
    for (T x : grads[i].data) s += double(x) * double(x);
    ss.push_back(s);
  }
  return ss;
}

double global_norm(const std::vector<double>& sum_squares) {
  double ss = 0;
  for (double s : sum_squares) ss += s;
  return std::sqrt(ss);
}

template <class T>
void clip_to_norm(std::vector<ag::Mat<T>>& grads, size_t first, size_t last, double norm, double max_norm) {
  if (!(max_norm > 0 && norm > max_norm && std::isfinite(norm))) return;
  const T scale = T(max_norm / norm);
  for (size_t i = first; i < last; ++i)
    for (auto& x : grads[i].data) x *= scale;
}

template <class T>
double clip_grad_norm(std::vector<ag::Mat<T>>& grads, double max_norm) {
  // Per-tensor sums of squares, then their sum in tensor order: the order a sharded optimizer reproduces.
  const double norm = global_norm(grad_sum_squares(grads, 0, grads.size()));
  clip_to_norm(grads, 0, grads.size(), norm, max_norm);
  return norm;
}

template double accumulate_gradients<float>(const model::ModelConfig&, const model::Params<float>&,
                                            const std::vector<model::Batch>&, std::vector<ag::Mat<float>>&);
template double accumulate_gradients<double>(const model::ModelConfig&, const model::Params<double>&,
                                             const std::vector<model::Batch>&, std::vector<ag::Mat<double>>&);
template std::vector<double> accumulate_gradient_range<float>(const model::ModelConfig&, const model::Params<float>&,
                                                             const std::vector<model::Batch>&, int64_t, int64_t,
                                                             std::vector<ag::Mat<float>>&, const model::ContextSpan*);
template std::vector<double> accumulate_gradient_range<double>(const model::ModelConfig&, const model::Params<double>&,
                                                              const std::vector<model::Batch>&, int64_t, int64_t,
                                                              std::vector<ag::Mat<double>>&, const model::ContextSpan*);
template std::vector<double> grad_sum_squares<float>(const std::vector<ag::Mat<float>>&, size_t, size_t);
template void clip_to_norm<float>(std::vector<ag::Mat<float>>&, size_t, size_t, double, double);
template double clip_grad_norm<float>(std::vector<ag::Mat<float>>&, double);
template double clip_grad_norm<double>(std::vector<ag::Mat<double>>&, double);

std::string default_run_dir(const std::string& preset) {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y%m%d-%H%M%S", &tm);
  const std::string base = "runs/" + (preset.empty() ? std::string("run") : preset) + "-" + buf;
  // Two runs started in the same second get distinct directories.
  std::string dir = base;
  for (int i = 2; fs::exists(dir); ++i) dir = base + "-" + std::to_string(i);
  return dir;
}

double LossSpikeDetector::observe(double loss) {
  const double ratio = seen_ >= kWarmupSteps && average_ > 0 && loss > kFactor * average_ ? loss / average_ : 0.0;
  average_ = seen_ == 0 ? loss : kDecay * average_ + (1 - kDecay) * loss;
  ++seen_;
  return ratio;
}

std::vector<std::vector<uint8_t>> trainable_mask(const model::ModelConfig& cfg, const model::Params<float>& p,
                                                 int64_t stage) {
  std::vector<std::vector<uint8_t>> mask;
  if (stage == 1) return mask;
  TTT_CHECK(cfg.arch == model::Arch::Tnt,
            "stage 2 trains the local memories of a TNT model; arch is \"" << cfg.arch << "\"");
  const int64_t H = cfg.n_mem_heads, first_local = cfg.use_global ? 1 : 0, M = cfg.n_memories();
  for (size_t i = 0; i < p.names.size(); ++i) {
    const std::string& n = p.names[i];
    const ag::Mat<float>& v = p.values[i];
    std::vector<uint8_t> m(v.data.size(), 0);
    auto ends = [&](const std::string& suf) { return n.size() >= suf.size() && n.compare(n.size() - suf.size(), suf.size(), suf) == 0; };
    if (n.find(".ttt.local.") != std::string::npos) {
      std::fill(m.begin(), m.end(), 1);
    } else if (ends("ttt.lr.weight") || ends("ttt.momentum.weight") || ends("ttt.decay.weight") ||
               ends("ttt.lr.bias") || ends("ttt.momentum.bias") || ends("ttt.decay.bias")) {
      TTT_CHECK(v.cols == M * H, "stage 2: gate projection '" << n << "' has " << v.cols << " columns, expected "
                                                              << M * H);
      for (int64_t r = 0; r < v.rows; ++r)
        for (int64_t c = first_local * H; c < M * H; ++c) m[size_t(r * v.cols + c)] = 1;
    }
    mask.push_back(std::move(m));
  }
  return mask;
}

TrainResult train(const TrainOptions& opt_in) {
  const auto t_start = Clock::now();
  // One process, or the ranks of a data-parallel job: only rank 0 logs and writes the run directory.
  dist::Communicator* ranks = opt_in.ranks && opt_in.ranks->size() > 1 ? opt_in.ranks : nullptr;
  const bool writer = !ranks || ranks->rank() == 0;
  TrainOptions opt = opt_in;
  if (!writer) opt.log = nullptr;
  TrainResult res;
  model::ModelConfig cfg;
  TrainConfig tc;
  model::Params<float> params;
  RunState state;
  std::string run_dir;
  const bool resuming = !opt.resume.empty();
  LoadedCheckpoint ck;
  if (resuming) {
    ck = load_checkpoint(opt.resume, /*require_state=*/true);
    cfg = ck.cfg;
    state = ck.state;
    tc = state.train;
    if (opt.steps_override > 0) {
      TTT_CHECK(opt.steps_override >= state.step, "--steps " << opt.steps_override << " is below the checkpoint's step "
                                                             << state.step);
      tc.steps = opt.steps_override;
    }
    if (opt.keep_checkpoints_override > 0) tc.keep_checkpoints = opt.keep_checkpoints_override;
    if (!opt.data_dir_override.empty()) {
      TTT_CHECK(!state.data_fingerprint.is_null(),
                "checkpoint '" << ck.dir << "' records no dataset fingerprint (an earlier version of ttt wrote it), so "
                               << "--data cannot be checked against the run's dataset; resume without --data, from the "
                               << "directory the run was started in");
      tc.data_dir = opt.data_dir_override;
    } else {
      std::error_code ec;
      TTT_CHECK(fs::is_directory(tc.data_dir, ec), "the run's data directory '" << tc.data_dir << "' does not exist; "
                                                   << "give --data DIR with the run's dataset");
    }
    params = std::move(ck.params);
    run_dir = ck.run_dir;
  } else if (!opt.stage2_from.empty()) {
    // TNT stage 2: the stage-1 weights with smaller local chunks; only the local memories train.
    LoadedCheckpoint s1 = load_checkpoint(opt.stage2_from, /*require_state=*/true);
    cfg = s1.cfg;
    TTT_CHECK(cfg.arch == model::Arch::Tnt, "stage 2 needs a TNT stage-1 run; '" << opt.stage2_from << "' is arch \""
                                                                        << cfg.arch << "\"");
    TTT_CHECK(opt.stage2_local_chunks.size() == cfg.local_chunks.size(),
              "stage 2: --local-chunks gives " << opt.stage2_local_chunks.size() << " chunk sizes, the stage-1 model has "
                                               << cfg.local_chunks.size() << " local memories");
    cfg.local_chunks = opt.stage2_local_chunks;
    model::validate(cfg);
    tc = opt.train;
    tc.stage = 2;
    tc.stage1_run = absolute_dir(opt.stage2_from);
    tc.seq_len = cfg.seq_len;
    if (tc.data_dir.empty()) tc.data_dir = s1.state.train.data_dir;
    if (tc.steps <= 0) {
      TTT_CHECK(opt.stage2_fraction > 0 && opt.stage2_fraction <= 1,
                "stage 2: the budget fraction must be in (0, 1], got " << opt.stage2_fraction);
      tc.steps = std::max<int64_t>(1, std::llround(opt.stage2_fraction * double(s1.state.train.steps)));
    }
    params = std::move(s1.params);
    TTT_CHECK(!opt.out_dir.empty(), "train: no run directory given");
    run_dir = opt.out_dir;
  } else {
    cfg = opt.model;
    tc = opt.train;
    cfg.seq_len = tc.seq_len;
    model::validate(cfg);
    TTT_CHECK(!opt.out_dir.empty(), "train: no run directory given");
    run_dir = opt.out_dir;
  }
  TTT_CHECK(resuming || opt.data_dir_override.empty(), "train: data_dir_override applies to a resumed run");
  tc.device = opt.device;  // a resumed run may continue on another device
  validate(tc);
  // Context parallelism first: whether the model splits over the ranks at all.
  model::check_context_parallel(cfg, opt.context_parallel, ranks ? ranks->size() : 1);
  // The data-parallel groups (ranks / context_parallel) share the step's sequences.
  const int dp_groups = ranks ? ranks->size() / opt.context_parallel : 1;
  if (ranks)
    TTT_CHECK(tc.batch * tc.accum % dp_groups == 0,
              "--batch " << tc.batch << " x --accum " << tc.accum << " = " << tc.batch * tc.accum
                         << " sequences per step cannot be split evenly over " << dp_groups
                         << (opt.context_parallel > 1 ? " data-parallel groups (mpirun -np " : " ranks (mpirun -np ")
                         << ranks->size()
                         << (opt.context_parallel > 1 ? " / --context-parallel " + std::to_string(opt.context_parallel) : "")
                         << "): choose --batch and --accum so that their product is a multiple of " << dp_groups
                         << (resuming ? " (a resumed run keeps its batch: resume on a rank count that divides it)" : ""));
  TTT_CHECK(cfg.seq_len == tc.seq_len, "train: model seq_len " << cfg.seq_len << " differs from train seq_len " << tc.seq_len);
  const std::string metrics_path = (fs::path(run_dir) / "metrics.jsonl").string();

  // The device of this rank (cuda: its GPU on the node) before anything is measured or allocated on it.
  if (ranks) backend::select_device_of_rank(opt.device, ranks->local_rank(), ranks->rank());

  // Memory next: a config or flags that cannot fit fail here, naming the fields, before anything large is allocated.
  if (opt.context_parallel > 1) opt.cp_global = model::resolve_cp_global(opt.cp_global, cfg);
  {
    MemoryRequest mr;
    mr.device = opt.device;
    mr.bf16 = opt.engine.precision == backend::Precision::BF16;
    mr.bf16_activations = opt.engine.bf16_activations();
    mr.recompute = opt.engine.recompute;
    mr.threads = omp_get_max_threads();
    mr.train_steps = true;
    mr.batch = tc.batch;
    mr.accum = tc.accum;
    mr.seq_len = tc.seq_len;
    mr.context_parallel = opt.context_parallel;
    mr.cp_pass_state = opt.cp_global == model::CpGlobal::State;
    mr.eval_windows = double(tc.eval_batches) * double(tc.batch);
    mr.eval_context = tc.seq_len;
    mr.eval_batch = tc.batch;
    mr.eval_flags = "--eval-batches " + std::to_string(tc.eval_batches) + " x --batch " + std::to_string(tc.batch);
    if (opt.device != "cpu") {
      require_memory("ttt train", estimate_memory(cfg, mr));
      // The host still maps the corpus and keeps copies of the weights and moments.
      MemoryRequest host = mr;
      host.device = "cpu";
      host.train_steps = false;
      host.eval_windows = 0;
      require_memory("ttt train", estimate_memory(cfg, host));
    } else {
      require_memory("ttt train", estimate_memory(cfg, mr));
    }
  }

  // Data first: a bad corpus should fail before anything is written.
  Corpus corpus = load_corpus(tc.data_dir, tc.seq_len + 1, cfg.vocab_size);
  if (resuming && !state.data_fingerprint.is_null())
    TTT_CHECK(corpus.fingerprint == state.data_fingerprint,
              "the dataset in '" << tc.data_dir << "' is not the one the run trained on: its fingerprint "
                                 << corpus.fingerprint.dump() << " differs from the run's " << state.data_fingerprint.dump()
                                 << (opt.data_dir_override.empty() ? "; restore it, or give --data DIR with the run's dataset"
                                                                   : "; give --data the run's dataset"));
  tc.data_dir = absolute_dir(tc.data_dir);

  // The device too, before anything is written.
  const std::unique_ptr<backend::StepEngine> engine = backend::make_step_engine(opt.device, cfg, opt.engine);

  if (ranks) {
    engine->set_gradient_buckets(opt.grad_bucket_bytes);
    engine->set_data_parallel(*ranks, opt.shard_optimizer);
  }
  if (opt.context_parallel > 1) engine->set_context_parallel(opt.context_parallel, opt.cp_global);

  Rng data_rng(tc.seed ^ kDataSeedMix);
  if (!resuming && !writer) {
    if (tc.stage == 1) {
      params = model::make_params<float>(cfg);
      model::init_params(cfg, params, tc.seed);
    }
    state = RunState{};
  } else if (resuming && !writer) {
    data_rng.load(state.data_rng);
  } else if (!resuming) {
    TTT_CHECK(!run_has_checkpoint(run_dir), "run directory '" << run_dir << "' already holds a checkpoint; continue it with --resume "
                                                              << run_dir << " or choose another --out");
    std::error_code ec;
    fs::create_directories(run_dir, ec);
    TTT_CHECK(!ec, "cannot create run directory '" << run_dir << "': " << ec.message());
    prepare_run_dir(run_dir);
    if (tc.stage == 1) {
      params = model::make_params<float>(cfg);
      model::init_params(cfg, params, tc.seed);
    }
    state = RunState{};
    write_file_atomic(metrics_path, "");
  } else {
    prepare_run_dir(run_dir);
    remove_old_checkpoints(run_dir, state.step, tc.keep_checkpoints);
    data_rng.load(state.data_rng);
    truncate_metrics(metrics_path, state.step);
  }
  state.train = tc;
  state.data_fingerprint = corpus.fingerprint;
  if (writer) write_file_atomic((fs::path(run_dir) / "config.json").string(), run_config_json(cfg, tc).dump(2) + "\n");

  AdamWConfig acfg;
  acfg.beta1 = tc.beta1;
  acfg.beta2 = tc.beta2;
  acfg.eps = tc.eps;
  acfg.weight_decay = tc.weight_decay;
  std::vector<int64_t> sizes;
  for (auto& m : params.values) sizes.push_back(m.size());
  AdamW adam(params.names, sizes, acfg);
  adam.set_trainable(trainable_mask(cfg, params, tc.stage));
  if (resuming) {
    load_optimizer(ck.dir, params, state, adam);
    TTT_CHECK(adam.steps() == state.step, "checkpoint '" << ck.dir << "': optimizer step " << adam.steps()
                                                         << " differs from the run step " << state.step);
  }
  LrSchedule sched{tc.lr, tc.min_lr_ratio, tc.warmup, tc.steps};
  EvalOptions eo;
  eo.batches = tc.eval_batches;
  eo.batch = tc.batch;
  eo.context = tc.seq_len;
  eo.token_bytes = corpus.token_bytes;
  // The engine trains `params` and `adam` (on the CPU in place; on a device, copied back by sync_host).
  engine->attach(params, &adam);
  auto diverged = [&](int64_t step, const char* what, double value) {
    TTT_FAIL("training diverged at step " << step << ": the " << what << " is non-finite (" << value
                                          << "); try a lower --lr (this run's is " << tc.lr << ")"
                                          << (tc.clip > 0 ? " or a smaller --clip" : ""));
  };
  auto checked_eval = [&]() {
    EvalResult ev = evaluate(*engine, corpus.val, eo, ranks);
    if (!std::isfinite(ev.loss)) diverged(state.step, "validation loss", ev.loss);
    return ev;
  };

  res.run_dir = run_dir;
  res.checkpoint_dir = resuming ? ck.dir : "";
  res.n_params = params.count();
  res.total_steps = tc.steps;
  res.unigram_entropy_bits = corpus.unigram_entropy_bits;
  res.unigram_entropy_bits_per_byte = corpus.unigram_entropy_bits_per_byte;
  res.model = cfg;
  {
    std::ostringstream os;
    os << (resuming ? "resuming " : "training ") << tc.preset << " (" << cfg.arch << ", dim " << cfg.dim << ", "
       << cfg.n_layers << " layers, seq_len " << cfg.seq_len << "): " << res.n_params << " parameters ("
       << format_count(double(res.n_params)) << ")\n"
       << "data " << tc.data_dir << ": " << format_count(double(corpus.train.size())) << " train / "
       << format_count(double(corpus.val.size())) << " val tokens (" << corpus.train.shard_count() << " + "
       << corpus.val.shard_count() << " shards, vocabulary " << corpus.vocab << ", separator " << corpus.train.separator()
       << (tc.cross_documents ? ", windows cross documents" : "") << "); " << tc.batch << " x " << tc.accum << " x " << tc.seq_len
       << " = " << tc.tokens_per_step() << " tokens/step, " << tc.steps << " steps, lr " << tc.lr << "\n"
       << "run directory " << run_dir;
    os << "\ndevice " << opt.device << ": " << engine->description();
    if (ranks && opt.context_parallel > 1)
      os << "\ncontext parallel over " << opt.context_parallel << " ranks x data parallel over " << dp_groups
         << " groups (" << ranks->backend() << "): spans of " << tc.seq_len / opt.context_parallel << " tokens, "
         << "global memory by " << (opt.cp_global == model::CpGlobal::State ? "state passing" : "all-gather") << ", "
         << tc.batch * tc.accum / dp_groups << " sequences per group and step"
         << (opt.shard_optimizer ? ", optimizer sharded (ZeRO-1)" : "");
    else if (ranks)
      os << "\ndata parallel over " << ranks->size() << " ranks (" << ranks->backend() << "): "
         << tc.batch * tc.accum / ranks->size() << " sequences per rank and step"
         << (opt.shard_optimizer ? ", optimizer sharded (ZeRO-1)" : "");
    if (resuming) os << "; continuing at step " << state.step;
    say(opt.log, os.str());
  }

  std::ofstream metrics;
  if (writer) {
    metrics.open(metrics_path, std::ios::app);
    TTT_CHECK(metrics.good(), "cannot open '" << metrics_path << "' for writing");
  }

  const auto t_loop = Clock::now();
  double train_seconds = 0;
  int64_t steps_run = 0, last_ckpt_step = resuming ? state.step : -1, last_eval_step = -1;
  LossSpikeDetector spikes;
  auto save = [&]() {
    // On a device: the weights and moments to the host, where save_run_checkpoint checks them; a sharded optimizer
    // gathers its moments on rank 0 (every rank takes part).
    engine->sync_host(true);
    if (writer) res.checkpoint_dir = save_run_checkpoint(run_dir, cfg, params, adam, state, tc.keep_checkpoints);
    // The other ranks wait for the save: one that exits first (a signal's stop, exit 128 + N) would make mpirun end
    // rank 0 in the middle of it.
    if (ranks) ranks->barrier();
    last_ckpt_step = state.step;
  };
  std::vector<model::Batch> micro(size_t(tc.accum));
  while (state.step < tc.steps) {
    if (opt.interrupt_after > 0 && steps_run >= opt.interrupt_after) {
      res.interrupted = true;
      break;
    }
    if (ranks && ranks->rank() == opt.fault_rank && state.step == opt.fault_step) {
      if (opt.fault == "exit") ::_exit(3);
      if (opt.fault == "term") ::raise(SIGTERM);  // as if the launcher signalled this rank only
      if (opt.fault == "hang")
        for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
    }
    const auto ts = Clock::now();
    const double lr = sched.at(state.step);
    for (auto& b : micro) b = sample_batch(corpus.train, tc.batch, tc.seq_len, data_rng, tc.cross_documents);
    const backend::StepResult step = engine->train_step(micro, lr, tc.clip);
    const double loss = step.loss, gnorm = step.grad_norm;
    if (!std::isfinite(loss)) diverged(state.step + 1, "training loss", loss);
    if (!std::isfinite(gnorm)) diverged(state.step + 1, "gradient norm", gnorm);
    ++state.step;
    ++steps_run;
    state.tokens_seen += tc.tokens_per_step();
    state.data_rng = data_rng.save();
    train_seconds += seconds_since(ts);
    res.last_loss = loss;
    const double loss_average = spikes.average();
    const double spike = spikes.observe(loss);
    // An interrupt: no validation, a checkpoint of this step, and out. The ranks agree on both stops (a signal
    // or the time budget on any rank), so that they all take the same steps.
    int64_t stop_signal = opt.stop_signal ? opt.stop_signal->load() : 0;
    const double elapsed = seconds_since(t_start);
    int64_t budget_over = opt.time_budget_s > 0 && elapsed >= opt.time_budget_s && state.step < tc.steps;
    if (ranks) {
      stop_signal = ranks->max_over_ranks(stop_signal);
      budget_over = ranks->max_over_ranks(budget_over);
    }
    const bool stopping = stop_signal != 0;
    const bool budget_hit = budget_over != 0;
    const bool last = state.step == tc.steps || budget_hit;
    const double tps = double(steps_run * tc.tokens_per_step()) / std::max(train_seconds, 1e-9);
    json line{{"step", state.step}, {"loss", loss},           {"lr", lr},
              {"grad_norm", gnorm}, {"tokens", state.tokens_seen}, {"elapsed_s", std::round(elapsed * 1000) / 1000},
              {"tokens_per_s", std::round(tps)}};
    // Several ranks: the step's communication that the computation did not hide (StepResult::comm_wait_ms).
    if (step.comm_wait_ms >= 0) line["comm_wait_ms"] = std::round(step.comm_wait_ms * 1000) / 1000;
    if (((tc.eval_every > 0 && state.step % tc.eval_every == 0) || last) && !stopping) {
      EvalResult ev = checked_eval();
      line["val_loss"] = ev.loss;
      line["val_ppl"] = ev.perplexity;
      line["val_bits_per_token"] = ev.bits_per_token;
      if (ev.has_bpb()) line["val_bpb"] = ev.bpb;
      res.val_loss = ev.loss;
      res.val_bpb = ev.bpb;
      last_eval_step = state.step;
      say(opt.log, "step " + std::to_string(state.step) + "/" + std::to_string(tc.steps) + " | " + eval_summary(ev));
    }
    if (writer) {
      metrics << line.dump() << '\n';
      metrics.flush();
      TTT_CHECK(metrics.good(), "cannot write '" << metrics_path << "' (is the disk full?)");
    }
    if (spike > 0 && ++res.loss_spikes == 1) {
      char buf[256];
      std::snprintf(buf, sizeof buf,
                    "warning: loss spike at step %lld: %.4f is %.1fx the running average %.4f (spikes are marked on the "
                    "progress lines; if they repeat, the run is diverging: lower --lr)",
                    (long long)state.step, loss, spike, loss_average);
      say(opt.log, buf);
    }
    if (state.step % tc.log_every == 0 || steps_run == 1 || last || spike > 0 || stopping) {
      const double loop_s = seconds_since(t_loop);
      const double per_step = loop_s / double(steps_run);
      double eta = double(tc.steps - state.step) * per_step;
      if (opt.time_budget_s > 0) eta = std::min(eta, std::max(0.0, opt.time_budget_s - elapsed));
      char buf[256];
      std::snprintf(buf, sizeof buf, "step %lld/%lld | loss %.4f | lr %.2e | gnorm %.2f | %s tok/s | %s elapsed | ETA %s",
                    (long long)state.step, (long long)tc.steps, loss, lr, gnorm, format_count(tps).c_str(), format_hms(elapsed).c_str(),
                    format_hms(eta).c_str());
      std::string progress = buf;
      if (step.comm_wait_ms >= 0) {
        std::snprintf(buf, sizeof buf, " | comm wait %.1f ms", step.comm_wait_ms);
        progress += buf;
      }
      if (spike > 0) {
        std::snprintf(buf, sizeof buf, " | LOSS SPIKE %.1fx avg", spike);
        progress += buf;
      }
      say(opt.log, progress);
    }
    state.elapsed_seconds += seconds_since(ts);
    if ((tc.ckpt_every > 0 && state.step % tc.ckpt_every == 0) || last || stopping) save();
    if (stopping) {
      res.stop_signal = int(stop_signal);
      break;
    }
    if (budget_hit) {
      res.stopped_by_budget = true;
      say(opt.log, "time budget of " + format_hms(opt.time_budget_s) + " reached at step " + std::to_string(state.step) +
                       "; continue with --resume " + run_dir);
      break;
    }
  }
  // A resumed run that was already complete still gets its final evaluation and checkpoint.
  const bool ended = !res.interrupted && res.stop_signal == 0;
  if (ended && last_ckpt_step != state.step) save();
  if (ended && last_eval_step != state.step) {
    EvalResult ev = checked_eval();
    res.val_loss = ev.loss;
    res.val_bpb = ev.bpb;
  }
  res.step = state.step;
  res.tokens_seen = state.tokens_seen;
  res.steps_this_run = steps_run;
  res.seconds = seconds_since(t_start);
  res.tokens_per_s = train_seconds > 0 ? double(steps_run * tc.tokens_per_step()) / train_seconds : 0;
  return res;
}

}  // namespace ttt::train
