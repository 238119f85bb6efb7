"""A greedy cascade of shrinkage stages on a certified first stage (the network; the convex
training is `convexnn.cascade`).

    z_1 = J_1(y)                                           (a `ShrinkageNetwork`, certified FNE)
    z_t = z_{t-1} + sum_j C_j^T psi_tj(C_j z_{t-1}) + a_t (y - z_{t-1}),      t = 2..T   (stage)

`psi_tj` are piecewise-linear on a ramp grid with slopes of either sign, so a stage is a
two-layer ReLU network (fixed filters: the DCT or the multiscale frame, `shrinkage_frame`; tied
layers) on the previous estimate with a skip from the noisy input `y`: the stage of cascaded
shrinkage fields (Schmidt and Roth, CVPR 2014, eq. 10) with fixed filters and without its
inverse `(lambda I + sum_j C_j^T C_j)^{-1}` (a scalar for a tight frame). Every stage's output
is linear in its parameters `(c_t, a_t)`, so given the
previous stages its training is an exact least-squares problem; the cascade is trained greedily,
stage by stage (as the greedy stacks of Sec. 4.3 of the core paper). Only stage 1 carries a
certificate: the cascade makes no firm-nonexpansiveness claim (`lipschitz_certificate` None).
Content-adaptive filter stages (`convexnn.model.adaptive`, one linear filter per structure
class of `z`) may follow the shrinkage stages; they are called the same way, `stage(z, y)`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .adaptive import AdaptiveFilterStage
from .denoiser import Denoiser
from .shrinkage import ShrinkageNetwork, shrinkage_residual

__all__ = ["CascadeStage", "ShrinkageCascade"]


class CascadeStage(nn.Module):
    """One stage `z + sum_j C_j^T psi_j(C_j z) + a (y - z)` (module docstring); float64 storage.

    filters `(J, 1, k, k)`, equally spaced knots `(M,)` of spacing `width`, slopes `(J, M)` of
    any sign, skip weight `a` (a float)."""

    def __init__(self, filters: torch.Tensor, knots: torch.Tensor, width: float,
                 slopes: torch.Tensor, skip: float) -> None:
        super().__init__()
        filters, knots, slopes = (torch.as_tensor(t, dtype=torch.float64).clone()
                                  for t in (filters, knots, slopes))    # own storage each
        if filters.ndim != 4 or filters.shape[1] != 1 or filters.shape[-1] % 2 == 0:
            raise ValueError(f"filters: expected (J, 1, k, k) with k odd, got "
                             f"{tuple(filters.shape)}")
        if slopes.shape != (filters.shape[0], knots.numel()):
            raise ValueError(f"slopes: expected (J, M) = ({filters.shape[0]}, {knots.numel()}), "
                             f"got {tuple(slopes.shape)}")
        if not (width > 0 and math.isfinite(width)) or not torch.isfinite(slopes).all() \
                or not math.isfinite(skip):
            raise ValueError("expected a positive bin width and finite slopes and skip weight")
        self.register_buffer("filters", filters)
        self.register_buffer("knots", knots.reshape(-1))
        self.register_buffer("slopes", slopes)
        self.width, self.skip = float(width), float(skip)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return z + shrinkage_residual(z, self.filters, self.knots, self.width,
                                      self.slopes) + self.skip * (y - z)


class ShrinkageCascade(Denoiser):
    """`J_1` followed by the stages (`CascadeStage` or `AdaptiveFilterStage`, module
    docstring): `model(y)` runs all of them, `model.depths(y)` returns the estimate after each
    depth 1..T."""

    def __init__(self, first: ShrinkageNetwork, stages: list[CascadeStage]) -> None:
        super().__init__()
        if not isinstance(first, ShrinkageNetwork):
            raise TypeError(f"first: expected a ShrinkageNetwork, got {type(first).__name__}")
        if not all(isinstance(s, (CascadeStage, AdaptiveFilterStage)) for s in stages):
            raise TypeError(f"stages: expected CascadeStage or AdaptiveFilterStage modules, got "
                            f"{[type(s).__name__ for s in stages]}")
        self.first = first
        self.stages = nn.ModuleList(stages)

    @property
    def depth(self) -> int:
        return 1 + len(self.stages)

    def depths(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The estimates after stage 1, 2, ..., T (each in `x`'s dtype and device)."""
        self.check_input(x, 1)
        y = self.compute_as(x, self.first.filters)
        z = self.first(y)
        out = [self.return_as(z, x)]
        for stage in self.stages:
            z = stage(z, y)
            out.append(self.return_as(z, x))
        return out

    def forward(self, x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
        return self.depths(x)[-1]
