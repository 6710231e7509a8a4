"""`makemore evaluate`: a checkpoint's loss on a split, checked against the float64 oracle of the
lecture's model (tests/helpers.py), on every installed backend."""
import numpy as np
import pytest

from helpers import hierarchical_oracle
from makemore import cli
from makemore.registry import available_backends
from shared.checkpoint import load_checkpoint
from shared.data import load_dataset, read_words


@pytest.fixture(scope="module")
def run(tmp_path_factory, names_path):
    tmp = tmp_path_factory.mktemp("evaluate")
    tiny = tmp / "names.txt"      # 800 names: a quick split
    tiny.write_text("\n".join(read_words(names_path)[:800]) + "\n")
    out = tmp / "run"
    assert cli.main(["train", "--backend", "numpy", "--preset", "wavenet", "--steps", "30", "--data", str(tiny),
                     "--out", str(out), "--no-progress"]) == 0
    return out, tiny


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("split", ["val", "test"])
def test_evaluate_prints_the_oracles_loss(run, backend, split, capsys):
    out, tiny = run
    capsys.readouterr()
    assert cli.main(["evaluate", "--checkpoint", str(out), "--split", split, "--backend", backend,
                     "--data", str(tiny)]) == 0
    printed = capsys.readouterr().out
    params, md = load_checkpoint(out / "checkpoint.safetensors")
    X, Y = load_dataset(8, tiny).split(split)
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    logits, _ = hierarchical_oracle(md["spec"], p64, X)          # eval mode: running stats
    m = logits.max(1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(1, keepdims=True))
    want = -logp[np.arange(len(Y)), Y].mean()
    word, loss, value, rest = printed.split(maxsplit=3)
    assert (word, loss) == (split, "loss") and rest.startswith(f"({len(Y):,} examples"), printed
    assert abs(float(value) - want) <= 5.1e-5, (printed, want)     # printed to 4 decimals


def test_evaluate_refuses_another_vocabulary(run, tmp_path, capsys):
    out, _ = run
    other = tmp_path / "names.txt"
    other.write_text("abc\nabd\n" * 20)    # three letters: another vocabulary
    assert cli.main(["evaluate", "--checkpoint", str(out), "--backend", "numpy", "--data", str(other)]) == 2
    err = capsys.readouterr().err
    assert "another vocabulary" in err and "--data" in err and err.count("\n") == 1
