#include "backend/context_parallel_plan.h"

#include "core/error.h"

namespace ttt::backend {

std::vector<BlockCopy> copy_rows(const RowBlock& from, const RowBlock& to) {
  TTT_CHECK(from.sequences == to.sequences && from.count == to.count && from.width == to.width,
            "copy_rows: " << from.sequences << " x " << from.count << " rows of " << from.width << " to "
                          << to.sequences << " x " << to.count << " rows of " << to.width);
  for (const RowBlock* b : {&from, &to})
    TTT_CHECK(b->ld >= b->width && b->first >= 0 && b->first + b->count <= b->stride,
              "copy_rows: rows [" << b->first << ", " << b->first + b->count << ") of sequences of " << b->stride
                                  << ", width " << b->width << " at leading dimension " << b->ld);
  std::vector<BlockCopy> out;
  if (from.sequences == 0 || from.count == 0 || from.width == 0) return out;
  auto start = [](const RowBlock& b, int64_t s) { return b.base + (s * b.stride + b.first) * b.ld; };
  if (from.ld == from.width && to.ld == to.width) {  // each sequence's rows are one run
    out.push_back({start(from, 0), from.stride * from.ld, start(to, 0), to.stride * to.ld, from.sequences,
                   from.count * from.width});
    return out;
  }
  for (int64_t s = 0; s < from.sequences; ++s)
    out.push_back({start(from, s), from.ld, start(to, s), to.ld, from.count, from.width});
  return out;
}

HaloPlan::HaloPlan(int64_t sequences, int64_t tokens, int64_t width, int64_t window, int cp_rank)
    : S(sequences), N(tokens), D(width), halo(window - 1), halo_in(cp_rank > 0 ? window - 1 : 0) {
  TTT_CHECK(window >= 1 && halo <= N, "context parallel: the attention's halo of " << halo << " rows exceeds the span of "
                                                                                    << N << " tokens");
}

std::array<int64_t, 6> global_part_offsets(int64_t items, int64_t N, int64_t d, int64_t spans) {
  std::array<int64_t, 6> at{};
  int64_t next = 0;
  for (size_t i = 0; i < 6; ++i) {
    at[i] = next;
    next += items * spans * N * (i < 3 ? d : 1);
  }
  return at;
}

int64_t global_floats(int64_t items, int64_t N, int64_t d, int64_t spans) {
  return global_part_offsets(items, N, d, spans)[5] + items * spans * N;
}

std::vector<BlockCopy> global_span_copies(int64_t items, int64_t N, int64_t d, int64_t spans, int64_t j,
                                          bool to_prefix) {
  TTT_CHECK(0 <= j && j < spans, "global_span_copies: span " << j << " of " << spans);
  const std::array<int64_t, 6> packed = global_part_offsets(items, N, d, 1), prefix = global_part_offsets(items, N, d, spans);
  std::vector<BlockCopy> out;
  for (size_t i = 0; i < 6; ++i) {
    const int64_t c = i < 3 ? d : 1;  // a token's width in part i
    // Item b's N rows: the packed span's [b, N, c], the prefix's rows [j N, (j + 1) N) of [b, spans N, c].
    const RowBlock span{items, N, 0, N, c, c, packed[i]}, whole{items, spans * N, j * N, N, c, c, prefix[i]};
    for (const BlockCopy& b : to_prefix ? copy_rows(span, whole) : copy_rows(whole, span)) out.push_back(b);
  }
  return out;
}

}  // namespace ttt::backend
