#!/usr/bin/env python3
"""One training step of the public LaCT language model (LaCTForCausalLM of github a1600012888/LaCT, folder
lact_llm), timed as its users run it: fp32 parameters on the GPU, torch.autocast(bfloat16), fused AdamW, random
token ids; `--warmup` untimed steps (the first compiles its torch.compile'd operator, a few minutes), then the
median of `--repeats` CUDA-event-timed steps (forward, backward, optimizer step). Prints one JSON line.

The public code is not part of ttt: pass the path of your own checkout (--lact-repo). It needs
flash-linear-attention 0.6.0 (`fla-core`, `flash-linear-attention`) and transformers; `flash_attn` is replaced by
bench/flash_attn_standin (PyTorch flex_attention with a causal sliding-window block mask), since flash-attn has
no wheel for recent PyTorch. bench/side_by_side.sh runs this and `ttt bench step` in one process tree.
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
    args = ap.parse_args()

    lact_llm = os.path.join(args.lact_repo, "lact_llm")
    if not os.path.isdir(os.path.join(lact_llm, "lact_model")):
        sys.exit(f"public_lact_step: {args.lact_repo} is not a checkout of a1600012888/LaCT (no lact_llm/lact_model)")
    config_path = args.config or os.path.join(lact_llm, "configs", CONFIGS[args.preset])
    if not os.path.isfile(config_path):
        sys.exit(f"public_lact_step: config {config_path} not found")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "flash_attn_standin"))
    sys.path.insert(0, lact_llm)

    import torch
    import fla
    import transformers
    from lact_model import LaCTForCausalLM, LaCTSWIGLUConfig

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

    for i in range(args.warmup):
        loss = step()
        torch.cuda.synchronize()
        print(f"public_lact_step: warm-up step {i + 1} done, loss {loss.item():.4f}", file=sys.stderr, flush=True)
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
        "bench": "public_lact_step", "config": os.path.basename(config_path), "params": params,
        "batch": args.batch, "seq_len": args.seq_len, "step_ms": times, "step_ms_median": med,
        "tokens_per_s": args.batch * args.seq_len / (med / 1e3), "peak_bytes": torch.cuda.max_memory_allocated(),
        "loss": loss.item(), "grad_checkpoint": args.grad_checkpoint, "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "fla": getattr(fla, "__version__", "?"), "attention": "flash_attn stand-in (flex_attention)",
    }))


if __name__ == "__main__":
    main()
