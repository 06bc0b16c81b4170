// TNT context parallelism (docs/CONTEXT_PARALLEL.md): every sequence of a step split into `ranks` contiguous spans,
// one per rank of a context-parallel (CP) group, at local-shard boundaries. What crosses a span boundary goes
// through the tape ops below, whose forward and backward exchange rows with the other ranks of the group:
//   - the sliding-window attention's keys and values: with_halo puts the previous rank's last window - 1 rows in
//     front of this rank's (the halo); its backward sends the halo's gradient back to its owner;
//   - the global memory's chain, two ways (CpGlobal, `--cp-global`):
//     gather: gather_prefix gives this rank its inputs of every span up to and including its own, so the rank runs
//       the chain from the sequence's start (model.cpp, memory_branch.cpp); its backward returns the gradient of
//       every gathered row to the rank that owns it;
//     state: the chain's state at the span's start comes from the previous rank and its exit state goes to the
//       next (state_link: the memory engine's StateLink); the backward passes their adjoints the other way.
// Local memories reset at every shard, so they run on their span alone.
//
// Ranks: world rank k is CP rank k % N of data-parallel group k / N; each group has its own communicator
// (Communicator::split: a real MPI sub-communicator under mpirun; emulated over the job's collectives with TCP). The
// exchanges are the group's all-gathers: the halo gathers every rank's tail rows (each keeps its predecessor's), a
// factor N above point-to-point traffic and simple, with the communicator's timeouts. Every rank of a group must
// record the same ops in the same order (the same model, the same number of sequences), and the backward of each op
// runs on every rank (its output's gradient is allocated when it is recorded).
#pragma once
#include <cstdint>
#include <string>

#include "autograd/tape.h"
#include "model/config.h"
#include "ttt/memory_op.h"

namespace ttt::dist {
class Communicator;
}

namespace ttt::model {

// How the global memory's chain crosses the spans (`--cp-global`): all-gather its inputs (each rank runs the chain
// over its prefix) or pass its state from rank to rank.
// Auto (the default) is State where the model has a global memory whose chain can start from a passed state (no
// weight norm, which would read the learned W0 in every update: true of every TNT global memory today), else
// Gather: measured on two H200s, passing the state is the faster (1.92x against 1.64x one GPU at 131072 tokens of
// the 87M TNT config) and the leaner one.
enum class CpGlobal { Gather, State, Auto };
CpGlobal parse_cp_global(const std::string& s);  // "auto" | "gather" | "state"; throws naming --cp-global
// Auto resolved for `cfg` (Gather and State as they are); State for a global memory that cannot take a passed
// state is refused, naming the reason and --cp-global gather.
CpGlobal resolve_cp_global(CpGlobal requested, const ModelConfig& cfg);
// --cp-global's default in `ttt train` and `ttt bench step`.
inline constexpr const char* kDefaultCpGlobal = "auto";
const char* cp_global_name(CpGlobal g);

struct ContextSpan {
  dist::Communicator* comm = nullptr;  // the CP group
  int rank = 0, ranks = 1;             // this rank's place in its CP group and the group's size
  int64_t span = 0;                    // tokens of each sequence on one rank (= seq_len / ranks)
  // The backward's seed: the gradient of the step's loss with respect to this span's mean loss (its share of the
  // step's valid targets). It weights the loss before the backward, because gradients flow between ranks: a
  // weight applied afterwards would scale the other ranks' contributions with this rank's share.
  double loss_weight = 1.0;
  CpGlobal global = CpGlobal::Gather;
  int64_t offset() const { return int64_t(rank) * span; }  // global position of the span's first token
};

// This rank's span of sequences of seq_len tokens in the CP group `group` (its ranks: one span each, in order).
ContextSpan context_span(dist::Communicator& group, int64_t seq_len);

// Checks that `cfg` can be split over `cp` ranks of a job of `world_size`: a TNT model, cp dividing the ranks,
// seq_len splitting into spans of whole local shards and whole global chunks, the attention window's halo within one
// span. Throws a ttt::Error naming the flag, the fields and the values that fit.
void check_context_parallel(const ModelConfig& cfg, int cp, int world_size);

// x [S*n, c] (S sequences of this rank's n rows) -> [S*(h+n), c]: each sequence's rows preceded by its last `h` rows
// on the previous rank of the group (none on the first rank: there h is 0). h <= n.
template <class T>
ag::Var with_halo(ag::Tape<T>& t, ag::Var x, int64_t S, int64_t h, const ContextSpan& cp);
// Rows of the halo in front of each sequence in with_halo's output on this rank.
inline int64_t halo_rows(int64_t h, const ContextSpan& cp) { return cp.rank > 0 ? h : 0; }

// x [S*n, c] -> [S*(r+1)*n, c] (r = cp.rank): each sequence's rows of CP ranks 0..r, in order.
template <class T>
ag::Var gather_prefix(ag::Tape<T>& t, ag::Var x, int64_t S, const ContextSpan& cp);
// Rows [r*n, (r+1)*n) of each of the S sequences of a prefix [S*(r+1)*n, c]: this rank's own rows.
template <class T>
ag::Var own_rows(ag::Tape<T>& t, ag::Var prefix, int64_t S, const ContextSpan& cp);

// The global memory's state passing over the group: rank r's chain starts from rank r - 1's exit state and hands its
// own to rank r + 1; the adjoints go the other way. Over the host communicator as N - 1 rounds of all-gathers per
// direction (round j: rank j's state, kept by its neighbour; the others send zeros): N times the bytes of a
// neighbour exchange, and every rank calls every round, so no rank waits on a collective another never calls.
template <class T>
engine::StateLink<T> state_link(const ContextSpan& cp);

}  // namespace ttt::model
