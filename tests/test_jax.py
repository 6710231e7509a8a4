"""impl_jax against independent float64 numpy formulas and against Flax's own nnx.BatchNorm;
compile counts, float64 handling, token checks, the fast (scanned) path."""
import numpy as np
import pytest

jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")

import jax.numpy as jnp  # noqa: E402

import impl_jax as J  # noqa: E402
from impl_jax import fast as JF, train as JT  # noqa: E402
from impl_jax.layers import BatchNorm1d, FlattenConsecutive, Tanh  # noqa: E402
from shared.checks import Float64Unavailable  # noqa: E402
from shared.params import init_params  # noqa: E402
from shared.spec import get_spec  # noqa: E402
from shared.config import TrainConfig  # noqa: E402


# Built first, so x64 is on for the rest of the module whatever order the tests run in.
J.build_model(get_spec("mlp", dtype="float64"))


def bn_with(convention, gamma, beta, rm, rv):
    bn = BatchNorm1d(len(gamma), convention=convention, dtype=jnp.float64)
    bn.gamma[...], bn.beta[...] = jnp.asarray(gamma), jnp.asarray(beta)
    bn.running_mean[...], bn.running_var[...] = jnp.asarray(rm), jnp.asarray(rv)
    return bn


def test_two_pass_variance_keeps_digits_with_a_large_mean(rng):
    # E[x^2] - E[x]^2 in float32 at mean 1e4 loses every digit of a variance of 1
    x = (1e4 + rng.normal(size=(64, 3))).astype(np.float32)
    bn = BatchNorm1d(3, convention="flax", momentum=1.0, dtype=jnp.float32)
    bn(jnp.asarray(x))
    ref = x.astype(np.float64).var(axis=0)
    np.testing.assert_allclose(np.asarray(bn.running_var[...]), ref, rtol=1e-3)


def _flax_bn(C, gamma, beta, rm, rv):
    # nnx.BatchNorm: momentum 0.9 keeps 0.9 of the old stat (ours 0.1 takes 0.1 of the new one).
    # It creates mean/var in float32 whatever param_dtype: replace them by float64 arrays
    # (set_value; `[...] =` would write into the float32 array).
    ref = nnx.BatchNorm(C, momentum=0.9, epsilon=1e-5, use_fast_variance=False, dtype=jnp.float64,
                        param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    ref.scale[...], ref.bias[...] = jnp.asarray(gamma), jnp.asarray(beta)
    ref.mean.set_value(jnp.asarray(rm))
    ref.var.set_value(jnp.asarray(rv))
    return ref


@pytest.mark.parametrize("shape", [(32, 6), (16, 4, 6)])
def test_flax_convention_matches_nnx_batchnorm(shape, rng):
    gamma, beta = rng.normal(size=6), rng.normal(size=6)
    rm, rv = rng.normal(size=6), rng.uniform(0.5, 2, size=6)
    ours, ref = bn_with("flax", gamma, beta, rm, rv), _flax_bn(6, gamma, beta, rm, rv)
    ref.train()  # use_running_average=False, switched the same way as ours
    for _ in range(3):
        x = jnp.asarray(rng.normal(1.0, 3.0, size=shape))
        np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(ref(x)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(ours.running_mean[...]), np.asarray(ref.mean[...]), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(ours.running_var[...]), np.asarray(ref.var[...]), rtol=1e-12)
    ours.eval(); ref.eval()
    x = jnp.asarray(rng.normal(size=shape))
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(ref(x)), rtol=1e-12, atol=1e-12)


def test_lecture_convention_does_not_match_nnx_batchnorm(rng):
    # the lecture normalises with, and keeps, the unbiased variance: Flax's layer cannot do that
    gamma, beta, rm, rv = np.ones(6), np.zeros(6), np.zeros(6), np.ones(6)
    ours, ref = bn_with("lecture", gamma, beta, rm, rv), _flax_bn(6, gamma, beta, rm, rv)
    x = jnp.asarray(rng.normal(size=(8, 6)))
    y, y_ref = np.asarray(ours(x)), np.asarray(ref(x))
    assert np.abs(y - y_ref).max() > 1e-3  # sqrt(7/8) apart, not rounding
    np.testing.assert_allclose(y * np.sqrt(8 / 7), y_ref, rtol=1e-3)  # ... and exactly that apart
    rv_ours, rv_ref = np.asarray(ours.running_var[...]), np.asarray(ref.var[...])
    np.testing.assert_allclose(rv_ours - 0.9, (rv_ref - 0.9) * 8 / 7, rtol=1e-10)


def test_flatten_consecutive():
    x = jnp.arange(2 * 8 * 3).reshape(2, 8, 3)
    y = FlattenConsecutive(2)(x)
    assert y.shape == (2, 4, 6)
    assert y[0, 1].tolist() == x[0, 2].tolist() + x[0, 3].tolist()
    assert FlattenConsecutive(8)(x).shape == (2, 24)
    with pytest.raises(ValueError, match="multiple of n"):
        FlattenConsecutive(3)(x)


@pytest.mark.parametrize("preset", ["mlp", "wavenet"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_canonical_round_trip_and_layout(preset, dtype):
    spec = get_spec(preset, dtype=dtype)
    params = init_params(spec, 5)
    model = J.build_model(spec)
    J.load_params(model, params)
    # Flax keeps Linear kernels as (fan_in, fan_out): the canonical layout, no transpose
    lin = next(i for i, l in enumerate(spec.layers) if l.kind == "linear")
    np.testing.assert_array_equal(np.asarray(model.layers[lin].kernel[...]), params[f"{lin}.weight"])
    np.testing.assert_array_equal(np.asarray(model.layers[0].embedding[...]), params["0.weight"])
    out = J.export_params(model)
    assert list(out) == list(params)
    for k in params:
        assert out[k].dtype == np.dtype(dtype), k
        np.testing.assert_array_equal(out[k], params[k])


def test_float32_model_stays_float32_with_x64_on(rng):
    # x64 is on for this module: every array of a float32 model must still be float32
    spec = get_spec("mlp", dtype="float32")
    model = J.build_model(spec)
    J.load_params(model, init_params(spec, 0))
    assert {v.dtype for v in jax.tree.leaves(nnx.state(model))} == {jnp.dtype("float32")}
    X, Y = rng.integers(0, 27, size=(8, 3)), rng.integers(0, 27, size=8)
    assert J.forward(model, X).dtype == np.float32
    _, g = J.loss_and_grads(model, X, Y)
    assert {a.dtype for a in g.values()} == {np.dtype("float32")}
    J.train_step(model, J.Optimizer(model, TrainConfig(steps=2)), X, Y)
    assert {a.dtype for a in J.export_params(model).values()} == {np.dtype("float32")}


@pytest.mark.filterwarnings("ignore:Explicitly requested dtype float64")  # JAX's own truncation warning
def test_float64_that_cannot_be_honoured_raises(monkeypatch):
    spec = get_spec("mlp", dtype="float64")
    J.build_model(spec)  # honoured here (CPU)
    was = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", False)
    try:  # a JAX where x64 cannot be switched on: the request must fail, not give float32
        monkeypatch.setattr(jax.config, "update", lambda *a, **k: None)
        with pytest.raises(Float64Unavailable, match="float64.*use --dtype float32"):
            J.build_model(spec)
    finally:
        monkeypatch.undo()
        jax.config.update("jax_enable_x64", was)


def test_train_step_compiles_once_per_run(rng, monkeypatch):
    spec = get_spec("mlp", dtype="float32")
    model = J.build_model(spec)
    J.load_params(model, init_params(spec, 0))
    X, Y = rng.integers(0, 27, size=(6, 16, 3)), rng.integers(0, 27, size=(6, 16))
    # count traces by wrapping the pure functions the jits trace (a Python body runs only
    # while tracing); the product code carries no counter
    traces = {"step": 0, "apply": 0}

    def counting(key, fn):
        def wrapped(*a, **k):
            traces[key] += 1
            return fn(*a, **k)
        return wrapped
    monkeypatch.setattr(JT, "_step", counting("step", JT._step))
    monkeypatch.setattr(JF, "_step", JT._step)
    monkeypatch.setattr(JT, "_apply", counting("apply", JT._apply))
    monkeypatch.setattr(JT, "_EVAL_FORWARDS", {})
    opt = J.Optimizer(model, TrainConfig(steps=6, lr_decay_step=3))
    for i in range(6):  # crosses the lr decay; evaluation, forward and sampling in between
        J.train_step(model, opt, X[i], Y[i])
        J.evaluate(model, X[0], Y[0])
        J.forward(model, X[1], train=i % 2 == 0)
    assert traces["step"] == 1, "the train step retraced"
    J.sample(model, np.full((2, 5), 0.5))
    a = J.sample(model, np.full((2, 5), 0.5))   # the token loop's forward: compiled once, reused
    assert traces["apply"] == 1
    assert a == J.sample(model, np.full((2, 5), 0.5)) and model.layers[3].use_running_average is False
    J.fast_train_steps(model, opt, X[:3], Y[:3])
    J.fast_train_steps(model, opt, X[3:], Y[3:])   # same k: the scan is not traced again
    assert traces["step"] == 2 and opt.t == 12


def test_a_recipe_step_compiles_once_per_run(rng, monkeypatch):
    # AdamW + warm-up/cosine + dropout: the masks are traced inputs, the schedule's count too
    from helpers import RECIPE
    from shared.stream import DropoutStream, dropout_shapes
    spec = get_spec("wavenet-22k", dtype="float32")
    model = J.build_model(spec)
    J.load_params(model, init_params(spec, 0))
    X, Y = rng.integers(0, 27, size=(6, 16, 8)), rng.integers(0, 27, size=(6, 16))
    traces = {"step": 0}

    def counting(*a, **k):
        traces["step"] += 1
        return real(*a, **k)
    real = JT._step
    monkeypatch.setattr(JT, "_step", counting)
    monkeypatch.setattr(JF, "_step", counting)
    cfg = TrainConfig(steps=12, warmup=3, **RECIPE)
    drops = DropoutStream(0, cfg.dropout, dropout_shapes(spec, 16), spec.dtype)
    opt = J.Optimizer(model, cfg)
    for i in range(6):   # through the warm-up into the cosine
        J.train_step(model, opt, X[i], Y[i], masks=drops.masks(i))
    assert traces["step"] == 1, "the train step retraced"
    J.fast_train_steps(model, opt, X[:3], Y[:3], masks=drops.take(6, 3))
    J.fast_train_steps(model, opt, X[3:], Y[3:], masks=drops.take(9, 3))
    assert traces["step"] == 2 and opt.t == 12 and opt.lr == pytest.approx(cfg.lr_final)


def test_tanh_record_hook_gives_activation_and_its_gradient(rng):
    # the last Tanh feeds the last Linear, so dL/dh = (softmax - onehot) / B @ W.T in numpy
    spec = get_spec("mlp", dtype="float64")
    p = init_params(spec, 6)
    model = J.build_model(spec)
    J.load_params(model, p)
    X, Y = rng.integers(0, 27, size=(8, 3)), rng.integers(0, 27, size=8)
    h = J.layer_outputs(model, X, train=False)[4]
    logits = h @ p["5.weight"] + p["5.bias"]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    probs[np.arange(8), Y] -= 1
    dh_ref = probs / 8 @ p["5.weight"].T

    assert isinstance(model.layers[4], Tanh) and model.layers[4].record is False
    model.layers[4].record = True
    model.eval()
    Xj, Yj = jnp.asarray(X, jnp.int32), jnp.asarray(Y, jnp.int32)
    _, perturbations = nnx.capture(model, nnx.Perturbation)(Xj)

    def loss(m, pert):
        logits, sown = nnx.capture(m, nnx.Intermediate, init=pert)(Xj)
        return JT.cross_entropy(logits, Yj), sown

    dpert, sown = nnx.grad(loss, argnums=1, has_aux=True)(model, perturbations)
    np.testing.assert_allclose(np.asarray(sown["layers"][4]["out"].get_value()[0]), h, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(dpert["layers"][4]["out"][...]), dh_ref, rtol=1e-10, atol=1e-15)
    # record off again: nothing is sown, nothing is left behind in the model's state
    model.layers[4].record = False
    _, sown = nnx.capture(model, nnx.Intermediate)(Xj)
    assert len(jax.tree.leaves(sown)) == 0
    assert not jax.tree.leaves(nnx.state(model, nnx.Intermediate))
