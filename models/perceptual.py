"""VGG16 features as a loss (lessons 13 and 14): content loss, Gram-matrix style loss.

A perceptual loss compares images through a frozen ImageNet VGG16's activations (the
weights file, torchvision's vgg16-397923af.pth, is found or fetched by
preprocessing.pretrained). Without it the features are those of a random network: such a
loss still trains something (tests use it to run fast and offline), but not what the
lessons showed, so it is allowed only when asked for by name (`allow_random=True`).

Layers are indexes into torchvision's `vgg16().features`; the ReLU before each max-pool:
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .weights import load_fitting, read_state_dict

# the ReLU outputs just before each max-pool (lesson 14 takes its features there)
VGG16_LAYERS = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22, "relu5_3": 29}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg16_features(upto: int, weights: str | Path | None = None,
                   allow_random: bool = False) -> tuple[nn.Sequential, str]:
    """torchvision's vgg16().features[:upto + 1], frozen and in eval mode, with the weights
    of the VGG16 state dict file `weights`, and where they came from ("file:PATH" or
    "random"). No file: random features if allow_random, else a ValueError."""
    from torchvision.models.vgg import cfgs, make_layers

    if not 0 <= upto < 31:
        raise ValueError(f"VGG16 feature layer must be in [0, 30], got {upto}")
    # vgg16().features without building (and initialising) the 120M-parameter classifier
    net = make_layers(cfgs["D"])[: upto + 1]
    for m in net.modules():  # torchvision's VGG init (random features keep their scale through the layers)
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    if weights is None:
        if not allow_random:
            raise ValueError("VGG16 features need a weights file, or allow_random=True for random features")
        source = "random"
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"VGG16 weights {path}: no such file")
        state = read_state_dict(path)
        # the file holds the whole classifier: take the feature layers this net keeps
        feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        want = net.state_dict()
        missing = [k for k in want if k not in feats]
        if missing:
            raise ValueError(f"weights file {path}: not VGG16 (no features.{missing[0]})")
        load_fitting(net, {k: feats[k] for k in want}, path, "VGG16")
        source = f"file:{path}"
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval(), source


def gram_matrix(f: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) features -> (B, C, C) channel correlations, divided by C*H*W so that
    layers of different sizes weigh alike (lesson 13)."""
    b, c, h, w = f.shape
    x = f.reshape(b, c, h * w)
    return torch.bmm(x, x.transpose(1, 2)) / (c * h * w)


class VGGFeatures(nn.Module):
    """Images in [0, 1] (B, 3, H, W) -> the activations at `layers`, in order."""

    def __init__(self, layers: Sequence[int] = (8, 15, 22), weights: str | Path | None = None,
                 allow_random: bool = False):
        super().__init__()
        if not layers:
            raise ValueError("VGGFeatures needs at least one layer")
        self.layers = tuple(sorted(set(int(l) for l in layers)))
        self.net, self.source = vgg16_features(self.layers[-1], weights, allow_random)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "VGGFeatures":
        return super().train(False)  # a loss network: BatchNorm-free, but never in training mode

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.net):
            x = layer(x)
            if i in self.layers:
                out.append(x)
        return out


def content_loss(feats: Sequence[torch.Tensor], targets: Sequence[torch.Tensor],
                 weights: Sequence[float] | None = None) -> torch.Tensor:
    """Sum over layers of weight * MSE between activations."""
    weights = weights or [1.0] * len(feats)
    return sum(w * F.mse_loss(f, t) for f, t, w in zip(feats, targets, weights))


def style_loss(feats: Sequence[torch.Tensor], target_grams: Sequence[torch.Tensor],
               weights: Sequence[float] | None = None) -> torch.Tensor:
    """Sum over layers of weight * MSE between Gram matrices. A target Gram of batch 1
    (one style image) broadcasts over the batch."""
    weights = weights or [1.0] * len(feats)
    total = 0.0
    for f, g, w in zip(feats, target_grams, weights):
        gf = gram_matrix(f)
        total = total + w * F.mse_loss(gf, g.expand_as(gf))
    return total


class FeatureLoss(nn.Module):
    """Lesson 14's super-resolution loss: a pixel L1 term plus, per VGG layer, the L1
    distance between the activations of output and target, weighted."""

    def __init__(self, features: VGGFeatures, layer_weights: Sequence[float], pixel_weight: float = 1.0):
        super().__init__()
        if len(layer_weights) != len(features.layers):
            raise ValueError(f"{len(layer_weights)} layer weights for {len(features.layers)} layers")
        self.features, self.layer_weights, self.pixel_weight = features, tuple(layer_weights), pixel_weight

    def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        fo = self.features(out)
        with torch.no_grad():
            ft = self.features(target)
        loss = self.pixel_weight * F.l1_loss(out, target)
        for a, b, w in zip(fo, ft, self.layer_weights):
            loss = loss + w * F.l1_loss(a, b)
        return loss
