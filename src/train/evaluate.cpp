#include "train/evaluate.h"

#include <cmath>
#include <cstdio>
#include <exception>
#include <sstream>

#include "core/error.h"

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

EvalResult evaluate(const model::ModelConfig& cfg, const model::Params<float>& params, const std::vector<int32_t>& tokens,
                    const EvalOptions& opt) {
  TTT_CHECK(opt.batches > 0, "evaluation batches must be > 0, got " << opt.batches);
  TTT_CHECK(opt.batch > 0, "evaluation batch must be > 0, got " << opt.batch);
  TTT_CHECK(opt.buckets > 0, "evaluation buckets must be > 0, got " << opt.buckets);
  const int64_t L = opt.context > 0 ? opt.context : cfg.seq_len;
  const int64_t nb = std::min(opt.buckets, L);
  const std::vector<int64_t> off = eval_offsets(int64_t(tokens.size()), opt.batches * opt.batch, L);
  const int64_t n_windows = opt.batches * opt.batch;
  for (int64_t w = 0; w < n_windows; ++w)
    for (int64_t i = 0; i <= L; ++i) {
      const int32_t x = tokens[size_t(off[size_t(w)] + i)];
      TTT_CHECK(x >= 0 && x < cfg.vocab_size, "token " << x << " at offset " << off[size_t(w)] + i
                                                       << " is outside the model's vocabulary (" << cfg.vocab_size << ")");
    }
  // One window per forward, windows in parallel (the model runs single-threaded inside each); the sums
  // below run in window order, so the result does not depend on the thread count.
  std::vector<std::vector<double>> tl(static_cast<size_t>(n_windows));
  std::exception_ptr err;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t w = 0; w < n_windows; ++w) {
    try {
      model::Batch batch;
      batch.sequences = 1;
      batch.len = L;
      const auto first = tokens.begin() + off[size_t(w)];
      batch.inputs.assign(first, first + L);
      batch.targets.assign(first + 1, first + L + 1);
      auto r = model::forward<float>(cfg, params, batch, nullptr, true, false);
      TTT_CHECK(int64_t(r.token_loss.size()) == L, "model returned " << r.token_loss.size() << " token losses, expected " << L);
      tl[size_t(w)] = std::move(r.token_loss);
    } catch (...) {
#pragma omp critical(ttt_eval_error)
      if (!err) err = std::current_exception();
    }
  }
  if (err) std::rethrow_exception(err);
  std::vector<double> bsum(size_t(nb), 0.0);
  std::vector<int64_t> bcount(size_t(nb), 0);
  double total = 0;
  int64_t count = 0;
  for (int64_t w = 0; w < n_windows; ++w)
    for (int64_t i = 0; i < L; ++i) {
      const double l = tl[size_t(w)][size_t(i)];
      const int64_t k = i * nb / L;
      bsum[size_t(k)] += l;
      bcount[size_t(k)] += 1;
      total += l;
      ++count;
    }
  EvalResult res;
  res.context = L;
  res.windows = opt.batches * opt.batch;
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
