"""PyTorch backend: idiomatic torch.nn modules, autograd, torch.optim.SGD with a LambdaLR schedule.

Same interface as impl_numpy and impl_jax (DESIGN.md "Backend interface").
"""
from .model import build_model, export_params, forward, layer_outputs, load_params, loss_and_grads
from .train import evaluate, fast_train_steps, make_optimizer, sample, train_step

NAME = "torch"
__all__ = ["build_model", "load_params", "export_params", "forward", "layer_outputs",
           "loss_and_grads", "make_optimizer", "train_step", "evaluate", "sample",
           "fast_train_steps", "NAME"]
