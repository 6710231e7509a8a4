"""`makemore sweep`: studies read from TOML and checked (one-line errors, exit 2, an existing study
never damaged), trials as run folders reproduced by the command the report prints, worker
processes on SQLite with one of them SIGKILLed, and two "machines" sharing one study on a real
PostgreSQL server (.ci/run starts one; in CI the test fails rather than skip without it)."""
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from helpers import ROOT

pytest.importorskip("optuna")   # the `sweep` extra (make test installs it)
from makemore import cli
from makemore import study as studies
from makemore import runs, sweep

SMOKE = ROOT / "studies" / "smoke.toml"
PG = os.environ.get("MAKEMORE_TEST_POSTGRES")


def _toml(tmp_path, text, name="s.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


BASE = 'name = "t"\nbackend = "numpy"\npreset = "mlp"\n'


# ---- the study file ----

@pytest.mark.parametrize("text,msg", [
    (BASE + "[space]\nlearning_rate = { low = 0.01, high = 1.0 }\n", "unknown hyperparameter 'learning_rate' in [space]"),
    (BASE + "[space]\nlr = { low = 0.5, high = 0.5 }\n", "empty range"),
    (BASE + "[space]\nlr = { low = 1.0, high = 0.1 }\n", "empty range"),
    (BASE + "[space]\noptimizer = []\n", "empty list of choices"),
    (BASE + "[space]\noptimizer = ['sgd', 'adam']\n", "'adam' is not one of sgd, adamw"),
    (BASE + "max_params = 1000\n[space]\nn_hidden = { low = 50, high = 300 }\n",
     "no configuration meets max_params 1,000: the smallest model"),
    (BASE + "[fixed]\nbudget = 10\nbatch_size = 32\n", "no configuration meets budget 10"),
    (BASE + "[fixed]\nsteps = 100\nbudget = 3200\n", "give steps or budget"),
    (BASE + "[fixed]\nweight_decay = 0.1\n", "weight_decay applies only with optimizer 'adamw'"),
    (BASE + "[fixed]\nsteps = 2\n", "reports 3 needs at least that many steps"),
    (BASE + "[space]\nlr = { low = 0.0, high = 1.0, log = true }\n", "a log range needs low > 0"),
    (BASE + "[space]\nlr = 0.1\n", "a single value belongs in [fixed]"),
    (BASE + "colour = 'red'\n", "unknown key 'colour'"),
    ('name = "a b"\n', "name must be a word"),
    (BASE + "[pruner]\nkind = 'hyper'\n", "[pruner] kind must be one of median, percentile, none"),
    (BASE + "[space\nlr = 1\n", "not valid TOML"),
])
def test_a_bad_study_is_one_clear_line(tmp_path, text, msg):
    path = _toml(tmp_path, text)
    with pytest.raises(studies.StudyError) as e:
        studies.load(path)
    assert msg in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_settings_budget_ratio_warmup_and_conditions():
    st = studies.parse(studies.tomllib.loads(BASE + """
[fixed]
budget = 64000
[space]
batch_size = [32, 64]
optimizer = ["sgd", "adamw"]
schedule = ["step", "cosine"]
weight_decay = { low = 0.001, high = 0.1, log = true }
warmup_frac = { low = 0.0, high = 0.2 }
"""))
    s = st.settings({"batch_size": 64, "optimizer": "sgd", "schedule": "step", "lr": 0.4})
    assert s["steps"] == 1000 and s["lr_final"] == pytest.approx(0.04) and s["weight_decay"] == 0
    s = st.settings({"batch_size": 32, "optimizer": "adamw", "weight_decay": 0.01, "schedule": "cosine",
                     "warmup_frac": 0.1})
    assert (s["steps"], s["warmup"], s["weight_decay"]) == (2000, 200, 0.01)

    class Fake:   # an optuna trial that records what was asked
        def __init__(self):
            self.asked = []

        def suggest_categorical(self, name, choices):
            self.asked.append(name)
            return choices[0]

        def suggest_float(self, name, low, high, step=None, log=False):
            self.asked.append(name)
            return low

        suggest_int = suggest_float
    t = Fake()
    v = sweep.sample_values(st, t)    # sgd, step: neither weight_decay nor warmup applies
    assert set(v) == {"batch_size", "optimizer", "schedule"}, v


def test_the_trial_command_gives_the_trial_settings():
    st = studies.parse(studies.tomllib.loads(BASE + "[fixed]\nsteps = 300\n"))
    assert st.settings({"n_embd": 10, "n_hidden": 64})["n_embd"] is None   # the preset's size
    s = st.settings({"lr": 0.123456789012345, "n_hidden": 64, "seed": 7})
    argv = sweep.train_argv(s, "numpy", "runs/x")
    args = cli.build_parser().parse_args(argv)
    assert {k: getattr(args, k) for k in cli.RUN_DEFAULTS} == s
    assert "--n-hidden 64" in shlex.join(argv) and "--lr 0.123456789012345" in shlex.join(argv)


def test_an_unreachable_storage_is_one_line_without_the_password(tmp_path, capsys):
    rc = cli.main(["sweep", str(SMOKE), "--storage", "postgresql://u:secret@127.0.0.1:1/db", "--out",
                   str(tmp_path / "s"), "--workers", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "cannot open the storage postgresql://u:***@127.0.0.1:1/db" in err, err
    assert "secret" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s").exists()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_dead_workers_running_trial_is_marked_failed(tmp_path, kind):
    st = studies.load(SMOKE)
    url = sweep.default_storage(tmp_path) if kind == "sqlite" else f"journal:{tmp_path / 'journal.log'}"
    storage = sweep.open_storage(url)
    study = sweep.open_study(st, storage, url, tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    t = study.ask()
    t.set_user_attr("pid_space", runs.pid_space())
    t.set_user_attr("pid", dead.pid)
    t.set_user_attr("pid_start", "1")
    alive = study.ask()
    alive.set_user_attr("pid_space", runs.pid_space())
    alive.set_user_attr("pid", os.getpid())
    alive.set_user_attr("pid_start", runs.proc_start(os.getpid()))
    elsewhere = study.ask()   # another machine (or container) with the same hostname: not ours to judge
    elsewhere.set_user_attr("pid_space", os.uname().nodename + ":other-boot:1")
    elsewhere.set_user_attr("pid", dead.pid)
    assert sweep.fail_dead_trials(study, storage) == [t.number]
    got = {x.number: x for x in study.get_trials()}
    assert got[t.number].state.name == "FAIL" and got[t.number].user_attrs["outcome"] == "worker died"
    assert got[alive.number].state.name == "RUNNING" and got[elsewhere.number].state.name == "RUNNING"
    assert not sweep.counted(got[t.number])


# ---- end to end: worker processes on SQLite, one SIGKILLed ----

def _env(names_path):
    return {**os.environ, "MAKEMORE_DATA": str(names_path), "PYTHONPATH": str(ROOT)}


def _sweep_cmd(*args):
    return [sys.executable, "-m", "makemore", "sweep", *map(str, args)]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, names_path):
    """studies/smoke.toml, 4 trials, 2 worker processes; the worker of the first trial to start
    training is SIGKILLed, the other goes on and finishes the study."""
    out = tmp_path_factory.mktemp("smoke")
    t0 = time.perf_counter()
    proc = subprocess.Popen(_sweep_cmd(SMOKE, "--workers", 2, "--out", out), cwd=ROOT, env=_env(names_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = sweep.default_storage(out)
    killed = None
    deadline = time.time() + 60
    while killed is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
        for f in out.glob("trial-*/run.json"):   # a trial is training: kill its worker
            try:
                rec = json.loads(f.read_text())
            except ValueError:
                continue
            os.kill(rec["pid"], signal.SIGKILL)
            killed = rec["study"]["trial"]
            break
    output, _ = proc.communicate(timeout=240)
    return {"out": out, "url": url, "rc": proc.returncode, "output": output, "killed": killed,
            "seconds": time.perf_counter() - t0}


def test_two_workers_finish_the_study_when_one_is_killed(smoke):
    import optuna
    assert smoke["killed"] is not None, smoke["output"]
    assert smoke["rc"] == 1, smoke["output"]       # a worker died: the parent says so
    study = optuna.load_study(study_name="smoke", storage=smoke["url"])
    trials = study.get_trials()
    assert sum(sweep.counted(t) for t in trials) == 4, smoke["output"]
    dead = [t for t in trials if t.number == smoke["killed"]][0]
    assert dead.state.name == "FAIL" and dead.user_attrs["outcome"] == "worker died"
    assert f"trial {dead.number}: its worker (pid" in smoke["output"]
    rec = json.loads((smoke["out"] / f"trial-{dead.number:04d}" / "run.json").read_text())
    assert rec["status"] == "running"               # its folder stays resumable by hand
    for t in trials:
        if t.state.name in ("COMPLETE", "PRUNED"):
            folder = smoke["out"] / f"trial-{t.number:04d}"
            rec = json.loads((folder / "run.json").read_text())
            assert rec["status"] == ("finished" if t.state.name == "COMPLETE" else "pruned")
            assert rec["command"] == t.user_attrs["command"] and rec["study"] == {"name": "smoke", "trial": t.number}
    assert len({t.user_attrs["pid"] for t in trials}) == 2   # both workers trained
    assert smoke["seconds"] < 120, smoke["seconds"]


def test_running_the_sweep_again_continues_the_study(smoke, names_path, capsys, monkeypatch):
    monkeypatch.setenv("MAKEMORE_DATA", str(names_path))
    assert cli.main(["sweep", str(SMOKE), "--workers", "2", "--out", str(smoke["out"])]) == 0
    out = capsys.readouterr().out
    assert "4 of 4 trials done" in out and "best: trial" in out   # the target is met: no worker starts


def test_sigterm_stops_the_sweep_between_steps_and_fails_its_trial(tmp_path, names_path):
    import optuna
    toml = _toml(tmp_path, BASE.replace('"t"', '"long"') + "[fixed]\nsteps = 50000\n[pruner]\nkind = 'none'\n")
    url = sweep.default_storage(tmp_path)
    proc = subprocess.Popen(_sweep_cmd(toml, "--workers", 1, "--n-trials", 1, "--out", tmp_path), cwd=ROOT,
                            env=_env(names_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, new = time.time() + 60, None
    while new is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        new = 0 if (tmp_path / "trial-0000" / "run.json").exists() else None
    time.sleep(1)   # into the training steps
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert new is not None and proc.returncode == 130, output
    t = optuna.load_study(study_name="long", storage=url).trials[new]
    assert t.state.name == "FAIL" and t.user_attrs["outcome"] == "interrupted", output
    rec = json.loads((tmp_path / f"trial-{new:04d}" / "run.json").read_text())
    assert rec["status"] == "interrupted" and 0 < rec["step"] < 50000, rec
    assert "run the same command again" in output


def test_the_report_and_the_best_trials_command(smoke, names_path, tmp_path, capsys, monkeypatch):
    import optuna
    monkeypatch.setenv("MAKEMORE_DATA", str(names_path))
    assert cli.main(["sweep", "--report", str(SMOKE), "--out", str(smoke["out"])]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[1].split()[:8] == ["#", "trial", "state", "params", "train", "val", "seconds", "config"]
    assert "12,097" in lines[2] and "steps=300 lr=" in lines[2]
    for png in ("history.png", "parallel.png", "importances.png"):
        assert (smoke["out"] / png).stat().st_size > 1000, text
    cmd = lines[lines.index([l for l in lines if l.startswith("best: trial")][0]) + 1].split()
    assert cmd[:2] == ["makemore", "train"]
    best = optuna.load_study(study_name="smoke", storage=smoke["url"]).best_trial
    out = tmp_path / "again"
    argv = cmd[1:]
    argv[argv.index("--out") + 1] = str(out)
    assert cli.main(argv) == 0
    again = json.loads((out / "metrics.json").read_text())
    trial = json.loads((smoke["out"] / f"trial-{best.number:04d}" / "metrics.json").read_text())
    np.testing.assert_array_equal(again["loss"], trial["loss"])        # the same run, step by step
    assert again["val_loss"] == pytest.approx(best.value, rel=1e-6)


def test_a_changed_study_of_the_same_name_is_refused_and_unchanged(smoke, tmp_path, capsys):
    db = smoke["out"] / "study.db"
    before = db.read_bytes()
    changed = _toml(tmp_path, SMOKE.read_text().replace("high = 0.5", "high = 0.9"))
    broken = _toml(tmp_path, SMOKE.read_text() + "\n[space\n", "broken.toml")
    unknown = _toml(tmp_path, SMOKE.read_text().replace("lr =", "lrate ="), "unknown.toml")
    for path, msg in ((changed, "was created with another definition (space differ); nothing was changed"),
                      (broken, "not valid TOML"), (unknown, "unknown hyperparameter 'lrate'")):
        assert cli.main(["sweep", str(path), "--out", str(smoke["out"]), "--workers", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err
    assert db.read_bytes() == before


# ---- two machines, one PostgreSQL study ----

def test_two_machines_share_one_study_on_postgresql(tmp_path, names_path):
    import optuna
    if not PG:
        if os.environ.get("CI") == "true":
            pytest.fail("MAKEMORE_TEST_POSTGRES is not set: .ci/run starts PostgreSQL (.ci/postgres.sh) "
                        "and exports it; the sweep's multi-machine path must be tested in CI")
        pytest.skip("MAKEMORE_TEST_POSTGRES not set (bash -c 'source .ci/postgres.sh; pg_up; ...' starts one)")
    name = f"pg-{uuid.uuid4().hex[:8]}"
    toml = _toml(tmp_path, SMOKE.read_text().replace('name = "smoke"', f'name = "{name}"')
                 .replace("n_trials = 4", "n_trials = 3").replace("steps = 300", "steps = 200"))
    machines = [subprocess.Popen(_sweep_cmd(toml, "--storage", PG, "--workers", 1, "--out", tmp_path / m),
                                 cwd=ROOT, env=_env(names_path), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True) for m in ("a", "b")]
    outs = [m.communicate(timeout=180)[0] for m in machines]
    try:
        assert [m.returncode for m in machines] == [0, 0], outs
        study = optuna.load_study(study_name=name, storage=sweep._postgres_driver(PG))
        trials = study.get_trials()
        n = sum(sweep.counted(t) for t in trials)
        assert 3 <= n <= 4, outs           # two workers may both start a last trial at the same moment
        assert len({t.user_attrs["pid"] for t in trials}) == 2, outs
        folders = {p.name for m in ("a", "b") for p in (tmp_path / m).glob("trial-*")}
        assert folders == {f"trial-{t.number:04d}" for t in trials if "run" in t.user_attrs}
        r = subprocess.run(_sweep_cmd("--report", name, "--storage", PG, "--out", tmp_path / "a"), cwd=ROOT,
                           env=_env(names_path), capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "best: trial" in r.stdout and "makemore:***@" in r.stdout, r.stderr
    finally:
        optuna.delete_study(study_name=name, storage=sweep._postgres_driver(PG))


def test_a_crashing_trial_fails_and_the_worker_goes_on(tmp_path, names_path, monkeypatch):
    import optuna
    monkeypatch.setenv("MAKEMORE_DATA", str(names_path))
    st = studies.parse(studies.tomllib.loads(BASE + "n_trials = 2\n[fixed]\nsteps = 200\n[pruner]\nkind = 'none'\n"))
    calls = {"n": 0}
    real = sweep._Trainer.run

    def crash_once(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("the backend broke")
        return real(self, *a, **kw)
    monkeypatch.setattr(sweep._Trainer, "run", crash_once)
    lines = []
    assert sweep.run_worker(st, sweep.default_storage(tmp_path), 2, tmp_path, log=lines.append) == 0
    trials = optuna.load_study(study_name="t", storage=sweep.default_storage(tmp_path)).get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[0].user_attrs["outcome"] == "error: RuntimeError: the backend broke"
    assert "trial 0 (worker 0): error: RuntimeError: the backend broke" in lines
