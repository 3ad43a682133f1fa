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
pipeline trains at. Each Ray Data task takes a chunk of files, as preprocessing/images.py.
"""
from __future__ import annotations

import hashlib
import pickle
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from . import DataError
from .cache import Cache, digest, fingerprint_files
from .images import decode_image, resize_all, write_chunks

TRANSFORM_VERSION = "gan-data-v1"  # bump when the decode/resize code changes its output
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")
UNPAIRED = ("trainA", "trainB", "testA", "testB")
BadInput = Literal["skip", "fail"]


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


@dataclass
class GanSource:
    """What a reader found. kind "folder": items are image paths; kind "unpaired": items
    are (image of A, image of B) pairs; `folders` counts each folder's images."""

    root: Path
    kind: Literal["folder", "unpaired"]
    splits: dict[str, list] = field(default_factory=dict)
    folders: dict[str, int] = field(default_factory=dict)

    def input_files(self) -> list[Path]:
        files = set()
        for items in self.splits.values():
            for it in items:
                files.update(it if isinstance(it, tuple) else (it,))
        return sorted(files)


# ---------------------------------------------------------------- readers


def _root(data_dir: str | Path) -> Path:
    root = Path(data_dir).absolute()  # Ray workers run in other folders
    if not root.exists():
        raise DataError(f"{root}: no such folder")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    return root


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _draw(rel: str, seed: int) -> float:
    """A stable per-file number in [0, 1)."""
    return int(hashlib.sha256(f"{seed}\0{rel}".encode()).hexdigest()[:12], 16) / 16 ** 12


def find_image_folder(data_dir: str | Path, valid_frac: float = 0.1, valid_max: int = 1000,
                      data_frac: float = 1.0, seed: int = 0) -> GanSource:
    """Every image under data_dir, split into train and valid by a seeded hash of its path."""
    root = _root(data_dir)
    if not 0 < valid_frac < 1 or valid_max < 1 or not 0 < data_frac <= 1:
        raise ValueError(f"need 0 < valid_frac < 1, valid_max >= 1 and 0 < data_frac <= 1, "
                         f"got {valid_frac}, {valid_max}, {data_frac}")
    files = _images_under(root)
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
    return GanSource(root, "folder", {"train": train, "valid": sorted(held)}, {".": len(files)})


def find_unpaired(data_dir: str | Path, seed: int = 0) -> GanSource:
    """CycleGAN's layout at data_dir or one folder below it: trainA/ trainB/ testA/ testB/."""
    root = _root(data_dir)
    candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    top = next((c for c in candidates if (c / "trainA").is_dir() or (c / "trainB").is_dir()), None)
    if top is None:
        raise DataError(f"{root}: no CycleGAN data here (expected trainA/, trainB/, testA/ and testB/ "
                        "image folders, as horse2zebra.zip extracts)")
    files = {}
    for name in UNPAIRED:
        d = top / name
        if not d.is_dir():
            raise DataError(f"{d}: missing (CycleGAN's layout has trainA/, trainB/, testA/ and testB/)")
        files[name] = _images_under(d)
        if not files[name]:
            raise DataError(f"{d}: no JPEG, PNG or WebP images")
    rng = random.Random(seed)
    splits = {split: _pair(files[f"{prefix}A"], files[f"{prefix}B"], rng)
              for split, prefix in (("train", "train"), ("valid", "test"))}
    return GanSource(top, "unpaired", splits, {k: len(v) for k, v in files.items()})


def _pair(a: list[Path], b: list[Path], rng: random.Random) -> list[tuple[Path, Path]]:
    """Rows of one A and one B image: the larger domain once in order, the smaller one
    shuffled and repeated to the same length."""
    if len(a) >= len(b):
        other = rng.sample(b, len(b))
        return [(x, other[i % len(b)]) for i, x in enumerate(a)]
    other = rng.sample(a, len(a))
    return [(other[i % len(a)], y) for i, y in enumerate(b)]


# ---------------------------------------------------------------- decode + resize


def center_square(img: np.ndarray) -> np.ndarray:
    """The largest centred square of an (H, W, 3) image."""
    h, w = img.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    return img[y : y + s, x : x + s]


def load(path: Path | str, size: int) -> np.ndarray:
    """File -> (size, size, 3) uint8, center-cropped; DataError naming the file if unreadable."""
    return resize_all(np.ascontiguousarray(center_square(decode_image(Path(path)))), (size,))[size]


class _DecodeChunk:
    """Ray Data map_batches function: each row holds one pickled chunk of (index, item) ->
    the items' images ("img"; unpaired: "a", "b" and the row's "idx")."""

    def __init__(self, kind: str, size: int, on_bad: BadInput):
        self.kind, self.size, self.on_bad = kind, size, on_bad

    def __call__(self, batch: dict) -> dict:
        cols: dict[str, list] = {"img": []} if self.kind == "folder" else {"a": [], "b": [], "idx": []}
        for blob in batch["chunk"]:
            for idx, item in pickle.loads(blob):
                try:
                    if self.kind == "folder":
                        cols["img"].append(load(item, self.size))
                    else:
                        a, b = load(item[0], self.size), load(item[1], self.size)
                        cols["a"].append(a)
                        cols["b"].append(b)
                        cols["idx"].append(idx)
                except DataError as e:
                    if self.on_bad == "fail":
                        raise
                    _warn(f"skipped {e}")
        shape = (0, self.size, self.size, 3)
        return {k: (np.asarray(v, np.int64) if k == "idx" else np.stack(v) if v else np.zeros(shape, np.uint8))
                for k, v in cols.items()}


def _chunks(items: list, n_cpus: int, seed: int) -> list[list]:
    """A few chunks per CPU of (index, item), shuffled once so the cached rows are in random order."""
    items = [(i, tuple(str(p) for p in it) if isinstance(it, tuple) else str(it)) for i, it in enumerate(items)]
    random.Random(seed).shuffle(items)
    size = max(16, min(1000, -(-len(items) // (4 * n_cpus))))
    return [items[i : i + size] for i in range(0, len(items), size)]


def preprocess(source: GanSource, size: int, cache: Cache, name: str, on_bad: BadInput = "skip",
               seed: int = 0) -> tuple[dict, bool]:
    """Decode every split and resize to `size`; (manifest, hit). A hit starts no Ray."""
    if size < 4:
        raise ValueError(f"image size must be >= 4 px, got {size}")
    rel = lambda it: [str(Path(p).relative_to(source.root)) for p in (it if isinstance(it, tuple) else (it,))]
    key = digest({
        "inputs": fingerprint_files(source.input_files(), source.root),
        "splits": {k: [rel(it) for it in v] for k, v in source.splits.items()},  # which file went where, paired how
        "kind": source.kind, "size": size, "seed": seed, "version": TRANSFORM_VERSION,
    })

    def make(tmp: Path) -> dict:
        from .runtime import cluster_cpus, init_ray

        init_ray()
        t0, rows, skipped = time.perf_counter(), {}, {}
        for split, items in source.splits.items():
            chunks = _chunks(items, cluster_cpus(), seed)
            rows[split] = write_chunks(chunks, _DecodeChunk(source.kind, size, on_bad), tmp / split)
            skipped[split] = len(items) - rows[split]
            if skipped[split]:
                _warn(f"{split}: skipped {skipped[split]} unreadable {'image' if source.kind == 'folder' else 'pair'}(s) "
                      f"of {len(items)} (--on-bad-input fail stops at the first)")
            if rows[split] == 0:
                raise DataError(f"{source.root}: no readable images in split {split!r}")
        return {"rows": rows, "skipped": skipped, "folders": source.folders, "size": size, "kind": source.kind,
                "source": str(source.root), "seconds": round(time.perf_counter() - t0, 3)}

    return cache.build(name, key, make)


def read_arrays(cache: Cache, manifest: dict, split: str, columns: list[str]) -> dict[str, np.ndarray]:
    """A cached split as numpy arrays, read with pyarrow (no Ray): for checks and tests."""
    import pyarrow.parquet as pq

    folder = cache.path(manifest["name"], manifest["key"]) / split
    tables = [pq.read_table(p, columns=columns) for p in sorted(folder.glob("*.parquet"))]
    out, size = {}, manifest["size"]
    for c in columns:
        chunks = [t.column(c).to_numpy(zero_copy_only=False) for t in tables]
        flat = np.concatenate(chunks) if chunks else np.zeros(0)
        if flat.dtype == object:  # Ray's tensor columns come back as one flat array per row
            flat = np.stack(list(flat)).reshape(-1, size, size, 3)
        out[c] = flat
    return out
