"""Runs a user can trust: a run folder is never replaced silently, and an interrupted run resumes
bitwise identically (parameters, running stats, every per-step loss, metrics, samples) on every
backend and path, with the lecture's recipe and with AdamW + warm-up/cosine + dropout (AdamW's
moments and the dropout stream's position resumed), after a stop request, a Ctrl-C/SIGTERM and
a SIGKILL of a real process."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import BACKENDS, RECIPE, ROOT
from makemore import cli, runs
from makemore.trainer import TrainingInterrupted, train
from shared.checkpoint import load_checkpoint
from shared.config import TrainConfig
from shared.spec import get_spec

STEPS = 450
CFG = TrainConfig(steps=STEPS, lr_decay_step=260)      # the decay after the resume points
RECIPES = {"lecture": CFG,                             # warm-up past the first resume point
           "adamw-cosine-dropout": TrainConfig(steps=STEPS, warmup=120, **RECIPE),
           # an EMA of the weights: a stop at 170 falls between two folds (100, 200)
           "ema": TrainConfig(steps=STEPS, warmup=120, ema=0.99, **RECIPE)}
TIMING = ("seconds", "steps_per_s", "resumed_from")


def _run(backend, data, out, fast, stop_at=None, resume=False, recipe="lecture"):
    done = {"steps": 0}

    def seen(step, loss):
        done["steps"] = step + 1

    def should_stop():   # asked between steps (between 100-step chunks with fast)
        return stop_at is not None and done["steps"] >= stop_at
    return train(backend, get_spec("mlp"), RECIPES[recipe], data, out_dir=out, checkpoint_every=100, fast=fast,
                 n_samples=5, should_stop=should_stop, resume=resume, step_callback=seen,
                 evaluate=False)   # eval is a function of the parameters, compared bitwise


def _same(a, b):
    np.testing.assert_array_equal(a.losses, b.losses)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=k)
    assert (a.train_loss, a.val_loss, a.samples) == (b.train_loss, b.val_loss, b.samples)
    ma = {k: v for k, v in a.metrics().items() if k not in TIMING}
    mb = {k: v for k, v in b.metrics().items() if k not in TIMING}
    assert ma == mb


_BASE: dict = {}


def _uninterrupted(backend, fast, data, tmp_path_factory, recipe="lecture"):
    key = (backend, fast, recipe)
    if key not in _BASE:
        _BASE[key] = _run(backend, data, tmp_path_factory.mktemp("base"), fast, recipe=recipe)
    return _BASE[key]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast"])
@pytest.mark.parametrize("recipe,stop_at", [("lecture", 50), ("lecture", 170), ("adamw-cosine-dropout", 170),
                                            ("ema", 170)],
                         ids=["before-first-checkpoint", "between-checkpoints", "adamw-cosine-dropout", "ema"])
def test_a_stopped_run_resumes_bitwise(backend, fast, recipe, stop_at, data3, tmp_path, tmp_path_factory):
    base = _uninterrupted(backend, fast, data3, tmp_path_factory, recipe)
    with pytest.raises(TrainingInterrupted) as e:
        _run(backend, data3, tmp_path, fast, stop_at=stop_at, recipe=recipe)
    step = e.value.step
    assert step == (stop_at if not fast else -(-stop_at // 100) * 100)   # fast: at a chunk's end
    _, md = load_checkpoint(e.value.checkpoint)
    assert md["step"] == step and len(md["state"]["losses"]) == step
    np.testing.assert_array_equal(md["state"]["losses"], base.losses[:step])
    if recipe != "lecture":   # AdamW's moments are in the checkpoint, in canonical form
        assert {k for k in md["state"] if k.startswith("opt.exp_avg")} == {
            f"opt.{s}.{n}" for s in ("exp_avg", "exp_avg_sq") for n in ("0.weight", "2.weight", "3.gamma",
                                                                      "3.beta", "5.weight", "5.bias")}
    if recipe == "ema":   # the checkpoint holds the average; the live weights are run state
        params, _ = load_checkpoint(e.value.checkpoint)
        assert md["state"]["ema_step"].tolist() == [100 if not fast else 200]
        assert not np.array_equal(params["2.weight"], md["state"]["live.2.weight"])
        assert {k[5:] for k in md["state"] if k.startswith("live.")} == set(params)
    res = _run(backend, data3, tmp_path, fast, resume=True, recipe=recipe)
    assert res.resumed_from == step
    _same(res, base)


def test_a_checkpoint_of_another_run_is_refused(data3, tmp_path):
    with pytest.raises(TrainingInterrupted):
        _run("numpy", data3, tmp_path, False, stop_at=120)
    other = TrainConfig(steps=STEPS, lr_decay_step=250)
    with pytest.raises(ValueError, match="does not belong to this run: config"):
        train("numpy", get_spec("mlp"), other, data3, out_dir=tmp_path, resume=True)


# ---- the command line: run folders are never replaced silently ----

def _train_argv(data, out, *extra):
    return ["train", "--backend", "numpy", "--preset", "mlp", "--steps", "300", "--checkpoint-every",
            "100", "--data", str(data), "--out", str(out), "--no-progress", *extra]


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_folder_holding_a_run_is_refused_and_unchanged(tmp_path, names_path, capsys):
    out = tmp_path / "run"
    assert cli.main(_train_argv(names_path, out)) == 0
    rec = json.loads((out / "run.json").read_text())
    assert rec["status"] == "finished" and rec["command"].startswith("makemore train --backend numpy")
    assert rec["config"]["steps"] == 300 and len(rec["data"]["sha256"]) == 64
    before = _snapshot(out)
    capsys.readouterr()
    for argv in (_train_argv(names_path, out), _train_argv(names_path, out, "--steps", "100"),
                 ["train", "--backend", "torch", "--preset", "mlp", "--out", str(out), "--data", str(names_path)]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "holds a finished numpy mlp run" in err and "--overwrite" in err and "--out" in err, err
        assert len(err.splitlines()) == 1
    assert cli.main(["train", "--resume", str(out)]) == 2
    assert "finished" in capsys.readouterr().err
    assert _snapshot(out) == before
    assert cli.main(_train_argv(names_path, out, "--steps", "100", "--overwrite")) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 100


def test_the_recipe_flags_train_and_are_recorded(tmp_path, names_path, capsys):
    out = tmp_path / "run"
    flags = ["--optimizer", "adamw", "--schedule", "cosine", "--warmup", "30", "--weight-decay", "0.1",
             "--dropout", "0.1", "--lr", "0.01", "--lr-final", "0.001"]
    assert cli.main(_train_argv(names_path, out, *flags)) == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    assert (m["optimizer"], m["schedule"], m["warmup"], m["weight_decay"], m["dropout"]) == (
        "adamw", "cosine", 30, 0.1, 0.1)
    assert m["loss"][-1] < m["loss"][0] and m["val_loss"] < 3.0
    rec = json.loads((out / "run.json").read_text())
    assert rec["config"]["optimizer"] == "adamw" and rec["settings"]["dropout"] == 0.1


def test_no_option_may_be_abbreviated(tmp_path, names_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--step", "100", "--out", str(tmp_path / "x"), "--data", str(names_path)])
    err = capsys.readouterr().err
    # one line, in the command's own words (the parser of `train`, not the top-level one)
    assert e.value.code == 2 and err.startswith("makemore train: error: unrecognized arguments: --step 100"), err
    assert err.count("\n") == 1 and "see makemore train -h" in err, err
    assert not (tmp_path / "x").exists()


def test_resume_refuses_another_command_or_data(tmp_path, names_path, capsys):
    out = tmp_path / "run"
    (out).mkdir()
    (out / "run.json").write_text(json.dumps({
        "status": "interrupted", "backend": "numpy", "preset": "mlp", "command": "makemore train",
        "settings": {**cli.RUN_DEFAULTS, "preset": "mlp", "steps": 300},
        "config": {"steps": 300}, "data": {"path": str(names_path), "sha256": "0" * 64}}))
    before = _snapshot(out)
    assert cli.main(["train", "--resume", str(out), "--steps", "400"]) == 2
    err = capsys.readouterr().err
    assert "steps: the run has 300, the command gives 400" in err
    assert cli.main(["train", "--resume", str(out), "--backend", "torch"]) == 2
    assert "backend: the run has 'numpy', the command gives 'torch'" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "was trained on" in err and "sha256 000000000000" in err
    assert _snapshot(out) == before


def test_batch_size_one_fails_before_anything_is_written(tmp_path, names_path, capsys):
    out = tmp_path / "run"
    assert cli.main(_train_argv(names_path, out, "--batch-size", "1")) == 2
    cap = capsys.readouterr()
    assert "writing to" not in cap.out and "batch size 1" in cap.err
    assert not out.exists()


def test_sample_accepts_a_run_folder(tmp_path, names_path, capsys):
    out = tmp_path / "run"
    assert cli.main(_train_argv(names_path, out)) == 0
    names = (out / "samples.txt").read_text().split()
    capsys.readouterr()
    assert cli.main(["sample", "--checkpoint", str(out), "--backend", "numpy"]) == 0
    assert capsys.readouterr().out.split() == names


def test_a_parameters_only_checkpoint_still_samples(tmp_path, names_path, capsys):
    # format makemore-ports/1 (before run state): parameters and metadata only
    from safetensors.numpy import save_file
    from shared.params import init_params
    spec = get_spec("mlp")
    md = {"spec": spec.to_json(), "vocab": json.dumps(".abcdefghijklmnopqrstuvwxyz"), "dtype": "float32",
          "format": "makemore-ports/1", "step": "100", "backend": json.dumps("torch")}
    save_file(init_params(spec, 0), str(tmp_path / "old.safetensors"), metadata=md)
    assert cli.main(["sample", "--checkpoint", str(tmp_path / "old.safetensors"), "--backend", "numpy",
                     "-n", "3"]) == 0
    assert len(capsys.readouterr().out.split()) == 3


# ---- real processes: SIGINT and SIGKILL ----

def _spawn(argv, env=None):
    return subprocess.Popen([sys.executable, "-m", "makemore", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def _wait_for_checkpoint(out, proc, min_step, timeout=120):
    from shared.checkpoint import read_metadata
    t0 = time.time()
    while time.time() - t0 < timeout:
        ck = out / "checkpoint.safetensors"
        if ck.exists():
            try:
                if read_metadata(ck)["step"] >= min_step:
                    return
            except ValueError:
                pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("no checkpoint in time")


@pytest.mark.parametrize("backend,fast", [("numpy", False), ("jax", True)])
def test_sigkill_at_an_arbitrary_moment_then_resume_is_bitwise(backend, fast, tmp_path, names_path):
    if backend not in BACKENDS:
        pytest.skip(f"{backend} not installed")
    argv = ["train", "--backend", backend, "--preset", "mlp", "--steps", "1500", "--checkpoint-every",
            "200", "--data", str(names_path), "--no-progress", *(["--fast"] if fast else [])]
    ref, out = tmp_path / "ref", tmp_path / "killed"
    p = _spawn([*argv, "--out", str(ref)])
    assert p.wait(timeout=300) == 0, p.communicate()
    p = _spawn([*argv, "--out", str(out)])
    _wait_for_checkpoint(out, p, 200)
    time.sleep(np.random.default_rng().uniform(0, 0.3))       # somewhere past the first checkpoint
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    p = _spawn(["train", "--resume", str(out), "--no-progress"])
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, stderr
    assert "resuming" in stdout and "from step " in stdout, stdout   # names the step it goes on from
    a, b = load_checkpoint(ref / "checkpoint.safetensors"), load_checkpoint(out / "checkpoint.safetensors")
    for k in a[0]:
        np.testing.assert_array_equal(a[0][k], b[0][k], err_msg=k)
    np.testing.assert_array_equal(a[1]["state"]["losses"], b[1]["state"]["losses"])
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (ref, out))
    assert {k: v for k, v in ma.items() if k not in TIMING} == {k: v for k, v in mb.items() if k not in TIMING}
    assert (ref / "samples.txt").read_text() == (out / "samples.txt").read_text()
    assert json.loads((out / "run.json").read_text())["status"] == "finished"


def test_ctrl_c_closes_the_bar_then_names_the_checkpoint_and_the_resume_command(tmp_path, names_path):
    out = tmp_path / "run"
    p = _spawn(["train", "--backend", "numpy", "--preset", "mlp", "--steps", "100000", "--checkpoint-every",
                "200", "--data", str(names_path), "--out", str(out)])
    _wait_for_checkpoint(out, p, 200)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 130
    last = stderr.rstrip().splitlines()[-2:]
    assert last[0].startswith("makemore train: interrupted after step "), stderr
    step = int(last[0].split("after step ")[1].split()[0])
    assert f"holds step {step}" in last[0]
    assert last[1] == f"resume with: makemore train --resume {out}"
    from shared.checkpoint import read_metadata
    assert read_metadata(out / "checkpoint.safetensors")["step"] == step
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"


def test_a_climbing_loss_warns_and_is_recorded(tmp_path, names_path, capsys):
    out = tmp_path / "run"
    assert cli.main(_train_argv(names_path, out, "--lr", "100", "--lr-final", "100")) == 0
    err = capsys.readouterr().err
    assert "the run is diverging; lower --lr" in err
    m = json.loads((out / "metrics.json").read_text())
    assert m["warnings"] and "diverging" in m["warnings"][0]
    assert json.loads((out / "run.json").read_text())["warnings"] == m["warnings"]


def test_output_into_a_closed_pipe_is_not_a_traceback(tmp_path, names_path):
    argv = _train_argv(names_path, tmp_path / "run")
    p = subprocess.run(f"{sys.executable} -m makemore {' '.join(argv)} | head -1", shell=True, cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr
    assert p.stdout.startswith("numpy mlp: 12,097 parameters")


def _state(pid):
    # the process state letter of proc(5), read here (not through makemore.runs)
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux's /proc")
def test_a_killed_process_not_yet_reaped_or_a_reused_pid_does_not_hold_the_run():
    # a zombie (SIGKILLed, its parent has not called wait() yet) answers os.kill(pid, 0), and a
    # pid can be given to a new process: neither is the run's trainer any more
    p = subprocess.Popen(["sleep", "30"])
    try:
        rec = {"pid": p.pid, "host": socket.gethostname(), "pid_space": runs.pid_space(),
               "pid_start": runs.proc_start(p.pid)}
        assert runs._alive(rec)                                   # running: it holds the run
        assert not runs._alive({**rec, "pid_start": "1"})         # same pid, another process
        assert not runs._alive({**rec, "pid_space": "elsewhere:boot:1"})  # another machine's pid
        p.send_signal(signal.SIGKILL)
        t0 = time.time()
        while _state(p.pid) != "Z" and time.time() - t0 < 10:
            time.sleep(0.01)
        assert _state(p.pid) == "Z"               # killed, not reaped: a zombie
        assert not runs._alive(rec)
    finally:
        p.kill()
        p.wait()
    assert not runs._alive(rec)                                   # reaped: gone
