"""Text readers: the shipped formats -> TextSource (IMDb's aclImdb/, WikiText token
files, a CSV or parquet table), and a table's texts and labels.

Only regular files are read (preprocessing/__init__.py): an IMDb entry named *.txt that is
a FIFO, a socket, a device, a folder or a dangling symlink is left out at listing
(TextSource.unusable), a counted skip under --on-bad-input skip, a DataError naming it
under fail (text.encoding.tokenize applies the policy); a WikiText token file or a table
that is there but is not a regular file is a DataError naming it."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from .. import DataError, data_folder, file_problem, regular_file, with_subfolders

IMDB_CLASSES = ["neg", "pos"]
WIKITEXT_FILES = {"train": "wiki.train.tokens", "valid": "wiki.valid.tokens", "test": "wiki.test.tokens"}


@dataclass
class TextSource:
    """What a reader found. ``splits`` maps a split to its inputs, per kind (paths are
    absolute strings: 100,000 Path objects cost a cache hit more than its stat calls):

    - "imdb": ``(path, label)`` of every review file (label -1 in "unsup");
    - "wikitext": ``(path, start, stop)``: the byte span of a token file (the whole file);
      the articles whose title line starts in the span are its documents;
    - "table": ``(path, 0, -1)``: every row of one CSV or parquet file.
    """

    root: Path
    kind: Literal["imdb", "wikitext", "table"]
    splits: dict[str, list] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)  # label i is classes[i]; a table's fill in at tokenize
    options: dict = field(default_factory=dict)  # table: text_col, label_col
    # per split, the listed entries that are not regular files: (path, reason)
    unusable: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def input_files(self) -> list[str]:
        """Every input file once, in a fixed order (IMDb's are unique and sorted per folder)."""
        if self.kind == "imdb":
            return [p for items in self.splits.values() for p, _ in items]
        return sorted({item[0] for items in self.splits.values() for item in items})

    def train_splits(self) -> list[str]:
        """The splits SentencePiece learns from: training text, labelled or not."""
        return [s for s in ("train", "unsup") if s in self.splits] or [next(iter(self.splits))]


def find_imdb(data_dir: str | Path) -> TextSource:
    """IMDb's aclImdb/ (or fast.ai's imdb/) at data_dir or one folder below it (as the archive
    extracts): {train,test}/{pos,neg}/*.txt are required, train/unsup/*.txt (fast.ai's copy:
    unsup/*.txt) is optional."""
    root = data_folder(data_dir)
    found = next((c for c in with_subfolders(root) if (c / "train").is_dir() and (c / "test").is_dir()), None)
    if found is None:
        raise DataError(f"{root}: no IMDb here (expected aclImdb/ with train/pos, train/neg, test/pos, test/neg)")
    splits: dict[str, list] = {}
    unusable: dict[str, list[tuple[str, str]]] = {}
    for split, name in (("train", "train"), ("valid", "test")):
        items: list = []
        unusable[split] = []
        for label, cls in enumerate(IMDB_CLASSES):
            d = found / name / cls
            if not d.is_dir():
                raise DataError(f"{d}: missing (expected {d}/*.txt, one review a file)")
            files = _txt_files(d, unusable[split])
            if not files:
                raise DataError(f"{d}: no reviews (expected {d}/*.txt)")
            items += [(f, label) for f in files]
        splits[split] = items
    # aclImdb keeps the unlabelled reviews in train/unsup/, fast.ai's imdb.tgz in unsup/
    unsup = next((d for d in (found / "train" / "unsup", found / "unsup") if d.is_dir()), None)
    if unsup is not None:
        bad: list[tuple[str, str]] = []
        files = _txt_files(unsup, bad)
        if files:
            splits["unsup"], unusable["unsup"] = [(f, -1) for f in files], bad
    return TextSource(found, "imdb", splits, list(IMDB_CLASSES), unusable=unusable)


def _txt_files(d: Path, unusable: list[tuple[str, str]]) -> list[str]:
    """The regular files (or symlinks to one) named *.txt in d, sorted, as strings; each
    other *.txt entry is appended to `unusable` as (path, reason). DirEntry.is_file needs
    no stat call for a plain file, so 100,000 reviews list as fast as before."""
    names, bad = [], []
    with os.scandir(d) as it:
        for e in it:
            if e.name.endswith(".txt"):
                (names if e.is_file() else bad).append(e.name)
    for n in sorted(bad):
        p = f"{d}{os.sep}{n}"
        problem = file_problem(p)
        if problem is None:  # became a regular file since the listing
            names.append(n)
        else:
            unusable.append((p, problem))
    return [f"{d}{os.sep}{n}" for n in sorted(names)]


def find_wikitext(data_dir: str | Path) -> TextSource:
    """WikiText-103 (or -2) token files at data_dir or one folder below it: wiki.train.tokens
    is required, wiki.valid.tokens and wiki.test.tokens are used when present."""
    root = data_folder(data_dir)
    # lexists: a token file there that is not a regular file (a FIFO) is named in an error
    found = next((c for c in with_subfolders(root) if os.path.lexists(c / WIKITEXT_FILES["train"])), None)
    if found is None:
        raise DataError(f"{root}: no WikiText here (expected wiki.train.tokens, wiki.valid.tokens, wiki.test.tokens)")
    splits = {}
    for split, name in WIKITEXT_FILES.items():
        f = found / name
        if os.path.lexists(f):
            size = regular_file(f).stat().st_size
            if size == 0:
                raise DataError(f"{f}: empty file")
            splits[split] = [(str(f), 0, size)]
    return TextSource(found, "wikitext", splits)


def find_table(
    paths: str | Path | dict[str, str | Path], text_col: str = "text", label_col: str | None = "label"
) -> TextSource:
    """A user's corpus: one CSV or parquet file (split "train") or {split: file}. The text
    column is required; the label column is used when the file has it (integers as they
    are, strings numbered in sorted order), else every label is -1."""
    named = {"train": paths} if isinstance(paths, (str, Path)) else dict(paths)
    if not named:
        raise ValueError("find_table needs at least one file")
    splits, has_label = {}, []
    for split, p in named.items():
        p = regular_file(p)  # a FIFO, a folder, a dangling link: a DataError naming it
        cols = _table_columns(p)
        if text_col not in cols:
            raise DataError(f"{p}: no column {text_col!r} (columns: {', '.join(cols)})")
        has_label.append(label_col is not None and label_col in cols)
        splits[split] = [(str(p), 0, -1)]
    if any(has_label) and not all(has_label):
        raise DataError(f"column {label_col!r} is in some of the files but not all: {', '.join(map(str, named.values()))}")
    root = Path(os.path.commonpath([os.path.dirname(p[0][0]) for p in splits.values()]))
    opts = {"text_col": text_col, "label_col": label_col if any(has_label) else None}
    return TextSource(root, "table", splits, [], opts)


def _table_columns(path: Path) -> list[str]:
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        if path.suffix.lower() in (".csv", ".tsv"):
            import pyarrow.csv as pcsv

            with pcsv.open_csv(path, parse_options=_csv_parse(path)) as reader:
                return list(reader.schema.names)
    except Exception as e:
        raise DataError(f"{path}: not a readable {path.suffix[1:]} file ({type(e).__name__}: {e})") from None
    raise DataError(f"{path}: expected a .csv, .tsv or .parquet file")


def _csv_parse(path: Path):
    import pyarrow.csv as pcsv

    return pcsv.ParseOptions(delimiter="\t" if path.suffix.lower() == ".tsv" else ",", newlines_in_values=True)


def _load_table(path: Path, text_col: str, label_col: str | None):
    """(texts, raw label values or None) of a whole table, read by pyarrow."""
    cols = [text_col] + ([label_col] if label_col else [])
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            table = pq.read_table(path, columns=cols)
        else:
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(
                path,
                parse_options=_csv_parse(path),
                convert_options=pcsv.ConvertOptions(include_columns=cols, strings_can_be_null=False),
            )
    except Exception as e:
        raise DataError(f"{path}: not a readable table ({type(e).__name__}: {e})") from None
    texts = table.column(text_col)
    import pyarrow as pa

    if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
        kind = texts.type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
                or pa.types.is_null(kind) or pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
            raise DataError(f"{path}: column {text_col!r} is {kind}; expected text")
        try:
            texts = texts.cast(pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:  # binary that is not UTF-8
            raise DataError(f"{path}: column {text_col!r} is {kind} that is not UTF-8 text ({e})") from None
    labels = table.column(label_col) if label_col else None
    return texts.to_pylist(), labels


def table_labels(source: TextSource) -> tuple[dict[str, list], dict[str, np.ndarray], list[str]]:
    """Every split's texts and int64 labels, and the class names (strings numbered sorted)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    opts = source.options
    texts, raw = {}, {}
    for split, [(path, _, _)] in source.splits.items():
        texts[split], raw[split] = _load_table(Path(path), opts["text_col"], opts["label_col"])
    if opts["label_col"] is None:
        return texts, {s: np.full(len(t), -1, np.int64) for s, t in texts.items()}, []
    kinds = {str(r.type) for r in raw.values()}
    if all(pa.types.is_integer(r.type) or pa.types.is_boolean(r.type) or pa.types.is_null(r.type) for r in raw.values()):
        try:
            labels = {s: np.asarray(pc.fill_null(r.cast(pa.int64()), -1).to_numpy(), np.int64) for s, r in raw.items()}
        except pa.ArrowInvalid as e:  # uint64 beyond int64
            paths = ", ".join(str(items[0][0]) for items in source.splits.values())
            raise DataError(f"{paths}: label column {opts['label_col']!r} does not fit int64 ({e})") from None
        return texts, labels, []
    if all(pa.types.is_string(r.type) or pa.types.is_large_string(r.type) or pa.types.is_null(r.type) for r in raw.values()):
        values = {s: r.to_pylist() for s, r in raw.items()}
        classes = sorted({v for vs in values.values() for v in vs if v not in (None, "")})
        index = {c: i for i, c in enumerate(classes)}
        labels = {s: np.asarray([index.get(v, -1) for v in vs], np.int64) for s, vs in values.items()}
        return texts, labels, classes
    paths = ", ".join(str(items[0][0]) for items in source.splits.values())
    raise DataError(f"{paths}: label column {opts['label_col']!r} is {'/'.join(sorted(kinds))}; expected integers or strings")


