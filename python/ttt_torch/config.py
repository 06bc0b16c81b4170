"""The model config of a ttt checkpoint (config.json): every field of src/model/config.h with its default (the tiny
preset), the names of arch / memory / weight_norm, and the parameter layout (names and shapes) derived from it
exactly as ttt derives it (src/model/config.cpp, src/model/memory_spec.cpp)."""
import dataclasses
import json
from dataclasses import dataclass, field
from typing import List

from .errors import CheckpointError

ARCHS = ("lact", "tnt", "titans")
MEMORIES = ("swiglu", "mlp", "linear")
WEIGHT_NORMS = ("post", "pre", "none")


@dataclass
class ModelConfig:
    arch: str = "lact"
    vocab_size: int = 256
    dim: int = 128
    n_layers: int = 4
    n_attn_heads: int = 4
    n_mem_heads: int = 2
    inter_multi: int = 1
    chunk: int = 64
    window: int = 64
    rope_theta: float = 1e6
    ttt_rope: bool = True
    v_silu: bool = False
    # Compatibility switches of imported public LaCT models (src/model/config.h).
    ttt_rope_attn_heads: bool = False
    ttt_norm_shared: bool = False
    ttt_norm_eps: float = 0.0
    momentum: bool = True
    muon: bool = False
    weight_norm: str = "post"
    low_rank_init: bool = False
    low_rank_rank: int = 32
    low_rank_gain: float = 0.5
    lr_init: float = 0.001
    mlp_hidden: int = 0
    seq_len: int = 256
    norm_eps: float = 1e-6
    init_std: float = 0.02
    memory: str = "swiglu"
    decay: bool = True
    mem_residual: bool = True
    titans_base_lr: float = 0.003
    global_chunk: int = 64
    local_chunks: List[int] = field(default_factory=lambda: [8, 16])
    shard: int = 128
    qk_proj: bool = True
    use_global: bool = True

    # Derived sizes (config.h).
    @property
    def head_dim_attn(self):
        return self.dim // self.n_attn_heads

    @property
    def head_dim_mem(self):
        return self.dim // self.n_mem_heads

    @property
    def mem_hidden_dim(self):
        return self.head_dim_mem * self.inter_multi

    @property
    def mlp_hidden_dim(self):
        if self.mlp_hidden > 0:
            return self.mlp_hidden
        return (8 * self.dim // 3 + 63) // 64 * 64

    def to_json(self):
        return dataclasses.asdict(self)

    @staticmethod
    def from_json(obj, origin="config.json"):
        """Missing keys keep the defaults (as in ttt); an unknown key, a wrong type or an unknown name is an error
        naming the field."""
        if not isinstance(obj, dict):
            raise CheckpointError(f"{origin}: expected a JSON object, got {type(obj).__name__}")
        fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
        cfg = ModelConfig()
        for key, value in obj.items():
            if key not in fields:
                raise CheckpointError(f"{origin}: unknown config field \"{key}\" (this version of ttt_torch knows: "
                                      f"{', '.join(fields)})")
            default = getattr(cfg, key)
            ok = {
                bool: lambda v: isinstance(v, bool),
                int: lambda v: isinstance(v, int) and not isinstance(v, bool),
                float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
                str: lambda v: isinstance(v, str),
                list: lambda v: isinstance(v, list) and all(isinstance(e, int) and not isinstance(e, bool) for e in v),
            }[type(default)](value)
            if not ok:
                raise CheckpointError(f"{origin}: config field \"{key}\" must be of type {type(default).__name__}, "
                                      f"got {json.dumps(value)}")
            setattr(cfg, key, float(value) if isinstance(default, float) else value)
        for key, allowed in (("arch", ARCHS), ("memory", MEMORIES), ("weight_norm", WEIGHT_NORMS)):
            if getattr(cfg, key) not in allowed:
                raise CheckpointError(f"{origin}: config field \"{key}\" is \"{getattr(cfg, key)}\"; this version of "
                                      f"ttt_torch knows {', '.join(allowed)}")
        cfg.validate(origin)
        return cfg

    def validate(self, origin="config"):
        def positive(name):
            if getattr(self, name) <= 0:
                raise CheckpointError(f"{origin}: config field \"{name}\" must be > 0, got {getattr(self, name)}")

        for name in ("vocab_size", "dim", "n_layers", "n_attn_heads", "n_mem_heads", "inter_multi", "chunk", "window",
                     "seq_len", "rope_theta", "norm_eps", "lr_init"):
            positive(name)
        if self.dim % self.n_attn_heads or self.dim % self.n_mem_heads:
            raise CheckpointError(f"{origin}: dim {self.dim} must be divisible by n_attn_heads {self.n_attn_heads} "
                                  f"and n_mem_heads {self.n_mem_heads}")
        if self.head_dim_attn % 2 or (self.ttt_rope and not self.ttt_rope_attn_heads and self.head_dim_mem % 2):
            raise CheckpointError(f"{origin}: RoPE needs even head dims (dim {self.dim}, n_attn_heads "
                                  f"{self.n_attn_heads}, n_mem_heads {self.n_mem_heads})")
        if self.arch == "lact" and self.memory != "swiglu":
            raise CheckpointError(f"{origin}: arch \"lact\" uses the SwiGLU memory; memory must be \"swiglu\", "
                                  f"got \"{self.memory}\"")
        if self.low_rank_init:
            if self.memory != "swiglu":
                raise CheckpointError(f"{origin}: low_rank_init needs memory \"swiglu\", got \"{self.memory}\"")
            positive("low_rank_rank")
            if self.low_rank_rank > self.head_dim_mem:
                raise CheckpointError(f"{origin}: low_rank_rank {self.low_rank_rank} exceeds the memory head dim "
                                      f"{self.head_dim_mem}")
        if self.arch != "lact":
            positive("titans_base_lr")
        if self.arch == "tnt":
            if self.use_global:
                positive("global_chunk")
            if not self.use_global and not self.local_chunks:
                raise CheckpointError(f"{origin}: arch \"tnt\" needs a memory: use_global is false and local_chunks "
                                      f"is empty")
            positive("shard")
            for i, c in enumerate(self.local_chunks):
                if c <= 0:
                    raise CheckpointError(f"{origin}: config field \"local_chunks\"[{i}] must be > 0, got {c}")


@dataclass
class MemorySpec:
    """One memory of a layer's branch (src/model/memory_spec.h): its place, its update rule and its parameters."""
    index: int
    prefix: str          # "ttt." | "ttt.global." | "ttt.local.<i>."
    chunk: int
    shard: int           # reset period; 0: never reset
    qk_proj: bool
    family: str          # "swiglu" | "mlp" | "linear"
    loss: str            # "dot" | "mse"
    momentum: bool
    muon: bool
    decay: bool
    weight_norm: str     # "post" | "pre" | "none"
    mlp_residual: bool
    rate_columns: int    # R: 3 (LaCT, one per matrix) or 1
    rate_col0: int       # its rates: columns rate_col0 + r*H + h of ttt.lr
    gate_col0: int       # its momentum / decay gates: columns gate_col0 + h
    weights: list        # [(name without "layers.<l>.", rows, cols, low_rank)] in family order


def weight_shapes(family, d, dh):
    """The per-head weight matrices of a memory family, in order: SwiGLU W0 [dh,d], W1 [d,dh], W2 [dh,d];
    MLP W1 [dh,d], W2 [d,dh]; Linear W [d,d]."""
    return {"swiglu": [("w0", dh, d), ("w1", d, dh), ("w2", dh, d)],
            "mlp": [("w1", dh, d), ("w2", d, dh)],
            "linear": [("w", d, d)]}[family]


def memory_specs(cfg):
    H, d, dh = cfg.n_mem_heads, cfg.head_dim_mem, cfg.mem_hidden_dim
    if cfg.arch == "tnt":
        places = ([("ttt.global.", cfg.global_chunk, 0, False)] if cfg.use_global else []) + [
            (f"ttt.local.{i}.", c, cfg.shard, cfg.qk_proj) for i, c in enumerate(cfg.local_chunks)]
    else:
        places = [("ttt.", cfg.chunk, 0, False)]
    lact = cfg.arch == "lact"
    specs = []
    rate_col0 = gate_col0 = 0
    for m, (prefix, chunk, shard, qk) in enumerate(places):
        family = "swiglu" if lact else cfg.memory
        R = 3 if lact else 1
        weights = [(prefix + n, r, c, lact and cfg.low_rank_init and n in ("w0", "w2"))
                   for n, r, c in weight_shapes(family, d, dh)]
        specs.append(MemorySpec(index=m, prefix=prefix, chunk=chunk, shard=shard, qk_proj=qk, family=family,
                                loss="dot" if lact else "mse", momentum=cfg.momentum, muon=cfg.muon,
                                decay=False if lact else cfg.decay, weight_norm=cfg.weight_norm if lact else "none",
                                mlp_residual=cfg.mem_residual, rate_columns=R, rate_col0=rate_col0,
                                gate_col0=gate_col0, weights=weights))
        rate_col0 += R * H
        gate_col0 += H
    return specs


def parameter_shapes(cfg):
    """Every parameter's name and shape, in ttt's order (src/model/config.cpp). Projections are [in, out]."""
    V, D, H, F, r = cfg.vocab_size, cfg.dim, cfg.n_mem_heads, cfg.mlp_hidden_dim, cfg.low_rank_rank
    specs = memory_specs(cfg)
    rate_columns = sum(s.rate_columns * H for s in specs)
    gate_columns = H * len(specs)
    out = [("embed.weight", (V, D))]
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        out += [(p + "attn_norm.weight", (D,)), (p + "wqkv", (D, 3 * D)), (p + "ttt.q_scale", (D,)),
                (p + "ttt.q_offset", (D,)), (p + "ttt.k_scale", (D,)), (p + "ttt.k_offset", (D,)),
                (p + "ttt.lr.weight", (D, rate_columns)), (p + "ttt.lr.bias", (rate_columns,))]
        if specs[0].momentum:
            out += [(p + "ttt.momentum.weight", (D, gate_columns)), (p + "ttt.momentum.bias", (gate_columns,))]
        if specs[0].decay:
            out += [(p + "ttt.decay.weight", (D, gate_columns)), (p + "ttt.decay.bias", (gate_columns,))]
        for s in specs:
            for name, rows, cols, low_rank in s.weights:
                if low_rank:
                    out += [(p + name + ".a", (H, rows, r)), (p + name + ".b", (H, r, cols))]
                else:
                    out.append((p + name, (H, rows, cols)))
        out += [(p + "ttt.o_norm.weight", (cfg.head_dim_mem if cfg.ttt_norm_shared else D,)), (p + "ttt.scale.weight", (D, H)), (p + "ttt.scale.bias", (H,)),
                (p + "wo", (D, D)), (p + "mlp_norm.weight", (D,)), (p + "mlp.w_gate", (D, F)),
                (p + "mlp.w_up", (D, F)), (p + "mlp.w_down", (F, D))]
    out += [("final_norm.weight", (D,)), ("lm_head.weight", (D, V))]
    return out
