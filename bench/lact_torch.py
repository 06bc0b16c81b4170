#!/usr/bin/env python3
"""Independent PyTorch implementation of the LaCT memory operator (docs/ALGORITHMS.md,
sections 2-5 and 7).

It serves two purposes:
  * the float64 reference that `ttt op lact` is checked against (tests/reference/check_op_lact.py);
  * the PyTorch baseline for GPU benchmarks (eager or under torch.compile).

Operator, per sequence-head b (all batched over b; Python loops only run over chunks):
  SwiGLU memory   f_W(x) = W1 (silu(W0 x) * (W2 x));  rows as tokens: Y = (silu(X W0^T) * (X W2^T)) W1^T
  inner loss      l_t = -<f_W(k_t), v_t>   (dot product), update direction -sum_t lr_t grad l_t
  then            momentum (S <- dW + mean(m) S; dW <- S), Muon (NS5), step, weight norm (post|pre|none)
  pre-norm        as the public prenorm operator: an accumulator starts at W0 and takes the steps; the weights
                  used (to apply and to take the inner gradient) are W0 itself until the first update, then the
                  accumulator with each row rescaled to its W0 norm
  programs        causal: per chunk apply then update (last chunk apply-only);
                  bidirectional: per chunk update then apply.

The gradients of sum(o * grad_o) with respect to every input come from torch autograd through the whole
forward (second order through every update), which is what `ttt op lact` computes with grad_o given.

Runs on torch 1.13 (CPU) and torch 2.x (CUDA). The CLI reads and writes safetensors files without the
safetensors package (a small reader/writer below).
"""
import argparse
import json
import struct
import sys

import torch
import torch.nn.functional as F

# Newton-Schulz (quintic) coefficients, docs/ALGORITHMS.md section 3.2.
NS5_COEFFS = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)
ROWNORM_EPS = 1e-5
NS5_EPS = 1e-7

INPUT_NAMES = ("w0", "w1", "w2", "q", "k", "v", "lr0", "lr1", "lr2", "momentum")


def _t(x):
    """Transpose the last two dimensions."""
    return x.transpose(-1, -2)


def _bmm(a, b, mm_dtype=None):
    """torch.bmm, or with mm_dtype (e.g. torch.bfloat16) on operands cast to it, the result back in a's dtype.

    The bf16 mode of the GPU benchmark: matrix-product operands in bf16 (the products accumulate in fp32 inside
    cuBLAS; torch rounds their results to bf16 before the cast back), everything else (fast-weight state,
    momentum, weight norm, NS5 combination, element-wise math) in the inputs' dtype (fp32). No autocast.
    """
    if mm_dtype is None or a.dtype == mm_dtype:
        return torch.bmm(a, b)
    return torch.bmm(a.to(mm_dtype), b.to(mm_dtype)).to(a.dtype)


def swiglu_apply(w0, w1, w2, x, mm_dtype=None):
    """f_W for a batch of token rows. w0, w2: [B,dh,d]; w1: [B,d,dh]; x: [B,n,d] -> [B,n,d]."""
    g = _bmm(x, _t(w0), mm_dtype)
    h = _bmm(x, _t(w2), mm_dtype)
    return _bmm(F.silu(g) * h, _t(w1), mm_dtype)


def chunk_update_direction(w0, w1, w2, k, v, lr0, lr1, lr2, mm_dtype=None):
    """Update direction dW_i = -sum_t lr_i,t grad_{W_i} l_t for one chunk, closed form (docs/ALGORITHMS.md section 3.1).

    k, v: [B,n,d]; lr*: [B,n]. Returns (dW0 [B,dh,d], dW1 [B,d,dh], dW2 [B,dh,d]).
    """
    g = _bmm(k, _t(w0), mm_dtype)                 # [B,n,dh]
    h = _bmm(k, _t(w2), mm_dtype)                 # [B,n,dh]
    sg = torch.sigmoid(g)
    silu_g = g * sg
    dsilu_g = sg * (1.0 + g * (1.0 - sg))
    a = silu_g * h                                # [B,n,dh]
    # e = dl/dy = -v; da = e W1 = -(v W1). The minus signs of e and of the step cancel.
    u = _bmm(v, w1, mm_dtype)                     # [B,n,dh]  (u_t = W1^T v_t)
    dw1 = _bmm(_t(v * lr1.unsqueeze(-1)), a, mm_dtype)                    # sum lr1 v a^T
    dw0 = _bmm(_t(u * h * dsilu_g * lr0.unsqueeze(-1)), k, mm_dtype)      # sum lr0 (u*h*silu'(g)) k^T
    dw2 = _bmm(_t(u * silu_g * lr2.unsqueeze(-1)), k, mm_dtype)           # sum lr2 (u*silu(g)) k^T
    return dw0, dw1, dw2


def ns5(x, mm_dtype=None):
    """Muon orthogonalization of a batch of matrices [B,r,c] in the input dtype (docs/ALGORITHMS.md section 3.2)."""
    transposed = x.shape[-2] > x.shape[-1]
    if transposed:
        x = _t(x)
    norm = torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True)
    x = x / (norm + NS5_EPS)
    for a, b, c in NS5_COEFFS:
        A = _bmm(x, _t(x), mm_dtype)
        Bm = b * A + c * _bmm(A, A, mm_dtype)
        x = a * x + _bmm(Bm, x, mm_dtype)
    if transposed:
        x = _t(x)
    return x


def row_normalize(w, target):
    """w[r,:] / (||w[r,:]|| + 1e-5) * target[r] for a batch [B,rows,cols]; target [B,rows,1]."""
    return w / (torch.linalg.vector_norm(w, dim=-1, keepdim=True) + ROWNORM_EPS) * target


def lact_forward(w0, w1, w2, q, k, v, lr0, lr1, lr2, momentum=None, chunk=64, program="causal",
                 weight_norm="post", muon=False, mm_dtype=None):
    """The LaCT memory operator. Returns o [B,T,d].

    w0 [B,dh,d], w1 [B,d,dh], w2 [B,dh,d]: initial fast weights per sequence-head;
    q, k, v [B,T,d]; lr0, lr1, lr2 [B,T]; momentum [B,T] or None (gate m_t in (0,1); None = no momentum).
    chunk: tokens per chunk (the last chunk may be shorter); program: "causal" | "bidirectional";
    weight_norm: "post" | "pre" | "none"; muon: Newton-Schulz orthogonalization of each update.
    mm_dtype: None (products in the inputs' dtype) or e.g. torch.bfloat16: the operands of every matrix product
    cast to it, state and all other math in the inputs' dtype (the bf16 benchmark mode).
    """
    if program not in ("causal", "bidirectional"):
        raise ValueError(f"unknown program {program!r}")
    if weight_norm not in ("post", "pre", "none"):
        raise ValueError(f"unknown weight_norm {weight_norm!r}")
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    B, T, d = q.shape

    targets = None
    if weight_norm != "none":
        targets = [torch.linalg.vector_norm(w, dim=-1, keepdim=True) for w in (w0, w1, w2)]

    # state: the weights themselves (post / none) or the unnormalized accumulator (pre), which starts at W0.
    state = [w0, w1, w2]
    mom_state = [None, None, None]

    def effective(state, updated):
        # Pre-norm as the public prenorm LaCT operator: W0 itself (unnormalized) until the first update, the
        # row-normalized copy of the accumulator after it.
        if weight_norm == "pre" and updated:
            return [row_normalize(s, tg) for s, tg in zip(state, targets)]
        return state

    def update(state, mom_state, eff, s, e):
        dws = chunk_update_direction(eff[0], eff[1], eff[2], k[:, s:e], v[:, s:e],
                                     lr0[:, s:e], lr1[:, s:e], lr2[:, s:e], mm_dtype)
        if momentum is not None:
            mbar = momentum[:, s:e].mean(dim=1).view(B, 1, 1)
            dws = [dw if S is None else dw + mbar * S for dw, S in zip(dws, mom_state)]
            mom_state = list(dws)
        if muon:
            dws = [ns5(dw, mm_dtype) for dw in dws]
        state = [w + dw for w, dw in zip(state, dws)]
        if weight_norm == "post":
            state = [row_normalize(w, tg) for w, tg in zip(state, targets)]
        return state, mom_state

    outs = []
    eff = effective(state, updated=False)
    for s in range(0, T, chunk):
        e = min(s + chunk, T)
        if program == "causal":
            outs.append(swiglu_apply(eff[0], eff[1], eff[2], q[:, s:e], mm_dtype))
            if e < T:
                state, mom_state = update(state, mom_state, eff, s, e)
                eff = effective(state, updated=True)
        else:
            state, mom_state = update(state, mom_state, eff, s, e)
            eff = effective(state, updated=True)
            outs.append(swiglu_apply(eff[0], eff[1], eff[2], q[:, s:e], mm_dtype))
    return torch.cat(outs, dim=1)


def lact_forward_backward(inputs, grad_o, **opts):
    """Forward plus gradients of sum(o * grad_o) w.r.t. every tensor in `inputs` (a dict of INPUT_NAMES).

    Returns (o, {name: grad}) with zeros for inputs the output does not depend on.
    """
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in inputs.items()}
    o = lact_forward(**leaves, **opts)
    names = list(leaves)
    grads = torch.autograd.grad(o, [leaves[n] for n in names], grad_outputs=grad_o, allow_unused=True)
    out = {}
    for n, g in zip(names, grads):
        out[n] = torch.zeros_like(leaves[n]) if g is None else g
    return o.detach(), {n: g.detach() for n, g in out.items()}


def random_inputs(B, T, d, dh, dtype=torch.float64, device="cpu", with_momentum=True, with_grad_o=True,
                  seed=0):
    """Seeded random inputs at moderate scales (nothing blows up over many chunks)."""
    gen = torch.Generator().manual_seed(seed)

    def normal(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype=dtype, device=device)

    def uniform(lo, hi, *shape):
        return (lo + (hi - lo) * torch.rand(*shape, generator=gen, dtype=torch.float64)).to(dtype=dtype,
                                                                                            device=device)

    x = {
        "w0": normal(B, dh, d, scale=d ** -0.5),
        "w1": normal(B, d, dh, scale=dh ** -0.5),
        "w2": normal(B, dh, d, scale=d ** -0.5),
        "q": normal(B, T, d, scale=0.5),
        "k": normal(B, T, d, scale=0.5),
        "v": normal(B, T, d, scale=0.5),
        "lr0": uniform(0.01, 0.1, B, T),
        "lr1": uniform(0.01, 0.1, B, T),
        "lr2": uniform(0.01, 0.1, B, T),
    }
    if with_momentum:
        x["momentum"] = uniform(0.5, 0.95, B, T)
    if with_grad_o:
        x["grad_o"] = normal(B, T, d)
    return x


# ----------------------------------------------------------------------------------------------------------
# Minimal safetensors reader / writer (no dependency on the safetensors package).
# Format: u64 little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}},
# optional "__metadata__", then the raw little-endian data.

_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


def load_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError(f"{path}: file too short for a safetensors header")
    (n,) = struct.unpack("<Q", blob[:8])
    if 8 + n > len(blob):
        raise ValueError(f"{path}: header length {n} runs past the end of the file")
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = blob[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = info["dtype"]
        if dt not in _ST_DTYPES:
            raise ValueError(f"{path}: tensor {name}: unsupported dtype {dt}")
        begin, end = info["data_offsets"]
        shape = list(info["shape"])
        dtype = _ST_DTYPES[dt]
        numel = 1
        for s in shape:
            numel *= s
        if end - begin != numel * torch.tensor([], dtype=dtype).element_size() or end > len(data):
            raise ValueError(f"{path}: tensor {name}: data_offsets do not match its shape and dtype")
        if numel == 0:
            out[name] = torch.zeros(shape, dtype=dtype)
        else:
            out[name] = torch.frombuffer(bytearray(data[begin:end]), dtype=dtype).reshape(shape).clone()
    return out


def save_safetensors(path, tensors, metadata=None):
    header = {}
    chunks = []
    offset = 0
    for name, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        if t.dtype not in _ST_NAMES:
            raise ValueError(f"tensor {name}: unsupported dtype {t.dtype}")
        if t.dtype in (torch.bfloat16, torch.float16):
            raw = t.view(torch.int16).numpy().astype("<i2").tobytes()
        else:
            raw = t.numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": _ST_NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((8 - len(hjson) % 8) % 8)  # pad so that the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for raw in chunks:
            f.write(raw)


# ----------------------------------------------------------------------------------------------------------
# CLI: the same tensor names as `ttt op lact`.

def _check_inputs(x):
    for n in ("w0", "w1", "w2", "q", "k", "v", "lr0", "lr1", "lr2"):
        if n not in x:
            raise ValueError(f"missing tensor {n}")
    dtype = x["q"].dtype
    for n, t in x.items():
        if t.dtype != dtype:
            raise ValueError(f"tensor {n} has dtype {_ST_NAMES.get(t.dtype, t.dtype)}, "
                             f"expected {_ST_NAMES.get(dtype, dtype)} (dtype of q)")
    if x["q"].dim() != 3:
        raise ValueError(f"tensor q must be [B,T,d], got {list(x['q'].shape)}")
    B, T, d = x["q"].shape
    if x["w0"].dim() != 3:
        raise ValueError(f"tensor w0 must be [B,dh,d], got {list(x['w0'].shape)}")
    dh = x["w0"].shape[1]
    want = {"w0": [B, dh, d], "w1": [B, d, dh], "w2": [B, dh, d], "q": [B, T, d], "k": [B, T, d],
            "v": [B, T, d], "lr0": [B, T], "lr1": [B, T], "lr2": [B, T], "momentum": [B, T],
            "grad_o": [B, T, d]}
    for n, t in x.items():
        if n not in want:
            raise ValueError(f"unexpected tensor {n}")
        if list(t.shape) != want[n]:
            raise ValueError(f"tensor {n} has shape {list(t.shape)}, expected {want[n]}")


def main(argv=None):
    p = argparse.ArgumentParser(description="LaCT memory operator in PyTorch (same files as `ttt op lact`)")
    p.add_argument("--in", dest="inp", required=True, help="input safetensors: w0 w1 w2 q k v lr0 lr1 lr2 "
                   "[momentum] [grad_o]")
    p.add_argument("--out", required=True, help="output safetensors: o [grad_<name> for each input]")
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--program", choices=("causal", "bidirectional"), default="causal")
    p.add_argument("--weight-norm", choices=("post", "pre", "none"), default="post")
    p.add_argument("--muon", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--mm-dtype", choices=("same", "bf16"), default="same",
                   help="bf16: matrix-product operands in bf16, state and other math in the inputs' dtype")
    args = p.parse_args(argv)

    try:
        x = load_safetensors(args.inp)
        _check_inputs(x)
    except (ValueError, KeyError, OSError) as err:
        print(f"lact_torch: {err}", file=sys.stderr)
        return 1
    io_dtype = x["q"].dtype
    compute = io_dtype if io_dtype in (torch.float32, torch.float64) else torch.float32
    x = {n: t.to(device=args.device, dtype=compute) for n, t in x.items()}
    grad_o = x.pop("grad_o", None)
    opts = dict(chunk=args.chunk, program=args.program, weight_norm=args.weight_norm, muon=args.muon,
                mm_dtype=torch.bfloat16 if args.mm_dtype == "bf16" else None)
    if grad_o is None:
        with torch.no_grad():
            result = {"o": lact_forward(**x, **opts)}
    else:
        o, grads = lact_forward_backward(x, grad_o, **opts)
        result = {"o": o}
        result.update({f"grad_{n}": g for n, g in grads.items()})
    save_safetensors(args.out, {n: t.to(io_dtype) for n, t in result.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
