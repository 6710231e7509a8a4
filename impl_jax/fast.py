"""The fastest honest JAX path: k steps of train.py's pure step inside one jitted jax.lax.scan.

Bitwise the same losses as k train_step calls (tested), same batches, same schedule.
Source: JAX docs, "jax.lax.scan"; Flax guide "Performance considerations".
"""
from __future__ import annotations

import weakref
from functools import partial

import jax
import numpy as np

from shared.checks import check_step_batches
from shared.spec import ModelSpec

from .model import _masks
from .train import Optimizer, _step

def _train_steps(graphdef, state, Xs, Ys, masks):
    # k steps of train.py's pure step, fused by lax.scan: no Python between steps; the dropout
    # masks (or None) are scanned like the batches
    return jax.lax.scan(lambda s, xym: _step(graphdef, s, *xym), state, (Xs, Ys, masks))


# One compiled scan per optimizer (it closes over the optimizer's graphdef): a new run builds its own.
_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _fast_step_for(model, opt: Optimizer):
    # jax: one jitted scan per optimizer; each new k (steps per call) compiles once
    if opt not in _CACHE:
        _CACHE[opt] = jax.jit(partial(_train_steps, opt.graphdef))
    return _CACHE[opt]


def fast_unsupported(spec: ModelSpec) -> str | None:
    """Why the fast path cannot train `spec` (a one-line message naming the option and the way
    out), or None when it can. The trainer asks before it writes a run folder
    (makemore.trainer.check_run)."""
    # jax: the scan runs train.py's own step, so every spec train_step takes is taken here
    return None


def fast_train_steps(model, opt: Optimizer, Xs, Ys, masks=None) -> np.ndarray:
    """k optimizer steps fused into one jitted jax.lax.scan (no Python between steps): every
    recipe of train.py's step (SGD or AdamW, either schedule, dropout), as it is that step.

    Arguments: Xs (k, B, block_size) int, Ys (k, B) int; masks: None, or the k steps' dropout
    masks, one (k, *Tanh output shape) array per Tanh layer (shared.stream.DropoutStream.take).
    Returns the k losses, float64 (k,); the same as k calls of :func:`train_step`. Each new k
    compiles once.
    Raises ValueError from shared.checks.check_step_batches or check_masks; the model is then
    unchanged.
    """
    Xs, Ys = check_step_batches(model.spec, Xs, Ys)
    masks = _masks(model, masks, Xs.shape[1], len(Xs))
    # int32 whether or not x64 is on: one jit signature (as _tokens/_targets)
    Xs, Ys = np.ascontiguousarray(Xs, dtype=np.int32), np.ascontiguousarray(Ys, dtype=np.int32)
    new_state, losses = _fast_step_for(model, opt)(opt.state, Xs, Ys, masks)
    opt.write_back(new_state)
    return np.asarray(losses, dtype=np.float64)
