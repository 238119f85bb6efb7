"""Primal-dual interior-point solver for eq. 4 (squared loss): `fit(..., solver="ipm")`.

Eq. 4 with the squared loss is a conic QP in `x = (u, t)`: N x 2P linear cone rows and 2P
second-order cones (`convexnn.solve.ipm.loop`). It is solved by Mehrotra's predictor-corrector with
Nesterov-Todd scaling (CVXOPT's coneqp, Vandenberghe 2010), written for this structure: one
dense Cholesky of size P d per iteration with the Gram `K = A^T A` (`convexnn.solve.ipm.newton`),
on a working set of cone rows checked against every row (`convexnn.solve.ipm.working_set`).

Large P: pattern pricing (column generation, `convexnn.solve.ipm.pricing`) solves on a working set
of patterns and prices every candidate against the residual with the exact check of App. C, so the
Newton system holds only the patterns that matter and the certificate covers all P.

Optimality evidence: the interior point's gap `s^T z` (`details["relative_gap"]`,
`["lower_bound"]`) and, with pricing, the weak-duality bound over every candidate
(`details["certified_gap"]`). Losses other than squared are refused before any work.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import replace
from typing import Any

import torch

from convexnn.model.patches import patch_matrix
from convexnn.model.problem import ConvexSolverError, DualProblem, DualSolution, SolveInfo
from convexnn.solve.base import internal_scales, refuse_or_warn, run_with_threads
from convexnn.solve.ipm.config import IpmConfig
from convexnn.solve.ipm.loop import IpmData
from convexnn.solve.ipm.pricing import PricingSetup, newton_bytes, solve_with_pricing
from convexnn.solve.ipm.working_set import solve_on_rows
from convexnn.solve.pattern_rows import PatternRows
from convexnn.train.distributed import all_reduce_sum, setup_distributed

__all__ = ["IpmConfig", "solve_ipm", "check_ipm_problem"]

PRICING_WORK = 5e9          # N P^2 above which the automatic choice prices patterns


def check_ipm_problem(problem: DualProblem) -> None:
    """What the interior-point solver cannot take, refused before any work."""
    if problem.loss.name != "squared":
        raise ValueError(f"solver='ipm': expected loss='squared' (the only loss it handles), "
                         f"got loss={problem.loss.name!r}: use solver='cvxpy' (exact conic) "
                         f"or 'admm'")
    if problem.lipschitz_bound is not None:
        raise ValueError("solver='ipm': lipschitz_bound is enforced by solver='cvxpy' only")


def solve_ipm(problem: DualProblem, config: IpmConfig | None = None) -> DualSolution:
    """Solve eq. 4 (squared loss) to relative duality gap `config.tol` (with pattern pricing
    at large P: to a certified gap over every candidate pattern)."""
    cfg = config or IpmConfig()
    check_ipm_problem(problem)
    return run_with_threads(cfg.num_threads or torch.get_num_threads(), _solve, problem, cfg)


def _setup(problem: DualProblem, cfg: IpmConfig) -> PricingSetup:
    t_start = time.perf_counter()
    device = torch.device(cfg.device) if cfg.device else problem.noisy.device
    info = setup_distributed(cfg.distributed, device)
    sx, sy = internal_scales(problem, lambda t: all_reduce_sum(t, info))
    x = patch_matrix(problem.noisy.to(device=device, dtype=torch.float64),
                     problem.kernel_size) / sx
    rows = PatternRows(x, info)
    y = problem.target.to(device=device, dtype=torch.float64).reshape(-1) / sy
    g = problem.generators.to(device=device, dtype=torch.float64).reshape(
        problem.n_patterns, -1)
    yy = 0.5 * float(rows.sum(y @ y))
    return PricingSetup(problem, rows, g, y, problem.beta / (sx * sy), sx, sy, yy, t_start)


def _memory_plan(problem: DualProblem, cfg: IpmConfig, device: torch.device
                 ) -> tuple[bool, int, float]:
    """(use pricing, largest working set that fits, the limit in bytes)."""
    p, d, n = problem.n_patterns, problem.patch_dim, problem.n_pixels
    limit = cfg.memory_bytes(device)
    base = 8.0 * n * (2 * d + 4)                      # unit rows, norms, labels, residual
    room = limit - base
    max_w = int(math.sqrt(max(room, 0.0) / 88.0) / d) if room > 0 else 0
    if max_w < 1:
        raise ConvexSolverError(
            f"solver='ipm': {n} pixels x d = {d} need {base / 1e9:.2g} GB before any pattern, "
            f"above the memory limit of {limit / 1e9:.2g} GB (IpmConfig.memory_limit); at most "
            f"{int(limit / (8.0 * (2 * d + 4) + 88.0 * d * d))} pixels fit", "memory_limit")
    # measured on MNIST (2 cores): pricing pays once the Gram of every pattern costs more than
    # about N P^2 = 5e9 (100 digits x 250 patterns: 12.6 s either way; 600 x 200: 33.6 s with
    # pricing, 53 s without; 2 x 60: 0.8 s without, 1.3 s with)
    use = cfg.pricing if cfg.pricing is not None else (
        p > cfg.pricing_above or n * p * p > PRICING_WORK or p > max_w)
    if not use and p > max_w:
        raise ConvexSolverError(
            f"solver='ipm': the Newton system of all P = {p} patterns (d = {d}) needs "
            f"{newton_bytes(p, d) / 1e9:.3g} GB, above the memory limit of {limit / 1e9:.3g} GB; "
            f"at most {max_w} patterns fit in one system: drop pricing=False (pattern pricing "
            f"keeps only the patterns that matter) or pass fewer patterns", "memory_limit")
    return use, max_w, limit


def _solve(problem: DualProblem, cfg: IpmConfig) -> DualSolution:
    device = torch.device(cfg.device) if cfg.device else problem.noisy.device
    use_pricing, max_w, limit = _memory_plan(problem, cfg, device)
    s = _setup(problem, cfg)
    p, d = s.g.shape
    t_setup = time.perf_counter() - s.t_start
    history: list[dict[str, float]] = []
    if use_pricing:
        res = solve_with_pricing(s, cfg, history, max_w)
        u, status, it, pobj = res.u, res.status, res.iterations, res.objective
        details = dict(res.details)
        gap_ok = res.certified_gap
    else:
        kg = s.rows.extend_gram(None, s.g, 0)
        aty = s.rows.price(s.g, s.y)
        jd = torch.ones(d + 1, device=kg.device, dtype=kg.dtype)
        jd[1:] = -1.0
        data = IpmData(kg=kg, aty=aty.reshape(-1), yy=s.yy, beta=s.beta, p=p, d=d, jd=jd,
                       qnorm=max(1.0, float(aty.abs().max()), s.beta), obj_scale=s.sy ** 2)
        dense_fits = 12 * 8.0 * 2 * p * problem.n_pixels + newton_bytes(p, d) <= limit
        shown = replace(cfg, verbose=True) if cfg.progress and s.rows.info.is_main else cfg
        run, rr = solve_on_rows(data, s.rows, s.g, shown, s.t_start, history, 0, dense_fits)
        u, status, it, pobj = run.point.u, run.status, rr.iterations, run.pobj
        details = {"pricing": False, "relative_gap": run.rel_gap, "gap": run.gap * s.sy ** 2,
                   "lower_bound": (run.pobj - run.gap) * s.sy ** 2, "r_primal": run.pres,
                   "certified_gap": run.gap / max(abs(run.pobj), 1e-300),
                   "r_dual": run.dres, "regularization": rr.regularization,
                   "working_rows": rr.rows, "screening_rounds": rr.rounds}
        gap_ok = run.rel_gap
    t_solve = time.perf_counter() - s.t_start - t_setup
    status = _final_status(status, it, details, cfg, gap_ok)
    back = s.sy / s.sx
    shape = tuple(problem.generators.shape)
    details.update({
        "relative_violation_internal": s.rows.max_violation(s.g, u),
        "newton_dim": (details.get("working_patterns", p)) * d, "device": str(device),
        "x_scale": s.sx, "y_scale": s.sy, "n_pixels": s.rows.n_global, "n_patterns": p,
        "memory_limit_bytes": limit, "peak_newton_bytes": newton_bytes(
            details.get("working_patterns", p), d)})
    info = SolveInfo(solver="ipm", status=status, setup_seconds=t_setup, solve_seconds=t_solve,
                     total_seconds=time.perf_counter() - s.t_start, iterations=it,
                     reported_objective=pobj * s.sy ** 2, details=details)
    return DualSolution((u[:p] * back).reshape(shape).cpu(), (u[p:] * back).reshape(shape).cpu(),
                        info, history)


def _final_status(status: str, it: int, details: dict[str, Any], cfg: IpmConfig,
                  gap: float) -> str:
    res = (details.get("relative_gap", math.nan), details.get("r_primal", 0.0),
           details.get("r_dual", 0.0))
    if status == "numerical_error" and max(res) <= cfg.reduced_tol:
        warnings.warn(f"IPM: the Newton matrix broke down or the residuals stalled after {it} "
                      f"iterations at relative gap {res[0]:.2e}, residuals {res[1]:.1e} / "
                      f"{res[2]:.1e} (<= reduced_tol {cfg.reduced_tol:g}, not all <= tol "
                      f"{cfg.tol:g} / feas_tol {cfg.feas_tol:g}); "
                      f"returning that iterate with status 'optimal_reduced'", RuntimeWarning,
                      stacklevel=4)
        return "optimal_reduced"
    if status != "optimal":
        msg = (f"IPM stopped with status {status!r} after {it} iterations without reaching "
               f"tol={cfg.tol:g}: relative gap {res[0]:.3e}, primal residual {res[1]:.3e}, "
               f"dual residual {res[2]:.3e}")
        if details.get("pricing"):
            msg += (f"; pattern pricing: {details.get('working_patterns')} patterns in the "
                    f"working set (at most {details.get('max_working_patterns')} fit), "
                    f"certified gap {gap:.3e} over all {details.get('candidate_patterns')}")
        refuse_or_warn(msg, status, cfg.allow_inaccurate)
    return status
