"""`makemore compare`: the same training run on several backends, side by side.

Every backend starts from the same canonical initial parameters and sees the same minibatch
indices and learning-rate schedule (makemore.trainer.train), so the loss curves must agree to
float tolerance (docs/design.md "Determinism contract"). Prints one table, writes `compare.json` and
`compare.png` (the loss curves overlaid, and |difference| per step on a log axis).
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from shared.params import init_params
from .registry import BackendError, available_backends, get_backend
from .report import chunk_size, markdown_table, smoothed_log10
from shared.stream import seed_streams


def parse_backends(text: str | None) -> list[str]:
    """'numpy,torch' -> ['numpy', 'torch'] (each checked: importable); None -> every installed one.

    Raises:
        BackendError: an unknown or uninstalled backend (the message says what to install),
            or no backend at all.
    """
    names = available_backends() if text is None else [b.strip() for b in text.split(",") if b.strip()]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise BackendError(f"--backends names {', '.join(repeated)} twice: give each backend once")
    if not names:
        raise BackendError("no backend to compare: pass --backends numpy,torch,jax")
    for n in names:
        get_backend(n)
    if len(names) < 2:
        only = "is installed" if text is None else "was given"
        raise BackendError(f"only {names[0]} {only}: there is nothing to compare it with; "
                           "pass two or more, e.g. --backends numpy,torch")
    return names


def table_steps(steps: int) -> list[int]:
    """0-based steps shown in the table: 0, 9, 99, 999, ... (the 1st, 10th, 100th ... step), the
    middle and the last step."""
    if steps <= 0:
        return []
    out = {0, steps // 2, steps - 1}
    k = 10
    while k <= steps:
        out.add(k - 1)
        k *= 10
    return sorted(out)


def max_pair_diff(curves: dict[str, np.ndarray]) -> float:
    """max |a - b| over every pair of backends and every element (0.0 for a single backend)."""
    diffs = [float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)), initial=0.0))
             for a, b in itertools.combinations(curves.values(), 2)]
    return max(diffs, default=0.0)


def max_param_diff(params: dict[str, dict[str, np.ndarray]]) -> tuple[float, str]:
    """(max |difference|, tensor name) over every pair of backends and every canonical tensor
    (running stats included)."""
    best, where = 0.0, ""
    for a, b in itertools.combinations(params.values(), 2):
        for k in a:
            d = float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)), initial=0.0))
            if d > best or not where:
                best, where = d, k
    return best, where


def plot_compare(losses: dict[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """compare.png: top, the smoothed log10 loss of every backend overlaid (the lecture's plot);
    bottom, the largest |loss_a - loss_b| in each chunk of steps for every pair, on a log axis
    (exact zeros are drawn at 1e-17, below float64 resolution, so bitwise agreement stays visible)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for (name, l), style in zip(losses.items(), itertools.cycle(["-", "--", ":"])):
        if len(l):   # identical curves overlap: the line styles keep each one visible
            x, y = smoothed_log10(l)
            ax1.plot(x, y, style, label=name, alpha=0.8)
    ax1.set_ylabel("log10 loss (chunk mean)")
    ax1.set_title(title)
    ax1.legend()
    n = len(next(iter(losses.values())))
    chunk = chunk_size(n)
    for (a, la), (b, lb) in itertools.combinations(losses.items(), 2):
        d = np.abs(np.asarray(la, np.float64) - np.asarray(lb, np.float64))
        m = len(d) // chunk  # the largest difference in each chunk: readable, and no spike is hidden
        if m:
            dmax = d[:m * chunk].reshape(m, chunk).max(axis=1)
            ax2.plot((np.arange(m) + 1) * chunk, np.maximum(dmax, 1e-17), ".-", label=f"|{a} - {b}|", lw=0.8)
    ax2.set_yscale("log")
    ax2.axhline(1e-17, color="0.5", ls=":", lw=1)
    ax2.text(0.01, 1e-17, "points on this line: bitwise equal (difference exactly 0, drawn at 1e-17)",
             transform=ax2.get_yaxis_transform(), va="bottom", fontsize=8, color="0.3")
    ax2.set_xlabel("step")
    ax2.set_ylabel(f"max |loss difference| per {chunk} steps")
    if len(losses) > 1:
        ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def compare(backends: list[str], spec, cfg, data, out_dir, progress: bool = False) -> dict:
    """`makemore compare`: train the same run (same initial weights, batches and schedule) on
    every backend in `backends`, print the side-by-side table, and write compare.json and
    compare.png into `out_dir`.

    Arguments: spec a shared.spec.ModelSpec, cfg a shared.config.TrainConfig, data a
    shared.data.Dataset fitting the spec; progress: a progress bar per backend over its steps.
    Returns the compare.json dictionary.
    Raises BackendError / ValueError for bad input (the CLI prints them as one line).
    """
    from .trainer import train
    params0 = init_params(spec, seed_streams(cfg.seed)[0])   # the very same arrays for everyone
    print(f"compare {spec.name} ({spec.dtype}, BatchNorm {spec.batchnorm.convention}): "
          f"{cfg.steps} steps of batch {cfg.batch_size} on {', '.join(backends)}")
    runs = {}
    for b in backends:
        res = train(b, spec, cfg, data, params={k: v.copy() for k, v in params0.items()}, progress=progress,
                    evaluate=False, n_samples=5)
        res.val_loss = float(get_backend(b).evaluate(res.model, *data.val))
        runs[b] = res
        print(f"  {b}: {res.seconds:.1f} s, {res.steps_per_s:.1f} steps/s, val loss {res.val_loss:.6f}")

    losses = {b: r.losses for b, r in runs.items()}
    loss_diff = max_pair_diff(losses)
    param_diff, param_where = max_param_diff({b: r.params for b, r in runs.items()})
    val_diff = max_pair_diff({b: np.array([r.val_loss]) for b, r in runs.items()})
    same_samples = len({tuple(r.samples) for r in runs.values()}) == 1

    rows = [[f"loss at step {i}"] + [float(losses[b][i]) for b in backends]
            + [f"{max_pair_diff({b: losses[b][i:i + 1] for b in backends}):.3g}"] for i in table_steps(cfg.steps)]
    rows.append(["final val loss"] + [r.val_loss for r in runs.values()] + [f"{val_diff:.3g}"])
    rows.append(["steps/s"] + [round(r.steps_per_s, 1) for r in runs.values()] + [""])
    print()
    print(markdown_table(["", *backends, "max abs diff"], rows))
    print()
    print(f"max |loss difference| over all {cfg.steps} steps and pairs: {loss_diff:.3g}")
    print(f"max |parameter difference| after training: {param_diff:.3g} ({param_where or 'n/a'})")
    print(f"samples {'agree' if same_samples else 'DIFFER'}: "
          + "; ".join(f"{b}: {' '.join(r.samples)}" for b, r in runs.items()))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"backends": backends, "preset": spec.name, "dtype": spec.dtype,
              "bn_convention": spec.batchnorm.convention, "steps": cfg.steps,
              "batch_size": cfg.batch_size, "seed": cfg.seed,
              "loss": {b: [float(x) for x in l] for b, l in losses.items()},
              "val_loss": {b: r.val_loss for b, r in runs.items()},
              "steps_per_s": {b: r.steps_per_s for b, r in runs.items()},
              "seconds": {b: r.seconds for b, r in runs.items()},
              "samples": {b: r.samples for b, r in runs.items()},
              "max_abs_loss_diff": loss_diff, "max_abs_val_loss_diff": val_diff,
              "max_abs_param_diff": param_diff, "max_abs_param_diff_tensor": param_where}
    tmp = out / "compare.json.tmp"
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out / "compare.json")
    plot_compare(losses, out / "compare.png",
                 title=f"{spec.name}, {spec.dtype}: {', '.join(backends)} (max |diff| {loss_diff:.2g})")
    print(f"wrote {out / 'compare.json'} and {out / 'compare.png'}")
    return report
