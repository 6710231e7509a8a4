"""impl_torch against independent float64 numpy formulas and against torch.nn's own BatchNorm1d."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import impl_torch as T  # noqa: E402
from impl_torch.layers import BatchNorm1d, FlattenConsecutive  # noqa: E402
from shared.params import init_params  # noqa: E402
from shared.spec import get_spec  # noqa: E402
from shared.trainer import TrainConfig  # noqa: E402
from oracles import bn_oracle, mlp_eval_hidden_and_logits  # noqa: E402


@pytest.mark.parametrize("convention", ["lecture", "torch", "flax"])
@pytest.mark.parametrize("shape", [(32, 6), (16, 4, 6)])
def test_batchnorm_against_float64_formula(convention, shape, rng):
    x = rng.normal(3.0, 2.0, size=shape)
    gamma, beta = rng.normal(size=6), rng.normal(size=6)
    rm, rv = rng.normal(size=6), rng.uniform(0.5, 2, size=6)
    bn = BatchNorm1d(6, convention=convention).double()
    with torch.no_grad():
        bn.gamma.copy_(torch.from_numpy(gamma)); bn.beta.copy_(torch.from_numpy(beta))
        bn.running_mean.copy_(torch.from_numpy(rm)); bn.running_var.copy_(torch.from_numpy(rv))
    y = bn(torch.from_numpy(x)).detach().numpy()
    y_ref, rm_ref, rv_ref = bn_oracle(x, gamma, beta, rm, rv, convention)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bn.running_mean.numpy(), rm_ref, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var.numpy(), rv_ref, rtol=1e-12)
    assert bn.running_var.shape == (6,)
    bn.eval()  # eval mode normalises with the running stats
    y_eval = bn(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(y_eval, gamma * (x - rm_ref) / np.sqrt(rv_ref + 1e-5) + beta, rtol=1e-12)


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
def test_canonical_round_trip_and_layout(preset):
    spec = get_spec(preset, dtype="float64")
    params = init_params(spec, 5)
    model = T.build_model(spec)
    T.load_params(model, params)
    # torch stores Linear weights as (fan_out, fan_in): the canonical (fan_in, fan_out) transposed
    lin = next(i for i, l in enumerate(spec.layers) if l.kind == "linear")
    assert tuple(model[lin].weight.shape) == params[f"{lin}.weight"].shape[::-1]
    np.testing.assert_array_equal(model[lin].weight.detach().numpy(), params[f"{lin}.weight"].T)
    out = T.export_params(model)
    assert list(out) == list(params)
    for k in params:
        np.testing.assert_array_equal(out[k], params[k])


def test_forward_matches_numpy_formula(rng):
    # the whole mlp preset in float64 numpy, eval mode, written out from the lecture
    spec = get_spec("mlp", dtype="float64")
    p = init_params(spec, 1)
    p["3.running_mean"] = rng.normal(size=200)
    p["3.running_var"] = rng.uniform(0.5, 2, size=200)
    model = T.build_model(spec)
    T.load_params(model, p)
    X = rng.integers(0, 27, size=(10, 3))
    h, logits = mlp_eval_hidden_and_logits(p, X)
    np.testing.assert_allclose(T.forward(model, X, train=False), logits, rtol=1e-12)


def test_loss_and_grads_shapes_and_finite_difference(rng):
    spec = get_spec("wavenet-22k", dtype="float64")
    p = init_params(spec, 2)
    model = T.build_model(spec)
    X, Y = rng.integers(0, 27, size=(16, 8)), rng.integers(0, 27, size=16)
    T.load_params(model, p)
    loss, grads = T.loss_and_grads(model, X, Y)
    assert set(grads) == {k for k in p if "running" not in k}
    assert all(grads[k].shape == p[k].shape for k in grads)
    # central difference on one weight of a transposed Linear (independent of autograd)
    k, idx, h = "6.weight", (3, 5), 1e-6
    vals = []
    for s in (+1, -1):
        q = {n: v.copy() for n, v in p.items()}
        q[k][idx] += s * h
        T.load_params(model, q)
        vals.append(T.loss_and_grads(model, X, Y)[0])
    np.testing.assert_allclose(grads[k][idx], (vals[0] - vals[1]) / (2 * h), rtol=1e-6)


def test_out_of_vocab_tokens_raise():
    spec = get_spec("mlp")
    model = T.build_model(spec)
    with pytest.raises(ValueError, match="token id 27 is outside the vocab"):
        T.forward(model, np.array([[1, 2, 27]]))
    with pytest.raises(ValueError, match="token id -3"):
        T.train_step(model, T.make_optimizer(model, TrainConfig(steps=1)), np.array([[1, 2, -3]] * 2),
                     np.array([1, 2]))


def test_scheduler_gives_exact_step_lr():
    spec = get_spec("mlp")
    model = T.build_model(spec)
    T.load_params(model, init_params(spec, 0))
    opt, sched = T.make_optimizer(model, TrainConfig(steps=8, lr_decay_step=3))
    X, Y = np.zeros((4, 3), np.int64), np.ones(4, np.int64)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        T.train_step(model, (opt, sched), X, Y)
    assert lrs == [0.1, 0.1, 0.1, 0.01, 0.01]


def test_sgd_step_is_the_lecture_update(rng):
    spec = get_spec("mlp", dtype="float64")
    p = init_params(spec, 4)
    model = T.build_model(spec)
    T.load_params(model, p)
    X, Y = rng.integers(0, 27, size=(32, 3)), rng.integers(0, 27, size=32)
    _, g = T.loss_and_grads(model, X, Y)
    T.load_params(model, p)
    T.train_step(model, T.make_optimizer(model, TrainConfig(steps=10)), X, Y)
    after = T.export_params(model)
    for k in g:
        np.testing.assert_allclose(after[k], p[k] - 0.1 * g[k], rtol=1e-12, atol=1e-15)
