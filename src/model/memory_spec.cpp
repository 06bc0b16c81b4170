#include "model/memory_spec.h"

#include "ttt/lact_op.h"

namespace ttt::model {

const char* memory_role_name(MemoryRole r) {
  switch (r) {
    case MemoryRole::Lact: return "lact";
    case MemoryRole::Titans: return "titans";
    case MemoryRole::TntGlobal: return "tnt global";
    case MemoryRole::TntLocal: return "tnt local";
  }
  return "?";
}

engine::Program MemorySpec::program(int64_t n) const { return engine::causal_program(n, chunk, shard); }

engine::BranchLayout branch_layout(const ModelConfig& cfg) {
  engine::BranchLayout b;
  if (cfg.arch != Arch::Tnt) {
    b.global_chunk = cfg.chunk;
    return b;
  }
  b.use_global = cfg.use_global;
  b.global_chunk = cfg.global_chunk;
  b.local_chunks = cfg.local_chunks;
  b.shard = cfg.shard;
  b.qk_proj = cfg.qk_proj;
  return b;
}

namespace {

// The engine configuration of every memory of the branch (LaCT: SwiGLU + dot loss, weight norm, one rate per
// matrix; Titans / TNT: the configured family + MSE loss, decay, residual, one rate).
engine::MemoryConfig engine_config(const ModelConfig& cfg) {
  if (cfg.arch == Arch::Lact)
    return engine::lact_memory_config(cfg.head_dim_mem(), cfg.mem_hidden_dim(), cfg.momentum, cfg.muon,
                                      cfg.weight_norm);
  engine::MemoryConfig mc;
  mc.d = cfg.head_dim_mem();
  mc.dh = cfg.mem_hidden_dim();
  mc.momentum = cfg.momentum;
  mc.muon = cfg.muon;
  mc.family = cfg.memory;
  mc.loss = engine::Loss::MSE;
  mc.decay = cfg.decay;
  mc.mlp_residual = cfg.mem_residual;
  mc.rate_columns = 1;
  return mc;
}

}  // namespace

BranchSpec branch_spec(const ModelConfig& cfg) {
  const int64_t H = cfg.n_mem_heads;
  BranchSpec b;
  b.layout = branch_layout(cfg);
  b.rate = cfg.arch == Arch::Lact ? math::lact_rate_rule(cfg.lr_init) : math::titans_rate_rule(cfg.titans_base_lr);
  b.gate = math::sigmoid_gate_rule();
  const engine::MemoryConfig mc = engine_config(cfg);
  const auto shapes = mc.weight_shapes();
  const auto names = mc.weight_names();
  for (const engine::BranchMemory& place : b.layout.memories()) {
    MemorySpec s;
    static_cast<engine::BranchMemory&>(s) = place;
    s.index = int64_t(b.memories.size());
    s.config = mc;
    s.rate_col0 = b.rate_columns;
    s.gate_col0 = b.gate_columns;
    b.rate_columns += mc.rate_columns * H;
    b.gate_columns += H;
    if (cfg.arch == Arch::Lact) {
      s.role = MemoryRole::Lact;
      s.prefix = "ttt.";
    } else if (cfg.arch == Arch::Titans) {
      s.role = MemoryRole::Titans;
      s.prefix = "ttt.";
    } else if (place.global()) {
      s.role = MemoryRole::TntGlobal;
      s.prefix = "ttt.global.";
    } else {
      s.role = MemoryRole::TntLocal;
      s.prefix = "ttt.local." + std::to_string(place.local) + ".";
    }
    for (size_t i = 0; i < names.size(); ++i) {
      // LaCT's low-rank parameterization covers W0 and W2 (the [dh, d] matrices).
      const bool low_rank = s.role == MemoryRole::Lact && cfg.low_rank_init && (names[i] == "w0" || names[i] == "w2");
      s.weights.push_back({s.prefix + names[i], shapes[i].first, shapes[i].second, low_rank});
    }
    b.memories.push_back(std::move(s));
  }
  b.momentum = mc.momentum;
  b.decay = mc.decay;
  return b;
}

std::vector<MemorySpec> memory_specs(const ModelConfig& cfg) { return branch_spec(cfg).memories; }

}  // namespace ttt::model
