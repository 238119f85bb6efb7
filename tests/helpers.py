"""Helpers shared by the tests: tiny real-MNIST problems (crops keep them fast), random image
pairs, a linear denoiser with a known norm, a small primal network."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from convexnn import TwoLayerConvDenoiser
from convexnn.data import NoiseConfig, add_noise, mnist_denoising_split


def tiny_mnist(n_train: int = 4, n_test: int = 2, crop: int = 14, sigma: float = 0.5,
               dtype=torch.float64):
    s = mnist_denoising_split(n_train=n_train, n_test=n_test, seed=0, dtype=dtype)
    lo = (28 - crop) // 2
    tr = s.train_clean[:, :, lo:lo + crop, lo:lo + crop].contiguous()
    te = s.test_clean[:, :, lo:lo + crop, lo:lo + crop].contiguous()
    return (add_noise(tr, NoiseConfig("gaussian", sigma, 0)), tr,
            add_noise(te, NoiseConfig("gaussian", sigma, 1)), te)


def random_pair(seed: int = 0, n: int = 1, h: int = 6, channels: int = 1):
    """Gaussian clean images (n, 1, h, h) and noisy inputs with `channels` channels (the first
    the noisy image, the others pure noise), numpy float64."""
    rng = np.random.default_rng(seed)
    clean = rng.standard_normal((n, 1, h, h))
    noisy = np.concatenate([clean + 0.5 * rng.standard_normal(clean.shape)]
                           + [rng.standard_normal(clean.shape) for _ in range(channels - 1)], 1)
    return noisy, clean


def primal_model(seed: int = 0, m: int = 8) -> TwoLayerConvDenoiser:
    torch.manual_seed(seed)
    return TwoLayerConvDenoiser(n_filters=m, dtype=torch.float64)


class CircularConv(torch.nn.Module):
    """Linear denoiser: circular cross-correlation with a fixed kernel (known operator norm)."""

    def __init__(self, kernel: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("kernel", kernel.reshape(1, 1, *kernel.shape[-2:]))

    def forward(self, x, sigma=None):
        p = self.kernel.shape[-1] // 2
        return F.conv2d(F.pad(x, (p, p, p, p), mode="circular"), self.kernel.to(x.dtype))


def gaussian_kernel(size: int = 5, s: float = 1.0) -> torch.Tensor:
    """A normalised Gaussian blur kernel (size, size), float64."""
    g = torch.exp(-(torch.arange(size, dtype=torch.float64) - size // 2) ** 2 / (2 * s * s))
    k = g[:, None] * g[None]
    return k / k.sum()


def piecewise_smooth_pairs(n: int = 6, size: int = 16, seed: int = 0, sigma: float = 0.1):
    """Piecewise-smooth images (blocks + a ramp) and seeded Gaussian noise: (noisy, clean)."""
    gen = torch.Generator().manual_seed(seed)
    blocks = torch.rand((n, 1, size // 4, size // 4), generator=gen, dtype=torch.float64)
    clean = F.interpolate(blocks, scale_factor=4, mode="nearest")
    clean = 0.7 * clean + 0.3 * torch.linspace(0, 1, size, dtype=torch.float64)
    noisy = clean + sigma * torch.randn(clean.shape, generator=gen, dtype=torch.float64)
    return noisy, clean
