"""A generated stand-in for CIFAR-10: ``cifar10`` writes a synthetic, learnable 10-class
image set in the same PNG-folder layout as fast.ai's copy of CIFAR-10
(``train/<class>/*.png``, ``test/<class>/*.png`` and ``labels.txt``).

Each class is a shape or texture family rather than a colour: every image gets
a random background (a soft linear gradient) and a random, contrasting
foreground colour (drawn the same way for every class; the object is darker
than the background 80% of the time), the object sits near the centre at a
random offset (up to 15% of the image) and scale, rotated where that makes
sense, and small distractor blobs and strokes plus pixel noise are added on
top.  Colour and position carry no class information, so a linear model on
the raw pixels does poorly (~0.29 test accuracy on the default 6000 images),
while a small convnet learns the shapes (~0.99 after a few CPU minutes; see
benchmarks/sample_baseline.py).  Every family is closed under horizontal
flips (mirror images of a class stay in that class and look like no other
class), so random-flip and random-crop augmentation are label-preserving.

Classes (the CIFAR-10 names are kept only so that the layout matches):

=========== ==========================================================
airplane    filled disc
automobile  ring (circle outline)
bird        square outline, any rotation
cat         filled triangle, any rotation
deer        plus sign, rotated within +-15 degrees
dog         horizontal stripes in a square patch (+-12 degrees)
frog        vertical stripes in a square patch (+-12 degrees)
horse       checkerboard in a square patch (+-10 degrees)
ship        diagonal stripes in a square patch (either diagonal, +-12)
truck       X (a plus sign rotated by 45 +- 15 degrees)
=========== ==========================================================
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from . import check_split_size

__all__ = ["CIFAR10_CLASSES", "cifar10"]

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)

_SS = 2            # supersampling factor (anti-aliasing)
_CHUNK = 256       # images rendered per vectorised batch
_NOISE = 0.05      # std of the additive pixel noise, in [0, 1] units
_JITTER = 0.15     # max offset of the object centre from the image centre
_P_DARK = 0.8      # probability that the object is darker than the background


def _uniform(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    """n values in [lo, hi), shaped (n, 1, 1) to broadcast against (n, H, W)."""
    return rng.uniform(lo, hi, n).astype(np.float32)[:, None, None]


def _colours(rng: np.random.Generator, n: int, min_dist: float = 0.5):
    """Random background and foreground RGB colours, (n, 3) each, far apart."""
    bg = rng.uniform(0.0, 1.0, (n, 3))
    fg = rng.uniform(0.0, 1.0, (n, 3))
    for _ in range(100):
        bad = np.linalg.norm(fg - bg, axis=1) < min_dist
        if not bad.any():
            break
        fg[bad] = rng.uniform(0.0, 1.0, (int(bad.sum()), 3))
    # the few that still fail: push towards the opposite corner of the cube
    bad = np.linalg.norm(fg - bg, axis=1) < min_dist
    fg[bad] = np.where(bg[bad] > 0.5, 0.1, 0.9)
    # class-independent polarity bias: the object is usually darker than its
    # background (as in many photos).  Swapping keeps both colours uniform.
    lum = np.array([0.299, 0.587, 0.114])
    swap = ((fg @ lum) > (bg @ lum)) == (rng.random(n) < _P_DARK)
    fg[swap], bg[swap] = bg[swap], fg[swap].copy()
    return bg.astype(np.float32), fg.astype(np.float32)


def _stripes(t: np.ndarray, period: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Square wave with duty cycle 1/2 along coordinate t."""
    return np.mod(t / period + phase, 1.0) < 0.5


def _shape_mask(cls: int, n: int, S: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean coverage masks (n, S*_SS, S*_SS) for n objects of class ``cls``.

    All sizes are fractions of the image size S, so any image_size works.
    """
    H = S * _SS
    coords = ((np.arange(H, dtype=np.float32) + 0.5) / H)   # in [0, 1]
    x = coords[None, None, :]
    y = coords[None, :, None]

    # object size (a "radius"), as a fraction of the image
    if cls in (5, 6, 7, 8):            # texture patches: half side of the square
        r = _uniform(rng, 0.22, 0.40, n)
    elif cls == 3:                     # triangle: circumradius
        r = _uniform(rng, 0.22, 0.40, n)
    else:
        r = _uniform(rng, 0.17, 0.36, n)
    # centre: near the middle of the image (like photos), jittered by up to
    # _JITTER of the image size; clipped a little at the border, never much
    jitter = np.minimum(_JITTER, np.maximum(0.5 - 0.75 * r, 0.0))
    cx = 0.5 + jitter * _uniform(rng, -1.0, 1.0, n)
    cy = 0.5 + jitter * _uniform(rng, -1.0, 1.0, n)

    if cls in (2, 3):                  # square / triangle: any rotation
        theta = _uniform(rng, 0.0, 2.0 * np.pi, n)
    elif cls == 4:                     # plus
        theta = np.deg2rad(_uniform(rng, -15.0, 15.0, n))
    elif cls == 9:                     # X
        theta = np.deg2rad(_uniform(rng, 30.0, 60.0, n))
    elif cls in (5, 6):                # horizontal / vertical stripes
        theta = np.deg2rad(_uniform(rng, -12.0, 12.0, n))
    elif cls == 7:                     # checkerboard
        theta = np.deg2rad(_uniform(rng, -10.0, 10.0, n))
    elif cls == 8:                     # diagonal stripes, either diagonal
        sign = np.where(rng.random(n) < 0.5, -1.0, 1.0).astype(np.float32)[:, None, None]
        theta = np.deg2rad(sign * _uniform(rng, 33.0, 57.0, n))
    else:                              # discs and rings are rotation invariant
        theta = np.zeros((n, 1, 1), np.float32)

    dx, dy = x - cx, y - cy
    c, s = np.cos(theta), np.sin(theta)
    u = c * dx + s * dy                # object frame
    v = -s * dx + c * dy

    # stroke width of outlines / bars, relative to the object size
    w = r * _uniform(rng, 0.18, 0.30, n)

    if cls == 0:                                       # filled disc
        return u * u + v * v < r * r
    if cls == 1:                                       # ring
        d = np.sqrt(u * u + v * v)
        return (d < r) & (d > r - w)
    if cls == 2:                                       # square outline
        m = np.maximum(np.abs(u), np.abs(v))
        h = r * 0.85
        return (m < h) & (m > h - w)
    if cls == 3:                                       # filled triangle
        mask = np.ones(u.shape, bool)
        for k in range(3):
            a = 2.0 * np.pi * k / 3.0
            # inside the half-plane whose edge is at distance r/2 from centre
            mask &= (np.cos(a) * u + np.sin(a) * v) < 0.5 * r
        return mask
    if cls in (4, 9):                                  # plus / X
        hw = 0.5 * w
        return ((np.abs(u) < hw) & (np.abs(v) < r)) | ((np.abs(v) < hw) & (np.abs(u) < r))

    # texture patches: an axis-aligned square patch (in image frame) filled
    # with a rotated pattern; period between 3 and 6 pixels at 32x32
    patch = (np.abs(dx) < r) & (np.abs(dy) < r)
    period = _uniform(rng, 3.2, 6.0, n) / 32.0
    phase = _uniform(rng, 0.0, 1.0, n)
    if cls == 5:                                       # horizontal stripes
        pattern = _stripes(v, period, phase)
    elif cls == 6:                                     # vertical stripes
        pattern = _stripes(u, period, phase)
    elif cls == 7:                                     # checkerboard
        pattern = _stripes(u, period, phase) ^ _stripes(v, period, _uniform(rng, 0.0, 1.0, n))
    else:                                              # diagonal stripes
        pattern = _stripes(u, period, phase)
    return patch & pattern


def _downsample(a: np.ndarray) -> np.ndarray:
    """Average _SS x _SS blocks of (n, H, W) float arrays."""
    acc = np.zeros_like(a[:, ::_SS, ::_SS], dtype=np.float32)
    for i in range(_SS):
        for j in range(_SS):
            acc += a[:, i::_SS, j::_SS]
    return acc * np.float32(1.0 / (_SS * _SS))


def _render(cls: int, n: int, S: int, rng: np.random.Generator) -> np.ndarray:
    """n RGB uint8 images (n, S, S, 3) of class ``cls``."""
    bg, fg = _colours(rng, n)

    # background: a soft linear gradient around the background colour
    g = np.linspace(-0.5, 0.5, S, dtype=np.float32)
    ang = rng.uniform(0.0, 2.0 * np.pi, n).astype(np.float32)[:, None, None]
    ramp = np.cos(ang) * g[None, None, :] + np.sin(ang) * g[None, :, None]   # (n,S,S)
    delta = rng.uniform(-0.25, 0.25, (n, 3)).astype(np.float32)
    img = bg[:, None, None, :] + ramp[..., None] * delta[:, None, None, :]

    alpha = _downsample(_shape_mask(cls, n, S, rng).astype(np.float32))
    img = img * (1.0 - alpha[..., None]) + fg[:, None, None, :] * alpha[..., None]

    # distractors: 1-3 small blobs of random colour and random position
    H = S * _SS
    coords = (np.arange(H, dtype=np.float32) + 0.5) / H
    for k in range(3):
        present = (rng.random(n) < (1.0, 0.6, 0.3)[k])[:, None, None]
        bx = _uniform(rng, 0.0, 1.0, n)
        by = _uniform(rng, 0.0, 1.0, n)
        ra = _uniform(rng, 0.04, 0.08, n)
        rb = ra * _uniform(rng, 0.5, 1.0, n)
        blob = (((coords[None, None, :] - bx) / ra) ** 2
                + ((coords[None, :, None] - by) / rb) ** 2 < 1.0) & present
        a = _downsample(blob.astype(np.float32))[..., None]
        col = rng.uniform(0.0, 1.0, (n, 3)).astype(np.float32)[:, None, None, :]
        img = img * (1.0 - a) + col * a
    # ... and 0-2 short thin strokes
    for k in range(2):
        present = (rng.random(n) < (0.5, 0.25)[k])[:, None, None]
        bx = _uniform(rng, 0.0, 1.0, n)
        by = _uniform(rng, 0.0, 1.0, n)
        ang = _uniform(rng, 0.0, np.pi, n)
        half_len = _uniform(rng, 0.05, 0.11, n)
        half_w = _uniform(rng, 0.015, 0.03, n)
        ex, ey = coords[None, None, :] - bx, coords[None, :, None] - by
        along = np.cos(ang) * ex + np.sin(ang) * ey
        perp = -np.sin(ang) * ex + np.cos(ang) * ey
        stroke = (np.abs(along) < half_len) & (np.abs(perp) < half_w) & present
        a = _downsample(stroke.astype(np.float32))[..., None]
        col = rng.uniform(0.0, 1.0, (n, 3)).astype(np.float32)[:, None, None, :]
        img = img * (1.0 - a) + col * a

    img += rng.normal(0.0, _NOISE, img.shape).astype(np.float32)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def cifar10(out: str | Path, size: int = 6000, test_frac: float = 1 / 6,
            image_size: int = 32, seed: int = 0) -> dict:
    """Write a learnable 10-class image set in fast.ai's CIFAR-10 PNG-folder layout.

    Layout: ``out/train/<class>/<i>.png`` and ``out/test/<class>/<i>.png``
    (RGB, ``image_size`` x ``image_size``), plus ``out/labels.txt`` with the
    class names one per line.  ``size`` is the total number of images
    (train + test), of which ``round(size * test_frac)`` go to test; classes
    are balanced (per-class counts, in total and per split, differ by at most
    one).
    Existing files of the same name are overwritten; nothing is deleted.
    Deterministic for a given seed.

    Returns ``{"train": n_train, "test": n_test, "classes": 10, "path": str(out)}``.
    """
    if not 0.0 <= test_frac <= 1.0:
        raise ValueError("test_frac must be in [0, 1]")
    check_split_size(size, test_frac, "a training and a test image")
    if image_size < 8:
        raise ValueError("image_size must be >= 8")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_classes = len(CIFAR10_CLASSES)
    total_test = int(round(size * test_frac))
    n_train = n_test = 0
    for cls, name in enumerate(CIFAR10_CLASSES):
        # spread both totals over the classes the same way, so that
        # n_cls_test <= n_cls and every count differs by at most one
        n_cls = size // n_classes + (1 if cls < size % n_classes else 0)
        n_cls_test = total_test // n_classes + (1 if cls < total_test % n_classes else 0)
        splits = (("train", n_cls - n_cls_test), ("test", n_cls_test))
        for split, n in splits:
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for start in range(0, n, _CHUNK):
                m = min(_CHUNK, n - start)
                imgs = _render(cls, m, image_size, rng)
                for j in range(m):
                    Image.fromarray(imgs[j], "RGB").save(
                        os.path.join(folder, f"{start + j}.png"), format="PNG")
        n_train += splits[0][1]
        n_test += splits[1][1]
    (out / "labels.txt").write_text("\n".join(CIFAR10_CLASSES) + "\n")
    return {"train": n_train, "test": n_test, "classes": n_classes, "path": str(out)}
