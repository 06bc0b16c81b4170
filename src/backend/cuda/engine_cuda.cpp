// cuda::make_step_engine / make_streamer / operator_backends (engine_cuda.h): adapters from the backend-neutral
// interface to GpuModel, GpuStreamer and the operator backends.
#include "backend/cuda/engine_cuda.h"

#include <cmath>
#include <limits>

#include "core/error.h"
#include "backend/cuda/device.h"
#include "backend/cuda/generate_cuda.h"
#include "backend/cuda/model_cuda.h"
#include "backend/cuda/nccl_communicator.h"
#include "backend/cuda/op_backends.h"
#include "dist/communicator.h"
#include "dist/data_parallel.h"
#include "train/optimizer.h"
#include "train/trainer.h"

namespace ttt::cuda {

namespace {

class CudaStepEngine final : public backend::StepEngine {
 public:
  CudaStepEngine(const model::ModelConfig& cfg, const backend::EngineOptions& options) : options_(options) {
    reset_tracked_peak();  // report(): the most this engine held at once
    GpuModelOptions go;
    go.math = options.precision;
    go.bf16_activations = options.activations == backend::ActivationStorage::BF16;
    go.save_attention = options.recompute == backend::Recompute::SaveAttention;
    model_ = std::make_unique<GpuModel>(cfg, go);
  }

  const char* device() const override { return "cuda"; }
  const model::ModelConfig& config() const override { return model_->config(); }
  std::string description() const override {
    std::string s = device_description() + ", " + backend::precision_name(options_.precision) + " products";
    if (options_.precision == backend::Precision::BF16)
      s += std::string(", ") + backend::activation_storage_name(options_.activations) + " activations";
    s += std::string(", recompute ") + backend::recompute_name(options_.recompute);
    return s;
  }

  void attach(model::Params<float>& params, train::AdamW* optimizer) override {
    model_->upload(params);
    if (optimizer) model_->upload_optimizer(*optimizer);  // the moments and the trainable mask
    params_ = &params;
    optimizer_ = optimizer;
  }
  void sync_host(bool with_optimizer) override {
    TTT_CHECK(params_, "CUDA engine: sync_host before attach");
    model_->download(*params_);
    if (with_optimizer && optimizer_) model_->download_optimizer(*optimizer_);
  }

  // Data parallelism: this rank's sequences of each step, the gradient summed over the ranks by NCCL (the GPU
  // was chosen by the rank on its node before the engine was made). ZeRO-1 is the CPU engine's only.
  void set_data_parallel(dist::Communicator& ranks, bool shard_optimizer) override {
    if (ranks.size() == 1) return;
    TTT_CHECK(!shard_optimizer, "--shard-optimizer: the CUDA engine keeps the whole AdamW state on every GPU for now; "
                                "run without it (or on --device cpu)");
    ranks_ = &ranks;
    nccl_ = std::make_unique<NcclGroup>(ranks);
  }

  backend::StepResult train_step(const std::vector<model::Batch>& global_micro, double lr, double clip) override {
    TTT_CHECK(optimizer_, "CUDA engine: train_step before attach(params, optimizer)");
    // One process: every micro-batch; several: this rank's part, weighted by its share of the whole step.
    const std::vector<model::Batch> micro =
        ranks_ ? dist::rank_micro_batches(global_micro, ranks_->rank(), ranks_->size()) : global_micro;
    std::vector<int64_t> valid;
    for (const auto& b : micro) valid.push_back(train::valid_targets(b));
    int64_t step_valid = 0;
    for (const auto& b : global_micro) step_valid += train::valid_targets(b);
    TTT_CHECK(step_valid > 0, "the batch has no valid targets (every target is negative)");
    std::vector<double> shares = train::target_shares(valid);
    if (ranks_)
      for (size_t i = 0; i < micro.size(); ++i) shares[i] = double(valid[i]) / double(step_valid);
    backend::StepResult r;
    r.grad_norm = std::numeric_limits<double>::quiet_NaN();
    model_->zero_grad();
    for (size_t i = 0; i < micro.size(); ++i) r.loss += shares[i] * model_->forward(micro[i], true, shares[i]).loss;
    if (ranks_) {  // the step's loss: the ranks' parts summed in rank order; the gradient: NCCL's sum
      std::vector<double> parts(static_cast<size_t>(ranks_->size()));
      ranks_->all_gather(&r.loss, parts.data(), std::vector<int64_t>(parts.size(), 1));
      r.loss = train::sum_loss_terms(parts);
      nccl_->all_reduce_sum(model_->gradient_data(), model_->gradient_size());
    }
    if (!std::isfinite(r.loss)) return r;
    model_->apply_grad_mask();  // the optimizer's trainable mask, on the device since attach
    r.grad_norm = model_->clip_grad_norm(clip);
    if (!std::isfinite(r.grad_norm)) return r;
    model_->adamw_step(*optimizer_, lr);
    r.applied = true;
    return r;
  }

  std::vector<double> token_losses(const model::Batch& batch) override {
    return model_->forward(batch, false, 1.0, true).token_loss;
  }

  void synchronize() override { stream_synchronize(); }
  double time_ms(const std::function<void()>& work) override { return elapsed_ms(work); }
  nlohmann::json report() const override {
    size_t used = 0, total = 0;
    device_memory(&used, &total);
    nlohmann::json j{{"timer", "cuda events"},
                     {"gpu", device_description()},
                     {"precision", backend::precision_name(options_.precision)},
                     {"tracked_peak_bytes", tracked_peak_bytes()},
                     {"device_used_bytes", used},
                     {"device_total_bytes", total}};
    if (options_.precision == backend::Precision::BF16)
      j["activations"] = backend::activation_storage_name(options_.activations);
    return j;
  }
  bool profiles_phases() const override { return true; }
  void set_profiling(bool on) override { model_->set_profiling(on); }
  std::map<std::string, double> phase_ms() const override { return model_->phase_ms(); }

 private:
  const backend::EngineOptions options_;
  std::unique_ptr<GpuModel> model_;
  model::Params<float>* params_ = nullptr;
  train::AdamW* optimizer_ = nullptr;
  dist::Communicator* ranks_ = nullptr;  // several ranks, or null
  std::unique_ptr<NcclGroup> nccl_;
};

}  // namespace

std::unique_ptr<backend::StepEngine> make_step_engine(const model::ModelConfig& cfg, const backend::EngineOptions& options) {
  return std::make_unique<CudaStepEngine>(cfg, options);
}

std::unique_ptr<backend::Streamer> make_streamer(const model::ModelConfig& cfg, const model::Params<float>& params) {
  return std::make_unique<GpuStreamer>(cfg, params);
}

backend::OperatorBackends operator_backends() {
  return {engine::cuda_backend(), engine::tnt_cuda_backend(), operator_bench()};
}

}  // namespace ttt::cuda
