"""One training step (forward, backward, SGD update) per backend x path x preset x batch x dtype.

path 'plain' is the backend's train_step called once per step (what `makemore train` runs);
'fast' is its fast_train_steps (`makemore train --fast`): torch.compile of a hand-fused step for
torch, preallocated in-place buffers for numpy, k steps in one jitted lax.scan for JAX. Both
paths run the same k real minibatches per call, so the time per step is the call's time / k.
path 'bare loop' (backend torch only) is the baseline a user would otherwise run: the lecture's own
eager loop, hand-made parameter tensors and `p.data += -lr * p.grad` (bench/torch_bare_loop.py),
on the same minibatches as torch tensors (the notebook keeps Xtr, Ytr as tensors).
Backends return host values (floats / numpy arrays), so JAX timings include waiting for the
result; the first call (compilation) is timed apart as first_call_s.
"""
import pytest

from shared.flops import train_step_flops
from shared.params import init_params
from makemore.registry import get_backend
from shared.stream import BatchStream, seed_streams
from shared.config import TrainConfig

from benchlib import STEPS_PER_CALL, run_benchmark, spec_for


def test_train_step(benchmark, request, backend, path, train_cfg):
    preset, batch, dtype = train_cfg
    B = get_backend(backend)
    if path == "fast" and not hasattr(B, "fast_train_steps"):
        pytest.skip(f"{backend} has no fast_train_steps")
    spec, data = spec_for(preset, dtype)
    k = request.config.getoption("--mm-steps") or STEPS_PER_CALL.get(batch, 10)
    model = B.build_model(spec)
    B.load_params(model, init_params(spec, seed_streams(42)[0]))
    opt = B.Optimizer(model, TrainConfig(steps=10 ** 9))  # lr stays 0.1
    Xtr, Ytr = data.train
    ix = BatchStream(42, len(Xtr), batch).take(k)
    Xs, Ys = Xtr[ix], Ytr[ix]
    if path == "bare":
        import numpy as np
        import torch
        import torch_bare_loop
        bare = torch_bare_loop.build(spec, init_params(spec, seed_streams(42)[0]))
        tX, tY = torch.from_numpy(Xs.astype(np.int64)), torch.from_numpy(Ys.astype(np.int64))

        def fn():
            return torch_bare_loop.train(bare, tX, tY)  # lr 0.1, as the plain path's
    elif path == "plain":
        def fn():
            return [B.train_step(model, opt, Xs[i], Ys[i]) for i in range(k)]
    else:
        def fn():
            return B.fast_train_steps(model, opt, Xs, Ys)
    run_benchmark(benchmark, request, fn, dict(
        kind="train_step", backend=backend, path="bare loop" if path == "bare" else path, preset=preset,
        batch_size=batch, dtype=dtype, steps_per_call=k, flops=train_step_flops(spec, batch)))
