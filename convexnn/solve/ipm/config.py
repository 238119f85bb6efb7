"""Options of `fit(..., solver="ipm")`: the interior-point solver and its pattern pricing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from convexnn.model.validation import check_choice, check_in_range, check_int, check_positive
from convexnn.solve.memory import available_memory

__all__ = ["IpmConfig"]


@dataclass
class IpmConfig:
    """Options of `fit(..., solver="ipm")` (exact: eq. 4 with the squared loss).

    Accuracy. `tol`: relative duality gap of each interior-point solve; `feas_tol`: its primal
    residual (unit-normalised rows) and dual residual (relative to the largest inf-norm of
    `q`, `P x` and `G^T z`, as OSQP). A breakdown of the Newton matrix after the gap and
    residuals are below `reduced_tol`, or a dual residual that stops improving (5 iterations
    without halving) once the gap is below `tol`, returns that iterate with status
    "optimal_reduced" and a warning. Not converging within `max_iter` / `time_limit` raises
    `ConvexSolverError` unless `allow_inaccurate=True`.

    Pattern pricing (column generation, `convexnn.solve.ipm.pricing`): with `pricing=True` (the
    default, `None`, chooses it when there are more than `pricing_above` patterns, when N P^2 > 5e9
    (where it was measured to pay), or when the Newton system of every pattern would not fit in
    memory) the solver works on a working set of patterns: it solves eq. 4 on the set, prices every
    candidate pattern against the residual (the gated bound `||X^T D_i lambda||`, then the exact
    cone-restricted value of App. C where the gated bound exceeds beta), adds at most
    `pricing_batch` violators per round and stops when no candidate's value exceeds `beta (1 +
    pricing_tol)`. The final lower bound and certified gap cover every candidate pattern
    (`solve_info_.details["certified_gap"]`). Coarse to fine: the problem is first solved on a
    seeded sample of 1 / `pricing_coarse` of the pixels (beta per pixel fixed; recursively while a
    level keeps `coarse_min_pixels`), whose support starts the working set of the next level
    (`pricing_coarse=1`: off); only the last level, on every pixel, is solved to the certified
    optimum. `checkpoint_path`: the working set is saved atomically after every round and a run
    resumes from it (`resume=True`); `warm_start`: a fitted model or `(v, w)` on the same
    generators whose largest groups (at most 2 `pricing_batch`) start the working set of the
    first level (e.g. from `solver="adam"`).

    Memory: `memory_limit` bytes (None: 80% of the memory available now, GPU memory on a
    GPU). A problem whose Newton system (or, for pricing, whose smallest useful working set)
    cannot fit is refused before anything large is allocated, with the largest size that fits.

    Distributed (`torchrun`, gloo on CPU, NCCL on GPU): with `distributed=True` (or None and a
    `torchrun` environment) the images each process passes to `fit` are its shard of the data;
    the Gram, `A^T y`, pricing and the row searches are sums or searches over pixels, reduced
    across processes, and every process runs the same interior-point iterations on the same
    reduced data, so all end with the single-process solution.

    Row working set: each solve uses `working_rows` cone rows per pattern (None: 16 d; 0: every
    row), those whose patch is nearest the pattern's generator hyperplane; the solution is then
    checked against every row and the violated rows are added (a working-set solution that
    satisfies every row solves eq. 4; its certificate carries over with zero multipliers on
    the dropped rows). `start`: "least_squares" (CVXOPT's) or "unit". `refine`: refinement
    steps of a Newton solve against the full matrix while its residual is above a tenth of
    the dual residual. `centrality_correctors`: Gondzio correctors per iteration (each one
    more solve with the same factorisation; 2 MNIST digits x 60 patterns: 56 iterations with
    none, 33 with 3). `block_elements`: largest temporary of the every-row mode. `verbose`:
    a line per interior-point iteration; `progress`: a line per pricing round (without
    pricing: a line per interior-point iteration, objective and relative gap).
    """

    tol: float = 1e-8
    feas_tol: float = 1e-8
    reduced_tol: float = 1e-6
    max_iter: int = 200
    step_fraction: float = 0.99
    refine: int = 2
    num_threads: int | None = None     # None: torch's current setting
    device: str | None = None
    time_limit: float | None = None
    allow_inaccurate: bool = False
    verbose: bool = False
    block_elements: int = 2 ** 24
    start: str = "least_squares"
    centrality_correctors: int = 3
    working_rows: int | None = None
    pricing: bool | None = None
    pricing_above: int = 256
    pricing_batch: int = 100
    pricing_tol: float = 1e-7
    pricing_coarse: int = 4
    coarse_min_pixels: int = 25_000
    max_rounds: int = 200
    memory_limit: float | None = None
    checkpoint_path: str | None = None
    resume: bool = True
    warm_start: Any = None
    progress: bool = False
    distributed: bool | None = None

    def __post_init__(self) -> None:
        check_in_range(self.tol, "tol", 0.0, 1.0)
        check_in_range(self.feas_tol, "feas_tol", 0.0, 1.0)
        check_in_range(self.reduced_tol, "reduced_tol", 0.0, 1.0)
        check_int(self.max_iter, "max_iter")
        check_in_range(self.step_fraction, "step_fraction", 0.0, 1.0, low_open=True,
                       high_open=True)
        check_int(self.refine, "refine", 0)
        check_int(self.block_elements, "block_elements")
        check_choice(self.start, "start", ("least_squares", "unit"))
        check_int(self.centrality_correctors, "centrality_correctors", 0)
        if self.working_rows is not None:
            check_int(self.working_rows, "working_rows", 0)
        if self.num_threads is not None:
            check_int(self.num_threads, "num_threads")
        if self.time_limit is not None:
            check_positive(self.time_limit, "time_limit")
        if self.pricing is not None and not isinstance(self.pricing, bool):
            raise TypeError(f"pricing: expected True, False or None (auto), got "
                            f"{self.pricing!r}")
        check_int(self.pricing_above, "pricing_above", 0)
        check_int(self.pricing_batch, "pricing_batch")
        check_in_range(self.pricing_tol, "pricing_tol", 0.0, 1.0)
        check_int(self.pricing_coarse, "pricing_coarse")
        check_int(self.coarse_min_pixels, "coarse_min_pixels")
        check_int(self.max_rounds, "max_rounds")
        if self.memory_limit is not None:
            check_positive(self.memory_limit, "memory_limit")
        if self.distributed is not None and not isinstance(self.distributed, bool):
            raise TypeError(f"distributed: expected True, False or None (auto), got "
                            f"{self.distributed!r}")

    def memory_bytes(self, device: torch.device) -> float:
        return float(self.memory_limit) if self.memory_limit else 0.8 * available_memory(device)

