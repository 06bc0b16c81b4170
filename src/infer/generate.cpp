#include "infer/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/rng.h"
#include "infer/stream.h"

namespace ttt::infer {

namespace {

int32_t sample(const float* logits, int64_t V, const SampleOptions& opt, Rng& rng) {
  if (opt.temperature <= 0) return int32_t(std::max_element(logits, logits + V) - logits);
  std::vector<int32_t> idx(static_cast<size_t>(V));
  std::iota(idx.begin(), idx.end(), 0);
  std::sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  int64_t keep = V;
  if (opt.top_k > 0) keep = std::min(keep, opt.top_k);
  std::vector<double> prob(static_cast<size_t>(keep));
  const double mx = logits[idx[0]];
  double sum = 0;
  for (int64_t i = 0; i < keep; ++i) sum += prob[size_t(i)] = std::exp((logits[idx[size_t(i)]] - mx) / opt.temperature);
  for (auto& p : prob) p /= sum;
  if (opt.top_p < 1.0) {  // smallest prefix whose mass reaches top_p
    double acc = 0;
    int64_t n = 0;
    while (n < keep) {
      acc += prob[size_t(n++)];
      if (acc >= opt.top_p) break;
    }
    keep = n;
    prob.resize(size_t(keep));
    const double s = std::accumulate(prob.begin(), prob.end(), 0.0);
    for (auto& p : prob) p /= s;
  }
  double u = rng.uniform(), acc = 0;
  for (int64_t i = 0; i < keep; ++i) {
    acc += prob[size_t(i)];
    if (u < acc) return idx[size_t(i)];
  }
  return idx[size_t(keep - 1)];
}

}  // namespace

std::vector<int32_t> generate(const model::ModelConfig& cfg, const model::Params<float>& params,
                              const std::vector<int32_t>& prompt, int64_t max_new_tokens, const SampleOptions& opt,
                              const std::function<void(int32_t)>& on_token) {
  StreamingModel sm(cfg, params);
  return generate(sm, prompt, max_new_tokens, opt, on_token);
}

std::vector<int32_t> generate(backend::Streamer& model, const std::vector<int32_t>& prompt, int64_t max_new_tokens,
                              const SampleOptions& opt, const std::function<void(int32_t)>& on_token) {
  TTT_CHECK(max_new_tokens >= 0, "max_new_tokens must be non-negative, got " << max_new_tokens);
  TTT_CHECK(opt.top_k >= 0, "top_k must be non-negative, got " << opt.top_k);
  TTT_CHECK(opt.top_p > 0 && opt.top_p <= 1, "top_p must be in (0, 1], got " << opt.top_p);
  TTT_CHECK(std::isfinite(opt.temperature) && opt.temperature >= 0, "temperature must be >= 0, got " << opt.temperature);
  TTT_CHECK(std::isfinite(opt.repetition_penalty) && opt.repetition_penalty > 0,
            "repetition penalty must be > 0 (1: off), got " << opt.repetition_penalty);
  Rng rng(opt.seed);
  std::vector<int32_t> out;
  if (max_new_tokens == 0) return out;
  // Pre-fill chunk by chunk (feed splits at chunk boundaries); an empty prompt starts from a
  // document separator.
  std::vector<int32_t> start = prompt.empty() ? std::vector<int32_t>{opt.separator} : prompt;
  ag::Mat<float> lg = model.feed(start);
  const int64_t vocab = lg.cols;
  const float* last = lg.row(lg.rows - 1);
  // The tokens of the context, for the repetition penalty.
  const bool penalize = opt.repetition_penalty != 1.0;
  std::vector<char> seen(penalize ? size_t(vocab) : 0, 0);
  std::vector<float> penalized(penalize ? size_t(vocab) : 0);
  if (penalize)
    for (int32_t t : prompt)
      if (t >= 0 && t < vocab) seen[size_t(t)] = 1;
  for (int64_t i = 0; i < max_new_tokens; ++i) {
    // Weights of a diverged run overflow; sampling would sort NaNs.
    TTT_CHECK(std::all_of(last, last + vocab, [](float x) { return std::isfinite(x); }),
              "the model's logits are non-finite at generated token " << i + 1
                                                                      << ": its weights overflow (the run that trained them diverged)");
    const float* logits = last;
    if (penalize) {
      for (int64_t v = 0; v < vocab; ++v) {
        const float x = last[v];
        penalized[size_t(v)] = !seen[size_t(v)] ? x : x > 0 ? float(x / opt.repetition_penalty)
                                                             : float(x * opt.repetition_penalty);
      }
      logits = penalized.data();
    }
    int32_t tok = sample(logits, vocab, opt, rng);
    if (opt.stop_at_separator && tok == opt.separator) break;
    if (penalize) seen[size_t(tok)] = 1;
    out.push_back(tok);
    if (on_token) on_token(tok);
    if (i + 1 == max_new_tokens) break;
    lg = model.feed({tok});
    last = lg.row(0);
  }
  return out;
}

}  // namespace ttt::infer
