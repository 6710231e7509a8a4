"""impl_torch against torch.nn's own BatchNorm1d, its (fan_out, fan_in) layout, and its compiled
fast path (the contract itself is tested for every backend in test_backend_contract.py)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import impl_torch as T  # noqa: E402
from impl_torch.layers import BatchNorm1d, FlattenConsecutive  # noqa: E402
from shared.params import init_params  # noqa: E402
from shared.spec import get_spec  # noqa: E402
from shared.config import TrainConfig  # noqa: E402



def test_conventions_really_differ(rng):
    x = torch.from_numpy(rng.normal(size=(8, 3)))
    outs = {c: BatchNorm1d(3, convention=c).double()(x).detach() for c in ("lecture", "torch")}
    assert not torch.allclose(outs["lecture"], outs["torch"], rtol=1e-6)


@pytest.mark.parametrize("shape", [(32, 6), (16, 4, 6)])
def test_torch_convention_matches_nn_batchnorm1d(shape, rng):
    # nn.BatchNorm1d wants channels in dim 1: (B, C) as is, (B, T, C) transposed to (B, C, T).
    x = torch.from_numpy(rng.normal(1.0, 3.0, size=shape))
    ours = BatchNorm1d(6, convention="torch").double()
    ref = torch.nn.BatchNorm1d(6, eps=1e-5, momentum=0.1).double()
    for _ in range(3):
        y = ours(x)
        y_ref = ref(x if x.ndim == 2 else x.transpose(1, 2))
        y_ref = y_ref if x.ndim == 2 else y_ref.transpose(1, 2)
        torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.running_mean, ref.running_mean, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ours.running_var, ref.running_var, rtol=1e-12, atol=1e-14)


def test_flatten_consecutive():
    x = torch.arange(2 * 8 * 3).view(2, 8, 3)
    y = FlattenConsecutive(2)(x)
    assert y.shape == (2, 4, 6)
    assert y[0, 1].tolist() == x[0, 2].tolist() + x[0, 3].tolist()
    assert FlattenConsecutive(8)(x).shape == (2, 24)
    with pytest.raises(ValueError, match="multiple of n"):
        FlattenConsecutive(3)(x)


@pytest.mark.parametrize("preset", ["mlp", "wavenet"])
def test_linear_weights_are_stored_transposed(preset):
    spec = get_spec(preset, dtype="float64")
    params = init_params(spec, 5)
    model = T.build_model(spec)
    T.load_params(model, params)
    # torch stores Linear weights as (fan_out, fan_in): the canonical (fan_in, fan_out) transposed
    for lin in [i for i, l in enumerate(spec.layers) if l.kind == "linear"]:
        assert tuple(model[lin].weight.shape) == params[f"{lin}.weight"].shape[::-1]
        np.testing.assert_array_equal(model[lin].weight.detach().numpy(), params[f"{lin}.weight"].T)
    np.testing.assert_array_equal(model[0].weight.detach().numpy(), params["0.weight"])




@pytest.fixture
def one_thread():
    """One torch thread (the fast path's own setting at batch 32): two OpenMP threads on a busy
    2-core CI machine made plain steps 30x slower. Restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_compiled_fast_path_matches_train_step_float32(one_thread, rng):
    spec = get_spec("wavenet")
    p = init_params(spec, 5)
    cfg = TrainConfig(steps=20, lr_decay_step=4)
    Xs, Ys = rng.integers(0, 27, (10, 32, 8)), rng.integers(0, 27, (10, 32))
    runs = []
    for fast in (False, True):
        m = T.build_model(spec)
        T.load_params(m, p)
        opt = T.Optimizer(m, cfg)
        if fast:   # compiled by torch.compile (inductor); the decay at step 4 inside the first call
            losses = np.concatenate([T.fast_train_steps(m, opt, Xs[:5], Ys[:5]),
                                     T.fast_train_steps(m, opt, Xs[5:], Ys[5:])])
        else:
            losses = np.array([T.train_step(m, opt, Xs[i], Ys[i]) for i in range(10)])
        runs.append((losses, T.export_params(m), opt.t, opt.optimizer.param_groups[0]["lr"]))
    (l0, p0, t0, _), (l1, p1, t1, _) = runs
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    for name in p0:
        np.testing.assert_allclose(p1[name], p0[name], rtol=1e-4, atol=1e-6, err_msg=name)
    assert t0 == t1 == 10


def test_compiled_fast_path_matches_train_step_with_adamw_cosine_dropout(one_thread, rng):
    from helpers import RECIPE
    from shared.stream import DropoutStream, dropout_shapes
    spec = get_spec("wavenet-22k")
    p = init_params(spec, 5)
    cfg = TrainConfig(steps=20, warmup=3, **RECIPE)
    drops = DropoutStream(0, cfg.dropout, dropout_shapes(spec, 32), spec.dtype)
    Xs, Ys = rng.integers(0, 27, (10, 32, 8)), rng.integers(0, 27, (10, 32))
    runs = []
    for fast in (False, True):
        m = T.build_model(spec)
        T.load_params(m, p)
        opt = T.Optimizer(m, cfg)
        if fast:   # compiled by torch.compile (inductor): masks and AdamW's moments as inputs
            losses = np.concatenate([T.fast_train_steps(m, opt, Xs[:5], Ys[:5], masks=drops.take(0, 5)),
                                     T.fast_train_steps(m, opt, Xs[5:], Ys[5:], masks=drops.take(5, 5))])
        else:
            losses = np.array([T.train_step(m, opt, Xs[i], Ys[i], masks=drops.masks(i)) for i in range(10)])
        runs.append((losses, T.export_params(m), opt.state_dict()))
    (l0, p0, s0), (l1, p1, s1) = runs
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    for name in p0:
        np.testing.assert_allclose(p1[name], p0[name], rtol=1e-4, atol=1e-6, err_msg=name)
    for name in s0:
        np.testing.assert_allclose(s1[name], s0[name], rtol=1e-4, atol=1e-4 * np.abs(s0[name]).max(), err_msg=name)


def test_trainer_fast_flag_gives_the_plain_losses(one_thread, data8):
    from makemore.trainer import train
    cfg = TrainConfig(steps=130, lr_decay_step=110)  # two fast chunks (100 + 30), decay inside
    plain = train("torch", get_spec("wavenet"), cfg, data8, evaluate=False, n_samples=0)
    fast = train("torch", get_spec("wavenet"), cfg, data8, evaluate=False, n_samples=0, fast=True)
    np.testing.assert_allclose(fast.losses, plain.losses, rtol=1e-5)
