// The compatibility switches of imported public LaCT models (model config ttt_rope_attn_heads, ttt_norm_shared,
// ttt_norm_eps) and the lact-hf conversion (model/lact_hf.h). Logit parity against our port of the public model:
// tests/reference/check_lact_hf.py (ctest LactHf.ExportImportParity).
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "backend/registry.h"
#include "cli_test_util.h"
#include "core/file_io.h"
#include "data/tokenizer.h"
#include "model/lact_hf.h"
#include "model/model.h"
#include "temp_dir.h"
#include "tiny_tokenizer.h"
#include "train/checkpoint.h"

using namespace ttt;
using namespace ttt::model;
using ttt::test::TempDir;

namespace {

ModelConfig small() {
  ModelConfig c = preset("tiny");
  c.dim = 16;
  c.n_layers = 1;
  c.n_attn_heads = 4;  // attention head 4, memory head 8: the RoPE width matters
  c.n_mem_heads = 2;
  c.chunk = 4;
  c.window = 6;
  c.seq_len = 16;
  c.mlp_hidden = 24;
  c.vocab_size = 32;
  return c;
}

// The switches the public model needs (as import sets them).
ModelConfig public_like() {
  ModelConfig c = small();
  c.ttt_rope_attn_heads = true;
  c.ttt_norm_shared = true;
  c.ttt_norm_eps = 1e-5;
  c.v_silu = true;
  return c;
}

Batch batch_of(int64_t n, int64_t vocab) {
  Batch b;
  b.sequences = 1;
  b.len = n;
  for (int64_t i = 0; i < n; ++i) {
    b.inputs.push_back(int32_t((i * 7 + 3) % vocab));
    b.targets.push_back(int32_t((i * 5 + 1) % vocab));
  }
  return b;
}

Params<double> random_params(const ModelConfig& c, uint64_t seed) {
  Params<double> p = make_params<double>(c);
  init_params(c, p, seed);
  // Norm weights away from 1 so that a per-head or shared weight shows.
  for (size_t i = 0; i < p.names.size(); ++i)
    if (p.names[i].find("norm.weight") != std::string::npos)
      for (size_t j = 0; j < p.values[i].data.size(); ++j) p.values[i].data[j] = 1.0 + 0.1 * double((j * 7 + i) % 5);
  return p;
}

std::vector<double> logits_of(const ModelConfig& c, const Params<double>& p, const Batch& b) {
  return forward<double>(c, p, b, nullptr, false, true).logits.data;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(LactHfSwitches, DefaultsKeepTodaysModel) {
  // A config.json of today (no switch keys) reads as the defaults: o_norm per channel [D], RoPE per memory head.
  nlohmann::json j = config_to_json(small());
  for (const char* k : {"ttt_rope_attn_heads", "ttt_norm_shared", "ttt_norm_eps"}) j.erase(k);
  const ModelConfig c = config_from_json(j);
  EXPECT_FALSE(c.ttt_rope_attn_heads);
  EXPECT_FALSE(c.ttt_norm_shared);
  EXPECT_EQ(c.ttt_norm_eps, 0.0);
  EXPECT_EQ(c.mem_norm_eps(), c.norm_eps);
  EXPECT_EQ(c, small());
  bool seen = false;
  for (auto& [name, shape] : parameter_shapes(c))
    if (name == "layers.0.ttt.o_norm.weight") {
      EXPECT_EQ(shape, (Shape{c.dim}));
      seen = true;
    }
  EXPECT_TRUE(seen);
  // ttt_norm_eps = norm_eps is the default's function exactly.
  ModelConfig e = small();
  e.ttt_norm_eps = e.norm_eps;
  const Params<double> p = random_params(small(), 3);
  const Batch b = batch_of(11, 32);
  EXPECT_EQ(logits_of(small(), p, b), logits_of(e, p, b));
}

TEST(LactHfSwitches, TttNormEpsReachesTheMemoryOutputNorm) {
  // Only the memory output's RMSNorm takes ttt_norm_eps: a large one changes the logits, and so does norm_eps
  // with ttt_norm_eps fixed (the other norms); both equal to one value is the plain config with that norm_eps.
  const Params<double> p = random_params(small(), 4);
  const Batch b = batch_of(9, 32);
  ModelConfig big = small();
  big.ttt_norm_eps = 0.5;
  EXPECT_NE(logits_of(big, p, b), logits_of(small(), p, b));
  ModelConfig other = big;
  other.norm_eps = 1e-3;
  EXPECT_NE(logits_of(big, p, b), logits_of(other, p, b));
  ModelConfig same_a = small(), same_b = small();
  same_a.norm_eps = same_b.norm_eps = 1e-3;
  same_a.ttt_norm_eps = 1e-3;
  EXPECT_EQ(logits_of(same_a, p, b), logits_of(same_b, p, b));
}

TEST(LactHfSwitches, SharedNormIsTheTiledPerChannelWeight) {
  ModelConfig shared = small();
  shared.ttt_norm_shared = true;
  const ModelConfig plain = small();
  Params<double> ps = random_params(shared, 5);
  Params<double> pp = make_params<double>(plain);
  const int64_t d = plain.head_dim_mem();
  for (size_t i = 0; i < pp.names.size(); ++i) {
    const std::string& n = pp.names[i];
    if (n == "layers.0.ttt.o_norm.weight") {
      ASSERT_EQ(ps.at(n).size(), d);
      for (int64_t c = 0; c < plain.dim; ++c) pp.values[i].data[size_t(c)] = ps.at(n).data[size_t(c % d)];
    } else {
      pp.values[i] = ps.at(n);
    }
  }
  const Batch b = batch_of(13, 32);
  std::vector<ag::Mat<double>> gs, gp;
  const auto rs = forward<double>(shared, ps, b, &gs, false, true);
  const auto rp = forward<double>(plain, pp, b, &gp, false, true);
  ASSERT_EQ(rs.logits.data.size(), rp.logits.data.size());
  for (size_t i = 0; i < rs.logits.data.size(); ++i) EXPECT_NEAR(rs.logits.data[i], rp.logits.data[i], 1e-12);
  // The shared weight's gradient is the sum over heads of the per-channel one.
  const size_t is = ps.index.at("layers.0.ttt.o_norm.weight"), ip = pp.index.at("layers.0.ttt.o_norm.weight");
  for (int64_t j = 0; j < d; ++j) {
    double sum = 0;
    for (int64_t h = 0; h < plain.n_mem_heads; ++h) sum += gp[ip].data[size_t(h * d + j)];
    EXPECT_NEAR(gs[is].data[size_t(j)], sum, 1e-12);
  }
}

TEST(LactHfSwitches, RopeOverAttentionHeadsChangesTheMemoryOnlyWhenHeadsDiffer) {
  ModelConfig on = small(), off = small();
  on.ttt_rope_attn_heads = true;
  const Params<double> p = random_params(off, 7);
  const Batch b = batch_of(12, 32);
  EXPECT_NE(logits_of(on, p, b), logits_of(off, p, b));
  on.n_attn_heads = off.n_attn_heads = on.n_mem_heads;  // same head width: the same RoPE
  EXPECT_EQ(logits_of(on, p, b), logits_of(off, p, b));
}

TEST(LactHf, ConfigRoundTripAndFields) {
  const ModelConfig c = public_like();
  const nlohmann::json j = lact_hf::export_config(c);
  EXPECT_EQ(j["model_type"], "lact_swiglu");
  EXPECT_EQ(j["hidden_size"], c.dim);
  EXPECT_EQ(j["num_lact_heads"], c.n_mem_heads);
  EXPECT_EQ(j["intermediate_size"], c.mlp_hidden_dim());
  EXPECT_EQ(j["no_v_silu"], false);
  EXPECT_EQ(lact_hf::import_config(j, "config.json"), c);
}

TEST(LactHf, ExportRefusesWhatThePublicModelCannotExpress) {
  auto refusal = [](ModelConfig c) { return error_of([&] { lact_hf::export_config(c); }); };
  ModelConfig c = public_like();
  c.ttt_norm_shared = false;
  EXPECT_NE(refusal(c).find("ttt_norm_shared"), std::string::npos);
  c = public_like();
  c.ttt_rope_attn_heads = false;
  EXPECT_NE(refusal(c).find("ttt_rope_attn_heads"), std::string::npos);
  c = public_like();
  c.ttt_norm_eps = 0;
  EXPECT_NE(refusal(c).find("ttt_norm_eps"), std::string::npos);
  c = public_like();
  c.weight_norm = engine::WeightNorm::None;
  EXPECT_NE(refusal(c).find("weight_norm"), std::string::npos);
  c = preset("titans");
  EXPECT_NE(refusal(c).find("arch"), std::string::npos);
}

TEST(LactHf, ImportRefusesUnrepresentableConfigsNamingTheKey) {
  const nlohmann::json good = lact_hf::export_config(public_like());
  auto refusal = [&](const char* key, nlohmann::json value) {
    nlohmann::json j = good;
    j[key] = value;
    return error_of([&] { lact_hf::import_config(j, "DIR/config.json"); });
  };
  for (auto [key, value] : std::vector<std::pair<const char*, nlohmann::json>>{{"attn_qk_norm", true},
                                                                              {"qkv_bias", true},
                                                                              {"qkv_silu", false},
                                                                              {"lr_dim", 2},
                                                                              {"learnable_ttt_scale", false},
                                                                              {"ttt_loss_type", "l2"},
                                                                              {"window_size", nullptr},
                                                                              {"model_type", "llama"},
                                                                              {"no_such_field", 1},
                                                                              {"hidden_size", "wide"}}) {
    const std::string e = refusal(key, value);
    EXPECT_NE(e.find(key), std::string::npos) << key << ": " << e;
    EXPECT_NE(e.find("DIR/config.json"), std::string::npos) << e;
  }
  // ttt's own validation, attributed to the file: 30 is not divisible by 4 heads.
  EXPECT_NE(refusal("hidden_size", 30).find("n_attn_heads"), std::string::npos);
}

TEST(LactHf, WeightsRoundTripBitForBitAndLayouts) {
  const ModelConfig c = public_like();
  Params<float> p = make_params<float>(c);
  init_params(c, p, 11);
  const SafeTensors st = lact_hf::export_weights(c, p);
  EXPECT_EQ(st.metadata.at("format"), "pt");
  // nn.Linear layout [out, in]; qk_scale [D, 2]; rate row h*3 + m is ttt's column m*H + h.
  const Tensor& qkv = st.get("model.layers.0.attn.qkv.weight");
  EXPECT_EQ(qkv.shape(), (Shape{3 * c.dim, c.dim}));
  EXPECT_EQ(qkv.data<float>()[5 * c.dim + 2], p.at("layers.0.wqkv")(2, 5));
  const Tensor& lr = st.get("model.layers.0.attn.lr_proj.weight");
  const int64_t H = c.n_mem_heads;
  for (int64_t h = 0; h < H; ++h)
    for (int64_t m = 0; m < 3; ++m)
      EXPECT_EQ(lr.data<float>()[(h * 3 + m) * c.dim + 1], p.at("layers.0.ttt.lr.weight")(1, m * H + h));
  EXPECT_EQ(st.get("model.layers.0.attn.qk_scale").shape(), (Shape{c.dim, 2}));
  EXPECT_EQ(st.get("model.layers.0.attn.ttt_norm.weight").shape(), (Shape{c.head_dim_mem()}));
  const Params<float> back = lact_hf::import_weights(c, st, false, "model.safetensors");
  ASSERT_EQ(back.names, p.names);
  for (size_t i = 0; i < p.values.size(); ++i) EXPECT_EQ(back.values[i].data, p.values[i].data) << p.names[i];
}

TEST(LactHf, ImportRefusesMissingWrongAndExtraTensors) {
  const ModelConfig c = public_like();
  Params<float> p = make_params<float>(c);
  init_params(c, p, 12);
  const SafeTensors good = lact_hf::export_weights(c, p);
  auto without = [&](const std::string& name) {
    SafeTensors st;
    for (auto& [n, t] : good.tensors)
      if (n != name) st.add(n, t);
    return st;
  };
  std::string e = error_of([&] { lact_hf::import_weights(c, without("model.layers.0.attn.w1"), false, "F"); });
  EXPECT_NE(e.find("missing tensor 'model.layers.0.attn.w1'"), std::string::npos) << e;
  SafeTensors wrong = without("model.layers.0.attn.qk_scale");
  wrong.add("model.layers.0.attn.qk_scale", Tensor::zeros({c.dim}, DType::F32));
  e = error_of([&] { lact_hf::import_weights(c, wrong, false, "F"); });
  EXPECT_NE(e.find("'model.layers.0.attn.qk_scale'"), std::string::npos) << e;
  EXPECT_NE(e.find("[16,2]"), std::string::npos) << e;
  SafeTensors extra = good;
  extra.add("model.layers.0.attn.q_norm.weight", Tensor::zeros({c.dim}, DType::F32));
  e = error_of([&] { lact_hf::import_weights(c, extra, false, "F"); });
  EXPECT_NE(e.find("unexpected tensor 'model.layers.0.attn.q_norm.weight'"), std::string::npos) << e;
  // A tied head may be absent; an untied one may not.
  e = error_of([&] { lact_hf::import_weights(c, without("lm_head.weight"), false, "F"); });
  EXPECT_NE(e.find("'lm_head.weight'"), std::string::npos) << e;
  const Params<float> tied = lact_hf::import_weights(c, without("lm_head.weight"), true, "F");
  EXPECT_EQ(tied.at("lm_head.weight")(3, 2), p.at("embed.weight")(2, 3));
}

// A run with a Hugging Face tokenizer: export copies tokenizer.json, import installs it; the imported run's
// `ttt logits` equal the original's bit for bit. Sharded weights (model.safetensors.index.json) import the same.
TEST(LactHf, TokenizerAndShardsThroughTheCommands) {
  TempDir dir("lact_hf_tok");
  ModelConfig c = public_like();
  c.vocab_size = 272;  // the tiny BPE has 260 tokens
  Params<float> p = make_params<float>(c);
  init_params(c, p, 21);
  std::vector<int64_t> sizes;
  for (auto& m : p.values) sizes.push_back(m.size());
  train::RunState st;
  st.train.seq_len = c.seq_len;
  const std::string run = dir / "run";
  train::save_run_checkpoint(run, c, p, train::AdamW(p.names, sizes, train::AdamWConfig{}), st, 1);
  write_file_atomic(dir / "tok.json", test::tiny_bpe_json());
  const auto tok = data::load_tokenizer(dir / "tok.json");
  const data::TokenizerRecord rec = data::install_tokenizer(*tok, dir / "tok.json", run);
  write_file_atomic(run + "/" + data::kTokenizerInfoFile, rec.to_json().dump(2) + "\n");

  test::RunResult r = test::run_cli("export --to lact-hf --checkpoint " + run + " --out " + (dir / "hf"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(read_file(dir / "hf/tokenizer.json"), test::tiny_bpe_json());
  EXPECT_EQ(nlohmann::json::parse(read_file(dir / "hf/config.json"))["eos_token_id"], tok->eot_id());
  r = test::run_cli("import --from lact-hf " + (dir / "hf") + " --out " + (dir / "back"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("hf-bpe"), std::string::npos) << r.output;
  write_file_atomic(dir / "in.txt", "the theme of the thing");
  for (const char* name : {"run", "back"}) {
    r = test::run_cli(std::string("logits --checkpoint ") + (dir / name) + " --input " + (dir / "in.txt") + " --out " +
                      (dir / (std::string(name) + ".safetensors")));
    ASSERT_EQ(r.status, 0) << r.output;
  }
  const SafeTensors a = safetensors_load(dir / "run.safetensors");
  const SafeTensors b = safetensors_load(dir / "back.safetensors");
  EXPECT_LT(a.get("tokens").numel(), 22);  // merged tokens: the BPE tokenizer, not bytes
  ASSERT_EQ(a.get("logits").nbytes(), b.get("logits").nbytes());
  EXPECT_EQ(0, std::memcmp(a.get("logits").raw(), b.get("logits").raw(), a.get("logits").nbytes()));
  EXPECT_EQ(0, std::memcmp(a.get("tokens").raw(), b.get("tokens").raw(), a.get("tokens").nbytes()));

  // The same weights in two shards and an index.
  const SafeTensors all = safetensors_load(dir / "hf/model.safetensors");
  std::filesystem::create_directories(dir.path / "sharded");
  SafeTensors s1, s2;
  nlohmann::json map = nlohmann::json::object();
  for (size_t i = 0; i < all.tensors.size(); ++i) {
    (i % 2 ? s2 : s1).add(all.tensors[i].first, all.tensors[i].second);
    map[all.tensors[i].first] = i % 2 ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors";
  }
  safetensors_save(dir / "sharded/model-00001-of-00002.safetensors", s1);
  safetensors_save(dir / "sharded/model-00002-of-00002.safetensors", s2);
  write_file_atomic(dir / "sharded/model.safetensors.index.json", nlohmann::json{{"weight_map", map}}.dump());
  write_file_atomic(dir / "sharded/config.json", read_file(dir / "hf/config.json"));
  r = test::run_cli("import --from lact-hf " + (dir / "sharded") + " --out " + (dir / "from_shards"));
  ASSERT_EQ(r.status, 0) << r.output;
  const train::LoadedCheckpoint x = train::load_checkpoint(dir / "from_shards", false);
  const train::LoadedCheckpoint y = train::load_checkpoint(dir / "back", false);
  EXPECT_EQ(x.cfg, y.cfg);
  for (size_t i = 0; i < x.params.values.size(); ++i) EXPECT_EQ(x.params.values[i].data, y.params.values[i].data);
  std::filesystem::remove(dir.path / "sharded/model-00002-of-00002.safetensors");
  test::expect_clean_failure("import --from lact-hf " + (dir / "sharded") + " --out " + (dir / "z"),
                             "model-00002-of-00002.safetensors");
}
