"""`makemore reproduce`: the lecture's five-row performance log, each row a run folder trained with
the lecture's recipe (--quick here: 300 steps), printed beside the lecture's numbers; finished runs
are reused."""
import json

import pytest

from makemore import cli
from makemore.reproduce import ROWS, settings_for, table
from shared.checkpoint import load_checkpoint


def test_the_rows_are_the_lecture_log():
    assert [(r.preset, r.bn_per_position, r.train, r.val) for r in ROWS] == [
        ("mlp", False, 2.058, 2.105), ("mlp-8", False, 1.918, 2.027), ("wavenet-22k", True, 1.941, 2.029),
        ("wavenet-22k", False, 1.912, 2.022), ("wavenet", False, 1.769, 1.993)]
    s = settings_for(ROWS[4], 42, True)
    assert (s["steps"], s["batch_size"], s["lr"], s["lr_final"], s["lr_decay_step"]) == (200_000, 32, 0.1, 0.01, None)


def test_more_seeds_print_mean_and_sd():
    ms = [{"train_loss": 2.0, "val_loss": 2.1}, {"train_loss": 2.2, "val_loss": 2.3}]
    text = table({"mlp": ms}, "jax", [42, 43], 200_000)
    line = [l for l in text.splitlines() if l.startswith("original")][0]
    assert "2.1000 ± 0.1414" in line and "2.2000 ± 0.1414" in line and "seeds 42, 43" in text


def test_quick_reproduce_trains_every_row_and_reuses_them(tmp_path, names_path, capsys, monkeypatch):
    monkeypatch.setenv("MAKEMORE_DATA", str(names_path))
    out = tmp_path / "rep"
    # torch's plain path: its eval is quick, and it compiles nothing (numpy's eval of the 182k
    # training rows takes seconds per row, torch's fast path compiles each model); the first row and
    # the pre-fix BatchNorm's (every row is the same code with another preset)
    argv = ["reproduce", "--backend", "torch", "--plain", "--quick", "--rows", "mlp,wavenet-22k-dim0",
            "--out", str(out), "--no-progress"]
    trained = ("mlp", "wavenet-22k-dim0")
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert "300 steps" in lines[0]
    for r in ROWS:
        row = [l for l in lines if l.startswith(r.label)][0]
        assert f"{r.train:.3f}" in row and f"{r.val:.3f}" in row
        if r.key not in trained:
            assert row.split()[-2:] == ["-", "-"] and not (out / f"{r.key}-seed42").exists()
            continue
        assert row.rstrip().endswith("plain")
        rec = json.loads((out / f"{r.key}-seed42" / "run.json").read_text())
        assert rec["status"] == "finished"
        assert ("--bn-per-position" in rec["command"]) == r.bn_per_position
    params, _ = load_checkpoint(out / "wavenet-22k-dim0-seed42" / "checkpoint.safetensors")
    assert params["3.running_mean"].shape == (4, 68) and params["11.running_var"].shape == (68,)
    got = json.loads((out / "reproduce.json").read_text())
    assert got["steps"] == 300 and len(got["rows"]["mlp"]["runs"]) == 1 and not got["rows"]["wavenet"]["runs"]
    stamp = (out / "mlp-seed42" / "metrics.json").stat().st_mtime_ns
    rec = json.loads((out / "mlp-seed42" / "run.json").read_text())
    del rec["settings"]["ema"]                     # a record from before --ema: the same run
    (out / "mlp-seed42" / "run.json").write_text(json.dumps(rec))
    assert cli.main(argv) == 0                     # again: every run is reused, the same table
    assert capsys.readouterr().out == text
    assert (out / "mlp-seed42" / "metrics.json").stat().st_mtime_ns == stamp


def test_reproduce_refuses_a_folder_with_another_run(tmp_path, names_path, capsys, monkeypatch):
    monkeypatch.setenv("MAKEMORE_DATA", str(names_path))
    out = tmp_path / "rep"
    (out / "mlp-seed42").mkdir(parents=True)
    (out / "mlp-seed42" / "run.json").write_text(json.dumps({"status": "finished", "backend": "numpy",
                                                             "settings": {"steps": 5}, "config": {"steps": 5}}))
    assert cli.main(["reproduce", "--backend", "numpy", "--quick", "--out", str(out), "--no-progress"]) == 2
    assert "with other settings" in capsys.readouterr().err
    assert cli.main(["reproduce", "--seeds", "0"]) == 2
    assert cli.main(["reproduce", "--rows", "mlp,transformer"]) == 2
    assert "unknown row 'transformer'; the rows are mlp, mlp-8" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "--seed", "1"])      # no abbreviations
