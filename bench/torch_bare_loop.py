"""The baseline a user would otherwise run: the lecture's own eager torch training loop, written
out the way makemore_part5_cnn1.ipynb does it (Karpathy, "Building makemore Part 5: Building a
WaveNet", "PyTorch-ifying the code" and the training cell), with no product code in the step.

Hand-made layer classes holding plain tensors with requires_grad (not nn.Module), BatchNorm with
`x.mean`/`x.var` (unbiased, the lecture's convention) and its running stats updated under no_grad,
`F.cross_entropy`, `p.grad = None`, `loss.backward()`, `p.data += -lr * p.grad`, and the loss read
back with `.item()` every step (the notebook's `lossi.append(loss.log10().item())`).

bench/test_train_step.py times it as the row "torch, bare loop" beside torch's `train_step`; tests
check it computes the same losses as train_step (tests/test_bench.py). Here only: it is a
benchmark baseline, not part of the product.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


class Embedding:
    def __init__(self, weight):
        self.weight = weight

    def __call__(self, IX):
        self.out = self.weight[IX]
        return self.out

    def parameters(self):
        return [self.weight]


class FlattenConsecutive:
    def __init__(self, n):
        self.n = n

    def __call__(self, x):
        B, T, C = x.shape
        x = x.view(B, T // self.n, C * self.n)
        if x.shape[1] == 1:
            x = x.squeeze(1)
        self.out = x
        return self.out

    def parameters(self):
        return []


class Linear:
    def __init__(self, weight, bias=None):
        self.weight, self.bias = weight, bias  # weight (fan_in, fan_out), as in the lecture

    def __call__(self, x):
        self.out = x @ self.weight
        if self.bias is not None:
            self.out += self.bias
        return self.out

    def parameters(self):
        return [self.weight] + ([] if self.bias is None else [self.bias])


class BatchNorm1d:
    def __init__(self, gamma, beta, running_mean, running_var, eps=1e-5, momentum=0.1):
        self.eps, self.momentum, self.training = eps, momentum, True
        self.gamma, self.beta = gamma, beta
        self.running_mean, self.running_var = running_mean, running_var

    def __call__(self, x):
        if self.training:
            dim = 0 if x.ndim == 2 else (0, 1)
            xmean = x.mean(dim, keepdim=True)
            xvar = x.var(dim, keepdim=True)
        else:
            xmean, xvar = self.running_mean, self.running_var
        xhat = (x - xmean) / torch.sqrt(xvar + self.eps)
        self.out = self.gamma * xhat + self.beta
        if self.training:
            with torch.no_grad():
                self.running_mean = (1 - self.momentum) * self.running_mean + self.momentum * xmean
                self.running_var = (1 - self.momentum) * self.running_var + self.momentum * xvar
        return self.out

    def parameters(self):
        return [self.gamma, self.beta]


class Tanh:
    def __call__(self, x):
        self.out = torch.tanh(x)
        return self.out

    def parameters(self):
        return []


class Sequential:
    def __init__(self, layers):
        self.layers = layers

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        self.out = x
        return self.out

    def parameters(self):
        return [p for layer in self.layers for p in layer.parameters()]


def build(spec, params: dict[str, np.ndarray]) -> Sequential:
    """The lecture's model for `spec` (BatchNorm convention 'lecture' only) holding copies of the
    canonical `params` (shared.params names and layout), every trainable tensor requires_grad."""
    if spec.batchnorm.convention != "lecture":
        raise ValueError(f"the bare loop is the lecture's code: BatchNorm convention 'lecture', "
                         f"not {spec.batchnorm.convention!r}")

    def t(name, grad=True):
        return torch.tensor(params[name]).requires_grad_(grad)

    layers = []
    for i, l in enumerate(spec.layers):
        if l.kind == "embedding":
            layers.append(Embedding(t(f"{i}.weight")))
        elif l.kind == "flatten":
            layers.append(FlattenConsecutive(l.n))
        elif l.kind == "linear":
            layers.append(Linear(t(f"{i}.weight"), t(f"{i}.bias") if l.bias else None))
        elif l.kind == "batchnorm":
            bn = spec.batchnorm
            layers.append(BatchNorm1d(t(f"{i}.gamma"), t(f"{i}.beta"), t(f"{i}.running_mean", False),
                                      t(f"{i}.running_var", False), eps=bn.eps, momentum=bn.momentum))
        elif l.kind == "tanh":
            layers.append(Tanh())
    return Sequential(layers)


def train(model: Sequential, Xs: torch.Tensor, Ys: torch.Tensor, lr: float = 0.1) -> list[float]:
    """len(Xs) SGD steps on the minibatches Xs (k, B, block_size) int64, Ys (k, B) int64, in the
    notebook's words; returns the losses (floats), one per step."""
    parameters = model.parameters()
    lossi = []
    for i in range(len(Xs)):
        Xb, Yb = Xs[i], Ys[i]
        # forward pass
        logits = model(Xb)
        loss = F.cross_entropy(logits, Yb)
        # backward pass
        for p in parameters:
            p.grad = None
        loss.backward()
        # update: simple SGD
        for p in parameters:
            p.data += -lr * p.grad
        lossi.append(loss.item())
    return lossi
