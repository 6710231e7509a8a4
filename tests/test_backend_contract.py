"""The backend contract (shared.backend.Backend), once, for every installed backend, against
independent float64 oracles (helpers.py, written from the lecture and docs/design.md): a new
backend joins by being installed.

Per-framework tests (each framework's own layers as references, the numpy backward pass layer
by layer, JAX's float64 and compile handling, torch's compiled path) stay in test_<backend>.py.
"""
import math

import numpy as np
import pytest

from helpers import (BACKENDS, BITWISE_FAST, RECIPE, adamw_oracle, batch, bn_oracle, fast_steps,
                     loaded_model, mlp_eval_hidden_and_logits, mlp_train_dropout_oracle, perturbed_params)
from makemore.registry import get_backend
from shared.backend import Backend
from shared.config import TrainConfig, lr_at
from shared.params import init_params, param_shapes
from shared.spec import get_spec
from shared.stream import DropoutStream, dropout_shapes

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


# ---- training recipes: AdamW, warm-up + cosine, dropout ----

def test_the_cosine_schedule_warms_up_then_decays_to_lr_final(name, rng):
    spec = get_spec("mlp", dtype="float64")
    p = init_params(spec, 0)
    B, model = loaded_model(name, spec, p)
    cfg = TrainConfig(steps=12, lr=0.1, lr_final=0.01, schedule="cosine", warmup=4)
    opt = B.Optimizer(model, cfg)
    X, Y = np.zeros((4, 3), np.int64), np.ones(4, np.int64)
    lrs = []
    for _ in range(14):   # two steps past the end: lr_final
        lrs.append(opt.lr)
        B.train_step(model, opt, X, Y)
    want = ([0.1 * t / 4 for t in range(4)]     # linear warm-up from 0 (optax.linear_schedule)
            + [0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * (t - 4) / 8)) for t in range(4, 12)] + [0.01, 0.01])
    np.testing.assert_allclose(lrs, want, rtol=1e-14, atol=1e-17)
    # the lr the step applies is the schedule's: SGD from step 6 on
    B.load_params(model, p)
    opt = B.Optimizer(model, cfg)
    opt.load_state_dict({"t": np.array(6)})
    X, Y = rng.integers(0, 27, size=(16, 3)), rng.integers(0, 27, size=16)
    _, g = loaded_model(name, spec, p)[0].loss_and_grads(loaded_model(name, spec, p)[1], X, Y)
    B.train_step(model, opt, X, Y)
    after = B.export_params(model)
    for k in g:
        np.testing.assert_allclose(after[k], p[k] - lr_at(cfg, 6) * g[k], rtol=1e-12, atol=1e-15, err_msg=k)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_two_adamw_steps_are_the_decoupled_update(name, weight_decay, rng):
    spec = get_spec("mlp", dtype="float64")
    B, model = loaded_model(name, spec, perturbed_params(spec, 4))
    cfg = TrainConfig(steps=10, lr=0.01, lr_final=0.01, optimizer="adamw", weight_decay=weight_decay)
    opt = B.Optimizer(model, cfg)
    m = v = None
    for t in (1, 2):   # the second step checks the moments carried over and the bias correction
        X, Y = rng.integers(0, 27, size=(32, 3)), rng.integers(0, 27, size=32)
        before = B.export_params(model)
        _, g = loaded_model(name, spec, before)[0].loss_and_grads(loaded_model(name, spec, before)[1], X, Y)
        m = m or {k: np.zeros_like(a) for k, a in g.items()}
        v = v or {k: np.zeros_like(a) for k, a in g.items()}
        B.train_step(model, opt, X, Y)
        after, state = B.export_params(model), opt.state_dict()
        for k in g:   # decay on the weight matrices and the embedding only
            want, m[k], v[k] = adamw_oracle(before[k], g[k], m[k], v[k], t, 0.01, weight_decay,
                                            decayed=k.endswith(".weight"))
            # atol: Adam divides by sqrt(v) + eps, so a gradient near 0 turns a 1e-18 rounding
            # difference of the step's own forward (torch's F.batch_norm, one thread) into ~3e-14
            np.testing.assert_allclose(after[k], want, rtol=1e-12, atol=1e-13, err_msg=f"{k} step {t}")
            np.testing.assert_allclose(state[f"exp_avg.{k}"], m[k], rtol=1e-12, atol=1e-18, err_msg=k)
            np.testing.assert_allclose(state[f"exp_avg_sq.{k}"], v[k], rtol=1e-12, atol=1e-24, err_msg=k)
    assert opt.t == 2


def test_dropout_forward_and_backward_against_the_formula(name):
    spec = get_spec("mlp", dtype="float64")
    p = perturbed_params(spec, 7)
    X, Y = batch(spec, 16, seed=3)
    (mask,) = DropoutStream(3, 0.3, dropout_shapes(spec, 16), "float64").masks(0)
    assert mask.shape == (16, 200) and mask.dtype == np.float64
    assert set(np.unique(mask)) == {0.0, 1 / 0.7} and 0.2 < (mask == 0).mean() < 0.4
    B, model = loaded_model(name, spec, p)
    loss, grads = B.loss_and_grads(model, X, Y, masks=[mask])
    want_loss, want = mlp_train_dropout_oracle(p, X, Y, mask)
    assert loss == pytest.approx(want_loss, rel=1e-12)
    for k, g in want.items():
        np.testing.assert_allclose(grads[k], g, rtol=1e-10, atol=1e-14, err_msg=k)
    # no masks: no dropout, in train mode as in eval mode
    _, model = loaded_model(name, spec, p)
    assert B.loss_and_grads(model, X, Y)[0] == pytest.approx(
        mlp_train_dropout_oracle(p, X, Y, np.ones_like(mask))[0], rel=1e-12)
    np.testing.assert_allclose(B.forward(model, X), mlp_eval_hidden_and_logits(B.export_params(model), X)[1],
                               rtol=1e-12)


def test_dropout_gradients_against_central_differences(name):
    spec = get_spec("wavenet-22k", dtype="float64")   # masks of 3-D (B, T, C) and 2-D Tanh outputs
    p = perturbed_params(spec, 2)
    X, Y = batch(spec, 16, seed=5)
    masks = DropoutStream(5, 0.25, dropout_shapes(spec, 16), "float64").masks(0)
    assert [m.shape for m in masks] == [(16, 4, 68), (16, 2, 68), (16, 68)]
    B, model = loaded_model(name, spec, p)
    _, grads = B.loss_and_grads(model, X, Y, masks=masks)
    for k, idx in [("0.weight", (5, 2)), ("2.weight", (3, 5)), ("7.gamma", (4,)), ("11.beta", (1,))]:
        vals = []
        for s in (+1, -1):
            q = {n: v.copy() for n, v in p.items()}
            q[k][idx] += s * 1e-6
            B.load_params(model, q)
            vals.append(B.loss_and_grads(model, X, Y, masks=masks)[0])
        np.testing.assert_allclose(grads[k][idx], (vals[0] - vals[1]) / 2e-6, rtol=1e-5, atol=1e-9, err_msg=k)


def test_bad_dropout_masks_raise_and_change_nothing(name):
    spec = get_spec("wavenet-22k", dtype="float64")
    p = perturbed_params(spec, 1)
    B, model = loaded_model(name, spec, p)
    opt = B.Optimizer(model, TrainConfig(steps=5, **RECIPE))
    X, Y = batch(spec, 8)
    good = DropoutStream(1, 0.2, dropout_shapes(spec, 8), "float64").masks(0)
    for bad, match in [(good[:2], r"got 2, need one per Tanh/gate layer \(3: layers \[4, 8, 12\]\)"),
                       ([good[0][:4], *good[1:]], r"Tanh layer 4 has shape \(4, 4, 68\); its output has shape \(8, 4, 68\)"),
                       ([*good[:2], good[2].astype(np.int64)], "need a float array")]:
        with pytest.raises(ValueError, match=match):
            B.train_step(model, opt, X, Y, masks=bad)
        with pytest.raises(ValueError, match=match):
            B.loss_and_grads(model, X, Y, masks=bad)
        with pytest.raises(ValueError, match=match.replace(r"\(4, 4", r"\(1, 4, 4").replace(r"\(8, 4", r"\(1, 8, 4")):
            fast_steps(name, B, model, opt, X[None], Y[None], masks=[m[None] for m in bad])
    assert opt.t == 0
    for k, v in B.export_params(model).items():
        np.testing.assert_array_equal(v, p[k], err_msg=k)
    assert all(not v.any() for k, v in opt.state_dict().items() if k != "t")


@pytest.mark.parametrize("preset,dtype,dropout,rtol", [
    ("wavenet-22k", "float64", 0.2, 1e-12), ("wavenet-22k", "float64", 0.0, 1e-12),
    ("wavenet-22k", "float32", 0.2, 2e-5), ("wavenet-gated", "float64", 0.2, 1e-12),
    ("wavenet-gated", "float32", 0.2, 2e-5)])
def test_the_fast_path_equals_the_plain_path_with_a_recipe(name, preset, dtype, dropout, rtol):
    # wavenet-gated at n_hidden 24: the gate layers of the fused steps, at a small size
    spec = get_spec(preset, dtype=dtype, **({"n_hidden": 24} if preset == "wavenet-gated" else {}))
    p = perturbed_params(spec, 1)
    cfg = TrainConfig(steps=30, warmup=5, **{**RECIPE, "dropout": dropout})   # warm-up inside a chunk
    drops = DropoutStream(cfg.seed, dropout, dropout_shapes(spec, 32), dtype) if dropout else None
    masks = (lambda i, k: drops.take(i, k)) if drops else (lambda i, k: None)  # noqa: E731
    rng = np.random.default_rng(0)
    Xs, Ys = rng.integers(0, 27, size=(30, 32, spec.block_size)), rng.integers(0, 27, size=(30, 32))
    runs = []
    for fast in (False, True):
        B, model = loaded_model(name, spec, p)
        opt = B.Optimizer(model, cfg)
        if fast:
            # two chunks of one size: JAX compiles one scan
            losses = np.concatenate([fast_steps(name, B, model, opt, Xs[:15], Ys[:15], masks(0, 15)),
                                     fast_steps(name, B, model, opt, Xs[15:], Ys[15:], masks(15, 15))])
        else:
            losses = np.array([B.train_step(model, opt, X, Y, masks=None if drops is None else drops.masks(i))
                               for i, (X, Y) in enumerate(zip(Xs, Ys))])
        runs.append((losses, B.export_params(model), opt.state_dict(), opt.lr))
    (l0, p0, s0, lr0), (l1, p1, s1, lr1) = runs
    assert lr0 == lr1 and int(s0["t"]) == int(s1["t"]) == 30 and list(s0) == list(s1)
    if name in BITWISE_FAST and not dropout:   # with dropout, XLA fuses the masks' products otherwise
        np.testing.assert_array_equal(l1, l0)
    np.testing.assert_allclose(l1, l0, rtol=rtol)
    for k in p0:
        np.testing.assert_allclose(p1[k], p0[k], rtol=rtol * 10, atol=rtol, err_msg=k)
    for k in s0:   # AdamW's moments move alike
        np.testing.assert_allclose(s1[k], s0[k], rtol=rtol * 10, atol=rtol * np.abs(s0[k]).max(), err_msg=k)


def test_adamw_state_is_canonical_and_resumes_bitwise(name, rng):
    spec = get_spec("wavenet-22k", dtype="float64")
    cfg = TrainConfig(steps=10, warmup=3, **RECIPE)
    drops = DropoutStream(0, cfg.dropout, dropout_shapes(spec, 16), "float64")
    Xs, Ys = rng.integers(0, 27, size=(6, 16, 8)), rng.integers(0, 27, size=(6, 16))
    B, m1 = loaded_model(name, spec, perturbed_params(spec, 3))
    o1 = B.Optimizer(m1, cfg)
    for i in range(4):
        B.train_step(m1, o1, Xs[i], Ys[i], masks=drops.masks(i))
    state = o1.state_dict()
    shapes = param_shapes(spec, buffers=False)
    assert list(state) == ["t"] + [f"exp_avg.{n}" for n in shapes] + [f"exp_avg_sq.{n}" for n in shapes]
    assert int(state["t"]) == 4
    for n, shape in shapes.items():   # canonical layout (torch transposes its Linear weights back)
        assert state[f"exp_avg.{n}"].shape == state[f"exp_avg_sq.{n}"].shape == shape, n
        assert state[f"exp_avg.{n}"].dtype == np.float64 and (state[f"exp_avg_sq.{n}"] >= 0).all(), n
        assert state[f"exp_avg.{n}"].any(), n
    _, m2 = loaded_model(name, spec, B.export_params(m1))
    o2 = B.Optimizer(m2, cfg)
    o2.load_state_dict(state)
    assert (o2.t, o2.lr) == (o1.t, o1.lr)
    for i in (4, 5):
        assert B.train_step(m2, o2, Xs[i], Ys[i], masks=drops.masks(i)) == B.train_step(
            m1, o1, Xs[i], Ys[i], masks=drops.masks(i))   # bitwise
    for k, v in o1.state_dict().items():
        np.testing.assert_array_equal(o2.state_dict()[k], v, err_msg=k)
    np.testing.assert_array_equal(B.export_params(m2)["2.weight"], B.export_params(m1)["2.weight"])
    with pytest.raises(ValueError, match="missing"):
        o2.load_state_dict({"t": np.array(3)})          # an SGD state
    bad = dict(state, **{"exp_avg.2.weight": state["exp_avg.2.weight"].T})
    with pytest.raises(ValueError, match=r"exp_avg.2.weight has shape \(68, 20\), the model needs \(20, 68\)"):
        o2.load_state_dict(bad)
