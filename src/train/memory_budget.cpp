#include "train/memory_budget.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "backend/gpu_layer_activations.h"
#include "backend/registry.h"
#include "core/error.h"
#include "data/tokens.h"
#include "model/memory_spec.h"
#include "ttt/lact_fused.h"

namespace ttt::train {

namespace {

// Calibration of the activation terms (see the header comment).
constexpr double kTapeBytesPerDim = 4 * 70.0;     // per token and layer, times D
constexpr double kTapeBytesPerHidden = 4 * 11.0;  // per token and layer, times F (SwiGLU MLP hidden width)
constexpr double kTapeBytesPerVocab = 8.0;        // per token, times V (logits and their gradient)
constexpr double kTapeBytesPerToken = 2600.0;     // per token, the rest
constexpr double kForwardOnlyShare = 0.5;         // a forward without gradients keeps about half the tape
constexpr double kGpuLayerFloatsPerDim = 60.0;    // one layer's work buffers, floats per row, times D
constexpr double kRuntimeBytes = 128e6;           // BLAS buffers, program, libraries

std::string with_count(double n) {
  char buf[48];
  if (n >= 1e9) std::snprintf(buf, sizeof buf, "%.3gB", n / 1e9);
  else if (n >= 1e6) std::snprintf(buf, sizeof buf, "%.3gM", n / 1e6);
  else if (n >= 1e3) std::snprintf(buf, sizeof buf, "%.3gk", n / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", n);
  return buf;
}

double shape_elements(const Shape& s) {
  double n = 1;
  for (auto d : s) n *= double(d);
  return n;
}

// Parameters as a double (no overflow whatever the sizes): the layout of one layer times n_layers, plus the rest.
double parameter_elements(const model::ModelConfig& cfg) {
  model::ModelConfig one = cfg;
  one.n_layers = 1;
  double per_layer = 0, rest = 0;
  for (const auto& [name, shape] : model::parameter_shapes(one))
    (name.rfind("layers.", 0) == 0 ? per_layer : rest) += shape_elements(shape);
  return rest + double(cfg.n_layers) * per_layer;
}

// Fast-weight states kept at every chunk boundary (weights and momentum), per sequence: the CPU runner's versions.
double memory_versions_bytes(const model::ModelConfig& cfg, int64_t T) {
  const std::vector<model::MemorySpec> specs = model::memory_specs(cfg);
  if (specs.empty()) return 0;  // not a valid config (validate() says why)
  double per_head = 0;  // elements of one head's weights (every memory of a branch has the same)
  for (const auto& w : specs.front().weights) per_head += double(w.rows) * double(w.cols);
  double versions = 0;
  for (const auto& s : specs) versions += std::ceil(double(T) / double(std::max<int64_t>(s.chunk, 1))) + 1;
  return double(cfg.n_layers) * versions * double(cfg.n_mem_heads) * per_head * 4.0 * (cfg.momentum ? 2 : 1);
}

// The CPU tape of one sequence of T tokens (forward and backward).
double cpu_tape_bytes(const model::ModelConfig& cfg, int64_t T) {
  const double per_token = double(cfg.n_layers) * (kTapeBytesPerDim * double(cfg.dim) +
                                                   kTapeBytesPerHidden * double(cfg.mlp_hidden_dim())) +
                           kTapeBytesPerVocab * double(cfg.vocab_size) + kTapeBytesPerToken;
  return double(T) * per_token + memory_versions_bytes(cfg, T);
}

// The GPU model's buffers for `rows` = sequences x tokens.
double gpu_activation_bytes(const model::ModelConfig& cfg, double rows, bool bf16_activations) {
  const double residual = double(cfg.n_layers + 1) * rows * double(cfg.dim) * (bf16_activations ? 2 : 4);
  const double layer = rows * kGpuLayerFloatsPerDim * double(cfg.dim) * 4;
  const double logits = rows * double(cfg.vocab_size) * 4;
  return residual + layer + logits;
}

// --recompute none: the memory operator runners that keep `records` layers' forward state for `batch` sequences of
// T tokens, what they hold from a forward to its backward and their work space. LaCT (cuda/lact_cuda.cu): one
// runner with a record per layer, the buffers lact::Fused allocates for them (lact::workspace_elements, fp32) and a
// 32 MiB cuBLAS workspace; with bf16 operands also a bf16 shadow of each of those buffers and bf16 copies of q, k, v
// per record and of grad_o. Titans / TNT (cuda/tnt_cuda.cu): a runner per layer, each about the fast-weight states
// at every chunk boundary (memory_versions_bytes) and, per memory, chunk work buffers (about 12 dh + 2 d floats per
// token of a chunk) and five state-sized buffers.
double operator_runner_bytes(const model::ModelConfig& cfg, int64_t batch, int64_t T, bool bf16, int64_t records) {
  const std::vector<model::MemorySpec> specs = model::memory_specs(cfg);
  if (specs.empty() || batch <= 0 || T <= 0 || records <= 0) return 0;
  const double B = double(batch) * double(cfg.n_mem_heads), d = double(cfg.head_dim_mem()),
               dh = double(cfg.mem_hidden_dim());
  double per_head = 0;
  for (const auto& w : specs.front().weights) per_head += double(w.rows) * double(w.cols);
  double about = double(batch) * memory_versions_bytes(cfg, T) / double(std::max<int64_t>(1, cfg.n_layers));
  for (const auto& s : specs) {
    const double chunk = double(std::min<int64_t>(std::max<int64_t>(s.chunk, 1), T));
    about += 4.0 * B * (chunk * (12 * dh + 2 * d) + 5 * per_head);
  }
  // LaCT's own count, while its element counts stay far inside 64 bits (beyond, the run is absurd anyway).
  if (cfg.arch != model::Arch::Lact || double(records) * about > 1e15) return double(records) * about;
  const lact::Shape s = backend::gpu_lact_shape(cfg, batch, T);
  const double elements = double(lact::workspace_elements(s, /*with_grad=*/true, records));
  constexpr double kCublasWorkspace = double(32 << 20);
  double bytes = 4 * elements + kCublasWorkspace;
  if (backend::lact_on_bf16_operands(cfg, bf16))  // the shadows, and the copies of q, k, v (per record) and grad_o
    bytes += 2 * elements + double(3 * records + 1) * 2.0 * double(s.B) * double(T) * double(s.d);
  return bytes;
}

// TNT context parallelism on the GPU: the context buffers of cuda/model_buffers.h (TTT_GPU_CONTEXT_BUFFERS) on the
// last rank of a group, which holds the most, for `rows` = sequences x span tokens and `halo` = sequences x (window -
// 1): the attention's values over the halo and the span, the halo's rows in 7 work buffers sized for them (and its
// attention heads' log-sum-exp), the halo's send and receive buffers and each layer's received keys and values; for
// the global memory its packed inputs (3 rows (D + n_mem_heads) floats per span) sent and gathered over all cp spans,
// and its output over them.
double context_parallel_bytes(const model::ModelConfig& cfg, int64_t cp, double rows, double halo) {
  const double D = double(cfg.dim), floats_per_span = 3.0 * rows * (D + double(cfg.n_mem_heads));
  const double attention = (rows + halo) * D + 7.0 * halo * D + halo * double(cfg.n_attn_heads) + 4.0 * halo * D +
                           2.0 * double(cfg.n_layers) * halo * D;
  const double global = cfg.use_global ? 2.0 * double(cp) * floats_per_span + double(cp) * rows * D : 0.0;
  return (attention + global) * 4.0;
}
std::string context_parallel_drivers(const model::ModelConfig& cfg, int64_t cp, int64_t batch, const std::string& tokens) {
  return "--context-parallel " + std::to_string(cp) + ", window " + std::to_string(cfg.window) + ", batch " +
         std::to_string(batch) + " x " + tokens + ", dim " + std::to_string(cfg.dim) + (cfg.use_global ? ", use_global" : "");
}

std::string model_drivers(const model::ModelConfig& cfg, double P) {
  std::ostringstream os;
  os << "n_layers " << cfg.n_layers << ", dim " << cfg.dim << ", vocab_size " << cfg.vocab_size << " ("
     << with_count(P) << " parameters)";
  return os.str();
}

// Bytes from a "512M"/"8G"/"1.5T"/"123456" string (decimal units); < 0 when malformed.
double parse_size(const std::string& s) {
  if (s.empty()) return -1;
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(s.c_str(), &end);
  if (errno != 0 || end == s.c_str() || !std::isfinite(v) || v < 0) return -1;
  const std::string unit(end);
  double mult = 1;
  if (unit.empty() || unit == "B") mult = 1;
  else if (unit == "K" || unit == "KB") mult = 1e3;
  else if (unit == "M" || unit == "MB") mult = 1e6;
  else if (unit == "G" || unit == "GB") mult = 1e9;
  else if (unit == "T" || unit == "TB") mult = 1e12;
  else return -1;
  return v * mult;
}

// A number from a /proc or /sys file ("max" or a missing file: < 0).
double read_number_file(const std::string& path, const std::string& key = "") {
  std::ifstream in(path);
  if (!in.good()) return -1;
  std::string line;
  while (std::getline(in, line)) {
    if (!key.empty()) {
      if (line.rfind(key, 0) != 0) continue;
      line = line.substr(key.size());
    }
    std::istringstream is(line);
    double v = 0;
    std::string unit;
    if (!(is >> v)) return -1;
    is >> unit;
    return unit == "kB" ? v * 1024 : v;
  }
  return -1;
}

}  // namespace

double MemoryEstimate::peak() const {
  double total = 0;
  for (const auto& t : peak_terms()) total += t.bytes;
  return total;
}

std::vector<MemoryTerm> MemoryEstimate::peak_terms() const {
  std::vector<MemoryTerm> out = resident;
  const std::vector<MemoryTerm>* largest = nullptr;
  double largest_bytes = -1;
  for (const auto& ph : phases) {
    double b = 0;
    for (const auto& t : ph) b += t.bytes;
    if (b > largest_bytes) largest_bytes = b, largest = &ph;
  }
  if (largest) out.insert(out.end(), largest->begin(), largest->end());
  return out;
}

std::string format_bytes(double bytes) {
  char buf[48];
  if (!std::isfinite(bytes)) return "an unbounded amount";
  if (bytes >= 1e15) std::snprintf(buf, sizeof buf, "%.3g PB", bytes / 1e15);
  else if (bytes >= 1e12) std::snprintf(buf, sizeof buf, "%.2f TB", bytes / 1e12);
  else if (bytes >= 1e9) std::snprintf(buf, sizeof buf, "%.2f GB", bytes / 1e9);
  else if (bytes >= 1e6) std::snprintf(buf, sizeof buf, "%.1f MB", bytes / 1e6);
  else std::snprintf(buf, sizeof buf, "%.0f kB", bytes / 1e3);
  return buf;
}

namespace {

MemoryEstimate estimate_one_level(const model::ModelConfig& cfg, const MemoryRequest& req) {
  const bool gpu = req.device == "cuda";
  const double P = parameter_elements(cfg);
  MemoryEstimate e;
  e.device = req.device;
  // On the GPU the model state lives on the device; the host keeps a copy of the weights and moments for checkpoints.
  if (gpu) {
    e.resident.push_back({"parameters, gradients and AdamW moments (fp32)" + std::string(req.bf16 ? " and bf16 weight copies" : ""),
                          model_drivers(cfg, P), P * (req.train_steps ? 16.0 : 4.0) + (req.bf16 ? 2 * P : 0.0)});
  } else {
    e.resident.push_back({req.train_steps ? "parameters, gradients and AdamW moments" : "parameters", model_drivers(cfg, P),
                          P * (req.train_steps ? 16.0 : 4.0)});
    e.resident.push_back({"runtime (BLAS buffers, program)", "fixed", kRuntimeBytes});
  }
  const int64_t threads = std::max<int64_t>(1, req.threads);
  if (req.train_steps) {
    const int64_t seqs = req.batch * req.accum;
    std::ostringstream drivers;
    drivers << "batch " << req.batch << " x accum " << req.accum << " sequences of seq_len " << req.seq_len;
    std::vector<MemoryTerm> step;
    if (gpu) {
      // Context parallel: one span of each sequence per rank.
      const int64_t cp = std::max<int64_t>(1, req.context_parallel);
      const double span = double(req.seq_len) / double(cp);
      const std::string tokens = cp > 1 ? "seq_len " + std::to_string(req.seq_len) + " / --context-parallel " +
                                              std::to_string(cp)
                                        : "seq_len " + std::to_string(req.seq_len);
      const double rows = double(req.batch) * span;
      step.push_back({"activations of a micro-batch", "batch " + std::to_string(req.batch) + " x " + tokens +
                                                          ", n_layers " + std::to_string(cfg.n_layers) + ", dim " +
                                                          std::to_string(cfg.dim),
                      gpu_activation_bytes(cfg, rows, req.bf16_activations)});
      const double halo = cp > 1 ? double(req.batch) * double(cfg.window - 1) : 0;  // rows received before a span
      if (req.recompute == backend::Recompute::SaveAttention)
        step.push_back({"attention outputs kept per layer (--recompute save-attention; 'full' saves this)",
                        "batch " + std::to_string(req.batch) + " x " + tokens + ", n_layers " +
                            std::to_string(cfg.n_layers) + ", dim " + std::to_string(cfg.dim) + " + n_attn_heads " +
                            std::to_string(cfg.n_attn_heads),
                        double(cfg.n_layers) * (rows + halo) * double(cfg.dim + cfg.n_attn_heads) * 4.0});
      const std::string batch_drivers = "batch " + std::to_string(req.batch) + " x seq_len " +
                                        std::to_string(req.seq_len) + ", n_layers " + std::to_string(cfg.n_layers);
      if (req.recompute == backend::Recompute::None) {
        // Every layer but the last (whose are the work buffers above) keeps its own; the kept table's sizes are
        // linear in the sequences, so one sequence's times the batch.
        const double others = double(std::max<int64_t>(0, cfg.n_layers - 1));
        const backend::GpuLayerDims one =
            backend::gpu_own_layer_dims(cfg, 1, req.seq_len, req.bf16, req.bf16_activations);
        step.push_back({"activations kept per layer (--recompute none; 'save-attention' and 'full' recompute them)",
                        batch_drivers + ", dim " + std::to_string(cfg.dim) + ", mlp hidden " +
                            std::to_string(cfg.mlp_hidden_dim()),
                        others * double(req.batch) * backend::gpu_kept_layer_bytes(one)});
        step.push_back({"memory operator state kept per layer (--recompute none)",
                        batch_drivers + ", n_mem_heads " + std::to_string(cfg.n_mem_heads) + ", chunk " +
                            std::to_string(cfg.chunk),
                        operator_runner_bytes(cfg, req.batch, req.seq_len, req.bf16, cfg.n_layers - 1)});
      }
      if (cp > 1)
        step.push_back({"context parallel: the attention's halo and the global memory's inputs over the sequence",
                        context_parallel_drivers(cfg, cp, req.batch, tokens),
                        context_parallel_bytes(cfg, cp, rows, halo)});
    } else {
      // accumulate_gradients: one gradient buffer per sequence of a wave (at least one per thread; waves fill
      // 256 MB of gradient buffers) and the partial sums its reduction tree keeps (at most ceil(log2 seqs) besides
      // the result), one tape per thread.
      const double param_bytes = std::max(1.0, 4 * P);
      const double wave = std::max(double(threads), std::min(double(seqs), std::floor(256e6 / param_bytes)));
      const double buffers = std::min(double(seqs), wave) + std::ceil(std::log2(double(std::max<int64_t>(1, seqs))));
      step.push_back({"per-sequence gradient buffers and partial sums",
                      drivers.str() + ", " + std::to_string(threads) + " threads", buffers * param_bytes});
      const int64_t in_flight = std::min<int64_t>(threads, seqs);
      step.push_back({"activations (autograd tape), one sequence per thread",
                      "seq_len " + std::to_string(req.seq_len) + ", n_layers " + std::to_string(cfg.n_layers) + ", dim " +
                          std::to_string(cfg.dim) + "; " + std::to_string(in_flight) + " sequence(s) at once",
                      double(in_flight) * cpu_tape_bytes(cfg, req.seq_len)});
      step.push_back({"batch tokens", drivers.str(), double(seqs) * double(req.seq_len) * 16.0});
    }
    e.phases.push_back(step);
  }
  if (req.eval_windows > 0) {
    std::ostringstream drivers;
    drivers << with_count(req.eval_windows) << " windows (" << req.eval_flags << ") of context " << req.eval_context;
    std::vector<MemoryTerm> ev;
    ev.push_back({"per-token losses of the evaluation", drivers.str(), req.eval_windows * double(req.eval_context) * 8.0});
    if (gpu) {
      // Context parallel: the GPU evaluates a span of each window per rank too.
      const int64_t cp = std::max<int64_t>(1, req.context_parallel), batch = std::max<int64_t>(1, req.eval_batch);
      const double rows = double(batch) * double(req.eval_context) / double(cp);
      const std::string context = "context " + std::to_string(req.eval_context) +
                                  (cp > 1 ? " / --context-parallel " + std::to_string(cp) : "");
      ev.push_back({"activations of an evaluation batch", "batch " + std::to_string(req.eval_batch) + " x " + context,
                    gpu_activation_bytes(cfg, rows, req.bf16_activations)});
      if (cp > 1)
        ev.push_back({"context parallel: the attention's halo and the global memory's inputs over the sequence",
                      context_parallel_drivers(cfg, cp, batch, context),
                      context_parallel_bytes(cfg, cp, rows, double(batch) * double(cfg.window - 1))});
    } else {
      const double in_flight = std::min(double(threads), req.eval_windows);
      ev.push_back({"activations (forward tape), one window per thread",
                    "context " + std::to_string(req.eval_context) + ", n_layers " + std::to_string(cfg.n_layers) +
                        ", dim " + std::to_string(cfg.dim) + "; " + with_count(in_flight) + " window(s) at once",
                    in_flight * kForwardOnlyShare * cpu_tape_bytes(cfg, req.eval_context)});
    }
    e.phases.push_back(ev);
  }
  e.recompute = req.recompute;
  return e;
}

}  // namespace

MemoryEstimate estimate_memory(const model::ModelConfig& cfg, const MemoryRequest& req) {
  model::validate(cfg);
  MemoryEstimate e = estimate_one_level(cfg, req);
  if (req.device == "cuda" && req.train_steps)
    for (const backend::Recompute level :
         {backend::Recompute::Full, backend::Recompute::SaveAttention, backend::Recompute::None}) {
      MemoryRequest at = req;
      at.recompute = level;
      e.recompute_peaks.push_back({level, level == req.recompute ? e.peak() : estimate_one_level(cfg, at).peak()});
    }
  return e;
}

double available_memory(const std::string& device, std::string* source) {
  if (const char* env = std::getenv("TTT_MEMORY_LIMIT")) {
    const std::string v = env;
    if (v == "off") {
      if (source) *source = "TTT_MEMORY_LIMIT=off";
      return -1;
    }
    const double b = parse_size(v);
    TTT_CHECK(b >= 0, "TTT_MEMORY_LIMIT must be \"off\" or a size such as 8G, 512M or 1000000 bytes, got '" << v << "'");
    if (source) *source = "TTT_MEMORY_LIMIT=" + v;
    return b;
  }
  if (device != "cpu") return backend::device_free_memory(device, source);  // -1 without the device: its check reports that
  double avail = read_number_file("/proc/meminfo", "MemAvailable:");
  std::string from = "MemAvailable of /proc/meminfo";
  // A container's limit (cgroup v2, then v1) can be far below the machine's memory.
  double limit = read_number_file("/sys/fs/cgroup/memory.max"), usage = read_number_file("/sys/fs/cgroup/memory.current");
  if (limit < 0) {
    limit = read_number_file("/sys/fs/cgroup/memory/memory.limit_in_bytes");
    usage = read_number_file("/sys/fs/cgroup/memory/memory.usage_in_bytes");
  }
  if (limit > 0 && limit < 1e18 && usage >= 0 && (avail < 0 || limit - usage < avail)) {
    avail = std::max(0.0, limit - usage);
    from = "the cgroup memory limit";
  }
  if (source) *source = from;
  return avail;
}

void require_memory(const std::string& command, const MemoryEstimate& e) {
  std::string source;
  const double avail = available_memory(e.device, &source);
  const double need = e.peak();
  if (avail < 0 || need <= avail) return;
  std::vector<MemoryTerm> terms = e.peak_terms();
  std::stable_sort(terms.begin(), terms.end(), [](const MemoryTerm& a, const MemoryTerm& b) { return a.bytes > b.bytes; });
  std::ostringstream os;
  os << command << ": not enough " << (e.device == "cuda" ? "GPU" : "host") << " memory: the run needs about "
     << format_bytes(need) << " but " << format_bytes(avail) << " is available (" << source << "). Largest parts:";
  for (size_t i = 0; i < terms.size() && i < 4; ++i)
    os << "\n  " << format_bytes(terms[i].bytes) << "  " << terms[i].what << " [" << terms[i].drivers << "]";
  if (!e.recompute_peaks.empty()) {
    // The backward's recomputation trades memory for time: name the levels that would fit.
    std::string fit;
    for (const auto& lp : e.recompute_peaks)
      if (lp.peak <= avail)
        fit += std::string(fit.empty() ? "" : ", ") + backend::recompute_name(lp.level) + " (about " +
               format_bytes(lp.peak) + ")";
    os << "\n--recompute " << backend::recompute_name(e.recompute) << " needs about " << format_bytes(need) << "; ";
    if (fit.empty())
      os << "no --recompute level fits (full, the least memory, needs about "
         << format_bytes(e.recompute_peaks.front().peak) << ").";
    else os << "the --recompute levels that fit: " << fit << ".";
  }
  os << "\nReduce the fields named above (set TTT_MEMORY_LIMIT=off to skip this estimate).";
  TTT_FAIL(os.str());
}

}  // namespace ttt::train
