// The language model (docs/ALGORITHMS.md §5): embedding, pre-norm blocks of [window attention + memory branch]
// and a SwiGLU MLP, final RMSNorm, untied LM head, cross-entropy. The forward is recorded on the
// autograd tape; the backward is the tape's. Parameters follow model::parameter_shapes().
#pragma once
#include <map>
#include <string>
#include <vector>

#include "autograd/tape.h"
#include "core/safetensors.h"
#include "model/config.h"
#include "model/context_parallel.h"

namespace ttt::model {

// Parameters as matrices: [D] -> [1,D]; [a,b] -> [a,b]; [H,a,b] -> [H*a,b].
template <class T>
struct Params {
  std::vector<std::string> names;
  std::vector<Shape> shapes;
  std::vector<ag::Mat<T>> values;
  std::map<std::string, size_t> index;

  const ag::Mat<T>& at(const std::string& name) const;
  ag::Mat<T>& at(const std::string& name);
  bool has(const std::string& name) const { return index.count(name) > 0; }
  int64_t count() const;
};

template <class T>
Params<T> make_params(const ModelConfig& cfg);  // zeros, correct layout
template <class T>
void init_params(const ModelConfig& cfg, Params<T>& p, uint64_t seed);

// A batch: `sequences` rows of `len` tokens each (inputs) and the next tokens (targets, -1 = ignore).
struct Batch {
  int64_t sequences = 0, len = 0;
  std::vector<int32_t> inputs, targets;  // sequences * len
};

template <class T>
struct ForwardResult {
  double loss = 0;                    // mean cross-entropy over non-ignored targets
  std::vector<double> token_loss;     // per position (sequence-major), when requested
  ag::Mat<T> logits;                  // [sequences*len, V], when requested
};

// Forward (and, when grads != nullptr, backward: grads gets one matrix per parameter).
// With `cp` (TNT context parallelism, context_parallel.h) the batch holds this rank's span of each sequence (len =
// cp->span tokens at global positions cp->offset() ..); the loss is the span's mean, and the backward starts from
// cp->loss_weight, so that grads is this rank's part of the step's gradient (the sum over the group's ranks).
template <class T>
ForwardResult<T> forward(const ModelConfig& cfg, const Params<T>& p, const Batch& batch, std::vector<ag::Mat<T>>* grads,
                         bool want_token_loss = false, bool want_logits = false, const ContextSpan* cp = nullptr);

// Safetensors I/O of the parameters (F32 on disk for float models; names and shapes as in the layout).
template <class T>
SafeTensors params_to_safetensors(const Params<T>& p);
template <class T>
void params_from_safetensors(const ModelConfig& cfg, Params<T>& p, const SafeTensors& st, const std::string& origin);

}  // namespace ttt::model
