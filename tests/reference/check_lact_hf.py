"""`ttt export --to lact-hf` / `ttt import --from lact-hf` against our float64 port of the public LaCT model
(lact_hf_ref.py), on the CPU:

  export: a ttt "lact" run with the compatibility switches (random weights, written by ttt_torch.save) ->
          ttt export -> the port's logits on the exported directory == `ttt logits` of the run;
  import: a public-layout directory made by the port (random weights) -> ttt import -> `ttt logits` == the port;
  round trips: export(import(DIR)) has DIR's tensors bit for bit, and import(export(RUN)) RUN's parameters.

Logits are compared as ||ttt - port|| / ||port|| <= 1e-4 (ttt computes in fp32). Several variants: post/pre
weight norm, Muon, momentum on/off, low-rank W0/W2, silu on v or not, RoPE or NoPE, inter_multi 2, tied
embeddings, a ttt lr_init other than the public 0.001 (folded into the rate bias), inputs spanning several chunks,
windows and ttt's blocks of seq_len tokens.

    /usr/bin/python3 tests/reference/check_lact_hf.py --ttt build/ttt

Run by ctest (CMakeLists.txt); exits 77 (skipped) when this Python cannot import torch."""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "python"))
sys.path.insert(0, HERE)

try:
    import torch
except ImportError as e:
    print(f"SKIPPED: {sys.executable} cannot import torch ({e}); install python3-torch (scripts/setup.sh)")
    sys.exit(77)

import lact_hf_ref as ref  # noqa: E402
import ttt_torch  # noqa: E402
from ttt_torch import safetensors_io  # noqa: E402

TOLERANCE = 1e-4
INPUT = b"The kernel maps the page; the driver frees the buffer.\n\tA task sleeps on the queue (0x1f), then wakes."

# ttt configs with the switches the public model needs; widths small, attention heads != memory heads so the RoPE
# width matters (attention head 8, memory head 16).
TTT_BASE = {"arch": "lact", "vocab_size": 256, "dim": 32, "n_layers": 2, "n_attn_heads": 4, "n_mem_heads": 2,
            "chunk": 8, "window": 12, "seq_len": 32, "mlp_hidden": 48, "rope_theta": 10000.0, "v_silu": True,
            "ttt_rope_attn_heads": True, "ttt_norm_shared": True, "ttt_norm_eps": 1e-5}
TTT_VARIANTS = {
    "post_momentum": dict(TTT_BASE),
    "pre_muon_lowrank": dict(TTT_BASE, weight_norm="pre", muon=True, low_rank_init=True, low_rank_rank=4,
                             momentum=False, v_silu=False, inter_multi=2),
    "nope_lr_init": dict(TTT_BASE, ttt_rope=False, lr_init=0.05, chunk=5),
}
PUBLIC_BASE = {"model_type": "lact_swiglu", "architectures": ["LaCTForCausalLM"], "vocab_size": 256,
               "hidden_size": 32, "num_hidden_layers": 2, "num_attn_heads": 4, "num_lact_heads": 2,
               "lact_chunk_size": 8, "window_size": 12, "max_position_embeddings": 32, "intermediate_size": 48,
               "rope_theta": 10000.0}
PUBLIC_VARIANTS = {
    "defaults": dict(PUBLIC_BASE),
    "prenorm_muon_lowrank_tied": dict(PUBLIC_BASE, ttt_prenorm=True, use_muon=True, w0_w2_low_rank=4,
                                      no_v_silu=True, use_momentum=False, tie_word_embeddings=True, inter_multi=2),
    "nope_ratio": dict(PUBLIC_BASE, ttt_nope=True, intermediate_size=None, hidden_ratio=2, lact_chunk_size=5),
}


def ttt(*args):
    r = subprocess.run([TTT, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise AssertionError(f"ttt {' '.join(map(str, args))} exited {r.returncode}:\n{r.stdout}")
    return r.stdout


def ttt_logits(run, tmp):
    inp, out = os.path.join(tmp, "input.txt"), os.path.join(tmp, "logits.safetensors")
    with open(inp, "wb") as f:
        f.write(INPUT)
    ttt("logits", "--checkpoint", run, "--input", inp, "--out", out)
    tensors, _ = safetensors_io.load(out)
    return tensors["tokens"].tolist(), tensors["logits"].to(torch.float64)


def relative(a, b):
    return float((a - b).norm() / b.norm())


def load_public(dir_):
    with open(os.path.join(dir_, "config.json")) as f:
        cfg = json.load(f)
    tensors, meta = safetensors_io.load(os.path.join(dir_, "model.safetensors"))
    assert meta.get("format") == "pt", f"{dir_}/model.safetensors metadata {meta}: format must be pt"
    return cfg, tensors


def run_tensors(run):
    return safetensors_io.load(os.path.join(ttt_torch.find_checkpoint(run), "model.safetensors"))[0]


def random_ttt_run(cfg_dict, run, seed):
    cfg = ttt_torch.ModelConfig.from_json(cfg_dict)
    model = ttt_torch.TTTModel(cfg)
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, p in model.state_dict().items():
        x = torch.randn(p.shape, generator=g, dtype=torch.float64)
        if name.endswith("norm.weight") or name.endswith("_scale"):
            x = 1.0 + 0.2 * x
        elif name.endswith(".bias") or name.endswith("_offset"):
            x = 0.2 * x
        else:
            x = x / math.sqrt(p.shape[0] if p.dim() == 2 else p.shape[-1]) * (1.0 if p.dim() == 3 else 0.5)
        sd[name] = x.to(p.dtype)
    model.load_state_dict(sd)
    ttt_torch.save(model, run)


def check_same_tensors(a, b, what):
    assert sorted(a) == sorted(b), f"{what}: tensor names differ: {sorted(set(a) ^ set(b))}"
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), f"{what}: tensor {name} differs"


def check_export(name, cfg_dict, tmp):
    run, out, back = (os.path.join(tmp, name + s) for s in ("-run", "-hf", "-back"))
    random_ttt_run(cfg_dict, run, seed=len(name))
    ttt("export", "--to", "lact-hf", "--checkpoint", run, "--out", out)
    tokens, logits = ttt_logits(run, tmp)
    public_cfg, tensors = load_public(out)
    assert public_cfg["model_type"] == "lact_swiglu", public_cfg
    port = ref.forward(public_cfg, tensors, tokens)
    err = relative(logits, port)
    print(f"export {name}: T={len(tokens)} ||ttt logits - port|| / ||port|| = {err:.3e}")
    assert err <= TOLERANCE, f"export {name}: relative error {err:.3e} > {TOLERANCE}"
    ttt("import", "--from", "lact-hf", out, "--out", back)
    if cfg_dict.get("lr_init", 0.001) == 0.001:  # else the folded rate bias is rounded once each way
        check_same_tensors(run_tensors(run), run_tensors(back), f"import(export({name}))")
        print(f"export {name}: import(export(run)) has the run's parameters bit for bit")


def check_import(name, public_cfg, tmp):
    src, run, again = (os.path.join(tmp, name + s) for s in ("-public", "-imported", "-reexported"))
    os.makedirs(src)
    c = ref.config(public_cfg)
    weights = {k: v.to(torch.float32) for k, v in ref.random_weights(c, seed=len(name)).items()}
    with open(os.path.join(src, "config.json"), "w") as f:
        json.dump(public_cfg, f)
    with open(os.path.join(src, "model.safetensors"), "wb") as f:
        f.write(safetensors_io.serialize(weights, {"format": "pt"}))
    ttt("import", "--from", "lact-hf", src, "--out", run)
    tokens, logits = ttt_logits(run, tmp)
    port = ref.forward(public_cfg, weights, tokens)
    err = relative(logits, port)
    print(f"import {name}: T={len(tokens)} ||ttt logits - port|| / ||port|| = {err:.3e}")
    assert err <= TOLERANCE, f"import {name}: relative error {err:.3e} > {TOLERANCE}"
    ttt("export", "--to", "lact-hf", "--checkpoint", run, "--out", again)
    _, exported = load_public(again)
    if c["tie_word_embeddings"]:  # ttt unties the head: the export writes it
        exported = dict(exported)
        assert torch.equal(exported.pop("lm_head.weight"), weights["model.embeddings.weight"])
    check_same_tensors(weights, exported, f"export(import({name}))")
    print(f"import {name}: export(import(DIR)) has DIR's tensors bit for bit")


def self_test():
    """The port's fast-weight program: with chunk >= T it only applies W⁰; with lr = 0 the weights never move
    (post-norm rescales rows to their own norms: a no-op up to the 1e-5 epsilon)."""
    g = torch.Generator().manual_seed(1)
    d, dh, T = 6, 8, 11
    w0, w1, w2 = (torch.randn(s, generator=g, dtype=torch.float64) for s in ((dh, d), (d, dh), (dh, d)))
    q, k, v = (torch.randn(T, d, generator=g, dtype=torch.float64) for _ in range(3))
    lr = torch.rand(T, 3, generator=g, dtype=torch.float64)
    apply = (w1 @ (torch.nn.functional.silu(w0 @ q.T) * (w2 @ q.T))).T
    assert torch.allclose(ref.fast_weight_program(w0, w1, w2, q, k, v, lr, None, T, False, False), apply)
    still = ref.fast_weight_program(w0, w1, w2, q, k, v, lr * 0, None, 3, False, False)
    assert torch.allclose(still, apply, rtol=1e-4), "lr = 0 must leave the weights"
    moved = ref.fast_weight_program(w0, w1, w2, q, k, v, lr, None, 3, False, False)
    assert not torch.allclose(moved, apply), "lr > 0 must change the outputs after the first chunk"
    assert torch.allclose(moved[:3], apply[:3]), "the first chunk applies the initial weights"
    print("self-test passed")


def main():
    global TTT
    ap = argparse.ArgumentParser()
    ap.add_argument("--ttt", required=True)
    args = ap.parse_args()
    TTT = os.path.abspath(args.ttt)
    self_test()
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in TTT_VARIANTS.items():
            check_export(name, cfg, tmp)
        for name, cfg in PUBLIC_VARIANTS.items():
            check_import(name, cfg, tmp)
    print("all lact-hf checks passed")


if __name__ == "__main__":
    main()
