"""Training, evaluation and sampling written out in numpy: a hand-written SGD with the lecture's
step schedule (no optimizer library), train/eval mode flags, chunked evaluation."""
from __future__ import annotations

import contextlib

import numpy as np
from threadpoolctl import ThreadpoolController

from shared.data import check_step_batches
from shared.stream import sample_tokens
from shared.threads import step_threads
from shared.trainer import TrainConfig, lr_at

from .layers import BatchNorm1d, Embedding, FlattenConsecutive, Linear, Tanh
from .model import _targets, _tokens, cross_entropy

EVAL_CHUNK = 8192  # rows per eval forward: the layers keep their activations, so bound the memory


# numpy needs BLAS threads said (threadpoolctl: the standard way to set them from Python); how
# many is decided in shared.threads for numpy and torch alike.
_BLAS = ThreadpoolController()


def warm_up_blas() -> None:
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


warm_up_blas()  # at import: every numpy path (train, fast, evaluate, sample, forward) gets it


@contextlib.contextmanager
def blas_threads_for(batch_size: int):
    """Run the block with shared.threads.step_threads(batch_size) BLAS threads (1 at batch <= 64
    unless MAKEMORE_THREADS says otherwise), or the BLAS's own setting when that is None."""
    n = step_threads(batch_size)
    if n is None:
        yield
        return
    with _BLAS.limit(limits=n, user_api="blas"):
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
    model.spec.check_train_batch(len(X))  # an empty batch would fail deep in a reshape
    model.train()
    X = _tokens(model, X)
    Y = _targets(model, Y, len(X))  # before the forward: a bad Y must not move the running stats
    with blas_threads_for(len(X)):
        loss, dlogits = cross_entropy(model(X), Y)
        model.backward(dlogits)
        opt.step()
    return loss


def evaluate(model, X, Y) -> float:
    """Mean cross-entropy over a whole split in eval mode (the lecture's split_loss), computed in
    chunks of EVAL_CHUNK rows (rows are independent in eval mode) and summed in float64."""
    model.eval()
    X = _tokens(model, X)
    Y = _targets(model, Y, len(X))
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


# --- The fastest honest path: the same step with every array preallocated, written in place ---
# A batch-32 step is ~100 small numpy calls; past the GEMMs, its time goes to allocating
# temporaries, np.add.at (the embedding's scatter-add, ~150 us) and re-reducing what is already
# known. The fused step below computes the same formulas as the layers (lecture Part 4) on 2-D
# (rows, channels) views, into buffers allocated once per batch size, and updates each
# parameter as soon as its gradient is known (as the torch fused step does).

class FusedStep:
    """One training step of a numpy model (train-mode forward, cross-entropy, hand-written
    backward, running-stat updates, SGD) for minibatches of `batch_size`, every intermediate in
    a buffer allocated here once.

    Every activation is kept 2-D, (rows, channels): the embedding's (B, T, C) output is
    (B*T, C) and FlattenConsecutive(n) is a reshape to (B*T/n, C*n), because rows are
    (example, position) with position fastest. The formulas are the layers' (layers.py) in an
    order that reuses what is known: BatchNorm's backward uses sum(dxhat) = gamma * dbeta and
    sum(dxhat * xhat) = gamma * dgamma; the embedding's scatter-add is one-hot(ids).T @ dout (one
    GEMM). So the losses equal train_step's to float rounding, not bitwise (tested).
    Parameters and running stats are updated in place in the model's own arrays; the layers'
    .out/.dout/.grads are not written (diagnostics use train_step).
    """

    def __init__(self, model, batch_size: int):
        spec = model.spec
        self.model = model
        self.conv = spec.batchnorm.convention
        dt = model[0].weight.dtype
        rows, width = batch_size * spec.block_size, None
        E = lambda *shape: np.empty(shape, dtype=dt)  # noqa: E731
        self.bufs = []
        for l in spec.layers:
            b = {}
            if l.kind == "embedding":
                width = l.dim
                b.update(out=E(rows, width), onehot=np.zeros((rows, l.num), dt), g=E(l.num, l.dim),
                         ix=np.zeros(rows, np.int64), arange=np.arange(rows))
            elif l.kind == "flatten":
                rows, width = rows // l.n, width * l.n
            elif l.kind == "linear":
                b.update(out=E(rows, l.fan_out), dx=E(rows, l.fan_in), g=E(l.fan_in, l.fan_out),
                         gb=E(l.fan_out), u=E(l.fan_in, l.fan_out))
                width = l.fan_out
            elif l.kind == "batchnorm":
                b.update(xhat=E(rows, width), out=E(rows, width), tmp=E(rows, width), dx=E(rows, width),
                         mean=E(width), sq=E(width), inv_std=E(width), g=E(width),
                         gb=E(width), n=rows, d=rows - 1 if self.conv == "lecture" else rows)
            elif l.kind == "tanh":
                b.update(out=E(rows, width), dx=E(rows, width))
            self.bufs.append(b)
        V = spec.vocab_size
        self.ones = np.ones(batch_size * spec.block_size, dt)  # column sums as GEMVs: ones @ x
        self.ce = dict(m=E(batch_size, 1), shifted=E(batch_size, V), e=E(batch_size, V), s=E(batch_size, 1),
                       dlogits=E(batch_size, V), rows=np.arange(batch_size))

    def __call__(self, X: np.ndarray, Y: np.ndarray, lr: float) -> float:
        """One step on X (B, block_size) int64, Y (B,) int64 (already checked); returns the loss."""
        model, conv, ones = self.model, self.conv, self.ones
        x = X
        for l, b in zip(model, self.bufs):
            if isinstance(l, Embedding):
                ix = x.reshape(-1)
                b["onehot"][b["arange"], b["ix"]] = 0   # clear the previous step's ones
                b["onehot"][b["arange"], ix] = 1
                b["ix"][...] = ix
                x = np.take(l.weight, ix, axis=0, out=b["out"])
            elif isinstance(l, FlattenConsecutive):
                x = x.reshape(-1, x.shape[1] * l.n)
            elif isinstance(l, Linear):
                b["x"] = x
                x = np.matmul(x, l.weight, out=b["out"])
                if l.bias is not None:
                    x += l.bias
            elif isinstance(l, BatchNorm1d):
                n, m = b["n"], l.momentum
                mean = np.divide(np.matmul(ones[:n], x, out=b["mean"]), n, out=b["mean"])
                xc = np.subtract(x, mean, out=b["xhat"])
                sq = np.matmul(ones[:n], np.multiply(xc, xc, out=b["tmp"]), out=b["sq"])
                var_biased, var_unbiased = sq / n, sq / (n - 1)
                var = var_unbiased if conv == "lecture" else var_biased
                l.running_mean[...] = (1 - m) * l.running_mean + m * mean
                l.running_var[...] = (1 - m) * l.running_var + m * (var_biased if conv == "flax" else var_unbiased)
                inv_std = np.divide(1.0, np.sqrt(var + l.eps), out=b["inv_std"])
                xhat = np.multiply(xc, inv_std, out=b["xhat"])
                x = np.multiply(xhat, l.gamma, out=b["out"])
                x += l.beta
            elif isinstance(l, Tanh):
                x = np.tanh(x, out=b["out"])
        # cross-entropy and dloss/dlogits (impl_numpy.model.cross_entropy, into buffers)
        c = self.ce
        rows, B = c["rows"], len(Y)
        shifted = np.subtract(x, np.max(x, axis=1, keepdims=True, out=c["m"]), out=c["shifted"])
        e = np.exp(shifted, out=c["e"])
        s = np.sum(e, axis=1, keepdims=True, out=c["s"])
        loss = -np.add.reduce(shifted[rows, Y] - np.log(s[:, 0])) / B   # .mean(), without its overhead
        d = np.divide(e, s, out=c["dlogits"])
        d[rows, Y] -= 1
        d /= B
        for l, b in zip(reversed(model.layers), reversed(self.bufs)):
            if isinstance(l, Tanh):
                dx = np.multiply(b["out"], b["out"], out=b["dx"])
                np.subtract(1.0, dx, out=dx)
                d = np.multiply(dx, d, out=dx)
            elif isinstance(l, BatchNorm1d):
                n, xhat = b["n"], b["xhat"]
                g_gamma = np.matmul(ones[:n], np.multiply(d, xhat, out=b["tmp"]), out=b["g"])
                g_beta = np.matmul(ones[:n], d, out=b["gb"])
                # dx = inv_std/n * (n*dxhat - sum(dxhat) - (n/d)*xhat*sum(dxhat*xhat)), dxhat = gamma*d
                corr = np.multiply(xhat, (n / b["d"]) * g_gamma, out=b["tmp"])
                dx = np.multiply(d, n, out=b["dx"])
                dx -= g_beta
                dx -= corr
                dx *= l.gamma * b["inv_std"] / n
                d = dx
                l.gamma -= lr * g_gamma
                l.beta -= lr * g_beta
            elif isinstance(l, Linear):
                gW = np.matmul(b["x"].T, d, out=b["g"])
                if l.bias is not None:
                    l.bias -= lr * np.matmul(ones[:len(d)], d, out=b["gb"])
                d = np.matmul(d, l.weight.T, out=b["dx"])       # with W before its update
                l.weight -= np.multiply(gW, lr, out=b["u"])
            elif isinstance(l, FlattenConsecutive):
                d = d.reshape(-1, d.shape[1] // l.n)
            elif isinstance(l, Embedding):
                gW = np.matmul(b["onehot"].T, d, out=b["g"])    # = np.add.at(gW, ids, d)
                l.weight -= lr * gW
        return float(loss)


def _fused_for(model, batch_size: int) -> FusedStep:
    # one FusedStep per batch size, cached on the model (its buffers are the point)
    cache = model.__dict__.setdefault("_fused", {})
    if batch_size not in cache:
        cache[batch_size] = FusedStep(model, batch_size)
    return cache[batch_size]


def fast_train_steps(model, opt: SGD, Xs, Ys) -> np.ndarray:
    """k SGD steps on the fastest honest numpy path (:class:`FusedStep`); the same losses as k
    calls of :func:`train_step` to float rounding.

    Arguments: Xs (k, B, block_size) int, Ys (k, B) int. Token ids are checked once for all k
    steps; BLAS threads are set once. Returns the k losses, float64 (k,). The optimizer's step
    count (and so the lr schedule) advances by k.

    Raises:
        ValueError: from shared.data.check_step_batches (token ids out of range, mismatched
            shapes, a batch too small for BatchNorm); the model is unchanged.
    """
    Xs, Ys = check_step_batches(model.spec, Xs, Ys)  # before anything changes
    Xs, Ys = Xs.astype(np.int64, copy=False), Ys.astype(np.int64, copy=False)
    losses = np.empty(len(Xs), dtype=np.float64)
    model.train()
    step = _fused_for(model, Xs.shape[1])
    with blas_threads_for(Xs.shape[1]):
        for i in range(len(Xs)):
            losses[i] = step(Xs[i], Ys[i], opt.lr)
            opt.t += 1
    return losses
