"""Random streams shared by every backend: initial weights, minibatch indices, sampling uniforms,
dropout masks.

Determinism contract (docs/design.md): all randomness comes from numpy Generators seeded by the run
seed, so every backend sees the same initial weights, the same minibatches, the same dropout masks
and the same sampling uniforms. `np.random.SeedSequence(seed).spawn(4)` gives four independent
streams: [0] initial parameters, [1] minibatch indices (BatchStream, or NameBatchStream for the
whole-sequence path of a conv model), [2] sampling, [3] dropout masks (the first three are those
of `spawn(3)`: adding the fourth changed no earlier run).
"""
from __future__ import annotations

import numpy as np

from .spec import ACTIVATIONS

CHUNK = 1024  # steps of indices drawn per Generator call; part of the stream's definition


DROPOUT_STREAM = 3  # index of the dropout stream among seed_streams' children


def seed_streams(seed: int) -> tuple[np.random.Generator, ...]:
    """(init_rng, batch_rng, sample_rng, dropout_rng) for a run seed (non-negative int).

    The dropout masks are drawn from children of the 4th stream's SeedSequence, one per step
    (:class:`DropoutStream`), so that any step's masks can be drawn without the earlier ones."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return tuple(np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))


class BatchStream:
    """Minibatch indices: step i's batch is row i % CHUNK of the (i // CHUNK)-th draw
    `rng.integers(0, n, size=(CHUNK, batch_size))` (like the lecture's `torch.randint`).

    Iterating yields int64 arrays of shape (batch_size,), forever, from step `start` on: the
    stream's position is the step number, so a resumed run draws exactly the batches the
    uninterrupted run would (the earlier chunks are drawn and dropped: about 1 ms per 30 chunks).
    """

    def __init__(self, seed: int, n: int, batch_size: int, start: int = 0):
        if n < 1 or batch_size < 1 or start < 0:
            raise ValueError(f"need n >= 1, batch_size >= 1 and start >= 0, got n={n}, "
                             f"batch_size={batch_size}, start={start}")
        self.rng = seed_streams(seed)[1]
        self.n, self.batch_size, self.start = n, batch_size, start

    def chunks(self):
        """Yield (CHUNK, batch_size) int64 index arrays."""
        while True:
            yield self.rng.integers(0, self.n, size=(CHUNK, self.batch_size), dtype=np.int64)

    def __iter__(self):
        skip_chunks, offset = divmod(self.start, CHUNK)
        for i, c in enumerate(self.chunks()):
            if i < skip_chunks:
                continue
            yield from (c[offset:] if i == skip_chunks else c)

    def take(self, steps: int) -> np.ndarray:
        """The first `steps` batches as one (steps, batch_size) int64 array."""
        out, have = [], 0
        for c in self.chunks():
            out.append(c)
            have += len(c)
            if have >= steps:
                break
        return np.concatenate(out)[:steps] if steps else np.zeros((0, self.batch_size), np.int64)


POOL = 1  # batches per length-sorted pool of NameBatchStream (1: random batches); part of the stream


def name_batch(names, block_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whole names as one batch for the sequence path of a conv model (issue 14).

    Name i (token ids of its letters, no end token) becomes the input block_size zeros + name: the
    lecture's build_dataset contexts, so output position t of the convolution sees exactly the
    block_size tokens of context t, and its targets are the name then the end token 0. Rows are
    padded on the right with token 0 to the longest name; the mask marks the real targets.

    Arguments:
        names: a non-empty sequence of token-id sequences (ints), e.g. Vocab.encode(word).
    Returns:
        X (B, L + block_size - 1) int64, Y (B, L) int64, mask (B, L) bool, with L = the longest
        name + 1; row i has len(name_i) + 1 True entries, then False.
    Raises:
        ValueError: no names, or block_size < 1.
    """
    if len(names) == 0 or block_size < 1:
        raise ValueError(f"need at least one name and block_size >= 1, got {len(names)} names, "
                         f"block_size {block_size}")
    lens = np.array([len(w) for w in names], dtype=np.int64)
    L = int(lens.max()) + 1
    X = np.zeros((len(names), L + block_size - 1), dtype=np.int64)
    Y = np.zeros((len(names), L), dtype=np.int64)
    for i, w in enumerate(names):
        X[i, block_size:block_size + len(w)] = w
        Y[i, :len(w)] = w                       # then the end token 0 (and 0-padding)
    mask = np.arange(L) < (lens + 1)[:, None]
    return X, Y, mask


class NameBatchStream:
    """Batches of whole names for the sequence path of a conv model, optionally grouped by length.

    The stream of a seed (the minibatch Generator of seed_streams, so the same for every backend):
    epoch after epoch a permutation of the names, read in pools of `pool` batches (pool *
    batch_size names, a pool may run into the next epoch); each pool is sorted by length (stable)
    and cut into batches of `batch_size` consecutive names, and the pool's batches come in a
    shuffled order. Every name is used once per epoch and every batch has exactly batch_size
    names. The lecture samples contexts with replacement (BatchStream); this stream samples names
    without replacement.

    pool = 1 (the default, what training uses) gives random batches: on names.txt (7.1 targets per
    name, 16 at most) a third of a 32-name batch's (B, L) targets is padding. Larger pools group
    names of similar length (pool 32: under 3% padding), but train-mode BatchNorm then tells the
    model the batch's name length through its batch statistics: wavenet-conv trained 4,000 steps on
    batches of 32 names reached a train-mode loss of 1.89 with pool 32 (1.96 with pool 4) and an
    eval-mode val loss of 2.50 (2.23), against 2.03 and 2.07 with random batches; after 28,400
    steps with pool 32 the val names scored 1.79 under their own sorted batches' statistics and 2.55
    under random ones. So sorted pools are only for passes without batch statistics (eval mode).

    Iterating yields name_batch(...) tuples (X, Y, mask), forever; `indices()` the name indices.
    Raises ValueError for no names, an empty name, batch_size < 1 or pool < 1.
    """

    def __init__(self, seed: int, names, batch_size: int, block_size: int, pool: int = POOL):
        if len(names) < 1 or batch_size < 1 or pool < 1:
            raise ValueError(f"need names, batch_size >= 1 and pool >= 1, got {len(names)} names, "
                             f"batch_size={batch_size}, pool={pool}")
        if min(len(w) for w in names) < 1:
            raise ValueError("every name needs at least one token")
        self.rng = seed_streams(seed)[1]
        self.names = [np.asarray(w, dtype=np.int64) for w in names]
        self.lengths = np.array([len(w) for w in names], dtype=np.int64)
        self.batch_size, self.block_size, self.pool = batch_size, block_size, pool

    def _order(self):
        # the names of every epoch, one after another
        while True:
            yield from self.rng.permutation(len(self.names))

    def indices(self):
        """Yield the (batch_size,) int64 name indices of every batch, forever."""
        order, size = self._order(), self.pool * self.batch_size
        while True:
            ix = np.fromiter((next(order) for _ in range(size)), dtype=np.int64, count=size)
            ix = ix[np.argsort(self.lengths[ix], kind="stable")]
            batches = ix.reshape(self.pool, self.batch_size)
            yield from batches[self.rng.permutation(self.pool)]

    def __iter__(self):
        for ix in self.indices():
            yield name_batch([self.names[i] for i in ix], self.block_size)


def dropout_shapes(spec, batch_size: int) -> list[tuple[int, ...]]:
    """The output shape of every activation layer (Tanh or gate) of `spec` (a shared.spec.ModelSpec) for a minibatch of
    `batch_size`, in layer order: (B, T, C) while positions remain, (B, C) once
    FlattenConsecutive has merged them all (it squeezes T == 1). One dropout mask per entry.

    Raises ValueError for a layer kind whose output shape this function does not know."""
    shapes, T, C = [], spec.block_size, None
    for i, l in enumerate(spec.layers):
        if l.kind == "embedding":
            C = l.dim
        elif l.kind == "flatten":
            T, C = T // l.n, C * l.n
        elif l.kind == "linear":
            C = l.fan_out
        elif l.kind in ACTIVATIONS:
            C = l.dim if l.kind == "gate" else C   # a gate halves the channels
            shapes.append((batch_size, T, C) if T > 1 else (batch_size, C))
        elif l.kind != "batchnorm":
            raise ValueError(f"dropout_shapes: layer {i} has kind {l.kind!r}, whose output shape it "
                             "does not know")
    return shapes


class DropoutStream:
    """Inverted-dropout masks (Srivastava et al. 2014, "Dropout: A Simple Way to Prevent Neural
    Networks from Overfitting", JMLR 15), drawn here so every backend drops the same units.

    Step i's masks come from a Generator on `SeedSequence(seed, spawn_key=(3, i))` (the i-th child
    of seed_streams' dropout stream): for each Tanh layer in order, `u = rng.random(shape)`
    (float64) and mask = 1/(1-p) where u >= p, 0 where u < p, cast to `dtype`; so each unit is
    kept with probability 1 - p and the kept ones are scaled so the expected activation is
    unchanged (eval mode then needs no scaling: it has no dropout). The position of the stream
    is the step number, as for BatchStream: a resumed run draws exactly the same masks.

    Arguments:
        seed: the run seed; p: dropout probability in (0, 1); shapes: dropout_shapes(spec, B);
        dtype: the model's dtype ('float32' or 'float64').
    """

    def __init__(self, seed: int, p: float, shapes, dtype):
        if seed < 0 or not 0 < p < 1:
            raise ValueError(f"need seed >= 0 and 0 < p < 1, got seed={seed}, p={p}")
        self.seed, self.p, self.shapes = seed, p, [tuple(s) for s in shapes]
        self.dtype = np.dtype(dtype)
        self.scale = self.dtype.type(1.0 / (1.0 - p))

    def masks(self, step: int) -> list[np.ndarray]:
        """Step `step`'s masks: one array per Tanh layer, of that layer's output shape, values
        0 or 1/(1-p) in the model's dtype."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(DROPOUT_STREAM, step)))
        return [(rng.random(s) >= self.p) * self.scale for s in self.shapes]   # bool * scale: 0 or scale, in dtype

    def take(self, start: int, k: int) -> list[np.ndarray]:
        """The masks of steps start .. start+k-1 stacked per Tanh layer: one (k, *shape) array
        per layer (what fast_train_steps takes)."""
        steps = [self.masks(start + i) for i in range(k)]
        return [np.stack([m[j] for m in steps]) if k else np.zeros((0, *s), self.dtype)
                for j, s in enumerate(self.shapes)]


def sampling_uniforms(seed: int, n: int, max_len: int = 64) -> np.ndarray:
    """Uniforms in [0, 1) of shape (n, max_len), float64: one per sampled character."""
    return seed_streams(seed)[2].random((n, max_len))


def sample_tokens(logits_fn, n: int, block_size: int, uniforms: np.ndarray) -> list[list[int]]:
    """Sample `n` names token by token with inverse-CDF draws from shared uniforms.

    As in the lecture's sampling loop (context of zeros, softmax, draw, slide, stop at 0), but all
    n names advance together and each draw is `searchsorted(cumsum(probs), u)` in float64 so
    every backend picks the same token for the same logits.

    Arguments:
        logits_fn: callable (n, block_size) int64 -> (n, vocab_size) logits (eval mode), any float.
        uniforms: (n, max_len) float64 from :func:`sampling_uniforms`.
    Returns:
        n lists of token ids, each without the final end token 0 (a name cut at max_len has none).
    """
    max_len = uniforms.shape[1]
    if n == 0:  # no forward at all: a (0, block_size) batch is not every framework's friend
        return []
    ctx = np.zeros((n, block_size), dtype=np.int64)
    out = [[] for _ in range(n)]
    alive = np.ones(n, dtype=bool)
    for t in range(max_len):
        logits = np.asarray(logits_fn(ctx), dtype=np.float64)
        logits = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        cdf = np.cumsum(p, axis=1)
        cdf /= cdf[:, -1:]
        ix = np.minimum((cdf < uniforms[:, t:t + 1]).sum(axis=1), cdf.shape[1] - 1)
        for i in np.flatnonzero(alive):
            if ix[i] == 0:
                alive[i] = False
            else:
                out[i].append(int(ix[i]))
        if not alive.any():
            break
        ctx = np.concatenate([ctx[:, 1:], ix[:, None]], axis=1)
    return out
