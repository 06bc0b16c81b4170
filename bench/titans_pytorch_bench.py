#!/usr/bin/env python3
"""GPU timing of titans-pytorch's `NeuralMemory` (the public pure-PyTorch Titans memory, PyPI package
titans-pytorch 0.5.5; not a dependency of ttt) at the shapes of `ttt bench tnt --device cuda`, to put beside its
Titans lines (op "titans", one per chunk size):

    NeuralMemory(dim=heads*dh, dim_head=dh, heads=H, chunk_size=C,
                 model=MemoryMLP(dh, depth=2, expansion_factor=1.))

on an input [batch, T, heads*dh] in fp32: forward, and forward + backward of y.sum(), each the median of
`--repeats` CUDA-event-timed runs after `--warmup` untimed ones. `ttt bench tnt` times b*H sequence-heads of
one memory of width d = dh; here they are `--batch` sequences of `--heads` heads (b*H = batch*heads; the defaults
give ttt's cuda defaults: b*H 4, d = dh 384). The module's own extras (its projections, norms, learned gates) run
too: this is the public model's cost at that shape, not the same FLOPs. One JSON line per (T, C); a case that
runs out of memory or past `--budget-s` is reported as skipped and the rest go on.

Install on a machine without a registry (the GPU machine), from wheels fetched where one is reachable:

    # where a registry is reachable (pure-Python wheels; torch is the machine's own):
    pip download --no-deps -d WHEELS titans-pytorch==0.5.5 assoc-scan accelerated-scan \
        axial-positional-embedding einx frozendict hyper-connections rotary-embedding-torch tensordict pyvers \
        x-transformers torch-einops-utils loguru einops
    # on the GPU machine (the lead's copy: WHEELS = .carry/titans_whl of the main checkout):
    pip install --no-deps --no-index --find-links WHEELS titans-pytorch==0.5.5 assoc-scan accelerated-scan \
        axial-positional-embedding einx frozendict hyper-connections rotary-embedding-torch tensordict pyvers \
        x-transformers torch-einops-utils loguru einops

Usage: python3 bench/titans_pytorch_bench.py [--T 8192] [--chunks 8,16,64,128] [--heads 4] [--dh 384]
           [--batch 1] [--repeats 3] [--warmup 1] [--budget-s 600]
then `ttt bench tnt --device cuda --T 8192 --bh 4 --d 384 --dh 384` (or --bh 48 --d 64 --dh 64 for the 87M
model's memories: --heads 12 --batch 4 --dh 64 here) for the lines to set beside these.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cuda_timing import cuda_timed  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--T", default="8192", help="tokens per sequence, comma-separated")
    p.add_argument("--chunks", default="8,16,64,128", help="chunk sizes C, comma-separated")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dh", type=int, default=384, help="head width (d = dh of ttt bench tnt)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--budget-s", type=float, default=600.0, help="skip the remaining cases past this wall time")
    a = p.parse_args()

    import torch
    import titans_pytorch
    from titans_pytorch import MemoryMLP, NeuralMemory

    if not torch.cuda.is_available():
        sys.exit("titans_pytorch_bench: no CUDA device")
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 products, as ttt bench tnt's default
    torch.backends.cudnn.allow_tf32 = False
    version = getattr(titans_pytorch, "__version__", None)
    if version is None:
        try:
            from importlib.metadata import version as _v

            version = _v("titans-pytorch")
        except Exception:  # noqa: BLE001
            version = "unknown"
    start = time.time()
    for T in [int(x) for x in a.T.split(",")]:
        for C in [int(x) for x in a.chunks.split(",")]:
            row = {
                "op": "titans_pytorch",
                "package": "titans-pytorch " + str(version),
                "gpu": torch.cuda.get_device_name(),
                "dtype": "f32",
                "bh": a.batch * a.heads,
                "batch": a.batch,
                "heads": a.heads,
                "T": T,
                "d": a.dh,
                "dh": a.dh,
                "chunk": C,
                "repeats": a.repeats,
                "warmup": a.warmup,
            }
            if time.time() - start > a.budget_s:
                row["skipped"] = "time budget (--budget-s) spent"
                print(json.dumps(row), flush=True)
                continue
            try:
                torch.manual_seed(0)
                mem = NeuralMemory(dim=a.heads * a.dh, dim_head=a.dh, heads=a.heads, chunk_size=C,
                                   model=MemoryMLP(a.dh, depth=2, expansion_factor=1.0)).to(dev)
                x = torch.randn(a.batch, T, a.heads * a.dh, device=dev) / a.dh ** 0.5
                x_grad = x.clone().requires_grad_(True)

                def fwd():
                    with torch.no_grad():
                        mem(x)

                def fwdbwd():
                    y, _ = mem(x_grad)
                    y.sum().backward()

                torch.cuda.reset_peak_memory_stats()
                f_med, f_all = cuda_timed(fwd, a.warmup, a.repeats)
                b_med, b_all = cuda_timed(fwdbwd, a.warmup, a.repeats)
                tokens = a.batch * T
                row.update({
                    "fwd_s": f_med / 1e3,
                    "fwdbwd_s": b_med / 1e3,
                    "fwd_ms_all": f_all,
                    "fwdbwd_ms_all": b_all,
                    "fwd_tokens_per_s": tokens / (f_med / 1e3),
                    "fwdbwd_tokens_per_s": tokens / (b_med / 1e3),
                    "peak_gb": torch.cuda.max_memory_allocated() / 1e9,
                })
            except torch.cuda.OutOfMemoryError as e:
                row["skipped"] = "out of memory: " + str(e).split("\n")[0]
            finally:
                mem = x = x_grad = None  # free this case's memory before the next
                torch.cuda.empty_cache()
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
