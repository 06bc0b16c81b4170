// The second variant of the persistent Titans kernels (titans_persistent.h; titans::PersistentVariant::V2), built
// on the block-level pieces of titans_persistent_kernels.cuh (v1) and written against the same small surface plus
// two asynchronous-copy primitives (async_copy_element, async_wait_all: cp.async on the device, a copy deferred to
// the wait in tests/block_emulation.h), so that the CPU emulation runs this source too.
//
// Why a second variant: v1 separates every two phases of a chunk step by a block barrier (6 per forward step, 10
// with the Q-K projection, 21 per backward step with 512 threads) and its products read the chunk's q / k / v rows
// from global memory inside their reduction loops; ncu on an H200 showed 41% of the issue gaps waiting at barriers
// and 39 us per forward step (docs/PERF.md). v2 cuts the latency of a step:
//   - 256 threads per block (8 warps to wait for at a barrier instead of 16);
//   - the chunk's rows (q, k, v, dO, θ, η, α) staged in shared memory one chunk ahead by asynchronous copies
//     (two staging buffers), and the backward's next state W_{c-1} (into a second state buffer) and S_{c-1} copied
//     in while step c runs, so no product or dot waits on global memory;
//   - independent products of a step run in one phase (one barrier for all of them), consecutive products of a
//     phase starting on different threads (Spread), element steps fused into the epilogue of the product whose
//     element they need (the scalar cores of titans_elementwise.h), the backward's dS = η̄ G deferred into the next
//     step's G = dW + dS, and the block dots reduced by every thread from the warps' partials (no extra barrier):
//     forward 4 barriers per chunk step (Q-K projection included), backward 6 plus the recomputation's 4, the Q-K
//     projection's backward sweeps 2 + 2 per chunk (v1 4 + 4);
//   - fewer shared-memory accesses per multiply-add: a chunk's rows products with a thread per column and A's rows
//     as vector loads (gemm_chunk_rows), the d x dh products with Aᵀ's tile column as one vector (gemm_tiles_vector_a).
// The math is v1's, term for term (the same products, the same element cores, sums in the same order inside a
// product); only where a value is kept and which thread computes it differ.
#pragma once
#include "backend/cuda/titans_persistent_kernels.cuh"
#ifdef __CUDACC__
#include "backend/cuda/mma_bf16.cuh"  // pack_bf16, mma_bf16 (the CPU emulation brings its twins)
#endif

namespace ttt::cuda::persistent {

#ifdef __CUDACC__
// dst (shared memory, or global when the plan spilled the buffer) = *src (global), without waiting: cp.async into
// shared memory; a plain copy otherwise. Visible to the issuing thread after async_wait_all, to the block after the
// next barrier.
template <class T>
__device__ __forceinline__ void async_copy_element(T* dst, const T* src) {
  if (__isShared(dst)) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(s), "l"(src), "n"(sizeof(T)) : "memory");
  } else {
    *dst = *src;
  }
}
// Waits for every async_copy_element of the calling thread.
__device__ __forceinline__ void async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }
#endif

// v2's block size: a compile-time constant on the device, so that work is handed out with shifts and masks instead
// of a runtime division by blockDim.x (the kernels are launched with it, titans::persistent_threads); on the CPU the
// emulated block's, which runs these pieces at 64 threads too.
static_assert(titans::kPersistentThreadsV2 % 32 == 0 &&
                  (titans::kPersistentThreadsV2 & (titans::kPersistentThreadsV2 - 1)) == 0,
              "v2's block: a power of two of whole warps");
#ifdef __CUDACC__
__device__ __forceinline__ constexpr unsigned v2_threads() { return unsigned(titans::kPersistentThreadsV2); }
#else
inline unsigned v2_threads() { return blockDim.x; }
#endif
__device__ __forceinline__ int v2_warps() { return int(v2_threads() / 32); }
// The first work item of the calling thread when a product's work starts at thread `start` (0 <= start < threads).
__device__ __forceinline__ int first_item(int start) {
  return int((threadIdx.x + (v2_threads() - unsigned(start))) % v2_threads());
}

// v2's products issue the loads of this many reduction steps together (8 warps hide less latency than v1's 16).
inline constexpr int kUnrollV2 = 4;

// V consecutive elements of a row (16 bytes, aligned): one vector load on the device.
template <int V, class T>
__device__ __forceinline__ void load_row_vector(const T* p, T (&out)[V]) {
#ifdef __CUDACC__
  if constexpr (sizeof(T) == 4) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
  } else {
    const double2 v = *reinterpret_cast<const double2*>(p);
    out[0] = v.x, out[1] = v.y;
  }
#else
  for (int v = 0; v < V; ++v) out[v] = p[v];
#endif
}

// The products of a chunk's rows (m <= 8, A row-major with rows of 16-byte multiples, aligned, k a multiple of
// the vector): a thread owns one output column and every row, loading A's rows as vectors along the reduction
// (one broadcast access per row and 16 bytes) and B once per step: ~3 shared-memory accesses per 8 multiply-adds
// instead of 4 per 4 with gemm_tiles' 2 x 2 tiles, at C = 8 the bound of these phases. The same sums in the same
// order as gemm_tiles (l ascending from zero). Returns the number of work items (start: gemm_tiles').
inline constexpr int kChunkRowsTile = 8;
template <class T>
__device__ __forceinline__ bool rows_product_fits(int m, int k, Operand<T, false> A) {
  constexpr int V = 16 / int(sizeof(T));
  return m <= kChunkRowsTile && k % V == 0 && A.ld % V == 0 && reinterpret_cast<uintptr_t>(A.p) % 16 == 0;
}
template <class T, bool TB, class Store>
__device__ __forceinline__ int gemm_chunk_rows(int m, int n, int k, Operand<T, false> A, Operand<T, TB> B,
                                               const Store& store, int start) {
  constexpr int TM = kChunkRowsTile, V = 16 / int(sizeof(T));
  const int work = (n + 31) / 32 * 32;
  for (int j = first_item(start); j < work; j += int(v2_threads())) {
    T acc[TM];
#pragma unroll
    for (int s = 0; s < TM; ++s) acc[s] = T(0);
#pragma unroll 2
    for (int l0 = 0; l0 < k; l0 += V) {
      T a[TM][V];
#pragma unroll
      for (int s = 0; s < TM; ++s) {
        if (s < m) {
          load_row_vector<V>(A.p + s * A.ld + l0, a[s]);
        } else {
#pragma unroll
          for (int v = 0; v < V; ++v) a[s][v] = T(0);
        }
      }
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const T b = j < n ? B(l0 + v, j) : T(0);
#pragma unroll
        for (int s = 0; s < TM; ++s) acc[s] += a[s][v] * b;
      }
    }
    if (j < n)
#pragma unroll
      for (int s = 0; s < TM; ++s)
        if (s < m) store(s, j, acc[s]);
  }
  return work;
}

// The d x dh products over a chunk (A transposed: op(A)[i, l] = A[l][i], k = C): gemm_tiles' 4 x 2 tiles with the
// tile's 4 rows of op(A) loaded as one 16-byte vector (two for double) per reduction step instead of 4 broadcasts:
// 3 shared-memory accesses per 8 multiply-adds instead of 6. Needs m a multiple of 4, A's row stride a multiple of
// the vector and A aligned. The same sums in the same order as gemm_tiles.
template <class T>
__device__ __forceinline__ bool columns_product_fits(int m, int n, Operand<T, true> A) {
  constexpr int V = 16 / int(sizeof(T));
  return m % 4 == 0 && m * n >= 8 * 128 && A.ld % V == 0 && reinterpret_cast<uintptr_t>(A.p) % 16 == 0;
}
template <int Unroll, class T, bool TB, class Store>
__device__ __forceinline__ int gemm_tiles_vector_a(int m, int n, int k, Operand<T, true> A, Operand<T, TB> B,
                                                   const Store& store, int start) {
  constexpr int TM = 4, TN = 2, V = 16 / int(sizeof(T));
  const int row_tiles = m / TM, col_groups = (n + 32 * TN - 1) / (32 * TN);
  const int work = row_tiles * col_groups * 32;
  for (int idx = first_item(start); idx < work; idx += int(v2_threads())) {
    const int lane = idx % 32, group = idx / 32, cg = group % col_groups, rt = group / col_groups;
    const int i0 = rt * TM, j0 = cg * 32 * TN + lane;
    T acc[TM][TN];
#pragma unroll
    for (int s = 0; s < TM; ++s)
#pragma unroll
      for (int t = 0; t < TN; ++t) acc[s][t] = T(0);
#pragma unroll Unroll
    for (int l = 0; l < k; ++l) {
      T b[TN];
#pragma unroll
      for (int t = 0; t < TN; ++t) b[t] = j0 + 32 * t < n ? B(l, j0 + 32 * t) : T(0);
      T a[TM];
#pragma unroll
      for (int v = 0; v < TM / V; ++v) {
        T part[V];
        load_row_vector<V>(A.p + l * A.ld + i0 + v * V, part);
#pragma unroll
        for (int u = 0; u < V; ++u) a[v * V + u] = part[u];
      }
#pragma unroll
      for (int s = 0; s < TM; ++s)
#pragma unroll
        for (int t = 0; t < TN; ++t) acc[s][t] += a[s] * b[t];
    }
#pragma unroll
    for (int s = 0; s < TM; ++s)
#pragma unroll
      for (int t = 0; t < TN; ++t)
        if (j0 + 32 * t < n) store(i0 + s, j0 + 32 * t, acc[s][t]);
  }
  return work;
}

// The reduction index, within a k16 step, that fragment slot s of gemm_mma_bf16 holds: lane t's slots 2t, 2t+1,
// 2t+8, 2t+9 take l = 4t .. 4t+3 (a permutation of the reduction, the same for both operands, so the sums are
// those of the product), so that a row's four values are one 16-byte vector load.
__device__ __forceinline__ constexpr int mma_slot_k(int s) { return 4 * ((s % 8) / 2) + 2 * (s / 8) + s % 2; }

// gemm_mma_bf16's tiles when they are full (R a multiple of 16, N of 8, k of 16 or k = 8, as at d, dh multiples of
// 16 and C = 8 or 16): no element of a tile lies outside the product, so no load is tested. X's rows r0, r0 + 8 and
// Y's column c at l .. l+3 are four elements `step` apart (1 for an operand stored along the reduction: a 16-byte
// vector when vec; else its row stride) from a 32-bit offset fixed per tile; at k = 8 the upper half of the k16
// step (lanes t >= 2, l >= 8) is zero (Half: k = 8, a separate instantiation, so the k16 steps of the others
// select nothing). The same fragments, hence the same sums, as mma_tiles' tested path.
template <bool Swap, bool XRows, bool YRows, bool Half, class T, class Store>
__device__ __forceinline__ void mma_full_tiles(int R, int N, int k, const T* xp, int xld, bool xvec, const T* yp,
                                               int yld, bool yvec, const Store& store, int start) {
  const int col_tiles = N / 8, tiles = R / 16 * col_tiles;
  const int lane = int(threadIdx.x % 32), g = lane / 4, t = lane % 4;
  // Lanes whose reduction indices do not exist (k = 8, l >= 8) load those of l - 8 and zero them: no branch.
  const bool live = !Half || t < 2;
  const int xstep = XRows ? 1 : xld, ystep = YRows ? 1 : yld, x8 = XRows ? 8 * xld : 8;
  const int kl = live ? mma_slot_k(2 * t) : mma_slot_k(2 * t) - 8;
  auto fetch = [&](const T* p, int step, bool vec, float (&v)[4]) {
    if (vec) {
      load_row_vector<4>(p, v);
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) v[j] = float(p[j * step]);
    }
    if constexpr (Half) {
#pragma unroll
      for (int j = 0; j < 4; ++j) v[j] = live ? v[j] : 0.f;
    }
  };
  const int steps_k = Half ? 8 : k;  // Half: one k16 step, known to the compiler
  for (int tile = first_item(start) / 32; tile < tiles; tile += v2_warps()) {
    const unsigned row_tile = unsigned(tile) / unsigned(col_tiles);  // unsigned: no sign fix-up in the division
    const int r0 = int(row_tile) * 16 + g, c = (tile - int(row_tile) * col_tiles) * 8 + g;
    const T* xq = xp + (XRows ? r0 * xld + kl : kl * xld + r0);
    const T* yq = yp + (YRows ? c * yld + kl : kl * yld + c);
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll 4
    for (int l0 = 0; l0 < steps_k; l0 += 16) {
      float x0[4], x1[4], y[4];  // X's rows r0 and r0 + 8, Y's column c, at l0 + kl ..
      fetch(xq + l0 * xstep, xstep, xvec, x0);
      fetch(xq + l0 * xstep + x8, xstep, xvec, x1);
      fetch(yq + l0 * ystep, ystep, yvec, y);
      const uint32_t a[4] = {pack_bf16(x0[0], x0[1]), pack_bf16(x1[0], x1[1]), pack_bf16(x0[2], x0[3]),
                             pack_bf16(x1[2], x1[3])};
      mma_bf16(acc, a, pack_bf16(y[0], y[1]), pack_bf16(y[2], y[3]));
    }
    const int cs = c - g + 2 * t;  // the output columns this lane holds: cs, cs + 1
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = r0 + (i >= 2 ? 8 : 0), cc = cs + (i & 1);
      if constexpr (Swap)
        store(cc, r, T(acc[i]));
      else
        store(r, cc, T(acc[i]));
    }
  }
}

// One warp's tiles of gemm_mma_bf16 (Swap: the mma computes the transposed product). Element (r, l) of the mma's
// A and (l, c) of its B are zero outside the product (nothing is read there); an operand stored along the
// reduction (a chunk's rows) is read as 16-byte vectors where its stride and alignment allow. Full tiles take
// mma_full_tiles.
template <bool Swap, class T, bool TA, bool TB, class Store>
__device__ __forceinline__ void mma_tiles(int m, int n, int k, Operand<T, TA> A, Operand<T, TB> B, const Store& store,
                                          int start) {
  const int R = Swap ? n : m, N = Swap ? m : n;
  auto X = [&](int r, int l) -> float { return r < R && l < k ? float(Swap ? B(l, r) : A(r, l)) : 0.f; };
  auto Y = [&](int l, int c) -> float { return c < N && l < k ? float(Swap ? A(c, l) : B(l, c)) : 0.f; };
  // X's row r (Y's column c) at l .. l+3 is p[r ld + l ..] when that operand is stored along the reduction.
  constexpr bool x_rows = Swap ? TB : !TA, y_rows = Swap ? !TA : TB;
  const T* xp = Swap ? B.p : A.p;
  const T* yp = Swap ? A.p : B.p;
  const int xld = Swap ? B.ld : A.ld, yld = Swap ? A.ld : B.ld;
  const bool xvec = x_rows && xld % 4 == 0 && reinterpret_cast<uintptr_t>(xp) % 16 == 0;
  const bool yvec = y_rows && yld % 4 == 0 && reinterpret_cast<uintptr_t>(yp) % 16 == 0;
  if (R % 16 == 0 && N % 8 == 0 && (k % 16 == 0 || k == 8)) {
    if (k == 8)
      mma_full_tiles<Swap, x_rows, y_rows, true>(R, N, k, xp, xld, xvec, yp, yld, yvec, store, start);
    else
      mma_full_tiles<Swap, x_rows, y_rows, false>(R, N, k, xp, xld, xvec, yp, yld, yvec, store, start);
    return;
  }
  auto fetch_x = [&](int r, int l, float (&v)[4]) {
    if (xvec && r < R && l + 3 < k) {
      load_row_vector<4>(xp + r * xld + l, v);
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) v[j] = X(r, l + j);
    }
  };
  auto fetch_y = [&](int c, int l, float (&v)[4]) {
    if (yvec && c < N && l + 3 < k) {
      load_row_vector<4>(yp + c * yld + l, v);
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) v[j] = Y(l + j, c);
    }
  };
  const int col_tiles = (N + 7) / 8, tiles = (R + 15) / 16 * col_tiles;
  const int lane = int(threadIdx.x % 32), g = lane / 4, t = lane % 4;
  // The same trip count on every lane: mma.sync converged.
  for (int tile = first_item(start) / 32; tile < tiles; tile += v2_warps()) {
    const int r0 = tile / col_tiles * 16 + g, cb = tile % col_tiles * 8;
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll 4
    for (int l0 = 0; l0 < k; l0 += 16) {
      const int l = l0 + mma_slot_k(2 * t);
      float x0[4], x8[4], y[4];  // X's rows r0 and r0 + 8, Y's column cb + g, at l .. l+3
      fetch_x(r0, l, x0);
      fetch_x(r0 + 8, l, x8);
      fetch_y(cb + g, l, y);
      const uint32_t a[4] = {pack_bf16(x0[0], x0[1]), pack_bf16(x8[0], x8[1]), pack_bf16(x0[2], x0[3]),
                             pack_bf16(x8[2], x8[3])};
      mma_bf16(acc, a, pack_bf16(y[0], y[1]), pack_bf16(y[2], y[3]));
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = r0 + (i >= 2 ? 8 : 0), c = cb + 2 * t + (i & 1);
      if (r < R && c < N) {
        if constexpr (Swap)
          store(c, r, T(acc[i]));
        else
          store(r, c, T(acc[i]));
      }
    }
  }
}

// The products on tensor cores (the kernels' Tc, bf16 products): mma.sync m16n8k16 (mma_bf16.cuh), every operand
// element rounded to bf16 as it is loaded from the fp32 buffers into a fragment, fp32 accumulation; the result
// goes to store as an fp32 sum, so the element steps and the state stay fp32. The mma's 16 rows take the wider of
// the product's output dimensions: a chunk's rows (m <= 8) become its 8 columns (the tile computes the transposed
// product, (op(A) op(B))ᵀ = op(B)ᵀ op(A)ᵀ, and stores it transposed), so the C x d products fill the tiles. A
// warp owns 16 x 8 output tiles, tile t on the warp that work item 32 t goes to (gemm_tiles' start), and each of
// its threads stores the four elements it holds: one owner per element, the same for two products of the same
// shape and start. Returns the number of work items (32 per tile).
template <class T, bool TA, bool TB, class Store>
__device__ __forceinline__ int gemm_mma_bf16(int m, int n, int k, Operand<T, TA> A, Operand<T, TB> B,
                                             const Store& store, int start) {
  static_assert(sizeof(T) == 4, "bf16 products accumulate in fp32: float kernels only");
  const bool swap = m <= 8 && n > m;
  if (swap)
    mma_tiles<true>(m, n, k, A, B, store, start);
  else
    mma_tiles<false>(m, n, k, A, B, store, start);
  const int R = swap ? n : m, N = swap ? m : n;
  return (R + 15) / 16 * ((N + 7) / 8) * 32;
}

// Where the next product of a phase starts handing out its work (gemm_tiles' start); v2's products issue the
// loads of 4 reduction steps together, and take gemm_chunk_rows / gemm_tiles_vector_a when they fit. Tc: every
// product on tensor cores (gemm_mma_bf16).
template <bool Tc = false>
struct Spread {
  int next = 0;
  template <class T, bool TA, bool TB, class Store>
  __device__ void operator()(int m, int n, int k, Operand<T, TA> A, Operand<T, TB> B, const Store& store) {
    next = int(unsigned(next + product(m, n, k, A, B, store)) % v2_threads());
  }
  template <class T, bool TA, bool TB, class Store>
  __device__ int product(int m, int n, int k, Operand<T, TA> A, Operand<T, TB> B, const Store& store) const {
    if constexpr (Tc) {
      return gemm_mma_bf16(m, n, k, A, B, store, next);
    } else if constexpr (!TA) {
      if (rows_product_fits(m, k, A)) return gemm_chunk_rows(m, n, k, A, B, store, next);
    } else {
      if (columns_product_fits(m, n, A)) return gemm_tiles_vector_a<kUnrollV2>(m, n, k, A, B, store, next);
    }
    return block_products<kUnrollV2>(m, n, k, A, B, store, next);
  }
};

// One staging buffer: the rows of q, k, v, dO [C'][d], then θ, η, α [C'] (titans::stage_elements).
template <class T>
struct Stage {
  T *q, *k, *v, *go, *theta, *eta, *alpha;
};
template <class T>
__device__ Stage<T> stage_at(const Args<T>& a, T* base) {
  const int64_t rows = int64_t(a.chunk_rows) * a.d;
  T* gates = base + 4 * rows;
  return {base, base + rows, base + 2 * rows, base + 3 * rows, gates, gates + a.chunk_rows, gates + 2 * a.chunk_rows};
}

// The two staging buffers and which chunk each holds (the same values in every thread: all threads take the same
// branches). Chunk c goes to buffer c % 2, so a prefetch of c ± 1 never touches the buffer of c. Selected, not
// indexed, and the arguments passed to each call: so that nothing here (nor the kernel's Args) lives in local memory.
template <class T>
struct Stager {
  T *base0, *base1;
  int64_t held0 = -1, held1 = -1;  // 2 c + (rows of q and dO included)
  const T* q;   // the rows staged as queries (null: none)
  const T* go;  // the output gradient rows (null: none)

  __device__ Stage<T> at(const Args<T>& a, int64_t c) const { return stage_at(a, c % 2 ? base1 : base0); }
  __device__ void issue(const Args<T>& a, const Group& g1, int64_t c, bool full) {
    const Stage<T> st = at(a, c);
    const int64_t c0 = c * a.C, row0 = g1.tok(0, c0);
    const int n = int(imin(a.C, g1.len - c0)), nd = n * a.d;
    const int64_t off = row0 * a.d;
    for (int e = threadIdx.x; e < nd; e += int(v2_threads())) {
      if (full && q) async_copy_element(st.q + e, q + off + e);
      async_copy_element(st.k + e, a.k + off + e);
      async_copy_element(st.v + e, a.v + off + e);
      if (full && go) async_copy_element(st.go + e, go + off + e);
    }
    for (int r = threadIdx.x; r < n; r += int(v2_threads())) {
      async_copy_element(st.theta + r, a.theta + row0 + r);
      if (a.momentum) async_copy_element(st.eta + r, a.eta + row0 + r);
      if (a.decay) async_copy_element(st.alpha + r, a.alpha + row0 + r);
    }
    (c % 2 ? held1 : held0) = 2 * c + (full ? 1 : 0);
  }
  // Starts copying chunk c into its buffer; the caller waits (async_wait_all) before the barrier that precedes
  // the first read.
  __device__ void prefetch(const Args<T>& a, const Group& g1, int64_t c, bool full) { issue(a, g1, c, full); }
  // Chunk c in its buffer, readable by the block on return (copies it now, with a barrier, unless prefetched).
  __device__ Stage<T> ensure(const Args<T>& a, const Group& g1, int64_t c, bool full) {
    if ((c % 2 ? held1 : held0) != 2 * c + (full ? 1 : 0)) {
      issue(a, g1, c, full);
      async_wait_all();
      __syncthreads();
    }
    return at(a, c);
  }
};

// The staged rows of chunk c0.. seen as a group of one item whose token c0 + r is row r (for the functors of
// titans_elementwise.h that index tokens: ChunkMean).
__device__ __forceinline__ Group staged_group(int64_t c0, int64_t len) { return Group{1, 0, 1, -c0, 0, len}; }

// `f(second, row, col, index in W's layout L, flat index)` for every element of the state, a warp per row of W1
// [dh][d] then of W2 [d][dh] (lanes along the row: no index division).
template <class F>
__device__ __forceinline__ void state_each(const StateLayout& L, const F& f) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = v2_warps();
  const int64_t P = int64_t(L.d) * L.dh;
  for (int h = warp; h < L.dh; h += warps)
    for (int j = lane; j < L.d; j += 32) f(false, h, j, L.at_rc(false, h, j), int64_t(h) * L.d + j);
  for (int j = warp; j < L.d; j += warps)
    for (int h = lane; h < L.dh; h += 32) f(true, j, h, L.at_rc(true, j, h), P + int64_t(j) * L.dh + h);
}

// The context of one chunk step.
template <class T>
struct StepCtx {
  const Args<T>& a;
  const Block<T>& b;
  const Group& g1;
  int64_t c, c0;
  int n;
};

// One forward chunk step of item g1 (MemoryGroup::apply_rows, then MemoryGroup::update when `update`), W_c on chip
// in layout L (padded), updated in place to W_{c+1}; S: Sc read, Sn written in layout SL (may be the same; null:
// no momentum); keepW / keepS (unpadded, may be null): copies of the new state. apply: Qa holds the chunk's
// queries on chip (q̃ with the Q-K projection), o its output rows. qk (forward with the projection, update on):
// M += KᵀK, z += Σ ||k||², and the next chunk's queries projected into Qt (on chip and a.qt), their raw rows in
// `next`. `prefetch()` is called first in the step (it starts the next chunk's copies); the step waits for them
// before its third barrier. Barriers: 2 without update, else 4; the block may read everything after return.
template <bool Tc, class T, class Prefetch>
__device__ __forceinline__ void forward_step_v2(const StepCtx<T>& x, T* W, const T* Sc, T* Sn, const StateLayout& SL, T* keepW,
                                T* keepS, const Stage<T>& cur, bool update, const T* Qa, T* o, T* M, T* Qt,
                                const Stage<T>* next, const Prefetch& prefetch) {
  using namespace titans;
  const Args<T>& a = x.a;
  const Block<T>& b = x.b;
  const int d = a.d, dh = a.dh, n = x.n;
  const int64_t P = int64_t(d) * dh;
  const StateLayout L{d, dh, true};
  T *Zq = b.buf[kZq], *Sgq = b.buf[kSgq], *Zk = b.buf[kZ], *Sgk = b.buf[kSg], *E = b.buf[kE], *Bm = b.buf[kBm];
  T *A = b.buf[kA], *DZ = b.buf[kDZ];
  const T* K = cur.k;
  prefetch();
  // Phase A: Zq = Qa W1ᵀ, Zk = K W1ᵀ, silu; the gate means; the chunk's key squares join z.
  {
    Spread<Tc> sp;
    const auto w1t = mat<true>(W, L.ld1());
    if (Qa)
      sp(n, dh, d, mat<false>(Qa, d), w1t, [&](int i, int h, T acc) {
        Zq[i * dh + h] = acc;
        Sgq[i * dh + h] = math::silu(acc);
      });
    if (update) {
      sp(n, dh, d, mat<false>(K, d), w1t, [&](int i, int h, T acc) {
        Zk[i * dh + h] = acc;
        Sgk[i * dh + h] = math::silu(acc);
      });
      const Group gs = staged_group(x.c0, x.g1.len);
      if (threadIdx.x == 0 && a.momentum) fn::ChunkMean<T>{cur.eta, b.ebar - x.c, gs, a.C}(x.c);
      if (threadIdx.x == 1 && a.decay) fn::ChunkMean<T>{cur.alpha, b.abar - x.c, gs, a.C}(x.c);
      if (M && int(threadIdx.x / 32) == v2_warps() - 1) {  // the last warp: z += Σ ||k||² (QkGroup::absorb)
        double squares = 0;
        for (int e = threadIdx.x % 32; e < n * d; e += 32) squares += double(K[e]) * double(K[e]);
        squares = warp_sum(squares);
        if (threadIdx.x % 32 == 0) *b.qz = *b.qz + T(squares);
      }
    }
  }
  __syncthreads();
  // Phase B: o = [Qa] + Sgq W2ᵀ; E = Sgk W2ᵀ, then the MSE gradient E, Bm = θ E.
  {
    Spread<Tc> sp;
    const auto w2t = mat<true>(W + L.off2(), L.ld2());
    if (Qa) {
      T* orow = o + x.g1.tok(0, x.c0) * d;
      sp(n, d, dh, mat<false>(Sgq, dh), w2t, [&](int i, int j, T acc) {
        orow[i * d + j] = a.residual ? acc + Qa[i * d + j] : acc;
      });
    }
    if (update)
      sp(n, d, dh, mat<false>(Sgk, dh), w2t, [&](int i, int j, T acc) {
        const T y = acc + (a.residual ? K[i * d + j] : T(0));
        fn::mse_err_core(y, cur.v[i * d + j], cur.theta[i], E[i * d + j], Bm[i * d + j]);
      });
  }
  __syncthreads();
  if (!update) return;
  // Phase C: DS = E W2, then DZ = DS silu'(Zk), A = θ DZ; M += KᵀK. The next chunk's rows land.
  {
    Spread<Tc> sp;
    sp(n, dh, d, mat<false>(E, d), mat<false>(W + L.off2(), L.ld2()), [&](int i, int h, T acc) {
      fn::inner_a_core(acc, Zk[i * dh + h], cur.theta[i], DZ[i * dh + h], A[i * dh + h]);
    });
    if (M) sp(d, d, n, mat<true>(K, d), mat<false>(K, d), [&](int i, int j, T v) { M[i * d + j] = v + M[i * d + j]; });
  }
  async_wait_all();
  __syncthreads();
  // Phase D: D = -[Aᵀ K; Bmᵀ Sgk] meets the step (fn::step_core) where each element lands; the next chunk's
  // queries through the Q-K projection with the new sums.
  {
    Spread<Tc> sp;
    // The step as it was before the instruction cuts (64-bit indices, the gate means read where used): the cut
    // version (32-bit indices, the means copied to locals whose address step_core took) read address 0 inside
    // step_core on the H200 (compute-sanitizer, 2026-11-30) though the CPU emulation of the same code was clean.
    auto step = [&](bool second, int row, int col, T acc) {
      const int64_t w = L.at_rc(second, row, col), s = SL.at_rc(second, row, col);
      T p;
      const T wn = fn::step_core(W[w], Sc ? Sc + s : nullptr, -acc, Sc ? *b.ebar : T(0), a.decay ? b.abar : nullptr, &p);
      W[w] = wn;
      if (Sn) Sn[s] = p;
      const int64_t e = second ? P + int64_t(row) * dh + col : int64_t(row) * d + col;
      if (keepW) keepW[e] = wn;
      if (keepS) keepS[e] = p;
    };
    sp(dh, d, n, mat<true>(A, dh), mat<false>(K, d), [&](int h, int j, T acc) { step(false, h, j, acc); });
    sp(d, dh, n, mat<true>(Bm, d), mat<false>(Sgk, dh), [&](int j, int h, T acc) { step(true, j, h, acc); });
    if (M) {
      const int64_t c1 = x.c + 1, c10 = c1 * a.C;
      const int n1 = int(imin(a.C, x.g1.len - c10));
      const T z = *b.qz;
      T* qt = a.qt + x.g1.tok(0, c10) * d;
      const T* qraw = next->q;
      if (threadIdx.x == 0) a.qk_z[int64_t(blockIdx.x) * num_chunks(x.g1.len, a.C) + c1] = z;
      sp(n1, d, d, mat<false>(qraw, d), mat<false>(M, d), [&](int r, int j, T acc) {
        const T v = fn::qk_finalize_core(acc, qraw[r * d + j], z);
        Qt[r * d + j] = v;
        qt[r * d + j] = v;
      });
    }
  }
  __syncthreads();
}

template <class T, bool Tc = false, bool OnChip = false>
__global__ void __launch_bounds__(titans::kPersistentThreadsV2, 1) k_titans_persistent_fwd_v2(Args<T> a) {
  using namespace titans;
  TTT_DYNAMIC_SMEM(smem);
  const Block<T> b = make_block<OnChip>(a, smem);
  const Group g1 = item_group(a.g);
  const int d = a.d, dh = a.dh;
  const int64_t P2 = 2 * int64_t(d) * dh, N = num_chunks(g1.len, a.C);
  const StateLayout L{d, dh, true};
  T* W = b.buf[kW];
  T* S = a.momentum ? b.buf[kS] : nullptr;
  T* ckW = a.save ? a.ckW + int64_t(blockIdx.x) * a.checkpoints * P2 : nullptr;
  T* ckS = a.save && a.momentum ? a.ckS + int64_t(blockIdx.x) * a.checkpoints * P2 : nullptr;
  T* M = a.qk ? b.buf[kQk] : nullptr;
  T* Qt = a.qk ? b.buf[kQt] : nullptr;
  // The raw queries are staged: q_in with the projection (projected on chip into Qt), else q itself.
  Stager<T> stager{b.buf[kStage0], b.buf[kStage1], -1, -1, a.qk ? a.q_in : a.q, nullptr};
  // W := [W1⁰; W2⁰] of the item's sequence-head, S := 0, the Q-K sums := 0; chunk 0 staged.
  state_each(L, [&](bool second, int row, int col, int64_t w, int64_t e) {
    const T v = second ? a.w2[g1.b0 * (P2 / 2) + (e - P2 / 2)] : a.w1[g1.b0 * (P2 / 2) + e];
    W[w] = v;
    if (S) S[w] = T(0);
    if (ckW) ckW[e] = v;
    if (ckS) ckS[e] = T(0);
  });
  if (M)
    for (int64_t e = threadIdx.x; e < int64_t(d) * d; e += blockDim.x) M[e] = T(0);
  if (threadIdx.x == 0) *b.qz = T(0);
  const Stage<T> first = stager.ensure(a, g1, 0, true);
  if (M) {  // chunk 0's queries: no key yet, q̃ = q (fn::qk_finalize_core with z = 0)
    const int n0 = int(imin(a.C, g1.len));
    T* qt = a.qt + g1.tok(0, 0) * d;
    for (int e = threadIdx.x; e < n0 * d; e += blockDim.x) {
      const T v = fn::qk_finalize_core(T(0), first.q[e], T(0));
      Qt[e] = v;
      qt[e] = v;
    }
    if (threadIdx.x == 0) a.qk_z[int64_t(blockIdx.x) * N] = T(0);
    __syncthreads();
  }
  for (int64_t c = 0; c < N; ++c) {
    const int64_t c0 = c * a.C;
    const StepCtx<T> x{a, b, g1, c, c0, int(imin(a.C, g1.len - c0))};
    const Stage<T> cur = stager.ensure(a, g1, c, true);
    const bool update = c + 1 < N;
    const Stage<T> next = stager.at(a, c + 1);
    const bool keep = ckW && update && (c + 1) % a.K == 0;
    forward_step_v2<Tc>(x, W, S, S, L, keep ? ckW + ((c + 1) / a.K) * P2 : nullptr,
                    keep && ckS ? ckS + ((c + 1) / a.K) * P2 : nullptr, cur, update, M ? Qt : cur.q, a.o,
                    update ? M : nullptr, Qt, update ? &next : nullptr, [&] {
                      if (update) stager.prefetch(a, g1, c + 1, true);
                    });
  }
}

// The adjoints of chunk c's update (when c + 1 < N; MemoryGroup::update_bwd) and apply (MemoryGroup::apply_bwd)
// with W_c and S_c (momentum; else null) on chip (padded), the chunk's rows staged in `cur` (q̃ or q, k, v, dO). dW holds dL/dW_{c+1} on entry and dL/dW_c on exit. G: with momentum the buffer of dS, holding the
// pending G_{c+1} (dS_{c+1} = η̄_{c+1} G_{c+1}, η̄_{c+1} in b.eta_pending: the product is taken where G_c is formed,
// so no phase waits for dS) on entry and G_c on exit; without momentum a cotangent buffer. `prefetch()` first
// (the next chunk's rows, the next W), `prefetch_momentum()` once S_c is read no more (the next S, into S's
// buffer); the step waits for those copies before its last barrier.
// Barriers: 3 without update, else 6.
template <bool Tc, class T, class Prefetch, class PrefetchMomentum>
__device__ __forceinline__ void backward_step_v2(const StepCtx<T>& x, const T* W, const T* Sc, const Stage<T>& cur, bool update,
                                 const Prefetch& prefetch, const PrefetchMomentum& prefetch_momentum) {
  using namespace titans;
  const Args<T>& a = x.a;
  const Block<T>& b = x.b;
  const int d = a.d, dh = a.dh, n = x.n;
  const StateLayout L{d, dh, true};
  T* dW = b.buf[kGradW];
  T* G = a.momentum ? b.buf[kGradS] : b.buf[kCot];
  const T *G1 = G, *G2 = G + L.off2(), *W2 = W + L.off2();
  T *Zq = b.buf[kZq], *Sgq = b.buf[kSgq], *Zk = b.buf[kZ], *Sgk = b.buf[kSg], *E = b.buf[kE], *Bm = b.buf[kBm];
  T *A = b.buf[kA], *DZ = b.buf[kDZ], *dA = b.buf[kGradA], *dSg = b.buf[kGradSg], *dZq = b.buf[kGradZq];
  T *dDS = b.buf[kGradDS], *dZ = b.buf[kGradZ], *dBm = b.buf[kGradB], *dE = b.buf[kGradE];
  const T *Q = cur.q, *K = cur.k, *dO = cur.go, *th = cur.theta;
  const int64_t row0 = x.g1.tok(0, x.c0) * d;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = v2_warps();
  prefetch();
  // Phase 1: Zq = Q W1ᵀ, Zk = K W1ᵀ, silu; the gate means; G = dW' + dS' (fn::StepBwdPre) and the two block
  // dots <dW', W>, <G, S_c> as the warps' partial sums.
  {
    Spread<Tc> sp;
    const auto w1t = mat<true>(W, L.ld1());
    sp(n, dh, d, mat<false>(Q, d), w1t, [&](int i, int h, T acc) {
      Zq[i * dh + h] = acc;
      Sgq[i * dh + h] = math::silu(acc);
    });
    if (update) {
      sp(n, dh, d, mat<false>(K, d), w1t, [&](int i, int h, T acc) {
        Zk[i * dh + h] = acc;
        Sgk[i * dh + h] = math::silu(acc);
      });
      const Group gs = staged_group(x.c0, x.g1.len);
      if (threadIdx.x == 0 && a.momentum) fn::ChunkMean<T>{cur.eta, b.ebar - x.c, gs, a.C}(x.c);
      if (threadIdx.x == 1 && a.decay) fn::ChunkMean<T>{cur.alpha, b.abar - x.c, gs, a.C}(x.c);
      const T pending = a.momentum ? *b.eta_pending : T(0);
      double keep = 0, eta = 0;
      state_each(L, [&](bool, int, int, int64_t w, int64_t) {
        T dS;  // dS_{c+1} = η̄_{c+1} G_{c+1} (fn::StepBwdPost's), then G_c = dW' + dS (fn::StepBwdPre's)
        if (a.momentum) fn::StepBwdPost<T>{nullptr, &dS, G + w, &pending, nullptr, 1}(0);
        fn::StepBwdPre<T>{dW + w, a.momentum ? &dS : nullptr, G + w}(0);
        if (a.decay) keep += double(dW[w]) * double(W[w]);
        if (a.momentum) eta += double(G[w]) * double(Sc[w]);
      });
      keep = warp_sum(keep);
      eta = warp_sum(eta);
      if (lane == 0) b.red[2 * warp] = keep, b.red[2 * warp + 1] = eta;
    }
  }
  __syncthreads();
  // Phase 2: the dots (every thread sums the warps' partials in order); dW = (1 - ᾱ) dW'; the gates' gradients;
  // E = Sgk W2ᵀ and the MSE gradient; dA = -K G1ᵀ; dBm = -Sgk G2ᵀ and dE = θ dBm (fn::InnerBwdD's); dZq = (dO W2)
  // silu'(Zq).
  prefetch_momentum();
  {
    Spread<Tc> sp;
    if (update) {
      double keep = 0, eta = 0;
      for (int w = 0; w < warps; ++w) keep += b.red[2 * w], eta += b.red[2 * w + 1];
      const T keepdot = T(keep), etadot = T(eta);
      if (a.decay)
        state_each(L, [&](bool, int, int, int64_t w, int64_t) {
          fn::StepBwdPost<T>{dW + w, nullptr, G + w, b.ebar, b.abar, 1}(0);
        });
      if (a.momentum || a.decay)
        block_each(n, fn::FillGates<T>{a.momentum ? a.geta : nullptr, a.decay ? a.galpha : nullptr, &etadot, &keepdot,
                                       x.g1, x.c0, n});
      sp(n, d, dh, mat<false>(Sgk, dh), mat<true>(W2, L.ld2()), [&](int i, int j, T acc) {
        const T y = acc + (a.residual ? K[i * d + j] : T(0));
        fn::mse_err_core(y, cur.v[i * d + j], th[i], E[i * d + j], Bm[i * d + j]);
      });
      sp(n, dh, d, mat<false>(K, d), mat<true>(G1, L.ld1()), [&](int i, int h, T acc) { dA[i * dh + h] = -acc; });
      sp(n, d, dh, mat<false>(Sgk, dh), mat<true>(G2, L.ld2()), [&](int i, int j, T acc) {
        dBm[i * d + j] = -acc;
        dE[i * d + j] = th[i] * -acc;
      });
    }
    sp(n, dh, d, mat<false>(dO, d), mat<false>(W2, L.ld2()),
       [&](int i, int h, T acc) { dZq[i * dh + h] = T(0) + acc * math::dsilu(Zq[i * dh + h]); });
  }
  __syncthreads();
  // Phase 3: DS = E W2, then A, DZ (fn::inner_a_core) and dDS, dZ (fn::inner_bwd_h_core); dSg = -Bm G2; the
  // apply's dW2 += dOᵀ Sgq, dW1 += dZqᵀ Q, gq = [dO] + dZq W1.
  {
    Spread<Tc> sp;
    if (update) {
      sp(n, dh, d, mat<false>(E, d), mat<false>(W2, L.ld2()), [&](int i, int h, T acc) {
        const int at = i * dh + h;
        fn::inner_a_core(acc, Zk[at], th[i], DZ[at], A[at]);
        fn::inner_bwd_h_core(Zk[at], acc, dA[at], th[i], dDS[at], dZ[at]);
      });
      sp(n, dh, d, mat<false>(Bm, d), mat<false>(G2, L.ld2()), [&](int i, int h, T acc) { dSg[i * dh + h] = -acc; });
    }
    sp(d, dh, n, mat<true>(dO, d), mat<false>(Sgq, dh), [&](int j, int h, T acc) {
      T& w = dW[L.at_rc(true, j, h)];
      w = acc + w;
    });
    sp(dh, d, n, mat<true>(dZq, dh), mat<false>(Q, d), [&](int h, int j, T acc) {
      T& w = dW[L.at_rc(false, h, j)];
      w = acc + w;
    });
    T* gq = a.gq + row0;
    sp(n, d, dh, mat<false>(dZq, dh), mat<false>(W, L.ld1()), [&](int i, int j, T acc) {
      gq[i * d + j] = acc + (a.residual ? dO[i * d + j] : T(0));
    });
  }
  if (!update) {
    async_wait_all();
    __syncthreads();
    return;
  }
  __syncthreads();
  // Phase 4: dθ (the row dots <DZ_r, dA_r> + <E_r, dBm_r>, a warp per row); dY = 2 (dE + dDS W2ᵀ) with dv, dk
  // (fn::inner_bwd2_core); dW2 += Eᵀ dDS.
  {
    Spread<Tc> sp;
    for (int r = warp; r < n; r += warps) {
      double s1 = 0, s2 = 0;
      for (int h = lane; h < dh; h += 32) s1 += double(DZ[r * dh + h]) * double(dA[r * dh + h]);
      for (int j = lane; j < d; j += 32) s2 += double(E[r * d + j]) * double(dBm[r * d + j]);
      s1 = warp_sum(s1);
      s2 = warp_sum(s2);
      if (lane == 0) {
        b.rd1[r] = T(s1);
        b.rd2[r] = T(s2);
        fn::FillTheta<T>{b.rd1, b.rd2, a.gtheta, x.g1, x.c0, n}(r);
      }
    }
    T *gk = a.gk + row0, *gv = a.gv + row0;
    sp(n, d, dh, mat<false>(dDS, dh), mat<true>(W2, L.ld2()), [&](int i, int j, T acc) {
      const int at = i * d + j;
      dE[at] = fn::inner_bwd2_core(acc + dE[at], a.residual, gv[at], gk[at]);
    });
    sp(d, dh, n, mat<true>(E, d), mat<false>(dDS, dh), [&](int j, int h, T acc) {
      T& w = dW[L.at_rc(true, j, h)];
      w = acc + w;
    });
  }
  __syncthreads();
  // Phase 5: dSg += dY W2, dZ += dSg silu'(Zk) (fn::DsiluMul's); dW2 += dYᵀ Sgk.
  {
    Spread<Tc> sp;
    sp(n, dh, d, mat<false>(dE, d), mat<false>(W2, L.ld2()), [&](int i, int h, T acc) {
      const int at = i * dh + h;
      const T g = acc + dSg[at];
      dZ[at] = dZ[at] + g * math::dsilu(Zk[at]);
    });
    sp(d, dh, n, mat<true>(dE, d), mat<false>(Sgk, dh), [&](int j, int h, T acc) {
      T& w = dW[L.at_rc(true, j, h)];
      w = acc + w;
    });
  }
  __syncthreads();
  // Phase 6: dW1 += dZᵀ K; dk += -A G1 + dZ W1 (both products on the same threads: the same spread start).
  {
    Spread<Tc> sp;
    sp(dh, d, n, mat<true>(dZ, dh), mat<false>(K, d), [&](int h, int j, T acc) {
      T& w = dW[L.at_rc(false, h, j)];
      w = acc + w;
    });
    T* gk = a.gk + row0;
    const int start = sp.next;
    sp(n, d, dh, mat<false>(A, dh), mat<false>(G1, L.ld1()), [&](int i, int j, T acc) { gk[i * d + j] = -acc + gk[i * d + j]; });
    sp.next = start;
    // One owner per element needs the same kind of product for both (the buffers' alignment decides; the plan
    // aligns every buffer to 16 bytes, so this barrier is only a guard).
    if (rows_product_fits(n, dh, mat<false>(A, dh)) != rows_product_fits(n, dh, mat<false>(dZ, dh))) __syncthreads();
    sp(n, d, dh, mat<false>(dZ, dh), mat<false>(W, L.ld1()), [&](int i, int j, T acc) { gk[i * d + j] = acc + gk[i * d + j]; });
    if (a.momentum && threadIdx.x == 0) *b.eta_pending = *b.ebar;  // dS_c = η̄_c G_c, taken in the next step
  }
  async_wait_all();
  __syncthreads();
}

// The Q-K projection's backward (QkGroup::backward; v1's qk_backward, the same math) with two barriers per chunk
// and sweep instead of four: the forward sweep takes the dot Σ dq·q in the projection's epilogue (the warps'
// partials, summed by thread 0 after the barrier, next to the keys' absorption); the reverse sweep adds Ĝᵀ Q, Qᵀ Ĝ
// and 2 dz I to P on one owner per element (the two products start on the same thread).
template <class T>
__device__ __forceinline__ void qk_backward_v2(const Args<T>& a, const Block<T>& b, const Group& g1, int64_t N) {
  const int d = a.d;
  const int64_t dd = int64_t(d) * d;
  const T* z = a.qk_z + int64_t(blockIdx.x) * N;
  T* dz = a.qk_dz + int64_t(blockIdx.x) * N;
  T* M = b.buf[titans::kQk];
  T* acc = b.buf[titans::kE];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = v2_warps();
  __syncthreads();
  for (int64_t e = threadIdx.x; e < dd; e += blockDim.x) M[e] = T(0);
  __syncthreads();
  for (int64_t c = 0; c < N; ++c) {  // forward sweep: the sums M grow as in the forward
    const int64_t c0 = c * a.C, row0 = g1.tok(0, c0) * d;
    const int n = int(imin(a.C, g1.len - c0));
    const T *G = a.gq + row0, *q = a.q_in + row0;
    T* dq = a.gq_final + row0;
    if (c > 0) {  // dq = M G / z and the dot Σ dq·q
      double dot = 0;
      block_products<kUnrollV2>(n, d, d, mat<false>(G, d), mat<false>(M, d), [&](int r, int j, T v) {
        const T o = fn::qk_finalize_core(v, G[r * d + j], z[c]);
        dq[r * d + j] = o;
        dot += double(o) * double(q[r * d + j]);
      });
      dot = warp_sum(dot);
      if (lane == 0) b.red[2 * warp] = dot;
    } else {  // no key yet: dq = G
      for (int e = threadIdx.x; e < n * d; e += int(v2_threads())) dq[e] = fn::qk_finalize_core(T(0), G[e], z[c]);
    }
    __syncthreads();
    if (c > 0 && threadIdx.x == 0) {
      double dot = 0;
      for (int w = 0; w < warps; ++w) dot += b.red[2 * w];
      const T t = T(dot);
      fn::QkDz<T>{&t, z + c, dz + c}(0);
    }
    if (c + 1 < N) {
      const T* Kr = a.k + row0;
      block_products<kUnrollV2>(d, d, n, mat<true>(Kr, d), mat<false>(Kr, d),
                     [&](int i, int j, T v) { M[i * d + j] = v + M[i * d + j]; });
    }
    __syncthreads();
  }
  T* Pm = M;  // reverse sweep: P over the later chunks
  for (int64_t e = threadIdx.x; e < dd; e += blockDim.x) Pm[e] = T(0);
  __syncthreads();
  for (int64_t c = N - 1; c >= 0; --c) {
    const int64_t c0 = c * a.C, row0 = g1.tok(0, c0) * d;
    const int n = int(imin(a.C, g1.len - c0));
    const T* Kr = a.k + row0;
    T* gk = a.gk + row0;
    block_products<kUnrollV2>(n, d, d, mat<false>(Kr, d), mat<false>(Pm, d),
                   [&](int r, int j, T v) { gk[r * d + j] = gk[r * d + j] + v; });  // dk = K P, added
    if (c > 0) block_each(int64_t(n) * d, fn::QkGhat<T>{a.gq, z + c, acc, g1, c0, n, d});
    __syncthreads();
    if (c > 0) {
      const T* q = a.q_in + row0;
      block_products<kUnrollV2>(d, d, n, mat<true>(acc, d), mat<false>(q, d),
                     [&](int i, int j, T v) { Pm[i * d + j] = v + Pm[i * d + j]; });  // P += Ĝᵀ Q
      block_products<kUnrollV2>(d, d, n, mat<true>(q, d), mat<false>(acc, d), [&](int i, int j, T v) {
        Pm[i * d + j] = v + Pm[i * d + j];  // P += Qᵀ Ĝ
        if (i == j) fn::AddDiag<T>{Pm, dz + c, d}(j);  // P += 2 dz I
      });
      __syncthreads();
    }
  }
}

template <class T, bool Tc = false, bool OnChip = false>
__global__ void __launch_bounds__(titans::kPersistentThreadsV2, 1) k_titans_persistent_bwd_v2(Args<T> a) {
  using namespace titans;
  TTT_DYNAMIC_SMEM(smem);
  const Block<T> b = make_block<OnChip>(a, smem);
  const Group g1 = item_group(a.g);
  const int d = a.d, dh = a.dh;
  const int64_t P2 = 2 * int64_t(d) * dh, N = num_chunks(g1.len, a.C), item = blockIdx.x;
  const StateLayout L{d, dh, true};
  // Tokens of the last chunk take part in no update (MemoryGroup::backward).
  const int64_t cl0 = (N - 1) * a.C, nl = g1.len - cl0;
  block_each(nl * d, fn::CopyRows<T>{a.gk, nullptr, g1, cl0, nl, d});
  block_each(nl * d, fn::CopyRows<T>{a.gv, nullptr, g1, cl0, nl, d});
  block_each(nl, fn::CopyRows<T>{a.gtheta, nullptr, g1, cl0, nl, 1});
  if (a.geta)
    block_each(a.momentum ? nl : g1.len,
               fn::CopyRows<T>{a.geta, nullptr, g1, a.momentum ? cl0 : 0, a.momentum ? nl : g1.len, 1});
  if (a.galpha)
    block_each(a.decay ? nl : g1.len,
               fn::CopyRows<T>{a.galpha, nullptr, g1, a.decay ? cl0 : 0, a.decay ? nl : g1.len, 1});
  T *Wcur = b.buf[kW], *Wnext = b.buf[kWnext];  // swapped after each step that copied the next state in
  T* dW = b.buf[kGradW];
  T* G = a.momentum ? b.buf[kGradS] : b.buf[kCot];
  T* S = a.momentum ? b.buf[kS] : nullptr;  // S_c on chip
  const int64_t padded = L.off2() + int64_t(d) * L.ld2();
  for (int64_t e = threadIdx.x; e < padded; e += blockDim.x) dW[e] = G[e] = T(0);
  if (threadIdx.x == 0) *b.eta_pending = T(0);
  const T* ckW = a.ckW + item * a.checkpoints * P2;
  const T* ckS = a.momentum ? a.ckS + item * a.checkpoints * P2 : nullptr;
  T* slotW = a.slotW + item * a.K * P2;
  T* slotS = a.momentum ? a.slotS + item * a.K * P2 : nullptr;
  // The state of version c in segment j (lo = j K): the checkpoint at c = lo, else slot c - lo.
  auto stateW = [&](int64_t j, int64_t lo, int64_t c) -> const T* { return c == lo ? ckW + j * P2 : slotW + (c - lo) * P2; };
  auto stateS = [&](int64_t j, int64_t lo, int64_t c) -> const T* { return c == lo ? ckS + j * P2 : slotS + (c - lo) * P2; };
  // Copies of an unpadded state into a padded buffer: now (sync) or started (async, waited by the step).
  auto load_state = [&](T* dst, const T* src) {
    state_each(L, [&](bool, int, int, int64_t w, int64_t e) { async_copy_element(dst + w, src + e); });
  };
  // The walk stages q̃ (or q) and dO with the keys; the recomputation only what the update reads.
  Stager<T> stager{b.buf[kStage0], b.buf[kStage1], -1, -1, a.q, a.go};
  __syncthreads();
  // K = 1: the forward kept every state (checkpoint c is version c), so one walk over all N chunks recomputes
  // nothing and copies each previous state in from its checkpoint while a step runs; else segments of K chunks,
  // each recomputed from its checkpoint into the slots, then walked back.
  const bool kept_all = a.K == 1;
  const int64_t nseg = kept_all ? 1 : num_chunks(N, a.K);
  for (int64_t j = nseg - 1; j >= 0; --j) {
    const int64_t lo = kept_all ? 0 : j * a.K, hi = kept_all ? N : imin(N, lo + a.K);
    const int64_t first = kept_all ? hi - 1 : j;  // the checkpoint the walk starts from
    load_state(Wcur, ckW + first * P2);
    if (S) load_state(S, ckS + first * P2);
    async_wait_all();
    __syncthreads();
    // Recompute the segment's states (W and S on chip, in place; copies in the slots).
    for (int64_t c = lo; !kept_all && c + 1 < hi; ++c) {
      const int64_t c0 = c * a.C;
      const StepCtx<T> x{a, b, g1, c, c0, int(imin(a.C, g1.len - c0))};
      const Stage<T> cur = stager.ensure(a, g1, c, false);
      forward_step_v2<Tc>(x, Wcur, S, S, L, slotW + (c + 1 - lo) * P2, S ? slotS + (c + 1 - lo) * P2 : nullptr, cur,
                      true, static_cast<const T*>(nullptr), static_cast<T*>(nullptr),
                      static_cast<T*>(nullptr), static_cast<T*>(nullptr), static_cast<const Stage<T>*>(nullptr), [&] {
                        stager.prefetch(a, g1, c + 1, c + 2 >= hi);  // full: the walk's first chunk
                      });
    }
    // W, S hold version hi - 1; walk the segment back, the previous state copied in while a step runs.
    for (int64_t c = hi - 1; c >= lo; --c) {
      const int64_t c0 = c * a.C;
      const StepCtx<T> x{a, b, g1, c, c0, int(imin(a.C, g1.len - c0))};
      const Stage<T> cur = stager.ensure(a, g1, c, true);
      backward_step_v2<Tc>(
          x, Wcur, S, cur, c + 1 < N,
          [&] {
            if (c > lo) {
              stager.prefetch(a, g1, c - 1, true);
              load_state(Wnext, kept_all ? ckW + (c - 1) * P2 : stateW(j, lo, c - 1));
            }
          },
          [&] {
            if (c > lo && S) load_state(S, kept_all ? ckS + (c - 1) * P2 : stateS(j, lo, c - 1));
          });
      if (c > lo) {
        T* t = Wcur;
        Wcur = Wnext;
        Wnext = t;
      }
    }
  }
  T* out = a.dW_items + item * P2;
  state_each(L, [&](bool, int, int, int64_t w, int64_t e) { out[e] = dW[w]; });
  if (a.qk) qk_backward_v2(a, b, g1, N);
}

}  // namespace ttt::cuda::persistent
