"""Synthetic measurement noise for the denoising experiments (paper App. B.1).

Noise is drawn with ``numpy.random.default_rng(seed)`` in float64 on the CPU and then cast to
the input's dtype and device, so a seed gives the same noisy images on every machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

__all__ = ["NoiseConfig", "NOISE_KINDS", "add_noise", "add_gaussian_noise",
           "add_exponential_noise"]

NOISE_KINDS = ("gaussian", "exponential")

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


@dataclass(frozen=True)
class NoiseConfig:
    """Additive i.i.d. noise: ``kind`` in {"gaussian", "exponential"}, scale ``sigma``, ``seed``.

    gaussian: ``clean + sigma * N(0, 1)``. exponential: ``clean + Exp(scale=sigma)``: mean
    sigma, std sigma, non-negative, NOT zero-mean (paper App. B.1, "i.i.d. exponentially
    distributed noise"). `sigma` is in the units of the images it is added to (for normalised
    MNIST: units of the dataset std).
    """

    kind: str = "gaussian"
    sigma: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or self.kind.lower() not in NOISE_KINDS:
            raise ValueError(f"NoiseConfig.kind: expected one of {list(NOISE_KINDS)}, "
                             f"got {self.kind!r}")
        object.__setattr__(self, "kind", self.kind.lower())
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float, np.number)):
            raise ValueError(f"NoiseConfig.sigma: expected a positive finite number, "
                             f"got {self.sigma!r}")
        if not math.isfinite(float(self.sigma)) or float(self.sigma) <= 0:
            raise ValueError(f"NoiseConfig.sigma: expected a positive finite number, "
                             f"got {self.sigma!r}")
        object.__setattr__(self, "sigma", float(self.sigma))
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) \
                or self.seed < 0:
            raise ValueError(f"NoiseConfig.seed: expected a non-negative integer, "
                             f"got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))


def _sample(shape: tuple[int, ...], config: NoiseConfig) -> np.ndarray:
    rng = np.random.default_rng(config.seed)
    if config.kind == "gaussian":
        return config.sigma * rng.standard_normal(shape)
    return rng.exponential(scale=config.sigma, size=shape)


def add_noise(clean: ArrayT, config: NoiseConfig) -> ArrayT:
    """``clean`` plus i.i.d. noise from `config`; same type, shape, dtype (and device) as `clean`.

    Accepts floating numpy arrays and torch tensors of any shape; integer images must be
    converted to float first (e.g. with ``normalize_mnist``).
    """
    if not isinstance(config, NoiseConfig):
        raise TypeError(f"config: expected a NoiseConfig, got {type(config).__name__}")
    if isinstance(clean, torch.Tensor):
        if not clean.is_floating_point():
            raise TypeError(f"clean: expected a floating-point tensor, got dtype {clean.dtype}")
        noise = torch.from_numpy(_sample(tuple(clean.shape), config))
        return clean + noise.to(dtype=clean.dtype, device=clean.device)
    if isinstance(clean, np.ndarray):
        if not np.issubdtype(clean.dtype, np.floating):
            raise TypeError(f"clean: expected a floating-point array, got dtype {clean.dtype}")
        return clean + _sample(clean.shape, config).astype(clean.dtype, copy=False)
    raise TypeError(f"clean: expected a numpy array or torch tensor, got {type(clean).__name__}")


def add_gaussian_noise(x: ArrayT, sigma: float, seed: int = 0) -> ArrayT:
    """``x + sigma * N(0, 1)`` i.i.d., seeded."""
    return add_noise(x, NoiseConfig("gaussian", sigma, seed))


def add_exponential_noise(x: ArrayT, scale: float, seed: int = 0) -> ArrayT:
    """``x + Exp(scale)`` i.i.d., seeded; non-negative noise with mean `scale` (not zero-mean)."""
    return add_noise(x, NoiseConfig("exponential", scale, seed))
