"""`makemore sweep`: a study (makemore/study.py) searched with Optuna, ask-and-tell, one run folder
per trial.

- Storage: an SQLite file `runs/studies/NAME/study.db` by default; `--storage URL` takes any
  Optuna RDB URL (postgresql://user:pass@host/db, mysql://..., sqlite:///path) or
  `journal:PATH` (Optuna's JournalFileBackend). Workers started with the same command on
  several machines against one server join one study.
- Workers: `--workers N` worker processes on this machine (default one per available core),
  each pinned to its own core (os.sched_setaffinity) and running on one thread
  (MAKEMORE_THREADS=1; XLA_FLAGS for JAX). Each worker asks for a trial, trains it and tells
  the result until the study holds `n_trials` trials (trials that trained: complete, pruned,
  diverged or failed with an error; trials of killed workers and those rejected for
  max_params do not count).
- A trial is a run folder of the run store (makemore/runs.py): runs/studies/NAME/trial-0007/
  with run.json (the `makemore train` command that reproduces it), checkpoint, metrics, plot,
  samples. Val loss is reported at `reports` evenly spaced points (the last is the end of
  training), so the pruner (median by default) stops hopeless trials; a pruned trial's folder
  keeps its checkpoint (status "pruned").
- Dead workers: a worker records its host, pid, the pid's start time and its pid space (kernel
  boot and pid namespace) on its trial; any worker in the same pid space marks the RUNNING
  trials of dead processes FAIL before it asks for a new one. RDB storages also get a heartbeat (heartbeat_interval / grace_period), which
  fails the trials of workers that died on other machines. SQLite, PostgreSQL and the journal
  file are transactional: a SIGKILL at any moment leaves the study whole.

Source: docs/design.md, "Runs, studies and the harness"; Optuna docs, "Ask-and-Tell Interface",
"Easy Parallelization", optuna.storages.RDBStorage / JournalStorage.
"""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import asdict
from pathlib import Path

from shared.config import preset_recipe
from shared.threads import XLA_ONE_THREAD

from . import runs
from .study import CHOICES, CONDITIONS, LECTURE, Study, config, definition_json

STUDIES_DIR = Path("runs/studies")
HEARTBEAT_S, GRACE_S = 10, 60     # RDB heartbeat: a trial silent for GRACE_S is failed
MAX_ERRORS = 3                    # a worker stops after this many trials in a row fail with an error
MAX_REJECTED = 1000               # ... or after this many samples in a row are over max_params
# trial outcomes (user attr "outcome") that count towards n_trials besides COMPLETE and PRUNED
COUNTED_FAILURES = ("diverged", "error")


class SweepError(ValueError):
    """A sweep that cannot start or go on (storage, study, folders): one line, exit status 2."""


# ---------------------------------------------------------------- storage and study


def fastest_backend() -> str:
    """The fastest installed backend on a CPU (bench/README.md): jax, then torch, then numpy."""
    from .registry import available_backends
    have = available_backends()
    for b in ("jax", "torch", "numpy"):
        if b in have:
            return b
    return "numpy"


def study_dir(st_name: str, out: str | Path | None = None) -> Path:
    """The folder of a study's trials (and its default storage): runs/studies/NAME."""
    return Path(out) if out is not None else STUDIES_DIR / st_name


def default_storage(folder: Path) -> str:
    return f"sqlite:///{(folder / 'study.db').resolve()}"


def _shown(url: str) -> str:
    # a URL as it may be printed: without its password
    if "://" in url and "@" in url:
        head, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        if ":" in cred:
            return f"{head}://{cred.split(':', 1)[0]}:***@{host}"
    return url


def open_storage(url: str):
    """An Optuna storage for `url`: `journal:PATH` (JournalFileBackend) or an RDB URL (with a
    heartbeat; SQLite waits up to 60 s for a lock, PostgreSQL 10 s for a connection).

    Raises SweepError (one line, no password) when it cannot be opened or reached."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)   # the sweep prints its own lines
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage
        path = Path(url[len("journal:"):])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        except Exception as e:  # noqa: BLE001  (any failure is the storage's, reported in one line)
            raise SweepError(f"cannot open the journal storage {path}: {_first_line(e)}") from None
    kwargs: dict = {}
    given = url
    if url.startswith("sqlite:"):
        kwargs = {"connect_args": {"timeout": 60}}
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    elif url.startswith(("postgresql", "postgres")):
        kwargs = {"connect_args": {"connect_timeout": 10}}
        url = _postgres_driver(url)
    last = None
    for attempt in range(3):   # workers starting at once on a fresh database race to create its tables
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S,
                                                  grace_period=GRACE_S)
        except Exception as e:  # noqa: BLE001
            last = e
            if "connect" in str(e).lower() or "No module" in str(e) or "Could not parse" in str(e):
                break
            time.sleep(0.5 + attempt)
    raise SweepError(f"cannot open the storage {_shown(given)}: {_first_line(last)}")


def _postgres_driver(url: str) -> str:
    # SQLAlchemy 2.1 takes postgresql:// to mean psycopg 3; the project installs psycopg2-binary
    import importlib.util
    scheme, rest = url.split("://", 1)
    if "+" in scheme or importlib.util.find_spec("psycopg") is not None:
        return url
    return f"postgresql+psycopg2://{rest}" if importlib.util.find_spec("psycopg2") else url


def _first_line(e: BaseException | None) -> str:
    text = str(getattr(e, "orig", None) or e).strip()
    return (text.splitlines() or [type(e).__name__])[0]


def _sampler(st: Study, worker: int):
    import optuna
    s = st.sampler
    seed = s.get("seed")
    seed = None if seed is None else seed + worker   # the same seed in every worker: the same trials
    if s.get("kind", "tpe") == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.get("n_startup_trials", 5))


def _pruner(st: Study):
    import optuna
    p = st.pruner
    kind = p.get("kind", "median")
    common = {"n_startup_trials": p.get("n_startup_trials", 3), "n_warmup_steps": p.get("n_warmup_steps", 0)}
    if kind == "none":
        return optuna.pruners.NopPruner()
    if kind == "percentile":
        return optuna.pruners.PercentilePruner(float(p.get("percentile", 50.0)), **common)
    return optuna.pruners.MedianPruner(**common)


def open_study(st: Study, storage, url: str, folder: Path, create: bool = True, worker: int = 0):
    """The Optuna study `st.name` in `storage`, created (minimise val loss) if `create` and
    absent. Its definition (search space, fixed settings, backend, pruner) is stored with it, and
    a study of that name with another definition is refused, unchanged.

    Raises SweepError: another definition; a new study whose folder holds trial folders."""
    import optuna
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if st.name not in names:
        if not create:
            raise SweepError(f"no study {st.name!r} in {_shown(url)}")
        leftovers = sorted(p.name for p in folder.glob("trial-*")) if folder.is_dir() else []
        if leftovers:
            raise SweepError(f"{folder} holds {len(leftovers)} trial folders ({leftovers[0]}, ...) but "
                             f"{_shown(url)} has no study {st.name!r}: move them aside or use --out")
    if st.name in names:   # load, not create: nothing is written before the definition is checked
        study = optuna.load_study(study_name=st.name, storage=storage, sampler=_sampler(st, worker),
                                  pruner=_pruner(st))
    else:
        study = optuna.create_study(storage=storage, study_name=st.name, direction="minimize",
                                    sampler=_sampler(st, worker), pruner=_pruner(st), load_if_exists=True)
    want = definition_json(st)
    have = study.user_attrs.get("definition")
    if have is None:
        study.set_user_attr("definition", want)
        study.set_user_attr("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
    elif have != want:
        old, new = json.loads(have), json.loads(want)
        diff = [k for k in new if old.get(k) != new.get(k)]
        raise SweepError(f"study {st.name!r} in {_shown(url)} was created with another definition "
                         f"({', '.join(diff)} differ); nothing was changed. Give the changed study "
                         "another name")
    return study


# ---------------------------------------------------------------- processes


def fail_dead_trials(study, storage, log=None) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker is gone: by pid for workers of this machine (the
    same pid_space), by heartbeat on an RDB storage. Returns the trial numbers failed here."""
    import optuna
    from optuna.trial import TrialState
    here, failed = runs.pid_space(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        a = t.user_attrs
        if a.get("pid_space") != here or not a.get("pid") or runs.process_alive(int(a["pid"]), a.get("pid_start")):
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "outcome", "worker died")
            storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
            continue   # another worker failed it first
        failed.append(t.number)
        if log:
            log(f"trial {t.number}: its worker (pid {a['pid']}) is gone; marked failed "
                f"(its run folder {a.get('run', '?')} stays resumable)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)   # heartbeats (RDB): workers of other hosts
    return failed


def counted(t) -> bool:
    """Whether a trial counts towards n_trials: it trained (complete, pruned, diverged, error)."""
    from optuna.trial import TrialState
    outcome = t.user_attrs.get("outcome", "")
    if t.state == TrialState.COMPLETE:
        return True
    if t.state == TrialState.PRUNED:
        return outcome != "over max_params"
    return t.state == TrialState.FAIL and outcome.split(":")[0] in COUNTED_FAILURES


class _Heartbeat:
    """Records the trial's heartbeat every HEARTBEAT_S seconds on an RDB storage (Study.optimize
    does this itself; ask-and-tell must)."""

    def __init__(self, storage, trial_id: int):
        # RDBStorage has the heartbeat methods; the journal has none (dead workers: by pid only)
        self.on = hasattr(storage, "record_heartbeat") and storage.get_heartbeat_interval() is not None
        self.storage, self.trial_id, self.done = storage, trial_id, threading.Event()

    def _beat(self):
        while not self.done.wait(HEARTBEAT_S):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # noqa: BLE001  (a missed beat: the next one retries)
                pass

    def __enter__(self):
        if self.on:
            self.storage.record_heartbeat(self.trial_id)
            self.thread = threading.Thread(target=self._beat, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()


# ---------------------------------------------------------------- one trial


def sample_values(st: Study, trial) -> dict:
    """The searched values of one trial: categorical ones first, so that a conditional
    hyperparameter (weight_decay, warmup, lr_decay_step) is sampled only where it applies."""
    values: dict = {}
    for p in sorted(st.space, key=lambda p: p.name not in CHOICES):
        cond = CONDITIONS.get(p.name)
        if cond is not None:
            have = values.get(cond[0], st.fixed.get(cond[0], LECTURE.get(cond[0])))
            if have != cond[1]:
                continue
        values[p.name] = p.suggest(trial)
    return values


def train_argv(settings: dict, backend: str, out: Path, data: str | None = None) -> list[str]:
    """The `makemore train` arguments that run a trial's settings into `out` (floats exactly:
    repr round-trips)."""
    argv = ["train", "--backend", backend, "--preset", settings["preset"], "--steps", str(settings["steps"])]
    if settings["fast"]:
        argv.append("--fast")
    flags = {"batch_size": "--batch-size", "seed": "--seed", "dtype": "--dtype", "bn": "--bn",
             "lr": "--lr", "lr_final": "--lr-final", "lr_decay_step": "--lr-decay-step",
             "optimizer": "--optimizer", "schedule": "--schedule", "warmup": "--warmup",
             "weight_decay": "--weight-decay", "dropout": "--dropout", "ema": "--ema", "n_embd": "--n-embd",
             "n_hidden": "--n-hidden"}
    defaults = {**LECTURE, "dtype": "float32", "bn": "lecture"}
    explicit = bool(preset_recipe(settings["preset"]))   # a preset with its own recipe: every flag spelled out
    for k, flag in flags.items():
        v = settings[k]
        if (explicit or v != defaults[k]) and v is not None:
            argv += [flag, repr(v) if isinstance(v, float) else str(v)]
    if settings["bn_per_position"]:
        argv.append("--bn-per-position")
    if data is not None:
        argv += ["--data", str(data)]
    return argv + ["--out", str(out), "--no-progress"]


def lecture_diff(settings: dict) -> str:
    """The settings that differ from the lecture's recipe, e.g. 'lr=0.251 steps=3000'."""
    out = []
    for k, v in LECTURE.items():
        s = settings.get(k, v)
        if k == "lr_final" and math.isclose(s, 0.1 * settings.get("lr", 0.1), rel_tol=1e-9):
            continue   # the lecture's ratio, lr / 10
        if s != v and s is not None:
            out.append(f"{k}={_fmt(s)}")
    return " ".join(out) or "(the lecture's recipe)"


def _fmt(v) -> str:
    # 3 significant digits, more where they would round the value to a round one (ema 0.9999, not 1)
    if not isinstance(v, float):
        return str(v)
    s = f"{v:.3g}"
    return f"{v:.6g}" if float(s) != v and float(s) in (0.0, 1.0) else s


class _Trainer:
    """What a worker keeps between trials: the backend and the datasets per block size."""

    def __init__(self, st: Study, backend: str, folder: Path, log):
        self.st, self.backend, self.folder, self.log = st, backend, folder, log
        self.data: dict = {}

    def dataset(self, block_size: int):
        from shared.data import load_dataset
        if block_size not in self.data:
            self.data[block_size] = load_dataset(block_size, self.st.data)
        return self.data[block_size]

    def run(self, study, storage, trial, stop, worker: int) -> str:
        """Sample, train and tell one trial; returns its outcome ('complete', 'pruned',
        'over max_params', 'diverged', 'error: ...', 'interrupted')."""
        from optuna.trial import TrialState
        from shared.data import find_names_file
        from shared.params import num_params
        from .registry import get_backend
        from .trainer import TrainingDiverged, TrainingInterrupted, train, write_run
        st, n = self.st, trial.number
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid_space", runs.pid_space())
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("pid_start", runs.proc_start(os.getpid()))
        trial.set_user_attr("worker", worker)
        values = sample_values(st, trial)
        try:
            settings = st.settings(values)
            data = self.dataset(st.spec(settings).block_size)
            spec = st.spec(settings, data.vocab.vocab_size)
            cfg = config(settings)
            spec.check_train_batch(cfg.batch_size)
        except ValueError as e:
            return self._tell_failed(study, trial, f"error: {e}")
        params = num_params(spec)
        trial.set_user_attr("params", params)
        trial.set_user_attr("settings", json.dumps(settings, sort_keys=True))
        trial.set_user_attr("diff", lecture_diff(settings))
        if st.max_params is not None and params > st.max_params:
            trial.set_user_attr("outcome", "over max_params")
            study.tell(trial, state=TrialState.PRUNED)
            return "over max_params"
        folder = self.folder / f"trial-{n:04d}"
        argv = train_argv(settings, self.backend, folder, st.data)
        data_path = find_names_file(st.data)
        try:
            runs.prepare_new(folder, overwrite=False)
        except runs.RunFolderError as e:
            self._tell_failed(study, trial, f"error: {e}")
            raise SweepError(str(e)) from None
        command = runs.command_line(argv)
        record = {"command": command, "argv": argv, "backend": self.backend, "preset": settings["preset"],
                  "settings": settings, "config": asdict(cfg), "spec": spec.to_json(),
                  "data": {"path": str(Path(data_path).resolve()), "sha256": runs.file_sha256(data_path)},
                  "checkpoint_every": 10_000, "resumed_with": None,
                  "study": {"name": st.name, "trial": n}}
        runs.start(folder, record)
        trial.set_user_attr("run", str(folder.resolve()))
        trial.set_user_attr("command", command)
        B = get_backend(self.backend)
        R = st.reports
        points = [max(1, round(cfg.steps * j / R)) for j in range(1, R)]   # intermediate reports
        state = {"model": None, "next": 0, "pruned": None}

        def on_start(model, opt):
            state["model"] = model

        def step_callback(step, loss):
            done, j = step + 1, None
            while state["next"] < len(points) and done >= points[state["next"]]:
                state["next"] += 1
                j = state["next"]
            if j is None:
                return
            val = float(B.evaluate(state["model"], *data.val))
            trial.report(val, j)
            if trial.should_prune():
                state["pruned"] = (j, done, val)

        t0 = time.perf_counter()
        try:
            with _Heartbeat(storage, trial._trial_id):
                res = train(self.backend, spec, cfg, data, out_dir=folder, checkpoint_every=10_000,
                            fast=settings["fast"], on_start=on_start, step_callback=step_callback,
                            should_stop=lambda: stop() or state["pruned"] is not None)
        except TrainingInterrupted as e:
            trial.set_user_attr("seconds", time.perf_counter() - t0)
            if state["pruned"] is not None:
                j, done, val = state["pruned"]
                runs.mark(folder, "pruned", step=e.step, val_loss=val)
                trial.set_user_attr("outcome", f"pruned at report {j} (step {done})")
                study.tell(trial, state=TrialState.PRUNED)
                return "pruned"
            runs.mark(folder, "interrupted", step=e.step)
            trial.set_user_attr("outcome", "interrupted")
            study.tell(trial, state=TrialState.FAIL)
            return "interrupted"
        except KeyboardInterrupt:
            runs.mark(folder, "interrupted")
            trial.set_user_attr("outcome", "interrupted")
            study.tell(trial, state=TrialState.FAIL)
            raise
        except TrainingDiverged as e:
            runs.mark(folder, "diverged", step=e.step)
            trial.set_user_attr("seconds", time.perf_counter() - t0)
            return self._tell_failed(study, trial, f"diverged: {e}")
        except ValueError as e:   # e.g. a recipe the backends refuse
            runs.mark(folder, "error", error=str(e))
            return self._tell_failed(study, trial, f"error: {e}")
        write_run(res, folder)
        runs.mark(folder, "finished", train_loss=res.train_loss, val_loss=res.val_loss, warnings=res.warnings)
        trial.set_user_attr("train_loss", res.train_loss)
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        trial.set_user_attr("outcome", "complete")
        trial.report(res.val_loss, R)
        study.tell(trial, res.val_loss)
        return "complete"

    def _tell_failed(self, study, trial, outcome: str) -> str:
        from optuna.trial import TrialState
        trial.set_user_attr("outcome", outcome[:500])
        study.tell(trial, state=TrialState.FAIL)
        return outcome


def _line(storage, trial_id: int, outcome: str, worker: int) -> str:
    t = storage.get_trial(trial_id)
    a = t.user_attrs
    head = f"trial {t.number} (worker {worker}): "
    if outcome == "complete":
        return (head + f"val {t.value:.4f}  train {a.get('train_loss', float('nan')):.4f}  "
                f"{a.get('params', 0):,} params  {a.get('seconds', 0):.1f} s  {a.get('diff', '')}")
    if outcome == "pruned":
        return head + f"{a.get('outcome')}: val {t.intermediate_values[max(t.intermediate_values)]:.4f}  {a.get('diff', '')}"
    if outcome == "over max_params":
        return head + f"rejected before training: {a.get('params', 0):,} params  {a.get('diff', '')}"
    return head + outcome


def run_worker(st: Study, url: str, n_trials: int, folder: Path, worker: int = 0, log=None) -> int:
    """One worker: ask, train and tell trials until the study holds n_trials that count.

    Returns 0 (done), 130 (stopped by SIGINT/SIGTERM). Raises SweepError (storage, folders,
    MAX_ERRORS trials in a row failed with an error)."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    log = log or (lambda m: print(m, flush=True))
    storage = open_storage(url)
    study = open_study(st, storage, url, folder, worker=worker)
    backend = st.backend or fastest_backend()
    from .registry import get_backend
    from .trainer import StopFlag
    get_backend(backend)   # an unknown or missing backend fails here, before any trial starts
    trainer = _Trainer(st, backend, folder, log)
    errors = rejected = 0
    with StopFlag() as stop, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        while not stop():
            fail_dead_trials(study, storage, log)
            trials = study.get_trials(deepcopy=False)
            running = sum(t.state == optuna.trial.TrialState.RUNNING for t in trials)
            if sum(counted(t) for t in trials) + running >= n_trials:
                return 0
            trial = study.ask()
            try:
                outcome = trainer.run(study, storage, trial, stop, worker)
            except (KeyboardInterrupt, SweepError):
                raise
            except Exception as e:  # noqa: BLE001  (a backend's crash: the trial fails, the worker goes on)
                outcome = f"error: {type(e).__name__}: {_first_line(e)}"
                try:
                    trainer._tell_failed(study, trial, outcome)
                except Exception:  # noqa: BLE001  (told already, or the storage is gone: re-raise the cause)
                    raise e from None
            log(_line(storage, trial._trial_id, outcome, worker))
            if outcome == "interrupted":
                return 130
            rejected = rejected + 1 if outcome == "over max_params" else 0
            errors = errors + 1 if outcome.startswith("error") else 0
            if errors >= MAX_ERRORS:
                raise SweepError(f"{MAX_ERRORS} trials in a row failed ({outcome}); the worker stops")
            if rejected >= MAX_REJECTED:
                raise SweepError(f"{MAX_REJECTED} samples in a row were over max_params {st.max_params:,}; "
                                 "widen the budget or narrow n_embd/n_hidden")
    return 130


def worker_env(env: dict | None = None) -> dict:
    """The environment of a worker process: one thread for numpy/torch (MAKEMORE_THREADS=1) and
    for XLA, and this checkout on the path."""
    env = dict(os.environ if env is None else env)
    env["MAKEMORE_THREADS"] = "1"
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = "1"
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + XLA_ONE_THREAD).strip()
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def pin_to_core(worker: int) -> int | None:
    """Pin this process to the worker-th available core (round robin); returns the core."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    core = cores[worker % len(cores)]
    os.sched_setaffinity(0, {core})
    return core


def run_sweep(st: Study, url: str, n_trials: int, workers: int, folder: Path) -> int:
    """Start `workers` worker processes on this machine and wait for them; returns 0, 130 when
    interrupted, 1 when a worker failed. The study is opened (and checked) here first."""
    from shared.threads import available_cores
    from .registry import available_backends, get_backend
    if (st.backend or fastest_backend()) not in available_backends():
        get_backend(st.backend)   # BackendError (exit 2, the install hint) before anything is written
    storage = open_storage(url)
    study = open_study(st, storage, url, folder)
    fail_dead_trials(study, storage, lambda m: print(m, flush=True))
    trials = study.get_trials(deepcopy=False)
    done = sum(counted(t) for t in trials)
    backend = st.backend or fastest_backend()
    cores = available_cores()
    print(f"study {st.name}: {backend}{' --fast' if st.fast else ''} {st.preset}, storage {_shown(url)}; "
          f"{done} of {n_trials} trials done; {workers} worker{'s' * (workers != 1)} on "
          f"{min(workers, cores)} of {cores} cores; trials in {folder}", flush=True)
    if workers > cores:
        print(f"warning: {workers} workers share {cores} cores", file=sys.stderr)
    if done >= n_trials:
        return 0
    procs = []
    for k in range(workers):
        cmd = [sys.executable, "-m", "makemore", "sweep", str(st.path), "--storage", url, "--n-trials",
               str(n_trials), "--out", str(folder), "--worker", str(k)]
        # pinned before the interpreter starts, so BLAS and XLA see one core from the first import; in
        # a session of its own, so a Ctrl-C reaches this process only, which stops each worker once
        procs.append(subprocess.Popen(cmd, env=worker_env(), preexec_fn=lambda k=k: pin_to_core(k),
                                      start_new_session=True))
    try:
        codes: list[int | None] = [None] * workers
        while None in codes:   # reap each worker as it ends, and say how a killed one ended
            for k, p in enumerate(procs):
                if codes[k] is None and p.poll() is not None:
                    codes[k] = p.returncode
                    if p.returncode < 0:
                        print(f"worker {k} (pid {p.pid}) was killed by signal {-p.returncode}; the others "
                              "go on and mark its trial failed", file=sys.stderr, flush=True)
            time.sleep(0.2)
    except KeyboardInterrupt:   # Ctrl-C or SIGTERM (cli.main): each worker stops its trial between steps
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=60)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                p.kill()   # a second Ctrl-C, or a worker that does not stop: its trial is failed later
        print("makemore sweep: interrupted; run the same command again to continue the study",
              file=sys.stderr)
        return 130
    if any(c == 130 for c in codes):
        return 130
    return 0 if all(c == 0 for c in codes) else 1


# ---------------------------------------------------------------- the report


def report(name: str, url: str, folder: Path, plots: bool = True, top: int | None = None) -> str:
    """The leaderboard of study `name` (best val loss first), the best trial's command and, with
    `plots`, history.png, parallel.png and importances.png in `folder`. Returns the text."""
    import optuna
    from optuna.trial import TrialState
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise SweepError(f"no study {name!r} in {_shown(url)}") from None
    trials = study.get_trials(deepcopy=False)
    d = json.loads(study.user_attrs.get("definition", "{}"))
    states = {s: sum(t.state == s for t in trials) for s in TrialState}
    lines = [f"study {name} ({_shown(url)}): {len(trials)} trials, {states[TrialState.COMPLETE]} complete, "
             f"{states[TrialState.PRUNED]} pruned, {states[TrialState.FAIL]} failed, "
             f"{states[TrialState.RUNNING]} running; backend {d.get('backend') or 'the fastest installed'}"
             f"{' with --fast' if d.get('fast') else ''}, preset {d.get('preset', '?')}"]

    def key(t):
        order = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1}.get(t.state, 2)
        v = t.value if t.state == TrialState.COMPLETE else (
            t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else math.inf)
        return (order, v, t.number)

    rows = [("#", "trial", "state", "params", "train", "val", "seconds", "config (vs the lecture)")]
    ranked = sorted(trials, key=key)
    for i, t in enumerate(ranked[:top] if top else ranked, 1):
        a = t.user_attrs
        if t.state == TrialState.COMPLETE:
            val = f"{t.value:.4f}"
        elif t.intermediate_values:
            val = f"({t.intermediate_values[max(t.intermediate_values)]:.4f})"
        else:
            val = "-"
        state = t.state.name.lower()
        outcome = a.get("outcome", "")
        if t.state != TrialState.COMPLETE and outcome:
            state = outcome.split(":")[0].split(" at ")[0]
        train = f"{a['train_loss']:.4f}" if a.get("train_loss") is not None else "-"
        rows.append((str(i), str(t.number), state, f"{a['params']:,}" if "params" in a else "-", train, val,
                     f"{a['seconds']:.1f}" if "seconds" in a else "-", a.get("diff", "")))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    for r in rows:
        lines.append("  ".join(x.ljust(w) for x, w in zip(r, widths)) + "  " + r[-1])
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = min(complete, key=lambda t: t.value)
        cmd = best.user_attrs.get("command", "")
        cmd = cmd.rsplit(" --out ", 1)[0] + f" --out runs/{name}-trial-{best.number:04d} --no-progress" \
            if " --out " in cmd else cmd
        lines.append(f"best: trial {best.number}, val {best.value:.4f} "
                     f"(train {best.user_attrs.get('train_loss', float('nan')):.4f}); reproduce it with:")
        lines.append(f"  {cmd}")
    else:
        lines.append("no trial has completed yet")
    if plots:
        lines += write_plots(study, folder)
    return "\n".join(lines)


def write_plots(study, folder: Path) -> list[str]:
    """history.png, parallel.png and importances.png (optuna.visualization.matplotlib) in
    `folder`; returns one line saying what was written or why a plot was skipped."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm
    folder.mkdir(parents=True, exist_ok=True)
    wrote, skipped = [], []
    for fname, fn in (("history.png", ovm.plot_optimization_history),
                      ("parallel.png", ovm.plot_parallel_coordinate),
                      ("importances.png", ovm.plot_param_importances)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = fn(study, target_name="val loss")
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            tmp = folder / f".{fname}.{os.getpid()}.tmp.png"
            fig.savefig(tmp, dpi=100, bbox_inches="tight")
            os.replace(tmp, folder / fname)
            plt.close(fig)
            wrote.append(str(folder / fname))
        except Exception as e:  # noqa: BLE001  (too few trials, one parameter, ...)
            skipped.append(f"{fname} ({_first_line(e)})")
            plt.close("all")
    out = [f"plots: {', '.join(wrote)}"] if wrote else []
    if skipped:
        out.append(f"skipped: {'; '.join(skipped)}")
    return out
