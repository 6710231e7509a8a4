"""PyTorch backend: idiomatic torch.nn modules, autograd, torch.optim.SGD.

It provides the backend contract written once in shared.backend.Backend (docs/design.md,
"Backend interface"), as impl_numpy and impl_jax do.
"""
from .model import build_model, cross_entropy, export_params, forward, layer_outputs, load_params, loss_and_grads
from .train import Optimizer, evaluate, sample, train_step
from .fast import fast_train_steps

NAME = "torch"
__all__ = ["build_model", "load_params", "export_params", "forward", "layer_outputs", "cross_entropy",
           "loss_and_grads", "Optimizer", "train_step", "evaluate", "sample", "fast_train_steps", "NAME"]
