"""pytest-benchmark suites for makemore-ports (run by `makemore bench` / `make bench`, or directly:
`pytest bench --benchmark-json=out.json [--mm-backends torch --mm-batches 32 ...]`).

Every benchmark records what `makemore.bench` needs to build its table in `extra_info` (kind,
backend, path, preset, batch_size, dtype, steps_per_call, flops, first_call_s, threads), so the
raw JSON alone is enough to rebuild the report. The peak RSS of the process is added to the JSON
as `peak_rss_mb` at the end of the session.
"""
from __future__ import annotations

import resource
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench run from anywhere still imports the project

from benchlib import threads  # noqa: E402
from makemore.registry import BackendError, available_backends, get_backend  # noqa: E402

def pytest_addoption(parser):
    g = parser.getgroup("makemore bench")
    g.addoption("--mm-backends", default=None, help="comma-separated backends (default: installed)")
    g.addoption("--mm-presets", default="mlp,wavenet", help="comma-separated presets")
    g.addoption("--mm-batches", default="32,256,4096", help="comma-separated batch sizes (float32)")
    g.addoption("--mm-float64", default="32", help="batch sizes also run in float64 ('' for none)")
    g.addoption("--mm-paths", default="plain,fast,bare",
                help="plain (train_step), fast (fast_train_steps), bare (torch only: the lecture's loop)")
    g.addoption("--mm-steps", type=int, default=0, help="steps per call (0: by batch size)")
    g.addoption("--mm-seconds", type=float, default=1.5,
                help="target measured seconds per benchmark (sets the rounds)")
    g.addoption("--mm-min-rounds", type=int, default=3, help="fewest measured rounds")
    g.addoption("--mm-names", type=int, default=50, help="names per sampling call")
    g.addoption("--mm-eval-examples", type=int, default=0,
                help="evaluate only the first N validation examples (0: the whole split)")
    g.addoption("--mm-libs", default="numpy,torch,xla", help="matmul libraries (installed ones only)")
    g.addoption("--mm-matmul-rounds", type=int, default=3, help="measured rounds per matmul")
    g.addoption("--mm-matmul-n", type=int, default=2048, help="side of the matmul (smoke tests: small)")


def _csv(s: str | None) -> list[str]:
    return [x for x in (s or "").split(",") if x]


def bench_backends(config) -> list[str]:
    """Installed backends that are complete enough to train (have train_step)."""
    names = _csv(config.getoption("--mm-backends")) or available_backends()
    out = []
    for n in names:
        try:
            B = get_backend(n)
        except BackendError:
            continue
        if hasattr(B, "train_step"):
            out.append(n)
    return out


def train_configs(config) -> list[tuple[str, int, str]]:
    """(preset, batch_size, dtype) of the training-step benchmarks."""
    out = []
    f64 = {int(b) for b in _csv(config.getoption("--mm-float64"))}
    for preset in _csv(config.getoption("--mm-presets")):
        for b in (int(x) for x in _csv(config.getoption("--mm-batches"))):
            out.append((preset, b, "float32"))
            if b in f64:
                out.append((preset, b, "float64"))
    return out


def pytest_generate_tests(metafunc):
    cfg = metafunc.config
    if "path" in metafunc.fixturenames and "backend" in metafunc.fixturenames:
        # the bare loop (bench/torch_bare_loop.py) is a torch program: a row for torch only
        paths = _csv(cfg.getoption("--mm-paths"))
        metafunc.parametrize("backend,path", [(b, p) for b in bench_backends(cfg) for p in paths
                                              if p != "bare" or b == "torch"])
    elif "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", bench_backends(cfg))
    if "train_cfg" in metafunc.fixturenames:
        metafunc.parametrize("train_cfg", train_configs(cfg), ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
    if "lib" in metafunc.fixturenames:
        import importlib.util
        mods = {"numpy": "numpy", "torch": "torch", "xla": "jax"}
        metafunc.parametrize("lib", [l for l in _csv(cfg.getoption("--mm-libs"))
                                     if l in mods and importlib.util.find_spec(mods[l]) is not None])
    if "eval_preset" in metafunc.fixturenames:
        metafunc.parametrize("eval_preset", _csv(cfg.getoption("--mm-presets")))


def pytest_collection_modifyitems(config, items):
    """float64 benchmarks last: JAX switches x64 on for the whole process at the first float64
    model, which must not change the float32 runs measured after it."""
    items.sort(key=lambda item: "float64" in item.nodeid)


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_json(config, benchmarks, output_json):
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    output_json["peak_rss_mb"] = ru / 1024
    output_json["makemore_threads"] = threads()
