"""Johnson et al. (2016), "Perceptual losses for real-time style transfer", as lesson 14
built it: reflection-padded convs with instance norm, two stride-2 downsamplings,
residual blocks at 1/4 resolution, two upsamplings (nearest x2 then conv: no
checkerboard of transposed convs), a 9x9 conv back to RGB.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class ConvLayer(nn.Sequential):
    """reflect pad, conv, instance norm (affine), ReLU (unless last)."""

    def __init__(self, ni: int, nf: int, ks: int, stride: int = 1, norm: bool = True, relu: bool = True):
        layers: list[nn.Module] = [nn.ReflectionPad2d(ks // 2), nn.Conv2d(ni, nf, ks, stride)]
        if norm:
            layers.append(nn.InstanceNorm2d(nf, affine=True))
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    def __init__(self, nf: int):
        super().__init__()
        self.conv1 = ConvLayer(nf, nf, 3)
        self.conv2 = ConvLayer(nf, nf, 3, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(x))


class UpsampleConv(nn.Module):
    """Nearest x2, then a ConvLayer."""

    def __init__(self, ni: int, nf: int):
        super().__init__()
        self.conv = ConvLayer(ni, nf, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


@dataclass(frozen=True)
class StyleNetConfig:
    nf: int = 32     # channels of the first conv; 2x and 4x after the downsamplings (Johnson: 32)
    n_res: int = 5   # residual blocks at 1/4 resolution (Johnson: 5)

    def __post_init__(self):
        if self.nf < 1 or self.n_res < 0:
            raise ValueError(f"need nf >= 1 and n_res >= 0, got nf={self.nf}, n_res={self.n_res}")


class StyleNet(nn.Module):
    """Images in [0, 1] (B, 3, H, W), H and W multiples of 4 -> stylised (B, 3, H, W) in [0, 1]."""

    def __init__(self, cfg: StyleNetConfig = StyleNetConfig()):
        super().__init__()
        self.cfg = cfg
        nf = cfg.nf
        self.down = nn.Sequential(ConvLayer(3, nf, 9), ConvLayer(nf, 2 * nf, 3, 2), ConvLayer(2 * nf, 4 * nf, 3, 2))
        self.res = nn.Sequential(*[ResidualBlock(4 * nf) for _ in range(cfg.n_res)])
        self.up = nn.Sequential(UpsampleConv(4 * nf, 2 * nf), UpsampleConv(2 * nf, nf))
        self.out = ConvLayer(nf, 3, 9, norm=False, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"StyleNet needs H and W that are multiples of 4, got {tuple(x.shape[-2:])}")
        h = self.down(x - 0.5)        # (B, 4nf, H/4, W/4)
        h = self.up(self.res(h))      # (B, nf, H, W)
        return torch.sigmoid(self.out(h))
