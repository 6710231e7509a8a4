"""The shared training driver and the `makemore` CLI end to end (torch backend)."""
import json

import numpy as np
import pytest

from makemore import cli
from shared.checkpoint import load_checkpoint
from makemore.registry import BackendError, get_backend
from shared.spec import get_spec
from shared.config import TrainConfig
from makemore.trainer import TrainingDiverged, train

pytest.importorskip("torch")


def test_short_training_lowers_the_loss(data8):
    res = train("torch", get_spec("wavenet"), TrainConfig(steps=300), data8, n_samples=3)
    assert abs(res.losses[0] - np.log(27)) < 0.1            # near-uniform logits at init (x0.1)
    assert res.losses[-50:].mean() < res.losses[:50].mean() - 0.3
    assert res.val_loss < 3.0 and len(res.samples) == 3


def test_same_seed_same_run_bitwise(data3):
    a = train("torch", get_spec("mlp"), TrainConfig(steps=50, seed=3), data3, evaluate=False, n_samples=2)
    b = train("torch", get_spec("mlp"), TrainConfig(steps=50, seed=3), data3, evaluate=False, n_samples=2)
    np.testing.assert_array_equal(a.losses, b.losses)
    assert a.samples == b.samples


def test_cli_train_then_sample(tmp_path, names_path, capsys):
    out = tmp_path / "run"
    rc = cli.main(["train", "--backend", "torch", "--preset", "mlp", "--steps", "200", "--data",
                   str(names_path), "--out", str(out), "--no-progress", "--checkpoint-every", "50"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == 200 and len(m["loss"]) == 200 and m["params"] == 12097
    assert m["backend"] == "torch" and m["preset"] == "mlp" and m["val_loss"] < 3.3
    assert {"train_loss", "seconds", "steps_per_s", "batch_size", "seed", "dtype"} <= set(m)
    assert (out / "loss.png").stat().st_size > 1000
    names = (out / "samples.txt").read_text().split()
    assert len(names) == 20
    params, md = load_checkpoint(out / "checkpoint.safetensors")
    assert md["step"] == 200 and md["backend"] == "torch"
    capsys.readouterr()
    assert cli.main(["sample", "--checkpoint", str(out / "checkpoint.safetensors"), "-n", "20"]) == 0
    assert capsys.readouterr().out.split() == names  # same seed, same names as the run's samples.txt


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data3, monkeypatch):
    B = get_backend("torch")
    real = B.train_step
    calls = {"n": 0}

    def flaky(*a):
        calls["n"] += 1
        return float("nan") if calls["n"] == 38 else real(*a)
    monkeypatch.setattr(B, "train_step", flaky)
    with pytest.raises(TrainingDiverged, match="step 37") as e:
        train("torch", get_spec("mlp"), TrainConfig(steps=100), data3, out_dir=tmp_path,
              checkpoint_every=10)
    assert e.value.step == 37 and e.value.checkpoint == tmp_path / "checkpoint.safetensors"
    params, md = load_checkpoint(e.value.checkpoint)
    assert md["step"] == 30 and all(np.isfinite(v).all() for v in params.values())


def test_cli_errors_are_one_line(tmp_path, capsys, names_path):
    assert cli.main(["train", "--backend", "tensorflow", "--steps", "1"]) == 2
    assert "unknown backend 'tensorflow'" in capsys.readouterr().err
    assert cli.main(["train", "--steps", "1", "--data", str(tmp_path / "none.txt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["sample", "--checkpoint", str(tmp_path / "none.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--preset", "gpt"])


def test_registry_errors(monkeypatch):
    with pytest.raises(BackendError, match="choose one of numpy, torch, jax"):
        get_backend("mxnet")
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "torch" else real(n, *a))
    with pytest.raises(BackendError, match=r"from the checkout with: pip install 'torch==2.13.0' -e '.\[torch\]'"):
        get_backend("torch")
