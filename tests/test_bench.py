"""The benchmark machinery (issue 5): the FLOP count against a hand count, the report arithmetic
against hand-computed numbers, torch's fast path against train_step, and a smoke pass of every
bench/ suite with --benchmark-disable (so the suites cannot rot). No timing is asserted."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from makemore import bench, cli
from shared.flops import (floor_ratio, floor_seconds, forward_flops, linear_shapes, matmul_flops,
                          sequence_linear_shapes, sequence_train_step_flops, train_step_flops)
from shared.spec import get_spec

from helpers import BACKENDS, ROOT

# ---- FLOP count: hand counts (6 * rows * fan_in * fan_out per Linear, written out) ----


def test_wavenet_flops_match_the_hand_count():
    # wavenet, batch 32: rows 32*4, 32*2, 32, 32; (fan_in, fan_out) (48,128) (256,128) (256,128) (128,27)
    hand = 6 * (128 * 48 * 128 + 64 * 256 * 128 + 32 * 256 * 128 + 32 * 128 * 27)
    assert hand == 24_256_512                                   # "about 24.3 MFLOP" (issue 5)
    assert train_step_flops(get_spec("wavenet"), 32) == hand
    assert forward_flops(get_spec("wavenet"), 32) * 3 == hand
    assert [s[1:] for s in linear_shapes(get_spec("wavenet"), 32)] == [
        (128, 48, 128), (64, 256, 128), (32, 256, 128), (32, 128, 27)]


def test_mlp_flops_and_batch_scaling():
    # mlp: Linear(30 -> 200), Linear(200 -> 27) on B rows
    assert train_step_flops(get_spec("mlp"), 32) == 6 * 32 * (30 * 200 + 200 * 27) == 2_188_800
    assert train_step_flops(get_spec("wavenet"), 4096) == 128 * 24_256_512
    assert matmul_flops(2048) == 17_179_869_184
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        train_step_flops(get_spec("mlp"), 0)


def test_wavenet_conv_flops_match_the_hand_count():
    # wavenet-conv on 32 names of 7 targets (inputs of 14 tokens): the convolutions compute
    # 13, 11 and 7 positions per name, (fan_in, fan_out) (2*24, 128) (2*128, 128) (2*128, 128) (128, 27)
    hand = 6 * (32 * 13 * 48 * 128 + 32 * 11 * 256 * 128 + 32 * 7 * 256 * 128 + 32 * 7 * 128 * 27)
    assert hand == 133_226_496
    spec = get_spec("wavenet-conv")
    assert sequence_train_step_flops(spec, 32, 7) == hand
    assert [s[1:] for s in sequence_linear_shapes(spec, 32, 7)] == [
        (416, 48, 128), (352, 256, 128), (224, 256, 128), (224, 128, 27)]
    # per target: 594,761 against the hierarchical step's 758,016 (1.27x fewer)
    assert hand // 224 == 594_761 and train_step_flops(get_spec("wavenet"), 32) // 32 == 758_016
    # on (B, 8) contexts the convolutions compute 7, 5 and 1 positions (the hierarchical 4, 2, 1)
    assert [s[1] for s in linear_shapes(spec, 32)] == [32 * 7, 32 * 5, 32, 32]
    with pytest.raises(ValueError, match="not convolutional"):
        sequence_train_step_flops(get_spec("wavenet"), 32, 7)
    with pytest.raises(ValueError, match="must be >= 1"):
        sequence_train_step_flops(spec, 32, 0)


def test_floor_arithmetic():
    assert floor_seconds(24_256_512, 100.0) == pytest.approx(242.56512e-6)
    assert floor_ratio(1e-3, 24_256_512, 100.0) == pytest.approx(1e-3 / 242.56512e-6)
    with pytest.raises(ValueError, match="matmul rate must be > 0"):
        floor_seconds(1, 0.0)


# ---- in-process tests: one torch thread ----


@pytest.fixture(autouse=True)
def _torch_one_thread():
    """One torch thread in this file's in-process tests (the bench runs batch 32 that way too):
    two OpenMP threads on a busy 2-core CI machine made plain steps 30x slower. Restored after."""
    if "torch" not in BACKENDS:
        yield
        return
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- report arithmetic on a hand-made pytest-benchmark JSON ----


def _bench(kind, min_s, **ei):
    return {"extra_info": {"kind": kind, **ei},
            "stats": {"min": min_s, "median": min_s * 1.5, "rounds": 7}}


def _raw():
    tr = dict(kind="train_step", preset="wavenet", batch_size=32, dtype="float32", threads="1",
              steps_per_call=100, flops=24_256_512, first_call_s=2.0, cores=1.0)
    return [{"benchmarks": [_bench("matmul", 0.2, lib="numpy", flops=2 * 2048 ** 3),
                            _bench("matmul", 0.1, lib="torch", flops=2 * 2048 ** 3)]},
            {"benchmarks": [_bench("matmul", 0.4, lib="torch", flops=2 * 2048 ** 3)]},  # a busy end
            {"peak_rss_mb": 300.0, "benchmarks": [
                _bench(min_s=0.5, backend="torch", path="plain", **tr),   # 5 ms/step
                _bench(min_s=0.4, backend="torch", path="bare loop", **tr),  # 4 ms/step
                _bench(min_s=0.1, backend="torch", path="fast", **tr)]},  # 1 ms/step
            {"peak_rss_mb": 90.0, "benchmarks": [
                _bench(min_s=0.2, backend="numpy", path="fast", **tr),    # 2 ms/step
                _bench(min_s=0.08, backend="numpy", path="gemms", **{**tr, "kind": "step_gemms"}),  # 0.8
                _bench(min_s=0.1, backend="numpy", path="fast", **{**tr, "threads": "2"}),  # 1 ms, 2 threads
                _bench("sample", 0.25, backend="numpy", path="plain", preset="wavenet",
                       batch_size=50, dtype="float32", threads="1", steps_per_call=1,
                       names_per_call=50, first_call_s=0.3)]}]


def test_build_rows_by_hand():
    rows, rates = bench.build_rows(_raw())
    gflops = 2 * 2048 ** 3 / 0.1 / 1e9                         # 171.79869184, torch's, the best
    assert rates == pytest.approx({"numpy": gflops / 2, "torch": gflops})
    tr = {(r["backend"], r["path"]): r for r in rows if r["kind"] == "train_step" and r["threads"] == "1"}
    floor_ms = 24_256_512 / (gflops * 1e9) * 1e3                # 0.14119... ms
    f = tr["torch", "fast"]
    assert f["ms_per_step"] == pytest.approx(1.0) and f["steps_per_s"] == pytest.approx(1000)
    assert f["floor_ratio"] == pytest.approx(1.0 / floor_ms) and f["matmul_gflops"] == pytest.approx(gflops)
    assert f["vs_torch_eager"] == pytest.approx(5.0) and f["peak_rss_mb"] == 300.0
    assert tr["numpy", "fast"]["vs_torch_eager"] == pytest.approx(2.5)
    assert f["vs_bare_loop"] == pytest.approx(4.0)                # the bare loop's 4 ms / 1 ms
    assert tr["numpy", "fast"]["vs_bare_loop"] == pytest.approx(2.0)
    assert tr["torch", "plain"]["vs_bare_loop"] == pytest.approx(0.8)
    assert tr["torch", "bare loop"]["vs_bare_loop"] == pytest.approx(1.0)
    (two,) = [r for r in rows if r["threads"] == "2"]                 # no torch eager at 2 threads
    assert two["vs_torch_eager"] is None and two["ms_per_step"] == pytest.approx(1.0)
    assert two["vs_bare_loop"] is None
    assert tr["torch", "plain"]["ms_per_step_median"] == pytest.approx(7.5)
    (s,) = [r for r in rows if r["kind"] == "sample"]
    assert s["names_per_s"] == pytest.approx(200.0) and s["vs_torch_eager"] is None
    assert s["vs_bare_loop"] is None
    md = bench.tables(rows, rates)
    assert "| wavenet | 32 | float32 | torch | fast | 1 | 1.00 | 1.000 | 1000 |" in md
    assert f"| {1.0 / floor_ms:.1f} | 4.00 | 5.00 |" in md and "vs bare loop" in md
    assert "x floor" in md and "Peak memory" in md and "| numpy | 90 |" in md and "Warning" not in md
    (g,) = [r for r in rows if r["kind"] == "step_gemms"]
    assert g["ms_per_step"] == pytest.approx(0.8) and g["vs_torch_eager"] is None
    assert g["vs_bare_loop"] == pytest.approx(5.0)                  # the bare loop's 4 ms / 0.8 ms
    # GEMMs alone: 24.2565 MFLOP in 0.8 ms = 30.3 GFLOP/s; numpy's fast path (2 ms) / 0.8 ms = 2.50
    assert f"| wavenet | 32 | float32 | numpy | 1 | 1.00 | 0.800 | 30.3 | {0.8 / floor_ms:.1f} | 5.00 | 2.50 |" in md


def test_targets_rows_by_hand():
    # bench/test_sequence_step.py's rows: 20 steps a call; targets/s = targets per call / call time
    tg = dict(kind="targets", backend="numpy", path="plain", dtype="float32", threads="1",
              steps_per_call=20, first_call_s=1.0)
    raw = _raw()[:2] + [{"benchmarks": [
        _bench(min_s=0.1, preset="wavenet", batch_size=32, targets_per_call=640, flops=20 * 24_256_512, **tg),
        _bench(min_s=0.2, preset="wavenet-conv", batch_size=32, targets_per_call=4560, flops=10 ** 9, **tg)]}]
    rows, rates = bench.build_rows(raw)
    t = {r["preset"]: r for r in rows}
    assert t["wavenet"]["targets_per_s"] == pytest.approx(6400.0)      # 640 in 0.1 s
    assert t["wavenet-conv"]["targets_per_s"] == pytest.approx(22800.0)  # 4560 in 0.2 s
    md = bench.tables(rows, rates)
    assert "| wavenet-conv | 32 names | numpy | 22800 |" in md and "| 3.56 |" in md   # 22800 / 6400


def test_a_floor_beaten_by_a_row_is_flagged():
    raw = [{"benchmarks": [_bench("matmul", 2.0, lib="numpy", flops=2 * 2048 ** 3)]}] + _raw()[2:]  # 8.6 GFLOP/s
    rows, rates = bench.build_rows(raw)
    md = bench.tables(rows, rates)
    (warn,) = [line for line in md.splitlines() if line.startswith("**Warning:**")]
    assert "torch fast (train_step)" in warn and "numpy gemms (step_gemms)" in warn
    assert "torch plain" not in warn                              # 5 ms > the 2.8 ms floor


def test_build_rows_needs_a_matmul_rate():
    with pytest.raises(ValueError, match="no matmul benchmark"):
        bench.build_rows(_raw()[2:])


# ---- the bare loop (bench/torch_bare_loop.py): the lecture's own code, the same function ----


@pytest.mark.skipif("torch" not in BACKENDS, reason="torch not installed")
@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 1e-5)])
def test_the_bare_loop_trains_like_train_step(dtype, rtol, rng):
    """The baseline row times the same computation as torch's train_step: same initial weights and
    minibatches give the same losses, weights and running stats (to float rounding)."""
    import numpy as np
    import torch
    sys.path.insert(0, str(ROOT / "bench"))
    import torch_bare_loop
    from shared.config import TrainConfig
    from shared.params import init_params
    import impl_torch as T
    spec = get_spec("wavenet", dtype=dtype)
    p = init_params(spec, 3)
    Xs, Ys = rng.integers(0, 27, (6, 32, 8)), rng.integers(0, 27, (6, 32))
    model = T.build_model(spec)
    T.load_params(model, p)
    opt = T.Optimizer(model, TrainConfig(steps=10 ** 9))  # lr 0.1 throughout, as the bare loop's
    plain = [T.train_step(model, opt, Xs[i], Ys[i]) for i in range(6)]
    bare = torch_bare_loop.build(spec, p)
    losses = torch_bare_loop.train(bare, torch.from_numpy(Xs), torch.from_numpy(Ys))
    np.testing.assert_allclose(losses, plain, rtol=rtol)
    after = T.export_params(model)
    np.testing.assert_allclose(bare.layers[-1].weight.detach().numpy(), after[f"{len(spec.layers) - 1}.weight"],
                               rtol=100 * rtol, atol=100 * rtol)
    bn = next(i for i, l in enumerate(spec.layers) if l.kind == "batchnorm")
    np.testing.assert_allclose(bare.layers[bn].running_var.numpy().ravel(), after[f"{bn}.running_var"],
                               rtol=100 * rtol)
    with pytest.raises(ValueError, match="convention 'lecture'"):
        torch_bare_loop.build(spec.with_(bn_convention="torch"), p)


# ---- the suites themselves, and makemore bench end to end, tiny ----


def _pytest_bench(args, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=bench.Group("smoke", [], [], 1).env())
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return proc.stdout


def test_smoke_every_bench_suite(tmp_path):
    """Every suite, every installed backend and path, wavenet batch 32, two steps per call."""
    out = _pytest_bench([str(ROOT / "bench"), "--benchmark-disable", "--mm-presets", "wavenet",
                         "--mm-batches", "32", "--mm-float64", "", "--mm-steps", "2",
                         "--mm-names", "3", "--mm-matmul-rounds", "1", "--mm-matmul-n", "64",
                         "--mm-eval-examples", "500"], tmp_path)
    n_mm = len([b for b in BACKENDS if b != "numpy"]) + 1    # numpy, torch, xla
    # matmul, train x2 paths (+ torch's bare loop), step GEMMs, eval, sample, targets/s
    # (wavenet-32 and wavenet-conv: bench/test_sequence_step.py)
    n = n_mm + 2 * len(BACKENDS) + ("torch" in BACKENDS) + 3 * len(BACKENDS) + 2 * len(BACKENDS)
    assert f"{n} passed" in out, out[-2000:]


def test_makemore_bench_end_to_end_tiny(tmp_path, monkeypatch, capsys):
    """The CLI with the quick plan shrunk to numpy and tiny rounds: raw JSON, bench.json rows with
    the issue's keys, bench.md (also printed) and bench.png."""
    tiny = [bench.Group("matmul", ["test_matmul.py"], ["--mm-libs", "numpy", "--mm-matmul-rounds", "1",
                                                       "--mm-matmul-n", "256"], None),
            bench.Group("numpy-quick", ["test_train_step.py"],
                        ["--mm-backends", "numpy", "--mm-presets", "wavenet", "--mm-batches", "32",
                         "--mm-float64", "", "--mm-steps", "2", "--mm-seconds", "0", "--mm-min-rounds", "2"], 1)]
    monkeypatch.setattr(bench, "plan", lambda quick, backends: tiny if quick else pytest.fail("not quick"))
    assert cli.main(["bench", "--quick", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())
    assert {(r["backend"], r["path"]) for r in rows} == {("numpy", "plain"), ("numpy", "fast")}
    for r in rows:
        assert {"backend", "path", "preset", "batch_size", "dtype", "steps_per_s", "floor_ratio",
                "matmul_gflops"} <= set(r)
        assert r["floor_ratio"] > 0 and r["matmul_gflops"] > 0 and r["threads"] == "1"
        assert 0.5 < r["cores"] < 1.5      # numpy at batch 32: one BLAS thread, about one core busy
        assert (r["preset"], r["batch_size"], r["dtype"]) == ("wavenet", 32, "float32")
    raw = json.loads((tmp_path / "raw" / "numpy-quick.json").read_text())
    assert raw["peak_rss_mb"] > 10 and len(raw["benchmarks"]) == 2
    assert (tmp_path / "bench.png").stat().st_size > 5000
    assert "| wavenet | 32 | float32 | numpy | fast |" in capsys.readouterr().out
    assert Path(tmp_path / "bench.md").read_text().startswith("# makemore-ports benchmark")


def test_plan_thread_settings():
    full = {g.name: g for g in bench.plan(False, ["numpy", "torch"])}
    assert full["numpy-small"].env()["MAKEMORE_THREADS"] == "1"
    assert full["numpy-small"].env()["OMP_NUM_THREADS"] == "1"
    allc = full["torch-b32-all-cores"].env()
    assert allc["MAKEMORE_THREADS"] == str(len(os.sched_getaffinity(0))) and "OMP_NUM_THREADS" not in allc
    assert "32" in full["torch-b32-all-cores"].options and "test_step_gemms.py" in full["numpy-small"].files
    assert full["torch-targets"].files == ["test_sequence_step.py"] and full["torch-targets"].threads == 1
    quick = bench.plan(True, ["jax"])
    assert [g.name for g in quick] == ["matmul", "jax-quick", "matmul-end"]
    assert quick[1].env()["MAKEMORE_THREADS"] == "1" and "intra_op" in quick[1].env()["XLA_FLAGS"]
