"""A generated, learnable stand-in for Pascal VOC 2007, written in its own layout.

``pascal(out)`` writes scenes of coloured shapes on textured backgrounds as

    out/VOCdevkit/VOC2007/JPEGImages/<id>.jpg
    out/VOCdevkit/VOC2007/Annotations/<id>.xml        (VOC's XML: size, objects, difficult)
    out/VOCdevkit/VOC2007/ImageSets/Main/{train,val,trainval,test}.txt
    out/pascal_{train,val,test}2007.json              (fast.ai's COCO-style copy of the same boxes)

so both readers of preprocessing/voc.py see the same annotations. Every image holds one to
four objects; the first ("main") object is always the largest by box area, at least 1.5
times the area of any other, so "the largest object" (lesson 8) is well defined. The six
classes differ in form and in hue:

========= ============================ =======
class     form                         hue
========= ============================ =======
disc      filled circle                red
square    filled square, any rotation  green
triangle  filled triangle, any angle   blue
ring      circle outline               yellow
cross     plus sign, any rotation      magenta
star      five-pointed star            cyan
========= ============================ =======

Backgrounds are desaturated textures (gratings, blotches, noise), so colour separates the
objects from the ground and form and colour both tell the classes apart. About one object
in eight among the small ones is drawn tiny or faint (blended halfway into the background)
and marked ``difficult``, as VOC marks objects that are hard to recognise: evaluation
ignores them. Objects lie wholly inside the image (``truncated`` 0) and overlap little
(box IoU at most 0.15). Image sizes vary (128-192 x 112-160 px, not square) so a reader
must scale boxes with the resize.
"""
from __future__ import annotations

import colorsys
import json
import math
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["SAMPLE_CLASSES", "pascal"]

SAMPLE_CLASSES = ("disc", "square", "triangle", "ring", "cross", "star")
_HUES = (0.0, 0.33, 0.62, 0.15, 0.83, 0.5)   # one hue per class, in [0, 1)
_SS = 2                  # supersampling factor of the drawing (anti-aliasing)
_MAIN_R = (0.2, 0.32)    # main object's half box side, as a fraction of min(W, H)
_SMALL_R = (0.09, 0.16)  # other objects' half box side (the 4x4 grid's anchors: 0.175-0.325 of the image)
_TINY_R = (0.05, 0.07)   # difficult-by-size objects
_P_EXTRA = (0.75, 0.5, 0.3)  # chance of a 2nd, 3rd, 4th object
_P_DIFFICULT = 0.12      # chance that a small object is drawn tiny or faint and marked difficult
_MAX_IOU = 0.15          # placement: largest box IoU with an object already placed
_LARGEST = 1.5           # the main object's box area is at least this many times any other's
_SPLITS = (("train", 0.7), ("val", 0.15), ("test", 0.15))


# ---------------------------------------------------------------- drawing


def _background(rng: np.random.Generator, W: int, H: int) -> np.ndarray:
    """A desaturated texture, (H, W, 3) float in [0, 1]: a grating, blotches and noise."""
    hue, sat, val = rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.3, 0.75)
    base = np.array(colorsys.hsv_to_rgb(hue, sat, val), np.float32)
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    ang, period = rng.uniform(0, math.pi), rng.uniform(6, 24)
    grating = np.sin((np.cos(ang) * x + np.sin(ang) * y) * 2 * math.pi / period + rng.uniform(0, 6.3))
    blotch = np.asarray(Image.fromarray(rng.uniform(0, 255, (6, 8)).astype(np.uint8)).resize((W, H), Image.BICUBIC),
                        np.float32) / 255 - 0.5
    tint = rng.uniform(-1, 1, 3).astype(np.float32) * 0.08  # the blotches shift the colour a little
    img = base + (rng.uniform(0.03, 0.1) * grating)[..., None] + blotch[..., None] * (0.25 + tint)
    img += rng.normal(0, 0.03, img.shape).astype(np.float32)
    return np.clip(img, 0, 1)


def _polygon(cls: int, cx: float, cy: float, r: float, theta: float) -> list[tuple[float, float]]:
    """Vertices of a polygonal class, centred at (cx, cy) with half box side about r."""
    if cls == 1:    # square: corners at 1.2 r from the centre (half side 0.85 r)
        pts = [(math.cos(theta + k * math.pi / 2 + math.pi / 4) * r * 1.2, math.sin(theta + k * math.pi / 2 + math.pi / 4) * r * 1.2)
               for k in range(4)]
    elif cls == 2:  # triangle
        pts = [(math.cos(theta + k * 2 * math.pi / 3) * r * 1.1, math.sin(theta + k * 2 * math.pi / 3) * r * 1.1)
               for k in range(3)]
    elif cls == 4:  # cross: 12 corners of a plus, arms of half width r/3
        a, b = r, r / 3
        base = [(b, a), (b, b), (a, b), (a, -b), (b, -b), (b, -a), (-b, -a), (-b, -b), (-a, -b), (-a, b), (-b, b), (-b, a)]
        c, s = math.cos(theta), math.sin(theta)
        pts = [(c * u - s * v, s * u + c * v) for u, v in base]
    elif cls == 5:  # star: 10 corners, inner radius 0.45
        pts = [(math.cos(theta + k * math.pi / 5) * r * (1.1 if k % 2 == 0 else 0.5),
                math.sin(theta + k * math.pi / 5) * r * (1.1 if k % 2 == 0 else 0.5)) for k in range(10)]
    else:
        raise ValueError(f"class {cls} is not a polygon")
    return [(cx + u, cy + v) for u, v in pts]


def _extent(cls: int, cx: float, cy: float, r: float, theta: float) -> tuple[float, float, float, float]:
    """The object's box (x1, y1, x2, y2) in pixel-edge coordinates."""
    if cls in (0, 3):
        return cx - r, cy - r, cx + r, cy + r
    pts = _polygon(cls, cx, cy, r, theta)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return min(xs), min(ys), max(xs), max(ys)


def _draw(canvas: ImageDraw.ImageDraw, cls: int, cx: float, cy: float, r: float, theta: float, colour: tuple) -> None:
    s = _SS
    if cls == 0:
        canvas.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], fill=colour)
    elif cls == 3:
        canvas.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], outline=colour,
                       width=max(2, round(r * s * 0.32)))
    else:
        canvas.polygon([(x * s, y * s) for x, y in _polygon(cls, cx, cy, r, theta)], fill=colour)


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _area(b) -> float:
    return (b[2] - b[0]) * (b[3] - b[1])


def scene(rng: np.random.Generator) -> tuple[Image.Image, list[dict]]:
    """One image and its objects: [{"name", "box": (x1, y1, x2, y2), "difficult"}]."""
    W, H = int(rng.integers(128, 193)), int(rng.integers(112, 161))
    bg = _background(rng, W, H)
    im = Image.fromarray((bg * 255 + 0.5).astype(np.uint8)).resize((W * _SS, H * _SS), Image.BILINEAR)
    canvas = ImageDraw.Draw(im)
    m = min(W, H)
    n_obj = 1 + sum(1 for p in _P_EXTRA if rng.random() < p)
    objects: list[dict] = []
    for k in range(n_obj):
        difficult = k > 0 and rng.random() < _P_DIFFICULT
        tiny = difficult and rng.random() < 0.5
        lo, hi = _MAIN_R if k == 0 else _TINY_R if tiny else _SMALL_R
        cls = int(rng.integers(len(SAMPLE_CLASSES)))
        for _ in range(30):  # a place inside the image that overlaps the others little
            r, theta = rng.uniform(lo, hi) * m, rng.uniform(0, 2 * math.pi)
            e = _extent(cls, 0, 0, r, theta)
            cx = rng.uniform(-e[0] + 1, W - e[2] - 1)
            cy = rng.uniform(-e[1] + 1, H - e[3] - 1)
            box = _extent(cls, cx, cy, r, theta)
            if k == 0 or (all(_iou(box, o["box"]) <= _MAX_IOU for o in objects)
                          and _area(box) * _LARGEST <= _area(objects[0]["box"])):
                break
        else:
            continue  # no room: fewer objects
        hue = (_HUES[cls] + rng.uniform(-0.03, 0.03)) % 1.0
        rgb = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.65, 1.0), rng.uniform(0.7, 1.0)))
        if difficult and not tiny:  # faint: halfway into the local background
            local = bg[int(max(0, box[1])):int(box[3]) + 1, int(max(0, box[0])):int(box[2]) + 1].reshape(-1, 3).mean(0)
            rgb = 0.5 * rgb + 0.5 * local
        _draw(canvas, cls, cx, cy, r, theta, tuple(int(c * 255 + 0.5) for c in rgb))
        objects.append({"name": SAMPLE_CLASSES[cls], "box": box, "difficult": bool(difficult)})
    return im.resize((W, H), Image.LANCZOS), objects


# ---------------------------------------------------------------- writing


def _voc_box(box, W: int, H: int) -> tuple[int, int, int, int]:
    """Pixel-edge (x1, y1, x2, y2) -> VOC's 1-based inclusive pixel indices, inside the image."""
    x1, y1, x2, y2 = box
    return (max(1, math.floor(x1) + 1), max(1, math.floor(y1) + 1), min(W, math.ceil(x2)), min(H, math.ceil(y2)))


def _xml(image_id: str, W: int, H: int, objects: list[dict]) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2007"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    src = ET.SubElement(root, "source")
    ET.SubElement(src, "database").text = "fastray generated sample"
    size = ET.SubElement(root, "size")
    for tag, v in (("width", W), ("height", H), ("depth", 3)):
        ET.SubElement(size, tag).text = str(v)
    ET.SubElement(root, "segmented").text = "0"
    for o in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = o["name"]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = str(int(o["difficult"]))
        bb = ET.SubElement(obj, "bndbox")
        for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), o["voc"]):
            ET.SubElement(bb, tag).text = str(v)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8")


def _coco(images: list[dict]) -> dict:
    """fast.ai's pascal_*2007.json for some images: COCO-style, bbox [x, y, w, h] with
    x = xmin - 1 and w = xmax - xmin + 1 (0-based), ignore = difficult."""
    cats = [{"supercategory": "none", "id": i + 1, "name": n} for i, n in enumerate(SAMPLE_CLASSES)]
    out_images, anns = [], []
    for im in images:
        out_images.append({"file_name": f"{im['id']}.jpg", "height": im["H"], "width": im["W"], "id": int(im["id"])})
        for o in im["objects"]:
            x1, y1, x2, y2 = o["voc"]
            x, y, w, h = x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1
            anns.append({"segmentation": [[x, y, x, y + h, x + w, y + h, x + w, y]], "area": w * h, "iscrowd": 0,
                         "image_id": int(im["id"]), "bbox": [x, y, w, h], "category_id": SAMPLE_CLASSES.index(o["name"]) + 1,
                         "id": len(anns) + 1, "ignore": int(o["difficult"])})
    return {"images": out_images, "type": "instances", "annotations": anns, "categories": cats}


def pascal(out: str | Path, size: int = 2000, seed: int = 0) -> dict:
    """Write ``size`` generated scenes in the VOC2007 layout (and fast.ai's JSON beside it):
    70% train, 15% val, 15% test. Deterministic for a seed; existing files are overwritten."""
    if size < 3:
        raise ValueError(f"size must be >= 3 (one image per split), got {size}")
    out = Path(out)
    voc = out / "VOCdevkit" / "VOC2007"
    for d in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_val = n_test = max(1, round(size * 0.15))
    n_train = size - n_val - n_test
    counts = {"train": n_train, "val": n_val, "test": n_test}
    split_ids: dict[str, list[str]] = {}
    split_images: dict[str, list[dict]] = {}
    n_objects = n_difficult = 0
    i = 0
    for split, _ in _SPLITS:
        split_ids[split], split_images[split] = [], []
        for _ in range(counts[split]):
            i += 1
            image_id = f"{i:06d}"
            im, objects = scene(rng)
            W, H = im.size
            for o in objects:
                o["voc"] = _voc_box(o["box"], W, H)
            im.save(voc / "JPEGImages" / f"{image_id}.jpg", quality=92)
            (voc / "Annotations" / f"{image_id}.xml").write_bytes(_xml(image_id, W, H, objects))
            split_ids[split].append(image_id)
            split_images[split].append({"id": image_id, "W": W, "H": H, "objects": objects})
            n_objects += len(objects)
            n_difficult += sum(o["difficult"] for o in objects)
    main = voc / "ImageSets" / "Main"
    for split, ids in split_ids.items():
        (main / f"{split}.txt").write_text("".join(f"{x}\n" for x in ids))
    (main / "trainval.txt").write_text("".join(f"{x}\n" for x in split_ids["train"] + split_ids["val"]))
    for split, images in split_images.items():
        (out / f"pascal_{split}2007.json").write_text(json.dumps(_coco(images)))
    return {"train": n_train, "val": n_val, "test": n_test, "objects": n_objects, "difficult": n_difficult,
            "classes": len(SAMPLE_CLASSES), "path": str(out)}
