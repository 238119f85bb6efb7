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


def run_interior_point(rows, data: IpmData, cfg: IpmConfig, t_start: float,
                       history: list[dict[str, float]], round_: int) -> IpmRun:
    """Mehrotra predictor-corrector with Gondzio correctors on eq. 4 with the cone rows `rows`."""
    kg, aty, beta, p, d, jd = data.kg, data.aty, data.beta, data.p, data.d, data.jd
    device, dt = aty.device, aty.dtype
    m, ng = rows.m, 2 * p
    deg = m * ng + ng
    e = torch.zeros(d + 1, device=device, dtype=dt)
    e[0] = 1.0
    # ---- x = (u, t); slacks / duals: LP (M, 2P), SOC (2P, d + 1)
    pt = Point(u=torch.zeros((ng, d), device=device, dtype=dt),
                t=torch.zeros(ng, device=device, dtype=dt),
                sl=rows.sign.clone(), zl=rows.sign.clone(),      # s = z = 1 (signed)
                sq=e.repeat(ng, 1), zq=e.repeat(ng, 1))
    if cfg.start == "least_squares":
        pt = least_squares_start(pt, rows, kg, aty, beta, jd, e, p, cfg.refine, rows.sign)
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
        res = Point(u=ka - torch.cat([aty.reshape(p, d), -aty.reshape(p, d)])
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
                and len(best_dres) > STALL and best_dres[-1] > 0.5 * best_dres[-1 - STALL]):
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
            lin = Linearization(pt, res, rows, kg, jd, p, cfg.refine,
                                 REFINE_FRACTION * dnorm * max(dres, cfg.feas_tol))
        except ConvexSolverError:
            status = "numerical_error"
            break
        reg_used = max(reg_used, lin.solve_x.regularization)
        lam2 = jordan_product(lin.lam_q, lin.lam_q)
        aff = lin.newton(-slzl, -lam2)
        alpha_aff = min(1.0, lin.max_step(aff))
        sigma = (1.0 - alpha_aff) ** 3
        corr_q = jordan_product(lin.nt.apply_inv(aff.sq), lin.nt.apply(aff.zq))
        rcl = torch.addcmul(sigma * mu - slzl, aff.sl, aff.zl, value=-1.0)
        rcq = -lam2 - corr_q + sigma * mu * e
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
        pt = pt.moved(step, alpha)
        history[-1]["step"] = alpha
    return IpmRun(point=pt, status=status, iterations=it, rel_gap=rel_gap, gap=gap, pobj=pobj,
                pres=pres, dres=dres, regularization=reg_used,
                seconds=time.perf_counter() - t_loop)
