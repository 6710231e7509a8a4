"""Build a torch model from the shared spec; move canonical parameters in and out; forward, loss
and gradients with numpy at the boundary (for parity tests and the shared driver)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from shared.checks import check_masks, check_targets, check_token_ids
from shared.params import check_params, param_shapes
from shared.spec import ModelSpec

from .layers import BatchNorm1d, Embedding, FlattenConsecutive, Linear, Sequential, Tanh

DTYPES = {"float32": torch.float32, "float64": torch.float64}


# torch.nn modules initialise themselves with torch's RNG; load_params overwrites them with the shared draws.
def build_model(spec: ModelSpec) -> Sequential:
    """An nn.Sequential whose child k is spec.layers[k], in the spec's dtype, in train mode.

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
        elif l.kind == "batchnorm":
            layers.append(BatchNorm1d(l.dim, eps=bn.eps, momentum=bn.momentum, convention=bn.convention,
                                      positions=spec.bn_positions(i)))
        elif l.kind == "tanh":
            layers.append(Tanh())
        else:
            raise ValueError(f"unknown layer kind {l.kind!r}")
    model = Sequential(*layers).to(DTYPES[spec.dtype])
    model.spec = spec
    return model


def _canonical(model: Sequential) -> dict[str, tuple[torch.Tensor, bool]]:
    # canonical name -> (the module's own tensor, transposed?): the state_dict keys are the
    # canonical names already, but torch keeps Linear weights as (fan_out, fan_in).
    sd = model.state_dict(keep_vars=True)
    return {name: (sd[name], model.spec.layers[int(name.split(".")[0])].kind == "linear"
                   and name.endswith(".weight")) for name in param_shapes(model.spec)}


# torch copies into the Parameters and buffers under no_grad, transposing Linear weights.
def load_params(model: Sequential, params: dict[str, np.ndarray]) -> None:
    """Copy canonical parameters (names, shapes, dtype checked) into the model.

    Raises shared.params.ParamError naming the tensor that does not fit (the model unchanged).
    """
    check_params(model.spec, params)
    with torch.no_grad():
        for name, (t, transposed) in _canonical(model).items():
            t.copy_(torch.from_numpy(params[name].T if transposed else params[name]))


def export_params(model: Sequential) -> dict[str, np.ndarray]:
    """Canonical parameters (numpy copies), running stats included, in spec order."""
    return {name: (t.T if transposed else t).detach().numpy().copy()
            for name, (t, transposed) in _canonical(model).items()}


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
    return loss.item(), {name: (t.grad.T if transposed else t.grad).numpy().copy()
                         for name, (t, transposed) in _canonical(model).items() if t.grad is not None}
