"""Targets per second (issue 14): the conv model trained on whole names against the hierarchical
model trained on contexts, per backend, float32, the plain path.

- `wavenet` at each batch of --mm-batches (run it with `--mm-batches 32,256`: the lecture's 32,
  and 256, about as many targets per step as 32 names): k train_step calls on BatchStream
  contexts, one target each;
- `wavenet-conv` at 32 names: k sequence_train_step calls on NameBatchStream batches (about 228
  real targets per step, every position of every name at once).

One call runs the same k real minibatches (k = --mm-steps, else 20), so every shape is compiled by
the first call (JAX: one per padded length), which is timed apart as first_call_s. extra_info
records targets_per_call (the real targets of the k steps), steps_per_call and flops (the matmul
FLOPs of the k steps, shared.flops: padding included for the conv model): targets/s is
targets_per_call over the time of a call. Compare rows of one run (bench/README.md).
"""
import pytest

from shared.config import TrainConfig
from shared.flops import sequence_train_step_flops, train_step_flops
from shared.params import init_params
from makemore.registry import get_backend
from shared.stream import BatchStream, NameBatchStream, seed_streams

from benchlib import run_benchmark, spec_for

CONV_NAMES = 32   # names per conv step


def pytest_generate_tests(metafunc):
    # (preset, contexts or names a step): the hierarchical model at every --mm-batches batch size
    batches = [int(b) for b in metafunc.config.getoption("--mm-batches").split(",") if b]
    cases = [("wavenet", b) for b in batches] + [("wavenet-conv", CONV_NAMES)]
    metafunc.parametrize("case", cases, ids=[f"{p}-{b}" for p, b in cases])


def test_targets_per_second(benchmark, request, backend, case):
    preset, batch = case
    B = get_backend(backend)
    spec, data = spec_for(preset, "float32")
    k = request.config.getoption("--mm-steps") or 20
    model = B.build_model(spec)
    B.load_params(model, init_params(spec, seed_streams(42)[0]))
    opt = B.Optimizer(model, TrainConfig(steps=10 ** 9))  # lr stays 0.1
    if spec.convolutional:
        names = [data.vocab.encode(w) for w in data.words[0]]
        batches = [b for _, b in zip(range(k), NameBatchStream(42, names, batch, spec.block_size))]
        targets = int(sum(m.sum() for _, _, m in batches))
        flops = sum(sequence_train_step_flops(spec, batch, m.shape[1]) for _, _, m in batches)

        def fn():
            return [B.sequence_train_step(model, opt, X, Y, m) for X, Y, m in batches]
    else:
        Xtr, Ytr = data.train
        ix = BatchStream(42, len(Xtr), batch).take(k)
        Xs, Ys = Xtr[ix], Ytr[ix]
        targets, flops = k * batch, k * train_step_flops(spec, batch)

        def fn():
            return [B.train_step(model, opt, Xs[i], Ys[i]) for i in range(k)]
    run_benchmark(benchmark, request, fn, dict(
        kind="targets", backend=backend, path="plain", preset=preset, batch_size=batch, dtype="float32",
        steps_per_call=k, targets_per_call=targets, flops=flops))
