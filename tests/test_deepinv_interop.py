"""Two-way adapters with the real deepinv: denoisers, physics and deepinv's own PnP-PGD."""

from __future__ import annotations

import sys

import pytest
import torch
from helpers import CircularConv, gaussian_kernel

from convexnn.solvers import deepinv_adapter as ad
from convexnn.solvers.denoisers import Averaged
from convexnn.solvers.dncnn import DnCNN
from convexnn.solvers.lipschitz import jacobian_spectral_norm
from convexnn.solvers.operators import Blur
from convexnn.solvers.pnp import PnPConfig, pnp_pgd

dinv = pytest.importorskip("deepinv")





def _img(shape=(1, 1, 16, 16), seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_denoiser_round_trips():
    torch.manual_seed(0)
    ours = DnCNN(depth=3, channels=4, dtype=torch.float64)
    x = _img()
    theirs = ad.to_deepinv_denoiser(ours)
    assert isinstance(theirs, dinv.models.Denoiser)
    assert torch.equal(theirs(x, 0.1), ours(x, 0.1))
    assert torch.equal(theirs(x, torch.tensor([0.1])), ours(x))      # (B,) sigma from deepinv
    assert ad.from_deepinv_denoiser(theirs) is ours
    model = dinv.models.DnCNN(in_channels=1, out_channels=1, depth=3, nf=4, pretrained=None)
    wrapped = ad.from_deepinv_denoiser(model, default_sigma=0.05)
    xf = x.float()
    assert torch.equal(wrapped(xf), model(xf, 0.05))
    assert torch.equal(wrapped(xf, 0.2), model(xf, 0.2))
    assert ad.to_deepinv_denoiser(wrapped) is model


def test_physics_round_trips():
    ours = Blur(gaussian_kernel(5, 1.0))
    x, y = _img(seed=1), _img(seed=2)
    theirs = ad.to_deepinv_physics(ours)
    assert isinstance(theirs, dinv.physics.LinearPhysics)
    assert torch.equal(theirs.A(x), ours.A(x)) and torch.equal(theirs(x), ours.A(x))
    assert torch.equal(theirs.A_adjoint(y), ours.A_adjoint(y))
    assert ad.from_deepinv_physics(theirs) is ours
    # a native deepinv operator in our protocol
    blur = dinv.physics.Blur(filter=gaussian_kernel(3, 0.7)[None, None].float(),
                             padding="circular")
    op = ad.from_deepinv_physics(blur)
    xf, yf = x.float(), y.float()
    assert torch.equal(op.A(xf), blur.A(xf)) and torch.equal(op.A_adjoint(yf), blur.A_adjoint(yf))
    assert float((op.A(xf) * yf).sum()) == pytest.approx(float((xf * op.A_adjoint(yf)).sum()),
                                                         rel=1e-5)
    assert op.norm(xf, n_iter=100, tol=1e-6) == pytest.approx(
        float(blur.compute_sqnorm(xf, max_iter=100, tol=1e-6, verbose=False)), rel=1e-3)
    assert torch.allclose(op.gradient(xf, yf), blur.A_adjoint(blur.A(xf) - yf))
    assert ad.to_deepinv_physics(op) is blur
    with pytest.raises(TypeError, match="LinearPhysics"):
        ad.from_deepinv_physics(ours)
    with pytest.raises(TypeError, match="A_adjoint"):
        ad.to_deepinv_physics(object())


def test_deepinv_pgd_matches_our_pnp_pgd():
    clean = _img(seed=3)
    op = Blur(gaussian_kernel(5, 1.0))
    y = op.A(clean) + 0.01 * _img(seed=4)
    q = torch.tensor([[0, 1, 0], [1, 2, 1], [0, 1, 0]], dtype=torch.float64) / 6
    den = Averaged(CircularConv(q))
    gamma, n = 0.9, 25
    ours, hist = pnp_pgd(y, op, den, PnPConfig(step=gamma, lipschitz=1.0, max_iter=n, tol=0.0))
    iterates = []

    def grab(_, x_prev, x):
        iterates.append(x.detach().clone())
        return 0.0

    algo = dinv.optim.PGD(data_fidelity=dinv.optim.L2(),
                          prior=dinv.optim.PnP(ad.to_deepinv_denoiser(den)),
                          stepsize=gamma, sigma_denoiser=None, max_iter=n, early_stop=False,
                          custom_metrics={"iterate": grab})
    theirs, _ = algo(y, ad.to_deepinv_physics(op), compute_metrics=True)
    assert len(iterates) == n
    assert float((theirs - ours).abs().max()) < 1e-6
    # every iterate agrees: rebuild ours step by step
    x = op.A_adjoint(y)
    for k in range(n):
        x = den(x - gamma * op.A_adjoint(op.A(x) - y))
        assert float((iterates[k] - x[0]).abs().max()) < 1e-6
    assert hist.n_iter == n


def test_our_pgd_with_deepinv_physics_and_denoiser():
    blur = dinv.physics.Blur(filter=gaussian_kernel(3, 0.7)[None, None].float(),
                             padding="circular")
    model = dinv.models.DnCNN(in_channels=1, out_channels=1, depth=3, nf=4, pretrained=None)
    y = blur.A(_img(seed=5).float())
    x, hist = pnp_pgd(y, ad.from_deepinv_physics(blur), ad.from_deepinv_denoiser(model, 0.05),
                      PnPConfig(max_iter=4, relaxation=0.5))
    assert torch.isfinite(x).all() and hist.n_iter == 4 and hist.flags["L"] > 0


def test_spectral_norm_matches_deepinv_regulariser():
    from convexnn.solvers.lipschitz import fft_conv_norm

    skew = torch.tensor([[0.1, 0.6, 0.0], [0.0, 0.5, 0.3], [0.0, 0.0, -0.2]],
                        dtype=torch.float64)
    net = CircularConv(skew)
    x = _img((1, 1, 8, 8), seed=6)
    exact = fft_conv_norm(skew, (8, 8))
    ours = jacobian_spectral_norm(net, x, n_iter=300, tol=1e-12).value
    xr = x.clone().requires_grad_()
    theirs = dinv.loss.JacobianSpectralNorm(max_iter=300, tol=1e-12, eval_mode=True)(net(xr), xr)
    assert ours == pytest.approx(exact, abs=1e-4)
    assert float(theirs.detach()) == pytest.approx(ours, abs=1e-4)
    delta = torch.zeros(3, 3, dtype=torch.float64)
    delta[1, 1] = 1
    ours_q = jacobian_spectral_norm(net, x, n_iter=300, tol=1e-12, mode="Q").value
    theirs_q = dinv.loss.FNEJacobianSpectralNorm(max_iter=300, tol=1e-12, eval_mode=True)(
        x.clone(), x.clone(), net)
    assert ours_q == pytest.approx(fft_conv_norm(2 * skew - delta, (8, 8)), abs=1e-4)
    assert float(theirs_q.detach()) == pytest.approx(ours_q, abs=1e-4)


def test_missing_deepinv_gives_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "deepinv", None)
    ad._denoiser_class.cache_clear()
    ad._physics_class.cache_clear()
    try:
        with pytest.raises(ImportError, match="pip install deepinv"):
            ad.to_deepinv_denoiser(lambda x, sigma=None: x)
        with pytest.raises(ImportError, match="pip install deepinv"):
            ad.from_deepinv_physics(object())
    finally:
        ad._denoiser_class.cache_clear()
        ad._physics_class.cache_clear()
