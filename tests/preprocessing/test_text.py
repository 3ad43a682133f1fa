"""Text: the readers (IMDb, WikiText, CSV/parquet), SentencePiece and the cached Ray Data
tokenization (hit, miss, bad documents), and the batching (LMStream, sortish, padding)."""
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch

from preprocessing import DataError, runtime, samples
from preprocessing.cache import Cache
from preprocessing.text import (
    BOS_ID,
    PAD_ID,
    LMStream,
    _wikitext_articles,
    decode,
    find_imdb,
    find_table,
    find_wikitext,
    load_tokens,
    normalize,
    pad_batch,
    read_tokens,
    sortish_batches,
    tokenize,
    train_spm,
)

SPM = dict(vocab_size=300, sample_docs=300)  # small: trains in a fraction of a second


@pytest.fixture(scope="module")
def imdb_small(tmp_path_factory) -> Path:
    """600 reviews: 100 pos + 100 neg in train and in test, 200 unsup. Read-only."""
    out = tmp_path_factory.mktemp("imdb") / "aclImdb"
    samples.imdb(out, size=400, unsup=200, seed=1)
    return out


@pytest.fixture
def imdb_copy(imdb_small, tmp_path) -> Path:
    data = tmp_path / "aclImdb"
    shutil.copytree(imdb_small, data)
    return data


# ---------------------------------------------------------------- the generator


def test_imdb_sample_layout_and_determinism(imdb_small, tmp_path):
    info = samples.imdb(tmp_path / "a", size=40, unsup=10, seed=1)
    assert info["train"] == info["test"] == 20 and info["unsup"] == 10
    again = samples.imdb(tmp_path / "b", size=40, unsup=10, seed=1)
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


# ---------------------------------------------------------------- readers


def test_imdb_is_found_at_or_above_its_folder(imdb_small):
    for where in (imdb_small, imdb_small.parent):
        src = find_imdb(where)
        assert src.kind == "imdb" and src.root == imdb_small and src.classes == ["neg", "pos"]
        assert {s: len(v) for s, v in src.splits.items()} == {"train": 200, "valid": 200, "unsup": 200}
        assert {lab for _, lab in src.splits["train"]} == {0, 1}
        assert {lab for _, lab in src.splits["unsup"]} == {-1}
        assert all(Path(p).parent.name == ("pos" if lab else "neg") for p, lab in src.splits["valid"])


@pytest.mark.parametrize("setup, msg", [
    (lambda p: shutil.rmtree(p / "test" / "pos"), r"test/pos: missing"),
    (lambda p: [f.unlink() for f in (p / "train" / "neg").iterdir()], r"train/neg: no reviews"),
    (lambda p: shutil.rmtree(p / "test"), r"no IMDb here"),
])
def test_bad_imdb_folders_are_data_errors(imdb_copy, setup, msg):
    setup(imdb_copy)
    with pytest.raises(DataError, match=msg):
        find_imdb(imdb_copy)


def test_missing_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        find_imdb(tmp_path / "nope")


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


def test_wikitext_articles_whatever_the_spans(tmp_path):
    f = tmp_path / "wiki.train.tokens"
    f.write_bytes(WIKI.encode())
    size = f.stat().st_size
    whole = [t.decode() for _, t in _wikitext_articles(str(f), 0, size)]
    assert [t.splitlines()[0].strip() for t in whole] == [
        "= Valkyria Chronicles =", "= Tower Building =", "= Third ="]
    assert "= = Gameplay = =" in whole[0] and "1 @,@ 000" in whole[0]
    # cut into spans of any width: every article exactly once, whole, in order
    for step in (1, 7, 30, 64, size):
        parts = [t.decode() for a in range(0, size, step) for _, t in _wikitext_articles(str(f), a, min(a + step, size))]
        assert parts == whole, step


def test_wikitext_reader_and_tokenize(tmp_path, ray_session):
    d = tmp_path / "wikitext-103"
    d.mkdir()
    (d / "wiki.train.tokens").write_text(WIKI * 20)
    (d / "wiki.valid.tokens").write_text(WIKI)
    src = find_wikitext(tmp_path)  # the parent folder, as the archive extracts
    assert src.kind == "wikitext" and set(src.splits) == {"train", "valid"}
    manifest, hit = tokenize(src, Cache(tmp_path / "c"), vocab_size=200)
    assert not hit and manifest["rows"] == {"train": 60, "valid": 3}
    assert manifest["labelled"] == {"train": False, "valid": False}
    valid = load_tokens(Cache(tmp_path / "c"), manifest, "valid")
    text = decode(valid.doc(0), manifest["spm_model"])
    assert text.startswith("= Valkyria Chronicles =") and "role-playing" in text and "1,000" in text
    assert (valid.labels == -1).all()
    with pytest.raises(DataError, match="no WikiText here"):
        find_wikitext(tmp_path / "c")


def test_table_readers_and_tokenize(tmp_path, ray_session, capfd):
    csv = tmp_path / "reviews.csv"
    rows = [("a fine film, truly", "pos"), ("dull and \"long\"", "neg"), ("", "neg"), ("great fun", "pos")]
    csv.write_text("body,sentiment\n" + "".join(f'"{t.replace(chr(34), chr(34) * 2)}",{l}\n' for t, l in rows))
    pq.write_table(pa.table({"body": ["not bad at all", "awful"], "sentiment": ["pos", "neg"]}), tmp_path / "v.parquet")
    src = find_table({"train": csv, "valid": tmp_path / "v.parquet"}, text_col="body", label_col="sentiment")
    manifest, _ = tokenize(src, Cache(tmp_path / "c"), vocab_size=60)
    assert manifest["rows"] == {"train": 3, "valid": 2} and manifest["skipped"] == {"train": 1, "valid": 0}
    assert manifest["classes"] == ["neg", "pos"] and manifest["labelled"]["train"]
    assert "reviews.csv: row 2: empty document" in capfd.readouterr().err
    train = load_tokens(Cache(tmp_path / "c"), manifest, "train")
    got = {decode(train.doc(i), manifest["spm_model"]): int(train.labels[i]) for i in range(len(train))}
    assert got == {"a fine film, truly": 1, 'dull and "long"': 0, "great fun": 1}
    # integer labels, or none: labels -1
    pq.write_table(pa.table({"text": ["one", "two"], "label": [3, 1]}), tmp_path / "i.parquet")
    assert find_table(tmp_path / "i.parquet").options["label_col"] == "label"
    assert find_table(tmp_path / "i.parquet", label_col=None).options["label_col"] is None
    with pytest.raises(DataError, match=r"reviews.csv: no column 'text' \(columns: body, sentiment\)"):
        find_table(csv)
    with pytest.raises(DataError, match="expected a .csv, .tsv or .parquet"):
        (tmp_path / "x.json").write_text("{}")
        find_table(tmp_path / "x.json")


# ---------------------------------------------------------------- tokenize: cache


def test_tokenize_miss_then_hit_without_ray(imdb_copy, tmp_path, ray_session, monkeypatch):
    cache = Cache(tmp_path / "cache")
    m1, hit1 = tokenize(find_imdb(imdb_copy), cache, **SPM)
    assert not hit1 and m1["rows"] == {"train": 200, "valid": 200, "unsup": 200}
    assert m1["skipped"] == {"train": 0, "valid": 0, "unsup": 0} and m1["tokens"]["train"] > 200 * 30
    assert m1["special_ids"] == {"unk": 0, "pad": 1, "bos": 2, "eos": 3} and 0 < m1["vocab_size"] <= 300
    assert Path(m1["spm_model"]).is_file()
    table = pq.read_table(cache.path(m1["name"], m1["key"]) / "train")
    assert str(table.schema.field("ids").type) == "list<element: int32>"
    assert table.schema.field("len").type == pa.int32() and table.schema.field("label").type == pa.int64()
    assert sorted(table.column("label").to_pylist()) == [0] * 100 + [1] * 100
    assert read_tokens(cache, m1, "valid").count() == 200

    def no_ray(*a, **k):
        raise AssertionError("a cache hit must not start Ray")

    monkeypatch.setattr(runtime, "init_ray", no_ray)
    monkeypatch.setattr(ray.data, "from_items", no_ray)  # the session's Ray is up: no job may run either
    m2, hit2 = tokenize(find_imdb(imdb_copy), cache, **SPM)
    assert hit2 and m2["key"] == m1["key"] and m2["spm_model"] == m1["spm_model"]
    monkeypatch.undo()
    # another vocabulary size, or one edited review, is a miss
    m3, hit3 = tokenize(find_imdb(imdb_copy), cache, vocab_size=200, sample_docs=300)
    assert not hit3 and m3["key"] != m1["key"]
    f = sorted((imdb_copy / "train" / "pos").iterdir())[0]
    f.write_text(f.read_text() + " I loved it.")
    m4, hit4 = tokenize(find_imdb(imdb_copy), cache, **SPM)
    assert not hit4 and m4["key"] not in (m1["key"], m3["key"])


def test_spm_model_is_cached_and_deterministic(imdb_small, tmp_path):
    src = find_imdb(imdb_small)
    a = train_spm(src, Cache(tmp_path / "a"), **SPM)
    b = train_spm(src, Cache(tmp_path / "b"), **SPM)
    assert a.read_bytes() == b.read_bytes()
    assert train_spm(src, Cache(tmp_path / "a"), **SPM) == a
    assert train_spm(src, Cache(tmp_path / "a"), vocab_size=300, sample_docs=300, model_type="bpe") != a
    with pytest.raises(ValueError, match="model_type"):
        train_spm(src, Cache(tmp_path / "a"), model_type="word")


def test_round_trip(imdb_small, tmp_path, ray_session):
    cache = Cache(tmp_path / "c")
    manifest, _ = tokenize(find_imdb(imdb_small), cache, **SPM)
    model = manifest["spm_model"]
    train = load_tokens(cache, manifest, "train")
    assert len(train) == 200 and (train.ids[train.offsets[:-1]] == BOS_ID).all()
    decoded = {decode(train.doc(i), model) for i in range(len(train))}
    files = random.Random(0).sample(sorted((imdb_small / "train").glob("*/*.txt"))[:400], 20)
    for f in (p for p in files if p.parent.name != "unsup"):
        assert normalize(f.read_text(), model) in decoded, f
    assert decode(torch.tensor([BOS_ID, PAD_ID]), model) == ""


# ---------------------------------------------------------------- tokenize: bad input


def _bad_copy(imdb_copy):
    bad = imdb_copy / "train" / "pos" / "9990_9.txt"
    bad.write_bytes(b"caf\xe9 au lait, \xff\xfe not utf-8")
    empty = imdb_copy / "train" / "neg" / "9991_1.txt"
    empty.write_text("  <br /><br />\n ")
    return bad, empty


def test_bad_documents_are_skipped_and_counted(imdb_copy, tmp_path, ray_session, capfd):
    _bad_copy(imdb_copy)
    manifest, _ = tokenize(find_imdb(imdb_copy), Cache(tmp_path / "c"), **SPM)
    assert manifest["rows"]["train"] == 200 and manifest["skipped"] == {"train": 2, "valid": 0, "unsup": 0}
    err = capfd.readouterr().err
    assert "train: skipped 2 unreadable or empty document(s) of 202" in err
    assert "9990_9.txt: not UTF-8 text (byte 0xe9 at offset 3)" in err and "9991_1.txt: empty document" in err


def test_on_bad_fail_names_the_file(imdb_copy, tmp_path, ray_session):
    _bad_copy(imdb_copy)
    cache = Cache(tmp_path / "c")
    with pytest.raises(DataError, match=r"aclImdb/train/(pos/9990_9.txt: not UTF-8 text|neg/9991_1.txt: empty document)"):
        tokenize(find_imdb(imdb_copy), cache, on_bad="fail", **SPM)
    assert not any(cache.root.glob("tokens-*")) and not any(cache.root.glob(".tmp-*"))  # nothing half-made


# ---------------------------------------------------------------- batching


def test_lm_stream_covers_the_stream_with_variable_lengths():
    ids = np.arange(10_007, dtype=np.int32)
    stream = LMStream(ids, bs=4, bptt=20, seed=0)
    n = 10_007 // 4
    xs, ys, lens = [], [], []
    for x, y in stream:
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape and x.shape[0] == 4
        xs.append(x)
        ys.append(y)
        lens.append(x.shape[1])
    x, y = torch.cat(xs, 1), torch.cat(ys, 1)
    rows = torch.from_numpy(ids[: 4 * n].reshape(4, n).astype(np.int64))
    assert torch.equal(x, rows[:, :-1]) and torch.equal(y, rows[:, 1:])  # every token once, y = next token
    assert len(set(lens)) > 5 and min(lens[:-1]) >= 5 and max(lens) < 40
    assert any(l < 15 for l in lens[:-1])  # the bptt / 2 draws
    assert abs(stream.approx_batches() - len(lens)) <= 0.15 * len(lens)
    # a new pass draws new lengths; the same seed and pass repeat them
    assert [x.shape[1] for x, _ in stream] != lens
    again = LMStream(ids, bs=4, bptt=20, seed=0)
    assert [x.shape[1] for x, _ in again] == lens
    with pytest.raises(ValueError, match="too short"):
        LMStream(np.arange(5), bs=4)


def test_sortish_batches():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 1000, 5003)
    batches = sortish_batches(lengths, bs=16, seed=1)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(5003))  # a permutation
    assert sum(len(b) != 16 for b in batches) == 1 and len(batches) == -(-5003 // 16)  # one short batch
    assert lengths[batches[0]].max() == lengths.max()  # the longest batch goes first
    for b in batches:  # each batch is cut from a sorted chunk
        assert all(lengths[i] >= lengths[j] for i, j in zip(b, b[1:]))
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    assert spread < 0.1 * (lengths.max() - lengths.min())  # roughly sorted, so little padding
    assert sortish_batches(lengths, 16, seed=2) != batches and sortish_batches(lengths, 16, seed=1) == batches


def test_pad_batch():
    out = pad_batch([[5, 6, 7], np.array([8]), torch.tensor([9, 10])])
    assert out.dtype == torch.int64 and out.tolist() == [[5, 6, 7], [1, 1, 8], [1, 9, 10]]
    assert pad_batch([[5, 6], [7]], pad_first=False).tolist() == [[5, 6], [7, 1]]
    assert pad_batch([[5], [6, 7]], pad_id=0).tolist() == [[0, 5], [6, 7]]
