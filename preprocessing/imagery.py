"""Image-to-image data (lessons 13 and 14) through Ray Data, cached as uint8 parquet.

Readers:
- any folder tree of JPEG/PNG images (ImageNet-style, for super-resolution and style
  training): with train/ and valid/ (or val/) sub-folders those are the splits, else
  every image under the folder, split by a seeded hash of its path;
- a style image by path;
- Carvana: train/*.jpg with train_masks/*_mask.gif, split by car id (the part of the
  name before the last "_"), never by image: a car's 16 views look alike, and one car in
  both splits would grade the model on what it trained on.

Each image is decoded once and resized to every size the pipeline asks for: for super-
resolution the low-resolution inputs and the high-resolution targets are resizes of the
same square crop (antialiased bicubic), one column per size; for Carvana the image and its
mask (mask resized as grey levels, then thresholded at half), through
preprocessing/chunked.py's template: each Ray Data task takes a chunk of files.

Only regular files are read (preprocessing/__init__.py): an entry named like an image (or
a mask) that is a FIFO, a socket, a device, a folder or a dangling symlink is left out at
listing (ImageSet.unusable), a counted skip under --on-bad-input skip, a DataError naming
it under fail. A style image named by path that is not a regular file is a DataError.
"""
from __future__ import annotations

import hashlib
import io
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from . import DataError, data_folder, file_problem, problem_message, read_regular, split_usable, with_subfolders
from .cache import Cache, digest, fingerprint_files
from .chunked import BadInput, Decoder, decode_splits, image_sizes, listing_skips, seconds_since, unusable_key, warn
from .images import center_square, decode_image, images_under, resize_all

TRANSFORM_VERSION = "imagery-v1"  # bump when the decode/resize code changes its output
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
MASK_EXTS = (".gif", ".png")


@dataclass
class ImageSet:
    """What a reader found. kind "folder": items are image paths; kind "carvana": items
    are (image, mask) path pairs."""

    root: Path
    kind: Literal["folder", "carvana"]
    splits: dict[str, list] = field(default_factory=dict)
    missing: int = 0  # images left out at listing (Carvana: no mask), counted as skipped
    # per split, the listed entries that are not regular files: (path, reason)
    unusable: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def input_files(self) -> list[Path]:
        out = []
        for items in self.splits.values():
            for it in items:
                out += list(it) if isinstance(it, tuple) else [it]
        return out


# ---------------------------------------------------------------- readers


def _in_valid(rel: str, valid_frac: float, seed: int) -> bool:
    """A stable per-file draw: adding files never moves another file between splits."""
    h = int(hashlib.sha256(f"{seed}\0{rel}".encode()).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < valid_frac


def find_image_folder(data_dir: str | Path, valid_frac: float = 0.2, seed: int = 0,
                      exclude: tuple[Path, ...] = ()) -> ImageSet:
    """Any folder tree of JPEG/PNG images. `exclude`: files that are not training images
    (a style image kept in the same folder)."""
    root = data_folder(data_dir)
    skip = {Path(p).absolute() for p in exclude}
    valid_dir = next((root / v for v in ("valid", "val") if (root / v).is_dir()), None)
    if (root / "train").is_dir() and valid_dir is not None:
        unusable: dict[str, list] = {"train": [], "valid": []}
        splits = {name: images_under(d, IMAGE_EXTS, skip, unusable[name])
                  for name, d in (("train", root / "train"), ("valid", valid_dir))}
        for name, d in (("train", root / "train"), ("valid", valid_dir)):
            if not splits[name]:
                raise DataError(f"{d}: no JPEG or PNG images")
        return ImageSet(root, "folder", splits, unusable=unusable)
    bad: list[tuple[str, str]] = []
    files = images_under(root, IMAGE_EXTS, skip, bad)
    if not files:
        raise DataError(f"{root}: no JPEG or PNG images in this folder or below")
    if len(files) < 2:
        raise DataError(f"{root}: one image only; need at least two (a training and a validation one)")
    if not 0 < valid_frac < 1:
        raise ValueError(f"valid_frac must be in (0, 1), got {valid_frac}")
    valid = [p for p in files if _in_valid(str(p.relative_to(root)), valid_frac, seed)]
    if not valid:  # a small folder: hold out one image rather than none
        valid = [files[-1]]
    vs = set(valid)
    # an unusable entry is counted in the split its path would have been drawn for
    unusable = {"train": [], "valid": []}
    for p, reason in bad:
        unusable["valid" if _in_valid(os.path.relpath(p, root), valid_frac, seed) else "train"].append((p, reason))
    return ImageSet(root, "folder", {"train": [p for p in files if p not in vs], "valid": valid}, unusable=unusable)


def car_id(image: Path) -> str:
    """Carvana names images <car id>_<view>.jpg (view 01..16)."""
    stem = Path(image).stem
    return stem.rsplit("_", 1)[0] if "_" in stem else stem


def find_carvana(data_dir: str | Path, valid_frac: float = 0.2, seed: int = 0, on_bad: BadInput = "skip") -> ImageSet:
    """Carvana's layout at data_dir or one folder below it: train/<car>_<view>.jpg and
    train_masks/<car>_<view>_mask.gif. The validation cars are a seeded draw of car ids."""
    root = data_folder(data_dir)
    top = next((c for c in with_subfolders(root) if (c / "train").is_dir() and (c / "train_masks").is_dir()), None)
    if top is None:
        raise DataError(f"{root}: no Carvana data here (expected train/<car>_<view>.jpg and "
                        "train_masks/<car>_<view>_mask.gif)")
    bad: list[tuple[str, str]] = []
    images = split_usable(sorted(p for p in (top / "train").iterdir() if p.suffix.lower() in IMAGE_EXTS), bad)
    if not images:
        raise DataError(f"{top / 'train'}: no JPEG or PNG images")
    pairs, missing, bad_masks = [], [], {}
    for img in images:
        # the first mask name that exists (lexists: a FIFO or a dangling link is one too)
        mask = next((m for ext in MASK_EXTS
                     if os.path.lexists(m := top / "train_masks" / f"{img.stem}_mask{ext}")), None)
        if mask is not None and (problem := file_problem(mask)):
            bad_masks[str(mask)] = car_id(img)
            bad.append((str(mask), problem))
            continue
        if mask is None:
            msg = f"{img}: no mask (expected {top / 'train_masks' / (img.stem + '_mask.gif')})"
            if on_bad == "fail":
                raise DataError(msg)
            missing.append(msg)
            continue
        pairs.append((img, mask))
    if missing:
        warn(f"skipped {len(missing)} image(s) without a mask, e.g. {missing[0]} "
              "(--on-bad-input fail stops at the first)")
    if not pairs:
        raise DataError(f"{top / 'train_masks'}: no mask for any image in {top / 'train'}")
    if not 0 < valid_frac < 1:
        raise ValueError(f"valid_frac must be in (0, 1), got {valid_frac}")
    cars = sorted({car_id(i) for i, _ in pairs})
    if len(cars) < 2:
        raise DataError(f"{top / 'train'}: images of one car only; the split by car needs at least two")
    random.Random(seed).shuffle(cars)
    valid_cars = set(cars[: max(1, round(len(cars) * valid_frac))])
    splits = {"train": [p for p in pairs if car_id(p[0]) not in valid_cars],
              "valid": [p for p in pairs if car_id(p[0]) in valid_cars]}
    unusable = {"train": [], "valid": []}
    for p, reason in bad:  # counted in the split of its car (a car not drawn for valid trains)
        unusable["valid" if bad_masks.get(p, car_id(Path(p))) in valid_cars else "train"].append((p, reason))
    if on_bad == "fail":
        listing_skips(unusable, on_bad)  # raises, naming the first
    return ImageSet(top, "carvana", splits, missing=len(missing), unusable=unusable)


# ---------------------------------------------------------------- decode


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """(H, W[, 3]) uint8 -> (size, size[, 3]), antialiased bicubic."""
    return resize_all(img, (size,))[size]


def decode_mask(path: Path) -> np.ndarray:
    """A mask file (Carvana: a palette GIF of 0/1) -> (H, W) bool."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(read_regular(path))) as im:  # a FIFO is refused unopened
            im.load()
            grey = np.asarray(im.convert("L"))
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: not a readable mask ({type(e).__name__}: {e})") from None
    # a palette that maps 1 to white gives 0/255; one that keeps the raw 0/1 gives 0/1
    return grey > (127 if grey.max() > 1 else 0)


def decode_pair(image: Path, mask: Path) -> tuple[np.ndarray, np.ndarray]:
    """An image and its mask, which must have the same size."""
    img, m = decode_image(image), decode_mask(mask)
    if img.shape[:2] != m.shape:
        raise DataError(f"{mask}: mask is {m.shape[1]}x{m.shape[0]} px but its image {Path(image).name} is "
                        f"{img.shape[1]}x{img.shape[0]} px")
    return img, m


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """(H, W) bool -> (size, size) uint8 0/1: resized as grey levels, thresholded at half."""
    grey = resize((mask.astype(np.uint8) * 255), size)
    return (grey >= 128).astype(np.uint8)


def load_style(path: str | Path, size: int) -> np.ndarray:
    """A style image by path -> (size, size, 3) uint8 (centre square, resized)."""
    p = Path(path)
    problem = file_problem(p)
    if problem:
        raise DataError(f"style image {problem_message(p, problem)}")
    return resize(center_square(decode_image(p)), size)


class _ImageryDecoder(Decoder):
    """An item -> one row: kind "folder": an image path -> its centre square at every size;
    "carvana": (image, mask) -> the whole frame squashed to a square at every size, as
    lesson 14 did, its mask and its car id."""

    def __init__(self, kind: str, sizes: tuple[int, ...], on_bad: BadInput):
        super().__init__(on_bad)
        self.kind, self.sizes = kind, sizes
        self.columns = {f"img{s}": ((s, s, 3), np.uint8) for s in sizes}
        if kind == "carvana":
            self.columns |= {f"mask{s}": ((s, s), np.uint8) for s in sizes} | {"car": ((), object)}

    def rows(self, item):
        if self.kind == "folder":
            yield {f"img{s}": a for s, a in resize_all(center_square(decode_image(Path(item))), self.sizes).items()}
            return
        image, mask = Path(item[0]), Path(item[1])
        img, m = decode_pair(image, mask)
        yield ({f"img{s}": a for s, a in resize_all(img, self.sizes).items()}
               | {f"mask{s}": resize_mask(m, s) for s in self.sizes} | {"car": car_id(image)})


def preprocess(source: ImageSet, sizes: tuple[int, ...], cache: Cache, name: str,
               on_bad: BadInput = "skip", seed: int = 0) -> tuple[dict, bool]:
    """Decode every split and resize to each size; (manifest, hit). A hit starts no Ray.
    The listed entries that are not regular files are skipped and counted, or under
    on_bad="fail" a DataError naming the first, before the cache is looked at."""
    sizes = image_sizes(sizes)
    left_out = listing_skips(source.unusable, on_bad)
    rel = lambda items: [[str(Path(p).relative_to(source.root)) for p in (it if isinstance(it, tuple) else (it,))]
                         for it in items]
    key = digest({
        "inputs": fingerprint_files(source.input_files(), source.root),
        "splits": {k: rel(v) for k, v in source.splits.items()},  # which file went where
        "kind": source.kind, "sizes": sizes, "seed": seed, "version": TRANSFORM_VERSION,
        **unusable_key(source.unusable, source.root),
    })

    def make(tmp: Path) -> dict:
        t0 = time.perf_counter()
        rows, skipped, bad_input = decode_splits(source.splits, _ImageryDecoder(source.kind, sizes, on_bad), tmp,
                                                 root=source.root, seed=seed, chunk=(16, 500), noun="item",
                                                 left_out=left_out)
        out = {
            "rows": rows, "skipped": skipped, "bad_input": bad_input, "missing": source.missing, "sizes": list(sizes),
            "source": str(source.root), "kind": source.kind, "seconds": seconds_since(t0),
        }
        if source.kind == "carvana":
            out["cars"] = {s: sorted({car_id(Path(i)) for i, _ in items}) for s, items in source.splits.items()}
        return out

    return cache.build(name, key, make)
