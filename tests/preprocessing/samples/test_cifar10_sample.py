"""preprocessing.samples.cifar10.cifar10: layout, determinism, sizes and a cheap learnability check."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from preprocessing.samples.cifar10 import CIFAR10_CLASSES, cifar10


def _tree(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under root."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _load(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for label, name in enumerate(CIFAR10_CLASSES):
        for f in sorted((root / split / name).glob("*.png")):
            with Image.open(f) as im:
                xs.append(np.asarray(im, dtype=np.float32) / 255.0)
            ys.append(label)
    return np.stack(xs), np.asarray(ys)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("cifar10")
    return out, cifar10(out, size=2000, seed=0)


def test_classes_are_cifar10_names():
    assert CIFAR10_CLASSES == ("airplane", "automobile", "bird", "cat", "deer",
                               "dog", "frog", "horse", "ship", "truck")


def test_layout(sample):
    out, info = sample
    assert info == {"train": 1667, "test": 333, "classes": 10, "path": str(out)}
    assert (out / "labels.txt").read_text().splitlines() == list(CIFAR10_CLASSES)
    assert sorted(p.name for p in out.iterdir()) == ["labels.txt", "test", "train"]
    counts = {}
    for split, allowed in (("train", {166, 167}), ("test", {33, 34})):
        assert sorted(p.name for p in (out / split).iterdir()) == sorted(CIFAR10_CLASSES)
        for name in CIFAR10_CLASSES:
            files = sorted((out / split / name).iterdir())
            assert len(files) in allowed
            assert {f.name for f in files} == {f"{i}.png" for i in range(len(files))}
            counts[split, name] = len(files)
    assert all(counts["train", c] + counts["test", c] == 200 for c in CIFAR10_CLASSES)
    for name in ("airplane", "truck"):
        with Image.open(out / "test" / name / "0.png") as im:
            assert im.format == "PNG"
            assert im.mode == "RGB"
            assert im.size == (32, 32)
            im.load()


def test_deterministic_for_a_seed(tmp_path):
    a = cifar10(tmp_path / "a", size=60, seed=3)
    b = cifar10(tmp_path / "b", size=60, seed=3)
    assert {k: v for k, v in a.items() if k != "path"} == {k: v for k, v in b.items() if k != "path"}
    ta, tb = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert len(ta) == 61 and ta == tb


def test_different_seeds_differ(tmp_path):
    cifar10(tmp_path / "a", size=40, seed=0)
    cifar10(tmp_path / "b", size=40, seed=1)
    ta, tb = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert ta.keys() == tb.keys()
    pngs = [k for k in ta if k.endswith(".png")]
    assert sum(ta[k] != tb[k] for k in pngs) == len(pngs)


def test_images_within_a_set_differ(sample):
    out, _ = sample
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*.png")}
    assert len(digests) == 2000


@pytest.mark.parametrize("size,test_frac", [(23, 0.2), (10, 1 / 6), (7, 0.5), (50, 0.0)])
def test_size_respected_and_balanced(tmp_path, size, test_frac):
    info = cifar10(tmp_path, size=size, test_frac=test_frac, seed=0)
    n = {s: {c: len(list((tmp_path / s / c).glob("*.png"))) for c in CIFAR10_CLASSES}
         for s in ("train", "test")}
    assert info["train"] == sum(n["train"].values())
    assert info["test"] == sum(n["test"].values())
    assert info["train"] + info["test"] == size
    assert info["classes"] == 10
    per_class = [n["train"][c] + n["test"][c] for c in CIFAR10_CLASSES]
    assert max(per_class) - min(per_class) <= 1
    assert info["test"] == round(size * test_frac)
    for split in ("train", "test"):
        assert max(n[split].values()) - min(n[split].values()) <= 1


def test_image_size(tmp_path):
    cifar10(tmp_path, size=20, image_size=48, seed=0)
    with Image.open(tmp_path / "train" / "dog" / "0.png") as im:
        assert im.size == (48, 48) and im.mode == "RGB"


def _ridge_acc(ftr, ytr, fte, yte, lam=1.0) -> float:
    """One-vs-all ridge regression on standardised features (a linear classifier)."""
    m, s = ftr.mean(0), ftr.std(0) + 1e-6
    a = np.hstack([(ftr - m) / s, np.ones((len(ftr), 1))])
    b = np.hstack([(fte - m) / s, np.ones((len(fte), 1))])
    w = np.linalg.solve(a.T @ a + lam * len(a) * np.eye(a.shape[1]), a.T @ np.eye(10)[ytr])
    return float(((b @ w).argmax(1) == yte).mean())


def test_not_linearly_separable_but_shape_carries_the_label(sample):
    out, _ = sample
    xtr, ytr = _load(out, "train")
    xte, yte = _load(out, "test")

    # raw pixels: nearest class mean and a linear classifier stay far below 0.9
    # (colour and position carry (almost) no class information)
    pix = lambda x: x.reshape(len(x), 16, 2, 16, 2, 3).mean((2, 4)).reshape(len(x), -1)
    ptr, pte = pix(xtr), pix(xte)
    means = np.stack([ptr[ytr == c].mean(0) for c in range(10)])
    ncm = float((((pte[:, None] - means[None]) ** 2).sum(-1).argmin(1) == yte).mean())
    assert ncm < 0.4
    assert _ridge_acc(ptr, ytr, pte, yte) < 0.4

    # a translation- and colour-invariant feature (log power spectrum of the
    # standardised grey image) makes the same linear classifier clearly better:
    # the label is in the shape and texture
    def spectrum(x):
        g = x.mean(-1)
        g = (g - g.mean((1, 2), keepdims=True)) / (g.std((1, 2), keepdims=True) + 1e-6)
        return np.log1p(np.abs(np.fft.rfft2(g))).reshape(len(x), -1)

    assert _ridge_acc(spectrum(xtr), ytr, spectrum(xte), yte) > 0.4
