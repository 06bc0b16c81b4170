// Memory-branch kernels (memory_kernels.h): per-(row, head) reductions use one warp each and accumulate in double
// along a fixed shuffle tree (deterministic); element-wise work is grid-stride. Naming and launch conventions:
// kernel_util.cuh.
#include "backend/cuda/memory_kernels.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>

#include "backend/cuda/check.cuh"
#include "backend/cuda/kernel_util.cuh"
#include "backend/cuda/rope_math.cuh"

namespace ttt::cuda::mk {

namespace {

// A lane's elements j = lane, lane + 32, ... of one (row, head) item stay in registers between the passes when
// d <= 32 * kPerLane (loaded and activated once); wider heads recompute them in the second pass. Both walks add
// in the same order, so the results do not depend on which one runs.
constexpr int kPerLane = 16;

// The forward of one (row, head) item by one warp, from its channels xr (scale sc, offset of): y = a / (||a|| +
// eps) into yr[0, d); returns ||a||. One copy of the math for the plain and the fused kernels (same bits).
template <bool kCached>
__device__ __forceinline__ float qk_prep_fwd_item(const float* __restrict__ xr, const float* __restrict__ sc,
                                                  const float* __restrict__ of, float* __restrict__ yr, int64_t d,
                                                  float eps, int lane) {
  float a_reg[kCached ? kPerLane : 1];
  double ss = 0;
#pragma unroll
  for (int t = 0; t < (kCached ? kPerLane : 1); ++t) a_reg[t] = 0.f;
  if constexpr (kCached) {
#pragma unroll
    for (int t = 0; t < kPerLane; ++t) {
      const int j = lane + 32 * t;
      if (j < d) a_reg[t] = math::silu(xr[j] * sc[j] + of[j]);
    }
#pragma unroll
    for (int t = 0; t < kPerLane; ++t)
      if (lane + 32 * t < d) ss += double(a_reg[t]) * double(a_reg[t]);
  } else {
    for (int j = lane; j < d; j += 32) {
      const float a = math::silu(xr[j] * sc[j] + of[j]);
      ss += double(a) * double(a);
    }
  }
  ss = warp_sum(ss);
  const float nrm = float(sqrt(ss));
  const float inv = 1.0f / (nrm + eps);
  if constexpr (kCached) {
#pragma unroll
    for (int t = 0; t < kPerLane; ++t) {
      const int j = lane + 32 * t;
      if (j < d) yr[j] = a_reg[t] * inv;
    }
  } else {
    for (int j = lane; j < d; j += 32) yr[j] = math::silu(xr[j] * sc[j] + of[j]) * inv;
  }
  return nrm;
}
template <bool kCached>
__global__ void k_qk_prep_fwd(const float* __restrict__ x, int64_t ldx, const float* __restrict__ scale,
                              const float* __restrict__ offset, float* __restrict__ y, float* __restrict__ norm,
                              int64_t rows, int64_t H, int64_t d, float eps) {
  const int lane = threadIdx.x % 32;
  WARP_STRIDE(item, rows * H) {
    const int64_t r = item / H, h = item % H, D = H * d;
    const float nrm = qk_prep_fwd_item<kCached>(x + r * ldx + h * d, scale + h * d, offset + h * d, y + r * D + h * d,
                                                d, eps, lane);
    if (lane == 0) norm[r * H + h] = nrm;
  }
}

// Where channel c of row (s, n) of a multi-head [S*N, H*d] array lives in the per sequence-head layout [S*H, N, d].
__device__ __forceinline__ int64_t batch_index(int64_t s, int64_t n, int c, int64_t N, int64_t H, int d) {
  const int h = c / d;
  return ((s * H + h) * N + n) * d + (c - h * d);
}

// Resident blocks per SM the fused kernels are compiled for, so more rows' loads are in flight: the forward in 40
// registers, no spills (48 warps per SM, against 32 at its natural 58); the backward, whose batched loads need more
// registers, in 62 (5 blocks spill; ptxas -v, CUDA 13).
constexpr int kFusedMinBlocksPerSm = 6;
constexpr int kFusedBwdMinBlocksPerSm = 4;

// The fused kernels' shared memory: the RoPE frequency table inv_freq[i] (freq_entries doubles: the pair count
// w/2, or 0 where the pow is left inline), then `rows_per_group` rows of D channels. The frequencies are filled
// once per block; the grid is sized to stay resident (fused_launch), so each block walks many row groups and the
// double pow, which cost more than the rest of a rotation, is no longer paid per row.
__device__ __forceinline__ float* fused_stage(double* smem, int freq_entries) {
  return reinterpret_cast<float*>(smem + freq_entries);
}
__device__ __forceinline__ void fill_inv_freq(double* inv_freq, int freq_entries, int width, double theta) {
  for (int i = threadIdx.x; i < freq_entries; i += blockDim.x) inv_freq[i] = rope_inv_freq(i, width, theta);
  __syncthreads();
}
// The same rotation as rope_rotation(pos, i, width, theta, sign), from the table where there is one.
__device__ __forceinline__ RopeRotation fused_rotation(const double* inv_freq, int freq_entries, int64_t pos, int i,
                                                       int width, double theta, float sign) {
  return i < freq_entries ? rope_rotation_at(pos, inv_freq[i], sign) : rope_rotation(pos, i, width, theta, sign);
}

// The forward fused with what follows it in the GPU model, over groups of rows_per_group rows per block: each warp
// runs (row, head) items into shared memory (the heads of a row in parallel, not in turn), then the whole block
// does RoPE (width > 0: heads of `width` channels over the row; one angle per (row, pair index), as k_rope) and
// the store in the memory operators' layout [S*H, N, d]. One pass over the rows instead of three (q/k preparation,
// RoPE in place, heads_to_batch); every output element sees the arithmetic of those passes.
template <bool kCached>
__global__ void __launch_bounds__(kThreads, kFusedMinBlocksPerSm)
    k_qk_prep_fwd_fused(const float* __restrict__ x, int64_t ldx, const float* __restrict__ scale,
                        const float* __restrict__ offset, const int64_t* __restrict__ pos, double theta, int width,
                        float* __restrict__ yT, float* __restrict__ norm, int64_t S, int64_t N, int64_t H, int d,
                        float eps, int rows_per_group, int freq_entries) {
  extern __shared__ double fused_smem[];
  float* stage = fused_stage(fused_smem, freq_entries);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int D = int(H) * d, half = width / 2, heads = int(H);
  fill_inv_freq(fused_smem, freq_entries, width, theta);
  const int64_t rows = S * N;
  for (int64_t r0 = int64_t(blockIdx.x) * rows_per_group; r0 < rows; r0 += int64_t(gridDim.x) * rows_per_group) {
    const int here = rows - r0 < rows_per_group ? int(rows - r0) : rows_per_group;
    for (int item = warp; item < here * heads; item += warps) {
      const int row = item / heads, h = item % heads;
      const int64_t r = r0 + row;
      const float nrm = qk_prep_fwd_item<kCached>(x + r * ldx + h * d, scale + h * d, offset + h * d,
                                                  stage + row * D + h * d, d, eps, lane);
      if (lane == 0) norm[r * H + h] = nrm;
    }
    __syncthreads();
    if (width == 0) {
      for (int e = threadIdx.x; e < here * D; e += blockDim.x) {
        const int64_t r = r0 + e / D;
        yT[batch_index(r / N, r % N, e % D, N, H, d)] = stage[e];
      }
    } else {
      for (int e = threadIdx.x; e < here * half; e += blockDim.x) {
        const int row = e / half, i = e % half;
        const int64_t r = r0 + row, s = r / N, n = r % N;
        const RopeRotation rot = fused_rotation(fused_smem, freq_entries, pos[r], i, width, theta, 1.f);
        const float* ys = stage + row * D;
        for (int c0 = 0; c0 < D; c0 += width) {
          const float2 out = rope_rotate(ys[c0 + i], ys[c0 + half + i], rot);
          yT[batch_index(s, n, c0 + i, N, H, d)] = out.x;
          yT[batch_index(s, n, c0 + half + i, N, H, d)] = out.y;
        }
      }
    }
    __syncthreads();  // the group's stage is read before the next group overwrites it
  }
}

// The backward of one (row, head) item by one warp, from dy (dyr) and the forward's norm nrm: dz, dzx written,
// dx accumulated. One copy of the math for the plain and the fused kernels (same bits). One pass over a lane's
// channels per reduction: a version keeping x and dy in registers for the whole item (like the forward) measured
// 45% slower on the H200 (0.93 vs 0.64 ms per call at 32768 x 4 x 384, ncu, 2026-11-30), so the backward
// recomputes silu instead. Each pass loads kBwdBatch of a lane's channels before using any (the loop as written
// had one load of x in flight per lane); the sum still adds j = lane, lane + 32, ... in turn, and each channel's
// arithmetic is unchanged, so the bits are those of the channel-at-a-time loop. x, dy must not alias dx, dz, dzx.
// dxr16 (may be null): the updated dx rounded to bf16 there too.
constexpr int kBwdBatch = 4;
__device__ __forceinline__ void qk_prep_bwd_item(const float* xr, const float* sc, const float* of, float nrm,
                                                 const float* dyr, float* dxr, __nv_bfloat16* dxr16, float* dzr,
                                                 float* dzxr, int64_t d, float eps, int lane) {
  const float inv = 1.0f / (nrm + eps);
  const int n = int(d);  // a head's channels: d <= 12288
  double dot = 0;
  // The streams that miss the cache (x, dy; then dx) are batched; scale and offset are a few KiB shared by all rows.
  for (int j0 = lane; j0 < n; j0 += 32 * kBwdBatch) {
    float xv[kBwdBatch], dyv[kBwdBatch];
#pragma unroll
    for (int t = 0; t < kBwdBatch; ++t)
      if (j0 + 32 * t < n) xv[t] = xr[j0 + 32 * t], dyv[t] = dyr[j0 + 32 * t];
#pragma unroll
    for (int t = 0; t < kBwdBatch; ++t) {
      const int j = j0 + 32 * t;
      if (j < n) {
        const float a = math::silu(xv[t] * sc[j] + of[j]);
        dot += double(dyv[t]) * double(a);
      }
    }
  }
  dot = warp_sum(dot);
  // da = (dy - a <dy, a> / (n (n + eps))) / (n + eps); the second term is 0 at a = 0.
  const float cf = nrm > 0.0f ? float(dot) * inv / nrm : 0.0f;
  for (int j0 = lane; j0 < n; j0 += 32 * kBwdBatch) {
    float xv[kBwdBatch], dxv[kBwdBatch];
#pragma unroll
    for (int t = 0; t < kBwdBatch; ++t)
      if (j0 + 32 * t < n) xv[t] = xr[j0 + 32 * t], dxv[t] = dxr[j0 + 32 * t];
#pragma unroll
    for (int t = 0; t < kBwdBatch; ++t) {
      const int j = j0 + 32 * t;
      if (j < n) {
        const float z = xv[t] * sc[j] + of[j];
        const float a = math::silu(z);
        const float da = (dyr[j] - a * cf) * inv;
        const float g = da * math::dsilu(z);
        dzr[j] = g;
        dzxr[j] = g * xv[t];
        const float dxj = dxv[t] + g * sc[j];
        dxr[j] = dxj;
        if (dxr16) dxr16[j] = __float2bfloat16_rn(dxj);
      }
    }
  }
}
__global__ void k_qk_prep_bwd(const float* x, int64_t ldx, const float* scale, const float* offset, const float* norm,
                              const float* dy, float* dx, int64_t lddx, float* dz, float* dzx, int64_t rows, int64_t H,
                              int64_t d, float eps) {
  const int lane = threadIdx.x % 32;
  WARP_STRIDE(item, rows * H) {
    const int64_t r = item / H, h = item % H, D = H * d, c = h * d;
    qk_prep_bwd_item(x + r * ldx + c, scale + c, offset + c, norm[r * H + h], dy + r * D + c, dx + r * lddx + c,
                     nullptr, dz + r * D + c, dzx + r * D + c, d, eps, lane);
  }
}
// The adjoint of k_qk_prep_fwd_fused, over the same row groups: the whole block gathers d(output) from the layout
// [S*H, N, d] into shared memory and undoes RoPE there (the inverse rotation, as rope_backward), then each warp
// runs (row, head) items.
__global__ void __launch_bounds__(kThreads, kFusedBwdMinBlocksPerSm)
    k_qk_prep_bwd_fused(const float* x, int64_t ldx, const float* scale, const float* offset, const float* norm,
                        const int64_t* __restrict__ pos, double theta, int width, const float* __restrict__ dyT,
                        float* dx, int64_t lddx, __nv_bfloat16* __restrict__ dx16, float* dz, float* dzx, int64_t S,
                        int64_t N, int64_t H, int d, float eps, int rows_per_group, int freq_entries) {
  extern __shared__ double fused_smem[];
  float* stage = fused_stage(fused_smem, freq_entries);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int D = int(H) * d, half = width / 2, heads = int(H);
  fill_inv_freq(fused_smem, freq_entries, width, theta);
  const int64_t rows = S * N;
  for (int64_t r0 = int64_t(blockIdx.x) * rows_per_group; r0 < rows; r0 += int64_t(gridDim.x) * rows_per_group) {
    const int here = rows - r0 < rows_per_group ? int(rows - r0) : rows_per_group;
    if (width == 0) {
      for (int e = threadIdx.x; e < here * D; e += blockDim.x) {
        const int64_t r = r0 + e / D;
        stage[e] = dyT[batch_index(r / N, r % N, e % D, N, H, d)];
      }
    } else {
      for (int e = threadIdx.x; e < here * half; e += blockDim.x) {
        const int row = e / half, i = e % half;
        const int64_t r = r0 + row, s = r / N, n = r % N;
        const RopeRotation rot = fused_rotation(fused_smem, freq_entries, pos[r], i, width, theta, -1.f);
        float* dys = stage + row * D;
        for (int c0 = 0; c0 < D; c0 += width) {
          const float2 g = rope_rotate(dyT[batch_index(s, n, c0 + i, N, H, d)],
                                       dyT[batch_index(s, n, c0 + half + i, N, H, d)], rot);
          dys[c0 + i] = g.x;
          dys[c0 + half + i] = g.y;
        }
      }
    }
    __syncthreads();
    for (int item = warp; item < here * heads; item += warps) {
      const int row = item / heads, h = item % heads;
      const int64_t r = r0 + row, c = int64_t(h) * d;
      qk_prep_bwd_item(x + r * ldx + c, scale + c, offset + c, norm[r * H + h], stage + row * D + c,
                       dx + r * lddx + c, dx16 ? dx16 + r * lddx + c : nullptr, dz + r * D + c, dzx + r * D + c, d,
                       eps, lane);
    }
    __syncthreads();  // the group's stage is read before the next group overwrites it
  }
}

// ---- The register walk of the fused q/k preparation: teams of lanes per row ------------------------------------
// For the model's shapes (d a multiple of 32, RoPE over heads of a multiple of 64 channels dividing d, or none)
// the fused kernels need no shared staging: a team of kTL = 32 / kV lanes walks rows and, in each row, the H heads
// in turn, keeping a head's channels in registers. Lane p of a team holds channels 32 t + p kV + k (t < kT = d / 32,
// k < kV): the channels that lanes L = p kV + k of the warp-per-item walk (qk_prep_fwd_item, qk_prep_bwd_item)
// hold, kV of them side by side (one 16-byte load for kV = 4). So:
// - each sum adds, per L, the channels t = 0, 1, ... in turn from 0, as that walk's lane L did, then the same xor
//   tree over L (team_tree_sum): the same operations in the same order, the same bits;
// - a RoPE pair (c, c + w/2) of a head of w = 32 kW channels is slots t and t + kW/2 of the same lane and k, so the
//   rotation needs no exchange; its angle depends on (row, slot t mod kW, k) only, so a lane computes its kV kW/2
//   rotations once per row (the double sincos of rope_rotation_at: the same bits as k_rope) and uses them for all
//   H heads: one sincos per (row, pair), as the unfused k_rope, spread over all lanes;
// - no block barrier after the frequency table's: a team's rows are its own.
// The team takes the next item's loads before it computes the current one (two in flight per lane). d = 64 uses
// teams of 8 lanes (4 rows per warp, 16-byte loads and stores), d = 128 teams of 16, wider heads the whole warp.
template <int kT>
__host__ __device__ constexpr int team_vec() {
  return kT <= 2 ? 4 : kT <= 4 ? 2 : 1;
}
template <int kV>
__device__ __forceinline__ void load_vec(const float* __restrict__ p, float (&v)[kV]) {
  if constexpr (kV == 4) {
    const float4 q = *reinterpret_cast<const float4*>(p);
    v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
  } else if constexpr (kV == 2) {
    const float2 q = *reinterpret_cast<const float2*>(p);
    v[0] = q.x, v[1] = q.y;
  } else {
    v[0] = *p;
  }
}
// Stores of results nothing reads again in the kernel (streaming: evict first), one vector instruction each.
template <int kV>
__device__ __forceinline__ void store_vec(float* __restrict__ p, const float (&v)[kV]) {
  if constexpr (kV == 4) __stcs(reinterpret_cast<float4*>(p), make_float4(v[0], v[1], v[2], v[3]));
  else if constexpr (kV == 2) __stcs(reinterpret_cast<float2*>(p), make_float2(v[0], v[1]));
  else __stcs(p, v[0]);
}
// The bf16 rounding of kV floats (nearest even, as __float2bfloat16_rn one at a time).
template <int kV>
__device__ __forceinline__ void store_vec_bf16(__nv_bfloat16* __restrict__ p, const float (&v)[kV]) {
  __nv_bfloat16 b[kV];
#pragma unroll
  for (int k = 0; k < kV; ++k) b[k] = __float2bfloat16_rn(v[k]);
  if constexpr (kV == 4) {
    uint2 u;
    u.x = uint32_t(__bfloat16_as_ushort(b[0])) | uint32_t(__bfloat16_as_ushort(b[1])) << 16;
    u.y = uint32_t(__bfloat16_as_ushort(b[2])) | uint32_t(__bfloat16_as_ushort(b[3])) << 16;
    *reinterpret_cast<uint2*>(p) = u;
  } else if constexpr (kV == 2) {
    *reinterpret_cast<uint32_t*>(p) =
        uint32_t(__bfloat16_as_ushort(b[0])) | uint32_t(__bfloat16_as_ushort(b[1])) << 16;
  } else {
    *p = b[0];
  }
}
// The lanes of the caller's team in its warp.
template <int kTL>
__device__ __forceinline__ unsigned team_mask() {
  if constexpr (kTL == 32) return 0xffffffffu;
  else return ((1u << kTL) - 1u) << (threadIdx.x % 32 / kTL * kTL);
}
// warp_sum's tree over the 32 virtual lanes L = p kV + k, from s[k] = lane L's partial sum: the levels o = 16 ..
// kV pair L with L ^ o in lane p ^ (o / kV) (a shuffle within the team), the levels below kV inside the lane; each
// level adds the same two values as warp_sum's (addition commutes bit for bit). Returns the tree's total.
template <int kV, int kTL>
__device__ __forceinline__ double team_tree_sum(double (&s)[kV], unsigned mask) {
#pragma unroll
  for (int o = 16; o >= kV; o >>= 1)
#pragma unroll
    for (int k = 0; k < kV; ++k) s[k] += __shfl_xor_sync(mask, s[k], o / kV, kTL);
#pragma unroll
  for (int o = kV / 2; o >= 1; o >>= 1)
#pragma unroll
    for (int k = 0; k < o; ++k) s[k] += s[k + o];  // s[k] = s[k ^ o] for k >= o from here on
  return s[0];
}
// The rows a team walks: r = team, team + teams, ...; items (r, h) for h = 0 .. H-1 in each.
struct TeamWalk {
  int64_t r;
  int h;
  __device__ __forceinline__ void next(int H, int64_t teams) {
    if (++h == H) h = 0, r += teams;
  }
};
// The frequency table of a RoPE head of 32 kW channels (16 kW pairs), once per block.
template <int kW>
__device__ __forceinline__ void fill_team_inv_freq(double* inv_freq, double theta) {
  if constexpr (kW > 0) {
    for (int i = threadIdx.x; i < 16 * kW; i += blockDim.x) inv_freq[i] = rope_inv_freq(i, 32 * kW, theta);
    __syncthreads();
  }
}
// The lane's rotations of row r: rot[u][k] for pair index 32 u + p kV + k (u < kW / 2).
template <int kV, int kW>
__device__ __forceinline__ void team_rotations(RopeRotation (&rot)[kW > 0 ? kW / 2 : 1][kV], const double* inv_freq,
                                               int64_t at, int p, float sign) {
#pragma unroll
  for (int u = 0; u < kW / 2; ++u)
#pragma unroll
    for (int k = 0; k < kV; ++k) rot[u][k] = rope_rotation_at(at, inv_freq[32 * u + p * kV + k], sign);
}
// RoPE over the lane's slots in place: slots t and t + kW/2 of each RoPE head (t mod kW < kW/2) are a pair.
template <int kT, int kV, int kW>
__device__ __forceinline__ void team_rotate(float (&v)[kT][kV], const RopeRotation (&rot)[kW > 0 ? kW / 2 : 1][kV]) {
  if constexpr (kW > 0) {
#pragma unroll
    for (int t = 0; t < kT; ++t)
      if (t % kW < kW / 2)
#pragma unroll
        for (int k = 0; k < kV; ++k) {
          const float2 o = rope_rotate(v[t][k], v[t + kW / 2][k], rot[t % kW][k]);
          v[t][k] = o.x;
          v[t + kW / 2][k] = o.y;
        }
  }
}
template <int kT, int kV>
__device__ __forceinline__ void load_slots(const float* __restrict__ p, float (&v)[kT][kV]) {
#pragma unroll
  for (int t = 0; t < kT; ++t) load_vec<kV>(p + 32 * t, v[t]);
}
// Where (row r, head h) starts in the layout [S*H, N, d].
__device__ __forceinline__ int64_t batch_row(int64_t r, int h, int64_t N, int H, int d) {
  const int64_t s = r / N;
  return ((s * H + h) * N + (r - s * N)) * d;
}

// qk_prep_fwd_item (kCached) per (row, head), then RoPE as k_rope and the store as heads_to_batch.
template <int kT, int kW>
__global__ void __launch_bounds__(kThreads)
    k_qk_prep_fwd_teams(const float* __restrict__ x, int64_t ldx, const float* __restrict__ scale,
                        const float* __restrict__ offset, const int64_t* __restrict__ pos, double theta,
                        float* __restrict__ yT, float* __restrict__ norm, int64_t rows, int64_t N, int H,
                        float eps) {
  constexpr int kV = team_vec<kT>(), kTL = 32 / kV, d = 32 * kT;
  __shared__ double inv_freq[kW > 0 ? 16 * kW : 1];
  fill_team_inv_freq<kW>(inv_freq, theta);
  const int p = threadIdx.x % kTL;
  const unsigned mask = team_mask<kTL>();
  const int64_t teams = int64_t(gridDim.x) * (blockDim.x / kTL);
  TeamWalk it{(int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kTL, 0};
  float xn[kT][kV];
  if (it.r < rows) load_slots<kT, kV>(x + it.r * ldx + p * kV, xn);
  RopeRotation rot[kW > 0 ? kW / 2 : 1][kV];
  while (it.r < rows) {
    const TeamWalk cur = it;
    float a[kT][kV];
#pragma unroll
    for (int t = 0; t < kT; ++t)
#pragma unroll
      for (int k = 0; k < kV; ++k) a[t][k] = xn[t][k];
    it.next(H, teams);
    if (it.r < rows) load_slots<kT, kV>(x + it.r * ldx + it.h * d + p * kV, xn);
    if (kW > 0 && cur.h == 0) team_rotations<kV, kW>(rot, inv_freq, pos[cur.r], p, 1.f);
    const int c = cur.h * d + p * kV;
    double ss[kV];
#pragma unroll
    for (int k = 0; k < kV; ++k) ss[k] = 0;
#pragma unroll
    for (int t = 0; t < kT; ++t) {
      float sc[kV], of[kV];
      load_vec<kV>(scale + c + 32 * t, sc);
      load_vec<kV>(offset + c + 32 * t, of);
#pragma unroll
      for (int k = 0; k < kV; ++k) {
        a[t][k] = math::silu(a[t][k] * sc[k] + of[k]);
        ss[k] += double(a[t][k]) * double(a[t][k]);
      }
    }
    const float nrm = float(sqrt(team_tree_sum<kV, kTL>(ss, mask)));
    const float inv = 1.0f / (nrm + eps);
#pragma unroll
    for (int t = 0; t < kT; ++t)
#pragma unroll
      for (int k = 0; k < kV; ++k) a[t][k] = a[t][k] * inv;
    team_rotate<kT, kV, kW>(a, rot);
    float* yr = yT + batch_row(cur.r, cur.h, N, H, d) + p * kV;
#pragma unroll
    for (int t = 0; t < kT; ++t) store_vec<kV>(yr + 32 * t, a[t]);
    if (p == 0) norm[cur.r * H + cur.h] = nrm;
  }
}

// Its adjoint: d(y) gathered from [S*H, N, d] and rotated back (as batch_to_heads, rope_backward), then
// qk_prep_bwd_item per (row, head), both passes over the registers: silu's sigmoid once per channel (silu and
// silu' from it, math::silu_from / dsilu_from: the bits of math::silu and math::dsilu). The next item's x and d(y)
// are loaded before the current one is computed (heads up to 512 wide: wider ones would spill), the current
// one's dx at its start.
// 128-thread blocks: at 110-160 registers (d = 64 .. 384, no spills), 16 or 12 warps per SM against 16 or 8 with
// 256-thread ones.
constexpr int kTeamBwdThreads = 128;
template <int kT, int kW>
__global__ void __launch_bounds__(kTeamBwdThreads)
    k_qk_prep_bwd_teams(const float* __restrict__ x, int64_t ldx, const float* __restrict__ scale,
                        const float* __restrict__ offset, const float* __restrict__ norm,
                        const int64_t* __restrict__ pos, double theta, const float* __restrict__ dyT,
                        float* __restrict__ dx, int64_t lddx, __nv_bfloat16* __restrict__ dx16,
                        float* __restrict__ dz, float* __restrict__ dzx, int64_t rows, int64_t N, int H, float eps) {
  constexpr int kV = team_vec<kT>(), kTL = 32 / kV, d = 32 * kT;
  constexpr bool kPrefetch = kT * kV <= 16;
  __shared__ double inv_freq[kW > 0 ? 16 * kW : 1];
  fill_team_inv_freq<kW>(inv_freq, theta);
  const int p = threadIdx.x % kTL;
  const unsigned mask = team_mask<kTL>();
  const int64_t teams = int64_t(gridDim.x) * (blockDim.x / kTL), D = int64_t(H) * d;
  auto load_x_dy = [&](const TeamWalk& w, float(&xs)[kT][kV], float(&dys)[kT][kV], float& nrm) {
    load_slots<kT, kV>(x + w.r * ldx + w.h * d + p * kV, xs);
    load_slots<kT, kV>(dyT + batch_row(w.r, w.h, N, H, d) + p * kV, dys);
    nrm = norm[w.r * H + w.h];
  };
  TeamWalk it{(int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / kTL, 0};
  float xv[kT][kV], dy[kT][kV], nrm = 0;  // the current item's x, d(y) and norm
  if (kPrefetch && it.r < rows) load_x_dy(it, xv, dy, nrm);
  RopeRotation rot[kW > 0 ? kW / 2 : 1][kV];
  while (it.r < rows) {
    const TeamWalk cur = it;
    it.next(H, teams);
    float xn[kT][kV], dyn[kT][kV], nrm_next = 0;
    if constexpr (kPrefetch) {
      if (it.r < rows) load_x_dy(it, xn, dyn, nrm_next);
    } else {
      load_x_dy(cur, xv, dy, nrm);
    }
    const int c = cur.h * d + p * kV;
    const int64_t at = cur.r * D + c, atx = cur.r * lddx + c;
    float dxv[kT][kV];
    load_slots<kT, kV>(dx + atx, dxv);
    if (kW > 0 && cur.h == 0) team_rotations<kV, kW>(rot, inv_freq, pos[cur.r], p, -1.f);
    team_rotate<kT, kV, kW>(dy, rot);
    const float inv = 1.0f / (nrm + eps);
    float sg[kT][kV];  // sigmoid(z)
    double dot[kV];
#pragma unroll
    for (int k = 0; k < kV; ++k) dot[k] = 0;
#pragma unroll
    for (int t = 0; t < kT; ++t) {
      float sc[kV], of[kV];
      load_vec<kV>(scale + c + 32 * t, sc);
      load_vec<kV>(offset + c + 32 * t, of);
#pragma unroll
      for (int k = 0; k < kV; ++k) {
        const float z = xv[t][k] * sc[k] + of[k];
        sg[t][k] = math::sigmoid(z);
        dot[k] += double(dy[t][k]) * double(math::silu_from(z, sg[t][k]));
      }
    }
    // da = (dy - a <dy, a> / (n (n + eps))) / (n + eps); the second term is 0 at a = 0.
    const double total = team_tree_sum<kV, kTL>(dot, mask);
    const float cf = nrm > 0.0f ? float(total) * inv / nrm : 0.0f;
#pragma unroll
    for (int t = 0; t < kT; ++t) {
      float sc[kV], of[kV], g[kV], gx[kV], dxj[kV];
      load_vec<kV>(scale + c + 32 * t, sc);
      load_vec<kV>(offset + c + 32 * t, of);
#pragma unroll
      for (int k = 0; k < kV; ++k) {
        const float z = xv[t][k] * sc[k] + of[k];
        const float a = math::silu_from(z, sg[t][k]);
        const float da = (dy[t][k] - a * cf) * inv;
        g[k] = da * math::dsilu_from(z, sg[t][k]);
        gx[k] = g[k] * xv[t][k];
        dxj[k] = dxv[t][k] + g[k] * sc[k];
      }
      store_vec<kV>(dz + at + 32 * t, g);
      store_vec<kV>(dzx + at + 32 * t, gx);
      store_vec<kV>(dx + atx + 32 * t, dxj);
      if (dx16) store_vec_bf16<kV>(dx16 + atx + 32 * t, dxj);
    }
    if constexpr (kPrefetch) {
#pragma unroll
      for (int t = 0; t < kT; ++t)
#pragma unroll
        for (int k = 0; k < kV; ++k) xv[t][k] = xn[t][k], dy[t][k] = dyn[t][k];
      nrm = nrm_next;
    }
  }
}

// out[(r, h, j)] = x[...] * gate[r * H + h]: the gate index is element / d.
__global__ void k_gate_heads_fwd(const float* __restrict__ x, const float* __restrict__ gate, float* __restrict__ out,
                                 int64_t n, int64_t d) {
  const float* in[1] = {x};
  const bool narrow = n < (int64_t(1) << 32);
  ilp_for_each(n, in, [&](int64_t i, const float(&v)[1]) {
    out[i] = v[0] * gate[narrow ? int64_t(uint32_t(i) / uint32_t(d)) : i / d];
  });
}
// out[i] = x[i] * gate[i / d] + addend[i], stored as Out (float, or bf16 rounded to nearest even). The product is
// rounded before the sum (explicit _rn operations, no FMA): the bits of k_gate_heads_fwd then axpy.
template <class Out>
__global__ void k_gate_heads_add_fwd(const float* __restrict__ x, const float* __restrict__ gate,
                                     const float* __restrict__ addend, Out* __restrict__ out, int64_t n, int64_t d) {
  const float* in[2] = {x, addend};
  const bool narrow = n < (int64_t(1) << 32);
  ilp_for_each(n, in, [&](int64_t i, const float(&v)[2]) {
    const float g = gate[narrow ? int64_t(uint32_t(i) / uint32_t(d)) : i / d];
    store_as(out + i, __fadd_rn(__fmul_rn(v[0], g), v[1]));
  });
}
// k_gate_heads_add_fwd four consecutive elements a lane (d a multiple of 4, 16-byte aligned arrays: 16-byte loads,
// one 16- or 8-byte store), kIlp groups of four a trip with each group's gate loaded beside its x and addend (the
// element-wise form loads the gate only when it computes, a second memory round trip per trip: ncu, H200, 760m
// step, ~182 µs a call for 503 MB, 2.8 TB/s). The same operations per element: the same bits.
template <class Out>
__global__ void k_gate_heads_add_fwd_vec4(const float* __restrict__ x, const float* __restrict__ gate,
                                          const float* __restrict__ addend, Out* __restrict__ out, int64_t n4,
                                          int64_t d4) {
  const bool narrow = n4 < (int64_t(1) << 32);
  ILP_STRIDE(base, n4) {
    float xv[kIlp][4], av[kIlp][4], g[kIlp];
#pragma unroll
    for (int t = 0; t < kIlp; ++t) {
      const int64_t i = ILP_INDEX(base, t);
      if (i < n4) {
        load_vec<4>(x + 4 * i, xv[t]);
        load_vec<4>(addend + 4 * i, av[t]);
        g[t] = gate[narrow ? int64_t(uint32_t(i) / uint32_t(d4)) : i / d4];
      }
    }
#pragma unroll
    for (int t = 0; t < kIlp; ++t) {
      const int64_t i = ILP_INDEX(base, t);
      if (i >= n4) continue;
      float o[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) o[k] = __fadd_rn(__fmul_rn(xv[t][k], g[t]), av[t][k]);
      if constexpr (std::is_same_v<Out, float>) store_vec<4>(out + 4 * i, o);
      else store_vec_bf16<4>(out + 4 * i, o);
    }
  }
}
__global__ void k_gate_heads_bwd(const float* x, const float* gate, const float* dout, float* dx, float* dgate,
                                 int64_t rows, int64_t H, int64_t d) {
  const int lane = threadIdx.x % 32;
  WARP_STRIDE(item, rows * H) {
    const int64_t r = item / H, h = item % H;
    const float g = gate[item];
    double acc = 0;
    for (int64_t j = lane; j < d; j += 32) {
      const int64_t c = (r * H + h) * d + j;
      acc += double(dout[c]) * double(x[c]);
      dx[c] = dout[c] * g;
    }
    acc = warp_sum(acc);
    if (lane == 0) dgate[item] = float(acc);
  }
}

__global__ void k_add_diagonal(float* W, int64_t batch, int64_t rows, int64_t cols, float v) {
  const int64_t m = rows < cols ? rows : cols;
  GRID_STRIDE(i, batch * m) {
    const int64_t b = i / m, j = i % m;
    W[b * rows * cols + j * cols + j] += v;
  }
}

template <class Out>
void gate_heads_add_launch(const float* x, const float* gate, const float* addend, Out* out, int64_t n, int64_t d) {
  if (n == 0) return;
  if (d % 4 == 0 && aligned16(x) && aligned16(addend) && aligned16(out)) {
    k_gate_heads_add_fwd_vec4<<<grid_ilp(n / 4), kThreads>>>(x, gate, addend, out, n / 4, d / 4);
  } else {
    k_gate_heads_add_fwd<<<grid_ilp(n), kThreads>>>(x, gate, addend, out, n, d);
  }
  TTT_LAUNCH_CHECK("gate_heads_add_forward");
}

}  // namespace

void qk_prep_forward(const float* x, int64_t ldx, const float* scale, const float* offset, float* y, float* norm,
                     int64_t rows, int64_t H, int64_t d, double eps) {
  if (d <= 32 * kPerLane)
    k_qk_prep_fwd<true><<<warp_grid(rows * H), kThreads>>>(x, ldx, scale, offset, y, norm, rows, H, d, float(eps));
  else
    k_qk_prep_fwd<false><<<warp_grid(rows * H), kThreads>>>(x, ldx, scale, offset, y, norm, rows, H, d, float(eps));
  TTT_LAUNCH_CHECK("qk_prep_forward");
}
void qk_prep_backward(const float* x, int64_t ldx, const float* scale, const float* offset, const float* norm,
                      const float* dy, float* dx, int64_t lddx, float* dz, float* dzx, int64_t rows, int64_t H,
                      int64_t d, double eps) {
  k_qk_prep_bwd<<<warp_grid(rows * H), kThreads>>>(x, ldx, scale, offset, norm, dy, dx, lddx, dz, dzx, rows, H, d,
                                                   float(eps));
  TTT_LAUNCH_CHECK("qk_prep_backward");
}
// Blocks of `kernel` (`threads` threads, smem bytes of dynamic shared memory) resident at once on the current
// device: its SMs times the occupancy, queried once per (device, kernel, threads, smem) and kept (the fused q/k
// kernels run 5 times per layer; the queries cost more than some of their launches).
template <class Kernel>
static int64_t resident_blocks(Kernel kernel, int threads, size_t smem) {
  static std::mutex lock;
  static std::map<std::tuple<int, const void*, int, size_t>, int64_t> known;
  int device = 0;
  TTT_CUDA_CHECK(cudaGetDevice(&device));
  const auto key = std::make_tuple(device, reinterpret_cast<const void*>(kernel), threads, smem);
  std::lock_guard<std::mutex> hold(lock);
  const auto found = known.find(key);
  if (found != known.end()) return found->second;
  int sms = 0, resident = 0;
  TTT_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  TTT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, threads, smem));
  return known[key] = int64_t(sms) * std::max(resident, 1);
}

// The general fused kernels' launch: 256-thread blocks of rows_per_group rows (enough (row, head) items for the
// block's warps, within the default 48 KiB of shared memory with the frequency table), as many blocks as are
// resident at once (each walks row groups: the table is filled once per block; no block waits for a second wave).
constexpr int64_t kFusedSmemBytes = 48 * 1024;
constexpr int64_t kFusedFreqTableMax = 1024;  // pairs of a RoPE head tabulated (8 KiB); wider ones use the inline pow
struct FusedLaunch {
  int blocks, rows_per_group, freq_entries;
  size_t smem;
};
template <class Kernel>
static FusedLaunch fused_launch(Kernel kernel, int64_t rows, int64_t H, int64_t d, int64_t width) {
  const int64_t D = H * d, half = width / 2;
  const bool table = half > 0 && half <= kFusedFreqTableMax && 4 * D + 8 * half <= kFusedSmemBytes;
  const int64_t freq = table ? half : 0;
  const int64_t fit = (kFusedSmemBytes - 8 * freq) / (4 * D);
  const int64_t group = std::max<int64_t>(1, std::min<int64_t>((kWarpsPerBlock + H - 1) / H, fit));
  const size_t smem = size_t(8 * freq + 4 * group * D);
  const int64_t groups = (rows + group - 1) / group;
  const int64_t blocks = std::max<int64_t>(1, std::min(groups, resident_blocks(kernel, kThreads, smem)));
  return {int(blocks), int(group), int(freq), smem};
}
static void check_fused(int64_t S, int64_t N, int64_t H, int64_t d, int64_t width, const char* name) {
  const int64_t D = H * d;
  TTT_CHECK(S >= 0 && N >= 0 && H >= 1 && d >= 1 && 4 * D <= kFusedSmemBytes,
            name << ": " << H << " heads of " << d << " (a row of at most " << kFusedSmemBytes / 4 << " channels)");
  TTT_CHECK(width == 0 || (width >= 2 && width % 2 == 0 && D % width == 0),
            name << ": RoPE width " << width << " must be even and divide the row's " << D << " channels");
}

// The register walk's shapes: d = 32 kT for kT in {2, 4, 8, 12, 16, 24}, RoPE heads of 32 kW channels with kW = 0
// (none), kT, or 2 or 4 where they divide kT (the memory heads' own RoPE, or the attention heads' of 64 or 128
// channels). `launch.run<kT, kW>()` for the shape, or false where it is not one of them.
template <int kT, class Launch>
static bool team_walk_rope(int kw, const Launch& launch) {
  if (kw == 0) return launch.template run<kT, 0>(), true;
  if (kw == kT) return launch.template run<kT, kT>(), true;
  if constexpr (kT % 2 == 0 && kT > 2)
    if (kw == 2) return launch.template run<kT, 2>(), true;
  if constexpr (kT % 4 == 0 && kT > 4)
    if (kw == 4) return launch.template run<kT, 4>(), true;
  return false;
}
template <class Launch>
static bool team_walk(int64_t d, int64_t width, const Launch& launch) {
  if (d % 32 != 0 || (width != 0 && (width % 64 != 0 || d % width != 0))) return false;
  const int kw = int(width / 32);
  switch (d / 32) {
    case 2: return team_walk_rope<2>(kw, launch);
    case 4: return team_walk_rope<4>(kw, launch);
    case 8: return team_walk_rope<8>(kw, launch);
    case 12: return team_walk_rope<12>(kw, launch);
    case 16: return team_walk_rope<16>(kw, launch);
    case 24: return team_walk_rope<24>(kw, launch);
    default: return false;
  }
}
// The register walk's lanes per team at head width d (team_vec): 8, 16 or 32.
static int64_t team_lanes(int64_t d) { return d <= 64 ? 8 : d <= 128 ? 16 : 32; }
// Its grid: each team walks the same number of rows (the fewest that the resident blocks hold), so no team has
// a row more than the others while most of them wait.
template <class Kernel>
static int team_blocks(Kernel kernel, int threads, int64_t rows, int64_t d) {
  const int64_t per_block = threads / team_lanes(d), resident = resident_blocks(kernel, threads, 0);
  const int64_t rows_per_team = std::max<int64_t>(1, (rows + resident * per_block - 1) / (resident * per_block));
  return int(std::max<int64_t>(1, (rows + per_block * rows_per_team - 1) / (per_block * rows_per_team)));
}
// The register walk loads team_lanes-wide vectors of 16 (d = 64) or 8 (d = 128) bytes: pointers and leading
// dimensions aligned to them (always so in the GPU model).
static bool team_aligned(int64_t d, std::initializer_list<const void*> pointers, std::initializer_list<int64_t> lds) {
  const int64_t floats = 32 / team_lanes(d);
  for (const void* ptr : pointers)
    if (ptr && reinterpret_cast<uintptr_t>(ptr) % uintptr_t(4 * floats) != 0) return false;
  for (const int64_t ld : lds)
    if (ld % floats != 0) return false;
  return true;
}
struct TeamFwd {
  const float *x, *scale, *offset;
  int64_t ldx;
  const int64_t* pos;
  double theta;
  float *yT, *norm;
  int64_t rows, N;
  int H;
  float eps;
  template <int kT, int kW>
  void run() const {
    const auto kernel = k_qk_prep_fwd_teams<kT, kW>;
    kernel<<<team_blocks(kernel, kThreads, rows, 32 * kT), kThreads>>>(x, ldx, scale, offset, pos, theta, yT, norm,
                                                                       rows, N, H, eps);
  }
};
struct TeamBwd {
  const float *x, *scale, *offset, *norm;
  int64_t ldx;
  const int64_t* pos;
  double theta;
  const float* dyT;
  float* dx;
  int64_t lddx;
  __nv_bfloat16* dx16;
  float *dz, *dzx;
  int64_t rows, N;
  int H;
  float eps;
  template <int kT, int kW>
  void run() const {
    const auto kernel = k_qk_prep_bwd_teams<kT, kW>;
    kernel<<<team_blocks(kernel, kTeamBwdThreads, rows, 32 * kT), kTeamBwdThreads>>>(
        x, ldx, scale, offset, norm, pos, theta, dyT, dx, lddx, dx16, dz, dzx, rows, N, H, eps);
  }
};

struct TeamShapeOnly {  // team_walk's answer alone
  template <int kT, int kW>
  void run() const {}
};

int64_t qk_prep_fused_team_lanes(int64_t d, int64_t rope_width) {
  return team_walk(d, rope_width, TeamShapeOnly{}) ? team_lanes(d) : 0;
}
void qk_prep_forward_fused(const float* x, int64_t ldx, const float* scale, const float* offset, const int64_t* pos,
                           double theta, int64_t rope_width, float* yT, float* norm, int64_t S, int64_t N, int64_t H,
                           int64_t d, double eps) {
  check_fused(S, N, H, d, rope_width, "qk_prep_forward_fused");
  if (S * N == 0) return;
  if (!(qk_prep_fused_team_lanes(d, rope_width) > 0 && team_aligned(d, {x, scale, offset, yT}, {ldx}) &&
        team_walk(d, rope_width, TeamFwd{x, scale, offset, ldx, pos, theta, yT, norm, S * N, N, int(H), float(eps)}))) {
    const auto kernel = d <= 32 * kPerLane ? k_qk_prep_fwd_fused<true> : k_qk_prep_fwd_fused<false>;
    const FusedLaunch l = fused_launch(kernel, S * N, H, d, rope_width);
    kernel<<<l.blocks, kThreads, l.smem>>>(x, ldx, scale, offset, pos, theta, int(rope_width), yT, norm, S, N, H,
                                           int(d), float(eps), l.rows_per_group, l.freq_entries);
  }
  TTT_LAUNCH_CHECK("qk_prep_forward_fused");
}
void qk_prep_backward_fused(const float* x, int64_t ldx, const float* scale, const float* offset, const float* norm,
                            const int64_t* pos, double theta, int64_t rope_width, const float* dyT, float* dx,
                            int64_t lddx, bf16* dx16, float* dz, float* dzx, int64_t S, int64_t N, int64_t H,
                            int64_t d, double eps) {
  check_fused(S, N, H, d, rope_width, "qk_prep_backward_fused");
  if (S * N == 0) return;
  auto* dx16b = reinterpret_cast<__nv_bfloat16*>(dx16);
  // dx16 takes vectors of half the bytes: aligned to 8 (d = 64) or 4 (d = 128) bytes where the floats are to 16 / 8.
  const bool dx16_aligned = !dx16 || reinterpret_cast<uintptr_t>(dx16) % uintptr_t(2 * 32 / team_lanes(d)) == 0;
  if (!(qk_prep_fused_team_lanes(d, rope_width) > 0 && dx16_aligned &&
        team_aligned(d, {x, scale, offset, dyT, dx, dz, dzx}, {ldx, lddx}) &&
        team_walk(d, rope_width, TeamBwd{x, scale, offset, norm, ldx, pos, theta, dyT, dx, lddx, dx16b, dz, dzx,
                                         S * N, N, int(H), float(eps)}))) {
    const FusedLaunch l = fused_launch(k_qk_prep_bwd_fused, S * N, H, d, rope_width);
    k_qk_prep_bwd_fused<<<l.blocks, kThreads, l.smem>>>(x, ldx, scale, offset, norm, pos, theta, int(rope_width), dyT,
                                                        dx, lddx, dx16b, dz, dzx, S, N, H, int(d), float(eps),
                                                        l.rows_per_group, l.freq_entries);
  }
  TTT_LAUNCH_CHECK("qk_prep_backward_fused");
}
void gate_heads_forward(const float* x, const float* gate, float* out, int64_t rows, int64_t H, int64_t d) {
  k_gate_heads_fwd<<<grid_ilp(rows * H * d), kThreads>>>(x, gate, out, rows * H * d, d);
  TTT_LAUNCH_CHECK("gate_heads_forward");
}
void gate_heads_add_forward(const float* x, const float* gate, const float* addend, float* out, int64_t rows,
                            int64_t H, int64_t d) {
  gate_heads_add_launch(x, gate, addend, out, rows * H * d, d);
}
void gate_heads_add_forward(const float* x, const float* gate, const float* addend, bf16* out, int64_t rows,
                            int64_t H, int64_t d) {
  gate_heads_add_launch(x, gate, addend, reinterpret_cast<__nv_bfloat16*>(out), rows * H * d, d);
}
void gate_heads_backward(const float* x, const float* gate, const float* dout, float* dx, float* dgate, int64_t rows,
                         int64_t H, int64_t d) {
  k_gate_heads_bwd<<<warp_grid(rows * H), kThreads>>>(x, gate, dout, dx, dgate, rows, H, d);
  TTT_LAUNCH_CHECK("gate_heads_backward");
}
void add_diagonal(float* W, int64_t batch, int64_t rows, int64_t cols, float value) {
  k_add_diagonal<<<grid_for(batch * std::min(rows, cols)), kThreads>>>(W, batch, rows, cols, value);
  TTT_LAUNCH_CHECK("add_diagonal");
}

}  // namespace ttt::cuda::mk
