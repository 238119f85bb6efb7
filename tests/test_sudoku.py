"""Sudoku feasibility sets (Sec. 5.4): simplex projection, generator, energy (eq. 25)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from convexnn.solvers.energy_dissipation import DescentConfig, energy_dissipating_descent
from convexnn.solvers.sudoku import (
    accuracy,
    count_solutions,
    generate_puzzles,
    is_valid_solution,
    one_hot,
    project_simplex,
    round_grid,
    sudoku_energy,
)

torch.set_num_threads(1)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 9), scale=st.floats(1e-3, 1e3))
def test_simplex_projection_kkt(seed, n, scale):
    gen = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(4, n, generator=gen, dtype=torch.float64)
    p = project_simplex(x, 1)
    assert (p >= 0).all() and torch.allclose(p.sum(1), torch.ones(4, dtype=torch.float64))
    # KKT: p = max(x - theta, 0) for one theta per row
    theta = (x - p)[p > 0].reshape(-1)
    for i in range(4):
        t = (x[i] - p[i])[p[i] > 0]
        assert torch.allclose(t, t[0].expand_as(t), atol=1e-9 * (1 + scale))
        assert ((x[i] - t[0])[p[i] == 0] <= 1e-9 * (1 + scale)).all()
    assert theta.numel() > 0


def test_generator_is_seeded_valid_and_unique():
    p1, s1 = generate_puzzles(3, n_givens=36, seed=5)
    p2, s2 = generate_puzzles(3, n_givens=36, seed=5)
    assert np.array_equal(p1, p2) and np.array_equal(s1, s2)
    for puz, sol in zip(p1, s1, strict=True):
        assert is_valid_solution(sol)
        assert (puz > 0).sum() == 36 and np.array_equal(puz[puz > 0], sol[puz > 0])
        assert count_solutions(puz) == 1


def test_energy_is_zero_exactly_at_the_solution_and_gd_decreases():
    puz, sol = generate_puzzles(2, n_givens=40, seed=1)
    e = sudoku_energy(puz)
    assert torch.allclose(e.value(one_hot(sol)), torch.zeros(2, dtype=torch.float64))
    assert (e.value(torch.full((2, 9, 9, 9), 1 / 9, dtype=torch.float64)) > 0).all()
    u, hist = energy_dissipating_descent(e, torch.full((2, 9, 9, 9), 1 / 9, dtype=torch.float64),
                                         None, DescentConfig(max_iter=20))
    en = [hist.flags["initial_energy"]] + hist.energy
    assert all(b <= a for a, b in zip(en, en[1:], strict=False))
    acc, _ = accuracy(round_grid(u), sol)
    assert acc > 0.5


def test_gradient_matches_autograd_and_errors():
    puz, _ = generate_puzzles(1, n_givens=40, seed=2)
    e = sudoku_energy(puz)
    u = torch.rand(1, 9, 9, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = u.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(e.value(x).sum(), x)
    assert torch.allclose(e.gradient(u), g, atol=1e-10)
    with pytest.raises(ValueError, match="17 <= n_givens"):
        generate_puzzles(1, n_givens=5)
    with pytest.raises(ValueError, match="digits 0..9"):
        one_hot(np.full((9, 9), 11))
    with pytest.raises(ValueError, match="shape"):
        e.check_input(torch.zeros(1, 9, 9, 8, dtype=torch.float64))
