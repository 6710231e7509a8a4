"""names.txt reading, vocab, the lecture's split, and every bad-input path of the data layer."""
import hashlib
import io

import numpy as np
import pytest

from shared import data as D
from shared.checks import check_token_ids


def test_file_is_the_lecture_file(names_path):
    assert hashlib.sha256(names_path.read_bytes()).hexdigest() == D.NAMES_SHA256
    assert len(D.read_words(names_path)) == 32033


def test_split_sizes_and_first_word(data8):
    # docs/design.md test values: 182,625 / 22,655 / 22,866 examples with block_size 8, first word 'yuheng'.
    assert [len(data8.split(s)[0]) for s in ("train", "val", "test")] == [182625, 22655, 22866]
    assert data8.words[0][0] == "yuheng"
    assert data8.vocab.itos[0] == "." and "".join(data8.vocab.itos[1:]) == "abcdefghijklmnopqrstuvwxyz"


def test_examples_match_the_lecture_loop(data8):
    # The lecture's build_dataset, written as a plain Python loop, is the oracle for the vectorised one.
    stoi = data8.vocab.stoi
    X, Y = [], []
    for w in data8.words[1][:50]:
        ctx = [0] * 8
        for ch in w + ".":
            X.append(ctx)
            Y.append(stoi[ch])
            ctx = ctx[1:] + [stoi[ch]]
    Xv, Yv = D.build_dataset(data8.words[1][:50], 8, data8.vocab)
    np.testing.assert_array_equal(Xv, np.array(X))
    np.testing.assert_array_equal(Yv, np.array(Y))
    assert Xv.dtype == np.int64 and Yv.dtype == np.int64
    # first example of 'yuheng': all padding, target 'y'
    assert data8.train[0][0].tolist() == [0] * 8 and data8.vocab.itos[data8.train[1][0]] == "y"


def test_crlf_blank_lines_and_spaces_are_cleaned(tmp_path):
    p = tmp_path / "n.txt"
    p.write_bytes(b"emma\r\n\r\n  olivia \r\nava\n\n")
    assert D.read_words(p) == ["emma", "olivia", "ava"]


@pytest.mark.parametrize("content, needle", [
    (b"", "contains no names"),
    (b"\n\n  \n", "contains no names"),
    (b"emma\nol.ivia\n", ":2: name 'ol.ivia' contains '.'"),
    (b"emma\nmary ann\n", ":2: name 'mary ann' contains whitespace"),
    (b"emma\n\xff\xfe\n", "not UTF-8"),
])
def test_malformed_files_are_clear_errors(tmp_path, content, needle):
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    with pytest.raises(D.DataError, match=None) as e:
        D.read_words(p)
    assert needle in str(e.value)


def test_missing_and_unreadable_files(tmp_path, monkeypatch):
    with pytest.raises(D.DataError, match="does not exist.*--data"):
        D.find_names_file(tmp_path / "nope.txt")
    monkeypatch.setenv("MAKEMORE_DATA", str(tmp_path / "nope.txt"))
    with pytest.raises(D.DataError, match="MAKEMORE_DATA"):
        D.find_names_file()
    with pytest.raises(D.DataError, match="cannot read"):
        D.read_words(tmp_path)  # a folder, not a file


def test_lookup_order(tmp_path, monkeypatch, names_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAKEMORE_DATA", raising=False)
    with pytest.raises(D.DataError, match="no names file found"):
        D.find_names_file(download=False)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "names.txt").write_text("emma\n")
    assert D.find_names_file() == D.DEFAULT_PATH
    monkeypatch.setenv("MAKEMORE_DATA", str(names_path))
    assert D.find_names_file() == names_path
    explicit = tmp_path / "x.txt"
    explicit.write_text("ava\n")
    assert D.find_names_file(explicit) == explicit


class _Resp(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_download_failure_says_how_to_supply(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("network unreachable")
    monkeypatch.setattr(D.urllib.request, "urlopen", boom)
    with pytest.raises(D.DataError, match="could not download.*--data PATH"):
        D.download_names(tmp_path / "names.txt")
    assert not (tmp_path / "names.txt").exists()


def test_download_with_wrong_sha_is_not_saved(tmp_path, monkeypatch):
    monkeypatch.setattr(D.urllib.request, "urlopen", lambda *a, **k: _Resp(b"emma\nolivia\n"))
    with pytest.raises(D.DataError, match="sha256"):
        D.download_names(tmp_path / "names.txt")
    assert list(tmp_path.iterdir()) == []


def test_download_verifies_and_saves(tmp_path, monkeypatch, names_path):
    payload = names_path.read_bytes()
    monkeypatch.setattr(D.urllib.request, "urlopen", lambda *a, **k: _Resp(payload))
    p = D.download_names(tmp_path / "d" / "names.txt")
    assert p.read_bytes() == payload


def test_vocab_encode_decode_errors(data8):
    v = data8.vocab
    assert v.decode(v.encode("emma") + [0, 5]) == "emma"
    with pytest.raises(D.DataError, match=r"\['Z'\].*not in the vocabulary"):
        v.encode("emmaZ")
    with pytest.raises(D.DataError, match="outside the vocab"):
        v.decode([5, 27])


def test_check_token_ids():
    check_token_ids(np.array([[0, 26]]), 27)
    with pytest.raises(ValueError, match="token id 27 is outside the vocab"):
        check_token_ids(np.array([[0, 27]]), 27)
    with pytest.raises(ValueError, match="token id -1"):
        check_token_ids(np.array([[-1, 3]]), 27)
    with pytest.raises(ValueError, match="integers"):
        check_token_ids(np.array([[0.5]]), 27)


def test_a_file_with_characters_outside_names_txts_is_named_when_training(tmp_path, names_path, capsys):
    # one corrupted line (digits) in the real file still trains, on 28 characters, but is said
    from makemore import cli
    words = D.read_words(names_path)
    bad = tmp_path / "names.txt"
    bad.write_text("\n".join(words[:200] + ["r2d2"] + words[200:400]) + "\n")
    out = tmp_path / "run"
    assert cli.main(["train", "--backend", "numpy", "--preset", "mlp", "--steps", "5", "--data", str(bad),
                     "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    note = [l for l in err.splitlines() if "note:" in l]
    assert len(note) == 1 and "'2'" in note[0] and "'r2d2'" in note[0] and "(28 characters)" in note[0], err
    import json
    assert "'2'" in json.loads((out / "run.json").read_text())["data"]["note"]
    # the lecture's own file (and any file of its 27 characters) says nothing
    assert D.data_note(names_path, D.NAMES_SHA256, D.load_dataset(3, names_path)) is None
    ok = tmp_path / "ok.txt"
    ok.write_text("\n".join(words[:400]) + "\n")
    assert D.data_note(ok, "0" * 64, D.load_dataset(3, ok)) is None
