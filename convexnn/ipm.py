"""Primal-dual interior-point solver for eq. 4 (squared loss): `fit(..., solver="ipm")`.

Eq. 4 with the squared loss is the conic QP (sum scale; `A a = sum_i D_i Yp a_i`, eq. 3)

    min  1/2 ||A (v - w) - y||^2 + beta sum_g t_g
    s.t. (2 D_i - I) Yp v_i >= 0,  (2 D_i - I) Yp w_i >= 0      (N x 2P linear cone rows)
         ||u_g||_2 <= t_g  for the 2P groups u = [v; w]          (2P second-order cones)

in the variables `x = (u, t)` (2P d + 2P numbers, d = C k^2: a few thousand for P <= 100).
It is solved by Mehrotra's predictor-corrector with Nesterov-Todd scaling (the method of
CVXOPT's `coneqp`, Vandenberghe 2010), written for this structure: the Newton matrix is
`[[K, -K], [-K, K]] + blockdiag_g(C_g^T diag(z/s) C_g + SOC block)` with `K = A^T A` (the
streamed Gram, P d x P d) and `C_g` the cone rows of group g; each `t_g` is eliminated in its
group, and the `b = v + w` half per pattern, leaving one dense Cholesky of size P d per
iteration (no N x P Jacobian is formed).

Working set: only a few of the N rows of a group are active at the optimum, and they lie among
the rows nearest the pattern's generator hyperplane. The solver runs on 16 d such rows per
pattern, checks the solution against every row, and re-solves with the violated rows added
until none is (a solution of the relaxation that is feasible for eq. 4 solves eq. 4; its
certificate carries over with zero multipliers on the dropped rows).

Optimality evidence: at every iterate `s^T z` is the gap between this primal objective and
the dual objective; the solver stops when the relative gap and both residuals are below `tol`
/ `feas_tol`, and reports the gap, the lower bound and the residuals in `solve_info_.details`.
Losses other than squared are refused (use "admm" or "cvxpy"); memory grows as (2 P d)^2, so
large P is refused with a pointer to "admm" / "adam".
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from ._validation import check_choice, check_in_range, check_int, check_positive
from .admm import _scales, run_with_threads
from .admm_ops import PatternOperators
from .problem import ConvexSolverError, DualProblem, DualSolution, SolveInfo, refuse_or_warn

__all__ = ["IpmConfig", "solve_ipm"]
_STALL = 5                     # iterations without the dual residual halving = a stall
_REFINE_FRACTION = 0.1         # refine a Newton solve until its residual <= this x dual residual
_TARGET_A, _TARGET_B = 1.2, 0.3  # Gondzio corrector: aim for step min(1, A alpha + B)
_MAX_ROUNDS = 8                # working-set rounds before falling back to every row


@dataclass
class IpmConfig:
    """Options of `fit(..., solver="ipm")`.

    `tol`: relative duality gap `s^T z / max(1, |objective|)` at which to stop (a certificate:
    the returned objective is within `tol` of the optimum when the residuals are below
    `feas_tol`: the primal one on unit-normalised rows, the dual one relative to the largest
    inf-norm of `q`, `P x` and `G^T z`, as OSQP). `max_dim`: largest Newton system `P d`
    accepted (two dense `(P d)^2` float64 matrices; four times that in the rare iteration that
    falls back to factoring the `2 P d` matrix); `max_cone_entries`: largest `N x 2P` on every
    row (about 12 such float64 arrays are live); with the working set about 4 are (the signs
    and the check against every row), so up to 3x that is accepted.
    Not converging within `max_iter` / `time_limit` raises `ConvexSolverError` unless
    `allow_inaccurate=True` (then a warning is issued and the iterate returned). A numerical
    breakdown of the Newton matrix after the gap and residuals are below `reduced_tol`, or a
    dual residual that stops improving (5 iterations without halving) once the gap is below
    `tol`, returns that iterate with status "optimal_reduced" and a warning (its certificate
    is reported).
    `refine`: at most this many refinement steps of a Newton solve against the full matrix,
    taken while the solve's residual is above a tenth of the iterate's dual residual (the
    residual of the solve is what a step adds to it); an iteration whose first solve is that
    accurate refines none of its solves.
    `start`: "least_squares" (CVXOPT's: the identity-scaled Newton step from 0, shifted into
    the cones) or "unit" (x = 0, s = z = e). `centrality_correctors`: at most this many Gondzio
    correctors per iteration on the LP rows (each one more solve with the same factorisation,
    kept only if it lengthens the step; 2 MNIST digits x 60 patterns: 56 iterations with none,
    41 with 1, 33 with 3).
    `working_rows`: solve on a working set of this many cone rows per pattern (None: 16 d;
    0: every row): the rows whose patch is nearest the pattern's generator hyperplane
    (smallest `|x_n^T g_i| / ||x_n||`, where the active constraints lie: on 2 MNIST digits x 60
    patterns every active row is among the 54 nearest of 1,568). The solution is then checked
    against every row; rows violated by more than `feas_tol` join the set and the problem is
    solved again (at most 8 rounds, then on every row). A working-set solution that satisfies
    every row solves eq. 4, and its certificate holds for eq. 4 (the dropped rows carry zero
    multipliers). `details["working_rows"]` / `["screening_rounds"]` report what was used.
    """

    tol: float = 1e-8
    feas_tol: float = 1e-8
    reduced_tol: float = 1e-6
    max_iter: int = 200
    step_fraction: float = 0.99
    max_dim: int = 6000
    max_cone_entries: int = 25_000_000
    refine: int = 2
    num_threads: int | None = None     # None: torch's current setting
    device: str | None = None
    time_limit: float | None = None
    allow_inaccurate: bool = False
    verbose: bool = False
    block_elements: int = 2 ** 24
    start: str = "least_squares"
    centrality_correctors: int = 3
    working_rows: int | None = None

    def __post_init__(self) -> None:
        check_in_range(self.tol, "tol", 0.0, 1.0)
        check_in_range(self.feas_tol, "feas_tol", 0.0, 1.0)
        check_in_range(self.reduced_tol, "reduced_tol", 0.0, 1.0)
        check_int(self.max_iter, "max_iter")
        check_in_range(self.step_fraction, "step_fraction", 0.0, 1.0, low_open=True,
                       high_open=True)
        check_int(self.max_dim, "max_dim")
        check_int(self.max_cone_entries, "max_cone_entries")
        check_int(self.refine, "refine", 0)
        check_int(self.block_elements, "block_elements")
        check_choice(self.start, "start", ("least_squares", "unit"))
        check_int(self.centrality_correctors, "centrality_correctors", 0)
        if self.working_rows is not None:
            check_int(self.working_rows, "working_rows", 0)
        if self.num_threads is not None:
            check_int(self.num_threads, "num_threads")
        if self.time_limit is not None:
            check_positive(self.time_limit, "time_limit")


# ---------------------------------------------------------------------- second-order cones
# Rows of (G, d + 1) tensors are points (x0, x1) of G second-order cones ||x1|| <= x0.
def _det(u: torch.Tensor) -> torch.Tensor:
    """u0^2 - ||u1||^2, as (u0 - ||u1||)(u0 + ||u1||) (no cancellation near the boundary)."""
    n = u[:, 1:].norm(dim=1)
    return (u[:, 0] - n) * (u[:, 0] + n)


def _jprod(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Jordan product u o v = (u^T v, u0 v1 + v0 u1)."""
    return torch.cat([(u * v).sum(1, keepdim=True), u[:, :1] * v[:, 1:] + v[:, :1] * u[:, 1:]], 1)


def _jdiv(lam: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """x with lam o x = r."""
    x0 = (lam[:, 0] * r[:, 0] - (lam[:, 1:] * r[:, 1:]).sum(1)) / _det(lam)
    return torch.cat([x0[:, None], (r[:, 1:] - x0[:, None] * lam[:, 1:]) / lam[:, :1]], 1)


def _boost(xb: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """v with `(2 v v^T - J) e = xb` for points `xb` of determinant 1 (a Lorentz boost;
    its inverse is `2 (J v)(J v)^T - J`)."""
    return (xb + e) / (2.0 * (xb[:, :1] + 1.0)).sqrt()


def _to_identity(u: torch.Tensor, jd: torch.Tensor) -> torch.Tensor:
    """Per cone, a positive multiple of a cone automorphism `G` with `G u = e` (u interior):
    `G = (2 (J v)(J v)^T - J) / sqrt(det u)`, v the boost to `u / sqrt(det u)`."""
    du = _det(u).sqrt()
    e = torch.zeros_like(u[0])
    e[0] = 1.0
    jv = _boost(u / du[:, None], e) * jd
    return (2.0 * jv[:, :, None] * jv[:, None, :] - torch.diag(jd)) / du[:, None, None]


def _boundary_rate(y: torch.Tensor) -> torch.Tensor:
    """Per cone, `||y1|| - y0`: `e + a y` stays in the cone iff `a (||y1|| - y0) <= 1`, so the
    largest step from `e` along `y` is `1 / max(0, rate)`."""
    return y[:, 1:].norm(dim=1) - y[:, 0]


class _NtScaling:
    """Nesterov-Todd scaling W of the SOC part: W z = W^{-1} s = lam (CVXOPT notation)."""

    def __init__(self, s: torch.Tensor, z: torch.Tensor, jd: torch.Tensor) -> None:
        ds, dz = _det(s).sqrt(), _det(z).sqrt()
        sb, zb = s / ds[:, None], z / dz[:, None]
        gam = ((1.0 + (sb * zb).sum(1)) / 2.0).sqrt()
        wb = (sb + zb * jd) / (2.0 * gam[:, None])
        e = torch.zeros_like(wb[0])
        e[0] = 1.0
        self.v = _boost(wb, e)                                     # W-bar = 2 v v^T - J
        self.eta = (ds / dz).sqrt()
        jv = self.v * jd
        eta = self.eta[:, None, None]
        jm = torch.diag(jd)[None]
        # as (G, d+1, d+1) matrices: one batched product per application (the cones are small)
        self.w = eta * (2.0 * self.v[:, :, None] * self.v[:, None, :] - jm)
        self.winv = (2.0 * jv[:, :, None] * jv[:, None, :] - jm) / eta
        self.w2inv = self.winv @ self.winv                               # W^{-2}

    def apply(self, u: torch.Tensor) -> torch.Tensor:
        return torch.bmm(self.w, u.unsqueeze(2)).squeeze(2)

    def apply_inv(self, u: torch.Tensor) -> torch.Tensor:
        return torch.bmm(self.winv, u.unsqueeze(2)).squeeze(2)


# ---------------------------------------------------------------------- problem data
class _ConeRows:
    """The non-zero cone rows `c_n = (2 D_in - 1) Yp_n / ||Yp_n||` of every group.

    The LP slacks and duals are kept in *signed coordinates* `sign o s`, `sign o z` (sign =
    2 D - 1 = +-1): products `s o z`, ratios `z / s`, step ratios `ds / s` are unchanged, and
    `C u` / `C^T z` become plain products with the row matrix (no pass over `sign`; the LP
    part of an iteration is bound by passes over these (M, 2P) arrays). `sign` is used only
    for the start and for reporting.
    """

    def __init__(self, ops: PatternOperators, block_elements: int) -> None:
        keep = ops.unit_scale > 0
        self.X = (ops.X[keep] * ops.unit_scale[keep, None]).contiguous()         # (M, d)
        self.xt = self.X.T.contiguous()
        sgn = 2.0 * ops.masks[keep].to(ops.dtype) - 1.0                           # (M, P)
        self.sign = torch.cat([sgn, sgn], 1).contiguous()                          # (M, 2P)
        self.m, self.d = self.X.shape
        # the products x_i x_j of each row for i <= j (the Gram blocks are symmetric)
        self.iu = torch.triu_indices(self.d, self.d, device=self.X.device)
        self.step = max(1, block_elements // max(self.iu.shape[1], 1))
        self.xx = None
        if self.m * self.iu.shape[1] <= block_elements:   # row products, cached if small
            self.xx = self._products(self.X).T.contiguous()                    # (d(d+1)/2, M)

    def _products(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.iu[0]] * x[:, self.iu[1]]

    def values(self, u: torch.Tensor, minus: torch.Tensor | None = None) -> torch.Tensor:
        """`sign o C u` (signed coordinates): (M, 2P) for u (2P, d); `C u - minus` if given."""
        # (u^T contiguous: with the transposed view MKL returns a layout that makes later
        # elementwise products ~10x slower; likewise the contiguous X^T / xx below)
        if minus is None:
            return self.X @ u.T.contiguous()
        return torch.addmm(minus, self.X, u.T.contiguous(), beta=-1.0)

    def residual(self, u: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """`s - sign o C u`: the LP part of the primal residual `G x + s`."""
        return torch.addmm(s, self.X, u.T.contiguous(), alpha=-1.0)

    def adjoint(self, z: torch.Tensor) -> torch.Tensor:
        """`C^T z` for z in signed coordinates (M, 2P): (2P, d)."""
        return (self.xt @ z).T

    def weighted_grams(self, wgt: torch.Tensor) -> torch.Tensor:
        """`C_g^T diag(wgt_g) C_g` for every group: (2P, d, d), streamed over rows."""
        if self.xx is not None:
            half = (self.xx @ wgt).T
        else:
            half = self.X.new_zeros((wgt.shape[1], self.iu.shape[1]))
            for r0 in range(0, self.m, self.step):
                half.addmm_(wgt[r0:r0 + self.step].T, self._products(self.X[r0:r0 + self.step]))
        out = half.new_empty((half.shape[0], self.d, self.d))
        out[:, self.iu[0], self.iu[1]] = half
        out[:, self.iu[1], self.iu[0]] = half
        return out


class _WorkingRows:
    """A working set of cone rows: `k` rows per pattern (`idx`, (k, P) row indices into
    `_ConeRows`), shared by the pattern's two groups v_i, w_i. The rows carry their sign
    (`c = (2 D_in - 1) x_n / ||x_n||`), so slacks and duals are plain (sign = 1); the arrays
    are (k, 2P) as for `_ConeRows`."""

    def __init__(self, full: _ConeRows, idx: torch.Tensor) -> None:
        p = idx.shape[1]
        signed = full.X[idx] * full.sign[:, :p].gather(0, idx)[:, :, None]       # (k, P, d)
        xg = signed.permute(1, 0, 2)
        self.xg = torch.cat([xg, xg]).contiguous()                                # (2P, k, d)
        self.xgt = self.xg.mT.contiguous()                                        # (2P, d, k)
        self.m, self.d = idx.shape[0], full.d
        self.sign = torch.ones((self.m, 2 * p), dtype=full.X.dtype, device=full.X.device)

    def values(self, u: torch.Tensor, minus: torch.Tensor | None = None) -> torch.Tensor:
        cu = torch.bmm(self.xg, u.unsqueeze(2)).squeeze(2).T                      # (k, 2P)
        return cu.contiguous() if minus is None else cu - minus

    def residual(self, u: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return s - torch.bmm(self.xg, u.unsqueeze(2)).squeeze(2).T
    def adjoint(self, z: torch.Tensor) -> torch.Tensor:
        return torch.bmm(self.xgt, z.T.unsqueeze(2)).squeeze(2)                   # (2P, d)

    def weighted_grams(self, wgt: torch.Tensor) -> torch.Tensor:
        return torch.bmm(self.xgt * wgt.T[:, None, :], self.xg)                   # (2P, d, d)


# ---------------------------------------------------------------------- solver
def solve_ipm(problem: DualProblem, config: IpmConfig | None = None) -> DualSolution:
    """Solve eq. 4 (squared loss) to relative duality gap `config.tol`."""
    cfg = config or IpmConfig()
    return run_with_threads(cfg.num_threads or torch.get_num_threads(), _solve, problem, cfg)


def _solve(problem: DualProblem, cfg: IpmConfig) -> DualSolution:
    t_start = time.perf_counter()
    if problem.loss.name != "squared":
        raise ValueError(f"solver='ipm': expected loss='squared' (the only loss it handles), "
                         f"got loss={problem.loss.name!r}: use solver='admm' or 'cvxpy'")
    p, d = problem.n_patterns, problem.patch_dim
    dim, cone = p * d, 2 * p * problem.n_pixels
    if dim > cfg.max_dim:
        raise ValueError(f"solver='ipm': the Newton system has P d = {dim} rows (P = {p}, "
                         f"d = {d}), above max_dim = {cfg.max_dim} ({16 * dim * dim / 1e9:.1f} GB"
                         f" dense); use solver='admm' or 'adam' at this size, or raise max_dim")
    k = 16 * d if cfg.working_rows is None else cfg.working_rows
    arrays = 4 if 0 < k < problem.n_pixels else 12      # live (N, 2P) float64 arrays
    if arrays * cone > 12 * cfg.max_cone_entries:
        raise ValueError(f"solver='ipm': expected at most max_cone_entries = "
                         f"{cfg.max_cone_entries} cone rows ({12 * cfg.max_cone_entries // arrays}"
                         f" with the working set), got 2 P N = {cone} (P = {p}, N = "
                         f"{problem.n_pixels}; about {8 * arrays * cone / 1e9:.1f} GB of slacks, "
                         f"duals and checks); use solver='admm' or 'adam' at this size, or "
                         f"raise it")
    device = torch.device(cfg.device) if cfg.device else problem.noisy.device
    dt = torch.float64
    sx, sy = _scales(problem)
    ops = PatternOperators(problem.noisy, problem.generators, sx, device, dt,
                           cfg.block_elements)
    y = problem.target.to(device=device, dtype=dt).reshape(-1) / sy
    jd = torch.ones(d + 1, device=device, dtype=dt)
    jd[1:] = -1.0
    kg = ops.gram()                                                   # K = A^T A (P d)^2
    aty = ops.At(y).reshape(-1)
    beta = problem.beta / (sx * sy)
    data = _Data(kg=kg, aty=aty, yy=0.5 * float(y @ y), beta=beta, p=p, d=d, jd=jd,
                 qnorm=max(1.0, float(aty.abs().max()), beta), obj_scale=sy * sy)
    rows = _ConeRows(ops, cfg.block_elements)
    # working set: per pattern the rows nearest its generator's hyperplane (|x_n^T g| small)
    margin = forced = idx = None
    if 0 < k < rows.m:
        g = problem.generators.to(device=device, dtype=dt).reshape(p, d)
        margin = (rows.X @ g.T).abs()                                           # (M, P)
        forced = torch.zeros_like(margin, dtype=torch.bool)
        idx = torch.topk(margin, k, dim=0, largest=False).indices                # (k, P)
    t_setup = time.perf_counter() - t_start
    history: list[dict[str, float]] = []
    iterations, reg_used, rounds, t_solve = 0, 0.0, 0, 0.0
    while True:
        active = rows if idx is None else _WorkingRows(rows, idx)
        run = _run(active, data, cfg, t_start, history, rounds)
        iterations += run.iterations
        reg_used = max(reg_used, run.regularization)
        t_solve += run.seconds
        if idx is None:
            break
        if run.status == "numerical_error" and max(run.rel_gap, run.pres,
                                                    run.dres) > cfg.reduced_tol:
            idx, rounds = None, rounds + 1     # the working set broke down: every row
            continue
        if run.status not in ("optimal", "numerical_error"):
            break
        # the working set's solution solves eq. 4 iff it satisfies every row (its lower bound
        # is one for eq. 4 too: the dropped rows' multipliers are 0); else add the violated rows
        viol = rows.sign * rows.values(run.point.u) < -max(cfg.feas_tol, run.pres)  # (M, 2P)
        new = (viol[:, :p] | viol[:, p:]) & ~forced
        if not bool(new.any()):
            break
        rounds += 1
        forced |= new
        k = min(rows.m, k + int(new.sum(0).max()))
        idx = None if rounds >= _MAX_ROUNDS or k >= rows.m else torch.topk(
            margin.masked_fill(forced, -1.0), k, dim=0, largest=False).indices
    status, it, pt = run.status, iterations, run.point
    rel_gap, pres, dres, gap, pobj = run.rel_gap, run.pres, run.dres, run.gap, run.pobj
    if status == "numerical_error" and max(rel_gap, pres, dres) <= cfg.reduced_tol:
        status = "optimal_reduced"        # the last iterate's own certificate, reported
        warnings.warn(f"IPM: the Newton matrix broke down or the residuals stalled after {it} "
                      f"iterations at relative gap {rel_gap:.2e}, residuals {pres:.1e} / "
                      f"{dres:.1e} (<= reduced_tol {cfg.reduced_tol:g}, not all <= tol "
                      f"{cfg.tol:g} / feas_tol {cfg.feas_tol:g}); "
                      f"returning that iterate with status 'optimal_reduced'", RuntimeWarning,
                      stacklevel=3)
    elif status != "optimal":
        msg = (f"IPM stopped with status {status!r} after {it} iterations without reaching "
               f"tol={cfg.tol:g}: relative gap {rel_gap:.3e}, primal residual {pres:.3e}, "
               f"dual residual {dres:.3e}")
        refuse_or_warn(msg, status, cfg.allow_inaccurate)
    u = pt.u
    back = sy / sx
    shape = tuple(problem.generators.shape)
    v = (u[:p] * back).reshape(shape).cpu()
    w = (u[p:] * back).reshape(shape).cpu()
    cu = rows.sign * rows.values(u)                                 # every row, not the working set
    top = float(cu.abs().max()) if cu.numel() else 0.0
    obj_scale = data.obj_scale
    details: dict[str, Any] = {
        "relative_gap": rel_gap, "gap": gap * obj_scale,
        "lower_bound": (pobj - gap) * obj_scale, "r_primal": pres, "r_dual": dres,
        "relative_violation_internal": float((-cu).clamp_min(0).max()) / top if top else 0.0,
        "regularization": reg_used, "newton_dim": dim, "cone_rows": rows.m * 2 * p,
        "working_rows": active.m if idx is not None else rows.m, "screening_rounds": rounds,
        "device": str(device), "x_scale": sx, "y_scale": sy,
        "n_pixels": ops.n_pixels, "n_patterns": p,
    }
    info = SolveInfo(solver="ipm", status=status, setup_seconds=t_setup, solve_seconds=t_solve,
                     total_seconds=time.perf_counter() - t_start, iterations=it,
                     reported_objective=pobj * obj_scale, details=details)
    return DualSolution(v, w, info, history)


@dataclass
class _Data:
    """The data of eq. 4 in the solver's scaling (shared by the working-set rounds)."""

    kg: torch.Tensor       # K = A^T A (P d, P d)
    aty: torch.Tensor      # A^T y (P d,)
    yy: float              # ||y||^2 / 2
    beta: float
    p: int
    d: int
    jd: torch.Tensor       # diag(J) = (1, -1, ..., -1)
    qnorm: float           # inf-norm of q (dual residual scale)
    obj_scale: float       # objective in the caller's units = this one x obj_scale


@dataclass
class _Run:
    """How one interior-point run (on all rows or a working set) ended."""

    point: _Point
    status: str
    iterations: int
    rel_gap: float
    gap: float
    pobj: float
    pres: float
    dres: float
    regularization: float
    seconds: float


def _run(rows, data: _Data, cfg: IpmConfig, t_start: float, history: list[dict[str, float]],
         round_: int) -> _Run:
    """Mehrotra predictor-corrector with Gondzio correctors on eq. 4 with the cone rows `rows`."""
    kg, aty, beta, p, d, jd = data.kg, data.aty, data.beta, data.p, data.d, data.jd
    device, dt = aty.device, aty.dtype
    m, ng = rows.m, 2 * p
    deg = m * ng + ng
    e = torch.zeros(d + 1, device=device, dtype=dt)
    e[0] = 1.0
    # ---- x = (u, t); slacks / duals: LP (M, 2P), SOC (2P, d + 1)
    pt = _Point(u=torch.zeros((ng, d), device=device, dtype=dt),
                t=torch.zeros(ng, device=device, dtype=dt),
                sl=rows.sign.clone(), zl=rows.sign.clone(),      # s = z = 1 (signed)
                sq=e.repeat(ng, 1), zq=e.repeat(ng, 1))
    if cfg.start == "least_squares":
        pt = _least_squares_start(pt, rows, kg, aty, beta, jd, e, p, cfg.refine, rows.sign)
    status, it = "max_iter", 0
    reg_used = 0.0
    qnorm, yy, sy2 = data.qnorm, data.yy, data.obj_scale

    def kmul(a: torch.Tensor) -> torch.Tensor:
        ka = (kg @ a.reshape(-1)).reshape(p, d)
        return torch.cat([ka, -ka])

    gap = pres = dres = rel_gap = float("nan")
    best_dres: list[float] = []
    pobj = float("nan")
    t_loop = time.perf_counter()
    for it in range(1, cfg.max_iter + 1):
        # residuals of  P x + q + G^T z = 0  and  G x + s = 0  (G: -C on u, -I on (t, u))
        u, t, sl, zl, sq, zq = pt.u, pt.t, pt.sl, pt.zl, pt.sq, pt.zq
        a = u[:p] - u[p:]
        ka = kmul(a)
        ctz = rows.adjoint(zl)
        res = _Point(u=ka - torch.cat([aty.reshape(p, d), -aty.reshape(p, d)])
                     - ctz - zq[:, 1:], t=beta - zq[:, 0],
                     sl=rows.residual(u, sl), zl=None,
                     sq=sq - torch.cat([t[:, None], u], 1), zq=None)
        rxu, rxt, rzl, rzq = res.u, res.t, res.sl, res.sq
        slzl = sl * zl
        gap = float(slzl.sum() + (sq * zq).sum())
        mu = gap / deg
        quad = 0.5 * float((a.reshape(-1) * ka[:p].reshape(-1)).sum())
        pobj = quad - float(aty @ a.reshape(-1)) + yy + beta * float(t.sum())
        pres = float(torch.maximum(torch.stack(torch.aminmax(rzl)).abs().amax(),
                                   rzq.abs().amax()) if m else rzq.abs().amax())
        # relative to the largest term of P x + q + G^T z (as OSQP): inf-norms of q, P x, G^T z
        dnorm = max(qnorm, float(torch.stack([ka.abs().amax(), ctz.abs().amax(),
                                              zq.abs().amax()]).max()))
        dres = float(torch.maximum(rxu.abs().amax(), rxt.abs().amax())) / dnorm
        rel_gap = gap / max(1.0, abs(pobj))
        history.append({"iteration": it - 1, "round": round_, "objective": pobj * sy2,
                        "gap": gap * sy2, "relative_gap": rel_gap,
                        "r_primal": pres, "r_dual": dres,
                        "seconds": time.perf_counter() - t_start})
        if cfg.verbose:
            print(f"ipm {round_}:{it - 1:3d} obj {pobj * sy2:.12g} gap {rel_gap:.2e} "
                  f"pres {pres:.1e} dres {dres:.1e} rows {m}")
        if rel_gap <= cfg.tol and pres <= cfg.feas_tol and dres <= cfg.feas_tol:
            status = "optimal"
            it -= 1
            break
        # the dual residual can floor near feas_tol on ill-conditioned problems (the Newton
        # solves' own accuracy): stop once the gap is met and it has not halved in 5 iterations
        best_dres.append(min(dres, best_dres[-1]) if best_dres else dres)
        if (rel_gap <= cfg.tol and pres <= cfg.feas_tol and dres <= cfg.reduced_tol
                and len(best_dres) > _STALL and best_dres[-1] > 0.5 * best_dres[-1 - _STALL]):
            status = "numerical_error"      # reported as "optimal_reduced" below
            it -= 1
            break
        if cfg.time_limit is not None and time.perf_counter() - t_start > cfg.time_limit:
            status = "time_limit"
            it -= 1
            break
        if not all(map(math.isfinite, (gap, pres, dres, pobj))):
            status = "numerical_error"
            break
        # ---- scaling, the reduced Newton matrix, predictor and Mehrotra corrector
        try:
            lin = _Linearization(pt, res, rows, kg, jd, p, cfg.refine,
                                 _REFINE_FRACTION * dnorm * max(dres, cfg.feas_tol))
        except ConvexSolverError:
            status = "numerical_error"
            break
        reg_used = max(reg_used, lin.solve_x.regularization)
        lam2 = _jprod(lin.lam_q, lin.lam_q)
        aff = lin.newton(-slzl, -lam2)
        alpha_aff = min(1.0, lin.max_step(aff))
        sigma = (1.0 - alpha_aff) ** 3
        corr_q = _jprod(lin.nt.apply_inv(aff.sq), lin.nt.apply(aff.zq))
        rcl = torch.addcmul(sigma * mu - slzl, aff.sl, aff.zl, value=-1.0)
        rcq = -lam2 - corr_q + sigma * mu * e
        step = lin.newton(rcl, rcq)
        alpha = min(1.0, cfg.step_fraction * lin.max_step(step))
        for _ in range(cfg.centrality_correctors):   # Gondzio's correctors (LP rows)
            target = min(1.0, _TARGET_A * alpha + _TARGET_B)
            if alpha >= 0.9:
                break
            prod = torch.add(pt.sl, step.sl, alpha=target).mul_(
                torch.add(pt.zl, step.zl, alpha=target))
            lo, hi = 0.1 * sigma * mu, 10.0 * sigma * mu
            corr = prod.clamp(lo, hi).sub_(prod).clamp_min_(-hi)
            trial = lin.newton(corr.add_(rcl), rcq)
            alpha_t = min(1.0, cfg.step_fraction * lin.max_step(trial))
            if alpha_t < alpha + 0.1 * (target - alpha):
                break
            step, alpha, rcl = trial, alpha_t, corr   # corr now holds rcl + corr
        pt = pt.moved(step, alpha)
        history[-1]["step"] = alpha
    return _Run(point=pt, status=status, iterations=it, rel_gap=rel_gap, gap=gap, pobj=pobj,
                pres=pres, dres=dres, regularization=reg_used,
                seconds=time.perf_counter() - t_loop)


def _least_squares_start(pt0: _Point, rows: _ConeRows, kg: torch.Tensor, aty: torch.Tensor,
                         beta: float, jd: torch.Tensor, e: torch.Tensor, p: int,
                         refine: int, sign: torch.Tensor) -> _Point:
    """CVXOPT's starting point (Vandenberghe 2010, sec. 5.3): the Newton step with identity
    scaling from x = 0, z = 0 solves `P x + G^T z = -q`, `G x - z = 0` (x minimises
    `1/2 x^T P x + q^T x + 1/2 ||G x||^2`); s = -z and z are then shifted into the cones."""
    d = pt0.u.shape[1]
    q = _Point(u=-torch.cat([aty.reshape(p, d), -aty.reshape(p, d)]),
               t=torch.full_like(pt0.t, beta), sl=torch.zeros_like(pt0.sl), zl=None,
               sq=torch.zeros_like(pt0.sq), zq=None)
    lin = _Linearization(pt0, q, rows, kg, jd, p, refine)
    x = lin.newton(torch.zeros_like(pt0.sl), torch.zeros_like(pt0.sq))

    def shifted(lp: torch.Tensor, soc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # one shift for every cone (CVXOPT): lp + (1 + a) 1, soc + (1 + a) e if a >= 0
        # (lp in signed coordinates: its values are sign o lp, the shift is (1 + a) sign)
        a = max(float((-(sign * lp)).max()) if lp.numel() else -math.inf,
                float((soc[:, 1:].norm(dim=1) - soc[:, 0]).max()))
        if a >= 0:
            return torch.add(lp, sign, alpha=1.0 + a), soc + (1.0 + a) * e
        return lp, soc

    sl, sq = shifted(x.sl, x.sq)
    zl, zq = shifted(x.zl, x.zq)
    return _Point(u=x.u, t=x.t, sl=sl, zl=zl, sq=sq, zq=zq)


@dataclass
class _Point:
    """An iterate (or a direction, or residuals): x = (u, t), LP and SOC slacks and duals."""

    u: torch.Tensor          # (2P, d)
    t: torch.Tensor          # (2P,)
    sl: torch.Tensor         # (M, 2P)
    zl: torch.Tensor | None
    sq: torch.Tensor         # (2P, d + 1)
    zq: torch.Tensor | None

    def moved(self, step: _Point, alpha: float) -> _Point:
        return _Point(*(torch.add(x, dx, alpha=alpha) for x, dx in zip(
            (self.u, self.t, self.sl, self.zl, self.sq, self.zq),
            (step.u, step.t, step.sl, step.zl, step.sq, step.zq), strict=True)))


class _Linearization:
    """Nesterov-Todd scaling at an iterate and the Newton step for a complementarity rhs."""

    def __init__(self, pt: _Point, res: _Point, rows: _ConeRows, kg: torch.Tensor,
                 jd: torch.Tensor, p: int, refine: int, accuracy: float = 0.0) -> None:
        self.pt, self.res, self.rows = pt, res, rows
        self.inv_sl = 1.0 / pt.sl
        self.ratio = pt.zl * self.inv_sl                         # LP part: W^{-2} = diag(z / s)
        self.nt = _NtScaling(pt.sq, pt.zq, jd)
        self.lam_q = self.nt.apply(pt.zq)
        w2 = self.nt.w2inv
        btt, btu = w2[:, 0, 0], w2[:, 0, 1:]
        blk = w2[:, 1:, 1:] + rows.weighted_grams(self.ratio)
        blk = blk - btu[:, :, None] * btu[:, None, :] / btt[:, None, None]    # t eliminated
        self.solve_x = _NewtonSolver(kg, blk, btt, btu, p, refine, accuracy)
        self.zr = res.sl * self.ratio
        nt, lam = self.nt, self.lam_q
        # lam^{-1} o r = Arw(lam)^{-1} r with Arw(x)^{-1} = ((J x)(J x)^T / det x + I - e e^T) / x0
        jl = lam * jd
        arw_inv = jl[:, :, None] * jl[:, None, :] / _det(lam)[:, None, None]
        arw_inv.diagonal(dim1=1, dim2=2)[:, 1:] += 1.0
        self.winv_arw = nt.winv @ (arw_inv / lam[:, :1, None])     # r_c -> W^{-1} lam^{-1} o r_c
        self.w2inv_rz = nt.apply_inv(nt.apply_inv(res.sq))         # W^{-2} r_z
        # steps in the cones: s + a ds in K iff e + a G W^{-1} ds in K (G lam = e), likewise
        # z + a dz iff e + a G W dz: one batched product and a norm per direction
        g = _to_identity(lam, jd)
        self.step_maps = torch.cat([g @ nt.winv, g @ nt.w])

    def newton(self, rcl: torch.Tensor, rcq: torch.Tensor) -> _Point:
        """Solves the KKT system for `lam o (W dz + W^{-1} ds) = r_c` (CVXOPT's coneqp)."""
        res, rows, nt = self.res, self.rows, self.nt
        wds = torch.bmm(self.winv_arw, rcq.unsqueeze(2)).squeeze(2)   # W^{-1} lam^{-1} o r_c
        vl = torch.addcmul(self.zr, rcl, self.inv_sl)            # LP: (z r_z + r_c) / s
        vq = self.w2inv_rz + wds                                 # W^{-1}(W^{-1} r_z + d_s)
        du, dt = self.solve_x(-res.u + rows.adjoint(vl) + vq[:, 1:], -res.t + vq[:, 0])
        dsl = rows.values(du, minus=res.sl)                      # ds = -(G dx + r_z)
        dsq_ = torch.cat([dt[:, None], du], 1) - res.sq
        dzl = torch.addcmul(rcl, self.pt.zl, dsl, value=-1.0).mul_(self.inv_sl)  # (r_c - z ds)/s
        dzq = wds - nt.apply_inv(nt.apply_inv(dsq_))             # W^{-1}(d_s - W^{-1} ds)
        return _Point(du, dt, dsl, dzl, dsq_, dzq)

    def max_step(self, d: _Point) -> float:
        """Largest alpha keeping every slack and dual in its cone (one host sync)."""
        y = torch.bmm(self.step_maps, torch.cat([d.sq, d.zq]).unsqueeze(2)).squeeze(2)
        rates = [_boundary_rate(y).amax()]                        # SOC: a * rate <= 1
        if d.sl.numel():                                          # LP: a * max(-ds / s) <= 1
            rates += [-(d.sl * self.inv_sl).amin(), -(d.zl / self.pt.zl).amin()]
        rate = float(torch.stack(rates).amax())
        return 1.0 / rate if rate > 0 else math.inf


class _NewtonSolver:
    """Solves `H du = r` for `H = J^T K J + blockdiag(S_g)`, `J = [I, -I]` (u = [v; w]).

    In `a = v - w`, `b = v + w` (`Sigma = S_v + S_w`, `Delta = S_v - S_w` per pattern):

        [[K + Sigma/4, Delta/4], [Delta/4, Sigma/4]] [a; b] = [(r_v - r_w)/2; (r_v + r_w)/2]

    `b` is eliminated per pattern, leaving `(K + S_v Sigma^{-1} S_w) a = ...`: one Cholesky of
    size P d (not 2 P d) and only `Sigma^{-1}`, which stays usable when `S_v` or `S_w` alone is
    singular to working precision (a solve through `S_v^{-1}`, `S_w^{-1}` lost every digit near
    the optimum in our runs). A solve is refined against `H` itself while its residual is above
    `accuracy` (at most `refine` times). Where `K + S_v Sigma^{-1} S_w` is not positive definite
    in floating point (its blocks are PSD, but computing them loses ~1e-5 of their scale when
    z / s spans ~1e10, met at 600 MNIST digits near the optimum), `H` itself (2 P d) is factored.
    """

    def __init__(self, kg, blk, btt, btu, p: int, refine: int, accuracy: float) -> None:
        self.kg, self.blk, self.btt, self.btu, self.p, self.refine = kg, blk, btt, btu, p, refine
        self.accuracy, self.check = accuracy, True
        d = blk.shape[-1]
        sv, sw = blk[:p], blk[p:]
        self.delta = sv - sw
        self.lsig, r1 = _cholesky(sv + sw)
        finv = sv @ torch.cholesky_solve(sw, self.lsig)         # S_v Sigma^{-1} S_w
        finv = 0.5 * (finv + finv.mT)
        m = kg.clone()     # K + the symmetrised S_v Sigma^{-1} S_w on the diagonal blocks
        m.view(p, d, p, d).diagonal(dim1=0, dim2=2).add_(finv.permute(1, 2, 0))
        self.full = None
        try:
            (upper,), r2 = _cholesky(m[None], upper=True)
            self.lm = upper.mT             # L = U^T (torch factors upper ~25% faster here)
        except ConvexSolverError:
            # S_v Sigma^{-1} S_w is PSD, but when z / s spans ~1e10 (large N near the optimum)
            # its rounding error can exceed every shift: factor H itself (2 P d, 8x the work;
            # its sums of PSD terms do not cancel)
            h = torch.cat([torch.cat([kg, -kg], 1), torch.cat([-kg, kg], 1)])
            h.view(2 * p, d, 2 * p, d).diagonal(dim1=0, dim2=2).add_(blk.permute(1, 2, 0))
            (upper,), r2 = _cholesky(h[None], upper=True)
            self.full = upper.mT
        self.regularization = max(r1, r2)

    def _solve_u(self, ru: torch.Tensor) -> torch.Tensor:
        p = self.p
        if self.full is not None:
            return _chol_solve(self.full, ru.reshape(-1, 1)).reshape(2 * p, -1)
        ra, rb = 0.5 * (ru[:p] - ru[p:]), 0.5 * (ru[:p] + ru[p:])
        sig_rb = torch.cholesky_solve(rb[:, :, None], self.lsig)                 # Sigma^-1 r_b
        rhs = ra - (self.delta @ sig_rb)[:, :, 0]
        a = _chol_solve(self.lm, rhs.reshape(-1, 1)).reshape(p, -1)
        b = torch.cholesky_solve(4.0 * rb[:, :, None] - self.delta @ a[:, :, None],
                                 self.lsig)[:, :, 0]
        return torch.cat([0.5 * (a + b), 0.5 * (b - a)])

    def apply(self, du: torch.Tensor) -> torch.Tensor:
        p = self.p
        ka = (self.kg @ (du[:p] - du[p:]).reshape(-1)).reshape(p, -1)
        return torch.cat([ka, -ka]) + torch.einsum("gij,gj->gi", self.blk, du)

    def __call__(self, ru: torch.Tensor, rt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ru = ru - self.btu * (rt / self.btt)[:, None]
        du = self._solve_u(ru)
        for _ in range(self.refine if self.check else 0):   # refinement against H itself
            r = ru - self.apply(du)
            # the solve's residual is what the step adds to the dual residual: refine until
            # it is a tenth of the dual residual the iterate already has (or of feas_tol)
            if float(r.abs().amax()) <= self.accuracy:
                self.check = False   # this factorisation is accurate: trust its other solves
                break
            du = du + self._solve_u(r)
        return du, (rt - (self.btu * du).sum(1)) / self.btt


def _chol_solve(chol: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """`(L L^T)^{-1} r` by two triangular solves (torch.cholesky_solve copies its operands:
    3-4x slower at the sizes here)."""
    y = torch.linalg.solve_triangular(chol, r, upper=False)
    return torch.linalg.solve_triangular(chol.mT, y, upper=True)


def _cholesky(h: torch.Tensor, upper: bool = False) -> tuple[torch.Tensor, float]:
    """Cholesky factors (`L`, or `U = L^T` if `upper`) of a batch of SPD matrices, with the
    smallest diagonal shift (relative to each matrix's largest diagonal entry) that works for
    all of them."""
    scale = h.diagonal(dim1=-2, dim2=-1).abs().amax(-1).clamp_min(1e-300)
    for reg in (0.0, 1e-14, 1e-12, 1e-10, 1e-8):
        hh = h if reg == 0.0 else h + (reg * scale)[..., None, None] * torch.eye(
            h.shape[-1], dtype=h.dtype, device=h.device)
        chol, info = torch.linalg.cholesky_ex(hh, upper=upper)
        if not bool((info != 0).any()):
            return chol, reg
    raise ConvexSolverError("solver='ipm': the Newton matrix is not positive definite even "
                            "with a 1e-8 relative diagonal shift (numerical breakdown)",
                            "numerical_error")
