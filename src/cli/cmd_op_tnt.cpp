// ttt op tnt: the TNT memory branch (global + local Titans memories, Q-K projection) on the user's tensors.
#include <cstdio>

#include "backend/registry.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/device_flags.h"
#include "core/safetensors.h"
#include "ttt/tnt.h"

namespace ttt::cli {

int cmd_op_tnt(const Argv& argv) {
  Args a(argv, "op tnt");
  a.value("in",
          "input safetensors: q,k,v [B,T,d]; global memory g_w1 [B,dh,d], g_w2 [B,d,dh], g_theta, g_eta, g_alpha "
          "[B,T]; local memory i: the same with prefix l<i>_; optional grad_o [B,T,d]")
      .value("out", "output safetensors: o [B,T,d] and grad_<name> of every input when grad_o is given")
      .value("global-chunk", "chunk size C_G of the global memory", "2048")
      .value("local-chunks", "chunk sizes of the local memories, one per l<i>_ memory (\"none\": no local memory)",
             "8,16")
      .value("shard", "S_L: the local memories (and the Q-K sums) reset at every multiple of it; 0: never", "2048")
      .value("qk-proj", "on | off: read the local memories with Q-K projected queries", "on")
      .flag("no-global", "no global memory (no g_ tensors)")
      .flag("sequential", "cpu: run the local shards sequentially per sequence-head (same results)");
  declare_device_flag(a, "cuda: builds with the CUDA toolkit, on an NVIDIA GPU; F32 or F64 inputs");
  a.parse();
  if (a.help_requested()) {
    std::printf("%s", a.usage().c_str());
    return 0;
  }
  TTT_CHECK(a.has("in"), "ttt op tnt: --in is required\n" << a.usage());
  TTT_CHECK(a.has("out"), "ttt op tnt: --out is required\n" << a.usage());
  const std::string device = device_flag(a, "ttt op tnt");
  engine::TntOptions opt;
  opt.use_global = !a.on("no-global");
  opt.global_chunk = a.i64("global-chunk");
  opt.local_chunks = engine::parse_chunk_list(a.str("local-chunks"), "--local-chunks");
  opt.shard = a.i64("shard");
  const std::string qk = a.str("qk-proj");
  TTT_CHECK(qk == "on" || qk == "off", "ttt op tnt: --qk-proj must be on or off, got '" << qk << "'");
  opt.qk_proj = qk == "on";
  opt.batch.split_shards = !a.on("sequential");
  TTT_CHECK(!opt.use_global || opt.global_chunk > 0, "--global-chunk must be positive, got " << opt.global_chunk);
  TTT_CHECK(opt.shard >= 0, "--shard must be positive (or 0: never reset), got " << opt.shard);
  SafeTensors in = safetensors_load(a.str("in"));
  SafeTensors out = backend::operator_backends(device).tnt.tnt(in, opt);
  require_finite_outputs("ttt op tnt", in, out);
  safetensors_save(a.str("out"), out);
  std::fprintf(stderr, "ttt op tnt: wrote %zu tensors to %s\n", out.tensors.size(), a.str("out").c_str());
  return 0;
}

}  // namespace ttt::cli
