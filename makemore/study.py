"""A study: a named search space over the lecture's training recipe, read from a small TOML file.

    name = "lecture-lr"                 # the study's name (and folder: runs/studies/NAME)
    backend = "jax"                     # optional: default the fastest installed (jax, torch, numpy)
    fast = true                         # optional: the backend's fast path (default true)
    preset = "mlp"                      # a model preset (shared.spec.PRESETS)
    n_trials = 8                        # the target number of trials (--n-trials overrides)
    max_params = 30000                  # optional: a larger model is rejected before training

    [fixed]                             # settings every trial shares (default: the lecture's)
    steps = 3000                        # or `budget`: examples seen, steps = budget // batch_size

    [space]                             # what the sampler chooses, one entry per hyperparameter
    lr = { low = 0.01, high = 1.0, log = true }   # a range (int for int settings; log, step)
    optimizer = ["sgd", "adamw"]                  # a list: categorical choices

    [pruner]                            # optional
    kind = "median"                     # median (default), percentile, none
    reports = 3                         # val loss reported at 1/3, 2/3 and the end of each trial
                                        # (the live weights before the end; with ema, the end is the average)
    n_startup_trials = 3                # median: trials before pruning starts

    [sampler]                           # optional
    kind = "tpe"                        # tpe (default) or random; seed = N

Hyperparameters (in [fixed] or [space]): those of shared.config.TrainConfig (steps, batch_size,
lr, lr_final, lr_decay_step, seed, optimizer, schedule, warmup, weight_decay, dropout, ema), the model
sizes n_embd and n_hidden, and the derived budget (examples seen), lr_final_ratio (lr_final = lr
times it; the default is the lecture's 1/10) and warmup_frac (warmup = warmup_frac * steps).
Conditional ones are only sampled where they apply: weight_decay with optimizer adamw, warmup
with schedule cosine, lr_decay_step with schedule step.

Every check raises StudyError with one line naming the file and the entry; nothing here touches a
storage. Source: docs/design.md, "Runs, studies and the harness".
"""
from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from shared.config import OPTIMIZERS, SCHEDULES, TrainConfig, preset_recipe
from shared.params import num_params
from shared.spec import BN_CONVENTIONS, DTYPES, PRESETS, get_spec

# the lecture's recipe: what a trial uses unless the study says otherwise (makemore train's defaults)
LECTURE = {"steps": 200_000, "batch_size": 32, "seed": 42, "lr": 0.1, "lr_final": 0.01,
           "lr_decay_step": None, "optimizer": "sgd", "schedule": "step", "warmup": 0,
           "weight_decay": 0.0, "dropout": 0.0, "ema": 0.0, "n_embd": None, "n_hidden": None}
INTS = {"steps", "batch_size", "seed", "lr_decay_step", "warmup", "n_embd", "n_hidden", "budget"}
FLOATS = {"lr", "lr_final", "lr_final_ratio", "weight_decay", "dropout", "ema", "warmup_frac"}
CHOICES = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES}
HYPERPARAMETERS = sorted(INTS | FLOATS | set(CHOICES))
# a conditional hyperparameter is sampled (and applies) only where its condition holds
CONDITIONS = {"weight_decay": ("optimizer", "adamw"), "warmup": ("schedule", "cosine"),
              "warmup_frac": ("schedule", "cosine"), "lr_decay_step": ("schedule", "step")}
# bounds every value must respect (TrainConfig and ModelSpec would refuse it later, per trial)
MINIMA = {"steps": 1, "batch_size": 2, "n_embd": 1, "n_hidden": 1, "budget": 2, "lr": 0.0, "lr_final": 0.0,
          "lr_final_ratio": 0.0, "weight_decay": 0.0, "dropout": 0.0, "ema": 0.0, "warmup": 0, "warmup_frac": 0.0,
          "seed": 0, "lr_decay_step": 0}
BELOW = {"dropout": 1.0, "ema": 1.0, "warmup_frac": 1.0}   # exclusive upper bounds
TOP_LEVEL = {"name", "description", "backend", "fast", "preset", "dtype", "bn", "bn_per_position",
             "n_trials", "max_params", "data", "fixed", "space", "pruner", "sampler"}
PRUNERS = ("median", "percentile", "none")
SAMPLERS = ("tpe", "random")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class StudyError(ValueError):
    """A study file that cannot be used; the message is one line naming the file and entry."""


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter: choices (categorical) or a low..high range."""
    name: str
    choices: tuple = ()
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None

    def values(self) -> list:
        """The extreme values (for the checks): every choice, or low and high."""
        return list(self.choices) if self.choices else [self.low, self.high]

    def suggest(self, trial):
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.name in INTS:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1),
                                     log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)


@dataclass(frozen=True)
class Study:
    """A parsed, checked study file. `fixed` and `space` use the hyperparameter names above."""
    name: str
    path: Path | None
    preset: str
    backend: str | None
    fast: bool = True
    dtype: str = "float32"
    bn: str = "lecture"
    bn_per_position: bool = False
    n_trials: int = 20
    max_params: int | None = None
    data: str | None = None
    description: str = ""
    fixed: dict = field(default_factory=dict)
    space: tuple[Param, ...] = ()
    pruner: dict = field(default_factory=dict)
    sampler: dict = field(default_factory=dict)

    @property
    def reports(self) -> int:
        """Evaluation points per trial (the last one is the end of training)."""
        return int(self.pruner.get("reports", 3))

    def definition(self) -> dict:
        """What identifies the study's search (stored with it): a study of the same name must keep
        it; n_trials, description and the data path may change."""
        return {"preset": self.preset, "backend": self.backend, "fast": self.fast, "dtype": self.dtype,
                "bn": self.bn, "bn_per_position": self.bn_per_position, "max_params": self.max_params,
                "fixed": dict(sorted(self.fixed.items())),
                "space": {p.name: _param_dict(p) for p in self.space},
                "pruner": dict(sorted(self.pruner.items())), "sampler": dict(sorted(self.sampler.items()))}

    def settings(self, values: dict) -> dict:
        """The `makemore train` settings (cli.RUN_DEFAULTS keys) of a trial with the searched
        `values` ({name: value}, conditional ones present only where they apply).

        Raises ValueError (TrainConfig's, naming the field) for a combination it refuses."""
        v = {**self.fixed, **values}
        # the preset's own recipe (shared.config.PRESET_RECIPES; {} for the lecture's presets)
        recipe = preset_recipe(self.preset, v.get("steps"))
        s = {**LECTURE, **recipe, "preset": self.preset, "dtype": self.dtype, "bn": self.bn, "fast": self.fast,
             "bn_per_position": self.bn_per_position}
        for k in LECTURE:
            if k in v:
                s[k] = v[k]
        if "budget" in v:
            s["steps"] = max(1, int(v["budget"]) // int(s["batch_size"]))
        if "lr_final" not in v and "lr_final" not in recipe:   # the lecture's ratio (0.1 -> 0.01) unless the study says otherwise
            s["lr_final"] = float(s["lr"]) * float(v.get("lr_final_ratio", 0.1))
        if "warmup_frac" in v and s["schedule"] == "cosine":
            s["warmup"] = int(round(float(v["warmup_frac"]) * s["steps"]))
        for k, (cond, want) in CONDITIONS.items():
            if k in LECTURE and s[cond] != want:
                s[k] = LECTURE[k]   # not applicable: the neutral value (e.g. no weight decay with SGD)
        for k in ("lr", "lr_final", "weight_decay", "dropout", "ema"):
            s[k] = float(s[k])
        base = get_spec(self.preset)
        for k in ("n_embd", "n_hidden"):   # the preset's own size: no flag in the trial's command
            if s[k] == getattr(base, k):
                s[k] = None
        config(s)   # TrainConfig refuses what cannot run
        return s

    def spec(self, settings: dict, vocab_size: int = 27):
        """The model spec of a trial's settings."""
        return get_spec(settings["preset"], vocab_size=vocab_size, dtype=settings["dtype"],
                        bn_convention=settings["bn"], n_embd=settings["n_embd"], n_hidden=settings["n_hidden"],
                        bn_per_position=settings["bn_per_position"])


def config(settings: dict) -> TrainConfig:
    """The TrainConfig of `makemore train` settings."""
    return TrainConfig(**{k: settings[k] for k in ("steps", "batch_size", "lr", "lr_final", "lr_decay_step",
                                                   "seed", "optimizer", "schedule", "warmup",
                                                   "weight_decay", "dropout", "ema")})


def _param_dict(p: Param) -> dict:
    if p.choices:
        return {"choices": list(p.choices)}
    d = {"low": p.low, "high": p.high}
    if p.log:
        d["log"] = True
    if p.step is not None:
        d["step"] = p.step
    return d


def load(path: str | Path) -> Study:
    """Read and check a study file.

    Raises StudyError (one line: the file and what is wrong) for a missing or malformed file,
    an unknown key or hyperparameter, a bad value, an empty range, a budget no configuration
    meets."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise StudyError(f"{path}: no such study file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise StudyError(f"{path}: cannot read it ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise StudyError(f"{path}: not valid TOML: {e}") from None
    return parse(raw, path)


def parse(raw: dict, path: Path | None = None) -> Study:
    """Check a study read from TOML (see :func:`load`)."""
    where = str(path) if path else "study"

    def fail(msg):
        raise StudyError(f"{where}: {msg}")

    unknown = sorted(set(raw) - TOP_LEVEL)
    if unknown:
        fail(f"unknown key {unknown[0]!r}; a study has {', '.join(sorted(TOP_LEVEL))}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        fail(f"name must be a word of letters, digits, '.', '_' or '-' (it names the folder "
             f"runs/studies/NAME), got {name!r}")
    preset = raw.get("preset", "wavenet")
    if preset not in PRESETS:
        fail(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    backend = raw.get("backend")
    if backend is not None and backend not in ("numpy", "torch", "jax"):
        fail(f"unknown backend {backend!r}; choose numpy, torch or jax (or leave it out: the fastest installed)")
    for k, allowed in (("dtype", DTYPES), ("bn", BN_CONVENTIONS)):
        if k in raw and raw[k] not in allowed:
            fail(f"{k} must be one of {', '.join(allowed)}, got {raw[k]!r}")
    for k in ("fast", "bn_per_position"):
        if k in raw and not isinstance(raw[k], bool):
            fail(f"{k} must be true or false, got {raw[k]!r}")
    for k in ("n_trials", "max_params"):
        if k in raw and (not isinstance(raw[k], int) or isinstance(raw[k], bool) or raw[k] < 1):
            fail(f"{k} must be a positive integer, got {raw[k]!r}")
    for k in ("fixed", "space", "pruner", "sampler"):
        if k in raw and not isinstance(raw[k], dict):
            fail(f"[{k}] must be a table")
    fixed, space_raw = dict(raw.get("fixed", {})), dict(raw.get("space", {}))
    for table, entries in (("fixed", fixed), ("space", space_raw)):
        for k in entries:
            if k not in HYPERPARAMETERS:
                fail(f"unknown hyperparameter {k!r} in [{table}]; known: {', '.join(HYPERPARAMETERS)}")
    both = sorted(set(fixed) & set(space_raw))
    if both:
        fail(f"{both[0]!r} is both in [fixed] and in [space]; keep one")
    for k, v in fixed.items():
        _check_value(k, v, f"[fixed] {k}", fail)
    space = tuple(_param(k, v, fail) for k, v in space_raw.items())
    given = set(fixed) | set(space_raw)
    if {"steps", "budget"} <= given:
        fail("give steps or budget (examples seen: steps = budget // batch_size), not both")
    for a, b in (("lr_final", "lr_final_ratio"), ("warmup", "warmup_frac")):
        if {a, b} <= given:
            fail(f"give {a} or {b}, not both")
    # a conditional hyperparameter whose condition is fixed to something else never applies
    for k, (cond, want) in CONDITIONS.items():
        if k in given and cond not in space_raw and fixed.get(cond, LECTURE.get(cond)) != want:
            fail(f"{k} applies only with {cond} {want!r}, and {cond} is "
                 f"{fixed.get(cond, LECTURE.get(cond))!r} here; add {cond} to [space] or [fixed]")
    pruner = dict(raw.get("pruner", {}))
    _check_table(pruner, {"kind": PRUNERS, "reports": int, "n_startup_trials": int, "n_warmup_steps": int,
                          "percentile": float}, "[pruner]", fail)
    if pruner.get("reports", 3) < 1:
        fail(f"[pruner] reports must be >= 1 (evaluation points per trial), got {pruner['reports']}")
    sampler = dict(raw.get("sampler", {}))
    _check_table(sampler, {"kind": SAMPLERS, "seed": int, "n_startup_trials": int}, "[sampler]", fail)
    st = Study(name=name, path=path, preset=preset, backend=backend, fast=raw.get("fast", True),
               dtype=raw.get("dtype", "float32"), bn=raw.get("bn", "lecture"),
               bn_per_position=raw.get("bn_per_position", False), n_trials=raw.get("n_trials", 20),
               max_params=raw.get("max_params"), data=raw.get("data"),
               description=str(raw.get("description", "")), fixed=fixed, space=space, pruner=pruner,
               sampler=sampler)
    _check_budgets(st, fail)
    return st


def _check_table(d: dict, allowed: dict, what: str, fail) -> None:
    for k, v in d.items():
        if k not in allowed:
            fail(f"unknown key {k!r} in {what}; known: {', '.join(allowed)}")
        want = allowed[k]
        if isinstance(want, tuple):
            if v not in want:
                fail(f"{what} {k} must be one of {', '.join(want)}, got {v!r}")
        elif want is float:
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                fail(f"{what} {k} must be a number, got {v!r}")
        elif not isinstance(v, int) or isinstance(v, bool) or v < 0:
            fail(f"{what} {k} must be an integer >= 0, got {v!r}")


def _check_value(k: str, v, what: str, fail) -> None:
    if k in CHOICES:
        if v not in CHOICES[k]:
            fail(f"{what}: {v!r} is not one of {', '.join(CHOICES[k])}")
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (k in INTS and not isinstance(v, int)):
        fail(f"{what}: need {'an integer' if k in INTS else 'a number'}, got {v!r}")
    if not math.isfinite(v) or v < MINIMA[k] or (k in BELOW and v >= BELOW[k]):
        bound = f" and < {BELOW[k]}" if k in BELOW else ""
        fail(f"{what}: {v!r} is out of range (>= {MINIMA[k]}{bound})")


def _param(k: str, v, fail) -> Param:
    what = f"[space] {k}"
    if isinstance(v, dict) and "choices" in v:
        if set(v) != {"choices"}:
            fail(f"{what}: a table with choices has no other keys")
        v = v["choices"]
    if isinstance(v, list):
        if not v:
            fail(f"{what}: empty list of choices")
        if len(set(map(repr, v))) != len(v):
            fail(f"{what}: a choice appears twice in {v!r}")
        for c in v:
            _check_value(k, c, what, fail)
        return Param(k, choices=tuple(v))
    if not isinstance(v, dict):
        fail(f"{what}: give a list of choices or a range {{ low = .., high = .. }}, got {v!r} "
             f"(a single value belongs in [fixed])")
    if k in CHOICES:
        fail(f"{what}: a categorical hyperparameter takes a list of choices, e.g. {list(CHOICES[k])!r}")
    extra = sorted(set(v) - {"low", "high", "log", "step"})
    if extra or "low" not in v or "high" not in v:
        fail(f"{what}: a range is {{ low = .., high = .. }} with optional log = true or step = ..; "
             f"got {v!r}")
    lo, hi, log, step = v["low"], v["high"], v.get("log", False), v.get("step")
    _check_value(k, lo, what + " low", fail)
    _check_value(k, hi, what + " high", fail)
    if not lo < hi:
        fail(f"{what}: empty range: low {lo!r} must be below high {hi!r} (one value belongs in [fixed])")
    if not isinstance(log, bool):
        fail(f"{what}: log must be true or false, got {log!r}")
    if log and lo <= 0:
        fail(f"{what}: a log range needs low > 0, got {lo!r}")
    if step is not None:
        if log:
            fail(f"{what}: give log or step, not both")
        if isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0 \
                or (k in INTS and not isinstance(step, int)):
            fail(f"{what}: step must be a positive {'integer' if k in INTS else 'number'}, got {step!r}")
    return Param(k, low=lo, high=hi, log=log, step=step)


def _extremes(st: Study, name: str) -> list:
    for p in st.space:
        if p.name == name:
            return [x for x in p.values() if x is not None]
    return [st.fixed[name]] if name in st.fixed else []


def _check_budgets(st: Study, fail) -> None:
    # the smallest model of the space: the parameter count grows with both sizes
    base = get_spec(st.preset)
    e = min(_extremes(st, "n_embd") or [base.n_embd])
    h = min(_extremes(st, "n_hidden") or [base.n_hidden])
    smallest = num_params(get_spec(st.preset, n_embd=int(math.ceil(e)), n_hidden=int(math.ceil(h))))
    if st.max_params is not None and smallest > st.max_params:
        fail(f"no configuration meets max_params {st.max_params:,}: the smallest model of the space "
             f"({st.preset}, n_embd {e}, n_hidden {h}) has {smallest:,} parameters")
    budgets = _extremes(st, "budget")
    if budgets:
        b = max(budgets)
        batch = min(_extremes(st, "batch_size") or [LECTURE["batch_size"]])
        if b // batch < 1:
            fail(f"no configuration meets budget {b:,}: it is less than one batch of {batch}")
        steps = b // batch
    else:
        steps = max(_extremes(st, "steps") or [LECTURE["steps"]])
    if steps < st.reports:
        fail(f"[pruner] reports {st.reports} needs at least that many steps per trial; the longest "
             f"trial has {steps}")
    warm = _extremes(st, "warmup")
    if warm and min(warm) > steps:
        fail(f"no configuration meets warmup {min(warm)}: more warm-up steps than the longest "
             f"trial's {steps} steps")


def find(name_or_path: str, studies_dir: str | Path = "studies") -> Path:
    """A study file from a path, or from a name (studies/NAME.toml). Raises StudyError."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.is_file():
        return p
    cand = Path(studies_dir) / f"{name_or_path}.toml"
    if cand.is_file():
        return cand
    raise StudyError(f"{name_or_path}: no such study file (nor {cand})")


def definition_json(st: Study) -> str:
    """The study's definition as canonical JSON (compared when a study is continued)."""
    return json.dumps(st.definition(), sort_keys=True)
