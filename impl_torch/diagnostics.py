"""Look inside a training step the PyTorch way: module forward hooks record every Tanh output, and a
tensor hook on each output records its gradient during backward. Nothing in the model changes; the
hooks are attached and removed by a context manager.

Source: Karpathy, "Building makemore Part 3: Activations & Gradients, BatchNorm"
(makemore_part3_bn.ipynb, "PyTorch-ifying the code" from 1:18:35, visualisations from
1:26:51), where the layers keep `self.out` and
`out.retain_grad()`; with torch.nn modules the idiomatic equivalent is
`nn.Module.register_forward_hook` + `Tensor.register_hook` (PyTorch docs, "Module hooks",
"Tensor.register_hook"). Statistics and plots are framework-free: makemore/diagnose.py.
"""
from __future__ import annotations

from contextlib import contextmanager

from .layers import Gate, Tanh
from .model import loss_and_grads


def tanh_layers(model) -> list[int]:
    """Indices (canonical layer numbers) of the Tanh and Gate layers (the activations), in order."""
    return [i for i, layer in enumerate(model) if isinstance(layer, (Tanh, Gate))]


@contextmanager
def record_tanh(model):
    """Attach hooks to every Tanh module for the duration of the `with` block.

    Yields a dict {"activations": {i: (B, [T,] C) ndarray}, "activation_grads": {i: same shape}}
    filled by the forward passes (and backward passes) run inside the block: the Tanh output of
    layer i and d loss / d output (dtype of the model). The last pass wins.
    The forward hooks are removed on exit, also after an exception; the tensor hooks live on the
    output tensors and go away with the autograd graph.
    """
    rec = {"activations": {}, "activation_grads": {}}
    handles = []

    def hook_for(i):
        def forward_hook(module, inputs, out):
            rec["activations"][i] = out.detach().numpy().copy()
            if out.requires_grad:  # not under torch.no_grad(): catch d loss / d out in backward
                out.register_hook(lambda g: rec["activation_grads"].__setitem__(i, g.detach().numpy().copy()))
        return forward_hook

    try:
        for i in tanh_layers(model):
            handles.append(model[i].register_forward_hook(hook_for(i)))
        yield rec
    finally:
        for h in handles:
            h.remove()


def collect(model, X, Y) -> dict:
    """One train-mode forward/backward (running stats updated, weights not) with the hooks on.

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
