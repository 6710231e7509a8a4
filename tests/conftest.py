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


@pytest.fixture(scope="session")
def names_path() -> Path:
    for c in CANDIDATES:
        if c and Path(c).is_file():
            return Path(c)
    try:  # the project's own lookup: downloads and verifies data/names.txt where the network allows
        from shared.data import find_names_file
        os.chdir(ROOT)
        return find_names_file().resolve()
    except Exception as e:
        print(e)
    pytest.fail("names.txt not found: copy it to data/names.txt or set MAKEMORE_DATA "
                "(.ci/run copies ../shared/data/names.txt)")


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
