"""Energies of convexnn.solvers.energies: values, gradients against autograd, Lipschitz
constants, and clear errors for bad input."""

from __future__ import annotations

import math

import pytest
import torch

from convexnn.solvers.energies import (
    AutogradEnergy,
    CharbonnierTV,
    DataFidelity,
    EnergyError,
    FeasibilityEnergy,
    MatrixOperator,
    QuadraticEnergy,
    data_plus_tv,
)
from convexnn.solvers.operators import CT, Downsample

torch.set_num_threads(1)


def _autograd_grad(energy, u):
    x = u.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(energy.value(x).sum(), x)
    return g


def test_data_fidelity_downsample_value_gradient_lipschitz():
    gen = torch.Generator().manual_seed(0)
    u = torch.rand(2, 1, 8, 8, generator=gen, dtype=torch.float64)
    op = Downsample(4, "average")
    f = torch.rand(2, 1, 2, 2, generator=gen, dtype=torch.float64)
    e = DataFidelity(op, f)
    assert e.value(u).shape == (2,)
    assert torch.allclose(e.value(u), 0.5 * ((op.A(u) - f) ** 2).flatten(1).sum(1))
    assert torch.allclose(e.gradient(u), _autograd_grad(e, u))
    assert e.lipschitz(u) == pytest.approx(1 / 16, rel=1e-6)
    assert torch.allclose(e.residual(u), (op.A(u) - f).flatten(1).norm(dim=1))
    # data image = A^T f / ||A||^2 = nearest upsampling of f
    assert torch.allclose(e.data_image(u), f.repeat_interleave(4, -1).repeat_interleave(4, -2))
    sub = e.select(torch.tensor([1]))
    assert torch.allclose(sub.value(u[1:]), e.value(u)[1:])


def test_charbonnier_tv_gradient_adjoint_and_lipschitz():
    gen = torch.Generator().manual_seed(1)
    tv = CharbonnierTV(eps=0.1)
    u = torch.randn(3, 1, 6, 7, generator=gen, dtype=torch.float64)
    assert torch.allclose(tv.gradient(u), _autograd_grad(tv, u), atol=1e-10)
    v = torch.randn(3, 1, 6, 7, generator=gen, dtype=torch.float64)
    lhs = (tv.gradient(u) - tv.gradient(v)).norm()
    assert lhs <= tv.lipschitz() * (u - v).norm()
    const = torch.full((1, 1, 4, 4), 0.3, dtype=torch.float64)
    assert tv.value(const).item() == pytest.approx(16 * 0.1)
    assert torch.allclose(tv.gradient(const), torch.zeros_like(const))


def test_data_plus_tv_ct_gradient_and_lipschitz():
    gen = torch.Generator().manual_seed(2)
    op = CT(6, 8)
    u = torch.rand(1, 1, 8, 8, generator=gen, dtype=torch.float64)
    f = op.A(torch.rand(1, 1, 8, 8, generator=gen, dtype=torch.float64))
    e = data_plus_tv(op, f, alpha=0.05, eps=0.1)
    assert torch.allclose(e.gradient(u), _autograd_grad(e, u), atol=1e-9)
    assert e.lipschitz(u) == pytest.approx(op.norm(u) + 0.05 * 80, rel=1e-6)
    assert e.residual(u).shape == (1,)


def test_feasibility_energy_eq25():
    box = lambda u: u.clamp(0, 1)  # noqa: E731
    ball = lambda u: u / u.flatten(1).norm(dim=1).clamp_min(1).view(-1, 1)  # noqa: E731
    e = FeasibilityEnergy([box, ball])
    gen = torch.Generator().manual_seed(3)
    u = 3 * torch.randn(4, 5, generator=gen, dtype=torch.float64)
    want = ((u - box(u)).pow(2).sum(1) + (u - ball(u)).pow(2).sum(1)) / 4
    assert torch.allclose(e.value(u), want)
    assert torch.allclose(e.gradient(u), _autograd_grad(e, u), atol=1e-10)
    assert e.lipschitz() == 1.0
    inside = torch.full((1, 5), 0.1, dtype=torch.float64)
    assert e.value(inside).item() == 0.0


def test_quadratic_and_matrix_operator():
    h = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    e = QuadraticEnergy(h, torch.tensor([1.0, -1.0], dtype=torch.float64))
    u = torch.randn(3, 2, dtype=torch.float64)
    assert torch.allclose(e.gradient(u), _autograd_grad(e, u))
    assert e.mu <= e.L
    op = MatrixOperator(torch.tensor([[1.0, 1.0]], dtype=torch.float64))
    assert op.norm() == pytest.approx(2.0)
    d = DataFidelity(op, torch.full((3, 1), 5.0, dtype=torch.float64))
    assert torch.allclose(d.gradient(u), _autograd_grad(d, u))


def test_autograd_energy():
    e = AutogradEnergy(lambda u: (u**4).flatten(1).sum(1))
    u = torch.randn(2, 3, dtype=torch.float64)
    assert torch.allclose(e.gradient(u), 4 * u**3)


def test_errors_are_clear():
    with pytest.raises(EnergyError, match="non-differentiable"):
        CharbonnierTV(eps=0.0)
    with pytest.raises(EnergyError, match="NaN"):
        DataFidelity(Downsample(4), torch.full((1, 1, 2, 2), math.nan))
    e = DataFidelity(Downsample(4), torch.zeros(1, 1, 2, 2, dtype=torch.float64))
    with pytest.raises(EnergyError, match="f has shape"):
        e.check_input(torch.zeros(1, 1, 12, 12, dtype=torch.float64))
    with pytest.raises(EnergyError, match="does not accept"):
        e.check_input(torch.zeros(1, 1, 10, 10, dtype=torch.float64))
    with pytest.raises(TypeError, match="A_adjoint"):
        DataFidelity(object(), torch.zeros(1, 1))
    with pytest.raises(ValueError, match="positive definite"):
        QuadraticEnergy(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    with pytest.raises(EnergyError, match="no autograd graph"):
        AutogradEnergy(lambda u: torch.ones(u.shape[0])).gradient(torch.zeros(2, 2))
    with pytest.raises(EnergyError, match="no data term"):
        CharbonnierTV().residual(torch.zeros(1, 1, 3, 3))
