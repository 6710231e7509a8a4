"""JAX backend: Flax nnx modules, jax.grad through nnx.value_and_grad, optax.sgd, jitted steps.

Same interface as impl_numpy and impl_torch (DESIGN.md "Backend interface"). Pinned to
flax 0.12.x (pyproject): the nnx API changes between minor releases.
"""
from .model import build_model, export_params, forward, layer_outputs, load_params, loss_and_grads
from .train import evaluate, fast_train_steps, make_optimizer, sample, train_step

NAME = "jax"
__all__ = ["build_model", "load_params", "export_params", "forward", "layer_outputs",
           "loss_and_grads", "make_optimizer", "train_step", "evaluate", "sample",
           "fast_train_steps", "NAME"]
