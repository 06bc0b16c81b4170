"""The ttt language model (docs/ALGORITHMS.md §5-6; src/model/model.cpp) as an nn.Module: embedding, pre-norm
blocks of [sliding-window attention + memory branch] and a SwiGLU MLP, final RMSNorm, untied LM head.

Parameters keep ttt's names and layouts, so `state_dict()` is the checkpoint's model.safetensors: every
projection is stored [in, out] (y = x @ W, the transpose of nn.Linear.weight), fast-weight initial weights are
[H, rows, cols] per head (docs/CHECKPOINT_FORMAT.md)."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import memory
from .config import ModelConfig, memory_specs, parameter_shapes


def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight


def rope(x, positions, theta):
    """Rotary embedding, rotate-half convention, on x [..., T, H, hd]: channel i pairs with i + hd/2, angle
    position * theta^(-2i/hd) (the angles in float64, as ttt computes them)."""
    hd = x.shape[-1]
    half = hd // 2
    inv_freq = theta ** (-2.0 * torch.arange(half, dtype=torch.float64) / hd)
    ang = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    cos = torch.cos(ang).to(x.dtype).to(x.device)[:, None, :]
    sin = torch.sin(ang).to(x.dtype).to(x.device)[:, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def window_attention(q, k, v, window):
    """Causal sliding-window softmax attention: token t attends to s with t - window < s <= t. q, k, v
    [B, T, H, hd] -> [B, T, H, hd]; scores scaled by 1/sqrt(hd)."""
    T = q.shape[1]
    scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(q.shape[-1])
    t = torch.arange(T, device=q.device)
    allowed = (t[None, :] <= t[:, None]) & (t[None, :] > t[:, None] - window)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("bhts,bshd->bthd", torch.softmax(scores, dim=-1), v)


def l2norm(x, eps=1e-5):
    return x / (x.norm(dim=-1, keepdim=True) + eps)


class _Node(nn.Module):
    """A node of the parameter tree: parameters and children named as the parts of ttt's dotted names."""


class TTTModel(nn.Module):
    """A ttt model of any arch. `forward(tokens)` takes token ids [T] or [B, T] and returns logits [.., T, V]
    (each row of a batch is its own sequence, positions 0..T-1, as in `ttt logits`)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.specs = memory_specs(cfg)
        # Where the module came from (ttt_torch.load): its checkpoint's state and optimizer, for save().
        self.ttt_source = None
        for name, shape in parameter_shapes(cfg):
            node = self
            *path, leaf = name.split(".")
            for part in path:
                if part not in node._modules:
                    node.add_module(part, _Node())
                node = node._modules[part]
            node.register_parameter(leaf, nn.Parameter(torch.zeros(shape)))

    def ttt_parameters(self):
        """name -> parameter, in ttt's order (the checkpoint's tensors)."""
        params = dict(self.named_parameters())
        return {name: params[name] for name, _ in parameter_shapes(self.config)}

    def _memory_weights(self, P, spec):
        """The initial weights of a memory, [H, rows, cols] each (low-rank: A B + 0.5 I)."""
        out = []
        for name, rows, cols, low_rank in spec.weights:
            if not low_rank:
                out.append(P(name))
                continue
            eye = torch.zeros(rows, cols, dtype=P(name + ".a").dtype, device=P(name + ".a").device)
            n = min(rows, cols)
            eye[range(n), range(n)] = 0.5
            out.append(torch.matmul(P(name + ".a"), P(name + ".b")) + eye)
        return out

    def _memory_branch(self, P, x, q, k, v, positions):
        cfg = self.config
        B, T, D = x.shape
        H, d = cfg.n_mem_heads, cfg.head_dim_mem
        qh = l2norm(F.silu(q * P("ttt.q_scale") + P("ttt.q_offset")).reshape(B, T, H, d))
        kh = l2norm(F.silu(k * P("ttt.k_scale") + P("ttt.k_offset")).reshape(B, T, H, d))
        if cfg.ttt_rope:  # over the memory heads, or (ttt_rope_attn_heads) the attention heads
            G = cfg.n_attn_heads if cfg.ttt_rope_attn_heads else H
            qh = rope(qh.reshape(B, T, G, D // G), positions, cfg.rope_theta).reshape(B, T, H, d)
            kh = rope(kh.reshape(B, T, G, D // G), positions, cfg.rope_theta).reshape(B, T, H, d)
        vh = (F.silu(v) if cfg.v_silu else v).reshape(B, T, H, d)
        z = torch.matmul(x, P("ttt.lr.weight")) + P("ttt.lr.bias")
        if cfg.arch == "lact":  # softplus(z + softplus^-1(lr_init)) (softplus is z itself above 20, as in ttt)
            rates = F.softplus(z + math.log(math.expm1(cfg.lr_init)), beta=1, threshold=20)
        else:  # theta = base * sigmoid(z)
            rates = cfg.titans_base_lr * torch.sigmoid(z)
        spec0 = self.specs[0]
        eta = torch.sigmoid(torch.matmul(x, P("ttt.momentum.weight")) + P("ttt.momentum.bias")) if spec0.momentum else None
        alpha = torch.sigmoid(torch.matmul(x, P("ttt.decay.weight")) + P("ttt.decay.bias")) if spec0.decay else None

        def items(t):  # [B, T, H, c] -> [B*H, T, c]: one item per (sequence, head)
            return t.permute(0, 2, 1, 3).reshape(B * H, T, t.shape[-1])

        qg, kg, vg = items(qh), items(kh), items(vh)
        o = None
        for spec in self.specs:
            R = spec.rate_columns
            # Column rate_col0 + r*H + h: rate r of head h.
            r = rates[..., spec.rate_col0:spec.rate_col0 + R * H].reshape(B, T, R, H).transpose(2, 3)
            gates = [items(g[..., spec.gate_col0:spec.gate_col0 + H].unsqueeze(-1)) if g is not None else None
                     for g in (eta, alpha)]
            w0 = [w.repeat(B, 1, 1) for w in self._memory_weights(P, spec)]  # item b*H + h: head h
            om = memory.run(spec, w0, qg, kg, vg, items(r), gates[0], gates[1])
            o = om if o is None else o + om
        o = o.reshape(B, H, T, d).permute(0, 2, 1, 3)  # [B, T, H, d]
        # Per-channel weight [D], or (ttt_norm_shared) one [d] for every head; epsilon ttt_norm_eps (0: norm_eps).
        weight = P("ttt.o_norm.weight").reshape(-1, d).expand(H, d)
        normed = rms_norm(o, weight, cfg.ttt_norm_eps if cfg.ttt_norm_eps > 0 else cfg.norm_eps)
        gate = F.silu(torch.matmul(x, P("ttt.scale.weight")) + P("ttt.scale.bias"))  # [B, T, H]
        return (normed * gate.unsqueeze(-1)).reshape(B, T, D)

    def forward(self, tokens):
        cfg = self.config
        single = tokens.dim() == 1
        if single:
            tokens = tokens.unsqueeze(0)
        params = dict(self.named_parameters())
        B, T = tokens.shape
        D, Ha = cfg.dim, cfg.n_attn_heads
        positions = torch.arange(T)
        x = F.embedding(tokens, params["embed.weight"])
        for layer in range(cfg.n_layers):
            pre = f"layers.{layer}."

            def P(name):
                return params[pre + name]

            h = rms_norm(x, P("attn_norm.weight"), cfg.norm_eps)
            q, k, v = torch.matmul(h, P("wqkv")).split(D, dim=-1)
            qa = rope(q.reshape(B, T, Ha, D // Ha), positions, cfg.rope_theta)
            ka = rope(k.reshape(B, T, Ha, D // Ha), positions, cfg.rope_theta)
            o_attn = window_attention(qa, ka, v.reshape(B, T, Ha, D // Ha), cfg.window).reshape(B, T, D)
            o_mem = self._memory_branch(P, h, q, k, v, positions)
            x = x + torch.matmul(o_attn + o_mem, P("wo"))
            h2 = rms_norm(x, P("mlp_norm.weight"), cfg.norm_eps)
            x = x + torch.matmul(F.silu(torch.matmul(h2, P("mlp.w_gate"))) * torch.matmul(h2, P("mlp.w_up")),
                                 P("mlp.w_down"))
        logits = torch.matmul(rms_norm(x, params["final_norm.weight"], cfg.norm_eps), params["lm_head.weight"])
        return logits[0] if single else logits
