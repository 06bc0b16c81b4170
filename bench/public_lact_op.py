#!/usr/bin/env python3
"""The public LaCT operator alone (`block_causal_lact_swiglu` of github a1600012888/LaCT, lact_llm/lact_model/
ttt_operation.py, torch.compile'd by its own decorator), timed as the model calls it: fp32 fast weights, bf16
q/k/v, fp32 rates and momentum; forward, and forward + backward of o.float().sum(); medians of CUDA-event-timed
runs after warm-up. Prints one JSON line. The shape defaults are those of `ttt bench op` (b*H 4, T 32768,
d = dh = 384, chunk 2048, momentum). Pass your own checkout with --lact-repo; it is never part of ttt.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cuda_timing import cuda_timed  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lact-repo", required=True)
    ap.add_argument("--bh", type=int, default=4)
    ap.add_argument("--T", type=int, default=32768)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--muon", action="store_true")
    ap.add_argument("--no-momentum", action="store_true")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    lact_llm = os.path.join(args.lact_repo, "lact_llm")
    if not os.path.isfile(os.path.join(lact_llm, "lact_model", "ttt_operation.py")):
        sys.exit(f"public_lact_op: {args.lact_repo} is not a checkout of a1600012888/LaCT")
    sys.path.insert(0, os.path.join(lact_llm, "lact_model"))
    import torch
    from ttt_operation import block_causal_lact_swiglu

    if not torch.cuda.is_available():
        sys.exit("public_lact_op: no CUDA device")
    torch.manual_seed(0)
    B, T, d, dev = args.bh, args.T, args.d, "cuda"
    w0 = (torch.randn(B, d, d, device=dev) / d ** 0.5).requires_grad_()
    w1 = (torch.randn(B, d, d, device=dev) / d ** 0.5).requires_grad_()
    w2 = (torch.randn(B, d, d, device=dev) / d ** 0.5).requires_grad_()
    q, k, v = (torch.randn(B, T, d, device=dev, dtype=torch.bfloat16).requires_grad_() for _ in range(3))
    lrs = [(torch.rand(B, T, 1, device=dev) * 0.01).requires_grad_() for _ in range(3)]
    mom = None if args.no_momentum else torch.rand(B, T, 1, device=dev).requires_grad_()

    def fwd():
        return block_causal_lact_swiglu(w0, w1, w2, q, k, v, *lrs, chunk_size=args.chunk, use_muon=args.muon,
                                        momentum=mom)

    def fwd_bwd():
        fwd().float().sum().backward()

    with torch.no_grad():
        f_ms, _ = cuda_timed(fwd, args.warmup, args.repeats)
    fb_ms, _ = cuda_timed(fwd_bwd, args.warmup, args.repeats)
    print(json.dumps({"bench": "public_lact_op", "bh": B, "T": T, "d": d, "chunk": args.chunk, "muon": args.muon,
                      "momentum": mom is not None, "fwd_ms": f_ms, "fwdbwd_ms": fb_ms,
                      "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
