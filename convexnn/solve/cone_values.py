"""The exact cone-restricted check of App. C, by cutting planes over the streamed pixels.

For a pattern with cone `K = {v : c_n . v >= 0 for every pixel n}` (`c_n` its signed unit
rows) and a vector `c = X^T D lambda`, the value that decides whether the pattern can lower the
objective of eq. 4 is

    value(c) = max {c . v : v in K, ||v|| <= 1} = ||P_K(c)||        (MATH.md, App. C)

Every `mu >= 0` on any subset S of the rows gives an upper bound, `||c + C_S^T mu|| >=
||P_{K_S}(c)|| >= ||P_K(c)||` (K is inside the cone K_S of fewer rows, and the projection onto
a cone is the residual of the nearest point of its polar `{-C_S^T mu}`), so the bound is
rigorous whatever the accuracy of `mu`. Cutting planes: project onto the cone of the rows
known for the candidate (NNLS), look for rows the projection violates, add them, repeat. The
rows are looked for first in a pool of rows that bound other candidates (in memory: a pixel
near one pattern's hyperplane is often near its neighbours'), then in one pass over every
pixel (`PatternRows.smallest`); once no pixel's row is violated the projection lies in K and
is `P_K(c)` itself (exact). The gated bound `||c||` is the same with S empty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import nnls

from convexnn.solve.pattern_rows import PatternRows

__all__ = ["ConeValues", "ConeChecker", "cone_values"]


@dataclass
class ConeValues:
    """Per candidate: a rigorous `upper` bound of `value(c)`, the `lower` value `c . v / ||v||`
    at the last projection when it is feasible (else `c . g / ||g||`, g the generator, a point
    of K), and whether the cutting planes closed (`exact`: upper = lower to rounding)."""

    upper: torch.Tensor
    lower: torch.Tensor
    exact: torch.Tensor
    rounds: int
    passes: int       # candidate passes over every pixel
    projection: torch.Tensor   # (Q, d) the last projection P_{K_S}(c) (P_K(c) where exact)


def _project(c: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(c + C_S^T mu, mu)` with `mu = argmin_{mu >= 0} ||c + C_S^T mu||` (NNLS):
    P_{K_S}(c) and the multipliers of the rows (positive on the active ones)."""
    if rows.shape[0] == 0:
        return c.copy(), np.zeros(0)
    mu, _ = nnls(rows.T, -c, maxiter=50 * max(rows.shape[0], 10))
    return c + rows.T @ mu, mu


class ConeChecker:
    """`value(c)` for many candidates, remembering between calls each candidate's cutting rows
    (by a caller's key) and a pool of rows that bound any candidate."""

    def __init__(self, rows: PatternRows, per_round: int = 8, max_rounds: int = 100,
                 tol: float = 1e-12, pool_size: int = 4096) -> None:
        self.rows, self.per_round, self.max_rounds, self.tol = rows, per_round, max_rounds, tol
        self.pool_size = pool_size
        self.pool = np.zeros((0, rows.d))
        self.pool_ids: set[int] = set()
        self.cuts: dict[int, np.ndarray] = {}

    def _remember(self, rows: np.ndarray, ids: np.ndarray) -> None:
        fresh = [i for i, rid in enumerate(ids.tolist()) if rid >= 0 and rid not in
                 self.pool_ids]
        if not fresh:
            return
        self.pool_ids.update(int(ids[i]) for i in fresh)
        self.pool = np.concatenate([rows[fresh], self.pool])[:self.pool_size]
        if len(self.pool_ids) > 4 * self.pool_size:
            self.pool_ids = set(list(self.pool_ids)[-self.pool_size:])

    def values(self, g: torch.Tensor, c: torch.Tensor, keys: list[int] | None = None,
               stop_below: float = -math.inf) -> ConeValues:
        """`value(c_q)` over the cone of generator `g_q` for every candidate q (Q, d); a
        candidate stops once its upper bound is `<= stop_below` or its projection violates
        no row by more than `tol ||c||` (exact)."""
        q, d = c.shape
        cn = np.ascontiguousarray(c.detach().cpu().numpy())
        gn = np.ascontiguousarray(g.detach().cpu().numpy())
        keys = keys if keys is not None else [None] * q
        cuts = [self.cuts.get(k, np.zeros((0, d))) if k is not None else np.zeros((0, d))
                for k in keys]
        gnorm, cnorm = np.linalg.norm(gn, axis=1), np.linalg.norm(cn, axis=1)
        lower = np.maximum(0.0, (cn * gn).sum(1) / np.where(gnorm > 0, gnorm, 1.0))
        tol = self.tol * cnorm
        v = cn.copy()
        upper = cnorm.copy()
        mus = [np.zeros(0)] * q
        for i in range(q):
            if cuts[i].shape[0] and upper[i] > stop_below:
                v[i], mus[i] = _project(cn[i], cuts[i])
                upper[i] = min(upper[i], np.linalg.norm(v[i]))
        exact = np.zeros(q, dtype=bool)
        done = upper <= stop_below
        self._pool_rounds(gn, cn, v, mus, upper, cuts, done, tol, stop_below)
        rounds = passes = 0
        while not done.all() and rounds < self.max_rounds:
            rounds += 1
            act = np.flatnonzero(~done)
            passes += act.size
            dev, dt = self.rows.device, self.rows.dtype
            val, rws, ids, cnt = self.rows.smallest(
                torch.from_numpy(gn[act]).to(dev, dt), torch.from_numpy(v[act]).to(dev, dt),
                self.per_round, torch.from_numpy(-tol[act]).to(dev, dt))
            val, rws, ids, cnt = (t.cpu().numpy() for t in (val, rws, ids, cnt))
            for j, i in enumerate(act):
                if cnt[j] == 0:                      # P_{K_S}(c) is in K: it is P_K(c)
                    done[i] = exact[i] = True
                    nv = np.linalg.norm(v[i])
                    lower[i] = max(lower[i], float(cn[i] @ v[i]) / nv if nv > 0 else 0.0)
                    continue
                new = val[j] < -tol[i]
                self._remember(rws[j][new], ids[j][new])
                cuts[i] = np.concatenate([cuts[i], rws[j][new]])
                v[i], mus[i] = _project(cn[i], cuts[i])
                upper[i] = min(upper[i], np.linalg.norm(v[i]))
                done[i] = upper[i] <= stop_below
            if rounds % 2 == 0:
                self._pool_rounds(gn, cn, v, mus, upper, cuts, done, tol, stop_below)
        for i, k in enumerate(keys):
            if k is not None:    # remember the rows active at the last projection
                self.cuts[k] = cuts[i][mus[i] > 0] if mus[i].size == cuts[i].shape[0] \
                    else cuts[i]
        lower = np.minimum(lower, upper)
        return ConeValues(torch.from_numpy(upper), torch.from_numpy(lower),
                          torch.from_numpy(exact), rounds, passes, torch.from_numpy(v))

    def _pool_rounds(self, gn, cn, v, mus, upper, cuts, done, tol, stop_below,
                     rounds: int = 20) -> None:
        """Cutting planes from the pool (no pass over the pixels) until the pool's rows are
        satisfied or the bound drops below `stop_below`."""
        if self.pool.shape[0] == 0:
            return
        pool = self.pool
        for _ in range(rounds):
            act = np.flatnonzero(~done)
            if act.size == 0:
                return
            moved = False
            for c0 in range(0, act.size, 1024):
                chunk = act[c0:c0 + 1024]
                sgn = np.where(pool @ gn[chunk].T >= 0, 1.0, -1.0)             # (M, q)
                sc = sgn * (pool @ v[chunk].T)
                for j, i in enumerate(chunk):
                    bad = np.flatnonzero(sc[:, j] < -tol[i])
                    if bad.size == 0:
                        continue
                    bad = bad[np.argsort(sc[bad, j])[:self.per_round]]
                    cuts[i] = np.concatenate([cuts[i], pool[bad] * sgn[bad, j, None]])
                    v[i], mus[i] = _project(cn[i], cuts[i])
                    upper[i] = min(upper[i], np.linalg.norm(v[i]))
                    done[i] = upper[i] <= stop_below
                    moved = True
            if not moved:
                return


def cone_values(rows: PatternRows, g: torch.Tensor, c: torch.Tensor, *,
                stop_below: float = -math.inf, per_round: int = 8, max_rounds: int = 100,
                tol: float = 1e-12) -> ConeValues:
    """`value(c_q)` over the cone of generator `g_q` for every candidate q (one-off)."""
    return ConeChecker(rows, per_round, max_rounds, tol).values(g, c, stop_below=stop_below)
