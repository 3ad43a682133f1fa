"""The tokenized corpus read back from the cache: Ragged (lists of token ids as the ids back
to back and offsets into them), TokenArrays (a split's documents and labels), load_tokens
(pyarrow, no Ray: a training worker's or a test's way) and read_tokens (a Ray Dataset)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..cache import Cache


@dataclass
class Ragged:
    """Rows of different lengths, e.g. token-id lists: row i is
    ``flat[offsets[i]:offsets[i + 1]]``. The in-memory form of a parquet list<int> column
    (``from_arrow`` / ``to_arrow``): no per-row Python objects."""

    flat: np.ndarray  # (N,) every row's values back to back
    offsets: np.ndarray  # (n + 1,) int64, offsets[0] == 0, offsets[-1] == N

    @classmethod
    def _build(cls, flats: Sequence[np.ndarray], lengths: Sequence[np.ndarray], dtype) -> Ragged:
        lens = np.concatenate(lengths).astype(np.int64, copy=False) if len(lengths) else np.zeros(0, np.int64)
        offsets = np.zeros(len(lens) + 1, np.int64)
        np.cumsum(lens, out=offsets[1:])
        flat = np.concatenate(flats).astype(dtype, copy=False) if len(flats) else np.zeros(0, dtype)
        return cls(flat, offsets)

    @classmethod
    def from_rows(cls, rows: Sequence[np.ndarray], dtype=np.int32) -> Ragged:
        """From a list of 1-D arrays (or lists)."""
        return cls._build([np.asarray(r) for r in rows], [np.fromiter((len(r) for r in rows), np.int64, len(rows))],
                          dtype)

    @classmethod
    def from_arrow(cls, column, dtype=np.int32) -> Ragged:
        """From a pyarrow list column: an Array, a ChunkedArray of any number of chunks, or
        a list of those (a Ray Data shard's batches: ``[t.column("ids") for t in batches]``),
        sliced or not; a null row is an empty one."""
        import pyarrow as pa
        import pyarrow.compute as pc

        parts = column if isinstance(column, (list, tuple)) else [column]
        chunks = [c for p in parts for c in (p.chunks if isinstance(p, pa.ChunkedArray) else [p])]
        return cls._build([c.flatten().to_numpy(zero_copy_only=False) for c in chunks],
                          [pc.fill_null(pc.list_value_length(c), 0).to_numpy(zero_copy_only=False) for c in chunks],
                          dtype)

    @classmethod
    def concat(cls, parts: Sequence[Ragged]) -> Ragged:
        dtype = parts[0].flat.dtype if parts else np.int32
        return cls._build([p.flat for p in parts], [p.lengths for p in parts], dtype)

    def to_arrow(self):
        """A pyarrow ListArray (int32 offsets) of the rows, values of flat's dtype."""
        import pyarrow as pa

        if self.offsets[-1] > np.iinfo(np.int32).max:
            raise ValueError(f"{self.offsets[-1]} values do not fit a list array's int32 offsets")
        return pa.ListArray.from_arrays(pa.array(self.offsets.astype(np.int32)), pa.array(self.flat))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i] : self.offsets[i + 1]]

    def take(self, idx) -> Ragged:
        """The rows idx, in that order (vectorised: one gather of the values)."""
        idx = np.asarray(idx, np.int64)
        lens = self.lengths[idx]
        offsets = np.zeros(len(idx) + 1, np.int64)
        np.cumsum(lens, out=offsets[1:])
        at = np.repeat(self.offsets[:-1][idx] - offsets[:-1], lens) + np.arange(offsets[-1])
        return Ragged(self.flat[at], offsets)


@dataclass
class TokenArrays:
    """A split in memory: every document's ids (each starts with BOS_ID) and its label.
    ``docs.flat`` is the language model's stream."""

    docs: Ragged  # (n_docs) rows of int32 ids
    labels: np.ndarray  # (n_docs,) int64

    def __len__(self) -> int:
        return len(self.labels)


def _split_folder(cache: Cache, manifest: dict, split: str) -> Path:
    if split not in manifest["rows"]:
        raise KeyError(f"no split {split!r} in {manifest['name']} (splits: {', '.join(manifest['rows'])})")
    return cache.path(manifest["name"], manifest["key"]) / split


def load_tokens(cache: Cache, manifest: dict, split: str) -> TokenArrays:
    """A cached split read with pyarrow (no Ray): for a training worker or a test."""
    return load_folder(_split_folder(cache, manifest, split))


def load_folder(folder: Path) -> TokenArrays:
    """A split's folder of token parquet files (<cache entry>/<split>/) read with pyarrow."""
    import pyarrow.parquet as pq

    files = sorted(Path(folder).glob("*.parquet"))
    tables = [pq.read_table(f, columns=["ids", "label"]) for f in files]
    return TokenArrays(
        Ragged.concat([Ragged.from_arrow(t.column("ids")) for t in tables]),
        np.concatenate([t.column("label").to_numpy() for t in tables]).astype(np.int64, copy=False) if tables
        else np.zeros(0, np.int64),
    )


def read_tokens(cache: Cache, manifest: dict, split: str):
    """A cached split as a Ray Dataset of ids, len, label (starts or joins Ray)."""
    from ..chunked import read_split

    return read_split(cache, manifest, split)
