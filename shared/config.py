"""Training configuration and learning-rate schedules, framework-free: every backend's Optimizer
is built from a TrainConfig and follows the same schedule.

Source: the training loop of makemore_part5_cnn1.ipynb (200,000 steps, batch 32, lr 0.1 then 0.01
from step 150,000).
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. lr_decay_step None means 3/4 of `steps` (150,000 of 200,000)."""
    steps: int = 200_000
    batch_size: int = 32
    lr: float = 0.1
    lr_final: float = 0.01
    lr_decay_step: int | None = None
    seed: int = 42

    def __post_init__(self):
        if self.steps < 0 or self.batch_size < 1:
            raise ValueError(f"need steps >= 0 and batch_size >= 1, got {self.steps}, {self.batch_size}")
        for name in ("lr", "lr_final"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")

    @property
    def decay_step(self) -> int:
        """First step (0-based) that uses `lr_final`."""
        return self.lr_decay_step if self.lr_decay_step is not None else (3 * self.steps) // 4


def lr_at(cfg: TrainConfig, step: int) -> float:
    """The lecture's step schedule: `lr` before `cfg.decay_step`, `lr_final` from it on."""
    return cfg.lr if step < cfg.decay_step else cfg.lr_final
