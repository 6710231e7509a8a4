"""The dilated causal convolution WaveNet (issue 14; lecture Part 5 at 47:44; van den Oord et al.
2016): the `wavenet-conv` preset is the hierarchical `wavenet` computed at every position. Tested
for every installed backend against independent float64 oracles (helpers.py):

- same canonical parameters (a wavenet checkpoint loads into it and back);
- eval mode: the logits at every position of a name are the hierarchical model's for that
  position's 8-token context;
- train mode on whole names: BatchNorm1d weighs each node by the windows that use it, so one
  whole-sequence step is the hierarchical step on every window of the names (loss, gradients,
  running stats), and padding past a name's end changes nothing;
- the length-grouped name stream (shared.stream.NameBatchStream), the sequence_* entry points,
  their bad input, and `makemore train --preset wavenet-conv`.
"""
import json

import numpy as np
import pytest

from helpers import (BACKENDS, FAST_KWARGS, assert_same, hierarchical_oracle, loaded_model,
                     one_torch_thread, perturbed_params, tree_counts)
from makemore import cli
from makemore.trainer import train
from shared.checkpoint import load_checkpoint, save_checkpoint
from shared.config import TrainConfig
from shared.data import build_dataset, read_words
from shared.params import ParamError, init_params, num_params, param_shapes
from shared.spec import LayerSpec, ModelSpec, conv_spec, get_spec, window_counts
from shared.stream import NameBatchStream, name_batch, sample_tokens, sampling_uniforms

TOL = {"float64": 1e-12, "float32": 1e-5}         # logits, loss, running stats
GRAD_TOL = {"float64": 1e-10, "float32": 1e-4}


@pytest.fixture(autouse=True)
def _torch_one_thread():
    with one_torch_thread():   # small float64 steps: a second thread made them 5x slower here
        yield


def names_and_windows(data, n=12, start=0):
    """n real training names as one padded batch (X, Y, mask) and as the lecture's windows (Xw, Yw)."""
    words = data.words[0][start:start + n]
    X, Y, mask = name_batch([data.vocab.encode(w) for w in words], 8)
    return X, Y, mask, *build_dataset(words, 8, data.vocab)


def cross_entropy64(logits, Y):
    z = logits - logits.max(1, keepdims=True)
    return float(-(z[np.arange(len(Y)), Y] - np.log(np.exp(z).sum(1))).mean())


# ---- the spec ----

def test_wavenet_conv_is_wavenet_with_dilated_convolutions():
    h, c = get_spec("wavenet"), get_spec("wavenet-conv")
    assert [l.kind for l in c.layers] == ["embedding"] + ["conv", "batchnorm", "tanh"] * 3 + ["linear"]
    assert [(l.n, l.dilation, l.fan_in, l.fan_out, l.bias) for l in c.layers if l.kind == "conv"] == [
        (2, 1, 24, 128, False), (2, 2, 128, 128, False), (2, 4, 128, 128, False)]
    # a conv layer takes the index of the Linear it stands for: the names are wavenet's
    assert c.layer_ids() == (0, 2, 3, 4, 6, 7, 8, 10, 11, 12, 13)
    assert list(param_shapes(c).items()) == list(param_shapes(h).items())
    assert param_shapes(c)["2.weight"] == (48, 128) and num_params(c) == 76_579
    a, b = init_params(h, 7), init_params(c, 7)           # the same draws, the same arrays
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert c.convolutional and not h.convolutional
    assert ModelSpec.from_json(c.to_json()) == c
    assert [l.dilation for l in conv_spec(get_spec("wavenet-22k")).layers if l.kind == "conv"] == [1, 2, 4]
    assert get_spec("wavenet-conv", dtype="float64", bn_convention="flax").batchnorm.convention == "flax"


def test_bad_conv_specs_are_refused():
    emb = LayerSpec("embedding", num=27, dim=2)
    out = LayerSpec("linear", fan_in=3, fan_out=27)
    with pytest.raises(ValueError, match="reaches past the 4 positions"):
        ModelSpec("x", 27, 4, 2, 3, (emb, LayerSpec("conv", n=2, fan_in=2, fan_out=3, dilation=4), out))
    with pytest.raises(ValueError, match="dilation >= 1"):
        ModelSpec("x", 27, 4, 2, 3, (emb, LayerSpec("conv", n=2, fan_in=2, fan_out=3, dilation=0), out))
    with pytest.raises(ValueError, match="leave 3 positions"):
        ModelSpec("x", 27, 4, 2, 3, (emb, LayerSpec("conv", n=2, fan_in=2, fan_out=3, dilation=1), out))
    odd = ModelSpec("odd", 27, 2, 2, 4, (emb, LayerSpec("flatten", n=2), LayerSpec("tanh"),
                                         LayerSpec("linear", fan_in=4, fan_out=27)))
    with pytest.raises(ValueError, match="must be followed by a Linear"):
        conv_spec(odd)


@pytest.mark.parametrize("mask", [[[1]], [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], [[0, 1, 0, 1]]])
def test_window_counts_are_the_hierarchical_trees(mask):
    mask = np.array(mask, dtype=bool)
    got = [c for c in window_counts(get_spec("wavenet-conv"), mask) if c is not None]
    want = tree_counts(8, [1, 2, 4], mask)          # counted from the spans, independently
    assert len(got) == 3
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_window_counts_of_one_context_are_the_lectures_nodes():
    # one context: the conv computes 7, 5, 1 nodes; the hierarchical model uses 4, 2, 1 of them
    c = [c for c in window_counts(get_spec("wavenet-conv"), np.ones((1, 1), bool)) if c is not None]
    assert [x[0].tolist() for x in c] == [[1, 0, 1, 0, 1, 0, 1], [1, 0, 0, 0, 1], [1]]
    with pytest.raises(ValueError, match="needs a convolutional spec"):
        window_counts(get_spec("wavenet"), np.ones((1, 1), bool))


# ---- the name stream ----

def test_name_batch_by_hand():
    X, Y, mask = name_batch([[1, 2], [3]], 3)
    np.testing.assert_array_equal(X, [[0, 0, 0, 1, 2], [0, 0, 0, 3, 0]])
    np.testing.assert_array_equal(Y, [[1, 2, 0], [3, 0, 0]])
    np.testing.assert_array_equal(mask, [[True, True, True], [True, True, False]])
    assert X.dtype == Y.dtype == np.int64
    with pytest.raises(ValueError, match="at least one name"):
        name_batch([], 3)


def test_name_batch_holds_the_lectures_contexts(data8):
    X, Y, mask, Xw, Yw = names_and_windows(data8, n=40)
    rows, cols = np.nonzero(mask)       # name by name, position by position: build_dataset's order
    np.testing.assert_array_equal(np.stack([X[r, c:c + 8] for r, c in zip(rows, cols)]), Xw)
    np.testing.assert_array_equal(Y[mask], Yw)


def test_name_stream_is_deterministic_and_uses_every_name_once_an_epoch():
    names = [[1 + i % 26] * (1 + i % 7) for i in range(64)]
    it = NameBatchStream(3, names, batch_size=4, block_size=8, pool=4).indices()  # 4 pools an epoch
    epochs = [np.stack([next(it) for _ in range(16)]) for _ in range(2)]
    for e in epochs:
        assert sorted(e.ravel()) == list(range(64))
        lengths = np.array([len(names[i]) for i in e.ravel()]).reshape(4, 4, 4)   # pool, batch, name
        for pool in lengths:   # a pool sorted by length, cut into batches: their ranges do not overlap
            ranges = sorted((b.min(), b.max()) for b in pool)
            assert all(hi <= lo for (_, hi), (lo, _) in zip(ranges, ranges[1:])), pool
    assert not np.array_equal(epochs[0], epochs[1])
    again = NameBatchStream(3, names, 4, 8, pool=4).indices()
    np.testing.assert_array_equal(np.stack([next(again) for _ in range(32)]), np.concatenate(epochs))
    other = NameBatchStream(4, names, 4, 8, pool=4).indices()
    assert not np.array_equal(np.stack([next(other) for _ in range(16)]), epochs[0])
    X, Y, mask = next(iter(NameBatchStream(3, names, 4, 8, pool=4)))
    np.testing.assert_array_equal(mask.sum(1), [len(names[i]) + 1 for i in epochs[0][0]])
    with pytest.raises(ValueError, match="need names"):
        NameBatchStream(0, [], 4, 8)
    with pytest.raises(ValueError, match="at least one token"):
        NameBatchStream(0, [[1], []], 4, 8)


def test_name_stream_is_random_by_default_and_sorted_pools_pad_less(data8):
    names = [data8.vocab.encode(w) for w in data8.words[0]]

    def real_share(**kw):
        real = total = 0
        for _, (X, Y, mask) in zip(range(300), NameBatchStream(42, names, 32, 8, **kw)):
            assert X.shape == (32, mask.shape[1] + 7) and Y.shape == mask.shape
            real, total = real + mask.sum(), total + mask.size
        return real / total
    # random batches of 32 names (what training uses: sorted batches leak the length through
    # BatchNorm's batch statistics, shared/stream.py) are about a third padding ...
    assert 0.6 < real_share() < 0.75
    assert real_share(pool=32) > 0.96       # ... length-sorted pools of 32 batches under 4%


# ---- equivalence with the hierarchical model, every backend ----

@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_eval_logits_at_every_position_are_the_hierarchical_models(name, dtype, data8):
    h, c = get_spec("wavenet", dtype=dtype), get_spec("wavenet-conv", dtype=dtype)
    p = perturbed_params(h, 3)
    B, mc = loaded_model(name, c, p)                  # wavenet's parameters, as they are
    p64 = {k: v.astype(np.float64) for k, v in p.items()}
    X, Y, mask, Xw, Yw = names_and_windows(data8)
    seq = B.sequence_forward(mc, X)                   # eval mode: (B, L, vocab)
    assert seq.shape == (*mask.shape, 27) and seq.dtype == np.dtype(dtype)
    want, _ = hierarchical_oracle(h, p64, Xw)         # the hierarchical model on each context
    assert_same(seq[mask], want, f"conv logits at every position ({dtype})", TOL[dtype], (name, "oracle"))
    # the contract's (B, block_size) contexts: the last position, as the hierarchical model
    assert_same(B.forward(mc, Xw), want, f"conv logits on contexts ({dtype})", TOL[dtype], (name, "oracle"))
    assert B.evaluate(mc, Xw, Yw) == pytest.approx(cross_entropy64(want, Yw), rel=TOL[dtype])
    for k, v in B.export_params(mc).items():          # eval mode moved nothing
        np.testing.assert_array_equal(v, p[k], err_msg=k)
    if dtype == "float64":   # the hierarchical model's names
        u = sampling_uniforms(5, 8)
        assert B.sample(mc, u) == sample_tokens(lambda ctx: hierarchical_oracle(h, p64, ctx)[0], 8, 8, u)


@pytest.fixture(scope="module")
def batch12(data8):
    """12 training names (X, Y, mask) and their windows (Xw, Yw), shared by the tests below: one
    shape, so JAX compiles each function once for all of them."""
    return names_and_windows(data8, start=100)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("dtype,convention", [("float64", "lecture"), ("float64", "torch"),
                                              ("float64", "flax"), ("float32", "lecture")])
def test_train_mode_batchnorm_weighs_each_node_by_its_windows(name, dtype, convention, batch12):
    # the definition (docs/design.md): statistics of the hierarchical model on every window
    h, c = (get_spec(pr, dtype=dtype, bn_convention=convention) for pr in ("wavenet", "wavenet-conv"))
    p = perturbed_params(h, 4)
    B, mc = loaded_model(name, c, p)
    X, Y, mask, Xw, Yw = batch12
    what = f"{dtype}/{convention}"
    logits, stats = hierarchical_oracle(h, {k: v.astype(np.float64) for k, v in p.items()}, Xw,
                                        train=True, convention=convention)
    seq = B.sequence_forward(mc, X, train=True, mask=mask)
    assert_same(seq[mask], logits, f"train-mode logits ({what})", TOL[dtype], (name, "oracle"))
    after = B.export_params(mc)
    for k, v in stats.items():
        assert_same(after[k], v, f"{k} after a train-mode forward ({what})", TOL[dtype], (name, "oracle"))


@pytest.mark.parametrize("name", BACKENDS)
def test_a_whole_sequence_step_is_the_hierarchical_step_on_every_window(name, batch12):
    h, c = get_spec("wavenet", dtype="float64"), get_spec("wavenet-conv", dtype="float64")
    p = perturbed_params(h, 4)
    B, mc = loaded_model(name, c, p)
    X, Y, mask, Xw, Yw = batch12
    logits, stats = hierarchical_oracle(h, p, Xw, train=True)
    loss, grads = B.sequence_loss_and_grads(mc, X, Y, mask)
    assert isinstance(loss, float) and loss == pytest.approx(cross_entropy64(logits, Yw), rel=1e-12)
    # the hierarchical model's gradients on the windows: numpy's hand-written backward (checked
    # against finite differences in test_numpy.py, and against torch and JAX in test_parity.py)
    N, mh = loaded_model("numpy", h, p)
    want_loss, want = N.loss_and_grads(mh, Xw, Yw)
    assert loss == pytest.approx(want_loss, rel=1e-12)
    assert list(grads) == list(want)
    for k in want:
        assert grads[k].dtype == np.float64, k
        assert_same(grads[k], want[k], f"gradient of {k}", 1e-10, (f"{name} conv", "numpy hierarchical"))
    after = B.export_params(mc)
    for k, v in stats.items():
        assert_same(after[k], v, f"{k} after sequence_loss_and_grads", 1e-12, (name, "oracle"))


@pytest.mark.parametrize("name", BACKENDS)
def test_sequence_train_step_is_the_sgd_update(name, batch12):
    spec = get_spec("wavenet-conv", dtype="float64")
    p = perturbed_params(spec, 6)
    B, model = loaded_model(name, spec, p)
    X, Y, mask, _, _ = batch12
    loss, g = B.sequence_loss_and_grads(model, X, Y, mask)
    B.load_params(model, p)
    opt = B.Optimizer(model, TrainConfig(steps=10))
    assert B.sequence_train_step(model, opt, X, Y, mask) == pytest.approx(loss, rel=1e-12)
    after = B.export_params(model)
    for k in g:   # p.data += -lr * p.grad (lecture Part 5)
        np.testing.assert_allclose(after[k], p[k] - 0.1 * g[k], rtol=1e-12, atol=1e-15, err_msg=k)
    assert opt.t == 1


@pytest.mark.parametrize("name", BACKENDS)
def test_bad_sequences_raise_and_change_nothing(name):
    spec = get_spec("wavenet-conv", dtype="float64")
    p = perturbed_params(spec, 7)
    B, model = loaded_model(name, spec, p)
    opt = B.Optimizer(model, TrainConfig(steps=10))
    X, Y, mask = name_batch([[1, 2, 3], [4, 5]], 8)
    bad_x, bad_y = X.copy(), Y.copy()
    bad_x[0, 9], bad_y[1, 0] = 27, -1
    cases = [("token id 27 is outside the vocab", bad_x, Y, mask),
             ("token id -1 is outside the vocab", X, bad_y, mask),
             (r"targets have shape \(2, 3\)", X, Y[:, :3], mask),
             ("mask must be a bool array", X, Y, mask.astype(np.int64)),
             (r"mask must be a bool array of shape \(2, 4\)", X, Y, mask[:, :3]),
             (r"sequences must have shape \(B, L \+ 7\)", X[:, :5], Y[:, :1], mask[:, :1]),
             (r"1 real target\(s\)", X[:1, :8], Y[:1, :1], mask[:1, :1])]   # BatchNorm needs 2
    for msg, x, y, m in cases:
        for call in (lambda: B.sequence_train_step(model, opt, x, y, m),
                     lambda: B.sequence_loss_and_grads(model, x, y, m),
                     lambda: B.sequence_forward(model, x, train=True, mask=m) if y is Y else
                     B.sequence_loss_and_grads(model, x, y, m)):
            with pytest.raises(ValueError, match=msg):
                call()
    for k, v in B.export_params(model).items():
        np.testing.assert_array_equal(v, p[k], err_msg=k)
    assert opt.t == 0
    with pytest.raises(ValueError, match="no fast path"):
        B.fast_train_steps(model, opt, np.zeros((2, 4, 8), np.int64), np.zeros((2, 4), np.int64),
                           **FAST_KWARGS.get(name, {}))
    _, hier = loaded_model(name, get_spec("wavenet", dtype="float64"), p)
    with pytest.raises(ValueError, match="has no convolution"):
        B.sequence_forward(hier, X)


@pytest.mark.parametrize("name", BACKENDS)
def test_a_wavenet_checkpoint_loads_into_the_conv_model_and_back(name, tmp_path, data8, batch12):
    h, c = get_spec("wavenet"), get_spec("wavenet-conv")
    p = perturbed_params(h, 8)
    save_checkpoint(tmp_path / "wavenet.safetensors", p, h, data8.vocab, step=1, backend=name)
    params, md = load_checkpoint(tmp_path / "wavenet.safetensors")
    assert md["spec"] == h
    B, mc = loaded_model(name, c, params)
    out = B.export_params(mc)
    for k in p:
        np.testing.assert_array_equal(out[k], p[k], err_msg=k)
    save_checkpoint(tmp_path / "conv.safetensors", out, c, data8.vocab, step=1, backend=name)
    params, md = load_checkpoint(tmp_path / "conv.safetensors")
    assert md["spec"] == c
    _, mh = loaded_model(name, h, params)
    Xw = batch12[3]
    assert_same(B.forward(mc, Xw), B.forward(mh, Xw), "logits after the round trip", 1e-5,
                ("conv", "wavenet"))
    # checkpoints that do not fit: refused with the tensor named, the model unchanged
    with pytest.raises(ParamError, match="is missing"):
        B.load_params(mc, init_params(get_spec("mlp"), 0))
    with pytest.raises(ParamError, match=r"'0.weight' has shape \(27, 10\)"):
        B.load_params(mc, init_params(get_spec("wavenet-22k"), 0))
    for k, v in B.export_params(mc).items():
        np.testing.assert_array_equal(v, p[k], err_msg=k)


# ---- training: the driver and the command line ----

def test_training_on_whole_names_is_deterministic_and_learns(data8):
    cfg = TrainConfig(steps=40, batch_size=16, seed=3)
    a, b = (train("numpy", get_spec("wavenet-conv"), cfg, data8, evaluate=False, n_samples=2)
            for _ in range(2))
    np.testing.assert_array_equal(a.losses, b.losses)
    assert a.samples == b.samples
    assert abs(a.losses[0] - np.log(27)) < 0.1            # near-uniform logits at init (x0.1)
    assert a.losses[-10:].mean() < a.losses[:10].mean() - 0.3


def test_cli_trains_wavenet_conv_then_samples(tmp_path, names_path, capsys):
    tiny = tmp_path / "names.txt"            # 400 names: evaluation and the split stay quick
    tiny.write_text("\n".join(read_words(names_path)[:400]) + "\n")
    out = tmp_path / "run"
    args = ["train", "--backend", "numpy", "--preset", "wavenet-conv", "--steps", "30", "--batch-size",
            "8", "--data", str(tiny), "--out", str(out), "--no-progress"]
    assert cli.main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["preset"] == "wavenet-conv" and m["steps"] == 30 and np.isfinite(m["val_loss"])
    names = (out / "samples.txt").read_text().split()
    _, md = load_checkpoint(out / "checkpoint.safetensors")
    assert md["spec"].name == "wavenet-conv" and md["step"] == 30
    capsys.readouterr()
    assert cli.main(["sample", "--checkpoint", str(out / "checkpoint.safetensors"), "--backend", "numpy",
                     "-n", "20"]) == 0
    assert capsys.readouterr().out.split() == names
    # --fast runs the same whole-name step: the same losses, bitwise
    assert cli.main(args + ["--fast", "--out", str(tmp_path / "fast")]) == 0
    fast = json.loads((tmp_path / "fast" / "metrics.json").read_text())
    assert fast["fast"] is True and fast["loss"] == m["loss"] and len(fast["loss"]) == 30
    assert cli.main(args + ["--dropout", "0.1", "--out", str(tmp_path / "drop")]) == 2
    assert "does not support --dropout yet" in capsys.readouterr().err
    assert not (tmp_path / "drop").exists()


@pytest.mark.parametrize("name", BACKENDS)
def test_a_context_too_short_for_the_convolutions_is_refused(name):
    spec = get_spec("wavenet-conv")
    B, model = loaded_model(name, spec, init_params(spec, 0))
    with pytest.raises(ValueError, match=r"contexts must have shape \(B, 8\)"):
        B.forward(model, np.zeros((3, 7), np.int64))
    # the layer itself refuses, as FlattenConsecutive does: 2 positions cannot feed dilation 4
    conv = (model.layers if name == "jax" else model)[7]
    x = B.layer_outputs(model, np.zeros((3, 8), np.int64))[6][:, :2]       # (3, 2, 128)
    x = {"numpy": np.asarray, "torch": lambda a: __import__("torch").from_numpy(a),
         "jax": lambda a: __import__("jax").numpy.asarray(a)}[name](x)
    assert type(conv).__name__ == "CausalConv1d"
    with pytest.raises(ValueError, match="needs at least 5 positions, got 2"):
        conv(x)
