#!/usr/bin/env python3
"""Check `ttt op lact` against the independent PyTorch implementation in bench/lact_torch.py.

  /usr/bin/python3 tests/reference/check_op_lact.py --ttt build/ttt     # compare the C++ operator
  /usr/bin/python3 tests/reference/check_op_lact.py --self-test         # check the torch reference itself

For every configuration (chunk sizes dividing T and not, C = 1 and C >= T, causal / bidirectional,
weight norm post / pre / none, Muon on / off, momentum on / off, float64 and float32) it writes seeded
random inputs to a safetensors file, runs `ttt op lact`, computes the same in torch float64 and compares
o and every grad_<name>: ||x - ref|| / ||ref|| <= 1e-10 for float64 inputs, <= 1e-4 for float32 inputs.
It also checks that malformed inputs (wrong shape, mixed dtype, missing tensor) make the command fail
with a message naming the tensor. Exit status 0 iff everything passed.

--self-test checks the reference: the vectorized forward against a slow per-sequence, per-token loop
whose inner gradients come from autograd (with C = 1 this is plain online learning), and the autograd
gradients of the outer loss against central finite differences in float64.
"""
import argparse
import math
import os
import re
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "bench"))
import lact_torch as lt  # noqa: E402

B, T = 3, 13

# (name, d, dh, chunk, program, weight_norm, muon, momentum, dtype, grad_o)
CONFIGS = [
    ("causal-C4-post-mom",          6, 10, 4,  "causal",        "post", False, True,  "F64", True),
    ("causal-C5-post",              6, 10, 5,  "causal",        "post", False, False, "F64", True),
    ("causal-C1-post-mom",          5, 8,  1,  "causal",        "post", False, True,  "F64", True),
    ("causal-C13=T-post-mom",       6, 10, 13, "causal",        "post", False, True,  "F64", True),
    ("causal-C20>T-none",           4, 8,  20, "causal",        "none", False, False, "F64", True),
    ("causal-C3-pre-mom",           6, 12, 3,  "causal",        "pre",  False, True,  "F64", True),
    ("causal-C4-none-mom",          8, 8,  4,  "causal",        "none", False, True,  "F64", True),
    ("causal-C4-post-mom-muon",     6, 10, 4,  "causal",        "post", True,  True,  "F64", True),
    ("causal-C6-pre-muon",          8, 6,  6,  "causal",        "pre",  True,  False, "F64", True),
    ("causal-C1-none-mom-muon",     4, 8,  1,  "causal",        "none", True,  True,  "F64", True),
    ("causal-C7-post-mom-muon",     7, 7,  7,  "causal",        "post", True,  True,  "F64", True),
    ("bidir-C4-post-mom",           6, 10, 4,  "bidirectional", "post", False, True,  "F64", True),
    ("bidir-C5-pre-mom-muon",       6, 12, 5,  "bidirectional", "pre",  True,  True,  "F64", True),
    ("bidir-C1-none",               4, 8,  1,  "bidirectional", "none", False, False, "F64", True),
    ("bidir-C13=T-post-muon",       8, 6,  13, "bidirectional", "post", True,  False, "F64", True),
    ("bidir-C16>T-pre-mom",         5, 9,  16, "bidirectional", "pre",  False, True,  "F64", True),
    ("bidir-C3-none-mom-muon",      6, 10, 3,  "bidirectional", "none", True,  True,  "F64", True),
    ("causal-C5-post-mom-muon-fwd", 6, 10, 5,  "causal",        "post", True,  True,  "F64", False),
    # pre-norm as the public prenorm operator (W0 unnormalized until the first update): every chunking
    # (C = 1, C dividing T or not, C = T and C > T where no update happens), Muon and momentum on / off.
    # (Muon with C = 1 and no momentum is left out: every update is then lr times a rank-1 matrix, which NS5
    # normalizes away, so grad_lr* is suppressed to ~1e-3 of the other gradients and is the residue of a
    # cancellation; float64 rounding alone leaves ~1e-9 of it with every weight norm, post and none included --
    # tests/test_lact_fused.cpp has the same note.)
    ("causal-C4-pre",               6, 10, 4,  "causal",        "pre",  False, False, "F64", True),
    ("causal-C1-pre-mom",           5, 8,  1,  "causal",        "pre",  False, True,  "F64", True),
    ("causal-C5-pre-mom-muon",      6, 10, 5,  "causal",        "pre",  True,  True,  "F64", True),
    ("causal-C13=T-pre-mom-muon",   6, 10, 13, "causal",        "pre",  True,  True,  "F64", True),
    ("causal-C20>T-pre",            4, 8,  20, "causal",        "pre",  False, False, "F64", True),
    ("bidir-C4-pre",                6, 10, 4,  "bidirectional", "pre",  False, False, "F64", True),
    ("bidir-C1-pre-mom-muon",       4, 8,  1,  "bidirectional", "pre",  True,  True,  "F64", True),
    ("bidir-C2-pre-muon",           4, 8,  2,  "bidirectional", "pre",  True,  False, "F64", True),
    ("bidir-C13=T-pre-mom-muon",    8, 6,  13, "bidirectional", "pre",  True,  True,  "F64", True),
    ("causal-C4-pre-mom-muon-fwd",  6, 10, 4,  "causal",        "pre",  True,  True,  "F64", False),
    ("f32-causal-C4-post-mom",      6, 10, 4,  "causal",        "post", False, True,  "F32", True),
    ("f32-causal-C4-pre-mom",       6, 10, 4,  "causal",        "pre",  False, True,  "F32", True),
    ("f32-bidir-C3-pre-mom",        6, 10, 3,  "bidirectional", "pre",  False, True,  "F32", True),
    # float32 with Muon: forward only. NS5 normalizes each update, so grad_lr* are small and amplify f32
    # rounding: torch's own float32 gradients deviate from float64 by up to ~1e-4 there (o: ~1e-6).
    ("f32-causal-C4-post-mom-muon-fwd", 6, 10, 4, "causal",     "post", True,  True,  "F32", False),
]
TOL = {"F64": 1e-10, "F32": 1e-4}
DTYPES = {"F64": torch.float64, "F32": torch.float32}


def rel_err(x, ref):
    x = x.double()
    ref = ref.double()
    den = ref.norm().item()
    num = (x - ref).norm().item()
    if den == 0.0:
        return num  # reference exactly zero: absolute error
    return num / den


def opts_of(cfg):
    _, _, _, chunk, program, wn, muon, _, _, _ = cfg
    return dict(chunk=chunk, program=program, weight_norm=wn, muon=muon)


def inputs_of(cfg, seed):
    _, d, dh, _, _, _, _, mom, dtype, grad = cfg
    return lt.random_inputs(B, T, d, dh, dtype=DTYPES[dtype], with_momentum=mom, with_grad_o=grad, seed=seed)


def reference(x, opts):
    """o and grads in float64 from inputs x (any float dtype), as dict of output names."""
    x64 = {n: t.double() for n, t in x.items()}
    grad_o = x64.pop("grad_o", None)
    if grad_o is None:
        with torch.no_grad():
            return {"o": lt.lact_forward(**x64, **opts)}
    o, grads = lt.lact_forward_backward(x64, grad_o, **opts)
    out = {"o": o}
    out.update({f"grad_{n}": g for n, g in grads.items()})
    return out


# Outputs `ttt op lact` may add beyond o and grad_<input>: d sum(o * grad_o) / d grad_o = o.
OPTIONAL_OUTPUTS = {"grad_grad_o": "o"}


def cli_flags(opts):
    flags = ["--chunk", str(opts["chunk"]), "--program", opts["program"], "--weight-norm", opts["weight_norm"]]
    if opts["muon"]:
        flags.append("--muon")
    return flags


def run_ttt(ttt, inp, out, opts):
    cmd = [ttt, "op", "lact", "--in", inp, "--out", out] + cli_flags(opts)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


# ----------------------------------------------------------------------------------------------------------
# comparison against the C++ operator

def compare_configs(ttt, tmp):
    passed = failed = 0
    for i, cfg in enumerate(CONFIGS):
        name, dtype = cfg[0], cfg[8]
        opts = opts_of(cfg)
        x = inputs_of(cfg, seed=1000 + i)
        inp = os.path.join(tmp, f"in_{i}.safetensors")
        outp = os.path.join(tmp, f"out_{i}.safetensors")
        lt.save_safetensors(inp, x)
        problems = []
        worst, worst_name = 0.0, "-"
        r = run_ttt(ttt, inp, outp, opts)
        if r.returncode != 0:
            problems.append(f"ttt exited {r.returncode}: {r.stderr.strip()[-500:]}")
        else:
            got = lt.load_safetensors(outp)
            ref = reference(x, opts)
            required = set(ref)
            if "grad_o" in x:
                for n, same_as in OPTIONAL_OUTPUTS.items():
                    if n in got:
                        ref[n] = ref[same_as]
            missing = sorted(set(ref) - set(got))
            extra = sorted(set(got) - set(ref))
            if missing:
                problems.append(f"missing outputs {missing}")
            if extra:
                problems.append(f"unexpected outputs {extra}")
            for n in ref:
                if n not in got:
                    continue
                if list(got[n].shape) != list(ref[n].shape):
                    problems.append(f"{n}: shape {list(got[n].shape)}, expected {list(ref[n].shape)}")
                    continue
                if got[n].dtype != DTYPES[dtype]:
                    print(f"  note: {name}: {n} has dtype {got[n].dtype}, inputs were {dtype}")
                if not torch.isfinite(got[n].double()).all():
                    problems.append(f"{n}: non-finite values")
                    continue
                err = rel_err(got[n], ref[n])
                if n in required and (err > worst or worst_name == "-"):
                    worst, worst_name = err, n
                if not err <= TOL[dtype]:
                    problems.append(f"{n}: rel err {err:.3e} > {TOL[dtype]:.0e} "
                                    f"(|ref| = {ref[n].norm().item():.3e}, |got| = {got[n].norm().item():.3e})"
                                    + (" [d sum(o*grad_o)/d grad_o must equal o, or leave the output out]"
                                       if n in OPTIONAL_OUTPUTS else ""))
        status = "ok  " if not problems else "FAIL"
        print(f"{status} {name:31s} {dtype} worst rel err {worst:.3e} ({worst_name})", flush=True)
        for pr in problems:
            print(f"       {pr}", flush=True)
        if problems:
            failed += 1
        else:
            passed += 1
    return passed, failed


def error_cases(ttt, tmp):
    """Malformed inputs must make `ttt op lact` fail with a message naming the offending tensor."""
    cfg = CONFIGS[0]
    opts = opts_of(cfg)
    base = inputs_of(cfg, seed=7)
    cases = []

    x = dict(base)
    x["v"] = torch.randn(B, T + 1, x["v"].shape[2], dtype=torch.float64)
    cases.append(("v with a different T", x, ("v",)))

    x = dict(base)
    x["q"] = torch.randn(B, T + 2, x["q"].shape[2], dtype=torch.float64)
    # q and k (and v) then disagree on T: naming either side of the disagreement is accepted.
    cases.append(("q with a different T", x, ("q", "k", "v")))

    x = dict(base)
    x["lr0"] = base["lr0"][:, :-1].contiguous()
    cases.append(("lr0 too short", x, ("lr0",)))

    x = dict(base)
    x["w1"] = torch.randn(B, base["w1"].shape[1] + 1, base["w1"].shape[2], dtype=torch.float64)
    cases.append(("w1 with a wrong shape", x, ("w1",)))

    x = dict(base)
    x["lr1"] = base["lr1"].float()
    cases.append(("lr1 as F32 among F64", x, ("lr1",)))

    x = dict(base)
    x["k"] = base["k"].float()
    cases.append(("k as F32 among F64", x, ("k",)))

    x = dict(base)
    del x["k"]
    cases.append(("k missing", x, ("k",)))

    passed = failed = 0
    for i, (desc, x, tnames) in enumerate(cases):
        inp = os.path.join(tmp, f"bad_{i}.safetensors")
        outp = os.path.join(tmp, f"bad_out_{i}.safetensors")
        lt.save_safetensors(inp, x)
        r = run_ttt(ttt, inp, outp, opts)
        msg = r.stderr.strip().replace("\n", " | ")
        named = any(re.search(r"(?<![A-Za-z0-9_])" + re.escape(t) + r"(?![A-Za-z0-9_])", r.stderr)
                    for t in tnames)
        ok = r.returncode != 0 and named
        print(f"{'ok  ' if ok else 'FAIL'} error: {desc:26s} rc={r.returncode} stderr: {msg[:200]}", flush=True)
        if not ok and r.returncode != 0:
            print(f"       the message names none of {list(tnames)}", flush=True)
        if ok:
            passed += 1
        else:
            failed += 1
    return passed, failed


# ----------------------------------------------------------------------------------------------------------
# self-test of the reference

def slow_reference(x, chunk, program, weight_norm, muon):
    """Loop version: per sequence-head, per token, inner gradients from autograd, NS5 on 2-D matrices.

    Forward only. With chunk = 1 and program causal this is plain per-token online learning:
    o_t = f_W(q_t); then W <- W - lr_t grad l_t (plus momentum / Muon / weight norm).
    """
    q, k, v = x["q"], x["k"], x["v"]
    lrs = (x["lr0"], x["lr1"], x["lr2"])
    mom = x.get("momentum")
    Bn, Tn, _ = q.shape
    out = torch.zeros_like(q)

    def f(ws, xv):
        return ws[1] @ (F.silu(ws[0] @ xv) * (ws[2] @ xv))

    def ns5_2d(m):
        tr = m.shape[0] > m.shape[1]
        X = m.t() if tr else m
        X = X / (torch.sqrt((X * X).sum()) + 1e-7)
        for a, b, c in lt.NS5_COEFFS:
            A = X @ X.t()
            X = a * X + (b * A + c * A @ A) @ X
        return X.t() if tr else X

    for b in range(Bn):
        init = [x["w0"][b], x["w1"][b], x["w2"][b]]
        tgt = [[math.sqrt(sum(float(w[r, j]) ** 2 for j in range(w.shape[1]))) for r in range(w.shape[0])]
               for w in init]

        def rownorm(ws):
            res = []
            for w, tg in zip(ws, tgt):
                rows = [w[r] / (torch.sqrt((w[r] * w[r]).sum()) + 1e-5) * tg[r] for r in range(w.shape[0])]
                res.append(torch.stack(rows))
            return res

        state = [w.clone() for w in init]
        S = [torch.zeros_like(w) for w in init]
        updated = False  # pre-norm: W0 itself is used until the first update

        def eff():
            return rownorm(state) if weight_norm == "pre" and updated else state

        def update(s, e):
            nonlocal state, S, updated
            ws = eff()
            dws = [torch.zeros_like(w) for w in ws]
            for t in range(s, e):
                for i in range(3):
                    wl = [w.detach().clone().requires_grad_(True) for w in ws]
                    loss = -torch.dot(f(wl, k[b, t]), v[b, t])
                    gi = torch.autograd.grad(loss, wl[i])[0]
                    dws[i] = dws[i] - lrs[i][b, t] * gi
            if mom is not None:
                mbar = sum(float(mom[b, t]) for t in range(s, e)) / (e - s)
                S = [dw + mbar * s_ for dw, s_ in zip(dws, S)]
                dws = [s_.clone() for s_ in S]
            if muon:
                dws = [ns5_2d(dw) for dw in dws]
            state = [w + dw for w, dw in zip(state, dws)]
            if weight_norm == "post":
                state = rownorm(state)
            updated = True

        def apply(s, e):
            ws = eff()
            for t in range(s, e):
                out[b, t] = f(ws, q[b, t]).detach()

        for s in range(0, Tn, chunk):
            e = min(s + chunk, Tn)
            if program == "causal":
                apply(s, e)
                if e < Tn:
                    update(s, e)
            else:
                update(s, e)
                apply(s, e)
    return out


def self_test():
    passed = failed = 0

    def report(ok, line):
        nonlocal passed, failed
        print(f"{'ok  ' if ok else 'FAIL'} {line}", flush=True)
        if ok:
            passed += 1
        else:
            failed += 1

    # 1. vectorized forward == slow loop (every configuration, float64)
    for i, cfg in enumerate(CONFIGS):
        x = {n: t.double() for n, t in inputs_of(cfg, seed=1000 + i).items()}
        x.pop("grad_o", None)
        opts = opts_of(cfg)
        with torch.no_grad():
            fast = lt.lact_forward(**x, **opts)
        slow = slow_reference(x, **opts)
        err = rel_err(fast, slow)
        report(err <= 1e-12, f"forward vs loop     {cfg[0]:30s} rel err {err:.3e}")

    # 2. C = 1 causal is per-token online learning: o_t depends only on tokens < t, and token 0 sees W0
    x = lt.random_inputs(2, 6, 4, 7, seed=3)
    x.pop("grad_o")
    with torch.no_grad():
        o = lt.lact_forward(**x, chunk=1, program="causal", weight_norm="none", muon=False)
        o0 = lt.swiglu_apply(x["w0"], x["w1"], x["w2"], x["q"][:, :1])
        x2 = dict(x)
        x2["k"] = x["k"].clone()
        x2["k"][:, 3:] += 1.0
        o2 = lt.lact_forward(**x2, chunk=1, program="causal", weight_norm="none", muon=False)
    err0 = rel_err(o[:, :1], o0)
    report(err0 == 0.0, f"C=1 token 0 uses W0                               err {err0:.3e}")
    causal_ok = torch.equal(o[:, :4], o2[:, :4]) and not torch.equal(o[:, 4:], o2[:, 4:])
    report(causal_ok, "C=1 o_t independent of k_s for s >= t (causality)")

    # 2b. pre-norm as the public prenorm operator: the first chunk applies W0 itself (not its row-normalized
    # copy, which differs by the 1e-5 of the normalization), and with C >= T (no update) pre equals none.
    with torch.no_grad():
        o_pre = lt.lact_forward(**x, chunk=2, program="causal", weight_norm="pre", muon=True)
        o_w0 = lt.swiglu_apply(x["w0"], x["w1"], x["w2"], x["q"][:, :2])
        tg = [torch.linalg.vector_norm(w, dim=-1, keepdim=True) for w in (x["w0"], x["w1"], x["w2"])]
        wn = [lt.row_normalize(w, t) for w, t in zip((x["w0"], x["w1"], x["w2"]), tg)]
        o_wn = lt.swiglu_apply(wn[0], wn[1], wn[2], x["q"][:, :2])
        o_pre_long = lt.lact_forward(**x, chunk=6, program="causal", weight_norm="pre", muon=True)
        o_none_long = lt.lact_forward(**x, chunk=6, program="causal", weight_norm="none", muon=True)
    ok = torch.equal(o_pre[:, :2], o_w0) and rel_err(o_wn, o_w0) > 1e-7
    report(ok, f"pre-norm chunk 0 uses W0 unnormalized (normalized copy differs by {rel_err(o_wn, o_w0):.1e})")
    report(torch.equal(o_pre_long, o_none_long), "pre-norm with C >= T equals no weight norm")

    # 3. autograd gradients vs central finite differences (float64, 4-point stencil), every input
    fd_cfgs = [
        dict(chunk=2, program="causal", weight_norm="post", muon=True, mom=True),
        dict(chunk=3, program="bidirectional", weight_norm="pre", muon=False, mom=True),
        dict(chunk=3, program="causal", weight_norm="pre", muon=True, mom=False),
        dict(chunk=1, program="causal", weight_norm="none", muon=False, mom=True),
        dict(chunk=4, program="bidirectional", weight_norm="post", muon=True, mom=False),
    ]
    for j, c in enumerate(fd_cfgs):
        c = dict(c)
        mom = c.pop("mom")
        x = lt.random_inputs(2, 7, 3, 5, with_momentum=mom, seed=50 + j)
        grad_o = x.pop("grad_o")
        _, grads = lt.lact_forward_backward(x, grad_o, **c)

        def loss(xx):
            with torch.no_grad():
                return (lt.lact_forward(**xx, **c) * grad_o).sum().item()

        eps = 1e-6
        worst = 0.0
        worst_name = ""
        for n in x:
            fd = torch.zeros_like(x[n])
            flat = fd.view(-1)
            for idx in range(x[n].numel()):
                def shifted(delta):
                    xs = dict(x)
                    xs[n] = x[n].clone()
                    xs[n].view(-1)[idx] += delta
                    return loss(xs)
                # fourth-order central stencil: Muon makes the loss strongly curved in the rates, so the
                # plain two-point O(eps^2) truncation error would be ~1e-6 relative at eps = 1e-6.
                flat[idx] = (8 * (shifted(eps) - shifted(-eps)) - (shifted(2 * eps) - shifted(-2 * eps))) \
                    / (12 * eps)
            err = rel_err(grads[n], fd)
            if err >= worst:
                worst, worst_name = err, n
        desc = ", ".join(f"{k_}={v_}" for k_, v_ in c.items()) + f", momentum={mom}"
        report(worst <= 1e-6, f"grads vs central FD ({desc}) worst rel err {worst:.3e} ({worst_name})")

    # 4. safetensors round trip
    with tempfile.TemporaryDirectory() as tmp:
        p = os.path.join(tmp, "rt.safetensors")
        ts = {"a": torch.randn(2, 3, dtype=torch.float64), "b": torch.randn(4, dtype=torch.float32),
              "c": torch.randn(3, 2).to(torch.bfloat16)}
        lt.save_safetensors(p, ts, metadata={"x": 1})
        back = lt.load_safetensors(p)
        ok = all(torch.equal(ts[n], back[n]) and ts[n].dtype == back[n].dtype for n in ts)
        report(ok, "safetensors round trip (F64, F32, BF16)")

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
