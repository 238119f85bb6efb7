"""Interior-point solver for eq. 4 (convexnn.solve.ipm.solver): agreement with CVXPY,
certificate, bad input."""

import numpy as np
import pytest
import torch
from helpers import random_pair

from convexnn import ConvexDualDenoiser, ConvexSolverError
from convexnn.analysis.certificate import certify, enumerate_generators_2d
from convexnn.solve.ipm.cones import NtScaling, boundary_rate, to_identity
from convexnn.solve.ipm.solver import IpmConfig, solve_ipm


@pytest.fixture(scope="module")
def reference():
    noisy, clean = random_pair()
    ref = ConvexDualDenoiser(n_patterns=8, beta=0.3).fit(noisy, clean, solver="cvxpy")
    return noisy, clean, ref


def test_matches_cvxpy_with_certified_gap(reference):
    noisy, clean, ref = reference
    m = ConvexDualDenoiser(beta=0.3, generators=ref.generators_).fit(noisy, clean, solver="ipm")
    info = m.solve_info_
    assert info.status == "optimal" and info.solver == "ipm"
    assert abs(m.objective_ - ref.objective_) <= 1e-7 * abs(ref.objective_)
    assert m.constraint_violation(noisy).relative <= 1e-9
    # the duality gap is a certificate: lower bound <= optimum <= returned objective
    d = info.details
    assert d["relative_gap"] <= 1e-8 and d["r_primal"] <= 1e-9 and d["r_dual"] <= 1e-9
    assert d["lower_bound"] <= ref.objective_ * (1 + 1e-9) <= m.objective_ * (1 + 2e-9)
    assert m.objective_ - d["lower_bound"] <= 1e-7 * abs(m.objective_)
    # history: one row per iteration, the gap ends 6+ orders of magnitude below the start
    h = m.history_
    assert len(h) == info.iterations + 1
    assert {"objective", "gap", "relative_gap", "r_primal", "r_dual"} <= set(h[-1])
    assert h[-1]["relative_gap"] < 1e-6 * h[0]["relative_gap"]


def test_two_channels_and_sum_of_parts_matches_cvxpy():
    noisy, clean = random_pair(seed=2, n=2, h=5, channels=2)
    ref = ConvexDualDenoiser(n_patterns=6, beta=0.2).fit(noisy, clean, solver="cvxpy")
    m = ConvexDualDenoiser(beta=0.2, generators=ref.generators_).fit(noisy, clean,
                                                                     solver="ipm")
    assert abs(m.objective_ - ref.objective_) <= 1e-7 * abs(ref.objective_)
    # the prediction is eq. 4's: same as the CVXPY solution's to solver accuracy
    assert torch.allclose(m.predict(noisy), ref.predict(noisy), atol=1e-5)


def test_enumerable_problem_certificate_closes():
    """All sign patterns (k = 1, 2 channels): the external certificate of
    convexnn.analysis.certificate (a scaled dual point, exact per-pattern check) agrees with
    the IPM's own gap."""
    rng = np.random.default_rng(0)
    clean = rng.standard_normal((1, 1, 4, 4))
    noisy = np.concatenate([clean + 0.5 * rng.standard_normal(clean.shape),
                            rng.standard_normal(clean.shape)], 1)
    g = enumerate_generators_2d(torch.from_numpy(noisy))
    m = ConvexDualDenoiser(kernel_size=1, beta=0.1, generators=g).fit(noisy, clean,
                                                                      solver="ipm")
    cert = certify(m, noisy, clean, check="exact")
    assert cert.lower_bound <= m.objective_ + 1e-9
    assert cert.certified_gap <= 1e-6


@pytest.mark.parametrize("scale", [1e-4, 1e4])
def test_poorly_scaled_data_gives_scaled_solution(reference, scale):
    noisy, clean, ref = reference
    a = ConvexDualDenoiser(beta=0.3, generators=ref.generators_).fit(noisy, clean,
                                                                     solver="ipm")
    b = ConvexDualDenoiser(beta=0.3 * scale * scale, generators=ref.generators_).fit(
        noisy * scale, clean * scale, solver="ipm")
    assert b.solve_info_.status == "optimal"
    assert abs(b.objective_ / scale ** 2 - a.objective_) <= 1e-7 * abs(a.objective_)
    assert torch.allclose(b.v_, a.v_, atol=1e-5 * float(a.v_.abs().max()))


def test_max_iter_raises_and_allow_inaccurate_warns(reference):
    noisy, clean, ref = reference
    pb = ConvexDualDenoiser(beta=0.3, generators=ref.generators_).make_problem(noisy, clean)
    with pytest.raises(ConvexSolverError) as err:
        solve_ipm(pb, IpmConfig(max_iter=3))
    assert err.value.status == "max_iter" and "relative gap" in str(err.value)
    with pytest.warns(RuntimeWarning, match="inaccurate"):
        sol = solve_ipm(pb, IpmConfig(max_iter=3, allow_inaccurate=True))
    assert sol.info.status == "max_iter" and sol.info.details["relative_gap"] > 1e-8


def test_refuses_other_losses_and_large_systems():
    noisy, clean = random_pair()
    with pytest.raises(ValueError, match=r"expected loss in \['squared'\].*\['cvxpy', 'admm'\]"):
        ConvexDualDenoiser(n_patterns=4, beta=0.3, loss="l1").fit(noisy, clean, solver="ipm")
    # what cannot fit in memory is refused before any work, naming what would fit
    fits = r"all P = 8 patterns .* at most 7 patterns fit"
    with pytest.raises(ConvexSolverError, match=fits) as err:
        ConvexDualDenoiser(n_patterns=8, beta=0.3).fit(noisy, clean, solver="ipm",
                                                       pricing=False, memory_limit=4e5)
    assert err.value.status == "memory_limit"
    with pytest.raises(ConvexSolverError, match="at most .* pixels fit"):
        ConvexDualDenoiser(n_patterns=8, beta=0.3).fit(noisy, clean, solver="ipm",
                                                       memory_limit=1e3)


@pytest.mark.parametrize("kw", [dict(tol=0.0), dict(tol=2.0), dict(max_iter=0),
                                dict(step_fraction=1.0), dict(refine=-1), dict(start="origin"),
                                dict(centrality_correctors=-1),
                                dict(time_limit=-1.0), dict(pricing_batch=0), dict(working_rows=-1),
                                dict(pricing=1), dict(memory_limit=-1.0)])
def test_bad_config(kw):
    with pytest.raises((ValueError, TypeError)):
        IpmConfig(**kw)


def _interior(rng, n, dim):
    u = torch.from_numpy(rng.standard_normal((n, dim)))
    u[:, 0] = u[:, 1:].norm(dim=1) + torch.from_numpy(rng.uniform(0.01, 1.0, n))
    return u


def test_soc_step_is_the_boundary():
    """The step to the cone boundary through the scaled maps: `G u = e`, and for slacks and
    duals (NT scaling W: W^{-1} s = W z = lam) the largest step along ds / dz is where
    `e + a G W^{-1} ds` / `e + a G W dz` leaves the cone, i.e. where s + a ds / z + a dz does."""
    rng = np.random.default_rng(3)
    n, dim = 300, 4
    jd = torch.tensor([1.0] + [-1.0] * (dim - 1), dtype=torch.float64)
    e = torch.zeros(dim, dtype=torch.float64)
    e[0] = 1.0
    s, z = _interior(rng, n, dim), _interior(rng, n, dim)
    nt = NtScaling(s, z, jd)
    lam = nt.apply(z)
    assert torch.allclose(nt.apply_inv(s), lam, rtol=1e-10, atol=1e-12)
    g = to_identity(lam, jd)
    assert torch.allclose(torch.bmm(g, lam[:, :, None])[:, :, 0], e.expand(n, dim), atol=1e-10)

    def inside(x):
        return float(x[0]) >= float(x[1:].norm()) - 1e-12 * max(1.0, float(x.abs().max()))

    for u, dmap in ((s, g @ nt.winv), (z, g @ nt.w)):
        du = torch.from_numpy(rng.standard_normal((n, dim)))
        rate = boundary_rate(torch.bmm(dmap, du[:, :, None])[:, :, 0])
        for i in range(n):
            if rate[i] > 0:
                a = 1.0 / float(rate[i])
                assert inside(u[i] + 0.999 * a * du[i]) and not inside(u[i] + 1.001 * a * du[i])
            else:
                assert all(inside(u[i] + t * du[i]) for t in (1.0, 10.0, 1e3))


def test_pattern_growth_with_ipm():
    """Column generation with exact re-solves: the objective never rises, every round adds
    patterns whose gated price exceeded beta, and a bad solver name is refused."""
    from convexnn.growth import grow_patterns

    noisy, clean = random_pair(seed=1, n=2, h=6)
    base = ConvexDualDenoiser(n_patterns=4, beta=0.3, seed=0).fit(noisy, clean, solver="ipm")
    res = grow_patterns(base, noisy, clean, rounds=3, add_per_round=4, n_candidates=2000,
                        solver="ipm")
    objs = [h["objective"] for h in res.history]
    assert len(objs) >= 2 and objs[-1] < objs[0]
    assert all(b <= a * (1 + 1e-8) for a, b in zip(objs, objs[1:], strict=False))
    assert res.model.generators_.shape[0] > base.generators_.shape[0]
    assert res.model.solve_info_.solver == "ipm"
    with pytest.raises(ValueError, match="solver"):
        grow_patterns(base, noisy, clean, solver="adam")


def test_streamed_rows_give_the_same_solution(reference):
    """block_elements below the cached size streams the row products (large images): same
    iterates up to rounding."""
    noisy, clean, ref = reference
    a = ConvexDualDenoiser(beta=0.3, generators=ref.generators_).fit(noisy, clean, solver="ipm")
    b = ConvexDualDenoiser(beta=0.3, generators=ref.generators_).fit(noisy, clean, solver="ipm",
                                                                     block_elements=50)
    assert b.solve_info_.iterations == a.solve_info_.iterations
    assert abs(b.objective_ - a.objective_) <= 1e-10 * abs(a.objective_)


@pytest.mark.parametrize("kw", [dict(start="unit"), dict(centrality_correctors=0),
                                dict(centrality_correctors=1), dict(refine=0)])
def test_variants_reach_the_same_certified_optimum(reference, kw):
    """Starting point, Gondzio correctors and refinement change the path, not the optimum."""
    noisy, clean, ref = reference
    m = ConvexDualDenoiser(beta=0.3, generators=ref.generators_).fit(noisy, clean,
                                                                     solver="ipm", **kw)
    assert m.solve_info_.status == "optimal"
    assert abs(m.objective_ - ref.objective_) <= 1e-7 * abs(ref.objective_)
    assert m.solve_info_.details["relative_gap"] <= 1e-8


def test_correctors_shorten_the_path_on_mnist(digit_pair):
    """On a real digit (1 MNIST digit x 20 patterns) the correctors cut iterations."""
    noisy, clean = digit_pair
    its = {}
    for k in (0, 2):
        m = ConvexDualDenoiser(n_patterns=20, beta=1e-3).fit(
            noisy, clean, solver="ipm", centrality_correctors=k)
        its[k] = (m.solve_info_.iterations, m.objective_)
    assert its[2][0] < its[0][0]
    assert abs(its[2][1] - its[0][1]) <= 1e-7 * abs(its[0][1])


def test_a_stalled_dual_residual_returns_optimal_reduced_with_its_certificate(reference):
    """feas_tol below what float64 Newton solves reach: the residual stalls once the gap is
    met; the iterate comes back as 'optimal_reduced' with a warning, not as 'optimal'."""
    noisy, clean, ref = reference
    with pytest.warns(RuntimeWarning, match="optimal_reduced"):
        m = ConvexDualDenoiser(beta=0.3, generators=ref.generators_).fit(
            noisy, clean, solver="ipm", feas_tol=1e-30)
    info = m.solve_info_
    assert info.status == "optimal_reduced" and info.iterations < 200
    assert info.details["r_dual"] > 1e-30 and info.details["relative_gap"] <= 1e-8
    assert abs(m.objective_ - ref.objective_) <= 1e-7 * abs(ref.objective_)


def test_working_set_solves_eq4_on_mnist(digit_pair):
    """On a real digit (784 rows per group, 20 patterns) the default working set (16 d = 144
    rows per pattern) reaches eq. 4's optimum on every row: same objective and prediction as
    the solve on all rows, no row violated, its own certificate valid for eq. 4."""
    noisy, clean = digit_pair
    full = ConvexDualDenoiser(n_patterns=20, beta=1e-3).fit(noisy, clean, solver="ipm",
                                                            working_rows=0)
    m = ConvexDualDenoiser(n_patterns=20, beta=1e-3).fit(noisy, clean, solver="ipm")
    d, d0 = m.solve_info_.details, full.solve_info_.details
    assert d0["working_rows"] == 784 and d0["screening_rounds"] == 0
    assert d["working_rows"] == 144 and m.solve_info_.status == "optimal"
    assert abs(m.objective_ - full.objective_) <= 1e-8 * abs(full.objective_)
    assert m.constraint_violation(noisy).relative <= 1e-9
    assert d["lower_bound"] <= full.objective_ * (1 + 1e-9)
    assert torch.allclose(m.predict(noisy), full.predict(noisy), atol=1e-5)


def test_too_small_working_set_adds_the_violated_rows(digit_pair):
    """Two rows per pattern cannot hold the active constraints: the solution violates rows,
    they join the set and the problem is solved again until none is violated (or, after 8
    rounds, on every row); the result is eq. 4's optimum either way."""
    noisy, clean = digit_pair
    full = ConvexDualDenoiser(n_patterns=12, beta=1e-3).fit(noisy, clean, solver="ipm",
                                                            working_rows=0)
    m = ConvexDualDenoiser(n_patterns=12, beta=1e-3).fit(noisy, clean, solver="ipm",
                                                         working_rows=2)
    d = m.solve_info_.details
    assert d["screening_rounds"] >= 1 and d["working_rows"] > 2
    assert m.solve_info_.iterations > full.solve_info_.iterations
    assert {h["round"] for h in m.history_} == set(range(d["screening_rounds"] + 1))
    assert abs(m.objective_ - full.objective_) <= 1e-8 * abs(full.objective_)
    assert m.constraint_violation(noisy).relative <= 1e-9


@pytest.mark.parametrize("reduced_fails", [False, True])
def test_newton_solver_reduced_and_full_factorisations(monkeypatch, reduced_fails):
    """`NewtonSolver` solves `H du = r`, `H = [[K, -K], [-K, K]] + blockdiag(S_g)`, through
    the P d matrix `K + S_v Sigma^{-1} S_w`; where that one cannot be factored (rounding at
    large N, simulated here) it factors H itself and gives the same solution."""
    import convexnn.solve.ipm.newton as ipm

    rng = np.random.default_rng(5)
    p, d = 4, 3
    a = torch.from_numpy(rng.standard_normal((2 * p * d, p * d)))
    kg = a.T @ a
    b = torch.from_numpy(rng.standard_normal((2 * p, d, 2 * d)))
    blk = b @ b.mT
    blk[0] *= 1e6                                     # one strongly active group
    btt = torch.ones(2 * p, dtype=torch.float64)
    btu = torch.zeros((2 * p, d), dtype=torch.float64)
    real = ipm.cholesky_shifted

    def cholesky(h, upper=False):
        if reduced_fails and h.shape[-1] == p * d:
            raise ConvexSolverError("simulated breakdown", "numerical_error")
        return real(h, upper)

    monkeypatch.setattr(ipm, "cholesky_shifted", cholesky)
    solver = ipm.NewtonSolver(kg, blk, btt, btu, p, refine=0, accuracy=0.0)
    assert (solver.full is not None) == reduced_fails
    h = torch.block_diag(*blk) + torch.cat([torch.cat([kg, -kg], 1), torch.cat([-kg, kg], 1)])
    r = torch.from_numpy(rng.standard_normal((2 * p, d)))
    du, _ = solver(r, torch.zeros(2 * p, dtype=torch.float64))
    expected = torch.linalg.solve(h, r.reshape(-1)).reshape(2 * p, d)
    assert torch.allclose(du, expected, rtol=1e-8, atol=1e-10 * float(expected.abs().max()))
