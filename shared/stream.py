"""Random streams shared by every backend: initial weights, minibatch indices, sampling uniforms.

Determinism contract (docs/design.md): all randomness comes from numpy Generators seeded by the run
seed, so every backend sees the same initial weights, the same minibatches and the same
sampling uniforms. `np.random.SeedSequence(seed).spawn(3)` gives three independent streams:
[0] initial parameters, [1] minibatch indices, [2] sampling.
"""
from __future__ import annotations

import numpy as np

CHUNK = 1024  # steps of indices drawn per Generator call; part of the stream's definition


def seed_streams(seed: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """(init_rng, batch_rng, sample_rng) for a run seed (non-negative int)."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return tuple(np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))


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
