"""Whole-split evaluation (forward only, eval mode, the validation split) and sampling throughput
(names/s, eval-mode logits and the shared uniforms) per backend, float32."""
from shared.flops import forward_flops
from shared.params import init_params
from makemore.registry import get_backend
from shared.stream import sampling_uniforms, seed_streams

from benchlib import run_benchmark, spec_for


def _model(backend, preset):
    B = get_backend(backend)
    spec, data = spec_for(preset, "float32")
    model = B.build_model(spec)
    B.load_params(model, init_params(spec, seed_streams(42)[0]))
    return B, spec, data, model


def test_evaluate(benchmark, request, backend, eval_preset):
    B, spec, data, model = _model(backend, eval_preset)
    X, Y = data.val
    n = request.config.getoption("--mm-eval-examples")
    if n:
        X, Y = X[:n], Y[:n]
    run_benchmark(benchmark, request, lambda: B.evaluate(model, X, Y), dict(
        kind="evaluate", backend=backend, path="plain", preset=eval_preset, batch_size=len(X),
        dtype="float32", steps_per_call=1, flops=forward_flops(spec, len(X))))


def test_sample(benchmark, request, backend):
    B, spec, data, model = _model(backend, "wavenet")
    n = request.config.getoption("--mm-names")
    u = sampling_uniforms(42, n)
    run_benchmark(benchmark, request, lambda: B.sample(model, u), dict(
        kind="sample", backend=backend, path="plain", preset="wavenet", batch_size=n,
        dtype="float32", steps_per_call=1, names_per_call=n))
