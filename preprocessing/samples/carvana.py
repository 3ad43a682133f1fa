"""A generated stand-in for Carvana (lesson 14's segmentation), in the layout its reader
takes. ``carvana`` writes ``train/<car id>_<view>.jpg`` and
``train_masks/<car id>_<view>_mask.gif`` (palette GIFs of 0/1, as Kaggle ships them),
several views per car id. Each car is a body, a cabin with windows, wheels and lights in
its own colour and proportions; the views turn it around (length foreshortened, facing
left or right) on a varied background (a two-colour gradient, a floor, noise, distractor
shapes that are not in the mask, a soft shadow under the car).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["carvana"]

_SS = 2  # supersampling of drawn shapes (anti-aliasing)


def _background(rng: np.random.Generator, w: int, h: int, avoid: np.ndarray) -> Image.Image:
    """Two-colour vertical gradient, a floor of its own colour, pixel noise, distractors;
    its colours are kept apart from `avoid` (the car's) so that the car can be seen."""
    cols = rng.uniform(0, 255, (3, 3))
    for _ in range(100):
        near = np.linalg.norm(cols - avoid, axis=1) < 80
        if not near.any():
            break
        cols[near] = rng.uniform(0, 255, (int(near.sum()), 3))
    top, bottom, floor = cols
    t = np.linspace(0, 1, h)[:, None, None]
    img = top * (1 - t) + bottom * t
    horizon = int(h * rng.uniform(0.5, 0.7))
    img = np.broadcast_to(img, (h, w, 3)).copy()
    img[horizon:] = 0.6 * img[horizon:] + 0.4 * floor
    img += rng.normal(0, 6, img.shape)
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(0, 4))):  # distractors: not cars, not in the mask
        x, y = rng.uniform(0, w), rng.uniform(0, horizon)
        r = rng.uniform(0.03, 0.1) * w
        col = tuple(int(c) for c in rng.uniform(0, 255, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)([x - r, y - r / 2, x + r, y + r / 2], fill=col)
    return im


def _car_params(rng: np.random.Generator) -> dict:
    body = rng.uniform(0, 255, 3)
    return {
        "length": rng.uniform(0.6, 0.78),     # of the image width, side on
        "width": rng.uniform(0.38, 0.48),     # of its length (seen head on)
        "body_h": rng.uniform(0.17, 0.23),    # of the image height
        "cabin_h": rng.uniform(0.12, 0.18),
        "cabin_len": rng.uniform(0.45, 0.7),  # of the body's length (a van is long)
        "cabin_off": rng.uniform(-0.1, 0.1),  # of the body's length, towards the back
        "wheel_r": rng.uniform(0.07, 0.09),   # of the image height
        "body": tuple(int(c) for c in body),
        "window": tuple(int(c) for c in rng.uniform(20, 90, 3)),
        "y": rng.uniform(0.72, 0.8),          # the wheels' bottom, of the image height
    }


def _draw_car(img: ImageDraw.ImageDraw, mask: ImageDraw.ImageDraw, p: dict, angle: float, W: int, H: int,
              rng: np.random.Generator) -> None:
    """One view of a car (angle 0: side on, facing right) on the image and its mask."""
    c, s = math.cos(angle), math.sin(angle)
    L = p["length"] * W * (abs(c) + p["width"] * abs(s))  # apparent length: foreshortened
    cx = W / 2 + rng.uniform(-0.04, 0.04) * W
    ground = p["y"] * H
    r = p["wheel_r"] * H
    body_top, body_bottom = ground - r - p["body_h"] * H, ground - 0.6 * r
    facing = 1 if c >= 0 else -1  # the cabin sits towards the back
    side = abs(c) / (abs(c) + p["width"] * abs(s))  # 1: side on, 0: head on
    cab_len = L * (p["cabin_len"] * side + 0.8 * (1 - side))
    cab_c = cx - facing * p["cabin_off"] * L * side
    cab_top = body_top - p["cabin_h"] * H
    # the shadow under the car: on the image only
    img.ellipse([cx - 0.55 * L, ground - 0.25 * r, cx + 0.55 * L, ground + 0.35 * r], fill=(25, 25, 25))
    cabin = [(cab_c - cab_len / 2, body_top + 1), (cab_c - 0.35 * cab_len, cab_top),
             (cab_c + 0.35 * cab_len, cab_top), (cab_c + cab_len / 2, body_top + 1)]
    wheels = [cx + k * (0.32 * L * side + 0.38 * L * (1 - side)) for k in (-1, 1)]
    for draw, fill in ((img, None), (mask, 255)):
        draw.polygon(cabin, fill=fill or p["body"])
        draw.rounded_rectangle([cx - L / 2, body_top, cx + L / 2, body_bottom], radius=0.35 * (body_bottom - body_top),
                               fill=fill or p["body"])
        for wx in wheels:
            draw.ellipse([wx - r, ground - 2 * r, wx + r, ground], fill=fill or (15, 15, 15))
    # windows and lights: inside the outline (already in the mask)
    win = [(cab_c - 0.42 * cab_len, body_top), (cab_c - 0.3 * cab_len, cab_top + 0.25 * (body_top - cab_top)),
           (cab_c + 0.3 * cab_len, cab_top + 0.25 * (body_top - cab_top)), (cab_c + 0.42 * cab_len, body_top)]
    img.polygon(win, fill=p["window"])
    for wx in wheels:
        img.ellipse([wx - 0.45 * r, ground - 1.45 * r, wx + 0.45 * r, ground - 0.55 * r], fill=(170, 170, 175))
    ly = body_top + 0.3 * (body_bottom - body_top)
    lx = cx + facing * (L / 2 - 0.06 * L) if side > 0.3 else cx - L * 0.35
    img.rectangle([lx - 0.03 * L, ly, lx + 0.03 * L, ly + 0.15 * (body_bottom - body_top)], fill=(250, 245, 200))


def carvana(out: str | Path, size: int = 1200, views: int = 8, seed: int = 0, width: int = 96, height: int = 64) -> dict:
    """`size` images: size // views cars, `views` views each, turning the car around."""
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    if size < 2 * views:
        raise ValueError(f"size must be >= {2 * views} (two cars of {views} views each), got {size}")
    out = Path(out)
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "train_masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    W, H = width * _SS, height * _SS
    cars = size // views
    for k in range(cars):
        cid = f"{int(rng.integers(0, 16**12)):012x}"  # Carvana's ids: 12 hex digits
        params = _car_params(rng)
        for v in range(views):
            bg = _background(rng, W, H, np.asarray(params["body"], float))  # each view: its own background
            mask = Image.new("L", (W, H), 0)
            _draw_car(ImageDraw.Draw(bg), ImageDraw.Draw(mask), params, 2 * math.pi * v / views, W, H, rng)
            img = bg.resize((width, height), Image.LANCZOS)
            m = (np.asarray(mask.resize((width, height), Image.BILINEAR)) >= 128).astype(np.uint8)
            gif = Image.fromarray(m, mode="P")
            gif.putpalette([0, 0, 0, 255, 255, 255])
            name = f"{cid}_{v + 1:02d}"
            img.save(out / "train" / f"{name}.jpg", quality=92)
            gif.save(out / "train_masks" / f"{name}_mask.gif")
    return {"cars": cars, "images": cars * views, "views": views}
