"""Lesson 14: Carvana car masks with a U-Net on a ResNet34 encoder.

BCE with logits on the mask; first the decoder alone (encoder frozen), then everything
with discriminative LRs (early encoder, late encoder, decoder); progressive resizing:
small images first, then the full size (lesson 14: 128, then 512 and 1024). The metric
is dice, per image, averaged over the validation cars (Kaggle's). The validation split is
by car id (preprocessing/imagery.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from models.unet import RESNET34_FILE, RESNET34_URL, UNet, UNetConfig, load_resnet34_encoder
from models.perceptual import find_weights, hub_checkpoint
from preprocessing import imagery, samples_imagery
from preprocessing.images import read_split

from ..core.vision import random_flip, say, side_by_side, to_float
from ..core.phases import discriminative, one_cycle, with_data, with_frozen
from ..core.contract import Pipeline, RunContext, TrainConfig


MEAN = (0.485, 0.456, 0.406)  # ImageNet's: the encoder's weights expect them
STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Config:
    width: int = 64                         # encoder stem channels, x2 per stage (ResNet34: 64)
    layers: tuple[int, ...] = (3, 4, 6, 3)  # BasicBlocks per encoder stage (ResNet34: 3, 4, 6, 3)
    pretrained: str = "auto"    # ResNet34 ImageNet weights: a file, "auto" (torch's hub cache if there) or "none"
    bs: int = 64                # global batch size, split evenly across workers
    freeze_epochs: int = 2      # 1cycle of the decoder alone (encoder frozen), at small_size
    epochs: int = 8             # 1cycle of the whole net after it
    small_epochs: int = 4       # of `epochs`, trained at small_size before switching to size
    lr: float = 4e-3            # peak Adam LR of the decoder (lesson 14: 4e-2 with its weights)
    lr_factor: float = 10.0     # discriminative LRs: lr / factor**k for the encoder's two groups
    div: float = 10.0           # 1cycle: start LR = lr / div
    pct: float = 0.1            # 1cycle: fraction of the epochs in the final annealing
    moms: tuple[float, ...] = (0.95, 0.85)  # 1cycle Adam beta1: max, min
    wd: float = 1e-5            # weight decay (Adam, L2)
    size: int = 256             # final image and mask size, px (the frame is squashed square)
    small_size: int = 128       # progressive resizing: the first size, px (0: none)
    valid_frac: float = 0.2     # fraction of the car ids held out for validation
    seed: int = 0               # init, the car split and the cache's row order
    max_failures: int = 1       # Ray Train restarts of the worker group after a failure
    bf16: bool = True           # autocast to bfloat16 on a GPU

    def __post_init__(self):
        if self.bs < 1 or self.epochs < 1 or self.freeze_epochs < 0 or self.lr <= 0:
            raise ValueError(f"need bs >= 1, epochs >= 1, freeze_epochs >= 0 and lr > 0 (bs={self.bs}, "
                             f"epochs={self.epochs}, freeze_epochs={self.freeze_epochs}, lr={self.lr})")
        if len(self.sizes) > 1 and not (0 <= self.small_epochs < self.epochs and self.freeze_epochs + self.small_epochs >= 1):
            raise ValueError(f"with two sizes, need 0 <= small_epochs < epochs and freeze_epochs + small_epochs >= 1 "
                             f"(got small_epochs={self.small_epochs}, epochs={self.epochs}, freeze_epochs={self.freeze_epochs})")
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
    "tiny": Config(width=8, layers=(1, 1, 1, 1), pretrained="none", bs=16, freeze_epochs=1, epochs=1,
                   small_epochs=0, lr=1e-2, size=64, small_size=32),
    # minutes on 2 CPU cores: dice >= 0.9 on the sample's validation cars (random encoder; 0.959 measured)
    "sample": Config(width=16, layers=(1, 1, 1, 1), pretrained="none", bs=32, freeze_epochs=1, epochs=6,
                     small_epochs=2, lr=1e-2, lr_factor=1.0, size=64, small_size=32),
    # lesson 14 on the real Carvana (GPUs)
    "default": Config(),
}


def dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image dice of the predicted mask (logit > 0) against the target (B, 1, H, W):
    2 |P n T| / (|P| + |T|), and 1 when both are empty."""
    pred = (logits > 0).flatten(1).float()
    t = (target > 0.5).flatten(1).float()
    inter, total = (pred * t).sum(1), pred.sum(1) + t.sum(1)
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))


def _resolve_encoder(cfg: Config) -> Path | None:
    """The ResNet34 weights file to use, or None for a random encoder."""
    if cfg.pretrained == "none":
        return None
    if cfg.pretrained == "auto":
        path = find_weights(None, RESNET34_FILE)
        return path if path is not None and cfg.unet().is_resnet34 else None
    return find_weights(cfg.pretrained, RESNET34_FILE)


class CarvanaUNet(Pipeline):
    dataset = "carvana"
    Config = Config
    configs = CONFIGS
    metric = "dice"
    mode = "max"

    # ---- data
    def sample_data(self, out: Path, size: int | None = None) -> dict:
        return samples_imagery.carvana(out, size=size or 1200)

    def preprocess(self, cfg: Config, data_dir: Path, cache, on_bad: str = "skip"):
        source = imagery.find_carvana(data_dir, cfg.valid_frac, cfg.seed, on_bad)
        manifest, hit = imagery.preprocess(source, cfg.sizes, cache, "carvana", on_bad=on_bad, seed=cfg.seed)
        cars = manifest.get("cars", {})
        say(f"carvana: {manifest['rows']['train']} training images of {len(cars.get('train', []))} cars, "
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
        path = _resolve_encoder(cfg)
        if path is not None:
            load_resnet34_encoder(self.build_model(cfg), path)  # a clear error if it does not fit
            say(f"carvana-unet: encoder from the ResNet34 weights {path}")
            return {"fastray.init": f"resnet34:{path}"}
        why = ("pretrained=none" if cfg.pretrained == "none" else
               f"the encoder is not ResNet34 (width={cfg.width}, layers={tuple(cfg.layers)})" if not cfg.unet().is_resnet34
               else f"no {RESNET34_FILE} in {hub_checkpoint(RESNET34_FILE).parent}/ ({RESNET34_URL}; "
                    "or --set pretrained=FILE)")
        say(f"carvana-unet: random encoder ({why})")
        return {"fastray.init": "random"}

    def init_model(self, model, cfg: Config, tracking_uri: str) -> None:
        path = _resolve_encoder(cfg)
        if path is not None:
            load_resnet34_encoder(model, path)

    def phases(self, cfg: Config) -> list:
        mults = discriminative(3, cfg.lr_factor)
        kw = dict(div=cfg.div, pct=cfg.pct, moms=tuple(cfg.moms), opt="adam",
                  opt_kwargs={"weight_decay": cfg.wd}, lr_mults=mults)
        frozen = with_frozen(one_cycle(cfg.freeze_epochs, cfg.lr, **kw), (0, 1)) if cfg.freeze_epochs else []
        phases = frozen + one_cycle(cfg.epochs, cfg.lr, **kw)
        if len(cfg.sizes) == 1:
            return with_data(phases, [(0, f"train{cfg.size}")])
        switch = cfg.freeze_epochs + cfg.small_epochs  # the frozen stage trains at the small size
        return with_data(phases, [(0, f"train{cfg.small_size}"), (switch, f"train{cfg.size}")])

    # ---- steps
    def to_device(self, cfg: Config, batch: dict[str, torch.Tensor], train: bool):
        key = next(k for k in batch if k.startswith("img"))
        x = to_float(batch[key])                                      # (B, 3, S, S)
        y = batch["mask" + key[3:]].unsqueeze(1).float()              # (B, 1, S, S) 0/1
        if train:
            x, y = random_flip(x, y)
        x = (x - x.new_tensor(MEAN).view(1, 3, 1, 1)) / x.new_tensor(STD).view(1, 3, 1, 1)
        if x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def train_step(self, model, batch, opt, cfg) -> dict[str, torch.Tensor]:
        x, y = batch
        loss = F.binary_cross_entropy_with_logits(model(x).float(), y)
        optimizer_step(opt, loss)
        return {"loss": loss.detach()}

    def evaluate(self, model, batches: Iterable, cfg) -> dict[str, float]:
        loss = d = None
        n = 0
        for x, y in batches:  # summed on the device, read once
            out = model(x).float()
            l, s = F.binary_cross_entropy_with_logits(out, y, reduction="sum") / y[0].numel(), dice(out, y).sum()
            loss, d = (l, s) if loss is None else (loss + l, d + s)
            n += len(y)
        if not n:
            return {"loss": 0.0, "dice": 0.0, "n": 0}
        return {"loss": loss.item() / n, "dice": d.item() / n, "n": n}

    def artifacts(self, model, batch, cfg, out_dir: Path) -> list[Path]:
        x, y = batch
        with torch.no_grad():
            out = model(x[:8]).float()
        img = (x[:8].float() * x.new_tensor(STD).view(1, 3, 1, 1) + x.new_tensor(MEAN).view(1, 3, 1, 1)).float()
        pred = (out > 0).float()
        overlay = img * (1 - 0.5 * pred) + 0.5 * pred * img.new_tensor((1.0, 0.2, 0.2)).view(1, 3, 1, 1)
        d = dice(out, y[:8]).mean().item()
        return [side_by_side([("input", img), ("predicted mask", pred), ("true mask", y[:8].float()),
                              ("prediction on input", overlay)], out_dir / "masks.png", n=6,
                             title=f"validation cars, dice of these {len(pred)}: {d:.3f}")]

    def search_space(self, cfg: Config) -> dict[str, Any]:
        from ray import tune

        return {"lr": tune.loguniform(cfg.lr / 4, cfg.lr * 3), "lr_factor": tune.choice([1.0, 3.0, 10.0]),
                "pct": tune.uniform(0.05, 0.3)}
