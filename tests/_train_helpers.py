"""Tiny real-MNIST problems for the trainer tests (crops keep them fast)."""

from __future__ import annotations

import torch

from convexnn.data import NoiseConfig, add_noise, mnist_denoising_split


def tiny_mnist(n_train: int = 4, n_test: int = 2, crop: int = 14, sigma: float = 0.5,
               dtype=torch.float64):
    s = mnist_denoising_split(n_train=n_train, n_test=n_test, seed=0, dtype=dtype)
    lo = (28 - crop) // 2
    tr = s.train_clean[:, :, lo:lo + crop, lo:lo + crop].contiguous()
    te = s.test_clean[:, :, lo:lo + crop, lo:lo + crop].contiguous()
    return (add_noise(tr, NoiseConfig("gaussian", sigma, 0)), tr,
            add_noise(te, NoiseConfig("gaussian", sigma, 1)), te)
