"""Projection layers that make any network output a descent direction (Sec. 4.1).

Both act per batch sample on flattened tensors ``(B, ...)``: ``z`` is the raw network output,
``g`` the energy gradient at the current iterate. ``||g||`` is replaced by
``max(||g||, 1e-6)`` (Sec. 4.1); Algorithm 1 stops before ``||g||`` gets that small.

- ``HalfSpaceProjection(zeta)``: Euclidean projection onto ``C(zeta, g) = {d : <d, g> >=
  zeta ||g||}`` (eq. 8) by ``z + max(zeta - <z, n>, 0) n``, ``n = g / ||g||`` (eq. 21).
  ``scale_with_grad=True`` uses ``zeta ||g||`` in place of ``zeta`` (the set
  ``<d, g> >= zeta ||g||^2``, the variant of Fig. 2 right).
- ``TwoSidedProjection(zeta1, zeta2)``: the surjective map of Prop. 3 onto
  ``C(zeta1, zeta2, g) = {d : <d, g> >= zeta1 ||g||^2, ||d|| <= zeta2 ||g||}`` (eq. 15):
  ``z -> eta_hat g + P_B(z - eta g)`` (eq. 22).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["GRAD_NORM_FLOOR", "HalfSpaceProjection", "TwoSidedProjection", "in_half_space",
           "in_two_sided_set", "check_zetas"]

GRAD_NORM_FLOOR = 1e-6   # max(||g||, 1e-6), Sec. 4.1


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product, shape (B, 1, ..., 1) broadcastable against a and b."""
    return (a * b).flatten(1).sum(dim=1).view(-1, *([1] * (a.ndim - 1)))


def _norm(a: Tensor) -> Tensor:
    return _dot(a, a).sqrt()


def _orthogonal(z: Tensor, n: Tensor, zn: Tensor) -> Tensor:
    """``z - <z, n> n`` for a unit ``n``, with a second Gram-Schmidt pass so that the result
    stays orthogonal to ``n`` up to rounding of its own size even when ``|z| >> |w|``."""
    w = z - zn * n
    return w - _dot(w, n) * n


def _check_pair(z: Tensor, g: Tensor, name: str) -> None:
    if not isinstance(z, Tensor) or not isinstance(g, Tensor):
        raise TypeError(f"{name}: expected tensors z and g, got {type(z).__name__} and "
                        f"{type(g).__name__}")
    if z.shape != g.shape or z.ndim < 2:
        raise ValueError(f"{name}: expected z and g of the same batch shape (B, ...), got "
                         f"{tuple(z.shape)} and {tuple(g.shape)}")


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            value) or value <= 0:
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    return float(value)


def check_zetas(zeta1, zeta2) -> tuple[float, float]:
    """``0 < zeta1 <= zeta2`` (eq. 15 needs ``cos(theta) >= zeta1/zeta2 <= 1``)."""
    z1, z2 = _positive("zeta1", zeta1), _positive("zeta2", zeta2)
    if z1 > z2:
        raise ValueError(f"expected 0 < zeta1 <= zeta2 (the set of eq. 15 is empty otherwise: "
                         f"cos(angle(d, g)) >= zeta1/zeta2), got zeta1 = {z1}, zeta2 = {z2}")
    return z1, z2


class HalfSpaceProjection(nn.Module):
    """Projection onto the half-space ``C(zeta, g)`` of eq. 8, implemented by eq. 21."""

    def __init__(self, zeta: float, scale_with_grad: bool = False) -> None:
        super().__init__()
        self.zeta = _positive("zeta", zeta)
        self.scale_with_grad = bool(scale_with_grad)

    def forward(self, z: Tensor, g: Tensor) -> Tensor:
        _check_pair(z, g, "HalfSpaceProjection")
        gn = _norm(g).clamp_min(GRAD_NORM_FLOOR)
        n = g / gn
        zeta = self.zeta * gn if self.scale_with_grad else self.zeta
        # eq. 21: z + max(zeta - <z, n>, 0) n, written as w + max(<z, n>, zeta) n with
        # w = z - <z, n> n re-orthogonalised once (no cancellation when |z| >> zeta)
        zn = _dot(z, n)
        w = _orthogonal(z, n, zn)
        return w + torch.maximum(zn, torch.as_tensor(zeta, dtype=z.dtype)) * n

    def extra_repr(self) -> str:
        return f"zeta={self.zeta}, scale_with_grad={self.scale_with_grad}"


class TwoSidedProjection(nn.Module):
    """The surjective map onto ``C(zeta1, zeta2, g)`` of eq. 15 (Prop. 3, eq. 22)."""

    def __init__(self, zeta1: float, zeta2: float) -> None:
        super().__init__()
        self.zeta1, self.zeta2 = check_zetas(zeta1, zeta2)

    @property
    def gamma(self) -> float:
        """``zeta1 / zeta2 = cos`` of the largest angle between ``d`` and ``g`` (Prop. 2)."""
        return self.zeta1 / self.zeta2

    def forward(self, z: Tensor, g: Tensor) -> Tensor:
        _check_pair(z, g, "TwoSidedProjection")
        gn = _norm(g).clamp_min(GRAD_NORM_FLOOR)
        eta = _dot(z, g) / gn**2                       # eta = <z, g> / ||g||^2
        eta_hat = eta.clamp(self.zeta1, self.zeta2)    # Pi_[zeta1, zeta2](eta)
        w = _orthogonal(z, g / gn, _dot(z, g) / gn)    # z - eta g, orthogonal to g
        radius = (self.zeta2**2 - eta_hat**2).clamp_min(0).sqrt() * gn
        wn = _norm(w)
        scale = torch.where(wn > radius, radius / wn.clamp_min(torch.finfo(w.dtype).tiny),
                            torch.ones_like(wn))
        # eq. 22, Prop. 3: eta_hat g + Pi_B(z - eta g)
        return eta_hat * g + scale * w

    def extra_repr(self) -> str:
        return f"zeta1={self.zeta1}, zeta2={self.zeta2}"


def in_half_space(d: Tensor, g: Tensor, zeta: float, scale_with_grad: bool = False,
                  rtol: float = 1e-6) -> Tensor:
    """Per-sample bool: ``<d, g> >= zeta ||g||`` (eq. 8), up to a relative tolerance."""
    gn = _norm(g).flatten()
    lhs = _dot(d, g).flatten()
    rhs = zeta * gn * (gn if scale_with_grad else 1.0)
    return lhs >= rhs - rtol * (rhs.abs() + _norm(d).flatten() * gn)


def in_two_sided_set(d: Tensor, g: Tensor, zeta1: float, zeta2: float,
                     rtol: float = 1e-6) -> Tensor:
    """Per-sample bool: ``<d, g> >= zeta1 ||g||^2`` and ``||d|| <= zeta2 ||g||`` (eq. 15)."""
    gn = _norm(g).flatten()
    dn = _norm(d).flatten()
    lhs = _dot(d, g).flatten()
    ok1 = lhs >= zeta1 * gn**2 - rtol * (zeta2 * gn**2 + dn * gn)
    ok2 = dn <= zeta2 * gn * (1 + rtol)
    return ok1 & ok2
