#!/usr/bin/env python3
"""One training step of our LaCT language model (arch "lact", docs/ALGORITHMS.md section 5; the same layers,
parameter shapes and memory operator as src/model) written in PyTorch, to time beside
`ttt bench step --device cuda --preset 760m`.

Per layer: RMSNorm; qkv = h Wqkv; window attention (RoPE, causal sliding window, flex_attention with a block mask,
compiled); memory branch (per-channel scale/offset, silu, per-head l2 norm, RoPE on q/k; rates softplus(h W + b +
softplus^-1(lr_init)), momentum gate sigmoid(h W + b); the LaCT operator of bench/lact_torch.py with bf16 product
operands; per-head RMSNorm times silu(h W_s + b_s)); x += (attn + mem) Wo; x += SwiGLU MLP. Final RMSNorm, LM head,
cross-entropy; each layer under torch.utils.checkpoint (ttt recomputes each layer in its backward too); fused AdamW.
Precision: torch.autocast bf16 (bf16 activations too, a faster contract than ttt's fp32 activations with bf16
product operands) with fp32 master weights. Timing: CUDA events, median of --repeats steps after --warmup.

Usage: python3 bench/model_torch_step.py [--T 32768] [--layers 24] [--repeats 2] [--warmup 1]
"""
import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention
from torch.utils.checkpoint import checkpoint

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lact_torch as LT  # noqa: E402

flex = torch.compile(flex_attention, dynamic=False)


def rms(x, w, eps=1e-6):
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps).to(x.dtype) * w


def rope(x, heads, theta=1e6):
    T, D = x.shape
    hd = D // heads
    half = hd // 2
    inv = theta ** (-torch.arange(half, device=x.device, dtype=torch.float32) * 2 / hd)
    ang = torch.arange(T, device=x.device, dtype=torch.float32)[:, None] * inv[None]
    cos, sin = ang.cos().to(x.dtype)[:, None, :], ang.sin().to(x.dtype)[:, None, :]
    xh = x.view(T, heads, hd)
    a, b = xh[..., :half], xh[..., half:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], -1).view(T, D)


class Layer(torch.nn.Module):
    def __init__(self, D, Ha, H, F_, std, lr_init):
        super().__init__()
        d = D // H
        P = lambda *s, v=None: torch.nn.Parameter(torch.randn(*s) * std if v is None else torch.full(s, v))
        self.D, self.Ha, self.H, self.d, self.shift = D, Ha, H, d, math.log(math.expm1(lr_init))
        self.attn_norm, self.mlp_norm, self.o_norm = P(D, v=1.0), P(D, v=1.0), P(D, v=1.0)
        self.wqkv, self.wo = P(D, 3 * D), P(D, D)
        self.q_scale, self.k_scale, self.q_offset, self.k_offset = P(D, v=1.0), P(D, v=1.0), P(D, v=0.0), P(D, v=0.0)
        self.lr_w, self.lr_b, self.mom_w, self.mom_b = P(D, 3 * H), P(3 * H, v=0.0), P(D, H), P(H, v=0.0)
        self.sc_w, self.sc_b = P(D, H), P(H, v=1.0)
        self.w0, self.w1, self.w2 = (torch.nn.Parameter(torch.randn(H, d, d) / math.sqrt(d)) for _ in range(3))
        self.w_gate, self.w_up, self.w_down = P(D, F_), P(D, F_), P(F_, D)

    def heads_first(self, x, H):  # [T, H*d] -> [H, T, d]
        T = x.shape[0]
        return x.view(T, H, -1).transpose(0, 1).contiguous()

    def forward(self, x, block_mask, chunk):
        T, D, H, d = x.shape[0], self.D, self.H, self.d
        h = rms(x, self.attn_norm)
        q, k, v = (h @ self.wqkv).split(D, -1)
        qa, ka = rope(q, self.Ha), rope(k, self.Ha)
        attn = flex(self.heads_first(qa, self.Ha)[None], self.heads_first(ka, self.Ha)[None],
                    self.heads_first(v, self.Ha)[None], block_mask=block_mask)[0]
        attn = attn.transpose(0, 1).reshape(T, D)
        prep = lambda z, s, o: F.normalize(F.silu(z * s + o).view(T, H, d), dim=-1, eps=1e-5).view(T, D)
        qh, kh = rope(prep(q, self.q_scale, self.q_offset), H), rope(prep(k, self.k_scale, self.k_offset), H)
        rates = F.softplus(h @ self.lr_w + self.lr_b + self.shift).float()  # [T, 3H]
        mom = torch.sigmoid(h @ self.mom_w + self.mom_b).float()             # [T, H]
        o = LT.lact_forward(self.w0, self.w1, self.w2, self.heads_first(qh, H).float(), self.heads_first(kh, H).float(),
                            self.heads_first(v, H).float(), rates[:, :H].T, rates[:, H:2 * H].T, rates[:, 2 * H:].T,
                            momentum=mom.T, chunk=chunk, weight_norm="post", mm_dtype=torch.bfloat16)
        o = o.transpose(0, 1).reshape(T, D)
        normed = (rms(o.view(T, H, d), 1.0).view(T, D) * self.o_norm).to(x.dtype)
        gate = F.silu(h @ self.sc_w + self.sc_b).repeat_interleave(d, dim=-1)
        x = x + (attn + normed * gate) @ self.wo
        h2 = rms(x, self.mlp_norm)
        return x + (F.silu(h2 @ self.w_gate) * (h2 @ self.w_up)) @ self.w_down


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--T", type=int, default=32768)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    a = p.parse_args()
    D, Ha, H, V, W, C, F_ = 1536, 24, 4, 32000, 2048, 2048, 4096  # the 760m preset
    dev = "cuda"
    torch.manual_seed(0)
    std = 0.02
    layers = torch.nn.ModuleList(Layer(D, Ha, H, F_, std, 0.001) for _ in range(a.layers)).to(dev)
    embed = torch.nn.Parameter(torch.randn(V, D, device=dev) * std)
    final_norm = torch.nn.Parameter(torch.ones(D, device=dev))
    head = torch.nn.Parameter(torch.randn(D, V, device=dev) * std)
    params = list(layers.parameters()) + [embed, final_norm, head]
    n_params = sum(t.numel() for t in params)
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    T = a.T
    block_mask = create_block_mask(lambda b, h, qi, ki: (qi >= ki) & (qi - ki < W), None, None, T, T, device=dev)
    ids = torch.randint(0, V, (T,), device=dev)
    tgt = torch.randint(0, V, (T,), device=dev)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            x = embed[ids]
            for layer in layers:
                x = checkpoint(layer, x, block_mask, C, use_reentrant=False)
            logits = rms(x, final_norm) @ head
            loss = F.cross_entropy(logits.float(), tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss

    ms = []
    for i in range(a.warmup + a.repeats):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.reset_peak_memory_stats()
        s.record()
        loss = step()
        e.record()
        e.synchronize()
        t = s.elapsed_time(e)
        print(f"step {i + 1}: {t:.1f} ms, loss {loss.item():.4f}", file=sys.stderr, flush=True)
        if i >= a.warmup:
            ms.append(t)
    med = sorted(ms)[len(ms) // 2]
    print(json.dumps({"impl": "torch_eager_autocast_bf16", "bench": "train_step", "T": T, "layers": a.layers,
                      "params": n_params, "step_ms": ms, "step_ms_median": med, "tokens_per_s": T / (med / 1e3),
                      "peak_bytes": torch.cuda.max_memory_allocated(), "gpu": torch.cuda.get_device_name(),
                      "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
