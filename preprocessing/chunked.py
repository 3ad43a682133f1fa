"""The one chunked decode-to-parquet template of the image sets (CIFAR-10, image folders,
Carvana, GAN folders, Pascal VOC), and the Ray Data plumbing the tokenizer shares with it.

Per-file overhead dominates Ray Data's own file readers for small files (DESIGN.md:
read_images ran 1,000 img/s where a plain loop ran 13,400), so each Ray Data task takes a
chunk of inputs: a few chunks per CPU, the inputs shuffled once (seeded) so that the
cached rows are in random order. A data set says only how one input becomes rows: a
``Decoder`` names its columns (shape and dtype of one row's value) and turns one item (a
path, a pair of paths, a record) into zero or more rows, raising DataError for an input
it cannot use. The template does the rest, the same way for every data set:

    every split's items -> chunks -> one Ray Data map_batches (a task a chunk: the decoder,
    then the chunk's own parquet file) -> <out>/<split>/<chunk>.parquet

and the bad-input policy: under ``on_bad="skip"`` an item whose decoding raises DataError
is left out with a warning (and counted: items - rows), under ``"fail"`` the first one
stops the run, its message surfacing as a DataError rather than as Ray's wrapped errors.
The entries a reader listed but left out because they are not regular files (a FIFO, a
dangling symlink: see preprocessing/__init__.py) get the same policy from
``listing_skips``, before anything is read or looked up in the cache.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import random
import re
import sys
import time
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from . import DataError, problem_message

BadInput = Literal["skip", "fail"]


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def say(msg: str) -> None:
    """A progress line of a cold build on stderr (Ray Data's own bars go to the log file)."""
    print(msg, file=sys.stderr, flush=True)


def image_sizes(sizes, min_px: int = 4) -> tuple[int, ...]:
    """The distinct sizes, sorted; ValueError when there are none or one is below min_px."""
    sizes = tuple(sorted(set(int(s) for s in sizes)))
    if not sizes or min(sizes) < min_px:
        raise ValueError(f"image sizes must be >= {min_px} px, got {sizes}")
    return sizes


class Decoder:
    """How one item becomes rows. Subclasses set ``columns`` ({name: (shape of one row's
    value, dtype)}, in the order of the parquet columns) and implement ``rows``.
    ``row_per_item``: each item gives one row, so items - rows is what was skipped (a
    decoder whose items are whole files of rows, like a CIFAR batch, sets it False)."""

    columns: dict[str, tuple[tuple[int, ...], type]] = {}
    row_per_item = True

    def __init__(self, on_bad: BadInput = "skip"):
        if on_bad not in ("skip", "fail"):
            raise ValueError(f"on_bad must be 'skip' or 'fail', got {on_bad!r}")
        self.on_bad = on_bad

    def rows(self, item) -> Iterator[dict]:
        """The rows of one item ({column: value}); DataError for an input it cannot use."""
        raise NotImplementedError

    def table(self, items: list, skips: list[str] | None = None):
        """One chunk's items -> their rows as a table (to_table), the bad-input policy applied:
        a skipped item's message (PATH: what is wrong) is added to `skips`. Each task gets only
        its own chunk (a function holding every chunk cost each task 0.5 s to unpickle at
        CIFAR-10's size)."""
        cols: dict[str, list] = {k: [] for k in self.columns}
        for item in items:
            try:
                rows = list(self.rows(item))
            except DataError as e:
                if self.on_bad == "fail":
                    raise
                warn(f"skipped {e}")
                if skips is not None:
                    skips.append(str(e))
                continue
            for row in rows:
                for k, v in row.items():
                    cols[k].append(v)
        return to_table({k: (np.stack(v).astype(dtype, copy=False) if shape else np.asarray(v, dtype)) if v
                         else np.zeros((0, *shape), dtype)
                         for (k, v), (shape, dtype) in zip(cols.items(), self.columns.values())})


# A row's fixed-shape value (an image, a mask, padded boxes) is stored as one fixed-size binary
# value, its shape and dtype in the field's metadata. As Ray's tensor columns (lists of numbers)
# parquet wrote every pixel as a dictionary-encoded INT32: writing 2,000 CIFAR images at 24 and
# 32 px took 0.1-0.3 s (a third of decoding them) and reading them back 0.07-0.14 s; as bytes,
# 0.006-0.04 s and 0.008-0.02 s, at the same 9.6 MB.
SHAPE_KEY, DTYPE_KEY = b"fastray.shape", b"fastray.dtype"


def to_table(cols: dict[str, np.ndarray]):
    """{column: (N, *shape) array} -> a pyarrow Table: shaped columns as fixed-size binary
    (from_table turns them back into arrays), the others as they are."""
    import pyarrow as pa

    fields, arrays = [], []
    for k, v in cols.items():
        if v.ndim > 1:
            v = np.ascontiguousarray(v)
            typ = pa.binary(int(np.prod(v.shape[1:])) * v.dtype.itemsize)
            arrays.append(pa.FixedSizeBinaryArray.from_buffers(typ, len(v), [None, pa.py_buffer(v)]))
            fields.append(pa.field(k, typ, metadata={SHAPE_KEY: ",".join(map(str, v.shape[1:])), DTYPE_KEY: v.dtype.str}))
        else:
            arrays.append(pa.array(v))
            fields.append(pa.field(k, arrays[-1].type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def column_array(table, name: str) -> np.ndarray:
    """One column of a table that to_table made (or an older cache wrote as Ray's tensors):
    (N, *shape) for a shaped column, zero-copy."""
    field = table.schema.field(name)
    meta = field.metadata or {}
    col = table.column(name).combine_chunks()
    if SHAPE_KEY not in meta:
        flat = col.to_numpy(zero_copy_only=False)
        return np.stack(flat) if flat.dtype == object and len(flat) and isinstance(flat[0], np.ndarray) else flat
    shape = tuple(int(x) for x in meta[SHAPE_KEY].decode().split(",") if x)
    dtype = np.dtype(meta[DTYPE_KEY].decode())
    width = field.type.byte_width
    data = np.frombuffer(col.buffers()[1], np.uint8, count=len(col) * width, offset=col.offset * width)
    return data.view(dtype).reshape(len(col), *shape)


def from_table(table):
    """A table as read from the cache, its shaped columns as Ray's tensor columns again (what
    a Ray Dataset's numpy batches give as (B, *shape) arrays)."""
    from ray.data.extensions import ArrowTensorArray

    for i, field in enumerate(table.schema):
        if field.metadata and SHAPE_KEY in field.metadata:
            table = table.set_column(i, field.name, ArrowTensorArray.from_numpy(column_array(table, field.name)))
    return table


def read_table(path: Path, columns: list[str] | None = None):
    """A cached parquet file or folder (of the given columns), shaped columns as tensors."""
    import pyarrow.parquet as pq

    return from_table(pq.read_table(path, columns=columns))


def _plain(item):
    """Paths as strings (cheaper to pickle), inside tuples too."""
    if isinstance(item, Path):
        return str(item)
    if isinstance(item, tuple):
        return tuple(_plain(x) for x in item)
    return item


def chunks(items: list, n_cpus: int, seed: int, lo: int, hi: int, shuffle: bool = True) -> list[list]:
    """About four chunks per CPU, each of lo to hi items, after one seeded shuffle."""
    items = [_plain(it) for it in items]
    if shuffle:
        random.Random(seed).shuffle(items)
    size = max(lo, min(hi, -(-len(items) // (4 * n_cpus))))
    return [items[i : i + size] for i in range(0, len(items), size)]


def map_chunks(rows: list[dict], fn):
    """A Ray Dataset of ``fn`` mapped over ``rows`` (each holding one pickled chunk), one
    task a row."""
    import ray

    ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(fn, batch_size=1)
    # Ray Data reserves part of the CPUs for each operator: on 2 CPUs that ran this map one
    # task at a time; the chunks are the only work, so let it use them all
    ds.context.op_resource_reservation_enabled = False
    return ds


@contextlib.contextmanager
def data_errors() -> Iterator[None]:
    """Ray wraps a worker's DataError (RayTaskError -> UserCodeException -> DataError):
    raise it as itself, so the user sees one line naming the file, not Ray's stack."""
    try:
        yield
    except DataError:
        raise
    except Exception as e:
        raise _unwrap_data_error(e) from None


def _unwrap_data_error(e: BaseException) -> BaseException:
    todo, seen = [e], set()
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, DataError):
            return DataError(str(x))
        todo += [getattr(x, "cause", None), x.__cause__, x.__context__]
    m = re.search(r"DataError: (.+)", str(e))
    return DataError(m.group(1).strip()) if m else e


class _ChunkWriter:
    """map_batches function: rows of (pickled chunk, parquet path) -> each chunk decoded and
    written to its path by the task that decoded it; the rows each wrote, and the messages of
    its first skipped items (SHOWN_SKIPS, one a line). Pixels as raw bytes
    (to_table): a dictionary would only be hashed and dropped, and snappy saved 0.2 % of the
    bytes for CPU time in every task; labels keep theirs."""

    def __init__(self, decoder: Decoder):
        self.decoder = decoder
        self.plain = [k for k, (shape, _) in decoder.columns.items() if not shape]

    def __call__(self, batch: dict) -> dict:
        import pyarrow.parquet as pq

        rows, shown = [], []
        for blob, path in zip(batch["chunk"], batch["path"]):
            skips: list[str] = []
            table = self.decoder.table(pickle.loads(blob), skips)
            if table.num_rows:
                pq.write_table(table, path, compression="none", use_dictionary=self.plain or False)
            rows.append(table.num_rows)
            shown.append("\n".join(skips[:SHOWN_SKIPS]))
        return {"out": batch["out"], "rows": np.asarray(rows, np.int64), "skips": np.asarray(shown, object)}


SHOWN_SKIPS = 3  # skipped items a warning names


def write_chunks(parts: dict[str, list[list]], decoder: Decoder, out: Path) -> tuple[dict[str, int], dict[str, list[str]]]:
    """Every chunk of every output ({name: chunks}) decoded in its own task of one Ray Data
    execution, each written to out/<name>/<chunk number>.parquet; the rows of each output,
    and the messages of its first skipped items (SHOWN_SKIPS at most, in chunk order).
    One execution for all the splits: a second cost CIFAR-10's 10,000 validation images a
    start of its own and an idle CPU at its end."""
    jobs = [{"chunk": pickle.dumps(c, protocol=5), "out": name, "path": str(out / name / f"{i:05d}.parquet")}
            for name, chunk_list in parts.items() for i, c in enumerate(chunk_list)]
    for name in parts:
        (out / name).mkdir(parents=True, exist_ok=True)
    rows: dict[str, int] = dict.fromkeys(parts, 0)
    skips: dict[str, list[str]] = {name: [] for name in parts}
    if jobs:
        with data_errors():
            for r in map_chunks(jobs, _ChunkWriter(decoder)).take_all():
                rows[str(r["out"])] += int(r["rows"])
                skips[str(r["out"])] += [m for m in str(r["skips"]).split("\n") if m]
    return rows, {name: s[:SHOWN_SKIPS] for name, s in skips.items()}


def listing_skips(unusable: dict[str, list[tuple[str, str]]], on_bad: BadInput) -> dict[str, dict[str, int]]:
    """The policy for the entries a reader listed but left out of each split because they
    are not regular files ({split: [(path, reason)]}): under "fail" a DataError naming the
    first (by path); under "skip" one warning per split and {split: {reason: count}} (what the
    manifest's "bad_input" holds and its "skipped" counts). Opens nothing, starts no Ray."""
    if on_bad not in ("skip", "fail"):
        raise ValueError(f"on_bad must be 'skip' or 'fail', got {on_bad!r}")
    if on_bad == "fail" and any(unusable.values()):
        raise DataError(problem_message(*min(e for bad in unusable.values() for e in bad)))  # the first by path
    out: dict[str, dict[str, int]] = {}
    for split, bad in unusable.items():
        if not bad:
            continue
        counts: dict[str, int] = {}
        for _, reason in bad:
            counts[reason] = counts.get(reason, 0) + 1
        out[split] = dict(sorted(counts.items()))
        why = ", ".join(f"{n} {r}" for r, n in out[split].items())
        warn(f"{split}: skipped {len(bad)} listed entr{'y' if len(bad) == 1 else 'ies'} that "
             f"{'is' if len(bad) == 1 else 'are'} not a regular file ({why}), e.g. {problem_message(*bad[0])} "
             "(--on-bad-input fail stops at the first)")
    return out


def refuse_skips(manifest: dict, on_bad: BadInput) -> None:
    """Under "fail", a DataError for a cache entry that a "skip" build made leaving inputs out
    (the cache key does not hold the policy: one build serves both). A "fail" build that
    met a bad input raised at it and made no entry."""
    skipped = {s: n for s, n in (manifest.get("skipped") or {}).items() if n}
    if on_bad != "fail" or not skipped:
        return
    reasons = "; ".join(f"{s}: " + ", ".join(f"{n} {r}" for r, n in (manifest.get("bad_input") or {}).get(s, {}).items())
                        for s in skipped)
    raise DataError(f"--on-bad-input fail: this data has {sum(skipped.values())} bad input(s), skipped when its cache "
                    f"entry was built ({reasons}); repair or remove them, or use --on-bad-input skip")


def unusable_key(unusable: dict[str, list[tuple[str, str]]], root: Path) -> dict:
    """What of `unusable` decides a cache key: each split's (path relative to root, reason);
    {} when there is none, so that a clean folder keeps the key it always had."""
    listed = {s: sorted([os.path.relpath(p, root), r] for p, r in bad) for s, bad in unusable.items() if bad}
    return {"unusable": listed} if listed else {}


def decode_splits(splits: dict[str, list], decoder: Decoder, out: Path, *, root: Path, seed: int,
                  chunk: tuple[int, int], noun: str = "image", shuffle: bool = True,
                  left_out: dict[str, dict[str, int]] | None = None) -> tuple[dict, dict, dict]:
    """Every split's items decoded into out/<split>/ in one execution (starts or joins Ray); (rows, skipped,
    bad_input) per split. ``left_out``: listing_skips' counts, added to skipped; bad_input
    holds every skip's reason ({reason: count}; "unreadable <noun>" for a decode skip). A
    skip is warned about once per split; a split left empty is a DataError."""
    from .runtime import cluster_cpus, init_ray

    left_out = left_out or {}
    init_ray()
    parts = {split: chunks(items, cluster_cpus(), seed, *chunk, shuffle=shuffle) for split, items in splits.items()}
    n = sum(map(len, splits.values()))
    say(f"preprocess: decoding {n} {noun}(s) of {len(splits)} split(s) ({', '.join(splits)}) "
        f"in {sum(map(len, parts.values()))} task(s) ...")
    t0 = time.perf_counter()
    rows, shown = write_chunks(parts, decoder, out)
    took = time.perf_counter() - t0
    say(f"preprocess: {sum(rows.values())} row(s) in {took:.1f} s ({n / max(took, 1e-9):.0f} {noun}s/s)")
    skipped, bad_input = {}, {}
    for split, items in splits.items():
        failed = len(items) - rows[split] if decoder.row_per_item else 0
        if failed:
            named = f", e.g. {'; '.join(shown[split])}" if shown[split] else ""
            warn(f"{split}: skipped {failed} unreadable {noun}(s) of {len(items)}{named} "
                 "(--on-bad-input fail stops at the first)")
        bad_input[split] = dict(left_out.get(split, {})) | ({f"unreadable {noun}": failed} if failed else {})
        skipped[split] = failed + sum(left_out.get(split, {}).values())
        if rows[split] == 0:
            raise DataError(f"{root}: no readable images in split {split!r}")
    return rows, skipped, bad_input


def seconds_since(t0: float) -> float:
    return round(time.perf_counter() - t0, 3)


def read_split(cache, manifest: dict, split: str, columns: list[str] | None = None):
    """A cached split (of the given columns) as a materialized Ray Dataset, a block per file.

    Read here with pyarrow and put in the object store (the driver holds the split's rows
    until they are put): the same blocks that
    `ray.data.read_parquet(...).materialize()` makes, without a Ray Data execution
    (about 1.5 s each on 2 cores, three or four of them before a run's first step).
    A node-local cache could only be read here anyway; on shared storage the reads are no
    longer spread over nodes, which already-decoded parquet does not need."""
    import ray

    from .runtime import init_ray

    if split not in manifest["rows"]:
        raise KeyError(f"no split {split!r} in {manifest['name']} (splits: {', '.join(manifest['rows'])})")
    folder = cache.path(manifest["name"], manifest["key"]) / split
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise DataError(f"{folder}: no parquet files in this cache entry; preprocess again")
    init_ray()  # joins the run's Ray (ray.put alone would start a local one)
    # from_blocks: each block's metadata taken here, where from_arrow_refs ran a Ray task per
    # file for it (1.6 s of a tiny run's start, waiting for a worker process to take them)
    return ray.data.from_blocks([read_table(f, columns) for f in files])
