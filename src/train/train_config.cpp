#include "train/train_config.h"

#include <cmath>
#include <functional>
#include <sstream>
#include <vector>

#include "backend/registry.h"
#include "core/checked.h"
#include "core/error.h"

namespace ttt::train {

using json = nlohmann::json;

namespace {

struct Field {
  const char* name;
  std::function<json(const TrainConfig&)> get;
  std::function<void(TrainConfig&, const json&)> set;
};

template <class M>
Field field(const char* name, M TrainConfig::*member) {
  return Field{name, [member](const TrainConfig& c) { return json(c.*member); },
               [name, member](TrainConfig& c, const json& v) {
                 using V = std::remove_cvref_t<decltype(c.*member)>;
                 if constexpr (std::is_same_v<V, std::string>) {
                   TTT_CHECK(v.is_string(), "train config: \"" << name << "\" must be a string, got " << v.type_name());
                 } else if constexpr (std::is_same_v<V, bool>) {
                   TTT_CHECK(v.is_boolean(), "train config: \"" << name << "\" must be true or false, got " << v.dump());
                 } else if constexpr (std::is_same_v<V, double>) {
                   TTT_CHECK(v.is_number(), "train config: \"" << name << "\" must be a number, got " << v.type_name());
                 } else if constexpr (std::is_same_v<V, uint64_t>) {
                   TTT_CHECK(v.is_number_unsigned(),
                             "train config: \"" << name << "\" must be a non-negative integer, got " << v.dump());
                 } else {
                   TTT_CHECK(v.is_number_integer(), "train config: \"" << name << "\" must be an integer, got " << v.dump());
                 }
                 c.*member = v.get<V>();
               }};
}

const std::vector<Field>& fields() {
  static const std::vector<Field> f = {
      field("preset", &TrainConfig::preset),
      field("data_dir", &TrainConfig::data_dir),
      field("device", &TrainConfig::device),
      field("steps", &TrainConfig::steps),
      field("batch", &TrainConfig::batch),
      field("seq_len", &TrainConfig::seq_len),
      field("accum", &TrainConfig::accum),
      field("lr", &TrainConfig::lr),
      field("min_lr_ratio", &TrainConfig::min_lr_ratio),
      field("warmup", &TrainConfig::warmup),
      field("weight_decay", &TrainConfig::weight_decay),
      field("beta1", &TrainConfig::beta1),
      field("beta2", &TrainConfig::beta2),
      field("eps", &TrainConfig::eps),
      field("clip", &TrainConfig::clip),
      field("eval_every", &TrainConfig::eval_every),
      field("eval_batches", &TrainConfig::eval_batches),
      field("ckpt_every", &TrainConfig::ckpt_every),
      field("keep_checkpoints", &TrainConfig::keep_checkpoints),
      field("log_every", &TrainConfig::log_every),
      field("seed", &TrainConfig::seed),
      field("cross_documents", &TrainConfig::cross_documents),
      field("stage", &TrainConfig::stage),
      field("stage1_run", &TrainConfig::stage1_run),
  };
  return f;
}

}  // namespace

void validate(const TrainConfig& c) {
  auto pos = [](const char* n, auto v) { TTT_CHECK(v > 0, "train config: " << n << " must be > 0, got " << v); };
  auto nonneg = [](const char* n, auto v) { TTT_CHECK(v >= 0, "train config: " << n << " must be >= 0, got " << v); };
  TTT_CHECK(backend::is_device_name(c.device),
            "train config: device \"" << c.device << "\" is not one of " << backend::device_choices());
  pos("steps", c.steps);
  pos("batch", c.batch);
  pos("seq_len", c.seq_len);
  pos("accum", c.accum);
  checked_mul(checked_mul(c.batch, c.accum, "train config: batch * accum"), c.seq_len,
              "train config: batch * accum * seq_len (tokens per step)");
  TTT_CHECK(std::isfinite(c.lr) && c.lr > 0, "train config: lr must be > 0, got " << c.lr);
  TTT_CHECK(c.min_lr_ratio >= 0 && c.min_lr_ratio <= 1, "train config: min_lr_ratio must be in [0, 1], got " << c.min_lr_ratio);
  nonneg("warmup", c.warmup);
  TTT_CHECK(c.weight_decay >= 0 && c.weight_decay * c.lr < 1,
            "train config: weight_decay must be >= 0 with weight_decay * lr < 1, got " << c.weight_decay);
  TTT_CHECK(c.beta1 >= 0 && c.beta1 < 1, "train config: beta1 must be in [0, 1), got " << c.beta1);
  TTT_CHECK(c.beta2 >= 0 && c.beta2 < 1, "train config: beta2 must be in [0, 1), got " << c.beta2);
  pos("eps", c.eps);
  TTT_CHECK(std::isfinite(c.clip) && c.clip >= 0, "train config: clip must be >= 0 (0: off), got " << c.clip);
  nonneg("eval_every", c.eval_every);
  pos("eval_batches", c.eval_batches);
  nonneg("ckpt_every", c.ckpt_every);
  pos("keep_checkpoints", c.keep_checkpoints);
  pos("log_every", c.log_every);
  TTT_CHECK(!c.data_dir.empty(), "train config: data_dir is empty");
  TTT_CHECK(c.stage == 1 || c.stage == 2, "train config: stage must be 1 or 2, got " << c.stage);
  TTT_CHECK(c.stage == 1 || !c.stage1_run.empty(), "train config: stage 2 needs stage1_run (the stage-1 run directory)");
}

json train_config_to_json(const TrainConfig& c) {
  json j = json::object();
  for (const auto& f : fields()) j[f.name] = f.get(c);
  return j;
}

TrainConfig train_config_from_json(const json& j) {
  TTT_CHECK(j.is_object(), "train config: expected a JSON object, got " << j.type_name());
  TrainConfig c;
  for (const auto& [key, value] : j.items()) {
    const Field* f = nullptr;
    for (const auto& cand : fields())
      if (key == cand.name) f = &cand;
    if (!f) {
      std::ostringstream known;
      for (const auto& cand : fields()) known << (known.tellp() > 0 ? ", " : "") << cand.name;
      TTT_FAIL("train config: unknown key \"" << key << "\" (known keys: " << known.str() << ")");
    }
    f->set(c, value);
  }
  validate(c);
  return c;
}

}  // namespace ttt::train
