"""The base class of every denoiser in convexnn (the deepinv `Denoiser` convention).

A denoiser is called `den(x, sigma=None)` on a batch `x` of shape `(B, C, H, W)` and returns a
tensor of the same shape. The policy every subclass keeps:

- input: a non-empty, finite, floating-point 4-d tensor, on any device, in any float dtype;
- output: the input's shape, dtype and device (a model stored in float64 on the CPU denoises a
  float32 CUDA batch and hands back float32 on CUDA); differentiable in `x`;
- `sigma`: the noise level on the image's scale, or None; a model trained for one level ignores
  it;
- declared guarantees, read by the convergence checks of the iterative solvers
  (`convexnn.solvers`): `lipschitz_certificate` is a proven upper bound of `Lip(2 J - I)`, the
  reflected denoiser (None when nothing is proven), and `firmly_nonexpansive` is True only when
  it is proven, by construction or because that bound is <= 1 (`J` is firmly nonexpansive iff
  `2 J - I` is nonexpansive). Nothing here is estimated: estimates (power iteration on the
  Jacobian) live in `convexnn.solvers.lipschitz`.

Plain callables `f(x)` or `f(x, sigma)` are still accepted by the solvers
(`convexnn.solvers.denoisers.call_denoiser`); subclassing `Denoiser` declares the call
convention, so no signature is inspected.
"""

from __future__ import annotations

import torch
from torch import nn

from .validation import check_finite_input

__all__ = ["Denoiser"]


class Denoiser(nn.Module):
    """Base class: `forward(x, sigma=None)` on `(B, C, H, W)`; see the module docstring."""

    @property
    def lipschitz_certificate(self) -> float | None:
        """A proven upper bound of `Lip(2 J - I)`, or None (nothing proven)."""
        return None

    @property
    def firmly_nonexpansive(self) -> bool:
        """Proven `||J x - J y||^2 <= <J x - J y, x - y>`: the certificate is <= 1."""
        c = self.lipschitz_certificate
        return c is not None and c <= 1.0

    def forward(self, x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define forward(x, sigma=None)")

    def check_input(self, x: torch.Tensor, channels: int | None = None) -> None:
        """Raise a clear error unless `x` is a non-empty finite float `(B, channels, H, W)`."""
        want = f"(B, {channels if channels is not None else 'C'}, H, W)"
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.numel() == 0 \
                or (channels is not None and x.shape[1] != channels):
            got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__}: expected a non-empty input {want}, got "
                             f"{got}")
        if not x.is_floating_point():
            raise TypeError(f"{type(self).__name__}: expected a floating-point input {want}, got "
                            f"dtype {x.dtype}")
        check_finite_input(x)

    @staticmethod
    def compute_as(x: torch.Tensor, like: torch.Tensor | None) -> torch.Tensor:
        """`x` moved to the dtype and device of `like` (a weight), where the model computes."""
        if like is None or (x.dtype == like.dtype and x.device == like.device):
            return x
        return x.to(dtype=like.dtype, device=like.device)

    @staticmethod
    def return_as(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """`out` in the input's dtype and device (the policy of the module docstring)."""
        if out.dtype == x.dtype and out.device == x.device:
            return out
        return out.to(dtype=x.dtype, device=x.device)
