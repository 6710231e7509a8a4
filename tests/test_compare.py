"""`makemore compare`: the table, compare.json and compare.png, and the helpers behind them."""
import json

import numpy as np
import pytest

from makemore import cli
from makemore.compare import max_pair_diff, max_param_diff, parse_backends, table_steps
from makemore.registry import BackendError, available_backends

pytest.importorskip("torch")


def test_compare_numpy_torch_float64_end_to_end(tmp_path, names_path, capsys):
    out = tmp_path / "cmp"
    rc = cli.main(["compare", "--preset", "mlp", "--steps", "60", "--backends", "numpy,torch",
                   "--dtype", "float64", "--lr-decay-step", "30", "--data", str(names_path), "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    for line in ("| loss at step 0 |", "| loss at step 9 |", "| loss at step 59 |", "| final val loss |",
                 "| steps/s |", "samples agree"):
        assert line in text, f"{line!r} missing from the printed table:\n{text}"
    r = json.loads((out / "compare.json").read_text())
    assert r["backends"] == ["numpy", "torch"] and r["dtype"] == "float64" and r["steps"] == 60
    assert set(r["loss"]) == {"numpy", "torch"} and all(len(v) == 60 for v in r["loss"].values())
    assert abs(r["loss"]["numpy"][0] - np.log(27)) < 0.1          # near-uniform logits at init
    # one function, two frameworks: float64 agreement (docs/design.md: rtol <= 1e-10)
    assert r["max_abs_loss_diff"] < 1e-10 and r["max_abs_param_diff"] < 1e-10
    assert r["max_abs_loss_diff"] == pytest.approx(
        np.abs(np.subtract(r["loss"]["numpy"], r["loss"]["torch"])).max(), abs=0)
    assert abs(r["val_loss"]["numpy"] - r["val_loss"]["torch"]) < 1e-10 and r["val_loss"]["numpy"] < 3.2
    assert all(v > 0 for v in r["steps_per_s"].values())
    assert r["samples"]["numpy"] == r["samples"]["torch"]
    assert (out / "compare.png").stat().st_size > 10_000


def test_unknown_backend_is_a_one_line_error(capsys):
    assert cli.main(["compare", "--backends", "numpy,mxnet", "--steps", "1"]) == 2
    assert "unknown backend 'mxnet'" in capsys.readouterr().err


def test_parse_backends():
    assert parse_backends(None) == available_backends()
    assert parse_backends(" torch, numpy") == ["torch", "numpy"]
    with pytest.raises(BackendError, match="names torch twice"):
        parse_backends("torch,numpy,torch")
    with pytest.raises(BackendError, match="no backend"):
        parse_backends(",")
    with pytest.raises(BackendError, match="only numpy was given: there is nothing to compare"):
        parse_backends("numpy")


def test_table_steps():
    assert table_steps(1000) == [0, 9, 99, 500, 999]
    assert table_steps(1) == [0]
    assert table_steps(0) == []


def test_max_differences_over_pairs():
    curves = {"a": np.array([1.0, 2.0]), "b": np.array([1.0, 2.5]), "c": np.array([0.0, 2.0])}
    assert max_pair_diff(curves) == 1.0                   # a-c at step 0
    assert max_pair_diff({"a": np.array([1.0])}) == 0.0
    p = {"a": {"w": np.zeros(3, np.float32), "v": np.ones(2)},
         "b": {"w": np.array([0, 0, 1e-3], np.float32), "v": np.ones(2)}}
    d, where = max_param_diff(p)
    assert where == "w" and d == pytest.approx(1e-3, rel=1e-6)
