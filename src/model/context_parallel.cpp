#include "model/context_parallel.h"

#include <algorithm>
#include <numeric>

#include "autograd/ops.h"
#include "dist/communicator.h"
#include "model/memory_spec.h"

namespace ttt::model {

using ag::Mat;
using ag::Tape;
using ag::Var;

CpGlobal parse_cp_global(const std::string& s) {
  if (s == "gather") return CpGlobal::Gather;
  if (s == "state") return CpGlobal::State;
  if (s == "auto") return CpGlobal::Auto;
  TTT_FAIL("--cp-global must be auto (state where the model's global memory allows it, else gather), gather "
           "(all-gather the global memory's inputs) or state (pass its state from rank to rank), got '" << s << "'");
}

CpGlobal resolve_cp_global(CpGlobal requested, const ModelConfig& cfg) {
  const bool global = cfg.arch == Arch::Tnt && cfg.use_global;
  const bool can_pass = global && branch_spec(cfg).memories.at(0).config.weight_norm == engine::WeightNorm::None;
  if (requested == CpGlobal::Auto) return can_pass ? CpGlobal::State : CpGlobal::Gather;
  TTT_CHECK(requested != CpGlobal::State || !global || can_pass,
            "--cp-global state: the global memory has a weight norm (weight_norm), which reads its learned initial "
            "weights in every update, so its chain cannot start from a passed state; use --cp-global gather");
  return requested;
}

const char* cp_global_name(CpGlobal g) {
  return g == CpGlobal::State ? "state" : g == CpGlobal::Gather ? "gather" : "auto";
}

ContextSpan context_span(dist::Communicator& group, int64_t seq_len) {
  ContextSpan s;
  s.comm = &group;
  s.ranks = group.size();
  s.rank = group.rank();
  s.span = seq_len / s.ranks;
  TTT_CHECK(s.span * s.ranks == seq_len, "context parallel: " << seq_len << " tokens do not split over " << s.ranks << " ranks");
  return s;
}

void check_context_parallel(const ModelConfig& cfg, int cp, int world_size) {
  TTT_CHECK(cp >= 1, "--context-parallel must be at least 1, got " << cp);
  if (cp == 1) return;
  TTT_CHECK(cfg.arch == Arch::Tnt, "--context-parallel " << cp << " needs a TNT model (arch tnt: local memories reset "
                                                         << "at shard boundaries); this model's arch is "
                                                         << arch_name(cfg.arch));
  TTT_CHECK(world_size % cp == 0, "--context-parallel " << cp << " does not divide the job's " << world_size
                                                        << " rank(s): ranks = data parallel x context parallel, so "
                                                        << "start a multiple of " << cp << " ranks");
  // A span holds whole local shards (the local memories then never cross a span) and whole global chunks (a chunk's
  // update sees all of its tokens on one rank).
  int64_t unit = 1;
  std::string what = "";
  auto need = [&](int64_t m, const std::string& name) {
    if (m <= 0) return;
    unit = std::lcm(unit, m);
    what += (what.empty() ? "" : ", ") + name + " " + std::to_string(m);
  };
  if (!cfg.local_chunks.empty()) need(cfg.shard, "local_shard (shard)");
  if (cfg.use_global) need(cfg.global_chunk, "global_chunk");
  TTT_CHECK(cfg.seq_len % cp == 0 && (cfg.seq_len / cp) % unit == 0,
            "seq_len " << cfg.seq_len << " does not split over --context-parallel " << cp
                       << " into spans of whole shards and global chunks (" << what << "): seq_len must be a "
                       << "multiple of " << unit * cp << " (--context-parallel x " << unit << ")");
  TTT_CHECK(cfg.window - 1 <= cfg.seq_len / cp,
            "the attention window " << cfg.window << " reaches past the previous span: --context-parallel " << cp
                                    << " gives spans of " << cfg.seq_len / cp << " tokens, and window - 1 must be at "
                                    << "most the span (seq_len >= " << (cfg.window - 1) * cp << ")");
}

namespace {

// Every rank's `mine` (the same size on each), in CP rank order.
template <class T>
std::vector<T> group_gather(const ContextSpan& cp, const std::vector<T>& mine) {
  const int64_t n = int64_t(mine.size());
  std::vector<T> all(size_t(n * cp.ranks));
  cp.comm->all_gather(mine.data(), all.data(), std::vector<int64_t>(size_t(cp.ranks), n));
  return all;
}

// The op's backward must run on every rank (it is a collective): allocate its output's gradient now.
template <class T>
Var always_backward(Tape<T>& t, Var out) {
  if (t.requires_grad(out)) t.grad(out);
  return out;
}

}  // namespace

template <class T>
Var with_halo(Tape<T>& t, Var x, int64_t S, int64_t h, const ContextSpan& cp) {
  const Mat<T>& X = t.val(x);
  const int64_t c = X.cols, n = X.rows / S, hr = halo_rows(h, cp);
  TTT_CHECK(X.rows == S * n && 0 <= h && h <= n, "with_halo: " << X.shape() << " over " << S << " sequences, halo " << h);
  // Every rank sends its tails; the next rank keeps them.
  std::vector<T> tails(size_t(S * h * c));
  for (int64_t s = 0; s < S; ++s) std::copy(X.row(s * n + n - h), X.row(s * n + n), tails.begin() + s * h * c);
  const std::vector<T> group = group_gather(cp, tails);
  Mat<T> o(S * (hr + n), c);
  for (int64_t s = 0; s < S; ++s) {
    if (hr > 0) std::copy_n(group.begin() + (int64_t(cp.rank - 1) * S + s) * h * c, h * c, o.row(s * (hr + n)));
    std::copy(X.row(s * n), X.row(s * n + n), o.row(s * (hr + n) + hr));
  }
  Var out = t.make(std::move(o), {x}, [x, S, n, h, hr, c, cp](Tape<T>& t, const Mat<T>& g) {
    // The halo's gradient goes back to the previous rank, which adds it to its tail rows.
    std::vector<T> halo_grad(size_t(S * h * c), T(0));
    if (hr > 0)
      for (int64_t s = 0; s < S; ++s) std::copy_n(g.row(s * (hr + n)), h * c, halo_grad.begin() + s * h * c);
    const std::vector<T> group = group_gather(cp, halo_grad);
    Mat<T>& gx = t.grad(x);
    for (int64_t s = 0; s < S; ++s) {
      const T* own = g.row(s * (hr + n) + hr);
      T* dst = gx.row(s * n);
      for (int64_t e = 0; e < n * c; ++e) dst[e] += own[e];
    }
    if (cp.rank + 1 < cp.ranks)
      for (int64_t s = 0; s < S; ++s) {
        const T* from_next = group.data() + (int64_t(cp.rank + 1) * S + s) * h * c;
        T* dst = gx.row(s * n + n - h);
        for (int64_t e = 0; e < h * c; ++e) dst[e] += from_next[e];
      }
  });
  return always_backward(t, out);
}

template <class T>
Var gather_prefix(Tape<T>& t, Var x, int64_t S, const ContextSpan& cp) {
  const Mat<T>& X = t.val(x);
  const int64_t c = X.cols, n = X.rows / S, r = cp.rank, seg = S * n * c;
  TTT_CHECK(X.rows == S * n, "gather_prefix: " << X.shape() << " over " << S << " sequences");
  const std::vector<T> group = group_gather(cp, X.data);  // [rank][sequence][row]
  Mat<T> o(S * (r + 1) * n, c);
  for (int64_t s = 0; s < S; ++s)
    for (int64_t j = 0; j <= r; ++j)
      std::copy_n(group.begin() + j * seg + s * n * c, n * c, o.row((s * (r + 1) + j) * n));
  Var out = t.make(std::move(o), {x}, [x, S, n, c, r, seg, cp](Tape<T>& t, const Mat<T>& g) {
    // Every rank sends the gradient of each owner's rows (zeros for ranks after it); each owner sums what its group
    // sends it in CP rank order (a fixed order).
    std::vector<T> to_owners(size_t(int64_t(cp.ranks) * seg), T(0));
    for (int64_t s = 0; s < S; ++s)
      for (int64_t j = 0; j <= r; ++j)
        std::copy_n(g.row((s * (r + 1) + j) * n), n * c, to_owners.begin() + j * seg + s * n * c);
    const std::vector<T> group = group_gather(cp, to_owners);
    Mat<T>& gx = t.grad(x);
    for (int64_t from = 0; from < cp.ranks; ++from) {
      const T* part = group.data() + (from * cp.ranks + r) * seg;
      for (int64_t e = 0; e < seg; ++e) gx.data[size_t(e)] += part[e];
    }
  });
  return always_backward(t, out);
}

template <class T>
Var own_rows(Tape<T>& t, Var prefix, int64_t S, const ContextSpan& cp) {
  const int64_t r = cp.rank, n = t.val(prefix).rows / (S * (r + 1));
  std::vector<Var> parts;
  for (int64_t s = 0; s < S; ++s) parts.push_back(ag::slice_rows(t, prefix, (s * (r + 1) + r) * n, (s * (r + 1) + r + 1) * n));
  return S == 1 ? parts[0] : ag::concat_rows(t, parts);
}

template <class T>
engine::StateLink<T> state_link(const ContextSpan& cp) {
  engine::StateLink<T> link;
  const int r = cp.rank, N = cp.ranks;
  link.has_entry = r > 0;
  link.has_exit = r + 1 < N;
  // Round `from`: rank `from` contributes `mine` (the others zeros); returns what rank `from` sent.
  auto round = [cp](int from, const std::vector<T>* mine, int64_t count) {
    std::vector<T> part = mine ? *mine : std::vector<T>(size_t(count), T(0));
    TTT_CHECK(int64_t(part.size()) == count, "global memory state exchange: " << part.size() << " values, expected "
                                                                               << count);
    const std::vector<T> all = group_gather(cp, part);
    return std::vector<T>(all.begin() + int64_t(from) * count, all.begin() + int64_t(from + 1) * count);
  };
  // Forward: rounds 0 .. N - 2, round j from rank j to rank j + 1. Rank r takes rounds 0 .. r - 1 before its span
  // (keeping round r - 1's) and sends in round r, then joins the rest.
  link.receive_entry = [round, r](int64_t count) {
    std::vector<T> got;
    for (int j = 0; j < r; ++j) got = round(j, nullptr, count);
    return got;
  };
  link.send_exit = [round, r, N](const std::vector<T>& exit) {
    for (int j = r; j < N - 1; ++j) round(j, j == r ? &exit : nullptr, int64_t(exit.size()));
  };
  // Backward: rounds N - 1 .. 1, round j from rank j to rank j - 1.
  link.receive_exit_adjoint = [round, r, N](int64_t count) {
    std::vector<T> got;
    for (int j = N - 1; j > r; --j) got = round(j, nullptr, count);
    return got;
  };
  link.send_entry_adjoint = [round, r](const std::vector<T>& adjoint) {
    for (int j = r; j > 0; --j) round(j, j == r ? &adjoint : nullptr, int64_t(adjoint.size()));
  };
  return link;
}

#define TTT_INSTANTIATE(T)                                                                 \
  template engine::StateLink<T> state_link<T>(const ContextSpan&);                        \
  template Var with_halo<T>(Tape<T>&, Var, int64_t, int64_t, const ContextSpan&);         \
  template Var gather_prefix<T>(Tape<T>&, Var, int64_t, const ContextSpan&);              \
  template Var own_rows<T>(Tape<T>&, Var, int64_t, const ContextSpan&);
TTT_INSTANTIATE(float)
TTT_INSTANTIATE(double)
#undef TTT_INSTANTIATE

}  // namespace ttt::model
