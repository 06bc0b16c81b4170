// What the fp32 (attention.cu) and bf16 (attention_bf16.cu) attention kernels share: the geometry passed to
// every kernel, the host-side argument checks of attention.h's contract, and the vector-load flags.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/error.h"
#include "backend/cuda/attention.h"

namespace ttt::cuda::attn {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Geometry passed by value to every kernel. Positions inside a sequence are int (N < 2^30 is checked).
struct Geo {
  int N, heads, hd, window;  // window clamped to N
  float scale;               // 1/sqrt(hd)
  float scale_log2;          // log2(e)/sqrt(hd)
};

// Which operands may be read with 16-byte vector loads.
enum : int { kVecQ = 1, kVecK = 2, kVecV = 4, kVecDO = 8 };

inline cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }
inline bool vec_ok(const float* p, int64_t ld, int64_t hd) { return hd % 4 == 0 && ld % 4 == 0 && aligned16(p); }

inline void check_shape(const char* op, const AttentionShape& s) {
  TTT_CHECK(s.S >= 0 && s.N >= 0 && s.heads >= 1 && s.hd >= 1,
            op << ": bad shape S " << s.S << ", N " << s.N << ", heads " << s.heads << ", hd " << s.hd);
  TTT_CHECK(s.hd <= 128, op << ": head width " << s.hd << " is not supported (at most 128)");
  TTT_CHECK(s.window >= 1, op << ": window must be >= 1, got " << s.window);
  TTT_CHECK(s.N < (int64_t(1) << 30), op << ": N = " << s.N << " tokens per sequence is too large");
  TTT_CHECK(s.heads <= 65535 && s.S <= 65535, op << ": " << s.S << " sequences x " << s.heads
                                                  << " heads exceed the grid (at most 65535 each)");
}
inline void check_operand(const char* op, const char* name, const void* p, int64_t ld, const AttentionShape& s) {
  TTT_CHECK(p != nullptr, op << ": " << name << " is null");
  TTT_CHECK(ld >= s.heads * s.hd, op << ": leading dimension of " << name << " is " << ld << ", less than heads * hd = "
                                     << s.heads * s.hd);
}

inline Geo make_geo(const AttentionShape& s) {
  Geo g;
  g.N = int(s.N);
  g.heads = int(s.heads);
  g.hd = int(s.hd);
  g.window = int(std::min<int64_t>(s.window, std::max<int64_t>(s.N, 1)));
  const double scale = 1.0 / std::sqrt(double(s.hd));
  g.scale = float(scale);
  g.scale_log2 = float(scale * 1.4426950408889634);
  return g;
}

// The forward's checks; false when there is nothing to compute (no rows).
// q, k, v: fp32 or bf16 operands (the checks do not read them).
inline bool check_forward(const char* op, const AttentionShape& s, const void* q, int64_t ldq, const void* k,
                          int64_t ldk, const void* v, int64_t ldv, const float* o, int64_t ldo, const float* lse) {
  check_shape(op, s);
  if (s.S == 0 || s.N == 0) return false;
  check_operand(op, "q", q, ldq, s);
  check_operand(op, "k", k, ldk, s);
  check_operand(op, "v", v, ldv, s);
  check_operand(op, "o", o, ldo, s);
  TTT_CHECK(lse != nullptr, op << ": lse is null");
  return true;
}

// The backward's checks; false when there is nothing to compute (no rows, or no gradient wanted). work_bytes: the
// workspace the call needs (named in the error when work is null).
inline bool check_backward(const char* op, const AttentionShape& s, const void* q, int64_t ldq, const void* k,
                           int64_t ldk, const void* v, int64_t ldv, const float* o, int64_t ldo, const float* lse,
                           const float* dO, int64_t lddo, const float* dq, int64_t lddq, const float* dk, int64_t lddk,
                           const float* dv, int64_t lddv, const void* work, size_t work_bytes) {
  check_shape(op, s);
  if (s.S == 0 || s.N == 0 || (!dq && !dk && !dv)) return false;
  check_operand(op, "q", q, ldq, s);
  check_operand(op, "k", k, ldk, s);
  check_operand(op, "v", v, ldv, s);
  check_operand(op, "o", o, ldo, s);
  check_operand(op, "dO", dO, lddo, s);
  if (dq) check_operand(op, "dq", dq, lddq, s);
  if (dk) check_operand(op, "dk", dk, lddk, s);
  if (dv) check_operand(op, "dv", dv, lddv, s);
  TTT_CHECK(lse != nullptr, op << ": lse is null");
  TTT_CHECK(work != nullptr, op << ": work is null (the backward needs " << work_bytes << " bytes of workspace)");
  const int64_t warps = s.S * s.N * s.heads, per_block = 256 / 32;
  TTT_CHECK((warps + per_block - 1) / per_block < (int64_t(1) << 31), op << ": too many rows");
  return true;
}

inline int vec_flags(const AttentionShape& s, const float* q, int64_t ldq, const float* k, int64_t ldk,
                     const float* v, int64_t ldv, const float* dO = nullptr, int64_t lddo = 0) {
  return (vec_ok(q, ldq, s.hd) ? kVecQ : 0) | (vec_ok(k, ldk, s.hd) ? kVecK : 0) | (vec_ok(v, ldv, s.hd) ? kVecV : 0) |
         (dO && vec_ok(dO, lddo, s.hd) ? kVecDO : 0);
}

}  // namespace ttt::cuda::attn
