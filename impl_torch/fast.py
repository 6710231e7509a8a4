"""The fastest honest torch path: a hand-fused step (forward with dropout, manual backward, SGD or
AdamW) compiled once by torch.compile.

Same losses as train_step to float rounding (tested), same batches, same schedule.
"""
from __future__ import annotations

import weakref

import numpy as np
import torch

from shared.checks import check_step_batches
from shared.spec import ModelSpec
from shared.config import ADAM_BETAS, ADAM_EPS, lr_at

from .model import _masks
from .train import Optimizer, threads_for

# --- The fastest honest path: a hand-fused step (forward, manual backward, SGD) compiled once ---
# torch.compile of the autograd step (compiled forward and backward, eager optimizer) was measured
# here at only ~1.5x torch eager (wavenet, batch 32, 2 cores), and its cold compile took ~40 s;
# most of a batch-32 step is per-op Python/dispatcher overhead, so the fast path writes the whole
# step as one autograd-free function (the backward formulas of lecture Part 4, "becoming a
# backprop ninja") that torch.compile turns into one graph with the parameter updates in place.

def _bn_dims(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(x.ndim - 1))


def _update(p, g, lr, mv, adam, decayed: bool) -> None:
    # p -= lr * g (SGD); with mv = (exp_avg, exp_avg_sq), torch.optim.AdamW's own state tensors,
    # and adam = (step_size, bias_correction2_sqrt, decay) its update, as train.Optimizer's
    # AdamW computes it (torch.optim.adam._single_tensor_adam), in place
    if mv is None:
        p.sub_(lr * g)
        return
    step_size, bc2_sqrt, decay = adam
    m, v = mv
    if decayed:
        p.mul_(decay)
    m.lerp_(g, 1 - ADAM_BETAS[0])
    v.mul_(ADAM_BETAS[1]).addcmul_(g, g, value=1 - ADAM_BETAS[1])
    p.sub_(step_size * (m / (v.sqrt() / bc2_sqrt + ADAM_EPS)))


def _fused_step(kinds: tuple, layers: list, params: list, buffers: list, X, Y, lr,
                convention: str, eps: float, momentum: float, masks=None, moments=None, adam=None):
    """One training step without autograd: forward (train mode, dropout when given masks),
    cross-entropy, hand-written backward, running-stat updates and the optimizer's update (SGD,
    p -= lr * grad, or AdamW), all in place on `params`/`buffers`/`moments`.

    kinds[k] names layer k (embedding, flatten, linear, batchnorm, tanh, gate); layers[k] is
    FlattenConsecutive's n or Gate's dim (else None); params[k] is its tuple
    of parameter tensors (torch layout: Linear weight (fan_out, fan_in)); buffers[k] its
    (running_mean, running_var) for BatchNorm. X (B, T) int64, Y (B,) int64, lr a 0-d tensor.
    masks: None, or one dropout mask per Tanh/Gate (its output's shape). moments: None (SGD), or
    moments[k] a tuple of (exp_avg, exp_avg_sq) per parameter of layer k; adam the step's
    (step_size, bias_correction2_sqrt, 1 - lr * weight_decay) 0-d tensors (AdamW).
    Returns the loss, a 0-d tensor. Backward formulas: lecture Part 4 (makemore_part4_backprop,
    exercise 3 at 1:36:37 for BatchNorm with Bessel's correction, exercise 2 at 1:26:31 for
    cross-entropy).
    """
    mv = (lambda k, j: None) if moments is None else (lambda k, j: moments[k][j])  # noqa: E731
    saved, x, tanhs = [], X, 0
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
            mask = None if masks is None else masks[tanhs]
            saved.append((x, mask))
            tanhs += 1
            if mask is not None:
                x = x * mask   # Dropout
        elif kind == "gate":
            # layer is dim: out = tanh(a) * sigmoid(b), tanh as 2 sigmoid(2a) - 1 (see above)
            t = 2 * torch.sigmoid(2 * x[..., :layer]) - 1
            sg = torch.sigmoid(x[..., layer:])
            x = t * sg
            mask = None if masks is None else masks[tanhs]
            saved.append((t, sg, mask))
            tanhs += 1
            if mask is not None:
                x = x * mask   # Dropout
    logits = x
    B = logits.shape[0]
    logp = torch.log_softmax(logits, dim=1)
    loss = -logp.gather(1, Y[:, None]).mean()
    # backward: d loss / d logits = (softmax - onehot) / B
    dx = logp.exp()
    dx[torch.arange(B), Y] -= 1
    dx = dx / B
    for k in reversed(range(len(kinds))):
        kind, layer, p, s = kinds[k], layers[k], params[k], saved[k]
        if kind == "embedding":
            gW = torch.zeros_like(p[0]).index_add_(0, s.reshape(-1), dx.reshape(-1, dx.shape[-1]))
            _update(p[0], gW, lr, mv(k, 0), adam, True)
        elif kind == "flatten":
            dx = dx.reshape(s)
        elif kind == "linear":
            x2 = s.reshape(-1, s.shape[-1])
            d2 = dx.reshape(-1, dx.shape[-1])
            gW = d2.t() @ x2
            if len(p) == 2:
                _update(p[1], d2.sum(0), lr, mv(k, 1), adam, False)
            dx = (d2 @ p[0]).reshape(*s.shape[:-1], -1)  # uses W before its update
            _update(p[0], gW, lr, mv(k, 0), adam, True)
        elif kind == "batchnorm":
            xhat, rstd, n = s
            dims = _bn_dims(dx)
            g_gamma, g_beta = (dx * xhat).sum(dims), dx.sum(dims)
            dxhat = dx * p[0]
            c = n / (n - 1) if convention == "lecture" else 1.0  # Bessel: lecture Part 4 at 1:05:17
            dx = rstd / n * (n * dxhat - dxhat.sum(dims) - c * xhat * (dxhat * xhat).sum(dims))
            _update(p[0], g_gamma, lr, mv(k, 0), adam, False)
            _update(p[1], g_beta, lr, mv(k, 1), adam, False)
        elif kind == "tanh":
            t, mask = s
            if mask is not None:
                dx = dx * mask   # Dropout's backward
            dx = dx * (1 - t * t)
        elif kind == "gate":
            t, sg, mask = s
            if mask is not None:
                dx = dx * mask   # Dropout's backward
            dx = torch.cat([dx * sg * (1 - t * t), dx * t * sg * (1 - sg)], dim=-1)
    return loss


# One compiled/fused step per (optimizer, path): a new run (a new Optimizer) builds its own.
_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _fast_step_for(model, opt: Optimizer, compile: bool):
    """(step function, kinds, layer args, params, buffers, moments) for `model`, built once per
    optimizer. The tensors are detached views of the model's own parameters, and for AdamW
    torch.optim.AdamW's own exp_avg/exp_avg_sq tensors (moments[k]: one pair per parameter of
    layer k; None for SGD): updates land in the model and the optimizer."""
    steps = _CACHE.setdefault(opt, {})
    if compile in steps:
        return steps[compile]
    spec = model.spec
    kinds = tuple(l.kind for l in spec.layers)
    layers = [l.n if l.kind == "flatten" else l.dim if l.kind == "gate" else None for l in spec.layers]
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
    moments = None
    if opt.cfg.optimizer == "adamw":
        state = opt._moments()   # canonical name -> tensor, created (zeros) before the first step
        names = [[f"{k}.{f}" for f in ("weight", "bias", "gamma", "beta") if f"{k}.{f}" in opt.params]
                 for k in range(len(kinds))]
        moments = [tuple((state["exp_avg"][n], state["exp_avg_sq"][n]) for n in ns) for ns in names]
    if compile:
        # one compiled graph per (preset, batch, dtype): raise dynamo's limit of 8 recompiles of
        # _fused_step, past which it would silently fall back to eager, and fail loudly instead
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        torch._dynamo.config.fail_on_recompile_limit_hit = True
    # cpp_wrapper: inductor writes the code that calls the kernels and GEMMs in C++ too, not
    # Python: 1.06-1.12x faster per step here, and a cold compile of 24 s instead of 34 s
    fn = torch.compile(_fused_step, dynamic=False, options={"cpp_wrapper": True}) if compile else _fused_step
    steps[compile] = (fn, kinds, layers, params, buffers, moments)
    return steps[compile]


def fast_unsupported(spec: ModelSpec) -> str | None:
    """Why the fast path cannot train `spec` (a one-line message naming the option and the way
    out), or None when it can. The trainer asks before it writes a run folder
    (makemore.trainer.check_run); fast_train_steps raises ValueError with the same message."""
    # the fused step normalises over every row of a channel: no per-position statistics
    if spec.batchnorm.per_position:
        return ("the torch fast path does not implement the lecture's pre-fix BatchNorm "
                "(--bn-per-position, BatchNormSpec.per_position); train it without --fast, or on jax")
    return None


def fast_train_steps(model, opt: Optimizer, Xs, Ys, masks=None, compile: bool = True) -> np.ndarray:
    """k optimizer steps (SGD or AdamW, either schedule, dropout) on the fastest honest torch
    path; the same losses as k calls of train_step.

    Arguments:
        Xs: (k, B, block_size) int token ids; Ys: (k, B) int targets.
        masks: None, or the k steps' dropout masks, one (k, *Tanh output shape) array per Tanh
            layer (shared.stream.DropoutStream.take).
        compile: run the hand-fused step through torch.compile (inductor, C++ on CPU; the first
            call per shape compiles, ~25 s cold, ~2 s from inductor's on-disk cache); False runs
            the same fused step eagerly. Threads: shared.threads.step_threads (1 at batch
            <= 64 unless MAKEMORE_THREADS says otherwise).
    Returns:
        (k,) float64 losses. The model's parameters and running stats, AdamW's moments and the
        optimizer's step count t advance exactly as after k train_step calls (the lr of step i
        is lr_at(step i)).
    Raises:
        ValueError: from shared.checks.check_step_batches (token ids out of range, mismatched
            shapes, a batch too small for BatchNorm) or check_masks; the model is unchanged.
    """
    Xs, Ys = check_step_batches(model.spec, Xs, Ys)  # before anything changes
    why = fast_unsupported(model.spec)
    if why:
        raise ValueError(why)
    masks = _masks(model, masks, Xs.shape[1], len(Xs))
    k = len(Xs)
    X = torch.from_numpy(np.ascontiguousarray(Xs, dtype=np.int64))  # from_numpy refuses negative strides
    Y = torch.from_numpy(np.ascontiguousarray(Ys, dtype=np.int64))
    fn, kinds, layers, params, buffers, moments = _fast_step_for(model, opt, compile)
    bn = model.spec.batchnorm
    dtype = next(model.parameters()).dtype
    lrs = [lr_at(opt.cfg, opt.t + i) for i in range(k)]
    adam = None
    if moments is not None:   # AdamW's per-step scalars, as torch.optim.AdamW computes them (step t from 1)
        (b1, b2), wd = ADAM_BETAS, opt.cfg.weight_decay
        adam = torch.tensor([(lr / (1 - b1 ** t), (1 - b2 ** t) ** 0.5, 1 - lr * wd)
                             for t, lr in enumerate(lrs, start=opt.t + 1)], dtype=dtype)
    lrs = torch.tensor(lrs, dtype=dtype)
    model.train()
    with threads_for(Xs.shape[1]), torch.no_grad():
        # the steps' inputs split once (unbind) and the losses stacked once: indexing X[i] and
        # writing losses[i] per step were ~8% of a compiled batch-32 step (perf samples)
        per_step = [[m[i] for m in masks] for i in range(k)] if masks is not None else [None] * k
        adams = adam.unbind(0) if adam is not None else [None] * k
        losses = [fn(kinds, layers, params, buffers, x, y, lr, bn.convention, bn.eps, bn.momentum,
                     ms, moments, a)
                  for x, y, lr, ms, a in zip(X.unbind(0), Y.unbind(0), lrs.unbind(0), per_step, adams)]
    opt.t += k  # the fused step updated the parameters itself, not opt.optimizer.step()
    if moments is not None:
        for p, _ in opt.params.values():
            opt.optimizer.state[p]["step"] += k   # AdamW's own count, as k optimizer.step() calls
    return torch.stack(losses).to(torch.float64).numpy()
