// Shared by the GPU model's tests (test_cuda_model*.cpp): the small models they run, random parameters and batches,
// the two relative errors of the parity bounds, and training batches run on a GpuModel with what they left (losses,
// gradients, device bytes) and their bit-for-bit comparison.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "core/rng.h"
#include "model/model.h"

#ifdef TTT_HAVE_CUDA
#include "backend/cuda/device.h"  // tracked_bytes
#include "backend/cuda/model_cuda.h"
#endif

namespace ttt::cuda_model_test {

// A two-layer LaCT model small enough for float64 on the CPU: width 32, two heads of 16 (attention and memory),
// chunk 4, window 5, 13 tokens.
inline model::ModelConfig small_config() {
  model::ModelConfig c;
  c.vocab_size = 37;
  c.dim = 32;
  c.n_layers = 2;
  c.n_attn_heads = 2;  // hd 16
  c.n_mem_heads = 2;   // d 16
  c.chunk = 4;
  c.window = 5;
  c.seq_len = 13;
  c.mlp_hidden = 48;
  return c;
}

// `c` with the Titans memory the GPU runs (memory "mlp"; the config's residual, momentum and decay, which are on by
// default; no weight norm), as arch `arch` (titans or tnt).
inline model::ModelConfig with_titans_memory(model::ModelConfig c, model::Arch arch = model::Arch::Titans) {
  c.arch = arch;
  c.memory = engine::Family::MLP;
  c.weight_norm = engine::WeightNorm::None;
  return c;
}

// `c` as TNT with a global memory of chunk 8 and local memories of chunks 2 and 4 on shards of 8, over 21 tokens.
inline model::ModelConfig with_small_tnt(model::ModelConfig c) {
  c = with_titans_memory(c, model::Arch::Tnt);
  c.global_chunk = 8;
  c.local_chunks = {2, 4};
  c.shard = 8;
  c.seq_len = 21;
  return c;
}

// A model variant of the parity tests: a name and its edit of small_config().
struct ConfigVariant {
  const char* name;
  void (*edit)(model::ModelConfig&);
};

// init_params, then every parameter perturbed so that biases, offsets and norm weights are not trivial.
inline model::Params<float> random_params(const model::ModelConfig& cfg, uint64_t seed) {
  model::Params<float> p = model::make_params<float>(cfg);
  model::init_params(cfg, p, seed);
  Rng r(seed ^ 0x5eedull);
  for (auto& m : p.values)
    for (auto& x : m.data) x += float(r.normal() * 0.05);
  return p;
}

inline model::Batch random_batch(const model::ModelConfig& cfg, int64_t S, int64_t N, uint64_t seed,
                                 bool some_ignored) {
  Rng r(seed);
  model::Batch b;
  b.sequences = S;
  b.len = N;
  for (int64_t i = 0; i < S * N; ++i) {
    b.inputs.push_back(int32_t(r.below(uint64_t(cfg.vocab_size))));
    b.targets.push_back(int32_t(r.below(uint64_t(cfg.vocab_size))));
  }
  if (some_ignored) b.targets[1] = -1, b.targets[size_t(S * N - 2)] = -1;
  return b;
}

// The element count of each parameter tensor (what train::AdamW is made with).
inline std::vector<int64_t> parameter_sizes(const model::Params<float>& p) {
  std::vector<int64_t> sizes;
  for (const auto& m : p.values) sizes.push_back(m.size());
  return sizes;
}

// ||got - ref|| / ||ref|| (2-norms, in double): the measure of the bf16/tf32 bound, whose rounding (2^-8 per
// operand) makes single elements of a gradient stray further than the tensor as a whole.
template <class A, class B>
double rel_err_norm(const A& got, const B& ref) {
  double diff = 0, scale = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = double(got[i]), r = double(ref[i]);
    if (!std::isfinite(g)) return INFINITY;
    diff += (g - r) * (g - r);
    scale += r * r;
  }
  return scale > 0 ? std::sqrt(diff / scale) : std::sqrt(diff);
}

// max |got - ref| / max |ref|: the measure of the fp32 bound (every element counts).
template <class A, class B>
double rel_err(const A& got, const B& ref) {
  double diff = 0, scale = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = double(got[i]), r = double(ref[i]);
    if (!std::isfinite(g)) return INFINITY;
    diff = std::max(diff, std::fabs(g - r));
    scale = std::max(scale, std::fabs(r));
  }
  return scale > 0 ? diff / scale : diff;
}

#ifdef TTT_HAVE_CUDA

// What training batches left: each batch's loss, the accumulated gradients and, on a fresh model, the device bytes
// the model held after them.
struct TrainingOutcome {
  std::vector<double> losses;
  std::vector<ag::Mat<float>> grads;
  int64_t bytes = 0;
};

// zero_grad, then the forward and backward of each batch of `micro` (gradients scaled by grad_scale) on `gm`.
inline TrainingOutcome run_training_batches(cuda::GpuModel& gm, const std::vector<model::Batch>& micro,
                                            double grad_scale = 1.0) {
  TrainingOutcome out;
  gm.zero_grad();
  for (const model::Batch& b : micro) out.losses.push_back(gm.forward(b, true, grad_scale).loss);
  gm.download_grads(out.grads);
  return out;
}

// The same on a fresh model of `cfg` with options `o` and parameters `p`, with the device bytes it held.
inline TrainingOutcome run_on_fresh_model(const model::ModelConfig& cfg, const cuda::GpuModelOptions& o,
                                          const model::Params<float>& p, const std::vector<model::Batch>& micro,
                                          double grad_scale = 1.0) {
  const size_t before = cuda::tracked_bytes();
  cuda::GpuModel gm(cfg, o);
  gm.upload(p);
  TrainingOutcome out = run_training_batches(gm, micro, grad_scale);
  out.bytes = int64_t(cuda::tracked_bytes() - before);
  return out;
}

// `got` has the very bits of `want`: every loss and every gradient (`names`: the parameters'), and finite losses (a
// NaN on both sides would compare equal bit for bit).
inline void expect_same_bits(const TrainingOutcome& want, const TrainingOutcome& got,
                             const std::vector<std::string>& names) {
  ASSERT_EQ(got.losses.size(), want.losses.size());
  for (size_t k = 0; k < want.losses.size(); ++k) {
    EXPECT_TRUE(std::isfinite(want.losses[k])) << "loss " << k << ": " << want.losses[k];
    EXPECT_EQ(0, std::memcmp(&want.losses[k], &got.losses[k], sizeof(double)))
        << "loss " << k << ": " << want.losses[k] << " vs " << got.losses[k];
  }
  ASSERT_EQ(got.grads.size(), want.grads.size());
  for (size_t t = 0; t < want.grads.size(); ++t)
    EXPECT_EQ(0, std::memcmp(want.grads[t].data.data(), got.grads[t].data.data(),
                             sizeof(float) * want.grads[t].data.size()))
        << names[t];
}

#endif  // TTT_HAVE_CUDA

}  // namespace ttt::cuda_model_test
