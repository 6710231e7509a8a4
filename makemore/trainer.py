"""The training driver every backend runs through: same initial weights, same minibatches, same
learning-rate schedule, same checkpoints and metrics, whatever the framework.

Source: the training loop of makemore_part5_cnn1.ipynb (200,000 steps, batch 32, lr 0.1 then 0.01
from step 150,000; `split_loss` in eval mode; 20 samples).
"""
from __future__ import annotations

import json
import math
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from shared.checkpoint import CheckpointError, first_nonfinite, load_checkpoint, save_checkpoint
from shared.data import Dataset
from shared.params import init_params, num_params
from .registry import get_backend
from .runs import ADDED_SETTINGS
from shared.config import TrainConfig
from shared.ema import ParamEMA
from shared.spec import ModelSpec
from shared.stream import (BatchStream, DropoutStream, NameBatchStream, dropout_shapes, name_batch,
                           sampling_uniforms, seed_streams)


FAST_CHUNK = 100  # steps per fast_train_steps call; chunks start at multiples of it, resumed or not
DIVERGING = 2.0   # a loss averaged over 100 steps above this many times the first loss: warn


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; `step` is the 0-based step, `checkpoint` the last good one."""

    def __init__(self, step: int, loss: float, checkpoint: Path | None, what: str | None = None):
        self.step, self.loss, self.checkpoint = step, loss, checkpoint
        where = (f"the last good checkpoint is {checkpoint}" if checkpoint
                 else "no checkpoint was written (none was asked for or none was reached)")
        what = what or f"loss is {loss} at step {step}"
        super().__init__(f"{what}: training stopped; {where}. "
                         "Lower the learning rate (--lr) or check the data.")


class TrainingInterrupted(RuntimeError):
    """Training stopped on request (Ctrl-C, SIGTERM) between two steps; `step` steps were done,
    `checkpoint` (a resumable one at exactly that step when the run has an out_dir) or None."""

    def __init__(self, step: int, checkpoint: Path | None):
        self.step, self.checkpoint = step, checkpoint
        super().__init__(f"interrupted after step {step}")


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
    warnings: list[str] = field(default_factory=list)
    resumed_from: int | None = None  # the step a resumed run continued from
    live_train_loss: float | None = None   # with cfg.ema: the live weights' losses (train_loss,
    live_val_loss: float | None = None     # val_loss and params are then the average's)

    @property
    def steps_per_s(self) -> float:
        """Steps per second of the steps this process ran."""
        done = len(self.losses) - (self.resumed_from or 0)
        return done / self.seconds if self.seconds > 0 else float("nan")

    def metrics(self) -> dict:
        """The metrics.json dictionary (seconds and steps_per_s are this process's)."""
        return {"backend": self.backend, "preset": self.spec.name, "params": num_params(self.spec),
                "steps": len(self.losses), "batch_size": self.config.batch_size,
                "seed": self.config.seed, "dtype": self.spec.dtype,
                "bn_convention": self.spec.batchnorm.convention,
                "lr": self.config.lr, "lr_final": self.config.lr_final,
                "lr_decay_step": self.config.decay_step, "optimizer": self.config.optimizer,
                "schedule": self.config.schedule, "warmup": self.config.warmup,
                "weight_decay": self.config.weight_decay, "dropout": self.config.dropout,
                "ema": self.config.ema, "train_loss": self.train_loss, "val_loss": self.val_loss,
                "live_train_loss": self.live_train_loss, "live_val_loss": self.live_val_loss,
                "fast": self.fast, "seconds": self.seconds, "steps_per_s": self.steps_per_s,
                "resumed_from": self.resumed_from, "warnings": self.warnings,
                "loss": [float(x) for x in self.losses]}


def _run_meta(backend: str, cfg: TrainConfig, fast: bool) -> dict:
    # what a resumable checkpoint records beside its tensors (the batch stream's position is the step)
    return {"backend": backend, "fast": fast, "config": asdict(cfg)}


def load_resume_state(path: str | Path, backend: str, spec: ModelSpec, cfg: TrainConfig, fast: bool):
    """(params, optimizer state, losses so far, step) from a resumable checkpoint.

    Raises CheckpointError when the checkpoint holds no run state (a parameters-only one) or was
    written by another backend, path, spec or config than the run being resumed (the difference
    is named)."""
    params, md = load_checkpoint(path, spec)
    state = md["state"]
    if "losses" not in state:
        raise CheckpointError(f"{path} has no run state (a parameters-only checkpoint): it samples, "
                              "but cannot resume a run")
    want = _run_meta(backend, cfg, fast)
    if isinstance(md.get("config"), dict):   # a run from before a setting existed ran with its value
        md["config"] = {**ADDED_SETTINGS, **md["config"]}
    diff = [f"{k}: checkpoint {md.get(k)!r}, run {v!r}" for k, v in want.items() if md.get(k) != v]
    if md["spec"] != spec:
        diff.append("spec: the checkpoint's model differs from the run's")
    if diff:
        raise CheckpointError(f"{path} does not belong to this run: " + "; ".join(diff))
    step = int(md["step"])
    losses = np.asarray(state["losses"], dtype=np.float64)
    if len(losses) != step:
        raise CheckpointError(f"{path}: {len(losses)} losses for step {step}; the file is damaged")
    opt_state = {k[4:]: v for k, v in state.items() if k.startswith("opt.")}
    if cfg.ema:   # the checkpoint's parameters are the average; the live ones are run state
        live = {k[5:]: v for k, v in state.items() if k.startswith("live.")}
        if set(live) != set(params) or "ema_step" not in state:
            raise CheckpointError(f"{path}: an --ema run's checkpoint without its live parameters; the file "
                                  "is damaged")
        opt_state["ema"] = (params, int(state["ema_step"][0]))
        params = live
    return params, opt_state, losses, step


class StopFlag:
    """Set by the first Ctrl-C or SIGTERM during training (a `with` block installs the handlers,
    in the main thread only, and restores the old ones on exit); passed as train()'s
    should_stop, so the trainer stops between two steps and writes a checkpoint. A second
    signal interrupts at once (KeyboardInterrupt). Used by `makemore train` and by each sweep
    worker (whose running trial then stops the same way and is told failed, 'interrupted')."""

    def __init__(self):
        self.set = False
        self.old = {}

    def __call__(self) -> bool:
        return self.set

    def __enter__(self):
        self.old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.set:
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc):
        for sig, h in self.old.items():
            signal.signal(sig, h)


def check_run(backend: str, spec: ModelSpec, cfg: TrainConfig, fast: bool):
    """Refuse a run the backend cannot train, before anything is written; returns the backend
    module (registry.get_backend).

    Raises:
        ValueError: `fast` on a backend without fast_train_steps, or with a spec its fast path
            cannot train (the backend's fast_unsupported(spec) says why, e.g. the pre-fix
            BatchNorm on numpy's and torch's fused steps);
            dropout on a convolutional spec (its whole-name step has no masks yet).
        registry.BackendError: the backend is unknown or not installed.
    """
    B = get_backend(backend)
    if fast and not hasattr(B, "fast_train_steps"):
        raise ValueError(f"backend {backend!r} has no fast path (fast_train_steps); run without --fast")
    why = B.fast_unsupported(spec) if fast else None
    if why:
        raise ValueError(why)
    if spec.convolutional and cfg.dropout:
        raise ValueError(f"preset {spec.name!r} trains on whole names and does not support "
                         "--dropout yet; run without it")
    return B


def train(backend: str, spec: ModelSpec, cfg: TrainConfig, data: Dataset, *,
          out_dir: str | Path | None = None, checkpoint_every: int = 10_000, progress: bool = False,
          evaluate: bool = True, n_samples: int = 20, params: dict | None = None,
          step_callback=None, fast: bool = False, on_start=None, resume: bool = False,
          should_stop=None, on_warning=None) -> RunResult:
    """Train `spec` on `data` with `backend` for `cfg.steps` optimizer steps, with cfg's recipe
    (SGD or AdamW, step or warm-up + cosine schedule, dropout): with cfg.dropout > 0, step i's
    masks are shared.stream.DropoutStream(seed, ...).masks(i), handed to the backend's step.

    Arguments:
        params: initial canonical parameters; default `init_params(spec, seed stream 0)`.
        out_dir: if given, a resumable checkpoint `checkpoint.safetensors` is written there every
            `checkpoint_every` steps (at the first chunk end past each multiple), on a stop
            request, and at the end, atomically.
        resume: continue from out_dir's checkpoint (load_resume_state): its parameters, optimizer
            state, losses so far and batch-stream position; the result is bitwise the
            uninterrupted run's. Without a checkpoint there, the run starts at step 0.
        step_callback: optional callable(step, loss) after every step (after every chunk of
            FAST_CHUNK steps with `fast`).
        on_start: optional callable(model, opt) once the model and optimizer exist, before the
            first step (lets `makemore diagnose` look at the parameters as training goes).
        fast: use the backend's fastest honest path, `fast_train_steps(model, opt, Xs, Ys,
            masks=...)` on chunks of FAST_CHUNK steps (same batches, same schedule, same
            dropout masks, same losses).
        should_stop: optional callable() -> bool, asked between steps/chunks; True stops the run
            with a checkpoint at that step (TrainingInterrupted).
        on_warning: optional callable(message) for warnings while training (default: none are
            printed; they are kept in RunResult.warnings and metrics.json either way).

    A convolutional spec (wavenet-conv) trains on whole names instead, every position at once
    (issue 14): each step is `sequence_train_step` on cfg.batch_size names of the training split
    from shared.stream.NameBatchStream (masked past each name's end), and its loss is the mean
    over the batch's real targets (about 7 per name). SGD or AdamW, either schedule, and resume
    work as for the other presets; no dropout yet (ValueError). `fast` runs the same whole-name
    step (sequence_train_step is already each backend's fast path for it: one jitted call in
    JAX, torch's conv1d and fused BatchNorm kernels, numpy's GEMMs): there is no separate fused
    conv step, and the losses are those of the run without --fast, bitwise.
    Returns:
        RunResult (losses (steps,) float64, wall seconds of this process's step loop, final eval
        losses, samples, warnings).
    Raises:
        TrainingDiverged: NaN/inf loss or parameter; the last good checkpoint is kept.
        TrainingInterrupted: should_stop() said so; a checkpoint at that step is written.
        ValueError: spec and data disagree (block_size or vocab_size), a batch too small.
        CheckpointError: `resume` with a checkpoint of another run.
    """
    if spec.block_size != data.block_size or spec.vocab_size != data.vocab.vocab_size:
        raise ValueError(f"spec (block_size {spec.block_size}, vocab_size {spec.vocab_size}) does "
                         f"not fit the data (block_size {data.block_size}, vocab_size "
                         f"{data.vocab.vocab_size})")
    try:
        spec.check_train_batch(cfg.batch_size)
    except ValueError as e:
        raise ValueError(f"{e}: --batch-size 2 or more on the command line") from None
    B = check_run(backend, spec, cfg, fast)
    ckpt = Path(out_dir) / "checkpoint.safetensors" if out_dir is not None else None
    losses = np.empty(cfg.steps, dtype=np.float64)
    start, opt_state = 0, None
    if resume and ckpt is not None and ckpt.exists():
        params, opt_state, done, start = load_resume_state(ckpt, backend, spec, cfg, fast)
        losses[:start] = done
    elif params is None:
        params = init_params(spec, seed_streams(cfg.seed)[0])
    model = B.build_model(spec)
    B.load_params(model, params)
    opt = B.Optimizer(model, cfg)
    ema = None
    if cfg.ema:   # the average starts at the initial parameters, or goes on from the checkpoint's
        avg, at = opt_state.pop("ema") if opt_state is not None else (B.export_params(model), 0)
        ema = ParamEMA(cfg.ema, avg, at)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    if on_start is not None:
        on_start(model, opt)
    Xtr, Ytr = data.train
    meta = _run_meta(backend, cfg, fast)
    last_good = ckpt if start else None
    warnings: list[str] = []

    def run_state(step: int, live: dict) -> dict:
        # the checkpoint's run state after `step` steps: losses, optimizer state and, with an EMA
        # (whose average is then the checkpoint's parameters), the live weights and its fold step
        state = {"losses": losses[:step], **{f"opt.{k}": v for k, v in opt.state_dict().items()}}
        if ema is not None:
            state.update({f"live.{k}": v for k, v in live.items()}, **ema.state_dict())
        return state

    def save(step: int) -> Path:
        snapshot = B.export_params(model)
        if first_nonfinite(snapshot):  # the update after a finite loss can still overflow
            raise TrainingDiverged(step, float("nan"), last_good,
                                   f"parameter {first_nonfinite(snapshot)!r} is not finite after step {step - 1}")
        return save_checkpoint(ckpt, snapshot if ema is None else ema.avg, spec, data.vocab,
                               state=run_state(step, snapshot), step=step, **meta)

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, initial=start, desc=f"{backend} {spec.name}", unit="step",
                   mininterval=0.5, smoothing=0.05)
    chunk = FAST_CHUNK if fast and not spec.convolutional else 1   # a conv step: one whole-name batch
    rows = iter(BatchStream(cfg.seed, len(Xtr), cfg.batch_size, start=start))  # drawn as needed
    drops = (DropoutStream(cfg.seed, cfg.dropout, dropout_shapes(spec, cfg.batch_size), spec.dtype)
             if cfg.dropout else None)   # step i's masks, for every backend the same
    names = None
    if spec.convolutional:  # whole names, every position at once (issue 14)
        stream = NameBatchStream(cfg.seed, [data.vocab.encode(w) for w in data.words[0]],
                                 cfg.batch_size, spec.block_size)
        batches = stream.indices()
        for _ in range(start):   # a resumed run continues the stream where it stopped
            next(batches)
        names = (name_batch([stream.names[j] for j in ix], spec.block_size) for ix in batches)

    def fast_chunks():
        # the fast path's inputs, chunk by chunk in step order: (first step, k, Xs, Ys, masks)
        j = start
        while j < cfg.steps:
            k = min(chunk - j % chunk, cfg.steps - j)  # chunk boundaries do not move on a resume
            ix = np.stack([next(rows) for _ in range(k)])
            masks = {"masks": drops.take(j, k)} if drops else {}   # no dropout: the lecture's call
            yield j, k, Xtr[ix], Ytr[ix], masks
            j += k

    # The fast path's next chunk (its batches' rows and dropout masks, drawn in order from the
    # same streams) is made by one helper thread while the backend trains on the current one:
    # the compiled step releases the GIL, and making a chunk was ~25% of a jax --fast batch-32
    # step here. The values, and so the run, are the same as made in line (tested bitwise).
    prefetch = ThreadPoolExecutor(1, thread_name_prefix="makemore-batches") if fast and names is None else None
    gen = fast_chunks()
    t0 = time.perf_counter()
    i = start
    try:
        pending = prefetch.submit(next, gen, None) if prefetch else None
        while i < cfg.steps:
            if should_stop is not None and should_stop():
                raise TrainingInterrupted(i, save(i) if ckpt is not None else None)
            k = min(chunk - i % chunk, cfg.steps - i)  # chunk boundaries do not move on a resume
            if names is not None:
                got = np.array([B.sequence_train_step(model, opt, *next(names))], dtype=np.float64)
            elif fast:
                j, k, Xs, Ys, masks = pending.result()
                assert j == i, (j, i)
                pending = prefetch.submit(next, gen, None) if i + k < cfg.steps else None
                got = np.asarray(B.fast_train_steps(model, opt, Xs, Ys, **masks), dtype=np.float64)
            else:
                ix = np.stack([next(rows) for _ in range(k)])
                masks = {"masks": drops.masks(i)} if drops else {}
                got = np.array([B.train_step(model, opt, Xtr[ix[0]], Ytr[ix[0]], **masks)], dtype=np.float64)
            bad = np.flatnonzero(~np.isfinite(got))
            if bad.size:
                raise TrainingDiverged(i + int(bad[0]), float(got[bad[0]]), last_good)
            losses[i:i + k] = got
            if ema is not None and (ema.due(i + k) or i + k == cfg.steps):
                ema.update(B.export_params(model), i + k)
            if step_callback is not None:
                step_callback(i + k - 1, float(got[-1]))
            prev, i = i, i + k
            if i // 100 != prev // 100 or i == cfg.steps:
                recent = losses[max(0, i - 100):i].mean()
                if not warnings and i >= 100 and recent > DIVERGING * losses[0]:
                    warnings.append(f"warning: the loss averaged {recent:.4g} over steps {i - 100}-{i - 1}, "
                                    f"{recent / losses[0]:.0f}x its start ({losses[0]:.4g}): the run is "
                                    "diverging; lower --lr")
                    if on_warning is not None:
                        on_warning(warnings[-1])
                if bar is not None:
                    bar.set_postfix(loss=f"{recent:.4f}", refresh=False)
                    bar.update(i - bar.n)  # after the postfix: the line it draws shows the current loss
            if (ckpt is not None and checkpoint_every and i // checkpoint_every != prev // checkpoint_every
                    and i < cfg.steps):
                last_good = save(i)
    finally:
        if prefetch is not None:
            prefetch.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    res = RunResult(backend, spec, cfg, losses, seconds, model=model, fast=fast, warnings=warnings,
                    resumed_from=start or None)
    res.params = B.export_params(model)
    if first_nonfinite(res.params):
        raise TrainingDiverged(cfg.steps, float("nan"), last_good,
                               f"parameter {first_nonfinite(res.params)!r} is not finite after the last step")
    live = None
    if ema is not None:   # evaluate, sample and save the average; keep the live weights' losses too
        live = res.params
        if evaluate:
            res.live_train_loss = float(B.evaluate(model, *data.train))
            res.live_val_loss = float(B.evaluate(model, *data.val))
        B.load_params(model, ema.avg)
        res.params = B.export_params(model)
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
        save_checkpoint(ckpt, res.params, spec, data.vocab, state=run_state(cfg.steps, live), step=cfg.steps,
                        **meta, train_loss=res.train_loss, val_loss=res.val_loss)
    return res


def write_run(res: RunResult, out_dir: str | Path) -> dict[str, Path]:
    """Write metrics.json, loss.png and samples.txt for a finished run, each atomically (a kill
    leaves the old file or the new one, never half of one); returns their paths."""
    import os
    from .report import plot_loss
    from .runs import write_atomic
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out / "metrics.json", "plot": out / "loss.png", "samples": out / "samples.txt"}
    write_atomic(paths["metrics"], json.dumps(res.metrics(), indent=1))
    tmp = out / f".loss.{os.getpid()}.tmp.png"
    plot_loss({res.backend: res.losses}, tmp, title=f"{res.spec.name} ({res.backend})")
    os.replace(tmp, paths["plot"])
    write_atomic(paths["samples"], "\n".join(res.samples) + "\n")
    return paths
