"""Image data sets through Ray Data: readers of the shipped layouts, decode and resize
in parallel to every size the training phases ask for, cached as uint8 parquet.

CIFAR-10 comes in two layouts:
- the python pickle batches: cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
- fast.ai's PNG folders: cifar10/{train,test}/<class>/*.png (and labels.txt)

Per-file overhead dominates Ray Data's own file readers for small images (DESIGN.md:
read_images ran 1,000 img/s where a plain loop ran 13,400), so each Ray Data task
takes a chunk of files and decodes them with one PIL call each.
"""
from __future__ import annotations

import io
import pickle
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from . import DataError
from .cache import Cache, digest, fingerprint_files

TRANSFORM_VERSION = "images-v1"  # bump when the decode/resize code changes its output
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
BadInput = Literal["skip", "fail"]


@dataclass
class ImageSource:
    """What a reader found: the layout, class names and, per split, its inputs."""

    root: Path
    layout: Literal["pickle", "folders"]
    classes: list[str]
    # pickle: the batch files of each split; folders: (path, label) of every image
    splits: dict[str, list] = field(default_factory=dict)

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
    root = Path(data_dir).absolute()  # Ray workers run in other folders
    if not root.exists():
        raise DataError(f"{root}: no such folder")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    for c in candidates:
        if (c / "data_batch_1").is_file() or (c / "test_batch").is_file():
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
    missing = [p.name for p in train + test if not p.is_file()]
    if not train or missing:
        raise DataError(f"{folder}: incomplete CIFAR-10 pickle batches (missing {missing or 'data_batch_*'})")
    classes = [f"class{i}" for i in range(10)]
    meta = folder / "batches.meta"
    if meta.is_file():
        try:
            with open(meta, "rb") as f:
                names = [n.decode() if isinstance(n, bytes) else str(n) for n in _unpickle(f)[b"label_names"]]
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
    for split, name in zip(splits, ("train", "valid")):
        d = root / split
        if not d.is_dir():
            raise DataError(f"{d}: missing (expected {d}/<class>/*.png)")
        items = []
        for cdir in sorted(p for p in d.iterdir() if p.is_dir()):
            if cdir.name not in label:
                raise DataError(f"{cdir}: class folder not in {train_dir} (classes: {', '.join(dirs)})")
            items += [(p, label[cdir.name]) for p in sorted(cdir.iterdir()) if p.suffix.lower() in IMAGE_EXTS]
        if not items:
            raise DataError(f"{d}: no images (expected {d}/<class>/*.png)")
        out[name] = items
    return ImageSource(root, "folders", dirs, out)


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
        with open(path, "rb") as f:
            d = _unpickle(f)
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


# ---------------------------------------------------------------- decode + resize


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
        data = Path(path).read_bytes()
        if not data:
            raise ValueError("empty file")
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > MAX_PIXELS or w < 1 or h < 1:  # before load() allocates it
                raise ValueError(f"claims {w}x{h} pixels (at most {MAX_PIXELS:,} are decoded)")
            im.load()  # decode now: a truncated file fails here, not later
            return np.asarray(im.convert("RGB"))
    except Exception as e:
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


class _DecodeChunk:
    """Ray Data map_batches function: rows each holding one pickled chunk of inputs ->
    the chunk's images, decoded and resized. Each task gets only its own chunk (a function
    holding every chunk cost each task 0.5 s to unpickle at CIFAR-10's size)."""

    def __init__(self, layout: str, sizes: tuple[int, ...], on_bad: BadInput):
        self.layout, self.sizes, self.on_bad = layout, sizes, on_bad

    def __call__(self, batch: dict) -> dict:
        images: dict[int, list] = {s: [] for s in self.sizes}
        labels: list[int] = []
        for blob in batch["chunk"]:
            for img, label in self._decode(pickle.loads(blob)):
                for s, arr in resize_all(img, self.sizes).items():
                    images[s].append(arr)
                labels.append(label)
        out = {"label": np.asarray(labels, dtype=np.int64)}
        for s in self.sizes:
            out[f"img{s}"] = np.stack(images[s]) if labels else np.zeros((0, s, s, 3), np.uint8)
        return out

    def _decode(self, chunk: list):
        if self.layout == "pickle":
            data, labels = _load_batch(Path(chunk[0]))
            yield from zip(data, labels)
            return
        for path, label in chunk:
            try:
                yield decode_image(path), label
            except DataError as e:
                if self.on_bad == "fail":
                    raise
                print(f"warning: skipped {e}", file=sys.stderr)


def _chunks(source: ImageSource, split: str, n_cpus: int, seed: int) -> list[list]:
    """Split a split's inputs into chunks: a few per CPU, shuffled once so the cached
    rows are in random order (the class folders are sorted)."""
    items = [(str(p), label) for p, label in source.splits[split]] if source.layout == "folders" else [
        str(p) for p in source.splits[split]]
    if source.layout == "pickle":
        return [[p] for p in items]  # a batch file is the natural chunk (10,000 images)
    random.Random(seed).shuffle(items)
    size = max(64, min(2000, -(-len(items) // (4 * n_cpus))))
    return [items[i : i + size] for i in range(0, len(items), size)]


def preprocess_images(
    source: ImageSource,
    sizes: tuple[int, ...],
    cache: Cache,
    name: str,
    on_bad: BadInput = "skip",
    seed: int = 0,
) -> tuple[dict, bool]:
    """Decode and resize every split to each size; (manifest, hit). A hit starts no Ray."""
    sizes = tuple(sorted(set(int(s) for s in sizes)))
    if not sizes or min(sizes) < 4:
        raise ValueError(f"image sizes must be >= 4 px, got {sizes}")
    key = digest(
        {
            "inputs": fingerprint_files(source.input_files(), source.root),
            "layout": source.layout,
            "sizes": sizes,
            "seed": seed,
            "version": TRANSFORM_VERSION,
        }
    )

    def make(tmp: Path) -> dict:
        from .runtime import cluster_cpus, init_ray

        init_ray()
        t0, rows, expected = time.perf_counter(), {}, {}
        for split in source.splits:
            chunks = _chunks(source, split, cluster_cpus(), seed)
            rows[split] = write_chunks(chunks, _DecodeChunk(source.layout, sizes, on_bad), tmp / split)
            # a damaged pickle batch stops the run, so only image folders can skip: no need to
            # unpickle 50,000 images again just to count them
            expected[split] = rows[split] if source.layout == "pickle" else source.count(split)
            if rows[split] < expected[split]:
                print(
                    f"warning: {split}: skipped {expected[split] - rows[split]} unreadable image(s) "
                    f"of {expected[split]} (--on-bad-input fail stops at the first)",
                    file=sys.stderr,
                )
            if rows[split] == 0:
                raise DataError(f"{source.root}: no readable images in split {split!r}")
        return {
            "rows": rows,
            "skipped": {s: expected[s] - rows[s] for s in rows},
            "sizes": list(sizes),
            "classes": source.classes,
            "source": str(source.root),
            "seconds": round(time.perf_counter() - t0, 3),
        }

    return cache.build(name, key, make)


def write_chunks(chunks: list, decode, out: Path) -> int:
    """Decode each chunk in its own Ray Data task (``decode`` maps a batch holding one pickled
    chunk to columns) and write parquet files to ``out``; the rows written. A DataError in a
    task surfaces as itself, not wrapped in Ray's errors."""
    import ray

    rows_in = [{"chunk": pickle.dumps(c, protocol=5)} for c in chunks]
    ds = ray.data.from_items(rows_in, override_num_blocks=len(rows_in)).map_batches(decode, batch_size=1)
    # Ray Data reserves part of the CPUs for each operator: on 2 CPUs that ran this map one
    # task at a time; the chunks are the only work, so let it use them all
    ds.context.op_resource_reservation_enabled = False
    try:
        ds.write_parquet(str(out))
    except Exception as e:  # Ray wraps the worker's DataError: surface its message
        raise _unwrap_data_error(e) from None
    return sum(f.num_rows for f in _parquet_files(out))


def _parquet_files(folder: Path):
    import pyarrow.parquet as pq

    return [pq.ParquetFile(p).metadata for p in sorted(folder.glob("*.parquet"))]


def _unwrap_data_error(e: BaseException) -> BaseException:
    """Ray wraps a worker's DataError (RayTaskError -> UserCodeException -> DataError):
    find it so the user sees one line naming the file, not Ray's stack."""
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


def read_split(cache: Cache, manifest: dict, split: str, columns: list[str]):
    """A cached split as a Ray Dataset of the given columns."""
    import ray

    folder = cache.path(manifest["name"], manifest["key"]) / split
    return ray.data.read_parquet(str(folder), columns=columns)
