"""Training, evaluation and sampling the JAX way: optax.sgd with the lecture's step schedule held
by an nnx.Optimizer, one pure step function jitted over the state split from the model once,
model.train()/model.eval() for the mode.

The plain path a learner reads; the fastest honest path is fast.py.

Sources: Flax guide "Performance considerations" (split the graph once, jax.jit over the state,
https://flax.readthedocs.io/en/latest/guides/performance.html); optax docs for
`join_schedules`, `constant_schedule` and `sgd`.
"""
from __future__ import annotations

import contextlib
from functools import partial

import jax
import numpy as np
import optax
from flax import nnx

from shared.stream import sample_tokens
from shared.config import TrainConfig

from shared.checks import check_sequences

from .model import (_counts, _pad_length, _sequence_logits, _targets, _tokens, cross_entropy,
                    sequence_cross_entropy)

@contextlib.contextmanager
def threads_for(batch_size: int):
    """numpy and torch set their threads per step (shared.threads.step_threads); XLA's CPU thread
    pool is fixed when the process starts (XLA_FLAGS), so there is nothing to set here."""
    yield


class Optimizer:
    """An nnx.Optimizer (optax.sgd on the lecture's step schedule) plus what the jitted step
    needs: the graphdef of (model, optimizer) split once, and the live nnx Variables the new
    state is written back into. The step count lives in the optax state (a traced array), so
    moving through the schedule never retraces.

    Attributes:
        t: steps taken (int), read from the optax state; the schedule's position.
        optimizer: nnx.Optimizer(model, optax.sgd(schedule), wrt=nnx.Param).
        schedule: step (int) -> learning rate, as optax computes it.
    """

    def __init__(self, model, cfg: TrainConfig):
        # Two constant pieces joined at the decay step, rather than piecewise_constant_schedule:
        # that one returns lr * scale, and no float scale takes every lr exactly to lr_final
        # (0.1 * 0.1 != 0.01); the lecture's schedule is "0.1, then 0.01", not a product.
        self.schedule = optax.join_schedules(
            [optax.constant_schedule(cfg.lr), optax.constant_schedule(cfg.lr_final)], [cfg.decay_step])
        self.optimizer = nnx.Optimizer(model, optax.sgd(self.schedule), wrt=nnx.Param)
        model.train()  # the train-mode graph is the one compiled
        # Flax's performance guide: split once, then jax.jit over the state (plain nnx.jit
        # re-traverses the graph on every call: about 3x slower per step for this model).
        self.graphdef, self.state = nnx.split((model, self.optimizer))
        self.variables = jax.tree.leaves(self.state, is_leaf=lambda x: isinstance(x, nnx.Variable))
        # The graphdef is closed over, not a static argument: jit would hash it on every call
        # (about 0.5 ms for this model). A new Optimizer (a new run) compiles once.
        self.train_step = jax.jit(partial(_step, self.graphdef))
        self.sequence_step = jax.jit(partial(_sequence_step, self.graphdef))  # one compile per shape

    @property
    def t(self) -> int:
        """Steps taken (the nnx.Optimizer's step counter)."""
        return int(self.optimizer.step[...])

    @property
    def lr(self) -> float:
        """The learning rate of the next step, as optax computes it."""
        return float(self.schedule(self.t))

    def write_back(self, new_state) -> None:
        """Store the arrays of a new state (same tree as `self.state`) into the live Variables,
        so the model (and export_params) sees them."""
        for var, value in zip(self.variables, jax.tree.leaves(new_state)):
            var.set_raw_value(value)  # plain arrays: skips set_value's tree_map (4x faster)


def _step(graphdef, state, X, Y):
    # One SGD step, pure: state in, state out (the nnx idiom inside the transform).
    model, optimizer = nnx.merge(graphdef, state)
    loss, grads = nnx.value_and_grad(lambda m: cross_entropy(m(X), Y))(model)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), loss


def _sequence_step(graphdef, state, X, Y, mask, counts):
    # One SGD step on whole sequences, pure (as _step)
    model, optimizer = nnx.merge(graphdef, state)
    loss, grads = nnx.value_and_grad(
        lambda m: sequence_cross_entropy(_sequence_logits(m, X, counts), Y, mask))(model)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), loss


def train_step(model, opt: Optimizer, X, Y) -> float:
    """One SGD step on a minibatch (X (B, block_size) int, Y (B,) int); returns the loss.

    Raises ValueError (token ids, target shape, a batch too small for BatchNorm) before any
    state changes."""
    model.spec.check_train_batch(len(X))
    X = _tokens(model, X)
    new_state, loss = opt.train_step(opt.state, X, _targets(model, Y, len(X)))
    opt.write_back(new_state)
    return float(loss)


def sequence_train_step(model, opt: Optimizer, X, Y, mask=None) -> float:
    """One SGD step on whole sequences of a conv model (issue 14): X (B, L + block_size - 1),
    Y (B, L), mask (B, L) bool (shared.stream.NameBatchStream); returns the mean loss over the
    real targets. L is padded to a multiple of 4 (model._pad_length), and each new (B, L)
    compiles once (names.txt: four). Raises ValueError (shared.checks.check_sequences) before any
    state changes."""
    X, Y, mask = _pad_length(*check_sequences(model.spec, X, Y, mask, train=True))
    new_state, loss = opt.sequence_step(opt.state, X.astype(np.int32, copy=False),
                                        Y.astype(np.int32, copy=False), mask, _counts(model, mask, True))
    opt.write_back(new_state)
    return float(loss)


@nnx.jit
def _evaluate(model, X, Y):
    return cross_entropy(model(X), Y)


def evaluate(model, X, Y) -> float:
    """Mean cross-entropy over a whole split in eval mode (the lecture's split_loss), one jitted call."""
    model.eval()
    X = _tokens(model, X)
    loss = _evaluate(model, X, _targets(model, Y, len(X)))
    model.train()
    return float(loss)


# Sampling calls the forward once per token: nnx.jit would walk the model's graph on every call
# (3.7 ms here for a 50 x 8 batch, more than the forward itself), so the eval-mode model is split
# once per sample() and the token loop calls a jax.jit over its state, one per graph structure.
_EVAL_FORWARDS: dict = {}


def _apply(graphdef, state, X):
    return nnx.merge(graphdef, state)(X)


def sample(model, uniforms: np.ndarray) -> list[list[int]]:
    """Sample len(uniforms) names in eval mode with the shared inverse-CDF draws; token lists
    without the end token. The forward is compiled once per model structure and batch size."""
    model.eval()
    try:
        graphdef, state = nnx.split(model)
        fwd = _EVAL_FORWARDS.get(graphdef)
        if fwd is None:
            fwd = _EVAL_FORWARDS[graphdef] = jax.jit(partial(_apply, graphdef))
        out = sample_tokens(lambda ctx: np.asarray(fwd(state, ctx.astype(np.int32))), len(uniforms),
                            model.spec.block_size, uniforms)
    finally:
        model.train()
    return out
