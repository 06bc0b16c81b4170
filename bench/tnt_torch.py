#!/usr/bin/env python3
"""Independent PyTorch implementation of the TNT memory branch (docs/ALGORITHMS.md, sections 2-4, 6 and 7):
the float64 reference that `ttt op tnt` is checked against (tests/reference/check_op_tnt.py).

Branch, per sequence-head b (all batched over b; Python loops run over shards and chunks only):
  memories      Titans MLP  f_W(x) = x + W2 silu(W1 x)  (W1 [dh,d], W2 [d,dh]); rows as tokens:
                Y = X + silu(X W1^T) W2^T
  inner loss    l_t = ||f_W(k_t) - v_t||^2, update direction dW = -grad_W sum_t theta_t l_t, taken by torch
                autograd (create_graph=True, so the outer gradients are second order through every update)
  update        S <- dW + mean_c(eta) S;  W <- (1 - mean_c(alpha)) W + S   (momentum, decay, step)
  program       causal chunked: per chunk apply then update, the last chunk (of the sequence or shard)
                apply-only
  global        one memory, chunk C_G over the whole sequence, never reset, read with q
  local i       chunk C_L[i]; at every multiple of S_L the memory restarts from its own W0 with zero
                momentum and the chunks restart at the shard start; read with q~ (Q-K projection) or q
  Q-K proj.     q~_t = (sum_tau k_tau k_tau^T) q_t / (sum_tau ||k_tau||^2) over the tokens tau of t's shard
                that lie before the chunk of t (the local memory's chunks); q~_t = q_t when that set is
                empty or its keys are all zero. Written here as a masked attention-like product:
                q~ = ((A * (Q K^T)) K) / (A ||k||^2) with A[t,tau] = [shard(t) start <= tau < chunk(t) start].
  output        o = M_G(q) + sum_i M_L[i](q~_i)

Inputs as `ttt op tnt` names them: q, k, v [B,T,d]; g_w1 [B,dh,d], g_w2 [B,d,dh], g_theta, g_eta, g_alpha
[B,T]; l<i>_w1, ... for local memory i; optional grad_o [B,T,d]. Gradients of sum(o * grad_o) from torch
autograd. Runs on torch 1.13 (CPU) and 2.x.
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lact_torch import load_safetensors, save_safetensors  # noqa: E402  (file I/O only)

FIELDS = ("w1", "w2", "theta", "eta", "alpha")


def mlp_apply(w1, w2, x):
    """Titans memory f_W on token rows. w1 [B,dh,d], w2 [B,d,dh], x [B,n,d] -> [B,n,d]."""
    return x + torch.bmm(F.silu(torch.bmm(x, w1.transpose(1, 2))), w2.transpose(1, 2))


def chunk_direction(w1, w2, k, v, theta):
    """dW = -grad_W sum_{b,t} theta_bt ||f_W(k_bt) - v_bt||^2, by autograd (graph kept for the outer pass)."""
    err = mlp_apply(w1, w2, k) - v
    inner = (theta.unsqueeze(-1) * err * err).sum()
    g1, g2 = torch.autograd.grad(inner, (w1, w2), create_graph=True)
    return -g1, -g2


def memory_run(w1, w2, theta, eta, alpha, read, k, v, chunk, shard=None):
    """One Titans memory over the causal chunked program (reset every `shard` tokens if given).

    read: the token rows the memory is applied to (q or q~). Returns o [B,T,d].
    """
    B, T, d = read.shape
    shard = T if not shard or shard >= T else shard
    if not w1.requires_grad:  # the inner gradient needs a graph even when no outer gradient is wanted
        w1 = w1.detach().requires_grad_(True)
    if not w2.requires_grad:
        w2 = w2.detach().requires_grad_(True)
    outs = []
    for s0 in range(0, T, shard):
        s1 = min(T, s0 + shard)
        W1, W2 = w1, w2
        S1 = S2 = None
        for c0 in range(s0, s1, chunk):
            c1 = min(s1, c0 + chunk)
            outs.append(mlp_apply(W1, W2, read[:, c0:c1]))
            if c1 == s1:
                continue  # the last chunk of a shard is apply-only
            d1, d2 = chunk_direction(W1, W2, k[:, c0:c1], v[:, c0:c1], theta[:, c0:c1])
            m = eta[:, c0:c1].mean(dim=1).view(B, 1, 1)
            S1 = d1 if S1 is None else d1 + m * S1
            S2 = d2 if S2 is None else d2 + m * S2
            keep = 1.0 - alpha[:, c0:c1].mean(dim=1).view(B, 1, 1)
            W1 = keep * W1 + S1
            W2 = keep * W2 + S2
    return torch.cat(outs, dim=1)


def visibility_mask(T, chunk, shard, device=None):
    """A[t, tau] = 1 iff tau is in t's shard and before t's chunk (chunks aligned to the shard start)."""
    shard = T if not shard or shard >= T else shard
    t = torch.arange(T, device=device)
    shard_start = (t // shard) * shard
    chunk_start = shard_start + ((t - shard_start) // chunk) * chunk
    tau = torch.arange(T, device=device)
    return (tau.view(1, T) >= shard_start.view(T, 1)) & (tau.view(1, T) < chunk_start.view(T, 1))


def qk_project(q, k, chunk, shard=None):
    """q~ (see the module docstring). q, k [B,T,d] -> [B,T,d]."""
    T = q.shape[1]
    A = visibility_mask(T, chunk, shard, q.device).to(q.dtype)           # [T,T]
    scores = torch.bmm(q, k.transpose(1, 2)) * A                         # [B,T,T]: (k_tau . q_t), masked
    num = torch.bmm(scores, k)                                           # sum_tau k_tau (k_tau . q_t)
    z = torch.matmul(A, (k * k).sum(-1).unsqueeze(-1)).squeeze(-1)       # [B,T]: sum_tau ||k_tau||^2
    nonempty = z > 0
    z_safe = torch.where(nonempty, z, torch.ones_like(z))
    return torch.where(nonempty.unsqueeze(-1), num / z_safe.unsqueeze(-1), q)


def local_names(x):
    """Number of local memories present (l0_, l1_, ...)."""
    n = 0
    while f"l{n}_w1" in x:
        n += 1
    return n


def tnt_forward(x, global_chunk=2048, local_chunks=(8, 16), shard=2048, qk_proj=True, use_global=True):
    """The TNT branch. x: dict of input tensors (names as in the module docstring). Returns o [B,T,d]."""
    q, k, v = x["q"], x["k"], x["v"]
    o = torch.zeros_like(q)
    if use_global:
        o = o + memory_run(x["g_w1"], x["g_w2"], x["g_theta"], x["g_eta"], x["g_alpha"], q, k, v, global_chunk)
    for i, c in enumerate(local_chunks):
        p = f"l{i}_"
        read = qk_project(q, k, c, shard) if qk_proj else q
        o = o + memory_run(x[p + "w1"], x[p + "w2"], x[p + "theta"], x[p + "eta"], x[p + "alpha"], read, k, v, c,
                           shard)
    return o


def tnt_forward_backward(x, grad_o, **opts):
    """Forward plus gradients of sum(o * grad_o) w.r.t. every tensor in x. Returns (o, {name: grad})."""
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in x.items()}
    o = tnt_forward(leaves, **opts)
    names = list(leaves)
    grads = torch.autograd.grad(o, [leaves[n] for n in names], grad_outputs=grad_o, allow_unused=True)
    out = {n: (torch.zeros_like(leaves[n]) if g is None else g.detach()) for n, g in zip(names, grads)}
    return o.detach(), out


def random_inputs(B, T, d, dh, n_local, use_global=True, dtype=torch.float64, with_grad_o=True, seed=0, dhs=None):
    """Seeded random inputs at moderate scales. dhs: optional hidden width per memory (global first)."""
    gen = torch.Generator().manual_seed(seed)

    def normal(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)

    def uniform(lo, hi, *shape):
        return (lo + (hi - lo) * torch.rand(*shape, generator=gen, dtype=torch.float64)).to(dtype)

    x = {"q": normal(B, T, d, scale=0.5), "k": normal(B, T, d, scale=0.5), "v": normal(B, T, d, scale=0.5)}
    prefixes = (["g_"] if use_global else []) + [f"l{i}_" for i in range(n_local)]
    for j, p in enumerate(prefixes):
        h = dhs[j] if dhs else dh
        x[p + "w1"] = normal(B, h, d, scale=d ** -0.5)
        x[p + "w2"] = normal(B, d, h, scale=h ** -0.5)
        x[p + "theta"] = uniform(0.02, 0.2, B, T)
        x[p + "eta"] = uniform(0.3, 0.9, B, T)
        x[p + "alpha"] = uniform(0.01, 0.2, B, T)
    if with_grad_o:
        x["grad_o"] = normal(B, T, d)
    return x


def main(argv=None):
    p = argparse.ArgumentParser(description="TNT memory branch in PyTorch (same files as `ttt op tnt`)")
    p.add_argument("--in", dest="inp", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--global-chunk", type=int, default=2048)
    p.add_argument("--local-chunks", default="8,16")
    p.add_argument("--shard", type=int, default=2048)
    p.add_argument("--qk-proj", choices=("on", "off"), default="on")
    p.add_argument("--no-global", action="store_true")
    args = p.parse_args(argv)
    chunks = [] if args.local_chunks in ("", "none") else [int(c) for c in args.local_chunks.split(",")]
    x = load_safetensors(args.inp)
    io_dtype = x["q"].dtype
    x = {n: t.to(torch.float64 if io_dtype == torch.float64 else torch.float32) for n, t in x.items()}
    if local_names(x) != len(chunks):
        print(f"tnt_torch: the inputs hold {local_names(x)} local memories, --local-chunks gives {len(chunks)}",
              file=sys.stderr)
        return 1
    grad_o = x.pop("grad_o", None)
    opts = dict(global_chunk=args.global_chunk, local_chunks=chunks, shard=args.shard,
                qk_proj=args.qk_proj == "on", use_global=not args.no_global)
    if grad_o is None:
        result = {"o": tnt_forward(x, **opts).detach()}
    else:
        o, grads = tnt_forward_backward(x, grad_o, **opts)
        result = {"o": o}
        result.update({f"grad_{n}": g for n, g in grads.items()})
    save_safetensors(args.out, {n: t.to(io_dtype) for n, t in result.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
