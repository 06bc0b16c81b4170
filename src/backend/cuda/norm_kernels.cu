// RMSNorm kernels (norm_kernels.h): one warp per (row, group) segment for the forward and dx (segments of up to
// 1536 columns held in registers, longer ones walked twice), a two-pass column reduction for dw. Every sum accumulates in double along a fixed tree, so results are deterministic.
// Naming and launch conventions: kernel_util.cuh.
#include "backend/cuda/norm_kernels.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "core/error.h"
#include "backend/cuda/check.cuh"
#include "backend/cuda/kernel_util.cuh"

namespace ttt::cuda {

namespace {

constexpr int kMaxSlices = 128;  // row slices of the first pass of dw

// Where segment `seg` (row seg / G, group seg % G of the G = D / group groups of a row) starts in x: row-major
// (seq_len 0), or in the memory operators' per sequence-head layout [S*G, seq_len, group] (row = s*seq_len + n).
__device__ __forceinline__ int64_t x_segment_offset(int64_t seg, int64_t G, int64_t group, int64_t seq_len) {
  if (seq_len == 0) return seg * group;
  const int64_t r = seg / G, g = seg % G, s = r / seq_len, n = r % seq_len;
  return ((s * G + g) * seq_len + n) * group;
}

// The forward's per-lane sum of squares, four columns at a time: ss + (((x0² + x1²) + x2²) + x3²) in double, with
// the contraction NVVM chose for the expression this kernel file always had (PTX: mul x1², then fma x0, x2, x3 in
// turn, then add), written out so that every forward kernel gets those bits (rope_math.cuh tells why).
__device__ __forceinline__ double add_squares4(double ss, float4 a) {
  const double x0 = a.x, x1 = a.y, x2 = a.z, x3 = a.w;
  return __dadd_rn(ss, __fma_rn(x3, x3, __fma_rn(x2, x2, __fma_rn(x0, x0, __dmul_rn(x1, x1)))));
}
// y = x * r * w for four columns (two float products, rounded in that order).
__device__ __forceinline__ float4 rms_scaled4(float4 a, float r, float4 w) {
  return make_float4(a.x * r * w.x, a.y * r * w.y, a.z * r * w.z, a.w * r * w.w);
}

// The backward's per-lane dot <dy ⊙ w, x>, four columns at a time, and a column's dx = r (dy w - x c): the
// contraction ptxas gave the loop kernel's expressions (SASS, CUDA 13, sm_90a: DMUL g v for each column, DMUL of
// column 1's product by x, DFMA columns 0, 2, 3 in turn, DADD; FMUL x c, FFMA g v - ., FMUL r), written out so that
// both vector kernels of the backward get those bits.
__device__ __forceinline__ double add_dot4(double dot, float4 g, float4 v, float4 a) {
  const double p0 = __dmul_rn(g.x, v.x), p1 = __dmul_rn(g.y, v.y), p2 = __dmul_rn(g.z, v.z), p3 = __dmul_rn(g.w, v.w);
  return __dadd_rn(dot, __fma_rn(p3, a.w, __fma_rn(p2, a.z, __fma_rn(p0, a.x, __dmul_rn(p1, a.y)))));
}
__device__ __forceinline__ float rms_dx(float g, float v, float a, float r, float c) {
  return __fmul_rn(r, __fmaf_rn(g, v, -__fmul_rn(a, c)));
}
// dx of four columns, plus the residual's four where there is one (the sum rounded after the norm's dx).
__device__ __forceinline__ float4 rms_dx4(float4 g, float4 v, float4 a, float r, float c, const float4* res) {
  float4 o = make_float4(rms_dx(g.x, v.x, a.x, r, c), rms_dx(g.y, v.y, a.y, r, c), rms_dx(g.z, v.z, a.z, r, c),
                         rms_dx(g.w, v.w, a.w, r, c));
  if (res)
    o = make_float4(__fadd_rn(res->x, o.x), __fadd_rn(res->y, o.y), __fadd_rn(res->z, o.z), __fadd_rn(res->w, o.w));
  return o;
}

// One warp per segment (row, group) of `group` columns starting at seg * group. Out: float, or __nv_bfloat16
// (the GPU model's bf16 activations: the same float result, rounded once on the store).
// x_copy (may be null): x itself stored there too (the GPU model's residual, which a product then accumulates into).
// x in the layout of seq_len (x_segment_offset); y, rinv and x_copy row-major.
template <bool kVec, class Out>
__global__ void k_rms_norm_fwd(const float* __restrict__ x, const float* __restrict__ w, Out* __restrict__ y,
                               float* __restrict__ rinv, float* __restrict__ x_copy, int64_t segs, int64_t D,
                               int64_t group, int64_t seq_len, double eps) {
  const int64_t seg = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (seg >= segs) return;  // whole warps leave together
  const int64_t off = seg * group;
  const int64_t c0 = off % D;
  const float* xs = x + x_segment_offset(seg, D / group, group, seq_len);
  double ss = 0;
  if (kVec) {
    for (int64_t j = lane; j < group / 4; j += 32) ss = add_squares4(ss, reinterpret_cast<const float4*>(xs)[j]);
  } else {
    for (int64_t j = lane; j < group; j += 32) ss += double(xs[j]) * double(xs[j]);
  }
  ss = warp_sum(ss);
  const float r = float(1.0 / sqrt(ss / double(group) + eps));
  if (lane == 0) rinv[seg] = r;
  Out* ys = y + off;
  const float* ws = w + c0;
  if (kVec) {
    for (int64_t j = lane; j < group / 4; j += 32) {
      const float4 a = reinterpret_cast<const float4*>(xs)[j];
      store4(ys + 4 * j, rms_scaled4(a, r, reinterpret_cast<const float4*>(ws)[j]));
      if (x_copy) reinterpret_cast<float4*>(x_copy + off)[j] = a;
    }
  } else {
    for (int64_t j = lane; j < group; j += 32) {
      store_as(ys + j, xs[j] * r * ws[j]);
      if (x_copy) x_copy[off + j] = xs[j];
    }
  }
}

// k_rms_norm_fwd<true> with the whole segment in registers (group <= 128 kVecPerLane, a multiple of 4; every row
// 16-byte aligned): lane l holds the 16-byte columns l, l + 32, ... of its segment, all loaded before the first is
// used, and x is read from memory once. The loop form keeps one or a few 16-byte loads per lane in flight and
// reads x twice (ncu, H200, 760m step: ~151 µs a call for the bf16 form with the copy, 503 MB, 3.3 TB/s). The same
// sum in the same order (add_squares4, lane by lane, then the xor tree) and the same products: the same bits.
template <int kVecPerLane, class Out>
__global__ void __launch_bounds__(kThreads)
    k_rms_norm_fwd_regs(const float* __restrict__ x, const float* __restrict__ w, Out* __restrict__ y,
                        float* __restrict__ rinv, float* __restrict__ x_copy, int64_t segs, int64_t D, int64_t group,
                        int64_t seq_len, double eps) {
  const int64_t seg = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (seg >= segs) return;  // whole warps leave together
  const int64_t off = seg * group, c0 = off % D, n4 = group / 4;
  const float4* xs = reinterpret_cast<const float4*>(x + x_segment_offset(seg, D / group, group, seq_len));
  float4 a[kVecPerLane];
#pragma unroll
  for (int k = 0; k < kVecPerLane; ++k) a[k] = lane + 32 * k < n4 ? xs[lane + 32 * k] : make_float4(0.f, 0.f, 0.f, 0.f);
  double ss = 0;
#pragma unroll
  for (int k = 0; k < kVecPerLane; ++k)
    if (lane + 32 * k < n4) ss = add_squares4(ss, a[k]);
  ss = warp_sum(ss);
  const float r = float(1.0 / sqrt(ss / double(group) + eps));
  if (lane == 0) rinv[seg] = r;
  const float4* ws = reinterpret_cast<const float4*>(w + c0);
#pragma unroll
  for (int k = 0; k < kVecPerLane; ++k) {
    const int64_t j = lane + 32 * k;
    if (j >= n4) break;
    store4(y + off + 4 * j, rms_scaled4(a[k], r, ws[j]));
    if (x_copy) reinterpret_cast<float4*>(x_copy + off)[j] = a[k];
  }
}

// dx = r * (a - x * r^2 <a, x> / group),  a = dy ⊙ w
// residual (may be null): dx = residual + the norm's dx, the sum rounded after the norm's dx (explicit _rn: the bits
// of a separate add); dx16 (may be null): dx rounded to bf16 as well. x and dx in the layout of seq_len
// (x_segment_offset; residual and dx16 only with the row-major one), dy row-major. kVec: four consecutive columns a
// lane (16-byte loads and stores; group a multiple of 4, every row 16-byte aligned), the same per-element math.
template <bool kVec>
__global__ void k_rms_norm_bwd_dx(const float* __restrict__ x, const float* __restrict__ w,
                                  const float* __restrict__ rinv, const float* __restrict__ dy,
                                  const float* __restrict__ residual, float* __restrict__ dx,
                                  __nv_bfloat16* __restrict__ dx16, int64_t segs, int64_t D, int64_t group,
                                  int64_t seq_len) {
  const int64_t seg = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (seg >= segs) return;
  const int64_t off = seg * group, c0 = off % D, x_off = x_segment_offset(seg, D / group, group, seq_len);
  const float* xs = x + x_off;
  const float* gs = dy + off;
  const float* ws = w + c0;
  float* ds = dx + x_off;
  double dot = 0;
  if (kVec) {
    for (int64_t j = lane; j < group / 4; j += 32)
      dot = add_dot4(dot, reinterpret_cast<const float4*>(gs)[j], reinterpret_cast<const float4*>(ws)[j],
                     reinterpret_cast<const float4*>(xs)[j]);
  } else {
    for (int64_t j = lane; j < group; j += 32) dot += double(gs[j]) * double(ws[j]) * double(xs[j]);
  }
  dot = warp_sum(dot);
  const float r = rinv[seg];
  const float c = float(double(r) * double(r) * dot / double(group));
  auto out_of = [&](float g, float v, float a, int64_t j) {
    const float d = r * (g * v - a * c);
    return residual ? __fadd_rn(residual[off + j], d) : d;
  };
  if (kVec) {
    for (int64_t j = lane; j < group / 4; j += 32) {
      const float4 o = rms_dx4(reinterpret_cast<const float4*>(gs)[j], reinterpret_cast<const float4*>(ws)[j],
                               reinterpret_cast<const float4*>(xs)[j], r, c,
                               residual ? reinterpret_cast<const float4*>(residual + off) + j : nullptr);
      reinterpret_cast<float4*>(ds)[j] = o;
      if (dx16) store4(dx16 + off + 4 * j, o);
    }
  } else {
    for (int64_t j = lane; j < group; j += 32) {
      const float out = out_of(gs[j], ws[j], xs[j], j);
      ds[j] = out;
      if (dx16) dx16[off + j] = __float2bfloat16_rn(out);
    }
  }
}

// k_rms_norm_bwd_dx<true> with the segment's dy and x in registers (group <= 128 kVecPerLane): every load of the
// dot's pass in flight at once, and dy and x read from memory once (the loop kernel's second pass reads them again,
// from L2). w (at most 6 KB a row, in L1) and the residual are loaded in the second pass. The same dot in the same
// order (add_dot4, then the xor tree) and the same dx (rms_dx4): the same bits.
template <int kVecPerLane>
__global__ void __launch_bounds__(kThreads, 2)  // two blocks per SM: at most 128 registers
    k_rms_norm_bwd_dx_regs(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ rinv,
                           const float* __restrict__ dy, const float* __restrict__ residual, float* __restrict__ dx,
                           __nv_bfloat16* __restrict__ dx16, int64_t segs, int64_t D, int64_t group, int64_t seq_len) {
  const int64_t seg = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (seg >= segs) return;
  const int64_t off = seg * group, c0 = off % D, x_off = x_segment_offset(seg, D / group, group, seq_len),
                n4 = group / 4;
  const float4* xs = reinterpret_cast<const float4*>(x + x_off);
  const float4* gs = reinterpret_cast<const float4*>(dy + off);
  const float4* ws = reinterpret_cast<const float4*>(w + c0);
  const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
  float4 g[kVecPerLane], a[kVecPerLane];
#pragma unroll
  for (int k = 0; k < kVecPerLane; ++k) {
    const bool in = lane + 32 * k < n4;
    g[k] = in ? gs[lane + 32 * k] : zero;
    a[k] = in ? xs[lane + 32 * k] : zero;
  }
  double dot = 0;
#pragma unroll
  for (int k = 0; k < kVecPerLane; ++k)
    if (lane + 32 * k < n4) dot = add_dot4(dot, g[k], ws[lane + 32 * k], a[k]);
  dot = warp_sum(dot);
  const float r = rinv[seg];
  const float c = float(double(r) * double(r) * dot / double(group));
  float4* ds = reinterpret_cast<float4*>(dx + x_off);
#pragma unroll
  for (int k = 0; k < kVecPerLane; ++k) {
    const int64_t j = lane + 32 * k;
    if (j >= n4) break;
    const float4 o =
        rms_dx4(g[k], ws[j], a[k], r, c, residual ? reinterpret_cast<const float4*>(residual + off) + j : nullptr);
    ds[j] = o;
    if (dx16) store4(dx16 + off + 4 * j, o);
  }
}

// dw, pass 1: partial[s, c] = sum over the rows of slice s of dy * x * rinv (thread per column).
__global__ void k_rms_norm_bwd_dw_partial(const float* __restrict__ x, const float* __restrict__ rinv,
                                          const float* __restrict__ dy, double* __restrict__ partial, int64_t N,
                                          int64_t D, int64_t group, int64_t seq_len, int64_t rows_per_slice) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t s = blockIdx.y;
  if (c >= D) return;
  const int64_t r0 = s * rows_per_slice, r1 = r0 + rows_per_slice < N ? r0 + rows_per_slice : N;
  const int64_t ng = D / group, gi = c / group, j = c % group;
  // x's index of (r, c), stepped along the rows (x_segment_offset without a division per row).
  int64_t seq = seq_len ? r0 / seq_len : 0, n = seq_len ? r0 % seq_len : 0;
  double acc = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t xi = seq_len ? ((seq * ng + gi) * seq_len + n) * group + j : r * D + c;
    acc += double(dy[r * D + c]) * double(x[xi]) * double(rinv[r * ng + gi]);
    if (seq_len && ++n == seq_len) n = 0, ++seq;
  }
  partial[s * D + c] = acc;
}
// dw, pass 2: dw[c] = sum over slices in order. Only D threads: kBatch partials are loaded before any is added
// (the same additions in the same order), so a thread waits on memory slices / kBatch times, not slices times
// (ncu, H200: 17 µs a call at D 768 and 1536 with the loop loading one partial per addition).
__global__ void k_rms_norm_bwd_dw_final(const double* __restrict__ partial, float* __restrict__ dw, int64_t D,
                                        int64_t slices) {
  constexpr int kBatch = 16;
  GRID_STRIDE(c, D) {
    double acc = 0;
    int64_t s = 0;
    for (; s + kBatch <= slices; s += kBatch) {
      double p[kBatch];
#pragma unroll
      for (int k = 0; k < kBatch; ++k) p[k] = partial[(s + k) * D + c];
#pragma unroll
      for (int k = 0; k < kBatch; ++k) acc += p[k];
    }
    for (; s < slices; ++s) acc += partial[s * D + c];
    dw[c] = float(acc);
  }
}

int64_t dw_slices(int64_t N) { return std::max<int64_t>(1, std::min<int64_t>(kMaxSlices, (N + 31) / 32)); }

void check_group(const char* op, int64_t N, int64_t D, int64_t group) {
  TTT_CHECK(N >= 0 && D > 0 && group > 0 && D % group == 0,
            op << ": " << D << " columns are not divisible into groups of " << group << " (N = " << N << ")");
}

template <class Out>
void rms_norm_launch(const float* x, const float* w, Out* y, float* rinv, float* x_copy, int64_t N, int64_t D,
                     int64_t group, int64_t seq_len, double eps, void* stream) {
  check_group("rms_norm_forward", N, D, group);
  const int64_t segs = N * (D / group);
  if (segs == 0) return;
  const int blocks = int((segs + kWarpsPerBlock - 1) / kWarpsPerBlock);
  const bool vec = group % 4 == 0 && aligned16(x) && aligned16(w) && aligned16(y) && (!x_copy || aligned16(x_copy));
  const cudaStream_t st = as_stream(stream);
  if (vec && group <= 4 * 32 * 4)
    k_rms_norm_fwd_regs<4><<<blocks, kThreads, 0, st>>>(x, w, y, rinv, x_copy, segs, D, group, seq_len, eps);
  else if (vec && group <= 4 * 32 * 8)
    k_rms_norm_fwd_regs<8><<<blocks, kThreads, 0, st>>>(x, w, y, rinv, x_copy, segs, D, group, seq_len, eps);
  else if (vec && group <= 4 * 32 * 12)
    k_rms_norm_fwd_regs<12><<<blocks, kThreads, 0, st>>>(x, w, y, rinv, x_copy, segs, D, group, seq_len, eps);
  else if (vec)
    k_rms_norm_fwd<true><<<blocks, kThreads, 0, st>>>(x, w, y, rinv, x_copy, segs, D, group, seq_len, eps);
  else
    k_rms_norm_fwd<false><<<blocks, kThreads, 0, st>>>(x, w, y, rinv, x_copy, segs, D, group, seq_len, eps);
  TTT_LAUNCH_CHECK("rms_norm_forward");
}

}  // namespace

void rms_norm_forward(const float* x, const float* w, float* y, float* rinv, int64_t N, int64_t D, int64_t group,
                      double eps, void* stream) {
  rms_norm_launch(x, w, y, rinv, nullptr, N, D, group, 0, eps, stream);
}
void rms_norm_forward(const float* x, const float* w, bf16* y, float* rinv, int64_t N, int64_t D, int64_t group,
                      double eps, void* stream) {
  rms_norm_launch(x, w, reinterpret_cast<__nv_bfloat16*>(y), rinv, nullptr, N, D, group, 0, eps, stream);
}
void rms_norm_forward_copy(const float* x, const float* w, float* y, float* rinv, float* x_copy, int64_t N,
                           int64_t D, double eps) {
  rms_norm_launch(x, w, y, rinv, x_copy, N, D, D, 0, eps, nullptr);
}
void rms_norm_forward_copy(const float* x, const float* w, bf16* y, float* rinv, float* x_copy, int64_t N,
                           int64_t D, double eps) {
  rms_norm_launch(x, w, reinterpret_cast<__nv_bfloat16*>(y), rinv, x_copy, N, D, D, 0, eps, nullptr);
}

size_t rms_norm_backward_workspace(int64_t N, int64_t D) { return size_t(dw_slices(N)) * size_t(D) * sizeof(double); }

namespace {

// The backward with x and dx in the layout of seq_len (x_segment_offset).
void rms_norm_backward_impl(const float* x, const float* w, const float* rinv, const float* dy, const float* residual,
                            float* dx, bf16* dx16, float* dw, void* work, int64_t N, int64_t D, int64_t group,
                            int64_t seq_len, void* stream) {
  check_group("rms_norm_backward", N, D, group);
  TTT_CHECK(dx || (!residual && !dx16), "rms_norm_backward: a residual or a bf16 copy without dx");
  const cudaStream_t st = as_stream(stream);
  const int64_t segs = N * (D / group);
  if (dx && segs > 0) {
    const int blocks = int((segs + kWarpsPerBlock - 1) / kWarpsPerBlock);
    // The vector path needs every segment's rows 16-byte aligned: group a multiple of 4 and aligned bases.
    const bool vec = group % 4 == 0 && aligned16(x) && aligned16(w) && aligned16(dy) && aligned16(dx) &&
                     (!residual || aligned16(residual)) && (!dx16 || reinterpret_cast<uintptr_t>(dx16) % 8 == 0);
    auto* d16 = reinterpret_cast<__nv_bfloat16*>(dx16);
    if (vec && group <= 4 * 32 * 4)
      k_rms_norm_bwd_dx_regs<4><<<blocks, kThreads, 0, st>>>(x, w, rinv, dy, residual, dx, d16, segs, D, group,
                                                             seq_len);
    else if (vec && group <= 4 * 32 * 8)
      k_rms_norm_bwd_dx_regs<8><<<blocks, kThreads, 0, st>>>(x, w, rinv, dy, residual, dx, d16, segs, D, group,
                                                             seq_len);
    else if (vec && group <= 4 * 32 * 12)
      k_rms_norm_bwd_dx_regs<12><<<blocks, kThreads, 0, st>>>(x, w, rinv, dy, residual, dx, d16, segs, D, group,
                                                              seq_len);
    else if (vec)
      k_rms_norm_bwd_dx<true><<<blocks, kThreads, 0, st>>>(x, w, rinv, dy, residual, dx, d16, segs, D, group, seq_len);
    else
      k_rms_norm_bwd_dx<false><<<blocks, kThreads, 0, st>>>(x, w, rinv, dy, residual, dx, d16, segs, D, group, seq_len);
    TTT_LAUNCH_CHECK("rms_norm_backward dx");
  }
  if (dw) {
    TTT_CHECK(work, "rms_norm_backward: dw needs a work buffer of rms_norm_backward_workspace(N, D) bytes");
    if (N == 0) {
      TTT_CUDA_CHECK(cudaMemsetAsync(dw, 0, size_t(D) * sizeof(float), st));
      return;
    }
    const int64_t slices = dw_slices(N), rows = (N + slices - 1) / slices;
    const dim3 grid(unsigned((D + kThreads - 1) / kThreads), unsigned(slices));
    k_rms_norm_bwd_dw_partial<<<grid, kThreads, 0, st>>>(x, rinv, dy, static_cast<double*>(work), N, D, group, seq_len,
                                                         rows);
    TTT_LAUNCH_CHECK("rms_norm_backward dw partial");
    k_rms_norm_bwd_dw_final<<<grid_for(D), kThreads, 0, st>>>(static_cast<const double*>(work), dw, D, slices);
    TTT_LAUNCH_CHECK("rms_norm_backward dw final");
  }
}

}  // namespace

void rms_norm_backward(const float* x, const float* w, const float* rinv, const float* dy, float* dx, float* dw,
                       void* work, int64_t N, int64_t D, int64_t group, void* stream) {
  rms_norm_backward_impl(x, w, rinv, dy, nullptr, dx, nullptr, dw, work, N, D, group, 0, stream);
}
void rms_norm_backward_add(const float* x, const float* w, const float* rinv, const float* dy, const float* residual,
                           float* dx, bf16* dx16, float* dw, void* work, int64_t N, int64_t D, int64_t group,
                           void* stream) {
  rms_norm_backward_impl(x, w, rinv, dy, residual, dx, dx16, dw, work, N, D, group, 0, stream);
}

void rms_norm_heads_forward_batch(const float* xT, const float* w, float* y, float* rinv, int64_t S, int64_t N,
                                  int64_t D, int64_t heads, double eps) {
  TTT_CHECK(heads >= 1 && D % heads == 0 && S >= 1 && N >= 1,
            "rms_norm_heads_forward_batch: " << D << " columns, " << heads << " heads, " << S << " x " << N << " rows");
  rms_norm_launch(xT, w, y, rinv, nullptr, S * N, D, D / heads, N, eps, nullptr);
}
void rms_norm_heads_backward_batch(const float* xT, const float* w, const float* rinv, const float* dy, float* dxT,
                                   float* dw, void* work, int64_t S, int64_t N, int64_t D, int64_t heads) {
  TTT_CHECK(heads >= 1 && D % heads == 0 && S >= 1 && N >= 1,
            "rms_norm_heads_backward_batch: " << D << " columns, " << heads << " heads, " << S << " x " << N
                                              << " rows");
  rms_norm_backward_impl(xT, w, rinv, dy, nullptr, dxT, nullptr, dw, work, S * N, D, D / heads, N, nullptr);
}

void rms_norm_heads_forward(const float* x, const float* w, float* y, float* rinv, int64_t N, int64_t D,
                            int64_t heads, double eps, void* stream) {
  TTT_CHECK(heads >= 1 && D % heads == 0, "rms_norm_heads_forward: " << D << " columns, " << heads << " heads");
  rms_norm_forward(x, w, y, rinv, N, D, D / heads, eps, stream);
}
void rms_norm_heads_backward(const float* x, const float* w, const float* rinv, const float* dy, float* dx,
                             float* dw, void* work, int64_t N, int64_t D, int64_t heads, void* stream) {
  TTT_CHECK(heads >= 1 && D % heads == 0, "rms_norm_heads_backward: " << D << " columns, " << heads << " heads");
  rms_norm_backward(x, w, rinv, dy, dx, dw, work, N, D, D / heads, stream);
}

}  // namespace ttt::cuda
