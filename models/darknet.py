"""Darknet for CIFAR-10, as in fast.ai Part 2 lesson 12 (after YOLOv3's backbone).

conv_layer -> groups of [strided conv_layer, ResLayer x n] -> pool -> dropout -> linear.
The lesson's net is Darknet(groups=(1, 2, 4, 6, 3), nf=32): 32 px in, 1/16 the size out.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def conv_layer(ni: int, nf: int, ks: int = 3, stride: int = 1, bn_mom: float = 0.01) -> nn.Sequential:
    """Conv (no bias: BatchNorm follows) -> BatchNorm -> LeakyReLU(0.1), padding ks // 2.
    bn_mom 0.01 is the lesson's: slow running statistics, right for long runs."""
    return nn.Sequential(
        nn.Conv2d(ni, nf, kernel_size=ks, stride=stride, padding=ks // 2, bias=False),
        nn.BatchNorm2d(nf, momentum=bn_mom),
        nn.LeakyReLU(0.1, inplace=True),
    )


class ResLayer(nn.Module):
    """x + conv3x3(conv1x1(x)): a bottleneck to ni // 2 channels and back."""

    def __init__(self, ni: int, bn_mom: float = 0.01):
        super().__init__()
        self.conv1 = conv_layer(ni, ni // 2, ks=1, bn_mom=bn_mom)
        self.conv2 = conv_layer(ni // 2, ni, ks=3, bn_mom=bn_mom)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(x))  # out of place: autograd and DDP stay simple


@dataclass(frozen=True)
class DarknetConfig:
    groups: tuple[int, ...] = (1, 2, 4, 6, 3)  # ResLayers per group; each group doubles the width
    nf: int = 32                               # channels of the stem; the head sees nf * 2**len(groups)
    num_classes: int = 10
    p: float = 0.0                             # dropout before the classifier (0: checkpoints load the same whatever p is tuned to)
    bn_mom: float = 0.01                       # BatchNorm running-statistics momentum (lesson: 0.01)


class Darknet(nn.Module):
    def __init__(self, cfg: DarknetConfig):
        super().__init__()
        if not cfg.groups or any(n < 0 for n in cfg.groups):
            raise ValueError(f"groups must be a non-empty tuple of block counts >= 0, got {cfg.groups}")
        if cfg.nf < 2 or not 0.0 <= cfg.p < 1.0:
            raise ValueError(f"need nf >= 2 and 0 <= p < 1, got nf={cfg.nf}, p={cfg.p}")
        nf = cfg.nf
        m = cfg.bn_mom
        layers: list[nn.Module] = [conv_layer(3, nf, ks=3, stride=1, bn_mom=m)]
        for i, n_blocks in enumerate(cfg.groups):
            # the lesson's stride pattern: 2, 1, 2, 2, ... (32 px -> 16, 16, 8, 4, 2)
            layers.append(conv_layer(nf, nf * 2, stride=1 if i == 1 else 2, bn_mom=m))
            layers += [ResLayer(nf * 2, bn_mom=m) for _ in range(n_blocks)]
            nf *= 2
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(cfg.p), nn.Linear(nf, cfg.num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # (B, 3, H, W) -> (B, num_classes)
