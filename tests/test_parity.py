"""Parity across every pair of installed backends (helpers.PAIRS): the same canonical parameters
and the same batch give the same logits, loss, gradients, every layer's output (train and eval
mode), BatchNorm running stats, SGD trajectory, AdamW + warm-up/cosine + dropout trajectory
(with the optimizer's moments), checkpoints and sampled names.

Only the backend contract (shared.backend.Backend) is used, so a new backend joins the suite unchanged.
Tolerances (docs/design.md "Precision and parity"), relative to the largest |value| of the tensor:
float64 1e-10 everywhere; float32 1e-5 for outputs/logits/loss, 1e-4 for gradients.
"""
import numpy as np
import pytest

from helpers import PAIRS, RECIPE, assert_same, batch, loaded_model, one_torch_thread, perturbed_params
from shared.checkpoint import load_checkpoint
from shared.params import is_buffer
from makemore.registry import get_backend
from shared.spec import conv_spec, get_spec
from shared.stream import sampling_uniforms
from shared.config import TrainConfig
from shared.data import Dataset
from makemore.trainer import train

TOL = {"float64": {"out": 1e-10, "grad": 1e-10}, "float32": {"out": 1e-5, "grad": 1e-4}}

pytestmark = pytest.mark.skipif(not PAIRS, reason="parity needs two installed backends")


def layer_name(spec, k: int) -> str:
    return f"layer {k} ({spec.layers[k].kind})"


@pytest.fixture(params=PAIRS, ids=["-".join(p) for p in PAIRS])
def pair(request):
    return request.param


# Each backend's results are computed once per case and shared by every pair it is in (JAX
# compiles per model, so this halves the suite's time with three backends).
_CACHE: dict = {}


def cached(key, fn):
    if key not in _CACHE:
        _CACHE[key] = fn()
    return _CACHE[key]


def _layer_outputs(name, preset, dtype):
    spec = get_spec(preset, dtype=dtype)
    B, model = loaded_model(name, spec, perturbed_params(spec))
    X, _ = batch(spec)
    train_outs = B.layer_outputs(model, X, train=True)     # batch stats; running stats move
    eval_outs = B.layer_outputs(model, X, train=False)     # the moved running stats
    return spec, train_outs, eval_outs, B.forward(model, X, train=False)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("preset", ["mlp", "wavenet", "wavenet-gated"])
def test_every_layer_output(pair, preset, dtype):
    res = {n: cached(("outputs", n, preset, dtype), lambda: _layer_outputs(n, preset, dtype)) for n in pair}
    a, b = (res[n] for n in pair)
    spec = a[0]
    for mode, i in (("train", 1), ("eval", 2)):
        assert len(a[i]) == len(b[i]) == len(spec.layers), f"{mode}-mode layer_outputs: one per layer"
        for k in range(len(spec.layers)):
            assert_same(a[i][k], b[i][k], f"{layer_name(spec, k)} output, {dtype}, {mode} mode",
                        TOL[dtype]["out"], pair)
    for n in pair:
        assert res[n][3].dtype == np.dtype(dtype), f"{n} returned {res[n][3].dtype} logits for {dtype}"
    assert_same(a[3], b[3], f"eval-mode logits, {dtype}", TOL[dtype]["out"], pair)


def _loss_and_grads(name, preset, convention, dtype):
    spec = get_spec(preset, dtype=dtype, bn_convention=convention)
    p = perturbed_params(spec, seed=1)
    B, model = loaded_model(name, spec, p)
    loss, grads = B.loss_and_grads(model, *batch(spec, seed=1))
    return p, loss, grads, B.export_params(model)


# every convention in float64 (2-D BatchNorm in mlp, 3-D in wavenet); float32 with the default one
GRAD_CASES = [(pr, c, "float64") for pr in ("mlp", "wavenet") for c in ("lecture", "torch", "flax")] + \
             [(pr, "lecture", "float32") for pr in ("mlp", "wavenet")] + [("wavenet", "flax", "float32")] + \
             [("wavenet-gated", "lecture", "float64"), ("wavenet-gated", "lecture", "float32")]


@pytest.mark.parametrize("preset,convention,dtype", GRAD_CASES)
def test_loss_gradients_and_running_stats(pair, preset, convention, dtype):
    res = {n: cached(("grads", n, preset, convention, dtype),
                     lambda: _loss_and_grads(n, preset, convention, dtype)) for n in pair}
    a, b = pair
    p = res[a][0]
    for n in pair:
        assert isinstance(res[n][1], float), f"{n}: loss is {type(res[n][1]).__name__}, not float"
    tol = TOL[dtype]
    what = f"{preset}/{convention}/{dtype}"
    assert_same(res[a][1], res[b][1], f"loss ({what})", tol["out"], pair)
    assert set(res[a][2]) == set(res[b][2]) == {k for k in p if not is_buffer(k)}
    for k in res[a][2]:
        assert res[a][2][k].dtype == res[b][2][k].dtype == np.dtype(dtype), f"gradient {k} dtype"
        assert_same(res[a][2][k], res[b][2][k], f"gradient of {k} ({what})", tol["grad"], pair)
    # one train-mode forward moved the running stats; everything else is unchanged
    for k in p:
        assert_same(res[a][3][k], res[b][3][k], f"{k} after loss_and_grads ({what})", tol["out"], pair)
        if is_buffer(k):
            for n in pair:
                assert not np.array_equal(res[n][3][k], p[k]), f"{n}: {k} not updated in train mode"


def _one_step(name, dtype):
    spec = get_spec("wavenet", dtype=dtype)
    p = perturbed_params(spec, seed=2)
    B, model = loaded_model(name, spec, p)
    B.train_step(model, B.Optimizer(model, TrainConfig(steps=10)), *batch(spec, seed=2))
    return B.export_params(model)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_one_sgd_step_updates_params_and_running_stats_alike(pair, dtype):
    after = {n: cached(("step", n, dtype), lambda: _one_step(n, dtype)) for n in pair}
    for k in after[pair[0]]:
        assert_same(after[pair[0]][k], after[pair[1]][k], f"{k} after one train_step ({dtype})",
                    TOL[dtype]["out"], pair)


@pytest.mark.parametrize("dtype,steps,rtol", [("float64", 200, 1e-10), ("float32", 50, 1e-4)])
def test_sgd_trajectory(pair, data8, dtype, steps, rtol):
    # the lr drops at step steps//2, so both branches of the schedule are exercised
    spec = get_spec("wavenet-22k", dtype=dtype)
    cfg = TrainConfig(steps=steps, lr_decay_step=steps // 2, seed=5)
    a, b = (cached(("trajectory", n, dtype), lambda: train(n, spec, cfg, data8, evaluate=False, n_samples=0))
            for n in pair)
    for i in range(steps):   # the first step that diverges is the one to report
        assert_same(a.losses[i], b.losses[i], f"training loss at step {i} ({dtype})", rtol, pair)
    for k in a.params:
        assert_same(a.params[k], b.params[k], f"{k} after {steps} steps ({dtype})",
                    rtol if dtype == "float64" else 1e-3, pair)


def _conv_trajectory(name, data8):
    # the conv model of wavenet-22k (as test_sgd_trajectory) trained on whole names (issue 14),
    # names of 4 to 7 letters only: batches of 8 names have 5 to 8 targets (ragged masks) and
    # JAX compiles one padded length (impl_jax pads L to a multiple of 4)
    tr = [w for w in data8.words[0] if 4 <= len(w) <= 7]
    data = Dataset(data8.vocab, 8, data8.train, data8.val, data8.test, (tr, *data8.words[1:]))
    cfg = TrainConfig(steps=300, batch_size=8, lr_decay_step=150, seed=6)
    with one_torch_thread():
        return train(name, conv_spec(get_spec("wavenet-22k", dtype="float64")), cfg, data,
                     evaluate=False, n_samples=0)


def test_conv_sgd_trajectory_on_whole_names(pair, data8):
    a, b = (cached(("conv-trajectory", n), lambda: _conv_trajectory(n, data8)) for n in pair)
    for i in range(300):
        assert_same(a.losses[i], b.losses[i], f"conv loss at step {i} (float64)", 1e-10, pair)
    for k in a.params:
        assert_same(a.params[k], b.params[k], f"conv {k} after 300 steps (float64)", 1e-10, pair)


def _recipe_run(name, dtype, steps, data, folder):
    spec = get_spec("wavenet-22k", dtype=dtype)
    cfg = TrainConfig(steps=steps, warmup=steps // 10, seed=5, **RECIPE)   # AdamW, warm-up + cosine, dropout
    res = train(name, spec, cfg, data, out_dir=folder, checkpoint_every=0, evaluate=False, n_samples=0)
    return res, load_checkpoint(folder / "checkpoint.safetensors")[1]["state"]


@pytest.mark.parametrize("dtype,steps,rtol", [("float64", 300, 1e-10), ("float32", 50, 1e-4)])
def test_adamw_cosine_dropout_trajectory(pair, data8, tmp_path_factory, dtype, steps, rtol):
    # the same masks (shared.stream.DropoutStream), the same schedule, the same AdamW convention
    (a, sa), (b, sb) = (cached(("recipe", n, dtype), lambda: _recipe_run(n, dtype, steps, data8,
                                                                         tmp_path_factory.mktemp(n)))
                        for n in pair)
    for i in range(steps):   # the first step that diverges is the one to report
        assert_same(a.losses[i], b.losses[i], f"AdamW/cosine/dropout loss at step {i} ({dtype})", rtol, pair)
    for k in a.params:
        assert_same(a.params[k], b.params[k], f"{k} after {steps} AdamW steps ({dtype})",
                    rtol if dtype == "float64" else 1e-3, pair)
    assert list(sa) == list(sb) and int(sa["opt.t"][0]) == steps
    for k in sa:   # the optimizer's moments, in canonical form, through the checkpoint
        if k.startswith("opt.exp_avg"):
            assert_same(sa[k], sb[k], f"{k[4:]} after {steps} steps ({dtype})",
                        rtol if dtype == "float64" else 1e-3, pair)


def test_checkpoint_from_one_backend_loads_into_the_other(pair, data8, tmp_path):
    spec = get_spec("wavenet-22k", dtype="float32")
    cfg = TrainConfig(steps=40, seed=9)
    X = data8.val[0][:64]
    u = sampling_uniforms(9, 10)
    for src, dst in (pair, pair[::-1]):
        res = train(src, spec, cfg, data8, out_dir=tmp_path / src, evaluate=False, n_samples=10)
        params, md = load_checkpoint(tmp_path / src / "checkpoint.safetensors")
        assert md["backend"] == src
        S = get_backend(src)
        D, model = loaded_model(dst, md["spec"], params)
        assert_same(D.forward(model, X), S.forward(res.model, X),
                    f"eval logits of a {src} checkpoint loaded into {dst}", 1e-5, (dst, src))
        names = [data8.vocab.decode(t + [0]) for t in D.sample(model, u)]
        assert names == res.samples, f"{dst} samples {names} from the {src} checkpoint differ from {src}'s"
