#!/usr/bin/env python3
"""GPU timing of our PyTorch TNT branch and Titans memory (bench/tnt_torch.py, eager; its per-chunk Python
loops and create_graph autograd do not suit torch.compile) at the shapes of `ttt bench tnt --device cuda`:
b*H = 4, d = dh = 384, S_L = 2048, C_G = 2048, C_L = 8,16 (TNT) and one never-reset memory with C in
{8, 16, 64, 128} (Titans), T in {2048, ..., 32768}, fp32. One JSON line per case (median of CUDA-event
timed runs after a warm-up); cases that do not fit the time budget or the memory are reported as skipped.

Usage: python3 bench/tnt_torch_bench.py [--T 2048,4096] [--budget-s 240] [--repeats 2]
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tnt_torch as TT  # noqa: E402
from cuda_timing import cuda_timed  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--T", default="2048,4096,8192,16384,32768")
    p.add_argument("--bh", type=int, default=4)
    p.add_argument("--d", type=int, default=384)
    p.add_argument("--titans-chunks", default="8,16,64,128")
    p.add_argument("--budget-s", type=float, default=240)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    start = time.time()
    dev = "cuda"
    for T in [int(t) for t in a.T.split(",")]:
        cases = [("tnt", dict(global_chunk=2048, local_chunks=(8, 16), shard=2048, qk_proj=True, use_global=True), 2)]
        cases += [("titans", dict(global_chunk=int(c), local_chunks=(), shard=0, qk_proj=False, use_global=True), 0)
                  for c in a.titans_chunks.split(",")]
        for kind, opts, n_local in cases:
            rec = {"impl": "torch_eager", "kind": kind, "T": T, "bh": a.bh, "d": a.d, "dh": a.d,
                   "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
            rec.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in opts.items()})
            if time.time() - start > a.budget_s:
                rec["skipped"] = "time budget"
                print(json.dumps(rec), flush=True)
                continue
            try:
                x = TT.random_inputs(a.bh, T, a.d, a.d, n_local, use_global=True, dtype=torch.float32, seed=1)
                x = {k: t.to(dev) for k, t in x.items()}
                go = x.pop("grad_o")
                leaves = {n: t.detach().requires_grad_(True) for n, t in x.items()}
                rec["fwd_ms"], rec["fwd_ms_all"] = cuda_timed(lambda: TT.tnt_forward(leaves, **opts), 1, a.repeats)
                rec["fwdbwd_ms"], rec["fwdbwd_ms_all"] = cuda_timed(lambda: TT.tnt_forward_backward(x, go, **opts), 1,
                                                               a.repeats)
                rec["peak_bytes"] = torch.cuda.max_memory_allocated()
            except torch.cuda.OutOfMemoryError:
                rec["skipped"] = "out of GPU memory"
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
