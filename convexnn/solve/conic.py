"""Exact conic solution of eq. 4 with CVXPY (Clarabel by default; SCS, ECOS, MOSEK).

The program is built from constant sparse matrices, never from P Python-level expressions:
with `v = [v_1; ...; v_P]` (pattern-major, C k^2 per block),

    prediction  = A (v - w),          A   = [D_1 Yp, ..., D_P Yp]            (N x P d)
    constraints = B v >= 0, B w >= 0,  B   = blockdiag((2 D_i - I) Yp)        (P N x P d)
    regulariser = beta sum_i ||v_i||_2 + ||w_i||_2.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from convexnn.model.patches import patch_matrix
from convexnn.model.patterns import sign_masks
from convexnn.model.problem import ConvexSolverError, DualProblem, DualSolution, SolveInfo
from convexnn.model.validation import check_in_range, check_int
from convexnn.solve.memory import available_memory

__all__ = ["CvxpyConfig", "CVXPY_SOLVERS", "ProblemSizeError", "estimate_cvxpy_size",
           "solve_cvxpy", "build_cvxpy_problem"]

CVXPY_SOLVERS = ("CLARABEL", "SCS", "ECOS", "MOSEK")
# Peak resident bytes per nonzero of the constraint data, measured with
# benchmarks/cvxpy_scaling.py (canonicalisation + Clarabel's KKT factorisation), rounded up.
BYTES_PER_NONZERO = 400.0


class ProblemSizeError(MemoryError):
    """The CVXPY program would not fit in memory or time; use a scalable solver instead."""


@dataclass
class CvxpyConfig:
    """Options of `fit(..., solver="cvxpy")`."""

    cvxpy_solver: str = "CLARABEL"
    force: bool = False                 # build even when the size estimate says no
    max_constraints: int = 3_000_000    # 2 P N above this is refused unless force=True
    max_memory_fraction: float = 0.6    # of the memory available now
    allow_inaccurate: bool = False      # accept 'optimal_inaccurate' (with a warning)
    verbose: bool = False
    solver_options: dict[str, Any] = field(default_factory=dict)  # passed to cvxpy's solve()

    def __post_init__(self) -> None:
        if not isinstance(self.cvxpy_solver, str) or self.cvxpy_solver.upper() not in CVXPY_SOLVERS:
            raise ValueError(f"cvxpy_solver: expected one of {list(CVXPY_SOLVERS)}, "
                             f"got {self.cvxpy_solver!r}")
        self.cvxpy_solver = self.cvxpy_solver.upper()
        check_int(self.max_constraints, "max_constraints")
        check_in_range(self.max_memory_fraction, "max_memory_fraction", 0.0, 1.0,
                       high_open=False)
        if not isinstance(self.solver_options, dict):
            raise TypeError(f"solver_options: expected a dict of keyword arguments for cvxpy's "
                            f"solve(), got {type(self.solver_options).__name__}")


@dataclass(frozen=True)
class CvxpySize:
    n_constraints: int
    n_variables: int
    nonzeros: int
    estimated_bytes: float
    available_bytes: float


def estimate_cvxpy_size(n_pixels: int, n_patterns: int, patch_dim: int,
                        mask_density: float = 0.5) -> CvxpySize:
    """Size of the conic program: 2 P N constraints, 2 P d variables, nonzeros of A and B."""
    nnz = int(n_pixels * n_patterns * patch_dim * (2 + mask_density))
    return CvxpySize(2 * n_patterns * n_pixels, 2 * n_patterns * patch_dim, nnz,
                     nnz * BYTES_PER_NONZERO, available_memory())


def _constraint_matrices(problem: DualProblem) -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray]:
    x = problem.noisy.detach().to("cpu", torch.float64)
    yp = patch_matrix(x, problem.kernel_size).numpy()                      # (N, d), eq. 3
    n, d = yp.shape
    masks = sign_masks(x, problem.generators.to("cpu", torch.float64))    # (n, P, H, W)
    m = masks.permute(0, 2, 3, 1).reshape(n, -1).numpy()                 # (N, P)
    p = m.shape[1]
    # A = [D_1 Yp, ..., D_P Yp]
    nz_n, nz_p = np.nonzero(m)
    rows = np.repeat(nz_n, d)
    cols = (nz_p[:, None] * d + np.arange(d)[None, :]).ravel()
    a = sp.csr_matrix((yp[nz_n].ravel(), (rows, cols)), shape=(n, p * d))
    # B = blockdiag((2 D_i - I) Yp), rows pattern-major
    s = (2.0 * m - 1.0).T                                                  # (P, N)
    data = (s[:, :, None] * yp[None, :, :]).ravel()
    rows = np.repeat(np.arange(p * n), d)
    cols = (np.arange(p)[:, None, None] * d + np.arange(d)[None, None, :]).repeat(n, 1).ravel()
    b = sp.csr_matrix((data, (rows, cols)), shape=(p * n, p * d))
    y = problem.target.detach().to("cpu").double().reshape(-1).numpy()
    return a, b, y


def build_cvxpy_problem(problem: DualProblem):
    """The CVXPY `Problem` of eq. 4 (Appendix E loss) and its variables `(v, w)`."""
    import cvxpy as cp

    a, b, y = _constraint_matrices(problem)
    p, d = problem.n_patterns, problem.patch_dim
    v = cp.Variable(p * d, name="v")
    w = cp.Variable(p * d, name="w")
    groups = cp.sum(cp.norm(cp.reshape(v, (p, d), order="C"), 2, axis=1)) \
        + cp.sum(cp.norm(cp.reshape(w, (p, d), order="C"), 2, axis=1))
    objective = problem.loss.cvxpy(a @ (v - w) - y) + problem.beta * groups
    constraints = [b @ v >= 0, b @ w >= 0]
    if problem.lipschitz_bound is not None:
        constraints += _lipschitz_constraints(problem, v, w)
    return cp.Problem(cp.Minimize(objective), constraints), v, w


def _lipschitz_constraints(problem: DualProblem, v, w) -> list:
    """`sum_i t(v_i) + t(w_i) <= L` with `||V_i(omega)||_2 <= t(v_i)` on the frequency grid
    (bound (*) of convexnn.model.lipschitz, enforced on the grid; `fit` certifies it after)."""
    import cvxpy as cp

    from convexnn.model.lipschitz import dtft_matrices

    p, d, k = problem.n_patterns, problem.patch_dim, problem.kernel_size
    re, im = dtft_matrices(k, problem.lipschitz_grid)                  # (G, k^2)
    g = re.shape[0]
    c = d // (k * k)
    cons, total = [], 0
    for var in (v, w):
        mat = cp.reshape(var, (p, d), order="C")
        t = cp.Variable(p, nonneg=True)
        rows = []
        for ch in range(c):
            block = mat[:, ch * k * k:(ch + 1) * k * k]
            rows += [cp.vec(block @ re.T, order="C"), cp.vec(block @ im.T, order="C")]
        t_rep = cp.vec(cp.reshape(t, (p, 1), order="C") @ np.ones((1, g)), order="C")
        cons.append(cp.SOC(t_rep, cp.vstack(rows), axis=0))
        total = total + cp.sum(t)
    cons.append(total <= problem.lipschitz_bound)
    return cons


def _check_solver_available(name: str) -> None:
    import cvxpy as cp

    installed = cp.installed_solvers()
    if name in installed:
        return
    if name == "MOSEK":
        raise ConvexSolverError(
            "cvxpy_solver='MOSEK' needs the MOSEK Python API and a license: install it with "
            "`pip install -e \".[mosek]\"`, put a license file at ~/mosek/mosek.lic (free "
            "academic licenses exist) or set MOSEKLM_LICENSE_FILE; or pick cvxpy_solver="
            "'CLARABEL', 'SCS' or 'ECOS'.")
    raise ConvexSolverError(f"cvxpy_solver={name!r} is not installed (installed: {installed})")


def solve_cvxpy(problem: DualProblem, config: CvxpyConfig | None = None) -> DualSolution:
    """Solve eq. 4 exactly; raise `ConvexSolverError` unless the solver reports optimality."""
    import cvxpy as cp

    config = config or CvxpyConfig()
    _check_solver_available(config.cvxpy_solver)
    size = estimate_cvxpy_size(problem.n_pixels, problem.n_patterns, problem.patch_dim)
    too_many = size.n_constraints > config.max_constraints
    too_big = size.estimated_bytes > config.max_memory_fraction * size.available_bytes
    if (too_many or too_big) and not config.force:
        raise ProblemSizeError(
            f"the CVXPY program has 2 P N = {size.n_constraints:,} constraints "
            f"(limit {config.max_constraints:,}) and needs about "
            f"{size.estimated_bytes / 2**30:.1f} GiB (available "
            f"{size.available_bytes / 2**30:.1f} GiB): for the squared loss use solver='ipm' "
            f"(exact interior point with pattern pricing, the default of fit()); for l1 / Huber "
            f"solver='admm' (exact, first-order); or fewer patterns or images, or force=True "
            f"(--force on the command line) to build it anyway.")
    t0 = time.perf_counter()
    prob, v, w = build_cvxpy_problem(problem)
    t_build = time.perf_counter() - t0
    options = dict(config.solver_options)
    try:
        with warnings.catch_warnings():  # the status is checked and reported below
            warnings.filterwarnings("ignore", message="Solution may be inaccurate")
            prob.solve(solver=config.cvxpy_solver, verbose=config.verbose, **options)
    except cp.error.SolverError as exc:
        text = str(exc)
        if config.cvxpy_solver == "MOSEK" and "licen" in text.lower():
            raise ConvexSolverError(
                f"MOSEK failed for lack of a valid license ({text}). Get one (free for "
                f"academics) and set MOSEKLM_LICENSE_FILE, or use cvxpy_solver='CLARABEL'.",
                "license") from exc
        raise ConvexSolverError(f"{config.cvxpy_solver} failed: {text}", "solver_error") from exc
    total = time.perf_counter() - t0
    status = str(prob.status)
    if status == cp.OPTIMAL_INACCURATE and config.allow_inaccurate:
        warnings.warn(f"{config.cvxpy_solver} returned 'optimal_inaccurate'; check the gap "
                      f"report before trusting this solution", RuntimeWarning, stacklevel=3)
    elif status != cp.OPTIMAL:
        raise ConvexSolverError(
            f"{config.cvxpy_solver} ended with status {status!r} on eq. 4 "
            f"({size.n_constraints:,} constraints); no solution is returned. Try another "
            f"cvxpy_solver, or allow_inaccurate=True to accept an inaccurate one.", status)
    stats = prob.solver_stats
    compile_s = float(getattr(prob, "compilation_time", None) or 0.0)
    solve_s = float(stats.solve_time) if stats.solve_time is not None else total - compile_s
    shape = tuple(problem.generators.shape)
    vv = np.asarray(v.value, dtype=np.float64).reshape(shape)
    ww = np.asarray(w.value, dtype=np.float64).reshape(shape)
    info = SolveInfo(
        solver=f"cvxpy/{config.cvxpy_solver}", status=status,
        setup_seconds=t_build + compile_s, solve_seconds=solve_s, total_seconds=total,
        iterations=stats.num_iters, reported_objective=float(prob.value),
        details={"n_constraints": size.n_constraints, "n_variables": size.n_variables,
                 "build_seconds": t_build, "compile_seconds": compile_s})
    return DualSolution(torch.from_numpy(vv), torch.from_numpy(ww), info)
