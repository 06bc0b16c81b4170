// CUDA backend of the LaCT operator: CudaOps implements the backend contract of ttt/lact_fused.h with cuBLAS
// strided-batched GEMMs and the kernels below, so that lact::Fused<CudaOps<T>> runs on the GPU exactly the
// sequence of steps that the CPU twin (lact_fused.cpp) specifies. Per-element math is the shared TTT_HOST_DEVICE
// code of lact_fused.h and core/scalar_math.h. Reductions accumulate in double and are deterministic (fixed
// two-stage trees).
//
// Speed (docs/PERF.md, "GPU: fused bf16 operands and CUDA graphs"): in the bf16 mode every operand buffer has a bf16
// shadow kept up to date on the host's bookkeeping, so that no operand is converted twice and the kernels
// whose outputs only feed products write bf16 directly, and the products whose outputs only feed element-wise steps
// write bf16 ("GPU: bf16 product outputs"); forward() and backward() are replayed as CUDA graphs; the
// steps of a call run on several streams, each after the steps it depends on ("GPU: several streams, fewer
// passes"; lact_sched.cuh).
// Env: TTT_LACT_GRAPH=0 (no graphs), TTT_LACT_STREAMS=n (streams; 1: all on the runner's stream), TTT_LACT_KEEP=0
// (ttt op lact / bench op recompute rather than keep products: with_kept_products_if_room),
// TTT_LACT_PROFILE=1 (per-step CUDA-event profile on stderr), TTT_LACT_B16_OUTPUTS=0 (bf16 mode: fp32 outputs of the
// products that only element-wise steps read, LactOptions::bf16_outputs),
// TTT_LACT_CHECK_GRAPH=1 (bench_lact compares a graph replay with an eager run). Kernels: lact_kernels.cuh (and
// the backend's float -> bf16 conversion, layout_kernels.h); the optional profile: lact_profile.cuh; host-array
// entry point and bench: lact_host.cu.
#include "backend/cuda/lact_cuda.h"
#include "backend/cuda/check.cuh"
#include "backend/cuda/graph.cuh"
#include "backend/cuda/lact_kernels.cuh"
#include "backend/cuda/layout_kernels.h"
#include "backend/cuda/lact_profile.cuh"
#include "backend/cuda/lact_sched.cuh"

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>
#include <cstdint>
#include <cmath>
#include <sstream>
#include <type_traits>

namespace ttt::cuda {

namespace {

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

// Streams a runner's calls run on (lact_sched.cuh): LactOptions::streams, else TTT_LACT_STREAMS, else
// lact::kRunnerStreams (1: everything on the main stream).
int streams_of(const LactOptions& opt) {
  if (opt.streams > 0) return std::min(opt.streams, kMaxStreams);
  const char* e = std::getenv("TTT_LACT_STREAMS");
  if (!e || !*e) return lact::kRunnerStreams;
  return std::max(1, std::min(std::atoi(e), kMaxStreams));
}

template <class T>
class CudaOps {
 public:
  using value_type = T;
  CudaOps(const lact::Geom& g, const LactOptions& opt) : g_(g), opt_(opt) {
    TTT_CUDA_CHECK(cudaStreamCreate(&stream_));
    prof_ = std::make_unique<Prof>(stream_);
    // Several streams (lact_sched.cuh) unless profiling (the profile times each step alone on the main stream).
    sched_ = std::make_unique<Sched>();
    sched_->init(stream_, prof_->on() ? 1 : streams_of(opt_));
    TTT_CHECK(!(opt_.tf32 && opt_.bf16), "lact cuda: the tf32 and bf16 options exclude each other");
    TTT_CHECK(!opt_.bf16 || (std::is_same<T, float>::value), "lact cuda: bf16 matrix inputs need float data");
    if (std::is_same<T, double>::value) compute_ = CUBLAS_COMPUTE_64F;
    else compute_ = opt_.tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    bf16_ = opt_.bf16 && std::is_same<T, float>::value;
    narrow_ = bf16_ && bf16_outputs_of(opt_);
    ns5_half_ = std::is_same<T, float>::value && ns5_fp16_of(opt_);
    partial_ = static_cast<Acc*>(device_malloc(partial_bytes()));
    workspace_bytes_ += partial_bytes();
    // A cuBLAS handle per stream, each with a workspace of its own, so that the products can be captured into a
    // CUDA graph without cuBLAS allocating during the capture, and products on different streams never share a
    // workspace. The same size per handle on any number of streams: cuBLAS picks the same algorithms, the same bits.
    const size_t per = lact::kRunnerStreamWorkspace;
    cublas_ws_ = alloc_bytes(per * size_t(sched_->size()));
    handles_.assign(size_t(sched_->size()), nullptr);
    for (int i = 0; i < sched_->size(); ++i) {
      cublasHandle_t& h = handles_[size_t(i)];
      TTT_CUBLAS_CHECK(cublasCreate(&h));
      TTT_CUBLAS_CHECK(cublasSetStream(h, sched_->stream(i)));
      TTT_CUBLAS_CHECK(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_HOST));
      TTT_CUBLAS_CHECK(cublasSetWorkspace(h, static_cast<char*>(cublas_ws_) + size_t(i) * per, per));
    }
  }
  ~CudaOps() {
    if (stream_) cudaStreamSynchronize(stream_);
    prof_.reset();
    for (auto& [p, bytes] : allocs_) device_free(p, bytes);
    for (auto& [p, bytes] : keys_) munmap(p, bytes);
    device_free(partial_, partial_bytes());
    for (cublasHandle_t h : handles_)
      if (h) cublasDestroy(h);
    sched_.reset();  // its streams and events, before the main stream
    if (stream_) cudaStreamDestroy(stream_);
  }
  CudaOps(const CudaOps&) = delete;
  CudaOps& operator=(const CudaOps&) = delete;

  lact::Geom geom() const { return g_; }
  Prof& prof() { return *prof_; }
  cudaStream_t stream() const { return stream_; }
  size_t workspace_bytes() const { return workspace_bytes_; }

  // Buffer::ProductOutput: never a product operand, so no bf16 shadow (init_bf16); with bf16 product outputs
  // (narrow_) stored in bf16 alone, behind a key (see Region::narrow).
  T* alloc(int64_t n, lact::Buffer kind = lact::Buffer::Operand) {
    n = std::max<int64_t>(n, 1);
    if (kind == lact::Buffer::Ns5) {
      if (ns5_half_) {  // fp16 alone, behind a key (as a narrow region)
        Ns5Region r{reserve_key(n), n, static_cast<__half*>(alloc_bytes(sizeof(__half) * size_t(n)))};
        ns5_.push_back(r);
        return r.key;
      }
      kind = lact::Buffer::Operand;
    }
    if (narrow_ && kind == lact::Buffer::ProductOutput) {
      Region r{reserve_key(n), n, false};
      r.sh = static_cast<__nv_bfloat16*>(alloc_bytes(sizeof(__nv_bfloat16) * size_t(n)));
      r.narrow = true;
      regions_.push_back(r);
      return r.base;
    }
    T* p = static_cast<T*>(alloc_bytes(sizeof(T) * size_t(n)));
    if (bf16_) regions_.push_back(Region{p, n, kind == lact::Buffer::Operand});
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
  //  * the [B,T,d] inputs q, k, v, grad_o: mirrors, converted once per forward / backward (q, k, v: one set per
  //    forward record, kept until its backward);
  //  * every buffer the algorithm allocates (states, chunk buffers, NS5 iterates) has a shadow of the same
  //    layout, with the intervals where it holds bf16(the fp32 value) tracked on the host. Every step of
  //    this backend that writes fp32 invalidates what it writes; a product converts only what is not valid
  //    yet (so a state or an update is converted once, however many products read it);
  //  * the kernels whose outputs feed nothing but matrix products (a, lr1 a, R, [R | dGH], [lr1 a | dU], DW) write
  //    the bf16 shadow alone: their fp32 buffers are then "stale", and a step that would read a stale fp32 value throws
  //    (a bookkeeping check on the host: it never happens with the algorithm of lact_fused.h);
  //  * the step (and the pre-norm weight norm) write the new state in fp32 and its shadow together;
  //  * with bf16 product outputs (narrow_, LactOptions::bf16_outputs) every lact::Buffer::ProductOutput is bf16
  //    storage alone (Region::narrow): the products write it as a bf16 C, the element-wise steps read it.
  bool bf16() const { return bf16_; }
  // records: forwards kept at once (lact::Fused's records), each with its own q, k, v mirrors.
  void init_bf16(int64_t chunk, bool with_grad, int64_t records) {
    if (!bf16_) return;
    (void)chunk;
    const int64_t BTD = g_.B * g_.T * g_.d;
    mirrors_.assign(size_t(3 * records + 1), Mirror{});
    for (size_t i = 0; i < mirrors_.size(); ++i) {
      if (i + 1 == mirrors_.size() && !with_grad) break;  // grad_o's: backward only
      mirrors_[i].copy = static_cast<__nv_bfloat16*>(alloc_bytes(sizeof(__nv_bfloat16) * size_t(BTD)));
      mirrors_[i].n = BTD;
    }
    // Shadows of every buffer the algorithm allocated (it allocates all of them in its constructor).
    for (Region& r : regions_)
      if (r.operand) r.sh = static_cast<__nv_bfloat16*>(alloc_bytes(sizeof(__nv_bfloat16) * size_t(r.n)));
  }
  // The host-side bookkeeping of the shadows (what a CUDA graph replay must leave behind as its capture did).
  struct Book {
    std::vector<std::pair<Ivals, Ivals>> regions;
    std::vector<const T*> mirror_base;
  };
  Book snapshot() const {
    Book b;
    for (const Region& r : regions_) b.regions.push_back({r.valid, r.stale});
    for (const Mirror& m : mirrors_) b.mirror_base.push_back(m.base);
    return b;
  }
  void restore(const Book& b) {
    if (b.regions.size() != regions_.size() || b.mirror_base.size() != mirrors_.size()) return;
    for (size_t i = 0; i < regions_.size(); ++i) regions_[i].valid = b.regions[i].first, regions_[i].stale = b.regions[i].second;
    for (size_t i = 0; i < mirrors_.size(); ++i) mirrors_[i].base = b.mirror_base[i];
  }
  // The forward record whose q, k, v mirrors set_mirror and the products use from now on.
  void use_record(int64_t r) { record_ = r; }
  // Mirror i (0 q, 1 k, 2 v of the current record, 3 grad_o) := bf16(base[0 .. B*T*d)).
  void set_mirror(int i, const T* base) {
    if (!bf16_) return;
    Mirror& m = mirrors_[mirror_index(i)];
    TTT_CHECK(m.copy, "lact cuda: bf16 mirror " << i << " not allocated");
    to_bf16(reinterpret_cast<const float*>(base), m.copy, m.n);
    m.base = base;
  }

  // ---- the scheduler (lact_sched.cuh): each step below names the memory it reads and writes ---------------
  using Use = Sched::Use;
  // `count` blocks of `len` elements, `stride` elements apart (one block: a plain range).
  template <class E>
  static Use span_of(const E* p, int64_t len, int64_t stride, int64_t count, bool w) {
    if (!p || len <= 0 || count <= 0) return Use{};
    if (count == 1) stride = len;
    return Use{Span{reinterpret_cast<uintptr_t>(p), len * int64_t(sizeof(E)), stride * int64_t(sizeof(E)), count}, w};
  }
  template <class E>
  static Use rd(const E* p, int64_t n) { return span_of(p, n, n, 1, false); }
  template <class E>
  static Use wr(const E* p, int64_t n) { return span_of(p, n, n, 1, true); }
  // Rows [c0, c0+n) of every head of a [B, T, cols] tensor.
  template <class E>
  Use rows_span(const E* p, int64_t cols, int64_t c0, int64_t n, bool w) const {
    return span_of(p ? p + c0 * cols : p, n * cols, g_.T * cols, g_.B, w);
  }
  // One step: it runs on the stream the scheduler picks (after the steps it depends on); its completion is
  // recorded when the scope ends.
  class Step {
   public:
    Step(CudaOps& o, std::initializer_list<Use> uses) : o_(o) {
      si_ = o_.sched_->begin_op(uses.begin(), int(uses.size()));
      st = o_.sched_->stream(si_);
    }
    ~Step() { o_.sched_->end_op(); }
    Step(const Step&) = delete;
    Step& operator=(const Step&) = delete;
    cublasHandle_t handle() const { return o_.handles_[size_t(si_)]; }
    cudaStream_t st;

   private:
    CudaOps& o_;
    int si_ = 0;
  };
  // The kernels' 4-wide paths (lact_kernels.cuh): float data, d and dh multiples of 4, every row pointer aligned to
  // 4 elements.
  template <class... P>
  bool v4_ok(const P*... ps) const {
    if (!std::is_same<T, float>::value || g_.d % 4 != 0 || g_.dh % 4 != 0) return false;
    return (... && (!ps || reinterpret_cast<uintptr_t>(ps) % (4 * sizeof(P)) == 0));
  }
  // A call (forward or backward) forks from the main stream and joins back into it.
  void begin_call() { sched_->begin_call(); }
  void end_call() { sched_->end_call(); }

  // Row-major C = alpha op(A) op(B) + beta C is column-major C^T = alpha op(B)^T op(A)^T + beta C^T.
  void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t lda, int64_t sA,
            const T* B, int64_t ldb, int64_t sB, T beta, T* C, int64_t ldc, int64_t sC, int64_t batch) {
    // Each operand: `batch` blocks (strides sA, sB, sC), each one stored matrix ([rows, cols] with its leading dim).
    const int64_t ra = ta ? k : m, ca = ta ? m : k, rb = tb ? n : k, cb = tb ? k : n;
    const int64_t la = (ra - 1) * lda + ca, lb = (rb - 1) * ldb + cb, lc = (m - 1) * ldc + n;
    const int64_t ea = (batch - 1) * sA + la, eb = (batch - 1) * sB + lb, ec = (batch - 1) * sC + lc;
    if (const __half* a16 = ns5_at(A, ea)) {
      // An NS5 product: fp16 operands (and C, except for X_5, the update, in fp32), fp32 accumulation.
      const __half* b16 = ns5_at(B, eb);
      TTT_CHECK(b16, "lact cuda: an NS5 product with an operand outside NS5's fp16 buffers");
      __half* c16 = ns5_at(C, ec);
      const float fa = float(alpha), fb = float(beta);
      Step op(*this, {span_of(a16, la, sA, batch, false), span_of(b16, lb, sB, batch, false),
                      c16 ? span_of(c16, lc, sC, batch, true) : span_of(C, lc, sC, batch, true)});
      auto ps_ = prof_->on() ? prof_->scope_str(gemm_name(ta, tb, m, n, k, batch) + " fp16") : Prof::Scope{};
      TTT_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
          op.handle(), tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, int(n), int(m), int(k), &fa,
          b16, CUDA_R_16F, int(ldb), (long long)sB, a16, CUDA_R_16F, int(lda), (long long)sA, &fb,
          c16 ? static_cast<void*>(c16) : static_cast<void*>(C), c16 ? CUDA_R_16F : CUDA_R_32F, int(ldc),
          (long long)sC, int(batch), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      return;
    }
    if (bf16_) {
      const __nv_bfloat16* a16 = operand_bf16(A, ea);
      const __nv_bfloat16* b16 = (B == A && eb == ea) ? a16 : operand_bf16(B, eb);
      // A product output kept in bf16 (narrow_): cuBLAS rounds the fp32 sums once into the bf16 C.
      __nv_bfloat16* c16 = product_output_bf16(C, ec);
      if (c16) {
        TTT_CHECK(beta == T(0), "lact cuda bf16: a bf16 product output accumulated into (beta " << beta << ")");
      } else {
        if (beta != T(0)) reads(C, ec);
        wrote(C, ec);
      }
      const float fa = float(alpha), fb = float(beta);
      Step op(*this, {span_of(a16, la, sA, batch, false), span_of(b16, lb, sB, batch, false),
                      c16 ? span_of(c16, lc, sC, batch, true) : span_of(C, lc, sC, batch, true)});
      auto ps_ = prof_->on() ? prof_->scope_str(gemm_name(ta, tb, m, n, k, batch) + (c16 ? " bf16 out" : ""))
                             : Prof::Scope{};
      TTT_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
          op.handle(), tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, int(n), int(m), int(k), &fa,
          b16, CUDA_R_16BF, int(ldb), (long long)sB, a16, CUDA_R_16BF, int(lda), (long long)sA, &fb,
          c16 ? static_cast<void*>(c16) : static_cast<void*>(C), c16 ? CUDA_R_16BF : CUDA_R_32F, int(ldc),
          (long long)sC, int(batch), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      return;
    }
    TTT_CHECK(!ns5_at(B, eb) && !ns5_at(C, ec), "lact cuda: a product mixes NS5's fp16 buffers with others");
    Step op(*this, {span_of(A, la, sA, batch, false), span_of(B, lb, sB, batch, false), span_of(C, lc, sC, batch, true)});
    const cudaDataType_t dt = CublasType<T>::data;
    auto ps_ = prof_->on() ? prof_->scope_str(gemm_name(ta, tb, m, n, k, batch)) : Prof::Scope{};
    TTT_CUBLAS_CHECK(cublasGemmStridedBatchedEx(op.handle(), tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                                ta ? CUBLAS_OP_T : CUBLAS_OP_N, int(n), int(m), int(k), &alpha, B, dt,
                                                int(ldb), (long long)sB, A, dt, int(lda), (long long)sA, &beta, C, dt,
                                                int(ldc), (long long)sC, int(batch), compute_, CUBLAS_GEMM_DEFAULT));
  }
  std::string gemm_name(bool ta, bool tb, int64_t m, int64_t n, int64_t k, int64_t batch) const {
    char buf[96];
    std::snprintf(buf, sizeof buf, "gemm %s%s %lldx%lldx%lld b%lld", ta ? "T" : "N", tb ? "T" : "N", (long long)m,
                  (long long)n, (long long)k, (long long)batch);
    return buf;
  }
  void zero(T* p, int64_t n) {
    wrote(p, n);
    Step op(*this, {wr(p, n)});
    auto ps_ = prof_->scope("memset");
    TTT_CUDA_CHECK(cudaMemsetAsync(p, 0, sizeof(T) * size_t(n), op.st));
  }
  void copy(T* dst, const T* src, int64_t n) {
    const __half* s16 = ns5_at(src, n);
    if (__half* d16 = ns5_at(dst, n); d16 || s16) {  // within NS5's fp16 storage, or across its edge (X_5 := X_4)
      Step op(*this, {s16 ? rd(s16, n) : rd(src, n), d16 ? wr(d16, n) : wr(dst, n)});
      auto ps_ = prof_->scope(d16 && s16 ? "memcpy fp16" : "convert fp16");
      if (d16 && s16) {
        TTT_CUDA_CHECK(cudaMemcpyAsync(d16, s16, sizeof(__half) * size_t(n), cudaMemcpyDeviceToDevice, op.st));
        return;
      }
      if (s16) k_convert<<<grid_for(n), kThreads, 0, op.st>>>(s16, dst, n);
      else k_convert<<<grid_for(n), kThreads, 0, op.st>>>(src, d16, n);
      TTT_LAUNCH_CHECK("convert fp16");
      return;
    }
    reads(src, n);
    wrote(dst, n);
    Step op(*this, {rd(src, n), wr(dst, n)});
    auto ps_ = prof_->scope("memcpy");
    TTT_CUDA_CHECK(cudaMemcpyAsync(dst, src, sizeof(T) * size_t(n), cudaMemcpyDeviceToDevice, op.st));
  }
  void add(T* dst, const T* src, int64_t n) {
    reads(src, n);
    reads(dst, n);
    wrote(dst, n);
    Step op(*this, {rd(src, n), wr(dst, n)});
    auto ps_ = prof_->scope("add");
    k_add<<<grid_for(n), kThreads, 0, op.st>>>(dst, src, n);
    TTT_LAUNCH_CHECK("add");
  }
  void sqrt_inplace(T* x, int64_t n) {
    reads(x, n);
    wrote(x, n);
    Step op(*this, {wr(x, n)});
    auto ps_ = prof_->scope("sqrt");
    k_sqrt<<<grid_for(n), kThreads, 0, op.st>>>(x, n);
    TTT_LAUNCH_CHECK("sqrt");
  }
  void round_up_pow2(T* x, int64_t n) {
    Step op(*this, {wr(x, n)});
    auto ps_ = prof_->scope("round_up_pow2");
    k_round_up_pow2<<<grid_for(n), kThreads, 0, op.st>>>(x, n);
    TTT_LAUNCH_CHECK("round_up_pow2");
  }
  void zero_rows(T* p, int64_t cols, int64_t r0, int64_t nr) {
    if (!p) return;
    Step op(*this, {rows_span(p, cols, r0, nr, true)});
    auto ps_ = prof_->scope("memset2d");
    TTT_CUDA_CHECK(cudaMemset2DAsync(p + r0 * cols, sizeof(T) * size_t(g_.T * cols), 0, sizeof(T) * size_t(nr * cols),
                                     size_t(g_.B), op.st));
  }

  // The second reduction stage: out[b] = scale * (the sum of row b's `slices` partial sums, in a fixed order).
  void dot_final(int slices, int64_t batch, T scale, T* out) {
    Step op(*this, {rd(partial_, batch * slices), wr(out, batch)});
    auto ps_ = prof_->scope("dot_final");
    k_dot_final<<<unsigned(batch), 32, 0, op.st>>>(partial_, slices, scale, out);
    TTT_LAUNCH_CHECK("dot_final");
  }
  // Slices of the first reduction stage over `per` elements (k_dot_partial, k_momentum_bwd).
  static int dot_slices(int64_t per) {
    return int(std::max<int64_t>(1, std::min<int64_t>(kMaxSlices, (per + 4 * kThreads - 1) / (4 * kThreads))));
  }
  void batched_dot(const T* x, const T* y, int64_t per, int64_t stride, int64_t batch, T scale, T* out) {
    TTT_CHECK(batch <= 3 * g_.B, "batched_dot: batch " << batch << " exceeds the reduction buffer");
    const int64_t ext = (batch - 1) * stride + per;
    const int slices = dot_slices(per);
    if (const __half* x16 = ns5_at(x, ext)) {  // <dX_0, X_0> in NS5's fp16 storage
      const __half* y16 = y ? ns5_at(y, ext) : nullptr;
      TTT_CHECK(!y || y16, "lact cuda: a dot of an NS5 buffer with one outside NS5's fp16 storage");
      {
        Step op(*this, {span_of(x16, per, stride, batch, false), span_of(y16, per, stride, batch, false),
                        wr(partial_, batch * slices)});
        auto ps_ = prof_->scope("dot_partial fp16");
        k_dot_partial<<<dim3(unsigned(slices), unsigned(batch)), kThreads, 0, op.st>>>(x16, y16, per, stride,
                                                                                      partial_);
        TTT_LAUNCH_CHECK("dot_partial");
      }
      dot_final(slices, batch, scale, out);
      return;
    }
    reads(x, ext);
    if (y) reads(y, ext);
    wrote(out, batch);
    {
      Step op(*this, {span_of(x, per, stride, batch, false), span_of(y, per, stride, batch, false),
                      wr(partial_, batch * slices)});
      auto ps_ = prof_->scope("dot_partial");
      k_dot_partial<<<dim3(unsigned(slices), unsigned(batch)), kThreads, 0, op.st>>>(x, y, per, stride, partial_);
      TTT_LAUNCH_CHECK("dot_partial");
    }
    dot_final(slices, batch, scale, out);
  }
  void chunk_means(const T* x, int64_t chunk, T* out) {
    const int64_t N = (g_.T + chunk - 1) / chunk;
    wrote(out, N * g_.B);
    Step op(*this, {rd(x, g_.B * g_.T), wr(out, N * g_.B)});
    auto ps_ = prof_->scope("chunk_means");
    k_chunk_means<<<dim3(unsigned(N), unsigned(g_.B)), kThreads, 0, op.st>>>(x, g_.T, chunk, out);
    TTT_LAUNCH_CHECK("chunk_means");
  }
  void axpy_batched(T* dst, const T* D, const T* S, const T* s, int64_t per) {
    const int64_t n = g_.B * per;
    reads(D, n);
    reads(S, n);
    wrote(dst, n);
    Step op(*this, {rd(D, n), rd(S, n), rd(s, g_.B), wr(dst, n)});
    auto ps_ = prof_->scope("axpy_batched");
    k_axpy_batched<<<grid_for(n), kThreads, 0, op.st>>>(dst, D, S, s, per, n);
    TTT_LAUNCH_CHECK("axpy_batched");
  }
  void momentum_bwd(const T* dM, T* dS, const T* S, const T* mbar, T* dP, T* dmbar) {
    const int64_t per = 3 * g_.P(), n = g_.B * per;
    reads(dM, n);
    reads(dS, n);
    reads(S, n);
    wrote(dS, n);
    wrote(dmbar, g_.B);
    // With bf16 operands dP feeds products only: its bf16 copy alone is written (unless dP is dM, which stays fp32).
    __nv_bfloat16* dP16 = nullptr;
    if (bf16_ && dP != dM) dP16 = shadow_out(dP, n, false);
    else wrote(dP, n);
    const int slices = dot_slices(per);
    {
      Step op(*this, {rd(dM, n), rd(S, n), rd(mbar, g_.B), wr(dS, n), dP16 ? wr(dP16, n) : wr(dP, n),
                      wr(partial_, g_.B * slices)});
      auto ps_ = prof_->scope("momentum_bwd");
      T* dP32 = dP16 ? nullptr : dP;
      k_momentum_bwd<<<dim3(unsigned(slices), unsigned(g_.B)), kThreads, 0, op.st>>>(
          dM, dS, S, mbar, dP32, dP16, per, partial_, v4_ok(dM, (const T*)dS, S, (const T*)dP32, (const __nv_bfloat16*)dP16));
      TTT_LAUNCH_CHECK("momentum_bwd");
    }
    dot_final(slices, g_.B, T(1), dmbar);
  }
  void fill_chunk(T* g, const T* val, T scale, int64_t c0, int64_t n) {
    const int64_t total = g_.B * n;
    Step op(*this, {rd(val, g_.B), rows_span(g, 1, c0, n, true)});
    auto ps_ = prof_->scope("fill_chunk");
    k_fill_chunk<<<grid_for(total), kThreads, 0, op.st>>>(g, val, scale, c0, n, g_.T, total);
    TTT_LAUNCH_CHECK("fill_chunk");
  }
  void pack_state(const T* w0, const T* w1, const T* w2, T* A) {
    const int64_t n = g_.B * 3 * g_.P(), W = g_.B * g_.P();
    wrote(A, n);
    Step op(*this, {rd(w0, W), rd(w1, W), rd(w2, W), wr(A, n)});
    auto ps_ = prof_->scope("pack_state");
    k_pack_state<<<grid_for(n), kThreads, 0, op.st>>>(w0, w1, w2, A, g_.P(), n);
    TTT_LAUNCH_CHECK("pack_state");
  }
  void unpack_grad(const T* dA, const T* tau, const T* dtau, const T* A0, T* gw0, T* gw1, T* gw2) {
    const int64_t n = g_.B * 3 * g_.P(), W = g_.B * g_.P(), R = g_.B * g_.rows();
    reads(dA, n);
    Step op(*this, {rd(dA, n), rd(tau, R), rd(tau ? dtau : nullptr, R), rd(tau ? A0 : nullptr, n), wr(gw0, W),
                    wr(gw1, W), wr(gw2, W)});
    auto ps_ = prof_->scope("unpack_grad");
    k_unpack_grad<<<grid_for(n), kThreads, 0, op.st>>>(dA, tau, dtau, A0, gw0, gw1, gw2, g_, n);
    TTT_LAUNCH_CHECK("unpack_grad");
  }
  void row_norms(const T* A, T* tau) {
    reads(A, g_.B * 3 * g_.P());
    wrote(tau, g_.B * g_.rows());
    Step op(*this, {rd(A, g_.B * 3 * g_.P()), wr(tau, g_.B * g_.rows())});
    auto ps_ = prof_->scope("row_norms");
    k_row_norms<<<row_warp_grid(g_.B * g_.rows()), kThreads, 0, op.st>>>(A, tau, g_);
    TTT_LAUNCH_CHECK("row_norms");
  }
  void weight_norm(const T* A, const T* tau, T* E) {
    const int64_t n = g_.B * 3 * g_.P();
    reads(A, n);
    __nv_bfloat16* E16 = shadow_out(E, n, true);  // E in fp32 and bf16
    Step op(*this, {rd(A, n), rd(tau, g_.B * g_.rows()), wr(E, n), wr(E16, n)});
    auto ps_ = prof_->scope("weight_norm");
    k_weight_norm<<<row_warp_grid(g_.B * g_.rows()), kThreads, 0, op.st>>>(A, tau, E, E16, g_);
    TTT_LAUNCH_CHECK("weight_norm");
  }
  void weight_norm_bwd(const T* A, const T* tau, const T* dE, T* dA, T* dtau) {
    const int64_t n = g_.B * 3 * g_.P();
    reads(A, n);
    reads(dE, n);
    reads(dA, n);
    wrote(dA, n);
    wrote(dtau, g_.B * g_.rows());
    Step op(*this, {rd(A, n), rd(tau, g_.B * g_.rows()), rd(dE, n), wr(dA, n), wr(dtau, g_.B * g_.rows())});
    auto ps_ = prof_->scope("weight_norm_bwd");
    k_weight_norm_bwd<<<row_warp_grid(g_.B * g_.rows()), kThreads, 0, op.st>>>(A, tau, dE, dA, dtau, g_);
    TTT_LAUNCH_CHECK("weight_norm_bwd");
  }
  // The chunk steps below read products' outputs ([g|h], V W1, dR, Y, da): fp32, or with bf16 product outputs
  // (narrow_) their bf16 storage (product_output_in), the kernels computing in fp32 either way. Their outputs that
  // only feed products are written as bf16 operands alone in the bf16 mode (shadow_out).
  void swiglu(const T* GH, T* a, int64_t n) {
    const int64_t rows = g_.B * n, dh = g_.dh;
    const __nv_bfloat16* gh16 = product_output_in(GH, rows * 2 * dh);
    __nv_bfloat16* a16 = bf16_ ? shadow_out(a, rows * dh, false) : nullptr;
    Step op(*this,
            {gh16 ? rd(gh16, rows * 2 * dh) : rd(GH, rows * 2 * dh), a16 ? wr(a16, rows * dh) : wr(a, rows * dh)});
    auto ps_ = prof_->scope("swiglu");
    const unsigned grid = unsigned(rows);
    if constexpr (kIsFloat<T>) {
      if (gh16) {
        k_swiglu_rows<T><<<grid, kRowThreads, 0, op.st>>>(gh16, a16, int(dh), v4_ok(gh16, (const __nv_bfloat16*)a16));
        TTT_LAUNCH_CHECK("swiglu");
        return;
      }
    }
    if (a16) k_swiglu_rows<T><<<grid, kRowThreads, 0, op.st>>>(GH, a16, int(dh), v4_ok(GH, (const __nv_bfloat16*)a16));
    else k_swiglu_rows<T><<<grid, kRowThreads, 0, op.st>>>(GH, a, int(dh), v4_ok(GH, (const T*)a));
    TTT_LAUNCH_CHECK("swiglu");
  }
  void swiglu_bwd(const T* GH, const T* da, int64_t n, T* dGH, T* a) {
    const int64_t rows = g_.B * n, dh = g_.dh;
    const __nv_bfloat16* gh16 = product_output_in(GH, rows * 2 * dh);
    const __nv_bfloat16* da16 = product_output_in(da, rows * dh);
    __nv_bfloat16* dgh16 = bf16_ ? shadow_out(dGH, rows * 2 * dh, false) : nullptr;
    __nv_bfloat16* a16 = bf16_ ? shadow_out(a, rows * dh, false) : nullptr;
    Step op(*this, {gh16 ? rd(gh16, rows * 2 * dh) : rd(GH, rows * 2 * dh),
                    da16 ? rd(da16, rows * dh) : rd(da, rows * dh),
                    dgh16 ? wr(dgh16, rows * 2 * dh) : wr(dGH, rows * 2 * dh),
                    a16 ? wr(a16, rows * dh) : wr(a, rows * dh)});
    auto ps_ = prof_->scope("swiglu_bwd");
    const unsigned grid = unsigned(rows);
    if constexpr (kIsFloat<T>) {
      if (gh16) {
        k_swiglu_bwd_rows<T><<<grid, kRowThreads, 0, op.st>>>(
            gh16, da16, dgh16, a16, int(dh), v4_ok(gh16, da16, (const __nv_bfloat16*)dgh16, (const __nv_bfloat16*)a16));
        TTT_LAUNCH_CHECK("swiglu_bwd");
        return;
      }
    }
    if (bf16_)
      k_swiglu_bwd_rows<T><<<grid, kRowThreads, 0, op.st>>>(
          GH, da, dgh16, a16, int(dh), v4_ok(GH, da, (const __nv_bfloat16*)dgh16, (const __nv_bfloat16*)a16));
    else
      k_swiglu_bwd_rows<T><<<grid, kRowThreads, 0, op.st>>>(GH, da, dGH, a, int(dh),
                                                              v4_ok(GH, da, (const T*)dGH, (const T*)a));
    TTT_LAUNCH_CHECK("swiglu_bwd");
  }
  void update_terms(const T* GH, const T* U, const T* lr0, const T* lr1, const T* lr2, int64_t c0, int64_t n, T* Al,
                    T* R) {
    const int64_t rows = g_.B * n, dh = g_.dh;
    const __nv_bfloat16* gh16 = product_output_in(GH, rows * 2 * dh);
    const __nv_bfloat16* u16 = product_output_in(U, rows * dh);
    __nv_bfloat16* a16 = bf16_ ? shadow_out(Al, rows * dh, false) : nullptr;
    __nv_bfloat16* r16 = bf16_ ? shadow_out(R, rows * 2 * dh, false) : nullptr;
    Step op(*this, {gh16 ? rd(gh16, rows * 2 * dh) : rd(GH, rows * 2 * dh), u16 ? rd(u16, rows * dh) : rd(U, rows * dh),
                    rows_span(lr0, 1, c0, n, false), rows_span(lr1, 1, c0, n, false), rows_span(lr2, 1, c0, n, false),
                    bf16_ ? wr(a16, rows * dh) : wr(Al, rows * dh), bf16_ ? wr(r16, rows * 2 * dh) : wr(R, rows * 2 * dh)});
    auto ps_ = prof_->scope("update_terms");
    const unsigned grid = unsigned(rows);
    if constexpr (kIsFloat<T>) {
      if (gh16) {
        k_update_terms_rows<<<grid, kRowThreads, 0, op.st>>>(
            gh16, u16, lr0, lr1, lr2, c0, int(n), g_.T, int(dh), a16, r16,
            v4_ok(gh16, u16, (const __nv_bfloat16*)a16, (const __nv_bfloat16*)r16));
        TTT_LAUNCH_CHECK("update_terms");
        return;
      }
    }
    if (bf16_)
      k_update_terms_rows<<<grid, kRowThreads, 0, op.st>>>(
          GH, U, lr0, lr1, lr2, c0, int(n), g_.T, int(dh), a16, r16,
          v4_ok(GH, U, (const __nv_bfloat16*)a16, (const __nv_bfloat16*)r16));
    else
      k_update_terms_rows<<<grid, kRowThreads, 0, op.st>>>(GH, U, lr0, lr1, lr2, c0, int(n), g_.T, int(dh), Al, R,
                                                           v4_ok(GH, U, (const T*)Al, (const T*)R));
    TTT_LAUNCH_CHECK("update_terms");
  }
  // Writes [R | dGH] (RdGH, 4 dh a row) and [lr1 a | dU] (AldU, 2 dh a row): product operands only, so in the bf16
  // mode their bf16 shadows alone.
  void update_terms_bwd(const T* GH, const T* U, const T* lr0, const T* lr1, const T* lr2, int64_t c0, int64_t n,
                        const T* dR, const T* Y, T* RdGH, T* AldU, T* glr0, T* glr1, T* glr2) {
    const int64_t rows = g_.B * n, dh = g_.dh;
    const __nv_bfloat16* gh16 = product_output_in(GH, rows * 2 * dh);
    const __nv_bfloat16* u16 = product_output_in(U, rows * dh);
    const __nv_bfloat16* dr16 = product_output_in(dR, rows * 2 * dh);
    const __nv_bfloat16* y16 = product_output_in(Y, rows * dh);
    __nv_bfloat16* rdgh16 = bf16_ ? shadow_out(RdGH, rows * 4 * dh, false) : nullptr;
    __nv_bfloat16* aldu16 = bf16_ ? shadow_out(AldU, rows * 2 * dh, false) : nullptr;
    Step op(*this, {gh16 ? rd(gh16, rows * 2 * dh) : rd(GH, rows * 2 * dh), u16 ? rd(u16, rows * dh) : rd(U, rows * dh),
                    rows_span(lr0, 1, c0, n, false), rows_span(lr1, 1, c0, n, false), rows_span(lr2, 1, c0, n, false),
                    dr16 ? rd(dr16, rows * 2 * dh) : rd(dR, rows * 2 * dh), y16 ? rd(y16, rows * dh) : rd(Y, rows * dh),
                    bf16_ ? wr(rdgh16, rows * 4 * dh) : wr(RdGH, rows * 4 * dh),
                    bf16_ ? wr(aldu16, rows * 2 * dh) : wr(AldU, rows * 2 * dh), rows_span(glr0, 1, c0, n, true),
                    rows_span(glr1, 1, c0, n, true), rows_span(glr2, 1, c0, n, true)});
    auto ps_ = prof_->scope("update_terms_bwd");
    const unsigned grid = unsigned(row_warp_grid(rows));
    if constexpr (kIsFloat<T>) {
      if (gh16) {
        k_update_terms_bwd_rows<<<grid, kThreads, 0, op.st>>>(
            gh16, u16, lr0, lr1, lr2, c0, n, g_.T, int(dh), dr16, y16, rdgh16, aldu16, glr0, glr1, glr2, rows,
            v4_ok(gh16, u16, dr16, y16, (const __nv_bfloat16*)rdgh16, (const __nv_bfloat16*)aldu16));
        TTT_LAUNCH_CHECK("update_terms_bwd");
        return;
      }
    }
    if (bf16_)
      k_update_terms_bwd_rows<<<grid, kThreads, 0, op.st>>>(
          GH, U, lr0, lr1, lr2, c0, n, g_.T, int(dh), dR, Y, rdgh16, aldu16, glr0, glr1, glr2, rows,
          v4_ok(GH, U, dR, Y, (const __nv_bfloat16*)rdgh16, (const __nv_bfloat16*)aldu16));
    else
      k_update_terms_bwd_rows<<<grid, kThreads, 0, op.st>>>(
          GH, U, lr0, lr1, lr2, c0, n, g_.T, int(dh), dR, Y, RdGH, AldU, glr0, glr1, glr2, rows,
          v4_ok(GH, U, dR, Y, (const T*)RdGH, (const T*)AldU));
    TTT_LAUNCH_CHECK("update_terms_bwd");
  }
  // DW = [dD02; E02], [dD1 | E1] per head (CpuOps::stack_bwd_operands). In the bf16 mode a copy of the bf16 shadows
  // of dD and E (converting what is not valid yet, as a product would) into DW's shadow alone: DW feeds products only.
  void stack_bwd_operands(const T* dD, const T* E, T* DW) {
    const int64_t per = 3 * g_.P(), n = 2 * g_.B * per;
    if (bf16_) {
      const __nv_bfloat16* dD16 = operand_bf16(dD, g_.B * per);
      const __nv_bfloat16* E16 = operand_bf16(E, g_.B * per);
      __nv_bfloat16* DW16 = shadow_out(DW, n, false);
      Step op(*this, {rd(dD16, g_.B * per), rd(E16, g_.B * per), wr(DW16, n)});
      auto ps_ = prof_->scope("stack_bwd_operands");
      k_stack_bwd_operands<<<grid_for(n), kThreads, 0, op.st>>>(dD16, E16, DW16, g_, n);
      TTT_LAUNCH_CHECK("stack_bwd_operands");
      return;
    }
    Step op(*this, {rd(dD, g_.B * per), rd(E, g_.B * per), wr(DW, n)});
    auto ps_ = prof_->scope("stack_bwd_operands");
    k_stack_bwd_operands<<<grid_for(n), kThreads, 0, op.st>>>(dD, E, DW, g_, n);
    TTT_LAUNCH_CHECK("stack_bwd_operands");
  }
  void to_ns(const T* src, T* dst, const T* nrm, bool exact = false) {
    const int64_t n = 3 * g_.B * g_.P();
    reads(src, n);
    __half* d16 = ns5_at(dst, n);
    if (!d16) wrote(dst, n);
    Step op(*this, {rd(src, n), rd(nrm, 3 * g_.B), d16 ? wr(d16, n) : wr(dst, n)});
    auto ps_ = prof_->scope("to_ns");
    if (d16) k_to_ns<<<grid_for(n), kThreads, 0, op.st>>>(src, d16, nrm, exact, g_, n);
    else k_to_ns<<<grid_for(n), kThreads, 0, op.st>>>(src, dst, nrm, exact, g_, n);
    TTT_LAUNCH_CHECK("to_ns");
  }
  void ns_norm_bwd(const T* dX0, const T* Pm, const T* nrm, const T* dot, const T* scale, T* dP) {
    const int64_t n = 3 * g_.B * g_.P();
    const __half* x16 = ns5_at(dX0, n);
    if (!x16) reads(dX0, n);
    reads(Pm, n);
    wrote(dP, n);
    Step op(*this, {x16 ? rd(x16, n) : rd(dX0, n), rd(Pm, n), rd(nrm, 3 * g_.B), rd(dot, 3 * g_.B),
                    rd(scale, 3 * g_.B), wr(dP, n)});
    auto ps_ = prof_->scope("ns_norm_bwd");
    if (x16) k_ns_norm_bwd<<<grid_for(n), kThreads, 0, op.st>>>(x16, Pm, nrm, dot, scale, dP, g_, n);
    else k_ns_norm_bwd<<<grid_for(n), kThreads, 0, op.st>>>(dX0, Pm, nrm, dot, scale, dP, g_, n);
    TTT_LAUNCH_CHECK("ns_norm_bwd");
  }
  void step(const T* A, const T* M, bool ns, const T* tau, T* An) {
    const int64_t n = g_.B * 3 * g_.P();
    reads(A, n);
    reads(M, n);
    __nv_bfloat16* An16 = shadow_out(An, n, true);  // the next state in fp32 and bf16
    Step op(*this, {rd(A, n), rd(M, n), rd(tau, g_.B * g_.rows()), wr(An, n), wr(An16, n)});
    auto ps_ = prof_->scope("step");
    k_step<<<row_warp_grid(g_.B * g_.rows()), kThreads, 0, op.st>>>(A, M, ns, tau, An, An16, g_);
    TTT_LAUNCH_CHECK("step");
  }
  void momentum_step(const T* A, const T* D, const T* S, const T* mbar, T* P, const T* tau, T* An) {
    const int64_t n = g_.B * 3 * g_.P();
    reads(A, n);
    reads(D, n);
    reads(S, n);
    wrote(P, n);
    __nv_bfloat16* An16 = shadow_out(An, n, true);  // the next state in fp32 and bf16
    Step op(*this, {rd(A, n), rd(D, n), rd(S, n), rd(mbar, g_.B), rd(tau, g_.B * g_.rows()), wr(P, n), wr(An, n),
                    wr(An16, n)});
    auto ps_ = prof_->scope("momentum_step");
    k_momentum_step<<<row_warp_grid(g_.B * g_.rows()), kThreads, 0, op.st>>>(
        A, D, S, mbar, P, tau, An, An16, g_, v4_ok(A, D, S, (const T*)P, (const T*)An, (const __nv_bfloat16*)An16));
    TTT_LAUNCH_CHECK("momentum_step");
  }
  // step_bwd, momentum_bwd and stack_bwd_operands (dP with A) in one pass (CpuOps::step_momentum_bwd): one warp per
  // state row; the gate's gradient <dP, S> from per-row partial sums (a fixed order: deterministic).
  void step_momentum_bwd(const T* A, const T* M, const T* tau, T* dA, const T* dA_add, T* dtau, T* dS, const T* S,
                         const T* mbar, T* DW, T* dmbar) {
    const int64_t n = g_.B * 3 * g_.P(), rows = g_.B * g_.rows();
    reads(A, n);
    reads(M, n);
    reads(dA, n);
    if (dA_add) reads(dA_add, n);
    reads(dS, n);
    reads(S, n);
    wrote(dA, n);
    wrote(dtau, rows);
    wrote(dS, n);
    wrote(dmbar, g_.B);
    // DW feeds products only: in the bf16 mode its bf16 shadow alone.
    __nv_bfloat16* DW16 = bf16_ ? shadow_out(DW, 2 * n, false) : nullptr;
    {
      Step op(*this, {rd(A, n), rd(M, n), rd(tau, rows), rd(dA_add, n), rd(S, n), rd(mbar, g_.B), wr(dA, n),
                      wr(dtau, rows), wr(dS, n), DW16 ? wr(DW16, 2 * n) : wr(DW, 2 * n), wr(partial_, rows)});
      auto ps_ = prof_->scope("step_momentum_bwd");
      if (DW16)
        k_step_momentum_bwd<<<row_warp_grid(rows), kThreads, 0, op.st>>>(A, M, tau, dA, dA_add, dtau, dS, S, mbar,
                                                                         DW16, partial_, g_);
      else
        k_step_momentum_bwd<<<row_warp_grid(rows), kThreads, 0, op.st>>>(A, M, tau, dA, dA_add, dtau, dS, S, mbar, DW,
                                                                         partial_, g_);
      TTT_LAUNCH_CHECK("step_momentum_bwd");
    }
    dot_final(int(g_.rows()), g_.B, T(1), dmbar);
  }
  void step_bwd(const T* A, const T* M, bool ns, const T* tau, T* dA, const T* dA_add, T* dtau) {
    const int64_t n = g_.B * 3 * g_.P();
    reads(A, n);
    reads(M, n);
    reads(dA, n);
    if (dA_add) reads(dA_add, n);
    wrote(dA, n);
    wrote(dtau, g_.B * g_.rows());
    Step op(*this, {rd(A, n), rd(M, n), rd(tau, g_.B * g_.rows()), rd(dA_add, n), wr(dA, n),
                    wr(dtau, g_.B * g_.rows())});
    auto ps_ = prof_->scope("step_bwd");
    k_step_bwd<<<row_warp_grid(g_.B * g_.rows()), kThreads, 0, op.st>>>(A, M, ns, tau, dA, dA_add, dtau, g_);
    TTT_LAUNCH_CHECK("step_bwd");
  }

 private:
  lact::Geom g_;
  LactOptions opt_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<Prof> prof_;
  std::unique_ptr<Sched> sched_;
  std::vector<cublasHandle_t> handles_;  // per stream of sched_
  cublasComputeType_t compute_ = CUBLAS_COMPUTE_32F;
  std::vector<std::pair<void*, size_t>> allocs_;
  Acc* partial_ = nullptr;  // the first stage of the reductions (lact::runner_partial_doubles)
  size_t partial_bytes() const { return sizeof(Acc) * size_t(lact::runner_partial_doubles(g_.B, g_.d, g_.dh)); }
  size_t workspace_bytes_ = 0;
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
    bool operand = true;          // read by products: has a shadow
    __nv_bfloat16* sh = nullptr;  // the shadow
    Ivals valid;                  // where sh = bf16(fp32 value)
    Ivals stale;                  // where only sh holds the value (the fp32 buffer was not written)
    // A Buffer::ProductOutput kept in bf16 alone (narrow_): sh is its storage, written by products and read by
    // element-wise steps; base is a key (reserve_key), no fp32 buffer.
    bool narrow = false;
  };
  bool bf16_ = false;
  bool narrow_ = false;  // bf16 product outputs (bf16_outputs_of)
  // fp16 NS5 (ns5_fp16_of): every lact::Buffer::Ns5 is fp16 storage `h` alone behind a key (reserve_key).
  struct Ns5Region {
    T* key = nullptr;
    int64_t n = 0;
    __half* h = nullptr;
  };
  bool ns5_half_ = false;
  std::vector<Ns5Region> ns5_;
  // The fp16 storage of [p, p+n) if it lies in an NS5 buffer kept in fp16, else null.
  __half* ns5_at(const T* p, int64_t n) {
    for (const Ns5Region& r : ns5_)
      if (p >= r.key && p < r.key + r.n) {
        TTT_CHECK(p - r.key + n <= r.n, "lact cuda: an access runs past an NS5 buffer");
        return r.h + (p - r.key);
      }
    return nullptr;
  }
  std::vector<std::pair<void*, size_t>> keys_;  // reserve_key's address ranges
  std::vector<Mirror> mirrors_;  // q, k, v of record 0, of record 1, ..., then grad_o
  int64_t record_ = 0;
  size_t mirror_index(int i) const { return i == 3 ? mirrors_.size() - 1 : size_t(3 * record_ + i); }
  std::vector<Region> regions_;

  Region* region_of(const T* p) {
    for (Region& r : regions_)
      if (p >= r.base && p < r.base + r.n) return &r;
    return nullptr;
  }
  // The pointer a narrow region hands to lact::Fused: the start of n elements of T of host address space reserved
  // without access (so it can be no device buffer's address and faults if anything dereferences it), which
  // region_of maps to the region.
  T* reserve_key(int64_t n) {
    const size_t bytes = sizeof(T) * size_t(n);
    void* p = mmap(nullptr, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    TTT_CHECK(p != MAP_FAILED, "lact cuda: could not reserve " << bytes << " bytes of address space");
    keys_.push_back({p, bytes});
    return static_cast<T*>(p);
  }
  // The bf16 storage of [p, p+n) if it is a narrow region's, else null.
  __nv_bfloat16* narrow_at(const T* p, int64_t n) {
    if (!narrow_) return nullptr;
    Region* r = region_of(p);
    if (!r || !r->narrow) return nullptr;
    TTT_CHECK(p - r->base + n <= r->n, "lact cuda bf16: a product output runs past its buffer");
    return r->sh + (p - r->base);
  }
  // A product's output C: its bf16 storage where it is kept in bf16, else null (the product writes fp32 C).
  __nv_bfloat16* product_output_bf16(T* C, int64_t n) { return narrow_at(C, n); }
  // A product's output that an element-wise step reads: its bf16 storage with bf16 product outputs (every
  // Buffer::ProductOutput is then narrow), else null after checking that the fp32 values exist.
  const __nv_bfloat16* product_output_in(const T* p, int64_t n) {
    if (!narrow_) {
      reads(p, n);
      return nullptr;
    }
    const __nv_bfloat16* h = narrow_at(p, n);
    TTT_CHECK(h, "lact cuda bf16: an element-wise step reads a product output that is not kept in bf16");
    return h;
  }
  // fp32 [p, p+n) was (or is about to be) written: its shadow is out of date there.
  void wrote(const T* p, int64_t n) {
    if (!bf16_) return;
    if (Region* r = region_of(p)) {
      TTT_CHECK(!r->narrow, "lact cuda bf16: an fp32 write into a product output kept in bf16");
      const int64_t a = p - r->base, b = std::min(a + n, r->n);
      iv_sub(r->valid, a, b);
      iv_sub(r->stale, a, b);
    }
  }
  // A kernel writes bf16 [p, p+n) (and with fp32_too the fp32 value as well): the shadow pointer to write.
  __nv_bfloat16* shadow_out(T* p, int64_t n, bool fp32_too) {
    if (!bf16_) return nullptr;
    Region* r = region_of(p);
    TTT_CHECK(r && r->sh && !r->narrow, "lact cuda bf16: no shadow for a buffer written in bf16");
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
      TTT_CHECK(!r->narrow, "lact cuda bf16: an fp32 read of a product output kept in bf16");
      const int64_t a = p - r->base, b = std::min(a + n, r->n);
      TTT_CHECK(!iv_overlaps(r->stale, a, b),
                "lact cuda bf16: an element-wise step reads a value that exists only as bf16 (bookkeeping bug)");
    }
  }

  // bf16 copies of fp32 matrix operands (doubles are never converted).
  void to_bf16(const float* src, __nv_bfloat16* dst, int64_t n) {
    Step op(*this, {rd(src, n), wr(dst, n)});
    auto ps_ = prof_->scope("to_bf16");
    mk::to_bf16(src, reinterpret_cast<ttt::bf16*>(dst), n, op.st);
  }
  // The bf16 operand for the `extent` elements from p: inside a mirror, its copy; else the buffer's shadow,
  // after converting the parts of it that are not valid yet.
  const __nv_bfloat16* operand_bf16(const T* p, int64_t extent) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p), e = a + uintptr_t(extent) * sizeof(T);
    for (int i = 0; i < 4; ++i) {  // the current record's (another record's q may share its address) and grad_o's
      const Mirror& m = mirrors_[mirror_index(i)];
      if (!m.base) continue;
      const uintptr_t b = reinterpret_cast<uintptr_t>(m.base);
      if (a >= b && e <= b + uintptr_t(m.n) * sizeof(T)) return m.copy + (p - m.base);
    }
    Region* r = region_of(p);
    TTT_CHECK(r && r->sh, "lact cuda bf16: a matrix operand outside every known buffer");
    TTT_CHECK(!r->narrow, "lact cuda bf16: a product output kept in bf16 as a matrix operand");
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
LactOptions precision_options(backend::Precision precision) {
  LactOptions o;
  o.tf32 = precision == backend::Precision::TF32;
  o.bf16 = precision == backend::Precision::BF16;
  return o;
}
LactOptions precision_options(const std::string& precision) {
  return precision_options(backend::parse_precision(precision, "the LaCT operator's precision"));
}
const char* precision_name(const LactOptions& opt) { return opt.bf16 ? "bf16" : opt.tf32 ? "tf32" : "fp32"; }
bool bf16_outputs_of(const LactOptions& opt) { return opt.bf16 && opt.bf16_outputs && lact::bf16_outputs_from_env(); }
bool ns5_fp16_of(const LactOptions& opt) { return opt.tf32 && opt.ns5_fp16 && lact::ns5_fp16_from_env(); }

size_t kept_products_bytes(const lact::Shape& s, const LactOptions& opt) {
  const int64_t extra = lact::workspace_elements(s, true, 1, true) - lact::workspace_elements(s, true, 1, false);
  // fp32 elements, with bf16 operands a bf16 shadow of each product operand, with bf16 product outputs 2 bytes
  // rather than 4 for each of those.
  const int64_t extra_operands =
      lact::workspace_operand_elements(s, true, 1, true) - lact::workspace_operand_elements(s, true, 1, false);
  const int64_t extra_outputs = lact::workspace_product_output_elements(s, true, 1, true) -
                                lact::workspace_product_output_elements(s, true, 1, false);
  const int64_t bytes =
      4 * extra + (opt.bf16 ? 2 * extra_operands : 0) - (bf16_outputs_of(opt) ? 2 * extra_outputs : 0);
  return size_t(std::max<int64_t>(bytes, 0));
}
LactOptions with_kept_products_if_room(const lact::Shape& s, LactOptions opt) {
  const char* e = std::getenv("TTT_LACT_KEEP");
  size_t used = 0, total = 0;
  device_memory(&used, &total);
  opt.keep_products = !(e && std::string(e) == "0") && kept_products_bytes(s, opt) <= (total - used) / 4;
  return opt;
}


namespace {
// CUDA graphs: each forward() / backward() is captured into a graph on its first call and replayed while it
// is called on the same pointers (the algorithm's sequence of steps depends on the shape and the pointers
// only). This removes the host's enqueue work (hundreds of cuBLAS calls and launches per call) and the gaps
// between small kernels. A replay also restores the host bookkeeping its capture left (the bf16 shadows).
// One graph per direction is kept: a call on other pointers captures anew. Off with LactOptions::graphs,
// TTT_LACT_GRAPH=0, TTT_LACT_PROFILE, and after a capture that failed (the call then runs eagerly).
bool graphs_from_env() {
  const char* e = std::getenv("TTT_LACT_GRAPH");
  return !(e && std::string(e) == "0");
}
}  // namespace

template <class T>
struct LactRunner<T>::Impl {
  CudaOps<T> ops;
  lact::Fused<CudaOps<T>> fused;
  struct GraphCall {
    explicit GraphCall(size_t capacity) : graph(capacity) {}
    CachedGraph graph;
    // The host bookkeeping each key's capture left, restored after each replay of it.
    std::map<std::vector<const void*>, typename CudaOps<T>::Book> post;
  };
  std::vector<std::unique_ptr<GraphCall>> gf, gb;  // per forward record
  bool graphs = true;
  std::vector<std::vector<const void*>> fkey;  // per forward record: pointers of its last forward()
  bool keeps_products = false;

  Impl(const lact::Shape& s, bool with_grad, const LactOptions& opt, int64_t records)
      : ops(lact::Geom{s.B, s.T, s.d, s.dh}, opt), fused(ops, s, with_grad, records, opt.keep_products),
        fkey(size_t(records)), keeps_products(with_grad && opt.keep_products) {
    for (int64_t r = 0; r < records; ++r) {
      gf.push_back(std::make_unique<GraphCall>(size_t(std::max(1, opt.graph_cache))));
      gb.push_back(std::make_unique<GraphCall>(size_t(std::max(1, opt.graph_cache))));
    }
    ops.init_bf16(s.chunk, with_grad, records);
    graphs = opt.graphs && graphs_from_env() && !ops.prof().on();
  }
  // Host bookkeeping only (also before a graph replay): the record the next forward() / backward() act on.
  void use_record(int64_t r) {
    TTT_CHECK(r >= 0 && r < int64_t(gf.size()), "lact cuda: forward record " << r << " of " << gf.size());
    fused.use_record(r);
    ops.use_record(r);
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
      ops.restore(gc.post.at(key));
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
    gc.post[key] = ops.snapshot();
  }
};

template <class T>
LactRunner<T>::LactRunner(const lact::Shape& s, bool with_grad, const LactOptions& opt, int64_t records) {
  s.validate();
  impl_ = std::make_unique<Impl>(s, with_grad, opt, records);
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
void LactRunner<T>::forward(const lact::Inputs<T>& in, T* o, int64_t record) {
  Impl& m = *impl_;
  m.use_record(record);
  m.ops.prof().call_begin('F');
  std::vector<const void*>& fkey = m.fkey[size_t(record)];
  fkey = {in.w0, in.w1, in.w2, in.q, in.k, in.v, in.lr0, in.lr1, in.lr2, in.mom, o};
  m.run(*m.gf[size_t(record)], fkey, [&] {
    m.ops.begin_call();
    if (m.ops.bf16()) {  // bf16 copies of the token inputs the chunk products read (backward reuses them)
      m.ops.set_mirror(0, in.q);
      m.ops.set_mirror(1, in.k);
      m.ops.set_mirror(2, in.v);
    }
    m.fused.forward(in, o);
    m.ops.end_call();
  });
  m.ops.prof().call_end();
}
template <class T>
void LactRunner<T>::backward(const T* grad_o, const lact::Grads<T>& g, int64_t record) {
  Impl& m = *impl_;
  m.use_record(record);
  m.ops.prof().call_begin('B');
  std::vector<const void*> key = m.fkey[size_t(record)];
  key.insert(key.end(), {grad_o, g.w0, g.w1, g.w2, g.q, g.k, g.v, g.lr0, g.lr1, g.lr2, g.mom});
  m.run(*m.gb[size_t(record)], key, [&] {
    m.ops.begin_call();
    if (m.ops.bf16()) m.ops.set_mirror(3, grad_o);
    m.fused.backward(grad_o, g);
    m.ops.end_call();
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
bool LactRunner<T>::keeps_products() const {
  return impl_->keeps_products;
}
template <class T>
void* LactRunner<T>::stream() const {
  return impl_->ops.stream();
}

template class LactRunner<float>;
template class LactRunner<double>;

}  // namespace ttt::cuda
