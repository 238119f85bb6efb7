"""Equivariant denoisers over the dihedral group D4 (Terris, Moreau, Pustelnik, Tachella 2023).

`J_G(x) = 1/|G| sum_g T_g^{-1} J(T_g x)` (eq. (1) of the equivariant-PnP slides) with the 8
rotations by multiples of 90 degrees and their compositions with a flip. Mode "all" averages
all 8 (exactly G-equivariant); mode "random" applies one random `T_g^{-1} J(T_g .)` per call,
the stochastic equivariant PnP iteration `x_{k+1} = T_{g_k}^{-1} J(T_{g_k}(x_k - gamma grad))`.
For a linear J whose principal component is not equivariant the average has a strictly
smaller Lipschitz constant (Proposition in the paper); `lipschitz_reduction` measures it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .denoisers import Denoiser, call_denoiser
from .lipschitz import jacobian_spectral_norm

__all__ = ["EquivariantDenoiser", "D4", "d4_transform", "d4_inverse", "LipschitzReduction",
           "lipschitz_reduction"]

D4: tuple[tuple[int, bool], ...] = tuple((k, f) for f in (False, True) for k in range(4))
"""The 8 elements of D4 as (quarter turns k, flip): `T(x) = rot90(flip(x) if flip, k)`."""

_MODES = ("all", "random")


def d4_transform(x: torch.Tensor, g: int) -> torch.Tensor:
    """`T_g x` on the last two dims: optional left-right flip, then k quarter turns."""
    k, flip = D4[g]
    if flip:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


def d4_inverse(x: torch.Tensor, g: int) -> torch.Tensor:
    """`T_g^{-1} x` (T_g is orthogonal: the inverse is its transpose)."""
    k, flip = D4[g]
    if k:
        x = torch.rot90(x, -k, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if flip else x


class EquivariantDenoiser(Denoiser):
    """D4-averaged denoiser: `mode="all"` (8 evaluations per call, exactly equivariant) or
    `mode="random"` (one random group element per call, seeded by `seed`)."""

    def __init__(self, denoiser, mode: str = "all", seed: int | None = 0) -> None:
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")
        self.denoiser = denoiser
        self.mode = mode
        self.seed = seed
        self._gen = torch.Generator()
        if seed is None:
            self._gen.seed()
        else:
            self._gen.manual_seed(int(seed))
        self.last_group_element: int | None = None

    def reset(self, seed: int | None = None) -> None:
        """Restart the random draws (from `seed`, default the constructor's)."""
        s = self.seed if seed is None else seed
        if s is None:
            self._gen.seed()
        else:
            self._gen.manual_seed(int(s))

    @property
    def lipschitz_certificate(self) -> float | None:
        """The inner denoiser's: `2 J_G - I` averages isometric conjugates of `2 J - I`."""
        return getattr(self.denoiser, "lipschitz_certificate", None)

    def _one(self, x: torch.Tensor, g: int, sigma) -> torch.Tensor:
        return d4_inverse(call_denoiser(self.denoiser, d4_transform(x, g), sigma), g)

    def forward(self, x: torch.Tensor, sigma=None) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"EquivariantDenoiser: expected (B, C, H, W), got {tuple(x.shape)}")
        if self.mode == "random":
            g = int(torch.randint(0, len(D4), (1,), generator=self._gen))
            self.last_group_element = g
            return self._one(x, g, sigma)
        out = self._one(x, 0, sigma)
        for g in range(1, len(D4)):          # eq. (1): 1/|G| sum_g T_g^{-1} J(T_g x)
            out = out + self._one(x, g, sigma)
        return out / len(D4)


@dataclass
class LipschitzReduction:
    """Local Jacobian spectral norms of J and Q = 2J - I before and after D4 averaging."""

    j_before: float
    j_after: float
    q_before: float
    q_after: float

    def to_dict(self) -> dict[str, float]:
        return {"j_before": self.j_before, "j_after": self.j_after,
                "q_before": self.q_before, "q_after": self.q_after}


def lipschitz_reduction(denoiser, x: torch.Tensor, n_iter: int = 50, tol: float = 1e-6,
                        seed: int | None = 0, sigma=None) -> LipschitzReduction:
    """Power-iteration estimates at `x` of `||grad J||`, `||grad Q||` for the denoiser and for
    its `EquivariantDenoiser(mode="all")` average (max over the batch)."""
    eq = EquivariantDenoiser(denoiser, mode="all")
    vals = {}
    for name, d in (("before", denoiser), ("after", eq)):
        for mode in ("J", "Q"):
            est = jacobian_spectral_norm(d, x, n_iter=n_iter, tol=tol, seed=seed, mode=mode,
                                         sigma=sigma)
            vals[f"{mode.lower()}_{name}"] = est.value
    return LipschitzReduction(**vals)
