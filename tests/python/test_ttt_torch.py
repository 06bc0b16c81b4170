"""ttt_torch against the ttt binary, on the CPU: tiny checkpoints of every arch and variant are trained here (a few
steps), `ttt logits` is compared with ttt_torch.load(run)(tokens) (relative error <= 1e-4 in fp32), and
ttt_torch.save's checkpoints go back into `ttt eval` and `ttt train --resume`. Bad checkpoints raise
CheckpointError naming the field or tensor.

    /usr/bin/python3 tests/python/test_ttt_torch.py --ttt build/ttt

Run by ctest (CMakeLists.txt); exits 77 (ctest: skipped) when this Python cannot import torch or the corpus
(linux-doc) is missing."""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "python"))

try:
    import torch
except ImportError as e:
    print(f"SKIPPED: {sys.executable} cannot import torch ({e}); install python3-torch (scripts/setup.sh) to run "
          f"the ttt_torch tests")
    sys.exit(77)

import ttt_torch  # noqa: E402
from ttt_torch import CheckpointError, safetensors_io  # noqa: E402

TTT = None
TMP = None
DATA = None
TOLERANCE = 1e-4

# Tiny sizes: width 32, two layers, chunks of 8, seq_len 32; the logits input (INPUT, 101 bytes) spans four of
# ttt's blocks of seq_len tokens, several shards and chunks.
BASE = {"dim": 32, "n_layers": 2, "n_attn_heads": 2, "n_mem_heads": 2, "chunk": 8, "window": 8, "seq_len": 32,
        "mlp_hidden": 64, "lr_init": 0.05}
TITANS = dict(BASE, arch="titans", memory="mlp", weight_norm="none", titans_base_lr=0.05)
TNT = dict(BASE, arch="tnt", memory="mlp", weight_norm="none", titans_base_lr=0.05, global_chunk=16,
           local_chunks=[8, 4], shard=16)
VARIANTS = {
    "lact": dict(BASE, arch="lact"),
    "lact_muon_pre_lowrank": dict(BASE, arch="lact", muon=True, weight_norm="pre", low_rank_init=True,
                                  low_rank_rank=4, v_silu=True, inter_multi=2),
    "lact_plain": dict(BASE, arch="lact", momentum=False, weight_norm="none", ttt_rope=False),
    # The compatibility switches of imported public LaCT models (attention head 8, memory head 16).
    "lact_public_switches": dict(BASE, arch="lact", n_attn_heads=4, ttt_rope_attn_heads=True, ttt_norm_shared=True,
                                 ttt_norm_eps=1e-5, v_silu=True),
    "titans": TITANS,
    "titans_linear_muon": dict(TITANS, memory="linear", muon=True, decay=False),
    "titans_swiglu": dict(TITANS, memory="swiglu", momentum=False, mem_residual=False),
    "tnt": TNT,
    "tnt_local_only": dict(TNT, use_global=False, qk_proj=False, mem_residual=False),
}
INPUT = b"The kernel maps the page; the driver frees the buffer.\n\tA task sleeps on the queue (0x1f), then wakes."


def ttt(*args, check=True):
    r = subprocess.run([TTT, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                       timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"ttt {' '.join(map(str, args))} exited {r.returncode}:\n{r.stdout[-4000:]}")
    return r


def train(name, config=None, extra=()):
    run = os.path.join(TMP, "runs", name)
    args = ["train", "--data", DATA, "--out", run, "--steps", 3, "--batch", 2, "--eval-every", 0, "--eval-batches", 1,
            "--sample-tokens", 0, "--log-every", 1, "--warmup", 1, "--lr", 0.01]
    if config is not None:
        path = os.path.join(TMP, name + ".json")
        with open(path, "w") as f:
            json.dump(config, f)
        args += ["--config", path]
    ttt(*args, *extra)
    return run


def ttt_logits(run):
    inp = os.path.join(TMP, "input.txt")
    with open(inp, "wb") as f:
        f.write(INPUT)
    out = os.path.join(TMP, "logits.safetensors")
    ttt("logits", "--checkpoint", run, "--input", inp, "--out", out)
    tensors, meta = safetensors_io.load(out)
    assert meta.get("format") == "pt", meta
    return tensors["tokens"], tensors["logits"]


def read_json(path):
    with open(path) as f:
        return json.load(f)


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)


def rel_error(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def eval_loss(run):
    r = ttt("eval", "--checkpoint", run, "--data", DATA, "--batches", 2, "--batch", 2,
            "--csv", os.path.join(TMP, "buckets.csv"))
    return json.loads(r.stdout[r.stdout.index("{"):])["val_loss"]


class Parity(unittest.TestCase):
    """ttt_torch.load(run) computes ttt's logits, for every arch and variant."""
    measured = {}

    def check(self, name, run):
        tokens, expected = ttt_logits(run)
        self.assertEqual(tokens.dtype, torch.int64)
        self.assertEqual(tokens.tolist(), list(INPUT))
        model = ttt_torch.load(run)
        with torch.no_grad():
            got = model(tokens)
        self.assertEqual(tuple(got.shape), tuple(expected.shape))
        err = rel_error(got, expected)
        Parity.measured[name] = err
        print(f"  {name}: ||torch - ttt|| / ||ttt|| = {err:.2e}")
        self.assertLessEqual(err, TOLERANCE, name)


def _parity_test(name):
    def test(self):
        self.check(name, train(name, VARIANTS[name]))
    return test


for _name in VARIANTS:
    setattr(Parity, f"test_{_name}", _parity_test(_name))


def _stage2(self):
    stage1 = os.path.join(TMP, "runs", "tnt")
    if not os.path.isdir(stage1):
        stage1 = train("tnt", VARIANTS["tnt"])
    run = os.path.join(TMP, "runs", "tnt_stage2")
    ttt("train", "--stage", 2, "--from", stage1, "--local-chunks", "4,2", "--data", DATA, "--out", run,
        "--steps", 2, "--batch", 2, "--eval-every", 0, "--eval-batches", 1, "--sample-tokens", 0)
    self.assertEqual(read_json(os.path.join(run, "checkpoint", "config.json"))["local_chunks"], [4, 2])
    self.check("tnt_stage2", run)


Parity.test_tnt_stage2 = _stage2


class RoundTrip(unittest.TestCase):
    """ttt_torch.save writes checkpoints that ttt evaluates and continues training."""

    def test_loaded_model_saves_a_checkpoint_ttt_resumes(self):
        run = train("rt_lact", VARIANTS["lact_muon_pre_lowrank"])
        model = ttt_torch.load(run)
        out = os.path.join(TMP, "runs", "rt_lact_saved")
        ttt_torch.save(model, out)
        model_path = os.path.join(out, "checkpoint", "model.safetensors")
        self.assertEqual(safetensors_io.load(model_path)[1]["format"], "pt")
        self.assertEqual(eval_loss(out), eval_loss(run))  # the same F32 weights, bit for bit
        again = ttt_torch.load(out)
        tokens = torch.tensor(list(INPUT))
        with torch.no_grad():
            self.assertTrue(torch.equal(again(tokens), model(tokens)))
        ttt("train", "--resume", out, "--steps", 5)
        self.assertTrue(os.path.isdir(os.path.join(out, "checkpoints", "step-5")))
        self.assertEqual(read_json(os.path.join(out, "checkpoint", "state.json"))["step"], 5)

    def test_edited_weights_change_what_ttt_computes(self):
        run = train("rt_tnt", VARIANTS["tnt"])
        model = ttt_torch.load(run)
        with torch.no_grad():
            model.get_parameter("lm_head.weight").mul_(2.0)
        out = os.path.join(TMP, "runs", "rt_tnt_edited")
        ttt_torch.save(model, out)
        tokens, logits = ttt_logits(out)
        with torch.no_grad():
            self.assertLessEqual(rel_error(model(tokens), logits), TOLERANCE)
        self.assertNotEqual(eval_loss(out), eval_loss(run))

    def test_stage2_checkpoint_round_trip_keeps_its_stage(self):
        stage1 = train("rt_s1", VARIANTS["tnt"])
        s2 = os.path.join(TMP, "runs", "rt_s2")
        ttt("train", "--stage", 2, "--from", stage1, "--local-chunks", "2,2", "--data", DATA, "--out", s2,
            "--steps", 2, "--batch", 2, "--eval-every", 0, "--eval-batches", 1, "--sample-tokens", 0)
        out = os.path.join(TMP, "runs", "rt_s2_saved")
        ttt_torch.save(ttt_torch.load(s2), out)
        self.assertEqual(read_json(os.path.join(out, "checkpoint", "state.json"))["train"]["stage"], 2)
        self.assertEqual(eval_loss(out), eval_loss(s2))
        ttt("train", "--resume", out, "--steps", 3)

    def test_new_module_saves_a_checkpoint_ttt_trains_on(self):
        cfg = ttt_torch.ModelConfig.from_json(VARIANTS["titans"])
        torch.manual_seed(0)
        model = ttt_torch.TTTModel(cfg)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.normal_(0.0, 0.02) if not name.endswith(("norm.weight", "_scale")) else p.fill_(1.0)
        out = os.path.join(TMP, "runs", "rt_new")
        ttt_torch.save(model, out, data_dir=DATA)
        tokens, logits = ttt_logits(out)
        with torch.no_grad():
            self.assertLessEqual(rel_error(model(tokens), logits), TOLERANCE)
        ttt("train", "--resume", out, "--steps", 2)
        self.assertEqual(read_json(os.path.join(out, "checkpoint", "state.json"))["step"], 2)


class BadCheckpoints(unittest.TestCase):
    """Errors name the field or tensor."""

    @classmethod
    def setUpClass(cls):
        cls.good = train("bad_base", VARIANTS["lact_plain"])

    def copy(self, tag):
        dst = os.path.join(TMP, "bad", tag)
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(ttt_torch.find_checkpoint(self.good), dst)
        return dst

    def edit_config(self, tag, **changes):
        ck = self.copy(tag)
        path = os.path.join(ck, "config.json")
        cfg = read_json(path)
        cfg.update(changes)
        write_json(path, cfg)
        return ck

    def edit_tensors(self, tag, edit, metadata=None):
        ck = self.copy(tag)
        path = os.path.join(ck, "model.safetensors")
        tensors, meta = safetensors_io.load(path)
        edit(tensors)
        meta.update(metadata or {})
        with open(path, "wb") as f:
            f.write(safetensors_io.serialize(tensors, meta))
        return ck

    def refused(self, ck, *words):
        with self.assertRaises(CheckpointError) as cm:
            ttt_torch.load(ck)
        for w in words:
            self.assertIn(w, str(cm.exception))

    def test_unknown_arch(self):
        self.refused(self.edit_config("arch", arch="mamba"), "\"arch\"", "mamba")

    def test_unknown_config_field(self):
        self.refused(self.edit_config("field", shared_ttt_norm=True), "shared_ttt_norm")

    def test_wrongly_typed_field(self):
        self.refused(self.edit_config("type", dim="32"), "\"dim\"")

    def test_unknown_state_version(self):
        ck = self.copy("version")
        path = os.path.join(ck, "state.json")
        state = read_json(path)
        state["version"] = 2
        write_json(path, state)
        self.refused(ck, "version 2", "state.json")

    def test_unknown_model_format(self):
        self.refused(self.edit_tensors("format", lambda t: None, {"format": "tf"}), "\"tf\"")

    def test_wrong_shape(self):
        def edit(t):
            t["layers.1.wo"] = t["layers.1.wo"][:, :16].contiguous()
        self.refused(self.edit_tensors("shape", edit), "layers.1.wo", "[32, 16]")

    def test_wrong_dtype(self):
        def edit(t):
            t["layers.0.ttt.lr.bias"] = t["layers.0.ttt.lr.bias"].to(torch.int64)
        self.refused(self.edit_tensors("dtype", edit), "layers.0.ttt.lr.bias", "int64")

    def test_missing_and_extra_tensors(self):
        self.refused(self.edit_tensors("missing", lambda t: t.pop("lm_head.weight")), "lm_head.weight")
        self.refused(self.edit_tensors("extra", lambda t: t.update(ttt_norm=torch.zeros(3))), "ttt_norm")

    def test_missing_checkpoint(self):
        with self.assertRaises(CheckpointError) as cm:
            ttt_torch.load(os.path.join(TMP, "no-such-run"))
        self.assertIn("no-such-run", str(cm.exception))

    def test_ttt_reads_the_older_format_name(self):
        ck = self.edit_tensors("old", lambda t: None, {"format": "ttt-model"})
        self.assertIsInstance(ttt_torch.load(ck), ttt_torch.TTTModel)
        eval_loss(ck)


# The training corpus: a fixed directory of the Linux documentation (Debian's linux-doc, which scripts/setup.sh
# installs), not the repository's own docs: the checkpoints trained on it, and the parity measured on them, must not
# change when the repository's files do (some variants are ill-conditioned in fp32 on some checkpoints).
CORPUS = "/usr/share/doc/linux-doc-6.1/Documentation/process"


def main():
    global TTT, TMP, DATA
    ap = argparse.ArgumentParser()
    ap.add_argument("--ttt", required=True, help="the ttt binary")
    ap.add_argument("--keep", action="store_true", help="keep the temp directory")
    args, rest = ap.parse_known_args()
    TTT = os.path.abspath(args.ttt)
    if not os.path.isdir(CORPUS):
        print(f"SKIPPED: the training corpus {CORPUS} is missing; install linux-doc (scripts/setup.sh) to run these tests")
        return 77
    TMP = tempfile.mkdtemp(prefix="ttt_torch_test_")
    torch.set_num_threads(2)
    try:
        DATA = os.path.join(TMP, "data")
        ttt("prepare", "--input", CORPUS, "--out", DATA)
        result = unittest.main(argv=[sys.argv[0], *rest], exit=False, verbosity=2).result
        ran, failed = result.testsRun, len(result.failures) + len(result.errors)
        print(f"{ran - failed} passed, {failed} failed")
        return 0 if failed == 0 and ran > 0 else 1
    finally:
        if args.keep:
            print(f"kept {TMP}")
        else:
            shutil.rmtree(TMP, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
