"""What several text tests share: small SentencePiece settings, a WikiText sample, and the
tokenized IMDb sample (read-only)."""
from __future__ import annotations

import pytest

from preprocessing.cache import Cache
from preprocessing.text.encoding import tokenize
from preprocessing.text.readers import find_imdb

SPM = dict(vocab_size=300, sample_docs=300, case="markers")  # small: trains in a fraction of a second; the pipelines' case rule

WIKI = (
    " \n"
    " = Valkyria Chronicles = \n"
    " \n"
    " Senjō no Valkyria is a tactical role @-@ playing game . \n"
    " \n"
    " = = Gameplay = = \n"
    " \n"
    " The game has 1 @,@ 000 units . \n"
    " = Tower Building = \n"
    " \n"
    " The tower is 3 @.@ 5 m tall . \n"
    " = Third = \n"
    " Short . \n"
)


@pytest.fixture
def spm_small() -> dict:
    """SentencePiece settings for train_spm and tokenize: {vocab_size: 300, sample_docs: 300, case: markers}."""
    return dict(SPM)


@pytest.fixture
def wiki_text() -> str:
    """Three WikiText-103 articles (one with a = = subsection = = heading), in its token format."""
    return WIKI


@pytest.fixture(scope="session")
def imdb_tokens(imdb_small, tmp_path_factory, ray_session) -> tuple[Cache, dict]:
    """(cache, manifest) of imdb_small tokenized with a 300-piece vocabulary, case markers."""
    cache = Cache(tmp_path_factory.mktemp("imdb-tokens"))
    manifest, _ = tokenize(find_imdb(imdb_small), cache, **SPM)
    return cache, manifest
