"""Build a Flax nnx model from the shared spec; move canonical parameters in and out; forward, loss
and gradients with numpy at the boundary (for parity tests and the shared driver)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from shared.checks import Float64Unavailable, check_masks, check_sequences, check_targets, check_token_ids
from shared.params import check_params, param_shapes
from shared.spec import ModelSpec, window_counts

from .layers import BatchNorm1d, CausalConv1d, Embedding, FlattenConsecutive, Gate, Linear, Sequential, Tanh

DTYPES = {"float32": jnp.float32, "float64": jnp.float64}


def _enable_dtype(dtype: str) -> None:
    # JAX computes in float32 unless x64 is switched on (jax docs, "Double (64 bit) precision").
    # Switching it on is global and cannot be undone safely, so float32 models built later still
    # pass their dtype explicitly everywhere.
    if dtype == "float64" and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    probe = jnp.zeros(1, dtype=DTYPES[dtype])
    if probe.dtype != DTYPES[dtype]:
        raise Float64Unavailable(
            f"spec asks for {dtype} but JAX created {probe.dtype} arrays (jax_enable_x64="
            f"{jax.config.jax_enable_x64}, device {probe.devices()}); set JAX_ENABLE_X64=1 before "
            "starting Python, run on a device with float64 support (CPU), or use --dtype float32")


# Flax modules want initialisers and an nnx.Rngs; zeros here, overwritten by load_params with the shared draws.
def build_model(spec: ModelSpec) -> Sequential:
    """An nnx.Sequential whose `layers[k]` is spec.layers[k], every array in the spec's dtype, in
    train mode.

    float64 switches on `jax_enable_x64` (global for the process) and then checks that every
    array really is float64. Its weights are zeros: load canonical parameters with
    :func:`load_params`.

    Raises:
        Float64Unavailable: float64 was asked for and JAX gave something else.
        ValueError: unknown layer kind.
    """
    _enable_dtype(spec.dtype)
    dtype = DTYPES[spec.dtype]
    bn = spec.batchnorm
    # Flax modules want an RNG and initialisers; their values are overwritten by load_params, so
    # zeros made by numpy: jax.random (or even jnp.zeros) would compile a kernel for every shape.
    rngs = nnx.Rngs(0)
    zeros = lambda key, shape, dtype: jnp.asarray(np.zeros(shape, dtype))  # noqa: E731
    layers = []
    for i, l in enumerate(spec.layers):
        if l.kind == "embedding":
            layers.append(Embedding(l.num, l.dim, dtype=dtype, param_dtype=dtype, embedding_init=zeros,
                                    rngs=rngs))
        elif l.kind == "flatten":
            layers.append(FlattenConsecutive(l.n))
        elif l.kind == "linear":
            layers.append(Linear(l.fan_in, l.fan_out, use_bias=l.bias, dtype=dtype, param_dtype=dtype,
                                 kernel_init=zeros, rngs=rngs))
        elif l.kind == "conv":
            layers.append(CausalConv1d(l.fan_in, l.fan_out, n=l.n, dilation=l.dilation, use_bias=l.bias,
                                       dtype=dtype, param_dtype=dtype, kernel_init=zeros, rngs=rngs))
        elif l.kind == "batchnorm":
            layers.append(BatchNorm1d(l.dim, eps=bn.eps, momentum=bn.momentum, convention=bn.convention,
                                      dtype=dtype, positions=spec.bn_positions(i)))
        elif l.kind == "tanh":
            layers.append(Tanh())
        elif l.kind == "gate":
            layers.append(Gate(l.dim))
        else:
            raise ValueError(f"unknown layer kind {l.kind!r}")
    model = Sequential(*layers)
    model.spec = spec  # a frozen dataclass: static metadata in the nnx graph
    for path, v in nnx.to_flat_state(nnx.state(model)):
        if v.dtype != dtype:
            raise Float64Unavailable(f"layer {'.'.join(map(str, path))} was created as {v.dtype}, "
                                     f"the spec asks for {spec.dtype}")
    model.train()
    return model


def _flax_fields(spec: ModelSpec) -> dict[str, tuple[int, str]]:
    # canonical name -> (position in model.layers, nnx field): Flax calls Embed's table `embedding`
    # and Linear's and Conv's weights `kernel`; all are in the canonical layout (torch transposes),
    # Conv's as (n, fan_in, fan_out), the canonical (n * fan_in, fan_out) reshaped.
    position = {k: p for p, k in enumerate(spec.layer_ids())}
    out = {}
    for name in param_shapes(spec):
        i, f = name.split(".", 1)
        p = position[int(i)]
        if f == "weight":
            f = "embedding" if spec.layers[p].kind == "embedding" else "kernel"
        out[name] = (p, f)
    return out


def _canonical(model: Sequential) -> dict[str, nnx.Variable]:
    # canonical name -> the layer's own nnx Variable (Param or BatchStat)
    return {name: getattr(model.layers[i], f) for name, (i, f) in _flax_fields(model.spec).items()}


# Flax replaces each nnx Variable's array (set_value); no transpose.
def load_params(model: Sequential, params: dict[str, np.ndarray]) -> None:
    """Copy canonical parameters (names, shapes, dtype checked) into the model's nnx Variables.

    Raises shared.params.ParamError naming the tensor that does not fit.
    """
    check_params(model.spec, params)
    for name, var in _canonical(model).items():
        # set_value replaces the array (shape and dtype checked above); `var[...] = a` would
        # compile a scatter into the old one for every shape. The reshape only changes a Conv
        # kernel: (n * fan_in, fan_out) -> (n, fan_in, fan_out).
        var.set_value(jnp.asarray(params[name].reshape(var.shape), dtype=DTYPES[model.spec.dtype]))


def export_params(model: Sequential) -> dict[str, np.ndarray]:
    """Canonical parameters (numpy copies), running stats included, in spec order."""
    shapes = param_shapes(model.spec)
    return {name: np.array(var[...]).reshape(shapes[name]) for name, var in _canonical(model).items()}


def _tokens(model: Sequential, X, train: bool = False) -> np.ndarray:
    # Checked here, before any gather: jnp.take would clamp or NaN-fill a bad id silently.
    # checked before anything runs (shared.checks); train mode also needs a batch BatchNorm can
    # normalise (ModelSpec.check_train_batch). Any integer dtype and memory layout is accepted.
    X = np.asarray(X)
    check_token_ids(X, model.spec.vocab_size, model.spec.block_size)
    if train:
        model.spec.check_train_batch(len(X))
    return np.ascontiguousarray(X, dtype=np.int32)  # int32 whether or not x64 is on: one jit signature


def _targets(model: Sequential, Y, n: int | None = None) -> np.ndarray:
    # checked (shared.checks.check_targets; with n, the number of contexts, the shape too): a target
    # outside the vocab would give a silent NaN or a wrong loss under jit
    return np.ascontiguousarray(check_targets(Y, model.spec.vocab_size, n), dtype=np.int32)


def _masks(model: Sequential, masks, n: int, k: int | None = None) -> list[np.ndarray] | None:
    # checked (shared.checks.check_masks: one per Tanh, of its output's shape for n examples, with
    # a leading k for k steps), in the model's dtype; None: no dropout (a separate trace)
    return check_masks(model.spec, masks, n, k)


@nnx.jit
def _forward(model, X):
    # nnx.jit writes the updated running stats back into `model` (train mode)
    return model(X)


def forward(model: Sequential, X, train: bool = False) -> np.ndarray:
    """Logits (B, vocab_size) for token ids X (B, block_size) int. Train mode uses batch
    statistics and updates the running stats; eval mode uses the running stats."""
    model.train() if train else model.eval()
    return np.asarray(_forward(model, _tokens(model, X, train)))


def layer_outputs(model: Sequential, X, train: bool = False) -> list[np.ndarray]:
    """The output of every layer, in order (the last one is the logits). Eager, layer by layer."""
    model.train() if train else model.eval()
    x, outs = jnp.asarray(_tokens(model, X, train)), []
    for layer in model.layers:
        x = layer(x)
        outs.append(np.array(x))
    return outs


# torch: F.cross_entropy; numpy writes out its backward; optax gives the per-example losses, jax.grad the rest.
def cross_entropy(logits: jax.Array, Y: jax.Array) -> jax.Array:
    """Mean cross-entropy of logits (B, vocab) against int labels (B,) (torch's F.cross_entropy).

    Raises ValueError (at trace time: shapes are static under jit) if Y is not of shape (B,);
    optax would broadcast a (1,) Y over the batch.
    """
    if Y.shape != logits.shape[:1]:
        raise ValueError(f"targets have shape {Y.shape}; need one per example, shape ({logits.shape[0]},)")
    return optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean()


@nnx.jit
def _loss_and_grads(model, X, Y, masks):
    return nnx.value_and_grad(lambda m: cross_entropy(m(X, masks), Y))(model)


def loss_and_grads(model: Sequential, X, Y, masks=None) -> tuple[float, dict[str, np.ndarray]]:
    """Cross-entropy of a train-mode forward (running stats updated) and the gradient of every
    trainable parameter (nnx.Param) under its canonical name and layout. `masks`: None, or the
    dropout masks of this step (one per Tanh layer, shared.stream.DropoutStream.masks)."""
    model.train()
    X = _tokens(model, X, train=True)
    Y = _targets(model, Y, len(X))
    loss, grads = _loss_and_grads(model, X, Y, _masks(model, masks, len(X)))
    return float(loss), _grads(model, grads)


def _grads(model: Sequential, grads) -> dict[str, np.ndarray]:
    # the nnx.State of gradients under canonical names, in the canonical layout
    flat = {path[1:]: v for path, v in nnx.to_flat_state(grads)}  # path ('layers', k, field)
    shapes = param_shapes(model.spec)
    return {name: np.array(flat[(i, f)][...]).reshape(shapes[name])
            for name, (i, f) in _flax_fields(model.spec).items() if (i, f) in flat}


# ---- whole sequences (conv models, issue 14): every position of a batch of names at once ----

def _sequence_logits(model: Sequential, X: jax.Array, counts: list) -> jax.Array:
    # the layers one by one, each BatchNorm1d with its node weights (counts[k], None in eval mode);
    # logits (B, L, vocab) also when the last convolution squeezed L == 1 away
    x = X
    for layer, c in zip(model.layers, counts):
        x = layer(x) if c is None else layer(x, c.reshape(x.shape[:-1]))
    return x.reshape(X.shape[0], X.shape[1] - model.spec.block_size + 1, -1)


# XLA compiles one program per shape: a whole-sequence step took 4-9 s to compile per length on
# the busy 2-core dev machine, and names.txt has 14 lengths. numpy and torch run any length as it
# comes; here L is padded up to a multiple of _LENGTH_STEP (4, 8, 12, 16: four compiles), the
# padding masked out (weight 0 in every sum). On names.txt batches that is 20% more target
# positions, 10% more input positions.
_LENGTH_STEP = 4


def _pad_length(X: np.ndarray, Y: np.ndarray | None, mask: np.ndarray):
    # (X, Y, mask) with L padded up to a multiple of _LENGTH_STEP: token 0, target 0, mask False
    extra = -mask.shape[1] % _LENGTH_STEP
    if not extra:
        return X, Y, mask
    pad = ((0, 0), (0, extra))
    return (np.pad(X, pad), None if Y is None else np.pad(Y, pad), np.pad(mask, pad))


def _counts(model: Sequential, mask: np.ndarray, train: bool) -> list:
    # shared.spec.window_counts in the model's dtype (None per layer in eval mode): jit arguments
    if not train:
        return [None] * len(model.layers)
    dtype = DTYPES[model.spec.dtype]
    return [None if c is None else c.astype(dtype) for c in window_counts(model.spec, mask)]


@nnx.jit
def _sequence_forward(model, X, counts):
    # nnx.jit writes the updated running stats back into `model` (train mode)
    return _sequence_logits(model, X, counts)


def sequence_forward(model: Sequential, X, train: bool = False, mask=None) -> np.ndarray:
    """Logits (B, L, vocab_size) at every position of whole sequences X (B, L + block_size - 1) int
    of a conv model (shared.stream.name_batch): position t is the model's output for the context
    X[:, t:t + block_size]. Eval mode uses the running stats (mask not needed); train mode
    weighs every BatchNorm1d node by the target windows of `mask` (B, L) bool that use it
    (shared.spec.window_counts; default all True) and updates the running stats.

    Raises ValueError (shared.checks.check_sequences) before any state changes.
    """
    X, _, mask = check_sequences(model.spec, X, None, mask, train=train)
    L = mask.shape[1]
    X, _, mask = _pad_length(X, None, mask)
    model.train() if train else model.eval()
    logits = _sequence_forward(model, X.astype(np.int32, copy=False), _counts(model, mask, train))
    return np.asarray(logits)[:, :L]


def sequence_cross_entropy(logits: jax.Array, Y: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean cross-entropy over the real targets (mask True) of logits (B, L, V) against int labels
    Y (B, L). Under jit the real targets cannot be selected (their number is not static), so
    every position is computed and the masked ones weigh 0: sum(ce * mask) / sum(mask).
    Raises ValueError (at trace time) if Y or mask is not of shape (B, L)."""
    if Y.shape != logits.shape[:2] or mask.shape != logits.shape[:2]:
        raise ValueError(f"targets {Y.shape} and mask {mask.shape} must both be {logits.shape[:2]}")
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, Y)
    m = mask.astype(ce.dtype)
    return (ce * m).sum() / m.sum()


@nnx.jit
def _sequence_loss_and_grads(model, X, Y, mask, counts):
    return nnx.value_and_grad(
        lambda m: sequence_cross_entropy(_sequence_logits(m, X, counts), Y, mask))(model)


def sequence_loss_and_grads(model: Sequential, X, Y, mask=None) -> tuple[float, dict[str, np.ndarray]]:
    """Masked mean cross-entropy of a train-mode sequence_forward (running stats updated) over the
    real targets of whole sequences X (B, L + block_size - 1), Y (B, L), mask (B, L) bool (None:
    all real), and the gradient of every trainable parameter under its canonical name and layout.

    Equal to loss_and_grads of the hierarchical model on every window of those sequences
    (docs/design.md, "Whole-sequence training"; tested). Raises ValueError
    (shared.checks.check_sequences) before any state changes.
    """
    X, Y, mask = _pad_length(*check_sequences(model.spec, X, Y, mask, train=True))
    model.train()
    loss, grads = _sequence_loss_and_grads(model, X.astype(np.int32, copy=False),
                                           Y.astype(np.int32, copy=False), mask, _counts(model, mask, True))
    return float(loss), _grads(model, grads)
