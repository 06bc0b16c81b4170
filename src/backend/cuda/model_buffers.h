// The device buffers of the GPU model (model_cuda_impl.h) and of GPU generation (generate_cuda.cpp): structs with
// a named field per buffer, each struct sized from one table, and typed views of the parameters built once.
//
// A table lists, per buffer, its name (the field), its element type and its size in elements, written in terms of
// the dimensions of a Dims struct (ModelDims, StreamDims below). The table expands (X-macro) into
//   - a view struct of device pointers, one field per entry: what the code uses (e.g. LayerActivations::qkv);
//   - an arrays struct owning one DeviceArray per entry;
//   - the sizing (Dims::grow / Dims::allocate) that sizes every array from its entry and sets the view,
// so a buffer cannot be declared without being allocated, nor allocated at another size than its entry's.
// Every buffer is its own allocation (cudaMalloc alignment for every pointer, as the kernels' vector paths and
// cuBLAS expect); a size of 0 allocates nothing (the view's pointer stays null).
//
// This header needs no CUDA headers.
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "backend/cuda/device.h"
#include "backend/gpu_layer_activations.h"
#include "model/config.h"

namespace ttt::cuda {

// A device array of T, grown on demand (never shrunk); a new allocation is filled with NaN (all bits set: NaN in
// fp32 and in bf16) when poisoned.
template <class T>
struct DeviceArray {
  DeviceBuffer b;
  int64_t n = 0;
  T* p() const { return b.as<T>(); }
  void ensure(int64_t want, bool poison) {
    if (want <= n) return;
    b = DeviceBuffer(sizeof(T) * size_t(std::max<int64_t>(want, 1)));
    n = want;
    if (poison) b.fill_nan();
  }
};

// ---- the GPU model's work buffers (model_cuda_buffers.cpp) ----------------------------------------------------
// One layer's buffers, reused by every layer: the forward's activations (kept for that layer's backward) and the
// backward's gradients; then the final norm, LM head and loss. Dimensions (ModelDims, backend::GpuLayerDims): rows =
// S*N tokens of the batch, D model width, H memory heads, d memory head width, dh memory hidden width, Ha attention
// heads, F MLP hidden width, V vocabulary, M memories of the branch, BHN = S*H*N rows of the per sequence-head
// layout, W = S*H*dh*d (one fast-weight matrix per sequence-head), G = max(3, M)*H gate columns, attn_work floats
// of the attention backward's workspace, act16 / act32 = 1 when activations are stored in bf16 / fp32 (else 0: the
// buffer is not allocated). Names ending in T are in the per sequence-head layout [S*H, N, .] of the operators;
// a "d" prefix is a gradient (dnormed: of the memory output's norm), a "g" prefix the memory operator's gradient
// output.
//
// The tables of the training buffers (TTT_GPU_LAYER_KEPT, _SCRATCH, _GRADIENTS, _CONTEXT_BUFFERS, _HEAD_BUFFERS)
// are in backend/gpu_layer_activations.h, device-neutral code, so that the memory estimate sizes them too.

// ---- GPU generation's work buffers (generate_cuda.cpp): one token, allocated once and zeroed ----------------------
// Dimensions (StreamDims): D, H, d, dh, F, V as above; MH = M*H gate columns of the Titans memories. Titans
// buffers exist for arch "titans" / "tnt" only (their chunk update's buffers are their TitansRunner's).
#define TTT_GPU_TOKEN_BUFFERS(X)                                                                                   \
  X(x, float, D)                      /* the residual stream */                                                   \
  X(h, float, D)                      /* RMSNorm(x) (also the final norm's output) */                             \
  X(rinv, float, H + 1)                                                                                           \
  X(qkv, float, 3 * D)                                                                                            \
  X(qa, float, D)                                                                                                 \
  X(attn, float, D)                                                                                               \
  X(qh, float, D)                                                                                                 \
  X(kh, float, D)                                                                                                 \
  X(norm, float, H)                                                                                               \
  X(vm, float, D)                                                                                                 \
  X(zlr, float, 3 * H)                                                                                            \
  X(rates, float, 3 * H)                                                                                          \
  X(zm, float, H)                                                                                                 \
  X(mom, float, H)                                                                                                \
  X(o, float, D)                      /* memory output */                                                         \
  X(normed, float, D)                                                                                             \
  X(rinvo, float, H)                                                                                              \
  X(zs, float, H)                                                                                                 \
  X(gate, float, H)                                                                                               \
  X(sum, float, D)                                                                                                \
  X(h2, float, D)                                                                                                 \
  X(ga, float, F)                                                                                                 \
  X(up, float, F)                                                                                                 \
  X(mm, float, F)                                                                                                 \
  X(logits, float, V)

#define TTT_GPU_TITANS_TOKEN_BUFFERS(X)                                                                            \
  X(zg, float, MH)                    /* a gate's pre-activation */                                               \
  X(th, float, MH)                    /* theta, eta, alpha of every memory */                                     \
  X(et, float, MH)                                                                                                \
  X(al, float, MH)                                                                                                \
  X(mo, float, D)                     /* one memory's output, [H, d] */

#define TTT_BUFFER_POINTER(name, type, elements) type* name = nullptr;
#define TTT_BUFFER_ARRAY(name, type, elements) DeviceArray<type> name;

struct LayerActivations {
  TTT_GPU_LAYER_KEPT(TTT_BUFFER_POINTER)
  TTT_GPU_LAYER_SCRATCH(TTT_BUFFER_POINTER)
};
struct LayerActivationArrays {
  TTT_GPU_LAYER_KEPT(TTT_BUFFER_ARRAY)
  TTT_GPU_LAYER_SCRATCH(TTT_BUFFER_ARRAY)
};
// One layer's own copy of what its backward reads (--recompute none).
struct LayerKeptArrays {
  TTT_GPU_LAYER_KEPT(TTT_BUFFER_ARRAY)
};
struct LayerGradients {
  TTT_GPU_LAYER_GRADIENTS(TTT_BUFFER_POINTER)
};
struct LayerGradientArrays {
  TTT_GPU_LAYER_GRADIENTS(TTT_BUFFER_ARRAY)
};
struct ContextBuffers {
  TTT_GPU_CONTEXT_BUFFERS(TTT_BUFFER_POINTER)
};
struct ContextArrays {
  TTT_GPU_CONTEXT_BUFFERS(TTT_BUFFER_ARRAY)
};
struct HeadBuffers {
  TTT_GPU_HEAD_BUFFERS(TTT_BUFFER_POINTER)
};
struct HeadArrays {
  TTT_GPU_HEAD_BUFFERS(TTT_BUFFER_ARRAY)
};
struct TokenBuffers {
  TTT_GPU_TOKEN_BUFFERS(TTT_BUFFER_POINTER)
};
struct TokenArrays {
  TTT_GPU_TOKEN_BUFFERS(TTT_BUFFER_ARRAY)
};
struct TitansTokenBuffers {
  TTT_GPU_TITANS_TOKEN_BUFFERS(TTT_BUFFER_POINTER)
};
struct TitansTokenArrays {
  TTT_GPU_TITANS_TOKEN_BUFFERS(TTT_BUFFER_ARRAY)
};

// The dimensions the GPU model's tables are written in (see above).
struct ModelDims : backend::GpuLayerDims {
  // Grow every array of a table to its entry's size (never shrinking; new allocations poisoned with NaN when
  // asked) and return the pointers.
  LayerActivations grow(LayerActivationArrays& arrays, bool poison) const;
  // Grows a layer's kept arrays and points the kept fields of `view` at them (its scratch fields stay, and so do the
  // kept fields whose entry has size 0 here: qk32, k32).
  void grow(LayerKeptArrays& arrays, bool poison, LayerActivations& view) const;
  LayerGradients grow(LayerGradientArrays& arrays, bool poison) const;
  ContextBuffers grow(ContextArrays& arrays, bool poison) const;
  HeadBuffers grow(HeadArrays& arrays, bool poison) const;
};

// The dimensions of GPU generation's tables (see above).
struct StreamDims {
  int64_t D = 0, H = 0, d = 0, dh = 0, F = 0, V = 0, MH = 0;
  // Allocate every array of a table at its entry's size (at least one element), zeroed, and return the pointers.
  TokenBuffers allocate(TokenArrays& arrays) const;
  TitansTokenBuffers allocate(TitansTokenArrays& arrays) const;
};

// ---- typed parameter views ------------------------------------------------------------------------------------
// Per layer, the tensors named "layers.<l>." + the string of each entry (model::parameter_shapes); a tensor the
// config does not have is null. The memories' weights follow the memory spec (model/memory_spec.h).
#define TTT_GPU_LAYER_TENSORS(X)                                                                                   \
  X(attn_norm, "attn_norm.weight")                                                                                \
  X(wqkv, "wqkv")                                                                                                 \
  X(q_scale, "ttt.q_scale")                                                                                       \
  X(q_offset, "ttt.q_offset")                                                                                     \
  X(k_scale, "ttt.k_scale")                                                                                       \
  X(k_offset, "ttt.k_offset")                                                                                     \
  X(lr_weight, "ttt.lr.weight")                                                                                   \
  X(lr_bias, "ttt.lr.bias")                                                                                       \
  X(momentum_weight, "ttt.momentum.weight")                                                                       \
  X(momentum_bias, "ttt.momentum.bias")                                                                           \
  X(decay_weight, "ttt.decay.weight")                                                                             \
  X(decay_bias, "ttt.decay.bias")                                                                                 \
  X(o_norm, "ttt.o_norm.weight")                                                                                  \
  X(scale_weight, "ttt.scale.weight")                                                                             \
  X(scale_bias, "ttt.scale.bias")                                                                                 \
  X(wo, "wo")                                                                                                     \
  X(mlp_norm, "mlp_norm.weight")                                                                                  \
  X(w_gate, "mlp.w_gate")                                                                                         \
  X(w_up, "mlp.w_up")                                                                                             \
  X(w_down, "mlp.w_down")

// One weight of a memory: the tensor itself, or (LaCT w0 / w2 with low_rank_init) its factors a [H,dh,r], b [H,r,d].
struct MemoryWeight {
  float* full = nullptr;
  float* a = nullptr;
  float* b = nullptr;
};

#define TTT_TENSOR_POINTER(name, suffix) float* name = nullptr;
struct LayerTensors {
  TTT_GPU_LAYER_TENSORS(TTT_TENSOR_POINTER)
  // memories[m][i]: weight i of memory m, in the order of its MemorySpec::weights (LaCT: one memory w0, w1,
  // w2; Titans / TNT: per memory w1, w2, global memory first).
  std::vector<std::vector<MemoryWeight>> memories;
};
#undef TTT_TENSOR_POINTER

struct ModelTensors {
  float* embed = nullptr;       // embed.weight
  float* final_norm = nullptr;  // final_norm.weight
  float* lm_head = nullptr;     // lm_head.weight
  std::vector<LayerTensors> layers;
};

// The views of the tensors `names` (model::parameter_shapes order) of `cfg`, tensor i at device pointer at(i).
// Throws if a tensor of the layout has no field (the table above is out of date).
ModelTensors model_tensors(const model::ModelConfig& cfg, const std::vector<std::string>& names,
                           const std::function<float*(size_t)>& at);

}  // namespace ttt::cuda
