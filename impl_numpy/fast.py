"""The fastest honest numpy path: the same training step as train.py (lecture Part 4's backward
formulas; SGD or AdamW, dropout), with every array preallocated and written in place.

Same losses as train_step to float rounding (tested), same batches, same schedule.
"""
from __future__ import annotations

import weakref

import numpy as np

from shared.checks import check_step_batches
from shared.spec import ModelSpec

from .layers import BatchNorm1d, Embedding, FlattenConsecutive, Gate, Linear, Tanh
from .model import _masks
from .train import Optimizer, threads_for

# --- The fastest honest path: the same step with every array preallocated, written in place ---
# A batch-32 step is ~100 small numpy calls; past the GEMMs, its time goes to allocating
# temporaries, np.add.at (the embedding's scatter-add, ~150 us) and re-reducing what is already
# known. The fused step below computes the same formulas as the layers (lecture Part 4) on 2-D
# (rows, channels) views, into buffers allocated once per batch size, and updates each
# parameter as soon as its gradient is known (as the torch fused step does).

class _FusedStep:
    """One training step of a numpy model (train-mode forward with dropout when given masks,
    cross-entropy, hand-written backward, running-stat updates, the optimizer's update) for
    minibatches of `batch_size`, every intermediate in a buffer allocated here once.

    Every activation is kept 2-D, (rows, channels): the embedding's (B, T, C) output is
    (B*T, C) and FlattenConsecutive(n) is a reshape to (B*T/n, C*n), because rows are
    (example, position) with position fastest. The formulas are the layers' (layers.py) in an
    order that reuses what is known: BatchNorm's means and variances are GEMVs with 1/n vectors,
    its backward uses sum(dxhat) = gamma * dbeta and sum(dxhat * xhat) = gamma * dgamma; the
    embedding's scatter-add is one-hot(ids).T @ dout (one GEMM). So the losses equal train_step's
    to float rounding, not bitwise (tested). Parameters are updated in place in the model's own
    arrays; the running stats too, at flush() (fast_train_steps calls it at the end of every
    call); the layers' .out/.dout/.grads are not written (diagnostics use train_step).
    SGD's update is written out here on preallocated buffers; AdamW's is the Optimizer's own
    (train.Optimizer.update), the same arithmetic as train_step's.
    """

    def __init__(self, model, opt: Optimizer, batch_size: int):
        spec = model.spec
        self.model, self.opt = model, opt
        self.adamw = opt.cfg.optimizer == "adamw"
        self.conv = spec.batchnorm.convention
        dt = model[0].weight.dtype
        rows, width = batch_size * spec.block_size, None
        E = lambda *shape: np.empty(shape, dtype=dt)  # noqa: E731
        self.bufs = []
        for i, l in enumerate(spec.layers):
            b = {"i": i}
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
                d = rows - 1 if self.conv == "lecture" else rows  # the normalising variance's divisor
                b.update(xc=E(rows, width), out=E(rows, width), tmp=E(rows, width), dx=E(rows, width),
                         inv_n=np.full(rows, 1 / rows, dt), inv_d=np.full(rows, 1 / d, dt),
                         means=E(self.PENDING, width), vars=E(self.PENDING, width), inv_std=E(width),
                         scale=E(width), g=E(width), gb=E(width), k=E(width), n=rows, d=d)
            elif l.kind == "tanh":
                b.update(out=E(rows, width), dx=E(rows, width), drop=E(rows, width), mask=None)
            elif l.kind == "gate":   # t, s: tanh of the filter half, sigmoid of the gate half
                width = l.dim
                b.update(t=E(rows, width), s=E(rows, width), out=E(rows, width), dx=E(rows, 2 * width),
                         tmp=E(rows, width), drop=E(rows, width), mask=None)
            self.bufs.append(b)
        V = spec.vocab_size
        self.ones = np.ones(batch_size * spec.block_size, dt)  # column sums as GEMVs: ones @ x
        self.ce = dict(m=E(batch_size, 1), shifted=E(batch_size, V), e=E(batch_size, V), s=E(batch_size, 1),
                       dlogits=E(batch_size, V), rows=np.arange(batch_size))
        self.pending = 0  # steps whose BatchNorm statistics are not yet in the running stats

    # The running stats are an exponential average, linear in the batch statistics: after p steps
    # of running = (1 - m) * running + m * stat_i, running = (1 - m)^p * running
    # + sum_i m * (1 - m)^(p - 1 - i) * stat_i. Each step only writes its mean and variance into a
    # row (the GEMVs' out=), and flush() applies up to PENDING steps at once: one GEMV per
    # statistic, where updating every step took eight numpy calls per BatchNorm layer.
    PENDING = 64

    def flush(self) -> None:
        """Fold the statistics of the pending steps into the model's running_mean/running_var."""
        p, self.pending = self.pending, 0
        if not p:
            return
        for l, b in zip(self.model, self.bufs):
            if isinstance(l, BatchNorm1d):
                m = l.momentum
                w = (m * (1 - m) ** np.arange(p - 1, -1, -1)).astype(l.running_mean.dtype)
                # the rows hold the normalising variance; 'torch' normalises with the biased one
                # and keeps the unbiased one (times n / (n - 1)), 'lecture' and 'flax' keep theirs
                wv = w * (b["n"] / (b["n"] - 1)) if self.conv == "torch" else w
                l.running_mean *= (1 - m) ** p
                l.running_mean += w @ b["means"][:p]
                l.running_var *= (1 - m) ** p
                l.running_var += wv @ b["vars"][:p]

    def __call__(self, X: np.ndarray, Y: np.ndarray, lr: float, masks=None) -> float:
        """One step on X (B, block_size) int64, Y (B,) int64 and this step's dropout masks (one
        per Tanh/Gate, or None), already checked; returns the loss."""
        model, ones = self.model, self.ones
        masks = iter(masks) if masks is not None else None
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
                # mean and variance as GEMVs with 1/n and 1/d vectors (d = n - 1: the lecture's
                # unbiased variance), into this step's rows for flush()
                mean = np.matmul(b["inv_n"], x, out=b["means"][self.pending])
                xc = np.subtract(x, mean, out=b["xc"])
                var = np.matmul(b["inv_d"], np.multiply(xc, xc, out=b["tmp"]), out=b["vars"][self.pending])
                inv_std = np.power(np.add(var, l.eps, out=b["inv_std"]), -0.5, out=b["inv_std"])
                scale = np.multiply(inv_std, l.gamma, out=b["scale"])
                x = np.multiply(xc, scale, out=b["out"])  # gamma * xhat, xhat = xc * inv_std
                x += l.beta
            elif isinstance(l, Tanh):
                x = np.tanh(x, out=b["out"])
                if masks is not None:   # Dropout: (B, [T,] C) mask as (rows, C), like x
                    b["mask"] = next(masks).reshape(x.shape)
                    x = np.multiply(x, b["mask"], out=b["drop"])
            elif isinstance(l, Gate):
                # out = tanh(a) * sigmoid(b), sigmoid(b) = (1 + tanh(b / 2)) / 2 (layers.Gate)
                t = np.tanh(x[:, :l.dim], out=b["t"])
                sg = np.multiply(x[:, l.dim:], 0.5, out=b["s"])
                np.tanh(sg, out=sg)
                sg += 1.0
                sg *= 0.5
                x = np.multiply(t, sg, out=b["out"])
                if masks is not None:
                    b["mask"] = next(masks).reshape(x.shape)
                    x = np.multiply(x, b["mask"], out=b["drop"])
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
                if masks is not None:
                    d = np.multiply(d, b["mask"], out=b["drop"])   # Dropout's backward
                dx = np.multiply(b["out"], b["out"], out=b["dx"])
                np.subtract(1.0, dx, out=dx)
                d = np.multiply(dx, d, out=dx)
            elif isinstance(l, Gate):
                if masks is not None:
                    d = np.multiply(d, b["mask"], out=b["drop"])
                # da = d * s * (1 - t^2), db = d * t * s * (1 - s) = d * out * (1 - s)
                t, sg, tmp, dx = b["t"], b["s"], b["tmp"], b["dx"]
                da, db = dx[:, :l.dim], dx[:, l.dim:]
                np.multiply(t, t, out=tmp)
                np.subtract(1.0, tmp, out=tmp)
                tmp *= sg
                np.multiply(d, tmp, out=da)
                np.subtract(1.0, sg, out=tmp)
                tmp *= b["out"]
                np.multiply(d, tmp, out=db)
                d = dx
            elif isinstance(l, BatchNorm1d):
                # lecture Part 4 (exercise 3): dx = gamma*inv_std/n * (n*d - sum(d)
                # - (n/d_)*xhat*sum(d*xhat)) with xhat = xc*inv_std, dgamma = sum(d*xhat) and
                # dbeta = sum(d), i.e. dx = scale * (d - mean(d) - xc * k), k = inv_std*dgamma/d_
                xc, inv_std = b["xc"], b["inv_std"]
                g_d = np.matmul(b["inv_d"], np.multiply(d, xc, out=b["tmp"]), out=b["g"])
                g_gamma_d = np.multiply(g_d, inv_std, out=b["g"])          # dgamma / d_
                k = np.multiply(g_gamma_d, inv_std, out=b["k"])
                g_beta_n = np.matmul(b["inv_n"], d, out=b["gb"])            # dbeta / n
                dx = np.subtract(d, g_beta_n, out=b["dx"])
                dx -= np.multiply(xc, k, out=b["tmp"])
                dx *= b["scale"]                                            # with gamma before its update
                d = dx
                if self.adamw:   # AdamW's update takes the gradients themselves
                    self.opt.update(f"{b['i']}.gamma", l.gamma, g_gamma_d * b["d"], lr)
                    self.opt.update(f"{b['i']}.beta", l.beta, g_beta_n * b["n"], lr)
                else:
                    l.gamma -= (lr * b["d"]) * g_gamma_d
                    l.beta -= (lr * b["n"]) * g_beta_n
            elif isinstance(l, Linear):
                gW = np.matmul(b["x"].T, d, out=b["g"])
                if l.bias is not None:
                    gb = np.matmul(ones[:len(d)], d, out=b["gb"])
                    if self.adamw:
                        self.opt.update(f"{b['i']}.bias", l.bias, gb, lr)
                    else:
                        l.bias -= lr * gb
                d = np.matmul(d, l.weight.T, out=b["dx"])       # with W before its update
                if self.adamw:
                    self.opt.update(f"{b['i']}.weight", l.weight, gW, lr)
                else:
                    l.weight -= np.multiply(gW, lr, out=b["u"])
            elif isinstance(l, FlattenConsecutive):
                d = d.reshape(-1, d.shape[1] // l.n)
            elif isinstance(l, Embedding):
                gW = np.matmul(b["onehot"].T, d, out=b["g"])    # = np.add.at(gW, ids, d)
                if self.adamw:
                    self.opt.update(f"{b['i']}.weight", l.weight, gW, lr)
                else:
                    l.weight -= lr * gW
        self.pending += 1
        if self.pending == self.PENDING:
            self.flush()
        return float(loss)


# One compiled/fused step per (optimizer, batch size): a new run (a new Optimizer) builds its own.
_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _fast_step_for(model, opt: Optimizer, batch_size: int) -> _FusedStep:
    # numpy: a _FusedStep per batch size (its preallocated buffers are the point)
    steps = _CACHE.setdefault(opt, {})
    if batch_size not in steps:
        steps[batch_size] = _FusedStep(model, opt, batch_size)
    return steps[batch_size]


def fast_unsupported(spec: ModelSpec) -> str | None:
    """Why the fast path cannot train `spec` (a one-line message naming the option and the way
    out), or None when it can. The trainer asks before it writes a run folder
    (makemore.trainer.check_run); fast_train_steps raises ValueError with the same message."""
    # the fused step normalises over every row of a channel: no per-position statistics
    if spec.batchnorm.per_position:
        return ("the numpy fast path does not implement the lecture's pre-fix BatchNorm "
                "(--bn-per-position, BatchNormSpec.per_position); train it without --fast, or on jax")
    return None


def fast_train_steps(model, opt: Optimizer, Xs, Ys, masks=None) -> np.ndarray:
    """k optimizer steps (SGD or AdamW, either schedule, dropout) on the fastest honest numpy
    path (:class:`_FusedStep`); the same losses as k calls of :func:`train_step` to float
    rounding.

    Arguments: Xs (k, B, block_size) int, Ys (k, B) int; masks: None, or the k steps' dropout
    masks, one (k, *Tanh output shape) array per Tanh layer (shared.stream.DropoutStream.take).
    Token ids are checked once for all k steps; BLAS threads are set once. Returns the k
    losses, float64 (k,). The optimizer's step count (and so the lr schedule) advances by k.

    Raises:
        ValueError: from shared.checks.check_step_batches (token ids out of range, mismatched
            shapes, a batch too small for BatchNorm) or check_masks; the model is unchanged.
    """
    Xs, Ys = check_step_batches(model.spec, Xs, Ys)  # before anything changes
    why = fast_unsupported(model.spec)
    if why:
        raise ValueError(why)
    masks = _masks(model, masks, Xs.shape[1], len(Xs))
    Xs, Ys = np.ascontiguousarray(Xs, dtype=np.int64), np.ascontiguousarray(Ys, dtype=np.int64)
    losses = np.empty(len(Xs), dtype=np.float64)
    model.train()
    step = _fast_step_for(model, opt, Xs.shape[1])
    with threads_for(Xs.shape[1]):
        try:
            for i in range(len(Xs)):
                losses[i] = step(Xs[i], Ys[i], opt.lr, None if masks is None else [m[i] for m in masks])
                opt.t += 1
        finally:
            step.flush()  # the running stats of every step taken are in the model
    return losses
