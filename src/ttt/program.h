// TTT programs (docs/ALGORITHMS.md §4): a list of apply / update / reset operations over token ranges.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ttt::engine {

enum class OpKind { Apply, Update, Reset };

struct ProgramOp {
  OpKind kind;
  int64_t begin = 0, end = 0;  // token range [begin, end); unused by Reset
};

struct Program {
  int64_t num_tokens = 0;
  std::vector<ProgramOp> ops;
  void validate() const;         // ranges inside [0, num_tokens), non-empty
  std::string to_string() const;  // "apply 0 4; update 0 4; ..."
  int64_t num_updates() const;
};

// Causal chunked, "apply then update" per chunk; the last chunk (of the sequence, or of a shard)
// is apply-only. reset_every > 0 resets the memory at every multiple of it, with chunks aligned
// to the shard start (TNT local memories).
Program causal_program(int64_t num_tokens, int64_t chunk, int64_t reset_every = 0);
// One span of a causal chunked chain that never resets (context parallelism's global memory on one rank): the
// whole chain's program restricted to the span, i.e. causal_program(num_tokens, chunk) and, when the chain
// continues on a next span, the update of the span's last chunk too (its exit state then includes it).
Program chain_span_program(int64_t num_tokens, int64_t chunk, bool continues);
// "Update then apply" per chunk (chunk >= num_tokens: update(all) then apply(all)).
Program bidirectional_program(int64_t num_tokens, int64_t chunk);
// A user-given list: "apply B E; update B E; reset" separated by ';' or newlines.
Program parse_program(const std::string& text, int64_t num_tokens);

}  // namespace ttt::engine
