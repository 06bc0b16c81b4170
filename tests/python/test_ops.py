"""ttt_torch.ops (ttt's operators as torch autograd functions, through libttt_capi.so) on the CPU, and on a GPU
when there is one:

  * lact_swiglu and tnt: forward and every gradient against the independent float64 PyTorch references
    (bench/lact_torch.py, bench/tnt_torch.py) over weight norms, Muon, momentum and chunkings;
  * torch.autograd.gradcheck in float64 on small shapes (lact_swiglu: Muon on/off x momentum on/off x post/pre;
    tnt: global + two local memories, local only);
  * the public calling convention: lact_swiglu against a float64 port of the public operator's loop (post and
    pre norm, momentum, Muon, the apply-only last chunk), rates and momentum [b, l, 1], strided views (the
    public layer's lr chunks), bf16 / mixed dtypes (output in v's dtype, gradients in their inputs' dtypes);
  * bad inputs (shape, dtype, device, options, NaN, overflow, missing library) raise a Python exception whose
    message names the tensor or option; never a crash;
  * the Python side of lact_swiglu's direct GPU path (device pointers, runs kept for the backward, repeated
    backwards) on the CPU, over a stand-in of the library's device entry points that computes with its CPU operator;
  * GPU variants (CUDA tensors: the CUDA kernels) against the CPU's float64 results; skipped without a GPU.

    /usr/bin/python3 tests/python/test_ops.py --lib build/libttt_capi.so

Run by ctest (CMakeLists.txt); exits 77 (ctest: skipped) when this Python cannot import torch."""
import argparse
import ctypes
import os
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "python"))
sys.path.insert(0, os.path.join(REPO, "bench"))

try:
    import torch
    import torch.nn.functional as F
except ImportError as e:
    print(f"SKIPPED: {sys.executable} cannot import torch ({e}); install python3-torch (scripts/setup.sh) to run "
          f"the ttt_torch.ops tests")
    sys.exit(77)

import lact_torch  # noqa: E402  (independent reference of the LaCT operator)
import tnt_torch  # noqa: E402  (independent reference of the TNT branch)
from ttt_torch import ops  # noqa: E402

F64_TOL = 1e-10


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def lact_inputs(b, l, d, dh, momentum=True, dtype=torch.float64, seed=0):
    """Random inputs in the public convention: rates and momentum [b, l, 1]."""
    x = lact_torch.random_inputs(b, l, d, dh, dtype=dtype, with_momentum=momentum, with_grad_o=True, seed=seed)
    for n in ("lr0", "lr1", "lr2", "momentum"):
        if n in x:
            x[n] = x[n].unsqueeze(-1)
    return x


def call_lact(x, **opts):
    return ops.lact_swiglu(x["w0"], x["w1"], x["w2"], x["q"], x["k"], x["v"], x["lr0"], x["lr1"], x["lr2"],
                           momentum=x.get("momentum"), **opts)


def reference_lact(x, chunk, weight_norm, muon):
    """o and the gradients of sum(o * grad_o) by the torch reference (rates [b, l])."""
    flat = {n: (t.squeeze(-1) if n.startswith("lr") or n == "momentum" else t) for n, t in x.items()
            if n != "grad_o"}
    o, g = lact_torch.lact_forward_backward(flat, x["grad_o"], chunk=chunk, program="causal",
                                            weight_norm=weight_norm, muon=muon)
    return o, g


LACT_CONFIGS = [  # (name, d, dh, l, chunk, weight_norm, muon, momentum)
    ("post-mom-C4", 6, 10, 13, 4, "post", False, True),
    ("post-C5", 6, 10, 13, 5, "post", False, False),
    ("pre-mom-C3", 6, 12, 13, 3, "pre", False, True),
    ("none-mom-C4", 8, 8, 13, 4, "none", False, True),
    ("post-mom-muon-C4", 6, 10, 13, 4, "post", True, True),
    ("pre-muon-C6", 8, 6, 13, 6, "pre", True, False),
    ("post-C13=T", 5, 7, 13, 13, "post", False, True),
    ("post-C20>T", 4, 8, 13, 20, "post", False, False),
    ("post-mom-C4-T12", 6, 10, 12, 4, "post", False, True),
]


def public_convention_lact(w0, w1, w2, q, k, v, lr0, lr1, lr2, chunk_size, use_muon=False, momentum=None,
                           prenorm=False):
    """The public block_causal_lact_swiglu / prenorm_block_causal_lact_swiglu as their docstrings and loops state
    them, written here in float64 without torch.compile or autocast (so Muon's Newton-Schulz runs in float64, not
    bf16): per chunk of chunk_size tokens except the last, apply the current fast weights to q, then take one
    step of the negative dot-product loss -v . f(k) with per-token rates (momentum: the chunk mean of the gate
    times the previous step), optionally orthogonalized, then renormalize every row to its initial norm (prenorm:
    the accumulated weights are kept unnormalized and the normalized copy is what is applied). The last chunk is
    only applied. Rates and momentum [b, l, 1]."""
    def swiglu(a0, a1, a2, x):  # x [b, n, d] -> [b, n, d]
        return (F.silu(x @ a0.transpose(1, 2)) * (x @ a2.transpose(1, 2))) @ a1.transpose(1, 2)

    def ns5(g):
        x = g.transpose(1, 2) if g.shape[1] > g.shape[2] else g
        x = x / (x.norm(dim=(1, 2), keepdim=True) + 1e-7)
        for a, b_, c in ((4.0848, -6.8946, 2.9270), (3.9505, -6.3029, 2.6377), (3.7418, -5.5913, 2.3037),
                         (2.8769, -3.1427, 1.2046), (2.8366, -3.0525, 1.2012)):
            m = x @ x.transpose(1, 2)
            x = a * x + (b_ * m + c * m @ m) @ x
        return x.transpose(1, 2) if g.shape[1] > g.shape[2] else x

    norms = [w.norm(dim=2, keepdim=True) for w in (w0, w1, w2)]
    applied, kept = [w0, w1, w2], [w0, w1, w2]
    prev = None
    l = q.shape[1]
    out = torch.zeros_like(v)
    last = 0  # where the apply-only last chunk starts
    for start in range(0, l - chunk_size, chunk_size):
        end = start + chunk_size
        a0, a1, a2 = applied
        out[:, start:end] = swiglu(a0, a1, a2, q[:, start:end])
        kc, vc = k[:, start:end], v[:, start:end]
        g, h = kc @ a0.transpose(1, 2), kc @ a2.transpose(1, 2)   # [b, n, dh]
        u = vc @ a1                                               # dL/d(hidden) of -v.f: -u; steps cancel the sign
        hidden = F.silu(g) * h
        sig = torch.sigmoid(g)
        dsilu = sig * (1 + g * (1 - sig))
        steps = [((u * h * dsilu) * lr0[:, start:end]).transpose(1, 2) @ kc,   # w0
                 (vc * lr1[:, start:end]).transpose(1, 2) @ hidden,            # w1
                 ((u * F.silu(g)) * lr2[:, start:end]).transpose(1, 2) @ kc]   # w2
        if momentum is not None:
            m = momentum[:, start:end].mean(dim=1, keepdim=True)
            if prev is not None:
                steps = [s_ + p * m for s_, p in zip(steps, prev)]
            prev = steps
        if use_muon:
            steps = [ns5(s_) for s_ in steps]
        kept = [w + s_ for w, s_ in zip(kept, steps)]
        applied = [w / (w.norm(dim=2, keepdim=True) + 1e-5) * n for w, n in zip(kept, norms)]
        if not prenorm:
            kept = applied
        last = end
    a0, a1, a2 = applied
    out[:, last:] = swiglu(a0, a1, a2, q[:, last:])
    return out


class LactSwiglu(unittest.TestCase):
    def test_public_convention(self):
        # ops.lact_swiglu against the public operator's loop (above), its arguments in the public layouts.
        for name, d, dh, l, chunk, muon, mom, prenorm in (
                ("post-mom-C4", 6, 10, 13, 4, False, True, False), ("post-C4-T12", 5, 7, 12, 4, False, False, False),
                ("pre-mom-muon-C3", 6, 12, 13, 3, True, True, True), ("post-muon-C5", 8, 6, 13, 5, True, False, False),
                ("pre-C20>T", 4, 8, 13, 20, False, True, True)):
            with self.subTest(name):
                x = lact_inputs(2, l, d, dh, momentum=mom, seed=len(name) + 40)
                args = [x[n] for n in ("w0", "w1", "w2", "q", "k", "v", "lr0", "lr1", "lr2")]
                ref = public_convention_lact(*args, chunk_size=chunk, use_muon=muon, momentum=x.get("momentum"),
                                             prenorm=prenorm)
                got = ops.lact_swiglu(*args, chunk_size=chunk, use_muon=muon, momentum=x.get("momentum"),
                                      weight_norm="pre" if prenorm else "post")
                self.assertLess(rel(got, ref), F64_TOL)

    def test_forward_and_gradients_match_reference_float64(self):
        for name, d, dh, l, chunk, wn, muon, mom in LACT_CONFIGS:
            with self.subTest(name):
                x = lact_inputs(3, l, d, dh, momentum=mom, seed=len(name))
                leaves = {n: t.clone().requires_grad_(True) for n, t in x.items() if n != "grad_o"}
                o = call_lact(leaves, chunk_size=chunk, use_muon=muon, weight_norm=wn)
                o_ref, g_ref = reference_lact(x, chunk, wn, muon)
                self.assertEqual(o.dtype, torch.float64)
                self.assertEqual(tuple(o.shape), (3, l, d))
                self.assertLess(rel(o.detach(), o_ref), F64_TOL)
                o.backward(x["grad_o"])
                for n, leaf in leaves.items():
                    self.assertEqual(leaf.grad.shape, leaf.shape, n)
                    self.assertLess(rel(leaf.grad.reshape(g_ref[n].shape), g_ref[n]), F64_TOL, f"grad of {n}")

    def test_gradcheck_float64(self):
        for muon in (False, True):
            for mom in (False, True):
                for wn in ("post", "pre"):
                    with self.subTest(muon=muon, momentum=mom, weight_norm=wn):
                        x = lact_inputs(2, 7, 3, 4, momentum=mom, seed=3)
                        names = [n for n in x if n != "grad_o"]
                        leaves = [x[n].clone().requires_grad_(True) for n in names]

                        def f(*ts):
                            return call_lact(dict(zip(names, ts)), chunk_size=3, use_muon=muon, weight_norm=wn)

                        self.assertTrue(torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-7, rtol=1e-5))

    def test_strided_and_public_layouts(self):
        # The public layer hands over views: lr1, lr2, lr3 = fw_lr.chunk(3, dim=-1) ([b, l, 1] slices of
        # [b, l, 3]) and transposed-contiguous q/k. The result equals that of contiguous copies.
        x = lact_inputs(2, 9, 4, 6, seed=5)
        fw_lr = torch.cat([x["lr0"], x["lr1"], x["lr2"]], dim=-1)
        lr0, lr1, lr2 = fw_lr.chunk(3, dim=-1)
        self.assertFalse(lr0.is_contiguous())
        q_t = x["q"].transpose(1, 2).contiguous().transpose(1, 2)
        self.assertFalse(q_t.is_contiguous())
        o_views = ops.lact_swiglu(x["w0"], x["w1"], x["w2"], q_t, x["k"], x["v"], lr0, lr1, lr2, chunk_size=4,
                                  momentum=x["momentum"])
        o = call_lact(x, chunk_size=4)
        self.assertTrue(torch.equal(o_views, o))
        # rates as [b, l] give the same result as [b, l, 1]
        flat = dict(x, lr0=x["lr0"].squeeze(-1), lr1=x["lr1"].squeeze(-1), lr2=x["lr2"].squeeze(-1),
                    momentum=x["momentum"].squeeze(-1))
        self.assertTrue(torch.equal(call_lact(flat, chunk_size=4), o))

    def test_mixed_dtypes_follow_the_public_convention(self):
        # fp32 weights and rates, bf16 q/k/v (what the public layer passes under autocast): computed in fp32, the
        # output in v's dtype, each gradient in its input's dtype.
        x = lact_inputs(2, 8, 4, 6, dtype=torch.float32, seed=7)
        for n in ("q", "k", "v"):
            x[n] = x[n].to(torch.bfloat16)
        leaves = {n: t.clone().requires_grad_(True) for n, t in x.items() if n != "grad_o"}
        o = call_lact(leaves, chunk_size=4)
        self.assertEqual(o.dtype, torch.bfloat16)
        o.float().sum().backward()
        for n, leaf in leaves.items():
            self.assertEqual(leaf.grad.dtype, leaf.dtype, n)
            self.assertTrue(torch.isfinite(leaf.grad.float()).all(), n)
        ref = call_lact({n: t.float() for n, t in x.items()}, chunk_size=4)
        self.assertLess(rel(o.float(), ref), 1e-2)  # bf16 rounding of the output only

    def test_only_requested_gradients(self):
        x = lact_inputs(1, 6, 3, 4, seed=2)
        q = x["q"].clone().requires_grad_(True)
        o = ops.lact_swiglu(x["w0"], x["w1"], x["w2"], q, x["k"], x["v"], x["lr0"], x["lr1"], x["lr2"],
                            chunk_size=2, momentum=x["momentum"])
        o.sum().backward()
        self.assertEqual(q.grad.shape, q.shape)
        self.assertIsNone(x["w0"].grad)


def tnt_inputs(b, l, d, dh, n_local, use_global=True, dtype=torch.float64, seed=0, dhs=None):
    return tnt_torch.random_inputs(b, l, d, dh, n_local, use_global=use_global, dtype=dtype, seed=seed, dhs=dhs)


def tnt_memories(x, n_local, use_global, rate_shape=None):
    def mem(p):
        w1, w2, th, et, al = (x[p + f] for f in ("w1", "w2", "theta", "eta", "alpha"))
        if rate_shape == "3d":
            th, et, al = th.unsqueeze(-1), et.unsqueeze(-1), al.unsqueeze(-1)
        return (w1, w2, th, et, al)
    return (mem("g_") if use_global else None), [mem(f"l{i}_") for i in range(n_local)]


TNT_CONFIGS = [  # (name, l, d, dhs, global_chunk, local_chunks, shard, qk_proj, use_global)
    ("g5-l2,3-S7-qk", 19, 3, [5, 5, 5], 5, [2, 3], 7, True, True),
    ("g6-l3-S6-noqk", 17, 4, [5, 6], 6, [3], 6, False, True),
    ("local-only-l4-S0", 13, 3, [4], None, [4], 0, True, False),
    ("global-only-g4", 11, 3, [6], 4, [], 8, True, True),
]


class Tnt(unittest.TestCase):
    def test_forward_and_gradients_match_reference_float64(self):
        for name, l, d, dhs, gc, lcs, shard, qk, ug in TNT_CONFIGS:
            with self.subTest(name):
                x = tnt_inputs(2, l, d, dhs[0], len(lcs), use_global=ug, seed=len(name), dhs=dhs)
                grad_o = x.pop("grad_o")
                leaves = {n: t.clone().requires_grad_(True) for n, t in x.items()}
                g, locs = tnt_memories(leaves, len(lcs), ug, rate_shape="3d")
                o = ops.tnt(leaves["q"], leaves["k"], leaves["v"], global_memory=g, local_memories=locs,
                            global_chunk=gc or 2048, local_chunks=lcs, shard=shard, qk_proj=qk)
                o_ref, g_ref = tnt_torch.tnt_forward_backward(x, grad_o, global_chunk=gc or 2048, local_chunks=lcs,
                                                              shard=shard or None, qk_proj=qk, use_global=ug)
                self.assertLess(rel(o.detach(), o_ref), 1e-9)
                o.backward(grad_o)
                for n, leaf in leaves.items():
                    ref = g_ref[n]
                    got = leaf.grad.reshape(ref.shape)
                    err = rel(got, ref) if ref.norm() > 0 else float(got.abs().max())
                    self.assertLess(err, 1e-9, f"grad of {n}")

    def test_gradcheck_float64(self):
        for ug, lcs in ((True, [2, 3]), (False, [3])):
            with self.subTest(use_global=ug, local_chunks=lcs):
                x = tnt_inputs(1, 9, 3, 4, len(lcs), use_global=ug, seed=11)
                x.pop("grad_o")
                names = list(x)
                leaves = [x[n].clone().requires_grad_(True) for n in names]

                def f(*ts):
                    y = dict(zip(names, ts))
                    g, locs = tnt_memories(y, len(lcs), ug)
                    return ops.tnt(y["q"], y["k"], y["v"], global_memory=g, local_memories=locs, global_chunk=4,
                                   local_chunks=lcs, shard=6)

                self.assertTrue(torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-7, rtol=1e-5))

    def test_memory_as_dict(self):
        x = tnt_inputs(1, 8, 3, 4, 1, seed=4)
        g, locs = tnt_memories(x, 1, True)
        as_dict = dict(zip(("w1", "w2", "theta", "eta", "alpha"), g))
        a = ops.tnt(x["q"], x["k"], x["v"], global_memory=g, local_memories=locs, global_chunk=4, local_chunks=[2])
        b = ops.tnt(x["q"], x["k"], x["v"], global_memory=as_dict, local_memories=locs, global_chunk=4,
                    local_chunks=[2])
        self.assertTrue(torch.equal(a, b))


class BadInputs(unittest.TestCase):
    def assertRaisesNaming(self, exc, needles, fn, *args, **kwargs):
        with self.assertRaises(exc) as cm:
            fn(*args, **kwargs)
        for needle in needles:
            self.assertIn(needle, str(cm.exception))

    def test_lact_shapes_dtypes_devices_options(self):
        x = lact_inputs(2, 6, 3, 4, seed=1)
        bad = dict(x, w1=x["w1"].transpose(1, 2).contiguous())
        self.assertRaisesNaming(ValueError, ["'w1'", "[b, d, dh]", "[2, 3, 4]", "[2, 4, 3]"], call_lact, bad)
        self.assertRaisesNaming(ValueError, ["'lr1'", "[2, 6, 1]", "[2, 6]", "[2, 6, 3]"], call_lact,
                                dict(x, lr1=x["lr1"].expand(2, 6, 3)))
        self.assertRaisesNaming(ValueError, ["'v'", "key and value widths"], call_lact,
                                dict(x, v=torch.zeros(2, 6, 5, dtype=torch.float64)))
        self.assertRaisesNaming(ValueError, ["'k'", "[2, 6, 3]"], call_lact, dict(x, k=x["k"][:, :5]))
        self.assertRaisesNaming(TypeError, ["'q'", "torch.int64"], call_lact, dict(x, q=x["q"].long()))
        self.assertRaisesNaming(TypeError, ["'w2'", "torch.Tensor", "list"], call_lact, dict(x, w2=[[1.0]]))
        self.assertRaisesNaming(ValueError, ["'momentum'", "meta"], call_lact,
                                dict(x, momentum=torch.empty(2, 6, 1, device="meta")))
        self.assertRaisesNaming(ValueError, ["chunk_size", "0"], call_lact, x, chunk_size=0)
        self.assertRaisesNaming(ValueError, ["weight_norm", "'mid'"], call_lact, x, weight_norm="mid")
        self.assertRaisesNaming(ValueError, ["precision", "'fp8'"], call_lact, x, precision="fp8")
        # the engine's own checks come back as OpError with its message
        self.assertRaisesNaming(ops.OpError, ["lact_swiglu", "precision tf32", "CUDA"], call_lact, x,
                                precision="tf32")
        nan = x["q"].clone()
        nan[1, 2, 0] = float("nan")
        self.assertRaisesNaming(ops.OpError, ["'q'", "NaN"], call_lact, dict(x, q=nan))

    def test_unknown_staging_setting(self):
        os.environ["TTT_OPS_STAGING"] = "gpu"
        try:
            self.assertRaisesNaming(ops.OpError, ["TTT_OPS_STAGING='gpu'", "'host'"], call_lact,
                                    lact_inputs(1, 4, 3, 4, seed=1))
        finally:
            os.environ.pop("TTT_OPS_STAGING")

    def test_overflow_is_an_error_not_a_nan(self):
        x = lact_inputs(1, 8, 3, 4, dtype=torch.float32, seed=6)
        huge = dict(x, v=x["v"] * 1e19)  # float32: the inner update v h^T overflows (no weight norm to tame it)
        self.assertRaisesNaming(ops.OpError, ["'o' holds NaN/Inf", "overflowed", "'v'"], call_lact, huge,
                                chunk_size=2, weight_norm="none")

    def test_tnt_bad_inputs(self):
        x = tnt_inputs(1, 8, 3, 4, 1, seed=2)
        g, locs = tnt_memories(x, 1, True)
        def run(**kw):
            args = {"q": x["q"], "k": x["k"], "v": x["v"], "global_memory": g, "local_memories": locs,
                    "global_chunk": 4, "local_chunks": [2]}
            args.update(kw)
            return ops.tnt(**args)
        self.assertRaisesNaming(ValueError, ["local_chunks", "2 entries", "1 local"], run, local_chunks=[2, 4])
        self.assertRaisesNaming(ValueError, ["global_memory.w2", "[1, 3, 4]"], run,
                                global_memory=(g[0], g[0], *g[2:]))
        self.assertRaisesNaming(ValueError, ["local_memories[0].eta", "[1, 8]"], run,
                                local_memories=[(*locs[0][:3], locs[0][3][:, :5], locs[0][4])])
        self.assertRaisesNaming(ValueError, ["global_memory", "w1, w2, theta, eta, alpha", "beta"], run,
                                global_memory={"w1": g[0], "w2": g[1], "theta": g[2], "eta": g[3], "beta": g[4]})
        self.assertRaisesNaming(ValueError, ["shard", "-1"], run, shard=-1)
        self.assertRaisesNaming(ValueError, ["no memory"], run, global_memory=None, local_memories=[],
                                local_chunks=[])
        self.assertRaisesNaming(TypeError, ["'v'", "torch.int32"], run, v=x["v"].int())
        nan = g[2].clone()
        nan[0, 3] = float("inf")
        self.assertRaisesNaming(ops.OpError, ["g_theta", "NaN or Inf"], run, global_memory=(*g[:2], nan, *g[3:]))

    def test_missing_or_wrong_library(self):
        code = ("import sys; sys.path.insert(0, %r)\n"
                "import torch\nfrom ttt_torch import ops\n"
                "try:\n    ops.lact_swiglu(*[torch.zeros(1, 2, 2)] * 6, *[torch.zeros(1, 2, 1)] * 3)\n"
                "except ops.OpError as e:\n    print('OpError:', e); sys.exit(3)\n") % os.path.join(REPO, "python")
        for lib, needle in (("/nonexistent/libttt_capi.so", "no such file"), (__file__, "cannot load")):
            r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, TTT_CAPI_LIB=lib),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            self.assertEqual(r.returncode, 3, r.stdout)
            self.assertIn(needle, r.stdout)
            self.assertIn(lib, r.stdout)


class _HostBackedDeviceLibrary:
    """A stand-in for libttt_capi.so's device entry points (ttt_lact_device_forward / _backward / ttt_lact_run_free)
    over host pointers, computing with the real library's CPU operator: lets the CPU run the Python code of the
    direct GPU path (struct, pointers, runs, repeated backwards). Every other function is the real library's."""
    NAMES = ["w0", "w1", "w2", "q", "k", "v", "lr0", "lr1", "lr2", "momentum"]

    def __init__(self, real):
        self.real, self.runs, self.next_handle = real, {}, 1

    def __getattr__(self, name):
        return getattr(self.real, name)

    @staticmethod
    def view(ptr, shape, dtype):
        n = 1
        for s in shape:
            n *= s
        ctype = ctypes.c_double if dtype == torch.float64 else ctypes.c_float
        return torch.frombuffer((ctype * n).from_address(ptr), dtype=dtype).view(*shape)

    def ttt_lact_device_forward(self, call_ref, o_ptr, with_grad, handle_ref):
        c = call_ref._obj
        dtype = {0: torch.float32, 1: torch.float64}[c.dtype]
        shapes = {"w0": (c.B, c.dh, c.d), "w1": (c.B, c.d, c.dh), "w2": (c.B, c.dh, c.d), "q": (c.B, c.T, c.d),
                  "k": (c.B, c.T, c.d), "v": (c.B, c.T, c.d)}
        named = {n: self.view(c.inputs[i], shapes.get(n, (c.B, c.T)), dtype).clone()
                 for i, n in enumerate(self.NAMES) if c.inputs[i]}
        options = {"chunk": c.chunk, "weight_norm": c.weight_norm.decode(), "muon": bool(c.muon),
                   "precision": c.precision.decode()}
        self.view(o_ptr, (c.B, c.T, c.d), dtype).copy_(ops._run("lact", options, named, torch.device("cpu"))["o"])
        handle_ref._obj.value = self.next_handle
        self.runs[self.next_handle] = (options, named, with_grad)
        self.next_handle += 1

    def ttt_lact_device_backward(self, handle, grad_o_ptr, pointers):
        options, named, with_grad = self.runs.pop(handle.value)  # one backward per run, as the real library
        assert with_grad
        q = named["q"]
        grads = ops._run("lact", options, dict(named, grad_o=self.view(grad_o_ptr, tuple(q.shape), q.dtype).clone()),
                         torch.device("cpu"))
        for i, n in enumerate(self.NAMES):
            if n in named:
                self.view(pointers[i], tuple(named[n].shape), q.dtype).copy_(grads["grad_" + n])

    def ttt_lact_run_free(self, handle):
        self.runs.pop(getattr(handle, "value", handle), None)


class DirectPathOnTheHost(unittest.TestCase):
    """The Python side of lact_swiglu's direct GPU path, run on the CPU over _HostBackedDeviceLibrary."""

    def setUp(self):
        import ttt_torch.ops as module
        self.module, self.saved = module, (module._lib, module._staged, module._LactDeviceCall, torch.cuda.current_stream)
        self.fake = _HostBackedDeviceLibrary(module._library())

        class Call(module._LactDeviceCall):  # host tensors have no device index
            def __init__(self, **kw):
                super().__init__(**dict(kw, device_index=kw["device_index"] or 0))

        class Stream:
            cuda_stream = 0

        module._lib, module._staged, module._LactDeviceCall = self.fake, (lambda device: False), Call
        torch.cuda.current_stream = lambda device=None: Stream()

    def tearDown(self):
        self.module._lib, self.module._staged, self.module._LactDeviceCall, torch.cuda.current_stream = self.saved

    def test_forward_gradients_and_gradcheck(self):
        for name, d, dh, l, chunk, wn, muon, mom in LACT_CONFIGS[:6]:
            with self.subTest(name):
                x = lact_inputs(2, l, d, dh, momentum=mom, seed=len(name))
                leaves = {n: t.clone().requires_grad_(True) for n, t in x.items() if n != "grad_o"}
                o = call_lact(leaves, chunk_size=chunk, use_muon=muon, weight_norm=wn)
                o_ref, g_ref = reference_lact(x, chunk, wn, muon)
                self.assertLess(rel(o.detach(), o_ref), F64_TOL)
                o.backward(x["grad_o"])
                for n, leaf in leaves.items():
                    self.assertLess(rel(leaf.grad.reshape(g_ref[n].shape), g_ref[n]), F64_TOL, f"grad of {n}")
        # gradcheck takes many backwards of one graph: each after the first starts the run again
        x = lact_inputs(1, 5, 3, 4, seed=8)
        names = [n for n in x if n != "grad_o"]
        self.assertTrue(torch.autograd.gradcheck(lambda *ts: call_lact(dict(zip(names, ts)), chunk_size=2),
                                                 [x[n].clone().requires_grad_(True) for n in names],
                                                 eps=1e-6, atol=1e-7, rtol=1e-5))
        import gc
        gc.collect()
        self.assertEqual(self.fake.runs, {})  # every run freed with its graph
        call_lact({n: x[n] for n in names}, chunk_size=2)  # no input wants a gradient: the run is freed at once
        self.assertEqual(self.fake.runs, {})


@unittest.skipUnless(torch.cuda.is_available(), "no CUDA device visible to torch")
class Gpu(unittest.TestCase):
    def setUp(self):
        if "cuda" not in ops.available_devices():
            self.skipTest(f"{ops.library_path()} was built without CUDA (devices: {ops.available_devices()})")

    def test_lact_cuda_matches_cpu_float64(self):
        # The CUDA kernels on GPU tensors against the CPU twin in float64: float64 inputs to 1e-9, float32 inputs
        # (fp32 products) to 1e-4 (gradients of float32 + Muon are left out, as in tests/reference: NS5 amplifies
        # float32 rounding in grad_lr*).
        for name, d, dh, l, chunk, wn, muon, mom in LACT_CONFIGS:
            x = lact_inputs(3, l, d, dh, momentum=mom, seed=len(name))
            cpu = {n: t.clone().requires_grad_(True) for n, t in x.items() if n != "grad_o"}
            o_cpu = call_lact(cpu, chunk_size=chunk, use_muon=muon, weight_norm=wn)
            o_cpu.backward(x["grad_o"])
            for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
                with self.subTest(name, dtype=dtype):
                    gpu = {n: t.to("cuda", dtype).requires_grad_(True) for n, t in x.items() if n != "grad_o"}
                    o_gpu = call_lact(gpu, chunk_size=chunk, use_muon=muon, weight_norm=wn)
                    self.assertEqual(o_gpu.device.type, "cuda")
                    self.assertEqual(o_gpu.dtype, dtype)
                    self.assertLess(rel(o_gpu.detach().cpu().double(), o_cpu.detach()), tol)
                    o_gpu.backward(x["grad_o"].to("cuda", dtype))
                    for n in cpu:
                        self.assertEqual(gpu[n].grad.device.type, "cuda")
                        if dtype == torch.float64 or not muon:
                            self.assertLess(rel(gpu[n].grad.cpu().double(), cpu[n].grad), tol, n)

    def test_tnt_cuda_matches_cpu(self):
        name, l, d, dhs, gc, lcs, shard, qk, ug = TNT_CONFIGS[0]
        x = tnt_inputs(2, l, d, dhs[0], len(lcs), seed=1, dhs=dhs)
        grad_o = x.pop("grad_o")
        outs = []
        for dev in ("cpu", "cuda"):
            leaves = {n: t.detach().to(dev).requires_grad_(True) for n, t in x.items()}  # new leaves per device
            g, locs = tnt_memories(leaves, len(lcs), ug)
            o = ops.tnt(leaves["q"], leaves["k"], leaves["v"], global_memory=g, local_memories=locs,
                        global_chunk=gc, local_chunks=lcs, shard=shard, qk_proj=qk)
            o.backward(grad_o.to(dev))
            outs.append((o.detach().cpu(), {n: t.grad.cpu() for n, t in leaves.items()}))
        self.assertLess(rel(outs[1][0], outs[0][0]), 1e-9)
        for n in outs[0][1]:
            self.assertLess(rel(outs[1][1][n], outs[0][1][n]), 1e-9, n)

    def test_lact_direct_and_staged_paths_agree(self):
        # CUDA tensors go to the kernels directly (device pointers, torch's stream); TTT_OPS_STAGING=host sends
        # them through host memory and the named-tensor backend. Same kernels: the same results.
        x = lact_inputs(2, 13, 6, 10, dtype=torch.float32, seed=9)
        results = []
        for staging in (None, "host"):
            if staging:
                os.environ["TTT_OPS_STAGING"] = staging
            try:
                leaves = {n: t.cuda().requires_grad_(True) for n, t in x.items() if n != "grad_o"}
                o = call_lact(leaves, chunk_size=4, precision="tf32")
                o.backward(x["grad_o"].cuda())
                results.append((o.detach().cpu(), {n: t.grad.cpu() for n, t in leaves.items()}))
            finally:
                os.environ.pop("TTT_OPS_STAGING", None)
        self.assertLess(rel(results[0][0], results[1][0]), 1e-6)
        for n in results[0][1]:
            self.assertLess(rel(results[0][1][n], results[1][1][n]), 1e-6, n)

    def test_lact_layers_on_a_side_stream(self):
        # Three operator calls in a chain (as layers: every forward before any backward), on a stream that is not
        # the default one, against the same chain on the CPU in float64; and a forward without gradients.
        x = lact_inputs(2, 16, 4, 8, dtype=torch.float64, seed=13)
        def chain(dev):
            leaves = {n: t.detach().to(dev).requires_grad_(True) for n, t in x.items() if n != "grad_o"}
            h = leaves["q"]
            for _ in range(3):
                h = call_lact(dict(leaves, q=h, k=torch.tanh(h)), chunk_size=4, use_muon=True)
            h.backward(x["grad_o"].to(dev))
            # (k is replaced by tanh(h) in every call: its leaf gets no gradient)
            return h.detach().cpu(), {n: t.grad.cpu() for n, t in leaves.items() if t.grad is not None}
        ref = chain("cpu")
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            got = chain("cuda")
        torch.cuda.synchronize()
        self.assertLess(rel(got[0], ref[0]), 1e-9)
        for n in ref[1]:
            self.assertLess(rel(got[1][n], ref[1][n]), 1e-9, n)
        with torch.no_grad():
            o = call_lact({n: t.cuda() for n, t in x.items()}, chunk_size=4)
        self.assertLess(rel(o.cpu(), call_lact(x, chunk_size=4)), 1e-9)

    def test_cuda_refusals(self):
        x = {n: t.cuda() for n, t in lact_inputs(1, 6, 3, 4, seed=1).items()}
        self.assertRaises(ops.OpError, call_lact, x, precision="tf32")  # tf32 needs float32 compute
        x32 = {n: t.float() for n, t in x.items()}
        with self.assertRaises(ops.OpError) as cm:
            call_lact(x32, precision="bf16", use_muon=True)
        self.assertIn("Muon", str(cm.exception))
        nan = x32["k"].clone()
        nan[0, 1, 1] = float("nan")  # in the first chunk, whose update every later output reads
        with self.assertRaises(ops.OpError) as cm:
            call_lact(dict(x32, k=nan), chunk_size=2)
        self.assertIn("'k'", str(cm.exception))

    def test_mixed_devices_refused(self):
        x = lact_inputs(1, 4, 3, 4, seed=1)
        self.assertRaises(ValueError, call_lact, dict(x, q=x["q"].cuda()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", help="libttt_capi.so to test (default: TTT_CAPI_LIB or ttt_torch's search)")
    args, rest = ap.parse_known_args()
    if args.lib:
        os.environ["TTT_CAPI_LIB"] = os.path.abspath(args.lib)
    torch.set_num_threads(2)
    print(f"library: {ops.library_path()}; devices: {ops.available_devices()}; torch {torch.__version__}")
    result = unittest.main(argv=[sys.argv[0], *rest], exit=False, verbosity=2).result
    ran, failed, skipped = result.testsRun, len(result.failures) + len(result.errors), len(result.skipped)
    print(f"{ran} tests ran, {skipped} skipped, {failed} failures or errors (sub-tests counted one by one)")
    return 0 if result.wasSuccessful() and ran > skipped else 1


if __name__ == "__main__":
    sys.exit(main())
