"""ttt.cpp checkpoints in PyTorch.

    model = ttt_torch.load("runs/tiny")        # an nn.Module (TTTModel) of the run's newest checkpoint
    logits = model(torch.tensor(list(b"The kernel ")))
    ttt_torch.save(model, "runs/tiny-edited")   # a checkpoint `ttt eval` and `ttt train --resume` accept
    o = ttt_torch.ops.lact_swiglu(w0, w1, w2, q, k, v, lr0, lr1, lr2, chunk_size=64)   # ttt's operator (ops.py)
"""
import json
import os
import shutil

import torch

from . import ops, safetensors_io  # ops: ttt's operators as autograd functions (loads libttt_capi.so when called)
from .config import ModelConfig, memory_specs, parameter_shapes
from .errors import CheckpointError
from .model import TTTModel

__all__ = ["load", "save", "TTTModel", "ModelConfig", "CheckpointError", "parameter_shapes", "memory_specs"]

MODEL_FORMATS = ("pt", "ttt-model")  # model.safetensors "format": "pt"; "ttt-model" from earlier versions of ttt
STATE_FORMAT, STATE_VERSION = "ttt-train-state", 1
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def find_checkpoint(path):
    """The checkpoint directory `path` names, as ttt finds it: a run directory (RUN/checkpoint, the link to the
    newest, or else the RUN/checkpoints/step-<N> of the highest N), RUN/checkpoint, or a directory holding the
    files."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint '{path}' does not exist (expected a run directory or a checkpoint "
                              f"directory)")
    if os.path.isfile(os.path.join(path, "model.safetensors")):
        return path
    link = os.path.join(path, "checkpoint")
    if os.path.isfile(os.path.join(link, "model.safetensors")):
        return os.path.realpath(link)
    steps_dir = os.path.join(path, "checkpoints")
    steps = []
    if os.path.isdir(steps_dir):
        for name in os.listdir(steps_dir):
            if name.startswith("step-") and name[5:].isdigit() and os.path.isfile(
                    os.path.join(steps_dir, name, "model.safetensors")):
                steps.append(int(name[5:]))
    if not steps:
        raise CheckpointError(f"'{path}' holds no checkpoint (no model.safetensors in it, in checkpoint/ or in "
                              f"checkpoints/step-<N>/)")
    return os.path.join(steps_dir, f"step-{max(steps)}")


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON: {e}") from None


def _check_state(state, origin):
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{origin}: not a ttt training state (\"format\" is not \"{STATE_FORMAT}\")")
    if state.get("version") != STATE_VERSION:
        raise CheckpointError(f"{origin}: unsupported version {json.dumps(state.get('version'))} (this version of "
                              f"ttt_torch reads version {STATE_VERSION})")


def load(path, dtype=torch.float32):
    """The model of a ttt checkpoint (`path`: a run directory or a checkpoint directory) as a TTTModel in `dtype`.
    Every problem (unknown arch, config field or version; a missing, extra, misshaped or non-float tensor) raises
    CheckpointError naming the file and the field or tensor."""
    ck = find_checkpoint(path)
    cfg_path, model_path = os.path.join(ck, "config.json"), os.path.join(ck, "model.safetensors")
    if not os.path.isfile(cfg_path):
        raise CheckpointError(f"checkpoint '{ck}' has no config.json")
    cfg = ModelConfig.from_json(_read_json(cfg_path), cfg_path)
    tensors, meta = safetensors_io.load(model_path)
    fmt = meta.get("format")
    if fmt is not None and fmt not in MODEL_FORMATS:
        raise CheckpointError(f"{model_path}: metadata \"format\" is \"{fmt}\"; ttt checkpoints are "
                              f"{' or '.join(MODEL_FORMATS)}")
    state_path = os.path.join(ck, "state.json")
    state = None
    if os.path.isfile(state_path):
        state = _read_json(state_path)
        _check_state(state, state_path)
    model = TTTModel(cfg)
    expected = dict(parameter_shapes(cfg))
    for name in tensors:
        if name not in expected:
            raise CheckpointError(f"{model_path}: unexpected tensor '{name}' (not a parameter of this config)")
    with torch.no_grad():
        for name, param in model.ttt_parameters().items():
            t = tensors.get(name)
            if t is None:
                raise CheckpointError(f"{model_path}: missing tensor '{name}' {list(expected[name])}")
            if tuple(t.shape) != tuple(expected[name]):
                raise CheckpointError(f"{model_path}: tensor '{name}' has shape {list(t.shape)}, the config expects "
                                      f"{list(expected[name])}")
            if t.dtype not in _FLOAT_DTYPES:
                raise CheckpointError(f"{model_path}: tensor '{name}' has dtype {t.dtype}; parameters are F32, F64 "
                                      f"or BF16")
            if not torch.isfinite(t).all():
                raise CheckpointError(f"{model_path}: tensor '{name}' contains NaN or Inf")
            param.copy_(t.to(torch.float32))
    model.to(dtype)
    optimizer = os.path.join(ck, "optimizer.safetensors")
    model.ttt_source = {"dir": ck, "state": state,
                        "optimizer": optimizer if os.path.isfile(optimizer) else None}
    return model


def _write(path, data):
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(path, mode) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save(model, run_dir, data_dir=None):
    """Writes `model` (a TTTModel) as a complete checkpoint of run directory `run_dir`
    (RUN/checkpoints/step-<N>/ and the link RUN/checkpoint), which `ttt eval --checkpoint RUN` and
    `ttt train --resume RUN` accept. A model that ttt_torch.load read keeps its run's training state (step, data,
    settings, stage) and AdamW moments; any other starts at step 0 with zero moments, training on `data_dir`
    (default: ttt's data/linux-doc). `data_dir` also replaces a loaded run's data directory."""
    if not isinstance(model, TTTModel):
        raise TypeError(f"ttt_torch.save: expected a TTTModel, got {type(model).__name__}")
    cfg = model.config
    source = model.ttt_source or {}
    state = json.loads(json.dumps(source.get("state"))) if source.get("state") else None
    params = model.ttt_parameters()
    opt_tensors, opt_meta = None, None
    if source.get("optimizer") and state is not None:
        opt_tensors, opt_meta = safetensors_io.load(source["optimizer"])
        for name, p in params.items():
            for moment in ("m.", "v."):
                t = opt_tensors.get(moment + name)
                if t is None or tuple(t.shape) != tuple(p.shape):
                    raise CheckpointError(f"{source['optimizer']}: AdamW moment '{moment + name}' does not match the "
                                          f"model's parameter {list(p.shape)}")
    if state is None:
        state = {"format": STATE_FORMAT, "version": STATE_VERSION, "step": 0, "tokens_seen": 0, "elapsed_seconds": 0.0,
                 "data_rng": ["0x%016x" % w for w in (1, 2, 3, 4, 5, 6)],
                 "train": {"seq_len": cfg.seq_len, "data_dir": "data/linux-doc"}}
        opt_tensors = {}
        for moment in ("m.", "v."):
            for name, p in params.items():
                opt_tensors[moment + name] = torch.zeros(p.shape, dtype=torch.float32)
        opt_meta = {"step": "0"}
    if data_dir is not None:
        state["train"]["data_dir"] = os.path.abspath(data_dir)
        state.pop("data_fingerprint", None)  # another dataset: nothing to check it against
    step = int(state["step"])
    opt_meta = dict(opt_meta or {})
    opt_meta["run_step"] = str(step)
    weights = {}
    for name, p in params.items():
        t = p.detach().to("cpu", torch.float32)
        if not torch.isfinite(t).all():
            raise CheckpointError(f"ttt_torch.save: parameter '{name}' contains NaN or Inf")
        weights[name] = t
    run_dir = os.fspath(run_dir)
    steps_dir = os.path.join(run_dir, "checkpoints")
    os.makedirs(steps_dir, exist_ok=True)
    final = os.path.join(steps_dir, f"step-{step}")
    tmp = f"{final}.tmp.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    _write(os.path.join(tmp, "model.safetensors"),
           safetensors_io.serialize(weights, {"format": "pt", "step": str(step)}))
    _write(os.path.join(tmp, "config.json"), json.dumps(cfg.to_json(), indent=2) + "\n")
    _write(os.path.join(tmp, "optimizer.safetensors"), safetensors_io.serialize(opt_tensors, opt_meta))
    _write(os.path.join(tmp, "state.json"), json.dumps(state, indent=2) + "\n")
    if os.path.lexists(final):
        shutil.rmtree(final)
    os.rename(tmp, final)
    link = os.path.join(run_dir, "checkpoint")
    tmp_link = f"{link}.tmp.{os.getpid()}"
    if os.path.lexists(tmp_link):
        os.remove(tmp_link)
    os.symlink(os.path.join("checkpoints", f"step-{step}"), tmp_link)
    os.replace(tmp_link, link)
    return final
