// model_buffers.h: the tables' sizing and the parameter views.
#include "backend/cuda/model_buffers.h"

#include <map>

#include "core/error.h"
#include "model/memory_spec.h"

namespace ttt::cuda {

// Inside a member of ModelDims / StreamDims the dimensions of an entry's size are the members.
#define TTT_GROW(name, type, elements) \
  arrays.name.ensure(elements, poison); \
  view.name = arrays.name.p();
#define TTT_ALLOCATE_ZEROED(name, type, elements)               \
  arrays.name.ensure(std::max<int64_t>(elements, 1), false);  \
  arrays.name.b.fill_zero();                                  \
  view.name = arrays.name.p();

LayerActivations ModelDims::grow(LayerActivationArrays& arrays, bool poison) const {
  LayerActivations view;
  TTT_GPU_LAYER_KEPT(TTT_GROW)
  TTT_GPU_LAYER_SCRATCH(TTT_GROW)
  return view;
}
// An entry of size 0 here is not kept by the layer: its view field stays (the work buffer's).
#define TTT_GROW_OWN(name, type, elements) \
  arrays.name.ensure(elements, poison);   \
  if ((elements) > 0) view.name = arrays.name.p();
void ModelDims::grow(LayerKeptArrays& arrays, bool poison, LayerActivations& view) const {
  TTT_GPU_LAYER_KEPT(TTT_GROW_OWN)
}
#undef TTT_GROW_OWN
LayerGradients ModelDims::grow(LayerGradientArrays& arrays, bool poison) const {
  LayerGradients view;
  TTT_GPU_LAYER_GRADIENTS(TTT_GROW)
  return view;
}
ContextBuffers ModelDims::grow(ContextArrays& arrays, bool poison) const {
  ContextBuffers view;
  TTT_GPU_CONTEXT_BUFFERS(TTT_GROW)
  return view;
}
HeadBuffers ModelDims::grow(HeadArrays& arrays, bool poison) const {
  HeadBuffers view;
  TTT_GPU_HEAD_BUFFERS(TTT_GROW)
  return view;
}

TokenBuffers StreamDims::allocate(TokenArrays& arrays) const {
  TokenBuffers view;
  TTT_GPU_TOKEN_BUFFERS(TTT_ALLOCATE_ZEROED)
  return view;
}
TitansTokenBuffers StreamDims::allocate(TitansTokenArrays& arrays) const {
  TitansTokenBuffers view;
  TTT_GPU_TITANS_TOKEN_BUFFERS(TTT_ALLOCATE_ZEROED)
  return view;
}

#undef TTT_GROW
#undef TTT_ALLOCATE_ZEROED

ModelTensors model_tensors(const model::ModelConfig& cfg, const std::vector<std::string>& names,
                           const std::function<float*(size_t)>& at) {
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < names.size(); ++i) index[names[i]] = i;
  std::vector<bool> claimed(names.size(), false);
  // The tensor `name`, marked as having a field; null when the layout has none.
  auto find = [&](const std::string& name) -> float* {
    auto it = index.find(name);
    if (it == index.end()) return nullptr;
    claimed[it->second] = true;
    return at(it->second);
  };
  const std::vector<model::MemorySpec> specs = model::memory_specs(cfg);
  ModelTensors t;
  t.embed = find("embed.weight");
  t.final_norm = find("final_norm.weight");
  t.lm_head = find("lm_head.weight");
  for (int64_t l = 0; l < cfg.n_layers; ++l) {
    const std::string pre = "layers." + std::to_string(l) + ".";
    LayerTensors& lt = t.layers.emplace_back();
#define TTT_FIND_TENSOR(name, suffix) lt.name = find(pre + suffix);
    TTT_GPU_LAYER_TENSORS(TTT_FIND_TENSOR)
#undef TTT_FIND_TENSOR
    for (const model::MemorySpec& spec : specs) {
      auto& weights = lt.memories.emplace_back();
      for (const model::MemoryWeightSpec& w : spec.weights)
        weights.push_back({find(pre + w.name), find(pre + w.name + ".a"), find(pre + w.name + ".b")});
    }
  }
  for (size_t i = 0; i < names.size(); ++i)
    TTT_CHECK(claimed[i], "GPU parameter views: tensor '" << names[i] << "' has no field (cuda/model_buffers.h)");
  return t;
}

}  // namespace ttt::cuda
