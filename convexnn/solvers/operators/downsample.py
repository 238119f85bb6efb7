"""Downsampling (super-resolution) operators: average pooling or bicubic antialiasing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import LinearOperator, describe
from .blur import Blur

__all__ = ["Downsample", "DOWNSAMPLE_FACTORS", "DOWNSAMPLE_FILTERS", "bicubic_kernel"]

DOWNSAMPLE_FACTORS = (2, 3, 4)
DOWNSAMPLE_FILTERS = ("average", "bicubic")


def _cubic(t: Tensor, a: float = -0.5) -> Tensor:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB imresize, PIL, torch antialias)."""
    t = t.abs()
    near = ((a + 2) * t**3 - (a + 3) * t**2 + 1) * (t <= 1)
    far = (a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a) * ((t > 1) & (t < 2))
    return near + far


def bicubic_kernel(factor: int) -> Tensor:
    """The 2-D bicubic antialiasing kernel for downsampling by ``factor``, float64, sum 1.

    Output pixel u samples input position ``factor * u + (factor - 1) / 2`` (pixel centres
    aligned as in MATLAB ``imresize``); the taps are ``cubic(d / factor)`` at the input offsets
    ``d`` with ``|d| < 2 factor``: ``4 factor`` taps (half-integer offsets) for an even factor,
    ``4 factor - 1`` (integer offsets) for an odd one. Outer product of the 1-D taps.
    """
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"bicubic_kernel: expected a positive integer factor, got {factor!r}")
    if factor % 2 == 0:
        d = torch.arange(4 * factor, dtype=torch.float64) - (2 * factor - 0.5)
    else:
        d = torch.arange(4 * factor - 1, dtype=torch.float64) - (2 * factor - 1)
    w = _cubic(d / factor)
    w = w / w.sum()
    return torch.outer(w, w)


class Downsample(LinearOperator):
    """Downsampling by ``factor`` in {2, 3, 4}; H and W must be multiples of the factor.

    ``filter="average"``: ``y`` is the mean of each ``factor x factor`` block (average pooling,
    the 4x super-resolution operator of the energy-dissipation paper, Sec. 5.1); ``||A||^2 =
    1 / factor^2``.
    ``filter="bicubic"``: circular convolution with ``bicubic_kernel(factor)`` followed by taking
    every factor-th pixel from offset ``factor // 2`` (``y[u] = sum_d w(d) x[f u + (f-1)/2 + d]``);
    the adjoint zero-fills and applies the adjoint blur.
    """

    def __init__(self, factor: int, filter: str = "average",  # noqa: A002 - deepinv's name
                 in_shape: tuple[int, int, int] | None = None) -> None:
        if isinstance(factor, bool) or factor not in DOWNSAMPLE_FACTORS:
            raise ValueError(f"Downsample: factor: expected one of {list(DOWNSAMPLE_FACTORS)}, "
                             f"got {factor!r}")
        if not isinstance(filter, str) or filter not in DOWNSAMPLE_FILTERS:
            raise ValueError(f"Downsample: filter: expected one of {list(DOWNSAMPLE_FILTERS)}, "
                             f"got {filter!r}")
        super().__init__(in_shape, fixed_channels=False)
        self.factor = int(factor)
        self.filter = filter
        self.offset = self.factor // 2 if filter == "bicubic" else 0
        self.blur = Blur(bicubic_kernel(self.factor), "circular") if filter == "bicubic" else None
        if self.in_shape is not None:
            self._check_divisible(*self.in_shape[1:], "in_shape")

    def _check_divisible(self, h: int, w: int, where: str) -> None:
        f = self.factor
        if h % f or w % f:
            raise ValueError(f"Downsample {where}: expected height and width divisible by the "
                             f"factor {f}, got {h} x {w}")

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        x = self._check_image(x, "A: x")
        if x.shape[-2] % self.factor or x.shape[-1] % self.factor:
            self._check_divisible(*x.shape[-2:], f"A: x ({describe(x)})")
        f = self.factor
        if self.blur is None:
            return F.avg_pool2d(x, f)  # y = mean over each f x f block
        return self.blur.A(x)[..., self.offset::f, self.offset::f]  # y = S (k * x)

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        expected: tuple[int | None, ...] = (None, None, None, None)
        if self.in_shape is not None:
            _, h, w = self.in_shape
            expected = (None, None, h // self.factor, w // self.factor)
        y = self._check_measurement(y, expected, "A_adjoint: y")
        f = self.factor
        if self.blur is None:
            return y.repeat_interleave(f, -2).repeat_interleave(f, -1) / f**2  # A^T = U / f^2
        b, c, hy, wy = y.shape
        up = torch.zeros(b, c, hy * f, wy * f, dtype=y.dtype, device=y.device)
        up[..., self.offset::f, self.offset::f] = y  # S^T: zero-filled upsampling
        return self.blur.A_adjoint(up)
