"""What the image-to-image pipelines (super-res, style-net, style-transfer, carvana-unet)
share: uint8 batches to float tensors, PSNR, the VGG loss network of a worker, and the
side-by-side pictures (input | output | target) they log to MLflow.
"""
from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch

from models.perceptual import VGGFeatures, find_weights, missing_vgg_message


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def to_float(img: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [0, 1]."""
    return img.permute(0, 3, 1, 2).float().div_(255)


def random_flip(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The same horizontal flip, drawn per example, of several (B, C, H, W) batches."""
    flip = torch.rand(xs[0].shape[0], 1, 1, 1, device=xs[0].device) < 0.5
    return tuple(torch.where(flip, x.flip(3), x) for x in xs)


def psnr(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of (B, C, H, W) images in [0, 1]: 10 log10(1 / MSE)."""
    mse = (out.float().clamp(0, 1) - target.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-10))


def vgg_source(weights: str, allow_random: bool, name: str, quiet: bool = False) -> dict[str, str]:
    """On the driver: where the loss network's weights come from, said on stderr; an error
    that says how to supply them when there are none and random features were not asked for.
    Pipelines call it quietly before preprocessing too, so a missing file stops them early."""
    path = find_weights(weights or None, "vgg16-397923af.pth")
    if path is None and not allow_random:
        raise FileNotFoundError(missing_vgg_message())
    if not quiet:
        say(f"{name}: perceptual loss on VGG16 weights {path}" if path else
            f"{name}: warning: no VGG16 weights: the perceptual loss uses RANDOM VGG features (allow_random_vgg)")
    return {"fastray.vgg16": f"file:{path}" if path else "random"}


@lru_cache(maxsize=4)
def loss_network(layers: tuple[int, ...], weights: str, allow_random: bool, device: str) -> VGGFeatures:
    """One frozen VGG16 feature extractor per worker process and device (not part of the
    trained model: not checkpointed, not wrapped by DDP). Random weights come from a fixed
    seed, so every worker uses the same random features."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        net = VGGFeatures(layers, weights or None, allow_random)
    return net.to(device)


def side_by_side(columns: Sequence[tuple[str, torch.Tensor]], path: Path, n: int = 6, title: str = "") -> Path:
    """A grid: one row per example, one column per (title, (N, C, H, W) images in [0, 1]);
    smaller images are shown enlarged (nearest) to the largest size. C is 3 or 1 (a mask)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = min(n, *(len(x) for _, x in columns))
    size = max(x.shape[-1] for _, x in columns)
    fig = Figure(figsize=(1.8 * len(columns), 1.8 * n + (0.4 if title else 0)))
    FigureCanvasAgg(fig)
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
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
