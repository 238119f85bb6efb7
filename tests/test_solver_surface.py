"""The public surface of `convexnn.solvers`: one `Denoiser` protocol kept by every denoiser of the
package, one data term, and one call shape `solver(y, physics, prior, config) -> (x, History)`
kept by every reconstruction solver (registry-parametrised, the deepinv habit)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import CircularConv, gaussian_kernel, primal_model

import convexnn.solvers as solvers
from convexnn import ConvexDualDenoiser, Denoiser, UnrolledDenoiser
from convexnn.solvers import (
    L2,
    Averaged,
    Blur,
    DEQConfig,
    DescentConfig,
    DnCNN,
    EquivariantDenoiser,
    History,
    PnPConfig,
    PODMConfig,
    Rescaled,
    Residual,
    TVDenoiser,
    power_iteration,
    psnr,
)
from convexnn.solvers.energies import MatrixOperator


def test_every_public_name_resolves_and_unknown_names_fail_clearly():
    for name in solvers.__all__:
        assert getattr(solvers, name) is not None
    assert "pnp_pgd" in dir(solvers)
    with pytest.raises(AttributeError, match="no attribute 'pnp_pgdd'"):
        solvers.pnp_pgdd  # noqa: B018


# ------------------------------------------------------------------------------ denoisers
def _fitted_dual() -> ConvexDualDenoiser:
    gen = torch.Generator().manual_seed(0)
    clean = torch.rand((2, 1, 8, 8), generator=gen, dtype=torch.float64)
    noisy = clean + 0.2 * torch.randn(clean.shape, generator=gen, dtype=torch.float64)
    return ConvexDualDenoiser(n_patterns=6, beta=1e-2, seed=0).fit(noisy, clean)


DENOISERS = {
    "primal (eq. 1)": lambda: primal_model(m=4),
    "dual (eq. 4)": _fitted_dual,
    "unrolled": lambda: UnrolledDenoiser(n_iterations=2, n_filters=3, dtype=torch.float64),
    "DnCNN": lambda: DnCNN(depth=3, channels=4),
    "TV": lambda: TVDenoiser(0.1),
    "rescaled": lambda: Rescaled(primal_model(m=4), 2.0, -1.0),
    "averaged": lambda: Averaged(primal_model(m=4)),
    "residual": lambda: Residual(primal_model(m=4)),
    "equivariant": lambda: EquivariantDenoiser(primal_model(m=4)),
}


@pytest.mark.parametrize("name", sorted(DENOISERS))
def test_every_denoiser_keeps_the_policy(name):
    den = DENOISERS[name]()
    assert isinstance(den, Denoiser)
    gen = torch.Generator().manual_seed(1)
    x64 = torch.rand((2, 1, 8, 8), generator=gen, dtype=torch.float64)
    for x in (x64, x64.float()):                 # any float dtype in, the same dtype out
        with torch.no_grad():
            out = den(x, None)
        assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
        assert bool(torch.isfinite(out).all())
    with torch.no_grad():                        # float32 in: float64's answer, rounded
        np.testing.assert_allclose(den(x64.float()).double().numpy(), den(x64).numpy(),
                                   atol=1e-4)
    with pytest.raises(ValueError, match=r"\(B, "):
        den(x64[0], None)                         # a 3-d input: what was expected, what arrived
    assert isinstance(den.firmly_nonexpansive, bool)


def test_declared_certificates_follow_from_the_construction():
    q = CircularConv(torch.tensor([[0, 1, 0], [1, 2, 1], [0, 1, 0]], dtype=torch.float64) / 6)
    assert Averaged(q, 0.5, q_is_nonexpansive=True).lipschitz_certificate == 1.0
    assert Averaged(q, 0.5, q_is_nonexpansive=True).firmly_nonexpansive
    # alpha > 1/2: 2 J - I = (1 - 2 alpha) I + 2 alpha Q has the bound 4 alpha - 1 > 1
    assert Averaged(q, 0.75, q_is_nonexpansive=True).lipschitz_certificate == pytest.approx(2.0)
    assert not Averaged(q, 0.75, q_is_nonexpansive=True).firmly_nonexpansive
    assert Averaged(q).lipschitz_certificate is None and not Averaged(q).firmly_nonexpansive
    assert TVDenoiser(0.1).firmly_nonexpansive
    assert EquivariantDenoiser(TVDenoiser(0.1)).firmly_nonexpansive
    assert not primal_model().firmly_nonexpansive and primal_model().lipschitz_certificate is None


# ------------------------------------------------------------------------------ data term
def test_power_iteration_finds_the_largest_eigenvalue():
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.standard_normal((12, 9)))
    op = MatrixOperator(a)
    top = float(torch.linalg.matrix_norm(a, ord=2)) ** 2
    v = torch.from_numpy(rng.standard_normal((1, 9)))
    lam = power_iteration(lambda u: op.A_adjoint(op.A(u)), v, n_iter=2000, tol=1e-14)
    assert lam == pytest.approx(top, rel=1e-8)
    assert L2.lipschitz(op, v) == pytest.approx(top, rel=1e-6)


def test_l2_gradient_is_the_gradient_of_its_value():
    op = Blur(gaussian_kernel(5, 1.0))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((2, 1, 10, 10), generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.rand((2, 1, 10, 10), generator=gen, dtype=torch.float64)
    (g,) = torch.autograd.grad(L2.value(x, y, op).sum(), x)
    np.testing.assert_allclose(L2.grad(x.detach(), y, op).numpy(), g.numpy(), atol=1e-12)
    np.testing.assert_allclose(op.gradient(x.detach(), y).numpy(), g.numpy(), atol=1e-12)


# ------------------------------------------------------------------------------ call shape
@pytest.fixture(scope="module")
def deblur():
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16, dtype=torch.float64),
                            torch.linspace(-1, 1, 16, dtype=torch.float64), indexing="ij")
    clean = (0.5 + 0.4 * torch.sign(0.5 - xx.abs()) * torch.sign(0.5 - yy.abs()))[None, None]
    op = Blur(gaussian_kernel(5, 1.0))
    y = op.A(clean) + 0.01 * torch.randn(clean.shape, generator=gen, dtype=torch.float64)
    return clean, op, y, TVDenoiser(0.05)


def _pnp(name):
    return lambda y, op, den, clean: getattr(solvers, name)(
        y, op, den, PnPConfig(max_iter=60, reference=clean))


SOLVERS = {name: _pnp(name) for name in ("pnp_pgd", "pnp_admm", "pnp_hqs", "pnp_drs", "red")}
SOLVERS["podm"] = lambda y, op, den, clean: solvers.podm(
    y, op, solvers.Box(0.0, 1.0), den, PODMConfig(n_stages=10), x_ref=clean)
SOLVERS["energy_dissipation_solve"] = lambda y, op, den, clean: solvers.energy_dissipation_solve(
    y, op, None, DescentConfig(max_iter=60, reference=clean))
SOLVERS["deq_solve"] = lambda y, op, den, clean: solvers.deq_solve(
    y, op, den, DEQConfig(form="prox", max_iter=60, tol=1e-6), x_ref=clean)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_every_reconstruction_solver_returns_x_and_one_history(name, deblur):
    clean, op, y, den = deblur
    x, hist = SOLVERS[name](y, op, den, clean)
    assert isinstance(x, torch.Tensor) and x.shape == clean.shape
    assert bool(torch.isfinite(x).all())
    assert isinstance(hist, History) and len(hist) >= 1 and hist.stop_reason
    assert hist.psnr[-1] == pytest.approx(psnr(x, clean), abs=0.5)   # the record tracks x
    assert psnr(x, clean) > psnr(y, clean) + 0.5                      # and it reconstructs
    assert History.from_dict(hist.to_dict()).to_dict() == hist.to_dict()


def test_deq_solve_is_the_forward_fixed_point(deblur):
    clean, op, y, den = deblur
    deq = solvers.DEQ(op, den, DEQConfig(form="prox", max_iter=200, tol=1e-8))
    x, hist = deq.solve(y, x_ref=clean)
    with torch.no_grad():
        np.testing.assert_allclose(x.numpy(), deq(y).numpy(), atol=1e-12)
    assert hist.converged and len(hist) == deq.last_forward_stats_.iterations
    assert hist.residual[-1] <= 1e-8
