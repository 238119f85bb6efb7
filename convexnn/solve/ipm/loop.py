"""One interior-point solve of eq. 4 on given cone rows: Mehrotra's predictor-corrector with
Nesterov-Todd scaling and Gondzio's correctors (CVXOPT's coneqp, Vandenberghe 2010).

Eq. 4 with the squared loss is the conic QP (sum scale; `A a = sum_i D_i Yp a_i`, eq. 3)

    min  1/2 ||A (v - w) - y||^2 + beta sum_g t_g
    s.t. (2 D_i - I) Yp v_i >= 0,  (2 D_i - I) Yp w_i >= 0      (the cone rows)
         ||u_g||_2 <= t_g  for the 2P groups u = [v; w]          (2P second-order cones)

in `x = (u, t)`. At every iterate `s^T z` is the gap between this primal objective and the
dual objective; the loop stops when the relative gap and both residuals are below tolerance.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from convexnn.model.problem import ConvexSolverError
from convexnn.solve.ipm.cones import jordan_product
from convexnn.solve.ipm.config import IpmConfig
from convexnn.solve.ipm.newton import Linearization, Point, least_squares_start
from convexnn.solve.ipm.rows import DenseConeRows, GatheredConeRows

__all__ = ["IpmData", "IpmRun", "run_interior_point"]

STALL = 5                     # iterations without the dual residual halving = a stall
REFINE_FRACTION = 0.1         # refine a Newton solve until its residual <= this x dual residual
TARGET_A, TARGET_B = 1.2, 0.3  # Gondzio corrector: aim for step min(1, A alpha + B)


@dataclass
class IpmData:
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
class IpmRun:
    """How one interior-point run (on all rows or a working set) ended."""

    point: Point
    status: str
    iterations: int
    rel_gap: float
    gap: float
    pobj: float
    pres: float
    dres: float
    regularization: float
    seconds: float


@dataclass
class _Context:
    """The fixed inputs of one run and where it logs."""

    rows: DenseConeRows | GatheredConeRows
    data: IpmData
    cfg: IpmConfig
    t_start: float
    history: list[dict[str, float]]
    round_: int
    e: torch.Tensor        # (d + 1,) identity of the second-order cone algebra
    deg: int               # degree of the cone: M 2P + 2P


@dataclass
class _Measures:
    """Residuals, gap and objective at one iterate: what the stopping tests look at."""

    res: Point | None = None            # residuals (u, t) of P x + q + G^T z, (sl, sq) of G x + s
    slzl: torch.Tensor | None = None    # s * z on the LP rows
    gap: float = float("nan")
    mu: float = float("nan")
    pobj: float = float("nan")
    pres: float = float("nan")
    dres: float = float("nan")
    dnorm: float = float("nan")         # scale of the dual residual
    rel_gap: float = float("nan")


def _initial_point(ctx: _Context) -> Point:
    """The starting iterate: s = z = 1, or the least-squares start (`cfg.start`)."""
    data, rows, cfg, e = ctx.data, ctx.rows, ctx.cfg, ctx.e
    ng, d = 2 * data.p, data.d
    device, dt = data.aty.device, data.aty.dtype
    # ---- x = (u, t); slacks / duals: LP (M, 2P), SOC (2P, d + 1)
    pt = Point(u=torch.zeros((ng, d), device=device, dtype=dt),
               t=torch.zeros(ng, device=device, dtype=dt),
               sl=rows.sign.clone(), zl=rows.sign.clone(),      # s = z = 1 (signed)
               sq=e.repeat(ng, 1), zq=e.repeat(ng, 1))
    if cfg.start == "least_squares":
        pt = least_squares_start(pt, rows, data.kg, data.aty, data.beta, data.jd, e, data.p,
                                 cfg.refine, rows.sign)
    return pt


def _kmul(data: IpmData, a: torch.Tensor) -> torch.Tensor:
    """`(K a, -K a)` (2P, d): the quadratic term's gradient in u = [v; w], a = v - w."""
    ka = (data.kg @ a.reshape(-1)).reshape(data.p, data.d)
    return torch.cat([ka, -ka])


def _measure(ctx: _Context, pt: Point) -> _Measures:
    """Residuals, duality gap `s^T z` and primal objective at `pt`."""
    data, rows = ctx.data, ctx.rows
    aty, beta, p, d = data.aty, data.beta, data.p, data.d
    # residuals of  P x + q + G^T z = 0  and  G x + s = 0  (G: -C on u, -I on (t, u))
    u, t, sl, zl, sq, zq = pt.u, pt.t, pt.sl, pt.zl, pt.sq, pt.zq
    a = u[:p] - u[p:]
    ka = _kmul(data, a)
    ctz = rows.adjoint(zl)
    res = Point(u=ka - torch.cat([aty.reshape(p, d), -aty.reshape(p, d)])
                 - ctz - zq[:, 1:], t=beta - zq[:, 0],
                 sl=rows.residual(u, sl), zl=None,
                 sq=sq - torch.cat([t[:, None], u], 1), zq=None)
    rxu, rxt, rzl, rzq = res.u, res.t, res.sl, res.sq
    slzl = sl * zl
    gap = float(slzl.sum() + (sq * zq).sum())
    quad = 0.5 * float((a.reshape(-1) * ka[:p].reshape(-1)).sum())
    pobj = quad - float(aty @ a.reshape(-1)) + data.yy + beta * float(t.sum())
    pres = float(torch.maximum(torch.stack(torch.aminmax(rzl)).abs().amax(),
                               rzq.abs().amax()) if rows.m else rzq.abs().amax())
    # relative to the largest term of P x + q + G^T z (as OSQP): inf-norms of q, P x, G^T z
    dnorm = max(data.qnorm, float(torch.stack([ka.abs().amax(), ctz.abs().amax(),
                                               zq.abs().amax()]).max()))
    dres = float(torch.maximum(rxu.abs().amax(), rxt.abs().amax())) / dnorm
    return _Measures(res=res, slzl=slzl, gap=gap, mu=gap / ctx.deg, pobj=pobj, pres=pres,
                     dres=dres, dnorm=dnorm, rel_gap=gap / max(1.0, abs(pobj)))


def _record(ctx: _Context, ev: _Measures, it: int) -> None:
    """History row (and verbose line) of the iterate reached after `it - 1` steps."""
    sy2 = ctx.data.obj_scale
    ctx.history.append({"iteration": it - 1, "round": ctx.round_, "objective": ev.pobj * sy2,
                        "gap": ev.gap * sy2, "relative_gap": ev.rel_gap,
                        "r_primal": ev.pres, "r_dual": ev.dres,
                        "seconds": time.perf_counter() - ctx.t_start})
    if ctx.cfg.verbose:
        print(f"ipm {ctx.round_}:{it - 1:3d} obj {ev.pobj * sy2:.12g} gap {ev.rel_gap:.2e} "
              f"pres {ev.pres:.1e} dres {ev.dres:.1e} rows {ctx.rows.m}")


def _stop_status(ctx: _Context, ev: _Measures, best_dres: list[float]) -> str | None:
    """The status if the run ends at this iterate (converged, stalled, out of time), else None;
    appends to `best_dres` (the running minimum of the dual residual)."""
    cfg = ctx.cfg
    if ev.rel_gap <= cfg.tol and ev.pres <= cfg.feas_tol and ev.dres <= cfg.feas_tol:
        return "optimal"
    # the dual residual can floor near feas_tol on ill-conditioned problems (the Newton
    # solves' own accuracy): stop once the gap is met and it has not halved in 5 iterations
    best_dres.append(min(ev.dres, best_dres[-1]) if best_dres else ev.dres)
    if (ev.rel_gap <= cfg.tol and ev.pres <= cfg.feas_tol and ev.dres <= cfg.reduced_tol
            and len(best_dres) > STALL and best_dres[-1] > 0.5 * best_dres[-1 - STALL]):
        return "numerical_error"      # reported as "optimal_reduced" by the caller
    if cfg.time_limit is not None and time.perf_counter() - ctx.t_start > cfg.time_limit:
        return "time_limit"
    return None


def _search_direction(ctx: _Context, pt: Point, ev: _Measures,
                      lin: Linearization) -> tuple[Point, float]:
    """Predictor, Mehrotra corrector and Gondzio's correctors: the step and its length."""
    cfg, mu, slzl = ctx.cfg, ev.mu, ev.slzl
    lam2 = jordan_product(lin.lam_q, lin.lam_q)
    aff = lin.newton(-slzl, -lam2)
    alpha_aff = min(1.0, lin.max_step(aff))
    sigma = (1.0 - alpha_aff) ** 3
    corr_q = jordan_product(lin.nt.apply_inv(aff.sq), lin.nt.apply(aff.zq))
    rcl = torch.addcmul(sigma * mu - slzl, aff.sl, aff.zl, value=-1.0)
    rcq = -lam2 - corr_q + sigma * mu * ctx.e
    step = lin.newton(rcl, rcq)
    alpha = min(1.0, cfg.step_fraction * lin.max_step(step))
    for _ in range(cfg.centrality_correctors):   # Gondzio's correctors (LP rows)
        target = min(1.0, TARGET_A * alpha + TARGET_B)
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
    return step, alpha


def run_interior_point(rows, data: IpmData, cfg: IpmConfig, t_start: float,
                       history: list[dict[str, float]], round_: int) -> IpmRun:
    """Mehrotra predictor-corrector with Gondzio correctors on eq. 4 with the cone rows `rows`."""
    ng = 2 * data.p
    e = torch.zeros(data.d + 1, device=data.aty.device, dtype=data.aty.dtype)
    e[0] = 1.0
    ctx = _Context(rows=rows, data=data, cfg=cfg, t_start=t_start, history=history,
                   round_=round_, e=e, deg=rows.m * ng + ng)
    pt = _initial_point(ctx)
    status, it = "max_iter", 0
    reg_used = 0.0
    ev = _Measures()
    best_dres: list[float] = []
    t_loop = time.perf_counter()
    for it in range(1, cfg.max_iter + 1):
        ev = _measure(ctx, pt)
        _record(ctx, ev, it)
        stop = _stop_status(ctx, ev, best_dres)
        if stop is not None:
            status = stop
            it -= 1
            break
        if not all(map(math.isfinite, (ev.gap, ev.pres, ev.dres, ev.pobj))):
            status = "numerical_error"
            break
        # ---- scaling, the reduced Newton matrix, predictor and Mehrotra corrector
        try:
            lin = Linearization(pt, ev.res, rows, data.kg, data.jd, data.p, cfg.refine,
                                REFINE_FRACTION * ev.dnorm * max(ev.dres, cfg.feas_tol))
        except ConvexSolverError:
            status = "numerical_error"
            break
        reg_used = max(reg_used, lin.solve_x.regularization)
        step, alpha = _search_direction(ctx, pt, ev, lin)
        pt = pt.moved(step, alpha)
        history[-1]["step"] = alpha
    return IpmRun(point=pt, status=status, iterations=it, rel_gap=ev.rel_gap, gap=ev.gap,
                  pobj=ev.pobj, pres=ev.pres, dres=ev.dres, regularization=reg_used,
                  seconds=time.perf_counter() - t_loop)
