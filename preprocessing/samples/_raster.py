"""Drawing helpers of the generated GAN data sets (lsun, horse2zebra): float images in
[0, 1] drawn on a grid of pixel centres at SS times their size, then reduced."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SS = 2  # supersampling


def grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) coordinates in [0, 1) of an (n, n) image, pixel centres."""
    c = (np.arange(n, dtype=np.float32) + 0.5) / n
    return c[:, None].repeat(n, 1), c[None, :].repeat(n, 0)


def save(img: np.ndarray, px: int, path: Path, rng: np.random.Generator, noise: float = 0.02) -> None:
    """A float (n, n, 3) image in [0, 1], drawn at px * SS, reduced to px, noised, as JPEG."""
    im = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).resize((px, px), Image.BOX)
    a = np.asarray(im, np.float32) / 255 + rng.normal(0, noise, (px, px, 3)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8)).save(path, quality=95)


def jitter(rng: np.random.Generator, colour: tuple[float, ...], amount: float) -> np.ndarray:
    return np.clip(np.asarray(colour, np.float32) + rng.uniform(-amount, amount, 3).astype(np.float32), 0, 1)


def rect(y: np.ndarray, x: np.ndarray, y0: float, y1: float, x0: float, x1: float) -> np.ndarray:
    return (y >= y0) & (y < y1) & (x >= x0) & (x < x1)
