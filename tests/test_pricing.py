"""Pattern pricing (column generation) around the interior-point solver
(convexnn.solve.ipm.pricing)."""

import numpy as np
import pytest
import torch
from helpers import random_pair

from convexnn import ConvexDualDenoiser, ConvexSolverError
from convexnn.model.patches import patch_matrix
from convexnn.solve.cone_values import ConeChecker, cone_values
from convexnn.solve.ipm.pricing import dual_bound
from convexnn.solve.pattern_rows import PatternRows


@pytest.fixture(scope="module")
def all_patterns():
    """40 patterns on one 8 x 8 image, solved by CVXPY over every pattern."""
    noisy, clean = random_pair(h=8)
    ref = ConvexDualDenoiser(n_patterns=40, beta=2.0).fit(noisy, clean, solver="cvxpy")
    return noisy, clean, ref


def test_column_generation_equals_cvxpy_over_all_patterns(all_patterns):
    """Pricing with 3 patterns added per round reaches CVXPY's optimum over all 40 patterns,
    with a lower bound over every candidate below it and a certified gap of at most 1e-6."""
    noisy, clean, ref = all_patterns
    m = ConvexDualDenoiser(beta=2.0, generators=ref.generators_).fit(
        noisy, clean, solver="ipm", pricing=True, pricing_batch=3)
    d = m.solve_info_.details
    assert m.solve_info_.status == "optimal" and d["pricing"]
    assert abs(m.objective_ - ref.objective_) <= 1e-7 * abs(ref.objective_)
    assert d["lower_bound"] <= ref.objective_ * (1 + 1e-9)
    assert d["certified_gap"] <= 1e-6
    rounds = d["pricing_rounds"]
    assert len(rounds) >= 3 and rounds[-1]["complete"] and rounds[-1]["violators"] == 0
    # the working set is the support (and some zeros): smaller than every pattern
    assert d["working_patterns"] < 40
    # the patterns outside the working set are exactly zero; inside, the solution is sparse
    nv, nw = m.group_norms()
    assert int(((nv > 0) | (nw > 0)).sum()) == d["working_patterns"]
    assert m.constraint_violation(noisy).relative <= 1e-9


def test_pricing_finds_and_adds_a_pattern_that_lowers_the_objective(all_patterns):
    """Solve exactly on 5 patterns; price the other 35 against the residual with the exact
    cone check: the best one's value exceeds beta, and adding it lowers the objective."""
    noisy, clean, ref = all_patterns
    g = ref.generators_
    base = ConvexDualDenoiser(beta=2.0, generators=g[:5]).fit(noisy, clean, solver="ipm",
                                                              pricing=False)
    x = torch.as_tensor(noisy, dtype=torch.float64)
    rows = PatternRows(patch_matrix(x, 3))
    lam = (torch.as_tensor(clean) - base.predict(noisy)).reshape(-1)
    cand = g[5:].reshape(35, -1)
    c = rows.price(cand, lam)
    vals = cone_values(rows, torch.cat([cand, cand]), torch.cat([c, -c]))
    assert bool(vals.exact.all())
    best = int(torch.argmax(torch.maximum(vals.upper[:35], vals.upper[35:])))
    assert max(vals.upper[best], vals.upper[35 + best]) > 2.0 * (1 + 1e-6)
    grown = ConvexDualDenoiser(beta=2.0, generators=torch.cat([g[:5], g[5 + best][None]])
                               ).fit(noisy, clean, solver="ipm", pricing=False)
    assert grown.objective_ < base.objective_ * (1 - 1e-6)


def test_cone_values_match_nnls_on_every_row():
    """The cutting-plane value equals the projection onto the cone of every row (NNLS on all
    N rows), its upper bound is never below it, and remembered rows make a repeat cheap."""
    from convexnn.analysis.certificate import cone_sup

    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal((2000, 9)))
    rows = PatternRows(x)
    g = torch.from_numpy(rng.standard_normal((30, 9)))
    c = torch.from_numpy(3 * rng.standard_normal((30, 9)))
    checker = ConeChecker(rows)
    first = checker.values(g, c, keys=list(range(30)))
    ref = np.array([cone_sup(c[i].numpy(), (x * torch.where(x @ g[i] >= 0, 1.0, -1.0)[:, None]
                                            ).numpy()) for i in range(30)])
    assert bool(first.exact.all())
    assert np.abs(first.upper.numpy() - ref).max() <= 1e-10 * ref.max()
    assert bool((first.upper.numpy() >= ref - 1e-12 * ref.max()).all())
    again = checker.values(g, c, keys=list(range(30)))
    assert again.passes == 30 < first.passes and torch.equal(again.exact, first.exact)


def test_dual_bound_is_weak_duality():
    lb, t = dual_bound(lam_y=4.0, lam_lam=2.0, beta=1.0, cmax=0.5)
    assert t == 2.0 and lb == 4.0
    lb, t = dual_bound(lam_y=4.0, lam_lam=2.0, beta=1.0, cmax=2.0)
    assert t == 0.5 and lb == 2.0 - 0.25


def test_edge_cases_duplicates_one_pattern_and_all_zero():
    """Duplicate and all-zero candidates (dedupe off), P = 1, and beta above every value."""
    noisy, clean = random_pair(seed=3, h=8)
    noisy = np.abs(noisy) + 0.1                    # positive patches: g = -1 gives D = 0
    ref = ConvexDualDenoiser(n_patterns=12, beta=1.0).fit(noisy, clean, solver="cvxpy")
    g = ref.generators_
    dup = torch.cat([g, g[:4], -torch.ones_like(g[:1])])
    m = ConvexDualDenoiser(beta=1.0, generators=dup, dedupe=False).fit(
        noisy, clean, solver="ipm", pricing=True, pricing_batch=2)
    assert m.solve_info_.status == "optimal"
    assert abs(m.objective_ - ref.objective_) <= 1e-7 * abs(ref.objective_)
    one = ConvexDualDenoiser(beta=1.0, generators=g[:1]).fit(noisy, clean, solver="ipm",
                                                             pricing=True)
    exact_one = ConvexDualDenoiser(beta=1.0, generators=g[:1]).fit(noisy, clean,
                                                                   solver="cvxpy")
    assert abs(one.objective_ - exact_one.objective_) <= 1e-7 * abs(exact_one.objective_)
    huge = ConvexDualDenoiser(beta=1e6, generators=g).fit(noisy, clean, solver="ipm",
                                                          pricing=True)
    d = huge.solve_info_.details
    assert huge.solve_info_.status == "optimal" and d["working_patterns"] == 0
    assert float(huge.v_.abs().max()) == 0.0 and float(huge.w_.abs().max()) == 0.0
    assert d["certified_gap"] == 0.0
    assert huge.objective_ == pytest.approx(0.5 * float((torch.as_tensor(clean) ** 2).sum()))


def test_memory_limit_bounds_the_working_set(digit_pair):
    """A working set that cannot grow within the memory limit stops with status
    'memory_limit' and says so (or returns the iterate with allow_inaccurate=True)."""
    noisy, clean = digit_pair
    kw = dict(solver="ipm", pricing=True, pricing_batch=4, memory_limit=5.5e6)
    with pytest.raises(ConvexSolverError, match="memory_limit") as err:
        ConvexDualDenoiser(n_patterns=60, beta=1e-2).fit(noisy, clean, **kw)
    assert "at most" in str(err.value)
    with pytest.warns(RuntimeWarning, match="inaccurate"):
        m = ConvexDualDenoiser(n_patterns=60, beta=1e-2).fit(noisy, clean,
                                                             allow_inaccurate=True, **kw)
    d = m.solve_info_.details
    assert m.solve_info_.status == "memory_limit"
    assert d["working_patterns"] <= d["max_working_patterns"]
    assert 0 < d["certified_gap"] < 1 and d["lower_bound"] < m.objective_


def test_warm_start_from_adam_caps_the_first_working_set(all_patterns):
    """A warm start from an inexact point (every group nonzero, as after solver="adam") starts
    the working set with at most 2 pricing batches of its largest groups and ends at the same
    optimum as a cold start; with a larger batch it takes every pattern above 1e-3 of the
    largest group."""
    noisy, clean, ref = all_patterns
    g = ref.generators_
    gen = torch.Generator().manual_seed(0)
    v = ref.v_ + torch.randn(ref.v_.shape, generator=gen, dtype=ref.v_.dtype)  # every group > 0
    w = ref.w_ + torch.randn(ref.w_.shape, generator=gen, dtype=ref.w_.dtype)
    for batch, first in ((3, 6), (50, 40)):
        m = ConvexDualDenoiser(beta=2.0, generators=g).fit(
            noisy, clean, solver="ipm", pricing=True, pricing_batch=batch, pricing_coarse=1,
            warm_start=(v, w))
        d = m.solve_info_.details
        assert d["pricing_rounds"][0]["working_patterns"] == first
        assert m.solve_info_.status == "optimal"
        assert abs(m.objective_ - ref.objective_) <= 1e-7 * abs(ref.objective_)
