"""The matmuls of one training step alone, in each backend's own library (numpy: OpenBLAS, torch:
MKL, JAX: XLA), with the thread setting of the training-step rows they sit beside.

A Linear layer's step is three GEMMs (shared/flops.py): Y = X @ W, dW = X.T @ dY, dX = dY @ W.T.
This benchmark runs exactly those products (same shapes, same transposes, float32, random
values) for every Linear of the preset, k steps per call (100, or --mm-steps), and nothing else: no BatchNorm,
tanh, softmax or update. Its time per step is what a perfect implementation of the rest of the
step would still pay in that library, so `fast path / this` tells how much of a backend's step is
not GEMM, and `this / floor` how far the library's own GEMMs at these small shapes are from the
2048x2048 rate that sets the floor.

XLA: the k steps are one jitted lax.scan over k different left operands (so nothing can be
hoisted out of the loop); each product is reduced to a scalar to keep it live, which adds one
reduction over each output (under 1% of the work).
"""
import numpy as np

from shared.flops import linear_shapes, train_step_flops
from makemore.registry import get_backend

from benchlib import run_benchmark, spec_for

STEPS_PER_CALL = 100
LIB = {"numpy": "numpy", "torch": "torch", "jax": "xla"}


def _operands(preset: str, batch: int):
    """[(X (M, K), W (K, N), dY (M, N))] per Linear, float32, and the step's matmul FLOPs."""
    spec, _ = spec_for(preset, "float32")
    rng = np.random.default_rng(0)
    ops = [tuple(rng.standard_normal(s, dtype=np.float32) for s in ((M, K), (K, N), (M, N)))
           for _, M, K, N in linear_shapes(spec, batch)]
    return ops, train_step_flops(spec, batch)


def _gemms(lib: str, ops, k: int):
    if lib == "numpy":
        def fn():
            for _ in range(k):
                for X, W, dY in ops:
                    X @ W, X.T @ dY, dY @ W.T
        return fn
    if lib == "torch":
        import torch
        tops = [tuple(torch.from_numpy(a) for a in o) for o in ops]

        def fn():
            with torch.no_grad():
                for _ in range(k):
                    for X, W, dY in tops:
                        X @ W, X.t() @ dY, dY @ W.t()
        return fn
    import jax
    import jax.numpy as jnp
    Xs = [jnp.asarray(np.stack([X * (1 + i / k) for i in range(k)])) for X, _, _ in ops]
    rest = [(jnp.asarray(W), jnp.asarray(dY)) for _, W, dY in ops]

    @jax.jit
    def steps(Xs, rest):
        def body(acc, Xi):
            for X, (W, dY) in zip(Xi, rest):
                acc = acc + jnp.sum(X @ W) + jnp.sum(X.T @ dY) + jnp.sum(dY @ W.T)
            return acc, None
        return jax.lax.scan(body, jnp.float32(0), Xs)[0]

    return lambda: steps(Xs, rest).block_until_ready()


def test_step_gemms(benchmark, request, backend):
    get_backend(backend)  # the process state the backend's own rows see (impl_numpy warms up BLAS)
    ops, flops = _operands("wavenet", 32)
    k = request.config.getoption("--mm-steps") or STEPS_PER_CALL
    run_benchmark(benchmark, request, _gemms(LIB[backend], ops, k), dict(
        kind="step_gemms", backend=backend, path="gemms", preset="wavenet", batch_size=32,
        dtype="float32", steps_per_call=k, flops=flops))
