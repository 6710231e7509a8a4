"""The backend contract (shared.backend.Backend), once, for every installed backend, against
independent float64 oracles (helpers.py, written from the lecture and docs/design.md): a new
backend joins by being installed.

Per-framework tests (each framework's own layers as references, the numpy backward pass layer
by layer, JAX's float64 and compile handling, torch's compiled path) stay in test_<backend>.py.
"""
import numpy as np
import pytest

from helpers import (BACKENDS, BITWISE_FAST, bn_oracle, fast_steps, loaded_model,
                     mlp_eval_hidden_and_logits, perturbed_params)
from makemore.registry import get_backend
from shared.backend import Backend
from shared.config import TrainConfig
from shared.params import init_params, param_shapes
from shared.spec import get_spec

pytestmark = pytest.mark.parametrize("name", BACKENDS)


def test_the_backend_satisfies_the_protocol(name):
    B = get_backend(name)
    assert isinstance(B, Backend), f"impl_{name} lacks part of shared.backend.Backend"
    assert B.NAME == name


@pytest.mark.parametrize("preset", ["mlp", "wavenet-22k"])       # BatchNorm on 2-D and 3-D input
@pytest.mark.parametrize("convention", ["lecture", "torch", "flax"])
def test_batchnorm_train_and_eval_against_the_float64_formula(name, preset, convention):
    spec = get_spec(preset, dtype="float64", bn_convention=convention)
    p = perturbed_params(spec, 3)
    B, model = loaded_model(name, spec, p)
    X = np.random.default_rng(4).integers(0, 27, size=(16, spec.block_size))
    train_outs = B.layer_outputs(model, X, train=True)
    after = B.export_params(model)
    eval_outs = B.layer_outputs(model, X, train=False)
    for k, l in enumerate(spec.layers):
        if l.kind != "batchnorm":
            continue
        x = train_outs[k - 1]
        y, rm, rv = bn_oracle(x, p[f"{k}.gamma"], p[f"{k}.beta"], p[f"{k}.running_mean"],
                              p[f"{k}.running_var"], convention)
        np.testing.assert_allclose(train_outs[k], y, rtol=1e-12, atol=1e-12, err_msg=f"layer {k} train")
        np.testing.assert_allclose(after[f"{k}.running_mean"], rm, rtol=1e-12, err_msg=f"layer {k}")
        np.testing.assert_allclose(after[f"{k}.running_var"], rv, rtol=1e-12, err_msg=f"layer {k}")
        x = eval_outs[k - 1]   # eval mode: the running stats the train forward left
        want = p[f"{k}.gamma"] * (x - rm) / np.sqrt(rv + 1e-5) + p[f"{k}.beta"]
        np.testing.assert_allclose(eval_outs[k], want, rtol=1e-12, atol=1e-12, err_msg=f"layer {k} eval")
    for k, v in B.export_params(model).items():   # eval mode moved nothing
        np.testing.assert_array_equal(v, after[k], err_msg=k)


def test_flatten_consecutive_merges_neighbours(name):
    spec = get_spec("wavenet-22k", dtype="float64")
    B, model = loaded_model(name, spec, init_params(spec, 0))
    X = np.random.default_rng(1).integers(0, 27, size=(3, 8))
    outs = B.layer_outputs(model, X)
    emb = init_params(spec, 0)["0.weight"][X]                          # (3, 8, 10)
    np.testing.assert_array_equal(outs[0], emb)
    np.testing.assert_array_equal(outs[1], emb.reshape(3, 4, 20))      # (x0 x1)(x2 x3)...
    np.testing.assert_array_equal(outs[1][0, 1], np.concatenate([emb[0, 2], emb[0, 3]]))
    assert outs[9].shape == (3, 2 * 68)                                # the last one squeezes T


@pytest.mark.parametrize("preset", ["mlp", "wavenet"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_canonical_parameters_round_trip(name, preset, dtype):
    spec = get_spec(preset, dtype=dtype)
    params = perturbed_params(spec, 5)
    B, model = loaded_model(name, spec, params)
    out = B.export_params(model)
    assert list(out) == list(param_shapes(spec))
    for k in params:
        assert out[k].dtype == np.dtype(dtype), k
        np.testing.assert_array_equal(out[k], params[k], err_msg=k)
    out["0.weight"][0, 0] = 123.0              # a copy: changing it leaves the model alone
    assert B.export_params(model)["0.weight"][0, 0] != 123.0


def test_eval_forward_and_layer_outputs_match_the_lecture_mlp(name, rng):
    spec = get_spec("mlp", dtype="float64")
    p = init_params(spec, 1)
    p["3.running_mean"] = rng.normal(size=200)
    p["3.running_var"] = rng.uniform(0.5, 2, size=200)
    B, model = loaded_model(name, spec, p)
    X = rng.integers(0, 27, size=(10, 3))
    h, logits = mlp_eval_hidden_and_logits(p, X)
    np.testing.assert_allclose(B.forward(model, X, train=False), logits, rtol=1e-12)
    outs = B.layer_outputs(model, X, train=False)
    assert len(outs) == len(spec.layers)
    np.testing.assert_allclose(outs[4], h, rtol=1e-12)
    np.testing.assert_allclose(outs[-1], logits, rtol=1e-12)
    np.testing.assert_array_equal(B.export_params(model)["3.running_mean"], p["3.running_mean"])


def test_loss_and_grads_against_central_differences(name, rng):
    spec = get_spec("wavenet-22k", dtype="float64")
    p = perturbed_params(spec, 2)
    B, model = loaded_model(name, spec, p)
    X, Y = rng.integers(0, 27, size=(16, 8)), rng.integers(0, 27, size=16)
    loss, grads = B.loss_and_grads(model, X, Y)
    assert list(grads) == list(param_shapes(spec, buffers=False))
    assert all(grads[k].shape == p[k].shape and grads[k].dtype == np.float64 for k in grads)
    # train-mode loss: batch statistics, so the moved running stats do not change it
    for k, idx in [("0.weight", (5, 2)), ("6.weight", (3, 5)), ("7.gamma", (4,)), ("11.beta", (1,)),
                   ("13.bias", (7,))]:
        vals = []
        for s in (+1, -1):
            q = {n: v.copy() for n, v in p.items()}
            q[k][idx] += s * 1e-6
            B.load_params(model, q)
            vals.append(B.loss_and_grads(model, X, Y)[0])
        np.testing.assert_allclose(grads[k][idx], (vals[0] - vals[1]) / 2e-6, rtol=1e-5, atol=1e-9, err_msg=k)


def test_cross_entropy_is_the_mean_negative_log_likelihood(name, rng):
    B = get_backend(name)
    spec = get_spec("mlp", dtype="float64")
    p = init_params(spec, 3)
    _, model = loaded_model(name, spec, p)
    X, Y = rng.integers(0, 27, size=(9, 3)), rng.integers(0, 27, size=9)
    logits = B.forward(model, X, train=False)
    z = logits - logits.max(1, keepdims=True)
    want = -(z[np.arange(9), Y] - np.log(np.exp(z).sum(1))).mean()
    assert B.evaluate(model, X, Y) == pytest.approx(want, rel=1e-12)


def test_out_of_vocab_tokens_raise_at_every_entry_point(name):
    spec = get_spec("mlp")
    B = get_backend(name)
    model = B.build_model(spec)
    opt = B.Optimizer(model, TrainConfig(steps=1))
    with pytest.raises(ValueError, match="token id 27 is outside the vocab"):
        B.forward(model, np.array([[1, 2, 27]]))
    with pytest.raises(ValueError, match="token id -3"):
        B.train_step(model, opt, np.array([[1, 2, -3]] * 2), np.array([1, 2]))
    with pytest.raises(ValueError, match="token id 30"):
        B.loss_and_grads(model, np.array([[1, 30, 2]] * 2), np.array([1, 2]))
    with pytest.raises(ValueError, match="token id 27"):
        B.evaluate(model, np.array([[27, 0, 0]] * 2), np.array([1, 2]))
    with pytest.raises(ValueError, match="token id 99"):
        fast_steps(name, B, model, opt, np.full((2, 2, 3), 99), np.ones((2, 2), np.int64))
    with pytest.raises(ValueError, match=r"need Xs \(k, B, block_size\)"):
        fast_steps(name, B, model, opt, np.zeros((4, 3), np.int64), np.zeros((4,), np.int64))
    assert opt.t == 0


@pytest.mark.parametrize("decay_step, lr", [(10, 0.1), (0, 0.01)])
def test_one_step_is_the_lecture_sgd_update(name, decay_step, lr, rng):
    spec = get_spec("mlp", dtype="float64")
    p = init_params(spec, 4)
    B, model = loaded_model(name, spec, p)
    X, Y = rng.integers(0, 27, size=(32, 3)), rng.integers(0, 27, size=32)
    _, g = B.loss_and_grads(model, X, Y)
    B.load_params(model, p)
    opt = B.Optimizer(model, TrainConfig(steps=10, lr_decay_step=decay_step))
    B.train_step(model, opt, X, Y)
    after = B.export_params(model)
    for k in g:   # p.data += -lr * p.grad (lecture Part 5)
        np.testing.assert_allclose(after[k], p[k] - lr * g[k], rtol=1e-12, atol=1e-15, err_msg=k)
    assert opt.t == 1


def test_the_schedule_is_exactly_the_lecture_step(name):
    spec = get_spec("mlp", dtype="float64")   # optax computes the schedule in the params' dtype
    B, model = loaded_model(name, spec, init_params(spec, 0))
    opt = B.Optimizer(model, TrainConfig(steps=8, lr_decay_step=3))
    X, Y = np.zeros((4, 3), np.int64), np.ones(4, np.int64)
    lrs = []
    for _ in range(5):
        lrs.append(opt.lr)
        B.train_step(model, opt, X, Y)
    assert lrs == [0.1, 0.1, 0.1, 0.01, 0.01]     # 0.01 exactly: not 0.1 * 0.1
    assert opt.t == 5


@pytest.mark.parametrize("preset,dtype,convention,rtol", [
    ("wavenet-22k", "float64", "lecture", 1e-12), ("wavenet-22k", "float64", "torch", 1e-12),
    ("wavenet-22k", "float64", "flax", 1e-12), ("mlp", "float64", "lecture", 1e-12),
    ("wavenet-22k", "float32", "lecture", 2e-5)])
def test_the_fast_path_equals_the_plain_path(name, preset, dtype, convention, rtol):
    spec = get_spec(preset, dtype=dtype, bn_convention=convention)
    p = perturbed_params(spec, 1)
    cfg = TrainConfig(steps=30, lr_decay_step=15)                  # the decay inside a chunk
    rng = np.random.default_rng(0)
    Xs, Ys = rng.integers(0, 27, size=(30, 32, spec.block_size)), rng.integers(0, 27, size=(30, 32))
    runs = []
    for fast in (False, True):
        B, model = loaded_model(name, spec, p)
        opt = B.Optimizer(model, cfg)
        if fast:
            losses = np.concatenate([fast_steps(name, B, model, opt, Xs[:20], Ys[:20]),
                                     fast_steps(name, B, model, opt, Xs[20:], Ys[20:])])
        else:
            losses = np.array([B.train_step(model, opt, X, Y) for X, Y in zip(Xs, Ys)])
        runs.append((losses, B.export_params(model), opt.t, opt.lr))
    (l0, p0, t0, lr0), (l1, p1, t1, lr1) = runs
    assert l1.dtype == np.float64 and l1.shape == (30,)
    assert (t0, lr0) == (t1, lr1) == (30, 0.01)
    assert not np.array_equal(p0["0.weight"], p["0.weight"])
    if name in BITWISE_FAST:
        np.testing.assert_array_equal(l1, l0)
    np.testing.assert_allclose(l1, l0, rtol=rtol)
    for k in p0:   # weights and running stats
        np.testing.assert_allclose(p1[k], p0[k], rtol=rtol * 10, atol=rtol, err_msg=k)


def test_sampling_is_deterministic_and_inside_the_vocab(name):
    from shared.stream import sampling_uniforms
    spec = get_spec("mlp")
    B, model = loaded_model(name, spec, init_params(spec, 0))
    u = sampling_uniforms(3, 5)
    a, b = B.sample(model, u), B.sample(model, u)
    assert a == b and len(a) == 5 and all(1 <= t < 27 for s in a for t in s)
    assert B.sample(model, sampling_uniforms(3, 0)) == []


def test_optimizer_state_round_trips_and_resumes_the_schedule(name, rng):
    spec = get_spec("mlp", dtype="float64")
    p = init_params(spec, 0)
    X, Y = rng.integers(0, 27, size=(8, 3)), rng.integers(0, 27, size=8)
    cfg = TrainConfig(steps=10, lr_decay_step=3)
    B, m1 = loaded_model(name, spec, p)
    o1 = B.Optimizer(m1, cfg)
    for _ in range(4):
        B.train_step(m1, o1, X, Y)
    state = o1.state_dict()
    assert {k: int(v) for k, v in state.items()} == {"t": 4}
    _, m2 = loaded_model(name, spec, B.export_params(m1))
    o2 = B.Optimizer(m2, cfg)
    o2.load_state_dict(state)
    assert (o2.t, o2.lr) == (4, 0.01)
    assert B.train_step(m2, o2, X, Y) == B.train_step(m1, o1, X, Y)   # bitwise, after the decay
    np.testing.assert_array_equal(B.export_params(m2)["2.weight"], B.export_params(m1)["2.weight"])
    with pytest.raises(ValueError, match="missing"):
        o2.load_state_dict({})


def test_any_integer_dtype_and_memory_layout_is_accepted(name, rng):
    spec = get_spec("mlp", dtype="float64")
    p = perturbed_params(spec, 6)
    X, Y = rng.integers(0, 27, size=(16, 3)), rng.integers(0, 27, size=16)
    B, model = loaded_model(name, spec, p)
    want_loss, want_grads = B.loss_and_grads(model, X, Y)   # train-mode loss: the batch statistics
    _, trained = loaded_model(name, spec, p)
    opt = B.Optimizer(trained, TrainConfig(steps=20))
    layouts = {"int32": (X.astype(np.int32), Y.astype(np.int32)), "uint8": (X.astype(np.uint8), Y.astype(np.uint8)),
               "negative strides": (np.ascontiguousarray(X[:, ::-1])[:, ::-1], Y[::-1].copy()[::-1]),
               "Fortran order": (np.asfortranarray(X), Y), "a list": (X.tolist(), Y.tolist())}
    for what, (x, y) in layouts.items():
        loss, grads = B.loss_and_grads(model, x, y)
        assert loss == pytest.approx(want_loss, rel=1e-13), what
        np.testing.assert_allclose(grads["2.weight"], want_grads["2.weight"], rtol=1e-12, err_msg=what)
        np.testing.assert_allclose(B.forward(model, x), B.forward(model, X), rtol=1e-13, err_msg=what)
        assert np.isfinite(B.train_step(trained, opt, x, y)), what
        assert np.isfinite(fast_steps(name, B, trained, opt, np.asarray(x)[None], np.asarray(y)[None])).all()
