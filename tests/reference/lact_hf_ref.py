"""Our own float64 PyTorch port of the public LaCT language model (`LaCTForCausalLM`, model_type "lact_swiglu",
github a1600012888/LaCT lact_llm), written from our reading of its math, with its parameter names and layouts
(nn.Linear weights [out, in]). Not the public code: no flash-attention, no Triton, no autocast; every step in
float64. Used by check_lact_hf.py to test `ttt export --to lact-hf` and `ttt import --from lact-hf`.

The model, per block (x the residual stream [T, D]):
    h = RMSNorm(x; attn_norm, norm_eps)
    q, k, v = split(h qkv.weightᵀ)
    attention: RoPE (rotate-half, base rope_theta, over num_attn_heads heads) of q and k, causal softmax attention
               over the last window_size keys (key j for query i iff i - window_size < j <= i), scale 1/sqrt(hd)
    memory:    fq = q qk_scale[:,0] + qk_offset[:,0], fk likewise with column 1, fv = v;
               silu on fq, fk (qkv_silu) and on fv unless no_v_silu; per fast-weight head l2-normalization
               x / (||x|| + 1e-5); RoPE of fq, fk over the *attention* heads unless ttt_nope;
               rates softplus(h lr_projᵀ + b + softplus⁻¹(0.001)), head h's three in columns h*3 + (0, 1, 2) for
               W0, W1, W2; momentum sigmoid(h momentum_projᵀ + b) per head;
               the block-causal SwiGLU fast-weight program per head (chunk lact_chunk_size: apply with the
               chunk-start weights, then update; the last chunk only applies), post- or pre-norm
               (ttt_prenorm), optional momentum and Muon (NS5);
               output RMSNorm over d with the shared weight ttt_norm [d] (epsilon 1e-5), times the per-head
               gate silu(h ttt_scale_projᵀ + b)
    x += (attention + memory) o_projᵀ
    x += down(silu(gate(m)) * up(m)),  m = RMSNorm(x; mlp_norm, norm_eps)
then logits = RMSNorm(x; model.norm) lm_headᵀ.
"""
import math

import torch
import torch.nn.functional as F

DEFAULTS = {
    "hidden_size": 2048, "num_hidden_layers": 24, "num_attn_heads": 32, "num_lact_heads": 4, "inter_multi": 1,
    "lact_chunk_size": 2048, "use_muon": False, "qkv_silu": True, "no_v_silu": False, "use_momentum": True,
    "ttt_prenorm": False, "ttt_nope": False, "w0_w2_low_rank": -1, "window_size": 2048, "rope_theta": 10000.0,
    "hidden_ratio": 4, "intermediate_size": None, "norm_eps": 1e-6, "vocab_size": 32000, "fw_init_gain": 0.5,
    "tie_word_embeddings": False,
}
BASE_LR = 0.001
TTT_NORM_EPS = 1e-5


def config(public):
    c = dict(DEFAULTS)
    c.update({k: v for k, v in public.items() if k in DEFAULTS})
    if c["intermediate_size"] is None:
        width = int(c["hidden_size"] * c["hidden_ratio"] * 2 / 3)
        c["intermediate_size"] = 256 * ((width + 255) // 256)
    return c


def shapes(c):
    """The public parameter names and shapes of config c."""
    V, D, F_ = c["vocab_size"], c["hidden_size"], c["intermediate_size"]
    H = c["num_lact_heads"]
    d = D // H
    dh = int(d * c["inter_multi"])
    r = c["w0_w2_low_rank"]
    out = [("model.embeddings.weight", (V, D))]
    for i in range(c["num_hidden_layers"]):
        b = f"model.layers.{i}."
        a = b + "attn."
        out += [(b + "attn_norm.weight", (D,)), (a + "qkv.weight", (3 * D, D)), (a + "o_proj.weight", (D, D))]
        for w, rows, cols in (("w0", dh, d), ("w2", dh, d)):
            if r > 0:
                out += [(a + w + ".w_left", (H, rows, r)), (a + w + ".w_right", (H, r, cols))]
            else:
                out += [(a + w, (H, rows, cols))]
        out += [(a + "w1", (H, d, dh)), (a + "lr_proj.weight", (3 * H, D)), (a + "lr_proj.bias", (3 * H,)),
                (a + "qk_scale", (D, 2)), (a + "qk_offset", (D, 2)), (a + "ttt_scale_proj.weight", (H, D)),
                (a + "ttt_scale_proj.bias", (H,)), (a + "ttt_norm.weight", (d,))]
        if c["use_momentum"]:
            out += [(a + "momentum_proj.0.weight", (H, D)), (a + "momentum_proj.0.bias", (H,))]
        out += [(b + "mlp_norm.weight", (D,)), (b + "mlp.gate_proj.weight", (F_, D)),
                (b + "mlp.up_proj.weight", (F_, D)), (b + "mlp.down_proj.weight", (D, F_))]
    out += [("model.norm.weight", (D,))]
    if not c["tie_word_embeddings"]:
        out += [("lm_head.weight", (V, D))]
    return out


def random_weights(c, seed):
    """Seeded random weights of every public tensor (float64), scaled so the model's activations stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes(c):
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        leaf = name.split(".")[-1] if not name.endswith(".weight") else name.split(".")[-2]
        if name.endswith("norm.weight") or name.endswith("qk_scale"):
            x = 1.0 + 0.2 * x
        elif name.endswith(".bias") or name.endswith("qk_offset"):
            x = 0.2 * x
        elif leaf in ("w0", "w1", "w2", "w_left", "w_right"):
            x = x / math.sqrt(shape[-1])
        else:
            x = x / math.sqrt(shape[-1]) * 0.5
        out[name] = x
    return out


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, theta):
    """x [T, G, hd]: rotate-half RoPE at positions 0..T-1."""
    T, _, hd = x.shape
    half = hd // 2
    inv = theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = torch.cos(ang)[:, None, :], torch.sin(ang)[:, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def attention(q, k, v, window):
    """q, k, v [T, G, hd]: causal sliding-window attention."""
    T, _, hd = q.shape
    s = torch.einsum("tgd,sgd->gts", q, k) / math.sqrt(hd)
    i = torch.arange(T)
    ok = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)
    s = s.masked_fill(~ok, float("-inf"))
    return torch.einsum("gts,sgd->tgd", torch.softmax(s, -1), v)


def newton_schulz5(G):
    X = G
    tall = G.shape[0] > G.shape[1]
    if tall:
        X = X.T
    X = X / (torch.linalg.norm(X) + 1e-7)
    for a, b, c in ((4.0848, -6.8946, 2.9270), (3.9505, -6.3029, 2.6377), (3.7418, -5.5913, 2.3037),
                    (2.8769, -3.1427, 1.2046), (2.8366, -3.0525, 1.2012)):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if tall else X


def fast_weight_program(w0, w1, w2, q, k, v, lr, mom, chunk, muon, prenorm):
    """One head. w0 [dh, d], w1 [d, dh], w2 [dh, d]; q, k, v [T, d]; lr [T, 3] (W0, W1, W2); mom [T] or None.
    f(x) = W1 (silu(W0 x) * (W2 x)); dot-product inner loss; apply, then update, chunk by chunk."""
    T = q.shape[0]
    norms = [w.norm(dim=1, keepdim=True) for w in (w0, w1, w2)]
    W = [w0, w1, w2]       # applied
    main = [w0, w1, w2]    # pre-norm's accumulator
    moment = [torch.zeros_like(w) for w in W]
    out = torch.zeros(T, w1.shape[0], dtype=q.dtype)

    def apply(W, x):
        return (W[1] @ (F.silu(W[0] @ x.T) * (W[2] @ x.T))).T

    starts = list(range(0, max(T - chunk, 0), chunk))
    for s in starts:
        e = s + chunk
        out[s:e] = apply(W, q[s:e])
        kt, vt = k[s:e].T, v[s:e].T  # [d, n]
        g = W[0] @ kt
        u = W[2] @ kt
        hidden = F.silu(g) * u
        dhidden = W[1].T @ vt
        du = dhidden * F.silu(g)
        sg = torch.sigmoid(g)
        dg = dhidden * u * sg * (1 + g * (1 - sg))
        dW = [dg @ (k[s:e] * lr[s:e, 0:1]), vt @ (hidden.T * lr[s:e, 1:2]), du @ (k[s:e] * lr[s:e, 2:3])]
        if mom is not None:
            m = mom[s:e].mean()
            dW = [dw + mo * m for dw, mo in zip(dW, moment)]
            moment = dW
        if muon:
            dW = [newton_schulz5(dw) for dw in dW]
        if prenorm:
            main = [mw + dw for mw, dw in zip(main, dW)]
            W = [mw / (mw.norm(dim=1, keepdim=True) + 1e-5) * n for mw, n in zip(main, norms)]
        else:
            W = [w + dw for w, dw in zip(W, dW)]
            W = [w / (w.norm(dim=1, keepdim=True) + 1e-5) * n for w, n in zip(W, norms)]
    s = starts[-1] + chunk if starts else 0
    out[s:] = apply(W, q[s:])
    return out


def fast_weight(sd, a, name, c):
    if c["w0_w2_low_rank"] > 0 and name != "w1":
        W = sd[a + name + ".w_left"] @ sd[a + name + ".w_right"]
        return W + 0.5 * torch.eye(W.shape[1], W.shape[2], dtype=W.dtype)[None]
    return sd[a + name]


def forward(public_config, sd, tokens):
    """Logits [T, V] (float64) of one sequence `tokens` (positions 0..T-1)."""
    c = config(public_config)
    sd = {k: v.to(torch.float64) for k, v in sd.items()}
    D, Ha, H = c["hidden_size"], c["num_attn_heads"], c["num_lact_heads"]
    hd, d = D // Ha, D // H
    eps = c["norm_eps"]
    T = len(tokens)
    x = sd["model.embeddings.weight"][torch.as_tensor(tokens, dtype=torch.long)]
    base = math.log(math.expm1(BASE_LR))  # softplus^-1(0.001)
    for i in range(c["num_hidden_layers"]):
        b = f"model.layers.{i}."
        a = b + "attn."
        h = rms_norm(x, sd[b + "attn_norm.weight"], eps)
        q, k, v = (h @ sd[a + "qkv.weight"].T).chunk(3, dim=-1)
        att = attention(rope(q.reshape(T, Ha, hd), c["rope_theta"]), rope(k.reshape(T, Ha, hd), c["rope_theta"]),
                        v.reshape(T, Ha, hd), c["window_size"]).reshape(T, D)
        fq = q * sd[a + "qk_scale"][:, 0] + sd[a + "qk_offset"][:, 0]
        fk = k * sd[a + "qk_scale"][:, 1] + sd[a + "qk_offset"][:, 1]
        fv = v
        if c["qkv_silu"]:
            fq, fk = F.silu(fq), F.silu(fk)
            if not c["no_v_silu"]:
                fv = F.silu(fv)
        fq = fq.reshape(T, H, d)
        fk = fk.reshape(T, H, d)
        fq = fq / (fq.norm(dim=-1, keepdim=True) + 1e-5)
        fk = fk / (fk.norm(dim=-1, keepdim=True) + 1e-5)
        if not c["ttt_nope"]:  # the attention's RoPE: over the attention heads
            fq = rope(fq.reshape(T, Ha, hd), c["rope_theta"]).reshape(T, H, d)
            fk = rope(fk.reshape(T, Ha, hd), c["rope_theta"]).reshape(T, H, d)
        fv = fv.reshape(T, H, d)
        lr = F.softplus(h @ sd[a + "lr_proj.weight"].T + sd[a + "lr_proj.bias"] + base).reshape(T, H, 3)
        mom = None
        if c["use_momentum"]:
            mom = torch.sigmoid(h @ sd[a + "momentum_proj.0.weight"].T + sd[a + "momentum_proj.0.bias"])
        W = [fast_weight(sd, a, n, c) for n in ("w0", "w1", "w2")]
        heads = []
        for j in range(H):
            o = fast_weight_program(W[0][j], W[1][j], W[2][j], fq[:, j], fk[:, j], fv[:, j], lr[:, j],
                                    None if mom is None else mom[:, j], c["lact_chunk_size"], c["use_muon"],
                                    c["ttt_prenorm"])
            heads.append(rms_norm(o, sd[a + "ttt_norm.weight"], TTT_NORM_EPS))
        gate = F.silu(h @ sd[a + "ttt_scale_proj.weight"].T + sd[a + "ttt_scale_proj.bias"])  # [T, H]
        mem = (torch.stack(heads, 1) * gate[:, :, None]).reshape(T, D)
        x = x + (att + mem) @ sd[a + "o_proj.weight"].T
        m = rms_norm(x, sd[b + "mlp_norm.weight"], eps)
        x = x + (F.silu(m @ sd[b + "mlp.gate_proj.weight"].T) * (m @ sd[b + "mlp.up_proj.weight"].T)) @ \
            sd[b + "mlp.down_proj.weight"].T
    head = sd["model.embeddings.weight"] if c["tie_word_embeddings"] else sd["lm_head.weight"]
    return rms_norm(x, sd["model.norm.weight"], eps) @ head.T
