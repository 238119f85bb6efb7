"""Exact prox of `t ||z||_2 + indicator(K_i)` for the pattern cones `K_i` of eq. 4.

`K_i = {z : (2 D_i - I) X z >= 0}` is a polyhedral cone in R^d with N half-spaces. For a closed
convex cone, `prox_{t||.|| + I_K} = shrink_t o P_K` (Moreau: `<z, c - P_K c> <= 0` on K with
equality along `P_K c`), so the group prox is an exact projection followed by group
soft-thresholding. The projection is computed by constraint generation: solve the projection
onto the rows of a small working set exactly (NNLS on its dual, `P_K c = c + B_W^T mu`,
`mu >= 0`), check all N rows of every group at once with one pass over the pixels, add the most
violated rows, repeat until no row is violated (then the projection onto the relaxation lies in
K and is the projection onto K). Working sets persist between calls (ADMM warm start).
"""

from __future__ import annotations

import numpy as np
import torch

from convexnn.solve.admm.ops import PatternOperators

__all__ = ["ConeProx"]


class ConeProx:
    def __init__(self, ops: PatternOperators, feas_tol: float = 1e-10, add_rows: int = 16,
                 max_rounds: int = 200) -> None:
        self.ops = ops
        p = ops.n_patterns
        self.xn = (ops.X * ops.unit_scale[:, None]).cpu().numpy()           # unit rows
        self.sign = (2.0 * ops.masks.cpu().numpy().astype(np.float64) - 1.0)  # (N, P)
        self.work: list[np.ndarray] = [np.zeros(0, dtype=np.int64) for _ in range(2 * p)]
        self.feas_tol, self.add_rows, self.max_rounds = feas_tol, add_rows, max_rounds
        self.rounds = 0
        self.nnls_calls = 0

    def _project_group(self, j: int, c: np.ndarray, prune: bool) -> np.ndarray:
        rows = self.work[j]
        if rows.size == 0:
            return c
        b = self.xn[rows] * self.sign[rows, j % self.ops.n_patterns][:, None]   # (|W|, d)
        from scipy.optimize import nnls  # lazy: scipy.optimize costs 0.3 s to import

        mu, _ = nnls(b.T, -c, maxiter=50 * max(rows.size, 10))
        self.nnls_calls += 1
        keep = mu > 0
        if prune and keep.sum() < rows.size and rows.size > 4 * self.ops.dim:
            self.work[j] = rows[keep]          # prune rows that carry no multiplier
        return c + b.T @ mu

    def __call__(self, c: torch.Tensor, t: float) -> torch.Tensor:
        """`shrink_t(P_K(c))` per row group of `c` (2P, d); exact up to `feas_tol`."""
        cn = c.detach().cpu().numpy()
        out = cn.copy()
        norms = np.linalg.norm(cn, axis=1)
        todo = np.nonzero(norms > t)[0]           # ||P_K c|| <= ||c|| <= t: the group is 0
        out[norms <= t] = 0.0
        for rnd in range(self.max_rounds):
            for j in todo:
                out[j] = self._project_group(int(j), cn[j], rnd == 0)
            self.rounds += 1
            cand = torch.from_numpy(out[todo]).to(self.ops.X)
            viol = self._violations(cand, todo)                                 # (N, |todo|)
            scale = np.maximum(np.linalg.norm(out[todo], axis=1), 1e-300)
            bad = viol.min(0).values.cpu().numpy() < -self.feas_tol * scale
            if not bad.any():
                break
            # at most N rows exist (tiny images have fewer pixels than add_rows)
            worst = torch.topk(-viol[:, torch.from_numpy(bad)], min(self.add_rows, viol.shape[0]),
                               dim=0)
            idx = worst.indices.cpu().numpy()
            vals = worst.values.cpu().numpy()
            grew = np.zeros(int(bad.sum()), dtype=bool)
            for col, j in enumerate(todo[bad]):
                new = np.setdiff1d(idx[vals[:, col] > 0, col], self.work[j])
                if new.size:
                    self.work[j] = np.union1d(self.work[j], new)
                    grew[col] = True
            todo = todo[bad][grew]
            if todo.size == 0:      # violations left are NNLS round-off on working rows
                break
        res = out
        n = np.linalg.norm(res, axis=1, keepdims=True)
        res = res * np.clip(1.0 - t / np.maximum(n, 1e-300), 0.0, None)
        return torch.from_numpy(res).to(c)

    def _violations(self, cand: torch.Tensor, groups: np.ndarray) -> torch.Tensor:
        """Signed unit-row constraint values `(2 D_i - I) X_n z / ||X_n||`, (N, len(groups))."""
        ops = self.ops
        pat = torch.from_numpy(groups % ops.n_patterns).to(ops.X.device)
        out = ops.X.new_empty((ops.n_pixels, len(groups)))
        for r0, r1 in ops.blocks:
            sgn = 2.0 * ops.masks[r0:r1][:, pat].to(ops.dtype) - 1.0
            out[r0:r1] = sgn * ((ops.X[r0:r1] * ops.unit_scale[r0:r1, None]) @ cand.T)
        return out
