"""The one model spec every backend builds from, and the lecture's presets.

Source: Karpathy, "Building makemore Part 5: Building a WaveNet" (makemore_part5_cnn1.ipynb):
the performance log at the end of the lecture (original 3-char MLP 12k params, context 8 22k,
hierarchical 22k, scaled-up hierarchical 76k) and its layer classes (Embedding,
FlattenConsecutive, Linear, BatchNorm1d, Tanh, Sequential). WaveNet: van den Oord et al. 2016,
"WaveNet: A Generative Model for Raw Audio" (dilated causal convolutions); the lecture names it the
efficient version of its hierarchical model at 47:44 ("convolutions") and leaves it for later:
`conv_spec` and the `wavenet-conv` preset are that version (issue 14).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

import numpy as np

DTYPES = ("float32", "float64")
# the activation kinds, and the layer names messages give them: a dropout mask follows each
# (shared.stream.dropout_shapes)
ACTIVATIONS = {"tanh": "Tanh", "gate": "gate"}
BN_CONVENTIONS = ("lecture", "torch", "flax")


@dataclass(frozen=True)
class LayerSpec:
    """One layer. `kind` is one of embedding, flatten, linear, conv, batchnorm, tanh, gate.

    Fields used per kind: embedding (num, dim), flatten (n: merge n consecutive positions),
    linear (fan_in, fan_out, bias), conv (fan_in channels, fan_out channels, n taps (kernel size),
    dilation, bias: a dilated causal convolution, CausalConv1d; weight (n * fan_in, fan_out)),
    batchnorm (dim), tanh (none), gate (dim: its output width; the input has 2 * dim channels,
    out = tanh(x[..., :dim]) * sigmoid(x[..., dim:]), the gated activation unit of van den Oord et
    al. 2016, "WaveNet", eq. 2, with the filter and gate convolutions as one Linear of 2 * dim).
    """
    kind: str
    num: int = 0
    dim: int = 0
    n: int = 0
    fan_in: int = 0
    fan_out: int = 0
    bias: bool = True
    dilation: int = 0


@dataclass(frozen=True)
class BatchNormSpec:
    """BatchNorm semantics (docs/design.md table). momentum is always the torch/lecture meaning:
    running = (1 - momentum) * running + momentum * batch_stat (flax's momentum 0.9 == ours 0.1).

    convention: 'lecture' normalises with the unbiased (n-1) variance and keeps it as running_var;
    'torch' normalises with the biased (n) variance, keeps the unbiased one; 'flax' uses the biased
    variance for both. n counts every reduced element (B, or B*T for 3-D input).

    per_position: the lecture's BatchNorm1d before its fix (Part 5 at 38:50, the third row of the
    performance log): 3-D input (B, T, C) is reduced over dim 0 only, so the statistics (and
    running_mean/running_var, shape (T, C)) are per position and channel, n = B; gamma and beta
    stay (C,). 2-D input is unaffected. False (default): reduce over (0, 1), the fixed layer.
    """
    convention: str = "lecture"
    eps: float = 1e-5
    momentum: float = 0.1
    per_position: bool = False


@dataclass(frozen=True)
class ModelSpec:
    """A model: ordered layers plus the sizes they were made from.

    Attributes:
        name: preset name (informational).
        vocab_size, block_size, n_embd, n_hidden: the lecture's sizes.
        layers: tuple of LayerSpec, applied in order to int token ids (B, block_size).
        dtype: 'float32' or 'float64' for every parameter and activation.
        batchnorm: BatchNormSpec shared by every BatchNorm1d layer.
        last_layer_scale: the last Linear's weight is multiplied by this at init (lecture: 0.1).
    """
    name: str
    vocab_size: int
    block_size: int
    n_embd: int
    n_hidden: int
    layers: tuple[LayerSpec, ...]
    dtype: str = "float32"
    batchnorm: BatchNormSpec = field(default_factory=BatchNormSpec)
    last_layer_scale: float = 0.1

    def __post_init__(self):
        # a list of layers would make the (frozen) spec unhashable; JAX keys compiled functions on it
        object.__setattr__(self, "layers", tuple(self.layers))
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.batchnorm.convention not in BN_CONVENTIONS:
            raise ValueError(f"BatchNorm convention must be one of {BN_CONVENTIONS}, "
                             f"got {self.batchnorm.convention!r}")
        L = self.layers
        if not L or L[0].kind != "embedding" or L[0].num != self.vocab_size:
            raise ValueError(f"spec {self.name!r}: the first layer must be an embedding of "
                             f"vocab_size {self.vocab_size} rows")
        if L[-1].kind != "linear" or L[-1].fan_out != self.vocab_size:
            raise ValueError(f"spec {self.name!r}: the last layer must be a Linear to vocab_size "
                             f"{self.vocab_size} logits")
        T, C = self.block_size, 0   # positions and channels after each layer
        for i, l in enumerate(L):
            if l.kind == "embedding":
                C = l.dim
            elif l.kind in ("linear", "conv"):
                C = l.fan_out
            elif l.kind == "gate":
                if l.dim < 1 or C != 2 * l.dim:
                    raise ValueError(f"spec {self.name!r}: layer {i} gate of dim {l.dim} needs "
                                     f"2 * {l.dim} input channels, the layers before it give {C}")
                C = l.dim
            if l.kind == "flatten":
                C *= l.n
                if l.n < 1 or T % l.n:
                    raise ValueError(f"spec {self.name!r}: layer {i} FlattenConsecutive({l.n}) does "
                                     f"not divide the {T} positions left")
                T //= l.n
            elif l.kind == "conv":
                if l.n < 2 or l.dilation < 1:
                    raise ValueError(f"spec {self.name!r}: layer {i} conv needs n >= 2 taps and "
                                     f"dilation >= 1, got n={l.n}, dilation={l.dilation}")
                if T - (l.n - 1) * l.dilation < 1:
                    raise ValueError(f"spec {self.name!r}: layer {i} conv (n={l.n}, dilation="
                                     f"{l.dilation}) reaches past the {T} positions left")
                T -= (l.n - 1) * l.dilation
        if self.batchnorm.per_position and any(l.kind == "conv" for l in L):
            raise ValueError(f"spec {self.name!r}: the per-position BatchNorm (BatchNormSpec.per_position, "
                             "--bn-per-position) needs a fixed number of positions per layer; conv "
                             "models (wavenet-conv) do not support it yet")
        if T != 1:
            raise ValueError(f"spec {self.name!r}: the flatten and conv layers leave {T} positions of "
                             f"block_size {self.block_size}; they must merge all of them")

    def check_train_batch(self, batch_size: int) -> None:
        """Check that a train-mode step on `batch_size` examples can run: at least one example,
        and every BatchNorm1d sees at least 2 values per channel (batch_size times the positions
        left at that layer), as the layers themselves require in train mode.

        Raises:
            ValueError: saying which layer and what batch size to use instead.
        """
        if batch_size < 1:
            raise ValueError(f"batch size {batch_size}: a training step needs at least 1 example")
        T = self.block_size
        for i, l in enumerate(self.layers):
            if l.kind == "flatten":
                T //= l.n
            elif l.kind == "conv":
                T -= (l.n - 1) * l.dilation
            elif l.kind == "batchnorm" and batch_size * T < 2:
                raise ValueError(f"batch size {batch_size}: BatchNorm1d (layer {i}) needs at least 2 "
                                 f"values per channel in train mode and would get {batch_size * T}; use "
                                 "a batch size of 2 or more (the lecture uses 32)")

    @property
    def convolutional(self) -> bool:
        """True for a model of CausalConv1d layers and no FlattenConsecutive (conv_spec): it also
        trains on whole names at once (the backends' sequence_* functions)."""
        kinds = {l.kind for l in self.layers}
        return "conv" in kinds and "flatten" not in kinds

    def layer_ids(self) -> tuple[int, ...]:
        """The canonical index of every layer (the k of `k.weight`, `k.gamma`): its position in
        `layers`, where a conv layer counts as the two layers it stands for, FlattenConsecutive
        then Linear, and takes the Linear's index. So a conv model made by conv_spec has the
        hierarchical model's parameter names (wavenet-conv: 2.weight, 3.gamma, ..., 13.bias, as
        wavenet) and a checkpoint of one loads into the other. Without conv layers the ids are
        0, 1, 2, ... (the position)."""
        ids, k = [], 0
        for l in self.layers:
            k += l.kind == "conv"   # the FlattenConsecutive slot the convolution absorbs
            ids.append(k)
            k += 1
        return tuple(ids)

    def bn_positions(self, i: int) -> int:
        """T of the per-position BatchNorm1d at layer i (BatchNormSpec.per_position and a 3-D
        input of T > 1 positions there): its running stats have shape (T, C). 0 otherwise,
        where the stats are (C,)."""
        if not self.batchnorm.per_position:
            return 0
        T = self.block_size
        for l in self.layers[:i]:
            if l.kind == "flatten":
                T //= l.n
        return T if T > 1 else 0

    def with_(self, **changes) -> "ModelSpec":
        """Copy with fields replaced; `bn_convention`, `bn_eps`, `bn_momentum` change BatchNorm."""
        bn = {k[3:]: changes.pop(k) for k in list(changes) if k.startswith("bn_")}
        if bn:
            changes["batchnorm"] = replace(self.batchnorm, **bn)
        return replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        d = json.loads(text)
        d["layers"] = tuple(LayerSpec(**l) for l in d["layers"])
        d["batchnorm"] = BatchNormSpec(**d["batchnorm"])
        return cls(**d)


def _hidden_block(fan_in: int, n_hidden: int, gated: bool = False) -> list[LayerSpec]:
    # gated: the Linear and BatchNorm have 2 * n_hidden channels, filter and gate halves
    if gated:
        return [LayerSpec("linear", fan_in=fan_in, fan_out=2 * n_hidden, bias=False),
                LayerSpec("batchnorm", dim=2 * n_hidden), LayerSpec("gate", dim=n_hidden)]
    return [LayerSpec("linear", fan_in=fan_in, fan_out=n_hidden, bias=False),
            LayerSpec("batchnorm", dim=n_hidden), LayerSpec("tanh")]


def mlp_spec(vocab_size: int = 27, block_size: int = 3, n_embd: int = 10, n_hidden: int = 200,
             name: str = "mlp", **kw) -> ModelSpec:
    """Embedding -> Flatten(all block_size) -> Linear/BN/Tanh -> Linear (Part 3/5 MLP)."""
    layers = [LayerSpec("embedding", num=vocab_size, dim=n_embd),
              LayerSpec("flatten", n=block_size),
              *_hidden_block(n_embd * block_size, n_hidden),
              LayerSpec("linear", fan_in=n_hidden, fan_out=vocab_size, bias=True)]
    return ModelSpec(name, vocab_size, block_size, n_embd, n_hidden, tuple(layers), **kw)


def wavenet_spec(vocab_size: int = 27, block_size: int = 8, n_embd: int = 24, n_hidden: int = 128,
                 name: str = "wavenet", gated: bool = False, **kw) -> ModelSpec:
    """Hierarchical model of Part 5: three FlattenConsecutive(2) stages, each Linear/BN/Tanh.

    gated: each stage is Linear(fan_in, 2 * n_hidden)/BN(2 * n_hidden)/gate(n_hidden) instead, the
    WaveNet paper's gated activation units (van den Oord et al. 2016, eq. 2; issue 13): about
    twice the parameters per stage, so n_hidden 89 (76,058 parameters) fits the lecture's budget.
    """
    if block_size < 2 or block_size & (block_size - 1):
        raise ValueError(f"the hierarchical model needs block_size a power of two >= 2, got {block_size}")
    layers = [LayerSpec("embedding", num=vocab_size, dim=n_embd)]
    width = n_embd
    for _ in range(block_size.bit_length() - 1):
        layers += [LayerSpec("flatten", n=2), *_hidden_block(width * 2, n_hidden, gated)]
        width = n_hidden
    layers.append(LayerSpec("linear", fan_in=n_hidden, fan_out=vocab_size, bias=True))
    return ModelSpec(name, vocab_size, block_size, n_embd, n_hidden, tuple(layers), **kw)


def conv_spec(spec: ModelSpec, name: str | None = None) -> ModelSpec:
    """The dilated causal convolution model equal to a hierarchical spec (issue 14; lecture Part 5
    at 47:44; van den Oord et al. 2016, Fig. 3).

    Every FlattenConsecutive(n) followed by Linear(n*C, H) becomes CausalConv1d(C, H, n taps,
    dilation = the product of the earlier n's): for wavenet, kernel 2 and dilations 1, 2, 4. The
    convolution computes the Linear at every position instead of every n-th one, so a sequence of
    L + block_size - 1 tokens gives L outputs, each the hierarchical model's output for the
    block_size tokens that end there. Same sizes, BatchNorm spec and canonical parameter names
    (ModelSpec.layer_ids) and the same initial parameters (init_params draws the same arrays).

    Raises:
        ValueError: a FlattenConsecutive not followed by a Linear whose fan_in it divides.
    """
    layers, dilation, L = [], 1, spec.layers
    i = 0
    while i < len(L):
        l = L[i]
        if l.kind == "flatten":
            nxt = L[i + 1] if i + 1 < len(L) else None
            if nxt is None or nxt.kind != "linear" or nxt.fan_in % l.n:
                raise ValueError(f"spec {spec.name!r}: layer {i} FlattenConsecutive({l.n}) must be "
                                 "followed by a Linear over the merged positions to become a convolution")
            layers.append(LayerSpec("conv", n=l.n, fan_in=nxt.fan_in // l.n, fan_out=nxt.fan_out,
                                    bias=nxt.bias, dilation=dilation))
            dilation *= l.n
            i += 2
        else:
            layers.append(l)
            i += 1
    return replace(spec, name=name or f"{spec.name}-conv", layers=tuple(layers))


def window_counts(spec: ModelSpec, mask) -> list:
    """How many target windows use each position of every BatchNorm1d input of a conv model, for a
    batch of whole sequences with target mask `mask` (B, L) bool: the per-node weights of the
    sequence path's BatchNorm statistics.

    A target t has the hierarchical model's tree of nodes below it (Part 5's FlattenConsecutive
    tree: 4, 2, 1 nodes for wavenet); the convolution computes every node once, and a node shared
    by k windows counts k times, so a train-mode step on whole names has the batch statistics of
    the hierarchical model on all their windows (docs/design.md, "Whole-sequence training").
    Counts go down from the mask: below a conv with n taps and dilation d, input position p
    gets sum_j count[p - j*d] (j = 0..n-1).

    Returns:
        one entry per layer: a (B, T) float64 array for each BatchNorm1d layer (T = positions of
        its input), None for the other layers.
    Raises:
        ValueError: the spec has FlattenConsecutive layers (sequences need a conv model) or mask
            is not 2-D.
    """
    if not spec.convolutional:
        raise ValueError(f"spec {spec.name!r} flattens positions; whole-sequence training needs a "
                         "convolutional spec (conv_spec, preset wavenet-conv)")
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (B, L), got shape {mask.shape}")
    c = mask.astype(np.float64)
    out: list = [None] * len(spec.layers)
    for i in reversed(range(len(spec.layers))):
        l = spec.layers[i]
        if l.kind == "batchnorm":
            out[i] = c
        elif l.kind == "conv":
            B, T = c.shape
            below = np.zeros((B, T + (l.n - 1) * l.dilation))
            for j in range(l.n):   # tap j of output t reads input t + j*d
                below[:, j * l.dilation:j * l.dilation + T] += c
            c = below
    return out


# Each preset takes n_embd / n_hidden overrides (the sizes a sweep searches; get_spec).
PRESETS = {
    "mlp": lambda n_embd=10, n_hidden=200, **kw: mlp_spec(block_size=3, n_embd=n_embd, n_hidden=n_hidden,
                                                          name="mlp", **kw),
    "mlp-8": lambda n_embd=10, n_hidden=200, **kw: mlp_spec(block_size=8, n_embd=n_embd, n_hidden=n_hidden,
                                                            name="mlp-8", **kw),
    "wavenet-22k": lambda n_embd=10, n_hidden=68, **kw: wavenet_spec(block_size=8, n_embd=n_embd,
                                                                     n_hidden=n_hidden, name="wavenet-22k", **kw),
    "wavenet": lambda n_embd=24, n_hidden=128, **kw: wavenet_spec(block_size=8, n_embd=n_embd,
                                                                  n_hidden=n_hidden, name="wavenet", **kw),
    # the lecture's WaveNet trained with another recipe (shared.config.PRESET_RECIPES, issue 13)
    "wavenet-tuned": lambda n_embd=24, n_hidden=128, **kw: wavenet_spec(block_size=8, n_embd=n_embd,
                                                                        n_hidden=n_hidden, name="wavenet-tuned", **kw),
    # gated units at the lecture's budget (n_hidden 89: 76,058 parameters), its own recipe (issue 13)
    "wavenet-gated": lambda n_embd=24, n_hidden=89, **kw: wavenet_spec(block_size=8, n_embd=n_embd, n_hidden=n_hidden,
                                                                       name="wavenet-gated", gated=True, **kw),
    "wavenet-conv": lambda n_embd=24, n_hidden=128, **kw: conv_spec(
        wavenet_spec(block_size=8, n_embd=n_embd, n_hidden=n_hidden, **kw), name="wavenet-conv"),
}


def get_spec(preset: str, vocab_size: int = 27, dtype: str = "float32",
             bn_convention: str = "lecture", *, n_embd: int | None = None, n_hidden: int | None = None,
             bn_per_position: bool = False) -> ModelSpec:
    """The preset's spec; n_embd / n_hidden (None: the preset's) resize it, bn_per_position
    selects the lecture's pre-fix BatchNorm (BatchNormSpec.per_position).

    Raises ValueError naming the known presets for an unknown one, or a size below 1."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    sizes = {k: v for k, v in (("n_embd", n_embd), ("n_hidden", n_hidden)) if v is not None}
    for k, v in sizes.items():
        if v < 1:
            raise ValueError(f"{k} must be >= 1, got {v}")
    return PRESETS[preset](vocab_size=vocab_size, dtype=dtype, **sizes,
                           batchnorm=BatchNormSpec(convention=bn_convention, per_position=bn_per_position))
