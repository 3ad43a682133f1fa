"""A generated stand-in for horse2zebra (lesson 12's CycleGAN), in the layout its reader
takes. ``horse2zebra`` writes CycleGAN's layout (``trainA/ trainB/ testA/ testB/``, JPEGs
named by their ImageNet synset as the authors' copy names them). Both domains are the same
scene: a sky over a field of grass and a four-legged animal (body, neck, head, legs) facing
left or right, at a random place and size. The domains differ only in the animal's coat:
A ("horses") a smooth brown coat, B ("zebras") black and white stripes (period about a
tenth of the image, slightly tilted). Translating A to B must paint stripes on the animal
and leave the scene; B to A must paint them over.

Images are drawn at twice their size and reduced (antialiasing).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ._raster import SS, grid, jitter, rect, save

__all__ = ["horse2zebra", "HORSE_SYNSET", "ZEBRA_SYNSET"]

HORSE = (0.52, 0.32, 0.16)
SKY_TOP, SKY_LOW = (0.45, 0.65, 0.92), (0.78, 0.88, 0.98)
GRASS = (0.30, 0.55, 0.20)
HORSE_SYNSET, ZEBRA_SYNSET = "n02381460", "n02391049"


def _animal(rng: np.random.Generator, n: int, striped: bool) -> np.ndarray:
    y, x = grid(n)
    h = rng.uniform(0.42, 0.55)                                       # the horizon
    t = (y / h)[..., None]
    sky = (1 - t) * jitter(rng, SKY_TOP, 0.04) + t * jitter(rng, SKY_LOW, 0.03)
    grass = jitter(rng, GRASS, 0.06) * (0.9 + 0.2 * (y - h) / (1 - h))[..., None]
    img = np.where((y < h)[..., None], sky, grass)

    cx, cy = rng.uniform(0.35, 0.65), h + rng.uniform(0.0, 0.10)     # body centre
    rx, ry = rng.uniform(0.17, 0.24), rng.uniform(0.09, 0.12)
    face = 1 if rng.random() < 0.5 else -1                            # facing right or left
    mask = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1          # body
    nx, ny = cx + face * rx * 0.85, cy - ry * 1.1                     # neck
    mask |= ((x - nx) / 0.05) ** 2 + ((y - ny) / (ry * 1.1)) ** 2 <= 1
    hx, hy = nx + face * 0.06, ny - ry * 0.9                          # head
    mask |= ((x - hx) / 0.075) ** 2 + ((y - hy) / 0.045) ** 2 <= 1
    leg_w, leg_y1 = 0.035, min(cy + ry + rng.uniform(0.10, 0.14), 0.99)
    for lx in (cx - rx * 0.7, cx - rx * 0.45, cx + rx * 0.45, cx + rx * 0.7):
        mask |= rect(y, x, cy, leg_y1, lx - leg_w / 2, lx + leg_w / 2)

    if striped:
        period, tilt, phase = rng.uniform(0.085, 0.11), rng.uniform(-0.3, 0.3), rng.uniform(0, 1)
        white = np.sin(2 * np.pi * ((x + tilt * y) / period + phase)) > 0
        coat = np.where(white[..., None], jitter(rng, (0.93, 0.93, 0.92), 0.03), jitter(rng, (0.08, 0.08, 0.09), 0.03))
    else:
        shade = (1.08 - 0.25 * (y - (cy - ry)) / (2 * ry + 0.15)).clip(0.75, 1.1)  # lit from above
        coat = jitter(rng, HORSE, 0.06) * shade[..., None]
    img[mask] = coat[mask]
    return img


def horse2zebra(out: str | Path, size: int = 1000, seed: int = 0, px: int = 64) -> dict:
    """`size` images of px x px in CycleGAN's layout: 40% each in trainA (horses) and
    trainB (zebras), 10% each in testA and testB."""
    out = Path(out)
    if size < 4:
        raise ValueError(f"horse2zebra needs size >= 4 (one image per folder), got {size}")
    rng = np.random.default_rng(seed)
    n_test = max(1, size // 10)
    n_train = (size - 2 * n_test) // 2
    counts = {}
    for folder, n, striped, synset in (("trainA", n_train, False, HORSE_SYNSET), ("trainB", n_train, True, ZEBRA_SYNSET),
                                       ("testA", n_test, False, HORSE_SYNSET), ("testB", n_test, True, ZEBRA_SYNSET)):
        for i in range(n):
            save(_animal(rng, px * SS, striped), px, out / folder / f"{synset}_{i + 1}.jpg", rng)
        counts[folder] = n
    return {**counts, "px": px, "path": str(out)}
