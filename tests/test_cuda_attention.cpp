// The CUDA sliding-window attention (src/backend/cuda/attention.h) against its CPU reference nn::sliding_window_attention
// run in float64 on the autograd tape (backward through the tape with a random dO), one sequence at a time, on
// fresh random inputs. o, lse, dq, dk and dv must be within 1e-4 relative (max |gpu - ref| / max |ref| per output)
// of float64; lse is checked against a direct float64 log-sum-exp. Where the exact gradient is zero (window 1, or a
// single token: every row attends only to itself, so dS = P (dO.v - dO.o) = 0 and dq = dk = 0) a relative error
// means nothing; there the fp32 result, the rounding left over from that cancellation, is divided by the size of
// the cancelling terms instead (scale * max|dO| * max|v| * max|q, k|, norms per row and head). Device outputs are filled with NaN before
// every run, so an element no kernel writes shows as NaN (which never passes); columns of a wider leading
// dimension that belong to nothing must stay NaN (nothing writes outside its rows/heads). The backward must be
// bit-reproducible, and each gradient must come out bit-identical when asked for alone. The bf16 tensor-core kernels
// (swa_forward_bf16 / swa_backward_bf16) go through the same cases and checks with relative L2 error
// ||gpu - ref|| / ||ref|| <= 2e-2 per output instead (their worst max-abs relative error is printed, not checked; lse errors are taken relative to at least the
// typical score size, scale |q| |k| / sqrt(hd), since a one-token lse is a single, possibly cancelling, dot product). A 760m-shape test times
// forward and backward (CUDA events, median of 5) and spot-checks sampled rows against float64. On Hopper the
// bf16-operand forward with hd 64 is the wgmma kernel: checked against float64 on its own shapes, against the
// mma.sync forward (close, not bits) and timed beside it at the 760m shape; so is its wgmma backward (dk/dv, and dq),
// which must also be bit-reproducible. Every test skips,
// saying why, without CUDA in the build or a usable device.
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

using namespace ttt;

#ifndef TTT_HAVE_CUDA

TEST(CudaAttention, SkippedWithoutCuda) { GTEST_SKIP() << "built without the CUDA toolkit (TTT_HAVE_CUDA unset)"; }

#else

namespace {

constexpr double kTol = 1e-4;
constexpr double kTolBf16 = 2e-2;  // bf16 kernels: relative L2 error ||gpu - ref|| / ||ref|| per output
// The wgmma forward against the mma.sync one on the same bf16 operands (relative L2 of o, of lse): the same
// bf16 products with fp32 sums in another order differ by ~1e-6; a layout or masking error by O(1).
constexpr double kTolWgmmaVsMma = 1e-3;

// Five CUDA-event-timed runs of `enqueue` (after the caller's warm-up): their median, min and max in ms.
struct FiveRuns {
  double median, min, max;
};
FiveRuns time_five(const std::function<void()>& enqueue) {
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

std::vector<double> as_double(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

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
Bf16Twin bf16_twin(const float* src, int64_t ld, int64_t rows, int64_t cols) {
  Bf16Twin t;
  t.ld = (ld + 7) / 8 * 8;
  t.buf = cuda::DeviceBuffer(size_t(std::max<int64_t>(1, rows * t.ld)) * 2);
  if (rows > 0) cuda::mk::to_bf16(src, ld, t.buf.as<bf16>(), t.ld, rows, cols);
  return t;
}
// The bf16-input kernels behind the fp32 signature of Impl (the conversion is not part of what they time).
void fwd_bf16_inputs(const cuda::AttentionShape& s, const float* q, int64_t ldq, const float* k, int64_t ldk,
                     const float* v, int64_t ldv, float* o, int64_t ldo, float* lse, void* st) {
  const int64_t rows = s.S * s.N, D = s.heads * s.hd;
  const Bf16Twin tq = bf16_twin(q, ldq, rows, D), tk = bf16_twin(k, ldk, rows, D), tv = bf16_twin(v, ldv, rows, D);
  cuda::swa_forward_bf16(s, tq.p(), tq.ld, tk.p(), tk.ld, tv.p(), tv.ld, o, ldo, lse, st);
  cuda::stream_synchronize();
}
void bwd_bf16_inputs(const cuda::AttentionShape& s, const float* q, int64_t ldq, const float* k, int64_t ldk,
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
void fwd_cudnn(const cuda::AttentionShape& s, const float* q, int64_t ldq, const float* k, int64_t ldk,
               const float* v, int64_t ldv, float* o, int64_t ldo, float* lse, void* st) {
  const int64_t rows = s.S * s.N, D = s.heads * s.hd;
  const Bf16Twin tq = bf16_twin(q, ldq, rows, D), tk = bf16_twin(k, ldk, rows, D), tv = bf16_twin(v, ldv, rows, D);
  std::string why;
  if (!cuda::swa_forward_cudnn(s, tq.p(), tq.ld, tk.p(), tk.ld, tv.p(), tv.ld, o, ldo, lse, st, &why))
    ADD_FAILURE() << "cuDNN declined the shape: " << why;
  cuda::stream_synchronize();
}

const Impl kFp32{false, &cuda::swa_forward, &cuda::swa_backward};
const Impl kBf16{true, &cuda::swa_forward_bf16, &cuda::swa_backward_bf16};
// bf16 kernels fed bf16 operands (cp.async tiles); must give the bits of kBf16 for the same rounded values.
const Impl kBf16Inputs{true, &fwd_bf16_inputs, &bwd_bf16_inputs, true};
// cuDNN's forward (o rounded to bf16 by cuDNN, then widened), our bf16 backward fed its o and lse: the bf16 error
// bounds against float64 for all five outputs (the backward's check is also one of lse's convention).
const Impl kCudnn{true, &fwd_cudnn, &cuda::swa_backward_bf16, false, "cudnn"};

std::vector<float> normal(Rng& r, size_t n, double s) {
  std::vector<float> x(n);
  for (auto& e : x) e = float(r.normal() * s);
  return x;
}

// max |a - ref| / max |ref|; infinite when a holds a NaN or an Inf. A reference that is zero up to float64
// rounding (max |ref| <= 1e-9 * zero_scale) gives max |a - ref| / zero_scale instead.
double rel_max(const std::vector<float>& a, const std::vector<double>& ref, double zero_scale = 1.0) {
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
double rel_l2(const std::vector<float>& a, const std::vector<double>& ref, double zero_scale = 1.0,
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
double wgmma_vs_mma(const std::vector<float>& a, const std::vector<float>& b, const std::vector<double>& exact,
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

cuda::DeviceBuffer up(const std::vector<float>& v) {
  cuda::DeviceBuffer b(std::max<size_t>(1, v.size() * sizeof(float)));
  if (!v.empty()) b.upload(v.data(), v.size() * sizeof(float));
  return b;
}
cuda::DeviceBuffer nan_buf(size_t floats) {
  cuda::DeviceBuffer b(std::max<size_t>(1, floats * sizeof(float)));
  b.fill_nan();
  return b;
}
std::vector<float> down(const cuda::DeviceBuffer& b, size_t floats) {
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
std::vector<double> lse_ref(const ag::Mat<double>& q, const ag::Mat<double>& k, int64_t heads, int64_t window) {
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
double max_head_norm(const Strided& s, const std::vector<float>& buf, int64_t heads) {
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

void attention_case(const Impl& impl, Worst& worst, const Case& c) {
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

}  // namespace

const std::vector<Case>& cases() {
  static const std::vector<Case> all{
      {1, 100, 2, 32, 64, false, 0},    // N not a multiple of the 64-row tile
      {2, 256, 4, 32, 64, true, 0},     // the tiny preset's attention, fused qkv, two sequences
      {1, 130, 3, 64, 200, false, 0},   // window > N: full causal
      {2, 77, 2, 48, 1, false, 3},      // window 1, odd head width, ld not a multiple of 4
      {1, 300, 2, 64, 100, false, 1},   // window not a multiple of the tile
      {2, 150, 3, 64, 40, true, 0},     // fused, window < tile
      {1, 700, 2, 64, 300, false, 0},   // many key tiles per query tile
      {1, 65, 1, 128, 64, false, 4},    // widest head
      {3, 33, 2, 7, 2048, false, 0},    // tiny odd head width, window >> N
      {1, 1, 1, 16, 5, false, 0},       // a single token
      {2, 129, 5, 96, 65, true, 0}};    // hd between 64 and 128
  return all;
}

TEST(CudaAttention, MatchesCpu) {
  REQUIRE_CUDA();
  Worst worst;
  for (const Case& c : cases()) attention_case(kFp32, worst, c);
}

// The bf16 tensor-core kernels on the same cases: relative L2 error <= 2e-2 per output, the same NaN poisoning,
// padding, reproducibility and gradient-alone checks.
TEST(CudaAttention, Bf16MatchesCpu) {
  REQUIRE_CUDA();
  Worst worst;
  worst.kind = "relative L2 error (bf16)";
  for (const Case& c : cases()) attention_case(kBf16, worst, c);
}

// The bf16 kernels fed bf16 operands, on every case whose head width is a multiple of 8 (the others are refused,
// below): the bf16 error bounds, and the bits of the fp32-input bf16 kernels.
TEST(CudaAttention, Bf16InputsMatchCpuAndFp32Inputs) {
  REQUIRE_CUDA();
  Worst worst;
  worst.kind = "relative L2 error (bf16 inputs)";
  int run = 0;
  for (const Case& c : cases())
    if (c.hd % 8 == 0) attention_case(kBf16Inputs, worst, c), ++run;
  EXPECT_GE(run, 8) << "too few cases with hd % 8 == 0";
}

// Shapes for the Hopper wgmma forward (bf16 operands, hd 64; 128 query rows and 128 keys per tile): sequence
// lengths that are not multiples of the tile, windows 1, 37, 512 and >= N, 1..4 heads, fused qkv views (ld 3D)
// and padded leading dimensions.
const std::vector<Case>& wgmma_cases() {
  static const std::vector<Case> all{
      {1, 1000, 2, 64, 512, true, 0},  // several key tiles, fused, N % 128 != 0
      {2, 333, 3, 64, 37, false, 8},   // window inside one tile, two sequences, padded rows
      {1, 200, 1, 64, 1, false, 0},    // window 1: each row only itself
      {2, 190, 4, 64, 4096, true, 0},  // window >= N: full causal
      {1, 129, 4, 64, 128, false, 16}, // one row past the tile, window = the tile
      {1, 700, 2, 64, 300, true, 0},   // window edge crossing tiles
      {1, 1, 1, 64, 5, false, 0}};     // a single token
  return all;
}

// Every wgmma shape through every check of the bf16-input kernels, once per variant: `Setting(v)` selects variant
// v for its scope, `uses(shape)` says which variant a call of that shape runs (skipped where none runs here).
template <class Setting, class Uses>
void wgmma_variants(std::initializer_list<int> variants, Uses uses, const std::string& what) {
  for (const int v : variants) {
    const Setting setting(v);
    if (uses(cuda::AttentionShape{1, 128, 1, 64, 128}) != v)
      GTEST_SKIP() << "the wgmma " << what << " does not run here (needs an sm_90a build and a cc 9.0 device)";
    Worst worst;
    worst.kind = "relative L2 error (bf16 inputs, wgmma " + what + " " + std::to_string(v) + ")";
    for (const Case& c : wgmma_cases()) {
      ASSERT_EQ(uses(cuda::AttentionShape{c.S, c.N, c.heads, c.hd, c.window}), v) << c.name();
      attention_case(kBf16Inputs, worst, c);
    }
  }
}

// The wgmma forward (where it runs: an sm_90a build on a cc 9.0 device), with 2 and with 3 warpgroups per block,
// on those shapes through every check of the bf16-input kernels: o and lse against float64, the backward fed by
// its o and lse against float64, closeness to the mma.sync forward, padding untouched.
TEST(CudaAttention, Bf16InputsWgmmaForwardMatchesCpu) {
  REQUIRE_CUDA();
  wgmma_variants<WgmmaSetting>({2, 3}, cuda::swa_forward_bf16_uses_wgmma, "forward x");
}

// The wgmma backward (where it runs: an sm_90a build on a cc 9.0 device), dk/dv only (mode 1, dq by the mma.sync
// kernel), dk/dv and dq (mode 2) and those with register A operands (modes 3, 4; 5, 6 with the pipelined dk/dv
// kernel), on the wgmma shapes through every check of the bf16-input kernels: dq, dk, dv against float64, against
// the mma.sync backward (relative L2 <= kTolWgmmaVsMma), bit-reproducible, each gradient alone equal to the one
// computed with the others, padding untouched.
TEST(CudaAttention, Bf16InputsWgmmaBackwardMatchesCpu) {
  REQUIRE_CUDA();
  wgmma_variants<WgmmaBwdSetting>({1, 2, 3, 4, 5, 6}, cuda::swa_backward_bf16_uses_wgmma, "backward mode");
}

// While alive, swa_forward_bf16 tries cuDNN (1) or never does (0); then the setting it replaced.
using CudnnSetting = ScopedWgmma<cuda::swa_forward_bf16_set_cudnn>;

// Why cuDNN's attention cannot run here ("" where it can): not built in, libcudnn.so.9 not loadable, or no engine
// for a small hd-64 banded shape.
std::string cudnn_missing() {
  std::string why;
  if (cuda::cudnn_runtime_version(&why) == 0) return why;
  const cuda::AttentionShape s{1, 128, 1, 64, 37};
  cuda::DeviceBuffer qkv32(size_t(s.N * 3 * s.hd) * 4), o = nan_buf(size_t(s.N * s.hd)), lse = nan_buf(size_t(s.N));
  qkv32.fill_random<float>(s.N * 3 * s.hd, fresh_seed(), 0, 1.0, true);
  const Bf16Twin qkv = bf16_twin(qkv32.as<float>(), 3 * s.hd, s.N, 3 * s.hd);
  const bf16* q = qkv.p();
  if (!cuda::swa_forward_cudnn(s, q, 3 * s.hd, q + s.hd, 3 * s.hd, q + 2 * s.hd, 3 * s.hd, o.as<float>(), s.hd,
                               lse.as<float>(), nullptr, &why))
    return why;
  cuda::stream_synchronize();
  return "";
}

// Skips the test where cuDNN's attention cannot run, saying why; fails instead where TTT_REQUIRE_CUDNN=1 is set
// (the H200 runs, where it must).
#define REQUIRE_CUDNN()                                                                     \
  do {                                                                                      \
    const std::string why_ = cudnn_missing();                                               \
    if (!why_.empty()) {                                                                    \
      const char* req_ = std::getenv("TTT_REQUIRE_CUDNN");                                  \
      if (req_ && std::string(req_) == "1") FAIL() << "TTT_REQUIRE_CUDNN=1: " << why_;      \
      GTEST_SKIP() << "cuDNN attention unavailable: " << why_;                              \
    }                                                                                       \
  } while (0)

// cuDNN's fused attention forward on the wgmma shapes (hd 64; windows 1, 37, 128, 300, 512 and >= N; N not a
// multiple of any tile; fused qkv views and padded leading dimensions; a single token) through every check of
// attention_case: o and lse against float64 (relative L2 <= kTolBf16, as the wgmma forward), our backward fed its
// o and lse against float64, o's padding columns untouched. Then swa_forward_bf16 with cuDNN switched on gives the
// direct call's bits (the switch reaches it), and the direct call is bit-reproducible.
TEST(CudaAttention, CudnnForwardMatchesCpu) {
  REQUIRE_CUDA();
  REQUIRE_CUDNN();
  std::printf("[attention cudnn] cuDNN runtime version %d\n", cuda::cudnn_runtime_version());
  {
    Worst worst;
    worst.kind = "relative L2 error (cuDNN forward)";
    for (const Case& c : wgmma_cases())  // one query with a causal mask: cuDNN 9.9 and older decline (fallback)
      if (c.N > 1 || cuda::cudnn_runtime_version() > 90900) attention_case(kCudnn, worst, c);
  }
  const cuda::AttentionShape s{2, 333, 3, 64, 37};
  const int64_t D = s.heads * s.hd, rows = s.S * s.N, ld = 3 * D;
  cuda::DeviceBuffer qkv(size_t(rows * ld) * 4);
  qkv.fill_random<float>(rows * ld, fresh_seed(), 0, 1.0, true);
  const Bf16Twin t = bf16_twin(qkv.as<float>(), ld, rows, ld);
  const auto run = [&](bool direct) {
    cuda::DeviceBuffer o = nan_buf(size_t(rows * D)), lse = nan_buf(size_t(rows * s.heads));
    if (direct) {
      EXPECT_TRUE(cuda::swa_forward_cudnn(s, t.p(), t.ld, t.p() + D, t.ld, t.p() + 2 * D, t.ld, o.as<float>(), D,
                                          lse.as<float>(), nullptr));
    } else {
      const CudnnSetting on(1);
      EXPECT_TRUE(cuda::swa_forward_bf16_uses_cudnn_setting());
      cuda::swa_forward_bf16(s, t.p(), t.ld, t.p() + D, t.ld, t.p() + 2 * D, t.ld, o.as<float>(), D, lse.as<float>(),
                             nullptr);
    }
    std::vector<float> out = down(o, size_t(rows * D)), l = down(lse, size_t(rows * s.heads));
    out.insert(out.end(), l.begin(), l.end());
    return out;
  };
  const std::vector<float> first = run(true), again = run(true), switched = run(false);
  ASSERT_EQ(first.size(), switched.size());
  EXPECT_EQ(0, std::memcmp(first.data(), again.data(), first.size() * 4)) << "cuDNN forward not bit-reproducible";
  EXPECT_EQ(0, std::memcmp(first.data(), switched.data(), first.size() * 4))
      << "swa_forward_bf16 with cuDNN switched on differs from the direct cuDNN call";
  {
    const CudnnSetting off(0);
    EXPECT_FALSE(cuda::swa_forward_bf16_uses_cudnn_setting());
  }
}

TEST(CudaAttention, Bf16InputsRejectUnalignedOperands) {
  REQUIRE_CUDA();
  cuda::DeviceBuffer b(1 << 16);
  const bf16* p = b.as<bf16>();
  float* f = b.as<float>();
  EXPECT_THROW(cuda::swa_forward_bf16({1, 8, 1, 12, 4}, p, 12, p, 12, p, 12, f, 12, f), Error);   // hd % 8
  EXPECT_THROW(cuda::swa_forward_bf16({1, 8, 1, 16, 4}, p, 20, p, 16, p, 16, f, 16, f), Error);   // ld % 8
  EXPECT_THROW(cuda::swa_forward_bf16({1, 8, 1, 16, 4}, p + 1, 16, p, 16, p, 16, f, 16, f), Error);  // alignment
  EXPECT_THROW(cuda::swa_backward_bf16({1, 8, 1, 16, 4}, p, 16, p, 16, p, 16, f, 16, f, f, 16, f, 16, f, 16, f, 16,
                                       nullptr),
               Error);  // no workspace
}

// Three backwards of impl on random inputs of shape s (fused qkv and gradients) per wgmma backward mode in `modes`
// (-1: the process's setting; the bf16-input kernels only): every run must give the first one's bits, run to run
// and from one mode to the next (modes that claim the same products summed in the same order).
void backward_bit_identical(const Impl& impl, const cuda::AttentionShape& s = {2, 1000, 3, 64, 333},
                            std::initializer_list<int> modes = {-1}) {
  const uint64_t seed = fresh_seed();
  Rng r(seed);
  const int64_t D = s.heads * s.hd, rows = s.S * s.N, ld = 3 * D;
  cuda::DeviceBuffer qkv = up(normal(r, size_t(rows * ld), 1.0)), dO = up(normal(r, size_t(rows * D), 1.0));
  cuda::DeviceBuffer o = nan_buf(size_t(rows * D)), lse = nan_buf(size_t(rows * s.heads));
  cuda::DeviceBuffer work = nan_buf(cuda::swa_backward_workspace(s) / 4);
  const float* q = qkv.as<float>();
  impl.fwd(s, q, ld, q + D, ld, q + 2 * D, ld, o.as<float>(), D, lse.as<float>(), nullptr);
  std::vector<float> first;
  for (const int mode : modes) {
    const WgmmaBwdSetting setting(mode);
    for (int run = 0; run < 3; ++run) {
      cuda::DeviceBuffer g = nan_buf(size_t(rows * ld));
      float* gp = g.as<float>();
      impl.bwd(s, q, ld, q + D, ld, q + 2 * D, ld, o.as<float>(), D, lse.as<float>(), dO.as<float>(), D, gp, ld,
               gp + D, ld, gp + 2 * D, ld, work.as<void>(), nullptr);
      const auto got = down(g, size_t(rows * ld));
      for (float x : got) ASSERT_TRUE(std::isfinite(x)) << impl.name() << " seed " << seed << ": unwritten or non-finite gradient";
      if (first.empty()) first = got;
      else EXPECT_EQ(0, std::memcmp(first.data(), got.data(), got.size() * 4))
          << impl.name() << " (S " << s.S << ", N " << s.N << ", heads " << s.heads << ", window " << s.window
          << ") wgmma backward mode " << mode << " run " << run << " differs from the first run (mode "
          << *modes.begin() << ")";
    }
  }
}

TEST(CudaAttention, BackwardBitIdentical) {
  REQUIRE_CUDA();
  backward_bit_identical(kFp32);
}

TEST(CudaAttention, Bf16BackwardBitIdentical) {
  REQUIRE_CUDA();
  backward_bit_identical(kBf16);
}

// The bf16-operand backward, with the wgmma dk/dv and dq kernels where they run (hd 64): three runs each of modes
// 2 to 6, the same bits.
TEST(CudaAttention, Bf16InputsBackwardBitIdentical) {
  REQUIRE_CUDA();
  backward_bit_identical(kBf16Inputs, {2, 1000, 3, 64, 333}, {2, 3, 4, 5, 6});
}

// The register-operand and pipelined wgmma backward (modes 3 to 6: K, V / Q, dO as register A fragments instead of
// shared-memory descriptors; the dk/dv kernel pipelined across query tiles) gives the bits of mode 2 on every wgmma
// shape (tile edges, windows 1..>= N, one token) and on one long enough for many tiles a block: the same bf16
// products, in the same order.
TEST(CudaAttention, Bf16InputsWgmmaBackwardRegisterOperandsSameBits) {
  REQUIRE_CUDA();
  {
    const WgmmaBwdSetting setting(6);
    if (cuda::swa_backward_bf16_uses_wgmma(cuda::AttentionShape{1, 128, 1, 64, 128}) != 6)
      GTEST_SKIP() << "the wgmma backward does not run here (needs an sm_90a build and a cc 9.0 device)";
  }
  for (const Case& c : wgmma_cases())
    backward_bit_identical(kBf16Inputs, cuda::AttentionShape{c.S, c.N, c.heads, c.hd, c.window}, {2, 3, 4, 5, 6});
  backward_bit_identical(kBf16Inputs, cuda::AttentionShape{1, 3000, 2, 64, 1000}, {2, 3, 4, 5, 6});
}

TEST(CudaAttention, RejectsBadInput) {
  // Shape checks come before anything touches the device, so this runs without a GPU too.
  float dummy = 0;
  float* p = &dummy;
  const auto fwd = [&](cuda::AttentionShape s, int64_t ld) {
    cuda::swa_forward(s, p, ld, p, ld, p, ld, p, ld, p);
  };
  const auto bwd = [&](cuda::AttentionShape s, int64_t ld) {
    cuda::swa_backward(s, p, ld, p, ld, p, ld, p, ld, p, p, ld, p, ld, p, ld, p, ld, p);
  };
  EXPECT_THROW(fwd({1, 8, 1, 129, 4}, 129), Error);   // hd > 128
  EXPECT_THROW(bwd({1, 8, 1, 256, 4}, 256), Error);
  EXPECT_THROW(fwd({1, 8, 2, 32, 0}, 64), Error);     // window < 1
  EXPECT_THROW(bwd({1, 8, 2, 32, -3}, 64), Error);
  EXPECT_THROW(fwd({1, 8, 2, 32, 4}, 63), Error);     // ld < heads * hd
  EXPECT_THROW(fwd({1, 8, 0, 32, 4}, 64), Error);     // no heads
  EXPECT_THROW(bwd({1, 8, 2, 0, 4}, 64), Error);      // hd 0
  EXPECT_THROW(cuda::swa_forward({1, 8, 1, 32, 4}, nullptr, 32, p, 32, p, 32, p, 32, p), Error);
  EXPECT_THROW(cuda::swa_forward_bf16({1, 8, 1, 129, 4}, p, 129, p, 129, p, 129, p, 129, p), Error);
  EXPECT_THROW(cuda::swa_forward_bf16({1, 8, 2, 32, 0}, p, 64, p, 64, p, 64, p, 64, p), Error);
  EXPECT_THROW(cuda::swa_backward_bf16({1, 8, 2, 32, 4}, p, 63, p, 63, p, 63, p, 63, p, p, 63, p, 63, p, 63, p, 63,
                                       p),
               Error);
  EXPECT_THROW(cuda::swa_backward_bf16({1, 8, 1, 32, 4}, p, 32, p, 32, p, 32, p, 32, p, p, 32, p, 32, p, 32, p, 32,
                                       nullptr),
               Error);
  EXPECT_THROW(cuda::swa_backward({1, 8, 1, 32, 4}, p, 32, p, 32, p, 32, p, 32, p, p, 32, p, 32, p, 32, p, 32,
                                  nullptr),
               Error);  // no workspace
}

// The 760m preset's attention (one sequence of 32768 tokens, 24 heads of 64, window 2048) on a fused qkv buffer:
// median time of 5 forward and 5 backward runs, and float64 spot checks of o, lse and dq on sampled rows and of
// dk, dv on two keys.
// fp32 timings of the last shape760m(kFp32) run, printed beside the bf16 ones.
double g_fp32_fwd_ms = 0, g_fp32_bwd_ms = 0, g_bf16_fwd_ms = 0, g_bf16_bwd_ms = 0;

void shape760m(const Impl& impl) {
  Inputs760m in;
  const cuda::AttentionShape& s = in.s;
  const int64_t D = in.D, rows = in.rows, ld = in.ld;
  const uint64_t seed = in.seed;
  cuda::DeviceBuffer &qkv = in.qkv, &dO = in.dO;
  cuda::DeviceBuffer o = nan_buf(size_t(rows * D)), lse = nan_buf(size_t(rows * s.heads)),
                     g = nan_buf(size_t(rows * ld)), work = nan_buf(cuda::swa_backward_workspace(s) / 4);
  const float* q = qkv.as<float>();
  float* gp = g.as<float>();
  // bf16 inputs: converted once, outside the timed calls (the model's RoPE writes them).
  Bf16Twin qkv16;
  cuda::DeviceBuffer work16;
  if (impl.bf16_inputs) {
    qkv16 = bf16_twin(q, ld, rows, ld);
    work16 = cuda::DeviceBuffer(cuda::swa_backward_bf16_workspace(s));
  }
  const bf16* q16 = qkv16.p();
  const auto fwd = [&] {
    if (impl.bf16_inputs)
      cuda::swa_forward_bf16(s, q16, ld, q16 + D, ld, q16 + 2 * D, ld, o.as<float>(), D, lse.as<float>(), nullptr);
    else
      impl.fwd(s, q, ld, q + D, ld, q + 2 * D, ld, o.as<float>(), D, lse.as<float>(), nullptr);
  };
  const auto bwd = [&] {
    if (impl.bf16_inputs)
      cuda::swa_backward_bf16(s, q16, ld, q16 + D, ld, q16 + 2 * D, ld, o.as<float>(), D, lse.as<float>(),
                              dO.as<float>(), D, gp, ld, gp + D, ld, gp + 2 * D, ld, work16.as<void>(), nullptr);
    else
      impl.bwd(s, q, ld, q + D, ld, q + 2 * D, ld, o.as<float>(), D, lse.as<float>(), dO.as<float>(), D, gp, ld,
               gp + D, ld, gp + 2 * D, ld, work.as<void>(), nullptr);
  };
  fwd();
  bwd();
  const FiveRuns tf = time_five(fwd), tb = time_five(bwd);
  std::printf("[attention 760m %s] S1 N32768 H24 hd64 W2048 on %s: forward %.2f ms, backward %.2f ms (median of "
              "5; forward min %.2f max %.2f, backward min %.2f max %.2f)\n",
              impl.name(), cuda::device_description().c_str(), tf.median, tb.median, tf.min, tf.max, tb.min, tb.max);
  if (impl.bf16_inputs) {
    if (g_bf16_fwd_ms > 0)
      std::printf("[attention 760m] bf16 inputs vs fp32 inputs (bf16 kernels): forward %.2f vs %.2f ms (x%.2f), "
                  "backward %.2f vs %.2f ms (x%.2f)\n",
                  tf.median, g_bf16_fwd_ms, g_bf16_fwd_ms / tf.median, tb.median, g_bf16_bwd_ms, g_bf16_bwd_ms / tb.median);
  } else if (impl.bf16) {
    g_bf16_fwd_ms = tf.median, g_bf16_bwd_ms = tb.median;
    if (g_fp32_fwd_ms > 0)
      std::printf("[attention 760m] bf16 vs fp32: forward %.2f vs %.2f ms (x%.2f), backward %.2f vs %.2f ms (x%.2f)\n",
                  tf.median, g_fp32_fwd_ms, g_fp32_fwd_ms / tf.median, tb.median, g_fp32_bwd_ms, g_fp32_bwd_ms / tb.median);
  } else {
    g_fp32_fwd_ms = tf.median, g_fp32_bwd_ms = tb.median;
  }

  // Spot checks in float64.
  const auto X = down(qkv, size_t(rows * ld)), dOh = down(dO, size_t(rows * D)), Oh = down(o, size_t(rows * D)),
             Lh = down(lse, size_t(rows * s.heads)), G = down(g, size_t(rows * ld));
  const double scale = 1.0 / std::sqrt(double(s.hd));
  const auto at = [&](int64_t row, int64_t part, int64_t h, int64_t c) {
    return double(X[size_t(row * ld + part * D + h * s.hd + c)]);
  };
  // Row i, head h: probabilities over its window, o, lse, delta.
  struct RowRef {
    int64_t j0;
    std::vector<double> p, o;
    double lse, delta;
  };
  const auto row_ref = [&](int64_t i, int64_t h) {
    RowRef rr;
    rr.j0 = std::max<int64_t>(0, i - s.window + 1);
    double mx = -INFINITY;
    for (int64_t j = rr.j0; j <= i; ++j) {
      double d = 0;
      for (int64_t c = 0; c < s.hd; ++c) d += at(i, 0, h, c) * at(j, 1, h, c);
      rr.p.push_back(d * scale);
      mx = std::max(mx, d * scale);
    }
    double sum = 0;
    for (double& x : rr.p) sum += (x = std::exp(x - mx));
    for (double& x : rr.p) x /= sum;
    rr.lse = mx + std::log(sum);
    rr.o.assign(size_t(s.hd), 0.0);
    for (int64_t j = rr.j0; j <= i; ++j)
      for (int64_t c = 0; c < s.hd; ++c) rr.o[size_t(c)] += rr.p[size_t(j - rr.j0)] * at(j, 2, h, c);
    rr.delta = 0;
    for (int64_t c = 0; c < s.hd; ++c) rr.delta += rr.o[size_t(c)] * dOh[size_t(i * D + h * s.hd + c)];
    return rr;
  };
  const auto dp = [&](int64_t i, int64_t j, int64_t h) {
    double d = 0;
    for (int64_t c = 0; c < s.hd; ++c) d += dOh[size_t(i * D + h * s.hd + c)] * at(j, 2, h, c);
    return d;
  };
  std::vector<float> o_got, lse_got, dq_got, dk_got, dv_got;
  std::vector<double> o_want, lse_want, dq_want, dk_want, dv_want;
  Rng r(seed);
  for (int t = 0; t < 12; ++t) {
    const int64_t i = t == 0 ? 0 : t == 1 ? rows - 1 : int64_t(r.below(uint64_t(rows)));
    const int64_t h = int64_t(r.below(uint64_t(s.heads)));
    const RowRef rr = row_ref(i, h);
    lse_got.push_back(Lh[size_t(i * s.heads + h)]), lse_want.push_back(rr.lse);
    std::vector<double> dq(size_t(s.hd), 0.0);
    for (int64_t j = rr.j0; j <= i; ++j) {
      const double ds = rr.p[size_t(j - rr.j0)] * (dp(i, j, h) - rr.delta);
      for (int64_t c = 0; c < s.hd; ++c) dq[size_t(c)] += scale * ds * at(j, 1, h, c);
    }
    for (int64_t c = 0; c < s.hd; ++c) {
      o_got.push_back(Oh[size_t(i * D + h * s.hd + c)]), o_want.push_back(rr.o[size_t(c)]);
      dq_got.push_back(G[size_t(i * ld + h * s.hd + c)]), dq_want.push_back(dq[size_t(c)]);
    }
  }
  for (const int64_t j : {int64_t(5), rows - 3000}) {
    const int64_t h = int64_t(r.below(uint64_t(s.heads)));
    std::vector<double> dk(size_t(s.hd), 0.0), dv(size_t(s.hd), 0.0);
    for (int64_t i = j; i < std::min(rows, j + s.window); ++i) {
      const RowRef rr = row_ref(i, h);
      const double p = rr.p[size_t(j - rr.j0)], ds = p * (dp(i, j, h) - rr.delta);
      for (int64_t c = 0; c < s.hd; ++c) {
        dv[size_t(c)] += p * dOh[size_t(i * D + h * s.hd + c)];
        dk[size_t(c)] += scale * ds * at(i, 0, h, c);
      }
    }
    for (int64_t c = 0; c < s.hd; ++c) {
      dk_got.push_back(G[size_t(j * ld + D + h * s.hd + c)]), dk_want.push_back(dk[size_t(c)]);
      dv_got.push_back(G[size_t(j * ld + 2 * D + h * s.hd + c)]), dv_want.push_back(dv[size_t(c)]);
    }
  }
  Worst worst;
  if (impl.bf16) worst.kind = "relative L2 error (bf16)";
  const std::string tag = std::string("760m ") + impl.name();
  CHECK_IMPL(impl, worst, o_got, o_want, 1.0, tag + " o");
  CHECK_IMPL(impl, worst, lse_got, lse_want, 1.0, tag + " lse");
  CHECK_IMPL(impl, worst, dq_got, dq_want, 1.0, tag + " dq");
  CHECK_IMPL(impl, worst, dk_got, dk_want, 1.0, tag + " dk");
  CHECK_IMPL(impl, worst, dv_got, dv_want, 1.0, tag + " dv");
  worst.cases = 1;
  for (float x : G) ASSERT_TRUE(std::isfinite(x)) << "unwritten or non-finite gradient";
  for (float x : Oh) ASSERT_TRUE(std::isfinite(x)) << "unwritten or non-finite output";
}

// The bf16-input forwards at the 760m shape (fused bf16 qkv, 24 heads of 64, window 2048): the wgmma one with 2
// and with 3 warpgroups per block (where it runs) and the mma.sync one, median of 5 each, with TFLOP/s at the
// nominal 4 N W hd H flops; their o and lse agree (relative L2 <= kTolWgmmaVsMma). cuDNN's fused attention too,
// where it runs (relative L2 to the mma.sync kernel <= kTolBf16: its o is rounded to bf16). Asserts nothing on time.
TEST(CudaAttention, Bf16InputsWgmmaForward760mTiming) {
  REQUIRE_CUDA();
  Inputs760m in;
  const cuda::AttentionShape& s = in.s;
  const int64_t D = in.D, rows = in.rows, ld = in.ld;
  const cuda::DeviceBuffer& qkv = in.qkv;
  const Bf16Twin qkv16 = bf16_twin(qkv.as<float>(), ld, rows, ld);
  const bf16* q16 = qkv16.p();
  const double gflop = 4.0 * double(s.N) * double(s.window) * double(s.hd) * double(s.heads) * 1e-9;
  const auto run = [&](int warpgroups, std::vector<float>& o_out, std::vector<float>& lse_out) {
    const WgmmaSetting setting(warpgroups);
    cuda::DeviceBuffer o = nan_buf(size_t(rows * D)), lse = nan_buf(size_t(rows * s.heads));
    const auto fwd = [&] {
      cuda::swa_forward_bf16(s, q16, qkv16.ld, q16 + D, qkv16.ld, q16 + 2 * D, qkv16.ld, o.as<float>(), D,
                             lse.as<float>(), nullptr);
    };
    const int wgmma = cuda::swa_forward_bf16_uses_wgmma(s);
    fwd();
    const FiveRuns t = time_five(fwd);
    std::printf("[attention 760m forward] %s kernel: %.3f ms median of 5 (min %.3f, max %.3f), %.0f TFLOP/s\n",
                wgmma == 3 ? "wgmma x3" : wgmma == 2 ? "wgmma x2" : "mma.sync", t.median, t.min, t.max,
                gflop / t.median);
    o_out = down(o, size_t(rows * D)), lse_out = down(lse, size_t(rows * s.heads));
    return wgmma;
  };
  std::vector<float> o_old, lse_old;
  run(0, o_old, lse_old);
  const std::vector<double> o_ref = as_double(o_old), lse_ref = as_double(lse_old);
  // cuDNN's fused attention beside our kernels, where it runs (its o is bf16 widened to fp32 by a small kernel,
  // timed with it): time, TFLOP/s, and closeness to the mma.sync kernel (the bf16 bound: cuDNN rounds o to bf16).
  {
    cuda::DeviceBuffer o = nan_buf(size_t(rows * D)), lse = nan_buf(size_t(rows * s.heads));
    std::string why;
    bool ran = true;
    const auto fwd = [&] {
      ran = cuda::swa_forward_cudnn(s, q16, qkv16.ld, q16 + D, qkv16.ld, q16 + 2 * D, qkv16.ld, o.as<float>(), D,
                                    lse.as<float>(), nullptr, &why) &&
            ran;
    };
    fwd();
    if (ran) {
      const FiveRuns t = time_five(fwd);
      std::printf("[attention 760m forward] cuDNN %d: %.3f ms median of 5 (min %.3f, max %.3f), %.0f TFLOP/s\n",
                  cuda::cudnn_runtime_version(), t.median, t.min, t.max, gflop / t.median);
      const std::vector<float> o_cudnn = down(o, size_t(rows * D)), lse_cudnn = down(lse, size_t(rows * s.heads));
      const double e_o = rel_l2(o_cudnn, o_ref), e_lse = rel_l2(lse_cudnn, lse_ref);
      std::printf("[attention 760m forward] cuDNN vs mma.sync: relative L2 o %.2e, lse %.2e\n", e_o, e_lse);
      EXPECT_LE(e_o, kTolBf16) << "cuDNN o";
      EXPECT_LE(e_lse, kTolBf16) << "cuDNN lse";
    } else {
      std::printf("[attention 760m forward] cuDNN: not run (%s)\n", why.c_str());
    }
  }
  for (const int warpgroups : {2, 3}) {
    std::vector<float> o_new, lse_new;
    if (run(warpgroups, o_new, lse_new) != warpgroups)
      GTEST_SKIP() << "the wgmma forward does not run here: timed the mma.sync kernel only";
    for (float x : o_new) ASSERT_TRUE(std::isfinite(x)) << "unwritten or non-finite output";
    const double e_o = rel_l2(o_new, o_ref), e_lse = rel_l2(lse_new, lse_ref);
    std::printf("[attention 760m forward] wgmma x%d vs mma.sync: relative L2 o %.2e, lse %.2e\n", warpgroups, e_o,
                e_lse);
    EXPECT_LE(e_o, kTolWgmmaVsMma) << "wgmma x" << warpgroups;
    EXPECT_LE(e_lse, kTolWgmmaVsMma) << "wgmma x" << warpgroups;
  }
}

// The bf16-input backward at the 760m shape (fused bf16 qkv and gradients, 24 heads of 64, window 2048), fed the
// forward's o and lse: the mma.sync kernels, wgmma dk/dv with the mma.sync dq (mode 1), wgmma dk/dv and dq (mode
// 2), those with register A operands (3: dk/dv's, 4: both kernels') and with the pipelined dk/dv kernel (5, 6),
// median of 5 each (delta kernel included), with TFLOP/s at the nominal 2.5 x 4 N W hd H flops (five products per
// visible score); the wgmma gradients agree with the mma.sync ones (relative L2 <= kTolWgmmaVsMma), and modes 3 to
// 6 give mode 2's bits. Asserts nothing on time.
TEST(CudaAttention, Bf16InputsWgmmaBackward760mTiming) {
  REQUIRE_CUDA();
  Inputs760m in;
  const cuda::AttentionShape& s = in.s;
  const int64_t D = in.D, rows = in.rows, ld = in.ld;
  const cuda::DeviceBuffer &qkv = in.qkv, &dO = in.dO;
  const Bf16Twin qkv16 = bf16_twin(qkv.as<float>(), ld, rows, ld);
  const bf16* q16 = qkv16.p();
  cuda::DeviceBuffer o = nan_buf(size_t(rows * D)), lse = nan_buf(size_t(rows * s.heads));
  cuda::DeviceBuffer work(cuda::swa_backward_bf16_workspace(s));
  cuda::swa_forward_bf16(s, q16, qkv16.ld, q16 + D, qkv16.ld, q16 + 2 * D, qkv16.ld, o.as<float>(), D,
                         lse.as<float>(), nullptr);
  const double gflop = 2.5 * 4.0 * double(s.N) * double(s.window) * double(s.hd) * double(s.heads) * 1e-9;
  const auto run = [&](int mode, std::vector<float>& g_out) {
    const WgmmaBwdSetting setting(mode);
    cuda::DeviceBuffer g = nan_buf(size_t(rows * ld));
    float* gp = g.as<float>();
    const auto bwd = [&] {
      cuda::swa_backward_bf16(s, q16, qkv16.ld, q16 + D, qkv16.ld, q16 + 2 * D, qkv16.ld, o.as<float>(), D,
                              lse.as<float>(), dO.as<float>(), D, gp, ld, gp + D, ld, gp + 2 * D, ld,
                              work.as<void>(), nullptr);
    };
    const int used = cuda::swa_backward_bf16_uses_wgmma(s);
    bwd();
    const FiveRuns t = time_five(bwd);
    const char* mode_names[7] = {"mma.sync", "wgmma dk/dv + mma.sync dq", "wgmma dk/dv + wgmma dq",
                                 "wgmma dk/dv (K, V in registers) + wgmma dq",
                                 "wgmma dk/dv (K, V in registers) + wgmma dq (Q, dO in registers)",
                                 "pipelined wgmma dk/dv (K, V in registers) + wgmma dq",
                                 "pipelined wgmma dk/dv (K, V in registers) + wgmma dq (Q, dO in registers)"};
    std::printf("[attention 760m backward] mode %d, %s: %.3f ms median of 5 (min %.3f, max %.3f), %.0f TFLOP/s "
                "nominal\n",
                used, mode_names[used], t.median, t.min, t.max, gflop / t.median);
    g_out = down(g, size_t(rows * ld));
    return used;
  };
  std::vector<float> g_old;
  run(0, g_old);
  const Strided parts[3] = {{rows, ld, 0, D}, {rows, ld, D, D}, {rows, ld, 2 * D, D}};
  const char* names[3] = {"dq", "dk", "dv"};
  std::vector<float> g_mode2;
  for (const int mode : {1, 2, 3, 4, 5, 6}) {
    std::vector<float> g_new;
    if (run(mode, g_new) != mode) GTEST_SKIP() << "the wgmma backward does not run here: timed the mma.sync kernels";
    for (float x : g_new) ASSERT_TRUE(std::isfinite(x)) << "unwritten or non-finite gradient";
    for (int p = 0; p < 3; ++p) {
      const double e = rel_l2(parts[p].gather(g_new), as_double(parts[p].gather(g_old)));
      std::printf("[attention 760m backward] mode %d vs mma.sync: relative L2 %s %.2e\n", mode, names[p], e);
      EXPECT_LE(e, kTolWgmmaVsMma) << "mode " << mode << " " << names[p];
    }
    if (mode == 2) g_mode2 = g_new;
    if (mode > 2) {
      const bool same = std::memcmp(g_new.data(), g_mode2.data(), g_new.size() * 4) == 0;
      std::printf("[attention 760m backward] mode %d vs mode 2: %s\n", mode, same ? "bit-identical" : "bits differ");
      EXPECT_TRUE(same) << "mode " << mode << " (register operands) differs from mode 2";
    }
  }
}

TEST(CudaAttention, Shape760mTimingAndSpotCheck) {
  REQUIRE_CUDA();
  shape760m(kFp32);
}

// The bf16 kernels at the 760m shape, timed beside the fp32 ones (run just before when both are selected).
TEST(CudaAttention, Bf16Shape760mTimingAndSpotCheck) {
  REQUIRE_CUDA();
  shape760m(kBf16);
}

// The bf16 kernels on bf16 operands at the 760m shape (the model's path), timed beside the fp32-input ones.
TEST(CudaAttention, Bf16InputsShape760mTimingAndSpotCheck) {
  REQUIRE_CUDA();
  shape760m(kBf16Inputs);
}

#endif  // TTT_HAVE_CUDA
