"""Training, evaluation and sampling written out in numpy: a hand-written SGD with the lecture's
step schedule (no optimizer library), train/eval mode flags, chunked evaluation."""
from __future__ import annotations

import contextlib

import numpy as np
from threadpoolctl import ThreadpoolController

from shared.data import check_token_ids
from shared.stream import sample_tokens
from shared.trainer import TrainConfig, lr_at

from .model import _targets, _tokens, cross_entropy

EVAL_CHUNK = 8192  # rows per eval forward: the layers keep their activations, so bound the memory


# Below this batch size a step's matrices are tiny ((32*4, 48) @ (48, 128)): OpenBLAS's thread
# hand-off costs more than the product, and on a busy 2-core machine its spinning threads made a
# step 16x slower. Larger batches keep every core. Torch decides this per op by itself; numpy
# needs it said (threadpoolctl: the standard way to set BLAS threads from Python).
SMALL_BATCH = 64
_BLAS = ThreadpoolController()


@contextlib.contextmanager
def blas_threads_for(batch_size: int):
    """Run the block with one BLAS thread when `batch_size` <= SMALL_BATCH, else unchanged."""
    if batch_size > SMALL_BATCH:
        yield
        return
    with _BLAS.limit(limits=1, user_api="blas"):
        yield


class SGD:
    """Plain SGD, `p -= lr_at(cfg, t) * grad` (Part 5's `p.data += -lr * p.grad`), with the step
    count t kept here (torch keeps it in its LR scheduler, optax in its state).

    `params` are (layer, field) pairs: the gradient is read from layer.grads[field] after backward.
    """

    def __init__(self, model, cfg: TrainConfig):
        self.cfg, self.t = cfg, 0
        self.params = [(l, k) for l in model for k in l.parameters()]

    @property
    def lr(self) -> float:
        return lr_at(self.cfg, self.t)

    def step(self) -> None:
        lr = self.lr  # a Python float: numpy keeps the parameters' dtype (NEP 50)
        for layer, k in self.params:
            p = getattr(layer, k)
            p -= lr * layer.grads[k]   # in place: the layer keeps the same array object
        self.t += 1


def make_optimizer(model, cfg: TrainConfig) -> SGD:
    """The hand-written SGD with the lecture's step schedule (lr, then lr_final from
    cfg.decay_step)."""
    return SGD(model, cfg)


def train_step(model, opt: SGD, X, Y) -> float:
    """One SGD step on a minibatch (X (B, block_size) int64, Y (B,) int64); returns the loss."""
    model.train()
    with blas_threads_for(len(X)):
        logits = model(_tokens(model, X))
        loss, dlogits = cross_entropy(logits, _targets(model, Y))
        model.backward(dlogits)
        opt.step()
    return loss


def evaluate(model, X, Y) -> float:
    """Mean cross-entropy over a whole split in eval mode (the lecture's split_loss), computed in
    chunks of EVAL_CHUNK rows (rows are independent in eval mode) and summed in float64."""
    model.eval()
    X, Y = _tokens(model, X), _targets(model, Y)
    total = 0.0
    for i in range(0, len(X), EVAL_CHUNK):
        loss, _ = cross_entropy(model(X[i:i + EVAL_CHUNK]), Y[i:i + EVAL_CHUNK])
        total += loss * len(Y[i:i + EVAL_CHUNK])
    model.train()
    return total / len(X)


def sample(model, uniforms: np.ndarray) -> list[list[int]]:
    """Sample len(uniforms) names in eval mode with the shared inverse-CDF draws; token lists
    without the end token."""
    model.eval()
    with blas_threads_for(len(uniforms)):
        out = sample_tokens(lambda ctx: model(ctx), len(uniforms), model.spec.block_size, uniforms)
    model.train()
    return out


def fast_train_steps(model, opt: SGD, Xs, Ys) -> np.ndarray:
    """k SGD steps on Xs (k, B, block_size) int, Ys (k, B) int; returns the k losses (float64).

    The numpy fast path: token ids are checked once for all k steps, the arrays are converted once,
    the losses go into one preallocated array, and the gradient buffers (layer.grads) are reused
    by every backward, and BLAS threads are set once for the k steps. The arithmetic is exactly
    that of train_step, so the losses are bitwise
    the same as k calls of it.
    """
    Xs, Ys = np.asarray(Xs), np.asarray(Ys)
    check_token_ids(Xs, model.spec.vocab_size, model.spec.block_size)
    check_token_ids(Ys, model.spec.vocab_size)
    Xs, Ys = Xs.astype(np.int64, copy=False), Ys.astype(np.int64, copy=False)
    losses = np.empty(len(Xs), dtype=np.float64)
    model.train()
    with blas_threads_for(Xs.shape[1]):
        for i in range(len(Xs)):
            loss, dlogits = cross_entropy(model(Xs[i]), Ys[i])
            model.backward(dlogits)
            opt.step()
            losses[i] = loss
    return losses
