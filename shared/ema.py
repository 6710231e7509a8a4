"""An exponential moving average of a run's canonical parameters and BatchNorm running stats
(Polyak & Juditsky 1992, "Acceleration of Stochastic Approximation by Averaging"; the EMA form of
torch.optim.swa_utils.get_ema_multi_avg_fn and optax.incremental_update): issue 13's weight
averaging, the same for every backend and path because it works on canonical numpy arrays.

The average is taken every `EMA_EVERY` steps (the fast path's chunk boundaries, so the plain and
fast paths fold in the same parameters), with the per-step decay raised to the number of steps
since the last fold: avg <- a * avg + (1 - a) * params, a = decay ** k. With decay 0.9999 the
average spans about 10,000 steps, 100 folds, so folding every 100 steps instead of every step
changes the weights by far less than the run-to-run noise.
"""
from __future__ import annotations

import numpy as np

EMA_EVERY = 100   # steps between two folds: a multiple of makemore.trainer.FAST_CHUNK (tested)


class ParamEMA:
    """The running average of canonical arrays {name: (shape) float32/float64 ndarray}.

    Arguments:
        decay: per-step decay in (0, 1); params: the starting arrays (copied; the average begins
            at the run's initial parameters); step: the step they belong to (0 for a new run).
    Attributes:
        avg: {name: ndarray}, each in its parameter's dtype; step: the step of the last fold.
    Raises:
        ValueError: decay outside (0, 1).
    """

    def __init__(self, decay: float, params: dict[str, np.ndarray], step: int = 0):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay, self.step = decay, int(step)
        self.avg = {k: np.array(v, copy=True) for k, v in params.items()}

    def due(self, step: int) -> bool:
        """True when `step` (steps done) is a fold: a multiple of EMA_EVERY."""
        return step % EMA_EVERY == 0 and step > self.step

    def update(self, params: dict[str, np.ndarray], step: int) -> None:
        """Fold in `params`, the parameters after `step` steps: a = decay ** (step - self.step).
        Raises ValueError for a step not after the last fold or a missing name."""
        k = step - self.step
        if k <= 0:
            raise ValueError(f"EMA fold at step {step}: the last one was at step {self.step}")
        for name, a in self.avg.items():
            w = a.dtype.type(self.decay ** k)
            a *= w
            a += (a.dtype.type(1) - w) * params[name]
        self.step = step

    def state_dict(self) -> dict[str, np.ndarray]:
        """The checkpoint's run state of the average beside the live parameters: {"ema_step": (1,)
        int64}. (The averaged arrays themselves are the checkpoint's parameters.)"""
        return {"ema_step": np.array([self.step], dtype=np.int64)}
