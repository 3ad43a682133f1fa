"""Lesson 12's DCGAN generator and critic (fast.ai's wgan notebook, after Radford et al.
2015 and the WGAN paper's code), and the WGAN module that holds both.

    Generator: noise (B, nz, 1, 1) -> deconv 4x4 -> ... doubling the side ... -> (B, 3, S, S) in [-1, 1]
    Critic:    (B, 3, S, S) -> conv s2 -> extra 3x3 convs -> convs s2 down to 4x4 -> 4x4 conv -> (B,) scores

WGAN keeps both networks in one nn.Module so that data-parallel training (DDP) sees one
model: forward(mode="critic" | "gen" | "sample") computes one loss (or the samples) per
call, and its counters are buffers, so a checkpoint carries how far the n-critic-steps
schedule got.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DCGANConfig:
    size: int = 64     # image side, px: a power of two >= 16 (the pyramid halves it down to 4)
    nz: int = 100      # noise channels (lesson 12: 100)
    ngf: int = 64      # generator channels of its last block; doubled per block towards 4x4
    ndf: int = 64      # critic channels after its first conv; doubled per strided conv
    n_extra: int = 1   # extra 3x3 conv blocks at half resolution in both nets (lesson 12: 1)
    nc: int = 3        # image channels

    def __post_init__(self):
        if self.size < 16 or self.size & (self.size - 1):
            raise ValueError(f"DCGAN image size must be a power of two >= 16, got {self.size}")
        if min(self.nz, self.ngf, self.ndf, self.nc) < 1 or self.n_extra < 0:
            raise ValueError(f"need nz, ngf, ndf, nc >= 1 and n_extra >= 0, got {self}")


class ConvBlock(nn.Module):
    """Critic block: conv (no bias) -> LeakyReLU(0.2) -> BatchNorm, the lesson's order."""

    def __init__(self, ni: int, no: int, ks: int, stride: int, bn: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(ni, no, ks, stride, padding=ks // 2 // stride, bias=False)
        self.relu = nn.LeakyReLU(0.2, inplace=True)
        self.bn = nn.BatchNorm2d(no) if bn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv(x))
        return self.bn(x) if self.bn is not None else x


class DeconvBlock(nn.Module):
    """Generator block: transposed conv (no bias) -> ReLU -> BatchNorm."""

    def __init__(self, ni: int, no: int, ks: int, stride: int, pad: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(ni, no, ks, stride, padding=pad, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.bn = nn.BatchNorm2d(no)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.relu(self.conv(x)))


class Critic(nn.Module):
    """DCGAN_D: one score per image (no sigmoid: a Wasserstein critic)."""

    def __init__(self, cfg: DCGANConfig):
        super().__init__()
        self.initial = ConvBlock(cfg.nc, cfg.ndf, 4, 2, bn=False)              # (B, ndf, S/2, S/2)
        self.extra = nn.Sequential(*[ConvBlock(cfg.ndf, cfg.ndf, 3, 1) for _ in range(cfg.n_extra)])
        layers, side, nf = [], cfg.size // 2, cfg.ndf
        while side > 4:
            layers.append(ConvBlock(nf, nf * 2, 4, 2))
            nf, side = nf * 2, side // 2
        self.pyramid = nn.Sequential(*layers)                                   # (B, nf, 4, 4)
        self.final = nn.Conv2d(nf, 1, 4, padding=0, bias=False)                 # (B, 1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.pyramid(self.extra(self.initial(x)))).flatten()  # (B,)


class Generator(nn.Module):
    """DCGAN_G: (B, nz, 1, 1) noise -> (B, nc, size, size) in [-1, 1]."""

    def __init__(self, cfg: DCGANConfig):
        super().__init__()
        nf, side = cfg.ngf // 2, 4
        while side != cfg.size:  # the width at 4x4 that halves down to ngf at size/2
            nf, side = nf * 2, side * 2
        layers: list[nn.Module] = [DeconvBlock(cfg.nz, nf, 4, 1, 0)]            # (B, nf, 4, 4)
        side = 4
        while side < cfg.size // 2:
            layers.append(DeconvBlock(nf, nf // 2, 4, 2, 1))
            nf, side = nf // 2, side * 2
        layers += [DeconvBlock(nf, nf, 3, 1, 1) for _ in range(cfg.n_extra)]   # (B, ngf, S/2, S/2)
        layers.append(nn.ConvTranspose2d(nf, cfg.nc, 4, 2, 1, bias=False))      # (B, nc, S, S)
        self.features = nn.Sequential(*layers)
        self.nz = cfg.nz

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.features(z))


def dcgan_init(m: nn.Module) -> None:
    """The DCGAN/WGAN papers' init: conv weights N(0, 0.02), BatchNorm gains N(1, 0.02)."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class WGAN(nn.Module):
    """Generator and critic in one module; one loss per forward call.

    mode="critic": (critic loss D(real) - D(G(z)), D(real), D(G(z))) with G not trained;
    mode="gen":    generator loss D(G(z)) (the critic's grads are computed but not stepped);
    mode="sample": G(z).
    The critic learns to score real images low and generated ones high; the gap
    D(G(z)) - D(real) is the Wasserstein estimate (critic weights clipped: a Lipschitz bound).
    """

    def __init__(self, cfg: DCGANConfig):
        super().__init__()
        self.cfg = cfg
        self.generator = Generator(cfg)
        self.critic = Critic(cfg)
        self.apply(dcgan_init)
        # where the n-critic-steps schedule stands; buffers, so checkpoints carry them
        self.register_buffer("critic_steps", torch.zeros((), dtype=torch.long))  # critic steps taken
        self.register_buffer("gen_steps", torch.zeros((), dtype=torch.long))     # generator steps taken
        self.register_buffer("critic_run", torch.zeros((), dtype=torch.long))    # critic steps since the last one
        self.register_buffer("last_gen_loss", torch.zeros(()))                  # for logging between them

    def noise(self, n: int, device: torch.device | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, self.cfg.nz, 1, 1, device=device, generator=generator)

    def forward(self, mode: str, real: torch.Tensor | None = None, z: torch.Tensor | None = None):
        if mode == "critic":
            with torch.no_grad():
                fake = self.generator(z)
            d_real, d_fake = self.critic(real).mean(), self.critic(fake).mean()
            return d_real - d_fake, d_real.detach(), d_fake.detach()
        if mode == "gen":
            return self.critic(self.generator(z)).mean()
        if mode == "sample":
            return self.generator(z)
        raise ValueError(f"WGAN mode must be 'critic', 'gen' or 'sample', got {mode!r}")

    def critic_iters(self, n_critic: int, warmup: int, warmup_gen_steps: int, boost_every: int) -> int:
        """Critic steps before the next generator step: `warmup` for the first
        `warmup_gen_steps` generator steps and every `boost_every`-th one (lesson 12: 100
        for the first 25 and every 500th), else `n_critic` (5)."""
        g = int(self.gen_steps)
        return warmup if g < warmup_gen_steps or (boost_every > 0 and g % boost_every == 0) else n_critic

    @torch.no_grad()
    def clip_critic(self, c: float) -> None:
        """Weight clipping to [-c, c] of every critic parameter (BatchNorm's too, as the paper's code)."""
        for p in self.critic.parameters():
            p.clamp_(-c, c)
