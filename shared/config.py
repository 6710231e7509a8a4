"""Training configuration and learning-rate schedules, framework-free: every backend's Optimizer
is built from a TrainConfig and follows the same schedule.

Sources: the training loop of makemore_part5_cnn1.ipynb (200,000 steps, batch 32, SGD, lr 0.1
then 0.01 from step 150,000: the defaults); AdamW: Loshchilov & Hutter 2019, "Decoupled Weight
Decay Regularization" (torch.optim.AdamW, optax.adamw); warm-up + cosine: optax
`warmup_cosine_decay_schedule` (Loshchilov & Hutter 2017, SGDR), whose formula `lr_at` follows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine")
ADAM_BETAS = (0.9, 0.999)   # torch.optim.AdamW's and optax.adamw's defaults
ADAM_EPS = 1e-8


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (a recipe). The defaults are the lecture's.

    Attributes:
        steps: optimizer steps; batch_size: examples per step.
        lr: the learning rate ("step": before lr_decay_step; "cosine": the peak after warm-up).
        lr_final: "step": the rate from lr_decay_step on; "cosine": the rate at the last step.
        lr_decay_step: "step" only; None means 3/4 of `steps` (150,000 of 200,000).
        seed: weights, batches, dropout masks and samples all derive from it (shared.stream).
        optimizer: "sgd" (the lecture's `p.data += -lr * p.grad`) or "adamw".
        schedule: "step" (the lecture's) or "cosine" (linear warm-up from 0, then cosine decay).
        warmup: warm-up steps of the cosine schedule (0: none).
        weight_decay: AdamW's decoupled weight decay, applied to the weight matrices and the
            embedding only (not to biases, BatchNorm gamma/beta); must be 0 with SGD.
        dropout: inverted-dropout probability after each Tanh (or gate) in train mode (0: none).
        ema: per-step decay of an exponential moving average of the parameters and running
            stats (shared.ema.ParamEMA, folded every 100 steps); the run's evaluation, samples
            and checkpoint parameters are the average's (0: none, the live weights).
    Raises:
        ValueError naming the field and the accepted values.
    """
    steps: int = 200_000
    batch_size: int = 32
    lr: float = 0.1
    lr_final: float = 0.01
    lr_decay_step: int | None = None
    seed: int = 42
    optimizer: str = "sgd"
    schedule: str = "step"
    warmup: int = 0
    weight_decay: float = 0.0
    dropout: float = 0.0
    ema: float = 0.0

    def __post_init__(self):
        if self.steps < 0 or self.batch_size < 1:
            raise ValueError(f"need steps >= 0 and batch_size >= 1, got {self.steps}, {self.batch_size}")
        for name in ("lr", "lr_final", "weight_decay"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.warmup and self.schedule != "cosine":
            raise ValueError(f"warmup {self.warmup} needs schedule 'cosine' (the step schedule has no "
                             "warm-up); add --schedule cosine or drop --warmup")
        if not 0 <= self.warmup <= max(self.steps, 0):
            raise ValueError(f"warmup must be 0..steps ({self.steps}), got {self.warmup}; give a "
                             "shorter --warmup or more --steps")
        if self.weight_decay and self.optimizer != "adamw":
            raise ValueError(f"weight_decay {self.weight_decay} needs optimizer 'adamw' (SGD here has none)")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1) (a per-step decay such as 0.9999; 0: none), got {self.ema}")
        if self.lr_decay_step is not None and self.schedule != "step":
            raise ValueError("lr_decay_step belongs to schedule 'step'; the cosine schedule decays "
                             "from lr to lr_final over all the steps")

    @property
    def decay_step(self) -> int:
        """First step (0-based) that uses `lr_final` (schedule "step")."""
        return self.lr_decay_step if self.lr_decay_step is not None else (3 * self.steps) // 4


# The recipe a preset carries (issue 13): the TrainConfig fields its runs default to where they
# differ from the lecture's. `makemore train --preset wavenet-tuned --fast` trains it; any flag
# given overrides its field. It is trial 3 of `makemore sweep studies/beat-1.950-200k.toml`, its
# sampled values as they are (README, "Beating the lecture's loss"; bench/results-beat/): AdamW
# with very little weight decay, warm-up 0.5% then cosine to 1e-5, dropout ~0.1, 200,000 steps
# of 256. (The first recipe, trial 3 of beat-1.950-long: 100,000 steps, lr 3.27e-3, weight decay
# 0.0059, dropout 0.068, warm-up 1,000; bench/results-beat/seeds/.)
PRESET_RECIPES: dict[str, dict] = {
    "wavenet-tuned": {"steps": 200_000, "batch_size": 256, "optimizer": "adamw", "lr": 0.002697544031865101,
                      "lr_final": 1e-5, "schedule": "cosine", "warmup": 1000,
                      "weight_decay": 0.0005719979375401332, "dropout": 0.09665423532504692},
    # gated units overfit on wavenet-tuned's 200k steps with its dropout: more dropout (trial 3 of
    # `makemore sweep studies/beat-1.950-gated.toml`, its sampled values as they are), run for
    # 150,000 steps (beat-1.950-gated-150k; issue 13)
    "wavenet-gated": {"steps": 150_000, "batch_size": 256, "optimizer": "adamw", "lr": 0.0031722035135502355,
                      "lr_final": 1e-5, "schedule": "cosine", "warmup": 500,
                      "weight_decay": 0.00057, "dropout": 0.16794495188258},
}


def preset_recipe(preset: str, steps: int | None = None) -> dict:
    """The TrainConfig fields (a dict of TrainConfig keyword arguments) that preset `preset`'s
    runs default to; {} for a preset that trains with the lecture's recipe.

    `steps`: a run length given instead of the recipe's (e.g. `compare --steps 300`); the warm-up
    then keeps its share of the run, round(warmup * steps / recipe steps), so a short run of a
    recipe keeps the recipe's shape (and a valid TrainConfig).
    """
    r = dict(PRESET_RECIPES.get(preset, {}))
    if steps is not None and r:
        if "warmup" in r:
            r["warmup"] = int(round(r["warmup"] * steps / r["steps"]))
        r["steps"] = steps
    return r


def lr_at(cfg: TrainConfig, step: int) -> float:
    """The learning rate of 0-based step `step`.

    "step" (the lecture's): `lr` before `cfg.decay_step`, `lr_final` from it on (exactly: not
    lr times a factor). "cosine": as optax.warmup_cosine_decay_schedule(0, lr, warmup, steps,
    lr_final): linear from 0 to lr over `warmup` steps, then
    lr_final + (lr - lr_final) * (1 + cos(pi * min(step - warmup, T) / T)) / 2, T = steps - warmup.
    """
    if cfg.schedule == "step":
        return cfg.lr if step < cfg.decay_step else cfg.lr_final
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * step / cfg.warmup
    T = max(cfg.steps - cfg.warmup, 1)
    frac = min(step - cfg.warmup, T) / T
    return cfg.lr_final + (cfg.lr - cfg.lr_final) * 0.5 * (1 + math.cos(math.pi * frac))
