"""Deep-equilibrium networks and JFB (convexnn.solvers.deq, convexnn.solvers.deq_train) on tiny
blur problems."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import gaussian_kernel
from torch import nn

from convexnn import ConvexDualDenoiser, TwoLayerConvDenoiser
from convexnn.solvers.deq import DEQ, DEQConfig, NonContractiveError, fixed_point
from convexnn.solvers.deq_train import (
    ConvexRegulariser,
    DEQTrainConfig,
    contraction_penalty,
    deq_network_from_convex,
    spectral_normalize,
    train_deq,
)
from convexnn.solvers.lipschitz import conv_norm_upper_bound
from convexnn.solvers.operators import Blur
from convexnn.solvers.pnp import ConvergenceError
from convexnn.train.checkpoint import CheckpointMismatchError

F64 = torch.float64   # tests/conftest.py runs everything on one thread



class SmallNet(nn.Module):
    """``c x + net(x)`` with ``Lip(net) <= eps`` (layer-wise bound): conv-ReLU-conv, biases."""

    def __init__(self, c: float = 0.3, eps: float = 0.2, width: int = 4, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.c = c
        self.l1 = nn.Conv2d(1, width, 3, padding=1, dtype=F64)
        self.l2 = nn.Conv2d(width, 1, 3, padding=1, dtype=F64)
        with torch.no_grad():
            bound = conv_norm_upper_bound(self.l1) * conv_norm_upper_bound(self.l2)
            self.l2.weight.mul_(eps / bound)

    def forward(self, x, sigma=None):
        return self.c * x + self.l2(torch.relu(self.l1(x)))


def problem(seed: int = 0, n: int = 2, size: int = 8, blur: float = 1.0):
    gen = torch.Generator().manual_seed(seed)
    physics = Blur(gaussian_kernel(5, blur), in_shape=(1, size, size))
    x = torch.rand(n, 1, size, size, generator=gen, dtype=F64)
    d = physics.A(x) + 0.01 * torch.randn(x.shape, generator=gen, dtype=F64)
    return physics, d, x


def flat_grad(loss, params) -> torch.Tensor:
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])


TIGHT = dict(tol=1e-12, max_iter=1000, backward_tol=1e-12, backward_max_iter=1000)


# ---------------------------------------------------------------------------- the guarantee
def test_jfb_is_a_descent_direction_on_random_contractive_instances():
    """Slide "JFB Conditions": for a contractive T the JFB direction p has <p, g> > 0 with the
    exact implicit gradient g; 60 random instances, both forms, measured contraction < 1."""
    cosines = []
    for seed in range(60):
        gen = torch.Generator().manual_seed(seed)
        u = torch.rand(3, generator=gen, dtype=F64)
        form = "gradient" if seed % 2 == 0 else "prox"
        c = 0.2 + 0.4 * float(u[0]) if form == "gradient" else 0.5 * float(u[0])
        net = SmallNet(c=c, eps=0.05 + 0.3 * float(u[1]), seed=seed)
        physics, d, x_true = problem(seed, blur=0.6 + float(u[2]))
        deq = DEQ(physics, net, DEQConfig(form=form, anderson_m=5, **TIGHT))
        params = list(net.parameters())
        grads = {}
        for mode in ("jfb", "implicit"):
            deq.config.backward = mode
            loss = 0.5 * (deq(d) - x_true).pow(2).sum()
            grads[mode] = flat_grad(loss, params)
        assert deq.last_backward_stats_.converged
        assert deq.contraction_factor(d, n_iter=30).value < 1.0
        p, g = grads["jfb"], grads["implicit"]
        assert float(p @ g) > 0.0, f"seed {seed}: <p, g> = {float(p @ g)}"
        cosines.append(float(p @ g / (p.norm() * g.norm())))
    assert min(cosines) > 0.0 and len(cosines) == 60


@pytest.mark.parametrize("form", ["gradient", "prox"])
def test_implicit_gradient_matches_unrolled_and_finite_differences(form):
    physics, d, x_true = problem(1)
    net = SmallNet(c=0.3 if form == "gradient" else 0.2, eps=0.3, seed=1)
    deq = DEQ(physics, net, DEQConfig(form=form, backward="implicit", anderson_m=5, **TIGHT))
    params = list(net.parameters())
    d = d.clone().requires_grad_(True)
    loss = 0.5 * (deq(d) - x_true).pow(2).sum()
    g_implicit = flat_grad(loss, params + [d])

    x = deq.initial(d)                                  # unrolled to convergence: L^300 ~ 0
    for _ in range(300):
        x = deq.T(x, d)
    g_unrolled = flat_grad(0.5 * (x - x_true).pow(2).sum(), params + [d])
    assert torch.allclose(g_implicit, g_unrolled, rtol=1e-8, atol=1e-11)

    gen = torch.Generator().manual_seed(7)
    direction = [torch.randn(p.shape, generator=gen, dtype=F64) for p in params]
    h = 1e-6

    def loss_at(t: float) -> float:
        with torch.no_grad():
            for p, v in zip(params, direction, strict=True):
                p.add_(t * v)
            val = float(0.5 * (deq(d.detach()) - x_true).pow(2).sum())
            for p, v in zip(params, direction, strict=True):
                p.sub_(t * v)
        return val

    fd = (loss_at(h) - loss_at(-h)) / (2 * h)
    analytic = float(g_implicit[: sum(p.numel() for p in params)]
                     @ torch.cat([v.flatten() for v in direction]))
    assert fd == pytest.approx(analytic, rel=1e-6, abs=1e-10)


def test_jfb_backward_is_one_application_of_T():
    physics, d, x_true = problem(2)
    net = SmallNet(seed=2)
    deq = DEQ(physics, net, DEQConfig(backward="jfb", tol=1e-12, max_iter=500))
    params = list(net.parameters())
    g = flat_grad(0.5 * (deq(d) - x_true).pow(2).sum(), params)
    x_star = deq.fixed_point(d)
    g_ref = flat_grad(0.5 * (deq.T(x_star, d) - x_true).pow(2).sum(), params)
    assert torch.allclose(g, g_ref, rtol=1e-10, atol=1e-14)
    assert deq.last_backward_stats_ is None


# ---------------------------------------------------------------------------- forward
def test_forward_converges_to_tol_and_reports_stats():
    physics, d, _ = problem(3)
    net = SmallNet(seed=3)
    for m in (0, 4):
        deq = DEQ(physics, net, DEQConfig(tol=1e-6, anderson_m=m, max_iter=300))
        with torch.no_grad():
            x = deq(d)
            r = ((deq.T(x, d) - x).flatten(1).norm(dim=1)
                 / deq.T(x, d).flatten(1).norm(dim=1)).max()
        s = deq.last_forward_stats_
        assert s.converged and s.residual <= 1e-6 and float(r) <= 1e-6
        assert s.iterations == len(s.residuals) <= 300 and s.stop_reason.startswith("residual")
        if m == 0:   # the residual ratio of plain iteration estimates the contraction factor
            est = deq.contraction_factor(d, n_iter=100).value
            assert 0.0 < s.contraction_ratio <= est + 1e-6
            assert s.contraction_ratio == pytest.approx(est, abs=0.05)


def test_contraction_factor_of_a_linear_layer_is_exact():
    """T(x) = (1 - c) x - r A^T A x + r A^T d is symmetric: ||J|| = max_w |1 - c - r |k(w)|^2|."""
    physics, d, _ = problem(4)
    c = 0.1
    deq = DEQ(physics, SmallNet(c=c, eps=1e-30), DEQConfig(step=1.0))
    otf = torch.fft.fft2(torch.fft.ifftshift(nn.functional.pad(gaussian_kernel(), (1, 2, 1, 2))))
    exact = float((1 - c - otf.abs() ** 2).abs().max())
    est = deq.contraction_factor(d, x=torch.rand(2, 1, 8, 8, dtype=F64), n_iter=300, tol=1e-12)
    assert est.value <= exact + 1e-12                  # power iteration: from below
    assert est.value == pytest.approx(exact, rel=1e-3)   # close eigenvalues: slow tail


def test_anderson_reaches_the_same_fixed_point_in_fewer_iterations():
    physics, d, _ = problem(5)
    net = SmallNet(c=0.03, eps=0.05, seed=5)           # slow contraction, L ~ 0.97
    results = {}
    for m in (0, 5):
        deq = DEQ(physics, net, DEQConfig(tol=1e-10, anderson_m=m, max_iter=3000))
        with torch.no_grad():
            results[m] = (deq(d), deq.last_forward_stats_)
    (xp, sp), (xa, sa) = results[0], results[5]
    assert sp.converged and sa.converged
    assert sa.iterations * 3 < sp.iterations
    assert float((xa - xp).norm() / xp.norm()) < 1e-7


def test_non_contractive_T_is_detected():
    physics, d, _ = problem(6)
    deq = DEQ(physics, SmallNet(c=-0.5, eps=0.1), DEQConfig(anderson_m=0, max_iter=200))
    with pytest.raises(NonContractiveError, match="grew over the last 10 iterations"):
        deq(d)
    assert issubclass(NonContractiveError, ConvergenceError)
    with pytest.raises(NonContractiveError, match="non-finite"):
        fixed_point(lambda z: z * float("inf"), torch.ones(1, 1, 2, 2))
    strict = DEQ(physics, SmallNet(c=0.01, eps=0.01),
                 DEQConfig(max_iter=3, tol=1e-12, raise_on_max_iter=True))
    with pytest.raises(ConvergenceError, match="after max_iter = 3"):
        strict(d)


# ---------------------------------------------------------------------------- networks
def test_spectral_normalize_keeps_the_function_and_freezes_layer_norms():
    physics, d, x_true = problem(7)
    net = SmallNet(seed=7)
    x = torch.rand(2, 1, 8, 8, dtype=F64)
    before = net(x).detach()
    w0 = net.l1.weight.detach().clone()
    sigma0 = float(torch.linalg.matrix_norm(w0.reshape(4, -1), ord=2))
    spectral_normalize(net)
    net.eval()
    assert torch.allclose(net(x), before, rtol=1e-5, atol=1e-8)
    deq = DEQ(physics, net, DEQConfig(tol=1e-8))
    train_deq(deq, d, x_true, DEQTrainConfig(epochs=3, batch_size=2, lr=0.05, progress=False))
    w = net.l1.weight.detach()
    assert not torch.allclose(w, w0)
    assert float(torch.linalg.matrix_norm(w.reshape(4, -1), ord=2)) == pytest.approx(
        sigma0, rel=1e-2)                               # torch: one power step per forward
    with pytest.raises(ValueError, match="no Conv2d/Linear"):
        spectral_normalize(nn.ReLU())


def test_networks_from_a_convex_dual_solution():
    gen = torch.Generator().manual_seed(0)
    clean = torch.rand(1, 1, 8, 8, generator=gen, dtype=F64)
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=gen, dtype=F64)
    dual = ConvexDualDenoiser(n_patterns=4, beta=1e-2, residual=True, seed=0)
    dual.fit(noisy, clean, solver="cvxpy")
    primal = dual.to_primal()
    s = deq_network_from_convex(dual, "gradient", damping=0.2, weight=0.05)
    assert isinstance(s, ConvexRegulariser)
    with torch.no_grad():
        expected = 0.2 * noisy + 0.05 * (noisy - primal(noisy))
        assert torch.allclose(s(noisy), expected)
        r = deq_network_from_convex(primal, "prox", spectral_norm=True).eval()
        assert torch.allclose(r(noisy), primal(noisy), rtol=1e-5, atol=1e-8)
    physics, d, _ = problem(8)
    deq = DEQ(physics, s, DEQConfig(tol=1e-6))
    with torch.no_grad():
        deq(d)
    assert deq.last_forward_stats_.converged
    with pytest.raises(TypeError, match="ConvexDualDenoiser or a TwoLayerConvDenoiser"):
        deq_network_from_convex(nn.Conv2d(1, 1, 3), "gradient")
    with pytest.raises(ValueError, match="form: expected one of"):
        deq_network_from_convex(TwoLayerConvDenoiser(n_filters=2), "admm")


# ---------------------------------------------------------------------------- training
def _train_problem():
    physics, d, x = problem(9, n=6)
    net = SmallNet(seed=9)
    return DEQ(physics, net, DEQConfig(tol=1e-8, anderson_m=3)), d, x


def test_training_decreases_the_loss_with_both_backwards():
    for mode in ("jfb", "implicit"):
        deq, d, x = _train_problem()
        deq.config.backward = mode
        res = train_deq(deq, d, x, DEQTrainConfig(epochs=4, batch_size=3, lr=0.02,
                                                   progress=False), val=(d[:2], x[:2]))
        assert len(res.epoch_loss) == len(res.val_psnr) == len(res.epoch_seconds) == 4
        assert res.epoch_loss[-1] < res.epoch_loss[0]
        assert all(math.isfinite(v) for v in res.epoch_psnr + res.forward_iterations)
        assert (res.backward_iterations[-1] > 0) == (mode == "implicit")
        assert not deq.training


def test_contraction_penalty_is_differentiable_and_active_above_target():
    deq, d, x = _train_problem()
    x_star = deq.fixed_point(d)
    pen = contraction_penalty(deq, d, x_star, target=0.1, n_iter=10)
    L = deq.contraction_factor(d, x_star, n_iter=50).value
    assert float(pen) == pytest.approx(L ** 2, rel=0.05)
    grads = torch.autograd.grad(pen, list(deq.parameters()), allow_unused=True)
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads)
    flat = contraction_penalty(deq, d, x_star, target=0.99, n_iter=10)
    assert float(flat) == pytest.approx(0.99 ** 2)
    res = train_deq(deq, d, x, DEQTrainConfig(epochs=1, batch_size=3, progress=False,
                                              lipschitz_penalty=1.0))
    assert res.penalty[0] > 0


def test_checkpoint_resume_gives_identical_parameters(tmp_path):
    cfg = dict(batch_size=2, lr=0.02, progress=False, lipschitz_penalty=0.1,
               contraction_target=0.2)
    deq_a, d, x = _train_problem()
    full = train_deq(deq_a, d, x, DEQTrainConfig(epochs=3, **cfg))

    path = tmp_path / "deq.pt"
    deq_b, _, _ = _train_problem()
    part = train_deq(deq_b, d, x, DEQTrainConfig(epochs=1, checkpoint_path=path, **cfg))
    assert len(part.epoch_loss) == 1 and path.exists()
    deq_c, _, _ = _train_problem()                      # a fresh process: same init, resume
    rest = train_deq(deq_c, d, x, DEQTrainConfig(epochs=3, checkpoint_path=path, **cfg))
    assert rest.resumed_from == 1
    for (k, a), b in zip(deq_a.state_dict().items(), deq_c.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert rest.epoch_loss == full.epoch_loss
    assert not list(tmp_path.glob(".*.tmp"))
    deq_d, _, _ = _train_problem()
    with pytest.raises(CheckpointMismatchError, match="another configuration"):
        train_deq(deq_d, d, x + 1.0, DEQTrainConfig(epochs=3, checkpoint_path=path, **cfg))


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    (dict(form="admm"), r"form: expected one of \['gradient', 'prox'\], got 'admm'"),
    (dict(backward="unrolled"), r"backward: expected one of \['jfb', 'implicit'\]"),
    (dict(max_iter=0), "max_iter: expected an integer >= 1, got 0"),
    (dict(tol=-1.0), r"tol: expected a finite number in \[0, inf\], got -1.0"),
    (dict(anderson_m=-2), "anderson_m: expected an integer >= 0, got -2"),
    (dict(step=0.0), r"step: expected a finite number in \(0, inf\]"),
    (dict(relaxation=1.5), r"relaxation: expected a finite number in \(0, 1\]"),
    (dict(divergence_factor=1.0), "divergence_factor"),
    (dict(start="random"), "start: expected one of"),
])
def test_bad_config_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DEQConfig(**kwargs)


def test_bad_inputs_name_expected_and_got():
    physics, d, x = problem(10)
    deq = DEQ(physics, SmallNet(), DEQConfig())
    with pytest.raises(ValueError, match=r"expected a floating tensor \(B, C, H, W\), got shape "
                                         r"\(1, 8, 8\)"):
        deq(d[0])
    with pytest.raises(ValueError, match=r"operator built for images \(B, C, 8, 8\)"):
        deq(torch.zeros(1, 1, 9, 9, dtype=F64))
    with pytest.raises(ValueError, match=r"x0: expected the image shape \(2, 1, 8, 8\)"):
        deq(d, x0=torch.zeros(2, 1, 4, 4, dtype=F64))
    bad = DEQ(physics, nn.Conv2d(1, 2, 3, padding=1, dtype=F64), DEQConfig())
    with pytest.raises(ValueError, match=r"expected \(2, 1, 8, 8\), got \(2, 2, 8, 8\)"):
        bad(d)
    with pytest.raises(TypeError, match="physics: expected an operator"):
        DEQ(nn.Identity(), SmallNet())
    with pytest.raises(TypeError, match="config: expected DEQConfig"):
        DEQ(physics, SmallNet(), {"form": "prox"})
    with pytest.raises(ValueError, match="expected as many measurements as targets"):
        train_deq(deq, d, x[:1], DEQTrainConfig(progress=False))
    with pytest.raises(ValueError, match=r"targets: expected images \(N, 1, 8, 8\)"):
        train_deq(deq, d, x[:, :, :4], DEQTrainConfig(progress=False))
    with pytest.raises(ValueError, match="batch_size: expected an integer >= 1, got 0"):
        DEQTrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="lr: expected a positive number"):
        DEQTrainConfig(lr=-1.0)
    with pytest.raises(TypeError, match="expected a convexnn.solvers.deq.DEQ"):
        train_deq(SmallNet(), d, x)
