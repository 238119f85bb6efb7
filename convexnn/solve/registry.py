"""The solvers of eq. 4, each stating what it can do (in the manner of CVXPY's solver
objects), and the rule `fit()` follows when no solver is named.

    solver  exact  losses              Lipschitz bound  devices    use it for
    ipm     yes    squared             no               cpu, cuda  the default (pricing at large P)
    cvxpy   yes    squared, l1, huber  yes              cpu        l1 / Huber, Lipschitz bound
    admm    yes*   squared, l1, huber  no               cpu, cuda  l1 / Huber beyond CVXPY (slow)
    adam    no     squared, l1, huber  no               cpu, cuda  App. B; ends with a certified gap

(*) to its tolerance, with a duality-gap certificate; slow (a first-order method).

Rule of `fit(noisy, clean)` (`choose_solver`): a Lipschitz bound -> cvxpy (the only solver
that enforces it); squared loss -> ipm (pattern pricing once P > 256 or the Newton system of
every pattern would not fit); l1 / Huber -> cvxpy (its size guard refuses what will not fit and
names admm, the exact first-order alternative). admm is never chosen automatically: on the
2-digit demo problem it needs far more than its default 20,000 iterations (docs/admm.md). The
choice and its reason are recorded in `solve_info_.details`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

__all__ = ["Solver", "SOLVERS", "get_solver", "choose_solver"]


@dataclass(frozen=True)
class Solver:
    """One solver of eq. 4: where it lives and what it supports."""

    name: str
    module: str
    function: str
    config: str
    exact: bool
    losses: tuple[str, ...]
    lipschitz_bound: bool
    devices: tuple[str, ...]
    summary: str

    def load(self):
        """(solve function, config class), importing the module on first use."""
        module = importlib.import_module(self.module)
        return getattr(module, self.function), getattr(module, self.config)

    def check(self, loss: str, lipschitz_bound: float | None) -> None:
        """Refuse, before any work, a problem this solver cannot take."""
        if loss not in self.losses:
            others = [s.name for s in SOLVERS.values() if loss in s.losses and s.exact]
            raise ValueError(f"solver={self.name!r}: expected loss in {list(self.losses)}, got "
                             f"loss={loss!r}; exact solvers for it: {others}")
        if lipschitz_bound is not None and not self.lipschitz_bound:
            raise ValueError(f"lipschitz_bound is enforced by solver='cvxpy' only, got "
                             f"solver={self.name!r}")


SOLVERS: dict[str, Solver] = {s.name: s for s in (
    Solver("ipm", "convexnn.solve.ipm.solver", "solve_ipm", "IpmConfig", True, ("squared",), False,
           ("cpu", "cuda"), "interior point, exact; pattern pricing at large P"),
    Solver("cvxpy", "convexnn.solve.conic", "solve_cvxpy", "CvxpyConfig", True,
           ("squared", "l1", "huber"), True, ("cpu",), "CVXPY + Clarabel (SCS, ECOS, MOSEK)"),
    Solver("admm", "convexnn.solve.admm.solver", "solve_admm", "AdmmConfig", True,
           ("squared", "l1", "huber"), False, ("cpu", "cuda"),
           "first-order splitting, exact to its tolerance (slow)"),
    Solver("adam", "convexnn.solve.adam.solver", "solve_adam", "AdamConfig", False,
           ("squared", "l1", "huber"), False, ("cpu", "cuda"),
           "hinge-penalised Adam (App. B), approximate, ends with a certified gap"),
)}


def get_solver(name: str) -> Solver:
    if not isinstance(name, str) or name.lower() not in SOLVERS:
        raise ValueError(f"solver: expected one of {sorted(SOLVERS)} or None (automatic), got "
                         f"{name!r}")
    return SOLVERS[name.lower()]


def choose_solver(loss: str, lipschitz_bound: float | None, n_pixels: int, n_patterns: int,
                  patch_dim: int) -> tuple[str, str]:
    """(solver name, reason) for `fit()` without a solver (see the module doc)."""
    if lipschitz_bound is not None:
        return "cvxpy", "lipschitz_bound is enforced by cvxpy only"
    if loss == "squared":
        return "ipm", ("squared loss: exact interior point (pattern pricing keeps only the "
                       "patterns that matter at large P)")
    return "cvxpy", f"{loss} loss: exact conic solve (CVXPY + Clarabel); ipm is squared-only"
