"""The exact dual (eq. 4) with CVXPY against an independent per-pattern formulation; zero gap."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

from convexnn import ConvexDualDenoiser, gap_report, sample_generators


def _independent_dual_value(noisy: np.ndarray, target: np.ndarray, gens: np.ndarray,
                            beta: float, loss: str = "squared", delta: float = 1.0) -> float:
    """Eq. 4 written pattern by pattern from explicit loop-built patches (no shared code)."""
    n, c, h, w = noisy.shape
    k = gens.shape[-1]
    r = k // 2
    xp = np.pad(noisy, ((0, 0), (0, 0), (r, r), (r, r)))
    yp = np.array([xp[i, :, a:a + k, b:b + k].ravel()
                   for i in range(n) for a in range(h) for b in range(w)])
    y = target.reshape(-1)
    pred, reg, cons = 0, 0, []
    for g in gens:
        d = (yp @ g.ravel() >= 0).astype(float)
        if not d.any():
            continue
        v, wv = cp.Variable(yp.shape[1]), cp.Variable(yp.shape[1])
        dy = d[:, None] * yp
        sy = (2 * d - 1)[:, None] * yp
        pred = pred + dy @ (v - wv)
        reg = reg + cp.norm(v, 2) + cp.norm(wv, 2)
        cons += [sy @ v >= 0, sy @ wv >= 0]
    res = pred - y
    data = {"squared": 0.5 * cp.sum_squares(res), "l1": cp.norm1(res),
            "huber": 0.5 * cp.sum(cp.huber(res, delta))}[loss]
    prob = cp.Problem(cp.Minimize(data + beta * reg), cons)
    prob.solve(solver="CLARABEL")
    assert prob.status == cp.OPTIMAL
    return float(prob.value)


@pytest.fixture(scope="module")
def fitted(digit_pair):
    noisy, clean = digit_pair
    gens = sample_generators(8, 1, 3, seed=11)
    model = ConvexDualDenoiser(beta=0.05, generators=gens).fit(noisy, clean, solver="cvxpy")
    return model, noisy, clean, gens


def test_matches_independent_formulation(fitted):
    model, noisy, clean, gens = fitted
    ref = _independent_dual_value(noisy.numpy(), clean.numpy(), gens.numpy(), 0.05)
    assert model.objective_ == pytest.approx(ref, rel=1e-5)
    assert model.solve_info_.reported_objective == pytest.approx(ref, rel=1e-5)
    assert model.v_.shape == model.w_.shape == model.generators_.shape
    assert model.v_.dtype == torch.float64


def test_zero_duality_gap_and_predictions(fitted):
    model, noisy, clean, _ = fitted
    primal = model.to_primal()
    assert primal.objective(noisy, clean, model.beta) == pytest.approx(model.objective_, rel=1e-5)
    with torch.no_grad():
        pred_primal = primal(noisy)
    pred_dual = model.predict(noisy)
    scale = float(clean.abs().max())
    assert float((pred_dual - pred_primal).abs().max()) < 1e-6 * scale
    viol = model.constraint_violation(noisy)
    assert viol.relative < 1e-7
    report = gap_report(model, noisy, clean)
    assert report.relative_gap < 1e-5
    assert report.n_groups == 2 * model.generators_.shape[0]
    assert 0 < report.n_nonzero_groups <= report.n_groups
    # the fit is a real denoiser: it beats the noisy input on its training image
    assert float(((pred_dual - clean) ** 2).sum()) < 0.5 * float(((noisy - clean) ** 2).sum())


def test_optimum_beats_perturbations(fitted):
    """Optimality spot check: feasible scaled points have a higher objective."""
    model, noisy, clean, _ = fitted
    base = model.objective(noisy, clean)
    v, w = model.v_.clone(), model.w_.clone()
    for s in (0.9, 1.1):  # positive scaling keeps the cone constraints satisfied
        model.v_, model.w_ = v * s, w * s
        assert model.objective(noisy, clean) > base
    model.v_, model.w_ = v, w


@pytest.mark.parametrize("loss", ["l1", "huber"])
def test_other_losses_close_the_gap(small_pair, loss):
    noisy, clean = small_pair
    gens = sample_generators(6, 1, 3, seed=2)
    model = ConvexDualDenoiser(beta=0.05, loss=loss, huber_delta=0.5, generators=gens)
    model.fit(noisy, clean)
    ref = _independent_dual_value(noisy.numpy(), clean.numpy(), gens.numpy(), 0.05, loss, 0.5)
    assert model.objective_ == pytest.approx(ref, rel=1e-5)
    report = gap_report(model, noisy, clean)
    assert report.relative_gap < 1e-5
    assert report.primal_objective == pytest.approx(report.dual_objective, rel=1e-5)


def test_residual_network_closes_the_gap(small_pair):
    noisy, clean = small_pair
    gens = sample_generators(6, 1, 3, seed=4)
    model = ConvexDualDenoiser(beta=0.05, residual=True, generators=gens).fit(noisy, clean)
    ref = _independent_dual_value(noisy.numpy(), (clean - noisy).numpy(), gens.numpy(), 0.05)
    assert model.objective_ == pytest.approx(ref, rel=1e-5)
    primal = model.to_primal()
    assert primal.residual
    assert primal.objective(noisy, clean, model.beta) == pytest.approx(model.objective_, rel=1e-5)


@pytest.mark.parametrize("solver,rel", [("ECOS", 1e-5), ("SCS", 1e-3)])
def test_other_conic_solvers_agree(small_pair, solver, rel):
    noisy, clean = small_pair
    gens = sample_generators(6, 1, 3, seed=5)
    ref = ConvexDualDenoiser(beta=0.05, generators=gens).fit(noisy, clean)
    opts = {"eps_abs": 1e-9, "eps_rel": 1e-9, "max_iters": 200000} if solver == "SCS" else {}
    other = ConvexDualDenoiser(beta=0.05, generators=gens).fit(
        noisy, clean, solver="cvxpy", cvxpy_solver=solver, solver_options=opts)
    assert other.solve_info_.solver == f"cvxpy/{solver}"
    assert other.objective_ == pytest.approx(ref.objective_, rel=rel)


def test_beta_controls_path_sparsity(small_pair):
    """Eq. 7: weight decay is a group (path) penalty; a larger beta zeroes more groups."""
    noisy, clean = small_pair
    gens = sample_generators(10, 1, 3, seed=6)
    counts = []
    for beta in (0.01, 3.0):
        m = ConvexDualDenoiser(beta=beta, generators=gens).fit(noisy, clean)
        counts.append(gap_report(m, noisy, clean).n_nonzero_groups)
    assert counts[1] < counts[0]


def test_multichannel_input(mnist_digits):
    clean = torch.from_numpy(mnist_digits[:1, 8:20, 8:20].copy()).unsqueeze(1)
    torch.manual_seed(0)
    noisy = torch.cat([clean + 0.3 * torch.randn_like(clean),
                       clean + 0.3 * torch.randn_like(clean)], 1)   # two noisy looks
    model = ConvexDualDenoiser(n_patterns=6, beta=0.05, seed=1).fit(noisy, clean)
    assert model.generators_.shape[1:] == (2, 3, 3)
    assert gap_report(model, noisy, clean).relative_gap < 1e-5
