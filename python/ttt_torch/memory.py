"""The fast-weight memories of the memory branch (docs/ALGORITHMS.md §2-4, §6), in torch: a memory's apply, its
inner step, Newton-Schulz (Muon), the chunk update (momentum -> Muon -> decay -> step -> weight norm), the causal
chunked program with resets every `shard` tokens, and TNT's Q-K projection. Every (sequence, head) pair is one
item of a batch dimension G; autograd differentiates through every update."""
import torch
import torch.nn.functional as F

_NS5 = ((4.0848, -6.8946, 2.9270), (3.9505, -6.3029, 2.6377), (3.7418, -5.5913, 2.3037),
        (2.8769, -3.1427, 1.2046), (2.8366, -3.0525, 1.2012))


def dsilu(z):
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def mm_t(x, w):
    """x W^T for x [G, n, cols] and W [G, rows, cols]."""
    return torch.matmul(x, w.transpose(1, 2))


def apply(spec, w, q):
    """f_W(q): q [G, n, d] -> [G, n, d]."""
    if spec.family == "swiglu":
        return mm_t(F.silu(mm_t(q, w[0])) * mm_t(q, w[2]), w[1])
    if spec.family == "mlp":
        y = mm_t(F.silu(mm_t(q, w[0])), w[1])
        return q + y if spec.mlp_residual else y
    return mm_t(q, w[0])


def inner_step(spec, w, k, v, rates):
    """The descent direction -sum_t rate_t grad_W loss_t(W) per weight matrix. rates [G, n, R]."""
    def rate(i):
        return rates[..., i:i + 1] if spec.rate_columns > 1 else rates

    def output_grad(y):  # dot: loss -<y,v> -> -v; mse: ||y - v||^2 -> 2 (y - v)
        return -v if spec.loss == "dot" else 2 * (y - v)

    def outer(a, b):  # sum_t a_t b_t^T: [G, n, p], [G, n, s] -> [G, p, s]
        return torch.matmul(a.transpose(1, 2), b)

    if spec.family == "swiglu":
        g, h = mm_t(k, w[0]), mm_t(k, w[2])
        sg = F.silu(g)
        a = sg * h
        e = output_grad(None if spec.loss == "dot" else mm_t(a, w[1]))
        da = torch.matmul(e, w[1])
        dg = da * h * dsilu(g)
        dh = da * sg
        return [-outer(rate(0) * dg, k), -outer(rate(1) * e, a), -outer(rate(2) * dh, k)]
    if spec.family == "mlp":
        z = mm_t(k, w[0])
        s = F.silu(z)
        if spec.loss == "dot":
            e = output_grad(None)
        else:
            y = mm_t(s, w[1])
            e = output_grad(k + y if spec.mlp_residual else y)
        dz = torch.matmul(e, w[1]) * dsilu(z)
        return [-outer(rate(0) * dz, k), -outer(rate(1) * e, s)]
    e = output_grad(None if spec.loss == "dot" else mm_t(k, w[0]))
    return [-outer(rate(0) * e, k)]


def ns5(m):
    """Five Newton-Schulz steps (§3.2) on each [G] matrix, on the wide orientation."""
    transposed = m.shape[1] > m.shape[2]
    x = m.transpose(1, 2) if transposed else m
    x = x / (torch.linalg.matrix_norm(x, dim=(1, 2)).reshape(-1, 1, 1) + 1e-7)
    for c0, c1, c2 in _NS5:
        a = torch.matmul(x, x.transpose(1, 2))
        b = c1 * a + c2 * torch.matmul(a, a)
        x = c0 * x + torch.matmul(b, x)
    return x.transpose(1, 2) if transposed else x


def weight_normalize(w, w0):
    """Rows of w rescaled to the row norms of w0: w[i] / (||w[i]|| + 1e-5) * ||w0[i]||."""
    return w * (w0.norm(dim=2, keepdim=True) / (w.norm(dim=2, keepdim=True) + 1e-5))


class State:
    def __init__(self, spec, w0):
        self.weights = list(w0)
        self.momentum = [torch.zeros_like(w) for w in w0] if spec.momentum else []
        self.updated = False


def effective(spec, state, w0):
    """The weights applied and differentiated: the state; with pre-norm, W0 until the first update and the
    row-normalized state after it (the public prenorm LaCT operator)."""
    if spec.weight_norm != "pre" or not state.updated:
        return state.weights
    return [weight_normalize(w, i) for w, i in zip(state.weights, w0)]


def update(spec, state, w0, k, v, rates, eta, alpha):
    """One chunk update (§3.3). eta, alpha [G, n, 1] or None."""
    delta = inner_step(spec, effective(spec, state, w0), k, v, rates)
    out = State.__new__(State)
    out.updated = True
    out.momentum = []
    if spec.momentum:
        mbar = eta.mean(dim=(1, 2)).reshape(-1, 1, 1)
        delta = [d + mbar * m for d, m in zip(delta, state.momentum)]
        out.momentum = list(delta)
    if spec.muon:
        delta = [ns5(d) for d in delta]
    keep = 1 - alpha.mean(dim=(1, 2)).reshape(-1, 1, 1) if spec.decay else None
    out.weights = []
    for w, d, i in zip(state.weights, delta, w0):
        w = (w * keep if keep is not None else w) + d
        out.weights.append(weight_normalize(w, i) if spec.weight_norm == "post" else w)
    return out


def run(spec, w0, q, k, v, rates, eta, alpha):
    """The causal chunked program of one memory (§4): per shard (every `spec.shard` tokens; 0: one shard) the state
    restarts at W0; each chunk is applied with the weights of its start and then, unless it ends the shard, used
    for an update. With spec.qk_proj the queries are projected onto the span of the shard's earlier keys (§6.2).
    q, k, v [G, T, d]; rates [G, T, R]; eta, alpha [G, T, 1] or None. Returns o [G, T, d]."""
    T = q.shape[1]
    shard = spec.shard if spec.shard > 0 else T
    outs = []
    for s0 in range(0, T, shard):
        s1 = min(T, s0 + shard)
        state = State(spec, w0)
        if spec.qk_proj:
            kk = torch.zeros(q.shape[0], q.shape[2], q.shape[2], dtype=q.dtype, device=q.device)
            ksq = torch.zeros(q.shape[0], 1, 1, dtype=q.dtype, device=q.device)
        for c0 in range(s0, s1, spec.chunk):
            c1 = min(s1, c0 + spec.chunk)
            qc = q[:, c0:c1]
            if spec.qk_proj:
                seen = ksq > 0
                qc = torch.where(seen, torch.matmul(qc, kk) / torch.where(seen, ksq, torch.ones_like(ksq)), qc)
            outs.append(apply(spec, effective(spec, state, w0), qc))
            if c1 < s1:
                kc = k[:, c0:c1]
                state = update(spec, state, w0, kc, v[:, c0:c1], rates[:, c0:c1],
                               eta[:, c0:c1] if eta is not None else None,
                               alpha[:, c0:c1] if alpha is not None else None)
                if spec.qk_proj:
                    kk = kk + torch.matmul(kc.transpose(1, 2), kc)
                    ksq = ksq + (kc * kc).sum(dim=(1, 2)).reshape(-1, 1, 1)
    return torch.cat(outs, dim=1)
