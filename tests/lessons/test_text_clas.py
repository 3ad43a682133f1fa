"""text-lm / text-clas (issue 17): ULMFiT on any table, one label or many."""
import csv
import dataclasses
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from models.awd_lstm import AWDLSTMConfig, encoder_state, language_model
from pipelines.__main__ import main
from pipelines.core import registry
from pipelines.lessons.imdb_ulmfit import BACKWARDS_KEY, _read_shard, reverse_docs
from pipelines.lessons.text_clas import best_threshold, roc_auc, table_metrics
from preprocessing import DataError
from preprocessing.cache import Cache
from preprocessing.samples import imdb as imdb_samples
from preprocessing.samples import jigsaw
from preprocessing.text import tables

LABELS = list(jigsaw.LABELS)


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    lines = [l for l in out.splitlines() if l.strip()]
    return code, (json.loads(lines[-1]) if code == 0 else None), err


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


# ---------------------------------------------------------------- the sample, the registry


def test_sample_is_jigsaw_layout_with_correlated_and_rare_labels(tmp_path):
    info = jigsaw.jigsaw(tmp_path, size=4000, seed=2)
    with open(tmp_path / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(tmp_path / "test.csv", newline="") as f:
        test = list(csv.reader(f))
    assert list(rows[0]) == ["id", "comment_text", *LABELS] and test[0] == ["id", "comment_text"]
    assert len(rows) == 4000 and len(test) == 1001 and len(rows[0]["id"]) == 16
    y = np.array([[int(r[k]) for k in LABELS] for r in rows])
    assert (y[:, 1] <= y[:, 0]).all()                           # severe_toxic implies toxic
    rate = dict(zip(LABELS, y.mean(0)))
    assert 0.07 < rate["toxic"] < 0.13 and 0 < rate["threat"] < 0.01 and 0 < rate["identity_hate"] < 0.01
    assert info["positives"] == dict(zip(LABELS, map(int, y.sum(0))))
    assert any("\n" in r["comment_text"] for r in rows)         # quoted newlines, as in the real file


def test_registered_and_tune_searches_dropout_and_the_schedule():
    lm, clas = registry.get("text-lm"), registry.get("text-clas")
    assert (lm.dataset, lm.metric, lm.mode) == ("jigsaw-toxic", "perplexity", "min")
    assert (clas.dataset, clas.metric, clas.mode) == ("jigsaw-toxic", "roc_auc", "max")
    assert set(clas.search_space(clas.configs["tiny"])) >= {"drop_mult", "lr", "div", "pct"}
    # the LM and the classifier tokenize alike: one cache
    for f in ("vocab_size", "sample_docs", "case", "valid_frac", "text_col", "label_cols", "seed"):
        for name in ("tiny", "sample"):
            assert getattr(lm.configs[name], f) == getattr(clas.configs[name], f), (name, f)


# ---------------------------------------------------------------- the table: columns, labels, split


def test_columns_from_the_header_or_a_one_line_error_naming_them(tmp_path):
    jigsaw.jigsaw(tmp_path, size=50)
    cols = tables.resolve_columns(tmp_path / "train.csv")
    assert (cols.text, cols.labels, cols.multi) == ("comment_text", tuple(LABELS), True)
    one = write_csv(tmp_path / "one.csv", ["review", "stars"], [["good film", 5], ["bad", 1]])
    assert tables.resolve_columns(one) == tables.Columns("review", ("stars",), False)
    two = write_csv(tmp_path / "two.csv", ["title", "summary", "label"], [["a", "b", "x"]])
    with pytest.raises(DataError, match=r"cannot tell the text column: several string columns \(title, summary, "
                                        r"label\) \(columns: title, summary, label\); set --set text_col=NAME"):
        tables.resolve_columns(two)
    assert tables.resolve_columns(two, text_col="summary", label_cols=("label",)).labels == ("label",)
    usual = write_csv(tmp_path / "usual.csv", ["title", "body", "label"], [["a", "b", "x"]])
    with pytest.raises(DataError, match="cannot tell the label columns among title, label"):
        tables.resolve_columns(usual)  # the text is `body`; the labels are not
    mixed = write_csv(tmp_path / "mixed.csv", ["text", "topic", "toxic"], [["a", "news", 0]])
    with pytest.raises(DataError, match="cannot tell the label columns among topic, toxic"):
        tables.resolve_columns(mixed)
    with pytest.raises(DataError, match=r"no label column 'hate' \(columns: id, comment_text, toxic"):
        tables.resolve_columns(tmp_path / "train.csv", label_cols=("toxic", "hate"))
    with pytest.raises(DataError, match="no text column 'body'"):
        tables.resolve_columns(tmp_path / "train.csv", text_col="body")


def test_bad_rows_are_counted_skips_or_one_line_errors(tmp_path):
    rows = [["a", "fine words", 0, 1], ["b", "", 0, 0], ["c", "more words", 2, 0], ["d", "ok then", 1, 1],
            ["e", "   ", 1, 0], ["f", "last one", 0, 0], ["g", "and this", 1, 0]]
    train = write_csv(tmp_path / "train.csv", ["id", "text", "rude", "mean"], rows)
    cols = tables.resolve_columns(train)
    assert cols.multi and cols.labels == ("rude", "mean")
    manifest, hit = tables.prepare(train, None, cols, Cache(tmp_path / "c"), valid_frac=0.3)
    assert not hit and manifest["bad_input"] == {"train": {"missing or empty text": 2, "label not 0/1": 1}}
    assert manifest["rows"]["train"] + manifest["rows"]["valid"] == 4
    y = np.concatenate([tables.labels(manifest, s) for s in ("train", "valid")])
    assert y.dtype == np.int8 and set(np.unique(y)) <= {0, 1}
    with pytest.raises(DataError, match=r"train.csv: row 1: missing text in column 'text'$"):
        tables.prepare(train, None, cols, Cache(tmp_path / "c2"), on_bad="fail")
    fixed = write_csv(tmp_path / "fixed.csv", ["id", "text", "rude", "mean"], [r for r in rows if r[1].strip()])
    with pytest.raises(DataError, match=r"fixed.csv: row 1: column 'rude' is '2'; a multi-label column holds 0 or 1"):
        tables.prepare(fixed, None, tables.resolve_columns(fixed), Cache(tmp_path / "c3"), on_bad="fail")
    words = write_csv(tmp_path / "words.csv", ["text", "a", "b"], [["x", "yes", 0]])
    with pytest.raises(DataError, match="label column 'a' holds string values; a multi-label column holds 0 or 1"):
        tables.resolve_columns(words, label_cols=("a", "b"))


def test_a_test_table_must_have_the_text_column(tmp_path):
    jigsaw.jigsaw(tmp_path, size=30)
    write_csv(tmp_path / "test.csv", ["id", "text"], [["1", "hello"]])
    train, test = tables.find_tables(tmp_path)
    assert test == tmp_path / "test.csv"
    with pytest.raises(DataError, match=r"test.csv: no text column 'comment_text' \(columns: id, text\); the test table "
                                        r"must name its text column as train.csv does"):
        tables.prepare(train, test, tables.resolve_columns(train), Cache(tmp_path / "c"))


def test_split_column_or_a_seeded_stratified_fraction(tmp_path):
    jigsaw.jigsaw(tmp_path, size=3000, seed=4)
    train, test = tables.find_tables(tmp_path)
    cols = tables.resolve_columns(train)
    a, _ = tables.prepare(train, test, cols, Cache(tmp_path / "c"), valid_frac=0.2, seed=1)
    rows = a["rows"]  # each stratum (a label, or none) rounds its own fifth: 7 of them
    assert rows["train"] + rows["valid"] == 3000 and abs(rows["valid"] - 600) <= 4 and rows["test"] == 750, rows
    for label in LABELS:  # every label's positives split about 4:1, the rare ones too
        t, v = a["positives"]["train"][label], a["positives"]["valid"][label]
        assert v >= 1 and abs(v / (t + v) - 0.2) < 0.1, (label, t, v)
    b, _ = tables.prepare(train, test, cols, Cache(tmp_path / "c2"), valid_frac=0.2, seed=1)
    assert np.array_equal(tables.labels(a, "valid"), tables.labels(b, "valid"))  # seeded
    assert len(tables.test_ids(a)) == 750
    rows = [[f"doc {i} {'great' if i % 2 else 'awful'}", "pos" if i % 2 else "neg", "valid" if i < 4 else "train"]
            for i in range(12)]
    named = write_csv(tmp_path / "named.csv", ["text", "label", "split"], rows)
    m, _ = tables.prepare(named, None, tables.resolve_columns(named), Cache(tmp_path / "c3"))
    assert m["rows"] == {"train": 8, "valid": 4} and m["classes"] == ["neg", "pos"] and not m["multi"]
    bad = write_csv(tmp_path / "bad.csv", ["text", "label", "split"], [["a", "x", "train"], ["b", "y", "holdout"]])
    with pytest.raises(DataError, match="row 1: column 'split' is 'holdout'; expected train or valid"):
        tables.prepare(bad, None, tables.resolve_columns(bad), Cache(tmp_path / "c4"))


# ---------------------------------------------------------------- metrics


def _pairwise_auc(p, y):
    """AUC by its definition: over every (positive, negative) pair, 1 if the positive scores
    higher, 1/2 for a tie."""
    pos, neg = p[y.astype(bool)], p[~y.astype(bool)]
    return ((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())


def _f1(pred, y):
    pred, y = pred.astype(bool), y.astype(bool)
    return 2 * (pred & y).sum() / (pred.sum() + y.sum())


def test_auc_and_thresholds_as_kaggle_scores_them():
    rng = np.random.default_rng(0)
    y = rng.random((300, 3)) < [0.3, 0.05, 0.5]
    p = np.round(np.clip(y * 0.3 + rng.random((300, 3)), 0, 1), 2)  # ties, on purpose
    for k in range(3):
        assert roc_auc(p[:, k], y[:, k]) == pytest.approx(_pairwise_auc(p[:, k], y[:, k]))
        t, f1 = best_threshold(p[:, k], y[:, k])
        assert f1 == pytest.approx(_f1(p[:, k] >= t, y[:, k]))
        assert f1 == pytest.approx(max(_f1(p[:, k] >= s, y[:, k]) for s in np.unique(p[:, k])))
    m, th = table_metrics(p, y.astype(np.int8), ["a", "b c", "d"], multi=True)
    assert m["roc_auc"] == pytest.approx(np.mean([_pairwise_auc(p[:, k], y[:, k]) for k in range(3)]))  # column-wise mean
    assert set(th) == {"a", "b c", "d"} and "auc_b_c" in m and "threshold_b_c" in m
    assert np.isnan(roc_auc(p[:, 0], np.zeros(300)))  # no positive in valid: undefined, left out of the mean
    yc = rng.integers(0, 3, 200)
    pc = rng.dirichlet(np.ones(3), 200)
    m, _ = table_metrics(pc, yc, ["x", "y", "z"], multi=False)
    assert m["accuracy"] == pytest.approx((pc.argmax(1) == yc).mean())
    assert m["f1_macro"] == pytest.approx(np.mean([_f1(pc.argmax(1) == c, yc == c) for c in range(3)]))
    assert m["roc_auc"] == pytest.approx(np.mean([_pairwise_auc(pc[:, c], yc == c) for c in range(3)]))  # one-vs-rest


# ---------------------------------------------------------------- backwards (issue 18's backward LM)


class _Shard:
    def __init__(self, docs):
        import pyarrow as pa

        self.table = pa.table({"ids": pa.array(docs, pa.list_(pa.int32())), "label": np.arange(len(docs))})

    def iter_batches(self, **kw):
        yield self.table


def test_backwards_reverses_every_document_and_refuses_the_other_direction(tmp_path, capsys):
    docs = [[2, 10, 11, 12], [2, 20], [2, 30, 31]]
    ids, offsets, _ = _read_shard(_Shard(docs), backwards=True)
    assert [ids[offsets[i]:offsets[i + 1]].tolist() for i in range(3)] == [[12, 11, 10, 2], [20, 2], [31, 30, 2]]
    fwd, _, _ = _read_shard(_Shard(docs))
    assert fwd.tolist() == [t for d in docs for t in d]
    assert reverse_docs(fwd, offsets).tolist() == ids.tolist()
    # a backward LM's encoder file is marked; a forward classifier refuses it in one line, before tokenizing
    cfg = registry.get("imdb-clas").configs["tiny"]
    lm = language_model(AWDLSTMConfig(vocab_size=cfg.vocab_size, emb_sz=cfg.emb_sz, n_hid=cfg.n_hid,
                                      n_layers=cfg.n_layers))
    enc = tmp_path / "encoder.pt"
    torch.save({**encoder_state(lm), BACKWARDS_KEY: torch.tensor(1)}, enc)
    code, _, err = run_cli(capsys, "run", "imdb-clas", "--data", str(tmp_path / "none"), "--config", "tiny",
                           "--set", f"encoder={enc}", "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
                           "--storage", str(tmp_path / "s"))
    lines = [l for l in err.splitlines() if l.startswith("fastray: error:")]
    assert code == 1 and len(lines) == 1 and "its LM read backward (backwards=true), this classifier reads forward" \
        in lines[0] and "set backwards=true" in lines[0], err
    pipe = registry.get("imdb-clas")
    assert pipe._check_init(dataclasses.replace(cfg, backwards=True, encoder=str(enc)), enc)  # same direction: fine


# ---------------------------------------------------------------- download


def test_download_is_kaggle_only_then_extracts_and_checks_the_zip(tmp_path):
    from preprocessing import download

    args = lambda *url: type("A", (), dict(name="jigsaw-toxic", out=tmp_path / "out", source=None, url=list(url),  # noqa: E731
                                           checksum=[], retries=0, keep_archive=False))()
    with pytest.raises(DataError, match="jigsaw-toxic is on Kaggle only.*kaggle competitions download -c "
                                        "jigsaw-toxic-comment-classification-challenge"):
        download.cmd_download(args())
    sample = tmp_path / "sample"
    jigsaw.jigsaw(sample, size=20)

    def kaggle_zip(path: Path, members: list[str]) -> Path:  # a zip of zips, as Kaggle ships it
        with zipfile.ZipFile(path, "w") as z:
            for m in members:
                inner = tmp_path / f"{m}.zip"
                with zipfile.ZipFile(inner, "w") as zi:
                    zi.write(sample / m, m)
                z.write(inner, f"{m}.zip")
        return path

    good = kaggle_zip(tmp_path / "good.zip", ["train.csv", "test.csv"])
    res = download.cmd_download(args(str(good)))
    assert res["extracted"] == ["test.csv", "train.csv"] and (tmp_path / "out" / "train.csv").is_file()
    assert tables.find_tables(res["data"]) == (tmp_path / "out" / "train.csv", tmp_path / "out" / "test.csv")
    args2 = lambda url: type("A", (), dict(name="jigsaw-toxic", out=tmp_path / "out2", source=None, url=[url],  # noqa: E731
                                           checksum=[], retries=0, keep_archive=False))()
    with pytest.raises(DataError, match="jigsaw-toxic: no test.csv in the archive"):
        download.cmd_download(args2(str(kaggle_zip(tmp_path / "half.zip", ["train.csv"]))))
    assert not (tmp_path / "out2" / "train.csv").exists()  # nothing half-extracted


# ---------------------------------------------------------------- end to end, tiny


def test_jigsaw_sample_end_to_end_multi_label(capsys, tmp_path, workdir, ray_session):
    data = tmp_path / "jigsaw"
    code, info, _ = run_cli(capsys, "sample-data", "jigsaw-toxic", "--out", str(data), "--size", "500")
    assert code == 0 and info["train"] == 500 and info["test"] == 125
    code, res, err = run_cli(capsys, "run", "text-clas", "--data", str(data), "--config", "tiny", "--name", "jig")
    assert code == 0, err
    m = res["metrics"]
    assert 0 <= m["roc_auc"] <= 1 and m["epoch"] == 3
    assert all(f"valid_auc_{k}" in m and f"valid_threshold_{k}" in m for k in LABELS)
    assert "valid_n" not in m  # a count of rows, not a metric: it flattened the curves' metric panel
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns.db'}")
    for k in LABELS:  # per label, per epoch
        assert len(client.get_metric_history(res["run_id"], f"valid_f1_{k}")) == 3
        assert len(client.get_metric_history(res["run_id"], f"valid_auc_{k}")) == 3
    sub = Path(client.download_artifacts(res["run_id"], "submission/submission.csv", str(tmp_path)))
    with open(sub, newline="") as f:
        got = list(csv.reader(f))
    with open(data / "test.csv", newline="") as f:
        ids = [r[0] for r in list(csv.reader(f))[1:]]
    assert got[0] == ["id", *LABELS] and [r[0] for r in got[1:]] == ids
    assert all(0 <= float(v) <= 1 for r in got[1:] for v in r[1:])
    th = json.loads(Path(client.download_artifacts(res["run_id"], "thresholds/thresholds.json", str(tmp_path))).read_text())
    assert set(th["thresholds"]) == set(LABELS)
    assert th["thresholds"]["toxic"] == pytest.approx(m["valid_threshold_toxic"])

    # lesson 10's forward + backward ensemble on the same table: a backward run, then text-ensemble
    code, bwd, err = run_cli(capsys, "run", "text-clas", "--data", str(data), "--config", "tiny", "--name", "jigb",
                             "--set", "backwards=true")
    assert code == 0, err
    code, _, err = run_cli(capsys, "run", "text-ensemble", "--data", str(data), "--config", "tiny",
                           "--set", f"forward={bwd['run_id']}", "--set", f"backward={res['run_id']}")
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 1 and len(lines) == 1 and "read its rows backwards" in lines[0], err
    # the two runs by their --names: the ensemble finds (and names) their ids
    code, ens, err = run_cli(capsys, "run", "text-ensemble", "--data", str(data), "--config", "tiny", "--name", "both",
                             "--set", "forward=jig", "--set", "backward=jigb")
    assert code == 0, err
    assert f"forward: text-clas run {res['run_id']} on" in err and f"backward: text-clas run {bwd['run_id']} on" in err
    e = ens["metrics"]
    # each run re-read from MLflow scores what it logged: the same weights on the same rows
    assert e["forward_roc_auc"] == pytest.approx(m["roc_auc"], abs=1e-6)
    assert e["backward_roc_auc"] == pytest.approx(bwd["metrics"]["roc_auc"], abs=1e-6)
    assert 0 <= e["roc_auc"] <= 1 and all(f"auc_{k}" in e and f"threshold_{k}" in e for k in LABELS)
    subs = [list(csv.reader(open(client.download_artifacts(r, "submission/submission.csv", str(tmp_path / d)),
                                 newline=""))) for r, d in ((res["run_id"], "f"), (bwd["run_id"], "b"), (ens["run_id"], "e"))]
    assert subs[2][0] == ["id", *LABELS] and [r[0] for r in subs[2]] == [r[0] for r in subs[0]]
    mean = (np.array([r[1:] for r in subs[0][1:]], float) + np.array([r[1:] for r in subs[1][1:]], float)) / 2
    assert np.allclose(np.array([r[1:] for r in subs[2][1:]], float), mean, atol=1e-5)
    th = json.loads(Path(client.download_artifacts(ens["run_id"], "thresholds/thresholds.json", str(tmp_path / "e"))).read_text())
    assert th["thresholds"]["toxic"] == pytest.approx(e["threshold_toxic"])


def test_single_label_csv_end_to_end(capsys, tmp_path, workdir, ray_session):
    """Any table: a CSV of reviews with a string label column, found from the header."""
    import random

    r = random.Random(0)
    rows = []
    for i in range(360):
        label = "pos" if i % 2 else "neg"
        rows.append([f"r{i}", imdb_samples._review(r, 1 if i % 2 else -1, 20, 60)[0], label])
    table = write_csv(tmp_path / "reviews.csv", ["review_id", "review", "sentiment"], rows)
    code, res, err = run_cli(capsys, "run", "text-clas", "--data", str(table), "--config", "tiny", "--name", "one")
    assert code == 0, err
    m = res["metrics"]
    assert {"roc_auc", "valid_accuracy", "valid_f1_macro", "valid_f1_pos", "valid_auc_neg"} <= set(m)
    assert 0 <= m["valid_accuracy"] <= 1 and m["epoch"] == 3
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns.db'}")
    assert len(client.get_metric_history(res["run_id"], "valid_f1_macro")) == 3
    assert not client.list_artifacts(res["run_id"], "submission")  # no test table, no submission
