"""Cartesian MRI: masked orthonormal (centred) 2-D FFT, single coil or with coil maps.

Complex images are two real channels (real, imaginary), as in deepinv:
``x`` is ``(B, 2, H, W)``. Measurements are zero-filled k-space on the full grid:
single coil ``y`` is ``(B, 2, H, W)``; with ``N`` coil maps ``y`` is ``(B, 2, N, H, W)``
(deepinv's ``MultiCoilMRI`` layout: real/imaginary first, then the coil axis).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .base import LinearOperator, check_binary_mask, describe

__all__ = ["MRI", "fft2c", "ifft2c", "calibration_size", "estimate_coil_maps"]


def fft2c(z: Tensor) -> Tensor:
    """Centred orthonormal 2-D FFT over the last two axes (DC at ``(H // 2, W // 2)``)."""
    dims = (-2, -1)
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(z, dim=dims), norm="ortho"),
                              dim=dims)


def ifft2c(k: Tensor) -> Tensor:
    """Inverse (= adjoint) of ``fft2c``."""
    dims = (-2, -1)
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(k, dim=dims), norm="ortho"),
                              dim=dims)


def _check_coil_maps(coil_maps: Any, hw: tuple[int, int]) -> Tensor:
    if isinstance(coil_maps, np.ndarray):
        coil_maps = torch.from_numpy(np.ascontiguousarray(coil_maps))
    if not isinstance(coil_maps, Tensor):
        raise TypeError(f"MRI: coil_maps: expected a complex torch.Tensor or numpy array "
                        f"(N, H, W), got {describe(coil_maps)}")
    if not coil_maps.is_complex():
        raise TypeError(f"MRI: coil_maps: expected a complex dtype (N, H, W), got "
                        f"{describe(coil_maps)}")
    if coil_maps.ndim != 3 or tuple(coil_maps.shape[-2:]) != hw or coil_maps.shape[0] < 1:
        raise ValueError(f"MRI: coil_maps: expected shape (N, {hw[0]}, {hw[1]}) matching the "
                         f"mask, got {describe(coil_maps)}")
    s = coil_maps.detach().to(torch.complex128)
    if not bool(torch.isfinite(torch.view_as_real(s)).all()):
        raise ValueError("MRI: coil_maps: expected finite values, got NaN/Inf entries")
    return s


class MRI(LinearOperator):
    """``y = M F x`` (single coil) or ``y_c = M F (S_c x)`` for coils ``c = 1..N``.

    ``mask``: binary ``(H, W)`` in centred k-space (see ``cartesian_mask``,
    ``poisson_disc_mask``). ``coil_maps``: None or complex ``(N, H, W)``. ``F`` is the centred
    orthonormal FFT, so with one coil and no maps ``||A||^2 = 1`` for any non-empty mask.
    Adjoint: ``x = sum_c conj(S_c) F^H (M y_c)``.
    """

    def __init__(self, mask: Any, coil_maps: Any = None) -> None:
        m = check_binary_mask(mask, "MRI: mask", (2,))
        h, w = m.shape
        super().__init__((2, h, w), fixed_channels=True)
        self.register_buffer("mask", m)
        self.multicoil = coil_maps is not None
        if self.multicoil:
            self.register_buffer("coil_maps", _check_coil_maps(coil_maps, (h, w)))
        else:
            self.coil_maps = None

    @property
    def n_coils(self) -> int:
        return int(self.coil_maps.shape[0]) if self.multicoil else 1

    def out_shape(self, batch: int) -> tuple[int, ...]:
        """Shape of ``A x`` for a batch of ``batch`` images."""
        _, h, w = self.in_shape  # type: ignore[misc]
        return (batch, 2, self.n_coils, h, w) if self.multicoil else (batch, 2, h, w)

    def _complex(self, dtype: torch.dtype) -> torch.dtype:
        return torch.complex128 if dtype == torch.float64 else torch.complex64

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        x = self._check_image(x, "A: x")
        z = torch.complex(x[:, 0], x[:, 1])  # (B, H, W)
        m = self.mask.to(dtype=x.dtype, device=x.device)
        if self.multicoil:
            s = self.coil_maps.to(dtype=self._complex(x.dtype), device=x.device)
            z = s[None] * z[:, None]  # (B, N, H, W): S_c x
        k = fft2c(z) * m  # y = M F (S x)
        return torch.stack((k.real, k.imag), dim=1)

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        expected = self.out_shape(0)
        y = self._check_measurement(y, (None, *expected[1:]), "A_adjoint: y")
        m = self.mask.to(dtype=y.dtype, device=y.device)
        z = ifft2c(torch.complex(y[:, 0], y[:, 1]) * m)  # F^H M y
        if self.multicoil:
            s = self.coil_maps.to(dtype=self._complex(y.dtype), device=y.device)
            z = (s.conj()[None] * z).sum(dim=1)  # sum_c conj(S_c) F^H M y_c
        return torch.stack((z.real, z.imag), dim=1)


def calibration_size(mask: Any) -> int:
    """Side of the largest fully sampled centred square of a ``(H, W)`` k-space mask (even)."""
    m = check_binary_mask(mask, "calibration_size: mask", (2,)).bool()
    h, w = m.shape
    r = 0
    while r < min(h, w) // 2 and bool(m[h // 2 - r - 1:h // 2 + r + 1,
                                        w // 2 - r - 1:w // 2 + r + 1].all()):
        r += 1
    return 2 * r


def estimate_coil_maps(kspace: Any, calib: int | None = None, floor: float = 1e-3) -> Tensor:
    """Coil sensitivities from the calibration region: low-resolution coil images over their
    root-sum-of-squares (Walsh-style ratio maps, not ESPIRiT).

    ``kspace``: complex ``(N, H, W)`` centred k-space (zeros where not sampled). ``calib``: side
    of the centred square used (default: the largest fully sampled one); it is Hann-windowed
    before the inverse FFT. ``S_c = c_c / max(rss, floor * max rss)``, so ``sum_c |S_c|^2 = 1``
    wherever the low-resolution signal is above the floor. Returns complex128 ``(N, H, W)``.
    """
    if isinstance(kspace, np.ndarray):
        kspace = torch.from_numpy(np.ascontiguousarray(kspace))
    if not isinstance(kspace, Tensor) or not kspace.is_complex() or kspace.ndim != 3:
        raise ValueError(f"estimate_coil_maps: kspace: expected complex (N, H, W), got "
                         f"{describe(kspace)}")
    k = kspace.to(torch.complex128)
    if not bool(torch.isfinite(torch.view_as_real(k)).all()):
        raise ValueError("estimate_coil_maps: kspace: expected finite values, got NaN/Inf")
    peak = float(k.abs().max()) if k.numel() else 0.0
    if peak > 0:
        k = k / peak                                   # the maps do not depend on the scale
    n, h, w = k.shape
    if n < 1 or h < 2 or w < 2:
        raise ValueError(f"estimate_coil_maps: kspace: expected (N >= 1, H >= 2, W >= 2), got "
                         f"{tuple(k.shape)}")
    if calib is None:
        calib = calibration_size((k.abs().sum(0) > 0).to(torch.float64))
        if calib < 2:
            raise ValueError("estimate_coil_maps: kspace: expected a fully sampled centred "
                             "calibration square (at least 2 x 2), found none; pass calib=")
    if isinstance(calib, bool) or not isinstance(calib, int) or not 2 <= calib <= min(h, w):
        raise ValueError(f"estimate_coil_maps: calib: expected an integer side in [2, "
                         f"{min(h, w)}] of a sampled centred square, got {calib!r}")
    win = torch.outer(torch.hann_window(calib, periodic=False, dtype=torch.float64),
                      torch.hann_window(calib, periodic=False, dtype=torch.float64))
    h0, w0 = h // 2 - calib // 2, w // 2 - calib // 2
    low = torch.zeros_like(k)
    low[:, h0:h0 + calib, w0:w0 + calib] = k[:, h0:h0 + calib, w0:w0 + calib] * win
    coil = ifft2c(low)
    rss = coil.abs().pow(2).sum(0).sqrt()
    if not float(rss.max()) > 0:
        raise ValueError(f"estimate_coil_maps: kspace: expected signal in the centred "
                         f"{calib} x {calib} calibration region, got only zeros there")
    return coil / torch.clamp(rss, min=floor * float(rss.max()))
