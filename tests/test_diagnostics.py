"""Activation and gradient diagnostics (issue 6; lecture Part 3 "diagnostic tools").

Statistics are checked against direct float64 formulas on known arrays; each backend's recorded
Tanh outputs against its own layer_outputs, their gradients against a float64 oracle
(dL/dh = softmax-grad @ W.T for the Tanh that feeds the last Linear); every statistic across
backends in float64; the torch hooks for side effects; the CLI end to end.
"""
import json
import math
import statistics

import numpy as np
import pytest

from makemore import cli
from makemore import diagnose as dg
from shared.params import init_params
from shared.spec import get_spec
from shared.config import TrainConfig

from helpers import BACKENDS, PAIRS
from helpers import loaded_model

RTOL = 1e-10


# ---------------------------------------------------------------- statistics on known arrays

def test_tanh_stats_on_known_values():
    t = np.array([[-0.99, -0.5, 0.0], [0.5, 0.98, 0.97]], dtype=np.float32)
    s = dg.tanh_stats(t)
    vals = [float(np.float32(v)) for v in t.ravel()]
    assert s["saturated_pct"] == pytest.approx(100 * 2 / 6)   # 0.97 itself is not > 0.97
    assert s["mean"] == pytest.approx(math.fsum(vals) / 6, rel=1e-12)
    assert s["std"] == pytest.approx(statistics.stdev(vals), rel=1e-12)  # unbiased, like torch


def test_weight_grad_and_update_ratios_on_known_values():
    p = np.array([[1.0, -1.0], [3.0, -3.0]])          # stdev = sqrt(20/3)
    g = np.array([[0.5, 0.0], [0.0, -0.5]])           # stdev = sqrt(1/6)
    s = dg.weight_grad_stats(g, p)
    assert s["shape"] == [2, 2]
    assert s["grad_mean"] == 0.0
    assert s["grad_std"] == pytest.approx(math.sqrt(1 / 6), rel=1e-14)
    assert s["grad_data_ratio"] == pytest.approx(math.sqrt(1 / 6) / math.sqrt(20 / 3), rel=1e-14)
    lr = 0.1
    after = p - lr * g
    want = math.log10(statistics.stdev((lr * g).ravel().tolist()) / statistics.stdev(after.ravel().tolist()))
    assert dg.update_data_ratio(p, after) == pytest.approx(want, rel=1e-12)
    assert dg.update_data_ratio(p, p / 1000 + p) < -2.9   # a 1e-3 relative step sits at -3


def test_density_integrates_to_one_and_matches_counts():
    x, y = dg.density(np.array([0.0, 0.0, 0.0, 1.0]), bins=2)
    np.testing.assert_allclose(x, [0.25, 0.75])
    np.testing.assert_allclose(y, [1.5, 0.5])             # 3/4 and 1/4 of the mass, width 0.5
    x, y = dg.density(np.random.default_rng(0).standard_normal(5000))
    assert len(x) == dg.BINS and abs((y * (x[1] - x[0])).sum() - 1) < 1e-12


def test_summarize_names_a_missing_layer():
    spec = get_spec("mlp")
    with pytest.raises(ValueError, match=r"Tanh/gate layers \[4\]"):
        dg.summarize({"loss": 1.0, "activations": {}, "activation_grads": {}, "grads": {}},
                     init_params(spec), spec)


# ---------------------------------------------------------------- each backend sees the right arrays

def _batch(data, n=32, seed=5):
    ix = np.random.default_rng(seed).integers(0, len(data.train[0]), n)
    return data.train[0][ix], data.train[1][ix]


@pytest.mark.parametrize("backend", BACKENDS)
def test_collect_records_tanh_outputs_and_their_gradients(backend, data3):
    spec = get_spec("mlp", dtype="float64")
    params = init_params(spec, 7)
    X, Y = _batch(data3)
    _, m = loaded_model(backend, spec, params)
    d = dg.diagnostics_module(backend).collect(m, X, Y)
    # the outputs are the model's own train-mode layer outputs
    B, m2 = loaded_model(backend, spec, params)
    outs = B.layer_outputs(m2, X, train=True)
    assert sorted(d["activations"]) == [4]
    np.testing.assert_allclose(d["activations"][4], outs[4], rtol=1e-12, atol=0)
    # float64 oracle for the gradient of the Tanh that feeds the last Linear: dL/dh = dlogits @ W.T
    h = outs[4].astype(np.float64)
    logits = h @ params["5.weight"] + params["5.bias"]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert d["loss"] == pytest.approx(-np.log(p[np.arange(len(Y)), Y]).mean(), rel=1e-12)
    p[np.arange(len(Y)), Y] -= 1
    np.testing.assert_allclose(d["activation_grads"][4], p / len(Y) @ params["5.weight"].T,
                               rtol=1e-10, atol=1e-14)
    # running stats updated once, as by the one train-mode pass of layer_outputs
    after, want = B.export_params(m), B.export_params(m2)
    for k in ("3.running_mean", "3.running_var"):
        np.testing.assert_allclose(after[k], want[k], rtol=1e-12, err_msg=k)
    # the same gradients as the backend's own loss_and_grads
    loss2, g2 = B.loss_and_grads(m2, X, Y)
    assert d["loss"] == pytest.approx(loss2, rel=1e-13)
    assert set(d["grads"]) == set(g2)
    for k in g2:
        np.testing.assert_allclose(d["grads"][k], g2[k], rtol=1e-12, atol=1e-16, err_msg=k)


# ---------------------------------------------------------------- torch: hooks have no side effects

def _no_hooks(model):
    return all(not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                    or getattr(m, "_backward_pre_hooks", None)) for m in model.modules())


def test_torch_hooks_change_nothing_and_leave_nothing(data8):
    pytest.importorskip("torch")
    from impl_torch import diagnostics as td
    spec = get_spec("wavenet", dtype="float64")
    params = init_params(spec, 3)
    X, Y = _batch(data8)
    B, plain = loaded_model("torch", spec, params)
    _, hooked = loaded_model("torch", spec, params)
    loss0, g0 = B.loss_and_grads(plain, X, Y)
    d = td.collect(hooked, X, Y)
    assert d["loss"] == loss0                                  # bitwise: hooks only read
    for k in g0:
        np.testing.assert_array_equal(d["grads"][k], g0[k], err_msg=k)
    assert sorted(d["activation_grads"]) == [4, 8, 12]
    assert _no_hooks(hooked)
    # removed on an exception too, and nothing is recorded outside the block
    with pytest.raises(RuntimeError):
        with td.record_tanh(hooked):
            assert not _no_hooks(hooked)
            raise RuntimeError("boom")
    assert _no_hooks(hooked)
    B.loss_and_grads(hooked, X, Y)
    assert _no_hooks(hooked)


# ---------------------------------------------------------------- jax: sow/perturb leave nothing behind

def test_jax_recording_leaves_the_model_as_it_was(data3):
    pytest.importorskip("flax")
    from flax import nnx
    from impl_jax import diagnostics as jd
    spec = get_spec("mlp", dtype="float64")   # the shapes compiled above: no new compile
    B, m = loaded_model("jax", spec, init_params(spec, 3))
    X, Y = _batch(data3)
    before = sorted((p, type(v).__name__) for p, v in nnx.to_flat_state(nnx.state(m)))
    d = jd.collect(m, X, Y)
    assert sorted(d["activations"]) == sorted(d["activation_grads"]) == [4]
    after = sorted((p, type(v).__name__) for p, v in nnx.to_flat_state(nnx.state(m)))
    assert after == before                        # no Intermediate / Perturbation variables left
    assert not any(m.layers[i].record for i in jd.tanh_layers(m))
    with pytest.raises(RuntimeError):
        with jd.record_tanh(m):
            assert all(m.layers[i].record for i in jd.tanh_layers(m))
            raise RuntimeError("boom")
    assert not any(m.layers[i].record for i in jd.tanh_layers(m))


# ---------------------------------------------------------------- parity across backends

def _assert_stats_close(a: dict, b: dict, where: str):
    """Every statistic to rtol 1e-10. A mean that is zero in exact arithmetic (gradients through a
    BatchNorm or a softmax sum to zero) is rounding noise, so means are compared to 1e-10 of the
    matching std: the scale of the array they summarise."""
    for layer in a["tanh"]:
        for s in ("std", "saturated_pct"):
            np.testing.assert_allclose(b["tanh"][layer][s], a["tanh"][layer][s], rtol=RTOL,
                                       err_msg=f"{where}: layer {layer} Tanh {s}")
        np.testing.assert_allclose(b["tanh"][layer]["mean"], a["tanh"][layer]["mean"], rtol=RTOL,
                                   atol=RTOL * a["tanh"][layer]["std"],
                                   err_msg=f"{where}: layer {layer} mean")
        g, h = a["tanh_grad"][layer], b["tanh_grad"][layer]
        np.testing.assert_allclose(h["std"], g["std"], rtol=RTOL, err_msg=f"{where}: layer {layer} grad std")
        np.testing.assert_allclose(h["mean"], g["mean"], rtol=RTOL, atol=RTOL * g["std"],
                                   err_msg=f"{where}: layer {layer} grad mean")
    for k, s in a["weights"].items():
        t = b["weights"][k]
        assert t["shape"] == s["shape"], k
        for stat in ("grad_std", "grad_data_ratio"):
            np.testing.assert_allclose(t[stat], s[stat], rtol=RTOL, err_msg=f"{where}: {k} {stat}")
        np.testing.assert_allclose(t["grad_mean"], s["grad_mean"], rtol=RTOL, atol=RTOL * s["grad_std"],
                                   err_msg=f"{where}: {k} grad_mean")
        np.testing.assert_allclose(b["update_data"][k], a["update_data"][k], rtol=RTOL,
                                   err_msg=f"{where}: {k} update:data per step")
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=RTOL, err_msg=f"{where}: loss")


@pytest.fixture(scope="module")
def wavenet_run(data8):
    """run(backend): a 4-step float64 wavenet run, same weights and batches for every backend
    (shared streams); each backend runs once per module."""
    spec = get_spec("wavenet", dtype="float64")
    cfg = TrainConfig(steps=4, lr_decay_step=2, seed=11)   # crosses the lr decay
    cache = {}

    def run(backend):
        if backend not in cache:
            cache[backend] = dg.run_backend(backend, spec, cfg, data8)
        return cache[backend]
    return run


@pytest.mark.parametrize("a,b", PAIRS)
def test_every_statistic_agrees_across_backends_float64(a, b, wavenet_run):
    ra, rb = wavenet_run(a)["stats"], wavenet_run(b)["stats"]
    assert len(ra["update_data"]["13.weight"]) == 4
    _assert_stats_close(ra, rb, f"{a} vs {b}")


def test_run_statistics_are_plausible(wavenet_run):
    s = wavenet_run(BACKENDS[0])["stats"]
    assert list(s["tanh"]) == ["4", "8", "12"]
    assert all(0 <= v["saturated_pct"] <= 100 and 0 < v["std"] < 1 for v in s["tanh"].values())
    ud = np.array(s["update_data"]["2.weight"])
    assert ud[2] < ud[1] - 0.9   # lr 0.1 -> 0.01 at step 2 lowers update:data by about 1 decade


# ---------------------------------------------------------------- CLI end to end

def test_cli_diagnose_all_backends(tmp_path, names_path, capsys):
    out = tmp_path / "diag"
    rc = cli.main(["diagnose", "--backend", "all", "--preset", "mlp", "--steps", "3", "--dtype",
                   "float64", "--data", str(names_path), "--out", str(out)])
    assert rc == 0
    for png in dg.PNGS.values():
        assert (out / png).stat().st_size > 5000, png
    st = json.loads((out / "stats.json").read_text())
    assert st["steps"] == 3 and st["preset"] == "mlp" and list(st["backends"]) == BACKENDS
    for b, s in st["backends"].items():
        assert set(s["tanh"]) == {"4"} and set(s["weights"]) == {"0.weight", "2.weight", "5.weight"}
        assert len(s["update_data"]["5.weight"]) == 3
    text = capsys.readouterr().out
    assert "| layer 4 Tanh out | saturated_pct |" in text and "grad_data_ratio" in text
    head = "| layer / parameter | statistic | " + " | ".join(BACKENDS) + " |"
    assert (out / "stats.md").read_text().startswith(head)


def test_cli_diagnose_rejects_zero_steps(tmp_path, names_path, capsys):
    rc = cli.main(["diagnose", "--backend", "torch", "--steps", "0", "--data", str(names_path),
                   "--out", str(tmp_path)])
    assert rc == 2 and "--steps must be >= 1" in capsys.readouterr().err


def test_a_conv_models_tanh_layers_are_named_as_the_hierarchical_models(data8):
    # wavenet-conv's Tanh layers stand at positions 3, 6, 9 of its own list, but its weights carry
    # wavenet's names (2.weight, 6.weight, 10.weight, 13.weight): the statistics name the Tanh layers
    # as the lecture's hierarchical model numbers them (Part 5: Tanh after 3.gamma, 7.gamma, 11.gamma)
    spec = get_spec("wavenet-conv", dtype="float64")
    run = dg.run_backend("numpy", spec, TrainConfig(steps=3, batch_size=8), data8)
    assert sorted(run["stats"]["tanh"], key=int) == ["4", "8", "12"]
    assert sorted(run["diag"]["activations"]) == [4, 8, 12]
    assert {"2.weight", "6.weight", "10.weight", "13.weight"} <= set(run["stats"]["weights"])
