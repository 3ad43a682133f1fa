"""Lesson 14's super-resolution network: an SRResNet (EDSR-style residual blocks without
BatchNorm, each scaled by `res_scale`) and pixel-shuffle upsampling initialised with ICNR.

One network serves x2 and x4: it holds log2(max_scale) upsampling stages, and
`forward(x, scale)` runs the first log2(scale) of them before the shared output conv.
Training x2 first and then x4 is lesson 14's progressive resizing, where the x4 model
started from the x2 model's weights: here they are the same weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def icnr_(weight: torch.Tensor, scale: int = 2, init=nn.init.kaiming_normal_) -> torch.Tensor:
    """ICNR (Aitken et al. 2017): initialise the conv before a PixelShuffle(scale) so that
    the shuffle's output starts as a nearest-neighbour upsampling of one conv's output.

    PixelShuffle takes output channel c at offset (i, j) of each scale x scale block from
    input channel c*scale**2 + i*scale + j, so the scale**2 consecutive filters of each
    output channel are made equal: every block starts flat, with no checkerboard."""
    out_c, in_c, kh, kw = weight.shape
    r2 = scale * scale
    if out_c % r2:
        raise ValueError(f"ICNR: {out_c} output channels is not a multiple of scale**2 = {r2}")
    sub = torch.empty(out_c // r2, in_c, kh, kw, dtype=weight.dtype, device=weight.device)
    init(sub)
    with torch.no_grad():
        weight.copy_(sub.repeat_interleave(r2, dim=0))
    return weight


class ResBlock(nn.Module):
    """x + res_scale * conv(relu(conv(x))): no BatchNorm (EDSR); the small residual scale
    keeps a deep stack stable at the start of training."""

    def __init__(self, nf: int, res_scale: float):
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 3, padding=1)
        self.conv2 = nn.Conv2d(nf, nf, 3, padding=1)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.conv2(F.relu(self.conv1(x)))


class PixelShuffleUp(nn.Module):
    """conv nf -> nf*scale**2 (ICNR), ReLU, PixelShuffle: (B, nf, H, W) -> (B, nf, sH, sW)."""

    def __init__(self, nf: int, scale: int = 2, icnr: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(nf, nf * scale * scale, 3, padding=1)
        if icnr:
            icnr_(self.conv.weight, scale)
            nn.init.zeros_(self.conv.bias)  # equal biases too, or the blocks differ by them
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(F.relu(self.conv(x)))


@dataclass(frozen=True)
class SRResNetConfig:
    nf: int = 64               # channels of the body
    n_res: int = 8             # residual blocks (lesson 14: 8)
    res_scale: float = 0.1     # residual branch scale
    max_scale: int = 4         # upsampling stages = log2(max_scale); x2 and x4 share the first
    icnr: bool = True          # ICNR init of the pixel-shuffle convs
    bicubic_skip: bool = False  # add the bicubic upscale of the input: the net learns the residual (VDSR)

    def __post_init__(self):
        if self.max_scale < 2 or self.max_scale & (self.max_scale - 1):
            raise ValueError(f"max_scale must be a power of 2 >= 2, got {self.max_scale}")
        if self.nf < 1 or self.n_res < 0:
            raise ValueError(f"need nf >= 1 and n_res >= 0, got nf={self.nf}, n_res={self.n_res}")


class SRResNet(nn.Module):
    """Images in [0, 1] (B, 3, H, W) -> (B, 3, sH, sW) for scale s in 2, 4, ... max_scale."""

    def __init__(self, cfg: SRResNetConfig = SRResNetConfig()):
        super().__init__()
        self.cfg = cfg
        self.head = nn.Conv2d(3, cfg.nf, 3, padding=1)
        self.body = nn.Sequential(*[ResBlock(cfg.nf, cfg.res_scale) for _ in range(cfg.n_res)])
        self.body_conv = nn.Conv2d(cfg.nf, cfg.nf, 3, padding=1)
        self.ups = nn.ModuleList(PixelShuffleUp(cfg.nf, 2, cfg.icnr) for _ in range(int(math.log2(cfg.max_scale))))
        self.tail = nn.Conv2d(cfg.nf, 3, 3, padding=1)
        if cfg.bicubic_skip:  # start exactly at the bicubic upscale
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor, scale: int | None = None) -> torch.Tensor:
        scale = scale or self.cfg.max_scale
        stages = int(math.log2(scale)) if scale > 1 else 0
        if 2 ** stages != scale or not 1 <= stages <= len(self.ups):
            raise ValueError(f"scale must be a power of 2 in [2, {self.cfg.max_scale}], got {scale}")
        h = self.head(x - 0.5)               # (B, nf, H, W), inputs centred
        h = h + self.body_conv(self.body(h))  # global skip over the residual blocks
        for up in self.ups[:stages]:
            h = up(h)                         # (B, nf, 2H, 2W) per stage
        out = self.tail(h) + 0.5              # (B, 3, sH, sW)
        if self.cfg.bicubic_skip:
            out = out - 0.5 + F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
        return out
