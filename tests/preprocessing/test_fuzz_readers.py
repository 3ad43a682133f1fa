"""Property-based tests: random bytes and random valid-looking files fed to every reader.
Whatever the input, a reader returns well-formed data or raises DataError (a counted skip
under --on-bad-input skip). No other exception escapes (the configs' fuzz tests are in
tests/core/test_config_fuzz.py). Settings and
helpers: tests/fuzzing.py."""
import io
import os
import pickle
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from preprocessing import DataError
from preprocessing.chunked import column_array
from preprocessing.images import _CifarDecoder, _load_batch, decode_image, find_cifar10
from preprocessing.text.documents import is_title, iter_docs
from preprocessing.text.encoding import _chunks
from preprocessing.text.readers import find_imdb, find_table, find_wikitext, table_labels
from tests.fuzzing import FUZZ, scratch, write_file  # noqa: F401 (scratch: a fixture)

# ---------------------------------------------------------------- images


def _encoded(fmt: str, h: int, w: int, seed: int) -> bytes:
    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(arr).save(out, fmt)
    return out.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR that claim width x height, with one tiny IDAT after them."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))


@st.composite
def image_bytes(draw):
    """Random bytes, or a real PNG/JPEG/GIF/BMP/WEBP that is truncated, has bytes
    flipped, junk inserted, or is whole."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=600))
    fmt = draw(st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "WEBP"]))
    data = bytearray(_encoded(fmt, draw(st.integers(1, 24)), draw(st.integers(1, 24)), draw(st.integers(0, 99))))
    how = draw(st.sampled_from(["whole", "truncate", "flip", "insert"]))
    if how == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if how == "flip":
        for i in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8)):
            data[i] ^= draw(st.integers(1, 255))
    if how == "insert":
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=64))
    return bytes(data)


@FUZZ
@given(data=image_bytes())
@example(data=b"")
@example(data=_png_header(30000, 30000))  # a 900-megapixel claim in 60 bytes
@example(data=_png_header(0, 5))
def test_decode_image_returns_rgb_or_a_data_error(scratch, data):
    p = write_file(scratch / "img", "x.png", data)
    try:
        img = decode_image(p)
    except DataError as e:
        assert str(e).startswith(f"{p}: ") and "\n" not in str(e)
        return
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 1


@FUZZ
@given(files=st.lists(image_bytes(), min_size=1, max_size=4), on_bad=st.sampled_from(["skip", "fail"]))
def test_the_decode_task_skips_and_counts_or_fails_with_a_data_error(scratch, files, on_bad):
    folder = scratch / "chunk"
    shutil.rmtree(folder, ignore_errors=True)
    paths = [(str(write_file(folder, f"{i}.png", b)), i) for i, b in enumerate(files)]
    fn = _CifarDecoder("folders", (8, 16), on_bad)
    try:
        table = fn.table(paths)
    except DataError:
        assert on_bad == "fail"
        return
    out = {k: column_array(table, k) for k in table.column_names}
    n = len(out["label"])
    assert n <= len(files) and out["img8"].shape == (n, 8, 8, 3) and out["img16"].shape == (n, 16, 16, 3)
    assert out["img16"].dtype == np.uint8


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch /tmp/fastray-fuzz-pwned",))


def _batch_pickle(draw) -> bytes:
    """A pickle shaped like a CIFAR batch, or not quite."""
    n = draw(st.integers(0, 4))
    kind = draw(st.sampled_from(["good", "short-data", "labels-mismatch", "no-labels", "wrong-types", "code",
                                 "numpy-object"]))
    data = np.random.default_rng(n).integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = list(range(n))
    if kind == "short-data":
        data = data[:, :100]
    if kind == "labels-mismatch":
        labels = labels + [1]
    batch = {b"data": data, b"labels": labels}
    if kind == "no-labels":
        del batch[b"labels"]
    if kind == "wrong-types":
        batch = {b"data": "pixels", b"labels": {"a": 1}}
    if kind == "code":
        batch = {b"data": _RunsCode(), b"labels": []}
    if kind == "numpy-object":
        batch = {b"data": np.array([_RunsCode()], dtype=object), b"labels": [0]}
    return pickle.dumps(batch, protocol=draw(st.integers(0, 5))), kind == "good"


@FUZZ
@given(case=st.one_of(st.binary(max_size=400).map(lambda b: (b, False)), st.composite(_batch_pickle)()))
def test_a_pickle_batch_loads_or_is_a_data_error_and_never_runs_code(scratch, case):
    data, must_load = case
    marker = Path("/tmp/fastray-fuzz-pwned")
    marker.unlink(missing_ok=True)
    p = write_file(scratch / "pickle", "data_batch_1", data)
    try:
        imgs, labels = _load_batch(p)
    except DataError as e:
        assert not must_load, e  # a well-formed batch, whatever the pickle protocol, loads
        assert str(e).startswith(f"{p}: ")
    else:
        assert imgs.dtype == np.uint8 and imgs.shape[1:] == (32, 32, 3) and len(labels) == len(imgs)
    assert not marker.exists(), "unpickling a batch ran code"


NAMES = ["train", "test", "cat", "dog", "x.png", "y.jpg", "labels.txt", "data_batch_1", "test_batch", "batches.meta",
         "cifar10", "pos", "neg", "unsup", "a.txt", "aclImdb", "wiki.train.tokens", "wiki.valid.tokens"]


@st.composite
def folder_tree(draw, depth=0):
    """{name: bytes (a file) or a sub-tree (a folder)} from names the readers look for."""
    names = draw(st.lists(st.sampled_from(NAMES), max_size=5, unique=True))
    tree = {}
    for n in names:
        if depth < 3 and draw(st.booleans()):
            tree[n] = draw(folder_tree(depth + 1))
        else:
            tree[n] = draw(st.one_of(st.binary(max_size=64), st.just(_encoded("PNG", 4, 4, 0)), st.just(b"a review\n")))
    return tree


def _make_tree(root: Path, tree: dict) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, v in tree.items():
        if isinstance(v, dict):
            _make_tree(root / name, v)
        else:
            (root / name).write_bytes(v)


@FUZZ
@given(tree=folder_tree())
def test_finding_cifar10_imdb_or_wikitext_in_any_tree(scratch, tree):
    root = scratch / "tree"
    shutil.rmtree(root, ignore_errors=True)
    _make_tree(root, tree)
    for find in (find_cifar10, find_imdb, find_wikitext):
        try:
            src = find(root)
        except DataError as e:
            assert "\n" not in str(e)
            continue
        files = src.input_files()
        assert files and all(Path(f).is_file() for f in files)


# ---------------------------------------------------------------- text


@FUZZ
@given(data=st.one_of(st.binary(max_size=400), st.text(max_size=200).map(str.encode),
                      st.sampled_from([b"", b"   \n\t ", b"<br /><br />", b"&#39;", b"\xef\xbb\xbf", b"caf\xe9"])))
def test_an_imdb_review_is_text_or_a_data_error(scratch, data):
    p = write_file(scratch / "imdb", "0_1.txt", data)
    [(doc, label)] = list(iter_docs("imdb", [(str(p), 1)]))
    assert label == 1
    if isinstance(doc, DataError):
        assert str(doc).startswith(f"{p}: ")
    else:
        assert isinstance(doc, str) and doc.strip()


@st.composite
def wikitext_bytes(draw):
    """Token-file look-alikes: title and section lines, text lines, random bytes."""
    lines = draw(st.lists(st.one_of(
        st.text(max_size=12).map(lambda t: f" = {t} = \n"),
        st.text(max_size=12).map(lambda t: f" = = {t} = = \n"),
        st.text(max_size=40).map(lambda t: t + "\n"),
        st.binary(max_size=20),
    ), max_size=12))
    return b"".join(l if isinstance(l, bytes) else l.encode() for l in lines)


@FUZZ
@given(data=wikitext_bytes(), cpus=st.integers(1, 4))
@example(data=b"", cpus=1)
def test_wikitext_articles_are_text_or_data_errors(scratch, data, cpus):
    root = scratch / "wt"
    shutil.rmtree(root, ignore_errors=True)
    write_file(root, "wiki.train.tokens", data)
    try:
        src = find_wikitext(root)
    except DataError as e:
        assert not data and "empty file" in str(e)
        return
    seen = 0
    for chunk in _chunks(src, "train", cpus, 0, None):
        for doc, label in iter_docs("wikitext", chunk):
            assert label == -1 and isinstance(doc, (str, DataError))
            seen += 1
    titles = sum(1 for l in data.split(b"\n") if is_title(l + b"\n"))
    assert seen <= titles + 1


COLUMN_VALUES = {
    "string": st.lists(st.one_of(st.none(), st.text(max_size=20)), min_size=1, max_size=5),
    "int": st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=5),
    "uint64": st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=5),
    "float": st.lists(st.floats(allow_nan=True), min_size=1, max_size=5),
    "bool": st.lists(st.booleans(), min_size=1, max_size=5),
    "binary": st.lists(st.binary(max_size=8), min_size=1, max_size=5),
    "list": st.lists(st.lists(st.integers(0, 9), max_size=3), min_size=1, max_size=5),
    "null": st.lists(st.none(), min_size=1, max_size=5),
}
ARROW = {"string": pa.string(), "int": pa.int64(), "uint64": pa.uint64(), "float": pa.float64(), "bool": pa.bool_(),
         "binary": pa.binary(), "list": pa.list_(pa.int64()), "null": pa.null()}


@st.composite
def table_file(draw):
    """(suffix, bytes): a CSV/TSV with a plausible header and random rows, random bytes, or
    a parquet file whose text and label columns have random types."""
    kind = draw(st.sampled_from(["csv", "tsv", "parquet", "junk"]))
    if kind == "junk":
        return draw(st.sampled_from([".csv", ".parquet", ".tsv"])), draw(st.binary(max_size=200))
    if kind in ("csv", "tsv"):
        sep = "," if kind == "csv" else "\t"
        header = draw(st.sampled_from([f"text{sep}label", f"label{sep}text", "text", f"body{sep}label", ""]))
        rows = draw(st.lists(st.text(max_size=30), max_size=6))
        return f".{kind}", (header + "\n" + "\n".join(rows)).encode("utf-8", "surrogatepass")
    text_t, label_t = draw(st.sampled_from(list(ARROW))), draw(st.sampled_from(list(ARROW)))
    texts, labels = draw(COLUMN_VALUES[text_t]), draw(COLUMN_VALUES[label_t])
    n = min(len(texts), len(labels))
    table = pa.table({"text": pa.array(texts[:n], ARROW[text_t]), "label": pa.array(labels[:n], ARROW[label_t])})
    out = io.BytesIO()
    pq.write_table(table, out)
    return ".parquet", out.getvalue()


@FUZZ
@given(f=table_file())
def test_a_table_is_read_or_is_a_data_error(scratch, f):
    suffix, data = f
    p = write_file(scratch / "table", f"corpus{suffix}", data)
    try:
        src = find_table(p)
        texts, labels, classes = table_labels(src)
    except DataError as e:
        assert str(p) in str(e) and "\n" not in str(e)
        return
    assert len(texts["train"]) == len(labels["train"]) and labels["train"].dtype == np.int64
    chunks = _chunks(src, "train", 2, 0, {"texts": texts, "labels": labels})
    for chunk in chunks:
        for doc, label in iter_docs("table", chunk):
            assert isinstance(doc, (str, DataError)) and isinstance(label, int)


# ---------------------------------------------------------------- the README's rows, pinned


@pytest.mark.filterwarnings("ignore:Image size")
def test_an_image_claiming_100_megapixels_is_refused_before_decoding(tmp_path):
    p = write_file(tmp_path, "big.png", _png_header(10000, 10000))  # PIL itself only warns at this size
    with pytest.raises(DataError, match=r"big.png: not a readable image \(ValueError: claims 10000x10000 pixels"):
        decode_image(p)


def test_a_damaged_batches_meta_costs_only_the_class_names(tmp_path, capsys):
    d = tmp_path / "cifar-10-batches-py"
    batch = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]})
    for name in ("data_batch_1", "test_batch"):
        write_file(d, name, batch)
    write_file(d, "batches.meta", b"\x80\x04garbage")
    src = find_cifar10(tmp_path)
    assert src.classes == [f"class{i}" for i in range(10)]
    assert "batches.meta: unreadable" in capsys.readouterr().err


def test_a_non_utf8_wikitext_article_is_one_counted_skip(tmp_path):
    p = write_file(tmp_path, "wiki.train.tokens", b" = Good = \n fine text \n = Bad = \n caf\xe9 \n")
    docs = list(iter_docs("wikitext", (str(p), 0, p.stat().st_size)))
    assert [type(d) for d, _ in docs] == [str, DataError]
    assert str(docs[1][0]) == f"{p}: article at byte 23: not UTF-8 text (byte 0xe9 at offset 14)"


@pytest.mark.parametrize("column, msg", [
    ({"text": pa.array([[1, 2]]), "label": pa.array([0])}, r"column 'text' is list<\w+: int64>; expected text"),
    ({"text": pa.array([b"\xff"], pa.binary()), "label": pa.array([0])}, "column 'text' is binary that is not UTF-8"),
    ({"text": pa.array(["a"]), "label": pa.array([0.5])}, "label column 'label' is double; expected integers or strings"),
    ({"text": pa.array(["a"]), "label": pa.array([2**64 - 1], pa.uint64())}, "label column 'label' does not fit int64"),
])
def test_a_table_column_of_the_wrong_type_is_a_data_error(tmp_path, column, msg):
    p = tmp_path / "t.parquet"
    pq.write_table(pa.table(column), p)
    with pytest.raises(DataError, match=msg):
        table_labels(find_table(p))


def test_empty_table_rows_are_counted_skips(tmp_path):
    p = write_file(tmp_path, "t.csv", b'text,label\n"good one",1\n"",0\n"   ",1\n')
    src = find_table(p)
    texts, labels, _ = table_labels(src)
    [chunk] = _chunks(src, "train", 1, 0, {"texts": texts, "labels": labels})
    docs = [d for d, _ in iter_docs("table", chunk)]
    assert docs[0] == "good one" and [str(d) for d in docs[1:]] == [f"{p}: row 1: empty document", f"{p}: row 2: empty document"]
