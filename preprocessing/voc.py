"""Pascal VOC 2007 through Ray Data: readers of both shipped annotation formats, then decode,
resize (squashed to a square, as lessons 8 and 9 did) and scale the boxes with the image,
cached as uint8 parquet like every image set.

Two layouts, found at the given folder or up to two levels below it:
- VOC's own: VOCdevkit/VOC2007/{JPEGImages/<id>.jpg, Annotations/<id>.xml,
  ImageSets/Main/{train,val,test}.txt}, with each object's `difficult` flag;
- fast.ai's COCO-style copy: pascal_{train,val,test}2007.json (bbox [x, y, w, h], 0-based,
  `ignore` = difficult) beside a folder holding JPEGImages/.

Boxes are kept as (x1, y1, x2, y2) in pixel-edge coordinates: a VOC box (xmin, ymin, xmax,
ymax) of 1-based inclusive pixels is (xmin - 1, ymin - 1, xmax, ymax), a JSON bbox (x, y, w,
h) is (x, y, x + w, y + h); both then become fractions of the image's width and height, so
one box column serves every image size.

Bad input, with --on-bad-input skip (the default) counted in a warning and in the
manifest's "skipped", with `fail` a DataError naming the file at the first:
- an image listed in an image set (or a JSON) whose JPEG is absent: the image is skipped;
- an annotation without a usable size (no <size>, or width/height missing or not > 0), or an
  XML that does not parse: the image is skipped;
- a box outside its image by more than one pixel, or empty (xmax <= xmin): the box is
  dropped (boxes off by at most a pixel are clipped); an image left with no box is skipped;
- a JPEG that does not decode: the image is skipped;
- a listed JPEG or XML that is not a regular file (a FIFO, a socket, a device, a folder, a
  dangling symlink: judged by stat, never opened, so nothing blocks): the image is skipped,
  counted under that reason ("FIFO", "dangling symlink", ...).
An image set .txt or a JSON that is there but is not a regular file is a DataError naming it.
A class name that is not among the config's classes is always an error: it is a config
that does not fit the data, not a damaged file.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from xml.etree import ElementTree as ET

import numpy as np

from . import DataError, data_folder, file_problem, problem_message, read_regular, regular_file
from .cache import Cache, digest, fingerprint_files
from .chunked import BadInput, Decoder, chunks, image_sizes, seconds_since, write_chunks
from .images import decode_image, resize_all

TRANSFORM_VERSION = "voc-v1"  # bump when the parse/decode/resize code changes its output
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
SPLITS = ("train", "val", "test")
BOX_TOLERANCE = 1.0  # px a box may stick out of its image and be clipped rather than dropped


@dataclass
class Annotation:
    """One image's objects. Boxes (n, 4) in pixel-edge coordinates of a width x height image."""

    image: Path
    width: int
    height: int
    boxes: np.ndarray
    names: list[str]
    difficult: np.ndarray
    where: str  # the file (and entry) the annotation came from, for messages


@dataclass
class PascalSource:
    """What find_pascal found: the layout and, per split, the items it lists."""

    root: Path                          # VOC2007/ (voc) or the folder of the JSON files (json)
    layout: Literal["voc", "json"]
    images: Path                        # the JPEGImages folder
    splits: dict[str, Path] = field(default_factory=dict)  # split -> its image set .txt or .json

    def ids(self, split: str) -> list[str]:
        """Image ids (voc) or file names (json) the split lists, in its order."""
        path = self.splits[split]
        if self.layout == "voc":
            try:
                text = read_regular(path).decode()
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: not UTF-8 text ({e})") from None
            return [line.split()[0] for line in text.splitlines() if line.strip()]
        return [im["file_name"] for im in _load_json(path)["images"]]


# ---------------------------------------------------------------- finding the data


def _below(root: Path, depth: int = 2) -> list[Path]:
    """root and the folders up to `depth` levels below it, shallowest first."""
    out, level = [root], [root]
    for _ in range(depth):
        level = [d for p in level for d in sorted(p.iterdir()) if d.is_dir() and not d.name.startswith(".")]
        out += level
    return out


def find_pascal(data_dir: str | Path, annotations: str = "auto") -> PascalSource:
    """Pascal VOC 2007 at data_dir or up to two folders below it (VOCdevkit/VOC2007 as the
    archive extracts). annotations: "voc" (the XML), "json" (fast.ai's pascal_*2007.json)
    or "auto" (the XML when both are there)."""
    if annotations not in ("auto", "voc", "json"):
        raise ValueError(f"annotations must be auto, voc or json, got {annotations!r}")
    root = data_folder(data_dir)
    folders = _below(root)
    voc = next((d for d in folders if (d / "ImageSets" / "Main").is_dir() and (d / "Annotations").is_dir()), None)
    # lexists: an image set or JSON there that is not a regular file (a FIFO) is named in an error
    js = next((d for d in folders if os.path.lexists(d / "pascal_train2007.json")), None)
    if annotations in ("auto", "voc") and voc is not None:
        splits = {s: regular_file(voc / "ImageSets" / "Main" / f"{s}.txt") for s in SPLITS
                  if os.path.lexists(voc / "ImageSets" / "Main" / f"{s}.txt")}
        if "train" not in splits:
            raise DataError(f"{voc / 'ImageSets' / 'Main'}: no train.txt")
        return PascalSource(voc, "voc", voc / "JPEGImages", splits)
    if annotations in ("auto", "json") and js is not None:
        images = next((d / "JPEGImages" for d in _below(js, 3) if (d / "JPEGImages").is_dir()), None)
        if images is None:
            raise DataError(f"{js}: pascal_train2007.json but no JPEGImages/ folder at or below it")
        splits = {s: regular_file(js / f"pascal_{s}2007.json") for s in SPLITS
                  if os.path.lexists(js / f"pascal_{s}2007.json")}
        return PascalSource(js, "json", images, splits)
    want = {"voc": "VOCdevkit/VOC2007 with Annotations/ and ImageSets/Main/",
            "json": "pascal_train2007.json beside a folder holding JPEGImages/"}
    wanted = " or ".join(want[a] for a in (("voc", "json") if annotations == "auto" else (annotations,)))
    raise DataError(f"{root}: no Pascal VOC 2007 here (expected {wanted})")


# ---------------------------------------------------------------- annotations


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(read_regular(path))
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise ValueError("no 'images' list")
        return data
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a COCO-style Pascal JSON ({e})") from None


def _int(node: ET.Element | None, tag: str) -> float | None:
    el = node.find(tag) if node is not None else None
    try:
        return float(el.text) if el is not None and el.text is not None else None
    except ValueError:
        return None


def parse_xml(path: Path, image: Path) -> Annotation:
    """One VOC XML. Raises DataError (naming the file) when it has no usable size or does
    not parse; boxes are returned as written (check_boxes judges them)."""
    try:
        root = ET.fromstring(read_regular(path))  # DataError, unopened, for a FIFO
    except (OSError, ET.ParseError) as e:
        raise DataError(f"{path}: not a readable VOC annotation ({e})") from None
    size = root.find("size")
    w, h = _int(size, "width"), _int(size, "height")
    if size is None or not w or not h or w <= 0 or h <= 0:
        raise DataError(f"{path}: no image size (<size><width>/<height> missing or not > 0)")
    boxes, names, difficult = [], [], []
    for k, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        coords = [_int(bb, t) for t in ("xmin", "ymin", "xmax", "ymax")]
        if not name or None in coords:
            raise DataError(f"{path}: object {k + 1} has no name or an incomplete <bndbox>")
        xmin, ymin, xmax, ymax = coords
        boxes.append((xmin - 1, ymin - 1, xmax, ymax))
        names.append(name)
        difficult.append((obj.findtext("difficult") or "0").strip() == "1")
    return Annotation(image, int(w), int(h), np.asarray(boxes, np.float64).reshape(-1, 4), names,
                      np.asarray(difficult, bool), str(path))


def json_annotations(path: Path, images: Path) -> dict[str, Annotation | DataError]:
    """fast.ai's COCO-style JSON -> {file_name: Annotation, or the DataError of a bad entry}."""
    data = _load_json(path)
    cats = {c["id"]: c["name"] for c in data.get("categories", [])}
    by_image: dict[int, list] = {}
    for a in data.get("annotations", []):
        by_image.setdefault(a["image_id"], []).append(a)
    out: dict[str, Annotation | DataError] = {}
    for im in data["images"]:
        where = f"{path} image {im.get('file_name')!r}"
        w, h = im.get("width"), im.get("height")
        if not isinstance(w, (int, float)) or not isinstance(h, (int, float)) or w <= 0 or h <= 0:
            out[im["file_name"]] = DataError(f"{where}: no image size (width/height missing or not > 0)")
            continue
        anns = by_image.get(im["id"], [])
        try:
            boxes = [(x, y, x + bw, y + bh) for x, y, bw, bh in (a["bbox"] for a in anns)]
            names = [cats[a["category_id"]] for a in anns]
        except (KeyError, TypeError, ValueError) as e:
            out[im["file_name"]] = DataError(f"{where}: a malformed annotation ({type(e).__name__}: {e})")
            continue
        out[im["file_name"]] = Annotation(images / im["file_name"], int(w), int(h),
                                          np.asarray(boxes, np.float64).reshape(-1, 4), names,
                                          np.asarray([bool(a.get("ignore", 0)) for a in anns], bool), where)
    return out


def check_boxes(ann: Annotation) -> tuple[np.ndarray, list[str]]:
    """(keep mask, one message per dropped box). Boxes off by at most BOX_TOLERANCE px are
    clipped in place; boxes further outside the image, or empty, are dropped."""
    b, t = ann.boxes, BOX_TOLERANCE
    outside = (b[:, 0] < -t) | (b[:, 1] < -t) | (b[:, 2] > ann.width + t) | (b[:, 3] > ann.height + t)
    empty = (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
    bad = outside | empty
    msgs = [f"{ann.where}: object {i + 1} ({ann.names[i]}) box (x1, y1, x2, y2) = "
            f"({', '.join(f'{v:g}' for v in b[i])}) {'lies outside' if outside[i] else 'is empty in'} "
            f"the {ann.width}x{ann.height} image" for i in np.flatnonzero(bad)]
    b[:, 0::2] = b[:, 0::2].clip(0, ann.width)
    b[:, 1::2] = b[:, 1::2].clip(0, ann.height)
    return ~bad, msgs


# ---------------------------------------------------------------- the records of a split


@dataclass
class _Tally:
    """Bad input met while reading annotations: counts by reason, and the first messages."""

    on_bad: BadInput
    reasons: Counter = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)

    def bad(self, reason: str, msg: str) -> None:
        if self.on_bad == "fail":
            raise DataError(msg)
        self.reasons[reason] += 1
        if len(self.messages) < 5:
            self.messages.append(msg)

    def usable(self, path: Path, missing: str, listing: str) -> bool:
        """Whether the file `listing` names is a readable regular file; if not, tallied as
        `missing` when absent, else under file_problem's word."""
        problem = file_problem(path)
        if problem == "missing":
            self.bad(missing, f"{listing} but {path} does not exist")
        elif problem:
            self.bad(problem, problem_message(path, problem))
        return problem is None


def _records(source: PascalSource, split: str, classes: tuple[str, ...], tally: _Tally) -> list[tuple]:
    """The split's usable images: (jpeg path, boxes as fractions (n, 4) float32, labels (n,),
    difficult (n,)); bad input is tallied (or raised)."""
    index = {c: i for i, c in enumerate(classes)}
    anns: dict[str, Annotation | DataError] = {}
    if source.layout == "json":
        anns = json_annotations(source.splits[split], source.images)
    out = []
    for item in source.ids(split):
        jpeg = source.images / (item if source.layout == "json" else f"{item}.jpg")
        listing = f"{source.splits[split]}: lists {item!r}"
        if not tally.usable(jpeg, "listed but absent", listing):
            continue
        if source.layout == "voc":
            xml = source.root / "Annotations" / f"{item}.xml"
            if not tally.usable(xml, "no annotation", listing):
                continue
            try:
                ann = parse_xml(xml, jpeg)
            except DataError as e:
                tally.bad("no size" if "no image size" in str(e) else "unreadable annotation", str(e))
                continue
        else:
            ann = anns[item]
            if isinstance(ann, DataError):
                tally.bad("no size" if "no image size" in str(ann) else "unreadable annotation", str(ann))
                continue
        unknown = sorted(set(ann.names) - set(index))
        if unknown:
            raise DataError(f"{ann.where}: class {unknown[0]!r} is not among the config's classes "
                            f"({', '.join(classes)}); set classes to the data's")
        keep, msgs = check_boxes(ann)
        for m in msgs:
            tally.bad("box outside the image", m)
        if not keep.any():
            tally.bad("no usable box", f"{ann.where}: no usable box left")
            continue
        scale = np.array([ann.width, ann.height, ann.width, ann.height], np.float64)
        out.append((str(jpeg), (ann.boxes[keep] / scale).astype(np.float32),
                    np.array([index[n] for n, k in zip(ann.names, keep) if k], np.int64),
                    ann.difficult[keep].astype(np.uint8)))
    return out


def input_files(source: PascalSource, splits: list[str]) -> tuple[list[Path], list[str]]:
    """(regular files, names of listed files that are absent or not regular files) of the
    splits: what decides the cache key, found by stat alone (no annotation is parsed on a
    cache hit)."""
    files, absent = [], []
    for split in splits:
        files.append(source.splits[split])
        for item in source.ids(split):
            paths = [source.images / (item if source.layout == "json" else f"{item}.jpg")]
            if source.layout == "voc":
                paths.append(source.root / "Annotations" / f"{item}.xml")
            for p in paths:
                problem = file_problem(p)
                (files if problem is None else absent).append(p if problem is None else str(p))
    return sorted(set(files)), sorted(set(absent))


# ---------------------------------------------------------------- decode + resize


class _VocDecoder(Decoder):
    """A record -> one row: the image resized to each size (squashed, as the lessons did)
    and its boxes padded to max_obj rows (labels -1)."""

    def __init__(self, sizes: tuple[int, ...], max_obj: int, on_bad: BadInput):
        super().__init__(on_bad)
        self.sizes, self.max_obj = sizes, max_obj
        m = max_obj
        self.columns = {"boxes": ((m, 4), np.float32), "labels": ((m,), np.int64), "difficult": ((m,), np.uint8)}
        self.columns |= {f"img{s}": ((s, s, 3), np.uint8) for s in sizes}

    def rows(self, item):
        path, b, lab, dif = item
        img = decode_image(Path(path))
        pad = self.max_obj - len(lab)
        yield {"boxes": np.concatenate([b, np.zeros((pad, 4), np.float32)]),
               "labels": np.concatenate([lab, np.full(pad, -1, np.int64)]),
               "difficult": np.concatenate([dif, np.zeros(pad, np.uint8)])} | {
            f"img{s}": a for s, a in resize_all(img, self.sizes).items()}


def preprocess_pascal(
    source: PascalSource,
    sizes: tuple[int, ...],
    classes: tuple[str, ...],
    cache: Cache,
    splits: tuple[str, str] = ("train", "val"),
    on_bad: BadInput = "skip",
    seed: int = 0,
    name: str = "pascal",
) -> tuple[dict, bool]:
    """Decode and resize the train split and the validation split (cached as "train" and
    "valid") to each size, boxes scaled with them; (manifest, hit). A hit starts no Ray."""
    sizes = image_sizes(sizes, min_px=8)
    for s in splits:
        if s not in source.splits:
            have = ", ".join(source.splits)
            raise DataError(f"{source.root}: no {s!r} split (image sets found: {have}; "
                            f"{'ImageSets/Main/' + s + '.txt' if source.layout == 'voc' else f'pascal_{s}2007.json'} expected)")
    files, absent = input_files(source, list(splits))
    if absent and on_bad == "fail":
        _records(source, splits[0], classes, _Tally("fail"))  # raises at the first, naming the image set
        _records(source, splits[1], classes, _Tally("fail"))
    key = digest({
        "inputs": fingerprint_files(files, source.root.parent) if files else "",
        "absent": absent, "layout": source.layout, "splits": list(splits), "sizes": sizes,
        "classes": list(classes), "seed": seed, "version": TRANSFORM_VERSION,
    })

    def make(tmp: Path) -> dict:
        from .runtime import cluster_cpus, init_ray

        t0 = time.perf_counter()
        records, tallies = {}, {}
        for out_name, split in zip(("train", "valid"), splits):
            tallies[out_name] = _Tally(on_bad)
            records[out_name] = _records(source, split, classes, tallies[out_name])
            if not records[out_name]:
                raise DataError(f"{source.splits[split]}: no usable image in split {split!r}")
        decoder = _VocDecoder(sizes, max(len(r[2]) for recs in records.values() for r in recs), on_bad)
        init_ray()
        rows, shown = write_chunks({k: chunks(recs, cluster_cpus(), seed, 32, 500) for k, recs in records.items()}, decoder, tmp)
        skipped, objects = {}, {}
        for out_name, split in zip(("train", "valid"), splits):
            recs = records[out_name]
            listed = len(source.ids(split))
            skipped[out_name] = listed - rows[out_name]
            t = tallies[out_name]
            t.reasons["unreadable image"] += len(recs) - rows[out_name]
            t.messages += shown[out_name]  # the first unreadable images, by name
            objects[out_name] = int(sum(len(r[2]) for r in recs))
            _warn(split, listed, skipped[out_name], t)
            if rows[out_name] == 0:
                raise DataError(f"{source.splits[split]}: no readable image in split {split!r}")
        return {
            "rows": rows,
            "skipped": skipped,
            "bad_input": {k: {r: n for r, n in t.reasons.items() if n} for k, t in tallies.items()},
            "warnings": {k: t.messages for k, t in tallies.items()},
            "objects": objects,
            "max_objects": decoder.max_obj,
            "sizes": list(sizes),
            "classes": list(classes),
            "layout": source.layout,
            "splits": list(splits),
            "source": str(source.root),
            "seconds": seconds_since(t0),
        }

    manifest, hit = cache.build(name, key, make)
    if hit:  # a warm run must not hide what the build skipped, nor pass it under `fail`
        for out_name, split in zip(("train", "valid"), splits):
            reasons = {r: n for r, n in manifest["bad_input"][out_name].items() if n}
            if reasons and on_bad == "fail":
                raise DataError(manifest["warnings"][out_name][0])
            if reasons:
                t = _Tally(on_bad, Counter(reasons), manifest["warnings"][out_name])
                _warn(split, manifest["rows"][out_name] + manifest["skipped"][out_name], manifest["skipped"][out_name],
                      t, again=True)
    return manifest, hit


def _warn(split: str, listed: int, skipped: int, t: _Tally, again: bool = False) -> None:
    reasons = {r: n for r, n in t.reasons.items() if n}
    if not reasons:
        return
    if not again:
        for m in t.messages:
            print(f"warning: {m}", file=sys.stderr)
    why = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
    boxes = reasons.get("box outside the image", 0)
    print(f"warning: {split}: skipped {skipped} of {listed} listed image(s)"
          + (f" and dropped {boxes} box(es)" if boxes else "") + f" ({why}); --on-bad-input fail stops at the first",
          file=sys.stderr)
