#include "model/config.h"

#include <array>
#include <functional>
#include <ostream>
#include <sstream>

#include "core/checked.h"
#include "core/error.h"
#include "core/file_io.h"
#include "model/memory_spec.h"

namespace ttt::model {

using nlohmann::json;

int64_t ModelConfig::mlp_hidden_dim() const {
  if (mlp_hidden > 0) return mlp_hidden;
  // LLaMA rule: int(2 * 4D / 3), rounded up to a multiple of 64.
  const int64_t h = checked_mul(int64_t(8), dim, "model config: dim (the automatic mlp_hidden is 8 * dim / 3)") / 3;
  return checked_add(h, int64_t(63), "model config: dim (the automatic mlp_hidden is 8 * dim / 3)") / 64 * 64;
}

int64_t ModelConfig::n_memories() const { return branch_layout(*this).num_memories(); }

const char* arch_name(Arch a) { return a == Arch::Lact ? "lact" : a == Arch::Tnt ? "tnt" : "titans"; }
std::ostream& operator<<(std::ostream& os, Arch a) { return os << arch_name(a); }
void to_json(json& j, Arch a) { j = arch_name(a); }

// ---------------------------------------------------------------------------------------------------
// Presets

std::vector<std::string> preset_names() { return {"tiny", "760m", "3b", "tnt", "titans"}; }

ModelConfig preset(const std::string& name) {
  ModelConfig c;  // the defaults are the tiny preset
  if (name == "tiny") return c;
  if (name == "760m" || name == "3b") {
    c.arch = Arch::Lact;
    c.vocab_size = 32000;
    c.dim = name == "760m" ? 1536 : 3072;
    c.n_layers = 24;
    c.n_attn_heads = 24;
    c.n_mem_heads = 4;  // memory head dim 384 (760m) / 768 (3b)
    c.inter_multi = 1;
    c.chunk = 2048;
    c.window = 2048;
    c.seq_len = 32768;
    c.rope_theta = 1e6;
    c.momentum = true;
    c.muon = name == "3b";
    return c;
  }
  if (name == "tnt" || name == "titans") {
    c.arch = name == "tnt" ? Arch::Tnt : Arch::Titans;
    c.memory = engine::Family::MLP;
    c.weight_norm = engine::WeightNorm::None;  // Titans-style memories use decay, not weight norm
    c.momentum = true;
    c.decay = true;
    if (name == "tnt") {
      c.global_chunk = 64;
      c.local_chunks = {8, 16};
      c.shard = 128;
      c.qk_proj = true;
      c.use_global = true;
    } else {
      c.chunk = 16;  // one memory, never reset
    }
    return c;
  }
  std::ostringstream os;
  for (auto& n : preset_names()) os << (os.tellp() > 0 ? ", " : "") << n;
  TTT_FAIL("unknown model preset '" << name << "' (presets: " << os.str() << ")");
}

// ---------------------------------------------------------------------------------------------------
// Validation

namespace {
void check_sizes(const ModelConfig& c);
}

void validate(const ModelConfig& c) {
  auto pos = [](const char* field, auto v) { TTT_CHECK(v > 0, "model config: " << field << " must be > 0, got " << v); };
  pos("vocab_size", c.vocab_size);
  TTT_CHECK(c.vocab_size <= (int64_t(1) << 31) - 1, "model config: vocab_size " << c.vocab_size << " does not fit int32 tokens");
  pos("dim", c.dim);
  pos("n_layers", c.n_layers);
  pos("n_attn_heads", c.n_attn_heads);
  pos("n_mem_heads", c.n_mem_heads);
  pos("inter_multi", c.inter_multi);
  TTT_CHECK(c.dim % c.n_attn_heads == 0,
            "model config: dim (" << c.dim << ") is not divisible by n_attn_heads (" << c.n_attn_heads << ")");
  TTT_CHECK(c.dim % c.n_mem_heads == 0,
            "model config: dim (" << c.dim << ") is not divisible by n_mem_heads (" << c.n_mem_heads << ")");
  TTT_CHECK(c.head_dim_attn() % 2 == 0, "model config: attention head dim dim / n_attn_heads = "
                                            << c.head_dim_attn() << " is odd; RoPE needs an even head dim (n_attn_heads "
                                            << c.n_attn_heads << ")");
  TTT_CHECK(!c.ttt_rope || c.ttt_rope_attn_heads || c.head_dim_mem() % 2 == 0,
            "model config: memory head dim dim / n_mem_heads = " << c.head_dim_mem()
                                                                 << " is odd; ttt_rope needs an even head dim (n_mem_heads "
                                                                 << c.n_mem_heads << ")");
  pos("rope_theta", c.rope_theta);
  pos("chunk", c.chunk);
  pos("window", c.window);
  pos("seq_len", c.seq_len);
  TTT_CHECK(c.arch != Arch::Lact || c.memory == engine::Family::SwiGLU,
            "model config: arch \"lact\" uses the SwiGLU memory; memory must be \"swiglu\", got \"" << c.memory << "\"");
  if (c.low_rank_init) {
    TTT_CHECK(c.memory == engine::Family::SwiGLU,
              "model config: low_rank_init needs memory \"swiglu\", got \"" << c.memory << "\"");
    pos("low_rank_rank", c.low_rank_rank);
    TTT_CHECK(c.low_rank_rank <= c.head_dim_mem(), "model config: low_rank_rank (" << c.low_rank_rank
                                                       << ") exceeds the memory head dim (" << c.head_dim_mem() << ")");
    pos("low_rank_gain", c.low_rank_gain);
  }
  pos("lr_init", c.lr_init);
  TTT_CHECK(c.mlp_hidden >= 0, "model config: mlp_hidden must be >= 0 (0 = auto), got " << c.mlp_hidden);
  pos("norm_eps", c.norm_eps);
  TTT_CHECK(c.ttt_norm_eps >= 0, "model config: ttt_norm_eps must be >= 0 (0 = norm_eps), got " << c.ttt_norm_eps);
  pos("init_std", c.init_std);
  if (c.arch != Arch::Lact) pos("titans_base_lr", c.titans_base_lr);
  if (c.arch == Arch::Tnt) {
    if (c.use_global) pos("global_chunk", c.global_chunk);
    TTT_CHECK(c.use_global || !c.local_chunks.empty(),
              "model config: arch \"tnt\" needs a memory: use_global is false and local_chunks is empty");
    pos("shard", c.shard);
    for (size_t i = 0; i < c.local_chunks.size(); ++i) {
      const int64_t lc = c.local_chunks[i];
      // shard need not be a multiple of the chunk: chunks restart at every shard start and the
      // last chunk of a shard is shorter (docs/ALGORITHMS.md §4.2).
      TTT_CHECK(lc > 0, "model config: local_chunks[" << i << "] must be > 0, got " << lc);
    }
  }
  check_sizes(c);
}

// ---------------------------------------------------------------------------------------------------
// JSON

namespace {

struct Field {
  const char* name;
  std::function<json(const ModelConfig&)> get;
  std::function<void(ModelConfig&, const json&)> set;
};

template <class T> bool json_is(const json& v);
template <> bool json_is<int64_t>(const json& v) { return v.is_number_integer(); }
template <> bool json_is<double>(const json& v) { return v.is_number(); }
template <> bool json_is<bool>(const json& v) { return v.is_boolean(); }
template <> bool json_is<std::string>(const json& v) { return v.is_string(); }
template <> bool json_is<std::vector<int64_t>>(const json& v) {
  if (!v.is_array()) return false;
  for (auto& e : v)
    if (!e.is_number_integer()) return false;
  return true;
}
template <class T> const char* json_type_name();
template <> const char* json_type_name<int64_t>() { return "an integer"; }
template <> const char* json_type_name<double>() { return "a number"; }
template <> const char* json_type_name<bool>() { return "a boolean"; }
template <> const char* json_type_name<std::string>() { return "a string"; }
template <> const char* json_type_name<std::vector<int64_t>>() { return "an array of integers"; }

template <class T> void check_type(const char* name, const json& v) {
  TTT_CHECK(json_is<T>(v),
            "model config: key \"" << name << "\" must be " << json_type_name<T>() << ", got " << v.dump());
}

template <class T> Field field(const char* name, T ModelConfig::*m) {
  return Field{name, [m](const ModelConfig& c) { return json(c.*m); },
               [m, name](ModelConfig& c, const json& v) {
                 check_type<T>(name, v);
                 c.*m = v.get<T>();
               }};
}

// An enum field, written as its name (name_of); parsing accepts the names of `values` (listed in this order by
// the error for any other text). The one place where the config's text becomes an enum.
template <class E, size_t N>
Field named_field(const char* name, E ModelConfig::*m, std::array<E, N> values, const char* (*name_of)(E)) {
  return Field{name, [m, name_of](const ModelConfig& c) { return json(name_of(c.*m)); },
               [m, name, values, name_of](ModelConfig& c, const json& v) {
                 check_type<std::string>(name, v);
                 const std::string text = v.get<std::string>();
                 for (E e : values)
                   if (text == name_of(e)) {
                     c.*m = e;
                     return;
                   }
                 std::ostringstream allowed;
                 for (size_t i = 0; i < N; ++i)
                   allowed << (i == 0 ? "" : i + 1 == N ? " or " : ", ") << '"' << name_of(values[i]) << '"';
                 TTT_FAIL("model config: " << name << " must be " << allowed.str() << ", got \"" << text << "\"");
               }};
}

const std::vector<Field>& fields() {
  static const std::vector<Field> f = {
      named_field("arch", &ModelConfig::arch, std::array{Arch::Lact, Arch::Tnt, Arch::Titans}, arch_name),
      field("vocab_size", &ModelConfig::vocab_size),
      field("dim", &ModelConfig::dim),
      field("n_layers", &ModelConfig::n_layers),
      field("n_attn_heads", &ModelConfig::n_attn_heads),
      field("n_mem_heads", &ModelConfig::n_mem_heads),
      field("inter_multi", &ModelConfig::inter_multi),
      field("chunk", &ModelConfig::chunk),
      field("window", &ModelConfig::window),
      field("rope_theta", &ModelConfig::rope_theta),
      field("ttt_rope", &ModelConfig::ttt_rope),
      field("v_silu", &ModelConfig::v_silu),
      field("ttt_rope_attn_heads", &ModelConfig::ttt_rope_attn_heads),
      field("ttt_norm_shared", &ModelConfig::ttt_norm_shared),
      field("ttt_norm_eps", &ModelConfig::ttt_norm_eps),
      field("momentum", &ModelConfig::momentum),
      field("muon", &ModelConfig::muon),
      named_field("weight_norm", &ModelConfig::weight_norm,
                  std::array{engine::WeightNorm::Post, engine::WeightNorm::Pre, engine::WeightNorm::None},
                  engine::weight_norm_name),
      field("low_rank_init", &ModelConfig::low_rank_init),
      field("low_rank_rank", &ModelConfig::low_rank_rank),
      field("low_rank_gain", &ModelConfig::low_rank_gain),
      field("lr_init", &ModelConfig::lr_init),
      field("mlp_hidden", &ModelConfig::mlp_hidden),
      field("seq_len", &ModelConfig::seq_len),
      field("norm_eps", &ModelConfig::norm_eps),
      field("init_std", &ModelConfig::init_std),
      named_field("memory", &ModelConfig::memory,
                  std::array{engine::Family::SwiGLU, engine::Family::MLP, engine::Family::Linear}, engine::family_name),
      field("decay", &ModelConfig::decay),
      field("mem_residual", &ModelConfig::mem_residual),
      field("titans_base_lr", &ModelConfig::titans_base_lr),
      field("global_chunk", &ModelConfig::global_chunk),
      field("local_chunks", &ModelConfig::local_chunks),
      field("shard", &ModelConfig::shard),
      field("qk_proj", &ModelConfig::qk_proj),
      field("use_global", &ModelConfig::use_global),
  };
  return f;
}

}  // namespace

json config_to_json(const ModelConfig& cfg) {
  json j = json::object();
  for (const auto& f : fields()) j[f.name] = f.get(cfg);
  return j;
}

ModelConfig config_from_json(const json& j) {
  TTT_CHECK(j.is_object(), "model config: expected a JSON object, got " << j.type_name());
  ModelConfig c;
  for (const auto& [key, value] : j.items()) {
    const Field* f = nullptr;
    for (const auto& cand : fields())
      if (key == cand.name) f = &cand;
    if (!f) {
      std::ostringstream known;
      for (const auto& cand : fields()) known << (known.tellp() > 0 ? ", " : "") << cand.name;
      TTT_FAIL("model config: unknown key \"" << key << "\" (known keys: " << known.str() << ")");
    }
    f->set(c, value);
  }
  validate(c);
  return c;
}

ModelConfig load_config(const std::string& path) {
  TTT_CHECK(file_exists(path), "model config '" << path << "' does not exist");
  json j;
  try {
    j = json::parse(read_file(path));
  } catch (const json::exception& e) {
    TTT_FAIL("model config '" << path << "': invalid JSON: " << e.what());
  }
  try {
    return config_from_json(j);
  } catch (const Error& e) {
    TTT_FAIL("'" << path << "': " << e.what());
  }
}

void save_config(const std::string& path, const ModelConfig& cfg) {
  write_file_atomic(path, config_to_json(cfg).dump(2) + "\n");
}

void to_json(json& j, const ModelConfig& cfg) { j = config_to_json(cfg); }
void from_json(const json& j, ModelConfig& cfg) { cfg = config_from_json(j); }

// ---------------------------------------------------------------------------------------------------
// Parameter layout.
//
// V vocab_size, D dim, L n_layers, H n_mem_heads, d = D/H, dh = d*inter_multi, F mlp_hidden_dim(),
// M n_memories(), r low_rank_rank. Order as listed; prefix "layers.<i>." for i = 0..L-1.
//
//   embed.weight                 [V, D]
//   per layer:
//     attn_norm.weight           [D]        RMSNorm before the mixer (init 1)
//     wqkv                       [D, 3D]    q | k | v along the output (columns 0..D-1 are q)
//     ttt.q_scale, ttt.q_offset  [D]        memory-branch per-channel scale (init 1) / offset (init 0)
//     ttt.k_scale, ttt.k_offset  [D]
//   "lact":
//     ttt.lr.weight              [D, 3H]    column m*H + h: rate of W_m, head h (m = 0, 1, 2)
//     ttt.lr.bias                [3H]       (rates softplus(x W + b + softplus⁻¹(lr_init)))
//     ttt.momentum.weight/.bias  [D, H]/[H] iff momentum
//     ttt.w0                     [H, dh, d] or, iff low_rank_init, ttt.w0.a [H, dh, r] and ttt.w0.b [H, r, d]
//                                           (W0 = A B + 0.5 I)
//     ttt.w1                     [H, d, dh]
//     ttt.w2                     [H, dh, d] or ttt.w2.a [H, dh, r] and ttt.w2.b [H, r, d]
//   "titans" / "tnt": memory m = 0..M-1 ("tnt": the global memory first iff use_global, then the locals
//   in local_chunks order); gate columns m*H + h:
//     ttt.lr.weight/.bias        [D, M*H]/[M*H]   θ gates
//     ttt.momentum.weight/.bias  [D, M*H]/[M*H]   iff momentum
//     ttt.decay.weight/.bias     [D, M*H]/[M*H]   iff decay
//     memory weights, prefix "ttt." ("titans"), "ttt.global." / "ttt.local.<i>." ("tnt"):
//       "mlp":    w1 [H, dh, d], w2 [H, d, dh]
//       "swiglu": w0 [H, dh, d], w1 [H, d, dh], w2 [H, dh, d]
//       "linear": w  [H, d, d]
//   all archs:
//     ttt.o_norm.weight          [D]        per-head RMSNorm of the memory output, per-channel weight
//                                [d]        iff ttt_norm_shared: one weight for every head
//     ttt.scale.weight           [D, H]     learnable TTT scale silu(x W_s + b_s), one per head
//     ttt.scale.bias             [H]
//     wo                         [D, D]
//     mlp_norm.weight            [D]
//     mlp.w_gate                 [D, F]
//     mlp.w_up                   [D, F]
//     mlp.w_down                 [F, D]
//   final_norm.weight            [D]
//   lm_head.weight               [D, V]     (untied)

namespace {

using Layout = std::vector<std::pair<std::string, Shape>>;

// The layout above with only the first `layers` layers listed (c.n_layers of them for the model; fewer to
// count parameters without listing every layer). Needs the widths that check_sizes has checked.
Layout layout(const ModelConfig& c, int64_t layers) {
  const int64_t V = c.vocab_size, D = c.dim, H = c.n_mem_heads, F = c.mlp_hidden_dim(), r = c.low_rank_rank;
  const BranchSpec branch = branch_spec(c);
  Layout out;
  out.emplace_back("embed.weight", Shape{V, D});
  for (int64_t i = 0; i < layers; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    out.emplace_back(p + "attn_norm.weight", Shape{D});
    out.emplace_back(p + "wqkv", Shape{D, 3 * D});
    out.emplace_back(p + "ttt.q_scale", Shape{D});
    out.emplace_back(p + "ttt.q_offset", Shape{D});
    out.emplace_back(p + "ttt.k_scale", Shape{D});
    out.emplace_back(p + "ttt.k_offset", Shape{D});
    // The memory branch (memory_spec.h): gate projections, then every memory's weights.
    out.emplace_back(p + "ttt.lr.weight", Shape{D, branch.rate_columns});
    out.emplace_back(p + "ttt.lr.bias", Shape{branch.rate_columns});
    if (branch.momentum) {
      out.emplace_back(p + "ttt.momentum.weight", Shape{D, branch.gate_columns});
      out.emplace_back(p + "ttt.momentum.bias", Shape{branch.gate_columns});
    }
    if (branch.decay) {
      out.emplace_back(p + "ttt.decay.weight", Shape{D, branch.gate_columns});
      out.emplace_back(p + "ttt.decay.bias", Shape{branch.gate_columns});
    }
    for (const MemorySpec& m : branch.memories)
      for (const MemoryWeightSpec& w : m.weights) {
        if (w.low_rank) {
          out.emplace_back(p + w.name + ".a", Shape{H, w.rows, r});
          out.emplace_back(p + w.name + ".b", Shape{H, r, w.cols});
        } else {
          out.emplace_back(p + w.name, Shape{H, w.rows, w.cols});
        }
      }
    out.emplace_back(p + "ttt.o_norm.weight", Shape{c.ttt_norm_shared ? c.head_dim_mem() : D});
    out.emplace_back(p + "ttt.scale.weight", Shape{D, H});
    out.emplace_back(p + "ttt.scale.bias", Shape{H});
    out.emplace_back(p + "wo", Shape{D, D});
    out.emplace_back(p + "mlp_norm.weight", Shape{D});
    out.emplace_back(p + "mlp.w_gate", Shape{D, F});
    out.emplace_back(p + "mlp.w_up", Shape{D, F});
    out.emplace_back(p + "mlp.w_down", Shape{F, D});
  }
  out.emplace_back("final_norm.weight", Shape{D});
  out.emplace_back("lm_head.weight", Shape{D, V});
  return out;
}

// Overflow-checked parameter count of a layout; a tensor too large names itself and the size fields.
int64_t count(const ModelConfig& c, const Layout& shapes) {
  int64_t n = 0;
  for (const auto& [name, shape] : shapes) {
    int64_t numel = 0;
    try {
      numel = shape_numel(shape);
    } catch (const Error& e) {
      TTT_FAIL("model config: tensor '" << name << "': " << e.what() << " (vocab_size " << c.vocab_size << ", dim "
                                        << c.dim << ", n_mem_heads " << c.n_mem_heads << ", inter_multi "
                                        << c.inter_multi << ", mlp_hidden " << c.mlp_hidden_dim() << ", low_rank_rank "
                                        << c.low_rank_rank << ", memories " << c.n_memories() << ")");
    }
    n = checked_add(n, numel, "model config: the parameter count");
  }
  return n;
}

// The parameter count from the layout of zero and one layer (every layer has the same shapes).
int64_t checked_parameter_count(const ModelConfig& c) {
  const int64_t outer = count(c, layout(c, 0));
  const int64_t per_layer = count(c, layout(c, 1)) - outer;
  const int64_t layers = checked_mul(per_layer, c.n_layers, "model config: n_layers (parameters per layer * n_layers)");
  return checked_add(outer, layers, "model config: the parameter count");
}

// Every width the layout multiplies, then each tensor and the parameter count, must fit int64 (a crafted
// config must not reach signed overflow); each error names the field.
void check_sizes(const ModelConfig& c) {
  checked_mul(int64_t(3), c.dim, "model config: dim (wqkv has 3 * dim columns)");
  c.mlp_hidden_dim();
  checked_mul(c.head_dim_mem(), c.inter_multi,
              "model config: inter_multi (memory hidden width dim / n_mem_heads * inter_multi)");
  checked_mul(c.n_memories(), c.n_mem_heads,
              "model config: n_mem_heads / local_chunks (gate columns: memories * n_mem_heads)");
  checked_parameter_count(c);
}

}  // namespace

std::vector<std::pair<std::string, Shape>> parameter_shapes(const ModelConfig& c) {
  validate(c);
  return layout(c, c.n_layers);
}

int64_t parameter_count(const ModelConfig& c) {
  validate(c);
  return checked_parameter_count(c);
}

}  // namespace ttt::model

namespace ttt::engine {
void to_json(nlohmann::json& j, Family f) { j = family_name(f); }
void to_json(nlohmann::json& j, WeightNorm w) { j = weight_norm_name(w); }
}  // namespace ttt::engine
