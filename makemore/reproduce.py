"""`makemore reproduce`: the five rows of the lecture's performance log (Part 5, "Building a
WaveNet", the end of makemore_part5_cnn1.ipynb), each trained with the lecture's recipe
(200,000 steps, batch 32, SGD, lr 0.1 then 0.01 from step 150,000) for K seeds, printed beside
the lecture's train / val losses (mean ± sd over the seeds when K > 1).

Each run is a run folder (makemore/runs.py) under runs/reproduce/ROW-seedS: a finished one is
reused, an interrupted one resumed, so running the command again continues the table.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import runs
from .study import LECTURE, config

SEED0 = 42       # the lecture's torch.manual_seed(42); further seeds count up from it
QUICK_STEPS = 300


@dataclass(frozen=True)
class Row:
    key: str              # run folder prefix
    label: str
    preset: str
    bn_per_position: bool
    train: float          # the lecture's losses
    val: float


ROWS = (
    Row("mlp", "original (block 3, emb 10, hidden 200)", "mlp", False, 2.058, 2.105),
    Row("mlp-8", "context 3 -> 8, flat", "mlp-8", False, 1.918, 2.027),
    Row("wavenet-22k-dim0", "hierarchical 22k, BatchNorm over dim 0 only", "wavenet-22k", True, 1.941, 2.029),
    Row("wavenet-22k", "hierarchical 22k, BatchNorm fixed", "wavenet-22k", False, 1.912, 2.022),
    Row("wavenet", "scaled up (emb 24, hidden 128)", "wavenet", False, 1.769, 1.993),
)


def settings_for(row: Row, seed: int, fast: bool, steps: int | None = None) -> dict:
    """The `makemore train` settings of one row: the lecture's recipe (with `steps`, the decay
    at 3/4 of them)."""
    s = {**LECTURE, "preset": row.preset, "seed": seed, "dtype": "float32", "bn": "lecture", "fast": fast,
         "bn_per_position": row.bn_per_position}
    if steps is not None:
        s["steps"] = steps
    return s


def fast_for(backend: str, row: Row, plain: bool = False) -> bool:
    """The fast path where the backend has one for the row (numpy's and torch's hand-fused steps
    refuse the pre-fix BatchNorm: that row trains on their plain path); never with `plain`."""
    return not plain and (backend == "jax" or not row.bn_per_position)


def run_row(backend: str, row: Row, seed: int, folder: Path, steps: int | None, progress: bool, stop,
            plain: bool = False, data=None) -> dict:
    """Train (or reuse, or resume) one row in `folder`; returns its metrics.json dictionary.

    Raises RunFolderError when the folder holds another run; TrainingInterrupted on a stop."""
    from shared.data import find_names_file, load_dataset
    from shared.spec import get_spec
    from .sweep import train_argv
    from .trainer import TrainingInterrupted, train, write_run
    settings = settings_for(row, seed, fast_for(backend, row, plain), steps)
    rec = runs.read_run(folder)
    if rec is not None and (rec.get("settings") != settings or rec.get("backend") != backend):
        raise runs.RunFolderError(f"{folder} holds {runs.describe(folder)} with other settings; move it "
                                  "aside or use another --out")
    if rec is not None and rec.get("status") == "finished" and (folder / "metrics.json").is_file():
        return json.loads((folder / "metrics.json").read_text())
    if rec is not None and rec.get("status") not in runs.RESUMABLE:
        raise runs.RunFolderError(f"{folder} holds {runs.describe(folder)}; move it aside or use another --out")
    resume = rec is not None
    if resume:
        runs.open_for_resume(folder)   # refuses a run another process is training now
    cfg = config(settings)
    data = data or load_dataset(get_spec(row.preset).block_size)
    spec = get_spec(row.preset, vocab_size=data.vocab.vocab_size, bn_per_position=row.bn_per_position)
    path = find_names_file()
    argv = train_argv(settings, backend, folder)
    runs.start(folder, {"command": runs.command_line(argv), "argv": argv, "backend": backend,
                        "preset": row.preset, "settings": settings, "config": asdict(cfg),
                        "spec": spec.to_json(), "data": {"path": str(Path(path).resolve()),
                                                         "sha256": runs.file_sha256(path)},
                        "checkpoint_every": 10_000, "resumed_with": None, "reproduce": row.key})
    try:
        res = train(backend, spec, cfg, data, out_dir=folder, checkpoint_every=10_000, progress=progress,
                    fast=settings["fast"], resume=resume, should_stop=stop)
    except TrainingInterrupted as e:
        runs.mark(folder, "interrupted", step=e.step)
        raise
    write_run(res, folder)
    runs.mark(folder, "finished", train_loss=res.train_loss, val_loss=res.val_loss, warnings=res.warnings)
    return res.metrics()


def _mean_sd(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.4f}"
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    return f"{m:.4f} ± {sd:.4f}"


def table(results: dict, backend: str, seeds: list[int], steps: int, plain: bool = False) -> str:
    """The performance log beside ours: {row key: [metrics of each seed]} -> text."""
    from shared.params import num_params
    from shared.spec import get_spec
    head = (f"the lecture's performance log (Part 5), trained on {backend} with its recipe: {steps:,} steps, "
            f"batch 32, lr 0.1 -> 0.01 at 3/4; seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))}")
    rows = [("row", "params", "lecture train", "lecture val", "train", "val", "path")]
    for r in ROWS:
        ms = results.get(r.key, [])
        p = num_params(get_spec(r.preset, bn_per_position=r.bn_per_position))
        rows.append((r.label, f"{p:,}", f"{r.train:.3f}", f"{r.val:.3f}",
                     _mean_sd([m["train_loss"] for m in ms]) if ms else "-",
                     _mean_sd([m["val_loss"] for m in ms]) if ms else "-",
                     ("--fast" if fast_for(backend, r, plain) else "plain") if ms else ""))
    w = [max(len(x[c]) for x in rows) for c in range(len(rows[0]))]
    lines = [head] + ["  ".join(x.ljust(n) for x, n in zip(row, w)).rstrip() for row in rows]
    return "\n".join(lines)


def select_rows(keys: str | None) -> tuple[Row, ...]:
    """The rows named in a comma-separated list of row keys (None: all). Raises ValueError."""
    if keys is None:
        return ROWS
    known = {r.key: r for r in ROWS}
    want = [k.strip() for k in keys.split(",") if k.strip()]
    bad = [k for k in want if k not in known]
    if bad or not want:
        raise ValueError(f"unknown row {bad[0] if bad else keys!r}; the rows are {', '.join(known)}")
    return tuple(r for r in ROWS if r.key in want)


def reproduce(backend: str, seeds: int, quick: bool, out: Path, progress: bool = True, stop=None,
              log=None, plain: bool = False, rows: tuple[Row, ...] = ROWS) -> tuple[str, dict]:
    """Train `rows` (default every row) for `seeds` seeds (reusing finished runs); returns
    (table text, {row key: [metrics]}) and writes reproduce.json and reproduce.md into `out`."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    steps = QUICK_STEPS if quick else LECTURE["steps"]
    seed_list = [SEED0 + k for k in range(seeds)]
    results: dict = {}
    datasets: dict = {}
    for r in rows:
        for s in seed_list:
            folder = out / f"{r.key}-seed{s}"
            t0 = time.perf_counter()
            from shared.data import load_dataset
            from shared.spec import get_spec
            block = get_spec(r.preset).block_size
            m = run_row(backend, r, s, folder, QUICK_STEPS if quick else None, progress, stop, plain,
                        datasets.get(block))
            if block not in datasets:
                datasets[block] = load_dataset(block)
            results.setdefault(r.key, []).append(m)
            log(f"{r.label}, seed {s}: train {m['train_loss']:.4f}  val {m['val_loss']:.4f}  "
                f"({time.perf_counter() - t0:.0f} s, {folder})")
    text = table(results, backend, seed_list, steps, plain)
    runs.write_atomic(out / "reproduce.md", text + "\n")
    runs.write_atomic(out / "reproduce.json", json.dumps(
        {"backend": backend, "seeds": seed_list, "steps": steps,
         "rows": {r.key: {"label": r.label, "lecture": {"train": r.train, "val": r.val},
                          "runs": [{k: m[k] for k in ("seed", "train_loss", "val_loss", "seconds", "fast")}
                                   for m in results.get(r.key, [])]} for r in ROWS}}, indent=1))
    return text, results
