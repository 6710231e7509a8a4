"""The layers of makemore Part 5 in plain numpy, each with a hand-written backward pass.

Source: Karpathy, "Building makemore Part 5: Building a WaveNet" (makemore_part5_cnn1.ipynb) for
the forward passes, and "Building makemore Part 4: Becoming a Backprop Ninja"
(makemore_part4_backprop.ipynb) for the backward passes (exercise 1 at 13:01 derives them one
tensor at a time, exercise 3 at 1:36:37 the closed-form BatchNorm backward).
Shapes: B batch, T positions, C channels. Every array stays in the dtype of the parameters.

Where torch has autograd, every layer here keeps what its backward needs:
`self.out` is the output of the last forward and `self.dout` the gradient of the loss with
respect to it after the last backward (the diagnostics read Tanh's .out/.dout as activations and
their gradients). `self.grads` holds {field: gradient} for the layer's trainable parameters; the
arrays are allocated once and overwritten in place by every backward.
"""
from __future__ import annotations

import numpy as np


class _Layer:
    """Common state of a numpy layer (torch gets this from nn.Module)."""

    def __init__(self):
        self.training = True
        self.out = None    # output of the last forward
        self.dout = None   # dLoss/d(out) of the last backward
        self.grads: dict[str, np.ndarray] = {}

    def parameters(self) -> dict[str, np.ndarray]:
        """Trainable parameters {field: array} (canonical layout)."""
        return {}

    def buffers(self) -> dict[str, np.ndarray]:
        """State that the optimizer does not train (BatchNorm running stats)."""
        return {}

    def _grad(self, name: str) -> np.ndarray:
        # the gradient buffer of parameter `name`: allocated on the first backward, then reused
        g = self.grads.get(name)
        if g is None:
            p = self.parameters()[name]
            g = self.grads[name] = np.empty_like(p)
        return g


# torch ships Embedding; here it is a table lookup forward and a scatter-add backward.
class Embedding(_Layer):
    """Lookup table: int ids (B, T) -> (B, T, C) rows of weight (num_embeddings, C).

    Backward (Part 4 exercise 1, `dC`): every occurrence of token id i adds its upstream gradient
    to row i. `np.add.at` is unbuffered, so repeated ids (token 0 pads almost every context)
    accumulate; `dW[X] += dout` would keep only the last one.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype="float32"):
        super().__init__()
        self.weight = np.zeros((num_embeddings, embedding_dim), dtype=dtype)

    def parameters(self):
        return {"weight": self.weight}

    def __call__(self, ix: np.ndarray) -> np.ndarray:
        self.ix = ix
        self.out = self.weight[ix]
        return self.out

    def backward(self, dout: np.ndarray) -> None:
        """dout (B, T, C) -> accumulates grads['weight'] (num, C); ids have no gradient."""
        self.dout = dout
        dW = self._grad("weight")
        dW.fill(0)
        np.add.at(dW, self.ix, dout)
        return None


class FlattenConsecutive(_Layer):
    """Merge `n` consecutive positions: (B, T, C) -> (B, T//n, C*n); squeezed to (B, C*n) when
    T//n == 1. Lecture Part 5 at 21:36 ("implementing WaveNet"). Raises ValueError if n does not
    divide T. Backward: a reshape back to the input's shape (a view, no arithmetic)."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def __call__(self, x: np.ndarray) -> np.ndarray:
        B, T, C = x.shape
        if T % self.n:
            raise ValueError(f"FlattenConsecutive({self.n}) got {T} positions; T must be a multiple of n")
        self.in_shape = x.shape
        x = x.reshape(B, T // self.n, C * self.n)
        if x.shape[1] == 1:
            x = x.reshape(B, C * self.n)
        self.out = x
        return x

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """dout (B, T//n, C*n) or (B, C*n) -> dx (B, T, C)."""
        self.dout = dout
        return dout.reshape(self.in_shape)


# Weight kept as (fan_in, fan_out) as in the lecture (torch stores (fan_out, fan_in)).
class Linear(_Layer):
    """y = x @ W + b for x (B, fan_in) or (B, T, fan_in); W (fan_in, fan_out), b (fan_out,).

    Backward (Part 4 exercise 1, "dh = dlogits @ W2.T, dW2 = h.T @ dlogits, db2 = dlogits.sum(0)"):
    3-D input is flattened to (B*T, fan_in) for dW, and db sums over every axis but the last.
    """

    def __init__(self, fan_in: int, fan_out: int, bias: bool = True, dtype="float32"):
        super().__init__()
        self.weight = np.zeros((fan_in, fan_out), dtype=dtype)
        self.bias = np.zeros(fan_out, dtype=dtype) if bias else None

    def parameters(self):
        return {"weight": self.weight} | ({"bias": self.bias} if self.bias is not None else {})

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.x = x
        # one 2-D GEMM: numpy's matmul of a (B, T, C) array is B small batched products (~10x slower)
        out = (x.reshape(-1, x.shape[-1]) @ self.weight).reshape(*x.shape[:-1], -1)
        if self.bias is not None:
            out += self.bias
        self.out = out
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """dout (..., fan_out) -> dx (..., fan_in); fills grads weight (fan_in, fan_out), bias."""
        self.dout = dout
        fan_in, fan_out = self.weight.shape
        d2 = dout.reshape(-1, fan_out)
        np.matmul(self.x.reshape(-1, fan_in).T, d2, out=self._grad("weight"))
        if self.bias is not None:
            np.sum(d2, axis=0, out=self._grad("bias"))
        return (d2 @ self.weight.T).reshape(*dout.shape[:-1], fan_in)


# torch ships nn.Conv1d (weight (fan_out, fan_in, n)); here the taps sit side by side in one
# (n * fan_in, fan_out) matrix, the hierarchical Linear's layout, and the convolution is one GEMM.
class CausalConv1d(_Layer):
    """Dilated causal convolution with n taps (van den Oord et al. 2016, WaveNet; lecture Part 5
    at 47:44): (B, T, fan_in) -> (B, T - (n-1)*d, fan_out), squeezed to (B, fan_out) when one
    position is left (as FlattenConsecutive).

    out[:, t] = sum_j x[:, t + j*d] @ W[j*C:(j+1)*C] + b, j = 0..n-1: output t sits at its newest
    input t + (n-1)*d and reads nothing after it (causal); no padding ("valid"). With n = 2 it is
    FlattenConsecutive(2) then Linear(2C, fan_out) at every position instead of every other one:
    tap 0 (W[:C]) takes the older position x_{t}, tap 1 (W[C:]) the newer x_{t+d}.

    Forward: the n shifted views concatenated on the channel axis, (B, T_out, n*C), then one GEMM.
    Backward: that GEMM's backward (as Linear: dW = xcat.T @ dout, dxcat = dout @ W.T), then each
    tap's slice of dxcat added back at its shift: dx[:, j*d : j*d + T_out] += dxcat[..., j].
    Raises ValueError for an input of fewer than (n-1)*d + 1 positions.
    """

    def __init__(self, fan_in: int, fan_out: int, n: int = 2, dilation: int = 1, bias: bool = False,
                 dtype="float32"):
        super().__init__()
        self.n, self.dilation = n, dilation
        self.weight = np.zeros((n * fan_in, fan_out), dtype=dtype)
        self.bias = np.zeros(fan_out, dtype=dtype) if bias else None

    def parameters(self):
        return {"weight": self.weight} | ({"bias": self.bias} if self.bias is not None else {})

    def __call__(self, x: np.ndarray) -> np.ndarray:
        B, T, C = x.shape
        n, d = self.n, self.dilation
        T_out = T - (n - 1) * d
        if T_out < 1:
            raise ValueError(f"CausalConv1d(n={n}, dilation={d}) needs at least {(n - 1) * d + 1} "
                             f"positions, got {T}")
        self.in_shape = x.shape
        # (B, T_out, n*C): tap j of output t is x[:, t + j*d]
        self.xcat = np.concatenate([x[:, j * d:j * d + T_out] for j in range(n)], axis=-1)
        out = (self.xcat.reshape(-1, n * C) @ self.weight).reshape(B, T_out, -1)
        if self.bias is not None:
            out += self.bias
        if T_out == 1:
            out = out.reshape(B, -1)
        self.out = out
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """dout (B, T_out, fan_out) or (B, fan_out) -> dx (B, T, fan_in); fills grads weight
        (n*fan_in, fan_out), bias."""
        self.dout = dout
        B, T, C = self.in_shape
        n, d = self.n, self.dilation
        T_out = T - (n - 1) * d
        d2 = dout.reshape(-1, self.weight.shape[1])
        np.matmul(self.xcat.reshape(-1, n * C).T, d2, out=self._grad("weight"))
        if self.bias is not None:
            np.sum(d2, axis=0, out=self._grad("bias"))
        dxcat = (d2 @ self.weight.T).reshape(B, T_out, n, C)
        dx = np.zeros(self.in_shape, dtype=dout.dtype)
        for j in range(n):
            dx[:, j * d:j * d + T_out] += dxcat[:, :, j]
        return dx


class BatchNorm1d(_Layer):
    """BatchNorm over every axis but the last: (B, C) or (B, T, C) -> same shape.

    Ioffe & Szegedy 2015; lecture Part 3 (makemore_part3_bn) and Part 5 at 38:50
    ("fixing batchnorm1d bug": 3-D input,
    reduce over dims (0, 1)). Parameters gamma, beta (C,); buffers running_mean, running_var (C,).
    `convention` (docs/design.md): 'lecture' normalises with the unbiased variance and keeps it;
    'torch' normalises with the biased one, keeps the unbiased one (as nn.BatchNorm1d); 'flax' uses
    the biased one for both. running = (1 - momentum) * running + momentum * batch.

    Backward: the closed form of Part 4 exercise 3 (1:36:37), generalised to a divisor d of the
    variance (d = n - 1 unbiased, d = n biased) and n = B or B*T reduced elements:
        dx = inv_std / n * (n * dxhat - sum(dxhat) - (n / d) * xhat * sum(dxhat * xhat)),
    dxhat = gamma * dout, sums over the reduced axes. (The lecture's n/(n-1) is the d = n-1 case.)

    Optional `counts` (x.shape[:-1], in train mode): a weight per node, for the whole-sequence path
    of a conv model (shared.spec.window_counts: how many target windows use the node). The
    statistics are then those of the nodes repeated `counts` times: mean = sum(w x) / n,
    var = sum(w (x - mean)^2) / d, n = sum(w), d = n - 1 or n; and the backward becomes
        dx = inv_std * (dxhat - (w / n) * sum(dxhat) - (w / d) * xhat * sum(dxhat * xhat))
    (w = 1 everywhere gives the formula above).

    positions > 0: the lecture's layer before its fix (BatchNormSpec.per_position): (B, T, C)
    input with T = positions is reduced over dim 0 only, running stats (T, C), n = B. It does not
    combine with `counts` (ValueError: the conv model has no fixed T).
    """

    def __init__(self, dim: int, eps: float = 1e-5, momentum: float = 0.1, convention: str = "lecture",
                 dtype="float32", positions: int = 0):
        super().__init__()
        if convention not in ("lecture", "torch", "flax"):
            raise ValueError(f"unknown BatchNorm convention {convention!r}")
        self.eps, self.momentum, self.convention = eps, momentum, convention
        self.positions = positions
        stat = (positions, dim) if positions else (dim,)
        self.gamma = np.ones(dim, dtype=dtype)
        self.beta = np.zeros(dim, dtype=dtype)
        self.running_mean = np.zeros(stat, dtype=dtype)
        self.running_var = np.ones(stat, dtype=dtype)

    def parameters(self):
        return {"gamma": self.gamma, "beta": self.beta}

    def buffers(self):
        return {"running_mean": self.running_mean, "running_var": self.running_var}

    def __call__(self, x: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
        self.counts = None
        if self.training:
            dims = tuple(range(x.ndim - 1))  # (0,) for (B, C), (0, 1) for (B, T, C)
            if counts is not None and self.positions:
                raise ValueError("BatchNorm1d: per-position statistics (BatchNormSpec.per_position) "
                                 "do not combine with per-node weights (the whole-sequence path)")
            if self.positions:
                dims = (0,)                   # pre-fix: statistics per position and channel
            if counts is None:
                n = x.size // x.shape[-1] if not self.positions else x.shape[0]
            else:   # weighted nodes (whole-sequence path): n is the sum of the weights
                if counts.shape != x.shape[:-1]:
                    raise ValueError(f"counts of shape {counts.shape} for input {x.shape}")
                self.counts = w = counts.astype(x.dtype)[..., None]
                n = w.sum()   # a scalar of x's dtype: float32 stays float32
            if n < 2:
                raise ValueError("BatchNorm1d in train mode needs at least 2 values per channel")
            xmean = x.mean(dims) if counts is None else (w * x).sum(dims) / n
            xc = x - xmean
            sq = (xc * xc).sum(dims) if counts is None else (w * xc * xc).sum(dims)
            var_biased, var_unbiased = sq / n, sq / (n - 1)   # Python int divisors keep the dtype
            self.d = n - 1 if self.convention == "lecture" else n
            xvar = var_unbiased if self.convention == "lecture" else var_biased
            m = self.momentum
            # in place, so the arrays exported/loaded by model.py stay the same objects
            run = var_biased if self.convention == "flax" else var_unbiased
            self.running_mean[...] = (1 - m) * self.running_mean + m * xmean
            self.running_var[...] = (1 - m) * self.running_var + m * run
        else:
            xmean, xvar = self.running_mean, self.running_var
            xc = x - xmean
        self.inv_std = 1.0 / np.sqrt(xvar + self.eps)
        self.xhat = xc * self.inv_std
        self.out = self.gamma * self.xhat + self.beta
        return self.out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """dout like x -> dx like x; fills grads gamma, beta (C,). Train mode only (the batch
        statistics depend on x); in eval mode the running stats are constants."""
        self.dout = dout
        dims = tuple(range(dout.ndim - 1))
        xhat = self.xhat
        np.sum(dout * xhat, axis=dims, out=self._grad("gamma"))
        np.sum(dout, axis=dims, out=self._grad("beta"))
        dxhat = self.gamma * dout
        if not self.training:
            return dxhat * self.inv_std
        if self.counts is not None:
            w = self.counts
            n = w.sum()
            return self.inv_std * (dxhat - (w / n) * dxhat.sum(dims)
                                   - (w / self.d) * xhat * (dxhat * xhat).sum(dims))
        n = dout.size // dout.shape[-1]
        if self.positions:
            dims, n = (0,), dout.shape[0]
        return self.inv_std / n * (n * dxhat - dxhat.sum(dims) - (n / self.d) * xhat * (dxhat * xhat).sum(dims))


# torch ships Tanh and Sequential; here they are written out.
class Tanh(_Layer):
    """Elementwise tanh, any shape. Backward (Part 4 exercise 1): dx = (1 - out**2) * dout."""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.out = np.tanh(x)
        return self.out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        self.dout = dout
        return (1.0 - self.out * self.out) * dout


# torch and Flax have no tanh-sigmoid gate either (nn.GLU gates a linear half); here it is written out.
class Gate(_Layer):
    """The gated activation unit of WaveNet (van den Oord et al. 2016, eq. 2): x (..., 2 * dim)
    -> out (..., dim) = tanh(a) * sigmoid(b), a = x[..., :dim] the filter half, b = x[..., dim:]
    the gate half; dtype kept. sigmoid(b) is computed as (1 + tanh(b / 2)) / 2, which cannot
    overflow. Backward (the product and chain rules): da = dout * sigmoid(b) * (1 - tanh(a)**2),
    db = dout * tanh(a) * sigmoid(b) * (1 - sigmoid(b)).

    Raises ValueError for an input whose last axis is not 2 * dim.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.shape[-1] != 2 * self.dim:
            raise ValueError(f"Gate({self.dim}) needs {2 * self.dim} input channels, got shape {x.shape}")
        self.t = np.tanh(x[..., :self.dim])
        self.s = 0.5 * (1.0 + np.tanh(0.5 * x[..., self.dim:]))
        self.out = self.t * self.s
        return self.out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        self.dout = dout
        dx = np.empty((*dout.shape[:-1], 2 * self.dim), dtype=dout.dtype)
        dx[..., :self.dim] = dout * self.s * (1.0 - self.t * self.t)
        dx[..., self.dim:] = dout * self.t * self.s * (1.0 - self.s)
        return dx


# torch ships nn.Dropout, but it draws its own masks; here the mask comes from shared.stream.
class Dropout(_Layer):
    """Inverted dropout with a given mask (Srivastava et al. 2014, "Dropout: A Simple Way to
    Prevent Neural Networks from Overfitting"): out = x * mask, mask of x's shape with values 0
    (dropped) or 1/(1-p) (kept, scaled so the expected output is x). The masks are drawn in
    shared.stream.DropoutStream, so every backend drops the same units; no mask (eval mode, or
    no dropout) is the identity. Backward: dx = dout * mask.
    """

    def __call__(self, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        self.mask = mask
        self.out = x if mask is None else x * mask
        return self.out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        self.dout = dout
        return dout if self.mask is None else dout * self.mask


# Sequential runs the layers in order forward and in reverse order backward (autograd's job in torch/JAX).
class Sequential(_Layer):
    """Layers applied in order; backward runs them in reverse. `ids` are the canonical layer
    indices (ModelSpec.layer_ids; default the positions 0, 1, 2, ...), as torch's child names.

    A Dropout follows each Tanh and Gate (`dropouts[i]` for the one at position i). It is not one of the
    indexed layers, so the layer indices, and with them the canonical names, do not move; it
    does something only in a forward given `masks`.
    """

    def __init__(self, *layers: _Layer, ids=None):
        super().__init__()
        self.layers = list(layers)
        self.ids = list(range(len(layers))) if ids is None else list(ids)
        self.dropouts = {i: Dropout() for i, l in enumerate(self.layers) if isinstance(l, (Tanh, Gate))}

    def __getitem__(self, i: int) -> _Layer:
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def train(self, mode: bool = True) -> "Sequential":
        """Train mode (batch statistics) or eval mode (running statistics), as nn.Module.train."""
        self.training = mode
        for l in self.layers:
            l.training = mode
        return self

    def eval(self) -> "Sequential":
        return self.train(False)

    def __call__(self, x: np.ndarray, masks=None) -> np.ndarray:
        """x (B, block_size) int -> logits (B, vocab_size). `masks`: None, or one dropout mask per
        Tanh/Gate layer in order (train mode; shared.stream.DropoutStream), each of its output's shape."""
        masks = dict(zip(self.dropouts, masks)) if masks is not None else {}
        for i, l in enumerate(self.layers):
            x = l(x)
            if i in self.dropouts:
                x = self.dropouts[i](x, masks.get(i))
        self.out = x
        return x

    def backward(self, dout: np.ndarray) -> None:
        """Backpropagate dLoss/d(logits) through every layer (the embedding ends the chain)."""
        self.dout = dout
        for i in reversed(range(len(self.layers))):
            if i in self.dropouts:
                dout = self.dropouts[i].backward(dout)
            dout = self.layers[i].backward(dout)

    def named_parameters(self):
        """Yield (canonical name, array) of the trainable parameters, layer order."""
        for i, l in zip(self.ids, self.layers):
            for k, v in l.parameters().items():
                yield f"{i}.{k}", v
