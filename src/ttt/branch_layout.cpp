#include "ttt/branch_layout.h"

#include "core/error.h"

namespace ttt::engine {

BranchMemory BranchLayout::memory(size_t m) const {
  TTT_CHECK(int64_t(m) < num_memories(), "memory " << m << " of a branch of " << num_memories());
  BranchMemory b;
  if (use_global && m == 0) {
    b.chunk = global_chunk;
    return b;
  }
  b.local = int64_t(use_global ? m - 1 : m);
  b.chunk = local_chunks[size_t(b.local)];
  b.shard = shard;
  b.qk_proj = qk_proj;
  return b;
}

std::vector<BranchMemory> BranchLayout::memories() const {
  std::vector<BranchMemory> out;
  for (size_t m = 0; m < size_t(num_memories()); ++m) out.push_back(memory(m));
  return out;
}

}  // namespace ttt::engine
