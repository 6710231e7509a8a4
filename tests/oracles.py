"""Independent float64 numpy oracles shared by the per-backend tests, and a model-building helper.

Each oracle is written straight from the lecture / DESIGN.md, without any backend's code, so a
backend that agrees with it is right, not merely consistent with another backend.
"""
import numpy as np

from shared.registry import get_backend


def bn_oracle(x, gamma, beta, rm, rv, convention, eps=1e-5, momentum=0.1):
    """DESIGN.md's BatchNorm table in float64 numpy: train-mode output and new running stats.

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


def mlp_eval_hidden_and_logits(p, X):
    """The `mlp` preset in eval mode, written out from the lecture (Part 3's MLP with BatchNorm):
    X (B, 3) int -> (h (B, 200) Tanh output, logits (B, vocab))."""
    h = p["0.weight"][X].reshape(len(X), -1) @ p["2.weight"]
    h = np.tanh(p["3.gamma"] * (h - p["3.running_mean"]) / np.sqrt(p["3.running_var"] + 1e-5) + p["3.beta"])
    return h, h @ p["5.weight"] + p["5.bias"]


def loaded_model(backend: str, spec, params):
    """(backend module, model built from `spec` with canonical `params` loaded)."""
    B = get_backend(backend)
    model = B.build_model(spec)
    B.load_params(model, params)
    return B, model
