// The CPU step engine: the composition `ttt train` has always run on the CPU — train::accumulate_gradients,
// the trainable mask, train::clip_grad_norm, train::AdamW::step — on the attached host state, in place. With
// data parallelism (set_data_parallel) the same composition over the ranks: this rank's range of sequences
// (train::accumulate_gradient_range), the ranks' gradients summed in the communicator's fixed order, and, with a
// sharded optimizer, the norm's per-tensor sums gathered and the weights all-gathered after this rank's update.
// Context parallel (set_context_parallel): the ranks of a group compute the spans of their group's sequences, and
// the same sums over all ranks combine them.
#include "backend/cpu/step_engine_cpu.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <string>

#include "backend/registry.h"
#include "core/error.h"
#include "dist/communicator.h"
#include "dist/data_parallel.h"
#include "train/evaluate.h"
#include "train/optimizer.h"
#include "train/trainer.h"

namespace ttt::backend {

namespace {

// Milliseconds spent in the step's exchanges, added to `total_ms` (which starts at 0 when `on`: several ranks).
class CommClock {
 public:
  CommClock(bool on, double& total_ms) : total_(total_ms) {
    if (on) total_ = 0;
  }
  template <class F>
  void time(F&& exchange) {
    const auto t0 = std::chrono::steady_clock::now();
    exchange();
    total_ += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  }

 private:
  double& total_;
};

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
    if (shard_) {
      std::vector<int64_t> sizes;
      for (const auto& m : params.values) sizes.push_back(m.size());
      shards_ = dist::tensor_shards(sizes, ranks_->size());
      release_foreign_moments();
    }
  }
  // The host state is the engine's state; a sharded optimizer gathers every rank's moments on rank 0.
  void sync_host(bool with_optimizer) override {
    if (!shard_ || !with_optimizer || !optimizer_) return;
    const size_t first = shards_[size_t(ranks_->rank())], last = shards_[size_t(ranks_->rank()) + 1];
    const bool root = ranks_->rank() == 0;
    std::vector<float> slice(size_t(elements(first, last))), all(root ? size_t(params_->count()) : 0);
    for (auto* moments : {&optimizer_->m(), &optimizer_->v()}) {
      float* out = slice.data();
      for (size_t i = first; i < last; ++i) out = std::copy((*moments)[i].begin(), (*moments)[i].end(), out);
      ranks_->gather(slice.data(), all.data(), shard_counts(shards_), 0);
      if (!root) continue;
      size_t at = 0;
      for (size_t i = 0; i < moments->size(); ++i) {
        const size_t n = size_t(params_->values[i].size());
        (*moments)[i].assign(all.begin() + at, all.begin() + at + n);
        at += n;
      }
    }
  }

  void set_data_parallel(dist::Communicator& ranks, bool shard_optimizer) override {
    ranks_ = ranks.size() > 1 ? &ranks : nullptr;
    shard_ = ranks_ && shard_optimizer;
  }
  void set_context_parallel(int cp, model::CpGlobal global) override {
    TTT_CHECK(cp == 1 || (ranks_ && ranks_->size() % cp == 0),
              "--context-parallel " << cp << " needs a multiple of " << cp << " ranks");
    cp_ = cp;
    cp_global_ = global;
    if (cp > 1) cp_group_ = ranks_->split(ranks_->rank() / cp);  // ranks k with the same k / cp
  }

  StepResult train_step(const std::vector<model::Batch>& micro, double lr, double clip) override {
    TTT_CHECK(params_ && optimizer_, "CPU engine: train_step before attach(params, optimizer)");
    StepResult r;
    r.grad_norm = std::numeric_limits<double>::quiet_NaN();
    if (!ranks_) {
      r.loss = train::accumulate_gradients(cfg_, *params_, micro, grads_);
    } else {
      release_foreign_moments();  // rank 0 holds them all after a checkpoint
      // Context parallel: the group of cp ranks shares its sequences, each rank one span of each (its loss terms and
      // gradient are its spans' parts; the sums below over every rank are the step's).
      const int64_t n = train::step_sequences(micro);
      const dist::SequenceRange mine = dist::rank_sequences(n, ranks_->rank() / cp_, ranks_->size() / cp_);
      model::ContextSpan span;
      if (cp_group_) {
        span = model::context_span(*cp_group_, micro.front().len);
        span.global = cp_global_;
      }
      const std::vector<double> terms =
          train::accumulate_gradient_range(cfg_, *params_, micro, mine.first, mine.last, grads_, cp_group_ ? &span : nullptr);
      std::vector<double> all_terms(static_cast<size_t>(n * cp_));
      ranks_->all_gather(terms.data(), all_terms.data(), std::vector<int64_t>(size_t(ranks_->size()), mine.last - mine.first));
      r.loss = train::sum_loss_terms(all_terms);
    }
    if (!std::isfinite(r.loss)) return r;
    // The tensors this rank finishes: all of them, or its shard.
    size_t first = 0, last = grads_.size();
    CommClock comm(ranks_ != nullptr, r.comm_wait_ms);  // nothing overlaps here: every exchange is waited for
    if (ranks_) {
      flat_.resize(size_t(params_->count()));
      flatten(grads_, 0, grads_.size(), flat_.data());
      if (shard_) {
        first = shards_[size_t(ranks_->rank())];
        last = shards_[size_t(ranks_->rank()) + 1];
        std::vector<float> slice(size_t(elements(first, last)));
        comm.time([&] { ranks_->reduce_scatter_sum(flat_.data(), slice.data(), shard_counts(shards_)); });
        unflatten(slice.data(), grads_, first, last);
      } else {
        comm.time([&] { ranks_->all_reduce_sum(flat_.data(), int64_t(flat_.size())); });
        unflatten(flat_.data(), grads_, 0, grads_.size());
      }
    }
    const auto& mask = optimizer_->trainable();
    for (size_t i = first; i < std::min(last, mask.size()); ++i)  // frozen elements: no gradient (and none in the norm)
      for (size_t j = 0; j < mask[i].size(); ++j)
        if (!mask[i][j]) grads_[i].data[j] = 0.0f;
    if (!shard_) {
      r.grad_norm = train::clip_grad_norm(grads_, clip);
    } else {
      const std::vector<double> mine = train::grad_sum_squares(grads_, first, last);
      std::vector<double> every(grads_.size());
      std::vector<int64_t> counts;
      for (int q = 0; q < ranks_->size(); ++q) counts.push_back(int64_t(shards_[size_t(q) + 1] - shards_[size_t(q)]));
      comm.time([&] { ranks_->all_gather(mine.data(), every.data(), counts); });
      r.grad_norm = train::global_norm(every);
      train::clip_to_norm(grads_, first, last, r.grad_norm, clip);
    }
    if (!std::isfinite(r.grad_norm)) return r;
    optimizer_->step(params_->values, grads_, lr, first, last);
    if (shard_) {  // every rank's updated tensors to every rank
      std::vector<float> slice(size_t(elements(first, last)));
      flatten(params_->values, first, last, slice.data());
      comm.time([&] { ranks_->all_gather(slice.data(), flat_.data(), shard_counts(shards_)); });
      unflatten(flat_.data(), params_->values, 0, params_->values.size());
    }
    r.applied = true;
    return r;
  }

  std::vector<double> token_losses(const model::Batch& batch) override {
    TTT_CHECK(params_, "CPU engine: token_losses before attach(params)");
    return train::cpu_token_losses(cfg_, *params_, batch);
  }
  int64_t eval_windows_per_call(int64_t batch) const override { return train::cpu_windows_per_call(batch); }

 private:
  // Elements of tensors [first, last).
  int64_t elements(size_t first, size_t last) const {
    int64_t n = 0;
    for (size_t i = first; i < last; ++i) n += params_->values[i].size();
    return n;
  }
  // Each rank's element count under the tensor shards.
  std::vector<int64_t> shard_counts(const std::vector<size_t>& bounds) const {
    std::vector<int64_t> counts;
    for (size_t q = 0; q + 1 < bounds.size(); ++q) counts.push_back(elements(bounds[q], bounds[q + 1]));
    return counts;
  }
  static void flatten(const std::vector<ag::Mat<float>>& m, size_t first, size_t last, float* out) {
    for (size_t i = first; i < last; ++i) out = std::copy(m[i].data.begin(), m[i].data.end(), out);
  }
  static void unflatten(const float* in, std::vector<ag::Mat<float>>& m, size_t first, size_t last) {
    for (size_t i = first; i < last; ++i) {
      std::copy(in, in + m[i].data.size(), m[i].data.begin());
      in += m[i].data.size();
    }
  }
  // ZeRO-1: the moments of the tensors other ranks own are not kept.
  void release_foreign_moments() {
    if (!shard_ || !optimizer_) return;
    const size_t first = shards_[size_t(ranks_->rank())], last = shards_[size_t(ranks_->rank()) + 1];
    for (auto* moments : {&optimizer_->m(), &optimizer_->v()})
      for (size_t i = 0; i < moments->size(); ++i)
        if ((i < first || i >= last) && !(*moments)[i].empty()) std::vector<float>().swap((*moments)[i]);
  }

  const model::ModelConfig cfg_;
  model::Params<float>* params_ = nullptr;
  train::AdamW* optimizer_ = nullptr;
  std::vector<ag::Mat<float>> grads_;
  dist::Communicator* ranks_ = nullptr;  // more than one rank, or null
  bool shard_ = false;
  int cp_ = 1;                  // context-parallel group size
  model::CpGlobal cp_global_ = model::CpGlobal::Gather;
  std::unique_ptr<dist::Communicator> cp_group_;  // this rank's context-parallel group, with cp_ > 1
  std::vector<size_t> shards_;  // tensor_shards bounds, with shard_
  std::vector<float> flat_;     // the gradient, then the weights, as one vector
};

}  // namespace

std::unique_ptr<StepEngine> make_cpu_step_engine(const model::ModelConfig& cfg, const EngineOptions& options) {
  return std::make_unique<CpuStepEngine>(cfg, options);
}

}  // namespace ttt::backend
