#include "train/evaluate.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <limits>
#include <sstream>

#include <omp.h>

#include "backend/engine.h"
#include "core/error.h"
#include "data/tokens.h"
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

EvalPlan plan_eval(int64_t vocab, int64_t seq_len, const data::TokenSplit& tokens, const EvalOptions& opt) {
  TTT_CHECK(opt.batches > 0, "evaluation batches must be > 0, got " << opt.batches);
  TTT_CHECK(opt.batch > 0, "evaluation batch must be > 0, got " << opt.batch);
  TTT_CHECK(opt.buckets > 0, "evaluation buckets must be > 0, got " << opt.buckets);
  EvalPlan pl;
  pl.L = opt.context > 0 ? opt.context : seq_len;
  pl.nb = std::min(opt.buckets, pl.L);
  pl.off = eval_offsets(tokens.size(), opt.batches * opt.batch, pl.L);
  pl.n_windows = opt.batches * opt.batch;
  TTT_CHECK(opt.token_bytes.empty() || opt.token_bytes.size() >= tokens.vocab(),
            "evaluation: the token byte table has " << opt.token_bytes.size() << " entries for a vocabulary of "
                                                    << tokens.vocab());
  std::vector<int32_t> window(size_t(pl.L + 1));
  for (int64_t w = 0; w < pl.n_windows; ++w) {
    tokens.read(pl.off[size_t(w)], pl.L + 1, window.data());
    for (int64_t i = 0; i <= pl.L; ++i) {
      const int32_t x = window[size_t(i)];
      TTT_CHECK(x >= 0 && x < vocab, "token " << x << " at offset " << pl.off[size_t(w)] + i
                                              << " is outside the model's vocabulary (" << vocab << ")");
    }
  }
  return pl;
}

// Appends the window of batch.len inputs from `start` (and its targets, one token later) to the batch.
void append_window(model::Batch& batch, const data::TokenSplit& tokens, int64_t start) {
  std::vector<int32_t> window(size_t(batch.len + 1));
  tokens.read(start, batch.len + 1, window.data());
  batch.inputs.insert(batch.inputs.end(), window.begin(), window.begin() + batch.len);
  batch.targets.insert(batch.targets.end(), window.begin() + 1, window.end());
  ++batch.sequences;
}

// Windows [w0, w1) as one batch.
model::Batch window_batch(const EvalPlan& pl, const data::TokenSplit& tokens, int64_t w0, int64_t w1) {
  model::Batch batch;
  batch.len = pl.L;
  for (int64_t w = w0; w < w1; ++w) append_window(batch, tokens, pl.off[size_t(w)]);
  return batch;
}

// The per-token losses of a batch, checked for their count.
std::vector<double> batch_losses(const BatchTokenLosses& losses, const model::Batch& batch) {
  std::vector<double> all = losses(batch);
  TTT_CHECK(int64_t(all.size()) == batch.sequences * batch.len,
            "evaluation: " << all.size() << " token losses for " << batch.sequences * batch.len << " positions");
  return all;
}

// Bits per byte of `nats` over `bytes` text bytes; NaN when there is no byte table or no byte.
double bits_per_byte(double nats, uint64_t bytes, bool have_table) {
  return have_table && bytes > 0 ? nats / std::log(2.0) / double(bytes) : std::numeric_limits<double>::quiet_NaN();
}

// Sums in window order: the result does not depend on how the windows were computed.
EvalResult aggregate(const EvalPlan& pl, const std::vector<std::vector<double>>& tl, const data::TokenSplit& tokens,
                     const std::vector<uint32_t>& token_bytes) {
  const int64_t L = pl.L, nb = pl.nb;
  const bool have_table = !token_bytes.empty();
  std::vector<double> bsum(size_t(nb), 0.0);
  std::vector<int64_t> bcount(size_t(nb), 0);
  std::vector<uint64_t> bbytes(size_t(nb), 0);
  double total = 0;
  int64_t count = 0;
  uint64_t bytes = 0;
  std::vector<int32_t> targets(static_cast<size_t>(L), 0);
  for (int64_t w = 0; w < pl.n_windows; ++w) {
    TTT_CHECK(int64_t(tl[size_t(w)].size()) == L, "model returned " << tl[size_t(w)].size()
                                                                   << " token losses for a window, expected " << L);
    if (have_table) tokens.read(pl.off[size_t(w)] + 1, L, targets.data());
    for (int64_t i = 0; i < L; ++i) {
      const double l = tl[size_t(w)][size_t(i)];
      const int64_t k = i * nb / L;
      const uint64_t b = have_table ? token_bytes[size_t(targets[size_t(i)])] : 0;
      bsum[size_t(k)] += l;
      bcount[size_t(k)] += 1;
      bbytes[size_t(k)] += b;
      total += l;
      ++count;
      bytes += b;
    }
  }
  EvalResult res;
  res.context = L;
  res.windows = pl.n_windows;
  res.tokens = count;
  res.bytes = bytes;
  res.loss = total / double(count);
  res.bits_per_token = res.loss / std::log(2.0);
  res.perplexity = std::exp(res.loss);
  res.bpb = bits_per_byte(total, bytes, have_table);
  for (int64_t k = 0; k < nb; ++k) {
    EvalBucket bk;
    // Bucket k holds positions i with floor(i * nb / L) == k.
    bk.start = (k * L + nb - 1) / nb;
    bk.end = ((k + 1) * L + nb - 1) / nb;
    bk.tokens = bcount[size_t(k)];
    bk.loss = bk.tokens ? bsum[size_t(k)] / double(bk.tokens) : 0.0;
    bk.bpb = bits_per_byte(bsum[size_t(k)], bbytes[size_t(k)], have_table);
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

EvalResult evaluate(const model::ModelConfig& cfg, const model::Params<float>& params, const data::TokenSplit& tokens,
                    const EvalOptions& opt) {
  return evaluate_with([&](const model::Batch& b) { return cpu_token_losses(cfg, params, b); }, cfg.vocab_size,
                       cfg.seq_len, tokens, opt, cpu_windows_per_call(opt.batch));
}

EvalResult evaluate(const model::ModelConfig& cfg, const model::Params<float>& params, const std::vector<int32_t>& tokens,
                    const EvalOptions& opt) {
  return evaluate(cfg, params, data::TokenSplit::view(tokens, uint32_t(cfg.vocab_size)), opt);
}

EvalResult evaluate(backend::StepEngine& engine, const data::TokenSplit& tokens, const EvalOptions& opt,
                    dist::Communicator* ranks) {
  const model::ModelConfig& cfg = engine.config();
  return evaluate_with([&](const model::Batch& b) { return engine.token_losses(b); }, cfg.vocab_size, cfg.seq_len,
                       tokens, opt, engine.eval_windows_per_call(opt.batch), ranks, ranks ? engine.eval_group() : 1);
}

EvalResult evaluate_with(const BatchTokenLosses& losses, int64_t vocab, int64_t seq_len, const data::TokenSplit& tokens,
                         const EvalOptions& opt, int64_t windows_per_call, dist::Communicator* ranks, int group) {
  const EvalPlan pl = plan_eval(vocab, seq_len, tokens, opt);
  const int64_t per_call = windows_per_call > 0 ? windows_per_call : opt.batch;
  std::vector<std::vector<double>> tl(static_cast<size_t>(pl.n_windows));
  // This rank's group's windows [first, last): all of them in one process.
  const int n_ranks = ranks ? ranks->size() : 1;
  TTT_CHECK(group >= 1 && n_ranks % group == 0, "evaluation: groups of " << group << " ranks over " << n_ranks);
  const int n_groups = n_ranks / group, my_group = (ranks ? ranks->rank() : 0) / group;
  const std::vector<int64_t> windows = dist::even_counts(pl.n_windows, n_groups);
  int64_t first = 0;
  for (int g = 0; g < my_group; ++g) first += windows[size_t(g)];
  const int64_t last = first + windows[size_t(my_group)];
  for (int64_t w0 = first; w0 < last; w0 += per_call) {
    const int64_t w1 = std::min(last, w0 + per_call);
    const std::vector<double> all = batch_losses(losses, window_batch(pl, tokens, w0, w1));
    for (int64_t w = w0; w < w1; ++w)
      tl[size_t(w)].assign(all.begin() + (w - w0) * pl.L, all.begin() + (w - w0 + 1) * pl.L);
  }
  if (n_ranks > 1) {
    // The first rank of each group contributes its group's windows (the others hold the same).
    const bool leader = ranks->rank() % group == 0;
    std::vector<double> mine, every(size_t(pl.n_windows * pl.L));
    if (leader)
      for (int64_t w = first; w < last; ++w) mine.insert(mine.end(), tl[size_t(w)].begin(), tl[size_t(w)].end());
    std::vector<int64_t> counts;
    for (int r = 0; r < n_ranks; ++r) counts.push_back(r % group == 0 ? windows[size_t(r / group)] * pl.L : 0);
    ranks->all_gather(mine.data(), every.data(), counts);
    for (int64_t w = 0; w < pl.n_windows; ++w)
      tl[size_t(w)].assign(every.begin() + w * pl.L, every.begin() + (w + 1) * pl.L);
  }
  return aggregate(pl, tl, tokens, opt.token_bytes);
}

std::string eval_summary(const EvalResult& r) {
  char buf[200];
  std::snprintf(buf, sizeof buf, "val_loss %.4f nats/token | ppl %.3f", r.loss, r.perplexity);
  std::string s = buf;
  if (r.has_bpb()) {
    std::snprintf(buf, sizeof buf, " | val_bpb %.4f bits/byte", r.bpb);
    s += buf;
  } else {
    std::snprintf(buf, sizeof buf, " | %.4f bits/token (no token byte table: bits per byte unknown)", r.bits_per_token);
    s += buf;
  }
  return s;
}

std::string buckets_csv(const EvalResult& r) {
  std::ostringstream os;
  os << "bucket_start,bucket_end,loss,bpb,tokens\n";
  char buf[160];
  for (const auto& b : r.buckets) {
    std::snprintf(buf, sizeof buf, "%lld,%lld,%.6f,", (long long)b.start, (long long)b.end, b.loss);
    os << buf;
    if (b.bpb == b.bpb) {
      std::snprintf(buf, sizeof buf, "%.6f", b.bpb);
      os << buf;
    }
    os << "," << b.tokens << "\n";
  }
  return os.str();
}

std::vector<SlidingWindow> sliding_windows(int64_t n_tokens, int64_t context, int64_t stride) {
  TTT_CHECK(context > 0, "evaluation context must be > 0, got " << context);
  TTT_CHECK(stride > 0 && stride <= context, "evaluation stride must be in [1, context = " << context << "], got " << stride);
  TTT_CHECK(n_tokens >= 2, "the evaluation needs at least 2 tokens (one target), got " << n_tokens);
  std::vector<SlidingWindow> out;
  int64_t scored_end = 0;  // targets 1 .. scored_end are scored
  for (int64_t start = 0; scored_end < n_tokens - 1; start += stride) {
    SlidingWindow w;
    w.start = start;
    w.len = std::min(context, n_tokens - 1 - start);
    // Window position i predicts target start + i + 1: score those beyond scored_end.
    w.first_scored = scored_end - start;
    scored_end = start + w.len;
    out.push_back(w);
  }
  return out;
}

FullEvalResult evaluate_full_with(const BatchTokenLosses& losses, int64_t vocab, int64_t seq_len,
                                  const data::TokenSplit& tokens, const FullEvalOptions& opt,
                                  int64_t windows_per_call, const EvalProgress& progress) {
  FullEvalResult res;
  res.context = opt.context > 0 ? opt.context : seq_len;
  res.stride = opt.stride > 0 ? opt.stride : std::max<int64_t>(1, res.context / 2);
  TTT_CHECK(opt.batch > 0, "evaluation batch must be > 0, got " << opt.batch);
  const int64_t n = tokens.size();
  const std::vector<SlidingWindow> windows = sliding_windows(n, res.context, res.stride);
  TTT_CHECK(int64_t(tokens.vocab()) <= vocab, "evaluation: the tokens' vocabulary " << tokens.vocab()
                                                  << " is larger than the model's " << vocab);
  const std::vector<uint32_t>& token_bytes = opt.token_bytes;
  const bool have_table = !token_bytes.empty();
  TTT_CHECK(!have_table || token_bytes.size() >= tokens.vocab(),
            "evaluation: the token byte table has " << token_bytes.size() << " entries for a vocabulary of "
                                                    << tokens.vocab());
  res.windows = int64_t(windows.size());
  const int64_t group = windows_per_call > 0 ? windows_per_call : opt.batch;
  for (size_t w0 = 0; w0 < windows.size();) {
    // A group: consecutive windows of one length (only the last window may be shorter).
    size_t w1 = w0 + 1;
    while (w1 < windows.size() && int64_t(w1 - w0) < group && windows[w1].len == windows[w0].len) ++w1;
    model::Batch batch;
    batch.len = windows[w0].len;
    for (size_t w = w0; w < w1; ++w) append_window(batch, tokens, windows[w].start);
    const std::vector<double> all = batch_losses(losses, batch);
    for (size_t w = w0; w < w1; ++w) {
      const SlidingWindow& win = windows[w];
      const double* l = all.data() + int64_t(w - w0) * batch.len;
      const int32_t* targets = batch.targets.data() + int64_t(w - w0) * batch.len;
      for (int64_t i = win.first_scored; i < win.len; ++i) {
        res.loss_sum += l[i];
        if (have_table) res.bytes += token_bytes[size_t(targets[i])];
        ++res.tokens;
      }
    }
    if (progress) progress(res.tokens, n - 1);
    w0 = w1;
  }
  TTT_CHECK(res.tokens == n - 1, "evaluation: scored " << res.tokens << " targets of " << n - 1);
  res.loss = res.loss_sum / double(res.tokens);
  res.perplexity = std::exp(res.loss);
  res.bits_per_token = res.loss / std::log(2.0);
  res.bits_per_byte = bits_per_byte(res.loss_sum, res.bytes, have_table);
  return res;
}

FullEvalResult evaluate_full(backend::StepEngine& engine, const data::TokenSplit& tokens, const FullEvalOptions& opt,
                             const EvalProgress& progress) {
  const model::ModelConfig& cfg = engine.config();
  return evaluate_full_with([&](const model::Batch& b) { return engine.token_losses(b); }, cfg.vocab_size, cfg.seq_len,
                            tokens, opt, engine.eval_windows_per_call(opt.batch), progress);
}

}  // namespace ttt::train
