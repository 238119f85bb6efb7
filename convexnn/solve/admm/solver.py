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

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from convexnn.model.problem import DualProblem, DualSolution, SolveInfo
from convexnn.model.validation import check_in_range, check_int, check_positive
from convexnn.solve.admm.cones import ConeProx
from convexnn.solve.admm.iteration import (
    AdmmIterate,
    AdmmSetup,
    Residuals,
    admm_step,
    balance_rho,
)
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


@dataclass
class _Run:
    """Bookkeeping of one run: history, checkpoint, first and last iteration, how it ended."""

    history: list[dict[str, float]]
    it0: int                  # iterations done before this call (resumed checkpoint)
    ckpt: Path | None
    fp: str
    t_start: float
    status: str = "max_iter"
    it: int = 0
    res: Residuals = field(default_factory=Residuals)


def _setup(problem: DualProblem, cfg: AdmmConfig) -> AdmmSetup:
    """Operators, linear solver, cone prox and data of eq. 4 in internal units."""
    device = torch.device(cfg.device) if cfg.device else problem.noisy.device
    dt = cfg.dtype
    loss, delta = problem.loss.name, problem.loss.huber_delta
    split = loss != "squared"
    sx, sy = internal_scales(problem)
    beta = problem.beta / (sx if loss == "l1" else sx * sy)               # internal beta
    dlt = delta / sy
    ops = PatternOperators(problem.noisy, problem.generators, sx, device, dt, cfg.block_elements)
    y = (problem.target.to(device=device, dtype=dt).reshape(-1) / sy)
    lin = make_linear_solver(ops, cfg, split)
    prox = ConeProx(ops)
    aty = ops.At(y)
    obj_scale = sy if loss == "l1" else sy * sy
    return AdmmSetup(ops=ops, lin=lin, prox=prox, y=y, aty=aty, loss=loss, dlt=dlt, beta=beta,
                     split=split, sx=sx, sy=sy, device=device, dt=dt, obj_scale=obj_scale)


def _initial_iterate(problem: DualProblem, cfg: AdmmConfig, s: AdmmSetup,
                     rho: float) -> AdmmIterate:
    """Zero, or the warm start (an `AdmmState`, a model or `(v, w)`) moved into the cones."""
    device, dt = s.device, s.dt
    p, d = s.ops.n_patterns, s.ops.dim
    # ---- initial point (internal units: filters times sx / sy)
    ws = cfg.warm_start
    lam = None
    if isinstance(ws, AdmmState):
        f = (s.sx / s.sy) / (ws.x_scale / ws.y_scale)
        z = ws.z.to(device=device, dtype=dt) * f
        lam = ws.lam.to(device=device, dtype=dt) * (ws.rho / rho) * f
    elif ws is not None:
        v0, w0 = warm_start_point(
            ws, problem, "a fitted ConvexDualDenoiser, a pair (v, w) or an AdmmState")
        z = torch.cat([v0.reshape(p, d), w0.reshape(p, d)]).to(device=device, dtype=dt)
        z = s.prox(z * (s.sx / s.sy), 0.0)                              # into the cones
    else:
        z = torch.zeros((2 * p, d), device=device, dtype=dt)
    if lam is None:
        lam = torch.zeros_like(z)
    q = s.ops.A(z[:p] - z[p:])
    st = AdmmIterate(z=z, lam=lam, q=q, nu=torch.zeros_like(q), rho=rho)
    if s.split:
        st.aq = s.ops.At(st.q - st.nu)
    return st


def _start_run(problem: DualProblem, cfg: AdmmConfig, s: AdmmSetup, st: AdmmIterate,
               t_start: float) -> _Run:
    """The run's bookkeeping; resumes `st` from `cfg.checkpoint_path` if that file exists."""
    ckpt = Path(cfg.checkpoint_path) if cfg.checkpoint_path is not None else None
    run = _Run(history=[], it0=0, ckpt=ckpt, fp=_fingerprint(problem, cfg), t_start=t_start)
    if ckpt is not None and ckpt.exists():
        if not cfg.resume:
            raise FileExistsError(f"{ckpt}: a checkpoint exists and resume=False; remove it or "
                                  f"choose another checkpoint_path (nothing was overwritten)")
        state = load_checkpoint(ckpt, run.fp)
        st.z, st.lam, st.q, st.nu = (state[k].to(device=s.device, dtype=s.dt)
                                     for k in ("z", "lam", "q", "nu"))
        st.rho, run.it0 = float(state["rho"]), int(state["iteration"])
        run.history = [dict(r) for r in state["history"]]
        if s.split:
            st.aq = s.ops.At(st.q - st.nu)
    run.it = run.it0
    return run


def _record(s: AdmmSetup, st: AdmmIterate, run: _Run, it: int, verbose: bool,
            log_every: int) -> None:
    """Append iteration `it` to the history (and print every 100 log rows if verbose)."""
    p, z, res = s.ops.n_patterns, st.z, run.res
    # objective at z, which is cone-feasible: an upper bound on eq. 4's optimum
    obj = _loss_value(s.ops.A(z[:p] - z[p:]) - s.y, s.loss, s.dlt) \
        + s.beta * float(z.norm(dim=1).sum())
    run.history.append({"iteration": it, "objective": obj * s.obj_scale,
                        "r_primal": res.rel_pri, "r_dual": res.rel_dual,
                        "violation": 0.0, "rho": st.rho,
                        "seconds": time.perf_counter() - run.t_start})
    if verbose and it % (100 * log_every) == 0:
        print(f"admm {it:6d} obj {obj * s.obj_scale:.10g} rp {res.rel_pri:.2e} "
              f"rd {res.rel_dual:.2e} rho {st.rho:.3g}")


def _save(run: _Run, st: AdmmIterate, it: int, every: int) -> None:
    """Atomic snapshot of the iterate after iteration `it` (a rerun resumes from it)."""
    save_checkpoint(run.ckpt, {"kind": "admm", "fingerprint": run.fp, "iteration": it,
                               "snapshot": it // every, "checkpoint_every": every,
                               "z": st.z.cpu(), "lam": st.lam.cpu(), "q": st.q.cpu(),
                               "nu": st.nu.cpu(), "rho": st.rho, "history": run.history})


def _iterate(s: AdmmSetup, st: AdmmIterate, run: _Run, cfg: AdmmConfig) -> None:
    """ADMM iterations until the residuals meet `cfg.tol`, max_iter or the time limit."""
    eps_abs = 1e-3 * cfg.tol
    for it in range(run.it0 + 1, cfg.max_iter + 1):
        run.it = it
        run.res = res = admm_step(s, st, cfg.relaxation, eps_abs)
        done = res.r_pri <= cfg.tol * res.e_pri and res.r_dual <= cfg.tol * res.e_dual
        if cfg.log_every and (it % cfg.log_every == 0 or it == 1 or done):
            _record(s, st, run, it, cfg.verbose, cfg.log_every)
        if done:
            run.status = "optimal"
            break
        if cfg.time_limit is not None and time.perf_counter() - run.t_start > cfg.time_limit:
            run.status = "time_limit"
            break
        # ---- residual balancing (OSQP rule on normalised residuals)
        if cfg.adaptive_rho and it % cfg.adapt_every == 0:
            balance_rho(s, st, res)
        if run.ckpt is not None and it % cfg.checkpoint_every == 0:
            _save(run, st, it, cfg.checkpoint_every)


def _solution(problem: DualProblem, cfg: AdmmConfig, s: AdmmSetup, st: AdmmIterate, run: _Run,
              t_setup: float, t_solve: float) -> DualSolution:
    """The returned point: the group-sparse, cone-feasible copy z, in the caller's units."""
    ops, p, z, res = s.ops, s.ops.n_patterns, st.z, run.res
    pred, gz = ops.forward(z)
    obj = (_loss_value(pred - s.y, s.loss, s.dlt)
           + s.beta * float(z.norm(dim=1).sum())) * s.obj_scale
    top = float(gz.abs().max()) if gz.numel() else 0.0
    viol = float((-gz).clamp_min(0).max()) / top if top > 0 else 0.0
    back = s.sy / s.sx
    shape = tuple(problem.generators.shape)
    v = (z[:p] * back).reshape(shape).cpu()
    w = (z[p:] * back).reshape(shape).cpu()
    if s.split:
        loss_dual = (-s.kappa * st.rho * st.nu) * (1.0 if s.loss == "l1" else s.sy)
    else:
        loss_dual = (s.y - pred) * s.sy
    details: dict[str, Any] = {
        "r_primal": res.rel_pri, "r_dual": res.rel_dual, "rho": st.rho,
        "linear_solver": s.lin.name, "linear_setup_seconds": s.lin.setup_seconds,
        "cg_iterations": getattr(s.lin, "total_iterations", None),
        "prox_rounds": s.prox.rounds, "nnls_calls": s.prox.nnls_calls,
        "storage": ops.storage, "device": str(s.device), "dtype": str(s.dt),
        "x_scale": s.sx, "y_scale": s.sy,
        "relative_violation_internal": viol, "loss_dual": loss_dual.cpu(),
        "n_pixels": ops.n_pixels, "n_patterns": p,
    }
    details["resumed_from_iteration"] = run.it0 or None
    if cfg.return_state:
        details["state"] = AdmmState(z, st.lam, st.rho, s.sx, s.sy)
    info = SolveInfo(solver="admm", status=run.status, setup_seconds=t_setup,
                     solve_seconds=t_solve, total_seconds=time.perf_counter() - run.t_start,
                     iterations=run.it, reported_objective=obj, details=details)
    return DualSolution(v, w, info, run.history)


def _solve(problem: DualProblem, cfg: AdmmConfig) -> DualSolution:
    t_start = time.perf_counter()
    s = _setup(problem, cfg)
    rho = float(cfg.rho) if cfg.rho else s.lin.default_rho()
    st = _initial_iterate(problem, cfg, s, rho)
    run = _start_run(problem, cfg, s, st, t_start)
    s.lin.set_rho(st.rho, s.kappa)
    t_setup = time.perf_counter() - t_start
    t_loop = time.perf_counter()
    _iterate(s, st, run, cfg)
    t_solve = time.perf_counter() - t_loop
    if run.status != "optimal":
        msg = (f"ADMM stopped with status {run.status!r} after {run.it} iterations without "
               f"reaching tol={cfg.tol:g}: relative primal residual {run.res.rel_pri:.3e}, "
               f"relative dual residual {run.res.rel_dual:.3e}")
        refuse_or_warn(msg, run.status, cfg.allow_inaccurate)
    return _solution(problem, cfg, s, st, run, t_setup, t_solve)
