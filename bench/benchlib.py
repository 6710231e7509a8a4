"""Helpers of the benchmark suites (kept out of conftest.py: tests/conftest.py owns that module name)."""
from __future__ import annotations

import os
import resource
import time
from pathlib import Path

from shared.spec import get_spec

ROOT = Path(__file__).resolve().parents[1]

# steps per benchmarked call: k steps of train_step in a loop (plain) or one fast_train_steps(k)
STEPS_PER_CALL = {32: 100, 256: 20, 4096: 2}


_DATA = {}


def dataset(block_size: int):
    """The lecture's splits for `block_size` (names.txt found as in tests/conftest.py)."""
    from shared.data import load_dataset
    if block_size not in _DATA:
        cands = [os.environ.get("MAKEMORE_DATA"), ROOT / "data" / "names.txt",
                 ROOT.parent / "shared" / "data" / "names.txt"]
        path = next((Path(c) for c in cands if c and Path(c).is_file()), None)
        _DATA[block_size] = load_dataset(block_size, path)
    return _DATA[block_size]


def spec_for(preset: str, dtype: str):
    """(ModelSpec of `preset` in `dtype` sized to the data, the lecture's Dataset for it)."""
    data = dataset(get_spec(preset).block_size)
    return get_spec(preset, vocab_size=data.vocab.vocab_size, dtype=dtype), data


def threads() -> str:
    """The thread setting `makemore.bench` gave this process ('default' when run by hand)."""
    return os.environ.get("MAKEMORE_BENCH_THREADS", "default")


def run_benchmark(benchmark, request, fn, info: dict) -> None:
    """Time fn: one first call (compilation, timed apart as first_call_s), one timed warm-up call
    that sets the number of rounds, then benchmark.pedantic with one more warm-up round. Records
    extra_info['cores'], the CPU seconds per wall second of the measured rounds."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    benchmark.extra_info.update(info, first_call_s=first, threads=threads())
    if benchmark.disabled:  # --benchmark-disable (smoke tests): pedantic runs fn once
        benchmark.pedantic(fn, rounds=1, iterations=1)
        return
    t0 = time.perf_counter()
    fn()
    warm = time.perf_counter() - t0
    cfg = request.config
    rounds = max(cfg.getoption("--mm-min-rounds"), min(200, int(cfg.getoption("--mm-seconds") / max(warm, 1e-6))))
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1, iterations=1)
    # cores actually used while measuring: process CPU time / wall time (threads of every kind,
    # e.g. XLA's runtime runs independent ops concurrently even when asked for one thread)
    benchmark.extra_info["cores"] = (_cpu_seconds() - cpu0) / (time.perf_counter() - t0)


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime
