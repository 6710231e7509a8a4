"""`makemore`: one entry point for training, sampling, comparing, benchmarking and diagnostics.

    makemore train --backend B --preset wavenet [--steps N] [--batch-size 32] [--seed S]
                   [--dtype float32|float64] [--data PATH] [--out DIR] [--fast]
                   [--overwrite | --resume DIR]
    makemore sample --checkpoint FILE|RUN_DIR [--backend B] [-n 20] [--seed S]
    makemore compare --preset P --steps N [--backends numpy,torch,jax] [--dtype float64] [--out DIR]
    makemore bench [--quick] [--out DIR]
    makemore diagnose --backend B|all --preset P [--steps N] [--out DIR]
    makemore sidebyside [--out PATH]
    makemore sweep STUDY.toml [--storage URL] [--workers N] [--n-trials N] [--out DIR]
    makemore sweep --report STUDY.toml|NAME [--storage URL]
    makemore reproduce [--backend B] [--seeds K] [--quick] [--plain] [--rows R,..] [--out DIR]

This is the only module that reads argparse: it turns library errors into one-line messages and
exit codes (0 ok, 1 training diverged, 2 bad input, 130 interrupted). No option may be
abbreviated (allow_abbrev=False): `--step 100` is an error, not `--steps 100`.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from shared.config import OPTIMIZERS, SCHEDULES
from shared.spec import BN_CONVENTIONS, DTYPES, PRESETS


class UsageError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (docs/design.md, "CLI"): `makemore sidebyside: error: ...`,
    exit status 2; `-h` still prints the full usage."""

    commands: dict = {}   # the top-level parser's sub-commands (build_parser)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")

    def parse_args(self, args=None, namespace=None):
        # an unknown option is the command's error ("makemore train: error: unrecognized
        # arguments: ..."), as every other error of its options; argparse gives it to the top level
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            self.commands.get(getattr(ns, "command", None), self).error(
                f"unrecognized arguments: {' '.join(extra)}")
        return ns


# The run settings of `train` and their defaults; a run folder records them, and `--resume`
# refuses a command that gives one of them another value.
RUN_DEFAULTS = {"preset": "wavenet", "steps": 200_000, "batch_size": 32, "seed": 42,
                "dtype": "float32", "bn": "lecture", "lr": 0.1, "lr_final": 0.01,
                "lr_decay_step": None, "optimizer": "sgd", "schedule": "step", "warmup": 0,
                "weight_decay": 0.0, "dropout": 0.0, "ema": 0.0, "fast": False,
                "n_embd": None, "n_hidden": None, "bn_per_position": False}


def default_backend() -> str:
    """torch when installed (the lecture's framework), else the first installed backend."""
    from .registry import available_backends
    have = available_backends()
    return "torch" if "torch" in have else (have[0] if have else "numpy")


def _common(p: argparse.ArgumentParser, defaults: bool, steps: int = 200_000) -> None:
    d = (lambda v: v) if defaults else (lambda v: argparse.SUPPRESS)  # noqa: E731
    p.add_argument("--preset", default=d("wavenet"), choices=list(PRESETS), help="model preset (default wavenet); "
                   "wavenet-tuned is the lecture's model with its own recipe's defaults (AdamW, cosine, dropout, "
                   "batch 256: shared.config.PRESET_RECIPES), which any flag given overrides; wavenet-gated has "
                   "the WaveNet paper's gated tanh*sigmoid units (n_hidden 89, 76,058 parameters) and its own recipe")
    p.add_argument("--steps", type=int, default=d(steps), help=f"optimizer steps (default {steps})")
    p.add_argument("--batch-size", type=int, default=d(32),
                   help="minibatch size (default 32): contexts, or whole names for wavenet-conv")
    p.add_argument("--seed", type=int, default=d(42), help="run seed: weights, batches, samples (default 42)")
    p.add_argument("--dtype", default=d("float32"), choices=DTYPES, help="parameter and activation dtype (default float32)")
    p.add_argument("--bn", default=d("lecture"), choices=BN_CONVENTIONS, help="BatchNorm convention (docs/design.md): lecture = unbiased variance (default), "
                        "torch = nn.BatchNorm1d, flax = nnx.BatchNorm")
    p.add_argument("--bn-per-position", action="store_true", default=d(False),
                   help="the lecture's BatchNorm1d before its fix (Part 5 at 38:50): 3-D input reduced over "
                        "dim 0 only, statistics per position and channel")
    p.add_argument("--n-embd", type=int, default=d(None), help="embedding size (default: the preset's)")
    p.add_argument("--n-hidden", type=int, default=d(None), help="hidden layer width (default: the preset's)")
    p.add_argument("--lr", type=float, default=d(0.1), help="learning rate before the decay step (default 0.1)")
    p.add_argument("--lr-final", type=float, default=d(0.01), help="learning rate from the decay step on (default 0.01)")
    p.add_argument("--lr-decay-step", type=int, default=d(None),
                   help="first step with --lr-final (default 3/4 of --steps, e.g. 150,000 of 200,000)")
    p.add_argument("--optimizer", default=d("sgd"), choices=OPTIMIZERS, help="sgd (the lecture's, default) or adamw")
    p.add_argument("--schedule", default=d("step"), choices=SCHEDULES,
                   help="step (the lecture's: --lr, then --lr-final from --lr-decay-step; default) or "
                        "cosine (linear warm-up over --warmup steps to --lr, cosine decay to --lr-final)")
    p.add_argument("--warmup", type=int, default=d(0), help="warm-up steps of the cosine schedule (default 0)")
    p.add_argument("--weight-decay", type=float, default=d(0.0),
                   help="AdamW's decoupled weight decay on weight matrices and the embedding (default 0)")
    p.add_argument("--dropout", type=float, default=d(0.0), help="dropout after each Tanh (or gate) in train mode (default 0)")
    p.add_argument("--ema", type=float, default=d(0.0),
                   help="per-step decay of an exponential moving average of the weights and running stats, "
                        "e.g. 0.9999 (folded every 100 steps); the run is evaluated, sampled and saved with "
                        "the average (default 0: none)")
    p.add_argument("--data", default=d(None), help="names.txt (default $MAKEMORE_DATA, then data/names.txt)")


def build_parser(defaults: bool = True) -> argparse.ArgumentParser:
    """The `makemore` argument parser. With defaults=False every option of `train` defaults to
    argparse.SUPPRESS, so parsing tells which options a command gave (for --resume)."""
    d = (lambda v: v) if defaults else (lambda v: argparse.SUPPRESS)  # noqa: E731
    ap = _Parser(prog="makemore", description="makemore side by side in numpy, torch and JAX",
                 allow_abbrev=False)
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)
    ap.commands = sub.choices

    def add(name, **kw):
        return sub.add_parser(name, allow_abbrev=False, **kw)

    p = add("train", help="train one backend; writes a run folder (checkpoint, metrics, plot, samples)")
    p.add_argument("--backend", default=d(None), help="numpy, torch or jax (default torch, or the "
                   "first installed backend)")
    _common(p, defaults)
    p.add_argument("--out", default=d(None), help="run folder (default runs/BACKEND-PRESET); a folder "
                   "holding a run is refused unless --overwrite")
    p.add_argument("--resume", default=d(None), metavar="DIR",
                   help="continue the interrupted run in DIR from its last checkpoint, with its recorded settings")
    p.add_argument("--overwrite", action="store_true", default=d(False),
                   help="replace the run already in --out (only its run files are removed)")
    p.add_argument("--checkpoint-every", type=int, default=d(10_000), help="steps between checkpoints (default 10,000)")
    p.add_argument("--no-progress", action="store_true", default=d(False), help="no progress bar")
    p.add_argument("--fast", action="store_true", default=d(False),
                   help="the backend's fastest path (fast.py: fused/compiled steps; the same losses up "
                        "to float rounding)")

    p = add("sample", help="print names sampled from a checkpoint")
    p.add_argument("--checkpoint", required=True, help="a checkpoint.safetensors from any backend, or a run folder")
    p.add_argument("--backend", default=None, help="backend to sample with (default torch, or the first installed)")
    p.add_argument("-n", type=int, default=20, help="how many names (default 20)")
    p.add_argument("--seed", type=int, default=42, help="sampling seed (default 42)")

    p = add("evaluate", help="a checkpoint's mean cross-entropy on a split (eval mode, the whole split)")
    p.add_argument("--checkpoint", required=True, help="a checkpoint.safetensors from any backend, or a run folder")
    p.add_argument("--split", default="val", choices=("train", "val", "test"),
                   help="the split (default val; keep test for a final figure, once)")
    p.add_argument("--backend", default=None, help="backend to evaluate with (default torch, or the first installed)")
    p.add_argument("--data", default=None, help="names.txt (default $MAKEMORE_DATA, then data/names.txt)")

    p = add("compare", help="the same run on every backend, side by side")
    _common(p, defaults, steps=1000)
    p.add_argument("--backends", default=None, help="comma-separated (default: every installed backend)")
    p.add_argument("--out", default="runs/compare", help="output folder (default runs/compare)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = add("bench", help="benchmark a training step on every backend")
    p.add_argument("--quick", action="store_true", help="wavenet, batch 32, float32 only (about a minute)")
    p.add_argument("--out", default=None, help="output folder (default runs/bench, or runs/bench-quick "
                   "with --quick; the reference runs committed in bench/results* are copies of such folders)")

    p = add("sweep", help="search a study's hyperparameters with Optuna (studies/*.toml); each trial is a run folder")
    p.add_argument("study", help="a study file (e.g. studies/lecture-lr.toml, or its name lecture-lr); with "
                   "--report also the name of a study in the storage")
    p.add_argument("--storage", default=None, help="an Optuna storage URL (e.g. postgresql://user:pass@host/db, "
                   "sqlite:///path.db) or journal:PATH (default sqlite in the study's folder); workers on "
                   "several machines given the same URL join one study")
    p.add_argument("--workers", type=int, default=None, help="worker processes on this machine, one core "
                   "and one thread each (default: one per available core)")
    p.add_argument("--n-trials", type=int, default=None, help="the study's target number of trials, "
                   "counting those already done (default: the study's n_trials)")
    p.add_argument("--out", default=None, help="folder of the trials' run folders and the default storage "
                   "(default runs/studies/NAME)")
    p.add_argument("--report", action="store_true", help="print the leaderboard and the best trial's "
                   "command, write history/parallel/importances plots into the study's folder")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)  # a worker process (internal)

    p = add("reproduce", help="the lecture's performance log (Part 5, five rows) trained with its recipe, "
            "beside the lecture's losses")
    p.add_argument("--backend", default=None, help="numpy, torch or jax (default: the fastest installed, jax)")
    p.add_argument("--seeds", type=int, default=1, help="runs per row, seeds 42, 43, ... (default 1); "
                   "mean ± sd when more than one")
    p.add_argument("--quick", action="store_true", help="300 steps per run (a smoke test, not the lecture's numbers)")
    p.add_argument("--plain", action="store_true", help="every row on the backend's plain path (train.py), "
                   "not its fast path")
    p.add_argument("--rows", default=None, help="comma-separated rows to train (mlp, mlp-8, wavenet-22k-dim0, "
                   "wavenet-22k, wavenet; default all)")
    p.add_argument("--out", default=None, help="folder of the runs (default runs/reproduce, or "
                   "runs/reproduce-quick with --quick); finished runs there are reused, interrupted ones resumed")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = add("diagnose", help="activation and gradient statistics (lecture Part 3 plots)")
    p.add_argument("--backend", default=None, help="numpy, torch, jax or all (default torch, or the first installed)")
    _common(p, defaults, steps=1000)
    p.add_argument("--out", default="runs/diagnose", help="output folder (default runs/diagnose)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = add("sidebyside",
            help="one HTML page: the three backends' code in aligned columns, per concept")
    p.add_argument("--out", default="runs/sidebyside.html",
                   help="the HTML file to write (default runs/sidebyside.html; the committed copy is "
                        "docs/sidebyside.html)")
    return ap


def _apply_recipe(args, argv) -> None:
    """Fill the recipe of a preset that carries one (shared.config.PRESET_RECIPES, e.g.
    wavenet-tuned) into the `train`/`compare`/`diagnose` options the command did not give.
    compare and diagnose keep their own --steps (1,000), and a recipe run given --steps keeps
    the recipe's warm-up share (shared.config.preset_recipe)."""
    from shared.config import preset_recipe
    given = vars(build_parser(defaults=False).parse_args(argv))
    steps = args.steps if ("steps" in given or args.command != "train") else None
    for k, v in preset_recipe(args.preset, steps).items():
        if k not in given:
            setattr(args, k, v)


def _config(args):
    from shared.config import TrainConfig
    return TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, lr_final=args.lr_final,
                       lr_decay_step=args.lr_decay_step, seed=args.seed, optimizer=args.optimizer,
                       schedule=args.schedule, warmup=args.warmup, weight_decay=args.weight_decay,
                       dropout=args.dropout, ema=args.ema)


def _spec_and_data(args):
    from shared.data import load_dataset
    from shared.spec import get_spec
    sizes = {"n_embd": getattr(args, "n_embd", None), "n_hidden": getattr(args, "n_hidden", None),
             "bn_per_position": getattr(args, "bn_per_position", False)}
    probe = get_spec(args.preset, **sizes)
    data = load_dataset(probe.block_size, args.data)
    spec = get_spec(args.preset, vocab_size=data.vocab.vocab_size, dtype=args.dtype, bn_convention=args.bn,
                    **sizes)
    return spec, data


def _resolve_train(args, argv):
    """(settings dict, run folder, record of the run to resume or None) for `train`.

    With --resume the recorded settings are used, and any run setting the command gives must
    equal the recorded one (UsageError naming each difference)."""
    from . import runs
    if args.resume is not None:
        if args.out is not None or args.overwrite:
            raise UsageError("--resume DIR continues the run in DIR: give neither --out nor --overwrite")
        folder = Path(args.resume)
        rec = runs.open_for_resume(folder)
        given = vars(build_parser(defaults=False).parse_args(argv))
        given = {k: v for k, v in given.items() if k in RUN_DEFAULTS or k == "backend"}
        diff = runs.differences({**rec["settings"], "backend": rec["backend"]}, given)
        if diff:
            raise UsageError(f"--resume {folder}: the command does not match the run: " + "; ".join(diff)
                             + f". Resume with `makemore train --resume {folder}` alone")
        return dict(rec["settings"]), rec["backend"], folder, rec
    settings = {k: getattr(args, k) for k in RUN_DEFAULTS}
    backend = args.backend or default_backend()
    folder = Path(args.out or f"runs/{backend}-{args.preset}")
    return settings, backend, folder, None


def cmd_train(args, argv) -> int:
    from shared.params import num_params
    from shared.threads import busy_warning, step_threads, xla_flags_for
    from . import runs
    from .registry import get_backend
    from .trainer import StopFlag, TrainingDiverged, TrainingInterrupted, check_run, train, write_run
    settings, backend, folder, rec = _resolve_train(args, argv)
    if backend == "jax" and "jax" not in sys.modules:   # XLA's threads are fixed when jax starts
        os.environ["XLA_FLAGS"] = xla_flags_for(settings["batch_size"], os.environ.get("XLA_FLAGS", ""))
    get_backend(backend)  # fail fast on an unknown or missing backend
    for k, v in settings.items():
        setattr(args, k, v)
    cfg = _config(args)
    step_threads(cfg.batch_size)  # a bad MAKEMORE_THREADS fails here, before anything is written
    warning = busy_warning(cfg.batch_size, backend)
    if warning:
        print(warning, file=sys.stderr)
    data_arg = args.data if rec is None else rec["data"]["path"]
    args.data = data_arg
    spec, data = _spec_and_data(args)
    spec.check_train_batch(cfg.batch_size)  # before anything is printed or written
    check_run(backend, spec, cfg, settings["fast"])
    from shared.data import find_names_file
    data_path = find_names_file(data_arg)
    sha = runs.file_sha256(data_path)
    if rec is not None:
        if sha != rec["data"]["sha256"]:
            raise UsageError(f"--resume {folder}: the data file {data_path} has sha256 {sha[:12]}…, the run "
                             f"was trained on {rec['data']['path']} with sha256 {rec['data']['sha256'][:12]}…")
    else:
        runs.prepare_new(folder, args.overwrite)
    record = {"command": runs.command_line(argv), "argv": list(argv), "backend": backend,
              "preset": settings["preset"], "settings": settings, "config": _asdict(cfg),
              "spec": spec.to_json(), "data": {"path": str(Path(data_path).resolve()), "sha256": sha},
              "checkpoint_every": args.checkpoint_every,
              "resumed_with": runs.command_line(argv) if rec is not None else None}
    if rec is not None:
        record["command"] = rec["command"]
    from shared.data import data_note
    note = data_note(data_path, sha, data)
    if note:
        print(f"makemore train: note: {note}", file=sys.stderr)
        record["data"]["note"] = note
    runs.start(folder, record)
    verb = "resuming" if rec is not None else "writing to"
    where = ""
    if rec is not None:   # the step it goes on from: the checkpoint's, or 0 when none was written
        from shared.checkpoint import read_metadata
        ck = folder / runs.CHECKPOINT
        try:
            where = (f" from step {read_metadata(ck).get('step')} ({ck})" if ck.is_file()
                     else " from step 0 (no checkpoint was written)")
        except ValueError:   # unreadable: the trainer's resume says what is wrong with it
            pass
    print(f"{backend} {spec.name}: {num_params(spec):,} parameters, {spec.dtype}, "
          f"{len(data.train[0]):,} training examples; {verb} {folder}{where}", flush=True)
    from tqdm import tqdm
    try:
        with StopFlag() as stop:
            res = train(backend, spec, cfg, data, out_dir=folder, checkpoint_every=args.checkpoint_every,
                        progress=not args.no_progress, fast=settings["fast"], resume=rec is not None,
                        should_stop=stop, on_warning=lambda m: tqdm.write(m, file=sys.stderr))
    except TrainingInterrupted as e:
        runs.mark(folder, "interrupted", step=e.step)
        where = (f"checkpoint {e.checkpoint} holds step {e.step}" if e.checkpoint
                 else "no checkpoint was written")
        print(f"makemore train: interrupted after step {e.step} of {cfg.steps}; {where}.\n"
              f"resume with: makemore train --resume {folder}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        runs.mark(folder, "interrupted")
        ck = folder / runs.CHECKPOINT
        where = _checkpoint_phrase(ck)
        print(f"\nmakemore train: interrupted; {where}.\nresume with: makemore train --resume {folder}",
              file=sys.stderr)
        return 130
    except TrainingDiverged as e:
        runs.mark(folder, "diverged", step=e.step)
        raise
    write_run(res, folder)
    runs.mark(folder, "finished", train_loss=res.train_loss, val_loss=res.val_loss,
              warnings=res.warnings)
    print(f"train loss {res.train_loss:.4f}  val loss {res.val_loss:.4f}  "
          f"{res.seconds:.1f} s  {res.steps_per_s:.1f} steps/s")
    print("samples:")
    for s in res.samples:
        print(" ", s)
    return 0


def _asdict(cfg) -> dict:
    from dataclasses import asdict
    return asdict(cfg)


def _checkpoint_phrase(path: Path) -> str:
    """'the last checkpoint is PATH (step N)' or 'no checkpoint was written'."""
    from shared.checkpoint import read_metadata
    if not path.is_file():
        return "no checkpoint was written"
    try:
        return f"the last checkpoint is {path} (step {read_metadata(path).get('step')})"
    except ValueError:
        return f"the checkpoint {path} is unreadable"


def _checkpoint_model(args):
    """(backend module, model, checkpoint metadata, path) for `sample` and `evaluate`:
    --checkpoint (a .safetensors file or a run folder) loaded into --backend's model. Raises
    CheckpointError / ParamError for a checkpoint that is missing or does not fit, BackendError
    for a backend that is not installed."""
    from shared.checkpoint import load_checkpoint
    from .registry import get_backend
    from .runs import CHECKPOINT
    B = get_backend(args.backend or default_backend())
    path = Path(args.checkpoint)
    if path.is_dir():
        path = path / CHECKPOINT
    params, md = load_checkpoint(path)
    model = B.build_model(md["spec"])
    B.load_params(model, params)
    return B, model, md, path


def cmd_sample(args) -> int:
    from shared.stream import sampling_uniforms
    if args.n < 1:
        raise UsageError(f"-n must be >= 1, got {args.n}")
    B, model, md, _ = _checkpoint_model(args)
    for toks in B.sample(model, sampling_uniforms(args.seed, args.n)):
        print(md["vocab"].decode(toks + [0]))
    return 0


def cmd_evaluate(args) -> int:
    """`makemore evaluate --checkpoint CKPT [--split val]`: prints the split's mean cross-entropy
    (nats per character) in eval mode over the whole split, as the lecture's split_loss (Part 5).
    Raises UsageError when the names file's vocabulary is not the checkpoint's."""
    from shared.data import load_dataset
    B, model, md, path = _checkpoint_model(args)
    spec = md["spec"]
    data = load_dataset(spec.block_size, args.data)
    if data.vocab.itos != md["vocab"].itos:
        raise UsageError(f"{path} was trained on another vocabulary ({len(md['vocab'].itos)} characters) "
                         f"than this names file's ({len(data.vocab.itos)}): give the run's --data")
    X, Y = data.split(args.split)
    loss = float(B.evaluate(model, X, Y))
    print(f"{args.split} loss {loss:.4f}  ({len(Y):,} examples, {spec.name}, step {md.get('step')}, {B.NAME})")
    return 0


def cmd_compare(args) -> int:
    from .compare import compare, parse_backends
    backends = parse_backends(args.backends)
    spec, data = _spec_and_data(args)
    compare(backends, spec, _config(args), data, args.out, progress=not args.no_progress)
    return 0


def cmd_diagnose(args) -> int:
    from .diagnose import diagnose, diagnostics_module, stats_table
    from .registry import available_backends
    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1 for the update:data ratio, got {args.steps}")
    backends = available_backends() if args.backend == "all" else [args.backend or default_backend()]
    for b in backends:
        diagnostics_module(b)  # fail fast: unknown, missing or without diagnostics
    cfg = _config(args)
    spec, data = _spec_and_data(args)
    print(f"diagnose {spec.name} ({spec.dtype}) on {', '.join(backends)}: {cfg.steps} steps, "
          f"batch {cfg.batch_size}, seed {cfg.seed}; writing to {args.out}")
    res = diagnose(backends, spec, cfg, data, args.out, progress=not args.no_progress)
    print(stats_table(res["stats"]["backends"]))
    print("wrote " + ", ".join(str(p) for p in res["paths"].values()))
    return 0


def cmd_sidebyside(args) -> int:
    from .sidebyside import MODULE, write_page
    try:
        page = write_page(args.out)
    except OSError as e:
        raise UsageError(f"cannot write --out {args.out}: {e.strerror or e}") from None
    concepts = sum(r.name != MODULE for r in page.rows)
    print(f"wrote {page.path}: {concepts} concepts in {len({r.file for r in page.rows})} files, "
          f"3 columns (numpy | PyTorch | JAX/Flax)")
    for path, name in page.missing:
        print(f"makemore sidebyside: warning: {path} has no {name} (shown as missing)", file=sys.stderr)
    for name in page.unreferenced:
        print(f"makemore sidebyside: warning: {name} has no lecture reference (LECTURE in "
              "makemore/sidebyside.py)", file=sys.stderr)
    return 0


def cmd_sweep(args) -> int:
    import importlib.util
    from shared.threads import available_cores
    if importlib.util.find_spec("optuna") is None:
        raise UsageError("makemore sweep needs Optuna, which is not installed; install it from the "
                         "checkout with: pip install -e '.[sweep]'")
    from . import study as studies
    from . import sweep
    if args.report:
        path = Path(args.study)
        name = studies.load(path).name if (path.suffix == ".toml" or path.is_file()) else args.study
        folder = sweep.study_dir(name, args.out)
        if args.storage is None and not (folder / "study.db").is_file():
            raise UsageError(f"no study {name!r} here: {folder / 'study.db'} does not exist (run the sweep, "
                             "or give the --storage URL it ran with)")
        print(sweep.report(name, args.storage or sweep.default_storage(folder), folder))
        return 0
    st = studies.load(studies.find(args.study))
    n_trials = st.n_trials if args.n_trials is None else args.n_trials
    workers = available_cores() if args.workers is None else args.workers
    if n_trials < 1 or workers < 1:
        raise UsageError(f"--n-trials and --workers must be >= 1, got {n_trials} and {workers}")
    folder = sweep.study_dir(st.name, args.out)
    url = args.storage or sweep.default_storage(folder)
    if args.worker is not None:   # one worker process, started by run_sweep
        sweep.pin_to_core(args.worker)
        return sweep.run_worker(st, url, n_trials, folder, args.worker)
    rc = sweep.run_sweep(st, url, n_trials, workers, folder)
    if rc == 0:
        print(sweep.report(st.name, url, folder, plots=False, top=10))
        print(f"the whole leaderboard and plots: makemore sweep --report {args.study}"
              + (f" --out {args.out}" if args.out else "") + (" --storage URL" if args.storage else ""))
    return rc


def cmd_reproduce(args) -> int:
    from .registry import get_backend
    from .reproduce import reproduce, select_rows
    from .sweep import fastest_backend
    from .trainer import StopFlag, TrainingInterrupted
    if args.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {args.seeds}")
    rows = select_rows(args.rows)
    backend = args.backend or fastest_backend()
    get_backend(backend)
    out = Path(args.out or ("runs/reproduce-quick" if args.quick else "runs/reproduce"))
    try:
        with StopFlag() as stop:
            text, _ = reproduce(backend, args.seeds, args.quick, out, progress=not args.no_progress, stop=stop,
                                plain=args.plain, rows=rows)
    except TrainingInterrupted as e:
        print(f"makemore reproduce: interrupted after step {e.step}; run the same command again to "
              "continue (finished runs are reused, the interrupted one resumes)", file=sys.stderr)
        return 130
    print(text)
    print(f"wrote {out / 'reproduce.md'} and {out / 'reproduce.json'}")
    return 0


def cmd_bench(args) -> int:
    from .bench import bench
    bench(args.quick, args.out or ("runs/bench-quick" if args.quick else "runs/bench"))
    return 0


def _terminate(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 training diverged, 2 bad input, 130
    interrupted)."""
    from shared.checkpoint import CheckpointError
    from shared.data import DataError
    from shared.params import ParamError
    from .registry import BackendError
    from .runs import RunFolderError
    from .trainer import TrainingDiverged
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.command in ("train", "compare", "diagnose"):
        _apply_recipe(args, argv)
    handlers = {"train": lambda a: cmd_train(a, argv), "sample": cmd_sample, "evaluate": cmd_evaluate, "compare": cmd_compare,
                "diagnose": cmd_diagnose, "bench": cmd_bench, "sidebyside": cmd_sidebyside,
                "sweep": cmd_sweep, "reproduce": cmd_reproduce}
    # SIGTERM unwinds like Ctrl-C, so `finally` blocks (temp files, progress bars) still run
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return handlers[args.command](args)
    except TrainingDiverged as e:
        print(f"makemore: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nmakemore {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `makemore ... | head`: the reader left; say nothing more (Python docs, "Note on SIGPIPE")
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (UsageError, DataError, CheckpointError, ParamError, BackendError, RunFolderError,
            ValueError) as e:
        print(f"makemore {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
