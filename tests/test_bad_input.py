"""Bad input on every installed backend and in the shared core: each is a clear error, never a
silent wrong answer, and never a lost or poisoned checkpoint."""
import json

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from shared.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from shared.data import DataError, Vocab, load_dataset, read_words
from shared.params import ParamError, init_params
from makemore.registry import get_backend
from shared.spec import LayerSpec, get_spec, mlp_spec
from shared.config import TrainConfig
from makemore.trainer import TrainingDiverged, train

from helpers import BACKENDS

VOCAB = Vocab(tuple(".abcdefghijklmnopqrstuvwxyz"))


@pytest.fixture(scope="module", params=BACKENDS)
def mlp64(request):
    B = get_backend(request.param)
    spec = get_spec("mlp", dtype="float64")
    model = B.build_model(spec)
    B.load_params(model, init_params(spec, 0))
    return B, model


@pytest.mark.parametrize("bad", [27, -1])
def test_targets_outside_the_vocab_raise_everywhere(mlp64, bad):
    B, model = mlp64
    X, Y = np.zeros((4, 3), np.int64), np.array([1, 2, 3, bad])
    opt = B.Optimizer(model, TrainConfig(steps=10))
    calls = {"train_step": lambda: B.train_step(model, opt, X, Y),
             "evaluate": lambda: B.evaluate(model, X, Y),
             "loss_and_grads": lambda: B.loss_and_grads(model, X, Y),
             "fast_train_steps": lambda: B.fast_train_steps(model, opt, X[None], Y[None])}
    for name, call in calls.items():
        with pytest.raises(ValueError, match=f"token id {bad} is outside the vocab"):
            call()


@pytest.mark.parametrize("batch", [1, 0])
def test_a_batch_too_small_for_batchnorm_changes_nothing(mlp64, batch):
    # train_step raises inside BatchNorm1d; the fast paths (fused steps with no layer objects in
    # numpy and torch) must raise the same before touching parameters, running stats or the schedule
    B, model = mlp64
    B.load_params(model, init_params(model.spec, 2))
    before = B.export_params(model)
    opt = B.Optimizer(model, TrainConfig(steps=10))
    X, Y = np.ones((2, batch, 3), np.int64), np.ones((2, batch), np.int64)
    msg = "BatchNorm1d.*at least 2 values per channel|needs at least 1 example"
    with pytest.raises(ValueError, match=msg):
        B.fast_train_steps(model, opt, X, Y)
    for call in (lambda: B.train_step(model, opt, X[0], Y[0]), lambda: B.loss_and_grads(model, X[0], Y[0]),
                 lambda: B.forward(model, X[0], train=True), lambda: B.layer_outputs(model, X[0], train=True)):
        with pytest.raises(ValueError, match=msg):   # every train-mode entry point, before any state moves
            call()
    assert opt.t == 0
    after = B.export_params(model)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    assert np.isfinite(B.evaluate(model, np.ones((4, 3), np.int64), np.ones(4, np.int64)))


@pytest.mark.parametrize("Y", [np.ones((4, 1), np.int64), np.ones(1, np.int64), np.ones(5, np.int64),
                               np.array([1, 2, 3, 27])])
def test_bad_targets_raise_everywhere_and_change_nothing(mlp64, Y):
    # numpy's fancy indexing and optax would broadcast a (B, 1) or (1,) Y into a wrong loss; and the
    # check must come before the train-mode forward, which would move the BatchNorm running stats
    B, model = mlp64
    X = np.arange(12).reshape(4, 3) % 27
    before = B.export_params(model)
    opt = B.Optimizer(model, TrainConfig(steps=10))
    for name, call in {"train_step": lambda: B.train_step(model, opt, X, Y),
                       "evaluate": lambda: B.evaluate(model, X, Y),
                       "loss_and_grads": lambda: B.loss_and_grads(model, X, Y)}.items():
        with pytest.raises(ValueError, match=r"targets have shape .*need one per example, shape \(4,\)"
                                             r"|token id 27 is outside the vocab"):
            call()
        after = B.export_params(model)
        for k in before:
            np.testing.assert_array_equal(after[k], before[k], err_msg=f"{name} changed {k}")


def test_context_length_is_checked(mlp64):
    B, model = mlp64
    with pytest.raises(ValueError, match=r"contexts must have shape \(B, 3\).*\(4, 6\)"):
        B.forward(model, np.zeros((4, 6), np.int64))


def test_any_lr_pair_is_exact_after_the_decay(mlp64):
    # lr_final is used as given (0.07 -> 0.03 has no exact float scale; an earlier JAX version
    # refused it): one step after the decay moves every parameter by exactly 0.03 * grad.
    B, model = mlp64
    p = init_params(model.spec, 1)
    B.load_params(model, p)
    X, Y = np.random.default_rng(0).integers(0, 27, (2, 32, 3)), np.random.default_rng(1).integers(0, 27, (2, 32))
    opt = B.Optimizer(model, TrainConfig(steps=2, lr=0.07, lr_final=0.03, lr_decay_step=1))
    B.train_step(model, opt, X[0], Y[0])
    before = B.export_params(model)
    _, g = B.loss_and_grads(model, X[1], Y[1])
    B.load_params(model, before)
    B.train_step(model, opt, X[1], Y[1])
    after = B.export_params(model)
    for k in g:
        np.testing.assert_allclose(after[k], before[k] - 0.03 * g[k], rtol=1e-12, atol=1e-15, err_msg=k)


def test_bad_learning_rates_are_rejected():
    for lr in (float("nan"), float("inf"), -0.1):
        with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
            TrainConfig(lr=lr)


def test_batch_size_one_names_the_flag(data3):
    with pytest.raises(ValueError, match="--batch-size 2 or more"):
        train(BACKENDS[0], get_spec("mlp"), TrainConfig(steps=1, batch_size=1), data3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_overflowing_update_never_reaches_a_checkpoint(backend, data3, tmp_path, monkeypatch):
    # The loss is computed before the update: a finite loss can come with an update that
    # overflows. Step 3 returns a finite loss but leaves an inf weight behind; the checkpoint of
    # step 2 must stay the last one, and the run must stop naming the tensor.
    B = get_backend(backend)
    real, calls = B.train_step, {"n": 0}

    def overflowing(model, opt, X, Y):
        loss = real(model, opt, X, Y)
        calls["n"] += 1
        if calls["n"] == 3:
            p = B.export_params(model)
            p["2.weight"][0, 0] = np.inf
            B.load_params(model, p)
        return loss
    monkeypatch.setattr(B, "train_step", overflowing)
    with pytest.raises(TrainingDiverged, match="parameter '2.weight' is not finite") as e:
        train(backend, get_spec("mlp"), TrainConfig(steps=6), data3, out_dir=tmp_path, checkpoint_every=1)
    params, md = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert md["step"] == 2 and e.value.checkpoint == tmp_path / "checkpoint.safetensors"
    assert all(np.isfinite(v).all() for v in params.values())


def test_nonfinite_checkpoints_are_neither_saved_nor_loaded(tmp_path):
    spec = get_spec("mlp")
    p = init_params(spec, 0)
    p["5.bias"][3] = np.nan
    with pytest.raises(ParamError, match="'5.bias' holds NaN"):
        save_checkpoint(tmp_path / "c.safetensors", p, spec, VOCAB)
    assert not (tmp_path / "c.safetensors").exists()
    good = save_checkpoint(tmp_path / "g.safetensors", init_params(spec, 0), spec, VOCAB)
    with safe_open(str(good), "np") as f:
        md = f.metadata()
    save_file(p, str(tmp_path / "n.safetensors"), metadata=md)
    with pytest.raises(CheckpointError, match="'5.bias' holds NaN or inf"):
        load_checkpoint(tmp_path / "n.safetensors")


def _tampered(tmp_path, **changes):
    spec = get_spec("mlp")
    good = save_checkpoint(tmp_path / "g.safetensors", init_params(spec, 0), spec, VOCAB)
    with safe_open(str(good), "np") as f:
        md = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    md.update(changes)
    out = tmp_path / "t.safetensors"
    save_file(tensors, str(out), metadata=md)
    return out


@pytest.mark.parametrize("changes, needle", [
    ({"spec": "{broken"}, "field 'spec' is malformed"),
    ({"spec": "[1, 2]"}, "field 'spec' is malformed"),
    ({"vocab": json.dumps(".abcdefghijklmnopqrstuvwxyzABC")}, "vocab has 30 characters"),
    ({"vocab": json.dumps("abcdefghijklmnopqrstuvwxyz.")}, "must start with '.'"),
    ({"dtype": "float64"}, "metadata dtype 'float64' disagrees"),
    ({"format": "makemore-ports/99"}, "format 'makemore-ports/99'"),
])
def test_tampered_metadata_is_a_clear_error(tmp_path, changes, needle):
    with pytest.raises(CheckpointError, match=None) as e:
        load_checkpoint(_tampered(tmp_path, **changes))
    assert needle in str(e.value) and "t.safetensors" in str(e.value)


def test_inconsistent_specs_are_refused():
    s = get_spec("mlp")
    with pytest.raises(ValueError, match="first layer must be an embedding of vocab_size 30"):
        s.with_(vocab_size=30)
    with pytest.raises(ValueError, match="does not divide"):
        s.with_(layers=(s.layers[0], LayerSpec("flatten", n=0)) + s.layers[2:])
    with pytest.raises(ValueError, match="leave 3 positions"):
        mlp_spec(block_size=3).with_(layers=(s.layers[0], LayerSpec("flatten", n=1)) + s.layers[2:])


def test_bom_is_not_a_character(tmp_path):
    p = tmp_path / "bom.txt"
    p.write_bytes("\ufeffemma\nava\n".encode("utf-8"))
    assert read_words(p) == ["emma", "ava"]


def test_too_few_names_for_the_split(tmp_path):
    p = tmp_path / "five.txt"
    p.write_text("emma\nava\nmia\nzoe\nlia\n")
    with pytest.raises(DataError, match="5 names: too few for the 80/10/10"):
        load_dataset(3, p)
