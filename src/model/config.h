// Model configuration: architecture hyper-parameters, presets, JSON I/O, validation and the exact
// parameter layout (names and shapes) that the model builds and that checkpoints store.
//
// Architectures (the math: docs/ALGORITHMS.md):
//   "lact"   — the LaCT language model of §5: pre-norm blocks, each
//              x += W_o (WindowAttn(q,k,v) + TTT(q,k,v)),  x += SwiGLU_MLP(RMSNorm(x)),
//              q,k,v = RMSNorm(x) W_qkv shared by both branches; TTT = SwiGLU fast-weight memory,
//              dot-product inner loss, causal chunked program with chunk `chunk`.
//   "titans" — the same hybrid block, with the TTT branch replaced by ONE Titans-style memory
//              (family `memory`, default "mlp"; MSE inner loss; momentum, decay; rate
//              θ_t = titans_base_lr · sigmoid(x W_θ + b_θ)), causal chunked with chunk `chunk`, never reset.
//   "tnt"    — the same hybrid block, with the memory branch of §6: a global memory (chunk
//              `global_chunk`, never reset; present iff use_global) plus one local memory per entry of
//              `local_chunks` (chunk local_chunks[i], reset to its own learned W⁰ every `shard` tokens),
//              outputs summed; local memories are read with Q-K projected queries iff qk_proj.
//              `chunk` is not used by "tnt".
//
// In all three, the memory branch prepares its queries/keys as in §5.2 steps 1-2 (per-channel scale and
// offset, per-head silu + l2-normalization, RoPE iff ttt_rope with base rope_theta, per memory head or, iff
// ttt_rope_attn_heads, per attention head; v or silu(v) iff v_silu), its output is
// o = RMSNorm_d(Σ memories) ⊙ weight (per head over d, epsilon mem_norm_eps(); per-channel weight D, or one
// weight d for every head iff ttt_norm_shared),
// scaled by the learnable TTT scale silu(x W_s + b_s) (§5.2 step 6: one scalar per memory head,
// broadcast over the head's d channels), and added to the attention output before W_o.
//
// Field relevance: weight_norm, low_rank_*, lr_init apply to "lact" (lr_init: LaCT rates
// softplus(x W_lr + b_lr + softplus⁻¹(lr_init))); momentum applies to all; muon applies to all (NS5 of
// the update); decay, titans_base_lr, mem_residual apply to "titans"/"tnt"; global_chunk, local_chunks,
// shard, qk_proj, use_global apply to "tnt". What the memories of an arch are (roles, chunks, resets, gate
// columns, parameter names) is derived from these fields in one place: model/memory_spec.h.
//
// Shapes: every projection matrix is stored [in, out] (y = x W); fast-weight initial weights of a memory
// with H heads are one tensor [H, rows, cols] (per head the [rows, cols] matrix of §2).
#pragma once
#include <cstdint>
#include <iosfwd>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "ttt/memory_kinds.h"

namespace ttt::model {

// The architectures above. arch, memory and weight_norm are enums in the program and their names in JSON
// (config_from_json parses them once, config_to_json writes the names).
enum class Arch { Lact, Tnt, Titans };
const char* arch_name(Arch a);  // "lact" | "tnt" | "titans"
std::ostream& operator<<(std::ostream& os, Arch a);
void to_json(nlohmann::json& j, Arch a);  // the name, as config_to_json writes it

struct ModelConfig {
  Arch arch = Arch::Lact;
  int64_t vocab_size = 256;       // V
  int64_t dim = 128;              // D
  int64_t n_layers = 4;
  int64_t n_attn_heads = 4;       // window-attention heads (head dim D / n_attn_heads, must be even: RoPE)
  int64_t n_mem_heads = 2;        // memory heads H (head dim d = D / H)
  int64_t inter_multi = 1;        // fast-weight hidden width dh = d * inter_multi
  int64_t chunk = 64;             // C: memory chunk ("lact", "titans")
  int64_t window = 64;            // sliding-window attention size
  double rope_theta = 1e6;        // RoPE base (attention, and the memory branch iff ttt_rope)
  bool ttt_rope = true;           // RoPE on the memory queries/keys
  bool v_silu = false;            // memory values silu(v) instead of v
  // Compatibility switches (the public LaCT model, `ttt import --from lact-hf`; defaults: ttt's own model).
  bool ttt_rope_attn_heads = false;  // RoPE of the memory q/k over the attention heads (width dim / n_attn_heads)
                                     // instead of the memory heads (width d)
  bool ttt_norm_shared = false;   // ttt.o_norm.weight is one [d] weight shared by all memory heads, not [D]
  double ttt_norm_eps = 0;        // epsilon of the memory output's RMSNorm; 0 = norm_eps
  bool momentum = true;           // momentum on the fast-weight updates (per-token gate sigmoid(x W_m + b_m))
  bool muon = false;              // Newton-Schulz orthogonalization of the update
  engine::WeightNorm weight_norm = engine::WeightNorm::Post;  // "post" | "pre" | "none" (§3.4)
  bool low_rank_init = false;     // LaCT: W0 and W2 as A B + 0.5 I
  int64_t low_rank_rank = 32;     // r
  double low_rank_gain = 0.5;     // init std gain/sqrt(r) (A) and gain/sqrt(d) (B)
  double lr_init = 0.001;         // base inner learning rate inside softplus⁻¹ (LaCT)
  int64_t mlp_hidden = 0;         // SwiGLU MLP hidden width F; 0 = auto = round_up(8 D / 3, 64)
  int64_t seq_len = 256;          // training context T
  double norm_eps = 1e-6;         // RMSNorm epsilon
  double init_std = 0.02;         // std of the normal init of embeddings and projections
  // Titans / TNT.
  engine::Family memory = engine::Family::SwiGLU;  // memory family: "swiglu" (required by "lact") | "mlp" | "linear"
  bool decay = true;              // Titans decay W <- (1 - ᾱ) W ("titans", "tnt")
  bool mem_residual = true;       // MLP memory f(x) = x + W2 silu(W1 x) (§2 [choice])
  double titans_base_lr = 0.003;  // θ base: θ_t = base · sigmoid(x W_θ + b_θ) [choice]; 0.01 diverged (NaN) in a CPU titans run
  int64_t global_chunk = 64;      // C_G
  std::vector<int64_t> local_chunks = {8, 16};  // C_L^(i)
  int64_t shard = 128;            // S_L: local memories reset every S_L tokens
  bool qk_proj = true;            // Q-K projection of the local memories' queries
  bool use_global = true;         // global memory present

  int64_t head_dim_attn() const { return n_attn_heads > 0 ? dim / n_attn_heads : 0; }
  int64_t head_dim_mem() const { return n_mem_heads > 0 ? dim / n_mem_heads : 0; }
  int64_t mem_hidden_dim() const { return head_dim_mem() * inter_multi; }  // dh
  int64_t mlp_hidden_dim() const;  // F (resolves mlp_hidden = 0)
  double mem_norm_eps() const { return ttt_norm_eps > 0 ? ttt_norm_eps : norm_eps; }  // resolves ttt_norm_eps = 0
  int64_t mem_rope_heads() const { return ttt_rope_attn_heads ? n_attn_heads : n_mem_heads; }  // RoPE groups of memory q/k
  // Memories in the branch: 1 for "lact"/"titans"; (use_global ? 1 : 0) + local_chunks.size() for "tnt".
  int64_t n_memories() const;

  bool operator==(const ModelConfig&) const = default;
};

// Presets: "tiny" (default; CPU-trainable), "760m", "3b" (LaCT public configs), "tnt", "titans" (tiny-sized).
ModelConfig preset(const std::string& name);
std::vector<std::string> preset_names();

// Throws ttt::Error naming the offending field.
void validate(const ModelConfig& cfg);

// JSON: every field under its own name (arch, memory, weight_norm as their names). Missing keys keep the ModelConfig
// defaults (the tiny preset); unknown keys, wrongly typed values and unknown names throw naming the key.
// config_from_json validates the result.
nlohmann::json config_to_json(const ModelConfig& cfg);
ModelConfig config_from_json(const nlohmann::json& j);
ModelConfig load_config(const std::string& path);
void save_config(const std::string& path, const ModelConfig& cfg);  // atomic

// nlohmann ADL hooks (j = cfg; cfg = j.get<ModelConfig>()).
void to_json(nlohmann::json& j, const ModelConfig& cfg);
void from_json(const nlohmann::json& j, ModelConfig& cfg);

// Every trainable parameter, in a fixed order, with its shape. See config.cpp for the layout.
std::vector<std::pair<std::string, Shape>> parameter_shapes(const ModelConfig& cfg);
int64_t parameter_count(const ModelConfig& cfg);  // sum over parameter_shapes

}  // namespace ttt::model

namespace ttt::engine {
// The names, as config_to_json writes them (not nlohmann's default, the enum's number).
void to_json(nlohmann::json& j, Family f);
void to_json(nlohmann::json& j, WeightNorm w);
}  // namespace ttt::engine
