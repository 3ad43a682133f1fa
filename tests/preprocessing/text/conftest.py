"""The tokenized IMDb sample that several text tests read (read-only)."""
from __future__ import annotations

import pytest

from preprocessing.cache import Cache
from preprocessing.text.encoding import tokenize
from preprocessing.text.readers import find_imdb

SPM = dict(vocab_size=300, sample_docs=300)  # small: trains in a fraction of a second


@pytest.fixture(scope="session")
def imdb_tokens(imdb_small, tmp_path_factory, ray_session) -> tuple[Cache, dict]:
    """(cache, manifest) of imdb_small tokenized with a 300-piece vocabulary."""
    cache = Cache(tmp_path_factory.mktemp("imdb-tokens"))
    manifest, _ = tokenize(find_imdb(imdb_small), cache, **SPM)
    return cache, manifest
