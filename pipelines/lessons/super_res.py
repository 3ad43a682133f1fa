"""Lesson 14: super-resolution with an SRResNet, MSE first and then a perceptual loss,
progressively x2 then x4.

Data: any folder tree of JPEG/PNG images; each image's centred square resized (in Ray
Data, cached) to the low-resolution input size and to x2 and x4 of it: input and targets
come from the same image. Training walks `stages` ("x2:mse", "x2:feature", "x4:feature"):
each is a 1cycle of Adam on the data of its scale with its loss; one network serves both
scales (models/srresnet.py), so the x4 stage starts from what x2 learnt, as lesson 14's
progressive resizing did. The metric is the PSNR of the x4 output on the validation
images, logged beside the PSNR of the bicubic upscale of the same input (bicubic_psnr_*).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from models.perceptual import FeatureLoss
from models.srresnet import SRResNet, SRResNetConfig
from preprocessing import imagery, samples_imagery
from preprocessing.images import read_split

from ..core.vision import loss_network, psnr, random_flip, side_by_side, to_float, vgg_source
from ..core.phases import one_cycle
from ..core.contract import Pipeline, RunContext, TrainConfig


LOSSES = ("mse", "feature")


def parse_stage(stage: str) -> tuple[int, str]:
    """"x4:feature" -> (4, "feature")."""
    scale, _, loss = stage.partition(":")
    if not scale.startswith("x") or not scale[1:].isdigit() or int(scale[1:]) not in (2, 4) or loss not in LOSSES:
        raise ValueError(f"stage {stage!r}: expected x2|x4 : {'|'.join(LOSSES)} (e.g. 'x2:mse')")
    return int(scale[1:]), loss


@dataclass(frozen=True)
class Config:
    nf: int = 64                # SRResNet channels (lesson 14: 64)
    n_res: int = 8              # residual blocks (lesson 14: 8)
    res_scale: float = 0.1      # residual branch scale
    bicubic_skip: bool = False  # the net adds its output to the bicubic upscale (learns the residual)
    lr_size: int = 72           # low-resolution input, px (lesson 14: 72); targets are x2 and x4 of it
    stages: tuple[str, ...] = ("x2:mse", "x2:feature", "x4:feature")  # scale:loss, in training order
    stage_epochs: tuple[int, ...] = (2, 2, 2)  # epochs of each stage's 1cycle
    bs: int = 32                # global batch size, split evenly across workers
    lr: float = 1e-3            # peak Adam LR of each stage's 1cycle
    div: float = 10.0           # 1cycle: start LR = lr / div
    pct: float = 0.1            # 1cycle: fraction of the epochs in the final annealing
    moms: tuple[float, ...] = (0.9, 0.8)  # 1cycle Adam beta1: max, min
    wd: float = 0.0             # weight decay (Adam, L2)
    vgg_layers: tuple[int, ...] = (8, 15, 22)  # VGG16 feature layers of the feature loss (relu2_2, 3_3, 4_3)
    layer_weights: tuple[float, ...] = (0.2, 0.7, 0.1)  # their weights (lesson 14)
    pixel_weight: float = 0.01  # weight of the pixel L1 term of the feature loss (lesson 14: 1/100)
    vgg_weights: str = ""       # VGG16 ImageNet weights file ("": torch's hub cache)
    allow_random_vgg: bool = False  # without VGG16 weights, train against random features (tests)
    valid_frac: float = 0.2     # held-out fraction of a folder without train/ and valid/
    seed: int = 0               # init and the cache's row order
    max_failures: int = 1       # Ray Train restarts of the worker group after a failure
    bf16: bool = True           # autocast to bfloat16 on a GPU

    def __post_init__(self):
        if len(self.stages) != len(self.stage_epochs) or not self.stages or min(self.stage_epochs) < 1:
            raise ValueError(f"stages and stage_epochs need the same non-zero length and epochs >= 1 "
                             f"(got {self.stages}, {self.stage_epochs})")
        for s in self.stages:
            parse_stage(s)
        if len(self.vgg_layers) != len(self.layer_weights):
            raise ValueError(f"{len(self.vgg_layers)} vgg_layers but {len(self.layer_weights)} layer_weights")
        if self.lr_size < 4 or self.bs < 1 or self.lr <= 0:
            raise ValueError("need lr_size >= 4, bs >= 1 and lr > 0")

    @property
    def scales(self) -> tuple[int, ...]:
        return tuple(sorted({parse_stage(s)[0] for s in self.stages}))

    @property
    def final_scale(self) -> int:
        return parse_stage(self.stages[-1])[0]

    @property
    def sizes(self) -> tuple[int, ...]:
        return (self.lr_size, *(self.lr_size * s for s in self.scales))

    def stage_at(self, epoch: int) -> tuple[int, str]:
        """(scale, loss) of the stage epoch `epoch` (0-based) belongs to."""
        end = 0
        for stage, n in zip(self.stages, self.stage_epochs):
            end += n
            if epoch < end:
                return parse_stage(stage)
        return parse_stage(self.stages[-1])

    def uses_features(self) -> bool:
        return any(parse_stage(s)[1] == "feature" for s in self.stages)


CONFIGS = {
    # seconds: every mechanism (MSE, feature loss on random VGG features, x2 then x4)
    "tiny": Config(nf=8, n_res=1, lr_size=8, stages=("x2:mse", "x4:feature"), stage_epochs=(1, 1), bs=16,
                   lr=3e-3, vgg_layers=(3, 8), layer_weights=(0.5, 0.5), allow_random_vgg=True),
    # minutes on 2 CPU cores: beats the bicubic upscale's PSNR at x4 on the sample's validation photos
    # (held-out photographs: 27.04 dB against bicubic's 26.08 dB; x2: 28.96 against 28.42)
    "sample": Config(nf=32, n_res=4, lr_size=16, bicubic_skip=True, stage_epochs=(2, 1, 5), bs=16, lr=2e-3,
                     vgg_layers=(3, 8), layer_weights=(0.5, 0.5), pixel_weight=1.0, allow_random_vgg=True),
    # lesson 14 on an ImageNet-style folder (GPUs, VGG16 weights)
    "default": Config(),
}


@lru_cache(maxsize=4)
def _feature_loss(cfg: Config, device: str) -> FeatureLoss:
    net = loss_network(tuple(cfg.vgg_layers), cfg.vgg_weights, cfg.allow_random_vgg, device)
    return FeatureLoss(net, tuple(cfg.layer_weights), cfg.pixel_weight)


def bicubic(x: torch.Tensor, scale: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


class SuperRes(Pipeline):
    dataset = "images"
    Config = Config
    configs = CONFIGS
    metric = "psnr"
    mode = "max"
    # an x2 step does not use the x4 upsampling stage
    ddp_kwargs = {"find_unused_parameters": True}

    # ---- data
    def sample_data(self, out: Path, size: int | None = None) -> dict:
        return samples_imagery.natural_images(out, size=size or 800)

    def preprocess(self, cfg: Config, data_dir: Path, cache, on_bad: str = "skip"):
        if cfg.uses_features():  # no VGG16 weights: say so before any work
            vgg_source(cfg.vgg_weights, cfg.allow_random_vgg, self.name, quiet=True)
        source = imagery.find_image_folder(data_dir, cfg.valid_frac, cfg.seed, exclude=_style_files(data_dir))
        return imagery.preprocess(source, cfg.sizes, cache, "images", on_bad=on_bad, seed=cfg.seed)

    def datasets(self, cfg: Config, cache, manifest: dict) -> dict[str, Any]:
        lo = f"img{cfg.lr_size}"
        out = {f"x{s}": read_split(cache, manifest, "train", [lo, f"img{cfg.lr_size * s}"]) for s in cfg.scales}
        out["valid"] = read_split(cache, manifest, "valid", [f"img{s}" for s in cfg.sizes])
        return out

    def init_source(self, cfg: Config, manifest: dict, tracking_uri: str) -> dict[str, str]:
        return vgg_source(cfg.vgg_weights, cfg.allow_random_vgg, self.name) if cfg.uses_features() else {}

    # ---- model
    def build_model(self, cfg: Config) -> nn.Module:
        return SRResNet(SRResNetConfig(nf=cfg.nf, n_res=cfg.n_res, res_scale=cfg.res_scale,
                                       max_scale=max(cfg.scales), bicubic_skip=cfg.bicubic_skip))

    def phases(self, cfg: Config) -> list:
        out = []
        for stage, epochs in zip(cfg.stages, cfg.stage_epochs):
            scale, _ = parse_stage(stage)
            out += one_cycle(epochs, cfg.lr, div=cfg.div, pct=cfg.pct, moms=tuple(cfg.moms), opt="adam",
                             opt_kwargs={"weight_decay": cfg.wd}, data=f"x{scale}")
        return out

    def batches(self, cfg: Config, shard, bs, device, train, steps=None, epoch=0):
        loss = cfg.stage_at(epoch)[1] if train else None
        for b in super().batches(cfg, shard, bs, device, train, steps, epoch):
            if train:
                b["loss_kind"] = loss  # which loss this epoch's stage trains with (not a tensor)
            yield b

    # ---- steps
    def to_device(self, cfg: Config, batch: dict, train: bool):
        imgs = {int(k[3:]): to_float(v) for k, v in batch.items() if k.startswith("img")}
        lo = imgs.pop(cfg.lr_size)
        if train:
            (hr,) = imgs.values()
            lo, hr = random_flip(lo, hr)
            return {"lr": lo, "hr": hr, "scale": hr.shape[-1] // lo.shape[-1], "loss": batch["loss_kind"]}
        return {"lr": lo, "hr": {s // cfg.lr_size: v for s, v in imgs.items()}}

    def train_step(self, model, batch, opt, cfg: Config) -> dict[str, torch.Tensor]:
        out = model(batch["lr"], scale=batch["scale"]).float()
        if batch["loss"] == "mse":
            loss = F.mse_loss(out, batch["hr"])
        else:
            loss = _feature_loss(cfg, str(out.device))(out, batch["hr"])
        optimizer_step(opt, loss)
        return {f"{batch['loss']}_loss_x{batch['scale']}": loss.detach()}

    def evaluate(self, model, batches: Iterable, cfg: Config) -> dict[str, float]:
        sums: dict[str, torch.Tensor] = {}
        n = 0
        for b in batches:  # summed on the device, read once
            for s, hr in b["hr"].items():
                out = model(b["lr"], scale=s).float()
                vals = {f"psnr_x{s}": psnr(out, hr).sum(), f"bicubic_psnr_x{s}": psnr(bicubic(b["lr"], s), hr).sum(),
                        f"mse_x{s}": F.mse_loss(out.clamp(0, 1), hr, reduction="none").flatten(1).mean(1).sum()}
                for k, v in vals.items():
                    sums[k] = v if k not in sums else sums[k] + v
            n += len(b["lr"])
        if not n:
            return {"psnr": 0.0, "n": 0}
        res = {k: v.item() / n for k, v in sums.items()}
        f = cfg.final_scale
        return {"psnr": res[f"psnr_x{f}"], "psnr_gain": res[f"psnr_x{f}"] - res[f"bicubic_psnr_x{f}"], **res, "n": n}

    def search_space(self, cfg: Config) -> dict[str, Any]:
        """The LR, and how much the pixel term weighs against the VGG features."""
        from ray import tune

        return {"lr": tune.loguniform(cfg.lr / 3, cfg.lr * 3),
                "pixel_weight": tune.loguniform(max(cfg.pixel_weight, 1e-3) / 10, max(cfg.pixel_weight, 1e-3) * 10)}

    def artifacts(self, model, batch, cfg: Config, out_dir: Path) -> list[Path]:
        lo, files = batch["lr"][:6], []
        for s, hr in batch["hr"].items():
            with torch.no_grad():
                out = model(lo, scale=s).float().clamp(0, 1)
            bic = bicubic(lo, s)
            title = (f"x{s}: PSNR of these {len(lo)}: SRResNet {psnr(out, hr[:6]).mean():.2f} dB, "
                     f"bicubic {psnr(bic, hr[:6]).mean():.2f} dB")
            files.append(side_by_side([(f"input {lo.shape[-1]} px", lo), ("bicubic", bic), ("SRResNet", out),
                                       (f"target {hr.shape[-1]} px", hr)], out_dir / f"super_res_x{s}.png",
                                      title=title))
        return files


def _style_files(data_dir: Path) -> tuple[Path, ...]:
    """A sample folder's style.png is a painting for the style pipelines, not a photograph."""
    return tuple(p for p in Path(data_dir).glob("style.*") if p.is_file())
