"""safetensors checkpoints: round trip, atomic writes, and every way a checkpoint can be wrong."""
import numpy as np
import pytest
from safetensors.numpy import save_file

from shared.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from shared.data import Vocab
from shared.params import ParamError, init_params
from shared.spec import get_spec

VOCAB = Vocab(tuple(".abcdefghijklmnopqrstuvwxyz"))


@pytest.fixture
def saved(tmp_path):
    spec = get_spec("mlp", dtype="float64")
    params = init_params(spec, 3)
    path = save_checkpoint(tmp_path / "c.safetensors", params, spec, VOCAB, step=7, backend="numpy",
                           val_loss=2.5)
    return spec, params, path


def test_round_trip(saved):
    spec, params, path = saved
    loaded, md = load_checkpoint(path)
    assert list(loaded) == list(params) or set(loaded) == set(params)
    for k in params:
        np.testing.assert_array_equal(loaded[k], params[k])
        assert loaded[k].dtype == np.float64
    assert md["spec"] == spec and md["vocab"] == VOCAB
    assert md["step"] == 7 and md["backend"] == "numpy" and md["val_loss"] == 2.5
    assert [p.name for p in path.parent.iterdir()] == ["c.safetensors"]  # no temp file left behind


def test_failed_save_keeps_the_old_file(saved):
    spec, params, path = saved
    before = path.read_bytes()
    bad = dict(params, **{"2.weight": params["2.weight"][:3]})
    with pytest.raises(ParamError, match="2.weight"):
        save_checkpoint(path, bad, spec, VOCAB)
    assert path.read_bytes() == before


def test_truncated(saved, tmp_path):
    _, _, path = saved
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        load_checkpoint(cut)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.safetensors")
    p = tmp_path / "foreign.safetensors"
    save_file({"x": np.zeros(3)}, str(p))
    with pytest.raises(CheckpointError, match="not a makemore-ports checkpoint"):
        load_checkpoint(p)
    (tmp_path / "junk.safetensors").write_text("hello")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "junk.safetensors")


def test_wrong_preset_names_the_tensor(saved):
    _, _, path = saved
    with pytest.raises(CheckpointError, match="tensor '6.weight' is missing"):
        load_checkpoint(path, get_spec("wavenet", dtype="float64"))
    with pytest.raises(CheckpointError, match="'2.weight' has shape \\(30, 200\\).*\\(80, 200\\)"):
        load_checkpoint(path, get_spec("mlp-8", dtype="float64"))


def test_wrong_dtype_names_the_tensor(saved):
    _, _, path = saved
    with pytest.raises(CheckpointError, match="'0.weight' has dtype float64"):
        load_checkpoint(path, get_spec("mlp", dtype="float32"))


def test_tampered_tensor(saved, tmp_path):
    spec, params, path = saved
    from shared.checkpoint import read_metadata
    from safetensors import safe_open
    with safe_open(str(path), "np") as f:
        md = f.metadata()
    bad = dict(params)
    bad["3.running_var"] = np.ones(7)
    p = tmp_path / "t.safetensors"
    save_file(bad, str(p), metadata=md)
    with pytest.raises(CheckpointError, match="'3.running_var' has shape \\(7,\\)"):
        load_checkpoint(p)
    assert read_metadata(path)["step"] == 7
