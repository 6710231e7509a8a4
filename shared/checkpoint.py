"""Checkpoints: one safetensors file of canonical parameters plus JSON-able metadata, and for a
resumable checkpoint the run's state in canonical form.

Any backend writes it, any backend reads it (docs/design.md "Canonical parameters and checkpoints").
Writes are atomic: a temp file in the same folder, fsync, then `os.replace`.

Format makemore-ports/2 adds the run state as extra tensors named `state.<name>` (the optimizer's
canonical state, e.g. `state.opt.t`, and `state.losses`, the per-step losses so far); the
metadata holds the step, the batch-stream position and the config. Format makemore-ports/1
(parameters only) still loads and samples.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from .data import Vocab
from .params import ParamError, check_params
from .spec import ModelSpec


FORMAT = "makemore-ports/2"
FORMATS = ("makemore-ports/1", FORMAT)   # what load_checkpoint reads
STATE = "state."                          # prefix of the run-state tensors


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the tensor."""


def save_checkpoint(path: str | os.PathLike, params: dict[str, np.ndarray], spec: ModelSpec,
                    vocab: Vocab, state: dict[str, np.ndarray] | None = None, **meta) -> Path:
    """Write `params` (canonical names), the run `state` (optional) and metadata atomically.

    Arguments:
        state: {name: array} of run state (optimizer state, losses so far), stored as tensors
            `state.<name>`; any dtype and shape.
        meta: step, backend, train_loss, ... stored as JSON.
    Metadata stored: spec (JSON), vocab (the itos string), format, and every keyword in `meta`.
    Returns the path written.
    Raises ParamError if `params` do not fit `spec` (nothing is written then).
    """
    check_params(spec, params, what="checkpoint to save")
    bad = first_nonfinite(params)
    if bad:
        raise ParamError(f"checkpoint to save: tensor {bad!r} holds NaN or inf values; not saved")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    md = {"spec": spec.to_json(), "vocab": json.dumps("".join(vocab.itos)),
          "dtype": spec.dtype, "format": FORMAT}
    md.update({k: json.dumps(v) for k, v in meta.items()})
    md = dict(sorted(md.items()))  # same run, same bytes
    tensors = {k: np.ascontiguousarray(v) for k, v in params.items()}
    tensors.update({STATE + k: np.ascontiguousarray(v) for k, v in (state or {}).items()})
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=md)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # an ordinary file's mode, like the run's other outputs
    return path


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike):
    """Write a file atomically: yields a temporary path beside `path` for the block to write;
    when the block ends without an error the file is fsynced and renamed over `path`
    (os.replace, atomic on POSIX), so a reader (or a crash) sees the old file or the new one,
    never a part. On an error the temporary file is removed and `path` is unchanged."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_metadata(path: str | os.PathLike) -> dict:
    """The checkpoint's metadata: 'spec' as ModelSpec, 'vocab' as Vocab, the rest JSON-decoded."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="numpy") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e} (truncated or not a "
                              "safetensors file? write a new one with `makemore train`)") from e
    if "spec" not in raw or "vocab" not in raw:
        raise CheckpointError(f"{path} is a safetensors file but not a makemore-ports checkpoint "
                              "(no 'spec'/'vocab' metadata)")
    md = {}
    for k, v in raw.items():
        try:
            if k == "spec":
                md[k] = ModelSpec.from_json(v)
            elif k == "vocab":
                itos = json.loads(v)
                if not isinstance(itos, str):
                    raise ValueError("not a string of characters")
                md[k] = Vocab(tuple(itos))
            elif k in ("dtype", "format"):
                md[k] = v
            else:
                md[k] = json.loads(v)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise CheckpointError(f"checkpoint {path}: metadata field {k!r} is malformed "
                                  f"({type(e).__name__}: {e}); write a new checkpoint") from e
    spec, itos = md["spec"], md["vocab"].itos
    problem = None
    if itos[:1] != (".",) or len(set(itos)) != len(itos):
        problem = f"vocab {''.join(itos)!r} must start with '.' and have no repeated character"
    elif len(itos) != spec.vocab_size:
        problem = f"vocab has {len(itos)} characters but the spec's vocab_size is {spec.vocab_size}"
    elif md.get("dtype", spec.dtype) != spec.dtype:
        problem = f"metadata dtype {md['dtype']!r} disagrees with the spec's {spec.dtype!r}"
    elif md.get("format") not in FORMATS:
        problem = f"format {md.get('format')!r} is not one of {FORMATS}"
    if problem:
        raise CheckpointError(f"checkpoint {path}: {problem}; write a new checkpoint")
    return md


def load_checkpoint(path: str | os.PathLike, spec: ModelSpec | None = None
                    ) -> tuple[dict[str, np.ndarray], dict]:
    """Read a checkpoint and check it against `spec` (default: the spec stored in it).

    Returns:
        (params, metadata): canonical {name: array}; metadata as from :func:`read_metadata`,
        plus "state": {name: array} of the run state (empty for a parameters-only checkpoint).
    Raises:
        CheckpointError: missing/truncated/unreadable file, or a tensor whose name, shape or dtype
            does not fit the spec (the tensor is named).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    md = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    params = {k: v for k, v in tensors.items() if not k.startswith(STATE)}
    md["state"] = {k[len(STATE):]: v for k, v in tensors.items() if k.startswith(STATE)}
    spec = spec or md["spec"]
    try:
        check_params(spec, params, what=f"checkpoint {path}")
    except ParamError as e:
        raise CheckpointError(str(e)) from e
    bad = first_nonfinite(params)
    if bad:
        raise CheckpointError(f"checkpoint {path}: tensor {bad!r} holds NaN or inf values; the run "
                              "that wrote it diverged: use an earlier checkpoint or retrain")
    return params, md


def first_nonfinite(params: dict[str, np.ndarray]) -> str | None:
    """Name of the first tensor with a NaN or inf value, or None if all are finite."""
    return next((k for k, v in params.items() if not np.isfinite(v).all()), None)
