"""Issue 5's guarantee end to end: a certified firmly nonexpansive convex denoiser makes
PnP-PGD deblurring converge, and the certificate bounds the power-iteration estimate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convexnn.certified import fit_firmly_nonexpansive
from convexnn.data.training_patches import natural_image_patches
from convexnn.model.patterns import sample_generators
from convexnn.solvers.lipschitz import jacobian_spectral_norm
from convexnn.solvers.operators import Blur
from convexnn.solvers.pnp import PnPConfig, pnp_pgd


@pytest.fixture(scope="module")
def fne_denoiser():
    clean = torch.from_numpy(natural_image_patches(3, 16, seed=0)).unsqueeze(1)
    noisy = clean + 0.05 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0),
                                       dtype=torch.float64)
    return fit_firmly_nonexpansive(noisy, clean, beta=1e-3,
                                   generators=sample_generators(8, 1, 3, seed=0))


def test_pnp_pgd_converges_with_certified_fne_denoiser(fne_denoiser):
    assert fne_denoiser.firmly_nonexpansive and fne_denoiser.lipschitz_certificate <= 1.0
    from skimage.data import camera

    x_true = torch.from_numpy(camera()[200:232, 200:232] / 255.0).reshape(1, 1, 32, 32)
    g = np.exp(-0.5 * (np.arange(-3, 4) / 1.2) ** 2)
    kernel = np.outer(g, g) / np.outer(g, g).sum()
    physics = Blur(kernel, padding="circular")
    rng = torch.Generator().manual_seed(1)
    y = physics.A(x_true) + 0.01 * torch.randn(x_true.shape, generator=rng, dtype=torch.float64)
    x, hist = pnp_pgd(y, physics, fne_denoiser,
                      PnPConfig(max_iter=500, tol=1e-6, reference=x_true,
                                require_convergence=True, compute_ssim=False))
    c = np.array(hist.rel_change)
    assert hist.converged and c[-1] < 1e-6 and len(c) <= 500
    # c_k = ||x_k - x_{k-1}|| / ||x_0|| is non-increasing for the nonexpansive PnP-FB map
    assert np.all(np.diff(c) <= 1e-12 + 1e-9 * c[:-1])
    assert torch.isfinite(x).all()


def test_certificate_bounds_power_iteration(fne_denoiser):
    x = torch.from_numpy(natural_image_patches(2, 24, seed=5)).unsqueeze(1)
    q_est = jacobian_spectral_norm(fne_denoiser.q, x, n_iter=100, tol=1e-8, mode="J")
    j_est = jacobian_spectral_norm(fne_denoiser, x, n_iter=100, tol=1e-8, mode="J")
    assert 0 < q_est.value <= fne_denoiser.lipschitz_certificate + 1e-9
    assert j_est.value <= (1 + fne_denoiser.lipschitz_certificate) / 2 + 1e-9
