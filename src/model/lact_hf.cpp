#include "model/lact_hf.h"

#include <cmath>
#include <set>
#include <sstream>

#include "core/error.h"

namespace ttt::model::lact_hf {

using nlohmann::json;

namespace {

// The public model's fixed pieces (layer_lact_swiglu.py): the base rate inside softplus⁻¹, and the epsilon of its
// ttt_norm (flash-linear-attention's RMSNorm default; the layer does not pass one).
constexpr double kPublicBaseLr = 0.001;
constexpr double kPublicTttNormEps = 1e-5;

double inverse_softplus(double y) { return y + std::log(-std::expm1(-y)); }

// ---------------------------------------------------------------------------------------------------
// Config

// LaCTSWIGLUConfig's defaults: what a key missing from a public config.json means.
const json& public_defaults() {
  static const json d = {
      {"hidden_size", 2048},
      {"num_hidden_layers", 24},
      {"num_attn_heads", 32},
      {"num_lact_heads", 4},
      {"inter_multi", 1},
      {"qkv_bias", false},
      {"attn_qk_norm", false},
      {"lact_chunk_size", 2048},
      {"use_muon", false},
      {"lr_dim", 1},
      {"qkv_silu", true},
      {"no_v_silu", false},
      {"lr_parameterization", "mamba"},
      {"learnable_ttt_scale", true},
      {"use_momentum", true},
      {"ttt_loss_type", "dot_product"},
      {"ttt_prenorm", false},
      {"ttt_nope", false},
      {"w0_w2_low_rank", -1},
      {"window_size", 2048},
      {"rope_theta", 10000.0},
      {"max_position_embeddings", 2048},
      {"hidden_ratio", 4},
      {"intermediate_size", nullptr},
      {"hidden_act", "swish"},
      {"initializer_range", 0.006},
      {"elementwise_affine", true},
      {"norm_eps", 1e-6},
      {"use_cache", true},
      {"pad_token_id", nullptr},
      {"bos_token_id", 1},
      {"eos_token_id", 2},
      {"tie_word_embeddings", false},
      {"fuse_norm", true},
      {"last_layer_fuse_norm", true},
      {"fuse_swiglu", true},
      {"fuse_cross_entropy", true},
      {"vocab_size", 32000},
      {"fw_init_gain", 0.5},
      {"use_fused_kernel", false},
      {"fp32_states", false},
  };
  return d;
}

// Keys Hugging Face's PretrainedConfig writes that do not change what the model computes.
const std::set<std::string>& generic_hf_keys() {
  static const std::set<std::string> k = {
      "model_type", "architectures", "torch_dtype", "dtype", "transformers_version", "_name_or_path", "auto_map",
      "keys_to_ignore_at_inference", "return_dict", "output_hidden_states", "output_attentions", "torchscript",
      "use_bfloat16", "pruned_heads", "tie_encoder_decoder", "is_decoder", "is_encoder_decoder", "add_cross_attention",
      "chunk_size_feed_forward", "id2label", "label2id", "problem_type", "tokenizer_class", "prefix",
      "sep_token_id", "decoder_start_token_id", "task_specific_params", "finetuning_task", "cross_attention_hidden_size",
      "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty",
      "temperature", "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
      "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
      "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
      "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens", "tf_legacy_loss",
      "output_router_logits"};
  return k;
}

// Typed reads of a public config (merged with the defaults), each error naming the key and the file.
struct PublicConfig {
  json j;
  std::string origin;

  const json& at(const char* key) const { return j.at(key); }
  [[noreturn]] void bad(const char* key, const std::string& what) const {
    TTT_FAIL(origin << ": \"" << key << "\" is " << at(key).dump() << "; " << what);
  }
  int64_t integer(const char* key) const {
    const json& v = at(key);
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>() && std::abs(v.get<double>()) < 9e15)
      return int64_t(v.get<double>());
    bad(key, "expected an integer");
  }
  double number(const char* key) const {
    if (!at(key).is_number()) bad(key, "expected a number");
    return at(key).get<double>();
  }
  bool boolean(const char* key) const {
    if (!at(key).is_boolean()) bad(key, "expected true or false");
    return at(key).get<bool>();
  }
  std::string text(const char* key) const {
    if (!at(key).is_string()) bad(key, "expected a string");
    return at(key).get<std::string>();
  }
  // A value the public model allows but ttt cannot represent.
  void require(const char* key, bool ok, const std::string& allowed) const {
    if (!ok) bad(key, "ttt cannot represent it (allowed: " + allowed + ")");
  }
};

}  // namespace

bool ties_word_embeddings(const json& j) {
  return j.is_object() && j.contains("tie_word_embeddings") && j["tie_word_embeddings"].is_boolean() &&
         j["tie_word_embeddings"].get<bool>();
}

json export_config(const ModelConfig& c) {
  validate(c);
  auto refuse = [](const char* field, const std::string& why) {
    TTT_FAIL("ttt export --to lact-hf: model config " << field << ": " << why);
  };
  if (c.arch != Arch::Lact)
    refuse("arch", std::string("is \"") + arch_name(c.arch) + "\"; the public LaCT model is arch \"lact\"");
  if (c.weight_norm == engine::WeightNorm::None)
    refuse("weight_norm", "is \"none\"; the public model has \"post\" (ttt_prenorm false) or \"pre\" (true)");
  if (c.ttt_rope && !c.ttt_rope_attn_heads && c.n_attn_heads != c.n_mem_heads)
    refuse("ttt_rope_attn_heads", "is false; the public model rotates the memory q/k over the attention heads "
                                  "(set it true, or ttt_rope false)");
  if (!c.ttt_norm_shared && c.n_mem_heads != 1)
    refuse("ttt_norm_shared", "is false; the public ttt_norm is one weight of width d shared by all heads");
  if (c.mem_norm_eps() != kPublicTttNormEps)
    refuse("ttt_norm_eps", "resolves to " + std::to_string(c.mem_norm_eps()) +
                               "; the public ttt_norm's epsilon is 1e-5 (set ttt_norm_eps 1e-5)");
  return json{
      {"model_type", "lact_swiglu"},
      {"architectures", json::array({"LaCTForCausalLM"})},
      {"torch_dtype", "float32"},
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.dim},
      {"num_hidden_layers", c.n_layers},
      {"num_attn_heads", c.n_attn_heads},
      {"num_lact_heads", c.n_mem_heads},
      {"inter_multi", c.inter_multi},
      {"qkv_bias", false},
      {"attn_qk_norm", false},
      {"lact_chunk_size", c.chunk},
      {"use_muon", c.muon},
      {"lr_dim", 1},
      {"qkv_silu", true},
      {"no_v_silu", !c.v_silu},
      {"lr_parameterization", "mamba"},
      {"learnable_ttt_scale", true},
      {"use_momentum", c.momentum},
      {"ttt_loss_type", "dot_product"},
      {"ttt_prenorm", c.weight_norm == engine::WeightNorm::Pre},
      {"ttt_nope", !c.ttt_rope},
      {"w0_w2_low_rank", c.low_rank_init ? c.low_rank_rank : int64_t(-1)},
      {"fw_init_gain", c.low_rank_gain},
      {"window_size", c.window},
      {"rope_theta", c.rope_theta},
      {"max_position_embeddings", c.seq_len},
      {"hidden_ratio", 4},
      {"intermediate_size", c.mlp_hidden_dim()},
      {"hidden_act", "swish"},
      {"initializer_range", c.init_std},
      {"norm_eps", c.norm_eps},
      {"tie_word_embeddings", false},
      {"use_cache", true},
      {"fuse_norm", true},
      {"last_layer_fuse_norm", true},
      {"fuse_swiglu", true},
      {"fuse_cross_entropy", true},
      {"use_fused_kernel", false},
      {"fp32_states", false},
      {"elementwise_affine", true},
  };
}

ModelConfig import_config(const json& j, const std::string& origin) {
  TTT_CHECK(j.is_object(), origin << ": expected a JSON object, got " << j.type_name());
  TTT_CHECK(j.contains("model_type") && j["model_type"].is_string() && j["model_type"] == "lact_swiglu",
            origin << ": \"model_type\" is " << (j.contains("model_type") ? j["model_type"].dump() : "missing")
                   << "; ttt import --from lact-hf reads the public LaCT model, model_type \"lact_swiglu\"");
  PublicConfig p{public_defaults(), origin};
  for (const auto& [key, value] : j.items()) {
    if (p.j.contains(key)) p.j[key] = value;
    else
      TTT_CHECK(generic_hf_keys().count(key),
                origin << ": unknown key \"" << key << "\" (not a field of the public LaCT-SWIGLU config that ttt "
                       << "knows; refused rather than guessed)");
  }
  p.require("qkv_bias", !p.boolean("qkv_bias"), "false (ttt's wqkv has no bias)");
  p.require("attn_qk_norm", !p.boolean("attn_qk_norm"), "false (ttt has no RMSNorm of q and k before attention)");
  p.require("qkv_silu", p.boolean("qkv_silu"), "true (ttt applies silu to the memory q and k)");
  p.require("lr_dim", p.integer("lr_dim") == 1, "1 (one rate per fast weight and head)");
  p.require("lr_parameterization", p.text("lr_parameterization") == "mamba", "\"mamba\"");
  p.require("learnable_ttt_scale", p.boolean("learnable_ttt_scale"), "true (ttt's output gate silu(x W + b))");
  p.require("ttt_loss_type", p.text("ttt_loss_type") == "dot_product", "\"dot_product\"");
  const std::string act = p.text("hidden_act");
  p.require("hidden_act", act == "swish" || act == "silu", "\"swish\" (the SwiGLU MLP)");
  p.require("window_size", !p.at("window_size").is_null(), "an integer window (null, full attention, is not)");
  p.require("rope_theta", !p.at("rope_theta").is_null(), "a number");

  ModelConfig c;
  c.arch = Arch::Lact;
  c.memory = engine::Family::SwiGLU;
  c.vocab_size = p.integer("vocab_size");
  c.dim = p.integer("hidden_size");
  c.n_layers = p.integer("num_hidden_layers");
  c.n_attn_heads = p.integer("num_attn_heads");
  c.n_mem_heads = p.integer("num_lact_heads");
  c.inter_multi = p.integer("inter_multi");
  c.chunk = p.integer("lact_chunk_size");
  c.window = p.integer("window_size");
  c.rope_theta = p.number("rope_theta");
  c.ttt_rope = !p.boolean("ttt_nope");
  c.v_silu = !p.boolean("no_v_silu");
  c.momentum = p.boolean("use_momentum");
  c.muon = p.boolean("use_muon");
  c.weight_norm = p.boolean("ttt_prenorm") ? engine::WeightNorm::Pre : engine::WeightNorm::Post;
  const int64_t low_rank = p.integer("w0_w2_low_rank");
  c.low_rank_init = low_rank > 0;
  if (c.low_rank_init) c.low_rank_rank = low_rank;
  c.low_rank_gain = p.number("fw_init_gain");
  c.lr_init = kPublicBaseLr;
  // The MLP width as flash-linear-attention's GatedMLP resolves it.
  if (p.at("intermediate_size").is_null()) {
    const int64_t ratio = p.at("hidden_ratio").is_null() ? 4 : p.integer("hidden_ratio");
    const int64_t width = c.dim * ratio * 2 / 3;
    c.mlp_hidden = (width + 255) / 256 * 256;
  } else {
    c.mlp_hidden = p.integer("intermediate_size");
  }
  c.seq_len = p.integer("max_position_embeddings");
  c.norm_eps = p.number("norm_eps");
  c.init_std = p.number("initializer_range");
  c.ttt_rope_attn_heads = true;
  c.ttt_norm_shared = true;
  c.ttt_norm_eps = kPublicTttNormEps;
  try {
    validate(c);
  } catch (const Error& e) {
    TTT_FAIL(origin << ": the public config as ttt's " << e.what());
  }
  return c;
}

// ---------------------------------------------------------------------------------------------------
// Tensors

namespace {

// How a public tensor is made from ttt's (and back).
enum class Kind {
  Copy,       // same shape and order
  Transpose,  // ttt [in, out] <-> nn.Linear.weight [out, in]
  QkPair,     // ttt q_* and k_* [D] <-> public [D, 2] (column 0 q, column 1 k)
  Rates,      // ttt.lr.weight [D, 3H] column m*H + h <-> lr_proj.weight [3H, D] row h*3 + m
  RateBias,   // ttt.lr.bias [3H] m*H + h <-> lr_proj.bias [3H] h*3 + m, lr_init folded in
};

struct Mapping {
  std::string pub;
  std::vector<std::string> ttt;  // one name; two for QkPair
  Kind kind;
};

std::vector<Mapping> mappings(const ModelConfig& c) {
  std::vector<Mapping> m;
  m.push_back({"model.embeddings.weight", {"embed.weight"}, Kind::Copy});
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string t = "layers." + std::to_string(i) + ".", b = "model.layers." + std::to_string(i) + ".",
                      a = b + "attn.";
    m.push_back({b + "attn_norm.weight", {t + "attn_norm.weight"}, Kind::Copy});
    m.push_back({a + "qkv.weight", {t + "wqkv"}, Kind::Transpose});
    m.push_back({a + "qk_scale", {t + "ttt.q_scale", t + "ttt.k_scale"}, Kind::QkPair});
    m.push_back({a + "qk_offset", {t + "ttt.q_offset", t + "ttt.k_offset"}, Kind::QkPair});
    m.push_back({a + "lr_proj.weight", {t + "ttt.lr.weight"}, Kind::Rates});
    m.push_back({a + "lr_proj.bias", {t + "ttt.lr.bias"}, Kind::RateBias});
    if (c.momentum) {
      m.push_back({a + "momentum_proj.0.weight", {t + "ttt.momentum.weight"}, Kind::Transpose});
      m.push_back({a + "momentum_proj.0.bias", {t + "ttt.momentum.bias"}, Kind::Copy});
    }
    for (const char* w : {"w0", "w1", "w2"}) {
      const bool factored = c.low_rank_init && std::string(w) != "w1";
      if (factored) {
        m.push_back({a + w + ".w_left", {t + "ttt." + w + ".a"}, Kind::Copy});
        m.push_back({a + w + ".w_right", {t + "ttt." + w + ".b"}, Kind::Copy});
      } else {
        m.push_back({a + w, {t + "ttt." + w}, Kind::Copy});
      }
    }
    m.push_back({a + "ttt_norm.weight", {t + "ttt.o_norm.weight"}, Kind::Copy});
    m.push_back({a + "ttt_scale_proj.weight", {t + "ttt.scale.weight"}, Kind::Transpose});
    m.push_back({a + "ttt_scale_proj.bias", {t + "ttt.scale.bias"}, Kind::Copy});
    m.push_back({a + "o_proj.weight", {t + "wo"}, Kind::Transpose});
    m.push_back({b + "mlp_norm.weight", {t + "mlp_norm.weight"}, Kind::Copy});
    m.push_back({b + "mlp.gate_proj.weight", {t + "mlp.w_gate"}, Kind::Transpose});
    m.push_back({b + "mlp.up_proj.weight", {t + "mlp.w_up"}, Kind::Transpose});
    m.push_back({b + "mlp.down_proj.weight", {t + "mlp.w_down"}, Kind::Transpose});
  }
  m.push_back({"model.norm.weight", {"final_norm.weight"}, Kind::Copy});
  m.push_back({"lm_head.weight", {"lm_head.weight"}, Kind::Transpose});
  return m;
}

// The public shape of a mapping, from the ttt shape of its (first) tensor.
Shape public_shape(Kind kind, const Shape& s) {
  switch (kind) {
    case Kind::Transpose:
    case Kind::Rates:
      return Shape{s[1], s[0]};
    case Kind::QkPair:
      return Shape{s[0], 2};
    default:
      return s;
  }
}

// The position in the public tensor of element (r, col) of a ttt matrix [rows, cols] (the layouts above).
// H: memory heads (rate columns). The ttt index of a row-major tensor is r * cols + col.
int64_t public_index(Kind kind, int64_t r, int64_t col, int64_t rows, int64_t cols, int64_t H, int64_t pair) {
  switch (kind) {
    case Kind::Copy:
      return r * cols + col;
    case Kind::Transpose:
      return col * rows + r;
    case Kind::QkPair:
      return col * 2 + pair;  // ttt [1, D] vector of pair member `pair`
    case Kind::Rates: {
      const int64_t m = col / H, h = col % H;
      return (h * 3 + m) * rows + r;
    }
    case Kind::RateBias: {
      const int64_t m = col / H, h = col % H;
      return h * 3 + m;
    }
  }
  return 0;
}

}  // namespace

SafeTensors export_weights(const ModelConfig& c, const Params<float>& params) {
  const double bias_shift = inverse_softplus(c.lr_init) - inverse_softplus(kPublicBaseLr);
  SafeTensors st;
  st.metadata["format"] = "pt";
  for (const Mapping& m : mappings(c)) {
    const Shape& ttt_shape = params.shapes[params.index.at(m.ttt[0])];
    Tensor out = Tensor::empty(public_shape(m.kind, ttt_shape), DType::F32);
    float* dst = out.data<float>();
    for (size_t pair = 0; pair < m.ttt.size(); ++pair) {
      const ag::Mat<float>& v = params.at(m.ttt[pair]);
      for (int64_t r = 0; r < v.rows; ++r)
        for (int64_t col = 0; col < v.cols; ++col) {
          float x = v(r, col);
          if (m.kind == Kind::RateBias) x = float(double(x) + bias_shift);  // exact (+0) when lr_init is 0.001
          dst[public_index(m.kind, r, col, v.rows, v.cols, c.n_mem_heads, int64_t(pair))] = x;
        }
    }
    st.add(m.pub, std::move(out));
  }
  return st;
}

Params<float> import_weights(const ModelConfig& c, const SafeTensors& st, bool tie_word_embeddings,
                             const std::string& origin) {
  Params<float> params = make_params<float>(c);
  const double bias_shift = inverse_softplus(kPublicBaseLr) - inverse_softplus(c.lr_init);
  std::set<std::string> used;
  for (const Mapping& m : mappings(c)) {
    const Shape& ttt_shape = params.shapes[params.index.at(m.ttt[0])];
    const Shape want = public_shape(m.kind, ttt_shape);
    const bool tied_head = m.pub == "lm_head.weight" && tie_word_embeddings && !st.has(m.pub);
    const std::string name = tied_head ? "model.embeddings.weight" : m.pub;
    const Kind kind = tied_head ? Kind::Transpose : m.kind;  // lm_head [D, V] = embeddings [V, D] transposed
    const Tensor* t = st.find(name);
    TTT_CHECK(t, origin << ": missing tensor '" << name << "' (" << shape_str(want) << ")");
    TTT_CHECK(t->shape() == want, origin << ": tensor '" << name << "' is " << t->describe() << ", expected "
                                         << shape_str(want) << " for this config.json");
    TTT_CHECK(t->dtype() != DType::I64, origin << ": tensor '" << name << "' is " << t->describe()
                                               << "; weights are floating point (F32, F64 or BF16)");
    TTT_CHECK(t->all_finite(), origin << ": tensor '" << name << "' contains NaN or Inf");
    const Tensor f = t->to(DType::F32);
    const float* src = f.data<float>();
    used.insert(name);
    for (size_t pair = 0; pair < m.ttt.size(); ++pair) {
      ag::Mat<float>& v = params.at(m.ttt[pair]);
      for (int64_t r = 0; r < v.rows; ++r)
        for (int64_t col = 0; col < v.cols; ++col) {
          float x = src[public_index(kind, r, col, v.rows, v.cols, c.n_mem_heads, int64_t(pair))];
          if (kind == Kind::RateBias) x = float(double(x) + bias_shift);
          v(r, col) = x;
        }
    }
  }
  for (const auto& [name, t] : st.tensors)
    TTT_CHECK(used.count(name), origin << ": unexpected tensor '" << name << "' " << t.describe()
                                       << " (not a parameter of the public LaCT model of this config.json)");
  return params;
}

}  // namespace ttt::model::lact_hf
