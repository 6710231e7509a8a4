"""The machine's float32 matmul rate: one (2048, 2048) @ (2048, 2048) product with numpy, torch and
XLA (whichever are installed; lib is parametrized in conftest.py). makemore.bench takes the best
as the FLOP floor's rate; the process uses every core (no thread limit)."""
import numpy as np

from shared.flops import matmul_flops


def _product(lib: str, n: int):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    if lib == "numpy":
        return lambda: a @ b
    if lib == "torch":
        import torch
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        return lambda: ta @ tb
    import jax
    import jax.numpy as jnp
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    f = jax.jit(jnp.matmul)
    return lambda: f(ja, jb).block_until_ready()  # XLA is asynchronous: wait for the result


def test_matmul_2048(benchmark, request, lib):
    n = request.config.getoption("--mm-matmul-n")  # shared.flops.MATMUL_N = 2048 by default
    f = _product(lib, n)
    f()  # warm-up (and XLA compilation)
    benchmark.extra_info.update(kind="matmul", lib=lib, n=n, flops=matmul_flops(n))
    benchmark.pedantic(f, rounds=request.config.getoption("--mm-matmul-rounds"), warmup_rounds=1,
                       iterations=1)
