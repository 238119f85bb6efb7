"""A small DnCNN-style baseline denoiser and a patch trainer with an optional
firm-nonexpansiveness penalty (Pesquet et al. 2021).

DnCNN (Zhang et al. 2017): conv-ReLU, (depth - 2) x [conv-ReLU], conv; residual learning
`J(x) = x - net(x)`. No batch norm by default (keeps J a plain conv/ReLU chain, so
`network_lipschitz_upper_bound` applies). The CPU default (depth 6, 32 channels, 3x3) has
~38k parameters and trains in a minute on a few thousand 24 x 24 patches.

Training loss per batch: `mean ||J(x + sigma n) - x||` (squared or l1) +
`lipschitz_penalty * mean max(||grad (2J - I)(x~)||^2, 1 - eps)`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .denoisers import Denoiser
from .lipschitz import conv_norm_upper_bound, firm_nonexpansiveness_penalty

__all__ = ["DnCNN", "DenoiserTrainConfig", "DenoiserTrainResult", "train_denoiser",
           "random_patches"]


class DnCNN(Denoiser):
    """`J(x) = x - net(x)` (residual=True) or `net(x)`; called `model(x, sigma=None)`."""

    def __init__(self, in_channels: int = 1, depth: int = 6, channels: int = 32,
                 kernel_size: int = 3, residual: bool = True, bias: bool = True,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth: expected >= 2 conv layers, got {depth}")
        if channels < 1 or in_channels < 1:
            raise ValueError(f"expected channels >= 1 and in_channels >= 1, got {channels} "
                             f"and {in_channels}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size: expected odd ('same' padding), got {kernel_size}")
        pad = kernel_size // 2
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, kernel_size, padding=pad,
                                             bias=bias, dtype=dtype), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(channels, channels, kernel_size, padding=pad, bias=bias,
                                 dtype=dtype), nn.ReLU()]
        layers.append(nn.Conv2d(channels, in_channels, kernel_size, padding=pad, bias=bias,
                                dtype=dtype))
        self.net = nn.Sequential(*layers)
        self.in_channels = in_channels
        self.depth = depth
        self.channels = channels
        self.residual = bool(residual)

    def forward(self, x: torch.Tensor, sigma=None) -> torch.Tensor:
        self.check_input(x, self.in_channels)
        xc = self.compute_as(x, self.net[0].weight)   # the Denoiser dtype/device policy
        n = self.net(xc)
        return self.return_as(xc - n if self.residual else n, x)

    def lipschitz_upper_bound(self) -> float:
        """Product of per-layer conv bounds (+1 for the residual identity)."""
        b = 1.0
        for layer in self.net:
            if isinstance(layer, nn.Conv2d):
                b *= conv_norm_upper_bound(layer)
        return b + 1.0 if self.residual else b


@dataclass
class DenoiserTrainConfig:
    """Patch training of a denoiser on clean images with Gaussian noise of level `sigma`.

    `lipschitz_penalty` > 0 adds the relaxed firm-nonexpansiveness penalty with `penalty_eps`,
    evaluated on `penalty_batch` samples of each batch with `penalty_iter` power iterations.
    """

    sigma: float = 0.1
    patch_size: int = 24
    n_patches: int = 2048
    epochs: int = 5
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    lipschitz_penalty: float = 0.0
    penalty_eps: float = 0.05
    penalty_iter: int = 5
    penalty_batch: int = 8
    loss: str = "mse"                   # "mse" or "l1" (the paper's denoising term)
    max_steps: int | None = None        # stop after this many optimiser steps in total
    device: str | torch.device | None = None
    progress: bool = False


@dataclass
class DenoiserTrainResult:
    """Per-step loss (denoising term), penalty and `||grad Q||^2` estimate, per-epoch mean
    loss, wall time."""

    step_loss: list[float] = field(default_factory=list)
    step_penalty: list[float] = field(default_factory=list)
    epoch_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    n_steps: int = 0


def _as_image_batch(images, dtype) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise ValueError(f"clean_images: expected (N, H, W) or (N, C, H, W), got "
                         f"{tuple(x.shape)}")
    return x.to(dtype)


def random_patches(images: torch.Tensor, patch_size: int, n_patches: int,
                   generator: torch.Generator) -> torch.Tensor:
    """`n_patches` random `patch_size` crops of random images `(N, C, H, W)`."""
    n, _, h, w = images.shape
    if patch_size > h or patch_size > w:
        raise ValueError(f"patch_size {patch_size} exceeds the image size {h} x {w}")
    idx = torch.randint(0, n, (n_patches,), generator=generator)
    top = torch.randint(0, h - patch_size + 1, (n_patches,), generator=generator)
    left = torch.randint(0, w - patch_size + 1, (n_patches,), generator=generator)
    return torch.stack([images[i, :, t:t + patch_size, l:l + patch_size]
                        for i, t, l in zip(idx.tolist(), top.tolist(), left.tolist(), strict=True)])


def train_denoiser(net: nn.Module, clean_images, config: DenoiserTrainConfig | None = None
                   ) -> DenoiserTrainResult:
    """Train `net` (in place) to denoise `clean + sigma n` patches; Adam; returns the curves."""
    cfg = config or DenoiserTrainConfig()
    if cfg.loss not in ("mse", "l1"):
        raise ValueError(f"loss: expected 'mse' or 'l1', got {cfg.loss!r}")
    if cfg.sigma < 0 or cfg.lipschitz_penalty < 0:
        raise ValueError(f"expected sigma >= 0 and lipschitz_penalty >= 0, got {cfg.sigma} "
                         f"and {cfg.lipschitz_penalty}")
    params = list(net.parameters())
    if not params:
        raise ValueError("net has no trainable parameters")
    device = torch.device(cfg.device) if cfg.device is not None else params[0].device
    dtype = params[0].dtype
    net.to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    images = _as_image_batch(clean_images, dtype)
    patches = random_patches(images, cfg.patch_size, cfg.n_patches, gen).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    res = DenoiserTrainResult()
    t0 = time.perf_counter()
    pen_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    net.train()
    done = False
    for epoch in range(cfg.epochs):
        perm = torch.randperm(patches.shape[0], generator=gen)
        losses = []
        for b0 in range(0, patches.shape[0], cfg.batch_size):
            clean = patches[perm[b0:b0 + cfg.batch_size].to(device)]
            noise = torch.randn(clean.shape, generator=gen, dtype=dtype).to(device)
            noisy = clean + cfg.sigma * noise
            out = net(noisy, cfg.sigma)
            diff = out - clean
            data = diff.pow(2).mean() if cfg.loss == "mse" else diff.abs().mean()
            loss = data
            if cfg.lipschitz_penalty > 0:
                k = min(cfg.penalty_batch, clean.shape[0])
                pen = firm_nonexpansiveness_penalty(net, clean[:k], noisy[:k],
                                                    eps=cfg.penalty_eps,
                                                    n_iter=cfg.penalty_iter, sigma=cfg.sigma,
                                                    generator=pen_gen)
                loss = loss + cfg.lipschitz_penalty * pen
                res.step_penalty.append(float(pen.detach()))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            res.step_loss.append(float(data.detach()))
            losses.append(float(data.detach()))
            res.n_steps += 1
            if cfg.max_steps is not None and res.n_steps >= cfg.max_steps:
                done = True
                break
        res.epoch_loss.append(float(np.mean(losses)) if losses else math.nan)
        if cfg.progress:
            pen_txt = (f", penalty {np.mean(res.step_penalty[-len(losses):]):.4f}"
                       if res.step_penalty else "")
            print(f"epoch {epoch + 1}/{cfg.epochs}: loss {res.epoch_loss[-1]:.5f}{pen_txt} "
                  f"({time.perf_counter() - t0:.1f} s)", flush=True)
        if done:
            break
    net.eval()
    res.seconds = time.perf_counter() - t0
    return res
