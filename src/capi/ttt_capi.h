/* The C ABI of ttt's operators: libttt_capi.so (CMake option TTT_BUILD_CAPI, on by default).
 *
 * Bindings call these plain C functions (python/ttt_torch/ops.py, through ctypes) and so need no build against
 * the engine's C++ types or against torch. They run the same operator backends as `ttt op lact|tnt`
 * (backend/operators.h, through backend::operator_backends): the CPU twin or the CUDA kernels, built from the one
 * copy of the engine's sources.
 *
 * An operator is called with named tensors, exactly the names, shapes and dtypes of `ttt op lact|tnt`
 * (ttt/lact_op.h, ttt/tnt.h), in host memory (C-contiguous); the outputs (o, and grad_<name> of every input
 * when grad_o is given) come back in host memory owned by the library until ttt_outputs_free.
 *
 * CUDA tensors can also skip the host: ttt_lact_device_forward / _backward take device pointers and a stream.
 *
 * Errors: every function that can fail returns NULL on success or a message (the engine's ttt::Error text,
 * naming the tensor, option or device) that stays valid until the calling thread's next call into this library.
 * No C++ exception crosses this boundary.
 */
#ifndef TTT_CAPI_H
#define TTT_CAPI_H
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever a declaration below changes; bindings refuse a library of another version. */
#define TTT_CAPI_VERSION 2

enum ttt_dtype { TTT_F32 = 0, TTT_F64 = 1 };

typedef struct ttt_tensor {
  const char* name;      /* e.g. "w0", "q", "g_theta", "grad_o" */
  int32_t dtype;         /* enum ttt_dtype */
  int32_t ndim;          /* 1..8 */
  const int64_t* shape;  /* ndim sizes */
  const void* data;      /* C-contiguous, host memory */
} ttt_tensor;

typedef struct ttt_outputs ttt_outputs;

int32_t ttt_capi_version(void);
/* The devices this library was built with and this machine has, comma-separated: "cpu" or "cpu,cuda". */
const char* ttt_capi_devices(void);

/* Runs operator `op` ("lact" | "tnt") on `device` ("cpu" | "cuda"; for cuda, GPU number device_index, as
 * CUDA numbers them in this process) with options `options_json`, a JSON object:
 *   lact: chunk (int, 64), program ("causal" | "bidirectional"), weight_norm ("post" | "pre" | "none"),
 *         muon (bool), precision ("fp32" | "tf32" | "bf16"; cuda with F32 tensors)
 *   tnt:  use_global (bool, true), global_chunk (int, 2048), local_chunks (array of int, [8, 16]),
 *         shard (int, 2048; 0: never reset), qk_proj (bool, true)
 * Missing fields take those defaults (the defaults of `ttt op`); an unknown field is an error.
 * On success *out holds the outputs (free them with ttt_outputs_free). */
const char* ttt_op_run(const char* op, const char* options_json, const char* device, int32_t device_index,
                       const ttt_tensor* inputs, int32_t n_inputs, ttt_outputs** out);

/* The LaCT operator on device memory (tensors already on a GPU: no copies). Pointers are contiguous arrays in
 * the operator's layouts: inputs w0 [B,dh,d], w1 [B,d,dh], w2 [B,dh,d], q, k, v [B,T,d], lr0, lr1, lr2 [B,T],
 * momentum [B,T] or NULL (no momentum); all of `dtype`. The work runs on the library's stream, ordered after
 * what `stream` (the caller's cudaStream_t; NULL: the legacy default stream) holds, and `stream` waits for it. */
typedef struct ttt_lact_device_call {
  int64_t B, T, d, dh, chunk;
  int32_t dtype;             /* enum ttt_dtype */
  int32_t muon;              /* 0 | 1 */
  const char* weight_norm;   /* "post" | "pre" | "none" */
  const char* precision;     /* "fp32" | "tf32" | "bf16" (the last two with TTT_F32 only; bf16 not with Muon) */
  const char* device;        /* "cuda" */
  int32_t device_index;
  void* stream;
  const void* inputs[10];    /* w0, w1, w2, q, k, v, lr0, lr1, lr2, momentum */
} ttt_lact_device_call;

typedef struct ttt_lact_run ttt_lact_run;

/* Enqueues the forward, writing o [B,T,d]; with with_grad != 0 the run keeps what its backward needs (the inputs
 * must then stay alive and unchanged until ttt_lact_device_backward). On success *run holds the run: free it with
 * ttt_lact_run_free (after the backward, or instead of it). */
const char* ttt_lact_device_forward(const ttt_lact_device_call* call, void* o, int32_t with_grad, ttt_lact_run** run);
/* Enqueues the gradients of sum(o * grad_o) into grads (the inputs' order and shapes; grads[9] NULL without
 * momentum), once per run, on the stream given to the forward. */
const char* ttt_lact_device_backward(ttt_lact_run* run, const void* grad_o, void* const grads[10]);
void ttt_lact_run_free(ttt_lact_run* run);

int32_t ttt_outputs_count(const ttt_outputs* outputs);
/* Output i (0 <= i < count) as a ttt_tensor view (name, dtype, shape and data owned by `outputs`). */
const char* ttt_outputs_get(const ttt_outputs* outputs, int32_t i, ttt_tensor* view);
void ttt_outputs_free(ttt_outputs* outputs);

#ifdef __cplusplus
}
#endif
#endif /* TTT_CAPI_H */
