"""Sample data for the image-to-image pipelines, in the layouts their readers take.

``natural_images`` writes square crops of real photographs to a folder tree
(``train/<photo>/*.png|jpg``, ``valid/<photo>/*``) plus ``style.png`` (a generated
brush-stroke picture for the style pipelines). The photographs are the ones
scikit-image ships (astronaut, coffee, chelsea the cat, rocket, the Hubble deep field,
motorcycles, textures ...); the validation crops come from photographs that no training
crop comes from. Without scikit-image, natural-looking images are generated instead:
1/f ("pink") noise colour fields, the power spectrum of natural photographs, with
occluding soft-edged shapes.

``carvana`` writes Carvana's layout: ``train/<car id>_<view>.jpg`` and
``train_masks/<car id>_<view>_mask.gif`` (palette GIFs of 0/1, as Kaggle ships them),
several views per car id. Each car is a body, a cabin with windows, wheels and lights in
its own colour and proportions; the views turn it around (length foreshortened, facing
left or right) on a varied background (a two-colour gradient, a floor, noise, distractor
shapes that are not in the mask, a soft shadow under the car).
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["natural_images", "carvana", "style_picture", "SKIMAGE_TRAIN", "SKIMAGE_VALID"]

# photographs in scikit-image's data folder; the validation ones are held out whole
SKIMAGE_TRAIN = ("astronaut.png", "rocket.jpg", "hubble_deep_field.jpg", "ihc.png", "motorcycle_left.png",
                 "motorcycle_right.png", "camera.png", "coins.png", "brick.png", "grass.png", "gravel.png",
                 "moon.png")
SKIMAGE_VALID = ("coffee.png", "chelsea.png")
_SS = 2  # supersampling of drawn shapes (anti-aliasing)


# ---------------------------------------------------------------- natural images


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


# ---------------------------------------------------------------- Carvana


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
    if views < 1 or size < 2 * views:
        raise ValueError(f"need views >= 1 and size >= 2 * views (two cars at least), got size={size}, views={views}")
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
