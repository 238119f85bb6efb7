"""Second-order-cone algebra of the interior-point solver (CVXOPT notation, Vandenberghe 2010).

Rows of `(G, d + 1)` tensors are points `(x0, x1)` of G second-order cones `||x1|| <= x0`;
`jd` is `diag(J) = (1, -1, ..., -1)`.
"""

from __future__ import annotations

import torch

__all__ = ["det", "jordan_product", "boost", "to_identity", "boundary_rate", "NtScaling"]


def det(u: torch.Tensor) -> torch.Tensor:
    """u0^2 - ||u1||^2, as (u0 - ||u1||)(u0 + ||u1||) (no cancellation near the boundary)."""
    n = u[:, 1:].norm(dim=1)
    return (u[:, 0] - n) * (u[:, 0] + n)


def jordan_product(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Jordan product u o v = (u^T v, u0 v1 + v0 u1)."""
    return torch.cat([(u * v).sum(1, keepdim=True), u[:, :1] * v[:, 1:] + v[:, :1] * u[:, 1:]], 1)


def boost(xb: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """v with `(2 v v^T - J) e = xb` for points `xb` of determinant 1 (a Lorentz boost;
    its inverse is `2 (J v)(J v)^T - J`)."""
    return (xb + e) / (2.0 * (xb[:, :1] + 1.0)).sqrt()


def to_identity(u: torch.Tensor, jd: torch.Tensor) -> torch.Tensor:
    """Per cone, a positive multiple of a cone automorphism `G` with `G u = e` (u interior):
    `G = (2 (J v)(J v)^T - J) / sqrt(det u)`, v the boost to `u / sqrt(det u)`."""
    du = det(u).sqrt()
    e = torch.zeros_like(u[0])
    e[0] = 1.0
    jv = boost(u / du[:, None], e) * jd
    return (2.0 * jv[:, :, None] * jv[:, None, :] - torch.diag(jd)) / du[:, None, None]


def boundary_rate(y: torch.Tensor) -> torch.Tensor:
    """Per cone, `||y1|| - y0`: `e + a y` stays in the cone iff `a (||y1|| - y0) <= 1`, so the
    largest step from `e` along `y` is `1 / max(0, rate)`."""
    return y[:, 1:].norm(dim=1) - y[:, 0]


class NtScaling:
    """Nesterov-Todd scaling W of the SOC part: W z = W^{-1} s = lam (CVXOPT notation)."""

    def __init__(self, s: torch.Tensor, z: torch.Tensor, jd: torch.Tensor) -> None:
        ds, dz = det(s).sqrt(), det(z).sqrt()
        sb, zb = s / ds[:, None], z / dz[:, None]
        gam = ((1.0 + (sb * zb).sum(1)) / 2.0).sqrt()
        wb = (sb + zb * jd) / (2.0 * gam[:, None])
        e = torch.zeros_like(wb[0])
        e[0] = 1.0
        self.v = boost(wb, e)                                     # W-bar = 2 v v^T - J
        self.eta = (ds / dz).sqrt()
        jv = self.v * jd
        eta = self.eta[:, None, None]
        jm = torch.diag(jd)[None]
        # as (G, d+1, d+1) matrices: one batched product per application (the cones are small)
        self.w = eta * (2.0 * self.v[:, :, None] * self.v[:, None, :] - jm)
        self.winv = (2.0 * jv[:, :, None] * jv[:, None, :] - jm) / eta
        self.w2inv = self.winv @ self.winv                               # W^{-2}

    def apply(self, u: torch.Tensor) -> torch.Tensor:
        return torch.bmm(self.w, u.unsqueeze(2)).squeeze(2)

    def apply_inv(self, u: torch.Tensor) -> torch.Tensor:
        return torch.bmm(self.winv, u.unsqueeze(2)).squeeze(2)

