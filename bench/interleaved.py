"""Interleaved A/B of the training paths in one process: a round runs K steps of every path in
turn, and each path keeps its fastest round, so every path sees the same machine (on a shared
machine, rows measured one after the other by pytest-benchmark drift by 10-25%).

    python bench/interleaved.py [--paths torch:plain,torch:bare,numpy:fast,...] [--rounds 200] [--steps 20]
    perf record -e cpu-clock -g -- python bench/interleaved.py --paths torch:fast --seconds 10

Paths: BACKEND:plain (train_step), BACKEND:fast (fast_train_steps), torch:bare (the lecture's
own eager loop, bench/torch_bare_loop.py). Wavenet, batch 32, float32, one thread (set here
before any framework is imported, as makemore.bench does). Prints, per path, the fastest
round's wall ms/step and main-thread CPU ms/step (time.thread_time: not charged for time the
process waited for a core; not shown for JAX, whose runtime works on its own threads too), and
steps/s relative to torch:bare. With --seconds, only loops the first
path for that long (for a profiler) and prints nothing.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "MAKEMORE_THREADS": "1",
              "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}
DEFAULT_PATHS = "torch:bare,torch:plain,torch:fast,numpy:plain,numpy:fast,jax:plain,jax:fast"


def make_paths(names: list[str], steps: int) -> dict:
    """{name: fn} where fn() runs `steps` SGD steps on the lecture's minibatches (lr 0.1)."""
    import numpy as np

    from benchlib import spec_for
    from makemore.registry import get_backend
    from shared.config import TrainConfig
    from shared.params import init_params
    from shared.stream import BatchStream, seed_streams

    spec, data = spec_for("wavenet", "float32")
    Xtr, Ytr = data.train
    ix = BatchStream(42, len(Xtr), 32).take(steps)
    Xs, Ys = Xtr[ix], Ytr[ix]
    p0 = init_params(spec, seed_streams(42)[0])
    fns = {}
    for name in names:
        backend, path = name.split(":")
        if path == "bare":
            import torch
            import torch_bare_loop
            model = torch_bare_loop.build(spec, p0)
            tX, tY = torch.from_numpy(Xs.astype(np.int64)), torch.from_numpy(Ys.astype(np.int64))
            fns[name] = lambda model=model, tX=tX, tY=tY: torch_bare_loop.train(model, tX, tY)
            continue
        B = get_backend(backend)
        model = B.build_model(spec)
        B.load_params(model, p0)
        opt = B.Optimizer(model, TrainConfig(steps=10 ** 9))
        if path == "plain":
            fns[name] = lambda B=B, model=model, opt=opt: [B.train_step(model, opt, Xs[i], Ys[i])
                                                            for i in range(steps)]
        else:
            fns[name] = lambda B=B, model=model, opt=opt: B.fast_train_steps(model, opt, Xs, Ys)
    return fns


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--paths", default=DEFAULT_PATHS)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--steps", type=int, default=20, help="steps per path per round")
    ap.add_argument("--seconds", type=float, default=0, help="only loop the first path this long")
    args = ap.parse_args(argv)
    os.environ.update(ONE_THREAD)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    names = args.paths.split(",")
    fns = make_paths(names[:1] if args.seconds else names, args.steps)
    for fn in fns.values():
        fn()  # compilation, warm-up
    if args.seconds:
        fn, t0 = next(iter(fns.values())), time.perf_counter()
        while time.perf_counter() - t0 < args.seconds:
            fn()
        return
    wall = {n: float("inf") for n in fns}
    cpu = dict(wall)
    for _ in range(args.rounds):
        for n, fn in fns.items():
            c0, w0 = time.thread_time(), time.perf_counter()
            fn()
            wall[n] = min(wall[n], (time.perf_counter() - w0) / args.steps)
            cpu[n] = min(cpu[n], (time.thread_time() - c0) / args.steps)
    base = "torch:bare" if "torch:bare" in fns else names[0]
    print(f"{args.rounds} rounds of {args.steps} steps per path; load average {os.getloadavg()[0]:.1f}")
    print(f"{'path':14s} {'wall ms/step':>12s} {'cpu ms/step':>12s} {'vs ' + base + ' (wall, cpu)':>28s}")
    for n in fns:
        c, r = ((f"{cpu[n] * 1e3:12.3f}", f"{cpu[base] / cpu[n]:6.2f}") if not n.startswith("jax")
                else (f"{'-':>12s}", f"{'-':>6s}"))  # XLA runs much of a step on its own threads
        print(f"{n:14s} {wall[n] * 1e3:12.3f} {c} {wall[base] / wall[n]:14.2f} {r}")


if __name__ == "__main__":
    main()
