// The GPU model (model_cuda_impl.h): TNT context parallelism (docs/CONTEXT_PARALLEL.md; host-side layout planning
// in backend/context_parallel_plan.h). The attention's halo: keys and values exchanged with the neighbouring ranks
// and their gradients returned. The global memory's chain over the whole sequence: its inputs all-gathered and run
// over the prefix (--cp-global gather), or its state passed from rank to rank (--cp-global state).
#include "backend/cuda/model_cuda_impl.h"

#include "backend/cuda/elementwise_kernels.h"
#include "backend/cuda/layout_kernels.h"
#include "backend/cuda/nccl_communicator.h"
#include "backend/cuda/rope_kernels.h"

namespace ttt::cuda {

// ---- context parallelism: the attention's halo ------------------------------------------------------------

// Host-planned block copies (backend/context_parallel_plan.h) on the device.
void GpuModel::Impl::run_copies(const std::vector<backend::BlockCopy>& copies, const float* src, float* dst,
                                bool accumulate) {
  for (const backend::BlockCopy& c : copies)
    mk::copy2d(src + c.src, c.lds, dst + c.dst, c.ldd, c.rows, c.cols, accumulate);
}
std::vector<backend::BlockCopy> GpuModel::Impl::rows_to(const backend::RowBlock& from, const backend::RowBlock& to) {
  return backend::copy_rows(from, to);
}

// RoPE of the attention's q and k from qkv into qa, ka. With a halo (context parallel, halo_in > 0) each sequence
// takes X = halo_in + N rows there (hp's extended layout): halo_in placeholder queries (zeros; their outputs are
// never read) and the previous rank's keys in front of this rank's rows, so the unchanged attention kernel sees
// every key a query's window reaches (attention_values does the same for v). A layer's first forward exchanges the
// halo; the backward's recomputation reuses what it received (halo_kept).
void GpuModel::Impl::attention_rope(int64_t l, const float* q, const float* k, const float* v, const int64_t* pos,
                                    int64_t S, int64_t N, bool recompute) {
  const int64_t rows = S * N;
  if (halo_in == 0) {
    rope_forward(q, 3 * D, act.qa, D, pos, rows, Ha, hd, cfg.rope_theta);
    rope_forward(k, 3 * D, act.ka, D, pos, rows, Ha, hd, cfg.rope_theta);
  } else {
    const int64_t h = halo_in, X = hp.X();
    for (int64_t s = 0; s < S; ++s) {
      rope_forward(q + s * N * 3 * D, 3 * D, act.qa + (s * X + h) * D, D, pos + s * N, N, Ha, hd, cfg.rope_theta);
      rope_forward(k + s * N * 3 * D, 3 * D, act.ka + (s * X + h) * D, D, pos + s * N, N, Ha, hd, cfg.rope_theta);
    }
    TTT_CUDA_CHECK(cudaMemset2DAsync(act.qa, sizeof(float) * size_t(X * D), 0, sizeof(float) * size_t(h * D),
                                     size_t(S), nullptr));
  }
  if (split && !recompute) exchange_halo(l, v);
  if (halo_in > 0) run_copies(rows_to(hp.buffer(halo_in), hp.extended_halo()), halo_kept[size_t(l)].p(), act.ka);
}
// The attention's v: qkv's (leading dimension 3 D), or with a halo the received values then this rank's in xv.
std::pair<const float*, int64_t> GpuModel::Impl::attention_values(int64_t l, const float* v) {
  if (halo_in == 0) return {v, 3 * D};
  const float* kept = halo_kept[size_t(l)].p();
  run_copies(rows_to(hp.buffer(halo_in, hp.S * halo_in * D), hp.extended_halo()), kept, cpb.xv);
  run_copies(rows_to(hp.plain(3 * D), hp.extended()), v, cpb.xv);
  return {cpb.xv, D};
}
// Sends the last `halo` keys (after RoPE: at their global positions) and values of every sequence to the next
// CP rank and receives the previous rank's into halo_kept[l].
void GpuModel::Impl::exchange_halo(int64_t l, const float* v) {
  const int64_t h = halo, n = hp.buffer_floats();
  if (h == 0) return;
  run_copies(rows_to(hp.extended_tail(), hp.buffer(h)), act.ka, cpb.halo_send);
  run_copies(rows_to(hp.plain_tail(3 * D), hp.buffer(h, hp.S * h * D)), v, cpb.halo_send);
  std::vector<NcclGroup::Transfer> sends, receives;
  if (cp_rank + 1 < cp_ranks) sends.push_back({cp_rank + 1, cpb.halo_send, n});
  if (cp_rank > 0) receives.push_back({cp_rank - 1, halo_kept[size_t(l)].p(), n});
  cp_group->exchange(sends, receives, "halo exchange of the attention's keys and values");
}
// The backward's half: the halo rows' dk, dv (in dz, dzx: layer_backward) go back to the previous rank; the next
// rank's are added to this rank's tail rows of dk (after RoPE, before its adjoint) and dv.
void GpuModel::Impl::return_halo_gradient(float* dqkv) {
  const int64_t h = halo, n = hp.buffer_floats();
  if (h == 0) return;
  if (halo_in > 0) {
    run_copies(rows_to(hp.extended_halo(), hp.buffer(h)), grad.dz, cpb.halo_send);
    run_copies(rows_to(hp.extended_halo(), hp.buffer(h, hp.S * h * D)), grad.dzx, cpb.halo_send);
  }
  const bool from_next = cp_rank + 1 < cp_ranks;
  std::vector<NcclGroup::Transfer> sends, receives;
  if (cp_rank > 0) sends.push_back({cp_rank - 1, cpb.halo_send, n});
  if (from_next) receives.push_back({cp_rank + 1, cpb.halo_recv, n});
  cp_group->exchange(sends, receives, "return of the halo's key and value gradients");
  if (!from_next) return;
  run_copies(rows_to(hp.buffer(h), hp.plain_tail(D)), cpb.halo_recv, grad.dka, /*accumulate=*/true);
  run_copies(rows_to(hp.buffer(h, hp.S * h * D), hp.plain_tail(3 * D)), cpb.halo_recv, dqkv + 2 * D,
             /*accumulate=*/true);
}

// ---- context parallelism: the global memory over the prefix -------------------------------------------------

// The runners of a split batch of S spans of N tokens: the global memory over P = cp_rank + 1 spans, the local
// memories (if any) over this span.
GpuModel::Impl::SplitRunners& GpuModel::Impl::split_runners(int64_t S, int64_t N) {
  return cached_runner(split_cache, S, N, [&] { return make_split_runners(S, N); });
}
std::unique_ptr<GpuModel::Impl::SplitRunners> GpuModel::Impl::make_split_runners(int64_t S, int64_t N) {
  const TitansOptions to = titans_options();
  const backend::GpuSplitShapes shapes = backend::gpu_split_shapes(cfg, S, N, cp_rank, cp_ranks, pass_state);
  auto r = std::make_unique<SplitRunners>();
  TitansOptions global_options = to;
  if (pass_state) global_options.kernel = titans::KernelChoice::Batched;  // the persistent kernels take no state
  r->global = std::make_unique<TitansRunner<float>>(shapes.global, /*with_grad=*/true, global_options);
  if (shapes.has_local) r->local = std::make_unique<TntRunner<float>>(shapes.local, /*with_grad=*/true, to);
  return r;
}
// The six parts [q | k | v | theta | eta | alpha] of the global memory's quantities at `base`, a packed span
// (spans = 1) or the prefix (spans = P): backend::global_part_offsets.
std::array<float*, 6> GpuModel::Impl::global_parts(float* base, int64_t spans, int64_t S, int64_t N) const {
  const std::array<int64_t, 6> at = backend::global_part_offsets(S * H, N, d, spans);
  std::array<float*, 6> parts{};
  for (size_t i = 0; i < 6; ++i) parts[i] = base + at[i];
  return parts;
}
// The branch's forward with the global memory's chain over the whole sequence: every rank's span of its inputs
// all-gathered, the chain run from the sequence's start through this span, its rows of the output kept and added
// to the local memories' output.
void GpuModel::Impl::global_split_forward(const titans::TntInputs<float>& in, int64_t S, int64_t N) {
  const int64_t B = S * H, BHN = B * N, RD = BHN * d, U = backend::global_floats(B, N, d, 1), P = cp_rank + 1;
  SplitRunners& run = split_runners(S, N);
  const std::array<const float*, 6> own = {in.q, in.k, in.v, in.mems[0].theta, in.mems[0].eta, in.mems[0].alpha};
  const std::array<float*, 6> packed = global_parts(cpb.gsend, 1, S, N);
  for (size_t i = 0; i < 6; ++i)
    TTT_CUDA_CHECK(cudaMemcpyAsync(packed[i], own[i], sizeof(float) * size_t(i < 3 ? RD : BHN),
                                   cudaMemcpyDeviceToDevice, nullptr));
  cp_group->all_gather_from(cpb.gsend, cpb.gstage, U, "all-gather of the global memory's inputs");
  // The prefix's inputs overwrite gsend (sent already), in place for the backward.
  for (int64_t j = 0; j < P; ++j) run_copies(backend::global_span_copies(B, N, d, P, j, true), cpb.gstage + j * U, cpb.gsend);
  const std::array<float*, 6> p = global_parts(cpb.gsend, P, S, N);
  titans::MemoryInputs<float> g{p[0], p[1], p[2], in.mems[0].w1, in.mems[0].w2, p[3], p[4], p[5]};
  run.global->forward(g, cpb.po);
  if (run.local) {
    titans::TntInputs<float> local{in.q, in.k, in.v, {in.mems.begin() + 1, in.mems.end()}};
    run.local->forward(local, act.oT);
  } else {
    TTT_CUDA_CHECK(cudaMemsetAsync(act.oT, 0, sizeof(float) * size_t(RD), nullptr));
  }
  // This rank's rows of the prefix's output: span P - 1 of the prefix [B, P N, d].
  run_copies(rows_to({B, P * N, (P - 1) * N, N, d, d, 0}, {B, N, 0, N, d, d, 0}), cpb.po, act.oT, /*accumulate=*/true);
}
// Its adjoint: d(output) over the prefix is zero but this rank's rows; the gradient of every span's inputs goes
// to the span's owner, which sums what it receives in CP rank order (its own first: the ranks before it send
// nothing) and adds it to the local memories' q, k, v gradients.
void GpuModel::Impl::global_split_backward(const titans::TntGrads<float>& og, int64_t S, int64_t N) {
  const int64_t B = S * H, BHN = B * N, RD = BHN * d, U = backend::global_floats(B, N, d, 1), P = cp_rank + 1;
  SplitRunners& run = split_runners(S, N);
  TTT_CUDA_CHECK(cudaMemsetAsync(cpb.po, 0, sizeof(float) * size_t(P * RD), nullptr));
  run_copies(rows_to({B, N, 0, N, d, d, 0}, {B, P * N, (P - 1) * N, N, d, d, 0}), grad.doT, cpb.po);
  // The prefix's input gradients in gstage (free since the forward unpacked it); its inputs stay in gsend until
  // the runner's backward is done, then gsend takes each span's gradient, packed.
  const std::array<float*, 6> p = global_parts(cpb.gstage, P, S, N);
  titans::MemoryGrads<float> g{p[0], p[1], p[2], og.mems[0].w1, og.mems[0].w2, p[3], p[4], p[5]};
  run.global->backward(cpb.po, g);
  if (run.local) {
    titans::TntGrads<float> local{og.q, og.k, og.v, {og.mems.begin() + 1, og.mems.end()}};
    run.local->backward(grad.doT, local);
  } else {
    for (float* x : {og.q, og.k, og.v}) TTT_CUDA_CHECK(cudaMemsetAsync(x, 0, sizeof(float) * size_t(RD), nullptr));
  }
  for (int64_t j = 0; j < P; ++j) run_copies(backend::global_span_copies(B, N, d, P, j, false), cpb.gstage, cpb.gsend + j * U);
  std::vector<NcclGroup::Transfer> sends, receives;
  for (int j = 0; j < cp_rank; ++j) sends.push_back({j, cpb.gsend + j * U, U});
  for (int i = cp_rank + 1; i < cp_ranks; ++i) receives.push_back({i, cpb.gstage + i * U, U});
  cp_group->exchange(sends, receives, "return of the global memory's input gradients");
  float* mine = cpb.gsend + cp_rank * U;
  for (int i = cp_rank + 1; i < cp_ranks; ++i) mk::axpy(mine, cpb.gstage + i * U, 1.0f, U);
  const std::array<float*, 6> sum = global_parts(mine, 1, S, N);
  mk::axpy(og.q, sum[0], 1.0f, RD);
  mk::axpy(og.k, sum[1], 1.0f, RD);
  mk::axpy(og.v, sum[2], 1.0f, RD);
  const std::array<float*, 3> gates = {og.mems[0].theta, og.mems[0].eta, og.mems[0].alpha};
  for (size_t i = 0; i < 3; ++i)
    TTT_CUDA_CHECK(cudaMemcpyAsync(gates[i], sum[3 + i], sizeof(float) * size_t(BHN), cudaMemcpyDeviceToDevice, nullptr));
}

// ---- context parallelism: the global memory's state passed from rank to rank (--cp-global state) ---------------

// The branch's forward with the global memory's chain over this span from the state rank cp_rank - 1 hands over
// (rank 0: the learned W0 and zero momentum); its exit state goes to rank cp_rank + 1 at once. The chain orders
// the ranks, so a rank that waits for a state runs its local memories first and one that sends runs its global
// memory first. The recomputation starts from the kept entry state (state_kept[l]) and exchanges nothing.
void GpuModel::Impl::global_state_forward(int64_t l, const titans::TntInputs<float>& in, int64_t S, int64_t N,
                                          bool recompute) {
  const int64_t RD = S * H * N * d, state = dims.state;
  const bool momentum = branch.memories[0].config.momentum;
  const int64_t weights = momentum ? state / 2 : state;  // [W1 | W2] per sequence-head, then the momentum
  SplitRunners& run = split_runners(S, N);
  const bool receives = cp_rank > 0, sends = cp_rank + 1 < cp_ranks;
  float* entry = receives ? state_kept[size_t(l)].p() : nullptr;
  cp_group->wait_sends();  // state_send may still be on its way (the previous layer's)
  bool locals_done = false;
  auto run_locals = [&] {
    if (run.local) {
      titans::TntInputs<float> local{in.q, in.k, in.v, {in.mems.begin() + 1, in.mems.end()}};
      run.local->forward(local, act.oT);
    } else {
      TTT_CUDA_CHECK(cudaMemsetAsync(act.oT, 0, sizeof(float) * size_t(RD), nullptr));
    }
    locals_done = true;
  };
  if (receives && !recompute) {
    run_locals();
    cp_group->exchange({}, {{cp_rank - 1, entry, state}}, "receive of the global memory's state from the previous rank");
  }
  titans::MemoryInputs<float> g{in.q, in.k, in.v, in.mems[0].w1, in.mems[0].w2, in.mems[0].theta, in.mems[0].eta,
                                in.mems[0].alpha};
  if (receives) g.entry_W = entry, g.entry_S = momentum ? entry + weights : nullptr;
  if (sends) g.exit_W = cpb.state_send, g.exit_S = momentum ? cpb.state_send + weights : nullptr;
  run.global->forward(g, cpb.po);
  // Sent without holding this rank up: the next rank wants it after its own local memories.
  if (sends && !recompute) cp_group->send_async({cp_rank + 1, cpb.state_send, state}, "pass of the global memory's state to the next rank");
  if (!locals_done) run_locals();
  mk::axpy(act.oT, cpb.po, 1.0f, RD);
}
// Its adjoint, mirrored: the exit state's adjoint comes from rank cp_rank + 1 (zero on the last rank), the entry
// state's goes to rank cp_rank - 1; on rank 0 it is the gradient of W0 (the runner's w1 / w2 gradient), which the
// other ranks do not add to (their initial state is the received one). The input gradients go to the locals'.
void GpuModel::Impl::global_state_backward(const titans::TntGrads<float>& og, int64_t S, int64_t N) {
  const int64_t B = S * H, BHN = B * N, RD = BHN * d, state = dims.state;
  const bool momentum = branch.memories[0].config.momentum;
  const int64_t weights = momentum ? state / 2 : state;
  SplitRunners& run = split_runners(S, N);
  const bool receives = cp_rank + 1 < cp_ranks, sends = cp_rank > 0;
  cp_group->wait_sends();
  bool locals_done = false;
  auto run_locals = [&] {
    if (run.local) {
      titans::TntGrads<float> local{og.q, og.k, og.v, {og.mems.begin() + 1, og.mems.end()}};
      run.local->backward(grad.doT, local);
    } else {
      for (float* x : {og.q, og.k, og.v}) TTT_CUDA_CHECK(cudaMemsetAsync(x, 0, sizeof(float) * size_t(RD), nullptr));
    }
    locals_done = true;
  };
  if (receives) {
    run_locals();
    cp_group->exchange({}, {{cp_rank + 1, cpb.state_recv, state}},
                       "receive of the global memory's state adjoint from the next rank");
  }
  const std::array<float*, 6> p = global_parts(cpb.gsend, 1, S, N);  // q, k, v gradients of the span
  titans::MemoryGrads<float> g{p[0], p[1], p[2], og.mems[0].w1, og.mems[0].w2, og.mems[0].theta, og.mems[0].eta,
                               og.mems[0].alpha};
  if (receives) g.exit_dW = cpb.state_recv, g.exit_dS = momentum ? cpb.state_recv + weights : nullptr;
  if (sends) g.entry_dW = cpb.state_send, g.entry_dS = momentum ? cpb.state_send + weights : nullptr;
  run.global->backward(grad.doT, g);
  if (sends) {
    cp_group->send_async({cp_rank - 1, cpb.state_send, state},
                         "return of the global memory's state adjoint to the previous rank");
    // W0 entered this rank's chain only through the previous ranks: its gradient is theirs.
    const int64_t W = B * dh * d;
    TTT_CUDA_CHECK(cudaMemsetAsync(og.mems[0].w1, 0, sizeof(float) * size_t(W), nullptr));
    TTT_CUDA_CHECK(cudaMemsetAsync(og.mems[0].w2, 0, sizeof(float) * size_t(W), nullptr));
  }
  if (!locals_done) run_locals();
  mk::axpy(og.q, p[0], 1.0f, RD);
  mk::axpy(og.k, p[1], 1.0f, RD);
  mk::axpy(og.v, p[2], 1.0f, RD);
}

}  // namespace ttt::cuda
