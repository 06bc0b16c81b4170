// The CPU step engine: the composition `ttt train` has always run on the CPU — train::accumulate_gradients,
// the trainable mask, train::clip_grad_norm, train::AdamW::step — on the attached host state, in place.
#include "backend/cpu/step_engine_cpu.h"

#include <cmath>
#include <limits>
#include <string>

#include "backend/registry.h"
#include "core/error.h"
#include "train/evaluate.h"
#include "train/optimizer.h"
#include "train/trainer.h"

namespace ttt::backend {

namespace {

class CpuStepEngine final : public StepEngine {
 public:
  CpuStepEngine(const model::ModelConfig& cfg, const EngineOptions& options) : cfg_(cfg) {
    model::validate(cfg_);
    TTT_CHECK(options.precision == Precision::FP32,
              "--precision " << precision_name(options.precision) << " applies to --device cuda; the CPU computes in fp32");
  }

  const char* device() const override { return "cpu"; }
  const model::ModelConfig& config() const override { return cfg_; }
  std::string description() const override { return device_description("cpu") + ", fp32 products"; }

  void attach(model::Params<float>& params, train::AdamW* optimizer) override {
    const auto shapes = model::parameter_shapes(cfg_);
    TTT_CHECK(params.values.size() == shapes.size() && params.names.size() == shapes.size(),
              "CPU engine: " << params.values.size() << " parameter tensors given, the config has " << shapes.size());
    for (size_t i = 0; i < shapes.size(); ++i) {
      TTT_CHECK(params.names[i] == shapes[i].first, "CPU engine: parameter " << i << " is '" << params.names[i]
                                                                              << "', the config's is '" << shapes[i].first << "'");
      TTT_CHECK(params.values[i].size() == shape_numel(shapes[i].second),
                "CPU engine: parameter '" << params.names[i] << "' has " << params.values[i].size()
                                          << " elements, its shape " << shape_str(shapes[i].second) << " has "
                                          << shape_numel(shapes[i].second));
    }
    params_ = &params;
    optimizer_ = optimizer;
  }
  void sync_host(bool) override {}  // the host state is the engine's state

  StepResult train_step(const std::vector<model::Batch>& micro, double lr, double clip) override {
    TTT_CHECK(params_ && optimizer_, "CPU engine: train_step before attach(params, optimizer)");
    StepResult r;
    r.grad_norm = std::numeric_limits<double>::quiet_NaN();
    r.loss = train::accumulate_gradients(cfg_, *params_, micro, grads_);
    if (!std::isfinite(r.loss)) return r;
    const auto& mask = optimizer_->trainable();
    for (size_t i = 0; i < mask.size(); ++i)  // frozen elements: no gradient (and none in the clipping norm)
      for (size_t j = 0; j < mask[i].size(); ++j)
        if (!mask[i][j]) grads_[i].data[j] = 0.0f;
    r.grad_norm = train::clip_grad_norm(grads_, clip);
    if (!std::isfinite(r.grad_norm)) return r;
    optimizer_->step(params_->values, grads_, lr);
    r.applied = true;
    return r;
  }

  std::vector<double> token_losses(const model::Batch& batch) override {
    TTT_CHECK(params_, "CPU engine: token_losses before attach(params)");
    return train::cpu_token_losses(cfg_, *params_, batch);
  }
  int64_t eval_windows_per_call(int64_t batch) const override { return train::cpu_windows_per_call(batch); }

 private:
  const model::ModelConfig cfg_;
  model::Params<float>* params_ = nullptr;
  train::AdamW* optimizer_ = nullptr;
  std::vector<ag::Mat<float>> grads_;
};

}  // namespace

std::unique_ptr<StepEngine> make_cpu_step_engine(const model::ModelConfig& cfg, const EngineOptions& options) {
  return std::make_unique<CpuStepEngine>(cfg, options);
}

}  // namespace ttt::backend
