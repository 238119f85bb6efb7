"""The exact data prox / propagation ``(A^T A + mu I)^{-1} (A^T y + mu x_A)`` of the least-
squares data term, in closed form where the operator allows it (FFT for a circular blur,
Woodbury for downsampling, identity) and by conjugate gradients (`fidelity.data_prox`) otherwise.
Shared by PODM (eq. 3) and the PnP splittings (ADMM, HQS, DRS)."""

from __future__ import annotations

import torch
from torch import Tensor

from .fidelity import data_prox
from .operators import Blur, Downsample, Identity, LinearOperator

__all__ = ["Propagation"]


class Propagation:
    """``F(x_A) = argmin_x 1/2 ||A x - y||^2 + mu/2 ||x - x_A||^2
    = (A^T A + mu I)^{-1} (A^T y + mu x_A)``, built once per solve: PODM's propagation (Liu et
    al. 2018, eq. 3, H = mu I / 2) and the data prox ``prox_{gamma f} = F`` with mu = 1 / gamma
    of the PnP splittings (ADMM, HQS, DRS).

    ``method`` (chosen from the operator): "fft" for a circular `Blur` (``A^T A`` is diagonal
    in the Fourier basis); "woodbury" for `Downsample`, ``(A^T A + mu I)^{-1} = (I - A^T (mu I
    + A A^T)^{-1} A) / mu`` with ``A A^T = I / f^2`` (average pooling) or, for the bicubic
    filter, diagonal on the low-res Fourier grid with symbol ``mean_aliases |K|^2`` (the
    sub-sampled FFT identity); "identity" for `Identity`; "cg" otherwise (`data_prox`).
    """

    def __init__(self, physics: LinearOperator, y: Tensor, mu: float, method: str = "auto",
                 cg_iter: int = 100, cg_tol: float = 1e-10) -> None:
        self.physics, self.y, self.mu = physics, y, float(mu)
        self.cg_iter, self.cg_tol = cg_iter, cg_tol
        self.aty = physics.A_adjoint(y)
        self.method = "cg" if method == "cg" else self._pick(physics)
        h, w = self.aty.shape[-2:]
        if self.method == "fft":
            otf = torch.fft.rfft2(self._impulse_response(physics, h, w))
            self._num_y = otf.conj() * torch.fft.rfft2(y)              # K^* Y
            self._den = otf.abs() ** 2 + self.mu                         # |K|^2 + mu
        elif self.method == "woodbury" and physics.filter == "bicubic":
            f = physics.factor
            k2 = torch.fft.fft2(self._impulse_response(physics.blur, h, w)).abs() ** 2
            sym = k2.reshape(*k2.shape[:-2], f, h // f, f, w // f).mean(dim=(-4, -2))
            self._low_den = sym + self.mu                                # mu + symbol(A A^T)

    @staticmethod
    def _pick(physics) -> str:
        if isinstance(physics, Blur) and physics.padding == "circular":
            return "fft"
        if isinstance(physics, Downsample):
            return "woodbury"
        if isinstance(physics, Identity):
            return "identity"
        return "cg"

    def _impulse_response(self, blur, h: int, w: int) -> Tensor:
        delta = torch.zeros(1, 1, h, w, dtype=self.aty.dtype, device=self.aty.device)
        delta[..., 0, 0] = 1.0
        return blur.A(delta)[0, 0]                     # the PSF wrapped around (0, 0)

    def __call__(self, x_a: Tensor) -> Tensor:
        mu, A = self.mu, self.physics
        if self.method == "fft":
            num = self._num_y + mu * torch.fft.rfft2(x_a)
            return torch.fft.irfft2(num / self._den, s=x_a.shape[-2:])
        if self.method == "identity":
            return (self.y + mu * x_a) / (1.0 + mu)
        if self.method == "cg":   # (I + A^T A / mu) x = x_A + A^T y / mu
            return data_prox(A, x_a, self.y, 1.0 / mu, self.cg_iter, self.cg_tol, aty=self.aty)
        b = self.aty + mu * x_a
        ab = A.A(b)
        if A.filter == "average":                      # A A^T = I / f^2
            z = ab / (mu + 1.0 / A.factor ** 2)
        else:                                          # (mu I + A A^T)^{-1} on the low grid
            z = torch.fft.ifft2(torch.fft.fft2(ab) / self._low_den).real
        return (b - A.A_adjoint(z)) / mu               # Woodbury
