#!/usr/bin/env python3
"""One training step of the public LaCT language model (LaCTForCausalLM of github a1600012888/LaCT, folder
lact_llm), timed as its users run it: fp32 parameters on the GPU, torch.autocast(bfloat16), fused AdamW, random
token ids; `--warmup` untimed steps (the first compiles its torch.compile'd operator, a few minutes), then the
median of `--repeats` CUDA-event-timed steps (forward, backward, optimizer step). Prints one JSON line.

The public code is not part of ttt: pass the path of your own checkout (--lact-repo). It needs
flash-linear-attention 0.6.0 (`fla-core`, `flash-linear-attention`) and transformers; `flash_attn` is replaced by
bench/flash_attn_standin (PyTorch flex_attention with a causal sliding-window block mask), since flash-attn has
no wheel for recent PyTorch. bench/side_by_side.sh runs this and `ttt bench step` in one process tree.

--operator ttt swaps the model's LaCT operator (every variant the layer calls: block_causal_lact_swiglu, the
prenorm one and the fused Triton ones) for ttt_torch.ops.lact_swiglu (ttt's kernels through libttt_capi.so: build
target ttt_capi of a CUDA build, found as ttt_torch finds it or at --capi-lib), with its matrix products in
--ttt-precision (auto: bf16 as the public model's autocast, tf32 with Muon). --operator both runs, in one
process on the same weights and batch: the loss of the unmodified model and of the swapped one (their difference
is printed), then the timed steps of each; one JSON line per operator. Memory: at
T = 32768 the public model keeps ~134 GB of activations, so `both` then needs ttt's operator workspace (~10 GB)
on top: on a 140 GB GPU use --seq-len 16384 or --grad-checkpoint (measured: out of memory in the ttt phase).
"""
import argparse
import json
import os
import statistics
import sys

CONFIGS = {  # ttt preset -> the public config of the same shape (lact_llm/configs)
    "760m": "760M_lact_swiglu_nh4_fwlow_rank_momentum.json",
    "3b": "3B_lact_swiglu_nh4_fwlow_rank_momentum_muon.json",
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lact-repo", required=True, help="checkout of github a1600012888/LaCT")
    ap.add_argument("--preset", default="760m", choices=sorted(CONFIGS), help="which public config (ttt preset name)")
    ap.add_argument("--config", help="a config JSON instead of the preset's")
    ap.add_argument("--seq-len", type=int, default=32768)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--grad-checkpoint", action="store_true", help="recompute each layer in the backward (less memory)")
    ap.add_argument("--operator", default="public", choices=["public", "ttt", "both"],
                    help="the LaCT operator: the public one, ttt_torch.ops.lact_swiglu, or both side by side")
    ap.add_argument("--ttt-precision", default="auto", choices=["auto", "fp32", "tf32", "bf16"],
                    help="matrix products of ttt's operator; auto: bf16 (as the public model's autocast), tf32 with "
                         "Muon (bf16 is not offered with Muon)")
    ap.add_argument("--capi-lib", help="libttt_capi.so of a CUDA build (default: TTT_CAPI_LIB or ttt_torch's search)")
    args = ap.parse_args()

    lact_llm = os.path.join(args.lact_repo, "lact_llm")
    if not os.path.isdir(os.path.join(lact_llm, "lact_model")):
        sys.exit(f"public_lact_step: {args.lact_repo} is not a checkout of a1600012888/LaCT (no lact_llm/lact_model)")
    config_path = args.config or os.path.join(lact_llm, "configs", CONFIGS[args.preset])
    if not os.path.isfile(config_path):
        sys.exit(f"public_lact_step: config {config_path} not found")
    ttt_ops = load_ttt_ops(args) if args.operator != "public" else None
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "flash_attn_standin"))
    sys.path.insert(0, lact_llm)

    import torch
    try:
        import fla
        import transformers
        from lact_model import LaCTForCausalLM, LaCTSWIGLUConfig
        from lact_model import layer_lact_swiglu
    except ImportError as e:
        sys.exit(f"public_lact_step: the public model cannot be imported ({e}); it needs flash-linear-attention "
                 f"0.6.0 (fla-core, flash-linear-attention), transformers and einops")

    if not torch.cuda.is_available():
        sys.exit("public_lact_step: no CUDA device")
    with open(config_path) as f:
        cfg_json = json.load(f)
    cfg_json["max_position_embeddings"] = max(cfg_json.get("max_position_embeddings", 0), args.seq_len)
    cfg = LaCTSWIGLUConfig(**cfg_json)
    torch.manual_seed(0)
    model = LaCTForCausalLM(cfg).cuda()
    model.train()
    if args.grad_checkpoint:
        model.gradient_checkpointing_enable()
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    def first_loss():  # the loss on the current weights, no step
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            return model(input_ids=ids, labels=ids).loss.item()

    public_ops = {name: getattr(layer_lact_swiglu, name) for name in OPERATOR_NAMES if hasattr(layer_lact_swiglu, name)}
    ttt_swap = {name: ttt_operator(ttt_ops, name, args.ttt_precision) for name in public_ops} if ttt_ops else {}

    def use(operator):
        for name, fn in (public_ops if operator == "public" else ttt_swap).items():
            setattr(layer_lact_swiglu, name, fn)

    operators = ["public", "ttt"] if args.operator == "both" else [args.operator]
    losses = {}
    for operator in operators:
        use(operator)
        losses[operator] = first_loss()
        print(f"public_lact_step: loss with the {operator} operator: {losses[operator]:.6f}", file=sys.stderr,
              flush=True)
    if len(losses) == 2:
        print(f"public_lact_step: loss difference ttt - public: {losses['ttt'] - losses['public']:.3e}",
              file=sys.stderr, flush=True)

    for operator in operators:
        use(operator)
        for i in range(args.warmup):
            loss = step()
            torch.cuda.synchronize()
            print(f"public_lact_step: [{operator}] warm-up step {i + 1} done, loss {loss.item():.4f}", file=sys.stderr,
                  flush=True)
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            loss = step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        med = statistics.median(times)
        print(json.dumps({
            "bench": "public_lact_step", "operator": operator,
            "ttt_precision": args.ttt_precision if operator == "ttt" else None,
            "config": os.path.basename(config_path), "params": params,
            "batch": args.batch, "seq_len": args.seq_len, "step_ms": times, "step_ms_median": med,
            "tokens_per_s": args.batch * args.seq_len / (med / 1e3), "peak_bytes": torch.cuda.max_memory_allocated(),
            "loss": loss.item(), "first_loss": losses[operator], "grad_checkpoint": args.grad_checkpoint,
            "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "transformers": transformers.__version__,
            "fla": getattr(fla, "__version__", "?"), "attention": "flash_attn stand-in (flex_attention)",
        }), flush=True)


# The names under which layer_lact_swiglu calls its operator, and the weight norm each one means.
OPERATOR_NAMES = {
    "block_causal_lact_swiglu": "post",
    "postnorm_block_causal_lact_swiglu_fused_kernel_triton": "post",
    "prenorm_block_causal_lact_swiglu": "pre",
    "prenorm_block_causal_lact_swiglu_fused_kernel_triton": "pre",
}


def load_ttt_ops(args):
    """ttt_torch.ops with its library, checked before the public model is built (says what is missing)."""
    if args.capi_lib:
        os.environ["TTT_CAPI_LIB"] = os.path.abspath(args.capi_lib)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))
    try:
        from ttt_torch import ops
    except ImportError as e:
        sys.exit(f"public_lact_step: --operator {args.operator}: cannot import ttt_torch ({e})")
    try:
        devices = ops.available_devices()
    except ops.OpError as e:
        sys.exit(f"public_lact_step: --operator {args.operator}: {e}")
    if "cuda" not in devices:
        sys.exit(f"public_lact_step: --operator {args.operator}: {ops.library_path()} runs on {devices} only; build "
                 f"the ttt_capi target of a CUDA build (-DTTT_ENABLE_CUDA=ON) on this machine")
    return ops


def ttt_operator(ops, name, precision):
    """ttt_torch.ops.lact_swiglu in the place of the public operator `name` (same arguments)."""
    weight_norm = OPERATOR_NAMES[name]

    def operator(w0, w1, w2, q, k, v, lr0, lr1, lr2, chunk_size=2048, use_muon=False, momentum=None):
        chosen = precision if precision != "auto" else ("tf32" if use_muon else "bf16")
        return ops.lact_swiglu(w0, w1, w2, q, k, v, lr0, lr1, lr2, chunk_size=chunk_size, use_muon=use_muon,
                               momentum=momentum, weight_norm=weight_norm, precision=chosen)

    return operator

if __name__ == "__main__":
    main()
