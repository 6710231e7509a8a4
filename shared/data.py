"""names.txt: finding it, reading it, the vocabulary and the lecture's train/val/test split.

Source: Karpathy, "Building makemore Part 2: MLP" (nn-zero-to-hero), the dataset cells of
`makemore_part2_mlp.ipynb` and `makemore_part5_cnn1.ipynb`: '.' is token 0 (start padding and end
marker), letters sorted from 1; `random.seed(42)`, one `random.shuffle`, 80/10/10 by words.
"""
from __future__ import annotations

import hashlib
import os
import random
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NAMES_URL = "https://raw.githubusercontent.com/karpathy/makemore/master/names.txt"
NAMES_SHA256 = "0a30b5557f192f32ab962680889aac5f6fda0f4cecf40a6d0b5694f58ea8cc4d"
DEFAULT_PATH = Path("data") / "names.txt"
SPECIAL = "."  # start padding and end marker, token 0


class DataError(ValueError):
    """The names file is missing, unreadable or malformed; the message says how to fix it."""


def _how_to_supply() -> str:
    return ("Supply the file with --data PATH, or set MAKEMORE_DATA=PATH, or copy names.txt to "
            f"{DEFAULT_PATH} (sha256 {NAMES_SHA256}).")


def download_names(dest: Path = DEFAULT_PATH, url: str = NAMES_URL, timeout: float = 30.0) -> Path:
    """Download names.txt to `dest`, verify its sha256 and write it atomically.

    Raises:
        DataError: the download failed or the bytes do not have the expected sha256 (nothing is
            left at `dest` then).
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            payload = r.read()
    except Exception as e:  # any network failure: say how to supply the file by hand
        raise DataError(f"could not download names.txt from {url}: {e}. {_how_to_supply()}") from e
    digest = hashlib.sha256(payload).hexdigest()
    if digest != NAMES_SHA256:
        raise DataError(f"downloaded names.txt has sha256 {digest}, expected {NAMES_SHA256}; "
                        f"not saved. {_how_to_supply()}")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, dest)
    return dest


def find_names_file(path: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Locate names.txt: explicit `path`, then $MAKEMORE_DATA, then data/names.txt, else download.

    Returns:
        Path of an existing file.
    Raises:
        DataError: an explicit path or $MAKEMORE_DATA names a missing file, or nothing was found
            and the download failed (or `download` is False).
    """
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise DataError(f"data file {p} does not exist. {_how_to_supply()}")
        return p
    env = os.environ.get("MAKEMORE_DATA")
    if env:
        p = Path(env)
        if not p.is_file():
            raise DataError(f"MAKEMORE_DATA={env} does not exist. {_how_to_supply()}")
        return p
    if DEFAULT_PATH.is_file():
        return DEFAULT_PATH
    if not download:
        raise DataError(f"no names file found. {_how_to_supply()}")
    return download_names(DEFAULT_PATH)


def read_words(path: str | os.PathLike) -> list[str]:
    """Read one name per line. CRLF endings, surrounding spaces and blank lines are cleaned away.

    Returns:
        list of names (str), in file order.
    Raises:
        DataError: the file is unreadable or not UTF-8, holds no names, a name contains the
            reserved token '.', or a name contains whitespace inside it (line number given).
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read data file {p}: {e}. {_how_to_supply()}") from e
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark is not a character of any name
    except UnicodeDecodeError as e:
        raise DataError(f"{p} is not UTF-8 text ({e}); names.txt holds one plain name per line") from e
    words = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        w = line.strip()
        if not w:
            continue
        if SPECIAL in w:
            raise DataError(f"{p}:{lineno}: name {w!r} contains '{SPECIAL}', the reserved start/end "
                            "token; remove it from the file")
        if any(c.isspace() for c in w):
            raise DataError(f"{p}:{lineno}: name {w!r} contains whitespace; put one name per line "
                            "with no spaces inside")
        words.append(w)
    if not words:
        raise DataError(f"{p} contains no names (empty or blank lines only). {_how_to_supply()}")
    return words


@dataclass(frozen=True)
class Vocab:
    """Character vocabulary: `itos[0] == '.'`, letters sorted from index 1.

    Attributes:
        itos: tuple of characters, index -> character.
    """
    itos: tuple[str, ...]

    @classmethod
    def from_words(cls, words: list[str]) -> "Vocab":
        """Build the lecture's vocabulary from the names (sorted characters after '.')."""
        return cls((SPECIAL,) + tuple(sorted(set("".join(words)))))

    @property
    def stoi(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.itos)}

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, word: str) -> list[int]:
        """Token ids of `word`. Raises DataError naming a character outside the vocab."""
        stoi = self.stoi
        bad = sorted({c for c in word if c not in stoi})
        if bad:
            raise DataError(f"characters {bad} of {word!r} are not in the vocabulary "
                            f"{''.join(self.itos)!r}; train on data that contains them")
        return [stoi[c] for c in word]

    def decode(self, ids) -> str:
        """Characters of `ids`, stopping at the first end token 0. Raises DataError on a bad id."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.itos):
                raise DataError(f"token id {i} is outside the vocab [0, {len(self.itos)})")
            if i == 0:
                break
            out.append(self.itos[i])
        return "".join(out)


def split_words(words: list[str], seed: int = 42) -> tuple[list[str], list[str], list[str]]:
    """The lecture's split: `random.seed(seed)`, one `random.shuffle`, then 80/10/10 by words.

    Does not modify `words`. Returns (train, val, test) word lists.
    """
    words = list(words)
    random.seed(seed)
    random.shuffle(words)
    n1, n2 = int(0.8 * len(words)), int(0.9 * len(words))
    return words[:n1], words[n1:n2], words[n2:]


def build_dataset(words: list[str], block_size: int, vocab: Vocab) -> tuple[np.ndarray, np.ndarray]:
    """Context windows and next-token targets, exactly as the lecture's `build_dataset`.

    Every word w yields len(w)+1 examples: the context starts as `block_size` zeros and slides over
    w + '.'.

    Returns:
        X: int64 array (N, block_size) of token ids; Y: int64 array (N,) of target ids.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    stoi = vocab.stoi
    pieces, is_target = [], []
    for w in words:
        ids = vocab.encode(w) if any(c not in stoi for c in w) else [stoi[c] for c in w]
        pieces.append([0] * block_size + ids + [0])
        is_target.append([False] * block_size + [True] * (len(ids) + 1))
    seq = np.fromiter((t for p in pieces for t in p), dtype=np.int64)
    pos = np.flatnonzero(np.fromiter((b for m in is_target for b in m), dtype=bool))
    windows = np.lib.stride_tricks.sliding_window_view(seq, block_size)
    X = np.ascontiguousarray(windows[pos - block_size])
    Y = seq[pos].copy()
    return X, Y


@dataclass
class Dataset:
    """The three splits for one block_size: arrays as returned by :func:`build_dataset`."""
    vocab: Vocab
    block_size: int
    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    words: tuple[list[str], list[str], list[str]]

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; choose train, val or test")
        return getattr(self, name)


LECTURE_VOCAB = (SPECIAL,) + tuple("abcdefghijklmnopqrstuvwxyz")   # names.txt's 27 characters


def data_note(path: str | os.PathLike, sha256: str, data: "Dataset") -> str | None:
    """One line for a names file that is not the lecture's names.txt (its sha256 differs) and
    whose vocabulary is not names.txt's 27 characters ('.' and a-z), naming the extra
    characters and the first name that holds one: such a file trains (makemore takes any
    characters but '.' and whitespace), but on another vocab_size, so on another parameter count
    than the lecture's. None for names.txt itself, or a file of its characters."""
    if sha256 == NAMES_SHA256:
        return None
    extra = [c for c in data.vocab.itos if c not in LECTURE_VOCAB]
    if not extra:
        return None
    first = next(w for ws in data.words for w in ws if any(c in extra for c in w))
    return (f"{path} is not the lecture's names.txt (sha256 {sha256[:12]}...): its vocabulary "
            f"({data.vocab.vocab_size} characters) holds {', '.join(map(repr, extra))}, not among names.txt's "
            f"27 ('.' and a-z) (e.g. in {first!r}); vocab_size and the parameter count follow it")


def load_dataset(block_size: int, path: str | os.PathLike | None = None) -> Dataset:
    """Find and read names.txt, build the vocab, split the words and build X/Y for each split."""
    p = find_names_file(path)
    words = read_words(p)
    vocab = Vocab.from_words(words)
    tr, va, te = split_words(words)
    if not (tr and va and te):
        raise DataError(f"{p} has {len(words)} names: too few for the 80/10/10 train/val/test "
                        "split (at least 10 are needed; names.txt has 32,033)")
    return Dataset(vocab, block_size, build_dataset(tr, block_size, vocab),
                   build_dataset(va, block_size, vocab), build_dataset(te, block_size, vocab),
                   (tr, va, te))
