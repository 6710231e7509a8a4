"""Build a torch model from the shared spec; move canonical parameters in and out; forward, loss
and gradients with numpy at the boundary (for parity tests and the shared driver)."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F

from shared.checks import check_masks, check_sequences, check_targets, check_token_ids
from shared.params import check_params, param_shapes
from shared.spec import ModelSpec, window_counts

from .layers import BatchNorm1d, CausalConv1d, Embedding, FlattenConsecutive, Gate, Linear, Sequential, Tanh

DTYPES = {"float32": torch.float32, "float64": torch.float64}


# torch.nn modules initialise themselves with torch's RNG; load_params overwrites them with the shared draws.
def build_model(spec: ModelSpec) -> Sequential:
    """An nn.Sequential whose child k is spec.layers[k], named by its canonical index
    (spec.layer_ids()[k], so the state_dict keys are the canonical names), in the spec's dtype, in
    train mode.

    Its weights are torch's defaults: load canonical parameters with :func:`load_params`.
    """
    bn = spec.batchnorm
    layers = []
    for i, l in enumerate(spec.layers):
        if l.kind == "embedding":
            layers.append(Embedding(l.num, l.dim))
        elif l.kind == "flatten":
            layers.append(FlattenConsecutive(l.n))
        elif l.kind == "linear":
            layers.append(Linear(l.fan_in, l.fan_out, bias=l.bias))
        elif l.kind == "conv":
            layers.append(CausalConv1d(l.fan_in, l.fan_out, n=l.n, dilation=l.dilation, bias=l.bias))
        elif l.kind == "batchnorm":
            layers.append(BatchNorm1d(l.dim, eps=bn.eps, momentum=bn.momentum, convention=bn.convention,
                                      positions=spec.bn_positions(i)))
        elif l.kind == "tanh":
            layers.append(Tanh())
        elif l.kind == "gate":
            layers.append(Gate(l.dim))
        else:
            raise ValueError(f"unknown layer kind {l.kind!r}")
    model = Sequential(OrderedDict((str(i), m) for i, m in zip(spec.layer_ids(), layers)))
    model = model.to(DTYPES[spec.dtype])
    model.spec = spec
    return model


def _canonical(model: Sequential) -> dict[str, tuple[torch.Tensor, str]]:
    # canonical name -> (the module's own tensor, its layer kind): the state_dict keys are the
    # canonical names already, but torch keeps Linear weights as (fan_out, fan_in) and Conv1d
    # weights as (fan_out, fan_in, n)
    sd = model.state_dict(keep_vars=True)
    kinds = {str(i): l.kind for i, l in zip(model.spec.layer_ids(), model.spec.layers)}
    return {name: (sd[name], kinds[name.split(".")[0]] if name.endswith(".weight") else "")
            for name in param_shapes(model.spec)}


def _to_torch(a: np.ndarray, kind: str, shape) -> np.ndarray:
    # canonical layout -> torch's `shape`: Linear (fan_in, fan_out) -> (fan_out, fan_in); conv
    # (n * fan_in, fan_out) with tap j in rows [j*C:(j+1)*C] -> (fan_out, fan_in, n)
    if kind == "linear":
        return a.T
    if kind == "conv":
        fan_out, fan_in, n = shape
        return a.reshape(n, fan_in, fan_out).transpose(2, 1, 0)
    return a


def _from_torch(t: torch.Tensor, kind: str) -> torch.Tensor:
    # torch's layout -> canonical (the inverse of _to_torch)
    if kind == "linear":
        return t.T
    if kind == "conv":
        return t.permute(2, 1, 0).reshape(-1, t.shape[0])   # (n, fan_in, fan_out) -> (n*fan_in, fan_out)
    return t


# torch copies into the Parameters and buffers under no_grad, transposing Linear weights.
def load_params(model: Sequential, params: dict[str, np.ndarray]) -> None:
    """Copy canonical parameters (names, shapes, dtype checked) into the model.

    Raises shared.params.ParamError naming the tensor that does not fit (the model unchanged).
    """
    check_params(model.spec, params)
    with torch.no_grad():
        for name, (t, kind) in _canonical(model).items():
            t.copy_(torch.from_numpy(_to_torch(params[name], kind, t.shape)))


def export_params(model: Sequential) -> dict[str, np.ndarray]:
    """Canonical parameters (numpy copies), running stats included, in spec order."""
    return {name: _from_torch(t, kind).detach().numpy().copy()
            for name, (t, kind) in _canonical(model).items()}


def _tokens(model: Sequential, X, train: bool = False) -> torch.Tensor:
    # checked before anything runs (shared.checks); train mode also needs a batch BatchNorm can
    # normalise (ModelSpec.check_train_batch). Any integer dtype and memory layout is accepted.
    X = np.asarray(X)
    check_token_ids(X, model.spec.vocab_size, model.spec.block_size)
    if train:
        model.spec.check_train_batch(len(X))
    return torch.from_numpy(np.ascontiguousarray(X, dtype=np.int64))  # from_numpy refuses negative strides


def _targets(model: Sequential, Y, n: int | None = None) -> torch.Tensor:
    # checked (shared.checks.check_targets; with n, the number of contexts, the shape too) for a
    # clear error: F.cross_entropy's IndexError names no fix
    return torch.from_numpy(np.ascontiguousarray(check_targets(Y, model.spec.vocab_size, n), dtype=np.int64))


def _masks(model: Sequential, masks, n: int, k: int | None = None) -> list[torch.Tensor] | None:
    # checked (shared.checks.check_masks: one per Tanh, of its output's shape for n examples, with
    # a leading k for k steps), in the model's dtype; None: no dropout
    masks = check_masks(model.spec, masks, n, k)
    return None if masks is None else [torch.from_numpy(m) for m in masks]


def forward(model: Sequential, X, train: bool = False) -> np.ndarray:
    """Logits (B, vocab_size) for token ids X (B, block_size) int. Train mode uses batch
    statistics and updates the running stats; eval mode uses the running stats."""
    model.train(train)
    with torch.no_grad():
        return model(_tokens(model, X, train)).numpy()


def layer_outputs(model: Sequential, X, train: bool = False) -> list[np.ndarray]:
    """The output of every layer, in order (the last one is the logits)."""
    model.train(train)
    x, outs = _tokens(model, X, train), []
    with torch.no_grad():
        for layer in model:
            x = layer(x)
            outs.append(x.numpy().copy())
    return outs


# numpy writes out the softmax-cross-entropy backward; torch's autograd differentiates this.
def cross_entropy(logits: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits (B, vocab_size) float against targets Y (B,) int64, a 0-d
    tensor on the autograd graph (F.cross_entropy; lecture Part 2 at 32:49 replaces the manual
    softmax/log/mean with it). Raises ValueError for targets that are not of shape (B,)."""
    if Y.shape != logits.shape[:1]:
        raise ValueError(f"targets have shape {tuple(Y.shape)}; need one per example, shape "
                         f"({logits.shape[0]},)")
    return F.cross_entropy(logits, Y)


def loss_and_grads(model: Sequential, X, Y, masks=None) -> tuple[float, dict[str, np.ndarray]]:
    """Cross-entropy of a train-mode forward (running stats updated) and the gradient of every
    trainable parameter under its canonical name and layout. `masks`: None, or the dropout
    masks of this step (one per Tanh layer, shared.stream.DropoutStream.masks)."""
    model.train(True)
    for p in model.parameters():
        p.grad = None
    X = _tokens(model, X, train=True)
    Y = _targets(model, Y, len(X))  # before the forward: a bad Y must not move the running stats
    masks = _masks(model, masks, len(X))
    loss = cross_entropy(model(X, masks), Y)
    loss.backward()
    return loss.item(), _grads(model)


def _grads(model: Sequential) -> dict[str, np.ndarray]:
    # every .grad under its canonical name, in the canonical layout
    return {name: _from_torch(t.grad, kind).numpy().copy()
            for name, (t, kind) in _canonical(model).items() if t.grad is not None}


# ---- whole sequences (conv models, issue 14): every position of a batch of names at once ----

def _sequence_logits(model: Sequential, X: torch.Tensor, counts: list) -> torch.Tensor:
    # the layers one by one, each BatchNorm1d with its node weights (counts[k], None in eval mode);
    # logits (B, L, vocab) also when the last convolution squeezed L == 1 away
    x = X
    for layer, c in zip(model, counts):
        x = layer(x) if c is None else layer(x, torch.from_numpy(c).reshape(x.shape[:-1]))
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
    with torch.no_grad():
        return _sequence_logits(model, torch.from_numpy(X.astype(np.int64, copy=False)), counts).numpy()


def sequence_cross_entropy(logits: torch.Tensor, Y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the real targets (mask True) of logits (B, L, V) against Y (B, L)
    int64: F.cross_entropy of the selected rows, a 0-d tensor on the autograd graph.
    Raises ValueError if Y or mask is not of shape (B, L)."""
    if Y.shape != logits.shape[:2] or mask.shape != logits.shape[:2]:
        raise ValueError(f"targets {tuple(Y.shape)} and mask {tuple(mask.shape)} must both be "
                         f"{tuple(logits.shape[:2])}")
    return F.cross_entropy(logits[mask], Y[mask])


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
    for p in model.parameters():
        p.grad = None
    logits = _sequence_logits(model, torch.from_numpy(X.astype(np.int64, copy=False)),
                              window_counts(model.spec, mask))
    loss = sequence_cross_entropy(logits, torch.from_numpy(Y.astype(np.int64, copy=False)),
                                  torch.from_numpy(mask))
    loss.backward()
    return loss.item(), _grads(model)
