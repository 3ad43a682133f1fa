"""preprocessing.text.encoding: the cached Ray Data tokenization of every reader's source
(hit, miss, bad documents)."""
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from preprocessing import DataError, runtime
from preprocessing.cache import Cache
from preprocessing.text.corpus import load_tokens, read_tokens
from preprocessing.text.encoding import tokenize
from preprocessing.text.readers import find_imdb, find_table, find_wikitext
from preprocessing.text.subwords import decode


def test_wikitext_reader_and_tokenize(tmp_path, ray_session, wiki_text):
    d = tmp_path / "wikitext-103"
    d.mkdir()
    (d / "wiki.train.tokens").write_text(wiki_text * 20)
    (d / "wiki.valid.tokens").write_text(wiki_text)
    src = find_wikitext(tmp_path)  # the parent folder, as the archive extracts
    assert src.kind == "wikitext" and set(src.splits) == {"train", "valid"}
    manifest, hit = tokenize(src, Cache(tmp_path / "c"), vocab_size=200)
    assert not hit and manifest["rows"] == {"train": 60, "valid": 3}
    assert manifest["labelled"] == {"train": False, "valid": False}
    valid = load_tokens(Cache(tmp_path / "c"), manifest, "valid")
    text = decode(valid.docs[0], manifest["spm_model"])
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
    got = {decode(train.docs[i], manifest["spm_model"]): int(train.labels[i]) for i in range(len(train))}
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


def test_tokenize_miss_then_hit_without_ray(imdb_copy, tmp_path, ray_session, monkeypatch, spm_small):
    cache = Cache(tmp_path / "cache")
    m1, hit1 = tokenize(find_imdb(imdb_copy), cache, **spm_small)
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
    m2, hit2 = tokenize(find_imdb(imdb_copy), cache, **spm_small)
    assert hit2 and m2["key"] == m1["key"] and m2["spm_model"] == m1["spm_model"]
    monkeypatch.undo()
    # another vocabulary size, or one edited review, is a miss
    m3, hit3 = tokenize(find_imdb(imdb_copy), cache, vocab_size=200, sample_docs=300)
    assert not hit3 and m3["key"] != m1["key"]
    f = sorted((imdb_copy / "train" / "pos").iterdir())[0]
    f.write_text(f.read_text() + " I loved it.")
    m4, hit4 = tokenize(find_imdb(imdb_copy), cache, **spm_small)
    assert not hit4 and m4["key"] not in (m1["key"], m3["key"])


def _bad_copy(imdb_copy):
    bad = imdb_copy / "train" / "pos" / "9990_9.txt"
    bad.write_bytes(b"caf\xe9 au lait, \xff\xfe not utf-8")
    empty = imdb_copy / "train" / "neg" / "9991_1.txt"
    empty.write_text("  <br /><br />\n ")
    return bad, empty


def test_bad_documents_are_skipped_and_counted(imdb_copy, tmp_path, ray_session, capfd, spm_small):
    _bad_copy(imdb_copy)
    manifest, _ = tokenize(find_imdb(imdb_copy), Cache(tmp_path / "c"), **spm_small)
    assert manifest["rows"]["train"] == 200 and manifest["skipped"] == {"train": 2, "valid": 0, "unsup": 0}
    err = capfd.readouterr().err
    assert "train: skipped 2 unreadable or empty document(s) of 202" in err
    assert "9990_9.txt: not UTF-8 text (byte 0xe9 at offset 3)" in err and "9991_1.txt: empty document" in err


def test_on_bad_fail_names_the_file(imdb_copy, tmp_path, ray_session, spm_small):
    _bad_copy(imdb_copy)
    cache = Cache(tmp_path / "c")
    with pytest.raises(DataError, match=r"aclImdb/train/(pos/9990_9.txt: not UTF-8 text|neg/9991_1.txt: empty document)"):
        tokenize(find_imdb(imdb_copy), cache, on_bad="fail", **spm_small)
    assert not any(cache.root.glob("tokens-*")) and not any(cache.root.glob(".tmp-*"))  # nothing half-made
