"""Build a numpy model from the shared spec; move canonical parameters in and out; forward, loss
and gradients (hand-written backward: there is no autograd here)."""
from __future__ import annotations

import numpy as np

from shared.checks import check_masks, check_sequences, check_targets, check_token_ids
from shared.params import check_params, param_shapes
from shared.spec import ModelSpec, window_counts

from .layers import BatchNorm1d, CausalConv1d, Embedding, FlattenConsecutive, Gate, Linear, Sequential, Tanh

DTYPES = {"float32": np.float32, "float64": np.float64}


# numpy allocates placeholder arrays; torch and Flax modules initialise themselves (overwritten by load_params).
def build_model(spec: ModelSpec) -> Sequential:
    """A Sequential whose layer k is spec.layers[k] (canonical index spec.layer_ids()[k]), in the
    spec's dtype, in train mode.

    Its weights are zeros/ones placeholders: load canonical parameters with :func:`load_params`.
    """
    bn, dt = spec.batchnorm, DTYPES[spec.dtype]
    layers = []
    for i, l in enumerate(spec.layers):
        if l.kind == "embedding":
            layers.append(Embedding(l.num, l.dim, dtype=dt))
        elif l.kind == "flatten":
            layers.append(FlattenConsecutive(l.n))
        elif l.kind == "linear":
            layers.append(Linear(l.fan_in, l.fan_out, bias=l.bias, dtype=dt))
        elif l.kind == "conv":
            layers.append(CausalConv1d(l.fan_in, l.fan_out, n=l.n, dilation=l.dilation, bias=l.bias,
                                       dtype=dt))
        elif l.kind == "batchnorm":
            layers.append(BatchNorm1d(l.dim, eps=bn.eps, momentum=bn.momentum, convention=bn.convention,
                                      dtype=dt, positions=spec.bn_positions(i)))
        elif l.kind == "tanh":
            layers.append(Tanh())
        elif l.kind == "gate":
            layers.append(Gate(l.dim))
        else:
            raise ValueError(f"unknown layer kind {l.kind!r}")
    model = Sequential(*layers, ids=spec.layer_ids()).train()
    model.spec = spec
    return model


def _canonical(model: Sequential) -> dict[str, np.ndarray]:
    # canonical name -> the layer's own array: numpy keeps Linear weights as (fan_in, fan_out) and
    # conv weights as (n * fan_in, fan_out), the canonical layouts, so nothing is transposed
    # (torch transposes and permutes).
    sd = {f"{i}.{k}": v for i, l in zip(model.ids, model) for k, v in (l.parameters() | l.buffers()).items()}
    return {name: sd[name] for name in param_shapes(model.spec)}


# numpy writes into the layers' own arrays in place.
def load_params(model: Sequential, params: dict[str, np.ndarray]) -> None:
    """Copy canonical parameters (names, shapes, dtype checked) into the model, in place.

    Raises shared.params.ParamError naming the tensor that does not fit.
    """
    check_params(model.spec, params)
    for name, a in _canonical(model).items():
        a[...] = params[name]


def export_params(model: Sequential) -> dict[str, np.ndarray]:
    """Canonical parameters (numpy copies), running stats included, in spec order."""
    return {name: a.copy() for name, a in _canonical(model).items()}


def _tokens(model: Sequential, X, train: bool = False) -> np.ndarray:
    # checked before anything runs (shared.checks); train mode also needs a batch BatchNorm can
    # normalise (ModelSpec.check_train_batch). Any integer dtype and memory layout is accepted.
    X = np.asarray(X)
    check_token_ids(X, model.spec.vocab_size, model.spec.block_size)
    if train:
        model.spec.check_train_batch(len(X))
    return np.ascontiguousarray(X, dtype=np.int64)


def _targets(model: Sequential, Y, n: int | None = None) -> np.ndarray:
    # checked (shared.checks.check_targets; with n, the number of contexts, the shape too): numpy's
    # fancy indexing would wrap a negative target to the last class
    return np.ascontiguousarray(check_targets(Y, model.spec.vocab_size, n), dtype=np.int64)


def _masks(model: Sequential, masks, n: int, k: int | None = None) -> list[np.ndarray] | None:
    # checked (shared.checks.check_masks: one per Tanh, of its output's shape for n examples, with
    # a leading k for k steps), in the model's dtype; None: no dropout
    return check_masks(model.spec, masks, n, k)


def forward(model: Sequential, X, train: bool = False) -> np.ndarray:
    """Logits (B, vocab_size) for token ids X (B, block_size) int. Train mode uses batch
    statistics and updates the running stats; eval mode uses the running stats."""
    model.train(train)
    return model(_tokens(model, X, train)).copy()


def layer_outputs(model: Sequential, X, train: bool = False) -> list[np.ndarray]:
    """The output of every layer, in order (the last one is the logits)."""
    model.train(train)
    model(_tokens(model, X, train))
    return [l.out.copy() for l in model]


# torch: F.cross_entropy + autograd. Here the fused softmax-cross-entropy backward is written out.
def cross_entropy(logits: np.ndarray, Y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of logits (B, V) against targets Y (B,) int, and dloss/dlogits (B, V).

    Lecture Part 4 exercise 2 (1:26:31): dlogits = (softmax(logits) - onehot(Y)) / B.
    The log-softmax subtracts the row max first (as F.cross_entropy) so exp cannot overflow.
    Returns (loss as a Python float, dlogits in the logits' dtype).
    Raises ValueError if Y is not of shape (B,).
    """
    B = logits.shape[0]
    if Y.shape != (B,):  # fancy indexing would broadcast a (B, 1) or (1,) Y without a word
        raise ValueError(f"targets have shape {Y.shape}; need one per example, shape ({B},)")
    rows = np.arange(B)
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    s = e.sum(axis=1, keepdims=True)
    logp_y = shifted[rows, Y] - np.log(s[:, 0])
    loss = -logp_y.mean()
    dlogits = e / s
    dlogits[rows, Y] -= 1
    dlogits /= B
    return float(loss), dlogits


def loss_and_grads(model: Sequential, X, Y, masks=None) -> tuple[float, dict[str, np.ndarray]]:
    """Cross-entropy of a train-mode forward (running stats updated) and the gradient of every
    trainable parameter under its canonical name and layout (copies). `masks`: None, or the
    dropout masks of this step (one per Tanh layer, shared.stream.DropoutStream.masks)."""
    model.train(True)
    X = _tokens(model, X, train=True)
    Y = _targets(model, Y, len(X))  # before the forward: a bad Y must not move the running stats
    masks = _masks(model, masks, len(X))
    loss, dlogits = cross_entropy(model(X, masks), Y)
    model.backward(dlogits)
    grads = {f"{i}.{k}": g.copy() for i, l in zip(model.ids, model) for k, g in l.grads.items()}
    return loss, {k: grads[k] for k in param_shapes(model.spec, buffers=False)}


# ---- whole sequences (conv models, issue 14): every position of a batch of names at once ----

def _sequence_logits(model: Sequential, X: np.ndarray, counts: list) -> np.ndarray:
    # the layers one by one, each BatchNorm1d with its node weights (counts[k], None in eval mode);
    # logits (B, L, vocab) also when the last convolution squeezed L == 1 away
    # (no dropout on this path: each Dropout is run without a mask, so its backward is the identity)
    x = X
    for i, (layer, c) in enumerate(zip(model, counts)):
        x = layer(x) if c is None else layer(x, c.reshape(x.shape[:-1]))
        if i in model.dropouts:
            x = model.dropouts[i](x, None)
    model.out = x
    return x.reshape(len(X), X.shape[1] - model.spec.block_size + 1, -1)


def sequence_forward(model: Sequential, X, train: bool = False, mask=None) -> np.ndarray:
    """Logits (B, L, vocab_size) at every position of whole sequences X (B, L + block_size - 1) int
    of a conv model (shared.stream.name_batch): position t is the model's output for the context
    X[:, t:t + block_size]. Eval mode uses the running stats (mask not needed); train mode
    weighs every BatchNorm1d node by the target windows of `mask` (B, L) bool that use it
    (shared.spec.window_counts; default all True) and updates the running stats.

    Raises ValueError (shared.checks.check_sequences) before any state changes.
    """
    X, _, mask = check_sequences(model.spec, X, None, mask, train=train)
    model.train(train)
    counts = window_counts(model.spec, mask) if train else [None] * len(model)
    return _sequence_logits(model, X.astype(np.int64, copy=False), counts).copy()


# torch: F.cross_entropy over the real targets + autograd; here the backward is written out.
def sequence_cross_entropy(logits: np.ndarray, Y: np.ndarray, mask: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy over the real targets (mask True) of logits (B, L, V) against Y (B, L),
    and dloss/dlogits (B, L, V), zero at the masked positions: cross_entropy of the selected rows.
    Raises ValueError if Y or mask is not of shape (B, L)."""
    if Y.shape != logits.shape[:2] or mask.shape != logits.shape[:2]:
        raise ValueError(f"targets {Y.shape} and mask {mask.shape} must both be {logits.shape[:2]}")
    loss, d = cross_entropy(logits[mask], Y[mask])
    dlogits = np.zeros_like(logits)
    dlogits[mask] = d
    return loss, dlogits


def sequence_loss_and_grads(model: Sequential, X, Y, mask=None) -> tuple[float, dict[str, np.ndarray]]:
    """Masked mean cross-entropy of a train-mode sequence_forward (running stats updated) over the
    real targets of whole sequences X (B, L + block_size - 1), Y (B, L), mask (B, L) bool (None:
    all real), and the gradient of every trainable parameter under its canonical name and layout.

    Equal to loss_and_grads of the hierarchical model on every window of those sequences
    (docs/design.md, "Whole-sequence training"; tested). Raises ValueError
    (shared.checks.check_sequences) before any state changes.
    """
    X, Y, mask = check_sequences(model.spec, X, Y, mask, train=True)
    model.train(True)
    logits = _sequence_logits(model, X.astype(np.int64, copy=False), window_counts(model.spec, mask))
    loss, dlogits = sequence_cross_entropy(logits, Y.astype(np.int64, copy=False), mask)
    model.backward(dlogits.reshape(model.out.shape))
    grads = {f"{i}.{k}": g.copy() for i, l in zip(model.ids, model) for k, g in l.grads.items()}
    return loss, {k: grads[k] for k in param_shapes(model.spec, buffers=False)}
