"""impl_numpy on its own: every hand-written backward against central finite differences in
float64 (an oracle independent of every framework), BatchNorm against docs/design.md's formula, dtype
discipline in float32, the SGD schedule, the fast path, and `makemore train --backend numpy`."""
import json

import numpy as np
import pytest

import impl_numpy as N
from impl_numpy.layers import BatchNorm1d, CausalConv1d, Dropout, Embedding, FlattenConsecutive, Linear, Tanh
from impl_numpy.model import cross_entropy, sequence_cross_entropy
from makemore import cli
from shared.checkpoint import load_checkpoint
from shared.params import init_params
from shared.spec import conv_spec, get_spec, wavenet_spec
from shared.stream import name_batch
from shared.config import TrainConfig
from makemore.trainer import train

H = 1e-6  # central-difference step (float64): truncation ~H^2, rounding ~1e-16/H


def numeric_grad(f, x, h=H):
    """Central differences of the scalar f() w.r.t. every entry of array x (mutated and restored)."""
    g = np.zeros_like(x, dtype=np.float64)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + h
        fp = f()
        x[i] = old - h
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * h)
    return g


def check_close(got, want, what, rtol=1e-6, atol=1e-9):
    err = np.abs(got - want).max()
    scale = np.abs(want).max()
    assert err <= atol + rtol * scale, f"{what}: max |analytic - numeric| = {err:.3g} (scale {scale:.3g})"


def check_grads_fd(params, grads, loss, rng, n, what):
    """Each gradient in `grads` against central differences of loss() (step H) in its parameter
    (`params[name]`, perturbed in place and restored): every coordinate of a tensor of at most
    `n`, n random coordinates of a larger one. rtol 1e-5, atol 1e-8."""
    for k, g in grads.items():
        x = params[k]
        idx = list(np.ndindex(x.shape))
        if len(idx) > n:
            idx = [idx[j] for j in rng.choice(len(idx), n, replace=False)]
        num = []
        for i in idx:
            old = x[i]
            x[i] = old + H; fp = loss()
            x[i] = old - H; fm = loss()
            x[i] = old
            num.append((fp - fm) / (2 * H))
        check_close(np.array([g[i] for i in idx]), np.array(num), f"{what} {k}", rtol=1e-5, atol=1e-8)


def layer_fd(layer, x, rng, params=()):
    """Check layer.backward against finite differences of L = sum(layer(x) * R): dx and each param."""
    R = rng.normal(size=layer(x).shape)

    def f():
        return float((layer(x) * R).sum())
    f()
    dx = layer.backward(R)
    if x.dtype.kind == "f":
        check_close(dx, numeric_grad(f, x), f"{type(layer).__name__} dx")
    for name in params:
        f()
        layer.backward(R)
        check_close(layer.grads[name], numeric_grad(f, getattr(layer, name)), f"{type(layer).__name__} d{name}")


# ---- every layer against finite differences (float64) ----

def test_embedding_backward_accumulates_repeated_ids(rng):
    emb = Embedding(5, 3, dtype=np.float64)
    emb.weight[...] = rng.normal(size=(5, 3))
    ix = np.array([[0, 0, 2], [0, 4, 2]])           # id 0 three times, id 2 twice, 1 and 3 never
    layer_fd(emb, ix, rng, params=("weight",))
    emb(ix)
    emb.backward(np.ones((2, 3, 3)))
    np.testing.assert_array_equal(emb.grads["weight"][:, 0], [3, 0, 2, 0, 1])


def test_flatten_backward(rng):
    layer_fd(FlattenConsecutive(2), rng.normal(size=(3, 8, 4)), rng)
    layer_fd(FlattenConsecutive(4), rng.normal(size=(3, 4, 2)), rng)     # squeezed to (B, C*n)
    with pytest.raises(ValueError, match="multiple of n"):
        FlattenConsecutive(3)(np.zeros((2, 8, 3)))


@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 5)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_backward(shape, bias, rng):
    lin = Linear(5, 7, bias=bias, dtype=np.float64)
    lin.weight[...] = rng.normal(size=(5, 7))
    if bias:
        lin.bias[...] = rng.normal(size=7)
    layer_fd(lin, rng.normal(size=shape), rng, params=("weight", "bias") if bias else ("weight",))


@pytest.mark.parametrize("convention", ["lecture", "torch", "flax"])
@pytest.mark.parametrize("shape", [(8, 4), (4, 3, 4)])
def test_batchnorm_backward(convention, shape, rng):
    bn = BatchNorm1d(4, convention=convention, dtype=np.float64)
    bn.gamma[...] = rng.normal(size=4)
    bn.beta[...] = rng.normal(size=4)
    layer_fd(bn, rng.normal(2.0, 3.0, size=shape), rng, params=("gamma", "beta"))


def test_batchnorm_backward_eval_mode(rng):
    bn = BatchNorm1d(4, dtype=np.float64)
    bn.gamma[...], bn.running_mean[...], bn.running_var[...] = rng.normal(size=(3, 4)) ** 2
    bn.training = False
    layer_fd(bn, rng.normal(size=(5, 4)), rng, params=("gamma", "beta"))


@pytest.mark.parametrize("n, dilation, T", [(2, 1, 8), (2, 2, 7), (2, 4, 5), (3, 2, 9), (2, 4, 9)])
@pytest.mark.parametrize("bias", [False, True])
def test_causal_conv_backward(n, dilation, T, bias, rng):
    # (2, 4, 5): one output position left, squeezed to (B, fan_out)
    conv = CausalConv1d(5, 7, n=n, dilation=dilation, bias=bias, dtype=np.float64)
    conv.weight[...] = rng.normal(size=(n * 5, 7))
    if bias:
        conv.bias[...] = rng.normal(size=7)
    layer_fd(conv, rng.normal(size=(3, T, 5)), rng, params=("weight", "bias") if bias else ("weight",))


def test_causal_conv_forward_is_the_tap_sum(rng):
    # out[:, t] = x[:, t] @ W[:C] + x[:, t + d] @ W[C:] (the older position takes W[:C])
    conv = CausalConv1d(4, 3, n=2, dilation=2, dtype=np.float64)
    conv.weight[...] = rng.normal(size=(8, 3))
    x = rng.normal(size=(2, 6, 4))
    want = np.stack([x[:, t] @ conv.weight[:4] + x[:, t + 2] @ conv.weight[4:] for t in range(4)], axis=1)
    np.testing.assert_allclose(conv(x), want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="needs at least 3 positions, got 2"):
        conv(x[:, :2])


class _CountedBatchNorm(BatchNorm1d):
    """BatchNorm1d always called with the same node weights (for layer_fd)."""

    def __call__(self, x, counts=None):
        return super().__call__(x, self.fixed_counts)


@pytest.mark.parametrize("convention", ["lecture", "torch", "flax"])
def test_batchnorm_backward_with_counts(convention, rng):
    bn = _CountedBatchNorm(4, convention=convention, dtype=np.float64)
    bn.gamma[...], bn.beta[...] = rng.normal(size=(2, 4))
    bn.fixed_counts = np.array([[1.0, 0.0, 2.0, 0.0, 3.0], [4.0, 1.0, 0.0, 0.0, 1.0]])
    layer_fd(bn, rng.normal(1.0, 2.0, size=(2, 5, 4)), rng, params=("gamma", "beta"))


def test_sequence_cross_entropy_is_the_mean_over_real_targets(rng):
    logits, Y = rng.normal(size=(3, 4, 5)), rng.integers(0, 5, size=(3, 4))
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=bool)
    loss, d = sequence_cross_entropy(logits, Y, mask)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    nll = -np.log(np.take_along_axis(p, Y[..., None], -1)[..., 0])
    assert loss == pytest.approx(nll[mask].mean(), rel=1e-14)
    check_close(d, numeric_grad(lambda: sequence_cross_entropy(logits, Y, mask)[0], logits), "dlogits")
    assert not d[~mask].any()


def test_sequence_gradients_against_finite_differences(rng):
    # a small conv model (emb 4, hidden 6, dilations 1, 2, 4), ragged names, weighted BatchNorm
    spec = conv_spec(wavenet_spec(n_embd=4, n_hidden=6, dtype="float64"))
    p = init_params(spec, 3)
    p = {k: v + (0.3 * rng.normal(size=v.shape) if "gamma" in k or "beta" in k else 0) for k, v in p.items()}
    X, Y, mask = name_batch([[5, 1, 13], [1, 22, 1, 4, 9], [26]], spec.block_size)
    model = N.build_model(spec)
    N.load_params(model, p)
    _, grads = N.sequence_loss_and_grads(model, X, Y, mask)
    params = dict(model.named_parameters())
    assert set(params) == set(grads)

    def loss():
        return N.sequence_loss_and_grads(model, X, Y, mask)[0]
    check_grads_fd(params, grads, loss, rng, 30, "sequence")


def test_tanh_backward(rng):
    layer_fd(Tanh(), rng.normal(size=(4, 3, 5)), rng)


def test_dropout_backward_and_identity_without_a_mask(rng):
    x, R = rng.normal(size=(4, 3, 5)), rng.normal(size=(4, 3, 5))
    mask = np.where(rng.random((4, 3, 5)) >= 0.3, 1 / 0.7, 0.0)
    d = Dropout()

    def f():
        return float((d(x, mask) * R).sum())
    f()
    check_close(d.backward(R), numeric_grad(f, x), "Dropout dx")
    np.testing.assert_array_equal(d(x, mask), x * mask)
    assert d(x) is x and d.backward(R) is R            # no mask (eval mode, no dropout): identity


def test_cross_entropy_value_and_gradient(rng):
    logits, Y = rng.normal(size=(6, 5)) * 3, rng.integers(0, 5, size=6)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    loss, d = cross_entropy(logits, Y)
    np.testing.assert_allclose(loss, -np.log(p[np.arange(6), Y]).mean(), rtol=1e-14)
    check_close(d, numeric_grad(lambda: cross_entropy(logits, Y)[0], logits), "dlogits")
    big, _ = cross_entropy(np.array([[1000.0, 0.0]]), np.array([1]))    # no overflow
    assert big == pytest.approx(1000.0)


@pytest.mark.parametrize("preset", ["mlp", "wavenet-22k"])
def test_whole_model_gradients_against_finite_differences(preset, rng):
    spec = get_spec(preset, dtype="float64")
    p = init_params(spec, 7)
    p = {k: v + (0.3 * rng.normal(size=v.shape) if "gamma" in k or "beta" in k else 0) for k in p
         for v in [p[k]]}
    X, Y = rng.integers(0, 27, size=(12, spec.block_size)), rng.integers(0, 27, size=12)
    model = N.build_model(spec)
    N.load_params(model, p)
    _, grads = N.loss_and_grads(model, X, Y)

    def loss():
        return N.loss_and_grads(model, X, Y)[0]   # train mode: batch stats, as the gradient
    params = dict(model.named_parameters())
    check_grads_fd(params, grads, loss, rng, 40, preset)


# ---- BatchNorm forward against docs/design.md's table ----

# ---- model-level behaviour ----

def test_layers_keep_out_and_dout(rng):
    spec = get_spec("wavenet-22k", dtype="float64")
    model = N.build_model(spec)
    N.load_params(model, init_params(spec, 0))
    N.loss_and_grads(model, rng.integers(0, 27, (8, 8)), rng.integers(0, 27, 8))
    for i, l in enumerate(model):
        assert l.out is not None and l.dout is not None, f"layer {i} {type(l).__name__}"
        assert l.dout.shape == l.out.shape, f"layer {i} {type(l).__name__}"
    tanhs = [l for l in model if isinstance(l, Tanh)]
    assert len(tanhs) == 3 and tanhs[0].out.shape == (8, 4, 68)


def test_float32_stays_float32(data8):
    spec = get_spec("wavenet", dtype="float32")
    model = N.build_model(spec)
    N.load_params(model, init_params(spec, 0))
    X, Y = data8.train[0][:32], data8.train[1][:32]
    assert all(o.dtype == np.float32 for o in N.layer_outputs(model, X, train=True)[1:])
    _, grads = N.loss_and_grads(model, X, Y)
    assert all(g.dtype == np.float32 for g in grads.values())
    assert all(l.dout.dtype == np.float32 for l in model)
    opt = N.Optimizer(model, TrainConfig(steps=10))
    N.train_step(model, opt, X, Y)
    assert all(v.dtype == np.float32 for v in N.export_params(model).values())


def test_evaluate_is_the_mean_over_the_split_in_eval_mode(data3, rng, monkeypatch):
    spec = get_spec("mlp", dtype="float64")
    p = init_params(spec, 2)
    p["3.running_mean"], p["3.running_var"] = rng.normal(size=200), rng.uniform(0.5, 2, 200)
    model = N.build_model(spec)
    N.load_params(model, p)
    X, Y = data3.val[0][:1000], data3.val[1][:1000]
    h = np.tanh(p["3.gamma"] * (p["0.weight"][X].reshape(1000, -1) @ p["2.weight"] - p["3.running_mean"])
                / np.sqrt(p["3.running_var"] + 1e-5) + p["3.beta"])
    logits = h @ p["5.weight"] + p["5.bias"]
    logits -= logits.max(1, keepdims=True)
    want = -(logits[np.arange(1000), Y] - np.log(np.exp(logits).sum(1))).mean()
    monkeypatch.setattr("impl_numpy.train._EVAL_CHUNK", 300)          # chunks of 300 + a tail of 100
    assert N.evaluate(model, X, Y) == pytest.approx(want, rel=1e-12)
    np.testing.assert_array_equal(N.export_params(model)["3.running_mean"], p["3.running_mean"])
    assert model.training                                                  # back in train mode


def test_out_of_vocab_and_bad_params_raise():
    spec = get_spec("mlp")
    model = N.build_model(spec)
    with pytest.raises(ValueError, match="token id 27 is outside the vocab"):
        N.forward(model, np.array([[1, 2, 27]]))
    p = init_params(spec, 0)
    p["2.weight"] = p["2.weight"].T
    with pytest.raises(ValueError, match="'2.weight' has shape"):
        N.load_params(model, p)


@pytest.mark.parametrize("convention", ["lecture", "torch", "flax"])
def test_fast_running_stats_over_more_steps_than_are_pending(convention, rng):
    """The fused step folds its BatchNorm statistics into the running stats every PENDING steps
    and at the end of each call (closed form of the exponential average): after 150 steps in
    calls of 70 and 80 they equal 150 train_step updates."""
    from impl_numpy.fast import _FusedStep
    spec = get_spec("wavenet-22k", dtype="float64", bn_convention=convention)
    p = init_params(spec, 4)
    Xs, Ys = rng.integers(0, 27, (150, 8, 8)), rng.integers(0, 27, (150, 8))
    assert 70 > _FusedStep.PENDING
    after = []
    for fast in (False, True):
        model = N.build_model(spec)
        N.load_params(model, p)
        opt = N.Optimizer(model, TrainConfig(steps=150))
        if fast:
            N.fast_train_steps(model, opt, Xs[:70], Ys[:70])
            N.fast_train_steps(model, opt, Xs[70:], Ys[70:])
        else:
            for X, Y in zip(Xs, Ys):
                N.train_step(model, opt, X, Y)
        after.append(N.export_params(model))
    for k in after[0]:
        np.testing.assert_allclose(after[1][k], after[0][k], rtol=1e-11, atol=1e-12, err_msg=k)


def test_short_numpy_training_lowers_the_loss(data8):
    res = train("numpy", get_spec("wavenet"), TrainConfig(steps=200), data8, n_samples=3, fast=True,
                evaluate=False)   # the whole train split in eval mode would dominate the test
    assert abs(res.losses[0] - np.log(27)) < 0.1
    assert res.losses[-50:].mean() < res.losses[:50].mean() - 0.25
    assert N.evaluate(res.model, *data8.val) < 3.0 and len(res.samples) == 3


def test_cli_train_numpy_then_sample(tmp_path, names_path, capsys):
    out = tmp_path / "run"
    rc = cli.main(["train", "--backend", "numpy", "--preset", "mlp", "--steps", "100", "--data",
                   str(names_path), "--out", str(out), "--no-progress"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["backend"] == "numpy" and m["steps"] == 100 and m["params"] == 12097
    names = (out / "samples.txt").read_text().split()
    _, md = load_checkpoint(out / "checkpoint.safetensors")
    assert md["backend"] == "numpy" and md["step"] == 100
    capsys.readouterr()
    assert cli.main(["sample", "--checkpoint", str(out / "checkpoint.safetensors"), "--backend", "numpy",
                     "-n", "20"]) == 0
    assert capsys.readouterr().out.split() == names


def test_blas_threads_follow_the_thread_policy(monkeypatch):
    from threadpoolctl import threadpool_info
    from impl_numpy.train import threads_for
    blas = lambda: {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}  # noqa: E731
    outside = blas()
    monkeypatch.delenv("MAKEMORE_THREADS", raising=False)
    with threads_for(32):
        assert blas() == {1}
    with threads_for(4096):
        assert blas() == outside
    monkeypatch.setenv("MAKEMORE_THREADS", "2")
    with threads_for(32):
        assert blas() == {2}
    assert blas() == outside
