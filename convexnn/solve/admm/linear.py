"""The u-step linear system of the ADMM solver (`convexnn.solve.admm.solver`).

With `a = v - w`, `b = v + w` the u-step `(F^T F + rho I) u = r`, `F = [A, -A]`, splits into
`b = r_b / rho` and the a-system `(c A^T A + rho I) a = r_a` (c = 2; `2 rho_q` for split losses).

Direct: one eigendecomposition `A^T A = U diag(l) U^T` (P d x P d, streamed Gram) makes every
later solve, for any rho, two dense products. CG: preconditioned conjugate gradients with the
exact diagonal blocks `c X^T D_i X + rho I` inverted per pattern (block Jacobi), warm-started.
"""

from __future__ import annotations

import time

import torch

from convexnn.solve.admm.ops import PatternOperators

__all__ = ["DirectSolver", "CgSolver", "make_linear_solver"]


class DirectSolver:
    name = "direct (eigendecomposition of the P d x P d Gram)"

    def __init__(self, ops: PatternOperators, split: bool) -> None:
        t0 = time.perf_counter()
        self.ops, self.split = ops, split
        self.lam, self.U = torch.linalg.eigh(ops.gram())
        self.lam = self.lam.clamp_min(0.0)
        self.setup_seconds = time.perf_counter() - t0
        self.rho = 1.0

    def default_rho(self) -> float:
        return max(float(self.lam.mean()), 1e-8)

    def set_rho(self, rho: float, kappa: float) -> None:
        c = 2.0 * kappa * rho if self.split else 2.0
        self.rho = rho
        self.inv = 1.0 / (c * self.lam + rho)

    def solve_a(self, rhs: torch.Tensor) -> torch.Tensor:
        r = self.U @ ((self.U.T @ rhs.reshape(-1)) * self.inv)
        return r.reshape(rhs.shape)


class CgSolver:
    name = "cg (block-Jacobi preconditioned conjugate gradients)"

    def __init__(self, ops: PatternOperators, split: bool, max_iter: int, tol: float) -> None:
        t0 = time.perf_counter()
        self.ops, self.split, self.max_iter, self.tol = ops, split, max_iter, tol
        self.iq = torch.eye(ops.dim, device=ops.device, dtype=ops.dtype)
        self.grams = ops.pattern_grams()                                    # (P, d, d)
        self.x = None
        self.total_iterations = 0
        self.setup_seconds = time.perf_counter() - t0
        self.rho = 1.0

    def default_rho(self) -> float:
        tr = self.grams.diagonal(dim1=1, dim2=2).sum()
        return max(float(tr) / (self.ops.n_patterns * self.ops.dim), 1e-8)

    def set_rho(self, rho: float, kappa: float) -> None:
        self.c = 2.0 * kappa * rho if self.split else 2.0
        self.rho = rho
        self.pre = torch.linalg.inv(self.c * self.grams + rho * self.iq)     # (P, d, d)

    def _matvec(self, a: torch.Tensor) -> torch.Tensor:
        return self.c * self.ops.At(self.ops.A(a)) + self.rho * a

    def _prec(self, r: torch.Tensor) -> torch.Tensor:
        return torch.einsum("pij,pj->pi", self.pre, r)

    def solve_a(self, rhs: torch.Tensor) -> torch.Tensor:
        x = torch.zeros_like(rhs) if self.x is None else self.x
        r = rhs - self._matvec(x)
        target = self.tol * float(rhs.norm())
        if float(r.norm()) > target:
            zr = self._prec(r)
            pdir = zr
            rz = float((r * zr).sum())
            for _ in range(self.max_iter):
                ap = self._matvec(pdir)
                step = rz / float((pdir * ap).sum())
                x = x + step * pdir
                r = r - step * ap
                self.total_iterations += 1
                if float(r.norm()) <= target:
                    break
                zr = self._prec(r)
                rz_new = float((r * zr).sum())
                pdir = zr + (rz_new / rz) * pdir
                rz = rz_new
        self.x = x
        return x


def make_linear_solver(ops: PatternOperators, cfg, split: bool):
    pd = ops.n_patterns * ops.dim
    kind = cfg.linear_solver
    if kind == "auto":
        kind = "direct" if pd <= cfg.direct_max_dim else "cg"
    if kind == "direct":
        return DirectSolver(ops, split)
    return CgSolver(ops, split, cfg.cg_max_iter, min(1e-3, 0.01 * cfg.tol))
