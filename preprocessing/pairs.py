"""Parallel text for translation (lesson 11): readers, the question filter, and tokenized
sentence pairs cached through preprocessing/text's SentencePiece path.

Readers -> PairSource:

- the giga-fren line files, ``<stem>.<lang>`` (``giga-fren.release2.fixed.en`` / ``.fr``):
  one sentence a line, aligned by line number, at data_dir or one folder below it. A
  held-out pair ``<valid_stem>.<lang>`` beside them (the sample writes ``valid.en`` /
  ``valid.fr``) is the validation set; without one, ``valid_pct`` of the pairs are drawn
  at random (seeded), as lesson 11 did;
- tab-separated pairs, the Tatoeba / Anki format (``fra.txt``: ``English<TAB>French
  <TAB>attribution``): a ``.tsv`` or ``.txt`` file given as data_dir, or the only one in
  the folder. ``tsv_langs`` names the languages of the first two columns.

Files of a pair with different line counts, an empty file, or text that is not UTF-8 is a
DataError naming the file, and so is a line file or pairs file that is there but is not a
regular file (a FIFO, a folder, a dangling symlink: judged by stat, never opened, so nothing
blocks). A pair with an empty side is dropped and counted.

Lesson 11's question filter (``questions=True``): keep the pairs whose English side
starts with "Wh" and has a "?" before any "." or "!", and whose other side has a "?"
before any "." or "!"; each side is cut after that "?" (the lesson's regular expressions
``^(Wh[^?.!]+\\?)`` and ``^([^?.!]+\\?)``). It needs English on one side.

``prepare`` builds three cache entries, each content-addressed, so a second run does no
work and starts no Ray:

1. ``pairs-<key>``: the filtered, split pairs as parquet tables (``text``, ``label`` = the
   pair's index in its split) per split and language, or one table per split holding
   both languages (label 2i: source, 2i + 1: target) for a joint vocabulary;
2. ``tokens-translate-*``: ``text.encoding.tokenize`` of those tables (SentencePiece trained on
   the training split, documents encoded in Ray Data tasks, [BOS] ids [EOS]);
3. ``pairs-ids-<key>``: the two sides joined again by label, pairs longer than
   ``max_len`` tokens on either side dropped and counted: per split, parquet with
   ``src``, ``tgt`` (list<int32>), ``src_text``, ``tgt_text`` (the reference) and ``idx``.
"""
from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from . import DataError, file_problem, open_regular, problem_message, regular_file
from .cache import Cache, digest
from .chunked import BadInput, read_split
from .text.corpus import load_tokens
from .text.encoding import tokenize
from .text.readers import find_table

PAIRS_VERSION = "pairs-v1"  # bump when reading, filtering or splitting changes its output
JOIN_VERSION = "pairs-ids-v1"  # bump when joining or the length limit changes its output
GIGA_FREN_STEM = "giga-fren.release2.fixed"
VALID_STEM = "valid"
TSV_SUFFIXES = (".tsv", ".txt")

# lesson 11: English "Wh..." questions, and a question on the other side
RE_EN_QUESTION = re.compile(r"^(Wh[^?.!]+\?)")
RE_QUESTION = re.compile(r"^([^?.!]+\?)")

_BATCH = 100_000  # pairs written per parquet row group


@dataclass
class PairSource:
    """What a reader found: per split, the files that hold it. ``kind`` "lines": a split
    is (source file, target file); "tsv": a split is (file,), columns named by tsv_langs."""

    root: Path
    kind: Literal["lines", "tsv"]
    src: str
    tgt: str
    splits: dict[str, tuple[str, ...]] = field(default_factory=dict)
    tsv_langs: tuple[str, str] = ("en", "fr")

    def input_files(self) -> list[str]:
        return sorted({p for files in self.splits.values() for p in files})


# ---------------------------------------------------------------- readers


def _check_langs(src: str, tgt: str) -> None:
    if not src or not tgt or src == tgt:
        raise ValueError(f"source and target languages must be two different codes, got {src!r} and {tgt!r}")


def find_pairs(
    data_dir: str | Path,
    src: str = "fr",
    tgt: str = "en",
    stem: str = GIGA_FREN_STEM,
    valid_stem: str = VALID_STEM,
    tsv_langs: tuple[str, str] = ("en", "fr"),
) -> PairSource:
    """The parallel corpus at data_dir: giga-fren style line files ``<stem>.<src>`` and
    ``<stem>.<tgt>`` (at data_dir or one folder below), else a tab-separated pairs file
    (data_dir itself, or the only .tsv/.txt file in the folder)."""
    _check_langs(src, tgt)
    root = Path(data_dir).absolute()
    if not os.path.lexists(root):
        raise DataError(f"{root}: no such file or folder")
    if not root.is_dir():  # a file the user named: a pairs file, and a regular one
        return _tsv_source(regular_file(root), src, tgt, tsv_langs)
    candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    for c in candidates:
        pair = (c / f"{stem}.{src}", c / f"{stem}.{tgt}")
        if any(os.path.lexists(p) for p in pair):  # a FIFO or a dangling link named so counts: it is named below
            splits = {"train": _line_pair(pair)}
            held = (c / f"{valid_stem}.{src}", c / f"{valid_stem}.{tgt}") if valid_stem else ()
            if held and any(os.path.lexists(p) for p in held):
                splits["valid"] = _line_pair(held)
            return PairSource(c, "lines", src, tgt, splits)
    named = sorted(p for p in root.iterdir() if p.suffix.lower() in TSV_SUFFIXES and not p.is_dir())
    tsvs = [p for p in named if file_problem(p) is None]
    if not tsvs and named:  # only a FIFO or a dangling link is named like a pairs file
        raise DataError(problem_message(named[0], file_problem(named[0])))
    if len(tsvs) == 1:
        return _tsv_source(tsvs[0], src, tgt, tsv_langs)
    if len(tsvs) > 1:
        raise DataError(f"{root}: {len(tsvs)} .tsv/.txt files ({', '.join(p.name for p in tsvs[:4])}); "
                        f"give the one to use as --data")
    raise DataError(f"{root}: no parallel text here (expected {stem}.{src} and {stem}.{tgt}, one sentence a line, "
                    f"or a tab-separated pairs file)")


def _line_pair(pair: tuple[Path, Path]) -> tuple[str, str]:
    """Both files of a line-file pair, one of which is there; DataError naming one that is
    missing or is not a regular file."""
    problems = [file_problem(p) for p in pair]
    for p, problem in zip(pair, problems):
        if problem == "missing":
            other = pair[1] if p == pair[0] else pair[0]
            raise DataError(f"{p}: missing (its pair {other.name} is there)")
        if problem:
            raise DataError(problem_message(p, problem))
    return tuple(str(p) for p in pair)


def _tsv_source(path: Path, src: str, tgt: str, tsv_langs: tuple[str, str]) -> PairSource:
    langs = tuple(tsv_langs)
    if len(langs) != 2 or src not in langs or tgt not in langs:
        raise ValueError(f"{path}: its columns are {'/'.join(langs)} (tsv_langs), which must hold {src} and {tgt}")
    return PairSource(path.parent, "tsv", src, tgt, {"train": (str(path),)}, langs)


def _lines(path: str) -> Iterator[str]:
    """A line file's lines (newline stripped), checked for UTF-8; an empty file is an error."""
    with open_regular(path) as f:  # a FIFO is a DataError, never opened
        if os.fstat(f.fileno()).st_size == 0:
            raise DataError(f"{path}: empty file")
        for i, raw in enumerate(f, 1):
            try:
                yield raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: line {i} is not UTF-8 text (byte {raw[e.start]:#04x})") from None


def read_line_pairs(src_path: str | Path, tgt_path: str | Path) -> Iterator[tuple[str, str]]:
    """(source line, target line) of two files aligned by line number. Different line
    counts are a DataError naming both files and their counts (found when the shorter ends)."""
    src_path, tgt_path = str(src_path), str(tgt_path)
    a, b = _lines(src_path), _lines(tgt_path)
    n = 0
    while True:
        x, y = next(a, None), next(b, None)
        if x is None or y is None:
            if x is None and y is None:
                return
            longer, shorter = (src_path, tgt_path) if y is None else (tgt_path, src_path)
            rest = 1 + sum(1 for _ in (a if y is None else b))
            raise DataError(f"{shorter} has {n} lines but {longer} has {n + rest}: the files must be aligned line by line")
        n += 1
        yield x, y


def read_tsv_pairs(path: str | Path, langs: tuple[str, str], src: str, tgt: str) -> Iterator[tuple[str, str]]:
    """(source, target) of each line ``a<TAB>b[<TAB>more]`` of a Tatoeba/Anki pairs file
    whose first two columns are in the languages ``langs``. A line without a tab is an error."""
    path = str(path)
    i_src, i_tgt = langs.index(src), langs.index(tgt)
    for n, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 2:
            raise DataError(f"{path}: line {n} has no tab (expected {langs[0]}<TAB>{langs[1]})")
        yield cols[i_src], cols[i_tgt]


def question_filter(pairs, src: str, tgt: str) -> Iterator[tuple[str, str]]:
    """Lesson 11's filter over (source, target) pairs: English "Wh...?" questions paired
    with questions, each cut after its first "?"."""
    if "en" not in (src, tgt):
        raise ValueError(f"the question filter keeps English 'Wh' questions: one side must be en (got {src}-{tgt})")
    en_is_src = src == "en"
    for s, t in pairs:
        en, other = (s, t) if en_is_src else (t, s)
        me = RE_EN_QUESTION.search(en)
        if me is None:
            continue
        mo = RE_QUESTION.search(other)
        if mo is None:
            continue
        yield (me.group(1), mo.group(1)) if en_is_src else (mo.group(1), me.group(1))


def iter_pairs(source: PairSource, split: str) -> Iterator[tuple[str, str]]:
    files = source.splits[split]
    if source.kind == "lines":
        return read_line_pairs(*files)
    return read_tsv_pairs(files[0], source.tsv_langs, source.src, source.tgt)


# ---------------------------------------------------------------- stage 1: filtered, split pairs


def _write_pairs(source: PairSource, tmp: Path, questions: bool, valid_pct: float, seed: int, joint: bool) -> dict:
    """Read, filter and split every pair; write the tables tokenize reads."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp.mkdir(parents=True)
    schema = pa.schema([("text", pa.string()), ("label", pa.int64())])
    out_splits = ["train", "valid"]
    names = {s: ([f"{s}.joint"] if joint else [f"{s}.{source.src}", f"{s}.{source.tgt}"]) for s in out_splits}
    writers = {n: pq.ParquetWriter(tmp / f"{n}.parquet", schema) for ns in names.values() for n in ns}
    buf: dict[str, tuple[list, list]] = {n: ([], []) for n in writers}
    counts = {s: 0 for s in out_splits}
    read = {"pairs": 0, "kept": 0, "empty": 0}
    rng = np.random.default_rng(seed)
    held_out = "valid" in source.splits

    def flush(name: str) -> None:
        texts, labels = buf[name]
        if texts:
            writers[name].write_table(pa.table([pa.array(texts, pa.string()), pa.array(labels, pa.int64())], schema=schema))
            texts.clear()
            labels.clear()

    def add(split: str, s: str, t: str) -> None:
        i = counts[split]
        if joint:
            texts, labels = buf[f"{split}.joint"]
            texts += [s, t]
            labels += [2 * i, 2 * i + 1]
        else:
            for lang, x in ((source.src, s), (source.tgt, t)):
                buf[f"{split}.{lang}"][0].append(x)
                buf[f"{split}.{lang}"][1].append(i)
        counts[split] = i + 1
        if len(buf[names[split][0]][0]) >= _BATCH:
            for n in names[split]:
                flush(n)

    try:
        for split in source.splits:
            pairs = iter_pairs(source, split)
            n_before = read["pairs"]

            def counted(it):
                for p in it:
                    read["pairs"] += 1
                    yield p

            pairs = counted(pairs)
            if questions:
                pairs = question_filter(pairs, source.src, source.tgt)
            for s, t in pairs:
                s, t = s.strip(), t.strip()
                if not s or not t:
                    read["empty"] += 1
                    continue
                read["kept"] += 1
                if held_out:
                    add(split, s, t)
                else:
                    add("valid" if rng.random() < valid_pct else "train", s, t)
            if read["pairs"] == n_before:
                raise DataError(f"{', '.join(source.splits[split])}: no sentence pairs")
    finally:
        for n in writers:
            flush(n)
            writers[n].close()
    for split in out_splits:
        if counts[split] == 0:
            cols = (f"; a .tsv's first two columns are read as {source.tsv_langs[0]}<TAB>{source.tsv_langs[1]} (tsv_langs)"
                    if source.kind == "tsv" else "")
            what = (f"after lesson 11's question filter, which keeps a pair whose English side starts with 'Wh' and "
                    f"both sides have a '?' before any '.' or '!' (questions=false keeps every pair{cols})") if questions else ""
            raise DataError(f"{source.root}: no {split} pairs {what}".rstrip()
                            + ("" if held_out or split == "train" else f" (valid_pct={valid_pct})"))
    return {"rows": counts, "read": read, "held_out_valid": held_out, "tables": names}


# ---------------------------------------------------------------- the whole preparation


def prepare(
    source: PairSource,
    cache: Cache,
    *,
    questions: bool = True,
    valid_pct: float = 0.1,
    joint: bool = False,
    vocab_size: int = 8000,
    sample_docs: int = 50000,
    max_len: int = 30,
    seed: int = 0,
    on_bad: BadInput = "skip",
) -> tuple[dict, bool]:
    """Filter, split, tokenize and join (see the module docstring); (manifest, hit).
    The manifest holds rows, dropped (too long), vocab sizes and the SentencePiece models'
    paths (``spm`` per language; the same file twice with a joint vocabulary)."""
    if not 0.0 < valid_pct < 1.0:
        raise ValueError(f"valid_pct must be in (0, 1), got {valid_pct}")
    if max_len < 3:
        raise ValueError(f"max_len must be >= 3 (BOS, a token, EOS), got {max_len}")
    t0 = time.perf_counter()
    stats = [os.stat(p) for p in source.input_files()]
    key = digest({
        "inputs": [[os.path.relpath(p, source.root), st.st_size, st.st_mtime_ns] for p, st in zip(source.input_files(), stats)],
        "splits": {s: [os.path.relpath(p, source.root) for p in f] for s, f in source.splits.items()},
        "kind": source.kind, "langs": [source.src, source.tgt], "tsv_langs": list(source.tsv_langs),
        "questions": questions, "valid_pct": valid_pct if "valid" not in source.splits else None,
        "seed": seed, "joint": joint, "version": PAIRS_VERSION,
    })
    pairs, pairs_hit = cache.build("pairs", key, lambda tmp: {
        **_write_pairs(source, tmp, questions, valid_pct, seed, joint),
        "source": str(source.root), "src": source.src, "tgt": source.tgt,
    })
    folder = cache.path("pairs", key)
    if not pairs_hit:
        r = pairs["read"]
        print(f"pairs: {r['kept']} of {r['pairs']} kept" + (" by lesson 11's question filter" if questions else "")
              + (f", {r['empty']} with an empty side dropped" if r["empty"] else "")
              + f"; train {pairs['rows']['train']}, valid {pairs['rows']['valid']}"
              + (" (held-out files)" if pairs["held_out_valid"] else f" (valid_pct={valid_pct})"), file=sys.stderr)

    spm_kw = dict(vocab_size=vocab_size, sample_docs=sample_docs, seed=seed, add_eos=True, on_bad=on_bad)
    langs = ["joint"] if joint else [source.src, source.tgt]
    tok: dict[str, tuple[dict, bool]] = {}
    for lang in langs:
        tables = find_table({s: folder / f"{s}.{lang}.parquet" for s in ("train", "valid")}, "text", "label")
        tok[lang] = tokenize(tables, cache, name=f"tokens-translate-{lang}", **spm_kw)
    jkey = digest({"pairs": key, "tokens": {k: m["key"] for k, (m, _) in tok.items()}, "max_len": max_len,
                   "version": JOIN_VERSION})
    joined, join_hit = cache.build("pairs-ids", jkey, lambda tmp: _join(cache, folder, tok, source, joint, max_len, tmp))
    spm = {source.src: tok[langs[0]][0]["spm_model"], source.tgt: tok[langs[-1]][0]["spm_model"]}
    vocab = {source.src: tok[langs[0]][0]["vocab_size"], source.tgt: tok[langs[-1]][0]["vocab_size"]}
    hit = pairs_hit and join_hit and all(h for _, h in tok.values())
    manifest = {**joined, "spm": spm, "vocab_size": vocab, "read": pairs["read"], "pairs_key": key,
                "seconds_total": round(time.perf_counter() - t0, 3)}
    return manifest, hit


def _join(cache: Cache, folder: Path, tok: dict, source: PairSource, joint: bool, max_len: int, tmp: Path) -> dict:
    """Token rows of both sides, matched by label; pairs longer than max_len dropped."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp.mkdir(parents=True)
    rows, dropped, tokens = {}, {}, {}
    for split in ("train", "valid"):
        if joint:
            arr = load_tokens(cache, tok["joint"][0], split)
            texts = pq.read_table(folder / f"{split}.joint.parquet")
            n = len(texts) // 2
            pos_s, pos_t = _positions(arr.labels, n, 0), _positions(arr.labels, n, 1)
            a_src = a_tgt = arr
            all_text = texts.column("text").to_pylist()
            src_text, tgt_text = all_text[0::2], all_text[1::2]
        else:
            a_src = load_tokens(cache, tok[source.src][0], split)
            a_tgt = load_tokens(cache, tok[source.tgt][0], split)
            src_text = pq.read_table(folder / f"{split}.{source.src}.parquet").column("text").to_pylist()
            tgt_text = pq.read_table(folder / f"{split}.{source.tgt}.parquet").column("text").to_pylist()
            n = len(src_text)
            pos_s, pos_t = _positions(a_src.labels, n), _positions(a_tgt.labels, n)
        len_s, len_t = a_src.docs.lengths, a_tgt.docs.lengths
        ok = (pos_s >= 0) & (pos_t >= 0)  # tokenize skips a document that is empty after clean-up
        ok[ok] &= (len_s[pos_s[ok]] <= max_len) & (len_t[pos_t[ok]] <= max_len)
        keep = np.flatnonzero(ok)
        dropped[split] = int(n - len(keep))
        rows[split] = int(len(keep))
        if rows[split] == 0:
            raise DataError(f"{source.root}: no {split} pair is at most max_len={max_len} tokens long on both sides")
        src, tgt = a_src.docs.take(pos_s[keep]), a_tgt.docs.take(pos_t[keep])
        tokens[split] = {"src": int(src.offsets[-1]), "tgt": int(tgt.offsets[-1])}
        table = pa.table({
            "src": src.to_arrow(), "tgt": tgt.to_arrow(),
            "src_text": pa.array([src_text[i] for i in keep], pa.string()),
            "tgt_text": pa.array([tgt_text[i] for i in keep], pa.string()),
            "idx": pa.array(keep.astype(np.int64)),
        })
        (tmp / split).mkdir()
        pq.write_table(table, tmp / split / "part-00000.parquet")
        if dropped[split]:
            print(f"pairs: {split}: dropped {dropped[split]} of {n} pairs longer than max_len={max_len} tokens",
                  file=sys.stderr)
    return {"rows": rows, "dropped_long": dropped, "tokens": tokens, "max_len": max_len,
            "src": source.src, "tgt": source.tgt, "joint": joint,
            "token_keys": {k: m["key"] for k, (m, _) in tok.items()}}


def _positions(labels: np.ndarray, n: int, side: int | None = None) -> np.ndarray:
    """For each of n pairs, the row of its tokens (-1 where tokenize skipped it). Joint
    tables label pair i's sides 2i (source) and 2i + 1 (target)."""
    pos = np.full(n, -1, np.int64)
    rows = np.arange(len(labels))
    if side is None:
        pos[labels] = rows
    else:
        mine = (labels % 2) == side
        pos[labels[mine] // 2] = rows[mine]
    return pos


def read_pairs(cache: Cache, manifest: dict, split: str):
    """A cached split as a Ray Dataset (src, tgt, src_text, tgt_text, idx)."""
    return read_split(cache, manifest, split)


def load_pairs(cache: Cache, manifest: dict, split: str):
    """A cached split as a pyarrow Table (no Ray): for tests and the translate command."""
    import pyarrow.parquet as pq

    return pq.read_table(cache.path(manifest["name"], manifest["key"]) / split)


__all__ = ["PairSource", "find_pairs", "read_line_pairs", "read_tsv_pairs", "question_filter", "iter_pairs",
           "prepare", "read_pairs", "load_pairs", "GIGA_FREN_STEM", "VALID_STEM"]
