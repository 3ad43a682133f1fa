"""A generated stand-in for LSUN bedrooms (lesson 12's DCGAN and WGAN), in the layout their
reader takes. ``rooms`` writes an image folder tree as LSUN's export script writes it
(``bedroom/<a>/<b>/<key>.jpg``, nested by the first characters of each key). Every image is
a room seen from the front with a known structure:

- a wall in the upper part, a floor in the lower part, the horizon between them at 55-70%
  of the height; the wall is beige and lit from above, the floor brown and darker towards
  the front (each colour jittered per image);
- a bed standing on the floor across the horizon, its cover one of three colours (dark red,
  navy, off-white, equally likely) with a pale pillow along its top edge;
- a light-blue window on the wall in 70% of the rooms;
- pixel noise (std 0.02).

Images are drawn at twice their size and reduced (antialiasing).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ._raster import SS, grid, jitter, rect, save

__all__ = ["rooms", "BED_COLOURS"]

BED_COLOURS = {"red": (0.62, 0.10, 0.12), "navy": (0.14, 0.19, 0.50), "white": (0.92, 0.91, 0.88)}
WALL = (0.82, 0.74, 0.60)
FLOOR = (0.46, 0.31, 0.18)
WINDOW = (0.62, 0.80, 0.95)


def _room(rng: np.random.Generator, n: int) -> tuple[np.ndarray, str, bool]:
    y, x = grid(n)
    h = rng.uniform(0.55, 0.70)                                       # the horizon
    wall = jitter(rng, WALL, 0.06) * (1.05 - 0.15 * y)[..., None]     # lit from above
    floor = jitter(rng, FLOOR, 0.05) * (1.1 - 0.3 * (y - h) / (1 - h))[..., None]  # darker in front
    img = np.where((y < h)[..., None], wall, floor)
    window = rng.random() < 0.7
    if window:
        wx, ww = rng.uniform(0.05, 0.65), rng.uniform(0.18, 0.28)
        wy0 = rng.uniform(0.08, 0.15)
        img[rect(y, x, wy0, min(wy0 + rng.uniform(0.2, 0.28), h - 0.15), wx, wx + ww)] = jitter(rng, WINDOW, 0.04)
    name = list(BED_COLOURS)[rng.integers(len(BED_COLOURS))]
    bx, bw = rng.uniform(0.05, 0.45), rng.uniform(0.42, 0.55)
    by0, by1 = h - rng.uniform(0.10, 0.15), min(h + rng.uniform(0.15, 0.22), 0.97)
    img[rect(y, x, by0, by1, bx, bx + bw)] = jitter(rng, BED_COLOURS[name], 0.05)
    pillow = (0.97, 0.96, 0.93) if name != "white" else (0.78, 0.78, 0.80)
    img[rect(y, x, by0, by0 + 0.05, bx + 0.03, bx + bw - 0.03)] = jitter(rng, pillow, 0.02)
    return img, name, window


def rooms(out: str | Path, size: int = 2000, seed: int = 0, px: int = 64) -> dict:
    """`size` room images of px x px as LSUN's export lays them out under out/bedroom/."""
    out = Path(out)
    if size < 2:
        raise ValueError(f"size must be >= 2 (a training and a validation image), got {size}")
    rng = np.random.default_rng(seed)
    counts = {c: 0 for c in BED_COLOURS}
    windows = 0
    for i in range(size):
        img, bed, window = _room(rng, px * SS)
        counts[bed] += 1
        windows += window
        key = f"{rng.integers(16 ** 10):010x}{i:06d}"  # LSUN keys are hex digests
        save(img, px, out / "bedroom" / key[0] / key[1] / f"{key}.jpg", rng)
    return {"images": size, "px": px, "beds": counts, "windows": windows, "path": str(out / "bedroom")}
