"""ttt's memory operators as differentiable torch functions, run by the engine itself.

    from ttt_torch import ops
    o = ops.lact_swiglu(w0, w1, w2, q, k, v, lr0, lr1, lr2, chunk_size=2048, use_muon=False, momentum=None)
    o = ops.tnt(q, k, v, global_memory=(w1, w2, theta, eta, alpha), local_memories=[...], local_chunks=[8])

Both are torch.autograd.Functions whose forward and backward call ttt's operators (`ttt op lact|tnt`: the
CUDA kernels for tensors on a GPU, the CPU twin otherwise) through the C ABI of libttt_capi.so, a library built
with the engine from the same sources (CMake target ttt_capi; src/capi/ttt_capi.h). No extension is compiled
against torch: the library is found, in this order, at $TTT_CAPI_LIB, next to this file, or in a build folder
of the source tree this package sits in (build*/libttt_capi.so).

Data path (docs/ARCHITECTURE.md, "From PyTorch"): lact_swiglu on GPU tensors hands the device pointers and torch's
current stream to the CUDA operator (nothing through the host, only dtype conversions and contiguous copies on the
GPU where needed; the forward keeps its chunk-boundary states for the backward). Everything else (CPU tensors, tnt,
or TTT_OPS_STAGING=host) goes through host memory: the tensors are copied there (compute dtype, C-contiguous), the
operator runs (on a GPU the CUDA backend copies them to the device and back), the results come back to the inputs'
device, and the backward recomputes the forward.
"""
import ctypes
import glob
import json
import math
import os

import torch
from torch.autograd.function import once_differentiable

__all__ = ["lact_swiglu", "tnt", "library_path", "available_devices", "OpError"]

CAPI_VERSION = 2  # TTT_CAPI_VERSION of src/capi/ttt_capi.h
_F32, _F64 = 0, 1
_CODE_OF = {torch.float32: _F32, torch.float64: _F64}
_DTYPE_OF = {_F32: torch.float32, _F64: torch.float64}
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class OpError(RuntimeError):
    """The engine refused a call or failed (its message names the tensor, option or device), or the library is
    missing or of another version."""


class _Tensor(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("dtype", ctypes.c_int32), ("ndim", ctypes.c_int32),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("data", ctypes.c_void_p)]


class _LactDeviceCall(ctypes.Structure):  # ttt_lact_device_call of src/capi/ttt_capi.h
    _fields_ = [("B", ctypes.c_int64), ("T", ctypes.c_int64), ("d", ctypes.c_int64), ("dh", ctypes.c_int64),
                ("chunk", ctypes.c_int64), ("dtype", ctypes.c_int32), ("muon", ctypes.c_int32),
                ("weight_norm", ctypes.c_char_p), ("precision", ctypes.c_char_p), ("device", ctypes.c_char_p),
                ("device_index", ctypes.c_int32), ("stream", ctypes.c_void_p), ("inputs", ctypes.c_void_p * 10)]


_lib = None


def library_path():
    """Where libttt_capi.so is taken from: $TTT_CAPI_LIB, else next to this package, else the newest
    build*/libttt_capi.so of the source tree around it. None when none of them exists."""
    env = os.environ.get("TTT_CAPI_LIB")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    beside = os.path.join(here, "libttt_capi.so")
    if os.path.isfile(beside):
        return beside
    built = glob.glob(os.path.join(here, "..", "..", "build*", "libttt_capi.so"))
    return os.path.realpath(max(built, key=os.path.getmtime)) if built else None


def _library():
    global _lib
    if _lib is not None:
        return _lib
    path = library_path()
    if path is None:
        raise OpError("ttt_torch.ops: libttt_capi.so not found: build it with the engine (cmake --build BUILD "
                      "--target ttt_capi) and set TTT_CAPI_LIB=BUILD/libttt_capi.so, or copy it next to "
                      f"{os.path.dirname(os.path.abspath(__file__))}/__init__.py")
    if not os.path.isfile(path):
        raise OpError(f"ttt_torch.ops: TTT_CAPI_LIB={path}: no such file")
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise OpError(f"ttt_torch.ops: cannot load {path}: {e}") from None
    lib.ttt_capi_version.restype = ctypes.c_int32
    version = lib.ttt_capi_version()
    if version != CAPI_VERSION:
        raise OpError(f"ttt_torch.ops: {path} has C ABI version {version}; this ttt_torch needs version "
                      f"{CAPI_VERSION} (rebuild the library from the same checkout)")
    lib.ttt_capi_devices.restype = ctypes.c_char_p
    lib.ttt_op_run.restype = ctypes.c_char_p
    lib.ttt_op_run.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int32,
                               ctypes.POINTER(_Tensor), ctypes.c_int32, ctypes.POINTER(ctypes.c_void_p)]
    lib.ttt_lact_device_forward.restype = ctypes.c_char_p
    lib.ttt_lact_device_forward.argtypes = [ctypes.POINTER(_LactDeviceCall), ctypes.c_void_p, ctypes.c_int32,
                                            ctypes.POINTER(ctypes.c_void_p)]
    lib.ttt_lact_device_backward.restype = ctypes.c_char_p
    lib.ttt_lact_device_backward.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p * 10]
    lib.ttt_lact_run_free.restype = None
    lib.ttt_lact_run_free.argtypes = [ctypes.c_void_p]
    lib.ttt_outputs_count.restype = ctypes.c_int32
    lib.ttt_outputs_count.argtypes = [ctypes.c_void_p]
    lib.ttt_outputs_get.restype = ctypes.c_char_p
    lib.ttt_outputs_get.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.POINTER(_Tensor)]
    lib.ttt_outputs_free.restype = None
    lib.ttt_outputs_free.argtypes = [ctypes.c_void_p]
    _lib = lib
    return lib


def available_devices():
    """The devices the library was built with and this machine has: ["cpu"] or ["cpu", "cuda"]."""
    return _library().ttt_capi_devices().decode().split(",")


def _run(op, options, tensors, device):
    """Runs operator `op` on named tensors (host, C-contiguous, float32/float64) on `device` (a torch.device);
    returns the named outputs as host tensors."""
    lib = _library()
    keep = []  # the names and shape arrays live until the call returns
    arr = (_Tensor * len(tensors))()
    for i, (name, t) in enumerate(tensors.items()):
        shape = (ctypes.c_int64 * t.dim())(*t.shape)
        encoded = name.encode()
        keep += [shape, encoded]
        arr[i] = _Tensor(encoded, _CODE_OF[t.dtype], t.dim(), shape, t.data_ptr())
    index = 0 if device.type == "cpu" else (device.index if device.index is not None else
                                             torch.cuda.current_device())
    handle = ctypes.c_void_p()
    err = lib.ttt_op_run(op.encode(), json.dumps(options).encode(), device.type.encode(), index, arr, len(tensors),
                         ctypes.byref(handle))
    if err is not None:
        raise OpError(f"ttt_torch.ops.{_PUBLIC_NAME[op]}: {err.decode(errors='replace')}")
    try:
        out = {}
        view = _Tensor()
        for i in range(lib.ttt_outputs_count(handle)):
            err = lib.ttt_outputs_get(handle, i, ctypes.byref(view))
            if err is not None:
                raise OpError(f"ttt_torch.ops: {err.decode(errors='replace')}")
            t = torch.empty([view.shape[j] for j in range(view.ndim)], dtype=_DTYPE_OF[view.dtype])
            ctypes.memmove(t.data_ptr(), view.data, t.numel() * t.element_size())
            out[view.name.decode()] = t
        return out
    finally:
        lib.ttt_outputs_free(handle)


_PUBLIC_NAME = {"lact": "lact_swiglu", "tnt": "tnt"}


def _check_tensor(fn, name, t, ndim, device):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: '{name}' must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOATS:
        raise TypeError(f"{fn}: '{name}' has dtype {t.dtype}; allowed: float16, bfloat16, float32, float64")
    if t.dim() not in ndim:
        raise ValueError(f"{fn}: '{name}' must have {' or '.join(map(str, ndim))} dimensions, got shape "
                         f"{list(t.shape)}")
    if t.device != device:
        raise ValueError(f"{fn}: '{name}' is on {t.device} but '{_FIRST[fn]}' is on {device}; all tensors must be on "
                         f"one device")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{fn}: tensors on {device} are not supported (cpu or cuda)")


_FIRST = {"lact_swiglu": "w0", "tnt": "q"}


def _expect(fn, name, t, shape, meaning):
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{fn}: '{name}' must be {meaning} = {list(shape)}, got {list(t.shape)}")


def _compute_dtype(tensors):
    # float64 when any input is float64 (gradcheck, reference checks); float32 otherwise (half-precision inputs
    # are widened: the engine's state and math are fp32, its CUDA products follow `precision`).
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _is_rate(name):  # one value per token and sequence-head: [b, l, 1] (the public convention) or [b, l]
    return name.startswith("lr") or name == "momentum" or name.endswith(("theta", "eta", "alpha"))


def _host_inputs(names, inputs, grad_o=None):
    """The operator's named inputs as the engine takes them: host memory, C-contiguous (copies of strided views
    such as the public layer's lr chunks), the compute dtype, rates as [b, l]; plus grad_o when given."""
    dtype = _compute_dtype(inputs)
    named = {}
    for n, t in zip(names, inputs):
        if _is_rate(n):
            t = t.reshape(t.shape[0], t.shape[1])
        named[n] = t.detach().to(device="cpu", dtype=dtype).contiguous()
    if grad_o is not None:
        named["grad_o"] = grad_o.detach().to(device="cpu", dtype=dtype).contiguous()
    return named


def _staged(device):
    """Whether tensors on `device` travel through host memory (the CPU; TTT_OPS_STAGING=host forces it for GPU
    tensors too, e.g. to compare the two paths) rather than being handed to the operator where they are."""
    staging = os.environ.get("TTT_OPS_STAGING", "")
    if staging not in ("", "host"):
        raise OpError(f"ttt_torch.ops: TTT_OPS_STAGING={staging!r}: the only setting is 'host' (unset: GPU tensors "
                      f"go to the operator directly)")
    return device.type != "cuda" or staging == "host"


class _DeviceRun:
    """The direct GPU path of one lact_swiglu call: the forward's ttt_lact_run (its state on the GPU, kept for the
    backward and freed by it or with this object), the arrays the operator reads and the call that started it. A
    second backward of the same graph (retain_graph, gradcheck) starts the run again: a run has one backward."""

    def __init__(self, lib, call, arrays):
        self.lib, self.call, self.arrays, self.handle = lib, call, arrays, None

    def start(self, o, with_grad):
        handle = ctypes.c_void_p()
        err = self.lib.ttt_lact_device_forward(ctypes.byref(self.call), o.data_ptr(), int(with_grad),
                                               ctypes.byref(handle))
        if err is not None:
            raise OpError(f"ttt_torch.ops.lact_swiglu: {err.decode(errors='replace')}")
        if with_grad:
            self.handle = handle
        else:
            self.lib.ttt_lact_run_free(handle)

    def backward(self, grad_o):
        if not self.handle:
            self.start(torch.empty_like(self.arrays[5]), True)  # the forward again, for this backward
        grads = [torch.empty_like(a) for a in self.arrays]
        pointers = (ctypes.c_void_p * 10)(*[g.data_ptr() for g in grads])
        g_o = grad_o.detach().to(self.arrays[3].dtype).contiguous()
        err = self.lib.ttt_lact_device_backward(self.handle, g_o.data_ptr(), pointers)
        self.free()
        if err is not None:
            raise OpError(f"ttt_torch.ops.lact_swiglu: {err.decode(errors='replace')}")
        return grads

    def free(self):
        if self.handle:
            self.lib.ttt_lact_run_free(self.handle)
        self.handle = None

    def __del__(self):
        self.free()


def _lact_device_forward(options, names, inputs, with_grad):
    """o of the LaCT operator on GPU tensors, without copies through the host; the run for the backward."""
    dtype = _compute_dtype(inputs)
    arrays = [(t.reshape(t.shape[0], t.shape[1]) if _is_rate(n) else t).detach().to(dtype).contiguous()
              for n, t in zip(names, inputs)]
    w0, q = arrays[0], arrays[3]
    device = q.device
    call = _LactDeviceCall(B=q.shape[0], T=q.shape[1], d=q.shape[2], dh=w0.shape[1], chunk=options["chunk"],
                           dtype=_CODE_OF[dtype], muon=int(options["muon"]),
                           weight_norm=options["weight_norm"].encode(), precision=options["precision"].encode(),
                           device=b"cuda", device_index=device.index,
                           stream=torch.cuda.current_stream(device).cuda_stream)
    for i, t in enumerate(arrays):
        call.inputs[i] = t.data_ptr()
    run = _DeviceRun(_library(), call, arrays)
    o = torch.empty(q.shape, dtype=dtype, device=device)
    run.start(o, with_grad)
    return o, (run if with_grad else None)


class _LactFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, options, w0, w1, w2, q, k, v, lr0, lr1, lr2, momentum):
        names = ["w0", "w1", "w2", "q", "k", "v", "lr0", "lr1", "lr2"] + (["momentum"] if momentum is not None else [])
        inputs = [w0, w1, w2, q, k, v, lr0, lr1, lr2] + ([momentum] if momentum is not None else [])
        ctx.options, ctx.names = options, names
        ctx.save_for_backward(*inputs)
        ctx.run = None
        if not _staged(q.device):
            o, ctx.run = _lact_device_forward(options, names, inputs, any(ctx.needs_input_grad))
            _require_finite("lact_swiglu", {"o": o}, dict(zip(names, inputs)))
            return o.to(v.dtype)
        named = _host_inputs(names, inputs)
        o = _run("lact", options, named, q.device)["o"]
        _require_finite("lact_swiglu", {"o": o}, named)
        return o.to(device=v.device, dtype=v.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_o):
        inputs = ctx.saved_tensors
        if ctx.run is not None:  # the forward took the direct GPU path
            out = {"grad_" + n: g for n, g in zip(ctx.names, ctx.run.backward(grad_o))}
            named = dict(zip(ctx.names, inputs))
        else:
            named = _host_inputs(ctx.names, inputs, grad_o)
            out = _run("lact", ctx.options, named, inputs[0].device)
        _require_finite("lact_swiglu", {n: out["grad_" + n] for n in ctx.names}, named)
        grads = [out["grad_" + n].reshape(t.shape).to(device=t.device, dtype=t.dtype) if need else None
                 for n, t, need in zip(ctx.names, inputs, ctx.needs_input_grad[1:])]
        if len(grads) == 9:
            grads.append(None)  # no momentum
        return (None, *grads)


def _require_finite(fn, outputs, inputs):
    """A NaN/Inf result from finite inputs (the engine checks the inputs) is an overflow: say so, never hand it on."""
    bad = [n for n, t in outputs.items() if not torch.isfinite(t).all()]
    if bad:
        for n, t in inputs.items():  # the GPU path hands inputs over unchecked: name a non-finite one
            if not torch.isfinite(t).all():
                raise OpError(f"ttt_torch.ops.{fn}: input '{n}' contains NaN or Inf")
        largest = max(inputs.items(), key=lambda kv: float(kv[1].abs().max()) if kv[1].numel() else 0.0)
        raise OpError(f"ttt_torch.ops.{fn}: {', '.join(repr(n) for n in bad)} {'holds' if len(bad) == 1 else 'hold'} "
                      f"NaN/Inf although every input is finite: the "
                      f"arithmetic overflowed (largest input magnitude {float(largest[1].abs().max()):g}, in "
                      f"'{largest[0]}'); scale the inputs down or use float64")


def lact_swiglu(w0, w1, w2, q, k, v, lr0, lr1, lr2, chunk_size=2048, use_muon=False, momentum=None,
                weight_norm="post", precision="fp32"):
    """ttt's LaCT operator with the calling convention of the public `block_causal_lact_swiglu`
    (github a1600012888/LaCT, lact_llm/lact_model/ttt_operation.py): block-causal (apply then update, the last
    chunk apply-only), SwiGLU fast weights f(x) = w1 (silu(w0 x) * (w2 x)), per-token rates.

    w0 [b, dh, d], w1 [b, d, dh], w2 [b, dh, d]: initial fast weights per sequence-head (b = batch * heads);
    q, k, v [b, l, d]; lr0, lr1, lr2 [b, l, 1] (or [b, l]); momentum: None or [b, l, 1] (or [b, l]), the gate
    whose chunk mean scales the previous update. chunk_size: tokens per chunk; use_muon: Newton-Schulz (NS5)
    orthogonalization of each update; weight_norm: "post" (block_causal_lact_swiglu: rows renormalized to the
    initial row norms after each update), "pre" (prenorm_block_causal_lact_swiglu), or "none".
    precision (CUDA, float32 compute): the matrix products in "fp32" | "tf32" | "bf16" (bf16 operands, fp32
    accumulation and state); the CPU computes in the compute dtype.

    Returns o [b, l, d] in v's dtype. Compute dtype: float64 when any input is float64, else float32 (bf16 and
    fp16 inputs are widened); each gradient comes back in its input's dtype. Differentiable in every tensor
    (first order)."""
    fn = "lact_swiglu"
    device = w0.device if isinstance(w0, torch.Tensor) else None
    tensors = {"w0": w0, "w1": w1, "w2": w2, "q": q, "k": k, "v": v, "lr0": lr0, "lr1": lr1, "lr2": lr2}
    if momentum is not None:
        tensors["momentum"] = momentum
    for name, t in tensors.items():
        _check_tensor(fn, name, t, (2, 3) if _is_rate(name) else (3,), device)
    b, dh, d = w0.shape
    if q.dim() != 3 or q.shape[0] != b or q.shape[2] != d:
        raise ValueError(f"{fn}: 'q' must be [b, l, d] = [{b}, l, {d}] (b and d of w0 [b, dh, d]), got "
                         f"{list(q.shape)}")
    l = q.shape[1]
    _expect(fn, "w1", w1, (b, d, dh), "[b, d, dh]")
    _expect(fn, "w2", w2, (b, dh, d), "[b, dh, d]")
    _expect(fn, "k", k, (b, l, d), "[b, l, d]")
    if tuple(v.shape) != (b, l, d):
        raise ValueError(f"{fn}: 'v' must be [b, l, d] = {[b, l, d]}, got {list(v.shape)} (ttt's operator maps "
                         f"d inputs to d outputs: the key and value widths must be equal)")
    for name in ("lr0", "lr1", "lr2", "momentum"):
        if name in tensors and tuple(tensors[name].shape) not in ((b, l, 1), (b, l)):
            raise ValueError(f"{fn}: '{name}' must be [b, l, 1] = {[b, l, 1]} or [b, l] = {[b, l]}, got "
                             f"{list(tensors[name].shape)} (one rate per token and sequence-head)")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{fn}: chunk_size must be a positive int, got {chunk_size!r}")
    if weight_norm not in ("post", "pre", "none"):
        raise ValueError(f"{fn}: weight_norm must be 'post', 'pre' or 'none', got {weight_norm!r}")
    if precision not in ("fp32", "tf32", "bf16"):
        raise ValueError(f"{fn}: precision must be 'fp32', 'tf32' or 'bf16', got {precision!r}")
    options = {"chunk": chunk_size, "program": "causal", "weight_norm": weight_norm, "muon": bool(use_muon),
               "precision": precision}
    return _LactFunction.apply(options, w0, w1, w2, q, k, v, lr0, lr1, lr2, momentum)


_MEMORY_FIELDS = ("w1", "w2", "theta", "eta", "alpha")


class _TntFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, options, names, *inputs):
        ctx.options, ctx.names = options, names
        ctx.save_for_backward(*inputs)
        named = _host_inputs(names, inputs)
        o = _run("tnt", options, named, inputs[0].device)["o"]
        _require_finite("tnt", {"o": o}, named)
        return o.to(device=inputs[0].device, dtype=inputs[0].dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_o):
        inputs = ctx.saved_tensors
        named = _host_inputs(ctx.names, inputs, grad_o)
        out = _run("tnt", ctx.options, named, inputs[0].device)
        _require_finite("tnt", {n: out["grad_" + n] for n in ctx.names}, named)
        grads = [out["grad_" + n].reshape(t.shape).to(device=t.device, dtype=t.dtype) if need else None
                 for n, t, need in zip(ctx.names, inputs, ctx.needs_input_grad[2:])]
        return (None, None, *grads)


def tnt(q, k, v, global_memory=None, local_memories=(), global_chunk=2048, local_chunks=None, shard=2048,
        qk_proj=True):
    """ttt's TNT memory branch (docs/ALGORITHMS.md §6; `ttt op tnt`): one global Titans memory, causal chunked with
    chunk global_chunk over the whole sequence, plus one local memory per entry of local_memories, each causal
    chunked with its own chunk (local_chunks, in the same order) and reset to its initial weights at every
    multiple of `shard` tokens (0: never), read with Q-K projected queries when qk_proj.
    o_t = M_G(q_t) + sum_i M_L^(i)(q~^(i)_t).

    q, k, v [b, l, d] (b = batch * heads). A memory is a tuple (w1, w2, theta, eta, alpha) (or a dict with those
    keys): w1 [b, dh, d], w2 [b, d, dh] (the MLP f(x) = x + w2 silu(w1 x); each memory may have its own dh), and
    per-token gates [b, l, 1] or [b, l]: theta the rate, eta the momentum gate, alpha the decay. global_memory
    None: no global memory. Returns o [b, l, d] in q's dtype; compute dtype and gradients as lact_swiglu."""
    fn = "tnt"
    device = q.device if isinstance(q, torch.Tensor) else None
    local_memories = list(local_memories)
    local_chunks = [] if local_chunks is None else list(local_chunks)
    if len(local_chunks) != len(local_memories):
        raise ValueError(f"{fn}: local_chunks has {len(local_chunks)} entries but there are {len(local_memories)} "
                         f"local memories (one chunk size per local memory)")
    for c in local_chunks + ([global_chunk] if global_memory is not None else []):
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ValueError(f"{fn}: chunk sizes must be positive ints, got {c!r}")
    if isinstance(shard, bool) or not isinstance(shard, int) or shard < 0:
        raise ValueError(f"{fn}: shard must be an int >= 0 (0: never reset), got {shard!r}")
    if global_memory is None and not local_memories:
        raise ValueError(f"{fn}: no memory: give global_memory, local_memories or both")
    tensors = {"q": q, "k": k, "v": v}
    memories = ([("g_", "global_memory", global_memory)] if global_memory is not None else []) + \
        [(f"l{i}_", f"local_memories[{i}]", m) for i, m in enumerate(local_memories)]
    for prefix, label, m in memories:
        if isinstance(m, dict):
            unknown = set(m) - set(_MEMORY_FIELDS)
            if unknown or len(m) != len(_MEMORY_FIELDS):
                raise ValueError(f"{fn}: {label} must have the keys {', '.join(_MEMORY_FIELDS)}, got "
                                 f"{', '.join(sorted(m))}")
            m = [m[f] for f in _MEMORY_FIELDS]
        if not isinstance(m, (tuple, list)) or len(m) != len(_MEMORY_FIELDS):
            raise ValueError(f"{fn}: {label} must be a tuple (w1, w2, theta, eta, alpha)")
        for f, t in zip(_MEMORY_FIELDS, m):
            tensors[prefix + f] = t
    labels = {p + f: f"{label}.{f}" for p, label, _ in memories for f in _MEMORY_FIELDS}
    for name, t in tensors.items():
        _check_tensor(fn, labels.get(name, name), t, (2, 3) if _is_rate(name) else (3,), device)
    b, l, d = q.shape
    _expect(fn, "k", k, (b, l, d), "[b, l, d]")
    _expect(fn, "v", v, (b, l, d), "[b, l, d]")
    for prefix, label, _ in memories:
        w1 = tensors[prefix + "w1"]
        if w1.shape[0] != b or w1.shape[2] != d:
            raise ValueError(f"{fn}: '{label}.w1' must be [b, dh, d] = [{b}, dh, {d}], got {list(w1.shape)}")
        _expect(fn, f"{label}.w2", tensors[prefix + "w2"], (b, d, w1.shape[1]), "[b, d, dh]")
        for f in ("theta", "eta", "alpha"):
            if tuple(tensors[prefix + f].shape) not in ((b, l, 1), (b, l)):
                raise ValueError(f"{fn}: '{label}.{f}' must be [b, l, 1] = {[b, l, 1]} or [b, l] = {[b, l]}, got "
                                 f"{list(tensors[prefix + f].shape)}")
    options = {"use_global": global_memory is not None, "global_chunk": global_chunk if global_memory is not None
               else 2048, "local_chunks": local_chunks, "shard": shard, "qk_proj": bool(qk_proj)}
    names = list(tensors)
    return _TntFunction.apply(options, names, *[tensors[n] for n in names])
