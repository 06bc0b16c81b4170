// Layout and conversion kernels (layout_kernels.h): grid-stride loops, one thread per element (four per thread
// for contiguous bf16 conversion). Naming and launch conventions: kernel_util.cuh.
#include "backend/cuda/layout_kernels.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/check.cuh"
#include "backend/cuda/kernel_util.cuh"

namespace ttt::cuda::mk {

namespace {

__global__ void k_copy2d(const float* __restrict__ src, int64_t lds, float* __restrict__ dst, int64_t ldd,
                         int64_t rows, int64_t cols, bool acc) {
  GRID_STRIDE(i, rows * cols) {
    const int64_t r = i / cols, c = i % cols;
    const float v = src[r * lds + c];
    dst[r * ldd + c] = acc ? dst[r * ldd + c] + v : v;
  }
}

// y[(s*H + h)*N + i][j] = x[(s*N + i)*ldx + h*d + j]
__global__ void k_heads_to_batch(const float* x, int64_t ldx, float* y, int64_t S, int64_t N, int64_t H, int64_t d) {
  GRID_STRIDE(e, S * N * H * d) {
    const int64_t j = e % d, h = (e / d) % H, i = (e / (d * H)) % N, s = e / (d * H * N);
    y[((s * H + h) * N + i) * d + j] = x[(s * N + i) * ldx + h * d + j];
  }
}
__global__ void k_batch_to_heads(const float* y, float* x, int64_t ldx, int64_t S, int64_t N, int64_t H, int64_t d,
                                 bool acc) {
  GRID_STRIDE(e, S * N * H * d) {
    const int64_t j = e % d, h = (e / d) % H, i = (e / (d * H)) % N, s = e / (d * H * N);
    const float v = y[((s * H + h) * N + i) * d + j];
    float& dst = x[(s * N + i) * ldx + h * d + j];
    dst = acc ? dst + v : v;
  }
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

// How k_to_bf16 walks its elements: any strides; contiguous; contiguous with 16-byte loads and 8-byte stores.
enum Bf16Walk : int { kStrided, kContiguous, kContiguous4 };

__global__ void k_to_bf16(const float* __restrict__ src, int64_t lds, int64_t src_stride,
                          __nv_bfloat16* __restrict__ dst, int64_t ldd, int64_t dst_stride, int64_t rows, int64_t cols,
                          int64_t batch, int walk) {
  const int64_t n = rows * cols * batch;
  if (walk == kContiguous4) {
    const int64_t n4 = n / 4;
    GRID_STRIDE(i, n4) {
      const float4 x = reinterpret_cast<const float4*>(src)[i];
      __nv_bfloat162 lo = __floats2bfloat162_rn(x.x, x.y), hi = __floats2bfloat162_rn(x.z, x.w);
      reinterpret_cast<__nv_bfloat162*>(dst)[2 * i] = lo;
      reinterpret_cast<__nv_bfloat162*>(dst)[2 * i + 1] = hi;
    }
    GRID_STRIDE(i, n - 4 * n4) dst[4 * n4 + i] = __float2bfloat16_rn(src[4 * n4 + i]);
  } else if (walk == kContiguous) {
    GRID_STRIDE(i, n) dst[i] = __float2bfloat16_rn(src[i]);
  } else {
    GRID_STRIDE(i, n) {
      const int64_t c = i % cols, r = (i / cols) % rows, b = i / (rows * cols);
      dst[b * dst_stride + r * ldd + c] = __float2bfloat16_rn(src[b * src_stride + r * lds + c]);
    }
  }
}
__global__ void k_from_bf16(const __nv_bfloat16* src, float* dst, int64_t n) {
  GRID_STRIDE(i, n) dst[i] = __bfloat162float(src[i]);
}
__global__ void k_round_store_bf16(float* x, __nv_bfloat16* dst, int64_t n) {
  GRID_STRIDE(i, n) {
    const __nv_bfloat16 h = __float2bfloat16(x[i]);
    dst[i] = h;
    x[i] = __bfloat162float(h);
  }
}

}  // namespace

void copy2d(const float* src, int64_t lds, float* dst, int64_t ldd, int64_t rows, int64_t cols, bool accumulate) {
  if (rows <= 0 || cols <= 0) return;
  k_copy2d<<<grid_for(rows * cols), kThreads>>>(src, lds, dst, ldd, rows, cols, accumulate);
  TTT_LAUNCH_CHECK("copy2d");
}
void heads_to_batch(const float* x, int64_t ldx, float* y, int64_t S, int64_t N, int64_t H, int64_t d) {
  k_heads_to_batch<<<grid_for(S * N * H * d), kThreads>>>(x, ldx, y, S, N, H, d);
  TTT_LAUNCH_CHECK("heads_to_batch");
}
void batch_to_heads(const float* y, float* x, int64_t ldx, int64_t S, int64_t N, int64_t H, int64_t d, bool accumulate) {
  k_batch_to_heads<<<grid_for(S * N * H * d), kThreads>>>(y, x, ldx, S, N, H, d, accumulate);
  TTT_LAUNCH_CHECK("batch_to_heads");
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
  const int64_t n = rows * cols * batch;
  const bool contiguous =
      lds == cols && ldd == cols && (batch == 1 || (src_stride == rows * cols && dst_stride == rows * cols));
  const bool four = contiguous && aligned16(src) && (reinterpret_cast<uintptr_t>(dst) & 7) == 0;
  const int walk = four ? kContiguous4 : contiguous ? kContiguous : kStrided;
  k_to_bf16<<<grid_for(four ? (n + 3) / 4 : n), kThreads, 0, as_stream(stream)>>>(
      src, lds, src_stride, reinterpret_cast<__nv_bfloat16*>(dst), ldd, dst_stride, rows, cols, batch, walk);
  TTT_LAUNCH_CHECK("to_bf16");
}
void from_bf16(const bf16* src, float* dst, int64_t n) {
  if (n <= 0) return;
  k_from_bf16<<<grid_for(n), kThreads>>>(reinterpret_cast<const __nv_bfloat16*>(src), dst, n);
  TTT_LAUNCH_CHECK("from_bf16");
}
void round_store_bf16(float* x, bf16* dst, int64_t n) {
  if (n <= 0) return;
  k_round_store_bf16<<<grid_for(n), kThreads>>>(x, reinterpret_cast<__nv_bfloat16*>(dst), n);
  TTT_LAUNCH_CHECK("round_store_bf16");
}

}  // namespace ttt::cuda::mk
