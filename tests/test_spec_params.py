"""Presets, canonical parameters, initialisation, batch, dropout and sampling streams."""
import numpy as np
import pytest

from shared.params import ParamError, check_params, init_params, is_decayed, num_params, param_shapes
from shared.spec import LayerSpec, ModelSpec, get_spec
from shared.stream import (BatchStream, DropoutStream, dropout_shapes, sample_tokens, sampling_uniforms,
                           seed_streams)
from shared.config import TrainConfig, lr_at


@pytest.mark.parametrize("preset, count", [("mlp", 12097), ("mlp-8", 22097),
                                           ("wavenet-22k", 22397), ("wavenet", 76579)])
def test_param_counts_match_the_lecture(preset, count):
    assert num_params(get_spec(preset)) == count


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'gpt'.*wavenet"):
        get_spec("gpt")


def test_bad_spec_fields():
    with pytest.raises(ValueError, match="dtype"):
        get_spec("mlp", dtype="float16")
    with pytest.raises(ValueError, match="convention"):
        get_spec("mlp", bn_convention="keras")


def test_spec_json_round_trip():
    s = get_spec("wavenet", dtype="float64", bn_convention="flax")
    assert ModelSpec.from_json(s.to_json()) == s
    assert s.with_(bn_momentum=0.2).batchnorm.momentum == 0.2


def test_wavenet_layout():
    s = get_spec("wavenet")
    kinds = [l.kind for l in s.layers]
    assert kinds == ["embedding"] + ["flatten", "linear", "batchnorm", "tanh"] * 3 + ["linear"]
    shapes = param_shapes(s)
    assert shapes["0.weight"] == (27, 24) and shapes["2.weight"] == (48, 128)
    assert shapes["6.weight"] == (256, 128) and shapes["13.weight"] == (128, 27)
    assert shapes["3.running_var"] == (128,)


def test_init_follows_the_lecture():
    s = get_spec("wavenet", dtype="float64")
    p = init_params(s, 0)
    assert all(v.dtype == np.float64 for v in p.values())
    assert abs(p["0.weight"].std() - 1) < 0.1                       # embedding: randn
    assert abs(p["6.weight"].std() - 1 / np.sqrt(256)) < 0.005      # Linear: randn / sqrt(fan_in)
    assert abs(p["13.weight"].std() - 0.1 / np.sqrt(128)) < 0.001   # last layer x 0.1
    assert not p["13.bias"].any() and (p["3.gamma"] == 1).all() and not p["3.beta"].any()
    assert not p["3.running_mean"].any() and (p["3.running_var"] == 1).all()
    assert "2.bias" not in p                                        # no bias before BatchNorm
    q = init_params(s, 0)
    assert all(np.array_equal(p[k], q[k]) for k in p)
    assert init_params(get_spec("wavenet"), 0)["0.weight"].dtype == np.float32


def test_check_params_names_the_tensor():
    s = get_spec("mlp")
    p = init_params(s, 0)
    check_params(s, p)
    bad = dict(p)
    bad["2.weight"] = bad["2.weight"][:, :5]
    with pytest.raises(ParamError, match=r"'2.weight' has shape \(30, 5\)"):
        check_params(s, bad)
    bad = dict(p, **{"9.weight": p["2.weight"]})
    with pytest.raises(ParamError, match="unexpected tensor '9.weight'"):
        check_params(s, bad)
    bad = {k: v for k, v in p.items() if k != "3.gamma"}
    with pytest.raises(ParamError, match="'3.gamma' is missing"):
        check_params(s, bad)
    bad = dict(p, **{"3.beta": p["3.beta"].astype(np.float64)})
    with pytest.raises(ParamError, match="'3.beta' has dtype float64"):
        check_params(s, bad)


def test_batch_stream_is_deterministic_and_in_range():
    a = BatchStream(7, 100, 32).take(3000)
    b = np.array([x for _, x in zip(range(3000), BatchStream(7, 100, 32))])
    assert a.shape == (3000, 32) and a.dtype == np.int64
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0 and a.max() < 100
    assert not np.array_equal(a, BatchStream(8, 100, 32).take(3000))


def test_the_dropout_stream_is_random_access_and_keeps_one_minus_p():
    spec = get_spec("wavenet")
    assert dropout_shapes(spec, 32) == [(32, 4, 128), (32, 2, 128), (32, 128)]
    assert dropout_shapes(get_spec("mlp"), 5) == [(5, 200)]
    s = DropoutStream(7, 0.25, dropout_shapes(spec, 32), "float32")
    a = s.masks(123)
    for m, want in zip(a, dropout_shapes(spec, 32)):
        assert m.shape == want and m.dtype == np.float32
        assert set(np.unique(m)) == {np.float32(0), np.float32(1 / 0.75)}
    keep = np.concatenate([(m > 0).ravel() for m in a]).mean()
    assert abs(keep - 0.75) < 0.02
    for m, b in zip(a, DropoutStream(7, 0.25, dropout_shapes(spec, 32), "float32").masks(123)):
        np.testing.assert_array_equal(m, b)                     # a function of (seed, step) alone
    for m, t in zip(a, s.take(120, 5)):
        assert t.shape == (5, *m.shape)
        np.testing.assert_array_equal(t[3], m)                  # take(i, k) stacks steps i..i+k-1
    assert not np.array_equal(a[0], s.masks(124)[0])
    assert not np.array_equal(a[0], DropoutStream(8, 0.25, dropout_shapes(spec, 32), "float32").masks(123)[0])
    with pytest.raises(ValueError, match="0 < p < 1"):
        DropoutStream(7, 0.0, dropout_shapes(spec, 32), "float32")


def test_the_dropout_stream_leaves_the_other_streams_unchanged():
    # seed_streams spawns 4 children now; the first three are those of spawn(3): earlier runs repeat
    old = [np.random.default_rng(c) for c in np.random.SeedSequence(42).spawn(3)]
    for new, o in zip(seed_streams(42)[:3], old):
        np.testing.assert_array_equal(new.random(5), o.random(5))


def test_weight_decay_applies_to_weight_matrices_and_the_embedding_only():
    decayed = [k for k in param_shapes(get_spec("wavenet"), buffers=False) if is_decayed(k)]
    assert decayed == ["0.weight", "2.weight", "6.weight", "10.weight", "13.weight"]


def test_cosine_schedule_with_warmup():
    cfg = TrainConfig(steps=110, lr=0.1, lr_final=0.01, schedule="cosine", warmup=10)
    assert [lr_at(cfg, t) for t in (0, 5, 10)] == [0.0, 0.05, 0.1]
    assert lr_at(cfg, 60) == pytest.approx(0.055, rel=1e-15)    # half-way down the cosine
    assert lr_at(cfg, 110) == lr_at(cfg, 10_000) == pytest.approx(0.01, rel=1e-15)
    assert lr_at(TrainConfig(steps=4, schedule="cosine"), 0) == 0.1   # no warm-up: the peak first
    with pytest.raises(ValueError, match="needs schedule 'cosine'"):
        TrainConfig(warmup=10)
    with pytest.raises(ValueError, match=r"warmup must be 0..steps \(300\), got 2000; give a shorter --warmup") as e:
        TrainConfig(steps=300, schedule="cosine", warmup=2000)
    assert "cosine" not in str(e.value)          # the schedule is not what is wrong


def test_lr_schedule():
    cfg = TrainConfig(steps=200_000)
    assert cfg.decay_step == 150_000
    assert lr_at(cfg, 149_999) == 0.1 and lr_at(cfg, 150_000) == 0.01
    assert TrainConfig(steps=100, lr_decay_step=10).decay_step == 10


def test_sample_tokens_inverse_cdf():
    # probabilities 0.25/0.75 over tokens {0, 1}: u < 0.25 -> 0 (stop), else 1.
    logits_fn = lambda ctx: np.tile(np.log([0.25, 0.75]), (len(ctx), 1))
    u = np.array([[0.5, 0.9, 0.1, 0.99], [0.2, 0.9, 0.9, 0.9]])
    assert sample_tokens(logits_fn, 2, 3, u) == [[1, 1], []]
    assert sampling_uniforms(3, 4, 10).shape == (4, 10)


# ---- shared.threads: the thread policy of the numpy and torch steps ----

def test_step_threads_default_and_override(monkeypatch):
    from shared.threads import step_threads
    monkeypatch.delenv("MAKEMORE_THREADS", raising=False)
    assert step_threads(32) == 1 and step_threads(64) == 1     # one thread at batch <= 64
    assert step_threads(65) is None and step_threads(4096) is None  # the library's own setting
    monkeypatch.setenv("MAKEMORE_THREADS", "2")
    assert step_threads(32) == 2 and step_threads(4096) == 2
    for bad in ("two", "0", "-1", "1.5"):
        monkeypatch.setenv("MAKEMORE_THREADS", bad)
        with pytest.raises(ValueError, match="MAKEMORE_THREADS=.*positive number of threads"):
            step_threads(32)


def test_check_train_batch():
    spec = get_spec("wavenet")
    spec.check_train_batch(2)                       # the last BatchNorm gets 2 x 1 position
    for bad in (1, 0, -3):
        with pytest.raises(ValueError, match=f"batch size {bad}"):
            spec.check_train_batch(bad)
    with pytest.raises(ValueError, match=r"BatchNorm1d \(layer 11\).*would get 1"):
        spec.check_train_batch(1)
    # a BatchNorm before the last flatten sees batch x positions: one example of 4 positions is enough
    early = ModelSpec("early", 27, 8, 4, 8, (
        LayerSpec("embedding", num=27, dim=4), LayerSpec("flatten", n=2),
        LayerSpec("linear", fan_in=8, fan_out=8, bias=False), LayerSpec("batchnorm", dim=8),
        LayerSpec("flatten", n=4), LayerSpec("linear", fan_in=32, fan_out=27)))
    early.check_train_batch(1)


def test_busy_warning_only_when_asked_for_threads_on_a_busy_machine(monkeypatch):
    import os
    from shared import threads
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, "getloadavg", lambda: (3.2, 3.0, 2.0))
    monkeypatch.delenv("MAKEMORE_THREADS", raising=False)
    assert threads.busy_warning(32) is None                     # the default: one thread
    monkeypatch.setenv("MAKEMORE_THREADS", "2")
    w = threads.busy_warning(32)
    assert "2 threads" in w and "set MAKEMORE_THREADS=1" in w and "load 3.2 on 2 cores" in w
    monkeypatch.delenv("MAKEMORE_THREADS")
    w = threads.busy_warning(256)           # the library's own setting: every core, slower when busy
    assert "numpy would train on 2 threads (batch 256)" in w and "set MAKEMORE_THREADS=1" in w
    monkeypatch.setenv("MAKEMORE_THREADS", "1")
    assert threads.busy_warning(256) is None and threads.busy_warning(256, "torch") is None
    monkeypatch.delenv("MAKEMORE_THREADS")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    w = threads.busy_warning(32, "jax")                          # XLA uses every core
    assert "jax would train on 2 threads" in w and "MAKEMORE_THREADS=1" in w
    monkeypatch.setenv("XLA_FLAGS", threads.xla_flags_for(32))   # as makemore train sets it
    assert threads.busy_warning(32, "jax") is None
    assert threads.busy_warning(32, "torch") is None
    monkeypatch.setattr(os, "getloadavg", lambda: (0.4, 0.5, 0.5))
    assert threads.busy_warning(32) is None                      # quiet machine


def test_xla_flags_for_one_thread_where_numpy_and_torch_take_one(monkeypatch):
    from shared import threads
    monkeypatch.delenv("MAKEMORE_THREADS", raising=False)
    one = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"   # XLA's flag names
    assert threads.xla_flags_for(32) == one
    assert threads.xla_flags_for(32, "--xla_dump_to=/tmp/x") == "--xla_dump_to=/tmp/x " + one
    assert threads.xla_flags_for(256, "--a") == "--a"                            # large batches: every core
    assert threads.xla_flags_for(32, "intra_op_parallelism_threads=2") == "intra_op_parallelism_threads=2"
    monkeypatch.setenv("MAKEMORE_THREADS", "2")
    assert threads.xla_flags_for(32) == ""                                      # asked for two


def test_spec_layers_are_always_a_tuple():
    import dataclasses
    spec = dataclasses.replace(get_spec("mlp"), layers=list(get_spec("mlp").layers))
    assert isinstance(spec.layers, tuple) and hash(spec) == hash(get_spec("mlp"))


def test_sampling_no_names_is_an_empty_list_on_every_backend():
    from helpers import BACKENDS
    from makemore.registry import get_backend
    for b in BACKENDS:
        B = get_backend(b)
        model = B.build_model(get_spec("mlp"))
        assert B.sample(model, sampling_uniforms(0, 0)) == [], b
