#include "train/evaluate.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <sstream>

#include <omp.h>

#include "backend/engine.h"
#include "core/error.h"
#include "dist/communicator.h"

namespace ttt::train {

std::vector<int64_t> eval_offsets(int64_t n_tokens, int64_t n_windows, int64_t context) {
  TTT_CHECK(n_windows > 0, "evaluation needs at least one window, got " << n_windows);
  TTT_CHECK(context > 0, "evaluation context must be > 0, got " << context);
  TTT_CHECK(n_tokens >= context + 1, "the validation tokens (" << n_tokens << ") are fewer than one window of context + 1 = "
                                                               << context + 1 << " tokens; use a shorter context or more data");
  const int64_t span = n_tokens - context - 1;
  std::vector<int64_t> off(static_cast<size_t>(n_windows));
  for (int64_t i = 0; i < n_windows; ++i)
    off[size_t(i)] = n_windows == 1 ? 0 : int64_t((__int128)i * span / (n_windows - 1));
  return off;
}

namespace {

struct EvalPlan {
  int64_t L = 0, nb = 0, n_windows = 0;
  std::vector<int64_t> off;
};

EvalPlan plan_eval(int64_t vocab, int64_t seq_len, const std::vector<int32_t>& tokens, const EvalOptions& opt) {
  TTT_CHECK(opt.batches > 0, "evaluation batches must be > 0, got " << opt.batches);
  TTT_CHECK(opt.batch > 0, "evaluation batch must be > 0, got " << opt.batch);
  TTT_CHECK(opt.buckets > 0, "evaluation buckets must be > 0, got " << opt.buckets);
  EvalPlan pl;
  pl.L = opt.context > 0 ? opt.context : seq_len;
  pl.nb = std::min(opt.buckets, pl.L);
  pl.off = eval_offsets(int64_t(tokens.size()), opt.batches * opt.batch, pl.L);
  pl.n_windows = opt.batches * opt.batch;
  for (int64_t w = 0; w < pl.n_windows; ++w)
    for (int64_t i = 0; i <= pl.L; ++i) {
      const int32_t x = tokens[size_t(pl.off[size_t(w)] + i)];
      TTT_CHECK(x >= 0 && x < vocab, "token " << x << " at offset " << pl.off[size_t(w)] + i
                                              << " is outside the model's vocabulary (" << vocab << ")");
    }
  return pl;
}

// Windows [w0, w1) as one batch.
model::Batch window_batch(const EvalPlan& pl, const std::vector<int32_t>& tokens, int64_t w0, int64_t w1) {
  model::Batch batch;
  batch.sequences = w1 - w0;
  batch.len = pl.L;
  for (int64_t w = w0; w < w1; ++w) {
    const auto first = tokens.begin() + pl.off[size_t(w)];
    batch.inputs.insert(batch.inputs.end(), first, first + pl.L);
    batch.targets.insert(batch.targets.end(), first + 1, first + pl.L + 1);
  }
  return batch;
}

// Sums in window order: the result does not depend on how the windows were computed.
EvalResult aggregate(const EvalPlan& pl, const std::vector<std::vector<double>>& tl) {
  const int64_t L = pl.L, nb = pl.nb;
  std::vector<double> bsum(size_t(nb), 0.0);
  std::vector<int64_t> bcount(size_t(nb), 0);
  double total = 0;
  int64_t count = 0;
  for (int64_t w = 0; w < pl.n_windows; ++w) {
    TTT_CHECK(int64_t(tl[size_t(w)].size()) == L, "model returned " << tl[size_t(w)].size()
                                                                   << " token losses for a window, expected " << L);
    for (int64_t i = 0; i < L; ++i) {
      const double l = tl[size_t(w)][size_t(i)];
      const int64_t k = i * nb / L;
      bsum[size_t(k)] += l;
      bcount[size_t(k)] += 1;
      total += l;
      ++count;
    }
  }
  EvalResult res;
  res.context = L;
  res.windows = pl.n_windows;
  res.tokens = count;
  res.loss = total / double(count);
  res.bpb = res.loss / std::log(2.0);
  for (int64_t k = 0; k < nb; ++k) {
    EvalBucket bk;
    // Bucket k holds positions i with floor(i * nb / L) == k.
    bk.start = (k * L + nb - 1) / nb;
    bk.end = ((k + 1) * L + nb - 1) / nb;
    bk.tokens = bcount[size_t(k)];
    bk.loss = bk.tokens ? bsum[size_t(k)] / double(bk.tokens) : 0.0;
    bk.bpb = bk.loss / std::log(2.0);
    res.buckets.push_back(bk);
  }
  return res;
}

}  // namespace

std::vector<double> cpu_token_losses(const model::ModelConfig& cfg, const model::Params<float>& params,
                                     const model::Batch& batch) {
  const int64_t S = batch.sequences, L = batch.len;
  TTT_CHECK(S > 0 && L > 0 && int64_t(batch.inputs.size()) == S * L && int64_t(batch.targets.size()) == S * L,
            "evaluation: malformed batch of " << S << " x " << L << " tokens");
  std::vector<double> out(size_t(S * L));
  std::exception_ptr err;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t s = 0; s < S; ++s) {
    try {
      model::Batch one;
      one.sequences = 1;
      one.len = L;
      one.inputs.assign(batch.inputs.begin() + s * L, batch.inputs.begin() + (s + 1) * L);
      one.targets.assign(batch.targets.begin() + s * L, batch.targets.begin() + (s + 1) * L);
      const auto r = model::forward<float>(cfg, params, one, nullptr, true, false);
      TTT_CHECK(int64_t(r.token_loss.size()) == L, "model returned " << r.token_loss.size()
                                                                    << " token losses for a window, expected " << L);
      std::copy(r.token_loss.begin(), r.token_loss.end(), out.begin() + s * L);
    } catch (...) {
#pragma omp critical(ttt_eval_error)
      if (!err) err = std::current_exception();
    }
  }
  if (err) std::rethrow_exception(err);
  return out;
}

int64_t cpu_windows_per_call(int64_t batch) { return std::max<int64_t>(batch, omp_get_max_threads()); }

EvalResult evaluate(const model::ModelConfig& cfg, const model::Params<float>& params, const std::vector<int32_t>& tokens,
                    const EvalOptions& opt) {
  return evaluate_with([&](const model::Batch& b) { return cpu_token_losses(cfg, params, b); }, cfg.vocab_size,
                       cfg.seq_len, tokens, opt, cpu_windows_per_call(opt.batch));
}

EvalResult evaluate(backend::StepEngine& engine, const std::vector<int32_t>& tokens, const EvalOptions& opt,
                    dist::Communicator* ranks) {
  const model::ModelConfig& cfg = engine.config();
  return evaluate_with([&](const model::Batch& b) { return engine.token_losses(b); }, cfg.vocab_size, cfg.seq_len,
                       tokens, opt, engine.eval_windows_per_call(opt.batch), ranks);
}

EvalResult evaluate_with(const BatchTokenLosses& losses, int64_t vocab, int64_t seq_len,
                         const std::vector<int32_t>& tokens, const EvalOptions& opt, int64_t windows_per_call,
                         dist::Communicator* ranks) {
  const EvalPlan pl = plan_eval(vocab, seq_len, tokens, opt);
  const int64_t group = windows_per_call > 0 ? windows_per_call : opt.batch;
  std::vector<std::vector<double>> tl(static_cast<size_t>(pl.n_windows));
  // This rank's windows [first, last): all of them in one process.
  const int n_ranks = ranks ? ranks->size() : 1;
  const std::vector<int64_t> windows = dist::even_counts(pl.n_windows, n_ranks);
  int64_t first = 0;
  for (int r = 0; r < (ranks ? ranks->rank() : 0); ++r) first += windows[size_t(r)];
  const int64_t last = first + windows[size_t(ranks ? ranks->rank() : 0)];
  for (int64_t w0 = first; w0 < last; w0 += group) {
    const int64_t w1 = std::min(last, w0 + group);
    const std::vector<double> all = losses(window_batch(pl, tokens, w0, w1));
    TTT_CHECK(int64_t(all.size()) == (w1 - w0) * pl.L, "evaluation: " << all.size() << " token losses for "
                                                                      << (w1 - w0) * pl.L << " positions");
    for (int64_t w = w0; w < w1; ++w)
      tl[size_t(w)].assign(all.begin() + (w - w0) * pl.L, all.begin() + (w - w0 + 1) * pl.L);
  }
  if (n_ranks > 1) {
    std::vector<double> mine, every(size_t(pl.n_windows * pl.L));
    for (int64_t w = first; w < last; ++w) mine.insert(mine.end(), tl[size_t(w)].begin(), tl[size_t(w)].end());
    std::vector<int64_t> counts;
    for (int64_t c : windows) counts.push_back(c * pl.L);
    ranks->all_gather(mine.data(), every.data(), counts);
    for (int64_t w = 0; w < pl.n_windows; ++w)
      tl[size_t(w)].assign(every.begin() + w * pl.L, every.begin() + (w + 1) * pl.L);
  }
  return aggregate(pl, tl);
}

std::string buckets_csv(const EvalResult& r) {
  std::ostringstream os;
  os << "bucket_start,bucket_end,loss,bpb,tokens\n";
  char buf[160];
  for (const auto& b : r.buckets) {
    std::snprintf(buf, sizeof buf, "%lld,%lld,%.6f,%.6f,%lld\n", (long long)b.start, (long long)b.end, b.loss, b.bpb,
                  (long long)b.tokens);
    os << buf;
  }
  return os.str();
}

}  // namespace ttt::train
