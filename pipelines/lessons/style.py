"""Style transfer, lessons 13 and 14.

- `style-transfer` (lesson 13, Gatys et al. 2015): no network is trained; the pixels of
  one content image are optimised with LBFGS until their VGG16 activations match the
  content image's (content loss) and their Gram matrices match the style image's (style
  loss). Each content image is one Ray task, so many run in parallel. It does not go
  through the engine's training loop: `StyleTransfer.run` is its whole run (MLflow
  included), which engine.fit hands over (`fastray run style-transfer`). An epoch is
  one round of `iters_per_epoch` LBFGS iterations (lesson 13 called LBFGS's step in
  rounds too): `--epochs N` optimises N x iters_per_epoch iterations per image, and the
  losses are logged after each round.
- `style-net` (lesson 14, Johnson et al. 2016): a feed-forward network (models/style_net.py)
  trained through the engine on a folder of content images with one style image, with the
  same two losses; its output for held-out images is logged.

The style image is a file (`--set style=PATH`, made absolute when the config is made, so
Ray workers in other folders find it) or, with style="", the built-in generated
brush-stroke picture (the one the sample data's style.png holds).
"""
from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from models.perceptual import content_loss, gram_matrix, style_loss
from models.style_net import StyleNet, StyleNetConfig
from preprocessing import imagery, pretrained
from preprocessing.chunked import read_split
from preprocessing.samples import images as image_samples

from ..core.contract import Pipeline, RunContext, TrainConfig
from ..core.metrics import Sums
from ..core.phases import one_cycle
from ..core.vision import loss_network, random_flip, side_by_side, to_float, vgg_source

logger = logging.getLogger("fastray")


def style_image(style: str, size: int) -> np.ndarray:
    """(size, size, 3) uint8: the file `style`, or the built-in picture when style is ""."""
    if not style:
        return image_samples.style_picture(size)
    return imagery.load_style(style, size)


def _absolute(cfg: Any) -> None:
    """The style image and VGG16 weights as absolute paths (Ray workers run in other folders)."""
    if cfg.style:  # a frozen dataclass: set through object.__setattr__
        object.__setattr__(cfg, "style", str(Path(cfg.style).expanduser().absolute()))
    object.__setattr__(cfg, "vgg_weights", pretrained.weights_spec(cfg.vgg_weights, "vgg_weights"))


def _check_style(cfg: Any, name: str, quiet: bool = False) -> dict[str, str]:
    """On the driver: the style image decodes (a clear error if not) and the VGG16 weights
    are there (or random features were asked for); said on stderr unless quiet."""
    style_image(cfg.style, cfg.style_size)
    tags = vgg_source(cfg.vgg_weights, cfg.allow_random_vgg, name, quiet)
    if not quiet:
        logger.info(f"{name}: style image {cfg.style or 'built-in brush strokes (--set style=PATH for your own)'}")
    return {"fastray.style": cfg.style or "built-in", **tags}


class _Losses:
    """Content and style losses through one VGG16 pass at the union of their layers."""

    def __init__(self, cfg: Any, device: str):
        self.layers = tuple(sorted(set(cfg.content_layers) | set(cfg.style_layers)))
        self.net = loss_network(self.layers, cfg.vgg_weights, cfg.allow_random_vgg, device)
        self.ci = [self.layers.index(l) for l in cfg.content_layers]
        self.si = [self.layers.index(l) for l in cfg.style_layers]
        style = torch.from_numpy(style_image(cfg.style, cfg.style_size).copy()).to(device)
        with torch.no_grad():
            feats = self.net(to_float(style[None]))
        self.grams = [gram_matrix(feats[i]) for i in self.si]  # (1, C, C) each
        self.cw, self.sw = cfg.content_weight, cfg.style_weight

    def __call__(self, out: torch.Tensor, content_feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(weighted content loss, weighted style loss) of images `out` (B, 3, H, W)."""
        feats = self.net(out)
        c = self.cw * content_loss([feats[i] for i in self.ci], content_feats)
        s = self.sw * style_loss([feats[i] for i in self.si], self.grams)
        return c, s

    def content_targets(self, x: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            feats = self.net(x)
        return [feats[i] for i in self.ci]


# ================================================================ style-net (Johnson)


@dataclass(frozen=True)
class NetConfig(TrainConfig):
    nf: int = 32                # StyleNet channels of the first conv (Johnson: 32)
    n_res: int = 5              # residual blocks (Johnson: 5)
    size: int = 256             # content images, px (centred square; Johnson: 256)
    style: str = ""             # style image file ("": the built-in brush-stroke picture)
    style_size: int = 256       # the style image is resized to this, px
    content_layers: tuple[int, ...] = (8,)            # VGG16 layers of the content loss (relu2_2, Johnson)
    style_layers: tuple[int, ...] = (3, 8, 15, 22)    # ... of the style loss (relu1_2 .. relu4_3)
    content_weight: float = 1.0  # of the content loss (MSE of activations)
    style_weight: float = 3e4   # of the style loss (MSE of Gram matrices, which are small)
    bs: int = 4                 # examples per optimizer step over all workers (Johnson: 4)
    epochs: int = 2             # epochs the whole run trains: one 1cycle (Johnson: 2 epochs of COCO)
    bf16: bool = False          # autocast to bfloat16 on a GPU (off: Gram matrices want fp32)
    lr: float = 1e-3            # peak Adam LR
    div: float = 10.0           # 1cycle: start LR = lr / div
    pct: float = 0.1            # 1cycle: fraction of the epochs in the final annealing
    moms: tuple[float, ...] = (0.9, 0.8)  # 1cycle Adam beta1: max, min
    vgg_weights: str = "auto"   # VGG16 ImageNet weights: auto (torchvision's file), none (random features) or a file
    allow_random_vgg: bool = False  # auto without downloading: the hub cache's file, else random features (tests)
    valid_frac: float = 0.2     # held-out fraction of a folder without train/ and valid/

    def __post_init__(self):
        super().__post_init__()
        if self.size % 4 or self.size < 8 or self.style_size < 8:
            raise ValueError(f"size must be a multiple of 4 and >= 8, style_size >= 8 (got {self.size}, {self.style_size})")
        if not self.content_layers or not self.style_layers:
            raise ValueError("need at least one content layer and one style layer")
        _absolute(self)


NET_CONFIGS = {
    # seconds: every mechanism on random VGG features
    "tiny": NetConfig(nf=8, n_res=1, size=16, style_size=32, content_layers=(8,), style_layers=(3, 8), bs=8,
                      epochs=1, lr=3e-3, allow_random_vgg=True),
    # minutes on 2 CPU cores: stylises the sample's held-out photographs (random VGG features
    # unless VGG16 weights are in torch's cache)
    "sample": NetConfig(nf=16, n_res=3, size=48, style_size=64, content_layers=(8,), style_layers=(3, 8, 15),
                        bs=8, epochs=3, lr=3e-3, allow_random_vgg=True),
    # lesson 14 / Johnson on COCO-sized folders (GPUs, VGG16 weights)
    "default": NetConfig(),
}


class StyleNetPipeline(Pipeline):
    Config = NetConfig
    configs = NET_CONFIGS


    def preprocess(self, cfg: NetConfig, data_dir: Path, cache, on_bad: str = "skip"):
        _check_style(cfg, self.name, quiet=True)  # a bad style image or no VGG weights: before any work
        source = imagery.find_image_folder(data_dir, cfg.valid_frac, cfg.seed, exclude=_style_files(data_dir, cfg))
        return imagery.preprocess(source, (cfg.size,), cache, "images", on_bad=on_bad, seed=cfg.seed)

    def datasets(self, cfg: NetConfig, cache, manifest: dict) -> dict[str, Any]:
        col = [f"img{cfg.size}"]
        return {"train": read_split(cache, manifest, "train", col), "valid": read_split(cache, manifest, "valid", col)}

    def init_source(self, cfg: NetConfig, manifest: dict, tracking_uri: str) -> dict[str, str]:
        return _check_style(cfg, self.name)

    def build_model(self, cfg: NetConfig) -> nn.Module:
        return StyleNet(StyleNetConfig(nf=cfg.nf, n_res=cfg.n_res))

    def phases(self, cfg: NetConfig) -> list:
        return one_cycle(cfg.epochs, cfg.lr, div=cfg.div, pct=cfg.pct, moms=tuple(cfg.moms), opt="adam", data="train")

    def losses(self, ctx: RunContext) -> _Losses:
        """This run's content and style losses on ctx.device, made on first use."""
        if getattr(self, "_losses", None) is None:
            self._losses = _Losses(ctx.cfg, str(ctx.device))
        return self._losses

    def to_device(self, batch: dict, ctx: RunContext, train: bool):
        x = to_float(batch[f"img{ctx.cfg.size}"])
        return random_flip(x)[0] if train else x

    def train_step(self, model, x, ctx: RunContext) -> dict[str, torch.Tensor]:
        losses = self.losses(ctx)
        c, s = losses(model(x).float(), losses.content_targets(x))
        return {"loss": c + s, "content_loss": c.detach(), "style_loss": s.detach()}

    def evaluate(self, model, batches: Iterable, ctx: RunContext) -> dict[str, float]:
        losses, sums = self.losses(ctx), Sums()
        for x in batches:
            c, s = losses(model(x).float(), losses.content_targets(x))  # means over the batch
            sums.add(len(x), content_loss=c * len(x), style_loss=s * len(x))
        res = sums.means(content_loss=0.0, style_loss=0.0)
        return {"loss": res["content_loss"] + res["style_loss"], **res}

    def search_space(self, cfg: NetConfig) -> dict[str, Any]:
        """How much style against content, and the LR."""
        from ray import tune

        return {"style_weight": tune.loguniform(cfg.style_weight / 10, cfg.style_weight * 10),
                "lr": tune.loguniform(cfg.lr / 3, cfg.lr * 3)}

    def predictions(self, model, x, ctx: RunContext) -> list[Path]:
        """Six held-out photographs, the network's output for them, and the style image."""
        cfg = ctx.cfg
        with torch.no_grad():
            out = model(x[:6]).float()
        style = to_float(torch.from_numpy(style_image(cfg.style, cfg.style_size).copy())[None]).expand(len(out), -1, -1, -1)
        return [side_by_side([("held-out content", x[:6]), ("style-net output", out), ("style", style)],
                             ctx.out_dir / "style_net.png", title="style-net on validation images")]


def _style_files(data_dir: Path, cfg: Any) -> tuple[Path, ...]:
    """The style image(s) in the data folder are not content images."""
    found = [p for p in Path(data_dir).glob("style.*") if p.is_file()]
    return tuple(found + ([Path(cfg.style)] if cfg.style else []))


# ================================================================ style-transfer (Gatys)


@dataclass(frozen=True)
class TransferConfig(TrainConfig):
    """Of TrainConfig it reads `epochs` (rounds of LBFGS) and `seed` (the noise the pixels
    start from); bs, bf16, fp16, clip, accum and max_failures mean nothing to LBFGS on the
    pixels of one image in a Ray task."""

    size: int = 256             # content images, px (centred square)
    style: str = ""             # style image file ("": the built-in brush-stroke picture)
    style_size: int = 256       # the style image is resized to this, px
    n_images: int = 4           # content images stylised: the first of the validation split, one Ray task each
    epochs: int = 3             # rounds of iters_per_epoch LBFGS iterations per image, losses logged after each
    iters_per_epoch: int = 100  # LBFGS iterations of a round (lesson 13: rounds of 100)
    content_layers: tuple[int, ...] = (22,)           # VGG16 layers of the content loss (relu4_3)
    style_layers: tuple[int, ...] = (3, 8, 15, 22)    # ... of the style loss (relu1_2 .. relu4_3)
    content_weight: float = 1.0  # of the content loss (MSE of activations)
    style_weight: float = 3e4   # of the style loss (MSE of Gram matrices)
    init: str = "noise"         # start from "noise" (lesson 13: blurred uniform noise) or the "content" image
    vgg_weights: str = "auto"   # VGG16 ImageNet weights: auto (torchvision's file), none (random features) or a file
    allow_random_vgg: bool = False  # auto without downloading: the hub cache's file, else random features (tests)
    valid_frac: float = 0.2     # held-out fraction of a folder without train/ and valid/
    cpus_per_task: int = 1      # CPUs (torch threads) of each image's Ray task

    def __post_init__(self):
        super().__post_init__()
        if self.size < 8 or self.style_size < 8 or min(self.n_images, self.iters_per_epoch, self.cpus_per_task) < 1:
            raise ValueError("need size, style_size >= 8 and n_images, iters_per_epoch, cpus_per_task >= 1")
        if self.init not in ("noise", "content"):
            raise ValueError(f"init must be 'noise' or 'content', got {self.init!r}")
        _absolute(self)


TRANSFER_CONFIGS = {
    # seconds: two images in parallel on random VGG features
    "tiny": TransferConfig(size=24, style_size=32, n_images=2, epochs=2, iters_per_epoch=10, content_layers=(8,),
                           style_layers=(3, 8), style_weight=1e4, allow_random_vgg=True),
    # a minute or two on 2 CPU cores: the sample's held-out photographs (random VGG features
    # unless VGG16 weights are in torch's cache)
    "sample": TransferConfig(size=64, style_size=64, n_images=4, epochs=3, iters_per_epoch=50, content_layers=(8,),
                             style_layers=(3, 8, 15), style_weight=1e4, allow_random_vgg=True),
    # lesson 13 (VGG16 weights): 3 x 100 iterations
    "default": TransferConfig(),
}


def _blurred_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Lesson 13's start: uniform noise, blurred (a smooth start optimises better)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    k = (k[:, None] * k[None, :] / 256).expand(3, 1, 5, 5)
    return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect"), k, groups=3)


def gatys(content: np.ndarray, cfg: TransferConfig, seed: int = 0) -> dict:
    """Optimise the pixels of one image: (H, W, 3) uint8 content -> the stylised image and
    the weighted content and style losses of the image (clamped to [0, 1]) at the start and
    after each epoch. LBFGS keeps its state from round to round: `epochs` rounds of
    iters_per_epoch iterations take the steps one call of epochs x iters_per_epoch would."""
    torch.set_num_threads(cfg.cpus_per_task)
    losses = _Losses(cfg, "cpu")
    x = to_float(torch.from_numpy(content.copy())[None])
    targets = losses.content_targets(x)
    img = (x.clone() if cfg.init == "content" else _blurred_noise(tuple(x.shape), seed)).requires_grad_(True)
    opt = torch.optim.LBFGS([img], lr=1.0, max_iter=cfg.iters_per_epoch, history_size=50, tolerance_grad=0.0,
                            tolerance_change=0.0)
    evals = 0

    def closure() -> torch.Tensor:
        nonlocal evals
        evals += 1
        opt.zero_grad()
        c, s = losses(img, targets)
        (c + s).backward()
        return c + s

    def measure() -> tuple[float, float]:
        with torch.no_grad():
            c, s = losses(img.clamp(0, 1), targets)
        return c.item(), s.item()

    curve = [measure()]  # (content, style) at the start, then after each epoch
    for _ in range(cfg.epochs):
        opt.step(closure)
        curve.append(measure())
    out = (img.detach().clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return {"image": out, "content": [c for c, _ in curve], "style": [s for _, s in curve], "evals": evals}


def _gmean(xs: list[float]) -> float:
    return math.exp(sum(math.log(max(x, 1e-12)) for x in xs) / len(xs))


def transfer_metrics(results: list[dict], epoch: int) -> dict[str, float]:
    """After `epoch` epochs (0: the start): the mean losses over the images, and how many
    times lower than at the start they are (geometric mean and least over the images)."""
    out: dict[str, float] = {}
    for k in ("style", "content"):
        factors = [r[k][0] / max(r[k][epoch], 1e-12) for r in results]
        out |= {f"{k}_loss_factor": _gmean(factors), f"min_{k}_loss_factor": min(factors),
                f"{k}_loss": float(np.mean([r[k][epoch] for r in results]))}
    return out


class StyleTransfer(Pipeline):
    Config = TransferConfig
    configs = TRANSFER_CONFIGS


    def preprocess(self, cfg: TransferConfig, data_dir: Path, cache, on_bad: str = "skip"):
        _check_style(cfg, self.name, quiet=True)
        source = imagery.find_image_folder(data_dir, cfg.valid_frac, cfg.seed, exclude=_style_files(data_dir, cfg))
        return imagery.preprocess(source, (cfg.size,), cache, "images", on_bad=on_bad, seed=cfg.seed)

    def datasets(self, cfg, cache, manifest):
        raise ValueError("style-transfer optimises pixels in Ray tasks, not a model through the engine's loop: "
                         "engine.fit hands it the whole run (StyleTransfer.run)")

    def content_images(self, cfg: TransferConfig, cache, manifest: dict) -> np.ndarray:
        """The first n_images of the cached validation split, (N, size, size, 3) uint8."""
        import pyarrow.parquet as pq

        from preprocessing.chunked import column_array

        col = f"img{cfg.size}"
        table = pq.read_table(cache.path(manifest["name"], manifest["key"]) / "valid", columns=[col])
        return column_array(table, col)[: cfg.n_images].reshape(-1, cfg.size, cfg.size, 3).astype(np.uint8)

    def run(self, cfg: TransferConfig, *, data_dir: Path, cache, name: str, tracking_uri: str | None = None,
            on_bad: str = "skip", config_label: str = "", **fit_options: Any) -> dict:
        """The whole run: cached content images, one Ray task per image, MLflow; the summary.
        Takes engine.fit's keyword arguments; those about training workers and checkpoints
        (num_workers, use_gpu, storage ...) mean nothing to Ray tasks and are ignored (`fastray
        run` refuses --num-workers and --use-gpu for it, a flow passes them to every stage). The
        MLflow run is made as engine.fit makes its own (tracking.start_run: a rerun of a
        name reopens its run); the metrics are logged per epoch, 0 being the start."""
        import ray

        from preprocessing.runtime import init_ray

        from ..core import tracking
        from ..core.config import to_dict

        t0 = time.perf_counter()
        tags = _check_style(cfg, self.name)
        manifest, hit = self.prepare(cfg, Path(data_dir), cache, on_bad)
        contents = self.content_images(cfg, cache, manifest)
        init_ray()
        uri = tracking.resolve_uri(tracking_uri)
        run_id, resumed = tracking.start_run(
            uri, self.name, name, params={"config": to_dict(cfg)},
            tags={"fastray.pipeline": self.name, "fastray.config": config_label, "fastray.cache_key": manifest["key"],
                  "fastray.git_commit": tracking.git_commit(), "fastray.device": "cpu",
                  "fastray.tasks": len(contents), **tags})
        run_log = tracking.RunLogger(uri, run_id)
        if not resumed:
            run_log.json(to_dict(cfg), "config.json")
        logger.info(f"[{name}] MLflow run {run_id} ({'resumed' if resumed else 'new'}) in {uri}; {len(contents)} "
                    f"image(s), one Ray task each: {cfg.epochs} epoch(s) of {cfg.iters_per_epoch} LBFGS iterations")
        task = ray.remote(num_cpus=cfg.cpus_per_task)(gatys)
        try:
            results = ray.get([task.remote(c, cfg, cfg.seed + i) for i, c in enumerate(contents)])
        except BaseException:
            run_log.finish("FAILED")
            raise
        for i, r in enumerate(results):
            logger.info(f"[{name}] image {i}: style loss {r['style'][0]:.4g} -> {r['style'][-1]:.4g}, "
                        f"content loss {r['content'][0]:.4g} -> {r['content'][-1]:.4g} ({r['evals']} evaluations)")
        for epoch in range(cfg.epochs + 1):
            run_log.metrics(transfer_metrics(results, epoch), step=epoch)
        metrics = {**transfer_metrics(results, cfg.epochs), "epoch": cfg.epochs}
        with tempfile.TemporaryDirectory() as d:
            outs = torch.from_numpy(np.stack([r["image"] for r in results]))
            style = to_float(torch.from_numpy(style_image(cfg.style, cfg.style_size).copy())[None])
            style = torch.nn.functional.interpolate(style, size=(cfg.size, cfg.size), mode="bilinear",
                                                    align_corners=False).expand(len(outs), -1, -1, -1)
            grid = side_by_side([("content", to_float(torch.from_numpy(contents))), ("LBFGS on the pixels", to_float(outs)),
                                 ("style", style)], Path(d) / "style_transfer.png", n=len(outs),
                                title=f"Gatys, {cfg.epochs * cfg.iters_per_epoch} LBFGS iterations: style loss / "
                                      f"{metrics['style_loss_factor']:.1f}, content loss / "
                                      f"{metrics['content_loss_factor']:.1f}")
            run_log.artifact(grid, "predictions")
            if tracking.plot_curves(run_log, Path(d) / "curves.png"):
                run_log.artifact(Path(d) / "curves.png", "plots")
        run_log.finish()
        logger.info(f"[{name}] style loss lowered {metrics['style_loss_factor']:.1f}x, content loss "
                    f"{metrics['content_loss_factor']:.1f}x (geometric means over the images)")
        return {"run_id": run_id, "experiment": self.name, "name": name, "metrics": metrics,
                "images": len(results), "cache": "hit" if hit else "miss", "resumed": resumed,
                "seconds": round(time.perf_counter() - t0, 2)}
