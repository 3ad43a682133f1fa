"""preprocessing.samples.imdb.imdb: the aclImdb layout, determinism, and sentiment words
that do not decide the label alone."""
import re

from preprocessing.samples import imdb as imdb_samples


def test_imdb_sample_layout_and_determinism(imdb_small, tmp_path):
    info = imdb_samples.imdb(tmp_path / "a", size=40, unsup=10, seed=1)
    assert info["train"] == info["test"] == 20 and info["unsup"] == 10
    again = imdb_samples.imdb(tmp_path / "b", size=40, unsup=10, seed=1)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.txt"))
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.txt"))
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert info["bytes"] == again["bytes"]
    for f in (imdb_small / "train" / "pos").iterdir():
        assert 7 <= int(f.stem.split("_")[1]) <= 10
    for f in (imdb_small / "test" / "neg").iterdir():
        assert 1 <= int(f.stem.split("_")[1]) <= 4
    words = [len(f.read_text().replace("<br />", " ").split()) for f in imdb_small.rglob("*.txt")]
    assert min(words) >= 30 and max(words) <= 300
    assert (imdb_small / "imdb.vocab").read_text().split()[:2] == ["a", "about"]


def test_imdb_sample_sentiment_words_appear_in_both_classes(imdb_small):
    """Not one keyword decides: 'good' and 'boring' are in positive and negative reviews."""
    pos = " ".join(f.read_text().lower() for f in (imdb_small / "train" / "pos").iterdir())
    neg = " ".join(f.read_text().lower() for f in (imdb_small / "train" / "neg").iterdir())
    for w in ("great", "boring", "not", "never", "loved", "but"):
        assert re.search(rf"\b{w}\b", pos) and re.search(rf"\b{w}\b", neg), w
