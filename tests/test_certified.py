"""Certified Lipschitz bounds of rebuilt primal networks and firmly nonexpansive denoisers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convexnn import ConvexDualDenoiser, sample_generators
from convexnn.certified import FirmlyNonexpansiveDenoiser, fit_firmly_nonexpansive
from convexnn.model.lipschitz import (
    bernstein_factor,
    conv_norm_bound,
    conv_norm_grid,
    dual_lipschitz_bound,
)


def _dense_conv(f: torch.Tensor, n: int) -> torch.Tensor:
    """Matrix of x -> conv2d(x, f, 'same') on n x n images, column by column."""
    eye = torch.eye(f.shape[0] * n * n, dtype=torch.float64).reshape(-1, f.shape[0], n, n)
    return F.conv2d(eye, f[None], padding=f.shape[-1] // 2).reshape(eye.shape[0], -1).T


@pytest.mark.parametrize("c,k", [(1, 3), (2, 3), (1, 5)])
def test_conv_norm_bound_is_valid_and_tight(c, k):
    torch.manual_seed(c * 10 + k)
    filters = torch.randn(6, c, k, k, dtype=torch.float64)
    for f, lo, hi in zip(filters, conv_norm_grid(filters), conv_norm_bound(filters),
                         strict=True):
        exact = float(torch.linalg.matrix_norm(_dense_conv(f, 14), 2))
        assert exact <= float(hi) + 1e-12            # the certificate holds
        assert float(hi) <= 1.15 * exact             # and is not loose by much (14x14 images)
        assert float(lo) <= float(hi)


def test_bernstein_factor():
    assert bernstein_factor(1, 8) == 1.0
    assert bernstein_factor(3, 512) == pytest.approx(1 / (1 - 2 * torch.pi / 512))
    with pytest.raises(ValueError, match="grid"):
        bernstein_factor(7, 16)


@pytest.fixture(scope="module")
def fne(mnist_digits):
    clean = torch.from_numpy(mnist_digits[1:3, 6:22, 6:22].copy()).unsqueeze(1)
    torch.manual_seed(0)
    noisy = clean + 0.5 * torch.randn_like(clean)
    gens = sample_generators(8, 1, 3, seed=1)
    return fit_firmly_nonexpansive(noisy, clean, beta=1e-3, generators=gens), noisy, clean, gens


def test_certificate_bounds_exact_jacobian_norm(fne):
    denoiser, noisy, _, _ = fne
    assert denoiser.lipschitz_certificate <= 1.0 + 1e-12
    q = denoiser.q
    torch.manual_seed(1)
    points = [noisy[:1], noisy[1:2]] + [torch.randn(1, 1, 16, 16, dtype=torch.float64)
                                        for _ in range(4)]
    worst = 0.0
    for x in points:
        jac = torch.autograd.functional.jacobian(q, x, vectorize=True).reshape(256, 256)
        worst = max(worst, float(torch.linalg.matrix_norm(jac, 2)))
    assert 0.0 < worst <= denoiser.lipschitz_certificate + 1e-9


def test_denoiser_is_firmly_nonexpansive(fne):
    denoiser, noisy, _, _ = fne
    torch.manual_seed(2)
    with torch.no_grad():
        for _ in range(50):
            x = noisy[:1] + torch.randn_like(noisy[:1])
            y = noisy[:1] + torch.randn_like(noisy[:1])
            dj = denoiser(x) - denoiser(y)
            # ||Jx - Jy||^2 <= <Jx - Jy, x - y>
            assert float((dj * dj).sum()) <= float((dj * (x - y)).sum()) + 1e-10


def test_constraint_costs_objective_and_denoises(fne):
    denoiser, noisy, clean, gens = fne
    free = ConvexDualDenoiser(beta=1e-3, generators=gens).fit(noisy, 2 * clean - noisy)
    assert free.lipschitz_certificate_ > 1.0      # the constraint is active
    assert denoiser.q_model.objective_ >= free.objective_
    with torch.no_grad():
        err = float(((denoiser(noisy) - clean) ** 2).sum())
    assert err < float(((noisy - clean) ** 2).sum())   # still a denoiser


def test_bound_option_errors(small_pair):
    noisy, clean = small_pair
    with pytest.raises(ValueError, match="lipschitz_bound: expected a positive"):
        ConvexDualDenoiser(lipschitz_bound=0.0)
    with pytest.raises(ValueError, match="solver='cvxpy' only"):
        ConvexDualDenoiser(n_patterns=3, lipschitz_bound=1.0).fit(noisy, clean, solver="admm")
    residual = ConvexDualDenoiser(n_patterns=3, beta=0.1, residual=True).fit(noisy, clean)
    with pytest.raises(ValueError, match="non-residual"):
        FirmlyNonexpansiveDenoiser(residual)


def test_certificate_of_unconstrained_fit(small_pair):
    noisy, clean = small_pair
    m = ConvexDualDenoiser(n_patterns=4, beta=0.1, seed=2).fit(noisy, clean)
    assert m.lipschitz_certificate_ == pytest.approx(dual_lipschitz_bound(m.v_, m.w_))
    q = m.to_primal()
    jac = torch.autograd.functional.jacobian(q, noisy, vectorize=True).reshape(256, 256)
    assert float(torch.linalg.matrix_norm(jac, 2)) <= m.lipschitz_certificate_
