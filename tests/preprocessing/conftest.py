"""Generated data the preprocessing tests share (read-only: copy before changing it)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from preprocessing.samples import imdb as imdb_samples


@pytest.fixture(scope="session")
def imdb_small(tmp_path_factory) -> Path:
    """600 reviews in the aclImdb layout: 100 pos + 100 neg in train and in test, 200 unsup."""
    out = tmp_path_factory.mktemp("imdb") / "aclImdb"
    imdb_samples.imdb(out, size=400, unsup=200, seed=1)
    return out


@pytest.fixture
def imdb_copy(imdb_small, tmp_path) -> Path:
    """A copy of imdb_small that a test may change."""
    data = tmp_path / "aclImdb"
    shutil.copytree(imdb_small, data)
    return data
