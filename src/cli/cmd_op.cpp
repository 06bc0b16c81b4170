// ttt op lact: the LaCT operator on the user's own tensors.
#include <cmath>
#include <cstdio>

#include "backend/registry.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/device_flags.h"
#include "core/safetensors.h"
#include "ttt/lact_op.h"

namespace ttt::cli {

void require_finite_outputs(const std::string& command, const SafeTensors& inputs, const SafeTensors& outputs) {
  std::string bad;
  int64_t n_bad = 0;
  for (const auto& [name, t] : outputs.tensors) {
    const Tensor c = t.contiguous();
    int64_t n = 0;
    for (int64_t i = 0; i < c.numel(); ++i) n += !std::isfinite(c.get(i));
    if (n == 0) continue;
    bad += (bad.empty() ? "" : ", ") + name + " (" + std::to_string(n) + " of " + std::to_string(c.numel()) + ")";
    n_bad += n;
  }
  if (n_bad == 0) return;
  double largest = 0;
  std::string largest_name;
  for (const auto& [name, t] : inputs.tensors) {
    const Tensor c = t.contiguous();
    for (int64_t i = 0; i < c.numel(); ++i)
      if (std::fabs(c.get(i)) > largest) largest = std::fabs(c.get(i)), largest_name = name;
  }
  TTT_FAIL(command << ": the outputs hold NaN/Inf values although every input is finite: " << bad
                   << "; the arithmetic overflowed (largest input magnitude " << largest << ", in '" << largest_name
                   << "'); scale the inputs down or use float64. Nothing was written.");
}

int cmd_op_lact(const Argv& argv) {
  Args a(argv, "op lact");
  a.value("in", "input safetensors: w0,w1,w2 [B,dh|d,..], q,k,v [B,T,d], lr0,lr1,lr2 [B,T], optional momentum [B,T], grad_o [B,T,d]")
      .value("out", "output safetensors: o [B,T,d] and grad_<name> of every input when grad_o is given")
      .value("chunk", "chunk size C", "64")
      .value("program", "causal | bidirectional", "causal")
      .value("weight-norm", "post | pre | none", "post")
      .flag("muon", "orthogonalize each update with Newton-Schulz (NS5)");
  declare_device_flag(a, "cuda: builds with the CUDA toolkit, on an NVIDIA GPU");
  a.value("precision", "cuda, F32 inputs: matrix products in fp32 | tf32 | bf16 (bf16 inputs, fp32 accumulation "
             "and state)", "fp32");
  a.parse();
  if (a.help_requested()) {
    std::printf("%s", a.usage().c_str());
    return 0;
  }
  TTT_CHECK(a.has("in"), "ttt op lact: --in is required\n" << a.usage());
  TTT_CHECK(a.has("out"), "ttt op lact: --out is required\n" << a.usage());
  const std::string device = device_flag(a, "ttt op lact");
  engine::LactOpOptions opt;
  opt.chunk = a.i64("chunk");
  opt.program = a.str("program");
  opt.weight_norm = engine::parse_weight_norm(a.str("weight-norm"));
  opt.muon = a.on("muon");
  const backend::Precision precision = backend::parse_precision(a.str("precision"), "ttt op lact: --precision");
  TTT_CHECK(precision == backend::Precision::FP32 || device != "cpu",
            "ttt op lact: --precision " << backend::precision_name(precision) << " needs --device cuda");
  opt.precision = backend::precision_name(precision);
  SafeTensors in = safetensors_load(a.str("in"));
  SafeTensors out = backend::operator_backends(device).lact.lact(in, opt);
  require_finite_outputs("ttt op lact", in, out);
  safetensors_save(a.str("out"), out);
  std::fprintf(stderr, "ttt op lact: wrote %zu tensors to %s\n", out.tensors.size(), a.str("out").c_str());
  return 0;
}

}  // namespace ttt::cli
