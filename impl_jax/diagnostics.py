"""Look inside a training step the Flax nnx way: with `record` on, each Tanh calls
`self.sow(nnx.Intermediate, "out", y)` (the activation) and `y = self.perturb("out", y)` (adds a
zero nnx.Perturbation; the gradient of the loss with respect to that zero is the gradient with
respect to the activation). `nnx.capture` collects both inside one jitted step. JAX has no hooks
and no mutable autograd graph to attach them to: the module itself offers the values.

Source: Karpathy, "Building makemore Part 3: Activations & Gradients, BatchNorm"
(makemore_part3_bn.ipynb, "PyTorch-ifying the code" from 1:18:35, visualisations from
1:26:51); Flax guide "Extracting intermediate
values" and the docstrings of `nnx.Module.sow`, `nnx.Module.perturb` and `nnx.capture`
(flax 0.12). Statistics and plots are framework-free: makemore/diagnose.py.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
from flax import nnx

from .layers import Gate, Tanh
from .model import _flax_fields, _targets, _tokens, cross_entropy


def tanh_layers(model) -> list[int]:
    """Indices (canonical layer numbers) of the Tanh and Gate layers (the activations), in order."""
    return [i for i, layer in enumerate(model.layers) if isinstance(layer, (Tanh, Gate))]


@contextmanager
def record_tanh(model):
    """Switch every Tanh's `record` flag on for the duration of the `with` block.

    Yields a dict {"activations": {i: (B, [T,] C) ndarray}, "activation_grads": {i: same shape}}
    that :func:`collect` fills from the jitted step (JAX functions return values: nothing is
    written behind the caller's back). `record` is a static attribute, so the recording step
    compiles once, apart from the training step. The flags are switched off on exit, also
    after an exception.
    """
    rec = {"activations": {}, "activation_grads": {}}
    idx = tanh_layers(model)
    try:
        for i in idx:
            model.layers[i].record = True
        yield rec
    finally:
        for i in idx:
            model.layers[i].record = False


@nnx.jit
def _collect_step(model, X, Y):
    # 1. zero perturbations of the right shapes (an eval-mode pass: running stats untouched;
    #    only shapes are used, so XLA drops the arithmetic)
    model.eval()
    _, zeros = nnx.capture(model, nnx.Perturbation)(X)
    model.train()

    # 2. a train-mode pass that sows the activations and adds the zero perturbations
    def loss_fn(model, perturbations):
        logits, sown = nnx.capture(model, nnx.Intermediate, init=perturbations)(X)
        return cross_entropy(logits, Y), sown

    # 3. gradients with respect to the parameters and to the perturbations (= the activations)
    (loss, sown), (grads, act_grads) = nnx.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(model, zeros)
    return loss, grads, act_grads, sown


def collect(model, X, Y) -> dict:
    """One train-mode forward/backward (running stats updated, weights not) with recording on.

    Arguments:
        X: (B, block_size) int token ids; Y: (B,) int targets.
    Returns:
        {"loss": float, "activations": {i: Tanh output ndarray}, "activation_grads": {i: d loss /
        d Tanh output}, "grads": {canonical name: gradient ndarray (canonical layout)}}.
    Raises:
        ValueError from shared.checks.check_token_ids for out-of-range token ids.
    """
    model.train()
    with record_tanh(model) as rec:
        loss, grads, act_grads, sown = _collect_step(model, _tokens(model, X, train=True), _targets(model, Y))
        for path, v in nnx.to_flat_state(sown):                # path ('layers', i, 'out'), value (y,)
            rec["activations"][path[1]] = np.array(v.get_value()[-1])  # a tuple: the last pass wins
        for path, v in nnx.to_flat_state(act_grads):
            rec["activation_grads"][path[1]] = np.array(v[...])
    flat = {path[1:]: v for path, v in nnx.to_flat_state(grads)}  # path ('layers', k, field)
    grads = {name: np.array(flat[(i, f)][...]) for name, (i, f) in _flax_fields(model.spec).items()
             if (i, f) in flat}
    return {"loss": float(loss), "activations": rec["activations"],
            "activation_grads": rec["activation_grads"], "grads": grads}
