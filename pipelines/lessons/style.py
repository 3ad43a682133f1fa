"""Style transfer, lessons 13 and 14.

- `style-transfer` (lesson 13, Gatys et al. 2015): no network is trained; the pixels of
  one content image are optimised with LBFGS until their VGG16 activations match the
  content image's (content loss) and their Gram matrices match the style image's (style
  loss). Each content image is one Ray task, so many run in parallel. It does not go
  through the engine's training loop: `StyleTransfer.run` is its whole run (MLflow
  included), called by `fastray run style-transfer` through the Pipeline.run hook.
- `style-net` (lesson 14, Johnson et al. 2016): a feed-forward network (models/style_net.py)
  trained through the engine on a folder of content images with one style image, with the
  same two losses; its output for held-out images is logged.

The style image is a file (`--set style=PATH`, made absolute when the config is made, so
Ray workers in other folders find it) or, with style="", the built-in generated
brush-stroke picture (the one the sample data's style.png holds).
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from models.perceptual import content_loss, gram_matrix, style_loss
from models.style_net import StyleNet, StyleNetConfig
from preprocessing import imagery, samples_imagery
from preprocessing.images import read_split

from ..core.vision import loss_network, random_flip, say, side_by_side, to_float, vgg_source
from ..core.phases import one_cycle
from ..core.contract import Pipeline, RunContext, TrainConfig



def style_image(style: str, size: int) -> np.ndarray:
    """(size, size, 3) uint8: the file `style`, or the built-in picture when style is ""."""
    if not style:
        return samples_imagery.style_picture(size)
    return imagery.load_style(style, size)


def _absolute(cfg: Any) -> None:
    if cfg.style:  # a frozen dataclass: set through object.__setattr__
        object.__setattr__(cfg, "style", str(Path(cfg.style).expanduser().absolute()))


def _check_style(cfg: Any, name: str, quiet: bool = False) -> dict[str, str]:
    """On the driver: the style image decodes (a clear error if not) and the VGG16 weights
    are there (or random features were asked for); said on stderr unless quiet."""
    style_image(cfg.style, cfg.style_size)
    tags = vgg_source(cfg.vgg_weights, cfg.allow_random_vgg, name, quiet)
    if not quiet:
        say(f"{name}: style image {cfg.style or 'built-in brush strokes (--set style=PATH for your own)'}")
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
class NetConfig:
    nf: int = 32                # StyleNet channels of the first conv (Johnson: 32)
    n_res: int = 5              # residual blocks (Johnson: 5)
    size: int = 256             # content images, px (centred square; Johnson: 256)
    style: str = ""             # style image file ("": the built-in brush-stroke picture)
    style_size: int = 256       # the style image is resized to this, px
    content_layers: tuple[int, ...] = (8,)            # VGG16 layers of the content loss (relu2_2, Johnson)
    style_layers: tuple[int, ...] = (3, 8, 15, 22)    # ... of the style loss (relu1_2 .. relu4_3)
    content_weight: float = 1.0  # of the content loss (MSE of activations)
    style_weight: float = 3e4   # of the style loss (MSE of Gram matrices, which are small)
    bs: int = 4                 # global batch size, split evenly across workers (Johnson: 4)
    epochs: int = 2             # of one 1cycle (Johnson: 2 epochs of COCO)
    lr: float = 1e-3            # peak Adam LR
    div: float = 10.0           # 1cycle: start LR = lr / div
    pct: float = 0.1            # 1cycle: fraction of the epochs in the final annealing
    moms: tuple[float, ...] = (0.9, 0.8)  # 1cycle Adam beta1: max, min
    vgg_weights: str = ""       # VGG16 ImageNet weights file ("": torch's hub cache)
    allow_random_vgg: bool = False  # without VGG16 weights, train against random features (tests)
    valid_frac: float = 0.2     # held-out fraction of a folder without train/ and valid/
    seed: int = 0               # init and the cache's row order
    max_failures: int = 1       # Ray Train restarts of the worker group after a failure
    bf16: bool = False          # autocast to bfloat16 on a GPU (off: Gram matrices want fp32)

    def __post_init__(self):
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


@lru_cache(maxsize=4)
def _net_losses(cfg: NetConfig, device: str) -> _Losses:
    return _Losses(cfg, device)


class StyleNetPipeline(Pipeline):
    dataset = "images"
    Config = NetConfig
    configs = NET_CONFIGS
    metric = "loss"
    mode = "min"

    def sample_data(self, out: Path, size: int | None = None) -> dict:
        return samples_imagery.natural_images(out, size=size or 800)

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

    def to_device(self, cfg: NetConfig, batch: dict, train: bool):
        x = to_float(batch[f"img{cfg.size}"])
        return random_flip(x)[0] if train else x

    def train_step(self, model, x, opt, cfg: NetConfig) -> dict[str, torch.Tensor]:
        losses = _net_losses(cfg, str(x.device))
        c, s = losses(model(x).float(), losses.content_targets(x))
        optimizer_step(opt, c + s)
        return {"loss": (c + s).detach(), "content_loss": c.detach(), "style_loss": s.detach()}

    def evaluate(self, model, batches: Iterable, cfg: NetConfig) -> dict[str, float]:
        c_sum = s_sum = None
        n = 0
        for x in batches:
            losses = _net_losses(cfg, str(x.device))
            c, s = losses(model(x).float(), losses.content_targets(x))
            c_sum, s_sum = (c * len(x), s * len(x)) if c_sum is None else (c_sum + c * len(x), s_sum + s * len(x))
            n += len(x)
        if not n:
            return {"loss": 0.0, "n": 0}
        c, s = c_sum.item() / n, s_sum.item() / n
        return {"loss": c + s, "content_loss": c, "style_loss": s, "n": n}

    def search_space(self, cfg: NetConfig) -> dict[str, Any]:
        """How much style against content, and the LR."""
        from ray import tune

        return {"style_weight": tune.loguniform(cfg.style_weight / 10, cfg.style_weight * 10),
                "lr": tune.loguniform(cfg.lr / 3, cfg.lr * 3)}

    def artifacts(self, model, x, cfg: NetConfig, out_dir: Path) -> list[Path]:
        with torch.no_grad():
            out = model(x[:6]).float()
        style = to_float(torch.from_numpy(style_image(cfg.style, cfg.style_size).copy())[None]).expand(len(out), -1, -1, -1)
        return [side_by_side([("held-out content", x[:6]), ("style-net output", out), ("style", style)],
                             out_dir / "style_net.png", title="style-net on validation images")]


def _style_files(data_dir: Path, cfg: Any) -> tuple[Path, ...]:
    """The style image(s) in the data folder are not content images."""
    found = [p for p in Path(data_dir).glob("style.*") if p.is_file()]
    return tuple(found + ([Path(cfg.style)] if cfg.style else []))


# ================================================================ style-transfer (Gatys)


@dataclass(frozen=True)
class TransferConfig:
    size: int = 256             # content images, px (centred square)
    style: str = ""             # style image file ("": the built-in brush-stroke picture)
    style_size: int = 256       # the style image is resized to this, px
    n_images: int = 4           # content images stylised: the first of the validation split, one Ray task each
    iters: int = 300            # LBFGS iterations per image (lesson 13: 10 x 100)
    content_layers: tuple[int, ...] = (22,)           # VGG16 layers of the content loss (relu4_3)
    style_layers: tuple[int, ...] = (3, 8, 15, 22)    # ... of the style loss (relu1_2 .. relu4_3)
    content_weight: float = 1.0  # of the content loss (MSE of activations)
    style_weight: float = 3e4   # of the style loss (MSE of Gram matrices)
    init: str = "noise"         # start from "noise" (lesson 13: blurred uniform noise) or the "content" image
    vgg_weights: str = ""       # VGG16 ImageNet weights file ("": torch's hub cache)
    allow_random_vgg: bool = False  # without VGG16 weights, optimise against random features (tests)
    valid_frac: float = 0.2     # held-out fraction of a folder without train/ and valid/
    cpus_per_task: int = 1      # CPUs (torch threads) of each image's Ray task
    seed: int = 0               # the noise the pixels start from

    def __post_init__(self):
        if self.size < 8 or self.style_size < 8 or self.n_images < 1 or self.iters < 1 or self.cpus_per_task < 1:
            raise ValueError("need size, style_size >= 8 and n_images, iters, cpus_per_task >= 1")
        if self.init not in ("noise", "content"):
            raise ValueError(f"init must be 'noise' or 'content', got {self.init!r}")
        _absolute(self)


TRANSFER_CONFIGS = {
    # seconds: two images in parallel on random VGG features
    "tiny": TransferConfig(size=24, style_size=32, n_images=2, iters=20, content_layers=(8,), style_layers=(3, 8),
                           style_weight=1e4, allow_random_vgg=True),
    # a minute or two on 2 CPU cores: the sample's held-out photographs (random VGG features
    # unless VGG16 weights are in torch's cache)
    "sample": TransferConfig(size=64, style_size=64, n_images=4, iters=150, content_layers=(8,),
                             style_layers=(3, 8, 15), style_weight=1e4, allow_random_vgg=True),
    # lesson 13 (VGG16 weights)
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
    the weighted content and style losses at the start and at the end."""
    torch.set_num_threads(cfg.cpus_per_task)
    losses = _Losses(cfg, "cpu")
    x = to_float(torch.from_numpy(content.copy())[None])
    targets = losses.content_targets(x)
    img = (x.clone() if cfg.init == "content" else _blurred_noise(tuple(x.shape), seed)).requires_grad_(True)
    opt = torch.optim.LBFGS([img], lr=1.0, max_iter=cfg.iters, history_size=50, tolerance_grad=0.0,
                            tolerance_change=0.0)
    history: list[tuple[float, float]] = []

    def closure() -> torch.Tensor:
        opt.zero_grad()
        c, s = losses(img, targets)
        history.append((c.item(), s.item()))
        (c + s).backward()
        return c + s

    opt.step(closure)
    with torch.no_grad():
        c, s = losses(img.clamp(0, 1), targets)
    out = (img.detach().clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return {"image": out, "content_start": history[0][0], "style_start": history[0][1],
            "content_end": c.item(), "style_end": s.item(), "evals": len(history)}


def _gmean(xs: list[float]) -> float:
    return math.exp(sum(math.log(max(x, 1e-12)) for x in xs) / len(xs))


class StyleTransfer(Pipeline):
    dataset = "images"
    Config = TransferConfig
    configs = TRANSFER_CONFIGS
    metric = "style_loss_factor"
    mode = "max"

    def sample_data(self, out: Path, size: int | None = None) -> dict:
        return samples_imagery.natural_images(out, size=size or 800)

    def preprocess(self, cfg: TransferConfig, data_dir: Path, cache, on_bad: str = "skip"):
        _check_style(cfg, self.name, quiet=True)
        source = imagery.find_image_folder(data_dir, cfg.valid_frac, cfg.seed, exclude=_style_files(data_dir, cfg))
        return imagery.preprocess(source, (cfg.size,), cache, "images", on_bad=on_bad, seed=cfg.seed)

    def datasets(self, cfg, cache, manifest):
        raise ValueError("style-transfer optimises pixels in Ray tasks, not a model through the engine: "
                         "run it with StyleTransfer.run (fastray run style-transfer needs the Pipeline.run hook)")

    def content_images(self, cfg: TransferConfig, cache, manifest: dict) -> np.ndarray:
        """The first n_images of the cached validation split, (N, size, size, 3) uint8."""
        import pyarrow.parquet as pq

        folder = cache.path(manifest["name"], manifest["key"]) / "valid"
        table = pq.read_table(folder, columns=[f"img{cfg.size}"])
        rows = table.column(0).to_pylist()[: cfg.n_images]
        return np.stack([np.asarray(r, np.uint8) for r in rows])

    def run(self, cfg: TransferConfig, *, data_dir: Path, cache, name: str, tracking_uri: str | None = None,
            on_bad: str = "skip", config_label: str = "", **engine_options: Any) -> dict:
        """The whole run: cached content images, one Ray task per image, MLflow; the summary.
        Takes engine.fit's keyword arguments; those about training workers and checkpoints
        (num_workers, use_gpu, storage ...) mean nothing to Ray tasks and are ignored."""
        import ray

        from preprocessing.runtime import init_ray

        from . import tracking
        from .config import to_dict

        t0 = time.perf_counter()
        tags = _check_style(cfg, self.name)
        manifest, hit = self.preprocess(cfg, Path(data_dir), cache, on_bad)
        contents = self.content_images(cfg, cache, manifest)
        init_ray()
        uri = tracking.resolve_uri(tracking_uri)
        run_id, resumed = tracking.start_run(
            uri, self.name, name, params={"config": to_dict(cfg)},
            tags={"fastray.pipeline": self.name, "fastray.config": config_label, "fastray.cache_key": manifest["key"],
                  "fastray.git_commit": tracking.git_commit(), **tags})
        logger = tracking.RunLogger(uri, run_id)
        say(f"[{name}] MLflow run {run_id} ({'resumed' if resumed else 'new'}) in {uri}; "
            f"{len(contents)} image(s), one Ray task each")
        task = ray.remote(num_cpus=cfg.cpus_per_task)(gatys)
        try:
            results = ray.get([task.remote(c, cfg, cfg.seed + i) for i, c in enumerate(contents)])
        except Exception:
            logger.finish("FAILED")
            raise
        for i, r in enumerate(results):
            logger.metrics({k: r[k] for k in ("content_start", "style_start", "content_end", "style_end")}, step=i)
            say(f"[{name}] image {i}: style loss {r['style_start']:.4g} -> {r['style_end']:.4g}, "
                f"content loss {r['content_start']:.4g} -> {r['content_end']:.4g} ({r['evals']} evaluations)")
        metrics = {
            "style_loss_factor": _gmean([r["style_start"] / max(r["style_end"], 1e-12) for r in results]),
            "content_loss_factor": _gmean([r["content_start"] / max(r["content_end"], 1e-12) for r in results]),
            "min_style_loss_factor": min(r["style_start"] / max(r["style_end"], 1e-12) for r in results),
            "min_content_loss_factor": min(r["content_start"] / max(r["content_end"], 1e-12) for r in results),
            "style_loss": float(np.mean([r["style_end"] for r in results])),
            "content_loss": float(np.mean([r["content_end"] for r in results])),
        }
        logger.metrics(metrics, step=len(results))
        with tempfile.TemporaryDirectory() as d:
            outs = torch.from_numpy(np.stack([r["image"] for r in results]))
            style = to_float(torch.from_numpy(style_image(cfg.style, cfg.style_size).copy())[None])
            style = torch.nn.functional.interpolate(style, size=(cfg.size, cfg.size), mode="bilinear",
                                                    align_corners=False).expand(len(outs), -1, -1, -1)
            grid = side_by_side([("content", to_float(torch.from_numpy(contents))), ("LBFGS on the pixels", to_float(outs)),
                                 ("style", style)], Path(d) / "style_transfer.png", n=len(outs),
                                title=f"Gatys: style loss / {metrics['style_loss_factor']:.1f}, "
                                      f"content loss / {metrics['content_loss_factor']:.1f}")
            logger.artifact(grid, "predictions")
            logger.json(to_dict(cfg), "config.json")
        logger.finish()
        say(f"[{name}] style loss lowered {metrics['style_loss_factor']:.1f}x, content loss "
            f"{metrics['content_loss_factor']:.1f}x (geometric means over the images)")
        return {"run_id": run_id, "experiment": self.name, "name": name, "metrics": metrics,
                "images": len(results), "cache": "hit" if hit else "miss", "resumed": resumed,
                "seconds": round(time.perf_counter() - t0, 2)}
