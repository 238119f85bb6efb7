"""Firmly nonexpansive denoisers trained by convex optimisation, with a certificate.

`J = (I + Q) / 2` is firmly nonexpansive iff `Q` is nonexpansive (Pesquet et al. 2021, the
PnP convergence condition). Here Q is the two-layer primal rebuilt (eq. 5) from a dual fitted on
targets `2 y - x` (so that J maps x to y) under the convex constraint `Lip(Q) <= 1` of
`convexnn.model.lipschitz`; the guarantee holds by construction and is certified by
`lipschitz_certificate`.
"""

from __future__ import annotations

from typing import Any

import torch

from convexnn.dual import ConvexDualDenoiser
from convexnn.model.denoiser import Denoiser
from convexnn.model.validation import as_images, as_targets

__all__ = ["FirmlyNonexpansiveDenoiser", "fit_firmly_nonexpansive"]


class FirmlyNonexpansiveDenoiser(Denoiser):
    """`J(x) = (x + Q(x)) / 2` with the certified primal network Q; `denoiser(x, sigma=None)`."""

    def __init__(self, q_model: ConvexDualDenoiser) -> None:
        super().__init__()
        q_model._check_fitted()
        if q_model.residual:
            raise ValueError("Q must be a non-residual network (Lip(I + R) can exceed 1)")
        self.q_model = q_model
        self.q = q_model.to_primal()

    @property
    def lipschitz_certificate(self) -> float:
        """Certified upper bound of Lip(Q) = Lip(2 J - I); J is firmly nonexpansive when it is
        <= 1 (`firmly_nonexpansive`, read by the convergence checks of convexnn.solvers.pnp)."""
        return float(self.q_model.lipschitz_certificate_)

    def forward(self, x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
        return 0.5 * (x + self.q(x))   # Q computes in its weights' dtype, returns x's


def fit_firmly_nonexpansive(noisy, clean, n_patterns: int = 64, beta: float = 1e-3,
                            kernel_size: int = 3, seed: int | None = 0,
                            lipschitz_bound: float = 1.0, generators=None,
                            **fit_options: Any) -> FirmlyNonexpansiveDenoiser:
    """Fit Q on `(x, 2 y - x)` with `Lip(Q) <= lipschitz_bound` (<= 1 for firm
    nonexpansiveness of J) by the exact CVXPY dual, and return J = (I + Q) / 2."""
    x = as_images(noisy, "noisy", dtype=torch.float64)
    y = as_targets(clean, x)
    if x.shape[1] != 1:
        raise ValueError(f"expected one-channel images (J = (x + Q x) / 2), got {x.shape[1]}")
    q = ConvexDualDenoiser(kernel_size=kernel_size, n_patterns=n_patterns, beta=beta,
                           seed=seed, generators=generators, lipschitz_bound=lipschitz_bound)
    q.fit(x, 2.0 * y - x, solver="cvxpy", **fit_options)
    return FirmlyNonexpansiveDenoiser(q)
