"""Lesson 14's U-Net on a ResNet34 encoder (Carvana): the encoder's activations at strides
2, 4, 8 and 16 feed the decoder's blocks through skip connections.

The encoder is torchvision's ResNet layout with the same parameter names, so ImageNet's
resnet34 weights load into it; its width and blocks per stage are options so that a
small encoder runs on a CPU (weights then cannot be loaded: the shapes differ).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock

from .weights import load_resnet_body


@dataclass(frozen=True)
class UNetConfig:
    width: int = 64                        # channels of the stem; x2 each stage (ResNet34: 64)
    layers: tuple[int, ...] = (3, 4, 6, 3)  # BasicBlocks per stage (ResNet34)
    n_out: int = 1                          # output channels (1: a mask's logits)

    def __post_init__(self):
        if self.width < 1 or len(self.layers) != 4 or min(self.layers) < 1:
            raise ValueError(f"need width >= 1 and four stages of >= 1 block, got width={self.width}, layers={self.layers}")

    @property
    def is_resnet34(self) -> bool:
        return self.width == 64 and tuple(self.layers) == (3, 4, 6, 3)


class ResNetEncoder(nn.Module):
    """torchvision's ResNet without pool and fc: same names (conv1, bn1, layer1..4)."""

    def __init__(self, width: int = 64, layers: tuple[int, ...] = (3, 4, 6, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.inplanes = width
        self.layer1 = self._make_layer(width, layers[0], 1)
        self.layer2 = self._make_layer(2 * width, layers[1], 2)
        self.layer3 = self._make_layer(4 * width, layers[2], 2)
        self.layer4 = self._make_layer(8 * width, layers[3], 2)
        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, down)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> activations at strides 2, 4, 8, 16 and 32."""
        s2 = self.relu(self.bn1(self.conv1(x)))   # (B, w, H/2, W/2)
        s4 = self.layer1(self.maxpool(s2))        # (B, w, H/4, W/4)
        s8 = self.layer2(s4)                      # (B, 2w, H/8, W/8)
        s16 = self.layer3(s8)                     # (B, 4w, H/16, W/16)
        s32 = self.layer4(s16)                    # (B, 8w, H/32, W/32)
        return [s2, s4, s8, s16, s32]


class UnetBlock(nn.Module):
    """Lesson 14: upsample the path from below (transposed conv to n_out/2 channels), a 1x1
    conv of the skip to n_out/2, concatenate, ReLU, BatchNorm."""

    def __init__(self, up_in: int, x_in: int, n_out: int):
        super().__init__()
        half = n_out // 2
        self.tr_conv = nn.ConvTranspose2d(up_in, half, 2, stride=2)
        self.x_conv = nn.Conv2d(x_in, n_out - half, 1)
        self.bn = nn.BatchNorm2d(n_out)

    def forward(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.tr_conv(up)
        if up.shape[-2:] != skip.shape[-2:]:  # odd sizes: align on the skip's grid
            up = F.interpolate(up, size=skip.shape[-2:], mode="nearest")
        return self.bn(F.relu(torch.cat([up, self.x_conv(skip)], dim=1)))


class UNet(nn.Module):
    """Images (B, 3, H, W), normalised -> (B, n_out, H, W) logits."""

    def __init__(self, cfg: UNetConfig = UNetConfig()):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.encoder = ResNetEncoder(w, tuple(cfg.layers))
        d = 4 * w  # decoder width (lesson 14: 256 on ResNet34)
        self.up1 = UnetBlock(8 * w, 4 * w, d)  # s32 -> s16
        self.up2 = UnetBlock(d, 2 * w, d)      # s16 -> s8
        self.up3 = UnetBlock(d, w, d)          # s8 -> s4
        self.up4 = UnetBlock(d, w, d)          # s4 -> s2
        self.up5 = nn.ConvTranspose2d(d, cfg.n_out, 2, stride=2)  # s2 -> s1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s2, s4, s8, s16, s32 = self.encoder(x)
        h = self.up1(F.relu(s32), s16)
        h = self.up2(h, s8)
        h = self.up3(h, s4)
        h = self.up4(h, s2)
        out = self.up5(h)
        if out.shape[-2:] != x.shape[-2:]:
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Lesson 14's three groups: early encoder, late encoder, decoder."""
        e = self.encoder
        early = [*e.conv1.parameters(), *e.bn1.parameters(), *e.layer1.parameters(), *e.layer2.parameters()]
        late = [*e.layer3.parameters(), *e.layer4.parameters()]
        enc = {id(p) for p in early + late}
        return [early, late, [p for p in self.parameters() if id(p) not in enc]]


def load_resnet34_encoder(model: UNet, path: Path) -> None:
    """ImageNet resnet34 weights (torchvision's file) into the encoder; fc is dropped."""
    if not model.cfg.is_resnet34:
        raise ValueError(f"ResNet34 weights {path} need width=64 and layers=(3, 4, 6, 3) "
                         f"(this U-Net: width={model.cfg.width}, layers={tuple(model.cfg.layers)})")
    load_resnet_body(model.encoder, path, "ResNet34")
