"""CycleGAN (Zhu et al. 2017), as lesson 12 ran it on horse2zebra with the authors' code:
ResNet generators, 70x70 PatchGAN discriminators, least-squares GAN loss, cycle L1
(lambda 10) and identity L1 (0.5 * lambda), and a pool of 50 generated images that the
discriminators see instead of only the newest ones.

    ResnetGenerator: (B, 3, S, S) -> c7s1-ngf -> n_down x d(2x) -> n_blocks x R -> n_down x u(/2) -> c7s1-3, tanh
    PatchDiscriminator: (B, 3, S, S) -> (B, 1, S', S') one realness score per overlapping patch

CycleGAN keeps the four networks in one nn.Module so that data-parallel training (DDP)
sees one model: forward(mode="gen" | "disc" | "translate") computes one loss per call.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class CycleGANConfig:
    ngf: int = 64                 # generator channels after the first conv; doubled per downsampling
    ndf: int = 64                 # discriminator channels of the first conv; doubled per layer, at most 8x
    n_blocks: int = 9             # residual blocks (9 at 256 px, 6 at 128 px; fewer for small images)
    n_down: int = 2               # stride-2 convs in the generator (and as many upsamplings)
    d_layers: int = 3             # stride-2 convs in the PatchGAN (3: 70x70 patches)
    nc: int = 3                   # image channels
    lambda_cycle: float = 10.0    # weight of the cycle L1 losses A->B->A and B->A->B
    lambda_identity: float = 0.5  # identity L1 G_AB(b) ~ b, weighted lambda_identity * lambda_cycle
    pool_size: int = 50           # generated images a discriminator may be shown again (0: none)

    def __post_init__(self):
        if min(self.ngf, self.ndf, self.nc, self.d_layers) < 1 or self.n_blocks < 0 or self.n_down < 0:
            raise ValueError(f"need ngf, ndf, nc, d_layers >= 1 and n_blocks, n_down >= 0, got {self}")
        if self.lambda_cycle < 0 or self.lambda_identity < 0 or self.pool_size < 0:
            raise ValueError(f"lambda_cycle, lambda_identity and pool_size must be >= 0, got {self}")

    def min_size(self) -> int:
        """The smallest image side the nets take: the generator's strides must divide it, and
        the PatchGAN's two last 4x4 convs (stride 1) need 3 px left after its strided ones."""
        return max(2 ** self.n_down, 3 * 2 ** self.d_layers)


def _norm(n: int) -> nn.Module:
    return nn.InstanceNorm2d(n, affine=False, track_running_stats=False)  # the authors' default


class ResnetBlock(nn.Module):
    """x + (reflect pad, conv3, IN, ReLU, reflect pad, conv3, IN)(x)."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), _norm(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), _norm(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    def __init__(self, cfg: CycleGANConfig):
        super().__init__()
        nf = cfg.ngf
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(cfg.nc, nf, 7), _norm(nf), nn.ReLU(True)]
        for _ in range(cfg.n_down):                                        # (B, nf*2, S/2, S/2) each
            layers += [nn.Conv2d(nf, nf * 2, 3, stride=2, padding=1), _norm(nf * 2), nn.ReLU(True)]
            nf *= 2
        layers += [ResnetBlock(nf) for _ in range(cfg.n_blocks)]
        for _ in range(cfg.n_down):                                        # back up to (B, ngf, S, S)
            layers += [nn.ConvTranspose2d(nf, nf // 2, 3, stride=2, padding=1, output_padding=1),
                       _norm(nf // 2), nn.ReLU(True)]
            nf //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(nf, cfg.nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class PatchDiscriminator(nn.Module):
    """The authors' NLayerDiscriminator: d_layers stride-2 4x4 convs, then two stride-1 ones."""

    def __init__(self, cfg: CycleGANConfig):
        super().__init__()
        lrelu = lambda: nn.LeakyReLU(0.2, True)
        layers: list[nn.Module] = [nn.Conv2d(cfg.nc, cfg.ndf, 4, 2, 1), lrelu()]
        nf = cfg.ndf
        for n in range(1, cfg.d_layers):
            nf_next = cfg.ndf * min(2 ** n, 8)
            layers += [nn.Conv2d(nf, nf_next, 4, 2, 1), _norm(nf_next), lrelu()]
            nf = nf_next
        nf_next = cfg.ndf * min(2 ** cfg.d_layers, 8)
        layers += [nn.Conv2d(nf, nf_next, 4, 1, 1), _norm(nf_next), lrelu(), nn.Conv2d(nf_next, 1, 4, 1, 1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # (B, 1, S', S') patch scores


def gan_init(m: nn.Module) -> None:
    """The authors' init_type "normal": conv weights N(0, 0.02), biases 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def lsgan_loss(scores: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN loss: mean (score - 1)^2 for real targets, score^2 for fake."""
    scores = scores.float()
    return F.mse_loss(scores, torch.ones_like(scores) if real else torch.zeros_like(scores))


class ImagePool:
    """Shrivastava et al.'s history of generated images. While not full, each new image is
    stored and returned; then each is, with probability 1/2, swapped for a random stored
    one (which is returned instead). Plain Python state of one worker: not a buffer, so
    DDP does not broadcast it and checkpoints do not carry it (it refills in pool_size images)."""

    def __init__(self, size: int, seed: int = 0):
        self.size, self.images, self.rng = size, [], random.Random(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for img in images.detach():
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif self.rng.random() < 0.5:
                i = self.rng.randrange(self.size)
                out.append(self.images[i])
                self.images[i] = img.clone()
            else:
                out.append(img)
        return torch.stack(out)


class CycleGAN(nn.Module):
    """G_AB, G_BA, D_A, D_B in one module; one loss per forward call.

    mode="gen":  (generator loss, its parts, fake_a, fake_b) for real_a, real_b;
    mode="disc": (discriminator loss, its parts) for real_a, real_b and (pooled) fake_a, fake_b;
    mode="translate": (G_AB(real_a), G_BA(real_b)).
    """

    def __init__(self, cfg: CycleGANConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.g_ab, self.g_ba = ResnetGenerator(cfg), ResnetGenerator(cfg)
        self.d_a, self.d_b = PatchDiscriminator(cfg), PatchDiscriminator(cfg)
        self.apply(gan_init)
        self.pool_a, self.pool_b = ImagePool(cfg.pool_size, seed), ImagePool(cfg.pool_size, seed + 1)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # training steps taken (checkpointed)

    def generators(self) -> list[nn.Parameter]:
        return [*self.g_ab.parameters(), *self.g_ba.parameters()]

    def discriminators(self) -> list[nn.Parameter]:
        return [*self.d_a.parameters(), *self.d_b.parameters()]

    def forward(self, mode: str, real_a: torch.Tensor, real_b: torch.Tensor,
                fake_a: torch.Tensor | None = None, fake_b: torch.Tensor | None = None):
        c = self.cfg
        if mode == "gen":
            fake_b, fake_a = self.g_ab(real_a), self.g_ba(real_b)
            adv = lsgan_loss(self.d_b(fake_b), True) + lsgan_loss(self.d_a(fake_a), True)
            cycle = F.l1_loss(self.g_ba(fake_b), real_a) + F.l1_loss(self.g_ab(fake_a), real_b)
            loss = adv + c.lambda_cycle * cycle
            parts = {"gen_adv": adv.detach(), "cycle": cycle.detach()}
            if c.lambda_identity > 0:
                idt = F.l1_loss(self.g_ab(real_b), real_b) + F.l1_loss(self.g_ba(real_a), real_a)
                loss = loss + c.lambda_identity * c.lambda_cycle * idt
                parts["identity"] = idt.detach()
            return loss, parts, fake_a.detach(), fake_b.detach()
        if mode == "disc":
            loss_a = 0.5 * (lsgan_loss(self.d_a(real_a), True) + lsgan_loss(self.d_a(fake_a), False))
            loss_b = 0.5 * (lsgan_loss(self.d_b(real_b), True) + lsgan_loss(self.d_b(fake_b), False))
            return loss_a + loss_b, {"disc_a": loss_a.detach(), "disc_b": loss_b.detach()}
        if mode == "translate":
            return self.g_ab(real_a), self.g_ba(real_b)
        raise ValueError(f"CycleGAN mode must be 'gen', 'disc' or 'translate', got {mode!r}")
