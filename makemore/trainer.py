"""The training driver every backend runs through: same initial weights, same minibatches, same
learning-rate schedule, same checkpoints and metrics, whatever the framework.

Source: the training loop of makemore_part5_cnn1.ipynb (200,000 steps, batch 32, lr 0.1 then 0.01
from step 150,000; `split_loss` in eval mode; 20 samples).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shared.checkpoint import first_nonfinite, save_checkpoint
from shared.data import Dataset
from shared.params import init_params, num_params
from .registry import get_backend
from shared.config import TrainConfig
from shared.spec import ModelSpec
from shared.stream import BatchStream, NameBatchStream, sampling_uniforms, seed_streams


FAST_CHUNK = 100  # steps per fast_train_steps call


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; `step` is the 0-based step, `checkpoint` the last good one."""

    def __init__(self, step: int, loss: float, checkpoint: Path | None, what: str | None = None):
        self.step, self.loss, self.checkpoint = step, loss, checkpoint
        where = (f"the last good checkpoint is {checkpoint}" if checkpoint
                 else "no checkpoint was written (none was asked for or none was reached)")
        what = what or f"loss is {loss} at step {step}"
        super().__init__(f"{what}: training stopped; {where}. "
                         "Lower the learning rate (--lr) or check the data.")


@dataclass
class RunResult:
    """What a training run produced. Times in seconds, speed in steps/s."""
    backend: str
    spec: ModelSpec
    config: TrainConfig
    losses: np.ndarray            # (steps,) float64 training loss of each minibatch
    seconds: float
    train_loss: float | None = None
    val_loss: float | None = None
    samples: list[str] = field(default_factory=list)
    fast: bool = False
    model: object = None
    params: dict | None = None    # final canonical parameters

    @property
    def steps_per_s(self) -> float:
        return len(self.losses) / self.seconds if self.seconds > 0 else float("nan")

    def metrics(self) -> dict:
        """The metrics.json dictionary."""
        return {"backend": self.backend, "preset": self.spec.name, "params": num_params(self.spec),
                "steps": len(self.losses), "batch_size": self.config.batch_size,
                "seed": self.config.seed, "dtype": self.spec.dtype,
                "bn_convention": self.spec.batchnorm.convention,
                "lr": self.config.lr, "lr_final": self.config.lr_final,
                "lr_decay_step": self.config.decay_step,
                "train_loss": self.train_loss, "val_loss": self.val_loss,
                "fast": self.fast, "seconds": self.seconds, "steps_per_s": self.steps_per_s,
                "loss": [float(x) for x in self.losses]}


def train(backend: str, spec: ModelSpec, cfg: TrainConfig, data: Dataset, *,
          out_dir: str | Path | None = None, checkpoint_every: int = 10_000, progress: bool = False,
          evaluate: bool = True, n_samples: int = 20, params: dict | None = None,
          step_callback=None, fast: bool = False, on_start=None) -> RunResult:
    """Train `spec` on `data` with `backend` for `cfg.steps` SGD steps.

    Arguments:
        params: initial canonical parameters; default `init_params(spec, seed stream 0)`.
        out_dir: if given, a checkpoint `checkpoint.safetensors` is written there every
            `checkpoint_every` steps and at the end (atomically).
        step_callback: optional callable(step, loss) after every step (after every chunk of
            FAST_CHUNK steps with `fast`).
        on_start: optional callable(model, opt) once the model and optimizer exist, before the
            first step (lets `makemore diagnose` look at the parameters as training goes).
        fast: use the backend's fastest honest path, `fast_train_steps(model, opt, Xs, Ys)` on
            chunks of FAST_CHUNK steps (same batches, same schedule, same losses).

    A convolutional spec (wavenet-conv) trains on whole names instead, every position at once
    (issue 14): each step is `sequence_train_step` on cfg.batch_size names of the training split
    from shared.stream.NameBatchStream (grouped by length, masked past each name's end), and its
    loss is the mean over the batch's real targets (about 7 per name). No fast path yet.
    Returns:
        RunResult (losses (steps,) float64, wall seconds of the step loop, final eval losses,
        samples).
    Raises:
        TrainingDiverged: NaN/inf loss; the last good checkpoint is kept.
        ValueError: spec and data disagree (block_size or vocab_size).
    """
    if spec.block_size != data.block_size or spec.vocab_size != data.vocab.vocab_size:
        raise ValueError(f"spec (block_size {spec.block_size}, vocab_size {spec.vocab_size}) does "
                         f"not fit the data (block_size {data.block_size}, vocab_size "
                         f"{data.vocab.vocab_size})")
    try:
        spec.check_train_batch(cfg.batch_size)
    except ValueError as e:
        raise ValueError(f"{e}: --batch-size 2 or more on the command line") from None
    B = get_backend(backend)
    init_rng, _, _ = seed_streams(cfg.seed)
    params = init_params(spec, init_rng) if params is None else params
    model = B.build_model(spec)
    B.load_params(model, params)
    opt = B.Optimizer(model, cfg)
    if on_start is not None:
        on_start(model, opt)
    Xtr, Ytr = data.train
    ckpt = Path(out_dir) / "checkpoint.safetensors" if out_dir is not None else None
    last_good = None
    losses = np.empty(cfg.steps, dtype=np.float64)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, desc=f"{backend} {spec.name}", unit="step", mininterval=0.5,
                   smoothing=0.05)
    stream = BatchStream(cfg.seed, len(Xtr), cfg.batch_size)
    chunk = FAST_CHUNK if fast else 1
    if fast and not hasattr(B, "fast_train_steps"):
        raise ValueError(f"backend {backend!r} has no fast path (fast_train_steps); run without --fast")
    names = None
    if spec.convolutional:  # whole names, every position at once (issue 14)
        if fast:
            raise ValueError(f"preset {spec.name!r} trains on whole names and has no fast path yet; "
                             "run without --fast")
        names = iter(NameBatchStream(cfg.seed, [data.vocab.encode(w) for w in data.words[0]],
                                     cfg.batch_size, spec.block_size))
    rows = iter(stream)  # drawn as needed: all steps up front would be 6.5 GB at batch 4096
    t0 = time.perf_counter()
    i = 0
    while i < cfg.steps:
        k = min(chunk, cfg.steps - i)
        if names is not None:
            got = np.array([B.sequence_train_step(model, opt, *next(names))], dtype=np.float64)
        elif fast:
            ix = np.stack([next(rows) for _ in range(k)])
            got = np.asarray(B.fast_train_steps(model, opt, Xtr[ix], Ytr[ix]), dtype=np.float64)
        else:
            ix = np.stack([next(rows) for _ in range(k)])
            got = np.array([B.train_step(model, opt, Xtr[ix[0]], Ytr[ix[0]])], dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(got))
        if bad.size:
            if bar:
                bar.close()
            raise TrainingDiverged(i + int(bad[0]), float(got[bad[0]]), last_good)
        losses[i:i + k] = got
        if step_callback is not None:
            step_callback(i + k - 1, float(got[-1]))
        prev, i = i, i + k
        if bar is not None and (i // 100 != prev // 100 or i == cfg.steps):
            bar.set_postfix(loss=f"{losses[max(0, i - 100):i].mean():.4f}", refresh=False)
            bar.update(i - bar.n)  # after the postfix: the line it draws shows the current loss
        if (ckpt is not None and checkpoint_every and i // checkpoint_every != prev // checkpoint_every
                and i < cfg.steps):
            snapshot = B.export_params(model)
            if first_nonfinite(snapshot):  # the update after a finite loss can still overflow
                raise TrainingDiverged(i, float("nan"), last_good,
                                       f"parameter {first_nonfinite(snapshot)!r} is not finite after step {i - 1}")
            last_good = save_checkpoint(ckpt, snapshot, spec, data.vocab, step=i, backend=backend)
    seconds = time.perf_counter() - t0
    if bar:
        bar.close()
    res = RunResult(backend, spec, cfg, losses, seconds, model=model, fast=fast)
    res.params = B.export_params(model)
    if first_nonfinite(res.params):
        raise TrainingDiverged(cfg.steps, float("nan"), last_good,
                               f"parameter {first_nonfinite(res.params)!r} is not finite after the last step")
    if evaluate:
        res.train_loss = float(B.evaluate(model, *data.train))
        res.val_loss = float(B.evaluate(model, *data.val))
        if not (math.isfinite(res.train_loss) and math.isfinite(res.val_loss)):
            raise TrainingDiverged(cfg.steps, res.val_loss, last_good,
                                   f"evaluation loss is {res.train_loss} (train) / {res.val_loss} (val)")
    if n_samples:
        toks = B.sample(model, sampling_uniforms(cfg.seed, n_samples))
        res.samples = [data.vocab.decode(t + [0]) for t in toks]
    if ckpt is not None:
        save_checkpoint(ckpt, res.params, spec, data.vocab, step=cfg.steps, backend=backend,
                        train_loss=res.train_loss, val_loss=res.val_loss,
                        batch_size=cfg.batch_size, seed=cfg.seed, fast=fast)
    return res


def write_run(res: RunResult, out_dir: str | Path) -> dict[str, Path]:
    """Write metrics.json, loss.png and samples.txt for a finished run; returns their paths."""
    from .report import plot_loss
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out / "metrics.json", "plot": out / "loss.png", "samples": out / "samples.txt"}
    tmp = paths["metrics"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res.metrics(), indent=1))
    tmp.replace(paths["metrics"])
    plot_loss({res.backend: res.losses}, paths["plot"], title=f"{res.spec.name} ({res.backend})")
    paths["samples"].write_text("\n".join(res.samples) + "\n")
    return paths
