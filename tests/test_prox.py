"""Proximal operators of convexnn.solvers.prox against brute-force minimisation, and the Haar
basis."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from convexnn.solvers.prox import L0, L1, Box, HaarWavelet, InBasis, Lp, SparseBox

torch.set_num_threads(1)


def _brute_force_1d(v: np.ndarray, tau: np.ndarray, penalty) -> tuple[np.ndarray, np.ndarray]:
    """``min_x 1/2 (x - v)^2 + tau * penalty(x)`` per entry by grid search: 4001 points on
    ``[-|v| - 1, |v| + 1]`` (the minimiser lies between 0 and v), refined with 4001 points
    within one spacing of the best, and x = 0 (the kink of |x|^p). Returns (argmin, min)."""
    def objective(grid):
        return 0.5 * (grid - v[:, None]) ** 2 + tau[:, None] * penalty(grid)

    rows = np.arange(len(v))
    t = np.linspace(-1.0, 1.0, 4001)[None]
    half = np.abs(v)[:, None] + 1.0
    coarse = t * half
    best = coarse[rows, objective(coarse).argmin(axis=1)]
    fine = best[:, None] + (2.0 * half / 4000) * t
    h = objective(fine)
    idx = h.argmin(axis=1)
    h_fine, h_zero = h[rows, idx], 0.5 * v ** 2
    return np.where(h_zero <= h_fine, 0.0, fine[rows, idx]), np.minimum(h_fine, h_zero)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.8, 0.95, 1.0])
def test_lp_prox_matches_brute_force(p):
    rng = np.random.default_rng(int(100 * p))
    n, lam = 600, 0.7
    v = rng.uniform(-4, 4, n) * rng.choice([1e-3, 1e-1, 1.0], n)
    for step in (0.05, 0.9, 2.5):
        x = Lp(lam, p)(torch.from_numpy(v).reshape(1, 1, -1, 1), step).flatten().numpy()
        tau = np.full(n, lam * step)
        xb, hb = _brute_force_1d(v, tau, lambda z: np.abs(z) ** p)
        h = 0.5 * (x - v) ** 2 + tau * np.abs(x) ** p
        assert np.all(h <= hb + 1e-10 * (1 + v ** 2)), np.max(h - hb)
        assert np.allclose(x, xb, atol=1e-4)   # the minimiser (unique off the threshold)


def test_lp_prox_many_random_steps_and_weights():
    rng = np.random.default_rng(7)
    for trial in range(40):
        p = rng.uniform(0.05, 0.99)
        lam, step = 10 ** rng.uniform(-3, 1), 10 ** rng.uniform(-2, 0.5)
        v = rng.normal(size=50) * 10 ** rng.uniform(-2, 1)
        x = Lp(lam, p)(torch.from_numpy(v)[None, None, None], step).flatten().numpy()
        xb, hb = _brute_force_1d(v, np.full(50, lam * step), lambda z, p=p: np.abs(z) ** p)
        h = 0.5 * (x - v) ** 2 + lam * step * np.abs(x) ** p
        assert np.all(h <= hb + 1e-10 * (1 + v ** 2)), (trial, p, np.max(h - hb))
        assert np.all(np.sign(x) * np.sign(v) >= 0)


def test_lp_threshold_closed_form():
    """The l_p prox is 0 below ``(2-p)/(2-2p) (2 tau (1-p))^{1/(2-p)}`` and jumps above."""
    p, tau = 0.5, 1.0
    thr = (2 - p) / (2 - 2 * p) * (2 * tau * (1 - p)) ** (1 / (2 - p))
    v = torch.tensor([thr - 1e-6, thr + 1e-6], dtype=torch.float64)
    out = Lp(tau, p)(v, 1.0)
    assert out[0] == 0 and out[1] > 0.5 * thr


def test_l1_l0_match_brute_force():
    rng = np.random.default_rng(1)
    v = rng.uniform(-3, 3, 500)
    for prox, pen in ((L1(0.6), np.abs), (L0(0.6), lambda z: (z != 0).astype(float))):
        x = prox(torch.from_numpy(v)[None, None, None], 1.3).flatten().numpy()
        _, hb = _brute_force_1d(v, np.full(500, 0.6 * 1.3), pen)
        h = 0.5 * (x - v) ** 2 + 0.6 * 1.3 * pen(x)
        assert np.all(h <= hb + 1e-10)
        assert float(prox.value(torch.from_numpy(x)[None])) == pytest.approx(
            0.6 * pen(x).sum())


def test_box_and_sparse_box_are_exact_projections():
    rng = np.random.default_rng(2)
    box = Box(-0.2, 0.7)
    v = torch.from_numpy(rng.normal(size=(3, 1, 4, 4)))
    assert torch.equal(box(v, 1.0), v.clamp(-0.2, 0.7))
    assert torch.all(box.value(box(v, 1.0)) == 0) and math.isinf(float(box.value(v)[0]))
    for a, b in ((-0.5, 1.0), (0.2, 1.0), (-1.0, -0.1)):
        for s in (0, 1, 2, 3, None):
            sb = SparseBox(a, b, s)
            for _ in range(20):
                u = rng.normal(size=4) * 1.5
                got = sb(torch.from_numpy(u)[None], 1.0)[0].numpy()
                best = math.inf
                for k in range(0, 5 if s is None else s + 1):     # brute force over supports
                    for sup in itertools.combinations(range(4), k):
                        z = np.zeros(4)
                        z[list(sup)] = np.clip(u[list(sup)], a, b)
                        best = min(best, float(((z - u) ** 2).sum()))
                assert float(((got - u) ** 2).sum()) <= best + 1e-12
                assert float(sb.value(torch.from_numpy(got)[None])[0]) == 0.0


def test_sparse_box_is_paper_hardthre_proj_without_clipping():
    u = torch.tensor([[0.1, -0.4, 0.3, 0.05, -0.2]], dtype=torch.float64)
    c = u.clamp(-1, 1)
    top = c.abs().topk(2).indices
    paper = torch.zeros_like(c).scatter(1, top, c.gather(1, top))
    assert torch.equal(SparseBox(-1, 1, 2)(u, 1.0), paper)


def test_haar_matches_pywt_and_is_orthonormal():
    pywt = pytest.importorskip("pywt")
    W = HaarWavelet(3)
    x = torch.randn(2, 3, 16, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    c = W.A(x)
    for b, ch in ((0, 0), (1, 2)):
        ref = pywt.coeffs_to_array(pywt.wavedec2(x[b, ch].numpy(), "haar", level=3,
                                                 mode="periodization"))[0]
        assert np.allclose(c[b, ch].numpy(), ref, atol=1e-12)
    assert torch.allclose(W.A_adjoint(c), x, atol=1e-12)
    assert float(c.norm()) == pytest.approx(float(x.norm()), rel=1e-12)
    with pytest.raises(ValueError, match="divisible by 2\\*\\*levels = 8"):
        W.A(torch.zeros(1, 1, 12, 16, dtype=torch.float64))


def test_in_basis_prox_is_prox_of_composition():
    """prox of h(T x) = T^T prox_h(T v): its objective beats random perturbations."""
    W = HaarWavelet(2)
    g = InBasis(Lp(0.3, 0.8), W)
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(1, 1, 8, 8, dtype=torch.float64, generator=gen)
    x = g(v, 0.5)
    obj = lambda z: 0.5 * float(((z - v) ** 2).sum()) + 0.5 * float(g.value(z))  # noqa: E731
    for _ in range(200):
        assert obj(x) <= obj(x + 1e-2 * torch.randn(x.shape, generator=gen,
                                                   dtype=torch.float64)) + 1e-12
    assert g.convex is False


@pytest.mark.parametrize("p", [0.0, -0.5, 1.5, float("nan"), True])
def test_lp_rejects_p_outside_unit_interval(p):
    with pytest.raises(ValueError, match=r"expected 0 < p <= 1.*got"):
        Lp(1.0, p)


def test_prox_bad_inputs():
    with pytest.raises(ValueError, match="lam: expected a finite number >= 0, got -1"):
        L1(-1)
    with pytest.raises(ValueError, match="step: expected a finite number > 0, got 0"):
        Lp(1.0)(torch.zeros(1, 1, 2, 2), 0)
    with pytest.raises(ValueError, match="expected finite bounds a <= b, got a=1.0, b=0.0"):
        Box(1.0, 0.0)
    with pytest.raises(ValueError, match="s: expected a non-negative integer or None"):
        SparseBox(0, 1, s=1.5)
    with pytest.raises(TypeError, match="expected a Prox, got function"):
        InBasis(lambda v, s: v, HaarWavelet(1))
