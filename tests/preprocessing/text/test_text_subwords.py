"""preprocessing.text.subwords: SentencePiece cached and deterministic; decode and
normalize round trips."""
import random

import pytest
import torch

from preprocessing.cache import Cache
from preprocessing.text import BOS_ID, PAD_ID
from preprocessing.text.corpus import load_tokens
from preprocessing.text.readers import find_imdb
from preprocessing.text.subwords import decode, normalize, train_spm

def test_spm_model_is_cached_and_deterministic(imdb_small, tmp_path, spm_small):
    src = find_imdb(imdb_small)
    a = train_spm(src, Cache(tmp_path / "a"), **spm_small)
    b = train_spm(src, Cache(tmp_path / "b"), **spm_small)
    assert a.read_bytes() == b.read_bytes()
    assert train_spm(src, Cache(tmp_path / "a"), **spm_small) == a
    assert train_spm(src, Cache(tmp_path / "a"), **spm_small, model_type="bpe") != a
    with pytest.raises(ValueError, match="model_type"):
        train_spm(src, Cache(tmp_path / "a"), model_type="word")


def test_round_trip(imdb_small, imdb_tokens):
    cache, manifest = imdb_tokens
    model = manifest["spm_model"]
    train = load_tokens(cache, manifest, "train")
    assert len(train) == 200 and (train.docs.flat[train.docs.offsets[:-1]] == BOS_ID).all()
    decoded = {decode(train.docs[i], model) for i in range(len(train))}
    files = random.Random(0).sample(sorted((imdb_small / "train").glob("*/*.txt"))[:400], 20)
    for f in (p for p in files if p.parent.name != "unsup"):
        assert normalize(f.read_text(), model) in decoded, f
    assert decode(torch.tensor([BOS_ID, PAD_ID]), model) == ""
