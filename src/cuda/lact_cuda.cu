// CUDA backend of the LaCT operator: CudaOps implements the backend contract of ttt/lact_fused.h with cuBLAS
// strided-batched GEMMs and the kernels below, so that lact::Fused<CudaOps<T>> runs on the GPU exactly the
// sequence of steps that the CPU twin (lact_fused.cpp) specifies. Per-element math is the shared TTT_HD code
// of lact_fused.h. Reductions accumulate in double and are deterministic (fixed two-stage trees).
//
// Speed (docs/PERF.md, "GPU: fused bf16 operands and CUDA graphs"): in the bf16 mode every buffer has a bf16
// shadow kept up to date on the host's bookkeeping, so that no operand is converted twice and the kernels
// whose outputs only feed products write bf16 directly; forward() and backward() are replayed as CUDA graphs.
// Env: TTT_LACT_GRAPH=0 (no graphs), TTT_LACT_PROFILE=1 (per-step CUDA-event profile on stderr),
// TTT_LACT_CHECK_GRAPH=1 (bench_lact compares a graph replay with an eager run).
#include "cuda/lact_cuda.h"
#include "cuda/check.cuh"
#include "cuda/graph.cuh"

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <functional>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>
#include <cstdint>
#include <cmath>
#include <sstream>
#include <type_traits>

namespace ttt::cuda {


namespace {

using Acc = double;  // accumulator of every reduction
constexpr int kThreads = 256;
constexpr int kMaxSlices = 128;  // blocks per batch item in the first stage of a batched reduction

int grid_for(int64_t n) { return int(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, 1 << 20))); }
int warp_grid(int64_t rows) { return int((rows * 32 + kThreads - 1) / kThreads); }

#define GRID_STRIDE(i, n) \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

__device__ __forceinline__ Acc warp_sum(Acc v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// ---- element-wise kernels -----------------------------------------------------------------------------
template <class T>
__global__ void k_add(T* dst, const T* src, int64_t n) {
  GRID_STRIDE(i, n) dst[i] += src[i];
}
// bf16 copies of fp32 matrix operands (round to nearest even); doubles are never converted.
__global__ void k_to_bf16(const float* __restrict__ src, __nv_bfloat16* __restrict__ dst, int64_t n) {
  const int64_t n4 = n / 4;
  if ((reinterpret_cast<uintptr_t>(src) & 15) == 0 && (reinterpret_cast<uintptr_t>(dst) & 7) == 0) {
    GRID_STRIDE(i, n4) {
      const float4 x = reinterpret_cast<const float4*>(src)[i];
      __nv_bfloat162 lo = __floats2bfloat162_rn(x.x, x.y), hi = __floats2bfloat162_rn(x.z, x.w);
      reinterpret_cast<__nv_bfloat162*>(dst)[2 * i] = lo;
      reinterpret_cast<__nv_bfloat162*>(dst)[2 * i + 1] = hi;
    }
    GRID_STRIDE(i, n - 4 * n4) dst[4 * n4 + i] = __float2bfloat16_rn(src[4 * n4 + i]);
  } else {
    GRID_STRIDE(i, n) dst[i] = __float2bfloat16_rn(src[i]);
  }
}
template <class T>
__global__ void k_sqrt(T* x, int64_t n) {
  GRID_STRIDE(i, n) x[i] = lact::sqrt_(x[i]);
}
template <class T>
__global__ void k_axpy_batched(T* D, const T* S, const T* s, int64_t per, int64_t n) {
  GRID_STRIDE(i, n) D[i] += s[i / per] * S[i];
}
template <class T>
__global__ void k_scale_batched(T* dst, const T* src, const T* s, int64_t per, int64_t n) {
  GRID_STRIDE(i, n) dst[i] = s[i / per] * src[i];
}
template <class T>
__global__ void k_fill_chunk(T* g, const T* val, T scale, int64_t c0, int64_t len, int64_t T_, int64_t n) {
  GRID_STRIDE(i, n) {
    const int64_t b = i / len, t = c0 + i % len;
    g[b * T_ + t] = val[b] * scale;
  }
}
template <class T>
__global__ void k_pack_state(const T* w0, const T* w1, const T* w2, T* A, int64_t P, int64_t n) {
  GRID_STRIDE(i, n) {
    const int64_t b = i / (3 * P), s = (i / P) % 3, e = i % P;
    const T* src = s == 0 ? w0 : s == 1 ? w2 : w1;
    A[i] = src[b * P + e];
  }
}
template <class T>
__global__ void k_unpack_grad(const T* dA, const T* tau, const T* dtau, const T* A0, T* gw0, T* gw1, T* gw2,
                              lact::Geom g, int64_t n) {
  const int64_t P = g.P();
  GRID_STRIDE(i, n) {
    const int64_t b = i / (3 * P), e = i % P;
    const int s = int((i / P) % 3);
    T val = dA[i];
    if (tau) {
      const int64_t r = s == 0 ? e / g.d : s == 1 ? g.dh + e / g.d : 2 * g.dh + e / g.dh;
      const T nrm = tau[b * g.rows() + r];
      if (nrm != T(0)) val += dtau[b * g.rows() + r] / nrm * A0[i];
    }
    T* dst = s == 0 ? gw0 : s == 1 ? gw2 : gw1;
    dst[b * P + e] = val;
  }
}
// Row-based chunk kernels (one block per token row of the chunk, no 64-bit divisions per element). The
// outputs that only feed matrix products are written as O: float/double, or bf16 in the bf16 mode (the bf16
// operand is then produced where the value is computed, instead of by a separate conversion pass).
template <class O, class T>
__device__ __forceinline__ void st_(O* p, T v) {
  if constexpr (std::is_same<O, __nv_bfloat16>::value) *p = __float2bfloat16_rn(float(v));
  else *p = O(v);
}
constexpr int kRowThreads = 128;
template <class T, class O>
__global__ void k_swiglu_rows(const T* __restrict__ GH, O* __restrict__ a, int dh) {
  const int64_t r = blockIdx.x;
  const T* gh = GH + r * 2 * dh;
  for (int j = threadIdx.x; j < dh; j += blockDim.x) st_(a + r * dh + j, lact::swiglu_elem(gh[j], gh[dh + j]));
}
template <class T, class O>
__global__ void k_swiglu_bwd_rows(const T* __restrict__ GH, const T* __restrict__ da, O* __restrict__ dGH,
                                  O* __restrict__ a, int dh) {
  const int64_t r = blockIdx.x;
  const T* gh = GH + r * 2 * dh;
  for (int j = threadIdx.x; j < dh; j += blockDim.x) {
    T av, dg, dhv;
    lact::swiglu_elem_bwd(gh[j], gh[dh + j], da[r * dh + j], av, dg, dhv);
    st_(a + r * dh + j, av);
    st_(dGH + r * 2 * dh + j, dg);
    st_(dGH + r * 2 * dh + dh + j, dhv);
  }
}
// update_terms and the lr1-scaled values in one pass: a, R = [r0 | r2], Vl = lr1 v.
template <class T, class O>
__global__ void k_update_terms_rows(const T* __restrict__ GH, const T* __restrict__ U, const T* __restrict__ v,
                                    const T* __restrict__ lr0, const T* __restrict__ lr1, const T* __restrict__ lr2,
                                    int64_t c0, int len, int64_t T_, int d, int dh, O* __restrict__ a,
                                    O* __restrict__ R, O* __restrict__ Vl) {
  const int64_t r = blockIdx.x, tok = (r / len) * T_ + c0 + r % len;
  const T l0 = lr0[tok], l1 = lr1[tok], l2 = lr2[tok];
  const T* gh = GH + r * 2 * dh;
  for (int j = threadIdx.x; j < dh; j += blockDim.x) {
    T av, r0, r2;
    lact::update_elem(gh[j], gh[dh + j], U[r * dh + j], l0, l2, av, r0, r2);
    st_(a + r * dh + j, av);
    st_(R + r * 2 * dh + j, r0);
    st_(R + r * 2 * dh + dh + j, r2);
  }
  for (int j = threadIdx.x; j < d; j += blockDim.x) st_(Vl + r * d + j, l1 * v[tok * d + j]);
}
// One warp per token row of the chunk (the three rate gradients are warp sums, accumulated in double).
template <class T, class O>
__global__ void k_update_terms_bwd_rows(const T* GH, const T* U, const T* v, const T* lr0, const T* lr1,
                                        const T* lr2, int64_t c0, int64_t len, int64_t T_, int d, int dh,
                                        const T* dR, const T* dVl, const T* da, O* dGH, O* dU, T* glr0, T* glr1,
                                        T* glr2, T* gv, int64_t rows) {
  const int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  const int64_t tok = (r / len) * T_ + c0 + r % len;
  const T l0 = lr0[tok], l1 = lr1[tok], l2 = lr2[tok];
  const T *gh = GH + r * 2 * dh, *dr = dR + r * 2 * dh;
  Acc s0 = 0, s1 = 0, s2 = 0;
  for (int j = lane; j < dh; j += 32) {
    T t0, t2, dg, dhv, du;
    lact::update_elem_bwd(gh[j], gh[dh + j], U[r * dh + j], l0, l2, dr[j], dr[dh + j], da[r * dh + j], dg, dhv, du,
                          t0, t2);
    st_(dGH + r * 2 * dh + j, dg);
    st_(dGH + r * 2 * dh + dh + j, dhv);
    st_(dU + r * dh + j, du);
    s0 += t0;
    s2 += t2;
  }
  for (int j = lane; j < d; j += 32) {
    const T dv = dVl[r * d + j];
    s1 += Acc(v[tok * d + j]) * dv;
    gv[tok * d + j] = l1 * dv;
  }
  s0 = warp_sum(s0);
  s1 = warp_sum(s1);
  s2 = warp_sum(s2);
  if (lane == 0) {
    glr0[tok] = T(s0);
    glr1[tok] = T(s1);
    glr2[tok] = T(s2);
  }
}

// ---- row-wise kernels over a state [B][3][P] (one warp per row) -------------------------------------------
template <class T>
__device__ __forceinline__ T m_at(const T* M, bool ns, const lact::Geom& g, int64_t m, int s, int64_t row,
                                  int64_t col) {
  return M[m * g.P() + (ns ? g.state_to_ns(s, row, col) : row * g.slot_cols(s) + col)];
}
struct RowRef {
  int64_t b, r, off, len, row;
  int s;
};
__device__ __forceinline__ bool row_ref(const lact::Geom& g, RowRef& rr, int& lane) {
  const int64_t w = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  lane = threadIdx.x & 31;
  if (w >= g.B * g.rows()) return false;
  rr.b = w / g.rows();
  rr.r = w % g.rows();
  rr.off = rr.b * 3 * g.P() + g.row_off(rr.r);
  rr.len = g.row_len(rr.r);
  rr.s = g.row_slot(rr.r);
  rr.row = g.row_in_slot(rr.r);
  return true;
}
template <class T>
__global__ void k_row_norms(const T* A, T* tau, lact::Geom g) {
  RowRef rr;
  int lane;
  if (!row_ref(g, rr, lane)) return;
  Acc ss = 0;
  for (int64_t j = lane; j < rr.len; j += 32) ss += Acc(A[rr.off + j]) * A[rr.off + j];
  ss = warp_sum(ss);
  if (lane == 0) tau[rr.b * g.rows() + rr.r] = T(sqrt(ss));
}
template <class T>
__global__ void k_weight_norm(const T* A, const T* tau, T* E, __nv_bfloat16* E16, lact::Geom g) {
  RowRef rr;
  int lane;
  if (!row_ref(g, rr, lane)) return;
  Acc ss = 0;
  for (int64_t j = lane; j < rr.len; j += 32) ss += Acc(A[rr.off + j]) * A[rr.off + j];
  ss = warp_sum(ss);
  const T f = tau[rr.b * g.rows() + rr.r] / (T(sqrt(ss)) + T(lact::kRowEps));
  for (int64_t j = lane; j < rr.len; j += 32) {
    const T y = A[rr.off + j] * f;
    E[rr.off + j] = y;
    if (E16) E16[rr.off + j] = __float2bfloat16_rn(float(y));
  }
}
// Row adjoint of y = x tau/(n+eps) (see CpuOps::row_norm_bwd); x is given by a functor of the column.
template <class T, class X>
__device__ __forceinline__ void row_norm_bwd_warp(X x, int64_t len, int lane, T tau, const T* dy, T* dx, bool inplace,
                                                  T* dtau) {
  Acc ss = 0, dot = 0;
  for (int64_t j = lane; j < len; j += 32) {
    const T xj = x(j);
    ss += Acc(xj) * xj;
    dot += Acc(dy[j]) * xj;
  }
  ss = warp_sum(ss);
  dot = warp_sum(dot);
  const T n = T(sqrt(ss)), den = n + T(lact::kRowEps);
  const T f = tau / den;
  const T h = n == T(0) ? T(0) : T(dot) * tau / (den * den) / n;
  for (int64_t j = lane; j < len; j += 32) {
    const T v = f * dy[j] - h * x(j);
    if (inplace) dx[j] = v;
    else dx[j] += v;
  }
  if (lane == 0) *dtau += T(dot) / den;
}
template <class T>
__global__ void k_weight_norm_bwd(const T* A, const T* tau, const T* dE, T* dA, T* dtau, lact::Geom g) {
  RowRef rr;
  int lane;
  if (!row_ref(g, rr, lane)) return;
  const T* x = A + rr.off;
  row_norm_bwd_warp<T>([x](int64_t j) { return x[j]; }, rr.len, lane, tau[rr.b * g.rows() + rr.r], dE + rr.off,
                       dA + rr.off, false, dtau + rr.b * g.rows() + rr.r);
}
template <class T>
__global__ void k_step(const T* A, const T* M, bool ns, const T* tau, T* An, __nv_bfloat16* An16, lact::Geom g) {
  RowRef rr;
  int lane;
  if (!row_ref(g, rr, lane)) return;
  const int64_t m = rr.b * 3 + rr.s;
  T f = T(1);
  if (tau) {
    Acc ss = 0;
    for (int64_t j = lane; j < rr.len; j += 32) {
      const T z = A[rr.off + j] + m_at(M, ns, g, m, rr.s, rr.row, j);
      ss += Acc(z) * z;
    }
    ss = warp_sum(ss);
    f = tau[rr.b * g.rows() + rr.r] / (T(sqrt(ss)) + T(lact::kRowEps));
  }
  for (int64_t j = lane; j < rr.len; j += 32) {
    const T y = (A[rr.off + j] + m_at(M, ns, g, m, rr.s, rr.row, j)) * f;
    An[rr.off + j] = y;
    if (An16) An16[rr.off + j] = __float2bfloat16_rn(float(y));
  }
}
template <class T>
__global__ void k_step_bwd(const T* A, const T* M, bool ns, const T* tau, T* dA, T* dtau, lact::Geom g) {
  RowRef rr;
  int lane;
  if (!row_ref(g, rr, lane)) return;
  const int64_t m = rr.b * 3 + rr.s;
  const T* a = A + rr.off;
  const lact::Geom gg = g;
  const RowRef r2 = rr;
  auto z = [a, M, ns, gg, m, r2](int64_t j) { return a[j] + m_at(M, ns, gg, m, r2.s, r2.row, j); };
  // dA holds dL/dA_next on entry and dL/dZ on exit (each lane reads its own columns before writing them).
  row_norm_bwd_warp<T>(z, rr.len, lane, tau[rr.b * g.rows() + rr.r], dA + rr.off, dA + rr.off, true,
                       dtau + rr.b * g.rows() + rr.r);
}

// ---- Newton-Schulz layout ------------------------------------------------------------------------------
template <class T>
__global__ void k_to_ns(const T* src, T* dst, const T* nrm, lact::Geom g, int64_t n) {
  const int64_t P = g.P(), q = g.q();
  GRID_STRIDE(i, n) {
    const int64_t m = i / P, e = i % P;
    const int s = int(m % 3);
    const T f = nrm ? T(1) / (nrm[m] + T(lact::kNsEps)) : T(1);
    dst[i] = src[m * P + g.ns_to_state(s, e / q, e % q)] * f;
  }
}
template <class T>
__global__ void k_ns_norm_bwd(const T* dX0, const T* Pm, const T* nrm, const T* dot, T* dP, lact::Geom g, int64_t n) {
  const int64_t P = g.P();
  GRID_STRIDE(i, n) {
    const int64_t m = i / P, e = i % P;
    const int s = int(m % 3);
    const int64_t cols = g.slot_cols(s);
    const T r = T(1) / (nrm[m] + T(lact::kNsEps));
    const T h = nrm[m] == T(0) ? T(0) : r * dot[m] / nrm[m];
    dP[i] = r * dX0[m * P + g.state_to_ns(s, e / cols, e % cols)] - h * Pm[i];
  }
}

// ---- batched reductions (two fixed stages: deterministic) ----------------------------------------------
template <class T>
__global__ void k_dot_partial(const T* x, const T* y, int64_t per, int64_t stride, Acc* partial) {
  const int64_t b = blockIdx.y;
  const int slices = gridDim.x;
  const T* xb = x + b * stride;
  const T* yb = y ? y + b * stride : nullptr;
  Acc acc = 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < per; i += int64_t(slices) * blockDim.x)
    acc += yb ? Acc(xb[i]) * yb[i] : Acc(xb[i]);
  __shared__ Acc sh[kThreads / 32];
  acc = warp_sum(acc);
  if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = acc;
  __syncthreads();
  if (threadIdx.x < 32) {
    acc = threadIdx.x < kThreads / 32 ? sh[threadIdx.x] : Acc(0);
    acc = warp_sum(acc);
    if (threadIdx.x == 0) partial[b * slices + blockIdx.x] = acc;
  }
}
template <class T>
__global__ void k_dot_final(const Acc* partial, int slices, T scale, T* out) {
  const int64_t b = blockIdx.x;
  Acc acc = 0;
  for (int i = threadIdx.x; i < slices; i += 32) acc += partial[b * slices + i];
  acc = warp_sum(acc);
  if (threadIdx.x == 0) out[b] = T(Acc(scale) * acc);
}

// ---- optional profile (env TTT_LACT_PROFILE=1): CUDA events around every backend step --------------------
// Each step of the backend (every GEMM by shape, every kernel, every conversion) is bracketed by two events on
// the runner's stream; the sums per step name and phase (F forward, B backward) are printed to stderr when the
// runner is destroyed, with the GPU time of whole forward / backward calls and the host time spent enqueueing
// them. Off (the default) it costs one branch per step. The events add ~1-2 us per step, so profile timings
// are for attribution, not for the bench.
class Prof {
 public:
  explicit Prof(cudaStream_t st) : st_(st) {
    const char* e = std::getenv("TTT_LACT_PROFILE");
    on_ = e && *e && std::string(e) != "0";
  }
  ~Prof() {
    if (!on_) return;
    try {
      flush();
      dump();
    } catch (...) {
    }
    for (cudaEvent_t e : pool_) cudaEventDestroy(e);
  }
  bool on() const { return on_; }
  struct Scope {
    Prof* p = nullptr;
    size_t idx = 0;
    ~Scope() {
      if (p) p->end(idx);
    }
  };
  Scope scope(const char* name) { return on_ ? begin(std::string(name)) : Scope{}; }
  Scope scope_str(const std::string& name) { return on_ ? begin(name) : Scope{}; }
  // Whole forward / backward calls: GPU time between two events and host enqueue time.
  void call_begin(char phase) {
    if (!on_) return;
    phase_ = phase;
    flush();
    call_a_ = event();
    call_b_ = event();
    cudaEventRecord(call_a_, st_);
    host_t0_ = std::chrono::steady_clock::now();
  }
  void call_end() {
    if (!on_) return;
    const double host = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - host_t0_).count();
    cudaEventRecord(call_b_, st_);
    cudaEventSynchronize(call_b_);
    float ms = 0;
    cudaEventElapsedTime(&ms, call_a_, call_b_);
    auto& c = calls_[phase_];
    c.n += 1, c.gpu += ms, c.host += host;
    pool_.push_back(call_a_);
    pool_.push_back(call_b_);
    flush();
  }

 private:
  struct Rec {
    std::string name;
    cudaEvent_t a, b;
  };
  struct Acc2 {
    double ms = 0;
    int64_t n = 0;
  };
  struct Call {
    int64_t n = 0;
    double gpu = 0, host = 0;
  };
  cudaStream_t st_;
  bool on_ = false;
  char phase_ = 'F';
  std::vector<Rec> pending_;
  std::vector<cudaEvent_t> pool_;
  std::map<std::string, Acc2> acc_;
  std::map<char, Call> calls_;
  cudaEvent_t call_a_ = nullptr, call_b_ = nullptr;
  std::chrono::steady_clock::time_point host_t0_;

  cudaEvent_t event() {
    if (pool_.empty()) {
      cudaEvent_t e;
      TTT_CUDA_CHECK(cudaEventCreate(&e));
      return e;
    }
    cudaEvent_t e = pool_.back();
    pool_.pop_back();
    return e;
  }
  Scope begin(std::string name) {
    if (pending_.size() >= 4096) flush();
    Rec r{std::string(1, phase_) + " " + name, event(), event()};
    cudaEventRecord(r.a, st_);
    pending_.push_back(r);
    return Scope{this, pending_.size() - 1};
  }
  void end(size_t idx) { cudaEventRecord(pending_[idx].b, st_); }
  void flush() {
    if (pending_.empty()) return;
    cudaStreamSynchronize(st_);
    for (Rec& r : pending_) {
      float ms = 0;
      cudaEventElapsedTime(&ms, r.a, r.b);
      auto& a = acc_[r.name];
      a.ms += ms, a.n += 1;
      pool_.push_back(r.a);
      pool_.push_back(r.b);
    }
    pending_.clear();
  }
  void dump() const {
    std::vector<std::pair<std::string, Acc2>> v(acc_.begin(), acc_.end());
    std::sort(v.begin(), v.end(), [](const auto& x, const auto& y) { return x.second.ms > y.second.ms; });
    std::fprintf(stderr, "lact profile (TTT_LACT_PROFILE): per call of forward (F) / backward (B)\n");
    for (const auto& [p, c] : calls_)
      std::fprintf(stderr, "  %c calls %lld: GPU %.3f ms/call, host enqueue %.3f ms/call\n", p, (long long)c.n,
                   c.gpu / double(std::max<int64_t>(c.n, 1)), c.host / double(std::max<int64_t>(c.n, 1)));
    double tot[2] = {0, 0};
    for (const auto& [name, a] : v) {
      const char p = name[0];
      const auto it = calls_.find(p);
      const double nc = it == calls_.end() ? 1.0 : double(std::max<int64_t>(it->second.n, 1));
      tot[p == 'B'] += a.ms / nc;
      std::fprintf(stderr, "  %-44s %9.3f ms/call  %7.1f launches/call  %8.2f us each\n", name.c_str(), a.ms / nc,
                   double(a.n) / nc, 1e3 * a.ms / double(std::max<int64_t>(a.n, 1)));
    }
    std::fprintf(stderr, "  sum of steps: F %.3f ms/call, B %.3f ms/call\n", tot[0], tot[1]);
  }
};

// ---- the backend --------------------------------------------------------------------------------------
template <class T>
struct CublasType;
template <>
struct CublasType<float> {
  static constexpr cudaDataType_t data = CUDA_R_32F;
};
template <>
struct CublasType<double> {
  static constexpr cudaDataType_t data = CUDA_R_64F;
};

// Intervals [a, b) of element offsets, sorted, disjoint and merged (the bf16 shadow bookkeeping below).
struct Ival {
  int64_t a, b;
};
using Ivals = std::vector<Ival>;
void iv_add(Ivals& v, int64_t a, int64_t b) {
  if (a >= b) return;
  Ivals out;
  out.reserve(v.size() + 1);
  size_t i = 0;
  while (i < v.size() && v[i].b < a) out.push_back(v[i++]);
  while (i < v.size() && v[i].a <= b) {
    a = std::min(a, v[i].a);
    b = std::max(b, v[i].b);
    ++i;
  }
  out.push_back({a, b});
  while (i < v.size()) out.push_back(v[i++]);
  v.swap(out);
}
void iv_sub(Ivals& v, int64_t a, int64_t b) {
  if (a >= b || v.empty()) return;
  Ivals out;
  out.reserve(v.size() + 1);
  for (const Ival& x : v) {
    if (x.b <= a || x.a >= b) {
      out.push_back(x);
      continue;
    }
    if (x.a < a) out.push_back({x.a, a});
    if (x.b > b) out.push_back({b, x.b});
  }
  v.swap(out);
}
bool iv_overlaps(const Ivals& v, int64_t a, int64_t b) {
  for (const Ival& x : v)
    if (x.a < b && x.b > a) return true;
  return false;
}
// The parts of [a, b) that v does not cover.
Ivals iv_gaps(const Ivals& v, int64_t a, int64_t b) {
  Ivals g;
  int64_t cur = a;
  for (const Ival& x : v) {
    if (x.b <= cur) continue;
    if (x.a >= b) break;
    if (x.a > cur) g.push_back({cur, x.a});
    cur = std::max(cur, x.b);
    if (cur >= b) break;
  }
  if (cur < b) g.push_back({cur, b});
  return g;
}

template <class T>
class CudaOps {
 public:
  using value_type = T;
  CudaOps(const lact::Geom& g, const LactOptions& opt) : g_(g), opt_(opt) {
    TTT_CUDA_CHECK(cudaStreamCreate(&stream_));
    prof_ = std::make_unique<Prof>(stream_);
    TTT_CUBLAS_CHECK(cublasCreate(&handle_));
    TTT_CUBLAS_CHECK(cublasSetStream(handle_, stream_));
    TTT_CUBLAS_CHECK(cublasSetPointerMode(handle_, CUBLAS_POINTER_MODE_HOST));
    TTT_CHECK(!(opt_.tf32 && opt_.bf16), "lact cuda: the tf32 and bf16 options exclude each other");
    TTT_CHECK(!opt_.bf16 || (std::is_same<T, float>::value), "lact cuda: bf16 matrix inputs need float data");
    if (std::is_same<T, double>::value) compute_ = CUBLAS_COMPUTE_64F;
    else compute_ = opt_.tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    bf16_ = opt_.bf16 && std::is_same<T, float>::value;
    partial_ = static_cast<Acc*>(device_malloc(sizeof(Acc) * size_t(3 * g_.B * kMaxSlices)));
    workspace_bytes_ += sizeof(Acc) * size_t(3 * g_.B * kMaxSlices);
    // A cuBLAS workspace of our own (the size cuBLAS uses by default on Hopper), so that the products can be
    // captured into a CUDA graph without cuBLAS allocating during the capture.
    cublas_ws_ = alloc_bytes(kCublasWorkspace);
    TTT_CUBLAS_CHECK(cublasSetWorkspace(handle_, cublas_ws_, kCublasWorkspace));
  }
  ~CudaOps() {
    if (stream_) cudaStreamSynchronize(stream_);
    prof_.reset();
    for (auto& [p, bytes] : allocs_) device_free(p, bytes);
    device_free(partial_, sizeof(Acc) * size_t(3 * g_.B * kMaxSlices));
    if (handle_) cublasDestroy(handle_);
    if (stream_) cudaStreamDestroy(stream_);
  }
  CudaOps(const CudaOps&) = delete;
  CudaOps& operator=(const CudaOps&) = delete;

  lact::Geom geom() const { return g_; }
  Prof& prof() { return *prof_; }
  cudaStream_t stream() const { return stream_; }
  size_t workspace_bytes() const { return workspace_bytes_; }

  T* alloc(int64_t n) {
    n = std::max<int64_t>(n, 1);
    T* p = static_cast<T*>(alloc_bytes(sizeof(T) * size_t(n)));
    if (bf16_) regions_.push_back(Region{p, n});
    return p;
  }
  void* alloc_bytes(size_t bytes) {
    void* p = device_malloc(bytes);
    allocs_.push_back({p, bytes});
    workspace_bytes_ += bytes;
    if (opt_.poison_workspace) TTT_CUDA_CHECK(cudaMemsetAsync(p, 0xFF, bytes, stream_));  // bf16 0xFFFF: NaN too
    return p;
  }

  // ---- bf16 matrix inputs ------------------------------------------------------------------------------
  // Every matrix operand is read from a bf16 copy ("shadow"):
  //  * the [B,T,d] inputs q, k, v, grad_o: mirrors, converted once per forward / backward;
  //  * every buffer the algorithm allocates (states, chunk buffers, NS5 iterates) has a shadow of the same
  //    layout, with the intervals where it holds bf16(the fp32 value) tracked on the host. Every step of
  //    this backend that writes fp32 invalidates what it writes; a product converts only what is not valid
  //    yet (so a state or an update is converted once, however many products read it);
  //  * the kernels whose outputs feed nothing but matrix products (a, R, Vl, dGH, dU) write the bf16 shadow
  //    alone: their fp32 buffers are then "stale", and a step that would read a stale fp32 value throws
  //    (a bookkeeping check on the host: it never happens with the algorithm of lact_fused.h);
  //  * the step (and the pre-norm weight norm) write the new state in fp32 and its shadow together.
  bool bf16() const { return bf16_; }
  void init_bf16(int64_t chunk, bool with_grad) {
    if (!bf16_) return;
    (void)chunk;
    const int64_t BTD = g_.B * g_.T * g_.d;
    for (int i = 0; i < (with_grad ? 4 : 3); ++i) {
      mirrors_[size_t(i)].copy = static_cast<__nv_bfloat16*>(alloc_bytes(sizeof(__nv_bfloat16) * size_t(BTD)));
      mirrors_[size_t(i)].n = BTD;
    }
    // Shadows of every buffer the algorithm allocated (it allocates all of them in its constructor).
    for (Region& r : regions_)
      r.sh = static_cast<__nv_bfloat16*>(alloc_bytes(sizeof(__nv_bfloat16) * size_t(r.n)));
  }
  // The host-side bookkeeping of the shadows (what a CUDA graph replay must leave behind as its capture did).
  struct Book {
    std::vector<std::pair<Ivals, Ivals>> regions;
    std::array<const T*, 4> mirror_base{};
  };
  Book snapshot() const {
    Book b;
    for (const Region& r : regions_) b.regions.push_back({r.valid, r.stale});
    for (size_t i = 0; i < mirrors_.size(); ++i) b.mirror_base[i] = mirrors_[i].base;
    return b;
  }
  void restore(const Book& b) {
    if (b.regions.size() != regions_.size()) return;
    for (size_t i = 0; i < regions_.size(); ++i) regions_[i].valid = b.regions[i].first, regions_[i].stale = b.regions[i].second;
    for (size_t i = 0; i < mirrors_.size(); ++i) mirrors_[i].base = b.mirror_base[i];
  }
  // Mirror slot i (0 q, 1 k, 2 v, 3 grad_o) := bf16(base[0 .. B*T*d)).
  void set_mirror(int i, const T* base) {
    if (!bf16_) return;
    Mirror& m = mirrors_[size_t(i)];
    TTT_CHECK(m.copy, "lact cuda: bf16 mirror " << i << " not allocated");
    to_bf16(reinterpret_cast<const float*>(base), m.copy, m.n);
    m.base = base;
  }

  // Row-major C = alpha op(A) op(B) + beta C is column-major C^T = alpha op(B)^T op(A)^T + beta C^T.
  void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t lda, int64_t sA,
            const T* B, int64_t ldb, int64_t sB, T beta, T* C, int64_t ldc, int64_t sC, int64_t batch) {
    if (bf16_) {
      // Elements each operand spans: (batch-1) strides plus one stored matrix ([rows, cols] with leading dim).
      const int64_t ra = ta ? k : m, ca = ta ? m : k, rb = tb ? n : k, cb = tb ? k : n;
      const int64_t ea = (batch - 1) * sA + (ra - 1) * lda + ca, eb = (batch - 1) * sB + (rb - 1) * ldb + cb;
      const int64_t ec = (batch - 1) * sC + (m - 1) * ldc + n;
      const __nv_bfloat16* a16 = operand_bf16(A, ea);
      const __nv_bfloat16* b16 = (B == A && eb == ea) ? a16 : operand_bf16(B, eb);
      if (beta != T(0)) reads(C, ec);
      wrote(C, ec);
      const float fa = float(alpha), fb = float(beta);
      auto ps_ = prof_->on() ? prof_->scope_str(gemm_name(ta, tb, m, n, k, batch)) : Prof::Scope{};
      TTT_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
          handle_, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, int(n), int(m), int(k), &fa, b16,
          CUDA_R_16BF, int(ldb), (long long)sB, a16, CUDA_R_16BF, int(lda), (long long)sA, &fb, C, CUDA_R_32F,
          int(ldc), (long long)sC, int(batch), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      return;
    }
    gemm_native(ta, tb, m, n, k, alpha, A, lda, sA, B, ldb, sB, beta, C, ldc, sC, batch);
  }
  std::string gemm_name(bool ta, bool tb, int64_t m, int64_t n, int64_t k, int64_t batch) const {
    char buf[96];
    std::snprintf(buf, sizeof buf, "gemm %s%s %lldx%lldx%lld b%lld", ta ? "T" : "N", tb ? "T" : "N", (long long)m,
                  (long long)n, (long long)k, (long long)batch);
    return buf;
  }
  void zero(T* p, int64_t n) {
    wrote(p, n);
    auto ps_ = prof_->scope("memset");
    TTT_CUDA_CHECK(cudaMemsetAsync(p, 0, sizeof(T) * size_t(n), stream_));
  }
  void copy(T* dst, const T* src, int64_t n) {
    reads(src, n);
    wrote(dst, n);
    auto ps_ = prof_->scope("memcpy");
    TTT_CUDA_CHECK(cudaMemcpyAsync(dst, src, sizeof(T) * size_t(n), cudaMemcpyDeviceToDevice, stream_));
  }
  void add(T* dst, const T* src, int64_t n) {
    reads(src, n);
    reads(dst, n);
    wrote(dst, n);
    auto ps_ = prof_->scope("add");
    k_add<<<grid_for(n), kThreads, 0, stream_>>>(dst, src, n);
    TTT_LAUNCH_CHECK("add");
  }
  void sqrt_inplace(T* x, int64_t n) {
    reads(x, n);
    wrote(x, n);
    auto ps_ = prof_->scope("sqrt");
    k_sqrt<<<grid_for(n), kThreads, 0, stream_>>>(x, n);
    TTT_LAUNCH_CHECK("sqrt");
  }
  void zero_rows(T* p, int64_t cols, int64_t r0, int64_t nr) {
    if (!p) return;
    auto ps_ = prof_->scope("memset2d");
    TTT_CUDA_CHECK(cudaMemset2DAsync(p + r0 * cols, sizeof(T) * size_t(g_.T * cols), 0, sizeof(T) * size_t(nr * cols),
                                     size_t(g_.B), stream_));
  }

  void gemm_native(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t lda, int64_t sA,
                   const T* B, int64_t ldb, int64_t sB, T beta, T* C, int64_t ldc, int64_t sC, int64_t batch) {
    const cudaDataType_t dt = CublasType<T>::data;
    auto ps_ = prof_->on() ? prof_->scope_str(gemm_name(ta, tb, m, n, k, batch)) : Prof::Scope{};
    TTT_CUBLAS_CHECK(cublasGemmStridedBatchedEx(handle_, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                                                int(n), int(m), int(k), &alpha, B, dt, int(ldb), (long long)sB, A, dt,
                                                int(lda), (long long)sA, &beta, C, dt, int(ldc), (long long)sC,
                                                int(batch), compute_, CUBLAS_GEMM_DEFAULT));
  }

  void batched_dot(const T* x, const T* y, int64_t per, int64_t stride, int64_t batch, T scale, T* out) {
    TTT_CHECK(batch <= 3 * g_.B, "batched_dot: batch " << batch << " exceeds the reduction buffer");
    reads(x, (batch - 1) * stride + per);
    if (y) reads(y, (batch - 1) * stride + per);
    wrote(out, batch);
    const int slices = int(std::max<int64_t>(1, std::min<int64_t>(kMaxSlices, (per + 4 * kThreads - 1) / (4 * kThreads))));
    {
      auto ps_ = prof_->scope("dot_partial");
      k_dot_partial<<<dim3(unsigned(slices), unsigned(batch)), kThreads, 0, stream_>>>(x, y, per, stride, partial_);
      TTT_LAUNCH_CHECK("dot_partial");
    }
    auto ps2_ = prof_->scope("dot_final");
    k_dot_final<<<unsigned(batch), 32, 0, stream_>>>(partial_, slices, scale, out);
    TTT_LAUNCH_CHECK("dot_final");
  }
  void axpy_batched(T* D, const T* S, const T* s, int64_t per) {
    const int64_t n = g_.B * per;
    reads(S, n);
    reads(D, n);
    wrote(D, n);
    auto ps_ = prof_->scope("axpy_batched");
    k_axpy_batched<<<grid_for(n), kThreads, 0, stream_>>>(D, S, s, per, n);
    TTT_LAUNCH_CHECK("axpy_batched");
  }
  void scale_batched(T* dst, const T* src, const T* s, int64_t per) {
    const int64_t n = g_.B * per;
    reads(src, n);
    wrote(dst, n);
    auto ps_ = prof_->scope("scale_batched");
    k_scale_batched<<<grid_for(n), kThreads, 0, stream_>>>(dst, src, s, per, n);
    TTT_LAUNCH_CHECK("scale_batched");
  }
  void fill_chunk(T* g, const T* val, T scale, int64_t c0, int64_t n) {
    const int64_t total = g_.B * n;
    auto ps_ = prof_->scope("fill_chunk");
    k_fill_chunk<<<grid_for(total), kThreads, 0, stream_>>>(g, val, scale, c0, n, g_.T, total);
    TTT_LAUNCH_CHECK("fill_chunk");
  }
  void pack_state(const T* w0, const T* w1, const T* w2, T* A) {
    const int64_t n = g_.B * 3 * g_.P();
    wrote(A, n);
    auto ps_ = prof_->scope("pack_state");
    k_pack_state<<<grid_for(n), kThreads, 0, stream_>>>(w0, w1, w2, A, g_.P(), n);
    TTT_LAUNCH_CHECK("pack_state");
  }
  void unpack_grad(const T* dA, const T* tau, const T* dtau, const T* A0, T* gw0, T* gw1, T* gw2) {
    const int64_t n = g_.B * 3 * g_.P();
    reads(dA, n);
    auto ps_ = prof_->scope("unpack_grad");
    k_unpack_grad<<<grid_for(n), kThreads, 0, stream_>>>(dA, tau, dtau, A0, gw0, gw1, gw2, g_, n);
    TTT_LAUNCH_CHECK("unpack_grad");
  }
  void row_norms(const T* A, T* tau) {
    reads(A, g_.B * 3 * g_.P());
    wrote(tau, g_.B * g_.rows());
    auto ps_ = prof_->scope("row_norms");
    k_row_norms<<<warp_grid(g_.B * g_.rows()), kThreads, 0, stream_>>>(A, tau, g_);
    TTT_LAUNCH_CHECK("row_norms");
  }
  void weight_norm(const T* A, const T* tau, T* E) {
    const int64_t n = g_.B * 3 * g_.P();
    reads(A, n);
    __nv_bfloat16* E16 = shadow_out(E, n, true);  // E in fp32 and bf16
    auto ps_ = prof_->scope("weight_norm");
    k_weight_norm<<<warp_grid(g_.B * g_.rows()), kThreads, 0, stream_>>>(A, tau, E, E16, g_);
    TTT_LAUNCH_CHECK("weight_norm");
  }
  void weight_norm_bwd(const T* A, const T* tau, const T* dE, T* dA, T* dtau) {
    const int64_t n = g_.B * 3 * g_.P();
    reads(A, n);
    reads(dE, n);
    reads(dA, n);
    wrote(dA, n);
    wrote(dtau, g_.B * g_.rows());
    auto ps_ = prof_->scope("weight_norm_bwd");
    k_weight_norm_bwd<<<warp_grid(g_.B * g_.rows()), kThreads, 0, stream_>>>(A, tau, dE, dA, dtau, g_);
    TTT_LAUNCH_CHECK("weight_norm_bwd");
  }
  void swiglu(const T* GH, T* a, int64_t n) {
    const int64_t rows = g_.B * n;
    reads(GH, rows * 2 * g_.dh);
    auto ps_ = prof_->scope("swiglu");
    if (bf16_) {
      __nv_bfloat16* a16 = shadow_out(a, rows * g_.dh, false);
      k_swiglu_rows<<<unsigned(rows), kRowThreads, 0, stream_>>>(GH, a16, int(g_.dh));
    } else {
      k_swiglu_rows<<<unsigned(rows), kRowThreads, 0, stream_>>>(GH, a, int(g_.dh));
    }
    TTT_LAUNCH_CHECK("swiglu");
  }
  void swiglu_bwd(const T* GH, const T* da, int64_t n, T* dGH, T* a) {
    const int64_t rows = g_.B * n;
    reads(GH, rows * 2 * g_.dh);
    reads(da, rows * g_.dh);
    auto ps_ = prof_->scope("swiglu_bwd");
    if (bf16_) {
      __nv_bfloat16* dgh16 = shadow_out(dGH, rows * 2 * g_.dh, false);
      __nv_bfloat16* a16 = shadow_out(a, rows * g_.dh, false);
      k_swiglu_bwd_rows<<<unsigned(rows), kRowThreads, 0, stream_>>>(GH, da, dgh16, a16, int(g_.dh));
    } else {
      k_swiglu_bwd_rows<<<unsigned(rows), kRowThreads, 0, stream_>>>(GH, da, dGH, a, int(g_.dh));
    }
    TTT_LAUNCH_CHECK("swiglu_bwd");
  }
  void update_terms(const T* GH, const T* U, const T* v, const T* lr0, const T* lr1, const T* lr2, int64_t c0,
                    int64_t n, T* a, T* R, T* Vl) {
    const int64_t rows = g_.B * n, d = g_.d, dh = g_.dh;
    reads(GH, rows * 2 * dh);
    reads(U, rows * dh);
    auto ps_ = prof_->scope("update_terms");
    if (bf16_) {
      __nv_bfloat16* a16 = shadow_out(a, rows * dh, false);
      __nv_bfloat16* r16 = shadow_out(R, rows * 2 * dh, false);
      __nv_bfloat16* v16 = shadow_out(Vl, rows * d, false);
      k_update_terms_rows<<<unsigned(rows), kRowThreads, 0, stream_>>>(GH, U, v, lr0, lr1, lr2, c0, int(n), g_.T,
                                                                      int(d), int(dh), a16, r16, v16);
    } else {
      k_update_terms_rows<<<unsigned(rows), kRowThreads, 0, stream_>>>(GH, U, v, lr0, lr1, lr2, c0, int(n), g_.T,
                                                                      int(d), int(dh), a, R, Vl);
    }
    TTT_LAUNCH_CHECK("update_terms");
  }
  void update_terms_bwd(const T* GH, const T* U, const T* v, const T* lr0, const T* lr1, const T* lr2, int64_t c0,
                        int64_t n, const T* dR, const T* dVl, const T* da, T* dGH, T* dU, T* glr0, T* glr1, T* glr2,
                        T* gv) {
    const int64_t rows = g_.B * n, d = g_.d, dh = g_.dh;
    reads(GH, rows * 2 * dh);
    reads(U, rows * dh);
    reads(dR, rows * 2 * dh);
    reads(dVl, rows * d);
    reads(da, rows * dh);
    auto ps_ = prof_->scope("update_terms_bwd");
    if (bf16_) {
      __nv_bfloat16* dgh16 = shadow_out(dGH, rows * 2 * dh, false);
      __nv_bfloat16* du16 = shadow_out(dU, rows * dh, false);
      k_update_terms_bwd_rows<<<warp_grid(rows), kThreads, 0, stream_>>>(GH, U, v, lr0, lr1, lr2, c0, n, g_.T, int(d),
                                                                        int(dh), dR, dVl, da, dgh16, du16, glr0, glr1,
                                                                        glr2, gv, rows);
    } else {
      k_update_terms_bwd_rows<<<warp_grid(rows), kThreads, 0, stream_>>>(GH, U, v, lr0, lr1, lr2, c0, n, g_.T, int(d),
                                                                        int(dh), dR, dVl, da, dGH, dU, glr0, glr1,
                                                                        glr2, gv, rows);
    }
    TTT_LAUNCH_CHECK("update_terms_bwd");
  }
  void to_ns(const T* src, T* dst, const T* nrm) {
    const int64_t n = 3 * g_.B * g_.P();
    reads(src, n);
    wrote(dst, n);
    auto ps_ = prof_->scope("to_ns");
    k_to_ns<<<grid_for(n), kThreads, 0, stream_>>>(src, dst, nrm, g_, n);
    TTT_LAUNCH_CHECK("to_ns");
  }
  void ns_norm_bwd(const T* dX0, const T* Pm, const T* nrm, const T* dot, T* dP) {
    const int64_t n = 3 * g_.B * g_.P();
    reads(dX0, n);
    reads(Pm, n);
    wrote(dP, n);
    auto ps_ = prof_->scope("ns_norm_bwd");
    k_ns_norm_bwd<<<grid_for(n), kThreads, 0, stream_>>>(dX0, Pm, nrm, dot, dP, g_, n);
    TTT_LAUNCH_CHECK("ns_norm_bwd");
  }
  void step(const T* A, const T* M, bool ns, const T* tau, T* An) {
    const int64_t n = g_.B * 3 * g_.P();
    reads(A, n);
    reads(M, n);
    __nv_bfloat16* An16 = shadow_out(An, n, true);  // the next state in fp32 and bf16
    auto ps_ = prof_->scope("step");
    k_step<<<warp_grid(g_.B * g_.rows()), kThreads, 0, stream_>>>(A, M, ns, tau, An, An16, g_);
    TTT_LAUNCH_CHECK("step");
  }
  void step_bwd(const T* A, const T* M, bool ns, const T* tau, T* dA, T* dtau) {
    const int64_t n = g_.B * 3 * g_.P();
    reads(A, n);
    reads(M, n);
    reads(dA, n);
    wrote(dA, n);
    wrote(dtau, g_.B * g_.rows());
    auto ps_ = prof_->scope("step_bwd");
    k_step_bwd<<<warp_grid(g_.B * g_.rows()), kThreads, 0, stream_>>>(A, M, ns, tau, dA, dtau, g_);
    TTT_LAUNCH_CHECK("step_bwd");
  }

 private:
  lact::Geom g_;
  LactOptions opt_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<Prof> prof_;
  cublasHandle_t handle_ = nullptr;
  cublasComputeType_t compute_ = CUBLAS_COMPUTE_32F;
  std::vector<std::pair<void*, size_t>> allocs_;
  Acc* partial_ = nullptr;
  size_t workspace_bytes_ = 0;
  static constexpr size_t kCublasWorkspace = size_t(32) << 20;
  void* cublas_ws_ = nullptr;
  // bf16 matrix inputs
  struct Mirror {
    const T* base = nullptr;
    int64_t n = 0;
    __nv_bfloat16* copy = nullptr;
  };
  struct Region {
    T* base = nullptr;
    int64_t n = 0;
    __nv_bfloat16* sh = nullptr;  // the shadow
    Ivals valid;                  // where sh = bf16(fp32 value)
    Ivals stale;                  // where only sh holds the value (the fp32 buffer was not written)
  };
  bool bf16_ = false;
  std::array<Mirror, 4> mirrors_{};
  std::vector<Region> regions_;

  Region* region_of(const T* p) {
    for (Region& r : regions_)
      if (p >= r.base && p < r.base + r.n) return &r;
    return nullptr;
  }
  // fp32 [p, p+n) was (or is about to be) written: its shadow is out of date there.
  void wrote(const T* p, int64_t n) {
    if (!bf16_) return;
    if (Region* r = region_of(p)) {
      const int64_t a = p - r->base, b = std::min(a + n, r->n);
      iv_sub(r->valid, a, b);
      iv_sub(r->stale, a, b);
    }
  }
  // A kernel writes bf16 [p, p+n) (and with fp32_too the fp32 value as well): the shadow pointer to write.
  __nv_bfloat16* shadow_out(T* p, int64_t n, bool fp32_too) {
    if (!bf16_) return nullptr;
    Region* r = region_of(p);
    TTT_CHECK(r && r->sh, "lact cuda bf16: no shadow for a buffer written in bf16");
    const int64_t a = p - r->base, b = a + n;
    TTT_CHECK(b <= r->n, "lact cuda bf16: a bf16 output runs past its buffer");
    iv_add(r->valid, a, b);
    if (fp32_too) iv_sub(r->stale, a, b);
    else iv_add(r->stale, a, b);
    return r->sh + a;
  }
  // An element-wise step reads fp32 [p, p+n): it must have been written in fp32.
  void reads(const T* p, int64_t n) {
    if (!bf16_) return;
    if (Region* r = region_of(p)) {
      const int64_t a = p - r->base, b = std::min(a + n, r->n);
      TTT_CHECK(!iv_overlaps(r->stale, a, b),
                "lact cuda bf16: an element-wise step reads a value that exists only as bf16 (bookkeeping bug)");
    }
  }

  void to_bf16(const float* src, __nv_bfloat16* dst, int64_t n) {
    auto ps_ = prof_->scope("to_bf16");
    k_to_bf16<<<grid_for((n + 3) / 4), kThreads, 0, stream_>>>(src, dst, n);
    TTT_LAUNCH_CHECK("to_bf16");
  }
  // The bf16 operand for the `extent` elements from p: inside a mirror, its copy; else the buffer's shadow,
  // after converting the parts of it that are not valid yet.
  const __nv_bfloat16* operand_bf16(const T* p, int64_t extent) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p), e = a + uintptr_t(extent) * sizeof(T);
    for (const Mirror& m : mirrors_) {
      if (!m.base) continue;
      const uintptr_t b = reinterpret_cast<uintptr_t>(m.base);
      if (a >= b && e <= b + uintptr_t(m.n) * sizeof(T)) return m.copy + (p - m.base);
    }
    Region* r = region_of(p);
    TTT_CHECK(r && r->sh, "lact cuda bf16: a matrix operand outside every known buffer");
    const int64_t lo = p - r->base, hi = lo + extent;
    TTT_CHECK(hi <= r->n, "lact cuda bf16: a matrix operand runs past its buffer");
    for (const Ival& gap : iv_gaps(r->valid, lo, hi)) {
      TTT_CHECK(!iv_overlaps(r->stale, gap.a, gap.b), "lact cuda bf16: stale operand without a valid shadow");
      to_bf16(reinterpret_cast<const float*>(r->base + gap.a), r->sh + gap.a, gap.b - gap.a);
      iv_add(r->valid, gap.a, gap.b);
    }
    return r->sh + lo;
  }
};


}  // namespace

// ---- public API ---------------------------------------------------------------------------------------
LactOptions precision_options(const std::string& precision) {
  LactOptions o;
  if (precision == "tf32") o.tf32 = true;
  else if (precision == "bf16") o.bf16 = true;
  else TTT_CHECK(precision == "fp32", "unknown precision '" << precision << "' (expected fp32, tf32 or bf16)");
  return o;
}
const char* precision_name(const LactOptions& opt) { return opt.bf16 ? "bf16" : opt.tf32 ? "tf32" : "fp32"; }


// CUDA graphs: each forward() / backward() is captured into a graph on its first call and replayed while it
// is called on the same pointers (the algorithm's sequence of steps depends on the shape and the pointers
// only). This removes the host's enqueue work (hundreds of cuBLAS calls and launches per call) and the gaps
// between small kernels. A replay also restores the host bookkeeping its capture left (the bf16 shadows).
// One graph per direction is kept: a call on other pointers captures anew. Off with TTT_LACT_GRAPH=0, with
// TTT_LACT_PROFILE, and after a capture that failed (the call then runs eagerly).
std::atomic<int> g_graph_override{-1};  // bench_lact's eager reference runner: 0

bool graphs_from_env() {
  if (g_graph_override.load() >= 0) return g_graph_override.load() != 0;
  const char* e = std::getenv("TTT_LACT_GRAPH");
  return !(e && std::string(e) == "0");
}

template <class T>
struct LactRunner<T>::Impl {
  CudaOps<T> ops;
  lact::Fused<CudaOps<T>> fused;
  struct GraphCall {
    CachedGraph graph;
    typename CudaOps<T>::Book post;  // the host bookkeeping the capture left, restored after each replay
  };
  GraphCall gf, gb;
  bool graphs = true;
  std::vector<const void*> fkey;  // pointers of the last forward()

  Impl(const lact::Shape& s, bool with_grad, const LactOptions& opt)
      : ops(lact::Geom{s.B, s.T, s.d, s.dh}, opt), fused(ops, s, with_grad) {
    ops.init_bf16(s.chunk, with_grad);
    graphs = graphs_from_env() && !ops.prof().on();
  }
  ~Impl() {
    cudaStreamSynchronize(ops.stream());
  }
  template <class F>
  void run(GraphCall& gc, const std::vector<const void*>& key, F&& body) {
    cudaStream_t st = ops.stream();
    if (!graphs || stream_is_capturing(st)) {  // a caller's capture: record into it
      body();
      return;
    }
    if (gc.graph.replay(st, key)) {
      ops.restore(gc.post);
      return;
    }
    const auto pre = ops.snapshot();
    std::string why;
    if (!gc.graph.capture_and_launch(st, key, body, &why)) {
      std::fprintf(stderr, "lact cuda: CUDA graph capture failed (%s); running without graphs\n", why.c_str());
      graphs = false;
      ops.restore(pre);
      body();
      return;
    }
    gc.post = ops.snapshot();
  }
};

template <class T>
LactRunner<T>::LactRunner(const lact::Shape& s, bool with_grad, const LactOptions& opt) {
  s.validate();
  impl_ = std::make_unique<Impl>(s, with_grad, opt);
  TTT_CUDA_CHECK(cudaStreamSynchronize(impl_->ops.stream()));
}
template <class T>
LactRunner<T>::~LactRunner() = default;
template <class T>
void LactRunner<T>::stream_init(const T* w0, const T* w1, const T* w2) {
  TTT_CHECK(!impl_->ops.bf16(), "lact cuda: streaming runs fp32 or tf32 products, not bf16");
  impl_->fused.stream_init(w0, w1, w2);
}
template <class T>
void LactRunner<T>::stream_apply(const lact::Inputs<T>& in, int64_t r0, int64_t n, T* o) {
  impl_->fused.stream_apply(in, r0, n, o);
}
template <class T>
void LactRunner<T>::stream_update(const lact::Inputs<T>& in, int64_t n) {
  impl_->fused.stream_update(in, n);
}

template <class T>
void LactRunner<T>::forward(const lact::Inputs<T>& in, T* o) {
  Impl& m = *impl_;
  m.ops.prof().call_begin('F');
  m.fkey = {in.w0, in.w1, in.w2, in.q, in.k, in.v, in.lr0, in.lr1, in.lr2, in.mom, o};
  m.run(m.gf, m.fkey, [&] {
    if (m.ops.bf16()) {  // bf16 copies of the token inputs the chunk products read (backward reuses them)
      m.ops.set_mirror(0, in.q);
      m.ops.set_mirror(1, in.k);
      m.ops.set_mirror(2, in.v);
    }
    m.fused.forward(in, o);
  });
  m.ops.prof().call_end();
}
template <class T>
void LactRunner<T>::backward(const T* grad_o, const lact::Grads<T>& g) {
  Impl& m = *impl_;
  m.ops.prof().call_begin('B');
  std::vector<const void*> key = m.fkey;
  key.insert(key.end(), {grad_o, g.w0, g.w1, g.w2, g.q, g.k, g.v, g.lr0, g.lr1, g.lr2, g.mom});
  m.run(m.gb, key, [&] {
    if (m.ops.bf16()) m.ops.set_mirror(3, grad_o);
    m.fused.backward(grad_o, g);
  });
  m.ops.prof().call_end();
}
template <class T>
void LactRunner<T>::synchronize() {
  TTT_CUDA_CHECK(cudaStreamSynchronize(impl_->ops.stream()));
  TTT_CUDA_CHECK(cudaGetLastError());
}
template <class T>
size_t LactRunner<T>::workspace_bytes() const {
  return impl_->ops.workspace_bytes();
}
template <class T>
void* LactRunner<T>::stream() const {
  return impl_->ops.stream();
}

template <class T>
void lact_host(const lact::Shape& s, const lact::Inputs<T>& in, T* o, const T* grad_o, const lact::Grads<T>* g,
               const LactOptions& opt) {
  s.validate();
  const bool grad = grad_o != nullptr;
  TTT_CHECK(!grad || g, "lact_host: grad_o given without gradient outputs");
  TTT_CHECK(!s.momentum || in.mom, "lact_host: momentum on but no momentum gate");
  const size_t P = size_t(s.d * s.dh), BT = size_t(s.B * s.T), BTD = BT * size_t(s.d), W = size_t(s.B) * P;
  auto up = [](const T* h, size_t n) {
    DeviceBuffer b(n * sizeof(T));
    b.upload(h, n * sizeof(T));
    return b;
  };
  DeviceBuffer w0 = up(in.w0, W), w1 = up(in.w1, W), w2 = up(in.w2, W);
  DeviceBuffer q = up(in.q, BTD), k = up(in.k, BTD), v = up(in.v, BTD);
  DeviceBuffer l0 = up(in.lr0, BT), l1 = up(in.lr1, BT), l2 = up(in.lr2, BT);
  DeviceBuffer mom = s.momentum ? up(in.mom, BT) : DeviceBuffer();
  DeviceBuffer go = grad ? up(grad_o, BTD) : DeviceBuffer();
  auto out = [](size_t n) {
    DeviceBuffer b(n * sizeof(T));
    b.fill_nan();
    return b;
  };
  DeviceBuffer od = out(BTD);
  DeviceBuffer gw0, gw1, gw2, gq, gk, gv, gl0, gl1, gl2, gm;
  lact::Grads<T> gd;
  if (grad) {
    gw0 = out(W), gw1 = out(W), gw2 = out(W), gq = out(BTD), gk = out(BTD), gv = out(BTD);
    gl0 = out(BT), gl1 = out(BT), gl2 = out(BT);
    if (s.momentum) gm = out(BT);
    gd = {gw0.as<T>(), gw1.as<T>(), gw2.as<T>(), gq.as<T>(), gk.as<T>(), gv.as<T>(),
          gl0.as<T>(), gl1.as<T>(), gl2.as<T>(), s.momentum ? gm.as<T>() : nullptr};
  }
  lact::Inputs<T> din{w0.as<T>(), w1.as<T>(), w2.as<T>(), q.as<T>(), k.as<T>(), v.as<T>(),
                      l0.as<T>(), l1.as<T>(), l2.as<T>(), s.momentum ? mom.as<T>() : nullptr};
  {
    LactRunner<T> r(s, grad, opt);
    r.forward(din, od.as<T>());
    if (grad) r.backward(go.as<T>(), gd);
    r.synchronize();
  }
  od.download(o, BTD * sizeof(T));
  if (grad) {
    gw0.download(g->w0, W * sizeof(T));
    gw1.download(g->w1, W * sizeof(T));
    gw2.download(g->w2, W * sizeof(T));
    gq.download(g->q, BTD * sizeof(T));
    gk.download(g->k, BTD * sizeof(T));
    gv.download(g->v, BTD * sizeof(T));
    gl0.download(g->lr0, BT * sizeof(T));
    gl1.download(g->lr1, BT * sizeof(T));
    gl2.download(g->lr2, BT * sizeof(T));
    if (s.momentum) gm.download(g->mom, BT * sizeof(T));
  }
}

LactBenchResult bench_lact(const lact::Shape& s, int repeats, int warmup, const LactOptions& opt, bool skip_forward) {
  using T = float;
  s.validate();
  TTT_CHECK(repeats > 0 && warmup >= 0, "bench_lact: repeats must be positive");
  LactBenchResult res;
  res.device = device_description();
  reset_tracked_peak();
  const int64_t P = s.d * s.dh, BT = s.B * s.T, BTD = BT * s.d, W = s.B * P;
  auto buf = [](int64_t n) { return DeviceBuffer(size_t(n) * sizeof(T)); };
  DeviceBuffer w0 = buf(W), w1 = buf(W), w2 = buf(W), q = buf(BTD), k = buf(BTD), v = buf(BTD);
  DeviceBuffer l0 = buf(BT), l1 = buf(BT), l2 = buf(BT), mom = s.momentum ? buf(BT) : DeviceBuffer(), go = buf(BTD);
  // The CPU bench's distributions: weights N(0, 1/cols), q/k/v N(0, 1/d), rates U(0.001, 0.01), gate U(0.5, 0.95).
  w0.fill_random<T>(W, 11, 0, 1.0 / std::sqrt(double(s.d)), true);
  w1.fill_random<T>(W, 12, 0, 1.0 / std::sqrt(double(s.dh)), true);
  w2.fill_random<T>(W, 13, 0, 1.0 / std::sqrt(double(s.d)), true);
  q.fill_random<T>(BTD, 14, 0, 1.0 / std::sqrt(double(s.d)), true);
  k.fill_random<T>(BTD, 15, 0, 1.0 / std::sqrt(double(s.d)), true);
  v.fill_random<T>(BTD, 16, 0, 1.0 / std::sqrt(double(s.d)), true);
  l0.fill_random<T>(BT, 17, 0.001, 0.01, false);
  l1.fill_random<T>(BT, 18, 0.001, 0.01, false);
  l2.fill_random<T>(BT, 19, 0.001, 0.01, false);
  if (s.momentum) mom.fill_random<T>(BT, 20, 0.5, 0.95, false);
  go.fill_random<T>(BTD, 21, 0, 1.0, true);
  DeviceBuffer o = buf(BTD), gw0 = buf(W), gw1 = buf(W), gw2 = buf(W), gq = buf(BTD), gk = buf(BTD), gv = buf(BTD);
  DeviceBuffer gl0 = buf(BT), gl1 = buf(BT), gl2 = buf(BT), gm = s.momentum ? buf(BT) : DeviceBuffer();
  lact::Inputs<T> in{w0.as<T>(), w1.as<T>(), w2.as<T>(), q.as<T>(), k.as<T>(), v.as<T>(),
                     l0.as<T>(), l1.as<T>(), l2.as<T>(), s.momentum ? mom.as<T>() : nullptr};
  lact::Grads<T> g{gw0.as<T>(), gw1.as<T>(), gw2.as<T>(), gq.as<T>(), gk.as<T>(), gv.as<T>(),
                   gl0.as<T>(), gl1.as<T>(), gl2.as<T>(), s.momentum ? gm.as<T>() : nullptr};

  // CUDA events on the runner's stream around the enqueued work (device.h's elapsed_ms).
  auto timed = [&](LactRunner<T>& r, const std::function<void()>& body) { return elapsed_ms(body, r.stream()); };
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  if (!skip_forward) {
    LactRunner<T> rf(s, false, opt);
    for (int i = 0; i < warmup; ++i) timed(rf, [&] { rf.forward(in, o.as<T>()); });
    for (int i = 0; i < repeats; ++i) res.fwd_ms.push_back(timed(rf, [&] { rf.forward(in, o.as<T>()); }));
    res.fwd_ms_median = median(res.fwd_ms);
  }
  {
    LactRunner<T> rb(s, true, opt);
    res.workspace_bytes = rb.workspace_bytes();
    auto run = [&] {
      rb.forward(in, o.as<T>());
      rb.backward(go.as<T>(), g);
    };
    for (int i = 0; i < warmup; ++i) timed(rb, run);
    for (int i = 0; i < repeats; ++i) res.fwdbwd_ms.push_back(timed(rb, run));
    res.fwdbwd_ms_median = median(res.fwdbwd_ms);
    device_memory(&res.device_used_bytes, &res.device_total_bytes);
    cudaStream_t st = static_cast<cudaStream_t>(rb.stream());
    size_t bad = count_nonfinite(o.as<T>(), BTD, st);
    for (const DeviceBuffer* b : {&gw0, &gw1, &gw2}) bad += count_nonfinite(b->as<T>(), W, st);
    for (const DeviceBuffer* b : {&gq, &gk, &gv}) bad += count_nonfinite(b->as<T>(), BTD, st);
    for (const DeviceBuffer* b : {&gl0, &gl1, &gl2}) bad += count_nonfinite(b->as<T>(), BT, st);
    if (s.momentum) bad += count_nonfinite(gm.as<T>(), BT, st);
    res.output_finite = bad == 0;
  }
  // TTT_LACT_CHECK_GRAPH=1: the outputs of the last (graph-replayed) run against a runner without graphs on
  // the same inputs, printed to stderr (bitwise identical expected: same kernels, same products).
  const char* chk = std::getenv("TTT_LACT_CHECK_GRAPH");
  if (chk && std::string(chk) == "1") {
    std::vector<const DeviceBuffer*> outs = {&o, &gw0, &gw1, &gw2, &gq, &gk, &gv, &gl0, &gl1, &gl2};
    if (s.momentum) outs.push_back(&gm);
    auto grab = [&] {
      std::vector<std::vector<T>> h;
      for (const DeviceBuffer* b : outs) {
        h.emplace_back(b->bytes() / sizeof(T));
        b->download(h.back().data(), b->bytes());
      }
      return h;
    };
    const auto replayed = grab();
    g_graph_override = 0;
    {
      LactRunner<T> re(s, true, opt);
      re.forward(in, o.as<T>());
      re.backward(go.as<T>(), g);
      re.synchronize();
    }
    g_graph_override = -1;
    const auto eager = grab();
    double worst = 0;
    size_t differ = 0;
    for (size_t i = 0; i < eager.size(); ++i)
      for (size_t j = 0; j < eager[i].size(); ++j) {
        const double a = replayed[i][j], b = eager[i][j];
        if (a != b) ++differ;
        if (std::isfinite(a) && std::isfinite(b)) worst = std::max(worst, std::fabs(a - b) / (std::fabs(b) + 1e-30));
      }
    std::fprintf(stderr, "lact graph replay vs eager (%s): %zu of the output elements differ, worst relative %.3g\n",
                 precision_name(opt), differ, worst);
  }
  res.tracked_peak_bytes = tracked_peak_bytes();
  return res;
}

template class LactRunner<float>;
template class LactRunner<double>;
template void lact_host<float>(const lact::Shape&, const lact::Inputs<float>&, float*, const float*,
                               const lact::Grads<float>*, const LactOptions&);
template void lact_host<double>(const lact::Shape&, const lact::Inputs<double>&, double*, const double*,
                                const lact::Grads<double>*, const LactOptions&);

}  // namespace ttt::cuda
