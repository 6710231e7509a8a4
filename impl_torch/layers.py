"""The layers of makemore Part 5 in idiomatic PyTorch.

Source: Karpathy, "Building makemore Part 5: Building a WaveNet" (makemore_part5_cnn1.ipynb), where
the lecture writes these layers "torch.nn-like" by hand; here torch.nn's own modules are used
wherever torch ships one (Embedding, Linear, Tanh, Sequential) and the other two are nn.Modules.
Shapes: B batch, T positions, C channels.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

# torch ships Embedding: weight (vocab_size, n_embd), the canonical layout already.
Embedding = nn.Embedding


class FlattenConsecutive(nn.Module):
    """Merge `n` consecutive positions: (B, T, C) -> (B, T//n, C*n); squeezed to (B, C*n) when
    T//n == 1. Lecture Part 5 at 21:36 ("implementing WaveNet"). Raises ValueError if n does not
    divide T."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        if T % self.n:
            raise ValueError(f"FlattenConsecutive({self.n}) got {T} positions; T must be a multiple of n")
        x = x.view(B, T // self.n, C * self.n)
        if x.shape[1] == 1:
            x = x.squeeze(1)
        return x

    def extra_repr(self) -> str:
        return f"n={self.n}"


# torch ships Linear, but stores weight as (fan_out, fan_in): model.py transposes on load/export.
Linear = nn.Linear


class BatchNorm1d(nn.Module):
    """BatchNorm over every axis but the last: (B, C) or (B, T, C) -> same shape.

    Ioffe & Szegedy 2015; lecture Part 3 (makemore_part3_bn) and Part 5 at 38:50
    ("fixing batchnorm1d bug": 3-D input,
    reduce over dims (0, 1)). Parameters gamma, beta (C,); buffers running_mean, running_var (C,).
    `convention` (docs/design.md): 'lecture' normalises with the unbiased variance and keeps it;
    'torch' normalises with the biased one, keeps the unbiased one (as nn.BatchNorm1d); 'flax' uses
    the biased one for both. running = (1 - momentum) * running + momentum * batch. In train mode,
    with mean and var over the batch: gamma * (x - mean) / sqrt(var + eps) + beta.
    """

    def __init__(self, dim: int, eps: float = 1e-5, momentum: float = 0.1, convention: str = "lecture"):
        super().__init__()
        if convention not in ("lecture", "torch", "flax"):
            raise ValueError(f"unknown BatchNorm convention {convention!r}")
        self.eps, self.momentum, self.convention = eps, momentum, convention
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))
        self._scale_n, self._scale = 0, None  # see _lecture_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.batch_norm is torch's fused kernel (what nn.BatchNorm1d runs): one op forward and one
        # backward, where the formula written out (mean, var, subtract, divide, ...) is about 10
        # eager ops forward and 20 backward, and made a batch-32 step 1.5x slower (bench/README.md).
        # It wants channels in dim 1: the (n, C) view, n = B or B*T, reduces over every axis but
        # the last.
        x2 = x.reshape(-1, x.shape[-1])
        if not self.training:
            y = F.batch_norm(x2, self.running_mean, self.running_var, self.gamma, self.beta,
                             training=False, eps=self.eps)
            return y.view(x.shape)
        n = x2.shape[0]
        if n < 2:
            raise ValueError("BatchNorm1d in train mode needs at least 2 values per channel")
        # F.batch_norm normalises with the biased variance var_b and keeps the unbiased one,
        # var_u = c * var_b with c = n / (n - 1), in running_var: the 'torch' convention.
        c = n / (n - 1)
        gamma, eps, running_var = self.gamma, self.eps, self.running_var
        if self.convention == "lecture":  # normalise with var_u: var_u + eps = c * (var_b + eps / c)
            gamma, eps = self.gamma * self._lecture_scale(n), self.eps / c
        if self.convention == "flax":  # keep var_b: the unbiased update of c * running_var, over c
            running_var = self.running_var * c
        y = F.batch_norm(x2, self.running_mean, running_var, gamma, self.beta,
                         training=True, momentum=self.momentum, eps=eps)
        if self.convention == "flax":  # (a copy: backward reads the tensor F.batch_norm was given)
            self.running_var.copy_(running_var / c)
        return y.view(x.shape)

    def _lecture_scale(self, n: int) -> torch.Tensor:
        # 1 / sqrt(c) as a 0-d tensor in gamma's dtype, made once per n: a Python float operand
        # is wrapped into a new tensor in forward and again in backward (~15 us a layer a step)
        if self._scale_n != n or self._scale.dtype != self.gamma.dtype:
            self._scale_n, self._scale = n, torch.tensor(math.sqrt((n - 1) / n), dtype=self.gamma.dtype)
        return self._scale

    def extra_repr(self) -> str:
        return f"{self.gamma.shape[0]}, eps={self.eps}, momentum={self.momentum}, convention={self.convention!r}"


# torch ships Tanh and Sequential (children indexed 0..L-1: the canonical layer index).
Tanh = nn.Tanh
Sequential = nn.Sequential
