"""The layers of makemore Part 5 in Flax nnx.

Source: Karpathy, "Building makemore Part 5: Building a WaveNet" (makemore_part5_cnn1.ipynb), where
the lecture writes these layers "torch.nn-like" by hand; here flax.nnx's own modules are used
wherever Flax ships one (Embed, Linear) and the others are nnx.Modules (Sequential subclasses
nnx.Sequential to take the dropout masks).
Shapes: B batch, T positions, C channels. Flax docs: https://flax.readthedocs.io/en/latest/nnx_basics.html
"""
import jax
import jax.numpy as jnp
from flax import nnx

# Flax ships Embed: field `embedding` (vocab_size, n_embd), the canonical layout already.
# Flax wants an initialiser and an nnx.Rngs; model.py gives zeros and loads the shared parameters.
Embedding = nnx.Embed


class FlattenConsecutive(nnx.Module):
    """Merge `n` consecutive positions: (B, T, C) -> (B, T//n, C*n); squeezed to (B, C*n) when
    T//n == 1. Lecture Part 5 at 21:36 ("implementing WaveNet"). Raises ValueError if n does not
    divide T (shapes are static under jit, so this raises at trace time)."""

    def __init__(self, n: int):
        self.n = n

    def __call__(self, x: jax.Array) -> jax.Array:
        B, T, C = x.shape
        if T % self.n:
            raise ValueError(f"FlattenConsecutive({self.n}) got {T} positions; T must be a multiple of n")
        x = x.reshape(B, T // self.n, C * self.n)
        if x.shape[1] == 1:
            x = x.squeeze(1)
        return x


# Flax ships Linear with `kernel` (fan_in, fan_out): the canonical layout, no transpose (torch needs one).
Linear = nnx.Linear


# Flax ships Conv, channels last (no transpose, torch needs two) with `kernel` (n, fan_in, fan_out):
# the canonical (n * fan_in, fan_out) reshaped, taps in the same order (model.py).
class CausalConv1d(nnx.Conv):
    """Dilated causal convolution with n taps (van den Oord et al. 2016, WaveNet; lecture Part 5
    at 47:44): (B, T, fan_in) -> (B, T - (n-1)*d, fan_out), squeezed to (B, fan_out) when one
    position is left (as FlattenConsecutive). nnx.Conv(fan_in, fan_out, n, kernel_dilation=d,
    padding='VALID') (jax.lax.conv_general_dilated): output t reads x[:, t + j*d], j = 0..n-1
    (tap 0 the oldest), nothing after its newest input (causal). Raises ValueError for fewer
    than (n-1)*d + 1 positions (at trace time: shapes are static under jit)."""

    def __init__(self, fan_in: int, fan_out: int, n: int = 2, dilation: int = 1, *, use_bias: bool = False,
                 **kw):
        super().__init__(fan_in, fan_out, (n,), kernel_dilation=(dilation,), padding="VALID",
                         use_bias=use_bias, **kw)
        self.n, self.dilation = n, dilation

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[1] < (self.n - 1) * self.dilation + 1:
            raise ValueError(f"CausalConv1d(n={self.n}, dilation={self.dilation}) needs at least "
                             f"{(self.n - 1) * self.dilation + 1} positions, got {x.shape[1]}")
        x = super().__call__(x)
        if x.shape[1] == 1:
            x = x.squeeze(1)
        return x


# Flax ships nnx.BatchNorm (biased variance, momentum 0.9 = ours 0.1): written out so every
# convention of the spec (docs/design.md) is one flag; running stats are nnx.BatchStat.
class BatchNorm1d(nnx.Module):
    """BatchNorm over every axis but the last: (B, C) or (B, T, C) -> same shape.

    Ioffe & Szegedy 2015; lecture Part 3 (makemore_part3_bn) and Part 5 at 38:50
    ("fixing batchnorm1d bug": 3-D input,
    reduce over dims (0, 1)). Parameters gamma, beta (C,) are nnx.Param; running_mean, running_var
    (C,) are nnx.BatchStat (state the optimizer does not touch). `convention` (docs/design.md):
    'lecture' normalises with the unbiased variance and keeps it; 'torch' normalises with the
    biased one, keeps the unbiased one; 'flax' uses the biased one for both.
    running = (1 - momentum) * running + momentum * batch (torch's meaning: nnx.BatchNorm's
    momentum=0.9 is our 0.1). The variance is two-pass, mean((x - mean)**2): nnx.BatchNorm's default
    E[x^2] - E[x]^2 loses digits when the mean is large.

    Train/eval the nnx way: `use_running_average` is the attribute `model.train()` sets to False
    and `model.eval()` sets to True (as on nnx.BatchNorm). Arrays are created in `dtype`.

    Optional `counts` (x.shape[:-1], train mode): a weight per node for the whole-sequence path of
    a conv model (shared.spec.window_counts): the statistics of the nodes repeated `counts`
    times, n = sum(counts) (a traced value: the check for n >= 2 is made before, in
    shared.checks.check_sequences). jax.grad differentiates the weighted sums.

    positions > 0: the lecture's layer before its fix (BatchNormSpec.per_position): (B, T, C)
    input with T = positions is reduced over dim 0 only, running stats (T, C), n = B. It does not
    combine with `counts` (ValueError: the conv model has no fixed T).
    """

    def __init__(self, dim: int, eps: float = 1e-5, momentum: float = 0.1, convention: str = "lecture",
                 *, dtype=jnp.float32, use_running_average: bool = False, positions: int = 0):
        if convention not in ("lecture", "torch", "flax"):
            raise ValueError(f"unknown BatchNorm convention {convention!r}")
        self.eps, self.momentum, self.convention = eps, momentum, convention
        self.use_running_average = use_running_average
        self.positions = positions
        stat = (positions, dim) if positions else (dim,)
        self.gamma = nnx.Param(jnp.ones(dim, dtype=dtype))
        self.beta = nnx.Param(jnp.zeros(dim, dtype=dtype))
        self.running_mean = nnx.BatchStat(jnp.zeros(stat, dtype=dtype))
        self.running_var = nnx.BatchStat(jnp.ones(stat, dtype=dtype))

    def __call__(self, x: jax.Array, counts: jax.Array | None = None) -> jax.Array:
        if not self.use_running_average:
            axes = tuple(range(x.ndim - 1))  # (0,) for (B, C), (0, 1) for (B, T, C)
            if counts is not None and self.positions:
                raise ValueError("BatchNorm1d: per-position statistics (BatchNormSpec.per_position) "
                                 "do not combine with per-node weights (the whole-sequence path)")
            if self.positions:
                axes = (0,)                   # pre-fix: statistics per position and channel
            if counts is None:
                n = x.size // x.shape[-1] if not self.positions else x.shape[0]
                if n < 2:
                    raise ValueError("BatchNorm1d in train mode needs at least 2 values per channel")
                xmean = x.mean(axes)
                sq = ((x - xmean) ** 2).sum(axes)  # two-pass variance
            else:   # weighted nodes (whole-sequence path)
                w = counts.astype(x.dtype)[..., None]
                n = w.sum()
                xmean = (w * x).sum(axes) / n
                sq = (w * (x - xmean) ** 2).sum(axes)
            var_biased, var_unbiased = sq / n, sq / (n - 1)
            xvar = var_unbiased if self.convention == "lecture" else var_biased
            # nnx Variables are updated in place with `var[...] = ` (flax 0.12; torch: a buffer under
            # no_grad); the running stats carry no gradient, so stop it explicitly.
            m = self.momentum
            self.running_mean[...] = (1 - m) * self.running_mean[...] + m * jax.lax.stop_gradient(xmean)
            run = var_biased if self.convention == "flax" else var_unbiased
            self.running_var[...] = (1 - m) * self.running_var[...] + m * jax.lax.stop_gradient(run)
        else:
            xmean, xvar = self.running_mean[...], self.running_var[...]
        xhat = (x - xmean) / jnp.sqrt(xvar + self.eps)
        return self.gamma[...] * xhat + self.beta[...]


# Flax has the function nnx.tanh but no Tanh module: a small one (it can also sow for diagnostics).
class Tanh(nnx.Module):
    """Elementwise tanh, shape unchanged. Flax has only the function (nnx.tanh), so a Module.

    Diagnostics hook: with `record` True (default False) the output is sown as
    nnx.Intermediate 'out' and passed through `perturb('out', ...)`, so that under `nnx.capture`
    the activation and the gradient of the loss with respect to it can be read (Flax guide
    "Extracting intermediate values"). With `record` False the training path is untouched.
    """

    def __init__(self, record: bool = False):
        self.record = record

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.tanh(x)
        if self.record:
            self.sow(nnx.Intermediate, "out", y)
            y = self.perturb("out", y)
        return y


# Flax has no tanh-sigmoid gate (nnx.glu gates a linear half): a small Module, recording as Tanh.
class Gate(nnx.Module):
    """The gated activation unit of WaveNet (van den Oord et al. 2016, eq. 2): x (..., 2 * dim)
    -> out (..., dim) = tanh(a) * sigmoid(b), a = x[..., :dim] the filter half, b = x[..., dim:]
    the gate half; dtype kept. jax.grad gives the backward. `record`: the diagnostics hook, as
    Tanh's.

    Raises ValueError for an input whose last axis is not 2 * dim.
    """

    def __init__(self, dim: int, record: bool = False):
        self.dim, self.record = dim, record

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != 2 * self.dim:
            raise ValueError(f"Gate({self.dim}) needs {2 * self.dim} input channels, got shape {x.shape}")
        y = jnp.tanh(x[..., :self.dim]) * jax.nn.sigmoid(x[..., self.dim:])
        if self.record:
            self.sow(nnx.Intermediate, "out", y)
            y = self.perturb("out", y)
        return y


# Flax ships nnx.Dropout, but it draws its own masks from nnx.Rngs; here the mask comes from shared.stream.
class Dropout(nnx.Module):
    """Inverted dropout with a given mask (Srivastava et al. 2014, "Dropout: A Simple Way to
    Prevent Neural Networks from Overfitting"): out = x * mask, mask of x's shape with values 0
    (dropped) or 1/(1-p) (kept, scaled so the expected output is x). The masks are drawn in
    shared.stream.DropoutStream, so every backend drops the same units; no mask (eval mode, or
    no dropout) is the identity. jax.grad gives the backward, dout * mask.
    """

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        return x if mask is None else x * mask


# Flax ships Sequential (children in `model.layers[k]`, k the canonical layer index); its
# __call__ hands one output to the next layer, so the masks need a subclass.
class Sequential(nnx.Sequential):
    """Layers applied in order (`layers[k]`, k = canonical layer index).

    A Dropout follows each Tanh and Gate (`dropouts[i]` for the one at index i). It is not one of the
    indexed layers (nnx.data: a plain dict of Modules in the graph, with no Variables), so the
    layer indices, and with them the canonical names, do not move; it does something only in
    a call given `masks`.
    """

    def __init__(self, *layers):
        super().__init__(*layers)
        self.dropouts = nnx.data({i: Dropout() for i, l in enumerate(self.layers) if isinstance(l, (Tanh, Gate))})

    def __call__(self, x: jax.Array, masks=None) -> jax.Array:
        """x (B, block_size) int -> logits (B, vocab_size). `masks`: None, or one dropout mask per
        Tanh/Gate layer in order (train mode; shared.stream.DropoutStream), each of its output's shape."""
        masks = dict(zip(self.dropouts, masks)) if masks is not None else {}
        for i, l in enumerate(self.layers):
            x = l(x)
            if i in self.dropouts:
                x = self.dropouts[i](x, masks.get(i))
        return x
