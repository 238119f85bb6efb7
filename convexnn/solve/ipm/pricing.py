"""Exact eq. 4 over many sign patterns: pattern pricing (column generation) around the
interior-point solver, `fit(..., solver="ipm")` at large P.

The optimum of eq. 4 is sparse: at beta = 1e-3 per pixel, 600 MNIST digits x 200 patterns
have 68 nonzero groups of 400. The solver keeps a working set W of patterns and repeats

    1. solve eq. 4 on W exactly (interior point, row working set; the Gram K = A^T A of W is
       extended by the new patterns' blocks only, streamed over the pixels);
    2. lambda = y - prediction; price every candidate: c_i = X^T D_i lambda (one fused pass
       over the pixels for all P), the gated bound ||c_i||, and where it exceeds beta the
       exact cone-restricted value ||P_{K_i}(+-c_i)|| of App. C (`convexnn.solve.cone_values`);
    3. a candidate outside W whose value exceeds beta (1 + pricing_tol) would lower the
       objective if added (a violator): add the largest `pricing_batch` of them to W;

until no candidate violates. Optimality over all P candidates (MATH.md, App. C): a group
outside W is optimal at zero exactly when its value is <= beta. Certificate: `lambda` scaled
by `t <= beta / max_i value_i` is feasible for the dual of eq. 4 over every candidate, so
`t lambda^T y - t^2 ||lambda||^2 / 2` is a lower bound on the optimum over all P patterns; the
certified relative gap `(objective - bound) / objective` is reported every round.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from convexnn.model.problem import DualProblem
from convexnn.solve.base import warm_start_point
from convexnn.solve.cone_values import ConeChecker
from convexnn.solve.ipm.config import IpmConfig
from convexnn.solve.ipm.loop import IpmData
from convexnn.solve.ipm.working_set import solve_on_rows
from convexnn.solve.pattern_rows import PatternRows
from convexnn.train.checkpoint import fingerprint, load_checkpoint, save_checkpoint

_ZERO = 1e-6             # a group below this x the largest is zero (pruned from the set)

__all__ = ["PricingSetup", "PricingResult", "RoundRecord", "solve_with_pricing",
           "newton_bytes", "dual_bound"]


def newton_bytes(p: int, d: int) -> float:
    """Memory of the Newton system for P patterns of dimension d: the Gram K, the reduced
    matrix and its factor (P d)^2 each, and the 2 P d matrix H with its factor for the rare
    iteration that needs it (8 (P d)^2): 11 (P d)^2 float64 numbers."""
    return 88.0 * float(p * d) ** 2


@dataclass
class PricingSetup:
    """Eq. 4 in the solver's scaling, as the interior-point entry point prepared it."""

    problem: DualProblem
    rows: PatternRows
    g: torch.Tensor          # (P, d) generators
    y: torch.Tensor          # (N,) labels of this process's pixels / sy
    beta: float              # beta / (sx sy)
    sx: float
    sy: float
    yy: float                # ||y||^2 / 2 over every pixel
    t_start: float


@dataclass
class RoundRecord:
    """One pricing round (solver units times `y_scale^2` = the caller's)."""

    round: int
    working_patterns: int
    nonzero_patterns: int      # patterns with a nonzero group at the master optimum
    added: int
    violators: int
    objective: float
    lower_bound: float
    certified_gap: float
    max_value_ratio: float     # max_i value_i / beta over every candidate
    exact_checks: int          # candidates whose exact value was computed this round
    complete: bool             # every candidate was resolved (the bound is the final one)
    ipm_iterations: int
    row_rounds: int            # working-set rounds of cone rows in this round's solve
    ipm_status: str
    seconds: float
    gram_seconds: float
    ipm_seconds: float
    pricing_seconds: float


@dataclass
class PricingResult:
    u: torch.Tensor            # (2P, d) every group in the solver's scaling
    status: str
    iterations: int
    objective: float           # solver units
    lower_bound: float
    certified_gap: float
    rounds: list[RoundRecord]
    details: dict[str, Any]


def dual_bound(lam_y: float, lam_lam: float, beta: float, cmax: float) -> tuple[float, float]:
    """Best weak-duality bound over `t lambda`, `0 <= t <= beta / cmax` (App. C, squared
    loss): `(t lambda^T y - t^2 ||lambda||^2 / 2, t)`."""
    limit = beta / cmax if cmax > 0 else math.inf
    t = min(max(lam_y / lam_lam, 0.0), limit) if lam_lam > 0 else 0.0
    return t * lam_y - 0.5 * t * t * lam_lam, t


class _Pricer:
    """Pricing of every candidate against a residual, lazily: the exact values are computed
    in decreasing order of the gated bound until `need` violators are confirmed (an early
    round needs only the best few); a complete scan (no violator left, or few) resolves every
    candidate whose gated bound exceeds the threshold, the working set's included, so its
    certificate covers all P. Cutting rows are remembered between rounds (`ConeChecker`)."""

    def __init__(self, rows: PatternRows, g: torch.Tensor, beta: float, tol: float) -> None:
        self.rows, self.g, self.beta = rows, g, beta
        self.thr = beta * (1.0 + tol)
        self.checker = ConeChecker(rows)
        self.exact_checks = 0

    def _resolve(self, idx: torch.Tensor, c: torch.Tensor, upper: torch.Tensor,
                 lower: torch.Tensor) -> None:
        p, n = self.g.shape[0], int(idx.numel())
        if not n:
            return
        keys = idx.tolist() + [i + p for i in idx.tolist()]
        gi = self.g[idx.to(self.g.device)]
        ci = c[idx.to(c.device)]
        cv = self.checker.values(torch.cat([gi, gi]), torch.cat([ci, -ci]), keys,
                                 stop_below=self.thr)
        upper[idx] = torch.maximum(cv.upper[:n], cv.upper[n:])
        lower[idx] = torch.maximum(cv.lower[:n], cv.lower[n:])
        self.exact_checks += n
        self.checked[idx] = True

    def __call__(self, lam: torch.Tensor, in_work: torch.Tensor, need: int
                 ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(upper, lower (P,) bounds of max(value(c_i), value(-c_i)), complete)."""
        self.exact_checks = 0
        c = self.rows.price(self.g, lam)
        upper = c.norm(dim=1).cpu()
        self.checked = upper <= self.thr              # the gated bound settles these
        lower = torch.zeros_like(upper)
        above = upper > self.thr
        outside = torch.nonzero(above & ~in_work).flatten()
        outside = outside[torch.argsort(upper[outside], descending=True)]
        step, pos, found = max(2 * need, 256), 0, 0
        while pos < outside.numel() and found < need:
            chunk = outside[pos:pos + step]
            pos += chunk.numel()
            self._resolve(chunk, c, upper, lower)
            found += int((upper[chunk] > self.thr).sum())
        complete = pos >= outside.numel()
        if complete:
            self._resolve(torch.nonzero(above & in_work).flatten(), c, upper, lower)
        return upper, lower, complete


def _fingerprint(setup: PricingSetup, cfg: IpmConfig) -> str:
    keys = ("tol", "feas_tol", "reduced_tol", "working_rows", "pricing_batch", "pricing_tol",
            "start", "centrality_correctors")
    pr = setup.problem
    return fingerprint("ipm_pricing", {**{k: getattr(cfg, k) for k in keys},
                                       "beta": pr.beta, "loss": pr.loss.name},
                       {"noisy": pr.noisy, "target": pr.target, "generators": pr.generators})


def _initial_set(setup: PricingSetup, cfg: IpmConfig, max_w: int) -> list[int]:
    if cfg.warm_start is None:
        return []
    v, w = warm_start_point(cfg.warm_start, setup.problem)
    score = torch.maximum(v.flatten(1).norm(dim=1), w.flatten(1).norm(dim=1)).double()
    top = float(score.max()) if score.numel() else 0.0
    if not top > 0:
        return []
    order = torch.argsort(score, descending=True)
    # at most 2 pricing batches: an inexact fit has every group nonzero (Adam at 600 x 8,000:
    # 1,622 patterns above 1e-3 of the largest, a first master solve of over 10 minutes)
    keep = order[score[order] > 1e-3 * top][:min(max_w, 2 * cfg.pricing_batch)]
    return sorted(keep.tolist())


class _ColumnGeneration:
    """The state of one pricing run: the working set, its Gram, the last master solution."""

    def __init__(self, setup: PricingSetup, cfg: IpmConfig, history: list[dict[str, float]],
                 max_working: int, initial: list[int] | None = None, label: str = "") -> None:
        self.s, self.cfg, self.history, self.max_working = setup, cfg, history, max_working
        rows, g = setup.rows, setup.g
        self.p_all, self.d = g.shape
        self.dev, self.dt = rows.device, rows.dtype
        self.aty_all = rows.price(g, setup.y)                     # A^T y, every candidate
        self.pricer = _Pricer(rows, g, setup.beta, cfg.pricing_tol)
        self.jd = torch.ones(self.d + 1, device=self.dev, dtype=self.dt)
        self.jd[1:] = -1.0
        self.fp = _fingerprint(setup, cfg) if cfg.checkpoint_path else None
        self.label = label
        self.work: list[int] = (list(initial) if initial is not None
                                else _initial_set(setup, cfg, max_working))
        self.records: list[RoundRecord] = []
        self.start_round = 0
        self.kg: torch.Tensor | None = None
        self.p_done = 0
        self.u_w = torch.zeros((0, self.d), device=self.dev, dtype=self.dt)
        self.last = None
        self._resume()

    def _resume(self) -> None:
        path = self.cfg.checkpoint_path
        if not (path and self.cfg.resume and Path(path).exists()):
            return
        state = load_checkpoint(path, self.fp)
        if state.get("kind") == "ipm_pricing":
            self.work = state["working_set"].tolist()
            self.start_round = int(state["round"])
            self.records = [RoundRecord(**r) for r in json.loads(state["rounds"])]

    def _checkpoint(self, round_: int) -> None:
        if self.cfg.checkpoint_path and self.s.rows.info.is_main:
            save_checkpoint(self.cfg.checkpoint_path, {
                "fingerprint": self.fp, "kind": "ipm_pricing", "round": round_ + 1,
                "working_set": torch.tensor(self.work, dtype=torch.long),
                "rounds": json.dumps([asdict(r) for r in self.records])})

    def master(self, round_: int) -> tuple[str, int, int, float, float]:
        """Eq. 4 on the working set (status, iterations, row rounds, Gram s, IPM s)."""
        s, pw = self.s, len(self.work)
        t0 = time.perf_counter()
        gw = s.g[torch.tensor(self.work, device=self.dev)]
        self.kg = s.rows.extend_gram(self.kg, gw, self.p_done)
        self.p_done = pw
        t_gram = time.perf_counter() - t0
        aty = self.aty_all[torch.tensor(self.work, device=self.aty_all.device)].to(self.dev)
        data = IpmData(kg=self.kg, aty=aty.reshape(-1), yy=s.yy, beta=s.beta, p=pw, d=self.d,
                       jd=self.jd, qnorm=max(1.0, float(aty.abs().max()), s.beta),
                       obj_scale=s.sy ** 2)
        run, rr = solve_on_rows(data, s.rows, gw, self.cfg, s.t_start, self.history, round_,
                                dense_fits=False)
        self.last = (run, rr)
        self.u_w = run.point.u
        return run.status, rr.iterations, rr.rounds, t_gram, time.perf_counter() - t0 - t_gram

    def failed(self, status: str) -> bool:
        run = self.last[0]
        return status not in ("optimal", "numerical_error") or (
            status == "numerical_error"
            and max(run.rel_gap, run.pres, run.dres) > self.cfg.reduced_tol)

    def prune(self) -> int:
        """Drop the working patterns whose groups are zero at the master optimum (their Gram
        blocks go too); a dropped pattern that violates again is priced back in."""
        pw = len(self.work)
        if not pw:
            return 0
        norms = torch.maximum(self.u_w[:pw].norm(dim=1), self.u_w[pw:].norm(dim=1))
        keep = torch.nonzero(norms > _ZERO * norms.max()).flatten()
        if keep.numel() == pw:
            return 0
        kg = self.kg.view(pw, self.d, pw, self.d)
        self.kg = kg[keep][:, :, keep].reshape(keep.numel() * self.d, -1).contiguous()
        self.work = [self.work[i] for i in keep.tolist()]
        self.u_w = torch.cat([self.u_w[:pw][keep], self.u_w[pw:][keep]])
        self.p_done = len(self.work)
        return pw - len(self.work)

    def price(self) -> tuple[float, float, float, torch.Tensor, bool]:
        """(objective, lower bound, certified gap, violators ordered largest first, complete)."""
        s, pw = self.s, len(self.work)
        if pw:
            gw = s.g[torch.tensor(self.work, device=self.dev)]
            pred = s.rows.predict(gw, self.u_w[:pw] - self.u_w[pw:])
        else:
            pred = torch.zeros_like(s.y)
        lam = s.y - pred
        ll, ly = (float(v) for v in s.rows.sum(torch.stack([lam @ lam, lam @ s.y])))
        obj = 0.5 * ll + s.beta * float(self.u_w.norm(dim=1).sum())
        in_work = torch.zeros(self.p_all, dtype=torch.bool)
        in_work[self.work] = True
        upper, lower, complete = self.pricer(lam, in_work, self.cfg.pricing_batch)
        self.cmax = float(upper.max()) if upper.numel() else 0.0
        lb, _ = dual_bound(ly, ll, s.beta, self.cmax)
        # a candidate counts as a violator once checked: its exact value (or the bound the
        # cutting planes could not close) exceeds the threshold; largest first
        thr = self.pricer.thr
        viol = torch.nonzero(~in_work & (upper > thr) & self.pricer.checked).flatten()
        score = torch.where(lower[viol] > thr, lower[viol], upper[viol])
        viol = viol[torch.argsort(score, descending=True)]
        return obj, lb, (obj - lb) / max(abs(obj), 1e-300), viol, complete

    def run(self) -> PricingResult:
        cfg, sy2 = self.cfg, self.s.sy ** 2
        status = "max_rounds"
        for round_ in range(self.start_round, cfg.max_rounds):
            t0 = time.perf_counter()
            pw = len(self.work)
            ipm = ("none", 0, 0, 0.0, 0.0)
            if pw:
                ipm = self.master(round_)
                if self.failed(ipm[0]):
                    status = ipm[0]
                    break
            t_price = time.perf_counter()
            obj, lb, gap, viol, complete = self.price()
            nonzero = pw - self.prune() if not (complete and not viol.numel()) else pw
            add = viol[:min(cfg.pricing_batch, max(0, self.max_working - nonzero))].tolist()
            now = time.perf_counter()
            self.records.append(RoundRecord(
                round=round_, working_patterns=pw, nonzero_patterns=nonzero, added=len(add),
                violators=int(viol.numel()), objective=obj * sy2, lower_bound=lb * sy2,
                certified_gap=gap, max_value_ratio=self.cmax / self.s.beta,
                exact_checks=self.pricer.exact_checks, complete=complete,
                ipm_iterations=ipm[1], row_rounds=ipm[2], ipm_status=ipm[0],
                seconds=now - t0, gram_seconds=ipm[3], ipm_seconds=ipm[4],
                pricing_seconds=now - t_price))
            if cfg.progress and self.s.rows.info.is_main:
                print(f"pricing{self.label} round {round_}: {pw} patterns ({nonzero} nonzero), "
                      f"objective {obj * sy2:.10g}, certified gap {gap:.2e}, {int(viol.numel())} "
                      f"violators{'' if complete else ' found'} (+{len(add)}), {ipm[1]} IPM "
                      f"iterations, {now - t0:.1f} s", file=sys.stderr, flush=True)
            if complete and not viol.numel():
                status = "optimal" if ipm[0] in ("optimal", "none") else "numerical_error"
                break
            if not add:
                status = "memory_limit"
                break
            self.work = self.work + add
            self._checkpoint(round_)
            if cfg.time_limit is not None and now - self.s.t_start > cfg.time_limit:
                status = "time_limit"
                break
        return self._result(status)

    def _result(self, status: str) -> PricingResult:
        p_all, work, u_w, sy2 = self.p_all, self.work, self.u_w, self.s.sy ** 2
        u = torch.zeros((2 * p_all, self.d), device=self.dev, dtype=self.dt)
        if work and u_w.shape[0] == 2 * len(work):
            idx = torch.tensor(work, device=self.dev)
            u[idx] = u_w[:len(work)]
            u[idx + p_all] = u_w[len(work):]
        final = self.records[-1] if self.records else None
        iters = sum(r.ipm_iterations for r in self.records)
        details: dict[str, Any] = {
            "pricing": True, "pricing_rounds": [asdict(r) for r in self.records],
            "working_patterns": len(work), "candidate_patterns": p_all,
            "max_working_patterns": self.max_working, "ipm_iterations_total": iters,
            "resumed_from_round": self.start_round,
            "certified_gap": final.certified_gap if final else math.nan,
            "lower_bound": final.lower_bound if final else math.nan,
            "max_value_ratio": final.max_value_ratio if final else math.nan}
        if self.last is not None:
            run, rr = self.last
            details.update({"relative_gap": run.rel_gap, "gap": run.gap * sy2,
                            "r_primal": run.pres, "r_dual": run.dres,
                            "regularization": run.regularization, "working_rows": rr.rows,
                            "screening_rounds": rr.rounds})
        return PricingResult(u=u, status=status, iterations=iters,
                             objective=final.objective / sy2 if final else math.nan,
                             lower_bound=final.lower_bound / sy2 if final else math.nan,
                             certified_gap=final.certified_gap if final else math.nan,
                             rounds=self.records, details=details)


def _coarse_strides(n_pixels: int, cfg: IpmConfig) -> list[int]:
    """Pixel fractions (1 / stride) of the coarse levels, coarsest first: factor
    `pricing_coarse` per level while the level keeps at least `coarse_min_pixels` pixels."""
    strides, k = [], cfg.pricing_coarse
    if k < 2:
        return []
    while n_pixels // (k * (strides[-1] if strides else 1)) >= cfg.coarse_min_pixels:
        strides.append(k * (strides[-1] if strides else 1))
    return strides[::-1]


def solve_with_pricing(setup: PricingSetup, cfg: IpmConfig, history: list[dict[str, float]],
                       max_working: int) -> PricingResult:
    """Column generation over the patterns of `setup` (see the module doc); the working set
    holds at most `max_working` patterns (what fits in memory).

    Coarse to fine: the support of eq. 4 barely changes when the pixels are subsampled with
    beta per pixel fixed (600 MNIST digits x 8,000 patterns: 177 patterns at 1/4 of the
    pixels, 178 at all of them), while each coarse round costs a fraction of a full one. So
    the problem is first solved on a seeded sample of 1 / `pricing_coarse` of the pixels
    (recursively, while a level
    keeps `coarse_min_pixels`), each level's support starting the next level's working set;
    only the last level, on every pixel, is solved to the certified optimum. A checkpoint of
    the last level skips the coarse ones.
    """
    final = _ColumnGeneration(setup, cfg, history, max_working)
    strides = [] if final.start_round else _coarse_strides(
        setup.rows.n_global, cfg)
    work, levels = None, []
    loose = replace(cfg, checkpoint_path=None, tol=max(cfg.tol, 1e-6),
                    feas_tol=max(cfg.feas_tol, 1e-6), pricing_tol=max(cfg.pricing_tol, 1e-4))
    for stride in strides:
        t0 = time.perf_counter()
        rows, idx = setup.rows.subset(stride)
        y = setup.y[idx].contiguous()
        frac = rows.n_global / setup.rows.n_global
        sub = replace(setup, rows=rows, y=y, beta=setup.beta * frac,
                      yy=0.5 * float(rows.sum(y @ y)))
        level = _ColumnGeneration(sub, loose, [], max_working, initial=work,
                                  label=f" (1/{stride} of the pixels)")
        res = level.run()
        work = level.work
        levels.append({"stride": stride, "pixels": rows.n_global, "status": res.status,
                       "rounds": len(res.rounds), "working_patterns": len(work),
                       "objective": res.objective * setup.sy ** 2 / frac,
                       "seconds": time.perf_counter() - t0})
    if work is not None:
        final.work = work
    result = final.run()
    result.details["coarse_levels"] = levels
    return result
