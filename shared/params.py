"""Canonical parameters: names, shapes, the lecture's initialisation, validation.

Names follow the layer index (ModelSpec.layer_ids: the position, a conv layer taking the index of
the Linear it stands for) and the lecture's field names: `0.weight` (embedding,
(vocab_size, n_embd)), `k.weight` for Linear in (fan_in, fan_out) layout, `k.weight` of a conv layer
with n taps in (n * fan_in, fan_out) layout (the hierarchical Linear's: rows [j*C:(j+1)*C] are tap
j, tap 0 the oldest position, as FlattenConsecutive concatenates (x_{t-d}, x_t)), `k.bias`,
`k.gamma`, `k.beta`, `k.running_mean`, `k.running_var` (shape (C,); (T, C) for the lecture's
pre-fix per-position BatchNorm on 3-D input, ModelSpec.bn_positions).
Initialisation as in makemore_part5_cnn1.ipynb: embedding randn; Linear randn / sqrt(fan_in), bias
zero (a conv layer as the Linear it stands for); the last Linear's weight x0.1; gamma 1, beta 0,
running_mean 0, running_var 1.
"""
from __future__ import annotations

import numpy as np

from .spec import ACTIVATIONS, ModelSpec

BUFFERS = ("running_mean", "running_var")


class ParamError(ValueError):
    """Canonical parameters whose names, shapes or dtypes do not fit the spec."""


def param_shapes(spec: ModelSpec, buffers: bool = True) -> dict[str, tuple[int, ...]]:
    """Ordered {canonical name: shape}; with `buffers`, BatchNorm running stats are included."""
    out: dict[str, tuple[int, ...]] = {}
    for i, l in zip(spec.layer_ids(), spec.layers):
        if l.kind == "embedding":
            out[f"{i}.weight"] = (l.num, l.dim)
        elif l.kind in ("linear", "conv"):
            out[f"{i}.weight"] = (l.n * l.fan_in if l.kind == "conv" else l.fan_in, l.fan_out)
            if l.bias:
                out[f"{i}.bias"] = (l.fan_out,)
        elif l.kind == "batchnorm":
            out[f"{i}.gamma"] = (l.dim,)
            out[f"{i}.beta"] = (l.dim,)
            if buffers:
                stat = (spec.bn_positions(i), l.dim) if spec.bn_positions(i) else (l.dim,)
                out[f"{i}.running_mean"] = stat
                out[f"{i}.running_var"] = stat
        elif l.kind != "flatten" and l.kind not in ACTIVATIONS:
            raise ValueError(f"layer {i}: unknown kind {l.kind!r}")
    return out


def is_buffer(name: str) -> bool:
    """True for BatchNorm running statistics (state, not trained by the optimizer)."""
    return name.rsplit(".", 1)[-1] in BUFFERS


def is_decayed(name: str) -> bool:
    """True for the parameters AdamW's decoupled weight decay applies to, in every backend: the
    weight matrices (Linear `k.weight`) and the embedding (`0.weight`); not biases, BatchNorm
    gamma/beta or running stats (the usual convention: nanoGPT's configure_optimizers decays
    the 2-D parameters only)."""
    return name.rsplit(".", 1)[-1] == "weight"


def num_params(spec: ModelSpec) -> int:
    """Number of trainable parameters (running stats excluded), as the lecture counts them."""
    return int(sum(np.prod(s) for s in param_shapes(spec, buffers=False).values()))


def init_params(spec: ModelSpec, seed: int | np.random.Generator = 0) -> dict[str, np.ndarray]:
    """Draw the lecture's initial parameters from a numpy Generator, in the spec's dtype.

    Returns:
        {canonical name: array} in layer order, running stats included.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    dtype = np.dtype(spec.dtype)
    ids = spec.layer_ids()
    last_linear = max(i for i, l in zip(ids, spec.layers) if l.kind == "linear")
    out: dict[str, np.ndarray] = {}
    for i, l in zip(ids, spec.layers):
        if l.kind == "embedding":
            out[f"{i}.weight"] = rng.standard_normal((l.num, l.dim))
        elif l.kind in ("linear", "conv"):
            fan_in = l.n * l.fan_in if l.kind == "conv" else l.fan_in   # a conv: its Linear's fan_in
            w = rng.standard_normal((fan_in, l.fan_out)) / fan_in ** 0.5
            if i == last_linear:
                w = w * spec.last_layer_scale
            out[f"{i}.weight"] = w
            if l.bias:
                out[f"{i}.bias"] = np.zeros(l.fan_out)
        elif l.kind == "batchnorm":
            out[f"{i}.gamma"] = np.ones(l.dim)
            out[f"{i}.beta"] = np.zeros(l.dim)
            stat = (spec.bn_positions(i), l.dim) if spec.bn_positions(i) else (l.dim,)
            out[f"{i}.running_mean"] = np.zeros(stat)
            out[f"{i}.running_var"] = np.ones(stat)
    return {k: v.astype(dtype) for k, v in out.items()}


def check_params(spec: ModelSpec, params: dict[str, np.ndarray], what: str = "parameters") -> None:
    """Check that `params` has exactly the spec's names, shapes and dtype.

    Raises:
        ParamError: naming the first missing, unexpected, mis-shaped or mis-typed tensor.
    """
    expected = param_shapes(spec)
    missing = [k for k in expected if k not in params]
    extra = [k for k in params if k not in expected]
    if missing:
        raise ParamError(f"{what}: tensor {missing[0]!r} is missing (missing: {missing}); "
                         f"the spec {spec.name!r} expects {list(expected)}")
    if extra:
        raise ParamError(f"{what}: unexpected tensor {extra[0]!r} (unexpected: {extra}); "
                         f"is this from another preset than {spec.name!r}?")
    for k, shape in expected.items():
        a = params[k]
        if tuple(a.shape) != shape:
            raise ParamError(f"{what}: tensor {k!r} has shape {tuple(a.shape)}, the spec "
                             f"{spec.name!r} expects {shape}")
        if str(a.dtype) != spec.dtype:
            raise ParamError(f"{what}: tensor {k!r} has dtype {a.dtype}, the spec expects "
                             f"{spec.dtype}; convert with .astype or choose --dtype {a.dtype}")
