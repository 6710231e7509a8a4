"""Training, evaluation and sampling written out in numpy: a hand-written SGD with the lecture's
step schedule (no optimizer library), train/eval mode flags, chunked evaluation.

The plain path a learner reads; the fastest honest path is fast.py."""
from __future__ import annotations

import contextlib

import numpy as np
from threadpoolctl import ThreadpoolController

from shared.stream import sample_tokens
from shared.threads import step_threads
from shared.config import TrainConfig, lr_at

from shared.checks import check_sequences
from shared.spec import window_counts

from .model import _sequence_logits, _targets, _tokens, cross_entropy, sequence_cross_entropy

_EVAL_CHUNK = 8192  # rows per eval forward: the layers keep their activations, so bound the memory


# numpy needs BLAS threads said (threadpoolctl: the standard way to set them from Python); how
# many is decided in shared.threads for numpy and torch alike.
_BLAS = ThreadpoolController()


def _warm_up_blas() -> None:
    """Run one 512x512 float32 GEMM (about 270 MFLOP, about 10 ms); this module runs it once,
    when imported.

    Measured on the 2-core AMD EPYC this project is developed on: until a process has run one
    GEMM of about this size, numpy's OpenBLAS ran the step's small float32 products
    ((64, 256) @ (256, 128)) 3.5x slower (about 10 against 33 GFLOP/s on one thread), whatever
    the thread count, and stayed that slow through thousands of calls; float64 was not affected.
    One larger GEMM first makes every later one fast (a 256x256 one is not enough). The cause is
    inside the BLAS (no page faults are taken); the warm-up is cheap enough to do on any machine.
    It took the plain numpy step from 2.9 to 2.4 ms (wavenet, batch 32). torch's MKL showed a
    smaller effect in a bare loop of GEMMs (1.7x) but none on torch's training steps.
    """
    a = np.ones((512, 512), dtype=np.float32)
    a @ a


_warm_up_blas()  # at import: every numpy path (train, fast, evaluate, sample, forward) gets it


@contextlib.contextmanager
def threads_for(batch_size: int):
    """Run the block with shared.threads.step_threads(batch_size) BLAS threads (1 at batch <= 64
    unless MAKEMORE_THREADS says otherwise), or the BLAS's own setting when that is None.

    Raises ValueError for a malformed MAKEMORE_THREADS (shared.threads.step_threads)."""
    n = step_threads(batch_size)
    if n is None:
        yield
        return
    with _BLAS.limit(limits=n, user_api="blas"):
        yield


class Optimizer:
    """Plain SGD, `p -= lr_at(cfg, t) * grad` (Part 5's `p.data += -lr * p.grad`), hand-written:
    numpy has no optimizer library. The step count t is kept here (as in torch's Optimizer;
    optax keeps it in its state).

    Attributes:
        t: steps taken (int); the schedule's position.
        params: (layer, field) pairs: the gradient is read from layer.grads[field] after backward.
    """

    def __init__(self, model, cfg: TrainConfig):
        self.cfg, self.t = cfg, 0
        self.params = [(l, k) for l in model for k in l.parameters()]

    @property
    def lr(self) -> float:
        """The learning rate of the next step (shared.config.lr_at)."""
        return lr_at(self.cfg, self.t)

    def step(self) -> None:
        """Apply every layer's gradient (from the last backward) and advance t."""
        lr = self.lr  # a Python float: numpy keeps the parameters' dtype (NEP 50)
        for layer, k in self.params:
            p = getattr(layer, k)
            p -= lr * layer.grads[k]   # in place: the layer keeps the same array object
        self.t += 1


def train_step(model, opt: Optimizer, X, Y) -> float:
    """One SGD step on a minibatch (X (B, block_size) int64, Y (B,) int64); returns the loss."""
    model.spec.check_train_batch(len(X))  # an empty batch would fail deep in a reshape
    model.train()
    X = _tokens(model, X)
    Y = _targets(model, Y, len(X))  # before the forward: a bad Y must not move the running stats
    with threads_for(len(X)):
        loss, dlogits = cross_entropy(model(X), Y)
        model.backward(dlogits)
        opt.step()
    return loss


def sequence_train_step(model, opt: Optimizer, X, Y, mask=None) -> float:
    """One SGD step on whole sequences of a conv model (issue 14): X (B, L + block_size - 1),
    Y (B, L), mask (B, L) bool (shared.stream.NameBatchStream); returns the mean loss over the
    real targets. Raises ValueError (shared.checks.check_sequences) before any state changes."""
    X, Y, mask = check_sequences(model.spec, X, Y, mask, train=True)
    model.train()
    with threads_for(int(mask.sum())):
        logits = _sequence_logits(model, X.astype(np.int64, copy=False), window_counts(model.spec, mask))
        loss, dlogits = sequence_cross_entropy(logits, Y.astype(np.int64, copy=False), mask)
        model.backward(dlogits.reshape(model.out.shape))
        opt.step()
    return loss


def evaluate(model, X, Y) -> float:
    """Mean cross-entropy over a whole split in eval mode (the lecture's split_loss), computed in
    chunks of _EVAL_CHUNK rows (rows are independent in eval mode) and summed in float64."""
    model.eval()
    X = _tokens(model, X)
    Y = _targets(model, Y, len(X))
    total = 0.0
    for i in range(0, len(X), _EVAL_CHUNK):
        loss, _ = cross_entropy(model(X[i:i + _EVAL_CHUNK]), Y[i:i + _EVAL_CHUNK])
        total += loss * len(Y[i:i + _EVAL_CHUNK])
    model.train()
    return total / len(X)


def sample(model, uniforms: np.ndarray) -> list[list[int]]:
    """Sample len(uniforms) names in eval mode with the shared inverse-CDF draws; token lists
    without the end token."""
    model.eval()
    with threads_for(len(uniforms)):
        out = sample_tokens(lambda ctx: model(ctx), len(uniforms), model.spec.block_size, uniforms)
    model.train()
    return out
