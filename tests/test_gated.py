"""The WaveNet paper's gated activation units (van den Oord et al. 2016, eq. 2: tanh(W_f x) *
sigmoid(W_g x)), the `gate` layer of every backend and the `wavenet-gated` preset (issue 13).

Expected values come from the formula itself (tanh and the logistic function by hand), the
float64 oracle in tests/helpers.py and central finite differences of that oracle: never from a
backend's own code."""
import math

import numpy as np
import pytest

from helpers import BACKENDS, hierarchical_oracle, loaded_model, perturbed_params
from shared.params import param_shapes
from shared.spec import LayerSpec, ModelSpec, conv_spec, get_spec
from shared.stream import dropout_shapes


def _gated(n_hidden=12, dtype="float64"):
    return get_spec("wavenet-gated", dtype=dtype, n_hidden=n_hidden)


def test_the_preset_fits_the_lecture_budget():
    spec = get_spec("wavenet-gated")
    # embedding 27*24; three stages Linear(2C, 2*89) without bias + BatchNorm gamma/beta of
    # 2*89, the first from 2*24 channels; the last Linear 89 -> 27 with bias
    want = 27 * 24 + (48 * 178 + 2 * 178) + 2 * (178 * 178 + 2 * 178) + (89 * 27 + 27)
    assert want == 76_058
    assert sum(math.prod(s) for s in param_shapes(spec, buffers=False).values()) == want
    assert [l.kind for l in spec.layers].count("gate") == 3 and "tanh" not in [l.kind for l in spec.layers]


def test_a_gate_must_get_twice_its_width():
    good = get_spec("wavenet-gated", n_hidden=10)
    layers = list(good.layers)
    layers[4] = LayerSpec("gate", dim=11)   # after BatchNorm of 20 channels
    with pytest.raises(ValueError, match=r"layer 4 gate of dim 11 needs 2 \* 11 input channels, the layers "
                                         r"before it give 20"):
        ModelSpec("bad", 27, 8, 24, 10, tuple(layers))
    # the width is followed through the layers: a gate straight after the embedding (24 = 2 * 12)
    ok = ModelSpec("ok", 27, 1, 24, 12, (LayerSpec("embedding", num=27, dim=24), LayerSpec("flatten", n=1),
                                         LayerSpec("gate", dim=12), LayerSpec("linear", fan_in=12, fan_out=27)))
    assert [l.kind for l in ok.layers][2] == "gate"


def test_dropout_masks_have_the_gates_output_shape():
    # the gate halves the channels: 4, 2, 1 positions of n_hidden
    assert dropout_shapes(_gated(12), 5) == [(5, 4, 12), (5, 2, 12), (5, 12)]


@pytest.mark.parametrize("name", BACKENDS)
def test_the_gate_layer_is_tanh_times_sigmoid(name):
    import importlib
    layers = importlib.import_module(f"impl_{name}.layers")
    x = np.array([[0.0, 1.0, -2.0, 0.0, 0.0, 3.0],
                  [0.5, -0.5, 4.0, -1.0, 2.0, -30.0]])
    sig = lambda v: 1.0 / (1.0 + math.exp(-v))  # noqa: E731
    want = np.array([[math.tanh(a) * sig(b) for a, b in zip(row[:3], row[3:])] for row in x])
    assert want[0, 0] == 0.0 and want[0, 1] == math.tanh(1.0) / 2
    gate = layers.Gate(3)
    if name == "torch":
        import torch
        got = gate(torch.from_numpy(x)).numpy()
    elif name == "jax":
        import jax.numpy as jnp
        got = np.asarray(gate(jnp.asarray(x)))   # float32 unless x64 is on
    else:
        got = gate(x)
    np.testing.assert_allclose(got, want, rtol=1e-6 if got.dtype == np.float32 else 1e-15, atol=1e-7)
    with pytest.raises(ValueError, match=r"Gate\(3\) needs 6 input channels"):
        gate(x[:, :5] if name == "numpy" else
             (torch.from_numpy(x[:, :5]) if name == "torch" else jnp.asarray(x[:, :5])))


def test_the_numpy_gate_backward_is_the_finite_difference():
    from impl_numpy.layers import Gate
    rng = np.random.default_rng(0)
    x, dout = rng.normal(size=(4, 3, 10)), rng.normal(size=(4, 3, 5))
    oracle = lambda v: float((np.tanh(v[..., :5]) / (1 + np.exp(-v[..., 5:])) * dout).sum())  # noqa: E731
    g = Gate(5)
    g(x)
    dx = g.backward(dout)
    h, want = 1e-6, np.empty_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = h
        want[i] = (oracle(x + e) - oracle(x - e)) / (2 * h)
    np.testing.assert_allclose(dx, want, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("train", [False, True])
def test_the_gated_model_is_the_oracle(name, train):
    spec = _gated(12)
    p = perturbed_params(spec, 2)
    rng = np.random.default_rng(3)
    X = rng.integers(0, 27, size=(16, 8))
    B, model = loaded_model(name, spec, p)
    want, stats = hierarchical_oracle(spec, p, X, train=train)
    np.testing.assert_allclose(B.forward(model, X, train=train), want, rtol=1e-12, atol=1e-13)
    after = B.export_params(model)
    for k, v in stats.items():   # train mode moved the running stats as the oracle's BatchNorm
        np.testing.assert_allclose(after[k], v, rtol=1e-12, atol=1e-14, err_msg=k)


def _oracle_loss(spec, p, X, Y, masks):
    # the oracle's train-mode forward with the dropout masks after each gate, then cross-entropy
    x, _ = hierarchical_oracle(spec, p, X, train=True, masks=masks)
    m = x.max(1, keepdims=True)
    logp = x - m - np.log(np.exp(x - m).sum(1, keepdims=True))
    return -logp[np.arange(len(Y)), Y].mean()


@pytest.mark.parametrize("name", BACKENDS)
def test_gradients_with_dropout_are_the_oracles_finite_differences(name):
    spec = _gated(6)
    p = perturbed_params(spec, 4)
    rng = np.random.default_rng(5)
    X, Y = rng.integers(0, 27, size=(10, 8)), rng.integers(0, 27, size=10)
    masks = [(rng.random(s) >= 0.25) / 0.75 for s in dropout_shapes(spec, 10)]
    B, model = loaded_model(name, spec, p)
    loss, grads = B.loss_and_grads(model, X, Y, masks=masks)
    assert abs(loss - _oracle_loss(spec, p, X, Y, masks)) < 1e-12
    h = 1e-6
    for k in ("0.weight", "2.weight", "3.gamma", "7.beta", "10.weight", "13.bias"):
        for i in [tuple(rng.integers(0, n) for n in p[k].shape) for _ in range(4)]:
            up, dn = {**p, k: p[k].copy()}, {**p, k: p[k].copy()}
            up[k][i] += h
            dn[k][i] -= h
            want = (_oracle_loss(spec, up, X, Y, masks) - _oracle_loss(spec, dn, X, Y, masks)) / (2 * h)
            assert abs(grads[k][i] - want) <= 1e-7 + 1e-6 * abs(want), (k, i, grads[k][i], want)


@pytest.mark.parametrize("name", BACKENDS)
def test_the_gated_conv_model_is_the_hierarchical_oracle_at_every_position(name):
    h = _gated(8)
    c = conv_spec(h)
    p = perturbed_params(h, 6)
    rng = np.random.default_rng(7)
    X = rng.integers(0, 27, size=(3, 12 + 7))
    B, model = loaded_model(name, c, p)
    got = B.sequence_forward(model, X)                              # eval mode: running stats
    windows = np.stack([X[:, t:t + 8] for t in range(12)], 1).reshape(-1, 8)
    want, _ = hierarchical_oracle(h, p, windows)
    np.testing.assert_allclose(got.reshape(-1, 27), want, rtol=1e-12, atol=1e-13)


def test_diagnose_reads_the_gates_as_the_activations(tmp_path, names_path):
    from makemore import cli
    out = tmp_path / "diag"
    assert cli.main(["diagnose", "--backend", "numpy", "--preset", "wavenet-gated", "--n-hidden", "8",
                     "--steps", "5", "--batch-size", "32", "--data", str(names_path), "--out", str(out),
                     "--no-progress"]) == 0
    table = (out / "stats.md").read_text()
    assert "| layer 4 gate out | saturated_pct |" in table and "| layer 12 gate grad | std |" in table
    assert "Tanh" not in table
