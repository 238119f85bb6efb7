"""Optimality evidence for eq. 4 (Appendix C): a dual point, a lower bound, pattern pricing.

Weak duality (MATH.md, App. C): for every `lambda` (N,) with, for every sampled pattern i,

    c_i^+ = max_{v in K_i, ||v|| <= 1}  lambda^T D_i X v <= beta,
    c_i^- = max_{w in K_i, ||w|| <= 1} -lambda^T D_i X w <= beta,
    K_i = {v : (2D_i - I) X v >= 0}

the optimum of eq. 4 is at least `lambda^T y - l*(lambda)` (squared: `1/2 ||lambda||^2`; Huber:
the same with `|lambda| <= delta`; l1: 0 with `|lambda| <= 1`). We take `lambda = t lambda_0`,
`lambda_0 = y - prediction` (squared; clipped for Huber; the ADMM multiplier for l1), and the
best `t` that satisfies the constraints. Two checks of the constraints:

  exact  `c_i^+- = ||P_{K_i}(+-X^T D_i lambda)||` (the max of a linear function over the unit ball
         inside a cone is the norm of the projection; computed by the cutting planes of
         `convexnn.solve.cone_values` over the streamed pixels, NNLS on the active rows);
  gated  `||X^T D_i lambda||`, the same max without the cone: larger, so a valid, looser bound.

With every sign pattern present, the exact bound also bounds the non-convex eq. 2 from below.
Pricing: the gated value of many fresh random generators, streamed; a value above beta says a
pattern *may* lower the objective, the value at the generator itself (a point of its cone) above
beta says one *will*.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import nnls

from convexnn.model.gated import gated_predict
from convexnn.model.patches import patch_matrix
from convexnn.model.patterns import sample_generators
from convexnn.model.validation import as_targets
from convexnn.solve.cone_values import ConeChecker, cone_values
from convexnn.solve.pattern_rows import PatternRows

__all__ = ["Certificate", "PricingReport", "dual_point", "pattern_values", "certify",
           "price_patterns", "cone_sup", "enumerate_generators_2d"]


@dataclass
class Certificate:
    objective: float          # eq. 4 objective of the model (an upper bound when feasible)
    lower_bound: float        # weak-duality lower bound on the sampled program
    certified_gap: float      # (feasible_objective - lower_bound) / |feasible_objective|
    check: str                # "exact" or "gated"
    max_constraint_ratio: float  # max_i c_i / beta at lambda_0 scaled to the best t
    scale: float              # t
    relative_violation: float  # of the cone rows, relative to the largest group norm
    n_patterns: int
    seconds: float
    feasible_objective: float  # the objective the gap is measured from (see `certify`)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PricingReport:
    n_generators: int
    max_gated_ratio: float        # max ||X^T D_g lambda|| / beta over fresh generators
    n_gated_violations: int       # how many exceed 1 (may lower the objective)
    max_generator_ratio: float    # max |lambda^T (X g)_+| / (||g|| beta): a proven lower value
    n_proven_violations: int      # how many exceed 1 (adding them lowers the objective)
    top_generators: torch.Tensor  # (k, C, k, k) the best candidates by gated value
    top_gated_ratio: torch.Tensor
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["top_generators"] = None
        d["top_gated_ratio"] = self.top_gated_ratio.tolist()
        return d


def dual_point(model, noisy, clean, dual: torch.Tensor | None = None) -> torch.Tensor:
    """`lambda_0` (N,) in patch-row order: `y - prediction` (squared), clipped (Huber), or the
    solver's loss multiplier (l1; `solve_info_.details["loss_dual"]`, else `sign(y - pred)`)."""
    x = model._inputs(noisy)
    y = as_targets(clean, x)
    if dual is not None:
        return torch.as_tensor(dual, dtype=torch.float64).reshape(-1)
    r = (y - model.predict(x)).reshape(-1)
    if model.loss == "huber":
        return r.clamp(-model.huber_delta, model.huber_delta)
    if model.loss == "l1":
        stored = getattr(model, "solve_info_", None)
        stored = stored.details.get("loss_dual") if stored is not None else None
        if stored is not None and stored.numel() == r.numel():
            return stored.to(torch.float64).reshape(-1)
        return torch.sign(r)
    return r


def cone_sup(c: np.ndarray, b: np.ndarray) -> float:
    """`max {c^T v : ||v|| <= 1, b v >= 0}` = `||P_K(c)||`, K = {v : b v >= 0} (exact, NNLS)."""
    keep = np.linalg.norm(b, axis=1) > 0
    b = b[keep] / np.linalg.norm(b[keep], axis=1, keepdims=True)
    if b.shape[0] == 0:
        return float(np.linalg.norm(c))
    mu, _ = nnls(b.T, -c, maxiter=100 * b.shape[0])
    return float(np.linalg.norm(c + b.T @ mu))


def pattern_values(x: torch.Tensor, generators: torch.Tensor, lam: torch.Tensor,
                   check: str = "gated") -> tuple[torch.Tensor, torch.Tensor]:
    """`(c^+, c^-)` (P,) for every pattern of `generators` on images x (see module doc); the
    exact check runs the cutting planes of `convexnn.solve.cone_values` over the streamed pixels."""
    if check not in ("gated", "exact"):
        raise ValueError(f"check: expected 'gated' or 'exact', got {check!r}")
    rows = PatternRows(patch_matrix(x.to(torch.float64), int(generators.shape[-1])))
    g = generators.to(torch.float64).reshape(generators.shape[0], -1)
    c = rows.price(g, lam.to(torch.float64))                             # (P, d)
    if check == "gated":
        n = c.norm(dim=1)
        return n, n.clone()
    p = g.shape[0]
    vals = cone_values(rows, torch.cat([g, g]), torch.cat([c, -c]))
    return vals.upper[:p], vals.upper[p:]


def _max_value(rows: PatternRows, g: torch.Tensor, c: torch.Tensor) -> tuple[float, int]:
    """`max_i max(value(c_i), value(-c_i))` (App. C), exactly: candidates in decreasing order
    of the gated bound, stopping once no remaining gated bound can exceed the best exact
    value (so at a near-optimum only a few need the cone check). (max, checked)."""
    gated = c.norm(dim=1)
    order = torch.argsort(gated, descending=True)
    checker = ConeChecker(rows)
    best, pos, p = 0.0, 0, g.shape[0]
    while pos < p and float(gated[order[pos]]) > best:
        idx = order[pos:pos + 256]
        idx = idx[gated[idx] > best]
        pos += 256
        gi, ci = g[idx], c[idx]
        vals = checker.values(torch.cat([gi, gi]), torch.cat([ci, -ci]), stop_below=best)
        best = max(best, float(vals.upper.max()))
    return best, min(pos, p)


def _best_scale(lam0: torch.Tensor, y: torch.Tensor, loss: str, delta: float,
                limit: float) -> tuple[float, float]:
    """Largest lower bound over `lambda = t lambda_0`, `0 <= t <= limit`: (bound, t)."""
    ly, ll = float(lam0 @ y), float(lam0 @ lam0)
    inf = float(lam0.abs().max()) if lam0.numel() else 0.0
    if loss == "l1":
        limit = min(limit, 1.0 / inf) if inf > 0 else limit
        t = limit if ly > 0 else 0.0
        return t * ly, t
    if loss == "huber" and inf > 0:
        limit = min(limit, delta / inf)
    t = min(max(ly / ll, 0.0), limit) if ll > 0 else 0.0
    return t * ly - 0.5 * t * t * ll, t


def certify(model, noisy, clean, check: str = "exact", dual: torch.Tensor | None = None
            ) -> Certificate:
    """Lower bound and certified relative gap of a fitted `ConvexDualDenoiser` (App. C).

    The lower bound covers every pattern of the model. The upper bound is the model's eq. 4
    objective where it satisfies the cone constraints (relative violation <= 1e-9); otherwise
    (e.g. after `solver="adam"`) each group is projected onto its cone first (exactly, by the
    cutting planes of `convexnn.solve.cone_values`), which gives a feasible point whose objective
    `feasible_objective` bounds the optimum from above, and the gap is measured from it.
    """
    t0 = time.perf_counter()
    if check not in ("gated", "exact"):
        raise ValueError(f"check: expected 'gated' or 'exact', got {check!r}")
    x = model._inputs(noisy)
    y = as_targets(clean, x)
    target = (y - x if model.residual else y).reshape(-1)
    lam0 = dual_point(model, x, y, dual)
    rows = PatternRows(patch_matrix(x, model.kernel_size))
    g = model.generators_.to(torch.float64).reshape(model.generators_.shape[0], -1)
    obj = model.objective(x, y, reduction="sum")
    p = g.shape[0]
    violation = rows.max_violation(g, torch.cat([model.v_.reshape(p, -1), model.w_.reshape(
        p, -1)]).to(torch.float64))                     # fused pass over every pixel
    feasible, lam1 = obj, None
    if violation > 1e-9:
        feasible, lam1 = _projected_point(model, x, y, rows, g)
    best = None
    for lam in ([lam0] if lam1 is None or dual is not None else [lam0, lam1]):
        c = rows.price(g, lam)
        cmax = float(c.norm(dim=1).max()) if check == "gated" else _max_value(rows, g, c)[0]
        limit = model.beta / cmax if cmax > 0 else float("inf")
        lb, t = _best_scale(lam, target, model.loss, model.huber_delta, limit)
        if best is None or lb > best[0]:
            best = (lb, t, cmax)
    lb, t, cmax = best
    return Certificate(obj, lb, (feasible - lb) / max(abs(feasible), 1e-300), check,
                       t * cmax / model.beta, t, violation,
                       int(model.generators_.shape[0]), time.perf_counter() - t0, feasible)


def _projected_point(model, x, y, rows: PatternRows, g: torch.Tensor
                     ) -> tuple[float, torch.Tensor | None]:
    """A feasible point from an infeasible one: every group projected onto its cone, then the
    whole network scaled by the best `s >= 0` (squared loss; scaling keeps the cones). Its
    eq. 4 objective (an upper bound on the optimum) and its residual (a dual candidate)."""
    p = g.shape[0]
    u = torch.cat([model.v_.reshape(p, -1), model.w_.reshape(p, -1)]).to(torch.float64)
    keep = u.norm(dim=1) > 0
    proj = torch.zeros_like(u)
    if bool(keep.any()):
        proj[keep] = cone_values(rows, torch.cat([g, g])[keep], u[keep]).projection
    shape = model.v_.shape
    pred = gated_predict(x, model.generators_, (proj[:p] - proj[p:]).reshape(shape))
    base = x if model.residual else torch.zeros_like(x)
    reg = model.beta * float(proj.norm(dim=1).sum())
    if model.loss != "squared":
        return float(model.loss_(pred + base, y, "sum")) + reg, None
    r = (y - base).reshape(-1)
    a = pred.reshape(-1)
    aa = float(a @ a)
    scale = max(0.0, (float(r @ a) - reg) / aa) if aa > 0 else 0.0     # optimal s >= 0
    resid = r - scale * a
    return 0.5 * float(resid @ resid) + scale * reg, resid


def price_patterns(model, noisy, clean, n_generators: int = 100_000, block: int = 2048,
                   seed: int = 12345, top_k: int = 64, dual: torch.Tensor | None = None
                   ) -> PricingReport:
    """Gated pricing of `n_generators` fresh Gaussian generators, streamed in blocks."""
    t0 = time.perf_counter()
    x = model._inputs(noisy)
    y = as_targets(clean, x)
    lam = dual_point(model, x, y, dual)
    k, c = model.kernel_size, x.shape[1]
    xp = patch_matrix(x, k)
    best_val = torch.empty(0, dtype=torch.float64)
    best_gen = torch.empty((0, c, k, k), dtype=torch.float64)
    n_gated = n_proven = 0
    max_gated = max_gen = 0.0
    rng_seed = seed
    done = 0
    while done < n_generators:
        nb = min(block, n_generators - done)
        g = sample_generators(nb, c, k, rng_seed)
        rng_seed += 1
        pre = xp @ g.reshape(nb, -1).T                                    # (N, nb)
        m = (pre >= 0).to(xp.dtype)
        gated = ((m * lam[:, None]).T @ xp).norm(dim=1) / model.beta
        direct = (lam @ pre.clamp_min(0)).abs() / (g.reshape(nb, -1).norm(dim=1) * model.beta)
        max_gated = max(max_gated, float(gated.max()))
        max_gen = max(max_gen, float(direct.max()))
        n_gated += int((gated > 1).sum())
        n_proven += int((direct > 1).sum())
        vals = torch.cat([best_val, gated])
        gens = torch.cat([best_gen, g])
        order = torch.argsort(vals, descending=True)[:top_k]
        best_val, best_gen = vals[order], gens[order]
        done += nb
    return PricingReport(n_generators, max_gated, n_gated, max_gen, n_proven, best_gen,
                         best_val, time.perf_counter() - t0)


def enumerate_generators_2d(images: torch.Tensor) -> torch.Tensor:
    """One generator per full-dimensional sign-pattern cell when patches are 2-dimensional
    (k = 1, C = 2): the cells of the line arrangement `{g : X_n g = 0}` in R^2 are the arcs
    between consecutive boundary angles; their midpoints give every pattern. (P, 2, 1, 1)."""
    x = torch.as_tensor(images, dtype=torch.float64)
    if x.ndim != 4 or x.shape[1] != 2:
        raise ValueError(f"expected images (n, 2, H, W) (k = 1, two channels), "
                         f"got {tuple(x.shape)}")
    rows = x.permute(0, 2, 3, 1).reshape(-1, 2).numpy()
    rows = rows[np.linalg.norm(rows, axis=1) > 0]
    phi = np.arctan2(rows[:, 1], rows[:, 0])
    bounds = np.sort(np.mod(np.concatenate([phi + np.pi / 2, phi - np.pi / 2]), 2 * np.pi))
    bounds = np.unique(bounds)
    mids = (bounds + np.diff(np.concatenate([bounds, bounds[:1] + 2 * np.pi])) / 2)
    g = np.stack([np.cos(mids), np.sin(mids)], 1)
    return torch.from_numpy(g).reshape(-1, 2, 1, 1)
