"""A generated stand-in for an ImageNet-style image folder (lessons 13 and 14: style
transfer and super-resolution), in the layout its reader takes.

``natural_images`` writes square crops of real photographs to a folder tree
(``train/<photo>/*.png|jpg``, ``valid/<photo>/*``) plus ``style.png`` (a generated
brush-stroke picture for the style pipelines). The photographs are the ones
scikit-image ships (astronaut, coffee, chelsea the cat, rocket, the Hubble deep field,
motorcycles, textures ...); the validation crops come from photographs that no training
crop comes from. Without scikit-image, natural-looking images are generated instead:
1/f ("pink") noise colour fields, the power spectrum of natural photographs, with
occluding soft-edged shapes.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["natural_images", "style_picture", "SKIMAGE_TRAIN", "SKIMAGE_VALID"]

# photographs in scikit-image's data folder; the validation ones are held out whole
SKIMAGE_TRAIN = ("astronaut.png", "rocket.jpg", "hubble_deep_field.jpg", "ihc.png", "motorcycle_left.png",
                 "motorcycle_right.png", "camera.png", "coins.png", "brick.png", "grass.png", "gravel.png",
                 "moon.png")
SKIMAGE_VALID = ("coffee.png", "chelsea.png")
_SS = 2  # supersampling of drawn shapes (anti-aliasing)


def _skimage_dir() -> Path | None:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0]) / "data"
    return d if all((d / n).is_file() for n in SKIMAGE_TRAIN + SKIMAGE_VALID) else None


def _pink_noise(rng: np.random.Generator, n: int, alpha: float = 2.0) -> np.ndarray:
    """(n, n) noise with power ~ 1/f**alpha, scaled to [0, 1]."""
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.rfftfreq(n)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    spec = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f ** (alpha / 2)
    spec[0, 0] = 0
    x = np.fft.irfft2(spec, s=(n, n))
    return (x - x.min()) / (np.ptp(x) + 1e-9)


def _synthetic_photo(rng: np.random.Generator, n: int) -> np.ndarray:
    """A natural-looking (n, n, 3) uint8 image: a pink-noise colour field, then 3-8
    occluding shapes each filled with its own pink-noise texture, softly blurred edges."""
    base = np.stack([_pink_noise(rng, n) for _ in range(3)], -1)
    tint = rng.uniform(0.2, 0.9, 3)
    img = 0.5 * base + 0.5 * tint * _pink_noise(rng, n)[..., None]
    for _ in range(rng.integers(3, 9)):
        mask = Image.new("L", (n, n), 0)
        d = ImageDraw.Draw(mask)
        cx, cy, r = rng.uniform(0, n), rng.uniform(0, n), rng.uniform(n / 12, n / 3)
        if rng.random() < 0.5:
            d.ellipse([cx - r, cy - r * rng.uniform(0.4, 1), cx + r, cy + r * rng.uniform(0.4, 1)], fill=255)
        else:
            pts = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in np.sort(rng.uniform(0, 2 * math.pi, 5))]
            d.polygon(pts, fill=255)
        m = np.asarray(mask.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.5))), np.float32)[..., None] / 255
        colour = rng.uniform(0, 1, 3)
        tex = 0.6 * colour + 0.4 * _pink_noise(rng, n, 1.5)[..., None]
        img = img * (1 - m) + tex * m
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _crops(photo: np.ndarray, k: int, px: int, rng: np.random.Generator) -> list[np.ndarray]:
    """k random square crops (side between px and 60% of the short side), resized to px."""
    h, w = photo.shape[:2]
    lo, hi = min(px, min(h, w)), max(px, int(0.6 * min(h, w)))
    out = []
    pil = Image.fromarray(photo)
    for _ in range(k):
        s = int(rng.integers(lo, hi + 1))
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        out.append(np.asarray(pil.crop((x, y, x + s, y + s)).resize((px, px), Image.BICUBIC, reducing_gap=None)))
    return out


def _write(img: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        Image.fromarray(img).save(path, quality=92)
    else:
        Image.fromarray(img).save(path)


def style_picture(size: int = 128, seed: int = 0) -> np.ndarray:
    """A generated 'painting': short thick strokes in a few bold colours that follow a
    swirling flow field, on a dark ground: strong, regular texture statistics (what a
    Gram-matrix style loss captures)."""
    rng = np.random.default_rng(seed)
    S = size * _SS
    im = Image.new("RGB", (S, S), (20, 30, 60))
    d = ImageDraw.Draw(im)
    palette = [(240, 200, 40), (40, 90, 200), (250, 250, 230), (30, 150, 160), (200, 80, 30)]
    for _ in range(int(2.5 * size)):
        x, y = rng.uniform(0, S, 2)
        col = palette[int(rng.integers(len(palette)))]
        pts = [(x, y)]
        for _ in range(6):  # follow the flow: angle from a swirl around the centre plus waves
            a = math.atan2(y - S / 2, x - S / 2) + math.pi / 2 + 0.6 * math.sin(x / S * 6)
            x, y = x + 3 * _SS * math.cos(a), y + 3 * _SS * math.sin(a)
            pts.append((x, y))
        d.line(pts, fill=col, width=int(rng.integers(2, 5)) * _SS)
    return np.asarray(im.resize((size, size), Image.LANCZOS))


def natural_images(out: str | Path, size: int = 800, seed: int = 0, px: int = 96) -> dict:
    """`size` crops of px x px: 80% training crops, 20% validation crops from other photos."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    n_valid = max(1, size // 5)
    n_train = max(1, size - n_valid)
    sk = _skimage_dir()
    if sk is not None:
        def load(name: str) -> np.ndarray:
            return np.asarray(Image.open(sk / name).convert("RGB"))
        groups = {"train": [(n, load(n)) for n in SKIMAGE_TRAIN], "valid": [(n, load(n)) for n in SKIMAGE_VALID]}
        source = "scikit-image photographs"
    else:
        groups = {split: [(f"synthetic{i:02d}.png", _synthetic_photo(rng, 384)) for i in range(k)]
                  for split, k in (("train", 12), ("valid", 2))}
        source = "generated pink-noise images (scikit-image is not installed)"
    counts = {}
    for split, n in (("train", n_train), ("valid", n_valid)):
        photos = groups[split]
        per = [n // len(photos) + (i < n % len(photos)) for i in range(len(photos))]
        k = 0
        for (name, photo), m in zip(photos, per):
            stem, ext = Path(name).stem, (".jpg" if name.endswith(".jpg") else ".png")
            for j, crop in enumerate(_crops(photo, m, px, rng)):
                _write(crop, out / split / stem / f"{stem}_{j:04d}{ext}")
                k += 1
        counts[split] = k
    _write(style_picture(128, seed), out / "style.png")
    return {"train": counts["train"], "valid": counts["valid"], "style": str(out / "style.png"), "source": source}
