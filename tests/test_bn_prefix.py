"""The lecture's BatchNorm1d before its fix (Part 5 at 38:50; row 3 of the performance log:
hierarchical 22k, 1.941 / 2.029): 3-D input reduced over dim 0 only, statistics and running
stats per position and channel, shape (T, C). Every backend against a float64 numpy oracle
written from the lecture's layer (`x.mean(0, keepdim=True)`, `x.var(0, keepdim=True)`)."""
import numpy as np
import pytest

from helpers import BACKENDS, BITWISE_FAST, assert_same, fast_steps, loaded_model, perturbed_params
from makemore import cli
from makemore.registry import get_backend
from shared.checkpoint import load_checkpoint, save_checkpoint
from shared.config import TrainConfig
from shared.data import Vocab
from shared.params import param_shapes
from shared.spec import get_spec


def _spec(dtype="float64", convention="lecture"):
    return get_spec("wavenet-22k", dtype=dtype, bn_convention=convention, bn_per_position=True)


def oracle(p, X, Y, convention="lecture", eps=1e-5, m=0.1):
    """The pre-fix wavenet-22k in train mode, float64: (logits, loss, {name: new running stat})."""
    x = p["0.weight"][X]                                    # (B, 8, 10)
    stats = {}
    for k in (2, 6, 10):                                    # Flatten(2) k-1, Linear k, BN k+1, Tanh k+2
        B, T, C = x.shape
        x = x.reshape(B, T // 2, C * 2)
        if x.shape[1] == 1:
            x = x[:, 0]
        x = x @ p[f"{k}.weight"]
        j = k + 1
        n = x.shape[0]                                      # dim 0 only: n = B
        mean = x.mean(0)                                    # (T, C) on 3-D input, (C,) on 2-D
        ss = ((x - mean) ** 2).sum(0)
        var = ss / (n - 1) if convention == "lecture" else ss / n
        run = ss / n if convention == "flax" else ss / (n - 1)
        stats[f"{j}.running_mean"] = (1 - m) * p[f"{j}.running_mean"] + m * mean
        stats[f"{j}.running_var"] = (1 - m) * p[f"{j}.running_var"] + m * run
        x = np.tanh(p[f"{j}.gamma"] * (x - mean) / np.sqrt(var + eps) + p[f"{j}.beta"])
    logits = x @ p["13.weight"] + p["13.bias"]
    z = logits - logits.max(1, keepdims=True)
    loss = -(z[np.arange(len(Y)), Y] - np.log(np.exp(z).sum(1))).mean()
    return logits, loss, stats


def _batch(n=16, seed=5):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 27, size=(n, 8)), rng.integers(0, 27, size=n)


def test_running_stats_are_per_position_and_channel():
    shapes = param_shapes(_spec())
    assert shapes["3.running_mean"] == (4, 68) and shapes["7.running_var"] == (2, 68)
    assert shapes["11.running_mean"] == (68,)              # 2-D input there: unaffected
    assert shapes["3.gamma"] == (68,)
    assert param_shapes(get_spec("wavenet-22k"))["3.running_mean"] == (68,)
    assert _spec().to_json() != get_spec("wavenet-22k", dtype="float64").to_json()


# per position is the same change under every convention: each backend once, numpy under all three
@pytest.mark.parametrize("name,convention", [(b, "lecture") for b in BACKENDS]
                         + [("numpy", "torch"), ("numpy", "flax")])
def test_train_forward_running_stats_and_eval_match_the_oracle(name, convention):
    spec = _spec(convention=convention)
    p = perturbed_params(spec, 2)
    X, Y = _batch()
    B, model = loaded_model(name, spec, p)
    want_logits, want_loss, want_stats = oracle(p, X, Y, convention)
    assert_same(B.forward(model, X, train=True), want_logits, "train logits", 1e-12, (name, "oracle"))
    after = B.export_params(model)
    for k, v in want_stats.items():
        assert_same(after[k], v, k, 1e-12, (name, "oracle"))
    # eval mode normalises with the (T, C) running stats
    q = {**p, **want_stats}
    h = q["0.weight"][X]
    for k in (2, 6, 10):
        h = h.reshape(len(X), h.shape[1] // 2, -1)
        h = h[:, 0] if h.shape[1] == 1 else h
        j = k + 1
        h = h @ q[f"{k}.weight"]
        h = np.tanh(q[f"{j}.gamma"] * (h - q[f"{j}.running_mean"]) / np.sqrt(q[f"{j}.running_var"] + 1e-5)
                    + q[f"{j}.beta"])
    assert_same(B.forward(model, X, train=False), h @ q["13.weight"] + q["13.bias"], "eval logits", 1e-12,
                (name, "oracle"))


@pytest.mark.parametrize("name", BACKENDS)
def test_gradients_match_finite_differences_of_the_oracle(name):
    spec = _spec()
    p = perturbed_params(spec, 3)
    X, Y = _batch(12, 6)
    B, model = loaded_model(name, spec, p)
    loss, grads = B.loss_and_grads(model, X, Y)
    assert abs(loss - oracle(p, X, Y)[1]) <= 1e-12 * abs(loss)
    rng = np.random.default_rng(0)
    for k in ("0.weight", "2.weight", "3.gamma", "3.beta", "7.gamma", "10.weight", "11.beta", "13.bias"):
        for _ in range(3):
            idx = tuple(int(rng.integers(0, s)) for s in p[k].shape)
            h = 1e-6
            up, dn = {**p, k: p[k].copy()}, {**p, k: p[k].copy()}
            up[k][idx] += h
            dn[k][idx] -= h
            fd = (oracle(up, X, Y)[1] - oracle(dn, X, Y)[1]) / (2 * h)
            assert abs(grads[k][idx] - fd) <= 1e-6 * max(1.0, abs(fd)), (name, k, idx, grads[k][idx], fd)


@pytest.mark.parametrize("name", BACKENDS)
def test_a_few_sgd_steps_agree_across_backends_and_fast_paths(name):
    spec = _spec()
    p = perturbed_params(spec, 4)
    cfg = TrainConfig(steps=6, lr_decay_step=3)
    Xs = np.stack([_batch(16, s)[0] for s in range(6)])
    Ys = np.stack([_batch(16, s)[1] for s in range(6)])
    ref, ref_model = loaded_model("numpy", spec, p)
    ref_opt = ref.Optimizer(ref_model, cfg)
    want = [ref.train_step(ref_model, ref_opt, x, y) for x, y in zip(Xs, Ys)]
    B, model = loaded_model(name, spec, p)
    opt = B.Optimizer(model, cfg)
    got = [B.train_step(model, opt, x, y) for x, y in zip(Xs, Ys)]
    np.testing.assert_allclose(got, want, rtol=1e-10)
    for k, v in ref.export_params(ref_model).items():
        assert_same(B.export_params(model)[k], v, k, 1e-10, (name, "numpy"))
    B2, model2 = loaded_model(name, spec, p)
    opt2 = B2.Optimizer(model2, cfg)
    if name in BITWISE_FAST:          # JAX's fast path scans the plain step: per-position BN included
        assert B2.fast_unsupported(spec) is None
        np.testing.assert_array_equal(fast_steps(name, B2, model2, opt2, Xs, Ys), got)
    else:                             # the hand-fused steps refuse it, leaving the model unchanged
        # the backend's own declaration (the trainer asks it before writing a run folder) says so
        assert "pre-fix BatchNorm" in B2.fast_unsupported(spec)
        assert B2.fast_unsupported(get_spec("wavenet-22k", dtype="float64")) is None  # the fixed layer: fine
        with pytest.raises(ValueError, match="pre-fix BatchNorm.*without --fast"):
            fast_steps(name, B2, model2, opt2, Xs, Ys)
        for k, v in p.items():
            np.testing.assert_array_equal(B2.export_params(model2)[k], v, err_msg=k)


def test_a_checkpoint_with_per_position_stats_loads_in_every_backend(tmp_path):
    spec = _spec("float32")
    p = perturbed_params(spec, 1)
    path = save_checkpoint(tmp_path / "c.safetensors", p, spec, Vocab(tuple(".abcdefghijklmnopqrstuvwxyz")))
    params, md = load_checkpoint(path)
    assert md["spec"] == spec and params["3.running_mean"].shape == (4, 68)
    for name in BACKENDS:
        B = get_backend(name)
        model = B.build_model(md["spec"])
        B.load_params(model, params)
        np.testing.assert_array_equal(B.export_params(model)["7.running_var"], p["7.running_var"])


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_fast_with_the_prefix_batchnorm_is_refused_before_the_run_folder_is_written(backend, tmp_path, names_path, capsys):
    pytest.importorskip(backend)
    out = tmp_path / "run"
    argv = ["train", "--backend", backend, "--fast", "--bn-per-position", "--steps", "10", "--data",
            str(names_path), "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "pre-fix BatchNorm" in err and "without --fast" in err and err.count("\n") == 1, err
    assert not out.exists()                      # nothing written: the retry without --fast is free
    assert cli.main([a for a in argv if a != "--fast"]) == 0
