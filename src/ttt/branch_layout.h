// The memories of a memory branch whose outputs are summed (docs/ALGORITHMS.md §6), in their order: the global
// memory first iff use_global (chunk global_chunk, never reset, plain queries), then local memory i for each
// local_chunks[i] (chunk local_chunks[i], reset to its own W⁰ every `shard` tokens with chunks aligned to each
// shard start, Q-K projected queries iff qk_proj). A single memory (LaCT, Titans) is the global memory alone.
//
// This is the one mapping from a memory's index to its place: the tape branch (tnt.h), the explicit operators
// (titans_fused.h TntShape) and the model's memory spec (model/memory_spec.h) all read it.
//
// Plain C++ (nvcc compiles it through titans_fused.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace ttt::engine {

// One memory's place in a branch.
struct BranchMemory {
  int64_t local = -1;    // -1: the global memory; i: local memory i
  int64_t chunk = 0;     // C
  int64_t shard = 0;     // reset period; 0: never reset
  bool qk_proj = false;  // read with Q-K projected queries
  bool global() const { return local < 0; }
};

struct BranchLayout {
  bool use_global = true;
  int64_t global_chunk = 0;
  std::vector<int64_t> local_chunks;
  int64_t shard = 0;
  bool qk_proj = false;

  int64_t num_memories() const { return (use_global ? 1 : 0) + int64_t(local_chunks.size()); }
  BranchMemory memory(size_t m) const;  // m < num_memories()
  std::vector<BranchMemory> memories() const;
};

}  // namespace ttt::engine
