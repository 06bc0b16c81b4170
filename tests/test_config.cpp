// Model config: presets, validation messages, JSON round trip, parameter layout and counts.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <functional>
#include <set>
#include <string>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/file_io.h"
#include "model/config.h"

using namespace ttt;
using namespace ttt::model;

namespace {

// Expects validate(cfg) to throw ttt::Error whose message contains `needle`.
void expect_invalid(const ModelConfig& cfg, const std::string& needle) {
  try {
    validate(cfg);
    ADD_FAILURE() << "validate accepted a config that should fail on '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << "message: " << e.what();
  }
}

ModelConfig modified(const std::string& base, const std::function<void(ModelConfig&)>& f) {
  ModelConfig c = preset(base);
  f(c);
  return c;
}

}  // namespace

TEST(Config, PresetsValidate) {
  for (const auto& name : preset_names()) {
    SCOPED_TRACE(name);
    ModelConfig c = preset(name);
    EXPECT_NO_THROW(validate(c));
    EXPECT_GT(parameter_count(c), 0);
  }
  EXPECT_EQ(preset("tiny"), ModelConfig{});
  ModelConfig m = preset("760m");
  EXPECT_EQ(m.head_dim_mem(), 384);
  EXPECT_EQ(m.head_dim_attn(), 64);
  EXPECT_EQ(m.mlp_hidden_dim(), 4096);
  EXPECT_FALSE(m.muon);
  EXPECT_TRUE(m.momentum);
  ModelConfig b = preset("3b");
  EXPECT_EQ(b.head_dim_mem(), 768);
  EXPECT_TRUE(b.muon);
  EXPECT_EQ(preset("tnt").arch, Arch::Tnt);
  EXPECT_EQ(preset("tnt").n_memories(), 3);
  EXPECT_EQ(preset("titans").chunk, 16);
  EXPECT_EQ(preset("tiny").mlp_hidden_dim(), 384);
}

TEST(Config, UnknownPresetListsPresets) {
  try {
    preset("huge");
    FAIL();
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("huge"), std::string::npos);
    EXPECT_NE(m.find("760m"), std::string::npos);
    EXPECT_NE(m.find("titans"), std::string::npos);
  }
}

TEST(Config, JsonRoundTrip) {
  for (const auto& name : preset_names()) {
    ModelConfig c = preset(name);
    EXPECT_EQ(config_from_json(config_to_json(c)), c) << name;
    EXPECT_EQ(config_from_json(nlohmann::json::parse(config_to_json(c).dump())), c) << name;
  }
  ModelConfig c = preset("tnt");
  c.local_chunks = {4, 32};
  c.titans_base_lr = 0.0123456789;
  c.low_rank_gain = 0.3;
  nlohmann::json j = c;  // ADL hook
  EXPECT_EQ(j.get<ModelConfig>(), c);

  // File round trip (atomic save).
  const std::string path = (std::filesystem::temp_directory_path() / ("ttt_cfg_" + std::to_string(::getpid()) + ".json")).string();
  save_config(path, c);
  EXPECT_EQ(load_config(path), c);
  std::remove(path.c_str());
  EXPECT_THROW(load_config(path), Error);
}

TEST(Config, MissingKeysTakeDefaultsUnknownKeysThrow) {
  ModelConfig c = config_from_json(nlohmann::json{{"dim", 256}, {"n_layers", 2}});
  EXPECT_EQ(c.dim, 256);
  EXPECT_EQ(c.n_layers, 2);
  EXPECT_EQ(c.chunk, ModelConfig{}.chunk);
  try {
    config_from_json(nlohmann::json{{"dim", 128}, {"n_heads", 4}});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("n_heads"), std::string::npos) << e.what();
  }
  try {
    config_from_json(nlohmann::json{{"chunk", "big"}});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("chunk"), std::string::npos) << e.what();
  }
  EXPECT_THROW(config_from_json(nlohmann::json::array()), Error);
  EXPECT_THROW(config_from_json(nlohmann::json{{"local_chunks", {8, "x"}}}), Error);
  // Parsing validates.
  EXPECT_THROW(config_from_json(nlohmann::json{{"n_mem_heads", 3}}), Error);
}

TEST(Config, InconsistentShapesThrowNamingTheField) {
  expect_invalid(modified("tiny", [](ModelConfig& c) { c.vocab_size = 0; }), "vocab_size");
  expect_invalid(modified("tiny", [](ModelConfig& c) { c.dim = 0; }), "dim");
  expect_invalid(modified("tiny", [](ModelConfig& c) { c.n_layers = 0; }), "n_layers");
  expect_invalid(modified("tiny", [](ModelConfig& c) { c.n_attn_heads = 3; }), "n_attn_heads");
  expect_invalid(modified("tiny", [](ModelConfig& c) { c.n_mem_heads = 3; }), "n_mem_heads");
  expect_invalid(modified("tiny", [](ModelConfig& c) { c.n_mem_heads = 0; }), "n_mem_heads");
  expect_invalid(modified("tiny", [](ModelConfig& c) { c.inter_multi = 0; }), "inter_multi");
  // Odd head dims with RoPE: dim 120, 8 attention heads -> 15.
  expect_invalid(modified("tiny", [](ModelConfig& c) { c.dim = 120; c.n_attn_heads = 8; c.n_mem_heads = 2; }),
                 "n_attn_heads");
  // dim 120 with 8 memory heads -> 15 (odd) while attention has 4 heads of 30.
  expect_invalid(modified("tiny", [](ModelConfig& c) { c.dim = 120; c.n_attn_heads = 4; c.n_mem_heads = 8; }),
                 "ttt_rope");
  EXPECT_NO_THROW(validate(modified("tiny", [](ModelConfig& c) {
    c.dim = 120; c.n_attn_heads = 4; c.n_mem_heads = 8; c.ttt_rope = false;
  })));
  expect_invalid(modified("tiny", [](ModelConfig& c) { c.chunk = 0; }), "chunk");
  expect_invalid(modified("tiny", [](ModelConfig& c) { c.window = -1; }), "window");
  expect_invalid(modified("tiny", [](ModelConfig& c) { c.seq_len = 0; }), "seq_len");
  expect_invalid(modified("tiny", [](ModelConfig& c) { c.rope_theta = 0; }), "rope_theta");
  expect_invalid(modified("tiny", [](ModelConfig& c) { c.memory = engine::Family::MLP; }), "memory");
  expect_invalid(modified("tiny", [](ModelConfig& c) { c.low_rank_init = true; c.low_rank_rank = 65; }),
                 "low_rank_rank");
  expect_invalid(modified("tiny", [](ModelConfig& c) { c.low_rank_init = true; c.low_rank_rank = 0; }),
                 "low_rank_rank");
  expect_invalid(modified("tiny", [](ModelConfig& c) { c.lr_init = 0; }), "lr_init");
  expect_invalid(modified("tiny", [](ModelConfig& c) { c.mlp_hidden = -4; }), "mlp_hidden");
  expect_invalid(modified("tiny", [](ModelConfig& c) { c.norm_eps = 0; }), "norm_eps");
  expect_invalid(modified("tiny", [](ModelConfig& c) { c.init_std = -1; }), "init_std");
  expect_invalid(modified("tnt", [](ModelConfig& c) { c.local_chunks = {8, 0}; }), "local_chunks[1]");
  EXPECT_NO_THROW(validate(modified("tnt", [](ModelConfig& c) { c.local_chunks = {8, 48}; })));  // shard 128 not a multiple of 48: allowed
  expect_invalid(modified("tnt", [](ModelConfig& c) { c.shard = 0; }), "shard");
  expect_invalid(modified("tnt", [](ModelConfig& c) { c.global_chunk = 0; }), "global_chunk");
  expect_invalid(modified("tnt", [](ModelConfig& c) { c.use_global = false; c.local_chunks.clear(); }), "use_global");
  expect_invalid(modified("titans", [](ModelConfig& c) { c.titans_base_lr = 0; }), "titans_base_lr");
  // tnt fields are not checked for the other archs.
  EXPECT_NO_THROW(validate(modified("titans", [](ModelConfig& c) { c.shard = 0; })));
}

// arch, memory and weight_norm are enums parsed from their names in config_from_json, the one place where config
// text becomes them; config_to_json writes the names. Bad names and types fail with the messages the string fields
// had (they were checked by validate()).
TEST(Config, EnumFieldsAreTheirNamesInJson) {
  const nlohmann::json tiny = config_to_json(preset("tiny"));
  EXPECT_EQ(tiny.at("arch"), "lact");
  EXPECT_EQ(tiny.at("memory"), "swiglu");
  EXPECT_EQ(tiny.at("weight_norm"), "post");
  const nlohmann::json tnt = config_to_json(preset("tnt"));
  EXPECT_EQ(tnt.at("arch"), "tnt");
  EXPECT_EQ(tnt.at("memory"), "mlp");
  EXPECT_EQ(tnt.at("weight_norm"), "none");
  EXPECT_EQ(config_to_json(preset("titans")).at("arch"), "titans");
  EXPECT_EQ(nlohmann::json(Arch::Titans), "titans");  // the ADL hook: never the enum's number
  EXPECT_EQ(nlohmann::json(engine::Family::Linear), "linear");
  EXPECT_EQ(nlohmann::json(engine::WeightNorm::Pre), "pre");

  ModelConfig c = config_from_json(nlohmann::json{{"arch", "titans"}, {"memory", "linear"}, {"weight_norm", "pre"}});
  EXPECT_EQ(c.arch, Arch::Titans);
  EXPECT_EQ(c.memory, engine::Family::Linear);
  EXPECT_EQ(c.weight_norm, engine::WeightNorm::Pre);

  auto expect_message = [](const nlohmann::json& j, const std::string& message) {
    SCOPED_TRACE(j.dump());
    try {
      config_from_json(j);
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()), message);
    }
  };
  expect_message({{"arch", "rwkv"}}, R"(model config: arch must be "lact", "tnt" or "titans", got "rwkv")");
  expect_message({{"weight_norm", "both"}}, R"(model config: weight_norm must be "post", "pre" or "none", got "both")");
  expect_message({{"arch", "titans"}, {"memory", "gru"}},
                 R"(model config: memory must be "swiglu", "mlp" or "linear", got "gru")");
  expect_message({{"arch", 3}}, R"(model config: key "arch" must be a string, got 3)");
  expect_message({{"memory", "mlp"}},
                 R"(model config: arch "lact" uses the SwiGLU memory; memory must be "swiglu", got "mlp")");
}

// Issue 10 item 7: sizes derived from a config are overflow-checked (no signed overflow), and the error
// names the field that makes them too large.
TEST(Config, HugeSizesFailNamingTheField) {
  auto expect_json_invalid = [](const std::string& text, std::initializer_list<const char*> needles) {
    SCOPED_TRACE(text);
    try {
      config_from_json(nlohmann::json::parse(text));
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      for (const char* n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
    }
  };
  expect_json_invalid(R"({"dim": 4611686018427387904})", {"dim", "overflows"});
  expect_json_invalid(R"({"n_layers": 4611686018427387904})", {"n_layers", "overflows"});
  expect_json_invalid(R"({"inter_multi": 4611686018427387904})", {"inter_multi", "overflows"});
  expect_json_invalid(R"({"mlp_hidden": 4611686018427387904})", {"mlp_hidden", "overflows"});
  expect_json_invalid(R"({"dim": 1099511627776, "mlp_hidden": 64})", {"'layers.0.wqkv'", "dim 1099511627776", "overflows"});
  expect_json_invalid(R"({"arch": "tnt", "memory": "mlp", "weight_norm": "none", "dim": 4611686018427387904,
                          "n_attn_heads": 2305843009213693952, "n_mem_heads": 2305843009213693952})",
                      {"dim", "overflows"});
}

// parameter_count does not list every layer (a config with 2^40 layers is counted at once).
TEST(Config, ParameterCountScalesWithoutListingLayers) {
  ModelConfig big = preset("tiny");
  big.n_layers = int64_t(1) << 40;
  const int64_t per_layer = parameter_count(modified("tiny", [](ModelConfig& c) { c.n_layers = 2; })) -
                            parameter_count(modified("tiny", [](ModelConfig& c) { c.n_layers = 1; }));
  const int64_t outer = parameter_count(preset("tiny")) - 4 * per_layer;
  EXPECT_EQ(parameter_count(big), outer + (int64_t(1) << 40) * per_layer);
}

TEST(Config, ParameterLayout) {
  ModelConfig c = preset("tiny");
  auto shapes = parameter_shapes(c);
  std::set<std::string> names;
  for (auto& [n, s] : shapes) EXPECT_TRUE(names.insert(n).second) << "duplicate " << n;
  EXPECT_EQ(shapes.front().first, "embed.weight");
  EXPECT_EQ(shapes.front().second, (Shape{256, 128}));
  EXPECT_EQ(shapes.back().first, "lm_head.weight");
  EXPECT_EQ(shapes.back().second, (Shape{128, 256}));
  EXPECT_TRUE(names.count("layers.0.attn_norm.weight"));
  EXPECT_TRUE(names.count("layers.3.mlp.w_down"));
  EXPECT_TRUE(names.count("layers.0.ttt.momentum.weight"));
  EXPECT_FALSE(names.count("layers.4.wqkv"));

  // Hand count of the tiny LaCT layer: D 128, H 2, d = dh = 64, F 384.
  const int64_t D = 128, H = 2, d = 64, F = 384, V = 256;
  const int64_t layer = D + 3 * D * D + 4 * D + (D * 3 * H + 3 * H) + (D * H + H) + 3 * H * d * d + D + (D * H + H) +
                        D * D + D + 3 * D * F;
  EXPECT_EQ(parameter_count(c), V * D + 4 * layer + D + D * V);

  // Low rank replaces w0/w2 by A [dh,r], B [r,d]; no momentum drops its projection.
  ModelConfig lr = c;
  lr.low_rank_init = true;
  lr.low_rank_rank = 8;
  lr.momentum = false;
  EXPECT_EQ(parameter_count(lr), parameter_count(c) - 4 * (D * H + H) - 4 * 2 * H * (d * d - (d * 8 + 8 * d)));

  // TNT: 3 memories (global + 2 locals) with the MLP family, gates for each.
  ModelConfig t = preset("tnt");
  std::set<std::string> tn;
  for (auto& [n, s] : parameter_shapes(t)) tn.insert(n);
  EXPECT_TRUE(tn.count("layers.0.ttt.global.w1"));
  EXPECT_TRUE(tn.count("layers.0.ttt.local.1.w2"));
  EXPECT_TRUE(tn.count("layers.0.ttt.decay.weight"));
  for (auto& [n, s] : parameter_shapes(t)) {
    if (n == "layers.0.ttt.lr.weight") {
      EXPECT_EQ(s, (Shape{128, 3 * 2}));
    }
  }
  ModelConfig ti = preset("titans");
  std::set<std::string> tt;
  for (auto& [n, s] : parameter_shapes(ti)) tt.insert(n);
  EXPECT_TRUE(tt.count("layers.0.ttt.w1"));
  EXPECT_FALSE(tt.count("layers.0.ttt.global.w1"));
}

TEST(Config, LargePresetCounts) {
  const int64_t n760 = parameter_count(preset("760m"));
  const int64_t n3b = parameter_count(preset("3b"));
  std::printf("parameter_count: tiny %lld, 760m %lld, 3b %lld, tnt %lld, titans %lld\n",
              (long long)parameter_count(preset("tiny")), (long long)n760, (long long)n3b,
              (long long)parameter_count(preset("tnt")), (long long)parameter_count(preset("titans")));
  // The LaCT paper calls these 760M and 3B; untied 32000-token embeddings add ~98M / ~197M.
  EXPECT_GT(n760, 650'000'000);
  EXPECT_LT(n760, 900'000'000);
  EXPECT_GT(n3b, 2'600'000'000);
  EXPECT_LT(n3b, 3'500'000'000);
}
