"""Energy-dissipating networks: projection layers (eq. 21, 22), Algorithm 1 (never increases the
energy, for any network), Prop. 2's linear rate, lagged training with checkpoints, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from convexnn.solvers.energies import (
    AutogradEnergy,
    DataFidelity,
    EnergyError,
    MatrixOperator,
    QuadraticEnergy,
    data_plus_tv,
)
from convexnn.solvers.energy_dissipation import (
    GRAD_NORM_FLOOR,
    MLP,
    ConvexDenoiserDirection,
    DescentConfig,
    DirectionNetwork,
    HalfSpaceProjection,
    LaggedTrainingConfig,
    PaperDnCNN,
    SmallConvNet,
    TrainingProblem,
    TwoSidedProjection,
    energy_dissipating_descent,
    gradient_descent,
    in_half_space,
    in_two_sided_set,
    train_lagged,
)
from convexnn.solvers.operators import Downsample

torch.set_num_threads(1)
FAST = settings(max_examples=1000, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


def _rand(seed: int, shape, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(shape, generator=gen, dtype=torch.float64)


# ------------------------------------------------------------------ projection layers
@FAST
@given(seed=st.integers(0, 2**31 - 1), log_z=st.floats(-6, 12), log_g=st.floats(-5, 5),
       z1=st.floats(1e-3, 10), ratio=st.floats(1.0, 1e4), n=st.integers(1, 12))
def test_two_sided_projection_lands_in_eq15(seed, log_z, log_g, z1, ratio, n):
    z = _rand(seed, (3, n), 10**log_z)
    g = _rand(seed + 1, (3, n), 10**log_g)
    proj = TwoSidedProjection(z1, z1 * ratio)
    d = proj(z, g)
    assert torch.isfinite(d).all()
    above_floor = g.norm(dim=1) >= GRAD_NORM_FLOOR
    assert in_two_sided_set(d, g, proj.zeta1, proj.zeta2)[above_floor].all()


@FAST
@given(seed=st.integers(0, 2**31 - 1), log_z=st.floats(-6, 12), log_g=st.floats(-5, 5),
       zeta=st.floats(1e-4, 1e3), scaled=st.booleans(), n=st.integers(1, 12))
def test_half_space_projection_lands_in_eq8(seed, log_z, log_g, zeta, scaled, n):
    z = _rand(seed, (3, n), 10**log_z)
    g = _rand(seed + 1, (3, n), 10**log_g)
    d = HalfSpaceProjection(zeta, scale_with_grad=scaled)(z, g)
    above_floor = g.norm(dim=1) >= GRAD_NORM_FLOOR     # max(||g||, 1e-6), Sec. 4.1
    assert in_half_space(d, g, zeta, scaled)[above_floor].all()


def test_half_space_projection_is_the_euclidean_projection():
    g = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    z = torch.tensor([[-1.0, 2.0]], dtype=torch.float64)
    d = HalfSpaceProjection(2.0)(z, g)
    n = g / 5
    assert torch.allclose((d * n).sum(), torch.tensor(2.0, dtype=torch.float64))
    assert torch.allclose(d - z, ((d - z) * n).sum() * n)  # moved along the normal only
    inside = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    assert torch.equal(HalfSpaceProjection(2.0)(inside, g), inside)


def test_two_sided_projection_is_surjective_identity_on_the_set():
    g = _rand(0, (4, 6))
    proj = TwoSidedProjection(0.5, 3.0)
    inside = proj(_rand(1, (4, 6), 5.0), g)
    assert torch.allclose(proj(inside, g), inside, atol=1e-12)


@pytest.mark.parametrize("z1,z2", [(2.0, 1.0), (0.0, 1.0), (-1.0, 1.0), (1.0, math.inf)])
def test_zeta_errors(z1, z2):
    with pytest.raises(ValueError, match="zeta"):
        TwoSidedProjection(z1, z2)


def test_half_space_zeta_error():
    with pytest.raises(ValueError, match="zeta"):
        HalfSpaceProjection(0.0)


# ------------------------------------------------------------------ Algorithm 1
class _Random(nn.Module):
    """An adversarial / random backbone: a random linear map of [u, g], times a huge scale,
    possibly pointing uphill."""

    def __init__(self, n: int, seed: int, scale: float, uphill: bool) -> None:
        super().__init__()
        self.w = _rand(seed, (2 * n, n), scale / math.sqrt(n))
        self.uphill = uphill

    def forward(self, x):
        n = x.shape[1] // 2
        z = x @ self.w
        return z - 1e3 * x[:, n:] if self.uphill else z


@FAST
@given(seed=st.integers(0, 2**31 - 1), log_scale=st.floats(-3, 6), uphill=st.booleans(),
       two_sided=st.booleans(), n=st.integers(2, 6), m=st.integers(1, 6))
def test_algorithm1_never_increases_the_energy(seed, log_scale, uphill, two_sided, n, m):
    op = MatrixOperator(_rand(seed, (m, n)))
    energy = DataFidelity(op, _rand(seed + 1, (2, m)))
    proj = TwoSidedProjection(0.1, 50.0) if two_sided else HalfSpaceProjection(0.1, True)
    net = DirectionNetwork(_Random(n, seed + 2, 10**log_scale, uphill), proj, use_data=False)
    u, hist = energy_dissipating_descent(energy, _rand(seed + 3, (2, n), 3.0), net,
                                         DescentConfig(max_iter=3, grad_tol=1e-9))
    e = [hist.flags["initial_energy"]] + hist.energy
    assert all(b <= a for a, b in zip(e, e[1:], strict=False))
    assert hist.n_iter <= 3


def test_algorithm1_with_untrained_conv_net_on_superresolution():
    torch.manual_seed(0)
    gt = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    op = Downsample(4)
    energy = DataFidelity(op, op.A(gt))
    net = DirectionNetwork(SmallConvNet(3, 1, depth=3, channels=8).double(),
                           TwoSidedProjection(1.0, 100.0), grad_scale=16.0)
    u, hist = energy_dissipating_descent(energy, torch.zeros_like(gt), net,
                                         DescentConfig(max_iter=30, reference=gt))
    e = [hist.flags["initial_energy"]] + hist.energy
    assert all(b <= a for a, b in zip(e, e[1:], strict=False))
    assert e[-1] < 1e-2 * e[0]
    assert hist.psnr[-1] is not None and len(hist.series("backtracks")) == hist.n_iter


def test_prop2_linear_rate_strongly_convex_quadratic():
    gen = torch.Generator().manual_seed(4)
    q = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))[0]
    h = q @ torch.diag(torch.linspace(0.5, 4.0, 6, dtype=torch.float64)) @ q.T
    h = (h + h.T) / 2
    energy = QuadraticEnergy(h, _rand(5, (6,)))
    proj = TwoSidedProjection(0.5, 2.0)
    net = DirectionNetwork(MLP(12, 6, hidden=16).double(), proj, use_data=False)
    u0 = _rand(6, (1, 6), 5.0)
    _, hist = energy_dissipating_descent(energy, u0, net,
                                         DescentConfig(max_iter=40, step_rule="constant"))
    rate = 1 - proj.gamma**2 * energy.mu / energy.L
    e0 = hist.flags["initial_energy"]
    for k, ek in enumerate(hist.energy, start=1):   # E* = 0
        assert ek <= rate**k * e0 * (1 + 1e-9)
    assert hist.step[0] == pytest.approx(0.5 / (4.0 * energy.L))


def test_stops_on_zero_gradient_discrepancy_and_max_iter():
    op = MatrixOperator(torch.tensor([[1.0, 1.0]], dtype=torch.float64))
    energy = DataFidelity(op, torch.tensor([[5.0]], dtype=torch.float64))
    u, hist = gradient_descent(energy, torch.tensor([[2.0, 3.0]], dtype=torch.float64))
    assert hist.stop_reason == "zero gradient" and hist.n_iter == 0 and hist.converged
    _, hist = gradient_descent(energy, torch.zeros(1, 2, dtype=torch.float64),
                               DescentConfig(max_iter=50, discrepancy=0.1, c=0.1), scale=0.05)
    assert "discrepancy" in hist.stop_reason and hist.residual[-1] <= 0.1
    assert hist.residual[-2] > 0.1
    _, hist = gradient_descent(energy, torch.zeros(1, 2, dtype=torch.float64),
                               DescentConfig(max_iter=3), scale=0.01)
    assert hist.n_iter == 3 and "max_iter" in hist.stop_reason


def test_bad_inputs_raise_clear_errors():
    nan_energy = AutogradEnergy(lambda u: (u**2).sum(1) * math.nan)
    with pytest.raises(EnergyError, match="NaN"):
        energy_dissipating_descent(nan_energy, torch.ones(1, 2, dtype=torch.float64))
    flat = AutogradEnergy(lambda u: torch.zeros(u.shape[0]))
    with pytest.raises(EnergyError, match="no autograd graph"):
        energy_dissipating_descent(flat, torch.ones(1, 2))
    energy = DataFidelity(Downsample(4), torch.zeros(1, 1, 2, 2, dtype=torch.float64))
    with pytest.raises(EnergyError, match="f has shape"):
        energy_dissipating_descent(energy, torch.zeros(1, 1, 16, 16, dtype=torch.float64))
    with pytest.raises(EnergyError, match="NaN"):
        energy_dissipating_descent(energy, torch.full((1, 1, 8, 8), math.nan))
    with pytest.raises(ValueError, match="c"):
        DescentConfig(c=0.7)
    with pytest.raises(ValueError, match="rho"):
        DescentConfig(rho=1.0)
    with pytest.raises(ValueError, match="zeta1"):
        energy_dissipating_descent(energy, torch.rand(1, 1, 8, 8, dtype=torch.float64),
                                   lambda u, g, e: g,
                                   DescentConfig(step_rule="constant", zeta1=2.0, zeta2=1.0))
    bad = lambda u, g, e: torch.full_like(u, math.nan)  # noqa: E731
    with pytest.raises(EnergyError, match="direction"):
        energy_dissipating_descent(energy, torch.rand(1, 1, 8, 8, dtype=torch.float64), bad)


def test_baseline_without_projection_uphill_direction_does_not_move():
    op = MatrixOperator(torch.eye(2, dtype=torch.float64))
    energy = DataFidelity(op, torch.zeros(1, 2, dtype=torch.float64))
    u0 = torch.ones(1, 2, dtype=torch.float64)
    u, hist = energy_dissipating_descent(energy, u0, lambda u, g, e: -g,
                                         DescentConfig(max_iter=5))
    assert torch.equal(u, u0) and "stalled" in hist.stop_reason


# ------------------------------------------------------------------ networks
def test_paper_dncnn_tiny_input():
    net = PaperDnCNN(3, 1)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 21 and len(bns) == 19 and convs[1].out_channels == 64
    ed = DirectionNetwork(net, TwoSidedProjection(25.0, 1e4))
    ed.eval()
    u = torch.rand(2, 1, 8, 8)
    g = torch.randn(2, 1, 8, 8)
    d = ed(u, g, torch.rand(2, 1, 8, 8))
    assert d.shape == u.shape and in_two_sided_set(d.double(), g.double(), 25.0, 1e4).all()


def test_convex_dual_denoiser_direction():
    from convexnn import ConvexDualDenoiser

    gen = torch.Generator().manual_seed(0)
    clean = torch.rand(1, 1, 8, 8, generator=gen, dtype=torch.float64)
    noisy = clean + 0.1 * torch.randn(1, 1, 8, 8, generator=gen, dtype=torch.float64)
    den = ConvexDualDenoiser(kernel_size=3, n_patterns=4, beta=1e-2, seed=0).fit(
        noisy, clean, solver="cvxpy")
    op = Downsample(4)
    energy = DataFidelity(op, op.A(clean))
    net = DirectionNetwork(ConvexDenoiserDirection(den, tau=16.0), TwoSidedProjection(1.0, 100.0),
                           raw_inputs=True)
    u, hist = energy_dissipating_descent(energy, torch.zeros_like(clean), net,
                                         DescentConfig(max_iter=5))
    e = [hist.flags["initial_energy"]] + hist.energy
    assert all(b <= a for a, b in zip(e, e[1:], strict=False)) and e[-1] < e[0]
    assert [p.requires_grad for p in net.parameters()].count(True) == 2   # a, b only


# ------------------------------------------------------------------ lagged training
def _toy_problem(n: int = 64) -> TrainingProblem:
    gen = torch.Generator().manual_seed(0)
    targets = torch.tensor([0.0, 5.0], dtype=torch.float64) + 0.3 * torch.randn(
        n, 2, generator=gen, dtype=torch.float64)
    f = targets.sum(1, keepdim=True)
    op = MatrixOperator(torch.tensor([[1.0, 1.0]], dtype=torch.float64))
    return TrainingProblem(targets, f, lambda ff: DataFidelity(op, ff, lipschitz=2.0))


def _toy_net(seed: int = 0) -> DirectionNetwork:
    torch.manual_seed(seed)
    return DirectionNetwork(MLP(6, 2, hidden=16).double(), HalfSpaceProjection(0.05, True))


def test_lagged_training_reduces_the_loss():
    res = train_lagged(_toy_net(), _toy_problem(), LaggedTrainingConfig(
        steps=60, batch_size=16, lr=1e-2, regenerate_every=1000, max_descent_steps=5,
        gd_scale=0.5))
    assert res.regenerations == []
    assert sum(res.losses[-10:]) < 0.5 * sum(res.losses[:10])
    res = train_lagged(_toy_net(), _toy_problem(), LaggedTrainingConfig(
        steps=25, batch_size=16, lr=1e-2, regenerate_every=10, max_descent_steps=5))
    assert res.regenerations == [10, 20] and len(res.losses) == 25


def test_checkpoint_resume_matches_uninterrupted(tmp_path):
    cfg = dict(batch_size=8, lr=1e-2, regenerate_every=5, max_descent_steps=3, gd_scale=0.5,
               checkpoint_every=4)
    full = _toy_net()
    r_full = train_lagged(full, _toy_problem(), LaggedTrainingConfig(steps=12, **cfg))
    part = _toy_net()
    path = tmp_path / "ck.pt"
    train_lagged(part, _toy_problem(), LaggedTrainingConfig(steps=8, checkpoint_path=path, **cfg))
    resumed = _toy_net()
    r = train_lagged(resumed, _toy_problem(), LaggedTrainingConfig(steps=12, checkpoint_path=path,
                                                                   **cfg))
    assert r.resumed_from == 8
    assert r.losses == pytest.approx(r_full.losses, rel=1e-10)
    for a, b in zip(full.parameters(), resumed.parameters(), strict=True):
        assert torch.allclose(a, b)


def test_checkpoint_from_another_configuration_is_refused(tmp_path):
    from convexnn.train.checkpoint import CheckpointMismatchError

    path = tmp_path / "ck.pt"
    train_lagged(_toy_net(), _toy_problem(), LaggedTrainingConfig(steps=2, checkpoint_path=path))
    with pytest.raises(CheckpointMismatchError):
        train_lagged(_toy_net(), _toy_problem(), LaggedTrainingConfig(steps=4, lr=0.5,
                                                                      checkpoint_path=path))


def test_data_plus_tv_descent_decreases():
    from convexnn.solvers.operators import CT

    gen = torch.Generator().manual_seed(0)
    gt = torch.rand(1, 1, 8, 8, generator=gen, dtype=torch.float64)
    op = CT(6, 8)
    energy = data_plus_tv(op, op.A(gt), alpha=0.01, eps=0.05)
    lip = energy.lipschitz(gt)
    _, hist = gradient_descent(energy, torch.zeros_like(gt), DescentConfig(max_iter=10),
                               scale=1 / lip)
    e = [hist.flags["initial_energy"]] + hist.energy
    assert all(b <= a for a, b in zip(e, e[1:], strict=False))


def test_data_skip_direction_and_guarantee():
    op = Downsample(4)
    gt = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    energy = DataFidelity(op, op.A(gt), lipschitz=1 / 16)
    backbone = SmallConvNet(3, 1, depth=2, channels=4).double()
    for p in backbone.parameters():
        nn.init.zeros_(p)
    net = DirectionNetwork(backbone, None, grad_scale=16.0, data_skip=True)
    u0 = torch.zeros_like(gt)
    d = net.direction(u0, energy.gradient(u0), energy)
    assert torch.allclose(op.A(u0 - d), op.A(gt))         # one step = nearest upsampling
    with pytest.raises(ValueError, match="data_skip"):
        DirectionNetwork(backbone, None, use_data=False, data_skip=True)


def test_normalize_grad_input_is_scale_free_and_keeps_the_guarantee():
    from convexnn.solvers.operators import CT

    gen = torch.Generator().manual_seed(0)
    gt = torch.rand(2, 1, 8, 8, generator=gen, dtype=torch.float64)
    op = CT(4, 8)
    energy = data_plus_tv(op, op.A(gt), alpha=0.01, eps=0.05)
    torch.manual_seed(0)
    net = DirectionNetwork(SmallConvNet(3, 1, depth=3, channels=4).double(),
                           HalfSpaceProjection(0.1 / energy.lipschitz(gt), True),
                           grad_scale=0.5, normalize_grad=True)
    u = torch.zeros_like(gt)
    g = energy.gradient(u)
    gin = net.grad_input(g)
    assert torch.allclose(gin.flatten(1).pow(2).mean(dim=1).sqrt(), torch.full((2,), 0.5,
                                                                              dtype=g.dtype))
    data = energy.data_image(u)
    # the backbone sees the direction of g only: scaling g (per sample) leaves z unchanged
    scale = torch.tensor([1e-4, 1e3], dtype=g.dtype).view(-1, 1, 1, 1)
    assert torch.allclose(net.raw(u, g, data), net.raw(u, scale * g, data))
    assert torch.allclose(net.grad_input(torch.zeros_like(g)), torch.zeros_like(g))
    d = net.direction(u, g, energy)
    assert bool(in_half_space(d, g, net.projection.zeta, True).all())
    _, hist = energy_dissipating_descent(energy, u, net, DescentConfig(max_iter=15))
    e = [hist.flags["initial_energy"]] + hist.energy
    assert all(b <= a for a, b in zip(e, e[1:], strict=False))
    with pytest.raises(ValueError, match="normalize_grad"):
        DirectionNetwork(ConvexDenoiserDirection(lambda x, sigma=None: x), None,
                         raw_inputs=True, normalize_grad=True)
