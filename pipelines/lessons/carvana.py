"""Lesson 14: Carvana car masks with a U-Net on a ResNet34 encoder.

BCE with logits on the mask; fastai's fine_tune: first the decoder alone (encoder frozen),
then everything with discriminative LRs (early encoder, late encoder, decoder), `epochs`
in all; progressive resizing: small images first, then the full size (lesson 14: 128,
then 512 and 1024). The metric is dice, per image, averaged over the validation cars
(Kaggle's). The validation split is by car id (preprocessing/imagery.py).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from models.unet import UNet, UNetConfig, load_resnet34_encoder
from preprocessing import imagery, pretrained
from preprocessing.chunked import read_split

from ..core.contract import Pipeline, RunContext, TrainConfig
from ..core.metrics import Sums
from ..core.phases import discriminative, fine_tune, with_data
from ..core.vision import IMAGENET_MEAN, IMAGENET_STD, denormalize, normalize, random_flip, side_by_side, to_float

logger = logging.getLogger("fastray")


@dataclass(frozen=True)
class Config(TrainConfig):
    width: int = 64                         # encoder stem channels, x2 per stage (ResNet34: 64)
    layers: tuple[int, ...] = (3, 4, 6, 3)  # BasicBlocks per encoder stage (ResNet34: 3, 4, 6, 3)
    pretrained: str = "auto"    # ResNet34 ImageNet weights: auto (torchvision's file; random for another encoder), none or a file
    epochs: int = 10            # epochs the whole run trains: freeze_epochs frozen, then the whole net
    freeze_epochs: int = 2      # the first epochs: a 1cycle of the decoder alone (encoder frozen)
    small_epochs: int = 6       # the first epochs (frozen ones included) train at small_size (dropped if >= epochs)
    lr: float = 4e-3            # peak Adam LR of the decoder (lesson 14: 4e-2 with its weights)
    lr_factor: float = 10.0     # discriminative LRs: lr / factor**k for the encoder's two groups
    div: float = 10.0           # 1cycle: start LR = lr / div
    pct: float = 0.1            # 1cycle: fraction of the epochs in the final annealing
    moms: tuple[float, ...] = (0.95, 0.85)  # 1cycle Adam beta1: max, min
    wd: float = 1e-5            # weight decay (Adam, L2)
    size: int = 256             # final image and mask size, px (the frame is squashed square)
    small_size: int = 128       # progressive resizing: the first size, px (0: none)
    valid_frac: float = 0.2     # fraction of the car ids held out for validation (the seed draws the split)

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "pretrained", pretrained.weights_spec(self.pretrained))
        if self.freeze_epochs < 0 or self.small_epochs < 0 or self.lr <= 0:
            raise ValueError(f"need freeze_epochs >= 0, small_epochs >= 0 and lr > 0 (freeze_epochs={self.freeze_epochs}, "
                             f"small_epochs={self.small_epochs}, lr={self.lr})")
        if self.size % 32 or (self.small_size and self.small_size % 32):
            raise ValueError(f"size and small_size must be multiples of 32 (the encoder's stride), "
                             f"got {self.size}, {self.small_size}")

    @property
    def sizes(self) -> tuple[int, ...]:
        return (self.small_size, self.size) if self.small_size and self.small_size != self.size else (self.size,)

    def unet(self) -> UNetConfig:
        return UNetConfig(width=self.width, layers=tuple(self.layers), n_out=1)


CONFIGS = {
    # seconds: a test's smoke run through every mechanism (frozen, unfrozen, two sizes)
    "tiny": Config(width=8, layers=(1, 1, 1, 1), pretrained="none", bs=16, epochs=2, freeze_epochs=1,
                   small_epochs=1, lr=1e-2, size=64, small_size=32),
    # minutes on 2 CPU cores: dice >= 0.9 on the sample's validation cars (random encoder; 0.959 measured)
    "sample": Config(width=16, layers=(1, 1, 1, 1), pretrained="none", bs=32, epochs=7, freeze_epochs=1,
                     small_epochs=3, lr=1e-2, lr_factor=1.0, size=64, small_size=32),
    # lesson 14 on the real Carvana (GPUs): 2 frozen epochs, then 8 of everything; the first 6 at 128 px
    "default": Config(),
}


def dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image dice of the predicted mask (logit > 0) against the target (B, 1, H, W):
    2 |P n T| / (|P| + |T|), and 1 when both are empty."""
    pred = (logits > 0).flatten(1).float()
    t = (target > 0.5).flatten(1).float()
    inter, total = (pred * t).sum(1), pred.sum(1) + t.sum(1)
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))


def _random_encoder(cfg: Config) -> str:
    """Why the encoder starts from random weights ("" when it loads ResNet34's)."""
    if cfg.pretrained == "none":
        return "pretrained=none"
    if cfg.pretrained == "auto" and not cfg.unet().is_resnet34:
        return f"the encoder is not ResNet34 (width={cfg.width}, layers={tuple(cfg.layers)}): no ImageNet weights for it"
    return ""


class CarvanaUNet(Pipeline):
    Config = Config
    configs = CONFIGS

    # ---- data
    def preprocess(self, cfg: Config, data_dir: Path, cache, on_bad: str = "skip"):
        source = imagery.find_carvana(data_dir, cfg.valid_frac, cfg.seed, on_bad)
        manifest, hit = imagery.preprocess(source, cfg.sizes, cache, "carvana", on_bad=on_bad, seed=cfg.seed)
        cars = manifest.get("cars", {})
        logger.info(f"carvana: {manifest['rows']['train']} training images of {len(cars.get('train', []))} cars, "
                    f"{manifest['rows']['valid']} validation images of {len(cars.get('valid', []))} other car(s)")
        return manifest, hit

    def datasets(self, cfg: Config, cache, manifest: dict) -> dict[str, Any]:
        out = {f"train{s}": read_split(cache, manifest, "train", [f"img{s}", f"mask{s}"]) for s in cfg.sizes}
        out["valid"] = read_split(cache, manifest, "valid", [f"img{cfg.size}", f"mask{cfg.size}"])
        return out

    # ---- model
    def build_model(self, cfg: Config) -> nn.Module:
        return UNet(cfg.unet())

    def param_groups(self, model) -> list[list[nn.Parameter]]:
        return model.layer_groups()  # early encoder, late encoder, decoder

    def init_source(self, cfg: Config, manifest: dict, tracking_uri: str) -> dict[str, str]:
        """On the driver: ResNet34's weights resolved once (auto: downloaded into the hub cache
        when absent) and tried on the encoder; the MLflow tags name the file and its sha256."""
        why = _random_encoder(cfg)
        if why:
            logger.info(f"carvana-unet: random encoder ({why})")
            return {"fastray.init": "random"}
        got = pretrained.resolve(cfg.pretrained, "resnet34")
        assert got is not None  # none is random, above
        load_resnet34_encoder(self.build_model(cfg), got.path)  # a clear error if it does not fit
        logger.info(f"carvana-unet: encoder from the ResNet34 weights {got.path} (sha256 {got.sha256[:12]}...)")
        return got.tags("fastray.init")

    def init_model(self, model, ctx: RunContext) -> None:
        """On a worker: the file init_source resolved, never downloaded."""
        if not _random_encoder(ctx.cfg):
            load_resnet34_encoder(model, pretrained.locate(ctx.cfg.pretrained, "resnet34"))

    def phases(self, cfg: Config) -> list:
        """fine_tune over `epochs`: freeze_epochs of the decoder alone (encoder groups 0, 1
        frozen), then the whole net; the first small_epochs at small_size, dropped (the whole
        run at `size`) when the run is too short to switch."""
        cycle = fine_tune(cfg.epochs, cfg.freeze_epochs, cfg.lr, frozen=(0, 1), div=cfg.div, pct=cfg.pct,
                          moms=tuple(cfg.moms), opt="adam", opt_kwargs={"weight_decay": cfg.wd},
                          lr_mults=discriminative(3, cfg.lr_factor))
        if len(cfg.sizes) == 1 or not 0 < cfg.small_epochs < cfg.epochs:
            return with_data(cycle, [(0, f"train{cfg.size}")])
        return with_data(cycle, [(0, f"train{cfg.small_size}"), (cfg.small_epochs, f"train{cfg.size}")])

    # ---- steps
    def to_device(self, batch: dict[str, torch.Tensor], ctx: RunContext, train: bool):
        key = next(k for k in batch if k.startswith("img"))
        x = to_float(batch[key])                                      # (B, 3, S, S)
        y = batch["mask" + key[3:]].unsqueeze(1).float()              # (B, 1, S, S) 0/1
        if train:
            x, y = random_flip(x, y)
        x = normalize(x, IMAGENET_MEAN, IMAGENET_STD)  # the encoder's ImageNet weights expect it
        if x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def train_step(self, model, batch, ctx: RunContext) -> dict[str, torch.Tensor]:
        x, y = batch
        return {"loss": F.binary_cross_entropy_with_logits(model(x).float(), y)}

    def evaluate(self, model, batches: Iterable, ctx: RunContext) -> dict[str, float]:
        sums = Sums()
        for x, y in batches:
            out = model(x).float()
            sums.add(len(y), loss=F.binary_cross_entropy_with_logits(out, y, reduction="sum") / y[0].numel(),
                     dice=dice(out, y).sum())
        return sums.means(loss=0.0, dice=0.0)

    def predictions(self, model, batch, ctx: RunContext) -> list[Path]:
        """Six validation cars: the input, the predicted and true masks, the prediction on the input."""
        x, y = batch[0][:6], batch[1][:6]
        with torch.no_grad():
            out = model(x).float()
        img = denormalize(x, IMAGENET_MEAN, IMAGENET_STD)
        pred = (out > 0).float()
        overlay = img * (1 - 0.5 * pred) + 0.5 * pred * img.new_tensor((1.0, 0.2, 0.2)).view(1, 3, 1, 1)
        d = dice(out, y).mean().item()
        return [side_by_side([("input", img), ("predicted mask", pred), ("true mask", y.float()),
                              ("prediction on input (red)", overlay)], ctx.out_dir / "masks.png", n=len(x),
                             title=f"validation cars: dice of these {len(x)}: {d:.3f}")]

    def search_space(self, cfg: Config) -> dict[str, Any]:
        from ray import tune

        return {"lr": tune.loguniform(cfg.lr / 4, cfg.lr * 3), "lr_factor": tune.choice([1.0, 3.0, 10.0]),
                "pct": tune.uniform(0.05, 0.3)}
