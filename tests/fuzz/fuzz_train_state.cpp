// libFuzzer target: the training-state and training-config loaders (train::run_state_from_json,
// train::train_config_from_json) on arbitrary JSON text; what they accept survives a JSON round trip.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>

#include "fuzz_common.h"
#include "train/checkpoint.h"
#include "train/train_config.h"

using namespace ttt;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  train::TrainConfig tc;
  if (fuzz::accepts([&] { tc = train::train_config_from_json(j); })) {
    fuzz::require(tc.tokens_per_step() > 0, "tokens per step of an accepted config");
    fuzz::require(train::train_config_from_json(train::train_config_to_json(tc)) == tc, "train config round trip");
  }
  train::RunState st;
  if (fuzz::accepts([&] { st = train::run_state_from_json(j, "state.json"); })) {
    const train::RunState back = train::run_state_from_json(train::run_state_to_json(st), "round trip");
    fuzz::require(back.step == st.step && back.tokens_seen == st.tokens_seen && back.data_rng == st.data_rng &&
                      back.train == st.train,
                  "run state round trip");
  }
  return 0;
}
