"""`makemore`: one entry point for training, sampling, comparing, benchmarking and diagnostics.

    makemore train --backend torch --preset wavenet [--steps N] [--batch-size 32] [--seed S]
                   [--dtype float32|float64] [--data PATH] [--out DIR]
    makemore sample --checkpoint FILE [--backend B] [-n 20] [--seed S]
    makemore compare --preset P --steps N [--backends numpy,torch,jax] [--dtype float64] [--out DIR]
    makemore bench [--quick] [--out DIR]
    makemore diagnose --backend B|all --preset P [--steps N] [--out DIR]
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from shared.spec import BN_CONVENTIONS, DTYPES, PRESETS


class UsageError(Exception):
    """A user error: printed as one line, exit status 2."""


def _common(p: argparse.ArgumentParser, steps_default: int | None = 200_000) -> None:
    p.add_argument("--preset", default="wavenet", choices=list(PRESETS), help="model preset (default wavenet)")
    p.add_argument("--steps", type=int, default=steps_default, help="SGD steps (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="minibatch size (default 32): contexts, or whole names for wavenet-conv")
    p.add_argument("--seed", type=int, default=42, help="run seed: weights, batches, samples (default 42)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="parameter and activation dtype (default float32)")
    p.add_argument("--bn", default="lecture", choices=BN_CONVENTIONS, help="BatchNorm convention (docs/design.md): lecture = unbiased variance (default), "
                        "torch = nn.BatchNorm1d, flax = nnx.BatchNorm")
    p.add_argument("--lr", type=float, default=0.1, help="learning rate before the decay step")
    p.add_argument("--lr-final", type=float, default=0.01, help="learning rate from the decay step on")
    p.add_argument("--lr-decay-step", type=int, default=None,
                   help="first step with --lr-final (default 3/4 of --steps, e.g. 150,000 of 200,000)")
    p.add_argument("--data", default=None, help="names.txt (default $MAKEMORE_DATA, then data/names.txt)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="makemore", description="makemore side by side in numpy, torch and JAX")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one backend; writes checkpoint, metrics, plot, samples")
    p.add_argument("--backend", default="torch", help="numpy, torch or jax (default torch)")
    _common(p)
    p.add_argument("--out", default=None, help="output folder (default runs/BACKEND-PRESET)")
    p.add_argument("--checkpoint-every", type=int, default=10_000, help="steps between checkpoints (default 10,000)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--fast", action="store_true",
                   help="the backend's fastest path (fused/compiled steps; the same losses up to "
                        "float rounding)")

    p = sub.add_parser("sample", help="print names sampled from a checkpoint")
    p.add_argument("--checkpoint", required=True, help="a checkpoint.safetensors from any backend")
    p.add_argument("--backend", default="torch", help="backend to sample with (default torch)")
    p.add_argument("-n", type=int, default=20, help="how many names (default 20)")
    p.add_argument("--seed", type=int, default=42, help="sampling seed (default 42)")

    p = sub.add_parser("compare", help="the same run on every backend, side by side")
    _common(p, steps_default=1000)
    p.add_argument("--backends", default=None, help="comma-separated (default: every installed backend)")
    p.add_argument("--out", default="runs/compare", help="output folder (default runs/compare)")

    p = sub.add_parser("bench", help="benchmark a training step on every backend")
    p.add_argument("--quick", action="store_true", help="wavenet, batch 32, float32 only (about a minute)")
    p.add_argument("--out", default="runs/bench", help="output folder (default runs/bench; the "
                   "reference runs committed in bench/results* are copies of such folders)")

    p = sub.add_parser("diagnose", help="activation and gradient statistics (lecture Part 3 plots)")
    p.add_argument("--backend", default="torch", help="numpy, torch, jax or all")
    _common(p, steps_default=1000)
    p.add_argument("--out", default="runs/diagnose", help="output folder (default runs/diagnose)")
    return ap


def _config(args):
    from shared.config import TrainConfig
    return TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, lr_final=args.lr_final,
                       lr_decay_step=args.lr_decay_step, seed=args.seed)


def _spec_and_data(args):
    from shared.data import load_dataset
    from shared.spec import get_spec
    probe = get_spec(args.preset)
    data = load_dataset(probe.block_size, args.data)
    spec = get_spec(args.preset, vocab_size=data.vocab.vocab_size, dtype=args.dtype, bn_convention=args.bn)
    return spec, data


def cmd_train(args) -> int:
    from shared.threads import busy_warning, step_threads
    from shared.params import num_params
    from .registry import get_backend
    from .trainer import train, write_run
    get_backend(args.backend)  # fail fast on an unknown or missing backend
    cfg = _config(args)
    if args.backend == "numpy" or (args.backend == "torch" and args.fast):  # MAKEMORE_THREADS readers
        step_threads(cfg.batch_size)  # a bad MAKEMORE_THREADS fails here, before anything is written
        warning = busy_warning(cfg.batch_size)
        if warning:
            print(warning, file=sys.stderr)
    spec, data = _spec_and_data(args)
    out = Path(args.out or f"runs/{args.backend}-{args.preset}")
    print(f"{args.backend} {spec.name}: {num_params(spec):,} parameters, {spec.dtype}, "
          f"{len(data.train[0]):,} training examples; writing to {out}")
    res = train(args.backend, spec, cfg, data, out_dir=out, checkpoint_every=args.checkpoint_every,
                progress=not args.no_progress, fast=args.fast)
    write_run(res, out)
    print(f"train loss {res.train_loss:.4f}  val loss {res.val_loss:.4f}  "
          f"{res.seconds:.1f} s  {res.steps_per_s:.1f} steps/s")
    print("samples:")
    for s in res.samples:
        print(" ", s)
    return 0


def cmd_sample(args) -> int:
    from shared.checkpoint import load_checkpoint
    from .registry import get_backend
    from shared.stream import sampling_uniforms
    if args.n < 1:
        raise UsageError(f"-n must be >= 1, got {args.n}")
    B = get_backend(args.backend)
    params, md = load_checkpoint(args.checkpoint)
    model = B.build_model(md["spec"])
    B.load_params(model, params)
    for toks in B.sample(model, sampling_uniforms(args.seed, args.n)):
        print(md["vocab"].decode(toks + [0]))
    return 0


def cmd_compare(args) -> int:
    from .compare import compare, parse_backends
    backends = parse_backends(args.backends)
    spec, data = _spec_and_data(args)
    compare(backends, spec, _config(args), data, args.out)
    return 0


def cmd_diagnose(args) -> int:
    from .diagnose import diagnose, diagnostics_module, stats_table
    from .registry import available_backends
    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1 for the update:data ratio, got {args.steps}")
    backends = available_backends() if args.backend == "all" else [args.backend]
    for b in backends:
        diagnostics_module(b)  # fail fast: unknown, missing or without diagnostics
    cfg = _config(args)
    spec, data = _spec_and_data(args)
    print(f"diagnose {spec.name} ({spec.dtype}) on {', '.join(backends)}: {cfg.steps} steps, "
          f"batch {cfg.batch_size}, seed {cfg.seed}; writing to {args.out}")
    res = diagnose(backends, spec, cfg, data, args.out)
    print(stats_table(res["stats"]["backends"]))
    print("wrote " + ", ".join(str(p) for p in res["paths"].values()))
    return 0


def cmd_bench(args) -> int:
    from .bench import bench
    bench(args.quick, args.out)
    return 0


def _terminate(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 training diverged, 2 bad input)."""
    from shared.checkpoint import CheckpointError
    from shared.data import DataError
    from shared.params import ParamError
    from .registry import BackendError
    from .trainer import TrainingDiverged
    args = build_parser().parse_args(argv)
    handlers = {"train": cmd_train, "sample": cmd_sample, "compare": cmd_compare,
                "diagnose": cmd_diagnose, "bench": cmd_bench}
    # SIGTERM unwinds like Ctrl-C, so `finally` blocks (checkpoint temp files) still run
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return handlers[args.command](args)
    except TrainingDiverged as e:
        print(f"makemore: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"makemore {args.command}: interrupted; checkpoints already written are complete",
              file=sys.stderr)
        return 130
    except (UsageError, DataError, CheckpointError, ParamError, BackendError, ValueError) as e:
        print(f"makemore {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
