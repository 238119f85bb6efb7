"""Convolution (blur) operator: circular boundary via FFT, or 'valid' via conv2d."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .base import LinearOperator, describe

__all__ = ["Blur", "BLUR_PADDINGS"]

BLUR_PADDINGS = ("circular", "valid")


def _check_kernel(kernel: Any) -> Tensor:
    if isinstance(kernel, np.ndarray):
        real = np.issubdtype(kernel.dtype, np.floating) or np.issubdtype(kernel.dtype, np.integer)
        if not real:
            raise TypeError(f"Blur: kernel: expected a real array, got {describe(kernel)}")
        kernel = torch.from_numpy(np.ascontiguousarray(kernel))
    if not isinstance(kernel, Tensor) or kernel.is_complex():
        raise TypeError(f"Blur: kernel: expected a real 2-D torch.Tensor or numpy array, got "
                        f"{describe(kernel)}")
    if kernel.ndim != 2 or kernel.numel() == 0:
        raise ValueError(f"Blur: kernel: expected a non-empty 2-D array (kh, kw), got "
                         f"{describe(kernel)}")
    k = kernel.detach().to(torch.float64)
    if not bool(torch.isfinite(k).all()):
        raise ValueError(f"Blur: kernel: expected finite values, got "
                         f"{int((~torch.isfinite(k)).sum())} NaN/Inf entries")
    total = float(k.sum())
    if total == 0.0 or not math.isfinite(total):
        raise ValueError(f"Blur: kernel: expected a non-zero finite sum, got sum {total!r}")
    return k


class Blur(LinearOperator):
    """``A x = k * x``, a true 2-D convolution applied to every channel alike.

    ``padding="circular"``: periodic boundary, ``y`` has the shape of ``x``, computed with the
    FFT (any kernel size; taps beyond the image wrap around). The kernel's centre is tap
    ``((kh - 1) // 2, (kw - 1) // 2)``.
    ``padding="valid"``: only the fully overlapping positions, ``y`` is
    ``(B, C, H - kh + 1, W - kw + 1)``; adjoint via ``conv_transpose2d``. The valid output is the
    crop of the circular one starting at row ``kh // 2`` and column ``kw // 2``
    (``= k - 1 - centre``; equal to the centre for odd sizes).
    The kernel is used as given (not normalised); it must be finite with a non-zero sum.
    """

    def __init__(self, kernel: Any, padding: str = "circular",
                 in_shape: tuple[int, int, int] | None = None) -> None:
        if not isinstance(padding, str) or padding not in BLUR_PADDINGS:
            raise ValueError(f"Blur: padding: expected one of {list(BLUR_PADDINGS)}, got "
                             f"{padding!r}")
        super().__init__(in_shape, fixed_channels=False)
        self.padding = padding
        self.register_buffer("kernel", _check_kernel(kernel))
        kh, kw = self.kernel.shape
        self.center = ((kh - 1) // 2, (kw - 1) // 2)
        if padding == "valid" and self.in_shape is not None and (
                self.in_shape[1] < kh or self.in_shape[2] < kw):
            raise ValueError(f"Blur: in_shape {self.in_shape} is smaller than the kernel "
                             f"{(kh, kw)} ('valid' padding)")
        self._otf_cache: dict[tuple, Tensor] = {}

    def out_spatial(self, h: int, w: int) -> tuple[int, int]:
        """Measurement size for an ``h x w`` image."""
        if self.padding == "circular":
            return h, w
        kh, kw = self.kernel.shape
        return h - kh + 1, w - kw + 1

    def _otf(self, h: int, w: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """rfft2 of the kernel placed on the periodic h x w grid with its centre at (0, 0)."""
        key = (h, w, dtype, device)
        if key not in self._otf_cache:
            k = self.kernel.to(device=device, dtype=dtype)
            kh, kw = k.shape
            rows = (torch.arange(kh, device=device) - self.center[0]) % h
            cols = (torch.arange(kw, device=device) - self.center[1]) % w
            psf = torch.zeros(h, w, dtype=dtype, device=device)
            psf.index_put_((rows[:, None].expand(kh, kw), cols[None, :].expand(kh, kw)), k,
                           accumulate=True)
            self._otf_cache = {key: torch.fft.rfft2(psf)}  # keep only the latest size
        return self._otf_cache[key]

    def _flipped(self, x: Tensor) -> Tensor:
        return torch.flip(self.kernel, (0, 1)).to(dtype=x.dtype, device=x.device)[None, None]

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        x = self._check_image(x, "A: x")
        b, c, h, w = x.shape
        if self.padding == "circular":
            otf = self._otf(h, w, x.dtype, x.device)
            return torch.fft.irfft2(torch.fft.rfft2(x) * otf, s=(h, w))  # F^-1 (K . F x)
        kh, kw = self.kernel.shape
        if h < kh or w < kw:
            raise ValueError(f"Blur A: x: expected images at least as large as the kernel "
                             f"{(kh, kw)} ('valid' padding), got {describe(x)}")
        y = F.conv2d(x.reshape(b * c, 1, h, w), self._flipped(x))  # conv2d correlates: flip k
        return y.reshape(b, c, *y.shape[-2:])

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        if self.padding == "circular":
            y = self._check_image(y, "A_adjoint: y")
            h, w = y.shape[-2:]
            otf = self._otf(h, w, y.dtype, y.device)
            return torch.fft.irfft2(torch.fft.rfft2(y) * otf.conj(), s=(h, w))  # F^-1 (K* . F y)
        expected: tuple[int | None, ...] = (None, None, None, None)
        if self.in_shape is not None:
            expected = (None, None, *self.out_spatial(*self.in_shape[1:]))
        y = self._check_measurement(y, expected, "A_adjoint: y")
        b, c, hy, wy = y.shape
        x = F.conv_transpose2d(y.reshape(b * c, 1, hy, wy), self._flipped(y))
        return x.reshape(b, c, *x.shape[-2:])
