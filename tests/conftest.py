"""Fixtures only: the real names.txt (CI copies it into data/), datasets, an rng. What the tests
share beyond fixtures lives in helpers.py."""
import os
from pathlib import Path

import numpy as np
import pytest

from helpers import ROOT
from shared.data import load_dataset

CANDIDATES = [os.environ.get("MAKEMORE_DATA"), ROOT / "data" / "names.txt",
              ROOT.parent / "shared" / "data" / "names.txt"]


def _find_names() -> Path | None:
    for c in CANDIDATES:
        if c and Path(c).is_file():
            return Path(c)
    try:  # the project's own lookup: downloads and verifies data/names.txt where the network allows
        from shared.data import find_names_file
        # data/names.txt is relative to the working directory: only look (and download) from the root
        return find_names_file().resolve() if Path.cwd() == ROOT else None
    except Exception:  # DataError, or no network: one message below, not one per test
        return None


NAMES = None


def pytest_sessionstart(session):
    """Stop the whole session with one message when names.txt cannot be found (most tests need
    it), instead of an error per test."""
    global NAMES
    NAMES = _find_names()
    if NAMES is None:
        pytest.exit("names.txt not found (nor downloadable): copy it to data/names.txt, or set "
                    "MAKEMORE_DATA=/path/to/names.txt, then run make test again "
                    "(sha256 0a30b5557f192f32ab962680889aac5f6fda0f4cecf40a6d0b5694f58ea8cc4d)",
                    returncode=4)


@pytest.fixture(scope="session")
def names_path() -> Path:
    """The real names.txt (found once at session start)."""
    return NAMES


@pytest.fixture(scope="session")
def data8(names_path):
    """The lecture's splits with block_size 8 (wavenet, mlp-8)."""
    return load_dataset(8, names_path)


@pytest.fixture(scope="session")
def data3(names_path):
    """The lecture's splits with block_size 3 (mlp)."""
    return load_dataset(3, names_path)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
