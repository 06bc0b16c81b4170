// Host-side layout planning of TNT context parallelism on the GPU (cuda/model_cuda_context_parallel.cpp,
// docs/CONTEXT_PARALLEL.md): every move of rows between a rank's own layout and the layouts of the exchanges (the
// attention's halo in front of each sequence, the global memory's packed spans and its prefix over the spans) as a list
// of strided 2-D block copies, which the GPU runs with mk::copy2d. Plain host code, compiled in every build, so that
// the CPU tests check the index math by running the same copies on host arrays (apply_on_host).
#pragma once
#include <array>
#include <cstdint>
#include <vector>

namespace ttt::backend {

// dst[r * ldd + c] = src[r * lds + c] (or +=) for r < rows, c < cols; src and dst are element offsets from the two
// arrays' bases.
struct BlockCopy {
  int64_t src = 0, lds = 0, dst = 0, ldd = 0, rows = 0, cols = 0;
};

// Rows [first, first + count) of each of `sequences` sequences of `stride` rows, each row `width` elements at
// leading dimension `ld` (>= width), starting at element `base`: row i of sequence s begins at
// base + (s * stride + first + i) * ld.
struct RowBlock {
  int64_t sequences = 0, stride = 0, first = 0, count = 0, width = 0, ld = 0, base = 0;
};

// The copies that move `from`'s rows to `to`'s (the same sequences, count and width; an error otherwise): one in all
// when both sides' rows are dense (ld == width), so that each sequence's rows are one run; else one per sequence.
std::vector<BlockCopy> copy_rows(const RowBlock& from, const RowBlock& to);

// The attention's rows of a context-parallel rank: S sequences of this rank's N rows of width D; it sends its last
// `halo` = window - 1 rows of each to the next rank and receives `halo_in` (= halo; 0 on CP rank 0) from the
// previous one, which the attention sees in front of its own: the extended layout [S, X = halo_in + N, D].
struct HaloPlan {
  int64_t S = 0, N = 0, D = 0, halo = 0, halo_in = 0;
  HaloPlan(int64_t sequences, int64_t tokens, int64_t width, int64_t window, int cp_rank);
  int64_t X() const { return halo_in + N; }
  // This rank's rows in a plain layout [S, N] at leading dimension ld, and their tail (the rows it sends).
  RowBlock plain(int64_t ld, int64_t base = 0) const { return {S, N, 0, N, D, ld, base}; }
  RowBlock plain_tail(int64_t ld, int64_t base = 0) const { return {S, N, N - halo, halo, D, ld, base}; }
  // The extended layout: this rank's rows, the received halo's rows, this rank's tail.
  RowBlock extended(int64_t base = 0) const { return {S, X(), halo_in, N, D, D, base}; }
  RowBlock extended_halo(int64_t base = 0) const { return {S, X(), 0, halo_in, D, D, base}; }
  RowBlock extended_tail(int64_t base = 0) const { return {S, X(), X() - halo, halo, D, D, base}; }
  // An exchange buffer of `rows` rows per sequence, [S, rows, D]: the keys at `base`, the values after them.
  RowBlock buffer(int64_t rows, int64_t base = 0) const { return {S, rows, 0, rows, D, D, base}; }
  int64_t buffer_floats() const { return 2 * S * halo * D; }  // keys and values of the halo
};

// The global memory's six per-token quantities [q | k | v | theta | eta | alpha] of `items` sequence-heads, one after
// the other, each [items, spans * N, .] (q, k, v of width d, the gates of width 1): element offsets of the six parts
// (a packed span: spans = 1; the prefix over spans 0..P-1: spans = P) and the total.
std::array<int64_t, 6> global_part_offsets(int64_t items, int64_t N, int64_t d, int64_t spans);
int64_t global_floats(int64_t items, int64_t N, int64_t d, int64_t spans);
// The copies of span j between a packed span (at element 0 of its array) and the prefix over `spans` spans (at
// element 0 of its array): to_prefix, the packed span's rows become span j of the prefix; else the reverse.
std::vector<BlockCopy> global_span_copies(int64_t items, int64_t N, int64_t d, int64_t spans, int64_t j, bool to_prefix);

// The copies on host arrays (the tests' reference for mk::copy2d).
template <class T>
void apply_on_host(const std::vector<BlockCopy>& copies, const T* src, T* dst, bool accumulate = false) {
  for (const BlockCopy& c : copies)
    for (int64_t r = 0; r < c.rows; ++r)
      for (int64_t e = 0; e < c.cols; ++e) {
        T& out = dst[c.dst + r * c.ldd + e];
        const T in = src[c.src + r * c.lds + e];
        out = accumulate ? out + in : in;
      }
}

}  // namespace ttt::backend
