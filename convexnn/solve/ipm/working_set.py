"""Eq. 4 on a fixed set of patterns, solved on a working set of cone rows.

Only a few of the N rows of a group are active at the optimum, and they lie among the rows
nearest the pattern's generator hyperplane (smallest `|x_n . g| / ||x_n||`; on 2 MNIST digits
x 60 patterns every active row is among the 54 nearest of 1,568). The interior-point solver
runs on `16 d` such rows per pattern, the solution is checked against every row (one streamed
pass), the violated rows join the set and the problem is solved again, until no row is
violated: a solution of the relaxation that satisfies every row solves eq. 4, and its
certificate carries over with zero multipliers on the dropped rows.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from convexnn.solve.ipm.config import IpmConfig
from convexnn.solve.ipm.loop import IpmData, IpmRun, run_interior_point
from convexnn.solve.ipm.rows import DenseConeRows, GatheredConeRows
from convexnn.solve.pattern_rows import PatternRows

__all__ = ["RowRounds", "solve_on_rows"]

MAX_ROUNDS = 8        # working-set rounds before every row (when every row fits)
HARD_ROUNDS = 40      # rounds at all when every row does not fit
CHECK_ROWS = 16       # violated rows added per group and round


@dataclass
class RowRounds:
    """What the row working set did: rows per pattern in the last solve, rounds, seconds."""

    rows: int
    rounds: int
    iterations: int
    regularization: float
    seconds: float
    dense: bool


def _row_sets(near_ids, near_rows, forced: list[dict[int, torch.Tensor]], m: int
              ) -> torch.Tensor:
    """Per pattern: its forced rows, then its nearest rows not forced, `m` rows in all."""
    p, d = near_rows.shape[0], near_rows.shape[2]
    out = near_rows.new_empty((p, m, d))
    for i in range(p):
        chosen = list(forced[i].values())
        ids = set(forced[i])
        for j, rid in enumerate(near_ids[i].tolist()):
            if len(chosen) >= m:
                break
            if rid >= 0 and rid not in ids:
                chosen.append(near_rows[i, j])
        while len(chosen) < m:                       # fewer rows than m: repeat the last
            chosen.append(chosen[-1])
        out[i] = torch.stack(chosen[:m])
    return out


def solve_on_rows(data: IpmData, rows: PatternRows, g: torch.Tensor, cfg: IpmConfig,
                  t_start: float, history: list[dict[str, float]], round_: int = 0,
                  dense_fits: bool = True) -> tuple[IpmRun, RowRounds]:
    """Eq. 4 restricted to the generators g (P, d) (data: their Gram etc.), on every pixel's
    cone rows, through a working set of rows (see the module doc)."""
    p, d = g.shape
    n_rows = int(rows.sum(rows.keep.sum().to(torch.float64)).item())
    k = 16 * d if cfg.working_rows is None else cfg.working_rows
    dense_ok = dense_fits and not rows.info.enabled
    iterations, reg, rounds, seconds = 0, 0.0, 0, 0.0
    if k == 0 or (k >= n_rows and dense_ok):
        dense = DenseConeRows(rows, g, cfg.block_elements)
        run = run_interior_point(dense, data, cfg, t_start, history, round_)
        return run, RowRounds(n_rows, 0, run.iterations, run.regularization, run.seconds, True)
    k = min(k, n_rows)
    inf = torch.full((p,), -math.inf, dtype=rows.dtype, device=rows.device)
    span = k + CHECK_ROWS
    _, near_rows, near_ids, _ = rows.smallest(g, g, span, inf)          # margins, ascending
    forced: list[dict[int, torch.Tensor]] = [{} for _ in range(p)]
    m = k
    while True:
        if m > span - CHECK_ROWS:            # more rows needed than fetched: fetch more
            span = min(n_rows, m + 4 * CHECK_ROWS)
            _, near_rows, near_ids, _ = rows.smallest(g, g, span, inf[:p])
        active = GatheredConeRows(_row_sets(near_ids, near_rows, forced, min(m, n_rows)))
        run = run_interior_point(active, data, cfg, t_start, history, round_ + rounds)
        iterations += run.iterations
        reg = max(reg, run.regularization)
        seconds += run.seconds
        broke = run.status == "numerical_error" and max(run.rel_gap, run.pres,
                                                         run.dres) > cfg.reduced_tol
        if broke or rounds >= (MAX_ROUNDS if dense_ok else HARD_ROUNDS):
            if not dense_ok:
                break
            rounds += 1                       # the working set broke down: every row
            dense = run_interior_point(DenseConeRows(rows, g, cfg.block_elements), data, cfg,
                                       t_start, history, round_ + rounds)
            return dense, RowRounds(n_rows, rounds, iterations + dense.iterations,
                                    max(reg, dense.regularization), seconds + dense.seconds,
                                    True)
        if run.status not in ("optimal", "numerical_error"):
            break
        # the working set's solution solves eq. 4 iff it satisfies every row (its lower bound
        # is one for eq. 4 too: the dropped rows' multipliers are 0); else add violated rows
        t0 = time.perf_counter()
        g2 = torch.cat([g, g])
        thr = torch.full((2 * p,), -max(cfg.feas_tol, run.pres), dtype=rows.dtype,
                         device=rows.device)
        val, vrows, vids, cnt = rows.smallest(g2, run.point.u, CHECK_ROWS, thr)
        seconds += time.perf_counter() - t0
        if not bool((cnt > 0).any()):
            break
        rounds += 1
        for q in torch.nonzero(cnt > 0).flatten().tolist():
            i = q % p
            for j in torch.nonzero(val[q] < thr[q]).flatten().tolist():
                forced[i][int(vids[q, j])] = vrows[q, j]
        m = max(m, k + max(len(f) for f in forced))
    return run, RowRounds(active.m, rounds, iterations, reg, seconds, False)
