"""Energy dissipation in the call shape of every reconstruction solver of `convexnn.solvers`:
`energy_dissipation_solve(y, physics, direction, config) -> (x, History)`."""

from __future__ import annotations

import torch
from torch import Tensor

from ..energies import DataFidelity, Energy, SumEnergy
from ..history import History
from .descent import DescentConfig, Direction, energy_dissipating_descent

__all__ = ["energy_dissipation_solve"]


def energy_dissipation_solve(y: Tensor, physics, direction: Direction | None = None,
                             config: DescentConfig | None = None, x0: Tensor | None = None,
                             regulariser: Energy | None = None, weight: float = 1.0
                             ) -> tuple[Tensor, History]:
    """Algorithm 1 on `E(u) = 1/2 ||A u - y||^2 (+ weight R(u))` (Sec. 5.1) from `x0`
    (default zeros of the image shape `A^T y`); `direction` is the prior (a
    `DirectionNetwork`, a callable `(u, g, energy) -> d`, or None for gradient descent)."""
    energy: Energy = DataFidelity(physics, y)
    if regulariser is not None:
        energy = SumEnergy([energy, regulariser], [1.0, weight])
    if x0 is None:
        with torch.no_grad():
            x0 = torch.zeros_like(physics.A_adjoint(y))
    return energy_dissipating_descent(energy, x0, direction, config)
