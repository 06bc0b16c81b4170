// cuda::make_step_engine / make_streamer / operator_backends (engine_cuda.h): adapters from the backend-neutral
// interface to GpuModel, GpuStreamer and the operator backends.
#include "backend/cuda/engine_cuda.h"

#include <algorithm>
#include <chrono>
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
#include "model/context_parallel.h"
#include "train/optimizer.h"
#include "train/trainer.h"
#include "core/tensor.h"

namespace ttt::cuda {

namespace {

class CudaStepEngine final : public backend::StepEngine {
 public:
  CudaStepEngine(const model::ModelConfig& cfg, const backend::EngineOptions& options) : options_(options) {
    reset_tracked_peak();  // report(): the most this engine held at once
    GpuModelOptions go;
    go.math = options.precision;
    go.bf16_activations = options.activations == backend::ActivationStorage::BF16;
    go.recompute = options.recompute;
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
    if (!with_optimizer || !optimizer_) return;
    model_->download_optimizer(*optimizer_);  // sharded: this rank's slice of the host moments
    if (shard_) gather_moments();
  }

  // Data parallelism: this rank's sequences of each step, the gradient summed over the ranks by NCCL (the GPU was
  // chosen by the rank on its node before the engine was made): in buckets overlapped with the last micro-batch's
  // backward, or, with the sharded optimizer (ZeRO-1), reduce-scattered over the ranks' flat shards after it.
  void set_gradient_buckets(int64_t bytes) override { bucket_bytes_ = bytes; }
  void set_data_parallel(dist::Communicator& ranks, bool shard_optimizer) override {
    if (ranks.size() == 1) return;
    ranks_ = &ranks;
    nccl_ = std::make_unique<NcclGroup>(ranks);
    shard_ = shard_optimizer;
    const model::ModelConfig& cfg = model_->config();
    std::vector<std::string> names;
    std::vector<int64_t> sizes;
    for (const auto& [name, shape] : model::parameter_shapes(cfg)) names.push_back(name), sizes.push_back(shape_numel(shape));
    int64_t total = 0;
    for (int64_t n : sizes) total += n;
    if (shard_) {
      shards_ = dist::flat_shards(total, ranks.size());
      model_->pad_flat_arrays(shards_.padded);
      model_->set_optimizer_range(shards_.begin(ranks.rank()), shards_.end(ranks.rank(), total));
    } else {
      buckets_ = dist::plan_gradient_buckets(sizes, dist::backward_stages(names, cfg.n_layers), bucket_bytes_);
    }
  }

  // TNT context parallelism (docs/CONTEXT_PARALLEL.md): world rank k is CP rank k % cp of data-parallel group k / cp;
  // the group's ranks get an NCCL communicator of their own (a new one initialised within the group, bootstrapped
  // over the host group of Communicator::split) for the halo exchanges and the global memory's all-gather, while
  // the gradient is still summed over every rank of the job.
  void set_context_parallel(int cp, model::CpGlobal global) override {
    model::check_context_parallel(model_->config(), cp, ranks_ ? ranks_->size() : 1);
    if (cp == 1) return;
    TTT_CHECK(options_.recompute != backend::Recompute::None,
              "--recompute none is not implemented with --context-parallel on --device cuda (use save-attention, the "
              "default, or full)");
    cp_ = cp;
    cp_host_ = ranks_->split(ranks_->rank() / cp);
    cp_nccl_ = std::make_unique<NcclGroup>(*cp_host_);
    model_->set_context_parallel(cp_nccl_.get(), global == model::CpGlobal::State);
  }

  backend::StepResult train_step(const std::vector<model::Batch>& global_micro, double lr, double clip) override {
    TTT_CHECK(optimizer_, "CUDA engine: train_step before attach(params, optimizer)");
    // One process: every micro-batch; several: this rank's part, weighted by its share of the whole step (context
    // parallel: its data-parallel group's sequences, cut to this rank's span of each).
    std::vector<model::Batch> micro =
        ranks_ ? dist::rank_micro_batches(global_micro, ranks_->rank() / cp_, ranks_->size() / cp_) : global_micro;
    if (cp_ > 1) micro = dist::span_micro_batches(micro, cp_host_->rank(), cp_);
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
    // Context parallel: no overlap, the gradient is summed after the backward (the group's NCCL exchanges run on the
    // default stream during the backward; two communicators' kernels in flight at once could wait on each other).
    const bool overlap = ranks_ && !shard_ && cp_ == 1;
    launched_ = 0;
    for (size_t i = 0; i < micro.size(); ++i) {
      // The gradients are final in the last micro-batch's backward: its stages launch the buckets.
      if (overlap && i + 1 == micro.size()) model_->set_gradient_hook([this](int stage) { launch_ready_buckets(stage); });
      r.loss += shares[i] * model_->forward(micro[i], true, shares[i], false, false, /*span=*/cp_ > 1).loss;
    }
    if (ranks_) {  // the step's loss: the ranks' parts summed in rank order; the gradient: NCCL's sum
      std::vector<double> parts(static_cast<size_t>(ranks_->size()));
      ranks_->all_gather(&r.loss, parts.data(), std::vector<int64_t>(parts.size(), 1));
      r.loss = train::sum_loss_terms(parts);
      if (overlap) {
        model_->set_gradient_hook(nullptr);
        // A backward that did not run (no valid target in this rank's last micro-batch) launched nothing: the
        // remaining buckets go now, in the same order as on every other rank.
        launch_ready_buckets(std::numeric_limits<int>::max());
        r.comm_wait_ms = nccl_->wait_overlap();
      } else {
        const double t0 = host_ms();
        if (shard_) nccl_->reduce_scatter_sum(model_->gradient_data(), shards_.per_rank);
        else nccl_->all_reduce_sum(model_->gradient_data(), model_->gradient_size());
        r.comm_wait_ms = host_ms() - t0;
      }
    }
    if (!std::isfinite(r.loss)) return r;
    model_->apply_grad_mask();  // the optimizer's trainable mask (its range), on the device since attach
    r.grad_norm = shard_ ? sharded_clip(clip) : model_->clip_grad_norm(clip);
    if (!std::isfinite(r.grad_norm)) return r;
    model_->adamw_step(*optimizer_, lr);
    if (shard_) {  // every rank's updated slice to every rank
      const double t0 = host_ms();
      nccl_->all_gather(model_->parameter_data(), shards_.per_rank);
      r.comm_wait_ms += host_ms() - t0;
    }
    r.applied = true;
    return r;
  }

  // Context parallel: every rank of the group evaluates the same windows (eval_group), each its span of them; the
  // group's span losses are gathered into whole windows.
  std::vector<double> token_losses(const model::Batch& batch) override {
    if (cp_ == 1) return model_->forward(batch, false, 1.0, true).token_loss;
    const model::Batch span = dist::span_micro_batches({batch}, cp_host_->rank(), cp_).front();
    const std::vector<double> mine = model_->forward(span, false, 1.0, true, false, /*span=*/true).token_loss;
    std::vector<double> every(size_t(cp_) * mine.size());
    cp_host_->all_gather(mine.data(), every.data(), std::vector<int64_t>(size_t(cp_), int64_t(mine.size())));
    return dist::join_spans(every, batch.sequences, span.len, cp_);
  }
  int eval_group() const override { return cp_; }

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
  int64_t bucket_bytes_ = int64_t(25) << 20;
  std::vector<dist::GradientBucket> buckets_;  // several ranks without a sharded optimizer: the launch order
  size_t launched_ = 0;                        // buckets of this step launched so far
  bool shard_ = false;
  dist::FlatShards shards_;  // with shard_
  int cp_ = 1;                                   // context-parallel group size
  std::unique_ptr<dist::Communicator> cp_host_;  // this rank's group (host side), with cp_ > 1
  std::unique_ptr<NcclGroup> cp_nccl_;           // and its NCCL communicator

  static double host_ms() {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
  }

  // The buckets whose gradients are final once the backward finished `stage`, on the communication stream; after
  // the last one, the end of compute and communication are marked (NcclGroup::finish_overlap).
  void launch_ready_buckets(int stage) {
    if (launched_ == buckets_.size()) return;
    while (launched_ < buckets_.size() && buckets_[launched_].ready <= stage) {
      const dist::GradientBucket& b = buckets_[launched_++];
      nccl_->all_reduce_after_compute(model_->gradient_data() + b.offset, b.count);
    }
    if (launched_ == buckets_.size()) nccl_->finish_overlap();
  }

  // ZeRO-1's clipping: the norm of the whole summed gradient from the ranks' sums of squares of their slices (added
  // in rank order: the unsharded norm to double rounding, not its bits), each rank scaling its slice.
  double sharded_clip(double clip) {
    const int rank = ranks_->rank();
    const double mine = model_->grad_sum_squares(shards_.begin(rank), shards_.end(rank, model_->gradient_size()));
    std::vector<double> every(static_cast<size_t>(ranks_->size()));
    ranks_->all_gather(&mine, every.data(), std::vector<int64_t>(every.size(), 1));
    double sum = 0;
    for (double s : every) sum += s;
    const double norm = std::sqrt(sum);
    if (clip > 0 && norm > clip && std::isfinite(norm))  // clip_grad_norm's rule and factor
      model_->scale_grads(float(clip / norm), shards_.begin(rank), shards_.end(rank, model_->gradient_size()));
    return norm;
  }

  // The sharded optimizer's checkpoint: every rank's slice of the moments to rank 0's host optimizer (a collective).
  void gather_moments() {
    const int64_t total = model_->gradient_size();
    const int rank = ranks_->rank();
    std::vector<int64_t> counts;
    for (int q = 0; q < ranks_->size(); ++q) counts.push_back(shards_.end(q, total) - shards_.begin(q));
    const bool root = rank == 0;
    std::vector<float> slice, all(root ? size_t(total) : 0);
    for (auto* moments : {&optimizer_->m(), &optimizer_->v()}) {
      slice.clear();
      int64_t at = 0;  // flat index of the tensor's first element
      for (const auto& t : *moments) {
        const int64_t from = std::max(at, shards_.begin(rank)), to = std::min(at + int64_t(t.size()), shards_.end(rank, total));
        if (to > from) slice.insert(slice.end(), t.begin() + (from - at), t.begin() + (to - at));
        at += int64_t(t.size());
      }
      ranks_->gather(slice.data(), all.data(), counts, 0);
      if (!root) continue;
      at = 0;
      for (auto& t : *moments) {
        std::copy(all.begin() + at, all.begin() + at + int64_t(t.size()), t.begin());
        at += int64_t(t.size());
      }
    }
  }
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
