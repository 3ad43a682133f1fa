"""A user's labelled table for text classification (text-lm, text-clas): a CSV, TSV or
parquet file with a text column and one label column (single-label: any values) or several
0/1 columns (multi-label: Kaggle's toxic comments), and optionally a test table without
labels whose predictions make a submission.

``find_tables`` finds the files, ``resolve_columns`` the columns (named, or found from the
header: a clear error naming the columns when that is ambiguous), and ``prepare`` builds
a cache entry, content-addressed like every other: the labels checked (a bad row is a
counted skip, or under on_bad="fail" one line naming the file, row and value), the rows
split into train and valid (a ``split`` column, else a seeded stratified fraction), and per
split a parquet of ``text`` and ``row`` that text.encoding.tokenize reads as a table whose
"label" is the row. The labels stay beside it (``labels_<split>.npy``: (n, K) int8 for
multi-label, (n,) int64 class numbers for single-label), so one token cache serves the
language model and the classifier, and a worker maps a document back to its labels (or, in
the test split, to its id) through its row.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import DataError, data_folder, regular_file, with_subfolders
from ..cache import Cache, digest, fingerprint_paths
from .documents import fixup
from .readers import _csv_parse, _table_columns

TABLE_VERSION = "table-v1"  # bump when checking, splitting or writing changes its output
SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")
TEXT_NAMES = {"text", "comment_text", "comment", "review", "sentence", "document", "content", "body", "message",
              "tweet", "abstract"}  # the text column among several string columns
SPLIT_VALUES = {"train": "train", "valid": "valid", "validation": "valid", "val": "valid", "dev": "valid"}


@dataclass(frozen=True)
class Columns:
    """What a table's columns mean, resolved once from the training table's header."""

    text: str                   # the documents
    labels: tuple[str, ...]     # one (single-label) or several 0/1 columns (multi-label)
    multi: bool                 # several labels at once: one sigmoid each
    split: str | None = None    # a column of train / valid, when the table has one
    id: str | None = None       # the rows' ids (a test table's go into the submission)


def _is_id(name: str) -> bool:
    n = name.lower()
    return n == "id" or n.endswith("_id") or n == "index" or n.startswith("unnamed:")


def find_tables(data: str | Path) -> tuple[Path, Path | None]:
    """(training table, test table or None). `data` is a table file, or a folder holding
    train.{csv,tsv,parquet} (test.* beside it is the test table) or a single table, there
    or one folder below (as Kaggle's zip extracts)."""
    p = Path(data).absolute()
    if p.exists() and not p.is_dir():
        f = regular_file(p)
        if f.suffix.lower() not in SUFFIXES:
            raise DataError(f"{f}: expected a .csv, .tsv or .parquet table")
        return f, None
    root = data_folder(p)
    for folder in with_subfolders(root):
        tables = sorted(f for f in folder.iterdir() if f.suffix.lower() in SUFFIXES and f.is_file())
        train = [f for f in tables if f.stem.lower() == "train"]
        test = [f for f in tables if f.stem.lower() == "test"]
        if len(train) > 1 or len(test) > 1:
            raise DataError(f"{folder}: several training or test tables ({', '.join(f.name for f in train + test)}); "
                            "pass the one to use as --data")
        if train:
            return train[0], test[0] if test else None
        if len(tables) == 1 and folder == root:
            return tables[0], None
    raise DataError(f"{root}: no train.csv, train.tsv or train.parquet here or one folder below "
                    "(or pass the table file itself as --data)")


def _schema(path: Path) -> dict[str, str]:
    """Column -> its kind ("string", "int", "float", "bool", "null", "other") from the header
    and, for a CSV, pyarrow's type inference on its first block."""
    import pyarrow as pa

    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            schema = pq.read_schema(path)
        else:
            import pyarrow.csv as pcsv

            with pcsv.open_csv(path, parse_options=_csv_parse(path)) as reader:
                schema = reader.schema
    except Exception:
        _table_columns(path)  # its DataError names the file
        raise
    kinds = {}
    for f in schema:
        t = f.type
        kinds[f.name] = ("string" if pa.types.is_string(t) or pa.types.is_large_string(t) else
                         "int" if pa.types.is_integer(t) else "float" if pa.types.is_floating(t) else
                         "bool" if pa.types.is_boolean(t) else "null" if pa.types.is_null(t) else "other")
    return kinds


def resolve_columns(path: Path, text_col: str = "", label_cols: tuple[str, ...] = ()) -> Columns:
    """The text and label columns of the training table: as named, or found from the header.
    Found: the text column is the one string column that is not an id or split column (of
    several, the one with a usual name: text, comment_text, review ... TEXT_NAMES); the
    label columns are every other column but ids and `split` (several must all be 0/1
    integers). Anything ambiguous is a DataError naming the columns and the field to set."""
    kinds = _schema(path)
    names = list(kinds)
    listing = f"(columns: {', '.join(names)})"
    if text_col and text_col not in kinds:
        raise DataError(f"{path}: no text column {text_col!r} {listing}")
    missing = [c for c in label_cols if c not in kinds]
    if missing:
        raise DataError(f"{path}: no label column {', '.join(map(repr, missing))} {listing}")
    split = "split" if "split" in kinds and "split" not in label_cols and text_col != "split" else None
    ids = [n for n in names if _is_id(n) and n not in label_cols and n != text_col]
    rest = [n for n in names if n not in ids and n != split]
    if not text_col:
        texts = [n for n in rest if kinds[n] == "string" and n not in label_cols]
        named = [n for n in texts if n.lower() in TEXT_NAMES]
        if len(texts) > 1 and len(named) == 1:  # a string label column beside a column called text, review ...
            texts = named
        if len(texts) != 1:
            found = f"several string columns ({', '.join(texts)})" if texts else "no string column"
            raise DataError(f"{path}: cannot tell the text column: {found} {listing}; set --set text_col=NAME")
        text_col = texts[0]
    if not label_cols:
        cands = tuple(n for n in rest if n != text_col)
        if not cands:
            raise DataError(f"{path}: no label column besides the text {text_col!r} {listing}; a table to classify "
                            "needs one label column or several 0/1 columns")
        if len(cands) > 1 and any(kinds[c] not in ("int", "bool") for c in cands):
            raise DataError(f"{path}: cannot tell the label columns among {', '.join(cands)}: several columns, not "
                            "all of them 0/1 integers; set --set label_cols=NAME or label_cols=A,B,C")
        label_cols = cands
    if text_col in label_cols:
        raise DataError(f"{path}: column {text_col!r} cannot be both the text and a label")
    multi = len(label_cols) > 1
    for c in label_cols:
        if multi and kinds[c] not in ("int", "bool", "float", "null"):
            raise DataError(f"{path}: label column {c!r} holds {kinds[c]} values; a multi-label column holds 0 or 1")
        if not multi and kinds[c] not in ("int", "bool", "string", "null"):
            raise DataError(f"{path}: label column {c!r} holds {kinds[c]} values; expected integers or strings")
    return Columns(text_col, tuple(label_cols), multi, split, next((n for n in ids if n.lower() == "id"), None))


def _read(path: Path, columns: list[str]):
    """The named columns of a whole table (pyarrow), every value as read; DataError naming the file."""
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return pq.read_table(path, columns=columns)
        import pyarrow as pa
        import pyarrow.csv as pcsv

        # labels read as text for a CSV, so that a "yes" in row 9000 is named, not a parse error
        return pcsv.read_csv(path, parse_options=_csv_parse(path), convert_options=pcsv.ConvertOptions(
            include_columns=columns, column_types={c: pa.string() for c in columns}, strings_can_be_null=True))
    except Exception as e:
        raise DataError(f"{path}: not a readable table ({type(e).__name__}: {str(e).splitlines()[0]})") from None


def _texts(table, path: Path, col: str) -> list[str | None]:
    import pyarrow as pa

    texts = table.column(col)
    if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
        try:
            texts = texts.cast(pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise DataError(f"{path}: column {col!r} is {texts.type}, not text ({e})") from None
    return texts.to_pylist()


def _binary(values: list, col: str) -> tuple[np.ndarray, list[tuple[int, object]]]:
    """A multi-label column -> (int8 0/1 with -1 at bad rows, [(row, value)] of the bad ones)."""
    out = np.full(len(values), -1, np.int8)
    bad = []
    for i, v in enumerate(values):
        s = str(v).strip().lower() if v is not None else ""
        if s in ("0", "1", "0.0", "1.0", "true", "false"):
            out[i] = 1 if s in ("1", "1.0", "true") else 0
        else:
            bad.append((i, v))
    return out, bad


class _Skips:
    """Per-split counts of skipped rows by reason, with the first few messages; under
    on_bad="fail" the first one raises."""

    def __init__(self, on_bad: str):
        if on_bad not in ("skip", "fail"):
            raise ValueError(f"on_bad must be 'skip' or 'fail', got {on_bad!r}")
        self.on_bad, self.counts, self.first = on_bad, {}, []

    def add(self, split: str, reason: str, message: str) -> None:
        if self.on_bad == "fail":
            raise DataError(message)
        by = self.counts.setdefault(split, {})
        by[reason] = by.get(reason, 0) + 1
        if len(self.first) < 3:
            self.first.append(message)


def _stratified_valid(strata: np.ndarray, frac: float, seed: int) -> np.ndarray:
    """A bool mask of the rows that go to valid: `frac` of each stratum (at least one of a
    stratum of two or more), chosen by a seeded permutation."""
    rng = np.random.default_rng(seed)
    valid = np.zeros(len(strata), bool)
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        k = int(round(frac * len(idx)))
        k = max(k, 1) if len(idx) >= 2 and frac > 0 else k
        valid[rng.permutation(idx)[:k]] = True
    return valid


def prepare(train_path: Path, test_path: Path | None, cols: Columns, cache: Cache, *, valid_frac: float = 0.1,
            seed: int = 0, on_bad: str = "skip") -> tuple[dict, bool]:
    """The cache entry of a labelled table (see the module docstring): (manifest, hit).
    The manifest holds the columns, the classes (multi-label: the label columns), the rows,
    skips and positives per split, and ``dir``, the entry's folder."""
    if not 0 < valid_frac < 1:
        raise ValueError(f"valid_frac must be in (0, 1), got {valid_frac}")
    files = [str(train_path)] + ([str(test_path)] if test_path else [])
    root = Path(os.path.commonpath([os.path.dirname(f) for f in files]))
    key = digest({"inputs": fingerprint_paths(files, root), "files": [os.path.relpath(f, root) for f in files],
                  "columns": [cols.text, list(cols.labels), cols.multi, cols.split, cols.id],
                  "valid_frac": valid_frac if cols.split is None else None, "seed": seed, "on_bad": on_bad,
                  "version": TABLE_VERSION})
    if test_path is not None:  # before any work: the test table must have the training table's text column
        test_cols = _table_columns(test_path)
        if cols.text not in test_cols:
            raise DataError(f"{test_path}: no text column {cols.text!r} (columns: {', '.join(test_cols)}); the test "
                            f"table must name its text column as {train_path.name} does")

    def make(tmp: Path) -> dict:
        import pyarrow as pa
        import pyarrow.parquet as pq

        tmp.mkdir(parents=True)
        skips = _Skips(on_bad)
        t = _read(train_path, [cols.text, *cols.labels] + ([cols.split] if cols.split else []))
        texts = _texts(t, train_path, cols.text)
        ok = np.ones(len(texts), bool)
        for i, s in enumerate(texts):
            if s is None or not fixup(s).strip():
                ok[i] = False
                skips.add("train", "missing or empty text", f"{train_path}: row {i}: {'missing' if s is None else 'empty'} "
                          f"text in column {cols.text!r}")
        if cols.multi:
            y = np.zeros((len(texts), len(cols.labels)), np.int8)
            for k, c in enumerate(cols.labels):
                y[:, k], bad = _binary(t.column(c).to_pylist(), c)
                for i, v in bad:
                    if ok[i]:
                        ok[i] = False
                        skips.add("train", "label not 0/1", f"{train_path}: row {i}: column {c!r} is "
                                  f"{'missing' if v is None else repr(v)}; a multi-label column holds 0 or 1")
            classes = list(cols.labels)
        else:
            raw = [None if v is None or not str(v).strip() else str(v).strip() for v in t.column(cols.labels[0]).to_pylist()]
            for i, v in enumerate(raw):
                if v is None and ok[i]:
                    ok[i] = False
                    skips.add("train", "missing label", f"{train_path}: row {i}: no label in column {cols.labels[0]!r}")
            values = sorted({v for v, good in zip(raw, ok) if good})
            as_int = all(v.lstrip("-").isdigit() for v in values)
            classes = [str(v) for v in sorted(values, key=int)] if as_int else values
            index = {c: j for j, c in enumerate(classes)}
            y = np.asarray([index[str(int(v)) if as_int else v] if good else -1 for v, good in zip(raw, ok)], np.int64)
            if len(classes) < 2:
                raise DataError(f"{train_path}: label column {cols.labels[0]!r} has {len(classes)} value(s) "
                                f"({', '.join(classes)}); a classifier needs two or more")
        if cols.split:
            where = [str(v).strip().lower() if v is not None else "" for v in t.column(cols.split).to_pylist()]
            unknown = next(((i, v) for i, v in enumerate(where) if v not in SPLIT_VALUES), None)
            if unknown:
                raise DataError(f"{train_path}: row {unknown[0]}: column 'split' is {unknown[1]!r}; expected train or valid")
            valid = np.asarray([SPLIT_VALUES[v] == "valid" for v in where])
            if not (valid & ok).any() or not (~valid & ok).any():
                raise DataError(f"{train_path}: column 'split' leaves no usable {'valid' if (~valid & ok).any() else 'train'} rows")
        else:  # stratified: by class, or by a row's rarest positive label (rare labels reach valid)
            if cols.multi:
                rarity = np.argsort(np.argsort(y[ok].sum(0)))  # 0 = the rarest label
                ranked = np.where(y > 0, rarity[None, :], len(cols.labels))
                strata = ranked.min(1)
            else:
                strata = y
            valid = np.zeros(len(texts), bool)
            valid[ok] = _stratified_valid(strata[ok], valid_frac, seed)
        rows, positives = {}, {}
        for split, mask in (("train", ok & ~valid), ("valid", ok & valid)):
            idx = np.flatnonzero(mask)
            pq.write_table(pa.table({"text": [texts[i] for i in idx], "row": np.arange(len(idx), dtype=np.int64),
                                     "source_row": idx.astype(np.int64)}), tmp / f"{split}.parquet")
            np.save(tmp / f"labels_{split}.npy", y[idx])
            rows[split] = len(idx)
            positives[split] = ({c: int(v) for c, v in zip(classes, y[idx].sum(0))} if cols.multi else
                                {c: int(v) for c, v in zip(classes, np.bincount(y[idx], minlength=len(classes)))})
        if test_path is not None:
            id_col = "id" if "id" in _table_columns(test_path) else None
            tt = _read(test_path, [cols.text] + ([id_col] if id_col else []))
            test_texts = _texts(tt, test_path, cols.text)
            ids = [str(v) for v in tt.column(id_col).to_pylist()] if id_col else [str(i) for i in range(len(test_texts))]
            keep = []
            for i, s in enumerate(test_texts):
                if s is None or not fixup(s).strip():
                    skips.add("test", "missing or empty text", f"{test_path}: row {i}: {'missing' if s is None else 'empty'} "
                              f"text in column {cols.text!r} (its submission row is predicted from no text)")
                else:
                    keep.append(i)
            pq.write_table(pa.table({"text": [test_texts[i] for i in keep], "row": np.asarray(keep, np.int64)}),
                           tmp / "test.parquet")
            pq.write_table(pa.table({"id": ids}), tmp / "test_ids.parquet")
            rows["test"] = len(keep)
        for split, by in skips.counts.items():
            n = sum(by.values())
            print(f"warning: {split}: skipped {n} row(s) ({', '.join(f'{v} {k}' for k, v in by.items())}) "
                  f"(--on-bad-input fail stops at the first): {'; '.join(skips.first)}", file=sys.stderr)
        return {"text_col": cols.text, "label_cols": list(cols.labels), "multi": cols.multi, "split_col": cols.split,
                "classes": classes, "n_out": len(classes), "rows": rows, "positives": positives,
                "skipped": {s: sum(by.values()) for s, by in skips.counts.items()}, "bad_input": skips.counts,
                "source": {"train": str(train_path), "test": str(test_path) if test_path else None}}

    manifest, hit = cache.build("table", key, make)
    return dict(manifest, dir=str(cache.path("table", key))), hit


def split_files(manifest: dict) -> dict[str, Path]:
    """{split: its parquet of text and row}, for text.readers.find_table(..., "text", "row")."""
    return {s: Path(manifest["dir"]) / f"{s}.parquet" for s in manifest["rows"]}


def labels(manifest: dict, split: str) -> np.ndarray:
    """The labels of a split's rows: (n, K) int8 0/1 (multi-label) or (n,) int64 class numbers."""
    return np.load(Path(manifest["dir"]) / f"labels_{split}.npy")


def test_ids(manifest: dict) -> list[str]:
    """The test table's ids, one per row (its row numbers when it has no id column)."""
    import pyarrow.parquet as pq

    return [str(v) for v in pq.read_table(Path(manifest["dir"]) / "test_ids.parquet").column("id").to_pylist()]
