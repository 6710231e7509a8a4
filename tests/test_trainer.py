"""The trainer's fast loop makes each chunk's batches and dropout masks on a helper thread while
the backend trains on the previous chunk (makemore/trainer.py): the run must be the one made in
line, k fast_train_steps calls on BatchStream / DropoutStream chunks of FAST_CHUNK steps."""
import numpy as np
import pytest

from makemore.registry import available_backends, get_backend
from makemore.trainer import FAST_CHUNK, train
from shared.config import TrainConfig
from shared.params import init_params
from shared.spec import get_spec
from shared.stream import BatchStream, DropoutStream, dropout_shapes, seed_streams

# numpy and JAX: the prefetch is the trainer's, the same for every backend (torch's compile of the
# fused step would add half a minute to the suite and test nothing more here)
FAST = [b for b in available_backends() if b != "torch"]


@pytest.mark.parametrize("backend", FAST)
def test_the_prefetched_fast_loop_is_the_in_line_one(backend, data3):
    spec = get_spec("mlp", dtype="float64")
    cfg = TrainConfig(steps=2 * FAST_CHUNK + 37, batch_size=16, seed=5, dropout=0.1)  # a partial chunk
    res = train(backend, spec, cfg, data3, fast=True, evaluate=False, n_samples=0)
    B = get_backend(backend)
    model = B.build_model(spec)
    B.load_params(model, init_params(spec, seed_streams(cfg.seed)[0]))
    opt = B.Optimizer(model, cfg)
    rows = BatchStream(cfg.seed, len(data3.train[0]), cfg.batch_size).take(cfg.steps)
    drops = DropoutStream(cfg.seed, cfg.dropout, dropout_shapes(spec, cfg.batch_size), spec.dtype)
    Xtr, Ytr = data3.train
    want = []
    for i in range(0, cfg.steps, FAST_CHUNK):
        ix = rows[i:i + FAST_CHUNK]
        want.append(B.fast_train_steps(model, opt, Xtr[ix], Ytr[ix], masks=drops.take(i, len(ix))))
    np.testing.assert_array_equal(res.losses, np.concatenate(want))
    got, ref = B.export_params(res.model), B.export_params(model)
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
