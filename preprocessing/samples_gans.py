"""Sample data for the GAN pipelines (lesson 12), in the layouts their readers take.

``rooms`` stands in for LSUN bedrooms: an image folder tree as LSUN's export script writes
it (``bedroom/<a>/<b>/<key>.jpg``, nested by the first characters of each key). Every
image is a room seen from the front with a known structure:

- a wall in the upper part, a floor in the lower part, the horizon between them at 55-70%
  of the height; the wall is beige and lit from above, the floor brown and darker towards
  the front (each colour jittered per image);
- a bed standing on the floor across the horizon, its cover one of three colours (dark red,
  navy, off-white, equally likely) with a pale pillow along its top edge;
- a light-blue window on the wall in 70% of the rooms;
- pixel noise (std 0.02).

``horse2zebra`` writes CycleGAN's layout (``trainA/ trainB/ testA/ testB/``, JPEGs named
by their ImageNet synset as the authors' copy names them). Both domains are the same
scene: a sky over a field of grass and a four-legged animal (body, neck, head, legs)
facing left or right, at a random place and size. The domains differ only in the
animal's coat: A ("horses") a smooth brown coat, B ("zebras") black and white stripes
(period about a tenth of the image, slightly tilted). Translating A to B must paint
stripes on the animal and leave the scene; B to A must paint them over.

Images are drawn at twice their size and reduced (antialiasing).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["rooms", "horse2zebra", "BED_COLOURS", "HORSE_SYNSET", "ZEBRA_SYNSET"]

BED_COLOURS = {"red": (0.62, 0.10, 0.12), "navy": (0.14, 0.19, 0.50), "white": (0.92, 0.91, 0.88)}
WALL = (0.82, 0.74, 0.60)
FLOOR = (0.46, 0.31, 0.18)
WINDOW = (0.62, 0.80, 0.95)
HORSE = (0.52, 0.32, 0.16)
SKY_TOP, SKY_LOW = (0.45, 0.65, 0.92), (0.78, 0.88, 0.98)
GRASS = (0.30, 0.55, 0.20)
HORSE_SYNSET, ZEBRA_SYNSET = "n02381460", "n02391049"
_SS = 2  # supersampling


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) coordinates in [0, 1) of an (n, n) image, pixel centres."""
    c = (np.arange(n, dtype=np.float32) + 0.5) / n
    return c[:, None].repeat(n, 1), c[None, :].repeat(n, 0)


def _save(img: np.ndarray, px: int, path: Path, rng: np.random.Generator, noise: float = 0.02) -> None:
    """A float (n, n, 3) image in [0, 1], drawn at px * _SS, reduced to px, noised, as JPEG."""
    im = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).resize((px, px), Image.BOX)
    a = np.asarray(im, np.float32) / 255 + rng.normal(0, noise, (px, px, 3)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8)).save(path, quality=95)


def _jitter(rng: np.random.Generator, colour: tuple[float, ...], amount: float) -> np.ndarray:
    return np.clip(np.asarray(colour, np.float32) + rng.uniform(-amount, amount, 3).astype(np.float32), 0, 1)


def _rect(y: np.ndarray, x: np.ndarray, y0: float, y1: float, x0: float, x1: float) -> np.ndarray:
    return (y >= y0) & (y < y1) & (x >= x0) & (x < x1)


# ---------------------------------------------------------------- rooms (LSUN bedrooms)


def _room(rng: np.random.Generator, n: int) -> tuple[np.ndarray, str, bool]:
    y, x = _grid(n)
    h = rng.uniform(0.55, 0.70)                                       # the horizon
    wall = _jitter(rng, WALL, 0.06) * (1.05 - 0.15 * y)[..., None]     # lit from above
    floor = _jitter(rng, FLOOR, 0.05) * (1.1 - 0.3 * (y - h) / (1 - h))[..., None]  # darker in front
    img = np.where((y < h)[..., None], wall, floor)
    window = rng.random() < 0.7
    if window:
        wx, ww = rng.uniform(0.05, 0.65), rng.uniform(0.18, 0.28)
        wy0 = rng.uniform(0.08, 0.15)
        img[_rect(y, x, wy0, min(wy0 + rng.uniform(0.2, 0.28), h - 0.15), wx, wx + ww)] = _jitter(rng, WINDOW, 0.04)
    name = list(BED_COLOURS)[rng.integers(len(BED_COLOURS))]
    bx, bw = rng.uniform(0.05, 0.45), rng.uniform(0.42, 0.55)
    by0, by1 = h - rng.uniform(0.10, 0.15), min(h + rng.uniform(0.15, 0.22), 0.97)
    img[_rect(y, x, by0, by1, bx, bx + bw)] = _jitter(rng, BED_COLOURS[name], 0.05)
    pillow = (0.97, 0.96, 0.93) if name != "white" else (0.78, 0.78, 0.80)
    img[_rect(y, x, by0, by0 + 0.05, bx + 0.03, bx + bw - 0.03)] = _jitter(rng, pillow, 0.02)
    return img, name, window


def rooms(out: str | Path, size: int = 2000, seed: int = 0, px: int = 64) -> dict:
    """`size` room images of px x px as LSUN's export lays them out under out/bedroom/."""
    out = Path(out)
    if size < 2:
        raise ValueError(f"rooms needs size >= 2 (a training and a validation image), got {size}")
    rng = np.random.default_rng(seed)
    counts = {c: 0 for c in BED_COLOURS}
    windows = 0
    for i in range(size):
        img, bed, window = _room(rng, px * _SS)
        counts[bed] += 1
        windows += window
        key = f"{rng.integers(16 ** 10):010x}{i:06d}"  # LSUN keys are hex digests
        _save(img, px, out / "bedroom" / key[0] / key[1] / f"{key}.jpg", rng)
    return {"images": size, "px": px, "beds": counts, "windows": windows, "path": str(out / "bedroom")}


# ---------------------------------------------------------------- horse2zebra


def _animal(rng: np.random.Generator, n: int, striped: bool) -> np.ndarray:
    y, x = _grid(n)
    h = rng.uniform(0.42, 0.55)                                       # the horizon
    t = (y / h)[..., None]
    sky = (1 - t) * _jitter(rng, SKY_TOP, 0.04) + t * _jitter(rng, SKY_LOW, 0.03)
    grass = _jitter(rng, GRASS, 0.06) * (0.9 + 0.2 * (y - h) / (1 - h))[..., None]
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
        mask |= _rect(y, x, cy, leg_y1, lx - leg_w / 2, lx + leg_w / 2)

    if striped:
        period, tilt, phase = rng.uniform(0.085, 0.11), rng.uniform(-0.3, 0.3), rng.uniform(0, 1)
        white = np.sin(2 * np.pi * ((x + tilt * y) / period + phase)) > 0
        coat = np.where(white[..., None], _jitter(rng, (0.93, 0.93, 0.92), 0.03), _jitter(rng, (0.08, 0.08, 0.09), 0.03))
    else:
        shade = (1.08 - 0.25 * (y - (cy - ry)) / (2 * ry + 0.15)).clip(0.75, 1.1)  # lit from above
        coat = _jitter(rng, HORSE, 0.06) * shade[..., None]
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
            _save(_animal(rng, px * _SS, striped), px, out / folder / f"{synset}_{i + 1}.jpg", rng)
        counts[folder] = n
    return {**counts, "px": px, "path": str(out)}
