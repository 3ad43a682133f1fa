"""What the vision pipelines share: uint8 batches to float tensors, normalisation and the
ImageNet statistics, random crops and flips of whole batches on the device, PSNR, the VGG
loss network of a worker, and the side-by-side pictures they log to MLflow.
"""
from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from models.perceptual import IMAGENET_MEAN, IMAGENET_STD, VGGFeatures
from preprocessing import pretrained

from . import plots

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "to_float", "normalize", "denormalize", "random_flip", "random_crop_flip",
           "psnr", "side_by_side", "loss_network", "vgg_source"]  # the ImageNet statistics re-exported for the lessons
logger = logging.getLogger("fastray")


def to_float(img: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [0, 1]."""
    return img.permute(0, 3, 1, 2).float().div_(255)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> per-channel standardised."""
    return (x - x.new_tensor(mean).view(1, 3, 1, 1)) / x.new_tensor(std).view(1, 3, 1, 1)


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """normalize()'s inverse, clamped to [0, 1] for display."""
    return (x.float() * x.new_tensor(std).view(1, 3, 1, 1) + x.new_tensor(mean).view(1, 3, 1, 1)).clamp(0, 1)


def random_crop_flip(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad-`pad` reflect crop and a horizontal flip, drawn per image, for a whole batch
    at once: two gathers, no Python loop over images. x: (B, C, H, W)."""
    B, C, H, W = x.shape
    if pad > 0:
        xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")  # (B, C, H+2p, W+2p)
        dy = torch.randint(0, 2 * pad + 1, (B, 1, 1, 1), device=x.device)
        dx = torch.randint(0, 2 * pad + 1, (B, 1, 1, 1), device=x.device)
        rows = (dy + torch.arange(H, device=x.device).view(1, 1, H, 1)).expand(B, C, H, xp.shape[3])
        x = xp.gather(2, rows)  # (B, C, H, W+2p)
        cols = (dx + torch.arange(W, device=x.device).view(1, 1, 1, W)).expand(B, C, H, W)
        x = x.gather(3, cols)  # (B, C, H, W)
    return random_flip(x)[0]


def random_flip(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The same horizontal flip, drawn per example, of several (B, C, H, W) batches."""
    flip = torch.rand(xs[0].shape[0], 1, 1, 1, device=xs[0].device) < 0.5
    return tuple(torch.where(flip, x.flip(3), x) for x in xs)


def psnr(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of (B, C, H, W) images in [0, 1]: 10 log10(1 / MSE)."""
    mse = (out.float().clamp(0, 1) - target.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-10))


def _random_vgg(weights: str, allow_random: bool) -> bool:
    """Random VGG features: asked for by name (vgg_weights=none), or allowed (allow_random_vgg:
    tests and sample configs, which never download) while torchvision's file is not in the hub cache."""
    spec = pretrained.weights_spec(weights, "vgg_weights")
    return spec == "none" or (spec == "auto" and allow_random and pretrained.cached("vgg16") is None)


def vgg_source(weights: str, allow_random: bool, name: str, quiet: bool = False) -> dict[str, str]:
    """On the driver: the loss network's VGG16 weights (pretrained.resolve: a file, or for auto
    the hub cache, downloaded there when absent), said on stderr, and the run's tags; a
    one-line error that says how to supply them when they cannot be had. Pipelines call it
    quietly before preprocessing too, so a missing file stops them early."""
    if _random_vgg(weights, allow_random):
        if not quiet:
            why = "vgg_weights=none" if pretrained.weights_spec(weights) == "none" else \
                f"allow_random_vgg, and no {pretrained.WEIGHTS['vgg16'].file} in the hub cache"
            logger.info(f"{name}: warning: no VGG16 weights: the perceptual loss uses RANDOM VGG features ({why})")
        return {"fastray.vgg16": "random"}
    got = pretrained.resolve(weights, "vgg16", key="vgg_weights")
    assert got is not None  # "none" is random, above
    if not quiet:
        logger.info(f"{name}: perceptual loss on the VGG16 weights {got.path} (sha256 {got.sha256[:12]}...)")
    return got.tags("fastray.vgg16")


@lru_cache(maxsize=4)
def loss_network(layers: tuple[int, ...], weights: str, allow_random: bool, device: str) -> VGGFeatures:
    """One frozen VGG16 feature extractor per worker process and device (not part of the
    trained model: not checkpointed, not wrapped by DDP), on the file vgg_source found on the
    driver (pretrained.locate: never downloaded here). Random weights come from a fixed seed,
    so every worker uses the same random features."""
    path = None if _random_vgg(weights, allow_random) else pretrained.locate(weights, "vgg16", key="vgg_weights")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        net = VGGFeatures(layers, path, allow_random=path is None)
    return net.to(device)


def side_by_side(columns: Sequence[tuple[str, torch.Tensor]], path: Path, n: int = 6, title: str = "") -> Path:
    """A grid: one row per example, one column per (title, (N, C, H, W) images in [0, 1]);
    smaller images are shown enlarged (nearest) to the largest size. C is 3 or 1 (a mask)."""
    n = min(n, *(len(x) for _, x in columns))
    size = max(x.shape[-1] for _, x in columns)
    fig = plots.figure((1.8 * len(columns), 1.8 * n + (0.4 if title else 0)))
    axes = fig.subplots(n, len(columns), squeeze=False)
    for j, (name, x) in enumerate(columns):
        x = x[:n].detach().float().cpu()
        if x.shape[-1] != size:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="nearest")
        for i in range(n):
            ax = axes[i][j]
            img = x[i].clamp(0, 1)
            ax.imshow(img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy(),
                      cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=8)
    return plots.save(fig, path, title=title)
