"""numpy backend: every layer's forward and backward written out by hand (lecture Part 4), a
hand-written SGD, no autograd.

It provides the backend contract written once in shared.backend.Backend (docs/design.md,
"Backend interface"), as impl_torch and impl_jax do.
"""
from .model import (build_model, cross_entropy, export_params, forward, layer_outputs, load_params, loss_and_grads,
                    sequence_cross_entropy, sequence_forward, sequence_loss_and_grads)
from .train import Optimizer, evaluate, sample, sequence_train_step, train_step
from .fast import fast_train_steps, fast_unsupported

NAME = "numpy"
__all__ = ["build_model", "load_params", "export_params", "forward", "layer_outputs", "cross_entropy",
           "loss_and_grads", "sequence_forward", "sequence_cross_entropy", "sequence_loss_and_grads",
           "Optimizer", "train_step", "sequence_train_step", "evaluate", "sample", "fast_train_steps", "fast_unsupported", "NAME"]
