"""The linear operator protocol (forward model ``y = A x``) shared by every solver.

An operator maps a real image batch ``x`` of shape ``(B, C, H, W)`` to measurements ``A x`` and
back with the exact adjoint ``A_adjoint`` (``<A x, y> = <x, A^T y>``). Complex images (MRI) are
two real channels (real, imaginary), as in deepinv.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..fidelity import L2, power_iteration

__all__ = ["LinearOperator"]


def describe(x: Any) -> str:
    if isinstance(x, (Tensor, np.ndarray)):
        return f"{type(x).__name__} of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


class LinearOperator(torch.nn.Module):
    """Base class: subclasses implement ``A`` and ``A_adjoint``; the rest is derived.

    ``in_shape`` is the ``(C, H, W)`` of ``x`` when the operator knows it (from a mask, coil
    maps, an ``in_shape=`` argument), else None. Operators that act on every channel alike set
    ``fixed_channels = False``: then only ``(H, W)`` of ``in_shape`` is enforced and ``in_shape[0]``
    is just the channel count ``norm()`` uses (the norm does not depend on it).
    """

    in_shape: tuple[int, int, int] | None
    fixed_channels: bool

    def __init__(self, in_shape: tuple[int, int, int] | None = None,
                 fixed_channels: bool = True) -> None:
        super().__init__()
        self.in_shape = None if in_shape is None else self._check_shape(in_shape)
        self.fixed_channels = bool(fixed_channels)

    # ------------------------------------------------------------------ protocol
    def A(self, x: Tensor) -> Tensor:  # noqa: N802 - the usual name of the forward operator
        raise NotImplementedError

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.A(x)

    def gradient(self, x: Tensor, y: Tensor) -> Tensor:
        """``A^T (A x - y)``, the gradient of ``1/2 ||A x - y||^2`` in ``x``."""
        return L2.grad(x, y, self)

    def data_fidelity(self, x: Tensor, y: Tensor) -> Tensor:
        """``1/2 ||A x - y||^2`` per batch element, shape ``(B,)``."""
        ax = self.A(x)
        if ax.shape != y.shape:
            raise ValueError(f"{type(self).__name__}.data_fidelity: expected measurements y of "
                             f"shape {tuple(ax.shape)} (the shape of A x), got {describe(y)}")
        return 0.5 * (ax - y).flatten(1).pow(2).sum(dim=1)

    def norm(self, x: Tensor | None = None, n_iter: int = 200, tol: float = 1e-8,
             seed: int = 0) -> float:
        """Largest singular value SQUARED of ``A`` (``||A^T A||``) by power iteration.

        The start is seeded Gaussian noise of the shape of one image of ``x`` (dtype and device of
        ``x``), or of ``in_shape`` in float64 when ``x`` is None. Returns the Rayleigh quotient
        ``lam = ||A v||^2`` (``||v|| = 1``, a lower bound of the true value) after ``n_iter``
        steps or once the eigen-residual ``||A^T A v - lam v|| <= sqrt(tol) lam``; then ``lam``
        is within about ``tol lam / gap`` of the top eigenvalue (Kato-Temple), ``gap`` the
        relative distance to the next one. With a small gap, raise ``n_iter``.
        """
        if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1:
            raise ValueError(f"norm: expected n_iter a positive integer, got {n_iter!r}")
        if x is not None:
            x = self._check_image(x, "norm: x")
            shape, dtype, device = (1, *x.shape[1:]), x.dtype, x.device
        elif self.in_shape is not None:
            shape, dtype, device = (1, *self.in_shape), torch.float64, self._device()
        else:
            raise ValueError(f"{type(self).__name__}.norm: the image shape is unknown; pass an "
                             f"example image x of shape (B, C, H, W) or build the operator with "
                             f"in_shape=(C, H, W)")
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        v = torch.randn(shape, generator=gen, dtype=dtype).to(device)
        return power_iteration(lambda u: self.A_adjoint(self.A(u)), v, n_iter, tol)

    # ------------------------------------------------------------------ helpers
    def _device(self) -> torch.device:
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    @staticmethod
    def _check_shape(shape: Any) -> tuple[int, int, int]:
        try:
            dims = tuple(int(s) for s in shape)
            ok = len(dims) == 3 and all(d >= 1 for d in dims) and all(
                float(s) == d for s, d in zip(shape, dims, strict=True))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"in_shape: expected three positive integers (C, H, W), "
                             f"got {shape!r}")
        return dims  # type: ignore[return-value]

    def _check_image(self, x: Any, where: str) -> Tensor:
        """``x`` must be a real floating tensor ``(B, C, H, W)`` matching ``in_shape``."""
        name = type(self).__name__
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} {where}: expected a torch.Tensor of shape (B, C, H, W), "
                            f"got {describe(x)}")
        if x.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{name} {where}: expected a real floating-point tensor, float32 or "
                            f"float64 (complex images are two real channels), got "
                            f"{describe(x)}")
        if x.ndim != 4 or x.numel() == 0:
            raise ValueError(f"{name} {where}: expected a non-empty shape (B, C, H, W), got "
                             f"{describe(x)}")
        if self.in_shape is not None:
            c, h, w = self.in_shape
            if tuple(x.shape[-2:]) != (h, w) or (self.fixed_channels and x.shape[1] != c):
                want = f"(B, {c}, {h}, {w})" if self.fixed_channels else f"(B, C, {h}, {w})"
                raise ValueError(f"{name} {where}: operator built for images {want}, got "
                                 f"{describe(x)}")
        return x

    def _check_measurement(self, y: Any, expected: tuple[int | None, ...], where: str) -> Tensor:
        """``y`` must be a real floating tensor whose shape matches ``expected`` (None = any)."""
        name = type(self).__name__
        if not isinstance(y, Tensor) or y.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{name} {where}: expected a real floating-point torch.Tensor "
                            f"(float32 or float64), got {describe(y)}")
        ok = y.ndim == len(expected) and y.numel() > 0 and all(
            e is None or e == s for e, s in zip(expected, y.shape, strict=True))
        if not ok:
            want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
            raise ValueError(f"{name} {where}: expected measurements of shape {want}, got "
                             f"{describe(y)}")
        return y


def check_binary_mask(mask: Any, name: str, ndims: tuple[int, ...]) -> Tensor:
    """A 0/1 mask (bool, integer or float) as a float64 tensor; ``ndims`` allowed dimensions."""
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor or numpy array, got {describe(mask)}")
    if mask.is_complex():
        raise TypeError(f"{name}: expected a real 0/1 mask, got {describe(mask)}")
    if mask.ndim not in ndims or mask.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty mask with {' or '.join(map(str, ndims))} "
                         f"dimensions, got {describe(mask)}")
    m = mask.detach().to(torch.float64)
    if not bool(((m == 0) | (m == 1)).all()):
        bad = m[(m != 0) & (m != 1)]
        raise ValueError(f"{name}: expected a binary mask (values 0 and 1 only), got "
                         f"{bad.numel()} other values, e.g. {float(bad.flatten()[0])!r}")
    return m

