"""Lesson 12: a Wasserstein GAN (DCGAN nets) on LSUN bedrooms and a CycleGAN on horse2zebra.

Both train two networks with two optimizers in the engine's one loop, by manual
optimisation: the pipeline owns the optimizers (optimizers() -> {"gen", "critic"|"disc"})
and train_step calls ctx.backward(loss) and ctx.step(name) for each;
the phases give an LR factor (1.0, then CycleGAN's linear decay to 0), and the engine
checkpoints and restores both. Generator and critic/discriminators sit in one nn.Module whose forward
computes one loss per call, so train_step calls the (DDP-wrapped) model once per loss and
the gradients are all-reduced; find_unused_parameters covers the net a call leaves out.
While one optimizer's loss is computed the other's parameters do not require grad
(training_only), so its backward leaves their gradients alone.

WGAN (Arjovsky et al. 2017, as lesson 12): RMSprop, critic weights clipped to
+-weight_clip (0.01) after each critic step, a critic step per batch and a generator step
after every n_critic of them (100 for the first 25 generator steps and every 500th). The
schedule is a function of ctx.global_step (the run's batch count: one critic step each), so a
resumed run continues it where it stopped.

CycleGAN (Zhu et al. 2017, the authors' code that lesson 12 ran): a generator step (LSGAN
+ cycle L1 + identity L1) then a discriminator step on images from a pool of 50 generated
ones; Adam 2e-4, beta1 0.5, constant LR then a linear decay to 0.

The learning checks (tests/lessons/test_gans.py) are the metrics evaluate() reports each epoch:
- WGAN: how close generated images' statistics come to the held-out real ones': the
  Frechet distance between Gaussians fitted to 4x4-pixel thumbnails (48 numbers: the
  colour layout), the largest per-channel mean and std gaps, and the total variation
  between 4x4x4-bin colour histograms;
- CycleGAN: a domain judge (logistic regression on colour and edge statistics, fitted to
  the real test images of both domains each epoch) says whether G_AB(A) looks like B and
  G_BA(B) like A (domain_acc), and the cycle error |G_BA(G_AB(a)) - a| (cycle_l1, [0, 1] units).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from models.cyclegan import CycleGAN, CycleGANConfig
from models.dcgan import DCGANConfig, WGAN
from preprocessing import gan_data
from preprocessing.chunked import read_split

from ..core import plots
from ..core.contract import Pipeline, RunContext, TrainConfig, unwrap
from ..core.phases import TrainingPhase
from ..core.vision import random_flip, side_by_side, to_float


# learning checks: a trained generator passes, an untrained one fails (figures: tests/test_gans.py)
WGAN_PASS_FD = 0.2          # Frechet distance of 4x4 thumbnails, generated vs held-out real, at most
WGAN_PASS_HIST = 0.5        # total variation between their colour histograms, at most
CYCLEGAN_PASS_ACC = 0.8     # translated images the domain judge assigns to the target domain, at least
CYCLEGAN_PASS_CYCLE = 0.1   # mean |G_BA(G_AB(a)) - a| (and B->A->B) in [0, 1] pixel units, at most


def _figure(metrics: dict[str, float], key: str) -> float:
    """evaluate()'s figure, or the run's (the engine prefixes all but the metric with valid_)."""
    return metrics[key] if key in metrics else metrics[f"valid_{key}"]


def wgan_passes(metrics: dict[str, float]) -> bool:
    return _figure(metrics, "fd") <= WGAN_PASS_FD and _figure(metrics, "hist_tv") <= WGAN_PASS_HIST


def cyclegan_passes(metrics: dict[str, float]) -> bool:
    return (_figure(metrics, "domain_acc") >= CYCLEGAN_PASS_ACC
            and _figure(metrics, "cycle_l1") <= CYCLEGAN_PASS_CYCLE)


def to_signed(img: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1] (the generators' tanh range)."""
    x = to_float(img).mul_(2).sub_(1)
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], float32."""
    return (x.float() + 1).div(2).clamp(0, 1)


# ---------------------------------------------------------------- image statistics


def thumbnails(x: torch.Tensor, side: int = 4) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 3 * side * side): the colour layout at side x side px."""
    return F.adaptive_avg_pool2d(x.float(), side).flatten(1)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two (N, D) feature sets:
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), in float64."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    w, v = torch.linalg.eigh(s_a)
    root_a = v @ torch.diag(w.clamp_min(0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root_a @ s_b @ root_a).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + s_a.trace() + s_b.trace() - 2 * cross)


def colour_histogram(x: torch.Tensor, bins: int = 4) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> counts of the bins**3 joint RGB bins over all pixels."""
    q = (x.float() * bins).long().clamp_(0, bins - 1)               # (B, 3, H, W) bin per channel
    idx = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]                 # (B, H, W)
    return torch.bincount(idx.flatten(), minlength=bins ** 3).double()


class ImageStats:
    """Running features of real and generated images; compare() gives the WGAN check's figures."""

    def __init__(self):
        self.feats = {"real": [], "fake": []}
        self.hist: dict[str, torch.Tensor] = {}
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, kind: str, x: torch.Tensor) -> None:
        """x: (B, 3, H, W) in [0, 1]."""
        self.feats[kind].append(thumbnails(x))
        h = colour_histogram(x)
        self.hist[kind] = h if kind not in self.hist else self.hist[kind] + h
        px = x.float().permute(1, 0, 2, 3).flatten(1)                # (3, B*H*W)
        s = torch.stack([px.sum(1), px.pow(2).sum(1), torch.full((3,), px.shape[1], device=x.device)])
        self.sums[kind] = s if kind not in self.sums else self.sums[kind] + s

    def compare(self) -> dict[str, float]:
        real, fake = torch.cat(self.feats["real"]), torch.cat(self.feats["fake"])
        mean, std = {}, {}
        for k in ("real", "fake"):
            s1, s2, n = self.sums[k].double()
            mean[k], std[k] = s1 / n, (s2 / n - (s1 / n) ** 2).clamp_min(0).sqrt()
        p, q = self.hist["real"] / self.hist["real"].sum(), self.hist["fake"] / self.hist["fake"].sum()
        return {
            "fd": frechet_distance(real, fake),
            "mean_gap": float((mean["real"] - mean["fake"]).abs().max()),
            "std_gap": float((std["real"] - std["fake"]).abs().max()),
            "hist_tv": float(0.5 * (p - q).abs().sum()),
        }


def domain_features(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 15) colour and edge statistics: per-channel mean, std,
    mean |horizontal| and |vertical| differences, mean saturation (max - min over channels),
    and the fractions of dark (luma < 0.2) and bright (luma > 0.85) pixels."""
    x = x.float()
    luma = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).flatten(1)
    return torch.cat([
        x.mean((2, 3)), x.std((2, 3)),
        (x[..., :, 1:] - x[..., :, :-1]).abs().mean((2, 3)), (x[..., 1:, :] - x[..., :-1, :]).abs().mean((2, 3)),
        (x.amax(1) - x.amin(1)).mean((1, 2))[:, None],
        (luma < 0.2).float().mean(1, keepdim=True), (luma > 0.85).float().mean(1, keepdim=True),
    ], 1)


def fit_judge(feat_a: torch.Tensor, feat_b: torch.Tensor, steps: int = 200, wd: float = 1e-3):
    """Logistic regression A (0) vs B (1) on standardized features; returns p(B | features)."""
    x = torch.cat([feat_a, feat_b]).double()
    y = torch.cat([torch.zeros(len(feat_a)), torch.ones(len(feat_b))]).double().to(x.device)
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mu) / sd
    w = torch.zeros(z.shape[1], dtype=z.dtype, device=z.device, requires_grad=True)
    b = torch.zeros((), dtype=z.dtype, device=z.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z @ w + b, y) + wd * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w, b = w.detach(), b.detach()
    return lambda f: torch.sigmoid(((f.double() - mu) / sd) @ w + b)


def image_rows(rows: list[tuple[str, torch.Tensor]], path: Path, title: str, cols: int = 8) -> Path:
    """Labelled rows of (N, 3, H, W) images in [0, 1] as one figure, `cols` images a line
    (a longer row wraps onto the next lines; its label is on the first)."""
    lines = [(label if i == 0 else "", x[i : i + cols].detach().float().cpu().clamp(0, 1))
             for label, x in rows for i in range(0, len(x), cols)]
    fig = plots.figure((1.1 * cols + 0.6, 1.1 * len(lines) + 0.5))
    axes = fig.subplots(len(lines), cols, squeeze=False)
    for r, (label, x) in enumerate(lines):
        for c in range(cols):
            ax = axes[r][c]
            if c >= len(x):
                ax.axis("off")
                continue
            ax.imshow(x[c].permute(1, 2, 0).numpy(), vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, fontsize=8)
    return plots.save(fig, path, title=title)


@contextlib.contextmanager
def training_only(ctx: RunContext, name: str) -> Iterator[None]:
    """While the loss of optimizer `name` is computed, the other optimizers' parameters do
    not require grad (Lightning's toggle_optimizer): its backward leaves their gradients
    alone (ctx.step zeroes only the stepped optimizer's) and costs less. The loss still
    flows through those nets' activations (the generator's through the critic)."""
    others = [p for k, opt in ctx.optimizers.items() if k != name
              for g in opt.param_groups for p in g["params"] if p.requires_grad]
    for p in others:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in others:
            p.requires_grad_(True)


# ---------------------------------------------------------------- WGAN


@dataclass(frozen=True)
class WGANConfig(TrainConfig):
    """Each training batch is one critic step (TrainConfig's bs 64 and epochs 1 are lesson
    12's); with `accum` N, each optimizer steps on the gradients of N of its calls."""

    size: int = 64              # image side, px (a power of two >= 16; lesson 12: 64)
    nz: int = 100               # noise size (lesson 12: 100)
    ngf: int = 64               # generator width: channels of its last block, doubled towards 4x4
    ndf: int = 64               # critic width: channels of its first conv, doubled per stride
    extra_layers: int = 1       # extra 3x3 conv blocks in both nets (lesson 12: 1)
    lr: float = 1e-4            # RMSprop LR of both nets (lesson 12: 1e-4)
    weight_clip: float = 0.01   # critic weights clamped to [-weight_clip, weight_clip] after each critic step
    n_critic: int = 5           # critic steps per generator step
    warmup_critic: int = 100    # critic steps per generator step for the first warmup_gen_steps
    warmup_gen_steps: int = 25  # generator steps, and for every boost_every-th (lesson 12: 100, 25, 500)
    boost_every: int = 500      # 0: never boost after the warm-up
    valid_frac: float = 0.1     # fraction of the images held out for the learning check ...
    valid_max: int = 1000       # ... at most this many
    data_frac: float = 1.0      # fraction of the other images that trains (lesson 12: 0.1 of LSUN)
    n_show: int = 16            # generated images (fixed noise) in each epoch's grid

    def __post_init__(self):
        super().__post_init__()
        if self.lr <= 0 or self.weight_clip <= 0:
            raise ValueError(f"need lr > 0 and weight_clip > 0 (lr={self.lr}, weight_clip={self.weight_clip})")
        if min(self.n_critic, self.warmup_critic) < 1 or self.warmup_gen_steps < 0 or self.boost_every < 0:
            raise ValueError(f"need n_critic, warmup_critic >= 1 and warmup_gen_steps, boost_every >= 0 "
                             f"(got {self.n_critic}, {self.warmup_critic}, {self.warmup_gen_steps}, {self.boost_every})")
        self.dcgan()  # checks size and widths

    def dcgan(self) -> DCGANConfig:
        return DCGANConfig(size=self.size, nz=self.nz, ngf=self.ngf, ndf=self.ndf, n_extra=self.extra_layers)


def _critic_steps_at(g: int, cfg: WGANConfig) -> int:
    """Critic steps taken when generator step g (0-based) is taken: the run before step g is
    warmup_critic long for g < warmup_gen_steps and every boost_every-th g, else n_critic."""
    warm = min(g + 1, cfg.warmup_gen_steps)
    if cfg.boost_every > 0 and g >= cfg.warmup_gen_steps:
        warm += g // cfg.boost_every - (cfg.warmup_gen_steps - 1) // cfg.boost_every
    return cfg.n_critic * (g + 1) + (cfg.warmup_critic - cfg.n_critic) * warm


def wgan_gen_steps(critic_steps: int, cfg: WGANConfig) -> int:
    """Generator steps lesson 12's n-critic schedule takes within its first `critic_steps`
    critic steps (a binary search: the run's step count is all the state it needs)."""
    lo, hi = 0, max(0, critic_steps)  # each run holds >= 1 critic step: fewer than critic_steps + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if _critic_steps_at(mid, cfg) <= critic_steps:
            lo = mid + 1
        else:
            hi = mid
    return lo


WGAN_CONFIGS = {
    # seconds: a smoke run through every mechanism (both optimizers, the warm-up, clipping)
    "tiny": WGANConfig(size=16, nz=16, ngf=8, ndf=8, extra_layers=0, bs=32, epochs=2, lr=5e-4, n_critic=2,
                       warmup_critic=4, warmup_gen_steps=2, boost_every=0, valid_frac=0.2, valid_max=200,
                       data_frac=0.25, n_show=8),
    # minutes on 2 CPU cores: generated rooms pass the learning check on the sample
    "sample": WGANConfig(size=32, nz=32, ngf=16, ndf=16, extra_layers=0, bs=32, epochs=8, lr=5e-4, n_critic=2,
                         warmup_critic=10, warmup_gen_steps=5, boost_every=0, valid_frac=0.15),
    # lesson 12 on LSUN bedrooms (GPUs)
    "default": WGANConfig(),
}


class _GANPipeline(Pipeline):
    """What both GAN pipelines share: two optimizers stepped by train_step, one image size,
    a grid of samples after every epoch, no LR search beyond the LR itself."""

    manual_optimization = True
    ddp_kwargs = {"find_unused_parameters": True}  # each forward call uses part of the model

    def datasets(self, cfg, cache, manifest: dict) -> dict[str, Any]:
        return {name: read_split(cache, manifest, split, self.columns)
                for name, split in (("train", "train"), ("valid", "valid"))}

    def on_epoch_end(self, model: nn.Module, ctx: RunContext) -> dict[str, list[Path]]:
        """This epoch's grid of samples, and on the last epoch predictions() too."""
        with torch.no_grad():
            grid = self.samples(model, ctx, ctx.out_dir / f"epoch_{ctx.epoch + 1:03d}.png")
            return {**({"samples": [grid]} if grid else {}), **super().on_epoch_end(model, ctx)}

    def samples(self, model: nn.Module, ctx: RunContext, path: Path) -> Path | None:
        raise NotImplementedError

    def search_space(self, cfg) -> dict[str, Any]:
        from ray import tune

        return {"lr": tune.loguniform(cfg.lr / 4, cfg.lr * 4)}


class WGANPipeline(_GANPipeline):
    Config = WGANConfig
    configs = WGAN_CONFIGS
    columns = ["img"]

    # ---- data
    def preprocess(self, cfg: WGANConfig, data_dir: Path, cache, on_bad: str = "skip"):
        source = gan_data.find_image_folder(data_dir, cfg.valid_frac, cfg.valid_max, cfg.data_frac, cfg.seed)
        return gan_data.preprocess(source, cfg.size, cache, "gan-images", on_bad=on_bad, seed=cfg.seed)

    # ---- model
    def build_model(self, cfg: WGANConfig) -> nn.Module:
        return WGAN(cfg.dcgan())

    def optimizers(self, model: WGAN, cfg: WGANConfig) -> dict[str, torch.optim.Optimizer]:
        return {"gen": torch.optim.RMSprop(model.generator.parameters(), lr=cfg.lr),
                "critic": torch.optim.RMSprop(model.critic.parameters(), lr=cfg.lr)}

    def phases(self, cfg: WGANConfig) -> list:
        return [TrainingPhase(cfg.epochs, 1.0)]  # a factor on the optimizers' own constant LR

    # ---- steps
    def to_device(self, batch: dict[str, torch.Tensor], ctx: RunContext, train: bool):
        return to_signed(batch["img"])

    def train_step(self, model, real: torch.Tensor, ctx: RunContext) -> dict[str, torch.Tensor]:
        """One critic step on this batch, then a generator step when the n-critic schedule
        says so: this batch is critic step ctx.global_step + 1 of the run."""
        cfg, net = ctx.cfg, unwrap(model)
        with training_only(ctx, "critic"):
            loss_c, d_real, d_fake = model("critic", real=real, z=self._noise(ctx, net, len(real)))
        ctx.backward(loss_c)
        ctx.step("critic")
        net.clip_critic(cfg.weight_clip)
        if self._gen_loss is None:
            self._gen_loss = loss_c.detach().new_zeros(())
        if wgan_gen_steps(ctx.global_step + 1, cfg) > wgan_gen_steps(ctx.global_step, cfg):
            with training_only(ctx, "gen"):
                loss_g = model("gen", z=self._noise(ctx, net, len(real)))
            ctx.backward(loss_g)
            ctx.step("gen")
            self._gen_loss = loss_g.detach()
        # the critic's gap D(fake) - D(real) is the Wasserstein estimate (up to the clipping's scale)
        return {"critic_loss": loss_c.detach(), "wasserstein": d_fake - d_real, "d_real": d_real,
                "d_fake": d_fake, "gen_loss": self._gen_loss}

    _gen_loss: torch.Tensor | None = None  # the last generator loss, logged between generator steps
    _rng: torch.Generator | None = None

    def _noise(self, ctx: RunContext, net: WGAN, n: int) -> torch.Tensor:
        """Training noise from a generator of this worker's own: the engine seeds every
        worker alike (the same init), and the same noise on every worker would shrink the
        generator's data-parallel batch to one worker's."""
        if self._rng is None:
            self._rng = torch.Generator(ctx.device).manual_seed(ctx.cfg.seed * 1000 + 100 + ctx.rank)
        return torch.randn(n, net.cfg.nz, 1, 1, device=ctx.device, generator=self._rng)

    def evaluate(self, model, batches: Iterable, ctx: RunContext) -> dict[str, float]:
        """Generated images (fixed noise) against this worker's held-out real ones."""
        cfg, net = ctx.cfg, unwrap(model)
        g = torch.Generator().manual_seed(cfg.seed + 1)
        stats, n, device = ImageStats(), 0, None
        for real in batches:
            device = real.device
            stats.add("real", to_unit(real))
            stats.add("fake", to_unit(net("sample", z=net.noise(len(real), generator=g).to(device))))
            n += len(real)
        if not n:
            return {"fd": 0.0, "mean_gap": 0.0, "std_gap": 0.0, "hist_tv": 0.0, "n": 0}
        return {**stats.compare(), "n": n}

    def _fixed_samples(self, model: WGAN, ctx: RunContext) -> torch.Tensor:
        """The generator's images, in [0, 1], of the same n_show noise vectors every epoch."""
        fixed = model.noise(ctx.cfg.n_show, generator=torch.Generator().manual_seed(ctx.cfg.seed + 2))
        return to_unit(model("sample", z=fixed.to(ctx.device)))

    def samples(self, model: WGAN, ctx: RunContext, path: Path) -> Path:
        steps = wgan_gen_steps(ctx.global_step, ctx.cfg)
        return image_rows([("generated", self._fixed_samples(model, ctx))], path,
                          f"WGAN, fixed noise after epoch {ctx.epoch + 1}/{ctx.total_epochs} "
                          f"({ctx.global_step} critic steps, {steps} generator steps)")

    def predictions(self, model: WGAN, batch: torch.Tensor, ctx: RunContext) -> list[Path]:
        """The fixed noise's images over real held-out ones."""
        n = ctx.cfg.n_show
        rows = [("generated", self._fixed_samples(model, ctx)), ("real (held out)", to_unit(batch[:n]))]
        return [image_rows(rows, ctx.out_dir / "generated_vs_real.png", f"WGAN after epoch {ctx.epoch + 1}/"
                           f"{ctx.total_epochs}: generated (fixed noise) and real images")]


# ---------------------------------------------------------------- CycleGAN


@dataclass(frozen=True)
class CycleGANPipelineConfig(TrainConfig):
    """With `accum` N, each optimizer steps on the gradients of N batches."""

    size: int = 256               # image side, px (lesson 12 / the authors: 256)
    ngf: int = 64                 # generator width
    ndf: int = 64                 # discriminator width
    n_blocks: int = 9             # generator residual blocks (9 at 256 px; fewer for small images)
    n_down: int = 2               # generator stride-2 convs
    d_layers: int = 3             # PatchGAN stride-2 convs (3: 70x70 patches)
    bs: int = 1                   # global batch size (the authors: 1), split across workers
    epochs: int = 200             # passes over the training pairs (the authors: 100 + 100)
    const_epochs: int = 100       # epochs at the full LR; the rest decay linearly to 0
    lr: float = 2e-4              # Adam LR of generators and discriminators
    beta1: float = 0.5            # Adam beta1
    lambda_cycle: float = 10.0    # weight of the cycle L1 losses
    lambda_identity: float = 0.5  # identity L1 weight, as a fraction of lambda_cycle
    pool_size: int = 50           # generated images the discriminators may see again
    flip: bool = True             # random horizontal flips while training
    n_show: int = 4               # validation image pairs in each epoch's grid (A->B->A, B->A->B)

    def __post_init__(self):
        super().__post_init__()
        if self.const_epochs < 0 or self.lr <= 0 or not 0 <= self.beta1 < 1:
            raise ValueError(f"need const_epochs >= 0, lr > 0 and 0 <= beta1 < 1 (const_epochs={self.const_epochs}, "
                             f"lr={self.lr}, beta1={self.beta1})")
        net = self.cyclegan()
        if self.size < net.min_size() or self.size % 2 ** self.n_down:
            raise ValueError(f"size {self.size} does not fit n_down={self.n_down}, d_layers={self.d_layers}: "
                             f"need a multiple of {2 ** self.n_down} and >= {net.min_size()}")

    def cyclegan(self) -> CycleGANConfig:
        return CycleGANConfig(ngf=self.ngf, ndf=self.ndf, n_blocks=self.n_blocks, n_down=self.n_down,
                              d_layers=self.d_layers, lambda_cycle=self.lambda_cycle,
                              lambda_identity=self.lambda_identity, pool_size=self.pool_size)


CYCLEGAN_CONFIGS = {
    # seconds: a smoke run through every mechanism (both optimizers, the pools, the LR decay)
    "tiny": CycleGANPipelineConfig(size=16, ngf=8, ndf=8, n_blocks=1, n_down=1, d_layers=2, bs=8, epochs=2,
                                   const_epochs=1, pool_size=8, n_show=2),
    # minutes on 2 CPU cores: translations pass the learning check on the sample
    "sample": CycleGANPipelineConfig(size=32, ngf=8, ndf=16, n_blocks=2, n_down=2, d_layers=2, bs=8, epochs=2,
                                     const_epochs=1, lr=1e-3),
    # lesson 12 on horse2zebra (GPUs)
    "default": CycleGANPipelineConfig(),
}


class CycleGANPipeline(_GANPipeline):
    Config = CycleGANPipelineConfig
    configs = CYCLEGAN_CONFIGS
    columns = ["a", "b"]

    # ---- data
    def preprocess(self, cfg: CycleGANPipelineConfig, data_dir: Path, cache, on_bad: str = "skip"):
        source = gan_data.find_unpaired(data_dir, cfg.seed)
        return gan_data.preprocess(source, cfg.size, cache, "gan-unpaired", on_bad=on_bad, seed=cfg.seed)

    # ---- model
    def build_model(self, cfg: CycleGANPipelineConfig) -> nn.Module:
        return CycleGAN(cfg.cyclegan(), seed=cfg.seed)

    def optimizers(self, model: CycleGAN, cfg: CycleGANPipelineConfig) -> dict[str, torch.optim.Optimizer]:
        betas = (cfg.beta1, 0.999)
        return {"gen": torch.optim.Adam(model.generators(), lr=cfg.lr, betas=betas),
                "disc": torch.optim.Adam(model.discriminators(), lr=cfg.lr, betas=betas)}

    def phases(self, cfg: CycleGANPipelineConfig) -> list:
        """Factors on the optimizers' LR: 1 for const_epochs, then linear to 0 (the authors' "linear" policy)."""
        const = min(cfg.const_epochs, cfg.epochs)
        decay = cfg.epochs - const
        return ([TrainingPhase(const, 1.0)] if const else []) + ([TrainingPhase(decay, (1.0, 0.0), "linear")] if decay else [])

    # ---- steps
    def to_device(self, batch: dict[str, torch.Tensor], ctx: RunContext, train: bool):
        a, b = to_signed(batch["a"]), to_signed(batch["b"])
        if train:
            # the domains are unpaired: draw new pairs within the batch (the rows' order is
            # shuffled each epoch, so batches differ), and flip each image on its own
            b = b[torch.randperm(len(b), device=b.device)]
            if ctx.cfg.flip:
                (a,), (b,) = random_flip(a), random_flip(b)
        return a, b

    def train_step(self, model, batch, ctx: RunContext) -> dict[str, torch.Tensor]:
        """A generator step, then a discriminator step on pooled generated images."""
        a, b = batch
        net: CycleGAN = unwrap(model)
        with training_only(ctx, "gen"):
            loss_g, parts, fake_a, fake_b = model("gen", real_a=a, real_b=b)
        ctx.backward(loss_g)
        ctx.step("gen")
        with training_only(ctx, "disc"):
            loss_d, d_parts = model("disc", real_a=a, real_b=b, fake_a=net.pool_a.query(fake_a),
                                    fake_b=net.pool_b.query(fake_b))
        ctx.backward(loss_d)
        ctx.step("disc")
        return {"gen_loss": loss_g.detach(), **parts, "disc_loss": loss_d.detach(), **d_parts}

    _fixed: tuple[torch.Tensor, torch.Tensor] | None = None  # the validation images each epoch's grid translates

    def evaluate(self, model, batches: Iterable, ctx: RunContext) -> dict[str, float]:
        """Cycle error, and the domain judge (fitted to the real test images of both
        domains on this worker) on the translations."""
        net = unwrap(model)
        feats: dict[str, list] = {"a": [], "b": [], "fake_a": [], "fake_b": []}
        cyc, n = None, 0
        for a, b in batches:
            fake_b, fake_a = net("translate", real_a=a, real_b=b)
            rec_a, rec_b = net("translate", real_a=fake_a, real_b=fake_b)[::-1]
            err = (to_unit(rec_a) - to_unit(a)).abs().mean((1, 2, 3)) + (to_unit(rec_b) - to_unit(b)).abs().mean((1, 2, 3))
            cyc = err.sum() / 2 if cyc is None else cyc + err.sum() / 2
            for k, x in (("a", a), ("b", b), ("fake_a", fake_a), ("fake_b", fake_b)):
                feats[k].append(domain_features(to_unit(x)))
            n += len(a)
        if not n:
            return {"domain_acc": 0.0, "cycle_l1": 0.0, "judge_real_acc": 0.0, "n": 0}
        f = {k: torch.cat(v) for k, v in feats.items()}
        with torch.autocast(a.device.type, enabled=False):
            judge = fit_judge(f["a"], f["b"])
        to_b, to_a = (judge(f["fake_b"]) > 0.5).double().mean(), (judge(f["fake_a"]) <= 0.5).double().mean()
        real_acc = ((judge(f["b"]) > 0.5).double().mean() + (judge(f["a"]) <= 0.5).double().mean()) / 2
        return {"domain_acc": float((to_b + to_a) / 2), "a_to_b": float(to_b), "b_to_a": float(to_a),
                "judge_real_acc": float(real_acc), "cycle_l1": float(cyc) / n, "n": n}

    def samples(self, model: CycleGAN, ctx: RunContext, path: Path) -> Path | None:
        """The same validation images every epoch (the first n_show of the first validation
        batch rank 0 evaluated in this run), translated and back."""
        if self._fixed is None and ctx.valid_batch is not None:
            a, b = ctx.valid_batch
            self._fixed = a[: ctx.cfg.n_show].clone(), b[: ctx.cfg.n_show].clone()
        if self._fixed is None:
            return None
        return _translations(model, *self._fixed, path,
                             f"CycleGAN, the same validation images after epoch {ctx.epoch + 1}/{ctx.total_epochs}")

    def predictions(self, model: CycleGAN, batch, ctx: RunContext) -> list[Path]:
        """The first images of the last epoch's first validation batch, translated and back."""
        a, b = batch
        return [_translations(model, a[: ctx.cfg.n_show], b[: ctx.cfg.n_show], ctx.out_dir / "a_to_b_to_a.png",
                              f"CycleGAN after epoch {ctx.epoch + 1}/{ctx.total_epochs}: "
                              "validation images translated and back")]


def _translations(model: CycleGAN, a: torch.Tensor, b: torch.Tensor, path: Path, title: str) -> Path:
    """One row per image pair: A, G_AB(A), G_BA(G_AB(A)), B, G_BA(B), G_AB(G_BA(B))."""
    fake_b, fake_a = model("translate", real_a=a, real_b=b)
    rec_a, rec_b = model("translate", real_a=fake_a, real_b=fake_b)[::-1]
    names = ("A", "A to B", "A to B to A", "B", "B to A", "B to A to B")
    cols = [to_unit(x) for x in (a, fake_b, rec_a, b, fake_a, rec_b)]
    return side_by_side(list(zip(names, cols)), path, n=len(a), title=title)
