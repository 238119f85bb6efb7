"""The data of one instance of the convex dual program (eq. 4) handed to a solver.

Every solver (`cvxpy`, and the scalable ones) receives a `DualProblem` and returns a
`DualSolution`; the estimator `ConvexDualDenoiser` owns validation and pattern selection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from convexnn.model.losses import Loss
from convexnn.model.patches import n_pixels, patch_dim

__all__ = ["DualProblem", "DualSolution", "SolveInfo", "ConvexSolverError"]


class ConvexSolverError(RuntimeError):
    """A solver did not return a trustworthy solution (status, residuals say why)."""

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class DualProblem:
    """Eq. 4 on training images: inputs `noisy (n, C, H, W)`, labels `target (n, 1, H, W)`.

    `target` is already `clean - noisy` for a residual network (Corollary 1.1), so every
    solver fits `sum_i D_i Yp (v_i - w_i) ~ target`.
    """

    noisy: torch.Tensor
    target: torch.Tensor
    generators: torch.Tensor
    beta: float
    loss: Loss
    eval_noisy: torch.Tensor | None = None   # optional held-out pair for per-epoch curves
    eval_target: torch.Tensor | None = None  # (already clean - noisy when residual)
    lipschitz_bound: float | None = None     # sum_i ||C_v_i|| + ||C_w_i|| <= this (cvxpy only)
    lipschitz_grid: int = 32                 # frequency grid of that constraint

    @property
    def kernel_size(self) -> int:
        return int(self.generators.shape[-1])

    @property
    def n_patterns(self) -> int:
        return int(self.generators.shape[0])

    @property
    def n_pixels(self) -> int:
        return n_pixels(self.noisy)

    @property
    def patch_dim(self) -> int:
        return patch_dim(self.noisy.shape[1], self.kernel_size)

    @property
    def n_constraints(self) -> int:
        """2 P N linear constraints of eq. 4."""
        return 2 * self.n_patterns * self.n_pixels


@dataclass
class SolveInfo:
    """How a solve went: solver, status, timings (seconds), iterations, solver specifics."""

    solver: str
    status: str
    setup_seconds: float = 0.0
    solve_seconds: float = 0.0
    total_seconds: float = 0.0
    iterations: int | None = None
    reported_objective: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class DualSolution:
    """Dual filters `v, w` of shape `(P, C, k, k)` for the problem's generators."""

    v: torch.Tensor
    w: torch.Tensor
    info: SolveInfo
    history: list[dict[str, float]] = field(default_factory=list)
