"""Shared fixtures: small real MNIST problems (the shipped official test digits)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convexnn.data import NoiseConfig, add_noise, load_mnist, normalize_mnist

# One intra-op thread: tiny tensors gain nothing from more, and on a busy 2-core machine
# thread hand-offs made some tests 10-100x slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def mnist_digits() -> np.ndarray:
    """The first 16 shipped MNIST test digits, normalised, float64 (16, 28, 28)."""
    return np.asarray(normalize_mnist(load_mnist("test")[:16].astype(np.float64)))


@pytest.fixture(scope="session")
def small_pair(mnist_digits):
    """One real digit cropped to 16 x 16 around its centre, sigma = 0.5 noise: (noisy, clean)."""
    clean = torch.from_numpy(mnist_digits[:1, 6:22, 6:22].copy()).unsqueeze(1)
    noisy = add_noise(clean, NoiseConfig("gaussian", 0.5, seed=0))
    return noisy, clean


@pytest.fixture(scope="session")
def digit_pair(mnist_digits):
    """One full real 28 x 28 digit with sigma = 0.5 noise: (noisy, clean)."""
    clean = torch.from_numpy(mnist_digits[:1].copy()).unsqueeze(1)
    noisy = add_noise(clean, NoiseConfig("gaussian", 0.5, seed=1))
    return noisy, clean
