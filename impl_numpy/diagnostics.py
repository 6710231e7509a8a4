"""Look inside a training step the numpy way: there is nothing to hook, because the hand-written
layers already hold what the diagnostics need. Every Tanh keeps `self.out` after forward and
`self.dout` (d loss / d out) after backward; we read them.

Source: Karpathy, "Building makemore Part 3: Activations & Gradients, BatchNorm"
(makemore_part3_bn.ipynb, "PyTorch-ifying the code" from 1:18:35, visualisations from
1:26:51), where the layers keep `self.out` and
`out.retain_grad()`; here `.dout` is what the hand-written backward (Part 4) computes anyway.
Statistics and plots are framework-free: makemore/diagnose.py.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from .layers import Gate, Tanh
from .model import loss_and_grads


def tanh_layers(model) -> list[int]:
    """Indices (canonical layer numbers) of the Tanh and Gate layers (the activations), in order."""
    return [i for i, layer in enumerate(model) if isinstance(layer, (Tanh, Gate))]


@contextmanager
def record_tanh(model):
    """Read every Tanh layer's stored output and gradient for the duration of the `with` block.

    Yields a dict {"activations": {i: (B, [T,] C) ndarray}, "activation_grads": {i: same shape}}
    filled on exit from the last forward (`layer.out`) and backward (`layer.dout`) run inside the
    block (copies, in the model's dtype).
    numpy has no hooks: the stored values are cleared on entry so that a pass which did not run
    inside the block cannot leak in, and read back on exit.
    """
    rec = {"activations": {}, "activation_grads": {}}
    idx = tanh_layers(model)
    for i in idx:
        model[i].out = model[i].dout = None
    yield rec
    for i in idx:
        if model[i].out is not None:
            rec["activations"][i] = np.array(model[i].out, copy=True)
        if model[i].dout is not None:
            rec["activation_grads"][i] = np.array(model[i].dout, copy=True)


def collect(model, X, Y) -> dict:
    """One train-mode forward/backward (running stats updated, weights not), reading the layers.

    Arguments:
        X: (B, block_size) int token ids; Y: (B,) int targets.
    Returns:
        {"loss": float, "activations": {i: Tanh output ndarray}, "activation_grads": {i: d loss /
        d Tanh output}, "grads": {canonical name: gradient ndarray (canonical layout)}}.
    Raises:
        ValueError from shared.checks.check_token_ids for out-of-range token ids.
    """
    with record_tanh(model) as rec:
        loss, grads = loss_and_grads(model, X, Y)  # the model's own step, unchanged
    return {"loss": loss, "activations": rec["activations"],
            "activation_grads": rec["activation_grads"], "grads": grads}
