"""The fastest honest torch path: a hand-fused step (forward, manual backward, SGD) compiled once
by torch.compile.

Same losses as train_step to float rounding (tested), same batches, same schedule.
"""
from __future__ import annotations

import weakref

import numpy as np
import torch

from shared.checks import check_step_batches
from shared.config import lr_at

from .train import Optimizer, threads_for

# --- The fastest honest path: a hand-fused step (forward, manual backward, SGD) compiled once ---
# torch.compile of the autograd step (compiled forward and backward, eager optimizer) was measured
# here at only ~1.5x torch eager (wavenet, batch 32, 2 cores), and its cold compile took ~40 s;
# most of a batch-32 step is per-op Python/dispatcher overhead, so the fast path writes the whole
# step as one autograd-free function (the backward formulas of lecture Part 4, "becoming a
# backprop ninja") that torch.compile turns into one graph with the parameter updates in place.

def _bn_dims(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(x.ndim - 1))


def _fused_step(kinds: tuple, layers: list, params: list, buffers: list, X, Y, lr,
                convention: str, eps: float, momentum: float):
    """One training step without autograd: forward (train mode), cross-entropy, hand-written
    backward, running-stat updates and SGD (p -= lr * grad), all in place on `params`/`buffers`.

    kinds[k] names layer k (embedding, flatten, linear, batchnorm, tanh); params[k] is its tuple
    of parameter tensors (torch layout: Linear weight (fan_out, fan_in)); buffers[k] its
    (running_mean, running_var) for BatchNorm. X (B, T) int64, Y (B,) int64, lr a 0-d tensor.
    Returns the loss, a 0-d tensor. Backward formulas: lecture Part 4 (makemore_part4_backprop,
    exercise 3 at 1:36:37 for BatchNorm with Bessel's correction, exercise 2 at 1:26:31 for
    cross-entropy).
    """
    saved, x = [], X
    for kind, layer, p, buf in zip(kinds, layers, params, buffers):
        if kind == "embedding":
            saved.append(x)
            x = p[0][x]
        elif kind == "flatten":
            B, T, C = x.shape
            saved.append(x.shape)
            x = x.reshape(B, T // layer, C * layer)
            if x.shape[1] == 1:
                x = x.squeeze(1)
        elif kind == "linear":
            saved.append(x)
            x = x @ p[0].t() if len(p) == 1 else torch.addmm(p[1], x.reshape(-1, x.shape[-1]),
                                                              p[0].t()).reshape(*x.shape[:-1], -1)
        elif kind == "batchnorm":
            dims = _bn_dims(x)
            n = x.numel() // x.shape[-1]
            mean = x.mean(dims)
            diff = x - mean
            var_b = (diff * diff).sum(dims) / n
            var_u = (diff * diff).sum(dims) / (n - 1)
            rstd = torch.rsqrt((var_u if convention == "lecture" else var_b) + eps)
            xhat = diff * rstd
            rm, rv = buf
            rm.copy_((1 - momentum) * rm + momentum * mean)
            rv.copy_((1 - momentum) * rv + momentum * (var_b if convention == "flax" else var_u))
            saved.append((xhat, rstd, n))
            x = p[0] * xhat + p[1]
        elif kind == "tanh":
            # tanh(x) = 2 sigmoid(2x) - 1: inductor's sigmoid (Sleef's exp) costs less than its
            # tanh (Sleef's tanhf, 8-10% of a compiled batch-32 step in perf samples)
            x = 2 * torch.sigmoid(2 * x) - 1
            saved.append(x)
    logits = x
    B = logits.shape[0]
    logp = torch.log_softmax(logits, dim=1)
    loss = -logp.gather(1, Y[:, None]).mean()
    # backward: d loss / d logits = (softmax - onehot) / B
    dx = logp.exp()
    dx[torch.arange(B), Y] -= 1
    dx = dx / B
    for kind, layer, p, s in zip(reversed(kinds), reversed(layers), reversed(params), reversed(saved)):
        if kind == "embedding":
            gW = torch.zeros_like(p[0]).index_add_(0, s.reshape(-1), dx.reshape(-1, dx.shape[-1]))
            p[0].sub_(lr * gW)
        elif kind == "flatten":
            dx = dx.reshape(s)
        elif kind == "linear":
            x2 = s.reshape(-1, s.shape[-1])
            d2 = dx.reshape(-1, dx.shape[-1])
            gW = d2.t() @ x2
            if len(p) == 2:
                p[1].sub_(lr * d2.sum(0))
            dx = (d2 @ p[0]).reshape(*s.shape[:-1], -1)  # uses W before its update
            p[0].sub_(lr * gW)
        elif kind == "batchnorm":
            xhat, rstd, n = s
            dims = _bn_dims(dx)
            g_gamma, g_beta = (dx * xhat).sum(dims), dx.sum(dims)
            dxhat = dx * p[0]
            c = n / (n - 1) if convention == "lecture" else 1.0  # Bessel: lecture Part 4 at 1:05:17
            dx = rstd / n * (n * dxhat - dxhat.sum(dims) - c * xhat * (dxhat * xhat).sum(dims))
            p[0].sub_(lr * g_gamma)
            p[1].sub_(lr * g_beta)
        elif kind == "tanh":
            dx = dx * (1 - s * s)
    return loss


# One compiled/fused step per (optimizer, path): a new run (a new Optimizer) builds its own.
_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _fast_step_for(model, opt: Optimizer, compile: bool):
    """(step function, kinds, layer args, params, buffers) for `model`, built once per optimizer.
    The tensors are detached views of the model's own parameters: updates land in the model."""
    steps = _CACHE.setdefault(opt, {})
    if compile in steps:
        return steps[compile]
    spec = model.spec
    kinds = tuple(l.kind for l in spec.layers)
    layers = [l.n if l.kind == "flatten" else None for l in spec.layers]
    params, buffers = [], []
    for mod, kind in zip(model, kinds):
        if kind == "embedding":
            params.append((mod.weight.detach(),))
        elif kind == "linear":
            params.append((mod.weight.detach(),) + ((mod.bias.detach(),) if mod.bias is not None else ()))
        elif kind == "batchnorm":
            params.append((mod.gamma.detach(), mod.beta.detach()))
        else:
            params.append(())
        buffers.append((mod.running_mean, mod.running_var) if kind == "batchnorm" else ())
    if compile:
        # one compiled graph per (preset, batch, dtype): raise dynamo's limit of 8 recompiles of
        # _fused_step, past which it would silently fall back to eager, and fail loudly instead
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        torch._dynamo.config.fail_on_recompile_limit_hit = True
    # cpp_wrapper: inductor writes the code that calls the kernels and GEMMs in C++ too, not
    # Python: 1.06-1.12x faster per step here, and a cold compile of 24 s instead of 34 s
    fn = torch.compile(_fused_step, dynamic=False, options={"cpp_wrapper": True}) if compile else _fused_step
    steps[compile] = (fn, kinds, layers, params, buffers)
    return steps[compile]


def fast_train_steps(model, opt: Optimizer, Xs, Ys, compile: bool = True) -> np.ndarray:
    """k SGD steps on the fastest honest torch path; the same losses as k calls of train_step.

    Arguments:
        Xs: (k, B, block_size) int token ids; Ys: (k, B) int targets.
        compile: run the hand-fused step through torch.compile (inductor, C++ on CPU; the first
            call per shape compiles, ~25 s cold, ~2 s from inductor's on-disk cache); False runs
            the same fused step eagerly. Threads: shared.threads.step_threads (1 at batch
            <= 64 unless MAKEMORE_THREADS says otherwise).
    Returns:
        (k,) float64 losses. The model's parameters and running stats and the optimizer's step
        count t advance exactly as after k train_step calls (the lr of step i is lr_at(step i)).
    Raises:
        ValueError: from shared.checks.check_step_batches (token ids out of range, mismatched
            shapes, a batch too small for BatchNorm); the model is unchanged.
    """
    Xs, Ys = check_step_batches(model.spec, Xs, Ys)  # before anything changes
    k = len(Xs)
    X = torch.from_numpy(Xs.astype(np.int64, copy=False))
    Y = torch.from_numpy(Ys.astype(np.int64, copy=False))
    fn, kinds, layers, params, buffers = _fast_step_for(model, opt, compile)
    bn = model.spec.batchnorm
    dtype = next(model.parameters()).dtype
    lrs = torch.tensor([lr_at(opt.cfg, opt.t + i) for i in range(k)], dtype=dtype)
    model.train()
    with threads_for(Xs.shape[1]), torch.no_grad():
        # the steps' inputs split once (unbind) and the losses stacked once: indexing X[i] and
        # writing losses[i] per step were ~8% of a compiled batch-32 step (perf samples)
        losses = [fn(kinds, layers, params, buffers, x, y, lr, bn.convention, bn.eps, bn.momentum)
                  for x, y, lr in zip(X.unbind(0), Y.unbind(0), lrs.unbind(0))]
    opt.t += k  # the fused step updated the parameters itself, not opt.optimizer.step()
    return torch.stack(losses).to(torch.float64).numpy()
