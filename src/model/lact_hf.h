// Conversion between ttt's "lact" model and the public LaCT model (`LaCTForCausalLM`, model_type "lact_swiglu",
// github a1600012888/LaCT lact_llm) in Hugging Face form: its config.json fields and model.safetensors tensors
// (names, nn.Linear [out, in] layouts). `ttt export --to lact-hf` and `ttt import --from lact-hf` call these.
//
// The two models compute the same function when ttt's config sets the compatibility switches the public layer
// implies (import sets them; export requires them): ttt_rope_attn_heads (RoPE of the memory q/k over the
// attention heads), ttt_norm_shared (one ttt_norm weight of width d for all heads), ttt_norm_eps = 1e-5 (the
// public ttt_norm is flash-linear-attention's RMSNorm with its default epsilon). Two differences are layouts the
// conversion itself handles exactly: the rate columns (ttt: W_m of head h in column m*H + h; public: row h*3 + m of
// lr_proj) and qk_scale / qk_offset ([D, 2], column 0 for q, 1 for k; ttt: four [D] vectors). ttt's lr_init is
// folded into the rate bias (the public base rate is fixed at 0.001; exact when lr_init is 0.001). Everything else
// (v silu, momentum, Muon, pre/post weight norm, low-rank W0/W2, window, chunk, RoPE base, norm epsilon, MLP width)
// maps field to field. A config either side cannot represent is refused naming the field. The mapping table:
// docs/CHECKPOINT_FORMAT.md, "The public LaCT model".
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "core/safetensors.h"
#include "model/config.h"
#include "model/model.h"

namespace ttt::model::lact_hf {

// The public config.json of `cfg` (model_type "lact_swiglu", architectures ["LaCTForCausalLM"]). Refuses a config
// the public model cannot express, naming the ttt field (arch, weight_norm "none", the switches above).
nlohmann::json export_config(const ModelConfig& cfg);

// The ttt config of a public config.json (`origin` names the file in errors). Missing keys take the public
// defaults (LaCTSWIGLUConfig); a value ttt cannot represent (attn_qk_norm, qkv_bias, qkv_silu false, lr_dim != 1,
// ...) and an unknown key are refused naming the key. The result is validated.
ModelConfig import_config(const nlohmann::json& j, const std::string& origin);

// The parameters of `cfg` (ttt names and layouts) as the public model's tensors: F32, metadata {"format": "pt"}.
SafeTensors export_weights(const ModelConfig& cfg, const Params<float>& params);

// The public tensors `st` as ttt parameters of `cfg` (a config import_config made). Every tensor must be present
// with its public shape (lm_head.weight may be absent when the config ties it to the embedding), floating point and
// finite; an extra tensor is refused. Errors name the tensor, its shape and the expected one (`origin`: the file).
Params<float> import_weights(const ModelConfig& cfg, const SafeTensors& st, bool tie_word_embeddings,
                             const std::string& origin);

// Whether a public config.json ties lm_head to the embedding (tie_word_embeddings; default false).
bool ties_word_embeddings(const nlohmann::json& j);

}  // namespace ttt::model::lact_hf
