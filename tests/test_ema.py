"""The exponential moving average of the weights (shared.ema.ParamEMA, `--ema`; issue 13): its
formula against values worked out by hand, and what a run with it evaluates, samples and saves."""
import json
import math

import numpy as np
import pytest

from makemore import cli
from shared.checkpoint import load_checkpoint
from shared.config import TrainConfig
from shared.ema import EMA_EVERY, ParamEMA


def test_a_fold_weighs_the_new_parameters_by_one_minus_decay_to_the_steps():
    ema = ParamEMA(0.999, {"w": np.zeros(3, np.float64), "b": np.full(2, 4.0, np.float32)})
    ema.update({"w": np.ones(3), "b": np.zeros(2, np.float32)}, 100)
    assert EMA_EVERY == 100 and ema.step == 100
    from makemore.trainer import FAST_CHUNK
    assert EMA_EVERY % FAST_CHUNK == 0   # every fold falls on a fast-path chunk's end
    np.testing.assert_allclose(ema.avg["w"], 1 - 0.999 ** 100, rtol=1e-15)      # 0.0952...
    assert ema.avg["b"].dtype == np.float32
    np.testing.assert_allclose(ema.avg["b"], 4 * 0.999 ** 100, rtol=1e-6)
    ema.update({"w": np.full(3, 2.0), "b": np.zeros(2, np.float32)}, 150)       # 50 steps since
    a = 0.999 ** 50
    np.testing.assert_allclose(ema.avg["w"], a * (1 - 0.999 ** 100) + (1 - a) * 2, rtol=1e-15)
    assert ema.state_dict()["ema_step"] == 150
    with pytest.raises(ValueError, match="last one was at step 150"):
        ema.update({"w": np.ones(3), "b": np.zeros(2, np.float32)}, 150)
    assert ema.due(200) and not ema.due(250) and not ema.due(100)


@pytest.mark.parametrize("decay", [-0.1, 1.0, math.nan])
def test_a_decay_outside_0_1_is_refused(decay):
    with pytest.raises(ValueError, match="ema must be in"):
        TrainConfig(ema=decay)


def test_an_ema_run_reports_and_saves_the_average(tmp_path, names_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--backend", "numpy", "--preset", "wavenet-22k", "--steps", "250", "--optimizer", "adamw",
            "--lr", "0.01", "--lr-final", "0.01", "--schedule", "cosine", "--ema", "0.99", "--data",
            str(names_path), "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["ema"] == 0.99 and m["val_loss"] != m["live_val_loss"]
    assert 1.5 < m["val_loss"] < 3.3 and 1.5 < m["live_val_loss"] < 3.3
    params, md = load_checkpoint(out / "checkpoint.safetensors")
    assert md["val_loss"] == m["val_loss"] and md["state"]["ema_step"].tolist() == [250]
    capsys.readouterr()
    assert cli.main(["evaluate", "--checkpoint", str(out), "--split", "val", "--backend", "torch",
                     "--data", str(names_path)]) == 0
    printed = float(capsys.readouterr().out.split()[2])
    assert abs(printed - m["val_loss"]) <= 5e-5 < abs(printed - m["live_val_loss"])   # printed to 4 places: the average
    assert cli.main([*argv[:-3], "--ema", "1.5", "--out", str(tmp_path / "bad"), "--no-progress"]) == 2
    assert "ema must be in [0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_a_run_recorded_before_ema_existed_resumes_with_an_explicit_ema_0(tmp_path, names_path):
    # a run.json written before --ema had no "ema" setting: its default, 0, is what it ran with
    out = tmp_path / "old"
    assert cli.main(["train", "--backend", "numpy", "--preset", "mlp", "--steps", "200", "--data", str(names_path),
                     "--out", str(out), "--no-progress"]) == 0
    rec = json.loads((out / "run.json").read_text())
    del rec["settings"]["ema"]
    rec["status"] = "interrupted"
    (out / "run.json").write_text(json.dumps(rec))
    assert cli.main(["train", "--resume", str(out), "--ema", "0", "--no-progress"]) == 0
    assert json.loads((out / "run.json").read_text())["status"] == "finished"

