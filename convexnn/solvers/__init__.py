"""Iterative reconstruction solvers that consume convexnn denoisers (`convexnn.solvers`).

The public surface, importable from here (loaded on first use):

- physics (`operators`): `LinearOperator`, `Identity`, `Inpainting`, `Blur`, `Downsample`,
  `MRI`, `CT`, masks;
- the data term (`fidelity`): `L2` (value, gradient, prox, `||A||^2`), `power_iteration`;
- denoisers (`denoisers`, `dncnn`, `equivariant`): the `Denoiser` base class, wrappers, TV,
  DnCNN, D4 averaging; Jacobian estimates (`lipschitz`);
- solvers, one call shape `solver(y, physics, prior, config) -> (x, History)`:
  `pnp_pgd`, `pnp_admm`, `pnp_hqs`, `pnp_drs`, `red`, `podm` (the prior is a prox and a
  denoiser), `energy_dissipation_solve`, `deq_solve`; the shared record `History`;
- priors with a prox (`prox`): `L1`, `L0`, `Lp`, `Box`, `SparseBox`, `InBasis`,
  `HaarWavelet`.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "operators": ("LinearOperator", "Identity", "Inpainting", "Blur", "Downsample", "MRI", "CT",
                  "cartesian_mask", "poisson_disc_mask", "acceleration_of"),
    "fidelity": ("L2", "power_iteration", "operator_norm", "data_prox"),
    "denoisers": ("Denoiser", "Rescaled", "Averaged", "Relaxed", "Residual", "TVDenoiser",
                  "call_denoiser", "check_denoiser"),
    "dncnn": ("DnCNN", "DenoiserTrainConfig", "train_denoiser"),
    "equivariant": ("EquivariantDenoiser", "lipschitz_reduction"),
    "lipschitz": ("jacobian_spectral_norm", "firm_nonexpansiveness_penalty"),
    "history": ("History", "IterationRecord", "psnr", "ssim"),
    "pnp": ("PnPConfig", "ConvergenceError", "pnp_pgd", "pnp_admm", "pnp_hqs", "pnp_drs", "red",
            "PNP_SOLVERS"),
    "podm": ("PODMConfig", "podm", "fista", "proximal_gradient"),
    "prox": ("Prox", "L1", "L0", "Lp", "Box", "SparseBox", "InBasis", "HaarWavelet"),
    "energies": ("Energy", "DataFidelity", "CharbonnierTV", "SumEnergy", "data_plus_tv"),
    "energy_dissipation": ("DescentConfig", "energy_dissipating_descent",
                           "energy_dissipation_solve", "DirectionNetwork",
                           "ConvexDenoiserDirection", "HalfSpaceProjection",
                           "TwoSidedProjection"),
    "deq": ("DEQ", "DEQConfig", "deq_solve"),
    "deq_train": ("DEQTrainConfig", "train_deq", "deq_network_from_convex",
                  "spectral_normalize"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

__all__ = sorted(_MODULE_OF)


# the function `podm` shares its name with its module: bind it now, or `convexnn.solvers.podm`
# would be the module once anything imported `convexnn.solvers.podm.*`
from .podm import podm  # noqa: E402, F401


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'convexnn.solvers' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
