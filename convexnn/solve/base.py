"""What every solver of eq. 4 shares: the internal scaling, warm starts, thread limits and
the rule for a solve that stopped short of its tolerance."""

from __future__ import annotations

import math
from typing import Any

import torch

from convexnn.model.problem import ConvexSolverError, DualProblem, DualSolution

__all__ = ["refuse_or_warn", "internal_scales", "warm_start_point", "run_with_threads"]


def refuse_or_warn(msg: str, status: str, allow_inaccurate: bool) -> None:
    """A solver stopped short of its tolerance: raise `ConvexSolverError`, or (opted in with
    `allow_inaccurate=True`) warn that the inaccurate iterate is returned."""
    if not allow_inaccurate:
        raise ConvexSolverError(msg + "; no solution is returned. Raise max_iter, loosen tol, "
                                "or pass allow_inaccurate=True to get the iterate.", status)
    import warnings

    warnings.warn(msg + "; returning the inaccurate iterate (allow_inaccurate=True)",
                  RuntimeWarning, stacklevel=4)


def internal_scales(problem: DualProblem, total=None) -> tuple[float, float]:
    """Internal scaling of the scalable solvers: patches to unit RMS norm, labels to unit RMS
    (undone exactly). `total(t)`, if given, sums a tensor over processes (torchrun shards)."""
    x, y = problem.noisy.double(), problem.target.double()
    stats = torch.stack([x.pow(2).sum(), torch.tensor(float(x.numel()), dtype=torch.float64),
                         y.pow(2).sum(), torch.tensor(float(y.numel()), dtype=torch.float64)])
    if total is not None:
        stats = total(stats)
    sx = float((stats[0] / stats[1]).sqrt()) * math.sqrt(problem.patch_dim)
    sy = float((stats[2] / stats[3]).sqrt())
    if not (sx > 0 and math.isfinite(sx)):
        sx = 1.0
    if not (sy > 0 and math.isfinite(sy)):
        sy = 1.0
    return sx, sy


def warm_start_point(ws: Any, problem: DualProblem,
                     accepts: str = "a fitted ConvexDualDenoiser or a pair (v, w)"
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """`(v, w)` of a warm start: a fitted model on the same generators, or a pair of tensors
    shaped like the generators."""
    if hasattr(ws, "v_") and hasattr(ws, "w_"):
        g = getattr(ws, "generators_", None)
        if g is None or g.shape != problem.generators.shape or not torch.allclose(
                g.to(problem.generators), problem.generators):
            raise ValueError("warm_start: the fitted model has other generators than this "
                             "problem; pass generators=model.generators_ to the new model")
        return ws.v_, ws.w_
    if isinstance(ws, (tuple, list)) and len(ws) == 2:
        v, w = (torch.as_tensor(t) for t in ws)
        shape = tuple(problem.generators.shape)
        if tuple(v.shape) != shape or tuple(w.shape) != shape:
            raise ValueError(f"warm_start: expected (v, w) of shape {shape}, got "
                             f"{tuple(v.shape)} and {tuple(w.shape)}")
        return v, w
    raise TypeError(f"warm_start: expected {accepts}, got {type(ws).__name__}")


def run_with_threads(threads: int, solve, problem: DualProblem, cfg) -> DualSolution:
    """`solve(problem, cfg)` with torch limited to `threads` (restored after); the count is
    recorded in `solve_info_.details["num_threads"]`."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        solution = solve(problem, cfg)
    finally:
        torch.set_num_threads(before)
    solution.info.details["num_threads"] = threads
    return solution
