#include "train/memory_budget.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "backend/context_parallel_plan.h"
#include "backend/gpu_layer_activations.h"
#include "backend/registry.h"
#include "core/error.h"
#include "data/tokens.h"
#include "model/memory_spec.h"
#include "backend/titans_persistent_plan.h"
#include "ttt/lact_fused.h"

namespace ttt::train {

namespace {

// Calibration of the activation terms (see the header comment).
constexpr double kTapeBytesPerDim = 4 * 70.0;     // per token and layer, times D
constexpr double kTapeBytesPerHidden = 4 * 11.0;  // per token and layer, times F (SwiGLU MLP hidden width)
constexpr double kTapeBytesPerVocab = 8.0;        // per token, times V (logits and their gradient)
constexpr double kTapeBytesPerToken = 2600.0;     // per token, the rest
constexpr double kForwardOnlyShare = 0.5;         // a forward without gradients keeps about half the tape
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

// ---- the GPU model (backend/cuda/model_cuda_buffers.cpp): a batch's device buffers, from the sizes its code allocates

// The batch's buffers for S sequences of N tokens (a span of them with context parallelism), a training step's when
// `backward`. Every figure is a size the CUDA code computes from the same host functions: the tables of
// backend/gpu_layer_activations.h, the operator runners' sizes (titans_persistent_plan.h, lact::workspace_elements).
struct GpuBatchBytes {
  double residual = 0;    // the residual stream kept at every layer input
  double work = 0;        // one layer's work buffers (activations, scratch, gradients), the head's, the batch's tokens
  double attention = 0;   // save-attention: every layer's attention output and log-sum-exp
  double runner = 0;      // the memory operator's runner of the batch shape (states kept for the backward, work space)
  double kept = 0;        // none: the activations every layer but the last keeps of its own
  double runners = 0;     // none: the operator state every layer but the last keeps (its own runners / records)
  double context = 0;     // context parallel: the exchanges' buffers and each layer's received halo
};

// The opt-in shared memory per block the Titans kernels are planned with: the device's, else sm_90's.
size_t titans_smem_limit() {
  const size_t device = backend::device_shared_memory_per_block("cuda");
  return device > 0 ? device : titans::kDefaultSharedMemoryPerBlock;
}

// A LaCT runner with `records` forward records for S sequences of N tokens (cuda/lact_cuda.cu), keeping the chunks'
// products or not (keep_products): the buffers lact::Fused allocates (lact::workspace_elements, fp32), its
// reductions' partials and cuBLAS workspace; with bf16 operands also a bf16 shadow of each of its product-operand
// buffers (lact::workspace_operand_elements) and bf16 copies of q, k, v per record and of grad_o, and its product
// outputs in bf16 rather than fp32 (lact::workspace_product_output_elements; LactOptions::bf16_outputs, on unless
// TTT_LACT_B16_OUTPUTS=0); with bf16 and Muon its NS5 buffers in fp16 (lact::workspace_ns5_elements).
double lact_runner_bytes(const model::ModelConfig& cfg, int64_t S, int64_t N, bool bf16, int64_t records,
                         bool keep_products) {
  const lact::Shape s = backend::gpu_lact_shape(cfg, S, N);
  const double elements = double(lact::workspace_elements(s, /*with_grad=*/true, records, keep_products));
  double bytes = 4 * elements + 8.0 * double(lact::runner_partial_doubles(s.B, s.d, s.dh)) +
                 double(lact::kRunnerCublasWorkspace);
  if (backend::lact_on_bf16_operands(cfg, bf16)) {
    bytes += 2 * double(lact::workspace_operand_elements(s, /*with_grad=*/true, records, keep_products)) +
             double(3 * records + 1) * 2.0 * double(s.B) * double(N) * double(s.d);
    if (lact::bf16_outputs_from_env())
      bytes -= 2 * double(lact::workspace_product_output_elements(s, /*with_grad=*/true, records, keep_products));
  } else if (bf16 && cfg.muon && lact::ns5_fp16_from_env()) {
    // bf16 with Muon: the operator's products run in tf32, and NS5 in fp16 (LactOptions::ns5_fp16): its buffers take
    // 2 bytes an element. (With --precision tf32 they do too, counted here at 4: an overestimate of < 1%.)
    bytes -= 2 * double(lact::workspace_ns5_elements(s, /*with_grad=*/true, records));
  }
  return bytes;
}

GpuBatchBytes gpu_batch_bytes(const model::ModelConfig& cfg, const MemoryRequest& req, int64_t S, int64_t N, int64_t cp,
                              bool backward) {
  GpuBatchBytes b;
  const double rows = double(S) * double(N), D = double(cfg.dim), L = double(cfg.n_layers);
  const double F = double(cfg.mlp_hidden_dim()), V = double(cfg.vocab_size);
  if (S <= 0 || N <= 0) return b;
  // An absurd batch (petabytes): the sizes below are 64-bit counts that could wrap, so a lower bound of what it
  // allocates (the residual stream, the SwiGLU products, the logits), which no device holds, is the answer.
  if (rows * (L * D + F + V) > 1e15) {
    b.residual = (L + 1) * rows * D * 2;
    b.work = rows * ((req.bf16_activations ? 4 : 8) * F + 4 * V);
    return b;
  }
  // Context parallel: the last rank of a group, which holds the most (a halo in front of its span, the longest prefix).
  backend::GpuSpan span;
  if (cp > 1) {
    const backend::HaloPlan hp(S, N, cfg.dim, cfg.window, int(cp - 1));
    span = {int(cp), int(cp - 1), hp.halo, hp.halo_in, req.cp_pass_state};
  }
  const backend::GpuLayerDims dims = backend::gpu_batch_dims(cfg, S, N, req.bf16, req.bf16_activations, span);
  b.residual = (L + 1) * rows * D * (req.bf16_activations ? 2 : 4);
  // The tokens: ids and targets (int32) and positions (int64), the loss and valid-target scalars; the backward's
  // embedding index arrays (3 x rows + 1 int32), upstream-gradient scalar and the RMSNorm backward's work buffer (at
  // most 128 row slices of D doubles).
  const double tokens = rows * 16 + 8 + (backward ? 3 * (rows + 1) * 4 + 4 + 128 * D * 8 : 0);
  b.work = backend::gpu_kept_layer_bytes(dims) + backend::gpu_layer_scratch_bytes(dims) +
           backend::gpu_layer_gradient_bytes(dims) + backend::gpu_head_buffer_bytes(dims) + tokens;
  if (backward && req.recompute == backend::Recompute::SaveAttention)
    b.attention = L * double(dims.arows) * (D + double(cfg.n_attn_heads)) * 4;
  const bool titans_like = cfg.arch != model::Arch::Lact;
  const size_t smem = titans_like ? titans_smem_limit() : 0;
  const titans::KernelChoice auto_choice = titans::KernelChoice::Automatic;
  if (!titans_like) {
    b.runner = lact_runner_bytes(cfg, S, N, req.bf16, 1, backend::gpu_lact_keeps_products(backward));
  } else if (cp > 1 && cfg.use_global) {  // the global memory over the prefix, the local ones over the span
    // Passing the state: the global memory over the span, on the batched path; sized for a rank that hands its state
    // on (its last chunk's update keeps one more state than the last rank's).
    const backend::GpuSplitShapes split =
        req.cp_pass_state ? backend::gpu_split_shapes(cfg, S, N, 0, int(cp), true)
                          : backend::gpu_split_shapes(cfg, S, N, int(cp - 1));
    const titans::KernelChoice chosen =
        req.cp_pass_state ? titans::KernelChoice::Batched : titans::kernel_choice_from_env();
    b.runner = double(titans::titans_runner_bytes(split.global, true, sizeof(float),
                                                  titans::plan_persistent(split.global, sizeof(float), smem, chosen,
                                                                          titans::persistent_variant_from_env())));
    if (split.has_local) b.runner += double(titans::tnt_runner_bytes(split.local, true, sizeof(float), smem, auto_choice));
  } else {
    b.runner = double(titans::tnt_runner_bytes(backend::gpu_tnt_shape(cfg, S, N), true, sizeof(float), smem, auto_choice));
  }
  if (backward && req.recompute == backend::Recompute::None && cfg.n_layers > 1) {
    // Every layer but the last (whose are the work buffers and the shared runner) keeps its own; the kept table's
    // sizes are linear in the sequences, so one sequence's times the batch.
    const backend::GpuLayerDims one = backend::gpu_own_layer_dims(cfg, 1, N, req.bf16, req.bf16_activations);
    b.kept = (L - 1) * double(S) * backend::gpu_kept_layer_bytes(one);
    b.runners = titans_like ? (L - 1) * b.runner : lact_runner_bytes(cfg, S, N, req.bf16, cfg.n_layers - 1, false);
  }
  if (cp > 1)  // the exchanges' buffers, and every layer's received keys and values [k | v] of the halo (and with
               // --cp-global state the global memory's entry state)
    b.context = backend::gpu_context_buffer_bytes(dims) + L * 2 * double(S) * double(span.halo) * D * 4 +
                L * double(dims.state) * 4;
  return b;
}

std::string context_parallel_drivers(const model::ModelConfig& cfg, int64_t cp, int64_t batch, const std::string& tokens) {
  return "--context-parallel " + std::to_string(cp) + ", window " + std::to_string(cfg.window) + ", batch " +
         std::to_string(batch) + " x " + tokens + ", dim " + std::to_string(cfg.dim) + (cfg.use_global ? ", use_global" : "");
}

// The terms of a GPU batch of S sequences of `length` tokens (`what`: "seq_len 4096"), each rank holding a span of
// length / cp tokens of each.
void push_gpu_terms(std::vector<MemoryTerm>& out, const model::ModelConfig& cfg, const MemoryRequest& req, int64_t S,
                    int64_t length, int64_t cp, bool backward, const std::string& what) {
  const int64_t N = length / cp;
  const GpuBatchBytes b = gpu_batch_bytes(cfg, req, S, N, cp, backward);
  const std::string tokens = what + (cp > 1 ? " / --context-parallel " + std::to_string(cp) : "");
  const std::string batch = "batch " + std::to_string(S) + " x " + tokens;
  const std::string layers = ", n_layers " + std::to_string(cfg.n_layers);
  const std::string dim = ", dim " + std::to_string(cfg.dim);
  std::string memories = ", n_mem_heads " + std::to_string(cfg.n_mem_heads) + ", chunk ";
  for (const model::MemorySpec& m : model::memory_specs(cfg))
    memories += (memories.back() == ' ' ? "" : "/") + std::to_string(m.chunk);
  out.push_back({"residual stream kept at every layer input", batch + layers + dim, b.residual});
  out.push_back({"one layer's work buffers, the logits and the batch's tokens",
                 batch + dim + ", mlp hidden " + std::to_string(cfg.mlp_hidden_dim()) + ", vocab_size " +
                     std::to_string(cfg.vocab_size),
                 b.work});
  out.push_back({"memory operator runner (chunk-boundary states, work space)", batch + memories, b.runner});
  if (b.attention > 0)
    out.push_back({"attention outputs kept per layer (--recompute save-attention; 'full' saves this)",
                   batch + layers + dim + " + n_attn_heads " + std::to_string(cfg.n_attn_heads), b.attention});
  if (backward && req.recompute == backend::Recompute::None) {
    out.push_back({"activations kept per layer (--recompute none; 'save-attention' and 'full' recompute them)",
                   batch + layers + dim + ", mlp hidden " + std::to_string(cfg.mlp_hidden_dim()), b.kept});
    out.push_back({"memory operator state kept per layer (--recompute none)", batch + layers + memories, b.runners});
  }
  if (cp > 1)
    out.push_back({req.cp_pass_state
                       ? "context parallel: the attention's halo and the global memory's state passed (--cp-global state)"
                       : "context parallel: the attention's halo and the global memory's inputs over the sequence",
                   context_parallel_drivers(cfg, cp, S, tokens), b.context});
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
    e.resident.push_back({req.train_steps ? "parameters, gradients and AdamW moments (fp32)" : "parameters (fp32)",
                          model_drivers(cfg, P), P * (req.train_steps ? 16.0 : 4.0)});
    // bf16 products round their fp32 operands into cuBLAS-side scratch that DeviceBuffer does not track
    // (cuda/blas_cuda.cu), and a training batch its product weights into bf16 copies, untracked too (weight_copies,
    // cuda/model_cuda_impl.h: at most 2 bytes a parameter); an allowance, not a count.
    if (req.bf16)
      e.resident.push_back({"bf16 rounding scratch of the products (untracked; allowed 2 bytes per parameter)",
                            model_drivers(cfg, P), 2 * P});
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
      const int64_t cp = std::max<int64_t>(1, req.context_parallel);  // one span of each sequence per rank
      push_gpu_terms(step, cfg, req, req.batch, req.seq_len, cp, /*backward=*/true,
                     "seq_len " + std::to_string(req.seq_len));
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
      push_gpu_terms(ev, cfg, req, batch, req.eval_context, cp, /*backward=*/false,
                     "context " + std::to_string(req.eval_context));
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
