"""Lesson 14: super-resolution with an SRResNet, MSE first and then a perceptual loss,
progressively x2 then x4.

Data: any folder tree of JPEG/PNG images; each image's centred square resized (in Ray
Data, cached) to the low-resolution input size and to x2 and x4 of it: input and targets
come from the same image. Training walks `stages` ("x2:mse", "x2:feature", "x4:feature"):
each is a 1cycle of Adam on the data of its scale with its loss; one network serves both
scales (models/srresnet.py), so the x4 stage starts from what x2 learnt, as lesson 14's
progressive resizing did. The metric is the PSNR of the x4 output on the validation
images, logged beside the PSNR of the bicubic upscale of the same input (bicubic_psnr_*).

`epochs` is the whole run: every stage but the last trains its `stage_epochs`, the last
trains the rest. A run too short for that gives up the earliest stages' epochs first, so
the last stage always trains (`--epochs 1`: one epoch of the last stage alone).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from models.perceptual import FeatureLoss
from models.srresnet import SRResNet, SRResNetConfig
from preprocessing import imagery, pretrained
from preprocessing.chunked import read_split

from ..core.contract import Pipeline, RunContext, TrainConfig
from ..core.metrics import Sums
from ..core.phases import one_cycle
from ..core.vision import loss_network, psnr, random_flip, side_by_side, to_float, vgg_source


LOSSES = ("mse", "feature")


def parse_stage(stage: str) -> tuple[int, str]:
    """"x4:feature" -> (4, "feature")."""
    scale, _, loss = stage.partition(":")
    if not scale.startswith("x") or not scale[1:].isdigit() or int(scale[1:]) not in (2, 4) or loss not in LOSSES:
        raise ValueError(f"stage {stage!r}: expected x2|x4 : {'|'.join(LOSSES)} (e.g. 'x2:mse')")
    return int(scale[1:]), loss


@dataclass(frozen=True)
class Config(TrainConfig):
    nf: int = 64                # SRResNet channels (lesson 14: 64)
    n_res: int = 8              # residual blocks (lesson 14: 8)
    res_scale: float = 0.1      # residual branch scale
    bicubic_skip: bool = False  # the net adds its output to the bicubic upscale (learns the residual)
    lr_size: int = 72           # low-resolution input, px (lesson 14: 72); targets are x2 and x4 of it
    stages: tuple[str, ...] = ("x2:mse", "x2:feature", "x4:feature")  # scale:loss, in training order
    stage_epochs: tuple[int, ...] = (2, 2)  # 1cycle epochs of each stage but the last, which takes the rest
    epochs: int = 6             # epochs the whole run trains, every stage together
    bs: int = 32                # examples per optimizer step over all workers (each gets bs // workers)
    lr: float = 1e-3            # peak Adam LR of each stage's 1cycle
    div: float = 10.0           # 1cycle: start LR = lr / div
    pct: float = 0.1            # 1cycle: fraction of the epochs in the final annealing
    moms: tuple[float, ...] = (0.9, 0.8)  # 1cycle Adam beta1: max, min
    wd: float = 0.0             # weight decay (Adam, L2)
    vgg_layers: tuple[int, ...] = (8, 15, 22)  # VGG16 feature layers of the feature loss (relu2_2, 3_3, 4_3)
    layer_weights: tuple[float, ...] = (0.2, 0.7, 0.1)  # their weights (lesson 14)
    pixel_weight: float = 0.01  # weight of the pixel L1 term of the feature loss (lesson 14: 1/100)
    vgg_weights: str = "auto"   # VGG16 ImageNet weights: auto (torchvision's file), none (random features) or a file
    allow_random_vgg: bool = False  # auto without downloading: the hub cache's file, else random features (tests)
    valid_frac: float = 0.2     # held-out fraction of a folder without train/ and valid/

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "vgg_weights", pretrained.weights_spec(self.vgg_weights, "vgg_weights"))
        if not self.stages or len(self.stage_epochs) != len(self.stages) - 1 or min(self.stage_epochs, default=1) < 1:
            raise ValueError(f"need stages and one stage_epochs >= 1 for each stage but the last, which trains "
                             f"the rest of epochs (got stages={self.stages}, stage_epochs={self.stage_epochs})")
        for s in self.stages:
            parse_stage(s)
        if len(self.vgg_layers) != len(self.layer_weights):
            raise ValueError(f"{len(self.vgg_layers)} vgg_layers but {len(self.layer_weights)} layer_weights")
        if self.lr_size < 4 or self.lr <= 0:
            raise ValueError("need lr_size >= 4 and lr > 0")

    @property
    def scales(self) -> tuple[int, ...]:
        return tuple(sorted({parse_stage(s)[0] for s in self.stages}))

    @property
    def final_scale(self) -> int:
        return parse_stage(self.stages[-1])[0]

    @property
    def sizes(self) -> tuple[int, ...]:
        return (self.lr_size, *(self.lr_size * s for s in self.scales))

    def stage_plan(self) -> list[tuple[str, int]]:
        """(stage, epochs) of the run, `epochs` in all: each stage but the last its
        stage_epochs, the last the rest; a run too short for that takes the epochs of the
        earliest stages first (a stage left with none is dropped), the last keeps >= 1."""
        plan = []
        over = sum(self.stage_epochs) + 1 - self.epochs  # epochs the earlier stages give up
        for stage, n in zip(self.stages[:-1], self.stage_epochs):
            cut = min(n, max(0, over))
            over -= cut
            if n > cut:
                plan.append((stage, n - cut))
        return plan + [(self.stages[-1], self.epochs - sum(n for _, n in plan))]

    def stage_at(self, epoch: int) -> tuple[int, str]:
        """(scale, loss) of the stage epoch `epoch` (0-based) belongs to."""
        end = 0
        for stage, n in self.stage_plan():
            end += n
            if epoch < end:
                return parse_stage(stage)
        return parse_stage(self.stages[-1])

    def uses_features(self) -> bool:
        return any(parse_stage(s)[1] == "feature" for s in self.stages)


CONFIGS = {
    # seconds: every mechanism (MSE, feature loss on random VGG features, x2 then x4)
    "tiny": Config(nf=8, n_res=1, lr_size=8, stages=("x2:mse", "x4:feature"), stage_epochs=(1,), epochs=2, bs=16,
                   lr=3e-3, vgg_layers=(3, 8), layer_weights=(0.5, 0.5), allow_random_vgg=True),
    # minutes on 2 CPU cores: beats the bicubic upscale's PSNR at x4 on the sample's validation photos
    # (held-out photographs: 27.04 dB against bicubic's 26.08 dB; x2: 28.96 against 28.42)
    "sample": Config(nf=32, n_res=4, lr_size=16, bicubic_skip=True, stage_epochs=(2, 1), epochs=8, bs=16, lr=2e-3,
                     vgg_layers=(3, 8), layer_weights=(0.5, 0.5), pixel_weight=1.0, allow_random_vgg=True),
    # lesson 14 on an ImageNet-style folder (GPUs, VGG16 weights): 2 epochs of each stage
    "default": Config(),
}


def bicubic(x: torch.Tensor, scale: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


class SuperRes(Pipeline):
    Config = Config
    configs = CONFIGS
    # an x2 step does not use the x4 upsampling stage
    ddp_kwargs = {"find_unused_parameters": True}

    # ---- data
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
        """A 1cycle of Adam per stage of stage_plan() on the data of its scale."""
        out = []
        for stage, epochs in cfg.stage_plan():
            scale, _ = parse_stage(stage)
            out += one_cycle(epochs, cfg.lr, div=cfg.div, pct=cfg.pct, moms=tuple(cfg.moms), opt="adam",
                             opt_kwargs={"weight_decay": cfg.wd}, data=f"x{scale}")
        return out

    def feature_loss(self, ctx: RunContext) -> FeatureLoss:
        """This run's VGG feature loss on ctx.device, made on first use."""
        if getattr(self, "_feature_loss", None) is None:
            cfg = ctx.cfg
            net = loss_network(tuple(cfg.vgg_layers), cfg.vgg_weights, cfg.allow_random_vgg, str(ctx.device))
            self._feature_loss = FeatureLoss(net, tuple(cfg.layer_weights), cfg.pixel_weight)
        return self._feature_loss

    # ---- steps
    def to_device(self, batch: dict, ctx: RunContext, train: bool):
        imgs = {int(k[3:]): to_float(v) for k, v in batch.items() if k.startswith("img")}
        lo = imgs.pop(ctx.cfg.lr_size)
        if train:  # the stage's one target size
            (hr,) = imgs.values()
            lo, hr = random_flip(lo, hr)
            return {"lr": lo, "hr": hr}
        return {"lr": lo, "hr": {s // ctx.cfg.lr_size: v for s, v in imgs.items()}}

    def train_step(self, model, batch, ctx: RunContext) -> dict[str, torch.Tensor]:
        scale, kind = ctx.cfg.stage_at(ctx.epoch)  # the stage this epoch trains
        out = model(batch["lr"], scale=scale).float()
        loss = F.mse_loss(out, batch["hr"]) if kind == "mse" else self.feature_loss(ctx)(out, batch["hr"])
        return {"loss": loss, f"{kind}_loss_x{scale}": loss.detach()}

    def evaluate(self, model, batches: Iterable, ctx: RunContext) -> dict[str, float]:
        sums = Sums()
        for b in batches:
            lo, vals = b["lr"], {}
            for s, hr in b["hr"].items():
                out = model(lo, scale=s).float()
                vals |= {f"psnr_x{s}": psnr(out, hr).sum(), f"bicubic_psnr_x{s}": psnr(bicubic(lo, s), hr).sum(),
                         f"mse_x{s}": F.mse_loss(out.clamp(0, 1), hr, reduction="none").flatten(1).mean(1).sum()}
            sums.add(len(lo), **vals)
        res = sums.means()
        f = ctx.cfg.final_scale
        if not res["n"]:
            return {"psnr": 0.0, "psnr_gain": 0.0, "n": 0}
        return {"psnr": res[f"psnr_x{f}"], "psnr_gain": res[f"psnr_x{f}"] - res[f"bicubic_psnr_x{f}"], **res}

    def search_space(self, cfg: Config) -> dict[str, Any]:
        """The LR, and how much the pixel term weighs against the VGG features."""
        from ray import tune

        return {"lr": tune.loguniform(cfg.lr / 3, cfg.lr * 3),
                "pixel_weight": tune.loguniform(max(cfg.pixel_weight, 1e-3) / 10, max(cfg.pixel_weight, 1e-3) * 10)}

    def predictions(self, model, batch, ctx: RunContext) -> list[Path]:
        """Per scale, six validation photos: the input, bicubic, SRResNet and the target."""
        lo, files = batch["lr"][:6], []
        for s, hr in batch["hr"].items():
            with torch.no_grad():
                out = model(lo, scale=s).float().clamp(0, 1)
            bic = bicubic(lo, s)
            title = (f"x{s}: PSNR of these {len(lo)}: SRResNet {psnr(out, hr[:6]).mean():.2f} dB, "
                     f"bicubic {psnr(bic, hr[:6]).mean():.2f} dB")
            files.append(side_by_side([(f"input {lo.shape[-1]} px", lo), ("bicubic", bic), ("SRResNet", out),
                                       (f"target {hr.shape[-1]} px", hr)], ctx.out_dir / f"super_res_x{s}.png",
                                      title=title))
        return files


def _style_files(data_dir: Path) -> tuple[Path, ...]:
    """A sample folder's style.png is a painting for the style pipelines, not a photograph."""
    return tuple(p for p in Path(data_dir).glob("style.*") if p.is_file())
