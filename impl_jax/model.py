"""Build a Flax nnx model from the shared spec; move canonical parameters in and out; forward, loss
and gradients with numpy at the boundary (for parity tests and the shared driver)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from shared.checks import Float64Unavailable, check_masks, check_targets, check_token_ids
from shared.params import check_params, param_shapes
from shared.spec import ModelSpec

from .layers import BatchNorm1d, Embedding, FlattenConsecutive, Linear, Sequential, Tanh

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
        elif l.kind == "batchnorm":
            layers.append(BatchNorm1d(l.dim, eps=bn.eps, momentum=bn.momentum, convention=bn.convention,
                                      dtype=dtype, positions=spec.bn_positions(i)))
        elif l.kind == "tanh":
            layers.append(Tanh())
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
    # canonical name -> (layer index, nnx field): Flax calls Embed's table `embedding` and
    # Linear's weight `kernel`; both are already in the canonical layout (torch transposes).
    out = {}
    for name in param_shapes(spec):
        i, f = name.split(".", 1)
        kind = spec.layers[int(i)].kind
        if f == "weight":
            f = "embedding" if kind == "embedding" else "kernel"
        out[name] = (int(i), f)
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
        # compile a scatter into the old one for every shape
        var.set_value(jnp.asarray(params[name], dtype=DTYPES[model.spec.dtype]))


def export_params(model: Sequential) -> dict[str, np.ndarray]:
    """Canonical parameters (numpy copies), running stats included, in spec order."""
    return {name: np.array(var[...]) for name, var in _canonical(model).items()}


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
    flat = {path[1:]: v for path, v in nnx.to_flat_state(grads)}  # path ('layers', k, field)
    out = {name: np.array(flat[(i, f)][...]) for name, (i, f) in _flax_fields(model.spec).items()
           if (i, f) in flat}
    return float(loss), out
