"""ADMM for the constrained convex dual (eq. 4; Appendix E losses): `fit(..., solver="admm")`.

Splitting (Boyd et al. 2011, with over-relaxation and residual balancing as in OSQP): the
variables `u = [v; w]` (2P x d) get two copies,

    z = u          handled by group soft-thresholding  (beta sum_i ||z_i||_2)
    s = G u >= 0   handled by projection on the orthant (the cone constraints of eq. 4)

and, for the l1 / Huber losses, a third one `q = A (v - w)` handled by the loss's prox. The
u-step is a linear system with a fixed matrix up to the penalty rho: writing `a = v - w` and
`b = v + w` it splits into `rho (I + Q) b_i = .` (one d x d matrix for every pattern: `G`'s Gram
is the same block `Q` for all of them) and `(c A^T A + rho blockdiag(I + Q)) a = .`, solved either
directly -- one eigendecomposition of the transformed `A^T A` (P d x P d), after which any rho
costs two matrix-vector products -- or by preconditioned CG with the per-pattern blocks
`c X^T D_i X + rho (I + Q)` as block-Jacobi preconditioner (large P d). See `admm_ops` for the
operators and docs/admm.md for measurements.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from convexnn.model.problem import DualProblem, DualSolution, SolveInfo
from convexnn.model.validation import check_in_range, check_int, check_positive
from convexnn.solve.admm.cones import ConeProx
from convexnn.solve.admm.linear import make_linear_solver
from convexnn.solve.admm.ops import PatternOperators
from convexnn.solve.base import internal_scales, refuse_or_warn, run_with_threads, warm_start_point
from convexnn.train.checkpoint import fingerprint, load_checkpoint, save_checkpoint

__all__ = ["AdmmConfig", "AdmmState", "solve_admm"]


@dataclass
class AdmmState:
    """Scaled ADMM iterate (internal units) for warm starts with the same data."""

    z: torch.Tensor       # (2P, d) cone-feasible group copy of [v; w]
    lam: torch.Tensor     # (2P, d) scaled dual of u = z
    rho: float
    x_scale: float
    y_scale: float


@dataclass
class AdmmConfig:
    """Options of `fit(..., solver="admm")`.

    `tol` bounds the relative primal and dual residuals (Boyd et al. 2011, sec. 3.3).
    `warm_start`: a fitted `ConvexDualDenoiser` (same generators), a pair `(v, w)` of
    `(P, C, k, k)` filters, or an `AdmmState`. `linear_solver`: "direct" (eigendecomposition of
    the P d x P d Gram), "cg" (block-Jacobi PCG) or "auto" (direct up to `direct_max_dim`).
    Reaching `max_iter` (or `time_limit` seconds) raises `ConvexSolverError` with status
    "max_iter" / "time_limit" unless `allow_inaccurate=True` (then a warning is issued).
    """

    tol: float = 1e-6
    max_iter: int = 20000
    rho: float | None = None
    adaptive_rho: bool = True
    adapt_every: int = 10
    relaxation: float = 1.6
    linear_solver: str = "auto"
    direct_max_dim: int = 2500
    cg_max_iter: int = 100
    device: str | None = None
    dtype: torch.dtype = torch.float64
    warm_start: Any = None
    allow_inaccurate: bool = False
    log_every: int = 1
    time_limit: float | None = None
    block_elements: int = 2 ** 24
    return_state: bool = False
    num_threads: int | None = None     # None: 1 thread for small problems (less overhead)
    verbose: bool = False
    checkpoint_path: str | None = None  # atomic iterate snapshots; rerunning resumes from one
    checkpoint_every: int = 500         # iterations
    resume: bool = True

    def __post_init__(self) -> None:
        check_in_range(self.tol, "tol", 0.0, 1.0)
        check_int(self.max_iter, "max_iter")
        if self.rho is not None:
            check_positive(self.rho, "rho")
        check_int(self.adapt_every, "adapt_every")
        check_in_range(self.relaxation, "relaxation", 0.0, 2.0)
        if self.linear_solver not in ("auto", "direct", "cg"):
            raise ValueError(f"linear_solver: expected 'auto', 'direct' or 'cg', "
                             f"got {self.linear_solver!r}")
        check_int(self.direct_max_dim, "direct_max_dim", 0)
        check_int(self.cg_max_iter, "cg_max_iter")
        if self.dtype not in (torch.float64, torch.float32):
            raise ValueError(f"dtype: expected torch.float64 or torch.float32, got {self.dtype}")
        check_int(self.log_every, "log_every", 0)          # 0: no history
        if self.time_limit is not None:
            check_positive(self.time_limit, "time_limit")
        check_int(self.block_elements, "block_elements")
        if self.num_threads is not None:
            check_int(self.num_threads, "num_threads")
        check_int(self.checkpoint_every, "checkpoint_every")
        if self.checkpoint_path is not None and not isinstance(self.checkpoint_path,
                                                               (str, os.PathLike)):
            raise TypeError(f"checkpoint_path: expected a path, got {self.checkpoint_path!r}")


# ---------------------------------------------------------------------- helpers
def _loss_prox(x: torch.Tensor, name: str, t: float, delta: float) -> torch.Tensor:
    """Prox of `t * loss` at residual x (Appendix E losses, pixel-wise)."""
    if name == "l1":
        return torch.sign(x) * torch.clamp(x.abs() - t, min=0.0)
    # Huber h_delta: quadratic region when |x| <= delta (1 + t)
    return torch.where(x.abs() <= delta * (1.0 + t), x / (1.0 + t), x - t * delta * torch.sign(x))


def _loss_value(r: torch.Tensor, name: str, delta: float) -> float:
    if name == "squared":
        return 0.5 * float(r @ r)
    if name == "l1":
        return float(r.abs().sum())
    a = r.abs()
    return float(torch.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta)).sum())


# ---------------------------------------------------------------------- solver
def _fingerprint(problem: DualProblem, cfg: AdmmConfig) -> str:
    """What determines the iterates (a checkpoint of another run is refused)."""
    keys = ("tol", "rho", "adaptive_rho", "adapt_every", "relaxation", "linear_solver",
            "direct_max_dim", "cg_max_iter", "dtype", "block_elements")
    settings = {k: getattr(cfg, k) for k in keys}
    settings.update(beta=problem.beta, loss=repr(problem.loss),
                    warm_start=cfg.warm_start is not None)
    return fingerprint("admm", settings, {"noisy": problem.noisy, "target": problem.target,
                                          "generators": problem.generators})


def solve_admm(problem: DualProblem, config: AdmmConfig | None = None) -> DualSolution:
    """Solve eq. 4 (squared, l1 or Huber loss) to relative residuals `config.tol`."""
    cfg = config or AdmmConfig()
    threads = cfg.num_threads
    if threads is None:
        work = problem.n_pixels * problem.n_patterns * problem.patch_dim
        threads = 1 if work <= 5_000_000 else torch.get_num_threads()
    return run_with_threads(threads, _solve, problem, cfg)


def _solve(problem: DualProblem, cfg: AdmmConfig) -> DualSolution:
    t_start = time.perf_counter()
    device = torch.device(cfg.device) if cfg.device else problem.noisy.device
    dt = cfg.dtype
    loss, delta = problem.loss.name, problem.loss.huber_delta
    split = loss != "squared"
    sx, sy = internal_scales(problem)
    beta = problem.beta / (sx if loss == "l1" else sx * sy)               # internal beta
    dlt = delta / sy
    ops = PatternOperators(problem.noisy, problem.generators, sx, device, dt, cfg.block_elements)
    p, d = ops.n_patterns, ops.dim
    y = (problem.target.to(device=device, dtype=dt).reshape(-1) / sy)
    lin = make_linear_solver(ops, cfg, split)
    prox = ConeProx(ops)
    aty = ops.At(y)
    rho = float(cfg.rho) if cfg.rho else lin.default_rho()
    kappa = 1.0                                                           # rho_q = kappa rho
    # ---- initial point (internal units: filters times sx / sy)
    ws = cfg.warm_start
    lam = None
    if isinstance(ws, AdmmState):
        f = (sx / sy) / (ws.x_scale / ws.y_scale)
        z = ws.z.to(device=device, dtype=dt) * f
        lam = ws.lam.to(device=device, dtype=dt) * (ws.rho / rho) * f
    elif ws is not None:
        v0, w0 = warm_start_point(
            ws, problem, "a fitted ConvexDualDenoiser, a pair (v, w) or an AdmmState")
        z = torch.cat([v0.reshape(p, d), w0.reshape(p, d)]).to(device=device, dtype=dt)
        z = prox(z * (sx / sy), 0.0)                                    # into the cones
    else:
        z = torch.zeros((2 * p, d), device=device, dtype=dt)
    if lam is None:
        lam = torch.zeros_like(z)
    q = ops.A(z[:p] - z[p:])
    nu = torch.zeros_like(q)
    if split:
        aq = ops.At(q - nu)
    history: list[dict[str, float]] = []
    it0 = 0
    ckpt = Path(cfg.checkpoint_path) if cfg.checkpoint_path is not None else None
    fp = _fingerprint(problem, cfg)
    if ckpt is not None and ckpt.exists():
        if not cfg.resume:
            raise FileExistsError(f"{ckpt}: a checkpoint exists and resume=False; remove it or "
                                  f"choose another checkpoint_path (nothing was overwritten)")
        state = load_checkpoint(ckpt, fp)
        z, lam, q, nu = (state[k].to(device=device, dtype=dt) for k in ("z", "lam", "q", "nu"))
        rho, it0 = float(state["rho"]), int(state["iteration"])
        history = [dict(r) for r in state["history"]]
        if split:
            aq = ops.At(q - nu)
    lin.set_rho(rho, kappa)
    t_setup = time.perf_counter() - t_start
    alpha = cfg.relaxation
    status, it = "max_iter", it0
    obj_scale = sy if loss == "l1" else sy * sy
    eps_abs = 1e-3 * cfg.tol
    r_pri = r_dual = e_pri = e_dual = float("nan")
    t_loop = time.perf_counter()
    for it in range(it0 + 1, cfg.max_iter + 1):
        # ---- u-step: (F^T F + rho I) u = F^T y + rho (z - lam), in (a, b) = (v - w, v + w)
        rv = rho * (z - lam)
        rhs_a = rv[:p] - rv[p:] + (2.0 * kappa * rho * aq if split else 2.0 * aty)
        a = lin.solve_a(rhs_a)
        b = (rv[:p] + rv[p:]) / rho
        u = torch.cat([0.5 * (b + a), 0.5 * (b - a)])
        # ---- relaxed z-step: exact prox of beta ||.|| + cone indicator, then dual update
        uh = alpha * u + (1.0 - alpha) * z
        z_old = z
        z = prox(uh + lam, beta / rho)
        lam = lam + uh - z
        r2 = float((u - z).pow(2).sum())
        n_u, n_z = float(u.pow(2).sum()), float(z.pow(2).sum())
        dres = rho * (z - z_old)
        ydual = rho * lam
        if split:
            pred = ops.A(a)
            ph = alpha * pred + (1.0 - alpha) * q
            q_old = q
            q = y + _loss_prox(ph + nu - y, loss, 1.0 / (kappa * rho), dlt)
            nu = nu + ph - q
            aq, adq, anu = ops.At(torch.stack([q - nu, q - q_old, nu], 1))
            r2 += float((pred - q).pow(2).sum())
            n_u += float(pred.pow(2).sum())
            n_z += float(q.pow(2).sum())
            dres = dres + kappa * rho * torch.cat([adq, -adq])
            ydual = ydual + kappa * rho * torch.cat([anu, -anu])
        r_pri, r_dual = math.sqrt(r2), float(dres.norm())
        e_pri = math.sqrt(max(n_u, n_z)) + eps_abs
        e_dual = float(ydual.norm()) + eps_abs
        done = r_pri <= cfg.tol * e_pri and r_dual <= cfg.tol * e_dual
        if cfg.log_every and (it % cfg.log_every == 0 or it == 1 or done):
            # objective at z, which is cone-feasible: an upper bound on eq. 4's optimum
            obj = _loss_value(ops.A(z[:p] - z[p:]) - y, loss, dlt) \
                + beta * float(z.norm(dim=1).sum())
            history.append({"iteration": it, "objective": obj * obj_scale,
                            "r_primal": r_pri / e_pri, "r_dual": r_dual / e_dual,
                            "violation": 0.0, "rho": rho,
                            "seconds": time.perf_counter() - t_start})
            if cfg.verbose and it % (100 * cfg.log_every) == 0:
                print(f"admm {it:6d} obj {obj * obj_scale:.10g} rp {r_pri / e_pri:.2e} "
                      f"rd {r_dual / e_dual:.2e} rho {rho:.3g}")
        if done:
            status = "optimal"
            break
        if cfg.time_limit is not None and time.perf_counter() - t_start > cfg.time_limit:
            status = "time_limit"
            break
        # ---- residual balancing (OSQP rule on normalised residuals)
        if cfg.adaptive_rho and it % cfg.adapt_every == 0:
            ratio = math.sqrt((r_pri / e_pri) / max(r_dual / e_dual, 1e-300))
            if ratio > 3.0 or ratio < 1.0 / 3.0:
                new = rho * min(max(ratio, 0.1), 10.0)
                f = rho / new
                lam = lam * f
                if split:
                    nu = nu * f
                    aq, anu = ops.At(q - nu), anu * f
                rho = new
                lin.set_rho(rho, kappa)
        if ckpt is not None and it % cfg.checkpoint_every == 0:
            save_checkpoint(ckpt, {"kind": "admm", "fingerprint": fp, "iteration": it,
                                   "snapshot": it // cfg.checkpoint_every,
                                   "checkpoint_every": cfg.checkpoint_every,
                                   "z": z.cpu(), "lam": lam.cpu(), "q": q.cpu(), "nu": nu.cpu(),
                                   "rho": rho, "history": history})
    t_solve = time.perf_counter() - t_loop
    if status != "optimal":
        msg = (f"ADMM stopped with status {status!r} after {it} iterations without reaching "
               f"tol={cfg.tol:g}: relative primal residual {r_pri / e_pri:.3e}, relative dual "
               f"residual {r_dual / e_dual:.3e}")
        refuse_or_warn(msg, status, cfg.allow_inaccurate)
    # ---- returned point: the group-sparse, cone-feasible copy z
    pred, gz = ops.forward(z)
    obj = (_loss_value(pred - y, loss, dlt) + beta * float(z.norm(dim=1).sum())) * obj_scale
    top = float(gz.abs().max()) if gz.numel() else 0.0
    viol = float((-gz).clamp_min(0).max()) / top if top > 0 else 0.0
    back = sy / sx
    shape = tuple(problem.generators.shape)
    v = (z[:p] * back).reshape(shape).cpu()
    w = (z[p:] * back).reshape(shape).cpu()
    if split:
        loss_dual = (-kappa * rho * nu) * (1.0 if loss == "l1" else sy)
    else:
        loss_dual = (y - pred) * sy
    details: dict[str, Any] = {
        "r_primal": r_pri / e_pri, "r_dual": r_dual / e_dual, "rho": rho,
        "linear_solver": lin.name, "linear_setup_seconds": lin.setup_seconds,
        "cg_iterations": getattr(lin, "total_iterations", None),
        "prox_rounds": prox.rounds, "nnls_calls": prox.nnls_calls,
        "storage": ops.storage, "device": str(device), "dtype": str(dt),
        "x_scale": sx, "y_scale": sy,
        "relative_violation_internal": viol, "loss_dual": loss_dual.cpu(),
        "n_pixels": ops.n_pixels, "n_patterns": p,
    }
    details["resumed_from_iteration"] = it0 or None
    if cfg.return_state:
        details["state"] = AdmmState(z, lam, rho, sx, sy)
    info = SolveInfo(solver="admm", status=status, setup_seconds=t_setup, solve_seconds=t_solve,
                     total_seconds=time.perf_counter() - t_start, iterations=it,
                     reported_objective=obj, details=details)
    return DualSolution(v, w, info, history)
