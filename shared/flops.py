"""The FLOP floor of a training step: matmul FLOPs counted from the spec, over a measured matmul rate.

What is counted (every matmul of a training step, forward and backward):

    A Linear layer maps M rows of K features to N features, M = batch_size * positions (the
    positions left at that layer after the FlattenConsecutive stages: 4, 2, 1 for `wavenet`,
    1 for `mlp`), K = fan_in, N = fan_out. One multiply-add is 2 FLOPs, so
        forward            Y  = X @ W        2*M*K*N
        weight gradient    dW = X.T @ dY     2*M*K*N
        input gradient     dX = dY @ W.T     2*M*K*N   (also for the first Linear: the embedding
                                                        table is trained, so its input needs dX)
    and a training step costs 6*M*K*N per Linear; an evaluation (forward only) 2*M*K*N.

Not counted (all O(M*N) or less, small next to O(M*K*N) at these widths, and never the limit on
a machine that reaches the matmul rate): the embedding gather and its scatter-add gradient,
biases, BatchNorm, tanh, softmax/cross-entropy, and the SGD update. The floor is therefore a
lower bound on the time a step can take: floor_s = train_step_flops / matmul_rate.

Hand count for `wavenet` (emb 24, hidden 128, block 8) at batch 32:
    Linear(48->128)  on 32*4 rows: 6*128*48*128  =  4,718,592
    Linear(256->128) on 32*2 rows: 6*64*256*128  = 12,582,912
    Linear(256->128) on 32 rows:   6*32*256*128  =  6,291,456
    Linear(128->27)  on 32 rows:   6*32*128*27   =    663,552
    total                                          24,256,512 FLOPs (about 24.3 MFLOP)

A conv layer (CausalConv1d, kernel n, dilation d) is one GEMM of the same kind: its n taps side
by side are K = n * fan_in features, and it computes M = rows * positions of its output, where a
layer over T positions has T - (n-1)*d. On (B, block_size) contexts that is 7, 5, 1 positions for
`wavenet-conv` (more than the hierarchical 4, 2, 1: a context uses only some of them); on whole
sequences of L targets (B, L + 7) it is L + 6, L + 4, L, and every output is a target
(sequence_train_step_flops).

Hand count for `wavenet-conv` on 32 names of L = 7 targets (224 targets, inputs of 14 tokens):
    conv(24 -> 128, d=1) on 32*13 rows: 6*416*48*128  = 15,335,424
    conv(128 -> 128, d=2) on 32*11 rows: 6*352*256*128 = 69,206,016
    conv(128 -> 128, d=4) on 32*7 rows:  6*224*256*128 = 44,040,192
    Linear(128->27)       on 32*7 rows:  6*224*128*27  =  4,644,864
    total                                               133,226,496 FLOPs, 594,761 per target
against 758,016 per target for the hierarchical step (24,256,512 / 32): 1.27x fewer FLOPs per
target. The gain is modest because names are short: 7 of the 14 input positions are padding
context, and the tree saves work only below its top.

The matmul rate is measured in the same benchmark run (bench/test_matmul.py: the best of numpy,
torch and XLA on a 2048x2048 float32 product, 2*2048**3 FLOPs each); this module stays
framework-free and only does the arithmetic.
"""
from __future__ import annotations

from .spec import ModelSpec

MATMUL_N = 2048  # side of the square float32 product that measures the machine's matmul rate


def linear_shapes(spec: ModelSpec, batch_size: int) -> list[tuple[int, int, int, int]]:
    """(layer index, M, K, N) of every Linear (and conv) layer for a batch of `batch_size` examples.

    M = batch_size * positions at that layer, K = fan_in (n * fan_in for a conv), N = fan_out.
    Raises ValueError for batch_size < 1 or a FlattenConsecutive that does not divide the positions.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return _gemm_shapes(spec, batch_size, spec.block_size)


def _gemm_shapes(spec: ModelSpec, batch_size: int, T: int) -> list[tuple[int, int, int, int]]:
    # (layer index, M, K, N) of every Linear and conv layer for batch_size rows of T positions
    out = []
    for i, l in enumerate(spec.layers):
        if l.kind == "flatten":
            if T % l.n:
                raise ValueError(f"layer {i}: FlattenConsecutive({l.n}) does not divide {T} positions")
            T //= l.n
        elif l.kind == "conv":
            T -= (l.n - 1) * l.dilation
            out.append((i, batch_size * T, l.n * l.fan_in, l.fan_out))
        elif l.kind == "linear":
            out.append((i, batch_size * T, l.fan_in, l.fan_out))
    return out


def sequence_linear_shapes(spec: ModelSpec, batch_size: int, length: int) -> list[tuple[int, int, int, int]]:
    """(layer index, M, K, N) of every conv and Linear layer of a conv model for `batch_size`
    whole sequences of `length` targets (inputs of length + block_size - 1 tokens, padding
    included: it is computed like the rest).

    Raises ValueError for batch_size or length < 1, or a spec that is not convolutional.
    """
    if batch_size < 1 or length < 1:
        raise ValueError(f"batch_size and length must be >= 1, got {batch_size}, {length}")
    if not spec.convolutional:
        raise ValueError(f"spec {spec.name!r} is not convolutional: it has no sequence step")
    return _gemm_shapes(spec, batch_size, length + spec.block_size - 1)


def sequence_train_step_flops(spec: ModelSpec, batch_size: int, length: int) -> int:
    """Matmul FLOPs of one whole-sequence training step (sequence_train_step) of a conv model on
    (batch_size, length + block_size - 1) inputs: sum of 6*M*K*N. 133,226,496 for `wavenet-conv`
    on 32 names of 7 targets (module docstring)."""
    return sum(6 * M * K * N for _, M, K, N in sequence_linear_shapes(spec, batch_size, length))


def forward_flops(spec: ModelSpec, batch_size: int) -> int:
    """Matmul FLOPs of one forward pass over `batch_size` examples: sum of 2*M*K*N."""
    return sum(2 * M * K * N for _, M, K, N in linear_shapes(spec, batch_size))


def train_step_flops(spec: ModelSpec, batch_size: int) -> int:
    """Matmul FLOPs of one training step (forward, dW, dX of every Linear): sum of 6*M*K*N.

    24,256,512 for the `wavenet` preset at batch 32 (module docstring).
    """
    return 3 * forward_flops(spec, batch_size)


def matmul_flops(n: int = MATMUL_N) -> int:
    """FLOPs of one (n, n) @ (n, n) product: 2*n**3."""
    return 2 * n ** 3


def floor_seconds(flops: int | float, gflops: float) -> float:
    """Time the FLOPs take at `gflops` (GFLOP/s, > 0): the floor, in seconds."""
    if not gflops > 0:
        raise ValueError(f"the matmul rate must be > 0 GFLOP/s, got {gflops}")
    return flops / (gflops * 1e9)


def floor_ratio(seconds: float, flops: int | float, gflops: float) -> float:
    """Measured seconds over floor seconds (1.0 would be the machine's matmul rate)."""
    return seconds / floor_seconds(flops, gflops)
