"""Training, evaluation and sampling the JAX way: optax.sgd or optax.adamw on the lecture's step
schedule or optax's warm-up + cosine, held by an nnx.Optimizer, one pure step function jitted
over the state split from the model once, model.train()/model.eval() for the mode.

The plain path a learner reads; the fastest honest path is fast.py.

Sources: Flax guide "Performance considerations" (split the graph once, jax.jit over the state,
https://flax.readthedocs.io/en/latest/guides/performance.html); optax docs for
`join_schedules`, `constant_schedule`, `warmup_cosine_decay_schedule`, `sgd` and `adamw`.
"""
from __future__ import annotations

import contextlib
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from shared.stream import sample_tokens
from shared.checks import check_sequences, check_state
from shared.config import ADAM_BETAS, ADAM_EPS, TrainConfig
from shared.params import is_decayed

from .model import (DTYPES, _counts, _flax_fields, _masks, _pad_length, _sequence_logits, _targets,
                    _tokens, cross_entropy, sequence_cross_entropy)


@contextlib.contextmanager
def threads_for(batch_size: int):
    """numpy and torch set their threads per step (shared.threads.step_threads); XLA's CPU thread
    pool is fixed when the process starts (XLA_FLAGS), so there is nothing to set here."""
    yield


# optax does the update inside an nnx.Optimizer; its state (and the step count) are nnx Variables.
class Optimizer:
    """An nnx.Optimizer (the training config's optax optimizer on its schedule) plus what the
    jitted step needs: the graphdef of (model, optimizer) split once, and the live nnx
    Variables the new state is written back into. The step count lives in the optax state (a
    traced array), so moving through the schedule never retraces.

    "sgd": optax.sgd. "adamw": optax.adamw (Loshchilov & Hutter 2019) with b1, b2 =
    shared.config.ADAM_BETAS, eps = ADAM_EPS, cfg.weight_decay, and a mask so the decay
    applies only to the weight matrices and the embedding (shared.params.is_decayed). Its
    update (optax docs, adamw), step t from 1: m = b1 * m + (1 - b1) * g, v = b2 * v + (1 - b2) * g * g,
    p += -lr * (m / (1 - b1**t) / (sqrt(v / (1 - b2**t)) + eps) + wd * p).
    Schedules: "step" as the lecture's; "cosine" is optax.warmup_cosine_decay_schedule.

    Attributes:
        t: steps taken (int), read from the optax state; the schedule's position.
        optimizer: nnx.Optimizer(model, optax.sgd or optax.adamw (schedule), wrt=nnx.Param).
        schedule: step (int) -> learning rate, as optax computes it.
    """

    def __init__(self, model, cfg: TrainConfig):
        self.cfg = cfg
        if cfg.schedule == "step":
            # Two constant pieces joined at the decay step, rather than piecewise_constant_schedule:
            # that one returns lr * scale, and no float scale takes every lr exactly to lr_final
            # (0.1 * 0.1 != 0.01); the lecture's schedule is "0.1, then 0.01", not a product.
            self.schedule = optax.join_schedules(
                [optax.constant_schedule(cfg.lr), optax.constant_schedule(cfg.lr_final)], [cfg.decay_step])
        else:
            # decay_steps counts the warm-up too; at least one cosine step (as shared.config.lr_at).
            # Values and count in the model's dtype: with Python floats and optax's int32 count
            # the schedule is computed in float32 (count / warmup_steps), even under x64.
            dtype = DTYPES[model.spec.dtype]
            cosine = optax.warmup_cosine_decay_schedule(
                jnp.asarray(0.0, dtype), jnp.asarray(cfg.lr, dtype), cfg.warmup,
                max(cfg.steps, cfg.warmup + 1), jnp.asarray(cfg.lr_final, dtype))
            self.schedule = lambda count: cosine(jnp.asarray(count, dtype))
        if cfg.optimizer == "sgd":
            tx = optax.sgd(self.schedule)
        else:
            # optax: p - lr * (adam + wd * p); torch: p * (1 - lr * wd), then - lr * adam: the same
            # update (both decay the parameter before the step), rounded differently
            tx = optax.adamw(self.schedule, b1=ADAM_BETAS[0], b2=ADAM_BETAS[1], eps=ADAM_EPS,
                             weight_decay=cfg.weight_decay, mask=_decay_mask(model.spec))
        self.optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        model.train()  # the train-mode graph is the one compiled
        # Flax's performance guide: split once, then jax.jit over the state (plain nnx.jit
        # re-traverses the graph on every call: about 3x slower per step for this model).
        self.graphdef, self.state = nnx.split((model, self.optimizer))
        self.variables = jax.tree.leaves(self.state, is_leaf=lambda x: isinstance(x, nnx.Variable))
        # The graphdef is closed over, not a static argument: jit would hash it on every call
        # (about 0.5 ms for this model). A new Optimizer (a new run) compiles once.
        self.train_step = jax.jit(partial(_step, self.graphdef))
        self.sequence_step = jax.jit(partial(_sequence_step, self.graphdef))  # one compile per shape
        self.fields = {f: name for name, f in _flax_fields(model.spec).items()}   # (k, field) -> name

    @property
    def t(self) -> int:
        """Steps taken (the nnx.Optimizer's step counter)."""
        return int(self.optimizer.step[...])

    @property
    def lr(self) -> float:
        """The learning rate of the next step, as optax computes it."""
        return float(self.schedule(self.t))

    def _moments(self) -> dict[str, nnx.Variable]:
        # optax.adamw's mu and nu Variables by canonical name ("exp_avg.<name>", "exp_avg_sq.<name>",
        # torch's words); path ('opt_state', 0, 'mu' | 'nu', 'layers', k, field); {} for SGD
        words = {"mu": "exp_avg", "nu": "exp_avg_sq"}
        return {f"{words[path[2]]}.{self.fields[(path[4], path[5])]}": var
                for path, var in nnx.to_flat_state(nnx.state(self.optimizer))
                if len(path) == 6 and path[0] == "opt_state" and path[2] in words}

    def state_dict(self) -> dict[str, np.ndarray]:
        """The optimizer's state in canonical form (for a resumable checkpoint): "t" int64 (),
        and for AdamW the moments exp_avg.<name>, exp_avg_sq.<name> (optax's mu and nu, numpy
        copies, canonical layout); optax.sgd keeps no momenta, only the schedule's step count."""
        moments = self._moments()
        names = [n for n in self.fields.values() if f"exp_avg.{n}" in moments]   # canonical order
        return {"t": np.array(self.t, dtype=np.int64),
                **{f"{s}.{n}": np.array(moments[f"{s}.{n}"][...]) for s in ("exp_avg", "exp_avg_sq") for n in names}}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`state_dict` returned: the nnx.Optimizer's step, optax's counts
        and AdamW's mu and nu. Raises ValueError (shared.checks.check_state) for entries that
        do not fit (missing, unexpected, of another shape)."""
        want = self.state_dict()
        state = check_state(state, list(want), shapes={k: v.shape for k, v in want.items() if k != "t"})
        t = int(np.asarray(state["t"]).reshape(()))  # safetensors stores () as (1,)
        for path, var in nnx.to_flat_state(nnx.state(self.optimizer)):
            if path[-1] in ("step", "count"):   # nnx.Optimizer.step, ScaleBy{Adam,Schedule}State.count
                var.set_raw_value(jnp.asarray(t, dtype=var.get_value().dtype))
        for k, var in self._moments().items():
            var.set_raw_value(jnp.asarray(state[k], dtype=var.get_value().dtype))

    def write_back(self, new_state) -> None:
        """Store the arrays of a new state (same tree as `self.state`) into the live Variables,
        so the model (and export_params) sees them."""
        for var, value in zip(self.variables, jax.tree.leaves(new_state)):
            var.set_raw_value(value)  # plain arrays: skips set_value's tree_map (4x faster)


def _decay_mask(spec):
    # optax.adamw's mask: a function of the parameter tree giving True where the decay applies
    # (shared.params.is_decayed), read from each leaf's path ('layers', k, field[, value])
    names = {f: name for name, f in _flax_fields(spec).items()}
    return lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: is_decayed(names[(path[1].key, path[2].key)]), params)


def _step(graphdef, state, X, Y, masks=None):
    # One optimizer step, pure: state in, state out (the nnx idiom inside the transform).
    model, optimizer = nnx.merge(graphdef, state)
    loss, grads = nnx.value_and_grad(lambda m: cross_entropy(m(X, masks), Y))(model)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), loss


def _sequence_step(graphdef, state, X, Y, mask, counts):
    # One SGD step on whole sequences, pure (as _step)
    model, optimizer = nnx.merge(graphdef, state)
    loss, grads = nnx.value_and_grad(
        lambda m: sequence_cross_entropy(_sequence_logits(m, X, counts), Y, mask))(model)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), loss


def train_step(model, opt: Optimizer, X, Y, masks=None) -> float:
    """One optimizer step on a minibatch (X (B, block_size) int, Y (B,) int); returns the loss.

    `masks`: None, or this step's dropout masks (one per Tanh layer, each of its output's shape,
    shared.stream.DropoutStream.masks). Raises ValueError (token ids, target shape, a batch too
    small for BatchNorm, masks) before any state changes."""
    X = _tokens(model, X, train=True)
    Y = _targets(model, Y, len(X))
    new_state, loss = opt.train_step(opt.state, X, Y, _masks(model, masks, len(X)))
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
