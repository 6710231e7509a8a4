"""`makemore bench`: run the pytest-benchmark suites in bench/ and report every backend against the
machine's FLOP floor (issue 5).

Each group of benchmarks runs in its own `python -m pytest bench/...` subprocess, one after the
other, so that
  * thread settings can differ per group: batch 32 runs with one thread in every framework
    (MAKEMORE_THREADS, OMP/MKL/OpenBLAS variables, and XLA_FLAGS, which XLA reads only before jax
    is imported), the safe default on a busy 2-core machine, and the full run measures wavenet at
    batch 32 once more on every core; larger batches use every core;
  * the peak RSS of a process is the peak of one backend (`peak_rss_mb` per backend);
  * frameworks do not share a process (no framework-specific code runs in this one).
Every group gets the same glibc allocator tunables (MALLOC_TRIM_THRESHOLD_, MALLOC_MMAP_THRESHOLD_):
without them glibc gives memory back to the OS every step and takes it again, which halved the
throughput of every backend at batch 4096 in the prototype.

Outputs in --out (default runs/bench): raw/*.json (pytest-benchmark's own JSON, one per group),
bench.json (one row per measurement, below), bench.md (the Markdown tables, also printed) and
bench.png (steps/s per backend and path for every configuration, annotated with x floor).

A training-step row: kind 'train_step', backend, path ('plain' = train_step per step, 'fast' =
fast_train_steps, 'bare loop' = the lecture's own eager torch loop, bench/torch_bare_loop.py),
preset, batch_size, dtype, threads, steps_per_s, ms_per_step (the fastest round / steps per
call), ms_per_step_median, flops_per_step, floor_ms, floor_ratio (ms_per_step over floor_ms),
vs_bare_loop (the bare loop's ms_per_step in the same configuration and threads over this row's;
also on 'step_gemms' rows), vs_torch_eager (the same with torch plain as the base), matmul_gflops
(the best float32 2048x2048 matmul rate measured in this run), first_call_s (first call:
compilation for torch.compile and JAX), peak_rss_mb (of the backend), cores (CPU seconds per wall
second of the measured rounds: the cores the row really used).

A 'step_gemms' row (bench/test_step_gemms.py) has the same fields, path 'gemms': the step's
matmuls alone in the backend's library.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from shared.flops import floor_ratio, floor_seconds
from .registry import available_backends
from shared.threads import ENV as THREADS_ENV
from shared.threads import available_cores
from .report import markdown_table

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "bench"

# glibc: keep freed memory in the heap (see module docstring); 32 MiB is glibc's largest mmap threshold
ALLOCATOR_ENV = {"MALLOC_TRIM_THRESHOLD_": str(1 << 30), "MALLOC_MMAP_THRESHOLD_": str(1 << 25)}
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                  "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}


class Group:
    """One pytest subprocess: `files` under bench/, pytest `options`, `threads` 1 or None (all)."""

    def __init__(self, name: str, files: list[str], options: list[str], threads: int | None):
        self.name, self.files, self.options, self.threads = name, files, options, threads

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ONE_THREAD_ENV}
        env.update(ALLOCATOR_ENV)
        if self.threads == 1:
            env.update(ONE_THREAD_ENV)
        env["MAKEMORE_BENCH_THREADS"] = str(self.threads or available_cores())
        env[THREADS_ENV] = env["MAKEMORE_BENCH_THREADS"]  # numpy and torch: shared.threads
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        return env


def plan(quick: bool, backends: list[str]) -> list[Group]:
    """The groups of a full run, or of --quick (wavenet, batch 32, float32, every backend and path)."""
    groups = [Group("matmul", ["test_matmul.py"], ["--mm-matmul-rounds", "2" if quick else "5"], None)]
    for b in backends:
        if quick:
            groups.append(Group(f"{b}-quick", ["test_train_step.py", "test_step_gemms.py"],
                                ["--mm-backends", b, "--mm-presets", "wavenet", "--mm-batches", "32",
                                 "--mm-float64", "", "--mm-seconds", "0.6", "--mm-min-rounds", "3"],
                                1))
        else:
            groups.append(Group(f"{b}-small", ["test_train_step.py", "test_step_gemms.py",
                                               "test_eval_sample.py::test_sample"],
                                ["--mm-backends", b, "--mm-batches", "32", "--mm-float64", "32"], 1))
            groups.append(Group(f"{b}-large", ["test_train_step.py", "test_eval_sample.py::test_evaluate"],
                                ["--mm-backends", b, "--mm-batches", "256,4096", "--mm-float64", ""], None))
            # issue 14: targets/s of the conv model on whole names against the hierarchical
            # model on contexts (plain paths, one thread)
            groups.append(Group(f"{b}-targets", ["test_sequence_step.py"],
                                ["--mm-backends", b, "--mm-batches", "32,256"], 1))
            # the lecture's configuration again on every core: faster on a quiet machine, the
            # default of one thread is the safe choice on a busy one (shared/threads.py)
            if available_cores() > 1:
                groups.append(Group(f"{b}-b32-all-cores", ["test_train_step.py"],
                                    ["--mm-backends", b, "--mm-presets", "wavenet", "--mm-batches", "32",
                                     "--mm-float64", ""], None))
    # the matmul rate once more at the end: the floor uses the best of both, so a rate measured
    # while something else held the cores (which would make every "x floor" look too good) is
    # outvoted by an undisturbed one
    groups.append(Group("matmul-end", ["test_matmul.py"], ["--mm-matmul-rounds", "1" if quick else "3"], None))
    return groups


def run_group(g: Group, raw_dir: Path, timeout: float | None = None) -> dict | None:
    """Run one group; returns its pytest-benchmark JSON (None, with a message, if it failed)."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    out = raw_dir / f"{g.name}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", *[str(BENCH_DIR / f) for f in g.files], "-q", "-p",
           "no:cacheprovider", f"--benchmark-json={out}", "--benchmark-columns=min,median,rounds", *g.options]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=g.env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    took = time.perf_counter() - t0
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
    print(f"  {g.name}: {took:.1f} s, {tail[0]}", file=sys.stderr)
    if proc.returncode != 0:
        print(proc.stdout[-3000:] + proc.stderr[-3000:], file=sys.stderr)
    if not out.is_file():
        return None
    return json.loads(out.read_text())


def _matmul_rates(raws: list[dict]) -> dict[str, float]:
    rates = {}
    for raw in raws:
        for b in raw.get("benchmarks", []):
            ei = b["extra_info"]
            if ei.get("kind") == "matmul":  # best of every measurement (start and end of the run)
                rates[ei["lib"]] = max(rates.get(ei["lib"], 0.0), ei["flops"] / b["stats"]["min"] / 1e9)
    return rates


def build_rows(raws: list[dict]) -> tuple[list[dict], dict[str, float]]:
    """Rows (see module docstring) from pytest-benchmark JSONs; also the matmul rates (GFLOP/s per
    library). Time per step uses each benchmark's fastest round (the least disturbed by other
    processes on a shared machine); the median is kept as ms_per_step_median.

    Raises ValueError when no matmul rate was measured (the floor would be unknown).
    """
    rates = _matmul_rates(raws)
    if not rates:
        raise ValueError("no matmul benchmark in the results: the FLOP floor needs bench/test_matmul.py")
    gflops = max(rates.values())
    rss = {}
    for raw in raws:
        for b in raw.get("benchmarks", []):
            name = b["extra_info"].get("backend")
            if name:
                rss[name] = max(rss.get(name, 0.0), raw.get("peak_rss_mb", 0.0))
    rows = []
    for raw in raws:
        for b in raw.get("benchmarks", []):
            ei, st = b["extra_info"], b.get("stats")
            if ei.get("kind") in (None, "matmul") or not st:
                continue
            k = ei["steps_per_call"]
            sec, med = st["min"] / k, st["median"] / k
            row = {key: ei[key] for key in ("kind", "backend", "path", "preset", "batch_size", "dtype",
                                            "threads", "steps_per_call")}
            row.update(ms_per_step=sec * 1e3, ms_per_step_median=med * 1e3, steps_per_s=1 / sec,
                       matmul_gflops=gflops, first_call_s=ei["first_call_s"], rounds=st["rounds"],
                       peak_rss_mb=rss.get(ei["backend"]), cores=ei.get("cores"))
            if "flops" in ei:
                row.update(flops_per_step=ei["flops"], floor_ms=floor_seconds(ei["flops"], gflops) * 1e3,
                           floor_ratio=floor_ratio(sec, ei["flops"], gflops))
            if ei["kind"] == "sample":
                row["names_per_s"] = ei["names_per_call"] / sec
            if ei["kind"] == "targets":   # bench/test_sequence_step.py: real targets trained per second
                row["targets_per_s"] = ei["targets_per_call"] / st["min"]
            rows.append(row)
    eager = {(r["kind"], r["preset"], r["batch_size"], r["dtype"], r["threads"]): r["ms_per_step"]
             for r in rows if r["backend"] == "torch" and r["path"] == "plain"}
    # the baseline of every training row (and of the GEMMs-alone rows beside them): the lecture's
    # own eager loop (bench/torch_bare_loop.py) in the same configuration and threads
    bare = {(r["preset"], r["batch_size"], r["dtype"], r["threads"]): r["ms_per_step"]
            for r in rows if r["kind"] == "train_step" and r["path"] == "bare loop"}
    for r in rows:
        base = eager.get((r["kind"], r["preset"], r["batch_size"], r["dtype"], r["threads"]))
        r["vs_torch_eager"] = base / r["ms_per_step"] if base else None
        base = bare.get((r["preset"], r["batch_size"], r["dtype"], r["threads"]))
        paired = base and r["kind"] in ("train_step", "step_gemms")
        r["vs_bare_loop"] = base / r["ms_per_step"] if paired else None
    order = {"train_step": 0, "step_gemms": 1, "evaluate": 2, "sample": 3, "targets": 4}
    nthreads = lambda t: int(t) if str(t).isdigit() else 0  # noqa: E731  ('default' when run by hand)
    rows.sort(key=lambda r: (order[r["kind"]], r["preset"], r["dtype"], r["batch_size"],
                             nthreads(r["threads"]), r["backend"], r["path"]))
    return rows, rates


def _opt(v, fmt):
    return "-" if v is None else format(v, fmt)


def tables(rows: list[dict], rates: dict[str, float], info: str = "") -> str:
    """The report in Markdown: matmul rates, training steps, evaluation, sampling, peak RSS."""
    gflops = max(rates.values())
    parts = [f"# makemore-ports benchmark\n\n{info}".rstrip(),
             "float32 2048x2048 matmul: " + ", ".join(f"{k} {v:.1f}" for k, v in rates.items())
             + f" GFLOP/s; the floor uses the best, {gflops:.1f} GFLOP/s.",
             "## Training step (forward, backward, SGD update)\n"]
    tr = [r for r in rows if r["kind"] == "train_step"]
    parts[-1] += markdown_table(
        ["preset", "batch", "dtype", "backend", "path", "threads", "cores", "ms/step", "steps/s", "floor ms",
         "x floor", "vs bare loop", "vs torch plain", "first call s"],
        [[r["preset"], r["batch_size"], r["dtype"], r["backend"], r["path"], r["threads"], _opt(r["cores"], ".2f"),
          f"{r['ms_per_step']:.3f}", f"{r['steps_per_s']:.0f}", f"{r['floor_ms']:.4f}",
          f"{r['floor_ratio']:.1f}", _opt(r.get("vs_bare_loop"), ".2f"), _opt(r["vs_torch_eager"], ".2f"),
          f"{r['first_call_s']:.1f}"]
         for r in tr])
    gm = [r for r in rows if r["kind"] == "step_gemms"]
    if gm:
        key = lambda r: (r["backend"], r["preset"], r["batch_size"], r["dtype"], r["threads"])  # noqa: E731
        fast = {key(r): r["ms_per_step"] for r in tr if r["path"] == "fast"}
        parts.append("## The step's GEMMs alone, in each backend's library (bench/test_step_gemms.py)\n"
                     + markdown_table(
                         ["preset", "batch", "dtype", "backend", "threads", "cores", "GEMM ms/step",
                          "GFLOP/s", "x floor", "vs bare loop", "fast path / GEMMs"],
                         [[r["preset"], r["batch_size"], r["dtype"], r["backend"], r["threads"],
                           _opt(r["cores"], ".2f"),
                           f"{r['ms_per_step']:.3f}", f"{r['flops_per_step'] / r['ms_per_step'] / 1e6:.1f}",
                           f"{r['floor_ratio']:.1f}", _opt(r.get("vs_bare_loop"), ".2f"),
                           _opt(fast[key(r)] / r["ms_per_step"] if key(r) in fast else None, ".2f")]
                          for r in gm]))
    ev = [r for r in rows if r["kind"] == "evaluate"]
    if ev:
        parts.append("## Whole-split evaluation (validation split, eval mode, float32)\n" + markdown_table(
            ["preset", "backend", "examples", "ms", "examples/s", "x floor", "vs torch"],
            [[r["preset"], r["backend"], r["batch_size"], f"{r['ms_per_step']:.1f}",
              f"{r['batch_size'] / r['ms_per_step'] * 1e3:.3g}", f"{r['floor_ratio']:.1f}",
              _opt(r["vs_torch_eager"], ".2f")] for r in ev]))
    sa = [r for r in rows if r["kind"] == "sample"]
    if sa:
        parts.append("## Sampling (wavenet, float32, eval mode, shared uniforms)\n" + markdown_table(
            ["backend", "names per call", "names/s", "vs torch"],
            [[r["backend"], r["batch_size"], f"{r['names_per_s']:.0f}", _opt(r["vs_torch_eager"], ".2f")]
             for r in sa]))
    tg = [r for r in rows if r["kind"] == "targets"]
    if tg:
        lecture = {r["backend"]: r["targets_per_s"] for r in tg
                   if r["preset"] == "wavenet" and r["batch_size"] == 32}
        parts.append("## Targets per second: wavenet-conv on whole names against wavenet on contexts "
                     "(bench/test_sequence_step.py, plain paths, one thread)\n" + markdown_table(
                         ["preset", "batch", "backend", "targets/s", "x floor", "vs wavenet batch 32"],
                         [[r["preset"], f"{r['batch_size']} {'names' if r['preset'] == 'wavenet-conv' else 'contexts'}",
                           r["backend"], f"{r['targets_per_s']:.0f}", f"{r['floor_ratio']:.1f}",
                           _opt(r["targets_per_s"] / lecture[r["backend"]] if r["backend"] in lecture else None, ".2f")]
                          for r in tg]))
    below = [r for r in rows if r.get("floor_ratio") is not None and r["floor_ratio"] < 1]
    if below:
        parts.insert(2, "**Warning:** " + ", ".join(f"{r['backend']} {r['path']} ({r['kind']})" for r in below)
                     + " ran faster than the floor: the 2048x2048 matmul rate of this run was measured "
                     "while the machine was busy, so every x floor here is too low. Rerun on a quiet machine.")
    rss = {}
    for r in rows:
        rss[r["backend"]] = max(rss.get(r["backend"], 0.0), r["peak_rss_mb"] or 0.0)
    parts.append("## Peak memory per backend (max RSS of its benchmark processes)\n" + markdown_table(
        ["backend", "peak RSS MB"], [[b, f"{v:.0f}"] for b, v in rss.items()]))
    parts.append("ms/step: fastest round / steps per call. x floor: ms/step over floor ms (matmul FLOPs "
                 "of the step, shared/flops.py, at the best matmul rate). vs bare loop: the ms/step of "
                 "torch's bare loop (the lecture's own eager loop, bench/torch_bare_loop.py: the baseline a user "
                 "would otherwise run) in the same configuration and threads over this row's (higher is "
                 "faster); vs torch plain: the same with torch's train_step as the base. threads: "
                 "the thread setting of the process (MAKEMORE_THREADS, OMP/MKL/OpenBLAS, XLA_FLAGS); cores: CPU seconds per wall second while it was measured. "
                 "GEMMs alone: the "
                 "same products as the step's Linear layers (forward, dW, dX) and nothing else; "
                 "fast path / GEMMs is the share of a step that is not matmul. first call: "
                 "includes compilation (torch.compile, XLA). Every process ran with "
                 + ", ".join(f"{k}={v}" for k, v in ALLOCATOR_ENV.items()) + ".")
    return "\n\n".join(parts) + "\n"


def plot(rows: list[dict], path: Path) -> Path:
    """PNG: one panel per (preset, batch, dtype), bars of steps/s per backend/path, x floor on top."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tr = [r for r in rows if r["kind"] == "train_step"]
    cfgs = sorted({(r["preset"], r["batch_size"], r["dtype"]) for r in tr})
    ncol = min(4, len(cfgs))
    nrow = (len(cfgs) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 3.4 * nrow), squeeze=False)
    for ax, cfg in zip(axes.flat, cfgs):
        rs = [r for r in tr if (r["preset"], r["batch_size"], r["dtype"]) == cfg]
        labels = [f"{r['backend']}\n{r['path']}" for r in rs]
        bars = ax.bar(range(len(rs)), [r["steps_per_s"] for r in rs],
                      color=[{"plain": "C0", "bare loop": "C2"}.get(r["path"], "C1") for r in rs])
        for b, r in zip(bars, rs):
            ax.annotate(f"{r['floor_ratio']:.1f}x", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(rs)), labels, fontsize=8)
        ax.set_title(f"{cfg[0]}, batch {cfg[1]}, {cfg[2]}", fontsize=9)
        ax.set_ylabel("steps/s")
        ax.margins(y=0.15)
    for ax in list(axes.flat)[len(cfgs):]:
        ax.axis("off")
    fig.suptitle("training steps/s (labels: time per step / FLOP floor)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def machine_info(raws: list[dict]) -> str:
    cpu = next((r.get("machine_info", {}).get("cpu", {}).get("brand_raw") for r in raws
                if r.get("machine_info", {}).get("cpu")), None) or platform.processor()
    return (f"Machine: {cpu or platform.machine()}, {available_cores()} cores available "
            f"({os.cpu_count()} in the machine); Python {platform.python_version()}.")


def run(groups: list[Group], out: Path, timeout: float | None = None) -> list[dict]:
    """Run `groups`, write raw/*.json, bench.json, bench.md, bench.png into `out`, print the tables."""
    out.mkdir(parents=True, exist_ok=True)
    raws = []
    for g in groups:
        raw = run_group(g, out / "raw", timeout)
        if raw is not None:
            raws.append(raw)
    rows, rates = build_rows(raws)
    if not any(r["kind"] == "train_step" for r in rows):
        raise ValueError("no training-step benchmark ran: see the pytest output above")
    (out / "bench.json").write_text(json.dumps(rows, indent=1))
    md = tables(rows, rates, machine_info(raws))
    (out / "bench.md").write_text(md)
    plot(rows, out / "bench.png")
    print(md)
    return rows


def bench(quick: bool, out_dir) -> list[dict]:
    """`makemore bench [--quick] [--out DIR]`: run the pytest-benchmark suites of bench/ for every
    installed backend, write raw/, bench.json, bench.md and bench.png into `out_dir`, print the
    tables; returns the rows (times in seconds, speeds in steps/s).

    Raises ValueError (one line) when bench/ is not there (an installed package without a
    checkout) or pytest-benchmark is missing."""
    if not (BENCH_DIR / "test_train_step.py").is_file():
        raise ValueError(f"the benchmark suites are not at {BENCH_DIR}: `makemore bench` runs from a "
                         "checkout of the project (git clone, then pip install -e '.[all,dev]')")
    import importlib.util
    missing = [m for m in ("pytest", "pytest_benchmark") if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"`makemore bench` runs pytest-benchmark suites and needs {', '.join(missing)}: "
                         "pip install -e '.[dev]' from the checkout")
    backends = available_backends()
    t0 = time.perf_counter()
    print(f"makemore bench{' --quick' if quick else ''}: backends {', '.join(backends)}; "
          f"writing to {out_dir}", file=sys.stderr)
    rows = run(plan(quick, backends), Path(out_dir))
    print(f"bench took {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return rows
