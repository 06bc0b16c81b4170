#!/usr/bin/env python3
"""Check `ttt op tnt` against the independent PyTorch implementation in bench/tnt_torch.py.

  /usr/bin/python3 tests/reference/check_op_tnt.py --ttt build/ttt     # compare the C++ branch
  /usr/bin/python3 tests/reference/check_op_tnt.py --self-test         # check the torch reference itself

For every configuration (several local chunk sizes, shards on and off chunk boundaries, S_L not a multiple
of C_L, local chunk > shard, no reset, qk-proj on/off, --no-global, global only, T a multiple of nothing,
per-memory hidden widths, forward only, float64 and float32) it writes seeded random inputs to a safetensors
file, runs `ttt op tnt`, computes the same in torch float64 and compares o and every grad_<name>:
||x - ref|| / ||ref|| <= 1e-8 for float64 inputs, <= 1e-4 for float32 inputs (absolute error where the
reference is exactly zero). It also checks that malformed inputs make the command fail with a message
naming the tensor (or the flag). Exit status 0 iff everything passed.

--self-test checks the reference: the Q-K projection against a per-token loop, a local memory with C = 1
against per-token online gradient descent written with closed-form gradients (momentum, decay, resets),
shard independence, and the autograd gradients against central finite differences in float64.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "bench"))
import tnt_torch as tt  # noqa: E402
from lact_torch import load_safetensors, save_safetensors  # noqa: E402

B = 2

# name, T, d, dhs (global first, if any), global_chunk, local_chunks, shard, qk_proj, use_global, dtype, grad_o
CONFIGS = [
    ("g5-l2,3-S7-qk",               19, 3, [5, 5, 5],    5,  [2, 3],    7,  True,  True,  "F64", True),
    ("g4-l1,4-S8-qk (on bounds)",   19, 3, [4, 4, 4],    4,  [1, 4],    8,  True,  True,  "F64", True),
    ("g6-l3-S6-noqk",               17, 4, [5, 6],       6,  [3],       6,  False, True,  "F64", True),
    ("g5-l2,3-S7-noqk",             19, 3, [5, 5, 5],    5,  [2, 3],    7,  False, True,  "F64", True),
    ("noglobal-l2,5-S9-qk",         23, 3, [4, 6],       0,  [2, 5],    9,  True,  False, "F64", True),
    ("noglobal-l3-S5-noqk",         13, 3, [5],          0,  [3],       5,  False, False, "F64", True),
    ("g7-l1-S5-qk (C=1)",           13, 3, [4, 5],       7,  [1],       5,  True,  True,  "F64", True),
    ("g3-l2,3,4-S10-qk dh differ",  21, 3, [4, 5, 3, 6], 3,  [2, 3, 4], 10, True,  True,  "F64", True),
    ("g32>T-l4-S0 (no reset)-qk",   15, 3, [4, 5],       32, [4],       0,  True,  True,  "F64", True),
    ("g4-l6-S4 (chunk>shard)-qk",   15, 3, [4, 5],       4,  [6],       4,  True,  True,  "F64", True),
    ("g4-l3-S40>T-qk",              16, 3, [4, 5],       4,  [3],       40, True,  True,  "F64", True),
    ("global-only-g3",              11, 3, [5],          3,  [],        5,  True,  True,  "F64", True),
    ("g5-l2,3-S7-qk-fwd",           19, 3, [5, 5, 5],    5,  [2, 3],    7,  True,  True,  "F64", False),
    ("f32-g5-l2,3-S7-qk",           19, 4, [6, 6, 6],    5,  [2, 3],    7,  True,  True,  "F32", True),
]
TOL = {"F64": 1e-8, "F32": 1e-4}
DTYPES = {"F64": torch.float64, "F32": torch.float32}


def rel_err(x, ref):
    x, ref = x.double(), ref.double()
    den = ref.norm().item()
    num = (x - ref).norm().item()
    return num if den == 0.0 else num / den


def opts_of(cfg):
    _, _, _, _, gc, lcs, shard, qk, glob, _, _ = cfg
    return dict(global_chunk=gc, local_chunks=list(lcs), shard=shard, qk_proj=qk, use_global=glob)


def inputs_of(cfg, seed):
    _, T, d, dhs, _, lcs, _, _, glob, dtype, grad = cfg
    return tt.random_inputs(B, T, d, dhs[0], len(lcs), use_global=glob, dtype=DTYPES[dtype], with_grad_o=grad,
                            seed=seed, dhs=dhs)


def cli_flags(opts):
    flags = ["--local-chunks", ",".join(str(c) for c in opts["local_chunks"]) or "none",
             "--shard", str(opts["shard"]), "--qk-proj", "on" if opts["qk_proj"] else "off"]
    if opts["use_global"]:
        flags += ["--global-chunk", str(opts["global_chunk"])]
    else:
        flags.append("--no-global")
    return flags


def run_ttt(ttt, inp, out, opts, extra=()):
    cmd = [ttt, "op", "tnt", "--in", inp, "--out", out] + cli_flags(opts) + list(extra)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def reference(x, opts):
    x64 = {n: t.double() for n, t in x.items()}
    grad_o = x64.pop("grad_o", None)
    if grad_o is None:
        return {"o": tt.tnt_forward(x64, **opts).detach()}
    o, grads = tt.tnt_forward_backward(x64, grad_o, **opts)
    out = {"o": o}
    out.update({f"grad_{n}": g for n, g in grads.items()})
    return out


OPTIONAL_OUTPUTS = {"grad_grad_o": "o"}  # d sum(o * grad_o) / d grad_o = o


def compare_configs(ttt, tmp):
    passed = failed = 0
    for i, cfg in enumerate(CONFIGS):
        name, dtype = cfg[0], cfg[9]
        opts = opts_of(cfg)
        x = inputs_of(cfg, seed=2000 + i)
        inp = os.path.join(tmp, f"in_{i}.safetensors")
        outp = os.path.join(tmp, f"out_{i}.safetensors")
        save_safetensors(inp, x)
        problems = []
        worst, worst_name = 0.0, "-"
        # every other config runs the local shards sequentially: same results required
        extra = ["--sequential"] if i % 2 else []
        r = run_ttt(ttt, inp, outp, opts, extra)
        if r.returncode != 0:
            problems.append(f"ttt exited {r.returncode}: {r.stderr.strip()[-500:]}")
        else:
            got = load_safetensors(outp)
            ref = reference(x, opts)
            required = set(ref)
            if "grad_o" in x:
                for n, same_as in OPTIONAL_OUTPUTS.items():
                    if n in got:
                        ref[n] = ref[same_as]
            missing = sorted(set(ref) - set(got))
            extra_out = sorted(set(got) - set(ref))
            if missing:
                problems.append(f"missing outputs {missing}")
            if extra_out:
                problems.append(f"unexpected outputs {extra_out}")
            for n in ref:
                if n not in got:
                    continue
                if list(got[n].shape) != list(ref[n].shape):
                    problems.append(f"{n}: shape {list(got[n].shape)}, expected {list(ref[n].shape)}")
                    continue
                if got[n].dtype != DTYPES[dtype]:
                    problems.append(f"{n}: dtype {got[n].dtype}, inputs were {dtype}")
                if not torch.isfinite(got[n].double()).all():
                    problems.append(f"{n}: non-finite values")
                    continue
                err = rel_err(got[n], ref[n])
                if n in required and (err > worst or worst_name == "-"):
                    worst, worst_name = err, n
                if not err <= TOL[dtype]:
                    problems.append(f"{n}: rel err {err:.3e} > {TOL[dtype]:.0e} "
                                    f"(|ref| = {ref[n].norm().item():.3e}, |got| = {got[n].norm().item():.3e})")
        status = "ok  " if not problems else "FAIL"
        print(f"{status} {name:30s} {dtype}{' seq' if extra else '    '} worst rel err {worst:.3e} ({worst_name})",
              flush=True)
        for pr in problems:
            print(f"       {pr}", flush=True)
        if problems:
            failed += 1
        else:
            passed += 1
    return passed, failed


def error_cases(ttt, tmp):
    """Malformed inputs must make `ttt op tnt` fail with a message naming the offending tensor (or flag)."""
    cfg = CONFIGS[0]
    opts = opts_of(cfg)
    base = inputs_of(cfg, seed=7)
    T, d = base["q"].shape[1], base["q"].shape[2]
    cases = []

    x = dict(base)
    x["v"] = torch.randn(B, T + 1, d, dtype=torch.float64)
    cases.append(("v with a different T", x, opts, ("v",)))

    x = dict(base)
    x["l1_theta"] = base["l1_theta"][:, :-1].contiguous()
    cases.append(("l1_theta too short", x, opts, ("l1_theta",)))

    x = dict(base)
    x["l0_w2"] = torch.randn(B, d, base["l0_w2"].shape[2] + 1, dtype=torch.float64)
    cases.append(("l0_w2 with a wrong shape", x, opts, ("l0_w2", "l0_w1")))

    x = dict(base)
    x["g_w1"] = base["g_w1"][0]
    cases.append(("g_w1 2-D", x, opts, ("g_w1",)))

    x = dict(base)
    x["g_eta"] = base["g_eta"].float()
    cases.append(("g_eta as F32 among F64", x, opts, ("g_eta",)))

    x = dict(base)
    del x["l1_eta"]
    cases.append(("l1_eta missing", x, opts, ("l1_eta",)))

    x = dict(base)
    del x["g_alpha"]
    cases.append(("g_alpha missing", x, opts, ("g_alpha",)))

    x = dict(base)
    del x["k"]
    cases.append(("k missing", x, opts, ("k",)))

    x = dict(base)
    x["l0_beta"] = base["l0_eta"]
    cases.append(("unknown l0_beta", x, opts, ("l0_beta",)))

    x = dict(base)
    x["l0_alpha"] = base["l0_alpha"].clone()
    x["l0_alpha"][0, 3] = float("nan")
    cases.append(("NaN in l0_alpha", x, opts, ("l0_alpha",)))

    cases.append(("3 chunk sizes, 2 locals", dict(base), dict(opts, local_chunks=[2, 3, 4]), ("local-chunks",)))
    cases.append(("1 chunk size, 2 locals", dict(base), dict(opts, local_chunks=[2]), ("local-chunks",)))
    cases.append(("g_ tensors with --no-global", dict(base), dict(opts, use_global=False),
                  ("g_w1", "g_w2", "g_theta", "g_eta", "g_alpha")))

    x = {n: t for n, t in base.items() if not n.startswith("l1_")}
    x["l2_w1"], x["l2_w2"] = base["l1_w1"], base["l1_w2"]
    x["l2_theta"], x["l2_eta"], x["l2_alpha"] = base["l1_theta"], base["l1_eta"], base["l1_alpha"]
    cases.append(("locals l0, l2 (no l1)", x, dict(opts, local_chunks=[2, 3, 4]), ("l1_w1",)))

    passed = failed = 0
    for i, (desc, x, o, tnames) in enumerate(cases):
        inp = os.path.join(tmp, f"bad_{i}.safetensors")
        outp = os.path.join(tmp, f"bad_out_{i}.safetensors")
        save_safetensors(inp, x)
        r = run_ttt(ttt, inp, outp, o)
        msg = r.stderr.strip().replace("\n", " | ")
        named = any(re.search(r"(?<![A-Za-z0-9_])" + re.escape(t) + r"(?![A-Za-z0-9_])", r.stderr) for t in tnames)
        ok = r.returncode != 0 and named
        print(f"{'ok  ' if ok else 'FAIL'} error: {desc:28s} rc={r.returncode} stderr: {msg[:220]}", flush=True)
        if not ok and r.returncode != 0:
            print(f"       the message names none of {list(tnames)}", flush=True)
        passed, failed = (passed + 1, failed) if ok else (passed, failed + 1)
    # flag errors
    for desc, flags, word in [("--qk-proj maybe", ["--qk-proj", "maybe"], "qk-proj"),
                              ("--local-chunks 2,x", ["--local-chunks", "2,x"], "local-chunks"),
                              ("--shard -1", ["--shard", "-1"], "shard")]:
        inp = os.path.join(tmp, "flags.safetensors")
        save_safetensors(inp, base)
        cmd = [ttt, "op", "tnt", "--in", inp, "--out", os.path.join(tmp, "flags_out.safetensors")] + \
            cli_flags(opts) + flags
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        ok = r.returncode != 0 and word in r.stderr
        print(f"{'ok  ' if ok else 'FAIL'} error: {desc:28s} rc={r.returncode} stderr: "
              f"{r.stderr.strip()[:220]}", flush=True)
        passed, failed = (passed + 1, failed) if ok else (passed, failed + 1)
    return passed, failed


# ----------------------------------------------------------------------------------------------------------
# self-test of the reference

def self_test():
    passed = failed = 0

    def report(ok, line):
        nonlocal passed, failed
        print(f"{'ok  ' if ok else 'FAIL'} {line}", flush=True)
        passed, failed = (passed + 1, failed) if ok else (passed, failed + 1)

    # 1. Q-K projection vs a per-token loop over explicit sums
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 17, 3, generator=gen, dtype=torch.float64)
    k = torch.randn(2, 17, 3, generator=gen, dtype=torch.float64)
    for chunk, shard in [(3, 7), (2, 8), (1, 5), (4, None), (6, 4), (5, 40)]:
        fast = tt.qk_project(q, k, chunk, shard)
        slow = torch.empty_like(q)
        S = shard if shard and shard < 17 else 17
        for b in range(2):
            for t in range(17):
                s0 = (t // S) * S
                c0 = s0 + ((t - s0) // chunk) * chunk
                M = torch.zeros(3, 3, dtype=torch.float64)
                z = 0.0
                for tau in range(s0, c0):
                    M += torch.outer(k[b, tau], k[b, tau])
                    z += float(k[b, tau] @ k[b, tau])
                slow[b, t] = q[b, t] if z == 0 else M @ q[b, t] / z
        err = rel_err(fast, slow)
        report(err <= 1e-13, f"qk_project vs loop (chunk {chunk}, shard {shard}) rel err {err:.2e}")

    # 2. a local memory with C = 1 is per-token online GD (closed-form gradients, momentum, decay, resets)
    x = tt.random_inputs(2, 11, 3, 4, 1, use_global=False, with_grad_o=False, seed=5)
    shard = 4
    o = tt.memory_run(x["l0_w1"], x["l0_w2"], x["l0_theta"], x["l0_eta"], x["l0_alpha"], x["q"], x["k"], x["v"],
                      1, shard).detach()
    slow = torch.empty_like(o)
    for b in range(2):
        for t in range(11):
            if t % shard == 0:
                W1, W2 = x["l0_w1"][b].clone(), x["l0_w2"][b].clone()
                S1, S2 = torch.zeros_like(W1), torch.zeros_like(W2)
            qt = x["q"][b, t]
            slow[b, t] = qt + W2 @ F.silu(W1 @ qt)
            if (t + 1) % shard == 0 or t == 10:
                continue  # last token of a shard: apply only
            kt, vt = x["k"][b, t], x["v"][b, t]
            z = W1 @ kt
            s = torch.sigmoid(z)
            e = 2 * (kt + W2 @ (z * s) - vt)
            th = x["l0_theta"][b, t]
            d2 = -th * torch.outer(e, z * s)
            d1 = -th * torch.outer((W2.t() @ e) * s * (1 + z * (1 - s)), kt)
            S1 = d1 + x["l0_eta"][b, t] * S1
            S2 = d2 + x["l0_eta"][b, t] * S2
            keep = 1 - x["l0_alpha"][b, t]
            W1, W2 = keep * W1 + S1, keep * W2 + S2
    err = rel_err(o, slow)
    report(err <= 1e-12, f"C=1 local memory == per-token online GD with resets   rel err {err:.2e}")

    # 3. shards are independent: perturbing shard 0's tokens leaves later shards' local outputs unchanged
    x = tt.random_inputs(2, 14, 3, 4, 2, use_global=False, with_grad_o=False, seed=9)
    opts = dict(local_chunks=[2, 3], shard=5, qk_proj=True, use_global=False)
    o1 = tt.tnt_forward(x, **opts).detach()
    x2 = dict(x)
    for n in ("q", "k", "v"):
        x2[n] = x[n].clone()
        x2[n][:, :5] += 0.3
    o2 = tt.tnt_forward(x2, **opts).detach()
    report(torch.equal(o1[:, 5:], o2[:, 5:]) and not torch.equal(o1[:, :5], o2[:, :5]),
           "local shards independent (tokens >= S_L unchanged by tokens < S_L)")

    # 4. autograd gradients vs central finite differences (float64), every input
    for j, opts in enumerate([dict(global_chunk=3, local_chunks=[2, 3], shard=5, qk_proj=True, use_global=True),
                              dict(global_chunk=4, local_chunks=[1], shard=3, qk_proj=False, use_global=True),
                              dict(local_chunks=[2], shard=4, qk_proj=True, use_global=False)]):
        x = tt.random_inputs(1, 9, 2, 3, len(opts["local_chunks"]), use_global=opts["use_global"], seed=30 + j)
        grad_o = x.pop("grad_o")
        _, grads = tt.tnt_forward_backward(x, grad_o, **opts)

        def loss(xx):
            return (tt.tnt_forward(xx, **opts) * grad_o).sum().item()

        eps = 1e-6
        worst, worst_name = 0.0, ""
        for n in x:
            fd = torch.zeros_like(x[n])
            for idx in range(x[n].numel()):
                def shifted(delta):
                    xs = dict(x)
                    xs[n] = x[n].clone()
                    xs[n].view(-1)[idx] += delta
                    return loss(xs)
                fd.view(-1)[idx] = (shifted(eps) - shifted(-eps)) / (2 * eps)
            err = rel_err(grads[n], fd)
            if err >= worst:
                worst, worst_name = err, n
        report(worst <= 1e-6, f"grads vs central FD ({opts}) worst rel err {worst:.2e} ({worst_name})")

    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ttt", help="path to the ttt binary")
    ap.add_argument("--self-test", action="store_true", help="check the torch reference itself")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.self_test:
        return self_test()
    if not args.ttt:
        ap.error("--ttt is required (or --self-test)")
    if not os.path.exists(args.ttt):
        print(f"ttt binary not found: {args.ttt}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        p1, f1 = compare_configs(args.ttt, tmp)
        p2, f2 = error_cases(args.ttt, tmp)
    print(f"{p1 + p2} passed, {f1 + f2} failed")
    return 0 if f1 + f2 == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
