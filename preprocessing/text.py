"""Text data sets through Ray Data: readers of the shipped formats, SentencePiece trained
once on a sample, documents encoded in parallel and cached as int32 token ids; and the
batching that training loops use (LMStream, sortish_batches, pad_batch), which needs no Ray.

Lesson 10 replaced torchtext with fastai.text because torchtext tokenized in one process
and redid all of it on every run. Here:

- readers -> TextSource: IMDb's ``aclImdb/`` (one review a file), WikiText-103's
  ``wiki.{train,valid,test}.tokens`` (articles start at lines `` = Title = ``) and a CSV
  or parquet table with a text column and an optional label column;
- ``train_spm``: SentencePiece trained on a deterministic sample of the training
  documents, cached under the sample's content hash and the parameters;
- ``tokenize``: every document encoded in Ray Data tasks that each take a chunk of
  documents (a few thousand files, about four chunks per CPU) and load the model once,
  written as parquet (``ids`` list<int32>, ``len`` int32, ``label`` int64) per split into
  the cache. The key hashes the corpus (paths, sizes, mtimes), the model's sha256, the
  parameters and TEXT_VERSION; a hit starts no Ray and reads no document (100,000 files:
  about 0.5 s, nearly all of it listing the folders and one stat call a file);
- reading it back: ``load_tokens`` (pyarrow, no Ray: a training worker's way) gives
  TokenArrays (ids back to back, offsets, labels); ``read_tokens`` a Ray Dataset;
  ``decode`` and ``normalize`` check round trips;
- batching, plain numpy/torch: ``LMStream`` (fastai's LanguageModelLoader, variable
  BPTT), ``sortish_batches`` / ``sorted_batches`` (SortishSampler / SortSampler) and
  ``pad_batch`` (pad first with PAD_ID, as fastai's classifier wants).

Special ids (fastai's convention, pad = 1), the same in every model this module trains:

    UNK_ID = 0  <unk>   a piece outside the vocabulary (decodes to " ⁇ ")
    PAD_ID = 1  <pad>   padding only; never inside a document
    BOS_ID = 2  <s>     starts every document (tokenize writes [BOS] + pieces)
    EOS_ID = 3  </s>    ends every document only with add_eos=True

Splits: IMDb train/ -> "train", test/ -> "valid", train/unsup/ -> "unsup" (label -1, for
the language model only); WikiText "train", "valid", "test" (label -1); a table names its
own (one file per split). Labels: IMDb neg = 0, pos = 1.

Text is cleaned as lesson 10 did (``fixup``: ``<br />`` to a newline, HTML entities,
WikiText's `` @-@ `` joins), then SentencePiece's nmt_nfkc normalisation applies, which
also folds newlines and runs of spaces into one space: ``normalize(text, model)`` is what
``decode(ids, model)`` gives back.
"""
from __future__ import annotations

import hashlib
import html
import io
import os
import pickle
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from . import DataError
from .cache import Cache, digest

TEXT_VERSION = "text-v1"  # bump when reading, cleaning or encoding changes its output
UNK_ID, PAD_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPECIAL_IDS = {"unk": UNK_ID, "pad": PAD_ID, "bos": BOS_ID, "eos": EOS_ID}
IMDB_CLASSES = ["neg", "pos"]
WIKITEXT_FILES = {"train": "wiki.train.tokens", "valid": "wiki.valid.tokens", "test": "wiki.test.tokens"}
BadInput = Literal["skip", "fail"]

_ENCODE_BYTES = 4 << 20  # text encoded and written per parquet row group: bounds a task's memory
_SPAN_BYTES = 1 << 20  # WikiText sampling unit for SentencePiece's training sample
_SAMPLE_MAX_BYTES = 32 << 20  # SentencePiece's sample stops here whatever sample_docs says


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

    def input_files(self) -> list[str]:
        """Every input file once, in a fixed order (IMDb's are unique and sorted per folder)."""
        if self.kind == "imdb":
            return [p for items in self.splits.values() for p, _ in items]
        return sorted({item[0] for items in self.splits.values() for item in items})

    def train_splits(self) -> list[str]:
        """The splits SentencePiece learns from: training text, labelled or not."""
        return [s for s in ("train", "unsup") if s in self.splits] or [next(iter(self.splits))]


# ---------------------------------------------------------------- readers


def _folder(data_dir: str | Path) -> Path:
    root = Path(data_dir).absolute()  # Ray workers run in other folders
    if not root.exists():
        raise DataError(f"{root}: no such folder")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    return root


def find_imdb(data_dir: str | Path) -> TextSource:
    """IMDb's aclImdb/ (or fast.ai's imdb/) at data_dir or one folder below it (as the archive
    extracts): {train,test}/{pos,neg}/*.txt are required, train/unsup/*.txt (fast.ai's copy:
    unsup/*.txt) is optional."""
    root = _folder(data_dir)
    candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    found = next((c for c in candidates if (c / "train").is_dir() and (c / "test").is_dir()), None)
    if found is None:
        raise DataError(f"{root}: no IMDb here (expected aclImdb/ with train/pos, train/neg, test/pos, test/neg)")
    splits: dict[str, list] = {}
    for split, name in (("train", "train"), ("valid", "test")):
        items: list = []
        for label, cls in enumerate(IMDB_CLASSES):
            d = found / name / cls
            if not d.is_dir():
                raise DataError(f"{d}: missing (expected {d}/*.txt, one review a file)")
            files = _txt_files(d)
            if not files:
                raise DataError(f"{d}: no reviews (expected {d}/*.txt)")
            items += [(f, label) for f in files]
        splits[split] = items
    # aclImdb keeps the unlabelled reviews in train/unsup/, fast.ai's imdb.tgz in unsup/
    unsup = next((d for d in (found / "train" / "unsup", found / "unsup") if d.is_dir()), None)
    if unsup is not None:
        files = _txt_files(unsup)
        if files:
            splits["unsup"] = [(f, -1) for f in files]
    return TextSource(found, "imdb", splits, list(IMDB_CLASSES))


def _txt_files(d: Path) -> list[str]:
    with os.scandir(d) as it:
        names = sorted(e.name for e in it if e.name.endswith(".txt") and e.is_file())
    return [f"{d}{os.sep}{n}" for n in names]


def find_wikitext(data_dir: str | Path) -> TextSource:
    """WikiText-103 (or -2) token files at data_dir or one folder below it: wiki.train.tokens
    is required, wiki.valid.tokens and wiki.test.tokens are used when present."""
    root = _folder(data_dir)
    candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    found = next((c for c in candidates if (c / WIKITEXT_FILES["train"]).is_file()), None)
    if found is None:
        raise DataError(f"{root}: no WikiText here (expected wiki.train.tokens, wiki.valid.tokens, wiki.test.tokens)")
    splits = {}
    for split, name in WIKITEXT_FILES.items():
        f = found / name
        if f.is_file():
            size = f.stat().st_size
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
        p = Path(p).absolute()
        if not p.is_file():
            raise DataError(f"{p}: no such file")
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


def _table_labels(source: TextSource) -> tuple[dict[str, list], dict[str, np.ndarray], list[str]]:
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


# ---------------------------------------------------------------- reading documents


def fixup(text: str) -> str:
    """Lesson 10's clean-up of scraped text: <br /> tags to newlines, HTML entities
    (also the IMDb dump's bare ``#39;``), WikiText's `` @-@ `` style joins."""
    if "<br" in text:
        text = text.replace("<br /><br />", "\n").replace("<br />", "\n").replace("<br>", "\n")
    if "#39;" in text or "quot;" in text:
        text = text.replace("&#39;", "'").replace("#39;", "'").replace("&quot;", '"').replace("quot;", '"')
    if "&" in text:
        text = html.unescape(text)
    if " @" in text:
        text = text.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    return text


def _decode_utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start})") from None


def _is_title(line: bytes) -> bool:
    """A WikiText article title ` = Title = `; sections are ` = = Section = = `."""
    s = line.strip()
    return len(s) > 4 and s[:2] == b"= " and s[-2:] == b" =" and s[2:3] != b"="


def _wikitext_articles(path: str, start: int, stop: int) -> Iterator[tuple[int, bytes]]:
    """(byte offset, raw text) of each article whose title line starts in [start, stop).
    The text before the first title belongs to the span that starts at 0."""
    with open(path, "rb") as f:
        if start > 0:
            f.seek(start - 1)
            f.readline()  # to the first line that starts at or after `start`
        pos = f.tell()
        lines: list[bytes] | None = [] if start == 0 else None
        at = pos
        for line in f:
            if _is_title(line):
                if pos >= stop:
                    break
                if lines and b"".join(lines).strip():
                    yield at, b"".join(lines)
                lines, at = [line], pos
            elif lines is not None:
                lines.append(line)
            pos += len(line)
        if lines and b"".join(lines).strip():
            yield at, b"".join(lines)


def _docs(kind: str, chunk) -> Iterator[tuple[str | DataError, int]]:
    """(cleaned text, label) of each document of a chunk, or (DataError, label) for one
    that cannot be used (not UTF-8, empty), so the caller decides: skip or fail."""
    if kind == "imdb":
        for path, label in chunk:
            try:
                with open(path, "rb") as f:
                    text = fixup(_decode_utf8(f.read(), str(path)))
                if not text.strip():
                    raise DataError(f"{path}: empty document")
                yield text, label
            except OSError as e:
                yield DataError(f"{path}: unreadable ({e.strerror or e})"), label
            except DataError as e:
                yield e, label
    elif kind == "wikitext":
        path, start, stop = chunk
        for at, raw in _wikitext_articles(path, start, stop):
            try:
                yield fixup(_decode_utf8(raw, f"{path}: article at byte {at}")), -1
            except DataError as e:
                yield e, -1
    else:  # table rows: (path, first row, texts, labels)
        path, first, texts, labels = chunk
        for i, (text, label) in enumerate(zip(texts, labels)):
            text = fixup(text) if text else ""
            if not text.strip():
                yield DataError(f"{path}: row {first + i}: empty document"), int(label)
            else:
                yield text, int(label)


# ---------------------------------------------------------------- SentencePiece


def _sample_units(source: TextSource, sample_docs: int, seed: int) -> list:
    """The deterministic choice of what SentencePiece learns from: imdb files; WikiText
    1 MB spans in random order (read until sample_docs articles); a table's train file."""
    rng = random.Random(seed)
    if source.kind == "imdb":
        items = [it for s in source.train_splits() for it in source.splits[s]]
        return items if len(items) <= sample_docs else rng.sample(items, sample_docs)
    if source.kind == "wikitext":
        spans = []
        for s in source.train_splits():
            for path, start, stop in source.splits[s]:
                spans += [(path, a, min(a + _SPAN_BYTES, stop)) for a in range(start, stop, _SPAN_BYTES)]
        rng.shuffle(spans)
        return spans
    return [it for s in source.train_splits() for it in source.splits[s]]


def _sample_texts(source: TextSource, units: list, sample_docs: int, seed: int) -> list[str]:
    """The sample's documents, at most sample_docs of them and _SAMPLE_MAX_BYTES in all
    (unreadable or empty ones are left out here: tokenize counts them)."""
    if source.kind == "imdb":
        docs = _docs("imdb", units)
    elif source.kind == "wikitext":
        docs = (d for span in units for d in _docs("wikitext", span))
    else:
        all_texts, _, _ = _table_labels(TextSource(source.root, "table", {"train": units}, [], source.options))
        rows = all_texts["train"]
        pick = range(len(rows)) if len(rows) <= sample_docs else sorted(random.Random(seed).sample(range(len(rows)), sample_docs))
        docs = ((fixup(rows[i]), 0) for i in pick if rows[i] and rows[i].strip())
    texts: list[str] = []
    size = 0
    for text, _ in docs:
        if isinstance(text, str):
            texts.append(text)
            size += len(text)
            if len(texts) >= sample_docs or size >= _SAMPLE_MAX_BYTES:
                break
    return texts


def _sentences(texts: list[str], max_bytes: int = 8192) -> Iterator[str]:
    """Training lines for SentencePiece: paragraphs, long ones cut at spaces (it skips a
    line longer than its max_sentence_length)."""
    for t in texts:
        for line in t.split("\n"):
            line = line.strip()
            while len(line) > max_bytes // 4:  # characters may take up to 4 bytes
                cut = line.rfind(" ", 0, max_bytes // 4)
                cut = cut if cut > 0 else max_bytes // 4
                yield line[:cut]
                line = line[cut:].strip()
            if line:
                yield line


def _stat_key(paths: list[str], root: Path) -> str:
    """Hash of (path relative to root, size, mtime_ns) of each file, in the order given:
    touching or changing any input gives a new key, reading no file's content. os.stat
    on strings and one hash of all the names: 100,000 files in about 0.3 s."""
    prefix = str(root) + os.sep
    stats = [os.stat(p) for p in paths]
    h = hashlib.sha256("\n".join(p[len(prefix):] if p.startswith(prefix) else p for p in paths).encode())
    h.update(np.asarray([(st.st_size, st.st_mtime_ns) for st in stats], np.int64).tobytes())
    return h.hexdigest()[:16]


def train_spm(
    source: TextSource,
    cache: Cache,
    vocab_size: int = 30000,
    model_type: Literal["unigram", "bpe"] = "unigram",
    character_coverage: float = 0.9999,
    sample_docs: int = 10000,
    seed: int = 0,
) -> Path:
    """Train SentencePiece on a deterministic sample of the training documents; the path
    of the cached model. The cache key is the sample's content hash and the parameters;
    an index keyed by the sampled files' (path, size, mtime) finds it again without
    reading them. vocab_size is an upper bound (a small corpus gives fewer pieces).
    Special ids: unk 0, pad 1, bos 2, eos 3. Runs in this process (no Ray)."""
    return _train_spm(source, cache, vocab_size, model_type, character_coverage, sample_docs, seed)[0]


def _train_spm(source, cache, vocab_size, model_type, character_coverage, sample_docs, seed) -> tuple[Path, dict, bool]:
    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}")
    if vocab_size < 8 or sample_docs < 1 or not 0.9 <= character_coverage <= 1.0:
        raise ValueError(
            f"need vocab_size >= 8, sample_docs >= 1 and 0.9 <= character_coverage <= 1 "
            f"(got {vocab_size}, {sample_docs}, {character_coverage})"
        )
    params = {"vocab_size": vocab_size, "model_type": model_type, "character_coverage": character_coverage,
              "seed": seed, "special": SPECIAL_IDS, "version": TEXT_VERSION}
    units = _sample_units(source, sample_docs, seed)
    index_key = digest({"files": _stat_key(sorted({u[0] for u in units}), source.root),
                        "units": digest([u[1:] for u in units]),
                        "kind": source.kind, "options": source.options, "sample_docs": sample_docs, **params})
    ref = cache.lookup("spm-index", index_key)
    if ref is not None:
        found = cache.lookup("spm", ref["spm_key"])
        if found is not None:
            return cache.path("spm", ref["spm_key"]) / "spm.model", found, True
    texts = _sample_texts(source, units, sample_docs, seed)
    if not texts:
        raise DataError(f"{source.root}: no readable training documents to learn SentencePiece from")
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    key = digest({"sample": h.hexdigest(), **params})

    def make(tmp: Path) -> dict:
        import sentencepiece as spm

        t0 = time.perf_counter()
        tmp.mkdir(parents=True)
        buf = io.BytesIO()
        spm.set_random_generator_seed(seed)
        spm.SentencePieceTrainer.train(
            sentence_iterator=_sentences(texts), model_writer=buf, vocab_size=vocab_size,
            model_type=model_type, character_coverage=character_coverage,
            unk_id=UNK_ID, pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            hard_vocab_limit=False, max_sentence_length=8192, num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
        model = buf.getvalue()
        (tmp / "spm.model").write_bytes(model)
        sp = spm.SentencePieceProcessor(model_proto=model)
        return {"sha256": hashlib.sha256(model).hexdigest(), "vocab_size": sp.get_piece_size(),
                **params, "sample_docs": len(texts), "sample_bytes": sum(len(t) for t in texts),
                "seconds": round(time.perf_counter() - t0, 3)}

    manifest, hit = cache.build("spm", key, make)
    cache.build("spm-index", index_key, lambda tmp: tmp.mkdir(parents=True) or {"spm_key": key})
    return cache.path("spm", key) / "spm.model", manifest, hit


@lru_cache(maxsize=4)
def _processor(model_path: str):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=model_path)


def decode(ids, model_path: str | Path) -> str:
    """Token ids (a list, array or tensor; special ids are dropped) -> text."""
    return _processor(str(model_path)).decode([int(i) for i in ids if int(i) > EOS_ID or int(i) == UNK_ID])


def normalize(text: str, model_path: str | Path) -> str:
    """What decode(encode(text)) gives: fixup, SentencePiece's normalisation (NFKC,
    whitespace runs and newlines to one space, trimmed). Characters outside the
    vocabulary come back as " ⁇ " instead."""
    norm = _processor(str(model_path)).normalize(fixup(text))
    return norm.replace("\u2581", " ").strip()


# ---------------------------------------------------------------- tokenize


_SCHEMA = None


def _schema():
    import pyarrow as pa

    global _SCHEMA
    if _SCHEMA is None:
        _SCHEMA = pa.schema([("ids", pa.list_(pa.int32())), ("len", pa.int32()), ("label", pa.int64())])
    return _SCHEMA


class _EncodeChunks:
    """Ray Data map_batches function: a batch of pickled chunks -> one parquet file each
    (<split>/part-<chunk>.parquet) and a row of counts. The model loads once per worker
    process (and so at most once per task)."""

    def __init__(self, kind: str, model_path: str, out_dir: str, add_eos: bool, on_bad: BadInput):
        self.kind, self.model_path, self.out_dir, self.add_eos, self.on_bad = kind, model_path, out_dir, add_eos, on_bad

    def __call__(self, batch: dict) -> dict:
        stats: dict[str, list] = {k: [] for k in ("split", "id", "rows", "tokens", "bytes", "skipped", "errors")}
        for split, cid, payload in zip(batch["split"], batch["id"], batch["chunk"]):
            row = self._encode(str(split), int(cid), pickle.loads(payload))
            for k, v in row.items():
                stats[k].append(v)
        return {k: np.asarray(v) for k, v in stats.items()}

    def _encode(self, split: str, cid: int, chunk) -> dict:
        import pyarrow as pa
        import pyarrow.parquet as pq

        sp = _processor(self.model_path)
        path = os.path.join(self.out_dir, split, f"part-{cid:05d}.parquet")
        rows = tokens = nbytes = skipped = 0
        errors: list[str] = []
        texts: list[str] = []
        labels: list[int] = []
        with pq.ParquetWriter(path, _schema()) as writer:

            def flush():
                nonlocal rows, tokens
                if not texts:
                    return
                ids = sp.encode_as_numpy(texts, add_bos=True, add_eos=self.add_eos, num_threads=1)
                lens = np.fromiter((len(x) for x in ids), np.int32, len(ids))
                offsets = np.zeros(len(ids) + 1, np.int32)
                np.cumsum(lens, out=offsets[1:])
                flat = np.concatenate(ids).astype(np.int32, copy=False)
                col = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
                writer.write_table(pa.table([col, pa.array(lens), pa.array(np.asarray(labels, np.int64))], schema=_schema()))
                rows += len(ids)
                tokens += int(lens.sum())
                texts.clear()
                labels.clear()

            size = 0
            for text, label in _docs(self.kind, chunk):
                if isinstance(text, DataError):
                    if self.on_bad == "fail":
                        raise text
                    skipped += 1
                    if len(errors) < 3:
                        errors.append(str(text))
                    continue
                texts.append(text)
                labels.append(label)
                size += len(text)
                if size >= _ENCODE_BYTES:
                    nbytes += size
                    size = 0
                    flush()
            nbytes += size
            flush()
        return {"split": split, "id": cid, "rows": rows, "tokens": tokens, "bytes": nbytes, "skipped": skipped, "errors": "\n".join(errors)}


def _chunks(source: TextSource, split: str, n_cpus: int, seed: int, tables: dict | None) -> list:
    """A split's documents in chunks: about four per CPU, a few thousand files each.
    IMDb files are shuffled once (the class folders are sorted); WikiText is cut into
    byte spans (articles stay whole, in order); table rows into row ranges."""
    if source.kind == "imdb":
        items = list(source.splits[split])
        random.Random(seed).shuffle(items)
        size = max(256, min(4000, -(-len(items) // (4 * n_cpus))))
        return [items[i : i + size] for i in range(0, len(items), size)]
    if source.kind == "wikitext":
        out = []
        for path, start, stop in source.splits[split]:
            n = max(4 * n_cpus, -(-(stop - start) // (32 << 20)))  # <= 32 MB of text a task
            step = -(-(stop - start) // n)
            out += [(path, a, min(a + step, stop)) for a in range(start, stop, step)]
        return out
    texts, labels = tables["texts"][split], tables["labels"][split]
    path = source.splits[split][0][0]
    size = max(256, min(8000, -(-len(texts) // (4 * n_cpus))))
    return [(path, i, texts[i : i + size], labels[i : i + size]) for i in range(0, len(texts), size)]


def tokenize(
    source: TextSource,
    cache: Cache,
    vocab_size: int = 30000,
    model_type: Literal["unigram", "bpe"] = "unigram",
    character_coverage: float = 0.9999,
    sample_docs: int = 10000,
    seed: int = 0,
    add_eos: bool = False,
    on_bad: BadInput = "skip",
    name: str | None = None,
) -> tuple[dict, bool]:
    """Encode every split with SentencePiece (trained by train_spm with these parameters);
    (manifest, hit). Writes <cache>/<name>-<key>/<split>/part-*.parquet with columns ids
    (list<int32>: [BOS] + pieces (+ [EOS])), len (int32) and label (int64), and a copy of
    the model as spm.model. An unreadable, non-UTF-8 or empty document is skipped and
    counted (on_bad="skip") or stops the run with a DataError naming it ("fail").
    The manifest holds rows, skipped, tokens and bytes per split, vocab_size, spm_model
    (its path), special_ids, classes and seconds. A hit starts no Ray and reads no document."""
    if on_bad not in ("skip", "fail"):
        raise ValueError(f"on_bad must be 'skip' or 'fail', got {on_bad!r}")
    name = name or f"tokens-{source.kind}"
    t0 = time.perf_counter()
    model, spm_manifest, spm_hit = _train_spm(source, cache, vocab_size, model_type, character_coverage, sample_docs, seed)
    spm_seconds = 0.0 if spm_hit else time.perf_counter() - t0
    key = digest({
        "inputs": _stat_key(source.input_files(), source.root),
        "splits": {s: len(items) if source.kind == "imdb" else [[os.path.relpath(it[0], source.root), *it[1:]]
                                                             for it in items] for s, items in source.splits.items()},
        "kind": source.kind, "options": source.options, "spm": spm_manifest["sha256"],
        "spm_params": [vocab_size, model_type, character_coverage, sample_docs],
        "add_eos": add_eos, "seed": seed, "version": TEXT_VERSION,
    })

    def make(tmp: Path) -> dict:
        import ray

        from .images import _unwrap_data_error
        from .runtime import cluster_cpus, init_ray

        t1 = time.perf_counter()
        init_ray()
        t_ray = time.perf_counter() - t1
        tmp.mkdir(parents=True)
        shutil.copyfile(model, tmp / "spm.model")
        tables, classes = None, list(source.classes)
        if source.kind == "table":
            texts, labels, classes = _table_labels(source)
            tables = {"texts": texts, "labels": labels}
        n_cpus = cluster_cpus()
        # one Ray Data run over every split's chunks: no idle CPU at each split's tail
        rows = []
        for split in source.splits:
            (tmp / split).mkdir()
            for i, c in enumerate(_chunks(source, split, n_cpus, seed, tables)):
                rows.append({"split": split, "id": i, "chunk": pickle.dumps(c, protocol=5)})
        fn = _EncodeChunks(source.kind, str(model), str(tmp), add_eos, on_bad)
        ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(fn, batch_size=1)
        # Ray Data reserves part of the CPUs for each operator: on 2 CPUs that left this map
        # one task at a time (measured); the chunks are the only work, so let it use them all
        ds.context.op_resource_reservation_enabled = False
        try:
            res = sorted(ds.take_all(), key=lambda r: (str(r["split"]), int(r["id"])))
        except Exception as e:  # Ray wraps the worker's DataError: surface its message
            raise _unwrap_data_error(e) from None
        stats: dict[str, dict] = {k: {} for k in ("rows", "skipped", "tokens", "bytes")}
        for split in source.splits:
            mine = [r for r in res if r["split"] == split]
            for k in stats:
                stats[k][split] = int(sum(r[k] for r in mine))
            if stats["skipped"][split]:
                errors = [line for r in mine for line in str(r["errors"]).splitlines()]
                total = stats["rows"][split] + stats["skipped"][split]
                print(
                    f"warning: {split}: skipped {stats['skipped'][split]} unreadable or empty document(s) of {total} "
                    f"(on_bad='fail' stops at the first): {'; '.join(errors[:3])}",
                    file=sys.stderr,
                )
            if stats["rows"][split] == 0:
                raise DataError(f"{source.root}: no readable documents in split {split!r}")
        return {
            **stats,
            "kind": source.kind,
            "source": str(source.root),
            "classes": classes,
            "labelled": {s: _labelled(source, s) for s in source.splits},
            "vocab_size": spm_manifest["vocab_size"],
            "spm_sha256": spm_manifest["sha256"],
            "spm_model": "spm.model",
            "special_ids": SPECIAL_IDS,
            "add_eos": add_eos,
            "seconds": {"spm_train": round(spm_seconds, 3), "ray_start": round(t_ray, 3),
                        "encode": round(time.perf_counter() - t1 - t_ray, 3)},
        }

    manifest, hit = cache.build(name, key, make)
    manifest = dict(manifest, spm_model=str(cache.path(name, key) / "spm.model"))
    return manifest, hit


def _labelled(source: TextSource, split: str) -> bool:
    if source.kind == "imdb":
        return split != "unsup"
    return source.kind == "table" and source.options.get("label_col") is not None


# ---------------------------------------------------------------- reading the cache


def read_tokens(cache: Cache, manifest: dict, split: str):
    """A cached split as a Ray Dataset of ids, len, label (starts or joins Ray)."""
    import ray

    from .runtime import init_ray

    folder = _split_folder(cache, manifest, split)
    init_ray()
    return ray.data.read_parquet(str(folder))


def _split_folder(cache: Cache, manifest: dict, split: str) -> Path:
    if split not in manifest["rows"]:
        raise KeyError(f"no split {split!r} in {manifest['name']} (splits: {', '.join(manifest['rows'])})")
    return cache.path(manifest["name"], manifest["key"]) / split


@dataclass
class TokenArrays:
    """A split in memory: every document's ids back to back (each starts with BOS_ID),
    offsets (n + 1) into them, and labels. ``ids`` is the language model's stream."""

    ids: np.ndarray  # (N_tokens,) int32
    offsets: np.ndarray  # (n_docs + 1,) int64
    labels: np.ndarray  # (n_docs,) int64

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def doc(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]


def load_tokens(cache: Cache, manifest: dict, split: str) -> TokenArrays:
    """A cached split read with pyarrow (no Ray): for a training worker or a test."""
    import pyarrow.parquet as pq

    files = sorted(_split_folder(cache, manifest, split).glob("*.parquet"))
    ids, lens, labels = [], [], []
    for f in files:
        t = pq.read_table(f)
        col = t.column("ids")
        for chunk in col.chunks:
            ids.append(chunk.flatten().to_numpy(zero_copy_only=False))
        lens.append(t.column("len").to_numpy())
        labels.append(t.column("label").to_numpy())
    lengths = np.concatenate(lens).astype(np.int64) if lens else np.zeros(0, np.int64)
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return TokenArrays(
        np.concatenate(ids).astype(np.int32, copy=False) if ids else np.zeros(0, np.int32),
        offsets,
        np.concatenate(labels).astype(np.int64, copy=False) if labels else np.zeros(0, np.int64),
    )


# ---------------------------------------------------------------- batching (no Ray)


class LMStream:
    """fastai's LanguageModelLoader: the token stream cut into bs rows, read bptt tokens
    at a time with a varying length: bptt with probability 0.95, else bptt / 2, then
    seq_len = max(5, int(normal(that, 5))), capped so that y exists. Yields (x, y), int64
    tensors of shape (bs, seq_len), y = x shifted by one token along the stream.
    Each pass over the stream draws new lengths (seeded by seed and the pass number)."""

    def __init__(self, ids: np.ndarray, bs: int, bptt: int = 70, seed: int = 0):
        ids = np.asarray(ids)
        if ids.ndim != 1:
            raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
        if bs < 1 or bptt < 1:
            raise ValueError(f"need bs >= 1 and bptt >= 1 (got {bs}, {bptt})")
        n = len(ids) // bs
        if n < 2:
            raise ValueError(f"a stream of {len(ids)} tokens is too short for {bs} rows")
        self.data = ids[: n * bs].reshape(bs, n)  # (bs, n): row r is the r-th stretch of the stream
        self.bs, self.bptt, self.seed, self.epoch = bs, bptt, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def approx_batches(self) -> int:
        """About how many batches a pass yields (the mean length is 0.975 bptt)."""
        return max(1, round((self.data.shape[1] - 1) / (0.975 * self.bptt)))

    def __iter__(self):
        import torch

        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        n, i = self.data.shape[1], 0
        while i < n - 1:
            bptt = self.bptt if rng.random() < 0.95 else self.bptt / 2
            seq_len = min(max(5, int(rng.normal(bptt, 5))), n - 1 - i)
            block = torch.from_numpy(self.data[:, i : i + seq_len + 1].astype(np.int64))  # (bs, seq_len + 1)
            yield block[:, :-1].contiguous(), block[:, 1:].contiguous()
            i += seq_len


def sortish_batches(lengths, bs: int, seed: int = 0) -> list[list[int]]:
    """fastai's SortishSampler as batches of indices: shuffle, cut into chunks of bs * 50,
    sort each chunk by length (longest first), cut into batches, shuffle the batches but
    put the one holding the longest document first (so memory runs out early, if ever)."""
    lengths = np.asarray(lengths)
    if bs < 1:
        raise ValueError(f"bs must be >= 1, got {bs}")
    if len(lengths) == 0:
        return []
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(lengths))
    big = bs * 50
    chunks = [idx[i : i + big] for i in range(0, len(idx), big)]
    order = np.concatenate([c[np.argsort(-lengths[c], kind="stable")] for c in chunks])
    batches = [order[i : i + bs] for i in range(0, len(order), bs)]
    first = int(np.argmax([lengths[b[0]] for b in batches]))
    batches[0], batches[first] = batches[first], batches[0]
    rest = [batches[i] for i in rng.permutation(np.arange(1, len(batches)))]
    return [b.tolist() for b in [batches[0]] + rest]


def sorted_batches(lengths, bs: int) -> list[list[int]]:
    """fastai's SortSampler for validation: every index, longest first, in batches."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + bs].tolist() for i in range(0, len(order), bs)]


def pad_batch(seqs, pad_id: int = PAD_ID, pad_first: bool = True):
    """Sequences of token ids -> a (B, T) int64 tensor, T the longest, padded with pad_id
    at the start (pad_first: the classifier reads the text last, as in fastai) or end."""
    import torch

    arrays = [np.asarray(s, dtype=np.int64).reshape(-1) for s in seqs]
    t = max((len(a) for a in arrays), default=0)
    out = np.full((len(arrays), t), pad_id, dtype=np.int64)
    for i, a in enumerate(arrays):
        if len(a):
            if pad_first:
                out[i, t - len(a) :] = a
            else:
                out[i, : len(a)] = a
    return torch.from_numpy(out)
