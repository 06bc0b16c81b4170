// Layout and conversion kernels (layout_kernels.h): block copies, head layouts and the bf16 conversion are
// segment copies (k_segments, four elements per thread where the layout allows); the rest grid-stride loops,
// one thread per element. Naming and launch conventions: kernel_util.cuh.
#include "backend/cuda/layout_kernels.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>

#include "backend/cuda/check.cuh"
#include "backend/cuda/kernel_util.cuh"

namespace ttt::cuda::mk {

namespace {

// ---- segment copies -------------------------------------------------------------------------------------
// Every block copy and head-layout change below moves `n_seg` contiguous segments of `w` elements: segment e
// starts at src + map.src(e) and at dst + map.dst(e). One thread moves kVec elements (a 16-byte load where the
// layout allows), and the element -> (segment, column) split is one division in Index (32-bit whenever the
// element count allows): the former one-thread-per-element kernels did three or four 64-bit divisions per
// element and ran at a fifth of the memory bandwidth (ncu, H200, 2026-11-30).
struct RowsMap {  // copy2d: segment = row
  int64_t lds, ldd;
  __device__ int64_t src(int64_t e) const { return e * lds; }
  __device__ int64_t dst(int64_t e) const { return e * ldd; }
};
// Segment e = (s*N + i)*H + h: head h of token i of sequence s; [S*N, ldx] columns h*d.. <-> [S*H, N, d].
// ld16: the leading dimension of the multi-head side's bf16 copy (heads_to_batch / batch_to_heads with x16).
template <class Index>
struct HeadsMap {
  int64_t ldx, ld16 = 0;
  Index N, H, d;
  __device__ int64_t heads(Index e) const { return int64_t(e / H) * ldx + int64_t(e % H) * d; }
  __device__ int64_t heads16(Index e) const { return int64_t(e / H) * ld16 + int64_t(e % H) * d; }
  __device__ int64_t batch(Index e) const {
    const Index h = e % H, t = e / H, i = t % N, s = t / N;
    return (int64_t(s * H + h) * N + i) * d;
  }
};
template <class Index>
struct HeadsToBatchMap : HeadsMap<Index> {
  __device__ int64_t src(Index e) const { return this->heads(e); }
  __device__ int64_t dst(Index e) const { return this->batch(e); }
  __device__ int64_t copy16(Index e) const { return this->heads16(e); }
};
template <class Index>
struct BatchToHeadsMap : HeadsMap<Index> {
  __device__ int64_t src(Index e) const { return this->batch(e); }
  __device__ int64_t dst(Index e) const { return this->heads(e); }
  __device__ int64_t copy16(Index e) const { return this->heads16(e); }
};

template <int kVec>
struct VecOf;
template <>
struct VecOf<1> {
  static __device__ void load(const float* p, float (&v)[1]) { v[0] = *p; }
};
template <>
struct VecOf<4> {
  static __device__ void load(const float* p, float (&v)[4]) {
    const float4 x = *reinterpret_cast<const float4*>(p);
    v[0] = x.x, v[1] = x.y, v[2] = x.z, v[3] = x.w;
  }
};
template <int kVec>
__device__ void store_vec(float* p, const float (&v)[kVec], bool acc) {
  if constexpr (kVec == 4) {
    float4 x = make_float4(v[0], v[1], v[2], v[3]);
    if (acc) {
      const float4 o = *reinterpret_cast<const float4*>(p);
      x.x += o.x, x.y += o.y, x.z += o.z, x.w += o.w;
    }
    *reinterpret_cast<float4*>(p) = x;
  } else {
    p[0] = acc ? p[0] + v[0] : v[0];
  }
}
template <int kVec>
__device__ void store_vec(__nv_bfloat16* p, const float (&v)[kVec], bool) {
  if constexpr (kVec == 4) {
    uint2 x;
    __nv_bfloat162 lo = __floats2bfloat162_rn(v[0], v[1]), hi = __floats2bfloat162_rn(v[2], v[3]);
    x.x = *reinterpret_cast<uint32_t*>(&lo), x.y = *reinterpret_cast<uint32_t*>(&hi);
    *reinterpret_cast<uint2*>(p) = x;
  } else {
    p[0] = __float2bfloat16_rn(v[0]);
  }
}

// copy16 (kCopy16; fp32 destinations, maps with copy16()): the value the copy stores, rounded to bf16 there too
// (with acc the sum: the bits of the copy and then to_bf16 of its result).
template <class Index, int kVec, class Map, class Out, bool kCopy16 = false>
__global__ void k_segments(const float* __restrict__ src, Out* __restrict__ dst, Map map, Index n_seg, Index w,
                           bool acc, __nv_bfloat16* __restrict__ copy16 = nullptr) {
  const Index per = w / kVec, total = n_seg * per;
  for (Index t = Index(blockIdx.x) * blockDim.x + threadIdx.x; t < total; t += Index(gridDim.x) * blockDim.x) {
    const Index e = t / per, c = (t - e * per) * kVec;
    float v[kVec];
    VecOf<kVec>::load(src + map.src(e) + c, v);
    if constexpr (kCopy16) {
      if (acc) {  // the one addition of store_vec's accumulate, kept for the copy
        float o[kVec];
        VecOf<kVec>::load(dst + map.dst(e) + c, o);
#pragma unroll
        for (int k = 0; k < kVec; ++k) v[k] = o[k] + v[k];
      }
      store_vec<kVec>(dst + map.dst(e) + c, v, false);
      store_vec<kVec>(copy16 + map.copy16(e) + c, v, false);
    } else {
      store_vec<kVec>(dst + map.dst(e) + c, v, acc);
    }
  }
}

// Launches k_segments with 16-byte accesses when `vec4` (w, every segment offset and both pointers allow it)
// and 32-bit indices when the element count fits.
// kCopy16: with the bf16 copy of each stored value at copy16 (k_segments).
template <template <class> class MapT, bool kCopy16 = false, class Out, class Fill>
void launch_segments(const float* src, Out* dst, int64_t n_seg, int64_t w, bool vec4, bool acc, Fill fill,
                     cudaStream_t st, const char* what, __nv_bfloat16* copy16 = nullptr) {
  if (n_seg <= 0 || w <= 0) return;
  const int64_t n = n_seg * w;
  const int64_t threads = vec4 ? n / 4 : n;
  const int grid = grid_for(threads);
  if (n < (int64_t(1) << 31)) {
    using I = uint32_t;
    MapT<I> map;
    fill(map);
    if (vec4)
      k_segments<I, 4, MapT<I>, Out, kCopy16><<<grid, kThreads, 0, st>>>(src, dst, map, I(n_seg), I(w), acc, copy16);
    else
      k_segments<I, 1, MapT<I>, Out, kCopy16><<<grid, kThreads, 0, st>>>(src, dst, map, I(n_seg), I(w), acc, copy16);
  } else {
    using I = int64_t;
    MapT<I> map;
    fill(map);
    if (vec4)
      k_segments<I, 4, MapT<I>, Out, kCopy16><<<grid, kThreads, 0, st>>>(src, dst, map, n_seg, w, acc, copy16);
    else
      k_segments<I, 1, MapT<I>, Out, kCopy16><<<grid, kThreads, 0, st>>>(src, dst, map, n_seg, w, acc, copy16);
  }
  TTT_LAUNCH_CHECK(what);
}
template <class>
struct RowsMapT : RowsMap {};
// to_bf16 of `batch` matrices: segment e = b*rows + r.
template <class Index>
struct BatchRowsMapT {
  Index rows;
  int64_t lds, ldd, src_stride, dst_stride;
  __device__ int64_t src(Index e) const { return int64_t(e / rows) * src_stride + int64_t(e % rows) * lds; }
  __device__ int64_t dst(Index e) const { return int64_t(e / rows) * dst_stride + int64_t(e % rows) * ldd; }
};

// 16-byte accesses are possible when the width and every stride are multiples of 4 elements and both pointers
// are 16-byte (fp32) / 8-byte (bf16) aligned.
bool vec4_ok(const void* src, const void* dst, size_t dst_align, std::initializer_list<int64_t> multiples_of_4) {
  for (int64_t m : multiples_of_4)
    if (m % 4 != 0) return false;
  return aligned16(src) && (reinterpret_cast<uintptr_t>(dst) % dst_align) == 0;
}

__global__ void k_cols_to_batch(const float* x, int64_t ldx, int64_t col0, float* y, int64_t S, int64_t N, int64_t H) {
  GRID_STRIDE(e, S * N * H) {
    const int64_t h = e % H, i = (e / H) % N, s = e / (H * N);
    y[(s * H + h) * N + i] = x[(s * N + i) * ldx + col0 + h];
  }
}
__global__ void k_batch_to_cols(const float* y, float* x, int64_t ldx, int64_t col0, int64_t S, int64_t N, int64_t H) {
  GRID_STRIDE(e, S * N * H) {
    const int64_t h = e % H, i = (e / H) % N, s = e / (H * N);
    x[(s * N + i) * ldx + col0 + h] = y[(s * H + h) * N + i];
  }
}

__global__ void k_embedding_fwd(const float* table, const int32_t* ids, float* out, int64_t n, int64_t D) {
  GRID_STRIDE(i, n * D) {
    const int64_t r = i / D, c = i % D;
    out[i] = table[int64_t(ids[r]) * D + c];
  }
}
__global__ void k_embedding_bwd(const float* dout, const int32_t* order, const int32_t* starts, const int32_t* uniq,
                                int64_t n_uniq, float* dtable, int64_t D) {
  GRID_STRIDE(i, n_uniq * D) {
    const int64_t u = i / D, c = i % D;
    float acc = dtable[int64_t(uniq[u]) * D + c];
    for (int32_t p = starts[u]; p < starts[u + 1]; ++p) acc += dout[int64_t(order[p]) * D + c];
    dtable[int64_t(uniq[u]) * D + c] = acc;
  }
}

// Both with kIlp elements per thread and trip, loaded before any is stored (kernel_util.cuh; ncu had the
// one-element forms at 1.7 and 2.6 TB/s, 2026-11-30).
__global__ void k_from_bf16(const __nv_bfloat16* __restrict__ src, float* __restrict__ dst, int64_t n) {
  ILP_STRIDE(base, n) {
    __nv_bfloat16 h[kIlp];
#pragma unroll
    for (int t = 0; t < kIlp; ++t)
      if (ILP_INDEX(base, t) < n) h[t] = src[ILP_INDEX(base, t)];
#pragma unroll
    for (int t = 0; t < kIlp; ++t)
      if (ILP_INDEX(base, t) < n) dst[ILP_INDEX(base, t)] = __bfloat162float(h[t]);
  }
}
__global__ void k_round_store_bf16(float* x, __nv_bfloat16* __restrict__ dst, int64_t n) {
  const float* in[1] = {x};
  ilp_for_each(n, in, [&](int64_t i, const float(&v)[1]) {
    const __nv_bfloat16 h = __float2bfloat16(v[0]);
    dst[i] = h;
    x[i] = __bfloat162float(h);
  });
}

}  // namespace

void copy2d(const float* src, int64_t lds, float* dst, int64_t ldd, int64_t rows, int64_t cols, bool accumulate) {
  launch_segments<RowsMapT>(src, dst, rows, cols, vec4_ok(src, dst, 16, {cols, lds, ldd}), accumulate,
                            [&](RowsMap& m) { m.lds = lds, m.ldd = ldd; }, nullptr, "copy2d");
}
void tile_row(const float* row, float* out, int64_t copies, int64_t n) { copy2d(row, 0, out, n, copies, n); }
template <template <class> class MapT>
void heads_layout(const float* src, float* dst, int64_t ldx, int64_t S, int64_t N, int64_t H, int64_t d, bool acc,
                  bf16* x16, int64_t ld16, const char* what) {
  auto fill = [&](auto& m) {
    using I = decltype(m.N);
    m.ldx = ldx, m.ld16 = ld16, m.N = I(N), m.H = I(H), m.d = I(d);
  };
  if (!x16) {
    launch_segments<MapT>(src, dst, S * N * H, d, vec4_ok(src, dst, 16, {d, ldx}), acc, fill, nullptr, what);
    return;
  }
  // The copy's 4 bf16 a thread: 8-byte aligned rows.
  const bool vec4 = vec4_ok(src, dst, 16, {d, ldx, ld16}) && reinterpret_cast<uintptr_t>(x16) % 8 == 0;
  launch_segments<MapT, true>(src, dst, S * N * H, d, vec4, acc, fill, nullptr, what,
                              reinterpret_cast<__nv_bfloat16*>(x16));
}
void heads_to_batch(const float* x, int64_t ldx, float* y, int64_t S, int64_t N, int64_t H, int64_t d, bf16* x16,
                    int64_t ld16) {
  heads_layout<HeadsToBatchMap>(x, y, ldx, S, N, H, d, false, x16, ld16, "heads_to_batch");
}
void batch_to_heads(const float* y, float* x, int64_t ldx, int64_t S, int64_t N, int64_t H, int64_t d, bool accumulate,
                    bf16* x16, int64_t ld16) {
  heads_layout<BatchToHeadsMap>(y, x, ldx, S, N, H, d, accumulate, x16, ld16, "batch_to_heads");
}
void cols_to_batch(const float* x, int64_t ldx, int64_t col0, float* y, int64_t S, int64_t N, int64_t H) {
  k_cols_to_batch<<<grid_for(S * N * H), kThreads>>>(x, ldx, col0, y, S, N, H);
  TTT_LAUNCH_CHECK("cols_to_batch");
}
void batch_to_cols(const float* y, float* x, int64_t ldx, int64_t col0, int64_t S, int64_t N, int64_t H) {
  k_batch_to_cols<<<grid_for(S * N * H), kThreads>>>(y, x, ldx, col0, S, N, H);
  TTT_LAUNCH_CHECK("batch_to_cols");
}
void embedding_forward(const float* table, const int32_t* ids, float* out, int64_t n, int64_t D) {
  if (n <= 0) return;
  k_embedding_fwd<<<grid_for(n * D), kThreads>>>(table, ids, out, n, D);
  TTT_LAUNCH_CHECK("embedding_forward");
}
void embedding_backward(const float* dout, const int32_t* order, const int32_t* starts, const int32_t* uniq,
                        int64_t n_uniq, float* dtable, int64_t D) {
  if (n_uniq <= 0) return;
  k_embedding_bwd<<<grid_for(n_uniq * D), kThreads>>>(dout, order, starts, uniq, n_uniq, dtable, D);
  TTT_LAUNCH_CHECK("embedding_backward");
}

void to_bf16(const float* src, int64_t lds, int64_t src_stride, bf16* dst, int64_t ldd, int64_t dst_stride,
             int64_t rows, int64_t cols, int64_t batch, void* stream) {
  if (rows <= 0 || cols <= 0 || batch <= 0) return;
  auto* out = reinterpret_cast<__nv_bfloat16*>(dst);
  const cudaStream_t st = as_stream(stream);
  const bool contiguous =
      lds == cols && ldd == cols && (batch == 1 || (src_stride == rows * cols && dst_stride == rows * cols));
  if (contiguous) {  // one segment: its multiple-of-4 head with 16-byte loads, then the tail
    const int64_t n = rows * cols * batch, head = n / 4 * 4;
    const bool vec4 = head > 0 && vec4_ok(src, dst, 8, {});
    const int64_t first = vec4 ? head : 0;
    auto one = [](RowsMap& m) { m.lds = 0, m.ldd = 0; };
    if (first > 0) launch_segments<RowsMapT>(src, out, 1, first, true, false, one, st, "to_bf16");
    if (n > first) launch_segments<RowsMapT>(src + first, out + first, 1, n - first, false, false, one, st, "to_bf16");
    return;
  }
  launch_segments<BatchRowsMapT>(src, out, batch * rows, cols,
                                 vec4_ok(src, dst, 8, {cols, lds, ldd, src_stride, dst_stride}), false,
                                 [&](auto& m) {
                                   m.rows = decltype(m.rows)(rows);
                                   m.lds = lds, m.ldd = ldd, m.src_stride = src_stride, m.dst_stride = dst_stride;
                                 },
                                 st, "to_bf16");
}
void from_bf16(const bf16* src, float* dst, int64_t n) {
  if (n <= 0) return;
  k_from_bf16<<<grid_ilp(n), kThreads>>>(reinterpret_cast<const __nv_bfloat16*>(src), dst, n);
  TTT_LAUNCH_CHECK("from_bf16");
}
void round_store_bf16(float* x, bf16* dst, int64_t n) {
  if (n <= 0) return;
  k_round_store_bf16<<<grid_ilp(n), kThreads>>>(x, reinterpret_cast<__nv_bfloat16*>(dst), n);
  TTT_LAUNCH_CHECK("round_store_bf16");
}

}  // namespace ttt::cuda::mk
