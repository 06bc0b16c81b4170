// Shared by the CUDA sliding-window attention tests (suite CudaAttention): tests/test_cuda_attention.cpp (parity,
// bits, bad input) and tests/test_cuda_attention_times.cpp (the 760m shape: timings and spot checks). What they
// check and how: the comment at the top of test_cuda_attention.cpp.
#pragma once
#include <gtest/gtest.h>

#include "cuda_test_util.h"

#include <algorithm>
#include <functional>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "autograd/tape.h"
#include "core/error.h"
#include "core/rng.h"
#include "nn/layers.h"
#ifdef TTT_HAVE_CUDA
#include "backend/cuda/attention.h"
#include "backend/cuda/attention_cudnn.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/lact_cuda.h"
#endif

#ifdef TTT_HAVE_CUDA
namespace ttt::cuda_attention_test {


inline constexpr double kTol = 1e-4;
inline constexpr double kTolBf16 = 2e-2;  // bf16 kernels: relative L2 error ||gpu - ref|| / ||ref|| per output
// The wgmma forward against the mma.sync one on the same bf16 operands (relative L2 of o, of lse): the same
// bf16 products with fp32 sums in another order differ by ~1e-6; a layout or masking error by O(1).
inline constexpr double kTolWgmmaVsMma = 1e-3;

// Five CUDA-event-timed runs of `enqueue` (after the caller's warm-up): their median, min and max in ms.
struct FiveRuns {
  double median, min, max;
};
inline FiveRuns time_five(const std::function<void()>& enqueue) {
  std::vector<double> t;
  for (int i = 0; i < 5; ++i) t.push_back(cuda::elapsed_ms(enqueue));
  std::sort(t.begin(), t.end());
  return {t[2], t[0], t[4]};
}

// The 760m model's attention (T 32768, 24 heads of 64, window 2048) and random fp32 inputs for it, from one fresh
// seed: the fused q|k|v rows [N][3D] and dO [N][D].
struct Inputs760m {
  const cuda::AttentionShape s{1, 32768, 24, 64, 2048};
  const int64_t D = s.heads * s.hd, rows = s.S * s.N, ld = 3 * D;
  const uint64_t seed = fresh_seed();
  cuda::DeviceBuffer qkv{size_t(rows * ld) * 4}, dO{size_t(rows * D) * 4};
  Inputs760m() {
    qkv.fill_random<float>(rows * ld, seed, 0, 1.0, true);
    dO.fill_random<float>(rows * D, seed + 1, 0, 1.0, true);
  }
};

// While alive, the wgmma variant that Set selects (swa_forward_bf16_set_wgmma, swa_backward_bf16_set_wgmma) is
// `value`; then the setting it replaced, so that a nested scope (attention_case's mma.sync-only comparison) hands
// the enclosing test's variant back.
template <int (*Set)(int)>
struct ScopedWgmma {
  explicit ScopedWgmma(int value) : previous(Set(value)) {}
  ~ScopedWgmma() { Set(previous); }
  const int previous;
  ScopedWgmma(const ScopedWgmma&) = delete;
  ScopedWgmma& operator=(const ScopedWgmma&) = delete;
};
// The forward's warpgroups (0: the mma.sync kernel runs instead).
using WgmmaSetting = ScopedWgmma<cuda::swa_forward_bf16_set_wgmma>;
// The backward's mode (0: the mma.sync kernels, 1: wgmma dk/dv, 2: wgmma dk/dv and dq, 3: 2 with dk/dv's K, V in
// registers, 4: 2 with both kernels' resident operands in registers, 5 and 6: 3 and 4 with the pipelined dk/dv).
using WgmmaBwdSetting = ScopedWgmma<cuda::swa_backward_bf16_set_wgmma>;

inline std::vector<double> as_double(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

// Which kernels a test runs: the fp32 ones (max-abs relative error <= kTol) or the bf16 tensor-core ones
// (relative L2 error <= kTolBf16; the max-abs relative error is reported beside it).
struct Impl {
  bool bf16;
  void (*fwd)(const cuda::AttentionShape&, const float*, int64_t, const float*, int64_t, const float*, int64_t,
              float*, int64_t, float*, void*);
  void (*bwd)(const cuda::AttentionShape&, const float*, int64_t, const float*, int64_t, const float*, int64_t,
              const float*, int64_t, const float*, const float*, int64_t, float*, int64_t, float*, int64_t, float*,
              int64_t, void*, void*);
  bool bf16_inputs = false;  // the bf16-operand entry points (hd % 8 == 0 only)
  const char* label = nullptr;  // a name other than the default one below
  const char* name() const { return label ? label : bf16_inputs ? "bf16-inputs" : bf16 ? "bf16" : "fp32"; }
};
// bf16 twins of fp32 operands for the bf16-input kernels: the operand's rows rounded to bf16 (what the
// fp32-input kernels round them to on load), with the same column offsets and a leading dimension rounded up to 8.
struct Bf16Twin {
  cuda::DeviceBuffer buf;
  int64_t ld = 0;
  const bf16* p() const { return buf.as<bf16>(); }
};
inline Bf16Twin bf16_twin(const float* src, int64_t ld, int64_t rows, int64_t cols) {
  Bf16Twin t;
  t.ld = (ld + 7) / 8 * 8;
  t.buf = cuda::DeviceBuffer(size_t(std::max<int64_t>(1, rows * t.ld)) * 2);
  if (rows > 0) cuda::mk::to_bf16(src, ld, t.buf.as<bf16>(), t.ld, rows, cols);
  return t;
}
// The bf16-input kernels behind the fp32 signature of Impl (the conversion is not part of what they time).
inline void fwd_bf16_inputs(const cuda::AttentionShape& s, const float* q, int64_t ldq, const float* k, int64_t ldk,
                     const float* v, int64_t ldv, float* o, int64_t ldo, float* lse, void* st) {
  const int64_t rows = s.S * s.N, D = s.heads * s.hd;
  const Bf16Twin tq = bf16_twin(q, ldq, rows, D), tk = bf16_twin(k, ldk, rows, D), tv = bf16_twin(v, ldv, rows, D);
  cuda::swa_forward_bf16(s, tq.p(), tq.ld, tk.p(), tk.ld, tv.p(), tv.ld, o, ldo, lse, st);
  cuda::stream_synchronize();
}
inline void bwd_bf16_inputs(const cuda::AttentionShape& s, const float* q, int64_t ldq, const float* k, int64_t ldk,
                     const float* v, int64_t ldv, const float* o, int64_t ldo, const float* lse, const float* dO,
                     int64_t lddo, float* dq, int64_t lddq, float* dk, int64_t lddk, float* dv, int64_t lddv, void*,
                     void* st) {
  const int64_t rows = s.S * s.N, D = s.heads * s.hd;
  const Bf16Twin tq = bf16_twin(q, ldq, rows, D), tk = bf16_twin(k, ldk, rows, D), tv = bf16_twin(v, ldv, rows, D);
  cuda::DeviceBuffer work(std::max<size_t>(16, cuda::swa_backward_bf16_workspace(s)));
  work.fill_nan();
  cuda::swa_backward_bf16(s, tq.p(), tq.ld, tk.p(), tk.ld, tv.p(), tv.ld, o, ldo, lse, dO, lddo, dq, lddq, dk, lddk,
                          dv, lddv, work.as<void>(), st);
  cuda::stream_synchronize();
}

// cuDNN's fused attention forward (attention_cudnn.h) on the bf16 twins of the operands, called directly (not
// through swa_forward_bf16's switch, so that a fallback cannot pass for it). Fails the test where it declines.
inline void fwd_cudnn(const cuda::AttentionShape& s, const float* q, int64_t ldq, const float* k, int64_t ldk,
               const float* v, int64_t ldv, float* o, int64_t ldo, float* lse, void* st) {
  const int64_t rows = s.S * s.N, D = s.heads * s.hd;
  const Bf16Twin tq = bf16_twin(q, ldq, rows, D), tk = bf16_twin(k, ldk, rows, D), tv = bf16_twin(v, ldv, rows, D);
  std::string why;
  if (!cuda::swa_forward_cudnn(s, tq.p(), tq.ld, tk.p(), tk.ld, tv.p(), tv.ld, o, ldo, lse, st, &why))
    ADD_FAILURE() << "cuDNN declined the shape: " << why;
  cuda::stream_synchronize();
}

inline const Impl kFp32{false, &cuda::swa_forward, &cuda::swa_backward};
inline const Impl kBf16{true, &cuda::swa_forward_bf16, &cuda::swa_backward_bf16};
// bf16 kernels fed bf16 operands (cp.async tiles); must give the bits of kBf16 for the same rounded values.
inline const Impl kBf16Inputs{true, &fwd_bf16_inputs, &bwd_bf16_inputs, true};
// cuDNN's forward (o rounded to bf16 by cuDNN, then widened), our bf16 backward fed its o and lse: the bf16 error
// bounds against float64 for all five outputs (the backward's check is also one of lse's convention).
inline const Impl kCudnn{true, &fwd_cudnn, &cuda::swa_backward_bf16, false, "cudnn"};

inline std::vector<float> normal(Rng& r, size_t n, double s) {
  std::vector<float> x(n);
  for (auto& e : x) e = float(r.normal() * s);
  return x;
}

// max |a - ref| / max |ref|; infinite when a holds a NaN or an Inf. A reference that is zero up to float64
// rounding (max |ref| <= 1e-9 * zero_scale) gives max |a - ref| / zero_scale instead.
inline double rel_max(const std::vector<float>& a, const std::vector<double>& ref, double zero_scale = 1.0) {
  EXPECT_EQ(a.size(), ref.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(double(a[i]))) return INFINITY;
    num = std::max(num, std::abs(double(a[i]) - ref[i]));
    den = std::max(den, std::abs(ref[i]));
  }
  return den <= 1e-9 * zero_scale ? num / zero_scale : num / den;
}

// ||a - ref||_2 / max(||ref||_2, floor * sqrt(n)); infinite when a holds a NaN or an Inf. A reference that is zero
// up to float64 rounding gives max |a - ref| / zero_scale instead (as rel_max).
inline double rel_l2(const std::vector<float>& a, const std::vector<double>& ref, double zero_scale = 1.0,
              double floor = 0.0) {
  EXPECT_EQ(a.size(), ref.size());
  double num = 0, den = 0, mx = 0, mref = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(double(a[i]))) return INFINITY;
    const double d = double(a[i]) - ref[i];
    num += d * d, den += ref[i] * ref[i];
    mx = std::max(mx, std::abs(d)), mref = std::max(mref, std::abs(ref[i]));
  }
  return mref <= 1e-9 * zero_scale ? mx / zero_scale
                                    : std::sqrt(num) / std::max(std::sqrt(den), floor * std::sqrt(double(a.size())));
}

// A wgmma gradient a against the mma.sync one b: relative L2. Where the exact gradient is zero (max |exact| <=
// 1e-9 zero_scale: window 1, one token) both are fp32 rounding residues of dP - delta, summed in other orders:
// max |a - b| / zero_scale instead (as rel_l2 against float64).
inline double wgmma_vs_mma(const std::vector<float>& a, const std::vector<float>& b, const std::vector<double>& exact,
                    double zero_scale) {
  double mref = 0, mx = 0;
  for (double x : exact) mref = std::max(mref, std::abs(x));
  if (mref > 1e-9 * zero_scale) return rel_l2(a, as_double(b));
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(double(a[i]))) return INFINITY;
    mx = std::max(mx, std::abs(double(a[i]) - double(b[i])));
  }
  return mx / zero_scale;
}

inline cuda::DeviceBuffer up(const std::vector<float>& v) {
  cuda::DeviceBuffer b(std::max<size_t>(1, v.size() * sizeof(float)));
  if (!v.empty()) b.upload(v.data(), v.size() * sizeof(float));
  return b;
}
inline cuda::DeviceBuffer nan_buf(size_t floats) {
  cuda::DeviceBuffer b(std::max<size_t>(1, floats * sizeof(float)));
  b.fill_nan();
  return b;
}
inline std::vector<float> down(const cuda::DeviceBuffer& b, size_t floats) {
  cuda::stream_synchronize();
  std::vector<float> v(floats);
  if (floats) b.download(v.data(), floats * sizeof(float));
  return v;
}

// A [rows, ld] host/device buffer holding an operand of `cols` columns at column `off` (several operands may share
// one buffer: the fused qkv layout).
struct Strided {
  int64_t rows, ld, off, cols;
  float* ptr(const cuda::DeviceBuffer& b) const { return b.as<float>() + off; }
  // Rows [r0, r0 + n) of the operand as an n x cols float64 matrix.
  ag::Mat<double> mat(const std::vector<float>& buf, int64_t r0, int64_t n) const {
    ag::Mat<double> m(n, cols);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < cols; ++c) m.data[size_t(i * cols + c)] = double(buf[size_t((r0 + i) * ld + off + c)]);
    return m;
  }
  std::vector<float> gather(const std::vector<float>& buf) const {
    std::vector<float> v(size_t(rows * cols));
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t c = 0; c < cols; ++c) v[size_t(i * cols + c)] = buf[size_t(i * ld + off + c)];
    return v;
  }
};

struct Case {
  int64_t S, N, heads, hd, window;
  bool fused;   // q/k/v in one [rows, 3D] buffer and dq/dk/dv in another
  int64_t pad;  // separate buffers: leading dimension D + pad
  std::string name() const {
    return "S" + std::to_string(S) + " N" + std::to_string(N) + " H" + std::to_string(heads) + " hd" +
           std::to_string(hd) + " W" + std::to_string(window) + (fused ? " fused" : " pad" + std::to_string(pad));
  }
};

// Float64 log-sum-exp of the scaled scores of every (row, head) of one sequence.
inline std::vector<double> lse_ref(const ag::Mat<double>& q, const ag::Mat<double>& k, int64_t heads, int64_t window) {
  const int64_t N = q.rows, hd = q.cols / heads;
  const double scale = 1.0 / std::sqrt(double(hd));
  std::vector<double> out(size_t(N * heads));
  std::vector<double> s;
  for (int64_t i = 0; i < N; ++i)
    for (int64_t h = 0; h < heads; ++h) {
      s.clear();
      for (int64_t j = std::max<int64_t>(0, i - window + 1); j <= i; ++j) {
        double d = 0;
        for (int64_t c = 0; c < hd; ++c) d += q.data[size_t(i * q.cols + h * hd + c)] * k.data[size_t(j * k.cols + h * hd + c)];
        s.push_back(d * scale);
      }
      const double mx = *std::max_element(s.begin(), s.end());
      double sum = 0;
      for (double x : s) sum += std::exp(x - mx);
      out[size_t(i * heads + h)] = mx + std::log(sum);
    }
  return out;
}

struct Worst {
  double err = 0, err_max = 0;  // err: the checked measure; err_max: max-abs relative (bf16: reported only)
  std::string what, what_max, kind = "relative error";
  int cases = 0;
  void see(double e, const std::string& w) {
    if (e > err || std::isnan(e)) err = e, what = w;
  }
  void see_max(double e, const std::string& w) {
    if (e > err_max || std::isnan(e)) err_max = e, what_max = w;
  }
  ~Worst() {
    std::printf("[attention summary] worst %s %.3e (%s) over %d cases\n", kind.c_str(), err, what.c_str(), cases);
    if (!what_max.empty())
      std::printf("[attention summary] worst max-abs relative error %.3e (%s), not checked\n", err_max,
                  what_max.c_str());
  }
};

#define CHECK_ERR(worst, e, tol, label)                                                        \
  do {                                                                                         \
    const double e_ = (e);                                                                     \
    EXPECT_LE(e_, tol) << label << " (seed " << seed << "): relative error " << e_;            \
    worst.see(e_, label);                                                                      \
  } while (0)

// fp32: max-abs relative <= kTol. bf16: relative L2 <= kTolBf16, max-abs relative recorded.
// lse_floor (bf16 lse only): a typical score size. An lse is a log, its near-zero values come from cancelling
// scores (one token: lse = q.k / sqrt(hd)), whose bf16 rounding error scales with |q| |k|, not with |lse|.
#define CHECK_IMPL_F(impl, worst, got, ref, zs, lse_floor, label)                              \
  do {                                                                                         \
    if ((impl).bf16) {                                                                         \
      CHECK_ERR(worst, rel_l2(got, ref, zs, lse_floor), kTolBf16, label);                      \
      worst.see_max(rel_max(got, ref, zs), label);                                             \
    } else {                                                                                   \
      CHECK_ERR(worst, rel_max(got, ref, zs), kTol, label);                                    \
    }                                                                                          \
  } while (0)
#define CHECK_IMPL(impl, worst, got, ref, zs, label) CHECK_IMPL_F(impl, worst, got, ref, zs, 0.0, label)

// Largest L2 norm of a (row, head) segment of an operand.
inline double max_head_norm(const Strided& s, const std::vector<float>& buf, int64_t heads) {
  const int64_t hd = s.cols / heads;
  double best = 0;
  for (int64_t i = 0; i < s.rows; ++i)
    for (int64_t h = 0; h < heads; ++h) {
      double n = 0;
      for (int64_t c = 0; c < hd; ++c) n += std::pow(double(buf[size_t(i * s.ld + s.off + h * hd + c)]), 2);
      best = std::max(best, std::sqrt(n));
    }
  return best;
}

inline void attention_case(const Impl& impl, Worst& worst, const Case& c) {
  const uint64_t seed = fresh_seed();
  Rng r(seed);
  const std::string name = std::string(impl.name()) + " " + c.name();
  const int64_t D = c.heads * c.hd, rows = c.S * c.N;
  const cuda::AttentionShape shape{c.S, c.N, c.heads, c.hd, c.window};
  // Inputs: q, k, v (fused or separate), dO.
  const int64_t ld_in = c.fused ? 3 * D : D + c.pad;
  const Strided qs{rows, ld_in, 0, D}, ks{rows, ld_in, c.fused ? D : 0, D}, vs{rows, ld_in, c.fused ? 2 * D : 0, D};
  const Strided os{rows, D + c.pad, 0, D}, dos{rows, D + c.pad, 0, D};
  const double qk_scale = r.uniform(0.5, 2.0);  // sharper or flatter softmax
  std::vector<float> qkv, qh, kh, vh;
  if (c.fused) {
    qkv = normal(r, size_t(rows * ld_in), 1.0);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < 2 * D; ++j) qkv[size_t(i * ld_in + j)] *= float(qk_scale);
  } else {
    qh = normal(r, size_t(rows * ld_in), qk_scale), kh = normal(r, size_t(rows * ld_in), qk_scale);
    vh = normal(r, size_t(rows * ld_in), 1.0);
  }
  const std::vector<float> doh = normal(r, size_t(rows * dos.ld), 1.0);
  const std::vector<float>& qsrc = c.fused ? qkv : qh;
  const std::vector<float>& ksrc = c.fused ? qkv : kh;
  const std::vector<float>& vsrc = c.fused ? qkv : vh;

  // CPU reference per sequence, in float64.
  std::vector<double> o_ref, lse_all, dq_ref, dk_ref, dv_ref;
  for (int64_t s = 0; s < c.S; ++s) {
    ag::Tape<double> t;
    const ag::Mat<double> qm = qs.mat(qsrc, s * c.N, c.N), km = ks.mat(ksrc, s * c.N, c.N);
    ag::Var qv = t.leaf(qm, true), kv = t.leaf(km, true), vv = t.leaf(vs.mat(vsrc, s * c.N, c.N), true);
    ag::Var ov = nn::sliding_window_attention(t, qv, kv, vv, c.heads, c.window);
    t.grad(ov) = dos.mat(doh, s * c.N, c.N);
    t.backward();
    const auto append = [](std::vector<double>& dst, const std::vector<double>& src) {
      dst.insert(dst.end(), src.begin(), src.end());
    };
    append(o_ref, t.val(ov).data);
    append(dq_ref, t.grad(qv).data);
    append(dk_ref, t.grad(kv).data);
    append(dv_ref, t.grad(vv).data);
    append(lse_all, lse_ref(qm, km, c.heads, c.window));
  }

  // GPU.
  cuda::DeviceBuffer qkvd, qd, kd, vd;
  if (c.fused) qkvd = up(qkv);
  else qd = up(qh), kd = up(kh), vd = up(vh);
  const cuda::DeviceBuffer& qb = c.fused ? qkvd : qd;
  const cuda::DeviceBuffer& kb = c.fused ? qkvd : kd;
  const cuda::DeviceBuffer& vb = c.fused ? qkvd : vd;
  cuda::DeviceBuffer dod = up(doh);
  cuda::DeviceBuffer od = nan_buf(size_t(rows * os.ld)), lsed = nan_buf(size_t(rows * c.heads));
  cuda::DeviceBuffer work = nan_buf(cuda::swa_backward_workspace(shape) / 4);
  impl.fwd(shape, qs.ptr(qb), qs.ld, ks.ptr(kb), ks.ld, vs.ptr(vb), vs.ld, od.as<float>(), os.ld, lsed.as<float>(),
           nullptr);
  const auto o_all = down(od, size_t(rows * os.ld));
  const auto lse = down(lsed, size_t(rows * c.heads));
  CHECK_IMPL(impl, worst, os.gather(o_all), o_ref, 1.0, name + " o");
  // bf16 lse: errors relative to at least the typical score size scale * |q| |k| / sqrt(hd) (norms per row/head).
  const double score_size = max_head_norm(qs, qsrc, c.heads) * max_head_norm(ks, ksrc, c.heads) / double(c.hd);
  CHECK_IMPL_F(impl, worst, lse, lse_all, 1.0, score_size, name + " lse");

  // Gradients: fused into one [rows, 3D] buffer (the model's layout) or separate ones with ld D + pad.
  const int64_t ld_g = c.fused ? 3 * D : D + c.pad;
  const Strided dqs{rows, ld_g, 0, D}, dks{rows, ld_g, c.fused ? D : 0, D}, dvs{rows, ld_g, c.fused ? 2 * D : 0, D};
  const size_t gsz = size_t(rows * ld_g);
  struct Grads {
    std::vector<float> dq, dk, dv;  // whole buffers as downloaded
  };
  // want: bit 0 dq, bit 1 dk, bit 2 dv
  const auto run_bwd = [&](int want) {
    Grads g;
    if (c.fused) {
      cuda::DeviceBuffer buf = nan_buf(gsz);
      impl.bwd(shape, qs.ptr(qb), qs.ld, ks.ptr(kb), ks.ld, vs.ptr(vb), vs.ld, od.as<float>(), os.ld,
               lsed.as<float>(), dod.as<float>(), dos.ld, want & 1 ? dqs.ptr(buf) : nullptr, dqs.ld,
               want & 2 ? dks.ptr(buf) : nullptr, dks.ld, want & 4 ? dvs.ptr(buf) : nullptr, dvs.ld,
               work.as<void>(), nullptr);
      g.dq = g.dk = g.dv = down(buf, gsz);
    } else {
      cuda::DeviceBuffer bq = nan_buf(gsz), bk = nan_buf(gsz), bv = nan_buf(gsz);
      impl.bwd(shape, qs.ptr(qb), qs.ld, ks.ptr(kb), ks.ld, vs.ptr(vb), vs.ld, od.as<float>(), os.ld,
               lsed.as<float>(), dod.as<float>(), dos.ld, want & 1 ? bq.as<float>() : nullptr, dqs.ld,
               want & 2 ? bk.as<float>() : nullptr, dks.ld, want & 4 ? bv.as<float>() : nullptr, dvs.ld,
               work.as<void>(), nullptr);
      g.dq = down(bq, gsz), g.dk = down(bk, gsz), g.dv = down(bv, gsz);
    }
    return g;
  };
  const Grads g1 = run_bwd(7);
  const auto dq = dqs.gather(g1.dq), dk = dks.gather(g1.dk), dv = dvs.gather(g1.dv);
  // The size of the terms of dq and dk before the cancellation in dP - delta (see the top of the file).
  const double terms = max_head_norm(dos, doh, c.heads) * max_head_norm(vs, vsrc, c.heads) *
                       std::max(max_head_norm(qs, qsrc, c.heads), max_head_norm(ks, ksrc, c.heads)) /
                       std::sqrt(double(c.hd));
  CHECK_IMPL(impl, worst, dq, dq_ref, terms, name + " dq");
  CHECK_IMPL(impl, worst, dk, dk_ref, terms, name + " dk");
  CHECK_IMPL(impl, worst, dv, dv_ref, 1.0, name + " dv");
  // bf16 operands: the same bits as the fp32-input bf16 kernels (both round to the same bf16 values, then run one
  // kernel template). Where the forward ran the wgmma kernel instead (Hopper, hd 64): its o and lse close to the
  // mma.sync kernel's (the same bf16 products, fp32 sums in another order: not bits), and the mma.sync kernel on
  // bf16 operands, forced, still gives the fp32-input bits.
  if (impl.bf16_inputs) {
    cuda::DeviceBuffer o2 = nan_buf(size_t(rows * os.ld)), lse2 = nan_buf(size_t(rows * c.heads));
    kBf16.fwd(shape, qs.ptr(qb), qs.ld, ks.ptr(kb), ks.ld, vs.ptr(vb), vs.ld, o2.as<float>(), os.ld, lse2.as<float>(),
              nullptr);
    const auto o_mma = down(o2, size_t(rows * os.ld)), lse_mma = down(lse2, size_t(rows * c.heads));
    std::vector<float> o_bits = o_all, lse_bits = lse;
    if (const int wgs = cuda::swa_forward_bf16_uses_wgmma(shape)) {
      const double e_o = rel_l2(os.gather(o_all), as_double(os.gather(o_mma)));
      const double e_lse = rel_l2(lse, as_double(lse_mma), 1.0, score_size);
      EXPECT_LE(e_o, kTolWgmmaVsMma) << name << " (seed " << seed << "): wgmma o vs the mma.sync kernel's";
      EXPECT_LE(e_lse, kTolWgmmaVsMma) << name << " (seed " << seed << "): wgmma lse vs the mma.sync kernel's";
      std::printf("[attention wgmma x%d] %s: relative L2 vs the mma.sync forward: o %.2e, lse %.2e\n", wgs,
                  name.c_str(), e_o, e_lse);
      const WgmmaSetting mma_only(0);
      cuda::DeviceBuffer o3 = nan_buf(size_t(rows * os.ld)), lse3 = nan_buf(size_t(rows * c.heads));
      impl.fwd(shape, qs.ptr(qb), qs.ld, ks.ptr(kb), ks.ld, vs.ptr(vb), vs.ld, o3.as<float>(), os.ld,
               lse3.as<float>(), nullptr);
      o_bits = down(o3, size_t(rows * os.ld)), lse_bits = down(lse3, size_t(rows * c.heads));
    }
    EXPECT_EQ(0, std::memcmp(o_bits.data(), o_mma.data(), o_bits.size() * 4))
        << name << ": o differs from the fp32-input bf16 kernel";
    EXPECT_EQ(0, std::memcmp(lse_bits.data(), lse_mma.data(), lse_bits.size() * 4))
        << name << ": lse differs from the fp32-input bf16 kernel";
    cuda::DeviceBuffer bq = nan_buf(gsz), bk = nan_buf(gsz), bv = nan_buf(gsz);
    kBf16.bwd(shape, qs.ptr(qb), qs.ld, ks.ptr(kb), ks.ld, vs.ptr(vb), vs.ld, od.as<float>(), os.ld, lsed.as<float>(),
              dod.as<float>(), dos.ld, dqs.ptr(bq), dqs.ld, dks.ptr(bk), dks.ld, dvs.ptr(bv), dvs.ld, work.as<void>(),
              nullptr);
    const auto dq_mma = dqs.gather(down(bq, gsz)), dk_mma = dks.gather(down(bk, gsz)),
               dv_mma = dvs.gather(down(bv, gsz));
    std::vector<float> dq_bits = dq, dk_bits = dk, dv_bits = dv;
    // Where the backward ran the wgmma kernels (Hopper, hd 64): close to the mma.sync ones (the same bf16 products,
    // fp32 sums in another order), and the mma.sync kernels on bf16 operands, forced, give the fp32-input bits.
    if (const int mode = cuda::swa_backward_bf16_uses_wgmma(shape)) {
      const double e_dq = wgmma_vs_mma(dq, dq_mma, dq_ref, terms), e_dk = wgmma_vs_mma(dk, dk_mma, dk_ref, terms),
                   e_dv = wgmma_vs_mma(dv, dv_mma, dv_ref, 1.0);
      EXPECT_LE(e_dq, kTolWgmmaVsMma) << name << " (seed " << seed << "): wgmma backward dq vs the mma.sync kernel's";
      EXPECT_LE(e_dk, kTolWgmmaVsMma) << name << " (seed " << seed << "): wgmma backward dk vs the mma.sync kernel's";
      EXPECT_LE(e_dv, kTolWgmmaVsMma) << name << " (seed " << seed << "): wgmma backward dv vs the mma.sync kernel's";
      std::printf("[attention wgmma backward mode %d] %s: relative L2 vs the mma.sync backward: dq %.2e, dk %.2e, "
                  "dv %.2e\n",
                  mode, name.c_str(), e_dq, e_dk, e_dv);
      const WgmmaBwdSetting mma_only(0);
      const Grads forced = run_bwd(7);
      dq_bits = dqs.gather(forced.dq), dk_bits = dks.gather(forced.dk), dv_bits = dvs.gather(forced.dv);
    }
    EXPECT_EQ(dq_bits, dq_mma) << name << ": dq differs from the fp32-input bf16 kernel";
    EXPECT_EQ(dk_bits, dk_mma) << name << ": dk differs from the fp32-input bf16 kernel";
    EXPECT_EQ(dv_bits, dv_mma) << name << ": dv differs from the fp32-input bf16 kernel";
  }
  // Nothing written outside the operands: the pad columns of o and of separate gradient buffers stay NaN.
  if (c.pad > 0) {
    bool clean = true;
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = D; j < D + c.pad; ++j)
        clean = clean && std::isnan(o_all[size_t(i * os.ld + j)]) && std::isnan(g1.dq[size_t(i * ld_g + j)]) &&
                std::isnan(g1.dk[size_t(i * ld_g + j)]) && std::isnan(g1.dv[size_t(i * ld_g + j)]);
    EXPECT_TRUE(clean) << name << ": a kernel wrote into the padding columns";
  }
  // Bit-reproducible, and each gradient alone equals the one computed with the others.
  const Grads g2 = run_bwd(7);
  EXPECT_EQ(dq, dqs.gather(g2.dq)) << name << ": dq not bit-reproducible";
  EXPECT_EQ(dk, dks.gather(g2.dk)) << name << ": dk not bit-reproducible";
  EXPECT_EQ(dv, dvs.gather(g2.dv)) << name << ": dv not bit-reproducible";
  EXPECT_EQ(dq, dqs.gather(run_bwd(1).dq)) << name << ": dq alone differs";
  EXPECT_EQ(dk, dks.gather(run_bwd(2).dk)) << name << ": dk alone differs";
  EXPECT_EQ(dv, dvs.gather(run_bwd(4).dv)) << name << ": dv alone differs";
  ++worst.cases;
}

}  // namespace ttt::cuda_attention_test
#endif  // TTT_HAVE_CUDA
