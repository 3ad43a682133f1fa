"""GAN data (lesson 12) through Ray Data, decoded and resized once, cached as uint8 parquet.

Readers:
- an image folder, LSUN-style or any: every JPEG/PNG under the folder at any depth (LSUN's
  export nests them by key: bedroom/0/0/0/<key>.jpg). A seeded hash of each file's path
  decides its split, so adding files never moves another: a `valid_frac` of them (at most
  `valid_max`) is held out for the learning check, and `data_frac` of the rest trains
  (lesson 12 trained on a 10% sample of the bedrooms);
- CycleGAN's unpaired layout: trainA/ trainB/ testA/ testB/ at the folder or one below it
  (horse2zebra.zip extracts to horse2zebra/). The two domains are not paired, so a row holds
  one image of each: every image of the larger domain once, the smaller domain's images in
  a seeded random order, repeated to the same length (the authors' unaligned data set
  draws the B image at random in the same way). The pipeline re-pairs within each batch.

Images are center-cropped to a square and resized (antialiased bicubic) to the one size the
pipeline trains at, through preprocessing/chunked.py's template (a chunk of files a task).

Only regular files are read (preprocessing/__init__.py): an entry named like an image that
is a FIFO, a socket, a device, a folder or a dangling symlink is left out at listing
(GanSource.unusable), a counted skip under --on-bad-input skip (in the split its path
would have been drawn for; unpaired: train for trainA/B, valid for testA/B), a DataError
naming it under fail.
"""
from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from . import DataError, data_folder, with_subfolders
from .cache import Cache, digest, fingerprint_files
from .chunked import BadInput, Decoder, column_array, decode_splits, listing_skips, seconds_since, unusable_key
from .images import center_square, decode_image, images_under, resize_all

TRANSFORM_VERSION = "gan-data-v1"  # bump when the decode/resize code changes its output
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")
UNPAIRED = ("trainA", "trainB", "testA", "testB")


@dataclass
class GanSource:
    """What a reader found. kind "folder": items are image paths; kind "unpaired": items
    are (image of A, image of B) pairs; `folders` counts each folder's images."""

    root: Path
    kind: Literal["folder", "unpaired"]
    splits: dict[str, list] = field(default_factory=dict)
    folders: dict[str, int] = field(default_factory=dict)
    # per split, the listed entries that are not regular files: (path, reason)
    unusable: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def input_files(self) -> list[Path]:
        files = set()
        for items in self.splits.values():
            for it in items:
                files.update(it if isinstance(it, tuple) else (it,))
        return sorted(files)


# ---------------------------------------------------------------- readers


def _draw(rel: str, seed: int) -> float:
    """A stable per-file number in [0, 1)."""
    return int(hashlib.sha256(f"{seed}\0{rel}".encode()).hexdigest()[:12], 16) / 16 ** 12


def find_image_folder(data_dir: str | Path, valid_frac: float = 0.1, valid_max: int = 1000,
                      data_frac: float = 1.0, seed: int = 0) -> GanSource:
    """Every image under data_dir, split into train and valid by a seeded hash of its path."""
    root = data_folder(data_dir)
    if not 0 < valid_frac < 1 or valid_max < 1 or not 0 < data_frac <= 1:
        raise ValueError(f"need 0 < valid_frac < 1, valid_max >= 1 and 0 < data_frac <= 1, "
                         f"got {valid_frac}, {valid_max}, {data_frac}")
    bad: list[tuple[str, str]] = []
    files = images_under(root, IMAGE_EXTS, unusable=bad)
    if len(files) < 2:
        raise DataError(f"{root}: {'one image' if files else 'no JPEG, PNG or WebP images'} in this folder or "
                        "below; need at least two (a training and a validation one)")
    u = {p: _draw(str(p.relative_to(root)), seed) for p in files}
    held = sorted((p for p in files if u[p] < valid_frac), key=u.get)[:valid_max] or [min(files, key=u.get)]
    vs = set(held)
    cut = valid_frac + data_frac * (1 - valid_frac)  # the part of [valid_frac, 1) that trains
    train = [p for p in files if p not in vs and (data_frac >= 1 or u[p] < cut)]
    if not train:
        raise DataError(f"{root}: no training images left (of {len(files)}) with valid_frac={valid_frac}, "
                        f"data_frac={data_frac}")
    unusable = {"train": [], "valid": []}
    for p, reason in bad:
        unusable["valid" if _draw(str(Path(p).relative_to(root)), seed) < valid_frac else "train"].append((p, reason))
    return GanSource(root, "folder", {"train": train, "valid": sorted(held)}, {".": len(files)}, unusable)


def find_unpaired(data_dir: str | Path, seed: int = 0) -> GanSource:
    """CycleGAN's layout at data_dir or one folder below it: trainA/ trainB/ testA/ testB/."""
    root = data_folder(data_dir)
    top = next((c for c in with_subfolders(root) if (c / "trainA").is_dir() or (c / "trainB").is_dir()), None)
    if top is None:
        raise DataError(f"{root}: no CycleGAN data here (expected trainA/, trainB/, testA/ and testB/ "
                        "image folders, as horse2zebra.zip extracts)")
    files = {}
    unusable: dict[str, list] = {"train": [], "valid": []}
    for name in UNPAIRED:
        d = top / name
        if not d.is_dir():
            raise DataError(f"{d}: missing (CycleGAN's layout has trainA/, trainB/, testA/ and testB/)")
        files[name] = images_under(d, IMAGE_EXTS, unusable=unusable["train" if name.startswith("train") else "valid"])
        if not files[name]:
            raise DataError(f"{d}: no JPEG, PNG or WebP images")
    rng = random.Random(seed)
    splits = {split: _pair(files[f"{prefix}A"], files[f"{prefix}B"], rng)
              for split, prefix in (("train", "train"), ("valid", "test"))}
    return GanSource(top, "unpaired", splits, {k: len(v) for k, v in files.items()}, unusable)


def _pair(a: list[Path], b: list[Path], rng: random.Random) -> list[tuple[Path, Path]]:
    """Rows of one A and one B image: the larger domain once in order, the smaller one
    shuffled and repeated to the same length."""
    if len(a) >= len(b):
        other = rng.sample(b, len(b))
        return [(x, other[i % len(b)]) for i, x in enumerate(a)]
    other = rng.sample(a, len(a))
    return [(other[i % len(a)], y) for i, y in enumerate(b)]


# ---------------------------------------------------------------- decode + resize


def load(path: Path | str, size: int) -> np.ndarray:
    """File -> (size, size, 3) uint8, center-cropped; DataError naming the file if unreadable."""
    return resize_all(center_square(decode_image(Path(path))), (size,))[size]


class _GanDecoder(Decoder):
    """An item (index, image) -> a row "img"; unpaired (index, (image of A, image of B)) ->
    a row "a", "b" and the row's "idx"."""

    def __init__(self, kind: str, size: int, on_bad: BadInput):
        super().__init__(on_bad)
        self.kind, self.size = kind, size
        image = ((size, size, 3), np.uint8)
        self.columns = {"img": image} if kind == "folder" else {"a": image, "b": image, "idx": ((), np.int64)}

    def rows(self, item):
        idx, paths = item
        if self.kind == "folder":
            yield {"img": load(paths, self.size)}
        else:
            yield {"a": load(paths[0], self.size), "b": load(paths[1], self.size), "idx": idx}


def preprocess(source: GanSource, size: int, cache: Cache, name: str, on_bad: BadInput = "skip",
               seed: int = 0) -> tuple[dict, bool]:
    """Decode every split and resize to `size`; (manifest, hit). A hit starts no Ray."""
    if size < 4:
        raise ValueError(f"image size must be >= 4 px, got {size}")
    left_out = listing_skips(source.unusable, on_bad)  # before the cache: `fail` fails on a hit too
    rel = lambda it: [str(Path(p).relative_to(source.root)) for p in (it if isinstance(it, tuple) else (it,))]
    key = digest({
        "inputs": fingerprint_files(source.input_files(), source.root),
        "splits": {k: [rel(it) for it in v] for k, v in source.splits.items()},  # which file went where, paired how
        "kind": source.kind, "size": size, "seed": seed, "version": TRANSFORM_VERSION,
        **unusable_key(source.unusable, source.root),
    })

    def make(tmp: Path) -> dict:
        t0 = time.perf_counter()
        indexed = {split: list(enumerate(items)) for split, items in source.splits.items()}
        rows, skipped, bad_input = decode_splits(
            indexed, _GanDecoder(source.kind, size, on_bad), tmp, root=source.root, seed=seed, chunk=(16, 1000),
            noun="image" if source.kind == "folder" else "pair", left_out=left_out)
        return {"rows": rows, "skipped": skipped, "bad_input": bad_input, "folders": source.folders, "size": size,
                "kind": source.kind,
                "source": str(source.root), "seconds": seconds_since(t0)}

    return cache.build(name, key, make)


def read_arrays(cache: Cache, manifest: dict, split: str, columns: list[str]) -> dict[str, np.ndarray]:
    """A cached split as numpy arrays, read with pyarrow (no Ray): for checks and tests."""
    import pyarrow.parquet as pq

    folder = cache.path(manifest["name"], manifest["key"]) / split
    tables = [pq.read_table(p, columns=columns) for p in sorted(folder.glob("*.parquet"))]
    out, size = {}, manifest["size"]
    for c in columns:
        chunks = [column_array(t, c) for t in tables]
        flat = np.concatenate(chunks) if chunks else np.zeros(0)
        out[c] = flat.reshape(-1, size, size, 3) if flat.ndim > 1 else flat  # an older cache's rows: flat
    return out
