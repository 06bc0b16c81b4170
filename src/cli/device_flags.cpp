#include "cli/device_flags.h"

#include <cmath>

#include "backend/registry.h"
#include "core/error.h"

namespace ttt::cli {

void declare_device_flag(Args& a, const std::string& gpu_note) {
  std::string names;
  for (const auto& n : backend::device_names()) names += (names.empty() ? "" : " | ") + n;
  a.value("device", names + " (" + gpu_note + ")", "cpu");
}

void declare_precision_flags(Args& a) {
  a.value("precision", "cuda: matrix products fp32 | tf32 | bf16 (fp32 accumulation, state and master weights)", "fp32")
      .value("activations", "cuda, --precision bf16: store activations in bf16 (halves the kept residual stream) | fp32",
             "bf16")
      .value("recompute",
             "cuda, training: what the backward recomputes of each layer's forward: full (least memory) | "
             "save-attention (every layer keeps its attention output: rows x (dim + attention heads) fp32 more per "
             "layer, one attention forward less) | none (every layer keeps all its activations and its memory "
             "operator's forward state: no second forward, the most memory); the same bits at every level. "
             "--device cpu refuses the flag (the CPU keeps every activation on its tape)",
             "save-attention");
}

std::string device_flag(const Args& a, const std::string& command) {
  const std::string device = a.str("device");
  backend::require_device(device, command + ": --device " + device);
  return device;
}

backend::EngineOptions engine_options_flags(const Args& a, const std::string& command, const std::string& device) {
  TTT_CHECK(device != "cpu" || !a.has("precision"),
            command << ": --precision applies to --device cuda (the CPU computes in fp32)");
  backend::EngineOptions o;
  o.precision = backend::parse_precision(a.str("precision"), command + ": --precision");
  TTT_CHECK(o.precision == backend::Precision::BF16 || !a.has("activations"),
            command << ": --activations applies to --device cuda with --precision bf16");
  o.activations = backend::parse_activation_storage(a.str("activations"), command + ": --activations");
  TTT_CHECK(device != "cpu" || !a.has("recompute"),
            command << ": --recompute applies to --device cuda (the CPU keeps every activation on its tape)");
  o.recompute = backend::parse_recompute(a.str("recompute"), command + ": --recompute");
  return o;
}

void declare_data_parallel_flags(Args& a) {
  a.flag("shard-optimizer", "under mpirun: each rank keeps the AdamW moments of its share of the parameters only "
                            "(ZeRO-1); checkpoints still hold the whole state")
      .value("grad-bucket-mb", "under mpirun on cuda: megabytes of gradients per all-reduce, each launched as soon as "
                               "the backward has finished them, overlapping the rest of it (0: one all-reduce after "
                               "the backward)", "25");
}

int64_t grad_bucket_bytes_flag(const Args& a, const std::string& command) {
  const double mb = a.f64("grad-bucket-mb");
  TTT_CHECK(std::isfinite(mb) && mb >= 0 && mb <= 1e6,
            command << ": --grad-bucket-mb must be between 0 and 1000000 megabytes, got " << a.str("grad-bucket-mb"));
  return int64_t(mb * 1024 * 1024);
}

}  // namespace ttt::cli
