"""What `solve_adam` settles before its loop: the hinge weight and learning rate (the "auto"
rules of `convexnn.solve.adam.solver`'s module docstring), the starting filters and the
minibatch rows."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from convexnn.model.problem import DualProblem
from convexnn.solve.base import warm_start_point

__all__ = ["Batches", "check_eval_set", "check_representable", "initial_filters",
           "learning_rate", "make_batches", "penalty_weight"]


@dataclass
class Batches:
    """What the optimiser steps draw from: whole images, or pixels of any images."""

    patches: torch.Tensor    # (n, H W, C k^2), or (n H W, C k^2) if by_pixel
    targets: torch.Tensor    # (n, H W), or (n H W,) if by_pixel
    by_pixel: bool
    item_pixels: int         # pixels per item: H W, or 1 if by_pixel
    n_items: int
    n_total: float           # training pixels N


def check_eval_set(problem: DualProblem) -> None:
    """Refuse an eval set whose images differ in shape from the training images."""
    x = problem.noisy
    if problem.eval_noisy is not None and problem.eval_noisy.shape[1:] != x.shape[1:]:
        raise ValueError(f"eval set: expected images of shape (n, {x.shape[1]}, {x.shape[2]}, "
                         f"{x.shape[3]}) like the training set, got "
                         f"{tuple(problem.eval_noisy.shape)}")


def penalty_weight(rho: float | str, rho_scale: float, target: torch.Tensor) -> float:
    """The hinge weight: `rho`, or `rho_scale * max|y|` for "auto"."""
    if isinstance(rho, str):
        if rho != "auto":
            raise ValueError(f"rho: expected a positive number or 'auto', got {rho!r}")
        value = float(rho_scale) * float(target.abs().max())
        return value if value > 0 else 1.0
    value = float(rho)
    if not value > 0:
        raise ValueError(f"rho: expected a positive number or 'auto', got {rho!r}")
    return value


def learning_rate(lr: float | str, lr_scale: float, problem: DualProblem,
                  patches: torch.Tensor) -> float:
    """Adam's learning rate: `lr`, or `lr_scale * max|y| / (P * mean_n ||Yp_n||_1)` for
    "auto"."""
    if not isinstance(lr, str):
        return float(lr)
    if lr != "auto":
        raise ValueError(f"lr: expected a positive number or 'auto', got {lr!r}")
    l1 = float(patches.abs().sum(-1).mean())
    value = float(lr_scale) * float(problem.target.abs().max()) / (problem.n_patterns
                                                                   * max(l1, 1e-12))
    if not value > 0:   # all-zero targets: nothing to fit, any step is safe
        value = 1e-3 / problem.n_patterns
    return value


def check_representable(lr: float, rho: float, dtype: torch.dtype,
                        target: torch.Tensor) -> None:
    """Refuse step sizes that overflow the training precision."""
    if not (math.isfinite(lr) and lr < torch.finfo(dtype).max and math.isfinite(rho)
            and rho < torch.finfo(dtype).max):
        raise ValueError(f"lr and rho: expected values that fit in {dtype}, got lr = {lr:g}, "
                         f"rho = {rho:g}: rescale the data (max|y| = "
                         f"{float(target.abs().max()):g}) or use dtype='float64'")


def initial_filters(problem: DualProblem, init_scale: float, seed: int, warm_start: Any,
                    device: torch.device, dtype: torch.dtype
                    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor] | None]:
    """`(v0, w0, warm)`: the seeded Gaussian start, or the warm start (then also returned as
    `warm`, float64 on the CPU, for the checkpoint fingerprint)."""
    gen = torch.Generator().manual_seed(int(seed))
    v0 = (init_scale * torch.randn(problem.generators.shape, generator=gen,
                                   dtype=torch.float64)).to(device, dtype)
    w0 = (init_scale * torch.randn(problem.generators.shape, generator=gen,
                                   dtype=torch.float64)).to(device, dtype)
    warm = None
    if warm_start is not None:
        warm = [t.detach().to(torch.float64).cpu()
                for t in warm_start_point(warm_start, problem)]
        if not all(bool(torch.isfinite(t).all()) for t in warm):
            raise ValueError("warm_start: expected finite filters, got NaN/Inf")
        v0, w0 = (t.to(device, dtype) for t in warm)
    return v0, w0, warm


def make_batches(batch_pixels: int | None, x: torch.Tensor, patches: torch.Tensor,
                 targets: torch.Tensor) -> Batches:
    """Whole images per step, or (`batch_pixels` set) rows of `Yp` from any images."""
    n = x.shape[0]
    n_total = float(n * x.shape[2] * x.shape[3])
    hw = x.shape[2] * x.shape[3]
    by_pixel = batch_pixels is not None
    if by_pixel and batch_pixels > n * hw:
        raise ValueError(f"batch_pixels={batch_pixels} is larger than the {n * hw} "
                         f"training pixels; use batch_pixels <= {n * hw}")
    return Batches(patches=patches.reshape(n * hw, -1) if by_pixel else patches,
                   targets=targets.reshape(n * hw) if by_pixel else targets,
                   by_pixel=by_pixel, item_pixels=1 if by_pixel else hw,
                   n_items=n * hw if by_pixel else n, n_total=n_total)
