"""Trials per hour of `makemore sweep` with 1 and with 2 worker processes (one core, one thread
each), on the same study (studies/bench-sweep.toml: every trial the same work, no pruning).

    python bench/sweep_scaling.py [--study studies/bench-sweep.toml] [--trials 8] [--out DIR]

Runs the study twice into fresh folders (`--workers 1`, then `--workers 2`), times each sweep
from the command's start to its end (process start-up and JAX's compilation of every trial
included: what a user waits for), and writes sweep-scaling.md and .json into --out (default
bench/results-sweep). The load average before and after each sweep is recorded: on a machine
that other work shares, 2 workers cannot reach 2x.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(study: Path, workers: int, trials: int, out: Path) -> dict:
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "makemore", "sweep", str(study), "--workers", str(workers),
                        "--n-trials", str(trials), "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"sweep with {workers} workers failed:\n{r.stdout}\n{r.stderr}")
    trial_s = [float(line.split(" s  ")[0].rsplit("  ", 1)[1]) for line in r.stdout.splitlines()
               if line.startswith("trial ") and " s  " in line]
    return {"workers": workers, "trials": trials, "wall_s": wall, "trials_per_hour": trials / wall * 3600,
            "mean_trial_s": sum(trial_s) / len(trial_s) if trial_s else None,
            "load_before": load0[0], "load_after": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False)
    ap.add_argument("--study", default=str(ROOT / "studies" / "bench-sweep.toml"))
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results-sweep"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sweep-scaling-"))
    try:
        rows = [run(Path(args.study), w, args.trials, tmp / f"w{w}") for w in (1, 2)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratio = rows[1]["trials_per_hour"] / rows[0]["trials_per_hour"]
    cores = len(os.sched_getaffinity(0))
    lines = [f"# makemore sweep: trials per hour, 1 vs 2 workers ({Path(args.study).name}, {args.trials} trials)",
             "", f"{cores} cores; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
             f"`python bench/sweep_scaling.py --trials {args.trials}`", "",
             "| workers | wall s | trials/hour | mean trial s | load avg before / after |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workers']} | {r['wall_s']:.1f} | {r['trials_per_hour']:.0f} | "
                     f"{r['mean_trial_s']:.1f} | {r['load_before']:.1f} / {r['load_after']:.1f} |")
    lines += ["", f"2 workers / 1 worker: **{ratio:.2f}x** the trials per hour."]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep-scaling.md").write_text("\n".join(lines) + "\n")
    (out / "sweep-scaling.json").write_text(json.dumps({"rows": rows, "ratio": ratio, "cores": cores}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
