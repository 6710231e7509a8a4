"""The layers of makemore Part 5 in idiomatic PyTorch.

Source: Karpathy, "Building makemore Part 5: Building a WaveNet" (makemore_part5_cnn1.ipynb), where
the lecture writes these layers "torch.nn-like" by hand; here torch.nn's own modules are used
wherever torch ships one (Embedding, Linear, Tanh) and the others are nn.Modules (Sequential
subclasses nn.Sequential to take the dropout masks).
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


# torch ships Conv1d, with weight (fan_out, fan_in, n) and channels first: model.py permutes the
# canonical (n * fan_in, fan_out) on load/export, and forward transposes (B, T, C) to (B, C, T).
class CausalConv1d(nn.Conv1d):
    """Dilated causal convolution with n taps (van den Oord et al. 2016, WaveNet; lecture Part 5
    at 47:44): (B, T, fan_in) -> (B, T - (n-1)*d, fan_out), squeezed to (B, fan_out) when one
    position is left (as FlattenConsecutive). nn.Conv1d(fan_in, fan_out, n, dilation=d), no
    padding: output t reads x[:, t + j*d], j = 0..n-1 (tap 0 the oldest), nothing after its
    newest input (causal). Raises ValueError for fewer than (n-1)*d + 1 positions."""

    def __init__(self, fan_in: int, fan_out: int, n: int = 2, dilation: int = 1, bias: bool = False):
        super().__init__(fan_in, fan_out, n, dilation=dilation, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (n,), (d,) = self.kernel_size, self.dilation
        if x.shape[1] < (n - 1) * d + 1:
            raise ValueError(f"CausalConv1d(n={n}, dilation={d}) needs at least {(n - 1) * d + 1} "
                             f"positions, got {x.shape[1]}")
        x = super().forward(x.transpose(1, 2)).transpose(1, 2)  # (B, T, C) -> (B, C, T) and back
        if x.shape[1] == 1:
            x = x.squeeze(1)
        return x


# torch ships nn.BatchNorm1d, but it wants channels in dim 1 and normalises with the biased
# variance only: wrapped so every convention of the spec (docs/design.md) is one flag (its fused
# kernel F.batch_norm where it applies, the formula written out for counts and per-position stats).
class BatchNorm1d(nn.Module):
    """BatchNorm over every axis but the last: (B, C) or (B, T, C) -> same shape.

    Ioffe & Szegedy 2015; lecture Part 3 (makemore_part3_bn) and Part 5 at 38:50
    ("fixing batchnorm1d bug": 3-D input,
    reduce over dims (0, 1)). Parameters gamma, beta (C,); buffers running_mean, running_var (C,).
    `convention` (docs/design.md): 'lecture' normalises with the unbiased variance and keeps it;
    'torch' normalises with the biased one, keeps the unbiased one (as nn.BatchNorm1d); 'flax' uses
    the biased one for both. running = (1 - momentum) * running + momentum * batch. In train mode,
    with mean and var over the batch: gamma * (x - mean) / sqrt(var + eps) + beta. The plain layer
    (no counts, no positions) runs torch's fused F.batch_norm; the two variants below run the
    formula written out (F.batch_norm has neither per-node weights nor (T, C) statistics).

    Optional `counts` (x.shape[:-1], train mode): a weight per node for the whole-sequence path of
    a conv model (shared.spec.window_counts): the statistics of the nodes repeated `counts`
    times, n = sum(counts). autograd differentiates the weighted sums.

    positions > 0: the lecture's layer before its fix (BatchNormSpec.per_position): (B, T, C)
    input with T = positions is reduced over dim 0 only, running stats (T, C), n = B. It does not
    combine with `counts` (ValueError: the conv model has no fixed T).
    """

    def __init__(self, dim: int, eps: float = 1e-5, momentum: float = 0.1, convention: str = "lecture",
                 positions: int = 0):
        super().__init__()
        if convention not in ("lecture", "torch", "flax"):
            raise ValueError(f"unknown BatchNorm convention {convention!r}")
        self.eps, self.momentum, self.convention = eps, momentum, convention
        self.positions = positions
        stat = (positions, dim) if positions else (dim,)
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(stat))
        self.register_buffer("running_var", torch.ones(stat))
        self._scale_n, self._scale = 0, None  # see _lecture_scale

    def forward(self, x: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
        if counts is not None and self.positions:
            raise ValueError("BatchNorm1d: per-position statistics (BatchNormSpec.per_position) "
                             "do not combine with per-node weights (the whole-sequence path)")
        if counts is None and not self.positions:
            return self._fused(x)
        # the written-out formula: weighted nodes (counts) or per-position statistics
        if self.training:
            dims = tuple(range(x.ndim - 1))  # (0,) for (B, C), (0, 1) for (B, T, C)
            if self.positions:
                dims = (0,)                   # pre-fix: statistics per position and channel
            if counts is not None:
                n = float(counts.sum())
            else:
                n = x.numel() // x.shape[-1] if not self.positions else x.shape[0]
            if n < 2:
                raise ValueError("BatchNorm1d in train mode needs at least 2 values per channel")
            if counts is None:
                xmean = x.mean(dims)
                var_biased = x.var(dims, correction=0)
                var_unbiased = x.var(dims, correction=1)
            else:   # weighted nodes (whole-sequence path)
                w = counts.to(x.dtype).unsqueeze(-1)
                xmean = (w * x).sum(dims) / n
                sq = (w * (x - xmean) ** 2).sum(dims)
                var_biased, var_unbiased = sq / n, sq / (n - 1)
            xvar = var_unbiased if self.convention == "lecture" else var_biased
            with torch.no_grad():
                m = self.momentum
                self.running_mean.copy_((1 - m) * self.running_mean + m * xmean)
                run = var_biased if self.convention == "flax" else var_unbiased
                self.running_var.copy_((1 - m) * self.running_var + m * run)
        else:
            xmean, xvar = self.running_mean, self.running_var
        xhat = (x - xmean) / torch.sqrt(xvar + self.eps)
        return self.gamma * xhat + self.beta

    def _fused(self, x: torch.Tensor) -> torch.Tensor:
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
        return (f"{self.gamma.shape[0]}, eps={self.eps}, momentum={self.momentum}, convention={self.convention!r}"
                + (f", positions={self.positions}" if self.positions else ""))


# torch ships Tanh.
Tanh = nn.Tanh


# torch has no tanh-sigmoid gate (nn.GLU gates a linear half): a small Module.
class Gate(nn.Module):
    """The gated activation unit of WaveNet (van den Oord et al. 2016, eq. 2): x (..., 2 * dim)
    -> out (..., dim) = tanh(a) * sigmoid(b), a = x[..., :dim] the filter half, b = x[..., dim:]
    the gate half; dtype kept. Autograd gives the backward.

    Raises ValueError for an input whose last axis is not 2 * dim.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != 2 * self.dim:
            raise ValueError(f"Gate({self.dim}) needs {2 * self.dim} input channels, got shape {tuple(x.shape)}")
        a, b = x.split(self.dim, dim=-1)
        return torch.tanh(a) * torch.sigmoid(b)

    def extra_repr(self) -> str:
        return str(self.dim)


# torch ships nn.Dropout, but it draws its own masks; here the mask comes from shared.stream.
class Dropout(nn.Module):
    """Inverted dropout with a given mask (Srivastava et al. 2014, "Dropout: A Simple Way to
    Prevent Neural Networks from Overfitting"): out = x * mask, mask of x's shape with values 0
    (dropped) or 1/(1-p) (kept, scaled so the expected output is x). The masks are drawn in
    shared.stream.DropoutStream, so every backend drops the same units; no mask (eval mode, or
    no dropout) is the identity. Autograd gives the backward, dout * mask.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return x if mask is None else x * mask


# torch ships Sequential (children indexed 0..L-1: the canonical layer index); its forward takes
# one input, so the masks need a subclass.
class Sequential(nn.Sequential):
    """Layers applied in order (index = canonical layer index).

    A Dropout follows each Tanh and Gate (`dropouts[i]` for the one at index i). It is not one of the
    indexed layers (a plain dict, not registered: nn.Sequential's children are the indexed
    layers), so the layer indices, and with them the canonical names, do not move; it does
    something only in a forward given `masks`.
    """

    def __init__(self, *layers: nn.Module):
        super().__init__(*layers)
        self.dropouts = {i: Dropout() for i, l in enumerate(self) if isinstance(l, (Tanh, Gate))}

    def forward(self, x: torch.Tensor, masks=None) -> torch.Tensor:
        """x (B, block_size) int64 -> logits (B, vocab_size). `masks`: None, or one dropout mask
        per Tanh/Gate layer in order (train mode; shared.stream.DropoutStream), each of its output's shape."""
        masks = dict(zip(self.dropouts, masks)) if masks is not None else {}
        for i, l in enumerate(self):
            x = l(x)
            if i in self.dropouts:
                x = self.dropouts[i](x, masks.get(i))
        return x
