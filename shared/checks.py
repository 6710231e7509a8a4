"""Input checks every backend runs before it changes anything: token ids, targets, the k
minibatches of a fast path. One module, so the three backends refuse the same inputs with the
same words (docs/design.md, "Backend interface": a rejected input leaves the model bitwise
unchanged).
"""
from __future__ import annotations

import numpy as np


class Float64Unavailable(ValueError):
    """A float64 model was asked for but the framework cannot give float64 arrays here (JAX
    without x64, or on a device without float64); never a silent float32."""


def check_targets(Y, vocab_size: int, n_examples: int | None = None) -> np.ndarray:
    """Y as an array, after checking that every id is in [0, vocab_size) and, with n_examples,
    that there is one per example (shape (n_examples,)).

    Backends call it before their forward pass, so a bad Y changes nothing (a train-mode forward
    updates the BatchNorm running stats); numpy indexing and optax would otherwise broadcast a
    (B, 1) or (1,) Y into a wrong loss, JAX would clamp a bad id and numpy wrap a negative one.
    Raises ValueError saying which.
    """
    Y = np.asarray(Y)
    if n_examples is not None and Y.shape != (n_examples,):
        raise ValueError(f"targets have shape {Y.shape}; need one per example, shape ({n_examples},)")
    check_token_ids(Y, vocab_size)
    return Y


def check_step_batches(spec, Xs, Ys) -> tuple[np.ndarray, np.ndarray]:
    """(Xs, Ys) as arrays, after the checks every backend's fast_train_steps needs before it
    changes anything: Xs (k, B, block_size) and Ys (k, B) token ids inside spec's vocab, and B
    large enough for a train-mode step (spec.check_train_batch: BatchNorm needs 2 values per
    channel). Raises ValueError saying which."""
    if any(l.kind == "conv" for l in spec.layers):
        raise ValueError(f"spec {spec.name!r} is convolutional: there is no fast path for it yet; "
                         "train without --fast (sequence_train_step)")
    Xs, Ys = np.asarray(Xs), np.asarray(Ys)
    if Xs.ndim != 3 or Ys.shape != Xs.shape[:2]:
        raise ValueError(f"need Xs (k, B, block_size) and Ys (k, B); got {Xs.shape} and {Ys.shape}")
    spec.check_train_batch(Xs.shape[1])
    check_token_ids(Xs, spec.vocab_size, spec.block_size)
    check_token_ids(Ys, spec.vocab_size)
    return Xs, Ys


def check_sequences(spec, X, Y=None, mask=None, train: bool = False):
    """(X, Y, mask) as arrays, after the checks every backend's sequence_* function needs before it
    changes anything (issue 14): spec is convolutional; X (B, L + block_size - 1) token ids; with Y,
    Y (B, L) ids and mask (B, L) bool (None: every target is real); in train mode at least 2 real
    targets (the last BatchNorm1d averages over one node per target and needs 2 values per
    channel). Returns mask as a bool array (B, L), all True when given as None; Y stays None if
    not given.

    Raises:
        ValueError: saying which (a non-convolutional spec, shapes, ids outside the vocab, a mask
            that is not boolean, too few targets).
    """
    if not spec.convolutional:
        raise ValueError(f"spec {spec.name!r} has no convolution: the sequence_* functions need a "
                         "conv model (shared.spec.conv_spec, preset wavenet-conv); use train_step")
    X = np.asarray(X)
    T = spec.block_size
    if X.ndim != 2 or X.shape[1] < T:
        raise ValueError(f"sequences must have shape (B, L + {T - 1}) with L >= 1 (block_size {T}: "
                         f"{T - 1} tokens of left context more than targets), got {X.shape}")
    check_token_ids(X, spec.vocab_size)
    L = X.shape[1] - T + 1
    if Y is not None:
        Y = np.asarray(Y)
        if Y.shape != (len(X), L):
            raise ValueError(f"targets have shape {Y.shape}; sequences {X.shape} need one per "
                             f"position, shape ({len(X)}, {L})")
        check_token_ids(Y, spec.vocab_size)
    if mask is None:
        mask = np.ones((len(X), L), dtype=bool)
    else:
        mask = np.asarray(mask)
        if mask.dtype != bool or mask.shape != (len(X), L):
            raise ValueError(f"mask must be a bool array of shape ({len(X)}, {L}), got "
                             f"{mask.dtype} {mask.shape}")
    if train and int(mask.sum()) < 2:
        raise ValueError(f"{int(mask.sum())} real target(s): a train-mode step needs at least 2 for "
                         "BatchNorm1d (2 values per channel); use more or longer names")
    return X, Y, mask


def check_masks(spec, masks, batch_size: int, k: int | None = None) -> list[np.ndarray] | None:
    """The dropout masks of a train-mode step as contiguous arrays in the spec's dtype, after
    checking that there is one per activation (Tanh or gate) layer, each of that layer's output shape
    (shared.stream.dropout_shapes(spec, batch_size)), with a leading k for the k steps of a
    fast path. None (no dropout) stays None.

    Every backend calls it before anything changes: a mask of the wrong shape would broadcast
    or fail deep inside the forward. Raises ValueError naming the layer and both shapes."""
    if masks is None:
        return None
    from .spec import ACTIVATIONS
    from .stream import dropout_shapes
    shapes = dropout_shapes(spec, batch_size)
    tanhs = [i for i, l in enumerate(spec.layers) if l.kind in ACTIVATIONS]
    kind = {i: ACTIVATIONS[spec.layers[i].kind] for i in tanhs}
    masks = list(masks)
    if len(masks) != len(shapes):
        raise ValueError(f"dropout masks: got {len(masks)}, need one per Tanh/gate layer ({len(shapes)}: "
                         f"layers {tanhs})")
    out = []
    for i, m, s in zip(tanhs, masks, shapes):
        m = np.asarray(m)
        want = s if k is None else (k, *s)
        if m.shape != want:
            raise ValueError(f"dropout mask of {kind[i]} layer {i} has shape {m.shape}; its output has "
                             f"shape {want}")
        if not np.issubdtype(m.dtype, np.floating):
            raise ValueError(f"dropout mask of {kind[i]} layer {i} has dtype {m.dtype}; need a float "
                             f"array (the model's {spec.dtype})")
        out.append(np.ascontiguousarray(m, dtype=spec.dtype))
    return out


def check_token_ids(X, vocab_size: int, block_size: int | None = None) -> None:
    """Raise ValueError if any token id in `X` (int array, any shape) is outside [0, vocab_size),
    or, with `block_size`, if X is not (..., B, block_size) contexts.

    Called at every backend's model entry, for contexts X and for targets Y: JAX's gather would
    clamp a bad id silently, and numpy's indexing would wrap a negative one.
    """
    X = np.asarray(X)
    if block_size is not None and (X.ndim < 2 or X.shape[-1] != block_size):
        raise ValueError(f"contexts must have shape (B, {block_size}) for this model "
                         f"(block_size {block_size}), got {X.shape}")
    if X.size == 0:
        return
    if not np.issubdtype(X.dtype, np.integer):
        raise ValueError(f"token ids must be integers, got dtype {X.dtype}")
    lo, hi = int(X.min()), int(X.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"token id {bad} is outside the vocab [0, {vocab_size}); "
                         "encode inputs with the model's own vocab (shared.data.Vocab)")


def check_state(state: dict, names, what: str = "optimizer state", shapes: dict | None = None) -> dict:
    """`state` after checking that it holds exactly `names` (a resumable checkpoint's canonical
    optimizer state) and, with `shapes` ({name: shape}), that those entries have those shapes.
    Raises ValueError naming the missing, unexpected or misshapen entries."""
    missing = [n for n in names if n not in state]
    extra = [n for n in state if n not in names]
    if missing or extra:
        raise ValueError(f"{what}: missing {missing}, unexpected {extra}; the checkpoint was written "
                         "by another optimizer or version: start a new run (--overwrite)")
    for n, shape in (shapes or {}).items():
        if np.shape(state[n]) != tuple(shape):
            raise ValueError(f"{what}: {n} has shape {np.shape(state[n])}, the model needs {tuple(shape)}")
    return state
