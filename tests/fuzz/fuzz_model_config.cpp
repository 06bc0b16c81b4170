// libFuzzer target: the model-config loader (model::config_from_json) on arbitrary JSON text. An accepted
// config has a parameter count (overflow-checked) and survives a JSON round trip.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "fuzz_common.h"
#include "model/config.h"

using namespace ttt;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;  // not JSON: the loader's callers report that themselves
  model::ModelConfig cfg;
  if (!fuzz::accepts([&] { cfg = model::config_from_json(j); })) return 0;
  fuzz::require(model::parameter_count(cfg) > 0, "an accepted config has parameters");
  fuzz::require(model::config_from_json(model::config_to_json(cfg)) == cfg, "JSON round trip keeps the config");
  return 0;
}
