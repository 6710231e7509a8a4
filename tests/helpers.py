"""What the tests share: the installed backends, independent float64 numpy oracles, a model
loader, perturbed parameters, batches and a tolerance check that names what diverged.

Each oracle is written straight from the lecture / docs/design.md, without any backend's code, so
a backend that agrees with it is right, not merely consistent with another backend. Imported by
the test modules as `helpers` (tests/ is on sys.path through pytest's rootdir conftest).
"""
import contextlib
import itertools
from pathlib import Path

import numpy as np

from makemore.registry import available_backends, get_backend
from shared.params import init_params

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = available_backends()
PAIRS = list(itertools.combinations(BACKENDS, 2))
# torch's fast path compiles each new shape (about 10-40 s on 2 cores): the contract tests run its
# fused step eagerly, test_torch.py runs the compiled one
FAST_KWARGS = {"torch": {"compile": False}}
# fast paths that are bitwise the plain path (the others agree to float rounding)
BITWISE_FAST = {"jax"}


def bn_oracle(x, gamma, beta, rm, rv, convention, eps=1e-5, momentum=0.1):
    """docs/design.md's BatchNorm table in float64 numpy: train-mode output and new running stats.

    x (B, C) or (B, T, C); reduces over every axis but the last, n = B or B*T.
    Returns (y like x, new running_mean (C,), new running_var (C,)).
    """
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]                       # B for 2-D input, B*T for 3-D input
    mean = x.mean(axis=axes)
    ss = ((x - mean) ** 2).sum(axis=axes)
    var = ss / (n - 1) if convention == "lecture" else ss / n
    run_var = ss / n if convention == "flax" else ss / (n - 1)
    y = gamma * (x - mean) / np.sqrt(var + eps) + beta
    return y, (1 - momentum) * rm + momentum * mean, (1 - momentum) * rv + momentum * run_var


# The recipe the recipe tests run: AdamW (decay on), warm-up + cosine, dropout. lr 0.01 is AdamW-sized.
RECIPE = dict(optimizer="adamw", schedule="cosine", lr=0.01, lr_final=0.001, weight_decay=0.1, dropout=0.2)


def adamw_oracle(p, g, m, v, t, lr, weight_decay, decayed, betas=(0.9, 0.999), eps=1e-8):
    """One AdamW step in float64 numpy, from Loshchilov & Hutter 2019 (Algorithm 2, with the
    learning rate scaling the decay as torch.optim.AdamW and optax.adamw do), step t from 1:
    m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2, m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t),
    p = p - lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p) (the decay only if `decayed`).
    Returns (p, m, v)."""
    b1, b2 = betas
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    step = (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    return p - lr * (step + (weight_decay * p if decayed else 0.0)), m, v


def mlp_train_dropout_oracle(p, X, Y, mask, eps=1e-5):
    """The `mlp` preset in train mode with inverted dropout after its Tanh (Srivastava et al.
    2014), written out in float64 with the lecture's BatchNorm (unbiased variance): returns
    (loss, {"5.weight", "5.bias", "3.gamma", "3.beta": gradients}) for X (B, 3), Y (B,) and a
    (B, 200) mask."""
    B = len(X)
    pre = p["0.weight"][X].reshape(B, -1) @ p["2.weight"]
    xhat = (pre - pre.mean(0)) / np.sqrt(pre.var(0, ddof=1) + eps)
    t = np.tanh(p["3.gamma"] * xhat + p["3.beta"])
    h = t * mask                                                   # dropout
    logits = h @ p["5.weight"] + p["5.bias"]
    z = logits - logits.max(1, keepdims=True)
    prob = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    loss = -np.log(prob[np.arange(B), Y]).mean()
    dlogits = (prob - np.eye(logits.shape[1])[Y]) / B
    dbn = (dlogits @ p["5.weight"].T) * mask * (1 - t ** 2)        # through dropout, then tanh
    return loss, {"5.weight": h.T @ dlogits, "5.bias": dlogits.sum(0), "3.gamma": (dbn * xhat).sum(0),
                  "3.beta": dbn.sum(0)}


def mlp_eval_hidden_and_logits(p, X):
    """The `mlp` preset in eval mode, written out from the lecture (Part 3's MLP with BatchNorm):
    X (B, 3) int -> (h (B, 200) Tanh output, logits (B, vocab))."""
    h = p["0.weight"][X].reshape(len(X), -1) @ p["2.weight"]
    h = np.tanh(p["3.gamma"] * (h - p["3.running_mean"]) / np.sqrt(p["3.running_var"] + 1e-5) + p["3.beta"])
    return h, h @ p["5.weight"] + p["5.bias"]


def hierarchical_oracle(spec, p, X, train=False, convention="lecture", eps=1e-5, momentum=0.1, masks=None):
    """The hierarchical model of Part 5 (FlattenConsecutive, Linear, BatchNorm1d, Tanh, as in the
    lecture's notebook; or the WaveNet paper's gate in place of Tanh) in float64 numpy, for contexts X (B, block_size) int: the logits
    (B, vocab) and, in train mode, the new running stats {name: array} (eval mode: the running
    stats of p, and {}). Written from the lecture and bn_oracle, without any backend: the oracle
    of a conv model's logits at every position, and of its whole-sequence train step, whose
    BatchNorm1d statistics are defined as these (docs/design.md, "Whole-sequence training").
    masks: None, or one dropout mask per Tanh/gate, multiplying its output (train mode)."""
    x, stats = p["0.weight"][X], {}
    masks = iter(masks) if masks is not None else None
    for k, l in enumerate(spec.layers[1:], start=1):
        if l.kind == "flatten":
            B, T, C = x.shape
            x = x.reshape(B, T // l.n, C * l.n)
            x = x[:, 0] if x.shape[1] == 1 else x
        elif l.kind == "linear":
            x = x @ p[f"{k}.weight"] + (p[f"{k}.bias"] if l.bias else 0)
        elif l.kind == "batchnorm" and not train:
            x = p[f"{k}.gamma"] * (x - p[f"{k}.running_mean"]) / np.sqrt(p[f"{k}.running_var"] + eps) \
                + p[f"{k}.beta"]
        elif l.kind == "batchnorm":
            x, stats[f"{k}.running_mean"], stats[f"{k}.running_var"] = bn_oracle(
                x, p[f"{k}.gamma"], p[f"{k}.beta"], p[f"{k}.running_mean"], p[f"{k}.running_var"],
                convention, eps, momentum)
        elif l.kind == "tanh":
            x = np.tanh(x)
        elif l.kind == "gate":   # van den Oord et al. 2016, eq. 2: tanh(filter) * sigmoid(gate)
            x = np.tanh(x[..., :l.dim]) / (1.0 + np.exp(-x[..., l.dim:]))
        if masks is not None and l.kind in ("tanh", "gate"):
            x = x * next(masks)
    return x, stats


def tree_counts(block_size, dilations, mask):
    """For each dilation level of a hierarchical model with kernel 2 (FlattenConsecutive(2)
    stages), how many target windows of `mask` (B, L) use each node, counted from spans: the
    level-l node at conv position p covers input tokens [p, p + 2**l), and window t (tokens
    [t, t + block_size)) holds the level-l nodes starting at t, t + 2**l, t + 2*2**l, ...
    Returns [(B, L + block_size - 2**l) counts for l = 1, 2, ...] (the BatchNorm inputs)."""
    B, L = mask.shape
    out = []
    for lvl in range(1, len(dilations) + 1):
        span = 2 ** lvl
        c = np.zeros((B, L + block_size - span))
        for b, t in zip(*np.nonzero(mask)):
            for start in range(t, t + block_size, span):
                c[b, start] += 1
        out.append(c)
    return out


def loaded_model(backend: str, spec, params):
    """(backend module, model built from `spec` with canonical `params` loaded)."""
    B = get_backend(backend)
    model = B.build_model(spec)
    B.load_params(model, params)
    return B, model


def assert_same(a, b, what: str, rtol: float, names=("a", "b")) -> None:
    """Fail unless max|a - b| <= rtol * max|b|; the message names the tensor, the two sides,
    the size of the difference and where it is largest."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"{what}: shape {a.shape} on {names[0]} but {b.shape} on {names[1]}"
    if a.size == 0:
        return
    assert np.isfinite(a).all() and np.isfinite(b).all(), f"{what}: non-finite values"
    diff = np.abs(a - b)
    scale = max(float(np.abs(b).max()), np.finfo(np.float64).tiny)
    worst = np.unravel_index(int(diff.argmax()), diff.shape)
    assert diff.max() <= rtol * scale, (
        f"{what} differs between {names[0]} and {names[1]}: max |diff| {diff.max():.3g} at index "
        f"{tuple(int(i) for i in worst)} ({a[worst]!r} vs {b[worst]!r}) = {diff.max() / scale:.3g} "
        f"of max |value| {scale:.3g}, above rtol {rtol:g}")


def perturbed_params(spec, seed=0):
    """Initial parameters with gamma, beta and running stats moved off 1/0 so every term counts."""
    rng = np.random.default_rng(seed + 100)
    p = init_params(spec, seed)
    dt = np.dtype(spec.dtype)
    for k, v in p.items():
        if k.endswith(("gamma", "running_var")):
            p[k] = rng.uniform(0.5, 1.5, size=v.shape).astype(dt)
        elif k.endswith(("beta", "running_mean", ".bias")):
            p[k] = (0.1 * rng.normal(size=v.shape)).astype(dt)
    return p


def batch(spec, n=32, seed=0):
    """(X (n, block_size), Y (n,)) random int64 token ids inside the spec's vocab."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, spec.vocab_size, size=(n, spec.block_size)),
            rng.integers(0, spec.vocab_size, size=n))


def fast_steps(name, B, model, opt, Xs, Ys, masks=None):
    """B.fast_train_steps with the test settings of FAST_KWARGS."""
    return B.fast_train_steps(model, opt, Xs, Ys, masks=masks, **FAST_KWARGS.get(name, {}))


@contextlib.contextmanager
def one_torch_thread():
    """One torch intra-op thread inside the block (none to set without torch): on a busy 2-core
    machine a second OpenMP thread made small steps several times slower and erratic."""
    if "torch" not in BACKENDS:
        yield
        return
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
