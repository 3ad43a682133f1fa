"""Image data sets through Ray Data: readers of the shipped layouts, decode and resize
in parallel to every size the training phases ask for, cached as uint8 parquet.

CIFAR-10 comes in two layouts:
- the python pickle batches: cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
- fast.ai's PNG folders: cifar10/{train,test}/<class>/*.png (and labels.txt)

The image primitives every image set uses are here too: decode_image (a file to RGB
uint8, DataError naming a file that does not decode), center_square and resize_all
(antialiased bicubic to each size). Decoding runs through preprocessing/chunked.py's
template: each Ray Data task takes a chunk of files.

Only regular files are read (preprocessing/__init__.py): an entry of a class folder named
like an image that is a FIFO, a socket, a device, a folder or a dangling symlink is left out
at listing (ImageSource.unusable) and is, under --on-bad-input skip, a counted skip with its
reason in the manifest's "bad_input", under fail a DataError naming it.
"""
from __future__ import annotations

import io
import os
import pickle
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from . import DataError, data_folder, file_problem, problem_message, read_regular, split_usable, with_subfolders
from .cache import Cache, digest, fingerprint_files
from .chunked import BadInput, Decoder, decode_splits, image_sizes, listing_skips, seconds_since, unusable_key

TRANSFORM_VERSION = "images-v1"  # bump when the decode/resize code changes its output
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclass
class ImageSource:
    """What a reader found: the layout, class names and, per split, its inputs."""

    root: Path
    layout: Literal["pickle", "folders"]
    classes: list[str]
    # pickle: the batch files of each split; folders: (path, label) of every image
    splits: dict[str, list] = field(default_factory=dict)
    # per split, the listed entries that are not regular files: (path, reason)
    unusable: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def input_files(self) -> list[Path]:
        if self.layout == "pickle":
            return [p for files in self.splits.values() for p in files]
        return [p for items in self.splits.values() for p, _ in items]

    def count(self, split: str) -> int:
        if self.layout == "folders":
            return len(self.splits[split])
        return sum(len(_load_batch(p)[1]) for p in self.splits[split])


# ---------------------------------------------------------------- readers


def find_cifar10(data_dir: str | Path) -> ImageSource:
    """CIFAR-10 in either shipped layout, at data_dir or one folder below it (as an
    archive extracts): cifar-10-batches-py/ or a folder with train/ and test/."""
    root = data_folder(data_dir)
    for c in with_subfolders(root):
        if os.path.lexists(c / "data_batch_1") or os.path.lexists(c / "test_batch"):  # a FIFO too: named in the error
            return _pickle_source(c)
        if (c / "train").is_dir() and (c / "test").is_dir():
            return image_folders(c, ("train", "test"))
    raise DataError(
        f"{root}: no CIFAR-10 here (expected cifar-10-batches-py/ with data_batch_1..5 and "
        "test_batch, or train/<class>/*.png and test/<class>/*.png)"
    )


def _pickle_source(folder: Path) -> ImageSource:
    train = sorted(folder.glob("data_batch_*"))
    test = [folder / "test_batch"]
    missing = [p.name for p in train + test if file_problem(p) == "missing"]
    if not train or missing:
        raise DataError(f"{folder}: incomplete CIFAR-10 pickle batches (missing {missing or 'data_batch_*'})")
    for p in train + test:  # a batch holds 10,000 images: one that is no regular file stops the run
        if problem := file_problem(p):
            raise DataError(problem_message(p, problem))
    classes = [f"class{i}" for i in range(10)]
    meta = folder / "batches.meta"
    if meta.is_file():
        try:
            names = [n.decode() if isinstance(n, bytes) else str(n)
                     for n in _unpickle(io.BytesIO(read_regular(meta)))[b"label_names"]]
            if len(names) != 10:
                raise ValueError(f"{len(names)} label names, expected 10")
            classes = names
        except Exception as e:  # a damaged meta file only costs the names
            print(f"warning: {meta}: unreadable ({type(e).__name__}: {e}); classes are numbered", file=sys.stderr)
    return ImageSource(folder, "pickle", classes, {"train": train, "valid": test})


def image_folders(root: Path, splits: tuple[str, str] = ("train", "test")) -> ImageSource:
    """ImageNet-style folders: root/<split>/<class>/<image>. Classes are the train
    split's sub-folders, in labels.txt's order when that file exists, else sorted."""
    train_dir = root / splits[0]
    labels_txt = root / "labels.txt"
    dirs = sorted(d.name for d in train_dir.iterdir() if d.is_dir()) if train_dir.is_dir() else []
    if labels_txt.is_file():
        named = [l.strip() for l in labels_txt.read_text(errors="replace").splitlines() if l.strip()]
        if sorted(named) == dirs:
            dirs = named
    if not dirs:
        raise DataError(f"{train_dir}: no class folders (expected {train_dir}/<class>/*.png)")
    label = {c: i for i, c in enumerate(dirs)}
    out: dict[str, list] = {}
    unusable: dict[str, list[tuple[str, str]]] = {}
    for split, name in zip(splits, ("train", "valid")):
        d = root / split
        if not d.is_dir():
            raise DataError(f"{d}: missing (expected {d}/<class>/*.png)")
        items, bad = [], []
        for cdir in sorted(p for p in d.iterdir() if p.is_dir()):
            if cdir.name not in label:
                raise DataError(f"{cdir}: class folder not in {train_dir} (classes: {', '.join(dirs)})")
            named = sorted(p for p in cdir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
            items += [(p, label[cdir.name]) for p in split_usable(named, bad)]
        if not items:
            raise DataError(f"{d}: no images (expected {d}/<class>/*.png)"
                            + (f"; {len(bad)} entries named like images are not regular files" if bad else ""))
        out[name], unusable[name] = items, bad
    return ImageSource(root, "folders", dirs, out, unusable)


class _BatchUnpickler(pickle.Unpickler):
    """CIFAR's python batches hold a dict of bytes, ints, lists and numpy arrays: rebuild
    only those. Plain pickle.load runs whatever a crafted file names (os.system ...);
    this refuses every other global, so a damaged or hostile batch is a DataError."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol 5
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"), ("codecs", "encode"),  # how protocols 0-2 store bytes
        ("__builtin__", "bytes"), ("builtins", "bytes"),  # protocol 0's empty bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name} (a CIFAR batch holds only arrays and lists)")


def _unpickle(f) -> dict:
    d = _BatchUnpickler(f, encoding="bytes").load()
    if not isinstance(d, dict):
        raise ValueError(f"a {type(d).__name__}, not a dict")
    return d


def _load_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """One CIFAR pickle batch -> (N, 32, 32, 3) uint8 images and N labels."""
    try:
        d = _unpickle(io.BytesIO(read_regular(path)))
        raw = np.asarray(d[b"data"])
        if raw.dtype == object or not (np.issubdtype(raw.dtype, np.integer) and raw.size % 3072 == 0):
            raise ValueError(f"data is {raw.dtype} of shape {raw.shape}, expected uint8 rows of 3072")
        data = raw.astype(np.uint8).reshape(-1, 3, 32, 32)
        labels = [int(x) for x in d[b"labels"]]
    except Exception as e:
        raise DataError(f"{path}: not a CIFAR-10 pickle batch ({type(e).__name__}: {e})") from None
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data.transpose(0, 2, 3, 1), labels


# ---------------------------------------------------------------- decode + resize (every image set)


def images_under(folder: Path, exts: tuple[str, ...], exclude: set[Path] = frozenset(),
                 unusable: list[tuple[str, str]] | None = None) -> list[Path]:
    """Every regular file (or symlink to one) with one of `exts` under folder at any depth,
    sorted; hidden files and folders are left out. An entry named like an image that is not
    a regular file (a FIFO, a socket, a device, a folder, a dangling symlink) is left out
    too, and appended to `unusable` as (path, reason) when that list is given."""
    named = sorted(p for p in folder.rglob("*") if p.suffix.lower() in exts
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts) and p not in exclude)
    return split_usable(named, [] if unusable is None else unusable)


def center_square(img: np.ndarray) -> np.ndarray:
    """The largest centred square of an (H, W[, C]) image."""
    h, w = img.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    return img[y : y + s, x : x + s]


def resize_all(img: np.ndarray, sizes: tuple[int, ...]) -> dict[int, np.ndarray]:
    """One (H, W, 3) uint8 image -> {size: (size, size, 3) uint8}, antialiased."""
    from PIL import Image

    out, pil = {}, None
    for s in sizes:
        if img.shape[0] == s and img.shape[1] == s:
            out[s] = img
        else:
            pil = pil or Image.fromarray(img)
            out[s] = np.asarray(pil.resize((s, s), Image.BICUBIC, reducing_gap=None))
    return out


MAX_PIXELS = 89_478_485  # PIL's decompression-bomb threshold, as an error: a 60-byte PNG may claim 30000x30000


def decode_image(path: Path) -> np.ndarray:
    """File -> (H, W, 3) uint8; raises DataError naming the file if it does not decode."""
    from PIL import Image

    try:
        data = read_regular(path)  # a FIFO or a device is refused unopened, so nothing blocks
        if not data:
            raise ValueError("empty file")
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > MAX_PIXELS or w < 1 or h < 1:  # before load() allocates it
                raise ValueError(f"claims {w}x{h} pixels (at most {MAX_PIXELS:,} are decoded)")
            im.load()  # decode now: a truncated file fails here, not later
            return np.asarray(im.convert("RGB"))
    except DataError:
        raise
    except Exception as e:
        why = re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", str(e))  # PIL names the buffer; the path says more
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {why})") from None


class _CifarDecoder(Decoder):
    """An item -> rows of its label and its image at every size: an item is (path, label)
    in the folders layout, a whole batch file in the pickle one (a damaged batch stops the
    run whatever on_bad says: it would lose 10,000 images)."""

    def __init__(self, layout: str, sizes: tuple[int, ...], on_bad: BadInput):
        super().__init__(on_bad if layout == "folders" else "fail")
        self.layout, self.sizes = layout, sizes
        self.row_per_item = layout == "folders"
        self.columns = {"label": ((), np.int64)} | {f"img{s}": ((s, s, 3), np.uint8) for s in sizes}

    def rows(self, item):
        if self.layout == "pickle":
            data, labels = _load_batch(Path(item))
            pairs = zip(data, labels)
        else:
            pairs = [(decode_image(Path(item[0])), item[1])]
        for img, label in pairs:
            yield {"label": label} | {f"img{s}": a for s, a in resize_all(img, self.sizes).items()}


def preprocess_images(
    source: ImageSource,
    sizes: tuple[int, ...],
    cache: Cache,
    name: str,
    on_bad: BadInput = "skip",
    seed: int = 0,
) -> tuple[dict, bool]:
    """Decode and resize every split to each size; (manifest, hit). A hit starts no Ray.
    The listed entries that are not regular files are skipped and counted, or under
    on_bad="fail" a DataError naming the first, before the cache is looked at."""
    sizes = image_sizes(sizes)
    left_out = listing_skips(source.unusable, on_bad)
    key = digest(
        {
            "inputs": fingerprint_files(source.input_files(), source.root),
            "layout": source.layout,
            "sizes": sizes,
            "seed": seed,
            "version": TRANSFORM_VERSION,
            **unusable_key(source.unusable, source.root),
        }
    )

    def make(tmp: Path) -> dict:
        t0 = time.perf_counter()
        # a batch file is the natural chunk (10,000 images); image files a few chunks per CPU
        chunk, shuffle = ((1, 1), False) if source.layout == "pickle" else ((64, 2000), True)
        rows, skipped, bad_input = decode_splits(source.splits, _CifarDecoder(source.layout, sizes, on_bad), tmp,
                                                 root=source.root, seed=seed, chunk=chunk, shuffle=shuffle,
                                                 left_out=left_out)
        return {
            "rows": rows,
            "skipped": skipped,
            "bad_input": bad_input,
            "sizes": list(sizes),
            "classes": source.classes,
            "source": str(source.root),
            "seconds": seconds_since(t0),
        }

    return cache.build(name, key, make)
