// The LaCT operator on an NVIDIA GPU: the algorithm of ttt/lact_fused.h (the CPU twin is its specification)
// run by a CUDA backend: fp32 (or fp64) fast-weight state and math, cuBLAS strided-batched GEMMs over the B
// sequence-heads, small fused element-wise / reduction kernels, on several streams (each step after the steps it
// depends on; lact_sched.cuh). Every buffer is allocated once
// per runner with cudaMalloc (no managed memory); device memory is linear in T/C (the chunk-boundary states)
// beyond the inputs and outputs themselves. Every CUDA and cuBLAS call is checked; failures throw
// ttt::Error naming the call. A runner captures its forward() and its backward() (of each forward record) into
// CUDA graphs on their first call and replays them while they are called again on the same pointers
// (TTT_LACT_GRAPH=0 turns this off); every call forks from the runner's stream and joins back into it, so to the
// caller the work stays on the runner's stream, ordered with the legacy default stream as before.
//
// This header needs no CUDA headers: host code (CLI, tests) includes it freely.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/options.h"
#include "backend/cuda/device.h"
#include "backend/cuda/op_backends.h"  // engine::cuda_backend()
#include "ttt/lact_fused.h"

namespace ttt::cuda {

struct LactOptions {
  // cuBLAS TF32 tensor-core products (CUBLAS_COMPUTE_32F_FAST_TF32) for float; default exact fp32.
  bool tf32 = false;
  // bf16 matrix inputs with fp32 accumulation (float only; issue 5's precision contract): every operand of
  // the chunk matrix products (q/k/v/grad_o chunks, intermediate activations, bf16 copies of the fp32
  // weights, states and NS5 iterates) is rounded to bf16 and the products accumulate in fp32
  // (cublasGemmStridedBatchedEx, CUDA_R_16BF inputs, CUBLAS_COMPUTE_32F, fp32 outputs). The fast-weight state,
  // momentum, weight-norm math, NS5 accumulation and every reduction and element-wise step stay fp32; the
  // element-wise values that only feed products (a, lr1 a, R, their cotangents) are computed in fp32 and
  // stored only as their bf16 operands. Exclusive with tf32.
  bool bf16 = false;
  // With bf16: the products whose output only an element-wise step reads ([g|h] of q and k, V W1, dR, V dD1,
  // dO W1: lact::Buffer::ProductOutput) write it in bf16 (cuBLAS's bf16 C, the fp32 sum rounded once; half the
  // bytes written and read back, half the memory, also of the kept [g|h] and V W1), and those element-wise steps
  // read bf16 and compute in fp32. The state, momentum, weight gradients and every accumulation stay fp32. The CPU
  // twin emulates it (lact::Bf16Emulation::outputs). Off with TTT_LACT_B16_OUTPUTS=0 (bf16_outputs_of).
  bool bf16_outputs = true;
  // With tf32 (float): Newton-Schulz (Muon) on fp16 instead of tf32. Its iterates, their products and adjoints
  // (lact::Buffer::Ns5) are stored in fp16 and multiplied on fp16 tensor cores with fp32 accumulation: fp16 has
  // tf32's 10-bit mantissa at twice its tensor-core rate (H200: 12 x 768^3 products 22 against 44 us), and NS5's
  // values stay inside its range (X_0 = P / ||P||, singular values <= 1.3 after; the adjoint scaled to unit norm by
  // lact::Fused). The update X_5 and everything outside NS5 stay as they were. The CPU twin emulates the storage
  // (lact::Bf16Emulation::ns5_fp16). Off with TTT_LACT_NS5=tf32 (ns5_fp16_of).
  bool ns5_fp16 = true;
  // Fill every work buffer with NaN when allocated (tests: catches reads of what nothing wrote).
  bool poison_workspace = false;
  // lact::Fused's keep_products: each forward record keeps every chunk's [g|h] of q and k and V W1 (B T 5 dh
  // elements a record, fp32, or bf16 alone with bf16_outputs) and the backward reads them instead of recomputing them
  // (same bits). The operator's own entry points (ttt op lact, ttt bench op: one record) set it where there is room
  // (with_kept_products_if_room); the GPU model's shared runner sets it for training batches
  // (backend::gpu_lact_keeps_products, which its memory estimate counts too), its per-layer records of
  // --recompute none and PyTorch's runners leave it off.
  bool keep_products = false;
  // Replay forward() / backward() as CUDA graphs after their first call (also off with TTT_LACT_GRAPH=0 and
  // TTT_LACT_PROFILE=1); bench_lact's eager reference turns it off.
  bool graphs = true;
  // How many graphs per direction and record are kept, one per distinct set of pointers (the least recently used
  // is dropped): the GPU model calls one shared runner for every layer, each on its own weights, so it keeps
  // a graph per layer; 1 suits a caller that repeats one call.
  int graph_cache = 1;
  // Streams a call's steps run on, each step after exactly the steps it depends on (lact_sched.cuh; the same
  // bits on any number): 0 = lact::kRunnerStreams or TTT_LACT_STREAMS; 1 = all on the runner's stream (so does
  // TTT_LACT_PROFILE=1).
  int streams = 0;
};

// The options of a precision; its text "fp32" | "tf32" | "bf16" (backend::parse_precision: throws on anything
// else); and back.
LactOptions precision_options(backend::Precision precision);
LactOptions precision_options(const std::string& precision);
const char* precision_name(const LactOptions& opt);
// Whether a runner with opt writes bf16 product outputs: opt.bf16 and opt.bf16_outputs, unless TTT_LACT_B16_OUTPUTS=0
// (lact::bf16_outputs_from_env).
bool bf16_outputs_of(const LactOptions& opt);
// Whether a float runner with opt runs NS5 on fp16: opt.tf32 and opt.ns5_fp16, unless TTT_LACT_NS5=tf32
// (lact::ns5_fp16_from_env).
bool ns5_fp16_of(const LactOptions& opt);
// opt with keep_products on when the kept products of one record (kept_products_bytes) take at most a quarter
// of the device's free memory (the operator's own runs: ttt op lact, ttt bench op), unless TTT_LACT_KEEP=0.
// Either way the results are the same bits; the choice only trades memory for the backward's recomputation.
size_t kept_products_bytes(const lact::Shape& s, const LactOptions& opt);
LactOptions with_kept_products_if_room(const lact::Shape& s, LactOptions opt);
// precision_options(precision) for inputs of F32 (f32) or F64, refusing what is not offered: tf32 or bf16 on F64
// inputs, bf16 with Muon; `what` starts the message (the command and flag, or the caller).
LactOptions offered_precision_options(const std::string& what, const std::string& precision, bool f32, bool muon);

// The operator on device pointers (layouts of lact_fused.h). Construction allocates everything a run needs;
// forward() / backward() enqueue the work on the runner's stream and return (synchronize() waits).
// records (with_grad): forwards kept at once, each in a record of its own until its backward (lact::Fused's
// records: chunk-boundary states, weight-norm targets, inputs and, with bf16 operands, the bf16 copies of q, k, v;
// the work buffers are shared), e.g. one per layer of a model that recomputes nothing; forward() / backward()
// name the record (each has its own CUDA graphs). With bf16 operands the backward reads q and k only through the
// copies its forward made, so the caller may reuse their fp32 buffers after forward().
template <class T>
class LactRunner {
 public:
  LactRunner(const lact::Shape& s, bool with_grad, const LactOptions& opt = {}, int64_t records = 1);
  ~LactRunner();
  LactRunner(const LactRunner&) = delete;
  LactRunner& operator=(const LactRunner&) = delete;
  void forward(const lact::Inputs<T>& in, T* o, int64_t record = 0);
  void backward(const T* grad_o, const lact::Grads<T>& g, int64_t record = 0);  // after forward() of that record
  // Streaming (generation), as lact::Fused::stream_*: build with s.T == s.chunk, causal, with_grad false,
  // fp32 or tf32; the inputs are the unfinished chunk's [B, chunk, .] device buffers.
  void stream_init(const T* w0, const T* w1, const T* w2);
  void stream_apply(const lact::Inputs<T>& in, int64_t r0, int64_t n, T* o);
  void stream_update(const lact::Inputs<T>& in, int64_t n);
  void synchronize();
  size_t workspace_bytes() const;
  bool keeps_products() const;  // its records keep the chunks' products (LactOptions::keep_products, with gradients)
  void* stream() const;  // cudaStream_t

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Host arrays in, host arrays out: copies the inputs to the device, runs, copies the results back. Device
// outputs are filled with NaN first, so an element no kernel writes comes back as NaN.
template <class T>
void lact_host(const lact::Shape& s, const lact::Inputs<T>& in, T* o, const T* grad_o, const lact::Grads<T>* g,
               const LactOptions& opt = {});

// Timing of the operator with CUDA events on device-resident random inputs.
using LactBenchResult = OpBenchResult;
// Times the forward alone (no states kept; skipped with skip_forward) and forward+backward, each `repeats`
// times after `warmup` untimed runs; medians.
LactBenchResult bench_lact(const lact::Shape& s, int repeats, int warmup, const LactOptions& opt,
                           bool skip_forward = false);

}  // namespace ttt::cuda
