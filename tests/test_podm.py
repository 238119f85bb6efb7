"""PODM (convexnn.solvers.podm): closed-form propagation, the descent guarantee for any network,
fallback, convergence, baselines and input errors. Tiny images; runs in well under a minute."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from convexnn.solvers.operators import Blur, Downsample, Identity, Inpainting
from convexnn.solvers.pnp import data_prox
from convexnn.solvers.podm import (
    PODMConfig,
    Propagation,
    fista,
    momentum_prox_step,
    optimality_error,
    podm,
    proximal_gradient,
)
from convexnn.solvers.prox import L0, L1, Box, HaarWavelet, InBasis, Lp, SparseBox

torch.set_num_threads(1)
F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_operator(kind: str, seed: int, size: int = 8):
    g = _gen(seed)
    if kind == "blur":
        k = torch.rand(3, 3, generator=g, dtype=F64) + 0.05
        return Blur(k / k.sum())
    if kind == "avgpool":
        return Downsample(2)
    if kind == "bicubic":
        return Downsample(2, "bicubic")
    if kind == "inpaint":
        return Inpainting((torch.rand(size, size, generator=g) > 0.4).to(F64))
    return Identity()


def make_prox(kind: str, lam: float, p: float):
    return {"l1": L1(lam), "lp": Lp(lam, p), "l0": L0(lam), "box": Box(0.0, 1.0),
            "sparsebox": SparseBox(0.0, 1.0, s=40), "haar-lp": InBasis(Lp(lam, p),
                                                                         HaarWavelet(2))}[kind]


class RandomConvNet(nn.Module):
    """An untrained float32 conv-ReLU-conv net with random weights of random scale."""

    def __init__(self, seed: int, scale: float, residual: bool) -> None:
        super().__init__()
        g = _gen(seed)
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 1, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(scale * torch.randn(p.shape, generator=g))
        self.residual = residual

    def forward(self, x, sigma=None):
        out = self.c2(torch.relu(self.c1(x)))
        return x + out if self.residual else out


def make_network(kind: str, seed: int, scale: float):
    g = _gen(seed)
    if kind == "conv":
        return RandomConvNet(seed, scale, residual=False)
    if kind == "residual-conv":
        return RandomConvNet(seed, scale, residual=True)
    if kind == "noise":
        return lambda x, sigma=None: x + scale * 1e3 * torch.randn(x.shape, generator=g,
                                                                   dtype=x.dtype)
    if kind == "garbage":
        return lambda x, sigma=None: torch.rand(x.shape, generator=g, dtype=x.dtype) * 1e6
    if kind == "nan":
        return lambda x, sigma=None: torch.full_like(x, math.nan)
    if kind == "inf":
        return lambda x, sigma=None: torch.full_like(x, math.inf)
    if kind == "flip":
        return lambda x, sigma=None: -scale * 100 * x.flip(-1)
    return None   # identity network


def problem(op_kind: str, seed: int, noise: float = 0.05):
    g = _gen(seed + 1)
    x = torch.rand(1, 1, 8, 8, generator=g, dtype=F64)
    op = make_operator(op_kind, seed)
    y = op.A(x)
    return op, y + noise * torch.randn(y.shape, generator=g, dtype=F64), x


def assert_phi_monotone(hist) -> None:
    phis = [hist.flags["phi0"], *hist.energy]
    assert all(b <= a for a, b in zip(phis, phis[1:], strict=False)), phis


OPS = ["blur", "avgpool", "bicubic", "inpaint", "identity"]
PRIORS = ["l1", "lp", "l0", "box", "sparsebox", "haar-lp"]


@settings(max_examples=600, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), op=st.sampled_from(OPS), prior=st.sampled_from(PRIORS),
       net=st.sampled_from(["conv", "residual-conv", "identity"]),
       scale=st.floats(1e-3, 10.0), lam=st.floats(1e-4, 1.0), p=st.floats(0.05, 1.0),
       mu=st.floats(1e-3, 10.0), c=st.one_of(st.none(), st.floats(1e-4, 10.0)))
def test_phi_never_increases_for_random_untrained_networks(seed, op, prior, net, scale, lam, p,
                                                           mu, c):
    physics, y, _ = problem(op, seed)
    cfg = PODMConfig(n_stages=4, mu=mu, c=c, tol=0.0, compute_ssim=False)
    _, hist = podm(y, physics, make_prox(prior, lam, p), make_network(net, seed, scale), cfg)
    assert_phi_monotone(hist)
    assert len(hist) == 4 and all(math.isfinite(e) for e in hist.energy)


@settings(max_examples=400, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), op=st.sampled_from(OPS), prior=st.sampled_from(PRIORS),
       net=st.sampled_from(["noise", "garbage", "nan", "inf", "flip"]),
       scale=st.floats(1e-3, 10.0), lam=st.floats(1e-4, 1.0), mu=st.floats(1e-3, 10.0),
       step_factor=st.floats(0.05, 0.99))
def test_phi_never_increases_for_adversarial_networks(seed, op, prior, net, scale, lam, mu,
                                                      step_factor):
    physics, y, _ = problem(op, seed)
    L = physics.norm(physics.A_adjoint(y))
    cfg = PODMConfig(n_stages=4, mu=mu, step=step_factor / L, tol=0.0, compute_ssim=False)
    _, hist = podm(y, physics, make_prox(prior, lam, 0.8), make_network(net, seed, scale), cfg)
    assert_phi_monotone(hist)
    assert all(math.isfinite(e) for e in hist.energy)


@pytest.mark.parametrize("net", ["garbage", "nan", "noise"])
def test_fallback_fires_for_garbage_network(net):
    physics, y, _ = problem("blur", 0)
    x, hist = podm(y, physics, Lp(1e-2, 0.8), make_network(net, 0, 1.0),
                   PODMConfig(n_stages=10, tol=0.0, compute_ssim=False))
    assert all(hist.series("fallback")) and hist.flags["n_fallback"] == 10
    ref, _ = proximal_gradient(y, physics, Lp(1e-2, 0.8),
                               PODMConfig(n_stages=10, tol=0.0, compute_ssim=False))
    assert torch.allclose(x, ref, atol=1e-12)    # all-feedback PODM = proximal gradient


def test_good_network_is_accepted_and_iterates_converge():
    """With the identity network and a convex prior, x_G is accepted at first and the
    iterates converge: the relative change falls below 1e-9."""
    physics, y, x_true = problem("avgpool", 3, noise=0.01)
    cfg = PODMConfig(n_stages=400, mu=1.0, tol=1e-9, compute_ssim=False)
    x, hist = podm(y, physics, L1(1e-3), None, cfg, x_ref=x_true)
    assert hist.converged and hist.rel_change[-1] < 1e-9
    assert hist.flags["n_accepted"] > 0
    assert_phi_monotone(hist)
    xf, hf = fista(y, physics, L1(1e-3), PODMConfig(n_stages=3000, tol=1e-13,
                                                    compute_ssim=False))
    assert hist.energy[-1] == pytest.approx(hf.energy[-1], rel=1e-6)  # same convex minimum
    for key in ("rel_error", "recon_error", "optimality_error", "optimality_bound",
                "fallback"):
        assert hist.series(key)[0] is not None
    assert hist.psnr[-1] is not None


@pytest.mark.parametrize("op", ["avgpool", "inpaint", "identity"])
def test_relative_change_goes_to_zero_with_random_network_and_lp(op):
    physics, y, _ = problem(op, 5)
    _, hist = podm(y, physics, Lp(0.1, 0.8), RandomConvNet(5, 0.3, True),
                   PODMConfig(n_stages=300, mu=1.0, tol=1e-10, compute_ssim=False))
    assert hist.rel_change[-1] < 1e-8
    assert_phi_monotone(hist)


def test_propagation_closed_forms_match_cg():
    g = _gen(11)
    x = torch.rand(2, 1, 24, 24, generator=g, dtype=F64)
    ops = [Blur(torch.rand(5, 4, generator=g, dtype=F64)), Downsample(2), Downsample(3),
           Downsample(2, "bicubic"), Downsample(4, "bicubic"), Identity()]
    for op in ops:
        y = op.A(x)
        xa = torch.randn(x.shape, generator=g, dtype=F64)
        for mu in (1e-3, 1e-1, 3.0):
            F = Propagation(op, y, mu)
            assert F.method != "cg"
            ref = data_prox(op, xa, y, 1.0 / mu, n_iter=2000, tol=1e-14)
            assert float((F(xa) - ref).norm() / ref.norm()) < 1e-10, (type(op).__name__, mu)
            # eq. 3 optimality: A^T (A x - y) + mu (x - x_A) = 0
            xf = F(xa)
            assert float((op.gradient(xf, y) + mu * (xf - xa)).norm()) < 1e-9
    assert Propagation(Inpainting(torch.ones(4, 4)), torch.zeros(1, 1, 4, 4), 1.0).method == "cg"


def test_optimality_error_formula():
    """psi with H = mu I / 2 simplifies to (1/gamma - mu)(x~ - x_G) + grad f(x_G) - grad f(x~),
    and it vanishes when x~ = x_G is a fixed point."""
    g = _gen(2)
    xt, xg, xp, gt, gg = (torch.randn(1, 1, 4, 4, generator=g, dtype=F64) for _ in range(5))
    psi = optimality_error(xt, xg, xp, gt, gg, 0.5, 0.3)
    assert torch.allclose(psi, (1 / 0.5 - 0.3) * (xt - xg) + gg - gt)
    assert torch.allclose(momentum_prox_step(xt, xp, gt, Box(-10, 10), 0.5, 0.3),
                          xt - 0.5 * (gt + 0.3 * (xt - xp)))


def test_relaxed_and_naive_modes_and_baselines():
    physics, y, x_true = problem("blur", 4, noise=0.01)
    net = RandomConvNet(4, 0.05, True)
    for mode in ("always", "none"):
        _, h = podm(y, physics, SparseBox(0.0, 1.0), net,
                    PODMConfig(n_stages=5, optimality=mode, tol=0.0, compute_ssim=False),
                    x_ref=x_true)
        assert len(h) == 5 and "fallback" not in h.records[0].flags
    for solver in (fista, proximal_gradient):
        _, h = solver(y, physics, L1(1e-3), PODMConfig(n_stages=20, tol=0.0), x_ref=x_true)
        assert len(h) == 20 and h.ssim[-1] is not None
    _, h = proximal_gradient(y, physics, L1(1e-3), PODMConfig(n_stages=20, tol=0.0))
    assert_phi_monotone(h)


def test_denoiser_dtype_and_device_follow_the_input():
    physics, y, _ = problem("avgpool", 6)
    x, _ = podm(y, physics, L1(1e-3), RandomConvNet(6, 0.1, True),   # float32 net, float64 y
                PODMConfig(n_stages=2, compute_ssim=False))
    assert x.dtype == F64 and x.device == y.device


def test_bad_input_errors():
    physics, y, x = problem("blur", 0)
    with pytest.raises(ValueError, match="mu: expected a finite number > 0, got 0"):
        PODMConfig(mu=0)
    with pytest.raises(ValueError, match="mu: expected a finite number > 0, got -1"):
        PODMConfig(mu=-1.0)
    with pytest.raises(ValueError, match="c: expected a finite number > 0 or None, got 0"):
        PODMConfig(c=0)
    with pytest.raises(ValueError, match="c: expected .* got -0.5"):
        PODMConfig(c=-0.5)
    with pytest.raises(ValueError, match="n_stages: expected a positive integer, got 0"):
        PODMConfig(n_stages=0)
    with pytest.raises(ValueError, match="optimality: expected one of"):
        PODMConfig(optimality="sometimes")
    with pytest.raises(ValueError, match=r"expected 0 < p <= 1.*got 1.2"):
        Lp(1.0, 1.2)
    cfg = PODMConfig(n_stages=2)
    cfg.mu = -3.0                          # mutated after construction: caught at the solve
    with pytest.raises(ValueError, match="mu: .* got -3.0"):
        podm(y, physics, L1(0.1), None, cfg)
    with pytest.raises(ValueError, match=r"expected measurements of shape \(\*, \*, 8, 8\), "
                                         r"got Tensor of shape \(1, 1, 9, 9\)"):
        podm(torch.zeros(1, 1, 9, 9, dtype=F64), Downsample(3, in_shape=(1, 24, 24)),
             L1(0.1), None, PODMConfig(x0=torch.zeros(1, 1, 24, 24, dtype=F64)))
    with pytest.raises(ValueError, match=r"maps images of shape \(1, 1, 4, 4\) to measurements "
                                         r"\(1, 1, 4, 4\), but y has shape \(1, 1, 8, 8\)"):
        podm(y, physics, L1(0.1), None, PODMConfig(x0=torch.zeros(1, 1, 4, 4)))
    with pytest.raises(ValueError, match=r"reference: expected the image shape \(1, 1, 8, 8\), "
                                         r"got \(8, 8\)"):
        podm(y, physics, L1(0.1), None, x_ref=x[0, 0])
    with pytest.raises(TypeError, match="prox: expected a convexnn.solvers.prox.Prox"):
        podm(y, physics, lambda v, s: v, None)
    with pytest.raises(TypeError, match="config: expected PODMConfig, got dict"):
        fista(y, physics, L1(0.1), {"n_stages": 3})
    with pytest.raises(TypeError, match="y: expected a torch.Tensor of measurements, got ndarray"):
        podm(y.numpy(), physics, L1(0.1), None)
    with pytest.raises(ValueError, match=r"denoiser: expected an output of the input's shape "
                                         r"\(1, 1, 8, 8\), got \(1, 1, 4, 4\)"):
        podm(y, physics, L1(0.1), lambda z, sigma=None: z[..., :4, :4])
