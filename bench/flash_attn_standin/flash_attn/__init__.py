"""A stand-in for the `flash_attn` package, for benchmarking the public LaCT model (bench/public_lact_step.py).

flash-attn publishes no wheel for PyTorch 2.11, and the public model imports `flash_attn_func` for its window
attention. This package serves the one call the model makes on unpadded batches,
`flash_attn_func(q, k, v, causal=True, window_size=(W - 1, 0))`, with PyTorch's own
`torch.nn.attention.flex_attention` (compiled) and a causal sliding-window block mask: token i attends to keys
j with i - W < j <= i, exactly what flash-attn computes for that window_size. Everything else raises.
Written for ttt's benchmarks; it is not flash-attn and shares no code with it.
"""
import functools

import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

__version__ = "0.0.0+ttt-standin"

_compiled_flex = torch.compile(flex_attention, dynamic=False)


@functools.lru_cache(maxsize=8)
def _window_mask(seq_len: int, left: int, device: str):
    def causal_window(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx - kv_idx <= left)

    return create_block_mask(causal_window, B=None, H=None, Q_LEN=seq_len, KV_LEN=seq_len, device=device)


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), **kwargs):
    """q, k, v: [batch, seq, heads, head_dim] as in flash-attn; returns [batch, seq, heads, head_dim]."""
    if dropout_p != 0.0 or kwargs:
        raise NotImplementedError(f"flash_attn stand-in: unsupported arguments dropout_p={dropout_p} {sorted(kwargs)}")
    if not causal or window_size[1] != 0:
        raise NotImplementedError(f"flash_attn stand-in: only causal windows, got causal={causal} window={window_size}")
    if q.shape[1] != k.shape[1]:
        raise NotImplementedError("flash_attn stand-in: query and key lengths differ")
    seq_len = q.shape[1]
    left = seq_len if window_size[0] < 0 else window_size[0]
    mask = _window_mask(seq_len, left, str(q.device))
    # flex_attention takes [batch, heads, seq, head_dim].
    o = _compiled_flex(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=mask, scale=softmax_scale)
    return o.transpose(1, 2)


def flash_attn_varlen_func(*args, **kwargs):
    raise NotImplementedError("flash_attn stand-in: variable-length batches are not served")
