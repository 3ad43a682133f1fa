"""Generated sample data sets that stand in for the fast.ai Part 2 data offline, one module
per data set, each written in the layout its reader takes and learnable, so that a test can
require a real metric:

    cifar10      fast.ai's CIFAR-10 PNG folders: shapes and textures, one family a class
    imdb         aclImdb/: reviews whose label is the weighted sum of their clauses
    giga_fren    giga-fren line files: questions about numbers, English and French
    pascal       VOCdevkit/VOC2007 and fast.ai's JSON: coloured shapes with boxes
    lsun         LSUN's bedroom/ export tree: rooms with a bed
    horse2zebra  CycleGAN's trainA/ trainB/ testA/ testB/: plain and striped animals
    carvana      train/ and train_masks/: cars and their masks, several views each
    images       an image folder tree of photographs (or pink noise) and a style picture
    jigsaw       Kaggle's toxic comments: train.csv with six 0/1 labels, test.csv

Production code takes class names from the preprocess manifest, never from here.
"""
from __future__ import annotations

import importlib
from pathlib import Path

# data set -> (module, generator, default size, its other defaults): what `fastray
# sample-data` and a run with no --data generate
GENERATORS: dict[str, tuple[str, str, int, dict]] = {
    "cifar10": ("cifar10", "cifar10", 6000, {}),
    "pascal": ("pascal", "pascal", 2000, {}),
    "imdb": ("imdb", "imdb", 5000, {"max_words": 200, "agree": 0.8}),  # reviews 30-200 words, 4 in 5 sentences agree
    "giga-fren": ("giga_fren", "giga_fren", 3000, {}),
    "lsun": ("lsun", "rooms", 2000, {}),
    "horse2zebra": ("horse2zebra", "horse2zebra", 1000, {}),
    "images": ("images", "natural_images", 800, {}),
    "carvana": ("carvana", "carvana", 1200, {}),
    "jigsaw-toxic": ("jigsaw", "jigsaw", 10000, {}),  # training comments; a quarter as many in test.csv
}


def check_split_size(size: int, test_frac: float, what: str, test_of_size: bool = True) -> None:
    """ValueError, the one-line kind a user of `fastray sample-data --size` reads, when
    `size` leaves a split empty (no pipeline reads that): ``round(size * test_frac)`` test
    items, and the rest for training (``test_of_size``) or `size` training items and those
    test items besides. A test_frac of 0 (or 1 of the size) asks for one split only."""
    def ok(n: int) -> bool:
        test = round(n * test_frac)
        return n >= 1 and (test >= 1 or test_frac == 0) and (not test_of_size or n - test >= 1 or test_frac == 1)

    if ok(size):
        return
    least = max(1, int(0.5 / test_frac) if test_frac else 1, int(0.5 / (1 - test_frac)) if test_of_size and test_frac < 1 else 1)
    while not ok(least):  # a step or two past the estimate: round() is to even at .5
        least += 1
    raise ValueError(f"size must be >= {least} ({what}), got {size}")


def generate(dataset: str, out: str | Path, size: int | None = None, **overrides) -> dict:
    """Write the sample of `dataset` to `out` (size: its items; default the table's)."""
    module, fn, default, kw = GENERATORS[dataset]
    make = getattr(importlib.import_module(f"{__name__}.{module}"), fn)
    return make(out, size=size or default, **{**kw, **overrides})
