"""How many threads a training step of the numpy and torch backends runs on (JAX: XLA_FLAGS).

Measured on the 2-core machine this project is developed on (bench/README.md): at batch <= 64 a
step's matrices are tiny ((32*4, 48) @ (48, 128)), and on a busy machine the second thread's
spinning made steps 5-30x slower (OpenBLAS and torch's OpenMP alike), so the default is one thread
there. On a quiet machine two threads are 20-25% faster at batch 32 (numpy fast path 1.73 -> 1.40
ms, torch fast path 1.69 -> 1.26-1.36 ms): set MAKEMORE_THREADS to choose. Larger batches keep the
library's own setting (every core).
"""
from __future__ import annotations

import os

SMALL_BATCH = 64  # batches up to this size run on one thread unless MAKEMORE_THREADS says otherwise
ENV = "MAKEMORE_THREADS"


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity: taskset, cgroups), not os.cpu_count()."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def step_threads(batch_size: int) -> int | None:
    """Threads for a step on `batch_size` examples: MAKEMORE_THREADS (a positive int) when set,
    else 1 for batch_size <= SMALL_BATCH and None (leave the library's setting) above.

    Raises:
        ValueError: MAKEMORE_THREADS is set to something other than a positive integer.
    """
    raw = raw_threads()
    if raw:
        try:
            n = int(raw)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"{ENV}={raw!r}: give a positive number of threads (e.g. {ENV}=2), "
                             f"or unset it for the default (1 thread at batch <= {SMALL_BATCH})")
        return n
    return 1 if batch_size <= SMALL_BATCH else None


# XLA's CPU runtime on one thread (its flags are read once, when jax starts)
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def xla_flags_for(batch_size: int, flags: str = "") -> str:
    """The XLA_FLAGS a JAX training process at `batch_size` should start with: `flags` plus
    XLA_ONE_THREAD where step_threads gives 1 (batch <= SMALL_BATCH and no MAKEMORE_THREADS),
    as numpy's and torch's steps run then, so that no path oversubscribes a busy machine;
    `flags` unchanged otherwise, or when they already set XLA's threads. Set it in the
    environment before jax is imported: XLA reads it once.

    Raises ValueError for a malformed MAKEMORE_THREADS (step_threads)."""
    if step_threads(batch_size) == 1 and "intra_op_parallelism_threads" not in flags:
        return (flags + " " + XLA_ONE_THREAD).strip()
    return flags


def busy_warning(batch_size: int, backend: str = "numpy") -> str | None:
    """A warning to print when a training step would run on more than one thread while the
    machine is already busy (1-minute load average above cores - 1): the case where the extra
    threads made steps 3-30x slower here (numpy's fast step at batch 256: 13.7 against 41.8
    steps/s on one thread at load 3; batch 32: 5-30x). numpy and torch follow step_threads (one
    thread at batch <= 64 unless MAKEMORE_THREADS asks for more; the library's own setting,
    every core, above 64); JAX's XLA runtime spreads over every core this process may use
    unless XLA_FLAGS sets one thread (makemore train does where step_threads gives 1:
    xla_flags_for). None when nothing oversubscribes, or where there is no load average.

    Raises ValueError for a malformed MAKEMORE_THREADS (step_threads)."""
    cores = available_cores()
    n = step_threads(batch_size) or cores   # None: the library's own setting, every core
    if backend == "jax":   # XLA's pool: one thread only where XLA_FLAGS says so (xla_flags_for)
        n = 1 if "intra_op_parallelism_threads=1" in os.environ.get("XLA_FLAGS", "") else cores
    if n < 2 or not hasattr(os, "getloadavg"):
        return None
    load = os.getloadavg()[0]
    if load <= cores - 1:
        return None
    fix = f"set {ENV}=1 for one thread" + (" (XLA too)" if backend == "jax" else "")
    return (f"warning: {backend} would train on {n} threads (batch {batch_size}) on a busy machine "
            f"(load {load:.1f} on {cores} cores): extra threads made such steps 3-30x slower here; {fix}")


def raw_threads() -> str:
    """MAKEMORE_THREADS as set (stripped), '' when unset."""
    return os.environ.get(ENV, "").strip()
