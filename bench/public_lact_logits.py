#!/usr/bin/env python3
"""The public LaCT model (LaCTForCausalLM of github a1600012888/LaCT, folder lact_llm) on a directory that
`ttt export --to lact-hf` wrote, against `ttt logits` of the same checkpoint: loads DIR with
LaCTForCausalLM.from_pretrained (fp32 parameters, on the GPU), runs the tokens of the `ttt logits` output file
as one sequence, and prints one JSON line with the largest absolute logit difference, the relative difference
||public - ttt|| / ||ttt|| and whether the argmax tokens agree. Not run in CI (the public model needs a GPU and
flash-linear-attention's Triton kernels).

    ttt export --to lact-hf --checkpoint RUN --out DIR
    ttt logits --checkpoint RUN --input text.txt --out ttt_logits.safetensors
    python3 bench/public_lact_logits.py --lact-repo ~/LaCT --exported DIR --logits ttt_logits.safetensors

The public code is not part of ttt: pass your own checkout (--lact-repo). Like bench/public_lact_step.py it needs
flash-linear-attention and transformers, and replaces `flash_attn` by bench/flash_attn_standin. Note that the
public fast-weight operator runs under torch.autocast(bfloat16) on CUDA (its ttt_operation.py), so differences
of bf16 size are expected; ttt's own float64 port of the public math (tests/reference/lact_hf_ref.py) is the
exact check (ctest LactHf.ExportImportParity).
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lact-repo", required=True, help="checkout of github a1600012888/LaCT")
    ap.add_argument("--exported", required=True, help="directory written by `ttt export --to lact-hf`")
    ap.add_argument("--logits", required=True, help="the `ttt logits --out` file of the same checkpoint")
    ap.add_argument("--fused-kernel", action="store_true", help="use the public Triton fast-weight kernel")
    args = ap.parse_args()

    lact_llm = os.path.join(args.lact_repo, "lact_llm")
    if not os.path.isdir(os.path.join(lact_llm, "lact_model")):
        sys.exit(f"public_lact_logits: {args.lact_repo} is not a checkout of a1600012888/LaCT (no lact_llm/lact_model)")
    for f in ("config.json", "model.safetensors"):
        if not os.path.isfile(os.path.join(args.exported, f)):
            sys.exit(f"public_lact_logits: {args.exported} has no {f} (write it with ttt export --to lact-hf)")
    if not os.path.isfile(args.logits):
        sys.exit(f"public_lact_logits: --logits {args.logits} not found (write it with ttt logits)")
    sys.path.insert(0, os.path.join(HERE, "flash_attn_standin"))
    sys.path.insert(0, lact_llm)
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "python"))

    import torch
    from lact_model import LaCTForCausalLM
    from ttt_torch import safetensors_io

    if not torch.cuda.is_available():
        sys.exit("public_lact_logits: no CUDA device")
    tensors, _ = safetensors_io.load(args.logits)
    tokens, ttt_logits = tensors["tokens"], tensors["logits"].to(torch.float64)
    kwargs = {"use_fused_kernel": True} if args.fused_kernel else {}
    model = LaCTForCausalLM.from_pretrained(args.exported, torch_dtype=torch.float32, **kwargs).cuda().eval()
    with torch.no_grad():
        out = model(input_ids=tokens.view(1, -1).cuda(), use_cache=False)
    public = out.logits[0].to(torch.float64).cpu()
    if public.shape != ttt_logits.shape:
        sys.exit(f"public_lact_logits: the public model gave logits {tuple(public.shape)}, ttt {tuple(ttt_logits.shape)}")
    diff = public - ttt_logits
    print(json.dumps({
        "exported": args.exported,
        "tokens": int(tokens.numel()),
        "max_abs_diff": float(diff.abs().max()),
        "relative_diff": float(diff.norm() / ttt_logits.norm()),
        "max_abs_logit": float(ttt_logits.abs().max()),
        "argmax_agreement": float((public.argmax(-1) == ttt_logits.argmax(-1)).double().mean()),
        "fused_kernel": bool(args.fused_kernel),
    }))


if __name__ == "__main__":
    main()
