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

The matmul rate is measured in the same benchmark run (bench/test_matmul.py: the best of numpy,
torch and XLA on a 2048x2048 float32 product, 2*2048**3 FLOPs each); this module stays
framework-free and only does the arithmetic.
"""
from __future__ import annotations

from .spec import ModelSpec

MATMUL_N = 2048  # side of the square float32 product that measures the machine's matmul rate


def linear_shapes(spec: ModelSpec, batch_size: int) -> list[tuple[int, int, int, int]]:
    """(layer index, M, K, N) of every Linear layer for a batch of `batch_size` examples.

    M = batch_size * positions at that layer, K = fan_in, N = fan_out.
    Raises ValueError for batch_size < 1 or a FlattenConsecutive that does not divide the positions.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    T, out = spec.block_size, []
    for i, l in enumerate(spec.layers):
        if l.kind == "flatten":
            if T % l.n:
                raise ValueError(f"layer {i}: FlattenConsecutive({l.n}) does not divide {T} positions")
            T //= l.n
        elif l.kind == "linear":
            out.append((i, batch_size * T, l.fan_in, l.fan_out))
    return out


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
